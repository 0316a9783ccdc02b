//! The process table's feed: a process created (`sched_process_fork` where the child leads a new
//! thread group) and a process ended (`sched_process_exit` of a thread-group leader). Threads are
//! left out in the kernel: the daemon tracks processes. Raw tracepoints, so a fork or exit the
//! programs ignore costs no perf record.
use aya_ebpf::{helpers::bpf_get_current_pid_tgid, macros::raw_tracepoint, programs::RawTracePointContext};
use ids_common::{PROCESS_EXIT, PROCESS_FORK, ProcessEvent, ProgramId, Signal, kind};

use crate::{
    kernel::{self, Kptr, offset, read},
    maps::{EXEC_EVENTS, count_failure, count_lost},
};

#[raw_tracepoint(tracepoint = "sched_process_fork")]
pub fn process_fork_tp(ctx: RawTracePointContext) -> i32 {
    count_failure(ProgramId::ProcessForkTp, try_process_fork(&ctx));
    0
}

#[inline(always)]
fn try_process_fork(ctx: &RawTracePointContext) -> Result<(), i64> {
    // TP_PROTO(struct task_struct *parent, struct task_struct *child); the parent is current.
    let child = ctx.arg::<u64>(1) as Kptr;
    let pid: u32 = read(child, offset!(task_pid))?;
    let tgid: u32 = read(child, offset!(task_tgid))?;
    if pid != tgid {
        return Ok(());
    }
    emit(PROCESS_FORK, pid)
}

#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn process_exit_tp(_ctx: RawTracePointContext) -> i32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if pid_tgid >> 32 != pid_tgid & 0xffff_ffff {
        return 0;
    }
    count_failure(ProgramId::ProcessExitTp, emit(PROCESS_EXIT, 0));
    0
}

#[inline(always)]
fn emit(op: u32, child: u32) -> Result<(), i64> {
    let Some(mut entry) = EXEC_EVENTS.reserve::<ProcessEvent>(0) else {
        count_lost(Signal::Exec);
        return Ok(());
    };
    let event = unsafe { &mut *entry.as_mut_ptr() };
    kernel::fill_header(&mut event.header, kind::PROCESS, core::mem::size_of::<ProcessEvent>());
    event.op = op;
    event.child = child;
    event.login = kernel::current_login(kernel::current_task());
    entry.submit(crate::maps::exec_wakeup());
    Ok(())
}
