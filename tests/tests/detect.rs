//! End to end, root: the real daemon follows an sshd log and a web root that the sensor watches.
//! Five failed SSH logins appended to the log raise one alert and one ban request; a trusted
//! address raises an alert without a ban; an address in a user name is never the one counted;
//! a webshell written into the web root raises an alert within a second, a benign file none;
//! a program named like a web server starting a shell raises a process-tree alert.
use std::fs;
use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use std::net::TcpListener;

use ids_tests::journald::Journald;
use ids_tests::netns::{BAD4, GOOD4, HOST4, Net, TRUSTED4};
use ids_tests::{Daemon, Scratch};
use serde_json::Value;

fn append(path: &Path, line: &str) {
    // One write per line, as syslog daemons do.
    let mut file = fs::OpenOptions::new().append(true).open(path).unwrap();
    file.write_all(format!("{line}\n").as_bytes()).unwrap();
}

fn failed_login(pid: u32, user: &str, addr: &str, port: u32) -> String {
    format!("Nov 21 03:33:41 web1 sshd[{pid}]: Failed password for invalid user {user} from {addr} port {port} ssh2")
}

fn detections(daemon: &Daemon) -> Vec<Value> {
    daemon.events().into_iter().filter(|e| e["kind"] == "detect").collect()
}

/// Waits (bounded) for a detection alert matching `select`; returns it and how long it took.
fn wait_alert(daemon: &Daemon, since: Instant, select: impl Fn(&Value) -> bool) -> (Value, Duration) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(alert) = detections(daemon).into_iter().find(|a| select(a)) {
            return (alert, since.elapsed());
        }
        assert!(
            Instant::now() < deadline,
            "no matching detection alert within 10 s; alerts so far: {:#?}",
            detections(daemon)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A manual ban is no offence toward a detector's escalation unless `[bans]
/// manual_counts_as_offence`; either way the detector's alert and `ids bans` say why the ban lasts
/// as long as it does.
#[test]
fn a_detector_ban_after_a_manual_one_escalates_only_when_configured_and_says_why() {
    for (manual_counts, offence, duration_s, why) in
        [(false, 1, 60, "1st offence: the base duration, 1m"), (true, 2, 120, "2nd offence: 1m doubled once = 2m")]
    {
        let name = if manual_counts { "manual-counts" } else { "manual-free" };
        let scratch = Scratch::new("/var/tmp", name);
        let log = scratch.0.join("auth.log");
        fs::write(&log, "").unwrap();
        let extra = format!(
            "bans.detect_duration = \"1m\"\nbans.manual_counts_as_offence = {manual_counts}\n[[logs]]\nkind = \"sshd\"\npath = {:?}\n",
            log.display().to_string(),
        );
        let daemon = Daemon::start_with(name, &[], &[], &extra);
        let manual = daemon.ids_json(&["ban", "10.200.0.5", "--for", "1h"]);
        assert_eq!(manual["data"][0]["created"], true, "{manual}");
        assert!(manual["data"][0].get("escalation").is_none(), "a manual ban does not escalate: {manual}");
        daemon.ids_json(&["unban", "10.200.0.5"]);

        let start = Instant::now();
        for i in 0..5 {
            append(&log, &failed_login(200, "admin", "10.200.0.5", 50000 + i));
        }
        let (alert, _) = wait_alert(&daemon, start, |a| a["source"] == "10.200.0.5");
        let action = &alert["action"];
        assert_eq!(action["type"], "ban_requested", "{alert}");
        assert_eq!((action["offence"].as_u64(), action["duration_s"].as_u64()), (Some(offence), Some(duration_s)));
        assert_eq!(action["escalation"]["reason"], why, "manual_counts_as_offence = {manual_counts}: {alert}");
        let ban_alert = daemon.wait_for(1, |e| e["kind"] == "ban" && e["net"] == "10.200.0.5");
        assert_eq!(ban_alert.first().map(|a| a["escalation"]["reason"].clone()), Some(why.into()), "{ban_alert:?}");

        let listed = daemon.ids_json(&["bans"]);
        assert_eq!(listed["data"][0]["escalation"]["reason"], why, "{listed}");
        let table = std::process::Command::new(ids_tests::ids_bin())
            .args(["bans", "--config"])
            .arg(&daemon.config)
            .output()
            .unwrap();
        let table = String::from_utf8_lossy(&table.stdout);
        assert!(table.contains(&format!("rule sshd-failed-password [{why}]")), "{table}");
        daemon.stop();
    }
}

#[test]
fn log_attacks_webshells_and_web_server_shells_are_detected() {
    let scratch = Scratch::new("/var/tmp", "detect");
    let log = scratch.0.join("auth.log");
    let www = scratch.0.join("www");
    fs::create_dir_all(&www).unwrap();
    // Failures already in the log when the daemon first starts are history: not counted.
    let history: Vec<String> = (0..5).map(|i| failed_login(100, "old", "10.200.0.9", 40000 + i)).collect();
    fs::write(&log, history.join("\n") + "\n").unwrap();
    let extra = format!(
        "web_roots = [{:?}]\nxdp.trusted = [\"127.0.0.0/8\", \"10.200.1.0/24\"]\nbans.detect_duration = \"60s\"\n[[logs]]\nkind = \"sshd\"\npath = {:?}\n",
        www.display().to_string(),
        log.display().to_string(),
    );
    let daemon = Daemon::start_with("detect", &[], &[], &extra);

    // Five failures from one address: one alert, one ban request, quickly.
    let start = Instant::now();
    for i in 0..5 {
        append(&log, &failed_login(200, "admin", "10.200.0.2", 50000 + i));
    }
    let (alert, latency) = wait_alert(&daemon, start, |a| a["source"] == "10.200.0.2");
    assert_eq!(alert["rule"], "sshd-failed-password");
    assert_eq!(alert["detector"], "ssh-bruteforce");
    assert_eq!(alert["count"], 5);
    assert_eq!(alert["evidence"].as_array().map(Vec::len), Some(5), "{alert}");
    assert_eq!(alert["action"]["type"], "ban_requested", "{alert}");
    assert_eq!(alert["action"]["duration_s"], 60);
    assert_eq!(alert["action"]["offence"], 1);
    // The periodic check runs every 2 s: an alert this soon came from the sensor's write events.
    assert!(latency < Duration::from_secs(1), "alert took {latency:?}: the write events did not drive the read");

    // The same burst goes on: no second alert.
    for i in 0..5 {
        append(&log, &failed_login(200, "admin", "10.200.0.2", 50100 + i));
    }
    // A trusted address: an alert, no ban.
    let start = Instant::now();
    for i in 0..5 {
        append(&log, &failed_login(300, "root", "10.200.1.7", 51000 + i));
    }
    let (trusted, _) = wait_alert(&daemon, start, |a| a["source"] == "10.200.1.7");
    assert_eq!(trusted["action"]["type"], "not_banned_trusted", "{trusted}");
    // Injection: the user name holds another address; only sshd's own counts.
    let start = Instant::now();
    for i in 0..5 {
        append(&log, &failed_login(400, "x from 10.200.0.66 port 22", "10.200.0.3", 52000 + i));
    }
    wait_alert(&daemon, start, |a| a["source"] == "10.200.0.3");

    // Webshell: scanned once written, alert within a second; a benign file gives none.
    fs::write(www.join("index.php"), "<?php echo htmlspecialchars($_GET['q']); ?>\n").unwrap();
    let start = Instant::now();
    fs::write(www.join("upload.php"), "<?php @eval(base64_decode($_POST['z'])); ?>\n").unwrap();
    let (shell, latency) = wait_alert(&daemon, start, |a| a["detector"] == "webshell");
    assert!(str_ends(&shell["path"], "/www/upload.php"), "{shell}");
    assert_eq!(shell["rule"], "webshell-php-eval-decoded", "{shell}");
    assert!(latency < Duration::from_secs(1), "webshell alert took {latency:?}");

    // A copy of sh named `nginx` starting a shell: a process-tree alert.
    let server = scratch.0.join("nginx");
    fs::copy("/bin/sh", &server).unwrap();
    let status = std::process::Command::new(&server).args(["-c", "/bin/sh -c 'exit 0'; sleep 0.5"]).status().unwrap();
    assert!(status.success());
    let (exec, _) = wait_alert(&daemon, Instant::now(), |a| a["detector"] == "webserver-exec");
    assert_eq!(exec["rule"], "webserver-exec-shell", "{exec}");
    assert_eq!(exec["process"]["ancestors"][0]["comm"], "nginx", "{exec}");

    // Give anything left over time to show up, then check the whole picture.
    std::thread::sleep(Duration::from_millis(500));
    let all = detections(&daemon);
    let from = |addr: &str| all.iter().filter(|a| a["source"] == addr).count();
    assert_eq!(from("10.200.0.2"), 1, "one alert per burst: {all:#?}");
    assert_eq!(from("10.200.0.9"), 0, "history before the first start was counted: {all:#?}");
    assert_eq!(from("10.200.0.66"), 0, "an address from a user name was counted: {all:#?}");
    assert_eq!(from("10.200.1.7"), 1);
    assert!(!all.iter().any(|a| str_ends(&a["path"], "/www/index.php")), "benign file alerted: {all:#?}");
    for alert in &all {
        for evidence in alert["evidence"].as_array().unwrap() {
            assert!(!evidence.as_str().unwrap().chars().any(char::is_control), "{alert}");
        }
    }
    let status = daemon.status();
    assert_eq!(status["detect"]["bans_requested"], 2, "{status}");
    assert_eq!(status["detect"]["alerts"].as_u64(), Some(all.len() as u64), "{status}");

    // The same alerts are in the store (read while the daemon runs: WAL).
    let db = daemon.events.parent().unwrap().join("state/ids.db");
    let conn = rusqlite::Connection::open(&db).unwrap();
    let stored: i64 =
        conn.query_row("SELECT count(*) FROM alerts WHERE kind = 'detect'", [], |row| row.get(0)).unwrap();
    assert_eq!(stored as usize, all.len());
    let offences: i64 =
        conn.query_row("SELECT bans FROM offenders WHERE net = '10.200.0.2'", [], |row| row.get(0)).unwrap();
    assert_eq!(offences, 1);
    drop(conn);
    // The requests went through the ban path: banned by the detector, the trusted one not at all.
    let bans = daemon.ids_json(&["bans"]);
    let banned = |addr: &str| bans["data"].as_array().unwrap().iter().find(|b| net_is(&b["net"], addr)).cloned();
    let ban = banned("10.200.0.2").unwrap_or_else(|| panic!("10.200.0.2 not banned: {bans}"));
    assert_eq!(ban["source"], "ssh-bruteforce", "{ban}");
    assert_eq!(ban["reason"], "rule sshd-failed-password", "{ban}");
    assert!(banned("10.200.0.3").is_some(), "{bans}");
    assert!(banned("10.200.1.7").is_none(), "trusted address banned: {bans}");
    assert!(banned("10.200.0.66").is_none(), "address from a user name banned: {bans}");
    daemon.stop();
}

/// Whether a ban's `net` (an address, or an address with a prefix length) is exactly `addr`.
fn net_is(net: &Value, addr: &str) -> bool {
    net.as_str()
        .is_some_and(|n| n == addr || n.strip_suffix("/32") == Some(addr) || n.strip_suffix("/128") == Some(addr))
}

/// The end-to-end case with real packets: a namespace address that fails five SSH logins
/// in a watched auth.log has its packets dropped by the XDP program within a second; a trusted
/// address doing the same is alerted on but keeps passing; another address is never affected.
#[test]
fn five_failed_logins_get_the_source_dropped_in_xdp_and_a_trusted_source_passes() {
    let net = Net::new("d");
    let scratch = Scratch::new("/var/tmp", "detect-xdp");
    let log = scratch.0.join("auth.log");
    fs::write(&log, "").unwrap();
    let extra = format!(
        "xdp.trusted = [\"127.0.0.0/8\", \"{TRUSTED4}\"]\n[[logs]]\nkind = \"sshd\"\npath = {:?}\n",
        log.display().to_string()
    );
    let daemon = Daemon::start_with("detect-xdp", &[], &[net.host_if.as_str()], &extra);
    let listener = TcpListener::bind((HOST4, 0)).unwrap();
    let to = listener.local_addr().unwrap();
    for source in [BAD4, GOOD4, TRUSTED4] {
        assert!(net.tcp_passes(source, to), "{source} cannot reach {to} before any ban");
    }

    let start = Instant::now();
    for i in 0..5 {
        append(&log, &failed_login(500, "admin", BAD4, 53000 + i));
    }
    // Poll the ban list (cheap) until the detector's ban is there, then check the packets.
    let deadline = start + Duration::from_secs(10);
    let banned_after = loop {
        let bans = daemon.ids_json(&["bans"]);
        if bans["data"].as_array().unwrap().iter().any(|b| net_is(&b["net"], BAD4)) {
            break start.elapsed();
        }
        assert!(Instant::now() < deadline, "{BAD4} not banned within 10 s: {bans}");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(!net.tcp_passes(BAD4, to), "{BAD4} is banned but its SYN reached the host");
    assert!(banned_after < Duration::from_secs(1), "the ban took {banned_after:?} after the fifth failure");
    assert!(net.tcp_passes(GOOD4, to), "{GOOD4} was caught by the ban of {BAD4}");

    let start = Instant::now();
    for i in 0..5 {
        append(&log, &failed_login(501, "admin", TRUSTED4, 54000 + i));
    }
    let (alert, _) = wait_alert(&daemon, start, |a| a["source"] == TRUSTED4);
    assert_eq!(alert["action"]["type"], "not_banned_trusted", "{alert}");
    assert!(net.tcp_passes(TRUSTED4, to), "trusted {TRUSTED4} was dropped");
    let bans = daemon.ids_json(&["bans"]);
    assert!(!bans["data"].as_array().unwrap().iter().any(|b| net_is(&b["net"], TRUSTED4)), "{bans}");
    // The dropped SYNs counted against the ban (`ids bans` reads the kernel's counters).
    let ban = bans["data"].as_array().unwrap().iter().find(|b| net_is(&b["net"], BAD4)).cloned().unwrap();
    assert!(ban["packets"].as_u64().is_some_and(|p| p > 0), "no dropped packet counted: {ban}");
    daemon.stop();
    drop(listener);
}

fn str_ends(value: &Value, suffix: &str) -> bool {
    value.as_str().is_some_and(|s| s.ends_with(suffix))
}

/// sshd messages in the systemd journal: five failed logins from one address logged by a
/// process named sshd are one alert naming the journal source, within a second; the same lines
/// logged by another program under the tag sshd are not counted; entries written while the
/// daemon is stopped are read after its restart, from journalctl's cursor.
#[test]
fn sshd_brute_force_in_the_journal_is_detected_and_tags_are_not_trusted() {
    let journald = Journald::start();
    let scratch = Scratch::new("/var/tmp", "journal");
    // A program named sshd (a copy of logger): journald takes `_COMM` from the kernel.
    let sshd = scratch.0.join("sshd");
    fs::copy("/usr/bin/logger", &sshd).unwrap();
    let state = scratch.0.join("state");
    let events = scratch.0.join("events.jsonl");
    let config = scratch.0.join("ids.toml");
    fs::write(
        &config,
        format!(
            "watch = []\nevents_log = {:?}\nstate_dir = {:?}\nxdp.interfaces = [\"lo\"]\nxdp.pin_dir = {:?}\n\
             [[journal]]\nkind = \"sshd\"\nnamespace = {:?}\n",
            events.display().to_string(),
            state.display().to_string(),
            ids_tests::test_pin_dir("journal"),
            journald.namespace,
        ),
    )
    .unwrap();
    let _pins = ids_tests::Pins { config: config.clone() };
    let origin = format!("journal[{}]:sshd", journald.namespace);

    let daemon = Daemon::spawn(&config, &events);
    journald.wait_followed();
    let failures = |addr: &str| -> Vec<String> {
        (0..5).map(|port| format!("Failed password for root from {addr} port {port} ssh2")).collect()
    };
    journald.log_as(Path::new("/usr/bin/logger"), &failures("192.0.2.88"));
    journald.log_as(&sshd, &failures("192.0.2.77"));
    // The five are in the journal now: the alert follows within a second.
    let started = Instant::now();
    let (alert, took) = wait_alert(&daemon, started, |a| a["source"] == "192.0.2.77");
    assert_eq!(alert["path"], origin.as_str(), "{alert}");
    assert_eq!(alert["detector"], "ssh-bruteforce", "{alert}");
    assert!(took < Duration::from_secs(1), "alert after {took:?}");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        detections(&daemon).iter().all(|a| a["source"] != "192.0.2.88"),
        "lines tagged sshd by another program were counted: {:#?}",
        detections(&daemon)
    );
    daemon.stop();

    // Written while no daemon runs: read from the cursor after the restart.
    journald.log_as(&sshd, &failures("192.0.2.99"));
    let daemon = Daemon::spawn(&config, &events);
    let (alert, _) = wait_alert(&daemon, Instant::now(), |a| a["source"] == "192.0.2.99");
    assert_eq!(alert["path"], origin.as_str(), "{alert}");
    let repeated = detections(&daemon).iter().filter(|a| a["source"] == "192.0.2.77").count();
    assert_eq!(repeated, 1, "entries before the cursor were read again: {:#?}", detections(&daemon));
    daemon.stop();
}
