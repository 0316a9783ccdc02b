//! Sliding windows per (rule, address): `threshold` hits within `window` raise one alert; the
//! burst ends when the address has been quiet for a whole window, and only then can it alert again.
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Lines kept as evidence per window.
pub const MAX_EVIDENCE_LINES: usize = 10;
/// Windows tracked at once; beyond this the ones idle longest are dropped first.
pub const MAX_WINDOWS: usize = 100_000;

#[derive(Debug)]
struct Window {
    hits: VecDeque<Instant>,
    last: Instant,
    alerted: bool,
    evidence: Vec<String>,
}

/// The burst that crossed a threshold.
#[derive(Debug, Clone, PartialEq)]
pub struct Burst {
    pub count: u32,
    pub evidence: Vec<String>,
}

#[derive(Debug, Default)]
pub struct Windows {
    windows: HashMap<(usize, IpAddr), Window>,
}

impl Windows {
    /// Records a hit of `rule` by `addr` at `now`; `Some` when this hit crosses the threshold of
    /// a burst that has not alerted yet. `evidence` is only built when it will be kept.
    pub fn hit(
        &mut self,
        rule: usize,
        addr: IpAddr,
        threshold: u32,
        window: Duration,
        now: Instant,
        evidence: impl FnOnce() -> String,
    ) -> Option<Burst> {
        if self.windows.len() >= MAX_WINDOWS && !self.windows.contains_key(&(rule, addr)) {
            self.prune(now, window);
        }
        let entry = self.windows.entry((rule, addr)).or_insert_with(|| Window {
            hits: VecDeque::new(),
            last: now,
            alerted: false,
            evidence: Vec::new(),
        });
        if now.saturating_duration_since(entry.last) > window {
            entry.alerted = false;
            entry.evidence.clear();
            entry.hits.clear();
        }
        entry.last = now;
        while entry.hits.front().is_some_and(|&t| now.saturating_duration_since(t) > window) {
            entry.hits.pop_front();
        }
        entry.hits.push_back(now);
        // Only the last `threshold` hits can decide anything.
        while entry.hits.len() > threshold as usize {
            entry.hits.pop_front();
        }
        if entry.alerted {
            return None;
        }
        if entry.evidence.len() == MAX_EVIDENCE_LINES {
            entry.evidence.remove(0);
        }
        entry.evidence.push(evidence());
        if entry.hits.len() >= threshold as usize {
            entry.alerted = true;
            return Some(Burst { count: entry.hits.len() as u32, evidence: std::mem::take(&mut entry.evidence) });
        }
        None
    }

    /// Drops windows idle for longer than `idle` (or, if none is, the oldest half).
    pub fn prune(&mut self, now: Instant, idle: Duration) {
        let before = self.windows.len();
        self.windows.retain(|_, w| now.saturating_duration_since(w.last) <= idle);
        if self.windows.len() == before && before > 0 {
            let mut lasts: Vec<Instant> = self.windows.values().map(|w| w.last).collect();
            lasts.sort_unstable();
            let cut = lasts[lasts.len() / 2];
            self.windows.retain(|_, w| w.last > cut);
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.windows.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

    fn hits(windows: &mut Windows, addr: IpAddr, start: Instant, seconds: &[u64]) -> Vec<Option<u32>> {
        seconds
            .iter()
            .map(|&s| {
                windows
                    .hit(0, addr, 5, Duration::from_secs(300), start + Duration::from_secs(s), || format!("line {s}"))
                    .map(|b| b.count)
            })
            .collect()
    }

    #[test]
    fn five_hits_in_the_window_alert_once_per_burst() {
        let mut windows = Windows::default();
        let t = Instant::now();
        let got = hits(&mut windows, A, t, &[0, 10, 20, 30, 40, 50, 60, 70]);
        assert_eq!(got, [None, None, None, None, Some(5), None, None, None]);
        // Quiet for more than a window: a new burst alerts again.
        let got = hits(&mut windows, A, t, &[400, 401, 402, 403, 404]);
        assert_eq!(got, [None, None, None, None, Some(5)]);
    }

    #[test]
    fn hits_spread_wider_than_the_window_do_not_alert() {
        let mut windows = Windows::default();
        let t = Instant::now();
        let got = hits(&mut windows, A, t, &[0, 100, 200, 301, 401, 502, 603]);
        assert!(got.iter().all(Option::is_none), "{got:?}");
    }

    #[test]
    fn addresses_and_rules_have_their_own_windows() {
        let mut windows = Windows::default();
        let t = Instant::now();
        assert!(hits(&mut windows, A, t, &[0, 1, 2, 3]).iter().all(Option::is_none));
        assert!(hits(&mut windows, B, t, &[0, 1, 2, 3]).iter().all(Option::is_none));
        let other_rule = windows.hit(1, A, 5, Duration::from_secs(300), t, String::new);
        assert_eq!(other_rule, None);
        let burst = windows.hit(0, A, 5, Duration::from_secs(300), t + Duration::from_secs(4), || "fifth".into());
        let burst = burst.unwrap();
        assert_eq!(burst.evidence, ["line 0", "line 1", "line 2", "line 3", "fifth"]);
    }

    #[test]
    fn window_count_is_bounded() {
        let mut windows = Windows::default();
        let t = Instant::now();
        for i in 0..(MAX_WINDOWS as u32 + 10) {
            let addr = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            windows.hit(0, addr, 5, Duration::from_secs(300), t + Duration::from_millis(i as u64), String::new);
        }
        assert!(windows.len() <= MAX_WINDOWS);
    }
}
