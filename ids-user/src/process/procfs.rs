//! What `/proc/PID` says of a process the table learns without a fork record (those running at
//! start, or whose record was lost). Every file is optional: a process may end between two reads.
use std::path::Path;

use ids_common::NO_LOGIN;

pub(super) struct Found {
    pub(super) ppid: u32,
    pub(super) uid: u32,
    pub(super) auid: u32,
    pub(super) sessionid: u32,
    pub(super) comm: String,
    pub(super) exe: Option<String>,
    pub(super) argv: Vec<String>,
    /// The cgroup v2 path (the `0::` line).
    pub(super) cgroup: Option<String>,
}

/// The pids under `/proc`.
pub(super) fn pids() -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok()).collect()
}

pub(super) fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

pub(super) fn exe(pid: u32) -> Option<String> {
    let link = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    link.to_str().map(|s| s.trim_end_matches(" (deleted)").to_string())
}

pub(super) fn read(pid: u32) -> Option<Found> {
    let dir = format!("/proc/{pid}");
    let stat = std::fs::read_to_string(format!("{dir}/stat")).ok()?;
    let (comm, ppid) = parse_stat(&stat)?;
    let status = std::fs::read_to_string(format!("{dir}/status")).unwrap_or_default();
    let number = |name: &str| {
        std::fs::read_to_string(format!("{dir}/{name}")).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(NO_LOGIN)
    };
    let cmdline = std::fs::read(format!("{dir}/cmdline")).unwrap_or_default();
    Some(Found {
        ppid,
        uid: real_uid(&status).unwrap_or(u32::MAX),
        auid: number("loginuid"),
        sessionid: number("sessionid"),
        comm,
        exe: exe(pid),
        argv: split_nul(&cmdline),
        cgroup: std::fs::read_to_string(format!("{dir}/cgroup")).ok().and_then(|text| cgroup_v2_path(&text)),
    })
}

/// `(comm, ppid)` of a `/proc/PID/stat` line: the name sits between the first `(` and the last `)`.
/// The command name and parent pid of a `/proc/PID/stat` line (the name may hold `)` and spaces).
pub(crate) fn parse_stat(text: &str) -> Option<(String, u32)> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_string();
    let mut rest = text.get(close + 1..)?.split_ascii_whitespace();
    let _state = rest.next()?;
    Some((comm, rest.next()?.parse().ok()?))
}

fn real_uid(status: &str) -> Option<u32> {
    status.lines().find_map(|line| line.strip_prefix("Uid:"))?.split_ascii_whitespace().next()?.parse().ok()
}

fn split_nul(bytes: &[u8]) -> Vec<String> {
    let bytes = bytes.strip_suffix(&[0]).unwrap_or(bytes);
    if bytes.is_empty() {
        return Vec::new();
    }
    bytes.split(|&b| b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect()
}

/// The path of the unified hierarchy's line (`0::/user.slice/...`).
pub(super) fn cgroup_v2_path(text: &str) -> Option<String> {
    text.lines().find_map(|line| line.strip_prefix("0::")).map(|path| path.trim_end_matches(" (deleted)").to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_names_with_spaces_and_parentheses_parse() {
        assert_eq!(parse_stat("12 (a) b)) S 7 12 12"), Some(("a) b)".into(), 7)));
        assert_eq!(parse_stat("12 (x"), None);
    }

    #[test]
    fn this_process_reads_back() {
        let me = read(std::process::id()).unwrap();
        assert_eq!(me.ppid, std::os::unix::process::parent_id());
        assert!(me.exe.is_some());
        assert!(!me.argv.is_empty());
    }

    #[test]
    fn the_unified_cgroup_line_is_found() {
        assert_eq!(
            cgroup_v2_path("12:cpu:/x\n0::/user.slice/session-3.scope\n").as_deref(),
            Some("/user.slice/session-3.scope")
        );
        assert_eq!(cgroup_v2_path("12:cpu:/x\n"), None);
    }
}
