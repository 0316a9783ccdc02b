//! The integrity collectors' configuration (`[[collectors]]`), as validated by `crate::config`.

/// A validated `[[collectors]]` table (see `crate::integrity` for the kinds).
#[derive(Debug, Clone, PartialEq)]
pub struct CollectorConfig {
    pub kind: String,
    /// Unique among the collectors; the kind by default.
    pub name: String,
    /// Absolute paths or globs (file kinds).
    pub paths: Vec<String>,
    /// Whether a directory in `paths` means its whole tree rather than its direct entries.
    pub recursive: bool,
    /// argv of each command (`command` kind).
    pub commands: Vec<Vec<String>>,
    /// Per command (`command` kind).
    pub timeout: std::time::Duration,
}

/// What the daemon's integrity worker needs of the configuration.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct WorkerSettings {
    pub(crate) collectors: Vec<CollectorConfig>,
    /// `watch`: paths the sensor watches besides the collectors' own.
    pub(crate) watch: Vec<std::path::PathBuf>,
    pub(crate) integrity_interval: std::time::Duration,
    pub(crate) verify_interval: std::time::Duration,
    /// Where the state database is.
    pub(crate) state_dir: std::path::PathBuf,
}
