//! Fleet: every host's alerts collected centrally through RabbitMQ, and bans shared across the
//! fleet (docs/fleet.md).
//!
//! - [`agent`] runs in `ids run` when `[fleet]` is set: publishes every stored alert with
//!   publisher confirms from the `alerts` table (the table is the outbox: an alert leaves it only
//!   once the broker confirmed it), sends heartbeats, and applies the fleet's ban decisions
//!   through the one ban path.
//! - `ids collect` consumes the alerts queue into its own database ([`central`]), tracks hosts,
//!   runs the fleet rules and issues fleet bans; `ids fleet ...` reads and writes the same.
//! - [`web`] is the console `ids collect` serves with `[collect.web]`.
//! - [`message`] is the wire format, [`topology`] the exchanges and queues, [`connect`] how
//!   each of them reaches the broker.
pub(crate) mod agent;
pub(crate) mod bans;
pub mod central;
pub mod collector;
pub mod config;
pub mod connect;
pub mod message;
pub mod topology;
pub(crate) mod web;

pub use self::config::{BrokerConfig, CentralDatabase, CollectConfig, FleetConfig};
