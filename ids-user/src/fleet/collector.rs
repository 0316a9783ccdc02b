//! `ids collect`: consumes every agent's messages from the alerts queue into the central
//! database, tracks hosts, runs the fleet rule and publishes fleet ban decisions
//! (docs/fleet-central.md).
//!
//! A message is acknowledged to the broker only once what it carries is committed: deliveries
//! are taken in batches (up to [`BATCH_MAX`], or what came within [`BATCH_WAIT`]), stored in one
//! transaction on the storage thread, then acked together. What cannot be used (does not parse,
//! or claims another host than the broker-validated publisher) is rejected without requeue, so
//! the queue's dead-letter exchange keeps it for an operator. A storage failure nacks the batch
//! back onto the queue and the collector retries after a pause; a redelivered alert is stored
//! once (unique host, epoch, seq).
//!
//! The database is synchronous (rusqlite, postgres): it lives on its own thread, and the async
//! side hands it jobs and awaits their answers.
use std::collections::BTreeSet;
use std::future::poll_fn;
use std::pin::Pin;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    BasicRejectOptions, ConfirmSelectOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, Consumer};
use tokio::sync::watch;
use tracing::{info, warn};

use super::central::{CentralError, CentralStore, Received, rfc3339};
use super::message::{self, ALERTS_QUEUE, BANS_EXCHANGE, BanDecision, Inbound, types};
use super::topology;
use super::{BrokerConfig, CentralDatabase, CollectConfig};
use crate::error_text::one_line;

/// Deliveries the broker may have in flight to the collector: enough to fill a batch while the
/// previous one is being committed.
const PREFETCH: u16 = 2000;
/// A batch is stored when it holds this many deliveries...
const BATCH_MAX: usize = 1000;
/// ...or when this long passed since its first one.
const BATCH_WAIT: Duration = Duration::from_millis(20);
/// Pauses after a failure (broker unreachable, database refusing): doubling up to the longest.
const FIRST_PAUSE: Duration = Duration::from_millis(500);
const LONGEST_PAUSE: Duration = Duration::from_secs(10);

/// Runs the collector until SIGINT or SIGTERM.
pub fn run(config: CollectConfig) -> anyhow::Result<()> {
    let storage = Storage::start(config.database.clone())?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async {
        // Started first: a console that cannot bind its port stops the collector's start.
        let console = match &config.web {
            Some(web) => Some(super::web::start(web, &config.database).await?),
            None => None,
        };
        let collected = collect(&config, &storage).await;
        drop(console);
        collected
    })
}

/// Doubling pauses between attempts.
struct Backoff(Duration);

impl Backoff {
    fn new() -> Self {
        Self(FIRST_PAUSE)
    }

    fn reset(&mut self) {
        self.0 = FIRST_PAUSE;
    }

    fn next(&mut self) -> Duration {
        let pause = self.0;
        self.0 = (self.0 * 2).min(LONGEST_PAUSE);
        pause
    }
}

/// What happened since the last once-a-second log line.
#[derive(Debug, Default)]
struct Counters {
    alerts: usize,
    duplicates: usize,
    gaps: usize,
    heartbeats: usize,
    snapshots: usize,
    rejected: usize,
}

impl Counters {
    fn log_and_reset(&mut self) {
        let Counters { alerts, duplicates, gaps, heartbeats, snapshots, rejected } = std::mem::take(self);
        if alerts + duplicates + gaps + heartbeats + snapshots + rejected > 0 {
            info!(alerts, duplicates, gaps, heartbeats, snapshots, rejected, "stored in the last second");
        }
    }
}

/// The stop signal: set by SIGINT or SIGTERM.
fn stop_on_signals() -> anyhow::Result<watch::Receiver<bool>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut terminate = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let (stop, stopped) = watch::channel(false);
    tokio::spawn(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        info!("stopping: finishing the batch in hand");
        let _ = stop.send(true);
    });
    Ok(stopped)
}

async fn collect(config: &CollectConfig, storage: &Storage) -> anyhow::Result<()> {
    let mut stop = stop_on_signals()?;
    let mut backoff = Backoff::new();
    let mut counters = Counters::default();
    info!(database = storage.name, broker = config.broker.url, "ids collect starting");
    loop {
        if *stop.borrow() {
            break;
        }
        match session(config, storage, &mut stop, &mut counters, &mut backoff).await {
            Ok(()) => break,
            Err(error) => {
                let pause = backoff.next();
                warn!("broker session ended: {}; reconnecting in {} ms", one_line(error.as_ref()), pause.as_millis());
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = stop.changed() => {}
                }
            }
        }
    }
    counters.log_and_reset();
    info!("ids collect stopped");
    Ok(())
}

/// One connection to the broker: consumes until stopped (`Ok`) or until the broker goes away.
async fn session(
    config: &CollectConfig,
    storage: &Storage,
    stop: &mut watch::Receiver<bool>,
    counters: &mut Counters,
    backoff: &mut Backoff,
) -> anyhow::Result<()> {
    let connection = config.broker.connect("ids collect").await?;
    let channel = connection.create_channel().await.context("opening the consuming channel")?;
    topology::declare_alerts(&channel).await.context("declaring the alerts exchange and queue")?;
    topology::declare_bans(&channel).await.context("declaring the bans exchange")?;
    channel.basic_qos(PREFETCH, BasicQosOptions::default()).await.context("setting the prefetch")?;
    // Publishing (snapshots, decisions) on a channel of its own, with confirms.
    let publisher = connection.create_channel().await.context("opening the publishing channel")?;
    publisher.confirm_select(ConfirmSelectOptions::default()).await.context("enabling publisher confirms")?;
    let tag = format!("ids-collect-{}", std::process::id());
    let mut consumer = channel
        .basic_consume(ALERTS_QUEUE.into(), tag.as_str().into(), BasicConsumeOptions::default(), FieldTable::default())
        .await
        .with_context(|| format!("consuming {ALERTS_QUEUE}"))?;
    info!(queue = ALERTS_QUEUE, "connected, consuming");
    backoff.reset();
    let mut storage_pause = Backoff::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.changed() => {
                close(&connection, &channel, &tag).await;
                return Ok(());
            }
            _ = tick.tick() => {
                housekeeping(config, storage, &publisher).await?;
                counters.log_and_reset();
            }
            delivery = next_delivery(&mut consumer) => {
                let mut batch = vec![delivery?];
                let deadline = tokio::time::Instant::now() + BATCH_WAIT;
                while batch.len() < BATCH_MAX {
                    match tokio::time::timeout_at(deadline, next_delivery(&mut consumer)).await {
                        Ok(delivery) => batch.push(delivery?),
                        Err(_) => break,
                    }
                }
                match handle_batch(config, storage, &publisher, batch, counters).await? {
                    Stored::Yes => storage_pause.reset(),
                    Stored::No => {
                        let pause = storage_pause.next();
                        tokio::select! {
                            _ = tokio::time::sleep(pause) => {}
                            _ = stop.changed() => {
                                close(&connection, &channel, &tag).await;
                                return Ok(());
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The next delivery; an error when the consumer ended (channel or connection gone).
async fn next_delivery(consumer: &mut Consumer) -> anyhow::Result<Delivery> {
    let next = poll_fn(|cx| futures_core::Stream::poll_next(Pin::new(&mut *consumer), cx)).await;
    match next {
        Some(Ok(delivery)) => Ok(delivery),
        Some(Err(error)) => Err(error).context("receiving from the alerts queue"),
        None => anyhow::bail!("the broker ended the consumer of {ALERTS_QUEUE}"),
    }
}

/// Stops consuming and closes the connection: deliveries received and not acked go back to
/// the queue (the broker requeues what a closed channel held).
async fn close(connection: &Connection, channel: &Channel, tag: &str) {
    if let Err(error) = channel.basic_cancel(tag.into(), BasicCancelOptions::default()).await {
        warn!("cancelling the consumer: {error}");
    }
    if let Err(error) = connection.close(200, "ids collect stopped".into()).await {
        warn!("closing the broker connection: {error}");
    }
}

/// Whether a batch was committed (and acked).
enum Stored {
    Yes,
    /// The database refused: the batch went back onto the queue.
    No,
}

/// Why a delivery cannot be used, for the log (never the body).
fn refusal(delivery: &Delivery, verify_host: bool) -> Result<Inbound, String> {
    let properties = &delivery.properties;
    let message_type = properties.kind().as_ref().map(|t| t.as_str()).unwrap_or("");
    let inbound = Inbound::parse(message_type, &delivery.data).map_err(|e| e.to_string())?;
    let Some(host) = inbound.host() else {
        return Err(format!("a {message_type} message does not belong on {ALERTS_QUEUE}"));
    };
    if verify_host {
        let publisher = properties.user_id().as_ref().map(|u| u.as_str());
        if publisher != Some(host) {
            return Err(match publisher {
                Some(user) => format!("host {host:?} but published by user {user:?}"),
                None => format!("host {host:?} but no user_id property (verify_host is on)"),
            });
        }
    }
    Ok(inbound)
}

async fn handle_batch(
    config: &CollectConfig,
    storage: &Storage,
    publisher: &Channel,
    batch: Vec<Delivery>,
    counters: &mut Counters,
) -> anyhow::Result<Stored> {
    let received = rfc3339(SystemTime::now());
    let mut to_store = Vec::with_capacity(batch.len());
    let mut snapshot_hosts = BTreeSet::new();
    // The deliveries to settle after the commit (every other one is rejected already).
    let mut kept: Vec<&Delivery> = Vec::with_capacity(batch.len());
    for delivery in &batch {
        match refusal(delivery, config.verify_host) {
            Ok(Inbound::SnapshotRequest(request)) => {
                snapshot_hosts.insert(request.host);
                kept.push(delivery);
            }
            Ok(inbound) => {
                to_store.push(Received { inbound, received: received.clone() });
                kept.push(delivery);
            }
            Err(reason) => {
                let message_id = delivery.properties.message_id().as_ref().map(|m| m.as_str()).unwrap_or("(none)");
                warn!(message_id, routing_key = delivery.routing_key.as_str(), "dead-lettering a message: {reason}");
                delivery
                    .acker
                    .reject(BasicRejectOptions { requeue: false })
                    .await
                    .context("rejecting a message to the dead-letter queue")?;
                counters.rejected += 1;
            }
        }
    }
    let Some(last) = kept.last() else { return Ok(Stored::Yes) };
    let (hosts, window, ban_for) = (config.rule_hosts, config.rule_window, config.rule_ban_for);
    let stored = storage
        .call(move |store| {
            let outcome = store.store_batch(&to_store)?;
            // The batch is committed whatever the rule does: its failure is only logged.
            let decisions = store.apply_fleet_rule(&outcome.attackers, hosts, window, ban_for, SystemTime::now());
            Ok((outcome, decisions))
        })
        .await;
    let (outcome, decisions) = match stored {
        Ok(stored) => stored,
        Err(error) => {
            warn!(
                "storing a batch of {} messages: {}; returning them to the queue",
                kept.len(),
                one_line(error.as_ref())
            );
            // Every earlier delivery of the channel is settled (rejected above, or acked with
            // an earlier batch): `multiple` nacks exactly this batch's kept deliveries.
            last.acker
                .nack(BasicNackOptions { multiple: true, requeue: true })
                .await
                .context("returning a batch to the queue")?;
            return Ok(Stored::No);
        }
    };
    counters.alerts += outcome.alerts_stored;
    counters.duplicates += outcome.duplicates;
    counters.gaps += outcome.gaps_stored;
    counters.heartbeats += outcome.heartbeats;
    for host in &outcome.hosts_back {
        info!(host, "host is back (heartbeat after silence)");
    }
    let mut publish_now = false;
    match decisions {
        Ok(decisions) => {
            for decision in &decisions {
                info!(net = decision.net, rev = decision.rev, reason = decision.reason, "fleet rule: ban decided");
            }
            publish_now = !decisions.is_empty();
        }
        Err(error) => warn!("fleet rule: {error}"),
    }
    for host in snapshot_hosts {
        answer_snapshot(storage, publisher, &host).await?;
        counters.snapshots += 1;
    }
    last.acker.ack(BasicAckOptions { multiple: true }).await.context("acknowledging a stored batch")?;
    if publish_now {
        publish_outbox(storage, publisher).await?;
    }
    Ok(Stored::Yes)
}

/// Publishes `body` persistent to the bans exchange and waits for the broker's confirm.
async fn publish(
    publisher: &Channel,
    routing_key: &str,
    message_type: &str,
    message_id: String,
    body: &[u8],
) -> anyhow::Result<()> {
    let properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_type(message_type.into())
        .with_message_id(message_id.as_str().into());
    let confirm = publisher
        .basic_publish(BANS_EXCHANGE.into(), routing_key.into(), BasicPublishOptions::default(), body, properties)
        .await
        .with_context(|| format!("publishing {message_id}"))?
        .await
        .with_context(|| format!("waiting for the broker to confirm {message_id}"))?;
    anyhow::ensure!(confirm.is_ack(), "the broker refused {message_id} (nack)");
    Ok(())
}

/// Answers an agent's snapshot request with the active fleet bans, to it alone.
async fn answer_snapshot(storage: &Storage, publisher: &Channel, host: &str) -> anyhow::Result<()> {
    let snapshot = storage.call(|store| store.snapshot(&rfc3339(SystemTime::now()))).await?;
    let body = serde_json::to_vec(&snapshot)?;
    let message_id = format!("snapshot:{host}:{}", snapshot.rev);
    publish(publisher, &message::bans_to_host(host), types::SNAPSHOT, message_id, &body).await
}

/// Publishes every decision not yet confirmed, oldest first, marking each once confirmed.
/// A broker failure ends the session; a database failure is logged and retried next second.
pub(crate) async fn publish_outbox(storage: &Storage, publisher: &Channel) -> anyhow::Result<()> {
    let pending = match storage.call(|store| store.unpublished_decisions()).await {
        Ok(pending) => pending,
        Err(error) => {
            warn!("reading unpublished fleet bans: {}", one_line(error.as_ref()));
            return Ok(());
        }
    };
    for decision in pending {
        publish_decision(publisher, &decision).await?;
        let rev = decision.rev;
        if let Err(error) = storage.call(move |store| store.mark_published(rev)).await {
            // Published again next time: agents apply a rev once.
            warn!(rev, "marking a fleet ban published: {}", one_line(error.as_ref()));
            return Ok(());
        }
        info!(rev, net = decision.net, action = ?decision.action, "fleet ban decision published");
    }
    Ok(())
}

/// Publishes one decision to every agent, with confirm.
pub(crate) async fn publish_decision(publisher: &Channel, decision: &BanDecision) -> anyhow::Result<()> {
    let body = serde_json::to_vec(decision)?;
    publish(publisher, message::BANS_TO_ALL, types::BAN, format!("ban:{}", decision.rev), &body).await
}

/// Every second: silent hosts, the outbox.
async fn housekeeping(config: &CollectConfig, storage: &Storage, publisher: &Channel) -> anyhow::Result<()> {
    let silent_after = config.silent_after;
    match storage.call(move |store| store.mark_silent(SystemTime::now(), silent_after)).await {
        Ok(silent) => {
            for host in silent {
                warn!(host = host.host, last_heartbeat = host.last_heartbeat, "host is silent");
            }
        }
        Err(error) => warn!("checking for silent hosts: {}", one_line(error.as_ref())),
    }
    publish_outbox(storage, publisher).await
}

/// Opens a broker connection and a confirming channel for one-off publishing (`ids fleet ban`).
pub(crate) async fn publishing_channel(broker: &BrokerConfig, name: &str) -> anyhow::Result<(Connection, Channel)> {
    let connection = broker.connect(name).await?;
    let channel = connection.create_channel().await.context("opening a channel")?;
    topology::declare_bans(&channel).await.context("declaring the bans exchange")?;
    channel.confirm_select(ConfirmSelectOptions::default()).await.context("enabling publisher confirms")?;
    Ok((connection, channel))
}

type Job = Box<dyn FnOnce(Option<&mut CentralStore>) + Send>;

/// The central database on a thread of its own; `call` hands it work and awaits the answer.
/// When the database connection is lost (PostgreSQL restarted), the thread opens it again
/// before the next job.
pub(crate) struct Storage {
    jobs: std::sync::mpsc::Sender<Job>,
    name: String,
}

impl Storage {
    /// Opens the database (its errors are the caller's) and starts the thread.
    pub(crate) fn start(database: CentralDatabase) -> anyhow::Result<Self> {
        let store = CentralStore::open(&database)?;
        let name = store.name().to_string();
        let (jobs, inbox) = std::sync::mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("collect-storage".into())
            .spawn(move || {
                let mut store = Some(store);
                while let Ok(job) = inbox.recv() {
                    if store.as_ref().is_none_or(CentralStore::connection_lost) {
                        store = match CentralStore::open(&database) {
                            Ok(reopened) => {
                                info!(database = reopened.name(), "central database connection reopened");
                                Some(reopened)
                            }
                            Err(error) => {
                                warn!("{error}");
                                None
                            }
                        };
                    }
                    job(store.as_mut());
                }
            })
            .context("starting the storage thread")?;
        Ok(Self { jobs, name })
    }

    /// Runs `work` on the storage thread.
    pub(crate) async fn call<R: Send + 'static>(
        &self,
        work: impl FnOnce(&mut CentralStore) -> Result<R, CentralError> + Send + 'static,
    ) -> anyhow::Result<R> {
        let (answer, answered) = tokio::sync::oneshot::channel();
        let name = self.name.clone();
        let job: Job = Box::new(move |store| {
            let result = match store {
                Some(store) => work(store).map_err(anyhow::Error::from),
                None => Err(anyhow::anyhow!("central database {name} is not reachable")),
            };
            let _ = answer.send(result);
        });
        self.jobs.send(job).map_err(|_| anyhow::anyhow!("the storage thread has stopped"))?;
        answered.await.map_err(|_| anyhow::anyhow!("the storage thread stopped while working"))?
    }
}
