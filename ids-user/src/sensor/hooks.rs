//! The hook table: for each signal, the hook sets in order of preference. The daemon tries each
//! set in turn and keeps the first whose programs all load and attach; a signal with none is an error.
use ids_common::Signal;

/// Where one program attaches.
#[derive(Debug, Clone, Copy)]
pub enum Attach {
    /// A tracepoint program attached to each `(category, name)`. Names the running kernel lacks
    /// (say `sys_enter_fchmodat2` before 6.6) are skipped; the rest must attach.
    TracePoint(&'static [(&'static str, &'static str)]),
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

const FD_SYSCALLS: &[(&str, &str)] = &[
    ("syscalls", "sys_enter_write"),
    ("syscalls", "sys_enter_pwrite64"),
    ("syscalls", "sys_enter_writev"),
    ("syscalls", "sys_enter_pwritev"),
    ("syscalls", "sys_enter_pwritev2"),
    ("syscalls", "sys_enter_sendfile64"),
    ("syscalls", "sys_enter_copy_file_range"),
    ("syscalls", "sys_enter_ftruncate"),
    ("syscalls", "sys_enter_fallocate"),
    ("syscalls", "sys_enter_fchmod"),
    ("syscalls", "sys_enter_fchown"),
    ("syscalls", "sys_enter_mmap"),
];
const OPEN_ENTER: &[(&str, &str)] = &[
    ("syscalls", "sys_enter_open"),
    ("syscalls", "sys_enter_openat"),
    ("syscalls", "sys_enter_openat2"),
    ("syscalls", "sys_enter_creat"),
];
const OPEN_EXIT: &[(&str, &str)] = &[
    ("syscalls", "sys_exit_open"),
    ("syscalls", "sys_exit_openat"),
    ("syscalls", "sys_exit_openat2"),
    ("syscalls", "sys_exit_creat"),
];
macro_rules! path_syscalls {
    ($dir:literal) => {
        &[
            ("syscalls", concat!("sys_", $dir, "_rename")),
            ("syscalls", concat!("sys_", $dir, "_renameat")),
            ("syscalls", concat!("sys_", $dir, "_renameat2")),
            ("syscalls", concat!("sys_", $dir, "_unlink")),
            ("syscalls", concat!("sys_", $dir, "_unlinkat")),
            ("syscalls", concat!("sys_", $dir, "_rmdir")),
            ("syscalls", concat!("sys_", $dir, "_mkdir")),
            ("syscalls", concat!("sys_", $dir, "_mkdirat")),
            ("syscalls", concat!("sys_", $dir, "_mknod")),
            ("syscalls", concat!("sys_", $dir, "_mknodat")),
            ("syscalls", concat!("sys_", $dir, "_link")),
            ("syscalls", concat!("sys_", $dir, "_linkat")),
            ("syscalls", concat!("sys_", $dir, "_symlink")),
            ("syscalls", concat!("sys_", $dir, "_symlinkat")),
            ("syscalls", concat!("sys_", $dir, "_chmod")),
            ("syscalls", concat!("sys_", $dir, "_fchmodat")),
            ("syscalls", concat!("sys_", $dir, "_fchmodat2")),
            ("syscalls", concat!("sys_", $dir, "_chown")),
            ("syscalls", concat!("sys_", $dir, "_lchown")),
            ("syscalls", concat!("sys_", $dir, "_fchownat")),
            ("syscalls", concat!("sys_", $dir, "_utime")),
            ("syscalls", concat!("sys_", $dir, "_utimes")),
            ("syscalls", concat!("sys_", $dir, "_futimesat")),
            ("syscalls", concat!("sys_", $dir, "_utimensat")),
            ("syscalls", concat!("sys_", $dir, "_truncate")),
        ]
    };
}

pub const HOOK_TABLE: &[SignalHooks] = &[
    SignalHooks {
        signal: Signal::Exec,
        preference: &[
            HookSet {
                name: "lsm:bprm_committed_creds",
                programs: &[required("exec_lsm", Attach::Lsm("bprm_committed_creds"))],
            },
            HookSet {
                name: "tracepoint:sched_process_exec",
                programs: &[required("exec_tp", Attach::TracePoint(&[("sched", "sched_process_exec")]))],
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
                name: "tracepoint:syscalls",
                programs: &[
                    required("file_fd_enter", Attach::TracePoint(FD_SYSCALLS)),
                    required("file_open_enter", Attach::TracePoint(OPEN_ENTER)),
                    required("file_open_exit", Attach::TracePoint(OPEN_EXIT)),
                    required("file_path_enter", Attach::TracePoint(path_syscalls!("enter"))),
                    required("file_path_exit", Attach::TracePoint(path_syscalls!("exit"))),
                ],
            },
        ],
    },
    SignalHooks {
        signal: Signal::Connect,
        preference: &[
            HookSet {
                name: "lsm:socket_connect",
                programs: &[required("connect_lsm", Attach::Lsm("socket_connect"))],
            },
            HookSet {
                name: "tracepoint:sys_enter_connect",
                programs: &[required("connect_tp", Attach::TracePoint(&[("syscalls", "sys_enter_connect")]))],
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

/// Name of the XDP program that reports incoming SYNs.
pub const SYN_PROGRAM: &str = "syn_watch";
