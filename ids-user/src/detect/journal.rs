//! Following sshd's messages in the systemd journal (`[[journal]]`), for hosts where sshd logs
//! nowhere else (no syslog daemon writing `/var/log/auth.log`).
//!
//! A reader thread per source runs `journalctl --follow --output=json` with matches on `_COMM`,
//! the process name journald takes from the kernel for the sending process (a local user cannot
//! log as sshd by naming a tag, as `logger -t sshd` can in a syslog file). journalctl is woken by
//! the journal's own file notifications, so a message reaches the detectors when it is written,
//! and nothing is read between messages. Each entry becomes one syslog-shaped line
//! (`TIME HOST sshd[PID]: MESSAGE`, newlines in the message turned to spaces) for the sshd rules.
//!
//! The position is the journal cursor of the last entry read, written to
//! `<state_dir>/journal-<namespace>-sshd.cursor` at most once a second and when the reader stops
//! (journalctl's own `--cursor-file` is not written when it is terminated): a restart resumes
//! after it (`--after-cursor`); with no cursor yet reading starts after the journal's last entry
//! of the moment (the first cursor is stored at once). journalctl gets
//! SIGTERM if the reader goes away (`PR_SET_PDEATHSIG`). If journalctl fails (no journal, a
//! namespace whose journald is not running), the reader says so and starts it again every few
//! seconds.
use std::fmt::Write as _;
use std::io::{BufRead as _, BufReader, Read as _};
use std::os::unix::process::CommandExt as _;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use tracing::warn;

use super::Input;
use super::config::{JournalConfig, LogKind};

/// Longest JSON entry read; a longer one is skipped whole (journald's own default line limit
/// is 48 KiB).
const MAX_ENTRY: usize = 1 << 20;
/// Pause before journalctl is started again after it exited.
const RESTART: Duration = Duration::from_secs(3);
/// How often the cursor is written while entries come.
const SAVE_INTERVAL: Duration = Duration::from_secs(1);

/// The process names journalctl matches for a kind.
fn process_names(kind: LogKind) -> &'static [&'static str] {
    match kind {
        // OpenSSH 9.8+ logs authentication from `sshd-session`.
        LogKind::Sshd => &["sshd", "sshd-session"],
        LogKind::Nginx | LogKind::Apache => &[],
    }
}

/// What the alerts of a source name as their `path`: `journal:sshd` or `journal[NS]:sshd`.
pub fn origin(config: &JournalConfig) -> String {
    match &config.namespace {
        Some(namespace) => format!("journal[{namespace}]:{}", config.kind.name()),
        None => format!("journal:{}", config.kind.name()),
    }
}

/// A running reader: its thread and the pid of its journalctl (0 when none runs).
pub struct Reader {
    pub thread: std::thread::JoinHandle<()>,
    pub child: Arc<AtomicI32>,
}

impl Reader {
    /// Asks journalctl to write its cursor and exit; the thread ends with it.
    pub fn stop(&self) {
        let pid = self.child.load(Ordering::SeqCst);
        if pid > 0 {
            // SAFETY: kill has no memory preconditions; the pid is our child's.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
    }
}

/// Starts the reader of `config` (source number `source`), sending its lines to `tx`.
pub fn spawn(
    source: usize,
    config: &JournalConfig,
    state_dir: &std::path::Path,
    tx: crate::harness::Sender<Input>,
    stop: crate::harness::Stop,
) -> std::io::Result<Reader> {
    let cursor = state_dir.join(format!(
        "journal-{}-{}.cursor",
        config.namespace.as_deref().unwrap_or("system"),
        config.kind.name()
    ));
    let child = Arc::new(AtomicI32::new(0));
    let config = config.clone();
    let thread = std::thread::Builder::new().name("journal".into()).spawn({
        let child = child.clone();
        move || run(source, &config, &cursor, &tx, &stop, &child)
    })?;
    Ok(Reader { thread, child })
}

fn journalctl(config: &JournalConfig, after: Option<&str>) -> Command {
    let mut command = Command::new("journalctl");
    command.args(["--follow", "--output=json", "--no-pager", "--quiet"]);
    if let Some(namespace) = &config.namespace {
        command.arg(format!("--namespace={namespace}"));
    }
    match after {
        Some(after) => command.arg(format!("--after-cursor={after}")),
        // An empty journal: everything from its first entry.
        None => command.arg("--lines=all"),
    };
    for name in process_names(config.kind) {
        command.arg(format!("_COMM={name}"));
    }
    command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    // SAFETY: prctl is async-signal-safe and touches no memory of this process.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command
}

fn run(
    source: usize,
    config: &JournalConfig,
    cursor: &std::path::Path,
    tx: &crate::harness::Sender<Input>,
    stop: &crate::harness::Stop,
    pid: &AtomicI32,
) {
    let origin = origin(config);
    while !stop.is_stopped() {
        // Where to start: after the stored cursor, or on a first run after the journal's last
        // entry now (`--lines=0` with `--follow` was seen to skip entries written just after).
        let stored = std::fs::read_to_string(cursor).ok().map(|text| text.trim().to_string()).filter(|c| !c.is_empty());
        let after = match stored {
            Some(after) => Some(after),
            None => match tail_cursor(config) {
                Ok(tail) => {
                    let mut first = Position { file: cursor, last: tail.clone(), saved: std::time::Instant::now() };
                    first.save(&origin);
                    tail
                }
                Err(e) => {
                    warn!(source = %origin, error = %e, "cannot read the end of the journal");
                    pause(stop);
                    continue;
                }
            },
        };
        let mut child = match journalctl(config, after.as_deref()).spawn() {
            Ok(child) => child,
            Err(e) => {
                warn!(source = %origin, error = %e, "cannot run journalctl");
                pause(stop);
                continue;
            }
        };
        pid.store(child.id() as i32, Ordering::SeqCst);
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout is piped"));
        let mut entry = Vec::new();
        let mut position = Position { file: cursor, last: None, saved: std::time::Instant::now() };
        loop {
            entry.clear();
            match (&mut stdout).take(MAX_ENTRY as u64 + 1).read_until(b'\n', &mut entry) {
                Ok(0) => break,
                Ok(_) if entry.len() > MAX_ENTRY && !entry.ends_with(b"\n") => {
                    // Skip the rest of an over-long entry.
                    let mut rest = Vec::new();
                    if !matches!(stdout.read_until(b'\n', &mut rest), Ok(n) if n > 0) {
                        break;
                    }
                    warn!(source = %origin, "journal entry over {MAX_ENTRY} bytes skipped");
                }
                Ok(_) => {
                    let Some((line, cursor)) = entry_line(&entry) else { continue };
                    if !tx.send_blocking(Input::Journal { source, line }) {
                        // The worker has stopped.
                        position.save(&origin);
                        let _ = child.kill();
                        let _ = child.wait();
                        return;
                    }
                    position.advance(cursor, &origin);
                }
                Err(e) => {
                    warn!(source = %origin, error = %e, "reading journalctl");
                    break;
                }
            }
        }
        position.save(&origin);
        let _ = child.kill();
        let status = child.wait();
        pid.store(0, Ordering::SeqCst);
        if stop.is_stopped() {
            return;
        }
        let mut stderr = String::new();
        if let Some(mut pipe) = child.stderr.take() {
            let _ = pipe.read_to_string(&mut stderr);
        }
        warn!(source = %origin, status = ?status.ok(), stderr = %stderr.trim(), "journalctl exited; starting it again");
        pause(stop);
    }
}

/// The cursor of the journal's last entry (any program's), `None` for an empty journal.
fn tail_cursor(config: &JournalConfig) -> std::io::Result<Option<String>> {
    let mut command = Command::new("journalctl");
    command.args(["--lines=1", "--output=json", "--no-pager", "--quiet"]);
    if let Some(namespace) = &config.namespace {
        command.arg(format!("--namespace={namespace}"));
    }
    let out = command.stdin(Stdio::null()).stderr(Stdio::null()).output()?;
    if !out.status.success() {
        return Err(std::io::Error::other(format!("journalctl --lines=1 failed ({})", out.status)));
    }
    let last = out.stdout.split(|&b| b == b'\n').rfind(|line| !line.is_empty());
    Ok(last.and_then(entry_cursor))
}

fn entry_cursor(json: &[u8]) -> Option<String> {
    let entry: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(json).ok()?;
    entry.get("__CURSOR")?.as_str().map(str::to_string)
}

/// The cursor of the last entry read and where it is kept.
struct Position<'a> {
    file: &'a std::path::Path,
    last: Option<String>,
    saved: std::time::Instant,
}

impl Position<'_> {
    fn advance(&mut self, cursor: Option<String>, origin: &str) {
        if cursor.is_some() {
            self.last = cursor;
        }
        if self.saved.elapsed() >= SAVE_INTERVAL {
            self.save(origin);
        }
    }

    /// Writes the cursor (a new file renamed over the old one, so a crash leaves one or the other).
    fn save(&mut self, origin: &str) {
        self.saved = std::time::Instant::now();
        let Some(cursor) = self.last.take() else { return };
        let mut temporary = self.file.as_os_str().to_owned();
        temporary.push(".new");
        let written =
            std::fs::write(&temporary, format!("{cursor}\n")).and_then(|()| std::fs::rename(&temporary, self.file));
        if let Err(e) = written {
            warn!(source = %origin, file = %self.file.display(), error = %e, "storing the journal cursor");
            self.last = Some(cursor);
        }
    }
}

fn pause(stop: &crate::harness::Stop) {
    let until = std::time::Instant::now() + RESTART;
    while !stop.is_stopped() && std::time::Instant::now() < until {
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The syslog-shaped line of one JSON journal entry and its cursor; `None` for an entry without
/// a message.
pub fn entry_line(json: &[u8]) -> Option<(Vec<u8>, Option<String>)> {
    let entry: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(json).ok()?;
    let text = |key: &str| entry.get(key).and_then(|v| v.as_str());
    let message: Vec<u8> = match entry.get("MESSAGE")? {
        serde_json::Value::String(text) => text.as_bytes().to_vec(),
        // Not UTF-8: journalctl gives the bytes as an array of numbers.
        serde_json::Value::Array(bytes) => bytes.iter().map(|b| b.as_u64().unwrap_or(u64::from(b'?')) as u8).collect(),
        _ => return None,
    };
    // humantime's Display fails past the year 9999 (and `to_string` then panics): a timestamp it
    // cannot write is shown as "-", like a missing one, rather than stopping the reader.
    let time = text("__REALTIME_TIMESTAMP")
        .and_then(|us| us.parse::<u64>().ok())
        .and_then(|us| std::time::UNIX_EPOCH.checked_add(Duration::from_micros(us)))
        .and_then(|at| {
            let mut out = String::new();
            write!(out, "{}", humantime::format_rfc3339_seconds(at)).ok().map(|()| out)
        })
        .unwrap_or_else(|| "-".into());
    let mut line = format!(
        "{time} {} {}[{}]: ",
        text("_HOSTNAME").unwrap_or("-"),
        text("_COMM").unwrap_or("-"),
        text("_PID").unwrap_or("0")
    )
    .into_bytes();
    line.extend(message.iter().map(|&b| if b == b'\n' || b == b'\r' { b' ' } else { b }));
    Some((line, text("__CURSOR").map(str::to_string)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_become_syslog_shaped_lines() {
        let json = br#"{"MESSAGE":"Failed password for root from 192.0.2.7 port 22 ssh2","_COMM":"sshd","_PID":"812","_HOSTNAME":"web1","__REALTIME_TIMESTAMP":"1795242963188936","__CURSOR":"s=1;i=3"}"#;
        let (line, cursor) = entry_line(json).unwrap();
        assert_eq!(
            String::from_utf8(line).unwrap(),
            "2026-11-21T06:36:03Z web1 sshd[812]: Failed password for root from 192.0.2.7 port 22 ssh2"
        );
        assert_eq!(cursor.as_deref(), Some("s=1;i=3"));
        // A message that is not UTF-8 comes as bytes; newlines cannot start a second line.
        let json = br#"{"MESSAGE":[65,10,66,255],"_COMM":"sshd-session","_PID":"9"}"#;
        assert_eq!(entry_line(json).unwrap(), (b"- - sshd-session[9]: A B\xff".to_vec(), None));
        assert_eq!(entry_line(br#"{"_COMM":"sshd"}"#), None);
        assert_eq!(entry_line(b"not json"), None);
    }

    #[test]
    fn timestamps_past_year_9999_do_not_panic() {
        // Found by the journal_entry fuzz target: 3590485999926377872 µs is about the year 115,750.
        let json = br#"{"MESSAGE":"x","_COMM":"sshd","_PID":"1","__REALTIME_TIMESTAMP":"3590485999926377872"}"#;
        assert_eq!(entry_line(json).unwrap().0, b"- - sshd[1]: x".to_vec());
        let json = br#"{"MESSAGE":"x","__REALTIME_TIMESTAMP":"18446744073709551615"}"#;
        assert_eq!(entry_line(json).unwrap().0, b"- - -[0]: x".to_vec());
    }

    #[test]
    fn origins_name_the_namespace() {
        let system = JournalConfig { kind: LogKind::Sshd, namespace: None };
        assert_eq!(origin(&system), "journal:sshd");
        let ns = JournalConfig { kind: LogKind::Sshd, namespace: Some("web".into()) };
        assert_eq!(origin(&ns), "journal[web]:sshd");
    }
}
