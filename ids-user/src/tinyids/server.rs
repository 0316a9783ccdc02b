//! `ids serve`: the TinyIDS server. One tokio task per connection: (TLS handshake,) read one
//! line within the read timeout, answer one line, close.
//!
//! Limits: `max_line` bytes per request, `read_timeout` for the handshake and for the line, at
//! most `max_connections` at once and `max_connections_per_address` from one address, so that
//! one host's idle connections cannot hold every slot for `read_timeout` (a connection over
//! either cap is closed at once and audited).
//! A client whose passphrase fails `max_failures` times within `failure_window` gets 42 without
//! a check until `lockout` has passed. argon2 runs only for commands that carry a passphrase, on
//! the blocking pool, at most one per CPU at a time (each takes 19 MiB).
//!
//! Identity: the client's IP address (an IPv4-mapped IPv6 address counts as IPv4); with mTLS,
//! `cert:` and the hex SHA-256 of its certificate.
use std::collections::{HashMap, VecDeque};
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use subtle::ConstantTimeEq as _;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::{info, warn};

use super::Reply;
use super::codec::{self, ReadOutcome, Request};
use super::settings::{AuditLog, ServeConfig};
use super::store::{self, RecordStore, Written};

/// After an over-long line, at most this much more input is read and dropped before closing,
/// for at most this long.
const DRAIN_LIMIT: usize = 1 << 20;
const DRAIN_TIME: Duration = Duration::from_secs(1);

/// Everything a connection task needs.
struct Server {
    config: ServeConfig,
    store: Arc<RecordStore>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    mtls: bool,
    audit: Option<Mutex<Box<dyn std::io::Write + Send>>>,
    throttle: Mutex<HashMap<String, Failures>>,
    checks: Mutex<HashMap<String, (String, &'static str)>>,
    argon2_slots: Semaphore,
    /// Connections open per client address (only addresses with one or more).
    per_address: Mutex<HashMap<IpAddr, usize>>,
}

/// One of an address's connection slots, given back when dropped.
struct AddressSlot {
    server: Arc<Server>,
    address: IpAddr,
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = self.server.per_address.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = open.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.address);
            }
        }
    }
}

#[derive(Debug, Default)]
struct Failures {
    times: VecDeque<Instant>,
    locked_until: Option<Instant>,
}

/// One audit record (JSON line). Arguments are never recorded: they may hold a passphrase.
#[derive(serde::Serialize)]
struct AuditRecord<'a> {
    time: String,
    client: Option<&'a str>,
    peer: String,
    transport: &'static str,
    command: Option<&'static str>,
    code: Option<u16>,
    result: &'a str,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    throttled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    ms: f64,
}

/// Raises this process's open-files soft limit to its hard limit (each connection is a file).
pub fn raise_open_files_limit() -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return raised.rlim_cur;
            }
        }
    }
    limit.rlim_cur
}

fn open_audit(log: &AuditLog) -> anyhow::Result<Option<Mutex<Box<dyn std::io::Write + Send>>>> {
    Ok(match log {
        AuditLog::Off => None,
        AuditLog::Stdout => Some(Mutex::new(Box::new(std::io::stdout()))),
        AuditLog::File(path) => {
            use std::os::unix::fs::OpenOptionsExt as _;
            let file = std::fs::OpenOptions::new()
                .mode(0o600)
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("opening audit_log {}", path.display()))?;
            Some(Mutex::new(Box::new(file)))
        }
    })
}

/// Runs the server until SIGINT or SIGTERM; `config.listen` and `config.db` must be set.
pub async fn run(config: ServeConfig) -> anyhow::Result<()> {
    let listen = config.listen.context("no listen address: give --listen or serve.listen")?;
    let db = config.db.clone().context("no database: give --db or serve.db")?;
    let files = raise_open_files_limit();
    if (files as usize) < config.max_connections + 64 {
        warn!(
            open_files = files,
            max_connections = config.max_connections,
            "the open-files limit is below max_connections"
        );
    }
    let store = Arc::new(tokio::task::spawn_blocking(move || RecordStore::open(&db)).await??);
    let (tls, mtls) = match &config.tls {
        Some(tls) => {
            let (server_config, mtls) = super::tls::server_config(tls)?;
            (Some(tokio_rustls::TlsAcceptor::from(server_config)), mtls)
        }
        None => (None, false),
    };
    let socket = if listen.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(listen).with_context(|| format!("binding {listen}"))?;
    let listener = socket.listen(4096).with_context(|| format!("listening on {listen}"))?;
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let server = Arc::new(Server {
        audit: open_audit(&config.audit_log)?,
        config,
        store,
        tls,
        mtls,
        throttle: Mutex::new(HashMap::new()),
        checks: Mutex::new(HashMap::new()),
        argon2_slots: Semaphore::new(cpus),
        per_address: Mutex::new(HashMap::new()),
    });
    info!(
        address = %listener.local_addr()?,
        database = %server.store.path().display(),
        transport = if server.mtls { "mtls" } else if server.tls.is_some() { "tls" } else { "plain" },
        "tinyids server listening"
    );
    let flusher = tokio::spawn(flush_checks_every_second(server.clone()));
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    serve(listener, server.clone(), async move {
        tokio::select! {
            _ = sigterm.recv() => {}
            _ = sigint.recv() => {}
        }
    })
    .await;
    flusher.abort();
    let server_for_flush = server.clone();
    let _ = tokio::task::spawn_blocking(move || server_for_flush.flush_checks()).await;
    info!("tinyids server stopped");
    Ok(())
}

async fn serve(listener: TcpListener, server: Arc<Server>, shutdown: impl std::future::Future<Output = ()>) {
    let connections = Arc::new(Semaphore::new(server.config.max_connections));
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // EMFILE and the like: wait for connections to close instead of spinning.
                warn!(error = %e, "accepting a connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(address_slot) = server.address_slot(peer.ip()) else {
            server.refuse(
                peer,
                format!(
                    "per-address connection limit reached ({} from this address)",
                    server.config.max_connections_per_address
                ),
            );
            drop(stream);
            continue;
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            server.refuse(peer, "connection limit reached".into());
            drop(stream);
            continue;
        };
        let server = server.clone();
        tokio::spawn(async move {
            server.connection(stream, peer).await;
            drop(permit);
            drop(address_slot);
        });
    }
    // Let connections in flight finish (bounded by the read timeout).
    let _ = tokio::time::timeout(
        server.config.read_timeout + Duration::from_secs(1),
        connections.acquire_many(server.config.max_connections as u32),
    )
    .await;
}

/// A client's address with IPv4-mapped IPv6 addresses as IPv4, so that one host is one address
/// whichever way it connects.
fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

/// The identity of a plain-mode client: its address, IPv4-mapped addresses as IPv4.
pub fn ip_identity(ip: IpAddr) -> String {
    canonical_ip(ip).to_string()
}

impl Server {
    /// One of `ip`'s connection slots, or `None` when it has `max_connections_per_address` open.
    fn address_slot(self: &Arc<Self>, ip: IpAddr) -> Option<AddressSlot> {
        let address = canonical_ip(ip);
        let mut open = self.per_address.lock().unwrap_or_else(|p| p.into_inner());
        let count = open.entry(address).or_insert(0);
        if *count >= self.config.max_connections_per_address {
            return None;
        }
        *count += 1;
        Some(AddressSlot { server: self.clone(), address })
    }

    fn transport(&self) -> &'static str {
        if self.mtls {
            "mtls"
        } else if self.tls.is_some() {
            "tls"
        } else {
            "plain"
        }
    }

    /// Audits a connection closed at once, unread, because a cap was reached.
    fn refuse(&self, peer: SocketAddr, why: String) {
        self.audit(None, peer, None, None, "refused", false, Some(why), Instant::now());
    }

    #[allow(clippy::too_many_arguments)]
    fn audit(
        &self,
        client: Option<&str>,
        peer: SocketAddr,
        command: Option<&'static str>,
        reply: Option<Reply>,
        result: &str,
        throttled: bool,
        error: Option<String>,
        started: Instant,
    ) {
        let Some(audit) = &self.audit else { return };
        let record = AuditRecord {
            time: crate::store::now(),
            client,
            peer: peer.to_string(),
            transport: self.transport(),
            command,
            code: reply.map(Reply::code),
            result,
            throttled,
            error,
            ms: (started.elapsed().as_secs_f64() * 1e6).round() / 1e3,
        };
        let Ok(mut line) = serde_json::to_vec(&record) else { return };
        line.push(b'\n');
        let mut out = audit.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = out.write_all(&line).and_then(|()| out.flush()) {
            warn!(error = %e, "writing the audit log");
        }
    }

    async fn connection(self: &Arc<Self>, stream: TcpStream, peer: SocketAddr) {
        let started = Instant::now();
        let _ = stream.set_nodelay(true);
        match &self.tls {
            None => self.exchange(stream, ip_identity(peer.ip()), peer, started).await,
            Some(acceptor) => {
                let handshake = tokio::time::timeout(self.config.read_timeout, acceptor.accept(stream)).await;
                let stream = match handshake {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => {
                        self.audit(None, peer, None, None, "tls_error", false, Some(e.to_string()), started);
                        return;
                    }
                    Err(_) => {
                        self.audit(None, peer, None, None, "timeout", false, Some("TLS handshake".into()), started);
                        return;
                    }
                };
                let identity = if self.mtls {
                    match stream.get_ref().1.peer_certificates().and_then(|certs| certs.first()) {
                        Some(cert) => {
                            format!("cert:{}", crate::integrity::hex(&super::tls::fingerprint(cert.as_ref())))
                        }
                        None => {
                            self.audit(
                                None,
                                peer,
                                None,
                                None,
                                "tls_error",
                                false,
                                Some("no client certificate".into()),
                                started,
                            );
                            return;
                        }
                    }
                } else {
                    ip_identity(peer.ip())
                };
                self.exchange(stream, identity, peer, started).await;
            }
        }
    }

    /// Reads the request, answers it, closes.
    async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
        self: &Arc<Self>,
        mut stream: S,
        client: String,
        peer: SocketAddr,
        started: Instant,
    ) {
        let outcome = match codec::read_line(&mut stream, self.config.max_line, self.config.read_timeout).await {
            Ok(outcome) => outcome,
            Err(e) => {
                self.audit(Some(&client), peer, None, None, "read_error", false, Some(e.to_string()), started);
                return;
            }
        };
        let unread_input = outcome == ReadOutcome::TooLong;
        let (command, reply, result, throttled, error) = match outcome {
            // The original server reads an empty line then, which is no command: it answers 41.
            ReadOutcome::Closed => {
                (None, Reply::InvalidCommand, "invalid_command", false, Some("closed without a request line".into()))
            }
            ReadOutcome::TimedOut => {
                self.audit(Some(&client), peer, None, None, "timeout", false, None, started);
                return;
            }
            ReadOutcome::TooLong => (
                None,
                Reply::InvalidCommand,
                "invalid_command",
                false,
                Some(format!("line longer than {} bytes", self.config.max_line)),
            ),
            ReadOutcome::Line(line) => match codec::parse(&line) {
                Err(e) => (None, Reply::InvalidCommand, "invalid_command", false, Some(e.to_string())),
                Ok(request) => {
                    let command = request.command();
                    match self.execute(&client, request).await {
                        Ok((reply, throttled)) => (Some(command), reply, reply.name(), throttled, None),
                        Err(e) => {
                            // Nothing was acknowledged; the client sees the connection close.
                            warn!(client, command, error = crate::error_text::one_line(e.as_ref()), "request failed");
                            self.audit(
                                Some(&client),
                                peer,
                                Some(command),
                                None,
                                "server_error",
                                false,
                                Some(crate::error_text::one_line(e.as_ref())),
                                started,
                            );
                            return;
                        }
                    }
                }
            },
        };
        let written = async {
            stream.write_all(reply.wire()).await?;
            stream.flush().await?;
            stream.shutdown().await?;
            if unread_input {
                // Closing with unread input makes the kernel send a reset, which can destroy the
                // reply before the client reads it: read (and drop) a bounded amount first.
                let mut sink = [0u8; 4096];
                let mut drained = 0usize;
                let drain = async {
                    while drained < DRAIN_LIMIT {
                        match tokio::io::AsyncReadExt::read(&mut stream, &mut sink).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => drained += n,
                        }
                    }
                };
                let _ = tokio::time::timeout(DRAIN_TIME, drain).await;
            }
            Ok::<(), std::io::Error>(())
        };
        let write_error = match tokio::time::timeout(self.config.read_timeout, written).await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some("writing the reply timed out".into()),
        };
        self.audit(Some(&client), peer, command, Some(reply), result, throttled, error.or(write_error), started);
    }

    /// The reply to a request, and whether it was refused by the throttle.
    async fn execute(self: &Arc<Self>, client: &str, request: Request) -> anyhow::Result<(Reply, bool)> {
        if request.has_passphrase() && self.locked(client) {
            return Ok((Reply::InvalidPassphrase, true));
        }
        let reply = match request {
            Request::Test { revision } => Request::test_reply(revision.as_deref()),
            Request::Check { hash } => self.check(client, &hash)?,
            Request::Update { hash, passphrase } => self.update(client, hash, passphrase).await?,
            Request::Delete { passphrase } => self.delete(client, passphrase).await?,
            Request::ChangePhrase { old, new } => self.change_passphrase(client, old, new).await?,
        };
        if reply == Reply::InvalidPassphrase {
            self.note_failure(client);
        }
        Ok((reply, false))
    }

    fn check(&self, client: &str, hash: &str) -> anyhow::Result<Reply> {
        let Some(record) = self.store.get(client)? else { return Ok(Reply::NotFound) };
        let reply = if bool::from(record.hash.as_bytes().ct_eq(hash.as_bytes())) { Reply::Ok } else { Reply::Mismatch };
        self.checks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(client.to_string(), (crate::store::now(), reply.name()));
        Ok(reply)
    }

    async fn blocking<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> anyhow::Result<T> {
        Ok(tokio::task::spawn_blocking(work).await?)
    }

    async fn hash_passphrase(&self, passphrase: String) -> anyhow::Result<String> {
        let _slot = self.argon2_slots.acquire().await?;
        Ok(self.blocking(move || store::hash_passphrase(&passphrase)).await??)
    }

    async fn verify(&self, passphrase: &str, stored: String) -> anyhow::Result<bool> {
        let _slot = self.argon2_slots.acquire().await?;
        let passphrase = passphrase.to_string();
        self.blocking(move || store::verify_passphrase(&passphrase, &stored)).await
    }

    async fn write(
        &self,
        work: impl FnOnce(&RecordStore) -> Result<Written, store::RecordStoreError> + Send + 'static,
    ) -> anyhow::Result<Written> {
        let store = self.store.clone();
        Ok(self.blocking(move || work(&store)).await??)
    }

    /// A few rounds at most: each retry means another request changed the record meanwhile.
    const ROUNDS: usize = 4;

    async fn update(&self, client: &str, hash: String, passphrase: String) -> anyhow::Result<Reply> {
        for _ in 0..Self::ROUNDS {
            let owned_client = client.to_string();
            match self.store.get(client)? {
                None => {
                    let phc = self.hash_passphrase(passphrase.clone()).await?;
                    let hash = hash.clone();
                    match self.write(move |s| s.insert(&owned_client, &hash, &phc)).await? {
                        Written::Done => return Ok(Reply::Ok),
                        _ => continue,
                    }
                }
                Some(record) => {
                    if !self.verify(&passphrase, record.passphrase.clone()).await? {
                        return Ok(Reply::InvalidPassphrase);
                    }
                    let hash = hash.clone();
                    match self.write(move |s| s.update_hash(&owned_client, &record.passphrase, &hash)).await? {
                        Written::Done => return Ok(Reply::Ok),
                        _ => continue,
                    }
                }
            }
        }
        anyhow::bail!("the record of {client} kept changing during UPDATE")
    }

    async fn delete(&self, client: &str, passphrase: String) -> anyhow::Result<Reply> {
        for _ in 0..Self::ROUNDS {
            let Some(record) = self.store.get(client)? else { return Ok(Reply::NotFound) };
            if !self.verify(&passphrase, record.passphrase.clone()).await? {
                return Ok(Reply::InvalidPassphrase);
            }
            let owned_client = client.to_string();
            match self.write(move |s| s.delete_checked(&owned_client, &record.passphrase)).await? {
                Written::Done => return Ok(Reply::Ok),
                Written::Missing => return Ok(Reply::NotFound),
                _ => continue,
            }
        }
        anyhow::bail!("the record of {client} kept changing during DELETE")
    }

    async fn change_passphrase(&self, client: &str, old: String, new: String) -> anyhow::Result<Reply> {
        for _ in 0..Self::ROUNDS {
            let Some(record) = self.store.get(client)? else { return Ok(Reply::NotFound) };
            if !self.verify(&old, record.passphrase.clone()).await? {
                return Ok(Reply::InvalidPassphrase);
            }
            let phc = self.hash_passphrase(new.clone()).await?;
            let owned_client = client.to_string();
            match self.write(move |s| s.update_passphrase(&owned_client, &record.passphrase, &phc)).await? {
                Written::Done => return Ok(Reply::Ok),
                Written::Missing => return Ok(Reply::NotFound),
                _ => continue,
            }
        }
        anyhow::bail!("the record of {client} kept changing during CHANGEPHRASE")
    }

    /// Whether the client is locked out now.
    fn locked(&self, client: &str) -> bool {
        let mut throttle = self.throttle.lock().unwrap_or_else(|p| p.into_inner());
        let Some(failures) = throttle.get_mut(client) else { return false };
        match failures.locked_until {
            Some(until) if Instant::now() < until => true,
            Some(_) => {
                throttle.remove(client);
                false
            }
            None => false,
        }
    }

    fn note_failure(&self, client: &str) {
        let now = Instant::now();
        let mut throttle = self.throttle.lock().unwrap_or_else(|p| p.into_inner());
        let failures = throttle.entry(client.to_string()).or_default();
        while failures.times.front().is_some_and(|t| now.duration_since(*t) > self.config.failure_window) {
            failures.times.pop_front();
        }
        failures.times.push_back(now);
        if failures.locked_until.is_none() && failures.times.len() >= self.config.max_failures as usize {
            failures.locked_until = Some(crate::time::deadline_after(now, self.config.lockout));
            warn!(
                client,
                failures = failures.times.len(),
                lockout_s = self.config.lockout.as_secs(),
                "passphrase failed too often: the client gets 42 without a check until the lockout ends"
            );
        }
    }

    /// Drops throttle entries that can no longer matter.
    fn prune_throttle(&self) {
        let now = Instant::now();
        let window = self.config.failure_window;
        self.throttle.lock().unwrap_or_else(|p| p.into_inner()).retain(|_, failures| match failures.locked_until {
            Some(until) => now < until,
            None => failures.times.back().is_some_and(|t| now.duration_since(*t) <= window),
        });
    }

    fn flush_checks(&self) {
        let batch: Vec<(String, String, &'static str)> = {
            let mut checks = self.checks.lock().unwrap_or_else(|p| p.into_inner());
            checks.drain().map(|(client, (time, result))| (client, time, result)).collect()
        };
        if !batch.is_empty()
            && let Err(e) = self.store.record_checks(&batch)
        {
            warn!(error = %e, "recording the last CHECK of clients");
        }
    }
}

async fn flush_checks_every_second(server: Arc<Server>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let server = server.clone();
        let _ = tokio::task::spawn_blocking(move || {
            server.flush_checks();
            server.prune_throttle();
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_identity_is_the_address_with_mapped_ipv6_as_ipv4() {
        assert_eq!(ip_identity("10.1.2.3".parse().unwrap()), "10.1.2.3");
        assert_eq!(ip_identity("::ffff:10.1.2.3".parse().unwrap()), "10.1.2.3");
        assert_eq!(ip_identity("fd00::7".parse().unwrap()), "fd00::7");
    }
}
