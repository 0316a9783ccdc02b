//! Differences between two sets of items (the baseline and the current state, or an item's old
//! and new hash): which items were added or removed, and for a changed item which attributes.
//!
//! Items are matched by (collector, item id), so a rename is a removal and an addition. The
//! attributes of a change are the `detail` fields that differ (`mode`, `uid`, `gid`, `size`,
//! `type`, `symlink_target`, `inode`, `error`, ...; `mtime_nsec` is reported as `mtime`), plus
//! `content` when the digest differs and either the item hashes contents (`file:`, `file%:` ids) or no
//! detail field explains the new digest (a command's output, ...).
use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::Item;
use crate::store::StoredItem;

/// What happened to one item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    Added,
    Removed,
    Changed,
}

impl ChangeKind {
    pub fn name(self) -> &'static str {
        match self {
            ChangeKind::Added => "added",
            ChangeKind::Removed => "removed",
            ChangeKind::Changed => "changed",
        }
    }
}

/// One difference.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Change {
    pub change: ChangeKind,
    pub collector: String,
    pub id: String,
    /// Empty unless `change` is `changed`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub attributes: Vec<String>,
    pub old: Option<Item>,
    pub new: Option<Item>,
}

/// Items added, removed and changed, each sorted by (collector, id).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Diff {
    pub added: Vec<Change>,
    pub removed: Vec<Change>,
    pub changed: Vec<Change>,
    /// Items in the baseline: 0 when `ids baseline` was never run (everything reads as added).
    pub baseline_items: usize,
}

impl Diff {
    /// Every change, added then removed then changed.
    #[cfg(test)]
    pub fn all(&self) -> impl Iterator<Item = &Change> {
        self.added.iter().chain(&self.removed).chain(&self.changed)
    }

    /// `{"added": [{"collector", "id"}], "removed": [...], "changed": [{"collector", "id", "attributes"}],
    /// "baseline_items"}`.
    pub fn to_json(&self) -> serde_json::Value {
        let brief = |changes: &[Change]| -> Vec<serde_json::Value> {
            changes
                .iter()
                .map(|c| {
                    let mut entry = serde_json::json!({"collector": c.collector, "id": c.id});
                    if c.change == ChangeKind::Changed {
                        entry["attributes"] = serde_json::json!(c.attributes);
                    }
                    entry
                })
                .collect()
        };
        serde_json::json!({
            "added": brief(&self.added),
            "removed": brief(&self.removed),
            "changed": brief(&self.changed),
            "baseline_items": self.baseline_items,
        })
    }
}

/// The attributes in which `new` differs from `old` (empty when they are equal).
pub fn changed_attributes(old: &Item, new: &Item) -> Vec<String> {
    let mut attributes = BTreeSet::new();
    let empty = serde_json::Map::new();
    let old_fields = old.detail.as_object().unwrap_or(&empty);
    let new_fields = new.detail.as_object().unwrap_or(&empty);
    for key in old_fields.keys().chain(new_fields.keys()) {
        if old_fields.get(key) != new_fields.get(key) {
            let name = if key == "mtime_nsec" { "mtime" } else { key.as_str() };
            attributes.insert(name.to_string());
        }
    }
    if !old.detail.is_object() && old.detail != new.detail {
        attributes.insert("detail".to_string());
    }
    let hashes_contents = old.id.starts_with("file:") || old.id.starts_with("file%:");
    if old.digest != new.digest && (hashes_contents || attributes.is_empty()) {
        attributes.insert("content".to_string());
    }
    attributes.into_iter().collect()
}

/// The change from `old` to `new` of one item, if any.
pub fn change(collector: &str, id: &str, old: Option<&Item>, new: Option<&Item>) -> Option<Change> {
    let (change, attributes) = match (old, new) {
        (None, None) => return None,
        (None, Some(_)) => (ChangeKind::Added, Vec::new()),
        (Some(_), None) => (ChangeKind::Removed, Vec::new()),
        (Some(old), Some(new)) => {
            if old.digest == new.digest && old.detail == new.detail {
                return None;
            }
            (ChangeKind::Changed, changed_attributes(old, new))
        }
    };
    Some(Change {
        change,
        collector: collector.to_string(),
        id: id.to_string(),
        attributes,
        old: old.cloned(),
        new: new.cloned(),
    })
}

/// Everything that differs from `baseline` in `current`.
pub fn diff(baseline: &[StoredItem], current: &[StoredItem]) -> Diff {
    let index = |items: &'_ [StoredItem]| -> BTreeMap<(String, String), Item> {
        items.iter().map(|s| ((s.collector.clone(), s.item.id.clone()), s.item.clone())).collect()
    };
    let old = index(baseline);
    let new = index(current);
    let keys: BTreeSet<&(String, String)> = old.keys().chain(new.keys()).collect();
    let mut result = Diff { baseline_items: baseline.len(), ..Diff::default() };
    for key in keys {
        if let Some(change) = change(&key.0, &key.1, old.get(key), new.get(key)) {
            match change.change {
                ChangeKind::Added => result.added.push(change),
                ChangeKind::Removed => result.removed.push(change),
                ChangeKind::Changed => result.changed.push(change),
            }
        }
    }
    result
}

/// A table for people, one line per change, from [`Diff::to_json`]'s output (which is also
/// what the daemon sends).
pub fn human(json: &serde_json::Value) -> String {
    let mut rows = Vec::new();
    for change in ["added", "removed", "changed"] {
        for entry in json[change].as_array().into_iter().flatten() {
            let attributes: Vec<&str> =
                entry["attributes"].as_array().into_iter().flatten().filter_map(|a| a.as_str()).collect();
            rows.push(format!(
                "{:<8} {:<16} {:<60} {}\n",
                change,
                entry["collector"].as_str().unwrap_or("?"),
                entry["id"].as_str().unwrap_or("?"),
                attributes.join(", ")
            ));
        }
    }
    if rows.is_empty() {
        return "no changes since the baseline\n".to_string();
    }
    let count = |key: &str| json[key].as_array().map_or(0, |a| a.len());
    let mut out = format!("{:<8} {:<16} {:<60} {}\n", "change", "collector", "item", "attributes");
    out.extend(rows);
    out += &format!("{} added, {} removed, {} changed\n", count("added"), count("removed"), count("changed"));
    out
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;
    use crate::integrity::config::CollectorConfig;
    use crate::integrity::test_support::config;
    use crate::integrity::{Collector as _, file_contents::FileContents, file_metadata::FileMetadata};

    fn scan(root: &str) -> Vec<StoredItem> {
        let settings = |kind| CollectorConfig { paths: vec![root.to_string()], recursive: true, ..config(kind) };
        let contents = FileContents::new(&settings("file_contents")).unwrap();
        let metadata = FileMetadata::new(&settings("file_metadata")).unwrap();
        let mut items = Vec::new();
        for (name, collected) in [("files", contents.collect().unwrap()), ("meta", metadata.collect().unwrap())] {
            items.extend(collected.into_iter().map(|item| StoredItem { collector: name.into(), item }));
        }
        items
    }

    fn named(diff: &Diff) -> Vec<(String, String, Vec<String>)> {
        diff.all().map(|c| (c.change.name().to_string(), c.id.clone(), c.attributes.clone())).collect()
    }

    /// Sets a file's mtime, so that a change made within the same clock tick is still seen, and
    /// so that tests can keep mtime out of what they compare.
    fn set_mtime(path: &std::path::Path, seconds: i64) {
        let file = std::fs::File::options().write(true).open(path).unwrap();
        let time = std::time::UNIX_EPOCH + std::time::Duration::from_secs(seconds as u64);
        file.set_modified(time).unwrap();
    }

    #[test]
    fn one_byte_content_change_is_content_only() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().display().to_string();
        let f = dir.path().join("f");
        std::fs::write(&f, "hello").unwrap();
        set_mtime(&f, 1_000_000);
        let baseline = scan(&root);
        std::fs::write(&f, "hellp").unwrap();
        set_mtime(&f, 1_000_000);
        let diff = diff(&baseline, &scan(&root));
        assert_eq!(named(&diff), [("changed".into(), format!("file:{root}/f"), vec!["content".to_string()])]);
    }

    #[test]
    fn mode_and_owner_changes_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().display().to_string();
        let f = dir.path().join("f");
        std::fs::write(&f, "data").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        let baseline = scan(&root);
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        let after_mode = scan(&root);
        assert_eq!(
            named(&diff(&baseline, &after_mode)),
            [("changed".into(), format!("meta:{root}/f"), vec!["mode".to_string()])]
        );

        use std::os::unix::fs::MetadataExt as _;
        let meta = std::fs::metadata(&f).unwrap();
        std::os::unix::fs::chown(&f, Some(meta.uid() + 1000), Some(meta.gid() + 1000))
            .expect("chown (tests run as root)");
        assert_eq!(
            named(&diff(&after_mode, &scan(&root))),
            [("changed".into(), format!("meta:{root}/f"), vec!["gid".to_string(), "uid".to_string()])]
        );
    }

    #[test]
    fn rename_is_removed_plus_added() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().display().to_string();
        std::fs::write(dir.path().join("a"), "x").unwrap();
        let baseline = scan(&root);
        std::fs::rename(dir.path().join("a"), dir.path().join("b")).unwrap();
        let mut current = scan(&root);
        // The directory's own mtime changed too; keep this test about the renamed file.
        current.retain(|s| s.item.id != format!("meta:{root}"));
        let mut baseline = baseline;
        baseline.retain(|s| s.item.id != format!("meta:{root}"));
        let diff = diff(&baseline, &current);
        let p = |n: &str| format!("{root}/{n}");
        assert_eq!(
            named(&diff),
            [
                ("added".into(), format!("file:{}", p("b")), vec![]),
                ("added".into(), format!("meta:{}", p("b")), vec![]),
                ("removed".into(), format!("file:{}", p("a")), vec![]),
                ("removed".into(), format!("meta:{}", p("a")), vec![]),
            ]
        );
        let json = diff.to_json();
        assert_eq!(json["added"][0]["collector"], "files");
        assert!(json["removed"][0].get("attributes").is_none());
        let table = human(&json);
        assert!(table.contains("removed") && table.contains(&format!("file:{}", p("a"))), "{table}");
        assert!(table.ends_with("2 added, 2 removed, 0 changed\n"), "{table}");
    }

    #[test]
    fn error_items_and_symlink_targets_are_attributes() {
        let a = Item::error("meta:/x", "gone");
        let b = Item::of_detail("meta:/x", serde_json::json!({"type": "symlink", "symlink_target": "/a"}));
        let c = Item::of_detail("meta:/x", serde_json::json!({"type": "symlink", "symlink_target": "/b"}));
        assert_eq!(changed_attributes(&b, &c), ["symlink_target"]);
        assert_eq!(changed_attributes(&a, &b), ["error", "symlink_target", "type"]);
        assert!(change("m", "meta:/x", Some(&b), Some(&b)).is_none());
    }
}
