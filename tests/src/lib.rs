//! Helpers shared by the integration tests: a real daemon started from `IDS_BIN` (or the release
//! build) with its own config, state directory and events log, and readers of what it reported.
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub fn ids_bin() -> PathBuf {
    std::env::var_os("IDS_BIN").map(PathBuf::from).unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/ids")
    })
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
        let _ = Command::new(ids_bin()).args(["xdp", "detach", "--config"]).arg(&self.config).stdout(Stdio::null()).status();
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

    /// Every event written so far.
    pub fn events(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.events)
            .unwrap_or_default()
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
