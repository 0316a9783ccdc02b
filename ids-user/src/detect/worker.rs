//! The detect worker, a consumer of the event bus: a thread that follows the configured logs when the sensor reports them
//! written, scans files written under the web roots once they have been quiet for [`SCAN_QUIET`],
//! checks exec events against the process tree, and turns what it finds into alerts (events log
//! and the store's `alerts` table) and ban requests (sent to the daemon).
//!
//! The events writer hands it file events and exec events through [`DetectEvents`] (a path test
//! and a `try_send`; a full queue is counted, and the periodic check below still reads the logs).
//! A cheap `fstat`/`stat` of every log every [`SAFETY_POLL`] catches what an event could not
//! (a log that did not exist when the sensor started, a lost event); while nothing is written it
//! reads nothing.
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use ids_common::FileOp;
use tracing::{info, warn};

use super::config::{DetectConfig, LogKind};
use super::engine::{Crossing, Engine};
use super::follow::Follower;
use super::parse::escape_evidence;
use super::process::{basename, is_shell, is_web_server, web_server_ancestry, web_server_ancestry_of};
use super::rules::RuleSet;
use super::webshell::Scanner;
use super::{Input, MAX_EVIDENCE};
use crate::alert::{Alert, AlertBody, AlertSink, DetectAction, DetectAlert, Detector, Severity};
use crate::bans::{BanDuration, BanNet, BanRequest, BanSender};
use crate::event::{Detail, Event};
use crate::harness::{self, Inbox, QueueStats, Received, Stop, Workers};
use crate::path_prefix::PathSet;
use crate::store::Store;

/// A web file is scanned once no event has named it for this long (so it is scanned complete).
pub const SCAN_QUIET: Duration = Duration::from_millis(200);
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

/// Counters shown by `ids status` under `detect`.
#[derive(Debug, Default)]
pub(crate) struct DetectCounters {
    pub(crate) lines: AtomicU64,
    pub(crate) lines_cut: AtomicU64,
    pub(crate) alerts: AtomicU64,
    /// Requests of this worker that the ban path turned into a ban (it counts them).
    pub(crate) bans_requested: Arc<AtomicU64>,
    pub(crate) files_scanned: AtomicU64,
    /// Detection windows that still held hits when a flood of addresses needed their room.
    pub(crate) windows_evicted: Arc<AtomicU64>,
    queue: Arc<QueueStats>,
}

/// The worker's part of `ids status`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub(crate) struct DetectStatus {
    pub(crate) lines: u64,
    pub(crate) lines_cut: u64,
    pub(crate) alerts: u64,
    pub(crate) bans_requested: u64,
    pub(crate) files_scanned: u64,
    /// Events its queue had no room for.
    pub(crate) dropped: u64,
    pub(crate) windows_evicted: u64,
}

impl DetectCounters {
    pub(crate) fn status(&self) -> DetectStatus {
        DetectStatus {
            lines: self.lines.load(Ordering::Relaxed),
            lines_cut: self.lines_cut.load(Ordering::Relaxed),
            alerts: self.alerts.load(Ordering::Relaxed),
            bans_requested: self.bans_requested.load(Ordering::Relaxed),
            files_scanned: self.files_scanned.load(Ordering::Relaxed),
            dropped: self.queue.dropped(),
            windows_evicted: self.windows_evicted.load(Ordering::Relaxed),
        }
    }
}

/// Which events the worker takes from the bus: file events naming a followed log or a path
/// under a web root, and every exec.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Interest {
    logs: PathSet,
    web_roots: PathSet,
}

impl Interest {
    /// The followed logs and web roots of `detect` as the sensor reports their paths.
    pub(crate) fn of(detect: &DetectConfig) -> Self {
        Self {
            logs: PathSet::new(detect.logs.iter().map(|l| resolved(&l.path))),
            web_roots: PathSet::new(
                detect.web_roots.iter().map(|r| std::fs::canonicalize(r).unwrap_or_else(|_| r.clone())),
            ),
        }
    }

    /// Log paths and web roots: the sensor must watch them.
    pub(crate) fn paths(&self) -> impl Iterator<Item = &PathBuf> {
        self.logs.paths().iter().chain(self.web_roots.paths())
    }

    pub(crate) fn wants(&self, event: &Event) -> bool {
        match &event.detail {
            Detail::File { path, new_path, .. } => {
                let concerned = |p: &Path| self.logs.has(p) || self.web_roots.covers(p);
                concerned(path) || new_path.as_deref().is_some_and(concerned)
            }
            Detail::Exec { .. } => true,
            _ => false,
        }
    }
}

/// An event of the bus as the worker's input.
pub(crate) fn input(event: &Event) -> Option<Input> {
    match &event.detail {
        Detail::File { op, path, new_path, .. } => {
            Some(Input::File { op: *op, path: path.clone(), new_path: new_path.clone() })
        }
        Detail::Exec { filename, argv, .. } => Some(Input::Exec {
            pid: event.pid,
            ppid: event.ppid,
            filename: filename.clone(),
            argv: argv.clone(),
            process: event.process.clone(),
        }),
        _ => None,
    }
}

/// The worker built (rules loaded, logs opened, journal readers started), not yet running.
pub(crate) struct Prepared {
    worker: Worker,
    sender: harness::Sender<Input>,
    inbox: Inbox<Input>,
    interest: Interest,
    /// Log paths and web roots: the sensor must watch them.
    pub(crate) watch: Vec<PathBuf>,
}

/// The detectors' settings and rules read again (SIGHUP), for the running worker to take up.
#[derive(Debug)]
pub(crate) struct Reload {
    pub(crate) config: DetectConfig,
    pub(crate) rules: RuleSet,
    /// `config`'s paths as the sensor reports them ([`Interest::of`]).
    pub(crate) interest: Interest,
}

/// A running `[[journal]]` reader.
struct JournalSource {
    config: super::config::JournalConfig,
    reader: super::journal::Reader,
}

/// The running worker, as the daemon holds it.
pub(crate) struct Handle {
    pub(crate) events: harness::Sender<Input>,
    pub(crate) shared: Arc<DetectCounters>,
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
    readers: Vec<JournalSource>,
    /// Every journal source ever started, by source number: a line a reader queued before a
    /// reload stopped it is still read as its source's kind.
    journal_sources: Vec<super::config::JournalConfig>,
    /// Readers a reload stopped: joined at shutdown, once the queue they may wait on is closed.
    retired: Vec<super::journal::Reader>,
    state_dir: PathBuf,
    /// For the readers a reload starts.
    sender: harness::Sender<Input>,
    stop: Stop,
    engine: Engine,
    scanner: Scanner,
    logs: Vec<Log>,
    /// Canonical log path → index in `logs`.
    log_index: HashMap<PathBuf, usize>,
    web_roots: PathSet,
    scans: HashMap<PathBuf, Instant>,
    /// Web file → digest of the contents last alerted.
    scanned: HashMap<PathBuf, String>,
    exec_seen: HashMap<(String, u32, String), Instant>,
    store: Store,
    sink: AlertSink,
    bans: BanSender,
    shared: Arc<DetectCounters>,
    triggers: Vec<Crossing>,
}

/// A configured path as the sensor reports it: its directory resolved, its name kept (the file
/// itself may be replaced by rotation).
fn resolved(path: &Path) -> PathBuf {
    match (path.parent(), path.file_name()) {
        (Some(dir), Some(name)) => std::fs::canonicalize(dir).map(|d| d.join(name)).unwrap_or_else(|_| path.into()),
        _ => path.into(),
    }
}

/// Loads the rules, opens the store and the logs, starts the journal readers (errors name the
/// file or source).
/// `state_dir` holds the database (log positions) and the journal cursors.
pub(crate) fn prepare(
    detect: &DetectConfig,
    state_dir: &Path,
    sink: AlertSink,
    bans: BanSender,
    logins: Arc<crate::process::Logins>,
    stop: Stop,
) -> anyhow::Result<Prepared> {
    let detect = detect.clone();
    let rules = RuleSet::load(detect.rules.as_deref(), detect.rules_mode)?;
    let store = Store::open(&crate::store::db_path(state_dir))?;
    let interest = Interest::of(&detect);
    let watch: Vec<PathBuf> = interest.paths().cloned().collect();
    let (sender, inbox) = harness::queue(QUEUE);
    let shared = Arc::new(DetectCounters { queue: inbox.stats().clone(), ..DetectCounters::default() });
    let mut worker = Worker {
        engine: Engine::new(rules).counting_evictions_in(shared.windows_evicted.clone()).recording_logins_in(logins),
        scanner: Scanner::new(),
        logs: Vec::new(),
        log_index: HashMap::new(),
        web_roots: interest.web_roots.clone(),
        scans: HashMap::new(),
        scanned: HashMap::new(),
        exec_seen: HashMap::new(),
        store,
        sink,
        bans,
        shared,
        triggers: Vec::new(),
        config: detect.clone(),
        readers: Vec::new(),
        journal_sources: Vec::new(),
        retired: Vec::new(),
        state_dir: state_dir.to_path_buf(),
        sender: sender.clone(),
        stop,
    };
    for journal in &detect.journal {
        worker.start_journal(journal)?;
    }
    for (log, path) in detect.logs.iter().zip(interest.logs.paths()) {
        if worker.log_index.contains_key(path) {
            continue;
        }
        worker.open_log(log.kind, path).with_context(|| format!("following log {}", log.path.display()))?;
    }
    Ok(Prepared { worker, sender, inbox, interest, watch })
}

impl Prepared {
    /// Starts the worker's thread; returns it with the events it wants from the bus.
    pub(crate) fn start(self, workers: &mut Workers) -> anyhow::Result<(Handle, Interest)> {
        let Prepared { worker, sender, inbox, interest, .. } = self;
        let shared = worker.shared.clone();
        let waker = sender.clone();
        workers.spawn_thread(
            "detect",
            move || waker.wake(),
            move |stop| {
                worker.run(inbox, &stop);
                Ok(())
            },
        )?;
        Ok((Handle { events: sender, shared }, interest))
    }
}

impl Worker {
    fn start_journal(&mut self, journal: &super::config::JournalConfig) -> anyhow::Result<()> {
        let source = self.journal_sources.len();
        let reader = super::journal::spawn(source, journal, &self.state_dir, self.sender.clone(), self.stop.clone())
            .with_context(|| format!("following {}", super::journal::origin(journal)))?;
        self.journal_sources.push(journal.clone());
        self.readers.push(JournalSource { config: journal.clone(), reader });
        Ok(())
    }

    /// Takes up settings read again: new rules (their windows start afresh), logs and journal
    /// sources added or dropped (a kept one is not touched: its position and reader go on), web
    /// roots, ban duration. A log or source that cannot be opened is logged and left out.
    fn reload(&mut self, reload: Reload) {
        let Reload { config, rules, interest } = reload;
        if rules.rules != self.engine.rules.rules {
            let (before, after) = (&self.engine.rules.rules, &rules.rules);
            let added: Vec<&str> =
                after.iter().filter(|r| !before.iter().any(|b| b.id == r.id)).map(|r| r.id.as_str()).collect();
            let removed: Vec<&str> =
                before.iter().filter(|b| !after.iter().any(|r| r.id == b.id)).map(|b| b.id.as_str()).collect();
            let changed: Vec<&str> = after
                .iter()
                .filter(|r| before.iter().any(|b| b.id == r.id && b != *r))
                .map(|r| r.id.as_str())
                .collect();
            info!(
                rules = after.len(),
                ?added,
                ?removed,
                ?changed,
                "reload: detection rules replaced; their windows start afresh"
            );
            self.engine.replace_rules(rules);
        }
        // Logs no longer configured: position stored, then let go.
        let kept: Vec<Log> = std::mem::take(&mut self.logs);
        self.log_index.clear();
        for mut log in kept {
            let path = log.follower.path().to_path_buf();
            if interest.logs.has(&path) && !self.log_index.contains_key(&path) {
                self.log_index.insert(path, self.logs.len());
                self.logs.push(log);
            } else {
                if let Some(position) = log.follower.position()
                    && let Err(e) = self.store.set_log_offset(&path.display().to_string(), &position)
                {
                    warn!(error = %e, "storing log position");
                }
                log.dirty = false;
                info!(path = %path.display(), "reload: log no longer followed");
            }
        }
        for (log, path) in config.logs.iter().zip(interest.logs.paths()) {
            if self.log_index.contains_key(path) {
                continue;
            }
            if let Err(e) = self.open_log(log.kind, path) {
                warn!(path = %log.path.display(), error = crate::error_text::one_line(e.as_ref()), "reload: the log cannot be followed");
            }
        }
        // Journal sources: a reader whose table is unchanged goes on; the others stop (storing
        // their cursor) and new ones start from the cursor stored.
        let (kept, stopped): (Vec<JournalSource>, Vec<JournalSource>) =
            std::mem::take(&mut self.readers).into_iter().partition(|r| config.journal.contains(&r.config));
        self.readers = kept;
        for source in stopped {
            info!(source = %super::journal::origin(&source.config), "reload: journal source no longer followed");
            source.reader.stop();
            self.retired.push(source.reader);
        }
        for journal in &config.journal {
            if self.readers.iter().any(|r| &r.config == journal) {
                continue;
            }
            if let Err(e) = self.start_journal(journal) {
                warn!(error = crate::error_text::one_line(e.as_ref()), "reload: a journal source cannot be followed");
            }
        }
        if interest.web_roots != self.web_roots {
            info!(web_roots = ?interest.web_roots, "reload: web roots replaced");
            self.scans.retain(|path, _| interest.web_roots.covers(path));
            self.scanned.retain(|path, _| interest.web_roots.covers(path));
            self.web_roots = interest.web_roots;
        }
        self.config = config;
    }

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

    fn run(mut self, mut inbox: Inbox<Input>, stop: &Stop) {
        let mut next_safety = Instant::now() + SAFETY_POLL;
        let mut next_prune = Instant::now() + Duration::from_secs(60);
        while !stop.is_stopped() {
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
            match inbox.recv_timeout(wait) {
                Received::Item(input) => {
                    self.input(input);
                    while let Received::Item(input) = inbox.try_recv() {
                        self.input(input);
                    }
                }
                Received::Idle => {}
                Received::Closed => break,
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
        drop(inbox);
        for reader in
            std::mem::take(&mut self.readers).into_iter().map(|r| r.reader).chain(std::mem::take(&mut self.retired))
        {
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
                let target = if op == FileOp::Rename { new_path.as_ref() } else { Some(&path) };
                if let Some(target) = target
                    && matches!(op, FileOp::Create | FileOp::Write | FileOp::Rename)
                    && self.web_roots.covers(target)
                {
                    self.scans.insert(target.clone(), Instant::now() + SCAN_QUIET);
                }
                if op == FileOp::Unlink {
                    self.scans.remove(&path);
                    self.scanned.remove(&path);
                }
            }
            Input::Exec { pid, ppid, filename, argv, process } => self.exec(pid, ppid, &filename, &argv, process),
            Input::Reload(reload) => self.reload(*reload),
            Input::Journal { source, line } => {
                let Some(journal) = self.journal_sources.get(source) else { return };
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
            self.emit(Alert::now(AlertBody::Detect(flood.alert(origin))));
        }
        for trigger in triggers.drain(..) {
            self.raise(origin, trigger);
        }
        self.triggers = triggers;
    }

    /// A log rule's threshold was crossed: the ban path is asked to ban the address and raises
    /// this alert with its decision (banned for how long, trusted, or refused).
    fn raise(&mut self, origin: &str, trigger: Crossing) {
        let rule = self.engine.rules.rules[trigger.rule].clone();
        let detector = rule.kind.detector();
        // An IPv4 client of a dual-stack socket is logged as ::ffff:a.b.c.d: banned as itself.
        let addr = match trigger.addr {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(trigger.addr, IpAddr::V4),
            v4 => v4,
        };
        let alert = Alert::now(AlertBody::Detect(DetectAlert {
            rule: rule.id.clone(),
            severity: rule.severity,
            detector,
            description: rule.description,
            source: Some(trigger.addr),
            path: Some(origin.to_string()),
            count: Some(trigger.burst.count),
            window_s: Some(rule.window.as_secs()),
            process: None,
            evidence: trigger.burst.evidence,
            action: DetectAction::AlertOnly,
        }));
        let request = BanRequest::new(
            BanNet::from_ipnet(ipnet::IpNet::from(addr)),
            format!("rule {}", rule.id),
            detector.name(),
            BanDuration::Escalating(self.config.ban_duration),
        )
        .raising(alert)
        .counted_in(self.shared.bans_requested.clone());
        match self.bans.try_send(request) {
            Ok(()) => {
                self.shared.alerts.fetch_add(1, Ordering::Relaxed);
                info!(rule = %rule.id, detector = detector.name(), "detection alert; ban requested");
            }
            Err(e) => {
                let reason = e.to_string();
                let Some(mut alert) = e.into_inner().alert else { return };
                if let AlertBody::Detect(detect) = &mut alert.body {
                    detect.action = DetectAction::BanNotDelivered { reason };
                }
                self.emit(*alert);
            }
        }
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
        self.emit(Alert::now(AlertBody::Detect(DetectAlert {
            rule: first.id.to_string(),
            severity: Severity::Critical,
            detector: Detector::Webshell,
            description: first.description.to_string(),
            source: None,
            path: Some(escape_evidence(&path.display().to_string(), MAX_EVIDENCE)),
            count: None,
            window_s: None,
            process: Some(
                serde_json::json!({"size": scan.size, "scanned_truncated": scan.truncated, "sha256": scan.digest}),
            ),
            evidence,
            action: DetectAction::AlertOnly,
        })));
    }

    fn exec(
        &mut self,
        pid: u32,
        ppid: u32,
        filename: &str,
        argv: &[String],
        view: Option<std::sync::Arc<crate::process::ProcessView>>,
    ) {
        if is_web_server(basename(filename)) {
            return;
        }
        let chain = match &view {
            Some(view) => web_server_ancestry_of(view),
            None => web_server_ancestry(ppid),
        };
        let Some(chain) = chain else { return };
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
        self.emit(Alert::now(AlertBody::Detect(DetectAlert {
            rule: rule.into(),
            severity,
            detector: Detector::WebserverExec,
            description: description.into(),
            source: None,
            path: None,
            count: None,
            window_s: None,
            // The process object of every event, with the program as the exec named it; without
            // the process table, what `/proc` told.
            process: Some(match &view {
                Some(view) => {
                    let mut object = serde_json::to_value(&**view).unwrap_or_default();
                    object["filename"] = escape_evidence(filename, MAX_EVIDENCE).into();
                    object
                }
                None => serde_json::json!({
                    "pid": pid,
                    "ppid": ppid,
                    "filename": escape_evidence(filename, MAX_EVIDENCE),
                    "ancestors": ancestors,
                }),
            }),
            evidence: vec![command],
            action: DetectAction::AlertOnly,
        })));
    }

    fn emit(&mut self, alert: Alert) {
        if let AlertBody::Detect(detect) = &alert.body {
            info!(rule = %detect.rule, detector = detect.detector.name(), "detection alert");
        }
        self.sink.emit(alert);
        self.shared.alerts.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

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

    /// The worker as the daemon runs it: on a harness, offered events by hand as the bus would,
    /// with the ban path applying its requests.
    struct Running {
        workers: Workers,
        events: harness::Sender<Input>,
        shared: Arc<DetectCounters>,
    }

    fn start(config: &crate::config::Config, sink: &AlertSink, bans: &BanSender) -> Running {
        let workers = Workers::default();
        let prepared = prepare(
            &config.detect,
            &config.state_dir,
            sink.clone(),
            bans.clone(),
            Default::default(),
            workers.stop_token(),
        )
        .unwrap();
        let mut workers = workers;
        let (handle, _) = prepared.start(&mut workers).unwrap();
        Running { workers, events: handle.events, shared: handle.shared }
    }

    fn written(path: &Path) -> Input {
        Input::File { op: FileOp::Write, path: path.to_path_buf(), new_path: None }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_worker_resumes_after_a_restart_and_the_ban_path_escalates_repeat_bans() {
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
             [[logs]]\nkind = \"sshd\"\npath = {:?}\n[xdp]\ntrusted = [\"192.0.2.200\"]\ntrust_local = false\n\
             [bans]\ndetect_duration = \"60s\"\n",
            dir.path().join("state").display().to_string(),
            rules.display().to_string(),
            log.display().to_string(),
        );
        let config = crate::config::Config::parse(&text, "test").unwrap();
        std::fs::create_dir_all(&config.state_dir).unwrap();
        let buffer = crate::alert::MemoryLog::default();
        let sink = AlertSink::new(Some(Store::open(&config.database()).unwrap()), Some(buffer.events_log()));
        let (ban_tx, mut ban_rx) = tokio::sync::mpsc::channel(16);
        let mut bans =
            crate::bans::Bans::open(&config.state_dir, &config.xdp, &config.bans, None, sink.clone()).unwrap();

        // First run: starts at the end, reads three new lines.
        let running = start(&config, &sink, &ban_tx);
        for n in 1..=3 {
            append(&log, &failure("192.0.2.1", n));
        }
        running.events.offer(written(&log));
        let shared = running.shared.clone();
        tokio::task::spawn_blocking(move || wait_until("three lines", || shared.lines.load(Ordering::Relaxed) == 3))
            .await
            .unwrap();
        running.workers.shutdown(Duration::from_secs(10)).await;

        // Written while stopped: read once by the next run, nothing before it again.
        append(&log, &failure("192.0.2.1", 4));
        append(&log, &failure("192.0.2.1", 5));
        let running = start(&config, &sink, &ban_tx);
        let shared = running.shared.clone();
        let lines = shared.clone();
        tokio::task::spawn_blocking(move || wait_until("two lines", || lines.lines.load(Ordering::Relaxed) == 2))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(shared.lines.load(Ordering::Relaxed), 2);

        // Two bursts (the window is 1 s), each applied by the ban path: the second ban is twice as long.
        let mut bans_made = Vec::new();
        for burst in 0..2u32 {
            if burst == 1 {
                tokio::time::sleep(Duration::from_millis(1100)).await;
            }
            for n in 0..5 {
                append(&log, &failure("192.0.2.1", 10 * burst + n));
                append(&log, &failure("192.0.2.200", 10 * burst + n));
            }
            running.events.offer(written(&log));
            for _ in 0..2 {
                let request = tokio::time::timeout(Duration::from_secs(10), ban_rx.recv()).await.unwrap().unwrap();
                bans_made.push((request.net.to_string(), request.source.clone(), request.reason.clone()));
                bans.apply(request);
            }
        }
        running.workers.shutdown(Duration::from_secs(10)).await;
        assert!(
            bans_made
                .iter()
                .all(|(_, source, reason)| source == "ssh-bruteforce" && reason == "rule sshd-failed-password")
        );
        let alerts = buffer.lines();
        let detect = |addr: &str| -> Vec<serde_json::Value> {
            alerts.iter().filter(|a| a["kind"] == "detect" && a["source"] == addr).cloned().collect()
        };
        let banned = detect("192.0.2.1");
        assert_eq!(banned.len(), 2, "{alerts:?}");
        let escalation = |offence: u32, duration: &str, reason: &str| serde_json::json!({"offence": offence, "base": "1m", "duration": duration, "reason": reason});
        assert_eq!(
            banned[0]["action"],
            serde_json::json!({"type": "ban_requested", "duration_s": 60, "offence": 1,
                "escalation": escalation(1, "1m", "1st offence: the base duration, 1m")})
        );
        assert_eq!(
            banned[1]["action"],
            serde_json::json!({"type": "ban_requested", "duration_s": 120, "offence": 2,
                "escalation": escalation(2, "2m", "2nd offence: 1m doubled once = 2m")})
        );
        let trusted = detect("192.0.2.200");
        assert_eq!(trusted.len(), 2);
        assert!(trusted.iter().all(|a| a["action"]["type"] == "not_banned_trusted"), "{trusted:?}");
        // The ban path banned the attacker only (created once; the second burst found it banned).
        let ban_alerts: Vec<_> = alerts.iter().filter(|a| a["kind"] == "ban").collect();
        assert_eq!(ban_alerts.len(), 1, "{ban_alerts:?}");
        assert_eq!(ban_alerts[0]["net"], "192.0.2.1");
        let store = Store::open(&config.database()).unwrap();
        assert_eq!(store.alerts().unwrap().iter().filter(|a| a.kind == "detect").count(), 4);
    }
}
