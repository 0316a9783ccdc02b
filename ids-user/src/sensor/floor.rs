//! The floor of the sensor bench: empty programs attached wherever `Sensor::start` would attach
//! the sensor's tracepoint programs on this kernel, so `cargo xtask bench sensor` can set what any
//! program on those hooks costs beside what the sensor's own work adds.
//!
//! Only tracepoint hook sets have a floor: a set that needs LSM or fentry is passed over, as
//! `Sensor::start` passes it over on kernels that refuse those programs. The floor takes the
//! first tracepoint set of each signal without loading the sensor's own program there; should
//! that program fail where an empty one loads, the sensor would run on a later set: the bench
//! prints both hook lists, so such a mismatch shows.
use std::path::Path;

use anyhow::{Context as _, bail};
use aya::programs::{RawTracePoint, TracePoint};
use aya::{Ebpf, EbpfLoader};

use super::hooks::{Attach, HOOK_TABLE, HookSet, signal_name};
use super::{OBJECT, ensure_kernel_filesystems, program_mut, raise_memlock_limit};

const FLOOR_TRACEPOINT: &str = "floor_tp";
const FLOOR_RAW_TRACEPOINT: &str = "floor_raw_tp";

/// The attached empty programs; detached when dropped.
pub struct Floor {
    _ebpf: Ebpf,
    /// `signal: hook set` whose attach points carry an empty program.
    pub hooks: Vec<String>,
}

/// Attaches the empty programs; `exclude_hooks` as in the configuration.
pub fn attach(exclude_hooks: &[String]) -> anyhow::Result<Floor> {
    ensure_kernel_filesystems();
    raise_memlock_limit();
    let mut ebpf = EbpfLoader::new().load(OBJECT).context("loading the eBPF object")?;
    program_mut::<TracePoint>(&mut ebpf, FLOOR_TRACEPOINT)?.load()?;
    program_mut::<RawTracePoint>(&mut ebpf, FLOOR_RAW_TRACEPOINT)?.load()?;
    let mut hooks = Vec::new();
    for signal_hooks in HOOK_TABLE {
        let set = signal_hooks
            .preference
            .iter()
            .filter(|set| !exclude_hooks.iter().any(|prefix| set.name.starts_with(prefix.as_str())))
            .find(|set| {
                set.programs.iter().all(|spec| matches!(spec.attach, Attach::TracePoint(_) | Attach::RawTracePoint(_)))
            });
        let Some(set) = set else {
            bail!("signal {} has no tracepoint hook set to put a floor under", signal_name(signal_hooks.signal));
        };
        attach_set(&mut ebpf, set)?;
        hooks.push(format!("{} {}", signal_name(signal_hooks.signal), set.name));
    }
    Ok(Floor { _ebpf: ebpf, hooks })
}

fn attach_set(ebpf: &mut Ebpf, set: &HookSet) -> anyhow::Result<()> {
    for spec in set.programs {
        match spec.attach {
            Attach::TracePoint(points) => {
                let program: &mut TracePoint = program_mut(ebpf, FLOOR_TRACEPOINT)?;
                for (category, point) in points {
                    // As `attach_program`: a point this kernel lacks is skipped there too.
                    if Path::new("/sys/kernel/tracing/events").join(category).join(point).exists() {
                        program.attach(category, point).with_context(|| format!("attaching {category}:{point}"))?;
                    }
                }
            }
            Attach::RawTracePoint(point) => {
                let program: &mut RawTracePoint = program_mut(ebpf, FLOOR_RAW_TRACEPOINT)?;
                program.attach(point).with_context(|| format!("attaching raw tracepoint {point}"))?;
            }
            Attach::Lsm(_) | Attach::FEntry(_) => bail!("no floor program for {:?}", spec.attach),
        }
    }
    Ok(())
}
