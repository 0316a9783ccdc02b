//! The alert sink: the one place an alert goes through, whoever raised it.
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tracing::warn;

use super::{Alert, AlertKind};
use crate::harness;
use crate::store::{AlertRow, Store, StoreError};

/// The events log: raw events (the daemon's events writer) and alerts (the sink) as JSON lines,
/// each writer writing whole lines under the lock.
#[derive(Clone)]
pub(crate) struct EventsLog(Arc<Mutex<Box<dyn Write + Send>>>);

impl EventsLog {
    pub(crate) fn new(writer: Box<dyn Write + Send>) -> Self {
        Self(Arc::new(Mutex::new(writer)))
    }

    /// Writes to `writer` from now on (the events log reopened after a rotation); what the old
    /// one held was flushed line by line already.
    pub(crate) fn replace(&self, writer: Box<dyn Write + Send>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = writer;
    }

    /// Writes and flushes whole lines (a writer that panicked holding the lock does not stop the others).
    pub(crate) fn write_lines(&self, lines: &[u8]) -> std::io::Result<()> {
        let mut out: MutexGuard<'_, Box<dyn Write + Send>> = self.0.lock().unwrap_or_else(|p| p.into_inner());
        out.write_all(lines)?;
        out.flush()
    }
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
}

impl AlertSink {
    pub(crate) fn new(store: Option<Store>, log: Option<EventsLog>) -> Self {
        Self(Arc::new(Inner {
            store: Mutex::new(store),
            log,
            subscribers: Mutex::new(Vec::new()),
            counts: Default::default(),
        }))
    }

    /// Raises one alert.
    pub(crate) fn emit(&self, alert: Alert) {
        self.emit_all(vec![alert]);
    }

    /// Raises alerts, stored in one transaction of the sink's own connection.
    pub(crate) fn emit_all(&self, alerts: Vec<Alert>) {
        self.emit_stored_by(alerts, |rows| {
            let mut store = self.0.store.lock().unwrap_or_else(|p| p.into_inner());
            match store.as_mut() {
                Some(store) => store.apply(&[], rows),
                None => Ok(()),
            }
        });
    }

    /// Raises alerts whose rows the caller stores itself, in a transaction of its own that holds
    /// its other changes too (the integrity worker's item updates), so both land or neither.
    pub(crate) fn emit_stored_by(&self, alerts: Vec<Alert>, store: impl FnOnce(&[AlertRow]) -> Result<(), StoreError>) {
        if alerts.is_empty() {
            return;
        }
        let rows: Vec<AlertRow> = alerts.iter().map(Alert::to_row).collect();
        if let Err(e) = store(&rows) {
            warn!(error = %e, alerts = rows.len(), "storing alerts");
        }
        if let Some(log) = &self.0.log {
            let mut lines = Vec::with_capacity(256 * alerts.len());
            for alert in &alerts {
                if serde_json::to_writer(&mut lines, alert).is_ok() {
                    lines.push(b'\n');
                }
            }
            if let Err(e) = log.write_lines(&lines) {
                warn!(error = %e, "writing alerts to the events log");
            }
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

    /// Alerts of `kind` raised since the sink was made.
    #[cfg(test)]
    pub(crate) fn count(&self, kind: AlertKind) -> u64 {
        let index = AlertKind::ALL.iter().position(|k| *k == kind).unwrap_or(0);
        self.0.counts[index].load(Ordering::Relaxed)
    }

    /// Every alert raised from now on, through a queue of `capacity` (overflow counted).
    #[cfg_attr(not(test), expect(dead_code, reason = "the seam the fleet publisher and alert outputs subscribe to"))]
    pub(crate) fn subscribe(&self, capacity: usize) -> harness::Inbox<Arc<Alert>> {
        let (sender, inbox) = harness::queue(capacity);
        self.0.subscribers.lock().unwrap_or_else(|p| p.into_inner()).push(sender);
        inbox
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
        let ban = |net: &str| {
            Alert::now(AlertBody::Ban(BanAlert {
                net: net.into(),
                source: "port-scan".into(),
                reason: "scan".into(),
                expires: None,
                offence: 1,
            }))
        };
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
}
