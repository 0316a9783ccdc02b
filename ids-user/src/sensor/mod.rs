//! The kernel side of the daemon: loads the eBPF object with the running kernel's offsets, attaches
//! the best hook set per signal (see `hooks`), loads the XDP program (`crate::bans::kernel`:
//! ban filter, SYN watcher, scan detector) with its pinned maps, and reads the ring buffers into a bounded channel, counting every record it could not pass on.
pub mod btf;
pub mod decode;
pub mod floor;
pub mod hooks;
pub mod watch;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context as _, anyhow, bail};
use aya::maps::{HashMap as BpfHashMap, LpmTrie, MapData, PerCpuArray, RingBuf};
use aya::programs::{FEntry, Lsm, RawTracePoint, SchedClassifier, TracePoint, Xdp};
use aya::{Ebpf, EbpfLoader};
use ids_common::{ProgramId, SIGNAL_COUNT, Signal};
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use self::decode::{RawEvent, decode};
use self::hooks::{Attach, HOOK_TABLE, HookSet, SYN_PROGRAM, signal_name};
use self::watch::WatchSet;
use crate::bans::XdpConfig;
use crate::bans::kernel::{BanMaps, GuardPrograms, PINNED_MAPS, TC_PROGRAM, XdpAttachments};

const OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ids"));
const SIGNALS: [Signal; 3] = [Signal::Exec, Signal::File, Signal::Connect];

/// Counters of one signal, shared by its reader and `ids status`.
#[derive(Debug, Default)]
pub struct SignalStats {
    /// Records read and handed to the writer.
    pub received: AtomicU64,
    /// Records the reader could not queue because the channel was full.
    pub dropped: AtomicU64,
    /// Records that did not decode.
    pub malformed: AtomicU64,
}

#[derive(Debug, Default)]
pub struct Stats {
    pub signals: [SignalStats; SIGNAL_COUNT as usize],
}

impl Stats {
    pub fn of(&self, signal: Signal) -> &SignalStats {
        &self.signals[signal as usize]
    }
}

/// What the sensor needs of the configuration.
#[derive(Debug, Clone)]
pub(crate) struct SensorConfig {
    /// Every path to watch: `watch` and the paths of the collectors, logs and web roots.
    pub(crate) watch: Vec<std::path::PathBuf>,
    pub(crate) max_watched_inodes: u32,
    /// Hook sets whose name starts with one of these are not attached.
    pub(crate) exclude_hooks: Vec<String>,
    pub(crate) xdp: XdpConfig,
}

pub struct Sensor {
    ebpf: Ebpf,
    /// Hook set in use per signal.
    pub hooks: BTreeMap<&'static str, &'static str>,
    lost: PerCpuArray<MapData, u64>,
    /// Failed runs per program (`ProgramId`).
    errors: PerCpuArray<MapData, u64>,
    pub xdp: XdpAttachments,
    /// Whether `tc_guard` loaded.
    tc_loaded: bool,
    /// The pinned ban maps, for `crate::bans::Bans` to take.
    pub ban_maps: Option<BanMaps>,
    /// Reports of the scan detector (`crate::bans::scan`), for the daemon to take.
    pub scan_reports: Option<RingBuf<MapData>>,
}

/// Mounts tracefs and bpffs where they are missing (aya needs tracefs for tracepoints).
pub fn ensure_kernel_filesystems() {
    for (fstype, target, probe) in
        [("tracefs", "/sys/kernel/tracing", "/sys/kernel/tracing/events"), ("bpf", "/sys/fs/bpf", "/sys/fs/bpf/.")]
    {
        if fstype == "bpf" && is_mount_point(target) || fstype == "tracefs" && Path::new(probe).exists() {
            continue;
        }
        let status = std::process::Command::new("mount").args(["-t", fstype, "nodev", target]).status();
        match status {
            Ok(s) if s.success() => info!(fstype, target, "mounted"),
            Ok(s) => warn!(fstype, target, %s, "mount failed"),
            Err(e) => warn!(fstype, target, error = %e, "mount failed"),
        }
    }
}

fn is_mount_point(path: &str) -> bool {
    std::fs::read_to_string("/proc/self/mounts")
        .map(|m| m.lines().any(|l| l.split_whitespace().nth(1) == Some(path)))
        .unwrap_or(false)
}

/// The ring buffers of the signals, for the readers.
pub type Rings = Vec<(Signal, RingBuf<MapData>)>;

impl Sensor {
    /// Loads and attaches everything; fails naming the signal that has no working hook.
    pub fn start(config: &SensorConfig) -> anyhow::Result<(Self, WatchSet, Rings)> {
        ensure_kernel_filesystems();
        raise_memlock_limit();
        let btf = btf::Btf::from_sys_fs().context("reading kernel BTF")?;
        let offsets = btf.kernel_offsets().context("finding kernel structure offsets")?;
        debug!(?offsets, "kernel offsets");
        let pin_dir = &config.xdp.pin_dir;
        std::fs::create_dir_all(pin_dir).with_context(|| format!("creating [xdp] pin_dir {}", pin_dir.display()))?;
        let settings = ids_common::XdpSettings {
            scan_ports: config.xdp.scan_ports,
            flood_syns: config.xdp.flood_syns,
            window_ns: config.xdp.scan_window.as_nanos().min(u64::MAX as u128) as u64,
        };
        let mut loader = EbpfLoader::new();
        #[allow(deprecated)]
        loader
            .set_global("KERNEL_OFFSETS", &offsets, true)
            .set_global("XDP_SETTINGS", &settings, true)
            .set_max_entries("WATCHED_INODES", config.max_watched_inodes);
        for name in PINNED_MAPS {
            loader.map_pin_path(name, pin_dir.join(name));
        }
        let mut ebpf = loader.load(OBJECT).with_context(|| {
            format!(
                "loading the eBPF object (maps pinned under {} from another version are refused: `ids xdp detach` removes them)",
                pin_dir.display()
            )
        })?;
        let aya_btf = aya::Btf::from_sys_fs().context("reading kernel BTF for LSM/fentry")?;

        let inodes: BpfHashMap<MapData, _, _> = BpfHashMap::try_from(take_map(&mut ebpf, "WATCHED_INODES")?)?;
        let prefixes: LpmTrie<MapData, _, _> = LpmTrie::try_from(take_map(&mut ebpf, "WATCHED_PREFIXES")?)?;
        // The watch set goes in before any program attaches, so no early change is missed.
        let watch = WatchSet::new(&config.watch, inodes, prefixes, config.max_watched_inodes)?;
        info!(roots = watch.roots().len(), inodes = watch.inode_count(), "watch set loaded");

        let mut hooks = BTreeMap::new();
        for signal_hooks in HOOK_TABLE {
            let name = signal_name(signal_hooks.signal);
            let mut chosen = None;
            for set in signal_hooks.preference {
                if config.exclude_hooks.iter().any(|prefix| set.name.starts_with(prefix.as_str())) {
                    info!(signal = name, hook = set.name, "hook excluded by config");
                    continue;
                }
                match attach_set(&mut ebpf, &aya_btf, set) {
                    Ok(()) => {
                        chosen = Some(set.name);
                        break;
                    }
                    Err(e) => info!(
                        signal = name,
                        hook = set.name,
                        error = crate::error_text::one_line(e.as_ref()),
                        "hook unavailable"
                    ),
                }
            }
            let Some(chosen) = chosen else {
                bail!("no working hook for signal {name}: every hook set in the table failed to load or attach");
            };
            info!(signal = name, hook = chosen, "hook attached");
            hooks.insert(name, chosen);
        }

        let program: &mut Xdp = program_mut(&mut ebpf, SYN_PROGRAM)?;
        program.load().with_context(|| format!("loading XDP program {SYN_PROGRAM}"))?;
        // The tc program serves interfaces where XDP would copy each packet; without it they get
        // XDP too (`[xdp] mode = "tc"` interfaces get nothing, logged at attach).
        let tc_loaded = match program_mut::<SchedClassifier>(&mut ebpf, TC_PROGRAM)
            .and_then(|tc| tc.load().with_context(|| format!("loading tc program {TC_PROGRAM}")))
        {
            Ok(()) => true,
            Err(e) => {
                warn!(error = crate::error_text::one_line(e.as_ref()), "tc ban filter unavailable");
                false
            }
        };
        let ban_maps = BanMaps::take(&mut ebpf)?;
        let scan_reports = RingBuf::try_from(take_map(&mut ebpf, "XDP_EVENTS")?)?;

        let lost = PerCpuArray::try_from(take_map(&mut ebpf, "LOST")?)?;
        let errors = PerCpuArray::try_from(take_map(&mut ebpf, "PROGRAM_ERRORS")?)?;
        let mut rings = Vec::new();
        for (signal, map) in
            [(Signal::Exec, "EXEC_EVENTS"), (Signal::File, "FILE_EVENTS"), (Signal::Connect, "NET_EVENTS")]
        {
            rings.push((signal, RingBuf::try_from(take_map(&mut ebpf, map)?)?));
        }
        // The XDP program is attached by the daemon (`attach_new_interfaces`) once the ban maps
        // hold the store's bans.
        let sensor = Self {
            ebpf,
            hooks,
            lost,
            errors,
            xdp: XdpAttachments::new(pin_dir, &config.xdp),
            tc_loaded,
            ban_maps: Some(ban_maps),
            scan_reports: Some(scan_reports),
        };
        Ok((sensor, watch, rings))
    }

    /// Attaches the ban filter (XDP or tc, `[xdp] mode`) to interfaces that appeared since the last call.
    pub fn attach_new_interfaces(&mut self) {
        let (mut xdp, mut tc) = (None, None);
        for (name, program) in self.ebpf.programs_mut() {
            match (name, program) {
                (SYN_PROGRAM, aya::programs::Program::Xdp(program)) => xdp = Some(program),
                (TC_PROGRAM, aya::programs::Program::SchedClassifier(program)) if self.tc_loaded => tc = Some(program),
                _ => {}
            }
        }
        let Some(xdp) = xdp else { return };
        self.xdp.attach_new(GuardPrograms { xdp, tc });
    }

    /// Interfaces the ban filter (and SYN watcher) is on, XDP or tc.
    pub fn syn_interfaces(&self) -> Vec<String> {
        self.xdp.attached.iter().map(|(i, _)| i.clone()).collect()
    }

    /// Records the kernel could not put in a ring buffer, per signal.
    pub fn kernel_lost(&self, signal: Signal) -> u64 {
        match self.lost.get(&(signal as u32), 0) {
            Ok(values) => values.iter().sum(),
            Err(e) => {
                warn!(error = %e, "reading LOST counters");
                0
            }
        }
    }

    /// Runs of each eBPF program that failed (a kernel read, a map update), summed over CPUs, by
    /// program name; every program of the object is listed, attached or not.
    pub fn program_errors(&self) -> Vec<(&'static str, u64)> {
        ProgramId::ALL
            .iter()
            .map(|&program| {
                let count = match self.errors.get(&(program as u32), 0) {
                    Ok(per_cpu) => per_cpu.iter().sum(),
                    Err(e) => {
                        warn!(program = program.name(), error = %e, "reading PROGRAM_ERRORS");
                        0
                    }
                };
                (program.name(), count)
            })
            .collect()
    }
}

fn take_map(ebpf: &mut Ebpf, name: &str) -> anyhow::Result<aya::maps::Map> {
    ebpf.take_map(name).ok_or_else(|| anyhow!("eBPF object has no map {name}"))
}

fn program_mut<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let program = ebpf.program_mut(name).ok_or_else(|| anyhow!("eBPF object has no program {name}"))?;
    program.try_into().with_context(|| format!("program {name} has an unexpected type"))
}

/// Loads and attaches every program of `set`; on failure unloads what it loaded.
fn attach_set(ebpf: &mut Ebpf, btf: &aya::Btf, set: &HookSet) -> anyhow::Result<()> {
    let mut loaded = Vec::new();
    let result = (|| {
        for spec in set.programs {
            match attach_program(ebpf, btf, spec.program, spec.attach) {
                Ok(()) => loaded.push(spec.program),
                Err(e) if spec.optional => {
                    info!(
                        program = spec.program,
                        error = crate::error_text::one_line(e.as_ref()),
                        "optional program not attached"
                    );
                    let _ = unload(ebpf, spec.program);
                }
                Err(e) => {
                    loaded.push(spec.program);
                    return Err(e.context(format!("program {}", spec.program)));
                }
            }
        }
        Ok(())
    })();
    if result.is_err() {
        for program in loaded {
            let _ = unload(ebpf, program);
        }
    }
    result
}

fn unload(ebpf: &mut Ebpf, name: &str) -> anyhow::Result<()> {
    use aya::programs::Program;
    match ebpf.program_mut(name).ok_or_else(|| anyhow!("no program {name}"))? {
        Program::TracePoint(p) => p.unload()?,
        Program::RawTracePoint(p) => p.unload()?,
        Program::Lsm(p) => p.unload()?,
        Program::FEntry(p) => p.unload()?,
        _ => {}
    }
    Ok(())
}

fn attach_program(ebpf: &mut Ebpf, btf: &aya::Btf, name: &str, attach: Attach) -> anyhow::Result<()> {
    match attach {
        Attach::TracePoint(points) => {
            let program: &mut TracePoint = program_mut(ebpf, name)?;
            program.load()?;
            let mut attached = 0;
            for (category, point) in points {
                if !Path::new("/sys/kernel/tracing/events").join(category).join(point).exists() {
                    debug!(category, point, "tracepoint absent on this kernel");
                    continue;
                }
                program.attach(category, point).with_context(|| format!("attaching {category}:{point}"))?;
                attached += 1;
            }
            if attached == 0 {
                bail!("none of its tracepoints exists on this kernel: {points:?}");
            }
        }
        Attach::RawTracePoint(point) => {
            let program: &mut RawTracePoint = program_mut(ebpf, name)?;
            program.load()?;
            program.attach(point).with_context(|| format!("attaching raw tracepoint {point}"))?;
        }
        Attach::Lsm(hook) => {
            let program: &mut Lsm = program_mut(ebpf, name)?;
            program.load(hook, btf)?;
            program.attach()?;
        }
        Attach::FEntry(function) => {
            let program: &mut FEntry = program_mut(ebpf, name)?;
            program.load(function, btf)?;
            program.attach()?;
        }
    }
    Ok(())
}

fn raise_memlock_limit() {
    let limit = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: valid pointer; failure only matters on kernels that charge BPF memory to memlock.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) } != 0 {
        debug!("could not raise RLIMIT_MEMLOCK");
    }
}

/// How often each ring is read whatever the kernel says. The programs wake the reader only once a
/// quarter of a ring is waiting (`ids-ebpf` `maps::wakeup_flags`), so below that a record waits at
/// most this long: far below what any consumer promises (the integrity debounce is 200 ms), and
/// one read per interval instead of one wakeup per record.
pub(crate) const READ_INTERVAL: std::time::Duration = std::time::Duration::from_millis(20);

/// Reads one ring buffer every `READ_INTERVAL` and whenever the kernel wakes it, until stop
/// (then empties it once more) or until the channel closes.
/// Never blocks on the channel: a full channel counts the record as dropped.
pub(crate) async fn read_ring(
    signal: Signal,
    ring: RingBuf<MapData>,
    tx: mpsc::Sender<RawEvent>,
    stats: Arc<Stats>,
    stop: crate::harness::Stop,
) -> anyhow::Result<()> {
    let counters = stats.of(signal);
    // SAFETY: the ring buffer owns its fd and keeps it open for as long as the AsyncFd holds it.
    let mut fd = unsafe { AsyncFd::register(ring) }
        .map_err(|e| anyhow!("registering ring buffer with the reactor: {}", e.into_parts().1))?;
    let drain = |ring: &mut RingBuf<MapData>| -> bool {
        while let Some(item) = ring.next() {
            match decode(&item) {
                Ok(event) => match tx.try_send(event) {
                    Ok(()) => {
                        counters.received.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        counters.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => return false,
                },
                Err(e) => {
                    counters.malformed.fetch_add(1, Ordering::Relaxed);
                    warn!(signal = signal_name(signal), error = %e, "malformed record");
                }
            }
        }
        true
    };
    let mut tick = tokio::time::interval(READ_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            // The daemon detached the programs before stopping: what is left is read once more.
            _ = stop.stopped() => {
                drain(fd.get_mut());
                return Ok(());
            }
            _ = tick.tick() => {
                if !drain(fd.get_mut()) {
                    return Ok(());
                }
            }
            guard = fd.readable_mut() => {
                let mut guard = guard?;
                if !drain(guard.get_inner_mut()) {
                    return Ok(());
                }
                guard.clear_ready();
            }
        }
    }
}

pub fn all_signals() -> [Signal; 3] {
    SIGNALS
}
