//! The Prometheus endpoint (`[metrics] listen`) of a real daemon, scraped over TCP: the body is
//! valid exposition (`promtool check metrics`), its counters move with what the sensor sees, other
//! paths are 404, and an idle client does not hold up another scrape.
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use ids_tests::{Daemon, Scratch};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A response as read off the wire: status code, head and body.
struct Response {
    code: u16,
    head: String,
    body: String,
}

/// One `GET path` over a new connection; the server closes it after the response.
fn get(port: u16, path: &str) -> Response {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap_or_else(|e| panic!("connecting to :{port}: {e}"));
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n").unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).unwrap_or_else(|e| panic!("reading the response to {path}: {e}"));
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no end of head in {raw:?}"));
    let code = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("no status in {head:?}"));
    Response { code, head: head.to_string(), body: body.to_string() }
}

/// The value of the sample `series` (name and labels exactly as written) in an exposition.
fn sample(body: &str, series: &str) -> Option<u64> {
    body.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn start(name: &str, watched: &Path, port: u16) -> Daemon {
    Daemon::start_with(name, &[watched], &[], &format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n"))
}

#[test]
fn a_scrape_is_valid_exposition_and_its_file_counter_moves_with_writes() {
    let watched = Scratch::new("/var/tmp", "metrics-watched");
    let port = free_port();
    let daemon = start("metrics", &watched.0, port);

    let first = get(port, "/metrics");
    assert_eq!(first.code, 200, "{}", first.head);
    assert!(
        first.head.to_ascii_lowercase().contains("content-type: text/plain; version=0.0.4"),
        "content type: {}",
        first.head
    );
    ids_tests::promtool_check(&first.body);
    for family in [
        "ids_up 1",
        "# TYPE ids_events_received_total counter",
        "# TYPE ids_events_lost_total counter",
        "# TYPE ids_alerts_total counter",
        "# TYPE ids_bans_active gauge",
        "# TYPE ids_xdp_interfaces gauge",
        "# TYPE ids_integrity_items gauge",
        "# TYPE ids_integrity_dirty gauge",
        "# TYPE ids_integrity_aggregate_ready gauge",
        "# TYPE ids_events_log_write_failures_total counter",
        "# TYPE ids_program_errors_total counter",
        "# TYPE ids_detect_log_lines_total counter",
        "# TYPE ids_uptime_seconds gauge",
    ] {
        assert!(first.body.contains(family), "no {family:?} in\n{}", first.body);
    }
    assert!(!first.body.contains("ids_fleet_"), "fleet metrics without [fleet]:\n{}", first.body);

    let series = r#"ids_events_received_total{signal="file"}"#;
    let before = sample(&first.body, series).unwrap_or_else(|| panic!("no {series} in\n{}", first.body));
    for i in 0..5 {
        std::fs::write(watched.0.join(format!("f{i}")), "changed").unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = sample(&get(port, "/metrics").body, series).unwrap();
        if now > before {
            break;
        }
        assert!(Instant::now() < deadline, "{series} stayed at {before} after 5 writes in the watched directory");
        std::thread::sleep(Duration::from_millis(100));
    }
    daemon.stop();
}

#[test]
fn other_paths_are_404_and_an_idle_client_does_not_hold_up_a_scrape() {
    let watched = Scratch::new("/var/tmp", "metrics-idle-watched");
    let port = free_port();
    let daemon = start("metrics-idle", &watched.0, port);

    assert_eq!(get(port, "/nope").code, 404);
    assert_eq!(get(port, "/metrics/").code, 404);

    // Connected, sending nothing: the next scrape is answered at once all the same.
    let mut idle = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let asked = Instant::now();
    let scrape = get(port, "/metrics");
    assert_eq!(scrape.code, 200);
    assert!(asked.elapsed() < Duration::from_secs(3), "a scrape took {:?} beside an idle client", asked.elapsed());

    // And the idle client is closed after its read timeout rather than held for good.
    idle.set_read_timeout(Some(Duration::from_secs(25))).unwrap();
    let mut rest = Vec::new();
    let closed = idle.read_to_end(&mut rest);
    assert!(closed.is_ok() || rest.is_empty(), "idle client: {closed:?}");
    assert!(asked.elapsed() < Duration::from_secs(20), "the idle client was held {:?}", asked.elapsed());
    daemon.stop();
}
