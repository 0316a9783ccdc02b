//! Area `server`: the TinyIDS server (`ids serve`) over loopback, beside a minimal tokio server
//! that accepts, answers `20 OK` and closes (the cost of the kernel's TCP and of TLS alone,
//! with no protocol, database or audit log), in the same run:
//!
//! 1. **CHECK throughput**: [`CLIENTS`] concurrent clients, one connection per command, each
//!    sending `CHECK <its stored hash>` and reading the reply to EOF, for [`ROUND`] after a
//!    warm-up; plain TCP and TLS 1.3 (full handshakes: the clients keep no session). The peer
//!    and `ids serve` alternate, [`ROUNDS`] rounds each; medians of throughput and of the
//!    rounds' p50/p99 latency. Every client has its own loopback address (127.0.1.x) and a
//!    record stored beforehand, so each CHECK finds its record. `ids serve` writes its audit log
//!    to a file, as in production. The peer runs in the bench process on its own 2-thread
//!    runtime; the load generator on another.
//! 2. **Idle connections**: [`IDLE`] connections that send nothing, against `ids serve` with a
//!    read timeout of [`IDLE_TIMEOUT`]: the server's RSS before, with all of them open, and
//!    after they are closed; when the last was closed; and the latency of a real CHECK made
//!    while they are all open.
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::{Machine, append_to_benchmarks, build_release, load_average, median, thousands, utc_timestamp};

const CLIENTS: usize = 64;
const WARMUP: Duration = Duration::from_secs(1);
const ROUND: Duration = Duration::from_secs(5);
const ROUNDS: usize = 3;
const IDLE: usize = 10_000;
const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
const TARGET_PLAIN: f64 = 10_000.0;
const TARGET_TLS: f64 = 2_000.0;
const TARGET_IDLE_CHECK: Duration = Duration::from_secs(1);

/// A 64-hex-digit hash as the sensor sends.
fn hash_of(client: usize) -> String {
    format!("{:064x}", 0x1d5_u64.wrapping_mul(client as u64 + 1))
}

fn client_address(client: usize) -> std::net::IpAddr {
    std::net::IpAddr::from([127, 0, 1, 1 + client as u8])
}

struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Certificates of one run: a CA and a server certificate for 127.0.0.1.
struct Pki {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    certs: Vec<rustls::pki_types::CertificateDer<'static>>,
    key_der: rustls::pki_types::PrivateKeyDer<'static>,
    roots: rustls::RootCertStore,
}

fn make_pki(dir: &Path) -> anyhow::Result<Pki> {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "bench CA");
    ca_params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::DigitalSignature];
    let ca_key = rcgen::KeyPair::generate()?;
    let ca = ca_params.self_signed(&ca_key)?;
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()])?;
    params.subject_alt_names.push(rcgen::SanType::IpAddress([127, 0, 0, 1].into()));
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let key = rcgen::KeyPair::generate()?;
    let cert = params.signed_by(&key, &ca, &ca_key)?;
    let pki = Pki {
        ca: dir.join("ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
        certs: vec![cert.der().clone()],
        key_der: rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).map_err(|e| anyhow::anyhow!("{e}"))?,
        roots: {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca.der().clone())?;
            roots
        },
    };
    std::fs::write(&pki.ca, ca.pem())?;
    std::fs::write(&pki.cert, cert.pem())?;
    std::fs::write(&pki.key, key.serialize_pem())?;
    Ok(pki)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_connector(pki: &Pki) -> anyhow::Result<tokio_rustls::TlsConnector> {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(pki.roots.clone())
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

fn tls_acceptor(pki: &Pki) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(pki.certs.clone(), pki.key_der.clone_key())?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

fn runtime(threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build()?)
}

/// Raises the open-files soft limit to the hard limit; returns the new soft limit.
fn raise_open_files() -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
    limit.rlim_cur
}

/// A running `ids serve`.
struct IdsServer {
    child: Child,
    address: SocketAddr,
}

impl IdsServer {
    fn start(ids: &Path, dir: &Path, tls: Option<&Pki>, read_timeout: Duration) -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let address = SocketAddr::from(([127, 0, 0, 1], port));
        let config = dir.join("serve.toml");
        let mut text = format!(
            "watch = []\nevents_log = \"-\"\nstate_dir = {:?}\n[serve]\nmax_connections = {}\nread_timeout = {}\n",
            dir.join("state").display().to_string(),
            IDLE + 2_000,
            read_timeout.as_secs_f64()
        );
        if let Some(pki) = tls {
            write!(text, "[serve.tls]\ncert = {:?}\nkey = {:?}\n", pki.cert, pki.key)?;
        }
        std::fs::write(&config, text)?;
        let child = Command::new(ids)
            .args(["serve", "--listen", &address.to_string(), "--db"])
            .arg(dir.join("records.db"))
            .arg("--audit-log")
            .arg(dir.join("audit.jsonl"))
            .arg("--config")
            .arg(&config)
            .env("IDS_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", ids.display()))?;
        let mut server = Self { child, address };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(address).is_err() {
            ensure!(server.child.try_wait()?.is_none(), "ids serve exited during start");
            ensure!(Instant::now() < deadline, "ids serve did not listen within 20 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(server)
    }

    fn rss_kib(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .context("VmRSS missing from /proc/PID/status")
    }
}

impl Drop for IdsServer {
    fn drop(&mut self) {
        // SAFETY: signals our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The peer: accept, (handshake,) reply `20 OK`, close. No request is read.
fn start_peer(tls: Option<tokio_rustls::TlsAcceptor>) -> anyhow::Result<(tokio::runtime::Runtime, SocketAddr)> {
    let rt = runtime(2)?;
    let listener = rt.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.set_reuseaddr(true)?;
        socket.bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        socket.listen(4096)
    })?;
    let address = listener.local_addr()?;
    rt.spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else { continue };
            let tls = tls.clone();
            tokio::spawn(async move {
                let _ = stream.set_nodelay(true);
                match tls {
                    None => {
                        let _ = stream.write_all(b"20 OK\r\n").await;
                        let _ = stream.shutdown().await;
                    }
                    Some(acceptor) => {
                        if let Ok(mut stream) = acceptor.accept(stream).await {
                            let _ = stream.write_all(b"20 OK\r\n").await;
                            let _ = stream.shutdown().await;
                        }
                    }
                }
            });
        }
    });
    Ok((rt, address))
}

/// One CHECK from `source`: connect, (handshake,) send, read to EOF; whether the reply was 20.
async fn one_check(
    server: SocketAddr,
    source: std::net::IpAddr,
    line: &[u8],
    tls: Option<&tokio_rustls::TlsConnector>,
) -> anyhow::Result<bool> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    let mut stream = socket.connect(server).await?;
    stream.set_nodelay(true)?;
    let mut reply = Vec::with_capacity(16);
    match tls {
        None => {
            stream.write_all(line).await?;
            stream.read_to_end(&mut reply).await?;
        }
        Some(connector) => {
            let name = rustls::pki_types::ServerName::try_from("localhost")?;
            let mut stream = connector.connect(name, stream).await?;
            stream.write_all(line).await?;
            stream.flush().await?;
            loop {
                let mut buf = [0u8; 64];
                match stream.read(&mut buf).await {
                    Ok(0) => break,
                    Ok(n) => reply.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !reply.is_empty() => break,
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    Ok(reply == b"20 OK\r\n")
}

/// One round: completed CHECKs per second, p50 and p99 latency (µs), failures.
#[derive(Debug, Clone, Copy)]
struct Round {
    rate: f64,
    p50_us: f64,
    p99_us: f64,
    failures: u64,
}

fn load_round(server: SocketAddr, tls: Option<tokio_rustls::TlsConnector>) -> anyhow::Result<Round> {
    let rt = runtime(2)?;
    rt.block_on(async move {
        let stop = Arc::new(AtomicBool::new(false));
        let measuring = Arc::new(AtomicBool::new(false));
        let tasks: Vec<_> = (0..CLIENTS)
            .map(|client| {
                let stop = stop.clone();
                let measuring = measuring.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let line = format!("CHECK {}\r\n", hash_of(client)).into_bytes();
                    let mut latencies: Vec<u32> = Vec::with_capacity(1 << 16);
                    let mut failures = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let started = Instant::now();
                        let ok =
                            matches!(one_check(server, client_address(client), &line, tls.as_ref()).await, Ok(true));
                        if measuring.load(Ordering::Relaxed) && !stop.load(Ordering::Relaxed) {
                            if ok {
                                latencies.push(started.elapsed().as_micros().min(u32::MAX as u128) as u32);
                            } else {
                                failures += 1;
                            }
                        }
                    }
                    (latencies, failures)
                })
            })
            .collect();
        tokio::time::sleep(WARMUP).await;
        measuring.store(true, Ordering::SeqCst);
        let started = Instant::now();
        tokio::time::sleep(ROUND).await;
        stop.store(true, Ordering::SeqCst);
        let elapsed = started.elapsed();
        let mut all = Vec::new();
        let mut failures = 0;
        for task in tasks {
            let (latencies, failed) = task.await?;
            all.extend(latencies);
            failures += failed;
        }
        all.sort_unstable();
        let pick = |q: f64| {
            all.get(((all.len() as f64 * q) as usize).min(all.len().saturating_sub(1))).copied().unwrap_or(0) as f64
        };
        Ok(Round { rate: all.len() as f64 / elapsed.as_secs_f64(), p50_us: pick(0.5), p99_us: pick(0.99), failures })
    })
}

/// Stores a record for every client address (UPDATE from that address).
fn seed(server: SocketAddr) -> anyhow::Result<()> {
    runtime(2)?.block_on(async {
        for client in 0..CLIENTS {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind(SocketAddr::new(client_address(client), 0))?;
            let mut stream = socket.connect(server).await?;
            stream.write_all(format!("UPDATE {} bench-passphrase\r\n", hash_of(client)).as_bytes()).await?;
            let mut reply = Vec::new();
            stream.read_to_end(&mut reply).await?;
            ensure!(reply == b"20 OK\r\n", "seeding client {client}: {:?}", String::from_utf8_lossy(&reply));
        }
        Ok(())
    })
}

struct Throughput {
    ids: Vec<Round>,
    peer: Vec<Round>,
}

fn median_of(rounds: &[Round], field: fn(&Round) -> f64) -> f64 {
    median(&rounds.iter().map(field).collect::<Vec<_>>())
}

fn measure_throughput(ids: &Path, dir: &Path, pki: Option<&Pki>) -> anyhow::Result<Throughput> {
    let server = IdsServer::start(ids, dir, pki, Duration::from_secs(10))?;
    let (peer_rt, peer) = start_peer(pki.map(tls_acceptor).transpose()?)?;
    let connector = pki.map(tls_connector).transpose()?;
    let mut result = Throughput { ids: Vec::new(), peer: Vec::new() };
    for round in 0..ROUNDS {
        let label = if pki.is_some() { "TLS" } else { "plain" };
        eprintln!("bench: {label} round {}/{ROUNDS}: peer", round + 1);
        result.peer.push(load_round(peer, connector.clone())?);
        eprintln!("bench: {label} round {}/{ROUNDS}: ids serve", round + 1);
        result.ids.push(load_round(server.address, connector.clone())?);
    }
    peer_rt.shutdown_background();
    drop(server);
    Ok(result)
}

struct Idle {
    wave: usize,
    rss_before_kib: u64,
    rss_open_kib: u64,
    rss_after_kib: u64,
    opened: usize,
    closed_by_server: usize,
    last_closed_after: Duration,
    check_latency: Duration,
    check_ok: bool,
}

/// Two waves of idle connections against one server: the second shows whether the memory of the
/// first is reused (bounded) or grows.
fn measure_idle(ids: &Path, dir: &Path) -> anyhow::Result<Vec<Idle>> {
    let server = IdsServer::start(ids, dir, None, IDLE_TIMEOUT)?;
    std::thread::sleep(Duration::from_millis(300));
    (1..=2).map(|wave| idle_wave(&server, wave)).collect()
}

fn idle_wave(server: &IdsServer, wave: usize) -> anyhow::Result<Idle> {
    let rss_before_kib = server.rss_kib()?;
    let rt = runtime(2)?;
    let address = server.address;
    let (opened, waits, opened_at) = rt.block_on(async {
        let mut streams = Vec::with_capacity(IDLE);
        for i in 0..IDLE {
            // Spread over source addresses so no single one runs short of ports.
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind(SocketAddr::from(([127, 0, 2 + (i / 5000) as u8, 1 + (i % 250) as u8], 0)))?;
            streams.push(socket.connect(address).await.with_context(|| format!("idle connection {i}"))?);
        }
        let opened_at = Instant::now();
        let waits: Vec<_> = streams
            .into_iter()
            .map(|mut stream| {
                tokio::spawn(async move {
                    let mut buf = [0u8; 16];
                    let closed = matches!(stream.read(&mut buf).await, Ok(0) | Err(_));
                    (closed, Instant::now())
                })
            })
            .collect();
        anyhow::Ok((IDLE, waits, opened_at))
    })?;
    std::thread::sleep(Duration::from_millis(500));
    let rss_open_kib = server.rss_kib()?;
    let check_started = Instant::now();
    let check_ok = rt.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(client_address(0), 0))?;
        let mut stream = socket.connect(address).await?;
        stream.write_all(format!("CHECK {}\r\n", hash_of(0)).as_bytes()).await?;
        let mut reply = Vec::new();
        stream.read_to_end(&mut reply).await?;
        anyhow::Ok(reply == b"20 OK\r\n")
    })?;
    let check_latency = check_started.elapsed();
    let results = rt.block_on(async {
        let mut results = Vec::with_capacity(waits.len());
        for wait in waits {
            results.push(tokio::time::timeout(IDLE_TIMEOUT * 3, wait).await);
        }
        results
    });
    let closed: Vec<Instant> =
        results.into_iter().filter_map(|r| r.ok().and_then(|r| r.ok())).filter(|(c, _)| *c).map(|(_, t)| t).collect();
    let last = closed.iter().max().copied().unwrap_or(opened_at);
    std::thread::sleep(Duration::from_millis(500));
    let rss_after_kib = server.rss_kib()?;
    Ok(Idle {
        wave,
        rss_before_kib,
        rss_open_kib,
        rss_after_kib,
        opened,
        closed_by_server: closed.len(),
        last_closed_after: last.saturating_duration_since(opened_at),
        check_latency,
        check_ok,
    })
}

/// `cargo xtask` is a debug build, in which the load generator and the peer (rustls, ring,
/// tokio) would be unoptimized while `ids` is a release build: this builds xtask in release mode
/// and runs the bench there.
fn rerun_in_release(root: &Path) -> anyhow::Result<()> {
    let xtask = super::integrity::release_xtask(root, "the load generator and the peer need optimized code")?;
    let status = Command::new(&xtask)
        .current_dir(root)
        .args(["bench", "server"])
        .status()
        .with_context(|| format!("running {}", xtask.display()))?;
    ensure!(status.success(), "{} bench server failed ({status})", xtask.display());
    Ok(())
}

pub(super) fn bench_server(root: &Path) -> anyhow::Result<()> {
    if cfg!(debug_assertions) {
        return rerun_in_release(root);
    }
    let ids = build_release(root)?;
    let machine = Machine::describe(&ids)?;
    let files = raise_open_files();
    ensure!(
        files as usize >= IDLE + 1_000,
        "the open-files hard limit ({files}) is below {} connections",
        IDLE + 1_000
    );
    let scratch = Scratch(std::env::temp_dir().join(format!("ids-bench-server-{}", std::process::id())));
    std::fs::create_dir_all(&scratch.0)?;
    let pki = make_pki(&scratch.0)?;
    {
        eprintln!("bench: storing a record for each of {CLIENTS} client addresses");
        let server = IdsServer::start(&ids, &scratch.0, None, Duration::from_secs(10))?;
        seed(server.address)?;
    }
    let plain = measure_throughput(&ids, &scratch.0, None)?;
    let tls = measure_throughput(&ids, &scratch.0, Some(&pki))?;
    eprintln!("bench: {IDLE} idle connections");
    let idle = measure_idle(&ids, &scratch.0)?;
    let section = render(&machine, &plain, &tls, &idle);
    print!("{section}");
    append_to_benchmarks(&root.join("BENCHMARKS.md"), &section)?;
    eprintln!("bench: appended to {}", root.join("BENCHMARKS.md").display());
    Ok(())
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "**not met**" }
}

fn render(machine: &Machine, plain: &Throughput, tls: &Throughput, idle: &[Idle]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "\n## {} — server\n", utc_timestamp());
    let _ = writeln!(out, "- Command: `cargo xtask bench server` (release build, as root)");
    let _ = writeln!(
        out,
        "- Machine: Linux {}, {}, {} cores; load average {} before, {} after",
        machine.kernel,
        machine.cpu,
        machine.cores,
        machine.load_before,
        load_average()
    );
    let _ = writeln!(
        out,
        "- Server: {} `ids serve` (audit log to a file); peer: a minimal tokio server that accepts, writes `20 OK` and closes (plain, and with the same rustls TLS 1.3 configuration)",
        machine.ids_version
    );
    let _ = writeln!(
        out,
        "\n### CHECK throughput, one connection per command\n\n{CLIENTS} concurrent clients (distinct 127.0.1.x addresses, each with a stored record), {ROUNDS} rounds of {} s per server after {} s of warm-up, peer and `ids serve` alternating; medians over the rounds. TLS: full TLS 1.3 handshake per command (no resumption), ECDSA P-256 certificate.\n",
        ROUND.as_secs(),
        WARMUP.as_secs()
    );
    let _ = writeln!(out, "| transport | server | CHECK/s | p50 ms | p99 ms | failures | ratio to peer | target | |");
    let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|---:|---|");
    for (label, result, target) in [("plain", plain, TARGET_PLAIN), ("TLS 1.3", tls, TARGET_TLS)] {
        let peer_rate = median_of(&result.peer, |r| r.rate);
        let ids_rate = median_of(&result.ids, |r| r.rate);
        for (name, rounds) in [("peer (accept-reply-close)", &result.peer), ("ids serve", &result.ids)] {
            let rate = median_of(rounds, |r| r.rate);
            let is_ids = std::ptr::eq(rounds, &result.ids);
            let _ = writeln!(
                out,
                "| {label} | {name} | {} | {:.2} | {:.2} | {} | {} | {} | {} |",
                thousands(rate.round() as u64),
                median_of(rounds, |r| r.p50_us) / 1000.0,
                median_of(rounds, |r| r.p99_us) / 1000.0,
                rounds.iter().map(|r| r.failures).sum::<u64>(),
                if is_ids { format!("{:.2}", ids_rate / peer_rate) } else { "1.00".into() },
                if is_ids { format!("≥ {}", thousands(target as u64)) } else { String::new() },
                if is_ids { verdict(ids_rate >= target) } else { "" },
            );
        }
    }
    let mib = |kib: u64| kib as f64 / 1024.0;
    let _ = writeln!(
        out,
        "\n### {} idle connections\n\n`ids serve` with `read_timeout = {}`; the connections send nothing.\n",
        thousands(IDLE as u64),
        IDLE_TIMEOUT.as_secs()
    );
    let _ = writeln!(out, "Two waves, one after the other, against the same server process.\n");
    let _ = writeln!(
        out,
        "| measure | {} |",
        idle.iter().map(|w| format!("wave {}", w.wave)).collect::<Vec<_>>().join(" | ")
    );
    let _ = writeln!(out, "|---|{}", "---:|".repeat(idle.len()));
    let row = |out: &mut String, name: &str, cell: &dyn Fn(&Idle) -> String| {
        let _ = writeln!(out, "| {name} | {} |", idle.iter().map(cell).collect::<Vec<_>>().join(" | "));
    };
    row(&mut out, "server RSS before", &|w| format!("{:.1} MiB", mib(w.rss_before_kib)));
    row(&mut out, "server RSS with all open", &|w| {
        format!(
            "{:.1} MiB ({:+.1} KiB per connection)",
            mib(w.rss_open_kib),
            (w.rss_open_kib as f64 - w.rss_before_kib as f64) / w.opened as f64
        )
    });
    row(&mut out, "server RSS after they were closed", &|w| format!("{:.1} MiB", mib(w.rss_after_kib)));
    row(&mut out, "closed by the server's timeout", &|w| {
        format!("{} of {}", thousands(w.closed_by_server as u64), thousands(w.opened as u64))
    });
    row(&mut out, "last closed, after the last was opened", &|w| format!("{:.1} s", w.last_closed_after.as_secs_f64()));
    row(&mut out, "a real CHECK meanwhile (connect to reply)", &|w| {
        format!(
            "{:.1} ms, {} (target < {} s: {})",
            w.check_latency.as_secs_f64() * 1000.0,
            if w.check_ok { "answered" } else { "**not answered**" },
            TARGET_IDLE_CHECK.as_secs(),
            verdict(w.check_ok && w.check_latency < TARGET_IDLE_CHECK)
        )
    });
    out
}
