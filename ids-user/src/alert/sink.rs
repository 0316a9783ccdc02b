//! The alert sink: the one place an alert goes through, whoever raised it.
use std::collections::VecDeque;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::{Alert, AlertKind};
use crate::harness;
use crate::store::{AlertRow, Store, StoreError};

/// At most one warning per this long about a failure that repeats (a full disk fails every
/// write); the warning carries how many failures it stands for.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Alerts kept in memory while the store refuses them; beyond this the newest are refused (and
/// counted as lost to the store: they are still in the events log and with the subscribers).
pub(crate) const UNSTORED_CAPACITY: usize = 10_000;

/// Counts failures and says when a warning is due, so that a repeating failure is logged at most
/// once per [`WARN_EVERY`].
#[derive(Default)]
struct Throttle {
    last_warning: Option<Instant>,
    /// Failures since the last warning.
    unwarned: u64,
}

impl Throttle {
    /// Counts one failure; `Some(failures)` when a warning is due.
    fn failed(&mut self) -> Option<u64> {
        self.unwarned += 1;
        let now = Instant::now();
        if self.last_warning.is_some_and(|last| now.duration_since(last) < WARN_EVERY) {
            return None;
        }
        self.last_warning = Some(now);
        Some(std::mem::take(&mut self.unwarned))
    }

    /// Whether failures were seen since the last success (and forgets them).
    fn recovered(&mut self) -> bool {
        let failing = self.last_warning.is_some();
        *self = Self::default();
        failing
    }
}

/// Where the events log goes: a file, which a failed write is cut back on, or a stream
/// (standard output, a test's buffer), which cannot be cut.
enum Target {
    File(std::fs::File),
    Stream(Box<dyn Write + Send>),
}

impl Target {
    fn writer(&mut self) -> &mut dyn Write {
        match self {
            Target::File(file) => file,
            Target::Stream(stream) => stream,
        }
    }
}

struct LogState {
    target: Target,
    /// A write to a stream failed part-way: the next write starts on a fresh line, so the
    /// partial line stays alone on its line rather than spoiling the next one.
    torn: bool,
    throttle: Throttle,
}

struct LogShared {
    state: Mutex<LogState>,
    /// Writes that failed.
    failures: AtomicU64,
    /// Lines that did not reach the log because their write failed.
    lines_lost: AtomicU64,
}

/// The events log: raw events (the daemon's events writer) and alerts (the sink) as JSON lines,
/// each writer writing whole lines under the lock.
///
/// A write never fails its caller: the events writer must keep feeding the consumers whatever
/// happens to the log. A failed write is counted ([`EventsLog::failures`]), warned about at most
/// once per 10 s, and its lines are dropped from the log; the next write tries again. A file is
/// never left with a partial line: a write that fails part-way is cut back to the length the file
/// had before it (a stream, which cannot be cut, starts its next write on a fresh line).
#[derive(Clone)]
pub(crate) struct EventsLog(Arc<LogShared>);

impl EventsLog {
    /// A log on a stream (standard output, a test's buffer).
    pub(crate) fn new(writer: Box<dyn Write + Send>) -> Self {
        Self::with(Target::Stream(writer))
    }

    /// A log on a file opened for appending.
    pub(crate) fn file(file: std::fs::File) -> Self {
        Self::with(Target::File(file))
    }

    /// Writes to `file` from now on (the events log reopened after a rotation); what the old
    /// file held was flushed line by line already.
    pub(crate) fn reopen(&self, file: std::fs::File) {
        let mut state = self.0.state.lock().unwrap_or_else(|p| p.into_inner());
        state.target = Target::File(file);
        state.torn = false;
    }

    fn with(target: Target) -> Self {
        Self(Arc::new(LogShared {
            state: Mutex::new(LogState { target, torn: false, throttle: Throttle::default() }),
            failures: AtomicU64::new(0),
            lines_lost: AtomicU64::new(0),
        }))
    }

    /// Writes and flushes whole lines (a writer that panicked holding the lock does not stop the
    /// others); a failure is counted and logged, never returned.
    pub(crate) fn write_lines(&self, lines: &[u8]) {
        if lines.is_empty() {
            return;
        }
        let mut state = self.0.state.lock().unwrap_or_else(|p| p.into_inner());
        let state = &mut *state;
        // A partial line an earlier failure could not cut off is ended before anything else.
        let mut outcome = Ok(());
        if state.torn {
            outcome = state.target.writer().write_all(b"\n");
            state.torn = outcome.is_err();
        }
        // Where in `lines` what did not reach the log begins.
        let mut lost_from = 0;
        if outcome.is_ok() {
            let ends_mid_line = |written: usize| written > 0 && lines[written - 1] != b'\n';
            match &mut state.target {
                Target::File(file) => {
                    let length_before = file.metadata().map(|m| m.len());
                    let (written, wrote) = write_counting(file, lines);
                    if wrote.is_err() && written > 0 {
                        match length_before {
                            Ok(length) if file.set_len(length).is_ok() => {}
                            _ => {
                                state.torn = ends_mid_line(written);
                                lost_from = written;
                            }
                        }
                    }
                    outcome = wrote;
                }
                Target::Stream(stream) => {
                    let (written, wrote) = write_counting(stream, lines);
                    state.torn = wrote.is_err() && ends_mid_line(written);
                    lost_from = written;
                    outcome = wrote.and_then(|()| stream.flush());
                }
            }
        }
        match outcome {
            Ok(()) => {
                if state.throttle.recovered() {
                    info!(failures = self.failures(), "the events log is written again");
                }
            }
            Err(error) => {
                self.0.failures.fetch_add(1, Ordering::Relaxed);
                let lost = lines[lost_from..].iter().filter(|&&b| b == b'\n').count() as u64;
                self.0.lines_lost.fetch_add(lost, Ordering::Relaxed);
                if let Some(failures) = state.throttle.failed() {
                    warn!(
                        %error,
                        failures,
                        lines_lost = self.lines_lost(),
                        "writing the events log failed; its lines are dropped, the detectors still get every event"
                    );
                }
            }
        }
    }

    /// Writes to the log that failed since the daemon started.
    pub(crate) fn failures(&self) -> u64 {
        self.0.failures.load(Ordering::Relaxed)
    }

    /// Lines that did not reach the log.
    pub(crate) fn lines_lost(&self) -> u64 {
        self.0.lines_lost.load(Ordering::Relaxed)
    }
}

/// Writes all of `bytes` as `write_all` does, and says how many reached the writer before an error.
fn write_counting(out: &mut impl Write, bytes: &[u8]) -> (usize, std::io::Result<()>) {
    let mut written = 0;
    while written < bytes.len() {
        match out.write(&bytes[written..]) {
            Ok(0) => return (written, Err(std::io::ErrorKind::WriteZero.into())),
            Ok(n) => written += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return (written, Err(e)),
        }
    }
    (written, Ok(()))
}

/// How well alerts reach the store (`ids status`).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub(crate) struct AlertStoreStatus {
    /// Attempts to store alerts that failed (a retry that fails counts again).
    pub(crate) store_failures: u64,
    /// Alerts raised but not yet in the store, kept in memory and retried.
    pub(crate) unstored: u64,
    /// Alerts the store never got: refused while [`UNSTORED_CAPACITY`] were already kept.
    pub(crate) lost: u64,
}

/// Where every alert is raised: stored in the `alerts` table, written to the events log, counted,
/// and handed to the subscribers. Cheap to clone; shared by every worker.
#[derive(Clone)]
pub(crate) struct AlertSink(Arc<Inner>);

struct Inner {
    /// The sink's own connection to the state database; `None`: alerts are not stored.
    store: Mutex<Option<Store>>,
    log: Option<EventsLog>,
    subscribers: Mutex<Vec<harness::Sender<Arc<Alert>>>>,
    /// Alerts raised per kind, in `AlertKind::ALL` order.
    counts: [AtomicU64; AlertKind::ALL.len()],
    /// Rows the store refused, oldest first, until a retry stores them.
    unstored: Mutex<Unstored>,
    /// Woken each time alerts reach the store (the fleet agent reads them from there).
    stored: Arc<tokio::sync::Notify>,
}

#[derive(Default)]
struct Unstored {
    rows: VecDeque<AlertRow>,
    failures: u64,
    lost: u64,
    throttle: Throttle,
}

impl Unstored {
    fn failed(&mut self, error: &StoreError) {
        self.failures += 1;
        if let Some(failures) = self.throttle.failed() {
            warn!(
                %error,
                failures,
                unstored = self.rows.len(),
                lost = self.lost,
                "storing alerts failed; they are kept in memory and retried"
            );
        }
    }
}

impl AlertSink {
    pub(crate) fn new(store: Option<Store>, log: Option<EventsLog>) -> Self {
        Self(Arc::new(Inner {
            store: Mutex::new(store),
            log,
            subscribers: Mutex::new(Vec::new()),
            counts: Default::default(),
            unstored: Mutex::new(Unstored::default()),
            stored: Arc::new(tokio::sync::Notify::new()),
        }))
    }

    /// Raises one alert.
    pub(crate) fn emit(&self, alert: Alert) {
        self.emit_all(vec![alert]);
    }

    /// Raises alerts, stored in one transaction of the sink's own connection.
    pub(crate) fn emit_all(&self, alerts: Vec<Alert>) {
        self.emit_stored_by(alerts, |rows| self.store_rows(rows));
    }

    /// Stores `rows` with the sink's own connection (none: nothing to store).
    fn store_rows(&self, rows: &[AlertRow]) -> Result<(), StoreError> {
        let mut store = self.0.store.lock().unwrap_or_else(|p| p.into_inner());
        match store.as_mut() {
            Some(store) => store.apply(&[], rows),
            None => Ok(()),
        }
    }

    /// Raises alerts whose rows the caller stores itself, in a transaction of its own that holds
    /// its other changes too (the integrity worker's item updates), so both land or neither.
    /// Rows the store refuses are kept and stored by a later emit or [`AlertSink::retry_unstored`].
    pub(crate) fn emit_stored_by(&self, alerts: Vec<Alert>, store: impl FnOnce(&[AlertRow]) -> Result<(), StoreError>) {
        if alerts.is_empty() {
            return;
        }
        // Earlier alerts go first, so that the table keeps the order they were raised in.
        self.retry_unstored();
        let rows: Vec<AlertRow> = alerts.iter().map(Alert::to_row).collect();
        let outcome = store(&rows);
        if outcome.is_ok() {
            self.0.stored.notify_one();
        }
        if let Err(e) = outcome {
            // The transaction did not commit: none of the rows is stored, so keeping all of them
            // stores each exactly once when a retry succeeds.
            let mut unstored = self.0.unstored.lock().unwrap_or_else(|p| p.into_inner());
            let room = UNSTORED_CAPACITY.saturating_sub(unstored.rows.len());
            unstored.lost += rows.len().saturating_sub(room) as u64;
            unstored.rows.extend(rows.into_iter().take(room));
            unstored.failed(&e);
        }
        if let Some(log) = &self.0.log {
            let mut lines = Vec::with_capacity(256 * alerts.len());
            for alert in &alerts {
                if serde_json::to_writer(&mut lines, alert).is_ok() {
                    lines.push(b'\n');
                }
            }
            log.write_lines(&lines);
        }
        let subscribers = self.0.subscribers.lock().unwrap_or_else(|p| p.into_inner());
        for alert in alerts {
            let index = AlertKind::ALL.iter().position(|k| *k == alert.kind()).unwrap_or(0);
            self.0.counts[index].fetch_add(1, Ordering::Relaxed);
            if subscribers.is_empty() {
                continue;
            }
            let alert = Arc::new(alert);
            for subscriber in subscribers.iter() {
                // A full subscriber is counted in its queue's drops; the sink never waits.
                subscriber.offer(alert.clone());
            }
        }
    }

    /// Stores the alerts kept since the store refused them (one transaction: all or none). The
    /// next emit calls it, and the daemon on a timer, so that they are stored even when no
    /// further alert comes.
    pub(crate) fn retry_unstored(&self) {
        let mut unstored = self.0.unstored.lock().unwrap_or_else(|p| p.into_inner());
        if unstored.rows.is_empty() {
            return;
        }
        match self.store_rows(unstored.rows.make_contiguous()) {
            Ok(()) => {
                let stored = unstored.rows.len();
                unstored.rows.clear();
                self.0.stored.notify_one();
                if unstored.throttle.recovered() {
                    info!(stored, "alerts kept while the store failed are stored");
                }
            }
            Err(e) => unstored.failed(&e),
        }
    }

    /// Store failures and the alerts not (yet) stored.
    pub(crate) fn store_status(&self) -> AlertStoreStatus {
        let unstored = self.0.unstored.lock().unwrap_or_else(|p| p.into_inner());
        AlertStoreStatus {
            store_failures: unstored.failures,
            unstored: unstored.rows.len() as u64,
            lost: unstored.lost,
        }
    }

    /// Alerts of `kind` raised since the sink was made.
    pub(crate) fn count(&self, kind: AlertKind) -> u64 {
        let index = AlertKind::ALL.iter().position(|k| *k == kind).unwrap_or(0);
        self.0.counts[index].load(Ordering::Relaxed)
    }

    /// Alerts raised since the sink was made, per kind (every kind, zeros included).
    pub(crate) fn counts(&self) -> std::collections::BTreeMap<String, u64> {
        AlertKind::ALL.iter().map(|kind| (kind.name().to_string(), self.count(*kind))).collect()
    }

    /// Notified each time alerts reach the store; a wakeup while nobody waits is kept for the
    /// next wait, so none is missed.
    pub(crate) fn stored_notify(&self) -> Arc<tokio::sync::Notify> {
        self.0.stored.clone()
    }

    /// Every alert raised from now on, through a queue of `capacity` (overflow counted).
    pub(crate) fn subscribe(&self, capacity: usize) -> harness::Inbox<Arc<Alert>> {
        let (sender, inbox) = harness::queue(capacity);
        self.0.subscribers.lock().unwrap_or_else(|p| p.into_inner()).push(sender);
        inbox
    }

    /// Ends the subscription whose queue's counters are `queue` and, in the same step, starts a
    /// new one of `capacity` in its place: every alert goes to exactly one of the two queues.
    pub(crate) fn resubscribe(&self, queue: &Arc<harness::QueueStats>, capacity: usize) -> harness::Inbox<Arc<Alert>> {
        let (sender, inbox) = harness::queue(capacity);
        let mut subscribers = self.0.subscribers.lock().unwrap_or_else(|p| p.into_inner());
        subscribers.retain(|subscriber| !subscriber.feeds(queue));
        subscribers.push(sender);
        inbox
    }

    /// Ends the subscription whose queue's counters are `queue`: no alert is queued there from now on.
    pub(crate) fn unsubscribe(&self, queue: &Arc<harness::QueueStats>) {
        self.0.subscribers.lock().unwrap_or_else(|p| p.into_inner()).retain(|subscriber| !subscriber.feeds(queue));
    }
}

/// An events log in memory, for tests that read back what was written.
#[cfg(test)]
#[derive(Clone, Default)]
pub(crate) struct MemoryLog(Arc<Mutex<Vec<u8>>>);

#[cfg(test)]
impl MemoryLog {
    pub(crate) fn events_log(&self) -> EventsLog {
        EventsLog::new(Box::new(self.clone()))
    }

    pub(crate) fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }

    /// Every line, parsed.
    pub(crate) fn lines(&self) -> Vec<serde_json::Value> {
        self.text().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }
}

#[cfg(test)]
impl Write for MemoryLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::{AlertBody, BanAlert};

    #[test]
    fn an_alert_is_stored_written_counted_and_handed_to_subscribers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ids.db");
        let buffer = MemoryLog::default();
        let sink = AlertSink::new(Some(Store::open(&path).unwrap()), Some(buffer.events_log()));
        let mut subscriber = sink.subscribe(1);
        sink.emit_all(vec![ban("192.0.2.1/32"), ban("192.0.2.2/32")]);
        let rows = Store::open(&path).unwrap().alerts().unwrap();
        assert_eq!(rows.iter().map(|r| r.item_id.as_str()).collect::<Vec<_>>(), ["192.0.2.1/32", "192.0.2.2/32"]);
        let lines = buffer.lines();
        assert_eq!(lines.len(), 2);
        assert_eq!((lines[1]["kind"].as_str(), lines[1]["net"].as_str()), (Some("ban"), Some("192.0.2.2/32")));
        assert_eq!(sink.count(AlertKind::Ban), 2);
        assert_eq!(sink.count(AlertKind::Detect), 0);
        // A subscriber of capacity 1 got the first; the second was counted as dropped.
        assert!(matches!(subscriber.try_recv(), harness::Received::Item(a) if a.kind() == AlertKind::Ban));
        assert_eq!(subscriber.stats().dropped(), 1);
    }

    /// Makes the real database refuse every alert row until the returned statement is run.
    fn refuse_alert_rows(path: &std::path::Path) -> impl FnOnce() {
        let conn = rusqlite::Connection::open(path).unwrap();
        conn.execute_batch(
            "CREATE TRIGGER refuse_alerts BEFORE INSERT ON alerts BEGIN SELECT RAISE(ABORT, 'refused for the test'); END;",
        )
        .unwrap();
        move || conn.execute_batch("DROP TRIGGER refuse_alerts;").unwrap()
    }

    fn ban(net: &str) -> Alert {
        Alert::now(AlertBody::Ban(BanAlert {
            net: net.into(),
            source: "port-scan".into(),
            reason: "scan".into(),
            expires: None,
            offence: 1,
            escalation: None,
        }))
    }

    fn stored_nets(path: &std::path::Path) -> Vec<String> {
        Store::open(path).unwrap().alerts().unwrap().into_iter().map(|r| r.item_id).collect()
    }

    #[test]
    fn alerts_the_store_refused_are_kept_and_stored_exactly_once_when_it_recovers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ids.db");
        let sink = AlertSink::new(Some(Store::open(&path).unwrap()), None);
        sink.emit(ban("192.0.2.1/32"));
        let recover = refuse_alert_rows(&path);
        sink.emit_all(vec![ban("192.0.2.2/32"), ban("192.0.2.3/32")]);
        // The integrity worker's own transaction failing is kept the same way.
        sink.emit_stored_by(vec![ban("192.0.2.4/32")], |_| {
            Err(StoreError::Query {
                path: path.clone(),
                what: "recording an alert",
                source: rusqlite::Error::InvalidQuery,
            })
        });
        let health = sink.store_status();
        assert_eq!((health.unstored, health.store_failures, health.lost), (3, 3, 0), "{health:?}");
        assert_eq!(stored_nets(&path), ["192.0.2.1/32"]);
        // A retry while the store still refuses keeps them.
        sink.retry_unstored();
        assert_eq!(sink.store_status().unstored, 3);
        assert_eq!(sink.store_status().store_failures, 4);
        recover();
        // The timer's retry stores them, in the order they were raised, and only once.
        sink.retry_unstored();
        assert_eq!(sink.store_status().unstored, 0);
        sink.retry_unstored();
        sink.emit(ban("192.0.2.5/32"));
        assert_eq!(
            stored_nets(&path),
            ["192.0.2.1/32", "192.0.2.2/32", "192.0.2.3/32", "192.0.2.4/32", "192.0.2.5/32"]
        );
        assert_eq!(sink.count(AlertKind::Ban), 5);
    }

    #[test]
    fn the_next_emit_stores_what_was_kept_before_its_own_alerts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ids.db");
        let sink = AlertSink::new(Some(Store::open(&path).unwrap()), None);
        let recover = refuse_alert_rows(&path);
        sink.emit(ban("192.0.2.1/32"));
        recover();
        sink.emit(ban("192.0.2.2/32"));
        assert_eq!(stored_nets(&path), ["192.0.2.1/32", "192.0.2.2/32"]);
        assert_eq!(sink.store_status().unstored, 0);
    }

    #[test]
    fn kept_alerts_are_bounded_and_the_ones_refused_counted_as_lost() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ids.db");
        let sink = AlertSink::new(Some(Store::open(&path).unwrap()), None);
        let _refusing = refuse_alert_rows(&path);
        let alerts: Vec<Alert> =
            (0..UNSTORED_CAPACITY + 5).map(|i| ban(&format!("10.0.{}.{}/32", i / 256, i % 256))).collect();
        sink.emit_all(alerts);
        let health = sink.store_status();
        assert_eq!((health.unstored, health.lost), (UNSTORED_CAPACITY as u64, 5), "{health:?}");
    }

    /// A pipe whose writing end does not block: a write larger than its buffer is taken in part.
    fn nonblocking_pipe() -> (std::fs::File, std::fs::File) {
        use std::os::fd::FromRawFd as _;
        let mut fds = [0; 2];
        // SAFETY: pipe2 fills the two descriptors, which the Files then own.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) }, 0);
        unsafe { (std::fs::File::from_raw_fd(fds[0]), std::fs::File::from_raw_fd(fds[1])) }
    }

    #[test]
    fn a_stream_write_that_fails_part_way_leaves_its_partial_line_alone_and_writing_resumes() {
        use std::io::Read as _;
        let (mut reader, writer) = nonblocking_pipe();
        let log = EventsLog::new(Box::new(writer));
        // 100 lines of 1000 bytes: more than the pipe's 64 KiB, so the write stops mid-line.
        let line = format!("{{\"pad\":\"{}\"}}\n", "a".repeat(989));
        assert_eq!(line.len(), 1000);
        log.write_lines(line.repeat(100).as_bytes());
        assert_eq!(log.failures(), 1);
        let mut taken = Vec::new();
        let mut chunk = vec![0u8; 1 << 16];
        while let Ok(n) = reader.read(&mut chunk) {
            if n == 0 {
                break;
            }
            taken.extend_from_slice(&chunk[..n]);
        }
        let whole = taken.len() / 1000;
        assert!(whole > 0 && taken.len() % 1000 != 0, "the pipe took {} bytes", taken.len());
        assert_eq!(log.lines_lost(), 100 - whole as u64);
        log.write_lines(b"{\"after\":true}\n");
        assert_eq!(log.failures(), 1);
        let mut rest = Vec::new();
        while let Ok(n) = reader.read(&mut chunk) {
            if n == 0 {
                break;
            }
            rest.extend_from_slice(&chunk[..n]);
        }
        taken.extend_from_slice(&rest);
        let text = String::from_utf8(taken).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        // The whole lines, the partial one alone on its line, then the next write whole.
        assert_eq!(lines.len(), whole + 2);
        assert!(lines[..whole].iter().all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()));
        assert!(serde_json::from_str::<serde_json::Value>(lines[whole]).is_err());
        assert_eq!(lines[whole + 1], "{\"after\":true}");
    }
}
