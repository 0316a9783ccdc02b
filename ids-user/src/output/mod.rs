//! Alert outputs (`[[outputs]]`): files, syslog and webhooks that get every alert at or above
//! their `min_severity` (raw events stay in the events log). Each output is one worker thread
//! subscribed to the alert sink; its subscription is its bounded queue (`queue`), so alerts wait
//! there while the destination is down and are delivered in order when it is back, and alerts
//! beyond the bound are dropped and counted. A failed delivery is retried after a pause that
//! doubles from `backoff` to `max_backoff`; a refusal no retry can change (a webhook's 4xx, a
//! datagram too long) is counted as failed and the next alert goes.
pub(crate) mod config;
mod file;
mod syslog;
mod webhook;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use self::config::Destination;
pub use self::config::OutputConfig;
use crate::alert::{Alert, AlertSink};
use crate::harness::{Inbox, QueueStats, Received, Stop, Workers};

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
    name: String,
    kind: &'static str,
    queue: Arc<QueueStats>,
    counters: Arc<Counters>,
    /// File outputs: set on SIGHUP.
    reopen: Option<Arc<AtomicBool>>,
}

/// The daemon's outputs: their counters, and the reopen of their files on SIGHUP.
#[derive(Default)]
pub(crate) struct Outputs(Vec<Running>);

impl Outputs {
    /// Subscribes each output to `sink` and starts its worker. A destination that cannot be
    /// reached now is a warning (its alerts wait in its queue); a webhook whose TLS setup cannot
    /// be built (a bad `ca_file`) is an error.
    pub(crate) fn start(configs: &[OutputConfig], sink: &AlertSink, workers: &mut Workers) -> anyhow::Result<Self> {
        let mut running = Vec::with_capacity(configs.len());
        for config in configs {
            let reopen = Arc::new(AtomicBool::new(false));
            let destination: Box<dyn Deliver> = match &config.destination {
                Destination::File { path } => Box::new(file::AlertFile::new(path.clone(), reopen.clone())),
                Destination::Syslog { transport, facility } => {
                    Box::new(syslog::Syslog::new(transport.clone(), *facility))
                }
                Destination::Webhook(webhook) => Box::new(
                    webhook::Webhook::new(webhook.clone())
                        .map_err(|e| anyhow::anyhow!("output {:?}: {e:#}", config.name))?,
                ),
            };
            let inbox = sink.subscribe(config.queue);
            let counters = Arc::new(Counters::default());
            let worker = Worker {
                name: config.name.clone(),
                min_severity: config.min_severity,
                backoff: (config.backoff, config.max_backoff),
                destination,
                counters: counters.clone(),
            };
            info!(output = config.name, to = worker.destination.describe(), "alert output started");
            running.push(Running {
                name: config.name.clone(),
                kind: config.destination.kind(),
                queue: inbox.stats().clone(),
                counters,
                reopen: matches!(config.destination, Destination::File { .. }).then_some(reopen),
            });
            workers.spawn_thread(
                "output",
                || {},
                move |stop| {
                    worker.run(inbox, &stop);
                    Ok(())
                },
            )?;
        }
        Ok(Self(running))
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
                name: output.name.clone(),
                kind: output.kind.to_string(),
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
    fn run(mut self, mut inbox: Inbox<Arc<Alert>>, stop: &Stop) {
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
        while !stop.is_stopped() {
            match inbox.recv_timeout(POLL) {
                Received::Item(alert) if alert.severity() >= self.min_severity => {
                    self.deliver(&alert, stop, &mut last_warning);
                }
                Received::Item(_) | Received::Idle => {}
                Received::Closed => return,
            }
        }
        let left = inbox.stats().queued();
        if left > 0 {
            warn!(output = self.name, alerts = left, "stopping with alerts not delivered (they are in the events log)");
        }
    }

    /// Delivers `alert`, retrying with a doubling pause until it is delivered, refused for good,
    /// or the daemon stops.
    fn deliver(&mut self, alert: &Alert, stop: &Stop, last_warning: &mut Option<Instant>) {
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
                    return;
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
                    return;
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
                        return;
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
