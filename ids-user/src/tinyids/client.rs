//! The TinyIDS client side: sends one request to one server (plain TCP or TLS 1.3) and reads the
//! one-line reply; [`send_all`] asks every given server at once.
//!
//! `TEST 2` answered `41 INVALID COMMAND` is asked again as a bare `TEST` on a new connection: a
//! revision-1 server (TinyIDS 0.1.0-0.1.3) knows TEST only without an argument and refuses any
//! other argument count with 41. Its other commands are those of revision 2, sent the same way.
//! TinyIDS 0.1.6 (revision 2 since 0.1.4) answers `TEST 2` with 20, so it needs no fall-back.
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpStream;

use super::Reply;
use super::codec::Request;
use super::settings::ServerEntry;

/// Longest reply line read from a server.
const MAX_REPLY: usize = 1024;

/// The protocol revision a server showed by the TEST it accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revision {
    /// `TEST 2` was answered `20 OK`.
    Two,
    /// `TEST 2` was answered `41` and a bare `TEST` `20 OK`: the revision before 2, spoken by
    /// TinyIDS 0.1.0-0.1.3.
    One,
}

impl Revision {
    pub fn number(self) -> u8 {
        match self {
            Revision::Two => 2,
            Revision::One => 1,
        }
    }
}

/// A server's reply, with the revision it showed when the request was a TEST.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    pub reply: Reply,
    pub revision: Option<Revision>,
}

/// What one server answered, or why it could not answer.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub server: String,
    pub address: String,
    pub result: Result<Reply, String>,
    /// Known after a TEST answered `20 OK` (to `TEST 2` or to the bare `TEST` tried after a 41).
    pub revision: Option<Revision>,
}

impl Outcome {
    /// Exit code of `ids client`, larger for worse: 0 OK, 3 MISMATCH or NOT FOUND, 4 a 4x
    /// refusal, 5 unreachable or a TLS or protocol failure (1 and 2 are left to errors before
    /// anything is sent and to usage errors).
    pub fn severity(&self) -> u8 {
        match self.result {
            Ok(Reply::Ok) => 0,
            Ok(Reply::Mismatch | Reply::NotFound) => 3,
            Ok(_) => 4,
            Err(_) => 5,
        }
    }

    /// `{"server", "address", "ok", "code", "reply", "result"}` (a TEST answered 20 adds
    /// `"revision"`: 2, or 1 for a server that took only a bare `TEST`) or, on failure,
    /// `{"server", "address", "ok": false, "result": "unreachable", "error"}`.
    pub fn to_json(&self) -> serde_json::Value {
        match &self.result {
            Ok(reply) => {
                let mut json = serde_json::json!({
                    "server": self.server,
                    "address": self.address,
                    "ok": *reply == Reply::Ok,
                    "code": reply.code(),
                    "reply": reply.text(),
                    "result": reply.name(),
                });
                if let (Some(revision), Some(json)) = (self.revision, json.as_object_mut()) {
                    json.insert("revision".into(), revision.number().into());
                }
                json
            }
            Err(error) => serde_json::json!({
                "server": self.server,
                "address": self.address,
                "ok": false,
                "result": "unreachable",
                "error": error,
            }),
        }
    }
}

/// A prepared connection to one server (its TLS configuration loaded once).
#[derive(Clone)]
pub struct Target {
    pub entry: ServerEntry,
    tls: Option<(tokio_rustls::TlsConnector, rustls::pki_types::ServerName<'static>)>,
}

impl Target {
    pub fn new(entry: ServerEntry) -> anyhow::Result<Self> {
        let tls = match &entry.tls {
            Some(tls) => {
                let config = super::tls::client_config(tls).with_context(|| format!("server {:?}", entry.name))?;
                let name =
                    super::tls::server_name(tls, &entry.host).with_context(|| format!("server {:?}", entry.name))?;
                Some((tokio_rustls::TlsConnector::from(config), name))
            }
            None => None,
        };
        Ok(Self { entry, tls })
    }

    /// Sends `request`; a `TEST 2` answered 41 is sent again as a bare `TEST` (what a revision-1
    /// server, TinyIDS 0.1.0-0.1.3, knows), and the answer to a TEST says which revision the
    /// server showed.
    pub async fn ask(&self, request: &Request, timeout: Duration) -> anyhow::Result<Answer> {
        let reply = self.send(request, timeout).await?;
        let Request::Test { revision: Some(_) } = request else {
            return Ok(Answer { reply, revision: None });
        };
        match reply {
            Reply::Ok => Ok(Answer { reply, revision: Some(Revision::Two) }),
            Reply::InvalidCommand => {
                let bare = self
                    .send(&Request::Test { revision: None }, timeout)
                    .await
                    .context("bare TEST after 41 to TEST 2")?;
                Ok(Answer { reply: bare, revision: (bare == Reply::Ok).then_some(Revision::One) })
            }
            _ => Ok(Answer { reply, revision: None }),
        }
    }

    /// Sends `request` and returns the reply; connecting, the handshake and the exchange each
    /// get `timeout`.
    pub async fn send(&self, request: &Request, timeout: Duration) -> anyhow::Result<Reply> {
        let address = self.entry.address();
        let stream = tokio::time::timeout(timeout, TcpStream::connect((self.entry.host.as_str(), self.entry.port)))
            .await
            .with_context(|| format!("connecting to {address}: timed out"))?
            .with_context(|| format!("connecting to {address}"))?;
        let _ = stream.set_nodelay(true);
        match &self.tls {
            None => exchange(stream, request, timeout).await,
            Some((connector, name)) => {
                let stream = tokio::time::timeout(timeout, connector.connect(name.clone(), stream))
                    .await
                    .with_context(|| format!("TLS handshake with {address}: timed out"))?
                    .with_context(|| format!("TLS handshake with {address}"))?;
                exchange(stream, request, timeout).await
            }
        }
        .with_context(|| format!("server {:?} ({address})", self.entry.name))
    }
}

/// Writes the request line, reads until the server closes or a line end, parses the reply.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    request: &Request,
    timeout: Duration,
) -> anyhow::Result<Reply> {
    let exchange = async {
        stream.write_all(request.to_line().as_bytes()).await.context("sending the request")?;
        stream.flush().await.context("sending the request")?;
        let mut reply = Vec::with_capacity(32);
        let mut buf = [0u8; 256];
        loop {
            let n = match stream.read(&mut buf).await {
                Ok(n) => n,
                // A server that closes without TLS close_notify has still said what it had to.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !reply.is_empty() => 0,
                Err(e) => return Err(anyhow::Error::new(e).context("reading the reply")),
            };
            reply.extend_from_slice(&buf[..n]);
            if n == 0 || reply.contains(&b'\n') || reply.len() > MAX_REPLY {
                break;
            }
        }
        let _ = stream.shutdown().await;
        anyhow::Ok(reply)
    };
    let reply = tokio::time::timeout(timeout, exchange).await.context("no reply in time")??;
    if reply.is_empty() {
        anyhow::bail!("the server closed the connection without a reply");
    }
    let text = String::from_utf8_lossy(&reply);
    Reply::parse(&text).with_context(|| format!("unexpected reply {:?}", text.trim_end()))
}

/// Sends `request` to every target at once; outcomes in the targets' order.
pub async fn send_all(targets: &[Target], request: &Request, timeout: Duration) -> Vec<Outcome> {
    let tasks: Vec<_> = targets
        .iter()
        .map(|target| {
            let target = target.clone();
            let request = request.clone();
            tokio::spawn(async move { target.ask(&request, timeout).await })
        })
        .collect();
    let mut outcomes = Vec::with_capacity(targets.len());
    for (target, task) in targets.iter().zip(tasks) {
        let (result, revision) = match task.await {
            Ok(Ok(answer)) => (Ok(answer.reply), answer.revision),
            Ok(Err(e)) => (Err(crate::error_text::one_line(e.as_ref())), None),
            Err(e) => (Err(format!("internal error: {e}")), None),
        };
        outcomes.push(Outcome { server: target.entry.name.clone(), address: target.entry.address(), result, revision });
    }
    outcomes
}

/// The targets for `servers` (only enabled ones).
pub fn targets(servers: &[ServerEntry]) -> anyhow::Result<Vec<Target>> {
    servers.iter().filter(|s| s.enabled).cloned().map(Target::new).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A loopback server that reads the request line and answers `reply` (nothing if empty).
    async fn answering(reply: &'static [u8]) -> (std::net::SocketAddr, tokio::task::JoinHandle<Vec<u8>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let line = match super::super::codec::read_line(&mut stream, 8192, Duration::from_secs(5)).await.unwrap() {
                super::super::codec::ReadOutcome::Line(line) => line,
                other => panic!("no request line: {other:?}"),
            };
            stream.write_all(reply).await.unwrap();
            line
        });
        (address, task)
    }

    /// A loopback server that answers one connection after another with the next of `replies`,
    /// then stops listening; it returns the request lines in order.
    async fn answering_each(
        replies: Vec<&'static [u8]>,
    ) -> (std::net::SocketAddr, tokio::task::JoinHandle<Vec<String>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut lines = Vec::new();
            for reply in replies {
                let (mut stream, _) = listener.accept().await.unwrap();
                match super::super::codec::read_line(&mut stream, 8192, Duration::from_secs(5)).await.unwrap() {
                    super::super::codec::ReadOutcome::Line(line) => lines.push(String::from_utf8(line).unwrap()),
                    other => panic!("no request line: {other:?}"),
                }
                stream.write_all(reply).await.unwrap();
            }
            lines
        });
        (address, task)
    }

    fn test_2() -> Request {
        Request::Test { revision: Some(super::super::REVISION.into()) }
    }

    #[tokio::test]
    async fn test_2_refused_with_41_is_asked_again_as_a_bare_test() {
        let (address, server) = answering_each(vec![b"41 INVALID COMMAND\r\n", b"20 OK\r\n"]).await;
        let answer = target(address).ask(&test_2(), Duration::from_secs(5)).await.unwrap();
        assert_eq!(answer, Answer { reply: Reply::Ok, revision: Some(Revision::One) });
        assert_eq!(server.await.unwrap(), ["TEST 2\r\n", "TEST\r\n"]);
    }

    #[tokio::test]
    async fn test_2_accepted_is_revision_2_in_one_connection() {
        let (address, server) = answering_each(vec![b"20 OK\r\n"]).await;
        let answer = target(address).ask(&test_2(), Duration::from_secs(5)).await.unwrap();
        assert_eq!(answer, Answer { reply: Reply::Ok, revision: Some(Revision::Two) });
        assert_eq!(server.await.unwrap(), ["TEST 2\r\n"]);
    }

    #[tokio::test]
    async fn bare_test_refused_too_gives_its_reply_and_no_revision() {
        let (address, server) = answering_each(vec![b"41 INVALID COMMAND\r\n", b"41 INVALID COMMAND\r\n"]).await;
        let answer = target(address).ask(&test_2(), Duration::from_secs(5)).await.unwrap();
        assert_eq!(answer, Answer { reply: Reply::InvalidCommand, revision: None });
        assert_eq!(server.await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn other_refusals_and_other_commands_are_not_retried() {
        // The server stops listening after one connection: a retry would fail to connect.
        let (address, server) = answering_each(vec![b"40 INVALID CLIENT\r\n"]).await;
        let answer = target(address).ask(&test_2(), Duration::from_secs(5)).await.unwrap();
        assert_eq!(answer, Answer { reply: Reply::InvalidClient, revision: None });
        assert_eq!(server.await.unwrap(), ["TEST 2\r\n"]);
        let (address, server) = answering_each(vec![b"41 INVALID COMMAND\r\n"]).await;
        let answer = target(address).ask(&Request::Check { hash: "ab".into() }, Duration::from_secs(5)).await.unwrap();
        assert_eq!(answer, Answer { reply: Reply::InvalidCommand, revision: None });
        assert_eq!(server.await.unwrap(), ["CHECK ab\r\n"]);
    }

    #[test]
    fn test_results_carry_the_revision_in_json() {
        let outcome = |revision| Outcome { server: "s".into(), address: "a".into(), result: Ok(Reply::Ok), revision };
        assert_eq!(outcome(Some(Revision::One)).to_json()["revision"], 1);
        assert_eq!(outcome(Some(Revision::Two)).to_json()["revision"], 2);
        assert!(outcome(None).to_json().get("revision").is_none());
    }

    fn target(address: std::net::SocketAddr) -> Target {
        Target::new(ServerEntry::from_address(&address.to_string()).unwrap()).unwrap()
    }

    #[tokio::test]
    async fn sends_one_crlf_line_and_parses_the_reply() {
        let (address, server) = answering(b"30 MISMATCH\r\n").await;
        let reply = target(address).send(&Request::Check { hash: "ab".into() }, Duration::from_secs(5)).await.unwrap();
        assert_eq!(reply, Reply::Mismatch);
        assert_eq!(server.await.unwrap(), b"CHECK ab\r\n");
    }

    #[tokio::test]
    async fn unknown_reply_and_silent_close_are_errors_naming_the_server() {
        let (address, _server) = answering(b"99 WHAT\r\n").await;
        let error = format!(
            "{:#}",
            target(address)
                .send(&Request::Test { revision: Some("2".into()) }, Duration::from_secs(5))
                .await
                .unwrap_err()
        );
        assert!(
            error.contains("unexpected reply") && error.contains("99 WHAT") && error.contains(&address.to_string()),
            "{error}"
        );
        let (address, _server) = answering(b"").await;
        let error = format!(
            "{:#}",
            target(address).send(&Request::Test { revision: None }, Duration::from_secs(5)).await.unwrap_err()
        );
        assert!(error.contains("without a reply"), "{error}");
    }

    #[tokio::test]
    async fn a_server_that_never_answers_times_out() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let _hold = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(10)).await;
            drop(stream);
        });
        let started = std::time::Instant::now();
        let error = format!(
            "{:#}",
            target(address).send(&Request::Test { revision: None }, Duration::from_millis(300)).await.unwrap_err()
        );
        assert!(error.contains("no reply in time"), "{error}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
