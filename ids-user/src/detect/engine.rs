//! The line engine: one log line in, the rule hits and threshold crossings out. Shared by the
//! detect worker and `ids rules test`.
use std::borrow::Cow;
use std::net::IpAddr;
use std::time::Instant;

use super::parse::{access_line, decode_request, escape_evidence, sshd_message};
use super::rules::RuleSet;
use super::window::{Burst, Windows};
use super::MAX_EVIDENCE;
use crate::config::LogKind;

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
        let line = String::from_utf8_lossy(line);
        match kind {
            LogKind::Sshd => {
                if cut {
                    return LineMatch { rules: Vec::new(), addr: None };
                }
                match sshd_message(&line).and_then(|m| self.rules.match_sshd(m)) {
                    Some((rule, addr)) => LineMatch { rules: vec![rule], addr: Some(addr) },
                    None => LineMatch { rules: Vec::new(), addr: None },
                }
            }
            LogKind::Nginx | LogKind::Apache => {
                let Some(access) = access_line(&line) else {
                    return LineMatch { rules: Vec::new(), addr: None };
                };
                let request = decode_request(access.request);
                let user_agent: Cow<str> = decode_request(access.user_agent);
                let referer = decode_request(access.referer);
                self.rules.match_web(&request, &user_agent, &referer, &mut self.matched);
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
