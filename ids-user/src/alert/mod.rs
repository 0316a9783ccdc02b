//! Alerts: the one typed [`Alert`] every part of the daemon raises, and the one [`AlertSink`]
//! through which each is stored (`alerts` table), written to the events log and handed to the
//! sink's subscribers (fleet publisher, outputs, metrics).
//!
//! An alert is `{"time", "kind", ...}` with the fields of its kind (docs/events.md):
//! `integrity` and `sensor_miss` (an item changed), `detect` (a detector fired), `remote_check`
//! (a TinyIDS server disagreed or could not be asked), `ban` (a detector's ban was applied).
mod sink;
pub(crate) mod summary;

use std::net::IpAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

#[cfg(test)]
pub(crate) use self::sink::MemoryLog;
pub(crate) use self::sink::{AlertSink, AlertStoreStatus, EventsLog};
use crate::process::ProcessView;
use crate::store::{AlertRow, Escalation};
use crate::time::Timestamp;

/// How much an alert matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Severity {
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub(crate) const NAMES: [&'static str; 4] = ["low", "medium", "high", "critical"];
    pub(crate) const ALL: [Severity; 4] = [Severity::Low, Severity::Medium, Severity::High, Severity::Critical];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }

    pub(crate) fn parse(name: &str) -> Option<Severity> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// An alert: when, and what of which kind.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Alert {
    pub(crate) time: Timestamp,
    #[serde(flatten)]
    pub(crate) body: AlertBody,
}

/// What an alert says; serialised with its kind as `"kind"`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum AlertBody {
    /// An item changed and the sensor reported it (or a collector without a hook re-ran).
    Integrity(IntegrityAlert),
    /// The periodic verification (or the start) found a change no kernel event explained.
    SensorMiss(IntegrityAlert),
    Detect(DetectAlert),
    RemoteCheck(RemoteCheckAlert),
    Ban(BanAlert),
}

/// The kinds of alert, for counters and filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum AlertKind {
    Integrity,
    SensorMiss,
    Detect,
    RemoteCheck,
    Ban,
}

impl AlertKind {
    pub(crate) const ALL: [AlertKind; 5] =
        [AlertKind::Integrity, AlertKind::SensorMiss, AlertKind::Detect, AlertKind::RemoteCheck, AlertKind::Ban];

    pub(crate) fn name(self) -> &'static str {
        match self {
            AlertKind::Integrity => "integrity",
            AlertKind::SensorMiss => "sensor_miss",
            AlertKind::Detect => "detect",
            AlertKind::RemoteCheck => "remote_check",
            AlertKind::Ban => "ban",
        }
    }

    pub(crate) fn from_name(name: &str) -> Option<AlertKind> {
        Self::ALL.into_iter().find(|kind| kind.name() == name)
    }

    /// The severity of this kind's alerts, but a detector's, which is its rule's (docs/outputs.md).
    /// A change no kernel event explained, or a TinyIDS server that disagrees, may mean the sensor
    /// was evaded: high. An integrity change is often routine (a package update): medium. A ban
    /// follows a detector's alert, which carries that finding's severity: low.
    pub(crate) fn severity(self) -> Severity {
        match self {
            AlertKind::SensorMiss | AlertKind::RemoteCheck => Severity::High,
            AlertKind::Integrity | AlertKind::Detect => Severity::Medium,
            AlertKind::Ban => Severity::Low,
        }
    }
}

/// One item that was added, removed or changed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct IntegrityAlert {
    pub(crate) collector: String,
    /// The item's id (`file:/etc/passwd`).
    pub(crate) id: String,
    /// `added`, `removed` or `changed`.
    pub(crate) change: &'static str,
    /// Which attributes differ (`content`, `mode`, ...); empty unless changed.
    pub(crate) attributes: Vec<String>,
    pub(crate) old: Option<ItemState>,
    pub(crate) new: Option<ItemState>,
    /// The processes whose kernel events made the item dirty since it was last hashed, the
    /// last first (at most `MAX_CHANGED_BY`); empty when no event did (a `sensor_miss`, a
    /// collector without a hook).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) changed_by: Vec<ChangedBy>,
}

/// Writers an integrity alert names at most.
pub(crate) const MAX_CHANGED_BY: usize = 4;

/// One process that changed an item, and how.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct ChangedBy {
    /// `write`, `create`, `rename`, `unlink` or `attrib`.
    pub(crate) operation: &'static str,
    /// When the kernel saw it (its last such operation).
    pub(crate) time: Timestamp,
    pub(crate) process: Arc<ProcessView>,
}

/// An item as hashed: its digest (hex) and what the collector described of it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct ItemState {
    pub(crate) digest: String,
    pub(crate) detail: serde_json::Value,
}

/// Which detector raised a `detect` alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Detector {
    SshBruteforce,
    WebAttack,
    Webshell,
    WebserverExec,
    /// A fleet ban decision this host could not apply (trusted here, or refused).
    Fleet,
}

impl Detector {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Detector::SshBruteforce => "ssh-bruteforce",
            Detector::WebAttack => "web-attack",
            Detector::Webshell => "webshell",
            Detector::WebserverExec => "webserver-exec",
            Detector::Fleet => "fleet",
        }
    }
}

/// What was done about a `detect` alert.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum DetectAction {
    /// The ban path banned the address: for `duration_s` seconds (0: permanently), its
    /// `offence`th ban; `escalation` says why that long when the duration escalated.
    BanRequested {
        duration_s: u64,
        offence: u32,
        #[serde(skip_serializing_if = "Option::is_none")]
        escalation: Option<Escalation>,
    },
    /// The address is trusted (`[xdp] trusted`, or this host's with `trust_local`): no ban.
    NotBannedTrusted,
    /// The ban path did not take the request (its queue was full, it has stopped, or it failed).
    BanNotDelivered { reason: String },
    /// Alert only (webshells, process trees).
    AlertOnly,
}

/// A detector's finding.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct DetectAlert {
    pub(crate) rule: String,
    pub(crate) severity: Severity,
    pub(crate) detector: Detector,
    pub(crate) description: String,
    /// The attacking address (log detectors).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) source: Option<IpAddr>,
    /// The log (log detectors) or the scanned file (webshells).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) path: Option<String>,
    /// Hits within the window when the alert was raised (log detectors).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) count: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) window_s: Option<u64>,
    /// Process details (`webserver-exec`: pid, program, ancestors; `webshell`: the file scanned).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) process: Option<serde_json::Value>,
    /// Escaped: no control characters.
    pub(crate) evidence: Vec<String>,
    pub(crate) action: DetectAction,
}

/// A TinyIDS server's answer to the daemon's CHECK that was not `OK` (or no answer).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct RemoteCheckAlert {
    pub(crate) server: String,
    /// The client's view of the exchange (`address`, `code`, `reply`, `result`, `error`, ...).
    #[serde(flatten)]
    pub(crate) outcome: serde_json::Map<String, serde_json::Value>,
    /// The aggregate that was checked.
    pub(crate) aggregate: String,
}

/// A ban the ban path applied for a detector (manual bans are not alerts).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct BanAlert {
    /// The address or prefix.
    pub(crate) net: String,
    /// Who asked: `port-scan`, `syn-flood`, `ssh-bruteforce`, `fleet`, ...
    pub(crate) source: String,
    pub(crate) reason: String,
    /// RFC 3339; absent: permanent.
    pub(crate) expires: Option<String>,
    /// How many offences of this net are counted, this one included.
    pub(crate) offence: u32,
    /// Why the ban lasts as long as it does, when its duration escalated with the offences.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) escalation: Option<Escalation>,
}

impl Alert {
    pub(crate) fn now(body: AlertBody) -> Self {
        Self { time: Timestamp::now(), body }
    }

    pub(crate) fn kind(&self) -> AlertKind {
        match self.body {
            AlertBody::Integrity(_) => AlertKind::Integrity,
            AlertBody::SensorMiss(_) => AlertKind::SensorMiss,
            AlertBody::Detect(_) => AlertKind::Detect,
            AlertBody::RemoteCheck(_) => AlertKind::RemoteCheck,
            AlertBody::Ban(_) => AlertKind::Ban,
        }
    }

    /// How much the alert matters: a detector's is its rule's, the other kinds' their kind's.
    pub(crate) fn severity(&self) -> Severity {
        match &self.body {
            AlertBody::Detect(detect) => detect.severity,
            _ => self.kind().severity(),
        }
    }

    /// The alert as a row of the `alerts` table: `item_id` and `collector` say what and who,
    /// `what` holds the rest (the columns `ids alerts` has always shown).
    pub(crate) fn to_row(&self) -> AlertRow {
        let time = self.time.rfc3339();
        let kind = self.kind().name().to_string();
        match &self.body {
            AlertBody::Integrity(change) | AlertBody::SensorMiss(change) => AlertRow {
                time,
                kind,
                item_id: change.id.clone(),
                collector: change.collector.clone(),
                what: {
                    let mut what = serde_json::json!({
                        "change": change.change,
                        "attributes": change.attributes,
                        "old": change.old,
                        "new": change.new,
                    });
                    if !change.changed_by.is_empty() {
                        what["changed_by"] = serde_json::to_value(&change.changed_by).unwrap_or_default();
                    }
                    what
                },
            },
            AlertBody::Detect(detect) => AlertRow {
                time,
                kind,
                item_id: detect.rule.clone(),
                collector: detect.detector.name().to_string(),
                what: serde_json::to_value(self).unwrap_or_default(),
            },
            AlertBody::RemoteCheck(check) => {
                let mut what = check.outcome.clone();
                what.insert("aggregate".into(), check.aggregate.clone().into());
                AlertRow {
                    time,
                    kind,
                    item_id: check.server.clone(),
                    collector: String::new(),
                    what: serde_json::Value::Object(what),
                }
            }
            AlertBody::Ban(ban) => AlertRow {
                time,
                kind,
                item_id: ban.net.clone(),
                collector: ban.source.clone(),
                what: {
                    let mut what =
                        serde_json::json!({"reason": ban.reason, "expires": ban.expires, "offence": ban.offence});
                    if let Some(escalation) = &ban.escalation {
                        what["escalation"] = serde_json::to_value(escalation).unwrap_or_default();
                    }
                    what
                },
            },
        }
    }
}

impl AlertRow {
    /// How much a stored alert matters, as [`Alert::severity`] says.
    pub(crate) fn severity(&self) -> Severity {
        match AlertKind::from_name(&self.kind) {
            Some(AlertKind::Detect) => {
                self.what["severity"].as_str().and_then(Severity::parse).unwrap_or(AlertKind::Detect.severity())
            }
            Some(kind) => kind.severity(),
            None => Severity::Medium,
        }
    }

    /// The alert as the events log wrote it (`{"time", "kind", ...}`), rebuilt from its row: what
    /// the fleet sends of each stored alert.
    pub(crate) fn to_alert_json(&self) -> serde_json::Value {
        use serde_json::{Map, Value};
        if self.kind == AlertKind::Detect.name() && self.what.is_object() {
            return self.what.clone();
        }
        let mut object = Map::new();
        object.insert("time".into(), Value::String(self.time.clone()));
        object.insert("kind".into(), Value::String(self.kind.clone()));
        let (item_key, collector_key) = match self.kind.as_str() {
            "integrity" | "sensor_miss" => ("id", Some("collector")),
            "remote_check" => ("server", None),
            "ban" => ("net", Some("source")),
            _ => ("item_id", Some("collector")),
        };
        if let Some(key) = collector_key {
            object.insert(key.into(), Value::String(self.collector.clone()));
        }
        object.insert(item_key.into(), Value::String(self.item_id.clone()));
        match &self.what {
            Value::Object(what) => object.extend(what.iter().map(|(k, v)| (k.clone(), v.clone()))),
            other => {
                object.insert("what".into(), other.clone());
            }
        }
        Value::Object(object)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_gives_back_the_alert_as_the_events_log_wrote_it() {
        let ban = Alert::now(AlertBody::Ban(BanAlert {
            net: "192.0.2.1/32".into(),
            source: "port-scan".into(),
            reason: "scan".into(),
            expires: Some("2026-12-05T01:00:00Z".into()),
            offence: 2,
            escalation: Some(Escalation {
                offence: 2,
                base: "10m".into(),
                duration: "20m".into(),
                reason: "2nd offence: 10m doubled once = 20m".into(),
            }),
        }));
        let integrity = Alert::now(AlertBody::Integrity(IntegrityAlert {
            collector: "etc".into(),
            id: "file:/etc/hosts".into(),
            change: "changed",
            attributes: vec!["content".into()],
            old: None,
            new: Some(ItemState { digest: "ab".into(), detail: serde_json::json!({"size": 3}) }),
            changed_by: Vec::new(),
        }));
        let mut outcome = serde_json::Map::new();
        outcome.insert("result".into(), "mismatch".into());
        let remote = Alert::now(AlertBody::RemoteCheck(RemoteCheckAlert {
            server: "a:1".into(),
            outcome,
            aggregate: "cd".into(),
        }));
        for alert in [ban, integrity, remote, detect()] {
            assert_eq!(alert.to_row().to_alert_json(), serde_json::to_value(&alert).unwrap(), "{alert:?}");
        }
    }

    fn detect() -> Alert {
        Alert {
            time: Timestamp::at(std::time::UNIX_EPOCH),
            body: AlertBody::Detect(DetectAlert {
                rule: "sshd-failed-password".into(),
                severity: Severity::Medium,
                detector: Detector::SshBruteforce,
                description: "SSH authentication failure".into(),
                source: Some("192.0.2.9".parse().unwrap()),
                path: Some("/var/log/auth.log".into()),
                count: Some(5),
                window_s: Some(300),
                process: None,
                evidence: vec!["a\\x1bb".into()],
                action: DetectAction::BanRequested { duration_s: 600, offence: 1, escalation: None },
            }),
        }
    }

    #[test]
    fn detect_alert_json_has_the_documented_fields() {
        let json = serde_json::to_value(detect()).unwrap();
        assert_eq!(json["time"], "1970-01-01T00:00:00.000000Z");
        assert_eq!(json["kind"], "detect");
        assert_eq!(json["rule"], "sshd-failed-password");
        assert_eq!(json["severity"], "medium");
        assert_eq!(json["detector"], "ssh-bruteforce");
        assert_eq!(json["source"], "192.0.2.9");
        assert_eq!(json["action"], serde_json::json!({"type": "ban_requested", "duration_s": 600, "offence": 1}));
        assert!(json.get("process").is_none());
    }

    #[test]
    fn integrity_alert_is_flat_and_its_row_keeps_the_change() {
        let alert = Alert {
            time: Timestamp::at(std::time::UNIX_EPOCH),
            body: AlertBody::SensorMiss(IntegrityAlert {
                collector: "etc".into(),
                id: "file:/etc/hosts".into(),
                change: "changed",
                attributes: vec!["content".into()],
                old: Some(ItemState { digest: "00".into(), detail: serde_json::json!({"size": 1}) }),
                new: None,
                changed_by: Vec::new(),
            }),
        };
        let json = serde_json::to_value(&alert).unwrap();
        assert_eq!(json["kind"], "sensor_miss");
        assert_eq!(json["id"], "file:/etc/hosts");
        assert_eq!(json["attributes"], serde_json::json!(["content"]));
        assert_eq!(json["old"]["digest"], "00");
        let row = alert.to_row();
        assert_eq!(
            (row.kind.as_str(), row.item_id.as_str(), row.collector.as_str()),
            ("sensor_miss", "file:/etc/hosts", "etc")
        );
        assert_eq!(row.what["change"], "changed");
        assert!(row.what.get("kind").is_none());
        let detect_row = detect().to_row();
        assert_eq!(
            (detect_row.item_id.as_str(), detect_row.collector.as_str()),
            ("sshd-failed-password", "ssh-bruteforce")
        );
        assert_eq!(detect_row.what["kind"], "detect");
    }
}
