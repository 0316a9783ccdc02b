//! The Debian package `cargo xtask package` builds (`cargo xtask test` builds it before this tier):
//! its files, modes and fields; an install into a scratch root the test makes (dpkg `--root`, the
//! maintainer scripts run chrooted there by a static busybox `sh`), where the configuration
//! passes `ids config check`, the man pages render, the completions load and the unit passes
//! `systemd-analyze verify`; a purge that removes the sensor's state; and the sensor started with
//! exactly the unit's capability bounding set. Run as root; the host's own dpkg database and
//! systemd are never touched.
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use ids_tests::{Pins, Scratch, ids_bin, sh, test_pin_dir};

const UNIT: &str = "lib/systemd/system/ids.service";
const CONFIG: &str = "etc/ids/ids.toml";
const LOGROTATE: &str = "etc/logrotate.d/ids";
const BINARY: &str = "usr/sbin/ids";
const COMPLETIONS: [(&str, &str); 3] = [
    ("bash", "usr/share/bash-completion/completions/ids"),
    ("zsh", "usr/share/zsh/vendor-completions/_ids"),
    ("fish", "usr/share/fish/vendor_completions.d/ids.fish"),
];

/// The one package in target/debian, built after the binary under test.
fn package() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debian");
    let found: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}; build the package first: cargo xtask package", dir.display()))
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.file_name().is_some_and(|n| n.to_string_lossy().starts_with("ids_")))
        .filter(|path| path.extension().is_some_and(|e| e == "deb"))
        .collect();
    assert_eq!(found.len(), 1, "expected one ids_*.deb in {} (cargo xtask package): {found:?}", dir.display());
    let deb = found.into_iter().next().unwrap();
    let built = |path: &Path| fs::metadata(path).and_then(|m| m.modified()).unwrap();
    assert!(
        built(&deb) >= built(&ids_bin()),
        "{} is older than {}: rebuild it (cargo xtask package)",
        deb.display(),
        ids_bin().display()
    );
    deb
}

fn run(command: &mut Command) -> Output {
    command.output().unwrap_or_else(|e| panic!("starting {command:?}: {e}"))
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// `version` of `ids --version` ("ids 0.1.0").
fn binary_version() -> String {
    let out = sh(ids_bin().to_str().unwrap(), &["--version"]);
    out.trim().strip_prefix("ids ").unwrap_or_else(|| panic!("unexpected --version: {out}")).to_string()
}

/// The man pages `ids manpages` writes, by file name (`ids.8`, `ids-run.8`, ...).
fn expected_man_pages(scratch: &Scratch) -> Vec<String> {
    let dir = scratch.0.join("man");
    let listed = sh(ids_bin().to_str().unwrap(), &["manpages", dir.to_str().unwrap()]);
    let mut names: Vec<String> =
        listed.lines().map(|line| Path::new(line).file_name().unwrap().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

#[test]
fn the_package_holds_every_file_with_its_mode_owner_and_fields() {
    let deb = package();
    let field = |name: &str| sh("dpkg-deb", &["-f", deb.to_str().unwrap(), name]).trim().to_string();
    assert_eq!(field("Package"), "ids");
    assert_eq!(field("Version"), binary_version());
    assert_eq!(field("Architecture"), sh("dpkg", &["--print-architecture"]).trim());
    assert_eq!(field("Section"), "admin");
    assert_eq!(field("Priority"), "optional");
    assert!(field("Maintainer").contains('<') && field("Maintainer").ends_with('>'), "{}", field("Maintainer"));
    let depends = field("Depends");
    assert!(depends.contains("libc6 (>= "), "Depends lacks the libc minimum: {depends}");
    assert!(depends.contains("procps"), "Depends lacks procps (/bin/kill of ExecReload): {depends}");
    assert!(field("Installed-Size").parse::<u64>().is_ok_and(|kib| kib > 1000), "{}", field("Installed-Size"));
    assert!(field("Description").lines().count() > 1, "no extended description: {}", field("Description"));

    let conffiles = sh("dpkg-deb", &["-I", deb.to_str().unwrap(), "conffiles"]);
    assert_eq!(conffiles.lines().collect::<Vec<_>>(), ["/etc/ids/ids.toml", "/etc/logrotate.d/ids"]);
    let md5sums = sh("dpkg-deb", &["-I", deb.to_str().unwrap(), "md5sums"]);
    assert!(md5sums.lines().any(|line| line.ends_with(&format!("  {BINARY}"))), "{md5sums}");

    // `dpkg-deb -c`: "-rwxr-xr-x root/root 19807136 2026-12-05 08:01 ./usr/sbin/ids".
    let listing = sh("dpkg-deb", &["-c", deb.to_str().unwrap()]);
    let mut entries = BTreeMap::new();
    for line in listing.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(fields.get(1), Some(&"root/root"), "not owned by root: {line}");
        let path = fields.last().unwrap().trim_start_matches("./").trim_end_matches('/').to_string();
        entries.insert(path, fields[0].to_string());
    }
    let scratch = Scratch::new("/var/tmp", "package-list");
    let mut expected: Vec<(String, &str)> = vec![
        (BINARY.into(), "-rwxr-xr-x"),
        (UNIT.into(), "-rw-r--r--"),
        (CONFIG.into(), "-rw-r--r--"),
        (LOGROTATE.into(), "-rw-r--r--"),
        ("usr/share/doc/ids/copyright".into(), "-rw-r--r--"),
        ("usr/share/doc/ids/changelog.gz".into(), "-rw-r--r--"),
    ];
    expected.extend(COMPLETIONS.iter().map(|(_, path)| (path.to_string(), "-rw-r--r--")));
    let pages = expected_man_pages(&scratch);
    assert!(pages.len() > 10 && pages.contains(&"ids.8".to_string()), "{pages:?}");
    expected.extend(pages.iter().map(|page| (format!("usr/share/man/man8/{page}.gz"), "-rw-r--r--")));
    for (path, mode) in &expected {
        assert_eq!(entries.get(path).map(String::as_str), Some(*mode), "{path} in the package:\n{listing}");
    }
    let files = entries.iter().filter(|(_, mode)| !mode.starts_with('d')).count();
    assert_eq!(files, expected.len(), "files beyond those expected:\n{listing}");
    for (path, mode) in &entries {
        assert!(!mode.starts_with('d') || mode == "drwxr-xr-x", "directory {path} is {mode}");
    }
}

/// A root dpkg can install into: its own database, and a static busybox as `/bin/sh` (with `rm`)
/// for the maintainer scripts, which dpkg runs chrooted there.
fn scratch_root(scratch: &Scratch) -> PathBuf {
    let root = scratch.0.join("root");
    for dir in ["var/lib/dpkg/info", "var/lib/dpkg/updates", "bin", "dev"] {
        fs::create_dir_all(root.join(dir)).unwrap();
    }
    fs::write(root.join("var/lib/dpkg/status"), "").unwrap();
    fs::copy("/bin/busybox", root.join("bin/busybox")).expect("busybox-static (cargo xtask setup installs it)");
    for applet in ["sh", "rm"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    sh("mknod", &["-m", "666", root.join("dev/null").to_str().unwrap(), "c", "1", "3"]);
    root
}

#[test]
fn the_package_installs_into_a_scratch_root_and_its_purge_removes_the_state() {
    let deb = package();
    let scratch = Scratch::new("/var/tmp", "package-root");
    let root = scratch_root(&scratch);
    let root_arg = format!("--root={}", root.display());
    // dpkg logs to the host's /var/log/dpkg.log unless told otherwise.
    let log_arg = format!("--log={}", scratch.0.join("dpkg.log").display());
    // The scratch database has no libc6: its dependencies are the host's business.
    let install = run(Command::new("dpkg").args([&root_arg, &log_arg, "--force-depends", "-i"]).arg(&deb));
    assert!(install.status.success(), "dpkg -i: {}", text(&install));
    assert!(!text(&install).contains("postinst"), "the postinst complained: {}", text(&install));
    let status =
        sh("dpkg-query", &[&format!("--admindir={}/var/lib/dpkg", root.display()), "-W", "-f=${Status}", "ids"]);
    assert_eq!(status, "install ok installed");

    let installed = root.join(BINARY);
    let ids = |args: &[&str]| run(Command::new(&installed).args(args));
    let config = root.join(CONFIG);
    let check = ids(&["config", "check", "--config", config.to_str().unwrap()]);
    assert!(check.status.success() && text(&check).trim() == "ok", "config check: {}", text(&check));
    let config_text = fs::read_to_string(&config).unwrap();
    assert!(config_text.contains("state_dir = \"/var/lib/ids\"\n"), "{config_text}");
    assert!(config_text.contains("events_log = \"/var/log/ids/events.jsonl\"\n"), "{config_text}");
    assert!(fs::read_to_string(root.join(LOGROTATE)).unwrap().contains("/var/log/ids/events.jsonl {"));

    // The completions are what the installed binary prints, and bash loads its own.
    for (shell, path) in COMPLETIONS {
        let printed = ids(&["completions", shell]);
        assert!(printed.status.success(), "ids completions {shell}: {}", text(&printed));
        assert_eq!(printed.stdout, fs::read(root.join(path)).unwrap(), "{path} differs from `ids completions {shell}`");
    }
    let bash = root.join(COMPLETIONS[0].1);
    let loaded = sh("bash", &["-c", &format!("source {}; complete -p ids", bash.display())]);
    assert!(loaded.contains("complete") && loaded.trim_end().ends_with(" ids"), "{loaded}");
    // zsh and fish (installed by `cargo xtask setup`) parse theirs.
    for (shell, path) in &COMPLETIONS[1..] {
        let parsed = run(Command::new(shell).arg("-n").arg(root.join(path)));
        assert!(parsed.status.success(), "{shell} -n {path}: {}", text(&parsed));
    }

    // Every page renders without a warning from groff.
    let man8 = root.join("usr/share/man/man8");
    let pages: Vec<PathBuf> = fs::read_dir(&man8).unwrap().flatten().map(|e| e.path()).collect();
    assert!(pages.len() > 10, "{pages:?}");
    for page in &pages {
        let script = format!("gzip -dc {} | groff -man -Tutf8 -ww -z", page.display());
        let rendered = run(Command::new("sh").args(["-c", &script]).env("LC_ALL", "C.UTF-8"));
        assert!(rendered.status.success() && rendered.stderr.is_empty(), "{}: {}", page.display(), text(&rendered));
    }
    let top = run(Command::new("man").arg("-l").arg(man8.join("ids.8.gz")).env("MANPAGER", "cat"));
    let top_text = String::from_utf8_lossy(&top.stdout);
    assert!(top.status.success() && top_text.contains("ids-run(8)") && top_text.contains("/etc/ids/ids.toml"));

    // systemd-analyze resolves ExecStart= on this host: the unit is checked with it pointing at
    // the scratch root's binary, and the man pages of Documentation= found in the scratch root.
    let unit = fs::read_to_string(root.join(UNIT)).unwrap();
    assert!(unit.contains("\nExecStart=/usr/sbin/ids run --config /etc/ids/ids.toml\n"), "{unit}");
    let units = scratch.0.join("units");
    fs::create_dir_all(&units).unwrap();
    let checked = units.join("ids.service");
    fs::write(&checked, unit.replace("ExecStart=/usr/sbin/ids", &format!("ExecStart={}", installed.display())))
        .unwrap();
    let verify = run(Command::new("systemd-analyze")
        .arg("verify")
        .arg(&checked)
        .env("MANPATH", root.join("usr/share/man"))
        .env("SYSTEMD_LOG_COLOR", "0"));
    // An unknown or misspelt setting is only a warning: any output fails the check.
    assert!(verify.status.success() && text(&verify).trim().is_empty(), "systemd-analyze verify: {}", text(&verify));
    // The directories the unit makes writable are those of the packaged configuration.
    for line in ["StateDirectory=ids", "LogsDirectory=ids", "ProtectSystem=strict", "ProtectHome=read-only"] {
        assert!(unit.lines().any(|l| l == line), "the unit lacks {line}");
    }

    // What the sensor wrote goes with a purge; the configuration too.
    fs::create_dir_all(root.join("var/lib/ids")).unwrap();
    fs::write(root.join("var/lib/ids/ids.db"), "state").unwrap();
    fs::create_dir_all(root.join("var/log/ids")).unwrap();
    fs::write(root.join("var/log/ids/events.jsonl"), "{}\n").unwrap();
    let remove = run(Command::new("dpkg").args([&root_arg, &log_arg, "--remove", "ids"]));
    assert!(remove.status.success(), "dpkg --remove: {}", text(&remove));
    assert!(!installed.exists() && config.exists(), "remove keeps the conffiles and only them");
    assert!(root.join("var/lib/ids/ids.db").exists(), "remove must keep the state");
    let purge = run(Command::new("dpkg").args([&root_arg, &log_arg, "--purge", "ids"]));
    assert!(purge.status.success(), "dpkg --purge: {}", text(&purge));
    for gone in ["var/lib/ids", "var/log/ids", CONFIG, "etc/ids"] {
        assert!(!root.join(gone).exists(), "{gone} survived the purge");
    }
}

/// `ids run` with the unit's `CapabilityBoundingSet=` as its bounding set (as systemd starts a root
/// service: its capabilities are the bounding set) and no new privileges, from the packaged binary.
struct Bounded(Child);

impl Drop for Bounded {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_sensor_runs_with_the_units_capability_bounding_set_alone() {
    let deb = package();
    let scratch = Scratch::new("/var/tmp", "package-caps");
    let extracted = scratch.0.join("extracted");
    sh("dpkg-deb", &["-x", deb.to_str().unwrap(), extracted.to_str().unwrap()]);
    let unit = fs::read_to_string(extracted.join(UNIT)).unwrap();
    let capabilities: Vec<String> = unit
        .lines()
        .find_map(|line| line.strip_prefix("CapabilityBoundingSet="))
        .expect("the unit sets CapabilityBoundingSet=")
        .split_whitespace()
        .map(|cap| format!("+{}", cap.strip_prefix("CAP_").unwrap().to_lowercase()))
        .collect();
    assert!(capabilities.len() >= 4 && !capabilities.contains(&"+sys_module".to_string()), "{capabilities:?}");

    let watched = scratch.0.join("watched");
    fs::create_dir_all(&watched).unwrap();
    let events = scratch.0.join("events.jsonl");
    let config = scratch.0.join("ids.toml");
    fs::write(
        &config,
        format!(
            "watch = [{:?}]\nevents_log = {:?}\nstate_dir = {:?}\n[xdp]\ninterfaces = [\"lo\"]\npin_dir = {:?}\n",
            watched.display().to_string(),
            events.display().to_string(),
            scratch.0.join("state").display().to_string(),
            test_pin_dir("package-caps"),
        ),
    )
    .unwrap();
    let _pins = Pins { config: config.clone() };
    let child = Command::new("setpriv")
        .arg(format!("--bounding-set=-all,{}", capabilities.join(",")))
        .arg("--no-new-privs")
        .arg("--")
        .arg(extracted.join(BINARY))
        .args(["run", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut daemon = Bounded(child);

    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        let out = run(Command::new(ids_bin()).args(["status", "--json", "--config"]).arg(&config));
        if out.status.success() {
            break serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap();
        }
        if let Some(exit) = daemon.0.try_wait().unwrap() {
            let mut stderr = String::new();
            std::io::Read::read_to_string(&mut daemon.0.stderr.take().unwrap(), &mut stderr).unwrap();
            panic!("the sensor exited ({exit}) with the unit's capabilities {capabilities:?}: {stderr}");
        }
        assert!(Instant::now() < deadline, "the sensor did not answer within 60 s");
        std::thread::sleep(Duration::from_millis(100));
    };
    for signal in ["exec", "file", "connect"] {
        let hook = status["signals"].as_array().unwrap().iter().find(|s| s["signal"] == signal);
        assert!(hook.is_some_and(|s| s["hook"].as_str().is_some_and(|h| !h.is_empty())), "{signal}: {status}");
    }
    assert_eq!(status["xdp"]["interfaces"][0]["name"], "lo", "{status}");

    // Its bounding set is the unit's, and nothing more (less where this test itself lacks one).
    let unit_mask = capabilities.iter().fold(0u64, |mask, cap| {
        let name = cap.trim_start_matches('+');
        let bit = CAPABILITIES.iter().position(|known| *known == name).unwrap_or_else(|| panic!("unknown {name}"));
        mask | 1 << bit
    });
    let own = bounding_set(std::process::id());
    assert_eq!(bounding_set(daemon.0.id()), unit_mask & own, "bounding set for {capabilities:?}");

    // It reads what it watches: a file written there is reported.
    let written = watched.join("written");
    fs::write(&written, "changed").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !fs::read_to_string(&events).unwrap_or_default().contains(written.to_str().unwrap()) {
        assert!(Instant::now() < deadline, "no event for {} in {}", written.display(), events.display());
        std::thread::sleep(Duration::from_millis(50));
    }

    unsafe { libc::kill(daemon.0.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Some(exit) = daemon.0.try_wait().unwrap() {
            break exit;
        }
        assert!(Instant::now() < deadline, "the sensor ignored SIGTERM for 20 s");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "the sensor exited with {exit} after SIGTERM");
}

/// `CapBnd` of a process.
fn bounding_set(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let hex = status.lines().find_map(|l| l.strip_prefix("CapBnd:")).expect("CapBnd in /proc/PID/status");
    u64::from_str_radix(hex.trim(), 16).unwrap()
}

/// Capability names by number (`linux/capability.h`).
const CAPABILITIES: [&str; 41] = [
    "chown",
    "dac_override",
    "dac_read_search",
    "fowner",
    "fsetid",
    "kill",
    "setgid",
    "setuid",
    "setpcap",
    "linux_immutable",
    "net_bind_service",
    "net_broadcast",
    "net_admin",
    "net_raw",
    "ipc_lock",
    "ipc_owner",
    "sys_module",
    "sys_rawio",
    "sys_chroot",
    "sys_ptrace",
    "sys_pacct",
    "sys_admin",
    "sys_boot",
    "sys_nice",
    "sys_resource",
    "sys_time",
    "sys_tty_config",
    "mknod",
    "lease",
    "audit_write",
    "audit_control",
    "setfcap",
    "mac_override",
    "mac_admin",
    "syslog",
    "wake_alarm",
    "block_suspend",
    "audit_read",
    "perfmon",
    "bpf",
    "checkpoint_restore",
];
