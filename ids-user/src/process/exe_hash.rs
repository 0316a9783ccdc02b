//! SHA-256 of the programs processes run, for exec events (`exe_sha256`). Digests are kept by
//! (dev, inode, mtime, size), so a program replaced or rewritten is hashed again, and computed on
//! a thread of their own: the events writer only looks them up and, for a program it has not seen,
//! holds the exec event back until the digest is there (at most [`HASH_WAIT`]). Programs larger
//! than [`MAX_HASHED`] are not hashed.
use std::collections::{HashMap, HashSet};
use std::io::Read as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest as _, Sha256};

use crate::harness::{Stop, Workers};

/// How long an exec event waits for its program's digest before it is written without one.
pub(crate) const HASH_WAIT: Duration = Duration::from_millis(250);
/// Programs larger than this are not hashed (bounded work per exec).
pub(crate) const MAX_HASHED: u64 = 256 << 20;
/// Digests remembered at most; past it the cache starts over.
const MAX_DIGESTS: usize = 16_384;
/// Programs waiting to be hashed at most; past it an exec is written without a digest.
const QUEUE: usize = 256;

/// What identifies one version of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct FileVersion {
    dev: u64,
    ino: u64,
    mtime_ns: i128,
    size: u64,
}

impl FileVersion {
    fn of(meta: &std::fs::Metadata) -> Self {
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
            mtime_ns: meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
            size: meta.size(),
        }
    }
}

type Digests = Arc<Mutex<HashMap<FileVersion, Option<Arc<str>>>>>;

/// The writer's side: the digests known, and the programs asked for.
pub(crate) struct ExeHashes {
    digests: Digests,
    requests: SyncSender<(PathBuf, FileVersion)>,
    asked: HashSet<FileVersion>,
}

/// Where a program's digest stands.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ExeDigest {
    /// Hashed (`None`: it could not be, too large or unreadable).
    Known(Option<Arc<str>>),
    /// On its way.
    Pending,
}

impl ExeHashes {
    /// Starts the hashing thread.
    pub(crate) fn start(workers: &mut Workers) -> std::io::Result<Self> {
        let digests: Digests = Arc::default();
        let (requests, inbox) = std::sync::mpsc::sync_channel(QUEUE);
        let shared = digests.clone();
        workers.spawn_thread(
            "exe-hash",
            || {},
            move |stop| {
                hash_requests(&inbox, &shared, &stop);
                Ok(())
            },
        )?;
        Ok(Self { digests, requests, asked: HashSet::new() })
    }

    /// The digest of the program at `path` as it is now, asking for it if it is not known.
    pub(crate) fn digest(&mut self, path: &str) -> ExeDigest {
        let Ok(meta) = std::fs::metadata(path) else { return ExeDigest::Known(None) };
        let version = FileVersion::of(&meta);
        if let Some(known) = self.digests.lock().unwrap_or_else(|e| e.into_inner()).get(&version) {
            self.asked.remove(&version);
            return ExeDigest::Known(known.clone());
        }
        if meta.size() > MAX_HASHED || !meta.is_file() {
            return ExeDigest::Known(None);
        }
        if self.asked.contains(&version) {
            return ExeDigest::Pending;
        }
        match self.requests.try_send((PathBuf::from(path), version)) {
            Ok(()) => {
                if self.asked.len() >= QUEUE * 4 {
                    self.asked.clear();
                }
                self.asked.insert(version);
                ExeDigest::Pending
            }
            // The hasher is behind (or gone): this exec goes without.
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => ExeDigest::Known(None),
        }
    }
}

fn hash_requests(inbox: &Receiver<(PathBuf, FileVersion)>, digests: &Digests, stop: &Stop) {
    while !stop.is_stopped() {
        let (path, version) = match inbox.recv_timeout(Duration::from_millis(200)) {
            Ok(request) => request,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let digest = hash_file(&path, version);
        let mut digests = digests.lock().unwrap_or_else(|e| e.into_inner());
        if digests.len() >= MAX_DIGESTS {
            digests.clear();
        }
        digests.insert(version, digest);
    }
}

/// The file's digest if it is still `version` once read (a file rewritten meanwhile is not the
/// one the exec ran).
fn hash_file(path: &std::path::Path, version: FileVersion) -> Option<Arc<str>> {
    let mut file = std::fs::File::open(path).ok()?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buffer).ok()?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    let after = FileVersion::of(&file.metadata().ok()?);
    (after == version).then(|| crate::item::hex(&hasher.finalize().into()).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_program_is_hashed_once_per_version_and_again_when_it_changes() {
        let dir = tempfile::tempdir().unwrap();
        let program = dir.path().join("prog");
        std::fs::write(&program, b"version one").unwrap();
        let path = program.to_str().unwrap();
        let mut workers = Workers::default();
        let mut hashes = ExeHashes::start(&mut workers).unwrap();
        let wait_known = |hashes: &mut ExeHashes| {
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            loop {
                match hashes.digest(path) {
                    ExeDigest::Known(digest) => return digest,
                    ExeDigest::Pending => {
                        assert!(std::time::Instant::now() < deadline, "never hashed");
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            }
        };
        assert_eq!(hashes.digest(path), ExeDigest::Pending);
        let one = wait_known(&mut hashes).unwrap();
        assert_eq!(&*one, crate::item::hex(&crate::item::sha256(b"version one")));
        std::fs::write(&program, b"version two, longer").unwrap();
        let two = wait_known(&mut hashes).unwrap();
        assert_eq!(&*two, crate::item::hex(&crate::item::sha256(b"version two, longer")));
        assert_eq!(hashes.digest("/nonexistent/program"), ExeDigest::Known(None));
        // Dropping the writer's side ends the thread.
        drop(hashes);
    }
}
