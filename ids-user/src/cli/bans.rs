//! `ids ban`, `ids unban`, `ids bans`: through the daemon's control socket, or, when
//! no daemon answers, on the store directly (bans then take effect when the daemon starts).
//!
//! Every answer is `{"ok": true, "data": ...}` or `{"ok": false, "error": "..."}`; `--json` prints
//! it as is (plus `"daemon": false` when no daemon answered), otherwise a table is printed.
//!
//! A ban list too long for one control request (64 KiB) is sent as a bulk ban in parts: the first
//! net of each part is a marker `bulk:TOKEN:PART:PARTS[:summary]` ([`BULK_MARKER`]); the daemon
//! checks each part as it comes and applies the whole list with the last one ([`Bans::ban_part`]),
//! so a refusal anywhere leaves everything as it was. With `:summary` (the CLI without `--json`,
//! which prints counts only) the last answer's `data` is `[{"banned": N, "new": M}]` instead of
//! one row per net.
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use serde_json::{Value, json};

use crate::alert::AlertSink;
use crate::bans::{BanNet, Bans};
use crate::cli::render::{self, Table};
use crate::cli::with_root_hint;
use crate::config::Config;
use crate::control::bans::{BULK_MARKER, answer, duration_of, parse_nets};
use crate::control::refusal;
use crate::control::{self, Request};
use crate::error_text::one_line;

/// Longest control request the CLI sends (the daemon takes lines of at most 64 KiB).
const REQUEST_BYTES: usize = 60 * 1024;

/// Sends `requests` to the daemon, or answers them from the store when none runs. The answers'
/// `data` arrays are joined; the first refusal stops.
fn exchange(config: &Config, requests: Vec<Request>) -> anyhow::Result<Value> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let socket = config.control_socket();
    let mut data = Vec::new();
    let mut daemon = true;
    let mut offline: Option<Bans> = None;
    for request in &requests {
        let response = match offline.as_mut() {
            // A daemon that is there but cannot be talked to (no permission) is an error, never a
            // reason to write its store behind its back.
            None => match runtime.block_on(control::try_exchange(&socket, request)) {
                Err(e) => return Ok(refusal(one_line(with_root_hint(e).as_ref()))),
                Ok(Some(response)) => response,
                Ok(None) => {
                    daemon = false;
                    let opened =
                        Bans::open(&config.state_dir, &config.xdp, &config.bans, None, AlertSink::new(None, None))
                            .context("no daemon answered; opening the ban store");
                    match opened {
                        Ok(bans) => answer(offline.insert(bans), request),
                        Err(e) => return Ok(refusal(one_line(with_root_hint(e).as_ref()))),
                    }
                }
            },
            Some(bans) => answer(bans, request),
        };
        if response["ok"] != true {
            let mut response = response;
            if !daemon {
                response["daemon"] = false.into();
            }
            return Ok(response);
        }
        if let Value::Object(mut fields) = response {
            match fields.remove("data") {
                Some(Value::Array(items)) => data.extend(items),
                Some(other) => data.push(other),
                None => {}
            }
        }
    }
    let mut out = json!({"ok": true, "data": data});
    if !daemon {
        out["daemon"] = false.into();
    }
    Ok(out)
}

fn offline_note(response: &Value, config: &Config) -> String {
    if response["daemon"] == false {
        format!(
            "the daemon is not running: the change is recorded in {} and takes effect when it starts\n",
            config.database().display()
        )
    } else {
        String::new()
    }
}

fn print(response: &Value, json: bool, human: impl Fn(&Value) -> String) -> anyhow::Result<ExitCode> {
    if json {
        println!("{}", serde_json::to_string_pretty(response)?);
    } else if response["ok"] == true {
        print!("{}", human(response));
    } else {
        eprintln!("ids: {}", response["error"].as_str().unwrap_or("unknown error"));
    }
    Ok(if response["ok"] == true { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn until(expires: &Value) -> String {
    match expires.as_str() {
        Some(time) => format!("until {}", render::when(time, std::time::SystemTime::now())),
        None => "permanently".into(),
    }
}

/// Reads a ban list: one address or prefix per line; blank lines and `#` comments are skipped.
/// Returns each entry with where it came from (`FILE: line N`).
fn read_list(path: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading ban list {}", path.display()))?;
    let mut nets = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let entry = line.split('#').next().unwrap_or("").trim();
        if entry.is_empty() {
            continue;
        }
        let origin = format!("{}: line {}", path.display(), number + 1);
        BanNet::parse(entry).map_err(|e| anyhow::anyhow!("{origin}: {e}"))?;
        nets.push((entry.to_string(), origin));
    }
    Ok(nets)
}

/// Splits `nets` into control requests of at most [`REQUEST_BYTES`]: one plain request when they
/// fit, otherwise the parts of a bulk ban (see the module doc).
fn ban_requests(
    nets: Vec<String>,
    duration: Option<String>,
    reason: String,
    force: bool,
    summary: bool,
) -> Result<Vec<Request>, String> {
    let request = |nets: Vec<String>| Request::Ban { nets, duration: duration.clone(), reason: reason.clone(), force };
    let size = |nets: &[String]| nets.iter().map(|n| n.len() + 3).sum::<usize>();
    let empty = serde_json::to_vec(&request(Vec::new())).map_err(|e| e.to_string())?.len();
    if empty + size(&nets) <= REQUEST_BYTES {
        return Ok(vec![request(nets)]);
    }
    let token = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos()
    );
    // Room for the marker with the longest part numbers.
    let budget = REQUEST_BYTES.saturating_sub(empty + BULK_MARKER.len() + token.len() + 2 * 20 + 8);
    if budget < 64 {
        return Err(format!("reason of {} bytes: too long for a bulk ban", reason.len()));
    }
    let mut chunks: Vec<Vec<String>> = Vec::new();
    let mut used = budget;
    for net in nets {
        if used + net.len() + 3 > budget {
            chunks.push(Vec::new());
            used = 0;
        }
        used += net.len() + 3;
        chunks.last_mut().expect("a chunk was pushed").push(net);
    }
    let parts = chunks.len();
    Ok(chunks
        .into_iter()
        .enumerate()
        .map(|(i, chunk)| {
            let mut nets = Vec::with_capacity(chunk.len() + 1);
            let suffix = if summary { ":summary" } else { "" };
            nets.push(format!("{BULK_MARKER}{token}:{}:{parts}{suffix}", i + 1));
            nets.extend(chunk);
            request(nets)
        })
        .collect())
}

pub struct BanArgs {
    pub nets: Vec<String>,
    pub file: Option<std::path::PathBuf>,
    pub duration: Option<String>,
    pub reason: Option<String>,
    pub force: bool,
}

pub fn ban(config: &Config, args: BanArgs, json: bool) -> anyhow::Result<ExitCode> {
    let mut origins: Vec<String> = Vec::new();
    let prepared = (|| -> Result<Vec<Request>, String> {
        let mut nets = Vec::with_capacity(args.nets.len());
        for (i, net) in args.nets.into_iter().enumerate() {
            // Refuse bad input before anything is sent or stored.
            BanNet::parse(&net).map_err(|e| e.to_string())?;
            nets.push(net);
            origins.push(format!("argument {}", i + 1));
        }
        if let Some(file) = &args.file {
            for (net, origin) in read_list(file).map_err(|e| one_line(e.as_ref()))? {
                nets.push(net);
                origins.push(origin);
            }
        }
        if nets.is_empty() {
            return Err("nothing to ban: give ADDR[/PREFIX] or --file".into());
        }
        duration_of(args.duration.as_deref())?;
        let reason = args.reason.unwrap_or_else(|| "manual ban".into());
        if reason.trim().is_empty() {
            return Err("reason \"\": empty".into());
        }
        ban_requests(nets, args.duration, reason, args.force, !json)
    })();
    let mut response = match prepared {
        Ok(requests) => exchange(config, requests)?,
        Err(message) => refusal(message),
    };
    // A refusal names the entry: its line in the list, or its place among the arguments.
    if let Some(origin) = response.get("index").and_then(Value::as_u64).and_then(|i| origins.get(i as usize)) {
        let message = format!("{origin}: {}; nothing was banned", response["error"].as_str().unwrap_or("refused"));
        response["error"] = message.into();
    }
    print(&response, json, |r| {
        let items = r["data"].as_array().cloned().unwrap_or_default();
        let mut out = String::new();
        if let (Some(banned), Some(new)) =
            (items.first().and_then(|i| i["banned"].as_u64()), items.first().and_then(|i| i["new"].as_u64()))
        {
            out += &format!("banned {banned} ({} already banned)\n", banned - new);
        } else if items.len() > 10 {
            let new = items.iter().filter(|i| i["created"] == true).count();
            out += &format!("banned {} ({} already banned)\n", new, items.len() - new);
        } else {
            for item in &items {
                let net = item["net"].as_str().unwrap_or("?");
                if item["created"] == true {
                    out += &format!(
                        "banned {net} {} ({})\n",
                        until(&item["expires"]),
                        item["reason"].as_str().unwrap_or("")
                    );
                } else {
                    out += &format!("{net} was already banned; now {}\n", until(&item["expires"]));
                }
            }
        }
        out + &offline_note(r, config)
    })
}

pub fn unban(config: &Config, nets: Vec<String>, json: bool) -> anyhow::Result<ExitCode> {
    let response = match parse_nets(&nets) {
        Ok(_) => exchange(config, vec![Request::Unban { nets }])?,
        Err(e) => refusal(e),
    };
    print(&response, json, |r| {
        let mut out = String::new();
        for item in r["data"].as_array().into_iter().flatten() {
            let net = item["net"].as_str().unwrap_or("?");
            if item["removed"] == true {
                out += &format!("unbanned {net}\n");
            } else {
                out += &format!("{net} was not banned\n");
            }
        }
        out + &offline_note(r, config)
    })
}

pub fn list(config: &Config, json: bool) -> anyhow::Result<ExitCode> {
    let response = exchange(config, vec![Request::Bans])?;
    print(&response, json, |r| {
        let now = std::time::SystemTime::now();
        let mut table =
            Table::new(&["address", "source", "expires", "packets", "bytes", "reason"]).right(&["packets", "bytes"]);
        for ban in r["data"].as_array().into_iter().flatten() {
            table.row(vec![
                ban["net"].as_str().unwrap_or("?").into(),
                ban["source"].as_str().unwrap_or("?").into(),
                render::expiry(ban["expires"].as_str(), now).into(),
                ban["packets"].to_string().into(),
                ban["bytes"].to_string().into(),
                reason_of(ban).into(),
            ]);
        }
        let mut out = table.render(render::stdout_colour());
        if r["daemon"] == false {
            out += "the daemon is not running: counters are the last it stored\n";
        }
        out
    })
}

/// The last column of `ids bans`: the ban's reason and, when its duration escalated with the
/// address's offences, why it lasts that long (`5 failed logins [3rd offence: 10m doubled twice = 40m]`).
fn reason_of(ban: &Value) -> String {
    let reason = ban["reason"].as_str().unwrap_or("");
    match ban["escalation"]["reason"].as_str() {
        Some(why) => format!("{reason} [{why}]"),
        None => reason.to_string(),
    }
}

/// `ids xdp detach`: removes the pinned links (the program leaves the interfaces) and maps.
pub fn detach(config: &Config, json: bool) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let response = match runtime.block_on(control::try_exchange(&config.control_socket(), &Request::Status)) {
        Err(e) => refusal(one_line(with_root_hint(e).as_ref())),
        Ok(Some(_)) => {
            refusal(format!("the daemon answers on {}; stop it before detaching", config.control_socket().display()))
        }
        Ok(None) => match crate::bans::kernel::remove_pins(&config.xdp.pin_dir) {
            Ok(removed) => json!({"ok": true, "data": {"pin_dir": config.xdp.pin_dir, "removed": removed}}),
            Err(e) => refusal(one_line(with_root_hint(e).as_ref())),
        },
    };
    print(&response, json, |r| {
        format!(
            "removed {} pins under {}\n",
            r["data"]["removed"].as_array().map_or(0, |a| a.len()),
            config.xdp.pin_dir.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bans::BansConfig;
    use crate::store::Store;
    use std::time::Duration;

    fn bans() -> Bans {
        let config = BansConfig {
            default_duration: None,
            scan_duration: None,
            max_duration: Duration::from_secs(86_400),
            detect_duration: Duration::from_secs(600),
            manual_counts_as_offence: false,
        };
        Bans::with_store(
            Store::open_in_memory().unwrap(),
            None,
            vec![BanNet::parse("127.0.0.0/8").unwrap()],
            config,
            crate::alert::AlertSink::new(None, None),
        )
    }

    fn ban(nets: &[&str], duration: Option<&str>, reason: &str) -> Request {
        Request::Ban {
            nets: nets.iter().map(|n| n.to_string()).collect(),
            duration: duration.map(String::from),
            reason: reason.into(),
            force: false,
        }
    }

    #[test]
    fn bulk_ban_refused_in_its_last_part_bans_nothing_and_names_the_entry() {
        let mut bans = bans();
        let nets: Vec<String> =
            (0..20_000).map(|i| format!("10.{}.{}.1", i / 256, i % 256)).chain(["127.0.0.9".into()]).collect();
        let requests = ban_requests(nets, None, "bulk test".into(), false, false).unwrap();
        assert!(requests.len() > 2, "20,001 nets fit in {} requests", requests.len());
        let mut last = Value::Null;
        for request in &requests {
            assert!(serde_json::to_vec(request).unwrap().len() < 64 * 1024);
            last = answer(&mut bans, request);
            if last["ok"] != true {
                break;
            }
            assert_eq!(last["data"], json!([]), "a part before the last applied something: {last}");
        }
        assert_eq!(last["ok"], false, "{last}");
        assert_eq!(last["index"], 20_000, "{last}");
        assert!(last["error"].as_str().unwrap().contains("127.0.0.9"), "{last}");
        assert!(bans.list().unwrap().is_empty(), "a refused bulk ban left bans behind");
    }

    #[test]
    fn bulk_ban_applies_whole_with_its_last_part() {
        let mut bans = bans();
        let nets: Vec<String> = (0..10_000).map(|i| format!("10.{}.{}.2", i / 256, i % 256)).collect();
        let requests = ban_requests(nets.clone(), Some("1h".into()), "bulk test".into(), false, true).unwrap();
        assert!(requests.len() > 1);
        let answers: Vec<Value> = requests.iter().map(|r| answer(&mut bans, r)).collect();
        assert_eq!(answers.last().unwrap()["data"], json!([{"banned": 10_000, "new": 10_000}]));
        assert_eq!(bans.list().unwrap().len(), 10_000);
        // Again, without the summary: one row per net, none new.
        let requests = ban_requests(nets, Some("2h".into()), "bulk test".into(), false, false).unwrap();
        let last = requests.iter().map(|r| answer(&mut bans, r)).last().unwrap();
        assert_eq!(last["data"].as_array().unwrap().len(), 10_000);
        assert_eq!(last["data"][0]["created"], false);
    }

    #[test]
    fn bulk_ban_parts_out_of_order_or_replaced_are_refused() {
        let mut bans = bans();
        let nets: Vec<String> = (0..10_000).map(|i| format!("10.{}.{}.3", i / 256, i % 256)).collect();
        let first = ban_requests(nets.clone(), None, "a".into(), false, true).unwrap();
        let second = ban_requests(nets, None, "b".into(), false, true).unwrap();
        assert_eq!(answer(&mut bans, &first[0])["ok"], true);
        let skipped = answer(&mut bans, &first[2]);
        assert!(skipped["error"].as_str().unwrap().contains("part 3"), "{skipped}");
        assert_eq!(answer(&mut bans, &first[0])["ok"], true);
        assert_eq!(answer(&mut bans, &second[0])["ok"], true);
        let replaced = answer(&mut bans, &first[1]);
        assert!(replaced["error"].as_str().unwrap().contains("not under way"), "{replaced}");
        let bad = answer(&mut bans, &ban(&["bulk:x:2:1", "10.0.0.1"], None, "test"));
        assert!(bad["error"].as_str().unwrap().contains("marker"), "{bad}");
        assert!(bans.list().unwrap().is_empty());
    }

    #[test]
    fn answers_are_ok_and_data_or_an_error() {
        let mut bans = bans();
        let banned = answer(&mut bans, &ban(&["10.0.0.1", "fd00::/64"], Some("10m"), "test"));
        assert_eq!(banned["ok"], true, "{banned}");
        assert_eq!(banned["data"][0]["net"], "10.0.0.1");
        assert_eq!(banned["data"][0]["created"], true);
        assert!(banned["data"][0]["expires"].is_string());
        assert_eq!(banned["data"][1]["net"], "fd00::/64");
        let listed = answer(&mut bans, &Request::Bans);
        assert_eq!(listed["data"].as_array().unwrap().len(), 2, "{listed}");
        assert_eq!(listed["data"][0]["packets"], 0);
        let refused = answer(&mut bans, &ban(&["10.0.0.2", "127.0.0.1"], None, "test"));
        assert_eq!(refused["ok"], false);
        assert_eq!(refused["index"], 1, "{refused}");
        assert!(refused["error"].as_str().unwrap().contains("trusted"), "{refused}");
        let refused = answer(&mut bans, &ban(&["10.0.0.2"], Some("-1h"), "test"));
        assert!(refused["error"].as_str().unwrap().contains("negative"), "{refused}");
        assert_eq!(answer(&mut bans, &Request::Bans)["data"].as_array().unwrap().len(), 2);
        let unbanned = answer(&mut bans, &Request::Unban { nets: vec!["10.0.0.1".into()] });
        assert_eq!(unbanned["data"][0]["removed"], true, "{unbanned}");
        let alerts = answer(
            &mut bans,
            &Request::Alerts { limit: 5, kinds: Vec::new(), since: None, min_severity: None, after_id: None },
        );
        assert_eq!(alerts["ok"], true);
        assert!(alerts["data"].as_array().unwrap().is_empty(), "manual bans raise no alert: {alerts}");
    }

    #[test]
    fn the_reason_column_says_why_an_escalated_ban_lasts_so_long() {
        let escalated = json!({"reason": "5 failed logins", "escalation": {"offence": 3, "base": "10m",
            "duration": "40m", "reason": "3rd offence: 10m doubled twice = 40m"}});
        assert_eq!(reason_of(&escalated), "5 failed logins [3rd offence: 10m doubled twice = 40m]");
        assert_eq!(reason_of(&json!({"reason": "manual ban"})), "manual ban");
    }
}
