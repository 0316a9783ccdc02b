//! The syscall-tracepoint family. Descriptor-based calls are checked at entry by the descriptor's
//! inode; path-based calls are checked by path, parked in `PENDING_FILE_EVENTS` and sent at exit
//! if the syscall returned 0; opens that may create or truncate remember their flags until exit.
//!
//! Two pairs of entries run the same code:
//! - `file_syscall_enter`/`file_syscall_exit` on the per-syscall tracepoints
//!   (`syscalls:sys_enter_<name>`, CONFIG_FTRACE_SYSCALLS), preferred: a syscall the sensor does
//!   not follow runs no program at all (the kernel tests a bit and moves on), the arguments are
//!   loads from the record rather than reads of the saved registers, and only the calls whose
//!   result matters have an exit program;
//! - `file_sys_enter`/`file_sys_exit` on the raw `sys_enter`/`sys_exit`, where the per-syscall
//!   events are missing: every syscall of every process runs both.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, generated},
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};
use ids_common::{FileEvent, FileOp, InodeKey, PATH_LEN, ProgramId, Signal, kind, path_source};

use super::{FMODE_CREATED, clear_new, is_shared_writable, on_created, on_file};
use crate::{
    arch::x86_64::nr,
    kernel::{self, offset, read},
    maps::{
        FILE_EVENTS, FILE_SCRATCH, PENDING_FILE_EVENTS, PENDING_OPENS, PREFIX_SCRATCH, WATCHED_INODES,
        WATCHED_PREFIXES, count_failure, count_lost,
    },
    syscall::{Syscall, exit_of, raw_exit_of},
};

const AT_FDCWD: i64 = -100;
const O_CREAT: u64 = 0o100;
const O_TRUNC: u64 = 0o1000;
const O_WRONLY: u64 = 0o1;

/// Anything in the watched-inode map, ancestors of watched roots included.
#[inline(always)]
fn is_relevant_base(key: &InodeKey) -> bool {
    unsafe { WATCHED_INODES.get(key) }.is_some()
}

#[inline(always)]
fn tid_key() -> u64 {
    bpf_get_current_pid_tgid()
}

/// Attached to the entry of each syscall `try_sys_enter` handles.
#[tracepoint]
pub fn file_syscall_enter(ctx: TracePointContext) -> u32 {
    count_failure(ProgramId::FileSyscallEnter, try_sys_enter(&Syscall::enter(&ctx)));
    0
}

/// Attached to the exit of the opens and of the path-based calls.
#[tracepoint]
pub fn file_syscall_exit(ctx: TracePointContext) -> u32 {
    let (nr, ret) = exit_of(&ctx);
    count_failure(ProgramId::FileSyscallExit, try_sys_exit(nr, ret));
    0
}

/// Every syscall enters here; only the ones below do more than compare a number.
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn file_sys_enter(ctx: RawTracePointContext) -> i32 {
    count_failure(ProgramId::FileSysEnter, try_sys_enter(&Syscall::raw_enter(&ctx)));
    0
}

#[inline(always)]
fn try_sys_enter(call: &Syscall) -> Result<(), i64> {
    match call.nr {
        nr::OPEN | nr::OPENAT | nr::OPENAT2 | nr::CREAT => file_open_enter(call),
        nr::WRITE
        | nr::PWRITE64
        | nr::WRITEV
        | nr::PWRITEV
        | nr::PWRITEV2
        | nr::SENDFILE
        | nr::FTRUNCATE
        | nr::FALLOCATE
        | nr::COPY_FILE_RANGE
        | nr::FCHMOD
        | nr::FCHOWN
        | nr::MMAP => file_fd_enter(call),
        nr if is_path_call(nr) => file_path_enter(call),
        _ => Ok(()),
    }
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn file_sys_exit(ctx: RawTracePointContext) -> i32 {
    count_failure(ProgramId::FileSysExit, raw_exit_of(&ctx).and_then(|(nr, ret)| try_sys_exit(nr, ret)));
    0
}

#[inline(always)]
fn try_sys_exit(nr: i64, ret: i64) -> Result<(), i64> {
    match nr {
        nr::OPEN | nr::OPENAT | nr::OPENAT2 | nr::CREAT => file_open_exit(ret),
        nr if is_path_call(nr) => file_path_exit(ret),
        _ => Ok(()),
    }
}

#[inline(always)]
fn is_path_call(nr: i64) -> bool {
    matches!(
        nr,
        nr::RENAME
            | nr::RENAMEAT
            | nr::RENAMEAT2
            | nr::UNLINK
            | nr::RMDIR
            | nr::UNLINKAT
            | nr::MKDIR
            | nr::MKNOD
            | nr::MKDIRAT
            | nr::MKNODAT
            | nr::LINK
            | nr::SYMLINK
            | nr::LINKAT
            | nr::SYMLINKAT
            | nr::CHMOD
            | nr::CHOWN
            | nr::LCHOWN
            | nr::UTIME
            | nr::UTIMES
            | nr::FCHMODAT
            | nr::FCHMODAT2
            | nr::FCHOWNAT
            | nr::FUTIMESAT
            | nr::UTIMENSAT
            | nr::TRUNCATE
    )
}

/// Descriptor-based changes: write family, truncate, fchmod/fchown, shared writable mmap.
#[inline(always)]
fn file_fd_enter(ctx: &Syscall) -> Result<(), i64> {
    let (op, fd) = match ctx.nr {
        nr::WRITE
        | nr::PWRITE64
        | nr::WRITEV
        | nr::PWRITEV
        | nr::PWRITEV2
        | nr::SENDFILE
        | nr::FTRUNCATE
        | nr::FALLOCATE => (FileOp::Write, ctx.arg(0)?),
        nr::COPY_FILE_RANGE => (FileOp::Write, ctx.arg(2)?),
        nr::FCHMOD | nr::FCHOWN => (FileOp::Attrib, ctx.arg(0)?),
        nr::MMAP => {
            if !is_shared_writable(ctx.arg(2)?, ctx.arg(3)?) {
                return Ok(());
            }
            (FileOp::Write, ctx.arg(4)?)
        }
        _ => return Ok(()),
    };
    match kernel::file_from_fd(fd as i32 as i64)? {
        Some(file) => on_file(op, file),
        None => Ok(()),
    }
}

/// Opens that may create or truncate: remember the flags until the syscall returns.
#[inline(always)]
fn file_open_enter(ctx: &Syscall) -> Result<(), i64> {
    let flags = match ctx.nr {
        nr::OPEN => ctx.arg(1)?,
        nr::OPENAT => ctx.arg(2)?,
        nr::CREAT => O_CREAT | O_WRONLY | O_TRUNC,
        nr::OPENAT2 => {
            // `struct open_how` starts with the flags.
            let how = ctx.arg(2)? as *const u64;
            unsafe { aya_ebpf::helpers::bpf_probe_read_user(how) }.map_err(|e| e as i64)?
        }
        _ => return Ok(()),
    };
    if flags & (O_CREAT | O_TRUNC) != 0 {
        PENDING_OPENS.insert(&tid_key(), &flags, 0).map_err(|e| e as i64)?;
    }
    Ok(())
}

#[inline(always)]
fn file_open_exit(fd: i64) -> Result<(), i64> {
    let tid = tid_key();
    let Some(flags) = (unsafe { PENDING_OPENS.get(&tid) }).copied() else {
        return Ok(());
    };
    // Kept to be reported after the open is handled, which does not depend on it.
    let removed = PENDING_OPENS.remove(&tid).map_err(|e| e as i64);
    if fd < 0 {
        return removed;
    }
    // Another thread may have closed the descriptor already.
    let Some(file) = kernel::file_from_fd(fd)? else {
        return removed;
    };
    let fmode: u32 = read(file, offset!(file_mode))?;
    if fmode & FMODE_CREATED != 0 {
        on_created(kernel::file_dentry(file)?)?;
    } else if flags & O_TRUNC != 0 {
        on_file(FileOp::Write, file)?;
    }
    removed
}

/// Reads a user path into `name` and decides whether it lies in the watch set.
/// Returns (source, watched); fills `dir` for relative paths. A path that could not be read is an
/// error: the change it names cannot be checked.
#[inline(always)]
fn capture_path(
    dirfd: i64,
    upath: u64,
    name: &mut [u8; PATH_LEN],
    dir: &mut InodeKey,
    truncated: &mut bool,
) -> Result<(u32, bool), i64> {
    let key = PREFIX_SCRATCH.get_ptr_mut(0).ok_or(-1i64)?;
    let key = unsafe { &mut *key };
    let n = unsafe {
        generated::bpf_probe_read_user_str(key.data.bytes.as_mut_ptr().cast(), PATH_LEN as u32, upath as *const _)
    };
    if n < 0 {
        return Err(n);
    }
    if n <= 1 {
        // An empty path names nothing below dirfd (with AT_EMPTY_PATH the call acts on dirfd itself).
        name[0] = 0;
        return Ok((path_source::NONE, false));
    }
    *truncated = n >= PATH_LEN as i64;
    let copied = unsafe {
        generated::bpf_probe_read_kernel(name.as_mut_ptr().cast(), PATH_LEN as u32, key.data.bytes.as_ptr().cast())
    };
    if copied < 0 {
        return Err(copied);
    }
    if key.data.bytes[0] == b'/' {
        key.prefix_len = (PATH_LEN * 8) as u32;
        return Ok((path_source::ABSOLUTE, WATCHED_PREFIXES.get(&*key).is_some()));
    }
    let base = if dirfd as i32 as i64 == AT_FDCWD {
        kernel::cwd_dentry()?
    } else {
        match kernel::file_from_fd(dirfd as i32 as i64)? {
            Some(file) => kernel::file_dentry(file)?,
            // The call fails with EBADF: nothing changes.
            None => return Ok((path_source::RELATIVE, false)),
        }
    };
    *dir = kernel::inode_key(kernel::dentry_inode(base)?)?;
    Ok((path_source::RELATIVE, is_relevant_base(dir)))
}

/// Path-based changes: rename, unlink, mkdir, link, chmod, chown, utimes, truncate.
#[inline(always)]
fn file_path_enter(ctx: &Syscall) -> Result<(), i64> {
    const CWD: u64 = AT_FDCWD as u64;
    // (op, dirfd, path, second dirfd, second path); a zero second path means none.
    let (op, dirfd, path, dirfd2, path2) = match ctx.nr {
        nr::RENAME => (FileOp::Rename, CWD, ctx.arg(0)?, CWD, ctx.arg(1)?),
        nr::RENAMEAT | nr::RENAMEAT2 => (FileOp::Rename, ctx.arg(0)?, ctx.arg(1)?, ctx.arg(2)?, ctx.arg(3)?),
        nr::UNLINK | nr::RMDIR => (FileOp::Unlink, CWD, ctx.arg(0)?, 0, 0),
        nr::UNLINKAT => (FileOp::Unlink, ctx.arg(0)?, ctx.arg(1)?, 0, 0),
        nr::MKDIR | nr::MKNOD => (FileOp::Create, CWD, ctx.arg(0)?, 0, 0),
        nr::MKDIRAT | nr::MKNODAT => (FileOp::Create, ctx.arg(0)?, ctx.arg(1)?, 0, 0),
        nr::LINK | nr::SYMLINK => (FileOp::Create, CWD, ctx.arg(1)?, 0, 0),
        nr::LINKAT => (FileOp::Create, ctx.arg(2)?, ctx.arg(3)?, 0, 0),
        nr::SYMLINKAT => (FileOp::Create, ctx.arg(1)?, ctx.arg(2)?, 0, 0),
        nr::CHMOD | nr::CHOWN | nr::LCHOWN | nr::UTIME | nr::UTIMES => (FileOp::Attrib, CWD, ctx.arg(0)?, 0, 0),
        nr::FCHMODAT | nr::FCHMODAT2 | nr::FCHOWNAT | nr::FUTIMESAT | nr::UTIMENSAT => {
            let dirfd = ctx.arg(0)?;
            let path = ctx.arg(1)?;
            if path == 0 {
                // utimensat(fd, NULL, ...) changes the open file itself.
                return match kernel::file_from_fd(dirfd as i32 as i64)? {
                    Some(file) => on_file(FileOp::Attrib, file),
                    None => Ok(()),
                };
            }
            (FileOp::Attrib, dirfd, path, 0, 0)
        }
        nr::TRUNCATE => (FileOp::Write, CWD, ctx.arg(0)?, 0, 0),
        _ => return Ok(()),
    };
    let event = FILE_SCRATCH.get_ptr_mut(0).ok_or(-1i64)?;
    let event = unsafe { &mut *event };
    let mut dir = InodeKey::default();
    let mut cut = false;
    let (source, watched) = capture_path(dirfd as i64, path, &mut event.name, &mut dir, &mut cut)?;
    event.source = source;
    event.dir_dev = dir.dev;
    event.dir_ino = dir.ino;
    event.truncated = cut as u32;
    // Volatile so LLVM cannot fold the two map-lookup results into one pointer OR, which the
    // verifier rejects.
    let mut any_watched: u32 = 0;
    if watched {
        unsafe { core::ptr::write_volatile(&mut any_watched, 1) };
    }
    clear_new(event);
    // A rename whose destination could not be read is still reported when its source is watched;
    // the failure is returned once that is done.
    let mut second_path = Ok(());
    if path2 != 0 {
        let mut dir2 = InodeKey::default();
        let mut cut2 = false;
        match capture_path(dirfd2 as i64, path2, &mut event.new_name, &mut dir2, &mut cut2) {
            Ok((source2, watched2)) => {
                event.new_source = source2;
                event.new_dir_dev = dir2.dev;
                event.new_dir_ino = dir2.ino;
                event.truncated |= (cut2 as u32) << 1;
                if watched2 {
                    unsafe { core::ptr::write_volatile(&mut any_watched, 1) };
                }
            }
            Err(e) => second_path = Err(e),
        }
    }
    if unsafe { core::ptr::read_volatile(&any_watched) } == 0 {
        return second_path;
    }
    kernel::fill_header(&mut event.header, kind::FILE_CHANGE, core::mem::size_of::<FileEvent>());
    event.op = op as u32;
    event.dev = 0;
    event.ino = 0;
    event.mode = 0;
    PENDING_FILE_EVENTS.insert(&tid_key(), &*event, 0).map_err(|e| e as i64)?;
    second_path
}

/// Sends a parked path-based record once its syscall returned 0.
#[inline(always)]
fn file_path_exit(ret: i64) -> Result<(), i64> {
    let tid = tid_key();
    let Some(event) = PENDING_FILE_EVENTS.get_ptr(&tid) else {
        return Ok(());
    };
    if ret == 0 && FILE_EVENTS.output::<FileEvent>(unsafe { &*event }, crate::maps::file_wakeup()).is_err() {
        count_lost(Signal::File);
    }
    PENDING_FILE_EVENTS.remove(&tid).map_err(|e| e as i64)
}
