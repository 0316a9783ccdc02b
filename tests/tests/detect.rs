//! End to end, root: the real daemon follows an sshd log and a web root that the sensor watches.
//! Five failed SSH logins appended to the log raise one alert and one ban request; a trusted
//! address raises an alert without a ban; an address in a user name is never the one counted;
//! a webshell written into the web root raises an alert within a second, a benign file none;
//! a program named like a web server starting a shell raises a process-tree alert.
use std::fs;
use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

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
        conn.query_row("SELECT count FROM offences WHERE addr = '10.200.0.2'", [], |row| row.get(0)).unwrap();
    assert_eq!(offences, 1);
    drop(conn);
    let stderr = daemon.stop();
    assert!(stderr.contains("ban requested") && stderr.contains("10.200.0.2"), "{stderr}");
    assert!(!stderr.contains("addr=10.200.1.7"), "trusted address reached the ban path: {stderr}");
}

fn str_ends(value: &Value, suffix: &str) -> bool {
    value.as_str().is_some_and(|s| s.ends_with(suffix))
}
