//! HTML building blocks: escaping, the page frame, the embedded assets, the timeline chart.
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::SystemTime;

use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};

use super::Body;
use super::auth::Identity;
use crate::fleet::central::TimelineBucket;

const STYLE: &str = include_str!("assets/console.css");
const SCRIPT: &str = include_str!("assets/console.js");

/// `text` safe inside an element or a quoted attribute.
pub(crate) fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `text` as one component of a URL path or query.
pub(crate) fn url(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// A time as a page shows it: relative, with the exact UTC time on hover.
pub(crate) fn when(text: &str, now: SystemTime) -> String {
    match crate::time::parse_time(text) {
        Some(time) => {
            format!(
                "<time datetime=\"{}\" title=\"{}\">{}</time>",
                esc(text),
                esc(text),
                esc(&crate::time::relative(time, now))
            )
        }
        None => esc(text),
    }
}

/// Which tab of the navigation bar is the current page's.
#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Tab {
    Fleet,
    Alerts,
    Bans,
    None,
}

/// A whole page: the navigation bar (with the logout form), `title` and `body`.
pub(crate) fn page(identity: &Identity, tab: Tab, title: &str, body: &str) -> Response<Body> {
    let csrf = identity.csrf.as_deref().unwrap_or("");
    let link = |id: &str, href: &str, label: &str, this: Tab| {
        let current = if tab == this { " aria-current=\"page\"" } else { "" };
        format!("<a id=\"{id}\" href=\"{href}\"{current}>{label}</a>")
    };
    let html = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\">\
         <meta name=\"csrf\" content=\"{csrf}\"><title>{title} · ids fleet</title>\
         <link rel=\"stylesheet\" href=\"/static/console.css\"><script src=\"/static/console.js\" defer></script></head>\
         <body><header><span class=\"brand\">ids fleet</span><nav>{fleet}{alerts}{bans}</nav>\
         <form class=\"logout\" method=\"post\" action=\"/logout\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <span class=\"user\">{user}</span> <button id=\"logout\" type=\"submit\">Log out</button></form></header>\
         <main>{body}</main></body></html>\n",
        csrf = esc(csrf),
        title = esc(title),
        fleet = link("nav-fleet", "/", "Fleet", Tab::Fleet),
        alerts = link("nav-alerts", "/alerts", "Alerts", Tab::Alerts),
        bans = link("nav-bans", "/bans", "Bans", Tab::Bans),
        user = esc(&identity.user),
    );
    html_response(StatusCode::OK, html)
}

pub(crate) fn html_response(code: StatusCode, html: String) -> Response<Body> {
    let mut response = Response::new(Body::from(html));
    *response.status_mut() = code;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    response
}

/// `GET /static/NAME`: the stylesheet and the script, built into the binary.
pub(crate) fn asset(name: &str) -> Response<Body> {
    let (body, content_type) = match name {
        "console.css" => (STYLE, "text/css; charset=utf-8"),
        "console.js" => (SCRIPT, "text/javascript; charset=utf-8"),
        _ => return super::text(StatusCode::NOT_FOUND, "not found\n".into()),
    };
    let mut response = Response::new(Body::from(body.to_string()));
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // The assets change only with the binary.
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("max-age=3600"));
    response
}

/// The colour of a kind in the chart and its legend (CSS class `k-KIND`).
pub(crate) fn kind_class(kind: &str) -> String {
    let known = super::views::KINDS.contains(&kind);
    format!("k-{}", if known { kind } else { "other" })
}

/// Hours the timeline shows at most (two weeks): the newest of a longer range.
const TIMELINE_HOURS: usize = 14 * 24;
/// Hours it shows at least, ending with the newest alert's.
const MIN_TIMELINE_HOURS: usize = 24;

/// The timeline: one stacked bar per hour (UTC), a colour per kind, a legend; an SVG drawn here
/// so that the page needs no charting script.
pub(crate) fn timeline(buckets: &[TimelineBucket]) -> String {
    let parse = |hour: &str| humantime::parse_rfc3339_weak(&format!("{hour}:00:00Z")).ok();
    // Hours are cut from the hosts' alert times: one that is not a time is left out of the chart.
    let mut hours: BTreeMap<&str, BTreeMap<&str, i64>> = BTreeMap::new();
    for bucket in buckets.iter().filter(|bucket| bucket.hour.len() == 13 && parse(&bucket.hour).is_some()) {
        *hours.entry(bucket.hour.as_str()).or_default().entry(bucket.kind.as_str()).or_default() += bucket.count;
    }
    // Every hour from the first to the last, empty ones included, up to TIMELINE_HOURS.
    let (Some(first), Some(last)) = (hours.keys().next(), hours.keys().next_back()) else {
        return "<p class=\"empty\">No alerts match.</p>".to_string();
    };
    let (Some(start), Some(end)) = (parse(first), parse(last)) else {
        return "<p class=\"empty\">The alerts' times are not readable.</p>".to_string();
    };
    let span_hours = end.duration_since(start).map_or(0, |d| d.as_secs() / 3600) as usize + 1;
    // A day at least, so that a few hours of alerts read as bars, not as blocks.
    let shown = span_hours.clamp(MIN_TIMELINE_HOURS, TIMELINE_HOURS);
    let first_shown = end - std::time::Duration::from_secs(3600 * (shown as u64 - 1));
    let labels: Vec<String> = (0..shown)
        .map(|n| {
            let time = first_shown + std::time::Duration::from_secs(3600 * n as u64);
            humantime::format_rfc3339_seconds(time).to_string()[..13].to_string()
        })
        .collect();
    let max = labels
        .iter()
        .map(|hour| hours.get(hour.as_str()).map_or(0, |kinds| kinds.values().sum::<i64>()))
        .max()
        .unwrap_or(0)
        .max(1);
    let (width, height, left, bottom) = (960.0_f64, 180.0_f64, 40.0_f64, 20.0_f64);
    let bar = (width - left) / shown as f64;
    let mut svg = format!(
        "<svg id=\"timeline\" viewBox=\"0 0 {width} {height}\" role=\"img\" aria-label=\"alerts per hour by kind\" \
         data-hours=\"{shown}\" data-max=\"{max}\">"
    );
    let plot = height - bottom;
    let _ = write!(
        svg,
        "<text x=\"0\" y=\"12\" class=\"axis\">{max}</text><text x=\"0\" y=\"{plot}\" class=\"axis\">0</text>"
    );
    let mut kinds_seen: Vec<&str> = Vec::new();
    for (n, hour) in labels.iter().enumerate() {
        let x = left + n as f64 * bar;
        let mut y = plot;
        if let Some(kinds) = hours.get(hour.as_str()) {
            for (kind, count) in kinds {
                if !kinds_seen.contains(kind) {
                    kinds_seen.push(kind);
                }
                let h = plot * (*count as f64) / (max as f64);
                y -= h;
                let _ = write!(
                    svg,
                    "<rect class=\"{}\" x=\"{x:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{h:.1}\"><title>{} {}:00 UTC: {count} {}</title></rect>",
                    kind_class(kind),
                    (bar - 1.0).max(0.5),
                    esc(&hour[..10]),
                    esc(&hour[11..]),
                    esc(kind),
                );
            }
        }
        // A label every so many bars, at midnight-aligned hours when the range is long.
        let every = (shown / 12).max(1);
        if n % every == 0 {
            let _ = write!(
                svg,
                "<text x=\"{x:.1}\" y=\"{height}\" class=\"axis\">{}h</text>",
                esc(&hour[5..13].replace('T', " "))
            );
        }
    }
    svg.push_str("</svg>");
    kinds_seen.sort_unstable();
    let legend: String = kinds_seen
        .iter()
        .map(|kind| format!("<span class=\"legend {}\">{}</span>", kind_class(kind), esc(kind)))
        .collect();
    let note = if span_hours > shown { format!(" (the newest {shown} of {span_hours} hours)") } else { String::new() };
    format!("<figure class=\"timeline\">{svg}<figcaption>Alerts per hour, UTC{note}: {legend}</figcaption></figure>")
}

/// A JSON value as nested lists, keys in bold: an alert "made readable".
pub(crate) fn readable(value: &serde_json::Value) -> String {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            let mut out = String::from("<dl>");
            for (key, value) in map {
                let _ = write!(out, "<dt>{}</dt><dd>{}</dd>", esc(key), readable(value));
            }
            out.push_str("</dl>");
            out
        }
        Value::Array(items) if items.is_empty() => "<span class=\"none\">none</span>".to_string(),
        Value::Array(items) => {
            let mut out = String::from("<ol>");
            for item in items {
                let _ = write!(out, "<li>{}</li>", readable(item));
            }
            out.push_str("</ol>");
            out
        }
        Value::String(text) => esc(text),
        Value::Null => "<span class=\"none\">none</span>".to_string(),
        other => esc(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_characters_are_escaped() {
        assert_eq!(
            esc("<script>alert(\"x\")</script>'&"),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&#39;&amp;"
        );
        let readable = readable(&serde_json::json!({"evidence": ["<img src=x onerror=alert(1)>"]}));
        assert!(!readable.contains("<img"), "{readable}");
    }

    #[test]
    fn the_timeline_has_a_bar_per_hour_and_a_rect_per_kind_present() {
        let bucket = |hour: &str, kind: &str, count| TimelineBucket { hour: hour.into(), kind: kind.into(), count };
        let svg = timeline(&[
            bucket("2026-12-05T10", "detect", 3),
            bucket("2026-12-05T10", "integrity", 1),
            bucket("2026-12-05T13", "detect", 2),
            bucket("yesterday", "detect", 9),
            bucket("2026-12-05Té", "detect", 9),
        ]);
        // A day ending with the last alert's hour.
        assert!(svg.contains("data-hours=\"24\""), "{svg}");
        assert!(svg.contains("data-max=\"4\""), "{svg}");
        assert_eq!(svg.matches("<rect").count(), 3, "{svg}");
        assert_eq!(timeline(&[]), "<p class=\"empty\">No alerts match.</p>");
    }
}
