//! The watch set: the configured files and trees, mirrored into the kernel's `WATCHED_INODES`
//! (every inode) and `WATCHED_PREFIXES` (absolute path prefixes), and an inode → path table of the
//! directories so that file records, which carry a parent directory and a name, become absolute paths.
//! SIGHUP changes it in place ([`WatchSet::update`]): roots added are walked in as at start, roots
//! removed leave both maps.
use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use aya::maps::{HashMap as BpfHashMap, LpmTrie, MapData, lpm_trie::Key};
use ids_common::{
    FileEvent, FileOp, InodeKey, PATH_LEN, PathPrefix, WATCHED_ANCESTOR, WATCHED_DIR, WATCHED_FILE, WATCHED_PARENT,
    path_source,
};
use tracing::{debug, warn};

use crate::event::{Clock, Detail, Event, with_header};
use crate::integrity::paths::{absent_root, normalize};
use crate::path_prefix::PathSet;

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("watch set needs more than max_watched_inodes = {max} inodes (at {path}); raise it in the config")]
    TooManyInodes { max: u32, path: PathBuf },
    #[error("watch path {path} is longer than {PATH_LEN} bytes")]
    PathTooLong { path: PathBuf },
    #[error("updating kernel map {map}: {source}")]
    Map { map: &'static str, source: aya::maps::MapError },
}

/// The kernel's dev_t encoding (major << 20 | minor) of a `st_dev`.
pub fn kernel_dev(st_dev: u64) -> u32 {
    (libc::major(st_dev) << 20) | libc::minor(st_dev)
}

/// `st_dev` as `stat(2)` reports it, from the kernel's encoding.
pub fn user_dev(kdev: u32) -> u64 {
    libc::makedev(kdev >> 20, kdev & 0xfffff)
}

fn key_of(meta: &std::fs::Metadata) -> InodeKey {
    InodeKey { dev: kernel_dev(meta.dev()), _pad: 0, ino: meta.ino() }
}

pub struct WatchSet {
    roots: PathSet,
    dirs: HashMap<InodeKey, PathBuf>,
    /// Inodes of watched files given by name in the config (they have no watched parent).
    root_files: HashMap<InodeKey, PathBuf>,
    inodes: BpfHashMap<MapData, InodeKey, u32>,
    /// Held for the programs' lifetime, and changed with the roots.
    prefixes: LpmTrie<MapData, PathPrefix, u32>,
    inode_count: usize,
    max_inodes: u32,
    unresolved: u64,
}

/// What [`WatchSet::update`] changed: roots added and removed.
#[derive(Debug, Default)]
pub struct WatchChange {
    pub added: Vec<PathBuf>,
    pub removed: Vec<PathBuf>,
}

/// What a path is to the watch set: inside a root, the directory above an absent root (new names
/// in it are reported), above a root, or nothing.
enum Role {
    Inside,
    Parent,
    Ancestor,
    Outside,
}

/// A configured path as the watch set holds it: canonical, and for one that does not exist yet
/// the nearest existing directory above it. `None`: skipped (logged).
fn resolve(path: &Path) -> Option<(PathBuf, Option<PathBuf>)> {
    match std::fs::canonicalize(path) {
        Ok(root) => Some((root, None)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && path.is_absolute() => {
            let Some((root, existing)) = absent_root(path) else {
                warn!(path = %path.display(), error = %e, "watch path skipped");
                return None;
            };
            debug!(path = %root.display(), parent = %existing.display(), "watching for an absent path");
            Some((root, Some(existing)))
        }
        Err(e) => {
            warn!(path = %path.display(), error = %e, "watch path skipped");
            None
        }
    }
}

impl WatchSet {
    /// Walks every configured path and fills both kernel maps. Missing paths are logged and skipped.
    pub fn new(
        paths: &[PathBuf],
        inodes: BpfHashMap<MapData, InodeKey, u32>,
        prefixes: LpmTrie<MapData, PathPrefix, u32>,
        max_inodes: u32,
    ) -> Result<Self, WatchError> {
        let mut set = Self {
            roots: PathSet::default(),
            dirs: HashMap::new(),
            root_files: HashMap::new(),
            inodes,
            prefixes,
            inode_count: 0,
            max_inodes,
            unresolved: 0,
        };
        set.add_roots(paths.iter().filter_map(|path| resolve(path)).collect())?;
        Ok(set)
    }

    /// Makes the watch set that of `paths` (SIGHUP): the roots added are walked into both maps
    /// as at start, then the roots removed leave them (their prefixes, and the inodes under them
    /// and above them that no remaining root needs). A root in both is left alone.
    pub fn update(&mut self, paths: &[PathBuf]) -> Result<WatchChange, WatchError> {
        let mut wanted: Vec<(PathBuf, Option<PathBuf>)> = Vec::new();
        for resolved in paths.iter().filter_map(|path| resolve(path)) {
            if !wanted.iter().any(|(root, _)| *root == resolved.0) {
                wanted.push(resolved);
            }
        }
        let removed: Vec<PathBuf> =
            self.roots.paths().iter().filter(|root| !wanted.iter().any(|(w, _)| w == *root)).cloned().collect();
        let added: Vec<(PathBuf, Option<PathBuf>)> =
            wanted.into_iter().filter(|(root, _)| !self.roots.has(root)).collect();
        let change = WatchChange { added: added.iter().map(|(root, _)| root.clone()).collect(), removed };
        self.recount();
        // Added first: an inode of both an added and a removed root stays in the map throughout.
        let outcome = self.add_roots(added).and_then(|()| {
            self.roots.retain(|root| !change.removed.contains(root));
            change.removed.iter().try_for_each(|root| self.remove_root(root))
        });
        self.recount();
        outcome.map(|()| change)
    }

    fn insert_prefixes(&mut self, root: &Path, is_dir: bool) -> Result<(), WatchError> {
        for prefix in prefixes_of(root, is_dir)? {
            let key = Key::new((prefix.1 * 8) as u32, prefix.0);
            self.prefixes.insert(&key, 1, 0).map_err(|source| WatchError::Map { map: "WATCHED_PREFIXES", source })?;
        }
        Ok(())
    }

    /// Adds resolved roots (not yet in the set) to both maps.
    fn add_roots(&mut self, resolved: Vec<(PathBuf, Option<PathBuf>)>) -> Result<(), WatchError> {
        // Absent roots and their nearest existing directory, which is watched for their creation.
        let mut absent = Vec::new();
        let mut added = Vec::new();
        for (root, existing) in resolved {
            if self.roots.has(&root) {
                continue;
            }
            if let Some(existing) = existing {
                // Both prefixes (it may come as a file or a directory); no inodes yet.
                self.insert_prefixes(&root, true)?;
                absent.push(existing);
                self.roots.push(root.clone());
                added.push(root);
                continue;
            }
            let is_dir = root.is_dir();
            self.insert_prefixes(&root, is_dir)?;
            if !is_dir && let Ok(meta) = std::fs::symlink_metadata(&root) {
                self.root_files.insert(key_of(&meta), root.clone());
            }
            self.add_tree(&root)?;
            self.roots.push(root.clone());
            added.push(root);
        }
        for root in &added {
            self.add_ancestors(root)?;
        }
        // New names in the directory above an absent root are reported (the daemon keeps those
        // inside a root), so that its creation, even through a relative path, adds it. A directory
        // watched already stays so.
        for existing in absent {
            if let Ok(meta) = std::fs::metadata(&existing) {
                let key = key_of(&meta);
                if !matches!(self.inodes.get(&key, 0), Ok(WATCHED_DIR | WATCHED_FILE)) {
                    self.insert_inode_as(key, WATCHED_PARENT, &existing)?;
                }
            }
        }
        Ok(())
    }

    /// What `path` is to the roots in the set.
    fn role(&self, path: &Path) -> Role {
        if self.is_inside(path) {
            return Role::Inside;
        }
        let waits_in = |root: &PathBuf| {
            std::fs::symlink_metadata(root).is_err() && absent_root(root).is_some_and(|(_, existing)| existing == path)
        };
        if self.roots.paths().iter().any(waits_in) {
            Role::Parent
        } else if self.roots.paths().iter().any(|root| root.starts_with(path)) {
            Role::Ancestor
        } else {
            Role::Outside
        }
    }

    /// Takes `root` (no longer in `roots`) out of both maps: its prefixes, and every inode under
    /// it or above it, as it is now or as the set knew it, that no remaining root needs; one
    /// still needed above a remaining root gets the value that root gives it.
    fn remove_root(&mut self, root: &Path) -> Result<(), WatchError> {
        for prefix in prefixes_of(root, true)? {
            // A file root has only the first of the two: the other is not found, which is fine.
            let _ = self.prefixes.remove(&Key::new((prefix.1 * 8) as u32, prefix.0));
        }
        self.root_files.retain(|_, path| path != root);
        // (inode, path, is a directory, has other links)
        let mut candidates: Vec<(InodeKey, PathBuf, bool, bool)> = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(path) = stack.pop() {
            let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
            if meta.is_dir()
                && let Ok(entries) = std::fs::read_dir(&path)
            {
                stack.extend(entries.flatten().map(|e| e.path()));
            }
            candidates.push((key_of(&meta), path, meta.is_dir(), !meta.is_dir() && meta.nlink() > 1));
        }
        for ancestor in root.ancestors().skip(1) {
            if let Ok(meta) = std::fs::symlink_metadata(ancestor) {
                candidates.push((key_of(&meta), ancestor.to_path_buf(), true, false));
            }
        }
        candidates.extend(
            self.dirs
                .iter()
                .filter(|(_, path)| path.starts_with(root) || root.starts_with(path))
                .map(|(key, path)| (*key, path.clone(), true, false)),
        );
        for (key, path, is_dir, linked) in candidates {
            let value = match self.role(&path) {
                Role::Inside => continue,
                Role::Parent => WATCHED_PARENT,
                Role::Ancestor => WATCHED_ANCESTOR,
                // A file with another name may be watched under that name.
                Role::Outside if linked => continue,
                Role::Outside => {
                    let _ = self.inodes.remove(&key);
                    self.dirs.remove(&key);
                    continue;
                }
            };
            if self.inodes.get(&key, 0).is_ok_and(|current| current != value) {
                self.inodes
                    .insert(key, value, 0)
                    .map_err(|source| WatchError::Map { map: "WATCHED_INODES", source })?;
            }
            if is_dir {
                self.dirs.insert(key, path);
            }
        }
        Ok(())
    }

    pub fn roots(&self) -> &[PathBuf] {
        self.roots.paths()
    }

    pub fn inode_count(&self) -> usize {
        self.inode_count
    }

    /// File records whose path could not be rebuilt.
    pub fn unresolved(&self) -> u64 {
        self.unresolved
    }

    /// Directories above each root, so relative paths used from them can be followed.
    fn add_ancestors(&mut self, root: &Path) -> Result<(), WatchError> {
        for ancestor in root.ancestors().skip(1) {
            let Ok(meta) = std::fs::symlink_metadata(ancestor) else { continue };
            let key = key_of(&meta);
            if self.dirs.contains_key(&key) {
                continue;
            }
            self.insert_inode_as(key, WATCHED_ANCESTOR, ancestor)?;
            self.dirs.insert(key, ancestor.to_path_buf());
        }
        Ok(())
    }

    fn insert_inode(&mut self, key: InodeKey, is_dir: bool, path: &Path) -> Result<(), WatchError> {
        self.insert_inode_as(key, if is_dir { WATCHED_DIR } else { WATCHED_FILE }, path)
    }

    fn insert_inode_as(&mut self, key: InodeKey, value: u32, path: &Path) -> Result<(), WatchError> {
        if self.inode_count >= self.max_inodes as usize {
            return Err(WatchError::TooManyInodes { max: self.max_inodes, path: path.into() });
        }
        self.inodes.insert(key, value, 0).map_err(|source| WatchError::Map { map: "WATCHED_INODES", source })?;
        self.inode_count += 1;
        Ok(())
    }

    /// Counts the inodes in the kernel's map (the programs add new files themselves, and an
    /// inode inserted twice is counted twice between updates).
    fn recount(&mut self) {
        self.inode_count = self.inodes.keys().filter(Result::is_ok).count();
    }

    /// Adds `root` and everything under it, without following symlinks.
    fn add_tree(&mut self, root: &Path) -> Result<(), WatchError> {
        let mut stack = vec![root.to_path_buf()];
        while let Some(path) = stack.pop() {
            let meta = match std::fs::symlink_metadata(&path) {
                Ok(meta) => meta,
                Err(e) => {
                    debug!(path = %path.display(), error = %e, "vanished while walking");
                    continue;
                }
            };
            let key = key_of(&meta);
            self.insert_inode(key, meta.is_dir(), &path)?;
            if meta.is_dir() {
                match std::fs::read_dir(&path) {
                    Ok(entries) => stack.extend(entries.flatten().map(|e| e.path())),
                    Err(e) => warn!(path = %path.display(), error = %e, "cannot list watched directory"),
                }
                self.dirs.insert(key, path);
            }
        }
        Ok(())
    }

    fn is_inside(&self, path: &Path) -> bool {
        self.roots.covers(path)
    }

    fn resolve_one(
        &self,
        source: u32,
        dir_dev: u32,
        dir_ino: u64,
        name: &[u8; PATH_LEN],
        target: InodeKey,
    ) -> Option<PathBuf> {
        // The name's bytes as the kernel gave them: a name that is not UTF-8 stays exact, so the
        // integrity worker rehashes the right file.
        let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
        let name = Path::new(std::ffi::OsStr::from_bytes(&name[..end]));
        let dir = InodeKey { dev: dir_dev, _pad: 0, ino: dir_ino };
        match source {
            path_source::ABSOLUTE => Some(normalize(name)),
            path_source::RELATIVE => self.dirs.get(&dir).map(|d| normalize(&d.join(name))),
            path_source::DENTRY => match self.dirs.get(&dir) {
                Some(d) => Some(d.join(name)),
                None => self.root_files.get(&target).cloned(),
            },
            _ => None,
        }
    }

    /// Turns a kernel record into an event, or `None` when it is outside the watch set (relative
    /// paths that climbed out) or its path cannot be rebuilt (counted in `unresolved`).
    pub fn event_of(&mut self, clock: &Clock, raw: &FileEvent) -> Option<Event> {
        let op = FileOp::from_u32(raw.op)?;
        let target = InodeKey { dev: raw.dev, _pad: 0, ino: raw.ino };
        let Some(path) = self.resolve_one(raw.source, raw.dir_dev, raw.dir_ino, &raw.name, target) else {
            self.unresolved += 1;
            return None;
        };
        let new_path = if op == FileOp::Rename {
            self.resolve_one(raw.new_source, raw.new_dir_dev, raw.new_dir_ino, &raw.new_name, InodeKey::default())
        } else {
            None
        };
        let inside = self.is_inside(&path) || new_path.as_deref().is_some_and(|p| self.is_inside(p));
        if !inside {
            return None;
        }
        let (mut dev, mut ino) = (raw.dev, raw.ino);
        if ino == 0 && op != FileOp::Unlink {
            // Path-based hooks do not see the inode; look at what the path names now.
            if let Ok(meta) = std::fs::symlink_metadata(new_path.as_ref().unwrap_or(&path)) {
                let key = key_of(&meta);
                (dev, ino) = (key.dev, key.ino);
            }
        }
        self.follow(op, &path, new_path.as_deref());
        let paths_escaped = crate::event::paths_escaped(&path, new_path.as_deref());
        let detail = Detail::File { op, path, new_path, paths_escaped, dev: user_dev(dev), ino };
        Some(with_header(clock, &raw.header, crate::event::EventKind::File, detail))
    }

    /// Keeps the maps in step with the tree: new and moved-in entries join, moved directories
    /// keep their inode but get their new path.
    fn follow(&mut self, op: FileOp, path: &Path, new_path: Option<&Path>) {
        let added = match op {
            FileOp::Create => Some(path),
            FileOp::Rename => new_path,
            _ => None,
        };
        if op == FileOp::Rename
            && let Some(new_path) = new_path
        {
            for dir in self.dirs.values_mut() {
                if let Ok(rest) = dir.strip_prefix(path) {
                    *dir = new_path.join(rest);
                }
            }
        }
        if let Some(added) = added {
            if !self.is_inside(added) {
                return;
            }
            let Ok(meta) = std::fs::symlink_metadata(added) else { return };
            let key = key_of(&meta);
            let known = self.dirs.contains_key(&key);
            if meta.is_dir() && !known {
                if let Err(e) = self.add_tree(added) {
                    warn!(path = %added.display(), error = %e, "new directory not fully watched");
                }
            } else if !meta.is_dir()
                && let Err(e) = self.insert_inode(key, false, added)
            {
                warn!(path = %added.display(), error = %e, "new file not watched");
            }
        }
    }
}

/// LPM prefixes (bytes, length) for a watched path: a directory matches itself and what is under it.
fn prefixes_of(root: &Path, is_dir: bool) -> Result<Vec<(PathPrefix, usize)>, WatchError> {
    let bytes = root.as_os_str().as_bytes();
    let mut variants: Vec<Vec<u8>> = vec![[bytes, b"\0"].concat()];
    if is_dir {
        variants.push(if bytes == b"/" { b"/".to_vec() } else { [bytes, b"/"].concat() });
    }
    variants
        .into_iter()
        .map(|v| {
            if v.len() > PATH_LEN {
                return Err(WatchError::PathTooLong { path: root.into() });
            }
            let mut prefix = PathPrefix { bytes: [0; PATH_LEN] };
            prefix.bytes[..v.len()].copy_from_slice(&v);
            Ok((prefix, v.len()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_root_resolves_its_existing_part() {
        let dir = tempfile::tempdir().unwrap();
        let real = std::fs::canonicalize(dir.path()).unwrap();
        std::os::unix::fs::symlink(&real, real.join("link")).unwrap();
        let (root, existing) = absent_root(&real.join("link/./later/x.conf")).unwrap();
        assert_eq!(root, real.join("later/x.conf"));
        assert_eq!(existing, real);
        assert!(absent_root(Path::new("/")).is_none());
    }

    #[test]
    fn normalize_removes_dots() {
        assert_eq!(normalize(Path::new("/tmp//w/./a/../b")), PathBuf::from("/tmp/w/b"));
        assert_eq!(normalize(Path::new("/../x")), PathBuf::from("/x"));
    }

    #[test]
    fn dev_encodings_round_trip() {
        let st_dev = libc::makedev(259, 3);
        assert_eq!(kernel_dev(st_dev), (259 << 20) | 3);
        assert_eq!(user_dev(kernel_dev(st_dev)), st_dev);
    }

    #[test]
    fn directory_prefixes_cover_itself_and_below() {
        let p = prefixes_of(Path::new("/tmp/w"), true).unwrap();
        assert_eq!(&p[0].0.bytes[..p[0].1], b"/tmp/w\0");
        assert_eq!(&p[1].0.bytes[..p[1].1], b"/tmp/w/");
        assert_eq!(prefixes_of(Path::new("/etc/passwd"), false).unwrap().len(), 1);
    }
}
