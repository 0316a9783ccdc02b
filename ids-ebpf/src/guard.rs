//! The ban filter and SYN watcher shared by `xdp_guard` (XDP, `crate::xdp`) and `tc_guard` (tc
//! ingress, `crate::tc`): one function, [`guard`], over a [`Packet`] each program gives. For every
//! frame (802.1Q and 802.1ad tags are followed, up to two) it reads the IPv4 or IPv6 source and:
//! 1. never drops it if the source is trusted (`TRUSTED_V4`/`TRUSTED_V6`, checked first);
//! 2. otherwise drops it if the source is banned, as a single address (`BAN_V4`/`BAN_V6`, hash) or by a
//!    prefix (`BAN_NET_V4`/`BAN_NET_V6`, LPM trie), counting packets and bytes per ban;
//! 3. for a TCP SYN (no ACK): reports it on `NET_EVENTS` and counts it in the per-source scan
//!    detector (untrusted sources only), which reports a source on `XDP_EVENTS` once per window when it tried more distinct
//!    ports, or sent more SYNs, than the thresholds in `XDP_SETTINGS`.
//!
//! Anything it cannot parse passes. A failed map update (a ban's hit counter, the scan detector's
//! state) is counted in `PROGRAM_ERRORS` under the program that ran, where it happens, and changes
//! nothing else: a banned source is dropped whether or not its hits could be counted.
use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::generated::{bpf_ktime_get_boot_ns, bpf_ktime_get_ns},
    maps::lpm_trie::Key,
};
use ids_common::{
    AF_INET, AF_INET6, BanHits, BanId, ConnectEvent, DIRECTION_IN, IPPROTO_TCP, ProgramId, SCAN_PORTS as WHAT_PORTS,
    SCAN_SYN_FLOOD, ScanEvent, ScanPortKey, ScanState, Signal, XdpSettings, kind,
};

use crate::maps::{
    BAN_HITS, BAN_NET_V4, BAN_NET_V6, BAN_V4, BAN_V6, NET_EVENTS, SCAN_PORTS, SCAN_SOURCES, TRUSTED_V4, TRUSTED_V6,
    XDP_EVENTS, count_error, count_lost,
};

/// Thresholds of the scan detector; the daemon sets them before load.
#[unsafe(no_mangle)]
pub static XDP_SETTINGS: XdpSettings = XdpSettings { scan_ports: 0, flood_syns: 0, window_ns: 0 };

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const TCP_FLAG_SYN: u8 = 0x02;
const TCP_FLAG_ACK: u8 = 0x10;

/// What the guard needs of a program's context: the frame's bytes from its Ethernet header on.
pub trait Packet {
    /// Address of the first byte of the Ethernet header.
    fn start(&self) -> usize;
    /// Address one past the last byte the program may read directly.
    fn end(&self) -> usize;
    /// The packet's length on the wire, counted in a ban's bytes.
    fn wire_len(&self) -> u64;
    /// The interface the packet arrived on.
    fn ingress_ifindex(&self) -> u32;
    /// Whose error counter a failed map update goes to.
    const PROGRAM: ProgramId;
}

/// What the program does with the packet.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Drop,
}

/// The frame ends before a header the program needs: it passes. Not an error of the program.
pub struct Truncated;

/// Pointer to `len` bytes at `offset` of the packet, if they are inside it.
#[inline(always)]
fn bytes_at<P: Packet>(ctx: &P, offset: usize, len: usize) -> Result<*const u8, Truncated> {
    let start = ctx.start() + offset;
    if start + len > ctx.end() {
        return Err(Truncated);
    }
    Ok(start as *const u8)
}

#[inline(always)]
fn be16(p: *const u8, at: usize) -> u16 {
    // SAFETY: callers checked `at + 2` bytes are inside the packet.
    u16::from_be_bytes(unsafe { [*p.add(at), *p.add(at + 1)] })
}

/// Adds one dropped packet of `bytes` to ban `id`.
#[inline(always)]
fn count_hit(program: ProgramId, id: BanId, bytes: u64) {
    match BAN_HITS.get_ptr_mut(id) {
        // SAFETY: per-CPU value, no other writer on this CPU while the program runs.
        Some(hits) => unsafe {
            (*hits).packets += 1;
            (*hits).bytes += bytes;
        },
        None => {
            // Fails when the map is full, or when another CPU added the same ban first (this
            // packet's hit is then not counted).
            if BAN_HITS.insert(id, BanHits { packets: 1, bytes }, BPF_NOEXIST as u64).is_err() {
                count_error(program);
            }
        }
    }
}

/// The verdict on one frame; [`Truncated`] passes too.
#[inline(always)]
pub fn guard<P: Packet>(ctx: &P) -> Result<Verdict, Truncated> {
    let eth = bytes_at(ctx, 0, ETH_HLEN)?;
    let mut l3 = ETH_HLEN;
    let mut proto = be16(eth, 12);
    if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
        let tag = bytes_at(ctx, ETH_HLEN, 4)?;
        proto = be16(tag, 2);
        l3 += 4;
        if proto == ETH_P_8021Q {
            let tag = bytes_at(ctx, ETH_HLEN + 4, 4)?;
            proto = be16(tag, 2);
            l3 += 4;
        }
    }
    let bytes = ctx.wire_len();
    // Source as an IPv6 or IPv4-mapped address (scan detector key), and the L4 header.
    let mut source = [0u8; 16];
    let trusted;
    let (family, l4, l4_proto) = match proto {
        ETH_P_IP => {
            let ip = bytes_at(ctx, l3, 20)?;
            let saddr: [u8; 4] = unsafe { [*ip.add(12), *ip.add(13), *ip.add(14), *ip.add(15)] };
            trusted = TRUSTED_V4.get(Key::new(32, saddr)).is_some();
            if !trusted {
                // SAFETY: hash lookup by value; the value is only read.
                if let Some(id) = unsafe { BAN_V4.get(saddr) } {
                    count_hit(P::PROGRAM, *id, bytes);
                    return Ok(Verdict::Drop);
                }
                if let Some(id) = BAN_NET_V4.get(Key::new(32, saddr)) {
                    count_hit(P::PROGRAM, *id, bytes);
                    return Ok(Verdict::Drop);
                }
            }
            // Only first fragments carry the L4 header.
            if be16(ip, 6) & 0x1fff != 0 {
                return Ok(Verdict::Pass);
            }
            let ihl = ((unsafe { *ip } & 0x0f) as usize) * 4;
            if ihl < 20 {
                return Ok(Verdict::Pass);
            }
            source[10] = 0xff;
            source[11] = 0xff;
            source[12..].copy_from_slice(&saddr);
            (AF_INET, l3 + ihl, unsafe { *ip.add(9) })
        }
        ETH_P_IPV6 => {
            let ip = bytes_at(ctx, l3, 40)?;
            for (i, byte) in source.iter_mut().enumerate() {
                *byte = unsafe { *ip.add(8 + i) };
            }
            trusted = TRUSTED_V6.get(Key::new(128, source)).is_some();
            if !trusted {
                // SAFETY: as above.
                if let Some(id) = unsafe { BAN_V6.get(source) } {
                    count_hit(P::PROGRAM, *id, bytes);
                    return Ok(Verdict::Drop);
                }
                if let Some(id) = BAN_NET_V6.get(Key::new(128, source)) {
                    count_hit(P::PROGRAM, *id, bytes);
                    return Ok(Verdict::Drop);
                }
            }
            // Extension headers are not followed: SYNs behind them are not reported.
            (AF_INET6, l3 + 40, unsafe { *ip.add(6) })
        }
        _ => return Ok(Verdict::Pass),
    };
    if l4_proto != IPPROTO_TCP {
        return Ok(Verdict::Pass);
    }
    let tcp = bytes_at(ctx, l4 & 0xff, 14)?;
    let flags = unsafe { *tcp.add(13) };
    if flags & TCP_FLAG_SYN == 0 || flags & TCP_FLAG_ACK != 0 {
        return Ok(Verdict::Pass);
    }
    let dport = be16(tcp, 2);
    report_syn(ctx, family, l3, be16(tcp, 0), dport);
    if !trusted {
        count_scan(P::PROGRAM, &source, family, dport);
    }
    Ok(Verdict::Pass)
}

#[inline(always)]
fn report_syn<P: Packet>(ctx: &P, family: u16, l3: usize, sport: u16, dport: u16) {
    let Some(mut entry) = NET_EVENTS.reserve::<ConnectEvent>(0) else {
        count_lost(Signal::Connect);
        return;
    };
    let event = unsafe { &mut *entry.as_mut_ptr() };
    event.header = ids_common::EventHeader {
        kind: kind::CONNECT,
        size: core::mem::size_of::<ConnectEvent>() as u32,
        time_ns: unsafe { bpf_ktime_get_boot_ns() },
        ..Default::default()
    };
    event.direction = DIRECTION_IN;
    event.protocol = IPPROTO_TCP;
    event.family = family;
    event.sport = sport;
    event.dport = dport;
    event.saddr = [0; 16];
    event.daddr = [0; 16];
    let copied = if family == AF_INET {
        bytes_at(ctx, l3, 20).map(|ip| {
            for i in 0..4 {
                event.saddr[i] = unsafe { *ip.add(12 + i) };
                event.daddr[i] = unsafe { *ip.add(16 + i) };
            }
        })
    } else {
        bytes_at(ctx, l3, 40).map(|ip| {
            for i in 0..16 {
                event.saddr[i] = unsafe { *ip.add(8 + i) };
                event.daddr[i] = unsafe { *ip.add(24 + i) };
            }
        })
    };
    if copied.is_err() {
        entry.discard(0);
        return;
    }
    event.ifindex = ctx.ingress_ifindex();
    event._pad = 0;
    entry.submit(crate::maps::net_wakeup());
}

/// Counts a SYN from `source` to `dport` and reports the source once per window when it is over
/// a threshold.
#[inline(always)]
fn count_scan(program: ProgramId, source: &[u8; 16], family: u16, dport: u16) {
    let settings = unsafe { core::ptr::read_volatile(&XDP_SETTINGS) };
    if settings.scan_ports == 0 && settings.flood_syns == 0 {
        return;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    let state = match SCAN_SOURCES.get_ptr_mut(source) {
        Some(state) if now.wrapping_sub(unsafe { (*state).window_start_ns }) <= settings.window_ns => state,
        _ => {
            let fresh = ScanState { window_start_ns: now, ports: 0, syns: 0, reported: 0, _pad: 0 };
            if SCAN_SOURCES.insert(source, &fresh, 0).is_err() {
                count_error(program);
                return;
            }
            match SCAN_SOURCES.get_ptr_mut(source) {
                Some(state) => state,
                // Evicted at once by other CPUs' inserts into the LRU map.
                None => return,
            }
        }
    };
    // SAFETY: a map value; races between CPUs only make the counts approximate.
    let state = unsafe { &mut *state };
    state.syns += 1;
    let pair = ScanPortKey { addr: *source, port: dport, _pad: [0; 6] };
    let seen_in_window = matches!(unsafe { SCAN_PORTS.get(&pair) }, Some(start) if *start == state.window_start_ns);
    if !seen_in_window {
        // The port still counts; only a later SYN to it in this window may count it again.
        if SCAN_PORTS.insert(&pair, &state.window_start_ns, 0).is_err() {
            count_error(program);
        }
        state.ports += 1;
    }
    let what = if settings.scan_ports != 0 && state.ports >= settings.scan_ports {
        WHAT_PORTS
    } else if settings.flood_syns != 0 && state.syns >= settings.flood_syns {
        SCAN_SYN_FLOOD
    } else {
        return;
    };
    if state.reported != 0 {
        return;
    }
    state.reported = 1;
    let Some(mut entry) = XDP_EVENTS.reserve::<ScanEvent>(0) else {
        // Report again on the next SYN rather than never.
        state.reported = 0;
        return;
    };
    let mut addr = [0u8; 16];
    if family == AF_INET {
        addr[..4].copy_from_slice(&source[12..]);
    } else {
        addr = *source;
    }
    entry.write(ScanEvent {
        what,
        family: family as u32,
        addr,
        ports: state.ports,
        syns: state.syns,
        window_ns: settings.window_ns,
    });
    entry.submit(0);
}
