//! Helpers shared by the integration tests: a real daemon started from `IDS_BIN` (or the release
//! build) with its own config, state directory and events log, and readers of what it reported.
pub mod broker;
pub mod fleet;
pub mod postgres;
pub mod service_process;
pub mod webdriver;

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// `seconds` since the epoch as the stores write times: RFC 3339 UTC with microseconds.
pub fn rfc3339_utc(seconds: i64) -> String {
    let (days, rest) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
    let (year, month, day) = civil_date(days);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.000000Z", rest / 3600, rest % 3600 / 60, rest % 60)
}

/// (year, month, day) of the day `days` after 1970-01-01 (Howard Hinnant's algorithm).
pub fn civil_date(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

pub fn ids_bin() -> PathBuf {
    std::env::var_os("IDS_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/ids"))
}

/// A scratch directory removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(parent: &str, name: &str) -> Self {
        let path = Path::new(parent).join(format!("ids-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        Self(path)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).stderr(Stdio::null()).status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Removes a daemon's pinned XDP state (`ids xdp detach`) on drop, so no test leaves its
/// program on an interface or its maps in bpffs for the next one.
pub struct Pins {
    pub config: PathBuf,
}

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = Command::new(ids_bin())
            .args(["xdp", "detach", "--config"])
            .arg(&self.config)
            .stdout(Stdio::null())
            .status();
    }
}

/// A bpffs directory for one test's pins.
pub fn test_pin_dir(name: &str) -> String {
    format!("/sys/fs/bpf/ids-test-{}-{name}", std::process::id())
}

pub struct Daemon {
    child: Option<Child>,
    pub config: PathBuf,
    pub events: PathBuf,
    // Dropped before the state (the detach reads the config file in it).
    _pins: Option<Pins>,
    _state: Option<Scratch>,
}

impl Daemon {
    /// Starts `ids run` watching `watch`, with XDP on `interfaces`, and waits until it answers.
    /// Without interfaces it attaches to `lo` only, so that tests never touch the host's own NICs.
    pub fn start(name: &str, watch: &[&Path], interfaces: &[&str]) -> Self {
        Self::start_with(name, watch, interfaces, "")
    }

    pub fn start_with(name: &str, watch: &[&Path], interfaces: &[&str], extra: &str) -> Self {
        let interfaces = if interfaces.is_empty() { &["lo"][..] } else { interfaces };
        let state = Scratch::new("/var/tmp", &format!("state-{name}"));
        let events = state.0.join("events.jsonl");
        let config = state.0.join("ids.toml");
        let watch: Vec<String> = watch.iter().map(|p| format!("{:?}", p.display().to_string())).collect();
        let interfaces: Vec<String> = interfaces.iter().map(|i| format!("{i:?}")).collect();
        std::fs::write(
            &config,
            format!(
                // Dotted keys, so that `extra` may add `xdp.trusted = ...` before its own tables.
                "watch = [{}]\nevents_log = {:?}\nstate_dir = {:?}\nxdp.interfaces = [{}]\nxdp.pin_dir = {:?}\n{extra}\n",
                watch.join(", "),
                events.display().to_string(),
                state.0.join("state").display().to_string(),
                interfaces.join(", "),
                test_pin_dir(name),
            ),
        )
        .unwrap();
        let mut daemon = Self::spawn(&config, &events);
        daemon._pins = Some(Pins { config: config.clone() });
        daemon._state = Some(state);
        daemon
    }

    /// Starts `ids run --config config` and waits until it answers; the caller owns the state
    /// directory and the pins.
    pub fn spawn(config: &Path, events: &Path) -> Self {
        let child = Command::new(ids_bin())
            .args(["run", "--config"])
            .arg(config)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", ids_bin().display()));
        let mut daemon =
            Self { child: Some(child), config: config.into(), events: events.into(), _pins: None, _state: None };
        daemon.wait_ready();
        daemon
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the daemon runs").id()
    }

    /// SIGKILL: the daemon gets no chance to clean anything up.
    pub fn kill(mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if self.try_status().is_some() {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("daemon exited during start ({status}): {}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("daemon did not answer `ids status` within 60 s: {}", self.stderr());
    }

    fn stderr(&mut self) -> String {
        let mut text = String::new();
        if let Some(mut err) = self.child.as_mut().and_then(|c| c.stderr.take()) {
            let _ = err.read_to_string(&mut text);
        }
        text
    }

    fn try_status(&self) -> Option<Value> {
        let out = Command::new(ids_bin()).args(["status", "--json", "--config"]).arg(&self.config).output().ok()?;
        out.status.success().then(|| serde_json::from_slice(&out.stdout).ok()).flatten()
    }

    pub fn status(&self) -> Value {
        self.try_status().expect("`ids status --json` failed")
    }

    /// Runs `ids <args> --json --config <this daemon's config>` and returns its JSON output.
    pub fn ids_json(&self, args: &[&str]) -> Value {
        let out = Command::new(ids_bin()).args(args).args(["--json", "--config"]).arg(&self.config).output().unwrap();
        assert!(
            out.status.success(),
            "ids {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("ids {args:?} printed no JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
    }

    /// `ids diff --json` against this daemon (see [`diff_json`]).
    pub fn diff(&self) -> Value {
        diff_json(&self.config)
    }

    /// Every event written so far: the whole lines (a line the daemon is writing while this
    /// reads is left for the next read; every whole line must be JSON).
    pub fn events(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.events).unwrap_or_default();
        let whole = &text[..text.rfind('\n').map_or(0, |end| end + 1)];
        whole
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("events log line {l:?} is not JSON: {e}")))
            .collect()
    }

    /// Waits (bounded) until `matches` selects at least `count` events; returns the selection.
    pub fn wait_for(&self, count: usize, matches: impl Fn(&Value) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let found: Vec<Value> = self.events().into_iter().filter(|e| matches(e)).collect();
            if found.len() >= count || Instant::now() > deadline {
                return found;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends `signal` to the daemon.
    pub fn signal(&self, signal: i32) {
        let child = self.child.as_ref().expect("daemon running");
        unsafe { libc::kill(child.id() as i32, signal) };
    }

    /// SIGTERM; asserts a clean exit (0) and returns stderr.
    pub fn stop(mut self) -> String {
        let mut child = self.child.take().unwrap();
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "daemon ignored SIGTERM for 20 s");
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut err = String::new();
        let _ = child.stderr.take().unwrap().read_to_string(&mut err);
        assert!(status.success(), "daemon exited with {status} after SIGTERM: {err}");
        err
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs `ids diff --json --config config` and returns its JSON, asserting its exit status says
/// what the JSON does: 0 when nothing differs from the baseline, 1 when something does.
pub fn diff_json(config: &Path) -> Value {
    let out = Command::new(ids_bin()).args(["diff", "--json", "--config"]).arg(config).output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let diff: Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("ids diff printed no JSON ({e}): {said}"));
    let changed = ["added", "removed", "changed"].iter().any(|k| diff[*k].as_array().is_some_and(|a| !a.is_empty()));
    assert_eq!(out.status.code(), Some(i32::from(changed)), "ids diff: {said}");
    diff
}

/// Runs a command and panics with its output if it fails.
pub fn sh(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn str_of<'a>(event: &'a Value, key: &str) -> &'a str {
    event[key].as_str().unwrap_or("")
}

/// A network namespace joined to this host by a veth pair, for tests of the XDP program (bans,
/// detectors that ban): addresses only inside 10.232.0.0/24 and fd00:232::/64.
pub mod netns {
    use std::fs;
    use std::net::{IpAddr, SocketAddr, UdpSocket};
    use std::os::fd::AsRawFd as _;
    use std::process::Command;
    use std::time::{Duration, Instant};

    use socket2::{Domain, Socket, Type};

    use crate::sh;

    pub const HOST4: &str = "10.232.0.1";
    /// Banned in most tests.
    pub const BAD4: &str = "10.232.0.2";
    /// Never banned by address: the other source that must keep passing.
    pub const GOOD4: &str = "10.232.0.3";
    /// Trusted in the prefix test.
    pub const TRUSTED4: &str = "10.232.0.4";
    pub const HOST6: &str = "fd00:232::1";
    pub const BAD6: &str = "fd00:232::2";
    pub const GOOD6: &str = "fd00:232::3";

    /// A namespace with four IPv4 and three IPv6 addresses, joined to the host by a veth pair whose
    /// host side carries the daemon's XDP program. Neighbours are static, so that dropped ARP/ND
    /// answers of a banned address cannot break the other addresses. Removed on drop.
    pub struct Net {
        pub ns: String,
        pub host_if: String,
    }

    pub fn mac(path: &str) -> String {
        fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}")).trim().to_string()
    }

    impl Net {
        pub fn new(tag: &str) -> Self {
            let id = std::process::id() % 1000;
            let ns = format!("idsb{id}{tag}");
            let host_if = format!("idsbh{id}{tag}");
            let ns_if = format!("idsbn{id}{tag}");
            let _ = Command::new("ip").args(["netns", "del", &ns]).stderr(std::process::Stdio::null()).status();
            let _ = Command::new("ip").args(["link", "del", &host_if]).stderr(std::process::Stdio::null()).status();
            sh("ip", &["netns", "add", &ns]);
            let net = Self { ns: ns.clone(), host_if: host_if.clone() };
            sh("ip", &["link", "add", &host_if, "type", "veth", "peer", "name", &ns_if]);
            sh("ip", &["link", "set", &ns_if, "netns", &ns]);
            sh("ip", &["addr", "add", &format!("{HOST4}/24"), "dev", &host_if]);
            sh("ip", &["addr", "add", &format!("{HOST6}/64"), "dev", &host_if, "nodad"]);
            sh("ip", &["link", "set", &host_if, "up"]);
            for a in [BAD4, GOOD4, TRUSTED4] {
                sh("ip", &["-n", &ns, "addr", "add", &format!("{a}/24"), "dev", &ns_if]);
            }
            for a in [BAD6, GOOD6] {
                sh("ip", &["-n", &ns, "addr", "add", &format!("{a}/64"), "dev", &ns_if, "nodad"]);
            }
            sh("ip", &["-n", &ns, "link", "set", &ns_if, "up"]);
            sh("ip", &["-n", &ns, "link", "set", "lo", "up"]);
            let host_mac = mac(&format!("/sys/class/net/{host_if}/address"));
            let ns_mac =
                sh("ip", &["netns", "exec", &ns, "cat", &format!("/sys/class/net/{ns_if}/address")]).trim().to_string();
            for a in [HOST4, HOST6] {
                sh("ip", &["-n", &ns, "neigh", "replace", a, "lladdr", &host_mac, "dev", &ns_if, "nud", "permanent"]);
            }
            for a in [BAD4, GOOD4, TRUSTED4, BAD6, GOOD6] {
                sh("ip", &["neigh", "replace", a, "lladdr", &ns_mac, "dev", &host_if, "nud", "permanent"]);
            }
            net
        }

        /// Runs `f` on a thread that entered the namespace.
        pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
            let path = format!("/run/netns/{}", self.ns);
            std::thread::scope(|scope| {
                scope
                    .spawn(|| {
                        let handle = fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
                        // SAFETY: a valid namespace fd; only this thread changes namespace.
                        let rc = unsafe { libc::setns(handle.as_raw_fd(), libc::CLONE_NEWNET) };
                        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
                        f()
                    })
                    .join()
                    .expect("namespace thread panicked")
            })
        }

        /// Whether a TCP connection from `source` (in the namespace) to `to` (on the host) completes.
        pub fn tcp_passes(&self, source: &str, to: SocketAddr) -> bool {
            let source: IpAddr = source.parse().unwrap();
            self.run(move || {
                let socket = Socket::new(Domain::for_address(to), Type::STREAM, None).unwrap();
                socket.bind(&SocketAddr::new(source, 0).into()).unwrap();
                socket.connect_timeout(&to.into(), Duration::from_millis(700)).is_ok()
            })
        }

        /// Whether a UDP datagram from `source` reaches `receiver` on the host.
        pub fn udp_passes(&self, source: &str, receiver: &UdpSocket) -> bool {
            let to = receiver.local_addr().unwrap();
            // Unique per call: datagrams of an earlier call that passed may still wait in the
            // receiver's queue and must not count for this one.
            static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let payload = format!("ids-ban-test {source} {} {call}", std::process::id());
            let source: IpAddr = source.parse().unwrap();
            let sent = payload.clone();
            self.run(move || {
                let socket = UdpSocket::bind(SocketAddr::new(source, 0)).unwrap();
                for _ in 0..3 {
                    socket.send_to(sent.as_bytes(), to).unwrap();
                }
            });
            receiver.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
            let mut buf = [0u8; 256];
            let deadline = Instant::now() + Duration::from_millis(700);
            while Instant::now() < deadline {
                if let Ok((n, _)) = receiver.recv_from(&mut buf)
                    && buf[..n] == *payload.as_bytes()
                {
                    return true;
                }
            }
            false
        }

        /// Whether an ICMP echo from `source` is answered.
        pub fn ping_passes(&self, source: &str, to: &str) -> bool {
            Command::new("ip")
                .args(["netns", "exec", &self.ns, "ping", "-c", "1", "-W", "1", "-I", source, to])
                .output()
                .unwrap_or_else(|e| panic!("ping: {e}"))
                .status
                .success()
        }
    }

    impl Drop for Net {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["link", "del", &self.host_if]).status();
            let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
        }
    }
}

/// A private systemd-journald for tests that read sshd from the journal.
pub mod journald {
    use std::io::Write as _;
    use std::path::{Path, PathBuf};
    use std::time::{Duration, Instant};

    /// A private systemd-journald instance (a journald namespace of its own), stopped and removed
    /// on drop.
    pub struct Journald {
        pub namespace: String,
        child: std::process::Child,
    }

    impl Journald {
        pub fn start() -> Self {
            let namespace = format!("idstest{}", std::process::id());
            let child = std::process::Command::new("/lib/systemd/systemd-journald")
                .arg(&namespace)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("systemd-journald (Debian package systemd) runs a journal namespace for this test");
            let journald = Self { namespace, child };
            // Ready once its socket is there and its journal file holds an entry (journalctl follows
            // the files that exist when it starts).
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let entries = std::process::Command::new("journalctl")
                    .arg(format!("--namespace={}", journald.namespace))
                    .args(["--quiet", "--lines=1", "--output=cat"])
                    .output()
                    .map(|out| out.stdout)
                    .unwrap_or_default();
                if journald.dev_log().exists() && !entries.is_empty() {
                    break;
                }
                assert!(Instant::now() < deadline, "journald namespace {} never became ready", journald.namespace);
                std::thread::sleep(Duration::from_millis(50));
            }
            journald
        }

        pub fn dev_log(&self) -> PathBuf {
            PathBuf::from(format!("/run/systemd/journal.{}/dev-log", self.namespace))
        }

        /// Sends `messages` with syslog tag sshd from one process of a program named `program` (its
        /// process name, which journald records as `_COMM`), and keeps that process alive until
        /// journald has stored them all: journald reads the name of a sender from /proc, which it
        /// cannot once the sender has exited.
        pub fn log_as(&self, program: &Path, messages: &[String]) {
            let mut child = std::process::Command::new(program)
                .args(["--socket-errors=on", "-t", "sshd", "-u"])
                .arg(self.dev_log())
                .stdin(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let mut stdin = child.stdin.take().unwrap();
            for message in messages {
                writeln!(stdin, "{message}").unwrap();
            }
            stdin.flush().unwrap();
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let stored = std::process::Command::new("journalctl")
                    .arg(format!("--namespace={}", self.namespace))
                    .arg(format!("_PID={}", child.id()))
                    .args(["--quiet", "--output=cat"])
                    .output()
                    .unwrap()
                    .stdout;
                if stored.split(|&b| b == b'\n').filter(|line| !line.is_empty()).count() >= messages.len() {
                    break;
                }
                assert!(Instant::now() < deadline, "journald did not store the messages of {}", program.display());
                std::thread::sleep(Duration::from_millis(20));
            }
            drop(stdin);
            assert!(
                child.wait().unwrap().success(),
                "{} could not log to {}",
                program.display(),
                self.dev_log().display()
            );
        }

        /// Waits until a journalctl follows this namespace (what is written before is not read on a
        /// first run, as for a log file).
        pub fn wait_followed(&self) {
            let needle = format!("--namespace={}", self.namespace);
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let followed = std::fs::read_dir("/proc").unwrap().flatten().any(|entry| {
                    std::fs::read(entry.path().join("cmdline"))
                        .is_ok_and(|cmdline| cmdline.split(|&b| b == 0).any(|arg| arg == needle.as_bytes()))
                });
                if followed {
                    // journalctl opens the journal and seeks to its end after it starts.
                    std::thread::sleep(Duration::from_millis(500));
                    return;
                }
                assert!(Instant::now() < deadline, "no journalctl follows namespace {}", self.namespace);
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    impl Drop for Journald {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
            let _ = std::fs::remove_dir_all(format!("/run/systemd/journal.{}", self.namespace));
            for dir in ["/var/log/journal", "/run/log/journal"] {
                for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                    if entry.file_name().to_string_lossy().ends_with(&format!(".{}", self.namespace)) {
                        let _ = std::fs::remove_dir_all(entry.path());
                    }
                }
            }
        }
    }
}

/// `promtool check metrics` reads the exposition on standard input; it fails on a format error
/// and on a breach of the naming conventions (a counter without `_total`, say).
pub fn promtool_check(body: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running promtool (Debian package prometheus, `cargo xtask setup`): {e}"));
    child.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}{}\n{body}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
