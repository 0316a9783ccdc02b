//! `file_metadata`: what `lstat` says of every path under `paths` (see [`super::paths`]):
//! type, permission bits, inode, owner, group, size, modification time and, for a symbolic link,
//! its target. Links are never followed. Item id `meta:<path>` (`meta%:` and percent-encoding for a
//! name that is not UTF-8: see *Paths in ids* in [`super`]); the digest is the SHA-256 of the
//! detail's JSON. A path that cannot be examined is an error item; a directory that cannot be
//! listed keeps its lstat detail with an added `"error"`.
use std::collections::HashMap;
use std::fs::FileType;
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
use std::path::Path;

use rayon::prelude::*;
use serde::Serialize;

use super::file_contents::{check_patterns, expand_patterns, unreadable_items};
use super::paths;
use super::{Collector, CollectorError, Item, KindSpec, escape_path, io_error_text, path_id};
use crate::integrity::config::CollectorConfig;

pub const SPEC: KindSpec = KindSpec { kind: "file_metadata", settings: &["paths", "recursive"], construct };

fn construct(config: &CollectorConfig) -> Result<Box<dyn Collector>, CollectorError> {
    Ok(Box::new(FileMetadata::new(config)?))
}

#[derive(Debug, Clone)]
pub struct FileMetadata {
    name: String,
    patterns: Vec<String>,
    recursive: bool,
}

/// The fields hashed, in this order.
#[derive(Debug, Serialize)]
pub struct MetadataDetail {
    /// `file`, `dir`, `symlink`, `fifo`, `socket`, `char`, `block`.
    #[serde(rename = "type")]
    pub file_type: &'static str,
    /// Permission bits with set-id and sticky bits, in octal (`"4755"`).
    pub mode: String,
    pub inode: u64,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime: i64,
    pub mtime_nsec: i64,
    /// The link's target when it is UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub symlink_target: Option<String>,
    /// The link's target, percent-encoded, when it is not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub symlink_target_escaped: Option<String>,
    /// Why a directory could not be listed (its entries are missing from the scan).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl FileMetadata {
    pub fn new(config: &CollectorConfig) -> Result<Self, CollectorError> {
        check_patterns(&config.name, &config.paths)?;
        Ok(Self { name: config.name.clone(), patterns: config.paths.clone(), recursive: config.recursive })
    }
}

impl Collector for FileMetadata {
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

impl FileMetadata {
    fn collect_scoped(&self, scope: Option<(&Path, bool)>) -> Result<Vec<Item>, CollectorError> {
        Ok(items_of(&expand_patterns(&self.name, &self.patterns, self.recursive, scope)?))
    }
}

/// The items of an expansion: one per path found, one per path that could not be examined.
fn items_of(expanded: &paths::Expanded) -> Vec<Item> {
    let found = &expanded.found;
    // A directory that was found but could not be listed is one item, not two: its lstat
    // detail with the listing error added.
    let mut errors: HashMap<String, Item> =
        unreadable_items(expanded, "meta").into_iter().map(|item| (item.id.clone(), item)).collect();
    let mut listing_errors: HashMap<String, String> = HashMap::new();
    if !errors.is_empty() {
        for found in found.iter().filter(|found| found.file_type.is_dir()) {
            let id = path_id("meta", &found.path);
            if let Some(error) = errors.remove(&id).and_then(|item| item.error_text().map(str::to_string)) {
                listing_errors.insert(id, error);
            }
        }
    }
    // rayon for the same reason as file_contents: lstat on a cold cache waits on the disk.
    let stated: Vec<Item> = found.par_iter().map(|found| metadata_item(&found.path, &listing_errors)).collect();
    let mut items: Vec<Item> = errors.into_values().collect();
    items.extend(stated);
    items
}

fn metadata_item(path: &Path, listing_errors: &HashMap<String, String>) -> Item {
    let id = path_id("meta", path);
    match metadata_detail(path) {
        Ok(mut detail) => {
            detail.error = listing_errors.get(&id).cloned();
            Item::of_detail(id, detail)
        }
        Err(e) => Item::error(id, io_error_text(&e, true)),
    }
}

/// The name of a file type in details: `file`, `dir`, `symlink`, `fifo`, `socket`, `char`,
/// `block` (`unknown` for anything else).
pub fn type_name(file_type: FileType) -> &'static str {
    if file_type.is_symlink() {
        "symlink"
    } else if file_type.is_dir() {
        "dir"
    } else if file_type.is_file() {
        "file"
    } else if file_type.is_fifo() {
        "fifo"
    } else if file_type.is_socket() {
        "socket"
    } else if file_type.is_char_device() {
        "char"
    } else if file_type.is_block_device() {
        "block"
    } else {
        "unknown"
    }
}

/// `lstat` of `path`, as hashed.
pub fn metadata_detail(path: &Path) -> std::io::Result<MetadataDetail> {
    let metadata = std::fs::symlink_metadata(path)?;
    let file_type = metadata.file_type();
    let (symlink_target, symlink_target_escaped) = if file_type.is_symlink() {
        match escape_path(&std::fs::read_link(path)?) {
            (false, target) => (Some(target), None),
            (true, escaped) => (None, Some(escaped)),
        }
    } else {
        (None, None)
    };
    Ok(MetadataDetail {
        file_type: type_name(file_type),
        mode: format!("{:04o}", metadata.mode() & 0o7777),
        inode: metadata.ino(),
        uid: metadata.uid(),
        gid: metadata.gid(),
        size: metadata.size(),
        mtime: metadata.mtime(),
        mtime_nsec: metadata.mtime_nsec(),
        symlink_target,
        symlink_target_escaped,
        error: None,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;
    use crate::integrity::aggregate_digest;
    use crate::integrity::test_support::{config, ids};

    pub(crate) fn collector(paths: Vec<String>) -> FileMetadata {
        FileMetadata::new(&CollectorConfig { paths, recursive: true, ..config("file_metadata") }).unwrap()
    }

    pub(crate) fn metadata_item_of(path: &Path) -> Item {
        metadata_item(path, &HashMap::new())
    }

    #[test]
    fn reports_type_mode_owner_and_link_target_without_following() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().display().to_string();
        std::fs::write(dir.path().join("f"), "data").unwrap();
        std::fs::set_permissions(dir.path().join("f"), std::fs::Permissions::from_mode(0o4751)).unwrap();
        std::os::unix::fs::symlink("/nonexistent/target", dir.path().join("l")).unwrap();

        let items = collector(vec![root.clone()]).collect().unwrap();
        assert_eq!(ids(&items), [format!("meta:{root}"), format!("meta:{root}/f"), format!("meta:{root}/l")]);
        let file = items.iter().find(|item| item.id.ends_with("/f")).unwrap();
        assert_eq!(file.detail["type"], "file");
        assert_eq!(file.detail["mode"], "4751");
        assert_eq!(file.detail["size"], 4);
        let link = items.iter().find(|item| item.id.ends_with("/l")).unwrap();
        assert_eq!(link.detail["type"], "symlink");
        assert_eq!(link.detail["symlink_target"], "/nonexistent/target");
        let dir_item = items.iter().find(|item| item.id == format!("meta:{root}")).unwrap();
        assert_eq!(dir_item.detail["type"], "dir");
    }

    #[test]
    fn mode_owner_and_rename_change_the_aggregate() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().display().to_string();
        let file = dir.path().join("f");
        std::fs::write(&file, "data").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let scan =
            || aggregate_digest("h", &collector(vec![format!("{root}/f"), format!("{root}/g")]).collect().unwrap());
        let before = scan();
        assert_eq!(before, scan());

        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let after_mode = scan();
        assert_ne!(before, after_mode);

        let uid = std::fs::metadata(&file).unwrap().uid();
        std::os::unix::fs::chown(&file, Some(uid + 1000), None).expect("chown (tests run as root)");
        let after_owner = scan();
        assert_ne!(after_mode, after_owner);

        std::fs::rename(&file, dir.path().join("g")).unwrap();
        assert_ne!(after_owner, scan());
    }
}
