//! `command`: the SHA-256 of the standard output of each configured command.
//!
//! `commands` is a list whose entries are either argv arrays (`["iptables-save", "-t", "filter"]`)
//! or strings split like a POSIX shell would split words (`"iptables-save -t filter"`, crate
//! `shell-words`; no expansion, pipes or redirections: use `["sh", "-c", "..."]` for those).
//! The item id is `command:<argv joined with shell quoting>`.
//!
//! Each command runs with standard input from `/dev/null`, in `/`, with `LC_ALL=C` (stable
//! output), in a process group of its own, all commands at once. A command that cannot be
//! started, exits non-zero, is killed by a signal, or has not exited and closed its output within
//! `timeout` (seconds, default 10) becomes an error item: its whole process group is killed, the
//! digest is that of the error text and the detail is `{"error": ...}`. A descendant that left the
//! process group and keeps the output open is not waited for (its reader thread is abandoned).
use std::io::Read;
use std::os::unix::process::CommandExt as _;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::Serialize;
use sha2::{Digest as _, Sha256};

use super::{Collector, CollectorError, Digest, Item, KindSpec};
use crate::integrity::config::CollectorConfig;

pub const SPEC: KindSpec = KindSpec { kind: "command", settings: &["commands", "timeout"], construct };

/// Bytes of standard error kept for the error text of a failing command.
const STDERR_KEPT: usize = 512;
const POLL_INTERVAL: Duration = Duration::from_millis(10);

fn construct(config: &CollectorConfig) -> Result<Box<dyn Collector>, CollectorError> {
    Ok(Box::new(CommandOutput::new(config)?))
}

#[derive(Debug, Clone)]
pub struct CommandOutput {
    name: String,
    commands: Vec<Vec<String>>,
    timeout: Duration,
}

#[derive(Debug, Serialize)]
struct CommandDetail<'a> {
    argv: &'a [String],
    stdout_bytes: u64,
}

impl CommandOutput {
    pub fn new(config: &CollectorConfig) -> Result<Self, CollectorError> {
        if let Some(index) = config.commands.iter().position(|argv| argv.is_empty() || argv[0].is_empty()) {
            return Err(CollectorError::Setting {
                collector: config.name.clone(),
                key: "commands",
                message: format!("entry {index} is empty"),
            });
        }
        Ok(Self { name: config.name.clone(), commands: config.commands.clone(), timeout: config.timeout })
    }
}

impl Collector for CommandOutput {
    fn name(&self) -> &str {
        &self.name
    }

    fn collect(&self) -> Result<Vec<Item>, CollectorError> {
        // One thread per command: they mostly wait, and a hanging one must not delay the others.
        Ok(std::thread::scope(|scope| {
            let running: Vec<_> =
                self.commands.iter().map(|argv| scope.spawn(move || command_item(argv, self.timeout))).collect();
            running
                .into_iter()
                .zip(&self.commands)
                .map(|(thread, argv)| {
                    thread.join().unwrap_or_else(|_| Item::error(command_id(argv), "collector thread panicked"))
                })
                .collect()
        }))
    }
}

fn command_id(argv: &[String]) -> String {
    format!("command:{}", shell_words::join(argv))
}

fn command_item(argv: &[String], timeout: Duration) -> Item {
    let id = command_id(argv);
    match run(argv, timeout) {
        Ok((digest, stdout_bytes)) => Item::new(id, digest, CommandDetail { argv, stdout_bytes }),
        Err(error) => Item::error(id, error),
    }
}

enum Output {
    Stdout(std::io::Result<(Digest, u64)>),
    Stderr(Vec<u8>),
}

/// Runs `argv`; the digest and length of its standard output, or the error text.
fn run(argv: &[String], timeout: Duration) -> Result<(Digest, u64), String> {
    let deadline = crate::time::deadline_after(Instant::now(), timeout);
    let (program, args) = argv.split_first().ok_or("empty command")?;
    let mut child = Command::new(program)
        .args(args)
        .current_dir("/")
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot run {program}: {e}"))?;

    let (sender, receiver) = mpsc::channel();
    if let Some(mut stdout) = child.stdout.take() {
        let sender = sender.clone();
        std::thread::spawn(move || {
            let _ = sender.send(Output::Stdout(hash_reader(&mut stdout)));
        });
    }
    if let Some(stderr) = child.stderr.take() {
        std::thread::spawn(move || {
            let mut kept = Vec::new();
            let mut stderr = stderr;
            let _ = (&mut stderr).take(STDERR_KEPT as u64).read_to_end(&mut kept);
            let _ = std::io::copy(&mut stderr, &mut std::io::sink());
            let _ = sender.send(Output::Stderr(kept));
        });
    }
    let timed_out = || format!("timed out after {} s", timeout.as_secs_f64());

    let status = wait_until(&mut child, deadline).map_err(|e| {
        kill_group(&child);
        let _ = child.wait();
        e.unwrap_or_else(timed_out)
    })?;

    let (mut stdout, mut stderr) = (None, Vec::new());
    for _ in 0..2 {
        let left = deadline.saturating_duration_since(Instant::now());
        match receiver.recv_timeout(left) {
            Ok(Output::Stdout(result)) => stdout = Some(result),
            Ok(Output::Stderr(kept)) => stderr = kept,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                // Exited, but a descendant still holds the output open.
                kill_group(&child);
                return Err(format!("{} (output still open)", timed_out()));
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    if !status.success() {
        let stderr = String::from_utf8_lossy(&stderr);
        let stderr = stderr.trim();
        return Err(if stderr.is_empty() { status.to_string() } else { format!("{status}: {stderr}") });
    }
    match stdout {
        Some(Ok(hashed)) => Ok(hashed),
        Some(Err(e)) => Err(format!("reading standard output: {e}")),
        None => Err("standard output lost".to_string()),
    }
}

/// Waits for the child until `deadline`: `Err(None)` on timeout, `Err(Some(text))` if waiting failed.
fn wait_until(child: &mut Child, deadline: Instant) -> Result<ExitStatus, Option<String>> {
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok(status),
            Ok(None) if Instant::now() >= deadline => return Err(None),
            Ok(None) => std::thread::sleep(POLL_INTERVAL),
            Err(e) => return Err(Some(format!("waiting: {e}"))),
        }
    }
}

/// SIGKILL to the child's process group (the child leads it: `process_group(0)`).
fn kill_group(child: &Child) {
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: kill has no memory effects; a negative pid addresses the process group.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
    }
}

fn hash_reader(reader: &mut impl Read) -> std::io::Result<(Digest, u64)> {
    let mut hasher = Sha256::new();
    let mut buffer = [0u8; 16 * 1024];
    let mut total = 0u64;
    loop {
        match reader.read(&mut buffer) {
            Ok(0) => return Ok((hasher.finalize().into(), total)),
            Ok(read) => {
                hasher.update(&buffer[..read]);
                total += read as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::integrity::sha256;
    use crate::integrity::test_support::config;

    fn argv(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    fn collector(commands: Vec<Vec<String>>, timeout: Duration) -> CommandOutput {
        CommandOutput::new(&CollectorConfig { commands, timeout, ..config("command") }).unwrap()
    }

    #[test]
    fn hashes_standard_output() {
        let items = collector(vec![argv(&["echo", "hello world"])], Duration::from_secs(10)).collect().unwrap();
        assert_eq!(items[0].id, "command:echo 'hello world'");
        assert_eq!(items[0].digest, sha256(b"hello world\n"));
        assert_eq!(items[0].detail["stdout_bytes"], 12);
    }

    #[test]
    fn failing_and_missing_commands_are_error_items() {
        let items = collector(
            vec![argv(&["sh", "-c", "echo oops >&2; exit 3"]), argv(&["/nonexistent/ids-command"])],
            Duration::from_secs(10),
        )
        .collect()
        .unwrap();
        let failing = items[0].error_text().unwrap();
        assert!(failing.contains("exit status: 3") && failing.contains("oops"), "{failing}");
        let missing = items[1].error_text().unwrap();
        assert!(missing.contains("/nonexistent/ids-command"), "{missing}");
        assert_eq!(items[1].digest, sha256(missing.as_bytes()));
    }

    #[test]
    fn hanging_command_times_out_and_is_killed_with_its_children() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let script = format!("sleep 60 & echo $! > {}; wait", pid_file.display());
        let started = Instant::now();
        let items = collector(vec![argv(&["sh", "-c", &script])], Duration::from_millis(500)).collect().unwrap();
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
        assert!(items[0].error_text().unwrap().contains("timed out"), "{items:?}");
        // The grandchild (sleep) was killed with the group.
        let pid: i32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // Gone, or a zombie waiting for its (also killed) parent's reaper.
            if state.is_empty() || state.contains(") Z ") {
                break;
            }
            assert!(Instant::now() < deadline, "sleep {pid} still running: {state}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn empty_command_is_refused() {
        let err = CommandOutput::new(&CollectorConfig { commands: vec![vec![]], ..config("command") })
            .unwrap_err()
            .to_string();
        assert!(err.contains("commands"), "{err}");
    }
}
