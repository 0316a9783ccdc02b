//! Events as the daemon writes them: one JSON object per line, field names documented in README.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ids_common::{
    AF_INET, ConnectEvent, DIRECTION_IN, DIRECTION_LISTEN, DIRECTION_UNLISTEN, EventHeader, ExecEvent, FileOp,
    IPPROTO_TCP, MODULE_LOAD, ModuleEvent,
};
use serde::Serialize;

use crate::process::ProcessView;
use crate::time::Timestamp;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Event {
    pub time: Timestamp,
    pub kind: EventKind,
    pub pid: u32,
    pub tid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    pub comm: String,
    #[serde(flatten)]
    pub detail: Detail,
    /// Who: the process table's view of `pid` (absent only where no table runs, `ids` tools).
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "crate::process::serialize_rendered")]
    pub process: Option<Arc<ProcessView>>,
}

/// What the sensor saw.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Exec,
    File,
    Module,
    Listen,
    Connect,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(untagged)]
pub enum Detail {
    Exec {
        filename: String,
        argv: Vec<String>,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        argv_truncated: bool,
        /// SHA-256 of the program as it was when it ran (absent: not hashed).
        #[serde(skip_serializing_if = "Option::is_none")]
        exe_sha256: Option<Arc<str>>,
    },
    File {
        #[serde(serialize_with = "file_op")]
        op: FileOp,
        /// A path that is not UTF-8 is written percent-encoded (see `crate::item::escape_path`)
        /// and `paths_escaped` is set.
        #[serde(serialize_with = "escaped_path")]
        path: PathBuf,
        #[serde(skip_serializing_if = "Option::is_none", serialize_with = "escaped_new_path")]
        new_path: Option<PathBuf>,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        paths_escaped: bool,
        dev: u64,
        ino: u64,
    },
    Module {
        /// `load` or `unload`.
        op: &'static str,
        module: String,
    },
    Listen {
        state: &'static str,
        protocol: &'static str,
        addr: IpAddr,
        port: u16,
    },
    Connect {
        direction: &'static str,
        protocol: &'static str,
        saddr: Option<IpAddr>,
        sport: u16,
        daddr: IpAddr,
        dport: u16,
    },
}

fn file_op<S: serde::Serializer>(op: &FileOp, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(file_op_name(*op))
}

fn escaped_path<S: serde::Serializer>(path: &std::path::Path, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&crate::item::escape_path(path).1)
}

fn escaped_new_path<S: serde::Serializer>(path: &Option<PathBuf>, serializer: S) -> Result<S::Ok, S::Error> {
    match path {
        Some(path) => escaped_path(path, serializer),
        None => serializer.serialize_none(),
    }
}

/// Whether `path` (or `new_path`) needs percent-encoding in JSON: it is not UTF-8.
pub fn paths_escaped(path: &std::path::Path, new_path: Option<&std::path::Path>) -> bool {
    std::iter::once(path).chain(new_path).any(|p| p.to_str().is_none())
}

pub fn file_op_name(op: FileOp) -> &'static str {
    match op {
        FileOp::Write => "write",
        FileOp::Create => "create",
        FileOp::Rename => "rename",
        FileOp::Unlink => "unlink",
        FileOp::Attrib => "attrib",
    }
}

/// Turns CLOCK_BOOTTIME stamps into wall-clock time.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    boot_epoch: SystemTime,
}

impl Clock {
    pub fn new() -> Self {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: valid pointer to a timespec.
        unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
        let since_boot = Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32);
        Self { boot_epoch: SystemTime::now() - since_boot }
    }

    /// The wall-clock time of a CLOCK_BOOTTIME stamp.
    pub fn at(&self, boot_ns: u64) -> Timestamp {
        Timestamp::at(self.boot_epoch + Duration::from_nanos(boot_ns))
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

pub fn with_header(clock: &Clock, header: &EventHeader, kind: EventKind, detail: Detail) -> Event {
    Event {
        time: clock.at(header.time_ns),
        kind,
        pid: header.pid,
        tid: header.tid,
        ppid: header.ppid,
        uid: header.uid,
        gid: header.gid,
        comm: c_string(&header.comm),
        detail,
        process: None,
    }
}

pub fn exec(clock: &Clock, event: &ExecEvent) -> Event {
    let args = &event.args[..(event.args_len as usize).min(event.args.len())];
    let mut argv = arguments(args);
    if event.argc != 0 {
        argv.truncate(event.argc as usize);
    }
    let detail = Detail::Exec {
        filename: c_string(&event.filename),
        argv,
        argv_truncated: event.truncated & ids_common::EXEC_ARGS_TRUNCATED != 0,
        exe_sha256: None,
    };
    with_header(clock, &event.header, EventKind::Exec, detail)
}

pub fn module(clock: &Clock, event: &ModuleEvent) -> Event {
    let op = if event.op == MODULE_LOAD { "load" } else { "unload" };
    with_header(clock, &event.header, EventKind::Module, Detail::Module { op, module: c_string(&event.name) })
}

fn address(family: u16, bytes: &[u8; 16]) -> IpAddr {
    if family == AF_INET {
        IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(*bytes))
    }
}

pub fn connect(clock: &Clock, event: &ConnectEvent) -> Event {
    let saddr = address(event.family, &event.saddr);
    if event.direction == DIRECTION_LISTEN || event.direction == DIRECTION_UNLISTEN {
        let detail = Detail::Listen {
            state: if event.direction == DIRECTION_LISTEN { "listen" } else { "closed" },
            protocol: "tcp",
            addr: saddr,
            port: event.sport,
        };
        return with_header(clock, &event.header, EventKind::Listen, detail);
    }
    let detail = Detail::Connect {
        direction: if event.direction == DIRECTION_IN { "in" } else { "out" },
        protocol: if event.protocol == IPPROTO_TCP { "tcp" } else { "udp" },
        saddr: (!saddr.is_unspecified()).then_some(saddr),
        sport: event.sport,
        daddr: address(event.family, &event.daddr),
        dport: event.dport,
    };
    with_header(clock, &event.header, EventKind::Connect, detail)
}

/// The bytes of a NUL-terminated C string in a fixed buffer, lossily as UTF-8.
pub(crate) fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// NUL-separated arguments.
pub(crate) fn arguments(bytes: &[u8]) -> Vec<String> {
    let bytes = bytes.strip_suffix(&[0]).unwrap_or(bytes);
    if bytes.is_empty() {
        return Vec::new();
    }
    bytes.split(|&b| b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sensor::decode::tests::{connect_event, exec_event};

    #[test]
    fn exec_json_has_the_documented_fields() {
        let json = serde_json::to_value(exec(&Clock::new(), &exec_event("/bin/ls", &["ls", "-l"]))).unwrap();
        assert_eq!(json["kind"], "exec");
        assert_eq!(json["filename"], "/bin/ls");
        assert_eq!(json["argv"], serde_json::json!(["ls", "-l"]));
        assert_eq!(json["comm"], "bash");
        assert_eq!(json["pid"], 10);
        assert_eq!(json["ppid"], 1);
        assert!(json["time"].as_str().unwrap().ends_with('Z'));
    }

    #[test]
    fn exec_argc_keeps_the_environment_out_of_argv() {
        let mut raw = exec_event("/bin/true", &["/bin/true", "a", "HOME=/root", "PATH=/bin"]);
        raw.argc = 2;
        let json = serde_json::to_value(exec(&Clock::new(), &raw)).unwrap();
        assert_eq!(json["argv"], serde_json::json!(["/bin/true", "a"]));
    }

    #[test]
    fn listen_json_names_the_socket() {
        let mut raw = connect_event();
        raw.direction = DIRECTION_LISTEN;
        raw.sport = 8080;
        raw.saddr = raw.daddr;
        let json = serde_json::to_value(connect(&Clock::new(), &raw)).unwrap();
        assert_eq!(json["kind"], "listen");
        assert_eq!(json["state"], "listen");
        assert_eq!(json["addr"], "127.0.0.1");
        assert_eq!(json["port"], 8080);
    }

    #[test]
    fn connect_json_has_the_documented_fields() {
        let json = serde_json::to_value(connect(&Clock::new(), &connect_event())).unwrap();
        assert_eq!(json["direction"], "out");
        assert_eq!(json["protocol"], "tcp");
        assert_eq!(json["daddr"], "127.0.0.1");
        assert_eq!(json["dport"], 443);
        assert_eq!(json["saddr"], serde_json::Value::Null);
    }
}
