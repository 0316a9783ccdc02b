//! The event bus: the events writer turns the ring-buffer readers' records into events, writes
//! each as a JSON line to the events log, and offers it to every consumer that wants it
//! (integrity, detect; later the process table, metrics, the fleet). A consumer's queue is
//! bounded and counts what it drops; the bus never waits for a consumer.
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::mpsc;

use crate::alert::EventsLog;
use crate::event::{self, Clock, Event};
use crate::sensor::decode::RawEvent;
use crate::sensor::watch::WatchSet;

/// A consumer of the bus: which events it wants, and how it takes one (a non-blocking offer to
/// its queue).
struct Consumer {
    wants: Box<dyn Fn(&Event) -> bool + Send>,
    take: Box<dyn Fn(Arc<Event>) + Send>,
}

#[derive(Default)]
pub(crate) struct Bus {
    consumers: Vec<Consumer>,
}

impl Bus {
    pub(crate) fn subscribe(
        &mut self,
        wants: impl Fn(&Event) -> bool + Send + 'static,
        take: impl Fn(Arc<Event>) + Send + 'static,
    ) {
        self.consumers.push(Consumer { wants: Box::new(wants), take: Box::new(take) });
    }

    /// Hands `event` to the consumers that want it, shared (one allocation whatever their number).
    fn publish(&self, event: Event, wanting: &mut Vec<usize>) {
        wanting.clear();
        wanting.extend(self.consumers.iter().enumerate().filter(|(_, c)| (c.wants)(&event)).map(|(i, _)| i));
        if wanting.is_empty() {
            return;
        }
        let event = Arc::new(event);
        for &index in wanting.iter() {
            (self.consumers[index].take)(event.clone());
        }
    }
}

/// Counters of the events writer.
#[derive(Debug, Default)]
pub(crate) struct WriterStats {
    pub(crate) written: AtomicU64,
    pub(crate) unresolved: AtomicU64,
    pub(crate) watched_inodes: AtomicU64,
}

/// The events writer: decodes records into events, writes them out whenever the channel runs dry
/// or 64 KiB are waiting, and publishes each on the bus. Returns when every reader has ended.
/// A log that cannot be written (a full disk) never stops it: `EventsLog::write_lines` counts
/// and reports the failure, and the consumers get every event all the same.
pub(crate) fn write_events(
    mut rx: mpsc::Receiver<RawEvent>,
    mut watch: WatchSet,
    log: EventsLog,
    bus: Bus,
    stats: &WriterStats,
) -> anyhow::Result<()> {
    let clock = Clock::new();
    let mut out: Vec<u8> = Vec::with_capacity(1 << 16);
    let flush = |out: &mut Vec<u8>| {
        log.write_lines(out);
        out.clear();
    };
    let mut wanting = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        let mut next = Some(first);
        while let Some(raw) = next {
            let event = match &raw {
                RawEvent::Exec(e) => Some(event::exec(&clock, e)),
                RawEvent::Connect(e) => Some(event::connect(&clock, e)),
                RawEvent::Module(e) => Some(event::module(&clock, e)),
                RawEvent::File(e) => watch.event_of(&clock, e),
            };
            if let Some(event) = event {
                serde_json::to_writer(&mut out, &event)?;
                out.push(b'\n');
                stats.written.fetch_add(1, Ordering::Relaxed);
                bus.publish(event, &mut wanting);
                if out.len() >= 1 << 16 {
                    flush(&mut out);
                }
            }
            next = rx.try_recv().ok();
        }
        flush(&mut out);
        stats.unresolved.store(watch.unresolved(), Ordering::Relaxed);
        stats.watched_inodes.store(watch.inode_count() as u64, Ordering::Relaxed);
    }
    flush(&mut out);
    Ok(())
}
