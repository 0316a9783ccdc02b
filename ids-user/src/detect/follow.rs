//! Following a log file: read what was appended since the last read, line by line, across
//! rotation and restarts.
//!
//! The follower holds the file open and remembers its (dev, inode), the offset after the last
//! complete line (what is stored), and the SHA-256 of its first bytes (up to [`HEAD`]).
//! - **Rename + create**: when the path names another inode, the old file is read to its end
//!   through the descriptor still held (and once more after the new file is opened, for a writer
//!   that had not yet reopened), then the new file is read from its start.
//! - **Copytruncate**: a file shorter than the offset, or whose first bytes changed, was truncated
//!   (or replaced in place); what had not been read yet is read from the copy (see
//!   [`rotated_candidates`]: `PATH.1`, or a dated `PATH-20261121` and the like, whichever holds
//!   the first bytes remembered), then the file is read from its start.
//! - **Restarts**: the stored position resumes the same file at the same offset; if the path
//!   now names another file, the rest of the old one is read from its rotated copy when one of
//!   the candidates is that file (same inode).
//!   With no stored position (first run) reading starts at the end.
//! - A last line without its newline is kept until it is completed; a line longer than
//!   [`MAX_LINE`] is cut (the rest skipped up to the newline) and counted.
use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use super::MAX_LINE;
use crate::store::LogOffset;

/// Bytes at the start of a file whose digest identifies its contents.
pub const HEAD: u64 = 256;
const CHUNK: usize = 64 * 1024;

/// Receives each line (without its newline or a trailing CR) and whether it was cut.
pub type Sink<'a> = &'a mut dyn FnMut(&[u8], bool);

#[derive(Debug, Default)]
struct Splitter {
    partial: Vec<u8>,
    cutting: bool,
    lines: u64,
    cut: u64,
}

impl Splitter {
    fn emit(&mut self, line: &[u8], sink: Sink) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        self.lines += 1;
        if line.len() > MAX_LINE {
            self.cut += 1;
            sink(&line[..MAX_LINE], true);
        } else {
            sink(line, false);
        }
    }

    /// Feeds bytes; returns how many of them end with the last newline seen (0 if none).
    fn feed(&mut self, mut data: &[u8], sink: Sink) -> Option<usize> {
        let total = data.len();
        let mut last_end = None;
        while let Some(nl) = memchr::memchr(b'\n', data) {
            let piece = &data[..nl];
            if self.cutting {
                self.cutting = false;
            } else if self.partial.is_empty() {
                self.emit(piece, sink);
            } else {
                let mut line = std::mem::take(&mut self.partial);
                line.extend_from_slice(&piece[..piece.len().min(MAX_LINE + 1)]);
                self.emit(&line, sink);
                line.clear();
                self.partial = line;
            }
            data = &data[nl + 1..];
            last_end = Some(total - data.len());
        }
        if !self.cutting && !data.is_empty() {
            self.partial.extend_from_slice(data);
            if self.partial.len() > MAX_LINE {
                let line = std::mem::take(&mut self.partial);
                self.emit(&line, sink);
                self.cutting = true;
            }
        }
        last_end
    }

    /// The unfinished last line of a file that will not grow any more.
    fn finish(&mut self, sink: Sink) {
        if !self.partial.is_empty() && !self.cutting {
            let line = std::mem::take(&mut self.partial);
            self.emit(&line, sink);
        }
        self.partial.clear();
        self.cutting = false;
    }

    fn reset(&mut self) {
        self.partial.clear();
        self.cutting = false;
    }
}

pub struct Follower {
    path: PathBuf,
    file: Option<File>,
    dev: u64,
    ino: u64,
    /// Bytes consumed, the unfinished line included.
    read: u64,
    /// Offset after the last complete line.
    committed: u64,
    head_len: u64,
    head_hash: String,
    splitter: Splitter,
    buf: Vec<u8>,
}

fn hash_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// The digest of the first `len` bytes of `file`, or `None` if it is shorter.
fn head_of(file: &File, len: u64) -> io::Result<Option<String>> {
    if len > HEAD {
        // Not a length this program stores: the stored position is damaged.
        return Ok(None);
    }
    let mut buf = vec![0u8; len as usize];
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], filled as u64)? {
            0 => return Ok(None),
            n => filled += n,
        }
    }
    Ok(Some(hash_hex(&buf)))
}

/// The name logrotate gives the first rotated file.
pub fn rotated_name(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".1");
    PathBuf::from(name)
}

/// Rotated copies considered besides `PATH.1`, newest first.
const MAX_CANDIDATES: usize = 8;

/// Where the rotated copy of `path` may be: `PATH.1` first, then the other uncompressed files of
/// its directory named `PATH` + `.`, `-` or `_` + anything (`auth.log.0`, logrotate's `dateext`
/// `auth.log-20261121`), the [`MAX_CANDIDATES`] most recently modified. The caller decides by
/// inode or by the first bytes which one it is.
pub fn rotated_candidates(path: &Path) -> Vec<PathBuf> {
    use std::os::unix::ffi::OsStrExt as _;
    let first = rotated_name(path);
    let mut candidates = vec![first.clone()];
    let (Some(dir), Some(base)) = (path.parent(), path.file_name()) else { return candidates };
    let base = base.as_bytes();
    let Ok(entries) = std::fs::read_dir(if dir.as_os_str().is_empty() { Path::new(".") } else { dir }) else {
        return candidates;
    };
    let compressed = [".gz", ".xz", ".bz2", ".zst", ".lz4", ".Z"];
    let mut others: Vec<(std::time::SystemTime, PathBuf)> = entries
        .flatten()
        .filter(|entry| {
            let name = entry.file_name();
            let name = name.as_bytes();
            name.len() > base.len() + 1
                && name.starts_with(base)
                && matches!(name[base.len()], b'.' | b'-' | b'_')
                && !compressed.iter().any(|suffix| name.ends_with(suffix.as_bytes()))
        })
        .map(|entry| entry.path())
        .filter(|candidate| *candidate != first)
        .filter_map(|candidate| {
            let meta = std::fs::metadata(&candidate).ok().filter(|meta| meta.is_file())?;
            Some((meta.modified().ok()?, candidate))
        })
        .collect();
    others.sort_by_key(|(modified, _)| std::cmp::Reverse(*modified));
    candidates.extend(others.into_iter().take(MAX_CANDIDATES).map(|(_, candidate)| candidate));
    candidates
}

impl Follower {
    /// Opens `path` and resumes from `stored` (see the module doc); lines of a file rotated
    /// while no daemon ran are given to `sink` now.
    pub fn open(path: &Path, stored: Option<&LogOffset>, sink: Sink) -> io::Result<Self> {
        let mut follower = Self {
            path: path.to_path_buf(),
            file: None,
            dev: 0,
            ino: 0,
            read: 0,
            committed: 0,
            head_len: 0,
            head_hash: String::new(),
            splitter: Splitter::default(),
            buf: vec![0; CHUNK],
        };
        let file = match File::open(path) {
            Ok(file) => Some(file),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        match (stored, file) {
            (None, Some(file)) => {
                let size = file.metadata()?.len();
                follower.adopt(file)?;
                follower.read = size;
                follower.committed = size;
                follower.refresh_head()?;
            }
            (None, None) => {}
            (Some(at), file) => {
                let same = match &file {
                    Some(f) => {
                        let meta = f.metadata()?;
                        (meta.dev(), meta.ino()) == (at.dev, at.ino)
                    }
                    None => false,
                };
                let intact = |f: &File| -> io::Result<bool> {
                    Ok(f.metadata()?.len() >= at.offset
                        && (at.head_len == 0 || head_of(f, at.head_len)?.as_deref() == Some(&at.head_hash)))
                };
                match file {
                    Some(f) if same && intact(&f)? => {
                        follower.adopt(f)?;
                        follower.read = at.offset;
                        follower.committed = at.offset;
                        follower.head_len = at.head_len;
                        follower.head_hash = at.head_hash.clone();
                    }
                    file => {
                        // Rotated (renamed, or copied and truncated) while no daemon ran.
                        follower.drain_copy(at, same, sink);
                        if let Some(f) = file {
                            follower.adopt(f)?;
                        }
                    }
                }
            }
        }
        follower.read_available(sink)?;
        Ok(follower)
    }

    fn adopt(&mut self, file: File) -> io::Result<()> {
        let meta = file.metadata()?;
        self.dev = meta.dev();
        self.ino = meta.ino();
        self.file = Some(file);
        self.read = 0;
        self.committed = 0;
        self.head_len = 0;
        self.head_hash.clear();
        self.splitter.reset();
        Ok(())
    }

    /// Reads the rest of the rotated copy (the first of [`rotated_candidates`] that is it): the
    /// same inode as `at` (renamed away), or, for copytruncate (`same_inode`), another file whose
    /// first bytes are the remembered ones.
    fn drain_copy(&mut self, at: &LogOffset, same_inode: bool, sink: Sink) {
        let is_it = |copy: &File| -> bool {
            let Ok(meta) = copy.metadata() else { return false };
            if same_inode {
                meta.ino() != at.ino
                    && meta.len() >= at.offset
                    && at.head_len > 0
                    && head_of(copy, at.head_len).ok().flatten().as_deref() == Some(&at.head_hash)
            } else {
                (meta.dev(), meta.ino()) == (at.dev, at.ino)
            }
        };
        let copy = rotated_candidates(&self.path)
            .into_iter()
            .filter_map(|candidate| File::open(candidate).ok())
            .find(|copy| is_it(copy));
        if let Some(copy) = copy {
            let mut pos = at.offset;
            self.splitter.reset();
            let _ = Self::read_file(&copy, &mut pos, &mut self.buf, &mut self.splitter, sink);
            self.splitter.finish(sink);
        }
    }

    /// Reads what the sensor reported written; returns whether any line was read.
    pub fn poll(&mut self, sink: Sink) -> io::Result<bool> {
        let lines_before = self.splitter.lines;
        if let Some(file) = &self.file {
            let size = file.metadata()?.len();
            if size != self.read {
                let rewritten = size < self.read
                    || (self.head_len > 0 && head_of(file, self.head_len)?.as_deref() != Some(&self.head_hash));
                if rewritten {
                    let at = self.position().unwrap_or(LogOffset {
                        dev: self.dev,
                        ino: self.ino,
                        offset: 0,
                        head_len: 0,
                        head_hash: String::new(),
                    });
                    let at = LogOffset { offset: self.read, ..at };
                    let partial = std::mem::take(&mut self.splitter.partial);
                    // The copy holds the unfinished line too: read it from where it started.
                    let at = LogOffset { offset: at.offset - partial.len() as u64, ..at };
                    self.drain_copy(&at, true, sink);
                    self.read = 0;
                    self.committed = 0;
                    self.head_len = 0;
                    self.head_hash.clear();
                    self.splitter.reset();
                }
                self.read_available(sink)?;
            }
        }
        match std::fs::metadata(&self.path) {
            Ok(meta) if self.file.is_none() || (meta.dev(), meta.ino()) != (self.dev, self.ino) => {
                let new = File::open(&self.path)?;
                if let Some(old) = self.file.take() {
                    // Renamed away: read it to the end, then once more once the new file is
                    // open, for a writer that has not reopened yet.
                    let mut pos = self.read;
                    Self::read_file(&old, &mut pos, &mut self.buf, &mut self.splitter, sink)?;
                    self.splitter.finish(sink);
                }
                self.adopt(new)?;
                self.read_available(sink)?;
            }
            _ => {}
        }
        Ok(self.splitter.lines != lines_before)
    }

    fn read_file(file: &File, pos: &mut u64, buf: &mut [u8], splitter: &mut Splitter, sink: Sink) -> io::Result<u64> {
        let mut committed = None;
        loop {
            let n = file.read_at(buf, *pos)?;
            if n == 0 {
                break;
            }
            if let Some(end) = splitter.feed(&buf[..n], sink) {
                committed = Some(*pos + end as u64);
            }
            *pos += n as u64;
        }
        Ok(committed.unwrap_or(u64::MAX))
    }

    fn read_available(&mut self, sink: Sink) -> io::Result<()> {
        let Some(file) = &self.file else { return Ok(()) };
        let committed = Self::read_file(file, &mut self.read, &mut self.buf, &mut self.splitter, sink)?;
        if committed != u64::MAX {
            self.committed = committed;
        }
        if self.splitter.cutting {
            // A cut line's tail is skipped: count it as consumed.
            self.committed = self.read;
        }
        self.refresh_head()
    }

    fn refresh_head(&mut self) -> io::Result<()> {
        if self.head_len < HEAD
            && self.read > self.head_len
            && let Some(file) = &self.file
        {
            let len = self.read.min(HEAD);
            if let Some(hash) = head_of(file, len)? {
                self.head_len = len;
                self.head_hash = hash;
            }
        }
        Ok(())
    }

    /// What to store: `None` while the file does not exist.
    pub fn position(&self) -> Option<LogOffset> {
        self.file.as_ref()?;
        Some(LogOffset {
            dev: self.dev,
            ino: self.ino,
            offset: self.committed,
            head_len: self.head_len,
            head_hash: self.head_hash.clone(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Lines read and lines cut since start.
    #[cfg(test)]
    pub fn counts(&self) -> (u64, u64) {
        (self.splitter.lines, self.splitter.cut)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};

    fn append(path: &Path, text: &str) {
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap();
        file.write_all(text.as_bytes()).unwrap();
    }

    fn poll(follower: &mut Follower, into: &mut Vec<String>) {
        follower.poll(&mut |line, _| into.push(String::from_utf8_lossy(line).into_owned())).unwrap();
    }

    fn open(path: &Path, stored: Option<&LogOffset>, into: &mut Vec<String>) -> Follower {
        Follower::open(path, stored, &mut |line, _| into.push(String::from_utf8_lossy(line).into_owned())).unwrap()
    }

    #[test]
    fn first_run_starts_at_the_end_and_partial_lines_wait_for_their_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth.log");
        append(&path, "old 1\nold 2\n");
        let mut lines = Vec::new();
        let mut follower = open(&path, None, &mut lines);
        assert!(lines.is_empty());
        append(&path, "new 1\nnew 2 beg");
        poll(&mut follower, &mut lines);
        assert_eq!(lines, ["new 1"]);
        append(&path, "inning\r\n");
        poll(&mut follower, &mut lines);
        assert_eq!(lines, ["new 1", "new 2 beginning"]);
    }

    #[test]
    fn a_restart_resumes_where_the_last_complete_line_ended() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth.log");
        append(&path, "before\n");
        let mut lines = Vec::new();
        let mut follower = open(&path, None, &mut lines);
        append(&path, "a\nb\nhalf");
        poll(&mut follower, &mut lines);
        let stored = follower.position().unwrap();
        drop(follower);
        append(&path, " done\nc\n");
        let mut after = Vec::new();
        let mut follower = open(&path, Some(&stored), &mut after);
        poll(&mut follower, &mut after);
        assert_eq!(lines, ["a", "b"]);
        assert_eq!(after, ["half done", "c"]);
    }

    /// A log followed from its first line, the follower stopped (its position kept), then a line
    /// `tail of old` appended while no follower runs.
    fn stopped_after_one_line(path: &Path) -> (LogOffset, Vec<String>) {
        append(path, "x\n");
        let mut lines = Vec::new();
        let follower = open(path, None, &mut lines);
        let stored = follower.position().unwrap();
        drop(follower);
        append(path, "tail of old\n");
        (stored, lines)
    }

    #[test]
    fn a_log_rotated_while_stopped_is_finished_from_its_rotated_copy() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth.log");
        let (stored, mut lines) = stopped_after_one_line(&path);
        std::fs::rename(&path, rotated_name(&path)).unwrap();
        append(&path, "first of new\n");
        open(&path, Some(&stored), &mut lines);
        assert_eq!(lines, ["tail of old", "first of new"]);
        // Truncated in place (copytruncate) while stopped.
        let mut follower = open(&path, None, &mut lines);
        append(&path, "unread\n");
        poll(&mut follower, &mut lines);
        let stored = follower.position().unwrap();
        drop(follower);
        append(&path, "written before the copy\n");
        std::fs::copy(&path, rotated_name(&path)).unwrap();
        std::fs::File::options().write(true).open(&path).unwrap().set_len(0).unwrap();
        append(&path, "after truncation\n");
        let mut after = Vec::new();
        open(&path, Some(&stored), &mut after);
        assert_eq!(after, ["written before the copy", "after truncation"]);
    }

    #[test]
    fn lines_over_the_cap_are_cut_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        append(&path, "");
        let mut follower = Follower::open(&path, None, &mut |_, _| {}).unwrap();
        let huge = "A".repeat(MAX_LINE * 3);
        // Written in pieces so the cut happens across reads too.
        append(&path, &huge[..MAX_LINE / 2]);
        let mut seen: Vec<(usize, bool)> = Vec::new();
        follower.poll(&mut |line, cut| seen.push((line.len(), cut))).unwrap();
        append(&path, &huge[MAX_LINE / 2..]);
        append(&path, "\nshort\n");
        append(&path, &format!("{huge}\n"));
        follower.poll(&mut |line, cut| seen.push((line.len(), cut))).unwrap();
        assert_eq!(seen, [(MAX_LINE, true), (5, false), (MAX_LINE, true)]);
        assert_eq!(follower.counts(), (3, 2));
        assert_eq!(follower.position().unwrap().offset, std::fs::metadata(&path).unwrap().len());
    }

    /// Appends numbered lines from another thread while the test rotates the log `rotations`
    /// times with `rotate` (under the writer's lock, as logrotate's copy+truncate or rename+create
    /// is atomic for a writer that reopens per line); returns every line the follower read.
    fn follow_while_rotating(rotate: fn(&Path)) -> (Vec<String>, u64) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth.log");
        append(&path, "before start\n");
        let lock = Arc::new(Mutex::new(()));
        let done = Arc::new(AtomicBool::new(false));
        let written = Arc::new(AtomicU64::new(0));
        let mut lines = Vec::new();
        let mut follower = open(&path, None, &mut lines);
        let writer = std::thread::spawn({
            let (path, lock, done, written) = (path.clone(), lock.clone(), done.clone(), written.clone());
            move || {
                let mut n = 0u64;
                while !done.load(Ordering::SeqCst) || n < 2000 {
                    let _guard = lock.lock().unwrap();
                    append(&path, &format!("line {n}\n"));
                    n += 1;
                    written.store(n, Ordering::SeqCst);
                }
            }
        });
        for _ in 0..30 {
            // Read at least one line of the current file before the next rotation.
            let target = lines.len() + 1;
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while lines.len() < target {
                poll(&mut follower, &mut lines);
                assert!(std::time::Instant::now() < deadline, "follower read nothing new");
            }
            {
                let _guard = lock.lock().unwrap();
                rotate(&path);
            }
            poll(&mut follower, &mut lines);
        }
        done.store(true, Ordering::SeqCst);
        writer.join().unwrap();
        for _ in 0..3 {
            poll(&mut follower, &mut lines);
        }
        (lines, written.load(Ordering::SeqCst))
    }

    fn assert_each_line_once(lines: &[String], written: u64) {
        let expected: Vec<String> = (0..written).map(|n| format!("line {n}")).collect();
        if lines != expected {
            let first_bad =
                lines.iter().zip(&expected).position(|(a, b)| a != b).unwrap_or(lines.len().min(expected.len()));
            panic!(
                "read {} lines, {} written; first difference at {first_bad}: {:?} vs {:?}",
                lines.len(),
                written,
                lines.get(first_bad),
                expected.get(first_bad)
            );
        }
    }

    #[test]
    fn rename_and_create_rotation_loses_and_repeats_nothing() {
        let (lines, written) = follow_while_rotating(|path| {
            std::fs::rename(path, rotated_name(path)).unwrap();
            std::fs::File::create(path).unwrap();
        });
        assert_each_line_once(&lines, written);
    }

    #[test]
    fn dated_copies_are_found_whether_renamed_or_copied() {
        static SERIAL: AtomicU64 = AtomicU64::new(0);
        fn dated(path: &Path) -> PathBuf {
            let mut name = path.as_os_str().to_owned();
            name.push(format!("-2026112{}", SERIAL.fetch_add(1, Ordering::SeqCst)));
            PathBuf::from(name)
        }
        // Copytruncate to dated names while following (older copies and a compressed one lie
        // beside them).
        let (lines, written) = follow_while_rotating(|path| {
            std::fs::write(format!("{}.9.gz", path.display()), "not a log").unwrap();
            std::fs::copy(path, dated(path)).unwrap();
            std::fs::File::options().write(true).open(path).unwrap().set_len(0).unwrap();
        });
        assert_each_line_once(&lines, written);
        // Renamed to a dated name while stopped.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let (stored, mut lines) = stopped_after_one_line(&path);
        std::fs::write(dir.path().join("access.log-decoy"), "x\ndecoy\n").unwrap();
        std::fs::rename(&path, dated(&path)).unwrap();
        append(&path, "first of new\n");
        open(&path, Some(&stored), &mut lines);
        assert_eq!(lines, ["tail of old", "first of new"]);
    }

    #[test]
    fn copytruncate_rotation_loses_and_repeats_nothing() {
        let (lines, written) = follow_while_rotating(|path| {
            std::fs::copy(path, rotated_name(path)).unwrap();
            std::fs::File::options().write(true).open(path).unwrap().set_len(0).unwrap();
        });
        assert_each_line_once(&lines, written);
    }
}
