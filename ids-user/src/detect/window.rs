//! Sliding windows per (rule, address): `threshold` hits within `window` raise one alert; the
//! burst ends when the address has been quiet for a whole window, and only then can it alert again.
//!
//! At most [`MAX_WINDOWS`] windows are kept. When a new (rule, address) needs room, the least
//! threatening windows make it: those with the fewest hits still inside their window (an idle
//! window has none), the longest idle among equals. A flood of new addresses, one hit each, thus
//! evicts its own kind and not an address a hit away from its threshold. Windows evicted while
//! they still held hits are counted (see [`Windows::take_evicted`]): their counts start again, so
//! the engine reports the flood.
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Lines kept as evidence per window.
pub const MAX_EVIDENCE_LINES: usize = 10;
/// Windows tracked at once.
pub const MAX_WINDOWS: usize = 100_000;
/// Windows removed at once when a new one needs room: choosing them takes a pass over all
/// windows, paid once per this many new windows rather than once per new window.
pub const EVICTION_BATCH: usize = MAX_WINDOWS / 10;

#[derive(Debug)]
struct Window {
    hits: VecDeque<Instant>,
    last: Instant,
    /// The rule's window: idleness and live hits are judged by the window's own rule.
    span: Duration,
    alerted: bool,
    evidence: Vec<String>,
}

impl Window {
    /// Hits that still count towards the threshold at `now`.
    fn live_hits(&self, now: Instant) -> usize {
        self.hits.iter().filter(|&&t| now.saturating_duration_since(t) <= self.span).count()
    }

    /// Quiet for longer than its window: the next hit starts a new burst anyway.
    fn idle(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.last) > self.span
    }
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
    /// Windows removed to make room while they still held hits, since the last
    /// [`Windows::take_evicted`].
    evicted: u64,
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
            self.make_room(now);
        }
        let entry = self.windows.entry((rule, addr)).or_insert_with(|| Window {
            hits: VecDeque::new(),
            last: now,
            span: window,
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

    /// Drops windows quiet for longer than their own window (called now and then; they would
    /// start a new burst at their next hit anyway).
    pub fn prune(&mut self, now: Instant) {
        self.windows.retain(|_, w| !w.idle(now));
    }

    /// Removes the [`EVICTION_BATCH`] least threatening windows: fewest live hits first (idle
    /// windows have none), then the longest idle. Those that still held hits are counted.
    fn make_room(&mut self, now: Instant) {
        let mut ranked: Vec<(usize, Instant, (usize, IpAddr))> =
            self.windows.iter().map(|(key, w)| (w.live_hits(now), w.last, *key)).collect();
        let batch = EVICTION_BATCH.min(ranked.len());
        if batch == 0 {
            return;
        }
        ranked.select_nth_unstable_by_key(batch - 1, |&(live, last, _)| (live, last));
        for &(live, _, key) in &ranked[..batch] {
            self.windows.remove(&key);
            self.evicted += (live > 0) as u64;
        }
    }

    /// Windows evicted while they still held hits since the last call.
    pub fn take_evicted(&mut self) -> u64 {
        std::mem::take(&mut self.evicted)
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
    fn a_flood_of_new_addresses_does_not_evict_a_window_close_to_its_threshold() {
        let mut windows = Windows::default();
        let t = Instant::now();
        let span = Duration::from_secs(300);
        assert!(hits(&mut windows, A, t, &[0, 1, 2, 3]).iter().all(Option::is_none));
        // Half as many again as fit, one hit each, all after the attacker's four.
        for i in 0..(MAX_WINDOWS as u32 * 3 / 2) {
            let addr = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            let at = t + Duration::from_secs(4) + Duration::from_micros(i as u64);
            assert_eq!(windows.hit(0, addr, 5, span, at, String::new), None);
        }
        assert!(windows.len() <= MAX_WINDOWS);
        // Every window made is either still there or counted as evicted.
        let evicted = windows.take_evicted() as usize;
        assert!(evicted > 0 && evicted.is_multiple_of(EVICTION_BATCH), "{evicted} evicted");
        assert_eq!(evicted + windows.len(), MAX_WINDOWS * 3 / 2 + 1);
        assert_eq!(windows.take_evicted(), 0, "the count is taken once");
        let fifth = windows.hit(0, A, 5, span, t + Duration::from_secs(10), || "fifth".into());
        assert_eq!(fifth.map(|b| b.count), Some(5), "the attacker's count was reset by the flood");
    }

    #[test]
    fn room_is_made_from_idle_windows_first_then_from_the_fewest_hits_oldest_first() {
        let mut windows = Windows::default();
        let t = Instant::now();
        let span = Duration::from_secs(300);
        let at = |seconds: u64, micros: u32| t + Duration::from_secs(seconds) + Duration::from_micros(micros as u64);
        let addr = |i: u32| IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
        let batch = EVICTION_BATCH as u32;
        // Quiet for more than their window by second 400.
        for i in 0..batch {
            windows.hit(0, addr(i), 5, span, t, String::new);
        }
        // B: two hits, older than any other live window.
        assert_eq!(windows.hit(0, B, 3, span, at(301, 0), String::new), None);
        assert_eq!(windows.hit(0, B, 3, span, at(302, 0), String::new), None);
        // One hit each for the rest of the table, oldest first.
        let fill = MAX_WINDOWS as u32 - batch - 1;
        for i in 0..fill {
            windows.hit(0, addr(batch + i), 5, span, at(350, i), String::new);
        }
        assert_eq!(windows.len(), MAX_WINDOWS);
        // The first new window takes the idle ones' room: nothing live is lost.
        let mut next = batch + fill;
        windows.hit(0, addr(next), 5, span, at(400, 0), String::new);
        assert_eq!((windows.len(), windows.take_evicted()), (MAX_WINDOWS - EVICTION_BATCH + 1, 0));
        // Once full again, the one-hit windows go, oldest first; B's two hits keep it.
        while windows.len() < MAX_WINDOWS {
            next += 1;
            windows.hit(0, addr(next), 5, span, at(401, next), String::new);
        }
        next += 1;
        windows.hit(0, addr(next), 5, span, at(402, 0), String::new);
        assert_eq!(windows.take_evicted(), EVICTION_BATCH as u64);
        assert_eq!(windows.hit(0, B, 3, span, at(403, 0), String::new).map(|b| b.count), Some(3), "B was evicted");
        let newest_fill = addr(batch + fill - 1);
        assert_eq!(windows.hit(0, newest_fill, 2, span, at(404, 0), String::new).map(|b| b.count), Some(2));
        let oldest_fill = addr(batch);
        assert_eq!(windows.hit(0, oldest_fill, 2, span, at(405, 0), String::new), None, "the oldest was kept");
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
