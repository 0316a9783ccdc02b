//! The hook table: for each signal, the hook sets in order of preference. The daemon tries each
//! set in turn and keeps the first whose programs all load and attach; a signal with none is an error.
use ids_common::Signal;

/// Where one program attaches.
#[derive(Debug, Clone, Copy)]
pub enum Attach {
    /// A tracepoint program attached to each `(category, name)`. Names the running kernel lacks
    /// (say `sys_enter_fchmodat2` before 6.6) are skipped; the rest must attach.
    TracePoint(&'static [(&'static str, &'static str)]),
    /// A raw tracepoint (`sys_enter`, `sys_exit`): runs for every syscall, so it is the fallback
    /// where the per-syscall tracepoints are missing.
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

/// The syscalls `file_syscall_enter` handles: descriptor-based writes, truncates, attribute changes
/// and shared writable mmaps, the opens, and the path-based calls.
const FILE_SYSCALL_ENTER: &[(&str, &str)] = &[
    ("syscalls", "sys_enter_write"),
    ("syscalls", "sys_enter_pwrite64"),
    ("syscalls", "sys_enter_writev"),
    ("syscalls", "sys_enter_pwritev"),
    ("syscalls", "sys_enter_pwritev2"),
    ("syscalls", "sys_enter_sendfile64"),
    ("syscalls", "sys_enter_ftruncate"),
    ("syscalls", "sys_enter_fallocate"),
    ("syscalls", "sys_enter_copy_file_range"),
    ("syscalls", "sys_enter_fchmod"),
    ("syscalls", "sys_enter_fchown"),
    ("syscalls", "sys_enter_mmap"),
    ("syscalls", "sys_enter_open"),
    ("syscalls", "sys_enter_openat"),
    ("syscalls", "sys_enter_openat2"),
    ("syscalls", "sys_enter_creat"),
    ("syscalls", "sys_enter_rename"),
    ("syscalls", "sys_enter_renameat"),
    ("syscalls", "sys_enter_renameat2"),
    ("syscalls", "sys_enter_unlink"),
    ("syscalls", "sys_enter_rmdir"),
    ("syscalls", "sys_enter_unlinkat"),
    ("syscalls", "sys_enter_mkdir"),
    ("syscalls", "sys_enter_mknod"),
    ("syscalls", "sys_enter_mkdirat"),
    ("syscalls", "sys_enter_mknodat"),
    ("syscalls", "sys_enter_link"),
    ("syscalls", "sys_enter_symlink"),
    ("syscalls", "sys_enter_linkat"),
    ("syscalls", "sys_enter_symlinkat"),
    ("syscalls", "sys_enter_chmod"),
    ("syscalls", "sys_enter_chown"),
    ("syscalls", "sys_enter_lchown"),
    ("syscalls", "sys_enter_utime"),
    ("syscalls", "sys_enter_utimes"),
    ("syscalls", "sys_enter_fchmodat"),
    ("syscalls", "sys_enter_fchmodat2"),
    ("syscalls", "sys_enter_fchownat"),
    ("syscalls", "sys_enter_futimesat"),
    ("syscalls", "sys_enter_utimensat"),
    ("syscalls", "sys_enter_truncate"),
];

/// The syscalls whose result decides a record: the opens (a file created or truncated) and the
/// path-based calls (sent only when they succeed). The write family needs no exit program.
const FILE_SYSCALL_EXIT: &[(&str, &str)] = &[
    ("syscalls", "sys_exit_open"),
    ("syscalls", "sys_exit_openat"),
    ("syscalls", "sys_exit_openat2"),
    ("syscalls", "sys_exit_creat"),
    ("syscalls", "sys_exit_rename"),
    ("syscalls", "sys_exit_renameat"),
    ("syscalls", "sys_exit_renameat2"),
    ("syscalls", "sys_exit_unlink"),
    ("syscalls", "sys_exit_rmdir"),
    ("syscalls", "sys_exit_unlinkat"),
    ("syscalls", "sys_exit_mkdir"),
    ("syscalls", "sys_exit_mknod"),
    ("syscalls", "sys_exit_mkdirat"),
    ("syscalls", "sys_exit_mknodat"),
    ("syscalls", "sys_exit_link"),
    ("syscalls", "sys_exit_symlink"),
    ("syscalls", "sys_exit_linkat"),
    ("syscalls", "sys_exit_symlinkat"),
    ("syscalls", "sys_exit_chmod"),
    ("syscalls", "sys_exit_chown"),
    ("syscalls", "sys_exit_lchown"),
    ("syscalls", "sys_exit_utime"),
    ("syscalls", "sys_exit_utimes"),
    ("syscalls", "sys_exit_fchmodat"),
    ("syscalls", "sys_exit_fchmodat2"),
    ("syscalls", "sys_exit_fchownat"),
    ("syscalls", "sys_exit_futimesat"),
    ("syscalls", "sys_exit_utimensat"),
    ("syscalls", "sys_exit_truncate"),
];

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
            // Per-syscall tracepoints first: a syscall the sensor does not follow runs no program.
            HookSet {
                name: "tracepoint:syscalls",
                programs: &[
                    required("file_syscall_enter", Attach::TracePoint(FILE_SYSCALL_ENTER)),
                    required("file_syscall_exit", Attach::TracePoint(FILE_SYSCALL_EXIT)),
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
                name: "tracepoint:syscalls:sys_enter_connect",
                programs: &[
                    required("connect_syscall_enter", Attach::TracePoint(&[("syscalls", "sys_enter_connect")])),
                    LISTEN,
                ],
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
        loaded.insert(crate::bans::kernel::TC_PROGRAM);
        let counted: BTreeSet<&str> = ProgramId::ALL.iter().map(|program| program.name()).collect();
        assert_eq!(loaded, counted);
    }
}
