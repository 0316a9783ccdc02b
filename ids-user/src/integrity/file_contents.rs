//! `file_contents`: SHA-256 of the contents of the regular files under `paths`
//! (see [`super::paths`] for globs, directories and `recursive`). Item id `file:<path>`
//! (`file%:` and percent-encoding for a name that is not UTF-8: see *Paths in ids* in
//! [`super`]), detail `{"size": bytes}`, contents streamed in 64 KiB blocks, several files per core at once
//! (see [`hash_files`]).
//!
//! A path named in the configuration (exactly or by a glob) is followed if it is a symbolic link
//! (`/etc/resolv.conf` hashes what it points at; a loop is an error item `symbolic link loop:
//! ...`); entries found by walking a directory are hashed only if they are regular files
//! themselves (links and directories are left to `file_metadata`). A FIFO, socket or device,
//! named or found, is never opened: its item has detail `{"type": "fifo"}` (`socket`, `char`,
//! `block`) and the digest of that detail. A file that cannot be opened or read is an error item
//! (`vanished during the scan: ...` when it was deleted after it was listed).
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use rayon::prelude::*;
use serde::Serialize;

use super::file_metadata::type_name;
use super::paths::{self, FoundPath};
use super::sha_lanes;
use super::{Collector, CollectorError, Digest, Item, KindSpec, io_error_text, path_id};
use crate::integrity::config::CollectorConfig;

pub const SPEC: KindSpec = KindSpec { kind: "file_contents", settings: &["paths", "recursive"], construct };

fn construct(config: &CollectorConfig) -> Result<Box<dyn Collector>, CollectorError> {
    Ok(Box::new(FileContents::new(config)?))
}

#[derive(Debug, Clone)]
pub struct FileContents {
    name: String,
    patterns: Vec<String>,
    recursive: bool,
}

#[derive(Debug, Serialize)]
struct ContentsDetail {
    size: u64,
}

/// The detail of a FIFO, socket or device: what it is, never its contents.
#[derive(Debug, Serialize)]
struct SpecialDetail {
    #[serde(rename = "type")]
    file_type: &'static str,
}

impl FileContents {
    pub fn new(config: &CollectorConfig) -> Result<Self, CollectorError> {
        check_patterns(&config.name, &config.paths)?;
        Ok(Self { name: config.name.clone(), patterns: config.paths.clone(), recursive: config.recursive })
    }
}

/// Refuses a bad glob when the collector is built, naming it.
pub(super) fn check_patterns(collector: &str, patterns: &[String]) -> Result<(), CollectorError> {
    for pattern in patterns {
        paths::check_pattern(pattern).map_err(|e| CollectorError::Setting {
            collector: collector.to_string(),
            key: "paths",
            message: e.to_string(),
        })?;
    }
    Ok(())
}

/// Expands the patterns (all of them, or only at `scope.0` and, when `scope.1`, below it: see
/// [`paths::expand_at`]).
pub(super) fn expand_patterns(
    collector: &str,
    patterns: &[String],
    recursive: bool,
    scope: Option<(&Path, bool)>,
) -> Result<paths::Expanded, CollectorError> {
    let expanded = match scope {
        None => paths::expand(patterns, recursive),
        Some((target, deep)) => paths::expand_at(patterns, recursive, target, deep),
    };
    expanded.map_err(|e| CollectorError::Setting {
        collector: collector.to_string(),
        key: "paths",
        message: e.to_string(),
    })
}

/// The paths that could not be examined, as error items with ids [`path_id`]`(kind, path)`.
pub(super) fn unreadable_items(expanded: &paths::Expanded, kind: &str) -> Vec<Item> {
    expanded
        .unreadable
        .iter()
        .map(|unreadable| Item::error(path_id(kind, &unreadable.path), &unreadable.error))
        .collect()
}

impl Collector for FileContents {
    fn name(&self) -> &str {
        &self.name
    }

    fn collect(&self) -> Result<Vec<Item>, CollectorError> {
        self.collect_scoped(None)
    }

    fn paths(&self) -> &[String] {
        &self.patterns
    }

    fn collect_at(&self, target: &Path, deep: bool) -> Option<Result<Vec<Item>, CollectorError>> {
        Some(self.collect_scoped(Some((target, deep))))
    }

    fn walk_recursive(&self) -> Option<bool> {
        Some(self.recursive)
    }

    fn collect_expanded(&self, expanded: &paths::Expanded) -> Result<Vec<Item>, CollectorError> {
        Ok(items_of(expanded))
    }
}

impl FileContents {
    fn collect_scoped(&self, scope: Option<(&Path, bool)>) -> Result<Vec<Item>, CollectorError> {
        Ok(items_of(&expand_patterns(&self.name, &self.patterns, self.recursive, scope)?))
    }
}

/// The items of an expansion: one per regular file or special file, one per error.
fn items_of(expanded: &paths::Expanded) -> Vec<Item> {
    let mut items = unreadable_items(expanded, "file");
    let mut jobs = Vec::new();
    let mut job_ids = Vec::new();
    for found in &expanded.found {
        match plan(found) {
            Plan::Skip => {}
            Plan::Done(item) => items.push(item),
            Plan::Hash { id, no_follow } => {
                jobs.push(Job { path: &found.path, no_follow });
                job_ids.push(id);
            }
        }
    }
    for (id, result) in job_ids.into_iter().zip(hash_files(&jobs)) {
        items.push(match result {
            Ok((digest, size)) => Item::new(id, digest, ContentsDetail { size }),
            Err(e) => Item::error(id, io_error_text(&e, true)),
        });
    }
    items
}

/// What to do with a path found by the expansion.
enum Plan {
    /// A directory or a link found in a walk: nothing (they are `file_metadata`'s).
    Skip,
    /// An item known without reading anything: a FIFO, socket or device, or an error.
    Done(Item),
    /// A regular file to hash.
    Hash { id: String, no_follow: bool },
}

fn plan(found: &FoundPath) -> Plan {
    let id = path_id("file", &found.path);
    let file_type = if found.named {
        // Follow a named link (stat, which opens nothing).
        match std::fs::metadata(&found.path) {
            Ok(metadata) => metadata.file_type(),
            // A dangling link was never there to vanish; anything else was there at the lstat.
            Err(e) => {
                return Plan::Done(Item::error(id, io_error_text(&e, !found.file_type.is_symlink())));
            }
        }
    } else {
        found.file_type
    };
    if file_type.is_dir() || file_type.is_symlink() {
        return Plan::Skip;
    }
    if !file_type.is_file() {
        // FIFO, socket, device: opening one may block or have side effects; say what it is.
        return Plan::Done(Item::of_detail(id, SpecialDetail { file_type: type_name(file_type) }));
    }
    Plan::Hash { id, no_follow: !found.named }
}

/// A regular file to hash; `no_follow` refuses a symbolic link swapped in since the walk.
#[derive(Debug, Clone, Copy)]
pub struct Job<'a> {
    pub path: &'a Path,
    pub no_follow: bool,
}

/// SHA-256 and length of the contents of every job, in the order of `jobs`.
///
/// One worker per thread of the rayon pool takes the next job from a shared counter, so that a
/// 100 MB binary next to thousands of small files keeps every core busy to the end. Each worker
/// hashes up to [`sha_lanes::MAX_LANES`] files at once, one per lane, their SHA-256 rounds
/// interleaved on one core (see [`sha_lanes`]); a lane that finishes its file opens the next job.
pub fn hash_files(jobs: &[Job<'_>]) -> Vec<std::io::Result<(Digest, u64)>> {
    let next = AtomicUsize::new(0);
    let lanes = if sha_lanes::interleaves() { sha_lanes::MAX_LANES } else { 1 };
    let workers = rayon::current_num_threads().min(jobs.len()).max(1);
    let done: Vec<Vec<Hashed>> =
        (0..workers).into_par_iter().with_max_len(1).map(|_| hash_worker(jobs, &next, lanes)).collect();
    let mut results: Vec<Option<std::io::Result<(Digest, u64)>>> = jobs.iter().map(|_| None).collect();
    for (job, result) in done.into_iter().flatten() {
        results[job] = Some(result);
    }
    results
        .into_iter()
        .map(|result| result.unwrap_or_else(|| Err(std::io::Error::other("not hashed (internal error)"))))
        .collect()
}

/// SHA-256 and length of one file's contents (see [`hash_files`]).
#[cfg(test)]
pub fn hash_file(path: &Path, no_follow: bool) -> std::io::Result<(Digest, u64)> {
    hash_files(&[Job { path, no_follow }]).pop().expect("one result per job")
}

/// The result of one job: its index in the jobs, its digest and length or why not.
type Hashed = (usize, std::io::Result<(Digest, u64)>);

/// Bytes buffered per lane: the lanes' buffers together stay in the L2 cache between the copy
/// out of the page cache and the hash.
const LANE_BUFFER: usize = 64 * 1024;

/// A lane of a worker: its buffer, reused for every file, and the file it is hashing.
struct Lane {
    buffer: Box<[u8]>,
    file: Option<LaneFile>,
}

struct LaneFile {
    job: usize,
    file: std::fs::File,
    state: sha_lanes::State,
    /// Bytes read so far.
    total: u64,
    /// Bytes read but not compressed yet: `buffer[start..end]`.
    start: usize,
    end: usize,
    eof: bool,
}

fn hash_worker(jobs: &[Job<'_>], next: &AtomicUsize, lanes: usize) -> Vec<Hashed> {
    let mut results = Vec::new();
    let mut lanes: Vec<Lane> =
        (0..lanes).map(|_| Lane { buffer: vec![0u8; LANE_BUFFER].into_boxed_slice(), file: None }).collect();
    let mut drained = false;
    loop {
        // Every lane gets at least one whole block to compress, or is idle with no job left.
        for lane in &mut lanes {
            fill(lane, jobs, next, &mut drained, &mut results);
        }
        let mut states = Vec::with_capacity(lanes.len());
        let mut blocks = Vec::with_capacity(lanes.len());
        for Lane { buffer, file } in &mut lanes {
            if let Some(file) = file {
                states.push(&mut file.state);
                blocks.push(sha_lanes::as_blocks(&buffer[file.start..file.end]));
            }
        }
        let Some(run) = blocks.iter().map(|blocks| blocks.len()).min() else {
            return results;
        };
        let blocks: Vec<&[[u8; 64]]> = blocks.into_iter().map(|blocks| &blocks[..run]).collect();
        sha_lanes::compress(&mut states, &blocks);
        for file in lanes.iter_mut().filter_map(|lane| lane.file.as_mut()) {
            file.start += run * 64;
        }
    }
}

/// Reads into `lane` until it holds a whole block, finishing files (and opening the next job)
/// on the way; leaves it idle once no job is left.
fn fill(lane: &mut Lane, jobs: &[Job<'_>], next: &AtomicUsize, drained: &mut bool, results: &mut Vec<Hashed>) {
    loop {
        let Some(file) = lane.file.as_mut() else {
            if *drained {
                return;
            }
            let job = next.fetch_add(1, Ordering::Relaxed);
            let Some(&Job { path, no_follow }) = jobs.get(job) else {
                *drained = true;
                return;
            };
            match open_regular(path, no_follow) {
                Ok(file) => {
                    lane.file =
                        Some(LaneFile { job, file, state: sha_lanes::INITIAL, total: 0, start: 0, end: 0, eof: false })
                }
                Err(e) => results.push((job, Err(e))),
            }
            continue;
        };
        if file.end - file.start >= 64 {
            return;
        }
        if !file.eof {
            lane.buffer.copy_within(file.start..file.end, 0);
            file.end -= file.start;
            file.start = 0;
            match read_some(&mut file.file, &mut lane.buffer[file.end..]) {
                Ok(0) => file.eof = true,
                Ok(read) => {
                    file.end += read;
                    file.total += read as u64;
                }
                Err(e) => {
                    results.push((file.job, Err(e)));
                    lane.file = None;
                }
            }
            continue;
        }
        let (last, count) = sha_lanes::final_blocks(&lane.buffer[file.start..file.end], file.total);
        sha_lanes::compress(&mut [&mut file.state], &[&last[..count]]);
        crate::integrity::progress::add_file(file.total);
        results.push((file.job, Ok((sha_lanes::digest(&file.state), file.total))));
        lane.file = None;
    }
}

/// Opens a file to hash. `O_NONBLOCK` keeps a FIFO swapped in after the type check from blocking
/// the scan, and the type is checked again on the open descriptor: nothing but a regular file is
/// read.
fn open_regular(path: &Path, no_follow: bool) -> std::io::Result<std::fs::File> {
    let mut flags = libc::O_NONBLOCK | libc::O_CLOEXEC;
    if no_follow {
        flags |= libc::O_NOFOLLOW;
    }
    let file = std::fs::OpenOptions::new().read(true).custom_flags(flags).open(path)?;
    let file_type = file.metadata()?.file_type();
    if !file_type.is_file() {
        return Err(std::io::Error::other(format!("not a regular file (now a {})", type_name(file_type))));
    }
    Ok(file)
}

fn read_some(file: &mut std::fs::File, into: &mut [u8]) -> std::io::Result<usize> {
    loop {
        match file.read(into) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::integrity::test_support::{config, ids};
    use crate::integrity::{aggregate_digest, sha256};

    fn collector(paths: Vec<String>, recursive: bool) -> FileContents {
        FileContents::new(&CollectorConfig { paths, recursive, ..config("file_contents") }).unwrap()
    }

    #[test]
    fn hashes_contents_of_files_and_trees() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().display().to_string();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("a"), "alpha").unwrap();
        std::fs::write(dir.path().join("sub/b"), "beta").unwrap();
        std::os::unix::fs::symlink("a", dir.path().join("link")).unwrap();

        let items = collector(vec![root.clone()], true).collect().unwrap();
        // The link found in the walk is not followed; directories have no contents.
        assert_eq!(ids(&items), [format!("file:{root}/a"), format!("file:{root}/sub/b")]);
        let a = items.iter().find(|item| item.id.ends_with("/a")).unwrap();
        assert_eq!(a.digest, sha256(b"alpha"));
        assert_eq!(a.detail["size"], 5);

        let flat = collector(vec![root.clone()], false).collect().unwrap();
        assert_eq!(ids(&flat), [format!("file:{root}/a")]);

        // A named link is followed.
        let named = collector(vec![format!("{root}/link")], false).collect().unwrap();
        assert_eq!(named[0].digest, sha256(b"alpha"));
    }

    #[test]
    fn one_byte_change_and_rename_change_the_aggregate() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().display().to_string();
        std::fs::write(dir.path().join("f"), "hello").unwrap();
        let scan = || aggregate_digest("h", &collector(vec![root.clone()], true).collect().unwrap());
        let before = scan();
        assert_eq!(before, scan());
        std::fs::write(dir.path().join("f"), "hellp").unwrap();
        let changed = scan();
        assert_ne!(before, changed);
        std::fs::rename(dir.path().join("f"), dir.path().join("g")).unwrap();
        assert_ne!(changed, scan());
    }

    #[test]
    fn missing_path_is_an_error_item_and_bad_glob_an_error() {
        let items = collector(vec!["/nonexistent/ids-test".into()], false).collect().unwrap();
        assert_eq!(items[0].id, "file:/nonexistent/ids-test");
        assert!(items[0].error_text().unwrap().contains("No such file"), "{items:?}");

        let err = FileContents::new(&CollectorConfig { paths: vec!["/etc/[".into()], ..config("file_contents") })
            .unwrap_err()
            .to_string();
        assert!(err.contains("paths") && err.contains("/etc/["), "{err}");
    }

    /// Runs `f` on another thread and fails if it takes longer than `seconds` (a hang).
    pub(crate) fn within<T: Send + 'static>(seconds: u64, f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx.recv_timeout(std::time::Duration::from_secs(seconds))
            .unwrap_or_else(|e| panic!("no result within {seconds} s (hang or panic): {e}"))
    }

    fn item<'a>(items: &'a [Item], id: &str) -> &'a Item {
        items.iter().find(|item| item.id == id).unwrap_or_else(|| panic!("no item {id} in {items:#?}"))
    }

    fn mknod(path: &Path, mode: libc::mode_t, dev: libc::dev_t) {
        use std::os::unix::ffi::OsStrExt as _;
        let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: a NUL-terminated path.
        let status = unsafe { libc::mknod(c.as_ptr(), mode, dev) };
        assert_eq!(status, 0, "mknod {}: {}", path.display(), std::io::Error::last_os_error());
    }

    /// FIFOs, sockets and devices are items saying what they are, found in a walk or named
    /// (through a link), and are never opened: a FIFO with no writer would block a reader.
    #[test]
    fn fifos_sockets_and_devices_are_typed_items_and_never_block() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().display().to_string();
        mknod(&dir.path().join("fifo"), libc::S_IFIFO | 0o644, 0);
        mknod(&dir.path().join("null"), libc::S_IFCHR | 0o666, libc::makedev(1, 3));
        mknod(&dir.path().join("loop"), libc::S_IFBLK | 0o600, libc::makedev(7, 200));
        let _socket = std::os::unix::net::UnixListener::bind(dir.path().join("sock")).unwrap();
        std::os::unix::fs::symlink("/dev/null", dir.path().join("devnull")).unwrap();
        std::fs::write(dir.path().join("plain"), "x").unwrap();

        let paths = vec![root.clone(), format!("{root}/devnull"), format!("{root}/fifo")];
        let items = within(30, move || collector(paths, true).collect().unwrap());
        assert_eq!(item(&items, &format!("file:{root}/fifo")).detail, serde_json::json!({"type": "fifo"}));
        assert_eq!(item(&items, &format!("file:{root}/sock")).detail, serde_json::json!({"type": "socket"}));
        assert_eq!(item(&items, &format!("file:{root}/null")).detail, serde_json::json!({"type": "char"}));
        assert_eq!(item(&items, &format!("file:{root}/loop")).detail, serde_json::json!({"type": "block"}));
        // The named link to /dev/null is followed to the device, which is not opened.
        assert_eq!(item(&items, &format!("file:{root}/devnull")).detail, serde_json::json!({"type": "char"}));
        assert_eq!(item(&items, &format!("file:{root}/plain")).digest, sha256(b"x"));
        assert!(items.iter().all(|item| item.error_text().is_none()), "{items:#?}");
        let fifo = item(&items, &format!("file:{root}/fifo"));
        assert_eq!(fifo.digest, sha256(br#"{"type":"fifo"}"#));

        // hash_file itself refuses what is not a regular file without blocking.
        let fifo = dir.path().join("fifo");
        let err = within(10, move || hash_file(&fifo, true).unwrap_err().to_string());
        assert!(err.contains("not a regular file (now a fifo)"), "{err}");
    }

    /// Root reads a mode-000 file (CAP_DAC_OVERRIDE), so an unreadable file for root is one
    /// whose read fails: /proc/self/mem at offset 0 (unmapped) fails with EIO. As another user,
    /// a mode-000 file fails with EACCES (the end-to-end test `integrity_bad_input` runs
    /// `ids hash` as nobody for that).
    #[test]
    fn unreadable_file_is_an_error_item() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().display().to_string();
        std::os::unix::fs::symlink("/proc/self/mem", dir.path().join("mem")).unwrap();
        let locked = dir.path().join("locked");
        std::fs::write(&locked, "secret").unwrap();
        std::fs::set_permissions(&locked, std::os::unix::fs::PermissionsExt::from_mode(0o000)).unwrap();

        let items = collector(vec!["/proc/self/mem".into(), format!("{root}/mem"), format!("{root}/locked")], false)
            .collect()
            .unwrap();
        for id in ["file:/proc/self/mem".to_string(), format!("file:{root}/mem")] {
            let error = item(&items, &id).error_text().unwrap_or_else(|| panic!("{id} read: {items:#?}"));
            assert!(error.contains("Input/output error"), "{id}: {error}");
        }
        let locked = item(&items, &format!("file:{root}/locked"));
        if unsafe { libc::geteuid() } == 0 {
            assert_eq!(locked.digest, sha256(b"secret"), "root reads mode 000");
        } else {
            assert!(locked.error_text().unwrap().contains("Permission denied"), "{locked:?}");
        }
    }

    /// The item of one found path, as a scan makes it.
    fn hash_found(found: &FoundPath) -> Option<Item> {
        match plan(found) {
            Plan::Skip => None,
            Plan::Done(item) => Some(item),
            Plan::Hash { id, no_follow } => Some(match hash_file(&found.path, no_follow) {
                Ok((digest, size)) => Item::new(id, digest, ContentsDetail { size }),
                Err(e) => Item::error(id, io_error_text(&e, true)),
            }),
        }
    }

    /// A file deleted between the listing and the hashing is an error item saying so (the
    /// listing is `paths::expand`, the hashing `hash_found`: the test deletes in between).
    #[test]
    fn file_vanishing_between_listing_and_hashing_is_an_error_item() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().display().to_string();
        for name in ["walked", "named"] {
            std::fs::write(dir.path().join(name), name).unwrap();
        }
        let expanded = paths::expand(&[root.clone(), format!("{root}/named")], false).unwrap();
        assert_eq!(expanded.found.len(), 3);
        for name in ["walked", "named"] {
            std::fs::remove_file(dir.path().join(name)).unwrap();
        }
        for found in &expanded.found[1..] {
            let item = hash_found(found).unwrap();
            let error = item.error_text().unwrap_or_else(|| panic!("{item:?}"));
            assert!(error.starts_with("vanished during the scan: No such file"), "{error}");
            let meta = crate::integrity::file_metadata::tests::metadata_item_of(&found.path);
            assert!(meta.error_text().unwrap().starts_with("vanished during the scan"), "{meta:?}");
        }
    }

    /// Files created and deleted while whole scans run (bounded in time): every scan ends,
    /// every item is a hash or an error item, ids stay unique.
    #[test]
    fn scans_racing_with_creation_and_deletion_end_and_stay_consistent() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let churn = {
            let (root, stop) = (root.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut serial = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let path = root.join(format!("f{}", serial % 50));
                    if serial.is_multiple_of(3) {
                        let _ = std::fs::remove_file(&path);
                    } else {
                        let _ = std::fs::write(&path, serial.to_le_bytes().repeat(1000));
                    }
                    serial += 1;
                }
            })
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        let pattern = vec![root.display().to_string()];
        let mut scans = 0;
        while std::time::Instant::now() < deadline {
            let pattern = pattern.clone();
            let items = within(30, move || collector(pattern, true).collect().unwrap());
            let ids = ids(&items);
            let unique: std::collections::BTreeSet<&&str> = ids.iter().collect();
            assert_eq!(unique.len(), ids.len(), "{ids:?}");
            for item in &items {
                match item.error_text() {
                    Some(error) => assert!(error.contains("vanished during the scan"), "{item:?}"),
                    None => assert!(item.detail["size"].is_u64(), "{item:?}"),
                }
            }
            scans += 1;
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        churn.join().unwrap();
        assert!(scans > 0);
    }

    /// Many files of mixed sizes (empty, around the block and padding boundaries, larger than a
    /// lane's buffer) hashed together, several per core in lanes: each result is its file's
    /// SHA-256 from the sha2 crate and its length, in the order of the jobs; a missing file in
    /// the middle is its own error and shifts nothing.
    #[test]
    fn lanes_hash_many_files_exactly_as_sha2() {
        use sha2::Digest as _;
        let dir = tempfile::tempdir().unwrap();
        let mut sizes: Vec<usize> = vec![0, 1, 55, 56, 63, 64, 65, 119, 120, 4096, 65_535, 65_536, 65_537, 300_001];
        sizes.extend((0..150).map(|i| (i * 7919) % 200_000));
        let mut expected = Vec::new();
        let mut paths = Vec::new();
        for (i, &size) in sizes.iter().enumerate() {
            let path = dir.path().join(format!("f{i}"));
            let contents: Vec<u8> = (0..size).map(|j| (j * 31 + i * 7) as u8).collect();
            std::fs::write(&path, &contents).unwrap();
            expected.push(Some((<[u8; 32]>::from(sha2::Sha256::digest(&contents)), size as u64)));
            paths.push(path);
        }
        paths.insert(77, dir.path().join("missing"));
        expected.insert(77, None);
        let jobs: Vec<Job> = paths.iter().map(|path| Job { path, no_follow: true }).collect();
        let results = hash_files(&jobs);
        assert_eq!(results.len(), expected.len());
        for ((result, expected), path) in results.iter().zip(&expected).zip(&paths) {
            match (result, expected) {
                (Ok(got), Some(expected)) => assert_eq!(got, expected, "{}", path.display()),
                (Err(e), None) => assert_eq!(e.kind(), std::io::ErrorKind::NotFound, "{e}"),
                (got, expected) => panic!("{}: {got:?} vs {expected:?}", path.display()),
            }
        }
    }

    /// Files truncated and rewritten while lanes hash them: every result is a digest and a
    /// length or an error, the scan ends, and once the writers stop the digests are right.
    #[test]
    fn files_shrinking_while_hashed_end_cleanly() {
        use sha2::Digest as _;
        let dir = tempfile::tempdir().unwrap();
        let paths: Vec<std::path::PathBuf> = (0..8).map(|i| dir.path().join(format!("g{i}"))).collect();
        for path in &paths {
            std::fs::write(path, vec![7u8; 1 << 20]).unwrap();
        }
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (paths, stop) = (paths.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut round = 0usize;
                while !stop.load(Ordering::Relaxed) && round < 20_000 {
                    let path = &paths[round % paths.len()];
                    let len = if round & 1 == 0 { 100 } else { 1 << 20 };
                    let _ = std::fs::write(path, vec![round as u8; len]);
                    round += 1;
                }
            })
        };
        for _ in 0..20 {
            let paths = paths.clone();
            let ended = within(30, move || {
                let jobs: Vec<Job> = paths.iter().map(|path| Job { path, no_follow: true }).collect();
                hash_files(&jobs).len()
            });
            assert_eq!(ended, 8);
        }
        stop.store(true, Ordering::Relaxed);
        writer.join().unwrap();
        let jobs: Vec<Job> = paths.iter().map(|path| Job { path, no_follow: true }).collect();
        for (path, result) in paths.iter().zip(hash_files(&jobs)) {
            let contents = std::fs::read(path).unwrap();
            assert_eq!(result.unwrap(), (sha2::Sha256::digest(&contents).into(), contents.len() as u64));
        }
    }

    /// A 4 GiB sparse file is hashed in full (its contents are 4 GiB of zeros), streamed: the
    /// process's peak resident memory does not grow by anything near its size.
    #[test]
    fn sparse_4_gib_file_is_hashed_streaming() {
        const SIZE: u64 = 4 << 30;
        // sha256sum of 4 GiB of zeros (`head -c 4294967296 /dev/zero | sha256sum`).
        const ZEROS: &str = "8479e43911dc45e89f934fe48d01297e16f51d17aa561d4d1c216b1ae0fcddca";
        fn peak_kib() -> u64 {
            let status = std::fs::read_to_string("/proc/self/status").unwrap();
            let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
            line.split_whitespace().nth(1).unwrap().parse().unwrap()
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sparse");
        std::fs::File::create(&path).unwrap().set_len(SIZE).unwrap();
        let before = peak_kib();
        let pattern = vec![path.display().to_string()];
        let items = within(300, move || collector(pattern, false).collect().unwrap());
        let grown = peak_kib().saturating_sub(before);
        assert_eq!(items.len(), 1, "{items:?}");
        assert_eq!(items[0].detail["size"], SIZE, "{items:?}");
        assert_eq!(crate::integrity::hex(&items[0].digest), ZEROS);
        assert!(grown < 256 * 1024, "peak memory grew by {grown} KiB while hashing");
    }

    /// `a -> b -> a` named is an error item saying it loops; links to ancestors met in a
    /// recursive walk are not followed, so the walk ends.
    #[test]
    fn symlink_loops_are_error_items_and_walks_end() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().display().to_string();
        std::os::unix::fs::symlink("b", dir.path().join("a")).unwrap();
        std::os::unix::fs::symlink("a", dir.path().join("b")).unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        std::fs::write(dir.path().join("d/f"), "f").unwrap();
        std::os::unix::fs::symlink("..", dir.path().join("d/up")).unwrap();
        std::os::unix::fs::symlink(".", dir.path().join("d/self")).unwrap();
        std::os::unix::fs::symlink(dir.path(), dir.path().join("d/root")).unwrap();

        let patterns = vec![format!("{root}/a"), root.clone(), format!("{root}/d/up")];
        let items = within(30, {
            let patterns = patterns.clone();
            move || collector(patterns, true).collect().unwrap()
        });
        let error = item(&items, &format!("file:{root}/a")).error_text().unwrap();
        assert!(error.starts_with("symbolic link loop: Too many levels of symbolic links"), "{error}");
        // The named link to a directory is not walked and has no contents.
        assert_eq!(ids(&items), [format!("file:{root}/a"), format!("file:{root}/d/f")]);

        let meta = within(30, move || crate::integrity::file_metadata::tests::collector(patterns).collect().unwrap());
        assert_eq!(meta.len(), 8, "{meta:#?}");
        assert_eq!(item(&meta, &format!("meta:{root}/a")).detail["symlink_target"], "b");
        assert_eq!(item(&meta, &format!("meta:{root}/d/up")).detail["type"], "symlink");
        assert!(meta.iter().all(|item| item.error_text().is_none()), "{meta:#?}");

        // A recursive glob over the loops ends too.
        let glob = vec![format!("{root}/**/f")];
        let globbed = within(60, move || collector(glob, false).collect().unwrap());
        assert!(globbed.iter().any(|item| item.id == format!("file:{root}/d/f")), "{globbed:#?}");
    }

    /// Names that are not UTF-8 get ids that are lossless and unambiguous (`file%:` with
    /// percent-encoding), distinct from a UTF-8 name spelling the same escape.
    #[test]
    fn non_utf8_names_have_lossless_distinct_ids() {
        use std::os::unix::ffi::OsStrExt as _;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().display().to_string();
        let raw = dir.path().join(std::ffi::OsStr::from_bytes(b"caf\xff%"));
        let lookalike = dir.path().join("caf%FF%25");
        let lossy = dir.path().join("caf\u{fffd}%");
        std::fs::write(&raw, "raw").unwrap();
        std::fs::write(&lookalike, "lookalike").unwrap();
        std::fs::write(&lossy, "lossy").unwrap();
        std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(b"caf\xff%"), dir.path().join("link")).unwrap();

        let items = collector(vec![root.clone()], false).collect().unwrap();
        assert_eq!(items.len(), 3, "{items:#?}");
        assert_eq!(item(&items, &format!("file%:{root}/caf%FF%25")).digest, sha256(b"raw"));
        assert_eq!(item(&items, &format!("file:{root}/caf%FF%25")).digest, sha256(b"lookalike"));
        assert_eq!(item(&items, &format!("file:{root}/caf\u{fffd}%")).digest, sha256(b"lossy"));
        for item in &items {
            let (kind, path) = crate::integrity::id_path(&item.id).unwrap();
            assert_eq!(kind, "file");
            // The id leads back to the very file that was hashed.
            assert_eq!(sha256(&std::fs::read(&path).unwrap()), item.digest, "{}", item.id);
            assert!([&raw, &lookalike, &lossy].contains(&&path), "{}", path.display());
        }

        let meta = crate::integrity::file_metadata::tests::collector(vec![root.clone()]).collect().unwrap();
        let link = item(&meta, &format!("meta:{root}/link"));
        assert_eq!(link.detail["symlink_target_escaped"], "caf%FF%25");
        assert!(link.detail.get("symlink_target").is_none(), "{link:?}");
        item(&meta, &format!("meta%:{root}/caf%FF%25"));
    }
}
