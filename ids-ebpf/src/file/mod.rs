//! File changes on watched paths only.
//!
//! Two hook families, chosen by the daemon at start:
//! - `tracepoint`: syscall tracepoints (any kernel with CONFIG_FTRACE_SYSCALLS). Descriptor-based
//!   calls resolve the descriptor to its inode and check it against `WATCHED_INODES`; path-based
//!   calls check absolute paths against `WATCHED_PREFIXES` and relative ones by their base
//!   directory, park the record in `PENDING_FILE_EVENTS` and send it only when the syscall returns 0;
//! - `lsm_fentry`: LSM `file_open`, `inode_*`, `mmap_file` and fentry `vfs_write`/`vfs_writev`, where
//!   those load: they see resolved dentries, so no path string is ever guessed.
//!
//! This module holds what both families share: the watch-set checks, building a record from a
//! dentry, and the handling of a newly created file.
//! An unwatched write costs a descriptor walk and one hash lookup, and never reaches the ring buffer.
mod lsm_fentry;
mod tracepoint;

use aya_ebpf::helpers::generated;
use ids_common::{
    FileEvent, FileOp, InodeKey, PATH_LEN, Signal, WATCHED_DIR, WATCHED_FILE, WATCHED_PARENT, kind, path_source,
};

use crate::{
    kernel::{self, Kptr},
    maps::{FILE_EVENTS, WATCHED_INODES, count_lost},
};

const FMODE_CREATED: u32 = 0x10_0000;
const PROT_WRITE: u64 = 0x2;
const MAP_TYPE: u64 = 0x0f;
const MAP_SHARED: u64 = 0x01;
const MAP_SHARED_VALIDATE: u64 = 0x03;

/// An mmap that lets the process change the file through memory.
#[inline(always)]
fn is_shared_writable(prot: u64, flags: u64) -> bool {
    let map_type = flags & MAP_TYPE;
    prot & PROT_WRITE != 0 && (map_type == MAP_SHARED || map_type == MAP_SHARED_VALIDATE)
}

/// A watched file or directory (not a mere ancestor of one).
#[inline(always)]
fn is_watched(key: &InodeKey) -> bool {
    matches!(unsafe { WATCHED_INODES.get(key) }, Some(&WATCHED_FILE) | Some(&WATCHED_DIR))
}

/// A watched directory: new names in it are reported.
#[inline(always)]
fn is_watched_dir(key: &InodeKey) -> bool {
    matches!(unsafe { WATCHED_INODES.get(key) }, Some(&WATCHED_DIR))
}

/// The directory above a watched path that does not exist yet: its new names are reported.
#[inline(always)]
fn is_awaited_parent(key: &InodeKey) -> bool {
    matches!(unsafe { WATCHED_INODES.get(key) }, Some(&WATCHED_PARENT))
}

/// Copies a kernel string into `dst`; returns whether it was cut.
#[inline(always)]
fn read_kernel_str(dst: &mut [u8; PATH_LEN], src: Kptr) -> bool {
    let n = unsafe { generated::bpf_probe_read_kernel_str(dst.as_mut_ptr().cast(), PATH_LEN as u32, src.cast()) };
    if n < 0 {
        dst[0] = 0;
    }
    n >= PATH_LEN as i64
}

/// Fills target, parent directory and last component from a dentry.
#[inline(always)]
fn describe_dentry(event: &mut FileEvent, dentry: Kptr) {
    event.source = path_source::DENTRY;
    event.dev = 0;
    event.ino = 0;
    event.mode = 0;
    if let Ok(inode) = kernel::dentry_inode(dentry) {
        if let Ok(key) = kernel::inode_key(inode) {
            event.dev = key.dev;
            event.ino = key.ino;
        }
        // Informative only: 0 when it cannot be read, as the record documents.
        event.mode = kernel::inode_mode(inode).unwrap_or(0);
    }
    event.dir_dev = 0;
    event.dir_ino = 0;
    if let Ok(parent) = kernel::dentry_parent(dentry)
        && let Ok(key) = kernel::dentry_inode(parent).and_then(kernel::inode_key)
    {
        event.dir_dev = key.dev;
        event.dir_ino = key.ino;
    }
    event.truncated = 0;
    match kernel::dentry_name(dentry) {
        Ok(name) => {
            if read_kernel_str(&mut event.name, name) {
                event.truncated |= 1;
            }
        }
        Err(_) => event.name[0] = 0,
    }
}

#[inline(always)]
fn clear_new(event: &mut FileEvent) {
    event.new_source = path_source::NONE;
    event.new_dir_dev = 0;
    event.new_dir_ino = 0;
    event.new_name[0] = 0;
}

/// Sends a record about `dentry` straight to the ring buffer.
#[inline(always)]
fn emit_dentry(op: FileOp, dentry: Kptr) {
    let Some(mut entry) = FILE_EVENTS.reserve::<FileEvent>(0) else {
        count_lost(Signal::File);
        return;
    };
    let event = unsafe { &mut *entry.as_mut_ptr() };
    kernel::fill_header(&mut event.header, kind::FILE_CHANGE, core::mem::size_of::<FileEvent>());
    event.op = op as u32;
    describe_dentry(event, dentry);
    clear_new(event);
    entry.submit(crate::maps::file_wakeup());
}

/// A change through an open file: reported only if its inode is watched.
#[inline(always)]
fn on_file(op: FileOp, file: Kptr) -> Result<(), i64> {
    let key = kernel::inode_key(kernel::file_inode(file)?)?;
    if !is_watched(&key) {
        return Ok(());
    }
    emit_dentry(op, kernel::file_dentry(file)?);
    Ok(())
}

/// A new file: reported if its directory is watched; its inode joins the watch set at once, so
/// the writes that follow are seen without waiting for the daemon.
///
/// The parent may itself be new (a `mkdir` the daemon has not added yet): the walk goes up a few
/// levels, and directories found below a watched one join the watch set too.
#[inline(always)]
fn on_created(dentry: Kptr) -> Result<(), i64> {
    let parent = kernel::dentry_parent(dentry)?;
    let dir = kernel::inode_key(kernel::dentry_inode(parent)?)?;
    let mut dir_added = Ok(());
    if !is_watched_dir(&dir) {
        if is_awaited_parent(&dir) {
            // Reported, nothing added: the daemon adds the awaited path itself.
            emit_dentry(FileOp::Create, dentry);
            return Ok(());
        }
        if !has_watched_ancestor(parent)? {
            return Ok(());
        }
        dir_added = add_to_watch_set(&dir, WATCHED_DIR);
    }
    let file_added =
        kernel::dentry_inode(dentry).and_then(kernel::inode_key).and_then(|key| add_to_watch_set(&key, WATCHED_FILE));
    // The creation is reported even when the watch set could not take the new inodes; the writes
    // that follow will be missed, which the error count makes visible.
    emit_dentry(FileOp::Create, dentry);
    dir_added.and(file_added)
}

/// Adds an inode to the watch set; fails when the map is full.
#[inline(always)]
fn add_to_watch_set(key: &InodeKey, value: u32) -> Result<(), i64> {
    WATCHED_INODES.insert(key, &value, 0).map_err(|e| e as i64)
}

/// Levels above a new file's directory searched for a watched directory.
const NEW_DIR_DEPTH: usize = 6;

#[inline(always)]
fn has_watched_ancestor(dir: Kptr) -> Result<bool, i64> {
    let mut current = dir;
    for _ in 0..NEW_DIR_DEPTH {
        let parent = kernel::dentry_parent(current)?;
        if parent == current {
            return Ok(false);
        }
        if is_watched_dir(&kernel::inode_key(kernel::dentry_inode(parent)?)?) {
            return Ok(true);
        }
        current = parent;
    }
    Ok(false)
}
