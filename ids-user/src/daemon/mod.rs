//! `ids run`: the daemon. [`Daemon::start`] builds the alert sink, the workers (integrity,
//! detect, remote CHECKs) and the ban path, attaches the sensor, and connects the ring-buffer
//! readers to the event bus ([`bus`]); [`Daemon::run`] serves the control socket, applies ban
//! requests and expires bans until SIGINT/SIGTERM or a worker's failure (with `[metrics]`, the
//! Prometheus endpoint's worker asks for the status on the control channel); [`Daemon::shutdown`]
//! detaches the programs and drains every worker through the one harness (`crate::harness`).
mod bus;
mod reload;

use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::signal::unix::{Signal as UnixSignal, SignalKind, signal};
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use self::bus::{Bus, WriterStats};
use crate::alert::{AlertSink, EventsLog};
use crate::bans::config::XdpInterfaces;
use crate::bans::{BanRequest, Bans};
use crate::config::{Config, EventsLog as EventsLogConfig};
use crate::control::{
    self, Answer, BaselineAnswer, DiffAnswer, IncomingStatus, ProcessCounts, Reply, Request, SignalStatus,
    StatusAnswer, WatchStatus, XdpInterface, XdpStatus,
};
use crate::harness::{WorkerId, Workers};
use crate::integrity::worker::{self as integrity_worker, Control};
use crate::sensor::hooks::signal_name;
use crate::sensor::watch::WatchSet;
use crate::sensor::{self, Sensor, Stats};
use crate::store::Store;

/// Ban requests the detectors may queue before they report a request as not delivered.
const BAN_QUEUE: usize = 4096;
/// How long the workers get to finish at shutdown, in all.
const DRAIN: Duration = Duration::from_secs(10);

/// `config` was read from `config_path` (`None`: the embedded default), which SIGHUP reads again.
pub(crate) async fn run(config: Config, config_path: Option<PathBuf>) -> anyhow::Result<()> {
    let mut daemon = Daemon::start(config).await?;
    daemon.config_path = config_path;
    let outcome = daemon.run().await;
    daemon.shutdown().await;
    outcome
}

/// The sensor's watch set: the integrity worker's paths, and the detectors' logs and web roots
/// not inside one of them.
fn sensor_watch(integrity: &[PathBuf], detect: &[PathBuf]) -> Vec<PathBuf> {
    let mut watch = integrity.to_vec();
    for path in detect {
        if !watch.iter().any(|w| path.starts_with(w)) {
            watch.push(path.clone());
        }
    }
    watch
}

/// Starts the Prometheus endpoint's worker on `listener`. Scrapes ask for the status on the
/// control socket's channel: answered in `run` like `ids status`, from the same counters.
fn serve_metrics(
    listener: tokio::net::TcpListener,
    control_tx: &mpsc::Sender<(Request, Reply)>,
    workers: &mut Workers,
) -> WorkerId {
    let requests = control_tx.clone();
    let listen = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
    info!(%listen, "metrics endpoint serving /metrics");
    workers.spawn_task("metrics", move |stop| crate::metrics::serve(listener, requests, stop))
}

/// Says where the XDP ban filter goes: nowhere is a choice the operator should know about, and a
/// named interface this host lacks means nothing is enforced there.
fn report_xdp_interfaces(interfaces: &XdpInterfaces) {
    match interfaces {
        XdpInterfaces::None => info!(
            "no XDP interface configured: bans are recorded but not enforced, and port scans are not seen; \
             set [xdp] interfaces = [\"eth0\"] (or [\"*\"] for every interface but loopback) to enable the filter"
        ),
        XdpInterfaces::All => info!("XDP ban filter on every interface but loopback ([xdp] interfaces = [\"*\"])"),
        XdpInterfaces::Named(_) => {
            for name in interfaces.absent() {
                warn!(
                    interface = name,
                    "[xdp] interfaces names {name:?}, which this host does not have: NO BAN IS ENFORCED ON IT \
                     (the filter is attached if it appears); check the name with `ip link`"
                );
            }
        }
    }
}

/// The running daemon.
pub(crate) struct Daemon {
    /// The configuration in force (after SIGHUP: the live sections as read again).
    config: Config,
    /// Read again on SIGHUP; `None`: the embedded default.
    config_path: Option<PathBuf>,
    workers: Workers,
    sensor: Option<Sensor>,
    bans: Bans,
    ban_rx: mpsc::Receiver<BanRequest>,
    control_rx: mpsc::Receiver<(Request, Reply)>,
    integrity: integrity_worker::Handle,
    /// What the integrity worker takes from the bus; replaced on reload.
    integrity_interest: Arc<RwLock<integrity_worker::Interest>>,
    /// The paths the sensor watches for the integrity worker (`watch` and the collectors').
    integrity_watch: Vec<PathBuf>,
    /// The sensor's watch set, shared with the events writer; changed on reload.
    watch: Arc<Mutex<WatchSet>>,
    detect: crate::detect::worker::Handle,
    /// What the detect worker takes from the bus; replaced on reload.
    detect_interest: Arc<RwLock<crate::detect::worker::Interest>>,
    /// The remote CHECK task's servers; replaced on reload.
    remote_checks: tokio::sync::watch::Sender<crate::tinyids::remote_check::RemoteChecks>,
    scan_stats: Arc<crate::bans::scan::ScanStats>,
    stats: Arc<Stats>,
    writer_stats: Arc<WriterStats>,
    /// The events log: its failure counters for `ids status`, and reopened on SIGHUP.
    events_log: EventsLog,
    sink: AlertSink,
    /// `[[outputs]]`: their counters, their files reopened on SIGHUP, replaced on reload.
    outputs: crate::output::Outputs,
    /// The Prometheus endpoint's worker and where it listens; replaced on reload.
    metrics: Option<(std::net::SocketAddr, WorkerId)>,
    /// What the metrics endpoint asks for the status on (the control socket's channel).
    control_tx: mpsc::Sender<(Request, Reply)>,
    /// The fleet agent's status and the facts its heartbeats carry; `None` without `[fleet]`.
    fleet: Option<Arc<crate::fleet::agent::AgentShared>>,
    /// The fleet agent's broker settings; replaced on reload.
    fleet_settings: Option<tokio::sync::watch::Sender<crate::fleet::FleetConfig>>,
    /// Fleet ban decisions, applied here through the ban path.
    fleet_bans: Option<mpsc::Receiver<(crate::fleet::agent::BanCommand, tokio::sync::oneshot::Sender<()>)>>,
    /// Packets dropped per fleet-banned net, as the last heartbeat facts read them.
    fleet_ban_packets: std::collections::BTreeMap<String, u64>,
    fleet_facts_updates: u64,
    roots: Vec<String>,
    started: Instant,
    sigterm: UnixSignal,
    sigint: UnixSignal,
    sighup: UnixSignal,
}

impl Daemon {
    pub(crate) async fn start(config: Config) -> anyhow::Result<Self> {
        report_xdp_interfaces(&config.xdp.interfaces);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&config.state_dir)
            .with_context(|| format!("creating state_dir {}", config.state_dir.display()))?;
        let log = open_events_log(&config.events_log)?;
        // A damaged database is refused before anything opens it: running on it would fail
        // later, at the first write that meets the damage, with alerts lost on the way.
        crate::store::repair::check_at_start(&config.database())?;
        let sink = AlertSink::new(Some(Store::open(&config.database())?), Some(log.clone()));
        let listener = control::bind(&config.control_socket()).await?;
        let mut workers = Workers::default();
        let outputs = crate::output::Outputs::start(&config.outputs, &sink, &mut workers)?;
        // Every detector sends its ban requests on this one channel; `run` applies them.
        let (ban_tx, ban_rx) = mpsc::channel::<BanRequest>(BAN_QUEUE);

        // The workers are built first (collectors, database, rules, logs) so that a bad one stops
        // the start; integrity scans once the sensor is attached, so no change made during the
        // scan is missed.
        // sshd's logins, as the detectors read them, for the process table to name.
        let logins = Arc::new(crate::process::Logins::default());
        let integrity = integrity_worker::prepare(&config.integrity(), sink.clone(), logins.clone())?;
        let detect = crate::detect::worker::prepare(
            &config.detect,
            &config.state_dir,
            sink.clone(),
            ban_tx.clone(),
            logins.clone(),
            workers.stop_token(),
        )?;
        let integrity_watch = integrity.watch.clone();
        let watch = sensor_watch(&integrity_watch, &detect.watch);
        let (mut sensor, watch, rings) = Sensor::start(&config.sensor(watch))?;
        // The pinned maps may have outlived an earlier run: make them equal to the store before
        // the new program takes over the interfaces.
        let mut bans = Bans::open(&config.state_dir, &config.xdp, &config.bans, sensor.ban_maps.take(), sink.clone())?;
        bans.reconcile()?;
        sensor.attach_new_interfaces();
        let scan_stats = Arc::new(crate::bans::scan::ScanStats::default());
        if let Some(ring) = sensor.scan_reports.take() {
            let (duration, stats) = (config.bans.scan_duration, scan_stats.clone());
            let ban_tx = ban_tx.clone();
            workers
                .spawn_task("scan_reports", move |stop| crate::bans::scan::read(ring, ban_tx, duration, stats, stop));
        }
        let (integrity, integrity_interest) = integrity.start(&mut workers)?;
        let (detect, detect_interest) = detect.start(&mut workers)?;
        let (remote_checks, remote_settings) = tokio::sync::watch::channel(
            crate::tinyids::remote_check::RemoteChecks::new(&config.servers, config.remote_check_interval)?,
        );
        crate::tinyids::remote_check::start(
            remote_settings,
            integrity.shared.watch_aggregate(),
            sink.clone(),
            &mut workers,
        );

        let mut bus = Bus::default();
        let integrity_events = integrity.events.clone();
        let integrity_interest = Arc::new(RwLock::new(integrity_interest));
        let interest = integrity_interest.clone();
        bus.subscribe(
            move |event| interest.read().unwrap_or_else(|p| p.into_inner()).wants(event),
            move |event| {
                integrity_events.offer(event);
            },
        );
        let detect_events = detect.events.clone();
        let detect_interest = Arc::new(RwLock::new(detect_interest));
        let interest = detect_interest.clone();
        bus.subscribe(
            move |event| interest.read().unwrap_or_else(|p| p.into_inner()).wants(event),
            move |event| {
                if let Some(input) = crate::detect::worker::input(&event) {
                    detect_events.offer(input);
                }
            },
        );
        let stats = Arc::new(Stats::default());
        let writer_stats = Arc::new(WriterStats::default());
        writer_stats.watched_inodes.store(watch.inode_count() as u64, Ordering::Relaxed);
        let roots: Vec<String> = watch.roots().iter().map(|p| p.display().to_string()).collect();
        let watch = Arc::new(Mutex::new(watch));
        let watch_set = watch.clone();
        let (tx, rx) = mpsc::channel(config.channel_capacity);
        for (signal, ring) in rings {
            let (tx, stats) = (tx.clone(), stats.clone());
            workers.spawn_task(signal_name(signal), move |stop| sensor::read_ring(signal, ring, tx, stats, stop));
        }
        drop(tx);
        // The writer ends when every reader has (they stop after the programs are detached).
        let writer_counters = writer_stats.clone();
        let process_context = config.process_context;
        let exe_hashes = if process_context { Some(crate::process::ExeHashes::start(&mut workers)?) } else { None };
        let events_log = log.clone();
        workers.spawn_thread(
            "events",
            || {},
            move |_| {
                // Filled from /proc after the sensor attached: a process started since is in a
                // record waiting in the channel.
                let processes = process_context.then(|| crate::process::ProcessTable::new(logins, exe_hashes));
                bus::write_events(rx, watch, log, bus, processes, &writer_counters)
            },
        )?;

        let (fleet, fleet_settings, fleet_bans) = match &config.fleet {
            Some(fleet_config) => {
                let (tx, rx) = mpsc::channel(64);
                let (settings_tx, settings) = tokio::sync::watch::channel(fleet_config.clone());
                let agent =
                    crate::fleet::agent::start(settings, config.database(), sink.stored_notify(), tx, &mut workers)?;
                (Some(agent), Some(settings_tx), Some(rx))
            }
            None => (None, None, None),
        };
        let (control_tx, control_rx) = mpsc::channel::<(Request, Reply)>(16);
        let metrics = match &config.metrics {
            Some(metrics) => {
                let listener = crate::metrics::bind(metrics.listen).await?;
                Some((metrics.listen, serve_metrics(listener, &control_tx, &mut workers)))
            }
            None => None,
        };
        let requests = control_tx.clone();
        workers.spawn_task("control", move |stop| control::serve(listener, requests, stop));
        // Control connections, followed logs and ring buffers are all descriptors: take what the
        // hard limit allows, as `ids serve` does, so that a burst of clients does not starve the rest.
        let open_files = crate::tinyids::server::raise_open_files_limit();
        info!(socket = %config.control_socket().display(), open_files, "sensor running");
        Ok(Self {
            config,
            config_path: None,
            workers,
            sensor: Some(sensor),
            bans,
            ban_rx,
            control_rx,
            integrity,
            integrity_interest,
            integrity_watch,
            watch: watch_set,
            detect,
            detect_interest,
            remote_checks,
            scan_stats,
            stats,
            writer_stats,
            events_log,
            sink,
            outputs,
            metrics,
            control_tx,
            fleet,
            fleet_settings,
            fleet_bans,
            fleet_ban_packets: Default::default(),
            fleet_facts_updates: 0,
            roots,
            started: Instant::now(),
            sigterm: signal(SignalKind::terminate())?,
            sigint: signal(SignalKind::interrupt())?,
            // Without a handler, SIGHUP would end the daemon and leave its socket behind.
            sighup: signal(SignalKind::hangup())?,
        })
    }

    /// Serves until SIGINT/SIGTERM (Ok) or until a worker ends on its own (Err: the daemon does
    /// not run on half alive).
    pub(crate) async fn run(&mut self) -> anyhow::Result<()> {
        // Links and addresses are looked at again when the kernel reports a change (and every
        // minute in case a report was lost); without the notifications, every 2 s.
        let mut links = crate::bans::links::LinkChanges::open()
            .map_err(|e| warn!(error = %e, "no link notifications; interfaces and addresses are polled every 2 s"))
            .ok();
        let mut rescan =
            tokio::time::interval(if links.is_some() { Duration::from_secs(60) } else { Duration::from_secs(2) });
        let mut hits_snapshot = tokio::time::interval(Duration::from_secs(10));
        // What the fleet's heartbeats say of this host (hooks, lost events, aggregate).
        let mut fleet_facts = tokio::time::interval(Duration::from_secs(2));
        loop {
            // Expired bans leave at their expiry: the loop sleeps until the next one is due (at
            // most a minute, so that a clock step is caught up with; at least 50 ms, so that a
            // failing store is not retried in a busy loop), and not at all for none.
            let expiry = self.bans.until_next_expiry().map_or(Duration::from_secs(3600), |wait| {
                wait.clamp(Duration::from_millis(50), Duration::from_secs(60))
            });
            tokio::select! {
                _ = self.sigterm.recv() => return Ok(()),
                _ = self.sigint.recv() => return Ok(()),
                _ = self.sighup.recv() => {
                    self.reopen_events_log();
                    self.reload().await;
                }
                exited = self.workers.exited() => {
                    let why = exited.failure.unwrap_or_else(|| "ended".into());
                    error!(worker = exited.worker, error = %why, "a worker stopped; stopping the daemon");
                    anyhow::bail!("worker {} stopped: {why}", exited.worker);
                }
                Some((request, reply)) = self.control_rx.recv() => self.answer(request, reply),
                Some(request) = self.ban_rx.recv() => self.bans.apply(request),
                Some((command, applied)) = async {
                    match self.fleet_bans.as_mut() {
                        Some(rx) => rx.recv().await,
                        None => std::future::pending().await,
                    }
                } => {
                    crate::fleet::bans::apply(&mut self.bans, command);
                    let _ = applied.send(());
                }
                _ = fleet_facts.tick(), if self.fleet.is_some() => self.update_fleet_facts(),
                changed = async { links.as_mut().expect("guarded").changed().await }, if links.is_some() => {
                    if let Err(e) = changed {
                        warn!(error = %e, "link notifications failed; interfaces and addresses are polled every 2 s");
                        links = None;
                        rescan = tokio::time::interval(Duration::from_secs(2));
                    }
                    self.rescan_links();
                }
                _ = rescan.tick() => self.rescan_links(),
                _ = tokio::time::sleep(expiry) => {
                    if let Err(e) = self.bans.expire() {
                        warn!(error = %e, "expiring bans");
                    }
                }
                _ = hits_snapshot.tick() => {
                    // Alerts the store refused are stored once it takes them again, even when
                    // no new alert comes to carry them.
                    self.sink.retry_unstored();
                    if let Err(e) = self.bans.snapshot_hits() {
                        warn!(error = %e, "storing ban hit counters");
                    }
                }
            }
        }
    }

    /// Detaches the programs, then stops and drains every worker (the readers empty what is
    /// left in the ring buffers, the events writer writes it out).
    pub(crate) async fn shutdown(mut self) {
        info!("shutting down");
        while let Ok(request) = self.ban_rx.try_recv() {
            self.bans.apply(request);
        }
        let _ = self.bans.snapshot_hits();
        drop(self.sensor.take());
        // Nothing takes over the outputs' queues: what is left is named as not delivered.
        drop(std::mem::take(&mut self.outputs));
        self.workers.shutdown(DRAIN).await;
        let _ = std::fs::remove_file(self.config.control_socket());
    }

    fn answer(&mut self, request: Request, reply: Reply) {
        match request {
            Request::Status => {
                let _ = reply.send(match self.status() {
                    Some(status) => Answer::ok(status),
                    None => control::refusal("shutting down"),
                });
            }
            request @ (Request::Ban { .. } | Request::Unban { .. } | Request::Bans | Request::Alerts { .. }) => {
                let _ = reply.send(crate::control::bans::answer(&mut self.bans, &request));
            }
            // The worker answers these itself, so a long rehash never blocks this loop.
            Request::Baseline => {
                let (tx, rx) = tokio::sync::oneshot::channel();
                self.forward(Control::Baseline(tx), reply, rx, |accepted| {
                    Answer::ok(BaselineAnswer { items: accepted.items, aggregate: accepted.aggregate })
                });
            }
            Request::Diff => {
                let (tx, rx) = tokio::sync::oneshot::channel();
                self.forward(Control::Diff(tx), reply, rx, |diff| Answer::ok(DiffAnswer { diff: diff.to_json() }));
            }
        }
    }

    /// Hands a request to the integrity worker; its answer goes to `reply` when it comes.
    fn forward<T: Send + 'static>(
        &self,
        request: Control,
        reply: Reply,
        answer: tokio::sync::oneshot::Receiver<Result<T, String>>,
        to_json: impl FnOnce(T) -> serde_json::Value + Send + 'static,
    ) {
        if self.integrity.request(request).is_err() {
            let _ = reply.send(control::refusal("the integrity worker has stopped"));
            return;
        }
        tokio::spawn(async move {
            let response = match answer.await {
                Ok(Ok(value)) => to_json(value),
                Ok(Err(e)) => control::refusal(e),
                Err(_) => control::refusal("the integrity worker has stopped"),
            };
            let _ = reply.send(response);
        });
    }

    /// SIGHUP: the events log is reopened at its path (after logrotate moved it); the lines
    /// written before went to the old file, those after go to the new one, none is lost.
    fn reopen_events_log(&mut self) {
        self.outputs.reopen();
        let EventsLogConfig::File(path) = &self.config.events_log else { return };
        match open_events_file(path) {
            Ok(file) => {
                self.events_log.reopen(file);
                info!("SIGHUP: events log reopened");
            }
            Err(e) => {
                warn!(
                    error = crate::error_text::one_line(e.as_ref()),
                    "SIGHUP: reopening the events log failed; writing on to the old file"
                )
            }
        }
    }

    /// SIGHUP: the configuration file read again (`reload`). Everything that can fail (the file,
    /// the rules file, the servers' TLS files, the collectors, the outputs' destinations, the
    /// metrics address) is read or set up before anything is applied, so a broken configuration
    /// leaves the daemon running on the one in force.
    async fn reload(&mut self) {
        let origin =
            self.config_path.as_ref().map_or_else(|| "(embedded default)".to_string(), |p| p.display().to_string());
        let keep = |error: String| error!(config = %origin, error = %error, "SIGHUP: configuration not reloaded; running on with the one in force");
        let read = match Config::load(self.config_path.as_deref()) {
            Ok(read) => read,
            Err(e) => return keep(e.to_string()),
        };
        // Read again even when its path is unchanged: the file's rules may have been edited.
        let rules = match crate::detect::rules::RuleSet::load(read.detect.rules.as_deref(), read.detect.rules_mode) {
            Ok(rules) => rules,
            Err(e) => return keep(crate::error_text::one_line(&e)),
        };
        let remote_checks =
            match crate::tinyids::remote_check::RemoteChecks::new(&read.servers, read.remote_check_interval) {
                Ok(checks) => checks,
                Err(e) => return keep(crate::error_text::one_line(e.as_ref())),
            };
        let (running, wanted) = (self.config.integrity(), read.integrity());
        let integrity_changed =
            (&running.collectors, &running.watch, running.integrity_interval, running.verify_interval)
                != (&wanted.collectors, &wanted.watch, wanted.integrity_interval, wanted.verify_interval);
        let rebuilt = if integrity_changed {
            match integrity_worker::rebuild(&wanted) {
                Ok(rebuilt) => Some(rebuilt),
                Err(e) => return keep(crate::error_text::one_line(e.as_ref())),
            }
        } else {
            None
        };
        // A new address is bound while the old one still serves: a port taken keeps both as they are.
        let running_listen = self.metrics.as_ref().map(|(listen, _)| *listen);
        let metrics_listener = match &read.metrics {
            Some(metrics) if Some(metrics.listen) != running_listen => match crate::metrics::bind(metrics.listen).await
            {
                Ok(listener) => Some(listener),
                Err(e) => return keep(crate::error_text::one_line(e.as_ref())),
            },
            _ => None,
        };
        // Its destinations are all built before any output changes.
        if read.outputs != self.config.outputs {
            match self.outputs.reload(&read.outputs, &self.sink, &mut self.workers) {
                Ok(changes) => info!(
                    added = ?changes.added,
                    replaced = ?changes.replaced,
                    removed = ?changes.removed,
                    "SIGHUP: alert outputs reloaded"
                ),
                Err(e) => return keep(crate::error_text::one_line(e.as_ref())),
            }
        }
        let reloaded = reload::reload(&self.config, read.clone());
        for section in &reloaded.at_restart {
            warn!(config = %origin, "SIGHUP: {section} changed; it takes effect when the daemon is restarted");
        }
        if read.metrics.as_ref().map(|m| m.listen) != running_listen {
            if let Some((listen, worker)) = self.metrics.take() {
                self.workers.stop_worker(&worker);
                info!(%listen, "SIGHUP: metrics endpoint closed");
            }
            if let (Some(metrics), Some(listener)) = (&read.metrics, metrics_listener) {
                self.metrics = Some((metrics.listen, serve_metrics(listener, &self.control_tx, &mut self.workers)));
            }
        }
        if (read.xdp.trusted != self.config.xdp.trusted || read.bans != self.config.bans)
            && let Err(e) = self.bans.reconfigure(read.xdp.trusted.clone(), read.bans.clone())
        {
            warn!(error = %e, "SIGHUP: updating the trusted addresses in the kernel");
        }
        if read.servers != self.config.servers || read.remote_check_interval != self.config.remote_check_interval {
            self.remote_checks.send_replace(remote_checks);
        }
        let interest = crate::detect::worker::Interest::of(&read.detect);
        // The watch set first, so that the workers' new paths report from the moment they take them.
        let detect_watch: Vec<PathBuf> = interest.paths().cloned().collect();
        let running_detect: Vec<PathBuf> =
            crate::detect::worker::Interest::of(&self.config.detect).paths().cloned().collect();
        if let Some(rebuilt) = &rebuilt {
            self.integrity_watch = rebuilt.watch.clone();
        }
        if rebuilt.is_some() || detect_watch != running_detect {
            self.update_watch_set(&sensor_watch(&self.integrity_watch, &detect_watch));
        }
        if let Some(rebuilt) = rebuilt {
            *self.integrity_interest.write().unwrap_or_else(|p| p.into_inner()) = rebuilt.interest;
            if self.integrity.request(Control::Reconfigure(Box::new(rebuilt.reconfigure))).is_err() {
                warn!("SIGHUP: the integrity worker has stopped; its collectors are not reloaded");
            }
        }
        *self.detect_interest.write().unwrap_or_else(|p| p.into_inner()) = interest.clone();
        // Queued behind the events already sent to the worker: none of them meets the new rules,
        // none is skipped.
        let reload = crate::detect::Input::Reload(Box::new(crate::detect::worker::Reload {
            config: read.detect.clone(),
            rules,
            interest,
        }));
        let events = self.detect.events.clone();
        tokio::task::spawn_blocking(move || events.send_blocking(reload));
        if let (Some(fleet), Some(settings)) = (&reloaded.config.fleet, &self.fleet_settings)
            && reloaded.applied.contains(&"[fleet]")
        {
            settings.send_replace(fleet.clone());
        }
        info!(config = %origin, changed = ?reloaded.applied, "SIGHUP: configuration reloaded");
        self.config = reloaded.config;
    }

    /// Makes the sensor's watch set that of `paths`: roots added are walked into the kernel's
    /// maps, roots removed leave them. A failure part way (more inodes than `max_watched_inodes`)
    /// leaves what was done and says so.
    fn update_watch_set(&mut self, paths: &[PathBuf]) {
        let mut watch = self.watch.lock().unwrap_or_else(|p| p.into_inner());
        match watch.update(paths) {
            Ok(change) => {
                if !change.added.is_empty() || !change.removed.is_empty() {
                    info!(added = ?change.added, removed = ?change.removed, inodes = watch.inode_count(), "SIGHUP: watch set updated");
                }
            }
            Err(e) => error!(error = %e, "SIGHUP: the watch set is only partly updated"),
        }
        self.roots = watch.roots().iter().map(|p| p.display().to_string()).collect();
        self.writer_stats.watched_inodes.store(watch.inode_count() as u64, Ordering::Relaxed);
    }

    /// New interfaces get the XDP program; `[xdp] trust_local`: addresses added to or removed
    /// from this host since are trusted or no longer.
    fn rescan_links(&mut self) {
        if let Some(sensor) = &mut self.sensor {
            sensor.attach_new_interfaces();
        }
        if let Err(e) = self.bans.refresh_local_addresses() {
            warn!(error = %e, "updating this host's trusted addresses");
        }
    }
}

fn open_events_log(log: &EventsLogConfig) -> anyhow::Result<EventsLog> {
    Ok(match log {
        EventsLogConfig::Stdout => EventsLog::new(Box::new(std::io::stdout())),
        EventsLogConfig::File(path) => EventsLog::file(open_events_file(path)?),
    })
}

fn open_events_file(path: &std::path::Path) -> anyhow::Result<std::fs::File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening events_log {}", path.display()))
}

/// The hook of incoming SYNs: `xdp:xdp_guard`, `tc:tc_guard`, or both (`xdp:xdp_guard+tc:tc_guard`)
/// when the interfaces differ; `xdp:xdp_guard` on no interface.
fn incoming_hook(attached: &[(String, crate::bans::kernel::AttachMode)]) -> String {
    let mut hooks: Vec<String> = attached.iter().map(|(_, mode)| mode.hook()).collect();
    hooks.sort();
    hooks.dedup();
    if hooks.is_empty() {
        return format!("xdp:{}", crate::bans::kernel::PROGRAM);
    }
    hooks.join("+")
}

impl Daemon {
    /// Hands the fleet agent what its next heartbeat says of this host.
    fn update_fleet_facts(&mut self) {
        // Every 15th update (30 s): the fleet bans' packet counts read the ban table and the
        // kernel's hit map; the rest of the facts are counters already in memory.
        self.fleet_facts_updates = self.fleet_facts_updates.wrapping_add(1);
        if self.fleet.is_some() && self.fleet_facts_updates % 15 == 1 {
            match self.bans.packets_of_source(crate::fleet::bans::SOURCE) {
                Ok(packets) => self.fleet_ban_packets = packets,
                Err(e) => tracing::warn!(error = %e, "fleet: reading the fleet bans' packet counts"),
            }
        }
        let (Some(fleet), Some(sensor)) = (&self.fleet, &self.sensor) else { return };
        let mut facts = crate::fleet::agent::HostFacts::default();
        for signal in sensor::all_signals() {
            let name = signal_name(signal);
            facts.hooks.insert(name.to_string(), sensor.hooks.get(name).copied().unwrap_or("none").to_string());
            let counters = self.stats.of(signal);
            facts
                .lost_events
                .insert(name.to_string(), sensor.kernel_lost(signal) + counters.dropped.load(Ordering::Relaxed));
        }
        facts.aggregate = self.integrity.shared.aggregate().map(|digest| crate::integrity::hex(&digest));
        facts.baseline_aggregate =
            self.integrity.shared.baseline_aggregate().map(|digest| crate::integrity::hex(&digest));
        facts.fleet_ban_packets = self.fleet_ban_packets.clone();
        fleet.set_facts(facts);
    }

    /// `ids status --json`; `None` once the sensor is detached.
    fn status(&mut self) -> Option<StatusAnswer> {
        let sensor = self.sensor.as_ref()?;
        let signals = sensor::all_signals()
            .into_iter()
            .map(|signal| {
                let name = signal_name(signal);
                let counters = self.stats.of(signal);
                let lost_in_kernel = sensor.kernel_lost(signal);
                let dropped = counters.dropped.load(Ordering::Relaxed);
                SignalStatus {
                    signal: name.to_string(),
                    hook: sensor.hooks.get(name).copied().unwrap_or("none").to_string(),
                    received: counters.received.load(Ordering::Relaxed),
                    lost: lost_in_kernel + dropped,
                    lost_in_kernel,
                    dropped,
                    malformed: counters.malformed.load(Ordering::Relaxed),
                }
            })
            .collect();
        let writer = &self.writer_stats;
        let xdp = XdpStatus {
            interfaces: sensor
                .xdp
                .attached
                .iter()
                .map(|(name, mode)| XdpInterface {
                    name: name.clone(),
                    mode: mode.name().to_string(),
                    program: mode.program().to_string(),
                })
                .collect(),
            pin_dir: self.config.xdp.pin_dir.clone(),
            bans: self.bans.store().bans().map(|b| b.len()).unwrap_or(0),
            scan_reports: self.scan_stats.reports.load(Ordering::Relaxed),
            scan_reports_dropped: self.scan_stats.dropped.load(Ordering::Relaxed),
        };
        Some(StatusAnswer {
            pid: std::process::id(),
            uptime_s: self.started.elapsed().as_secs(),
            signals,
            errors: sensor.program_errors().into_iter().map(|(program, count)| (program.to_string(), count)).collect(),
            incoming: IncomingStatus { hook: incoming_hook(&sensor.xdp.attached), interfaces: sensor.syn_interfaces() },
            watch: WatchStatus {
                roots: self.roots.clone(),
                inodes: writer.watched_inodes.load(Ordering::Relaxed),
                unresolved: writer.unresolved.load(Ordering::Relaxed),
            },
            events_written: writer.written.load(Ordering::Relaxed),
            processes: ProcessCounts {
                live: writer.processes.load(Ordering::Relaxed),
                exited: writer.processes_exited.load(Ordering::Relaxed),
            },
            events_log_errors: self.events_log.failures(),
            events_log_lines_lost: self.events_log.lines_lost(),
            alert_store: self.sink.store_status(),
            alerts: self.sink.counts(),
            aggregate: self.integrity.shared.aggregate().map(|digest| crate::integrity::hex(&digest)),
            integrity: self.integrity.shared.status(),
            xdp,
            detect: self.detect.shared.status(),
            fleet: self.fleet.as_ref().map(|fleet| fleet.status()),
            outputs: self.outputs.status(),
        })
    }
}
