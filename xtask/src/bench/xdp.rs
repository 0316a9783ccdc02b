//! Area `xdp`: dropping banned sources with `ids`' XDP program beside an nftables `netdev`
//! ingress chain with a set and iptables `raw PREROUTING` with an ipset `hash:ip`, all on the
//! same veth pair and the same generators, in one run.
//!
//! Topology: two network namespaces this bench creates, a generator namespace and a target
//! namespace, joined by a veth pair (198.18.0.1/24 on the generator side, 198.18.0.2/24 on the
//! target side); GRO is on at the target end so that it runs NAPI, which lets it receive XDP
//! frames from its peer. Both namespaces go away when the bench ends, failed or not, and with them
//! the veth, the daemon's XDP attachment and every nftables, ipset and iptables object made here.
//! Traffic goes only between those two ends; banned sets are filled with the generators' sources
//! plus filler addresses from 10.0.0.0/8 to which nothing is ever sent.
//!
//! Two generators, both in the generator namespace:
//! - **socket**: `sendmmsg(2)` of 18-byte UDP datagrams from one source. Such packets reach the
//!   target as socket buffers without the 256-byte headroom XDP needs, so an XDP program on veth
//!   copies each one first (the path of container traffic).
//! - **frame**: `BPF_PROG_TEST_RUN` in live-frames mode (`BPF_F_TEST_XDP_LIVE_FRAMES`, Linux 5.18):
//!   an XDP program of two instructions, `r0 = XDP_TX; exit`, runs over a prebuilt
//!   Ethernet/IPv4/UDP frame with the generator end as ingress device, so every repetition is
//!   transmitted through the veth and arrives at the target as an XDP frame with headroom, the
//!   path a real NIC's driver gives. Each call sends from the next of [`FRAME_SOURCES`] banned
//!   source addresses; [`FRAME_THREADS`] threads share the generator CPU.
//!
//! Contenders on the target end, each alone in turn: `ids run` in the target namespace with
//! `[xdp] interfaces` naming the target end (driver mode, `[xdp] mode = "native"`; then generic
//! mode, `mode = "generic"`; then its tc ingress program, `mode = "tc"`, what `auto` picks on a
//! veth) and the banned set
//! installed with `ids ban --file`; nftables; iptables +
//! ipset; and, as the floor any XDP program sits on, a bare `r0 = XDP_DROP; exit`. The generator
//! threads are pinned to one CPU, where the veth's receive work runs too, in softirq. For each
//! contender, set size and generator: softirq nanoseconds of that CPU per dropped packet (from
//! `/proc/stat`, divided by the packets the contender's own counters say it dropped), the same
//! with system time (the generator's) included, and the drop rate, medians over [`REPETITIONS`]
//! runs; ratios of ids to the peers. Then: time to install [`INSTALL_ENTRIES`] entries, TCP
//! throughput of legitimate traffic with and without the program attached, and the time from a
//! ban command returning to the first dropped packet.
//!
//! `IDS_BENCH_QUICK=1` runs a short version (two set sizes, one repetition, shorter runs).
use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};

use super::{
    Machine, append_to_benchmarks, build_release, command_stdout, load_average, median, thousands, utc_timestamp,
};

const GEN_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const TARGET_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// Source of the socket generator (a second address on the generator end).
const SOCKET_SOURCE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
/// Sources of the ban-latency trials, one per trial, never banned before their trial.
const LATENCY_SOURCE_BASE: u8 = 100;
/// Banned sources of the frame generator: 198.18.1.1 and up.
const FRAME_SOURCES: u8 = 64;
const DISCARD_PORT: u16 = 9;
const LATENCY_PORT: u16 = 7000;
const TCP_PORT: u16 = 5201;
/// Frames per `BPF_PROG_TEST_RUN` call of the frame generator.
const FRAMES_PER_CALL: u32 = 524_288;
/// Frame generator threads, all on the generator CPU.
const FRAME_THREADS: usize = 3;
const SOCKET_BATCH: usize = 64;
const UDP_PAYLOAD: usize = 18;
/// The CPU the generators run on, the last one; the veth's receive work follows them there
/// (NAPI is scheduled on the CPU that queues the packet).
fn generator_cpu() -> usize {
    thread::available_parallelism().map_or(0, |n| n.get() - 1)
}

const FULL_SIZES: [usize; 3] = [1_000, 100_000, 1_000_000];
const QUICK_SIZES: [usize; 2] = [1_000, 100_000];
const REPETITIONS: usize = 3;
const RUN_SECS: f64 = 2.0;
const QUICK_RUN_SECS: f64 = 1.0;
const INSTALL_ENTRIES: usize = 100_000;
/// Up to this set size the bench checks that `ids bans --json` shows the drops it counted.
const CROSS_CHECK_MAX: usize = 1_000;
const TCP_SECS: f64 = 3.0;
const LATENCY_TRIALS: usize = 10;
/// Pacing of the latency generator: one datagram per interval.
const LATENCY_INTERVAL: Duration = Duration::from_micros(20);

const TARGET_XDP_VS_NFT: f64 = 2.0;
const TARGET_RATE_SPREAD: f64 = 0.20;
const TARGET_BAN_LATENCY: Duration = Duration::from_millis(10);

const READY_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

pub(super) fn bench_xdp(root: &Path) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    ensure!(
        unsafe { libc::geteuid() } == 0,
        "the xdp bench needs root (network namespaces, XDP, nftables): run `sudo -E cargo xtask bench xdp`"
    );
    let quick = match std::env::var("IDS_BENCH_QUICK") {
        Ok(v) if v == "1" => true,
        Ok(v) if v.is_empty() || v == "0" => false,
        Ok(v) => bail!("IDS_BENCH_QUICK={v:?}: expected 1 (quick run) or 0"),
        Err(std::env::VarError::NotPresent) => false,
        Err(e) => return Err(e).context("reading IDS_BENCH_QUICK"),
    };
    let plan = if quick {
        Plan { sizes: QUICK_SIZES.to_vec(), repetitions: 1, run_secs: QUICK_RUN_SECS, latency_trials: 3, quick }
    } else {
        Plan {
            sizes: FULL_SIZES.to_vec(),
            repetitions: REPETITIONS,
            run_secs: RUN_SECS,
            latency_trials: LATENCY_TRIALS,
            quick,
        }
    };
    for tool in ["ip", "nft", "ipset", "iptables", "ethtool"] {
        ensure!(
            Command::new(tool).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok(),
            "{tool} is missing: `cargo xtask setup` installs it"
        );
    }
    let ids = build_release(root)?;
    let machine = Machine::describe(&ids)?;
    let scratch = BenchDir::create()?;
    remove_stale_namespaces();
    let topo = Topology::create()?;
    eprintln!(
        "bench: namespaces {} → {}, veth {} → {}",
        topo.gen_ns.name, topo.target_ns.name, topo.gen_dev, topo.target_dev
    );
    let started = Instant::now();
    raise_session_priority();

    let ours = OursSupport::probe(&ids);
    let mut contenders = Vec::new();
    match &ours {
        OursSupport::Available => contenders.extend([Contender::Ids, Contender::IdsGeneric, Contender::IdsTc]),
        OursSupport::Missing(why) => eprintln!("bench: ids contender left out: {why}"),
    }
    contenders.push(Contender::Nft);
    contenders.push(Contender::Ipset);
    contenders.push(Contender::XdpDropFloor);

    let mut cells = Vec::new();
    for &size in &plan.sizes {
        let set = banned_set(size);
        for &contender in &contenders {
            let mut installed = Installed::install(contender, &topo, &ids, &scratch, &set)?;
            for generator in [Generator::Frame, Generator::Socket] {
                let mut runs = Vec::new();
                for rep in 0..plan.repetitions {
                    let run = measure_drop(&topo, &mut installed, generator, plan.run_secs).with_context(|| {
                        format!("{} with {} entries, {} generator", contender.label(), size, generator.label())
                    })?;
                    eprintln!(
                        "bench: {} {} entries, {} generator, run {}/{}: sent {}, dropped {}, {:.0} softirq ns/packet ({:.0} all kernel), {:.3} Mpps; CPU s user {:.2} kernel {:.2} softirq {:.2} idle {:.2}",
                        contender.label(),
                        thousands(size as u64),
                        generator.label(),
                        rep + 1,
                        plan.repetitions,
                        thousands(run.sent),
                        thousands(run.dropped),
                        run.ns_per_packet(),
                        run.kernel_ns_per_packet(),
                        run.rate() / 1e6,
                        run.cpu.user_ns / 1e9,
                        run.cpu.kernel_ns / 1e9,
                        run.cpu.softirq_ns / 1e9,
                        run.cpu.idle_ns / 1e9,
                    );
                    runs.push(run);
                }
                cells.push(Cell { contender, size, generator, runs });
            }
            if let Installed::Ids { daemon, .. } = &installed
                && size <= CROSS_CHECK_MAX
            {
                let (by_map, by_cli) = (daemon.dropped()?, daemon.dropped_by_cli()?);
                ensure!(by_map == by_cli, "BAN_HITS says {by_map} packets dropped, `ids bans --json` says {by_cli}");
            }
            installed.remove(&topo)?;
        }
    }

    let installs = measure_install_times(&topo, &ids, &scratch, &ours, &plan)?;
    let tcp = measure_tcp(&topo, &ids, &scratch, &ours, &plan)?;
    let latency = measure_ban_latency(&topo, &ids, &scratch, &ours, &plan)?;
    let elapsed = started.elapsed();
    drop(topo);

    let report = Report {
        machine,
        load_after: load_average(),
        iptables_version: command_stdout(Command::new("iptables").arg("-V")).unwrap_or_default(),
        nft_version: command_stdout(Command::new("nft").arg("--version")).unwrap_or_default(),
        plan,
        ours,
        cells,
        installs,
        tcp,
        latency,
        elapsed,
    };
    let section = report.render();
    append_to_benchmarks(&root.join("BENCHMARKS.md"), &section)?;
    print!("{section}");
    eprintln!("bench: appended to {}", root.join("BENCHMARKS.md").display());
    Ok(())
}

struct Plan {
    sizes: Vec<usize>,
    repetitions: usize,
    run_secs: f64,
    latency_trials: usize,
    quick: bool,
}

/// The banned set of `size` entries: the frame sources, the socket source, then filler from
/// 10.0.0.0/8 (no traffic goes there).
fn banned_set(size: usize) -> Vec<Ipv4Addr> {
    let mut set: Vec<Ipv4Addr> = frame_sources().collect();
    set.push(SOCKET_SOURCE);
    let mut i: u32 = 1;
    while set.len() < size {
        set.push(Ipv4Addr::from(0x0a00_0000 | i));
        i += 1;
    }
    set
}

fn frame_sources() -> impl Iterator<Item = Ipv4Addr> {
    (1..=FRAME_SOURCES).map(|i| Ipv4Addr::new(198, 18, 1, i))
}

// ---------------------------------------------------------------------------------------------
// Topology

/// A network namespace made by `ip netns add`; deleted on drop, which also deletes its veth end.
struct Netns {
    name: String,
}

impl Netns {
    fn create(name: String) -> anyhow::Result<Self> {
        run_quiet(Command::new("ip").args(["netns", "add", &name]))?;
        Ok(Self { name })
    }

    /// `ip netns exec NAME program ...`.
    fn command(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name, program]);
        command
    }

    fn file(&self) -> anyhow::Result<File> {
        let path = format!("/run/netns/{}", self.name);
        File::open(&path).with_context(|| format!("opening {path}"))
    }

    /// Runs `f` on a new thread that has entered this namespace, and returns its result.
    fn run_in<T: Send + 'static>(&self, f: impl FnOnce() -> anyhow::Result<T> + Send + 'static) -> anyhow::Result<T> {
        let handle = self.spawn_in(f)?;
        handle.join().map_err(|_| anyhow::anyhow!("a thread in namespace panicked"))?
    }

    fn spawn_in<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
    ) -> anyhow::Result<thread::JoinHandle<anyhow::Result<T>>> {
        let file = self.file()?;
        let name = self.name.clone();
        Ok(thread::spawn(move || {
            // SAFETY: a valid namespace descriptor; setns affects only this thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            ensure!(rc == 0, "setns into network namespace {name}: {}", std::io::Error::last_os_error());
            drop(file);
            f()
        }))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = run_quiet(Command::new("ip").args(["netns", "del", &self.name])) {
            eprintln!("bench: could not delete network namespace {}: {e:#}", self.name);
        }
    }
}

/// Deletes namespaces left by an earlier run of this bench that was killed (a signal skips the
/// drop guards): their names end in the pid of a process that no longer exists.
fn remove_stale_namespaces() {
    let Ok(entries) = fs::read_dir("/run/netns") else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix("idsb-gen-").or_else(|| name.strip_prefix("idsb-tgt-")) else { continue };
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            eprintln!("bench: deleting network namespace {name} left by a killed run");
            drop(Netns { name });
        }
    }
}

struct Topology {
    // Field order: the namespaces are deleted when the topology drops.
    gen_ns: Netns,
    target_ns: Netns,
    gen_dev: String,
    target_dev: String,
    gen_ifindex: u32,
    gen_mac: [u8; 6],
    target_mac: [u8; 6],
}

impl Topology {
    fn create() -> anyhow::Result<Self> {
        let pid = std::process::id();
        let gen_ns = Netns::create(format!("idsb-gen-{pid}"))?;
        let target_ns = Netns::create(format!("idsb-tgt-{pid}"))?;
        let gen_dev = format!("idsbg{pid}");
        let target_dev = format!("idsbt{pid}");
        run_quiet(Command::new("ip").args([
            "link",
            "add",
            &gen_dev,
            "netns",
            &gen_ns.name,
            "type",
            "veth",
            "peer",
            "name",
            &target_dev,
            "netns",
            &target_ns.name,
        ]))?;
        let ip_in = |ns: &Netns, args: &[&str]| run_quiet(Command::new("ip").args(["-n", &ns.name]).args(args));
        ip_in(&gen_ns, &["addr", "add", &format!("{GEN_ADDR}/24"), "dev", &gen_dev])?;
        ip_in(&gen_ns, &["addr", "add", &format!("{SOCKET_SOURCE}/24"), "dev", &gen_dev])?;
        for i in 0..LATENCY_TRIALS as u8 {
            ip_in(&gen_ns, &["addr", "add", &format!("198.18.0.{}/24", LATENCY_SOURCE_BASE + i), "dev", &gen_dev])?;
        }
        ip_in(&target_ns, &["addr", "add", &format!("{TARGET_ADDR}/24"), "dev", &target_dev])?;
        for (ns, dev) in [(&gen_ns, &gen_dev), (&target_ns, &target_dev)] {
            ip_in(ns, &["link", "set", "lo", "up"])?;
            ip_in(ns, &["link", "set", dev, "up"])?;
        }
        // NAPI on the target end: it can then take XDP frames from its peer with no XDP program.
        run_quiet(target_ns.command("ethtool").args(["-K", &target_dev, "gro", "on"]))?;
        let (gen_ifindex, gen_mac) = link_info(&gen_ns, &gen_dev)?;
        let (_, target_mac) = link_info(&target_ns, &target_dev)?;
        let mac = |m: [u8; 6]| m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
        ip_in(
            &gen_ns,
            &[
                "neigh",
                "replace",
                &TARGET_ADDR.to_string(),
                "lladdr",
                &mac(target_mac),
                "dev",
                &gen_dev,
                "nud",
                "permanent",
            ],
        )?;
        Ok(Self { gen_ns, target_ns, gen_dev, target_dev, gen_ifindex, gen_mac, target_mac })
    }
}

/// Interface index and MAC address of `dev` in `ns`.
fn link_info(ns: &Netns, dev: &str) -> anyhow::Result<(u32, [u8; 6])> {
    let text = command_stdout(Command::new("ip").args(["-n", &ns.name, "-j", "link", "show", "dev", dev]))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("ip -j link show printed {text:?}"))?;
    let link = &json[0];
    let ifindex = link["ifindex"].as_u64().with_context(|| format!("no ifindex for {dev}: {text}"))? as u32;
    let address = link["address"].as_str().with_context(|| format!("no address for {dev}: {text}"))?;
    let mut mac = [0u8; 6];
    let parts: Vec<&str> = address.split(':').collect();
    ensure!(parts.len() == 6, "MAC address {address:?} of {dev}");
    for (byte, part) in mac.iter_mut().zip(parts) {
        *byte = u8::from_str_radix(part, 16).with_context(|| format!("MAC address {address:?} of {dev}"))?;
    }
    Ok((ifindex, mac))
}

fn run_quiet(command: &mut Command) -> anyhow::Result<()> {
    command_stdout(command).map(drop)
}

/// The bench's scratch directory under /var/tmp; removed on drop.
struct BenchDir {
    dir: PathBuf,
}

impl BenchDir {
    fn create() -> anyhow::Result<Self> {
        let dir = PathBuf::from(format!("/var/tmp/ids-bench-xdp-{}", std::process::id()));
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self { dir })
    }
}

impl Drop for BenchDir {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            eprintln!("bench: could not remove {}: {e}", self.dir.display());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Generators

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Generator {
    Frame,
    Socket,
}

impl Generator {
    fn label(self) -> &'static str {
        match self {
            Self::Frame => "frame",
            Self::Socket => "socket",
        }
    }

    /// Sends for `secs` seconds from the generator namespace; returns the packets sent.
    fn run(self, topo: &Topology, secs: f64) -> anyhow::Result<u64> {
        let duration = Duration::from_secs_f64(secs);
        match self {
            Self::Socket => topo.gen_ns.run_in(move || {
                dedicate_this_thread(generator_cpu())?;
                send_datagrams(SOCKET_SOURCE, duration)
            }),
            Self::Frame => {
                // Several threads on the one CPU: each call ends by waiting for an RCU grace
                // period (the kernel tears down its page pool), and on a quiet machine those
                // waits are long; the other threads send meanwhile.
                let mut threads = Vec::new();
                for offset in 0..FRAME_THREADS {
                    let ifindex = topo.gen_ifindex;
                    let (src_mac, dst_mac) = (topo.gen_mac, topo.target_mac);
                    threads.push(topo.gen_ns.spawn_in(move || {
                        dedicate_this_thread(generator_cpu())?;
                        send_frames(ifindex, src_mac, dst_mac, offset, duration)
                    })?);
                }
                let mut sent = 0;
                for thread in threads {
                    sent += thread.join().map_err(|_| anyhow::anyhow!("a frame generator thread panicked"))??;
                }
                Ok(sent)
            }
        }
    }
}

/// Gives the bench's scheduler autogroup nice -20: with autogroups (the default), a thread's own
/// nice only counts within its session, and other sessions' builds would take half the
/// generator's CPU. Best effort: without autogroups the threads' nice suffices.
fn raise_session_priority() {
    if let Err(e) = fs::write("/proc/self/autogroup", "-20") {
        eprintln!("bench: could not raise the autogroup priority ({e}); figures may suffer from other load");
    }
}

/// Pins the calling thread to `cpu` and gives it nice -20, so that on a shared machine the
/// generator (and the veth receive work it triggers in softirq on the same CPU) keeps that CPU.
fn dedicate_this_thread(cpu: usize) -> anyhow::Result<()> {
    // SAFETY: cpu_set_t is plain data; CPU_SET writes inside it; the calls take valid pointers.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        ensure!(
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) == 0,
            "pinning the generator to CPU {cpu}: {}",
            std::io::Error::last_os_error()
        );
        let tid = libc::gettid() as libc::id_t;
        ensure!(
            libc::setpriority(libc::PRIO_PROCESS, tid, -20) == 0,
            "raising the generator's priority: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// `sendmmsg(2)` in batches of [`SOCKET_BATCH`] from `source` to the target's discard port.
fn send_datagrams(source: Ipv4Addr, duration: Duration) -> anyhow::Result<u64> {
    let socket = UdpSocket::bind(SocketAddrV4::new(source, 0)).with_context(|| format!("binding UDP to {source}"))?;
    socket.connect(SocketAddrV4::new(TARGET_ADDR, DISCARD_PORT)).context("connecting the UDP socket")?;
    let payload = [0x5au8; UDP_PAYLOAD];
    let mut iov: Vec<libc::iovec> = (0..SOCKET_BATCH)
        .map(|_| libc::iovec { iov_base: payload.as_ptr() as *mut _, iov_len: payload.len() })
        .collect();
    // SAFETY: mmsghdr is plain data; zero is a valid value.
    let mut msgs: Vec<libc::mmsghdr> = (0..SOCKET_BATCH).map(|_| unsafe { std::mem::zeroed() }).collect();
    for (msg, iov) in msgs.iter_mut().zip(iov.iter_mut()) {
        msg.msg_hdr.msg_iov = iov;
        msg.msg_hdr.msg_iovlen = 1;
    }
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < duration {
        // SAFETY: `msgs` holds SOCKET_BATCH valid headers pointing at live buffers.
        let n = unsafe { libc::sendmmsg(socket.as_raw_fd(), msgs.as_mut_ptr(), SOCKET_BATCH as u32, 0) };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            // A full device queue: try again.
            if err.raw_os_error() == Some(libc::ENOBUFS) || err.kind() == std::io::ErrorKind::WouldBlock {
                continue;
            }
            return Err(err).context("sendmmsg");
        }
        sent += n as u64;
    }
    Ok(sent)
}

const BPF_PROG_LOAD: libc::c_int = 5;
const BPF_PROG_TEST_RUN: libc::c_int = 10;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_F_TEST_XDP_LIVE_FRAMES: u32 = 1 << 1;
const BPF_LINK_CREATE: libc::c_int = 28;
const BPF_XDP: u32 = 37;
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;
const XDP_DROP: i32 = 1;
const XDP_TX: i32 = 3;

#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

/// `struct xdp_md` of the UAPI.
#[repr(C)]
#[derive(Default)]
struct XdpMd {
    data: u32,
    data_end: u32,
    data_meta: u32,
    ingress_ifindex: u32,
    rx_queue_index: u32,
    egress_ifindex: u32,
}

fn bpf(cmd: libc::c_int, attr: *mut libc::c_void, size: usize) -> std::io::Result<libc::c_long> {
    // SAFETY: `attr` points at a live attribute struct of `size` bytes for `cmd`.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr, size as libc::c_uint) };
    if rc < 0 { Err(std::io::Error::last_os_error()) } else { Ok(rc) }
}

/// The instructions of `r0 = action; exit`: mov64 r0, imm (BPF_ALU64 | BPF_MOV | BPF_K = 0xb7,
/// registers in byte 1, imm in the high 32 bits), then exit (BPF_JMP | BPF_EXIT = 0x95).
fn constant_program(action: i32) -> [u64; 2] {
    [0xb7 | (u64::from(action as u32) << 32), 0x95]
}

/// Loads the XDP program `r0 = action; exit`.
fn load_constant_xdp_program(action: i32) -> anyhow::Result<OwnedFd> {
    let insns = constant_program(action);
    let license = c"GPL";
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_XDP,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        ..Default::default()
    };
    attr.prog_name[..8].copy_from_slice(b"idsbench");
    let fd = bpf(BPF_PROG_LOAD, (&raw mut attr).cast(), size_of::<ProgLoadAttr>())
        .context("bpf(BPF_PROG_LOAD) of the generator's XDP program")?;
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
}

/// Attaches `prog` to interface `ifindex` of the calling thread's namespace through a BPF link;
/// closing the returned descriptor detaches it.
fn attach_xdp_link(prog: &OwnedFd, ifindex: u32, flags: u32) -> anyhow::Result<OwnedFd> {
    let mut attr =
        LinkCreateAttr { prog_fd: prog.as_raw_fd() as u32, target_ifindex: ifindex, attach_type: BPF_XDP, flags };
    let fd = bpf(BPF_LINK_CREATE, (&raw mut attr).cast(), size_of::<LinkCreateAttr>())
        .with_context(|| format!("bpf(BPF_LINK_CREATE) of an XDP program on ifindex {ifindex}"))?;
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// A 60-byte Ethernet/IPv4/UDP frame from `source` to the target's discard port.
fn udp_frame(src_mac: [u8; 6], dst_mac: [u8; 6], source: Ipv4Addr, dest: Ipv4Addr) -> Vec<u8> {
    let mut f = Vec::with_capacity(60);
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let total_len = (20 + 8 + UDP_PAYLOAD) as u16;
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&total_len.to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&source.octets());
    ip[16..20].copy_from_slice(&dest.octets());
    let checksum = ipv4_checksum(&ip);
    ip[10..12].copy_from_slice(&checksum.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&4321u16.to_be_bytes());
    f.extend_from_slice(&DISCARD_PORT.to_be_bytes());
    f.extend_from_slice(&((8 + UDP_PAYLOAD) as u16).to_be_bytes());
    f.extend_from_slice(&0u16.to_be_bytes());
    f.extend_from_slice(&[0x5a; UDP_PAYLOAD]);
    f
}

fn ipv4_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], c[1]]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Runs the `XDP_TX` program in live-frames mode with `ifindex` as ingress device, rotating the
/// source over the frame sources, for `duration`; returns the frames sent.
fn send_frames(
    ifindex: u32,
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    first: usize,
    duration: Duration,
) -> anyhow::Result<u64> {
    let prog = load_constant_xdp_program(XDP_TX)?;
    let frames: Vec<Vec<u8>> = frame_sources().map(|s| udp_frame(src_mac, dst_mac, s, TARGET_ADDR)).collect();
    let mut ctx = XdpMd { ingress_ifindex: ifindex, ..Default::default() };
    let start = Instant::now();
    let mut sent = 0u64;
    let mut i = first;
    while start.elapsed() < duration {
        let frame = &frames[i % frames.len()];
        i += 1;
        // The kernel wants data_end = the frame's length (data = 0, no metadata).
        ctx.data_end = frame.len() as u32;
        let mut attr = TestRunAttr {
            prog_fd: prog.as_raw_fd() as u32,
            data_size_in: frame.len() as u32,
            data_in: frame.as_ptr() as u64,
            repeat: FRAMES_PER_CALL,
            ctx_size_in: size_of::<XdpMd>() as u32,
            ctx_in: (&raw mut ctx) as u64,
            flags: BPF_F_TEST_XDP_LIVE_FRAMES,
            ..Default::default()
        };
        bpf(BPF_PROG_TEST_RUN, (&raw mut attr).cast(), size_of::<TestRunAttr>())
            .context("bpf(BPF_PROG_TEST_RUN) in live-frames mode (needs Linux 5.18)")?;
        sent += u64::from(FRAMES_PER_CALL);
    }
    Ok(sent)
}

// ---------------------------------------------------------------------------------------------
// Contenders

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Contender {
    Ids,
    /// `ids` in generic mode: `[xdp] mode = "generic"` in its config.
    IdsGeneric,
    /// `ids`' tc ingress program: `[xdp] mode = "tc"` in its config.
    IdsTc,
    Nft,
    Ipset,
    /// Reference: the two-instruction program `r0 = XDP_DROP; exit` in driver mode, the least
    /// any XDP program can spend.
    XdpDropFloor,
}

impl Contender {
    fn label(self) -> &'static str {
        match self {
            Self::Ids => "ids XDP (driver)",
            Self::IdsGeneric => "ids XDP (generic, for reference)",
            Self::IdsTc => "ids tc ingress",
            Self::Nft => "nftables netdev set",
            Self::Ipset => "iptables raw + ipset",
            Self::XdpDropFloor => "reference: bare XDP_DROP (driver)",
        }
    }
}

/// Whether this `ids` build has XDP bans.
enum OursSupport {
    Available,
    Missing(String),
}

impl OursSupport {
    fn probe(ids: &Path) -> Self {
        match Command::new(ids).args(["ban", "--help"]).output() {
            Ok(out) if out.status.success() => Self::Available,
            Ok(out) => Self::Missing(format!(
                "`ids ban --help` failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )),
            Err(e) => Self::Missing(format!("running {}: {e}", ids.display())),
        }
    }

    fn available(&self) -> bool {
        matches!(self, Self::Available)
    }
}

/// The nftables table of the bench, in the target namespace.
const NFT_TABLE: &str = "idsbench";
const IPSET_NAME: &str = "idsbench";

/// One contender installed on the target end with a banned set.
enum Installed {
    Ids {
        daemon: IdsDaemon,
    },
    Nft {
        target_ns: String,
    },
    Ipset {
        target_ns: String,
    },
    /// The attachment lasts as long as the link descriptor.
    Floor {
        link: OwnedFd,
        target_ns: String,
        target_dev: String,
    },
}

impl Installed {
    fn install(
        contender: Contender,
        topo: &Topology,
        ids: &Path,
        dir: &BenchDir,
        set: &[Ipv4Addr],
    ) -> anyhow::Result<Self> {
        let started = Instant::now();
        let installed = match contender {
            Contender::Ids | Contender::IdsGeneric => {
                let generic = contender == Contender::IdsGeneric;
                let daemon = IdsDaemon::start(ids, dir, topo, if generic { "generic" } else { "native" })?;
                let want = if generic { XDP_ATTACHED_SKB } else { XDP_ATTACHED_DRV };
                let mode = attached_xdp_mode(topo)?;
                ensure!(
                    mode == Some(want),
                    "ids attached XDP in mode {mode:?} to {}, expected {want}",
                    topo.target_dev
                );
                daemon.ban_all(set, dir)?;
                Self::Ids { daemon }
            }
            Contender::IdsTc => {
                let daemon = IdsDaemon::start(ids, dir, topo, "tc")?;
                let mode = attached_xdp_mode(topo)?;
                ensure!(mode.is_none(), "ids in tc mode attached XDP (mode {mode:?}) to {}", topo.target_dev);
                let status = command_stdout(&mut daemon.cli(&["status", "--json"]))?;
                let status: serde_json::Value =
                    serde_json::from_str(&status).with_context(|| format!("ids status --json printed {status:?}"))?;
                let program = &status["xdp"]["interfaces"][0]["program"];
                ensure!(program == "tc_guard", "ids in tc mode reports {program} on {}: {status}", topo.target_dev);
                daemon.ban_all(set, dir)?;
                Self::Ids { daemon }
            }
            Contender::Nft => {
                nft_create(topo)?;
                nft_add_elements(topo, dir, set)?;
                Self::Nft { target_ns: topo.target_ns.name.clone() }
            }
            Contender::Ipset => {
                ipset_create(topo)?;
                ipset_restore(topo, dir, set)?;
                run_quiet(topo.target_ns.command("iptables").args([
                    "-t",
                    "raw",
                    "-A",
                    "PREROUTING",
                    "-m",
                    "set",
                    "--match-set",
                    IPSET_NAME,
                    "src",
                    "-j",
                    "DROP",
                ]))?;
                Self::Ipset { target_ns: topo.target_ns.name.clone() }
            }
            Contender::XdpDropFloor => {
                let (ifindex, _) = link_info(&topo.target_ns, &topo.target_dev)?;
                let link = topo.target_ns.run_in(move || {
                    let prog = load_constant_xdp_program(XDP_DROP)?;
                    attach_xdp_link(&prog, ifindex, XDP_FLAGS_DRV_MODE)
                })?;
                Self::Floor { link, target_ns: topo.target_ns.name.clone(), target_dev: topo.target_dev.clone() }
            }
        };
        eprintln!(
            "bench: {} installed with {} entries in {:.2} s",
            contender.label(),
            thousands(set.len() as u64),
            started.elapsed().as_secs_f64()
        );
        Ok(installed)
    }

    /// Packets dropped so far, by the contender's own counters.
    fn dropped(&self) -> anyhow::Result<u64> {
        match self {
            Self::Ids { daemon, .. } => daemon.dropped(),
            Self::Nft { target_ns } => {
                let text = command_stdout(
                    ns_command(target_ns, "nft").args(["list", "chain", "netdev", NFT_TABLE, "ingress"]),
                )?;
                parse_nft_counter(&text).with_context(|| format!("no counter in `nft list chain`: {text}"))
            }
            Self::Ipset { target_ns } => {
                let text = command_stdout(ns_command(target_ns, "iptables").args([
                    "-t",
                    "raw",
                    "-L",
                    "PREROUTING",
                    "-n",
                    "-v",
                    "-x",
                ]))?;
                parse_iptables_counter(&text).with_context(|| format!("no rule counter in `iptables -L`: {text}"))
            }
            Self::Floor { target_ns, target_dev, .. } => {
                let text = command_stdout(ns_command(target_ns, "ethtool").args(["-S", target_dev]))?;
                let drops: u64 = text
                    .lines()
                    .filter_map(|l| l.trim().split_once(':'))
                    .filter(|(k, _)| k.starts_with("rx_queue_") && k.ends_with("_xdp_drops"))
                    .filter_map(|(_, v)| v.trim().parse::<u64>().ok())
                    .sum();
                Ok(drops)
            }
        }
    }

    fn remove(self, topo: &Topology) -> anyhow::Result<()> {
        match self {
            Self::Ids { daemon, .. } => {
                daemon.stop()?;
                ensure_no_xdp(topo)
            }
            Self::Nft { target_ns } => {
                run_quiet(ns_command(&target_ns, "nft").args(["delete", "table", "netdev", NFT_TABLE]))
            }
            Self::Ipset { target_ns } => {
                run_quiet(ns_command(&target_ns, "iptables").args(["-t", "raw", "-F", "PREROUTING"]))?;
                run_quiet(ns_command(&target_ns, "ipset").args(["destroy", IPSET_NAME]))
            }
            Self::Floor { link, .. } => {
                drop(link);
                ensure_no_xdp(topo)
            }
        }
    }
}

fn ns_command(ns: &str, program: &str) -> Command {
    let mut command = Command::new("ip");
    command.args(["netns", "exec", ns, program]);
    command
}

/// The table, an empty set and the ingress chain that drops what the set holds.
fn nft_create(topo: &Topology) -> anyhow::Result<()> {
    let ruleset = format!(
        "table netdev {NFT_TABLE} {{\n\
         \tset banned {{ type ipv4_addr; }}\n\
         \tchain ingress {{ type filter hook ingress device \"{}\" priority -500; policy accept; ip saddr @banned counter drop; }}\n\
         }}\n",
        topo.target_dev
    );
    nft_file(topo, &ruleset)
}

fn nft_file(topo: &Topology, text: &str) -> anyhow::Result<()> {
    let mut child = topo
        .target_ns
        .command("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting nft -f -")?;
    child.stdin.take().context("nft stdin")?.write_all(text.as_bytes()).context("writing to nft -f -")?;
    let out = child.wait_with_output().context("waiting for nft")?;
    ensure!(out.status.success(), "nft -f failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    Ok(())
}

/// One `nft -f` batch adding every address of `set`; returns how long nft took.
fn nft_add_elements(topo: &Topology, dir: &BenchDir, set: &[Ipv4Addr]) -> anyhow::Result<Duration> {
    let path = dir.dir.join("nft-elements.nft");
    let mut text = String::with_capacity(set.len() * 16);
    for chunk in set.chunks(10_000) {
        let _ = write!(text, "add element netdev {NFT_TABLE} banned {{ ");
        for (i, addr) in chunk.iter().enumerate() {
            let _ = write!(text, "{}{addr}", if i > 0 { ", " } else { "" });
        }
        text.push_str(" }\n");
    }
    fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    let started = Instant::now();
    run_quiet(topo.target_ns.command("nft").arg("-f").arg(&path))?;
    Ok(started.elapsed())
}

fn ipset_create(topo: &Topology) -> anyhow::Result<()> {
    run_quiet(
        topo.target_ns.command("ipset").args(["create", IPSET_NAME, "hash:ip", "family", "inet", "maxelem", "4194304"]),
    )
}

/// `ipset restore` of every address of `set`; returns how long ipset took.
fn ipset_restore(topo: &Topology, dir: &BenchDir, set: &[Ipv4Addr]) -> anyhow::Result<Duration> {
    let path = dir.dir.join("ipset-restore.txt");
    let mut text = String::with_capacity(set.len() * 24);
    for addr in set {
        let _ = writeln!(text, "add {IPSET_NAME} {addr}");
    }
    fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    let input = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    let started = Instant::now();
    let out = topo.target_ns.command("ipset").arg("restore").stdin(input).output().context("running ipset restore")?;
    let elapsed = started.elapsed();
    ensure!(
        out.status.success(),
        "ipset restore failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(elapsed)
}

/// Packets of the first `counter packets N` in nft's listing.
fn parse_nft_counter(text: &str) -> Option<u64> {
    let rest = &text[text.find("counter packets ")? + "counter packets ".len()..];
    rest.split_whitespace().next()?.parse().ok()
}

/// Packets of the first rule in `iptables -L -v -x -n` output.
fn parse_iptables_counter(text: &str) -> Option<u64> {
    text.lines().nth(2)?.split_whitespace().next()?.parse().ok()
}

/// `ids run` in the target namespace with `[xdp] interfaces` naming the target end; stopped on drop.
struct IdsDaemon {
    /// `None` once stopped.
    child: Option<Child>,
    ids: PathBuf,
    config: PathBuf,
    log: PathBuf,
    pin_dir: PathBuf,
}

/// `[xdp] pin_dir` of the bench's daemon, inside the bpffs mounted in its own mount namespace.
const IDS_PIN_DIR: &str = "/sys/fs/bpf/ids-bench";

impl IdsDaemon {
    /// `ids` picks the XDP mode itself: driver (native) where the driver has it, as veth does;
    /// `mode`: `[xdp] mode`, `native`, `generic` or `tc`.
    fn start(ids: &Path, dir: &BenchDir, topo: &Topology, mode: &str) -> anyhow::Result<Self> {
        let state = dir.dir.join("ids-state");
        // A fresh store each time: no bans left from the previous contender run.
        let _ = fs::remove_dir_all(&state);
        let watched = dir.dir.join("watched");
        fs::create_dir_all(&watched).with_context(|| format!("creating {}", watched.display()))?;
        let config = dir.dir.join("ids.toml");
        let pin_dir = PathBuf::from(IDS_PIN_DIR);
        let toml_string = |p: &Path| serde_json::to_string(&p.display().to_string()).expect("a string serializes");
        // The port-scan detector is off: the TCP test's SYNs must not get its source banned.
        let text = format!(
            "watch = [{}]\nevents_log = {}\nstate_dir = {}\n\n[xdp]\ninterfaces = [{}]\npin_dir = {}\nscan_ports = 0\nmode = {}\n",
            toml_string(&watched),
            toml_string(&dir.dir.join("events.jsonl")),
            toml_string(&state),
            serde_json::to_string(&topo.target_dev).expect("a string serializes"),
            toml_string(&pin_dir),
            serde_json::to_string(mode).expect("a string serializes"),
        );
        fs::write(&config, text).with_context(|| format!("writing {}", config.display()))?;
        let log = dir.dir.join("ids.log");
        let log_file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("opening {}", log.display()))?;
        // `ip netns exec` gives the daemon a mount namespace with the target namespace's sysfs,
        // where it finds the target end among its interfaces; a bpffs of its own there holds its
        // pins (they go when the daemon exits, and the program leaves the interface), and tracefs
        // its tracepoints.
        let child = topo
            .target_ns
            .command("sh")
            .arg("-c")
            .arg("mount -t bpf bpf /sys/fs/bpf && mount -t tracefs nodev /sys/kernel/tracing && exec \"$0\" run --config \"$1\"")
            .arg(ids)
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("starting {} run in namespace {}", ids.display(), topo.target_ns.name))?;
        let mut daemon = Self { child: Some(child), ids: ids.into(), config, log, pin_dir };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = daemon.child.as_mut().expect("running").try_wait()? {
                bail!("ids run exited during startup ({status}); its log ends:\n{}", daemon.log_tail());
            }
            match command_stdout(&mut daemon.cli(&["status", "--json"])) {
                Ok(_) => return Ok(daemon),
                Err(e) if Instant::now() >= deadline => {
                    return Err(
                        e.context(format!("ids status did not answer; the daemon log ends:\n{}", daemon.log_tail()))
                    );
                }
                Err(_) => thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    fn cli(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.ids);
        command.args(args).arg("--config").arg(&self.config);
        command
    }

    /// Bans every address of `set`; returns how long it took.
    fn ban_all(&self, set: &[Ipv4Addr], dir: &BenchDir) -> anyhow::Result<Duration> {
        let path = dir.dir.join("ids-bans.txt");
        let mut text = String::with_capacity(set.len() * 16);
        for addr in set {
            let _ = writeln!(text, "{addr}");
        }
        fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        let started = Instant::now();
        let path_arg = path.display().to_string();
        command_stdout(&mut self.cli(&["ban", "--file", &path_arg, "--reason", "bench"]))?;
        Ok(started.elapsed())
    }

    fn ban_one(&self, addr: Ipv4Addr) -> anyhow::Result<()> {
        command_stdout(&mut self.cli(&["ban", &addr.to_string(), "--reason", "bench"])).map(drop)
    }

    /// Sum of the per-ban packet counters, read from the pinned `BAN_HITS` map, which `ids bans`
    /// shows too (`ids bans --json` would print every one of up to a million bans each time).
    fn dropped(&self) -> anyhow::Result<u64> {
        // The pins live in the daemon's mount namespace: reach them through its root.
        let pid = self.child.as_ref().expect("running").id();
        let path = PathBuf::from(format!("/proc/{pid}/root"))
            .join(self.pin_dir.strip_prefix("/").unwrap_or(&self.pin_dir))
            .join("BAN_HITS");
        let map = bpf_obj_get(&path)?;
        let cpus = possible_cpus()?;
        let mut total = 0u64;
        let mut key: Option<u32> = None;
        loop {
            let Some(next) = map_next_key(&map, key)? else { break };
            // Per-CPU values: `struct BanHits { packets: u64, bytes: u64 }` for every possible CPU.
            let mut values = vec![0u64; cpus * 2];
            if map_lookup(&map, next, &mut values)? {
                total += values.chunks(2).map(|v| v[0]).sum::<u64>();
            }
            key = Some(next);
        }
        Ok(total)
    }

    /// Cross-checks [`Self::dropped`] against `ids bans --json` (used where the list is short).
    fn dropped_by_cli(&self) -> anyhow::Result<u64> {
        let text = command_stdout(&mut self.cli(&["bans", "--json"]))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("ids bans --json printed {text:?}"))?;
        ensure!(json["ok"] == true, "ids bans --json: {text}");
        let bans = json["data"].as_array().with_context(|| format!("ids bans --json has no list in data: {text}"))?;
        Ok(bans.iter().filter_map(|b| b["packets"].as_u64()).sum())
    }

    /// SIGTERM; the daemon's bpffs, and with it the pinned link, goes with its mount namespace.
    fn stop(mut self) -> anyhow::Result<()> {
        let mut child = self.child.take().expect("running");
        // SAFETY: signals our own child, not yet reaped.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("ids run did not exit within {} s of SIGTERM", STOP_TIMEOUT.as_secs());
            }
            thread::sleep(Duration::from_millis(20));
        };
        ensure!(status.success(), "ids run exited with {status}; its log ends:\n{}", self.log_tail());
        Ok(())
    }

    fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for IdsDaemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

const BPF_MAP_LOOKUP_ELEM: libc::c_int = 1;
const BPF_MAP_GET_NEXT_KEY: libc::c_int = 4;
const BPF_OBJ_GET: libc::c_int = 7;

#[repr(C)]
#[derive(Default)]
struct ObjGetAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

#[repr(C)]
#[derive(Default)]
struct MapElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value_or_next_key: u64,
    flags: u64,
}

fn bpf_obj_get(path: &Path) -> anyhow::Result<OwnedFd> {
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).context("a pin path with a NUL byte")?;
    let mut attr = ObjGetAttr { pathname: c_path.as_ptr() as u64, ..Default::default() };
    let fd = bpf(BPF_OBJ_GET, (&raw mut attr).cast(), size_of::<ObjGetAttr>())
        .with_context(|| format!("bpf(BPF_OBJ_GET) of {}", path.display()))?;
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// The key after `key` (the first key for `None`) of a map with `u32` keys; `None` at the end.
fn map_next_key(map: &OwnedFd, key: Option<u32>) -> anyhow::Result<Option<u32>> {
    let current = key.unwrap_or(0);
    let mut next = 0u32;
    let mut attr = MapElemAttr {
        map_fd: map.as_raw_fd() as u32,
        key: if key.is_some() { (&raw const current) as u64 } else { 0 },
        value_or_next_key: (&raw mut next) as u64,
        ..Default::default()
    };
    match bpf(BPF_MAP_GET_NEXT_KEY, (&raw mut attr).cast(), size_of::<MapElemAttr>()) {
        Ok(_) => Ok(Some(next)),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e).context("bpf(BPF_MAP_GET_NEXT_KEY)"),
    }
}

/// Looks `key` up into `values`; `false` when it is gone.
fn map_lookup(map: &OwnedFd, key: u32, values: &mut [u64]) -> anyhow::Result<bool> {
    let mut attr = MapElemAttr {
        map_fd: map.as_raw_fd() as u32,
        key: (&raw const key) as u64,
        value_or_next_key: values.as_mut_ptr() as u64,
        ..Default::default()
    };
    match bpf(BPF_MAP_LOOKUP_ELEM, (&raw mut attr).cast(), size_of::<MapElemAttr>()) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e).context("bpf(BPF_MAP_LOOKUP_ELEM)"),
    }
}

/// Number of possible CPUs, the length of a per-CPU map value (`/sys/devices/system/cpu/possible`).
fn possible_cpus() -> anyhow::Result<usize> {
    let path = "/sys/devices/system/cpu/possible";
    let text = fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    let mut count = 0;
    for range in text.trim().split(',') {
        let (lo, hi) = range.split_once('-').unwrap_or((range, range));
        let (lo, hi): (usize, usize) = (
            lo.parse().with_context(|| format!("{path}: {text:?}"))?,
            hi.parse().with_context(|| format!("{path}: {text:?}"))?,
        );
        count += hi - lo + 1;
    }
    Ok(count)
}

// ---------------------------------------------------------------------------------------------
// Drop cost and rate

/// Softirq time, and system + irq + softirq time, of the generators' CPU in nanoseconds, from its
/// line of /proc/stat. The receive side of the veth (NAPI poll, XDP, nftables ingress, the IP layer
/// up to iptables) runs in softirq on that CPU; the generators' own work is system time.
#[derive(Debug, Clone, Copy, Default)]
struct CpuTimes {
    kernel_ns: f64,
    softirq_ns: f64,
    /// User + nice time and idle + iowait time, for the log.
    user_ns: f64,
    idle_ns: f64,
}

impl CpuTimes {
    fn read() -> anyhow::Result<Self> {
        let text = fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
        let prefix = format!("cpu{} ", generator_cpu());
        let line = text
            .lines()
            .find(|l| l.starts_with(&prefix))
            .with_context(|| format!("/proc/stat has no {prefix:?} line"))?;
        let fields: Vec<u64> = line.split_whitespace().skip(1).map(|f| f.parse().unwrap_or(0)).collect();
        ensure!(fields.len() >= 7, "/proc/stat cpu line {line:?}");
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let ns = |ticks: u64| ticks as f64 * 1e9 / hz;
        Ok(Self {
            kernel_ns: ns(fields[2] + fields[5] + fields[6]),
            softirq_ns: ns(fields[6]),
            user_ns: ns(fields[0] + fields[1]),
            idle_ns: ns(fields[3] + fields[4]),
        })
    }

    fn since(self, before: Self) -> Self {
        Self {
            kernel_ns: self.kernel_ns - before.kernel_ns,
            softirq_ns: self.softirq_ns - before.softirq_ns,
            user_ns: self.user_ns - before.user_ns,
            idle_ns: self.idle_ns - before.idle_ns,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct DropRun {
    sent: u64,
    dropped: u64,
    elapsed: Duration,
    cpu: CpuTimes,
}

impl DropRun {
    /// Receive-side CPU per dropped packet (softirq).
    fn ns_per_packet(&self) -> f64 {
        self.cpu.softirq_ns / self.dropped.max(1) as f64
    }

    /// All kernel CPU per dropped packet, the generator's included.
    fn kernel_ns_per_packet(&self) -> f64 {
        self.cpu.kernel_ns / self.dropped.max(1) as f64
    }

    fn rate(&self) -> f64 {
        self.dropped as f64 / self.elapsed.as_secs_f64()
    }
}

fn measure_drop(
    topo: &Topology,
    installed: &mut Installed,
    generator: Generator,
    secs: f64,
) -> anyhow::Result<DropRun> {
    let before = installed.dropped()?;
    let cpu_before = CpuTimes::read()?;
    let started = Instant::now();
    let sent = generator.run(topo, secs)?;
    let elapsed = started.elapsed();
    // Let the queues drain into the counters.
    thread::sleep(Duration::from_millis(20));
    let cpu = CpuTimes::read()?.since(cpu_before);
    let after = installed.dropped()?;
    Ok(DropRun { sent, dropped: after.saturating_sub(before), elapsed, cpu })
}

struct Cell {
    contender: Contender,
    size: usize,
    generator: Generator,
    runs: Vec<DropRun>,
}

impl Cell {
    fn ns_per_packet(&self) -> f64 {
        median(&self.runs.iter().map(DropRun::ns_per_packet).collect::<Vec<_>>())
    }

    fn kernel_ns_per_packet(&self) -> f64 {
        median(&self.runs.iter().map(DropRun::kernel_ns_per_packet).collect::<Vec<_>>())
    }

    fn rate(&self) -> f64 {
        median(&self.runs.iter().map(DropRun::rate).collect::<Vec<_>>())
    }

    /// Median fraction of the packets sent that the contender counted as dropped.
    fn dropped_share(&self) -> f64 {
        median(&self.runs.iter().map(|r| r.dropped as f64 / r.sent.max(1) as f64).collect::<Vec<_>>())
    }
}

// ---------------------------------------------------------------------------------------------
// Install time

struct InstallTimes {
    entries: usize,
    ids: Vec<f64>,
    nft: Vec<f64>,
    ipset: Vec<f64>,
}

fn measure_install_times(
    topo: &Topology,
    ids: &Path,
    dir: &BenchDir,
    ours: &OursSupport,
    plan: &Plan,
) -> anyhow::Result<InstallTimes> {
    let set = banned_set(INSTALL_ENTRIES);
    let mut times = InstallTimes { entries: INSTALL_ENTRIES, ids: vec![], nft: vec![], ipset: vec![] };
    for rep in 0..plan.repetitions {
        nft_create(topo)?;
        times.nft.push(nft_add_elements(topo, dir, &set)?.as_secs_f64());
        run_quiet(topo.target_ns.command("nft").args(["delete", "table", "netdev", NFT_TABLE]))?;
        ipset_create(topo)?;
        times.ipset.push(ipset_restore(topo, dir, &set)?.as_secs_f64());
        run_quiet(topo.target_ns.command("ipset").args(["destroy", IPSET_NAME]))?;
        if ours.available() {
            let daemon = IdsDaemon::start(ids, dir, topo, "native")?;
            times.ids.push(daemon.ban_all(&set, dir)?.as_secs_f64());
            daemon.stop()?;
            ensure_no_xdp(topo)?;
        }
        eprintln!(
            "bench: install {} entries, run {}/{}: nft {:.3} s, ipset {:.3} s{}",
            thousands(INSTALL_ENTRIES as u64),
            rep + 1,
            plan.repetitions,
            times.nft.last().copied().unwrap_or(f64::NAN),
            times.ipset.last().copied().unwrap_or(f64::NAN),
            times.ids.last().map(|t| format!(", ids {t:.3} s")).unwrap_or_default()
        );
    }
    Ok(times)
}

/// `IFLA_XDP_ATTACHED` values, as `ip -j link` shows them in `xdp.mode`.
const XDP_ATTACHED_DRV: u64 = 1;
const XDP_ATTACHED_SKB: u64 = 2;

/// The mode of the XDP program on the target end, if one is attached.
fn attached_xdp_mode(topo: &Topology) -> anyhow::Result<Option<u64>> {
    let text = command_stdout(Command::new("ip").args([
        "-n",
        &topo.target_ns.name,
        "-j",
        "link",
        "show",
        "dev",
        &topo.target_dev,
    ]))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("ip -j link show printed {text:?}"))?;
    Ok(json[0]["xdp"]["mode"].as_u64())
}

/// Fails when an XDP program is still attached to the target end (a contender left it behind).
/// The kernel releases a link whose last holder went away shortly after, so this waits up to 2 s.
fn ensure_no_xdp(topo: &Topology) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let text = command_stdout(Command::new("ip").args([
            "-n",
            &topo.target_ns.name,
            "-j",
            "link",
            "show",
            "dev",
            &topo.target_dev,
        ]))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("ip -j link show printed {text:?}"))?;
        if json[0]["xdp"].is_null() {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "an XDP program is still attached to {} after its contender was removed: {text}",
            topo.target_dev
        );
        thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------------------------
// Legitimate TCP throughput

struct TcpThroughput {
    /// Bits per second with nothing attached, with `ids` attached, with the nftables chain.
    detached: Vec<f64>,
    ids: Vec<f64>,
    nft: Vec<f64>,
    banned_entries: usize,
    /// `tcp-segmentation-offload` of the generator end, with nothing attached and with `ids` attached.
    tso_detached: String,
    tso_with_ids: Option<String>,
}

fn measure_tcp(
    topo: &Topology,
    ids: &Path,
    dir: &BenchDir,
    ours: &OursSupport,
    plan: &Plan,
) -> anyhow::Result<TcpThroughput> {
    let entries = 100_000;
    let set = banned_set(entries);
    let secs = if plan.quick { 1.0 } else { TCP_SECS };
    let mut result = TcpThroughput {
        detached: vec![],
        ids: vec![],
        nft: vec![],
        banned_entries: entries,
        tso_detached: generator_tso(topo)?,
        tso_with_ids: None,
    };
    for rep in 0..plan.repetitions {
        result.detached.push(tcp_bits_per_second(topo, secs)?);
        if ours.available() {
            let installed = Installed::install(Contender::Ids, topo, ids, dir, &set)?;
            result.tso_with_ids = Some(generator_tso(topo)?);
            result.ids.push(tcp_bits_per_second(topo, secs)?);
            installed.remove(topo)?;
        }
        let installed = Installed::install(Contender::Nft, topo, ids, dir, &set)?;
        result.nft.push(tcp_bits_per_second(topo, secs)?);
        installed.remove(topo)?;
        eprintln!(
            "bench: TCP run {}/{}: detached {:.2} Gbit/s, nft {:.2} Gbit/s{}",
            rep + 1,
            plan.repetitions,
            result.detached.last().copied().unwrap_or(0.0) / 1e9,
            result.nft.last().copied().unwrap_or(0.0) / 1e9,
            result.ids.last().map(|b| format!(", ids {:.2} Gbit/s", b / 1e9)).unwrap_or_default()
        );
    }
    Ok(result)
}

/// `on` or `off`: TCP segmentation offload of the generator end, as `ethtool -k` shows it.
fn generator_tso(topo: &Topology) -> anyhow::Result<String> {
    let text = command_stdout(topo.gen_ns.command("ethtool").args(["-k", &topo.gen_dev]))?;
    text.lines()
        .find_map(|l| l.trim().strip_prefix("tcp-segmentation-offload:"))
        .map(|v| v.split_whitespace().next().unwrap_or("?").to_string())
        .with_context(|| format!("no tcp-segmentation-offload in `ethtool -k {}`", topo.gen_dev))
}

/// One TCP connection from the generator end to the target end, written to for `secs`; returns
/// the bits per second the receiver read. The sender runs on the generator CPU, the receiver on
/// CPU 0 (when there are two), both at nice −20, so that runs compare.
fn tcp_bits_per_second(topo: &Topology, secs: f64) -> anyhow::Result<f64> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let receiver = topo.target_ns.spawn_in(move || {
        dedicate_this_thread(0)?;
        let listener =
            TcpListener::bind(SocketAddrV4::new(TARGET_ADDR, TCP_PORT)).context("listening for the TCP test")?;
        let _ = ready_tx.send(());
        let (mut stream, _) = listener.accept().context("accepting the TCP test connection")?;
        let mut buf = vec![0u8; 1 << 18];
        let mut bytes = 0u64;
        let mut first: Option<Instant> = None;
        loop {
            let n = stream.read(&mut buf).context("reading the TCP test stream")?;
            if n == 0 {
                break;
            }
            first.get_or_insert_with(Instant::now);
            bytes += n as u64;
        }
        let elapsed = first.map_or(Duration::ZERO, |f| f.elapsed());
        Ok(bytes as f64 * 8.0 / elapsed.as_secs_f64().max(1e-9))
    })?;
    ready_rx.recv_timeout(Duration::from_secs(5)).context("the TCP receiver did not start")?;
    let duration = Duration::from_secs_f64(secs);
    topo.gen_ns.run_in(move || {
        dedicate_this_thread(generator_cpu())?;
        let socket = std::net::TcpStream::connect_timeout(
            &SocketAddrV4::new(TARGET_ADDR, TCP_PORT).into(),
            Duration::from_secs(5),
        )
        .context("connecting the TCP test stream")?;
        let mut stream: TcpStream = socket;
        let buf = vec![0xa5u8; 1 << 16];
        let started = Instant::now();
        while started.elapsed() < duration {
            stream.write_all(&buf).context("writing the TCP test stream")?;
        }
        Ok(())
    })?;
    receiver.join().map_err(|_| anyhow::anyhow!("the TCP receiver panicked"))?
}

// ---------------------------------------------------------------------------------------------
// Ban latency

struct LatencyTrial {
    /// From the ban command returning to the first packet that did not arrive (negative: the
    /// ban took effect before the command returned).
    after_return_ms: f64,
    /// How long the ban command itself took.
    command_ms: f64,
}

struct BanLatency {
    ids: Vec<LatencyTrial>,
    nft: Vec<LatencyTrial>,
    ipset: Vec<LatencyTrial>,
}

fn measure_ban_latency(
    topo: &Topology,
    ids: &Path,
    dir: &BenchDir,
    ours: &OursSupport,
    plan: &Plan,
) -> anyhow::Result<BanLatency> {
    let set = banned_set(100_000);
    let sources = |trial: usize| Ipv4Addr::new(198, 18, 0, LATENCY_SOURCE_BASE + trial as u8);
    let mut result = BanLatency { ids: vec![], nft: vec![], ipset: vec![] };
    if ours.available() {
        let installed = Installed::install(Contender::Ids, topo, ids, dir, &set)?;
        let Installed::Ids { daemon, .. } = &installed else { unreachable!("an ids contender") };
        for trial in 0..plan.latency_trials {
            result.ids.push(ban_latency_trial(topo, sources(trial), || daemon.ban_one(sources(trial)))?);
        }
        installed.remove(topo)?;
    }
    let installed = Installed::install(Contender::Nft, topo, ids, dir, &set)?;
    for trial in 0..plan.latency_trials {
        let element = format!("{{ {} }}", sources(trial));
        result.nft.push(ban_latency_trial(topo, sources(trial), || {
            run_quiet(topo.target_ns.command("nft").args(["add", "element", "netdev", NFT_TABLE, "banned", &element]))
        })?);
    }
    installed.remove(topo)?;
    let installed = Installed::install(Contender::Ipset, topo, ids, dir, &set)?;
    for trial in 0..plan.latency_trials {
        let source = sources(trial).to_string();
        result.ipset.push(ban_latency_trial(topo, sources(trial), || {
            run_quiet(topo.target_ns.command("ipset").args(["add", IPSET_NAME, &source]))
        })?);
    }
    installed.remove(topo)?;
    for (name, trials) in [("ids", &result.ids), ("nft", &result.nft), ("ipset", &result.ipset)] {
        if !trials.is_empty() {
            let shown: Vec<String> = trials.iter().map(|t| format!("{:.2}", t.after_return_ms)).collect();
            eprintln!("bench: ban latency {name} (ms after the command returned): {}", shown.join(" "));
        }
    }
    Ok(result)
}

/// A paced UDP stream from `source` to a socket on the target end; `ban` runs while it flows.
fn ban_latency_trial(
    topo: &Topology,
    source: Ipv4Addr,
    ban: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<LatencyTrial> {
    let base = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    // Send time (ns since `base`) of the newest datagram received, and how many arrived.
    let last_received = Arc::new(AtomicU64::new(0));
    let received = Arc::new(AtomicU64::new(0));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let receiver = {
        let (stop, last_received, received) = (stop.clone(), last_received.clone(), received.clone());
        topo.target_ns.spawn_in(move || {
            let socket = UdpSocket::bind(SocketAddrV4::new(TARGET_ADDR, LATENCY_PORT))
                .context("binding the latency receiver")?;
            socket.set_read_timeout(Some(Duration::from_millis(20)))?;
            let _ = ready_tx.send(());
            let mut buf = [0u8; 64];
            while !stop.load(Ordering::Relaxed) {
                match socket.recv(&mut buf) {
                    Ok(n) if n >= 8 => {
                        let sent = u64::from_le_bytes(buf[..8].try_into().expect("8 bytes"));
                        last_received.fetch_max(sent, Ordering::Relaxed);
                        received.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                    Err(e) => return Err(e).context("receiving latency datagrams"),
                }
            }
            Ok(())
        })?
    };
    ready_rx.recv_timeout(Duration::from_secs(5)).context("the latency receiver did not start")?;
    let sender = {
        let stop = stop.clone();
        topo.gen_ns.spawn_in(move || {
            let socket =
                UdpSocket::bind(SocketAddrV4::new(source, 0)).with_context(|| format!("binding UDP to {source}"))?;
            socket.connect(SocketAddrV4::new(TARGET_ADDR, LATENCY_PORT))?;
            let mut next = Instant::now();
            // Bounded: at most 10 s of datagrams even if the main thread never says stop.
            while !stop.load(Ordering::Relaxed) && base.elapsed() < Duration::from_secs(10) {
                while Instant::now() < next {
                    std::hint::spin_loop();
                }
                next += LATENCY_INTERVAL;
                let stamp = base.elapsed().as_nanos() as u64;
                let _ = socket.send(&stamp.to_le_bytes());
            }
            Ok(())
        })?
    };
    let outcome = (|| {
        let deadline = Instant::now() + Duration::from_secs(2);
        while received.load(Ordering::Relaxed) < 1000 {
            ensure!(Instant::now() < deadline, "no datagrams from {source} reached the target before the ban");
            thread::sleep(Duration::from_millis(5));
        }
        let issued = base.elapsed();
        ban()?;
        let returned = base.elapsed();
        thread::sleep(Duration::from_millis(200));
        Ok((issued, returned))
    })();
    stop.store(true, Ordering::Relaxed);
    let sent = sender.join().map_err(|_| anyhow::anyhow!("the latency sender panicked"))?;
    let recv = receiver.join().map_err(|_| anyhow::anyhow!("the latency receiver panicked"))?;
    let (issued, returned) = outcome?;
    sent?;
    recv?;
    let last = Duration::from_nanos(last_received.load(Ordering::Relaxed));
    ensure!(
        last + Duration::from_millis(100) < returned + Duration::from_millis(200),
        "datagrams from {source} still arrived {:.0} ms after the ban returned",
        (last.as_secs_f64() - returned.as_secs_f64()) * 1e3
    );
    let first_dropped = last + LATENCY_INTERVAL;
    Ok(LatencyTrial {
        after_return_ms: (first_dropped.as_secs_f64() - returned.as_secs_f64()) * 1e3,
        command_ms: (returned - issued).as_secs_f64() * 1e3,
    })
}

// ---------------------------------------------------------------------------------------------
// Report

struct Report {
    machine: Machine,
    load_after: String,
    iptables_version: String,
    nft_version: String,
    plan: Plan,
    ours: OursSupport,
    cells: Vec<Cell>,
    installs: InstallTimes,
    tcp: TcpThroughput,
    latency: BanLatency,
    elapsed: Duration,
}

impl Report {
    fn cell(&self, contender: Contender, size: usize, generator: Generator) -> Option<&Cell> {
        self.cells.iter().find(|c| c.contender == contender && c.size == size && c.generator == generator)
    }

    fn render(&self) -> String {
        let mut s = String::new();
        let m = &self.machine;
        let _ = writeln!(s, "\n## {} — xdp\n", utc_timestamp());
        let _ = writeln!(
            s,
            "- Command: `flock /tmp/ids-bench.lock flock /tmp/ids-bpf.lock cargo xtask bench xdp`{} (as root); the run took {:.0} s",
            if self.plan.quick { " with `IDS_BENCH_QUICK=1`" } else { "" },
            self.elapsed.as_secs_f64()
        );
        let _ = writeln!(
            s,
            "- Machine: Linux {}, {}, {} cores; load average {} before, {} after",
            m.kernel, m.cpu, m.cores, m.load_before, self.load_after
        );
        let _ = writeln!(
            s,
            "- Sensor: {}; peers: {}, {} with ipset",
            m.ids_version, self.nft_version, self.iptables_version
        );
        if let OursSupport::Missing(why) = &self.ours {
            let _ = writeln!(s, "- **`ids` was not measured**: {why}");
        }
        let _ = writeln!(
            s,
            "- Topology: generator namespace → veth → target namespace (GRO on at the target end, so it runs NAPI \
             and accepts XDP frames). Contenders on the target end, each alone in turn: `ids run` with \
             `[xdp] interfaces` = the target end and the set loaded with `ids ban`; an nftables `netdev` ingress \
             chain `ip saddr @set counter drop`; iptables `raw PREROUTING -m set --match-set S src -j DROP` with \
             an ipset `hash:ip`. Set = the generators' banned sources ({FRAME_SOURCES} + 1) plus filler from 10.0.0.0/8. \
             ids attaches XDP in driver mode on veth (`[xdp] mode = \"native\"`); for the generic-mode rows its config says `[xdp] mode = \"generic\"` \
             (the bench checks the mode `ip link` reports); for the tc rows `[xdp] mode = \"tc\"` (what `auto` picks on a veth): \
             its tc ingress program `tc_guard` on a TCX link, no XDP (checked). The bare `r0 = XDP_DROP` program (driver mode) is the floor of any XDP program."
        );
        let _ = writeln!(
            s,
            "- Generators: **frame** = `BPF_PROG_TEST_RUN` live frames (`r0 = XDP_TX`) on the generator end, \
             {FRAME_THREADS} threads on one CPU, {} frames per call, each call from the next of {FRAME_SOURCES} banned \
             source addresses: frames arrive as XDP frames \
             with headroom, as from a NIC driver. **socket** = `sendmmsg(2)` of 18-byte UDP datagrams, batches of \
             {SOCKET_BATCH}, from one banned source: socket buffers without XDP headroom, so XDP on veth copies each.",
            thousands(u64::from(FRAMES_PER_CALL))
        );
        let _ = writeln!(
            s,
            "- The generators' threads are pinned to the last CPU at nice −20 (and the bench's autogroup at −20); the veth's receive work runs \
             in softirq on that same CPU. softirq ns/packet = that CPU's softirq time (`/proc/stat`) over \
             the run ÷ packets the \
             contender's own counter dropped (ids: its per-ban counters, the pinned `BAN_HITS` map that \
             `ids bans` shows, checked against `ids bans --json` at 1,000 entries; nft: rule counter; \
             iptables: rule counter; bare XDP_DROP: the veth's `xdp_drops`). The target end's receive work \
             (NAPI poll, XDP, nftables ingress, IP input up to iptables) runs in softirq; the generators' own \
             work is system time. all kernel = system + irq + softirq of that CPU ÷ dropped: the generator's \
             kernel time included. The kernel accounts CPU time by ticks (250 Hz here), so a share below \
             a few percent of a run reads as 0. \
             Rate = dropped ÷ run time with the generator saturating its CPU. \
             Medians of {} run(s) of {:.1} s per cell.",
            self.plan.repetitions, self.plan.run_secs
        );

        let contenders: Vec<Contender> = {
            let mut v: Vec<Contender> = Vec::new();
            for c in &self.cells {
                if !v.contains(&c.contender) {
                    v.push(c.contender);
                }
            }
            v
        };
        for generator in [Generator::Frame, Generator::Socket] {
            let _ = writeln!(s, "\n### Dropping banned sources, {} generator\n", generator.label());
            let _ = writeln!(
                s,
                "| entries | contender | softirq ns/packet | all kernel ns/packet | drop rate (Mpps) | dropped/sent |"
            );
            let _ = writeln!(s, "|---:|---|---:|---:|---:|---:|");
            for &size in &self.plan.sizes {
                for &contender in &contenders {
                    if let Some(cell) = self.cell(contender, size, generator) {
                        let _ = writeln!(
                            s,
                            "| {} | {} | {:.0} | {:.0} | {:.3} | {:.3} |",
                            thousands(size as u64),
                            contender.label(),
                            cell.ns_per_packet(),
                            cell.kernel_ns_per_packet(),
                            cell.rate() / 1e6,
                            cell.dropped_share()
                        );
                    }
                }
            }
            self.render_ratios(&mut s, generator);
            self.render_tc_ratios(&mut s, generator);
        }

        let _ = writeln!(s, "\n### Time to install {} entries\n", thousands(self.installs.entries as u64));
        let _ = writeln!(s, "Into an empty set, medians of {} run(s).\n", self.plan.repetitions);
        let _ = writeln!(s, "| tool | how | seconds | ratio to ids |");
        let _ = writeln!(s, "|---|---|---:|---:|");
        let ids_time = median(&self.installs.ids);
        for (tool, how, times) in [
            ("ids", "`ids ban --file` to the running daemon", &self.installs.ids),
            ("nftables", "one `nft -f` batch of `add element`", &self.installs.nft),
            ("ipset", "`ipset restore`", &self.installs.ipset),
        ] {
            if times.is_empty() {
                continue;
            }
            let t = median(times);
            let _ = writeln!(
                s,
                "| {tool} | {how} | {t:.3} | {} |",
                if ids_time.is_nan() { "–".into() } else { format!("{:.2}", t / ids_time) }
            );
        }

        let tcp = &self.tcp;
        let _ = writeln!(s, "\n### Legitimate TCP throughput\n");
        let _ = writeln!(
            s,
            "One TCP connection from an unbanned source, generator end → target end, {} set entries loaded; \
             medians of {} run(s); sender and receiver pinned to different CPUs. TCP segmentation offload of \
             the generator end: {} with nothing attached, {} with ids' XDP program on its peer (veth turns \
             TSO/GSO off on the peer of an end with XDP, so the sender segments in software).\n",
            thousands(tcp.banned_entries as u64),
            self.plan.repetitions,
            tcp.tso_detached,
            tcp.tso_with_ids.as_deref().unwrap_or("not measured"),
        );
        let _ = writeln!(s, "| target end | Gbit/s | ratio to detached |");
        let _ = writeln!(s, "|---|---:|---:|");
        let detached = median(&tcp.detached);
        for (label, values) in
            [("nothing attached", &tcp.detached), ("ids XDP (driver)", &tcp.ids), ("nftables netdev set", &tcp.nft)]
        {
            if !values.is_empty() {
                let v = median(values);
                let _ = writeln!(s, "| {label} | {:.2} | {:.2} |", v / 1e9, v / detached);
            }
        }

        let _ = writeln!(s, "\n### From the ban command returning to the first dropped packet\n");
        let _ = writeln!(
            s,
            "A source not yet banned sends a datagram every {} µs to a socket on the target end; the ban command \
             runs while it flows; the first dropped packet is the one after the last that arrived. Negative: \
             the drop began before the command returned. Set of 100,000 entries loaded.\n",
            LATENCY_INTERVAL.as_micros()
        );
        let _ = writeln!(s, "| tool | command | trials | median ms | max ms | command median ms | target |");
        let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---|");
        for (tool, command, trials) in [
            ("ids", "`ids ban ADDR`", &self.latency.ids),
            ("nftables", "`nft add element`", &self.latency.nft),
            ("ipset", "`ipset add`", &self.latency.ipset),
        ] {
            if trials.is_empty() {
                continue;
            }
            let after: Vec<f64> = trials.iter().map(|t| t.after_return_ms).collect();
            let max = after.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let target = if tool == "ids" {
                let ok = max < TARGET_BAN_LATENCY.as_secs_f64() * 1e3;
                format!("< {} ms: {}", TARGET_BAN_LATENCY.as_millis(), if ok { "met" } else { "**not met**" })
            } else {
                "–".to_string()
            };
            let _ = writeln!(
                s,
                "| {tool} | {command} | {} | {:.2} | {:.2} | {:.1} | {target} |",
                trials.len(),
                median(&after),
                max,
                median(&trials.iter().map(|t| t.command_ms).collect::<Vec<_>>())
            );
        }
        s
    }

    /// Ratios of ids' tc program to nftables at each size; on the socket path the target is to
    /// spend no more than nftables.
    fn render_tc_ratios(&self, s: &mut String, generator: Generator) {
        let ours = Contender::IdsTc;
        if !self.cells.iter().any(|c| c.contender == ours && c.generator == generator) {
            return;
        }
        let _ = writeln!(s, "\nRatios of softirq ns/packet, ids tc ingress ÷ peer:\n");
        let _ = writeln!(s, "| entries | tc ÷ nftables | tc ÷ ipset | tc ÷ ids XDP (driver) | tc ≤ nftables |");
        let _ = writeln!(s, "|---:|---:|---:|---:|---|");
        for &size in &self.plan.sizes {
            let (Some(o), Some(n)) = (self.cell(ours, size, generator), self.cell(Contender::Nft, size, generator))
            else {
                continue;
            };
            let ratio = |peer: Contender| {
                self.cell(peer, size, generator)
                    .map_or("–".to_string(), |p| format!("{:.2}", o.ns_per_packet() / p.ns_per_packet()))
            };
            let rn = o.ns_per_packet() / n.ns_per_packet();
            let _ = writeln!(
                s,
                "| {} | {rn:.2} | {} | {} | {} |",
                thousands(size as u64),
                ratio(Contender::Ipset),
                ratio(Contender::Ids),
                match (generator, rn <= 1.0) {
                    (Generator::Socket, true) => "met",
                    (Generator::Socket, false) => "**not met**",
                    // The target is set for the socket path; on the frame path XDP is the tool.
                    (Generator::Frame, true) => "yes (target set for the socket path)",
                    (Generator::Frame, false) => "no (target set for the socket path)",
                }
            );
        }
    }

    /// Ratios of ids (driver mode) to the peers at each size, and the targets.
    fn render_ratios(&self, s: &mut String, generator: Generator) {
        let ours = Contender::Ids;
        if !self.cells.iter().any(|c| c.contender == ours) {
            return;
        }
        let _ = writeln!(
            s,
            "\nRatios of softirq ns/packet, ids XDP (driver) ÷ peer (below 1: ids spends less CPU per dropped packet):\n"
        );
        let _ = writeln!(
            s,
            "| entries | ids ÷ nftables | ids ÷ ipset | lowest of the three | ≥ {TARGET_XDP_VS_NFT:.0}× below nftables |"
        );
        let _ = writeln!(s, "|---:|---:|---:|---|---|");
        for &size in &self.plan.sizes {
            let (Some(o), Some(n), Some(i)) = (
                self.cell(ours, size, generator),
                self.cell(Contender::Nft, size, generator),
                self.cell(Contender::Ipset, size, generator),
            ) else {
                continue;
            };
            let (rn, ri) = (o.ns_per_packet() / n.ns_per_packet(), o.ns_per_packet() / i.ns_per_packet());
            let _ = writeln!(
                s,
                "| {} | {rn:.2} | {ri:.2} | {} | {} |",
                thousands(size as u64),
                if rn < 1.0 && ri < 1.0 { "yes" } else { "**no**" },
                match (generator, rn <= 1.0 / TARGET_XDP_VS_NFT) {
                    (Generator::Frame, true) => "met",
                    (Generator::Frame, false) => "**not met**",
                    // The 2× target is set for the frame path; here XDP copies every packet first.
                    (Generator::Socket, true) => "yes (target set for the frame path)",
                    (Generator::Socket, false) => "no (target set for the frame path)",
                }
            );
        }
        let rates: Vec<f64> =
            self.plan.sizes.iter().filter_map(|&size| self.cell(ours, size, generator)).map(Cell::rate).collect();
        if rates.len() >= 2 {
            let (lo, hi) = rates.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), &r| (lo.min(r), hi.max(r)));
            let spread = 1.0 - lo / hi;
            let _ = writeln!(
                s,
                "\nids drop rate from {} to {} entries: {:.3}–{:.3} Mpps, spread {:.1} % (target ≤ {:.0} %: {}).",
                thousands(self.plan.sizes[0] as u64),
                thousands(*self.plan.sizes.last().expect("sizes") as u64),
                lo / 1e6,
                hi / 1e6,
                spread * 100.0,
                TARGET_RATE_SPREAD * 100.0,
                if spread <= TARGET_RATE_SPREAD { "met" } else { "**not met**" }
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udp_frame_has_a_valid_ipv4_header_and_the_right_addresses() {
        let (src_mac, dst_mac) = ([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
        let source = Ipv4Addr::new(198, 18, 1, 7);
        let frame = udp_frame(src_mac, dst_mac, source, TARGET_ADDR);
        assert_eq!(frame.len(), 14 + 20 + 8 + UDP_PAYLOAD);
        assert_eq!(&frame[0..6], &dst_mac);
        assert_eq!(&frame[6..12], &src_mac);
        assert_eq!(&frame[12..14], &[0x08, 0x00]);
        // A header with its checksum in place sums to 0xffff, i.e. its checksum is 0.
        assert_eq!(ipv4_checksum(&frame[14..34]), 0);
        assert_eq!(&frame[26..30], &source.octets());
        assert_eq!(&frame[30..34], &TARGET_ADDR.octets());
        assert_eq!(u16::from_be_bytes([frame[36], frame[37]]), DISCARD_PORT);
        assert_eq!(usize::from(u16::from_be_bytes([frame[38], frame[39]])), 8 + UDP_PAYLOAD);
    }

    #[test]
    fn ipv4_checksum_matches_a_known_header() {
        // A commonly quoted example header (192.168.0.1 → 192.168.0.199, UDP) whose checksum is b861.
        let header = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8, 0x00, 0x01, 0xc0, 0xa8,
            0x00, 0xc7,
        ];
        assert_eq!(ipv4_checksum(&header), 0xb861);
    }

    #[test]
    fn banned_set_holds_every_generator_source_and_distinct_filler_outside_the_traffic_range() {
        for size in [FRAME_SOURCES as usize + 1, 1_000, 100_000] {
            let set = banned_set(size);
            assert_eq!(set.len(), size);
            for source in frame_sources().chain([SOCKET_SOURCE]) {
                assert!(set.contains(&source), "{source} missing from a set of {size}");
            }
            let unique: std::collections::HashSet<_> = set.iter().collect();
            assert_eq!(unique.len(), size, "duplicates in a set of {size}");
            for filler in &set[FRAME_SOURCES as usize + 1..] {
                assert_eq!(filler.octets()[0], 10, "filler {filler} outside 10.0.0.0/8");
            }
        }
        // The largest size still fits in 10.0.0.0/8 without reaching its broadcast address.
        assert_eq!(banned_set(1_000_000).last().copied(), Some(Ipv4Addr::from(0x0a00_0000u32 | (1_000_000 - 65))));
    }

    #[test]
    fn nft_counter_is_read_from_the_rule() {
        let listing = "table netdev idsbench {\n\tchain ingress {\n\t\ttype filter hook ingress device \"idsbt1\" priority -500; policy accept;\n\t\tip saddr @banned counter packets 123456 bytes 7407360 drop\n\t}\n}\n";
        assert_eq!(parse_nft_counter(listing), Some(123_456));
        assert_eq!(parse_nft_counter("table netdev idsbench {}"), None);
    }

    #[test]
    fn iptables_counter_is_read_from_the_first_rule() {
        let listing = "Chain PREROUTING (policy ACCEPT 10 packets, 600 bytes)\n    pkts      bytes target     prot opt in     out     source               destination\n  987654 59259240 DROP       0    --  *      *       0.0.0.0/0            0.0.0.0/0            match-set idsbench src\n";
        assert_eq!(parse_iptables_counter(listing), Some(987_654));
        assert_eq!(parse_iptables_counter("Chain PREROUTING (policy ACCEPT)\n    pkts      bytes target\n"), None);
    }

    /// Needs root and nftables (`cargo xtask setup`), as CI has: both generators' packets reach
    /// the target end of a real veth pair, and the nftables contender counts every one it drops.
    #[test]
    fn both_generators_deliver_to_the_target_end_and_nftables_counts_every_drop() {
        let dir = BenchDir::create().expect("scratch directory");
        let topo = Topology::create().expect("namespaces and veth pair");
        let mut installed =
            Installed::install(Contender::Nft, &topo, Path::new("/nonexistent/ids"), &dir, &banned_set(1_000))
                .expect("nftables set");
        for generator in [Generator::Frame, Generator::Socket] {
            let run = measure_drop(&topo, &mut installed, generator, 0.3).expect("a generator run");
            assert!(run.sent > 10_000, "{} generator sent only {} packets in 0.3 s", generator.label(), run.sent);
            assert_eq!(
                run.dropped,
                run.sent,
                "{} generator: nftables dropped {} of {} sent",
                generator.label(),
                run.dropped,
                run.sent
            );
        }
        installed.remove(&topo).expect("removing the nftables table");
        let namespaces = [topo.gen_ns.name.clone(), topo.target_ns.name.clone()];
        drop(topo);
        for name in namespaces {
            assert!(!Path::new("/run/netns").join(&name).exists(), "namespace {name} outlived its guard");
        }
    }

    #[test]
    fn constant_program_is_mov_r0_then_exit() {
        for action in [XDP_DROP, XDP_TX] {
            let [mov, exit] = constant_program(action);
            let bytes = mov.to_le_bytes();
            assert_eq!(bytes[0], 0xb7, "BPF_ALU64 | BPF_MOV | BPF_K");
            assert_eq!(bytes[1], 0, "dst and src registers are r0");
            assert_eq!(&bytes[2..4], &[0, 0], "no offset");
            assert_eq!(i32::from_le_bytes(bytes[4..8].try_into().unwrap()), action);
            assert_eq!(exit, 0x95, "BPF_JMP | BPF_EXIT, nothing else");
        }
    }
}
