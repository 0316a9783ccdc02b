//! Host integration test of change-driven integrity: the real daemon with file_contents and
//! file_metadata collectors over a directory on the root file system and one on a tmpfs, while
//! threads and child processes change files at random. Root only (mount, chown).
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{FileExt as _, MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ids_tests::{Daemon, Scratch, sh};
use serde_json::Value;

/// xorshift64*: enough randomness for choosing operations, and reproducible from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// What the test itself sees of a path: lstat fields as `file_metadata` hashes them, and the
/// contents of a regular file.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    meta: (u32, u64, u32, u32, u64, i64, i64, bool, Option<PathBuf>),
    contents: Option<Vec<u8>>,
}

fn snapshot(roots: &[&Path]) -> BTreeMap<PathBuf, Seen> {
    let mut seen = BTreeMap::new();
    let mut pending: Vec<PathBuf> = roots.iter().map(|p| p.to_path_buf()).collect();
    while let Some(path) = pending.pop() {
        let meta = fs::symlink_metadata(&path).unwrap();
        if meta.is_dir() {
            pending.extend(fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        }
        let target = meta.file_type().is_symlink().then(|| fs::read_link(&path).unwrap());
        let contents = meta.is_file().then(|| fs::read(&path).unwrap());
        let fields = (
            meta.mode(),
            meta.ino(),
            meta.uid(),
            meta.gid(),
            meta.size(),
            meta.mtime(),
            meta.mtime_nsec(),
            meta.is_dir(),
            target,
        );
        seen.insert(path, Seen { meta: fields, contents });
    }
    seen
}

/// The item ids a correct `ids diff` names between two snapshots (collectors "files" and "meta").
fn expected_diff(before: &BTreeMap<PathBuf, Seen>, after: &BTreeMap<PathBuf, Seen>) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    let paths: BTreeSet<&PathBuf> = before.keys().chain(after.keys()).collect();
    for path in paths {
        let (old, new) = (before.get(path), after.get(path));
        let p = path.display();
        if old.map(|s| &s.meta) != new.map(|s| &s.meta) {
            ids.insert(format!("meta meta:{p}"));
        }
        if old.and_then(|s| s.contents.as_ref()) != new.and_then(|s| s.contents.as_ref()) {
            ids.insert(format!("files file:{p}"));
        }
    }
    ids
}

fn diff_ids(diff: &Value) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    for change in ["added", "removed", "changed"] {
        for entry in diff[change].as_array().unwrap_or_else(|| panic!("diff has no {change}: {diff}")) {
            ids.insert(format!("{} {}", entry["collector"].as_str().unwrap(), entry["id"].as_str().unwrap()));
        }
    }
    ids
}

fn hash_aggregate(daemon: &Daemon) -> String {
    daemon.ids_json(&["hash"])["aggregate"].as_str().unwrap().to_string()
}

/// Waits until the daemon has no dirty item and its aggregate equals a fresh `ids hash`.
fn wait_consistent(daemon: &Daemon, what: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = daemon.status();
        let clean = status["integrity"]["ready"] == true && status["integrity"]["dirty"] == 0;
        if clean {
            let fresh = hash_aggregate(daemon);
            // A status taken after the hash: still clean, so nothing changed in between.
            let again = daemon.status();
            if again["integrity"]["dirty"] == 0 && again["aggregate"] == fresh.as_str() {
                return again;
            }
            if Instant::now() > deadline {
                panic!("{what}: daemon aggregate {} != ids hash {fresh}: {again}", again["aggregate"]);
            }
        } else if Instant::now() > deadline {
            panic!("{what}: daemon still has dirty items after 30 s: {status}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One change to a file of the population; returns the item ids it certainly touches.
fn change_one(rng: &mut Rng, dir: &Path, path: &Path, serial: usize) -> Vec<String> {
    let p = |path: &Path| path.display().to_string();
    match rng.below(9) {
        0 => {
            // Overwrite one byte in place with a different one.
            let file = fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
            let len = file.metadata().unwrap().len();
            let offset = rng.below(len);
            let mut byte = [0u8];
            file.read_exact_at(&mut byte, offset).unwrap();
            file.write_at(&[!byte[0]], offset).unwrap();
            vec![format!("files file:{}", p(path))]
        }
        1 => {
            let file = fs::OpenOptions::new().write(true).open(path).unwrap();
            let len = file.metadata().unwrap().len();
            file.set_len(len / 2).unwrap();
            vec![format!("files file:{}", p(path))]
        }
        2 => {
            let mode = fs::metadata(path).unwrap().mode() & 0o777;
            fs::set_permissions(path, fs::Permissions::from_mode(mode ^ 0o070)).unwrap();
            vec![format!("meta meta:{}", p(path))]
        }
        3 => {
            std::os::unix::fs::chown(path, Some(1000 + serial as u32), None).unwrap();
            vec![format!("meta meta:{}", p(path))]
        }
        4 => {
            let new = dir.join(format!("renamed-{serial}"));
            fs::rename(path, &new).unwrap();
            vec![format!("meta meta:{}", p(path)), format!("meta meta:{}", p(&new))]
        }
        5 => {
            fs::remove_file(path).unwrap();
            vec![format!("meta meta:{}", p(path))]
        }
        6 => {
            // A write through a shared writable mapping.
            let file = fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
            let len = file.metadata().unwrap().len() as usize;
            let offset = rng.below(len as u64) as usize;
            unsafe {
                use std::os::fd::AsRawFd;
                let addr = libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                    file.as_raw_fd(),
                    0,
                );
                assert_ne!(addr, libc::MAP_FAILED);
                let byte = (addr as *mut u8).add(offset);
                *byte = !*byte;
                libc::msync(addr, len, libc::MS_SYNC);
                libc::munmap(addr, len);
            }
            vec![format!("files file:{}", p(path))]
        }
        7 => {
            // A new file, and a new directory filled at once.
            let new = dir.join(format!("created-{serial}"));
            fs::write(&new, rng.bytes(100)).unwrap();
            let sub = dir.join(format!("newdir-{serial}"));
            fs::create_dir(&sub).unwrap();
            for i in 0..3 {
                fs::write(sub.join(format!("inner-{i}")), rng.bytes(50)).unwrap();
            }
            vec![
                format!("files file:{}", p(&new)),
                format!("meta meta:{}", p(&sub)),
                format!("files file:{}", p(&sub.join("inner-2"))),
            ]
        }
        _ => {
            // From another process: append and move.
            let moved = dir.join(format!("moved-{serial}"));
            sh("sh", &["-c", &format!("printf appended >> '{}' && mv '{}' '{}'", p(path), p(path), p(&moved))]);
            vec![format!("meta meta:{}", p(path)), format!("files file:{}", p(&moved))]
        }
    }
}

#[test]
fn integrity_follows_concurrent_changes_and_matches_a_fresh_hash() {
    let disk = Scratch::new("/var/tmp", "integrity-disk");
    let memory = Scratch::new("/var/tmp", "integrity-tmpfs");
    sh("mount", &["-t", "tmpfs", "-o", "size=16m", "tmpfs", memory.0.to_str().unwrap()]);
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    eprintln!("seed {seed}");
    let mut rng = Rng(seed);
    let threads = 4;
    let per_thread = 12;
    // Each thread owns a directory on each file system, populated before the daemon starts.
    let mut population = Vec::new();
    for root in [&disk.0, &memory.0] {
        for thread in 0..threads {
            let dir = root.join(format!("t{thread}"));
            fs::create_dir_all(dir.join("keep")).unwrap();
            fs::write(dir.join("keep/untouched"), b"stays").unwrap();
            for i in 0..per_thread {
                let path = dir.join(format!("f{i}"));
                let len = 64 + rng.below(4000) as usize;
                fs::write(&path, rng.bytes(len)).unwrap();
                fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
                population.push((thread, dir.clone(), path));
            }
        }
    }
    let roots = format!("[{:?}, {:?}]", disk.0.display().to_string(), memory.0.display().to_string());
    let extra = format!(
        "[[collectors]]\nkind = \"file_contents\"\nname = \"files\"\npaths = {roots}\nrecursive = true\n\
         [[collectors]]\nkind = \"file_metadata\"\nname = \"meta\"\npaths = {roots}\nrecursive = true\n"
    );
    let daemon = Daemon::start_with("integrity", &[], &[], &extra);
    let status = wait_consistent(&daemon, "after start");
    assert!(status["integrity"]["items"].as_u64().unwrap() > 2 * population.len() as u64, "{status}");

    let baseline = daemon.ids_json(&["baseline"]);
    assert_eq!(baseline["ok"], true, "{baseline}");
    assert_eq!(baseline["source"], "daemon", "{baseline}");
    assert_eq!(baseline["aggregate"], status["aggregate"], "{baseline}");
    let empty = daemon.diff();
    assert!(diff_ids(&empty).is_empty(), "diff right after the baseline: {empty}");
    let before = snapshot(&[&disk.0, &memory.0]);
    // Make every later change visible in mtime even on a coarse clock.
    std::thread::sleep(Duration::from_millis(20));

    let mut handles = Vec::new();
    for thread in 0..threads {
        let mine: Vec<(PathBuf, PathBuf)> =
            population.iter().filter(|(t, _, _)| *t == thread).map(|(_, d, p)| (d.clone(), p.clone())).collect();
        let mut rng = Rng(seed.wrapping_add(thread as u64 * 0x9E37_79B9_7F4A_7C15) | 1);
        handles.push(std::thread::spawn(move || {
            let mut touched = Vec::new();
            for (serial, (dir, path)) in mine.iter().enumerate() {
                // Leave some files alone.
                if rng.below(4) == 0 {
                    continue;
                }
                touched.extend(change_one(&mut rng, dir, path, serial));
            }
            touched
        }));
    }
    let touched: BTreeSet<String> = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
    let after = snapshot(&[&disk.0, &memory.0]);
    let expected = expected_diff(&before, &after);
    assert!(touched.len() >= 10 && expected.len() >= touched.len(), "too few changes (seed {seed}): {expected:?}");
    for id in &touched {
        assert!(expected.contains(id), "the test's own snapshots miss {id} (seed {seed})");
    }

    let status = wait_consistent(&daemon, "after the changes");
    let diff = daemon.diff();
    let named = diff_ids(&diff);
    let missing: Vec<&String> = expected.difference(&named).collect();
    let extra: Vec<&String> = named.difference(&expected).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "seed {seed}: diff misses {missing:?} and names untouched {extra:?}"
    );
    for entry in diff["changed"].as_array().unwrap() {
        assert!(!entry["attributes"].as_array().unwrap().is_empty(), "a change without attributes: {entry}");
    }

    // Every change was also an alert in the events log.
    let alerts = daemon.wait_for(1, |e| e["kind"] == "integrity");
    let alerted: BTreeSet<String> =
        alerts.iter().map(|a| format!("{} {}", a["collector"].as_str().unwrap(), a["id"].as_str().unwrap())).collect();
    for id in &expected {
        assert!(alerted.contains(id), "no integrity alert for {id} (seed {seed})");
    }
    let sample = &alerts[0];
    for key in ["time", "collector", "id", "change", "attributes", "old", "new"] {
        assert!(sample.get(key).is_some(), "alert lacks {key}: {sample}");
    }
    assert!(status["integrity"]["alerts"].as_u64().unwrap() >= expected.len() as u64, "{status}");
    assert!(status["aggregate"].as_str().is_some_and(|a| a.len() == 64), "{status}");
    daemon.stop();
    let _ = Command::new("umount").arg(&memory.0).status();
}

#[test]
fn a_new_listening_socket_is_hashed_when_the_kernel_reports_it() {
    // The interval is far away: only the sensor's LISTEN report can explain a prompt alert.
    let extra = "integrity_interval = 3600\n[[collectors]]\nkind = \"listening_sockets\"\n";
    let daemon = Daemon::start_with("listen", &[], &[], extra);
    wait_consistent(&daemon, "after start");
    let listener = std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let id = format!("listen:tcp:127.0.0.1:{port}");
    let listen = daemon.wait_for(1, |e| e["kind"] == "listen" && e["port"] == port && e["state"] == "listen");
    assert_eq!(listen.len(), 1, "no listen event for port {port}: {:?}", daemon.events());
    let added = daemon.wait_for(1, |e| e["kind"] == "integrity" && e["id"] == id.as_str());
    assert_eq!(added.len(), 1, "no integrity alert for {id}: {:?}", daemon.events());
    assert_eq!(added[0]["change"], "added", "{}", added[0]);
    drop(listener);
    let removed = daemon.wait_for(2, |e| e["kind"] == "integrity" && e["id"] == id.as_str());
    assert_eq!(removed.len(), 2, "closing the listener was not noticed: {:?}", daemon.events());
    assert_eq!(removed[1]["change"], "removed", "{}", removed[1]);
    daemon.stop();
}

#[test]
fn a_change_the_sensor_cannot_see_is_reported_by_verification_as_sensor_miss() {
    let watched = Scratch::new("/var/tmp", "integrity-verify");
    let outside = Scratch::new("/var/tmp", "integrity-outside");
    let file = watched.0.join("f");
    fs::write(&file, b"data").unwrap();
    fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
    // A hard link outside the collector's paths: a chmod through it names an unwatched path.
    let link = outside.0.join("link");
    fs::hard_link(&file, &link).unwrap();
    let extra = format!(
        "verify_interval = 2\n[[collectors]]\nkind = \"file_metadata\"\nname = \"meta\"\npaths = [{:?}]\n",
        watched.0.display().to_string()
    );
    let daemon = Daemon::start_with("verify", &[], &[], &extra);
    wait_consistent(&daemon, "after start");
    fs::set_permissions(&link, fs::Permissions::from_mode(0o600)).unwrap();
    let id = format!("meta:{}", file.display());
    let missed = daemon.wait_for(1, |e| e["kind"] == "sensor_miss" && e["id"] == id.as_str());
    assert_eq!(missed.len(), 1, "no sensor_miss alert for {id}: {:?}", daemon.events());
    assert_eq!(missed[0]["change"], "changed", "{}", missed[0]);
    assert_eq!(missed[0]["attributes"], serde_json::json!(["mode"]), "{}", missed[0]);
    assert_eq!(missed[0]["old"]["detail"]["mode"], "0644", "{}", missed[0]);
    assert_eq!(missed[0]["new"]["detail"]["mode"], "0600", "{}", missed[0]);
    wait_consistent(&daemon, "after verification");
    daemon.stop();
}

#[test]
fn baseline_and_diff_without_a_daemon_scan_now() {
    let watched = Scratch::new("/var/tmp", "integrity-offline");
    let state = Scratch::new("/var/tmp", "integrity-offline-state");
    fs::write(watched.0.join("a"), b"alpha").unwrap();
    fs::write(watched.0.join("b"), b"beta").unwrap();
    let config = state.0.join("ids.toml");
    fs::write(
        &config,
        format!(
            "watch = []\nevents_log = \"-\"\nstate_dir = {:?}\n[[collectors]]\nkind = \"file_contents\"\npaths = [{:?}]\n",
            state.0.join("state").display().to_string(),
            watched.0.display().to_string()
        ),
    )
    .unwrap();
    let ids = |args: &[&str]| -> Value {
        let out =
            Command::new(ids_tests::ids_bin()).args(args).args(["--json", "--config"]).arg(&config).output().unwrap();
        assert!(out.status.success(), "ids {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let baseline = ids(&["baseline"]);
    assert_eq!(baseline["source"], "scan", "{baseline}");
    assert_eq!(baseline["items"], 2, "{baseline}");
    assert_eq!(baseline["aggregate"], ids(&["hash"])["aggregate"], "{baseline}");
    fs::write(watched.0.join("a"), b"alphb").unwrap();
    fs::rename(watched.0.join("b"), watched.0.join("c")).unwrap();
    let diff = ids_tests::diff_json(&config);
    let p = |n: &str| format!("file:{}", watched.0.join(n).display());
    assert_eq!(diff["added"], serde_json::json!([{"collector": "file_contents", "id": p("c")}]), "{diff}");
    assert_eq!(diff["removed"], serde_json::json!([{"collector": "file_contents", "id": p("b")}]), "{diff}");
    assert_eq!(
        diff["changed"],
        serde_json::json!([{"collector": "file_contents", "id": p("a"), "attributes": ["content"]}]),
        "{diff}"
    );
    // The human table names the same items.
    let out = Command::new(ids_tests::ids_bin()).args(["diff", "--config"]).arg(&config).output().unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains(&p("a")) && table.contains("1 added, 1 removed, 1 changed"), "{table}");
}

#[test]
fn a_change_to_a_file_whose_name_is_not_utf8_is_seen_by_the_sensor() {
    use std::os::unix::ffi::OsStrExt as _;
    let watched = Scratch::new("/var/tmp", "integrity-non-utf8");
    let file = watched.0.join(std::ffi::OsStr::from_bytes(b"caf\xe9-%41"));
    fs::write(&file, b"before").unwrap();
    // Verification is a day away: only the sensor's report can explain a prompt alert.
    let extra = format!(
        "[[collectors]]\nkind = \"file_contents\"\nname = \"c\"\npaths = [{:?}]\n",
        watched.0.display().to_string()
    );
    let daemon = Daemon::start_with("non-utf8", &[], &[], &extra);
    wait_consistent(&daemon, "after start");
    fs::write(&file, b"after").unwrap();
    let id = format!("file%:{}/caf%E9-%2541", watched.0.display());
    let changed = daemon.wait_for(1, |e| e["kind"] == "integrity" && e["id"] == id.as_str());
    assert_eq!(changed.len(), 1, "no integrity alert for {id}: {:?}", daemon.events());
    assert_eq!(changed[0]["change"], "changed", "{}", changed[0]);
    let file_events = daemon.wait_for(1, |e| {
        e["kind"] == "file" && e["paths_escaped"] == true && e["path"] == id.strip_prefix("file%:").unwrap()
    });
    assert!(!file_events.is_empty(), "no escaped file event: {:?}", daemon.events());
    wait_consistent(&daemon, "after the change");
    daemon.stop();
}

/// Collector paths that do not exist when the daemon starts are watched for their creation: a
/// file created through an absolute path, one created through a relative path from its
/// directory, and a directory with a file made inside it are each hashed on the sensor's report,
/// long before the daily verification.
#[test]
fn collector_paths_absent_at_start_are_hashed_once_created() {
    let watched = Scratch::new("/var/tmp", "integrity-absent");
    let absolute = watched.0.join("later.conf");
    let relative = watched.0.join("later-relative.conf");
    let tree = watched.0.join("later.d");
    let extra = format!(
        "[[collectors]]\nkind = \"file_contents\"\nname = \"c\"\nrecursive = true\npaths = [{:?}, {:?}, {:?}]\n",
        absolute.display().to_string(),
        relative.display().to_string(),
        tree.display().to_string()
    );
    let daemon = Daemon::start_with("absent", &[], &[], &extra);
    wait_consistent(&daemon, "after start");
    let alert_for = |path: &Path| {
        let id = format!("file:{}", path.display());
        let alerts = daemon.wait_for(1, |e| e["kind"] == "integrity" && e["id"] == id.as_str());
        assert!(!alerts.is_empty(), "no integrity alert for {id}: {:?}", daemon.events());
    };

    // Other new names beside the awaited ones reach the daemon, but do not join the watch set:
    // writes to them are not reported.
    let file_received = || -> u64 {
        let status = daemon.status();
        let signals = status["signals"].as_array().cloned().unwrap_or_default();
        signals.iter().find(|s| s["signal"] == "file").and_then(|s| s["received"].as_u64()).unwrap()
    };
    let other = watched.0.join("other");
    fs::write(&other, b"x").unwrap();
    fs::create_dir(watched.0.join("other.d")).unwrap();
    fs::write(watched.0.join("other.d/deeper"), b"x").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let before = file_received();
    for _ in 0..50 {
        std::fs::OpenOptions::new().append(true).open(&other).unwrap().write_all(b"more").unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(watched.0.join("other.d/deeper"))
            .unwrap()
            .write_all(b"more")
            .unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(file_received(), before, "writes to files beside an awaited path were reported");

    fs::write(&absolute, b"created").unwrap();
    alert_for(&absolute);

    let status = std::process::Command::new("sh")
        .current_dir(&watched.0)
        .args(["-c", "echo created > later-relative.conf"])
        .status()
        .unwrap();
    assert!(status.success());
    alert_for(&relative);

    fs::create_dir(&tree).unwrap();
    fs::write(tree.join("inner"), b"inside").unwrap();
    alert_for(&tree.join("inner"));

    wait_consistent(&daemon, "after the creations");
    daemon.stop();
}
