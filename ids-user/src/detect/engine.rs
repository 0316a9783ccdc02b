//! The line engine: one log line in, the rule hits and threshold crossings out. Shared by the
//! detect worker and `ids rules test`.
use std::borrow::Cow;
use std::net::IpAddr;
use std::time::Instant;

use super::config::LogKind;
use super::parse::{access_line, decode_request, escape_evidence, sshd_message};
use super::rules::RuleSet;
use super::window::{Burst, Windows};
use super::{MAX_EVIDENCE, MAX_LINE};

/// A rule's threshold crossed by an address.
#[derive(Debug, Clone, PartialEq)]
pub struct Trigger {
    pub rule: usize,
    pub addr: IpAddr,
    pub burst: Burst,
}

pub struct Engine {
    pub rules: RuleSet,
    windows: Windows,
    matched: Vec<usize>,
}

/// Per-line outcome (for `ids rules test` and the corpus tests).
#[derive(Debug, Clone, PartialEq)]
pub struct LineMatch {
    pub rules: Vec<usize>,
    pub addr: Option<IpAddr>,
}

impl Engine {
    pub fn new(rules: RuleSet) -> Self {
        Self { rules, windows: Windows::default(), matched: Vec::new() }
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
                match sshd_message(&line).and_then(|m| self.rules.match_sshd(m.as_bytes())) {
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
    pub fn line(&mut self, kind: LogKind, line: &[u8], cut: bool, now: Instant, out: &mut Vec<Trigger>) -> bool {
        let found = self.classify(kind, line, cut);
        let Some(addr) = found.addr else { return false };
        for rule in found.rules {
            let spec = &self.rules.rules[rule];
            let evidence = || escape_evidence(&String::from_utf8_lossy(line), MAX_EVIDENCE);
            if let Some(burst) = self.windows.hit(rule, addr, spec.threshold, spec.window, now, evidence) {
                out.push(Trigger { rule, addr, burst });
            }
        }
        true
    }

    /// Drops idle windows (called now and then by the worker).
    pub fn prune(&mut self, now: Instant) {
        let longest = self.rules.rules.iter().map(|r| r.window).max().unwrap_or_default();
        self.windows.prune(now, longest);
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
