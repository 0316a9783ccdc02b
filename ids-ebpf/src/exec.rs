//! Exec: `sched:sched_process_exec` everywhere; LSM `bprm_committed_creds` where LSM programs load
//! (it runs once the exec can no longer fail). Both report the same record.
use aya_ebpf::{
    helpers::generated,
    macros::{lsm, tracepoint},
    programs::{LsmContext, TracePointContext},
};
use ids_common::{ARGS_LEN, EXEC_ARGS_TRUNCATED, EXEC_FILENAME_TRUNCATED, ExecEvent, PATH_LEN, Signal, kind};

use crate::{
    arch::x86_64::tracepoint::sched_process_exec,
    kernel::{self, Kptr, offset, read, read_ptr},
    maps::{EXEC_EVENTS, count_lost},
};

#[tracepoint]
pub fn exec_tp(ctx: TracePointContext) -> u32 {
    let filename = match unsafe { ctx.read_at::<u32>(sched_process_exec::FILENAME) } {
        // `__data_loc`: the low 16 bits are the string's offset in the record.
        Ok(loc) => unsafe { (ctx.as_ptr() as Kptr).add((loc & 0xffff) as usize) },
        Err(_) => return 0,
    };
    let _ = emit_exec(filename, arg_area(), 0);
    0
}

#[lsm(hook = "bprm_committed_creds")]
pub fn exec_lsm(ctx: LsmContext) -> i32 {
    let bprm: Kptr = ctx.arg(0);
    if let Ok(filename) = read_ptr(bprm, offset!(binprm_filename)) {
        // The new mm is in place but its arg_start is not set yet: the strings start at bprm->p
        // (arguments, then the environment), so the count tells where the arguments end.
        let argc = read::<i32>(bprm, offset!(binprm_argc)).unwrap_or(0).max(0) as u32;
        let area = read::<u64>(bprm, offset!(binprm_p)).map(|p| (p, ARGS_LEN as u64));
        let _ = emit_exec(filename, area, argc);
    }
    0
}

use aya_ebpf::EbpfContext as _;

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
    let read = unsafe {
        generated::bpf_probe_read_kernel_str(event.filename.as_mut_ptr().cast(), PATH_LEN as u32, filename.cast())
    };
    if read < 0 {
        event.filename[0] = 0;
    } else if read as usize >= PATH_LEN {
        event.truncated |= EXEC_FILENAME_TRUNCATED;
    }
    event.args_len = 0;
    if let Ok((start, len)) = args {
        let (n, cut) = if len >= ARGS_LEN as u64 {
            (ARGS_LEN as u32, len > ARGS_LEN as u64)
        } else {
            ((len as u32) & (ARGS_LEN as u32 - 1), false)
        };
        if n > 0 {
            let ok = unsafe { generated::bpf_probe_read_user(event.args.as_mut_ptr().cast(), n, start as *const _) };
            if ok == 0 {
                event.args_len = n;
                if cut {
                    event.truncated |= EXEC_ARGS_TRUNCATED;
                }
            } else if argc != 0 {
                // From bprm->p the strings may end (at the top of the stack) before ARGS_LEN bytes.
                for size in [256u32, 128, 64, 32] {
                    let ok = unsafe {
                        generated::bpf_probe_read_user(event.args.as_mut_ptr().cast(), size, start as *const _)
                    };
                    if ok == 0 {
                        event.args_len = size;
                        break;
                    }
                }
            }
        }
    }
    entry.submit(0);
    Ok(())
}

/// Start and length of the new program's argument strings in its memory.
#[inline(always)]
fn arg_area() -> Result<(u64, u64), i64> {
    let mm = read_ptr(kernel::current_task(), offset!(task_mm))?;
    let start: u64 = read(mm, offset!(mm_arg_start))?;
    let end: u64 = read(mm, offset!(mm_arg_end))?;
    if end <= start {
        return Err(-1);
    }
    Ok((start, end - start))
}
