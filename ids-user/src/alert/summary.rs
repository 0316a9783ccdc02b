//! One line that says what an alert is about, for people: `ids alerts`, the outputs and the
//! fleet console show the same words.
use std::time::SystemTime;

use serde_json::Value;

/// One line that says what an alert is about, by kind:
/// `integrity /etc/hosts: content, mtime changed by tee (pid 12) ← bash ← sshd: root from 10.0.0.3`,
/// `ssh brute force from 192.0.2.9: 12 failures in 60 s, banned 1 h`.
pub(crate) fn summary(alert: &Value, now: SystemTime) -> String {
    let text = |key: &str| alert[key].as_str().unwrap_or("?").to_string();
    match alert["kind"].as_str().unwrap_or_default() {
        kind @ ("integrity" | "sensor_miss") => {
            let id = text("id");
            let item = id.strip_prefix("file:").unwrap_or(&id);
            let mut line = format!("{kind} {item}: {}", change_of(alert));
            if kind == "sensor_miss" && alert["changed_by"].as_array().is_none_or(Vec::is_empty) {
                line += " (no kernel event explained it)";
            }
            line
        }
        "detect" => detect_summary(alert),
        "remote_check" => {
            let outcome = ["error", "result", "reply", "code"]
                .iter()
                .find_map(|key| alert[*key].as_str().filter(|s| !s.is_empty()).map(|s| format!("{key} {s}")))
                .unwrap_or_else(|| "no OK".to_string());
            format!("remote check by {}: {outcome}", text("server"))
        }
        "ban" => {
            let mut line = format!("ban {} by {}: {}", text("net"), text("source"), text("reason"));
            match alert["expires"].as_str() {
                Some(expires) => match crate::time::parse_time(expires) {
                    Some(time) => {
                        line += &format!(
                            ", until {} ({})",
                            crate::time::local(time, false),
                            crate::time::relative(time, now)
                        )
                    }
                    None => line += &format!(", until {expires}"),
                },
                None => line += ", permanent",
            }
            if let Some(offence) = alert["offence"].as_u64().filter(|n| *n > 1) {
                line += &format!(" (offence {offence})");
            }
            line
        }
        other => format!("{other}: {}", alert),
    }
}

/// `content, mtime changed by vim (pid 812) ← bash ← sshd: alice from 198.18.0.2 (+1 more)`.
fn change_of(alert: &Value) -> String {
    let attributes: Vec<&str> =
        alert["attributes"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    let mut line = match alert["change"].as_str().unwrap_or("changed") {
        "changed" if !attributes.is_empty() => format!("{} changed", attributes.join(", ")),
        change => change.to_string(),
    };
    if let Some(writer) = alert["changed_by"].get(0) {
        line += &format!(" by {}", crate::process::one_line(&writer["process"]));
        let more = alert["changed_by"].as_array().map_or(0, |all| all.len() - 1);
        if more > 0 {
            line += &format!(" (+{more} more)");
        }
    }
    line
}

fn detect_summary(alert: &Value) -> String {
    let text = |key: &str| alert[key].as_str().unwrap_or("?").to_string();
    let action = match alert["action"]["type"].as_str() {
        Some("ban_requested") => {
            let length = crate::time::ban_length(alert["action"]["duration_s"].as_u64().unwrap_or(0));
            let offence = alert["action"]["offence"].as_u64().filter(|n| *n > 1);
            format!(", banned {length}{}", offence.map(|n| format!(" (offence {n})")).unwrap_or_default())
        }
        Some("not_banned_trusted") => ", not banned: trusted".to_string(),
        Some("ban_not_delivered") => {
            format!(", ban not applied: {}", alert["action"]["reason"].as_str().unwrap_or("?"))
        }
        _ => String::new(),
    };
    let window = match (alert["count"].as_u64(), alert["window_s"].as_u64()) {
        (Some(count), Some(window)) => Some((count, window)),
        _ => None,
    };
    match (alert["detector"].as_str().unwrap_or_default(), alert["source"].as_str(), window) {
        ("ssh-bruteforce", Some(source), Some((count, window))) => {
            format!("ssh brute force from {source}: {count} failures in {window} s{action}")
        }
        ("web-attack", Some(source), Some((count, window))) => {
            format!("web attack from {source}: {count} requests matching {} in {window} s{action}", text("rule"))
        }
        ("webshell", _, _) => format!("webshell {}: {} ({})", text("path"), text("description"), text("rule")),
        ("webserver-exec", _, _) if alert["process"].is_object() => {
            format!("{}: {}{action}", text("description"), crate::process::one_line(&alert["process"]))
        }
        (detector, source, _) => {
            let from = source.map(|s| format!(" from {s}")).unwrap_or_default();
            format!("{detector} {}{from}: {}{action}", text("rule"), text("description"))
        }
    }
}
