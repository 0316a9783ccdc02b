//! The detectors' configuration (`[[logs]]`, `[[journal]]`, `web_roots`, `rules`), as validated by
//! `crate::config`.
use std::path::PathBuf;

use serde::Deserialize;

/// The format of a followed log, which decides the rules that apply to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogKind {
    Sshd,
    Nginx,
    Apache,
}

impl LogKind {
    pub fn name(self) -> &'static str {
        match self {
            LogKind::Sshd => "sshd",
            LogKind::Nginx => "nginx",
            LogKind::Apache => "apache",
        }
    }
}

/// Whether a `rules` file adds to the shipped rules (a rule with a shipped rule's id replaces
/// it) or replaces them all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RulesMode {
    #[default]
    Extend,
    Replace,
}

/// One `[[journal]]` table: messages of the systemd journal the detectors follow.
/// A validated `[[journal]]` table: the messages of the programs of `kind` (sshd: processes
/// named `sshd` or `sshd-session`, a name the journal takes from the kernel, not from the
/// message) in the system journal or in journald namespace `namespace`.
#[derive(Debug, Clone, PartialEq)]
pub struct JournalConfig {
    pub kind: LogKind,
    pub namespace: Option<String>,
}

/// A validated `[[logs]]` table.
#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig {
    pub kind: LogKind,
    pub path: PathBuf,
}

/// Settings of the detectors (`crate::detect`).
#[derive(Debug, Clone, PartialEq)]
pub struct DetectConfig {
    pub logs: Vec<LogConfig>,
    pub journal: Vec<JournalConfig>,
    pub web_roots: Vec<PathBuf>,
    pub rules: Option<PathBuf>,
    pub rules_mode: RulesMode,
    /// Duration of a first ban by a detector (`[bans] detect_duration`); the ban path doubles it
    /// for each earlier offence of the address, up to `[bans] max_duration`.
    pub ban_duration: std::time::Duration,
}
