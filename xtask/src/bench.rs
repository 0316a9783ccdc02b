//! `cargo xtask bench <area>`: measures and appends a dated section to `BENCHMARKS.md`.
//!
//! Area `integrity` (module [`integrity`]) compares the integrity collectors with AIDE and
//! OpenSSL: full baseline time, detection latency, idle CPU and SHA-256 throughput.
//!
//! Area `sensor` builds `ids` in release mode, then in one run measures:
//!
//! 1. **Overhead**: three workloads, each timed with no daemon and with `ids run` attached, in
//!    alternating rounds (baseline, attached, baseline, ...; the daemon is started and stopped for
//!    every attached round). Reported: median ns/op of each side, their ratio and the overhead.
//!    - open/write/close of a small file in a directory the sensor does not watch;
//!    - fork+exec of `/bin/true` (`std::process::Command`, waited for);
//!    - TCP connect to a listener this bench opens on 127.0.0.1, accepted on the same thread and
//!      closed with RST, so no TIME_WAIT piles up.
//! 2. **Capacity** of the `file` signal: a generator issues 1-byte `write(2)` calls to a watched
//!    file at paced rates (busy-waiting against the monotonic clock), plus one unpaced step; after
//!    each step the daemon is given time to drain and the `file` counters of `ids status --json`
//!    give the received and lost deltas. The capacity is the highest rate with nothing lost.
//!
//! Area `console` (module [`console`]): the fleet console's answers over 100,000 stored alerts
//! beside the same SQL in the `sqlite3` shell.
//!
//! Area `fleet` (module [`fleet`]): agent → RabbitMQ → `ids collect` throughput with confirms
//! beside a DIDS-style Python/pika peer, stored → queryable latency, and the backlog drain and
//! detection latency around a broker outage.
//!
//! Needs root (the daemon loads eBPF programs). Everything the bench creates lives in a scratch
//! directory under /var/tmp that is removed at the end; network traffic stays on 127.0.0.1.
use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail, ensure};

mod console;
mod detect;
mod fleet;
mod integrity;
mod process;
mod server;
mod xdp;

/// Baseline rounds, and as many attached rounds.
const ROUNDS: usize = 7;
const FILE_ITERATIONS: u64 = 200_000;
const EXEC_ITERATIONS: u64 = 2_000;
const CONNECT_ITERATIONS: u64 = 20_000;

/// Paced steps of the capacity generator, in events per second; an unpaced step follows.
const CAPACITY_RATES: [u64; 5] = [50_000, 100_000, 200_000, 400_000, 800_000];
/// Length of each capacity step.
const CAPACITY_STEP: Duration = Duration::from_millis(1500);
/// Times the whole ladder of capacity steps runs.
const CAPACITY_REPETITIONS: usize = 3;
const CAPACITY_TARGET: f64 = 200_000.0;

/// Rounds that may be thrown away because another `ids` process ran during them.
const MAX_DISCARDED_ROUNDS: usize = 7;
/// How long to wait for another `ids` process to exit before a baseline round.
const OTHER_SENSOR_WAIT: Duration = Duration::from_secs(300);
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Counters unchanged for this long count as drained even if short of what was generated.
const DRAIN_QUIET: Duration = Duration::from_secs(1);
const POLL_INTERVAL: Duration = Duration::from_millis(100);

const BENCHMARKS_HEADER: &str = "# Benchmarks\n\n\
Sections are appended by `cargo xtask bench <area>` (run as root), newest last. Each states the \
command, the machine and the repetitions; figures are medians over those repetitions. Timings \
depend on the machine and on whatever else it was running, so compare sections taken on the same \
machine.\n";

pub fn run(root: &Path, area: &str) -> anyhow::Result<()> {
    match area {
        "sensor" => bench_sensor(root),
        "integrity" => integrity::bench_integrity(root),
        "server" => server::bench_server(root),
        "xdp" => xdp::bench_xdp(root),
        "detect" => detect::bench_detect(root),
        "fleet" => fleet::bench_fleet(root),
        "process" => process::bench_process(root),
        "console" => console::bench_console(root),
        integrity::PROBE_AREA => integrity::print_sha2_throughput(),
        other => bail!(
            "unknown bench area {other:?} (known: sensor, integrity, server, xdp, detect, fleet, process, console)"
        ),
    }
}

fn bench_sensor(root: &Path) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    ensure!(
        unsafe { libc::geteuid() } == 0,
        "the sensor bench needs root (the daemon loads eBPF programs): run `sudo -E cargo xtask bench sensor`"
    );
    let ids = build_release(root)?;
    wait_for_no_other_sensor()?;
    let machine = Machine::describe(&ids)?;
    let scratch = Scratch::create()?;
    eprintln!("bench: scratch directory {}", scratch.dir.display());

    let overhead = measure_overhead(&ids, &scratch)?;
    let capacity = measure_file_capacity(&ids, &scratch)?;
    let load_after = load_average();

    let section = render_section(&machine, &load_after, &overhead, &capacity);
    append_to_benchmarks(&root.join("BENCHMARKS.md"), &section)?;
    print!("{section}");
    eprintln!("bench: appended to {}", root.join("BENCHMARKS.md").display());
    Ok(())
}

/// `cargo build --release -p ids-user`; returns the path of the `ids` binary.
fn build_release(root: &Path) -> anyhow::Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("bench: cargo build --release -p ids-user");
    let status = Command::new(&cargo)
        .current_dir(root)
        .args(["build", "--release", "-p", "ids-user"])
        .status()
        .with_context(|| format!("running {}", Path::new(&cargo).display()))?;
    ensure!(status.success(), "cargo build --release -p ids-user failed ({status})");
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), |dir| root.join(dir));
    let ids = target.join("release").join("ids");
    ensure!(ids.is_file(), "the build succeeded but {} is missing", ids.display());
    Ok(ids)
}

/// Pids of running `ids` processes other than `own` (the bench's daemon).
fn other_sensors(own: Option<u32>) -> anyhow::Result<Vec<u32>> {
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").context("listing /proc")?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        if Some(pid) != own && fs::read_to_string(entry.path().join("comm")).is_ok_and(|c| c.trim_end() == "ids") {
            found.push(pid);
        }
    }
    Ok(found)
}

/// The baseline must run with no sensor at all and the attached side with the bench's only, so
/// this waits (bounded) for any other `ids` process, say a test run, to go away.
fn wait_for_no_other_sensor() -> anyhow::Result<()> {
    let deadline = Instant::now() + OTHER_SENSOR_WAIT;
    let mut announced = false;
    loop {
        let found = other_sensors(None)?;
        if found.is_empty() {
            return Ok(());
        }
        let pids: Vec<String> = found.iter().map(u32::to_string).collect();
        ensure!(
            Instant::now() < deadline,
            "another `ids` process (pid {}) kept running for {} s; stop it, the baseline must run without a sensor",
            pids.join(", "),
            OTHER_SENSOR_WAIT.as_secs()
        );
        if !announced {
            eprintln!("bench: waiting for another `ids` process (pid {}) to exit", pids.join(", "));
            announced = true;
        }
        thread::sleep(Duration::from_secs(1));
    }
}

/// Where the figures were taken.
struct Machine {
    kernel: String,
    cpu: String,
    cores: usize,
    load_before: String,
    ids_version: String,
}

impl Machine {
    fn describe(ids: &Path) -> anyhow::Result<Self> {
        let kernel = command_stdout(Command::new("uname").arg("-r"))?;
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").context("reading /proc/cpuinfo")?;
        let cpu = cpuinfo
            .lines()
            .find_map(|line| line.strip_prefix("model name").and_then(|rest| rest.split_once(':')))
            .map_or_else(|| "unknown CPU".to_string(), |(_, model)| model.trim().to_string());
        let cores = cpuinfo.lines().filter(|line| line.starts_with("processor")).count();
        let ids_version = command_stdout(Command::new(ids).arg("--version"))?;
        Ok(Self { kernel, cpu, cores, load_before: load_average(), ids_version })
    }
}

fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn command_stdout(command: &mut Command) -> anyhow::Result<String> {
    let output = command.output().with_context(|| format!("running {command:?}"))?;
    ensure!(
        output.status.success(),
        "{command:?} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// The bench's scratch directory under /var/tmp and the daemon configuration in it; removed on drop.
struct Scratch {
    dir: PathBuf,
    config: PathBuf,
    daemon_log: PathBuf,
    /// Workload (a) writes here; the sensor does not watch it.
    unwatched: PathBuf,
    /// The capacity generator writes this file; the sensor watches its directory.
    watched_file: PathBuf,
}

impl Scratch {
    fn create() -> anyhow::Result<Self> {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let dir = PathBuf::from(format!("/var/tmp/ids-bench-{}-{nanos}", std::process::id()));
        let watched = dir.join("watched");
        let unwatched = dir.join("unwatched");
        for d in [&watched, &unwatched] {
            fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        let watched_file = watched.join("target");
        File::create(&watched_file).with_context(|| format!("creating {}", watched_file.display()))?;
        let config = dir.join("ids.toml");
        let toml_string = |p: &Path| serde_json::to_string(&p.display().to_string()).expect("a string serializes");
        let mut scratch = Self { dir, config, daemon_log: PathBuf::new(), unwatched, watched_file };
        scratch.daemon_log = scratch.dir.join("daemon.log");
        let text = format!(
            "watch = [{}]\nevents_log = {}\nstate_dir = {}\n{}",
            toml_string(&watched),
            toml_string(&scratch.dir.join("events.jsonl")),
            toml_string(&scratch.dir.join("state")),
            scratch.xdp_keys(),
        );
        fs::write(&scratch.config, text).with_context(|| format!("writing {}", scratch.config.display()))?;
        Ok(scratch)
    }

    /// Top-level `[xdp]` keys for a bench daemon: its XDP program on `lo` only, pinned in a bpffs
    /// directory of its own (removed by `Daemon` when it stops), so a bench neither touches the
    /// host's interfaces nor the pins and bans of an installed `ids`.
    fn xdp_keys(&self) -> String {
        let name = self.dir.file_name().map_or_else(|| "ids-bench".into(), |n| n.to_string_lossy().into_owned());
        format!("xdp.interfaces = [\"lo\"]\nxdp.pin_dir = \"/sys/fs/bpf/{name}\"\n")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            eprintln!("bench: could not remove {}: {e}", self.dir.display());
        }
    }
}

/// A running `ids run --config ...`; stopped (SIGTERM, then SIGKILL) on drop if still running.
struct Daemon {
    child: Child,
    ids: PathBuf,
    config: PathBuf,
    log: PathBuf,
}

impl Daemon {
    /// Starts the daemon and waits until `ids status` answers.
    fn start(ids: &Path, scratch: &Scratch) -> anyhow::Result<Self> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&scratch.daemon_log)
            .with_context(|| format!("opening {}", scratch.daemon_log.display()))?;
        let child = Command::new(ids)
            .arg("run")
            .arg("--config")
            .arg(&scratch.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {} run", ids.display()))?;
        let mut daemon =
            Self { child, ids: ids.into(), config: scratch.config.clone(), log: scratch.daemon_log.clone() };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = daemon.child.try_wait().context("waiting for ids run")? {
                bail!("ids run exited during startup ({status}); its log ends:\n{}", daemon.log_tail());
            }
            match daemon.status() {
                Ok(status) => {
                    status_file_counters(&status)?;
                    return Ok(daemon);
                }
                Err(e) if Instant::now() >= deadline => {
                    return Err(e.context(format!(
                        "ids status did not answer within {} s; the daemon log ends:\n{}",
                        READY_TIMEOUT.as_secs(),
                        daemon.log_tail()
                    )));
                }
                Err(_) => thread::sleep(POLL_INTERVAL),
            }
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `ids status --json`, parsed.
    fn status(&self) -> anyhow::Result<serde_json::Value> {
        let text =
            command_stdout(Command::new(&self.ids).arg("status").arg("--config").arg(&self.config).arg("--json"))?;
        serde_json::from_str(&text).with_context(|| format!("ids status --json printed bad JSON: {text:?}"))
    }

    /// Sends SIGTERM and requires exit status 0 within `STOP_TIMEOUT`.
    fn stop(mut self) -> anyhow::Result<()> {
        let status = self.terminate()?;
        ensure!(status.success(), "ids run exited with {status} after SIGTERM; its log ends:\n{}", self.log_tail());
        Ok(())
    }

    fn terminate(&mut self) -> anyhow::Result<ExitStatus> {
        if let Some(status) = self.child.try_wait()? {
            return Ok(status);
        }
        // SAFETY: signals our own child, which has not been reaped (try_wait returned None).
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            thread::sleep(Duration::from_millis(20));
        }
        self.child.kill().context("killing ids run")?;
        self.child.wait().context("waiting for ids run")?;
        bail!("ids run did not exit within {} s of SIGTERM and was killed", STOP_TIMEOUT.as_secs())
    }

    fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.terminate();
        }
        // The XDP attachment and maps outlive the daemon by design: remove this bench's.
        let detached = Command::new(&self.ids)
            .args(["xdp", "detach", "--config"])
            .arg(&self.config)
            .stdout(Stdio::null())
            .status();
        if !detached.is_ok_and(|s| s.success()) {
            eprintln!("bench: `ids xdp detach --config {}` failed; remove its pin_dir by hand", self.config.display());
        }
    }
}

/// Counters of the `file` signal in `ids status --json`.
#[derive(Debug, Clone, Copy, Default)]
struct FileCounters {
    received: u64,
    lost: u64,
    /// Breakdown of `lost`, when the daemon reports it.
    lost_in_kernel: Option<u64>,
    dropped: Option<u64>,
}

impl FileCounters {
    fn total(&self) -> u64 {
        self.received + self.lost
    }
}

fn status_file_counters(status: &serde_json::Value) -> anyhow::Result<FileCounters> {
    let file = status["signals"]
        .as_array()
        .and_then(|signals| signals.iter().find(|s| s["signal"] == "file"))
        .with_context(|| format!("ids status --json has no \"file\" entry in \"signals\": {status}"))?;
    let counter = |key: &str| {
        file[key].as_u64().with_context(|| format!("ids status --json: signal file has no counter {key:?}: {file}"))
    };
    Ok(FileCounters {
        received: counter("received")?,
        lost: counter("lost")?,
        lost_in_kernel: file["lost_in_kernel"].as_u64(),
        dropped: file["dropped"].as_u64(),
    })
}

/// `signal: hook` for every signal in `ids status --json`.
fn status_hooks(status: &serde_json::Value) -> Vec<String> {
    status["signals"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| format!("{} {}", s["signal"].as_str().unwrap_or("?"), s["hook"].as_str().unwrap_or("?")))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Overhead

#[derive(Debug, Clone, Copy)]
enum Workload {
    FileOpenWriteClose,
    ForkExec,
    LoopbackConnect,
}

impl Workload {
    const ALL: [Self; 3] = [Self::FileOpenWriteClose, Self::ForkExec, Self::LoopbackConnect];

    fn label(self) -> &'static str {
        match self {
            Self::FileOpenWriteClose => "open/write/close, unwatched dir",
            Self::ForkExec => "fork+exec /bin/true",
            Self::LoopbackConnect => "TCP connect to 127.0.0.1",
        }
    }

    fn iterations(self) -> u64 {
        match self {
            Self::FileOpenWriteClose => FILE_ITERATIONS,
            Self::ForkExec => EXEC_ITERATIONS,
            Self::LoopbackConnect => CONNECT_ITERATIONS,
        }
    }

    /// Largest acceptable slowdown, as a fraction.
    fn target_overhead(self) -> f64 {
        match self {
            Self::FileOpenWriteClose => 0.05,
            Self::ForkExec | Self::LoopbackConnect => 0.10,
        }
    }
}

/// What the workloads need: the unwatched file and the loopback listener.
struct Workloads {
    unwatched_file: PathBuf,
    listener: TcpListener,
}

impl Workloads {
    /// Runs `workload` for `iterations` and returns nanoseconds per operation.
    fn ns_per_op(&self, workload: Workload, iterations: u64) -> anyhow::Result<f64> {
        let elapsed = match workload {
            Workload::FileOpenWriteClose => time_open_write_close(&self.unwatched_file, iterations)?,
            Workload::ForkExec => time_fork_exec_true(iterations)?,
            Workload::LoopbackConnect => time_loopback_connect(&self.listener, iterations)?,
        };
        Ok(elapsed.as_nanos() as f64 / iterations as f64)
    }
}

fn time_open_write_close(path: &Path, iterations: u64) -> anyhow::Result<Duration> {
    let start = Instant::now();
    for _ in 0..iterations {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        file.write_all(b"ids bench\n").with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(start.elapsed())
}

fn time_fork_exec_true(iterations: u64) -> anyhow::Result<Duration> {
    let start = Instant::now();
    for _ in 0..iterations {
        let status = Command::new("/bin/true")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("running /bin/true")?;
        ensure!(status.success(), "/bin/true failed ({status})");
    }
    Ok(start.elapsed())
}

/// Each iteration connects, accepts the connection on the same thread (no cross-CPU wake-up, and
/// the accept queue never fills), then closes both ends.
fn time_loopback_connect(listener: &TcpListener, iterations: u64) -> anyhow::Result<Duration> {
    let addr = listener.local_addr()?;
    let start = Instant::now();
    for _ in 0..iterations {
        let client = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
        let (server, _) = listener.accept().with_context(|| format!("accepting on {addr}"))?;
        close_with_reset(&client)?;
        drop(client);
        drop(server);
    }
    Ok(start.elapsed())
}

fn listen_on_loopback() -> anyhow::Result<TcpListener> {
    TcpListener::bind("127.0.0.1:0").context("listening on 127.0.0.1")
}

/// Sets SO_LINGER to zero so that dropping the stream sends RST and leaves no TIME_WAIT socket
/// (hundreds of thousands of connects would otherwise exhaust the ephemeral ports).
fn close_with_reset(stream: &TcpStream) -> anyhow::Result<()> {
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: valid socket descriptor, pointer and length of a `linger`.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    ensure!(rc == 0, "setsockopt(SO_LINGER): {}", std::io::Error::last_os_error());
    Ok(())
}

/// Median ns/op of one workload, without and with the sensor.
struct OverheadRow {
    workload: Workload,
    baseline: Vec<f64>,
    attached: Vec<f64>,
}

impl OverheadRow {
    fn ratio(&self) -> f64 {
        median(&self.attached) / median(&self.baseline)
    }
}

struct Overhead {
    rows: Vec<OverheadRow>,
    /// Rounds thrown away because another `ids` process ran during them.
    discarded: usize,
}

fn measure_overhead(ids: &Path, scratch: &Scratch) -> anyhow::Result<Overhead> {
    let workloads = Workloads { unwatched_file: scratch.unwatched.join("small"), listener: listen_on_loopback()? };
    let mut rows: Vec<OverheadRow> =
        Workload::ALL.iter().map(|&workload| OverheadRow { workload, baseline: vec![], attached: vec![] }).collect();
    eprintln!("bench: overhead warm-up");
    for workload in Workload::ALL {
        workloads.ns_per_op(workload, workload.iterations() / 10)?;
    }
    let mut discarded = 0;
    while rows[0].baseline.len() < ROUNDS {
        wait_for_no_other_sensor()?;
        let baseline = time_each_workload(&workloads)?;
        let mut intruders = other_sensors(None)?;
        let daemon = Daemon::start(ids, scratch)?;
        let attached = time_each_workload(&workloads)?;
        intruders.extend(other_sensors(Some(daemon.pid()))?);
        daemon.stop()?;
        if !intruders.is_empty() {
            discarded += 1;
            ensure!(discarded <= MAX_DISCARDED_ROUNDS, "other `ids` processes spoiled {discarded} rounds; giving up");
            eprintln!("bench: overhead round discarded: another `ids` process (pid {intruders:?}) ran during it");
            continue;
        }
        for ((row, b), a) in rows.iter_mut().zip(&baseline).zip(&attached) {
            row.baseline.push(*b);
            row.attached.push(*a);
        }
        let shown: Vec<String> = baseline.iter().zip(&attached).map(|(b, a)| format!("{b:.0}/{a:.0}")).collect();
        eprintln!(
            "bench: overhead round {}/{ROUNDS} ns/op baseline/attached: {}",
            rows[0].baseline.len(),
            shown.join(", ")
        );
    }
    Ok(Overhead { rows, discarded })
}

/// ns/op of every workload in `Workload::ALL` order, one full run each.
fn time_each_workload(workloads: &Workloads) -> anyhow::Result<Vec<f64>> {
    Workload::ALL.iter().map(|&w| workloads.ns_per_op(w, w.iterations())).collect()
}

// ---------------------------------------------------------------------------------------------
// Capacity

/// One run of one capacity step.
#[derive(Debug, Clone, Copy)]
struct StepRun {
    generated: u64,
    elapsed: Duration,
    delta: FileCounters,
    /// The counters stopped moving before `DRAIN_TIMEOUT`.
    settled: bool,
}

impl StepRun {
    fn rate(&self) -> f64 {
        self.generated as f64 / self.elapsed.as_secs_f64()
    }

    fn accounted_exactly(&self) -> bool {
        self.generated.checked_sub(self.delta.received) == Some(self.delta.lost)
    }
}

/// All runs of one step: `rate` is the paced target, `None` for the unpaced step.
struct CapacityStep {
    rate: Option<u64>,
    runs: Vec<StepRun>,
}

impl CapacityStep {
    fn lossless(&self) -> bool {
        self.runs.iter().all(|r| r.delta.lost == 0)
    }

    /// Median events per second actually generated.
    fn achieved(&self) -> f64 {
        median(&self.runs.iter().map(StepRun::rate).collect::<Vec<_>>())
    }

    /// Unpaced, or paced but the generator could not keep up (more than 5 % short).
    fn generator_limited(&self) -> bool {
        self.rate.is_none_or(|rate| self.achieved() < 0.95 * rate as f64)
    }
}

struct Capacity {
    steps: Vec<CapacityStep>,
    hooks: Vec<String>,
    /// Other `ids` processes seen between steps (they compete for the CPU).
    others_seen: Vec<u32>,
}

fn measure_file_capacity(ids: &Path, scratch: &Scratch) -> anyhow::Result<Capacity> {
    wait_for_no_other_sensor()?;
    let daemon = Daemon::start(ids, scratch)?;
    let mut others_seen = Vec::new();
    let hooks = status_hooks(&daemon.status()?);
    let mut file = OpenOptions::new()
        .append(true)
        .open(&scratch.watched_file)
        .with_context(|| format!("opening {}", scratch.watched_file.display()))?;
    // The open above is a file event too; let it through before the first step.
    let (mut counters, _) = wait_until_drained(&daemon, None)?;

    let rates: Vec<Option<u64>> = CAPACITY_RATES.iter().copied().map(Some).chain([None]).collect();
    let mut steps: Vec<CapacityStep> = rates.iter().map(|&rate| CapacityStep { rate, runs: vec![] }).collect();
    for repetition in 1..=CAPACITY_REPETITIONS {
        for step in &mut steps {
            let (generated, elapsed) = generate_one_byte_writes(&mut file, step.rate, CAPACITY_STEP)
                .with_context(|| format!("writing {}", scratch.watched_file.display()))?;
            let (after, settled) = wait_until_drained(&daemon, Some(counters.total() + generated))?;
            let run = StepRun { generated, elapsed, delta: counters_delta(&counters, &after), settled };
            counters = after;
            others_seen.extend(other_sensors(Some(daemon.pid()))?);
            eprintln!(
                "bench: capacity {repetition}/{CAPACITY_REPETITIONS} {}: generated {} at {:.0}/s, received {}, lost {}",
                step.rate.map_or("unpaced".into(), |r| format!("{r}/s")),
                run.generated,
                run.rate(),
                run.delta.received,
                run.delta.lost,
            );
            step.runs.push(run);
        }
    }
    drop(file);
    daemon.stop()?;
    others_seen.sort_unstable();
    others_seen.dedup();
    Ok(Capacity { steps, hooks, others_seen })
}

/// Issues 1-byte `write(2)` calls for `duration`: at `rate` per second, each call busy-waiting
/// for its due time, or back to back when `rate` is `None`. A paced step that falls behind still
/// issues all its calls, so it lasts longer. Returns the calls made and the time taken.
fn generate_one_byte_writes(file: &mut File, rate: Option<u64>, duration: Duration) -> anyhow::Result<(u64, Duration)> {
    let start = Instant::now();
    let mut generated = 0u64;
    match rate {
        Some(rate) => {
            let count = rate * duration.as_millis() as u64 / 1000;
            for i in 0..count {
                let due = start + Duration::from_nanos(i * 1_000_000_000 / rate);
                while Instant::now() < due {
                    std::hint::spin_loop();
                }
                write_one_byte(file)?;
                generated += 1;
            }
        }
        None => {
            while start.elapsed() < duration {
                for _ in 0..256 {
                    write_one_byte(file)?;
                    generated += 1;
                }
            }
        }
    }
    Ok((generated, start.elapsed()))
}

fn write_one_byte(file: &mut File) -> anyhow::Result<()> {
    let written = file.write(b"x")?;
    ensure!(written == 1, "write(2) wrote {written} bytes instead of 1");
    Ok(())
}

/// Polls `ids status` until the `file` counters stop moving: received + lost has reached
/// `expected` (when given) and did not change between two polls, or did not change for
/// `DRAIN_QUIET`. Gives up after `DRAIN_TIMEOUT`, returning the last counters and `false`.
fn wait_until_drained(daemon: &Daemon, expected: Option<u64>) -> anyhow::Result<(FileCounters, bool)> {
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    let mut last = status_file_counters(&daemon.status()?)?;
    let mut last_change = Instant::now();
    loop {
        thread::sleep(POLL_INTERVAL);
        let now = status_file_counters(&daemon.status()?)?;
        let moved = now.total() != last.total();
        if moved {
            last_change = Instant::now();
        }
        let reached = expected.is_none_or(|e| now.total() >= e);
        if (!moved && reached) || last_change.elapsed() >= DRAIN_QUIET {
            return Ok((now, true));
        }
        if Instant::now() >= deadline {
            return Ok((now, false));
        }
        last = now;
    }
}

fn counters_delta(before: &FileCounters, after: &FileCounters) -> FileCounters {
    let optional = |a: Option<u64>, b: Option<u64>| Some(a?.saturating_sub(b?));
    FileCounters {
        received: after.received.saturating_sub(before.received),
        lost: after.lost.saturating_sub(before.lost),
        lost_in_kernel: optional(after.lost_in_kernel, before.lost_in_kernel),
        dropped: optional(after.dropped, before.dropped),
    }
}

// ---------------------------------------------------------------------------------------------
// Report

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

fn median_u64(values: impl Iterator<Item = u64>) -> u64 {
    let values: Vec<f64> = values.map(|v| v as f64).collect();
    median(&values).round() as u64
}

/// 1234567 → "1,234,567".
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn render_section(machine: &Machine, load_after: &str, overhead: &Overhead, capacity: &Capacity) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "\n## {} — sensor\n", utc_timestamp());
    let _ = writeln!(s, "- Command: `cargo xtask bench sensor` (release build, as root)");
    let _ = writeln!(
        s,
        "- Machine: Linux {}, {}, {} cores; load average {} before, {} after",
        machine.kernel, machine.cpu, machine.cores, machine.load_before, load_after
    );
    let _ = writeln!(s, "- Sensor: {}; hooks: {}", machine.ids_version, capacity.hooks.join(", "));
    let _ = writeln!(s, "- Peer tool: none; there is no peer tool for this area, so no comparison is made.");

    let _ = writeln!(s, "\n### Overhead, sensor attached vs not\n");
    let _ = writeln!(
        s,
        "{ROUNDS} baseline rounds (no daemon) alternating with {ROUNDS} attached rounds (`ids run` started \
         for the round); per workload the median ns/op of each side, min–max in brackets. \
         Ratio = attached / baseline.{}\n",
        match overhead.discarded {
            0 => String::new(),
            1 => " 1 further round was discarded because another `ids` process ran during it.".to_string(),
            n => format!(" {n} further rounds were discarded because another `ids` process ran during them."),
        }
    );
    let _ = writeln!(s, "| workload | ops per round | baseline ns/op | attached ns/op | ratio | overhead | target | |");
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---|");
    for row in &overhead.rows {
        let spread = |v: &[f64]| {
            let (lo, hi) = v.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| (lo.min(x), hi.max(x)));
            format!("{:.0} ({lo:.0}–{hi:.0})", median(v))
        };
        let overhead = row.ratio() - 1.0;
        let target = row.workload.target_overhead();
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {:.3} | {:+.1} % | ≤ {:.0} % | {} |",
            row.workload.label(),
            thousands(row.workload.iterations()),
            spread(&row.baseline),
            spread(&row.attached),
            row.ratio(),
            overhead * 100.0,
            target * 100.0,
            if overhead <= target { "met" } else { "**not met**" },
        );
    }

    let _ = writeln!(s, "\n### Capacity of the `file` signal\n");
    let _ = writeln!(
        s,
        "1-byte `write(2)` calls to a watched file, each step {:.1} s, paced by busy-waiting on the \
         monotonic clock, then one unpaced step; the ladder ran {CAPACITY_REPETITIONS} times. After each \
         step the bench polled `ids status --json` until the `file` counters stopped moving, then took \
         the received and lost deltas. Figures are medians over the {CAPACITY_REPETITIONS} runs; lost \
         shows the largest run in brackets; the last column counts the runs where generated − \
         received == lost exactly.\n",
        CAPACITY_STEP.as_secs_f64()
    );
    let breakdown = capacity.steps.iter().flat_map(|st| &st.runs).all(|r| r.delta.lost_in_kernel.is_some());
    let _ = write!(s, "| target events/s | achieved events/s | generated | received | lost (max) |");
    let _ = writeln!(s, "{} generated − received == lost |", if breakdown { " in kernel / dropped |" } else { "" });
    let _ = writeln!(s, "|---:|---:|---:|---:|---:|{}---|", if breakdown { "---:|" } else { "" });
    for step in &capacity.steps {
        let runs = &step.runs;
        let med = |f: fn(&StepRun) -> u64| thousands(median_u64(runs.iter().map(f)));
        let max_lost = runs.iter().map(|r| r.delta.lost).max().unwrap_or(0);
        let fell_behind = if step.rate.is_some() && step.generator_limited() { " (generator fell behind)" } else { "" };
        let _ = write!(
            s,
            "| {} | {}{fell_behind} | {} | {} | {} ({}) |",
            step.rate.map_or("unpaced".into(), thousands),
            thousands(step.achieved().round() as u64),
            med(|r| r.generated),
            med(|r| r.delta.received),
            med(|r| r.delta.lost),
            thousands(max_lost),
        );
        if breakdown {
            let _ = write!(
                s,
                " {} / {} |",
                med(|r| r.delta.lost_in_kernel.unwrap_or(0)),
                med(|r| r.delta.dropped.unwrap_or(0))
            );
        }
        let exact = runs.iter().filter(|r| r.accounted_exactly()).count();
        let unsettled = runs.iter().filter(|r| !r.settled).count();
        let _ = writeln!(
            s,
            " {exact}/{} {}{} |",
            runs.len(),
            if exact == runs.len() { "yes" } else { "**no**" },
            if unsettled > 0 {
                format!(" ({unsettled} did not settle in {} s)", DRAIN_TIMEOUT.as_secs())
            } else {
                String::new()
            },
        );
    }
    if !capacity.others_seen.is_empty() {
        let _ = writeln!(
            s,
            "\nOther `ids` processes (pid {:?}) ran during these steps and competed for the CPU.",
            capacity.others_seen
        );
    }
    let _ = writeln!(s);
    let _ = writeln!(s, "{}", capacity_verdict(capacity));
    s
}

/// The capacity line: the highest median achieved rate among steps with nothing lost in any run.
/// When no step lost anything the true capacity lies above what the generator reached, so the
/// figure is a lower bound.
fn capacity_verdict(capacity: &Capacity) -> String {
    let target = thousands(CAPACITY_TARGET as u64);
    let best =
        capacity.steps.iter().filter(|step| step.lossless()).max_by(|a, b| a.achieved().total_cmp(&b.achieved()));
    let Some(best) = best else {
        return format!(
            "Capacity: every step lost events, so below the lowest step ({} events/s); target ≥ {target} events/s **not met**.",
            thousands(CAPACITY_RATES[0]),
        );
    };
    let value = best.achieved();
    let all_lossless = capacity.steps.iter().all(CapacityStep::lossless);
    let (at_least, note) = if all_lossless && best.generator_limited() {
        ("at least ", " (no step lost anything; this is as fast as the generator could write here)")
    } else {
        ("", "")
    };
    format!(
        "Capacity: {at_least}**{} events/s** with zero lost{note}; ratio to the ≥ {target} events/s target {:.2}, {}.",
        thousands(value.round() as u64),
        value / CAPACITY_TARGET,
        if value >= CAPACITY_TARGET { "met" } else { "**not met**" }
    )
}

fn append_to_benchmarks(path: &Path, section: &str) -> anyhow::Result<()> {
    let mut text = if path.exists() { String::new() } else { BENCHMARKS_HEADER.to_string() };
    text.push_str(section);
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .with_context(|| format!("appending to {}", path.display()))
}

/// "YYYY-MM-DD HH:MM UTC" from the system clock.
fn utc_timestamp() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = ids_tests::civil_date(days as i64);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02} UTC", rest / 3600, rest % 3600 / 60)
}
