//! `file_contents`: SHA-256 of the contents of the regular files under `paths`
//! (see [`super::paths`] for globs, directories and `recursive`). Item id `file:<path>`,
//! detail `{"size": bytes}`.
//!
//! A path named in the configuration (exactly or by a glob) is followed if it is a symbolic link
//! (`/etc/resolv.conf` hashes what it points at); entries found by walking a directory are hashed
//! only if they are regular files themselves (links, devices, FIFOs are left to
//! `file_metadata`). A file that cannot be opened or read is an error item.
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

use rayon::prelude::*;
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use super::paths::{self, FoundPath};
use super::{Collector, CollectorError, Digest, Item, KindSpec};
use crate::config::CollectorConfig;

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
/// [`paths::expand_at`]); the paths that could not be examined are returned as error items
/// with ids `<prefix><path>`.
pub(super) fn expand_patterns(
    collector: &str,
    patterns: &[String],
    recursive: bool,
    prefix: &str,
    scope: Option<(&Path, bool)>,
) -> Result<(Vec<FoundPath>, Vec<Item>), CollectorError> {
    let expanded = match scope {
        None => paths::expand(patterns, recursive),
        Some((target, deep)) => paths::expand_at(patterns, recursive, target, deep),
    };
    let expanded = expanded.map_err(|e| CollectorError::Setting {
        collector: collector.to_string(),
        key: "paths",
        message: e.to_string(),
    })?;
    let errors = expanded
        .unreadable
        .into_iter()
        .map(|unreadable| Item::error(format!("{prefix}{}", unreadable.path.display()), unreadable.error))
        .collect();
    Ok((expanded.found, errors))
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
}

impl FileContents {
    fn collect_scoped(&self, scope: Option<(&Path, bool)>) -> Result<Vec<Item>, CollectorError> {
        let (found, mut items) = expand_patterns(&self.name, &self.patterns, self.recursive, "file:", scope)?;
        // rayon rather than std::thread::scope over fixed chunks: file sizes are very uneven (a
        // 100 MB binary next to thousands of small files), and work stealing keeps every core
        // busy until the end where fixed chunks would leave all but one waiting.
        let hashed: Vec<Item> = found.par_iter().filter_map(hash_found).collect();
        items.extend(hashed);
        Ok(items)
    }
}

fn hash_found(found: &FoundPath) -> Option<Item> {
    let id = format!("file:{}", found.path.display());
    if found.named {
        // Follow a named link; hash only what is (or points at) a regular file.
        match std::fs::metadata(&found.path) {
            Ok(metadata) if metadata.is_file() => {}
            Ok(_) => return None,
            Err(e) => return Some(Item::error(id, e)),
        }
    } else if !found.file_type.is_file() {
        return None;
    }
    Some(match hash_file(&found.path, !found.named) {
        Ok((digest, size)) => Item::new(id, digest, ContentsDetail { size }),
        Err(e) => Item::error(id, e),
    })
}

/// SHA-256 and length of a file's contents, read in 64 KiB blocks.
/// `O_NONBLOCK` keeps a FIFO swapped in after the type check from blocking the scan.
pub fn hash_file(path: &Path, no_follow: bool) -> std::io::Result<(Digest, u64)> {
    let mut flags = libc::O_NONBLOCK | libc::O_CLOEXEC;
    if no_follow {
        flags |= libc::O_NOFOLLOW;
    }
    let mut file = std::fs::OpenOptions::new().read(true).custom_flags(flags).open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 64 * 1024];
    let mut size = 0u64;
    loop {
        let read = match file.read(&mut buffer) {
            Ok(0) => break,
            Ok(read) => read,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buffer[..read]);
        size += read as u64;
    }
    Ok((hasher.finalize().into(), size))
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
}
