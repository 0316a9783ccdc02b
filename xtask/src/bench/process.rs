//! Area `process`: what naming the process of every event costs the daemon. The same `ids run`
//! with `process_context = true` (the default: the process table, the process object on every
//! event) and with `process_context = false`, alternating, [`ROUNDS`] rounds each, on the same
//! workloads: [`FILE_WRITES`] 1-byte writes to a watched file (one `file` event each, all from
//! one process: the cached object is copied into each) and [`EXECS`] runs of `/bin/true` (one
//! `exec` event each, and a new process for the table: fork, exec and exit records, an object
//! built per process). Daemon CPU is the sum of `/proc/<pid>/task/*/schedstat` time on CPU (ns)
//! over the workload until the daemon has drained it, divided by the events it wrote.
use std::fmt::Write as _;
use std::fs::{self, OpenOptions};
use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};

use super::{
    Daemon, Machine, Scratch, append_to_benchmarks, build_release, generate_one_byte_writes, load_average, median,
    thousands, utc_timestamp, wait_for_no_other_sensor,
};

const ROUNDS: usize = 5;
const FILE_WRITES: u64 = 100_000;
const EXECS: u64 = 2_000;
/// The target of the process-context issue: added daemon CPU per event.
const TARGET_ADDED_US: f64 = 1.0;

/// Nanoseconds the daemon's threads have spent on a CPU.
fn cpu_ns(pid: u32) -> anyhow::Result<u64> {
    let mut total = 0;
    for task in fs::read_dir(format!("/proc/{pid}/task")).context("listing the daemon's threads")?.flatten() {
        if let Ok(text) = fs::read_to_string(task.path().join("schedstat")) {
            total += text.split_whitespace().next().and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
        }
    }
    Ok(total)
}

fn events_written(daemon: &Daemon) -> anyhow::Result<u64> {
    daemon.status()?["events_written"].as_u64().context("ids status has no events_written")
}

/// Polls until `events_written` reaches `expected` and stops moving but for the exec of each
/// poll's own `ids status`; returns it.
fn wait_written(daemon: &Daemon, expected: u64) -> anyhow::Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = events_written(daemon)?;
    loop {
        thread::sleep(Duration::from_millis(200));
        let now = events_written(daemon)?;
        if now >= expected && now - last <= 2 {
            return Ok(now);
        }
        ensure!(Instant::now() < deadline, "the daemon wrote {now} events of {expected} within 60 s");
        last = now;
    }
}

/// Daemon CPU µs per event while `workload` runs and the daemon drains what it made.
fn per_event(daemon: &Daemon, expected: u64, workload: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<f64> {
    let before_events = wait_written(daemon, 0)?;
    let before_cpu = cpu_ns(daemon.pid())?;
    workload()?;
    let after_events = wait_written(daemon, before_events + expected)?;
    let after_cpu = cpu_ns(daemon.pid())?;
    let events = after_events - before_events;
    ensure!(events > 0, "no event was written");
    Ok(after_cpu.saturating_sub(before_cpu) as f64 / 1000.0 / events as f64)
}

struct Round {
    file_us: f64,
    exec_us: f64,
}

fn round(ids: &Path, scratch: &Scratch, base_config: &str, enriched: bool) -> anyhow::Result<Round> {
    fs::write(&scratch.config, format!("{base_config}process_context = {enriched}\n"))
        .with_context(|| format!("writing {}", scratch.config.display()))?;
    let daemon = Daemon::start(ids, scratch)?;
    let mut file = OpenOptions::new()
        .append(true)
        .open(&scratch.watched_file)
        .with_context(|| format!("opening {}", scratch.watched_file.display()))?;
    let file_us = per_event(&daemon, FILE_WRITES, || {
        let mut written = 0;
        while written < FILE_WRITES {
            written += generate_one_byte_writes(&mut file, None, Duration::from_millis(50))?.0;
        }
        Ok(())
    })?;
    let exec_us = per_event(&daemon, EXECS, || {
        for _ in 0..EXECS {
            let status = Command::new("/bin/true").status().context("running /bin/true")?;
            ensure!(status.success(), "/bin/true failed");
        }
        Ok(())
    })?;
    daemon.stop()?;
    eprintln!("bench: process_context = {enriched}: file {file_us:.2} µs/event, exec {exec_us:.2} µs/event");
    Ok(Round { file_us, exec_us })
}

pub(super) fn bench_process(root: &Path) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    ensure!(unsafe { libc::geteuid() } == 0, "the process bench needs root (the daemon loads eBPF programs)");
    let ids = build_release(root)?;
    wait_for_no_other_sensor()?;
    let machine = Machine::describe(&ids)?;
    let scratch = Scratch::create()?;
    let base_config = fs::read_to_string(&scratch.config).context("reading the bench config")?;
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        with.push(round(&ids, &scratch, &base_config, true)?);
        without.push(round(&ids, &scratch, &base_config, false)?);
    }
    let med = |rounds: &[Round], f: fn(&Round) -> f64| median(&rounds.iter().map(f).collect::<Vec<_>>());
    let spread = |rounds: &[Round], f: fn(&Round) -> f64| {
        let values: Vec<f64> = rounds.iter().map(f).collect();
        let (lo, hi) = values.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| (lo.min(x), hi.max(x)));
        format!("{:.2} ({lo:.2}–{hi:.2})", median(&values))
    };
    let mut s = String::new();
    let _ = writeln!(s, "\n## {} — process\n", utc_timestamp());
    let _ = writeln!(s, "- Command: `cargo xtask bench process` (release build, as root)");
    let _ = writeln!(
        s,
        "- Machine: Linux {}, {}, {} cores; load average {} before, {} after",
        machine.kernel,
        machine.cpu,
        machine.cores,
        machine.load_before,
        load_average()
    );
    let _ = writeln!(s, "- Sensor: {}", machine.ids_version);
    let _ = writeln!(
        s,
        "- Peer: the same daemon with `process_context = false` (no process table, no process object), \
         alternating with it, {ROUNDS} rounds each; medians, min–max in brackets. Daemon CPU = time on CPU \
         of all its threads (`/proc/<pid>/task/*/schedstat`) from the start of a workload until the daemon \
         has written its events, per event written.\n"
    );
    let _ = writeln!(s, "| workload | events | µs/event, process context | µs/event, without | added | target | |");
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---|");
    for (label, events, f) in [
        ("1-byte writes to a watched file (one process)", FILE_WRITES, (|r: &Round| r.file_us) as fn(&Round) -> f64),
        ("fork + exec `/bin/true` (a new process each)", EXECS, |r: &Round| r.exec_us),
    ] {
        let added = med(&with, f) - med(&without, f);
        let _ = writeln!(
            s,
            "| {label} | {} | {} | {} | {added:+.2} | ≤ {TARGET_ADDED_US:.0} µs | {} |",
            thousands(events),
            spread(&with, f),
            spread(&without, f),
            if added <= TARGET_ADDED_US { "met" } else { "**not met**" }
        );
    }
    append_to_benchmarks(&root.join("BENCHMARKS.md"), &s)?;
    print!("{s}");
    Ok(())
}
