//! Reading kernel structures. The offsets come from the running kernel's BTF, set by the daemon
//! as the read-only global `KERNEL_OFFSETS` before load, so one object runs on many kernels.
use aya_ebpf::helpers::{
    bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid, bpf_probe_read_kernel, generated,
};
use ids_common::{EventHeader, InodeKey, KernelOffsets, LoginIds, NO_LOGIN};

#[unsafe(no_mangle)]
pub static KERNEL_OFFSETS: KernelOffsets = KernelOffsets {
    task_real_parent: 0,
    task_tgid: 0,
    task_files: 0,
    task_fs: 0,
    task_mm: 0,
    files_fdt: 0,
    fdt_fd: 0,
    fdt_max_fds: 0,
    fs_pwd_dentry: 0,
    file_dentry: 0,
    file_inode: 0,
    file_mode: 0,
    file_flags: 0,
    file_private_data: 0,
    dentry_parent: 0,
    dentry_inode: 0,
    dentry_name: 0,
    dentry_sb: 0,
    inode_ino: 0,
    inode_mode: 0,
    inode_sb: 0,
    sb_dev: 0,
    mm_arg_start: 0,
    mm_arg_end: 0,
    socket_type: 0,
    iattr_valid: 0,
    setattr_dentry_arg: 0,
    binprm_filename: 0,
    binprm_p: 0,
    binprm_argc: 0,
    task_pid: 0,
    task_loginuid: 0,
    task_sessionid: 0,
};

/// Reads one offset; volatile so the compiler does not fold the zero it was declared with.
macro_rules! offset {
    ($field:ident) => {
        unsafe { core::ptr::read_volatile(&$crate::kernel::KERNEL_OFFSETS.$field) as usize }
    };
}
pub(crate) use offset;

pub type Kptr = *const u8;

#[inline(always)]
pub fn read<T>(base: Kptr, off: usize) -> Result<T, i64> {
    unsafe { bpf_probe_read_kernel(base.wrapping_add(off) as *const T) }.map_err(|e| e as i64)
}

#[inline(always)]
pub fn read_ptr(base: Kptr, off: usize) -> Result<Kptr, i64> {
    let p: u64 = read(base, off)?;
    if p == 0 { Err(-1) } else { Ok(p as Kptr) }
}

#[inline(always)]
pub fn current_task() -> Kptr {
    unsafe { generated::bpf_get_current_task() as Kptr }
}

/// tgid of the current task's parent (0 if it cannot be read).
#[inline(always)]
pub fn current_ppid() -> u32 {
    let task = current_task();
    match read_ptr(task, offset!(task_real_parent)) {
        Ok(parent) => read::<u32>(parent, offset!(task_tgid)).unwrap_or(0),
        Err(_) => 0,
    }
}

/// The `struct file` behind descriptor `fd` of the current process; `None` when `fd` is not an
/// open descriptor: the syscall fails with EBADF, which is the caller's mistake, not a read that failed.
#[inline(always)]
pub fn file_from_fd(fd: i64) -> Result<Option<Kptr>, i64> {
    if fd < 0 {
        return Ok(None);
    }
    let files = read_ptr(current_task(), offset!(task_files))?;
    let fdt = read_ptr(files, offset!(files_fdt))?;
    let max: u32 = read(fdt, offset!(fdt_max_fds))?;
    if fd as u64 >= max as u64 {
        return Ok(None);
    }
    let fd_array = read_ptr(fdt, offset!(fdt_fd))?;
    let file: u64 = read(fd_array, (fd as usize) * 8)?;
    Ok(if file == 0 { None } else { Some(file as Kptr) })
}

#[inline(always)]
pub fn file_dentry(file: Kptr) -> Result<Kptr, i64> {
    read_ptr(file, offset!(file_dentry))
}

#[inline(always)]
pub fn file_inode(file: Kptr) -> Result<Kptr, i64> {
    read_ptr(file, offset!(file_inode))
}

#[inline(always)]
pub fn dentry_inode(dentry: Kptr) -> Result<Kptr, i64> {
    read_ptr(dentry, offset!(dentry_inode))
}

#[inline(always)]
pub fn dentry_parent(dentry: Kptr) -> Result<Kptr, i64> {
    read_ptr(dentry, offset!(dentry_parent))
}

#[inline(always)]
pub fn dentry_name(dentry: Kptr) -> Result<Kptr, i64> {
    read_ptr(dentry, offset!(dentry_name))
}

/// (dev, ino) of an inode, dev in the kernel's encoding.
#[inline(always)]
pub fn inode_key(inode: Kptr) -> Result<InodeKey, i64> {
    let ino: u64 = read(inode, offset!(inode_ino))?;
    let sb = read_ptr(inode, offset!(inode_sb))?;
    let dev: u32 = read(sb, offset!(sb_dev))?;
    Ok(InodeKey { dev, _pad: 0, ino })
}

#[inline(always)]
pub fn inode_mode(inode: Kptr) -> Result<u32, i64> {
    read::<u16>(inode, offset!(inode_mode)).map(u32::from)
}

/// The current working directory's dentry.
#[inline(always)]
pub fn cwd_dentry() -> Result<Kptr, i64> {
    let fs = read_ptr(current_task(), offset!(task_fs))?;
    read_ptr(fs, offset!(fs_pwd_dentry))
}

/// Fills the common header for the current task.
#[inline(always)]
pub fn fill_header(header: &mut EventHeader, kind: u32, size: usize) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    header.kind = kind;
    header.size = size as u32;
    header.time_ns = unsafe { generated::bpf_ktime_get_boot_ns() };
    header.pid = (pid_tgid >> 32) as u32;
    header.tid = pid_tgid as u32;
    header.ppid = current_ppid();
    header.uid = uid_gid as u32;
    header.gid = (uid_gid >> 32) as u32;
    header._pad = 0;
    header.comm = bpf_get_current_comm().unwrap_or([0; 16]);
}

/// The login uid, session and cgroup of `task` (the current task's cgroup: the helper reads only
/// that one, and every caller passes the current task). A login field that cannot be read is
/// `NO_LOGIN`: the record is worth more than the field.
#[inline(always)]
pub fn current_login(task: Kptr) -> LoginIds {
    let loginuid = offset!(task_loginuid);
    let (auid, sessionid) = if loginuid == 0 {
        (NO_LOGIN, NO_LOGIN)
    } else {
        (
            read::<u32>(task, loginuid).unwrap_or(NO_LOGIN),
            read::<u32>(task, offset!(task_sessionid)).unwrap_or(NO_LOGIN),
        )
    };
    LoginIds { auid, sessionid, cgroup_id: unsafe { generated::bpf_get_current_cgroup_id() } }
}
