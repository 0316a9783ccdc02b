//! The control socket: a root-only Unix socket in the state directory. One JSON request per line
//! (`{"command":"status"}`, `{"command":"baseline"}`, `{"command":"diff"}`), one JSON response
//! per line (`{"ok":true,...}` or `{"ok":false,"error":...}`).
pub(crate) mod alerts;
pub(crate) mod bans;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tracing::warn;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Request {
    Status,
    /// Accept the daemon's current items as the baseline.
    Baseline,
    /// The differences between the baseline and the daemon's current items.
    Diff,
    /// Ban addresses or prefixes (`crate::bans::cli`); `duration` as `parse_duration` reads it,
    /// `None`: `[bans] default_duration`.
    Ban {
        nets: Vec<String>,
        duration: Option<String>,
        reason: String,
        force: bool,
    },
    Unban {
        nets: Vec<String>,
    },
    /// Every ban with its hit counters.
    Bans,
    /// The `limit` most recent alerts.
    Alerts {
        limit: usize,
        /// Only these kinds (none: every kind).
        #[serde(default)]
        kinds: Vec<String>,
        /// Only alerts at or after this time (RFC 3339, as the store writes it).
        #[serde(default)]
        since: Option<String>,
        /// Only alerts at least this severe. Left out when unset, as older daemons do not know it
        /// (the answer's rows then have no `severity`, which the CLI checks).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        min_severity: Option<crate::alert::Severity>,
        /// Only alerts after the one with this id, the oldest first (`ids alerts --follow`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after_id: Option<i64>,
    },
}

pub type Reply = oneshot::Sender<serde_json::Value>;

/// `{"ok": true}` and the fields of a typed answer, as the daemon sends it and the CLI reads it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct Answer<T> {
    pub(crate) ok: bool,
    #[serde(flatten)]
    pub(crate) body: T,
}

impl<T: Serialize> Answer<T> {
    pub(crate) fn ok(body: T) -> serde_json::Value {
        serde_json::to_value(Answer { ok: true, body }).unwrap_or_else(|e| refusal(format!("encoding the answer: {e}")))
    }
}

/// `{"ok": false, "error": ...}`.
pub(crate) fn refusal(error: impl std::fmt::Display) -> serde_json::Value {
    serde_json::json!({"ok": false, "error": error.to_string()})
}

/// The answer to [`Request::Status`] (`ids status --json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct StatusAnswer {
    pub(crate) pid: u32,
    pub(crate) uptime_s: u64,
    pub(crate) signals: Vec<SignalStatus>,
    /// Failed runs per eBPF program, summed over CPUs (every program, attached or not).
    pub(crate) errors: std::collections::BTreeMap<String, u64>,
    pub(crate) incoming: IncomingStatus,
    pub(crate) watch: WatchStatus,
    pub(crate) events_written: u64,
    /// The process table: processes alive, and exited ones kept so late events still resolve.
    #[serde(default)]
    pub(crate) processes: ProcessCounts,
    /// Writes to the events log that failed (a full disk, say); the events still reached the
    /// detectors, but these lines are not in the log.
    pub(crate) events_log_errors: u64,
    pub(crate) events_log_lines_lost: u64,
    /// Alerts the store refused: failed attempts, alerts kept for a retry, alerts lost to it.
    pub(crate) alert_store: crate::alert::AlertStoreStatus,
    /// Alerts raised since the daemon started, per kind.
    pub(crate) alerts: std::collections::BTreeMap<String, u64>,
    /// Hex; `None` until the first scan is done.
    pub(crate) aggregate: Option<String>,
    pub(crate) integrity: crate::integrity::worker::IntegrityStatus,
    pub(crate) xdp: XdpStatus,
    pub(crate) detect: crate::detect::worker::DetectStatus,
    /// The fleet link (`[fleet]`); `None` without a fleet.
    #[serde(default)]
    pub(crate) fleet: Option<crate::fleet::agent::FleetStatus>,
    /// `[[outputs]]`: each output's counters, in configuration order.
    #[serde(default)]
    pub(crate) outputs: Vec<crate::output::OutputStatus>,
}

/// One signal's hook and counters.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct SignalStatus {
    pub(crate) signal: String,
    pub(crate) hook: String,
    pub(crate) received: u64,
    /// `lost_in_kernel` + `dropped`.
    pub(crate) lost: u64,
    pub(crate) lost_in_kernel: u64,
    pub(crate) dropped: u64,
    pub(crate) malformed: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct IncomingStatus {
    pub(crate) hook: String,
    pub(crate) interfaces: Vec<String>,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub(crate) struct ProcessCounts {
    pub(crate) live: u64,
    pub(crate) exited: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct WatchStatus {
    pub(crate) roots: Vec<String>,
    pub(crate) inodes: u64,
    pub(crate) unresolved: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct XdpStatus {
    pub(crate) interfaces: Vec<XdpInterface>,
    pub(crate) pin_dir: PathBuf,
    pub(crate) bans: usize,
    pub(crate) scan_reports: u64,
    pub(crate) scan_reports_dropped: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct XdpInterface {
    pub(crate) name: String,
    /// `native`, `generic`, `tc` or `replaced` (a pinned attachment of an earlier run, moved to this one).
    pub(crate) mode: String,
    /// The program that enforces bans there: `xdp_guard` or `tc_guard`.
    #[serde(default)]
    pub(crate) program: String,
}

/// The answer to [`Request::Baseline`] (`ids baseline --json` adds `source`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct BaselineAnswer {
    pub(crate) items: usize,
    pub(crate) aggregate: String,
}

/// The answer to [`Request::Diff`]: the diff as `ids diff --json` prints it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct DiffAnswer {
    pub(crate) diff: serde_json::Value,
}

/// How long the CLI waits for the daemon's answer.
const ANSWER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// Longest request line accepted; anything longer is refused.
const MAX_REQUEST: usize = 64 * 1024;

/// How long a connection may take to send its request line before it is closed: an idle client
/// must not hold a descriptor for good.
const IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// Connections served at once; one more is closed as soon as it is accepted, so that clients
/// cannot take every descriptor the daemon has.
const MAX_CONNECTIONS: usize = 64;

/// Binds the socket (mode 0600), refusing to steal it from a daemon that still answers.
pub async fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            bail!("another daemon answers on {}", path.display());
        }
        std::fs::remove_file(path).with_context(|| format!("removing stale socket {}", path.display()))?;
    }
    let listener = UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod 0600 {}", path.display()))?;
    Ok(listener)
}

/// Accepts connections and forwards their requests to the daemon's main loop, until stop.
/// A failing accept (no descriptor left, say) is retried after a pause that doubles up to a
/// second, so that it neither spins nor floods the log. At most [`MAX_CONNECTIONS`] are served at
/// once (one more is closed at once), and each has [`IDLE_TIMEOUT`] to send its request.
pub(crate) async fn serve(
    listener: UnixListener,
    requests: mpsc::Sender<(Request, Reply)>,
    stop: crate::harness::Stop,
) -> anyhow::Result<()> {
    let places = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut pause = std::time::Duration::from_millis(10);
    loop {
        let accepted = tokio::select! {
            _ = stop.stopped() => return Ok(()),
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => {
                pause = std::time::Duration::from_millis(10);
                stream
            }
            Err(e) => {
                warn!(error = %e, retry_ms = pause.as_millis() as u64, "control socket accept failed");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_secs(1));
                continue;
            }
        };
        // Dropping the stream closes it: the client reads end of file and may retry.
        let Ok(place) = places.clone().try_acquire_owned() else { continue };
        let requests = requests.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(stream, requests).await {
                warn!(error = crate::error_text::one_line(e.as_ref()), "control connection");
            }
            drop(place);
        });
    }
}

/// Reads one request line (at most [`MAX_REQUEST`] bytes with its newline, within
/// [`IDLE_TIMEOUT`]), has the daemon answer it, and writes the answer line.
/// One request line as read from a client (at most one byte over [`MAX_REQUEST`]), or why it is
/// refused.
pub(crate) fn decode_request(line: &[u8]) -> Result<Request, String> {
    if line.len() > MAX_REQUEST {
        return Err(format!("request too long (at most {MAX_REQUEST} bytes)"));
    }
    let text = std::str::from_utf8(line).map_err(|_| "request is not UTF-8".to_string())?;
    serde_json::from_str::<Request>(text.trim()).map_err(|e| format!("bad request: {e}"))
}

async fn handle(stream: UnixStream, requests: mpsc::Sender<(Request, Reply)>) -> anyhow::Result<()> {
    let (read, mut write) = stream.into_split();
    // One byte more than the limit, so that a line over it is told apart from one of exactly it.
    let mut reader = BufReader::new(read.take(MAX_REQUEST as u64 + 1));
    let mut line = Vec::new();
    match tokio::time::timeout(IDLE_TIMEOUT, reader.read_until(b'\n', &mut line)).await {
        Ok(read) => read?,
        // An idle client: closed without an answer, as it asked nothing.
        Err(_) => return Ok(()),
    };
    let response = match decode_request(&line) {
        Ok(request) => {
            let (tx, rx) = oneshot::channel();
            requests.send((request, tx)).await.context("daemon is shutting down")?;
            rx.await.context("daemon dropped the request")?
        }
        Err(why) => refusal(why),
    };
    let mut out = serde_json::to_vec(&response)?;
    out.push(b'\n');
    write.write_all(&out).await?;
    Ok(())
}

/// Connects to the daemon's socket: `Ok(None)` only when no daemon is there (no socket, or
/// nothing listening on it). Any other failure is an error, so that a command that cannot reach
/// a running daemon (a user without the right to) never goes on to act behind its back.
async fn connect(path: &Path) -> anyhow::Result<Option<UnixStream>> {
    match UnixStream::connect(path).await {
        Ok(stream) => Ok(Some(stream)),
        Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused) => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => bail!(
            "cannot open the control socket {}: permission denied; root is needed (the socket and the state \
             directory are root's only)",
            path.display()
        ),
        Err(e) => Err(e).with_context(|| format!("cannot open the control socket {}", path.display())),
    }
}

/// Sends one request to the daemon and returns its typed answer.
pub(crate) async fn call<T: serde::de::DeserializeOwned>(path: &Path, request: &Request) -> anyhow::Result<T> {
    match connect(path).await? {
        Some(stream) => typed(exchange(stream, request).await?),
        None => bail!("no daemon answers on {} (is `ids run` running?)", path.display()),
    }
}

/// Like [`call`], but `Ok(None)` when no daemon answers on the socket (nothing listens).
pub(crate) async fn try_call<T: serde::de::DeserializeOwned>(
    path: &Path,
    request: &Request,
) -> anyhow::Result<Option<T>> {
    match connect(path).await? {
        Some(stream) => typed(exchange(stream, request).await?).map(Some),
        None => Ok(None),
    }
}

fn typed<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> anyhow::Result<T> {
    let answer: Answer<T> = serde_json::from_value(value).context("the daemon's answer has an unexpected shape")?;
    Ok(answer.body)
}

/// Like [`try_call`], but returns a refusal (`"ok": false`) as the value instead of an error.
pub async fn try_exchange(path: &Path, request: &Request) -> anyhow::Result<Option<serde_json::Value>> {
    let Some(stream) = connect(path).await? else { return Ok(None) };
    send(stream, request).await.map(Some)
}

/// Writes one request line and reads the response line.
async fn send(stream: UnixStream, request: &Request) -> anyhow::Result<serde_json::Value> {
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_vec(request)?;
    line.push(b'\n');
    write.write_all(&line).await?;
    let mut response = String::new();
    // Answers come from memory or one store write; a daemon that takes longer is stuck.
    tokio::time::timeout(ANSWER_TIMEOUT, BufReader::new(read).read_line(&mut response))
        .await
        .map_err(|_| anyhow::anyhow!("the daemon did not answer within {} s", ANSWER_TIMEOUT.as_secs()))??;
    if response.is_empty() {
        bail!("the daemon closed the connection without answering (did it stop?)");
    }
    serde_json::from_str(&response).with_context(|| format!("the daemon's answer is not JSON: {response:?}"))
}

async fn exchange(stream: UnixStream, request: &Request) -> anyhow::Result<serde_json::Value> {
    let value = send(stream, request).await?;
    if value["ok"] == false {
        bail!("daemon refused: {}", value["error"]);
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sends `request` raw on one end of a socket pair served by `handle`; returns the reply line.
    async fn reply_to(request: Vec<u8>) -> String {
        let (client, server) = UnixStream::pair().unwrap();
        let (requests, _unused) = mpsc::channel(1);
        let served = tokio::spawn(handle(server, requests));
        let (read, mut write) = client.into_split();
        // The server may answer and close before reading all of an oversized request.
        let _ = write.write_all(&request).await;
        let mut line = String::new();
        BufReader::new(read).read_line(&mut line).await.unwrap();
        let _ = served.await;
        line
    }

    #[tokio::test]
    async fn a_request_that_is_not_utf8_is_refused_by_name() {
        let line = reply_to(b"{\"command\":\"st\xffatus\"}\n".to_vec()).await;
        let reply: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
        assert_eq!(reply, serde_json::json!({"ok": false, "error": "request is not UTF-8"}));
    }

    #[tokio::test]
    async fn a_request_over_the_limit_is_refused_as_too_long() {
        let mut request = br#"{"command":"alerts","limit":1,"pad":""#.to_vec();
        request.extend(std::iter::repeat_n(b'a', MAX_REQUEST));
        request.extend(b"\"}\n");
        let line = reply_to(request).await;
        let reply: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
        assert_eq!(reply, serde_json::json!({"ok": false, "error": "request too long (at most 65536 bytes)"}));
    }

    #[tokio::test]
    async fn a_request_of_exactly_the_limit_is_read() {
        // The longest accepted request: padding whitespace up to MAX_REQUEST with its newline.
        let mut request = br#"{"command":"bans"}"#.to_vec();
        request.resize(MAX_REQUEST - 1, b' ');
        request.push(b'\n');
        let (client, server) = UnixStream::pair().unwrap();
        let (requests, mut daemon) = mpsc::channel(1);
        let served = tokio::spawn(handle(server, requests));
        let (read, mut write) = client.into_split();
        write.write_all(&request).await.unwrap();
        let (received, reply) = daemon.recv().await.unwrap();
        assert_eq!(received, Request::Bans);
        reply.send(serde_json::json!({"ok": true})).unwrap();
        let mut line = String::new();
        BufReader::new(read).read_line(&mut line).await.unwrap();
        assert_eq!(line, "{\"ok\":true}\n");
        served.await.unwrap().unwrap();
    }

    /// Binds a control socket in `dir` and serves it; the caller stops it with the token.
    async fn serving(dir: &Path) -> (PathBuf, crate::harness::Workers, mpsc::Receiver<(Request, Reply)>) {
        let path = dir.join("control.sock");
        let listener = bind(&path).await.unwrap();
        let (requests, daemon) = mpsc::channel(8);
        let mut workers = crate::harness::Workers::default();
        workers.spawn_task("control", move |stop| serve(listener, requests, stop));
        (path, workers, daemon)
    }

    /// Whether the daemon closed `stream` (a read returns end of file) within `within`.
    async fn closed_within(stream: &mut UnixStream, within: std::time::Duration) -> bool {
        let mut byte = [0u8; 1];
        matches!(tokio::time::timeout(within, stream.read(&mut byte)).await, Ok(Ok(0)) | Ok(Err(_)))
    }

    #[tokio::test]
    async fn an_idle_connection_is_closed_after_the_idle_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let (path, workers, _daemon) = serving(dir.path()).await;
        let mut idle = UnixStream::connect(&path).await.unwrap();
        assert!(!closed_within(&mut idle, IDLE_TIMEOUT / 2).await, "closed before the idle timeout");
        assert!(closed_within(&mut idle, IDLE_TIMEOUT).await, "still open after twice the idle timeout");
        workers.shutdown(std::time::Duration::from_secs(2)).await;
    }

    #[tokio::test]
    async fn connections_beyond_the_cap_are_closed_at_once_and_a_request_still_answers_after() {
        let dir = tempfile::tempdir().unwrap();
        let (path, workers, mut daemon) = serving(dir.path()).await;
        let mut held = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            held.push(UnixStream::connect(&path).await.unwrap());
        }
        let mut extra = UnixStream::connect(&path).await.unwrap();
        assert!(
            closed_within(&mut extra, std::time::Duration::from_secs(1)).await,
            "the connection over the cap stayed open"
        );
        // Ending the held connections frees their places for a real request.
        drop(held);
        let answered = tokio::spawn(async move {
            let (request, reply) = daemon.recv().await.unwrap();
            reply.send(serde_json::json!({"ok": true})).unwrap();
            request
        });
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        let reply = loop {
            // Until the server has seen the held connections end, a new one may still be refused.
            match try_exchange(&path, &Request::Status).await {
                Ok(Some(reply)) if reply["ok"] == true => break reply,
                _ if std::time::Instant::now() < deadline => {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await
                }
                other => panic!("no answer after the held connections ended: {other:?}"),
            }
        };
        assert_eq!(reply, serde_json::json!({"ok": true}));
        assert_eq!(answered.await.unwrap(), Request::Status);
        workers.shutdown(std::time::Duration::from_secs(2)).await;
    }
}
