//! `ids ban`, `ids unban`, `ids bans`, `ids alerts`: through the daemon's control socket, or, when
//! no daemon answers, on the store directly (bans then take effect when the daemon starts).
//!
//! Every answer is `{"ok": true, "data": ...}` or `{"ok": false, "error": "..."}`; `--json` prints
//! it as is (plus `"daemon": false` when no daemon answered), otherwise a table is printed.
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use serde_json::{Value, json};

use super::{BanDuration, BanError, BanNet, BanRequest, Bans, parse_duration};
use crate::config::Config;
use crate::control::{self, Request};

/// Nets per control request of a bulk ban (a request line is at most 64 KiB).
const CHUNK: usize = 500;

fn error(message: impl std::fmt::Display) -> Value {
    json!({"ok": false, "error": message.to_string()})
}

fn duration_of(text: Option<&str>) -> Result<BanDuration, String> {
    match text {
        None => Ok(BanDuration::Default),
        Some(text) => Ok(match parse_duration(text)? {
            Some(d) => BanDuration::For(d),
            None => BanDuration::Permanent,
        }),
    }
}

fn parse_nets(nets: &[String]) -> Result<Vec<BanNet>, BanError> {
    nets.iter().map(|n| BanNet::parse(n).map_err(BanError::from)).collect()
}

/// Answers one ban-related request with `bans` (in the daemon or offline).
pub fn answer(bans: &mut Bans, request: &Request) -> Value {
    let result: Result<Value, String> = (|| match request {
        Request::Ban { nets, duration, reason, force } => {
            let duration = duration_of(duration.as_deref())?;
            let nets = parse_nets(nets).map_err(|e| e.to_string())?;
            let requests = nets
                .into_iter()
                .map(|net| BanRequest { net, reason: reason.clone(), source: "manual".into(), duration, force: *force })
                .collect();
            let outcomes = bans.ban_all(requests).map_err(|e| e.to_string())?;
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
        Request::Alerts { limit } => {
            let alerts = bans.store().recent_alerts(*limit).map_err(|e| e.to_string())?;
            Ok(Value::Array(
                alerts
                    .into_iter()
                    .map(|a| json!({"time": a.time, "kind": a.kind, "item": a.item_id, "source": a.collector, "what": a.what}))
                    .collect(),
            ))
        }
        other => Err(format!("not a ban request: {other:?}")),
    })();
    match result {
        Ok(data) => json!({"ok": true, "data": data}),
        Err(message) => error(message),
    }
}

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
            None => match runtime.block_on(control::try_exchange(&socket, request))? {
                Some(response) => response,
                None => {
                    daemon = false;
                    let bans = offline.insert(Bans::open(config, None).context("opening the ban store")?);
                    answer(bans, request)
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
        match response.get("data") {
            Some(Value::Array(items)) => data.extend(items.iter().cloned()),
            Some(other) => data.push(other.clone()),
            None => {}
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
        Some(time) => format!("until {time}"),
        None => "permanently".into(),
    }
}

/// Reads a ban list: one address or prefix per line; blank lines and `#` comments are skipped.
fn read_list(path: &Path) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading ban list {}", path.display()))?;
    let mut nets = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let entry = line.split('#').next().unwrap_or("").trim();
        if entry.is_empty() {
            continue;
        }
        BanNet::parse(entry).map_err(|e| anyhow::anyhow!("{}: line {}: {e}", path.display(), number + 1))?;
        nets.push(entry.to_string());
    }
    Ok(nets)
}

pub struct BanArgs {
    pub nets: Vec<String>,
    pub file: Option<std::path::PathBuf>,
    pub duration: Option<String>,
    pub reason: Option<String>,
    pub force: bool,
}

pub fn ban(config: &Config, args: BanArgs, json: bool) -> anyhow::Result<ExitCode> {
    let prepared = (|| -> Result<Vec<Request>, String> {
        let mut nets = args.nets;
        if let Some(file) = &args.file {
            nets.extend(read_list(file).map_err(|e| format!("{e:#}"))?);
        }
        if nets.is_empty() {
            return Err("nothing to ban: give ADDR[/PREFIX] or --file".into());
        }
        // Refuse bad input before anything is sent or stored.
        parse_nets(&nets).map_err(|e| e.to_string())?;
        duration_of(args.duration.as_deref())?;
        let reason = args.reason.unwrap_or_else(|| "manual ban".into());
        if reason.trim().is_empty() {
            return Err("reason \"\": empty".into());
        }
        Ok(nets
            .chunks(CHUNK)
            .map(|chunk| Request::Ban {
                nets: chunk.to_vec(),
                duration: args.duration.clone(),
                reason: reason.clone(),
                force: args.force,
            })
            .collect())
    })();
    let response = match prepared {
        Ok(requests) => exchange(config, requests)?,
        Err(message) => error(message),
    };
    print(&response, json, |r| {
        let items = r["data"].as_array().cloned().unwrap_or_default();
        let mut out = String::new();
        if items.len() > 10 {
            let new = items.iter().filter(|i| i["created"] == true).count();
            out += &format!("banned {} ({} already banned)\n", new, items.len() - new);
        } else {
            for item in &items {
                let net = item["net"].as_str().unwrap_or("?");
                if item["created"] == true {
                    out += &format!("banned {net} {} ({})\n", until(&item["expires"]), item["reason"].as_str().unwrap_or(""));
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
        Err(e) => error(e),
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
        let mut out = format!(
            "{:<40} {:<14} {:<28} {:>10} {:>12}  {}\n",
            "address", "source", "expires", "packets", "bytes", "reason"
        );
        for ban in r["data"].as_array().into_iter().flatten() {
            out += &format!(
                "{:<40} {:<14} {:<28} {:>10} {:>12}  {}\n",
                ban["net"].as_str().unwrap_or("?"),
                ban["source"].as_str().unwrap_or("?"),
                ban["expires"].as_str().unwrap_or("permanent"),
                ban["packets"],
                ban["bytes"],
                ban["reason"].as_str().unwrap_or(""),
            );
        }
        if r["daemon"] == false {
            out += "the daemon is not running: counters are the last it stored\n";
        }
        out
    })
}

pub fn alerts(config: &Config, limit: usize, json: bool) -> anyhow::Result<ExitCode> {
    let response = exchange(config, vec![Request::Alerts { limit }])?;
    print(&response, json, |r| {
        let mut out = format!("{:<28} {:<12} {:<16} {:<40} {}\n", "time", "kind", "source", "item", "what");
        for alert in r["data"].as_array().into_iter().flatten() {
            out += &format!(
                "{:<28} {:<12} {:<16} {:<40} {}\n",
                alert["time"].as_str().unwrap_or("?"),
                alert["kind"].as_str().unwrap_or("?"),
                alert["source"].as_str().unwrap_or("?"),
                alert["item"].as_str().unwrap_or("?"),
                alert["what"],
            );
        }
        out
    })
}

/// `ids xdp detach`: removes the pinned links (the program leaves the interfaces) and maps.
pub fn detach(config: &Config, json: bool) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let response = if runtime.block_on(control::try_exchange(&config.control_socket(), &Request::Status))?.is_some() {
        error(format!(
            "the daemon answers on {}; stop it before detaching",
            config.control_socket().display()
        ))
    } else {
        match super::kernel::remove_pins(&config.xdp.pin_dir) {
            Ok(removed) => json!({"ok": true, "data": {"pin_dir": config.xdp.pin_dir, "removed": removed}}),
            Err(e) => error(format!("{e:#}")),
        }
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
        };
        Bans::with_store(Store::open_in_memory().unwrap(), None, vec![BanNet::parse("127.0.0.0/8").unwrap()], config)
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
        assert!(refused["error"].as_str().unwrap().contains("trusted"), "{refused}");
        let refused = answer(&mut bans, &ban(&["10.0.0.2"], Some("-1h"), "test"));
        assert!(refused["error"].as_str().unwrap().contains("negative"), "{refused}");
        assert_eq!(answer(&mut bans, &Request::Bans)["data"].as_array().unwrap().len(), 2);
        let unbanned = answer(&mut bans, &Request::Unban { nets: vec!["10.0.0.1".into()] });
        assert_eq!(unbanned["data"][0]["removed"], true, "{unbanned}");
        let alerts = answer(&mut bans, &Request::Alerts { limit: 5 });
        assert_eq!(alerts["ok"], true);
        assert!(alerts["data"].as_array().unwrap().is_empty(), "manual bans raise no alert: {alerts}");
    }
}
