//! Change-driven integrity in the daemon: the integrity worker, a consumer of the event bus.
//!
//! At start the worker runs every configured collector once and stores the items
//! (`crate::store`, table `current_items`). After that:
//!
//! - **File events.** The bus hands it the file events under a file collector's `paths`
//!   ([`Interest::wants`]: a prefix test, no hashing on the hot path). The worker marks them
//!   dirty: the path itself (for create, unlink and rename, old and new path, everything below
//!   it too, since a new directory may have been filled before the sensor watched it) and, for
//!   create/unlink/rename, the parent directory, whose metadata changed. A dirty path is
//!   rehashed once no event named it for [`REHASH_QUIET`]; only the items at (and, when deep, below) it
//!   are recomputed, with the collectors' `collect_at`.
//! - **Other collectors** (modules, sockets, commands) re-run every `integrity_interval`, and
//!   `listening_sockets` / `kernel_modules` also when the sensor reports a socket entering or
//!   leaving LISTEN / a module loaded or freed (`integrity::Trigger`).
//! - **Verification**: every `verify_interval`, everything is rescanned; a file item that differs
//!   from what the worker holds, with no event pending for its path, is a change the sensor
//!   missed (alert kind `sensor_miss`). At start, the items stored by the previous run are
//!   compared with the first scan the same way (changes made while no daemon ran).
//! - If its queue overflows, every file collector is rescanned (kind `integrity`), since some
//!   events were not queued.
//!
//! Each change becomes an alert through the alert sink, stored in the same transaction as the
//! item it changed. The aggregate (as `ids hash` computes it) is recomputed after each batch and
//! shown by `ids status`.
//!
//! SIGHUP rebuilds the collectors ([`rebuild`], [`Control::Reconfigure`]): new and changed ones
//! are scanned and their items taken without alerts, removed ones' items leave.
//!
//! The worker is the store's only writer of items while the daemon runs; `ids baseline` and
//! `ids diff` reach it through the control socket ([`Control`]).
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ids_common::FileOp;
use tracing::{info, warn};

use super::config::WorkerSettings;
use super::diff::{self, Change};
use super::{Collector, Digest, Item, Registry, Trigger};
use crate::alert::{Alert, AlertBody, AlertSink, ChangedBy, IntegrityAlert, ItemState, MAX_CHANGED_BY};
use crate::event::{Detail, Event};
use crate::harness::{self, Inbox, QueueStats, Received, Stop, Workers};
use crate::path_prefix::PathSet;
use crate::store::{Store, StoredItem};
use crate::time::deadline_after;

/// A dirty path is rehashed once no event has named it for this long.
pub(crate) const REHASH_QUIET: Duration = Duration::from_millis(200);

/// Events the bus may queue for the worker before it falls back to a full rescan.
const QUEUE: usize = 65_536;

/// The longest the worker sleeps when nothing is due; everything that needs it sooner wakes it.
const IDLE_WAKE: Duration = Duration::from_secs(1);

/// A request from the control socket, answered by the worker itself so that a long rehash never
/// blocks the daemon's loop.
#[derive(Debug)]
pub(crate) enum Control {
    Baseline(tokio::sync::oneshot::Sender<Result<BaselineAccepted, String>>),
    Diff(tokio::sync::oneshot::Sender<Result<diff::Diff, String>>),
    /// SIGHUP: the collectors and intervals as read again.
    Reconfigure(Box<Reconfigure>),
}

/// The collectors and intervals read again on SIGHUP, built by the daemon before anything is
/// applied (a collector that does not build leaves the configuration in force).
pub(crate) struct Reconfigure {
    built: Built,
    integrity_interval: Duration,
    verify_interval: Duration,
}

impl std::fmt::Debug for Reconfigure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reconfigure").field("collectors", &self.built.configs).finish_non_exhaustive()
    }
}

/// What [`rebuild`] gives the daemon: the worker's part, the events it wants from the bus from
/// now on, and the paths the sensor must watch for the collectors.
pub(crate) struct Rebuilt {
    pub(crate) reconfigure: Reconfigure,
    pub(crate) interest: Interest,
    pub(crate) watch: Vec<PathBuf>,
}

/// The collectors of `config` built, as at start.
struct Built {
    configs: Vec<super::config::CollectorConfig>,
    collectors: Vec<Box<dyn Collector>>,
    files: Vec<FileCollector>,
    /// Canonical forms of the file collectors' literal path prefixes.
    roots: Vec<PathBuf>,
    watch: Vec<PathBuf>,
}

fn build(config: &WorkerSettings) -> anyhow::Result<Built> {
    let registry = Registry::with_builtin();
    let collectors = config.collectors.iter().map(|c| registry.build(c)).collect::<Result<Vec<_>, _>>()?;
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
                .or_else(|| super::paths::absent_root(&literal).map(|(root, _)| root))
                .unwrap_or_else(|| literal.clone());
            if canonical != literal {
                translate.push((canonical.clone(), literal));
            }
            roots.push(canonical);
        }
        files.push(FileCollector { index, translate });
    }
    Ok(Built { configs: config.collectors.clone(), collectors, files, roots, watch })
}

/// SIGHUP: the collectors of `config` built for [`Control::Reconfigure`].
pub(crate) fn rebuild(config: &WorkerSettings) -> anyhow::Result<Rebuilt> {
    let built = build(config)?;
    let (interest, watch) = (Interest { roots: PathSet::new(built.roots.clone()) }, built.watch.clone());
    let reconfigure =
        Reconfigure { built, integrity_interval: config.integrity_interval, verify_interval: config.verify_interval };
    Ok(Rebuilt { reconfigure, interest, watch })
}

/// The answer to [`Control::Baseline`].
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub(crate) struct BaselineAccepted {
    pub(crate) items: usize,
    pub(crate) aggregate: String,
}

/// Which kind of alert a batch of changes raises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChangeAlert {
    Integrity,
    SensorMiss,
}

/// Which collectors a rescan re-runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rescan {
    Files,
    Others,
}

/// What `ids status` shows of the worker.
#[derive(Debug, Default)]
pub(crate) struct WorkerState {
    aggregate: Mutex<Option<Digest>>,
    /// The aggregate of the accepted baseline (`None`: no baseline), for the fleet's heartbeat:
    /// the console tells whether a host still matches its baseline.
    baseline_aggregate: Mutex<Option<Digest>>,
    /// The aggregate again, for tasks that act when it changes (remote CHECKs).
    aggregate_changes: tokio::sync::watch::Sender<Option<Digest>>,
    /// Dirty paths waiting for their quiet period or being rehashed.
    pending: AtomicU64,
    items: AtomicU64,
    alerts: AtomicU64,
    /// Items in the baseline (0: none accepted yet).
    baseline_items: AtomicU64,
    /// Set when the queue dropped events, until the rescan that makes up for them is done.
    overflowed: AtomicBool,
    ready: AtomicBool,
    queue: Arc<QueueStats>,
}

/// The worker's part of `ids status`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub(crate) struct IntegrityStatus {
    pub(crate) ready: bool,
    /// Events queued, paths waiting to be rehashed, and a pending rescan after an overflow.
    pub(crate) dirty: u64,
    pub(crate) items: u64,
    pub(crate) alerts: u64,
    /// Items in the baseline, 0 until `ids baseline` is run; `None` from a daemon that does not
    /// tell.
    #[serde(default)]
    pub(crate) baseline_items: Option<u64>,
}

impl WorkerState {
    /// Sees the aggregate each time it changes (and its current value).
    pub(crate) fn watch_aggregate(&self) -> tokio::sync::watch::Receiver<Option<Digest>> {
        self.aggregate_changes.subscribe()
    }

    pub(crate) fn aggregate(&self) -> Option<Digest> {
        *self.aggregate.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn baseline_aggregate(&self) -> Option<Digest> {
        *self.baseline_aggregate.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_baseline_aggregate(&self, aggregate: Option<Digest>) {
        *self.baseline_aggregate.lock().unwrap_or_else(|p| p.into_inner()) = aggregate;
    }

    pub(crate) fn status(&self) -> IntegrityStatus {
        let queued = self.queue.queued();
        let pending = self.pending.load(Ordering::SeqCst);
        let overflowed = u64::from(self.overflowed.load(Ordering::SeqCst));
        IntegrityStatus {
            ready: self.ready.load(Ordering::SeqCst),
            dirty: queued + pending + overflowed,
            items: self.items.load(Ordering::Relaxed),
            alerts: self.alerts.load(Ordering::Relaxed),
            baseline_items: Some(self.baseline_items.load(Ordering::Relaxed)),
        }
    }
}

/// Which events the worker takes from the bus: file events under a file collector's paths, and
/// the listen and module events its triggers follow.
pub(crate) struct Interest {
    /// Canonical forms of the collectors' literal path prefixes.
    roots: PathSet,
}

impl Interest {
    pub(crate) fn wants(&self, event: &Event) -> bool {
        match &event.detail {
            Detail::File { path, new_path, .. } => {
                let concerned = |p: &Path| self.roots.overlaps(p);
                concerned(path) || new_path.as_deref().is_some_and(concerned)
            }
            Detail::Listen { .. } | Detail::Module { .. } => true,
            _ => false,
        }
    }
}

/// The literal directory or file a `paths` pattern starts with: the pattern itself, or for a
/// glob the components before the first one holding a wildcard.
pub fn literal_prefix(pattern: &str) -> PathBuf {
    if !super::paths::is_glob(pattern) {
        return PathBuf::from(pattern);
    }
    let mut prefix = PathBuf::from("/");
    for component in Path::new(pattern).components().skip(1) {
        if super::paths::is_glob(&component.as_os_str().to_string_lossy()) {
            break;
        }
        prefix.push(component);
    }
    prefix
}

/// The paths the sensor must watch: `watch` and the literal prefixes of every file collector's
/// `paths`, without the ones inside another.
pub fn watch_paths(config: &WorkerSettings, collectors: &[Box<dyn Collector>]) -> Vec<PathBuf> {
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

#[derive(Debug, Clone)]
struct Dirty {
    due: Instant,
    deep: bool,
    /// Who made it dirty, the last first.
    writers: Vec<ChangedBy>,
}

pub(crate) struct Worker {
    /// The collectors as configured, to tell which a SIGHUP changed.
    configs: Vec<super::config::CollectorConfig>,
    collectors: Vec<Box<dyn Collector>>,
    files: Vec<FileCollector>,
    hostname: String,
    store: Store,
    /// (collector, item id) → item: what the worker last hashed, mirrored in `current_items`.
    current: BTreeMap<(String, String), Item>,
    dirty: HashMap<PathBuf, Dirty>,
    sink: AlertSink,
    shared: Arc<WorkerState>,
    integrity_interval: Duration,
    verify_interval: Duration,
    /// Queue drops already made up for by a rescan.
    dropped_seen: u64,
    /// sshd's logins, for writers whose login was not known when they wrote.
    logins: Arc<crate::process::Logins>,
}

/// The worker built, not yet started: the daemon attaches the sensor to `watch` first, so that
/// no change made during the first scan is missed.
pub(crate) struct Prepared {
    worker: Worker,
    interest: Interest,
    /// The paths the sensor must watch for the collectors.
    pub(crate) watch: Vec<PathBuf>,
}

/// The running worker, as the daemon holds it.
/// (The events it wants, [`Interest`], are the bus's to test; the daemon replaces them on SIGHUP.)
pub(crate) struct Handle {
    /// The worker's queue; the bus offers it the events [`Interest::wants`].
    pub(crate) events: harness::Sender<Arc<Event>>,
    control: std::sync::mpsc::Sender<Control>,
    pub(crate) shared: Arc<WorkerState>,
}

impl Handle {
    /// Hands a control request to the worker and wakes it; gives the request back if the worker
    /// has stopped.
    pub(crate) fn request(&self, request: Control) -> Result<(), Control> {
        self.control.send(request).map_err(|unsent| unsent.0)?;
        self.events.wake();
        Ok(())
    }
}

/// Builds the collectors and opens the store (errors name the collector or the file).
pub(crate) fn prepare(
    config: &WorkerSettings,
    sink: AlertSink,
    logins: Arc<crate::process::Logins>,
) -> anyhow::Result<Prepared> {
    let Built { configs, collectors, files, roots, watch } = build(config)?;
    let hostname = super::hostname().map_err(super::ScanError::Hostname)?;
    let store = Store::open(&crate::store::db_path(&config.state_dir))?;
    let worker = Worker {
        configs,
        collectors,
        files,
        hostname,
        store,
        current: BTreeMap::new(),
        dirty: HashMap::new(),
        sink,
        shared: Arc::new(WorkerState::default()),
        integrity_interval: config.integrity_interval,
        verify_interval: config.verify_interval,
        dropped_seen: 0,
        logins,
    };
    Ok(Prepared { worker, interest: Interest { roots: PathSet::new(roots) }, watch })
}

impl Prepared {
    /// Starts the worker's thread (it scans, then serves until stop); returns it with the events
    /// it wants from the bus.
    pub(crate) fn start(self, workers: &mut Workers) -> anyhow::Result<(Handle, Interest)> {
        let (events, inbox) = harness::queue(QUEUE);
        let (control, control_rx) = std::sync::mpsc::channel();
        let mut worker = self.worker;
        worker.shared = Arc::new(WorkerState { queue: inbox.stats().clone(), ..WorkerState::default() });
        // Read once here; the worker keeps it up to date as it accepts baselines.
        if let Ok(count) = worker.store.baseline_len() {
            worker.shared.baseline_items.store(count, Ordering::Relaxed);
        }
        if let Ok(baseline) = worker.store.baseline()
            && !baseline.is_empty()
        {
            let aggregate = super::aggregate_digest(&worker.hostname, baseline.iter().map(|stored| &stored.item));
            worker.shared.set_baseline_aggregate(Some(aggregate));
        }
        let shared = worker.shared.clone();
        let waker = events.clone();
        workers.spawn_thread(
            "integrity",
            move || waker.wake(),
            move |stop| {
                worker.run(inbox, control_rx, &stop);
                Ok(())
            },
        )?;
        Ok((Handle { events, control, shared }, self.interest))
    }
}

/// How long after a trigger its collectors re-run (see `Monitor::run`).
const TRIGGER_SETTLE: Duration = Duration::from_millis(50);

impl Worker {
    fn run(mut self, mut inbox: Inbox<Arc<Event>>, control: std::sync::mpsc::Receiver<Control>, stop: &Stop) {
        let started = Instant::now();
        self.initial_scan();
        info!(items = self.current.len(), elapsed_ms = started.elapsed().as_millis() as u64, "integrity scan done");
        self.shared.ready.store(true, Ordering::SeqCst);
        let mut next_integrity = deadline_after(Instant::now(), self.integrity_interval);
        let mut next_verify = deadline_after(Instant::now(), self.verify_interval);
        // Trigger bits reported by the sensor and when their collectors re-run.
        let mut pending_triggers: Option<(u32, Instant)> = None;
        let mut triggered = 0u32;
        while !stop.is_stopped() {
            let now = Instant::now();
            let next_due = self
                .dirty
                .values()
                .map(|d| d.due)
                .chain(pending_triggers.map(|(_, due)| due))
                .min()
                .unwrap_or(now + IDLE_WAKE);
            let wait = next_due.min(now + IDLE_WAKE).saturating_duration_since(now);
            match inbox.recv_timeout(wait) {
                Received::Item(event) => {
                    self.take(&event, &mut triggered);
                    // Drain what else is queued, bounded so control requests are not starved.
                    for _ in 0..10_000 {
                        match inbox.try_recv() {
                            Received::Item(event) => self.take(&event, &mut triggered),
                            Received::Idle => break,
                            Received::Closed => return,
                        }
                    }
                }
                Received::Idle => {}
                Received::Closed => return,
            }
            while let Ok(request) = control.try_recv() {
                match request {
                    Control::Reconfigure(new) => {
                        let intervals = (new.integrity_interval, new.verify_interval);
                        let restart = intervals != (self.integrity_interval, self.verify_interval);
                        self.reconfigure(*new);
                        if restart {
                            next_integrity = deadline_after(Instant::now(), self.integrity_interval);
                            next_verify = deadline_after(Instant::now(), self.verify_interval);
                        }
                    }
                    request => self.control(request),
                }
            }
            let dropped = inbox.stats().dropped();
            if dropped != self.dropped_seen {
                self.shared.overflowed.store(true, Ordering::SeqCst);
                warn!(
                    dropped = dropped - self.dropped_seen,
                    "events were dropped before the integrity worker; rescanning files"
                );
                self.dropped_seen = dropped;
                self.dirty.clear();
                self.rescan(Rescan::Files, ChangeAlert::Integrity);
                self.shared.overflowed.store(false, Ordering::SeqCst);
            }
            self.rehash_due(false);
            // A report can come a little before the state it announces is visible (a module is
            // reported freed just before it leaves /proc/modules): wait TRIGGER_SETTLE first.
            if triggered != 0 {
                pending_triggers.get_or_insert((0, Instant::now() + TRIGGER_SETTLE)).0 |=
                    std::mem::take(&mut triggered);
            }
            if let Some((bits, _)) = pending_triggers.filter(|(_, due)| Instant::now() >= *due) {
                pending_triggers = None;
                for trigger in Trigger::ALL.into_iter().filter(|t| bits & t.bit() != 0) {
                    let changes = self.rescan_matching(|c| c.follows(trigger));
                    self.record(changes, ChangeAlert::Integrity, &HashMap::new());
                }
            }
            let now = Instant::now();
            if now >= next_integrity {
                self.rescan(Rescan::Others, ChangeAlert::Integrity);
                next_integrity = deadline_after(now, self.integrity_interval);
            }
            if now >= next_verify {
                self.verify(&mut inbox, &mut triggered);
                next_verify = deadline_after(Instant::now(), self.verify_interval);
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
            self.record(changes, ChangeAlert::SensorMiss, &HashMap::new());
        } else {
            self.publish();
        }
    }

    fn publish(&mut self) {
        // Like `ids hash`, the host name of the moment.
        if let Ok(hostname) = super::hostname() {
            self.hostname = hostname;
        }
        let aggregate = super::aggregate_digest(&self.hostname, self.current.values());
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

    /// Takes an event from the bus: a file change is marked dirty, a listen or module event
    /// sets its trigger.
    fn take(&mut self, event: &Event, triggered: &mut u32) {
        match &event.detail {
            Detail::File { op, path, new_path, .. } => {
                let writer = event.process.as_ref().map(|process| ChangedBy {
                    operation: crate::event::file_op_name(*op),
                    time: event.time,
                    process: process.clone(),
                });
                self.mark(*op, path, new_path.as_deref(), writer)
            }
            Detail::Listen { .. } => *triggered |= Trigger::ListeningSockets.bit(),
            Detail::Module { .. } => *triggered |= Trigger::KernelModules.bit(),
            _ => {}
        }
    }

    fn mark(&mut self, op: FileOp, path: &Path, new_path: Option<&Path>, writer: Option<ChangedBy>) {
        let due = Instant::now() + REHASH_QUIET;
        let mut paths: Vec<(PathBuf, bool)> = Vec::new();
        let structural = matches!(op, FileOp::Create | FileOp::Unlink | FileOp::Rename);
        for path in std::iter::once(path).chain(new_path) {
            // Every configured spelling of the path (a collector may name it through a link).
            let mut spellings = vec![path.to_path_buf()];
            for file in &self.files {
                let translated = self.translate(file, path);
                if !spellings.contains(&translated) {
                    spellings.push(translated);
                }
            }
            for spelling in spellings {
                if structural && let Some(parent) = spelling.parent() {
                    paths.push((parent.to_path_buf(), false));
                }
                paths.push((spelling, structural));
            }
        }
        for (path, deep) in paths {
            let entry = self.dirty.entry(path).or_insert(Dirty { due, deep, writers: Vec::new() });
            entry.due = due;
            entry.deep |= deep;
            if let Some(writer) = &writer {
                add_writer(&mut entry.writers, writer);
            }
        }
        self.shared.pending.store(self.dirty.len() as u64, Ordering::SeqCst);
    }

    /// Rehashes the dirty paths whose quiet period is over (all of them when `all`).
    fn rehash_due(&mut self, all: bool) {
        let now = Instant::now();
        let mut due: Vec<(PathBuf, bool)> =
            self.dirty.iter().filter(|(_, d)| all || d.due <= now).map(|(path, d)| (path.clone(), d.deep)).collect();
        if due.is_empty() {
            return;
        }
        let mut done = HashMap::new();
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
                            super::id_path(id).is_some_and(|(_, p)| p == *path || (*deep && p.starts_with(path)))
                        };
                        changes.extend(self.replace_items(&name, items, scope));
                    }
                    Err(e) => warn!(collector = %name, path = %path.display(), error = %e, "rehash failed"),
                }
            }
        }
        for (path, _) in &due {
            if let Some(dirty) = self.dirty.remove(path) {
                done.insert(path.clone(), dirty);
            }
        }
        self.record(changes, ChangeAlert::Integrity, &done);
    }

    /// The periodic verification: everything is rescanned; a change no pending event explains
    /// is one the sensor missed (`sensor_miss`). The other collectors' changes are ordinary.
    fn verify(&mut self, inbox: &mut Inbox<Arc<Event>>, triggered: &mut u32) {
        self.rehash_due(true);
        self.rescan(Rescan::Others, ChangeAlert::Integrity);
        let changes = self.rescan_changes(Rescan::Files);
        // Events that arrived during the scan explain the changes at their paths.
        while let Received::Item(event) = inbox.try_recv() {
            self.take(&event, triggered);
        }
        let (explained, missed): (Vec<Change>, Vec<Change>) = changes
            .into_iter()
            .partition(|change| super::id_path(&change.id).is_some_and(|(_, path)| self.is_dirty(&path)));
        info!(missed = missed.len(), "verification scan done");
        let dirty = std::mem::take(&mut self.dirty);
        self.record(explained, ChangeAlert::Integrity, &dirty);
        self.dirty = dirty;
        self.record(missed, ChangeAlert::SensorMiss, &HashMap::new());
    }

    /// Whether `path` is dirty itself or below a path dirty with its whole tree.
    fn is_dirty(&self, path: &Path) -> bool {
        self.dirty.contains_key(path)
            || path.ancestors().skip(1).any(|ancestor| self.dirty.get(ancestor).is_some_and(|d| d.deep))
    }

    /// Reruns whole collectors: the file ones, or the others.
    fn rescan(&mut self, which: Rescan, alert: ChangeAlert) {
        let changes = self.rescan_changes(which);
        self.record(changes, alert, &HashMap::new());
    }

    fn rescan_changes(&mut self, which: Rescan) -> Vec<Change> {
        self.rescan_matching(|c| {
            let is_file = !c.paths().is_empty();
            is_file == (which == Rescan::Files)
        })
    }

    /// Re-runs the collectors `select` picks, side by side as `ids hash` does; returns what changed.
    fn rescan_matching(&mut self, select: impl Fn(&dyn Collector) -> bool) -> Vec<Change> {
        let selected: Vec<&dyn Collector> =
            self.collectors.iter().map(|collector| collector.as_ref()).filter(|collector| select(*collector)).collect();
        let names: Vec<String> = selected.iter().map(|collector| collector.name().to_string()).collect();
        let results = super::collect_all(&selected);
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

    /// Stores the changes with their alerts (one transaction), raises the alerts and
    /// republishes the aggregate.
    fn record(&mut self, changes: Vec<Change>, kind: ChangeAlert, dirty: &HashMap<PathBuf, Dirty>) {
        if !changes.is_empty() {
            let updates: Vec<(String, String, Option<Item>)> =
                changes.iter().map(|c| (c.collector.clone(), c.id.clone(), c.new.clone())).collect();
            let alerts: Vec<Alert> = changes
                .into_iter()
                .map(|c| {
                    let mut changed_by = writers_of(dirty, &c.id);
                    for writer in &mut changed_by {
                        writer.process = crate::process::with_late_login(&writer.process, &self.logins);
                    }
                    let change = IntegrityAlert {
                        collector: c.collector,
                        id: c.id,
                        change: c.change.name(),
                        attributes: c.attributes,
                        old: c.old.as_ref().map(item_state),
                        new: c.new.as_ref().map(item_state),
                        changed_by,
                    };
                    Alert::now(match kind {
                        ChangeAlert::Integrity => AlertBody::Integrity(change),
                        ChangeAlert::SensorMiss => AlertBody::SensorMiss(change),
                    })
                })
                .collect();
            let count = alerts.len() as u64;
            let store = &mut self.store;
            self.sink.emit_stored_by(alerts, |rows| store.apply(&updates, rows));
            self.shared.alerts.fetch_add(count, Ordering::Relaxed);
        }
        self.publish();
    }

    fn current_items(&self) -> Vec<StoredItem> {
        self.current
            .iter()
            .map(|((collector, _), item)| StoredItem { collector: collector.clone(), item: item.clone() })
            .collect()
    }

    /// SIGHUP: the collectors read again. What is dirty is rehashed first with the collectors
    /// it was noted for. A collector unchanged keeps its items; a new or changed one is scanned
    /// and its items taken as they are, without alerts (like a first scan: a configuration change
    /// is no change of the host); a removed one's items leave.
    fn reconfigure(&mut self, new: Reconfigure) {
        self.rehash_due(true);
        let Reconfigure { built, integrity_interval, verify_interval } = new;
        let unchanged: BTreeSet<String> =
            built.configs.iter().filter(|c| self.configs.contains(c)).map(|c| c.name.clone()).collect();
        let kept: BTreeSet<String> = built.configs.iter().map(|c| c.name.clone()).collect();
        let removed: Vec<String> =
            self.configs.iter().map(|c| c.name.clone()).filter(|name| !kept.contains(name)).collect();
        let scanned: Vec<String> = kept.iter().filter(|name| !unchanged.contains(*name)).cloned().collect();
        self.configs = built.configs;
        self.collectors = built.collectors;
        self.files = built.files;
        self.integrity_interval = integrity_interval;
        self.verify_interval = verify_interval;
        let mut updates: Vec<(String, String, Option<Item>)> = Vec::new();
        let gone: Vec<(String, String)> =
            self.current.keys().filter(|(collector, _)| removed.contains(collector)).cloned().collect();
        for key in gone {
            self.current.remove(&key);
            updates.push((key.0, key.1, None));
        }
        let changes = self.rescan_matching(|collector| scanned.iter().any(|name| name == collector.name()));
        updates.extend(changes.into_iter().map(|change| (change.collector, change.id, change.new)));
        if let Err(e) = self.store.apply(&updates, &[]) {
            warn!(error = %e, "storing the items of the collectors changed by SIGHUP");
        }
        self.publish();
        if !removed.is_empty() || !scanned.is_empty() {
            info!(scanned = ?scanned, removed = ?removed, items = self.current.len(), "SIGHUP: integrity collectors reloaded");
        }
    }

    fn control(&mut self, request: Control) {
        // Answer about the present: rehash what is dirty now instead of waiting for quiet.
        self.rehash_due(true);
        match request {
            Control::Reconfigure(new) => self.reconfigure(*new),
            Control::Baseline(reply) => {
                let items = self.current_items();
                let aggregate = super::aggregate_digest(&self.hostname, self.current.values());
                let answer = self
                    .store
                    .replace_baseline(&items)
                    .inspect(|()| {
                        self.shared.baseline_items.store(items.len() as u64, Ordering::Relaxed);
                        self.shared.set_baseline_aggregate(Some(aggregate));
                    })
                    .map(|()| BaselineAccepted { items: items.len(), aggregate: super::hex(&aggregate) })
                    .map_err(|e| e.to_string());
                let _ = reply.send(answer);
            }
            Control::Diff(reply) => {
                let answer = self
                    .store
                    .baseline()
                    .map(|baseline| diff::diff(&baseline, &self.current_items()))
                    .map_err(|e| e.to_string());
                let _ = reply.send(answer);
            }
        }
    }
}

/// An item in an alert: its digest in hex and its detail.
/// Puts `writer` first among `writers`, once per process and operation, keeping at most
/// `MAX_CHANGED_BY`.
fn add_writer(writers: &mut Vec<ChangedBy>, writer: &ChangedBy) {
    writers.retain(|w| w.process.pid != writer.process.pid || w.operation != writer.operation);
    writers.insert(0, writer.clone());
    writers.truncate(MAX_CHANGED_BY);
}

/// The writers recorded for the item `id`: at its own path, else at the nearest directory above
/// it that was dirty with its whole tree (a renamed or removed directory).
fn writers_of(dirty: &HashMap<PathBuf, Dirty>, id: &str) -> Vec<ChangedBy> {
    let Some((_, path)) = super::id_path(id) else { return Vec::new() };
    if let Some(entry) = dirty.get(&path) {
        return entry.writers.clone();
    }
    path.ancestors()
        .skip(1)
        .find_map(|ancestor| dirty.get(ancestor).filter(|d| d.deep))
        .map(|d| d.writers.clone())
        .unwrap_or_default()
}

fn item_state(item: &Item) -> ItemState {
    ItemState { digest: super::hex(&item.digest), detail: item.detail.clone() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn file_event(path: &Path) -> Arc<Event> {
        Arc::new(Event {
            time: crate::time::Timestamp::now(),
            kind: crate::event::EventKind::File,
            pid: 1,
            tid: 1,
            ppid: 0,
            uid: 0,
            gid: 0,
            comm: "test".into(),
            detail: Detail::File {
                op: FileOp::Write,
                path: path.to_path_buf(),
                new_path: None,
                paths_escaped: false,
                dev: 0,
                ino: 0,
            },
            process: Some(Arc::new(crate::process::ProcessView {
                pid: 812,
                ppid: 1,
                uid: 0,
                user: Some("root".into()),
                auid: None,
                login_user: None,
                sessionid: None,
                comm: "vim".into(),
                exe: Some("/usr/bin/vim".into()),
                argv: Arc::from(vec!["vim".to_string()]),
                argv_truncated: false,
                cgroup: None,
                container: None,
                ancestors: Vec::new(),
                login: None,
                rendered: Default::default(),
            })),
        })
    }

    /// The worker without the sensor: events are offered by hand, as the bus would.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_noted_change_is_rehashed_after_the_quiet_period_and_alerted() {
        let state = tempfile::tempdir().unwrap();
        let watched = tempfile::tempdir().unwrap();
        let root = watched.path().display().to_string();
        std::fs::write(watched.path().join("f"), "one").unwrap();
        let text = format!(
            "watch = []\nevents_log = \"-\"\nstate_dir = {:?}\n[[collectors]]\nkind = \"file_contents\"\npaths = [{root:?}]\n",
            state.path().display().to_string()
        );
        let config = crate::config::Config::parse(&text, "test").unwrap().integrity();
        let log = crate::alert::MemoryLog::default();
        let sink = AlertSink::new(
            Some(Store::open(&crate::store::db_path(&config.state_dir)).unwrap()),
            Some(log.events_log()),
        );
        let prepared = prepare(&config, sink, Default::default()).unwrap();
        assert!(prepared.watch.iter().any(|p| p == watched.path()), "{:?}", prepared.watch);
        let mut workers = Workers::default();
        let (handle, interest) = prepared.start(&mut workers).unwrap();
        let interest_elsewhere = interest.wants(&file_event(Path::new("/nonexistent/elsewhere")));
        let shared = handle.shared.clone();
        tokio::task::spawn_blocking(move || {
            let status = || shared.status();
            wait_until("the first scan", || status().ready);
            let scan = || {
                let report = super::super::scan(&Registry::with_builtin(), &config.collectors).unwrap();
                Some(report.aggregate)
            };
            assert_eq!(shared.aggregate(), scan());

            let (reply, answer) = tokio::sync::oneshot::channel();
            handle.request(Control::Baseline(reply)).unwrap();
            assert_eq!(answer.blocking_recv().unwrap().unwrap().items, 1);

            let file = watched.path().join("f");
            std::fs::write(&file, "two").unwrap();
            // An event outside the collectors' paths is not even queued.
            assert!(!interest_elsewhere);
            assert_eq!(status().dirty, 0);
            let noted = Instant::now();
            assert!(handle.events.offer(file_event(&file)));
            assert_eq!(status().dirty, 1);
            wait_until("the rehash", || status().dirty == 0);
            assert!(noted.elapsed() >= REHASH_QUIET, "rehashed before the quiet period");
            assert_eq!(shared.aggregate(), scan());
            let alert = log.lines().remove(0);
            assert_eq!(alert["kind"], "integrity");
            assert_eq!(alert["id"], format!("file:{root}/f"));
            assert_eq!(alert["attributes"], serde_json::json!(["content"]));
            assert_eq!(alert["changed_by"][0]["operation"], "write");
            assert_eq!(alert["changed_by"][0]["process"]["pid"], 812);
            assert_eq!(alert["changed_by"][0]["process"]["exe"], "/usr/bin/vim");

            let (reply, answer) = tokio::sync::oneshot::channel();
            handle.request(Control::Diff(reply)).unwrap();
            let diff = answer.blocking_recv().unwrap().unwrap();
            assert_eq!(diff.changed[0].id, format!("file:{root}/f"));
            let store = Store::open(&crate::store::db_path(&config.state_dir)).unwrap();
            assert_eq!(store.alerts().unwrap().len(), 1);
        })
        .await
        .unwrap();
        workers.shutdown(Duration::from_secs(10)).await;
    }

    #[test]
    fn literal_prefix_stops_at_the_first_wildcard() {
        assert_eq!(literal_prefix("/etc/ssh/*.conf"), Path::new("/etc/ssh"));
        assert_eq!(literal_prefix("/etc/*/x"), Path::new("/etc"));
        assert_eq!(literal_prefix("/etc/passwd"), Path::new("/etc/passwd"));
    }
}
