//! The daemon's remote CHECK: after every change of the aggregate, and every
//! `remote_check_interval`, the aggregate is CHECKed with each enabled `[[servers]]` entry. A
//! MISMATCH, a NOT FOUND, any other refusal, or an unreachable server becomes an alert of kind
//! `remote_check` (events log line and `alerts` row).
use std::io::Write as _;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{info, warn};

use super::client::{self, Target};
use super::codec::Request;
use crate::config::Config;
use crate::integrity::Digest;
use crate::monitor::{SharedOutput, lock_output};
use crate::store::{AlertRow, Store};

/// How long each server gets to answer.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Starts the task when at least one server is enabled; a server whose TLS files do not load
/// stops the start with an error naming it.
pub fn spawn(
    config: &Config,
    aggregate: watch::Receiver<Option<Digest>>,
    output: SharedOutput,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    let targets = client::targets(&config.servers)?;
    if targets.is_empty() {
        return Ok(None);
    }
    let database = config.database();
    let interval = config.remote_check_interval;
    Ok(Some(tokio::spawn(run(targets, aggregate, output, database, interval))))
}

async fn run(
    targets: Vec<Target>,
    mut aggregate: watch::Receiver<Option<Digest>>,
    output: SharedOutput,
    database: std::path::PathBuf,
    interval: Duration,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            changed = aggregate.changed() => if changed.is_err() { return },
            _ = tick.tick() => {}
        }
        let Some(digest) = *aggregate.borrow_and_update() else { continue };
        let hash = crate::integrity::hex(&digest);
        let outcomes = client::send_all(&targets, &Request::Check { hash: hash.clone() }, TIMEOUT).await;
        let time = crate::store::now();
        let rows: Vec<AlertRow> = outcomes
            .iter()
            .filter(|outcome| outcome.severity() > 0)
            .map(|outcome| {
                let mut what = outcome.to_json();
                if let Some(what) = what.as_object_mut() {
                    what.remove("server");
                    what.remove("ok");
                    what.insert("aggregate".into(), hash.clone().into());
                }
                AlertRow {
                    time: time.clone(),
                    kind: "remote_check".into(),
                    item_id: outcome.server.clone(),
                    collector: String::new(),
                    what,
                }
            })
            .collect();
        let answered_ok = outcomes.len() - rows.len();
        info!(aggregate = %hash, servers = outcomes.len(), ok = answered_ok, "remote CHECK");
        if rows.is_empty() {
            continue;
        }
        let mut lines = Vec::new();
        for row in &rows {
            let mut alert = serde_json::json!({"time": row.time, "kind": row.kind, "server": row.item_id});
            if let (Some(alert), Some(what)) = (alert.as_object_mut(), row.what.as_object()) {
                alert.extend(what.clone());
            }
            if serde_json::to_writer(&mut lines, &alert).is_ok() {
                lines.push(b'\n');
            }
        }
        {
            let mut out = lock_output(&output);
            if let Err(e) = out.write_all(&lines).and_then(|()| out.flush()) {
                warn!(error = %e, "writing remote_check alerts to the events log");
            }
        }
        let database = database.clone();
        let stored =
            tokio::task::spawn_blocking(move || Store::open(&database).and_then(|mut store| store.apply(&[], &rows)))
                .await;
        match stored {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "storing remote_check alerts"),
            Err(e) => warn!(error = %e, "storing remote_check alerts"),
        }
    }
}
