//! Expansion of the `paths` setting of the file collectors into the list of paths to hash.
//!
//! - A pattern holding `*`, `?` or `[` is a glob (crate `glob`); one matching nothing yields
//!   nothing. A pattern that is not a valid glob is an error naming it ([`PathsError`]).
//!   A pattern with `**` is matched against a walk of its literal leading directories that never
//!   follows symbolic links (the `glob` crate follows them, and a link to an ancestor would make
//!   it recurse without end); a name that is not UTF-8 is matched in its lossy form.
//! - Any other pattern is an exact path; a missing or unreadable one becomes an
//!   [`Unreadable`] entry, which the collectors turn into an error item (`file:<path>` or
//!   `meta:<path>` with `{"error": ...}`), so that deleting a watched file changes the hash.
//! - A directory (named or matched) yields itself and its entries: its direct entries only, or its
//!   whole tree with `recursive = true`. Symbolic links met while walking are never followed, and
//!   a named link to a directory is not walked either (name the directory itself).
//!
//! Paths are kept as given (not canonicalised); duplicates from overlapping patterns are merged.
use std::fs::FileType;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Component, Path, PathBuf};

use rayon::prelude::*;

/// A `paths` entry that is not a valid glob.
#[derive(Debug, thiserror::Error)]
#[error("bad glob {pattern:?}: {message}")]
pub struct PathsError {
    pub pattern: String,
    pub message: String,
}

/// A path to hash.
#[derive(Debug, Clone)]
pub struct FoundPath {
    pub path: PathBuf,
    /// Named by the configuration (exactly or by a glob) rather than found in a directory walk.
    pub named: bool,
    /// Its type as `lstat` saw it.
    pub file_type: FileType,
}

/// A path that could not be examined.
#[derive(Debug, Clone)]
pub struct Unreadable {
    pub path: PathBuf,
    pub error: String,
}

#[derive(Debug, Default)]
pub struct Expanded {
    /// Sorted by path.
    pub found: Vec<FoundPath>,
    pub unreadable: Vec<Unreadable>,
}

/// Whether `pattern` is read as a glob rather than an exact path.
pub fn is_glob(pattern: &str) -> bool {
    pattern.contains(['*', '?', '['])
}

/// Checks a pattern without touching the file system.
pub fn check_pattern(pattern: &str) -> Result<(), PathsError> {
    if is_glob(pattern) {
        glob::Pattern::new(pattern)
            .map_err(|e| PathsError { pattern: pattern.to_string(), message: e.msg.to_string() })?;
    }
    Ok(())
}

/// Expands `patterns` as described in the module documentation.
pub fn expand(patterns: &[String], recursive: bool) -> Result<Expanded, PathsError> {
    let mut out = Collected::default();
    for pattern in patterns {
        let named: Vec<PathBuf> = if is_glob(pattern) {
            let (named, errors) = glob_matches(pattern)?;
            out.unreadable.extend(errors);
            named
        } else {
            vec![PathBuf::from(pattern)]
        };
        for path in named {
            match std::fs::symlink_metadata(&path) {
                Ok(metadata) => {
                    let file_type = metadata.file_type();
                    if file_type.is_dir() {
                        walk(&path, recursive, &mut out);
                    }
                    out.found.push(FoundPath { path, named: true, file_type });
                }
                Err(e) => out.unreadable.push(Unreadable { path, error: e.to_string() }),
            }
        }
    }
    Ok(out.finish())
}

/// The part of [`expand`]`(patterns, recursive)` that is `target` itself and, when `deep`, what
/// is below it: what a full expansion would find there, without walking anything else. The
/// daemon calls it for the paths a file event names. Paths are compared as given.
pub fn expand_at(patterns: &[String], recursive: bool, target: &Path, deep: bool) -> Result<Expanded, PathsError> {
    let mut out = Collected::default();
    let in_scope = |path: &Path| path == target || (deep && path.starts_with(target));
    for pattern in patterns {
        let named: Vec<PathBuf> = if is_glob(pattern) {
            let (named, errors) = glob_matches(pattern)?;
            out.unreadable.extend(errors.into_iter().filter(|unreadable| in_scope(&unreadable.path)));
            named
        } else {
            vec![PathBuf::from(pattern)]
        };
        for path in named {
            if in_scope(&path) {
                // Named at or below the target: exactly as `expand` treats it.
                match std::fs::symlink_metadata(&path) {
                    Ok(metadata) => {
                        let file_type = metadata.file_type();
                        if file_type.is_dir() && deep {
                            walk(&path, recursive, &mut out);
                        }
                        out.found.push(FoundPath { path, named: true, file_type });
                    }
                    Err(e) => out.unreadable.push(Unreadable { path, error: e.to_string() }),
                }
            } else if target.starts_with(&path) && target != path {
                // The target would be found by walking the named directory `path`: only if
                // `path` and every directory between it and the target are directories (the
                // walk never follows links), and the target is a direct entry unless recursive.
                if !recursive && target.parent() != Some(path.as_path()) {
                    continue;
                }
                let walked = target
                    .ancestors()
                    .skip(1)
                    .take_while(|ancestor| ancestor.starts_with(&path))
                    .all(|ancestor| std::fs::symlink_metadata(ancestor).is_ok_and(|m| m.is_dir()));
                if !walked {
                    continue;
                }
                let Ok(metadata) = std::fs::symlink_metadata(target) else { continue };
                let file_type = metadata.file_type();
                if deep && recursive && file_type.is_dir() {
                    walk(target, recursive, &mut out);
                }
                out.found.push(FoundPath { path: target.to_path_buf(), named: false, file_type });
            }
        }
    }
    Ok(out.finish())
}

/// What an expansion has found so far, in any order and with duplicates.
#[derive(Debug, Default)]
struct Collected {
    found: Vec<FoundPath>,
    unreadable: Vec<Unreadable>,
}

impl Collected {
    /// Sorted by the bytes of the path, one entry per path: a path both named and found in a
    /// walk is named; of two errors for one path the first is kept.
    fn finish(mut self) -> Expanded {
        self.found.sort_by(|a, b| {
            a.path.as_os_str().as_bytes().cmp(b.path.as_os_str().as_bytes()).then(b.named.cmp(&a.named))
        });
        self.found.dedup_by(|later, kept| later.path == kept.path);
        self.unreadable.sort_by(|a, b| a.path.as_os_str().as_bytes().cmp(b.path.as_os_str().as_bytes()));
        self.unreadable.dedup_by(|later, kept| later.path == kept.path);
        Expanded { found: self.found, unreadable: self.unreadable }
    }

    fn append(&mut self, mut other: Collected) {
        self.found.append(&mut other.found);
        self.unreadable.append(&mut other.unreadable);
    }
}

/// The paths matching the glob `pattern`, and the paths that could not be read while matching.
fn glob_matches(pattern: &str) -> Result<(Vec<PathBuf>, Vec<Unreadable>), PathsError> {
    let bad = |message: &str| PathsError { pattern: pattern.to_string(), message: message.to_string() };
    let mut named = Vec::new();
    let mut unreadable = Vec::new();
    if !pattern.contains("**") {
        for entry in glob::glob(pattern).map_err(|e| bad(e.msg))? {
            match entry {
                Ok(path) => named.push(path),
                Err(e) => {
                    unreadable.push(Unreadable { path: e.path().to_path_buf(), error: e.error().to_string() });
                }
            }
        }
        return Ok((named, unreadable));
    }
    let compiled = glob::Pattern::new(pattern).map_err(|e| bad(e.msg))?;
    let options = glob::MatchOptions { require_literal_separator: true, ..glob::MatchOptions::new() };
    // The literal leading directories: the walk starts there.
    let literal: Vec<&str> = pattern.split('/').take_while(|component| !is_glob(component)).collect();
    let start = match literal.join("/") {
        prefix if prefix.is_empty() => PathBuf::from(if pattern.starts_with('/') { "/" } else { "." }),
        prefix => PathBuf::from(prefix),
    };
    let mut walked = Collected::default();
    if std::fs::metadata(&start).is_ok_and(|m| m.is_dir()) {
        walk(&start, true, &mut walked);
    }
    unreadable.append(&mut walked.unreadable);
    let candidates = std::iter::once(start.clone()).chain(walked.found.into_iter().map(|found| found.path));
    for path in candidates {
        if compiled.matches_with(&path.to_string_lossy(), options) {
            named.push(path);
        }
    }
    Ok((named, unreadable))
}

/// Adds the entries under `dir` (its whole tree when `recursive`), without following links.
fn walk(dir: &Path, recursive: bool, into: &mut Collected) {
    into.append(walk_tree(dir.to_path_buf(), recursive, 0));
}

/// Levels of a tree whose subdirectories are listed side by side on the rayon pool; deeper
/// ones are listed by a loop on one thread, so that no depth of nesting can exhaust a stack.
const PARALLEL_LEVELS: usize = 12;

/// The entries under `dir`: its own entries, then (when `recursive`) its subdirectories' trees.
fn walk_tree(dir: PathBuf, recursive: bool, level: usize) -> Collected {
    let mut out = Collected::default();
    let mut pending = vec![dir];
    let mut subdirs = Vec::new();
    while let Some(dir) = pending.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) => {
                out.unreadable.push(Unreadable { path: dir, error: e.to_string() });
                continue;
            }
        };
        for entry in entries {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) => {
                    out.unreadable.push(Unreadable { path: dir.clone(), error: e.to_string() });
                    continue;
                }
            };
            let path = entry.path();
            match entry.file_type() {
                Ok(file_type) => {
                    if recursive && file_type.is_dir() {
                        if level < PARALLEL_LEVELS { subdirs.push(path.clone()) } else { pending.push(path.clone()) }
                    }
                    out.found.push(FoundPath { path, named: false, file_type });
                }
                Err(e) => out.unreadable.push(Unreadable { path, error: e.to_string() }),
            }
        }
    }
    let trees: Vec<Collected> = subdirs.into_par_iter().map(|dir| walk_tree(dir, true, level + 1)).collect();
    for tree in trees {
        out.append(tree);
    }
    out
}

/// Removes `.`, `..` and repeated separators without touching the file system.
pub(crate) fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::RootDir => out.push("/"),
            Component::CurDir | Component::Prefix(_) => {}
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(name) => out.push(name),
        }
    }
    out
}

/// For an absolute `path` that does not exist: the path it will have once created (its nearest
/// existing ancestor resolved, the rest as given, `.` and `..` removed) and that ancestor.
pub(crate) fn absent_root(path: &Path) -> Option<(PathBuf, PathBuf)> {
    let path = normalize(path);
    let existing = path.ancestors().skip(1).find(|ancestor| ancestor.is_dir())?;
    let rest = path.strip_prefix(existing).ok()?;
    let existing = std::fs::canonicalize(existing).ok()?;
    Some((existing.join(rest), existing))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(expanded: &Expanded, root: &Path) -> Vec<String> {
        expanded.found.iter().map(|found| found.path.strip_prefix(root).unwrap().display().to_string()).collect()
    }

    #[test]
    fn globs_directories_and_recursion() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("d/sub")).unwrap();
        std::fs::write(root.join("a.conf"), "a").unwrap();
        std::fs::write(root.join("b.txt"), "b").unwrap();
        std::fs::write(root.join("d/c"), "c").unwrap();
        std::fs::write(root.join("d/sub/e"), "e").unwrap();

        let glob = format!("{}/*.conf", root.display());
        let expanded = expand(std::slice::from_ref(&glob), false).unwrap();
        assert_eq!(paths(&expanded, root), ["a.conf"]);

        let d = root.join("d").display().to_string();
        let flat = expand(std::slice::from_ref(&d), false).unwrap();
        assert_eq!(paths(&flat, root), ["d", "d/c", "d/sub"]);
        let deep = expand(&[d.clone(), glob], true).unwrap();
        assert_eq!(paths(&deep, root), ["a.conf", "d", "d/c", "d/sub", "d/sub/e"]);
        assert!(deep.found.iter().find(|f| f.path.ends_with("d")).unwrap().named);
        assert!(!deep.found.iter().find(|f| f.path.ends_with("d/c")).unwrap().named);
    }

    /// `expand_at` finds exactly what `expand` finds at and below a path.
    #[test]
    fn expand_at_is_the_matching_part_of_expand() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("d/sub/deeper")).unwrap();
        std::fs::write(root.join("a.conf"), "a").unwrap();
        std::fs::write(root.join("d/c"), "c").unwrap();
        std::fs::write(root.join("d/sub/e"), "e").unwrap();
        std::fs::write(root.join("d/sub/deeper/f"), "f").unwrap();
        std::os::unix::fs::symlink(root.join("d/sub"), root.join("d/link")).unwrap();
        let patterns = [format!("{}/*.conf", root.display()), root.join("d").display().to_string()];
        for recursive in [false, true] {
            let all = expand(&patterns, recursive).unwrap();
            for target in ["a.conf", "d", "d/c", "d/sub", "d/sub/e", "d/sub/deeper", "d/link", "d/missing", "b.txt"] {
                let target = root.join(target);
                for deep in [false, true] {
                    let part = expand_at(&patterns, recursive, &target, deep).unwrap();
                    let expected: Vec<String> = all
                        .found
                        .iter()
                        .filter(|f| f.path == target || (deep && f.path.starts_with(&target)))
                        .map(|f| format!("{} {}", f.path.display(), f.named))
                        .collect();
                    let got: Vec<String> =
                        part.found.iter().map(|f| format!("{} {}", f.path.display(), f.named)).collect();
                    assert_eq!(got, expected, "target {} deep {deep} recursive {recursive}", target.display());
                }
            }
        }
    }

    /// A tree deeper than the levels listed side by side is walked whole, in byte order.
    #[test]
    fn deep_trees_are_walked_whole() {
        let dir = tempfile::tempdir().unwrap();
        let mut deepest = dir.path().to_path_buf();
        for level in 0..(PARALLEL_LEVELS * 3) {
            deepest.push(format!("d{level}"));
            std::fs::create_dir(&deepest).unwrap();
            std::fs::write(deepest.join("f"), "").unwrap();
        }
        let expanded = expand(&[dir.path().display().to_string()], true).unwrap();
        assert_eq!(expanded.found.len(), 1 + PARALLEL_LEVELS * 3 * 2);
        assert!(expanded.found.iter().any(|found| found.path == deepest.join("f")));
        let bytes: Vec<&[u8]> = expanded.found.iter().map(|found| found.path.as_os_str().as_bytes()).collect();
        assert!(bytes.windows(2).all(|pair| pair[0] < pair[1]), "sorted, no duplicates");
    }

    /// `**` does not follow links: a link to an ancestor does not make the match recurse.
    #[test]
    fn recursive_glob_does_not_follow_links() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("d/sub")).unwrap();
        std::fs::write(root.join("f.conf"), "").unwrap();
        std::fs::write(root.join("d/sub/g.conf"), "").unwrap();
        std::fs::write(root.join("d/h.txt"), "").unwrap();
        std::os::unix::fs::symlink("..", root.join("d/up")).unwrap();
        std::os::unix::fs::symlink(".", root.join("d/sub/self")).unwrap();
        let expanded = expand(&[format!("{}/**/*.conf", root.display())], false).unwrap();
        assert_eq!(paths(&expanded, root), ["d/sub/g.conf", "f.conf"]);
        assert!(expanded.found.iter().all(|f| f.named));
        let all = expand(&[format!("{}/d/**", root.display())], false).unwrap();
        assert!(paths(&all, root).contains(&"d/up".to_string()), "{:?}", paths(&all, root));
        // Unchanged for patterns without `**`.
        let flat = expand(&[format!("{}/*/h.txt", root.display())], false).unwrap();
        assert_eq!(paths(&flat, root), ["d/h.txt"]);
    }

    #[test]
    fn bad_glob_is_an_error_naming_it_and_missing_path_is_unreadable() {
        let err = expand(&["/etc/[".to_string()], false).unwrap_err().to_string();
        assert!(err.contains("/etc/["), "{err}");
        assert!(check_pattern("/etc/[").is_err());
        assert!(check_pattern("/etc/*.conf").is_ok());

        let expanded = expand(&["/nonexistent/ids-test".to_string()], false).unwrap();
        assert!(expanded.found.is_empty());
        assert_eq!(expanded.unreadable[0].path, Path::new("/nonexistent/ids-test"));
        assert!(expanded.unreadable[0].error.contains("No such file"), "{:?}", expanded.unreadable);
    }
}
