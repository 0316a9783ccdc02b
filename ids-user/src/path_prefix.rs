//! Sets of paths asked, for every file event, whether a path is one of them or lies inside one. The answer is `Path::starts_with`'s (component by component), but found by comparing
//! bytes: every configured root and nearly every reported path is already in the form that
//! `Path::components` leaves unchanged, and comparing components cost more than the rest of an
//! event's handling (the events writer asks it of each event for the integrity and detect
//! workers and for the watch set).
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// The bytes of a path that `Path::components` would not change, without a trailing `/` (but
/// for `/` itself); `None` when components would normalize something (`//`, `/./`, a trailing
/// `/.`, a leading `./`). One pass over the bytes.
fn normal_bytes(path: &Path) -> Option<&[u8]> {
    let bytes = path.as_os_str().as_bytes();
    if bytes.starts_with(b"./") {
        return None;
    }
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'/' {
            match bytes.get(index + 1) {
                Some(b'/') => return None,
                Some(b'.') if matches!(bytes.get(index + 2), None | Some(b'/')) => return None,
                _ => {}
            }
        }
        index += 1;
    }
    Some(match bytes {
        [rest @ .., b'/'] if !rest.is_empty() => rest,
        _ => bytes,
    })
}

/// `path` is `root` or lies below it; both in normal form.
fn normal_within(path: &[u8], root: &[u8]) -> bool {
    match root {
        b"/" => path.starts_with(b"/"),
        _ => path.starts_with(root) && (path.len() == root.len() || path[root.len()] == b'/' || root.is_empty()),
    }
}

/// PathSet, each with its bytes in normal form when it has one.
#[derive(Clone, Default)]
pub(crate) struct PathSet {
    paths: Vec<PathBuf>,
    normal: Vec<Option<Box<[u8]>>>,
}

impl PathSet {
    pub(crate) fn new(paths: impl IntoIterator<Item = PathBuf>) -> Self {
        let mut roots = Self::default();
        for path in paths {
            roots.push(path);
        }
        roots
    }

    pub(crate) fn push(&mut self, path: PathBuf) {
        self.normal.push(normal_bytes(&path).map(Box::from));
        self.paths.push(path);
    }

    /// Keeps the paths for which `keep` is true.
    pub(crate) fn retain(&mut self, keep: impl FnMut(&PathBuf) -> bool) {
        let paths = std::mem::take(&mut self.paths);
        *self = Self::new(paths.into_iter().filter(keep));
    }

    pub(crate) fn paths(&self) -> &[PathBuf] {
        &self.paths
    }

    /// Whether `path` is one of the set (as `Path`'s `==` compares, component by component).
    pub(crate) fn has(&self, path: &Path) -> bool {
        let path_normal = normal_bytes(path);
        self.paths.iter().zip(&self.normal).any(|(one, one_normal)| match (path_normal, one_normal) {
            (Some(path_normal), Some(one_normal)) => path_normal == &one_normal[..],
            _ => path == one,
        })
    }

    /// Whether `path` is one of the set or lies inside one.
    pub(crate) fn covers(&self, path: &Path) -> bool {
        let path_normal = normal_bytes(path);
        self.paths.iter().zip(&self.normal).any(|(root, root_normal)| match (path_normal, root_normal) {
            (Some(path_normal), Some(root_normal)) => normal_within(path_normal, root_normal),
            _ => path.starts_with(root),
        })
    }

    /// Whether `path` is one of the set, lies inside one, or holds one.
    pub(crate) fn overlaps(&self, path: &Path) -> bool {
        let path_normal = normal_bytes(path);
        self.paths.iter().zip(&self.normal).any(|(root, root_normal)| match (path_normal, root_normal) {
            (Some(path_normal), Some(root_normal)) => {
                normal_within(path_normal, root_normal) || normal_within(root_normal, path_normal)
            }
            _ => path.starts_with(root) || root.starts_with(path),
        })
    }
}

impl PartialEq for PathSet {
    fn eq(&self, other: &Self) -> bool {
        self.paths == other.paths
    }
}

impl fmt::Debug for PathSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(&self.paths).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATHS: &[&str] = &[
        "",
        "/",
        "//",
        "/etc",
        "/etc/",
        "/etc/hosts",
        "/etcetera",
        "/etc//hosts",
        "/etc/./hosts",
        "/etc/.",
        "./etc",
        "etc",
        "etc/hosts",
        "/etc/hosts/",
        "/usr/bin",
        "/usr/bin/ls",
        "/usr/binary",
        "/e",
        "/etc/../etc/hosts",
        "/var/www/html/a.php",
        "/var/www/html2",
        "/etc/.hidden",
        "/.",
        "/..",
    ];

    #[test]
    fn answers_as_path_eq_and_starts_with() {
        for root in PATHS {
            let roots = PathSet::new([PathBuf::from(root)]);
            for path in PATHS {
                let path = Path::new(path);
                assert_eq!(roots.has(path), path == Path::new(root), "{path:?} is {root:?}");
                assert_eq!(roots.covers(path), path.starts_with(root), "{path:?} inside {root:?}");
                assert_eq!(
                    roots.overlaps(path),
                    path.starts_with(root) || Path::new(root).starts_with(path),
                    "{path:?} overlapping {root:?}"
                );
            }
        }
    }

    #[test]
    fn any_root_of_several_answers() {
        let roots = PathSet::new(["/etc", "/usr/bin", "/var/www/"].map(PathBuf::from));
        assert!(roots.covers(Path::new("/var/www/a/b.php")));
        assert!(roots.covers(Path::new("/usr/bin")));
        assert!(!roots.covers(Path::new("/usr")));
        assert!(roots.overlaps(Path::new("/usr")));
        assert!(!roots.overlaps(Path::new("/var/tmp")));
    }
}
