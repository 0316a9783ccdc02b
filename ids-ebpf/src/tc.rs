//! `tc_guard`, the ban filter as a tc ingress classifier: [`crate::guard`] over the socket buffer,
//! for interfaces where XDP would copy every packet first (a veth fed by local sockets) or run in
//! generic mode (a driver without native XDP). Same maps, same verdicts as `xdp_guard`.
use aya_ebpf::{
    bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC},
    macros::classifier,
    programs::TcContext,
};
use ids_common::ProgramId;

use crate::guard::{Packet, Verdict, guard};

/// Bytes the guard reads at most: Ethernet, two VLAN tags, an IPv6 header, the TCP flags.
const HEADERS: u32 = 14 + 8 + 40 + 14;

impl Packet for TcContext {
    const PROGRAM: ProgramId = ProgramId::TcGuard;

    #[inline(always)]
    fn start(&self) -> usize {
        self.data()
    }

    #[inline(always)]
    fn end(&self) -> usize {
        self.data_end()
    }

    #[inline(always)]
    fn wire_len(&self) -> u64 {
        self.len() as u64
    }

    #[inline(always)]
    fn ingress_ifindex(&self) -> u32 {
        // SAFETY: the context the kernel passed to this run.
        unsafe { (*self.skb.skb).ingress_ifindex }
    }
}

#[classifier]
pub fn tc_guard(ctx: TcContext) -> i32 {
    // Headers outside the linear part (rare on ingress) are pulled in so the guard can read them;
    // if that fails the guard sees a short packet, which passes.
    let linear = (ctx.data_end() - ctx.data()) as u32;
    if linear < HEADERS && ctx.len() > linear {
        let _ = ctx.pull_data(HEADERS.min(ctx.len()));
    }
    match guard(&ctx) {
        Ok(Verdict::Drop) => TC_ACT_SHOT,
        // UNSPEC (TCX_NEXT): the packet goes on to any later tc program, as if this one were absent.
        Ok(Verdict::Pass) | Err(_) => TC_ACT_UNSPEC,
    }
}
