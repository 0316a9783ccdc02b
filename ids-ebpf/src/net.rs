//! Connection attempts. Outgoing: LSM `socket_connect` where LSM programs load, otherwise the
//! `sys_enter_connect` tracepoint. Incoming SYNs are reported by the XDP program in `xdp.rs`.
use aya_ebpf::{
    helpers::{bpf_probe_read_kernel_buf, bpf_probe_read_user_buf},
    macros::{lsm, raw_tracepoint, tracepoint},
    programs::{LsmContext, RawTracePointContext, TracePointContext},
};
use ids_common::{
    AF_INET, AF_INET6, ConnectEvent, DIRECTION_LISTEN, DIRECTION_OUT, DIRECTION_UNLISTEN, IPPROTO_TCP, IPPROTO_UDP,
    ProgramId, Signal, kind,
};

use crate::{
    arch::x86_64::{nr, tracepoint::inet_sock_set_state as field},
    kernel::{self, Kptr, offset, read},
    maps::{NET_EVENTS, count_failure, count_lost},
    syscall::Syscall,
};

const SOCK_STREAM: u16 = 1;
const SOCK_DGRAM: u16 = 2;
const S_IFMT: u32 = 0o170000;
const S_IFSOCK: u32 = 0o140000;

/// Where the sockaddr lives decides which probe-read helper may touch it.
#[derive(Clone, Copy)]
enum AddrSpace {
    User,
    Kernel,
}

#[inline(always)]
fn copy_addr(space: AddrSpace, src: *const u8, dst: &mut [u8]) -> Result<(), i64> {
    let r = match space {
        AddrSpace::User => unsafe { bpf_probe_read_user_buf(src, dst) },
        AddrSpace::Kernel => unsafe { bpf_probe_read_kernel_buf(src, dst) },
    };
    r.map_err(|e| e as i64)
}

/// Header of the current task and every field zeroed but the three given.
#[inline(always)]
fn start_process_event(event: &mut ConnectEvent, direction: u8, protocol: u8, family: u16) {
    kernel::fill_header(&mut event.header, kind::CONNECT, core::mem::size_of::<ConnectEvent>());
    event.direction = direction;
    event.protocol = protocol;
    event.family = family;
    event.sport = 0;
    event.dport = 0;
    event.saddr = [0; 16];
    event.daddr = [0; 16];
    event.ifindex = 0;
    event._pad = 0;
}

/// Reports an outgoing connect on `socket` (a `struct socket *`) to `addr`.
#[inline(always)]
fn emit_connect(socket: Kptr, addr: *const u8, space: AddrSpace) -> Result<(), i64> {
    let mut head = [0u8; 4];
    copy_addr(space, addr, &mut head)?;
    let family = u16::from_ne_bytes([head[0], head[1]]);
    if family != AF_INET && family != AF_INET6 {
        return Ok(());
    }
    let protocol = match read::<u16>(socket, offset!(socket_type))? {
        SOCK_STREAM => IPPROTO_TCP,
        SOCK_DGRAM => IPPROTO_UDP,
        _ => return Ok(()),
    };
    let Some(mut entry) = NET_EVENTS.reserve::<ConnectEvent>(0) else {
        count_lost(Signal::Connect);
        return Ok(());
    };
    let event = unsafe { &mut *entry.as_mut_ptr() };
    start_process_event(event, DIRECTION_OUT, protocol, family);
    event.dport = u16::from_be_bytes([head[2], head[3]]);
    // sockaddr_in: address at 4; sockaddr_in6: address at 8.
    let ok = if family == AF_INET {
        copy_addr(space, addr.wrapping_add(4), &mut event.daddr[..4])
    } else {
        copy_addr(space, addr.wrapping_add(8), &mut event.daddr)
    };
    if ok.is_err() {
        entry.discard(0);
        return ok;
    }
    entry.submit(crate::maps::net_wakeup());
    Ok(())
}

/// Attached to `syscalls:sys_enter_connect` only.
#[tracepoint]
pub fn connect_syscall_enter(ctx: TracePointContext) -> u32 {
    count_failure(ProgramId::ConnectSyscallEnter, try_connect_enter(&Syscall::enter(&ctx)));
    0
}

/// Where the per-syscall tracepoints are missing: every syscall runs it.
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn connect_sys_enter(ctx: RawTracePointContext) -> i32 {
    count_failure(ProgramId::ConnectSysEnter, try_connect_enter(&Syscall::raw_enter(&ctx)));
    0
}

#[inline(always)]
fn try_connect_enter(call: &Syscall) -> Result<(), i64> {
    if call.nr != nr::CONNECT {
        return Ok(());
    }
    let fd = call.arg(0)?;
    let addr = call.arg(1)?;
    let Some(file) = kernel::file_from_fd(fd as i32 as i64)? else {
        return Ok(());
    };
    // Only a socket's private_data is a `struct socket`.
    if kernel::inode_mode(kernel::file_inode(file)?)? & S_IFMT != S_IFSOCK {
        return Ok(());
    }
    let socket: Kptr = kernel::read_ptr(file, offset!(file_private_data))?;
    emit_connect(socket, addr as *const u8, AddrSpace::User)
}

#[lsm(hook = "socket_connect")]
pub fn connect_lsm(ctx: LsmContext) -> i32 {
    count_failure(ProgramId::ConnectLsm, try_connect_lsm(&ctx));
    0
}

#[inline(always)]
fn try_connect_lsm(ctx: &LsmContext) -> Result<(), i64> {
    let socket: Kptr = ctx.arg(0);
    let addr: *const u8 = ctx.arg(1);
    emit_connect(socket, addr, AddrSpace::Kernel)
}

// ---------------------------------------------------------------- listening sockets

const TCP_CLOSE: i32 = 7;
const TCP_LISTEN: i32 = 10;

/// A listener opening or closing: lets the daemon re-run its listening-socket collector when the
/// set changes instead of polling for it. Reported are exactly CLOSE -> LISTEN (listen()) and
/// LISTEN -> CLOSE (close or shutdown of the listener, a listen() that failed to get its port).
///
/// Not a listen change, and never sent: the socket of every connection a listener accepts starts
/// as a clone of it, state included, and this tracepoint shows that clone going LISTEN -> SYN_RECV
/// (`inet_csk_clone_lock`), then on through the states of a connection to CLOSE; connections still
/// in the accept queue when the listener closes go ESTABLISHED -> CLOSE. Treating any exit from
/// LISTEN as a closed listener would report every accepted connection as its listener closing.
///
/// Cheap: `newstate` is read first, and every transition into a state other than LISTEN or CLOSE
/// (the bulk of them, on a busy server) leaves after that one read; `oldstate` is read only for a
/// transition into CLOSE, the rest of the record only for a listen change.
#[tracepoint]
pub fn listen_tp(ctx: TracePointContext) -> u32 {
    count_failure(ProgramId::ListenTp, try_listen_tp(&ctx));
    0
}

#[inline(always)]
fn try_listen_tp(ctx: &TracePointContext) -> Result<(), i64> {
    let new: i32 = unsafe { ctx.read_at(field::NEWSTATE) }.map_err(|e| e as i64)?;
    let direction = match new {
        TCP_LISTEN => DIRECTION_LISTEN,
        TCP_CLOSE => {
            // Only the listener itself goes from LISTEN to CLOSE; a connection's socket reaches
            // CLOSE from any other state.
            let old: i32 = unsafe { ctx.read_at(field::OLDSTATE) }.map_err(|e| e as i64)?;
            if old != TCP_LISTEN {
                return Ok(());
            }
            DIRECTION_UNLISTEN
        }
        _ => return Ok(()),
    };
    let protocol: u16 = unsafe { ctx.read_at(field::PROTOCOL) }.map_err(|e| e as i64)?;
    if protocol != IPPROTO_TCP as u16 {
        return Ok(());
    }
    let family: u16 = unsafe { ctx.read_at(field::FAMILY) }.map_err(|e| e as i64)?;
    let sport: u16 = unsafe { ctx.read_at(field::SPORT) }.map_err(|e| e as i64)?;
    let mut saddr = [0u8; 16];
    if family == AF_INET {
        let v4: [u8; 4] = unsafe { ctx.read_at(field::SADDR) }.map_err(|e| e as i64)?;
        saddr[..4].copy_from_slice(&v4);
    } else {
        saddr = unsafe { ctx.read_at(field::SADDR_V6) }.map_err(|e| e as i64)?;
    }
    let Some(mut entry) = NET_EVENTS.reserve::<ConnectEvent>(0) else {
        count_lost(Signal::Connect);
        return Ok(());
    };
    let event = unsafe { &mut *entry.as_mut_ptr() };
    start_process_event(event, direction, IPPROTO_TCP, family);
    event.sport = sport;
    event.saddr = saddr;
    entry.submit(crate::maps::net_wakeup());
    Ok(())
}
