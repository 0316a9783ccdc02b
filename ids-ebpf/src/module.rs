//! Kernel modules: `module:module_load` and `module:module_free` report a module entering or
//! leaving the kernel, so the `kernel_modules` collector re-runs at once instead of on its interval.
//! Both tracepoints carry the name as `__data_loc char[] name` (offsets in `arch`); the layout has
//! been the same since the tracepoints were added (2.6.33).
use aya_ebpf::{EbpfContext as _, helpers::generated, macros::tracepoint, programs::TracePointContext};
use ids_common::{MODULE_FREE, MODULE_LOAD, MODULE_NAME_LEN, ModuleEvent, ProgramId, Signal, kind};

use crate::{
    arch::x86_64::tracepoint::{module_free, module_load},
    kernel::{self, Kptr},
    maps::{EXEC_EVENTS, count_failure, count_lost},
};

#[tracepoint]
pub fn module_load_tp(ctx: TracePointContext) -> u32 {
    count_failure(ProgramId::ModuleLoadTp, emit_module(&ctx, MODULE_LOAD, module_load::NAME));
    0
}

#[tracepoint]
pub fn module_free_tp(ctx: TracePointContext) -> u32 {
    count_failure(ProgramId::ModuleFreeTp, emit_module(&ctx, MODULE_FREE, module_free::NAME));
    0
}

/// Sends the module record; a name that could not be read is sent empty and makes it an error.
#[inline(always)]
fn emit_module(ctx: &TracePointContext, op: u32, name_loc: usize) -> Result<(), i64> {
    // Low 16 bits: offset of the string in the record; high 16: its length.
    let loc = unsafe { ctx.read_at::<u32>(name_loc) }.map_err(|e| e as i64)?;
    let Some(mut entry) = EXEC_EVENTS.reserve::<ModuleEvent>(0) else {
        count_lost(Signal::Exec);
        return Ok(());
    };
    let event = unsafe { &mut *entry.as_mut_ptr() };
    kernel::fill_header(&mut event.header, kind::MODULE, core::mem::size_of::<ModuleEvent>());
    event.op = op;
    event._pad = 0;
    let name = unsafe { (ctx.as_ptr() as Kptr).add((loc & 0xffff) as usize) };
    let read = unsafe {
        generated::bpf_probe_read_kernel_str(event.name.as_mut_ptr().cast(), MODULE_NAME_LEN as u32, name.cast())
    };
    if read < 0 {
        event.name[0] = 0;
    }
    entry.submit(crate::maps::exec_wakeup());
    if read < 0 { Err(read) } else { Ok(()) }
}
