//! The fleet's parts as the fleet and console tests run them: agents (real daemons with `[fleet]`,
//! their own state, watched directory and host id) and `ids collect` as a child process with its
//! own config and database, both against a [`Broker`](crate::broker::Broker) of the test.
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::broker::Broker;
use crate::{Daemon, Pins, Scratch, ids_bin, test_pin_dir};

pub fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// [`wait_until`], and on failure what `explain` says of the state.
pub fn wait_until_or(what: &str, timeout: Duration, mut check: impl FnMut() -> bool, explain: impl Fn() -> String) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}; {}", explain());
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// An agent: a daemon with `[fleet]`, its own state dir, watched dir and host id; its config and
/// state outlive restarts.
pub struct Agent {
    pub host: String,
    pub config: PathBuf,
    pub events: PathBuf,
    pub watch: PathBuf,
    pub state: PathBuf,
    pub daemon: Option<Daemon>,
    _pins: Pins,
    /// The agent's scratch directory: config, state, watched dir, password.
    pub dir: Scratch,
}

impl Agent {
    /// `fleet` is the body of the `[fleet]` table (url, credentials, host_id...); `extra` goes before it.
    pub fn new(name: &str, fleet: &str, extra: &str) -> Self {
        Agent::with_interface(name, fleet, extra, "lo")
    }

    /// An agent whose XDP ban filter is on `interface`.
    pub fn with_interface(name: &str, fleet: &str, extra: &str, interface: &str) -> Self {
        let dir = Scratch::new("/var/tmp", &format!("fleet-agent-{name}"));
        let watch = dir.0.join("watch");
        fs::create_dir_all(&watch).unwrap();
        let config = dir.0.join("ids.toml");
        let events = dir.0.join("events.jsonl");
        let state = dir.0.join("state");
        fs::write(
            &config,
            format!(
                "watch = [{watch:?}]\nevents_log = {events:?}\nstate_dir = {state:?}\nxdp.interfaces = [{interface:?}]\nxdp.pin_dir = {pins:?}\n{extra}\n[[collectors]]\nkind = \"file_contents\"\npaths = [{watch:?}]\nrecursive = true\n[fleet]\n{fleet}\n",
                watch = watch.display().to_string(),
                events = events.display().to_string(),
                state = state.display().to_string(),
                pins = test_pin_dir(&format!("fleet-{name}")),
            ),
        )
        .unwrap();
        Agent {
            host: name.to_string(),
            _pins: Pins { config: config.clone() },
            config,
            events,
            watch,
            state,
            daemon: None,
            dir,
        }
    }

    /// An agent logging in as the broker user named like its host id, heartbeat every `heartbeat`.
    pub fn plain(name: &str, broker: &Broker, heartbeat: &str, extra: &str) -> Self {
        Agent::plain_on(name, broker, heartbeat, extra, "lo")
    }

    pub fn plain_on(name: &str, broker: &Broker, heartbeat: &str, extra: &str, interface: &str) -> Self {
        // In the agent's own scratch directory (made by `with_interface`, written right after).
        let password =
            Path::new("/var/tmp").join(format!("ids-test-{}-fleet-agent-{name}/password", std::process::id()));
        let fleet = format!(
            "url = \"amqp://{name}@127.0.0.1:{}/%2f\"\npassword_file = {:?}\nhost_id = {name:?}\nheartbeat = {heartbeat:?}",
            broker.port(),
            password.display().to_string()
        );
        let agent = Agent::with_interface(name, &fleet, extra, interface);
        assert!(password.starts_with(&agent.dir.0));
        fs::write(&password, broker.password(name)).unwrap();
        agent
    }

    /// Starts the daemon and waits for its first scan: a file written from then on is an alert
    /// (one written during the scan is part of it).
    pub fn start(&mut self) -> &mut Self {
        assert!(self.daemon.is_none());
        let daemon = Daemon::spawn(&self.config, &self.events);
        wait_until("the first scan", Duration::from_secs(30), || daemon.status()["integrity"]["ready"] == true);
        self.daemon = Some(daemon);
        self
    }

    pub fn stop(&mut self) {
        self.daemon.take().expect("agent running").stop();
    }

    pub fn kill(&mut self) {
        self.daemon.take().expect("agent running").kill();
    }

    pub fn fleet_status(&self) -> Value {
        self.daemon.as_ref().expect("agent running").status()["fleet"].clone()
    }

    /// Writes `count` new files (one alert each) named `prefix-N`.
    pub fn write_files(&self, prefix: &str, count: usize) {
        for n in 0..count {
            fs::write(self.watch.join(format!("{prefix}-{n}")), format!("{prefix} {n}\n")).unwrap();
        }
    }

    /// Writes new files in rounds of 250 until the agent has stored at least `alerts` alerts
    /// (files written during a rescan are part of it, not alerts of their own).
    pub fn burst(&self, prefix: &str, alerts: i64) {
        let deadline = Instant::now() + Duration::from_secs(90);
        let mut round = 0;
        while self.last_seq() < alerts {
            assert!(Instant::now() < deadline, "{} alerts stored of {alerts} after {round} rounds", self.last_seq());
            self.write_files(&format!("{prefix}{round}"), 250);
            round += 1;
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The newest alert id in the agent's own store: the sequence numbers the collector must have.
    pub fn last_seq(&self) -> i64 {
        let db = rusqlite::Connection::open(self.state.join("ids.db")).unwrap();
        db.query_row("SELECT COALESCE(MAX(id), 0) FROM alerts", [], |row| row.get(0)).unwrap()
    }

    pub fn epoch(&self) -> i64 {
        let db = rusqlite::Connection::open(self.state.join("ids.db")).unwrap();
        db.query_row("SELECT epoch FROM fleet_outbox", [], |row| row.get(0)).unwrap()
    }

    /// `ids <args> --json` against this agent's config.
    pub fn ids(&self, args: &[&str]) -> Value {
        ids_json(&self.config, args)
    }
}

/// `ids <args> --json --config <config>`, asserting success.
pub fn ids_json(config: &Path, args: &[&str]) -> Value {
    let out = Command::new(ids_bin()).args(args).args(["--json", "--config"]).arg(config).output().unwrap();
    let json: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "ids {args:?} printed no JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(out.status.success() && json["ok"] == true, "ids {args:?} failed: {json}");
    json
}

/// `ids collect` as a child process with its own config and database.
pub struct Collector {
    pub config: PathBuf,
    child: Option<Child>,
    log: PathBuf,
    /// The collector's scratch directory: config, password, database.
    pub dir: Scratch,
}

impl Collector {
    /// `extra` adds keys to `[collect]` (silent_after, verify_host, database...).
    pub fn new(name: &str, broker: &Broker, extra: &str) -> Self {
        let dir = Scratch::new("/var/tmp", &format!("fleet-collect-{name}"));
        let password = dir.0.join("password");
        fs::write(&password, broker.password("collector")).unwrap();
        let database = dir.0.join("fleet.db");
        let config = dir.0.join("ids.toml");
        let database_line = if extra.contains("database") {
            String::new()
        } else {
            format!("database = {:?}\n", database.display().to_string())
        };
        fs::write(
            &config,
            format!(
                "[collect]\nurl = \"amqp://collector@127.0.0.1:{}/%2f\"\npassword_file = {:?}\n{database_line}{extra}\n",
                broker.port(),
                password.display().to_string()
            ),
        )
        .unwrap();
        let log = dir.0.join("collect.log");
        let mut collector = Collector { config, child: None, log, dir };
        collector.start();
        collector
    }

    pub fn start(&mut self) {
        let log = fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let child = Command::new(ids_bin())
            .args(["collect", "--config"])
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn fleet(&self, args: &[&str]) -> Value {
        ids_json(&self.config, &[&["fleet"], args].concat())
    }

    /// Every stored alert of `host` (through `ids fleet alerts --json`).
    pub fn alerts_of(&self, host: &str) -> Vec<Value> {
        self.fleet(&["alerts", "--host", host, "-n", "1000000"])["data"].as_array().cloned().unwrap_or_default()
    }

    pub fn host(&self, host: &str) -> Option<Value> {
        let hosts = self.fleet(&["hosts"])["data"].as_array().cloned().unwrap_or_default();
        hosts.into_iter().find(|h| h["host"] == host)
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// This agent's bans from the fleet: (net, expires).
pub fn fleet_bans(agent: &Agent) -> Vec<(String, String)> {
    let bans = agent.ids(&["bans"])["data"].as_array().cloned().unwrap_or_default();
    bans.iter()
        .filter(|b| b["source"] == "fleet")
        .map(|b| (b["net"].as_str().unwrap_or("").to_string(), b["expires"].as_str().unwrap_or("").to_string()))
        .collect()
}
