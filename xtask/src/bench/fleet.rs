//! Area `fleet`: alerts from an agent (`ids run` with `[fleet]`) through a real RabbitMQ broker
//! to `ids collect` and its SQLite database, beside a DIDS-style Python/pika peer, in one run.
//!
//! 1. **End-to-end throughput**: the agent's `alerts` table (its outbox) is prefilled, daemon
//!    stopped, with [`N`] rows shaped like real `integrity` alerts; `ids collect` runs, then the
//!    clock starts with `ids run` and stops when the collector's database holds all of them for
//!    the host (polled every [`POLL`]). [`REPS`] repetitions, fresh state each.
//! 2. **Peer**: `fleet_peer.py` publishes the same rows (read from a copy of the same SQLite
//!    file) one by one, persistent, with publisher confirms; a pika consumer inserts each into
//!    its own SQLite table, committing per message and acking after the commit. Clock from the
//!    publisher's start to the consumer's table holding all of them. It is far slower, so it gets
//!    [`N_PEER`] rows (env `IDS_BENCH_FLEET_PEER_N`); rates are compared.
//! 3. **Latency stored → queryable**: new files at [`LATENCY_RATE`]/s for [`LATENCY_SECS`] s in
//!    a directory the daemon watches (one `integrity` alert each); per alert `received - time`
//!    from the collector's database.
//! 4. **Outage**: the broker is killed (`kill -9`), the daemon stopped, [`N`] rows prefilled as
//!    in 1, the daemon started again with the broker still down; the outage lasts
//!    `IDS_BENCH_FLEET_OUTAGE_S` (default 600) from the kill, then the broker restarts and the
//!    drain to the collector is timed. Failed sshd logins (addresses in 10.251/16, only log
//!    lines) are written to a log the daemon follows, and the time until the ban shows in
//!    `ids bans --json` is measured with the broker up and during the outage with the backlog
//!    full.
//!
//! Needs root (the daemon), `rabbitmq-server` and the system python's pika (`cargo xtask setup`).
//! The broker is the fleet tests' harness (`ids_tests::broker`): a plain process on its own
//! loopback ports and directory, stopped on drop whatever happens; the rest lives in a scratch
//! directory under /var/tmp.
use std::fmt::Write as _;
use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail, ensure};
use ids_tests::broker::Broker;

use super::integrity::process_cpu_seconds;
use super::{
    Daemon, Machine, Scratch, append_to_benchmarks, build_release, command_stdout, load_average, median, other_sensors,
    thousands, utc_timestamp,
};

/// Alerts per throughput repetition, and the backlog of the outage.
const N: usize = 100_000;
/// Default rows for the peer: it commits per message, so 100,000 would take minutes per run.
const N_PEER: usize = 20_000;
const REPS: usize = 3;
const POLL: Duration = Duration::from_millis(50);
const TARGET_RATE: f64 = 20_000.0;
const TARGET_RATIO: f64 = 3.0;
const LATENCY_RATE: u64 = 200;
const LATENCY_SECS: u64 = 15;
const TARGET_P99_MS: f64 = 1000.0;
const DEFAULT_OUTAGE_S: u64 = 600;
/// Ban measurements with the broker up, and as many during the outage.
const BAN_PROBES: usize = 5;
const HOST: &str = "bench-host";
const PEER_SCRIPT: &str = include_str!("fleet_peer.py");
const PYTHON: &str = "/usr/bin/python3";
/// Longest wait for any one transfer to finish; a stall fails the bench instead of hanging it.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(900);

/// Pids of other `ids` processes seen during the run (collected at each phase).
static OTHERS: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());

fn note_others() {
    let found = other_sensors(None).unwrap_or_default();
    let mut others = OTHERS.lock().unwrap_or_else(|p| p.into_inner());
    others.extend(found);
}

fn env_number(name: &str, default: u64) -> anyhow::Result<u64> {
    match std::env::var(name) {
        Ok(v) => v.parse().with_context(|| format!("{name}={v:?} is not a number")),
        Err(_) => Ok(default),
    }
}

fn q(p: &Path) -> String {
    serde_json::to_string(&p.display().to_string()).expect("a string serializes")
}

/// "YYYY-MM-DDTHH:MM:SS.ffffffZ", as the daemon stores alert times.
fn rfc3339_micros(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let (secs, micros) = (d.as_secs(), d.subsec_micros());
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = ids_tests::civil_date(days as i64);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{micros:06}Z", rest / 3600, rest % 3600 / 60, rest % 60)
}

fn open_db(path: &Path) -> anyhow::Result<rusqlite::Connection> {
    let db = rusqlite::Connection::open(path).with_context(|| format!("opening {}", path.display()))?;
    // The daemon or the collector may hold the write lock for a moment.
    db.busy_timeout(Duration::from_secs(10))?;
    Ok(db)
}

fn count(db: &rusqlite::Connection, sql: &str) -> anyhow::Result<u64> {
    let n: i64 = db.query_row(sql, [], |row| row.get(0)).with_context(|| format!("running {sql}"))?;
    Ok(n.max(0) as u64)
}

/// Inserts `n` rows shaped like the daemon's `integrity` alerts (a file under /etc whose content
/// changed) in one transaction; returns the id before the first of them.
fn prefill(state_db: &Path, n: usize) -> anyhow::Result<i64> {
    let mut db = open_db(state_db)?;
    let tx = db.transaction()?;
    let before: i64 = tx.query_row("SELECT COALESCE(MAX(id), 0) FROM alerts", [], |row| row.get(0))?;
    {
        let mut insert = tx.prepare(
            "INSERT INTO alerts (time, kind, item_id, collector, what) VALUES (?1, 'integrity', ?2, 'etc', ?3)",
        )?;
        let now = SystemTime::now();
        let dirs = ["ssh", "pam.d", "systemd/system", "cron.d", "nginx/sites-enabled", "sudoers.d"];
        for i in 0..n {
            let path = format!("/etc/{}/file-{i:06}.conf", dirs[i % dirs.len()]);
            let side = |salt: usize, size: usize| {
                serde_json::json!({
                    "content": format!("sha256:{:016x}{:016x}{:016x}{:016x}", i, salt, i ^ 0x5a5a, salt * 31),
                    "size": size,
                    "mode": "100644",
                    "uid": 0,
                    "gid": 0,
                    "mtime": rfc3339_micros(now - Duration::from_secs(86_400 + salt as u64)),
                })
            };
            let what = serde_json::json!({
                "change": "changed",
                "attributes": ["content"],
                "old": side(1, 1000 + i % 3000),
                "new": side(2, 1010 + i % 3000),
            });
            insert.execute(rusqlite::params![rfc3339_micros(now), format!("file:{path}"), what.to_string()])?;
        }
    }
    tx.commit()?;
    Ok(before)
}

/// The agent of one phase: its config in the bench's scratch config, its own state and watched
/// directory.
struct Agent {
    dir: PathBuf,
    watch: PathBuf,
    state_db: PathBuf,
}

impl Agent {
    /// Writes the daemon config for a fresh agent under `scratch/name`; `top` is extra top-level
    /// keys, `tables` extra tables.
    fn configure(scratch: &Scratch, broker: &Broker, name: &str, top: &str, tables: &str) -> anyhow::Result<Self> {
        let dir = scratch.dir.join(name);
        let watch = dir.join("watch");
        let state = dir.join("state");
        fs::create_dir_all(&watch).with_context(|| format!("creating {}", watch.display()))?;
        let password = dir.join("agent.password");
        fs::write(&password, broker.password(HOST))?;
        let config = format!(
            "watch = [{w}]\nevents_log = {e}\nstate_dir = {s}\n{xdp}{top}\n{tables}\n\
             [[collectors]]\nkind = \"file_contents\"\npaths = [{w}]\nrecursive = true\n\
             [fleet]\nurl = \"amqp://{HOST}@127.0.0.1:{port}/%2f\"\npassword_file = {p}\nhost_id = \"{HOST}\"\nheartbeat = \"30s\"\n",
            w = q(&watch),
            e = q(&dir.join("events.jsonl")),
            s = q(&state),
            xdp = scratch.xdp_keys(),
            port = broker.port(),
            p = q(&password),
        );
        fs::write(&scratch.config, config).with_context(|| format!("writing {}", scratch.config.display()))?;
        Ok(Self { state_db: state.join("ids.db"), dir, watch })
    }

    fn alerts(&self) -> anyhow::Result<u64> {
        count(&open_db(&self.state_db)?, "SELECT COUNT(*) FROM alerts")
    }

    /// Alerts stored and not yet confirmed by the broker, from the outbox itself (`ids status`
    /// only updates its figure when the agent is connected).
    fn backlog(&self) -> anyhow::Result<u64> {
        count(
            &open_db(&self.state_db)?,
            "SELECT COUNT(*) FROM alerts WHERE id > (SELECT COALESCE(MAX(confirmed_seq), 0) FROM fleet_outbox)",
        )
    }
}

/// `ids collect` with a fresh database; stopped on drop.
struct Collect {
    child: Child,
    database: PathBuf,
    log: PathBuf,
    db: Option<rusqlite::Connection>,
}

impl Collect {
    /// Starts the collector and waits until its database exists and it consumes `ids.alerts`.
    fn start(ids: &Path, broker: &Broker, dir: &Path) -> anyhow::Result<Self> {
        fs::create_dir_all(dir)?;
        let password = dir.join("collector.password");
        fs::write(&password, broker.password("collector"))?;
        let database = dir.join("fleet.db");
        let config = dir.join("collect.toml");
        fs::write(
            &config,
            format!(
                "[collect]\nurl = \"amqp://collector@127.0.0.1:{}/%2f\"\npassword_file = {}\ndatabase = {}\n",
                broker.port(),
                q(&password),
                q(&database)
            ),
        )?;
        let log = dir.join("collect.log");
        let child = Command::new(ids)
            .arg("collect")
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(OpenOptions::new().create(true).append(true).open(&log)?)
            .spawn()
            .context("starting ids collect")?;
        let mut collect = Self { child, database, log, db: None };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !collect.consuming(broker) {
            if let Some(status) = collect.child.try_wait()? {
                bail!("ids collect exited ({status}):\n{}", collect.log_tail());
            }
            ensure!(Instant::now() < deadline, "ids collect did not consume within 60 s:\n{}", collect.log_tail());
            thread::sleep(Duration::from_millis(300));
        }
        Ok(collect)
    }

    fn consuming(&self, broker: &Broker) -> bool {
        let out = broker.ctl_output(&["--silent", "list_queues", "name", "consumers"]);
        String::from_utf8_lossy(&out.stdout).lines().any(|line| {
            line.split_once('\t').is_some_and(|(name, n)| name == "ids.alerts" && n.trim().parse().unwrap_or(0) > 0)
        })
    }

    /// Alerts of the bench host stored so far.
    fn count(&mut self) -> anyhow::Result<u64> {
        if self.db.is_none() {
            self.db = Some(open_db(&self.database)?);
        }
        count(self.db.as_ref().expect("opened"), "SELECT COUNT(*) FROM alerts WHERE host = 'bench-host'")
    }

    /// Polls until `target` alerts are stored; returns when the first arrived after `since` (if
    /// any was seen arriving) and when the last did.
    fn wait_for(&mut self, target: u64, what: &str) -> anyhow::Result<(Option<Instant>, Instant)> {
        let deadline = Instant::now() + TRANSFER_TIMEOUT;
        let start_count = self.count()?;
        let mut first = None;
        loop {
            let n = self.count()?;
            if first.is_none() && n > start_count {
                first = Some(Instant::now());
            }
            if n >= target {
                return Ok((first, Instant::now()));
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("ids collect exited ({status}) during {what}:\n{}", self.log_tail());
            }
            ensure!(Instant::now() < deadline, "{what}: {n} of {target} stored after {TRANSFER_TIMEOUT:?}");
            thread::sleep(POLL);
        }
    }

    fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Collect {
    fn drop(&mut self) {
        stop_child(&mut self.child);
    }
}

/// SIGTERM, then SIGKILL after 15 s.
fn stop_child(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        // SAFETY: signals our own child, not yet reaped.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// CPU seconds used by a set of processes between two samples: where the time went.
struct Cpu {
    names: Vec<&'static str>,
    pids: Vec<u32>,
    before: Vec<f64>,
}

impl Cpu {
    fn start(processes: &[(&'static str, u32)]) -> Self {
        Self {
            names: processes.iter().map(|p| p.0).collect(),
            pids: processes.iter().map(|p| p.1).collect(),
            before: processes.iter().map(|p| process_cpu_seconds(p.1).unwrap_or(0.0)).collect(),
        }
    }

    /// "ids run 3.1 s, ids collect 1.2 s, ..." (processes that exited meanwhile count as 0).
    fn used(&self) -> Vec<(&'static str, f64)> {
        self.pids
            .iter()
            .zip(&self.before)
            .zip(&self.names)
            .map(|((pid, before), name)| (*name, process_cpu_seconds(*pid).map_or(0.0, |now| now - before)))
            .collect()
    }
}

fn cpu_text(runs: &[Vec<(&'static str, f64)>], elapsed: &[f64]) -> String {
    let Some(first) = runs.first() else { return String::new() };
    first
        .iter()
        .enumerate()
        .map(|(i, (name, _))| {
            let share: Vec<f64> = runs.iter().zip(elapsed).map(|(r, e)| r[i].1 / e.max(1e-9) * 100.0).collect();
            format!("{name} {:.0} %", median(&share))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

struct Throughput {
    /// One extra run taken apart: the agent alone into the queue (no collector consuming), then
    /// the collector alone draining the full queue. Alerts per second of each.
    agent_alone: f64,
    collector_alone: f64,
    rates: Vec<f64>,
    /// Rate from the first alert stored to the last (daemon start-up and connect excluded).
    steady: Vec<f64>,
    elapsed: Vec<f64>,
    cpu: Vec<Vec<(&'static str, f64)>>,
    /// Copy of the first repetition's prefilled agent database, for the peer.
    peer_source: PathBuf,
    first_prefilled: i64,
}

fn measure_throughput(ids: &Path, broker: &Broker, scratch: &Scratch) -> anyhow::Result<Throughput> {
    let mut t = Throughput {
        agent_alone: 0.0,
        collector_alone: 0.0,
        rates: vec![],
        steady: vec![],
        elapsed: vec![],
        cpu: vec![],
        peer_source: scratch.dir.join("peer-source.db"),
        first_prefilled: 0,
    };
    for rep in 1..=REPS {
        let agent = Agent::configure(scratch, broker, &format!("throughput-{rep}"), "", "")?;
        // The first start creates the database and the fleet outbox (its epoch).
        Daemon::start(ids, scratch)?.stop()?;
        let before = prefill(&agent.state_db, N)?;
        let target = agent.alerts()?;
        if rep == 1 {
            fs::copy(&agent.state_db, &t.peer_source).context("copying the agent database for the peer")?;
            t.first_prefilled = before;
        }
        let mut collect = Collect::start(ids, broker, &agent.dir.join("collect"))?;
        // Other `ids` processes (tests beside the bench) are recorded, not waited for: they only
        // compete for the CPU, which the section states.
        note_others();
        let start = Instant::now();
        let daemon = Daemon::start(ids, scratch)?;
        let cpu = Cpu::start(&[
            ("ids run", daemon.pid()),
            ("ids collect", collect.pid()),
            ("broker", broker.beam_pid().unwrap_or(0)),
        ]);
        let (first, last) = collect.wait_for(target, "the throughput run")?;
        let used = cpu.used();
        let elapsed = last.duration_since(start).as_secs_f64();
        daemon.stop()?;
        // The unique key makes a doubled alert impossible; a surplus would mean foreign rows.
        let stored = collect.count()?;
        ensure!(stored == target, "the collector holds {stored} alerts of the host, the agent {target}");
        drop(collect);
        let rate = N as f64 / elapsed;
        let steady = first.map_or(rate, |f| N as f64 / last.duration_since(f).as_secs_f64().max(1e-9));
        eprintln!("bench: throughput {rep}/{REPS}: {N} alerts in {elapsed:.2} s = {rate:.0}/s (steady {steady:.0}/s)");
        t.rates.push(rate);
        t.steady.push(steady);
        t.elapsed.push(elapsed);
        t.cpu.push(used);
    }
    (t.agent_alone, t.collector_alone) = measure_split(ids, broker, scratch)?;
    Ok(t)
}

/// Which side limits: the agent publishing into the quorum queue with nobody consuming (until
/// its outbox is confirmed up to the last row), then the collector alone committing the full
/// queue.
fn measure_split(ids: &Path, broker: &Broker, scratch: &Scratch) -> anyhow::Result<(f64, f64)> {
    let agent = Agent::configure(scratch, broker, "split", "", "")?;
    Daemon::start(ids, scratch)?.stop()?;
    prefill(&agent.state_db, N)?;
    let target = agent.alerts()?;
    let start = Instant::now();
    let daemon = Daemon::start(ids, scratch)?;
    let deadline = Instant::now() + TRANSFER_TIMEOUT;
    while agent.backlog()? > 0 {
        ensure!(Instant::now() < deadline, "the agent alone did not send its backlog within {TRANSFER_TIMEOUT:?}");
        thread::sleep(POLL);
    }
    let agent_rate = N as f64 / start.elapsed().as_secs_f64();
    daemon.stop()?;
    let start = Instant::now();
    let mut collect = Collect::start(ids, broker, &agent.dir.join("collect"))?;
    collect.wait_for(target, "the collector alone")?;
    let collector_rate = N as f64 / start.elapsed().as_secs_f64();
    eprintln!("bench: agent alone {agent_rate:.0}/s, collector alone {collector_rate:.0}/s");
    Ok((agent_rate, collector_rate))
}

struct Peer {
    n: usize,
    rates: Vec<f64>,
    publish_rates: Vec<f64>,
    elapsed: Vec<f64>,
    cpu: Vec<Vec<(&'static str, f64)>>,
}

fn python(script: &Path, broker: &Broker, args: &[&str], log: &Path) -> anyhow::Result<Child> {
    Command::new(PYTHON)
        .arg(script)
        .args(args)
        .env("PEER_URL", broker.url("peer"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(OpenOptions::new().create(true).append(true).open(log)?)
        .spawn()
        .with_context(|| format!("starting {PYTHON} {}", script.display()))
}

fn measure_peer(broker: &Broker, scratch: &Scratch, source: &Path, after: i64, n: usize) -> anyhow::Result<Peer> {
    let script = scratch.dir.join("fleet_peer.py");
    fs::write(&script, PEER_SCRIPT)?;
    let log = scratch.dir.join("peer.log");
    let mut peer = Peer { n, rates: vec![], publish_rates: vec![], elapsed: vec![], cpu: vec![] };
    let tail = || fs::read_to_string(&log).unwrap_or_default().lines().rev().take(15).collect::<Vec<_>>().join("\n");
    for rep in 1..=REPS {
        let db_path = scratch.dir.join(format!("peer-{rep}.db"));
        let ready = scratch.dir.join(format!("peer-{rep}.ready"));
        let mut consumer =
            python(&script, broker, &["consume", &db_path.to_string_lossy(), &ready.to_string_lossy()], &log)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ready.exists() {
            if let Some(status) = consumer.try_wait()? {
                bail!("the peer consumer exited ({status}):\n{}", tail());
            }
            ensure!(Instant::now() < deadline, "the peer consumer was not ready within 30 s:\n{}", tail());
            thread::sleep(Duration::from_millis(50));
        }
        let db = open_db(&db_path)?;
        note_others();
        let start = Instant::now();
        let mut publisher =
            python(&script, broker, &["publish", &source.to_string_lossy(), &after.to_string(), &n.to_string()], &log)?;
        let cpu = Cpu::start(&[
            ("publisher", publisher.id()),
            ("consumer", consumer.id()),
            ("broker", broker.beam_pid().unwrap_or(0)),
        ]);
        let mut published = None;
        let mut cpu_publisher = None;
        let deadline = Instant::now() + TRANSFER_TIMEOUT;
        loop {
            if published.is_none() {
                // Sample the publisher's CPU while it still exists.
                let used = cpu.used();
                if let Some(status) = publisher.try_wait()? {
                    ensure!(status.success(), "the peer publisher failed ({status}):\n{}", tail());
                    published = Some(start.elapsed());
                } else {
                    cpu_publisher = Some(used[0].1);
                }
            }
            if count(&db, "SELECT COUNT(*) FROM alerts")? >= n as u64 {
                break;
            }
            if let Some(status) = consumer.try_wait()? {
                bail!("the peer consumer exited ({status}):\n{}", tail());
            }
            ensure!(Instant::now() < deadline, "the peer did not store {n} alerts within {TRANSFER_TIMEOUT:?}");
            thread::sleep(POLL);
        }
        let elapsed = start.elapsed().as_secs_f64();
        let mut used = cpu.used();
        used[0].1 = cpu_publisher.unwrap_or(0.0);
        stop_child(&mut consumer);
        stop_child(&mut publisher);
        let publish_s = published.map_or(elapsed, |d| d.as_secs_f64());
        eprintln!(
            "bench: peer {rep}/{REPS}: {n} alerts in {elapsed:.2} s = {:.0}/s (publisher done after {publish_s:.2} s)",
            n as f64 / elapsed
        );
        peer.rates.push(n as f64 / elapsed);
        peer.publish_rates.push(n as f64 / publish_s);
        peer.elapsed.push(elapsed);
        peer.cpu.push(used);
    }
    Ok(peer)
}

struct Latency {
    alerts: usize,
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    // Nearest rank.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn measure_latency(ids: &Path, broker: &Broker, scratch: &Scratch) -> anyhow::Result<Latency> {
    let agent = Agent::configure(scratch, broker, "latency", "", "")?;
    let mut collect = Collect::start(ids, broker, &agent.dir.join("collect"))?;
    note_others();
    let daemon = Daemon::start(ids, scratch)?;
    // Let the first scan and the first connect settle before the paced writes.
    thread::sleep(Duration::from_secs(3));
    let total = LATENCY_RATE * LATENCY_SECS;
    let start = Instant::now();
    for i in 0..total {
        let due = start + Duration::from_nanos(i * 1_000_000_000 / LATENCY_RATE);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
        fs::write(agent.watch.join(format!("new-{i:05}")), format!("new file {i}\n"))?;
    }
    let achieved = total as f64 / start.elapsed().as_secs_f64();
    // Every alert the daemon raised for them, then every one at the collector.
    let deadline = Instant::now() + Duration::from_secs(60);
    while agent.alerts()? < total {
        ensure!(Instant::now() < deadline, "the daemon raised {} of {total} alerts in 60 s", agent.alerts()?);
        thread::sleep(POLL);
    }
    let raised = agent.alerts()?;
    collect.wait_for(raised, "the latency run")?;
    daemon.stop()?;
    let db = open_db(&collect.database)?;
    let mut statement = db.prepare(
        "SELECT (julianday(received) - julianday(time)) * 86400000.0 FROM alerts \
         WHERE host = 'bench-host' AND kind = 'integrity'",
    )?;
    let mut ms: Vec<f64> = statement.query_map([], |row| row.get::<_, f64>(0))?.collect::<Result<_, _>>()?;
    ms.sort_by(f64::total_cmp);
    ensure!(!ms.is_empty(), "no integrity alert reached the collector");
    eprintln!(
        "bench: latency over {} alerts: p50 {:.1} ms, p99 {:.1} ms",
        ms.len(),
        percentile(&ms, 50.0),
        percentile(&ms, 99.0)
    );
    Ok(Latency {
        alerts: ms.len(),
        rate: achieved,
        p50_ms: percentile(&ms, 50.0),
        p99_ms: percentile(&ms, 99.0),
        max_ms: ms.last().copied().unwrap_or(f64::NAN),
    })
}

struct Outage {
    outage_s: u64,
    backlog: u64,
    reconnect_s: f64,
    drain_s: f64,
    drained: u64,
    ban_up_ms: Vec<f64>,
    ban_down_ms: Vec<f64>,
}

/// Writes five failed logins from `addr` and times until `ids bans --json` lists it.
fn time_ban(ids: &Path, scratch: &Scratch, log: &Path, addr: &str) -> anyhow::Result<f64> {
    let start = Instant::now();
    for i in 0..5 {
        let mut file = OpenOptions::new().append(true).open(log)?;
        // One write per line, as syslog daemons do; the line format of tests/tests/detect.rs.
        file.write_all(
            format!(
                "Nov 21 03:33:41 web1 sshd[4242]: Failed password for invalid user admin from {addr} port {} ssh2\n",
                50000 + i
            )
            .as_bytes(),
        )?;
    }
    let deadline = start + Duration::from_secs(30);
    loop {
        let out = command_stdout(Command::new(ids).args(["bans", "--json", "--config"]).arg(&scratch.config))?;
        let bans: serde_json::Value =
            serde_json::from_str(&out).with_context(|| format!("ids bans printed {out:?}"))?;
        let listed = bans["data"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|b| b["net"].as_str().is_some_and(|n| n == addr || n.strip_suffix("/32") == Some(addr)));
        if listed {
            return Ok(start.elapsed().as_secs_f64() * 1000.0);
        }
        ensure!(Instant::now() < deadline, "{addr} was not banned within 30 s");
        thread::sleep(Duration::from_millis(10));
    }
}

fn measure_outage(ids: &Path, broker: &mut Broker, scratch: &Scratch, outage_s: u64) -> anyhow::Result<Outage> {
    let auth_log = scratch.dir.join("outage-auth.log");
    fs::write(&auth_log, "")?;
    let logs = format!("[[logs]]\nkind = \"sshd\"\npath = {}\n", q(&auth_log));
    let agent = Agent::configure(scratch, broker, "outage", "", &logs)?;
    let mut collect = Collect::start(ids, broker, &agent.dir.join("collect"))?;
    note_others();
    let daemon = Daemon::start(ids, scratch)?;
    thread::sleep(Duration::from_secs(2));
    let mut ban_up_ms = Vec::new();
    for i in 1..=BAN_PROBES {
        ban_up_ms.push(time_ban(ids, scratch, &auth_log, &format!("10.251.0.{i}"))?);
        thread::sleep(Duration::from_millis(500));
    }
    eprintln!("bench: ban latency with the broker up: {ban_up_ms:?} ms");
    // Everything raised so far reached the collector before the outage starts.
    collect.wait_for(agent.alerts()?, "the alerts before the outage")?;

    eprintln!("bench: broker killed (kill -9); outage of {outage_s} s");
    broker.kill9();
    let killed = Instant::now();
    daemon.stop()?;
    prefill(&agent.state_db, N)?;
    let daemon = Daemon::start(ids, scratch)?;
    let mut backlog = 0;
    let mut ban_down_ms = Vec::new();
    for i in 1..=BAN_PROBES {
        // Spread the probes over the outage, the backlog full all along.
        let due = killed + Duration::from_secs(outage_s) * i as u32 / (BAN_PROBES as u32 + 1);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
        backlog = backlog.max(agent.backlog()?);
        ban_down_ms.push(time_ban(ids, scratch, &auth_log, &format!("10.251.1.{i}"))?);
    }
    eprintln!("bench: ban latency during the outage (backlog {backlog}): {ban_down_ms:?} ms");
    if let Some(wait) = (killed + Duration::from_secs(outage_s)).checked_duration_since(Instant::now()) {
        thread::sleep(wait);
    }
    let target = agent.alerts()?;
    let before = collect.count()?;
    broker.restart();
    let ready = Instant::now();
    eprintln!("bench: broker back after {:.0} s; draining {} alerts", killed.elapsed().as_secs_f64(), target - before);
    let (first, last) = collect.wait_for(target, "the drain")?;
    daemon.stop()?;
    let first = first.unwrap_or(last);
    Ok(Outage {
        outage_s,
        backlog,
        reconnect_s: first.duration_since(ready).as_secs_f64(),
        drain_s: last.duration_since(ready).as_secs_f64(),
        drained: target - before,
        ban_up_ms,
        ban_down_ms,
    })
}

pub(super) fn bench_fleet(root: &Path) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    ensure!(unsafe { libc::geteuid() } == 0, "the fleet bench runs the daemon (eBPF): run it as root");
    ensure!(
        Command::new(PYTHON).args(["-c", "import pika"]).output().is_ok_and(|o| o.status.success()),
        "{PYTHON} cannot import pika: `cargo xtask setup` installs python3-pika"
    );
    ensure!(
        Path::new("/usr/lib/rabbitmq/bin/rabbitmq-server").exists(),
        "rabbitmq-server is not installed: `cargo xtask setup` installs it"
    );
    let outage_s = env_number("IDS_BENCH_FLEET_OUTAGE_S", DEFAULT_OUTAGE_S)?;
    let n_peer = env_number("IDS_BENCH_FLEET_PEER_N", N_PEER as u64)? as usize;
    let ids = build_release(root)?;
    let machine = Machine::describe(&ids)?;
    let rabbit_version = fs::read_dir("/usr/lib/rabbitmq/lib")
        .ok()
        .and_then(|d| {
            d.flatten().find_map(|e| e.file_name().to_str()?.strip_prefix("rabbitmq_server-").map(String::from))
        })
        .unwrap_or_else(|| "unknown".into());
    let scratch = Scratch::create()?;
    eprintln!("bench: scratch directory {}", scratch.dir.display());
    let mut broker = Broker::start(&format!("bench-fleet-{}", std::process::id()), &["collector", HOST, "peer"]);

    let throughput = measure_throughput(&ids, &broker, &scratch)?;
    let peer = measure_peer(&broker, &scratch, &throughput.peer_source, throughput.first_prefilled, n_peer)?;
    let latency = measure_latency(&ids, &broker, &scratch)?;
    let outage = measure_outage(&ids, &mut broker, &scratch, outage_s)?;
    drop(broker);

    let mut s = String::new();
    let _ = writeln!(s, "\n## {} — fleet\n", utc_timestamp());
    let command = if outage_s == DEFAULT_OUTAGE_S {
        "cargo xtask bench fleet".to_string()
    } else {
        format!("IDS_BENCH_FLEET_OUTAGE_S={outage_s} cargo xtask bench fleet")
    };
    let _ = writeln!(
        s,
        "Command: `{command}` (release build, as root). Machine: {} ({} cores), kernel {}, load before {} / after {}. {}; RabbitMQ {rabbit_version} (plain process, loopback, data on the root disk); peer: Python {} with pika.\n",
        machine.cpu,
        machine.cores,
        machine.kernel,
        machine.load_before,
        load_average(),
        machine.ids_version,
        command_stdout(Command::new(PYTHON).arg("--version")).unwrap_or_default().trim_start_matches("Python "),
    );
    let ours = median(&throughput.rates);
    let theirs = median(&peer.rates);
    let ratio = ours / theirs;
    let _ = writeln!(s, "### End-to-end throughput, agent store → collector commit, with confirms\n");
    let _ = writeln!(
        s,
        "ids: {} alerts prefilled (daemon stopped, one transaction) into the agent's `alerts` table, shaped like `integrity` alerts on /etc files; clock from `ids run`'s start to the collector's SQLite holding all {} for the host (polled every {} ms). Peer: `fleet_peer.py` (in xtask/src/bench) publishing the first {} of the same rows from a copy of the same file, one by one (pika BlockingConnection, confirm_delivery, persistent, durable classic queue), a pika consumer committing each into its own SQLite table (WAL, synchronous FULL, as the collector) and acking after the commit; clock from the publisher's start to its consumer's table holding all. {REPS} repetitions each, fresh state each; medians, min–max in brackets.\n",
        thousands(N as u64),
        thousands(N as u64),
        POLL.as_millis(),
        thousands(peer.n as u64),
    );
    let spread = |v: &[f64]| {
        let (lo, hi) = v.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| (lo.min(x), hi.max(x)));
        format!("{} ({}–{})", thousands(median(v) as u64), thousands(lo as u64), thousands(hi as u64))
    };
    let _ = writeln!(
        s,
        "| side | alerts | alerts/s end to end | alerts/s after the first stored | seconds | CPU share of the elapsed time (1 core = 100 %) |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---|");
    let _ = writeln!(
        s,
        "| ids run → RabbitMQ quorum queue → ids collect | {} | {} | {} | {:.2} | {} |",
        thousands(N as u64),
        spread(&throughput.rates),
        spread(&throughput.steady),
        median(&throughput.elapsed),
        cpu_text(&throughput.cpu, &throughput.elapsed)
    );
    let _ = writeln!(
        s,
        "| DIDS-style pika publisher → classic queue → pika consumer | {} | {} | publisher alone: {} | {:.2} | {} |",
        thousands(peer.n as u64),
        spread(&peer.rates),
        spread(&peer.publish_rates),
        median(&peer.elapsed),
        cpu_text(&peer.cpu, &peer.elapsed)
    );
    let _ = writeln!(
        s,
        "\nThroughput {} alerts/s: target ≥ {} alerts/s {}. Ratio ours/peer (rates; the peer moved {} alerts, ours {}) **{ratio:.1}×**: target ≥ {TARGET_RATIO:.0}× {}.\n",
        thousands(ours as u64),
        thousands(TARGET_RATE as u64),
        if ours >= TARGET_RATE {
            "met".to_string()
        } else {
            format!("**not met** ({:.0} % of it)", ours / TARGET_RATE * 100.0)
        },
        thousands(peer.n as u64),
        thousands(N as u64),
        if ratio >= TARGET_RATIO { "met" } else { "**not met**" },
    );
    let _ = writeln!(
        s,
        "Taken apart (one extra run of {} alerts): the agent alone, publishing into the quorum queue with no consumer until its outbox was confirmed to the last row, {} alerts/s (from `ids run`'s start); the collector alone, started on the full queue, {} alerts/s (from its start, connect included).\n",
        thousands(N as u64),
        thousands(throughput.agent_alone as u64),
        thousands(throughput.collector_alone as u64),
    );
    let _ = writeln!(s, "### Latency, alert stored on the host → queryable at the collector\n");
    let _ = writeln!(
        s,
        "New files at {:.0}/s for {LATENCY_SECS} s in a directory the daemon watches (`file_contents`), one `integrity` alert each; per alert `received − time` from the collector's database ({} alerts; SQLite `julianday`, millisecond resolution): p50 **{:.1} ms**, p99 **{:.1} ms**, max {:.1} ms. Target p99 < {TARGET_P99_MS:.0} ms {}.\n",
        latency.rate,
        thousands(latency.alerts as u64),
        latency.p50_ms,
        latency.p99_ms,
        latency.max_ms,
        if latency.p99_ms < TARGET_P99_MS { "met" } else { "**not met**" },
    );
    let _ = writeln!(s, "### Backlog drain after a broker outage; detection during it\n");
    let up = median(&outage.ban_up_ms);
    let down = median(&outage.ban_down_ms);
    let _ = writeln!(
        s,
        "Broker killed (`kill -9`) for {} s (`IDS_BENCH_FLEET_OUTAGE_S`; the issue asks for 600). The backlog was prefilled, not raised live: daemon stopped right after the kill, {} rows inserted as in the throughput runs, daemon started again with the broker down; the outbox held {} unconfirmed alerts during the outage. After the restart (broker ready) the first alert was stored after {:.1} s (the agent's and the collector's reconnect backoff, 0.5 s doubling up to 10 s, ± 50 %), all {} after **{:.1} s** ({} alerts/s counted from the restart, {} alerts/s after the first).\n",
        outage.outage_s,
        thousands(N as u64),
        thousands(outage.backlog),
        outage.reconnect_s,
        thousands(outage.drained),
        outage.drain_s,
        thousands((outage.drained as f64 / outage.drain_s.max(1e-9)) as u64),
        thousands((outage.drained as f64 / (outage.drain_s - outage.reconnect_s).max(1e-9)) as u64),
    );
    let list = |v: &[f64]| v.iter().map(|x| format!("{x:.0}")).collect::<Vec<_>>().join(", ");
    let _ = writeln!(
        s,
        "Five failed sshd logins from one address (10.251/16, log lines only) → ban listed by `ids bans --json`, {BAN_PROBES} times each: broker up median **{up:.0} ms** ({}), during the outage with the backlog full median **{down:.0} ms** ({}). {}\n",
        list(&outage.ban_up_ms),
        list(&outage.ban_down_ms),
        if down <= up * 1.5 + 50.0 { "The outage did not slow detection." } else { "**The outage slowed detection.**" },
    );
    let mut others = OTHERS.lock().unwrap_or_else(|p| p.into_inner()).clone();
    others.sort_unstable();
    others.dedup();
    if !others.is_empty() {
        let _ = writeln!(
            s,
            "Other `ids` processes (pid {others:?}, tests run beside the bench, with brokers of their own) ran during this run and competed for the 2 cores.\n"
        );
    }
    append_to_benchmarks(&root.join("BENCHMARKS.md"), &s)?;
    print!("{s}");
    Ok(())
}
