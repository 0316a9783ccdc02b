//! The control socket: a root-only Unix socket in the state directory. One JSON request per line
//! (`{"command":"status"}`, `{"command":"baseline"}`, `{"command":"diff"}`), one JSON response
//! per line (`{"ok":true,...}` or `{"ok":false,"error":...}`).
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
    },
}

pub type Reply = oneshot::Sender<serde_json::Value>;

/// Longest request line accepted; anything longer is refused.
const MAX_REQUEST: usize = 64 * 1024;

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
/// second, so that it neither spins nor floods the log.
pub(crate) async fn serve(
    listener: UnixListener,
    requests: mpsc::Sender<(Request, Reply)>,
    stop: crate::harness::Stop,
) -> anyhow::Result<()> {
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
        let requests = requests.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(stream, requests).await {
                warn!(error = format!("{e:#}"), "control connection");
            }
        });
    }
}

async fn handle(stream: UnixStream, requests: mpsc::Sender<(Request, Reply)>) -> anyhow::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read.take(MAX_REQUEST as u64));
    let mut line = String::new();
    reader.read_line(&mut line).await?;
    let response = match serde_json::from_str::<Request>(line.trim()) {
        Ok(request) => {
            let (tx, rx) = oneshot::channel();
            requests.send((request, tx)).await.context("daemon is shutting down")?;
            rx.await.context("daemon dropped the request")?
        }
        Err(e) => serde_json::json!({"ok": false, "error": format!("bad request: {e}")}),
    };
    let mut out = serde_json::to_vec(&response)?;
    out.push(b'\n');
    write.write_all(&out).await?;
    Ok(())
}

/// Sends one request to the daemon and returns its response.
pub async fn call(path: &PathBuf, request: &Request) -> anyhow::Result<serde_json::Value> {
    let stream = UnixStream::connect(path)
        .await
        .with_context(|| format!("connecting to the daemon at {} (is `ids run` running?)", path.display()))?;
    exchange(stream, request).await
}

/// Like [`call`], but `Ok(None)` when no daemon answers on the socket (nothing listens).
pub async fn try_call(path: &PathBuf, request: &Request) -> anyhow::Result<Option<serde_json::Value>> {
    match UnixStream::connect(path).await {
        Ok(stream) => exchange(stream, request).await.map(Some),
        Err(_) => Ok(None),
    }
}

/// Like [`try_call`], but returns a refusal (`"ok": false`) as the value instead of an error.
pub async fn try_exchange(path: &Path, request: &Request) -> anyhow::Result<Option<serde_json::Value>> {
    let Ok(stream) = UnixStream::connect(path).await else { return Ok(None) };
    send(stream, request).await.map(Some)
}

/// Writes one request line and reads the response line.
async fn send(stream: UnixStream, request: &Request) -> anyhow::Result<serde_json::Value> {
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_vec(request)?;
    line.push(b'\n');
    write.write_all(&line).await?;
    let mut response = String::new();
    BufReader::new(read).read_line(&mut response).await?;
    serde_json::from_str(&response).with_context(|| format!("daemon sent bad JSON: {response:?}"))
}

async fn exchange(stream: UnixStream, request: &Request) -> anyhow::Result<serde_json::Value> {
    let value = send(stream, request).await?;
    if value["ok"] == false {
        bail!("daemon refused: {}", value["error"]);
    }
    Ok(value)
}
