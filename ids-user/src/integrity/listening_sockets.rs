//! `listening_sockets`: TCP sockets in LISTEN state (`0A`) and bound, unconnected UDP sockets
//! (state `07` with a zero remote address) from `/proc/net/{tcp,tcp6,udp,udp6}`, with the
//! programs holding them, found by scanning `/proc/*/fd` for `socket:[inode]` links.
//!
//! Item id `listen:<proto>:<addr>:<port>`, the IPv6 address in brackets
//! (`listen:tcp:0.0.0.0:22`, `listen:tcp6:[::1]:631`). The detail holds the protocol, address,
//! port, owning uid and the sorted executables (`/proc/<pid>/exe`, or `comm` in brackets when the
//! link cannot be read) of the processes holding the socket; inode and pids change on every
//! restart and are left out. Sockets sharing an address (`SO_REUSEPORT`) are one item.
//! The files describe the network namespace of the scanning process only.
use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{Collector, CollectorError, Item, KindSpec};
use crate::integrity::config::CollectorConfig;

pub const SPEC: KindSpec = KindSpec { kind: "listening_sockets", settings: &[], construct };

fn construct(config: &CollectorConfig) -> Result<Box<dyn Collector>, CollectorError> {
    Ok(Box::new(ListeningSockets::new(&config.name, "/proc")))
}

const TCP_LISTEN: &str = "0A";
const UDP_UNCONNECTED: &str = "07";
const PROTOCOLS: [&str; 4] = ["tcp", "tcp6", "udp", "udp6"];

#[derive(Debug, Clone)]
pub struct ListeningSockets {
    name: String,
    proc_root: PathBuf,
}

#[derive(Debug, Serialize)]
struct ListenDetail {
    proto: &'static str,
    addr: String,
    port: u16,
    uid: u32,
    programs: BTreeSet<String>,
}

/// One socket line of a `/proc/net` file.
#[derive(Debug, Clone, PartialEq)]
struct Socket {
    addr: String,
    port: u16,
    uid: u32,
    inode: u64,
}

impl ListeningSockets {
    /// `proc_root` is `/proc`, or a fixture tree in tests.
    pub fn new(name: &str, proc_root: impl Into<PathBuf>) -> Self {
        Self { name: name.to_string(), proc_root: proc_root.into() }
    }
}

impl Collector for ListeningSockets {
    fn follows(&self, trigger: super::Trigger) -> bool {
        trigger == super::Trigger::ListeningSockets
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn collect(&self) -> Result<Vec<Item>, CollectorError> {
        let owners = socket_owners(&self.proc_root);
        let mut by_id: BTreeMap<String, ListenDetail> = BTreeMap::new();
        let mut items = Vec::new();
        for proto in PROTOCOLS {
            let path = self.proc_root.join("net").join(proto);
            let text = match std::fs::read_to_string(&path) {
                Ok(text) => text,
                // A kernel without IPv6 has no tcp6/udp6.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && proto.ends_with('6') => continue,
                Err(source) => {
                    return Err(CollectorError::Read {
                        collector: self.name.clone(),
                        path: path.display().to_string(),
                        source,
                    });
                }
            };
            let (sockets, bad_lines) = parse_sockets(&text, proto);
            for (number, line) in bad_lines.iter().enumerate() {
                let id = format!("listen:{proto}:unparsable:{number}");
                items.push(Item::error(id, format!("{}: {line:?}", path.display())));
            }
            for socket in sockets {
                let id = format!("listen:{proto}:{}:{}", socket.addr, socket.port);
                let detail = by_id.entry(id).or_insert_with(|| ListenDetail {
                    proto,
                    addr: socket.addr.clone(),
                    port: socket.port,
                    uid: socket.uid,
                    programs: BTreeSet::new(),
                });
                if let Some(programs) = owners.get(&socket.inode) {
                    detail.programs.extend(programs.iter().cloned());
                }
            }
        }
        items.extend(by_id.into_iter().map(|(id, detail)| Item::of_detail(id, detail)));
        Ok(items)
    }
}

/// The listening sockets of one `/proc/net/<proto>` file, and the lines that could not be read.
fn parse_sockets(text: &str, proto: &str) -> (Vec<Socket>, Vec<String>) {
    let is_tcp = proto.starts_with("tcp");
    let mut sockets = Vec::new();
    let mut bad_lines = Vec::new();
    // Header: sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode
    for line in text.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.is_empty() {
            continue;
        }
        let parsed = (|| {
            let (local, remote, state) = (*fields.get(1)?, *fields.get(2)?, *fields.get(3)?);
            let listening = if is_tcp {
                state == TCP_LISTEN
            } else {
                state == UDP_UNCONNECTED && remote.bytes().all(|b| b == b'0' || b == b':')
            };
            if !listening {
                return Some(None);
            }
            let (addr, port) = parse_address(local)?;
            let uid = fields.get(7)?.parse().ok()?;
            let inode = fields.get(9)?.parse().ok()?;
            Some(Some(Socket { addr, port, uid, inode }))
        })();
        match parsed {
            Some(Some(socket)) => sockets.push(socket),
            Some(None) => {}
            None => bad_lines.push(line.trim().to_string()),
        }
    }
    (sockets, bad_lines)
}

/// `0100007F:0035` → (`127.0.0.1`, 53); IPv6 as `[::1]`. The kernel prints the address as
/// 32-bit words in host (little-endian) order and the port in plain hex.
fn parse_address(text: &str) -> Option<(String, u16)> {
    let (addr, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let words: Option<Vec<u32>> = (0..addr.len() / 8)
        .map(|i| addr.get(i * 8..i * 8 + 8).and_then(|word| u32::from_str_radix(word, 16).ok()))
        .collect();
    let bytes: Vec<u8> = words?.iter().flat_map(|word| word.to_le_bytes()).collect();
    let addr = match addr.len() {
        8 => Ipv4Addr::from(<[u8; 4]>::try_from(bytes).ok()?).to_string(),
        32 => format!("[{}]", Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?)),
        _ => return None,
    };
    Some((addr, port))
}

/// Socket inode → executables of the processes holding it. Processes that vanish or cannot be
/// read during the scan are left out: ownership is a best effort.
fn socket_owners(proc_root: &Path) -> BTreeMap<u64, BTreeSet<String>> {
    let mut owners: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
    let Ok(processes) = std::fs::read_dir(proc_root) else { return owners };
    for process in processes.flatten() {
        let file_name = process.file_name();
        if !file_name.to_str().is_some_and(|name| name.bytes().all(|b| b.is_ascii_digit())) {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(process.path().join("fd")) else { continue };
        let mut program = None;
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else { continue };
            let Some(inode) = target
                .to_str()
                .and_then(|t| t.strip_prefix("socket:["))
                .and_then(|t| t.strip_suffix(']'))
                .and_then(|t| t.parse::<u64>().ok())
            else {
                continue;
            };
            let program = program.get_or_insert_with(|| program_of(&process.path())).clone();
            owners.entry(inode).or_default().insert(program);
        }
    }
    owners
}

fn program_of(process: &Path) -> String {
    match std::fs::read_link(process.join("exe")) {
        Ok(exe) => exe.display().to_string(),
        Err(_) => {
            let comm = std::fs::read_to_string(process.join("comm")).unwrap_or_default();
            format!("[{}]", comm.trim_end())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:0035 00000000:0000 0A 00000000:00000000 00:00000000 00000000   101        0 20011 1 0000000000000000 100 0 0 10 0
   1: 0100007F:D2A4 0100007F:0035 01 00000000:00000000 00:00000000 00000000     0        0 0 1 0000000000000000 100 0 0 10 0
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:0277 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 30022 1 0000000000000000 100 0 0 10 0
";
    const UDP: &str = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  100: 00000000:0044 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 40033 2 0000000000000000 0
  101: 0F02000A:9C40 08080808:0035 01 00000000:00000000 00:00000000 00000000     0        0 40034 2 0000000000000000 0
";

    #[test]
    fn parses_fixture_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("net")).unwrap();
        std::fs::write(dir.path().join("net/tcp"), TCP).unwrap();
        std::fs::write(dir.path().join("net/tcp6"), TCP6).unwrap();
        std::fs::write(dir.path().join("net/udp"), UDP).unwrap();
        // udp6 missing: treated as a kernel without IPv6.
        let mut items = ListeningSockets::new("listening_sockets", dir.path()).collect().unwrap();
        items.sort_by(|a, b| a.id.cmp(&b.id));
        let ids: Vec<&str> = items.iter().map(|item| item.id.as_str()).collect();
        assert_eq!(ids, ["listen:tcp6:[::1]:631", "listen:tcp:127.0.0.1:53", "listen:udp:0.0.0.0:68"]);
        assert_eq!(items[1].detail["uid"], 101);
        assert_eq!(items[1].detail["programs"], serde_json::json!([]));
    }

    #[test]
    fn missing_ipv4_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let err = ListeningSockets::new("listening_sockets", dir.path()).collect().unwrap_err().to_string();
        assert!(err.contains("net/tcp"), "{err}");
    }

    #[test]
    fn finds_own_sockets_and_their_program() {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let items = ListeningSockets::new("listening_sockets", "/proc").collect().unwrap();
        let exe = std::env::current_exe().unwrap().display().to_string();
        for id in [
            format!("listen:tcp:127.0.0.1:{}", tcp.local_addr().unwrap().port()),
            format!("listen:udp:127.0.0.1:{}", udp.local_addr().unwrap().port()),
        ] {
            let item = items.iter().find(|item| item.id == id).unwrap_or_else(|| panic!("{id} not in {items:?}"));
            let programs: Vec<&str> =
                item.detail["programs"].as_array().unwrap().iter().filter_map(|p| p.as_str()).collect();
            assert!(programs.contains(&exe.as_str()), "{programs:?} lacks {exe}");
        }
    }
}
