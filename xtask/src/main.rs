//! `cargo xtask`: setup, build, run, test, package, vm-test and bench for the `ids` workspace.
//! Installs what a fresh machine lacks (rust-src for nightly, bpf-linker 0.10.4, Debian packages)
//! before it builds.
mod bench;
mod fuzz;
mod modules;
mod package;
mod vm;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

/// bpf-linker 0.10.x links with rustc's own LLVM; 0.11 needs a system LLVM 23 these machines lack.
const BPF_LINKER_VERSION: &str = "0.10.4";
/// cargo-deny 0.20 and cargo-fuzz 0.13 are the newest releases that build with the stable toolchain
/// here and read this repository's deny.toml and fuzz/ layout.
const CARGO_DENY_VERSION: &str = "~0.20";
const CARGO_FUZZ_VERSION: &str = "~0.13";
/// Debian packages the tests and benches use: ip/netns/veth, ping (ICMP through the ban filter),
/// the VM tier, bash's /dev/tcp in namespaces, the XDP bench's peers (nftables, ipset, iptables)
/// and GRO switch (ethtool), fail2ban for `fail2ban-regex`, the peer of the detect bench, and
/// systemd for journalctl and the private systemd-journald of the journal test (bsdutils for logger),
/// rabbitmq-server for the broker the fleet tests run as a plain process of their own, postgresql
/// for the collector's PostgreSQL store (a test instance per test, initdb'd on its own port), and
/// python3-pika for the fleet bench's DIDS-style peer that publishes to the broker like a foreign sensor,
/// and openssh-server (sshd and its PAM session, never the service: apt's policy keeps it stopped
/// here) for the process test's login through a private sshd.
const DEBIAN_PACKAGES: &[&str] = &[
    "iproute2",
    "iputils-ping",
    "qemu-system-x86",
    "busybox-static",
    "cpio",
    "xz-utils",
    "nftables",
    "ipset",
    "iptables",
    "ethtool",
    "fail2ban",
    "systemd",
    "bsdutils",
    "rabbitmq-server",
    "postgresql",
    "python3-pika",
    "openssh-server",
    // The package (`cargo xtask package`) and its test: dpkg-shlibdeps for its Depends, man-db and
    // groff to render its man pages, procps for the unit's /bin/kill, zsh and fish to parse the
    // completions shipped for them.
    "dpkg-dev",
    "man-db",
    "procps",
    "zsh",
    "fish",
    // For promtool alone: the metrics test checks the endpoint's exposition with it. Nothing uses
    // the prometheus service; where apt starts it, `systemctl disable --now prometheus`.
    "prometheus",
    // The console test's HTTPS client (curl, checking the console's certificate against the
    // test's CA) and the console bench's floor (the same SQL in the sqlite3 shell).
    "curl",
    "sqlite3",
    // The console's browser test: headless Chromium driven through chromedriver (WebDriver).
    "chromium",
    "chromium-driver",
    // The sensor bench's peer: auditd with watch rules on the sensor's watch set.
    "auditd",
];

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the toolchain pieces and packages a fresh machine lacks.
    Setup,
    /// Build the `ids` binary (release), eBPF programs included.
    Build,
    /// Set up, build, and run the sensor as root; extra arguments go to `ids run`.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Formatting and clippy (`-D warnings`) on the host crates and on the eBPF crate for its target.
    Lint,
    /// Every test tier: unit, host integration (root), the VM tier, then every fuzz target.
    Test,
    /// Build the binary, then the Debian package target/debian/ids_<version>_<arch>.deb.
    Package,
    /// The VM tier alone: Debian's stock kernel under QEMU with LSM and fentry hooks.
    VmTest,
    /// Benchmarks; figures are appended to BENCHMARKS.md.
    Bench { area: String },
    /// Inside the `bench sensor-vm` guest: time the sensor bench's workloads once and print them.
    #[command(hide = true)]
    GuestWorkloads {
        #[arg(long)]
        watched: PathBuf,
        #[arg(long)]
        unwatched: PathBuf,
        #[arg(long, default_value_t = 1)]
        divisor: u64,
    },
    /// Run every fuzz target (fuzz/) for `--time` seconds each; fails on a crash.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 30)]
        time: u64,
        /// Only these targets (default: all).
        targets: Vec<String>,
    },
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let root = workspace_root();
    match Cli::parse().command {
        Task::Setup => setup(),
        Task::Build => {
            setup()?;
            build(&root)
        }
        Task::Run { args } => {
            setup()?;
            build(&root)?;
            let ids = root.join("target/release/ids");
            let mut command = Command::new(&ids);
            command.arg("run").args(&args);
            status(&mut command)
        }
        Task::Lint => {
            setup()?;
            lint(&root)
        }
        Task::Test => {
            setup()?;
            build(&root)?;
            // The package test (tests/tests/package.rs) installs this package into a scratch root.
            package::build(&root)?;
            // Release profile: shares the build (and its eBPF object) with the binary the tests start.
            status(Command::new("cargo").current_dir(&root).args([
                "test",
                "--release",
                "-p",
                "ids-common",
                "-p",
                "ids-user",
                "-p",
                "xtask",
            ]))?;
            status(Command::new("cargo").current_dir(&root).env("IDS_BIN", root.join("target/release/ids")).args([
                "test",
                "--release",
                "-p",
                "ids-tests",
                "--",
                "--test-threads=1",
            ]))?;
            vm::run(&root)?;
            fuzz::run(&root, FUZZ_SECONDS_IN_TEST, &[])
        }
        Task::Package => {
            setup()?;
            build(&root)?;
            package::build(&root).map(drop)
        }
        Task::VmTest => {
            setup()?;
            vm::run(&root)
        }
        Task::Bench { area } => {
            setup()?;
            bench::run(&root, &area)
        }
        Task::GuestWorkloads { watched, unwatched, divisor } => bench::guest_workloads(&watched, &unwatched, divisor),
        Task::Fuzz { time, targets } => {
            setup()?;
            fuzz::run(&root, time, &targets)
        }
    }
}

/// Seconds per fuzz target in `cargo xtask test`: 8 targets keep the fuzz tier near 4 minutes,
/// plus its build.
const FUZZ_SECONDS_IN_TEST: u64 = 30;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}

fn status(command: &mut Command) -> Result<()> {
    let status = command.status().with_context(|| format!("starting {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed: {status}");
    }
    Ok(())
}

fn output_of(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn setup() -> Result<()> {
    let installed =
        output_of("rustup", &["component", "list", "--toolchain", "nightly", "--installed"]).unwrap_or_default();
    if !installed.lines().any(|l| l.starts_with("rust-src")) {
        eprintln!("xtask: adding rust-src to the nightly toolchain");
        status(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))?;
    }
    for (toolchain, component) in [("stable", "clippy"), ("stable", "rustfmt"), ("nightly", "clippy")] {
        let installed =
            output_of("rustup", &["component", "list", "--toolchain", toolchain, "--installed"]).unwrap_or_default();
        if !installed.lines().any(|l| l.starts_with(component)) {
            eprintln!("xtask: adding {component} to the {toolchain} toolchain");
            status(Command::new("rustup").args(["component", "add", component, "--toolchain", toolchain]))?;
        }
    }
    let linker = output_of("bpf-linker", &["--version"]).unwrap_or_default();
    if !linker.contains(BPF_LINKER_VERSION) {
        eprintln!("xtask: installing bpf-linker {BPF_LINKER_VERSION}");
        status(Command::new("cargo").args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--locked",
            "--force",
        ]))?;
    }
    for (tool, version) in [("cargo-deny", CARGO_DENY_VERSION), ("cargo-fuzz", CARGO_FUZZ_VERSION)] {
        // `cargo-deny --version` prints "cargo-deny 0.20.2"; `cargo-fuzz --version` "cargo-fuzz 0.13.1".
        let found = output_of(tool, &["--version"]).unwrap_or_default();
        let wanted = format!("{tool} {}.", version.trim_start_matches('~'));
        if !found.starts_with(&wanted) {
            eprintln!("xtask: installing {tool} {version}");
            status(Command::new("cargo").args(["install", tool, "--version", version, "--locked", "--force"]))?;
        }
    }
    let missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            !output_of("dpkg-query", &["-W", "-f=${Status}", p]).is_some_and(|s| s.contains("install ok installed"))
        })
        .collect();
    if !missing.is_empty() {
        eprintln!("xtask: installing Debian packages {}", missing.join(" "));
        status(Command::new("apt-get").arg("update").arg("-q"))?;
        status(
            Command::new("apt-get")
                .env("DEBIAN_FRONTEND", "noninteractive")
                .args(["install", "-y", "-q"])
                .args(&missing),
        )?;
    }
    Ok(())
}

/// `cargo fmt --check` (the fuzz crate too), no import cycle between ids-user's top-level
/// modules, clippy on the host crates (every target, warnings denied; ids-user once more with its
/// `fuzzing` feature), clippy on ids-ebpf built for `bpfel-unknown-none` with the nightly toolchain,
/// as its build does, and cargo-deny (licenses, duplicates, sources, advisories) offline.
fn lint(root: &Path) -> Result<()> {
    status(Command::new("cargo").current_dir(root).args(["fmt", "--all", "--check"]))?;
    status(Command::new("cargo").current_dir(root.join("fuzz")).args(["fmt", "--all", "--check"]))?;
    modules::check(root)?;
    status(Command::new("cargo").current_dir(root).args([
        "clippy",
        "--workspace",
        "--exclude",
        "ids-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // `ids::fuzzing` exists only with the feature, which the build above leaves off.
    status(Command::new("cargo").current_dir(root).args([
        "clippy",
        "-p",
        "ids-user",
        "--features",
        "fuzzing",
        "--lib",
        "--",
        "-D",
        "warnings",
    ]))?;
    status(
        Command::new("cargo")
            .current_dir(root.join("ids-ebpf"))
            // The toolchain is chosen here, not by the environment xtask runs in.
            .env_remove("RUSTUP_TOOLCHAIN")
            .env_remove("CARGO")
            .env_remove("RUSTC")
            // As aya-build compiles it (the registers of the target architecture).
            .env("CARGO_ENCODED_RUSTFLAGS", format!("--cfg=bpf_target_arch=\"{}\"", std::env::consts::ARCH))
            .env("CARGO_TARGET_DIR", root.join("target/lint-ebpf"))
            .args([
                "+nightly",
                "clippy",
                "--release",
                "--target",
                "bpfel-unknown-none",
                "-Z",
                "build-std=core",
                "--",
                "-D",
                "warnings",
            ]),
    )?;
    deny(root)
}

/// The RustSec database as a git bundle beside the repository (`<root>/../shared/`): these
/// machines cannot fetch it from its usual place.
const ADVISORY_BUNDLE: &str = "../shared/advisory-db.bundle";
/// The same bundle by its absolute path on these machines.
const SHARED_ADVISORY_BUNDLE: &str = "/work/shared/advisory-db.bundle";
/// Where deny.toml's `db-path` points, relative to the workspace root.
const ADVISORY_DBS: &str = "target/advisory-db";
/// The directory cargo-deny 0.20 opens under `db-path` for the default database URL
/// (https://github.com/RustSec/advisory-db): its last path segment and a hash of the URL.
const ADVISORY_DB_DIR: &str = "advisory-db-3157b0e258782691";

/// cargo-deny on the workspace with the advisory database cloned (or updated) from the bundle and
/// no fetch. Fetching from the bundle also sets the copy's fetch time, which is what cargo-deny's
/// staleness check reads: the database's own date is printed so that an old bundle shows.
fn deny(root: &Path) -> Result<()> {
    // Beside the repository, or where IDS_ADVISORY_BUNDLE says, or in this workplace's shared
    // folder (a clone made elsewhere, in /tmp say, has no ../shared).
    let candidates: Vec<PathBuf> = std::env::var_os("IDS_ADVISORY_BUNDLE")
        .map(PathBuf::from)
        .into_iter()
        .chain([root.join(ADVISORY_BUNDLE), PathBuf::from(SHARED_ADVISORY_BUNDLE)])
        .collect();
    let Some(bundle) = candidates.iter().find(|path| path.is_file()).cloned() else {
        let tried: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
        bail!("the advisory database bundle is missing (looked at {})", tried.join(", "));
    };
    let db = root.join(ADVISORY_DBS).join(ADVISORY_DB_DIR);
    if db.join(".git").is_dir() {
        status(Command::new("git").arg("-C").arg(&db).args(["fetch", "-q"]).arg(&bundle).arg("main"))?;
        status(Command::new("git").arg("-C").arg(&db).args(["reset", "-q", "--hard", "FETCH_HEAD"]))?;
    } else {
        std::fs::create_dir_all(root.join(ADVISORY_DBS))?;
        status(Command::new("git").args(["clone", "-q", "--branch", "main"]).arg(&bundle).arg(&db))?;
    }
    let date = output_of("git", &["-C", &db.to_string_lossy(), "log", "-1", "--format=%cs %h"]).unwrap_or_default();
    eprintln!("xtask: advisory database as of {}", date.trim());
    // cargo-deny reads the metadata of every platform's dependencies (deny.toml's targets) and
    // runs frozen: download what a new dependency brought before it looks.
    status(Command::new("cargo").current_dir(root).args(["fetch", "--locked"]))?;
    status(Command::new("cargo").current_dir(root).args(["deny", "--frozen", "check"]))
}

fn build(root: &Path) -> Result<()> {
    status(Command::new("cargo").current_dir(root).args(["build", "--release", "-p", "ids-user"]))
}
