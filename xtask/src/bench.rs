//! `cargo xtask bench <area>`: measures and appends a dated section to `BENCHMARKS.md`.
//!
//! Area `integrity` (module [`integrity`]) compares the integrity collectors with AIDE and
//! OpenSSL: full baseline time, detection latency, idle CPU and SHA-256 throughput.
//!
//! Area `sensor` (module [`sensor`]): the sensor beside empty programs on the same hooks and
//! auditd, per operation, per event in the daemon, and the capacity of the `file` signal.
//!
//! Area `sensor-vm` (module [`sensor_vm`]): the same workloads on the stock kernel's LSM and
//! fentry hooks in the VM, without and with the sensor in one boot.
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
use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
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
mod sensor;
mod sensor_vm;
mod server;
mod xdp;

/// How long to wait for another `ids` process to exit before a baseline round.
const OTHER_SENSOR_WAIT: Duration = Duration::from_secs(300);
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
const POLL_INTERVAL: Duration = Duration::from_millis(100);

const BENCHMARKS_HEADER: &str = "# Benchmarks\n\n\
Sections are appended by `cargo xtask bench <area>` (run as root), newest last. Each states the \
command, the machine and the repetitions; figures are medians over those repetitions. Timings \
depend on the machine and on whatever else it was running, so compare sections taken on the same \
machine.\n";

pub use sensor::guest_workloads;

pub fn run(root: &Path, area: &str) -> anyhow::Result<()> {
    match area {
        "sensor" => sensor::bench_sensor(root),
        "sensor-vm" => sensor_vm::bench_sensor_vm(root),
        "integrity" => integrity::bench_integrity(root),
        "server" => server::bench_server(root),
        "xdp" => xdp::bench_xdp(root),
        "detect" => detect::bench_detect(root),
        "fleet" => fleet::bench_fleet(root),
        "process" => process::bench_process(root),
        "console" => console::bench_console(root),
        integrity::PROBE_AREA => integrity::print_sha2_throughput(),
        other => bail!(
            "unknown bench area {other:?} (known: sensor, sensor-vm, integrity, server, xdp, detect, fleet, process, console)"
        ),
    }
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
    Ok(FileCounters { received: counter("received")?, lost: counter("lost")? })
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
