//! `/api/`: the console's data as JSON (docs/console.md lists the routes), for the pages' script,
//! scripts and SIEM pulls (`Authorization: Bearer TOKEN`). Answers are `{"ok": true, ...}` or
//! `{"ok": false, "error"}` with a 4xx/5xx status.
use std::sync::Arc;
use std::time::SystemTime;

use hyper::body::Bytes;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Response, StatusCode};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::auth::Identity;
use super::views::{self, alert_json};
use super::{Body, Console, WebRequest};
use crate::fleet::central::{AlertFilter, rfc3339};
use crate::fleet::message::BanAction;

/// Alerts one `/api/alerts` answer holds at most.
const MAX_LIMIT: usize = 1000;
/// Alerts read per database call while exporting.
const EXPORT_CHUNK: usize = 1000;

fn failure(code: StatusCode, error: &str) -> Response<Body> {
    super::json(code, &json!({"ok": false, "error": error}))
}

fn answer(result: anyhow::Result<Value>) -> Response<Body> {
    match result {
        Ok(mut value) => {
            value["ok"] = true.into();
            super::json(StatusCode::OK, &value)
        }
        Err(error) => {
            tracing::warn!("console API: {}", crate::error_text::one_line(error.as_ref()));
            failure(StatusCode::SERVICE_UNAVAILABLE, "the central database did not answer; try again")
        }
    }
}

pub(crate) async fn route(
    console: &Arc<Console>,
    identity: &Identity,
    request: &WebRequest,
    path: &[&str],
) -> Response<Body> {
    let now = SystemTime::now();
    let filter = || views::alert_filter(|name| request.param(name).map(str::to_string), now, MAX_LIMIT);
    match (&request.method, path) {
        (&Method::GET, ["hosts"]) => answer(
            console.storage.call(move |store| views::host_views(store, now)).await.map(|hosts| json!({"hosts": hosts})),
        ),
        (&Method::GET, ["hosts", host]) => {
            let id = host.to_string();
            match console.storage.call(move |store| views::host_views(store, now)).await {
                Ok(hosts) => match hosts.into_iter().find(|h| h.record.host == id) {
                    Some(host) => answer(Ok(json!({"host": host}))),
                    None => failure(StatusCode::NOT_FOUND, &format!("no host {id:?}")),
                },
                Err(error) => answer(Err(error)),
            }
        }
        (&Method::GET, ["alerts"]) => {
            let filter = match filter() {
                Ok(filter) => filter,
                Err(why) => return failure(StatusCode::BAD_REQUEST, &why),
            };
            let limit = filter.limit;
            answer(
                console
                    .storage
                    .call(move |store| Ok((store.alerts(&filter)?, store.count_alerts(&filter)?)))
                    .await
                    .map(|(records, total)| {
                        let next = (records.len() == limit).then(|| records.first().map(|r| r.id)).flatten();
                        let alerts: Vec<Value> = records.iter().rev().map(|r| alert_json(r, now)).collect();
                        json!({"alerts": alerts, "total": total, "next_before": next})
                    }),
            )
        }
        (&Method::GET, ["alerts", id]) => {
            let Ok(id) = id.parse::<i64>() else { return failure(StatusCode::NOT_FOUND, "not an alert id") };
            match console.storage.call(move |store| store.alert_by_id(id)).await {
                Ok(Some(record)) => answer(Ok(json!({"alert": alert_json(&record, now)}))),
                Ok(None) => failure(StatusCode::NOT_FOUND, &format!("no alert {id}")),
                Err(error) => answer(Err(error)),
            }
        }
        (&Method::GET, ["timeline"]) => {
            let filter = match filter() {
                Ok(filter) => filter,
                Err(why) => return failure(StatusCode::BAD_REQUEST, &why),
            };
            answer(
                console
                    .storage
                    .call(move |store| store.timeline(&filter))
                    .await
                    .map(|hours| json!({"timeline": hours})),
            )
        }
        (&Method::GET, ["bans"]) => answer(
            console
                .storage
                .call(move |store| {
                    let active = store.active_bans(&rfc3339(now))?;
                    let appliers = store.fleet_ban_appliers()?;
                    let decisions = store.ban_decisions(200)?;
                    Ok((active, appliers, decisions))
                })
                .await
                .map(|(active, appliers, decisions)| {
                    let active: Vec<Value> = active
                        .iter()
                        .map(|ban| {
                            let mut value = serde_json::to_value(ban).unwrap_or_default();
                            value["applied_by"] = json!(appliers.get(&ban.net).cloned().unwrap_or_default());
                            value
                        })
                        .collect();
                    json!({"bans": active, "decisions": decisions})
                }),
        ),
        (&Method::POST, ["bans"]) => decide(console, identity, request, BanAction::Ban).await,
        (&Method::POST, ["unban"]) => decide(console, identity, request, BanAction::Unban).await,
        (&Method::GET, ["export"]) => export(console, request, now),
        (&Method::GET, _) | (&Method::POST, _) => failure(StatusCode::NOT_FOUND, "no such API route"),
        _ => failure(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
    }
}

/// `POST /api/bans` `{"net", "reason"?, "duration"?, "force"?}`, `POST /api/unban` `{"net"}`.
async fn decide(
    console: &Arc<Console>,
    identity: &Identity,
    request: &WebRequest,
    action: BanAction,
) -> Response<Body> {
    let body: Value = match serde_json::from_slice(&request.body) {
        Ok(body) => body,
        Err(e) => return failure(StatusCode::BAD_REQUEST, &format!("the body is not JSON: {e}")),
    };
    let text = |key: &str| body.get(key).and_then(Value::as_str).map(str::trim).filter(|s| !s.is_empty());
    let checked = match action {
        BanAction::Ban => super::pages::ban_request(
            &identity.user,
            text("net"),
            text("reason"),
            text("duration"),
            body.get("force").and_then(Value::as_bool).unwrap_or(false),
        ),
        BanAction::Unban => super::pages::ban_request(&identity.user, text("net"), None, None, true).map(|mut ban| {
            ban.reason = format!("unbanned through the API by {}", identity.user);
            ban.duration = None;
            ban
        }),
    };
    let ban = match checked {
        Ok(ban) => ban,
        Err(why) => return failure(StatusCode::BAD_REQUEST, &why),
    };
    answer(
        super::pages::record(console, &identity.user, action, ban.net, ban.reason, ban.duration)
            .await
            .map(|decision| json!({"decision": decision})),
    )
}

/// `GET /api/export?format=jsonl|csv&...`: every alert the filter selects, oldest first, streamed
/// in chunks (a long range does not sit in memory).
fn export(console: &Arc<Console>, request: &WebRequest, now: SystemTime) -> Response<Body> {
    let format = request.param("format").unwrap_or("jsonl");
    if format != "jsonl" && format != "csv" {
        return failure(StatusCode::BAD_REQUEST, &format!("format {format:?}: jsonl or csv"));
    }
    let filter = match views::alert_filter(|name| request.param(name).map(str::to_string), now, usize::MAX) {
        Ok(filter) => filter,
        Err(why) => return failure(StatusCode::BAD_REQUEST, &why),
    };
    let csv = format == "csv";
    let (chunks, body) = mpsc::channel::<Bytes>(4);
    let console = console.clone();
    tokio::spawn(async move {
        if csv {
            let header = "id,host,hostname,time,kind,severity,rule,summary,alert\n";
            if chunks.send(Bytes::from_static(header.as_bytes())).await.is_err() {
                return;
            }
        }
        let mut after = 0;
        loop {
            let page = AlertFilter { after_id: Some(after), before_id: None, limit: EXPORT_CHUNK, ..filter.clone() };
            let records = match console.storage.call(move |store| store.alerts(&page)).await {
                Ok(records) => records,
                Err(error) => {
                    // The client sees a truncated body; the log says why.
                    tracing::warn!("console export: {}", crate::error_text::one_line(error.as_ref()));
                    return;
                }
            };
            let Some(last) = records.last() else { return };
            after = last.id;
            let mut out = String::new();
            for record in &records {
                if csv {
                    let fields = [
                        record.id.to_string(),
                        record.host.clone(),
                        record.hostname.clone(),
                        record.time.clone(),
                        record.kind.clone(),
                        record.severity.clone(),
                        record.rule.clone().unwrap_or_default(),
                        views::summary(record, now),
                        record.alert.to_string(),
                    ];
                    out.push_str(&fields.iter().map(|f| csv_field(f)).collect::<Vec<_>>().join(","));
                } else {
                    out.push_str(&alert_json(record, now).to_string());
                }
                out.push('\n');
            }
            if chunks.send(Bytes::from(out)).await.is_err() {
                return;
            }
        }
    });
    let mut response = Response::new(Body::Stream(body));
    let (content_type, name) =
        if csv { ("text/csv; charset=utf-8", "alerts.csv") } else { ("application/x-ndjson", "alerts.jsonl") };
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(value) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        response.headers_mut().insert(header::CONTENT_DISPOSITION, value);
    }
    response
}

/// A CSV field (RFC 4180): quoted when it holds a comma, a quote or a line break; a leading
/// `=`, `+`, `-` or `@` is prefixed with `'` so that a spreadsheet does not run it as a formula.
fn csv_field(text: &str) -> String {
    let text = if text.starts_with(['=', '+', '-', '@']) { format!("'{text}") } else { text.to_string() };
    if text.contains([',', '"', '\n', '\r']) { format!("\"{}\"", text.replace('"', "\"\"")) } else { text }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_and_formulas_defused() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("=cmd|' /C calc'!A0"), "'=cmd|' /C calc'!A0");
    }
}
