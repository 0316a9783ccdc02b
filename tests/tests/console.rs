//! The fleet console `ids collect` serves, at the HTTP level, over TLS (curl against the
//! collector's own CA): what needs a login, sessions and their end, CSRF and confirmation on
//! bans, throttled logins, client certificates, markup in alerts shown as text, the API with a
//! bearer token, live events, and filters, timeline and export over 100,000 alerts.
//!
//! The console does not need the broker: the collector keeps trying to reach one on a closed
//! port while the console serves the database, which the tests fill directly (the collector's
//! schema, as it stores agents' alerts).
use std::fs;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ids_tests::service_process::{free_loopback_ports, stop_group, tail_of};
use ids_tests::{Scratch, ids_bin};
use serde_json::{Value, json};

const USER: &str = "alice";
const PASSWORD: &str = "correct horse battery";

struct Console {
    dir: Scratch,
    config: PathBuf,
    database: PathBuf,
    port: u16,
    ca: PathBuf,
    client: (PathBuf, PathBuf),
    collector: Child,
}

struct Reply {
    status: u16,
    headers: String,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<String> {
        self.headers.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name).then(|| value.trim().to_string())
        })
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

fn certificate(dir: &Path, name: &str, ca: &(rcgen::Certificate, rcgen::KeyPair), server: bool) -> (PathBuf, PathBuf) {
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params.subject_alt_names.push(rcgen::SanType::IpAddress([127, 0, 0, 1].into()));
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    params.extended_key_usages = vec![if server {
        rcgen::ExtendedKeyUsagePurpose::ServerAuth
    } else {
        rcgen::ExtendedKeyUsagePurpose::ClientAuth
    }];
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca.0, &ca.1).unwrap();
    let (cert_path, key_path) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}.key")));
    fs::write(&cert_path, cert.pem()).unwrap();
    fs::write(&key_path, key.serialize_pem()).unwrap();
    (cert_path, key_path)
}

impl Console {
    /// A collector with the console on a free port (TLS, client certificates of its CA accepted),
    /// `web_extra` added to `[collect.web]`, user alice made.
    fn start(name: &str, web_extra: &str) -> Console {
        let dir = Scratch::new("/var/tmp", &format!("console-{name}"));
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, "console test CA");
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::DigitalSignature];
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca_cert = params.self_signed(&ca_key).unwrap();
        let ca = dir.0.join("ca.pem");
        fs::write(&ca, ca_cert.pem()).unwrap();
        let ca_pair = (ca_cert, ca_key);
        let (cert, key) = certificate(&dir.0, "server", &ca_pair, true);
        let client = certificate(&dir.0, "operator", &ca_pair, false);
        let ports = free_loopback_ports(2);
        let (port, closed_broker_port) = (ports[0], ports[1]);
        let database = dir.0.join("fleet.db");
        let config = dir.0.join("ids.toml");
        fs::write(
            &config,
            format!(
                "[collect]\nurl = \"amqp://collector@127.0.0.1:{closed_broker_port}/%2f\"\ndatabase = {database:?}\n\
                 [collect.web]\nlisten = \"127.0.0.1:{port}\"\ncert = {cert:?}\nkey = {key:?}\nclient_ca = {ca:?}\n{web_extra}\n",
            ),
        )
        .unwrap();
        let added = Command::new(ids_bin())
            .args(["fleet", "user", "add", USER, "--password-file", "-", "--config"])
            .arg(&config)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write as _;
                child.stdin.take().unwrap().write_all(format!("{PASSWORD}\n").as_bytes())?;
                child.wait_with_output()
            })
            .unwrap();
        assert!(added.status.success(), "ids fleet user add: {}", String::from_utf8_lossy(&added.stderr));
        let log = fs::File::create(dir.0.join("collect.log")).unwrap();
        let collector = Command::new(ids_bin())
            .args(["collect", "--config"])
            .arg(&config)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .unwrap();
        let console = Console { dir, config, database, port, ca, client, collector };
        let deadline = Instant::now() + Duration::from_secs(20);
        while console.get("/login", None).status != 200 {
            assert!(Instant::now() < deadline, "the console did not answer: {}", tail_of(&console.log(), 4000).trim());
            std::thread::sleep(Duration::from_millis(100));
        }
        console
    }

    fn log(&self) -> PathBuf {
        self.dir.0.join("collect.log")
    }

    fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.port)
    }

    /// curl against the console, verifying its certificate with the test CA.
    fn curl(&self, args: &[&str]) -> Reply {
        let output = Command::new("curl")
            .args(["-s", "-S", "-i", "--max-time", "20", "--cacert"])
            .arg(&self.ca)
            .args(args)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&output.stdout).to_string();
        assert!(output.status.success(), "curl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        let (headers, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = headers.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        Reply { status, headers: headers.to_string(), body: body.to_string() }
    }

    fn get(&self, path: &str, session: Option<&Session>) -> Reply {
        let url = self.url(path);
        match session {
            Some(session) => self.curl(&["-H", &session.cookie_header(), &url]),
            None => self.curl(&[&url]),
        }
    }

    /// POSTs a form (`fields` already URL-encoded).
    fn post(&self, path: &str, session: Option<&Session>, fields: &str, extra: &[&str]) -> Reply {
        let url = self.url(path);
        let mut args = vec!["--data-raw", fields];
        let cookie;
        if let Some(session) = session {
            cookie = session.cookie_header();
            args.extend(["-H", &cookie]);
        }
        args.extend(extra);
        args.push(&url);
        self.curl(&args)
    }

    fn login_reply(&self, user: &str, password: &str) -> Reply {
        let fields = format!("user={}&password={}", encode(user), encode(password));
        self.post("/login", None, &fields, &[])
    }

    fn login(&self) -> Session {
        let reply = self.login_reply(USER, PASSWORD);
        assert_eq!(reply.status, 303, "login: {} {}", reply.headers, reply.body);
        let cookie = reply.header("set-cookie").expect("a session cookie");
        for attribute in ["HttpOnly", "SameSite=Strict", "Secure", "Path=/"] {
            assert!(cookie.contains(attribute), "the session cookie lacks {attribute}: {cookie}");
        }
        let value = cookie.split(';').next().unwrap().to_string();
        let mut session = Session { cookie: value, csrf: String::new() };
        let page = self.get("/", Some(&session));
        assert_eq!(page.status, 200, "{}", page.body);
        session.csrf = page
            .body
            .split("<meta name=\"csrf\" content=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .expect("the page's CSRF token")
            .to_string();
        session
    }

    fn db(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(&self.database).unwrap()
    }

    /// The fleet ban decisions recorded: (action, net, origin).
    fn decisions(&self) -> Vec<(String, String, String)> {
        let db = self.db();
        let mut statement = db.prepare("SELECT action, net, origin FROM fleet_bans ORDER BY rev").unwrap();
        statement
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    fn ids(&self, args: &[&str]) -> std::process::Output {
        Command::new(ids_bin()).args(args).arg("--config").arg(&self.config).output().unwrap()
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        stop_group(&mut self.collector, libc::SIGTERM, Duration::from_secs(10));
    }
}

struct Session {
    cookie: String,
    csrf: String,
}

impl Session {
    fn cookie_header(&self) -> String {
        format!("Cookie: {}", self.cookie)
    }
}

fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// An alert as the collector stores an agent's.
struct Stored {
    host: String,
    time: String,
    kind: &'static str,
    severity: &'static str,
    rule: Option<&'static str>,
    alert: Value,
}

impl Stored {
    fn new(host: &str, kind: &'static str, severity: &'static str, rule: Option<&'static str>, alert: Value) -> Self {
        Stored { host: host.to_string(), time: now_rfc3339(0), kind, severity, rule, alert }
    }
}

/// Inserts alerts as the collector stores agents' ones.
fn insert_alerts(db: &mut rusqlite::Connection, alerts: &[Stored]) {
    let tx = db.transaction().unwrap();
    {
        let mut insert = tx
            .prepare(
                "INSERT INTO alerts (host, hostname, epoch, seq, time, kind, alert, attacker, received, severity, rule)
                 VALUES (?1, ?1, 1, ?7, ?2, ?3, ?4, NULL, ?2, ?5, ?6)",
            )
            .unwrap();
        // Sequence numbers need only be unique per host: after the newest stored.
        let first: i64 = tx.query_row("SELECT COALESCE(MAX(seq), 0) FROM alerts", [], |row| row.get(0)).unwrap();
        for (n, stored) in alerts.iter().enumerate() {
            let seq = first + 1 + n as i64;
            let Stored { host, time, kind, severity, rule, alert } = stored;
            insert.execute(rusqlite::params![host, time, kind, alert.to_string(), severity, rule, seq]).unwrap();
        }
    }
    tx.commit().unwrap();
}

fn now_rfc3339(offset_s: i64) -> String {
    let now = std::time::SystemTime::now();
    let time = if offset_s >= 0 {
        now + Duration::from_secs(offset_s as u64)
    } else {
        now - Duration::from_secs((-offset_s) as u64)
    };
    ids_tests::rfc3339_utc(time.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64)
}

#[test]
fn every_page_and_api_route_refuses_a_request_without_a_login() {
    let console = Console::start("unauth", "");
    for page in ["/", "/alerts", "/alerts/1", "/hosts/web1", "/bans", "/nowhere"] {
        let reply = console.get(page, None);
        assert_eq!(reply.status, 303, "GET {page} without a session: {}", reply.body);
        let location = reply.header("location").unwrap_or_default();
        assert!(location.starts_with("/login?next="), "GET {page} redirected to {location:?}");
    }
    for route in [
        "/api/hosts",
        "/api/hosts/web1",
        "/api/alerts",
        "/api/alerts/1",
        "/api/timeline",
        "/api/bans",
        "/api/export",
        "/events",
    ] {
        let reply = console.get(route, None);
        assert_eq!(reply.status, 401, "GET {route} without a session: {}", reply.body);
        assert_eq!(reply.header("www-authenticate").as_deref(), Some("Bearer realm=\"ids\""));
    }
    for (route, fields) in [
        ("/bans", "net=192.0.2.1&duration=1h"),
        ("/bans/confirm", "net=192.0.2.1"),
        ("/bans/unban", "net=192.0.2.1"),
        ("/logout", ""),
    ] {
        let reply = console.post(route, None, fields, &[]);
        assert_eq!(reply.status, 303, "POST {route} without a session: {}", reply.body);
        assert_eq!(reply.header("location").as_deref(), Some("/login"));
    }
    let api = console.post("/api/bans", None, r#"{"net":"192.0.2.1"}"#, &["-H", "Content-Type: application/json"]);
    assert_eq!(api.status, 401);
    let forged = console.get("/api/hosts", None);
    assert_eq!(forged.status, 401);
    let wrong_token = console.curl(&["-H", "Authorization: Bearer ids_0000", &console.url("/api/hosts")]);
    assert_eq!(wrong_token.status, 401, "a made-up token: {}", wrong_token.body);
    assert!(console.decisions().is_empty(), "a request without a login recorded a ban: {:?}", console.decisions());
    // The login page itself and its stylesheet need no login; every answer carries the CSP.
    let login = console.get("/login", None);
    assert_eq!(login.status, 200);
    assert!(login.body.contains("id=\"login\""));
    assert!(login.header("content-security-policy").unwrap_or_default().contains("script-src 'self'"));
    // Not no-referrer: under it a browser posts the console's own forms with `Origin: null`.
    assert_eq!(login.header("referrer-policy").as_deref(), Some("same-origin"));
    assert_eq!(console.get("/static/console.css", None).status, 200);
}

#[test]
fn a_session_ends_at_logout_and_at_its_expiry() {
    let console = Console::start("session", "session_ttl = \"3s\"");
    let wrong = console.login_reply(USER, "not the password");
    assert_eq!(wrong.status, 401);
    assert!(wrong.header("set-cookie").is_none(), "a failed login set a cookie");
    assert!(wrong.body.contains("Wrong user or password."));
    let session = console.login();
    for page in ["/", "/alerts", "/bans"] {
        assert_eq!(console.get(page, Some(&session)).status, 200, "{page} with a session");
    }
    // Logout needs the CSRF token too.
    assert_eq!(console.post("/logout", Some(&session), "csrf=nope", &[]).status, 403);
    assert_eq!(console.get("/", Some(&session)).status, 200, "a refused logout ended the session");
    let out = console.post("/logout", Some(&session), &format!("csrf={}", session.csrf), &[]);
    assert_eq!(out.status, 303);
    assert!(out.header("set-cookie").unwrap_or_default().contains("Max-Age=0"));
    assert_eq!(console.get("/", Some(&session)).status, 303, "the session still works after logout");
    // A session lasts session_ttl.
    let second = console.login();
    assert_eq!(console.get("/api/hosts", Some(&second)).status, 200);
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(console.get("/", Some(&second)).status, 303, "the session outlived its 3 s");
    assert_eq!(console.get("/api/hosts", Some(&second)).status, 401);
    // A deleted user's sessions end with them.
    let third = console.login();
    let deleted = console.ids(&["fleet", "user", "del", USER]);
    assert!(deleted.status.success(), "{}", String::from_utf8_lossy(&deleted.stderr));
    assert_eq!(console.get("/", Some(&third)).status, 303, "a deleted user's session still works");
}

#[test]
fn wrong_passwords_are_throttled_even_before_the_right_one() {
    let console = Console::start("throttle", "");
    for attempt in 1..=5 {
        let reply = console.login_reply(USER, &format!("guess {attempt}"));
        assert_eq!(reply.status, 401, "attempt {attempt}");
    }
    let locked = console.login_reply(USER, PASSWORD);
    assert_eq!(locked.status, 429, "the right password right after 5 wrong ones: {}", locked.body);
    let wait: u64 = locked.header("retry-after").expect("Retry-After").parse().unwrap();
    assert!((1..=30).contains(&wait), "Retry-After {wait}");
    assert!(locked.body.contains("Too many failed logins"));
    // Another user from the same address is locked too (the address is throttled).
    let other = console.login_reply("bob", "whatever it is");
    assert_eq!(other.status, 429);
    let log = fs::read_to_string(console.log()).unwrap();
    assert_eq!(log.matches("console: failed login").count(), 5, "{log}");
}

#[test]
fn bans_need_the_csrf_token_the_origin_and_a_confirmation() {
    let console = Console::start("csrf", "");
    let session = console.login();
    // Without the token, with a wrong one, from another origin: refused, nothing recorded.
    let fields = "net=198.51.100.7&reason=scanner&duration=1h";
    assert_eq!(console.post("/bans", Some(&session), fields, &[]).status, 403);
    assert_eq!(console.post("/bans", Some(&session), &format!("{fields}&csrf=0000"), &[]).status, 403);
    let cross = console.post(
        "/bans",
        Some(&session),
        &format!("{fields}&csrf={}", session.csrf),
        &["-H", "Origin: https://evil.example"],
    );
    assert_eq!(cross.status, 403, "a ban posted from another site");
    let opaque =
        console.post("/bans", Some(&session), &format!("{fields}&csrf={}", session.csrf), &["-H", "Origin: null"]);
    assert_eq!(opaque.status, 403, "a ban posted from an opaque origin");
    assert!(console.decisions().is_empty(), "{:?}", console.decisions());
    // The form's first step only shows the confirmation.
    let confirm = console.post("/bans/confirm", Some(&session), &format!("{fields}&csrf={}", session.csrf), &[]);
    assert_eq!(confirm.status, 200);
    assert!(confirm.body.contains("id=\"confirm-submit\""), "{}", confirm.body);
    assert!(confirm.body.contains("198.51.100.7"));
    assert!(console.decisions().is_empty(), "the confirmation page recorded the ban");
    // A broad prefix needs its box ticked; a bad address is named.
    let broad = console.post("/bans/confirm", Some(&session), &format!("net=10.0.0.0/4&csrf={}", session.csrf), &[]);
    assert_eq!(broad.status, 400);
    assert!(broad.body.contains("broad prefix"), "{}", broad.body);
    let bad = console.post("/bans/confirm", Some(&session), &format!("net=300.1.2.3&csrf={}", session.csrf), &[]);
    assert_eq!(bad.status, 400);
    // Confirmed, with the token and the console's own origin: recorded, shown.
    let origin = format!("Origin: https://127.0.0.1:{}", console.port);
    let done = console.post("/bans", Some(&session), &format!("{fields}&csrf={}", session.csrf), &["-H", &origin]);
    assert_eq!(done.status, 303, "{}", done.body);
    assert_eq!(console.decisions(), vec![("ban".into(), "198.51.100.7".into(), format!("console:{USER}"))]);
    let bans = console.get("/bans", Some(&session));
    assert!(bans.body.contains("data-net=\"198.51.100.7\""), "{}", bans.body);
    // Unban: confirmation, then the decision.
    let unban_fields = format!("net=198.51.100.7&csrf={}", session.csrf);
    assert_eq!(console.post("/bans/unban/confirm", Some(&session), &unban_fields, &[]).status, 200);
    assert_eq!(console.decisions().len(), 1);
    assert_eq!(console.post("/bans/unban", Some(&session), "net=198.51.100.7", &[]).status, 403);
    assert_eq!(console.post("/bans/unban", Some(&session), &unban_fields, &[]).status, 303);
    assert_eq!(console.decisions()[1].0, "unban");
    assert!(!console.get("/bans", Some(&session)).body.contains("data-net=\"198.51.100.7\""));
    // The API: a session needs X-CSRF-Token; a bearer token needs none.
    let json_type = ["-H", "Content-Type: application/json"];
    let body = r#"{"net":"203.0.113.9","duration":"10m","reason":"from a script"}"#;
    let no_header = console.post("/api/bans", Some(&session), body, &json_type);
    assert_eq!(no_header.status, 403, "an API ban with a session cookie and no CSRF header");
    let csrf_header = format!("X-CSRF-Token: {}", session.csrf);
    let with_header =
        console.post("/api/bans", Some(&session), body, &[json_type[0], json_type[1], "-H", &csrf_header]);
    assert_eq!(with_header.status, 200, "{}", with_header.body);
    let token = console.ids(&["fleet", "token", "add", "siem"]);
    assert!(token.status.success(), "{}", String::from_utf8_lossy(&token.stderr));
    let token = String::from_utf8(token.stdout).unwrap().trim().to_string();
    let bearer = format!("Authorization: Bearer {token}");
    let scripted = console.post("/api/unban", None, r#"{"net":"203.0.113.9"}"#, &["-H", &bearer]);
    assert_eq!(scripted.status, 200, "{}", scripted.body);
    assert_eq!(scripted.json()["decision"]["origin"], "console:token:siem");
    let garbage = console.post("/api/bans", None, "{not json", &["-H", &bearer]);
    assert_eq!(garbage.status, 400);
    assert!(garbage.json()["error"].as_str().unwrap().contains("not JSON"));
    assert_eq!(console.decisions().len(), 4, "{:?}", console.decisions());
    // The token's secret is not in the database, only its hash.
    let stored: String = console.db().query_row("SELECT hash FROM console_tokens", [], |row| row.get(0)).unwrap();
    assert_ne!(stored, token);
}

#[test]
fn a_client_certificate_of_the_console_ca_logs_in_without_a_password() {
    let console = Console::start("cert", "");
    let (cert, key) = &console.client;
    let reply = console.curl(&["--cert", cert.to_str().unwrap(), "--key", key.to_str().unwrap(), &console.url("/")]);
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(reply.body.contains("cert:"), "the page names the certificate's user");
    assert!(reply.header("set-cookie").unwrap_or_default().contains("ids_session="));
    assert_eq!(console.get("/", None).status, 303, "without the certificate");
}

#[test]
fn markup_in_an_alert_is_shown_as_text() {
    let console = Console::start("xss", "");
    let session = console.login();
    let evil = "<script>alert(\"x\")</script>' onmouseover='alert(1)";
    let alert = json!({
        "kind": "detect", "rule": "web-sqli", "severity": "high", "detector": "web",
        "description": evil, "source": "192.0.2.66", "path": "/var/log/nginx/access.log",
        "evidence": [format!("GET /?q={evil} HTTP/1.1")], "action": {"kind": "alert_only"},
    });
    let mut db = console.db();
    insert_alerts(&mut db, &[Stored::new("web<b>1", "detect", "high", Some("web-sqli"), alert)]);
    let id: i64 = db.query_row("SELECT MAX(id) FROM alerts", [], |row| row.get(0)).unwrap();
    for page in ["/alerts".to_string(), format!("/alerts/{id}"), "/alerts?rule=web-sqli".to_string()] {
        let reply = console.get(&page, Some(&session));
        assert_eq!(reply.status, 200, "{page}: {}", reply.body);
        assert!(!reply.body.contains("<script>alert"), "{page} holds the alert's markup as markup");
        assert!(!reply.body.contains("<b>1"), "{page} holds the host's markup as markup");
        assert!(!reply.body.contains("' onmouseover='"), "{page} lets a quote out of an attribute");
    }
    let one = console.get(&format!("/alerts/{id}"), Some(&session)).body;
    assert!(one.contains("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&#39; onmouseover=&#39;alert(1)"), "{one}");
    assert!(one.contains("id=\"alert-json\""));
    // The API gives the alert back as data, intact.
    let api = console.get(&format!("/api/alerts/{id}"), Some(&session)).json();
    assert_eq!(api["alert"]["alert"]["description"], evil);
    assert_eq!(api["alert"]["host"], "web<b>1");
}

#[test]
fn a_new_alert_reaches_an_open_event_stream() {
    let console = Console::start("live", "");
    let session = console.login();
    let mut db = console.db();
    let alert = |n: usize| json!({"kind": "integrity", "collector": "files", "id": format!("file:/etc/live-{n}"), "change": "added", "attributes": []});
    insert_alerts(&mut db, &[Stored::new("web1", "integrity", "medium", None, alert(0))]);
    let first: i64 = db.query_row("SELECT MAX(id) FROM alerts", [], |row| row.get(0)).unwrap();
    let url = console.url(&format!("/events?after={first}"));
    let cookie = session.cookie_header();
    let stream = Command::new("curl")
        .args(["-s", "-N", "--max-time", "4", "--cacert"])
        .arg(&console.ca)
        .args(["-H", &cookie, &url])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(800));
    insert_alerts(&mut db, &[Stored::new("web2", "integrity", "medium", None, alert(1))]);
    let output = stream.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    let alerts: Vec<Value> = text
        .split("\n\n")
        .filter(|event| event.contains("event: alert"))
        .filter_map(|event| event.lines().find_map(|l| l.strip_prefix("data: ")))
        .map(|data| serde_json::from_str(data).unwrap())
        .collect();
    assert_eq!(alerts.len(), 1, "one alert after {first}, none twice: {text}");
    assert_eq!(alerts[0]["id"], first + 1);
    assert_eq!(alerts[0]["host"], "web2");
    assert_eq!(alerts[0]["summary"], "integrity /etc/live-1: added");
}

/// 100,000 alerts over 7 hosts, 5 kinds and 48 hours: the filters, the timeline and the export
/// count exactly what was stored (the speed of these is `cargo xtask bench console`).
#[test]
fn filters_timeline_and_export_agree_with_100000_stored_alerts() {
    const ALERTS: usize = 100_000;
    let console = Console::start("load", "");
    let session = console.login();
    let kinds =
        [("integrity", "medium"), ("detect", "high"), ("ban", "low"), ("sensor_miss", "high"), ("detect", "medium")];
    let mut rows = Vec::with_capacity(ALERTS);
    for n in 0..ALERTS {
        let host = format!("host{}", n % 7);
        let (kind, severity) = kinds[n % kinds.len()];
        let rule = (kind == "detect").then_some(if severity == "high" { "ssh-bruteforce" } else { "web-scan" });
        // Spread over the last 48 hours, oldest first.
        let time = now_rfc3339(-((ALERTS - n) as i64 * 172_800 / ALERTS as i64));
        let alert = json!({"kind": kind, "rule": rule, "severity": severity, "id": format!("file:/srv/{n}"), "n": n});
        rows.push(Stored { host, time, kind, severity, rule, alert });
    }
    insert_alerts(&mut console.db(), &rows);
    let expected = |host: &str, kind: &str, severity: Option<&str>| {
        rows.iter().filter(|r| r.host == host && r.kind == kind && severity.is_none_or(|s| r.severity == s)).count()
            as i64
    };
    let api = |path: &str| {
        let reply = console.get(path, Some(&session));
        assert_eq!(reply.status, 200, "{path}: {}", reply.body);
        reply.json()
    };
    let filtered = api("/api/alerts?host=host3&kind=detect&severity=high&limit=50");
    assert_eq!(filtered["total"], expected("host3", "detect", Some("high")));
    let listed = filtered["alerts"].as_array().unwrap();
    assert_eq!(listed.len(), 50);
    assert!(listed.iter().all(|a| a["host"] == "host3" && a["rule"] == "ssh-bruteforce"));
    // Newest first, and the next page continues exactly where this one stops.
    let ids: Vec<i64> = listed.iter().map(|a| a["id"].as_i64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]));
    let next = filtered["next_before"].as_i64().unwrap();
    assert_eq!(next, *ids.last().unwrap());
    let second = api(&format!("/api/alerts?host=host3&kind=detect&severity=high&limit=50&before={next}"));
    assert!(second["alerts"][0]["id"].as_i64().unwrap() < next);
    // The timeline's hours add up to the filter's count; every hour of the 48 is there.
    let timeline = api("/api/timeline?kind=integrity");
    let hours = timeline["timeline"].as_array().unwrap();
    let sum: i64 = hours.iter().map(|h| h["count"].as_i64().unwrap()).sum();
    assert_eq!(sum, rows.iter().filter(|r| r.kind == "integrity").count() as i64);
    assert!((48..=50).contains(&hours.len()), "{} hours", hours.len());
    // The page with a filter, its chart and its rows.
    let page = console.get("/alerts?host=host5&kind=ban&since=24h", Some(&session));
    assert_eq!(page.status, 200);
    assert_eq!(page.body.matches("<tr data-alert-id=").count(), 100, "a page of 100 rows");
    assert!(page.body.contains("<svg id=\"timeline\""));
    assert!(page.body.contains("id=\"older\""));
    // Exports: every selected alert once, oldest first; CSV with its header.
    let jsonl = console.get("/api/export?format=jsonl&host=host1", Some(&session));
    assert_eq!(jsonl.status, 200);
    assert_eq!(jsonl.header("content-type").as_deref(), Some("application/x-ndjson"));
    let lines: Vec<Value> = jsonl.body.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), rows.iter().filter(|r| r.host == "host1").count());
    assert!(lines.windows(2).all(|w| w[0]["id"].as_i64() < w[1]["id"].as_i64()));
    let csv = console.get("/api/export?format=csv&host=host2&kind=detect", Some(&session));
    assert_eq!(csv.body.lines().next(), Some("id,host,hostname,time,kind,severity,rule,summary,alert"));
    assert_eq!(csv.body.lines().count() as i64 - 1, expected("host2", "detect", None));
    assert!(expected("host2", "detect", None) > 5000);
    // Bad filters are named.
    let bad = console.get("/api/alerts?kind=nonsense", Some(&session));
    assert_eq!(bad.status, 400);
    assert!(bad.json()["error"].as_str().unwrap().contains("kind \"nonsense\""));
    let bad_time = console.get("/api/alerts?since=yesterday-ish", Some(&session));
    assert_eq!(bad_time.status, 400);
}
