//! Attack detection from logs and file and exec events (README "Detection").
//!
//! - [`rules`]: the rules file (shipped, embedded; extended or replaced by `rules = PATH`).
//! - [`parse`]: sshd and access-log parsers that take the address only from what the logging
//!   program wrote; evidence escaping.
//! - [`window`]: per (rule, address) sliding windows; one alert per burst.
//! - [`follow`]: log following driven by the sensor's write events, across rotation and restarts.
//! - [`webshell`]: signatures scanned in files written under `web_roots`.
//! - [`process`]: a web server (or a descendant) executing a program.
//! - [`worker`]: the detect thread that ties them together, writes alerts to the events log and
//!   the store, and sends [`BanRequest`]s to the daemon.
use std::net::IpAddr;
use std::time::Duration;

use serde::Serialize;

pub mod engine;
pub mod follow;
pub mod journal;
pub mod parse;
pub mod process;
pub mod rules;
pub mod webshell;
pub mod window;
pub mod worker;

pub use worker::{DetectEvents, DetectHandles, spawn};

/// Longest log line the detectors look at; the rest of a longer line is cut off and counted.
pub const MAX_LINE: usize = 8192;
/// Longest evidence string in an alert.
pub const MAX_EVIDENCE: usize = 512;

/// A ban a detector asks for. The daemon owns the receiving end of the channel these are sent on
/// and hands them to the one ban path.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BanRequest {
    pub addr: IpAddr,
    /// The rule whose threshold was crossed.
    pub rule: String,
    /// `"ssh-bruteforce"` or `"web-attack"`.
    pub source: &'static str,
    /// Already escalated for repeat offenders.
    #[serde(serialize_with = "as_secs")]
    pub duration: Duration,
    /// Escaped lines that made up the burst (at most [`window::MAX_EVIDENCE_LINES`]).
    pub evidence: Vec<String>,
}

impl BanRequest {
    /// The request in the ban path's terms (`crate::bans`): the address alone, the rule as the
    /// reason, the duration the detector escalated already.
    pub fn to_ban(&self) -> crate::bans::BanRequest {
        crate::bans::BanRequest::new(
            ban_net(self.addr),
            format!("rule {}", self.rule),
            self.source,
            crate::bans::BanDuration::For(self.duration),
        )
    }
}

/// The ban path's name for a single address (the key of its `offenders` count).
pub fn ban_net(addr: IpAddr) -> crate::bans::BanNet {
    crate::bans::BanNet::from_ipnet(ipnet::IpNet::from(addr))
}

fn as_secs<S: serde::Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_u64(duration.as_secs())
}

/// What the detector did about an alert.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Action {
    /// A ban request was sent to the ban path.
    BanRequested { duration_s: u64, offence: u32 },
    /// The address is trusted (`[xdp] trusted`): no ban.
    NotBannedTrusted,
    /// The ban path did not take the request (its queue was full or it has stopped).
    BanNotDelivered { reason: String },
    /// Alert only (webshells, process trees).
    AlertOnly,
}

/// An alert as written to the events log (one JSON line) and stored in `alerts.what`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Alert {
    pub time: String,
    /// Always `"detect"`.
    pub kind: &'static str,
    pub rule: String,
    pub severity: rules::Severity,
    /// `ssh-bruteforce`, `web-attack`, `webshell` or `webserver-exec`.
    pub detector: &'static str,
    pub description: String,
    /// The attacking address (log detectors).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<IpAddr>,
    /// The log (log detectors) or the scanned file (webshells).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Hits within the window when the alert was raised (log detectors).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_s: Option<u64>,
    /// Process details (`webserver-exec`): pid, the program, its ancestors.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process: Option<serde_json::Value>,
    /// Escaped: no control characters.
    pub evidence: Vec<String>,
    pub action: Action,
}

/// Ban duration of the `offence`th ban of an address: `base × 2^(offence-1)`, at most `max`.
pub fn escalated(base: Duration, max: Duration, offence: u32) -> Duration {
    let factor = 1u32.checked_shl(offence.saturating_sub(1)).unwrap_or(u32::MAX);
    base.checked_mul(factor).unwrap_or(max).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeat_offenders_get_doubling_bans_up_to_the_cap() {
        let (base, max) = (Duration::from_secs(600), Duration::from_secs(86_400));
        assert_eq!(escalated(base, max, 1), base);
        assert_eq!(escalated(base, max, 2), Duration::from_secs(1200));
        assert_eq!(escalated(base, max, 4), Duration::from_secs(4800));
        assert_eq!(escalated(base, max, 20), max);
        assert_eq!(escalated(base, max, u32::MAX), max);
    }

    #[test]
    fn alert_json_has_the_documented_fields() {
        let alert = Alert {
            time: "2026-01-01T00:00:00.000000Z".into(),
            kind: "detect",
            rule: "sshd-failed-password".into(),
            severity: rules::Severity::Medium,
            detector: "ssh-bruteforce",
            description: "SSH authentication failure".into(),
            source: Some("192.0.2.9".parse().unwrap()),
            path: Some("/var/log/auth.log".into()),
            count: Some(5),
            window_s: Some(300),
            process: None,
            evidence: vec!["a\\x1bb".into()],
            action: Action::BanRequested { duration_s: 600, offence: 1 },
        };
        let json = serde_json::to_value(&alert).unwrap();
        assert_eq!(json["rule"], "sshd-failed-password");
        assert_eq!(json["severity"], "medium");
        assert_eq!(json["source"], "192.0.2.9");
        assert_eq!(json["action"], serde_json::json!({"type": "ban_requested", "duration_s": 600, "offence": 1}));
        assert!(json.get("process").is_none());
    }
}
