//! Area `console`: how fast the fleet console answers over a central database of [`ALERTS`]
//! alerts (7 hosts, 5 kinds, 48 hours). `ids collect` serves the console (plain HTTP on
//! loopback: the console's own work, not TLS's; its broker is a closed port, the console does not
//! need it); each route is asked [`REQUESTS`] times over a fresh connection, with a session
//! cookie, and timed from the request's first byte to the response's last. The peer is the
//! floor: the same SQL the route runs, in the `sqlite3` shell on the same database file (its
//! process start included), as many times.
use std::fmt::Write as _;
use std::fs;
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail, ensure};

use super::{Machine, append_to_benchmarks, build_release, load_average, median, thousands, utc_timestamp};

const ALERTS: usize = 100_000;
const REQUESTS: usize = 20;
const PASSWORD: &str = "bench password 1";
/// The targets: the Alerts page with a filter, and the timeline.
const TARGET_PAGE_MS: f64 = 300.0;
const TARGET_TIMELINE_MS: f64 = 500.0;

struct Collector {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Drop for Collector {
    fn drop(&mut self) {
        // SAFETY: kill has no memory preconditions; the pid is our child's.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// One HTTP/1.1 request over a new connection; (status, body) and the wall time it took.
fn request(port: u16, path: &str, cookie: Option<&str>, form: Option<&str>) -> anyhow::Result<(u16, String, Duration)> {
    let started = Instant::now();
    let mut stream = TcpStream::connect(("127.0.0.1", port)).context("connecting to the console")?;
    let cookie = cookie.map(|c| format!("Cookie: {c}\r\n")).unwrap_or_default();
    let head = match form {
        Some(body) => format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n{cookie}\
             Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
        None => format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n{cookie}\r\n"),
    };
    stream.write_all(head.as_bytes())?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let elapsed = started.elapsed();
    let text = String::from_utf8_lossy(&response).to_string();
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    Ok((status, text, elapsed))
}

/// Fills the central database the collector made with [`ALERTS`] alerts, as it stores agents'.
fn fill(database: &Path) -> anyhow::Result<()> {
    let mut db = rusqlite::Connection::open(database).context("opening the central database")?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() as i64;
    let kinds =
        [("integrity", "medium"), ("detect", "high"), ("ban", "low"), ("sensor_miss", "high"), ("detect", "medium")];
    let tx = db.transaction()?;
    {
        let mut insert = tx.prepare(
            "INSERT INTO alerts (host, hostname, epoch, seq, time, kind, alert, attacker, received, severity, rule)
             VALUES (?1, ?1, 1, ?2, ?3, ?4, ?5, NULL, ?3, ?6, ?7)",
        )?;
        for n in 0..ALERTS {
            let host = format!("host{}", n % 7);
            let (kind, severity) = kinds[n % kinds.len()];
            let rule = (kind == "detect").then_some(if severity == "high" { "ssh-bruteforce" } else { "web-scan" });
            let time = ids_tests::rfc3339_utc(now - ((ALERTS - n) as i64 * 172_800 / ALERTS as i64));
            let alert = serde_json::json!({
                "kind": kind, "rule": rule, "severity": severity, "collector": "files",
                "id": format!("file:/srv/www/{n}"), "change": "changed", "attributes": ["content"],
                "source": format!("198.51.100.{}", n % 250), "evidence": [format!("GET /?id={n} HTTP/1.1")],
            });
            insert.execute(rusqlite::params![host, n as i64 + 1, time, kind, alert.to_string(), severity, rule])?;
        }
    }
    tx.commit()?;
    Ok(())
}

fn start(ids: &Path) -> anyhow::Result<Collector> {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let dir = PathBuf::from(format!("/var/tmp/ids-bench-console-{}-{nanos}", std::process::id()));
    fs::create_dir_all(&dir)?;
    let ports: Vec<u16> = ids_tests::service_process::free_loopback_ports(2);
    let config = dir.join("ids.toml");
    let database = dir.join("fleet.db");
    fs::write(
        &config,
        format!(
            "[collect]\nurl = \"amqp://collector@127.0.0.1:{}/%2f\"\ndatabase = {:?}\n\
             [collect.web]\nlisten = \"127.0.0.1:{}\"\nplain_http = true\n",
            ports[1],
            database.display().to_string(),
            ports[0]
        ),
    )?;
    let mut add = Command::new(ids)
        .args(["fleet", "user", "add", "bench", "--password-file", "-", "--config"])
        .arg(&config)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()?;
    add.stdin.take().context("stdin")?.write_all(format!("{PASSWORD}\n").as_bytes())?;
    ensure!(add.wait()?.success(), "ids fleet user add failed");
    fill(&database)?;
    let log = fs::File::create(dir.join("collect.log"))?;
    let child =
        Command::new(ids).args(["collect", "--config"]).arg(&config).stdout(log.try_clone()?).stderr(log).spawn()?;
    let collector = Collector { child, port: ports[0], dir };
    let deadline = Instant::now() + Duration::from_secs(20);
    while request(collector.port, "/login", None, None).map(|r| r.0).unwrap_or(0) != 200 {
        ensure!(Instant::now() < deadline, "the console did not answer within 20 s");
        thread::sleep(Duration::from_millis(100));
    }
    Ok(collector)
}

/// The session cookie of a login.
fn login(port: u16) -> anyhow::Result<String> {
    let (status, text, _) =
        request(port, "/login", None, Some(&format!("user=bench&password={}", PASSWORD.replace(' ', "+"))))?;
    ensure!(status == 303, "login answered {status}");
    text.lines()
        .find_map(|line| line.strip_prefix("set-cookie: "))
        .and_then(|cookie| cookie.split(';').next())
        .map(str::to_string)
        .context("the login set no cookie")
}

/// Wall ms of `sqlite3 DATABASE SQL`, run [`REQUESTS`] times.
fn sqlite_times(database: &Path, sql: &str) -> anyhow::Result<Vec<f64>> {
    (0..REQUESTS)
        .map(|_| {
            let started = Instant::now();
            let output = Command::new("sqlite3").arg(database).arg(sql).output().context("running sqlite3")?;
            ensure!(output.status.success(), "sqlite3: {}", String::from_utf8_lossy(&output.stderr));
            Ok(started.elapsed().as_secs_f64() * 1000.0)
        })
        .collect()
}

struct Row {
    label: &'static str,
    route: String,
    ours: Vec<f64>,
    floor: Vec<f64>,
    target: Option<f64>,
}

pub(super) fn bench_console(root: &Path) -> anyhow::Result<()> {
    let ids = build_release(root)?;
    let machine = Machine::describe(&ids)?;
    if Command::new("sqlite3").arg("--version").output().is_err() {
        bail!("the console bench needs the sqlite3 shell (Debian package sqlite3) for its floor");
    }
    let collector = start(&ids)?;
    let database = collector.dir.join("fleet.db");
    let cookie = login(collector.port)?;
    let since = ids_tests::rfc3339_utc(SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() as i64 - 86_400);
    let filtered = format!("host = 'host3' AND kind = 'detect' AND time >= '{since}'");
    let routes: [(&str, String, String, Option<f64>); 5] = [
        (
            "Alerts page, filter host + kind + since 24h",
            "/alerts?host=host3&kind=detect&since=24h".into(),
            format!(
                "SELECT id, host, hostname, epoch, seq, time, kind, alert, severity, rule FROM alerts WHERE {filtered} \
                 ORDER BY id DESC LIMIT 100; SELECT COUNT(*) FROM alerts WHERE {filtered}; \
                 SELECT substr(time, 1, 13), kind, COUNT(*) FROM alerts WHERE {filtered} GROUP BY 1, 2;"
            ),
            Some(TARGET_PAGE_MS),
        ),
        (
            "Alerts page, no filter (all 100,000)",
            "/alerts".into(),
            "SELECT id, host, hostname, epoch, seq, time, kind, alert, severity, rule FROM alerts ORDER BY id DESC LIMIT 100; \
             SELECT COUNT(*) FROM alerts; SELECT substr(time, 1, 13), kind, COUNT(*) FROM alerts GROUP BY 1, 2;"
                .into(),
            Some(TARGET_PAGE_MS),
        ),
        (
            "Timeline API, all alerts (48 h × 5 kinds)",
            "/api/timeline".into(),
            "SELECT substr(time, 1, 13), kind, COUNT(*) FROM alerts GROUP BY 1, 2;".into(),
            Some(TARGET_TIMELINE_MS),
        ),
        (
            "Alerts API, filter severity + rule, 100 newest",
            "/api/alerts?severity=high&rule=ssh-bruteforce".into(),
            "SELECT id, host, hostname, epoch, seq, time, kind, alert, severity, rule FROM alerts \
             WHERE severity = 'high' AND rule = 'ssh-bruteforce' ORDER BY id DESC LIMIT 100; \
             SELECT COUNT(*) FROM alerts WHERE severity = 'high' AND rule = 'ssh-bruteforce';"
                .into(),
            None,
        ),
        (
            "Fleet page (7 hosts, alerts in 24 h)",
            "/".into(),
            format!("SELECT host, COUNT(*) FROM alerts WHERE received >= '{since}' GROUP BY host; SELECT * FROM hosts;"),
            None,
        ),
    ];
    let mut rows = Vec::new();
    for (label, route, sql, target) in routes {
        let mut ours = Vec::with_capacity(REQUESTS);
        for _ in 0..REQUESTS {
            let (status, _, took) = request(collector.port, &route, Some(&cookie), None)?;
            ensure!(status == 200, "GET {route} answered {status}");
            ours.push(took.as_secs_f64() * 1000.0);
        }
        let floor = sqlite_times(&database, &sql)?;
        eprintln!("bench: {route}: {:.1} ms (sqlite3 {:.1} ms)", median(&ours), median(&floor));
        rows.push(Row { label, route, ours, floor, target });
    }
    drop(collector);
    let spread = |values: &[f64]| {
        let (lo, hi) = values.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| (lo.min(x), hi.max(x)));
        format!("{:.1} ({lo:.1}–{hi:.1})", median(values))
    };
    let mut s = String::new();
    let _ = writeln!(s, "\n## {} — console\n", utc_timestamp());
    let _ = writeln!(s, "- Command: `cargo xtask bench console` (release build)");
    let _ = writeln!(
        s,
        "- Machine: Linux {}, {}, {} cores; load average {} before, {} after",
        machine.kernel,
        machine.cpu,
        machine.cores,
        machine.load_before,
        load_average()
    );
    let _ = writeln!(s, "- Console: {}", machine.ids_version);
    let _ = writeln!(
        s,
        "- Data: {} alerts in a SQLite central database (7 hosts, 5 kinds, over 48 hours). Each route asked \
         {REQUESTS} times over a new loopback connection with a session (plain HTTP: the console's work, not \
         TLS's), request to last byte. Peer: the floor, the same SQL in the `sqlite3` shell on the same file \
         (process start included), {REQUESTS} times. Medians, min–max in brackets, ms.\n",
        thousands(ALERTS as u64)
    );
    let _ = writeln!(s, "| route | ms, console | ms, sqlite3 shell (floor) | ratio | target | |");
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---|");
    for row in &rows {
        let ours = median(&row.ours);
        let (target, verdict) = match row.target {
            Some(target) => (format!("< {target:.0} ms"), if ours < target { "met" } else { "**not met**" }),
            None => ("—".to_string(), ""),
        };
        let _ = writeln!(
            s,
            "| {} (`{}`) | {} | {} | {:.2} | {target} | {verdict} |",
            row.label,
            row.route,
            spread(&row.ours),
            spread(&row.floor),
            ours / median(&row.floor)
        );
    }
    append_to_benchmarks(&root.join("BENCHMARKS.md"), &s)?;
    print!("{s}");
    Ok(())
}
