//! Host tests of the daemon under faults: descriptors running out on the control socket. Root
//! only (prlimit on the daemon).
use std::fs;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ids_tests::{Daemon, ids_bin, sh};
use serde_json::Value;

/// `ids status --json` against `config`, with how long it took; `None` if it failed.
fn timed_status(config: &Path) -> (Option<Value>, Duration) {
    let started = Instant::now();
    let out = Command::new(ids_bin()).args(["status", "--json", "--config"]).arg(config).output().unwrap();
    let status = out.status.success().then(|| serde_json::from_slice(&out.stdout).ok()).flatten();
    (status, started.elapsed())
}

#[test]
fn status_answers_while_hundreds_of_idle_connections_hold_the_control_socket() {
    let daemon = Daemon::start("faults-control", &[], &[]);
    // Fewer descriptors than connections: without a cap, the idle ones take them all.
    sh("prlimit", &["--pid", &daemon.pid().to_string(), "--nofile=256:256"]);
    let socket = PathBuf::from(
        fs::read_to_string(&daemon.config)
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("state_dir = "))
            .map(|dir| serde_json::from_str::<String>(dir).unwrap())
            .unwrap(),
    )
    .join("control.sock");
    let mut idle = Vec::new();
    for _ in 0..300 {
        // Connecting succeeds while the backlog has room, whether or not the daemon accepts.
        if let Ok(stream) = UnixStream::connect(&socket) {
            idle.push(stream);
        }
    }
    assert!(idle.len() >= 200, "only {} connections were made", idle.len());
    // Once the idle ones are closed or refused, status answers; within a few seconds in all.
    let started = Instant::now();
    let answered = loop {
        let (status, took) = timed_status(&daemon.config);
        if let Some(status) = status {
            break (status, took);
        }
        assert!(started.elapsed() < Duration::from_secs(8), "`ids status` did not answer within 8 s");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(started.elapsed() < Duration::from_secs(8), "status took {:?}", started.elapsed());
    assert!(answered.0["pid"] == daemon.pid(), "{}", answered.0);
    drop(idle);
    let stderr = daemon.stop();
    let accept_errors = stderr.matches("control socket accept failed").count();
    assert!(accept_errors < 50, "{accept_errors} accept errors logged");
}
