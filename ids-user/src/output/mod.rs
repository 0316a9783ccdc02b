//! Alert outputs (`[[outputs]]`): files, syslog and webhooks that get every alert at or above
//! their `min_severity` (raw events stay in the events log). Each output is one worker thread
//! subscribed to the alert sink; its subscription is its bounded queue (`queue`), so alerts wait
//! there while the destination is down and are delivered in order when it is back, and alerts
//! beyond the bound are dropped and counted. A failed delivery is retried after a pause that
//! doubles from `backoff` to `max_backoff`; a refusal no retry can change (a webhook's 4xx, a
//! datagram too long) is counted as failed and the next alert goes.
//!
//! On SIGHUP ([`Outputs::reload`]) an unchanged output runs on with its queue; a changed one
//! (matched by `name`) is replaced, and its replacement delivers first what it had not; a new
//! one starts and a removed one stops.
pub(crate) mod config;
mod file;
mod syslog;
mod webhook;

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use self::config::Destination;
pub use self::config::OutputConfig;
use crate::alert::{Alert, AlertSink};
use crate::harness::{Inbox, QueueStats, Received, Stop, WorkerId, Workers};

/// How often a worker waiting for alerts, or pausing before a retry, looks at the stop token.
const POLL: Duration = Duration::from_millis(200);
/// At most one warning per this long about a destination that keeps failing.
const WARN_EVERY: Duration = Duration::from_secs(30);

/// Why one attempt did not deliver an alert.
pub(crate) enum Failure {
    /// The destination may take it later (down, unreachable, overloaded).
    Retry(String),
    /// The destination refused this alert; trying again would get the same answer.
    Permanent(String),
}

/// One kind of destination.
pub(crate) trait Deliver: Send {
    /// One attempt at delivering one alert.
    fn deliver(&mut self, alert: &Alert) -> Result<(), Failure>;
    /// Where it goes, for logs.
    fn describe(&self) -> String;
    /// Whether the destination can be reached now (at start: a warning if not).
    fn check(&mut self) -> Result<(), String>;
}

/// An output's counters (`ids status`, metrics).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub(crate) struct OutputStatus {
    pub(crate) name: String,
    pub(crate) kind: String,
    /// Alerts delivered.
    pub(crate) sent: u64,
    /// Alerts the destination refused for good (a webhook's 4xx, say): not retried.
    pub(crate) failed: u64,
    /// Alerts the queue had no room for while the destination was down or slow.
    pub(crate) dropped: u64,
    /// Alerts waiting, the one being delivered included.
    pub(crate) queued: u64,
    /// Attempts that failed and were retried.
    pub(crate) retries: u64,
    /// The last failure, if the last attempt failed.
    pub(crate) last_error: Option<String>,
}

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    failed: AtomicU64,
    retries: AtomicU64,
    last_error: std::sync::Mutex<Option<String>>,
}

struct Running {
    config: OutputConfig,
    queue: Arc<QueueStats>,
    counters: Arc<Counters>,
    /// File outputs: set on SIGHUP.
    reopen: Option<Arc<AtomicBool>>,
    worker: WorkerId,
    /// What the worker did not deliver when it stopped, for the output that replaces it.
    handover: Receiver<Handover>,
}

/// Alerts a stopped output worker did not deliver, oldest first: those of the outputs it
/// replaced itself and had not received yet (`earlier`), then its `parts`.
struct Handover {
    earlier: Option<Receiver<Handover>>,
    parts: Vec<Part>,
}

/// An alert being delivered when the worker stopped, then the queue it was taking alerts from.
struct Part {
    pending: Option<Arc<Alert>>,
    inbox: Option<Inbox<Arc<Alert>>>,
}

impl Handover {
    /// Alerts in it that are known (those of `earlier` are not).
    fn len(&self) -> u64 {
        self.parts
            .iter()
            .map(|part| {
                u64::from(part.pending.is_some()) + part.inbox.as_ref().map_or(0, |inbox| inbox.stats().queued())
            })
            .sum()
    }
}

/// The daemon's outputs: their workers and counters, and the reopen of their files on SIGHUP.
#[derive(Default)]
pub(crate) struct Outputs(Vec<Running>);

/// A destination built from its configuration, with the reopen flag of a file.
type Built = (Box<dyn Deliver>, Arc<AtomicBool>);

/// Builds the destination of `config`; a webhook whose TLS setup cannot be built (a bad
/// `ca_file`) is an error.
fn build(config: &OutputConfig) -> anyhow::Result<Built> {
    let reopen = Arc::new(AtomicBool::new(false));
    let destination: Box<dyn Deliver> = match &config.destination {
        Destination::File { path } => Box::new(file::AlertFile::new(path.clone(), reopen.clone())),
        Destination::Syslog { transport, facility } => Box::new(syslog::Syslog::new(transport.clone(), *facility)),
        Destination::Webhook(webhook) => Box::new(
            webhook::Webhook::new(webhook.clone()).map_err(|e| anyhow::anyhow!("output {:?}: {e:#}", config.name))?,
        ),
    };
    Ok((destination, reopen))
}

/// What a SIGHUP changed in the outputs, by name.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct OutputChanges {
    pub(crate) added: Vec<String>,
    pub(crate) replaced: Vec<String>,
    pub(crate) removed: Vec<String>,
}

impl Outputs {
    /// Subscribes each output to `sink` and starts its worker. A destination that cannot be
    /// reached now is a warning (its alerts wait in its queue); a webhook whose TLS setup cannot
    /// be built (a bad `ca_file`) is an error.
    pub(crate) fn start(configs: &[OutputConfig], sink: &AlertSink, workers: &mut Workers) -> anyhow::Result<Self> {
        let mut outputs = Self(Vec::with_capacity(configs.len()));
        for config in configs {
            let built = build(config)?;
            let inbox = sink.subscribe(config.queue);
            outputs.launch(config, built, inbox, None, Arc::default(), workers)?;
        }
        Ok(outputs)
    }

    /// Starts the worker of `config`, taking alerts from `inbox` after those the output it
    /// replaces hands over (`previous`).
    fn launch(
        &mut self,
        config: &OutputConfig,
        (destination, reopen): Built,
        inbox: Inbox<Arc<Alert>>,
        previous: Option<Receiver<Handover>>,
        counters: Arc<Counters>,
        workers: &mut Workers,
    ) -> std::io::Result<()> {
        let worker = Worker {
            name: config.name.clone(),
            min_severity: config.min_severity,
            backoff: (config.backoff, config.max_backoff),
            destination,
            counters: counters.clone(),
        };
        info!(output = config.name, to = worker.destination.describe(), "alert output started");
        let queue = inbox.stats().clone();
        let (handover_tx, handover) = std::sync::mpsc::sync_channel(1);
        let name = config.name.clone();
        let id = workers.spawn_thread(
            "output",
            || {},
            move |stop| {
                let left = worker.run(inbox, previous, &stop);
                let count = left.len();
                // Nobody takes them: the output was removed, or the daemon stops.
                if handover_tx.send(left).is_err() && count > 0 {
                    warn!(
                        output = name,
                        alerts = count,
                        "stopping with alerts not delivered (they are in the events log)"
                    );
                }
                Ok(())
            },
        )?;
        self.0.push(Running {
            config: config.clone(),
            queue,
            counters,
            reopen: matches!(config.destination, Destination::File { .. }).then_some(reopen),
            worker: id,
            handover,
        });
        Ok(())
    }

    /// SIGHUP with `configs` read again, outputs matched by name: an unchanged output runs on
    /// untouched (its queue too); a changed one is replaced, its replacement delivering first
    /// what it had not; a new one starts; a removed one stops (its undelivered alerts are only in
    /// the events log and the store). A destination that cannot be built changes nothing.
    pub(crate) fn reload(
        &mut self,
        configs: &[OutputConfig],
        sink: &AlertSink,
        workers: &mut Workers,
    ) -> anyhow::Result<OutputChanges> {
        let mut built = Vec::with_capacity(configs.len());
        for config in configs {
            let unchanged = self.0.iter().any(|running| running.config == *config);
            built.push(if unchanged { None } else { Some(build(config)?) });
        }
        let mut changes = OutputChanges::default();
        let mut old = std::mem::take(&mut self.0);
        for (config, built) in configs.iter().zip(built) {
            let previous = old.iter().position(|running| running.config.name == config.name).map(|i| old.remove(i));
            match (previous, built) {
                (Some(running), None) => self.0.push(running),
                (Some(running), Some(built)) => {
                    // Stopped before its queue is replaced: a worker whose queue closed would end
                    // on its own, before its stop, and that end would count as the daemon's
                    // failure. What reaches the old queue meanwhile is handed over with it.
                    workers.stop_worker(&running.worker);
                    let inbox = sink.resubscribe(&running.queue, config.queue);
                    self.launch(config, built, inbox, Some(running.handover), running.counters, workers)?;
                    changes.replaced.push(config.name.clone());
                }
                (None, built) => {
                    let built = match built {
                        Some(built) => built,
                        None => build(config)?,
                    };
                    let inbox = sink.subscribe(config.queue);
                    self.launch(config, built, inbox, None, Arc::default(), workers)?;
                    changes.added.push(config.name.clone());
                }
            }
        }
        for running in old {
            workers.stop_worker(&running.worker);
            sink.unsubscribe(&running.queue);
            changes.removed.push(running.config.name.clone());
        }
        Ok(changes)
    }

    /// SIGHUP: file outputs open their path again before their next write (after a rotation).
    pub(crate) fn reopen(&self) {
        for output in &self.0 {
            if let Some(reopen) = &output.reopen {
                reopen.store(true, Ordering::SeqCst);
            }
        }
    }

    pub(crate) fn status(&self) -> Vec<OutputStatus> {
        self.0
            .iter()
            .map(|output| OutputStatus {
                name: output.config.name.clone(),
                kind: output.config.destination.kind().to_string(),
                sent: output.counters.sent.load(Ordering::Relaxed),
                failed: output.counters.failed.load(Ordering::Relaxed),
                dropped: output.queue.dropped(),
                queued: output.queue.queued(),
                retries: output.counters.retries.load(Ordering::Relaxed),
                last_error: output.counters.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            })
            .collect()
    }
}

struct Worker {
    name: String,
    min_severity: crate::alert::Severity,
    backoff: (Duration, Duration),
    destination: Box<dyn Deliver>,
    counters: Arc<Counters>,
}

impl Worker {
    /// Delivers what the output it replaces hands over (`previous`), then what `inbox` brings,
    /// until stopped; returns what it did not deliver.
    fn run(mut self, inbox: Inbox<Arc<Alert>>, previous: Option<Receiver<Handover>>, stop: &Stop) -> Handover {
        let mut last_warning: Option<Instant> = None;
        if let Err(error) = self.destination.check() {
            last_warning = Some(Instant::now());
            warn!(
                output = self.name,
                to = self.destination.describe(),
                %error,
                "alert output cannot reach its destination now; alerts wait in its queue and are retried"
            );
        }
        // What the replaced outputs left, oldest first.
        let mut parts: VecDeque<Part> = VecDeque::new();
        let mut earlier = previous;
        while let Some(handover) = earlier.take() {
            match handover.recv_timeout(POLL) {
                Ok(left) => {
                    for part in left.parts.into_iter().rev() {
                        parts.push_front(part);
                    }
                    earlier = left.earlier;
                }
                Err(RecvTimeoutError::Timeout) if stop.is_stopped() => {
                    parts.push_back(Part { pending: None, inbox: Some(inbox) });
                    return Handover { earlier: Some(handover), parts: parts.into() };
                }
                Err(RecvTimeoutError::Timeout) => earlier = Some(handover),
                Err(RecvTimeoutError::Disconnected) => {
                    warn!(output = self.name, "the output replaced ended without handing over its alerts")
                }
            }
        }
        parts.push_back(Part { pending: None, inbox: Some(inbox) });
        while let Some(Part { pending, inbox }) = parts.pop_front() {
            if let Some(alert) = pending
                && !self.deliver_at_or_above(&alert, stop, &mut last_warning)
            {
                parts.push_front(Part { pending: Some(alert), inbox });
                return Handover { earlier: None, parts: parts.into() };
            }
            let Some(mut inbox) = inbox else { continue };
            // The replaced outputs' queues are no longer fed: emptied, they are done with.
            let own = parts.is_empty();
            while !stop.is_stopped() {
                let received = if own { inbox.recv_timeout(POLL) } else { inbox.try_recv() };
                match received {
                    Received::Item(alert) => {
                        if !self.deliver_at_or_above(&alert, stop, &mut last_warning) {
                            parts.push_front(Part { pending: Some(alert), inbox: Some(inbox) });
                            return Handover { earlier: None, parts: parts.into() };
                        }
                    }
                    Received::Idle if own => {}
                    Received::Idle | Received::Closed => break,
                }
            }
            if stop.is_stopped() {
                parts.push_front(Part { pending: None, inbox: Some(inbox) });
                return Handover { earlier: None, parts: parts.into() };
            }
        }
        Handover { earlier: None, parts: Vec::new() }
    }

    /// Delivers `alert` if its severity is at least the output's; false if stopped before.
    fn deliver_at_or_above(&mut self, alert: &Alert, stop: &Stop, last_warning: &mut Option<Instant>) -> bool {
        alert.severity() < self.min_severity || self.deliver(alert, stop, last_warning)
    }

    /// Delivers `alert`, retrying with a doubling pause until it is delivered or refused for good
    /// (true), or the worker is stopped (false).
    fn deliver(&mut self, alert: &Alert, stop: &Stop, last_warning: &mut Option<Instant>) -> bool {
        let (mut pause, max_pause) = self.backoff;
        let mut failing_since: Option<Instant> = None;
        loop {
            match self.destination.deliver(alert) {
                Ok(()) => {
                    self.counters.sent.fetch_add(1, Ordering::Relaxed);
                    let mut last_error = self.counters.last_error.lock().unwrap_or_else(|p| p.into_inner());
                    if last_error.take().is_some() && failing_since.is_some() {
                        info!(output = self.name, to = self.destination.describe(), "alert output delivers again");
                    }
                    return true;
                }
                Err(Failure::Permanent(error)) => {
                    self.counters.failed.fetch_add(1, Ordering::Relaxed);
                    warn!(
                        output = self.name,
                        to = self.destination.describe(),
                        kind = alert.kind().name(),
                        %error,
                        "alert refused by the output's destination; not retried"
                    );
                    *self.counters.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(error);
                    return true;
                }
                Err(Failure::Retry(error)) => {
                    self.counters.retries.fetch_add(1, Ordering::Relaxed);
                    failing_since.get_or_insert_with(Instant::now);
                    if last_warning.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
                        *last_warning = Some(Instant::now());
                        warn!(
                            output = self.name,
                            to = self.destination.describe(),
                            %error,
                            retry_in_ms = pause.as_millis() as u64,
                            "alert output failed; alerts wait in its queue and are retried"
                        );
                    }
                    *self.counters.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(error);
                    if !pause_unless_stopped(pause, stop) {
                        return false;
                    }
                    pause = (pause * 2).min(max_pause);
                }
            }
        }
    }
}

/// Sleeps `pause`; false if the daemon stopped meanwhile.
fn pause_unless_stopped(pause: Duration, stop: &Stop) -> bool {
    let until = Instant::now() + pause;
    loop {
        if stop.is_stopped() {
            return false;
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return true;
        }
        std::thread::sleep(left.min(POLL));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::{AlertBody, BanAlert};

    fn ban(n: u32) -> Alert {
        Alert::now(AlertBody::Ban(BanAlert {
            net: format!("192.0.2.{n}/32"),
            source: "port-scan".into(),
            reason: "scan".into(),
            expires: None,
            offence: 1,
            escalation: None,
        }))
    }

    fn outputs(tables: &[String]) -> Vec<OutputConfig> {
        crate::config::Config::parse(&tables.concat(), "test").unwrap().outputs
    }

    fn file_output(name: &str, path: &std::path::Path) -> String {
        format!(
            "[[outputs]]\nkind = \"file\"\nname = {name:?}\npath = {:?}\nmin_severity = \"low\"\n\
             backoff = \"10ms\"\nmax_backoff = \"20ms\"\n",
            path.display().to_string()
        )
    }

    /// The nets of the ban alerts in a file output, in order.
    fn nets(path: &std::path::Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap()["net"].as_str().unwrap().to_string())
            .collect()
    }

    fn wait_until(what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn expected(range: std::ops::Range<u32>) -> Vec<String> {
        range.map(|n| format!("192.0.2.{n}/32")).collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_changed_output_is_replaced_and_delivers_what_it_had_not_an_unchanged_one_runs_on() {
        let dir = tempfile::tempdir().unwrap();
        // A regular file where the output wants a directory: every attempt fails and is retried.
        let blocker = dir.path().join("not-a-directory");
        std::fs::write(&blocker, "").unwrap();
        let (fixed, other) = (dir.path().join("alerts.jsonl"), dir.path().join("other.jsonl"));
        let sink = AlertSink::new(None, None);
        let mut workers = Workers::default();
        let mut running = Outputs::start(
            &outputs(&[file_output("main", &blocker.join("alerts.jsonl")), file_output("other", &other)]),
            &sink,
            &mut workers,
        )
        .unwrap();
        for n in 0..5 {
            sink.emit(ban(n));
        }
        let main = |running: &Outputs| running.status().into_iter().find(|s| s.name == "main");
        wait_until("a failed delivery", || main(&running).is_some_and(|s| s.retries > 0));
        wait_until("the other output's deliveries", || nets(&other).len() >= 5);
        assert_eq!(nets(&other), expected(0..5));

        let changes = running
            .reload(&outputs(&[file_output("main", &fixed), file_output("other", &other)]), &sink, &mut workers)
            .unwrap();
        assert_eq!(changes, OutputChanges { replaced: vec!["main".into()], ..OutputChanges::default() });
        for n in 5..8 {
            sink.emit(ban(n));
        }
        wait_until("the replacement's deliveries", || nets(&fixed).len() >= 8);
        assert_eq!(nets(&fixed), expected(0..8), "in order, none twice");
        wait_until("the unchanged output's deliveries", || nets(&other).len() >= 8);
        assert_eq!(nets(&other), expected(0..8));
        // Counters carry on across the replacement, and the unchanged output was not restarted.
        let status = running.status();
        assert_eq!(status.iter().map(|s| s.sent).collect::<Vec<_>>(), [8, 8], "{status:?}");

        let changes = running.reload(&outputs(&[file_output("other", &other)]), &sink, &mut workers).unwrap();
        assert_eq!(changes, OutputChanges { removed: vec!["main".into()], ..OutputChanges::default() });
        sink.emit(ban(8));
        wait_until("the remaining output's delivery", || nets(&other).len() >= 9);
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(nets(&fixed).len(), 8, "the removed output still wrote");
        // No replacement or removal counted as a worker's failure.
        assert!(tokio::time::timeout(Duration::from_millis(200), workers.exited()).await.is_err());
        workers.shutdown(Duration::from_secs(10)).await;
    }
}
