//! What an operator meets on a first run: where the XDP filter goes, who may read the state, what
//! a user without root is told, and which configuration file is read. Run as root; the non-root
//! cases drop to `nobody` with setpriv.
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ids_tests::{Daemon, Pins, Scratch, ids_bin, test_pin_dir};

/// A daemon config in `scratch` with `xdp_interfaces` (a TOML array) and nothing watched.
fn write_config(scratch: &Scratch, name: &str, xdp_interfaces: &str) -> (PathBuf, PathBuf) {
    let config = scratch.0.join("ids.toml");
    let events = scratch.0.join("events.jsonl");
    fs::write(
        &config,
        format!(
            "watch = []\nevents_log = {:?}\nstate_dir = {:?}\n[xdp]\ninterfaces = {xdp_interfaces}\npin_dir = {:?}\n",
            events.display().to_string(),
            scratch.0.join("state").display().to_string(),
            test_pin_dir(name),
        ),
    )
    .unwrap();
    (config, events)
}

fn ids(args: &[&str]) -> Output {
    Command::new(ids_bin()).args(args).output().unwrap()
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn no_xdp_interface_configured_attaches_nothing_and_says_how_to_enable_it() {
    let scratch = Scratch::new("/var/tmp", "xdp-none");
    let (config, events) = write_config(&scratch, "xdp-none", "[]");
    let _pins = Pins { config: config.clone() };
    let daemon = Daemon::spawn(&config, &events);
    let status = daemon.status();
    assert_eq!(status["xdp"]["interfaces"], serde_json::json!([]), "{status}");
    let links = Path::new(&test_pin_dir("xdp-none")).join("links");
    let pinned: Vec<_> = fs::read_dir(&links).into_iter().flatten().flatten().map(|e| e.file_name()).collect();
    assert!(pinned.is_empty(), "links pinned with no interface configured: {pinned:?}");
    let stderr = daemon.stop();
    assert!(stderr.contains("no XDP interface configured") && stderr.contains("[xdp] interfaces"), "{stderr}");
}

#[test]
fn an_interface_that_does_not_exist_fails_the_check_and_is_warned_about_at_start() {
    let scratch = Scratch::new("/var/tmp", "xdp-absent");
    let (config, events) = write_config(&scratch, "xdp-absent", "[\"lo\", \"idsnosuch0\"]");
    let config_arg = config.to_str().unwrap();
    let check = ids(&["config", "check", "--config", config_arg]);
    assert!(!check.status.success(), "config check passed: {}", text(&check));
    assert!(text(&check).contains("\"idsnosuch0\""), "the interface is not named: {}", text(&check));

    let _pins = Pins { config: config.clone() };
    let daemon = Daemon::spawn(&config, &events);
    let stderr = daemon.stop();
    assert!(stderr.contains("idsnosuch0") && stderr.contains("NO BAN IS ENFORCED"), "no warning: {stderr}");
}

/// A second daemon whose `[xdp] pin_dir` differs finds the interface taken by the first, XDP
/// (`mode = "generic"`) or tc (`"auto"` on lo, which has no native XDP): it says so, names the
/// interface and how to find and remove the other program, and keeps running.
#[test]
fn an_interface_another_ids_holds_is_named_with_how_to_free_it() {
    for (mode, refusal) in [("generic", "lo already has an XDP program"), ("auto", "lo already has an ids tc filter")] {
        let first_scratch = Scratch::new("/var/tmp", "xdp-held");
        let (first_config, first_events) = write_config(&first_scratch, "xdp-held", "[\"lo\"]");
        fs::write(&first_config, fs::read_to_string(&first_config).unwrap() + &format!("mode = {mode:?}\n")).unwrap();
        let _first_pins = Pins { config: first_config.clone() };
        let first = Daemon::spawn(&first_config, &first_events);
        assert_eq!(first.status()["xdp"]["interfaces"][0]["name"], "lo");

        let second_scratch = Scratch::new("/var/tmp", "xdp-second");
        let (second_config, second_events) = write_config(&second_scratch, "xdp-second", "[\"lo\"]");
        fs::write(&second_config, fs::read_to_string(&second_config).unwrap() + &format!("mode = {mode:?}\n")).unwrap();
        let _second_pins = Pins { config: second_config.clone() };
        let second = Daemon::spawn(&second_config, &second_events);
        assert_eq!(second.status()["xdp"]["interfaces"], serde_json::json!([]), "{mode}: {}", second.status());
        let stderr = second.stop();
        assert!(
            stderr.contains(refusal) && stderr.contains("ids xdp detach"),
            "{mode}: the refusal does not say what holds lo: {stderr}"
        );
        first.stop();
    }
}

#[test]
fn the_embedded_default_names_no_interface_and_passes_its_own_check() {
    let default = ids(&["config", "default"]);
    let scratch = Scratch::new("/var/tmp", "default-check");
    let path = scratch.0.join("default.toml");
    fs::write(&path, &default.stdout).unwrap();
    assert!(String::from_utf8_lossy(&default.stdout).contains("\ninterfaces = []\n"));
    let check = ids(&["config", "check", "--config", path.to_str().unwrap()]);
    assert!(check.status.success(), "{}", text(&check));
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode() & 0o7777
}

#[test]
fn state_files_are_private_to_root_even_when_an_older_version_left_them_readable() {
    let scratch = Scratch::new("/var/tmp", "modes");
    let (config, events) = write_config(&scratch, "modes", "[]");
    let state = scratch.0.join("state");
    // Offline, the command line creates the store itself.
    let listed = ids(&["bans", "--json", "--config", config.to_str().unwrap()]);
    assert!(listed.status.success(), "{}", text(&listed));
    assert_eq!(mode(&state), 0o700, "state_dir");
    assert_eq!(mode(&state.join("ids.db")), 0o600, "ids.db made by the command line");

    // A database another version left world-readable is made private at the next start.
    use std::os::unix::fs::PermissionsExt as _;
    fs::set_permissions(state.join("ids.db"), fs::Permissions::from_mode(0o644)).unwrap();
    let _pins = Pins { config: config.clone() };
    let daemon = Daemon::spawn(&config, &events);
    for name in ["ids.db", "ids.db-wal", "ids.db-shm", "control.sock"] {
        assert_eq!(mode(&state.join(name)), 0o600, "{name}");
    }
    assert_eq!(mode(&events), 0o600, "events log");
    daemon.stop();
}

/// `ids ARGS` as `nobody` (uid and gid 65534, no supplementary group, no capability).
fn as_nobody(args: &[&str]) -> Output {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(ids_bin())
        .args(args)
        .output()
        .unwrap()
}

fn banned_nets(config: &str) -> Vec<String> {
    let out = ids(&["bans", "--json", "--config", config]);
    let listed: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
    listed["data"].as_array().unwrap().iter().map(|ban| ban["net"].as_str().unwrap().to_string()).collect()
}

fn assert_refused_for_root(out: &Output, what: &str) {
    let said = text(out);
    assert!(!out.status.success(), "{what} succeeded as nobody: {said}");
    assert!(said.contains("root is needed"), "{what} does not say root is needed: {said}");
    assert!(!said.contains("no daemon"), "{what} took a daemon it cannot reach for none: {said}");
}

#[test]
fn a_user_without_root_is_told_root_is_needed_and_changes_nothing() {
    // The state directory as the daemon makes it (0700), and one an operator made readable (0755),
    // where the socket's own mode (0600) is what refuses.
    for (name, open_state_dir) in [("nobody-closed", false), ("nobody-open", true)] {
        let scratch = Scratch::new("/var/tmp", name);
        let (config, events) = write_config(&scratch, name, "[]");
        if open_state_dir {
            use std::os::unix::fs::PermissionsExt as _;
            fs::create_dir(scratch.0.join("state")).unwrap();
            fs::set_permissions(scratch.0.join("state"), fs::Permissions::from_mode(0o755)).unwrap();
        }
        let config_arg = config.to_str().unwrap();
        let _pins = Pins { config: config.clone() };
        let daemon = Daemon::spawn(&config, &events);
        let banned = ids(&["ban", "192.0.2.1", "--config", config_arg]);
        assert!(banned.status.success(), "{}", text(&banned));

        assert_refused_for_root(&as_nobody(&["status", "--config", config_arg]), "ids status");
        let status = as_nobody(&["status", "--json", "--config", config_arg]);
        assert!(!status.status.success());
        let answer: serde_json::Value = serde_json::from_slice(&status.stdout)
            .unwrap_or_else(|e| panic!("ids status --json printed no JSON ({e}): {}", text(&status)));
        assert_eq!(answer["ok"], false, "{answer}");
        assert!(answer["error"].as_str().unwrap().contains("root is needed"), "{answer}");

        assert_refused_for_root(&as_nobody(&["ban", "192.0.2.2", "--config", config_arg]), "ids ban");
        let json_ban = as_nobody(&["ban", "192.0.2.3", "--json", "--config", config_arg]);
        assert_refused_for_root(&json_ban, "ids ban --json");
        assert_eq!(serde_json::from_slice::<serde_json::Value>(&json_ban.stdout).unwrap()["ok"], false);
        assert_refused_for_root(&as_nobody(&["unban", "192.0.2.1", "--config", config_arg]), "ids unban");
        assert_refused_for_root(&as_nobody(&["bans", "--config", config_arg]), "ids bans");
        assert_refused_for_root(&as_nobody(&["alerts", "--config", config_arg]), "ids alerts");
        assert_refused_for_root(&as_nobody(&["baseline", "--config", config_arg]), "ids baseline");
        assert_refused_for_root(&as_nobody(&["xdp", "detach", "--config", config_arg]), "ids xdp detach");

        assert_eq!(banned_nets(config_arg), ["192.0.2.1"], "a refused command changed the bans");
        daemon.stop();
    }
}

#[test]
fn ids_run_without_root_says_root_is_needed() {
    let scratch = Scratch::new("/var/tmp", "run-nobody");
    let (config, _) = write_config(&scratch, "run-nobody", "[]");
    let out = as_nobody(&["run", "--config", config.to_str().unwrap()]);
    let said = text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("needs root") && said.contains("CAP_BPF"), "{said}");
    assert!(!scratch.0.join("state").exists(), "it created the state directory: {said}");
}

#[test]
fn without_a_daemon_status_json_is_json_and_alerts_say_where_they_came_from() {
    let scratch = Scratch::new("/var/tmp", "no-daemon");
    let (config, _) = write_config(&scratch, "no-daemon", "[]");
    let config_arg = config.to_str().unwrap();
    let status = ids(&["status", "--json", "--config", config_arg]);
    assert!(!status.status.success(), "{}", text(&status));
    let answer: serde_json::Value = serde_json::from_slice(&status.stdout)
        .unwrap_or_else(|e| panic!("ids status --json printed no JSON ({e}): {}", text(&status)));
    assert_eq!(answer["ok"], false, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("no daemon"), "{answer}");

    let alerts = ids(&["alerts", "--config", config_arg]);
    assert!(alerts.status.success(), "{}", text(&alerts));
    assert!(text(&alerts).contains("no daemon answered") && text(&alerts).contains("ids.db"), "{}", text(&alerts));
}

#[test]
fn ids_config_names_the_file_when_config_does_not() {
    let scratch = Scratch::new("/var/tmp", "ids-config");
    let (from_env, _) = write_config(&scratch, "ids-config", "[]");
    let other = scratch.0.join("other.toml");
    fs::write(&other, format!("state_dir = {:?}\n", scratch.0.join("other-state").display().to_string())).unwrap();
    let status_error = |env: &Path, args: &[&str]| {
        let out =
            Command::new(ids_bin()).args(["status", "--json"]).args(args).env("IDS_CONFIG", env).output().unwrap();
        let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        format!("{}{}", answer["error"].as_str().unwrap_or_default(), String::from_utf8_lossy(&out.stderr))
    };
    let env_state = scratch.0.join("state").display().to_string();
    assert!(status_error(&from_env, &[]).contains(&env_state), "IDS_CONFIG not read: {}", status_error(&from_env, &[]));
    let flagged = status_error(&from_env, &["--config", other.to_str().unwrap()]);
    assert!(flagged.contains("other-state"), "--config does not win over IDS_CONFIG: {flagged}");
    let missing = status_error(Path::new("/nonexistent/ids.toml"), &[]);
    assert!(missing.contains("/nonexistent/ids.toml"), "a missing IDS_CONFIG file is not an error: {missing}");
}

/// A refused `ids ban` says what is wrong in one short line, the input named once.
#[test]
fn a_bad_address_or_duration_is_named_once_in_one_short_line() {
    let scratch = Scratch::new("/var/tmp", "ban-errors");
    let (config, _) = write_config(&scratch, "ban-errors", "[]");
    let config_arg = config.to_str().unwrap();
    for (args, expected) in [
        (&["ban", "1.2.3"][..], "ids: \"1.2.3\" is not an IPv4 or IPv6 address\n"),
        (
            &["ban", "1.2.3.4", "--for", "5x"][..],
            "ids: invalid duration \"5x\": expected a number and a unit (s, m, h, d), e.g. 90s, 10m, 1h\n",
        ),
    ] {
        let out = ids(&[args, &["--config", config_arg]].concat());
        assert!(!out.status.success(), "{args:?} succeeded: {}", text(&out));
        assert_eq!(String::from_utf8_lossy(&out.stderr), expected, "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}: {}", text(&out));
    }
    assert!(banned_nets(config_arg).is_empty(), "a refused ban was recorded");

    // A missing config file: the system's message once.
    let out = ids(&["bans", "--config", "/nonexistent/ids.toml"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "ids: reading config /nonexistent/ids.toml: No such file or directory (os error 2)\n"
    );
}

/// The passphrase flags are offered by the commands that send or set a passphrase only.
#[test]
fn passphrase_flags_appear_only_where_a_passphrase_is_used() {
    // The options the help lists (an about line may mention a flag by name).
    let help = |args: &[&str]| -> String {
        let said = text(&ids(&[args, &["--help"]].concat()));
        said.lines().filter(|line| line.trim_start().starts_with("--")).collect::<Vec<_>>().join("\n")
    };
    for args in [
        &["client", "update"][..],
        &["client", "delete"],
        &["client", "changephrase"],
        &["server", "reset-passphrase", "x"],
    ] {
        let said = help(args);
        assert!(said.contains("--passphrase-file") && said.contains("--passphrase-arg"), "{args:?}: {said}");
    }
    assert!(help(&["client", "changephrase"]).contains("--new-passphrase-file"));
    for args in [
        &["client"][..],
        &["client", "test"],
        &["client", "check"],
        &["server"],
        &["server", "list"],
        &["server", "show", "x"],
        &["server", "delete", "x"],
        &["serve"],
        &["ban"],
    ] {
        let said = help(args);
        assert!(
            !said.contains("passphrase-file") && !said.contains("passphrase-arg"),
            "{args:?} offers a passphrase: {said}"
        );
    }
    for args in [&["client", "update"][..], &["server", "reset-passphrase", "x"]] {
        assert!(!help(args).contains("--new-passphrase"), "{args:?}");
    }
}
