//! The line engine: one log line in, the rule hits and threshold crossings out. Shared by the
//! detect worker and `ids rules test`.
use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::config::LogKind;
use super::parse::{access_line, decode_request, escape_evidence, sshd_line};
use super::rules::RuleSet;
use super::window::{Burst, MAX_WINDOWS, Windows};
use super::{MAX_EVIDENCE, MAX_LINE};
use crate::alert::{DetectAction, DetectAlert, Detector, Severity};

/// A flood is reported at most this often; evictions in between are added to the next report,
/// so that a sustained flood raises one alert a minute, not one per batch of evictions.
pub const FLOOD_REPEAT: Duration = Duration::from_secs(60);

/// A rule's threshold crossed by an address.
#[derive(Debug, Clone, PartialEq)]
pub struct Crossing {
    pub rule: usize,
    pub addr: IpAddr,
    pub burst: Burst,
}

/// Windows with hits were evicted to make room for new addresses: more (rule, address) pairs
/// were counting at once than [`MAX_WINDOWS`]. The evicted addresses' counts start again, which
/// a flood of addresses may be meant to achieve, so the flood is reported in its own right.
#[derive(Debug, Clone, PartialEq)]
pub struct Flood {
    /// Windows evicted since the previous report.
    pub evicted: u64,
    /// The detector of the rule whose hit needed the room.
    pub detector: Detector,
    /// That hit's line, escaped.
    pub evidence: String,
}

impl Flood {
    pub const RULE: &'static str = "window-flood";

    /// The alert for this flood, found in `origin` (a log path or a journal source).
    pub fn alert(&self, origin: &str) -> DetectAlert {
        DetectAlert {
            rule: Self::RULE.into(),
            severity: Severity::High,
            detector: self.detector,
            description: format!(
                "More addresses than the detector can count at once ({MAX_WINDOWS} rule and address \
                 windows): {} evicted, and their counts start again",
                self.evicted
            ),
            source: None,
            path: Some(origin.to_string()),
            count: Some(u32::try_from(self.evicted).unwrap_or(u32::MAX)),
            window_s: None,
            process: None,
            evidence: vec![self.evidence.clone()],
            action: DetectAction::AlertOnly,
        }
    }
}

pub struct Engine {
    pub rules: RuleSet,
    windows: Windows,
    matched: Vec<usize>,
    /// Windows evicted with hits, all told (`ids status`).
    evictions: Arc<AtomicU64>,
    /// Evictions not reported yet, with the detector and line of the latest.
    unreported: Option<Flood>,
    last_report: Option<Instant>,
    /// The report due, until taken.
    report: Option<Flood>,
    logins: Option<Arc<crate::process::Logins>>,
}

/// Per-line outcome (for `ids rules test` and the corpus tests).
#[derive(Debug, Clone, PartialEq)]
pub struct LineMatch {
    pub rules: Vec<usize>,
    pub addr: Option<IpAddr>,
}

impl Engine {
    pub fn new(rules: RuleSet) -> Self {
        Self {
            rules,
            windows: Windows::default(),
            matched: Vec::new(),
            evictions: Arc::default(),
            unreported: None,
            last_report: None,
            report: None,
            logins: None,
        }
    }

    /// Counts evicted windows in `counter` (shared with the detect status) instead of its own.
    pub fn counting_evictions_in(mut self, counter: Arc<AtomicU64>) -> Self {
        self.evictions = counter;
        self
    }

    /// Hands sshd's `Accepted` lines to `logins` (the process table names logins from them).
    pub fn recording_logins_in(mut self, logins: Arc<crate::process::Logins>) -> Self {
        self.logins = Some(logins);
        self
    }

    /// Windows evicted with hits since the engine started.
    #[cfg(test)]
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    /// The flood report due, if any: made at the first eviction, then at most once per
    /// [`FLOOD_REPEAT`] (at an eviction or at [`Engine::prune`]) with the evictions since the last.
    pub fn take_flood(&mut self) -> Option<Flood> {
        self.report.take()
    }

    /// The rules a line matches and the address they would count against, without windows.
    /// A cut sshd line matches nothing: its end, where sshd writes the address, is gone.
    pub fn classify(&mut self, kind: LogKind, line: &[u8], cut: bool) -> LineMatch {
        let line: Cow<str> = match std::str::from_utf8(line) {
            Ok(text) => Cow::Borrowed(text),
            Err(_) => String::from_utf8_lossy(line),
        };
        match kind {
            LogKind::Sshd => {
                if cut {
                    return LineMatch { rules: Vec::new(), addr: None };
                }
                let Some((pid, message)) = sshd_line(&line) else {
                    return LineMatch { rules: Vec::new(), addr: None };
                };
                if let Some(logins) = &self.logins {
                    logins.take_sshd_message(pid, message);
                }
                match self.rules.match_sshd(message.as_bytes()) {
                    Some((rule, addr)) => LineMatch { rules: vec![rule], addr: Some(addr) },
                    None => LineMatch { rules: Vec::new(), addr: None },
                }
            }
            LogKind::Nginx | LogKind::Apache => {
                let Some(access) = access_line(&line) else {
                    return LineMatch { rules: Vec::new(), addr: None };
                };
                // Servers decode the request target, not the headers: only the request is decoded.
                let request = decode_request(access.request);
                self.rules.match_web(
                    request.as_bytes(),
                    access.user_agent.as_bytes(),
                    access.referer.as_bytes(),
                    &mut self.matched,
                );
                let addr = (!self.matched.is_empty()).then_some(access.addr);
                LineMatch { rules: self.matched.clone(), addr }
            }
        }
    }

    /// Counts a line's hits at `now`; pushes the thresholds it crosses to `out`. Returns
    /// whether any rule matched.
    pub fn line(&mut self, kind: LogKind, line: &[u8], cut: bool, now: Instant, out: &mut Vec<Crossing>) -> bool {
        let found = self.classify(kind, line, cut);
        let Some(addr) = found.addr else { return false };
        let evidence = || escape_evidence(&String::from_utf8_lossy(line), MAX_EVIDENCE);
        for rule in found.rules {
            let spec = &self.rules.rules[rule];
            if let Some(burst) = self.windows.hit(rule, addr, spec.threshold, spec.window, now, evidence) {
                out.push(Crossing { rule, addr, burst });
            }
            let evicted = self.windows.take_evicted();
            if evicted > 0 {
                self.note_evictions(evicted, self.rules.rules[rule].kind.detector(), now, evidence);
            }
        }
        true
    }

    /// Counts evictions and makes a flood report due unless one was made within [`FLOOD_REPEAT`].
    fn note_evictions(&mut self, evicted: u64, detector: Detector, now: Instant, evidence: impl FnOnce() -> String) {
        self.evictions.fetch_add(evicted, Ordering::Relaxed);
        let earlier = self.unreported.take().map_or(0, |flood| flood.evicted);
        self.unreported = Some(Flood { evicted: earlier + evicted, detector, evidence: evidence() });
        self.report_if_due(now);
    }

    fn report_if_due(&mut self, now: Instant) {
        if self.last_report.is_some_and(|last| now.saturating_duration_since(last) < FLOOD_REPEAT) {
            return;
        }
        let Some(mut report) = self.unreported.take() else { return };
        // A report not taken yet is folded into this one.
        report.evicted += self.report.take().map_or(0, |untaken| untaken.evicted);
        self.report = Some(report);
        self.last_report = Some(now);
    }

    /// Drops idle windows and reports evictions left unreported for [`FLOOD_REPEAT`] (called
    /// now and then by the worker).
    pub fn prune(&mut self, now: Instant) {
        self.windows.prune(now);
        self.report_if_due(now);
    }

    /// Goes on with `rules`. Windows are kept by rule position, which a new rule set may give to
    /// another rule: they all start afresh.
    pub fn replace_rules(&mut self, rules: RuleSet) {
        self.rules = rules;
        self.windows = Windows::default();
    }
}

/// What `ids rules test` reports: the lines of a log file run through the rules (no windows).
#[derive(Debug, Clone, serde::Serialize)]
pub struct TestReport {
    pub path: String,
    pub kind: &'static str,
    pub lines: u64,
    pub lines_cut: u64,
    pub matched_lines: u64,
    /// Rule id → lines it matched, rules in file order, only those that matched.
    pub rules: Vec<(String, u64)>,
    pub seconds: f64,
}

/// Runs every line of `path` through the rules of `kind` (read in one pass, lines over
/// [`MAX_LINE`] cut as when following).
pub fn test_file(rules: RuleSet, kind: LogKind, path: &std::path::Path) -> std::io::Result<TestReport> {
    let mut engine = Engine::new(rules);
    let mut counts = vec![0u64; engine.rules.rules.len()];
    let (mut lines, mut cut, mut matched) = (0u64, 0u64, 0u64);
    let started = Instant::now();
    let data = std::fs::read(path)?;
    let mut start = 0;
    let ends = memchr::memchr_iter(b'\n', &data).chain(std::iter::once(data.len()));
    for end in ends {
        let line = &data[start..end];
        start = end + 1;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        lines += 1;
        let is_cut = line.len() > MAX_LINE;
        cut += is_cut as u64;
        let found = engine.classify(kind, &line[..line.len().min(MAX_LINE)], is_cut);
        if found.addr.is_some() {
            matched += 1;
            for rule in found.rules {
                counts[rule] += 1;
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let rules =
        engine.rules.rules.iter().zip(counts).filter(|(_, n)| *n > 0).map(|(rule, n)| (rule.id.clone(), n)).collect();
    Ok(TestReport {
        path: path.display().to_string(),
        kind: kind.name(),
        lines,
        lines_cut: cut,
        matched_lines: matched,
        rules,
        seconds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::config::RulesMode;

    fn engine() -> Engine {
        Engine::new(RuleSet::load(None, RulesMode::Extend).unwrap())
    }

    fn kind_of(name: &str) -> LogKind {
        match name {
            "sshd" => LogKind::Sshd,
            "nginx" => LogKind::Nginx,
            "apache" => LogKind::Apache,
            other => panic!("corpus: unknown kind {other}"),
        }
    }

    #[test]
    fn corpus_lines_give_their_expected_result() {
        let mut engine = engine();
        let corpus = include_str!("testdata/corpus.txt");
        let mut checked = 0;
        for (number, entry) in corpus.lines().enumerate() {
            if entry.starts_with('#') || entry.is_empty() {
                continue;
            }
            let mut parts = entry.splitn(3, '\t');
            let (kind, expected, line) = (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap());
            // `\n` in a corpus line stands for a newline an attacker tried to smuggle in: the
            // log holds it escaped, as the two characters.
            let found = engine.classify(kind_of(kind), line.as_bytes(), false);
            let got = match found.addr {
                None => "-".to_string(),
                Some(addr) => {
                    let ids: Vec<&str> = found.rules.iter().map(|&r| engine.rules.rules[r].id.as_str()).collect();
                    format!("{}@{addr}", ids.join(","))
                }
            };
            assert_eq!(got, expected, "corpus line {}: {line}", number + 1);
            checked += 1;
        }
        assert!(checked >= 50, "corpus has {checked} entries");
    }

    #[test]
    fn five_failures_make_one_trigger_with_the_lines_as_evidence() {
        let mut engine = engine();
        let now = Instant::now();
        let mut out = Vec::new();
        for i in 0..7 {
            let line =
                format!("Nov 21 03:33:4{i} h sshd[1]: Failed password for root from 192.0.2.1 port {i} ssh2\x1b[2J");
            // The control sequence is not part of the matched message's end: add a plain line too.
            let plain = format!("Nov 21 03:33:4{i} h sshd[1]: Failed password for root from 192.0.2.1 port {i} ssh2");
            assert!(!engine.line(LogKind::Sshd, line.as_bytes(), false, now, &mut out));
            assert!(engine.line(LogKind::Sshd, plain.as_bytes(), false, now, &mut out));
        }
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].addr, "192.0.2.1".parse::<IpAddr>().unwrap());
        assert_eq!(out[0].burst.count, 5);
        assert_eq!(out[0].burst.evidence.len(), 5);
    }

    fn failed_password(addr: std::net::Ipv4Addr, port: u32) -> String {
        format!("Nov 21 03:33:41 h sshd[1]: Failed password for root from {addr} port {port} ssh2")
    }

    #[test]
    fn an_attacker_flooding_distinct_addresses_still_alerts_on_the_fifth_failure() {
        let mut engine = engine();
        let attacker = std::net::Ipv4Addr::new(192, 0, 2, 66);
        let start = Instant::now();
        let mut out = Vec::new();
        for port in 0..4 {
            engine.line(LogKind::Sshd, failed_password(attacker, port).as_bytes(), false, start, &mut out);
        }
        // One write of 150,000 failures, each from its own address, read within a second.
        for i in 0..150_000u32 {
            let addr = std::net::Ipv4Addr::from(0x0a00_0000 + i);
            let at = start + Duration::from_micros(i as u64);
            engine.line(LogKind::Sshd, failed_password(addr, 22).as_bytes(), false, at, &mut out);
        }
        assert!(out.is_empty(), "one failure per address crossed a threshold: {:?}", out.first());
        // The flood is reported at its first eviction, once; what it evicts later goes into the
        // next report, due a minute later.
        let flood = engine.take_flood().expect("no flood report");
        assert_eq!(engine.take_flood(), None);
        let evicted = engine.evictions();
        assert!(evicted >= (150_000 + 1 - MAX_WINDOWS) as u64, "{evicted} evicted");
        assert!(flood.evicted > 0 && flood.evicted < evicted, "{flood:?} of {evicted}");
        assert_eq!(flood.detector, Detector::SshBruteforce);
        assert!(flood.evidence.contains("Failed password for root from 10."), "{flood:?}");
        let alert = flood.alert("/var/log/auth.log");
        assert_eq!((alert.rule.as_str(), alert.severity), ("window-flood", Severity::High));
        assert_eq!((alert.count, alert.action), (Some(flood.evicted as u32), DetectAction::AlertOnly));
        assert!(alert.description.contains(&format!("{} evicted", flood.evicted)), "{}", alert.description);
        engine.prune(start + FLOOD_REPEAT / 2);
        assert_eq!(engine.take_flood(), None, "reported again within FLOOD_REPEAT");
        engine.prune(start + FLOOD_REPEAT + Duration::from_secs(1));
        let rest = engine.take_flood().expect("the later evictions were not reported");
        assert_eq!(flood.evicted + rest.evicted, evicted);
        // Still within the rule's 300 s window of the first four.
        let fifth = start + FLOOD_REPEAT + Duration::from_secs(2);
        engine.line(LogKind::Sshd, failed_password(attacker, 4).as_bytes(), false, fifth, &mut out);
        assert_eq!(out.len(), 1, "the attacker's fifth failure raised nothing");
        assert_eq!((out[0].addr, out[0].burst.count), (IpAddr::V4(attacker), 5));
    }

    #[test]
    fn a_lasting_flood_is_reported_once_per_flood_repeat_with_the_evictions_in_between() {
        let mut engine = engine();
        let start = Instant::now();
        let mut out = Vec::new();
        let mut reports = Vec::new();
        // Addresses arriving over three minutes, each seen once: the table fills, then keeps
        // evicting.
        let total = 300_000u32;
        for i in 0..total {
            let addr = std::net::Ipv4Addr::from(0x0a00_0000 + i);
            let at = start + FLOOD_REPEAT * 3 * i / total;
            engine.line(LogKind::Sshd, failed_password(addr, 22).as_bytes(), false, at, &mut out);
            if let Some(flood) = engine.take_flood() {
                reports.push((at, flood.evicted));
            }
        }
        assert!(out.is_empty());
        assert!((2..=3).contains(&reports.len()), "{reports:?}");
        for pair in reports.windows(2) {
            assert!(pair[1].0 - pair[0].0 >= FLOOD_REPEAT, "{reports:?}");
        }
        // What was not reported yet goes into the next report; nothing is counted twice.
        engine.prune(start + FLOOD_REPEAT * 4);
        reports.extend(engine.take_flood().map(|flood| (start + FLOOD_REPEAT * 4, flood.evicted)));
        let reported: u64 = reports.iter().map(|r| r.1).sum();
        assert_eq!(reported, engine.evictions(), "{reports:?}");
        // Within the rule's 300 s window nothing idles: what does not fit was evicted.
        assert!(engine.evictions() >= (total as usize - MAX_WINDOWS) as u64, "{}", engine.evictions());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_worker_alerts_on_the_flood_and_on_the_attackers_fifth_failure() {
        use std::sync::atomic::Ordering;
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("auth.log");
        std::fs::write(&log, "").unwrap();
        let text = format!(
            "watch = []\nevents_log = \"-\"\nstate_dir = {:?}\n[[logs]]\nkind = \"sshd\"\npath = {:?}\n\
             [xdp]\ntrust_local = false\n",
            dir.path().join("state").display().to_string(),
            log.display().to_string(),
        );
        let config = crate::config::Config::parse(&text, "test").unwrap();
        std::fs::create_dir_all(&config.state_dir).unwrap();
        let events = crate::alert::MemoryLog::default();
        let sink = crate::alert::AlertSink::new(None, Some(events.events_log()));
        let (bans, mut ban_requests) = tokio::sync::mpsc::channel(16);
        let mut ban_path =
            crate::bans::Bans::open(&config.state_dir, &config.xdp, &config.bans, None, sink.clone()).unwrap();
        let mut workers = crate::harness::Workers::default();
        let prepared = super::super::worker::prepare(
            &config.detect,
            &config.state_dir,
            sink,
            bans,
            Default::default(),
            workers.stop_token(),
        )
        .unwrap();
        let (handle, _) = prepared.start(&mut workers).unwrap();

        // Four failures, 150,000 from distinct addresses, then the fifth: one write.
        let attacker = std::net::Ipv4Addr::new(192, 0, 2, 66);
        let mut lines: Vec<String> = (0..4).map(|port| failed_password(attacker, port)).collect();
        lines.extend((0..150_000u32).map(|i| failed_password(std::net::Ipv4Addr::from(0x0a00_0000 + i), 22)));
        lines.push(failed_password(attacker, 4));
        let mut file = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        std::io::Write::write_all(&mut file, (lines.join("\n") + "\n").as_bytes()).unwrap();
        handle.events.offer(super::super::Input::File {
            op: ids_common::FileOp::Write,
            path: log.clone(),
            new_path: None,
        });
        let request = tokio::time::timeout(Duration::from_secs(60), ban_requests.recv()).await.unwrap().unwrap();
        assert_eq!(request.net.to_string(), attacker.to_string());
        // The ban path raises the attacker's alert with its decision.
        ban_path.apply(request);
        let shared = handle.shared.clone();
        let all = lines.len() as u64;
        tokio::task::spawn_blocking(move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            while shared.lines.load(Ordering::Relaxed) < all {
                assert!(Instant::now() < deadline, "the worker read {:?} lines", shared.lines);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
        .await
        .unwrap();
        let status = handle.shared.status();
        workers.shutdown(Duration::from_secs(10)).await;

        let text = events.text();
        let alerts: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|a| a["kind"] == "detect")
            .collect();
        assert_eq!(alerts.len(), 2, "{alerts:#?}");
        let flood = &alerts[0];
        assert_eq!(
            (flood["rule"].as_str(), flood["severity"].as_str()),
            (Some("window-flood"), Some("high")),
            "{flood}"
        );
        assert_eq!(
            (flood["detector"].as_str(), flood["action"]["type"].as_str()),
            (Some("ssh-bruteforce"), Some("alert_only"))
        );
        assert_eq!(flood["path"].as_str(), Some(log.display().to_string().as_str()));
        assert!(flood["count"].as_u64().is_some_and(|n| n > 0), "{flood}");
        let fifth = &alerts[1];
        assert_eq!(
            (fifth["rule"].as_str(), fifth["source"].as_str()),
            (Some("sshd-failed-password"), Some("192.0.2.66"))
        );
        assert_eq!(fifth["count"], 5, "{fifth}");
        assert_eq!(fifth["action"]["type"], "ban_requested", "{fifth}");
        assert!(status.windows_evicted >= (150_000 + 1 - MAX_WINDOWS) as u64, "{status:?}");
    }

    #[test]
    fn evidence_holds_no_control_characters() {
        let mut engine = engine();
        let mut out = Vec::new();
        let line = "198.51.100.9 - - [21/Nov/2026:03:33:41 +0000] \"GET /.env HTTP/1.1\" 404 1 \"-\" \"sqlmap\x1b]0;owned\x07\u{202e}\u{85}\"";
        for _ in 0..5 {
            engine.line(LogKind::Nginx, line.as_bytes(), false, Instant::now(), &mut out);
        }
        assert!(!out.is_empty());
        for evidence in out.iter().flat_map(|t| &t.burst.evidence) {
            assert!(!evidence.chars().any(|c| c.is_control() || c == '\u{202e}'), "{evidence:?}");
            assert!(evidence.contains("\\x1b") && evidence.contains("\\u{202e}"), "{evidence:?}");
            let json = serde_json::to_string(evidence).unwrap();
            assert!(!json.bytes().any(|b| b < 0x20), "{json}");
        }
    }

    #[test]
    fn hostile_long_lines_are_matched_in_one_linear_pass() {
        // Inputs that make backtracking engines explode (nested repetition near-misses) are
        // handled by finite automata: each line below, up to the cap, completes; the work grows
        // with the length, which the regex crate guarantees (O(m·n)), not with the nesting.
        let mut engine = engine();
        let long_user = "x from 6.6.6.6 port 22 ".repeat(MAX_LINE / 23);
        let sshd = format!(
            "Nov 21 03:33:41 h sshd[1]: Failed password for invalid user {long_user}from 192.0.2.3 port 1 ssh2"
        );
        let found = engine.classify(LogKind::Sshd, &sshd.as_bytes()[..sshd.len().min(MAX_LINE)], sshd.len() > MAX_LINE);
        assert_eq!(found.addr, None, "a cut sshd line must not yield an address");
        let short_user = "x from 6.6.6.6 port 22 ".repeat(300);
        let sshd = format!(
            "Nov 21 03:33:41 h sshd[1]: Failed password for invalid user {short_user}from 192.0.2.3 port 1 ssh2"
        );
        assert!(sshd.len() < MAX_LINE);
        assert_eq!(engine.classify(LogKind::Sshd, sshd.as_bytes(), false).addr, Some("192.0.2.3".parse().unwrap()));
        let nested = format!(
            "198.51.100.9 - - [21/Nov/2026:03:33:41 +0000] \"GET /?q={}*/select%201 HTTP/1.1\" 200 1 \"-\" \"{}\"",
            "union/*".repeat(900),
            "'or'".repeat(200)
        );
        assert!(nested.len() < MAX_LINE);
        let found = engine.classify(LogKind::Nginx, nested.as_bytes(), false);
        assert_eq!(
            found.rules.iter().map(|&r| engine.rules.rules[r].id.as_str()).collect::<Vec<_>>(),
            ["web-sql-injection"]
        );
        assert_eq!(found.addr.map(|a| a.to_string()).as_deref(), Some("198.51.100.9"));
    }
}
