//! Detection rules: the shipped rules file (embedded), an optional operator file that extends or
//! replaces it, and their compiled form — one `RegexSet` per log kind and field, so a line is
//! matched against every rule in one pass of a finite automaton (linear in the line's length).
//!
//! Patterns are compiled for bytes with Unicode off: `\w`, `\d`, `\s`, `\b` and `(?i)` are
//! ASCII, which keeps the automata small and fast; log lines that are not UTF-8 still match.
use std::path::Path;
use std::time::Duration;

use regex::bytes::{Regex, RegexBuilder, RegexSet, RegexSetBuilder};
use serde::Deserialize;

use crate::detect::config::RulesMode;

/// The shipped rules, embedded in the binary.
pub const SHIPPED_RULES: &str = include_str!("rules.toml");

/// What the `n`th `<ADDR>` in an sshd pattern stands for (alternatives may each hold one); the
/// capture is then checked with std's parser.
fn with_addr_groups(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len() + 64);
    for (n, part) in pattern.split("<ADDR>").enumerate() {
        if n > 0 {
            out.push_str(&format!("(?P<addr{}>[0-9A-Fa-f:.]{{2,45}}?)", n - 1));
        }
        out.push_str(part);
    }
    out
}

pub const DEFAULT_THRESHOLD: u32 = 5;
pub const DEFAULT_WINDOW_S: u64 = 300;

#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    #[error("reading rules file {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("rules {origin}: {message}")]
    Parse { origin: String, message: String },
    #[error("rules {origin}: rule {id:?}: {message}")]
    Invalid { origin: String, id: String, message: String },
}

pub(crate) use crate::alert::Severity;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleKind {
    Sshd,
    Web,
}

impl RuleKind {
    /// The detector named in the alerts of this kind's rules.
    pub fn detector(self) -> crate::alert::Detector {
        match self {
            RuleKind::Sshd => crate::alert::Detector::SshBruteforce,
            RuleKind::Web => crate::alert::Detector::WebAttack,
        }
    }
}

/// The part of an access-log line a web rule looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Field {
    #[default]
    Request,
    UserAgent,
    Referer,
    Any,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRules {
    #[serde(default)]
    rules: Vec<RawRule>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    id: String,
    description: String,
    severity: Severity,
    kind: RuleKind,
    #[serde(default)]
    field: Option<Field>,
    pattern: String,
    #[serde(default)]
    threshold: Option<u32>,
    #[serde(default)]
    window: Option<u64>,
}

/// A validated rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub id: String,
    pub description: String,
    pub severity: Severity,
    pub kind: RuleKind,
    pub field: Field,
    /// As written in the rules file.
    pub pattern: String,
    pub threshold: u32,
    pub window: Duration,
}

/// Room for each lazy DFA's cache: enough that matching never falls back to a slower engine.
const DFA_SIZE: usize = 32 << 20;

fn build(pattern: &str) -> Result<Regex, regex::Error> {
    RegexBuilder::new(pattern).unicode(false).dfa_size_limit(DFA_SIZE).build()
}

fn build_set(patterns: &[String]) -> Result<RegexSet, regex::Error> {
    RegexSetBuilder::new(patterns).unicode(false).dfa_size_limit(DFA_SIZE).build()
}

/// The set of `patterns`, those of the rules `ids` in file order. A set compiles every pattern
/// into one automaton, so it can exceed the size limit when each pattern alone compiled: the
/// error then names the rule responsible, `(id, message)`: the first whose pattern is too large
/// for a set on its own, else the one whose addition makes the set too large.
fn build_rule_set(patterns: &[String], ids: &[&str]) -> Result<RegexSet, (String, String)> {
    let error = match build_set(patterns) {
        Ok(set) => return Ok(set),
        Err(error) => error,
    };
    for (pattern, id) in patterns.iter().zip(ids) {
        if let Err(alone) = build_set(std::slice::from_ref(pattern)) {
            return Err((id.to_string(), format!("pattern: {alone}")));
        }
    }
    // Every pattern fits alone: find the shortest prefix of the rules that does not.
    let (mut fits, mut fails) = (1, patterns.len());
    while fails - fits > 1 {
        let middle = fits + (fails - fits) / 2;
        match build_set(&patterns[..middle]) {
            Ok(_) => fits = middle,
            Err(_) => fails = middle,
        }
    }
    let others = fails - 1;
    Err((
        ids[fails - 1].to_string(),
        format!(
            "pattern: too large together with the {others} rule(s) before it that are matched in the same pass: {error}"
        ),
    ))
}

/// How the address of an sshd rule is found once the rule is known to match.
#[derive(Debug, Clone)]
enum SshdRule {
    /// One `<ADDR>`: the pattern split around it, each half anchored at both ends. The address
    /// is the rightmost address-shaped token with the text before it matching `head` and the
    /// text after it matching `tail` (a few DFA scans instead of a capturing search).
    Split { head: Regex, tail: Regex },
    /// Several `<ADDR>` (alternatives): the capture that took part in the match.
    Captures(Regex),
}

/// Bytes an address token is made of.
fn is_addr_byte(b: u8) -> bool {
    b.is_ascii_hexdigit() || b == b':' || b == b'.'
}

/// The compiled rules.
#[derive(Debug, Clone)]
pub struct RuleSet {
    pub rules: Vec<Rule>,
    /// sshd: every rule's anchored pattern in one set, and each one alone (for its `addr` capture).
    sshd_set: RegexSet,
    sshd_rules: Vec<(usize, SshdRule)>,
    /// Web: one set per field, with the rule index of each pattern.
    web_sets: Vec<(Field, RegexSet, Vec<usize>)>,
}

impl RuleSet {
    /// The shipped rules, extended or replaced by the file at `path`.
    pub fn load(path: Option<&Path>, mode: RulesMode) -> Result<Self, RuleError> {
        let mut rules = parse_rules(SHIPPED_RULES, "(shipped)")?;
        if let Some(path) = path {
            let text = std::fs::read_to_string(path)
                .map_err(|error| RuleError::Read { path: path.display().to_string(), error })?;
            let extra = parse_rules(&text, &path.display().to_string())?;
            match mode {
                RulesMode::Replace => rules = extra,
                RulesMode::Extend => {
                    for rule in extra {
                        match rules.iter_mut().find(|r| r.id == rule.id) {
                            Some(shipped) => *shipped = rule,
                            None => rules.push(rule),
                        }
                    }
                }
            }
        }
        Self::compile(rules, path.map_or("(shipped)".into(), |p| p.display().to_string()))
    }

    pub fn compile(rules: Vec<Rule>, origin: String) -> Result<Self, RuleError> {
        let invalid = |id: &str, message: String| RuleError::Invalid { origin: origin.clone(), id: id.into(), message };
        let mut sshd_patterns = Vec::new();
        let mut sshd_rules = Vec::new();
        for (index, rule) in rules.iter().enumerate().filter(|(_, r)| r.kind == RuleKind::Sshd) {
            let anchored = format!("^(?:{})$", with_addr_groups(&rule.pattern));
            let compiled = match rule.pattern.split_once("<ADDR>") {
                Some((head, tail)) if !tail.contains("<ADDR>") => SshdRule::Split {
                    head: build(&format!("^(?:{head})$")).map_err(|e| invalid(&rule.id, e.to_string()))?,
                    tail: build(&format!("^(?:{tail})$")).map_err(|e| invalid(&rule.id, e.to_string()))?,
                },
                _ => SshdRule::Captures(build(&anchored).map_err(|e| invalid(&rule.id, e.to_string()))?),
            };
            sshd_patterns.push(anchored);
            sshd_rules.push((index, compiled));
        }
        let sshd_ids: Vec<&str> = sshd_rules.iter().map(|(index, _)| rules[*index].id.as_str()).collect();
        let sshd_set = build_rule_set(&sshd_patterns, &sshd_ids).map_err(|(id, message)| invalid(&id, message))?;
        let mut web_sets = Vec::new();
        for field in [Field::Request, Field::UserAgent, Field::Referer] {
            let mut patterns = Vec::new();
            let mut indexes = Vec::new();
            for (index, rule) in rules.iter().enumerate() {
                if rule.kind == RuleKind::Web && (rule.field == field || rule.field == Field::Any) {
                    build(&rule.pattern).map_err(|e| invalid(&rule.id, e.to_string()))?;
                    patterns.push(rule.pattern.clone());
                    indexes.push(index);
                }
            }
            let ids: Vec<&str> = indexes.iter().map(|&index| rules[index].id.as_str()).collect();
            let set = build_rule_set(&patterns, &ids).map_err(|(id, message)| invalid(&id, message))?;
            web_sets.push((field, set, indexes));
        }
        Ok(Self { rules, sshd_set, sshd_rules, web_sets })
    }

    /// The rule an sshd message matches (the first in file order) and the address it names:
    /// for a pattern with one `<ADDR>`, the rightmost token that std parses as an IP address
    /// with the text before it matching the pattern's head and the text after it its tail; for
    /// several, the `<ADDR>` capture that took part in the match.
    pub fn match_sshd(&self, message: &[u8]) -> Option<(usize, std::net::IpAddr)> {
        if !self.sshd_set.is_match(message) {
            return None;
        }
        let matched = self.sshd_set.matches(message);
        let first = matched.iter().next()?;
        let (index, compiled) = &self.sshd_rules[first];
        let regex = match compiled {
            SshdRule::Split { head, tail } => return Some((*index, split_address(message, head, tail)?)),
            SshdRule::Captures(regex) => regex,
        };
        let captures = regex.captures(message)?;
        let addr = regex
            .capture_names()
            .flatten()
            .filter(|name| name.starts_with("addr"))
            .find_map(|name| captures.name(name))?
            .as_bytes();
        let addr = std::str::from_utf8(addr).ok()?.parse().ok()?;
        Some((*index, addr))
    }

    /// Every web rule that matches the given fields, in file order, without repeats.
    pub fn match_web(&self, request: &[u8], user_agent: &[u8], referer: &[u8], out: &mut Vec<usize>) {
        out.clear();
        for (field, set, indexes) in &self.web_sets {
            let text = match field {
                Field::Request => request,
                Field::UserAgent => user_agent,
                Field::Referer => referer,
                Field::Any => continue,
            };
            if text.is_empty() {
                continue;
            }
            // Most lines match nothing: an early-exit test first, the full set only on a hit.
            if !set.is_match(text) {
                continue;
            }
            for m in set.matches(text).iter() {
                out.push(indexes[m]);
            }
        }
        out.sort_unstable();
        out.dedup();
    }
}

/// The rightmost address-shaped token of `message` between a `head` and a `tail` match.
fn split_address(message: &[u8], head: &Regex, tail: &Regex) -> Option<std::net::IpAddr> {
    let mut end = message.len();
    while end > 0 {
        if !is_addr_byte(message[end - 1]) {
            end -= 1;
            continue;
        }
        let start = message[..end].iter().rposition(|&b| !is_addr_byte(b)).map_or(0, |p| p + 1);
        let token = &message[start..end];
        if token.len() >= 2
            && let Some(addr) = std::str::from_utf8(token).ok().and_then(|t| t.parse().ok())
            && tail.is_match(&message[end..])
            && head.is_match(&message[..start])
        {
            return Some(addr);
        }
        end = start;
    }
    None
}

pub(crate) fn parse_rules(text: &str, origin: &str) -> Result<Vec<Rule>, RuleError> {
    let raw: RawRules = toml::from_str(text)
        .map_err(|e| RuleError::Parse { origin: origin.into(), message: e.to_string().trim_end().to_string() })?;
    let mut rules: Vec<Rule> = Vec::new();
    for raw in raw.rules {
        let invalid = |message: String| RuleError::Invalid { origin: origin.into(), id: raw.id.clone(), message };
        if raw.id.is_empty() || !raw.id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err(invalid("id must be letters, digits, '-' or '_'".into()));
        }
        if rules.iter().any(|r| r.id == raw.id) {
            return Err(invalid("id is used twice".into()));
        }
        let field = match (raw.kind, raw.field) {
            (RuleKind::Sshd, None) => Field::Request,
            (RuleKind::Sshd, Some(_)) => return Err(invalid("`field` applies to web rules only".into())),
            (RuleKind::Web, field) => field.unwrap_or_default(),
        };
        let addr_count = raw.pattern.matches("<ADDR>").count();
        match raw.kind {
            RuleKind::Sshd if addr_count == 0 => {
                return Err(invalid("an sshd pattern must hold <ADDR> where sshd writes the client address".into()));
            }
            RuleKind::Web if addr_count > 0 => {
                return Err(invalid("web patterns take no <ADDR>: the address is the log line's first field".into()));
            }
            _ => {}
        }
        let threshold = raw.threshold.unwrap_or(DEFAULT_THRESHOLD);
        if threshold == 0 {
            return Err(invalid("threshold must be at least 1".into()));
        }
        let window = raw.window.unwrap_or(DEFAULT_WINDOW_S);
        if window == 0 {
            return Err(invalid("window must be at least 1 (seconds)".into()));
        }
        let test = with_addr_groups(&raw.pattern);
        build(&test).map_err(|e| invalid(format!("pattern: {e}")))?;
        rules.push(Rule {
            id: raw.id,
            description: raw.description,
            severity: raw.severity,
            kind: raw.kind,
            field,
            pattern: raw.pattern,
            threshold,
            window: Duration::from_secs(window),
        });
    }
    Ok(rules)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_rules_compile_and_cover_the_required_attacks() {
        let set = RuleSet::load(None, RulesMode::Extend).unwrap();
        for id in [
            "sshd-failed-password",
            "sshd-invalid-user",
            "sshd-preauth-disconnect",
            "sshd-max-attempts",
            "web-sql-injection",
            "web-xss",
            "web-path-traversal",
            "web-command-injection",
            "web-scanner-user-agent",
        ] {
            assert!(set.rules.iter().any(|r| r.id == id), "missing shipped rule {id}");
        }
    }

    #[test]
    fn operator_rules_extend_override_or_replace() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rules.toml");
        std::fs::write(
            &path,
            "[[rules]]\nid = \"sshd-failed-password\"\ndescription = \"stricter\"\nseverity = \"high\"\nkind = \"sshd\"\n\
             pattern = 'Failed password for .* from <ADDR> port \\d+ ssh2'\nthreshold = 3\nwindow = 60\n\
             [[rules]]\nid = \"web-wp-login\"\ndescription = \"WordPress login\"\nseverity = \"low\"\nkind = \"web\"\n\
             pattern = '^POST /wp-login\\.php'\n",
        )
        .unwrap();
        let shipped = RuleSet::load(None, RulesMode::Extend).unwrap().rules.len();
        let extended = RuleSet::load(Some(&path), RulesMode::Extend).unwrap();
        assert_eq!(extended.rules.len(), shipped + 1);
        let overridden = extended.rules.iter().find(|r| r.id == "sshd-failed-password").unwrap();
        assert_eq!((overridden.threshold, overridden.window.as_secs()), (3, 60));
        let replaced = RuleSet::load(Some(&path), RulesMode::Replace).unwrap();
        assert_eq!(replaced.rules.len(), 2);
        let mut hits = Vec::new();
        replaced.match_web(b"POST /wp-login.php HTTP/1.1", b"", b"", &mut hits);
        assert_eq!(hits, [1]);
    }

    #[test]
    fn a_rule_too_large_for_the_regex_engine_is_named_with_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("huge.toml");
        // Each alternative alone is small; the 200,000 of them compile as one regex but not in the
        // set that matches every web rule in one pass.
        let alternatives: Vec<String> = (0..200_000).map(|i| format!("w{i}")).collect();
        let rule = format!(
            "[[rules]]\nid = \"web-probe-list\"\ndescription = \"d\"\nseverity = \"low\"\nkind = \"web\"\n\
             pattern = '(?:{})'\n",
            alternatives.join("|")
        );
        std::fs::write(&path, rule).unwrap();
        for mode in [RulesMode::Extend, RulesMode::Replace] {
            let err = RuleSet::load(Some(&path), mode).unwrap_err().to_string();
            assert!(err.contains("rule \"web-probe-list\"") && err.contains("huge.toml"), "{mode:?}: {err}");
            assert!(!err.contains("(web set)"), "{mode:?}: {err}");
        }
    }

    #[test]
    fn rules_that_fit_alone_but_not_together_name_the_one_that_overflows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lists.toml");
        let rule = |id: &str, prefix: &str| {
            let alternatives: Vec<String> = (0..100_000).map(|i| format!("{prefix}{i}")).collect();
            format!(
                "[[rules]]\nid = \"{id}\"\ndescription = \"d\"\nseverity = \"low\"\nkind = \"web\"\n\
                 pattern = '(?:{})'\n",
                alternatives.join("|")
            )
        };
        std::fs::write(&path, rule("web-list-a", "a") + &rule("web-list-b", "b") + &rule("web-list-c", "c")).unwrap();
        let err = RuleSet::load(Some(&path), RulesMode::Replace).unwrap_err().to_string();
        // a and b together are already too large: b is named, with the one rule before it.
        assert!(err.contains("lists.toml") && err.contains("rule \"web-list-b\""), "{err}");
        assert!(err.contains("together with the 1 rule(s) before it"), "{err}");
    }

    #[test]
    fn bad_rules_are_refused_naming_file_and_rule() {
        let cases = [
            (
                "[[rules]]\nid = \"a\"\ndescription = \"d\"\nseverity = \"low\"\nkind = \"sshd\"\npattern = 'Failed'\n",
                "<ADDR>",
            ),
            (
                "[[rules]]\nid = \"a\"\ndescription = \"d\"\nseverity = \"low\"\nkind = \"web\"\npattern = '(unclosed'\n",
                "pattern",
            ),
            (
                "[[rules]]\nid = \"a\"\ndescription = \"d\"\nseverity = \"bad\"\nkind = \"web\"\npattern = 'x'\n",
                "severity",
            ),
            (
                "[[rules]]\nid = \"a\"\ndescription = \"d\"\nseverity = \"low\"\nkind = \"web\"\npattern = 'x'\nthreshold = 0\n",
                "threshold",
            ),
            ("[[rules]]\nid = \"a b\"\ndescription = \"d\"\nseverity = \"low\"\nkind = \"web\"\npattern = 'x'\n", "id"),
        ];
        let dir = tempfile::tempdir().unwrap();
        for (text, expected) in cases {
            let path = dir.path().join("bad.toml");
            std::fs::write(&path, text).unwrap();
            let err = RuleSet::load(Some(&path), RulesMode::Extend).unwrap_err().to_string();
            assert!(err.contains("bad.toml") && err.contains(expected), "{text}: {err}");
        }
        let err = RuleSet::load(Some(&dir.path().join("missing.toml")), RulesMode::Extend).unwrap_err().to_string();
        assert!(err.contains("missing.toml"), "{err}");
    }
}
