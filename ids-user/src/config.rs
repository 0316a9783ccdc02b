//! Configuration: TOML parsed in two steps, raw (serde, unknown keys refused) then validated.
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub const DEFAULT_CONFIG: &str = include_str!("default.toml");

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config {origin}: {message}")]
    Parse { origin: String, message: String },
    #[error("config {origin}: {key}: {message}")]
    Invalid { origin: String, key: &'static str, message: String },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    watch: Vec<PathBuf>,
    events_log: String,
    state_dir: PathBuf,
    #[serde(default = "default_max_watched_inodes")]
    max_watched_inodes: u32,
    #[serde(default = "default_channel_capacity")]
    channel_capacity: usize,
    #[serde(default)]
    interfaces: Vec<String>,
    #[serde(default)]
    exclude_hooks: Vec<String>,
}

fn default_max_watched_inodes() -> u32 {
    262_144
}
fn default_channel_capacity() -> usize {
    65_536
}

#[derive(Debug, Clone, PartialEq)]
pub enum EventsLog {
    Stdout,
    File(PathBuf),
}

#[derive(Debug, Clone)]
pub struct Config {
    pub watch: Vec<PathBuf>,
    pub events_log: EventsLog,
    pub state_dir: PathBuf,
    pub max_watched_inodes: u32,
    pub channel_capacity: usize,
    pub interfaces: Vec<String>,
    /// Hook sets whose name starts with one of these are never tried (e.g. "lsm", "tracepoint").
    pub exclude_hooks: Vec<String>,
}

impl Config {
    /// The file at `path`, or the embedded default when `path` is `None`.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        match path {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|source| ConfigError::Read { path: path.into(), source })?;
                Self::parse(&text, &path.display().to_string())
            }
            None => Self::parse(DEFAULT_CONFIG, "(embedded default)"),
        }
    }

    /// `origin` names the input in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            origin: origin.to_string(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let invalid = |key, message: String| ConfigError::Invalid { origin: origin.into(), key, message };
        for path in &raw.watch {
            if !path.is_absolute() {
                return Err(invalid("watch", format!("{} is not an absolute path", path.display())));
            }
        }
        let events_log = match raw.events_log.as_str() {
            "-" => EventsLog::Stdout,
            "" => return Err(invalid("events_log", "empty; use \"-\" for standard output".into())),
            path => EventsLog::File(path.into()),
        };
        if !raw.state_dir.is_absolute() {
            return Err(invalid("state_dir", format!("{} is not an absolute path", raw.state_dir.display())));
        }
        if raw.channel_capacity == 0 {
            return Err(invalid("channel_capacity", "must be at least 1".into()));
        }
        if raw.max_watched_inodes == 0 {
            return Err(invalid("max_watched_inodes", "must be at least 1".into()));
        }
        Ok(Self {
            watch: raw.watch,
            events_log,
            state_dir: raw.state_dir,
            max_watched_inodes: raw.max_watched_inodes,
            channel_capacity: raw.channel_capacity,
            interfaces: raw.interfaces,
            exclude_hooks: raw.exclude_hooks,
        })
    }

    pub fn control_socket(&self) -> PathBuf {
        self.state_dir.join("control.sock")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_parses() {
        let config = Config::load(None).unwrap();
        assert_eq!(config.events_log, EventsLog::Stdout);
        assert!(config.watch.iter().any(|p| p == Path::new("/etc")));
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let text = "watch = []\nevents_log = \"-\"\nstate_dir = \"/tmp/x\"\nwatchh = [\"/etc\"]\n";
        let err = Config::parse(text, "test.toml").unwrap_err().to_string();
        assert!(err.contains("watchh"), "{err}");
        assert!(err.contains("line 4"), "{err}");
        assert!(err.contains("test.toml"), "{err}");
    }

    #[test]
    fn bad_toml_is_an_error_with_its_line() {
        let err = Config::parse("watch = [\n\"/etc\"\nevents_log = 3", "bad.toml").unwrap_err().to_string();
        assert!(err.contains("bad.toml") && err.contains("line"), "{err}");
    }

    #[test]
    fn relative_watch_path_is_refused() {
        let err = Config::parse("watch = [\"etc\"]\nevents_log = \"-\"\nstate_dir = \"/x\"", "t")
            .unwrap_err()
            .to_string();
        assert!(err.contains("watch") && err.contains("not an absolute path"), "{err}");
    }

    #[test]
    fn missing_key_is_named() {
        let err = Config::parse("watch = []\nstate_dir = \"/x\"", "t").unwrap_err().to_string();
        assert!(err.contains("events_log"), "{err}");
    }
}
