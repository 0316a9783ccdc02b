//! Ban requests of the control protocol, answered on a [`Bans`]: by the daemon for its clients,
//! and by `ids ban` itself on the store when no daemon runs (`crate::cli::bans`).
//!
//! Every answer is `{"ok": true, "data": ...}` or `{"ok": false, "error": "..."}`. A ban list too
//! long for one request is sent as a bulk ban in parts: the first net of each part is a marker
//! `bulk:TOKEN:PART:PARTS[:summary]` ([`BULK_MARKER`]); each part is checked as it comes and the
//! whole list applied with the last one ([`Bans::ban_part`]).
use serde_json::{Value, json};

use super::{Request, refusal};
use crate::bans::{BanDuration, BanError, BanNet, BanRequest, Bans, parse_duration};

/// The first net of each part of a bulk ban: `bulk:TOKEN:PART:PARTS[:summary]`.
pub(crate) const BULK_MARKER: &str = "bulk:";

/// Why a request was refused; `index`: which net of the request (of the bulk, for a part of one).
struct Refusal {
    message: String,
    index: Option<usize>,
}

impl From<String> for Refusal {
    fn from(message: String) -> Self {
        Self { message, index: None }
    }
}

pub(crate) fn duration_of(text: Option<&str>) -> Result<BanDuration, String> {
    match text {
        None => Ok(BanDuration::Default),
        Some(text) => Ok(match parse_duration(text)? {
            Some(d) => BanDuration::For(d),
            None => BanDuration::Permanent,
        }),
    }
}

pub(crate) fn parse_nets(nets: &[String]) -> Result<Vec<BanNet>, BanError> {
    nets.iter().map(|n| BanNet::parse(n).map_err(BanError::from)).collect()
}

/// A bulk marker: `TOKEN:PART:PARTS`, and whether it ends in `:summary`.
fn parse_bulk_marker(marker: &str) -> Result<((&str, usize, usize), bool), String> {
    let bad = || format!("bulk ban marker {marker:?}: expected TOKEN:PART:PARTS[:summary]");
    let (marker, summary) = match marker.strip_suffix(":summary") {
        Some(marker) => (marker, true),
        None => (marker, false),
    };
    let mut fields = marker.rsplitn(3, ':');
    let parts = fields.next().and_then(|p| p.parse::<usize>().ok()).ok_or_else(bad)?;
    let part = fields.next().and_then(|p| p.parse::<usize>().ok()).ok_or_else(bad)?;
    let token = fields.next().filter(|t| !t.is_empty()).ok_or_else(bad)?;
    if part == 0 || part > parts {
        return Err(bad());
    }
    Ok(((token, part, parts), summary))
}

/// Answers one ban-related request with `bans` (in the daemon or offline).
pub(crate) fn answer(bans: &mut Bans, request: &Request) -> Value {
    let result: Result<Value, Refusal> = (|| match request {
        Request::Ban { nets, duration, reason, force } => {
            let duration = duration_of(duration.as_deref())?;
            let ((bulk, summary), nets) = match nets.first().and_then(|n| n.strip_prefix(BULK_MARKER)) {
                Some(marker) => {
                    let (bulk, summary) = parse_bulk_marker(marker)?;
                    ((Some(bulk), summary), &nets[1..])
                }
                None => ((None, false), &nets[..]),
            };
            let mut requests = Vec::with_capacity(nets.len());
            for (index, net) in nets.iter().enumerate() {
                let net = BanNet::parse(net)
                    .map_err(|e| Refusal { message: e.to_string(), index: bulk.is_none().then_some(index) })?;
                requests.push(BanRequest {
                    net,
                    reason: reason.clone(),
                    source: crate::bans::MANUAL.into(),
                    duration,
                    force: *force,
                    alert: None,
                    banned: None,
                });
            }
            let outcomes = match bulk {
                None => {
                    bans.check_all(&requests)
                        .map_err(|(index, e)| Refusal { message: e.to_string(), index: Some(index) })?;
                    bans.ban_all(requests).map_err(|e| e.to_string())?
                }
                Some((token, part, parts)) => match bans.ban_part(token, part, parts, requests) {
                    Ok(Some(outcomes)) => outcomes,
                    // Checked and kept; applied with the last part.
                    Ok(None) => return Ok(json!([])),
                    Err((index, e)) => return Err(Refusal { message: e.to_string(), index }),
                },
            };
            if summary {
                let new = outcomes.iter().filter(|o| o.created).count();
                return Ok(json!([{"banned": outcomes.len(), "new": new}]));
            }
            Ok(serde_json::to_value(outcomes).map_err(|e| e.to_string())?)
        }
        Request::Unban { nets } => {
            let nets = parse_nets(nets).map_err(|e| e.to_string())?;
            let mut out = Vec::new();
            for net in nets {
                let removed = bans.unban(&net).map_err(|e| e.to_string())?;
                out.push(json!({"net": net.to_string(), "removed": removed.is_some(), "ban": removed}));
            }
            Ok(Value::Array(out))
        }
        Request::Bans => Ok(serde_json::to_value(bans.list().map_err(|e| e.to_string())?).map_err(|e| e.to_string())?),
        Request::Alerts { limit, kinds, since, min_severity, after_id } => {
            let filter = crate::store::AlertFilter { kinds: kinds.clone(), since: since.clone(), after_id: *after_id };
            Ok(super::alerts::rows(bans.store(), *limit, &filter, *min_severity)?)
        }
        other => Err(format!("not a ban request: {other:?}").into()),
    })();
    match result {
        Ok(data) => json!({"ok": true, "data": data}),
        Err(Refusal { message, index: None }) => refusal(message),
        Err(Refusal { message, index: Some(index) }) => json!({"ok": false, "error": message, "index": index}),
    }
}
