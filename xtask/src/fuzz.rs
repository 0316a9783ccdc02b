//! `cargo xtask fuzz`: every target of the cargo-fuzz crate in `fuzz/` for a fixed time each.
//!
//! The committed seeds (`fuzz/corpus/<target>/`) are only read: libFuzzer writes what it finds to
//! the first corpus directory it is given, so that is a working copy under target/, which later
//! runs start from. Crash inputs land under `target/fuzz/artifacts/<target>/`.
use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, Result, bail};

/// The targets, as named in fuzz/Cargo.toml.
pub const TARGETS: &[&str] = &[
    "tinyids_line",
    "ring_record",
    "config",
    "rules",
    "log_line",
    "journal_entry",
    "control_request",
    "webshell",
    "fleet_message",
];

/// Inputs larger than this are not tried: every parser here reads a line, a record or a file
/// that the daemon bounds well below it, and long inputs slow each execution down.
const MAX_LEN: u32 = 8192;

fn cargo_fuzz(root: &Path) -> Command {
    let mut command = Command::new("cargo");
    command
        .current_dir(root)
        // The toolchain is chosen here (sanitizers need nightly), not by the environment.
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO")
        .env_remove("RUSTC")
        .args(["+nightly", "fuzz"]);
    command
}

pub fn run(root: &Path, seconds: u64, only: &[String]) -> Result<()> {
    let targets: Vec<&str> = if only.is_empty() {
        TARGETS.to_vec()
    } else {
        for name in only {
            if !TARGETS.contains(&name.as_str()) {
                bail!("no fuzz target {name:?}; the targets are {}", TARGETS.join(", "));
            }
        }
        only.iter().map(String::as_str).collect()
    };
    // No separate `cargo fuzz build`: `run` built everything again after it; the first `run`
    // builds the shared dependencies, each later one only its own target.
    let target_dir = root.join("target/fuzz/build");
    let mut crashed = Vec::new();
    for target in targets {
        let work = root.join("target/fuzz/corpus").join(target);
        let artifacts = root.join("target/fuzz/artifacts").join(target);
        std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
        std::fs::create_dir_all(&artifacts).with_context(|| format!("creating {}", artifacts.display()))?;
        eprintln!("xtask: fuzzing {target} for {seconds} s");
        let mut command = cargo_fuzz(root);
        command
            .args(["run", "--fuzz-dir", "fuzz", "--target-dir"])
            .arg(&target_dir)
            .arg(target)
            .arg(&work)
            .arg(root.join("fuzz/corpus").join(target))
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .arg(format!("-max_len={MAX_LEN}"))
            // Totals at the end (executions, speed, peak memory) beside the last status line.
            .arg("-print_final_stats=1")
            .arg(format!("-artifact_prefix={}/", artifacts.display()));
        let status = command.status().with_context(|| format!("starting {command:?}"))?;
        if !status.success() {
            eprintln!("xtask: fuzz target {target} failed ({status}); its inputs are in {}", artifacts.display());
            crashed.push(target);
        }
    }
    if !crashed.is_empty() {
        bail!("fuzz targets failed: {} (inputs under target/fuzz/artifacts/)", crashed.join(", "));
    }
    Ok(())
}
