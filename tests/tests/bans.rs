//! Bans enforced in XDP and tc, end to end: a network namespace joined to this host by a veth pair,
//! the daemon's ban filter on the host side (`[xdp] mode = "auto"` puts `tc_guard` on a veth;
//! tests of `xdp_guard` say `mode = "native"` or `"generic"`), traffic from addresses inside the namespace.
//! They need root; CI runs them as root (`cargo xtask test`).
use std::fs;
use std::io::Read as _;
use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ids_tests::netns::{BAD4, BAD6, GOOD4, GOOD6, HOST4, HOST6, Net, TRUSTED4, mac};
use ids_tests::{Daemon, Pins, Scratch, ids_bin, sh, test_pin_dir};
use serde_json::Value;
use socket2::{Domain, Socket, Type};

/// A daemon's config and state that outlive daemon restarts; pins removed on drop.
struct Setup {
    config: PathBuf,
    events: PathBuf,
    _pins: Pins,
    _state: Scratch,
}

impl Setup {
    fn new(name: &str, interface: &str, xdp_extra: &str, bans_extra: &str) -> Self {
        let state = Scratch::new("/var/tmp", &format!("bans-{name}"));
        let config = state.0.join("ids.toml");
        let events = state.0.join("events.jsonl");
        fs::write(
            &config,
            format!(
                "watch = []\nevents_log = {:?}\nstate_dir = {:?}\n[xdp]\ninterfaces = [{interface:?}]\npin_dir = {:?}\n{xdp_extra}\n[bans]\n{bans_extra}\n",
                events.display().to_string(),
                state.0.join("state").display().to_string(),
                test_pin_dir(name),
            ),
        )
        .unwrap();
        Self { _pins: Pins { config: config.clone() }, config, events, _state: state }
    }

    fn start(&self) -> Daemon {
        Daemon::spawn(&self.config, &self.events)
    }

    /// `ids <args> --json --config ...`: (exit success, JSON printed).
    fn ids(&self, args: &[&str]) -> (bool, Value) {
        let out = Command::new(ids_bin()).args(args).args(["--json", "--config"]).arg(&self.config).output().unwrap();
        let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "ids {args:?} printed no JSON ({e}): {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (out.status.success(), json)
    }

    fn ok(&self, args: &[&str]) -> Value {
        let (success, json) = self.ids(args);
        assert!(success && json["ok"] == true, "ids {args:?} failed: {json}");
        json
    }

    fn bans(&self) -> Vec<Value> {
        self.ok(&["bans"])["data"].as_array().cloned().unwrap_or_default()
    }
}

fn tcp_listener(addr: &str) -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind((addr.parse::<IpAddr>().unwrap(), 0)).unwrap();
    let local = listener.local_addr().unwrap();
    (listener, local)
}

fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn generic_mode_when_configured_drops_the_same() {
    let net = Net::new("g");
    let setup = Setup::new("generic", &net.host_if, "mode = \"generic\"", "");
    let daemon = setup.start();
    let status = daemon.status();
    assert_eq!(status["xdp"]["interfaces"][0]["mode"], "generic", "{status}");
    let link = sh("ip", &["-d", "link", "show", &net.host_if]);
    assert!(link.contains("xdpgeneric"), "the kernel does not show a generic attachment: {link}");
    let (_tcp, to) = tcp_listener(HOST4);
    assert!(net.tcp_passes(BAD4, to), "TCP from {BAD4} blocked before any ban");
    setup.ok(&["ban", BAD4, "--reason", "generic mode test"]);
    assert!(!net.tcp_passes(BAD4, to), "banned {BAD4} passed in generic mode");
    assert!(net.tcp_passes(GOOD4, to), "{GOOD4} blocked in generic mode");
    daemon.stop();
}

#[test]
fn banned_source_is_dropped_for_tcp_udp_icmp_and_ipv6_while_another_source_passes() {
    let net = Net::new("a");
    let setup = Setup::new("drop", &net.host_if, "mode = \"native\"", "");
    let daemon = setup.start();
    let status = daemon.status();
    let interfaces = &status["xdp"]["interfaces"];
    assert_eq!(interfaces[0]["name"], net.host_if.as_str(), "{status}");
    assert_eq!(interfaces[0]["mode"], "native", "veth supports native XDP: {status}");
    assert_eq!(interfaces[0]["program"], "xdp_guard", "{status}");

    let (_tcp, tcp_to) = tcp_listener(HOST4);
    let (_tcp6, tcp6_to) = tcp_listener(HOST6);
    let udp = UdpSocket::bind((HOST4.parse::<IpAddr>().unwrap(), 0)).unwrap();
    for source in [BAD4, GOOD4] {
        assert!(net.tcp_passes(source, tcp_to), "TCP from {source} blocked before any ban");
    }
    assert!(net.tcp_passes(BAD6, tcp6_to), "IPv6 TCP blocked before any ban");

    let banned = setup.ok(&["ban", BAD4, "--reason", "test", "--for", "1h"]);
    assert_eq!(banned["data"][0]["net"], BAD4, "{banned}");
    assert_eq!(banned["data"][0]["created"], true, "{banned}");
    setup.ok(&["ban", BAD6, "--reason", "test v6"]);

    assert!(!net.tcp_passes(BAD4, tcp_to), "TCP from banned {BAD4} passed");
    assert!(!net.udp_passes(BAD4, &udp), "UDP from banned {BAD4} passed");
    assert!(!net.ping_passes(BAD4, HOST4), "ICMP from banned {BAD4} answered");
    assert!(!net.tcp_passes(BAD6, tcp6_to), "IPv6 TCP from banned {BAD6} passed");
    assert!(net.tcp_passes(GOOD4, tcp_to), "TCP from {GOOD4} blocked by the ban of {BAD4}");
    assert!(net.udp_passes(GOOD4, &udp), "UDP from {GOOD4} blocked");
    assert!(net.ping_passes(GOOD4, HOST4), "ICMP from {GOOD4} blocked");
    assert!(net.tcp_passes(GOOD6, tcp6_to), "IPv6 TCP from {GOOD6} blocked");

    // Idempotent: banning again changes nothing and says so.
    let again = setup.ok(&["ban", BAD4, "--reason", "test"]);
    assert_eq!(again["data"][0]["created"], false, "{again}");
    let bans = setup.bans();
    assert_eq!(bans.len(), 2, "{bans:?}");
    let bad = bans.iter().find(|b| b["net"] == BAD4).expect("ban listed");
    assert!(bad["packets"].as_u64().unwrap() >= 3, "hit counters not counted: {bad}");
    assert!(bad["bytes"].as_u64().unwrap() > bad["packets"].as_u64().unwrap() * 20, "{bad}");
    assert_eq!(bad["source"], "manual");

    let unbanned = setup.ok(&["unban", BAD4]);
    assert_eq!(unbanned["data"][0]["removed"], true, "{unbanned}");
    assert_eq!(setup.ok(&["unban", BAD4])["data"][0]["removed"], false, "unban is not idempotent");
    assert!(net.tcp_passes(BAD4, tcp_to), "TCP from {BAD4} still blocked after unban");
    daemon.stop();
}

/// An Ethernet frame carrying a TCP SYN from `source` to `HOST4`:`dport`, behind `tags` (TPID, VLAN id).
fn tagged_syn(dst_mac: [u8; 6], src_mac: [u8; 6], tags: &[(u16, u16)], source: [u8; 4], dport: u16) -> Vec<u8> {
    let mut frame = Vec::new();
    frame.extend_from_slice(&dst_mac);
    frame.extend_from_slice(&src_mac);
    for (tpid, vid) in tags {
        frame.extend_from_slice(&tpid.to_be_bytes());
        frame.extend_from_slice(&vid.to_be_bytes());
    }
    frame.extend_from_slice(&0x0800u16.to_be_bytes());
    let host: std::net::Ipv4Addr = HOST4.parse().unwrap();
    let mut ip = vec![0x45, 0, 0, 40, 0, 1, 0x40, 0, 64, 6, 0, 0];
    ip.extend_from_slice(&source);
    ip.extend_from_slice(&host.octets());
    let sum = ip.chunks(2).fold(0u32, |s, w| s + u16::from_be_bytes([w[0], w[1]]) as u32);
    let sum = !(((sum & 0xffff) + (sum >> 16)) as u16);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    frame.extend_from_slice(&ip);
    let mut tcp = vec![0u8; 20];
    tcp[0..2].copy_from_slice(&40_000u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&dport.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = 0x02;
    tcp[14..16].copy_from_slice(&1024u16.to_be_bytes());
    frame.extend_from_slice(&tcp);
    frame
}

fn parse_mac(text: &str) -> [u8; 6] {
    let bytes: Vec<u8> = text.trim().split(':').map(|b| u8::from_str_radix(b, 16).unwrap()).collect();
    bytes.try_into().unwrap()
}

/// Sends raw frames out of `interface` (an AF_PACKET socket; run inside the namespace).
fn send_frames(interface: &str, frames: &[Vec<u8>]) {
    let name = std::ffi::CString::new(interface).unwrap();
    // SAFETY: plain socket calls with valid, initialised arguments.
    unsafe {
        let index = libc::if_nametoindex(name.as_ptr());
        assert_ne!(index, 0, "no interface {interface}");
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
        assert!(fd >= 0, "AF_PACKET socket: {}", std::io::Error::last_os_error());
        let mut addr: libc::sockaddr_ll = std::mem::zeroed();
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = index as i32;
        addr.sll_halen = 6;
        for frame in frames {
            let sent = libc::sendto(
                fd,
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            assert_eq!(sent, frame.len() as isize, "sendto: {}", std::io::Error::last_os_error());
        }
        libc::close(fd);
    }
}

#[test]
fn vlan_and_qinq_tagged_frames_are_parsed_banned_dropped_and_others_reported() {
    // This kernel has no VLAN devices (CONFIG_VLAN_8021Q off), so tagged frames are written raw.
    // Nothing above XDP accepts them; what XDP did shows in the ban counters and the SYN reports.
    let net = Net::new("v");
    let ns_if = net.host_if.replace("idsbh", "idsbn");
    let setup = Setup::new("vlan", &net.host_if, "", "");
    let daemon = setup.start();
    setup.ok(&["ban", BAD4, "--reason", "vlan"]);
    let host_mac = parse_mac(&mac(&format!("/sys/class/net/{}/address", net.host_if)));
    let ns_mac = parse_mac(&sh("ip", &["netns", "exec", &net.ns, "cat", &format!("/sys/class/net/{ns_if}/address")]));
    let octets = |a: &str| a.parse::<std::net::Ipv4Addr>().unwrap().octets();
    let single = [(0x8100u16, 7u16)];
    let double = [(0x88a8u16, 100u16), (0x8100u16, 7u16)];
    let frames = vec![
        tagged_syn(host_mac, ns_mac, &single, octets(BAD4), 5001),
        tagged_syn(host_mac, ns_mac, &double, octets(BAD4), 5002),
        tagged_syn(host_mac, ns_mac, &single, octets(GOOD4), 5003),
        tagged_syn(host_mac, ns_mac, &double, octets(GOOD4), 5004),
    ];
    net.run(|| send_frames(&ns_if, &frames));
    wait_until("both tagged frames of the banned source counted", Duration::from_secs(5), || {
        setup.bans()[0]["packets"].as_u64() == Some(2)
    });
    for port in [5003, 5004] {
        let seen = daemon.wait_for(1, |e| e["direction"] == "in" && e["saddr"] == GOOD4 && e["dport"] == port);
        assert_eq!(seen.len(), 1, "tagged SYN from {GOOD4} to port {port} not reported: {:?}", daemon.events());
    }
    let banned = daemon.wait_for(0, |e| e["direction"] == "in" && e["saddr"] == BAD4);
    assert!(banned.is_empty(), "dropped frames were reported as SYNs: {banned:?}");
    daemon.stop();
}

#[test]
fn prefix_ban_drops_the_prefix_but_a_trusted_address_inside_it_passes() {
    let net = Net::new("p");
    let setup =
        Setup::new("prefix", &net.host_if, &format!("trusted = [\"127.0.0.0/8\", \"::1\", \"{TRUSTED4}\"]"), "");
    let daemon = setup.start();
    let (_tcp, tcp_to) = tcp_listener(HOST4);
    let (_tcp6, tcp6_to) = tcp_listener(HOST6);
    setup.ok(&["ban", "10.232.0.0/16", "--reason", "prefix"]);
    setup.ok(&["ban", "fd00:232::/64", "--reason", "prefix v6"]);
    assert!(!net.tcp_passes(BAD4, tcp_to), "{BAD4} passed a /16 ban");
    assert!(!net.tcp_passes(GOOD4, tcp_to), "{GOOD4} passed a /16 ban");
    assert!(!net.tcp_passes(GOOD6, tcp6_to), "{GOOD6} passed a /64 ban");
    assert!(net.tcp_passes(TRUSTED4, tcp_to), "trusted {TRUSTED4} dropped by the prefix ban");
    assert!(net.ping_passes(TRUSTED4, HOST4), "trusted {TRUSTED4} ICMP dropped");

    let (success, refused) = setup.ids(&["ban", TRUSTED4]);
    assert!(!success && refused["ok"] == false, "{refused}");
    assert!(refused["error"].as_str().unwrap().contains("trusted"), "{refused}");
    assert_eq!(setup.bans().len(), 2);
    daemon.stop();
}

#[test]
fn expiry_lifts_the_ban_within_a_second() {
    let net = Net::new("e");
    let setup = Setup::new("expiry", &net.host_if, "", "");
    let daemon = setup.start();
    let (_tcp, tcp_to) = tcp_listener(HOST4);
    let banned = setup.ok(&["ban", BAD4, "--for", "3s", "--reason", "short"]);
    let expires = humantime_parse(banned["data"][0]["expires"].as_str().expect("expiry set"));
    assert!(!net.tcp_passes(BAD4, tcp_to), "ban not enforced");
    while std::time::SystemTime::now() < expires {
        std::thread::sleep(Duration::from_millis(50));
    }
    // Within a second of the expiry, both the map and the store have let it go.
    std::thread::sleep(Duration::from_millis(1000));
    assert!(setup.bans().is_empty(), "expired ban still in the store: {:?}", setup.bans());
    assert!(net.tcp_passes(BAD4, tcp_to), "expired ban still enforced");
    daemon.stop();
}

fn humantime_parse(text: &str) -> std::time::SystemTime {
    // RFC 3339 UTC with microseconds, as the daemon writes it: 2026-01-02T03:04:05.678901Z.
    let (date, time) = text.trim_end_matches('Z').split_once('T').unwrap();
    let d: Vec<i64> = date.split('-').map(|p| p.parse().unwrap()).collect();
    let (hms, micros) = time.split_once('.').unwrap_or((time, "0"));
    let t: Vec<i64> = hms.split(':').map(|p| p.parse().unwrap()).collect();
    // Days from civil (Howard Hinnant's algorithm).
    let (y, m) = if d[1] <= 2 { (d[0] - 1, d[1] + 9) } else { (d[0], d[1] - 3) };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d[2] - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + t[0] * 3600 + t[1] * 60 + t[2];
    std::time::UNIX_EPOCH + Duration::from_secs(secs as u64) + Duration::from_micros(micros.parse().unwrap())
}

#[test]
fn tc_mode_on_a_veth_drops_and_counts_a_banned_source_and_unban_lets_it_through() {
    let net = Net::new("t");
    let setup = Setup::new("tc", &net.host_if, "mode = \"tc\"", "");
    let (_tcp, tcp_to) = tcp_listener(HOST4);
    let (_tcp6, tcp6_to) = tcp_listener(HOST6);
    let udp = UdpSocket::bind((HOST4.parse::<IpAddr>().unwrap(), 0)).unwrap();
    let daemon = setup.start();
    let status = daemon.status();
    let interface = &status["xdp"]["interfaces"][0];
    assert_eq!(interface["name"], net.host_if.as_str(), "{status}");
    assert_eq!(interface["mode"], "tc", "{status}");
    assert_eq!(interface["program"], "tc_guard", "{status}");
    assert_eq!(status["incoming"]["hook"], "tc:tc_guard", "{status}");
    let link = sh("ip", &["-d", "link", "show", &net.host_if]);
    assert!(!link.contains("xdp"), "an XDP program is attached in tc mode: {link}");
    assert!(net.tcp_passes(BAD4, tcp_to), "TCP from {BAD4} blocked before any ban");

    setup.ok(&["ban", BAD4, "--reason", "tc test"]);
    setup.ok(&["ban", BAD6, "--reason", "tc test v6"]);
    assert!(!net.tcp_passes(BAD4, tcp_to), "TCP from banned {BAD4} passed the tc filter");
    assert!(!net.udp_passes(BAD4, &udp), "UDP from banned {BAD4} passed the tc filter");
    assert!(!net.tcp_passes(BAD6, tcp6_to), "IPv6 TCP from banned {BAD6} passed the tc filter");
    assert!(net.tcp_passes(GOOD4, tcp_to), "TCP from {GOOD4} blocked by the ban of {BAD4}");
    assert!(net.udp_passes(GOOD4, &udp), "UDP from {GOOD4} blocked");
    assert!(net.tcp_passes(GOOD6, tcp6_to), "IPv6 TCP from {GOOD6} blocked");
    let bans = setup.bans();
    let bad = bans.iter().find(|b| b["net"] == BAD4).expect("ban listed");
    assert!(bad["packets"].as_u64().unwrap() >= 3, "the tc filter did not count its drops: {bad}");
    assert!(bad["bytes"].as_u64().unwrap() > bad["packets"].as_u64().unwrap() * 20, "{bad}");

    setup.ok(&["unban", BAD4]);
    assert!(net.tcp_passes(BAD4, tcp_to), "TCP from {BAD4} still blocked after unban");
    assert!(!net.tcp_passes(BAD6, tcp6_to), "unban of {BAD4} lifted the ban of {BAD6}");

    // Like the XDP link, the pinned tc link keeps enforcing while the daemon is down, and a
    // restart moves it to the new program.
    setup.ok(&["ban", BAD4, "--reason", "tc test again"]);
    daemon.stop();
    assert!(!net.tcp_passes(BAD4, tcp_to), "tc ban lost at a clean stop");
    assert!(net.tcp_passes(GOOD4, tcp_to), "{GOOD4} blocked with the daemon down");
    let daemon = setup.start();
    let status = daemon.status();
    assert_eq!(status["xdp"]["interfaces"][0]["mode"], "replaced", "pinned tc link not reused: {status}");
    assert_eq!(status["xdp"]["interfaces"][0]["program"], "tc_guard", "{status}");
    assert!(!net.tcp_passes(BAD4, tcp_to), "tc ban lost across the restart");
    daemon.stop();

    let detached = setup.ok(&["xdp", "detach"]);
    let removed = detached["data"]["removed"].as_array().unwrap();
    assert!(removed.iter().any(|r| r == &format!("tc_links/{}", net.host_if)), "{detached}");
    assert!(net.tcp_passes(BAD4, tcp_to), "tc filter still attached after `ids xdp detach`");
}

#[test]
fn auto_mode_puts_the_tc_filter_on_a_veth_and_a_mode_change_replaces_the_program() {
    let net = Net::new("m");
    let setup = Setup::new("mode", &net.host_if, "", "");
    let (_tcp, tcp_to) = tcp_listener(HOST4);
    let daemon = setup.start();
    let status = daemon.status();
    assert_eq!(status["xdp"]["interfaces"][0]["program"], "tc_guard", "auto chose XDP on a veth: {status}");
    setup.ok(&["ban", BAD4, "--reason", "mode test"]);
    assert!(!net.tcp_passes(BAD4, tcp_to), "banned {BAD4} passed");
    daemon.stop();

    // The same pins, now in native XDP: the tc link goes, the XDP program enforces the same bans.
    let config = fs::read_to_string(&setup.config).unwrap().replace("[xdp]\n", "[xdp]\nmode = \"native\"\n");
    fs::write(&setup.config, config).unwrap();
    let daemon = setup.start();
    let status = daemon.status();
    assert_eq!(status["xdp"]["interfaces"][0]["mode"], "native", "{status}");
    assert_eq!(status["xdp"]["interfaces"][0]["program"], "xdp_guard", "{status}");
    // Its last reference gone with the pin, the kernel detaches the tc link.
    assert!(!Path::new(&test_pin_dir("mode")).join("tc_links").join(&net.host_if).exists(), "tc link left pinned");
    assert!(!net.tcp_passes(BAD4, tcp_to), "ban lost when the mode changed");
    assert!(net.tcp_passes(GOOD4, tcp_to), "{GOOD4} blocked");
    daemon.stop();
}

#[test]
fn bans_hold_after_kill_9_and_a_restart_reconciles_the_maps_with_the_store() {
    let net = Net::new("k");
    let setup = Setup::new("restart", &net.host_if, "mode = \"native\"", "");
    let (_tcp, tcp_to) = tcp_listener(HOST4);
    let daemon = setup.start();
    setup.ok(&["ban", BAD4, "--for", "permanent", "--reason", "kill test"]);
    assert!(!net.tcp_passes(BAD4, tcp_to));
    daemon.kill();

    // The pinned program and maps keep the ban while no daemon runs.
    assert!(!net.tcp_passes(BAD4, tcp_to), "ban lost when the daemon was killed");
    assert!(net.tcp_passes(GOOD4, tcp_to), "{GOOD4} blocked with the daemon down");

    // With the daemon down, ban and unban edit the store and say so.
    let added = setup.ok(&["ban", GOOD4, "--reason", "while down"]);
    assert_eq!(added["daemon"], false, "{added}");
    let removed = setup.ok(&["unban", BAD4]);
    assert_eq!(removed["daemon"], false, "{removed}");
    let human = Command::new(ids_bin()).args(["ban", "10.232.0.9", "--config"]).arg(&setup.config).output().unwrap();
    assert!(String::from_utf8_lossy(&human.stdout).contains("the daemon is not running"), "{human:?}");
    setup.ok(&["unban", "10.232.0.9"]);
    // They take effect at the next start, not before.
    assert!(!net.tcp_passes(BAD4, tcp_to), "offline unban reached the kernel before the restart");
    assert!(net.tcp_passes(GOOD4, tcp_to), "offline ban reached the kernel before the restart");

    let daemon = setup.start();
    let status = daemon.status();
    assert_eq!(status["xdp"]["interfaces"][0]["mode"], "replaced", "pinned link not reused: {status}");
    assert_eq!(status["xdp"]["bans"], 1, "{status}");
    assert!(net.tcp_passes(BAD4, tcp_to), "ban removed while down is still in the map");
    assert!(!net.tcp_passes(GOOD4, tcp_to), "ban added while down not applied");
    let bans = setup.bans();
    assert_eq!(bans.len(), 1, "{bans:?}");
    assert_eq!(bans[0]["net"], GOOD4);
    daemon.stop();
    // A clean stop keeps the filter too.
    assert!(!net.tcp_passes(GOOD4, tcp_to), "ban lost at a clean stop");
    // `ids xdp detach` removes everything.
    let detached = setup.ok(&["xdp", "detach"]);
    assert!(detached["data"]["removed"].as_array().unwrap().len() >= 8, "{detached}");
    assert!(!Path::new(&test_pin_dir("restart")).exists(), "pin directory left behind");
    assert!(net.tcp_passes(GOOD4, tcp_to), "filter still attached after `ids xdp detach`");
}

#[test]
fn a_hundred_thousand_bans_load_and_are_enforced() {
    let net = Net::new("m");
    let setup = Setup::new("many", &net.host_if, "", "");
    let list = setup.config.with_file_name("bans.txt");
    let mut text = String::from("# 100,000 addresses of 198.18.0.0/15 and one of the namespace\n");
    for i in 0..100_000u32 {
        text += &format!("198.{}.{}.{}\n", 18 + (i >> 16), (i >> 8) & 0xff, i & 0xff);
    }
    text += &format!("{BAD4}\n");
    fs::write(&list, text).unwrap();
    // Into the store while the daemon is down, applied to the maps at start.
    let loaded = setup.ok(&["ban", "--file", list.to_str().unwrap(), "--reason", "bulk"]);
    assert_eq!(loaded["data"].as_array().unwrap().len(), 100_001);
    let (_tcp, tcp_to) = tcp_listener(HOST4);
    let daemon = setup.start();
    let status = daemon.status();
    assert_eq!(status["xdp"]["bans"], 100_001, "{status}");
    assert!(!net.tcp_passes(BAD4, tcp_to), "ban from the bulk list not enforced");
    assert!(net.tcp_passes(GOOD4, tcp_to), "{GOOD4} blocked");
    // And through the running daemon.
    let more = setup.config.with_file_name("more.txt");
    fs::write(&more, (0..2000).map(|i| format!("fd00:9::{i:x}\n")).collect::<String>() + GOOD4 + "\n").unwrap();
    let added = setup.ok(&["ban", "--file", more.to_str().unwrap(), "--reason", "bulk v6"]);
    assert_eq!(added["data"].as_array().unwrap().len(), 2001);
    assert!(!net.tcp_passes(GOOD4, tcp_to), "ban from the second list not enforced");
    assert_eq!(setup.bans().len(), 102_002);
    daemon.stop();
}

#[test]
fn a_scan_of_a_hundred_ports_gets_the_source_banned() {
    let net = Net::new("s");
    let setup = Setup::new("scan", &net.host_if, "scan_ports = 50\nscan_window = \"30s\"", "scan_duration = \"10m\"");
    let daemon = setup.start();
    let (_tcp, tcp_to) = tcp_listener(HOST4);
    let host: IpAddr = HOST4.parse().unwrap();
    let source: IpAddr = BAD4.parse().unwrap();
    net.run(move || {
        for port in 20_000..20_100u16 {
            let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
            socket.bind(&SocketAddr::new(source, 0).into()).unwrap();
            let _ = socket.connect_timeout(&SocketAddr::new(host, port).into(), Duration::from_millis(100));
        }
    });
    wait_until("the scanner banned", Duration::from_secs(5), || setup.bans().iter().any(|b| b["net"] == BAD4));
    let bans = setup.bans();
    assert_eq!(bans.len(), 1, "only the scanner is banned: {bans:?}");
    assert_eq!(bans[0]["source"], "port-scan", "{bans:?}");
    assert!(bans[0]["expires"].is_string(), "scan_duration not applied: {bans:?}");
    assert!(!net.tcp_passes(BAD4, tcp_to), "scanner not blocked");
    assert!(net.tcp_passes(GOOD4, tcp_to), "{GOOD4} blocked");
    let alerts = setup.ok(&["alerts", "-n", "5"]);
    let alert = alerts["data"].as_array().unwrap().iter().find(|a| a["item"] == BAD4).cloned();
    assert!(alert.as_ref().is_some_and(|a| a["kind"] == "ban" && a["source"] == "port-scan"), "{alerts}");
    let status = daemon.status();
    assert!(status["xdp"]["scan_reports"].as_u64().unwrap() >= 1, "{status}");
    daemon.stop();
}

#[test]
fn a_syn_flood_to_one_port_gets_the_source_banned_and_normal_use_does_not() {
    let net = Net::new("f");
    let setup = Setup::new("flood", &net.host_if, "scan_ports = 0\nflood_syns = 40\nscan_window = \"30s\"", "");
    let daemon = setup.start();
    let (_tcp, tcp_to) = tcp_listener(HOST4);
    // A few connections from one source are not a flood.
    for _ in 0..5 {
        assert!(net.tcp_passes(GOOD4, tcp_to));
    }
    let source: IpAddr = BAD4.parse().unwrap();
    net.run(move || {
        for _ in 0..60 {
            let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
            socket.bind(&SocketAddr::new(source, 0).into()).unwrap();
            let _ = socket.connect_timeout(&tcp_to.into(), Duration::from_millis(100));
        }
    });
    wait_until("the flooder banned", Duration::from_secs(5), || setup.bans().iter().any(|b| b["net"] == BAD4));
    let bans = setup.bans();
    assert_eq!(bans.len(), 1, "only the flooder is banned: {bans:?}");
    assert_eq!(bans[0]["source"], "syn-flood", "{bans:?}");
    assert!(net.tcp_passes(GOOD4, tcp_to), "{GOOD4} blocked");
    daemon.stop();
}

#[test]
fn bad_ban_input_is_refused_with_a_clear_error_and_changes_nothing() {
    let net = Net::new("b");
    let setup = Setup::new("bad", &net.host_if, "", "");
    let cases: [(&[&str], &str); 7] = [
        (&["ban", "999.1.1.1"], "not an IPv4 or IPv6 address"),
        // The host's own address on the veth: trusted by `[xdp] trust_local` (default on).
        (&["ban", HOST4], "an address of this host"),
        (&["ban", "198.18.0.0/33"], "longer than 32"),
        (&["ban", "::/0"], "--force"),
        (&["ban", "198.18.0.1", "--reason", ""], "reason"),
        (&["ban", "198.18.0.1", "--for", "-5m"], "negative"),
        (&["unban", "10.0.0.300"], "not an IPv4 or IPv6 address"),
    ];
    let check = |when: &str| {
        for (args, expected) in cases {
            let (success, json) = setup.ids(args);
            assert!(!success, "{when}: ids {args:?} succeeded: {json}");
            assert_eq!(json["ok"], false, "{when}: {json}");
            let error = json["error"].as_str().unwrap_or("");
            assert!(error.contains(expected), "{when}: ids {args:?}: error {error:?} does not say {expected:?}");
            // People get the error on stderr, not a panic.
            let human = Command::new(ids_bin()).args(args).arg("--config").arg(&setup.config).output().unwrap();
            let stderr = String::from_utf8_lossy(&human.stderr);
            assert!(!human.status.success() && stderr.contains(expected) && !stderr.contains("panicked"), "{stderr}");
        }
        assert!(setup.bans().is_empty(), "{when}: refused input changed the bans: {:?}", setup.bans());
    };
    check("daemon down");
    let daemon = setup.start();
    check("daemon running");
    // With --force the broad prefix is accepted.
    setup.ok(&["ban", "::/0", "--force", "--reason", "everything v6"]);
    let mut stderr = String::new();
    let _ = daemon.stop().as_bytes().read_to_string(&mut stderr);
}

#[test]
fn a_bulk_ban_refused_part_way_through_the_daemon_changes_nothing_and_names_the_line() {
    let net = Net::new("k");
    let setup = Setup::new("bulk", &net.host_if, "", "");
    let daemon = setup.start();
    let (_tcp, tcp_to) = tcp_listener(HOST4);
    let before = setup.ok(&["ban", BAD4, "--for", "1h", "--reason", "before the list"]);
    let expires = before["data"][0]["expires"].clone();
    // 20,000 addresses (several control requests), GOOD4 early, BAD4 again, and on the last line
    // the host's own address, which `[xdp] trust_local` trusts.
    let list = setup.config.with_file_name("bulk.txt");
    let mut text = format!("# bulk\n{GOOD4}\n");
    for i in 0..20_000u32 {
        text += &format!("198.18.{}.{}\n", i >> 8, i & 0xff);
    }
    text += &format!("{BAD4}\n{HOST4}  # this host\n");
    fs::write(&list, &text).unwrap();
    let last_line = text.lines().count();
    let (success, refused) = setup.ids(&["ban", "--file", list.to_str().unwrap(), "--for", "2h", "--reason", "bulk"]);
    assert!(!success && refused["ok"] == false, "a list with a trusted address was accepted: {refused}");
    let error = refused["error"].as_str().unwrap();
    assert!(
        error.contains(&format!("line {last_line}:")) && error.contains("trusted"),
        "error does not name line {last_line}: {error}"
    );
    let bans = setup.bans();
    assert_eq!(bans.len(), 1, "the refused list left bans behind: {} bans", bans.len());
    assert_eq!(bans[0]["expires"], expires, "the refused list extended the earlier ban");
    assert!(net.tcp_passes(GOOD4, tcp_to), "{GOOD4} of the refused list dropped");
    // Without the trusted line the list applies whole; the human output counts it.
    fs::write(&list, text.replace(&format!("{HOST4}  # this host\n"), "")).unwrap();
    let out = Command::new(ids_bin())
        .args(["ban", "--file", list.to_str().unwrap(), "--for", "2h", "--reason", "bulk", "--config"])
        .arg(&setup.config)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("banned 20002 (1 already banned)"), "{stdout}");
    assert_eq!(setup.bans().len(), 20_002);
    assert!(!net.tcp_passes(GOOD4, tcp_to), "{GOOD4} of the applied list passes");
    daemon.stop();
}

#[test]
fn an_address_added_to_this_host_while_the_daemon_runs_is_trusted_until_removed() {
    let net = Net::new("l");
    let setup = Setup::new("local", &net.host_if, "", "");
    // The namespace sends from TRUSTED4 while the host has it too: the host must take such
    // datagrams (accept_local) for them to reach the socket once XDP lets them through.
    sh("sysctl", &["-q", "-w", &format!("net.ipv4.conf.{}.accept_local=1", net.host_if)]);
    let daemon = setup.start();
    let udp = UdpSocket::bind((HOST4.parse::<IpAddr>().unwrap(), 0)).unwrap();
    // A prefix ban around TRUSTED4 (allowed: it is not an address of this host yet).
    let prefix = "10.232.0.4/30";
    setup.ok(&["ban", prefix, "--reason", "around the address"]);
    assert!(!net.udp_passes(TRUSTED4, &udp), "{TRUSTED4} passes inside the banned {prefix}");
    let local = format!("{TRUSTED4}/32");
    sh("ip", &["addr", "add", &local, "dev", &net.host_if]);
    // The kernel reports the new address and the daemon reads the addresses again at once (its
    // poll without notifications is once a minute).
    wait_until("the new address trusted", Duration::from_secs(2), || {
        let (success, json) = setup.ids(&["ban", TRUSTED4, "--reason", "own address"]);
        assert!(success || json["error"].as_str().unwrap_or("").contains("trusted"), "{json}");
        if success {
            // Not seen yet: lift the ban again, so that only the prefix ban remains.
            setup.ok(&["unban", TRUSTED4]);
        }
        !success
    });
    assert!(net.udp_passes(TRUSTED4, &udp), "{TRUSTED4}, now an address of this host, dropped by the prefix ban");
    sh("ip", &["addr", "del", &local, "dev", &net.host_if]);
    wait_until("the removed address no longer trusted", Duration::from_secs(2), || {
        let (success, json) = setup.ids(&["ban", TRUSTED4, "--reason", "no longer ours"]);
        assert!(success || json["error"].as_str().unwrap_or("").contains("trusted"), "{json}");
        success
    });
    assert!(!net.udp_passes(TRUSTED4, &udp), "{TRUSTED4}, no longer an address of this host, passes its ban");
    assert!(net.udp_passes(GOOD4, &udp), "{GOOD4} dropped");
    daemon.stop();
}
