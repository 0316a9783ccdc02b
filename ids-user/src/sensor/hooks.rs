//! The hook table: for each signal, the hook sets in order of preference. The daemon tries each
//! set in turn and keeps the first whose programs all load and attach; a signal with none is an error.
use ids_common::Signal;

/// Where one program attaches.
#[derive(Debug, Clone, Copy)]
pub enum Attach {
    /// A tracepoint program attached to each `(category, name)`. Names the running kernel lacks
    /// (say `sys_enter_fchmodat2` before 6.6) are skipped; the rest must attach.
    TracePoint(&'static [(&'static str, &'static str)]),
    /// A raw tracepoint (`sys_enter`, `sys_exit`): no perf record is built per hit, which keeps
    /// the cost of a syscall the program ignores to a number comparison.
    RawTracePoint(&'static str),
    Lsm(&'static str),
    FEntry(&'static str),
}

#[derive(Debug, Clone, Copy)]
pub struct ProgramSpec {
    /// Function name of the program in the eBPF object.
    pub program: &'static str,
    pub attach: Attach,
    /// An optional program may fail without failing its hook set.
    pub optional: bool,
}

#[derive(Debug, Clone, Copy)]
pub struct HookSet {
    /// Shown by `ids status`; starts with the kind of hook (`lsm`, `tracepoint`).
    pub name: &'static str,
    pub programs: &'static [ProgramSpec],
}

#[derive(Debug, Clone, Copy)]
pub struct SignalHooks {
    pub signal: Signal,
    pub preference: &'static [HookSet],
}

const fn required(program: &'static str, attach: Attach) -> ProgramSpec {
    ProgramSpec { program, attach, optional: false }
}

const fn optional(program: &'static str, attach: Attach) -> ProgramSpec {
    ProgramSpec { program, attach, optional: true }
}

/// Sockets entering and leaving LISTEN, with either connect hook set (optional: the integrity
/// worker falls back to its interval without it).
const LISTEN: ProgramSpec = optional("listen_tp", Attach::TracePoint(&[("sock", "inet_sock_set_state")]));

/// Kernel modules loaded and freed, with either exec hook set (optional: kernels built without
/// module support have no such tracepoints, and the worker falls back to its interval).
const MODULE_LOAD: ProgramSpec = optional("module_load_tp", Attach::TracePoint(&[("module", "module_load")]));
const MODULE_FREE: ProgramSpec = optional("module_free_tp", Attach::TracePoint(&[("module", "module_free")]));

/// Processes created and ended, for the process table, with either exec hook set (optional:
/// without them the table learns processes from execs and `/proc`, and ages them out).
const PROCESS_FORK: ProgramSpec = optional("process_fork_tp", Attach::RawTracePoint("sched_process_fork"));
const PROCESS_EXIT: ProgramSpec = optional("process_exit_tp", Attach::RawTracePoint("sched_process_exit"));

pub const HOOK_TABLE: &[SignalHooks] = &[
    SignalHooks {
        signal: Signal::Exec,
        preference: &[
            HookSet {
                name: "lsm:bprm_committed_creds",
                programs: &[
                    required("exec_lsm", Attach::Lsm("bprm_committed_creds")),
                    MODULE_LOAD,
                    MODULE_FREE,
                    PROCESS_FORK,
                    PROCESS_EXIT,
                ],
            },
            HookSet {
                name: "tracepoint:sched_process_exec",
                programs: &[
                    required("exec_tp", Attach::TracePoint(&[("sched", "sched_process_exec")])),
                    MODULE_LOAD,
                    MODULE_FREE,
                    PROCESS_FORK,
                    PROCESS_EXIT,
                ],
            },
        ],
    },
    SignalHooks {
        signal: Signal::File,
        preference: &[
            HookSet {
                name: "lsm:file_open,inode_*,mmap_file+fentry:vfs_write",
                programs: &[
                    required("file_open_lsm", Attach::Lsm("file_open")),
                    required("file_mmap_lsm", Attach::Lsm("mmap_file")),
                    required("file_setattr_lsm", Attach::Lsm("inode_setattr")),
                    required("file_unlink_lsm", Attach::Lsm("inode_unlink")),
                    required("file_rmdir_lsm", Attach::Lsm("inode_rmdir")),
                    required("file_mkdir_lsm", Attach::Lsm("inode_mkdir")),
                    required("file_mknod_lsm", Attach::Lsm("inode_mknod")),
                    required("file_symlink_lsm", Attach::Lsm("inode_symlink")),
                    required("file_link_lsm", Attach::Lsm("inode_link")),
                    required("file_rename_lsm", Attach::Lsm("inode_rename")),
                    required("file_vfs_write", Attach::FEntry("vfs_write")),
                    optional("file_vfs_writev", Attach::FEntry("vfs_writev")),
                ],
            },
            HookSet {
                name: "tracepoint:raw_syscalls",
                programs: &[
                    required("file_sys_enter", Attach::RawTracePoint("sys_enter")),
                    required("file_sys_exit", Attach::RawTracePoint("sys_exit")),
                ],
            },
        ],
    },
    SignalHooks {
        signal: Signal::Connect,
        preference: &[
            HookSet {
                name: "lsm:socket_connect",
                programs: &[required("connect_lsm", Attach::Lsm("socket_connect")), LISTEN],
            },
            HookSet {
                name: "tracepoint:raw_syscalls:connect",
                programs: &[required("connect_sys_enter", Attach::RawTracePoint("sys_enter")), LISTEN],
            },
        ],
    },
];

pub fn signal_name(signal: Signal) -> &'static str {
    match signal {
        Signal::Exec => "exec",
        Signal::File => "file",
        Signal::Connect => "connect",
    }
}

/// Name of the XDP program that reports incoming SYNs (and enforces bans, `crate::bans::kernel`).
pub const SYN_PROGRAM: &str = crate::bans::kernel::PROGRAM;

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use ids_common::ProgramId;

    use super::*;

    /// `ids status` names error counters by `ProgramId::name`: each must be a program the daemon
    /// loads, and each program it loads must have a counter.
    #[test]
    fn every_loaded_program_has_an_error_counter_and_every_counter_a_program() {
        let mut loaded: BTreeSet<&str> = HOOK_TABLE
            .iter()
            .flat_map(|signal| signal.preference)
            .flat_map(|set| set.programs)
            .map(|spec| spec.program)
            .collect();
        loaded.insert(SYN_PROGRAM);
        let counted: BTreeSet<&str> = ProgramId::ALL.iter().map(|program| program.name()).collect();
        assert_eq!(loaded, counted);
    }
}
