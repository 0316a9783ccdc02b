//! `ids run`: starts the sensor, writes events, runs the integrity worker (`crate::monitor`) and
//! the detect worker (`crate::detect`), applies bans (`crate::bans`: control requests, the port
//! scan detector's and the log detectors' requests, expiry), answers the control socket, and on
//! SIGINT/SIGTERM detaches the programs, flushes the events
//! log and returns.
use std::io::Write;
use std::os::unix::fs::DirBuilderExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::bans::{BanRequest, Bans};
use crate::config::{Config, EventsLog};
use crate::control::{self, Reply, Request};
use crate::detect::{self, DetectEvents};
use crate::event::{self, Clock, Detail};
use crate::integrity::Trigger;
use crate::monitor::{self, Control, FileEvents, SharedOutput};
use crate::sensor::decode::RawEvent;
use crate::sensor::hooks::signal_name;
use crate::sensor::watch::WatchSet;
use crate::sensor::{self, Sensor, Stats};

/// Ban requests the detectors may queue before they report a request as not delivered.
const BAN_QUEUE: usize = 1024;

/// Counters of the events writer.
#[derive(Debug, Default)]
struct WriterStats {
    written: AtomicU64,
    unresolved: AtomicU64,
    watched_inodes: AtomicU64,
}

pub async fn run(config: Config) -> anyhow::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&config.state_dir)
        .with_context(|| format!("creating state_dir {}", config.state_dir.display()))?;
    let output: SharedOutput = Arc::new(Mutex::new(open_events_log(&config.events_log)?));
    let listener = control::bind(&config.control_socket()).await?;

    // The worker is built first (collectors, database) so that a bad one stops the start; it
    // scans once the sensor is attached, so no change made during the scan is missed.
    let mut integrity = monitor::spawn(&config, output.clone())?;
    // Ban requests of the log detectors; the main loop hands them to the ban path.
    let (detect_tx, mut detect_rx) = mpsc::channel::<detect::BanRequest>(BAN_QUEUE);
    let detect = detect::spawn(&config, output.clone(), detect_tx)?;
    let mut sensor_config = config.clone();
    sensor_config.watch = integrity.watch.clone();
    for path in &detect.watch {
        if !sensor_config.watch.iter().any(|w| path.starts_with(w)) {
            sensor_config.watch.push(path.clone());
        }
    }
    let detect_shared = detect.shared.clone();
    let detect_events = detect.events;
    let (mut sensor, watch, rings) = Sensor::start(&sensor_config)?;
    // The pinned maps may have outlived an earlier run: make them equal to the store before the
    // new program takes over the interfaces.
    let mut bans = Bans::open(&config, sensor.ban_maps.take())?;
    bans.reconcile()?;
    sensor.attach_new_interfaces();
    // Detectors send ban requests here (`crate::bans::BanSender`).
    let (ban_tx, mut ban_rx) = mpsc::channel::<BanRequest>(4096);
    let scan_stats = Arc::new(crate::bans::scan::ScanStats::default());
    let scan_reader = sensor.scan_reports.take().map(|ring| {
        tokio::spawn(crate::bans::scan::read(ring, ban_tx.clone(), config.bans.scan_duration, scan_stats.clone()))
    });
    integrity.begin();
    let integrity_shared = integrity.shared.clone();
    let remote_check =
        crate::tinyids::remote_check::spawn(&config, integrity_shared.watch_aggregate(), output.clone())?;
    let file_events = integrity.files;
    let started = Instant::now();
    let stats = Arc::new(Stats::default());
    let writer_stats = Arc::new(WriterStats::default());
    writer_stats.watched_inodes.store(watch.inode_count() as u64, Ordering::Relaxed);
    let roots: Vec<String> = watch.roots().iter().map(|p| p.display().to_string()).collect();

    let (tx, rx) = mpsc::channel(config.channel_capacity);
    let mut readers = Vec::new();
    for (signal, ring) in rings {
        readers.push(tokio::spawn(sensor::read_ring(signal, ring, tx.clone(), stats.clone())));
    }
    drop(tx);
    let writer = tokio::task::spawn_blocking({
        let writer_stats = writer_stats.clone();
        move || write_events(rx, watch, output, file_events, detect_events, &writer_stats)
    });

    let (control_tx, mut control_rx) = mpsc::channel::<(Request, Reply)>(16);
    let control_task = tokio::spawn(control::serve(listener, control_tx));
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    // Links and addresses are looked at again when the kernel reports a change (and every minute
    // in case a report was lost); without the notifications, every 2 s.
    let mut links = crate::bans::links::LinkChanges::open()
        .map_err(|e| warn!(error = %e, "no link notifications; interfaces and addresses are polled every 2 s"))
        .ok();
    let mut rescan =
        tokio::time::interval(if links.is_some() { Duration::from_secs(60) } else { Duration::from_secs(2) });
    let mut hits_snapshot = tokio::time::interval(Duration::from_secs(10));
    info!(socket = %config.control_socket().display(), "sensor running");
    loop {
        // Expired bans leave at their expiry: the loop sleeps until the next one is due (at
        // most a minute, so that a clock step is caught up with; at least 50 ms, so that a failing
        // store is not retried in a busy loop), and not at all for none.
        let expiry = bans
            .until_next_expiry()
            .map_or(Duration::from_secs(3600), |wait| wait.clamp(Duration::from_millis(50), Duration::from_secs(60)));
        tokio::select! {
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            Some((request, reply)) = control_rx.recv() => {
                match request {
                    Request::Status => {
                        let mut answer = status(&sensor, &stats, &writer_stats, &integrity_shared, &roots, started);
                        answer["xdp"] = xdp_status(&sensor, &mut bans, &scan_stats, &config);
                        answer["detect"] = detect_shared.status();
                        let _ = reply.send(answer);
                    }
                    request @ (Request::Ban { .. } | Request::Unban { .. } | Request::Bans | Request::Alerts { .. }) => {
                        let _ = reply.send(crate::bans::cli::answer(&mut bans, &request));
                    }
                    // The worker answers these itself, so a long rehash never blocks this loop.
                    Request::Baseline => forward(&integrity.waker, Control::Baseline, reply),
                    Request::Diff => forward(&integrity.waker, Control::Diff, reply),
                }
            }
            Some(request) = detect_rx.recv() => {
                let addr = request.addr;
                if let Err(e) = bans.ban(request.to_ban()) {
                    warn!(%addr, error = %e, "ban request of a log detector refused");
                }
            }
            changed = async { links.as_mut().expect("guarded").changed().await }, if links.is_some() => {
                if let Err(e) = changed {
                    warn!(error = %e, "link notifications failed; interfaces and addresses are polled every 2 s");
                    links = None;
                    rescan = tokio::time::interval(Duration::from_secs(2));
                }
                rescan_links(&mut sensor, &mut bans);
            }
            _ = rescan.tick() => rescan_links(&mut sensor, &mut bans),
            Some(request) = ban_rx.recv() => {
                let net = request.net;
                if let Err(e) = bans.ban(request) {
                    warn!(%net, error = %e, "ban request refused");
                }
            }
            _ = tokio::time::sleep(expiry) => {
                if let Err(e) = bans.expire() {
                    warn!(error = %e, "expiring bans");
                }
            }
            _ = hits_snapshot.tick() => {
                if let Err(e) = bans.snapshot_hits() {
                    warn!(error = %e, "storing ban hit counters");
                }
            }
        }
    }
    info!("shutting down");
    if let Some(reader) = scan_reader {
        reader.abort();
    }
    drop(ban_tx);
    let _ = bans.snapshot_hits();
    control_task.abort();
    if let Some(remote_check) = remote_check {
        remote_check.abort();
    }
    // Detach first, then let the readers empty what is already in the ring buffers.
    drop(sensor);
    tokio::time::sleep(Duration::from_millis(100)).await;
    for reader in readers {
        reader.abort();
    }
    match tokio::time::timeout(Duration::from_secs(10), writer).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => warn!(error = format!("{e:#}"), "events writer failed"),
        Ok(Err(e)) => warn!(error = %e, "events writer panicked"),
        Err(_) => warn!("events writer did not finish within 10 s"),
    }
    // The writer dropped its handle, so the worker stops after its current step; a long scan
    // is not waited for.
    integrity.waker.stop();
    detect.stop.store(true, Ordering::Relaxed);
    let detect_thread = detect.thread;
    let _ =
        tokio::time::timeout(Duration::from_secs(5), tokio::task::spawn_blocking(move || detect_thread.join())).await;
    let worker = integrity.thread;
    let _ = tokio::time::timeout(Duration::from_secs(5), tokio::task::spawn_blocking(move || worker.join())).await;
    let _ = std::fs::remove_file(config.control_socket());
    Ok(())
}

/// `status.xdp`: where the ban filter runs, how many bans it holds, what the scan detector reported.
fn xdp_status(
    sensor: &Sensor,
    bans: &mut Bans,
    scan: &crate::bans::scan::ScanStats,
    config: &Config,
) -> serde_json::Value {
    let interfaces: Vec<serde_json::Value> =
        sensor.xdp.attached.iter().map(|(name, mode)| serde_json::json!({"name": name, "mode": mode.name()})).collect();
    let count = bans.store().bans().map(|b| b.len()).unwrap_or(0);
    serde_json::json!({
        "interfaces": interfaces,
        "pin_dir": config.xdp.pin_dir,
        "bans": count,
        "scan_reports": scan.reports.load(Ordering::Relaxed),
        "scan_reports_dropped": scan.dropped.load(Ordering::Relaxed),
    })
}

/// New interfaces get the XDP program; `[xdp] trust_local`: addresses added to or removed from
/// this host since are trusted or no longer.
fn rescan_links(sensor: &mut sensor::Sensor, bans: &mut crate::bans::Bans) {
    sensor.attach_new_interfaces();
    if let Err(e) = bans.refresh_local_addresses() {
        warn!(error = %e, "updating this host's trusted addresses");
    }
}

fn forward(worker: &monitor::Waker, request: fn(control::Reply) -> Control, reply: control::Reply) {
    if let Err(unsent) = worker.request(request(reply)) {
        let (Control::Baseline(reply) | Control::Diff(reply)) = unsent;
        let _ = reply.send(serde_json::json!({"ok": false, "error": "the integrity worker has stopped"}));
    }
}

fn open_events_log(log: &EventsLog) -> anyhow::Result<Box<dyn Write + Send>> {
    Ok(match log {
        EventsLog::Stdout => Box::new(std::io::stdout()),
        EventsLog::File(path) => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            }
            Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .with_context(|| format!("opening events_log {}", path.display()))?,
            )
        }
    })
}

/// Turns records into JSON lines; writes them out whenever the queue runs dry or 64 KiB are
/// waiting. The paths of file events go to the integrity worker (no hashing here).
fn write_events(
    mut rx: mpsc::Receiver<RawEvent>,
    mut watch: WatchSet,
    output: SharedOutput,
    file_events: FileEvents,
    detect_events: DetectEvents,
    stats: &WriterStats,
) -> anyhow::Result<()> {
    let clock = Clock::new();
    let mut out: Vec<u8> = Vec::with_capacity(1 << 16);
    let flush = |out: &mut Vec<u8>| -> anyhow::Result<()> {
        let mut output = monitor::lock_output(&output);
        output.write_all(out).context("writing events log")?;
        output.flush().context("flushing events log")?;
        out.clear();
        Ok(())
    };
    let mut line = Vec::with_capacity(1024);
    while let Some(first) = rx.blocking_recv() {
        let mut next = Some(first);
        while let Some(raw) = next {
            let event = match &raw {
                RawEvent::Exec(e) => Some(event::exec(&clock, e)),
                RawEvent::Connect(e) => Some(event::connect(&clock, e)),
                RawEvent::Module(e) => Some(event::module(&clock, e)),
                RawEvent::File(e) => watch.to_event(&clock, e),
            };
            if let Some(event) = event {
                match &event.detail {
                    Detail::File { op, path, new_path, .. } => {
                        file_events.note(op, path, new_path.as_deref());
                        detect_events.note_file(op, path, new_path.as_deref());
                    }
                    Detail::Exec { .. } => detect_events.note_exec(&event),
                    Detail::Listen { .. } => file_events.note_trigger(Trigger::ListeningSockets),
                    Detail::Module { .. } => file_events.note_trigger(Trigger::KernelModules),
                    _ => {}
                }
                line.clear();
                serde_json::to_writer(&mut line, &event)?;
                line.push(b'\n');
                out.extend_from_slice(&line);
                stats.written.fetch_add(1, Ordering::Relaxed);
                if out.len() >= 1 << 16 {
                    flush(&mut out)?;
                }
            }
            next = rx.try_recv().ok();
        }
        flush(&mut out)?;
        stats.unresolved.store(watch.unresolved(), Ordering::Relaxed);
        stats.watched_inodes.store(watch.inode_count() as u64, Ordering::Relaxed);
    }
    flush(&mut out)?;
    Ok(())
}

fn status(
    sensor: &Sensor,
    stats: &Stats,
    writer: &WriterStats,
    integrity: &monitor::Shared,
    roots: &[String],
    started: Instant,
) -> serde_json::Value {
    let signals: Vec<serde_json::Value> = sensor::all_signals()
        .into_iter()
        .map(|signal| {
            let name = signal_name(signal);
            let counters = stats.of(signal);
            let lost_in_kernel = sensor.kernel_lost(signal);
            let dropped = counters.dropped.load(Ordering::Relaxed);
            serde_json::json!({
                "signal": name,
                "hook": sensor.hooks.get(name).copied().unwrap_or("none"),
                "received": counters.received.load(Ordering::Relaxed),
                "lost": lost_in_kernel + dropped,
                "lost_in_kernel": lost_in_kernel,
                "dropped": dropped,
                "malformed": counters.malformed.load(Ordering::Relaxed),
            })
        })
        .collect();
    let (aggregate, integrity) = integrity.status();
    let errors: std::collections::BTreeMap<&str, u64> = sensor.program_errors().into_iter().collect();
    serde_json::json!({
        "ok": true,
        "pid": std::process::id(),
        "uptime_s": started.elapsed().as_secs(),
        "signals": signals,
        "errors": errors,
        "incoming": {"hook": format!("xdp:{}", crate::bans::kernel::PROGRAM), "interfaces": sensor.syn_interfaces()},
        "watch": {
            "roots": roots,
            "inodes": writer.watched_inodes.load(Ordering::Relaxed),
            "unresolved": writer.unresolved.load(Ordering::Relaxed),
        },
        "events_written": writer.written.load(Ordering::Relaxed),
        "aggregate": aggregate,
        "integrity": integrity,
    })
}
