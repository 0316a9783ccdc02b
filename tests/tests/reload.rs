//! End to end, root: SIGHUP reads the configuration again. A new rule set takes over from the
//! next line on (the old rule no longer alerts, the new one does), a log and a trusted address
//! added to the file are taken up, and every line written across the reload is read once; what
//! needs a restart is named in the log; a configuration or rules file that does not load leaves
//! the daemon running on the one in force. The watch set, collectors, outputs and metrics endpoint
//! change live too: a file output added gets the alerts from then on and a removed one no more,
//! the metrics endpoint moves ports, a directory added to `watch` reports writes and a removed one
//! stops (its inodes leave the kernel map), a collector added hashes its items and alerts on change;
//! a webhook whose CA file is missing or a metrics address already taken refuses the whole file.
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ids_tests::{Daemon, Scratch};
use serde_json::Value;

fn append(path: &Path, line: &str) {
    let mut file = fs::OpenOptions::new().create(true).append(true).open(path).unwrap();
    file.write_all(format!("{line}\n").as_bytes()).unwrap();
}

/// A rules file replacing the shipped rules with one sshd rule `id` matching `WORD from ADDR
/// port N`, one hit enough.
fn write_rules(path: &Path, id: &str, word: &str) {
    fs::write(
        path,
        format!(
            "[[rules]]\nid = {id:?}\ndescription = \"{word} seen\"\nseverity = \"medium\"\nkind = \"sshd\"\n\
             pattern = '{word} from <ADDR> port \\d+'\nthreshold = 1\nwindow = 60\n"
        ),
    )
    .unwrap();
}

fn line(word: &str, addr: &str, n: u32) -> String {
    format!("Dec  5 10:00:00 host sshd[{}]: {word} from {addr} port {n}", 1000 + n)
}

fn detections(daemon: &Daemon) -> Vec<Value> {
    daemon.events().into_iter().filter(|e| e["kind"] == "detect").collect()
}

fn wait_alert_from(daemon: &Daemon, addr: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(alert) = detections(daemon).into_iter().find(|a| a["source"] == addr) {
            return alert;
        }
        assert!(Instant::now() < deadline, "no alert for {addr} within 10 s: {:#?}", detections(daemon));
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct Setup {
    _scratch: Scratch,
    log: PathBuf,
    rules: PathBuf,
    daemon: Daemon,
}

fn start(name: &str) -> Setup {
    let scratch = Scratch::new("/var/tmp", name);
    let log = scratch.0.join("auth.log");
    let rules = scratch.0.join("rules.toml");
    fs::write(&log, "").unwrap();
    write_rules(&rules, "test-alpha", "alpha");
    let extra = format!(
        "rules = {:?}\nrules_mode = \"replace\"\n[[logs]]\nkind = \"sshd\"\npath = {:?}\n",
        rules.display().to_string(),
        log.display().to_string(),
    );
    let daemon = Daemon::start_with(name, &[], &[], &extra);
    Setup { _scratch: scratch, log, rules, daemon }
}

fn lines_read(daemon: &Daemon) -> u64 {
    daemon.status()["detect"]["lines"].as_u64().expect("detect.lines in the status")
}

#[test]
fn sighup_replaces_the_rules_takes_up_logs_and_trusted_and_loses_no_line() {
    let Setup { _scratch, log, rules, daemon } = start("reload");
    append(&log, &line("alpha", "192.0.2.1", 1));
    assert_eq!(wait_alert_from(&daemon, "192.0.2.1")["rule"], "test-alpha");

    // A writer keeps appending while the configuration is replaced and read again.
    let writer = {
        let log = log.clone();
        std::thread::spawn(move || {
            for n in 0..2_000 {
                append(&log, &line("noise", "192.0.2.200", n));
                if n % 100 == 0 {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        })
    };
    let second = log.with_file_name("second.log");
    fs::write(&second, "").unwrap();
    write_rules(&rules, "test-beta", "beta");
    let mut config = fs::read_to_string(&daemon.config).unwrap();
    // Dotted keys before the tables, as the test daemon's file is written.
    // The scratch directory joins the watch set.
    let scratch = log.parent().unwrap().display().to_string();
    config = config.replacen(
        "watch = [",
        &format!("xdp.trusted = [\"127.0.0.0/8\", \"192.0.2.77\"]\nwatch = [{scratch:?}, "),
        1,
    );
    config.push_str(&format!("[[logs]]\nkind = \"sshd\"\npath = {:?}\n", second.display().to_string()));
    fs::write(&daemon.config, config).unwrap();
    daemon.signal(libc::SIGHUP);

    // Once a beta line alerts, the new rules are in force; an alpha line written before a beta
    // one is read first, so it meets them too.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut n: u32 = 0;
    while !detections(&daemon).iter().any(|a| a["rule"] == "test-beta") {
        assert!(Instant::now() < deadline, "the new rule never applied: {:#?}", detections(&daemon));
        append(&log, &line("beta", &format!("192.0.2.{}", 10 + n % 50), n));
        n += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    writer.join().unwrap();
    append(&log, &line("alpha", "192.0.2.2", 2));
    append(&log, &line("beta", "192.0.2.3", 3));
    wait_alert_from(&daemon, "192.0.2.3");
    assert!(
        !detections(&daemon).iter().any(|a| a["source"] == "192.0.2.2"),
        "the removed rule still alerted: {:#?}",
        detections(&daemon)
    );
    // The log added by the reload is followed; the address it trusts is not banned.
    append(&second, &line("beta", "192.0.2.77", 4));
    let trusted = wait_alert_from(&daemon, "192.0.2.77");
    assert_eq!(trusted["path"].as_str().map(|p| p.ends_with("/second.log")), Some(true), "{trusted}");
    assert_eq!(trusted["action"]["type"], "not_banned_trusted", "{trusted}");

    // Every line written was read exactly once: 1 + 2,000 + n + 2 in the first log, 1 in the second.
    let written = 1 + 2_000 + u64::from(n) + 2 + 1;
    let deadline = Instant::now() + Duration::from_secs(10);
    while lines_read(&daemon) < written && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(lines_read(&daemon), written, "lines read across the reload");
    let stderr = daemon.stop();
    assert!(stderr.contains("SIGHUP: configuration reloaded"), "{stderr}");
    assert!(stderr.contains("SIGHUP: watch set updated"), "the added watch path is taken up: {stderr}");
    assert!(!stderr.contains("takes effect when the daemon is restarted"), "{stderr}");
    assert!(stderr.contains("test-beta"), "the new rules are named in the log: {stderr}");
}

#[test]
fn a_configuration_that_does_not_load_leaves_the_daemon_on_the_one_in_force() {
    let Setup { _scratch, log, rules, daemon } = start("reload-bad");
    let good = fs::read_to_string(&daemon.config).unwrap();
    // Not TOML.
    fs::write(&daemon.config, "watch = [\n").unwrap();
    daemon.signal(libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(500));
    append(&log, &line("alpha", "192.0.2.1", 1));
    assert_eq!(wait_alert_from(&daemon, "192.0.2.1")["rule"], "test-alpha");
    // A valid file whose rules file does not compile.
    fs::write(&daemon.config, &good).unwrap();
    fs::write(&rules, "[[rules]]\nid = \"broken\"\n").unwrap();
    daemon.signal(libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(500));
    append(&log, &line("alpha", "192.0.2.2", 2));
    assert_eq!(wait_alert_from(&daemon, "192.0.2.2")["rule"], "test-alpha");
    let stderr = daemon.stop();
    let refusals = stderr.matches("SIGHUP: configuration not reloaded; running on with the one in force").count();
    assert_eq!(refusals, 2, "{stderr}");
    assert!(stderr.contains("ids.toml"), "the configuration file is named: {stderr}");
    assert!(stderr.contains("rules.toml"), "the rules file is named: {stderr}");
    assert!(!stderr.contains("SIGHUP: configuration reloaded"), "{stderr}");
}

/// Polls `done` for up to 15 s; panics with `what` and the last state if it never holds.
fn wait_until(what: &str, mut done: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match done() {
            Ok(()) => return,
            Err(state) if Instant::now() > deadline => panic!("{what}: not within 15 s: {state}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Replaces the daemon's configuration file at once (`ids status` reads it meanwhile), then SIGHUP.
fn write_config(daemon: &Daemon, text: &str) {
    let next = daemon.config.with_extension("toml.next");
    fs::write(&next, text).unwrap();
    fs::rename(&next, &daemon.config).unwrap();
    daemon.signal(libc::SIGHUP);
}

/// Writes the test daemon's configuration again: its first text with `extra` appended; SIGHUP.
fn reconfigure(daemon: &Daemon, first: &str, extra: &str) {
    write_config(daemon, &format!("{first}{extra}"));
}

fn files_collector(name: &str, dir: &Path) -> String {
    format!(
        "[[collectors]]\nkind = \"file_contents\"\nname = {name:?}\npaths = [{:?}]\nrecursive = true\n",
        dir.display().to_string()
    )
}

fn integrity_alert_for(daemon: &Daemon, path: &Path) -> Option<Value> {
    let id = format!("file:{}", path.display());
    daemon.events().into_iter().find(|e| e["kind"] == "integrity" && e["id"] == id.as_str())
}

fn wait_integrity_alert(daemon: &Daemon, path: &Path) -> Value {
    let mut found = None;
    wait_until(&format!("the integrity alert of {}", path.display()), || {
        found = integrity_alert_for(daemon, path);
        found.as_ref().map(|_| ()).ok_or_else(|| "none yet".to_string())
    });
    found.unwrap()
}

fn wait_ready(daemon: &Daemon) {
    wait_until("the integrity scan", || {
        let status = daemon.status();
        if status["integrity"]["ready"] == true && status["integrity"]["dirty"] == 0 {
            Ok(())
        } else {
            Err(status["integrity"].to_string())
        }
    });
}

fn output_names(daemon: &Daemon) -> Vec<String> {
    daemon.status()["outputs"]
        .as_array()
        .map(|outputs| outputs.iter().filter_map(|o| o["name"].as_str().map(String::from)).collect())
        .unwrap_or_default()
}

fn lines_of(path: &Path) -> Vec<Value> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{} line {l:?}: {e}", path.display())))
        .collect()
}

#[test]
fn sighup_adds_a_file_output_that_gets_the_alerts_from_then_on_and_removing_it_stops_them() {
    let watched = Scratch::new("/var/tmp", "reload-outputs-watched");
    let scratch = Scratch::new("/var/tmp", "reload-outputs");
    let out = scratch.0.join("alerts.jsonl");
    let daemon = Daemon::start_with("reload-outputs", &[], &[], &files_collector("files", &watched.0));
    let first = fs::read_to_string(&daemon.config).unwrap();
    wait_ready(&daemon);
    let before = watched.0.join("before");
    fs::write(&before, "one").unwrap();
    wait_integrity_alert(&daemon, &before);

    let output = format!("[[outputs]]\nkind = \"file\"\nname = \"added\"\npath = {:?}\n", out.display().to_string());
    reconfigure(&daemon, &first, &output);
    wait_until("the output in ids status", || {
        let names = output_names(&daemon);
        if names == ["added"] { Ok(()) } else { Err(format!("{names:?}")) }
    });
    let during = watched.0.join("during");
    fs::write(&during, "two").unwrap();
    let alert = wait_integrity_alert(&daemon, &during);
    wait_until("the alert in the added output", || {
        let lines = lines_of(&out);
        if lines.contains(&alert) { Ok(()) } else { Err(format!("{lines:?}")) }
    });
    // Only what was raised after the output was added.
    assert!(
        !lines_of(&out).iter().any(|a| a["id"] == format!("file:{}", before.display()).as_str()),
        "{:?}",
        lines_of(&out)
    );

    reconfigure(&daemon, &first, "");
    wait_until("the output gone from ids status", || {
        let names = output_names(&daemon);
        if names.is_empty() { Ok(()) } else { Err(format!("{names:?}")) }
    });
    let written = lines_of(&out).len();
    let after = watched.0.join("after");
    fs::write(&after, "three").unwrap();
    wait_integrity_alert(&daemon, &after);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(lines_of(&out).len(), written, "the removed output still wrote: {:?}", lines_of(&out));
    let stderr = daemon.stop();
    assert!(stderr.contains("SIGHUP: alert outputs reloaded"), "{stderr}");
    assert!(!stderr.contains("a worker stopped"), "{stderr}");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `GET /metrics` on 127.0.0.1:`port`: the response, or why there was none.
fn scrape(port: u16) -> Result<String, String> {
    use std::io::Read as _;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connecting: {e}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(stream, "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw).map_err(|e| format!("reading: {e}"))?;
    Ok(raw)
}

#[test]
fn sighup_turns_the_metrics_endpoint_on_and_moves_it_to_another_port() {
    let daemon = Daemon::start_with("reload-metrics", &[], &[], "");
    let first = fs::read_to_string(&daemon.config).unwrap();
    let (one, two) = (free_port(), free_port());
    assert!(scrape(one).is_err(), "something answers on {one} already");
    reconfigure(&daemon, &first, &format!("[metrics]\nlisten = \"127.0.0.1:{one}\"\n"));
    let answered = |port: u16| {
        let raw = scrape(port)?;
        if raw.starts_with("HTTP/1.1 200") && raw.contains("\nids_up 1") { Ok(()) } else { Err(raw) }
    };
    wait_until("a scrape of the endpoint turned on", || answered(one));

    reconfigure(&daemon, &first, &format!("[metrics]\nlisten = \"127.0.0.1:{two}\"\n"));
    wait_until("a scrape on the new port", || answered(two));
    wait_until("the old port closed", || match scrape(one) {
        Err(e) if e.starts_with("connecting") => Ok(()),
        other => Err(format!("{other:?}")),
    });
    // Off again.
    reconfigure(&daemon, &first, "");
    wait_until("the endpoint closed", || match scrape(two) {
        Err(e) if e.starts_with("connecting") => Ok(()),
        other => Err(format!("{other:?}")),
    });
    let stderr = daemon.stop();
    assert!(!stderr.contains("a worker stopped"), "{stderr}");
}

fn file_events_under(daemon: &Daemon, dir: &Path) -> Vec<Value> {
    let prefix = format!("{}/", dir.display());
    daemon
        .events()
        .into_iter()
        .filter(|e| e["kind"] == "file" && ids_tests::str_of(e, "path").starts_with(&prefix))
        .collect()
}

fn watch_status(daemon: &Daemon) -> (Vec<String>, u64) {
    let status = daemon.status();
    let roots = status["watch"]["roots"]
        .as_array()
        .map(|roots| roots.iter().filter_map(|r| r.as_str().map(String::from)).collect())
        .unwrap_or_default();
    (roots, status["watch"]["inodes"].as_u64().unwrap_or(0))
}

#[test]
fn sighup_adds_a_watched_directory_whose_writes_are_reported_and_removing_it_takes_it_out_of_the_maps() {
    let kept = Scratch::new("/var/tmp", "reload-watch-kept");
    let added = Scratch::new("/var/tmp", "reload-watch-added");
    for n in 0..20 {
        fs::write(added.0.join(format!("old-{n}")), "x").unwrap();
    }
    let daemon = Daemon::start("reload-watch", &[&kept.0], &[]);
    let first = fs::read_to_string(&daemon.config).unwrap();
    let (roots, inodes) = watch_status(&daemon);
    assert_eq!(roots, [kept.0.display().to_string()]);
    fs::write(added.0.join("unwatched"), "x").unwrap();

    let list =
        |paths: &[&Path]| paths.iter().map(|p| format!("{:?}", p.display().to_string())).collect::<Vec<_>>().join(", ");
    write_config(
        &daemon,
        &first.replacen(
            &format!("watch = [{}]", list(&[&kept.0])),
            &format!("watch = [{}]", list(&[&kept.0, &added.0])),
            1,
        ),
    );
    wait_until("the added root in ids status", || {
        let (roots, count) = watch_status(&daemon);
        if roots.contains(&added.0.display().to_string()) && count >= inodes + 21 {
            Ok(())
        } else {
            Err(format!("{roots:?} {count}"))
        }
    });
    assert!(file_events_under(&daemon, &added.0).is_empty(), "{:?}", file_events_under(&daemon, &added.0));
    fs::write(added.0.join("new"), "written after the reload").unwrap();
    fs::write(added.0.join("old-3"), "changed after the reload").unwrap();
    wait_until("the writes in the added directory reported", || {
        let paths: Vec<String> =
            file_events_under(&daemon, &added.0).iter().map(|e| ids_tests::str_of(e, "path").to_string()).collect();
        let has = |name: &str| paths.iter().any(|p| p.ends_with(&format!("/{name}")));
        if has("new") && has("old-3") { Ok(()) } else { Err(format!("{paths:?}")) }
    });

    write_config(&daemon, &first);
    wait_until("the removed root gone, its inodes out of the map", || {
        let (roots, count) = watch_status(&daemon);
        if roots == [kept.0.display().to_string()] && count == inodes {
            Ok(())
        } else {
            Err(format!("{roots:?} {count} (at start {inodes})"))
        }
    });
    let reported = file_events_under(&daemon, &added.0).len();
    fs::write(added.0.join("old-4"), "changed after the removal").unwrap();
    fs::write(added.0.join("newer"), "created after the removal").unwrap();
    // A write in the kept root after those: once it is reported, theirs would have been too.
    fs::write(kept.0.join("marker"), "x").unwrap();
    let marker = daemon.wait_for(1, |e| e["kind"] == "file" && ids_tests::str_of(e, "path").ends_with("/marker"));
    assert!(!marker.is_empty(), "the kept root stopped reporting");
    assert_eq!(file_events_under(&daemon, &added.0).len(), reported, "{:?}", file_events_under(&daemon, &added.0));
    let stderr = daemon.stop();
    assert!(stderr.contains("SIGHUP: watch set updated"), "{stderr}");
}

#[test]
fn a_collector_added_by_sighup_hashes_its_items_and_alerts_on_their_changes() {
    let first_dir = Scratch::new("/var/tmp", "reload-collector-first");
    let second_dir = Scratch::new("/var/tmp", "reload-collector-second");
    fs::write(first_dir.0.join("a"), "a").unwrap();
    for name in ["x", "y"] {
        fs::write(second_dir.0.join(name), name).unwrap();
    }
    let daemon = Daemon::start_with("reload-collector", &[], &[], &files_collector("first", &first_dir.0));
    let first = fs::read_to_string(&daemon.config).unwrap();
    wait_ready(&daemon);
    let baseline = daemon.ids_json(&["baseline"]);
    assert_eq!(baseline["ok"], true, "{baseline}");
    let items = daemon.status()["integrity"]["items"].as_u64().unwrap();

    reconfigure(&daemon, &first, &files_collector("second", &second_dir.0));
    wait_until("the added collector's items hashed", || {
        let status = daemon.status();
        if status["integrity"]["items"].as_u64() >= Some(items + 2) {
            Ok(())
        } else {
            Err(status["integrity"].to_string())
        }
    });
    wait_ready(&daemon);
    let diff = daemon.diff();
    let added: Vec<String> = diff["added"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| format!("{} {}", e["collector"].as_str().unwrap(), e["id"].as_str().unwrap()))
        .collect();
    for name in ["x", "y"] {
        let id = format!("second file:{}", second_dir.0.join(name).display());
        assert!(added.contains(&id), "{id} not added in the diff: {diff}");
    }
    assert!(diff["changed"].as_array().unwrap().is_empty(), "{diff}");
    // A configuration change is no change of the host: no alert for the items taken up.
    assert!(integrity_alert_for(&daemon, &second_dir.0.join("x")).is_none());

    // Its paths are watched and its changes alerted.
    fs::write(second_dir.0.join("x"), "changed").unwrap();
    let alert = wait_integrity_alert(&daemon, &second_dir.0.join("x"));
    assert_eq!(alert["collector"], "second", "{alert}");

    // Removed again: its items leave.
    reconfigure(&daemon, &first, "");
    wait_until("the removed collector's items gone", || {
        let status = daemon.status();
        if status["integrity"]["items"].as_u64() == Some(items) { Ok(()) } else { Err(status["integrity"].to_string()) }
    });
    let stderr = daemon.stop();
    assert!(stderr.contains("SIGHUP: integrity collectors reloaded"), "{stderr}");
}

#[test]
fn an_output_or_metrics_address_that_cannot_be_set_up_leaves_the_configuration_in_force() {
    let watched = Scratch::new("/var/tmp", "reload-refused-watched");
    let scratch = Scratch::new("/var/tmp", "reload-refused");
    let port = free_port();
    let metrics = format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n");
    let daemon = Daemon::start_with("reload-refused", &[], &[], &metrics);
    let first = fs::read_to_string(&daemon.config).unwrap();
    let roots = watch_status(&daemon).0;
    let with_watch = first.replacen("watch = [", &format!("watch = [{:?}, ", watched.0.display().to_string()), 1);

    // A webhook whose CA file is missing, with a watch path added beside it.
    let webhook = format!(
        "[[outputs]]\nkind = \"webhook\"\nname = \"hook\"\nurl = \"https://127.0.0.1:9/\"\nca_file = {:?}\n",
        scratch.0.join("missing-ca.pem").display().to_string()
    );
    write_config(&daemon, &format!("{with_watch}{webhook}"));
    // A metrics address already taken, with the same watch path.
    std::thread::sleep(Duration::from_millis(500));
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    write_config(&daemon, &with_watch.replacen(&format!(":{port}\""), &format!(":{taken_port}\""), 1));
    std::thread::sleep(Duration::from_millis(500));

    assert_eq!(watch_status(&daemon).0, roots, "the watch path of a refused configuration was taken up");
    assert!(output_names(&daemon).is_empty());
    let raw = scrape(port).expect("the endpoint in force still serves");
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    let stderr = daemon.stop();
    let refusals = stderr.matches("SIGHUP: configuration not reloaded; running on with the one in force").count();
    assert_eq!(refusals, 2, "{stderr}");
    assert!(stderr.contains("missing-ca.pem"), "the CA file is named: {stderr}");
    assert!(stderr.contains(&format!("127.0.0.1:{taken_port}")), "the address is named: {stderr}");
    assert!(!stderr.contains("SIGHUP: configuration reloaded"), "{stderr}");
}
