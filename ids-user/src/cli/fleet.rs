//! `ids collect` and `ids fleet hosts|alerts|bans|ban|unban`: the central side of the fleet,
//! reading and writing the `[collect] database` directly (docs/fleet-central.md).
//!
//! With `--json` every answer is `{"ok": true, "data": ...}` or `{"ok": false, "error": "..."}`
//! (`ids fleet alerts --follow --json` prints one such document per line, each with the alerts
//! that arrived since the last).
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::render::{self, Cell, Style, Table};
use crate::bans::BanNet;
use crate::fleet::central::{AlertFilter, AlertRecord, CentralStore, HostRecord, rfc3339};
use crate::fleet::collector;
use crate::fleet::message::{BanAction, BanDecision};
use crate::fleet::{CentralDatabase, CollectConfig};

#[derive(Debug, Subcommand)]
pub(super) enum FleetCommand {
    /// Every host the collector heard of: status (ok, silent), last sequence number, gaps, backlog.
    Hosts {
        #[command(flatten)]
        common: super::Common,
        /// Print {"ok", "data": [{"host", "hostname", "status", "last_seen", "last_seq", "gaps", "backlog", ...}]}.
        #[arg(long)]
        json: bool,
    },
    /// The fleet's alerts, newest last.
    Alerts(AlertsArgs),
    /// The fleet bans in force.
    Bans {
        #[command(flatten)]
        common: super::Common,
        /// Print {"ok", "data": [{"rev", "action", "net", "reason", "origin", "expires", "time"}]}.
        #[arg(long)]
        json: bool,
    },
    /// Ban an address or prefix on every host of the fleet.
    Ban {
        #[command(flatten)]
        common: super::Common,
        /// ADDR or ADDR/PREFIX, IPv4 or IPv6.
        net: String,
        /// How long: 90s, 10m, 1h, 7d, permanent.
        #[arg(long = "for", value_name = "DURATION", default_value = "1h", allow_hyphen_values = true)]
        duration: String,
        /// Why (shown by `ids fleet bans` and on every host).
        #[arg(long)]
        reason: Option<String>,
        /// Allow prefixes broader than /8 (IPv4) or /16 (IPv6).
        #[arg(long)]
        force: bool,
        /// Print {"ok", "data": the decision, with "published"} or {"ok": false, "error"}.
        #[arg(long)]
        json: bool,
    },
    /// Users of the web console ([collect.web]): add (or set the password of), delete, list.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// API tokens of the web console (Authorization: Bearer TOKEN under /api/): add, delete, list.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Lift a fleet ban on every host.
    Unban {
        #[command(flatten)]
        common: super::Common,
        /// ADDR or ADDR/PREFIX, as banned.
        net: String,
        /// Print {"ok", "data": the decision, with "published" and "was_active"} or {"ok": false, "error"}.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub(super) enum UserCommand {
    /// Add a console user, or set an existing one's password (their sessions end).
    Add {
        #[command(flatten)]
        common: super::Common,
        /// The user's name (letters, digits, '.', '_', '-', '@').
        name: String,
        /// Read the password from the first line of FILE (`-`: standard input) instead of asking.
        #[arg(long, value_name = "FILE")]
        password_file: Option<std::path::PathBuf>,
    },
    /// Delete a console user (their sessions end).
    Del {
        #[command(flatten)]
        common: super::Common,
        /// The user's name.
        name: String,
    },
    /// List the console users.
    List {
        #[command(flatten)]
        common: super::Common,
        /// Print {"ok", "data": [{"name", "created"}]}.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub(super) enum TokenCommand {
    /// Make an API token: its secret is printed once, only its SHA-256 is stored.
    Add {
        #[command(flatten)]
        common: super::Common,
        /// The token's name (who uses it: a SIEM, a script).
        name: String,
    },
    /// Delete an API token.
    Del {
        #[command(flatten)]
        common: super::Common,
        /// The token's name.
        name: String,
    },
    /// List the API tokens (names, never secrets).
    List {
        #[command(flatten)]
        common: super::Common,
        /// Print {"ok", "data": [{"name", "created"}]}.
        #[arg(long)]
        json: bool,
    },
}

/// Console user names: what a login form takes and a log line shows plainly.
fn check_user_name(name: &str) -> anyhow::Result<()> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "._-@".contains(c))
        && !name.starts_with("cert:")
        && !name.starts_with("token:");
    anyhow::ensure!(valid, "user name {name:?}: 1 to 64 of letters, digits, '.', '_', '-', '@'");
    Ok(())
}

/// The password of `ids fleet user add`: from a file, standard input, or asked twice.
fn read_password(file: Option<&std::path::Path>) -> anyhow::Result<String> {
    use anyhow::Context as _;
    let password = match file {
        Some(path) if path == std::path::Path::new("-") => {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).context("reading the password from standard input")?;
            line.trim_end_matches(['\n', '\r']).to_string()
        }
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the password from {}", path.display()))?;
            text.lines().next().unwrap_or("").to_string()
        }
        None => {
            let first = rpassword::prompt_password("Password: ").context("reading the password")?;
            let again = rpassword::prompt_password("Again: ").context("reading the password")?;
            anyhow::ensure!(first == again, "the two passwords differ");
            first
        }
    };
    anyhow::ensure!(password.chars().count() >= 10, "the password is too short: 10 characters at least");
    Ok(password)
}

fn names_json(pairs: Vec<(String, String)>) -> Value {
    Value::Array(pairs.into_iter().map(|(name, created)| json!({"name": name, "created": created})).collect())
}

fn human_names(data: &Value) -> String {
    let mut table = Table::new(&["name", "created"]);
    for entry in data.as_array().into_iter().flatten() {
        table.row(vec![
            Cell::from(text(entry, "name").to_string()),
            Cell::from(render::when(text(entry, "created"), SystemTime::now())),
        ]);
    }
    table.render(render::stdout_colour())
}

fn user_command(command: UserCommand) -> anyhow::Result<ExitCode> {
    match command {
        UserCommand::Add { common, name, password_file } => {
            check_user_name(&name)?;
            let config = collect_config(&common)?;
            let password = read_password(password_file.as_deref())?;
            let hash = crate::fleet::web::hash_password(&password)?;
            let existed = open(&config, true)?.set_console_user(&name, &hash, &rfc3339(SystemTime::now()))?;
            println!("{} console user {name}", if existed { "password changed for" } else { "added" });
        }
        UserCommand::Del { common, name } => {
            let config = collect_config(&common)?;
            anyhow::ensure!(open(&config, false)?.delete_console_user(&name)?, "no console user {name:?}");
            println!("deleted console user {name}");
        }
        UserCommand::List { common, json } => {
            let result = (|| Ok(names_json(open(&collect_config(&common)?, false)?.console_users()?)))();
            return finish(result, json, human_names);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn token_command(command: TokenCommand) -> anyhow::Result<ExitCode> {
    match command {
        TokenCommand::Add { common, name } => {
            check_user_name(&name)?;
            let config = collect_config(&common)?;
            let token = crate::fleet::web::new_token();
            let stored = open(&config, true)?.add_console_token(
                &name,
                &crate::fleet::web::sha256_hex(&token),
                &rfc3339(SystemTime::now()),
            )?;
            anyhow::ensure!(stored, "an API token named {name:?} exists: delete it first");
            // The one time the secret is shown.
            println!("{token}");
        }
        TokenCommand::Del { common, name } => {
            let config = collect_config(&common)?;
            anyhow::ensure!(open(&config, false)?.delete_console_token(&name)?, "no API token {name:?}");
            println!("deleted API token {name}");
        }
        TokenCommand::List { common, json } => {
            let result = (|| Ok(names_json(open(&collect_config(&common)?, false)?.console_tokens()?)))();
            return finish(result, json, human_names);
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Args)]
pub(super) struct AlertsArgs {
    #[command(flatten)]
    common: super::Common,
    /// Only this host's alerts (its id).
    #[arg(long)]
    host: Option<String>,
    /// Only alerts of this kind (detect, integrity, ban, host_silent, ...).
    #[arg(long)]
    kind: Option<String>,
    /// Only alerts raised since: an RFC 3339 time, or a duration meaning that long ago (10m, 2h).
    #[arg(long)]
    since: Option<String>,
    /// How many (the newest).
    #[arg(short = 'n', default_value_t = 50)]
    n: usize,
    /// Keep printing new alerts as they are stored, until interrupted.
    #[arg(long)]
    follow: bool,
    /// Print {"ok", "data": [{"host", "hostname", "epoch", "seq", "time", "kind", "alert"}]}; with
    /// --follow, one such line per poll that found alerts.
    #[arg(long)]
    json: bool,
}

/// How often `--follow` looks for new alerts.
const FOLLOW_POLL: Duration = Duration::from_millis(200);

/// The `[collect]` section every central command needs.
fn collect_config(common: &super::Common) -> anyhow::Result<CollectConfig> {
    let config = common.load_config()?;
    config.collect.ok_or_else(|| {
        let origin = common
            .config_file()
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "the default configuration".into());
        anyhow::anyhow!(
            "{origin} has no [collect] section: the central commands need at least [collect] url and database"
        )
    })
}

/// Opens the central database; a SQLite file must exist already unless `create`.
fn open(config: &CollectConfig, create: bool) -> anyhow::Result<CentralStore> {
    if let CentralDatabase::Sqlite(path) = &config.database
        && !create
        && !path.exists()
    {
        anyhow::bail!("no central database at {} (has `ids collect` run with this configuration?)", path.display());
    }
    Ok(CentralStore::open(&config.database)?)
}

/// Prints `{"ok", "data"}` / `{"ok": false, "error"}` or the human form; the exit code follows.
fn finish(result: anyhow::Result<Value>, json: bool, human: impl Fn(&Value) -> String) -> anyhow::Result<ExitCode> {
    match result {
        Ok(data) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&json!({"ok": true, "data": data}))?);
            } else {
                print!("{}", human(&data));
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => {
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &json!({"ok": false, "error": crate::error_text::one_line(error.as_ref())})
                    )?
                );
            } else {
                eprintln!("ids: {}", crate::error_text::one_line(error.as_ref()));
            }
            Ok(ExitCode::FAILURE)
        }
    }
}

/// `ids collect`.
pub(super) fn collect(common: super::Common) -> anyhow::Result<ExitCode> {
    let config = collect_config(&common)?;
    super::init_logging();
    collector::run(config)?;
    Ok(ExitCode::SUCCESS)
}

pub(super) fn run(command: FleetCommand) -> anyhow::Result<ExitCode> {
    match command {
        FleetCommand::Hosts { common, json } => {
            let result = (|| {
                let hosts = open(&collect_config(&common)?, false)?.hosts()?;
                Ok(serde_json::to_value(hosts)?)
            })();
            finish(result, json, human_hosts)
        }
        FleetCommand::Alerts(args) => alerts(args),
        FleetCommand::User { command } => user_command(command),
        FleetCommand::Token { command } => token_command(command),
        FleetCommand::Bans { common, json } => {
            let result = (|| {
                let bans = open(&collect_config(&common)?, false)?.active_bans(&rfc3339(SystemTime::now()))?;
                Ok(serde_json::to_value(bans.iter().map(ban_json).collect::<Vec<_>>())?)
            })();
            finish(result, json, human_bans)
        }
        FleetCommand::Ban { common, net, duration, reason, force, json } => {
            let result = (|| {
                let config = collect_config(&common)?;
                let net = BanNet::parse(&net)?;
                if net.is_broad() && !force {
                    anyhow::bail!("{net} covers a large part of the address space; add --force to ban it fleet-wide");
                }
                let ban_for = crate::bans::parse_duration(&duration).map_err(|e| anyhow::anyhow!("--for: {e}"))?;
                let reason = reason.unwrap_or_else(|| "manual fleet ban".into());
                anyhow::ensure!(!reason.trim().is_empty(), "--reason: empty");
                let now = SystemTime::now();
                let expires = match ban_for {
                    Some(d) => Some(rfc3339(
                        now.checked_add(d)
                            .ok_or_else(|| anyhow::anyhow!("--for {duration:?}: too far in the future"))?,
                    )),
                    None => None,
                };
                let decision = open(&config, true)?.record_decision(
                    BanAction::Ban,
                    &net,
                    &reason,
                    "manual",
                    expires,
                    &rfc3339(now),
                )?;
                publish_recorded(&config, decision)
            })();
            finish(result, json, human_decision)
        }
        FleetCommand::Unban { common, net, json } => {
            let result = (|| {
                let config = collect_config(&common)?;
                let net = BanNet::parse(&net)?;
                let mut store = open(&config, true)?;
                let now = rfc3339(SystemTime::now());
                let was_active = store.active_bans(&now)?.iter().any(|ban| ban.net == net.to_string());
                let decision = store.record_decision(BanAction::Unban, &net, "manual unban", "manual", None, &now)?;
                let mut data = publish_recorded(&config, decision)?;
                data["was_active"] = was_active.into();
                Ok(data)
            })();
            finish(result, json, human_decision)
        }
    }
}

/// Publishes a recorded decision now and marks it published; when the broker cannot be
/// reached the decision stays recorded for the running collector to publish.
fn publish_recorded(config: &CollectConfig, decision: BanDecision) -> anyhow::Result<Value> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let published = runtime.block_on(async {
        let (connection, channel) = collector::publishing_channel(&config.broker, "ids fleet").await?;
        collector::publish_decision(&channel, &decision).await?;
        let _ = connection.close(200, "done".into()).await;
        anyhow::Ok(())
    });
    let mut data = ban_json(&decision);
    match published {
        Ok(()) => {
            open(config, true)?.mark_published(decision.rev)?;
            data["published"] = true.into();
        }
        Err(error) => {
            data["published"] = false.into();
            data["note"] = format!(
                "not published now ({}): the decision is recorded and the running collector publishes it",
                crate::error_text::one_line(error.as_ref())
            )
            .into();
        }
    }
    Ok(data)
}

fn ban_json(decision: &BanDecision) -> Value {
    json!({
        "rev": decision.rev,
        "action": decision.action,
        "net": decision.net,
        "reason": decision.reason,
        "origin": decision.origin,
        "expires": decision.expires,
        "time": decision.time,
    })
}

/// `--since`: an RFC 3339 time, or a duration back from now; as the database compares it.
fn parse_since(text: &str) -> anyhow::Result<String> {
    if let Ok(time) = humantime::parse_rfc3339_weak(text) {
        return Ok(rfc3339(time));
    }
    match humantime::parse_duration(text) {
        Ok(ago) => Ok(rfc3339(SystemTime::now().checked_sub(ago).unwrap_or(SystemTime::UNIX_EPOCH))),
        Err(_) => {
            anyhow::bail!("--since {text:?}: neither an RFC 3339 time (2026-12-05T10:00:00Z) nor a duration (10m, 2h)")
        }
    }
}

fn alerts(args: AlertsArgs) -> anyhow::Result<ExitCode> {
    let json = args.json;
    let prepared = (|| {
        let config = collect_config(&args.common)?;
        let filter = AlertFilter {
            host: args.host.clone(),
            kind: args.kind.clone(),
            since: args.since.as_deref().map(parse_since).transpose()?,
            limit: args.n,
            ..AlertFilter::default()
        };
        let mut store = open(&config, false)?;
        let first = store.alerts(&filter)?;
        anyhow::Ok((store, filter, first))
    })();
    let (mut store, mut filter, first) = match prepared {
        Ok(prepared) => prepared,
        Err(error) => return finish(Err(error), json, |_| String::new()),
    };
    if !args.follow {
        return finish(Ok(serde_json::to_value(&first)?), json, human_alerts);
    }
    // Follow: from the newest alert shown (or the newest stored) on, every alert as it comes.
    let mut last_id = match first.last() {
        Some(alert) => alert.id,
        None => store.newest_alert_id()?,
    };
    print_follow(&first, json)?;
    filter.limit = 10_000;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let interrupted = tokio::signal::ctrl_c();
        tokio::pin!(interrupted);
        loop {
            tokio::select! {
                _ = &mut interrupted => return anyhow::Ok(()),
                _ = tokio::time::sleep(FOLLOW_POLL) => {}
            }
            filter.after_id = Some(last_id);
            let new = store.alerts(&filter)?;
            if let Some(alert) = new.last() {
                last_id = alert.id;
                print_follow(&new, json)?;
            }
        }
    })?;
    Ok(ExitCode::SUCCESS)
}

fn print_follow(alerts: &[AlertRecord], json: bool) -> anyhow::Result<()> {
    use std::io::Write as _;
    if json {
        if !alerts.is_empty() {
            println!("{}", serde_json::to_string(&json!({"ok": true, "data": alerts}))?);
        }
    } else {
        print!("{}", human_alerts(&serde_json::to_value(alerts)?));
    }
    std::io::stdout().flush()?;
    Ok(())
}

fn text<'a>(value: &'a Value, key: &str) -> &'a str {
    value.get(key).and_then(Value::as_str).unwrap_or("-")
}

fn number(value: &Value, key: &str) -> String {
    value.get(key).filter(|v| !v.is_null()).map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

fn human_hosts(data: &Value) -> String {
    let hosts: Vec<HostRecord> = serde_json::from_value(data.clone()).unwrap_or_default();
    if hosts.is_empty() {
        return "no hosts yet\n".into();
    }
    let now = SystemTime::now();
    let mut table =
        Table::new(&["host", "hostname", "status", "last_seq", "gaps", "backlog", "last_seen", "aggregate"])
            .right(&["last_seq", "gaps", "backlog"]);
    for host in hosts {
        let status = if host.status == "ok" { Style::Plain } else { Style::Red };
        table.row(vec![
            host.host.into(),
            host.hostname.into(),
            Cell::styled(host.status, status),
            host.last_seq.to_string().into(),
            host.gaps.to_string().into(),
            host.backlog.to_string().into(),
            render::when(&host.last_seen, now).into(),
            host.aggregate
                .as_deref()
                .map(|a| a.chars().take(16).collect::<String>())
                .unwrap_or_else(|| "-".into())
                .into(),
        ]);
    }
    table.render(render::stdout_colour())
}

/// One line per alert: time, host, kind, and the alert's gist.
fn human_alerts(data: &Value) -> String {
    let mut out = String::new();
    for alert in data.as_array().into_iter().flatten() {
        let body = &alert["alert"];
        let gist = match text(alert, "kind") {
            "detect" | "ban" | "integrity" | "sensor_miss" | "remote_check" => {
                super::alerts::summary(body, SystemTime::now())
            }
            "host_silent" => format!("no heartbeat since {}", text(body, "last_heartbeat")),
            "host_back" => "heartbeats again".to_string(),
            _ => {
                let compact = body.to_string();
                compact.chars().take(100).collect()
            }
        };
        let time = render::parse_time(text(alert, "time"))
            .map_or_else(|| text(alert, "time").to_string(), |time| render::local(time, false));
        out += &format!("{time}  {:<20} {:<12} {}\n", text(alert, "host"), text(alert, "kind"), gist);
    }
    out
}

fn human_bans(data: &Value) -> String {
    let bans = data.as_array().map(Vec::as_slice).unwrap_or_default();
    if bans.is_empty() {
        return "no fleet bans in force\n".into();
    }
    let now = SystemTime::now();
    let mut table = Table::new(&["rev", "net", "origin", "expires", "reason"]).right(&["rev"]);
    for ban in bans {
        table.row(vec![
            number(ban, "rev").into(),
            text(ban, "net").into(),
            text(ban, "origin").into(),
            render::expiry(ban["expires"].as_str(), now).into(),
            text(ban, "reason").into(),
        ]);
    }
    table.render(render::stdout_colour())
}

fn human_decision(data: &Value) -> String {
    let what = if data["action"] == "unban" { "fleet unban of" } else { "fleet ban of" };
    let mut out = format!("{what} {} recorded as rev {}", text(data, "net"), number(data, "rev"));
    if data["action"] == "ban" {
        out += &match data["expires"].as_str() {
            Some(expires) => format!(", until {expires}"),
            None => ", permanently".into(),
        };
    }
    if data["was_active"] == false {
        out += " (no fleet ban was in force on it)";
    }
    out += if data["published"] == true {
        "; published to every host\n"
    } else {
        "; the broker could not be reached: the running collector publishes it\n"
    };
    if let Some(note) = data["note"].as_str() {
        out += &format!("  {note}\n");
    }
    out
}
