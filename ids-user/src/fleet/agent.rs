//! The fleet agent inside `ids run`: sends every stored alert to the broker, confirmed, from
//! the `alerts` table (the outbox); heartbeats; receives the fleet's ban decisions.
//!
//! Nothing waits in memory only: an alert is in the store before the agent reads it, and leaves
//! the backlog only when the broker confirmed it (a returned `mandatory` message is not a
//! confirmation). While the broker cannot be reached the backlog grows in SQLite, up to
//! `[fleet] max_backlog`; beyond, the oldest are dropped and a gap record says which.
use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use futures_lite::StreamExt as _;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, BasicRejectOptions,
    ConfirmSelectOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Confirmation, Connection, PublisherConfirm};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc, oneshot};
use tracing::{info, warn};

use super::FleetConfig;
use super::message::{
    self, ALERTS_EXCHANGE, AlertMessage, BanDecision, BanSnapshot, GapMessage, Heartbeat, Inbound, SnapshotRequest,
    types,
};
use super::topology;
use crate::harness::{Stop, Workers};
use crate::store::{Gap, Store};
use crate::time::Timestamp;

/// Alerts published together; [`IN_FLIGHT`] batches are published before the oldest one's
/// confirmations are awaited, so the broker always has work while the agent waits.
const BATCH: usize = 500;
const IN_FLIGHT: usize = 4;
/// Alerts confirmed in one turn of the agent's loop before heartbeats and ban decisions are
/// looked at.
const TURN: usize = 20_000;
/// How often the backlog is looked at when no alert was stored meanwhile (an alert the store
/// refused at first is stored by a retry that may come without a wakeup).
const IDLE_CHECK: Duration = Duration::from_secs(1);
/// Reconnect delays: from this, doubling, up to [`BACKOFF_MAX`], each with ±50 % jitter so that
/// a fleet does not reconnect in step after a broker restart.
const BACKOFF_START: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// How long the broker may take to confirm a batch, or to answer while a session is set up; a
/// connection that died under a pending confirmation does not always fail it, so without this
/// the agent could wait for ever.
const BROKER_TIMEOUT: Duration = Duration::from_secs(15);

/// `future`, or an error naming `what` once [`BROKER_TIMEOUT`] passed from `start`.
async fn before_deadline<T>(
    start: Instant,
    what: &str,
    future: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    match tokio::time::timeout_at((start + BROKER_TIMEOUT).into(), future).await {
        Ok(outcome) => outcome,
        Err(_) => anyhow::bail!("{what}: the broker did not answer within {}s", BROKER_TIMEOUT.as_secs()),
    }
}

/// The fleet link as `ids status` shows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct FleetStatus {
    pub(crate) connected: bool,
    /// Alerts stored and not yet confirmed by the broker.
    pub(crate) backlog: u64,
    pub(crate) last_confirmed_seq: i64,
    pub(crate) last_error: Option<String>,
    pub(crate) host: String,
    pub(crate) epoch: i64,
    /// Alerts confirmed since the daemon started.
    pub(crate) sent: u64,
    /// Alerts dropped unsent (backlog over `max_backlog`) since the daemon started.
    pub(crate) dropped: u64,
    /// Fleet ban decisions applied since the daemon started.
    pub(crate) ban_decisions: u64,
}

/// What the heartbeat tells of the host, kept up to date by the daemon.
#[derive(Debug, Clone, Default)]
pub(crate) struct HostFacts {
    pub(crate) hooks: BTreeMap<String, String>,
    pub(crate) lost_events: BTreeMap<String, u64>,
    pub(crate) aggregate: Option<String>,
    pub(crate) baseline_aggregate: Option<String>,
}

/// Shared between the agent and the daemon.
#[derive(Default)]
pub(crate) struct AgentShared {
    status: Mutex<FleetStatus>,
    facts: Mutex<HostFacts>,
}

impl AgentShared {
    pub(crate) fn status(&self) -> FleetStatus {
        self.status.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(crate) fn set_facts(&self, facts: HostFacts) {
        *self.facts.lock().unwrap_or_else(|p| p.into_inner()) = facts;
    }

    fn update(&self, change: impl FnOnce(&mut FleetStatus)) {
        change(&mut self.status.lock().unwrap_or_else(|p| p.into_inner()));
    }
}

/// A fleet ban decision for the daemon to apply through the ban path; the agent acknowledges
/// the message once the daemon answered.
#[derive(Debug)]
pub(crate) enum BanCommand {
    Decision(BanDecision),
    Snapshot(BanSnapshot),
}

pub(crate) type BanCommands = mpsc::Sender<(BanCommand, oneshot::Sender<()>)>;

/// This host's id: `[fleet] host_id`, or `/etc/machine-id`.
fn host_id(config: &FleetConfig) -> anyhow::Result<String> {
    if let Some(host) = &config.host_id {
        return Ok(host.clone());
    }
    let text = std::fs::read_to_string("/etc/machine-id")
        .context("[fleet] host_id is not set and /etc/machine-id cannot be read")?;
    let host = text.trim().to_string();
    message::check_host_id(&host).map_err(|m| anyhow::anyhow!("/etc/machine-id: {m}; set [fleet] host_id"))?;
    Ok(host)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_default()
}

/// Starts the agent as a worker; its status and facts are in the returned handle.
/// `settings` may be replaced while the agent runs (SIGHUP): it reconnects with them; the host id
/// is the one of the first.
pub(crate) fn start(
    settings: tokio::sync::watch::Receiver<FleetConfig>,
    database: PathBuf,
    stored: Arc<Notify>,
    bans: BanCommands,
    workers: &mut Workers,
) -> anyhow::Result<Arc<AgentShared>> {
    let config = settings.borrow().clone();
    let host = host_id(&config)?;
    let store = Store::open(&database)?;
    // A new epoch is this moment in microseconds: a database made anew never reuses one.
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let outbox = store.outbox(now.as_micros().min(i64::MAX as u128) as i64)?;
    let shared = Arc::new(AgentShared::default());
    shared.update(|s| {
        s.host = host.clone();
        s.epoch = outbox.epoch;
        s.backlog = outbox.backlog();
        s.last_confirmed_seq = outbox.confirmed_seq;
    });
    info!(host, epoch = outbox.epoch, backlog = outbox.backlog(), url = config.broker.url, "fleet agent starting");
    let agent = Agent {
        user: config.broker.user(),
        config,
        settings,
        host,
        hostname: hostname(),
        epoch: outbox.epoch,
        store: Mutex::new(store),
        stored,
        bans,
        shared: shared.clone(),
        started: Instant::now(),
    };
    workers.spawn_task("fleet", move |stop| agent.run(stop));
    Ok(shared)
}

struct Agent {
    config: FleetConfig,
    /// Replaced on SIGHUP; taken up at the next connection.
    settings: tokio::sync::watch::Receiver<FleetConfig>,
    host: String,
    hostname: String,
    epoch: i64,
    /// The broker user to put in `user_id` (the broker checks it; the collector compares it with
    /// `host`); with a client certificate, the host id (its common name).
    user: Option<String>,
    /// The agent's own connection to the state database (locked only between awaits).
    store: Mutex<Store>,
    stored: Arc<Notify>,
    bans: BanCommands,
    shared: Arc<AgentShared>,
    started: Instant,
}

/// Why a connected session ended without an error.
enum SessionEnd {
    Stopped,
    /// The settings were replaced: connect again with them.
    Reconfigured,
}

/// A connected session's channels.
struct Session {
    connection: Connection,
    publish: Channel,
    consumer: lapin::Consumer,
}

impl Agent {
    fn db(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn run(mut self, stop: Stop) -> anyhow::Result<()> {
        let mut failures = 0u32;
        loop {
            if stop.is_stopped() {
                return Ok(());
            }
            if self.settings.has_changed().unwrap_or(false) {
                self.config = self.settings.borrow_and_update().clone();
                self.user = self.config.broker.user();
                failures = 0;
                info!(url = self.config.broker.url, "fleet: settings replaced; connecting with them");
            }
            self.cap_backlog();
            let outcome = match before_deadline(Instant::now(), "setting up the session", self.connect()).await {
                Ok(session) => {
                    failures = 0;
                    self.shared.update(|s| s.connected = true);
                    info!(url = self.config.broker.url, "fleet: connected to the broker");
                    self.serve(session, &stop).await
                }
                Err(e) => Err(e),
            };
            match outcome {
                Ok(SessionEnd::Stopped) => return Ok(()),
                Ok(SessionEnd::Reconfigured) => continue,
                Err(e) => {
                    let error = crate::error_text::one_line(e.as_ref());
                    if failures == 0 {
                        warn!(error, "fleet: broker link down; alerts wait in the store and are sent once it is back");
                    }
                    self.shared.update(|s| {
                        s.connected = false;
                        s.last_error = Some(error);
                    });
                }
            }
            failures = failures.saturating_add(1);
            let mut settings = self.settings.clone();
            tokio::select! {
                _ = stop.stopped() => return Ok(()),
                // New settings are tried at once, not after the backoff the old ones earned.
                Ok(()) = settings.changed() => {}
                _ = tokio::time::sleep(backoff(failures)) => {}
            }
        }
    }

    async fn connect(&self) -> anyhow::Result<Session> {
        let connection = self.config.broker.connect(&format!("ids agent {}", self.host)).await?;
        let publish = connection.create_channel().await.context("opening a channel")?;
        publish.confirm_select(ConfirmSelectOptions::default()).await.context("enabling publisher confirms")?;
        topology::declare_alerts(&publish).await.context("declaring the alerts exchange and queue")?;
        let receive = connection.create_channel().await.context("opening a channel")?;
        let queue =
            topology::declare_host_bans(&receive, &self.host).await.context("declaring this host's ban queue")?;
        receive.basic_qos(64, BasicQosOptions::default()).await.context("setting the prefetch")?;
        let consumer = receive
            .basic_consume(
                queue.as_str().into(),
                format!("ids-agent-{}", self.host).into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("consuming {queue}"))?;
        let session = Session { connection, publish, consumer };
        // Asked once the queue is bound: a decision made from now on reaches the queue, and the
        // snapshot covers everything before.
        let request = SnapshotRequest { v: message::VERSION, host: self.host.clone() };
        self.publish_confirmed(
            &session.publish,
            types::SNAPSHOT_REQUEST,
            format!("{}:snapshot:{}", self.host, Timestamp::now()),
            &serde_json::to_vec(&request)?,
        )
        .await?;
        Ok(session)
    }

    /// Sends until stopped (Ok) or until the link fails (Err).
    async fn serve(&self, mut session: Session, stop: &Stop) -> anyhow::Result<SessionEnd> {
        let mut next_heartbeat = Instant::now();
        let mut settings = self.settings.clone();
        loop {
            if stop.is_stopped() {
                let _ = session.connection.close(200, "stopping".into()).await;
                return Ok(SessionEnd::Stopped);
            }
            if settings.has_changed().unwrap_or(false) {
                let _ = session.connection.close(200, "reconnecting with new settings".into()).await;
                return Ok(SessionEnd::Reconfigured);
            }
            if Instant::now() >= next_heartbeat {
                self.send_heartbeat(&session.publish).await?;
                next_heartbeat = Instant::now() + self.config.heartbeat;
            }
            self.cap_backlog();
            self.send_gaps(&session.publish).await?;
            let sent = self.send_alerts(&session.publish).await?;
            // A full turn: more are waiting; ban decisions are still taken between turns.
            let wait = if sent >= TURN { Duration::ZERO } else { IDLE_CHECK.min(next_heartbeat - Instant::now()) };
            tokio::select! {
                biased;
                _ = stop.stopped() => {}
                delivery = session.consumer.next() => match delivery {
                    Some(Ok(delivery)) => self.take_ban_message(delivery).await?,
                    Some(Err(e)) => return Err(e).context("receiving ban decisions"),
                    None => anyhow::bail!("the broker cancelled the ban consumer"),
                },
                _ = self.stored.notified(), if sent < TURN => {}
                Ok(()) = settings.changed() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Publishes `body` (persistent, mandatory) and waits for the broker's confirmation.
    async fn publish_confirmed(
        &self,
        channel: &Channel,
        message_type: &str,
        id: String,
        body: &[u8],
    ) -> anyhow::Result<()> {
        let start = Instant::now();
        let confirm =
            before_deadline(start, "publishing", self.publish(channel, message_type, id.clone(), body)).await?;
        let confirmation = before_deadline(start, "waiting for a confirmation", async {
            confirm.await.context("waiting for the broker's confirmation")
        })
        .await?;
        confirmed(confirmation).with_context(|| id)
    }

    async fn publish(
        &self,
        channel: &Channel,
        message_type: &str,
        id: String,
        body: &[u8],
    ) -> anyhow::Result<PublisherConfirm> {
        let mut properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_type(message_type.into())
            .with_message_id(id.into());
        let user = self.user.clone().unwrap_or_else(|| self.host.clone());
        properties = properties.with_user_id(user.into());
        channel
            .basic_publish(
                ALERTS_EXCHANGE.into(),
                message::alerts_routing_key(message_type, &self.host).into(),
                BasicPublishOptions { mandatory: true, ..BasicPublishOptions::default() },
                body,
                properties,
            )
            .await
            .context("publishing")
    }

    /// Sends the unsent alerts, pipelined: up to [`IN_FLIGHT`] batches of [`BATCH`] are published
    /// (each batch's publishes issued together, so the connection writes them in one go) before
    /// the oldest batch's confirmations are awaited. The outbox moves past confirmed alerts only,
    /// in order, and stops at the first that was not. Returns how many were confirmed; after
    /// [`TURN`] it returns with nothing in flight, so heartbeats and ban decisions get their turn.
    async fn send_alerts(&self, channel: &Channel) -> anyhow::Result<usize> {
        let outbox = self.db().outbox(self.epoch)?;
        let mut published_up_to = outbox.confirmed_seq;
        let mut confirmed_up_to = outbox.confirmed_seq;
        let mut in_flight: VecDeque<Vec<(i64, PublisherConfirm)>> = VecDeque::new();
        let mut total = 0;
        loop {
            while in_flight.len() < IN_FLIGHT && total < TURN {
                let unsent = self.db().alerts_after(published_up_to, BATCH)?;
                let Some(last) = unsent.last().map(|alert| alert.seq) else { break };
                in_flight.push_back(self.publish_batch(channel, &unsent).await?);
                published_up_to = last;
            }
            let Some(batch) = in_flight.pop_front() else { break };
            let start = Instant::now();
            let mut failure = None;
            for (seq, confirm) in batch {
                let confirmation =
                    before_deadline(start, "waiting for confirmations", async { Ok(confirm.await?) }).await;
                match confirmation.and_then(confirmed) {
                    Ok(()) => confirmed_up_to = seq,
                    Err(e) => {
                        failure = Some(e.context(format!("alert {seq}")));
                        break;
                    }
                }
            }
            let sent = (confirmed_up_to - outbox.confirmed_seq).max(0) as usize - total;
            total += sent;
            if sent > 0 {
                self.db().confirm_alerts(confirmed_up_to)?;
            }
            self.shared.update(|s| {
                s.sent += sent as u64;
                s.last_confirmed_seq = confirmed_up_to;
                s.backlog = (outbox.last_seq - confirmed_up_to).max(0) as u64;
            });
            if let Some(e) = failure {
                // What is still in flight is sent again on the next connection (the collector
                // stores each alert once).
                return Err(e);
            }
        }
        let last_seq = self.db().last_alert_id()?;
        self.shared.update(|s| s.backlog = (last_seq - confirmed_up_to).max(0) as u64);
        Ok(total)
    }

    /// Publishes `alerts` together and returns their pending confirmations, in order.
    async fn publish_batch(
        &self,
        channel: &Channel,
        alerts: &[crate::store::UnsentAlert],
    ) -> anyhow::Result<Vec<(i64, PublisherConfirm)>> {
        let start = Instant::now();
        let mut messages = Vec::with_capacity(alerts.len());
        for alert in alerts {
            let message = AlertMessage {
                v: message::VERSION,
                host: self.host.clone(),
                hostname: self.hostname.clone(),
                epoch: self.epoch,
                seq: alert.seq,
                time: alert.row.time.clone(),
                kind: alert.row.kind.clone(),
                alert: alert.row.to_alert_json(),
            };
            messages.push((alert.seq, message.message_id(), serde_json::to_vec(&message)?));
        }
        // Each publish waits until the connection's writer took its frames: issued one after
        // the other they would cost a round trip to that thread each.
        let publishes = messages.iter().map(|(_, id, body)| self.publish(channel, types::ALERT, id.clone(), body));
        let confirms = before_deadline(start, "publishing", async {
            futures_util::future::join_all(publishes).await.into_iter().collect::<anyhow::Result<Vec<_>>>()
        })
        .await?;
        Ok(messages.iter().map(|(seq, _, _)| *seq).zip(confirms).collect())
    }

    async fn send_gaps(&self, channel: &Channel) -> anyhow::Result<()> {
        let gaps = self.db().unsent_gaps()?;
        for Gap { from, to, time } in gaps {
            let gap = GapMessage {
                v: message::VERSION,
                host: self.host.clone(),
                hostname: self.hostname.clone(),
                epoch: self.epoch,
                from,
                to,
                time,
            };
            self.publish_confirmed(channel, types::GAP, gap.message_id(), &serde_json::to_vec(&gap)?).await?;
            self.db().gap_sent(from)?;
        }
        Ok(())
    }

    async fn send_heartbeat(&self, channel: &Channel) -> anyhow::Result<()> {
        let facts = self.shared.facts.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let outbox = self.db().outbox(self.epoch)?;
        let heartbeat = Heartbeat {
            v: message::VERSION,
            host: self.host.clone(),
            hostname: self.hostname.clone(),
            epoch: self.epoch,
            time: Timestamp::now().rfc3339(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            interval_s: self.config.heartbeat.as_secs(),
            uptime_s: self.started.elapsed().as_secs(),
            hooks: facts.hooks,
            aggregate: facts.aggregate,
            baseline_aggregate: facts.baseline_aggregate,
            lost_events: facts.lost_events,
            backlog: outbox.backlog(),
            last_seq: outbox.last_seq,
        };
        let id = format!("{}:heartbeat:{}", self.host, heartbeat.time);
        self.publish_confirmed(channel, types::HEARTBEAT, id, &serde_json::to_vec(&heartbeat)?).await
    }

    /// Drops the oldest unsent alerts beyond `[fleet] max_backlog`, recording the gap.
    fn cap_backlog(&self) {
        match self.db().cap_backlog(self.config.max_backlog, &Timestamp::now().rfc3339()) {
            Ok(Some(gap)) => {
                let dropped = (gap.to - gap.from + 1) as u64;
                warn!(
                    from = gap.from,
                    to = gap.to,
                    max_backlog = self.config.max_backlog,
                    "fleet: backlog full; the oldest unsent alerts are dropped and a gap record sent in their place"
                );
                self.shared.update(|s| {
                    s.dropped += dropped;
                    s.last_confirmed_seq = gap.to;
                    s.backlog = self.config.max_backlog;
                });
            }
            Ok(None) => {}
            Err(e) => warn!(error = %e, "fleet: checking the backlog"),
        }
    }

    /// Hands a ban decision or snapshot to the daemon, and acknowledges it once applied; a
    /// message that cannot be read is rejected (and logged), never applied.
    async fn take_ban_message(&self, delivery: lapin::message::Delivery) -> anyhow::Result<()> {
        let message_type = delivery.properties.kind().as_ref().map(|t| t.as_str().to_string()).unwrap_or_default();
        let command = match Inbound::parse(&message_type, &delivery.data) {
            Ok(Inbound::Ban(decision)) => Some(BanCommand::Decision(decision)),
            Ok(Inbound::Snapshot(snapshot)) => Some(BanCommand::Snapshot(snapshot)),
            Ok(_) => {
                warn!(message_type, "fleet: a message that is not a ban decision on this host's ban queue; dropped");
                None
            }
            Err(e) => {
                warn!(error = %e, "fleet: an unreadable ban decision; dropped");
                None
            }
        };
        let Some(command) = command else {
            delivery.acker.reject(BasicRejectOptions { requeue: false }).await.context("rejecting a message")?;
            return Ok(());
        };
        let (done_tx, done_rx) = oneshot::channel();
        self.bans.send((command, done_tx)).await.map_err(|_| anyhow::anyhow!("the ban path has stopped"))?;
        done_rx.await.map_err(|_| anyhow::anyhow!("the ban path has stopped"))?;
        self.shared.update(|s| s.ban_decisions += 1);
        delivery.acker.ack(BasicAckOptions::default()).await.map(drop).context("acknowledging a ban decision")
    }
}

/// A confirmation that the broker took the message: acked and not returned.
fn confirmed(confirmation: Confirmation) -> anyhow::Result<()> {
    match confirmation {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(returned)) => anyhow::bail!(
            "returned by the broker ({} {}): no queue is bound to {ALERTS_EXCHANGE}",
            returned.reply_code,
            returned.reply_text
        ),
        Confirmation::Nack(_) => anyhow::bail!("refused by the broker (nack)"),
        Confirmation::NotRequested => anyhow::bail!("publisher confirms are off on this channel"),
    }
}

/// The wait before reconnect attempt `failures` (from 1).
fn backoff(failures: u32) -> Duration {
    let base = BACKOFF_START.saturating_mul(1 << failures.saturating_sub(1).min(10)).min(BACKOFF_MAX);
    // Jitter from the clock's nanoseconds: enough to spread a fleet, no generator needed.
    let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().subsec_nanos();
    let factor = 0.5 + f64::from(nanos % 1000) / 1000.0;
    base.mul_f64(factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_with_jitter() {
        for failures in 1..40 {
            let wait = backoff(failures);
            let base = BACKOFF_START.saturating_mul(1 << (failures - 1).min(10)).min(BACKOFF_MAX);
            assert!(wait >= base / 2 && wait <= base.mul_f64(1.5), "{failures}: {wait:?}");
        }
        assert!(backoff(40) <= BACKOFF_MAX.mul_f64(1.5));
    }
}
