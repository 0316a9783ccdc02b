//! What the pages and the API both show, computed once: a host's health from its record and last
//! heartbeat, the alert filter from a query string, an alert as a row.
use std::time::{Duration, SystemTime};

use serde::Serialize;
use serde_json::{Value, json};

use crate::fleet::central::{AlertFilter, AlertRecord, CentralError, CentralStore, HostActivity, HostRecord, rfc3339};

/// The kinds an alert filter offers: the hosts' and the collector's own.
pub(crate) const KINDS: [&str; 7] =
    ["integrity", "sensor_miss", "detect", "remote_check", "ban", "host_silent", "host_back"];
/// Alerts a page lists at most (older ones are a page further).
pub(crate) const PAGE: usize = 100;
/// The window of the Fleet page's counts.
pub(crate) const RECENT: Duration = Duration::from_secs(24 * 3600);

/// A host as the Fleet page and `/api/hosts` show it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct HostView {
    #[serde(flatten)]
    pub(crate) record: HostRecord,
    /// `healthy`, `degraded` (see `problems`) or `silent`.
    pub(crate) health: &'static str,
    pub(crate) problems: Vec<String>,
    /// `matches` (the aggregate is its baseline's), `drifted`, `no baseline` or `unknown` (no
    /// heartbeat, or an agent that does not send its baseline's aggregate).
    pub(crate) baseline: &'static str,
    pub(crate) alerts_24h: i64,
    pub(crate) integrity_24h: i64,
    /// The host's last heartbeat as sent (hooks, lost events, version, uptime...).
    pub(crate) heartbeat: Value,
}

/// What is wrong with a host, from its record and last heartbeat (empty: healthy).
fn problems(record: &HostRecord, heartbeat: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    if let Some(hooks) = heartbeat["hooks"].as_object() {
        for signal in ["exec", "file", "connect"] {
            // These signals have LSM hooks on stock kernels; anything else is the costlier fallback.
            if let Some(hook) = hooks.get(signal).and_then(Value::as_str)
                && !hook.starts_with("lsm:")
            {
                problems.push(format!("{signal} hook in fallback ({hook})"));
            }
        }
    }
    let lost: u64 =
        heartbeat["lost_events"].as_object().map_or(0, |lost| lost.values().filter_map(Value::as_u64).sum());
    if lost > 0 {
        problems.push(format!("{lost} events lost"));
    }
    if record.backlog > 0 {
        problems.push(format!("{} alerts waiting to be sent", record.backlog));
    }
    if record.gaps > 0 {
        problems.push(format!("{} alerts lost before they were sent", record.gaps));
    }
    problems
}

/// Whether the host's integrity aggregate is its accepted baseline's, from its last heartbeat.
fn baseline_state(heartbeat: &Value) -> &'static str {
    if heartbeat.is_null() || heartbeat["version"].is_null() {
        return "unknown";
    }
    match (heartbeat["aggregate"].as_str(), heartbeat["baseline_aggregate"].as_str()) {
        (Some(current), Some(baseline)) if current == baseline => "matches",
        (Some(_), Some(_)) => "drifted",
        (_, None) => "no baseline",
        (None, Some(_)) => "unknown",
    }
}

pub(crate) fn host_views(store: &mut CentralStore, now: SystemTime) -> Result<Vec<HostView>, CentralError> {
    let since = rfc3339(now.checked_sub(RECENT).unwrap_or(SystemTime::UNIX_EPOCH));
    let activity = store.host_activity(&since)?;
    let mut heartbeats = store.heartbeats()?;
    Ok(store
        .hosts()?
        .into_iter()
        .map(|record| {
            let heartbeat = heartbeats.remove(&record.host).unwrap_or(Value::Null);
            let HostActivity { alerts, integrity } = activity.get(&record.host).cloned().unwrap_or_default();
            let problems = problems(&record, &heartbeat);
            let health = if record.status == "silent" {
                "silent"
            } else if problems.is_empty() {
                "healthy"
            } else {
                "degraded"
            };
            let baseline = baseline_state(&heartbeat);
            HostView { record, health, problems, baseline, alerts_24h: alerts, integrity_24h: integrity, heartbeat }
        })
        .collect())
}

/// `since`/`until` of a query: an RFC 3339 time, or a duration meaning that long ago (`24h`).
pub(crate) fn time_param(name: &str, text: &str, now: SystemTime) -> Result<String, String> {
    if let Ok(time) = humantime::parse_rfc3339_weak(text) {
        return Ok(rfc3339(time));
    }
    match humantime::parse_duration(text) {
        Ok(ago) => Ok(rfc3339(now.checked_sub(ago).unwrap_or(SystemTime::UNIX_EPOCH))),
        Err(_) => Err(format!("{name} {text:?}: neither an RFC 3339 time nor a duration such as 24h")),
    }
}

/// The alert filter a query string (`host`, `kind`, `severity`, `rule`, `since`, `until`,
/// `before`, `limit`) describes; an error names the parameter.
pub(crate) fn alert_filter(
    param: impl Fn(&str) -> Option<String>,
    now: SystemTime,
    max_limit: usize,
) -> Result<AlertFilter, String> {
    let kind = param("kind");
    if let Some(kind) = &kind
        && !KINDS.contains(&kind.as_str())
    {
        return Err(format!("kind {kind:?}: not one of {}", KINDS.join(", ")));
    }
    let severity = param("severity");
    if let Some(severity) = &severity
        && crate::alert::Severity::parse(severity).is_none()
    {
        return Err(format!("severity {severity:?}: not one of {}", crate::alert::Severity::NAMES.join(", ")));
    }
    let number = |name: &str| -> Result<Option<i64>, String> {
        param(name).map(|text| text.parse::<i64>().map_err(|_| format!("{name} {text:?}: not a number"))).transpose()
    };
    let limit = number("limit")?.map_or(PAGE, |n| (n.max(1) as usize).min(max_limit));
    Ok(AlertFilter {
        host: param("host"),
        kind,
        severity,
        rule: param("rule"),
        since: param("since").map(|t| time_param("since", &t, now)).transpose()?,
        until: param("until").map(|t| time_param("until", &t, now)).transpose()?,
        limit,
        after_id: None,
        before_id: number("before")?,
    })
}

/// An alert for the API and the live stream: its row, its one-line summary, the alert itself.
pub(crate) fn alert_json(record: &AlertRecord, now: SystemTime) -> Value {
    json!({
        "id": record.id,
        "host": record.host,
        "hostname": record.hostname,
        "epoch": record.epoch,
        "seq": record.seq,
        "time": record.time,
        "kind": record.kind,
        "severity": record.severity,
        "rule": record.rule,
        "summary": summary(record, now),
        "alert": record.alert,
    })
}

/// One line about an alert (the CLI's), the collector's own kinds included.
pub(crate) fn summary(record: &AlertRecord, now: SystemTime) -> String {
    match record.kind.as_str() {
        "host_silent" => format!(
            "host {} silent (last heartbeat {})",
            record.host,
            record.alert["last_heartbeat"].as_str().unwrap_or("unknown")
        ),
        "host_back" => format!("host {} is back", record.host),
        _ => crate::alert::summary::summary(&record.alert, now),
    }
}
