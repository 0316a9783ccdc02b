//! Hostile process trees: a web server, or a process it started, executing a program.
//!
//! Exec events carry the new program, its pid and its parent's pid. The ancestors are read from
//! `/proc/PID/stat` (name and parent) at event time, up to [`MAX_DEPTH`] levels; a web server
//! among them makes the exec an alert — a shell is `webserver-exec-shell` (high), anything else
//! `webserver-exec` (medium). A web server re-executing itself (upgrade, reload) is not.
use std::path::Path;

/// Ancestors looked at above the new process.
pub const MAX_DEPTH: usize = 6;

const WEB_SERVERS: &[&str] =
    &["nginx", "apache2", "httpd", "lighttpd", "caddy", "uwsgi", "hiawatha", "openlitespeed", "litespeed", "lshttpd"];
const WEB_SERVER_PREFIXES: &[&str] = &["php-fpm", "php-cgi", "lsphp"];
const SHELLS: &[&str] = &["sh", "bash", "dash", "zsh", "ksh", "mksh", "csh", "tcsh", "fish", "ash", "busybox"];

/// Whether a process name (comm, at most 15 bytes) or program basename is a web server.
pub fn is_web_server(name: &str) -> bool {
    let name = name.trim();
    WEB_SERVERS.contains(&name)
        || WEB_SERVER_PREFIXES
            .iter()
            .any(|p| name.starts_with(p) && (name.len() == p.len() || !name.as_bytes()[p.len()].is_ascii_alphabetic()))
}

pub fn is_shell(program: &str) -> bool {
    SHELLS.contains(&basename(program))
}

pub fn basename(program: &str) -> &str {
    Path::new(program).file_name().and_then(|n| n.to_str()).unwrap_or(program)
}

/// A process as seen in `/proc`.
#[derive(Debug, Clone, PartialEq)]
pub struct Ancestor {
    pub pid: u32,
    pub comm: String,
}

/// `(comm, ppid)` from `/proc/PID/stat`; the name is between the first `(` and the last `)`.
pub fn proc_stat(pid: u32) -> Option<(String, u32)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    crate::process::procfs::parse_stat(&text)
}

/// The ancestors of a process whose parent is `ppid`, nearest first, ending at the first web
/// server found; `None` if none of them is one.
pub fn web_server_ancestry(ppid: u32) -> Option<Vec<Ancestor>> {
    let mut chain = Vec::new();
    let mut pid = ppid;
    for _ in 0..MAX_DEPTH {
        if pid <= 1 {
            return None;
        }
        let (comm, parent) = proc_stat(pid)?;
        let server = is_web_server(&comm);
        chain.push(Ancestor { pid, comm });
        if server {
            return Some(chain);
        }
        pid = parent;
    }
    None
}

/// The same, from the ancestors the process table names (parent first): no `/proc` read.
pub(crate) fn web_server_ancestry_of(view: &crate::process::ProcessView) -> Option<Vec<Ancestor>> {
    let mut chain = Vec::new();
    for ancestor in view.ancestors.iter().take(MAX_DEPTH) {
        if ancestor.pid <= 1 {
            return None;
        }
        chain.push(Ancestor { pid: ancestor.pid, comm: ancestor.comm.clone() });
        if is_web_server(&ancestor.comm) {
            return Some(chain);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn web_server_names() {
        for name in ["nginx", "apache2", "httpd", "php-fpm8.2", "php-fpm", "php-cgi", "lighttpd", "caddy"] {
            assert!(is_web_server(name), "{name}");
        }
        for name in ["bash", "sshd", "php", "phpunit", "nginx-exporter", "cron", "httpdx"] {
            assert!(!is_web_server(name), "{name}");
        }
        assert!(is_shell("/bin/sh") && is_shell("/usr/bin/bash") && !is_shell("/usr/bin/id"));
    }

    #[test]
    fn a_process_started_under_a_program_named_nginx_has_that_ancestry() {
        // A real process tree: a copy of sh named `nginx` runs `sleep` as its child.
        let dir = tempfile::tempdir().unwrap();
        let server = dir.path().join("nginx");
        std::fs::copy("/bin/sh", &server).unwrap();
        let mut child = std::process::Command::new(&server).args(["-c", "sleep 5; true"]).spawn().unwrap();
        let server_pid = child.id();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let sleeper = loop {
            let found = std::fs::read_dir("/proc").unwrap().flatten().find_map(|e| {
                let pid: u32 = e.file_name().to_str()?.parse().ok()?;
                let (comm, ppid) = proc_stat(pid)?;
                (comm == "sleep" && ppid == server_pid).then_some(pid)
            });
            if let Some(pid) = found {
                break pid;
            }
            assert!(std::time::Instant::now() < deadline, "sleep child of the nginx copy never appeared");
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        let (_, parent) = proc_stat(sleeper).unwrap();
        let chain = web_server_ancestry(parent).unwrap();
        assert_eq!(chain.last().unwrap(), &Ancestor { pid: server_pid, comm: "nginx".into() });
        assert_eq!(web_server_ancestry(std::process::id()), None);
        let _ = child.kill();
        let _ = child.wait();
    }
}
