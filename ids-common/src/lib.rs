//! Types shared by the kernel programs (`ids-ebpf`) and the daemon (`ids-user`): the records that
//! cross the ring buffers, the keys and values of the maps, and the kernel-layout offsets that the
//! daemon reads from BTF and hands to the programs before they load.
//!
//! Every type is `#[repr(C)]`, `Copy`, uses explicit padding and carries a size assertion, so the
//! two sides agree byte for byte. Feature `user` adds the `aya::Pod` impls the daemon needs.
#![no_std]

pub const TASK_COMM_LEN: usize = 16;
/// Longest path (or path component) a record carries; longer ones are cut and flagged.
pub const PATH_LEN: usize = 256;
/// Bytes of NUL-separated arguments an exec record carries.
pub const ARGS_LEN: usize = 512;

/// The three signals of the sensor. The value indexes the per-CPU lost counters.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Exec = 0,
    File = 1,
    Connect = 2,
}
pub const SIGNAL_COUNT: u32 = 3;

/// Record kinds. Numbers are never reused; families are grouped by hundreds.
pub mod kind {
    pub const EXEC: u32 = 1;
    pub const FILE_CHANGE: u32 = 100;
    pub const CONNECT: u32 = 200;
    pub const MODULE: u32 = 300;
    pub const PROCESS: u32 = 400;
}

/// Common header of every record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventHeader {
    pub kind: u32,
    /// Size of the whole record in bytes; the decoder checks it against the kind.
    pub size: u32,
    /// CLOCK_BOOTTIME nanoseconds (`bpf_ktime_get_boot_ns`).
    pub time_ns: u64,
    /// Process id (the kernel's tgid).
    pub pid: u32,
    /// Thread id (the kernel's pid).
    pub tid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    pub _pad: u32,
    pub comm: [u8; TASK_COMM_LEN],
}
const _: () = assert!(core::mem::size_of::<EventHeader>() == 56);

/// A successful exec.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExecEvent {
    pub header: EventHeader,
    /// Bytes of `args` in use (NUL-separated arguments, argv[0] first).
    pub args_len: u32,
    /// Bit 0: arguments were cut at `ARGS_LEN`. Bit 1: filename was cut at `PATH_LEN`.
    pub truncated: u32,
    /// Number of arguments when known (the LSM hook reads them before the environment, so it
    /// needs the count); 0 means every string in `args` is an argument.
    pub argc: u32,
    pub _pad: u32,
    /// Who the process is for the audit subsystem: `LoginIds` of the task.
    pub login: LoginIds,
    pub filename: [u8; PATH_LEN],
    pub args: [u8; ARGS_LEN],
}
const _: () = assert!(core::mem::size_of::<ExecEvent>() == 56 + 16 + 16 + PATH_LEN + ARGS_LEN);
pub const EXEC_ARGS_TRUNCATED: u32 = 1;
pub const EXEC_FILENAME_TRUNCATED: u32 = 2;

/// The login a task belongs to and its cgroup, sent with execs and forks so the daemon's process
/// table knows them without reading `/proc` (which a short-lived process has left already).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoginIds {
    /// The audit login uid (`/proc/PID/loginuid`); `NO_LOGIN` when unset or not known.
    pub auid: u32,
    /// The audit session id (`/proc/PID/sessionid`); `NO_LOGIN` when unset or not known.
    pub sessionid: u32,
    /// The cgroup v2 id (the inode number of the cgroup's directory in cgroupfs).
    pub cgroup_id: u64,
}
const _: () = assert!(core::mem::size_of::<LoginIds>() == 16);
/// The kernel's value for "no login uid / no session" (`(u32)-1`).
pub const NO_LOGIN: u32 = u32::MAX;

/// A process was created (`sched_process_fork` of a new thread group) or ended
/// (`sched_process_exit` of a group leader). Carried on the exec ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessEvent {
    /// For a fork, the parent (the current task); for an exit, the process that ended.
    pub header: EventHeader,
    /// `PROCESS_FORK` or `PROCESS_EXIT`.
    pub op: u32,
    /// The new process's pid (fork); 0 for an exit.
    pub child: u32,
    /// The current task's login and cgroup, which a forked child inherits.
    pub login: LoginIds,
}
const _: () = assert!(core::mem::size_of::<ProcessEvent>() == 56 + 8 + 16);
pub const PROCESS_FORK: u32 = 0;
pub const PROCESS_EXIT: u32 = 1;

/// Operations of a file-change record.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileOp {
    Write = 1,
    Create = 2,
    Rename = 3,
    Unlink = 4,
    Attrib = 5,
}

impl FileOp {
    pub fn from_u32(value: u32) -> Option<Self> {
        Some(match value {
            1 => Self::Write,
            2 => Self::Create,
            3 => Self::Rename,
            4 => Self::Unlink,
            5 => Self::Attrib,
            _ => return None,
        })
    }
}

/// How the kernel program found a path, which tells the daemon how to turn it into an absolute one.
pub mod path_source {
    /// No path (unused slot).
    pub const NONE: u32 = 0;
    /// `name` is the last component (d_name) of a dentry whose parent directory is `dir`.
    pub const DENTRY: u32 = 1;
    /// `name` is an absolute path as the process passed it.
    pub const ABSOLUTE: u32 = 2;
    /// `name` is a path relative to the directory `dir` (the cwd or a dirfd).
    pub const RELATIVE: u32 = 3;
}

/// A change to a watched file or directory.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileEvent {
    pub header: EventHeader,
    pub op: u32,
    /// `path_source` of `name`.
    pub source: u32,
    /// Target inode, `dev` as the kernel encodes it (major << 20 | minor); 0 when not known.
    pub dev: u32,
    /// `i_mode` of the target when known, else 0.
    pub mode: u32,
    pub ino: u64,
    /// Directory `name` is relative to (DENTRY: the parent; RELATIVE: the base).
    pub dir_dev: u32,
    /// `path_source` of `new_name` (rename only).
    pub new_source: u32,
    pub dir_ino: u64,
    pub new_dir_dev: u32,
    /// Bit 0: `name` was cut; bit 1: `new_name` was cut.
    pub truncated: u32,
    pub new_dir_ino: u64,
    pub name: [u8; PATH_LEN],
    pub new_name: [u8; PATH_LEN],
}
const _: () = assert!(core::mem::size_of::<FileEvent>() == 56 + 56 + 2 * PATH_LEN);

/// An outgoing connect (seen at the connect call) or an incoming TCP SYN (seen in XDP).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectEvent {
    pub header: EventHeader,
    /// `DIRECTION_OUT` or `DIRECTION_IN`.
    pub direction: u8,
    /// IPPROTO_TCP (6) or IPPROTO_UDP (17).
    pub protocol: u8,
    /// AF_INET (2) or AF_INET6 (10).
    pub family: u16,
    /// Ports in host byte order; 0 when not known (the source port of an unbound socket).
    pub sport: u16,
    pub dport: u16,
    /// Addresses in network byte order; IPv4 uses the first four bytes.
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// Interface the SYN arrived on (incoming only).
    pub ifindex: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<ConnectEvent>() == 56 + 8 + 32 + 8);
pub const DIRECTION_OUT: u8 = 0;
pub const DIRECTION_IN: u8 = 1;
/// A TCP socket entered LISTEN (`sport`/`saddr` are the listening address).
pub const DIRECTION_LISTEN: u8 = 2;
/// A TCP socket left LISTEN.
pub const DIRECTION_UNLISTEN: u8 = 3;
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// A kernel module was loaded or freed (`module:module_load`, `module:module_free`); carried on
/// the exec ring buffer, since loading one takes a process.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModuleEvent {
    pub header: EventHeader,
    /// `MODULE_LOAD` or `MODULE_FREE`.
    pub op: u32,
    pub _pad: u32,
    /// The module's name, NUL-terminated (the kernel's limit is 56 bytes).
    pub name: [u8; MODULE_NAME_LEN],
}
pub const MODULE_NAME_LEN: usize = 64;
const _: () = assert!(core::mem::size_of::<ModuleEvent>() == 56 + 8 + MODULE_NAME_LEN);
pub const MODULE_LOAD: u32 = 0;
pub const MODULE_FREE: u32 = 1;

/// Key of the watched-inode map. `dev` as the kernel encodes it (major << 20 | minor).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct InodeKey {
    pub dev: u32,
    pub _pad: u32,
    pub ino: u64,
}
const _: () = assert!(core::mem::size_of::<InodeKey>() == 16);

/// Value of the watched-inode map.
pub const WATCHED_FILE: u32 = 1;
pub const WATCHED_DIR: u32 = 2;
/// A directory above a watched root: relative paths resolved from it may lead into the watch set,
/// so path-based calls from it go to the daemon, which keeps only those that do.
pub const WATCHED_ANCESTOR: u32 = 3;
/// The nearest existing directory above a watched path that does not exist yet: new names in it
/// are reported (the daemon keeps the one it waits for and adds it), and, unlike a watched
/// directory, nothing created in it or below it joins the watch set on its own.
pub const WATCHED_PARENT: u32 = 4;

/// Key of the watched-prefix LPM trie: absolute paths as bytes. A watched directory `/a/b` is stored
/// as the prefixes `/a/b/` and `/a/b\0`; a watched file `/a/f` as `/a/f\0`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PathPrefix {
    pub bytes: [u8; PATH_LEN],
}
const _: () = assert!(core::mem::size_of::<PathPrefix>() == PATH_LEN);

/// Byte offsets into kernel structures, read by the daemon from the running kernel's BTF and set
/// as a read-only global before the programs load. Names are `struct_member`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    pub task_real_parent: u32,
    pub task_tgid: u32,
    pub task_files: u32,
    pub task_fs: u32,
    pub task_mm: u32,
    pub files_fdt: u32,
    pub fdt_fd: u32,
    pub fdt_max_fds: u32,
    pub fs_pwd_dentry: u32,
    pub file_dentry: u32,
    pub file_inode: u32,
    pub file_mode: u32,
    pub file_flags: u32,
    pub file_private_data: u32,
    pub dentry_parent: u32,
    pub dentry_inode: u32,
    pub dentry_name: u32,
    pub dentry_sb: u32,
    pub inode_ino: u32,
    pub inode_mode: u32,
    pub inode_sb: u32,
    pub sb_dev: u32,
    pub mm_arg_start: u32,
    pub mm_arg_end: u32,
    pub socket_type: u32,
    pub iattr_valid: u32,
    /// Index of the `dentry` argument of the LSM hook `inode_setattr` (it moved in 6.3).
    pub setattr_dentry_arg: u32,
    pub binprm_filename: u32,
    pub binprm_p: u32,
    pub binprm_argc: u32,
    pub task_pid: u32,
    /// 0 on kernels built without audit (no login uid to read).
    pub task_loginuid: u32,
    pub task_sessionid: u32,
}
const _: () = assert!(core::mem::size_of::<KernelOffsets>() == 33 * 4);

// ---------------------------------------------------------------- program errors

/// The eBPF programs of the sensor, as the keys of the per-CPU error counters `PROGRAM_ERRORS`
/// (a `PerCpuArray<u64>`, index = the value here, summed over CPUs by the daemon).
///
/// A program counts one error per run in which something it needed failed: a read of kernel or
/// user memory that decides what it reports, a map update (the watch set full, a parked record not
/// stored) or a helper. It then returns its safe verdict (0; XDP_PASS) or, where the rest of its
/// work does not depend on the failed step, finishes that work (a ban still drops). Records that
/// found no room in a ring buffer are counted as lost per `Signal`, not here.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgramId {
    ExecTp = 0,
    ExecLsm = 1,
    ModuleLoadTp = 2,
    ModuleFreeTp = 3,
    FileSysEnter = 4,
    FileSysExit = 5,
    FileOpenLsm = 6,
    FileMmapLsm = 7,
    FileSetattrLsm = 8,
    FileUnlinkLsm = 9,
    FileRmdirLsm = 10,
    FileMkdirLsm = 11,
    FileMknodLsm = 12,
    FileSymlinkLsm = 13,
    FileLinkLsm = 14,
    FileRenameLsm = 15,
    FileVfsWrite = 16,
    FileVfsWritev = 17,
    ConnectSysEnter = 18,
    ConnectLsm = 19,
    ListenTp = 20,
    XdpGuard = 21,
    ProcessForkTp = 22,
    ProcessExitTp = 23,
    FileSyscallEnter = 24,
    FileSyscallExit = 25,
    ConnectSyscallEnter = 26,
    TcGuard = 27,
}
pub const PROGRAM_COUNT: u32 = 28;
const _: () = assert!(core::mem::size_of::<ProgramId>() == core::mem::size_of::<u32>());

impl ProgramId {
    /// Every program, in index order.
    pub const ALL: [ProgramId; PROGRAM_COUNT as usize] = [
        Self::ExecTp,
        Self::ExecLsm,
        Self::ModuleLoadTp,
        Self::ModuleFreeTp,
        Self::FileSysEnter,
        Self::FileSysExit,
        Self::FileOpenLsm,
        Self::FileMmapLsm,
        Self::FileSetattrLsm,
        Self::FileUnlinkLsm,
        Self::FileRmdirLsm,
        Self::FileMkdirLsm,
        Self::FileMknodLsm,
        Self::FileSymlinkLsm,
        Self::FileLinkLsm,
        Self::FileRenameLsm,
        Self::FileVfsWrite,
        Self::FileVfsWritev,
        Self::ConnectSysEnter,
        Self::ConnectLsm,
        Self::ListenTp,
        Self::XdpGuard,
        Self::ProcessForkTp,
        Self::ProcessExitTp,
        Self::FileSyscallEnter,
        Self::FileSyscallExit,
        Self::ConnectSyscallEnter,
        Self::TcGuard,
    ];

    /// The program's function name in the eBPF object, which is also how the daemon loads it.
    pub const fn name(self) -> &'static str {
        match self {
            Self::ExecTp => "exec_tp",
            Self::ExecLsm => "exec_lsm",
            Self::ModuleLoadTp => "module_load_tp",
            Self::ModuleFreeTp => "module_free_tp",
            Self::FileSysEnter => "file_sys_enter",
            Self::FileSysExit => "file_sys_exit",
            Self::FileOpenLsm => "file_open_lsm",
            Self::FileMmapLsm => "file_mmap_lsm",
            Self::FileSetattrLsm => "file_setattr_lsm",
            Self::FileUnlinkLsm => "file_unlink_lsm",
            Self::FileRmdirLsm => "file_rmdir_lsm",
            Self::FileMkdirLsm => "file_mkdir_lsm",
            Self::FileMknodLsm => "file_mknod_lsm",
            Self::FileSymlinkLsm => "file_symlink_lsm",
            Self::FileLinkLsm => "file_link_lsm",
            Self::FileRenameLsm => "file_rename_lsm",
            Self::FileVfsWrite => "file_vfs_write",
            Self::FileVfsWritev => "file_vfs_writev",
            Self::ConnectSysEnter => "connect_sys_enter",
            Self::ConnectLsm => "connect_lsm",
            Self::ListenTp => "listen_tp",
            Self::XdpGuard => "xdp_guard",
            Self::ProcessForkTp => "process_fork_tp",
            Self::ProcessExitTp => "process_exit_tp",
            Self::FileSyscallEnter => "file_syscall_enter",
            Self::FileSyscallExit => "file_syscall_exit",
            Self::ConnectSyscallEnter => "connect_syscall_enter",
            Self::TcGuard => "tc_guard",
        }
    }
}
// `ALL[i]` is the counter at index i, so the daemon can name every slot of the map.
const _: () = {
    let mut i = 0;
    while i < ProgramId::ALL.len() {
        assert!(ProgramId::ALL[i] as usize == i);
        i += 1;
    }
};

// ---------------------------------------------------------------- XDP bans

/// Value of the ban maps (`BAN_V4`, `BAN_V6`, `BAN_NET_V4`, `BAN_NET_V6`): the ban's id in the
/// store, which also keys its hit counters in `BAN_HITS`.
pub type BanId = u32;

/// Per-CPU hit counters of one ban (`BAN_HITS`, keyed by `BanId`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BanHits {
    pub packets: u64,
    pub bytes: u64,
}
const _: () = assert!(core::mem::size_of::<BanHits>() == 16);

/// Port-scan and SYN-flood thresholds, set by the daemon as a read-only global before load.
/// A threshold of 0 turns its detector off.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XdpSettings {
    /// Distinct destination ports one source may try within `window_ns` before it is reported.
    pub scan_ports: u32,
    /// TCP SYNs one source may send within `window_ns` before it is reported.
    pub flood_syns: u32,
    pub window_ns: u64,
}
const _: () = assert!(core::mem::size_of::<XdpSettings>() == 16);

/// Per-source state of the scan detector (`SCAN_SOURCES`, keyed by the IPv6 or IPv4-mapped address).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScanState {
    pub window_start_ns: u64,
    pub ports: u32,
    pub syns: u32,
    /// Non-zero once this window was reported.
    pub reported: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<ScanState>() == 24);

/// Key of `SCAN_PORTS`: one (source, destination port) pair.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScanPortKey {
    pub addr: [u8; 16],
    pub port: u16,
    pub _pad: [u8; 6],
}
const _: () = assert!(core::mem::size_of::<ScanPortKey>() == 24);

/// What a `ScanEvent` reports.
pub const SCAN_PORTS: u32 = 1;
pub const SCAN_SYN_FLOOD: u32 = 2;

/// A source over a scan threshold, sent once per window on the `XDP_EVENTS` ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScanEvent {
    /// `SCAN_PORTS` or `SCAN_SYN_FLOOD`.
    pub what: u32,
    /// AF_INET or AF_INET6.
    pub family: u32,
    /// Network byte order; IPv4 uses the first four bytes.
    pub addr: [u8; 16],
    pub ports: u32,
    pub syns: u32,
    pub window_ns: u64,
}
const _: () = assert!(core::mem::size_of::<ScanEvent>() == 40);

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are repr(C) with explicit padding and only integer fields.
    unsafe impl aya::Pod for InodeKey {}
    unsafe impl aya::Pod for PathPrefix {}
    unsafe impl aya::Pod for KernelOffsets {}
    unsafe impl aya::Pod for BanHits {}
    unsafe impl aya::Pod for XdpSettings {}
}
