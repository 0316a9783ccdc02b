//! Host tests of the daemon under faults: descriptors running out on the control socket, a full
//! file system under the events log and under the state directory, a damaged database, two
//! daemons on one state directory. Root only (prlimit on the daemon, mount).
use std::fs;
use std::io::Write as _;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ids_tests::{Daemon, Pins, Scratch, ids_bin, sh, test_pin_dir};
use serde_json::Value;

/// `ids status --json` against `config`, with how long it took; `None` if it failed.
fn timed_status(config: &Path) -> (Option<Value>, Duration) {
    let started = Instant::now();
    let out = Command::new(ids_bin()).args(["status", "--json", "--config"]).arg(config).output().unwrap();
    let status = out.status.success().then(|| serde_json::from_slice(&out.stdout).ok()).flatten();
    (status, started.elapsed())
}

/// A daemon config with one recursive `file_contents` collector over `watched`.
fn write_watching_config(config: &Path, events: &Path, state: &Path, pins: &str, watched: &Path) {
    fs::write(
        config,
        format!(
            "watch = []\nevents_log = {:?}\nstate_dir = {:?}\nxdp.interfaces = [\"lo\"]\nxdp.pin_dir = {:?}\n\
             [[collectors]]\nkind = \"file_contents\"\nname = \"files\"\npaths = [{:?}]\nrecursive = true\n",
            events.display().to_string(),
            state.join("state").display().to_string(),
            test_pin_dir(pins),
            watched.display().to_string(),
        ),
    )
    .unwrap();
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
    eprintln!(
        "status answered {:?} after the idle connections were made; {accept_errors} accept errors",
        started.elapsed()
    );
    assert!(accept_errors < 50, "{accept_errors} accept errors logged");
}

/// Starts the daemon of `config` and waits (60 s at most) for its first scan.
fn spawn_scanned(config: &Path, events: &Path) -> Daemon {
    let daemon = Daemon::spawn(config, events);
    let deadline = Instant::now() + Duration::from_secs(60);
    while daemon.status()["integrity"]["ready"] != true {
        assert!(Instant::now() < deadline, "the first scan did not finish within 60 s");
        std::thread::sleep(Duration::from_millis(200));
    }
    daemon
}

/// A tmpfs of `size` mounted on a scratch directory (unmounted when the scratch is dropped,
/// whatever happens in the test).
fn small_tmpfs(name: &str, size: &str) -> Scratch {
    let dir = Scratch::new("/var/tmp", name);
    sh("mount", &["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs", dir.0.to_str().unwrap()]);
    dir
}

/// Writes to `path` until the file system has no room left.
fn fill(path: &Path) {
    let mut file = fs::File::create(path).unwrap();
    let block = vec![b'x'; 4096];
    loop {
        match file.write(&block) {
            Ok(0) => break,
            Ok(_) => continue,
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
}

/// The integrity alerts the daemon stored for `path` (`ids alerts`).
fn stored_alerts_for(daemon: &Daemon, path: &Path) -> usize {
    let alerts = daemon.ids_json(&["alerts", "-n", "1000"]);
    let id = format!("file:{}", path.display());
    alerts["data"].as_array().unwrap().iter().filter(|a| a["kind"] == "integrity" && a["item"] == id.as_str()).count()
}

#[test]
fn a_full_events_log_keeps_the_sensor_running_counts_the_failures_and_resumes() {
    let state = Scratch::new("/var/tmp", "faults-disk-state");
    let watched = Scratch::new("/var/tmp", "faults-disk-watched");
    let logfs = small_tmpfs("faults-disk-log", "256k");
    let events = logfs.0.join("events.jsonl");
    let config = state.0.join("ids.toml");
    let first = watched.0.join("first");
    let second = watched.0.join("second");
    fs::write(&first, b"one").unwrap();
    fs::write(&second, b"two").unwrap();
    write_watching_config(&config, &events, &state.0, "faults-disk", &watched.0);
    let _pins = Pins { config: config.clone() };
    let daemon = Daemon::spawn(&config, &events);

    fill(&logfs.0.join("filler"));
    // Changes while the log cannot grow: many file events, each to be written and failing.
    for round in 0..50 {
        fs::write(&first, format!("changed {round}")).unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while stored_alerts_for(&daemon, &first) == 0 {
        assert!(Instant::now() < deadline, "no integrity alert for {} while the log was full", first.display());
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = daemon.status();
    let failures = status["events_log_errors"].as_u64().unwrap_or_else(|| panic!("no events_log_errors: {status}"));
    assert!(failures > 0, "{status}");
    eprintln!("while full: events_log_errors {failures}, lines lost {}", status["events_log_lines_lost"]);

    fs::remove_file(logfs.0.join("filler")).unwrap();
    fs::write(&second, b"changed after space came back").unwrap();
    let id = format!("file:{}", second.display());
    let resumed = daemon.wait_for(1, |e| e["kind"] == "integrity" && e["id"] == id.as_str());
    assert_eq!(resumed.len(), 1, "no integrity alert for {id} in the log once there was room");
    // Every line of the log is whole JSON (`events` panics on one that is not).
    let lines = daemon.events();
    assert!(lines.iter().any(|e| e["path"].as_str().is_some_and(|p| p.ends_with("/second"))), "no event for second");
    daemon.stop();
}

/// Runs `ids <args> --config <config>`; its exit code and output (stdout then stderr).
fn ids(args: &[&str], config: &Path) -> (i32, String) {
    let out = Command::new(ids_bin()).args(args).arg("--config").arg(config).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn a_damaged_database_stops_the_start_and_ids_db_recover_lets_it_start_again() {
    let state = Scratch::new("/var/tmp", "faults-db-state");
    let watched = Scratch::new("/var/tmp", "faults-db-watched");
    // Enough items that the database has many pages, so that one in the middle holds rows.
    for i in 0..3000 {
        fs::write(watched.0.join(format!("file-{i:05}")), format!("contents of file {i}")).unwrap();
    }
    let events = state.0.join("events.jsonl");
    let config = state.0.join("ids.toml");
    write_watching_config(&config, &events, &state.0, "faults-db", &watched.0);
    let _pins = Pins { config: config.clone() };
    let daemon = spawn_scanned(&config, &events);
    daemon.stop();

    let database = state.0.join("state/ids.db");
    let pages = fs::metadata(&database).unwrap().len() / 4096;
    assert!(pages > 20, "the database has only {pages} pages");
    let file = fs::OpenOptions::new().write(true).open(&database).unwrap();
    use std::os::unix::fs::FileExt as _;
    file.write_all_at(&vec![0xA5; 3 * 4096], (pages / 2) * 4096).unwrap();
    drop(file);

    // The start refuses, naming the file and the way out.
    let mut child = Command::new(ids_bin())
        .args(["run", "--config"])
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the daemon started on a damaged database");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "{stderr}");
    let named = database.display().to_string();
    assert!(stderr.contains(&named) && stderr.contains("ids db recover"), "{stderr}");

    let (code, out) = ids(&["db", "check"], &config);
    assert_eq!(code, 1, "ids db check on the damaged database: {out}");
    let (code, out) = ids(&["db", "recover"], &config);
    assert_eq!(code, 0, "ids db recover: {out}");
    assert!(out.contains("ids.db.damaged-") && out.contains("rescan"), "{out}");
    eprintln!("ids db recover:\n{out}");
    let kept = fs::read_dir(state.0.join("state"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with("ids.db.damaged-"))
        .count();
    assert!(kept >= 1, "the damaged file was not kept");
    let (code, out) = ids(&["db", "check"], &config);
    assert_eq!((code, out.trim()), (0, "ok"), "ids db check after recovery");

    let daemon = Daemon::spawn(&config, &events);
    let deadline = Instant::now() + Duration::from_secs(60);
    while daemon.status()["integrity"]["ready"] != true {
        assert!(Instant::now() < deadline, "the scan after recovery did not finish within 60 s");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(daemon.status()["integrity"]["items"].as_u64().unwrap() >= 3000);
    daemon.stop();
}

/// The integrity alerts for files under `dir` in the events log, and in the store (row ids).
fn integrity_alerts_under(daemon: &Daemon, db: &Path, dir: &Path) -> (usize, Vec<i64>) {
    let prefix = format!("file:{}/", dir.display());
    let logged = daemon
        .events()
        .into_iter()
        .filter(|e| e["kind"] == "integrity" && e["id"].as_str().is_some_and(|id| id.starts_with(&prefix)))
        .count();
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut query = conn.prepare("SELECT id, item_id FROM alerts WHERE kind = 'integrity'").unwrap();
    let stored = query
        .query_map([], |row| Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .filter(|(_, item)| item.starts_with(prefix.as_str()))
        .map(|(id, _)| id)
        .collect();
    (logged, stored)
}

#[test]
fn a_full_state_dir_keeps_the_alerts_and_stores_each_once_when_space_returns() {
    let statefs = small_tmpfs("faults-state-full", "16m");
    let home = Scratch::new("/var/tmp", "faults-state-home");
    let watched = Scratch::new("/var/tmp", "faults-state-watched");
    for i in 0..200 {
        fs::write(watched.0.join(format!("file-{i:03}")), format!("first {i}")).unwrap();
    }
    let events = home.0.join("events.jsonl");
    let config = home.0.join("ids.toml");
    write_watching_config(&config, &events, &statefs.0, "faults-state", &watched.0);
    let _pins = Pins { config: config.clone() };
    let daemon = spawn_scanned(&config, &events);
    let db = statefs.0.join("state/ids.db");

    fill(&statefs.0.join("filler"));
    // Rounds of changes until the store refuses some (a write-ahead log with room left takes
    // the first ones).
    let mut rounds = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while daemon.status()["alert_store"]["store_failures"].as_u64().unwrap_or(0) == 0 {
        assert!(Instant::now() < deadline, "the store never refused an alert: {}", daemon.status());
        for i in 0..200 {
            fs::write(watched.0.join(format!("file-{i:03}")), format!("round {rounds} {i}")).unwrap();
        }
        rounds += 1;
        std::thread::sleep(Duration::from_millis(500));
    }
    let full = daemon.status();
    assert!(full["alert_store"]["unstored"].as_u64().unwrap() > 0, "no alert kept for a retry: {full}");
    // Running on: still answering, alerts still written to the events log.
    let (logged_while_full, _) = integrity_alerts_under(&daemon, &db, &watched.0);
    assert!(logged_while_full > 0);

    fs::remove_file(statefs.0.join("filler")).unwrap();
    // The retry (every 10 s, or the next alert's store) takes them all.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = daemon.status();
        let settled = status["alert_store"]["unstored"] == 0 && status["integrity"]["dirty"] == 0;
        let (logged, stored) = integrity_alerts_under(&daemon, &db, &watched.0);
        if settled && logged == stored.len() {
            let mut unique = stored.clone();
            unique.dedup();
            assert_eq!(unique.len(), stored.len(), "an alert stored twice");
            assert_eq!(status["alert_store"]["lost"], 0, "{status}");
            eprintln!(
                "{rounds} rounds; while full: {} failures, {} kept; after: {logged} alerts logged and stored",
                full["alert_store"]["store_failures"], full["alert_store"]["unstored"]
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "alerts not all stored 30 s after space came back: {logged} logged, {} stored; {status}",
            stored.len()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let conn = rusqlite::Connection::open(&db).unwrap();
    let check: String = conn.query_row("PRAGMA integrity_check", [], |row| row.get(0)).unwrap();
    assert_eq!(check, "ok");
    drop(conn);
    daemon.stop();
}

#[test]
fn a_second_daemon_on_the_same_state_dir_is_refused_and_the_first_runs_on() {
    let state = Scratch::new("/var/tmp", "faults-two-daemons");
    let watched = Scratch::new("/var/tmp", "faults-two-watched");
    let events = state.0.join("events.jsonl");
    let config = state.0.join("ids.toml");
    write_watching_config(&config, &events, &state.0, "faults-two", &watched.0);
    let _pins = Pins { config: config.clone() };
    let daemon = Daemon::spawn(&config, &events);
    let second = Command::new(ids_bin()).args(["run", "--config"]).arg(&config).output().unwrap();
    let text = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "a second daemon started on the same state dir: {text}");
    assert!(text.contains("another daemon answers on") && text.contains("control.sock"), "{text}");
    // The first one still answers, still on its socket, and still sees changes.
    fs::write(watched.0.join("after"), b"written after the refusal").unwrap();
    let id = format!("file:{}", watched.0.join("after").display());
    let seen = daemon.wait_for(1, |e| e["kind"] == "integrity" && e["id"] == id.as_str());
    assert_eq!(seen.len(), 1, "the first daemon stopped seeing changes");
    daemon.stop();
}

/// Every `(item, digest)` of the baseline, in order.
fn baseline_of(db: &Path) -> Vec<(String, String)> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let check: String = conn.query_row("PRAGMA integrity_check", [], |row| row.get(0)).unwrap();
    assert_eq!(check, "ok", "{} after a kill", db.display());
    let mut query = conn.prepare("SELECT item_id, digest FROM baseline_items ORDER BY item_id").unwrap();
    query.query_map([], |row| Ok((row.get(0)?, row.get(1)?))).unwrap().map(Result::unwrap).collect()
}

/// Starts `ids <args> --config config`, SIGKILLs it after `delay` unless it ended first; whether
/// it ended by itself.
fn killed_after(args: &[&str], config: &Path, delay: Duration) -> bool {
    let mut child = Command::new(ids_bin())
        .args(args)
        .arg("--config")
        .arg(config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(delay);
    let ended = child.try_wait().unwrap().is_some();
    let _ = child.kill();
    let _ = child.wait();
    ended
}

#[test]
fn sigkill_at_every_phase_of_a_baseline_leaves_the_old_one_or_the_new_one() {
    let state = Scratch::new("/var/tmp", "faults-kill-baseline");
    let watched = Scratch::new("/var/tmp", "faults-kill-baseline-watched");
    let write_all = |round: &str| {
        for i in 0..3000 {
            fs::write(watched.0.join(format!("file-{i:04}")), format!("{round} {i}")).unwrap();
        }
    };
    write_all("old");
    let events = state.0.join("events.jsonl");
    let config = state.0.join("ids.toml");
    write_watching_config(&config, &events, &state.0, "faults-kill-baseline", &watched.0);
    let db = state.0.join("state/ids.db");
    // No daemon: `ids baseline` scans and writes the database itself.
    let (code, text) = ids(&["baseline"], &config);
    assert_eq!(code, 0, "{text}");
    let old = baseline_of(&db);
    assert_eq!(old.len(), 3000);
    write_all("new");
    // Killed earlier than the scan takes, during it, while it writes, and not at all.
    let mut snapshots = Vec::new();
    let mut delay = Duration::ZERO;
    loop {
        let ended = killed_after(&["baseline"], &config, delay);
        snapshots.push((delay, baseline_of(&db)));
        if ended {
            break;
        }
        assert!(delay < Duration::from_secs(60), "`ids baseline` did not end within a minute");
        delay = (delay * 3 / 2).max(delay + Duration::from_millis(5));
    }
    let (_, new) = snapshots.last().unwrap().clone();
    assert_ne!(new, old, "the last attempt ended by itself: the new baseline");
    assert_eq!(new.len(), 3000);
    for (delay, snapshot) in &snapshots {
        assert!(*snapshot == old || *snapshot == new, "killed after {delay:?}: a baseline neither old nor new");
    }
    let kept_old = snapshots.iter().filter(|(_, s)| *s == old).count();
    assert!(kept_old > 0, "no attempt was killed before it committed: the test proves nothing");
    eprintln!("{} attempts, {kept_old} killed before the commit", snapshots.len());
}

#[test]
fn sigkill_at_every_phase_of_a_ban_list_leaves_all_of_it_or_none() {
    let state = Scratch::new("/var/tmp", "faults-kill-bans");
    let watched = Scratch::new("/var/tmp", "faults-kill-bans-watched");
    let events = state.0.join("events.jsonl");
    let config = state.0.join("ids.toml");
    write_watching_config(&config, &events, &state.0, "faults-kill-bans", &watched.0);
    let _pins = Pins { config: config.clone() };
    let db = state.0.join("state/ids.db");
    let stored_bans = || -> i64 {
        let conn = rusqlite::Connection::open(&db).unwrap();
        let check: String = conn.query_row("PRAGMA integrity_check", [], |row| row.get(0)).unwrap();
        assert_eq!(check, "ok");
        conn.query_row("SELECT count(*) FROM bans", [], |row| row.get(0)).unwrap()
    };
    // Killed before the list arrives, while it is applied, and (the last, `None`) once `ids ban`
    // has its answer.
    let mut delays =
        [0u64, 20, 50, 100, 200, 400, 800].into_iter().map(|ms| Some(Duration::from_millis(ms))).chain([None]);
    let mut banned_lists = 0;
    let mut round = 0u32;
    loop {
        // A list of 10,000 addresses, other ones in each round (198.18.0.0/15: benchmarking addresses).
        let list = state.0.join(format!("list-{round}"));
        let lines: Vec<String> = (0..10_000u32)
            .map(|i| {
                let n = round * 10_000 + i;
                format!("198.{}.{}.{}", 18 + (n >> 16), (n >> 8) & 255, n & 255)
            })
            .collect();
        fs::write(&list, lines.join("\n") + "\n").unwrap();
        let daemon = Daemon::spawn(&config, &events);
        // The daemon reconciled its maps with the store it found: the kernel holds what the store does.
        let before = stored_bans();
        assert_eq!(daemon.status()["xdp"]["bans"].as_i64(), Some(before), "maps and store after a kill");
        let Some(delay) = delays.next() else {
            daemon.stop();
            break;
        };
        let mut ban = Command::new(ids_bin())
            .args(["ban", "--file"])
            .arg(&list)
            .args(["--for", "1h", "--config"])
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        match delay {
            Some(delay) => std::thread::sleep(delay),
            None => assert!(ban.wait().unwrap().success(), "`ids ban --file` failed with the daemon running"),
        }
        daemon.kill();
        let _ = ban.wait();
        let after = stored_bans();
        assert!(after == before || after == before + 10_000, "killed after {delay:?}: {before} bans became {after}");
        if delay.is_none() {
            assert_eq!(after, before + 10_000, "an answered ban list is not in the store");
        }
        if after != before {
            banned_lists += 1;
        }
        round += 1;
    }
    eprintln!("{round} kills, {banned_lists} lists whole in the store, the others not at all");
    assert!(banned_lists < round, "every kill came after the commit: the test proves nothing");
}
