//! Integration tests of the TinyIDS server and client: the real `ids serve` and `ids client`
//! binaries over loopback, in plain TCP, TLS 1.3 and mTLS; raw sockets for byte-level checks.
//! Distinct loopback source addresses (127.0.0.x, all loopback) stand for distinct clients.
//! The last test runs the daemon (root, BPF) and checks its remote_check alert.
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ids_tests::{Daemon, Scratch, ids_bin};
use serde_json::Value;

/// Keys every configuration file needs; TinyIDS tables follow.
fn base_config(dir: &Path) -> String {
    format!("watch = []\nevents_log = \"-\"\nstate_dir = {:?}\n", dir.join("state").display().to_string())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A running `ids serve` with its own database, audit log and configuration.
struct Server {
    child: Option<Child>,
    port: u16,
    db: PathBuf,
    audit: PathBuf,
    config: PathBuf,
    /// Whether listen address, database and audit log are given as flags (else the file has them).
    flags: bool,
}

impl Server {
    fn start(dir: &Path, serve_table: &str) -> Self {
        Self::start_on(dir, serve_table, free_port())
    }

    fn start_on(dir: &Path, serve_table: &str, port: u16) -> Self {
        let db = dir.join("records.db");
        let audit = dir.join("audit.jsonl");
        let config = dir.join("serve.toml");
        std::fs::write(&config, format!("{}[serve]\n{serve_table}\n", base_config(dir))).unwrap();
        let mut server = Self { child: None, port, db, audit, config, flags: true };
        server.spawn();
        server
    }

    /// `ids serve --config FILE` alone, with `config` (which must give listen, db and audit_log).
    fn start_with_file(dir: &Path, port: u16, config: &str) -> Self {
        let path = dir.join("serve-only.toml");
        std::fs::write(&path, config).unwrap();
        let (db, audit) = (dir.join("records.db"), dir.join("audit.jsonl"));
        let mut server = Self { child: None, port, db, audit, config: path, flags: false };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let mut command = Command::new(ids_bin());
        command.arg("serve");
        if self.flags {
            command.args(["--listen", &format!("127.0.0.1:{}", self.port), "--db"]).arg(&self.db);
            command.arg("--audit-log").arg(&self.audit);
        }
        let child = command
            .arg("--config")
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", ids_bin().display()));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(self.address()).is_err() {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("ids serve exited during start: {status}");
            }
            assert!(Instant::now() < deadline, "ids serve did not listen on {} within 20 s", self.address());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn address(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
            let _ = child.wait();
        }
    }

    fn audit(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.audit)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("audit line {l:?} is not JSON: {e}")))
            .collect()
    }

    /// Waits (bounded) for an audit record that `matches`.
    fn wait_audit(&self, matches: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(found) = self.audit().into_iter().find(|r| matches(r)) {
                return found;
            }
            assert!(Instant::now() < deadline, "no matching audit record; log: {:?}", self.audit());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn records(&self) -> Value {
        let out = Command::new(ids_bin()).args(["server", "list", "--json", "--db"]).arg(&self.db).output().unwrap();
        assert!(out.status.success(), "ids server list: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A connection to `server` from loopback address `source`.
fn connect_from(source: [u8; 4], server: SocketAddr) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.bind(&SocketAddr::from((source, 0)).into()).unwrap();
    socket.connect_timeout(&server.into(), Duration::from_secs(5)).unwrap();
    socket.into()
}

/// One raw exchange from source address `source`: sends `bytes`, reads until the server closes.
fn raw_from(source: [u8; 4], server: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut stream = connect_from(source, server);
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    stream.write_all(bytes).unwrap();
    let mut reply = Vec::new();
    stream
        .read_to_end(&mut reply)
        .unwrap_or_else(|e| panic!("reading the reply to {:?}: {e}", String::from_utf8_lossy(bytes)));
    reply
}

/// Like [`raw`] for a server that may reset the connection: what arrived before the end.
fn raw_tolerant(server: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(server).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let _ = stream.write_all(bytes);
    let mut reply = Vec::new();
    let mut buf = [0u8; 512];
    while let Ok(n @ 1..) = stream.read(&mut buf) {
        reply.extend_from_slice(&buf[..n]);
    }
    reply
}

fn raw(server: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    raw_from([127, 0, 0, 1], server, bytes)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `ids client <args>` with IDS_PASSPHRASE set to `passphrase` when given.
fn client(args: &[&str], passphrase: Option<&str>) -> Output {
    let mut command = Command::new(ids_bin());
    command.arg("client").args(args).env_remove("IDS_PASSPHRASE").env_remove("IDS_NEW_PASSPHRASE");
    if let Some(passphrase) = passphrase {
        command.env("IDS_PASSPHRASE", passphrase);
    }
    // A session of its own: no controlling terminal, so a prompt fails instead of waiting.
    use std::os::unix::process::CommandExt as _;
    unsafe {
        command.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    command.stdin(Stdio::null()).output().unwrap()
}

/// `ids client ... --json`: (exit code, results array).
fn client_json(args: &[&str], passphrase: Option<&str>) -> (i32, Vec<Value>) {
    let mut all = args.to_vec();
    all.push("--json");
    let out = client(&all, passphrase);
    let json: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("ids client {args:?} printed no JSON ({e}): {}{}", text(&out.stdout), text(&out.stderr))
    });
    (out.status.code().unwrap_or(-1), json["results"].as_array().cloned().unwrap_or_default())
}

fn code_of(results: &[Value]) -> Vec<Value> {
    results.iter().map(|r| r["code"].clone()).collect()
}

#[test]
fn plain_client_commands_follow_the_protocol() {
    let dir = Scratch::new("/tmp", "tinyids-plain");
    let server = Server::start(&dir.0, "");
    let at = server.address().to_string();
    let s = ["--server", at.as_str()];
    let run = |args: &[&str], pass: Option<&str>| {
        let mut all = args.to_vec();
        all.extend_from_slice(&s);
        client_json(&all, pass)
    };
    assert_eq!(run(&["test"], None).0, 0);
    let (code, results) = run(&["check", "--hash", "aaaa"], None);
    assert_eq!((code, code_of(&results)), (3, vec![Value::from(31)]), "CHECK before any UPDATE is NOT FOUND");
    assert_eq!(run(&["update", "--hash", "aaaa"], Some("first")).0, 0);
    assert_eq!(run(&["check", "--hash", "aaaa"], None).0, 0);
    let (code, results) = run(&["check", "--hash", "bbbb"], None);
    assert_eq!((code, results[0]["result"].as_str()), (3, Some("mismatch")));
    // A later UPDATE needs the passphrase; a wrong one leaves the record as it was.
    let (code, results) = run(&["update", "--hash", "cccc"], Some("wrong"));
    assert_eq!((code, code_of(&results)), (4, vec![Value::from(42)]));
    assert_eq!(run(&["check", "--hash", "aaaa"], None).0, 0);
    assert_eq!(run(&["update", "--hash", "cccc"], Some("first")).0, 0);
    assert_eq!(run(&["check", "--hash", "cccc"], None).0, 0);
    // CHANGEPHRASE: wrong old passphrase 42, right one 20; then only the new one works.
    let out = client(&["changephrase", "--server", &at, "--new-passphrase-arg", "second", "--json"], Some("wrong"));
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stdout));
    let out = client(&["changephrase", "--server", &at, "--new-passphrase-arg", "second"], Some("first"));
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
    assert_eq!(run(&["delete"], Some("first")).0, 4);
    assert_eq!(run(&["delete"], Some("second")).0, 0);
    assert_eq!(run(&["check", "--hash", "cccc"], None).1[0]["code"], 31);
    assert_eq!(run(&["delete"], Some("second")).1[0]["code"], 31, "DELETE without a record is NOT FOUND");
    let out = client(&["changephrase", "--server", &at, "--new-passphrase-arg", "x", "--json"], Some("second"));
    assert_eq!(serde_json::from_slice::<Value>(&out.stdout).unwrap()["results"][0]["code"], 31);
    // The audit log has every request, and never a passphrase.
    let audit = std::fs::read_to_string(&server.audit).unwrap();
    for secret in ["first", "second", "wrong"] {
        assert!(!audit.contains(secret), "the audit log contains a passphrase: {audit}");
    }
    let records = server.audit();
    assert!(records.iter().any(|r| r["command"] == "CHANGEPHRASE" && r["code"] == 20 && r["client"] == "127.0.0.1"));
    assert!(records.iter().all(|r| r["transport"] == "plain"));
}

#[test]
fn client_reports_each_server_and_exits_with_the_worst() {
    let dir = Scratch::new("/tmp", "tinyids-many");
    let server = Server::start(&dir.0, "");
    let closed = free_port();
    let config = dir.0.join("client.toml");
    std::fs::write(
        &config,
        format!(
            "{}[[servers]]\nname = \"up\"\nhost = \"127.0.0.1\"\nport = {}\n\n[[servers]]\nname = \"down\"\nhost = \"127.0.0.1\"\nport = {closed}\n\n[[servers]]\nname = \"off\"\nhost = \"127.0.0.1\"\nport = {closed}\nenabled = false\n",
            base_config(&dir.0),
            server.port
        ),
    )
    .unwrap();
    let (code, results) = client_json(&["test", "--config", config.to_str().unwrap()], None);
    assert_eq!(code, 5, "an unreachable server is the worst outcome: {results:?}");
    assert_eq!(results.len(), 2, "the disabled server is not contacted: {results:?}");
    assert_eq!((results[0]["server"].as_str(), results[0]["code"].as_u64()), (Some("up"), Some(20)));
    assert_eq!((results[1]["server"].as_str(), results[1]["result"].as_str()), (Some("down"), Some("unreachable")));
    assert!(results[1]["error"].as_str().unwrap().contains("refused"), "{results:?}");
}

/// A TinyIDS 0.1.6 client's session, byte for byte: one TCP connection per command, `COMMAND
/// args` plus CRLF in one send; TEST carries the revision (`TEST 2`, as every TinyIDS client
/// since 0.1.4 sends it); CHECK and UPDATE carry the SHA-1 hexdigest (40 hex digits) of the
/// collected data, UPDATE followed by the passphrase; the client reads one reply and takes one
/// starting with `20` as success. Each reply is `NN TEXT` plus CRLF, and the server closes after it.
#[test]
fn tinyids_0_1_6_session_is_byte_for_byte() {
    let dir = Scratch::new("/tmp", "tinyids-bytes");
    let server = Server::start(&dir.0, "");
    let at = server.address();
    let sha1_a = "da39a3ee5e6b4b0d3255bfef95601890afd80709";
    let sha1_b = "2fd4e1c67a2d28fced849ee1bb76e7391b93eb12";
    let session: [(String, &[u8]); 8] = [
        ("TEST 2\r\n".into(), b"20 OK\r\n"),
        (format!("CHECK {sha1_a}\r\n"), b"31 NOT FOUND\r\n"),
        (format!("UPDATE {sha1_a} s3cret\r\n"), b"20 OK\r\n"),
        (format!("CHECK {sha1_a}\r\n"), b"20 OK\r\n"),
        (format!("CHECK {sha1_b}\r\n"), b"30 MISMATCH\r\n"),
        (format!("UPDATE {sha1_b} guess\r\n"), b"42 INVALID PASSPHRASE\r\n"),
        ("CHANGEPHRASE s3cret n3w\r\n".into(), b"20 OK\r\n"),
        ("DELETE n3w\r\n".into(), b"20 OK\r\n"),
    ];
    for (sent, expected) in &session {
        // read_to_end returns only once the server has closed: one command per connection.
        let reply = raw(at, sent.as_bytes());
        assert_eq!(text(&reply), text(expected), "reply to {sent:?}");
    }
    // Another revision is an invalid client; the command word may be in any case.
    assert_eq!(raw(at, b"TEST 1\r\n"), b"40 INVALID CLIENT\r\n");
    assert_eq!(raw(at, b"test 2\n"), b"20 OK\r\n");
    // A revision-1 client (TinyIDS 0.1.0-0.1.3) sends TEST without an argument: still accepted.
    assert_eq!(raw(at, b"TEST\r\n"), b"20 OK\r\n");
}

/// A configuration for a host that only runs `ids serve`: the `[serve]` table and nothing of
/// the sensor (`watch`, `events_log`, `state_dir` take their defaults).
#[test]
fn server_only_configuration_needs_no_sensor_keys() {
    let dir = Scratch::new("/tmp", "tinyids-serve-only");
    let port = free_port();
    let config = format!(
        "[serve]\nlisten = \"127.0.0.1:{port}\"\ndb = {:?}\naudit_log = {:?}\n",
        dir.0.join("records.db").display().to_string(),
        dir.0.join("audit.jsonl").display().to_string()
    );
    let server = Server::start_with_file(&dir.0, port, &config);
    let check = Command::new(ids_bin()).args(["config", "check", "--config"]).arg(&server.config).output().unwrap();
    assert!(check.status.success(), "ids config check refused the server-only file: {}", text(&check.stderr));
    // The server listens where the file says, keeps records where it says, audits where it says.
    assert_eq!(raw(server.address(), b"UPDATE h1 pw\r\n"), b"20 OK\r\n");
    let at = server.address().to_string();
    let config_arg = server.config.to_str().unwrap().to_string();
    let (code, results) = client_json(&["check", "--hash", "h1", "--server", &at, "--config", &config_arg], None);
    assert_eq!((code, code_of(&results)), (0, vec![Value::from(20)]), "{results:?}");
    assert_eq!(server.records()[0]["hash"], "h1");
    server.wait_audit(|r| r["command"] == "CHECK" && r["code"] == 20);
    // The sensor's keys are still checked when they are given.
    let bad = dir.0.join("bad.toml");
    std::fs::write(&bad, format!("state_dir = \"relative/state\"\n{config}")).unwrap();
    let out = Command::new(ids_bin()).args(["serve", "--config"]).arg(&bad).stderr(Stdio::piped()).output().unwrap();
    assert!(!out.status.success(), "ids serve accepted a relative state_dir");
    let stderr = text(&out.stderr);
    assert!(stderr.contains("state_dir") && stderr.contains("not an absolute path"), "{stderr}");
}

/// Which TinyIDS server a [`TinyidsPeer`] answers as. They differ only in TEST.
#[derive(Clone, Copy)]
enum PeerRevision {
    /// Revision 1 (TinyIDS 0.1.0-0.1.3): TEST takes no argument, so `TEST 2` is a wrong argument
    /// count, answered 41 like any other.
    One,
    /// TinyIDS 0.1.6 (revision 2, since 0.1.4): TEST takes the client's revision, so `TEST 2` is
    /// answered 20 and a bare `TEST` is a wrong argument count, answered 41.
    Tinyids016,
}

/// A loopback peer that answers as a TinyIDS server of the given revision: it reads one line
/// (up to 8192 bytes), splits it on whitespace, and answers `41 INVALID COMMAND` to an unknown
/// command or to a wrong argument count; records are keyed by the client's IP address,
/// passphrases compared as sent. One reply line with CRLF, then it closes. It keeps every
/// request line it received.
struct TinyidsPeer {
    address: SocketAddr,
    received: Arc<Mutex<Vec<String>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TinyidsPeer {
    fn start(revision: PeerRevision) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread = {
            let (received, stop) = (received.clone(), stop.clone());
            std::thread::spawn(move || {
                // client IP -> (hash, passphrase)
                let mut records: std::collections::HashMap<String, (String, String)> = Default::default();
                for stream in listener.incoming() {
                    if stop.load(std::sync::atomic::Ordering::SeqCst) {
                        break;
                    }
                    let Ok(mut stream) = stream else { continue };
                    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    let client = stream.peer_addr().unwrap().ip().to_string();
                    let mut line = Vec::new();
                    let mut byte = [0u8; 1];
                    while line.len() < 8192 && !line.ends_with(b"\n") {
                        match stream.read(&mut byte) {
                            Ok(1) => line.push(byte[0]),
                            _ => break,
                        }
                    }
                    let line = String::from_utf8_lossy(&line).into_owned();
                    received.lock().unwrap().push(line.clone());
                    let words: Vec<&str> = line.split_whitespace().collect();
                    let command = words.first().map(|w| w.to_uppercase()).unwrap_or_default();
                    let args = &words[words.len().min(1)..];
                    let reply = match (command.as_str(), args, revision) {
                        // Other revisions are not sent by these tests, so they are not modelled.
                        ("TEST", [], PeerRevision::One) | ("TEST", ["2"], PeerRevision::Tinyids016) => "20 OK",
                        ("CHECK", [hash], _) => match records.get(&client) {
                            None => "31 NOT FOUND",
                            Some((stored, _)) if stored == hash => "20 OK",
                            Some(_) => "30 MISMATCH",
                        },
                        ("UPDATE", [hash, passphrase], _) => match records.get(&client) {
                            Some((_, stored)) if stored != passphrase => "42 INVALID PASSPHRASE",
                            _ => {
                                records.insert(client.clone(), (hash.to_string(), passphrase.to_string()));
                                "20 OK"
                            }
                        },
                        ("DELETE", [passphrase], _) => match records.get(&client) {
                            None => "31 NOT FOUND",
                            Some((_, stored)) if stored != passphrase => "42 INVALID PASSPHRASE",
                            Some(_) => {
                                records.remove(&client);
                                "20 OK"
                            }
                        },
                        ("CHANGEPHRASE", [old, new], _) => match records.get_mut(&client) {
                            None => "31 NOT FOUND",
                            Some((_, stored)) if stored != old => "42 INVALID PASSPHRASE",
                            Some((_, stored)) => {
                                *stored = new.to_string();
                                "20 OK"
                            }
                        },
                        _ => "41 INVALID COMMAND",
                    };
                    let _ = stream.write_all(format!("{reply}\r\n").as_bytes());
                }
            })
        };
        Self { address, received, stop, thread: Some(thread) }
    }

    /// The request lines received since the last call.
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.received.lock().unwrap())
    }
}

impl Drop for TinyidsPeer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = TcpStream::connect(self.address);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// `ids client test` against a TinyIDS 0.1.6 server: it speaks revision 2, so `TEST 2` alone is
/// sent and answered 20, with no fall-back.
#[test]
fn client_speaks_revision_2_to_a_tinyids_0_1_6_server() {
    let peer = TinyidsPeer::start(PeerRevision::Tinyids016);
    let peer_at = peer.address.to_string();
    assert_eq!(raw(peer.address, b"TEST\r\n"), b"41 INVALID COMMAND\r\n", "the peer answers a bare TEST as 0.1.6 does");
    peer.take();
    let (code, results) = client_json(&["test", "--server", &peer_at], None);
    assert_eq!(code, 0, "{results:?}");
    assert_eq!((results[0]["code"].as_u64(), results[0]["revision"].as_u64()), (Some(20), Some(2)), "{results:?}");
    assert_eq!(peer.take(), ["TEST 2\r\n"], "a bare TEST was sent to a revision-2 server");
    let out = client(&["test", "--server", &peer_at], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let line = text(&out.stdout);
    assert!(line.contains("20 OK (revision 2)"), "{line}");
    // CHECK and UPDATE are the same as with ids serve.
    let sha_a = "a".repeat(64);
    let (code, results) = client_json(&["update", "--hash", &sha_a, "--server", &peer_at], Some("s3cret"));
    assert_eq!((code, code_of(&results)), (0, vec![Value::from(20)]), "{results:?}");
    let (code, results) = client_json(&["check", "--hash", &sha_a, "--server", &peer_at], None);
    assert_eq!((code, code_of(&results)), (0, vec![Value::from(20)]), "{results:?}");
}

/// `ids client test` against a revision-1 server (TinyIDS 0.1.0-0.1.3): `TEST 2` is answered 41,
/// so the client asks a bare `TEST` and reports the older revision; the other commands work as
/// with revision 2.
#[test]
fn client_falls_back_to_a_bare_test_with_a_revision_1_server() {
    let dir = Scratch::new("/tmp", "tinyids-rev1");
    let ours = Server::start(&dir.0, "");
    let peer = TinyidsPeer::start(PeerRevision::One);
    let (ours_at, peer_at) = (ours.address().to_string(), peer.address.to_string());
    assert_eq!(
        raw(peer.address, b"TEST 2\r\n"),
        b"41 INVALID COMMAND\r\n",
        "the peer answers TEST 2 as revision 1 does"
    );
    peer.take();

    let (code, results) = client_json(&["test", "--server", &ours_at, "--server", &peer_at], None);
    assert_eq!(code, 0, "{results:?}");
    assert_eq!((results[0]["code"].as_u64(), results[0]["revision"].as_u64()), (Some(20), Some(2)), "{results:?}");
    assert_eq!((results[1]["code"].as_u64(), results[1]["revision"].as_u64()), (Some(20), Some(1)), "{results:?}");
    assert_eq!(peer.take(), ["TEST 2\r\n", "TEST\r\n"], "one connection per command, TEST 2 then a bare TEST");
    let out = client(&["test", "--server", &peer_at], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let line = text(&out.stdout);
    assert!(line.contains("20 OK") && line.contains("revision 1") && line.contains("TinyIDS 0.1.0-0.1.3"), "{line}");
    assert!(!line.contains("0.1.6"), "a revision-1 server was named TinyIDS 0.1.6: {line}");
    peer.take();

    // CHECK, UPDATE, CHANGEPHRASE and DELETE are sent as revision 2 sends them, one line each.
    let s = ["--server", peer_at.as_str()];
    let run = |args: &[&str], pass: Option<&str>| {
        let mut all = args.to_vec();
        all.extend_from_slice(&s);
        let (code, results) = client_json(&all, pass);
        (code, results[0]["code"].as_u64())
    };
    let (sha_a, sha_b) = ("a".repeat(64), "b".repeat(64));
    assert_eq!(run(&["check", "--hash", &sha_a], None), (3, Some(31)));
    assert_eq!(run(&["update", "--hash", &sha_a], Some("s3cret")), (0, Some(20)));
    assert_eq!(run(&["check", "--hash", &sha_a], None), (0, Some(20)));
    assert_eq!(run(&["check", "--hash", &sha_b], None), (3, Some(30)));
    assert_eq!(run(&["update", "--hash", &sha_b], Some("guess")), (4, Some(42)));
    let out = client(&["changephrase", "--server", &peer_at, "--new-passphrase-arg", "n3w", "--json"], Some("s3cret"));
    assert_eq!(out.status.code(), Some(0), "{}{}", text(&out.stdout), text(&out.stderr));
    assert_eq!(run(&["delete"], Some("n3w")), (0, Some(20)));
    assert_eq!(run(&["check", "--hash", &sha_a], None), (3, Some(31)));
    assert_eq!(
        peer.take(),
        [
            format!("CHECK {sha_a}\r\n"),
            format!("UPDATE {sha_a} s3cret\r\n"),
            format!("CHECK {sha_a}\r\n"),
            format!("CHECK {sha_b}\r\n"),
            format!("UPDATE {sha_b} guess\r\n"),
            "CHANGEPHRASE s3cret n3w\r\n".to_string(),
            "DELETE n3w\r\n".to_string(),
            format!("CHECK {sha_a}\r\n"),
        ]
    );
    // A server that refuses the bare TEST too is reported with that refusal, no revision.
    let refusing = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let refusing_at = refusing.local_addr().unwrap().to_string();
    let answerer = std::thread::spawn(move || {
        for _ in 0..2 {
            let (mut stream, _) = refusing.accept().unwrap();
            let mut buf = [0u8; 64];
            let _ = stream.read(&mut buf);
            stream.write_all(b"41 INVALID COMMAND\r\n").unwrap();
        }
    });
    let (code, results) = client_json(&["test", "--server", &refusing_at], None);
    answerer.join().unwrap();
    assert_eq!((code, results[0]["code"].as_u64()), (4, Some(41)), "{results:?}");
    assert!(results[0].get("revision").is_none(), "{results:?}");
}

#[test]
fn malformed_requests_get_41_and_the_connection_closes() {
    let dir = Scratch::new("/tmp", "tinyids-bad");
    let server = Server::start(&dir.0, "");
    let at = server.address();
    let long = format!("CHECK {}\r\n", "a".repeat(9000));
    let cases: [(&str, &[u8]); 8] = [
        ("unknown command", b"HELLO world\r\n"),
        ("empty line", b"\r\n"),
        ("NUL byte", b"CHECK a\0b\r\n"),
        ("non-UTF-8", b"CHECK \xff\xfe\xfd\r\n"),
        ("too many arguments", b"CHECK a b\r\n"),
        ("missing argument", b"UPDATE onlyhash\r\n"),
        ("over-long line", long.as_bytes()),
        ("binary garbage", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\n"),
    ];
    for (what, bytes) in cases {
        assert_eq!(text(&raw(at, bytes)), "41 INVALID COMMAND\r\n", "{what}");
    }
    // Case and spacing variants, LF only, and no line end before the client closes its side.
    assert_eq!(raw(at, b"  cHeCk   x  \n"), b"31 NOT FOUND\r\n");
    let mut stream = TcpStream::connect(at).unwrap();
    stream.write_all(b"TEST 2").unwrap();
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).unwrap();
    assert_eq!(reply, b"20 OK\r\n");
    // The server is still healthy.
    assert_eq!(raw(at, b"TEST 2\r\n"), b"20 OK\r\n");
    assert!(
        server.audit().iter().any(|r| r["code"] == 41 && r["error"].as_str().unwrap_or("").contains("longer than"))
    );
}

/// A client that closes its side without sending a line gets `41 INVALID COMMAND`, as from the
/// original server (its empty read is an empty command line).
#[test]
fn connection_closed_without_a_line_is_answered_41() {
    let dir = Scratch::new("/tmp", "tinyids-empty");
    let server = Server::start(&dir.0, "");
    let started = Instant::now();
    let mut stream = TcpStream::connect(server.address()).unwrap();
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).unwrap();
    assert_eq!(text(&reply), "41 INVALID COMMAND\r\n");
    assert!(started.elapsed() < Duration::from_secs(2), "answered after {:?}", started.elapsed());
    let peer = stream.local_addr().unwrap().to_string();
    let record = server.wait_audit(|r| r["peer"] == peer.as_str());
    assert_eq!((record["code"].as_u64(), record["result"].as_str()), (Some(41), Some("invalid_command")), "{record}");
    assert!(record["error"].as_str().unwrap_or("").contains("without a request line"), "{record}");
}

#[test]
fn idle_client_is_closed_by_the_read_timeout_without_a_reply() {
    let dir = Scratch::new("/tmp", "tinyids-idle");
    let server = Server::start(&dir.0, "read_timeout = 0.5");
    let started = Instant::now();
    let mut idle = TcpStream::connect(server.address()).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut reply = Vec::new();
    idle.read_to_end(&mut reply).unwrap();
    let waited = started.elapsed();
    assert!(reply.is_empty(), "an idle client got {:?}", text(&reply));
    assert!(waited >= Duration::from_millis(400) && waited < Duration::from_secs(5), "closed after {waited:?}");
    // A client that sends half a line and waits is closed the same way.
    let mut partial = TcpStream::connect(server.address()).unwrap();
    partial.write_all(b"CHECK abc").unwrap();
    partial.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut reply = Vec::new();
    partial.read_to_end(&mut reply).unwrap();
    assert!(reply.is_empty());
    server.wait_audit(|r| r["result"] == "timeout");
}

#[test]
fn connections_over_the_cap_are_closed_at_once() {
    let dir = Scratch::new("/tmp", "tinyids-cap");
    let server = Server::start(&dir.0, "max_connections = 2\nread_timeout = 2");
    // Server::start's readiness probe connects and closes; let it be counted out.
    std::thread::sleep(Duration::from_millis(200));
    let _idle: Vec<TcpStream> = (0..2).map(|_| TcpStream::connect(server.address()).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    // Closed unread: the kernel may answer with a reset, so read what arrives, if anything.
    let reply = raw_tolerant(server.address(), b"TEST 2\r\n");
    assert!(reply.is_empty(), "a connection over the cap was answered: {:?}", text(&reply));
    // Closed at once, not after the 2 s read timeout.
    assert!(started.elapsed() < Duration::from_millis(1500), "the refused connection was held {:?}", started.elapsed());
    server.wait_audit(|r| r["result"] == "refused");
    // Once the idle ones are timed out, new clients are served again.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(raw(server.address(), b"TEST 2\r\n"), b"20 OK\r\n");
}

/// One host holding idle connections does not lock the others out: each address gets at most
/// `max_connections_per_address` (16 by default) at once, and its connections past that are
/// closed at once, while a client from another address is answered as usual.
#[test]
fn one_address_cannot_take_every_connection_slot() {
    let dir = Scratch::new("/tmp", "tinyids-per-address");
    // A global cap small enough that one host's idle connections would fill it.
    let server = Server::start(&dir.0, "max_connections = 64\nread_timeout = 10");
    // Server::start's readiness probe connects and closes; let it be counted out.
    std::thread::sleep(Duration::from_millis(200));
    let hog = [127, 0, 0, 2];
    let idle: Vec<TcpStream> = (0..80).map(|_| connect_from(hog, server.address())).collect();
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let reply = raw_tolerant(server.address(), b"CHECK abc\r\n");
    let waited = started.elapsed();
    assert_eq!(text(&reply), "31 NOT FOUND\r\n", "a client from 127.0.0.1 was locked out by 127.0.0.2");
    assert!(waited < Duration::from_secs(1), "the CHECK took {waited:?}");
    // The hog's connections: the first 16 wait for their line, the rest were closed at once.
    let mut open = 0;
    for stream in &idle {
        stream.set_nonblocking(true).unwrap();
        let mut byte = [0u8; 1];
        match (&*stream).read(&mut byte) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => open += 1,
            Ok(0) | Err(_) => {}
            Ok(_) => panic!("an idle connection was sent a reply"),
        }
    }
    assert_eq!((open, idle.len() - open), (16, 64), "connections from 127.0.0.2 held open and closed");
    let refused = server.wait_audit(|r| r["result"] == "refused");
    assert!(refused["peer"].as_str().unwrap().starts_with("127.0.0.2:"), "{refused}");
    assert!(refused["error"].as_str().unwrap().contains("per-address"), "{refused}");
    assert!(
        server
            .audit()
            .iter()
            .all(|r| r["result"] != "refused" || r["peer"].as_str().unwrap().starts_with("127.0.0.2:"))
    );
    drop(idle);

    // The setting is read from [serve] and checked against its range by `ids config check`.
    let check = |value: &str| {
        let path = dir.0.join("per-address.toml");
        std::fs::write(&path, format!("{}[serve]\nmax_connections_per_address = {value}\n", base_config(&dir.0)))
            .unwrap();
        Command::new(ids_bin()).args(["config", "check", "--config"]).arg(&path).output().unwrap()
    };
    let out = check("4");
    assert!(out.status.success(), "a valid max_connections_per_address was refused: {}", text(&out.stderr));
    for bad in ["0", "1000001", "-1", "\"many\""] {
        let out = check(bad);
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "max_connections_per_address = {bad} was accepted");
        assert!(stderr.contains("max_connections_per_address"), "{bad}: {stderr}");
    }
    let stderr = text(&check("0").stderr);
    assert!(stderr.contains("serve.max_connections_per_address") && stderr.contains("1..=1000000"), "{stderr}");
}

#[test]
fn repeated_wrong_passphrases_lock_the_client_out() {
    let dir = Scratch::new("/tmp", "tinyids-throttle");
    let server = Server::start(&dir.0, "max_failures = 5\nfailure_window = 600\nlockout = 600");
    let at = server.address();
    let mallory = [127, 0, 0, 7];
    assert_eq!(raw_from(mallory, at, b"UPDATE h1 right\r\n"), b"20 OK\r\n");
    for attempt in 0..5 {
        assert_eq!(raw_from(mallory, at, b"UPDATE h2 wrong\r\n"), b"42 INVALID PASSPHRASE\r\n", "attempt {attempt}");
    }
    // Locked out: even the right passphrase gets 42, unchecked, and nothing changes.
    assert_eq!(raw_from(mallory, at, b"UPDATE h3 right\r\n"), b"42 INVALID PASSPHRASE\r\n");
    assert_eq!(raw_from(mallory, at, b"DELETE right\r\n"), b"42 INVALID PASSPHRASE\r\n");
    assert_eq!(raw_from(mallory, at, b"CHECK h1\r\n"), b"20 OK\r\n", "CHECK carries no passphrase and still works");
    let throttled = server.wait_audit(|r| r["throttled"] == true);
    assert_eq!((throttled["client"].as_str(), throttled["code"].as_u64()), (Some("127.0.0.7"), Some(42)));
    // Another client is not affected.
    let alice = [127, 0, 0, 8];
    assert_eq!(raw_from(alice, at, b"UPDATE a1 pw\r\n"), b"20 OK\r\n");
    assert_eq!(raw_from(alice, at, b"UPDATE a2 pw\r\n"), b"20 OK\r\n");
    let records = server.records();
    let hash_of =
        |client: &str| records.as_array().unwrap().iter().find(|r| r["client"] == client).map(|r| r["hash"].clone());
    assert_eq!(hash_of("127.0.0.7"), Some("h1".into()));
    assert_eq!(hash_of("127.0.0.8"), Some("a2".into()));
}

#[test]
fn concurrent_updates_from_many_clients_leave_no_torn_record() {
    let dir = Scratch::new("/tmp", "tinyids-concurrent");
    let server = Server::start(&dir.0, "");
    let at = server.address();
    const CLIENTS: u8 = 24;
    const ROUNDS: usize = 3;
    // Each client: several UPDATEs in a row; all clients at once.
    let threads: Vec<_> = (0..CLIENTS)
        .map(|i| {
            std::thread::spawn(move || {
                let source = [127, 0, 1, 10 + i];
                let mut last = String::new();
                for round in 0..ROUNDS {
                    let hash = format!("{:02x}{}", i, "ab".repeat(20 + round));
                    let reply = raw_from(source, at, format!("UPDATE {hash} pass{i}\r\n").as_bytes());
                    assert_eq!(text(&reply), "20 OK\r\n", "client {i} round {round}");
                    last = hash;
                }
                last
            })
        })
        .collect();
    let last: Vec<String> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    // Many connections for one identity at once: exactly one hash wins, whole.
    let shared = [127, 0, 2, 1];
    assert_eq!(raw_from(shared, at, b"UPDATE seed common\r\n"), b"20 OK\r\n");
    let candidates: Vec<String> = (0..12).map(|k| format!("{k:02}{}", "cd".repeat(30))).collect();
    let racers: Vec<_> = candidates
        .iter()
        .cloned()
        .map(|hash| std::thread::spawn(move || raw_from(shared, at, format!("UPDATE {hash} common\r\n").as_bytes())))
        .collect();
    for racer in racers {
        assert_eq!(racer.join().unwrap(), b"20 OK\r\n");
    }
    let records = server.records();
    let records = records.as_array().unwrap();
    assert_eq!(records.len(), CLIENTS as usize + 1);
    for (i, hash) in last.iter().enumerate() {
        let client = format!("127.0.1.{}", 10 + i);
        let record =
            records.iter().find(|r| r["client"] == client.as_str()).unwrap_or_else(|| panic!("no record for {client}"));
        assert_eq!(record["hash"].as_str(), Some(hash.as_str()), "record of {client}");
        assert_eq!(raw_from([127, 0, 1, 10 + i as u8], at, format!("CHECK {hash}\r\n").as_bytes()), b"20 OK\r\n");
    }
    let winner = records.iter().find(|r| r["client"] == "127.0.2.1").unwrap()["hash"].as_str().unwrap().to_string();
    assert!(candidates.contains(&winner), "torn or foreign hash {winner}");
    // The passphrase survived the race intact.
    assert_eq!(raw_from(shared, at, format!("UPDATE {winner} common\r\n").as_bytes()), b"20 OK\r\n");
    let conn = rusqlite::Connection::open(&server.db).unwrap();
    let check: String = conn.query_row("PRAGMA integrity_check", [], |row| row.get(0)).unwrap();
    assert_eq!(check, "ok");
}

#[test]
fn every_acknowledged_update_survives_kill_9() {
    let dir = Scratch::new("/var/tmp", "tinyids-kill9");
    let mut server = Server::start(&dir.0, "");
    let at = server.address();
    const WRITERS: u8 = 6;
    // Per writer: the last hash acknowledged with 20 OK and the one in flight.
    type Acked = (Option<String>, Option<String>);
    let state: Arc<Mutex<Vec<Acked>>> = Arc::new(Mutex::new(vec![(None, None); WRITERS as usize]));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let state = state.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let source = [127, 0, 3, 1 + w];
                for n in 0..10_000u32 {
                    if stop.load(std::sync::atomic::Ordering::SeqCst) {
                        break;
                    }
                    let hash = format!("w{w}n{n:06}");
                    state.lock().unwrap()[w as usize].1 = Some(hash.clone());
                    let Ok(reply) = std::panic::catch_unwind(|| {
                        raw_from(source, at, format!("UPDATE {hash} pw{w}\r\n").as_bytes())
                    }) else {
                        break;
                    };
                    if reply == b"20 OK\r\n" {
                        state.lock().unwrap()[w as usize].0 = Some(hash);
                    } else {
                        // The server died mid-request: no acknowledgement.
                        break;
                    }
                }
            })
        })
        .collect();
    // Kill in the middle of the burst: once every writer has had a few UPDATEs acknowledged.
    let deadline = Instant::now() + Duration::from_secs(60);
    let acknowledged = |acked: &Option<String>| {
        acked.as_ref().and_then(|h| h.rsplit('n').next()?.parse::<u32>().ok().map(|n| n + 1)).unwrap_or(0)
    };
    while state.lock().unwrap().iter().any(|(acked, _)| acknowledged(acked) < 3) {
        assert!(
            Instant::now() < deadline,
            "the writers got too few acknowledgements in 60 s: {:?}",
            state.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    server.kill9();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for writer in writers {
        let _ = writer.join();
    }
    let state = state.lock().unwrap().clone();
    assert!(
        state.iter().all(|(acked, _)| acked.is_some()),
        "some writer got no acknowledgement before the kill: {state:?}"
    );
    // The database is whole, and every acknowledged UPDATE is there (or the one sent after it,
    // which the kill may or may not have caught before its reply).
    let conn = rusqlite::Connection::open(&server.db).unwrap();
    let check: String = conn.query_row("PRAGMA integrity_check", [], |row| row.get(0)).unwrap();
    assert_eq!(check, "ok");
    drop(conn);
    server.spawn();
    let records = server.records();
    for (w, (acked, in_flight)) in state.iter().enumerate() {
        let client = format!("127.0.3.{}", 1 + w);
        let stored = records
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["client"] == client.as_str())
            .map(|r| r["hash"].as_str().unwrap().to_string());
        assert!(
            stored == *acked || stored == *in_flight,
            "{client}: stored {stored:?}, last acknowledged {acked:?}, in flight {in_flight:?}"
        );
        let stored = stored.unwrap();
        assert_eq!(raw_from([127, 0, 3, 1 + w as u8], at, format!("CHECK {stored}\r\n").as_bytes()), b"20 OK\r\n");
    }
}

#[test]
fn local_administration_lists_shows_deletes_and_resets() {
    let dir = Scratch::new("/tmp", "tinyids-admin");
    let server = Server::start(&dir.0, "");
    let at = server.address();
    assert_eq!(raw_from([127, 0, 4, 1], at, b"UPDATE h1 old\r\n"), b"20 OK\r\n");
    assert_eq!(raw_from([127, 0, 4, 2], at, b"UPDATE h2 other\r\n"), b"20 OK\r\n");
    assert_eq!(raw_from([127, 0, 4, 1], at, b"CHECK h1\r\n"), b"20 OK\r\n");
    let admin = |args: &[&str]| {
        Command::new(ids_bin())
            .arg("server")
            .args(args)
            .arg("--db")
            .arg(&server.db)
            .env_remove("IDS_PASSPHRASE")
            .output()
            .unwrap()
    };
    let list: Value = serde_json::from_slice(&admin(&["list", "--json"]).stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert!(!list.to_string().contains("argon2"), "the passphrase hash is shown: {list}");
    // The last CHECK is recorded within about a second.
    std::thread::sleep(Duration::from_millis(1500));
    let show: Value = serde_json::from_slice(&admin(&["show", "127.0.4.1", "--json"]).stdout).unwrap();
    assert_eq!((show["hash"].as_str(), show["last_result"].as_str()), (Some("h1"), Some("ok")));
    let missing = admin(&["show", "127.9.9.9"]);
    assert!(!missing.status.success() && text(&missing.stderr).contains("no record for client"));
    let passfile = dir.0.join("newpass");
    std::fs::write(&passfile, "fresh\n").unwrap();
    let reset = admin(&["reset-passphrase", "127.0.4.1", "--passphrase-file", passfile.to_str().unwrap()]);
    assert!(reset.status.success(), "{}", text(&reset.stderr));
    assert_eq!(raw_from([127, 0, 4, 1], at, b"UPDATE h3 old\r\n"), b"42 INVALID PASSPHRASE\r\n");
    assert_eq!(raw_from([127, 0, 4, 1], at, b"UPDATE h3 fresh\r\n"), b"20 OK\r\n");
    assert!(admin(&["delete", "127.0.4.2"]).status.success());
    assert_eq!(raw_from([127, 0, 4, 2], at, b"CHECK h2\r\n"), b"31 NOT FOUND\r\n");
    assert!(!admin(&["delete", "127.0.4.2"]).status.success(), "deleting a missing record is an error");
}

#[test]
fn passphrase_never_comes_from_argv_unless_asked_and_bad_ones_are_refused() {
    let dir = Scratch::new("/tmp", "tinyids-pass");
    let server = Server::start(&dir.0, "");
    let at = server.address().to_string();
    // No terminal, no file, no environment: no passphrase, nothing sent.
    let out = client(&["update", "--hash", "h", "--server", &at], None);
    assert!(!out.status.success() && text(&out.stderr).contains("passphrase"), "{}", text(&out.stderr));
    let out = client(&["update", "--hash", "h", "--server", &at], Some("has space"));
    assert!(!out.status.success() && text(&out.stderr).contains("IDS_PASSPHRASE"), "{}", text(&out.stderr));
    let missing = dir.0.join("nope");
    let out = client(&["update", "--hash", "h", "--server", &at, "--passphrase-file", missing.to_str().unwrap()], None);
    assert!(!out.status.success() && text(&out.stderr).contains(missing.to_str().unwrap()), "{}", text(&out.stderr));
    assert!(server.records().as_array().unwrap().is_empty(), "nothing may have been sent");
    let out = client(&["update", "--hash", "h", "--server", &at, "--passphrase-arg", "explicit"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// CA, server and client certificates for the TLS tests, written as PEM files.
struct Pki {
    ca: PathBuf,
    other_ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    server_fingerprint: String,
    client_cert: PathBuf,
    client_key: PathBuf,
    client_fingerprint: String,
}

fn issue(
    dir: &Path,
    name: &str,
    ca: &(rcgen::Certificate, rcgen::KeyPair),
    usage: rcgen::ExtendedKeyUsagePurpose,
) -> (PathBuf, PathBuf, String) {
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params.subject_alt_names.push(rcgen::SanType::IpAddress([127, 0, 0, 1].into()));
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    params.extended_key_usages = vec![usage];
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca.0, &ca.1).unwrap();
    let (cert_path, key_path) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}.key")));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let fingerprint = sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(cert.der()));
    (cert_path, key_path, fingerprint.iter().map(|b| format!("{b:02x}")).collect())
}

fn make_ca(dir: &Path, name: &str) -> ((rcgen::Certificate, rcgen::KeyPair), PathBuf) {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::DigitalSignature];
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let path = dir.join(format!("{name}.pem"));
    std::fs::write(&path, cert.pem()).unwrap();
    ((cert, key), path)
}

fn pki(dir: &Path) -> Pki {
    let (ca, ca_path) = make_ca(dir, "ca");
    let (_, other_ca) = make_ca(dir, "other-ca");
    let (server_cert, server_key, server_fingerprint) =
        issue(dir, "server", &ca, rcgen::ExtendedKeyUsagePurpose::ServerAuth);
    let (client_cert, client_key, client_fingerprint) =
        issue(dir, "client", &ca, rcgen::ExtendedKeyUsagePurpose::ClientAuth);
    Pki {
        ca: ca_path,
        other_ca,
        server_cert,
        server_key,
        server_fingerprint,
        client_cert,
        client_key,
        client_fingerprint,
    }
}

fn serve_tls(pki: &Pki, mtls: bool) -> String {
    let mut table = format!("[serve.tls]\ncert = {:?}\nkey = {:?}\n", pki.server_cert, pki.server_key);
    if mtls {
        table += &format!("client_ca = {:?}\n", pki.ca);
    }
    table
}

/// A client configuration with one TLS server; `tls` is the body of its `[servers.tls]`.
fn tls_client_config(dir: &Path, name: &str, port: u16, tls: &str) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            "{}[[servers]]\nname = {name:?}\nhost = \"127.0.0.1\"\nport = {port}\n[servers.tls]\nserver_name = \"localhost\"\n{tls}\n",
            base_config(dir)
        ),
    )
    .unwrap();
    path
}

#[test]
fn tls_with_ca_or_pinned_fingerprint_works_and_wrong_ones_fail_the_handshake() {
    let dir = Scratch::new("/tmp", "tinyids-tls");
    let pki = pki(&dir.0);
    let server = Server::start(&dir.0, &serve_tls(&pki, false));
    let by_ca = tls_client_config(&dir.0, "by-ca", server.port, &format!("ca = {:?}", pki.ca));
    let pinned =
        tls_client_config(&dir.0, "pinned", server.port, &format!("fingerprint = {:?}", pki.server_fingerprint));
    let wrong_ca = tls_client_config(&dir.0, "wrong-ca", server.port, &format!("ca = {:?}", pki.other_ca));
    let wrong_pin =
        tls_client_config(&dir.0, "wrong-pin", server.port, &format!("fingerprint = {:?}", "ab".repeat(32)));
    let cfg = |p: &PathBuf| p.to_str().unwrap().to_string();

    let (code, results) = client_json(&["update", "--hash", "tls1", "--config", &cfg(&by_ca)], Some("pw"));
    assert_eq!(code, 0, "{results:?}");
    let (code, results) = client_json(&["check", "--hash", "tls1", "--config", &cfg(&pinned)], None);
    assert_eq!(code, 0, "{results:?}");
    for config in [&wrong_ca, &wrong_pin] {
        let (code, results) = client_json(&["update", "--hash", "evil", "--config", &cfg(config)], Some("pw"));
        assert_eq!(code, 5, "{results:?}");
        let error = results[0]["error"].as_str().unwrap();
        assert!(error.contains("TLS handshake") && error.contains("certificate"), "{error}");
    }
    assert_eq!(client_json(&["check", "--hash", "tls1", "--config", &cfg(&by_ca)], None).0, 0, "nothing was written");
    // A plain-text client gets no answer from a TLS server.
    assert!(!raw_tolerant(server.address(), b"TEST 2\r\n").starts_with(b"20"));
    let audit = server.audit();
    assert!(audit.iter().filter(|r| r["result"] == "tls_error").count() >= 2, "{audit:?}");
    assert!(audit.iter().any(|r| r["command"] == "UPDATE" && r["code"] == 20 && r["transport"] == "tls"));
    assert_eq!(server.records()[0]["hash"], "tls1");
}

#[test]
fn mtls_identifies_clients_by_certificate_and_refuses_clients_without_one() {
    let dir = Scratch::new("/tmp", "tinyids-mtls");
    let pki = pki(&dir.0);
    let server = Server::start(&dir.0, &serve_tls(&pki, true));
    let with_cert = tls_client_config(
        &dir.0,
        "with-cert",
        server.port,
        &format!("ca = {:?}\nclient_cert = {:?}\nclient_key = {:?}", pki.ca, pki.client_cert, pki.client_key),
    );
    let without = tls_client_config(&dir.0, "without", server.port, &format!("ca = {:?}", pki.ca));
    let (code, results) = client_json(&["update", "--hash", "m1", "--config", with_cert.to_str().unwrap()], Some("pw"));
    assert_eq!(code, 0, "{results:?}");
    let (code, results) = client_json(&["update", "--hash", "m2", "--config", without.to_str().unwrap()], Some("pw"));
    assert_eq!(code, 5, "a client without a certificate was served: {results:?}");
    let records = server.records();
    assert_eq!(records.as_array().unwrap().len(), 1, "{records}");
    assert_eq!(records[0]["client"], format!("cert:{}", pki.client_fingerprint));
    assert_eq!(records[0]["hash"], "m1");
    assert!(
        server
            .audit()
            .iter()
            .any(|r| r["transport"] == "mtls" && r["client"] == format!("cert:{}", pki.client_fingerprint).as_str())
    );
}

/// `ids client --server` with the `--tls-*` flags: the TLS of a `[servers.tls]` table for a
/// one-off server, and errors naming the flag for bad input, with nothing sent.
#[test]
fn server_flag_speaks_tls_with_a_ca_or_a_pinned_fingerprint() {
    let dir = Scratch::new("/tmp", "tinyids-flag-tls");
    let pki = pki(&dir.0);
    let server = Server::start(&dir.0, &serve_tls(&pki, false));
    let at = server.address().to_string();
    let (ca, other_ca) = (pki.ca.to_str().unwrap(), pki.other_ca.to_str().unwrap());
    let tls = |args: &[&str], extra: &[&str], pass: Option<&str>| {
        let mut all = args.to_vec();
        all.extend_from_slice(&["--server", &at]);
        all.extend_from_slice(extra);
        client_json(&all, pass)
    };
    let (code, results) = tls(&["test"], &["--tls-ca", ca], None);
    assert_eq!((code, results[0]["revision"].as_u64()), (0, Some(2)), "{results:?}");
    let (code, results) =
        tls(&["update", "--hash", "flag1"], &["--tls-ca", ca, "--tls-server-name", "localhost"], Some("pw"));
    assert_eq!(code, 0, "{results:?}");
    let pin = &pki.server_fingerprint;
    let pairs: Vec<String> = pin.as_bytes().chunks(2).map(|p| std::str::from_utf8(p).unwrap().to_uppercase()).collect();
    let colons = pairs.join(":");
    for fingerprint in [pin.as_str(), colons.as_str()] {
        let (code, results) = tls(&["check", "--hash", "flag1"], &["--tls-fingerprint", fingerprint], None);
        assert_eq!(code, 0, "pinned {fingerprint}: {results:?}");
    }
    // Wrong CA, wrong pin, wrong name: the handshake fails before anything is sent.
    let wrong_pin = "ab".repeat(32);
    let wrong_name = ["--tls-ca", ca, "--tls-server-name", "elsewhere"];
    for extra in [&["--tls-ca", other_ca][..], &["--tls-fingerprint", &wrong_pin], &wrong_name] {
        let (code, results) = tls(&["update", "--hash", "evil"], extra, Some("pw"));
        assert_eq!(code, 5, "{extra:?}: {results:?}");
        let error = results[0]["error"].as_str().unwrap();
        assert!(error.contains("TLS handshake") && error.contains("certificate"), "{extra:?}: {error}");
    }
    // Bad input: exit 1, an error naming the flag, nothing sent.
    let missing = dir.0.join("no-such-ca.pem");
    let missing = missing.to_str().unwrap();
    let not_pem = dir.0.join("not-pem.txt");
    std::fs::write(&not_pem, "not a certificate\n").unwrap();
    let cases: [(&[&str], &[&str]); 6] = [
        (&["--tls-ca", missing], &["--tls-ca", missing, "No such file"]),
        (&["--tls-ca", not_pem.to_str().unwrap()], &["--tls-ca", "no PEM certificate"]),
        (&["--tls-fingerprint", "xyz"], &["--tls-fingerprint", "\"xyz\"", "64 hex digits"]),
        (&["--tls-fingerprint", &"zz".repeat(32)], &["--tls-fingerprint", "not a hex digit"]),
        (&["--tls-server-name", "localhost"], &["--tls-ca or --tls-fingerprint"]),
        (
            &["--tls-ca", ca, "--tls-client-cert", pki.client_cert.to_str().unwrap()],
            &["--tls-client-cert and --tls-client-key"],
        ),
    ];
    for (extra, expected) in cases {
        let mut args = vec!["update", "--hash", "evil", "--server", &at];
        args.extend_from_slice(extra);
        let out = client(&args, Some("pw"));
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{extra:?}: {stderr}");
        for part in expected {
            assert!(stderr.contains(part), "{extra:?}: the error does not say {part:?}: {stderr}");
        }
    }
    let out = client(&["check", "--hash", "flag1", "--tls-ca", ca], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("--tls-ca: only with --server"), "{}", text(&out.stderr));
    let records = server.records();
    assert_eq!((records.as_array().unwrap().len(), records[0]["hash"].as_str()), (1, Some("flag1")), "{records}");
    assert!(server.audit().iter().all(|r| r["transport"] == "tls"));
}

#[test]
fn server_flag_presents_a_client_certificate_for_mtls() {
    let dir = Scratch::new("/tmp", "tinyids-flag-mtls");
    let pki = pki(&dir.0);
    let server = Server::start(&dir.0, &serve_tls(&pki, true));
    let at = server.address().to_string();
    let (ca, cert, key) =
        (pki.ca.to_str().unwrap(), pki.client_cert.to_str().unwrap(), pki.client_key.to_str().unwrap());
    let with_cert = ["--server", at.as_str(), "--tls-ca", ca, "--tls-client-cert", cert, "--tls-client-key", key];
    let (code, results) = client_json(&[&["update", "--hash", "m1"][..], &with_cert].concat(), Some("pw"));
    assert_eq!(code, 0, "{results:?}");
    let (code, results) = client_json(&[&["check", "--hash", "m1"][..], &with_cert].concat(), None);
    assert_eq!(code, 0, "{results:?}");
    let (code, results) = client_json(&["update", "--hash", "m2", "--server", &at, "--tls-ca", ca], Some("pw"));
    assert_eq!(code, 5, "a client without a certificate was served: {results:?}");
    let missing_key = dir.0.join("no-such.key");
    let missing_key = missing_key.to_str().unwrap();
    let args = [
        "update",
        "--hash",
        "m3",
        "--server",
        &at,
        "--tls-ca",
        ca,
        "--tls-client-cert",
        cert,
        "--tls-client-key",
        missing_key,
    ];
    let out = client(&args, Some("pw"));
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("--tls-client-key") && stderr.contains(missing_key), "{stderr}");
    let records = server.records();
    assert_eq!(records.as_array().unwrap().len(), 1, "{records}");
    let identity = format!("cert:{}", pki.client_fingerprint);
    assert_eq!((records[0]["client"].as_str(), records[0]["hash"].as_str()), (Some(identity.as_str()), Some("m1")));
    assert!(server.audit().iter().any(|r| r["transport"] == "mtls" && r["command"] == "CHECK" && r["code"] == 20));
}

/// The running sensor CHECKs its aggregate with the configured server and alerts on MISMATCH,
/// then on NOT FOUND once the record is gone. Root and BPF: run under `flock /tmp/ids-bpf.lock`.
#[test]
fn daemon_alerts_when_the_server_reports_a_mismatch() {
    let dir = Scratch::new("/var/tmp", "tinyids-daemon");
    let server = Server::start(&dir.0, "");
    // The server expects a different hash for this host (127.0.0.1).
    assert_eq!(raw(server.address(), format!("UPDATE {} pw\r\n", "0".repeat(64)).as_bytes()), b"20 OK\r\n");
    let watched = dir.0.join("watched");
    std::fs::create_dir_all(&watched).unwrap();
    std::fs::write(watched.join("file"), "content").unwrap();
    let extra = format!(
        "remote_check_interval = 1\n[[collectors]]\nkind = \"file_contents\"\npaths = [{:?}]\n[[servers]]\nname = \"loopback\"\nhost = \"127.0.0.1\"\nport = {}\n",
        watched.display().to_string(),
        server.port
    );
    let daemon = Daemon::start_with("tinyids-remote", &[&watched], &["lo"], &extra);
    let alerts = daemon.wait_for(1, |e| e["kind"] == "remote_check" && e["result"] == "mismatch");
    assert!(!alerts.is_empty(), "no remote_check alert; events: {:?}", daemon.events());
    let alert = &alerts[0];
    assert_eq!((alert["server"].as_str(), alert["code"].as_u64()), (Some("loopback"), Some(30)));
    let aggregate = alert["aggregate"].as_str().unwrap().to_string();
    assert_eq!(aggregate, daemon.status()["aggregate"].as_str().unwrap(), "the daemon CHECKs its own aggregate");
    // With the right hash stored the daemon's CHECK passes; after DELETE it is NOT FOUND.
    assert_eq!(raw(server.address(), format!("UPDATE {aggregate} pw\r\n").as_bytes()), b"20 OK\r\n");
    server.wait_audit(|r| r["command"] == "CHECK" && r["code"] == 20);
    assert_eq!(raw(server.address(), b"DELETE pw\r\n"), b"20 OK\r\n");
    let not_found = daemon.wait_for(1, |e| e["kind"] == "remote_check" && e["result"] == "not_found");
    assert!(!not_found.is_empty(), "no NOT FOUND alert; events: {:?}", daemon.events());
    drop(server);
    let unreachable = daemon.wait_for(1, |e| e["kind"] == "remote_check" && e["result"] == "unreachable");
    assert!(!unreachable.is_empty(), "no unreachable alert; events: {:?}", daemon.events());
    daemon.stop();
}
