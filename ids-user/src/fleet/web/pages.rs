//! The pages: login, Fleet, Alerts, one alert, Host, Bans (with its confirmations).
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::SystemTime;

use hyper::{Response, StatusCode};

use super::auth::Identity;
use super::html::{Tab, esc, html_response, kind_class, page, url, when};
use super::views::{self, HostView, KINDS, PAGE};
use super::{Body, Console, WebRequest, field, redirect};
use crate::bans::BanNet;
use crate::fleet::central::{AlertFilter, AlertRecord, rfc3339};
use crate::fleet::message::{BanAction, BanDecision};

/// `GET /login` (and the login form again after a failure, with `error`).
pub(crate) async fn login_page(_console: &Arc<Console>, request: &WebRequest, error: Option<&str>) -> Response<Body> {
    let form = request.form();
    let next = request.param("next").or_else(|| field(&form, "next")).unwrap_or("/");
    let error = error.map(|e| format!("<p class=\"error\" role=\"alert\">{}</p>", esc(e))).unwrap_or_default();
    let html = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Log in · ids fleet</title>\
         <link rel=\"stylesheet\" href=\"/static/console.css\"></head><body class=\"login\"><main>\
         <h1>ids fleet</h1>{error}<form id=\"login\" method=\"post\" action=\"/login\">\
         <input type=\"hidden\" name=\"next\" value=\"{next}\">\
         <label>User <input name=\"user\" autocomplete=\"username\" required autofocus></label>\
         <label>Password <input name=\"password\" type=\"password\" autocomplete=\"current-password\" required></label>\
         <button id=\"login-submit\" type=\"submit\">Log in</button></form></main></body></html>\n",
        next = esc(next),
    );
    html_response(StatusCode::OK, html)
}

fn problem(response: StatusCode, identity: &Identity, title: &str, message: &str) -> Response<Body> {
    let mut page =
        page(identity, Tab::None, title, &format!("<h1>{}</h1><p class=\"error\">{}</p>", esc(title), esc(message)));
    *page.status_mut() = response;
    page
}

fn health_cell(host: &HostView) -> String {
    let why = if host.problems.is_empty() { String::new() } else { host.problems.join("; ") };
    format!("<td class=\"status {0}\" title=\"{1}\">{0}</td>", host.health, esc(&why))
}

/// `GET /`: every host, its health and what it raised in 24 h.
pub(crate) async fn fleet(console: &Arc<Console>, identity: &Identity) -> Response<Body> {
    let now = SystemTime::now();
    let loaded = console
        .storage
        .call(move |store| {
            let hosts = views::host_views(store, now, true)?;
            let bans = store.active_bans(&rfc3339(now))?.len();
            Ok((hosts, bans))
        })
        .await;
    let (hosts, bans) = match loaded {
        Ok(loaded) => loaded,
        Err(error) => return super::server_error(&error),
    };
    let count = |health: &str| hosts.iter().filter(|h| h.health == health).count();
    let alerts: i64 = hosts.iter().map(|h| h.alerts_24h).sum();
    let mut body = format!(
        "<h1>Fleet</h1><section class=\"cards\">\
         <div class=\"card\"><b id=\"count-healthy\">{}</b> healthy</div>\
         <div class=\"card degraded\"><b id=\"count-degraded\">{}</b> degraded</div>\
         <div class=\"card silent\"><b id=\"count-silent\">{}</b> silent</div>\
         <div class=\"card\"><b>{alerts}</b> alerts in 24 h</div>\
         <div class=\"card\"><a href=\"/bans\"><b>{bans}</b> fleet bans</a></div></section>",
        count("healthy"),
        count("degraded"),
        count("silent"),
    );
    if hosts.is_empty() {
        body.push_str(
            "<p class=\"empty\">No host has reported yet: start <code>ids run</code> with a [fleet] section.</p>",
        );
    }
    body.push_str(
        "<table id=\"hosts\" data-live=\"hosts\"><thead><tr><th>Host</th><th>Hostname</th><th>Status</th><th>Why</th>\
         <th>Last seen</th><th class=\"num\">Alerts 24 h</th><th class=\"num\">Integrity 24 h</th>\
         <th>Baseline</th><th>Integrity aggregate</th><th>Version</th></tr></thead><tbody>",
    );
    for host in &hosts {
        let aggregate = host.record.aggregate.as_deref().unwrap_or("");
        // From the host's heartbeat: cut by characters, whatever it holds.
        let short: String = aggregate.chars().take(16).collect();
        let _ = write!(
            body,
            "<tr data-host=\"{id}\"><td><a href=\"/hosts/{link}\">{id}</a></td><td>{hostname}</td>{status}\
             <td class=\"why\">{why}</td><td>{seen}</td><td class=\"num alerts\"><a href=\"/alerts?host={link}&amp;since=24h\">{alerts}</a></td>\
             <td class=\"num\">{integrity}</td><td class=\"baseline {baseline_class}\">{baseline}</td>\
             <td class=\"digest\" title=\"{aggregate}\">{short}</td><td>{version}</td></tr>",
            id = esc(&host.record.host),
            link = url(&host.record.host),
            hostname = esc(&host.record.hostname),
            status = health_cell(host),
            why = esc(&host.problems.join("; ")),
            seen = when(&host.record.last_seen, now),
            alerts = host.alerts_24h,
            integrity = if host.integrity_24h > 0 {
                format!(
                    "<a href=\"/alerts?host={}&amp;kind=integrity&amp;since=24h\">{}</a>",
                    url(&host.record.host),
                    host.integrity_24h
                )
            } else {
                "0".to_string()
            },
            baseline = host.baseline,
            baseline_class = host.baseline.replace(' ', "-"),
            aggregate = esc(aggregate),
            short = esc(&short),
            version = esc(host.heartbeat["version"].as_str().unwrap_or("")),
        );
    }
    body.push_str("</tbody></table>");
    page(identity, Tab::Fleet, "Fleet", &body)
}

/// One alert as a table row (the live script builds the same from `/events`).
fn alert_row(record: &AlertRecord, now: SystemTime) -> String {
    format!(
        "<tr data-alert-id=\"{id}\" class=\"sev-{severity}\"><td class=\"time\">{time}</td>\
         <td class=\"host\"><a href=\"/hosts/{host_link}\">{host}</a></td><td class=\"kind {kind_class}\">{kind}</td>\
         <td class=\"severity\">{severity}</td><td class=\"summary\"><a href=\"/alerts/{id}\">{summary}</a></td></tr>",
        id = record.id,
        severity = esc(&record.severity),
        time = when(&record.time, now),
        host_link = url(&record.host),
        host = esc(&record.host),
        kind_class = kind_class(&record.kind),
        kind = esc(&record.kind),
        summary = esc(&views::summary(record, now)),
    )
}

/// `newest`: the newest alert id stored when the page was made; the live script asks for the
/// alerts after it.
fn alerts_table(records: &[AlertRecord], now: SystemTime, live: &AlertFilter, newest: i64) -> String {
    // The filter travels to the live script, which inserts only the alerts it selects.
    let attr = |name: &str, value: &Option<String>| {
        value.as_ref().map(|v| format!(" data-{name}=\"{}\"", esc(v))).unwrap_or_default()
    };
    let mut out = format!(
        "<table id=\"alerts\" data-live=\"alerts\" data-newest=\"{newest}\"{}{}{}{}{}><thead><tr><th>Time</th><th>Host</th><th>Kind</th><th>Severity</th>\
         <th>What</th></tr></thead><tbody>",
        attr("host", &live.host),
        attr("kind", &live.kind),
        attr("severity", &live.severity),
        attr("rule", &live.rule),
        if live.until.is_some() || live.before_id.is_some() { " data-frozen=\"true\"" } else { "" },
    );
    // Newest first.
    for record in records.iter().rev() {
        out.push_str(&alert_row(record, now));
    }
    out.push_str("</tbody></table>");
    out
}

fn select(name: &str, label: &str, options: &[&str], current: Option<&str>) -> String {
    let mut out = format!("<label>{label} <select name=\"{name}\"><option value=\"\">any</option>");
    for option in options {
        let selected = if current == Some(option) { " selected" } else { "" };
        let _ = write!(out, "<option{selected}>{}</option>", esc(option));
    }
    out.push_str("</select></label>");
    out
}

/// `GET /alerts`: the filter form, the timeline, the alerts (newest first, live).
pub(crate) async fn alerts(console: &Arc<Console>, identity: &Identity, request: &WebRequest) -> Response<Body> {
    let now = SystemTime::now();
    let filter = match views::alert_filter(|name| request.param(name).map(str::to_string), now, PAGE) {
        Ok(filter) => filter,
        Err(why) => return problem(StatusCode::BAD_REQUEST, identity, "Alerts", &why),
    };
    let query = filter.clone();
    let loaded = console
        .storage
        .call(move |store| {
            let records = store.alerts(&query)?;
            let total = store.count_alerts(&query)?;
            let timeline = store.timeline(&query)?;
            let hosts: Vec<String> = store.hosts()?.into_iter().map(|h| h.host).collect();
            let newest = store.newest_alert_id()?;
            Ok((records, total, timeline, hosts, newest))
        })
        .await;
    let (records, total, timeline, hosts, newest) = match loaded {
        Ok(loaded) => loaded,
        Err(error) => return super::server_error(&error),
    };
    let host_names: Vec<&str> = hosts.iter().map(String::as_str).collect();
    let value = |name: &str| request.param(name).map(esc).unwrap_or_default();
    let mut body = format!(
        "<h1>Alerts</h1><form id=\"filter\" class=\"filter\" method=\"get\" action=\"/alerts\">{}{}{}\
         <label>Rule <input name=\"rule\" value=\"{}\" size=\"18\"></label>\
         <label>Since <input name=\"since\" value=\"{}\" placeholder=\"24h or 2026-12-05T10:00:00Z\" size=\"22\"></label>\
         <label>Until <input name=\"until\" value=\"{}\" placeholder=\"RFC 3339 or 1h\" size=\"16\"></label>\
         <button type=\"submit\">Filter</button> <a href=\"/alerts\">clear</a></form>",
        select("host", "Host", &host_names, request.param("host")),
        select("kind", "Kind", &KINDS, request.param("kind")),
        select("severity", "Severity", &crate::alert::Severity::NAMES, request.param("severity")),
        value("rule"),
        value("since"),
        value("until"),
    );
    body.push_str(&super::html::timeline(&timeline));
    let export: String = request
        .query
        .iter()
        .filter(|(key, v)| {
            !v.is_empty() && ["host", "kind", "severity", "rule", "since", "until"].contains(&key.as_str())
        })
        .map(|(key, v)| format!("&amp;{}={}", esc(key), url(v)))
        .collect();
    let _ = write!(
        body,
        "<p class=\"count\"><span id=\"alert-count\">{total}</span> alerts match; newest first. \
         Export: <a href=\"/api/export?format=jsonl{export}\">JSON lines</a> · <a href=\"/api/export?format=csv{export}\">CSV</a></p>"
    );
    body.push_str(&alerts_table(&records, now, &filter, newest));
    if records.len() == filter.limit
        && let Some(oldest) = records.first()
    {
        let mut older: Vec<(String, String)> = request.query.iter().filter(|(k, _)| k != "before").cloned().collect();
        older.push(("before".into(), oldest.id.to_string()));
        let query = form_urlencoded::Serializer::new(String::new()).extend_pairs(&older).finish();
        let _ = write!(body, "<p><a id=\"older\" href=\"/alerts?{}\">Older alerts</a></p>", esc(&query));
    }
    page(identity, Tab::Alerts, "Alerts", &body)
}

/// `GET /alerts/ID`: one alert, readable and as JSON.
pub(crate) async fn alert(console: &Arc<Console>, identity: &Identity, id: &str) -> Response<Body> {
    let Ok(id) = id.parse::<i64>() else {
        return problem(StatusCode::NOT_FOUND, identity, "Alert", &format!("{id:?} is not an alert id"));
    };
    let record = match console.storage.call(move |store| store.alert_by_id(id)).await {
        Ok(Some(record)) => record,
        Ok(None) => return problem(StatusCode::NOT_FOUND, identity, "Alert", &format!("no alert {id}")),
        Err(error) => return super::server_error(&error),
    };
    let now = SystemTime::now();
    let pretty = serde_json::to_string_pretty(&record.alert).unwrap_or_default();
    let body = format!(
        "<h1>Alert {id}</h1><p class=\"summary\">{summary}</p>\
         <table class=\"facts\"><tr><th>Host</th><td><a href=\"/hosts/{host_link}\">{host}</a> ({hostname})</td></tr>\
         <tr><th>Time</th><td>{time}</td></tr><tr><th>Kind</th><td>{kind}</td></tr><tr><th>Severity</th><td>{severity}</td></tr>\
         <tr><th>Sequence</th><td>epoch {epoch}, #{seq}</td></tr></table>\
         <h2>Details</h2><div class=\"readable\">{readable}</div><h2>JSON</h2><pre id=\"alert-json\">{json}</pre>",
        summary = esc(&views::summary(&record, now)),
        host_link = url(&record.host),
        host = esc(&record.host),
        hostname = esc(&record.hostname),
        time = when(&record.time, now),
        kind = esc(&record.kind),
        severity = esc(&record.severity),
        epoch = record.epoch,
        seq = record.seq,
        readable = super::html::readable(&record.alert),
        json = esc(&pretty),
    );
    page(identity, Tab::Alerts, &format!("Alert {id}"), &body)
}

/// `GET /hosts/HOST`: one host's health, heartbeat, alerts, integrity changes, bans, liveness.
pub(crate) async fn host(console: &Arc<Console>, identity: &Identity, host: &str) -> Response<Body> {
    let now = SystemTime::now();
    let id = host.to_string();
    let loaded = console
        .storage
        .call(move |store| {
            let view = views::host_views(store, now, true)?.into_iter().find(|h| h.record.host == id);
            let filter = |kind: Option<&str>, limit| AlertFilter {
                host: Some(id.clone()),
                kind: kind.map(str::to_string),
                limit,
                ..AlertFilter::default()
            };
            let recent = store.alerts(&filter(None, 50))?;
            let integrity = store.alerts(&filter(Some("integrity"), 50))?;
            let bans = store.alerts(&filter(Some("ban"), 50))?;
            let mut liveness = store.alerts(&filter(Some("host_silent"), 20))?;
            liveness.extend(store.alerts(&filter(Some("host_back"), 20))?);
            liveness.sort_by_key(|record| record.id);
            Ok((view, recent, integrity, bans, liveness))
        })
        .await;
    let (view, recent, integrity, bans, liveness) = match loaded {
        Ok(loaded) => loaded,
        Err(error) => return super::server_error(&error),
    };
    let Some(view) = view else {
        return problem(StatusCode::NOT_FOUND, identity, "Host", &format!("no host {host:?} has reported"));
    };
    let beat = &view.heartbeat;
    let pairs = |value: &serde_json::Value| -> String {
        value.as_object().map_or(String::new(), |map| {
            map.iter()
                .map(|(k, v)| format!("{} {}", esc(k), esc(&v.as_str().map_or(v.to_string(), str::to_string))))
                .collect::<Vec<_>>()
                .join(", ")
        })
    };
    let record = &view.record;
    let mut body = format!(
        "<h1>{id}</h1><table class=\"facts\"><tr><th>Hostname</th><td>{hostname}</td></tr>\
         <tr><th>Status</th>{status}</tr><tr><th>Problems</th><td>{problems}</td></tr>\
         <tr><th>First seen</th><td>{first}</td></tr><tr><th>Last heartbeat</th><td>{last}</td></tr>\
         <tr><th>Heartbeat every</th><td>{interval}</td></tr><tr><th>Version, uptime</th><td>{version}, up {uptime}</td></tr>\
         <tr><th>Hooks</th><td>{hooks}</td></tr><tr><th>Events lost</th><td>{lost}</td></tr>\
         <tr><th>Alerts</th><td>#{seq} of epoch {epoch}; {gaps} lost; {backlog} waiting</td></tr>\
         <tr><th>Integrity aggregate</th><td class=\"digest\">{aggregate}</td></tr>\
         <tr><th>Baseline</th><td class=\"baseline\">{baseline}{baseline_aggregate}</td></tr></table>",
        id = esc(&record.host),
        hostname = esc(&record.hostname),
        status = health_cell(&view),
        problems = esc(&if view.problems.is_empty() { "none".to_string() } else { view.problems.join("; ") }),
        first = when(&record.first_seen, now),
        last = record.last_heartbeat.as_deref().map_or("never".to_string(), |t| when(t, now)),
        interval = record.heartbeat_interval_s.map_or("?".to_string(), |s| format!("{s} s")),
        version = esc(beat["version"].as_str().unwrap_or("?")),
        uptime =
            beat["uptime_s"].as_u64().map_or("?".to_string(), |s| crate::time::span(std::time::Duration::from_secs(s))),
        hooks = pairs(&beat["hooks"]),
        lost = pairs(&beat["lost_events"]),
        seq = record.last_seq,
        epoch = record.epoch.unwrap_or(0),
        gaps = record.gaps,
        backlog = record.backlog,
        aggregate = esc(record.aggregate.as_deref().unwrap_or("none yet")),
        baseline = view.baseline,
        baseline_aggregate = beat["baseline_aggregate"]
            .as_str()
            .map(|b| format!(" (baseline <span class=\"digest\">{}</span>)", esc(b)))
            .unwrap_or_default(),
    );
    let section = |body: &mut String, title: &str, records: &[AlertRecord], more: &str| {
        let _ = write!(body, "<h2>{title}</h2>");
        if records.is_empty() {
            body.push_str("<p class=\"empty\">None.</p>");
        } else {
            body.push_str(&alerts_table(
                records,
                now,
                &AlertFilter { before_id: Some(0), ..AlertFilter::default() },
                0,
            ));
            let _ = write!(body, "<p><a href=\"/alerts?host={}{more}\">All of them</a></p>", url(&record.host));
        }
    };
    section(&mut body, "Recent alerts", &recent, "");
    section(&mut body, "Integrity changes", &integrity, "&amp;kind=integrity");
    section(&mut body, "Bans", &bans, "&amp;kind=ban");
    section(&mut body, "Liveness (silent, back)", &liveness, "&amp;kind=host_silent");
    page(identity, Tab::None, &record.host, &body)
}

/// `GET /bans`: the fleet bans in force (and who applied them), the ban form, the decisions.
pub(crate) async fn bans(console: &Arc<Console>, identity: &Identity, error: Option<&str>) -> Response<Body> {
    let now = SystemTime::now();
    let loaded = console
        .storage
        .call(move |store| {
            let active = store.active_bans(&rfc3339(now))?;
            let decisions = store.ban_decisions(50)?;
            let appliers = store.fleet_ban_appliers()?;
            let packets = crate::fleet::central::fleet_ban_packets(&store.heartbeats()?);
            Ok((active, decisions, appliers, packets))
        })
        .await;
    let (active, decisions, appliers, packets) = match loaded {
        Ok(loaded) => loaded,
        Err(error) => return super::server_error(&error),
    };
    let csrf = esc(identity.csrf.as_deref().unwrap_or(""));
    let mut body = String::from("<h1>Fleet bans</h1>");
    if let Some(error) = error {
        let _ = write!(body, "<p class=\"error\" role=\"alert\">{}</p>", esc(error));
    }
    let _ = write!(
        body,
        "<form id=\"ban-form\" class=\"filter\" method=\"post\" action=\"/bans/confirm\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <label>Address or prefix <input name=\"net\" required placeholder=\"192.0.2.7 or 2001:db8::/48\"></label>\
         <label>Reason <input name=\"reason\" placeholder=\"why (shown on every host)\" size=\"28\"></label>\
         <label>For <input name=\"duration\" value=\"1h\" size=\"8\" title=\"90s, 10m, 1h, 7d; empty or permanent: no expiry\"></label>\
         <label><input type=\"checkbox\" name=\"force\" value=\"yes\"> broad prefix</label>\
         <button id=\"ban-submit\" type=\"submit\">Ban fleet-wide…</button></form>"
    );
    body.push_str(
        "<table id=\"bans\"><thead><tr><th>Address</th><th>Reason</th><th>Origin</th><th>Since</th><th>Expires</th>\
         <th>Applied by</th><th class=\"num\">Packets dropped</th><th></th></tr></thead><tbody>",
    );
    for ban in &active {
        let applied = appliers.get(&ban.net).map_or(String::new(), |hosts| {
            hosts.keys().map(|h| format!("<a href=\"/hosts/{}\">{}</a>", url(h), esc(h))).collect::<Vec<_>>().join(", ")
        });
        let _ = write!(
            body,
            "<tr data-net=\"{net}\"><td>{net}</td><td>{reason}</td><td>{origin}</td><td>{time}</td><td>{expires}</td>\
             <td class=\"applied\">{applied}</td><td class=\"num packets\" title=\"{per_host}\">{dropped}</td>\
             <td><form method=\"post\" action=\"/bans/unban/confirm\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\"><input type=\"hidden\" name=\"net\" value=\"{net}\">\
             <button class=\"unban\" type=\"submit\">Unban…</button></form></td></tr>",
            net = esc(&ban.net),
            reason = esc(&ban.reason),
            origin = esc(&ban.origin),
            time = when(&ban.time, now),
            expires = ban.expires.as_deref().map_or("never".to_string(), |t| when(t, now)),
            applied = if applied.is_empty() { "<span class=\"none\">no host yet</span>".to_string() } else { applied },
            dropped = packets.get(&ban.net).map_or(0, |hosts| hosts.values().sum::<u64>()),
            per_host = esc(&packets
                .get(&ban.net)
                .map(|hosts| hosts.iter().map(|(h, n)| format!("{h}: {n}")).collect::<Vec<_>>().join(", "))
                .unwrap_or_default()),
        );
    }
    body.push_str("</tbody></table>");
    if active.is_empty() {
        body.push_str("<p class=\"empty\">No fleet ban is in force.</p>");
    }
    body.push_str(
        "<h2>Decisions</h2><table id=\"decisions\"><thead><tr><th>Rev</th><th>Action</th><th>Address</th><th>Reason</th>\
         <th>Origin</th><th>When</th><th>Expires</th></tr></thead><tbody>",
    );
    for decision in &decisions {
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            decision.rev,
            esc(action_name(decision)),
            esc(&decision.net),
            esc(&decision.reason),
            esc(&decision.origin),
            when(&decision.time, now),
            decision.expires.as_deref().map_or("—".to_string(), |t| when(t, now)),
        );
    }
    body.push_str("</tbody></table>");
    page(identity, Tab::Bans, "Bans", &body)
}

fn action_name(decision: &BanDecision) -> &'static str {
    match decision.action {
        BanAction::Ban => "ban",
        BanAction::Unban => "unban",
    }
}

/// A ban asked for from the console or the API, checked.
pub(crate) struct BanRequest {
    pub(crate) net: BanNet,
    pub(crate) reason: String,
    pub(crate) duration: Option<std::time::Duration>,
    pub(crate) duration_text: String,
}

/// Checks a ban's fields: the net, a broad prefix only with `force`, the duration.
pub(crate) fn ban_request(
    user: &str,
    net: Option<&str>,
    reason: Option<&str>,
    duration: Option<&str>,
    force: bool,
) -> Result<BanRequest, String> {
    let net = BanNet::parse(net.ok_or("give an address or prefix to ban")?).map_err(|e| e.to_string())?;
    if net.is_broad() && !force {
        return Err(format!("{net} covers a large part of the address space; tick \"broad prefix\" to ban it"));
    }
    let duration_text = duration.unwrap_or("permanent").to_string();
    let duration = crate::bans::parse_duration(&duration_text).map_err(|e| format!("for {duration_text:?}: {e}"))?;
    let reason = reason.map_or_else(|| format!("banned from the console by {user}"), str::to_string);
    Ok(BanRequest { net, reason, duration, duration_text })
}

/// The Bans page again, saying why the ban was refused (400).
async fn refused_ban(console: &Arc<Console>, identity: &Identity, why: &str) -> Response<Body> {
    let mut response = bans(console, identity, Some(why)).await;
    *response.status_mut() = StatusCode::BAD_REQUEST;
    response
}

/// The ban form's fields, checked.
fn ban_from_form(identity: &Identity, form: &[(String, String)]) -> Result<BanRequest, String> {
    ban_request(
        &identity.user,
        field(form, "net"),
        field(form, "reason"),
        field(form, "duration"),
        field(form, "force").is_some(),
    )
}

/// Records a ban decision (the collector publishes it within a second).
pub(crate) async fn record(
    console: &Arc<Console>,
    user: &str,
    action: BanAction,
    net: BanNet,
    reason: String,
    duration: Option<std::time::Duration>,
) -> anyhow::Result<BanDecision> {
    let now = SystemTime::now();
    let expires = duration.and_then(|d| now.checked_add(d)).map(rfc3339);
    let origin = format!("console:{user}");
    let decision = console
        .storage
        .call(move |store| store.record_decision(action, &net, &reason, &origin, expires, &rfc3339(now)))
        .await?;
    tracing::info!(
        user,
        net = decision.net,
        rev = decision.rev,
        action = action_name(&decision),
        "console: fleet ban decision"
    );
    Ok(decision)
}

/// `POST /bans/confirm`: the ban checked and shown for confirmation.
pub(crate) async fn confirm_ban(console: &Arc<Console>, identity: &Identity, request: &WebRequest) -> Response<Body> {
    let form = request.form();
    let ban = match ban_from_form(identity, &form) {
        Ok(ban) => ban,
        Err(why) => return refused_ban(console, identity, &why).await,
    };
    let length = match ban.duration {
        Some(d) => format!("for {}", crate::time::span(d)),
        None => "permanently".to_string(),
    };
    let hidden = |name: &str, value: &str| format!("<input type=\"hidden\" name=\"{name}\" value=\"{}\">", esc(value));
    let body = format!(
        "<h1>Ban {net} on every host?</h1><p>Every agent of the fleet will drop packets from <b>{net}</b> {length}. \
         Reason: {reason}.</p><form id=\"confirm-form\" method=\"post\" action=\"/bans\">{}{}{}{}{}\
         <button id=\"confirm-submit\" type=\"submit\">Ban {net}</button> <a href=\"/bans\">Cancel</a></form>",
        hidden("csrf", identity.csrf.as_deref().unwrap_or("")),
        hidden("net", &ban.net.to_string()),
        hidden("reason", &ban.reason),
        hidden("duration", &ban.duration_text),
        if field(&form, "force").is_some() { hidden("force", "yes") } else { String::new() },
        net = esc(&ban.net.to_string()),
        reason = esc(&ban.reason),
    );
    page(identity, Tab::Bans, "Confirm ban", &body)
}

/// `POST /bans`: the confirmed ban, recorded.
pub(crate) async fn ban(console: &Arc<Console>, identity: &Identity, request: &WebRequest) -> Response<Body> {
    let form = request.form();
    let ban = match ban_from_form(identity, &form) {
        Ok(ban) => ban,
        Err(why) => return refused_ban(console, identity, &why).await,
    };
    match record(console, &identity.user, BanAction::Ban, ban.net, ban.reason, ban.duration).await {
        Ok(_) => redirect("/bans"),
        Err(error) => super::server_error(&error),
    }
}

/// `POST /bans/unban/confirm`.
pub(crate) fn confirm_unban(identity: &Identity, request: &WebRequest) -> Response<Body> {
    let form = request.form();
    let Some(net) = field(&form, "net").and_then(|net| BanNet::parse(net).ok()) else {
        return problem(StatusCode::BAD_REQUEST, identity, "Unban", "give the address or prefix to unban");
    };
    let body = format!(
        "<h1>Lift the ban of {net} on every host?</h1><form id=\"confirm-form\" method=\"post\" action=\"/bans/unban\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\"><input type=\"hidden\" name=\"net\" value=\"{net}\">\
         <button id=\"confirm-submit\" type=\"submit\">Unban {net}</button> <a href=\"/bans\">Cancel</a></form>",
        net = esc(&net.to_string()),
        csrf = esc(identity.csrf.as_deref().unwrap_or("")),
    );
    page(identity, Tab::Bans, "Confirm unban", &body)
}

/// `POST /bans/unban`: the confirmed unban, recorded.
pub(crate) async fn unban(console: &Arc<Console>, identity: &Identity, request: &WebRequest) -> Response<Body> {
    let form = request.form();
    let Some(net) = field(&form, "net").and_then(|net| BanNet::parse(net).ok()) else {
        return problem(StatusCode::BAD_REQUEST, identity, "Unban", "give the address or prefix to unban");
    };
    let reason = format!("unbanned from the console by {}", identity.user);
    match record(console, &identity.user, BanAction::Unban, net, reason, None).await {
        Ok(_) => redirect("/bans"),
        Err(error) => super::server_error(&error),
    }
}
