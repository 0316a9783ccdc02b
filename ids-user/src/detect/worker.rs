//! The detect worker: a thread that follows the configured logs when the sensor reports them
//! written, scans files written under the web roots once they have been quiet for [`QUIET`],
//! checks exec events against the process tree, and turns what it finds into alerts (events log
//! and the store's `alerts` table) and ban requests (sent to the daemon).
//!
//! The events writer hands it file events and exec events through [`DetectEvents`] (a path test
//! and a `try_send`; a full queue is counted, and the periodic check below still reads the logs).
//! A cheap `fstat`/`stat` of every log every [`SAFETY_POLL`] catches what an event could not
//! (a log that did not exist when the sensor started, a lost event); while nothing is written it
//! reads nothing.
use std::collections::HashMap;
use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tracing::{info, warn};

use super::engine::{Engine, Trigger};
use super::follow::Follower;
use super::parse::escape_evidence;
use super::process::{basename, is_shell, is_web_server, web_server_ancestry};
use super::rules::{RuleKind, RuleSet, Severity};
use super::webshell::Scanner;
use super::{Action, Alert, BanRequest, MAX_EVIDENCE, escalated};
use crate::config::{Config, DetectConfig, LogKind};
use crate::event::{Detail, Event};
use crate::monitor::{SharedOutput, lock_output};
use crate::store::{AlertRow, Store};

/// A web file is scanned once no event has named it for this long (so it is scanned complete).
pub const QUIET: Duration = Duration::from_millis(200);
/// Every log is checked this often even without events.
pub const SAFETY_POLL: Duration = Duration::from_secs(2);
/// A write event is seen when the write starts: the log is read this long after it, and read
/// again [`FOLLOW_UP`] later in case the write was still in flight.
const SETTLE: Duration = Duration::from_millis(2);
const FOLLOW_UP: Duration = Duration::from_millis(50);
/// Positions are stored at most this often per log (and at shutdown).
const SAVE_INTERVAL: Duration = Duration::from_secs(1);
/// The longest the worker sleeps before it looks at `stop` again.
const STOP_POLL: Duration = Duration::from_secs(1);
/// The same process-tree finding (rule, web server, program) alerts once per this long.
const EXEC_REPEAT: Duration = Duration::from_secs(300);
const QUEUE: usize = 16_384;

/// What the events writer hands over.
#[derive(Debug)]
pub enum Input {
    File {
        op: &'static str,
        path: PathBuf,
        new_path: Option<PathBuf>,
    },
    Exec {
        pid: u32,
        ppid: u32,
        filename: String,
        argv: Vec<String>,
    },
    /// A line of `[[journal]]` source number `source` (see [`super::journal`]).
    Journal {
        source: usize,
        line: Vec<u8>,
    },
}

/// Counters shown by `ids status` under `detect`.
#[derive(Debug, Default)]
pub struct Shared {
    pub lines: AtomicU64,
    pub lines_cut: AtomicU64,
    pub alerts: AtomicU64,
    pub bans_requested: AtomicU64,
    pub files_scanned: AtomicU64,
    pub dropped: AtomicU64,
    pub windows_evicted: Arc<AtomicU64>,
}

impl Shared {
    pub fn status(&self) -> serde_json::Value {
        serde_json::json!({
            "lines": self.lines.load(Ordering::Relaxed),
            "lines_cut": self.lines_cut.load(Ordering::Relaxed),
            "alerts": self.alerts.load(Ordering::Relaxed),
            "bans_requested": self.bans_requested.load(Ordering::Relaxed),
            "files_scanned": self.files_scanned.load(Ordering::Relaxed),
            "dropped": self.dropped.load(Ordering::Relaxed),
            "windows_evicted": self.windows_evicted.load(Ordering::Relaxed),
        })
    }
}

/// The events writer's handle.
pub struct DetectEvents {
    tx: SyncSender<Input>,
    logs: Vec<PathBuf>,
    web_roots: Vec<PathBuf>,
    shared: Arc<Shared>,
}

impl DetectEvents {
    fn send(&self, input: Input) {
        match self.tx.try_send(input) {
            Ok(()) | Err(TrySendError::Disconnected(_)) => {}
            Err(TrySendError::Full(_)) => {
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Queues a file event that names a followed log or a path under a web root.
    pub fn note_file(&self, op: &'static str, path: &Path, new_path: Option<&Path>) {
        let concerned = |p: &Path| self.logs.iter().any(|l| l == p) || self.web_roots.iter().any(|r| p.starts_with(r));
        if concerned(path) || new_path.is_some_and(concerned) {
            self.send(Input::File { op, path: path.to_path_buf(), new_path: new_path.map(Path::to_path_buf) });
        }
    }

    /// Queues an exec event (the worker looks at the process tree).
    pub fn note_exec(&self, event: &Event) {
        if let Detail::Exec { filename, argv, .. } = &event.detail {
            self.send(Input::Exec { pid: event.pid, ppid: event.ppid, filename: filename.clone(), argv: argv.clone() });
        }
    }
}

/// Everything `daemon::run` needs to drive the worker.
pub struct DetectHandles {
    pub events: DetectEvents,
    /// Log paths and web roots: the sensor must watch them.
    pub watch: Vec<PathBuf>,
    pub shared: Arc<Shared>,
    pub thread: std::thread::JoinHandle<()>,
    pub stop: Arc<AtomicBool>,
}

/// A followed log.
struct Log {
    kind: LogKind,
    follower: Follower,
    due: Option<Instant>,
    follow_up: bool,
    saved: Instant,
    dirty: bool,
}

struct Worker {
    config: DetectConfig,
    /// The `[[journal]]` sources' readers, in configuration order.
    readers: Vec<super::journal::Reader>,
    engine: Engine,
    scanner: Scanner,
    logs: Vec<Log>,
    /// Canonical log path → index in `logs`.
    log_index: HashMap<PathBuf, usize>,
    web_roots: Vec<PathBuf>,
    scans: HashMap<PathBuf, Instant>,
    /// Web file → digest of the contents last alerted.
    scanned: HashMap<PathBuf, String>,
    exec_seen: HashMap<(String, u32, String), Instant>,
    store: Store,
    output: SharedOutput,
    bans: tokio::sync::mpsc::Sender<BanRequest>,
    shared: Arc<Shared>,
    triggers: Vec<Trigger>,
}

/// A configured path as the sensor reports it: its directory resolved, its name kept (the file
/// itself may be replaced by rotation).
fn resolved(path: &Path) -> PathBuf {
    match (path.parent(), path.file_name()) {
        (Some(dir), Some(name)) => std::fs::canonicalize(dir).map(|d| d.join(name)).unwrap_or_else(|_| path.into()),
        _ => path.into(),
    }
}

/// Loads the rules and opens the store (errors name the file); the thread starts reading at once.
pub fn spawn(
    config: &Config,
    output: SharedOutput,
    bans: tokio::sync::mpsc::Sender<BanRequest>,
) -> anyhow::Result<DetectHandles> {
    let detect = config.detect.clone();
    let rules = RuleSet::load(detect.rules.as_deref(), detect.rules_mode)?;
    let store = Store::open(&config.database())?;
    let shared = Arc::new(Shared::default());
    let log_paths: Vec<PathBuf> = detect.logs.iter().map(|l| resolved(&l.path)).collect();
    let web_roots: Vec<PathBuf> =
        detect.web_roots.iter().map(|r| std::fs::canonicalize(r).unwrap_or_else(|_| r.clone())).collect();
    let mut watch: Vec<PathBuf> = log_paths.clone();
    watch.extend(web_roots.iter().cloned());
    let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
    let stop = Arc::new(AtomicBool::new(false));
    let mut worker = Worker {
        engine: Engine::new(rules).counting_evictions_in(shared.windows_evicted.clone()),
        scanner: Scanner::new(),
        logs: Vec::new(),
        log_index: HashMap::new(),
        web_roots: web_roots.clone(),
        scans: HashMap::new(),
        scanned: HashMap::new(),
        exec_seen: HashMap::new(),
        store,
        output,
        bans,
        shared: shared.clone(),
        triggers: Vec::new(),
        config: detect.clone(),
        readers: Vec::new(),
    };
    for (source, journal) in detect.journal.iter().enumerate() {
        let reader = super::journal::spawn(source, journal, &config.state_dir, tx.clone(), stop.clone())
            .with_context(|| format!("following {}", super::journal::origin(journal)))?;
        worker.readers.push(reader);
    }
    for (log, path) in detect.logs.iter().zip(&log_paths) {
        if worker.log_index.contains_key(path) {
            continue;
        }
        worker.open_log(log.kind, path).with_context(|| format!("following log {}", log.path.display()))?;
    }
    let thread = std::thread::Builder::new().name("detect".into()).spawn({
        let stop = stop.clone();
        move || worker.run(rx, &stop)
    })?;
    Ok(DetectHandles {
        events: DetectEvents { tx, logs: log_paths, web_roots, shared: shared.clone() },
        watch,
        shared,
        thread,
        stop,
    })
}

impl Worker {
    fn open_log(&mut self, kind: LogKind, path: &Path) -> anyhow::Result<()> {
        let key = path.display().to_string();
        let stored = self.store.log_offset(&key)?;
        let mut lines = Vec::new();
        let follower = Follower::open(path, stored.as_ref(), &mut |line, cut| lines.push((line.to_vec(), cut)))?;
        let index = self.logs.len();
        self.logs.push(Log { kind, follower, due: None, follow_up: false, saved: Instant::now(), dirty: true });
        self.log_index.insert(path.to_path_buf(), index);
        for (line, cut) in lines {
            self.on_line(index, &line, cut);
        }
        self.save(index);
        info!(path = %path.display(), kind = kind.name(), "following log");
        Ok(())
    }

    fn run(mut self, rx: Receiver<Input>, stop: &AtomicBool) {
        let mut next_safety = Instant::now() + SAFETY_POLL;
        let mut next_prune = Instant::now() + Duration::from_secs(60);
        while !stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            // The safety poll only matters for followed logs.
            let safety_due = (!self.logs.is_empty()).then_some(next_safety);
            let next = self
                .logs
                .iter()
                .filter_map(|l| l.due)
                .chain(self.scans.values().copied())
                .chain(safety_due)
                .min()
                .unwrap_or(now + STOP_POLL);
            let wait = next.saturating_duration_since(now).min(STOP_POLL);
            match rx.recv_timeout(wait) {
                Ok(input) => {
                    self.input(input);
                    while let Ok(input) = rx.try_recv() {
                        self.input(input);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            let now = Instant::now();
            let safety = now >= next_safety;
            if safety {
                next_safety = now + SAFETY_POLL;
            }
            for index in 0..self.logs.len() {
                let due = self.logs[index].due.is_some_and(|d| d <= now);
                if due || safety {
                    self.poll(index, due);
                }
                if self.logs[index].dirty && self.logs[index].saved.elapsed() >= SAVE_INTERVAL {
                    self.save(index);
                }
            }
            let ready: Vec<PathBuf> =
                self.scans.iter().filter(|(_, due)| **due <= now).map(|(p, _)| p.clone()).collect();
            for path in ready {
                self.scans.remove(&path);
                self.scan(&path);
            }
            if now >= next_prune {
                next_prune = now + Duration::from_secs(60);
                self.engine.prune(now);
                self.exec_seen.retain(|_, seen| seen.elapsed() < EXEC_REPEAT);
            }
        }
        for index in 0..self.logs.len() {
            self.poll(index, false);
            self.save(index);
        }
        // Readers blocked on a full queue see it closed; the others see journalctl end. Each
        // stores its cursor before it ends.
        drop(rx);
        for reader in std::mem::take(&mut self.readers) {
            reader.stop();
            let _ = reader.thread.join();
        }
    }

    fn input(&mut self, input: Input) {
        match input {
            Input::File { op, path, new_path } => {
                let due = Instant::now() + SETTLE;
                for p in std::iter::once(&path).chain(new_path.as_ref()) {
                    if let Some(&index) = self.log_index.get(p) {
                        let log = &mut self.logs[index];
                        log.due = Some(log.due.map_or(due, |d| d.min(due)));
                        log.follow_up = true;
                    }
                }
                let target = if op == "rename" { new_path.as_ref() } else { Some(&path) };
                if let Some(target) = target {
                    if matches!(op, "create" | "write" | "rename")
                        && self.web_roots.iter().any(|r| target.starts_with(r))
                    {
                        self.scans.insert(target.clone(), Instant::now() + QUIET);
                    }
                }
                if op == "unlink" {
                    self.scans.remove(&path);
                    self.scanned.remove(&path);
                }
            }
            Input::Exec { pid, ppid, filename, argv } => self.exec(pid, ppid, &filename, &argv),
            Input::Journal { source, line } => {
                let Some(journal) = self.config.journal.get(source) else { return };
                let (kind, origin) = (journal.kind, super::journal::origin(journal));
                self.shared.lines.fetch_add(1, Ordering::Relaxed);
                // Journal lines are not cut: a message is one entry.
                self.classify_line(kind, &origin, &line, false);
            }
        }
    }

    fn poll(&mut self, index: usize, from_event: bool) {
        let log = &mut self.logs[index];
        log.due = None;
        let mut lines = Vec::new();
        let result = log.follower.poll(&mut |line, cut| lines.push((line.to_vec(), cut)));
        match result {
            Ok(read) => {
                if read || from_event {
                    log.dirty |= read;
                    // Once more shortly after: the event came before the write finished.
                    if log.follow_up {
                        log.follow_up = read;
                        log.due = Some(Instant::now() + FOLLOW_UP);
                    }
                }
            }
            Err(e) => warn!(path = %log.follower.path().display(), error = %e, "reading log"),
        }
        for (line, cut) in lines {
            self.on_line(index, &line, cut);
        }
    }

    fn save(&mut self, index: usize) {
        let log = &mut self.logs[index];
        log.saved = Instant::now();
        log.dirty = false;
        if let Some(position) = log.follower.position() {
            let key = log.follower.path().display().to_string();
            if let Err(e) = self.store.set_log_offset(&key, &position) {
                warn!(error = %e, "storing log position");
            }
        }
    }

    fn on_line(&mut self, index: usize, line: &[u8], cut: bool) {
        self.shared.lines.fetch_add(1, Ordering::Relaxed);
        if cut {
            self.shared.lines_cut.fetch_add(1, Ordering::Relaxed);
        }
        let kind = self.logs[index].kind;
        let origin = self.logs[index].follower.path().display().to_string();
        self.classify_line(kind, &origin, line, cut);
    }

    /// Runs a line of `origin` (a log path or a journal source) through the rules.
    fn classify_line(&mut self, kind: LogKind, origin: &str, line: &[u8], cut: bool) {
        let mut triggers = std::mem::take(&mut self.triggers);
        self.engine.line(kind, line, cut, Instant::now(), &mut triggers);
        if let Some(flood) = self.engine.take_flood() {
            self.emit(flood.alert(origin));
        }
        for trigger in triggers.drain(..) {
            self.raise(origin, trigger);
        }
        self.triggers = triggers;
    }

    fn trusted(&self, addr: IpAddr) -> bool {
        let addr = match addr {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
            v4 => v4,
        };
        self.config.trusted.iter().any(|net| net.contains(&addr))
    }

    /// A threshold crossed: an alert, and a ban request unless the address is trusted.
    fn raise(&mut self, origin: &str, trigger: Trigger) {
        let rule = self.engine.rules.rules[trigger.rule].clone();
        let detector = match rule.kind {
            RuleKind::Sshd => "ssh-bruteforce",
            RuleKind::Web => "web-attack",
        };
        let action = if self.trusted(trigger.addr) {
            Action::NotBannedTrusted
        } else {
            // The ban path counts every ban an address received (`offenders`): this is one more.
            let earlier = self.store.offences(&super::ban_net(trigger.addr).to_string()).unwrap_or_else(|e| {
                warn!(error = %e, "reading the address's earlier bans");
                0
            });
            let offence = earlier.saturating_add(1);
            let duration = escalated(self.config.ban_duration, self.config.ban_duration_max, offence);
            let request = BanRequest {
                addr: trigger.addr,
                rule: rule.id.clone(),
                source: detector,
                duration,
                evidence: trigger.burst.evidence.clone(),
            };
            match self.bans.try_send(request) {
                Ok(()) => {
                    self.shared.bans_requested.fetch_add(1, Ordering::Relaxed);
                    Action::BanRequested { duration_s: duration.as_secs(), offence }
                }
                Err(e) => Action::BanNotDelivered { reason: e.to_string() },
            }
        };
        let alert = Alert {
            time: crate::store::now(),
            kind: "detect",
            rule: rule.id,
            severity: rule.severity,
            detector,
            description: rule.description,
            source: Some(trigger.addr),
            path: Some(origin.to_string()),
            count: Some(trigger.burst.count),
            window_s: Some(rule.window.as_secs()),
            process: None,
            evidence: trigger.burst.evidence,
            action,
        };
        self.emit(alert);
    }

    fn scan(&mut self, path: &Path) {
        self.shared.files_scanned.fetch_add(1, Ordering::Relaxed);
        let scan = match self.scanner.scan_file(path) {
            Ok(Some(scan)) => scan,
            Ok(None) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => {
                warn!(path = %path.display(), error = %e, "scanning web file");
                return;
            }
        };
        if scan.findings.is_empty() {
            self.scanned.remove(path);
            return;
        }
        if self.scanned.get(path) == Some(&scan.digest) {
            return;
        }
        self.scanned.insert(path.to_path_buf(), scan.digest.clone());
        let first = &scan.findings[0];
        let evidence =
            scan.findings.iter().map(|f| format!("{}: {}", f.id, escape_evidence(&f.excerpt, MAX_EVIDENCE))).collect();
        self.emit(Alert {
            time: crate::store::now(),
            kind: "detect",
            rule: first.id.to_string(),
            severity: Severity::Critical,
            detector: "webshell",
            description: first.description.to_string(),
            source: None,
            path: Some(escape_evidence(&path.display().to_string(), MAX_EVIDENCE)),
            count: None,
            window_s: None,
            process: Some(
                serde_json::json!({"size": scan.size, "scanned_truncated": scan.truncated, "sha256": scan.digest}),
            ),
            evidence,
            action: Action::AlertOnly,
        });
    }

    fn exec(&mut self, pid: u32, ppid: u32, filename: &str, argv: &[String]) {
        if is_web_server(basename(filename)) {
            return;
        }
        let Some(chain) = web_server_ancestry(ppid) else { return };
        let Some(server) = chain.last() else { return };
        let (rule, severity, description) = if is_shell(filename) {
            ("webserver-exec-shell", Severity::High, "A web server process started a shell")
        } else {
            ("webserver-exec", Severity::Medium, "A web server process started a program")
        };
        let key = (rule.to_string(), server.pid, filename.to_string());
        if self.exec_seen.get(&key).is_some_and(|seen| seen.elapsed() < EXEC_REPEAT) {
            return;
        }
        self.exec_seen.insert(key, Instant::now());
        let command = escape_evidence(&argv.join(" "), MAX_EVIDENCE);
        let ancestors: Vec<serde_json::Value> =
            chain.iter().map(|a| serde_json::json!({"pid": a.pid, "comm": escape_evidence(&a.comm, 64)})).collect();
        self.emit(Alert {
            time: crate::store::now(),
            kind: "detect",
            rule: rule.into(),
            severity,
            detector: "webserver-exec",
            description: description.into(),
            source: None,
            path: None,
            count: None,
            window_s: None,
            process: Some(serde_json::json!({
                "pid": pid,
                "ppid": ppid,
                "filename": escape_evidence(filename, MAX_EVIDENCE),
                "ancestors": ancestors,
            })),
            evidence: vec![command],
            action: Action::AlertOnly,
        });
    }

    fn emit(&mut self, alert: Alert) {
        let what = match serde_json::to_value(&alert) {
            Ok(what) => what,
            Err(e) => {
                warn!(error = %e, "encoding an alert");
                return;
            }
        };
        let row = AlertRow {
            time: alert.time.clone(),
            kind: "detect".into(),
            item_id: alert.rule.clone(),
            collector: alert.detector.into(),
            what: what.clone(),
        };
        if let Err(e) = self.store.add_alerts(std::slice::from_ref(&row)) {
            warn!(error = %e, "storing a detection alert");
        }
        let mut line = what.to_string().into_bytes();
        line.push(b'\n');
        let mut out = lock_output(&self.output);
        if let Err(e) = out.write_all(&line).and_then(|()| out.flush()) {
            warn!(error = %e, "writing a detection alert to the events log");
        }
        drop(out);
        self.shared.alerts.fetch_add(1, Ordering::Relaxed);
        info!(rule = %alert.rule, detector = alert.detector, "detection alert");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// An events log in memory.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Buffer {
        fn alerts(&self) -> Vec<serde_json::Value> {
            let text = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
            text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
        }
    }

    fn failure(addr: &str, n: u32) -> String {
        format!("Nov 21 03:33:41 h sshd[9]: Failed password for root from {addr} port {n} ssh2\n")
    }

    fn append(path: &Path, text: &str) {
        let mut file = std::fs::OpenOptions::new().append(true).create(true).open(path).unwrap();
        file.write_all(text.as_bytes()).unwrap();
    }

    fn wait_until(what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn stop(handles: DetectHandles) {
        handles.stop.store(true, Ordering::Relaxed);
        handles.thread.join().unwrap();
    }

    #[test]
    fn the_worker_resumes_after_a_restart_and_escalates_repeat_bans() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("auth.log");
        let rules = dir.path().join("rules.toml");
        append(&log, &failure("192.0.2.1", 0));
        std::fs::write(
            &rules,
            "[[rules]]\nid = \"sshd-failed-password\"\ndescription = \"d\"\nseverity = \"medium\"\nkind = \"sshd\"\n\
             pattern = 'Failed password for .* from <ADDR> port \\d+ ssh2'\nthreshold = 5\nwindow = 1\n",
        )
        .unwrap();
        let text = format!(
            "watch = []\nevents_log = \"-\"\nstate_dir = {:?}\nrules = {:?}\n\
             [[logs]]\nkind = \"sshd\"\npath = {:?}\n[xdp]\ntrusted = [\"192.0.2.200\"]\n[bans]\ndetect_duration = \"60s\"\n",
            dir.path().join("state").display().to_string(),
            rules.display().to_string(),
            log.display().to_string(),
        );
        let config = Config::parse(&text, "test").unwrap();
        std::fs::create_dir_all(&config.state_dir).unwrap();
        let buffer = Buffer::default();
        let output: SharedOutput = Arc::new(Mutex::new(Box::new(buffer.clone())));
        let (ban_tx, mut ban_rx) = tokio::sync::mpsc::channel(16);

        // First run: starts at the end, reads three new lines.
        let handles = spawn(&config, output.clone(), ban_tx.clone()).unwrap();
        for n in 1..=3 {
            append(&log, &failure("192.0.2.1", n));
        }
        handles.events.note_file("write", &log, None);
        let shared = handles.shared.clone();
        wait_until("three lines", || shared.lines.load(Ordering::Relaxed) == 3);
        stop(handles);

        // Written while stopped: read once by the next run, nothing before it again.
        append(&log, &failure("192.0.2.1", 4));
        append(&log, &failure("192.0.2.1", 5));
        let handles = spawn(&config, output.clone(), ban_tx.clone()).unwrap();
        let shared = handles.shared.clone();
        wait_until("two lines", || shared.lines.load(Ordering::Relaxed) == 2);
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(shared.lines.load(Ordering::Relaxed), 2);

        // Two bursts (the window is 1 s): the second ban is twice as long.
        let mut ban_rx_seen = Vec::new();
        for burst in 0..2 {
            if burst == 1 {
                std::thread::sleep(Duration::from_millis(1100));
            }
            for n in 0..5 {
                append(&log, &failure("192.0.2.1", 10 * burst + n));
                append(&log, &failure("192.0.2.200", 10 * burst + n));
            }
            handles.events.note_file("write", &log, None);
            wait_until("ban request", || shared.bans_requested.load(Ordering::Relaxed) == burst as u64 + 1);
            if burst == 0 {
                // The daemon applies the request through the ban path, which counts the offence.
                let first = ban_rx.try_recv().unwrap();
                crate::bans::Bans::open(&config, None).unwrap().ban(first.to_ban()).unwrap();
                ban_rx_seen.push(first);
            }
        }
        let first = ban_rx_seen.remove(0);
        let second = ban_rx.try_recv().unwrap();
        assert_eq!(first.addr, "192.0.2.1".parse::<IpAddr>().unwrap());
        assert_eq!((first.source, first.rule.as_str()), ("ssh-bruteforce", "sshd-failed-password"));
        assert_eq!((first.duration.as_secs(), second.duration.as_secs()), (60, 120));
        assert!(ban_rx.try_recv().is_err(), "the trusted address was sent to the ban path");
        wait_until("trusted alerts", || shared.alerts.load(Ordering::Relaxed) == 4);
        stop(handles);
        let alerts = buffer.alerts();
        let trusted: Vec<_> = alerts.iter().filter(|a| a["source"] == "192.0.2.200").collect();
        assert_eq!(trusted.len(), 2);
        assert!(trusted.iter().all(|a| a["action"]["type"] == "not_banned_trusted"));
        let store = Store::open(&config.database()).unwrap();
        assert_eq!(store.alerts().unwrap().iter().filter(|a| a.kind == "detect").count(), 4);
    }
}
