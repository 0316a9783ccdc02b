//! Area `sensor`: what the sensor costs the host, beside what any program on the same hooks costs
//! and what auditd costs, all in one run.
//!
//! 1. **Overhead**: six workloads, each timed under four columns in alternating rounds (every
//!    round runs every column in turn, each column starting and stopping its own process):
//!    - *none*: nothing attached;
//!    - *floor*: `ids sensor-floor`, empty eBPF programs on every tracepoint `ids run` attaches to
//!      on this kernel (the same table, so the floor follows the sensor's hooks);
//!    - *auditd*: auditd with one `-w PATH -p wa` rule per path of the sensor's watch set;
//!    - *ids*: `ids run` with the default configuration (its watch set plus the bench's watched
//!      directory; state, events log and pins in the scratch directory), timed once its first
//!      integrity scan is done.
//!
//!    Workloads: open/write/close in an unwatched directory; 1-byte `pwrite(2)` to a watched file;
//!    fork+exec of `/bin/true`; TCP connect+accept+close on 127.0.0.1; UDP `sendto` + `recv` on
//!    127.0.0.1; `getpid(2)`. Reported: median ns/op and min–max per column, ids / floor and
//!    ids / auditd.
//! 2. **Daemon CPU per event**: bursts of exec, file and connect events against one `ids run`;
//!    utime + stime of the daemon from `/proc/PID/stat` over the burst and its drain, divided by
//!    the events it wrote.
//! 3. **Capacity** of the `file` signal: one writer thread per core, 1-byte writes to watched files
//!    at a rising paced rate; the first step that loses a record, and the last that did not.
//!
//! Needs root. Everything lives in a scratch directory under /var/tmp, removed at the end; auditd
//! runs with its own configuration and log there, and its rules are removed when its round ends.
use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead as _, BufReader};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};

use super::{
    Daemon, Machine, Scratch, append_to_benchmarks, build_release, command_stdout, load_average, median, other_sensors,
    status_file_counters, thousands, utc_timestamp, wait_for_no_other_sensor,
};

const ROUNDS: usize = 7;
/// `IDS_BENCH_ROUNDS` overrides `ROUNDS` for a quick look; a recorded run uses the default.
fn rounds() -> usize {
    std::env::var("IDS_BENCH_ROUNDS").ok().and_then(|r| r.parse().ok()).filter(|&r| r > 0).unwrap_or(ROUNDS)
}
/// Rounds that may be thrown away because another `ids` process ran during them.
const MAX_DISCARDED_ROUNDS: usize = 7;
/// The targets on a kernel where only tracepoints load.
const TARGET_FLOOR_RATIO: f64 = 1.15;
const TARGET_CPU_PER_EVENT_US: f64 = 2.0;
const READY_TIMEOUT: Duration = Duration::from_secs(120);
const POLL: Duration = Duration::from_millis(100);
/// After `ids run` is ready and its first scan done: let the tail of its start-up work end.
const SETTLE: Duration = Duration::from_millis(500);

/// Paced total rates of the capacity ladder (split over the writer threads); an unpaced step follows.
const CAPACITY_RATES: [u64; 7] = [100_000, 200_000, 300_000, 400_000, 500_000, 700_000, 900_000];
const CAPACITY_STEP: Duration = Duration::from_millis(1500);
const CAPACITY_REPETITIONS: usize = 2;
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
const DRAIN_QUIET: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Column {
    None,
    Floor,
    Auditd,
    Ids,
}

impl Column {
    fn label(self) -> &'static str {
        match self {
            Self::None => "no sensor",
            Self::Floor => "floor (empty programs, same hooks)",
            Self::Auditd => "auditd (watch rules)",
            Self::Ids => "ids run (default config)",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Workload {
    OpenWriteClose,
    WatchedWrite,
    ForkExec,
    TcpConnect,
    UdpSendto,
    Getpid,
}

impl Workload {
    pub(super) const ALL: [Self; 6] =
        [Self::OpenWriteClose, Self::WatchedWrite, Self::ForkExec, Self::TcpConnect, Self::UdpSendto, Self::Getpid];

    pub(super) fn label(self) -> &'static str {
        match self {
            Self::OpenWriteClose => "open/write/close, unwatched dir",
            Self::WatchedWrite => "1-byte pwrite to a watched file",
            Self::ForkExec => "fork+exec /bin/true",
            Self::TcpConnect => "TCP connect+accept+close, 127.0.0.1",
            Self::UdpSendto => "UDP sendto+recv, 127.0.0.1",
            Self::Getpid => "getpid",
        }
    }

    /// The name `guest_workloads` prints it under.
    pub(super) fn key(self) -> &'static str {
        match self {
            Self::OpenWriteClose => "open_write_close",
            Self::WatchedWrite => "watched_pwrite",
            Self::ForkExec => "fork_exec",
            Self::TcpConnect => "tcp_connect",
            Self::UdpSendto => "udp_sendto",
            Self::Getpid => "getpid",
        }
    }

    pub(super) fn iterations(self) -> u64 {
        match self {
            Self::OpenWriteClose => 200_000,
            Self::WatchedWrite => 100_000,
            Self::ForkExec => 1_000,
            Self::TcpConnect => 20_000,
            Self::UdpSendto => 100_000,
            Self::Getpid => 2_000_000,
        }
    }
}

/// What the workloads act on.
struct Workloads {
    unwatched_file: PathBuf,
    watched: File,
    listener: TcpListener,
    udp_sender: UdpSocket,
    udp_receiver: UdpSocket,
}

impl Workloads {
    fn create(scratch: &Scratch) -> anyhow::Result<Self> {
        Self::open(&scratch.watched_file, &scratch.unwatched)
    }

    /// On an existing watched file and an unwatched directory.
    fn open(watched_file: &Path, unwatched: &Path) -> anyhow::Result<Self> {
        let watched = OpenOptions::new()
            .write(true)
            .open(watched_file)
            .with_context(|| format!("opening {}", watched_file.display()))?;
        let udp_receiver = UdpSocket::bind("127.0.0.1:0").context("binding a UDP socket on 127.0.0.1")?;
        let udp_sender = UdpSocket::bind("127.0.0.1:0").context("binding a UDP socket on 127.0.0.1")?;
        Ok(Self {
            unwatched_file: unwatched.join("small"),
            watched,
            listener: TcpListener::bind("127.0.0.1:0").context("listening on 127.0.0.1")?,
            udp_sender,
            udp_receiver,
        })
    }

    /// Runs `workload` `iterations` times; nanoseconds per operation.
    fn ns_per_op(&self, workload: Workload, iterations: u64) -> anyhow::Result<f64> {
        let start = Instant::now();
        match workload {
            Workload::OpenWriteClose => open_write_close(&self.unwatched_file, iterations)?,
            Workload::WatchedWrite => pwrite_bytes(&self.watched, iterations)?,
            Workload::ForkExec => fork_exec_true(iterations)?,
            Workload::TcpConnect => tcp_connect(&self.listener, iterations)?,
            Workload::UdpSendto => udp_sendto(&self.udp_sender, &self.udp_receiver, iterations)?,
            Workload::Getpid => getpid(iterations),
        }
        Ok(start.elapsed().as_nanos() as f64 / iterations as f64)
    }
}

/// open(O_WRONLY|O_CREAT) + write + close through libc, as a C loop would.
fn open_write_close(path: &Path, iterations: u64) -> anyhow::Result<()> {
    let mut c_path = path.as_os_str().as_bytes().to_vec();
    c_path.push(0);
    for _ in 0..iterations {
        // SAFETY: NUL-terminated path; the descriptor is closed below.
        let fd = unsafe { libc::open(c_path.as_ptr().cast(), libc::O_WRONLY | libc::O_CREAT, 0o644) };
        ensure!(fd >= 0, "opening {}: {}", path.display(), std::io::Error::last_os_error());
        // SAFETY: valid descriptor and buffer.
        let written = unsafe { libc::write(fd, b"ids bench\n".as_ptr().cast(), 10) };
        // SAFETY: our own descriptor, closed once.
        unsafe { libc::close(fd) };
        ensure!(written == 10, "writing {}: {}", path.display(), std::io::Error::last_os_error());
    }
    Ok(())
}

/// 1-byte pwrite at offset 0: an event per call for the sensor, a file that does not grow.
fn pwrite_bytes(file: &File, iterations: u64) -> anyhow::Result<()> {
    for _ in 0..iterations {
        // SAFETY: valid descriptor and buffer.
        let written = unsafe { libc::pwrite(file.as_raw_fd(), b"x".as_ptr().cast(), 1, 0) };
        ensure!(written == 1, "pwrite to the watched file: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

fn fork_exec_true(iterations: u64) -> anyhow::Result<()> {
    for _ in 0..iterations {
        let status = Command::new("/bin/true")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("running /bin/true")?;
        ensure!(status.success(), "/bin/true failed ({status})");
    }
    Ok(())
}

/// Connect, accept on the same thread, close both ends with RST (no TIME_WAIT piles up).
fn tcp_connect(listener: &TcpListener, iterations: u64) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    for _ in 0..iterations {
        let client = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
        let (server, _) = listener.accept().with_context(|| format!("accepting on {addr}"))?;
        close_with_reset(&client)?;
        drop(client);
        drop(server);
    }
    Ok(())
}

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

/// sendto the receiver, then read it back so its queue never fills.
fn udp_sendto(sender: &UdpSocket, receiver: &UdpSocket, iterations: u64) -> anyhow::Result<()> {
    let to = receiver.local_addr()?;
    let mut buf = [0u8; 64];
    for _ in 0..iterations {
        sender.send_to(b"ids bench", to).with_context(|| format!("sendto {to}"))?;
        receiver.recv(&mut buf).with_context(|| format!("recv on {to}"))?;
    }
    Ok(())
}

fn getpid(iterations: u64) {
    for _ in 0..iterations {
        // SAFETY: getpid has no preconditions; the raw syscall bypasses any libc caching.
        std::hint::black_box(unsafe { libc::syscall(libc::SYS_getpid) });
    }
}

// ---------------------------------------------------------------------------------------------
// The columns' processes

/// The daemon configuration: the embedded default with the bench's watched directory added to
/// `watch`, and state, events log and pins moved into the scratch directory.
fn default_config(ids: &Path, scratch: &Scratch) -> anyhow::Result<String> {
    let default = command_stdout(Command::new(ids).args(["config", "default"]))?;
    let quoted = |p: &Path| serde_json::to_string(&p.display().to_string()).expect("a string serializes");
    let mut out = String::new();
    let mut section = String::new();
    for line in default.lines() {
        if line.starts_with('[') {
            section = line.to_string();
        }
        let replaced = match (section.as_str(), line.split_once(" = ").map(|(k, _)| k)) {
            ("", Some("watch")) => {
                let list = line.split_once(" = ").map(|(_, v)| v.trim()).unwrap_or("[]");
                let inner = list.trim_start_matches('[').trim_end_matches(']');
                Some(format!("watch = [{inner}, {}]", quoted(scratch.watched_file.parent().unwrap_or(&scratch.dir))))
            }
            ("", Some("events_log")) => Some(format!("events_log = {}", quoted(&scratch.dir.join("events.jsonl")))),
            ("", Some("state_dir")) => Some(format!("state_dir = {}", quoted(&scratch.dir.join("state")))),
            ("[xdp]", Some("pin_dir")) => Some(format!("pin_dir = {}", quoted(&pin_dir(scratch)))),
            _ => None,
        };
        out.push_str(replaced.as_deref().unwrap_or(line));
        out.push('\n');
    }
    ensure!(
        out.contains("events.jsonl") && out.contains("ids-bench"),
        "`ids config default` changed shape:\n{default}"
    );
    Ok(out)
}

fn pin_dir(scratch: &Scratch) -> PathBuf {
    let name = scratch.dir.file_name().map_or_else(|| "ids-bench".into(), |n| n.to_string_lossy().into_owned());
    PathBuf::from("/sys/fs/bpf").join(name)
}

/// The watch set's paths: `watch` of the configuration the daemon runs with.
fn watch_paths(config: &str) -> anyhow::Result<Vec<PathBuf>> {
    let table: toml::Table = config.parse().context("parsing the bench's configuration")?;
    let list = table.get("watch").and_then(|w| w.as_array()).context("the configuration has no `watch` list")?;
    Ok(list.iter().filter_map(|v| v.as_str()).map(PathBuf::from).collect())
}

/// `ids sensor-floor`, stopped on drop.
struct FloorProcess {
    child: Child,
    hooks: String,
}

impl FloorProcess {
    fn start(ids: &Path, config: &Path) -> anyhow::Result<Self> {
        let mut child = Command::new(ids)
            .arg("sensor-floor")
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting ids sensor-floor")?;
        let mut line = String::new();
        let stdout = child.stdout.take().context("ids sensor-floor has no stdout")?;
        BufReader::new(stdout).read_line(&mut line).context("reading ids sensor-floor")?;
        let Some(hooks) = line.trim().strip_prefix("attached: ") else {
            let _ = child.kill();
            let _ = child.wait();
            bail!("ids sensor-floor did not attach (it printed {line:?})");
        };
        Ok(Self { hooks: hooks.to_string(), child })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for FloorProcess {
    fn drop(&mut self) {
        // SAFETY: signals our own child, not yet reaped.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// Whether auditd can run here, and why not when it cannot.
fn auditd_available() -> Result<(), String> {
    for tool in ["auditd", "auditctl"] {
        if !Path::new("/usr/sbin").join(tool).exists() && !Path::new("/sbin").join(tool).exists() {
            return Err(format!("`{tool}` is not installed (`cargo xtask setup` installs the auditd package)"));
        }
    }
    match Command::new("auditctl").arg("-s").output() {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(format!(
            "`auditctl -s` failed ({}): {} — no audit support in this kernel, or not allowed here",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Err(format!("running auditctl: {e}")),
    }
}

/// A number of `auditctl -s`: `pid` (auditd's, 0 for none), `enabled`.
fn audit_status(field: &str) -> anyhow::Result<u32> {
    let status = command_stdout(Command::new("auditctl").arg("-s"))?;
    Ok(status
        .lines()
        .find_map(|l| l.strip_prefix(field).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or(0))
}

fn audit_pid() -> anyhow::Result<u32> {
    audit_status("pid")
}

/// auditd with its configuration and log in the scratch directory and one watch rule per path;
/// the rules are removed and auditd stopped on drop. An auditd already running is used as it is
/// (only the bench's rules come and go).
struct Auditd {
    child: Option<Child>,
    paths: Vec<PathBuf>,
    /// The kernel's `enabled` flag before auditd started, restored when it stops (auditd sets
    /// it and leaves it set).
    enabled_before: u32,
}

const AUDIT_KEY: &str = "ids-bench";

impl Auditd {
    fn start(scratch: &Scratch, paths: &[PathBuf]) -> anyhow::Result<Self> {
        let mut auditd = Self { child: None, paths: Vec::new(), enabled_before: audit_status("enabled")? };
        if audit_pid()? == 0 {
            let dir = scratch.dir.join("audit");
            fs::create_dir_all(&dir)?;
            let system = fs::read_to_string("/etc/audit/auditd.conf").unwrap_or_default();
            let log = dir.join("audit.log");
            let mut conf: String = system
                .lines()
                .filter(|l| {
                    !l.trim_start().starts_with("log_file") && !l.trim_start().starts_with("max_log_file_action")
                })
                .map(|l| format!("{l}\n"))
                .collect();
            let _ = writeln!(conf, "log_file = {}\nmax_log_file_action = ignore", log.display());
            let conf_path = dir.join("auditd.conf");
            fs::write(&conf_path, conf)?;
            // auditd refuses a configuration others can write.
            fs::set_permissions(&conf_path, std::os::unix::fs::PermissionsExt::from_mode(0o640))?;
            let child = Command::new("auditd")
                .arg("-n")
                .arg("-c")
                .arg(&dir)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting auditd")?;
            let pid = child.id();
            auditd.child = Some(child);
            let deadline = Instant::now() + Duration::from_secs(10);
            while audit_pid()? != pid {
                ensure!(Instant::now() < deadline, "auditd (pid {pid}) did not register with the kernel in 10 s");
                thread::sleep(Duration::from_millis(50));
            }
        }
        for path in paths {
            let path_arg = path.display().to_string();
            command_stdout(Command::new("auditctl").args(["-w", &path_arg, "-p", "wa", "-k", AUDIT_KEY]))
                .with_context(|| format!("adding the audit watch on {path_arg}"))?;
            auditd.paths.push(path.clone());
        }
        Ok(auditd)
    }
}

impl Drop for Auditd {
    fn drop(&mut self) {
        for path in &self.paths {
            let path_arg = path.display().to_string();
            if let Err(e) =
                command_stdout(Command::new("auditctl").args(["-W", &path_arg, "-p", "wa", "-k", AUDIT_KEY]))
            {
                eprintln!("bench: removing the audit watch on {path_arg} failed: {e:#}");
            }
        }
        if let Some(child) = &mut self.child {
            // SAFETY: signals our own child, not yet reaped.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            let _ = child.wait();
            let enabled = self.enabled_before.to_string();
            if let Err(e) = command_stdout(Command::new("auditctl").args(["-e", &enabled])) {
                eprintln!("bench: restoring the audit enabled flag to {enabled} failed: {e:#}");
            }
        }
    }
}

/// `ids run` with the bench's configuration, once its first integrity scan is done.
fn start_ids(ids: &Path, scratch: &Scratch) -> anyhow::Result<Daemon> {
    let daemon = Daemon::start(ids, scratch)?;
    let deadline = Instant::now() + READY_TIMEOUT;
    while daemon.status()?["aggregate"].is_null() {
        ensure!(Instant::now() < deadline, "ids run's first scan did not end within {} s", READY_TIMEOUT.as_secs());
        thread::sleep(POLL);
    }
    thread::sleep(SETTLE);
    Ok(daemon)
}

/// Removes what an `ids run` round left, so the rounds do not fill the disk.
fn clear_ids_state(scratch: &Scratch) {
    let _ = fs::remove_file(scratch.dir.join("events.jsonl"));
    let _ = fs::remove_dir_all(scratch.dir.join("state"));
}

// ---------------------------------------------------------------------------------------------
// Overhead

struct Overhead {
    columns: Vec<Column>,
    /// [workload][column] → ns/op of every round.
    samples: Vec<Vec<Vec<f64>>>,
    discarded: usize,
    auditd_missing: Option<String>,
    floor_hooks: String,
    ids_hooks: Vec<String>,
}

fn measure_overhead(ids: &Path, floor_ids: &Path, scratch: &Scratch, watch: &[PathBuf]) -> anyhow::Result<Overhead> {
    let workloads = Workloads::create(scratch)?;
    let auditd_missing = auditd_available().err();
    if let Some(reason) = &auditd_missing {
        eprintln!("bench: no auditd column: {reason}");
    }
    let columns: Vec<Column> = [Column::None, Column::Floor, Column::Auditd, Column::Ids]
        .into_iter()
        .filter(|c| *c != Column::Auditd || auditd_missing.is_none())
        .collect();
    let mut samples = vec![vec![Vec::new(); columns.len()]; Workload::ALL.len()];
    eprintln!("bench: overhead warm-up");
    for workload in Workload::ALL {
        workloads.ns_per_op(workload, workload.iterations() / 10)?;
    }
    let mut discarded = 0;
    let mut floor_hooks = String::new();
    let mut ids_hooks = Vec::new();
    let mut round = 0;
    let rounds = rounds();
    while round < rounds {
        wait_for_no_other_sensor()?;
        let mut results = Vec::new();
        let mut intruders = Vec::new();
        for &column in &columns {
            let (figures, own) = match column {
                Column::None => (time_all(&workloads)?, None),
                Column::Floor => {
                    let floor = FloorProcess::start(floor_ids, &scratch.config)?;
                    floor_hooks = floor.hooks.clone();
                    let figures = time_all(&workloads)?;
                    let pid = floor.pid();
                    intruders.extend(other_sensors(Some(pid))?);
                    (figures, Some(pid))
                }
                Column::Auditd => {
                    let auditd = Auditd::start(scratch, watch)?;
                    let figures = time_all(&workloads)?;
                    drop(auditd);
                    let _ = fs::remove_file(scratch.dir.join("audit").join("audit.log"));
                    (figures, None)
                }
                Column::Ids => {
                    let daemon = start_ids(ids, scratch)?;
                    ids_hooks = super::status_hooks(&daemon.status()?);
                    let figures = time_all(&workloads)?;
                    intruders.extend(other_sensors(Some(daemon.pid()))?);
                    daemon.stop()?;
                    clear_ids_state(scratch);
                    (figures, Some(0))
                }
            };
            if own.is_none() {
                intruders.extend(other_sensors(None)?);
            }
            results.push(figures);
        }
        intruders.sort_unstable();
        intruders.dedup();
        if !intruders.is_empty() {
            discarded += 1;
            ensure!(discarded <= MAX_DISCARDED_ROUNDS, "other `ids` processes spoiled {discarded} rounds; giving up");
            eprintln!("bench: round discarded: another `ids` process (pid {intruders:?}) ran during it");
            continue;
        }
        round += 1;
        for (c, figures) in results.iter().enumerate() {
            for (w, ns) in figures.iter().enumerate() {
                samples[w][c].push(*ns);
            }
        }
        let shown: Vec<String> = Workload::ALL
            .iter()
            .enumerate()
            .map(|(w, _)| results.iter().map(|r| format!("{:.0}", r[w])).collect::<Vec<_>>().join("/"))
            .collect();
        eprintln!("bench: round {round}/{rounds} ns/op ({}): {}", column_names(&columns), shown.join(", "));
    }
    Ok(Overhead { columns, samples, discarded, auditd_missing, floor_hooks, ids_hooks })
}

fn column_names(columns: &[Column]) -> String {
    columns
        .iter()
        .map(|c| match c {
            Column::None => "none",
            Column::Floor => "floor",
            Column::Auditd => "auditd",
            Column::Ids => "ids",
        })
        .collect::<Vec<_>>()
        .join("/")
}

fn time_all(workloads: &Workloads) -> anyhow::Result<Vec<f64>> {
    Workload::ALL.iter().map(|&w| workloads.ns_per_op(w, w.iterations())).collect()
}

// ---------------------------------------------------------------------------------------------
// Daemon CPU per event

/// utime + stime of a process in clock ticks.
fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("reading /proc/{pid}/stat"))?;
    // Fields after the command (which may hold spaces) start at field 3.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("malformed /proc/PID/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> anyhow::Result<u64> {
        fields.get(n - 3).and_then(|f| f.parse().ok()).with_context(|| format!("/proc/{pid}/stat field {n}"))
    };
    Ok(field(14)? + field(15)?)
}

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

#[derive(Debug, Clone, Copy)]
enum Burst {
    Exec,
    File,
    Connect,
}

impl Burst {
    const ALL: [Self; 3] = [Self::Exec, Self::File, Self::Connect];

    fn label(self) -> &'static str {
        match self {
            Self::Exec => "exec (fork+exec /bin/true)",
            Self::File => "file (1-byte pwrite to a watched file)",
            Self::Connect => "connect (TCP to 127.0.0.1)",
        }
    }

    /// Sized for half a second of daemon CPU or more before the changes this bench came with, so
    /// the 10 ms tick is fine-grained enough.
    fn count(self) -> u64 {
        match self {
            Self::Exec => 3_000,
            Self::File => 300_000,
            Self::Connect => 50_000,
        }
    }
}

struct CpuRow {
    burst: Burst,
    /// µs per event written, one per repetition.
    per_event: Vec<f64>,
    written: Vec<u64>,
}

const CPU_REPETITIONS: usize = 3;

fn measure_cpu_per_event(ids: &Path, scratch: &Scratch) -> anyhow::Result<Vec<CpuRow>> {
    wait_for_no_other_sensor()?;
    let workloads = Workloads::create(scratch)?;
    let daemon = start_ids(ids, scratch)?;
    let tick_us = 1e6 / ticks_per_second();
    let mut rows: Vec<CpuRow> =
        Burst::ALL.iter().map(|&burst| CpuRow { burst, per_event: vec![], written: vec![] }).collect();
    for repetition in 1..=CPU_REPETITIONS {
        for row in &mut rows {
            let written_before = wait_until_written_settles(&daemon)?;
            let ticks_before = cpu_ticks(daemon.pid())?;
            let n = row.burst.count();
            match row.burst {
                Burst::Exec => fork_exec_true(n)?,
                Burst::File => pwrite_bytes(&workloads.watched, n)?,
                Burst::Connect => tcp_connect(&workloads.listener, n)?,
            }
            let written_after = wait_until_written_settles(&daemon)?;
            let ticks = cpu_ticks(daemon.pid())? - ticks_before;
            let written = written_after - written_before;
            ensure!(written > 0, "the daemon wrote no event for a burst of {n} {}", row.burst.label());
            let us = ticks as f64 * tick_us / written as f64;
            eprintln!(
                "bench: cpu {repetition}/{CPU_REPETITIONS} {}: {written} events written, {ticks} ticks, {us:.2} µs/event",
                row.burst.label()
            );
            row.per_event.push(us);
            row.written.push(written);
        }
    }
    daemon.stop()?;
    clear_ids_state(scratch);
    Ok(rows)
}

/// Polls `events_written` until it has not moved for `DRAIN_QUIET`; returns it.
fn wait_until_written_settles(daemon: &Daemon) -> anyhow::Result<u64> {
    let written = |d: &Daemon| -> anyhow::Result<u64> {
        d.status()?["events_written"].as_u64().context("ids status --json has no events_written")
    };
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    let mut last = written(daemon)?;
    let mut since = Instant::now();
    loop {
        thread::sleep(POLL);
        let now = written(daemon)?;
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= DRAIN_QUIET || Instant::now() >= deadline {
            return Ok(now);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Capacity

struct CapacityStep {
    /// Paced total rate; `None` for the unpaced step.
    rate: Option<u64>,
    achieved: f64,
    generated: u64,
    received: u64,
    lost: u64,
}

struct Capacity {
    writers: usize,
    steps: Vec<CapacityStep>,
}

fn measure_capacity(ids: &Path, scratch: &Scratch) -> anyhow::Result<Capacity> {
    wait_for_no_other_sensor()?;
    let writers = thread::available_parallelism().map_or(2, |n| n.get());
    let files: Vec<PathBuf> =
        (0..writers).map(|i| scratch.watched_file.with_file_name(format!("capacity-{i}"))).collect();
    for f in &files {
        File::create(f).with_context(|| format!("creating {}", f.display()))?;
    }
    let daemon = start_ids(ids, scratch)?;
    let mut counters = status_file_counters(&daemon.status()?)?;
    let mut steps = Vec::new();
    for _ in 0..CAPACITY_REPETITIONS {
        for rate in CAPACITY_RATES.iter().copied().map(Some).chain([None]) {
            let (generated, elapsed) = generate_parallel(&files, rate)?;
            let deadline = Instant::now() + DRAIN_TIMEOUT;
            let mut last = counters;
            let mut since = Instant::now();
            let after = loop {
                thread::sleep(POLL);
                let now = status_file_counters(&daemon.status()?)?;
                if now.total() != last.total() {
                    since = Instant::now();
                }
                let reached = now.total() >= counters.total() + generated;
                if (reached && now.total() == last.total())
                    || since.elapsed() >= DRAIN_QUIET
                    || Instant::now() >= deadline
                {
                    break now;
                }
                last = now;
            };
            let step = CapacityStep {
                rate,
                achieved: generated as f64 / elapsed.as_secs_f64(),
                generated,
                received: after.received - counters.received,
                lost: after.lost - counters.lost,
            };
            counters = after;
            eprintln!(
                "bench: capacity {}: generated {} at {:.0}/s, received {}, lost {}",
                rate.map_or("unpaced".into(), |r| format!("{r}/s")),
                step.generated,
                step.achieved,
                step.received,
                step.lost
            );
            steps.push(step);
        }
    }
    daemon.stop()?;
    clear_ids_state(scratch);
    Ok(Capacity { writers, steps })
}

/// One thread per file writes 1-byte pwrites for `CAPACITY_STEP`, each at `rate / files` per
/// second (busy-waiting for each call's due time), or back to back. Returns the total calls and
/// the longest thread's time.
fn generate_parallel(files: &[PathBuf], rate: Option<u64>) -> anyhow::Result<(u64, Duration)> {
    let barrier = Arc::new(Barrier::new(files.len()));
    let per_thread = rate.map(|r| r / files.len() as u64);
    let handles: Vec<_> = files
        .iter()
        .map(|path| {
            let path = path.clone();
            let barrier = barrier.clone();
            thread::spawn(move || -> anyhow::Result<(u64, Duration)> {
                let file = OpenOptions::new().write(true).open(&path)?;
                barrier.wait();
                let start = Instant::now();
                let mut generated = 0u64;
                match per_thread {
                    Some(rate) => {
                        let count = rate * CAPACITY_STEP.as_millis() as u64 / 1000;
                        for i in 0..count {
                            let due = start + Duration::from_nanos(i * 1_000_000_000 / rate);
                            while Instant::now() < due {
                                std::hint::spin_loop();
                            }
                            pwrite_bytes(&file, 1)?;
                            generated += 1;
                        }
                    }
                    None => {
                        while start.elapsed() < CAPACITY_STEP {
                            pwrite_bytes(&file, 256)?;
                            generated += 256;
                        }
                    }
                }
                Ok((generated, start.elapsed()))
            })
        })
        .collect();
    let mut total = 0;
    let mut longest = Duration::ZERO;
    for handle in handles {
        let (generated, elapsed) = handle.join().map_err(|_| anyhow::anyhow!("a capacity writer panicked"))??;
        total += generated;
        longest = longest.max(elapsed);
    }
    Ok((total, longest))
}

/// Inside the benchmark VM (`cargo xtask bench sensor-vm`): every workload once, with its
/// iterations divided by `divisor` (emulated syscalls are tens of times slower), printed as
/// `workload KEY NS_PER_OP` lines for the host to parse.
pub fn guest_workloads(watched_file: &Path, unwatched: &Path, divisor: u64) -> anyhow::Result<()> {
    let workloads = Workloads::open(watched_file, unwatched)?;
    for workload in Workload::ALL {
        let iterations = (workload.iterations() / divisor.max(1)).max(1);
        println!("workload {} {:.1}", workload.key(), workloads.ns_per_op(workload, iterations)?);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The bench

pub(super) fn bench_sensor(root: &Path) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    ensure!(
        unsafe { libc::geteuid() } == 0,
        "the sensor bench needs root (eBPF programs, auditd): run `sudo -E cargo xtask bench sensor`"
    );
    let built = build_release(root)?;
    // `IDS_BENCH_IDS`: the `ids` binary of the ids column and of the per-event and capacity
    // figures, say the build of an earlier commit, measured against this tree's floor.
    let ids = std::env::var_os("IDS_BENCH_IDS").map_or_else(|| built.clone(), PathBuf::from);
    wait_for_no_other_sensor()?;
    let machine = Machine::describe(&ids)?;
    let scratch = Scratch::create()?;
    eprintln!("bench: scratch directory {}", scratch.dir.display());
    let config = default_config(&built, &scratch)?;
    fs::write(&scratch.config, &config).with_context(|| format!("writing {}", scratch.config.display()))?;
    let watch = watch_paths(&config)?;

    let overhead = measure_overhead(&ids, &built, &scratch, &watch)?;
    let cpu = measure_cpu_per_event(&ids, &scratch)?;
    let capacity = measure_capacity(&ids, &scratch)?;
    let load_after = load_average();

    let section = render(&machine, &load_after, &watch, &overhead, &cpu, &capacity);
    append_to_benchmarks(&root.join("BENCHMARKS.md"), &section)?;
    print!("{section}");
    eprintln!("bench: appended to {}", root.join("BENCHMARKS.md").display());
    Ok(())
}

fn spread(values: &[f64]) -> String {
    let (lo, hi) = values.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| (lo.min(x), hi.max(x)));
    let digits = if median(values) < 1000.0 { 1 } else { 0 };
    format!("{:.*} ({lo:.*}–{hi:.*})", digits, median(values), digits, digits)
}

fn render(
    machine: &Machine,
    load_after: &str,
    watch: &[PathBuf],
    overhead: &Overhead,
    cpu: &[CpuRow],
    capacity: &Capacity,
) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "\n## {} — sensor\n", utc_timestamp());
    let _ = writeln!(s, "- Command: `cargo xtask bench sensor` (release build, as root)");
    let _ = writeln!(
        s,
        "- Machine: Linux {}, {}, {} cores; load average {} before, {} after",
        machine.kernel, machine.cpu, machine.cores, machine.load_before, load_after
    );
    let _ = writeln!(
        s,
        "- Sensor: {}{}; hooks: {}",
        machine.ids_version,
        std::env::var("IDS_BENCH_IDS").map_or_else(|_| String::new(), |p| format!(" (`IDS_BENCH_IDS={p}`)")),
        overhead.ids_hooks.join(", ")
    );
    let _ = writeln!(s, "- Floor: `ids sensor-floor`, empty programs on the same hooks: {}", overhead.floor_hooks);
    let watched: Vec<String> = watch.iter().map(|p| p.display().to_string()).collect();
    match &overhead.auditd_missing {
        None => {
            let _ = writeln!(
                s,
                "- Peer: auditd ({}), one rule `-w PATH -p wa` per path of the sensor's watch set: {}",
                command_stdout(Command::new("auditctl").arg("-v")).unwrap_or_else(|_| "version unknown".into()),
                watched.join(", ")
            );
        }
        Some(reason) => {
            let _ = writeln!(s, "- Peer: **auditd could not run here** ({reason}); the auditd column is left out.");
        }
    }

    let _ = writeln!(s, "\n### Overhead per operation\n");
    let _ = writeln!(
        s,
        "{} rounds; each round times every workload under every column in turn, each column \
         starting and stopping its own process. Median ns/op, min–max in brackets.{}\n",
        overhead.samples[0][0].len(),
        match overhead.discarded {
            0 => String::new(),
            n => format!(" {n} further round(s) were discarded because another `ids` process ran during them."),
        }
    );
    let _ = write!(s, "| workload | ops |");
    for c in &overhead.columns {
        let _ = write!(s, " {} |", c.label());
    }
    let has_auditd = overhead.columns.contains(&Column::Auditd);
    let _ =
        writeln!(s, " ids / floor (≤ {TARGET_FLOOR_RATIO}) |{}", if has_auditd { " ids / auditd (≤ 1) |" } else { "" });
    let _ = writeln!(
        s,
        "|---|---:|{}---:|{}",
        "---:|".repeat(overhead.columns.len()),
        if has_auditd { "---:|" } else { "" }
    );
    let index = |c: Column| overhead.columns.iter().position(|x| *x == c);
    for (w, workload) in Workload::ALL.iter().enumerate() {
        let _ = write!(s, "| {} | {} |", workload.label(), thousands(workload.iterations()));
        for c in 0..overhead.columns.len() {
            let _ = write!(s, " {} |", spread(&overhead.samples[w][c]));
        }
        let med = |c: Column| index(c).map(|i| median(&overhead.samples[w][i]));
        let ids = med(Column::Ids).unwrap_or(f64::NAN);
        let verdict = |ratio: f64, target: f64| if ratio <= target { "met" } else { "**not met**" };
        let floor_ratio = ids / med(Column::Floor).unwrap_or(f64::NAN);
        let _ = write!(s, " {floor_ratio:.2} {} |", verdict(floor_ratio, TARGET_FLOOR_RATIO));
        if let Some(auditd) = med(Column::Auditd) {
            let ratio = ids / auditd;
            let _ = write!(s, " {ratio:.2} {} |", verdict(ratio, 1.0));
        }
        let _ = writeln!(s);
    }

    let _ = writeln!(s, "\n### Daemon CPU per event\n");
    let _ = writeln!(
        s,
        "One `ids run` (same configuration); per burst, the daemon's utime + stime from \
         `/proc/PID/stat` from before the burst until `events_written` stopped moving for {} s, \
         divided by the events written. {CPU_REPETITIONS} repetitions; median, min–max in brackets.\n",
        DRAIN_QUIET.as_secs()
    );
    let _ = writeln!(
        s,
        "| events | burst | events written (median) | µs CPU per event | target ≤ {TARGET_CPU_PER_EVENT_US} µs |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---|");
    for row in cpu {
        let us = median(&row.per_event);
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} |",
            row.burst.label(),
            thousands(row.burst.count()),
            thousands(median(&row.written.iter().map(|&w| w as f64).collect::<Vec<_>>()) as u64),
            spread(&row.per_event),
            if us <= TARGET_CPU_PER_EVENT_US { "met" } else { "**not met**" }
        );
    }

    let _ = writeln!(s, "\n### Capacity of the `file` signal\n");
    let _ = writeln!(
        s,
        "{} writer threads (one per core), each 1-byte pwrites to its own watched file for {:.1} s \
         at its share of the paced total rate (busy-waiting on the monotonic clock), then unpaced; \
         the ladder ran {CAPACITY_REPETITIONS} times. Lost = lost in the kernel + dropped by the daemon.\n",
        capacity.writers,
        CAPACITY_STEP.as_secs_f64()
    );
    let _ = writeln!(s, "| target events/s | achieved events/s | generated | received | lost |");
    let _ = writeln!(s, "|---:|---:|---:|---:|---:|");
    for step in &capacity.steps {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} |",
            step.rate.map_or("unpaced".into(), thousands),
            thousands(step.achieved as u64),
            thousands(step.generated),
            thousands(step.received),
            thousands(step.lost)
        );
    }
    let first_loss = capacity.steps.iter().filter(|st| st.lost > 0).map(|st| st.achieved).reduce(f64::min);
    let best_lossless = capacity.steps.iter().filter(|st| st.lost == 0).map(|st| st.achieved).reduce(f64::max);
    let _ = writeln!(
        s,
        "\nCapacity: {}; {}.",
        best_lossless.map_or("every step lost records".into(), |r| format!(
            "highest rate with nothing lost **{} events/s**",
            thousands(r as u64)
        )),
        first_loss.map_or("no step lost anything (the writers could go no faster)".into(), |r| format!(
            "first loss at {} events/s",
            thousands(r as u64)
        ))
    );
    s
}
