//! Cgroup v2 ids (what the kernel stamps on a record: the inode number of the cgroup's directory)
//! turned into paths, by walking the unified hierarchy when an id is new (at most once a second),
//! and container ids read off those paths.
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Cgroups remembered at most; past it the cache starts over (the next walk fills it again).
const MAX_CGROUPS: usize = 65_536;
const WALK_AT_MOST_EVERY: Duration = Duration::from_secs(1);
/// Directories a walk visits at most, and how deep.
const WALK_LIMIT: usize = 100_000;
const WALK_DEPTH: usize = 16;

pub(super) struct CgroupNames {
    /// Where the unified hierarchy is mounted; `None` on hosts with cgroup v1 only.
    root: Option<PathBuf>,
    paths: HashMap<u64, Arc<str>>,
    last_walk: Option<Instant>,
}

impl CgroupNames {
    pub(super) fn new() -> Self {
        let root = std::fs::read_to_string("/proc/self/mountinfo").ok().and_then(|text| unified_root(&text));
        Self { root, paths: HashMap::new(), last_walk: None }
    }

    /// The id of the cgroup at `path` (as `/proc/PID/cgroup` names it), remembered with its path.
    pub(super) fn learn(&mut self, path: &str) -> Option<u64> {
        let root = self.root.as_ref()?;
        let id = std::fs::metadata(root.join(path.trim_start_matches('/'))).ok()?.ino();
        self.remember(id, path);
        Some(id)
    }

    pub(super) fn path_of(&mut self, id: u64) -> Option<Arc<str>> {
        if id == 0 {
            return None;
        }
        if let Some(path) = self.paths.get(&id) {
            return Some(path.clone());
        }
        let now = Instant::now();
        if self.last_walk.is_some_and(|at| now.duration_since(at) < WALK_AT_MOST_EVERY) {
            return None;
        }
        self.last_walk = Some(now);
        self.walk();
        self.paths.get(&id).cloned()
    }

    fn remember(&mut self, id: u64, path: &str) {
        if self.paths.len() >= MAX_CGROUPS {
            self.paths.clear();
        }
        self.paths.insert(id, path.into());
    }

    fn walk(&mut self) {
        let Some(root) = self.root.clone() else { return };
        let mut stack = vec![(root.clone(), 0usize)];
        let mut visited = 0;
        while let Some((dir, depth)) = stack.pop() {
            visited += 1;
            if visited > WALK_LIMIT {
                break;
            }
            let Ok(meta) = std::fs::metadata(&dir) else { continue };
            let relative = dir.strip_prefix(&root).unwrap_or(Path::new(""));
            self.remember(meta.ino(), &format!("/{}", relative.display()));
            if depth >= WALK_DEPTH {
                continue;
            }
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push((entry.path(), depth + 1));
                }
            }
        }
    }
}

/// The mount point of the `cgroup2` filesystem in a mountinfo listing.
fn unified_root(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (before, after) = line.split_once(" - ")?;
        if after.split_ascii_whitespace().next()? != "cgroup2" {
            return None;
        }
        Some(PathBuf::from(before.split(' ').nth(4)?))
    })
}

/// The container id a cgroup path names: a 64-hex-digit component, alone or as
/// `docker-ID.scope`, `cri-containerd-ID.scope`, `crio-ID.scope`, `libpod-ID.scope`
/// (podman's `libpod-conmon-` is the monitor beside the container, not in it).
pub(crate) fn container_of(path: &str) -> Option<String> {
    path.rsplit('/').find_map(|component| {
        let name = component.strip_suffix(".scope").unwrap_or(component);
        if name.starts_with("libpod-conmon-") {
            return None;
        }
        let id = ["docker-", "cri-containerd-", "crio-", "libpod-"]
            .iter()
            .find_map(|prefix| name.strip_prefix(prefix))
            .unwrap_or(name);
        (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f2a5c1b9e8d7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a";

    #[test]
    fn container_ids_of_the_usual_runtimes_are_found() {
        for path in [
            format!("/system.slice/docker-{ID}.scope"),
            format!("/docker/{ID}"),
            format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/cri-containerd-{ID}.scope"),
            format!("/kubepods/burstable/pod0a1b/{ID}"),
            format!("/machine.slice/libpod-{ID}.scope/container"),
            format!("/kubepods.slice/crio-{ID}.scope"),
        ] {
            assert_eq!(container_of(&path).as_deref(), Some(ID), "{path}");
        }
        assert_eq!(container_of(&format!("/machine.slice/libpod-conmon-{ID}.scope")), None);
        assert_eq!(container_of("/user.slice/user-1000.slice/session-3.scope"), None);
        assert_eq!(container_of("/"), None);
    }

    #[test]
    fn the_unified_mount_is_found_in_mountinfo() {
        let text =
            "24 31 0:22 / /sys rw - sysfs sysfs rw\n35 24 0:30 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw\n";
        assert_eq!(unified_root(text), Some(PathBuf::from("/sys/fs/cgroup")));
        assert_eq!(unified_root("24 31 0:22 / /sys rw - sysfs sysfs rw\n"), None);
    }

    #[test]
    fn this_process_cgroup_id_turns_back_into_its_path() {
        let mut names = CgroupNames::new();
        let Some(path) =
            std::fs::read_to_string("/proc/self/cgroup").ok().and_then(|t| super::super::procfs::cgroup_v2_path(&t))
        else {
            panic!("this host has no unified cgroup hierarchy");
        };
        let id = names.learn(&path).expect("the cgroup directory is found");
        let mut fresh = CgroupNames::new();
        assert_eq!(fresh.path_of(id).as_deref(), Some(path.as_str()));
    }
}
