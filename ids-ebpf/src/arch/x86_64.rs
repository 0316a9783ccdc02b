//! x86_64: syscall numbers, `struct pt_regs` offsets and the field offsets of the tracepoint records
//! the programs read. Every number a program reads by position comes from here.

/// Syscall numbers of the calls the programs follow (arch/x86/entry/syscalls/syscall_64.tbl).
pub mod nr {
    pub const WRITE: i64 = 1;
    pub const OPEN: i64 = 2;
    pub const MMAP: i64 = 9;
    pub const PWRITE64: i64 = 18;
    pub const WRITEV: i64 = 20;
    pub const SENDFILE: i64 = 40;
    pub const CONNECT: i64 = 42;
    pub const TRUNCATE: i64 = 76;
    pub const FTRUNCATE: i64 = 77;
    pub const RENAME: i64 = 82;
    pub const MKDIR: i64 = 83;
    pub const RMDIR: i64 = 84;
    pub const CREAT: i64 = 85;
    pub const LINK: i64 = 86;
    pub const UNLINK: i64 = 87;
    pub const SYMLINK: i64 = 88;
    pub const CHMOD: i64 = 90;
    pub const FCHMOD: i64 = 91;
    pub const CHOWN: i64 = 92;
    pub const FCHOWN: i64 = 93;
    pub const LCHOWN: i64 = 94;
    pub const UTIME: i64 = 132;
    pub const MKNOD: i64 = 133;
    pub const UTIMES: i64 = 235;
    pub const OPENAT: i64 = 257;
    pub const MKDIRAT: i64 = 258;
    pub const MKNODAT: i64 = 259;
    pub const FCHOWNAT: i64 = 260;
    pub const FUTIMESAT: i64 = 261;
    pub const UNLINKAT: i64 = 263;
    pub const RENAMEAT: i64 = 264;
    pub const LINKAT: i64 = 265;
    pub const SYMLINKAT: i64 = 266;
    pub const FCHMODAT: i64 = 268;
    pub const UTIMENSAT: i64 = 280;
    pub const FALLOCATE: i64 = 285;
    pub const PWRITEV: i64 = 296;
    pub const RENAMEAT2: i64 = 316;
    pub const COPY_FILE_RANGE: i64 = 326;
    pub const PWRITEV2: i64 = 328;
    pub const OPENAT2: i64 = 437;
    pub const FCHMODAT2: i64 = 452;
}

/// Byte offsets of the saved user registers in `struct pt_regs` (arch/x86/include/asm/ptrace.h),
/// the layout the raw syscall tracepoints hand over; fixed by the ABI.
pub mod pt_regs {
    /// The six syscall arguments in order: rdi, rsi, rdx, r10, r8, r9 (r10 stands in for rcx,
    /// which the `syscall` instruction overwrites).
    pub const ARG0: usize = 112;
    pub const ARG1: usize = 104;
    pub const ARG2: usize = 96;
    pub const ARG3: usize = 56;
    pub const ARG4: usize = 72;
    pub const ARG5: usize = 64;
    /// `orig_ax`: the syscall number, still there at exit when `ax` holds the return value.
    pub const ORIG_AX: usize = 120;
}

/// Field offsets in the records of the (non-raw) tracepoints the programs attach to, as the
/// kernel's `/sys/kernel/tracing/events/<category>/<name>/format` gives them for a 64-bit kernel.
/// A `__data_loc` field holds a u32: the string's offset in the record (low 16 bits) and its length.
pub mod tracepoint {
    /// `sched:sched_process_exec`.
    pub mod sched_process_exec {
        /// `__data_loc char[] filename`.
        pub const FILENAME: usize = 8;
    }

    /// `module:module_load`: the name comes after `unsigned int taints`.
    pub mod module_load {
        /// `__data_loc char[] name`.
        pub const NAME: usize = 12;
    }

    /// `module:module_free`.
    pub mod module_free {
        /// `__data_loc char[] name`.
        pub const NAME: usize = 8;
    }

    /// `syscalls:sys_enter_<name>` and `syscalls:sys_exit_<name>`, as the kernel hands them to a
    /// program (`struct syscall_tp_t` in kernel/trace/trace_syscalls.c).
    pub mod syscalls {
        /// `int __syscall_nr`.
        pub const NR: usize = 8;
        /// Entry: `unsigned long args[6]`.
        pub const ARGS: usize = 16;
        /// Exit: `long ret`.
        pub const RET: usize = 16;
    }

    /// `sock:inet_sock_set_state`: after `const void *skaddr` at 8.
    pub mod inet_sock_set_state {
        /// `int oldstate`, `int newstate`: TCP_* states.
        pub const OLDSTATE: usize = 16;
        pub const NEWSTATE: usize = 20;
        /// `__u16 sport`, host byte order.
        pub const SPORT: usize = 24;
        /// `__u16 family`, `__u16 protocol`.
        pub const FAMILY: usize = 28;
        pub const PROTOCOL: usize = 30;
        /// `__u8 saddr[4]` (IPv4), `__u8 saddr_v6[16]`.
        pub const SADDR: usize = 32;
        pub const SADDR_V6: usize = 40;
    }
}
