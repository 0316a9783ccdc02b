//! Logins learned from sshd's `Accepted METHOD for USER from ADDR port N` lines, by the pid of the
//! sshd process that wrote them: a process whose ancestry holds that pid came in through that
//! login. The detectors read the lines (log files or the journal) and hand them here.
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use crate::time::Timestamp;

/// Logins remembered at most; the oldest go first.
const MAX_LOGINS: usize = 4096;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Login {
    pub(crate) service: &'static str,
    pub(crate) user: String,
    pub(crate) from: IpAddr,
    pub(crate) port: u16,
    /// When the line was read.
    pub(crate) time: Timestamp,
    /// The sshd process that accepted it.
    pub(crate) pid: u32,
}

#[derive(Debug, Default)]
pub(crate) struct Logins {
    by_pid: Mutex<HashMap<u32, Login>>,
    /// Bumped at each new login, so views built without one look again.
    generation: AtomicU64,
}

impl Logins {
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub(crate) fn get(&self, pid: u32) -> Option<Login> {
        self.by_pid.lock().unwrap_or_else(|e| e.into_inner()).get(&pid).cloned()
    }

    pub(crate) fn accepted(&self, pid: u32, user: &str, from: IpAddr, port: u16) {
        let mut by_pid = self.by_pid.lock().unwrap_or_else(|e| e.into_inner());
        if by_pid.len() >= MAX_LOGINS
            && let Some(oldest) = by_pid.values().min_by_key(|l| l.time).map(|l| l.pid)
        {
            by_pid.remove(&oldest);
        }
        let login = Login { service: "sshd", user: user.to_string(), from, port, time: Timestamp::now(), pid };
        by_pid.insert(pid, login);
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Takes an sshd message (`Accepted publickey for alice from 198.18.0.2 port 50000 ssh2`)
    /// written by process `pid`; other messages are left alone. Returns whether it was a login.
    pub(crate) fn take_sshd_message(&self, pid: u32, message: &str) -> bool {
        match parse_accepted(message) {
            Some((user, from, port)) => {
                self.accepted(pid, user, from, port);
                true
            }
            None => false,
        }
    }
}

/// `(user, address, port)` of an `Accepted` message. The user name may hold spaces only in
/// theory: sshd writes it between `for ` and the last ` from `.
pub(crate) fn parse_accepted(message: &str) -> Option<(&str, IpAddr, u16)> {
    let rest = message.strip_prefix("Accepted ")?;
    let (_method, rest) = rest.split_once(" for ")?;
    let (user, rest) = rest.rsplit_once(" from ")?;
    let mut fields = rest.split_ascii_whitespace();
    let from = fields.next()?.parse().ok()?;
    if fields.next()? != "port" {
        return None;
    }
    let port = fields.next()?.parse().ok()?;
    Some((user, from, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_lines_parse_and_others_do_not() {
        assert_eq!(
            parse_accepted("Accepted publickey for alice from 198.18.0.2 port 50000 ssh2: ED25519 SHA256:abc"),
            Some(("alice", "198.18.0.2".parse().unwrap(), 50000))
        );
        assert_eq!(
            parse_accepted("Accepted password for bob from 2001:db8::1 port 22 ssh2"),
            Some(("bob", "2001:db8::1".parse().unwrap(), 22))
        );
        assert_eq!(parse_accepted("Failed password for alice from 198.18.0.2 port 50000 ssh2"), None);
        assert_eq!(parse_accepted("Accepted publickey for alice from nowhere port 1 ssh2"), None);
        assert_eq!(parse_accepted("Accepted publickey for alice from 198.18.0.2 port x"), None);
    }

    #[test]
    fn the_oldest_login_goes_when_full() {
        let logins = Logins::default();
        for pid in 0..(MAX_LOGINS as u32 + 1) {
            logins.accepted(pid + 1, "u", "192.0.2.1".parse().unwrap(), 1);
        }
        assert_eq!(logins.by_pid.lock().unwrap().len(), MAX_LOGINS);
        assert!(logins.get(MAX_LOGINS as u32 + 1).is_some());
        assert_eq!(logins.generation(), MAX_LOGINS as u64 + 1);
    }
}
