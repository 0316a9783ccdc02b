//! `cargo xtask package`: the Debian package `target/debian/ids_<version>_<arch>.deb`, staged in a
//! tree and built with `dpkg-deb --root-owner-group`. The man pages, the completions and the
//! configuration come from the built binary (`ids manpages`, `ids completions`, `ids config
//! default`), so that xtask never compiles the daemon itself; the unit, the maintainer scripts, the
//! logrotate file, the copyright and the changelog are in `packaging/deb/`.
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, Result, bail, ensure};

use crate::status;

const PACKAGE: &str = "ids";
/// The files dpkg keeps an administrator's changes to across upgrades.
const CONFFILES: &[&str] = &["/etc/ids/ids.toml", "/etc/logrotate.d/ids"];
/// The embedded default writes events to standard output, the journal under systemd, which
/// rate-limits a busy service; the package writes them to a file logrotate rotates.
const DEFAULT_EVENTS_LOG: &str =
    "# Where events go, one JSON object per line; \"-\" is standard output.\nevents_log = \"-\"\n";
const PACKAGED_EVENTS_LOG: &str = concat!(
    "# Where events go, one JSON object per line; \"-\" is standard output (under systemd, the\n",
    "# journal, which rate-limits a busy service). /etc/logrotate.d/ids rotates this file; a directory\n",
    "# other than /var/log/ids must be made writable for the service (`systemctl edit ids`:\n",
    "# ReadWritePaths=).\n",
    "events_log = \"/var/log/ids/events.jsonl\"\n",
);
/// `/bin/kill` of the unit's ExecReload.
const EXTRA_DEPENDS: &str = "procps";
const DESCRIPTION: &str = "eBPF host intrusion-detection sensor
 ids watches the host through eBPF programs (executions, file changes, connections, kernel
 modules), keeps an integrity baseline of files and system state, detects attacks in sshd and web
 server logs and bans their sources in an XDP filter. It includes a TinyIDS server and client and
 a fleet agent and collector over RabbitMQ.";

/// Builds the package from `target/release/ids` (already built) and returns its path.
pub(crate) fn build(root: &Path) -> Result<PathBuf> {
    let ids = root.join("target/release/ids");
    ensure!(ids.is_file(), "{} is missing: build it first (cargo xtask build)", ids.display());
    let sources = root.join("packaging/deb");
    let version = crate_version(root)?;
    let changelog = read(&sources.join("changelog"))?;
    let maintainer = changelog_maintainer(&changelog, &version)?;
    let arch = command_output(Command::new("dpkg").arg("--print-architecture"))?.trim().to_string();

    let out = root.join("target/debian");
    // dpkg-shlibdeps expects the tree at debian/<package> beside a debian/control.
    let work = out.join("build");
    let tree = work.join("debian").join(PACKAGE);
    if work.exists() {
        fs::remove_dir_all(&work).with_context(|| format!("removing {}", work.display()))?;
    }
    fs::create_dir_all(&tree).with_context(|| format!("creating {}", tree.display()))?;
    remove_old_packages(&out)?;

    let binary =
        install_file(&tree, "usr/sbin/ids", &fs::read(&ids).with_context(|| ids.display().to_string())?, 0o755)?;
    status(Command::new("strip").arg("--strip-unneeded").arg(&binary))?;

    let default_config = command_output(Command::new(&ids).args(["config", "default"]))?;
    install_file(&tree, "etc/ids/ids.toml", packaged_config(&default_config)?.as_bytes(), 0o644)?;
    install_file(&tree, "etc/logrotate.d/ids", &fs::read(sources.join("logrotate"))?, 0o644)?;
    install_file(&tree, "lib/systemd/system/ids.service", &fs::read(sources.join("ids.service"))?, 0o644)?;

    for (shell, path) in [
        ("bash", "usr/share/bash-completion/completions/ids"),
        ("zsh", "usr/share/zsh/vendor-completions/_ids"),
        ("fish", "usr/share/fish/vendor_completions.d/ids.fish"),
    ] {
        let script = command_output(Command::new(&ids).args(["completions", shell]))?;
        install_file(&tree, path, script.as_bytes(), 0o644)?;
    }

    let pages = work.join("man");
    let written = command_output(Command::new(&ids).arg("manpages").arg(&pages))?;
    ensure!(!written.trim().is_empty(), "ids manpages wrote no page");
    for page in written.lines().map(Path::new) {
        let name = page.file_name().context("a man page without a file name")?.to_string_lossy();
        install_file(&tree, &format!("usr/share/man/man8/{name}.gz"), &gzip(page)?, 0o644)?;
    }

    let copyright = read(&sources.join("copyright"))?.replace("@CRATES@", &linked_crates(root)?.join("\n "));
    install_file(&tree, "usr/share/doc/ids/copyright", copyright.as_bytes(), 0o644)?;
    // A native package (no Debian revision): policy names its changelog changelog.gz.
    install_file(&tree, "usr/share/doc/ids/changelog.gz", &gzip(&sources.join("changelog"))?, 0o644)?;

    for script in ["postinst", "prerm", "postrm"] {
        install_file(&tree, &format!("DEBIAN/{script}"), &fs::read(sources.join(script))?, 0o755)?;
    }
    install_file(&tree, "DEBIAN/conffiles", format!("{}\n", CONFFILES.join("\n")).as_bytes(), 0o644)?;
    install_file(&tree, "DEBIAN/md5sums", md5sums(&tree)?.as_bytes(), 0o644)?;
    let depends = format!("{}, {EXTRA_DEPENDS}", shlib_depends(&work)?);
    let control = format!(
        "Package: {PACKAGE}\nVersion: {version}\nArchitecture: {arch}\nMaintainer: {maintainer}\n\
         Installed-Size: {}\nDepends: {depends}\nSuggests: logrotate\nSection: admin\nPriority: optional\n\
         Description: {DESCRIPTION}\n",
        installed_size_kib(&tree)?,
    );
    install_file(&tree, "DEBIAN/control", control.as_bytes(), 0o644)?;
    set_directory_modes(&tree)?;

    let deb = out.join(format!("{PACKAGE}_{version}_{arch}.deb"));
    let mut build = Command::new("dpkg-deb");
    build.args(["--build", "--root-owner-group", "-Zxz"]).arg(&tree).arg(&deb);
    // Reproducible timestamps: those of the commit the package is built from.
    if let Some(time) = crate::output_of("git", &["-C", &root.to_string_lossy(), "log", "-1", "--format=%ct"]) {
        build.env("SOURCE_DATE_EPOCH", time.trim());
    }
    status(&mut build)?;
    eprintln!("xtask: built {}", deb.display());
    Ok(deb)
}

/// ids-user's version: the binary's and the package's.
fn crate_version(root: &Path) -> Result<String> {
    let manifest = root.join("ids-user/Cargo.toml");
    let parsed: toml::Table = read(&manifest)?.parse().with_context(|| format!("parsing {}", manifest.display()))?;
    parsed
        .get("package")
        .and_then(|package| package.get("version"))
        .and_then(|version| version.as_str())
        .map(str::to_string)
        .with_context(|| format!("{}: no [package] version", manifest.display()))
}

/// The maintainer of the changelog's first entry, which must be for `version`.
fn changelog_maintainer(changelog: &str, version: &str) -> Result<String> {
    let first = changelog.lines().next().unwrap_or_default();
    let expected = format!("{PACKAGE} ({version})");
    ensure!(
        first.starts_with(&expected),
        "packaging/deb/changelog: its first entry is {first:?}, the crate's version is {version}: add an entry for \
         {version}"
    );
    let trailer = changelog
        .lines()
        .find_map(|line| line.strip_prefix(" -- "))
        .context("packaging/deb/changelog: the first entry has no ` -- NAME <EMAIL>  DATE` line")?;
    let (maintainer, _date) = trailer
        .split_once("  ")
        .context("packaging/deb/changelog: two spaces must separate the maintainer from the date")?;
    Ok(maintainer.to_string())
}

/// The embedded default with the events log in /var/log/ids.
fn packaged_config(default: &str) -> Result<String> {
    ensure!(
        default.matches(DEFAULT_EVENTS_LOG).count() == 1,
        "`ids config default` no longer holds the events_log setting the package rewrites:\n{DEFAULT_EVENTS_LOG}"
    );
    Ok(format!(
        "# Installed by the ids Debian package: the embedded default, events_log excepted.\n{}",
        default.replace(DEFAULT_EVENTS_LOG, PACKAGED_EVENTS_LOG)
    ))
}

fn read(path: &Path) -> Result<String> {
    fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

fn command_output(command: &mut Command) -> Result<String> {
    let out = command.stderr(Stdio::inherit()).output().with_context(|| format!("starting {command:?}"))?;
    ensure!(out.status.success(), "{command:?} failed: {}", out.status);
    String::from_utf8(out.stdout).with_context(|| format!("{command:?} printed text that is not UTF-8"))
}

/// Writes `contents` at `tree/relative` with `mode`; returns the path.
fn install_file(tree: &Path, relative: &str, contents: &[u8], mode: u32) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let path = tree.join(relative);
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(&path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))?;
    Ok(path)
}

/// Every directory of the tree 0755, whatever umask xtask runs with.
fn set_directory_modes(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            set_directory_modes(&entry.path())?;
        }
    }
    Ok(())
}

/// `gzip -9n`: no name or time stamp in the header, so the same input gives the same bytes.
fn gzip(path: &Path) -> Result<Vec<u8>> {
    let out = Command::new("gzip")
        .args(["-9", "-n", "-c"])
        .arg(path)
        .output()
        .with_context(|| format!("gzip {}", path.display()))?;
    ensure!(out.status.success(), "gzip {} failed: {}", path.display(), String::from_utf8_lossy(&out.stderr));
    Ok(out.stdout)
}

fn remove_old_packages(out: &Path) -> Result<()> {
    for entry in fs::read_dir(out).with_context(|| format!("reading {}", out.display()))? {
        let path = entry?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if name.starts_with(&format!("{PACKAGE}_")) && name.ends_with(".deb") {
            fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
    }
    Ok(())
}

/// Every file of the tree outside DEBIAN/ (conffiles included), relative to the root.
fn files(tree: &Path) -> Result<Vec<PathBuf>> {
    fn walk(dir: &Path, tree: &Path, found: &mut Vec<PathBuf>) -> Result<()> {
        for entry in fs::read_dir(dir)? {
            let path = entry?.path();
            if path.is_dir() {
                if path != tree.join("DEBIAN") {
                    walk(&path, tree, found)?;
                }
            } else {
                found.push(path.strip_prefix(tree)?.to_path_buf());
            }
        }
        Ok(())
    }
    let mut found = Vec::new();
    walk(tree, tree, &mut found)?;
    found.sort();
    Ok(found)
}

/// DEBIAN/md5sums: what `dpkg --verify` checks the installed files against (conffiles are
/// tracked by dpkg itself).
fn md5sums(tree: &Path) -> Result<String> {
    let listed: Vec<PathBuf> = files(tree)?
        .into_iter()
        .filter(|file| !CONFFILES.iter().any(|conffile| Path::new(conffile).strip_prefix("/").is_ok_and(|c| c == file)))
        .collect();
    let out = Command::new("md5sum").current_dir(tree).args(&listed).output().context("starting md5sum")?;
    ensure!(out.status.success(), "md5sum failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).context("md5sum printed text that is not UTF-8")
}

/// The libraries the binary links, as `dpkg-shlibdeps` words the dependency (libc6 and
/// libgcc-s1 with their minimum versions).
fn shlib_depends(work: &Path) -> Result<String> {
    fs::write(work.join("debian/control"), format!("Source: {PACKAGE}\n\nPackage: {PACKAGE}\nArchitecture: any\n"))?;
    let out = command_output(
        Command::new("dpkg-shlibdeps").current_dir(work).args(["-O", &format!("-edebian/{PACKAGE}/usr/sbin/ids")]),
    )?;
    let depends = out
        .lines()
        .find_map(|line| line.strip_prefix("shlibs:Depends="))
        .with_context(|| format!("dpkg-shlibdeps printed no shlibs:Depends: {out}"))?;
    if depends.trim().is_empty() {
        bail!("dpkg-shlibdeps found no library dependency of ids");
    }
    Ok(depends.trim().to_string())
}

/// Installed-Size: KiB of the files, each rounded up, as dpkg-gencontrol counts them.
fn installed_size_kib(tree: &Path) -> Result<u64> {
    let mut kib = 0;
    for file in files(tree)? {
        kib += fs::metadata(tree.join(&file))?.len().div_ceil(1024);
    }
    Ok(kib)
}

/// `name version (license)` of every crate linked into the binary: ids-user's normal dependencies,
/// transitively, on this platform, procedural macros left out.
fn linked_crates(root: &Path) -> Result<Vec<String>> {
    let rustc = command_output(Command::new("rustc").arg("-vV"))?;
    let target = rustc.lines().find_map(|line| line.strip_prefix("host: ")).context("rustc -vV names no host")?;
    let metadata = command_output(Command::new("cargo").current_dir(root).args([
        "metadata",
        "--format-version",
        "1",
        "--locked",
        "--filter-platform",
        target,
    ]))?;
    let metadata: serde_json::Value = serde_json::from_str(&metadata).context("parsing cargo metadata")?;
    let packages: std::collections::HashMap<&str, &serde_json::Value> = metadata["packages"]
        .as_array()
        .context("cargo metadata: no packages")?
        .iter()
        .filter_map(|package| Some((package["id"].as_str()?, package)))
        .collect();
    let nodes: std::collections::HashMap<&str, &serde_json::Value> = metadata["resolve"]["nodes"]
        .as_array()
        .context("cargo metadata: no resolve graph")?
        .iter()
        .filter_map(|node| Some((node["id"].as_str()?, node)))
        .collect();
    let start = packages
        .iter()
        .find(|(_, package)| package["name"] == "ids-user")
        .map(|(id, _)| *id)
        .context("cargo metadata: no ids-user package")?;
    let mut seen = std::collections::BTreeSet::new();
    let mut pending = vec![start];
    while let Some(id) = pending.pop() {
        let Some(node) = nodes.get(id) else { continue };
        for dep in node["deps"].as_array().into_iter().flatten() {
            let normal = dep["dep_kinds"].as_array().into_iter().flatten().any(|kind| kind["kind"].is_null());
            if let Some(dep_id) = dep["pkg"].as_str().filter(|_| normal)
                && seen.insert(dep_id)
            {
                pending.push(dep_id);
            }
        }
    }
    let mut crates: Vec<String> = seen
        .iter()
        .filter_map(|id| packages.get(id))
        .filter(|package| package["source"].is_string())
        // Procedural macros run in the compiler; none is linked.
        .filter(|package| {
            !package["targets"].as_array().into_iter().flatten().any(|target| {
                target["kind"].as_array().is_some_and(|kinds| kinds.iter().any(|kind| kind == "proc-macro"))
            })
        })
        .map(|package| {
            format!(
                "{} {} ({})",
                package["name"].as_str().unwrap_or("?"),
                package["version"].as_str().unwrap_or("?"),
                package["license"].as_str().unwrap_or("license not stated")
            )
        })
        .collect();
    crates.sort();
    Ok(crates)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHANGELOG: &str = "ids (0.2.0) unstable; urgency=medium\n\n  * Change.\n\n -- A Maintainer <a@example.org>  Sat, 05 Dec 2026 09:00:00 +0000\n";

    #[test]
    fn the_maintainer_is_that_of_the_entry_for_the_crate_version() {
        assert_eq!(changelog_maintainer(CHANGELOG, "0.2.0").unwrap(), "A Maintainer <a@example.org>");
        let stale = changelog_maintainer(CHANGELOG, "0.3.0").unwrap_err().to_string();
        assert!(stale.contains("add an entry for 0.3.0"), "{stale}");
        let unsigned = changelog_maintainer("ids (0.2.0) unstable; urgency=medium\n", "0.2.0").unwrap_err();
        assert!(unsigned.to_string().contains("NAME <EMAIL>"), "{unsigned}");
    }

    #[test]
    fn the_packaged_configuration_moves_the_events_log_and_nothing_else() {
        let default = format!("watch = []\n\n{DEFAULT_EVENTS_LOG}\nstate_dir = \"/var/lib/ids\"\n");
        let packaged = packaged_config(&default).unwrap();
        assert!(packaged.contains("\nevents_log = \"/var/log/ids/events.jsonl\"\n"), "{packaged}");
        assert!(!packaged.contains("events_log = \"-\""), "{packaged}");
        assert!(packaged.ends_with("\nstate_dir = \"/var/lib/ids\"\n"), "{packaged}");
        let moved = packaged_config("events_log = \"/elsewhere\"\n").unwrap_err().to_string();
        assert!(moved.contains("no longer holds the events_log setting"), "{moved}");
    }

    #[test]
    fn the_shipped_changelog_is_for_the_crate_version() {
        let root = crate::workspace_root();
        let changelog = read(&root.join("packaging/deb/changelog")).unwrap();
        changelog_maintainer(&changelog, &crate_version(&root).unwrap()).unwrap();
    }
}
