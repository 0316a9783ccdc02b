//! `ids alerts`: the alerts stored, from the daemon's control socket or, when no daemon answers,
//! from `<state_dir>/ids.db`; one line each, with its id, local time, severity and a summary of
//! what happened. `ids alerts --follow` keeps printing new ones (it asks for the alerts after
//! the last id it printed, once a second); `ids alerts show ID` prints one alert whole.
use std::io::Write as _;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::Common;
use super::render::{self, Cell, Style, Table};
use crate::alert::Severity;
pub(crate) use crate::alert::summary::summary;
use crate::config::Config;
use crate::control::{self, Request};
use crate::store::{AlertFilter, AlertRow, Store};

const EXAMPLES: &str = "\
Examples:
  ids alerts                         the 20 most recent alerts
  ids alerts --since 1h --severity high
  ids alerts --kind integrity --kind sensor_miss -n 100
  ids alerts --follow                print new alerts as they are raised (Ctrl-C stops)
  ids alerts --follow --json         the same as JSON lines, for a script
  ids alerts show 42                 every field of alert 42";

/// How often `--follow` asks for new alerts.
const FOLLOW_EVERY: Duration = Duration::from_secs(1);

/// Alerts `--follow` asks for at once; more wait for the next request, which comes at once.
const FOLLOW_BATCH: usize = 500;

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, after_help = EXAMPLES)]
pub(super) struct AlertsArgs {
    #[command(subcommand)]
    command: Option<AlertsCommand>,
    #[command(flatten)]
    common: Common,
    /// How many: the most recent that match.
    #[arg(short = 'n', long = "limit", value_name = "N", default_value_t = 20)]
    limit: usize,
    /// Only alerts of this kind (repeatable).
    #[arg(long, value_parser = ["integrity", "sensor_miss", "detect", "remote_check", "ban"])]
    kind: Vec<String>,
    /// Only alerts raised within this long (`10m`, `2h`, `1d`).
    #[arg(long, value_name = "DURATION", value_parser = super::since_duration)]
    since: Option<Duration>,
    /// Only alerts at least this severe. A detection has its own severity; `sensor_miss` and
    /// `remote_check` are high, `integrity` medium, `ban` low.
    #[arg(long, value_parser = Severity::NAMES)]
    severity: Option<String>,
    /// Keep printing new alerts as they are raised, until interrupted (Ctrl-C).
    #[arg(long, short = 'f')]
    follow: bool,
    /// Print {"ok": true, "data": [{"id", "time", "kind", "severity", "source", "item", "what"}]}
    /// (times in RFC 3339 UTC); with --follow, one such alert object per line.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum AlertsCommand {
    /// Print one alert whole: every field, the processes with their ancestors, the evidence.
    Show {
        /// The alert's id, as `ids alerts` prints it.
        id: i64,
        /// Print {"ok": true, "data": {"id", "severity", "alert": {"time", "kind", ...}}}: the alert
        /// as the events log has it.
        #[arg(long)]
        json: bool,
    },
}

pub(super) fn run(args: AlertsArgs) -> anyhow::Result<ExitCode> {
    let config = args.common.load_config()?;
    if let Some(AlertsCommand::Show { id, json }) = args.command {
        return show(&config, id, json);
    }
    let filter = AlertFilter {
        kinds: args.kind,
        since: args.since.map(|ago| crate::time::Timestamp::at(SystemTime::now() - ago).rfc3339()),
        after_id: None,
    };
    let least = args.severity.as_deref().and_then(Severity::parse);
    let reader = Reader::new(&config, least)?;
    if args.follow {
        return follow(&reader, args.limit, filter, args.json);
    }
    let fetched = match reader.fetch(args.limit, &filter) {
        Ok(fetched) => fetched,
        Err(e) if args.json => {
            println!("{}", serde_json::to_string_pretty(&control::refusal(format!("{e:#}")))?);
            return Ok(ExitCode::FAILURE);
        }
        Err(e) => return Err(e),
    };
    if least.is_some() {
        fetched.require_ids("--severity")?;
    }
    if args.json {
        let mut out = json!({"ok": true, "data": fetched.alerts});
        if !fetched.daemon {
            out["daemon"] = false.into();
        }
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    let now = SystemTime::now();
    let mut out = if fetched.alerts.is_empty() {
        "no alerts\n".to_string()
    } else {
        let mut table = Table::new(&["id", "time", "severity", "summary"]).right(&["id"]);
        for alert in &fetched.alerts {
            table.row(vec![
                id_of(alert).into(),
                render::when(alert["time"].as_str().unwrap_or("?"), now).into(),
                severity_cell(alert),
                summary(&full_alert(alert), now).into(),
            ]);
        }
        table.render(render::stdout_colour())
    };
    if !fetched.daemon {
        out += &format!(
            "no daemon answered on {}: these alerts were read from {}\n",
            config.control_socket().display(),
            config.database().display()
        );
    }
    print!("{out}");
    Ok(ExitCode::SUCCESS)
}

/// Alerts as the control protocol answers them (`control::alerts::rows`), and whether a daemon
/// answered (else they were read from the database).
struct Fetched {
    alerts: Vec<Value>,
    daemon: bool,
}

impl Fetched {
    /// A daemon older than this CLI answers without ids and ignores what it does not know
    /// (`--severity`, a cursor): refuse rather than print what was not asked for.
    fn require_ids(&self, what: &str) -> anyhow::Result<()> {
        if self.alerts.iter().any(|alert| !alert["id"].is_i64()) {
            bail!("{what}: the running daemon is older than this ids and does not support it; restart it (`ids run`)");
        }
        Ok(())
    }
}

/// Asks the daemon, or reads the store when none answers, for alerts at least as severe as
/// `least`.
struct Reader<'a> {
    config: &'a Config,
    least: Option<Severity>,
    runtime: tokio::runtime::Runtime,
}

impl<'a> Reader<'a> {
    fn new(config: &'a Config, least: Option<Severity>) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        Ok(Self { config, least, runtime })
    }

    fn fetch(&self, limit: usize, filter: &AlertFilter) -> anyhow::Result<Fetched> {
        let request = Request::Alerts {
            limit,
            kinds: filter.kinds.clone(),
            since: filter.since.clone(),
            min_severity: self.least,
            after_id: filter.after_id,
        };
        let socket = self.config.control_socket();
        // A daemon that is there but cannot be talked to is an error, never a reason to read its
        // store behind its back.
        let answer = self.runtime.block_on(control::try_exchange(&socket, &request)).map_err(super::with_root_hint)?;
        let (data, daemon) = match answer {
            Some(answer) if answer["ok"] == true => (answer["data"].clone(), true),
            Some(answer) => bail!("the daemon refused: {}", answer["error"].as_str().unwrap_or("no reason given")),
            None => (self.read_store(limit, filter)?, false),
        };
        let alerts = match data {
            Value::Array(alerts) => alerts,
            other => bail!("the daemon's answer has an unexpected shape: {other}"),
        };
        Ok(Fetched { alerts, daemon })
    }

    /// No daemon: the database, if there is one (none yet: no alert either).
    fn read_store(&self, limit: usize, filter: &AlertFilter) -> anyhow::Result<Value> {
        let path = self.config.database();
        if !path.exists() {
            return Ok(Value::Array(Vec::new()));
        }
        let store = Store::open(&path)
            .map_err(anyhow::Error::from)
            .map_err(super::with_root_hint)
            .context("no daemon answered; reading the alerts from the database")?;
        control::alerts::rows(&store, limit, filter, self.least).map_err(|e| anyhow::anyhow!(e))
    }
}

/// `--follow`: the last `limit` alerts, then every new one as it is stored, until interrupted.
fn follow(reader: &Reader<'_>, limit: usize, mut filter: AlertFilter, json: bool) -> anyhow::Result<ExitCode> {
    let colour = render::stdout_colour();
    let mut out = std::io::stdout().lock();
    let mut first = true;
    let mut limit = limit;
    let mut failing = false;
    loop {
        let fetched = match reader.fetch(limit, &filter) {
            Ok(fetched) => {
                if failing {
                    eprintln!("ids: reading alerts again");
                    failing = false;
                }
                fetched
            }
            // The daemon restarting, say: keep following.
            Err(e) if !first => {
                if !failing {
                    eprintln!("ids: cannot read alerts ({e:#}); trying again every second");
                    failing = true;
                }
                std::thread::sleep(FOLLOW_EVERY);
                continue;
            }
            Err(e) => return Err(e),
        };
        fetched.require_ids("--follow")?;
        if first && !json {
            // A closed pipe (`| head`) ends the command quietly.
            let header = follow_line("id", "time", "severity", "summary", false);
            if writeln!(out, "{}", Style::Bold.paint(&header, colour)).is_err() {
                return Ok(ExitCode::SUCCESS);
            }
        }
        let now = SystemTime::now();
        for alert in &fetched.alerts {
            let line = if json {
                alert.to_string()
            } else {
                let time = render::parse_time(alert["time"].as_str().unwrap_or_default())
                    .map_or_else(|| "?".to_string(), |t| render::local(t, false));
                let severity = alert["severity"].as_str().unwrap_or("-");
                follow_line(&id_of(alert), &time, severity, &summary(&full_alert(alert), now), colour)
            };
            if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
                return Ok(ExitCode::SUCCESS);
            }
        }
        if let Some(last) = fetched.alerts.last().and_then(|a| a["id"].as_i64()) {
            filter.after_id = Some(last);
        } else if filter.after_id.is_none() {
            // Nothing matched yet: every later alert is new.
            filter.after_id = Some(0);
        }
        let more = !first && fetched.alerts.len() >= limit;
        first = false;
        limit = FOLLOW_BATCH;
        if !more {
            std::thread::sleep(FOLLOW_EVERY);
        }
    }
}

/// One line of `--follow`: fixed widths, since the alerts to come are not known yet.
fn follow_line(id: &str, time: &str, severity: &str, summary: &str, colour: bool) -> String {
    let severity_style = Style::of_severity(severity);
    format!("{id:>6}  {time:<19}  {}  {summary}", severity_style.paint(&format!("{severity:<8}"), colour))
}

fn id_of(alert: &Value) -> String {
    alert["id"].as_i64().map_or_else(|| "-".to_string(), |id| id.to_string())
}

fn severity_cell(alert: &Value) -> Cell {
    let severity = alert["severity"].as_str().unwrap_or("-");
    Cell::styled(severity, Style::of_severity(severity))
}

/// An answer's row as the alert the events log wrote (`{"time", "kind", ...}`).
fn full_alert(row: &Value) -> Value {
    let text = |key: &str| row[key].as_str().unwrap_or_default().to_string();
    AlertRow {
        time: text("time"),
        kind: text("kind"),
        item_id: text("item"),
        collector: text("source"),
        what: row["what"].clone(),
    }
    .to_alert_json()
}

/// `ids alerts show ID`.
fn show(config: &Config, id: i64, json: bool) -> anyhow::Result<ExitCode> {
    let reader = Reader::new(config, None)?;
    let filter = AlertFilter { after_id: Some(id.saturating_sub(1)), ..AlertFilter::default() };
    let found = reader.fetch(1, &filter).and_then(|fetched| {
        fetched.require_ids("ids alerts show")?;
        match fetched.alerts.into_iter().next() {
            Some(alert) if alert["id"] == id => Ok(alert),
            _ => bail!("no alert {id} (`ids alerts` lists them with their ids)"),
        }
    });
    let row = match (found, json) {
        (Ok(row), _) => row,
        (Err(e), true) => {
            println!("{}", serde_json::to_string_pretty(&control::refusal(format!("{e:#}")))?);
            return Ok(ExitCode::FAILURE);
        }
        (Err(e), false) => return Err(e),
    };
    // The alert's own fields may have an `id` (an item's), so it is kept apart from the row id.
    let alert = json!({"id": row["id"], "severity": row["severity"], "alert": full_alert(&row)});
    if json {
        println!("{}", serde_json::to_string_pretty(&json!({"ok": true, "data": alert}))?);
    } else {
        print!("{}", describe_alert(&alert, SystemTime::now(), render::stdout_colour()));
    }
    Ok(ExitCode::SUCCESS)
}

/// One alert whole (`{"id", "severity", "alert"}`), for people: its summary, then every field
/// (nested ones indented, times in local time, process ancestry as a chain, evidence one per line).
fn describe_alert(shown: &Value, now: SystemTime, colour: bool) -> String {
    let severity = shown["severity"].as_str().unwrap_or("-");
    let alert = &shown["alert"];
    let mut out = format!(
        "{} {}  {}\n",
        Style::Bold.paint(&format!("alert {}", id_of(shown)), colour),
        Style::of_severity(severity).paint(severity, colour),
        summary(alert, now)
    );
    if let Some(time) = alert["time"].as_str().and_then(render::parse_time) {
        out += &format!("time: {} ({})\n", render::local(time, true), render::relative(time, now));
    }
    let Value::Object(fields) = alert else { return out };
    for (key, value) in fields {
        if key != "time" {
            field(key, value, 0, now, &mut out);
        }
    }
    out
}

fn field(key: &str, value: &Value, indent: usize, now: SystemTime, out: &mut String) {
    let pad = " ".repeat(indent);
    match value {
        Value::Object(object) if object.is_empty() => *out += &format!("{pad}{key}: {{}}\n"),
        Value::Object(object) => {
            // A process reads as a line first (`vim (pid 812) ← bash ← sshd: alice from ...`).
            if object.contains_key("comm") && object.contains_key("pid") {
                *out += &format!("{pad}{key}: {}\n", crate::process::one_line(value));
            } else {
                *out += &format!("{pad}{key}:\n");
            }
            for (inner, value) in object {
                field(inner, value, indent + 2, now, out);
            }
        }
        Value::Array(items) if key == "ancestors" => {
            let chain: Vec<String> = items
                .iter()
                .map(|a| match a["comm"].as_str() {
                    Some(comm) => format!("{comm} (pid {})", a["pid"]),
                    None => a.to_string(),
                })
                .collect();
            *out += &format!("{pad}{key}: {}\n", if chain.is_empty() { "none".to_string() } else { chain.join(" ← ") });
        }
        Value::Array(items) if items.iter().all(|item| !item.is_object() && !item.is_array()) => {
            if key == "evidence" || key == "argv" && items.len() > 8 {
                *out += &format!("{pad}{key}:\n");
                for item in items {
                    *out += &format!("{pad}  {}\n", scalar(item));
                }
            } else {
                let texts: Vec<String> = items.iter().map(scalar).collect();
                *out +=
                    &format!("{pad}{key}: {}\n", if texts.is_empty() { "none".to_string() } else { texts.join(", ") });
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                field(&format!("{key} {}", i + 1), item, indent, now, out);
            }
        }
        Value::String(text) if matches!(key, "time" | "expires") => {
            *out += &format!("{pad}{key}: {}\n", render::when(text, now));
        }
        other => *out += &format!("{pad}{key}: {}\n", scalar(other)),
    }
}

fn scalar(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Null => "none".to_string(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> SystemTime {
        render::parse_time("2026-12-05T10:00:00Z").unwrap()
    }

    #[test]
    fn a_change_reads_as_what_changed_and_who_changed_it() {
        let alert = json!({"kind": "integrity", "id": "file:/etc/hosts", "change": "changed",
            "attributes": ["content", "mtime"],
            "changed_by": [
                {"operation": "write", "process": {"pid": 12, "comm": "tee", "ancestors": [
                    {"pid": 700, "comm": "bash"}, {"pid": 690, "comm": "sshd"}, {"pid": 1, "comm": "systemd"}],
                    "login": {"service": "sshd", "user": "root", "from": "10.0.0.3", "port": 5, "pid": 690}}},
                {"operation": "attrib", "process": {"pid": 9, "comm": "chmod", "ancestors": []}}]});
        assert_eq!(
            summary(&alert, now()),
            "integrity /etc/hosts: content, mtime changed by tee (pid 12) ← bash ← sshd: root from 10.0.0.3 (+1 more)"
        );
        let missed = json!({"kind": "sensor_miss", "id": "file:/etc/passwd", "change": "removed", "attributes": []});
        assert_eq!(summary(&missed, now()), "sensor_miss /etc/passwd: removed (no kernel event explained it)");
        let socket = json!({"kind": "integrity", "id": "tcp:0.0.0.0:22", "change": "added", "attributes": []});
        assert_eq!(summary(&socket, now()), "integrity tcp:0.0.0.0:22: added");
    }

    #[test]
    fn a_detection_reads_as_who_did_what_and_what_was_done() {
        let ssh = json!({"kind": "detect", "detector": "ssh-bruteforce", "rule": "sshd-failed-password",
            "source": "1.2.3.4", "count": 12, "window_s": 60,
            "action": {"type": "ban_requested", "duration_s": 3600, "offence": 1}});
        assert_eq!(summary(&ssh, now()), "ssh brute force from 1.2.3.4: 12 failures in 60 s, banned 1 h");
        let again = json!({"kind": "detect", "detector": "ssh-bruteforce", "source": "1.2.3.4", "count": 5,
            "window_s": 300, "action": {"type": "ban_requested", "duration_s": 0, "offence": 3}});
        assert_eq!(
            summary(&again, now()),
            "ssh brute force from 1.2.3.4: 5 failures in 300 s, banned permanently (offence 3)"
        );
        let trusted = json!({"kind": "detect", "detector": "web-attack", "rule": "sqli", "source": "10.0.0.1",
            "count": 3, "window_s": 60, "action": {"type": "not_banned_trusted"}});
        assert_eq!(
            summary(&trusted, now()),
            "web attack from 10.0.0.1: 3 requests matching sqli in 60 s, not banned: trusted"
        );
        let shell = json!({"kind": "detect", "detector": "webshell", "rule": "php-eval", "path": "/var/www/x.php",
            "description": "eval of request data", "action": {"type": "alert_only"}});
        assert_eq!(summary(&shell, now()), "webshell /var/www/x.php: eval of request data (php-eval)");
        let exec = json!({"kind": "detect", "detector": "webserver-exec", "rule": "webserver-exec-shell",
            "description": "A web server process started a shell", "action": {"type": "alert_only"},
            "process": {"pid": 40, "comm": "sh", "ancestors": [{"pid": 30, "comm": "nginx"}]}});
        assert_eq!(summary(&exec, now()), "A web server process started a shell: sh (pid 40) ← nginx");
        let flood = json!({"kind": "detect", "detector": "ssh-bruteforce", "rule": "window-flood",
            "description": "More addresses", "count": 9, "action": {"type": "alert_only"}});
        assert_eq!(summary(&flood, now()), "ssh-bruteforce window-flood: More addresses");
    }

    #[test]
    fn bans_and_remote_checks_read_as_one_line() {
        let ban = json!({"kind": "ban", "net": "192.0.2.1/32", "source": "port-scan", "reason": "scan",
            "expires": "2026-12-05T11:00:00.000000Z", "offence": 2});
        let said = summary(&ban, now());
        assert!(said.starts_with("ban 192.0.2.1/32 by port-scan: scan, until "), "{said}");
        assert!(said.ends_with(" (in 1 h) (offence 2)"), "{said}");
        let permanent = json!({"kind": "ban", "net": "192.0.2.1/32", "source": "fleet", "reason": "r",
            "expires": null, "offence": 1});
        assert_eq!(summary(&permanent, now()), "ban 192.0.2.1/32 by fleet: r, permanent");
        let remote = json!({"kind": "remote_check", "server": "a:1", "result": "mismatch", "aggregate": "cd"});
        assert_eq!(summary(&remote, now()), "remote check by a:1: result mismatch");
    }

    #[test]
    fn show_prints_every_field_with_processes_as_chains() {
        let alert = json!({"id": 7, "severity": "medium", "alert": {"time": "2026-12-05T09:57:00.000000Z",
            "kind": "integrity", "collector": "etc", "id": "file:/etc/hosts", "change": "changed", "attributes": ["content"],
            "old": {"digest": "aa", "detail": {"size": 1}}, "new": null,
            "changed_by": [{"operation": "write", "time": "2026-12-05T09:56:00.000000Z",
                "process": {"pid": 12, "comm": "tee", "exe": "/usr/bin/tee", "argv": ["tee", "/etc/hosts"],
                    "ancestors": [{"pid": 700, "comm": "bash"}, {"pid": 1, "comm": "systemd"}]}}]}});
        let text = describe_alert(&alert, now(), false);
        assert!(text.starts_with("alert 7 medium  integrity /etc/hosts: content changed by tee (pid 12)"), "{text}");
        for expected in [
            "collector: etc\n",
            "id: file:/etc/hosts\n",
            "old:\n  detail:\n    size: 1\n  digest: aa\n",
            "new: none\n",
            "changed_by 1:\n",
            "  process: tee (pid 12) ← bash ← systemd\n",
            "    ancestors: bash (pid 700) ← systemd (pid 1)\n",
            "    argv: tee, /etc/hosts\n",
            "    exe: /usr/bin/tee\n",
            " (4 min ago)\n",
        ] {
            assert!(text.contains(expected), "{expected:?} missing from:\n{text}");
        }
        let detect =
            json!({"id": 8, "severity": "high", "alert": {"kind": "detect", "evidence": ["line one", "line two"]}});
        assert!(describe_alert(&detect, now(), false).contains("evidence:\n  line one\n  line two\n"));
    }
}
