//! `cargo xtask vm`: runs the `ids` daemon under a stock Debian kernel in QEMU, where the
//! LSM and fentry hooks load (the development machines' kernel refuses them), and checks
//! what it reports.
//!
//! This module owns everything about that VM:
//! - host tools (qemu-system-x86_64, busybox, cpio; installed with apt-get when missing);
//! - Debian's `linux-image-6.1.0-*-amd64` package, downloaded once and unpacked under
//!   `<root>/.vm/kernel` (the cache; delete that directory to fetch the current one again);
//! - the initramfs (busybox, `/bin/ids` with the shared libraries `ldd` names, veth.ko and
//!   the `/init` script from `xtask/vm/init.sh`), rebuilt on every run;
//! - the TCG boot (never KVM: it hung on these machines) with an overall timeout, its serial
//!   console saved to `<root>/.vm/console.log`;
//! - the checks on that console output: the hook chosen per signal, the events the scenario
//!   in `init.sh` must produce (and must not), no error counted by any eBPF program (`errors`
//!   of both statuses), and the daemon's exit code;
//! - the integrity scenario (change-driven integrity under the LSM+fentry file hooks): the VM
//!   config adds `file_contents` and `file_metadata` collectors over `/tmp/integrity` (tmpfs,
//!   recursive). Once the daemon's first scan is done, `ids baseline` is accepted; then
//!   [`INTEGRITY_LOOPS`] background busybox loops each make a bounded number of random changes
//!   (overwrite, append, `: >` and `truncate -s`, create, rename within and across
//!   directories, unlink, chmod, a new directory renamed into a subdirectory, random pauses
//!   around the 200 ms quiet period), each seeded (`vm: integrity loop N seed S` on the
//!   console) and ending with a fixed `wN/done` file. A write through a shared `mmap` cannot
//!   be made from busybox, so it is left to the host tier. After the loops, `ids status` is
//!   polled until `integrity.dirty` is 0 (at most 30 s); the check then fails unless the
//!   daemon's `aggregate` equals that of a fresh `ids hash` of the same config (same host
//!   name), the file signal used the LSM+fentry hooks, every item `ids diff` names (and every
//!   `done` file) has a `"kind":"integrity"` alert in the events log, and no alert is a
//!   `sensor_miss` or outside `/tmp/integrity`.
//!
//! `IDS_VM_BINARY=/path/to/binary` boots that binary as `/bin/ids` instead of building
//! `ids-user` (to test the VM plumbing with a stand-in). `IDS_VM_SEED=N` (digits) seeds the
//! integrity scenario's churn loops with N+1 .. N+4 instead of the clock (it reaches `/init`
//! through the kernel command line).

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// The `/init` script; its markers are parsed by [`check_console`].
const INIT_SCRIPT: &str = include_str!("../vm/init.sh");
/// Metapackage whose dependency names the current stock kernel package.
const KERNEL_METAPACKAGE: &str = "linux-image-amd64";
/// Serial console; `panic=-1` reboots at once, which `-no-reboot` turns into qemu exiting;
/// `lsm=` keeps the BPF LSM and leaves out apparmor and the other major LSMs.
const KERNEL_CMDLINE: &str = "console=ttyS0 quiet panic=-1 lsm=lockdown,capability,landlock,bpf";
/// Overall limit for one boot, scenario included (TCG is slow).
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);
/// Written into the unpacked kernel directory once `dpkg -x` has finished.
const KERNEL_STAMP: &str = ".unpacked";

/// The directory the scenario watches, and the one it must not hear about.
const WATCHED_DIR: &str = "/tmp/watched";
const UNWATCHED_DIR: &str = "/tmp/unwatched";
/// Signals that must use an LSM hook under this kernel.
const LSM_SIGNALS: [&str; 3] = ["exec", "file", "connect"];
/// File operations the scenario performs in both directories.
const FILE_OPS: [&str; 5] = ["create", "write", "attrib", "rename", "unlink"];
/// The integrity scenario's tree and its number of churn loops (`w1` .. `wN`); keep in step
/// with `INTEGRITY_DIR` and `INTEGRITY_LOOPS` in `init.sh`.
const INTEGRITY_DIR: &str = "/tmp/integrity";
const INTEGRITY_LOOPS: usize = 4;
/// Port of the refused TCP connection in the scenario.
const CONNECT_PORT: u64 = 9;
/// Longest quoted line in an error message.
const QUOTE_WIDTH: usize = 600;

/// Builds and boots the VM, then checks the scenario's results. `root` is the workspace root.
pub fn run(root: &Path) -> Result<()> {
    let scenario =
        Scenario { init_script: INIT_SCRIPT, binaries: &[], timeout: BOOT_TIMEOUT, console_log: "console.log" };
    let booted = boot_scenario(root, &scenario)?;
    let summary = check_console(&booted.console)
        .with_context(|| format!("VM check failed; console in {}", booted.console_log.display()))?;
    println!("vm: OK ({summary})");
    Ok(())
}

/// What one boot of the VM runs: its `/init`, binaries copied to `/bin` besides `ids` and
/// busybox (with the shared libraries they need), how long it may take, and the file under
/// `<root>/.vm` its console is saved to.
pub struct Scenario<'a> {
    pub init_script: &'a str,
    pub binaries: &'a [&'a Path],
    pub timeout: Duration,
    pub console_log: &'a str,
}

/// A boot that powered off by itself.
pub struct Booted {
    pub console: String,
    pub console_log: PathBuf,
    /// The stock kernel's Debian package.
    pub kernel_package: String,
}

/// Builds `ids` (or takes `IDS_VM_BINARY`), fetches the kernel, assembles the initramfs of
/// `scenario` and boots it; fails when the VM does not power off in time or qemu fails.
pub fn boot_scenario(root: &Path, scenario: &Scenario) -> Result<Booted> {
    let vm_dir = root.join(".vm");
    fs::create_dir_all(&vm_dir).with_context(|| format!("creating {}", vm_dir.display()))?;

    ensure_host_tools()?;
    let kernel = fetch_kernel(&vm_dir)?;
    let ids = ids_binary(root)?;
    let initrd = build_initramfs(&vm_dir, &ids, &kernel, scenario)?;

    println!("vm: booting {} (TCG, timeout {} s)", kernel.package, scenario.timeout.as_secs());
    let boot = boot(&kernel.vmlinuz, &initrd, scenario.timeout)?;
    let log = vm_dir.join(scenario.console_log);
    fs::write(&log, &boot.console).with_context(|| format!("writing {}", log.display()))?;
    println!("vm: qemu finished after {:.1} s; console saved to {}", boot.elapsed.as_secs_f64(), log.display());

    if boot.timed_out {
        bail!(
            "the VM did not power off within {} s (qemu killed); console in {}, last lines:\n{}",
            scenario.timeout.as_secs(),
            log.display(),
            tail(&boot.console, 40)
        );
    }
    if !boot.status.success() {
        bail!("qemu-system-x86_64 failed ({}): {}\nconsole in {}", boot.status, boot.stderr.trim(), log.display());
    }
    Ok(Booted { console: boot.console, console_log: log, kernel_package: kernel.package })
}

// ---------------------------------------------------------------------------------------
// Host tools

/// Installs qemu, busybox-static and cpio with apt-get unless all three are on PATH.
fn ensure_host_tools() -> Result<()> {
    let missing: Vec<&str> =
        ["qemu-system-x86_64", "busybox", "cpio"].into_iter().filter(|tool| find_in_path(tool).is_none()).collect();
    if missing.is_empty() {
        return Ok(());
    }
    println!("vm: installing host tools (missing: {})", missing.join(", "));
    let install = || {
        apt_get()
            // seabios and ipxe-qemu (firmware, NIC ROM) are dependencies; recommends add a GUI.
            .args(["install", "-y", "--no-install-recommends"])
            .args(["qemu-system-x86", "busybox-static", "cpio"])
            .status()
            .context("running apt-get install")
    };
    if !install()?.success() {
        run_checked(apt_get().arg("update"))?;
        let status = install()?;
        if !status.success() {
            bail!("apt-get install -y qemu-system-x86 busybox-static cpio failed ({status})");
        }
    }
    Ok(())
}

fn apt_get() -> Command {
    let mut command = Command::new("apt-get");
    command.env("DEBIAN_FRONTEND", "noninteractive");
    command
}

/// The first executable named `name` in PATH.
fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|candidate| {
        candidate.metadata().map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
    })
}

// ---------------------------------------------------------------------------------------
// Kernel

/// The unpacked stock kernel package.
struct Kernel {
    package: String,
    vmlinuz: PathBuf,
    /// `lib/modules/<release>` inside the unpacked package.
    modules: PathBuf,
}

/// Returns the cached kernel under `<vm_dir>/kernel`, downloading and unpacking it first if
/// needed.
fn fetch_kernel(vm_dir: &Path) -> Result<Kernel> {
    let dir = vm_dir.join("kernel");
    let stamp = dir.join(KERNEL_STAMP);
    if !stamp.is_file() {
        let package = current_kernel_package()?;
        println!("vm: downloading {package} into {}", vm_dir.display());
        let deb = download_package(vm_dir, &package)?;
        if dir.exists() {
            fs::remove_dir_all(&dir).with_context(|| format!("removing partial {}", dir.display()))?;
        }
        run_checked(Command::new("dpkg").arg("-x").arg(&deb).arg(&dir))?;
        fs::write(&stamp, format!("{package}\n")).with_context(|| format!("writing {}", stamp.display()))?;
        fs::remove_file(&deb).with_context(|| format!("removing {}", deb.display()))?;
    }
    let package = fs::read_to_string(&stamp).with_context(|| format!("reading {}", stamp.display()))?.trim().to_owned();

    let boot = dir.join("boot");
    let vmlinuz = single_entry(&boot, |name| name.starts_with("vmlinuz-"))?;
    let release = vmlinuz.file_name().and_then(OsStr::to_str).and_then(|n| n.strip_prefix("vmlinuz-")).unwrap_or("");
    let modules = dir.join("lib/modules").join(release);
    Ok(Kernel { package, vmlinuz, modules })
}

/// Name of the package `linux-image-amd64` depends on, e.g. `linux-image-6.1.0-56-amd64`;
/// refreshes the package lists once if apt does not know it.
fn current_kernel_package() -> Result<String> {
    if let Some(package) = kernel_package_from_apt()? {
        return Ok(package);
    }
    run_checked(apt_get().arg("update"))?;
    kernel_package_from_apt()?.with_context(|| {
        format!("apt-cache names no linux-image-6.1.0-*-amd64 package (neither {KERNEL_METAPACKAGE}'s dependency nor a search hit)")
    })
}

fn kernel_package_from_apt() -> Result<Option<String>> {
    let is_kernel = |name: &str| {
        name.strip_prefix("linux-image-6.1.0-")
            .and_then(|rest| rest.strip_suffix("-amd64"))
            .is_some_and(|abi| !abi.is_empty() && abi.bytes().all(|b| b.is_ascii_digit()))
    };
    let depends = output_of(Command::new("apt-cache").args(["depends", KERNEL_METAPACKAGE])).unwrap_or_default();
    let from_depends = depends
        .lines()
        .filter_map(|line| line.trim().strip_prefix("Depends:"))
        .map(str::trim)
        .find(|name| is_kernel(name));
    if let Some(name) = from_depends {
        return Ok(Some(name.to_owned()));
    }
    // Fallback: the highest ABI number among the packages apt knows.
    let search =
        output_of(Command::new("apt-cache").args(["search", "--names-only", r"^linux-image-6\.1\.0-[0-9]+-amd64$"]))?;
    let abi = |name: &str| -> u32 {
        name.trim_start_matches("linux-image-6.1.0-").trim_end_matches("-amd64").parse().unwrap_or(0)
    };
    Ok(search
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| is_kernel(name))
        .max_by_key(|name| abi(name))
        .map(str::to_owned))
}

/// `apt-get download <package>` in `dir`; returns the `.deb` it wrote.
fn download_package(dir: &Path, package: &str) -> Result<PathBuf> {
    let download =
        || apt_get().args(["download", package]).current_dir(dir).status().context("running apt-get download");
    if !download()?.success() {
        run_checked(apt_get().arg("update"))?;
        let status = download()?;
        if !status.success() {
            bail!("apt-get download {package} failed ({status}) in {}", dir.display());
        }
    }
    single_entry(dir, |name| name.starts_with(&format!("{package}_")) && name.ends_with(".deb"))
}

/// The one entry of `dir` whose file name satisfies `matches`.
fn single_entry(dir: &Path, matches: impl Fn(&str) -> bool) -> Result<PathBuf> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
        if entry.file_name().to_str().is_some_and(&matches) {
            found.push(entry.path());
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => bail!("no matching file in {}", dir.display()),
        _ => bail!("several matching files in {}: {found:?}", dir.display()),
    }
}

// ---------------------------------------------------------------------------------------
// The ids binary and the initramfs

/// `$IDS_VM_BINARY` if set, else `cargo build --release -p ids-user` and its `ids`.
fn ids_binary(root: &Path) -> Result<PathBuf> {
    if let Some(binary) = std::env::var_os("IDS_VM_BINARY") {
        let binary = PathBuf::from(binary);
        println!("vm: using IDS_VM_BINARY={} as /bin/ids", binary.display());
        return Ok(binary);
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    run_checked(Command::new(cargo).args(["build", "--release", "-p", "ids-user"]).current_dir(root))?;
    let target_dir = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    let binary = target_dir.join("release/ids");
    if !binary.is_file() {
        bail!("cargo build succeeded but {} does not exist", binary.display());
    }
    Ok(binary)
}

/// Assembles `<vm_dir>/initramfs` and packs it into `<vm_dir>/initrd.cpio.gz`.
fn build_initramfs(vm_dir: &Path, ids: &Path, kernel: &Kernel, scenario: &Scenario) -> Result<PathBuf> {
    let tree = vm_dir.join("initramfs");
    if tree.exists() {
        fs::remove_dir_all(&tree).with_context(|| format!("removing {}", tree.display()))?;
    }
    for dir in ["bin", "sbin", "dev", "etc", "lib/modules", "proc", "root", "sys", "tmp"] {
        let path = tree.join(dir);
        fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
    }

    let busybox = find_in_path("busybox").context("busybox is not on PATH")?;
    install_busybox(&busybox, &tree)?;
    copy_file(ids, &tree.join("bin/ids"))?;
    copy_shared_libraries(&busybox, &tree)?;
    copy_shared_libraries(ids, &tree)?;
    for binary in scenario.binaries {
        let name = binary.file_name().with_context(|| format!("{} has no file name", binary.display()))?;
        copy_file(binary, &tree.join("bin").join(name))?;
        copy_shared_libraries(binary, &tree)?;
    }
    install_modules(kernel, &tree)?;

    let init = tree.join("init");
    fs::write(&init, scenario.init_script).with_context(|| format!("writing {}", init.display()))?;
    fs::set_permissions(&init, fs::Permissions::from_mode(0o755))
        .with_context(|| format!("chmod {}", init.display()))?;

    let initrd = vm_dir.join("initrd.cpio.gz");
    pack_cpio_gz(&tree, &initrd)?;
    Ok(initrd)
}

/// Copies busybox to `/bin/busybox` and links every applet it lists to it in `/bin`.
fn install_busybox(busybox: &Path, tree: &Path) -> Result<()> {
    copy_file(busybox, &tree.join("bin/busybox"))?;
    let list = output_of(Command::new(busybox).arg("--list"))?;
    for applet in list.lines().map(str::trim).filter(|a| !a.is_empty() && !a.contains('/')) {
        let link = tree.join("bin").join(applet);
        if link.symlink_metadata().is_err() {
            symlink("busybox", &link).with_context(|| format!("linking {}", link.display()))?;
        }
    }
    Ok(())
}

/// Copies the libraries and loader `ldd` names for `binary` into `tree` at the same paths.
/// A static binary needs none.
fn copy_shared_libraries(binary: &Path, tree: &Path) -> Result<()> {
    let output = Command::new("ldd").arg(binary).output().context("running ldd")?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        if text.contains("not a dynamic executable")
            || String::from_utf8_lossy(&output.stderr).contains("not a dynamic executable")
        {
            return Ok(());
        }
        bail!(
            "ldd {} failed ({}): {}",
            binary.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    if let Some(line) = text.lines().find(|line| line.contains("not found")) {
        bail!("ldd {}: {}", binary.display(), line.trim());
    }
    for line in text.lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
        let path = match line.split_once("=>") {
            Some((_, resolved)) => resolved.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        let Some(path) = path.filter(|p| p.starts_with('/')) else {
            continue;
        };
        let destination = tree.join(path.trim_start_matches('/'));
        if !destination.exists() {
            copy_file(Path::new(path), &destination)?;
        }
    }
    Ok(())
}

/// Puts the kernel modules init uses at `/lib/modules/<name>.ko` (decompressed: busybox insmod
/// cannot read .xz): veth (loaded at boot when present; the scenario does not need it) and dummy
/// (loaded and removed while the daemon runs: the `kernel_modules` collector must follow it).
fn install_modules(kernel: &Kernel, tree: &Path) -> Result<()> {
    for (name, required) in [("veth", false), ("dummy", true)] {
        let plain = kernel.modules.join(format!("kernel/drivers/net/{name}.ko"));
        let compressed = kernel.modules.join(format!("kernel/drivers/net/{name}.ko.xz"));
        let destination = tree.join(format!("lib/modules/{name}.ko"));
        if plain.is_file() {
            copy_file(&plain, &destination)?;
        } else if compressed.is_file() {
            let out = File::create(&destination).with_context(|| format!("creating {}", destination.display()))?;
            run_checked(Command::new("xz").arg("-dc").arg(&compressed).stdout(out))?;
        } else if required {
            bail!("no {name} module in {}", kernel.modules.display());
        } else {
            println!("vm: no {name} module in {}; the VM runs without it", kernel.modules.display());
        }
    }
    Ok(())
}

/// `cpio -o -H newc | gzip` of everything under `tree`, owned by root, into `output`.
fn pack_cpio_gz(tree: &Path, output: &Path) -> Result<()> {
    let mut names = Vec::new();
    list_tree(tree, Path::new(""), &mut names)?;
    let mut list = String::new();
    for name in &names {
        list.push_str(name.to_str().with_context(|| format!("non-UTF-8 path {name:?} in {}", tree.display()))?);
        list.push('\n');
    }

    let out = File::create(output).with_context(|| format!("creating {}", output.display()))?;
    let mut cpio = Command::new("cpio")
        .args(["-o", "-H", "newc", "-R", "0:0", "--quiet"])
        .current_dir(tree)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("running cpio")?;
    let cpio_out = cpio.stdout.take().expect("cpio stdout is piped");
    let mut gzip = Command::new("gzip").arg("-6").stdin(cpio_out).stdout(out).spawn().context("running gzip")?;
    cpio.stdin.take().expect("cpio stdin is piped").write_all(list.as_bytes()).context("writing cpio's file list")?;
    let cpio_status = cpio.wait().context("waiting for cpio")?;
    let gzip_status = gzip.wait().context("waiting for gzip")?;
    if !cpio_status.success() || !gzip_status.success() {
        bail!("cpio | gzip into {} failed (cpio {cpio_status}, gzip {gzip_status})", output.display());
    }
    Ok(())
}

/// Appends the paths under `dir` (relative to the tree's root, parents first) to `names`,
/// without following symlinks.
fn list_tree(root: &Path, dir: &Path, names: &mut Vec<PathBuf>) -> Result<()> {
    let full = root.join(dir);
    let mut entries: Vec<_> = fs::read_dir(&full)
        .with_context(|| format!("reading {}", full.display()))?
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("reading {}", full.display()))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let relative = dir.join(entry.file_name());
        names.push(relative.clone());
        if entry.file_type().with_context(|| format!("stat {}", entry.path().display()))?.is_dir() {
            list_tree(root, &relative, names)?;
        }
    }
    Ok(())
}

/// Copies `from` (following symlinks) to `to`, creating `to`'s parent directories.
fn copy_file(from: &Path, to: &Path) -> Result<()> {
    if let Some(parent) = to.parent() {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    fs::copy(from, to).with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Boot

struct Boot {
    console: String,
    stderr: String,
    status: ExitStatus,
    elapsed: Duration,
    timed_out: bool,
}

/// Boots the kernel and initramfs under TCG, echoing the serial console to stdout and
/// returning it; kills qemu after `timeout`.
fn boot(vmlinuz: &Path, initrd: &Path, timeout: Duration) -> Result<Boot> {
    let start = Instant::now();
    let mut qemu = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg,thread=multi", "-m", "1024", "-smp", "2", "-nographic", "-no-reboot"])
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", &kernel_cmdline()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running qemu-system-x86_64")?;

    let mut stdout = qemu.stdout.take().expect("qemu stdout is piped");
    let console_reader = thread::spawn(move || {
        let mut console = Vec::new();
        let mut buffer = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buffer) {
            if n == 0 {
                break;
            }
            console.extend_from_slice(&buffer[..n]);
            let mut echo = std::io::stdout().lock();
            let _ = echo.write_all(&buffer[..n]);
            let _ = echo.flush();
        }
        console
    });
    let mut stderr = qemu.stderr.take().expect("qemu stderr is piped");
    let stderr_reader = thread::spawn(move || {
        let mut text = Vec::new();
        let _ = stderr.read_to_end(&mut text);
        text
    });

    let mut timed_out = false;
    let status = loop {
        if let Some(status) = qemu.try_wait().context("waiting for qemu-system-x86_64")? {
            break status;
        }
        if start.elapsed() > timeout {
            timed_out = true;
            let _ = qemu.kill();
            break qemu.wait().context("waiting for the killed qemu-system-x86_64")?;
        }
        thread::sleep(Duration::from_millis(200));
    };
    let elapsed = start.elapsed();
    let console = console_reader.join().unwrap_or_default();
    let stderr = stderr_reader.join().unwrap_or_default();
    Ok(Boot {
        console: strip_terminal_codes(&String::from_utf8_lossy(&console)),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
        status,
        elapsed,
        timed_out,
    })
}

/// [`KERNEL_CMDLINE`], plus `IDS_VM_SEED=N` when that variable is set to digits (the kernel
/// hands unknown `name=value` words to `/init` as environment variables).
fn kernel_cmdline() -> String {
    match std::env::var("IDS_VM_SEED") {
        Ok(seed) if !seed.is_empty() && seed.bytes().all(|b| b.is_ascii_digit()) => {
            format!("{KERNEL_CMDLINE} IDS_VM_SEED={seed}")
        }
        _ => KERNEL_CMDLINE.to_owned(),
    }
}

/// `text` without carriage returns and the terminal escape sequences SeaBIOS prints
/// (`ESC c`, `ESC [ ... <letter>`).
fn strip_terminal_codes(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' => {}
            '\u{1b}' => {
                if chars.next_if_eq(&'[').is_some() {
                    // Parameter and intermediate bytes, then one final byte.
                    while chars.next_if(|c| ('\u{20}'..='\u{3f}').contains(c)).is_some() {}
                }
                chars.next();
            }
            _ => out.push(c),
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// Checks

/// Checks the console of a finished run against what the scenario in `init.sh` must
/// produce; returns a one-line summary, or an error listing every failed expectation with
/// the output it looked at.
fn check_console(console: &str) -> Result<String> {
    let status_text = section(console, "STATUS");
    let events_text = section(console, "EVENTS");
    let daemon_log = section(console, "DAEMON-LOG");
    let exit_code = console
        .lines()
        .find_map(|line| line.trim().strip_prefix("===EXIT ")?.strip_suffix("===")?.trim().parse::<i32>().ok());

    if status_text.is_none() && events_text.is_none() && exit_code.is_none() {
        bail!(
            "the VM printed none of the ===STATUS===/===EVENTS===/===EXIT=== markers; last console lines:\n{}",
            tail(console, 40)
        );
    }

    let mut failures = Vec::new();

    if let Some(line) = console.lines().map(str::trim).find(|line| line.starts_with("===NOT READY")) {
        failures.push(format!("`ids status` never succeeded while the daemon ran ({line})"));
    }

    // Hooks per signal.
    let mut hooks = Vec::new();
    match status_text.as_deref().map(serde_json::from_str::<Value>) {
        None => failures.push("no ===STATUS=== section".to_owned()),
        Some(Err(e)) => failures.push(format!(
            "`ids status --json` output is not JSON ({e}):\n{}",
            quote(status_text.as_deref().unwrap_or_default(), 30)
        )),
        Some(Ok(status)) => {
            let signals = status["signals"].as_array().cloned().unwrap_or_default();
            for name in LSM_SIGNALS {
                let entry = signals.iter().find(|s| s["signal"] == name);
                match entry.and_then(|s| s["hook"].as_str()) {
                    Some(hook) if name == "file" && !hook.contains("fentry") => failures.push(format!(
                        "signal `file` uses hook `{hook}`, expected the LSM+fentry set: {}",
                        entry.map(Value::to_string).unwrap_or_default()
                    )),
                    Some(hook) if hook.starts_with("lsm") => hooks.push(format!("{name}={hook}")),
                    Some(hook) => failures.push(format!(
                        "signal `{name}` uses hook `{hook}`, expected an lsm hook: {}",
                        entry.map(Value::to_string).unwrap_or_default()
                    )),
                    None => failures.push(format!(
                        "status has no hook for signal `{name}`; signals: {}",
                        Value::Array(signals.clone())
                    )),
                }
            }
            check_program_errors(&status, "STATUS", &mut failures);
        }
    }

    // Events.
    let mut events = Vec::new();
    match events_text.as_deref() {
        None => failures.push("no ===EVENTS=== section".to_owned()),
        Some(text) => {
            for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
                match serde_json::from_str::<Value>(line) {
                    Ok(event) => events.push(event),
                    Err(e) => failures.push(format!("events log line is not JSON ({e}): {line}")),
                }
            }
        }
    }
    if events_text.is_some() {
        check_events(&events, &mut failures);
    }

    // Integrity.
    let integrity = check_integrity(console, &events, &mut failures);

    // Shutdown.
    match exit_code {
        Some(0) => {}
        Some(code) => failures.push(format!(
            "the daemon exited with {code} (SIGTERM sent at the end of the scenario), expected 0; its log:\n{}",
            quote(daemon_log.as_deref().unwrap_or("(none)"), 30)
        )),
        None => failures.push(format!("no ===EXIT <code>=== line; last console lines:\n{}", tail(console, 30))),
    }

    if !failures.is_empty() {
        let mut message = format!("{} expectation(s) failed:", failures.len());
        for failure in &failures {
            message.push_str("\n- ");
            message.push_str(failure);
        }
        if let Some(log) = daemon_log.as_deref().filter(|log| !log.trim().is_empty()) {
            message.push_str(&format!("\ndaemon log (last lines):\n{}", tail(log, 20)));
        }
        bail!(message);
    }
    Ok(format!("{}; {} events; {integrity}", hooks.join(", "), events.len()))
}

/// No eBPF program counted a failed run (`errors` of `ids status`). Nothing else runs in the VM,
/// so any count is the programs' own: a kernel read at a wrong offset, a full map.
fn check_program_errors(status: &Value, section: &str, failures: &mut Vec<String>) {
    let Some(errors) = status["errors"].as_object() else {
        failures.push(format!("the ==={section}=== status has no `errors` object"));
        return;
    };
    let counted: Vec<String> = errors
        .iter()
        .filter(|(_, count)| count.as_u64() != Some(0))
        .map(|(program, count)| format!("{program} {count}"))
        .collect();
    if !counted.is_empty() {
        failures.push(format!("eBPF programs counted errors in ==={section}===: {}", counted.join(", ")));
    }
}

/// The expectations of the integrity scenario; appends one message per unmet expectation and
/// returns a summary for the success line.
fn check_integrity(console: &str, events: &[Value], failures: &mut Vec<String>) -> String {
    let marker = |prefix: &str| console.lines().map(str::trim).find(|line| line.starts_with(prefix)).map(str::to_owned);
    let stderr = section(console, "INTEGRITY-STDERR").unwrap_or_default();
    let with_stderr = |message: String| {
        if stderr.trim().is_empty() {
            message
        } else {
            format!("{message}\n  stderr of the integrity commands:\n{}", quote(&stderr, 20))
        }
    };
    // One JSON section; a failure (and `None`) when it is missing or not JSON.
    let mut json_section = |name: &str, command: &str| -> Option<Value> {
        match section(console, name) {
            None => {
                failures.push(with_stderr(format!("no ==={name}=== section ({command})")));
                None
            }
            Some(text) => match serde_json::from_str::<Value>(&text) {
                Ok(value) => Some(value),
                Err(e) => {
                    failures.push(with_stderr(format!("`{command}` output is not JSON ({e}):\n{}", quote(&text, 30))));
                    None
                }
            },
        }
    };
    let baseline = json_section("INTEGRITY-BASELINE", "ids baseline --json");
    let status = json_section("INTEGRITY-STATUS", "ids status --json");
    let hash = json_section("INTEGRITY-HASH", "ids hash --json");
    let diff = json_section("INTEGRITY-DIFF", "ids diff --json");

    if marker("===INTEGRITY-READY").is_none() {
        failures
            .push("the daemon's first integrity scan was not done within 30 s (no ===INTEGRITY-READY===)".to_owned());
    }
    if let Some(baseline) = &baseline
        && (baseline["ok"] != true || baseline["source"] != "daemon")
    {
        failures.push(format!("`ids baseline --json` was not accepted by the daemon: {baseline}"));
    }
    let clean = marker("===INTEGRITY-CLEAN");
    if clean.is_none() {
        failures.push(format!(
            "integrity.dirty did not reach 0 within 30 s of the churn loops' end ({})",
            marker("===INTEGRITY-NOT-CLEAN").unwrap_or_else(|| "no marker".to_owned())
        ));
    }

    // The daemon's aggregate against a fresh offline hash of the same config.
    let daemon_aggregate = status.as_ref().and_then(|s| s["aggregate"].as_str());
    let fresh_aggregate = hash.as_ref().and_then(|h| h["aggregate"].as_str());
    if let Some(status) = &status {
        check_program_errors(status, "INTEGRITY-STATUS", failures);
        if status["integrity"]["dirty"] != 0 {
            failures.push(format!("integrity.dirty is not 0 in the final status: {}", status["integrity"]));
        }
        if daemon_aggregate.is_none() {
            failures.push(format!("the final `ids status --json` has no aggregate: {}", status["integrity"]));
        }
    }
    if hash.is_some() && fresh_aggregate.is_none() {
        failures.push("`ids hash --json` printed no aggregate".to_owned());
    }
    if let (Some(daemon), Some(fresh)) = (daemon_aggregate, fresh_aggregate)
        && daemon != fresh
    {
        failures.push(format!(
            "the daemon's aggregate {daemon} differs from a fresh `ids hash` {fresh} after the churn: \
                 the daemon missed a change (integrity {})",
            status.as_ref().map_or(Value::Null, |s| s["integrity"].clone())
        ));
    }

    // Alerts.
    let alerts: Vec<&Value> =
        events.iter().filter(|e| e["kind"] == "integrity" || e["kind"] == "sensor_miss").collect();
    let in_tree = |id: &str| id.split_once(':').is_some_and(|(_, path)| is_under(path, INTEGRITY_DIR));
    let misses: Vec<&Value> = alerts.iter().copied().filter(|a| a["kind"] == "sensor_miss").collect();
    if !misses.is_empty() {
        failures.push(format!("sensor_miss alerts (changes the sensor did not report):\n{}", quote_events(misses)));
    }
    let stray: Vec<&Value> = alerts
        .iter()
        .copied()
        .filter(|a| !a["id"].as_str().is_some_and(in_tree) && a["id"] != "module:dummy")
        .collect();
    if !stray.is_empty() {
        failures.push(format!("integrity alerts for items outside {INTEGRITY_DIR}:\n{}", quote_events(stray)));
    }
    let alerted = |id: &str| alerts.iter().any(|a| a["kind"] == "integrity" && a["id"] == id);
    let mut expected: Vec<String> = (1..=INTEGRITY_LOOPS)
        .flat_map(|w| ["file", "meta"].map(|prefix| format!("{prefix}:{INTEGRITY_DIR}/w{w}/done")))
        .collect();

    // The diff against the baseline: only the tree, not empty, and every item in it alerted.
    let mut diff_items = 0;
    if let Some(diff) = &diff {
        for change in ["added", "removed", "changed"] {
            match diff[change].as_array() {
                None => failures.push(format!("`ids diff --json` has no `{change}` array: {diff}")),
                Some(entries) => {
                    for entry in entries {
                        diff_items += 1;
                        match entry["id"].as_str() {
                            Some(id) if in_tree(id) => {
                                if !expected.iter().any(|e| e == id) {
                                    expected.push(id.to_owned());
                                }
                            }
                            _ => failures.push(format!("`ids diff` names an item outside {INTEGRITY_DIR}: {entry}")),
                        }
                    }
                }
            }
        }
        if diff_items == 0 {
            failures.push("`ids diff --json` is empty after the churn".to_owned());
        }
    }
    let unalerted: Vec<&String> = expected.iter().filter(|id| !alerted(id)).collect();
    if !unalerted.is_empty() {
        failures.push(format!(
            "no \"kind\":\"integrity\" alert in the events log for {} changed item(s): {}; integrity alerts:\n{}",
            unalerted.len(),
            unalerted.iter().take(20).map(|id| id.as_str()).collect::<Vec<_>>().join(", "),
            quote_events(alerts.iter().copied())
        ));
    }

    format!(
        "integrity: aggregate {}, {} alerts, {diff_items} items in the diff{}",
        daemon_aggregate.map_or("?", |a| a.get(..12).unwrap_or(a)),
        alerts.len(),
        clean
            .as_deref()
            .and_then(|line| line.strip_prefix("===INTEGRITY-CLEAN "))
            .and_then(|rest| rest.strip_suffix("==="))
            .map(|rest| format!(", clean {rest} after the loops"))
            .unwrap_or_default()
    )
}

/// The expectations on the events log; appends one message per unmet expectation.
fn check_events(events: &[Value], failures: &mut Vec<String>) {
    let of_kind = |kind: &'static str| events.iter().filter(move |e| e["kind"] == kind);

    let vmarg1 = |e: &&Value| e["argv"].as_array().is_some_and(|argv| argv.iter().any(|a| a == "vmarg1"));
    if !of_kind("exec").any(|e| vmarg1(&e)) {
        failures
            .push(format!("no exec event with \"vmarg1\" in argv; exec events:\n{}", quote_events(of_kind("exec"))));
    }
    // The process table (LSM exec hook, fork and exit tracepoints) names who ran it.
    let named = |e: &Value| {
        e["process"]["pid"] == e["pid"]
            && e["process"]["exe"].as_str().is_some()
            && e["process"]["ancestors"].as_array().is_some_and(|a| !a.is_empty())
    };
    if !of_kind("exec").filter(vmarg1).any(named) {
        failures.push(format!(
            "the exec event with \"vmarg1\" has no process object with exe and ancestors:\n{}",
            quote_events(of_kind("exec").filter(vmarg1))
        ));
    }
    let integrity_here = |e: &&Value| e["id"].as_str().is_some_and(|id| id.contains(INTEGRITY_DIR));
    if !of_kind("integrity").filter(integrity_here).any(|e| e["changed_by"][0]["process"]["pid"].is_u64()) {
        failures.push(format!(
            "no integrity alert under {INTEGRITY_DIR} names who changed the item (changed_by):\n{}",
            quote_events(of_kind("integrity").filter(integrity_here))
        ));
    }

    let watched_op = |op: &str| {
        of_kind("file").any(|e| e["op"] == op && e["path"].as_str().is_some_and(|p| is_under(p, WATCHED_DIR)))
    };
    let missing: Vec<&str> = FILE_OPS.into_iter().filter(|op| !watched_op(op)).collect();
    if !missing.is_empty() {
        failures.push(format!(
            "no file event under {WATCHED_DIR} for op(s) {}; file events:\n{}",
            missing.join(", "),
            quote_events(of_kind("file"))
        ));
    }

    let touches_unwatched = |e: &&Value| {
        ["path", "new_path"].iter().any(|key| e[*key].as_str().is_some_and(|p| is_under(p, UNWATCHED_DIR)))
    };
    let unwatched: Vec<&Value> = of_kind("file").filter(touches_unwatched).collect();
    if !unwatched.is_empty() {
        failures.push(format!("file events under {UNWATCHED_DIR}, which is not watched:\n{}", quote_events(unwatched)));
    }

    // `dummy` loaded then removed after the integrity scenario (init.sh, MODULES).
    for op in ["load", "unload"] {
        if !of_kind("module").any(|e| e["op"] == op && e["module"] == "dummy") {
            failures
                .push(format!("no module event {op} of dummy; module events:\n{}", quote_events(of_kind("module"))));
        }
    }
    for change in ["added", "removed"] {
        let alerted = of_kind("integrity")
            .any(|e| e["collector"] == "kernel_modules" && e["id"] == "module:dummy" && e["change"] == change);
        if !alerted {
            failures.push(format!(
                "no integrity alert {change} for module:dummy (kernel_modules runs every hour here: only the \
                 module tracepoints explain one); kernel_modules alerts:\n{}",
                quote_events(of_kind("integrity").filter(|e| e["collector"] == "kernel_modules"))
            ));
        }
    }

    let is_port = |v: &Value| v.as_u64() == Some(CONNECT_PORT) || v.as_str() == Some(&CONNECT_PORT.to_string());
    if !of_kind("connect").any(|e| e["direction"] == "out" && is_port(&e["dport"])) {
        failures.push(format!(
            "no connect event with direction \"out\" and dport {CONNECT_PORT}; connect events:\n{}",
            quote_events(of_kind("connect"))
        ));
    }
}

/// The lines strictly between `===<name>===` and the next `===END===`, or `None` when the
/// start marker is missing.
pub(crate) fn section(console: &str, name: &str) -> Option<String> {
    let start = format!("==={name}===");
    let mut lines = console.lines().skip_while(|line| line.trim() != start);
    lines.next()?;
    let body: Vec<&str> = lines.take_while(|line| line.trim() != "===END===").collect();
    Some(body.join("\n"))
}

/// Whether `path` is `dir` or inside it.
fn is_under(path: &str, dir: &str) -> bool {
    path.strip_prefix(dir).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Up to 20 events, one per indented line, or "(none)".
fn quote_events<'a>(events: impl IntoIterator<Item = &'a Value>) -> String {
    let lines: Vec<String> = events.into_iter().map(Value::to_string).collect();
    if lines.is_empty() { "    (none)".to_owned() } else { quote(&lines.join("\n"), 20) }
}

/// The first `max` lines of `text`, indented, with a note of how many were left out, or
/// "(empty)".
fn quote(text: &str, max: usize) -> String {
    if text.trim().is_empty() {
        return "    (empty)".to_owned();
    }
    let lines: Vec<&str> = text.lines().collect();
    let mut out: Vec<String> = lines.iter().take(max).map(|l| indent(l)).collect();
    if lines.len() > max {
        out.push(format!("    ... ({} more lines)", lines.len() - max));
    }
    out.join("\n")
}

/// The last `n` lines of `text`, indented.
pub(crate) fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].iter().map(|l| indent(l)).collect::<Vec<_>>().join("\n")
}

/// One quoted line: indented, cut after [`QUOTE_WIDTH`] characters (console.log has it all).
fn indent(line: &str) -> String {
    match line.char_indices().nth(QUOTE_WIDTH) {
        Some((cut, _)) => format!("    {} [...]", &line[..cut]),
        None => format!("    {line}"),
    }
}

// ---------------------------------------------------------------------------------------
// Commands

/// Runs `command`, failing with its name and exit status unless it succeeds.
fn run_checked(command: &mut Command) -> Result<()> {
    let status = command.status().with_context(|| format!("running {}", describe(command)))?;
    if !status.success() {
        bail!("{} failed ({status})", describe(command));
    }
    Ok(())
}

/// Runs `command` and returns its standard output, failing with its stderr unless it
/// succeeds.
fn output_of(command: &mut Command) -> Result<String> {
    let output = command.output().with_context(|| format!("running {}", describe(command)))?;
    if !output.status.success() {
        bail!("{} failed ({}): {}", describe(command), output.status, String::from_utf8_lossy(&output.stderr).trim());
    }
    String::from_utf8(output.stdout).with_context(|| format!("{} printed non-UTF-8 output", describe(command)))
}

/// `program arg1 arg2 ...` for error messages.
fn describe(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|part| part.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"boot noise
===KERNEL 6.1.0-56-amd64 LSM lockdown,capability,landlock,bpf===
===STATUS===
{
  "signals": [
    {"signal": "exec", "hook": "lsm:bprm_committed_creds", "received": 3, "lost": 0},
    {"signal": "file", "hook": "lsm+fentry", "received": 9, "lost": 0},
    {"signal": "connect", "hook": "lsm:socket_connect", "received": 1, "lost": 0},
    {"signal": "incoming", "hook": "xdp", "received": 0, "lost": 0}
  ],
  "errors": {"exec_lsm": 0, "file_open_lsm": 0, "file_vfs_write": 0}
}
===END===
===INTEGRITY-READY after 0.25s===
===INTEGRITY-BASELINE===
{"ok": true, "items": 52, "aggregate": "00aa", "source": "daemon"}
===END===
vm: integrity loop 1 seed 1763692801
===INTEGRITY-CHURNED uptime 3.10 -> 7.55===
===INTEGRITY-CLEAN after 0.50s===
===INTEGRITY-STATUS===
{
  "aggregate": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
  "integrity": {"ready": true, "dirty": 0, "items": 60, "alerts": 10},
  "errors": {"exec_lsm": 0, "file_open_lsm": 0, "file_vfs_write": 0}
}
===END===
===INTEGRITY-HASH===
{
  "aggregate": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
  "hostname": "(none)",
  "collectors": {}
}
===END===
===INTEGRITY-DIFF===
{
  "added": [{"collector": "file_contents", "id": "file:/tmp/integrity/w1/done"}],
  "removed": [],
  "changed": [{"collector": "file_contents", "id": "file:/tmp/integrity/w1/f0", "attributes": ["content"]}]
}
===END===
===INTEGRITY-STDERR===
===END===
===EVENTS===
{"kind":"exec","pid":50,"filename":"/bin/true","argv":["/bin/true","vmarg1","vmarg2"],"process":{"pid":50,"exe":"/bin/busybox","ancestors":[{"pid":1,"comm":"init"}]}}
{"kind":"file","op":"create","path":"/tmp/watched/a"}
{"kind":"file","op":"write","path":"/tmp/watched/a"}
{"kind":"file","op":"attrib","path":"/tmp/watched/a"}
{"kind":"file","op":"rename","path":"/tmp/watched/a","new_path":"/tmp/watched/b"}
{"kind":"file","op":"unlink","path":"/tmp/watched/b"}
{"kind":"connect","direction":"out","protocol":"tcp","daddr":"127.0.0.1","dport":9}
{"kind":"integrity","collector":"file_contents","id":"file:/tmp/integrity/w1/f0","change":"changed","attributes":["content"],"changed_by":[{"operation":"write","process":{"pid":60}}]}
{"kind":"integrity","collector":"file_metadata","id":"meta:/tmp/integrity/w1/f0","change":"changed","attributes":["size"]}
{"kind":"integrity","collector":"file_contents","id":"file:/tmp/integrity/w1/done","change":"added"}
{"kind":"integrity","collector":"file_metadata","id":"meta:/tmp/integrity/w1/done","change":"added"}
{"kind":"integrity","collector":"file_contents","id":"file:/tmp/integrity/w2/done","change":"added"}
{"kind":"integrity","collector":"file_metadata","id":"meta:/tmp/integrity/w2/done","change":"added"}
{"kind":"integrity","collector":"file_contents","id":"file:/tmp/integrity/w3/done","change":"added"}
{"kind":"integrity","collector":"file_metadata","id":"meta:/tmp/integrity/w3/done","change":"added"}
{"kind":"integrity","collector":"file_contents","id":"file:/tmp/integrity/w4/done","change":"added"}
{"kind":"integrity","collector":"file_metadata","id":"meta:/tmp/integrity/w4/done","change":"added"}
{"kind":"module","op":"load","module":"dummy"}
{"kind":"integrity","collector":"kernel_modules","id":"module:dummy","change":"added"}
{"kind":"module","op":"unload","module":"dummy"}
{"kind":"integrity","collector":"kernel_modules","id":"module:dummy","change":"removed"}

===END===
===EXIT 0===
===DAEMON-LOG===
INFO started
===END===
"#;

    #[test]
    fn accepts_a_good_run() {
        let summary = check_console(GOOD).unwrap();
        assert!(summary.contains("file=lsm+fentry"), "{summary}");
        assert!(summary.contains("21 events"), "{summary}");
        assert!(summary.contains("12 alerts, 2 items in the diff"), "{summary}");
    }

    #[test]
    fn fails_when_events_and_alerts_do_not_name_the_process() {
        let bad = GOOD
            .replace(r#","process":{"pid":50,"exe":"/bin/busybox","ancestors":[{"pid":1,"comm":"init"}]}"#, "")
            .replace(r#","changed_by":[{"operation":"write","process":{"pid":60}}]"#, "");
        let message = format!("{:#}", check_console(&bad).unwrap_err());
        assert!(message.contains("2 expectation(s) failed"), "{message}");
        assert!(message.contains("no process object"), "{message}");
        assert!(message.contains("changed_by"), "{message}");
    }

    #[test]
    fn fails_when_the_module_is_not_followed() {
        let without_removal = GOOD.replace(
            "{\"kind\":\"integrity\",\"collector\":\"kernel_modules\",\"id\":\"module:dummy\",\"change\":\"removed\"}\n",
            "",
        );
        let error = check_console(&without_removal).unwrap_err().to_string();
        assert!(error.contains("no integrity alert removed for module:dummy"), "{error}");
        let without_events = GOOD.replace("{\"kind\":\"module\",\"op\":\"load\",\"module\":\"dummy\"}\n", "");
        let error = check_console(&without_events).unwrap_err().to_string();
        assert!(error.contains("no module event load of dummy"), "{error}");
    }

    #[test]
    fn fails_when_the_daemon_aggregate_differs_from_a_fresh_hash() {
        let bad = GOOD.replacen(
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
            "1111111111111111111111111111111111111111111111111111111111111111",
            1,
        );
        let message = format!("{:#}", check_console(&bad).unwrap_err());
        assert!(message.contains("1 expectation(s) failed"), "{message}");
        assert!(message.contains("differs from a fresh `ids hash`"), "{message}");
    }

    #[test]
    fn fails_without_the_integrity_sections_or_when_still_dirty() {
        let without_hash = GOOD.replace("===INTEGRITY-HASH===", "===SOMETHING-ELSE===");
        let message = format!("{:#}", check_console(&without_hash).unwrap_err());
        assert!(message.contains("no ===INTEGRITY-HASH=== section"), "{message}");

        let dirty = GOOD
            .replace("\"dirty\": 0", "\"dirty\": 3")
            .replace("===INTEGRITY-CLEAN after 0.50s===", "===INTEGRITY-NOT-CLEAN after 30s===");
        let message = format!("{:#}", check_console(&dirty).unwrap_err());
        assert!(message.contains("did not reach 0"), "{message}");
        assert!(message.contains("integrity.dirty is not 0"), "{message}");
    }

    #[test]
    fn fails_when_a_file_hook_is_not_fentry_or_an_alert_is_missing() {
        let bad = GOOD
            .replace("\"lsm+fentry\"", "\"lsm:file_open\"")
            .replace(
                r#"{"kind":"integrity","collector":"file_contents","id":"file:/tmp/integrity/w1/f0","change":"changed","attributes":["content"],"changed_by":[{"operation":"write","process":{"pid":60}}]}"#,
                r#"{"kind":"sensor_miss","collector":"file_contents","id":"file:/tmp/integrity/w1/f0","change":"changed","attributes":["content"]}"#,
            )
            .replace("meta:/tmp/integrity/w3/done", "meta:/etc/w3/done");
        let message = format!("{:#}", check_console(&bad).unwrap_err());
        // The alert turned sensor_miss also leaves the tree without a changed_by.
        assert!(message.contains("5 expectation(s) failed"), "{message}");
        assert!(message.contains("expected the LSM+fentry set"), "{message}");
        assert!(message.contains("sensor_miss alerts"), "{message}");
        assert!(message.contains("outside /tmp/integrity"), "{message}");
        assert!(
            message.contains("file:/tmp/integrity/w1/f0, meta:/tmp/integrity/w3/done")
                || message.contains("meta:/tmp/integrity/w3/done, file:/tmp/integrity/w1/f0"),
            "{message}"
        );
    }

    #[test]
    fn reports_every_failure() {
        let bad = GOOD
            .replace("lsm:socket_connect", "tracepoint:sock:inet_sock_set_state")
            .replace(
                r#"{"kind":"file","op":"attrib","path":"/tmp/watched/a"}"#,
                r#"{"kind":"file","op":"attrib","path":"/tmp/unwatched/a"}"#,
            )
            .replace("===EXIT 0===", "===EXIT 137===");
        let message = format!("{:#}", check_console(&bad).unwrap_err());
        assert!(message.contains("4 expectation(s) failed"), "{message}");
        assert!(message.contains("signal `connect` uses hook `tracepoint"), "{message}");
        assert!(message.contains("op(s) attrib"), "{message}");
        assert!(message.contains("/tmp/unwatched/a"), "{message}");
        assert!(message.contains("exited with 137"), "{message}");
    }

    #[test]
    fn fails_when_a_program_counted_errors_or_the_count_is_missing() {
        let counted = GOOD.replacen("\"file_open_lsm\": 0", "\"file_open_lsm\": 2", 1);
        let message = format!("{:#}", check_console(&counted).unwrap_err());
        assert!(message.contains("1 expectation(s) failed"), "{message}");
        assert!(message.contains("counted errors in ===STATUS===: file_open_lsm 2"), "{message}");

        let without =
            GOOD.replace(",\n  \"errors\": {\"exec_lsm\": 0, \"file_open_lsm\": 0, \"file_vfs_write\": 0}", "");
        let message = format!("{:#}", check_console(&without).unwrap_err());
        assert!(message.contains("2 expectation(s) failed"), "{message}");
        assert!(message.contains("===INTEGRITY-STATUS=== status has no `errors` object"), "{message}");
    }

    #[test]
    fn reports_missing_markers_with_the_console_tail() {
        let message = format!("{:#}", check_console("Kernel panic - not syncing: no init found").unwrap_err());
        assert!(message.contains("Kernel panic"), "{message}");
    }

    #[test]
    fn strips_terminal_codes() {
        assert_eq!(strip_terminal_codes("\u{1b}c\u{1b}[?7l\u{1b}[2J\u{1b}[0mSeaBIOS\r\n===X==="), "SeaBIOS\n===X===");
    }

    #[test]
    fn paths_under_a_directory() {
        assert!(is_under("/tmp/watched/a", "/tmp/watched"));
        assert!(is_under("/tmp/watched", "/tmp/watched"));
        assert!(!is_under("/tmp/watchedx/a", "/tmp/watched"));
    }
}
