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

/// Starts the task when at least one server is enabled; a server whose TLS files do not load
/// stops the start with an error naming it.
pub(crate) fn start(
    servers: &[super::settings::ServerEntry],
    interval: Duration,
    aggregate: watch::Receiver<Option<Digest>>,
    sink: AlertSink,
    workers: &mut Workers,
) -> anyhow::Result<()> {
    let targets = client::targets(servers)?;
    if targets.is_empty() {
        return Ok(());
    }
    workers.spawn_task("remote_check", move |stop| run(targets, aggregate, sink, interval, stop));
    Ok(())
}

async fn run(
    targets: Vec<Target>,
    mut aggregate: watch::Receiver<Option<Digest>>,
    sink: AlertSink,
    interval: Duration,
    stop: Stop,
) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.stopped() => return Ok(()),
            changed = aggregate.changed() => if changed.is_err() { return Ok(()) },
            _ = tick.tick() => {}
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
