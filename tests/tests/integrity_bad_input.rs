//! `ids hash --json` (and `ids baseline`/`ids diff`, offline) on bad input: unreadable files,
//! FIFOs and devices, a 4 GiB sparse file, symbolic link loops, names that are not UTF-8.
//! Everything must be recorded as an item saying what it is, with no hang and no crash.
//! Root (mknod, setpriv); `IDS_BIN` or the release build.
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ids_tests::{Scratch, ids_bin, sh};
use serde_json::Value;

/// Runs `command` to its end, failing the test if it takes more than `seconds` (a hang) or
/// exits non-zero (a crash); returns its standard output as JSON.
fn run_json(command: Command, seconds: u64) -> Value {
    run_json_exiting(command, seconds, &[0])
}

/// [`run_json`] for a command whose exit status may be any of `codes` (`ids diff`: 1 when
/// something changed).
fn run_json_exiting(mut command: Command, seconds: u64, codes: &[i32]) -> Value {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {command:?}: {e}"));
    // Read the pipes on threads so that a large output cannot block the child.
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut text = Vec::new();
        std::io::Read::read_to_end(&mut stdout, &mut text).unwrap();
        text
    });
    let err = std::thread::spawn(move || {
        let mut text = Vec::new();
        std::io::Read::read_to_end(&mut stderr, &mut text).unwrap();
        text
    });
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{command:?} still running after {seconds} s (hang)");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (out, err) = (out.join().unwrap(), err.join().unwrap());
    assert!(
        status.code().is_some_and(|code| codes.contains(&code)),
        "{command:?} failed with {status}: {}{}",
        String::from_utf8_lossy(&out),
        String::from_utf8_lossy(&err)
    );
    serde_json::from_slice(&out)
        .unwrap_or_else(|e| panic!("{command:?} printed no JSON ({e}): {}", String::from_utf8_lossy(&out)))
}

fn ids(args: &[&str], config: &Path) -> Command {
    let mut command = Command::new(ids_bin());
    command.args(args).arg("--json").arg("--config").arg(config);
    command
}

/// A config with a `file_contents` collector `files` and a `file_metadata` collector `meta`
/// over `paths`, recursive.
fn write_config(dir: &Path, paths: &[String]) -> PathBuf {
    let paths: Vec<String> = paths.iter().map(|p| format!("{p:?}")).collect();
    let paths = paths.join(", ");
    let config = dir.join("ids.toml");
    std::fs::write(
        &config,
        format!(
            "watch = [{:?}]\nstate_dir = {:?}\nevents_log = \"-\"\n\
             [[collectors]]\nkind = \"file_contents\"\nname = \"files\"\npaths = [{paths}]\nrecursive = true\n\
             [[collectors]]\nkind = \"file_metadata\"\nname = \"meta\"\npaths = [{paths}]\nrecursive = true\n",
            dir.display().to_string(),
            dir.join("state").display().to_string(),
        ),
    )
    .unwrap();
    config
}

/// `{id: error}` of a collector in `ids hash --json`, failing on a repeated id.
fn errors(hash: &Value, collector: &str) -> std::collections::BTreeMap<String, String> {
    let mut errors = std::collections::BTreeMap::new();
    for entry in hash["collectors"][collector]["errors"].as_array().unwrap() {
        let id = entry["id"].as_str().unwrap().to_string();
        let error = entry["error"].as_str().unwrap().to_string();
        assert!(errors.insert(id.clone(), error).is_none(), "{id} reported twice: {hash:#}");
    }
    errors
}

fn peak_child_rss_kib() -> i64 {
    // SAFETY: getrusage fills the zeroed struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) }, 0);
    usage.ru_maxrss
}

#[test]
fn hash_records_fifos_devices_loops_sparse_and_non_utf8_names() {
    let scratch = Scratch::new("/tmp", "bad-input");
    let tree = scratch.0.join("tree");
    std::fs::create_dir(&tree).unwrap();
    let t = |name: &str| tree.join(name).display().to_string();
    sh("mkfifo", &[&t("fifo")]);
    sh("mknod", &[&t("null"), "c", "1", "3"]);
    std::os::unix::fs::symlink("/dev/null", tree.join("devnull")).unwrap();
    std::os::unix::fs::symlink("b", tree.join("a")).unwrap();
    std::os::unix::fs::symlink("a", tree.join("b")).unwrap();
    std::fs::create_dir(tree.join("d")).unwrap();
    std::os::unix::fs::symlink("..", tree.join("d/up")).unwrap();
    std::os::unix::fs::symlink("/proc/self/mem", tree.join("mem")).unwrap();
    sh("truncate", &["-s", "4G", &t("sparse")]);
    std::fs::write(tree.join("plain"), "plain").unwrap();
    let raw = tree.join(OsStr::from_bytes(b"caf\xff%"));
    std::fs::write(&raw, "raw").unwrap();
    std::fs::write(tree.join("caf%FF%25"), "lookalike").unwrap();

    // Named: the tree, the loop, the link to /proc/self/mem, the link to /dev/null, the FIFO.
    let config = write_config(&scratch.0, &[t(""), t("a"), t("mem"), t("devnull"), t("fifo"), t("**/up")]);
    let root = t("");
    let root = root.trim_end_matches('/');

    let hash = run_json(ids(&["hash"], &config), 300);
    let files = errors(&hash, "files");
    assert_eq!(files.len(), 2, "{hash:#}");
    assert!(files[&format!("file:{root}/a")].starts_with("symbolic link loop: "), "{files:?}");
    assert!(files[&format!("file:{root}/mem")].contains("Input/output error"), "{files:?}");
    // fifo, null, devnull, a, mem, sparse, plain, the two caf* files.
    assert_eq!(hash["collectors"]["files"]["items"], 9, "{hash:#}");
    assert!(errors(&hash, "meta").is_empty(), "{hash:#}");
    // tree, fifo, null, devnull, a, b, d, d/up, mem, sparse, plain, the two caf* files.
    assert_eq!(hash["collectors"]["meta"]["items"], 13, "{hash:#}");
    // 4 GiB streamed, not held in memory.
    let rss = peak_child_rss_kib();
    assert!(rss < 200 * 1024, "a child of the test peaked at {rss} KiB");

    // The same state hashes the same.
    let again = run_json(ids(&["hash"], &config), 300);
    assert_eq!(hash["aggregate"], again["aggregate"]);

    // The items themselves, through a baseline and a diff: the FIFO becomes a file (its item
    // said `type: fifo`), the name that is not UTF-8 has its own id, distinct from its look-alike.
    run_json(ids(&["baseline"], &config), 300);
    std::fs::remove_file(tree.join("fifo")).unwrap();
    std::fs::write(tree.join("fifo"), "now a file").unwrap();
    std::fs::write(&raw, "raw, changed").unwrap();
    let diff = run_json_exiting(ids(&["diff"], &config), 300, &[1]);
    let changed: Vec<(String, Vec<String>)> = diff["changed"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["collector"] == "files")
        .map(|c| {
            let attributes = c["attributes"].as_array().unwrap().iter().map(|a| a.as_str().unwrap().to_string());
            (c["id"].as_str().unwrap().to_string(), attributes.collect())
        })
        .collect();
    assert_eq!(
        changed,
        [
            (format!("file%:{root}/caf%FF%25"), vec!["content".to_string(), "size".to_string()]),
            (format!("file:{root}/fifo"), vec!["content".to_string(), "size".to_string(), "type".to_string()]),
        ],
        "{diff:#}"
    );
}

/// Root reads a mode-000 file, so unreadable-by-permission is tested as nobody (65534):
/// `ids hash` run through `setpriv` reports the file and the unlistable directory as errors,
/// each once, and still succeeds.
#[test]
fn unprivileged_hash_records_permission_denied() {
    let scratch = Scratch::new("/tmp", "bad-input-nobody");
    std::fs::set_permissions(&scratch.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = scratch.0.join("ids");
    std::fs::copy(ids_bin(), &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let tree = scratch.0.join("tree");
    std::fs::create_dir(&tree).unwrap();
    std::fs::set_permissions(&tree, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(tree.join("locked"), "secret").unwrap();
    std::fs::set_permissions(tree.join("locked"), std::fs::Permissions::from_mode(0o000)).unwrap();
    std::fs::write(tree.join("open"), "open").unwrap();
    std::fs::set_permissions(tree.join("open"), std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::create_dir(tree.join("closed")).unwrap();
    std::fs::write(tree.join("closed/inside"), "inside").unwrap();
    std::fs::set_permissions(tree.join("closed"), std::fs::Permissions::from_mode(0o000)).unwrap();
    let root = tree.display().to_string();
    let config = write_config(&scratch.0, std::slice::from_ref(&root));
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();

    let mut command = Command::new("setpriv");
    command
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(&bin)
        .args(["hash", "--json", "--config"])
        .arg(&config);
    let hash = run_json(command, 120);
    let files = errors(&hash, "files");
    let expected = [format!("file:{root}/closed"), format!("file:{root}/locked")];
    assert_eq!(files.keys().cloned().collect::<Vec<_>>(), expected, "{hash:#}");
    assert!(files.values().all(|e| e.contains("Permission denied")), "{files:?}");
    // The unlistable directory is one item: its lstat detail with the listing error.
    let meta = errors(&hash, "meta");
    assert_eq!(meta.keys().collect::<Vec<_>>(), [&format!("meta:{root}/closed")], "{hash:#}");
    assert!(meta.values().all(|e| e.contains("Permission denied")), "{meta:?}");
    // tree, locked, open, closed.
    assert_eq!(hash["collectors"]["meta"]["items"], 4, "{hash:#}");
}
