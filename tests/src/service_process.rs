//! What the broker and database harnesses share: free loopback ports, random bytes, and stopping a
//! child process group within a bounded time whatever state it is in.
use std::io::Read as _;
use std::net::TcpListener;
use std::process::Child;
use std::time::{Duration, Instant};

/// `count` distinct free ports on 127.0.0.1. All listeners stay bound until every port is picked,
/// so the kernel cannot hand the same port out twice; the service binds them a moment later.
pub fn free_loopback_ports(count: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("binding 127.0.0.1:0: {e}")))
        .collect();
    listeners.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

/// Whether nothing listens on 127.0.0.1:`port` any more (a bind succeeds).
pub fn port_is_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .unwrap_or_else(|e| panic!("reading /dev/urandom: {e}"));
    bytes
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn signal(pid: i32, signal: i32) {
    // SAFETY: kill(2) only reads its two integer arguments.
    unsafe { libc::kill(pid, signal) };
}

/// Waits for `child` to exit for at most `limit`; true if it did.
pub fn wait_bounded(child: &mut Child, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => return true,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            // An error means there is no such child to wait for: nothing left to stop.
            Ok(None) => return false,
            Err(_) => return true,
        }
    }
}

/// Asks the process group led by `child` to stop with `polite` (the service's own clean shutdown
/// signal), then SIGKILLs the whole group if the leader is still there after `grace`. The group is
/// killed in the end in any case: helpers a service forked (and did not move to their own session)
/// must not outlive the test.
pub fn stop_group(child: &mut Child, polite: i32, grace: Duration) {
    let group = child.id() as i32;
    if child.try_wait().ok().flatten().is_none() {
        signal(child.id() as i32, polite);
        if !wait_bounded(child, grace) {
            signal(-group, libc::SIGKILL);
            wait_bounded(child, Duration::from_secs(10));
        }
    }
    signal(-group, libc::SIGKILL);
}

/// Pids of live processes whose parent is `parent` (from /proc/PID/stat).
pub fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // The command name in parentheses may hold spaces: fields count from the last ')'.
            let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
            after_name.split_whitespace().nth(1).and_then(|p| p.parse::<u32>().ok()) == Some(parent)
        })
        .collect()
}

/// Pids of live processes whose environment holds exactly `entry` ("NAME=value"), e.g. the epmd a
/// broker started, which daemonizes away from the broker's process group but inherits its env.
pub fn processes_with_env(entry: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|var| var == entry.as_bytes()))
        })
        .collect()
}

/// The last `max` bytes of a log file, for panic messages.
pub fn tail_of(path: &std::path::Path, max: usize) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let start = text.len().saturating_sub(max);
    format!(
        "--- {} (last {} bytes) ---\n{}",
        path.display(),
        text.len() - start,
        String::from_utf8_lossy(&text[start..])
    )
}
