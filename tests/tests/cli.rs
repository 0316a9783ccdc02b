//! The human CLI against the real daemon: `ids alerts` (ids, severity, `--follow`, `show`),
//! `ids diff`'s exit status, the health line of `ids status`, aligned tables, `-v`/`-q`.
//! Run as root.
use std::io::{BufRead as _, BufReader};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ids_tests::{Daemon, Scratch, ids_bin};
use serde_json::Value;

fn ids(config: &Path, args: &[&str]) -> Output {
    Command::new(ids_bin()).args(args).arg("--config").arg(config).output().unwrap()
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn json_of(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("no JSON ({e}): {}", text(out)))
}

/// A daemon with a `file_contents` collector over its own scratch directory, which holds `hosts`.
fn daemon_over_a_file(name: &str) -> (Daemon, Scratch) {
    let watched = Scratch::new("/var/tmp", &format!("cli-{name}"));
    std::fs::write(watched.0.join("hosts"), "127.0.0.1 localhost\n").unwrap();
    let extra = format!(
        "[[collectors]]\nkind = \"file_contents\"\nname = \"etc\"\npaths = [{:?}]\n",
        watched.0.display().to_string()
    );
    (Daemon::start_with(name, &[watched.0.as_path()], &[], &extra), watched)
}

/// Waits (bounded) until `ids alerts --json` holds `count` integrity alerts; returns them.
fn integrity_alerts(daemon: &Daemon, count: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = ids(&daemon.config, &["alerts", "--json", "--kind", "integrity"]);
        assert!(out.status.success(), "{}", text(&out));
        let alerts = json_of(&out)["data"].as_array().cloned().unwrap_or_default();
        if alerts.len() >= count {
            return alerts;
        }
        assert!(Instant::now() < deadline, "{count} integrity alerts not stored within 20 s: {alerts:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `ids alerts --follow --json`, killed whatever happens; its lines come through a channel.
struct Follower {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Follower {
    fn start(config: &Path, args: &[&str]) -> Self {
        let mut child = Command::new(ids_bin())
            .args(["alerts", "--follow", "--json"])
            .args(args)
            .arg("--config")
            .arg(config)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self { child, lines }
    }

    fn next(&self, within: Duration) -> Option<Value> {
        let line = self.lines.recv_timeout(within).ok()?;
        Some(serde_json::from_str(&line).unwrap_or_else(|e| panic!("--follow --json line {line:?}: {e}")))
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn alerts_have_ids_summaries_severities_and_show_prints_one_whole() {
    let (daemon, watched) = daemon_over_a_file("alerts");
    let hosts = watched.0.join("hosts");
    let config = daemon.config.clone();
    // Nothing yet: the follower prints what comes.
    let follower = Follower::start(&config, &["--kind", "integrity"]);
    let out = Command::new("sh").arg("-c").arg(format!("echo '10.0.0.3 db' >> {}", hosts.display())).output().unwrap();
    assert!(out.status.success());
    let first = integrity_alerts(&daemon, 1);
    let alert = &first[0];
    let id = alert["id"].as_i64().unwrap_or_else(|| panic!("an alert without an id: {alert}"));
    assert_eq!(alert["severity"], "medium", "{alert}");
    assert!(alert["time"].as_str().unwrap().ends_with('Z'), "JSON times stay RFC 3339 UTC: {alert}");

    let followed = follower.next(Duration::from_secs(20)).expect("--follow printed nothing for a new alert");
    assert_eq!(followed["id"], id, "{followed}");

    // The table: the id, then a summary that names the file and what changed.
    let out = ids(&config, &["alerts"]);
    let table = text(&out);
    assert!(out.status.success(), "{table}");
    let header = table.lines().next().unwrap();
    assert!(header.starts_with("id") || header.trim_start().starts_with("id"), "{table}");
    let line = table.lines().find(|l| l.contains(&format!("integrity {}", hosts.display()))).unwrap_or_else(|| {
        panic!("no summary `integrity {}: ...` in:\n{table}", hosts.display());
    });
    assert!(line.trim_start().starts_with(&id.to_string()), "{table}");
    assert!(line.contains("content") && line.contains("changed"), "{table}");
    assert!(line.contains(" ago)") || line.contains(" (now)"), "no relative time: {table}");
    // Columns line up: the summaries all start where the header's does.
    let column = header.find("summary").unwrap();
    for row in table.lines().skip(1).filter(|l| l.contains("integrity ")) {
        assert_eq!(row.char_indices().nth(column).map(|(_, c)| c), Some('i'), "misaligned:\n{table}");
    }

    // Severity: an integrity change is medium, so `--severity high` leaves it out.
    let high = json_of(&ids(&config, &["alerts", "--json", "--severity", "high"]));
    assert!(high["data"].as_array().unwrap().iter().all(|a| a["id"] != id), "{high}");
    let medium = json_of(&ids(&config, &["alerts", "--json", "--severity", "medium"]));
    assert!(medium["data"].as_array().unwrap().iter().any(|a| a["id"] == id), "{medium}");

    // A second change comes through the follower after the first, with a later id.
    std::fs::write(&hosts, "changed again\n").unwrap();
    let second = follower.next(Duration::from_secs(20)).expect("--follow missed the second alert");
    assert!(second["id"].as_i64().unwrap() > id, "{second}");
    drop(follower);

    // `show`: every field, as JSON and for people.
    let shown = json_of(&ids(&config, &["alerts", "show", &id.to_string(), "--json"]));
    assert_eq!(shown["ok"], true, "{shown}");
    let data = &shown["data"];
    assert_eq!((data["id"].as_i64(), data["alert"]["kind"].as_str()), (Some(id), Some("integrity")), "{shown}");
    assert_eq!(data["alert"]["id"], format!("file:{}", hosts.display()), "{shown}");
    let data = &data["alert"];
    assert!(data["new"]["digest"].is_string() && data["old"]["digest"].is_string(), "{shown}");
    let out = ids(&config, &["alerts", "show", &id.to_string()]);
    let human = text(&out);
    assert!(out.status.success(), "{human}");
    assert!(human.starts_with(&format!("alert {id} medium  integrity {}", hosts.display())), "{human}");
    for field in ["collector: etc", "change: changed", "attributes: ", "content", "old:", "new:", "digest: "] {
        assert!(human.contains(field), "{field:?} missing from:\n{human}");
    }
    if data["changed_by"].is_array() {
        assert!(human.contains("changed_by 1:") && human.contains("  process: "), "{human}");
        assert!(human.contains("ancestors: "), "{human}");
    }
    let missing = ids(&config, &["alerts", "show", "999999"]);
    assert_eq!(missing.status.code(), Some(1), "{}", text(&missing));
    assert!(text(&missing).contains("no alert 999999"), "{}", text(&missing));
    daemon.stop();
}

#[test]
fn diff_exits_like_diff_and_says_when_there_is_no_baseline() {
    let (daemon, watched) = daemon_over_a_file("diff");
    let config = daemon.config.clone();
    let out = ids(&config, &["diff"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("no baseline yet: run `ids baseline`"), "{}", text(&out));
    let json = ids(&config, &["diff", "--json"]);
    assert_eq!(json.status.code(), Some(2), "{}", text(&json));
    assert_eq!(json_of(&json)["ok"], false);

    // The health line says so too, until a baseline is accepted.
    let status = text(&ids(&config, &["status"]));
    assert!(status.lines().next().unwrap().contains("no integrity baseline"), "{status}");

    assert!(ids(&config, &["baseline"]).status.success());
    let same = ids(&config, &["diff"]);
    assert_eq!(same.status.code(), Some(0), "{}", text(&same));
    assert!(text(&same).contains("no changes since the baseline"), "{}", text(&same));
    let status = text(&ids(&config, &["status"]));
    assert!(!status.lines().next().unwrap().contains("no integrity baseline"), "{status}");

    std::fs::write(watched.0.join("hosts"), "changed\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let changed = ids(&config, &["diff"]);
        if changed.status.code() == Some(1) {
            assert!(text(&changed).contains("1 changed"), "{}", text(&changed));
            break;
        }
        assert_eq!(changed.status.code(), Some(0), "{}", text(&changed));
        assert!(Instant::now() < deadline, "the change never showed in ids diff");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(ids_tests::diff_json(&config)["changed"].as_array().unwrap().len(), 1);
    daemon.stop();
}

#[test]
fn status_starts_with_its_health_and_its_tables_line_up() {
    let (daemon, _watched) = daemon_over_a_file("status");
    let out = ids(&daemon.config, &["status"]);
    let status = text(&out);
    assert!(out.status.success(), "{status}");
    let health = status.lines().next().unwrap();
    assert!(health == "healthy" || health.starts_with("problems: "), "{status}");
    assert!(!status.contains('\x1b'), "colour on a pipe: {status:?}");
    let json = daemon.status();
    let lsm_everywhere = json["signals"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| ["exec", "file", "connect"].contains(&s["signal"].as_str().unwrap()))
        .all(|s| s["hook"].as_str().unwrap().starts_with("lsm:"));
    assert_eq!(!health.contains("hook in fallback"), lsm_everywhere, "{status}\n{json}");
    // The signal table: every count ends where its header does.
    let lines: Vec<&str> = status.lines().collect();
    let header = lines.iter().position(|l| l.starts_with("signal ")).unwrap_or_else(|| panic!("{status}"));
    let received_end = lines[header].find("received").unwrap() + "received".len();
    let rows = json["signals"].as_array().unwrap().len();
    for row in &lines[header + 1..=header + rows] {
        let before = &row[..received_end];
        assert!(before.ends_with(|c: char| c.is_ascii_digit()), "misaligned {row:?} in:\n{status}");
        assert_eq!(row.as_bytes().get(received_end), Some(&b' '), "misaligned {row:?} in:\n{status}");
    }
    daemon.stop();
}

#[test]
fn verbosity_flags_set_the_log_level_unless_ids_log_does() {
    let scratch = Scratch::new("/var/tmp", "cli-verbosity");
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let serve = |flags: &[&str], ids_log: Option<&str>| -> String {
        let mut command = Command::new(ids_bin());
        command
            .args(flags)
            .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--audit-log", ""])
            .arg("--db")
            .arg(scratch.0.join("records.db"))
            .env_remove("IDS_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(filter) = ids_log {
            command.env("IDS_LOG", filter);
        }
        let child = command.spawn().unwrap();
        let mut server = Server(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "ids serve did not listen within 20 s");
            if let Some(status) = server.0.try_wait().unwrap() {
                panic!("ids serve exited: {status}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        server.stop()
    };
    let default = serve(&[], None);
    assert!(default.contains("INFO"), "{default}");
    let quiet = serve(&["-q"], None);
    assert!(!quiet.contains("INFO"), "-q still logs at info: {quiet}");
    let verbose = serve(&["-v"], None);
    assert!(verbose.contains("INFO") && !verbose.contains("TRACE"), "{verbose}");
    let wins = serve(&["-q"], Some("info"));
    assert!(wins.contains("INFO"), "IDS_LOG did not win over -q: {wins}");
}

/// A child killed and reaped whatever happens.
struct Server(Child);

impl Server {
    /// SIGTERM, then what it wrote to stderr.
    fn stop(&mut self) -> String {
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.0.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = self.0.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.wait();
        let mut err = String::new();
        if let Some(mut stderr) = self.0.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut stderr, &mut err);
        }
        err
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn bans_table_lines_up_with_local_expiry_times() {
    let (daemon, _watched) = daemon_over_a_file("bans-table");
    let config = daemon.config.clone();
    for (net, duration) in [("198.51.100.7", "2h"), ("2001:db8:ffff::/48", "permanent")] {
        let out = ids(&config, &["ban", net, "--for", duration, "--reason", "cli test"]);
        assert!(out.status.success(), "{}", text(&out));
    }
    let out = ids(&config, &["bans"]);
    let table = text(&out);
    assert!(out.status.success(), "{table}");
    let header = table.lines().next().unwrap();
    let reason = header.find("reason").unwrap();
    let rows: Vec<&str> = table.lines().filter(|l| l.ends_with("cli test")).collect();
    assert_eq!(rows.len(), 2, "{table}");
    for row in &rows {
        assert_eq!(row.find("cli test"), Some(reason), "misaligned:\n{table}");
    }
    assert!(rows.iter().any(|r| r.contains("(in 1 h)") || r.contains("(in 2 h)")), "{table}");
    assert!(rows.iter().any(|r| r.contains("permanent")), "{table}");
    // JSON keeps RFC 3339 UTC.
    let bans = json_of(&ids(&config, &["bans", "--json"]));
    let timed = bans["data"].as_array().unwrap().iter().find(|b| b["net"] == "198.51.100.7").unwrap();
    assert!(timed["expires"].as_str().unwrap().ends_with('Z'), "{bans}");
    daemon.stop();
}
