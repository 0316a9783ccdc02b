//! Alert outputs (`[[outputs]]`) of a real daemon, with real receivers on this host: a file gets
//! the alerts at or above its `min_severity` as JSON lines and no raw event, and is reopened on
//! SIGHUP; syslog messages read from a Unix datagram socket and a UDP socket carry the RFC 5424
//! header; a webhook receiver that stops and comes back on the same port gets the alerts it
//! missed, in order, none twice; a receiver that answers 403 has its refusals counted, not retried.
use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ids_tests::{Daemon, Scratch, ids_bin};
use serde_json::Value;

const ALERT_KINDS: [&str; 5] = ["integrity", "sensor_miss", "detect", "remote_check", "ban"];

/// The severity the daemon gives an alert (docs/outputs.md), as a rank: low 0 to critical 3.
fn severity_rank(alert: &Value) -> u8 {
    let name = match alert["kind"].as_str().unwrap_or("") {
        "detect" => alert["severity"].as_str().unwrap_or(""),
        "sensor_miss" | "remote_check" => "high",
        "integrity" => "medium",
        _ => "low",
    };
    ["low", "medium", "high", "critical"].iter().position(|s| *s == name).unwrap_or(0) as u8
}

fn alerts_in_log(daemon: &Daemon) -> Vec<Value> {
    daemon.events().into_iter().filter(|e| ALERT_KINDS.contains(&e["kind"].as_str().unwrap_or(""))).collect()
}

/// Polls `done` for up to 20 s; panics with `what` (and the last state) if it never holds.
fn wait_until(what: &str, mut done: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let outcome = done();
        match outcome {
            Ok(()) => return,
            Err(state) if Instant::now() > deadline => panic!("{what}: not within 20 s: {state}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Writes `name` in the watched directory and waits for the integrity alert naming it.
fn change(daemon: &Daemon, watched: &Path, name: &str) {
    let path = watched.join(name);
    std::fs::write(&path, format!("changed {name}")).unwrap();
    let suffix = format!("{}", path.display());
    wait_until(&format!("the integrity alert of {name}"), || {
        let alerts = alerts_in_log(daemon);
        let found =
            alerts.iter().any(|a| a["kind"] == "integrity" && a["id"].as_str().is_some_and(|id| id.ends_with(&suffix)));
        if found { Ok(()) } else { Err(format!("{alerts:?}")) }
    });
}

/// Starts a daemon whose integrity worker hashes the files under `watched`, with `extra` (which
/// may end inside a table); returns once its first scan is done, so that later writes are changes.
fn start(name: &str, watched: &Path, extra: &str) -> Daemon {
    let extra = format!(
        "{extra}\n[[collectors]]\nkind = \"file_contents\"\nname = \"files\"\npaths = [{:?}]\nrecursive = true\n",
        watched.display().to_string()
    );
    let daemon = Daemon::start_with(name, &[watched], &[], &extra);
    wait_until("the first integrity scan", || {
        let status = daemon.status();
        if status["integrity"]["ready"] == true { Ok(()) } else { Err(status.to_string()) }
    });
    daemon
}

fn output_status(daemon: &Daemon, name: &str) -> Value {
    let status = daemon.status();
    status["outputs"]
        .as_array()
        .and_then(|outputs| outputs.iter().find(|o| o["name"] == name).cloned())
        .unwrap_or_else(|| panic!("no output {name:?} in ids status: {status}"))
}

fn sorted_lines(values: &[Value]) -> Vec<String> {
    let mut lines: Vec<String> = values.iter().map(Value::to_string).collect();
    lines.sort();
    lines
}

fn read_json_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{} line {l:?} is not JSON: {e}", path.display())))
        .collect()
}

fn failed_login(port: u32) -> String {
    format!("Nov 21 03:33:41 web1 sshd[200]: Failed password for invalid user admin from 10.200.0.2 port {port} ssh2")
}

#[test]
fn a_file_output_gets_the_alerts_at_or_above_its_severity_as_json_lines_and_is_reopened_on_sighup() {
    let watched = Scratch::new("/var/tmp", "outputs-file-watched");
    let scratch = Scratch::new("/var/tmp", "outputs-file");
    let auth_log = scratch.0.join("auth.log");
    std::fs::write(&auth_log, "").unwrap();
    // In a directory that does not exist yet: the output creates it.
    let out = scratch.0.join("alerts/ids-alerts.jsonl");
    let extra = format!(
        "bans.detect_duration = \"60s\"\n[[logs]]\nkind = \"sshd\"\npath = {:?}\n\
         [[outputs]]\nkind = \"file\"\nname = \"medium-up\"\npath = {:?}\nmin_severity = \"medium\"\n",
        auth_log.display().to_string(),
        out.display().to_string(),
    );
    let daemon = start("outputs-file", &watched.0, &extra);

    // An integrity alert (medium), then five failed logins: a detect alert (medium) and the ban
    // it asked for (a ban alert: low).
    change(&daemon, &watched.0, "a");
    let mut log = std::fs::OpenOptions::new().append(true).open(&auth_log).unwrap();
    for i in 0..5 {
        log.write_all(format!("{}\n", failed_login(50000 + i)).as_bytes()).unwrap();
    }
    wait_until("a detect and a ban alert in the events log", || {
        let alerts = alerts_in_log(&daemon);
        let has = |kind: &str| alerts.iter().any(|a| a["kind"] == kind);
        if has("detect") && has("ban") { Ok(()) } else { Err(format!("{alerts:?}")) }
    });

    let expected = || -> Vec<Value> { alerts_in_log(&daemon).into_iter().filter(|a| severity_rank(a) >= 1).collect() };
    wait_until("the file output holds every alert of medium severity or more", || {
        let (want, got) = (sorted_lines(&expected()), sorted_lines(&read_json_lines(&out)));
        if want == got { Ok(()) } else { Err(format!("want {want:#?}\ngot {got:#?}")) }
    });
    let written = read_json_lines(&out);
    assert!(written.iter().any(|a| a["kind"] == "detect") && written.iter().any(|a| a["kind"] == "integrity"));
    assert!(written.iter().all(|a| a["kind"] != "ban"), "a low ban alert went to a medium output: {written:?}");
    assert!(written.iter().all(|a| ALERT_KINDS.contains(&a["kind"].as_str().unwrap_or(""))), "{written:?}");
    let mode = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "alert file mode {mode:o}");
    let status = output_status(&daemon, "medium-up");
    assert_eq!(status["kind"], "file");
    assert_eq!(status["sent"].as_u64(), Some(written.len() as u64), "{status}");
    assert_eq!((status["failed"].as_u64(), status["dropped"].as_u64()), (Some(0), Some(0)), "{status}");

    // Rotation: the file moved away, SIGHUP, and the next alert goes to a new file at the path.
    let rotated = scratch.0.join("alerts/ids-alerts.jsonl.1");
    std::fs::rename(&out, &rotated).unwrap();
    daemon.signal(libc::SIGHUP);
    // The SIGHUP is handled by the daemon's loop: give it a moment before the next alert.
    std::thread::sleep(Duration::from_millis(300));
    change(&daemon, &watched.0, "b");
    let suffix = format!("{}", watched.0.join("b").display());
    wait_until("the alert after SIGHUP in the new file", || {
        let new = read_json_lines(&out);
        if new.iter().any(|a| a["id"].as_str().is_some_and(|id| id.ends_with(&suffix))) {
            Ok(())
        } else {
            Err(format!("{new:?}"))
        }
    });
    assert_eq!(read_json_lines(&rotated).len(), written.len(), "the rotated file changed after SIGHUP");
    daemon.stop();
}

/// An RFC 5424 message as the daemon writes it: `<PRI>1 TIMESTAMP HOSTNAME APP PROCID MSGID - MSG`.
struct Syslog {
    pri: u32,
    version: String,
    timestamp: String,
    hostname: String,
    app: String,
    procid: String,
    msgid: String,
    structured_data: String,
    message: Value,
}

fn parse_syslog(datagram: &[u8]) -> Syslog {
    let text = std::str::from_utf8(datagram).unwrap_or_else(|e| panic!("not UTF-8 ({e}): {datagram:?}"));
    let rest = text.strip_prefix('<').unwrap_or_else(|| panic!("no PRI: {text}"));
    let (pri, rest) = rest.split_once('>').unwrap_or_else(|| panic!("no PRI end: {text}"));
    let fields: Vec<&str> = rest.splitn(8, ' ').collect();
    assert_eq!(fields.len(), 8, "{text}");
    Syslog {
        pri: pri.parse().unwrap_or_else(|_| panic!("PRI {pri:?}: {text}")),
        version: fields[0].into(),
        timestamp: fields[1].into(),
        hostname: fields[2].into(),
        app: fields[3].into(),
        procid: fields[4].into(),
        msgid: fields[5].into(),
        structured_data: fields[6].into(),
        message: serde_json::from_str(fields[7]).unwrap_or_else(|e| panic!("MSG is not JSON ({e}): {text}")),
    }
}

/// Checks a message's header against the alert it carries and the daemon that sent it.
fn check_header(message: &Syslog, facility: u32, daemon: &Daemon, hostname: &str) {
    let alert = &message.message;
    let syslog_severity = 5 - u32::from(severity_rank(alert));
    assert_eq!(message.pri, facility * 8 + syslog_severity, "PRI of {alert}");
    assert_eq!(message.version, "1");
    assert_eq!(message.timestamp, alert["time"].as_str().unwrap(), "TIMESTAMP is the alert's time");
    assert!(message.timestamp.ends_with('Z') && message.timestamp.contains('T'), "{}", message.timestamp);
    assert_eq!(message.hostname, hostname);
    assert_eq!(message.app, "ids");
    assert_eq!(message.procid, daemon.pid().to_string());
    assert_eq!(message.msgid, alert["kind"].as_str().unwrap());
    assert_eq!(message.structured_data, "-");
    assert!(alerts_in_log(daemon).contains(alert), "the message's alert is not in the events log: {alert}");
}

/// The first message whose alert's id ends with `suffix`.
fn receive_alert(mut receive: impl FnMut(&mut [u8]) -> std::io::Result<usize>, suffix: &str) -> Syslog {
    let mut buffer = vec![0u8; 65536];
    loop {
        let length = receive(&mut buffer).unwrap_or_else(|e| panic!("no syslog message about {suffix}: {e}"));
        let message = parse_syslog(&buffer[..length]);
        if message.message["id"].as_str().is_some_and(|id| id.ends_with(suffix)) {
            return message;
        }
    }
}

#[test]
fn syslog_outputs_send_rfc_5424_messages_to_a_unix_socket_and_over_udp() {
    let watched = Scratch::new("/var/tmp", "outputs-syslog-watched");
    let scratch = Scratch::new("/var/tmp", "outputs-syslog");
    let socket_path = scratch.0.join("log.sock");
    let unix = UnixDatagram::bind(&socket_path).unwrap();
    unix.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let udp_port = udp.local_addr().unwrap().port();
    let extra = format!(
        "[[outputs]]\nkind = \"syslog\"\nname = \"local\"\naddress = {:?}\n\
         [[outputs]]\nkind = \"syslog\"\nname = \"remote\"\naddress = \"udp://127.0.0.1:{udp_port}\"\nfacility = \"local3\"\n",
        socket_path.display().to_string(),
    );
    let daemon = start("outputs-syslog", &watched.0, &extra);
    change(&daemon, &watched.0, "a");
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim().to_string();
    let suffix = format!("{}", watched.0.join("a").display());
    // The default facility, authpriv (10), on the Unix socket; local3 (19) over UDP.
    let local = receive_alert(|buffer| unix.recv(buffer), &suffix);
    let remote = receive_alert(|buffer| udp.recv(buffer), &suffix);
    for (message, facility) in [(local, 10), (remote, 19)] {
        check_header(&message, facility, &daemon, &hostname);
        assert_eq!(message.msgid, "integrity");
        // Integrity alerts are medium: syslog's warning (4).
        assert_eq!(message.pri, facility * 8 + 4);
    }
    for name in ["local", "remote"] {
        let status = output_status(&daemon, name);
        assert!(status["sent"].as_u64().unwrap() >= 1, "{status}");
        assert_eq!(status["kind"], "syslog");
    }
    daemon.stop();
}

/// A request the receiver took: its path, headers (names in lower case) and body.
#[derive(Debug, Clone)]
struct Received {
    path: String,
    headers: BTreeMap<String, String>,
    body: Value,
}

/// An HTTP/1.1 receiver on 127.0.0.1 that answers every POST with `status`; stopped (its port
/// closed) on drop.
struct Receiver {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Receiver {
    fn start(port: u16, status: u16, received: Arc<Mutex<Vec<Received>>>) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap_or_else(|e| panic!("binding :{port}: {e}"));
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    return;
                }
                if let Ok(stream) = stream {
                    // A connection without a request (the daemon's reachability check) is skipped.
                    if let Some(request) = read_request(&stream) {
                        received.lock().unwrap().push(request);
                        let reason = if status < 300 { "OK" } else { "Refused" };
                        let mut stream = stream;
                        let _ = write!(
                            stream,
                            "HTTP/1.1 {status} {reason}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        );
                    }
                }
            }
        });
        Self { port, stop, thread: Some(thread) }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept so that the thread sees the flag and drops the listener.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn read_request(stream: &TcpStream) -> Option<Received> {
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    if parts.next()? != "POST" {
        return None;
    }
    let path = parts.next()?.to_string();
    let mut headers = BTreeMap::new();
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).ok()?;
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        let (name, value) = header.split_once(':')?;
        headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
    }
    let length: usize = headers.get("content-length")?.parse().ok()?;
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).ok()?;
    Some(Received { path, headers, body: serde_json::from_slice(&body).ok()? })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn webhook_config(port: u16, extra: &str) -> String {
    format!(
        "[[outputs]]\nkind = \"webhook\"\nname = \"hook\"\nurl = \"http://127.0.0.1:{port}/ids/alerts?v=1\"\n\
         headers = {{ Authorization = \"Bearer s3cret\" }}\nbackoff = \"100ms\"\nmax_backoff = \"500ms\"\ntimeout = \"5s\"\n{extra}"
    )
}

#[test]
fn a_webhook_receiver_that_comes_back_gets_the_alerts_it_missed_in_order_once() {
    let watched = Scratch::new("/var/tmp", "outputs-webhook-watched");
    let received = Arc::new(Mutex::new(Vec::new()));
    let receiver = Receiver::start(0, 204, received.clone());
    let port = receiver.port;
    let daemon = start("outputs-webhook", &watched.0, &webhook_config(port, ""));
    let bodies = || -> Vec<Value> { received.lock().unwrap().iter().map(|r| r.body.clone()).collect() };

    change(&daemon, &watched.0, "a");
    wait_until("the receiver gets the first alert", || {
        let (want, got) = (alerts_in_log(&daemon), bodies());
        if !got.is_empty() && want == got { Ok(()) } else { Err(format!("want {want:#?}\ngot {got:#?}")) }
    });
    let first = received.lock().unwrap()[0].clone();
    assert_eq!(first.path, "/ids/alerts?v=1");
    assert_eq!(first.headers.get("authorization").map(String::as_str), Some("Bearer s3cret"));
    assert_eq!(first.headers.get("content-type").map(String::as_str), Some("application/json"));

    // The receiver goes away; three more changes raise their alerts meanwhile.
    drop(receiver);
    for name in ["b", "c", "d"] {
        change(&daemon, &watched.0, name);
    }
    wait_until("the output retries while the receiver is down", || {
        let status = output_status(&daemon, "hook");
        if status["retries"].as_u64() > Some(0) && status["queued"].as_u64() > Some(0) {
            Ok(())
        } else {
            Err(status.to_string())
        }
    });
    let missed = alerts_in_log(&daemon).len() - bodies().len();
    assert!(missed >= 3, "only {missed} alerts raised while the receiver was down");

    // Back on the same port: everything it missed arrives, in the order raised, none twice.
    let _receiver = Receiver::start(port, 200, received.clone());
    wait_until("the receiver gets the alerts it missed", || {
        let (want, got) = (alerts_in_log(&daemon), bodies());
        if want == got { Ok(()) } else { Err(format!("want {want:#?}\ngot {got:#?}")) }
    });
    // Nothing more comes once the queue is empty (a second delivery would show up here).
    wait_until("the queue is empty", || {
        let status = output_status(&daemon, "hook");
        if status["queued"] == 0 { Ok(()) } else { Err(status.to_string()) }
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(bodies(), alerts_in_log(&daemon));
    let status = output_status(&daemon, "hook");
    assert_eq!(status["sent"].as_u64(), Some(bodies().len() as u64), "{status}");
    assert_eq!((status["failed"].as_u64(), status["dropped"].as_u64()), (Some(0), Some(0)), "{status}");
    daemon.stop();
}

/// The value of the sample `series` in a Prometheus exposition.
fn sample(body: &str, series: &str) -> Option<u64> {
    body.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn scrape(port: u16) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(stream, "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n").unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).unwrap();
    raw.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).unwrap_or_default()
}

#[test]
fn a_receiver_that_refuses_with_403_has_its_failures_counted_and_not_retried() {
    let watched = Scratch::new("/var/tmp", "outputs-refused-watched");
    let received = Arc::new(Mutex::new(Vec::new()));
    let receiver = Receiver::start(0, 403, received.clone());
    let metrics_port = free_port();
    let extra = webhook_config(receiver.port, &format!("[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n"));
    let daemon = start("outputs-refused", &watched.0, &extra);
    change(&daemon, &watched.0, "a");
    change(&daemon, &watched.0, "b");
    let raised = || alerts_in_log(&daemon).len() as u64;
    wait_until("every alert refused and counted as failed", || {
        let status = output_status(&daemon, "hook");
        if status["failed"].as_u64() == Some(raised()) && status["queued"] == 0 {
            Ok(())
        } else {
            Err(format!("{} alerts raised; {status}", raised()))
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    let status = output_status(&daemon, "hook");
    assert_eq!(status["sent"], 0, "{status}");
    assert_eq!(status["retries"], 0, "a 403 was retried: {status}");
    assert!(status["last_error"].as_str().is_some_and(|e| e.contains("403")), "{status}");
    // Each alert was POSTed once.
    assert_eq!(received.lock().unwrap().len() as u64, raised());

    let body = scrape(metrics_port);
    ids_tests::promtool_check(&body);
    assert_eq!(sample(&body, r#"ids_output_alerts_total{output="hook",result="failed"}"#), Some(raised()), "{body}");
    assert_eq!(sample(&body, r#"ids_output_alerts_total{output="hook",result="sent"}"#), Some(0), "{body}");
    assert_eq!(sample(&body, r#"ids_output_queued{output="hook"}"#), Some(0), "{body}");

    let text = Command::new(ids_bin()).args(["status", "--config"]).arg(&daemon.config).output().unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.lines().any(|l| l.starts_with("output    hook (webhook): 0 sent, ") && l.contains("403")), "{text}");
    drop(receiver);
    daemon.stop();
}

#[test]
fn a_bad_output_table_is_refused_by_config_check_naming_the_output_and_key() {
    let scratch = Scratch::new("/var/tmp", "outputs-config");
    let config: PathBuf = scratch.0.join("ids.toml");
    for (table, expected) in [
        ("kind = \"email\"", "outputs[0] (\"email-0\").kind"),
        ("kind = \"webhook\"\nname = \"siem\"\nurl = \"ftp://x/\"", "outputs[0] (\"siem\").url"),
        ("kind = \"file\"", "outputs[0] (\"file-0\").path"),
        ("kind = \"syslog\"\nmin_severity = \"urgent\"", "outputs[0] (\"syslog-0\").min_severity"),
    ] {
        std::fs::write(&config, format!("[[outputs]]\n{table}\n")).unwrap();
        let out = Command::new(ids_bin()).args(["config", "check", "--config"]).arg(&config).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{table}: accepted");
        assert!(stderr.contains(expected), "{table}: {stderr}");
    }
}
