//! The LSM/fentry family, where those programs load: LSM `file_open`, `mmap_file`, `inode_*` and
//! fentry `vfs_write`/`vfs_writev`. The kernel hands them resolved files and dentries, so a change
//! is checked by inode and no path string is read.
use aya_ebpf::{
    EbpfContext as _,
    macros::{fentry, lsm},
    programs::{FEntryContext, LsmContext},
};
use ids_common::{FileEvent, FileOp, ProgramId, Signal, WATCHED_FILE, kind, path_source};

use super::{
    FMODE_CREATED, add_to_watch_set, describe_dentry, emit_dentry, is_awaited_parent, is_shared_writable, is_watched,
    is_watched_dir, on_created, on_file, read_kernel_str,
};
use crate::{
    kernel::{self, Kptr, offset, read},
    maps::{FILE_EVENTS, count_failure, count_lost},
};

const ATTR_MODE: u32 = 1 << 0;
const ATTR_UID: u32 = 1 << 1;
const ATTR_GID: u32 = 1 << 2;
const ATTR_SIZE: u32 = 1 << 3;
const ATTR_ATIME: u32 = 1 << 4;
const ATTR_MTIME: u32 = 1 << 5;

#[lsm(hook = "file_open")]
pub fn file_open_lsm(ctx: LsmContext) -> i32 {
    count_failure(ProgramId::FileOpenLsm, try_file_open_lsm(&ctx));
    0
}

#[inline(always)]
fn try_file_open_lsm(ctx: &LsmContext) -> Result<(), i64> {
    let file: Kptr = ctx.arg(0);
    let fmode: u32 = read(file, offset!(file_mode))?;
    // Truncation by O_TRUNC reaches `inode_setattr` with ATTR_SIZE; reporting it here would double it.
    if fmode & FMODE_CREATED == 0 {
        return Ok(());
    }
    on_created(kernel::file_dentry(file)?)
}

#[lsm(hook = "mmap_file")]
pub fn file_mmap_lsm(ctx: LsmContext) -> i32 {
    count_failure(ProgramId::FileMmapLsm, try_file_mmap_lsm(&ctx));
    0
}

#[inline(always)]
fn try_file_mmap_lsm(ctx: &LsmContext) -> Result<(), i64> {
    let file: Kptr = ctx.arg(0);
    let prot: u64 = ctx.arg(2);
    let flags: u64 = ctx.arg(3);
    // Anonymous mappings have no file.
    if file.is_null() || !is_shared_writable(prot, flags) {
        return Ok(());
    }
    on_file(FileOp::Write, file)
}

#[lsm(hook = "inode_setattr")]
pub fn file_setattr_lsm(ctx: LsmContext) -> i32 {
    count_failure(ProgramId::FileSetattrLsm, try_file_setattr_lsm(&ctx));
    0
}

#[inline(always)]
fn try_file_setattr_lsm(ctx: &LsmContext) -> Result<(), i64> {
    // The dentry moved from argument 0 to 1 when the hook gained an idmap argument.
    // The verifier only allows constant offsets into the context, so the arguments are copied
    // out with a probe read at the index BTF gave.
    let args = ctx.as_ptr() as Kptr;
    let index = offset!(setattr_dentry_arg) & 0x7;
    let dentry: Kptr = read::<u64>(args, index * 8)? as Kptr;
    let attr: Kptr = read::<u64>(args, (index + 1) * 8)? as Kptr;
    let valid: u32 = read(attr, offset!(iattr_valid))?;
    let op = if valid & ATTR_SIZE != 0 {
        FileOp::Write
    } else if valid & (ATTR_MODE | ATTR_UID | ATTR_GID | ATTR_ATIME | ATTR_MTIME) != 0 {
        FileOp::Attrib
    } else {
        return Ok(());
    };
    let key = kernel::inode_key(kernel::dentry_inode(dentry)?)?;
    if is_watched(&key) {
        emit_dentry(op, dentry);
    }
    Ok(())
}

// The hooks below only hand their arguments to a shared function, which is their `try_` step.

#[lsm(hook = "inode_unlink")]
pub fn file_unlink_lsm(ctx: LsmContext) -> i32 {
    count_failure(ProgramId::FileUnlinkLsm, on_dentry_removed(ctx.arg(1)));
    0
}

#[lsm(hook = "inode_rmdir")]
pub fn file_rmdir_lsm(ctx: LsmContext) -> i32 {
    count_failure(ProgramId::FileRmdirLsm, on_dentry_removed(ctx.arg(1)));
    0
}

#[inline(always)]
fn on_dentry_removed(dentry: Kptr) -> Result<(), i64> {
    let key = kernel::inode_key(kernel::dentry_inode(dentry)?)?;
    if is_watched(&key) {
        emit_dentry(FileOp::Unlink, dentry);
    }
    Ok(())
}

/// New names in a watched directory: `(dir inode, new dentry)` hooks.
#[inline(always)]
fn on_new_name(dir: Kptr, dentry: Kptr) -> Result<(), i64> {
    let key = kernel::inode_key(dir)?;
    if is_watched_dir(&key) || is_awaited_parent(&key) {
        emit_dentry(FileOp::Create, dentry);
    }
    Ok(())
}

#[lsm(hook = "inode_mkdir")]
pub fn file_mkdir_lsm(ctx: LsmContext) -> i32 {
    count_failure(ProgramId::FileMkdirLsm, on_new_name(ctx.arg(0), ctx.arg(1)));
    0
}

#[lsm(hook = "inode_mknod")]
pub fn file_mknod_lsm(ctx: LsmContext) -> i32 {
    count_failure(ProgramId::FileMknodLsm, on_new_name(ctx.arg(0), ctx.arg(1)));
    0
}

#[lsm(hook = "inode_symlink")]
pub fn file_symlink_lsm(ctx: LsmContext) -> i32 {
    count_failure(ProgramId::FileSymlinkLsm, on_new_name(ctx.arg(0), ctx.arg(1)));
    0
}

#[lsm(hook = "inode_link")]
pub fn file_link_lsm(ctx: LsmContext) -> i32 {
    count_failure(ProgramId::FileLinkLsm, on_new_name(ctx.arg(1), ctx.arg(2)));
    0
}

#[lsm(hook = "inode_rename")]
pub fn file_rename_lsm(ctx: LsmContext) -> i32 {
    count_failure(ProgramId::FileRenameLsm, try_file_rename_lsm(&ctx));
    0
}

#[inline(always)]
fn try_file_rename_lsm(ctx: &LsmContext) -> Result<(), i64> {
    let old_dentry: Kptr = ctx.arg(1);
    let new_dir: Kptr = ctx.arg(2);
    let new_dentry: Kptr = ctx.arg(3);
    let moved = kernel::inode_key(kernel::dentry_inode(old_dentry)?)?;
    // Without the destination directory's inode, the move is still reported if the file is watched;
    // the failed read is returned once that is done.
    let new_dir_key = kernel::inode_key(new_dir);
    let into_watched = matches!(&new_dir_key, Ok(key) if is_watched_dir(key));
    let into_awaited = matches!(&new_dir_key, Ok(key) if is_awaited_parent(key));
    let new_dir_read = new_dir_key.map(|_| ());
    if !is_watched(&moved) && !into_watched && !into_awaited {
        return new_dir_read;
    }
    let added = if into_watched { add_to_watch_set(&moved, WATCHED_FILE) } else { Ok(()) };
    let Some(mut entry) = FILE_EVENTS.reserve::<FileEvent>(0) else {
        count_lost(Signal::File);
        return new_dir_read.and(added);
    };
    let event = unsafe { &mut *entry.as_mut_ptr() };
    kernel::fill_header(&mut event.header, kind::FILE_CHANGE, core::mem::size_of::<FileEvent>());
    event.op = FileOp::Rename as u32;
    describe_dentry(event, old_dentry);
    event.new_source = path_source::DENTRY;
    let new_dir_key = new_dir_key.unwrap_or_default();
    event.new_dir_dev = new_dir_key.dev;
    event.new_dir_ino = new_dir_key.ino;
    match kernel::dentry_name(new_dentry) {
        Ok(name) => {
            if read_kernel_str(&mut event.new_name, name) {
                event.truncated |= 2;
            }
        }
        Err(_) => event.new_name[0] = 0,
    }
    entry.submit(crate::maps::file_wakeup());
    new_dir_read.and(added)
}

#[fentry(function = "vfs_write")]
pub fn file_vfs_write(ctx: FEntryContext) -> u32 {
    count_failure(ProgramId::FileVfsWrite, on_file(FileOp::Write, ctx.arg(0)));
    0
}

#[fentry(function = "vfs_writev")]
pub fn file_vfs_writev(ctx: FEntryContext) -> u32 {
    count_failure(ProgramId::FileVfsWritev, on_file(FileOp::Write, ctx.arg(0)));
    0
}
