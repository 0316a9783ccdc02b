//! The daemon's remote CHECK: after every change of the aggregate, and every
//! `remote_check_interval`, the aggregate is CHECKed with each enabled `[[servers]]` entry. A
//! MISMATCH, a NOT FOUND, any other refusal, or an unreachable server becomes an alert of kind
//! `remote_check` (events log line and `alerts` row).
use std::time::Duration;

use tokio::sync::watch;
use tracing::info;

use super::client::{self, Target};
use super::codec::Request;
use crate::alert::{Alert, AlertBody, AlertSink, RemoteCheckAlert};
use crate::harness::{Stop, Workers};
use crate::integrity::Digest;

/// How long each server gets to answer.
const TIMEOUT: Duration = Duration::from_secs(10);

/// The servers CHECKed and how often: replaced as a whole when the configuration is read again.
pub(crate) struct RemoteChecks {
    targets: std::sync::Arc<[Target]>,
    interval: Duration,
}

impl RemoteChecks {
    /// The enabled `[[servers]]`; a server whose TLS files do not load is an error naming it.
    pub(crate) fn new(servers: &[super::settings::ServerEntry], interval: Duration) -> anyhow::Result<Self> {
        Ok(Self { targets: client::targets(servers)?.into(), interval })
    }
}

/// Starts the task; it CHECKs nothing while `settings` holds no server, and takes up new
/// settings (servers added, removed, another interval) when they are sent.
pub(crate) fn start(
    settings: watch::Receiver<RemoteChecks>,
    aggregate: watch::Receiver<Option<Digest>>,
    sink: AlertSink,
    workers: &mut Workers,
) {
    workers.spawn_task("remote_check", move |stop| run(settings, aggregate, sink, stop));
}

fn ticker(interval: Duration) -> tokio::time::Interval {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick
}

async fn run(
    mut settings: watch::Receiver<RemoteChecks>,
    mut aggregate: watch::Receiver<Option<Digest>>,
    sink: AlertSink,
    stop: Stop,
) -> anyhow::Result<()> {
    let mut tick = ticker(settings.borrow().interval);
    let mut settings_open = true;
    loop {
        tokio::select! {
            _ = stop.stopped() => return Ok(()),
            changed = aggregate.changed() => if changed.is_err() { return Ok(()) },
            changed = settings.changed(), if settings_open => match changed {
                // New servers are CHECKed at once (the first tick of a new interval is now).
                Ok(()) => tick = ticker(settings.borrow().interval),
                Err(_) => settings_open = false,
            },
            _ = tick.tick() => {}
        }
        // Not borrowed across the CHECK: a reload would wait for it.
        let targets = settings.borrow().targets.clone();
        if targets.is_empty() {
            continue;
        }
        let Some(digest) = *aggregate.borrow_and_update() else { continue };
        let hash = crate::integrity::hex(&digest);
        let outcomes = client::send_all(&targets, &Request::Check { hash: hash.clone() }, TIMEOUT).await;
        let alerts: Vec<Alert> = outcomes
            .iter()
            .filter(|outcome| outcome.severity() > 0)
            .map(|outcome| {
                let mut fields = match outcome.to_json() {
                    serde_json::Value::Object(fields) => fields,
                    _ => serde_json::Map::new(),
                };
                fields.remove("server");
                fields.remove("ok");
                Alert::now(AlertBody::RemoteCheck(RemoteCheckAlert {
                    server: outcome.server.clone(),
                    outcome: fields,
                    aggregate: hash.clone(),
                }))
            })
            .collect();
        info!(aggregate = %hash, servers = outcomes.len(), ok = outcomes.len() - alerts.len(), "remote CHECK");
        if alerts.is_empty() {
            continue;
        }
        // The sink writes to SQLite: off the runtime's threads.
        let sink = sink.clone();
        let _ = tokio::task::spawn_blocking(move || sink.emit_all(alerts)).await;
    }
}
