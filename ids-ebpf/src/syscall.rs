//! A syscall as the programs see it, from either kind of tracepoint:
//! - the per-syscall tracepoints (`syscalls:sys_enter_<name>`, `sys_exit_<name>`): the kernel runs
//!   a program only for the syscalls it is attached to, and hands it the number and arguments in
//!   the record, read directly;
//! - the raw `sys_enter`/`sys_exit` tracepoints (kernels without per-syscall events): every
//!   syscall runs the program, whose arguments are `(struct pt_regs *regs, long id)` at entry and
//!   `(struct pt_regs *regs, long ret)` at exit; the syscall's own arguments are read from the
//!   saved user registers.
use aya_ebpf::{
    EbpfContext as _,
    helpers::bpf_probe_read_kernel,
    programs::{RawTracePointContext, TracePointContext},
};

use crate::{
    arch::x86_64::{pt_regs, tracepoint::syscalls},
    kernel::{Kptr, read},
};

enum Args {
    /// The saved user registers (raw tracepoint).
    Regs(Kptr),
    /// The tracepoint record's `args[6]`, copied at entry by one probe read. Not loaded from the
    /// context directly: the kernel refuses to attach a program that loads past the record of
    /// the syscall with the fewest arguments it is attached to (`write` has three), and LLVM
    /// merges loads of different arguments into one load at a computed offset, which the
    /// verifier refuses on a context pointer.
    Record([u64; 6]),
}

/// At entry: the syscall number and where its arguments are.
pub struct Syscall {
    pub nr: i64,
    args: Args,
}

impl Syscall {
    #[inline(always)]
    pub fn raw_enter(ctx: &RawTracePointContext) -> Self {
        Self { args: Args::Regs(ctx.arg::<u64>(0) as Kptr), nr: ctx.arg::<i64>(1) }
    }

    #[inline(always)]
    pub fn enter(ctx: &TracePointContext) -> Self {
        let record = ctx.as_ptr() as *const u8;
        // SAFETY: the record of a syscall tracepoint: `int __syscall_nr` then `args[6]`; the
        // verifier checks the context offsets.
        let nr = unsafe { *(record.add(syscalls::NR) as *const i32) };
        // Past a syscall's own arguments the kernel's copy of the record holds whatever its stack
        // held; the programs read only the arguments the syscall has. A read that fails leaves
        // zeros, which name no descriptor or path the programs act on.
        let args = unsafe { bpf_probe_read_kernel(record.add(syscalls::ARGS) as *const [u64; 6]) }.unwrap_or([0; 6]);
        Self { nr: nr as i64, args: Args::Record(args) }
    }

    /// Argument `n` (0-based, at most 5).
    #[inline(always)]
    pub fn arg(&self, n: usize) -> Result<u64, i64> {
        match self.args {
            Args::Record(args) => Ok(args[n.min(5)]),
            Args::Regs(regs) => {
                let off = match n {
                    0 => pt_regs::ARG0,
                    1 => pt_regs::ARG1,
                    2 => pt_regs::ARG2,
                    3 => pt_regs::ARG3,
                    4 => pt_regs::ARG4,
                    _ => pt_regs::ARG5,
                };
                read::<u64>(regs, off)
            }
        }
    }
}

/// At a raw `sys_exit`: the syscall number (from `orig_ax`) and the return value.
#[inline(always)]
pub fn raw_exit_of(ctx: &RawTracePointContext) -> Result<(i64, i64), i64> {
    let regs = ctx.arg::<u64>(0) as Kptr;
    Ok((read::<i64>(regs, pt_regs::ORIG_AX)?, ctx.arg::<i64>(1)))
}

/// At a `syscalls:sys_exit_<name>` tracepoint: the syscall number and the return value, from the record.
#[inline(always)]
pub fn exit_of(ctx: &TracePointContext) -> (i64, i64) {
    let record = ctx.as_ptr() as *const u8;
    // SAFETY: the record of a syscall exit tracepoint: `int __syscall_nr`, `long ret`.
    unsafe { (*(record.add(syscalls::NR) as *const i32) as i64, *(record.add(syscalls::RET) as *const i64)) }
}
