//! What agents and collectors say to each other through the broker (docs/fleet.md).
//!
//! Every message body is one JSON object with `"v": 1`; the AMQP `type` property names which of
//! these it is (`alert`, `gap`, `heartbeat`, `snapshot_request` on the alerts exchange; `ban`,
//! `snapshot` on the bans exchange), so a consumer knows what to parse before it parses.
use serde::{Deserialize, Serialize};

/// The version of every message body; a consumer refuses others (to the dead-letter queue).
pub const VERSION: u32 = 1;

/// The topic exchange agents publish alerts, gaps, heartbeats and snapshot requests to.
pub const ALERTS_EXCHANGE: &str = "ids.alerts";
/// The quorum queue the collectors consume from (bound to [`ALERTS_EXCHANGE`] with `#`).
pub const ALERTS_QUEUE: &str = "ids.alerts";
/// Where the collectors send what they cannot store (malformed, forged): a fanout exchange and
/// its queue, kept for an operator to read.
pub const DEAD_EXCHANGE: &str = "ids.dead";
pub const DEAD_QUEUE: &str = "ids.alerts.dead";
/// The topic exchange fleet ban decisions go out on: routing key [`BANS_TO_ALL`] for every
/// agent, [`bans_to_host`] for one (a snapshot it asked for).
pub const BANS_EXCHANGE: &str = "ids.bans";
pub const BANS_TO_ALL: &str = "all";

/// The routing key of what is meant for one host only.
pub fn bans_to_host(host: &str) -> String {
    format!("host.{host}")
}

/// The durable queue of one agent's ban decisions (never shared between hosts).
pub fn bans_queue(host: &str) -> String {
    format!("ids.bans.{host}")
}

/// The routing key of an agent's message on [`ALERTS_EXCHANGE`]: `TYPE.HOST` (`alert.web1`).
pub fn alerts_routing_key(message_type: &str, host: &str) -> String {
    format!("{message_type}.{host}")
}

/// The AMQP `type` of each message.
pub mod types {
    pub const ALERT: &str = "alert";
    pub const GAP: &str = "gap";
    pub const HEARTBEAT: &str = "heartbeat";
    pub const SNAPSHOT_REQUEST: &str = "snapshot_request";
    pub const BAN: &str = "ban";
    pub const SNAPSHOT: &str = "snapshot";
}

/// One alert of one host. `seq` is the id of the alert in the host's `alerts` table: a natural
/// sequence, unique with `host` and `epoch` (a new database starts a new epoch). AMQP
/// `message_id` = `HOST:EPOCH:SEQ`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertMessage {
    pub v: u32,
    pub host: String,
    pub hostname: String,
    pub epoch: i64,
    pub seq: i64,
    /// RFC 3339, when the host raised it.
    pub time: String,
    /// The alert's kind (`integrity`, `detect`, `ban`, ...).
    pub kind: String,
    /// The alert as the host's events log has it (`time` and `kind` included).
    pub alert: serde_json::Value,
}

impl AlertMessage {
    pub fn message_id(&self) -> String {
        format!("{}:{}:{}", self.host, self.epoch, self.seq)
    }
}

/// Alerts `from..=to` of `host`'s `epoch` were dropped unsent: the backlog exceeded
/// `[fleet] max_backlog` while the broker could not be reached.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GapMessage {
    pub v: u32,
    pub host: String,
    pub hostname: String,
    pub epoch: i64,
    pub from: i64,
    pub to: i64,
    /// RFC 3339, when the host dropped them.
    pub time: String,
}

impl GapMessage {
    pub fn message_id(&self) -> String {
        format!("{}:{}:gap:{}-{}", self.host, self.epoch, self.from, self.to)
    }
}

/// Sent every `[fleet] heartbeat`: the collector's evidence that the host is alive, and what
/// `ids fleet hosts` shows of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub v: u32,
    pub host: String,
    pub hostname: String,
    pub epoch: i64,
    /// RFC 3339.
    pub time: String,
    /// The agent's `ids` version.
    pub version: String,
    /// Seconds between heartbeats: the collector calls the host silent after
    /// `[collect] silent_after`, three of these by default.
    pub interval_s: u64,
    pub uptime_s: u64,
    /// The hook in use per signal (`exec` → `lsm`, ...).
    pub hooks: std::collections::BTreeMap<String, String>,
    /// The integrity aggregate (hex); `None` before the first scan.
    pub aggregate: Option<String>,
    /// The aggregate of the host's accepted baseline (`ids baseline`); `None` without one (and
    /// from agents older than this field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_aggregate: Option<String>,
    /// Events lost per signal (kernel ring full or queue full).
    pub lost_events: std::collections::BTreeMap<String, u64>,
    /// Alerts stored on the host and not yet confirmed by the broker.
    pub backlog: u64,
    /// The newest alert's sequence number on the host.
    pub last_seq: i64,
}

/// An agent asks for the active fleet bans: the collector answers with a [`BanSnapshot`] to
/// the agent's own routing key. Sent at every connect, after the agent's ban queue is bound,
/// so that nothing issued meanwhile is missed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotRequest {
    pub v: u32,
    pub host: String,
}

/// What a fleet ban decision does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BanAction {
    Ban,
    Unban,
}

/// One fleet ban decision. `rev` orders the decisions (the collector's database numbers them);
/// an agent applies one only if it is newer than the last it applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BanDecision {
    pub v: u32,
    pub rev: i64,
    pub action: BanAction,
    /// An address or prefix (`203.0.113.7`, `198.51.100.0/24`).
    pub net: String,
    pub reason: String,
    /// Who decided: `manual` (`ids fleet ban`) or `fleet-rule`.
    pub origin: String,
    /// RFC 3339 UTC; `None`: permanent. The same instant on every host.
    pub expires: Option<String>,
    /// RFC 3339, when it was decided.
    pub time: String,
}

/// The active fleet bans as of decision `rev`: an agent bans each and lifts its fleet bans that
/// are not in it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BanSnapshot {
    pub v: u32,
    pub rev: i64,
    pub bans: Vec<BanDecision>,
}

/// A message from the broker, parsed by its AMQP `type`.
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound {
    Alert(AlertMessage),
    Gap(GapMessage),
    Heartbeat(Box<Heartbeat>),
    SnapshotRequest(SnapshotRequest),
    Ban(BanDecision),
    Snapshot(BanSnapshot),
}

/// Why a message cannot be used.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum MessageError {
    #[error("message type {0:?} is not one of alert, gap, heartbeat, snapshot_request, ban, snapshot")]
    UnknownType(String),
    #[error("{kind} message: {message}")]
    Malformed { kind: &'static str, message: String },
    #[error("{kind} message: version {found}, this program reads {VERSION}")]
    Version { kind: &'static str, found: u32 },
}

impl Inbound {
    /// Parses `body` as the message its AMQP `type` names.
    pub fn parse(message_type: &str, body: &[u8]) -> Result<Self, MessageError> {
        fn json<T: serde::de::DeserializeOwned>(kind: &'static str, body: &[u8]) -> Result<T, MessageError> {
            serde_json::from_slice(body).map_err(|e| MessageError::Malformed { kind, message: e.to_string() })
        }
        let inbound = match message_type {
            types::ALERT => Inbound::Alert(json(types::ALERT, body)?),
            types::GAP => Inbound::Gap(json(types::GAP, body)?),
            types::HEARTBEAT => Inbound::Heartbeat(Box::new(json(types::HEARTBEAT, body)?)),
            types::SNAPSHOT_REQUEST => Inbound::SnapshotRequest(json(types::SNAPSHOT_REQUEST, body)?),
            types::BAN => Inbound::Ban(json(types::BAN, body)?),
            types::SNAPSHOT => Inbound::Snapshot(json(types::SNAPSHOT, body)?),
            other => return Err(MessageError::UnknownType(other.chars().take(64).collect())),
        };
        inbound.check()?;
        Ok(inbound)
    }

    /// The host a message speaks for (none for the collector's own ban messages).
    pub fn host(&self) -> Option<&str> {
        match self {
            Inbound::Alert(m) => Some(&m.host),
            Inbound::Gap(m) => Some(&m.host),
            Inbound::Heartbeat(m) => Some(&m.host),
            Inbound::SnapshotRequest(m) => Some(&m.host),
            Inbound::Ban(_) | Inbound::Snapshot(_) => None,
        }
    }

    /// Refuses what parses but cannot be right: another version, an empty or oversized host
    /// id, sequence numbers below 1, a gap that ends before it starts.
    fn check(&self) -> Result<(), MessageError> {
        let (kind, v) = match self {
            Inbound::Alert(m) => (types::ALERT, m.v),
            Inbound::Gap(m) => (types::GAP, m.v),
            Inbound::Heartbeat(m) => (types::HEARTBEAT, m.v),
            Inbound::SnapshotRequest(m) => (types::SNAPSHOT_REQUEST, m.v),
            Inbound::Ban(m) => (types::BAN, m.v),
            Inbound::Snapshot(m) => (types::SNAPSHOT, m.v),
        };
        if v != VERSION {
            return Err(MessageError::Version { kind, found: v });
        }
        let malformed = |message: String| MessageError::Malformed { kind, message };
        if let Some(host) = self.host() {
            check_host_id(host).map_err(malformed)?;
        }
        match self {
            Inbound::Alert(m) if m.seq < 1 => Err(malformed(format!("seq {} is below 1", m.seq))),
            Inbound::Alert(m) if !m.alert.is_object() => Err(malformed("alert is not an object".into())),
            Inbound::Gap(m) if m.from < 1 || m.to < m.from => {
                Err(malformed(format!("gap {}..={} is not a range of sequence numbers", m.from, m.to)))
            }
            _ => Ok(()),
        }
    }
}

/// A host id: 1 to 128 of letters, digits, `-`, `_`, `.` (a machine id, a hostname, a
/// certificate's common name), so that it is safe in a routing key and a queue name.
pub fn check_host_id(host: &str) -> Result<(), String> {
    let valid =
        !host.is_empty() && host.len() <= 128 && host.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "host id {:?} must be 1 to 128 letters, digits, '-', '_' or '.'",
            host.chars().take(140).collect::<String>()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert_body(seq: i64) -> Vec<u8> {
        serde_json::to_vec(&AlertMessage {
            v: 1,
            host: "web1".into(),
            hostname: "web1.example".into(),
            epoch: 7,
            seq,
            time: "2026-12-05T00:00:00.000000Z".into(),
            kind: "detect".into(),
            alert: serde_json::json!({"kind": "detect", "rule": "r"}),
        })
        .unwrap()
    }

    #[test]
    fn an_alert_round_trips_and_names_its_message_id() {
        let Inbound::Alert(alert) = Inbound::parse("alert", &alert_body(3)).unwrap() else { panic!() };
        assert_eq!(alert.message_id(), "web1:7:3");
        assert_eq!(alert.alert["rule"], "r");
    }

    #[test]
    fn what_cannot_be_right_is_refused_with_the_reason() {
        assert!(matches!(Inbound::parse("alert", &alert_body(0)), Err(MessageError::Malformed { .. })));
        assert!(matches!(Inbound::parse("alert", b"{not json"), Err(MessageError::Malformed { kind: "alert", .. })));
        assert!(matches!(Inbound::parse("rumour", b"{}"), Err(MessageError::UnknownType(t)) if t == "rumour"));
        let other_version = String::from_utf8(alert_body(1)).unwrap().replace("\"v\":1", "\"v\":2");
        assert_eq!(
            Inbound::parse("alert", other_version.as_bytes()),
            Err(MessageError::Version { kind: "alert", found: 2 })
        );
        let bad_host = String::from_utf8(alert_body(1)).unwrap().replace("web1\"", "web 1\"");
        assert!(Inbound::parse("alert", bad_host.as_bytes()).unwrap_err().to_string().contains("host id"));
        let gap = br#"{"v":1,"host":"a","hostname":"a","epoch":1,"from":5,"to":4,"time":"t"}"#;
        assert!(Inbound::parse("gap", gap).is_err());
    }

    #[test]
    fn host_ids_are_safe_in_routing_keys_and_queue_names() {
        assert!(check_host_id("3d1219c7c4c5404aaa1f6d2a48adfda4").is_ok());
        assert!(check_host_id("web-1.example_org").is_ok());
        for bad in ["", "a b", "a#", "a*", "é", &"a".repeat(129)] {
            assert!(check_host_id(bad).is_err(), "{bad:?}");
        }
    }
}
