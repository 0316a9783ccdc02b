//! Process-wide counters of file contents hashed, read by `ids hash` to draw its progress line
//! on a terminal. Relaxed atomics: the figures are for people, not for synchronisation.
use std::io::{IsTerminal as _, Write as _};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

static FILES: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

pub fn add_file(bytes: u64) {
    FILES.fetch_add(1, Ordering::Relaxed);
    BYTES.fetch_add(bytes, Ordering::Relaxed);
}

/// Files and bytes hashed so far by this process.
pub fn totals() -> (u64, u64) {
    (FILES.load(Ordering::Relaxed), BYTES.load(Ordering::Relaxed))
}

/// Redraws a progress line on standard error every 200 ms while the returned guard lives,
/// only when standard error is a terminal.
pub struct ProgressLine {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ProgressLine {
    pub fn start() -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::io::stderr().is_terminal().then(|| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let started = std::time::Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(200));
                    let (files, bytes) = totals();
                    let mib = bytes as f64 / (1 << 20) as f64;
                    let rate = mib / started.elapsed().as_secs_f64().max(0.001);
                    eprint!("\r\x1b[Khashing: {files} files, {mib:.0} MiB ({rate:.0} MiB/s)");
                    let _ = std::io::stderr().flush();
                }
                eprint!("\r\x1b[K");
            })
        });
        Self { stop, thread }
    }
}

impl Drop for ProgressLine {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_add_up() {
        let (files, bytes) = totals();
        add_file(10);
        add_file(5);
        let (files_after, bytes_after) = totals();
        assert!(files_after >= files + 2 && bytes_after >= bytes + 15);
    }
}
