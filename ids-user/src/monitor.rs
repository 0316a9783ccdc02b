//! Change-driven integrity in the daemon: the integrity worker.
//!
//! At start the worker runs every configured collector once and stores the items
//! (`crate::store`, table `current_items`). After that:
//!
//! - **File events.** The events writer hands the paths of file events under a file collector's
//!   `paths` to [`FileEvents::note`] (a prefix test and a `try_send`: no hashing on the hot path).
//!   The worker marks them dirty: the path itself (for create, unlink and rename, old and new
//!   path, everything below it too, since a new directory may have been filled before the
//!   sensor watched it) and, for create/unlink/rename, the parent directory, whose metadata
//!   changed. A dirty path is rehashed once no event named it for [`QUIET`]; only the items at
//!   (and, when deep, below) it are recomputed, with the collectors' `collect_at`.
//! - **Other collectors** (modules, sockets, commands) re-run every `integrity_interval`, and
//!   `listening_sockets` / `kernel_modules` also when the sensor reports a socket entering or
//!   leaving LISTEN / a module loaded or freed (`integrity::Trigger`).
//! - **Verification**: every `verify_interval`, everything is rescanned; a file item that differs
//!   from what the worker holds, with no event pending for its path, is a change the sensor
//!   missed (alert kind `sensor_miss`). At start, the items stored by the previous run are
//!   compared with the first scan the same way (changes made while no daemon ran).
//! - If the channel from the writer overflows, every file collector is rescanned (kind
//!   `integrity`), since some events were not queued.
//!
//! Each change becomes an alert: a JSON line in the events log and a row in `alerts`. The
//! aggregate (as `ids hash` computes it) is recomputed after each batch and shown by `ids status`.
//!
//! The worker is the store's only writer while the daemon runs; `ids baseline` and `ids diff`
//! reach it through the control socket ([`Control`]).
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::config::Config;
use crate::control::Reply;
use crate::integrity::diff::{self, Change};
use crate::integrity::{self, Collector, Digest, Item, Registry, Trigger};
use crate::store::{AlertRow, Store, StoredItem};

/// A dirty path is rehashed once no event has named it for this long.
pub const QUIET: Duration = Duration::from_millis(200);

/// File events the writer may queue for the worker before it falls back to a full rescan.
const QUEUE: usize = 65_536;

/// The events log, shared by the events writer and the worker (each writes whole lines).
pub type SharedOutput = Arc<Mutex<Box<dyn Write + Send>>>;

/// Locks the output even if a writer panicked while holding it.
pub fn lock_output(output: &SharedOutput) -> std::sync::MutexGuard<'_, Box<dyn Write + Send>> {
    output.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A request from the control socket.
#[derive(Debug)]
pub enum Control {
    Baseline(Reply),
    Diff(Reply),
}

/// What wakes the worker: a file change, or a poke to look at its other inputs (a control
/// request, a trigger, `stop`) at once rather than at its next timer.
#[derive(Debug)]
enum Wake {
    Change(FileChange),
    Poke,
}

/// The longest the worker sleeps when nothing is due; everything that needs it sooner pokes it.
const IDLE_WAKE: Duration = Duration::from_secs(1);

/// A file event under a collector's paths.
#[derive(Debug)]
struct FileChange {
    op: &'static str,
    path: PathBuf,
    new_path: Option<PathBuf>,
}

/// What `ids status` shows of the worker.
#[derive(Debug, Default)]
pub struct Shared {
    aggregate: Mutex<Option<Digest>>,
    /// The aggregate again, for tasks that act when it changes (remote CHECKs).
    aggregate_changes: tokio::sync::watch::Sender<Option<Digest>>,
    /// File events queued for the worker and not yet received.
    queued: AtomicU64,
    /// Dirty paths waiting for their quiet period or being rehashed.
    pending: AtomicU64,
    items: AtomicU64,
    alerts: AtomicU64,
    overflowed: AtomicBool,
    ready: AtomicBool,
    /// Bits of the `integrity::Trigger`s the sensor reported since their collectors last ran.
    triggered: AtomicU32,
}

impl Shared {
    /// Sees the aggregate each time it changes (and its current value).
    pub fn watch_aggregate(&self) -> tokio::sync::watch::Receiver<Option<Digest>> {
        self.aggregate_changes.subscribe()
    }

    /// The `aggregate` field and `integrity` object of `ids status --json`.
    pub fn status(&self) -> (serde_json::Value, serde_json::Value) {
        let aggregate = match *self.aggregate.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(digest) => serde_json::Value::String(integrity::hex(&digest)),
            None => serde_json::Value::Null,
        };
        let queued = self.queued.load(Ordering::SeqCst);
        let pending = self.pending.load(Ordering::SeqCst);
        let overflowed = u64::from(self.overflowed.load(Ordering::SeqCst));
        let integrity = serde_json::json!({
            "ready": self.ready.load(Ordering::SeqCst),
            "dirty": queued + pending + overflowed,
            "items": self.items.load(Ordering::Relaxed),
            "alerts": self.alerts.load(Ordering::Relaxed),
        });
        (aggregate, integrity)
    }
}

/// The events writer's handle: decides cheaply whether a file event concerns a collector.
pub struct FileEvents {
    tx: SyncSender<Wake>,
    /// Canonical forms of the collectors' literal path prefixes.
    roots: Vec<PathBuf>,
    shared: Arc<Shared>,
}

impl FileEvents {
    /// The sensor reported `trigger`: the collectors that follow it re-run at the worker's next turn.
    pub fn note_trigger(&self, trigger: Trigger) {
        self.shared.triggered.fetch_or(trigger.bit(), Ordering::SeqCst);
        // A full queue wakes the worker anyway.
        let _ = self.tx.try_send(Wake::Poke);
    }

    /// Queues the paths of a file event if one of them is under a file collector's paths.
    pub fn note(&self, op: &'static str, path: &Path, new_path: Option<&Path>) {
        let concerned = |p: &Path| self.roots.iter().any(|root| p.starts_with(root) || root.starts_with(p));
        if !concerned(path) && !new_path.is_some_and(concerned) {
            return;
        }
        // Counted before it is sent, so `ids status` never shows 0 while a change is in flight.
        self.shared.queued.fetch_add(1, Ordering::SeqCst);
        let change = FileChange { op, path: path.to_path_buf(), new_path: new_path.map(Path::to_path_buf) };
        match self.tx.try_send(Wake::Change(change)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.shared.overflowed.store(true, Ordering::SeqCst);
                self.shared.queued.fetch_sub(1, Ordering::SeqCst);
            }
            Err(TrySendError::Disconnected(_)) => {
                self.shared.queued.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }
}

/// The literal directory or file a `paths` pattern starts with: the pattern itself, or for a
/// glob the components before the first one holding a wildcard.
pub fn literal_prefix(pattern: &str) -> PathBuf {
    if !integrity::paths::is_glob(pattern) {
        return PathBuf::from(pattern);
    }
    let mut prefix = PathBuf::from("/");
    for component in Path::new(pattern).components().skip(1) {
        if integrity::paths::is_glob(&component.as_os_str().to_string_lossy()) {
            break;
        }
        prefix.push(component);
    }
    prefix
}

/// The paths the sensor must watch: `watch` and the literal prefixes of every file collector's
/// `paths`, without the ones inside another.
pub fn watch_paths(config: &Config, collectors: &[Box<dyn Collector>]) -> Vec<PathBuf> {
    let mut all: Vec<PathBuf> = config.watch.clone();
    for collector in collectors {
        all.extend(collector.paths().iter().map(|p| literal_prefix(p)));
    }
    let canonical: Vec<PathBuf> = all.iter().map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone())).collect();
    let mut kept: Vec<PathBuf> = Vec::new();
    for (index, path) in canonical.iter().enumerate() {
        let covered = canonical
            .iter()
            .enumerate()
            .any(|(other, c)| other != index && path.starts_with(c) && (c != path || other < index));
        if !covered {
            kept.push(all[index].clone());
        }
    }
    kept
}

struct FileCollector {
    index: usize,
    /// (canonical prefix, configured prefix) when they differ: events carry resolved paths.
    translate: Vec<(PathBuf, PathBuf)>,
}

#[derive(Debug, Clone, Copy)]
struct Dirty {
    due: Instant,
    deep: bool,
}

pub struct Monitor {
    collectors: Vec<Box<dyn Collector>>,
    files: Vec<FileCollector>,
    hostname: String,
    store: Store,
    /// (collector, item id) → item: what the worker last hashed, mirrored in `current_items`.
    current: BTreeMap<(String, String), Item>,
    dirty: HashMap<PathBuf, Dirty>,
    output: SharedOutput,
    shared: Arc<Shared>,
    integrity_interval: Duration,
    verify_interval: Duration,
}

/// Everything `daemon::run` needs to drive the worker.
pub struct Handles {
    pub files: FileEvents,
    pub waker: Waker,
    pub shared: Arc<Shared>,
    pub watch: Vec<PathBuf>,
    pub thread: std::thread::JoinHandle<()>,
    begin: Option<SyncSender<()>>,
}

/// Control requests and `stop` for the worker, each waking it.
pub struct Waker {
    control: std::sync::mpsc::Sender<Control>,
    poke: SyncSender<Wake>,
    stop: Arc<AtomicBool>,
}

impl Waker {
    /// Hands a control request to the worker and wakes it; gives the request back if the worker
    /// has stopped.
    pub fn request(&self, request: Control) -> Result<(), Control> {
        self.control.send(request).map_err(|unsent| unsent.0)?;
        let _ = self.poke.try_send(Wake::Poke);
        Ok(())
    }

    /// Asks the worker to stop and wakes it.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.poke.try_send(Wake::Poke);
    }
}

impl Handles {
    /// Lets the worker start its first scan: called once the sensor is attached, so that a
    /// change made during the scan is reported and rehashed.
    pub fn begin(&mut self) {
        if let Some(begin) = self.begin.take() {
            let _ = begin.send(());
        }
    }
}

/// Builds the collectors and opens the store (errors name the collector or the file); the
/// worker thread waits for [`Handles::begin`], then scans and serves until the writer's handle
/// is dropped or `stop` is set.
pub fn spawn(config: &Config, output: SharedOutput) -> anyhow::Result<Handles> {
    let registry = Registry::with_builtin();
    let collectors = config.collectors.iter().map(|c| registry.build(c)).collect::<Result<Vec<_>, _>>()?;
    let hostname = integrity::hostname().map_err(integrity::ScanError::Hostname)?;
    let store = Store::open(&config.database())?;
    let watch = watch_paths(config, &collectors);
    let mut files = Vec::new();
    let mut roots = Vec::new();
    for (index, collector) in collectors.iter().enumerate() {
        if collector.paths().is_empty() {
            continue;
        }
        let mut translate = Vec::new();
        for pattern in collector.paths() {
            let literal = literal_prefix(pattern);
            // An absent path: its existing part resolved, as the sensor reports it once created.
            let canonical = std::fs::canonicalize(&literal)
                .ok()
                .or_else(|| crate::sensor::watch::absent_root(&literal).map(|(root, _)| root))
                .unwrap_or_else(|| literal.clone());
            if canonical != literal {
                translate.push((canonical.clone(), literal));
            }
            roots.push(canonical);
        }
        files.push(FileCollector { index, translate });
    }
    let shared = Arc::new(Shared::default());
    let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
    let (control_tx, control_rx) = std::sync::mpsc::channel();
    let stop = Arc::new(AtomicBool::new(false));
    let (begin, begun) = std::sync::mpsc::sync_channel(1);
    let monitor = Monitor {
        collectors,
        files,
        hostname,
        store,
        current: BTreeMap::new(),
        dirty: HashMap::new(),
        output,
        shared: shared.clone(),
        integrity_interval: config.integrity_interval,
        verify_interval: config.verify_interval,
    };
    let thread = std::thread::Builder::new().name("integrity".into()).spawn({
        let stop = stop.clone();
        move || {
            if begun.recv().is_ok() {
                monitor.run(rx, control_rx, &stop);
            }
        }
    })?;
    Ok(Handles {
        files: FileEvents { tx: tx.clone(), roots, shared: shared.clone() },
        waker: Waker { control: control_tx, poke: tx, stop },
        shared,
        watch,
        thread,
        begin: Some(begin),
    })
}

/// How long after a trigger its collectors re-run (see `Monitor::run`).
const TRIGGER_SETTLE: Duration = Duration::from_millis(50);

impl Monitor {
    fn run(mut self, rx: Receiver<Wake>, control: Receiver<Control>, stop: &AtomicBool) {
        let started = Instant::now();
        self.initial_scan();
        info!(items = self.current.len(), elapsed_ms = started.elapsed().as_millis() as u64, "integrity scan done");
        self.shared.ready.store(true, Ordering::SeqCst);
        let mut next_integrity = Instant::now() + self.integrity_interval;
        let mut next_verify = Instant::now() + self.verify_interval;
        // Trigger bits reported by the sensor and when their collectors re-run.
        let mut pending_triggers: Option<(u32, Instant)> = None;
        while !stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            let next_due = self
                .dirty
                .values()
                .map(|d| d.due)
                .chain(pending_triggers.map(|(_, due)| due))
                .min()
                .unwrap_or(now + IDLE_WAKE);
            let wait = next_due.min(now + IDLE_WAKE).saturating_duration_since(now);
            match rx.recv_timeout(wait) {
                Ok(wake) => {
                    if let Wake::Change(change) = wake {
                        self.mark(change);
                    }
                    // Drain what else is queued, bounded so control requests are not starved.
                    for _ in 0..10_000 {
                        match rx.try_recv() {
                            Ok(Wake::Change(change)) => self.mark(change),
                            Ok(Wake::Poke) => {}
                            Err(_) => break,
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            while let Ok(request) = control.try_recv() {
                self.control(request);
            }
            if self.shared.overflowed.load(Ordering::SeqCst) {
                warn!("file events were dropped between the writer and the integrity worker; rescanning files");
                self.dirty.clear();
                self.rescan(true, false, "integrity");
                self.shared.overflowed.store(false, Ordering::SeqCst);
            }
            self.rehash_due(false);
            // A report can come a little before the state it announces is visible (a module is
            // reported freed just before it leaves /proc/modules): wait TRIGGER_SETTLE first.
            let triggered = self.shared.triggered.swap(0, Ordering::SeqCst);
            if triggered != 0 {
                pending_triggers.get_or_insert((0, Instant::now() + TRIGGER_SETTLE)).0 |= triggered;
            }
            if let Some((bits, _)) = pending_triggers.filter(|(_, due)| Instant::now() >= *due) {
                pending_triggers = None;
                for trigger in Trigger::ALL.into_iter().filter(|t| bits & t.bit() != 0) {
                    let changes = self.rescan_matching(|c| c.follows(trigger));
                    self.record(changes, "integrity");
                }
            }
            let now = Instant::now();
            if now >= next_integrity {
                self.rescan(false, true, "integrity");
                next_integrity = now + self.integrity_interval;
            }
            if now >= next_verify {
                self.verify(&rx);
                next_verify = Instant::now() + self.verify_interval;
            }
        }
    }

    /// The first scan. The items stored by the previous run (of the collectors still configured)
    /// are compared with it: what changed while no daemon watched is reported as `sensor_miss`.
    fn initial_scan(&mut self) {
        let previous = self.store.current().unwrap_or_else(|e| {
            warn!(error = %e, "reading the items of the previous run");
            Vec::new()
        });
        let had_state = !previous.is_empty();
        let configured: BTreeSet<String> = self.collectors.iter().map(|c| c.name().to_string()).collect();
        for stored in previous {
            if configured.contains(&stored.collector) {
                self.current.insert((stored.collector, stored.item.id.clone()), stored.item);
            }
        }
        let changes = self.rescan_matching(|_| true);
        if let Err(e) = self.store.replace_current(&self.current_items()) {
            warn!(error = %e, "storing the initial scan");
        }
        if had_state {
            self.record(changes, "sensor_miss");
        } else {
            self.publish();
        }
    }

    fn publish(&mut self) {
        // Like `ids hash`, the host name of the moment.
        if let Ok(hostname) = integrity::hostname() {
            self.hostname = hostname;
        }
        let aggregate = integrity::aggregate_digest(&self.hostname, self.current.values());
        *self.shared.aggregate.lock().unwrap_or_else(|p| p.into_inner()) = Some(aggregate);
        self.shared.aggregate_changes.send_if_modified(|seen| {
            let changed = *seen != Some(aggregate);
            *seen = Some(aggregate);
            changed
        });
        self.shared.items.store(self.current.len() as u64, Ordering::Relaxed);
        self.shared.pending.store(self.dirty.len() as u64, Ordering::SeqCst);
    }

    fn translate(&self, file: &FileCollector, path: &Path) -> PathBuf {
        for (canonical, configured) in &file.translate {
            if let Ok(rest) = path.strip_prefix(canonical) {
                return if rest.as_os_str().is_empty() { configured.clone() } else { configured.join(rest) };
            }
        }
        path.to_path_buf()
    }

    fn mark(&mut self, change: FileChange) {
        let due = Instant::now() + QUIET;
        let mut paths: Vec<(PathBuf, bool)> = Vec::new();
        let structural = matches!(change.op, "create" | "unlink" | "rename");
        for path in std::iter::once(&change.path).chain(change.new_path.as_ref()) {
            // Every configured spelling of the path (a collector may name it through a link).
            let mut spellings = vec![path.clone()];
            for file in &self.files {
                let translated = self.translate(file, path);
                if !spellings.contains(&translated) {
                    spellings.push(translated);
                }
            }
            for spelling in spellings {
                if structural {
                    if let Some(parent) = spelling.parent() {
                        paths.push((parent.to_path_buf(), false));
                    }
                }
                paths.push((spelling, structural));
            }
        }
        for (path, deep) in paths {
            let entry = self.dirty.entry(path).or_insert(Dirty { due, deep });
            entry.due = due;
            entry.deep |= deep;
        }
        self.shared.pending.store(self.dirty.len() as u64, Ordering::SeqCst);
        self.shared.queued.fetch_sub(1, Ordering::SeqCst);
    }

    /// Rehashes the dirty paths whose quiet period is over (all of them when `all`).
    fn rehash_due(&mut self, all: bool) {
        let now = Instant::now();
        let mut due: Vec<(PathBuf, bool)> =
            self.dirty.iter().filter(|(_, d)| all || d.due <= now).map(|(path, d)| (path.clone(), d.deep)).collect();
        if due.is_empty() {
            return;
        }
        // Parents before children, so a deep rescan of a directory comes first.
        due.sort();
        let mut changes = Vec::new();
        for (path, deep) in &due {
            for file in 0..self.files.len() {
                let index = self.files[file].index;
                let collector = &self.collectors[index];
                let Some(result) = collector.collect_at(path, *deep) else { continue };
                let name = collector.name().to_string();
                match result {
                    Ok(items) => {
                        let scope = |id: &str| {
                            crate::integrity::id_path(id)
                                .is_some_and(|(_, p)| p == *path || (*deep && p.starts_with(path)))
                        };
                        changes.extend(self.replace_items(&name, items, scope));
                    }
                    Err(e) => warn!(collector = %name, path = %path.display(), error = %e, "rehash failed"),
                }
            }
        }
        for (path, _) in &due {
            self.dirty.remove(path);
        }
        self.record(changes, "integrity");
    }

    /// The periodic verification: everything is rescanned; a change no pending event explains
    /// is one the sensor missed (`sensor_miss`). The other collectors' changes are ordinary.
    fn verify(&mut self, rx: &Receiver<Wake>) {
        self.rehash_due(true);
        self.rescan(false, true, "integrity");
        let changes = self.rescan_changes(true, false);
        // Events that arrived during the scan explain the changes at their paths.
        while let Ok(wake) = rx.try_recv() {
            if let Wake::Change(change) = wake {
                self.mark(change);
            }
        }
        let (explained, missed): (Vec<Change>, Vec<Change>) = changes
            .into_iter()
            .partition(|change| crate::integrity::id_path(&change.id).is_some_and(|(_, path)| self.is_dirty(&path)));
        info!(missed = missed.len(), "verification scan done");
        self.record(explained, "integrity");
        self.record(missed, "sensor_miss");
    }

    /// Whether `path` is dirty itself or below a path dirty with its whole tree.
    fn is_dirty(&self, path: &Path) -> bool {
        self.dirty.contains_key(path)
            || path.ancestors().skip(1).any(|ancestor| self.dirty.get(ancestor).is_some_and(|d| d.deep))
    }

    /// Reruns whole collectors: the file ones when `files`, the others when `others`.
    fn rescan(&mut self, files: bool, others: bool, kind: &str) {
        let changes = self.rescan_changes(files, others);
        self.record(changes, kind);
    }

    fn rescan_changes(&mut self, files: bool, others: bool) -> Vec<Change> {
        self.rescan_matching(|c| {
            let is_file = !c.paths().is_empty();
            (is_file && files) || (!is_file && others)
        })
    }

    /// Re-runs the collectors `select` picks, side by side as `ids hash` does; returns what changed.
    fn rescan_matching(&mut self, select: impl Fn(&dyn Collector) -> bool) -> Vec<Change> {
        let selected: Vec<&dyn Collector> =
            self.collectors.iter().map(|collector| collector.as_ref()).filter(|collector| select(*collector)).collect();
        let names: Vec<String> = selected.iter().map(|collector| collector.name().to_string()).collect();
        let results = integrity::collect_all(&selected);
        let mut changes = Vec::new();
        for (name, result) in names.into_iter().zip(results) {
            match result {
                Ok(items) => changes.extend(self.replace_items(&name, items, |_| true)),
                Err(e) => warn!(collector = %name, error = %e, "collector failed"),
            }
        }
        changes
    }

    /// Replaces the items of `collector` whose id `in_scope` selects by `items`; returns what changed.
    fn replace_items(&mut self, collector: &str, items: Vec<Item>, in_scope: impl Fn(&str) -> bool) -> Vec<Change> {
        let old_keys: Vec<(String, String)> = self
            .current
            .range((collector.to_string(), String::new())..)
            .take_while(|((c, _), _)| c == collector)
            .filter(|((_, id), _)| in_scope(id))
            .map(|(key, _)| key.clone())
            .collect();
        let mut old: BTreeMap<String, Item> = BTreeMap::new();
        for key in old_keys {
            if let Some(item) = self.current.remove(&key) {
                old.insert(key.1, item);
            }
        }
        let new: BTreeMap<String, Item> =
            items.into_iter().filter(|i| in_scope(&i.id)).map(|i| (i.id.clone(), i)).collect();
        let ids: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
        let changes: Vec<Change> =
            ids.into_iter().filter_map(|id| diff::change(collector, id, old.get(id), new.get(id))).collect();
        for (id, item) in new {
            self.current.insert((collector.to_string(), id), item);
        }
        changes
    }

    /// Stores the changes, writes their alerts and republishes the aggregate.
    fn record(&mut self, changes: Vec<Change>, kind: &str) {
        if !changes.is_empty() {
            let time = crate::store::now();
            let updates: Vec<(String, String, Option<Item>)> =
                changes.iter().map(|c| (c.collector.clone(), c.id.clone(), c.new.clone())).collect();
            let rows: Vec<AlertRow> = changes
                .iter()
                .map(|c| AlertRow {
                    time: time.clone(),
                    kind: kind.to_string(),
                    item_id: c.id.clone(),
                    collector: c.collector.clone(),
                    what: serde_json::json!({
                        "change": c.change.name(),
                        "attributes": c.attributes,
                        "old": c.old.as_ref().map(item_json),
                        "new": c.new.as_ref().map(item_json),
                    }),
                })
                .collect();
            if let Err(e) = self.store.apply(&updates, &rows) {
                warn!(error = %e, "storing integrity changes");
            }
            let mut lines = Vec::new();
            for row in &rows {
                let mut alert = serde_json::json!({
                    "time": row.time,
                    "kind": row.kind,
                    "collector": row.collector,
                    "id": row.item_id,
                });
                if let (Some(alert), Some(what)) = (alert.as_object_mut(), row.what.as_object()) {
                    alert.extend(what.clone());
                }
                if serde_json::to_writer(&mut lines, &alert).is_ok() {
                    lines.push(b'\n');
                }
            }
            let mut out = lock_output(&self.output);
            if let Err(e) = out.write_all(&lines).and_then(|()| out.flush()) {
                warn!(error = %e, "writing integrity alerts to the events log");
            }
            drop(out);
            self.shared.alerts.fetch_add(rows.len() as u64, Ordering::Relaxed);
        }
        self.publish();
    }

    fn current_items(&self) -> Vec<StoredItem> {
        self.current
            .iter()
            .map(|((collector, _), item)| StoredItem { collector: collector.clone(), item: item.clone() })
            .collect()
    }

    fn control(&mut self, request: Control) {
        // Answer about the present: rehash what is dirty now instead of waiting for quiet.
        self.rehash_due(true);
        let (reply, response) = match request {
            Control::Baseline(reply) => {
                let items = self.current_items();
                let response = match self.store.replace_baseline(&items) {
                    Ok(()) => serde_json::json!({
                        "ok": true,
                        "items": items.len(),
                        "aggregate": integrity::hex(&integrity::aggregate_digest(&self.hostname, self.current.values())),
                    }),
                    Err(e) => serde_json::json!({"ok": false, "error": e.to_string()}),
                };
                (reply, response)
            }
            Control::Diff(reply) => {
                let response = match self.store.baseline() {
                    Ok(baseline) => {
                        let diff = diff::diff(&baseline, &self.current_items());
                        serde_json::json!({"ok": true, "diff": diff.to_json()})
                    }
                    Err(e) => serde_json::json!({"ok": false, "error": e.to_string()}),
                };
                (reply, response)
            }
        };
        let _ = reply.send(response);
    }
}

/// `{"digest": hex, "detail": ...}` of an item in an alert.
fn item_json(item: &Item) -> serde_json::Value {
    serde_json::json!({"digest": integrity::hex(&item.digest), "detail": item.detail})
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An events log that tests can read.
    #[derive(Clone, Default)]
    struct Log(Arc<Mutex<Vec<u8>>>);

    impl Write for Log {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The worker without the sensor: events are fed by hand, as the writer would.
    #[test]
    fn a_noted_change_is_rehashed_after_the_quiet_period_and_alerted() {
        let state = tempfile::tempdir().unwrap();
        let watched = tempfile::tempdir().unwrap();
        let root = watched.path().display().to_string();
        std::fs::write(watched.path().join("f"), "one").unwrap();
        let text = format!(
            "watch = []\nevents_log = \"-\"\nstate_dir = {:?}\n[[collectors]]\nkind = \"file_contents\"\npaths = [{root:?}]\n",
            state.path().display().to_string()
        );
        let config = Config::parse(&text, "test").unwrap();
        let log = Log::default();
        let mut handles = spawn(&config, Arc::new(Mutex::new(Box::new(log.clone())))).unwrap();
        handles.begin();
        assert!(handles.watch.iter().any(|p| p == watched.path()), "{:?}", handles.watch);
        let status = || handles.shared.status();
        wait_until("the first scan", || status().1["ready"] == true);
        let scan = |_: ()| {
            let report = integrity::scan(&Registry::with_builtin(), &config.collectors).unwrap();
            serde_json::Value::String(integrity::hex(&report.aggregate))
        };
        assert_eq!(status().0, scan(()));

        let (reply, answer) = tokio::sync::oneshot::channel();
        handles.waker.request(Control::Baseline(reply)).unwrap();
        assert_eq!(answer.blocking_recv().unwrap()["ok"], true);

        let file = watched.path().join("f");
        std::fs::write(&file, "two").unwrap();
        // An event outside the collectors' paths is not even queued.
        handles.files.note("write", Path::new("/nonexistent/elsewhere"), None);
        assert_eq!(status().1["dirty"], 0);
        let noted = Instant::now();
        handles.files.note("write", &file, None);
        assert_eq!(status().1["dirty"], 1);
        wait_until("the rehash", || status().1["dirty"] == 0);
        assert!(noted.elapsed() >= QUIET, "rehashed before the quiet period");
        assert_eq!(status().0, scan(()));
        let lines = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
        let alert: serde_json::Value = serde_json::from_str(lines.lines().next().unwrap()).unwrap();
        assert_eq!(alert["kind"], "integrity");
        assert_eq!(alert["id"], format!("file:{root}/f"));
        assert_eq!(alert["attributes"], serde_json::json!(["content"]));

        let (reply, answer) = tokio::sync::oneshot::channel();
        handles.waker.request(Control::Diff(reply)).unwrap();
        let diff = answer.blocking_recv().unwrap();
        assert_eq!(diff["diff"]["changed"][0]["id"], format!("file:{root}/f"), "{diff}");
        let store = Store::open(&config.database()).unwrap();
        assert_eq!(store.alerts().unwrap().len(), 1);

        handles.waker.stop();
        drop(handles.files);
        handles.thread.join().unwrap();
    }

    #[test]
    fn literal_prefix_stops_at_the_first_wildcard() {
        assert_eq!(literal_prefix("/etc/ssh/*.conf"), Path::new("/etc/ssh"));
        assert_eq!(literal_prefix("/etc/*/x"), Path::new("/etc"));
        assert_eq!(literal_prefix("/etc/passwd"), Path::new("/etc/passwd"));
    }
}
