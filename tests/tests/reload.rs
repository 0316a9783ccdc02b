//! End to end, root: SIGHUP reads the configuration again. A new rule set takes over from the
//! next line on (the old rule no longer alerts, the new one does), a log and a trusted address
//! added to the file are taken up, and every line written across the reload is read once; what
//! needs a restart is named in the log; a configuration or rules file that does not load leaves
//! the daemon running on the one in force.
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ids_tests::{Daemon, Scratch};
use serde_json::Value;

fn append(path: &Path, line: &str) {
    let mut file = fs::OpenOptions::new().create(true).append(true).open(path).unwrap();
    file.write_all(format!("{line}\n").as_bytes()).unwrap();
}

/// A rules file replacing the shipped rules with one sshd rule `id` matching `WORD from ADDR
/// port N`, one hit enough.
fn write_rules(path: &Path, id: &str, word: &str) {
    fs::write(
        path,
        format!(
            "[[rules]]\nid = {id:?}\ndescription = \"{word} seen\"\nseverity = \"medium\"\nkind = \"sshd\"\n\
             pattern = '{word} from <ADDR> port \\d+'\nthreshold = 1\nwindow = 60\n"
        ),
    )
    .unwrap();
}

fn line(word: &str, addr: &str, n: u32) -> String {
    format!("Dec  5 10:00:00 host sshd[{}]: {word} from {addr} port {n}", 1000 + n)
}

fn detections(daemon: &Daemon) -> Vec<Value> {
    daemon.events().into_iter().filter(|e| e["kind"] == "detect").collect()
}

fn wait_alert_from(daemon: &Daemon, addr: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(alert) = detections(daemon).into_iter().find(|a| a["source"] == addr) {
            return alert;
        }
        assert!(Instant::now() < deadline, "no alert for {addr} within 10 s: {:#?}", detections(daemon));
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct Setup {
    _scratch: Scratch,
    log: PathBuf,
    rules: PathBuf,
    daemon: Daemon,
}

fn start(name: &str) -> Setup {
    let scratch = Scratch::new("/var/tmp", name);
    let log = scratch.0.join("auth.log");
    let rules = scratch.0.join("rules.toml");
    fs::write(&log, "").unwrap();
    write_rules(&rules, "test-alpha", "alpha");
    let extra = format!(
        "rules = {:?}\nrules_mode = \"replace\"\n[[logs]]\nkind = \"sshd\"\npath = {:?}\n",
        rules.display().to_string(),
        log.display().to_string(),
    );
    let daemon = Daemon::start_with(name, &[], &[], &extra);
    Setup { _scratch: scratch, log, rules, daemon }
}

fn lines_read(daemon: &Daemon) -> u64 {
    daemon.status()["detect"]["lines"].as_u64().expect("detect.lines in the status")
}

#[test]
fn sighup_replaces_the_rules_takes_up_logs_and_trusted_and_loses_no_line() {
    let Setup { _scratch, log, rules, daemon } = start("reload");
    append(&log, &line("alpha", "192.0.2.1", 1));
    assert_eq!(wait_alert_from(&daemon, "192.0.2.1")["rule"], "test-alpha");

    // A writer keeps appending while the configuration is replaced and read again.
    let writer = {
        let log = log.clone();
        std::thread::spawn(move || {
            for n in 0..2_000 {
                append(&log, &line("noise", "192.0.2.200", n));
                if n % 100 == 0 {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        })
    };
    let second = log.with_file_name("second.log");
    fs::write(&second, "").unwrap();
    write_rules(&rules, "test-beta", "beta");
    let mut config = fs::read_to_string(&daemon.config).unwrap();
    // Dotted keys before the tables, as the test daemon's file is written.
    config =
        config.replacen("watch = [", "xdp.trusted = [\"127.0.0.0/8\", \"192.0.2.77\"]\nwatch = [\"/var/tmp\", ", 1);
    config.push_str(&format!("[[logs]]\nkind = \"sshd\"\npath = {:?}\n", second.display().to_string()));
    fs::write(&daemon.config, config).unwrap();
    daemon.signal(libc::SIGHUP);

    // Once a beta line alerts, the new rules are in force; an alpha line written before a beta
    // one is read first, so it meets them too.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut n: u32 = 0;
    while !detections(&daemon).iter().any(|a| a["rule"] == "test-beta") {
        assert!(Instant::now() < deadline, "the new rule never applied: {:#?}", detections(&daemon));
        append(&log, &line("beta", &format!("192.0.2.{}", 10 + n % 50), n));
        n += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    writer.join().unwrap();
    append(&log, &line("alpha", "192.0.2.2", 2));
    append(&log, &line("beta", "192.0.2.3", 3));
    wait_alert_from(&daemon, "192.0.2.3");
    assert!(
        !detections(&daemon).iter().any(|a| a["source"] == "192.0.2.2"),
        "the removed rule still alerted: {:#?}",
        detections(&daemon)
    );
    // The log added by the reload is followed; the address it trusts is not banned.
    append(&second, &line("beta", "192.0.2.77", 4));
    let trusted = wait_alert_from(&daemon, "192.0.2.77");
    assert_eq!(trusted["path"].as_str().map(|p| p.ends_with("/second.log")), Some(true), "{trusted}");
    assert_eq!(trusted["action"]["type"], "not_banned_trusted", "{trusted}");

    // Every line written was read exactly once: 1 + 2,000 + n + 2 in the first log, 1 in the second.
    let written = 1 + 2_000 + u64::from(n) + 2 + 1;
    let deadline = Instant::now() + Duration::from_secs(10);
    while lines_read(&daemon) < written && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(lines_read(&daemon), written, "lines read across the reload");
    let stderr = daemon.stop();
    assert!(stderr.contains("SIGHUP: configuration reloaded"), "{stderr}");
    assert!(stderr.contains("watch changed; it takes effect when the daemon is restarted"), "{stderr}");
    assert!(stderr.contains("test-beta"), "the new rules are named in the log: {stderr}");
}

#[test]
fn a_configuration_that_does_not_load_leaves_the_daemon_on_the_one_in_force() {
    let Setup { _scratch, log, rules, daemon } = start("reload-bad");
    let good = fs::read_to_string(&daemon.config).unwrap();
    // Not TOML.
    fs::write(&daemon.config, "watch = [\n").unwrap();
    daemon.signal(libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(500));
    append(&log, &line("alpha", "192.0.2.1", 1));
    assert_eq!(wait_alert_from(&daemon, "192.0.2.1")["rule"], "test-alpha");
    // A valid file whose rules file does not compile.
    fs::write(&daemon.config, &good).unwrap();
    fs::write(&rules, "[[rules]]\nid = \"broken\"\n").unwrap();
    daemon.signal(libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(500));
    append(&log, &line("alpha", "192.0.2.2", 2));
    assert_eq!(wait_alert_from(&daemon, "192.0.2.2")["rule"], "test-alpha");
    let stderr = daemon.stop();
    let refusals = stderr.matches("SIGHUP: configuration not reloaded; running on with the one in force").count();
    assert_eq!(refusals, 2, "{stderr}");
    assert!(stderr.contains("ids.toml"), "the configuration file is named: {stderr}");
    assert!(stderr.contains("rules.toml"), "the rules file is named: {stderr}");
    assert!(!stderr.contains("SIGHUP: configuration reloaded"), "{stderr}");
}
