//! `xdp_guard`, the ban filter as an XDP program: [`crate::guard`] over the frame the driver (or,
//! in generic mode, the stack) hands it.
use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use ids_common::ProgramId;

use crate::guard::{Packet, Verdict, guard};

impl Packet for XdpContext {
    const PROGRAM: ProgramId = ProgramId::XdpGuard;

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
        (self.data_end() - self.data()) as u64
    }

    #[inline(always)]
    fn ingress_ifindex(&self) -> u32 {
        // SAFETY: the context the kernel passed to this run.
        unsafe { (*self.ctx).ingress_ifindex }
    }
}

#[xdp]
pub fn xdp_guard(ctx: XdpContext) -> u32 {
    match guard(&ctx) {
        Ok(Verdict::Drop) => xdp_action::XDP_DROP,
        Ok(Verdict::Pass) | Err(_) => xdp_action::XDP_PASS,
    }
}
