//! The exchanges and queues of the fleet, declared by whoever connects first (agent, collector
//! or `ids fleet`): declarations are idempotent as long as every declarer asks for the same
//! arguments, which is why they are all made here.
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, ExchangeKind};

use super::message::{
    ALERTS_EXCHANGE, ALERTS_QUEUE, BANS_EXCHANGE, BANS_TO_ALL, DEAD_EXCHANGE, DEAD_QUEUE, bans_queue, bans_to_host,
};

fn durable_exchange() -> ExchangeDeclareOptions {
    ExchangeDeclareOptions { durable: true, ..ExchangeDeclareOptions::default() }
}

/// A durable quorum queue (replicated on a cluster; survives a node's loss), with `extra`
/// arguments.
fn quorum(extra: &[(&str, &str)]) -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert(ShortString::from("x-queue-type"), AMQPValue::LongString(LongString::from("quorum")));
    for (key, value) in extra {
        arguments.insert(ShortString::from(*key), AMQPValue::LongString(LongString::from(*value)));
    }
    arguments
}

fn durable_queue() -> QueueDeclareOptions {
    QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() }
}

/// The alerts exchange, its quorum queue (bound with `#`: everything agents send), and the
/// dead-letter exchange and queue the collectors reject into.
pub async fn declare_alerts(channel: &Channel) -> lapin::Result<()> {
    channel
        .exchange_declare(DEAD_EXCHANGE.into(), ExchangeKind::Fanout, durable_exchange(), FieldTable::default())
        .await?;
    channel.queue_declare(DEAD_QUEUE.into(), durable_queue(), quorum(&[])).await?;
    channel
        .queue_bind(
            DEAD_QUEUE.into(),
            DEAD_EXCHANGE.into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    channel
        .exchange_declare(ALERTS_EXCHANGE.into(), ExchangeKind::Topic, durable_exchange(), FieldTable::default())
        .await?;
    channel
        .queue_declare(ALERTS_QUEUE.into(), durable_queue(), quorum(&[("x-dead-letter-exchange", DEAD_EXCHANGE)]))
        .await?;
    channel
        .queue_bind(
            ALERTS_QUEUE.into(),
            ALERTS_EXCHANGE.into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
}

/// The bans exchange.
pub async fn declare_bans(channel: &Channel) -> lapin::Result<()> {
    channel.exchange_declare(BANS_EXCHANGE.into(), ExchangeKind::Topic, durable_exchange(), FieldTable::default()).await
}

/// The bans exchange and `host`'s own durable queue of ban decisions, bound for what goes to
/// every agent and what goes to this one only.
pub async fn declare_host_bans(channel: &Channel, host: &str) -> lapin::Result<String> {
    declare_bans(channel).await?;
    let queue = bans_queue(host);
    channel.queue_declare(queue.as_str().into(), durable_queue(), quorum(&[])).await?;
    for key in [BANS_TO_ALL.to_string(), bans_to_host(host)] {
        channel
            .queue_bind(
                queue.as_str().into(),
                BANS_EXCHANGE.into(),
                key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    Ok(queue)
}
