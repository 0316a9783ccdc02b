//! `cargo xtask bench sensor-vm`: the sensor bench's six workloads on Debian's stock kernel under
//! QEMU (the VM of `cargo xtask vm-test`), where the sensor runs on its LSM and fentry hooks
//! rather than the tracepoints of the development machines' kernel.
//!
//! One boot runs [`ROUNDS`] rounds; each round times every workload without a sensor, then starts
//! `ids run` (the embedded default configuration with `/tmp/watched` added to `watch`), waits
//! until it is ready and times them again, then stops it. The guest side is
//! `xtask/vm/bench_sensor.sh`, which runs this binary's hidden `guest-workloads` command
//! ([`super::sensor::guest_workloads`]) with the host bench's iterations divided by [`DIVISOR`].
//!
//! TCG emulates every instruction, so absolute times are far from a real machine's and only the
//! ratios within the boot mean anything; the section says so.
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};

use super::sensor::Workload;
use super::{Machine, append_to_benchmarks, build_release, load_average, median, utc_timestamp};
use crate::vm::{self, Scenario};

const INIT_SCRIPT: &str = include_str!("../../vm/bench_sensor.sh");
/// Keep in step with `ROUNDS` and `DIVISOR` in `bench_sensor.sh`.
const ROUNDS: usize = 5;
const DIVISOR: u64 = 20;
/// Rounds under TCG: the daemon's start (programs loaded and verified, the first scan) dominates.
const BOOT_TIMEOUT: Duration = Duration::from_secs(1800);
/// Targets of the sensor overhead issue for the LSM/fentry path: the sensor's time over the
/// time without it.
const TARGETS: &[(Workload, f64)] = &[(Workload::OpenWriteClose, 1.05), (Workload::TcpConnect, 1.05)];

const COLUMNS: [&str; 2] = ["none", "ids"];

/// Nanoseconds per operation: workload → column → one figure per round.
type Figures = BTreeMap<&'static str, BTreeMap<&'static str, Vec<f64>>>;

pub(super) fn bench_sensor_vm(root: &Path) -> anyhow::Result<()> {
    let ids = build_release(root)?;
    let machine = Machine::describe(&ids)?;
    let xtask = std::env::current_exe().context("finding the running xtask binary")?;
    let scenario = Scenario {
        init_script: INIT_SCRIPT,
        binaries: &[&xtask],
        timeout: BOOT_TIMEOUT,
        console_log: "bench-sensor.log",
    };
    let booted = vm::boot_scenario(root, &scenario)?;
    let parsed = parse_console(&booted.console)
        .with_context(|| format!("reading the bench's console ({})", booted.console_log.display()))?;
    let section = render(&machine, &load_average(), &booted.kernel_package, &parsed);
    append_to_benchmarks(&root.join("BENCHMARKS.md"), &section)?;
    print!("{section}");
    eprintln!("bench: appended to {}", root.join("BENCHMARKS.md").display());
    Ok(())
}

#[derive(Debug)]
struct Parsed {
    kernel_line: String,
    hooks: Vec<String>,
    figures: Figures,
}

fn parse_console(console: &str) -> anyhow::Result<Parsed> {
    if let Some(line) = console.lines().map(str::trim).find(|l| l.starts_with("===NOT READY")) {
        bail!(
            "the daemon did not become ready in the VM ({line}); its log:\n{}",
            vm::section(console, "DAEMON-LOG").unwrap_or_default()
        );
    }
    ensure!(
        console.lines().any(|l| l.trim() == "===DONE==="),
        "the VM did not finish its rounds; last console lines:\n{}",
        vm::tail(console, 30)
    );
    let kernel_line = console
        .lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix("===KERNEL ")?.strip_suffix("==="))
        .unwrap_or("unknown kernel")
        .to_string();
    let status: serde_json::Value = serde_json::from_str(&vm::section(console, "STATUS").unwrap_or_default())
        .context("the ===STATUS=== section is not `ids status --json`")?;
    let hooks = super::status_hooks(&status);
    let mut figures = Figures::new();
    for round in 1..=ROUNDS {
        for column in COLUMNS {
            let name = format!("ROUND {round} {column}");
            let body = vm::section(console, &name).with_context(|| format!("no ==={name}=== section"))?;
            for workload in Workload::ALL {
                let ns = body
                    .lines()
                    .find_map(|l| {
                        l.trim().strip_prefix("workload ")?.strip_prefix(workload.key())?.trim().parse::<f64>().ok()
                    })
                    .with_context(|| format!("no `workload {}` line in ==={name}===:\n{body}", workload.key()))?;
                figures.entry(workload.key()).or_default().entry(column).or_default().push(ns);
            }
        }
    }
    for round in 1..=ROUNDS {
        let exit = console.lines().find_map(|l| {
            l.trim().strip_prefix(&format!("===EXIT round {round} "))?.strip_suffix("===").map(str::to_owned)
        });
        ensure!(exit.as_deref() == Some("0"), "the daemon of round {round} exited with {exit:?}, expected 0");
    }
    Ok(Parsed { kernel_line, hooks, figures })
}

fn spread(values: &[f64]) -> String {
    let (lo, hi) = values.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| (lo.min(x), hi.max(x)));
    format!("{:.0} ({lo:.0}–{hi:.0})", median(values))
}

fn render(machine: &Machine, load_after: &str, kernel_package: &str, parsed: &Parsed) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "\n## {} — sensor-vm\n", utc_timestamp());
    let _ = writeln!(s, "- Command: `cargo xtask bench sensor-vm` (release build)");
    let _ = writeln!(
        s,
        "- Host: Linux {}, {}, {} cores; load average {} before, {} after",
        machine.kernel, machine.cpu, machine.cores, machine.load_before, load_after
    );
    let _ = writeln!(
        s,
        "- Guest: `{kernel_package}` ({}) under QEMU TCG (`-smp 2`, 1 GiB), busybox initramfs; {}",
        parsed.kernel_line, machine.ids_version
    );
    let _ = writeln!(s, "- Sensor hooks in the guest: {}", parsed.hooks.join(", "));
    let _ = writeln!(
        s,
        "- {ROUNDS} rounds in one boot; each times every workload without a sensor, then under `ids run` (the \
         embedded default configuration, its watch set plus the watched file's directory), the host bench's \
         iterations divided by {DIVISOR}. TCG emulates every instruction: absolute times are not a real \
         machine's, only the ratio within the boot is the sensor's cost. Median ns/op, min–max in brackets.\n"
    );
    let _ = writeln!(s, "| workload | ops | no sensor | ids run (default config) | ids / no sensor | target |");
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---|");
    for workload in Workload::ALL {
        let (none, with) = (&parsed.figures[workload.key()]["none"], &parsed.figures[workload.key()]["ids"]);
        let ratio = median(with) / median(none);
        let target = TARGETS
            .iter()
            .find(|(w, _)| *w == workload)
            .map_or_else(String::new, |(_, t)| format!("≤ {t:.2} {}", if ratio <= *t { "met" } else { "**not met**" }));
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {ratio:.2} | {target} |",
            workload.label(),
            super::thousands((workload.iterations() / DIVISOR).max(1)),
            spread(none),
            spread(with)
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn console(rounds: usize, exit: &str) -> String {
        let mut text = String::from("booting\n===KERNEL 6.1.0-57-amd64 LSM lockdown,bpf===\n");
        text.push_str(
            "===STATUS===\n{\"signals\": [{\"signal\": \"file\", \"hook\": \"lsm:file_open\"}]}\n===END===\n",
        );
        for round in 1..=rounds {
            for (column, scale) in [("none", 1.0), ("ids", 2.0)] {
                text.push_str(&format!("===ROUND {round} {column}===\r\n"));
                for (index, workload) in Workload::ALL.iter().enumerate() {
                    text.push_str(&format!("workload {} {:.1}\r\n", workload.key(), scale * (index + round) as f64));
                }
                text.push_str("===END===\n");
            }
            text.push_str(&format!("===EXIT round {round} {exit}===\n"));
        }
        text.push_str("===DONE===\n");
        text
    }

    #[test]
    fn every_round_and_column_is_read_and_the_ratios_follow() {
        let parsed = parse_console(&console(ROUNDS, "0")).unwrap();
        assert_eq!(parsed.kernel_line, "6.1.0-57-amd64 LSM lockdown,bpf");
        assert_eq!(parsed.hooks, ["file lsm:file_open"]);
        let getpid = &parsed.figures["getpid"];
        assert_eq!(getpid["none"], [6.0, 7.0, 8.0, 9.0, 10.0]);
        assert_eq!(median(&getpid["ids"]) / median(&getpid["none"]), 2.0);
    }

    #[test]
    fn a_missing_round_or_a_failed_daemon_is_an_error() {
        let short = console(ROUNDS - 1, "0");
        assert!(parse_console(&short).unwrap_err().to_string().contains(&format!("ROUND {ROUNDS} none")));
        assert!(parse_console(&console(ROUNDS, "1")).is_err());
        let not_ready = "===NOT READY round 1 after 180s===\n===DAEMON-LOG===\nno BTF\n===END===\n===DONE===\n";
        assert!(format!("{:#}", parse_console(not_ready).unwrap_err()).contains("no BTF"));
    }
}
