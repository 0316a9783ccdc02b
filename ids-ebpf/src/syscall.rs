//! A syscall as the raw `sys_enter`/`sys_exit` tracepoints see it. Their arguments are
//! `(struct pt_regs *regs, long id)` at entry and `(struct pt_regs *regs, long ret)` at exit; the
//! syscall's own arguments are read from the saved user registers.
use aya_ebpf::programs::RawTracePointContext;

use crate::{
    arch::x86_64::pt_regs,
    kernel::{Kptr, read},
};

/// At `sys_enter`: the syscall number and the saved registers its arguments are read from.
pub struct Syscall {
    pub nr: i64,
    pub regs: Kptr,
}

impl Syscall {
    #[inline(always)]
    pub fn enter(ctx: &RawTracePointContext) -> Self {
        Self { regs: ctx.arg::<u64>(0) as Kptr, nr: ctx.arg::<i64>(1) }
    }

    /// Argument `n` (0-based).
    #[inline(always)]
    pub fn arg(&self, n: usize) -> Result<u64, i64> {
        let off = match n {
            0 => pt_regs::ARG0,
            1 => pt_regs::ARG1,
            2 => pt_regs::ARG2,
            3 => pt_regs::ARG3,
            4 => pt_regs::ARG4,
            _ => pt_regs::ARG5,
        };
        read::<u64>(self.regs, off)
    }
}

/// At `sys_exit`: the syscall number (from `orig_ax`) and the return value.
#[inline(always)]
pub fn exit_of(ctx: &RawTracePointContext) -> Result<(i64, i64), i64> {
    let regs = ctx.arg::<u64>(0) as Kptr;
    Ok((read::<i64>(regs, pt_regs::ORIG_AX)?, ctx.arg::<i64>(1)))
}
