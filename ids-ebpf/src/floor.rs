//! Empty programs: `ids sensor-floor` attaches them wherever `ids run` would attach its tracepoint
//! programs, so the sensor bench can tell what any program on those hooks costs (the floor) from
//! what the sensor's own work adds.
use aya_ebpf::{
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};

#[tracepoint]
pub fn floor_tp(_ctx: TracePointContext) -> u32 {
    0
}

#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn floor_raw_tp(_ctx: RawTracePointContext) -> i32 {
    0
}
