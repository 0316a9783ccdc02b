//! Exec: `sched:sched_process_exec` everywhere; LSM `bprm_committed_creds` where LSM programs load
//! (it runs once the exec can no longer fail). Both report the same record.
use aya_ebpf::{
    EbpfContext as _,
    helpers::generated,
    macros::{lsm, tracepoint},
    programs::{LsmContext, TracePointContext},
};
use ids_common::{
    ARGS_LEN, EXEC_ARGS_TRUNCATED, EXEC_FILENAME_TRUNCATED, ExecEvent, PATH_LEN, ProgramId, Signal, kind,
};

use crate::{
    arch::x86_64::tracepoint::sched_process_exec,
    kernel::{self, Kptr, offset, read, read_ptr},
    maps::{EXEC_EVENTS, count_failure, count_lost},
};

#[tracepoint]
pub fn exec_tp(ctx: TracePointContext) -> u32 {
    count_failure(ProgramId::ExecTp, try_exec_tp(&ctx));
    0
}

#[inline(always)]
fn try_exec_tp(ctx: &TracePointContext) -> Result<(), i64> {
    let loc = unsafe { ctx.read_at::<u32>(sched_process_exec::FILENAME) }.map_err(|e| e as i64)?;
    // `__data_loc`: the low 16 bits are the string's offset in the record.
    let filename = unsafe { (ctx.as_ptr() as Kptr).add((loc & 0xffff) as usize) };
    emit_exec(filename, arg_area(), 0)
}

#[lsm(hook = "bprm_committed_creds")]
pub fn exec_lsm(ctx: LsmContext) -> i32 {
    count_failure(ProgramId::ExecLsm, try_exec_lsm(&ctx));
    0
}

#[inline(always)]
fn try_exec_lsm(ctx: &LsmContext) -> Result<(), i64> {
    let bprm: Kptr = ctx.arg(0);
    let filename = read_ptr(bprm, offset!(binprm_filename))?;
    // The new mm is in place but its arg_start is not set yet: the strings start at bprm->p
    // (arguments, then the environment), so the count tells where the arguments end.
    let argc = read::<i32>(bprm, offset!(binprm_argc));
    let area = read::<u64>(bprm, offset!(binprm_p)).map(|p| (p, ARGS_LEN as u64));
    // Without the count every string passes for an argument; the record is still worth sending.
    emit_exec(filename, area, argc.map_or(0, |n| n.max(0) as u32))?;
    argc.map(|_| ())
}

/// Sends the exec record. A filename or arguments that could not be read leave their field empty
/// in the record, which is sent all the same, and make the result an error.
#[inline(always)]
fn emit_exec(filename: Kptr, args: Result<(u64, u64), i64>, argc: u32) -> Result<(), i64> {
    let Some(mut entry) = EXEC_EVENTS.reserve::<ExecEvent>(0) else {
        count_lost(Signal::Exec);
        return Ok(());
    };
    let event = unsafe { &mut *entry.as_mut_ptr() };
    kernel::fill_header(&mut event.header, kind::EXEC, core::mem::size_of::<ExecEvent>());
    event.truncated = 0;
    event.argc = argc;
    event._pad = 0;
    event.login = kernel::current_login(kernel::current_task());
    let read = unsafe {
        generated::bpf_probe_read_kernel_str(event.filename.as_mut_ptr().cast(), PATH_LEN as u32, filename.cast())
    };
    if read < 0 {
        event.filename[0] = 0;
    } else if read as usize >= PATH_LEN {
        event.truncated |= EXEC_FILENAME_TRUNCATED;
    }
    event.args_len = 0;
    let args_read = args.and_then(|(start, len)| read_args(event, start, len, argc));
    entry.submit(crate::maps::exec_wakeup());
    if read < 0 { Err(read) } else { args_read }
}

/// Copies up to `ARGS_LEN` bytes of argument strings from `start` into the record.
#[inline(always)]
fn read_args(event: &mut ExecEvent, start: u64, len: u64, argc: u32) -> Result<(), i64> {
    let (n, cut) = if len >= ARGS_LEN as u64 {
        (ARGS_LEN as u32, len > ARGS_LEN as u64)
    } else {
        ((len as u32) & (ARGS_LEN as u32 - 1), false)
    };
    if n == 0 {
        return Ok(());
    }
    let ok = unsafe { generated::bpf_probe_read_user(event.args.as_mut_ptr().cast(), n, start as *const _) };
    if ok == 0 {
        event.args_len = n;
        if cut {
            event.truncated |= EXEC_ARGS_TRUNCATED;
        }
        return Ok(());
    }
    if argc != 0 {
        // From bprm->p the strings may end (at the top of the stack) before ARGS_LEN bytes.
        for size in [256u32, 128, 64, 32] {
            let ok = unsafe { generated::bpf_probe_read_user(event.args.as_mut_ptr().cast(), size, start as *const _) };
            if ok == 0 {
                event.args_len = size;
                return Ok(());
            }
        }
    }
    Err(ok)
}

/// Start and length of the new program's argument strings in its memory.
#[inline(always)]
fn arg_area() -> Result<(u64, u64), i64> {
    let mm = read_ptr(kernel::current_task(), offset!(task_mm))?;
    let start: u64 = read(mm, offset!(mm_arg_start))?;
    let end: u64 = read(mm, offset!(mm_arg_end))?;
    // An exec with no argument at all (argv NULL, before kernels put an empty argv[0] in) has none.
    Ok((start, end.saturating_sub(start)))
}
