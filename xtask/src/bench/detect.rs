//! Area `detect`: the log rules of `ids` beside `fail2ban-regex` (Debian package `fail2ban`) on
//! the same generated files, in the same run, and the daemon's CPU while its logs are idle.
//!
//! 1. **Rule throughput per core**: a generated sshd log and a generated combined-format access
//!    log of [`LINES`] lines each (a fixed mix of benign lines and attacks, see [`sshd_line`] and
//!    [`web_line`]). `ids rules test --kind sshd|nginx FILE --json` (one thread; its `seconds`
//!    covers reading and matching, not process start) against `fail2ban-regex FILE FILTER`
//!    (its own `processed in` time): for sshd Debian's `filter.d/sshd.conf`, for the web log the
//!    shipped web rules ported to failregexes ([`fail2ban_web_filter`]). The tools
//!    alternate, [`RUNS`] runs each; medians of lines per second and their ratio.
//! 2. **Idle CPU**: `ids run` following an sshd log and an access log and watching a web root,
//!    against `ids run` with no detection configured, each measured over [`IDLE_SECS`] s with
//!    nothing written (utime + stime from `/proc/<pid>/stat`).
use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};

use super::{
    Daemon, Machine, Scratch, append_to_benchmarks, build_release, command_stdout, load_average, median, thousands,
    utc_timestamp, wait_for_no_other_sensor,
};

const LINES: usize = 100_000;
const RUNS: usize = 3;
const IDLE_SECS: u64 = 10;
const TARGET_RATIO: f64 = 50.0;

/// A fail2ban filter with the shipped web rules (`ids-user/src/detect/rules.toml`) ported to
/// failregexes: a `request` rule is searched inside the quoted request, a `user_agent` rule in
/// the last quoted field, an `any` rule anywhere after the address; `(?i)` becomes a scoped
/// `(?i:...)` (Python wants global flags first) and `%` is doubled for fail2ban's config parser.
fn fail2ban_web_filter(root: &Path) -> anyhow::Result<String> {
    let path = root.join("ids-user/src/detect/rules.toml");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let rules: toml::Value = text.parse().with_context(|| format!("parsing {}", path.display()))?;
    let mut failregexes = Vec::new();
    for rule in rules.get("rules").and_then(|r| r.as_array()).context("rules.toml has no [[rules]]")? {
        if rule.get("kind").and_then(|k| k.as_str()) != Some("web") {
            continue;
        }
        let pattern = rule.get("pattern").and_then(|p| p.as_str()).context("a web rule has no pattern")?;
        let (pattern, insensitive) = match pattern.strip_prefix("(?i)") {
            Some(rest) => (rest, true),
            None => (pattern, false),
        };
        let (pattern, anchored) = match pattern.strip_prefix('^') {
            Some(rest) => (rest, true),
            None => (pattern, false),
        };
        let body = if insensitive { format!("(?i:{pattern})") } else { format!("(?:{pattern})") };
        let field = rule.get("field").and_then(|f| f.as_str()).unwrap_or("request");
        let regex = match field {
            "user_agent" => format!(r#"^<HOST> \S+ \S+ \[[^\]]*\] "[^"]*" \d+ \S+ "[^"]*" "[^"]*?{body}"#),
            "any" => format!("^<HOST> .*?{body}"),
            _ if anchored => format!(r#"^<HOST> \S+ \S+ \[[^\]]*\] "{body}"#),
            _ => format!(r#"^<HOST> \S+ \S+ \[[^\]]*\] "[^"]*?{body}"#),
        };
        failregexes.push(regex.replace('%', "%%"));
    }
    ensure!(!failregexes.is_empty(), "rules.toml has no web rules");
    Ok(format!(
        "[Definition]\nfailregex = {}\ndatepattern = ^[^\\[]*\\[({{DATE}})\n",
        failregexes.join("\n            ")
    ))
}

struct Xorshift(u64);

impl Xorshift {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// One sshd line: about 70 % benign (sessions, accepted logins, look-alikes), 30 % attacks.
fn sshd_line(rng: &mut Xorshift, i: usize) -> String {
    let (h, m, s) = ((i / 3600) % 24, (i / 60) % 60, i % 60);
    let addr = format!("198.18.{}.{}", rng.below(200), 1 + rng.below(250));
    let port = 1024 + rng.below(60000);
    let pid = 1000 + rng.below(30000);
    let message = match rng.below(10) {
        0 => format!("Failed password for root from {addr} port {port} ssh2"),
        1 => format!("Failed password for invalid user admin{} from {addr} port {port} ssh2", rng.below(100)),
        2 => format!("Invalid user test{} from {addr} port {port}", rng.below(100)),
        3 => format!("Accepted publickey for alice from {addr} port {port} ssh2: ED25519 SHA256:AbCdEf0123456789"),
        4 => "pam_unix(sshd:session): session opened for user alice(uid=1000) by (uid=0)".to_string(),
        5 => "pam_unix(sshd:session): session closed for user alice".to_string(),
        6 => format!("Received disconnect from {addr} port {port}:11: disconnected by user"),
        7 => format!("Disconnected from user alice {addr} port {port}"),
        8 => format!("Connection closed by {addr} port {port} [preauth]"),
        _ => format!("Accepted password for bob from {addr} port {port} ssh2"),
    };
    format!("Nov 21 {h:02}:{m:02}:{s:02} web1 sshd[{pid}]: {message}")
}

/// One combined-format line: about 80 % ordinary requests, 20 % attacks and scanners.
fn web_line(rng: &mut Xorshift, i: usize) -> String {
    let (h, m, s) = ((i / 3600) % 24, (i / 60) % 60, i % 60);
    let addr = format!("198.18.{}.{}", rng.below(200), 1 + rng.below(250));
    let browser = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0";
    let (request, agent) = match rng.below(10) {
        0 => ("GET /item.php?id=1%20UNION%20SELECT%20user,pass%20FROM%20users HTTP/1.1".to_string(), browser),
        1 => ("GET /download?file=../../../../etc/passwd HTTP/1.1".to_string(), "curl/8.5.0"),
        2 => ("GET / HTTP/1.1".to_string(), "sqlmap/1.7.2#stable (https://sqlmap.org)"),
        3 => (format!("GET /static/app.{}.js HTTP/2.0", rng.below(1000)), browser),
        4 => (format!("GET /blog/{}/selecting-from-the-menu HTTP/2.0", rng.below(1000)), browser),
        5 => ("GET /search?q=trade+union+history HTTP/2.0".to_string(), browser),
        6 => (format!("POST /api/v1/orders/{} HTTP/1.1", rng.below(100000)), "python-requests/2.31"),
        7 => ("GET /favicon.ico HTTP/2.0".to_string(), browser),
        8 => (format!("GET /images/photo{}.jpg HTTP/2.0", rng.below(5000)), browser),
        _ => ("GET /index.html HTTP/1.1".to_string(), browser),
    };
    format!(
        "{addr} - - [21/Nov/2026:{h:02}:{m:02}:{s:02} +0000] \"{request}\" 200 {} \"https://example.org/\" \"{agent}\"",
        rng.below(100000)
    )
}

fn generate(path: &Path, line: fn(&mut Xorshift, usize) -> String) -> anyhow::Result<()> {
    let mut rng = Xorshift(0x9E37_79B9_7F4A_7C15);
    let mut text = String::with_capacity(LINES * 160);
    for i in 0..LINES {
        text.push_str(&line(&mut rng, i));
        text.push('\n');
    }
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

struct Throughput {
    ids_lines_per_s: f64,
    fail2ban_lines_per_s: f64,
    ids_matched: u64,
    fail2ban_matched: u64,
}

fn ids_rules_test(ids: &Path, config: &Path, kind: &str, file: &Path) -> anyhow::Result<(f64, u64)> {
    let out = command_stdout(
        Command::new(ids).args(["rules", "test", "--kind", kind, "--json", "--config"]).arg(config).arg(file),
    )?;
    let report: serde_json::Value =
        serde_json::from_str(&out).with_context(|| format!("ids rules test printed {out:?}"))?;
    let lines = report["lines"].as_f64().context("no lines in the report")?;
    let seconds = report["seconds"].as_f64().context("no seconds in the report")?;
    ensure!(lines as usize == LINES, "ids read {lines} lines of {LINES}");
    Ok((lines / seconds.max(1e-9), report["matched_lines"].as_u64().unwrap_or(0)))
}

/// `fail2ban-regex FILE FILTER`: lines per second from its `processed in` time, and matches.
fn fail2ban_regex(file: &Path, filter: &Path) -> anyhow::Result<(f64, u64)> {
    let out = command_stdout(Command::new("fail2ban-regex").arg(file).arg(filter))?;
    let processed = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("[processed in ")?.strip_suffix(" sec]")?.parse::<f64>().ok())
        .with_context(|| format!("fail2ban-regex printed no `processed in` time: {out}"))?;
    let summary = out.lines().find(|l| l.starts_with("Lines: ")).context("fail2ban-regex printed no Lines: summary")?;
    let matched = summary.split(", ").find_map(|part| part.strip_suffix(" matched")?.parse::<u64>().ok()).unwrap_or(0);
    Ok((LINES as f64 / processed.max(1e-9), matched))
}

fn measure_throughput(ids: &Path, config: &Path, kind: &str, file: &Path, filter: &Path) -> anyhow::Result<Throughput> {
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    let (mut ids_matched, mut fail2ban_matched) = (0, 0);
    for run in 0..RUNS {
        eprintln!("bench: {kind} run {}/{RUNS}", run + 1);
        let (rate, matched) = ids_rules_test(ids, config, kind, file)?;
        ours.push(rate);
        ids_matched = matched;
        let (rate, matched) = fail2ban_regex(file, filter)?;
        theirs.push(rate);
        fail2ban_matched = matched;
    }
    Ok(Throughput {
        ids_lines_per_s: median(&ours),
        fail2ban_lines_per_s: median(&theirs),
        ids_matched,
        fail2ban_matched,
    })
}

/// CPU seconds the daemon started with `config` uses over [`IDLE_SECS`] with nothing written.
fn idle_cpu(ids: &Path, scratch: &Scratch, config: &str) -> anyhow::Result<f64> {
    fs::write(&scratch.config, config).with_context(|| format!("writing {}", scratch.config.display()))?;
    wait_for_no_other_sensor()?;
    let daemon = Daemon::start(ids, scratch)?;
    thread::sleep(Duration::from_secs(2));
    let before = super::integrity::process_cpu_seconds(daemon.pid())?;
    let started = Instant::now();
    thread::sleep(Duration::from_secs(IDLE_SECS));
    let after = super::integrity::process_cpu_seconds(daemon.pid())?;
    let elapsed = started.elapsed().as_secs_f64();
    daemon.stop()?;
    Ok((after - before) * IDLE_SECS as f64 / elapsed)
}

pub(super) fn bench_detect(root: &Path) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    ensure!(unsafe { libc::geteuid() } == 0, "the detect bench runs the daemon (eBPF): run it as root");
    ensure!(
        Command::new("fail2ban-regex").arg("--version").output().is_ok_and(|o| o.status.success()),
        "fail2ban-regex not found: `cargo xtask setup` installs Debian's fail2ban"
    );
    let ids = build_release(root)?;
    let machine = Machine::describe(&ids)?;
    let fail2ban_version = command_stdout(Command::new("fail2ban-regex").arg("--version"))?;
    let scratch = Scratch::create()?;
    let sshd_log = scratch.dir.join("auth.log");
    let web_log = scratch.dir.join("access.log");
    generate(&sshd_log, sshd_line)?;
    generate(&web_log, web_line)?;
    let web_filter = scratch.dir.join("web-attacks.conf");
    fs::write(&web_filter, fail2ban_web_filter(root)?).with_context(|| format!("writing {}", web_filter.display()))?;
    let sshd_filter = Path::new("/etc/fail2ban/filter.d/sshd.conf");
    let base = fs::read_to_string(&scratch.config).context("reading the bench config")?;
    let sshd = measure_throughput(&ids, &scratch.config, "sshd", &sshd_log, sshd_filter)?;
    let web = measure_throughput(&ids, &scratch.config, "nginx", &web_log, &web_filter)?;

    let www = scratch.dir.join("www");
    fs::create_dir_all(&www).with_context(|| format!("creating {}", www.display()))?;
    let q = |p: &Path| serde_json::to_string(&p.display().to_string()).expect("a string serializes");
    let with_detection = format!(
        "{base}web_roots = [{}]\n[[logs]]\nkind = \"sshd\"\npath = {}\n[[logs]]\nkind = \"nginx\"\npath = {}\n",
        q(&www),
        q(&sshd_log),
        q(&web_log)
    );
    eprintln!("bench: idle CPU with detection ({IDLE_SECS} s)");
    let idle_with = idle_cpu(&ids, &scratch, &with_detection)?;
    eprintln!("bench: idle CPU without detection ({IDLE_SECS} s)");
    let idle_without = idle_cpu(&ids, &scratch, &base)?;

    let mut section = String::new();
    let _ = writeln!(section, "\n## {} — detect\n", utc_timestamp());
    let _ = writeln!(
        section,
        "Command: `cargo xtask bench detect` (as root). Machine: {} ({} cores), kernel {}, load before {} / after {}. {}; {fail2ban_version}.\n",
        machine.cpu,
        machine.cores,
        machine.kernel,
        machine.load_before,
        load_average(),
        machine.ids_version
    );
    let _ = writeln!(
        section,
        "Rule throughput, one core, {} generated lines per log, median of {RUNS} alternating runs (`ids rules test` vs `fail2ban-regex`'s own processing time):\n",
        thousands(LINES as u64)
    );
    let _ = writeln!(
        section,
        "| log | rules | ids lines/s | fail2ban-regex lines/s | ratio | target ≥{TARGET_RATIO}× | matched (ids / fail2ban) |"
    );
    let _ = writeln!(section, "|---|---|---:|---:|---:|---|---|");
    for (name, filter, t) in [
        ("sshd", "shipped sshd rules vs filter.d/sshd.conf", &sshd),
        ("nginx combined", "shipped web rules vs the same rules as failregexes", &web),
    ] {
        let ratio = t.ids_lines_per_s / t.fail2ban_lines_per_s;
        let _ = writeln!(
            section,
            "| {name} | {filter} | {} | {} | {ratio:.0}× | {} | {} / {} |",
            thousands(t.ids_lines_per_s as u64),
            thousands(t.fail2ban_lines_per_s as u64),
            if ratio >= TARGET_RATIO { "met" } else { "**not met**" },
            thousands(t.ids_matched),
            thousands(t.fail2ban_matched),
        );
    }
    let _ = writeln!(
        section,
        "\nMatched counts differ where the rules differ: Debian's sshd filter and the shipped sshd rules do not cover the same messages, and ids percent-decodes the request before the web rules look at it while the failregexes see it raw. A line counts once however many rules it matches.\n"
    );
    let _ = writeln!(
        section,
        "Daemon CPU over {IDLE_SECS} s with nothing written: {:.3} s with an sshd log, an access log and a web root followed; {:.3} s with no detection configured (target: none beyond the sensor's).",
        idle_with, idle_without
    );
    append_to_benchmarks(&root.join("BENCHMARKS.md"), &section)?;
    print!("{section}");
    Ok(())
}
