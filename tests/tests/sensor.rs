//! Host integration tests: the real daemon with its eBPF programs attached to this kernel.
//! They need root; CI runs them as root (`cargo xtask test`).
use std::fs;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use ids_tests::{Daemon, Scratch, sh, str_of};
use serde_json::Value;

fn own_pid() -> u64 {
    std::process::id() as u64
}

fn signal<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["signals"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["signal"] == name))
        .unwrap_or_else(|| panic!("status has no signal {name}: {status}"))
}

#[test]
fn tracepoint_hooks_are_chosen_on_a_kernel_that_refuses_lsm_and_fentry() {
    let daemon = Daemon::start("hooks", &[], &["lo"]);
    let status = daemon.status();
    // This kernel refuses BPF_PROG_TYPE_LSM and TRACING loads, so each signal falls back.
    assert_eq!(signal(&status, "exec")["hook"], "tracepoint:sched_process_exec", "{status}");
    assert_eq!(signal(&status, "file")["hook"], "tracepoint:syscalls", "{status}");
    assert_eq!(signal(&status, "connect")["hook"], "tracepoint:syscalls:sys_enter_connect", "{status}");
    for name in ["exec", "file", "connect"] {
        let s = signal(&status, name);
        assert!(s["received"].is_u64() && s["lost"].is_u64(), "counters missing for {name}: {status}");
    }
    assert_eq!(status["incoming"]["interfaces"], serde_json::json!(["lo"]), "{status}");
    let stderr = daemon.stop();
    assert!(stderr.contains("hook attached"), "the choice is not logged: {stderr}");
}

#[test]
fn a_signal_without_a_working_hook_stops_the_daemon_naming_it() {
    let state = Scratch::new("/var/tmp", "nohook");
    let config = state.0.join("ids.toml");
    fs::write(
        &config,
        format!(
            "watch = []\nevents_log = \"-\"\nstate_dir = {:?}\nexclude_hooks = [\"tracepoint\"]\n[xdp]\npin_dir = {:?}\n",
            state.0.join("state").display().to_string(),
            ids_tests::test_pin_dir("nohook"),
        ),
    )
    .unwrap();
    let _pins = ids_tests::Pins { config: config.clone() };
    let out = Command::new(ids_tests::ids_bin()).args(["run", "--config"]).arg(&config).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "daemon started without any hook: {stderr}");
    assert!(stderr.contains("no working hook for signal exec"), "{stderr}");
}

#[test]
fn exec_with_arguments_is_reported_with_its_parent() {
    let daemon = Daemon::start("exec", &[], &[]);
    let marker = format!("ids-exec-marker-{}", own_pid());
    let status = Command::new("/bin/echo").args(["first-arg", &marker]).output().unwrap();
    assert!(status.status.success());
    let found = daemon.wait_for(1, |e| e["kind"] == "exec" && e["argv"].to_string().contains(&marker));
    assert_eq!(found.len(), 1, "exec of /bin/echo not reported exactly once: {found:?}");
    let event = &found[0];
    assert!(str_of(event, "filename").ends_with("/echo"), "{event}");
    assert_eq!(event["argv"], serde_json::json!(["/bin/echo", "first-arg", marker]), "{event}");
    assert_eq!(event["ppid"].as_u64(), Some(own_pid()), "{event}");
    assert_eq!(str_of(event, "comm"), "echo", "{event}");
    assert_eq!(event["uid"], 0, "{event}");
    assert!(str_of(event, "time").ends_with('Z'), "{event}");
    daemon.stop();
}

/// The operations the file tests perform, and the events they must produce, in order.
fn change_files(dir: &Path) {
    let mut file = fs::File::create(dir.join("a")).unwrap();
    file.write_all(b"hello").unwrap();
    drop(file);
    fs::set_permissions(dir.join("a"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::rename(dir.join("a"), dir.join("b")).unwrap();
    fs::remove_file(dir.join("b")).unwrap();
    fs::create_dir(dir.join("sub")).unwrap();
    fs::write(dir.join("sub/c"), b"x").unwrap();
}

fn expected_file_events(dir: &Path) -> Vec<(String, String, Option<String>)> {
    let p = |name: &str| dir.join(name).display().to_string();
    vec![
        ("create".into(), p("a"), None),
        ("write".into(), p("a"), None),
        ("attrib".into(), p("a"), None),
        ("rename".into(), p("a"), Some(p("b"))),
        ("unlink".into(), p("b"), None),
        ("create".into(), p("sub"), None),
        ("create".into(), p("sub/c"), None),
        ("write".into(), p("sub/c"), None),
    ]
}

fn file_events_under(daemon: &Daemon, dir: &Path, count: usize) -> Vec<(String, String, Option<String>)> {
    let prefix = dir.display().to_string();
    daemon
        .wait_for(count, |e| {
            e["kind"] == "file" && e["pid"].as_u64() == Some(own_pid()) && str_of(e, "path").starts_with(&prefix)
        })
        .iter()
        .map(|e| (str_of(e, "op").to_string(), str_of(e, "path").to_string(), e["new_path"].as_str().map(String::from)))
        .collect()
}

fn check_file_changes(fs_name: &str, parent: &str, mount_tmpfs: bool) {
    let root = Scratch::new(parent, fs_name);
    if mount_tmpfs {
        sh("mount", &["-t", "tmpfs", "-o", "size=16m", "tmpfs", root.0.to_str().unwrap()]);
    }
    let watched = root.0.join("watched");
    let unwatched = root.0.join("unwatched");
    fs::create_dir(&watched).unwrap();
    fs::create_dir(&unwatched).unwrap();
    let daemon = Daemon::start(fs_name, &[&watched], &[]);
    change_files(&watched);
    change_files(&unwatched);
    let expected = expected_file_events(&watched);
    let seen = file_events_under(&daemon, &watched, expected.len());
    assert_eq!(seen, expected, "file events on {fs_name} differ");
    // Give stray events for the unwatched tree time to arrive before asserting there are none.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let stray = file_events_under(&daemon, &unwatched, 0);
    assert!(stray.is_empty(), "events for the unwatched directory on {fs_name}: {stray:?}");
    let status = daemon.status();
    assert_eq!(signal(&status, "file")["lost"], 0, "{status}");
    daemon.stop();
}

/// The raw `sys_enter`/`sys_exit` hooks, which kernels without the per-syscall tracepoints get,
/// report the same changes, and only those.
#[test]
fn the_raw_syscall_fallback_reports_the_same_file_changes_and_connects() {
    let root = Scratch::new("/var/tmp", "raw-fallback");
    let watched = root.0.join("watched");
    let unwatched = root.0.join("unwatched");
    fs::create_dir(&watched).unwrap();
    fs::create_dir(&unwatched).unwrap();
    let daemon = Daemon::start_with("raw-fallback", &[&watched], &[], "exclude_hooks = [\"tracepoint:syscalls\"]");
    let status = daemon.status();
    assert_eq!(signal(&status, "file")["hook"], "tracepoint:raw_syscalls", "{status}");
    assert_eq!(signal(&status, "connect")["hook"], "tracepoint:raw_syscalls:connect", "{status}");
    change_files(&watched);
    change_files(&unwatched);
    let expected = expected_file_events(&watched);
    assert_eq!(file_events_under(&daemon, &watched, expected.len()), expected, "file events on the raw hooks differ");
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let _client = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
    let connects = daemon.wait_for(1, |e| e["kind"] == "connect" && e["direction"] == "out" && e["dport"] == port);
    assert_eq!(connects.len(), 1, "the connect on the raw hook is not reported once: {connects:?}");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let stray = file_events_under(&daemon, &unwatched, 0);
    assert!(stray.is_empty(), "events for the unwatched directory on the raw hooks: {stray:?}");
    daemon.stop();
}

#[test]
fn file_changes_on_ext4_are_reported_exactly_and_only_when_watched() {
    check_file_changes("ext4", "/var/tmp", false);
}

#[test]
fn file_changes_on_tmpfs_are_reported_exactly_and_only_when_watched() {
    check_file_changes("tmpfs", "/var/tmp", true);
}

#[test]
fn truncate_and_shared_writable_mmap_are_writes() {
    let root = Scratch::new("/var/tmp", "mmap");
    let target = root.0.join("f");
    fs::write(&target, vec![0u8; 4096]).unwrap();
    let daemon = Daemon::start("mmap", &[&root.0], &[]);
    // O_TRUNC on an existing file.
    fs::File::create(&target).unwrap();
    fs::OpenOptions::new().write(true).open(&target).unwrap().set_len(4096).unwrap();
    let file = fs::OpenOptions::new().read(true).write(true).open(&target).unwrap();
    unsafe {
        use std::os::fd::AsRawFd;
        let addr = libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        );
        assert_ne!(addr, libc::MAP_FAILED);
        *(addr as *mut u8) = 7;
        libc::munmap(addr, 4096);
    }
    let path = target.display().to_string();
    let seen = file_events_under(&daemon, &root.0, 3);
    let expected: Vec<(String, String, Option<String>)> =
        (0..3).map(|_| ("write".to_string(), path.clone(), None)).collect();
    assert_eq!(seen, expected, "truncate, ftruncate and mmap(MAP_SHARED, PROT_WRITE) must each be one write");
    daemon.stop();
}

#[test]
fn relative_paths_from_outside_the_watch_set_are_resolved() {
    let root = Scratch::new("/var/tmp", "relative");
    let watched = root.0.join("w");
    fs::create_dir(&watched).unwrap();
    fs::write(watched.join("x"), b"1").unwrap();
    let daemon = Daemon::start("relative", &[&watched], &[]);
    // The child's cwd is the parent of the watched directory, so it names "w/x".
    sh("sh", &["-c", &format!("cd {} && mv w/x w/y && chmod 700 w/y && rm w/y", root.0.display())]);
    let p = |n: &str| watched.join(n).display().to_string();
    let prefix = watched.display().to_string();
    let seen: Vec<(String, String)> = daemon
        .wait_for(3, |e| e["kind"] == "file" && str_of(e, "path").starts_with(&prefix))
        .iter()
        .map(|e| (str_of(e, "op").to_string(), str_of(e, "path").to_string()))
        .collect();
    assert_eq!(seen, [("rename".into(), p("x")), ("attrib".into(), p("y")), ("unlink".into(), p("y"))]);
    daemon.stop();
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap().local_addr().unwrap().port()
}

#[test]
fn tcp_and_udp_over_loopback_are_reported_in_both_directions() {
    let daemon = Daemon::start("loopback", &[], &["lo"]);
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let open_port = listener.local_addr().unwrap().port();
    let client = TcpStream::connect((Ipv4Addr::LOCALHOST, open_port)).unwrap();
    let client_port = client.local_addr().unwrap().port();
    let closed_port = free_port();
    assert!(TcpStream::connect((Ipv4Addr::LOCALHOST, closed_port)).is_err());
    let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    udp.connect((Ipv4Addr::LOCALHOST, 5353)).unwrap();
    let v6 = TcpListener::bind("[::1]:0").unwrap();
    let v6_port = v6.local_addr().unwrap().port();
    let _v6_client = TcpStream::connect(("::1", v6_port)).unwrap();

    let out = |port: u16, protocol: &'static str| {
        move |e: &Value| {
            e["kind"] == "connect" && e["direction"] == "out" && e["dport"] == port && e["protocol"] == protocol
        }
    };
    let found = daemon.wait_for(1, out(open_port, "tcp"));
    assert_eq!(found.len(), 1, "outgoing TCP connect missing: {:?}", daemon.events());
    assert_eq!(found[0]["pid"].as_u64(), Some(own_pid()));
    assert_eq!(found[0]["daddr"], "127.0.0.1");
    assert_eq!(daemon.wait_for(1, out(closed_port, "tcp")).len(), 1, "connect to a closed port missing");
    let udp_found = daemon.wait_for(1, out(5353, "udp"));
    assert_eq!(udp_found.len(), 1, "outgoing UDP connect missing");
    let v6_found = daemon.wait_for(1, out(v6_port, "tcp"));
    assert_eq!(v6_found.len(), 1, "outgoing IPv6 connect missing");
    assert_eq!(v6_found[0]["daddr"], "::1");

    let incoming = |port: u16| move |e: &Value| e["kind"] == "connect" && e["direction"] == "in" && e["dport"] == port;
    let syn = daemon.wait_for(1, incoming(open_port));
    assert_eq!(syn.len(), 1, "incoming SYN to the open port missing: {:?}", daemon.events());
    assert_eq!(syn[0]["sport"], client_port);
    assert_eq!(syn[0]["saddr"], "127.0.0.1");
    assert_eq!(daemon.wait_for(1, incoming(closed_port)).len(), 1, "incoming SYN to the closed port missing");
    assert_eq!(daemon.wait_for(1, incoming(v6_port)).len(), 1, "incoming IPv6 SYN missing");
    drop(listener);
    daemon.stop();
}

/// A network namespace joined to this host by a veth pair, removed on drop.
struct Namespace {
    name: String,
    host_if: String,
}

impl Namespace {
    fn new() -> Self {
        let id = std::process::id() % 10_000;
        let name = format!("ids-t{id}");
        let host_if = format!("idsh{id}");
        let ns_if = format!("idsn{id}");
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
        sh("ip", &["netns", "add", &name]);
        sh("ip", &["link", "add", &host_if, "type", "veth", "peer", "name", &ns_if]);
        sh("ip", &["link", "set", &ns_if, "netns", &name]);
        sh("ip", &["addr", "add", "10.231.7.1/30", "dev", &host_if]);
        sh("ip", &["link", "set", &host_if, "up"]);
        sh("ip", &["-n", &name, "addr", "add", "10.231.7.2/30", "dev", &ns_if]);
        sh("ip", &["-n", &name, "link", "set", &ns_if, "up"]);
        sh("ip", &["-n", &name, "link", "set", "lo", "up"]);
        Self { name, host_if }
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.host_if]).status();
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

#[test]
fn tcp_over_a_veth_pair_into_a_namespace_is_reported() {
    let ns = Namespace::new();
    let daemon = Daemon::start("veth", &[], &[&ns.host_if]);
    let status = daemon.status();
    assert_eq!(status["incoming"]["interfaces"], serde_json::json!([ns.host_if]), "{status}");
    // Host → namespace: nothing listens there, the namespace answers with a reset.
    let ns_port = 4242;
    let _ =
        TcpStream::connect_timeout(&(Ipv4Addr::new(10, 231, 7, 2), ns_port).into(), std::time::Duration::from_secs(2));
    // Namespace → host: a listener here, a connect from inside the namespace.
    let listener = TcpListener::bind((Ipv4Addr::new(10, 231, 7, 1), 0)).unwrap();
    let host_port = listener.local_addr().unwrap().port();
    sh("ip", &["netns", "exec", &ns.name, "bash", "-c", &format!("exec 3<>/dev/tcp/10.231.7.1/{host_port}")]);

    let out = daemon.wait_for(1, |e| e["direction"] == "out" && e["daddr"] == "10.231.7.2" && e["dport"] == ns_port);
    assert_eq!(out.len(), 1, "outgoing connect into the namespace missing: {:?}", daemon.events());
    assert_eq!(out[0]["pid"].as_u64(), Some(own_pid()));
    let incoming =
        daemon.wait_for(1, |e| e["direction"] == "in" && e["saddr"] == "10.231.7.2" && e["dport"] == host_port);
    assert_eq!(incoming.len(), 1, "SYN from the namespace missing: {:?}", daemon.events());
    assert_eq!(incoming[0]["daddr"], "10.231.7.1");
    drop(listener);
    daemon.stop();
}

/// Listen events the sensor wrote for `host`:`port`: (opened, closed).
fn listen_counts(daemon: &Daemon, host: IpAddr, port: u16) -> (usize, usize) {
    let addr = host.to_string();
    let states: Vec<String> = daemon
        .events()
        .iter()
        .filter(|e| e["kind"] == "listen" && e["port"] == port && e["addr"] == addr.as_str())
        .map(|e| str_of(e, "state").to_string())
        .collect();
    (states.iter().filter(|s| *s == "listen").count(), states.iter().filter(|s| *s == "closed").count())
}

/// Opens and closes a listener on `host` and waits for its two listen events. The ring buffer is
/// read in order, so once they are written, everything the sensor saw before them has been too.
fn listen_barrier(daemon: &Daemon, host: IpAddr) {
    let marker = TcpListener::bind((host, 0)).unwrap();
    let port = marker.local_addr().unwrap().port();
    drop(marker);
    let states = daemon.wait_for(2, |e| e["kind"] == "listen" && e["port"] == port);
    assert_eq!(states.len(), 2, "marker listener's open and close on {host} missing: {states:?}");
}

/// 1,000 connections accepted and closed on one listener on `host`, then the listener closed with
/// connections still waiting in its accept queue: one `listen` and one `closed` event, nothing else.
fn one_listen_and_one_closed_event_per_listener(daemon: &Daemon, host: IpAddr) {
    const CONNECTIONS: usize = 1_000;
    const PENDING: usize = 3;
    let listener = TcpListener::bind((host, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let opened = daemon.wait_for(1, |e| e["kind"] == "listen" && e["port"] == port);
    assert_eq!(opened.len(), 1, "opening the listener on {host} is not one listen event: {opened:?}");
    assert_eq!(opened[0]["state"], "listen", "{}", opened[0]);
    assert_eq!(opened[0]["addr"], host.to_string(), "{}", opened[0]);

    for _ in 0..CONNECTIONS {
        let client = TcpStream::connect((host, port)).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        drop(client);
        drop(accepted);
    }
    // Every outgoing connect reached the events log, so the sensor saw all the connections.
    let connects = daemon.wait_for(CONNECTIONS, |e| {
        e["kind"] == "connect" && e["direction"] == "out" && e["dport"] == port && e["pid"].as_u64() == Some(own_pid())
    });
    assert_eq!(connects.len(), CONNECTIONS, "the sensor did not see every connection to {host}");
    listen_barrier(daemon, host);
    assert_eq!(
        listen_counts(daemon, host, port),
        (1, 0),
        "(opened, closed) listen events on {host} after {CONNECTIONS} connections: each connection was reported as a listen change"
    );

    // Connections the listener never accepted are closed with it: they are no listen change either.
    let pending: Vec<TcpStream> = (0..PENDING).map(|_| TcpStream::connect((host, port)).unwrap()).collect();
    drop(listener);
    let closed = daemon.wait_for(1, |e| e["kind"] == "listen" && e["port"] == port && e["state"] == "closed");
    assert_eq!(closed.len(), 1, "closing the listener on {host} is not reported");
    drop(pending);
    listen_barrier(daemon, host);
    assert_eq!(
        listen_counts(daemon, host, port),
        (1, 1),
        "(opened, closed) listen events on {host} once the listener is closed with {PENDING} connections pending"
    );
}

/// The socket of each accepted connection is cloned from its listener, state included, and leaves
/// LISTEN on the same tracepoint as a closing listener: only the listener opening and closing are
/// listen events, over IPv4 and IPv6.
#[test]
fn only_a_listener_opening_or_closing_is_a_listen_event_not_its_connections() {
    let daemon = Daemon::start("listen", &[], &[]);
    one_listen_and_one_closed_event_per_listener(&daemon, IpAddr::V4(Ipv4Addr::LOCALHOST));
    one_listen_and_one_closed_event_per_listener(&daemon, IpAddr::V6(Ipv6Addr::LOCALHOST));
    let status = daemon.status();
    assert_eq!(signal(&status, "connect")["lost"], 0, "{status}");
    daemon.stop();
}

/// `errors.<program>` of `ids status --json`.
fn program_errors(status: &Value, program: &str) -> u64 {
    status["errors"][program].as_u64().unwrap_or_else(|| panic!("status has no error count for {program}: {status}"))
}

/// A connect whose address lies in a page the process has mapped but never touched: the kernel's
/// copy faults the page in, but the program reads it at syscall entry, where no fault may be taken.
/// That connect cannot be reported, and the program's error counter is what tells.
#[test]
fn a_connect_whose_address_the_sensor_cannot_read_is_counted_as_an_error() {
    use std::os::fd::AsRawFd;
    const UNREADABLE: u64 = 3;
    const ORDINARY: usize = 3;
    let daemon = Daemon::start("errors", &[], &[]);
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let scratch = Scratch::new("/var/tmp", "errors-addr");
    let addr_file = scratch.0.join("sockaddr");
    // SAFETY: sockaddr_in is plain data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    addr.sin_family = libc::AF_INET as libc::sa_family_t;
    addr.sin_port = port.to_be();
    addr.sin_addr.s_addr = u32::from(Ipv4Addr::LOCALHOST).to_be();
    // SAFETY: reads the bytes of a plain-data struct.
    let bytes = unsafe {
        std::slice::from_raw_parts((&addr as *const libc::sockaddr_in).cast::<u8>(), std::mem::size_of_val(&addr))
    };
    fs::write(&addr_file, bytes).unwrap();
    let before = program_errors(&daemon.status(), "connect_syscall_enter");

    for _ in 0..ORDINARY {
        let _client = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
        listener.accept().unwrap();
    }
    let file = fs::File::open(&addr_file).unwrap();
    for _ in 0..UNREADABLE {
        // SAFETY: a fresh private read-only mapping of our own file, unmapped below; the socket is ours.
        unsafe {
            let page = libc::mmap(std::ptr::null_mut(), 4096, libc::PROT_READ, libc::MAP_PRIVATE, file.as_raw_fd(), 0);
            assert_ne!(page, libc::MAP_FAILED);
            let socket = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
            assert!(socket >= 0);
            let rc = libc::connect(socket, page.cast(), std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t);
            assert_eq!(rc, 0, "connect through the mapped address: {}", std::io::Error::last_os_error());
            libc::close(socket);
            libc::munmap(page, 4096);
        }
        listener.accept().unwrap();
    }
    let status = daemon.status();
    assert_eq!(
        program_errors(&status, "connect_syscall_enter") - before,
        UNREADABLE,
        "{ORDINARY} ordinary connects and {UNREADABLE} through an untouched page: {status}"
    );
    let reported =
        daemon.wait_for(ORDINARY, |e| e["kind"] == "connect" && e["direction"] == "out" && e["dport"] == port);
    assert_eq!(reported.len(), ORDINARY, "the ordinary connects are reported");
    let human = Command::new(ids_tests::ids_bin()).args(["status", "--config"]).arg(&daemon.config).output().unwrap();
    let human = String::from_utf8_lossy(&human.stdout);
    assert!(
        human.contains(&format!("connect_syscall_enter {}", before + UNREADABLE)),
        "`ids status` does not show the error count: {human}"
    );
    daemon.stop();
}

/// The events log's file events naming a path under `dir`, as paths.
fn paths_under(events: &str, dir: &Path) -> std::collections::BTreeSet<String> {
    let dir = dir.display().to_string();
    events
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("line {l:?} is not JSON: {e}")))
        .filter(|e| e["kind"] == "file")
        .filter_map(|e| e["path"].as_str().map(str::to_string))
        .filter(|p| p.starts_with(&dir))
        .collect()
}

#[test]
fn sighup_reopens_a_rotated_events_log_and_loses_no_line() {
    let dir = Scratch::new("/var/tmp", "hup");
    let daemon = Daemon::start("hup", &[&dir.0], &[]);
    let write = |range: std::ops::Range<u32>| {
        for n in range {
            fs::write(dir.0.join(format!("f{n}")), "x").unwrap();
        }
    };
    write(0..50);
    assert_eq!(daemon.wait_for(50, |e| e["kind"] == "file" && e["op"] == "create").len(), 50);
    // logrotate's way: rename, then SIGHUP; the daemon writes to the renamed file until then.
    let rotated = daemon.events.with_extension("jsonl.1");
    fs::rename(&daemon.events, &rotated).unwrap();
    write(50..100);
    // The daemon has written them (to the renamed file) before it is told to reopen.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while paths_under(&fs::read_to_string(&rotated).unwrap(), &dir.0).len() < 100 {
        assert!(std::time::Instant::now() < deadline, "the renamed log did not get the second 50 creations");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    daemon.signal(libc::SIGHUP);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !daemon.events.exists() {
        assert!(std::time::Instant::now() < deadline, "SIGHUP did not reopen {}", daemon.events.display());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    write(100..150);
    let after = daemon.wait_for(50, |e| e["kind"] == "file" && e["op"] == "create");
    assert_eq!(after.len(), 50, "the reopened log got {} of 50 creations", after.len());
    // Still running and answering (SIGHUP used to end it).
    assert_eq!(daemon.status()["ok"], true);
    let old = fs::read_to_string(&rotated).unwrap();
    let new = fs::read_to_string(&daemon.events).unwrap();
    let stderr = daemon.stop();
    assert!(stderr.contains("events log reopened"), "{stderr}");
    let mut seen = paths_under(&old, &dir.0);
    seen.extend(paths_under(&new, &dir.0));
    let expected: std::collections::BTreeSet<String> =
        (0..150).map(|n| dir.0.join(format!("f{n}")).display().to_string()).collect();
    let missing: Vec<&String> = expected.difference(&seen).collect();
    assert!(missing.is_empty(), "events lost across the reopen: {missing:?}");
}
