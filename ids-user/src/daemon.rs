//! `ids run`: starts the sensor, writes events, answers the control socket, and on SIGINT/SIGTERM
//! detaches the programs, flushes the events log and returns.
use std::io::Write;
use std::os::unix::fs::DirBuilderExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::config::{Config, EventsLog};
use crate::control::{self, Reply, Request};
use crate::event::{self, Clock};
use crate::sensor::decode::RawEvent;
use crate::sensor::hooks::signal_name;
use crate::sensor::watch::WatchSet;
use crate::sensor::{self, Sensor, Stats};

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
    let output = open_events_log(&config.events_log)?;
    let listener = control::bind(&config.control_socket()).await?;

    let (mut sensor, watch, rings) = Sensor::start(&config)?;
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
        move || write_events(rx, watch, output, &writer_stats)
    });

    let (control_tx, mut control_rx) = mpsc::channel::<(Request, Reply)>(16);
    let control_task = tokio::spawn(control::serve(listener, control_tx));
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut rescan = tokio::time::interval(Duration::from_secs(2));
    info!(socket = %config.control_socket().display(), "sensor running");
    loop {
        tokio::select! {
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            Some((request, reply)) = control_rx.recv() => {
                let response = match request {
                    Request::Status => status(&sensor, &stats, &writer_stats, &roots, started),
                };
                let _ = reply.send(response);
            }
            _ = rescan.tick() => sensor.attach_new_interfaces(),
        }
    }
    info!("shutting down");
    control_task.abort();
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
    let _ = std::fs::remove_file(config.control_socket());
    Ok(())
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

/// Turns records into JSON lines; flushes whenever the queue runs dry.
fn write_events(
    mut rx: mpsc::Receiver<RawEvent>,
    mut watch: WatchSet,
    output: Box<dyn Write + Send>,
    stats: &WriterStats,
) -> anyhow::Result<()> {
    let clock = Clock::new();
    let mut out = std::io::BufWriter::with_capacity(1 << 16, output);
    let mut line = Vec::with_capacity(1024);
    while let Some(first) = rx.blocking_recv() {
        let mut next = Some(first);
        while let Some(raw) = next {
            let event = match &raw {
                RawEvent::Exec(e) => Some(event::exec(&clock, e)),
                RawEvent::Connect(e) => Some(event::connect(&clock, e)),
                RawEvent::File(e) => watch.to_event(&clock, e),
            };
            if let Some(event) = event {
                line.clear();
                serde_json::to_writer(&mut line, &event)?;
                line.push(b'\n');
                out.write_all(&line).context("writing events log")?;
                stats.written.fetch_add(1, Ordering::Relaxed);
            }
            next = rx.try_recv().ok();
        }
        out.flush().context("flushing events log")?;
        stats.unresolved.store(watch.unresolved(), Ordering::Relaxed);
        stats.watched_inodes.store(watch.inode_count() as u64, Ordering::Relaxed);
    }
    out.flush().context("flushing events log")?;
    Ok(())
}

fn status(
    sensor: &Sensor,
    stats: &Stats,
    writer: &WriterStats,
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
    serde_json::json!({
        "ok": true,
        "pid": std::process::id(),
        "uptime_s": started.elapsed().as_secs(),
        "signals": signals,
        "incoming": {"hook": "xdp:syn_watch", "interfaces": sensor.syn_interfaces},
        "watch": {
            "roots": roots,
            "inodes": writer.watched_inodes.load(Ordering::Relaxed),
            "unresolved": writer.unresolved.load(Ordering::Relaxed),
        },
        "events_written": writer.written.load(Ordering::Relaxed),
    })
}
