//! The event bus: the events writer turns the ring-buffer readers' records into events, writes
//! each as a JSON line to the events log, and offers it to every consumer that wants it
//! (integrity, detect; later the process table, metrics, the fleet). A consumer's queue is
//! bounded and counts what it drops; the bus never waits for a consumer.
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::alert::EventsLog;
use crate::event::{self, Clock, Detail, Event};
use crate::process::{ExeDigest, ProcessTable};
use crate::sensor::decode::RawEvent;
use crate::sensor::watch::WatchSet;

/// Records taken from the channel at once before they are written out.
const BATCH: usize = 4096;
/// How long an exec record waits for its program's digest (`crate::process::ExeHashes`).
const EXE_HASH_WAIT: Duration = crate::process::exe_hash::HASH_WAIT;
/// How long a record waits for its process's exec record (longer than the exec record itself may
/// wait for its digest), and how often the channel is polled meanwhile.
const EXEC_WAIT: Duration = EXE_HASH_WAIT.saturating_add(Duration::from_millis(100));
const EXEC_POLL: Duration = Duration::from_millis(1);

/// Whether a record must wait: an exec for its program's digest, any other record of a process
/// for that process's fork or exec record (`ProcessTable::awaits_exec`).
fn must_wait(table: &mut ProcessTable, raw: &RawEvent) -> bool {
    match raw {
        RawEvent::Exec(e) => table.exe_digest(&event::c_string(&e.filename)) == ExeDigest::Pending,
        RawEvent::Process(_) => false,
        other => table.awaits_exec(other.header()),
    }
}

/// The rings whose records are written in the order the kernel put them there even when one of
/// them waits for its process's exec record: a record behind a waiting one of the same ring waits
/// too (at most `EXEC_WAIT`), so that two processes' changes to one file (a chmod, then an rm) are
/// never written the other way round. The exec ring's own records (execs, forks, exits) are not
/// held: the process table must learn of a fork before the child's other records are read.
fn ordered_ring(raw: &RawEvent) -> Option<usize> {
    match raw {
        RawEvent::File(_) => Some(0),
        RawEvent::Connect(_) => Some(1),
        RawEvent::Module(_) => Some(2),
        RawEvent::Exec(_) | RawEvent::Process(_) => None,
    }
}

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
    /// Live and exited processes in the process table.
    pub(crate) processes: AtomicU64,
    pub(crate) processes_exited: AtomicU64,
}

/// The events writer: decodes records into events, names the process of each from the process
/// table (which the fork, exec and exit records keep), writes them out whenever the channel runs
/// dry or 64 KiB are waiting, and publishes each on the bus. Returns when every reader has ended.
/// The watch set is shared with the daemon, which changes it on SIGHUP.
/// A log that cannot be written (a full disk) never stops it: `EventsLog::write_lines` counts
/// and reports the failure, and the consumers get every event all the same.
pub(crate) fn write_events(
    mut rx: mpsc::Receiver<RawEvent>,
    watch: Arc<Mutex<WatchSet>>,
    log: EventsLog,
    bus: Bus,
    mut processes: Option<ProcessTable>,
    stats: &WriterStats,
) -> anyhow::Result<()> {
    let clock = Clock::new();
    let mut out: Vec<u8> = Vec::with_capacity(1 << 16);
    let flush = |out: &mut Vec<u8>| {
        log.write_lines(out);
        out.clear();
    };
    let mut wanting = Vec::new();
    let publish_table = |processes: &Option<ProcessTable>| {
        let table = processes.as_ref().map(ProcessTable::stats).unwrap_or_default();
        stats.processes.store(table.live as u64, Ordering::Relaxed);
        stats.processes_exited.store(table.exited as u64, Ordering::Relaxed);
    };
    publish_table(&processes);
    // Records of a process that exec'd before its exec record (which comes on another ring)
    // was read wait for it a little: named from the fork, they would name the parent's program.
    let mut waiting: VecDeque<(Instant, RawEvent)> = VecDeque::new();
    let mut batch: Vec<RawEvent> = Vec::new();
    let mut open = true;
    while open || !waiting.is_empty() {
        if waiting.is_empty() {
            match rx.blocking_recv() {
                Some(raw) => batch.push(raw),
                None => open = false,
            }
        } else if open {
            match rx.try_recv() {
                Ok(raw) => batch.push(raw),
                Err(mpsc::error::TryRecvError::Empty) => std::thread::sleep(EXEC_POLL),
                Err(mpsc::error::TryRecvError::Disconnected) => open = false,
            }
        }
        if !batch.is_empty() {
            while batch.len() < BATCH
                && let Ok(raw) = rx.try_recv()
            {
                batch.push(raw);
            }
        }
        let now = Instant::now();
        let mut released = Vec::new();
        // Per ordered ring: whether a record of it stays waiting (those behind it stay too).
        let mut held = [false; 3];
        waiting.retain(|(until, raw)| {
            let ring = ordered_ring(raw);
            let go = !open
                || *until <= now
                || (ring.is_none_or(|ring| !held[ring])
                    && processes.as_mut().is_none_or(|table| !must_wait(table, raw)));
            if go {
                released.push(*raw);
            } else if let Some(ring) = ring {
                held[ring] = true;
            }
            !go
        });
        for (raw, was_waiting) in released.into_iter().map(|r| (r, true)).chain(batch.drain(..).map(|r| (r, false))) {
            let header = raw.header();
            let behind_waiting = !was_waiting && ordered_ring(&raw).is_some_and(|ring| held[ring]);
            if let Some(table) = &mut processes
                && (behind_waiting || must_wait(table, &raw))
            {
                if !was_waiting {
                    let wait = if matches!(raw, RawEvent::Exec(_)) { EXE_HASH_WAIT } else { EXEC_WAIT };
                    waiting.push_back((now + wait, raw));
                    if let Some(ring) = ordered_ring(&raw) {
                        held[ring] = true;
                    }
                    continue;
                }
                if !matches!(raw, RawEvent::Exec(_)) {
                    table.exec_missed(header);
                }
            }
            let event = match &raw {
                RawEvent::Exec(e) => {
                    let mut event = event::exec(&clock, e);
                    if let (Some(table), Detail::Exec { filename, argv, exe_sha256, .. }) =
                        (&mut processes, &mut event.detail)
                    {
                        if let ExeDigest::Known(digest) = table.exe_digest(filename) {
                            *exe_sha256 = digest;
                        }
                        table.exec(&e.header, filename, argv, e.login);
                    }
                    Some(event)
                }
                RawEvent::Connect(e) => Some(event::connect(&clock, e)),
                RawEvent::Module(e) => Some(event::module(&clock, e)),
                RawEvent::File(e) => watch.lock().unwrap_or_else(|p| p.into_inner()).event_of(&clock, e),
                RawEvent::Process(e) => {
                    match &mut processes {
                        Some(table) if e.op == ids_common::PROCESS_FORK => table.fork(&e.header, e.child, e.login),
                        Some(table) => table.exit(&e.header),
                        None => {}
                    }
                    None
                }
            };
            if let Some(mut event) = event {
                // Incoming SYNs (XDP) belong to no process.
                if let Some(table) = &mut processes
                    && header.pid != 0
                {
                    event.process = table.view(header);
                }
                serde_json::to_writer(&mut out, &event)?;
                out.push(b'\n');
                stats.written.fetch_add(1, Ordering::Relaxed);
                bus.publish(event, &mut wanting);
                if out.len() >= 1 << 16 {
                    flush(&mut out);
                }
            }
        }
        flush(&mut out);
        let watch = watch.lock().unwrap_or_else(|p| p.into_inner());
        stats.unresolved.store(watch.unresolved(), Ordering::Relaxed);
        stats.watched_inodes.store(watch.inode_count() as u64, Ordering::Relaxed);
        drop(watch);
        publish_table(&processes);
    }
    flush(&mut out);
    Ok(())
}
