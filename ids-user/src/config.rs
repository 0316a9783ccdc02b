//! Configuration: TOML parsed in two steps, raw (serde, unknown keys refused) then validated.
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::bounds;
use crate::time::ConfigDuration;

pub use crate::detect::config::{DetectConfig, JournalConfig, LogConfig, LogKind, RulesMode};
pub use crate::integrity::config::CollectorConfig;

pub const DEFAULT_CONFIG: &str = include_str!("default.toml");

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config {origin}: {message}")]
    Parse { origin: String, message: String },
    #[error("config {origin}: {key}: {message}")]
    Invalid { origin: String, key: &'static str, message: String },
    /// `index` counts `[[collectors]]` tables from 0; `line` is where the table starts.
    #[error("config {origin}: collectors[{index}].{key} (table at line {line}): {message}")]
    InvalidCollector { origin: String, index: usize, line: usize, key: &'static str, message: String },
    /// `index` counts `[[outputs]]` tables from 0.
    #[error("config {origin}: outputs[{index}] ({name:?}).{key}: {message}")]
    InvalidOutput { origin: String, index: usize, name: String, key: &'static str, message: String },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    // The sensor's three keys default to the embedded default's values, so that a file for a host
    // that only runs `ids serve` (or `ids client`) needs none of them.
    #[serde(default = "default_watch")]
    watch: Vec<PathBuf>,
    #[serde(default = "default_events_log")]
    events_log: String,
    #[serde(default = "default_state_dir")]
    state_dir: PathBuf,
    #[serde(default = "default_max_watched_inodes")]
    max_watched_inodes: u32,
    #[serde(default = "default_channel_capacity")]
    channel_capacity: usize,
    #[serde(default = "default_process_context")]
    process_context: bool,
    #[serde(default)]
    exclude_hooks: Vec<String>,
    #[serde(default = "default_integrity_interval")]
    integrity_interval: ConfigDuration,
    #[serde(default = "default_verify_interval")]
    verify_interval: ConfigDuration,
    #[serde(default)]
    collectors: Vec<toml::Spanned<RawCollector>>,
    #[serde(default)]
    xdp: crate::bans::config::RawXdp,
    #[serde(default)]
    bans: crate::bans::config::RawBans,
    #[serde(default)]
    servers: Vec<crate::tinyids::settings::RawServer>,
    #[serde(default)]
    serve: crate::tinyids::settings::RawServe,
    #[serde(default = "default_remote_check_interval")]
    remote_check_interval: ConfigDuration,
    #[serde(default)]
    logs: Vec<RawLog>,
    #[serde(default)]
    journal: Vec<RawJournal>,
    #[serde(default)]
    web_roots: Vec<PathBuf>,
    rules: Option<PathBuf>,
    #[serde(default)]
    rules_mode: RulesMode,
    fleet: Option<crate::fleet::config::RawFleet>,
    collect: Option<crate::fleet::config::RawCollect>,
    metrics: Option<crate::metrics::config::RawMetrics>,
    #[serde(default)]
    outputs: Vec<crate::output::config::RawOutput>,
}

/// One `[[logs]]` table: a log file the detectors follow.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    kind: LogKind,
    path: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJournal {
    kind: LogKind,
    namespace: Option<String>,
}

/// One `[[collectors]]` table; which settings a kind accepts is checked against its
/// `integrity::KindSpec`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCollector {
    kind: String,
    name: Option<String>,
    paths: Option<Vec<String>>,
    recursive: Option<bool>,
    commands: Option<Vec<RawCommand>>,
    timeout: Option<ConfigDuration>,
}

/// A command as an argv array, or as one string split into words like a POSIX shell would.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawCommand {
    Line(String),
    Argv(Vec<String>),
}

/// How long a `command` collector waits for each command unless `timeout` says otherwise.
pub const DEFAULT_COMMAND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

// The ranges of the top-level numbers (`crate::bounds`). Events queued between the readers and
// the writer: each takes memory up front.
const CHANNEL_CAPACITY: std::ops::RangeInclusive<usize> = 1..=4_194_304;
/// The kernel map of watched inodes is sized by it.
const MAX_WATCHED_INODES: std::ops::RangeInclusive<u32> = 1..=16_777_216;
/// `integrity_interval`, `verify_interval`, `remote_check_interval`: up to a year.
const INTERVAL: bounds::MaxDuration = bounds::YEAR;
/// A `command` collector's `timeout`: up to a day.
const COMMAND_TIMEOUT: bounds::MaxDuration =
    bounds::MaxDuration { max: std::time::Duration::from_secs(86_400), text: "1day" };

/// `watch`, `events_log` and `state_dir` when a file leaves them out: what the embedded default
/// (`ids config default`) sets (a test keeps the two equal).
pub const DEFAULT_WATCH: [&str; 5] = ["/etc", "/usr/bin", "/usr/sbin", "/usr/local/bin", "/root/.ssh"];
pub const DEFAULT_EVENTS_LOG: &str = "-";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/ids";

fn default_watch() -> Vec<PathBuf> {
    DEFAULT_WATCH.iter().map(PathBuf::from).collect()
}
fn default_events_log() -> String {
    DEFAULT_EVENTS_LOG.into()
}
fn default_state_dir() -> PathBuf {
    DEFAULT_STATE_DIR.into()
}
fn default_max_watched_inodes() -> u32 {
    262_144
}
fn default_process_context() -> bool {
    true
}

fn default_channel_capacity() -> usize {
    65_536
}
fn default_integrity_interval() -> ConfigDuration {
    ConfigDuration::secs(300)
}
fn default_verify_interval() -> ConfigDuration {
    ConfigDuration::secs(86_400)
}
fn default_remote_check_interval() -> ConfigDuration {
    ConfigDuration::secs(300)
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
    /// Whether events and alerts name their process (the process table runs).
    pub process_context: bool,
    /// `[xdp]`: interfaces of the XDP ban filter and SYN watcher, trusted addresses, pins.
    pub xdp: crate::bans::config::XdpConfig,
    /// `[bans]`: ban durations.
    pub bans: crate::bans::config::BansConfig,
    /// Hook sets whose name starts with one of these are never tried (e.g. "lsm", "tracepoint").
    pub exclude_hooks: Vec<String>,
    /// The `[[collectors]]` tables of `ids hash`, in file order; empty when there are none.
    pub collectors: Vec<CollectorConfig>,
    /// How often the daemon re-runs the collectors that are not about files.
    pub integrity_interval: std::time::Duration,
    /// How often the daemon rescans everything to catch changes the sensor missed.
    pub verify_interval: std::time::Duration,
    /// TinyIDS servers (`[[servers]]`) that `ids client` and the daemon CHECK the aggregate with.
    pub servers: Vec<crate::tinyids::settings::ServerEntry>,
    /// `ids serve` settings (`[serve]`).
    pub serve: crate::tinyids::settings::ServeConfig,
    /// How often the daemon CHECKs its aggregate with the servers besides after each change.
    pub remote_check_interval: std::time::Duration,
    /// Log sources, web roots, rules and ban settings of the detectors (`crate::detect`).
    pub detect: DetectConfig,
    /// `[fleet]`: the agent that sends this host's alerts to the collector; `None`: no fleet.
    pub fleet: Option<crate::fleet::FleetConfig>,
    /// `[collect]`: `ids collect` and `ids fleet ...` on the central host.
    pub collect: Option<crate::fleet::CollectConfig>,
    /// `[metrics]`: the Prometheus endpoint of the daemon; `None`: no endpoint.
    pub metrics: Option<crate::metrics::MetricsConfig>,
    /// `[[outputs]]`: files, syslog and webhooks that get the alerts, in file order.
    pub outputs: Vec<crate::output::OutputConfig>,
}

/// The environment variable naming the configuration file when `--config` does not.
pub const CONFIG_ENV: &str = "IDS_CONFIG";
/// The configuration file read when neither `--config` nor `IDS_CONFIG` names one, if it exists.
pub const SYSTEM_CONFIG: &str = "/etc/ids/ids.toml";

/// The configuration file of a command: `explicit` (`--config`), else `env` (`IDS_CONFIG`, unless
/// empty), else `system` if it exists; `None`: the embedded default.
fn locate_from(explicit: Option<&Path>, env: Option<std::ffi::OsString>, system: &Path) -> Option<PathBuf> {
    if let Some(path) = explicit {
        return Some(path.into());
    }
    if let Some(path) = env.filter(|value| !value.is_empty()) {
        return Some(path.into());
    }
    system.exists().then(|| system.into())
}

impl Config {
    /// The configuration file a command reads: `--config`, else `IDS_CONFIG`, else
    /// `/etc/ids/ids.toml` when it exists; `None`: the embedded default. A file named by
    /// `--config` or `IDS_CONFIG` that is missing is an error when loaded, not a fallback.
    pub fn locate(explicit: Option<&Path>) -> Option<PathBuf> {
        locate_from(explicit, std::env::var_os(CONFIG_ENV), Path::new(SYSTEM_CONFIG))
    }

    /// The file at `path`, or the embedded default when `path` is `None`.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        match path {
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
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
        bounds::check(raw.channel_capacity, CHANNEL_CAPACITY).map_err(|m| invalid("channel_capacity", m))?;
        let interval = |key, setting: &ConfigDuration| {
            setting.finite().and_then(|d| bounds::check_duration(d, INTERVAL)).map_err(|m| invalid(key, m))
        };
        let integrity_interval = interval("integrity_interval", &raw.integrity_interval)?;
        let verify_interval = interval("verify_interval", &raw.verify_interval)?;
        let remote_check_interval = interval("remote_check_interval", &raw.remote_check_interval)?;
        let servers = crate::tinyids::settings::validate_servers(&raw.servers).map_err(|m| invalid("servers", m))?;
        let serve = crate::tinyids::settings::validate_serve(&raw.serve).map_err(|m| invalid("serve", m))?;
        bounds::check(raw.max_watched_inodes, MAX_WATCHED_INODES).map_err(|m| invalid("max_watched_inodes", m))?;
        let collectors = raw
            .collectors
            .iter()
            .enumerate()
            .map(|(index, table)| validate_collector(index, table, text, origin))
            .collect::<Result<Vec<_>, _>>()?;
        for (index, collector) in collectors.iter().enumerate() {
            if collectors[..index].iter().any(|earlier| earlier.name == collector.name) {
                return Err(ConfigError::InvalidCollector {
                    origin: origin.into(),
                    index,
                    line: line_of(text, raw.collectors[index].span().start),
                    key: "name",
                    message: format!(
                        "{:?} is already the name of another collector; set a unique `name`",
                        collector.name
                    ),
                });
            }
        }
        let (xdp, bans) =
            crate::bans::config::validate(raw.xdp, raw.bans).map_err(|(key, message)| invalid(key, message))?;
        for log in &raw.logs {
            if !log.path.is_absolute() {
                return Err(invalid("logs", format!("path {} is not an absolute path", log.path.display())));
            }
        }
        for journal in &raw.journal {
            if journal.kind != LogKind::Sshd {
                return Err(invalid("journal", format!("kind {:?}: only sshd is read from the journal", journal.kind)));
            }
            if let Some(namespace) = &journal.namespace {
                let valid = !namespace.is_empty()
                    && namespace.len() <= 64
                    && namespace.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
                if !valid {
                    return Err(invalid(
                        "journal",
                        format!("namespace {namespace:?} is not a journald namespace name"),
                    ));
                }
            }
        }
        for root in &raw.web_roots {
            if !root.is_absolute() {
                return Err(invalid("web_roots", format!("{} is not an absolute path", root.display())));
            }
        }
        if bans.detect_duration > bans.max_duration {
            return Err(invalid("bans.detect_duration", "must not be longer than bans.max_duration".into()));
        }
        let fleet = raw.fleet.map(crate::fleet::config::validate_fleet).transpose().map_err(|(k, m)| invalid(k, m))?;
        let collect =
            raw.collect.map(crate::fleet::config::validate_collect).transpose().map_err(|(k, m)| invalid(k, m))?;
        let metrics = raw.metrics.map(crate::metrics::config::validate).transpose().map_err(|(k, m)| invalid(k, m))?;
        let outputs = crate::output::config::validate(&raw.outputs).map_err(|e| ConfigError::InvalidOutput {
            origin: origin.into(),
            index: e.index,
            name: e.name,
            key: e.key,
            message: e.message,
        })?;
        let detect = DetectConfig {
            logs: raw.logs.iter().map(|l| LogConfig { kind: l.kind, path: l.path.clone() }).collect(),
            journal: raw
                .journal
                .iter()
                .map(|j| JournalConfig { kind: j.kind, namespace: j.namespace.clone() })
                .collect(),
            web_roots: raw.web_roots,
            rules: raw.rules,
            rules_mode: raw.rules_mode,
            ban_duration: bans.detect_duration,
        };
        Ok(Self {
            detect,
            fleet,
            collect,
            metrics,
            outputs,
            watch: raw.watch,
            events_log,
            state_dir: raw.state_dir,
            max_watched_inodes: raw.max_watched_inodes,
            channel_capacity: raw.channel_capacity,
            process_context: raw.process_context,
            xdp,
            bans,
            exclude_hooks: raw.exclude_hooks,
            collectors,
            integrity_interval,
            verify_interval,
            servers,
            serve,
            remote_check_interval,
        })
    }

    pub fn control_socket(&self) -> PathBuf {
        self.state_dir.join("control.sock")
    }

    /// What the sensor needs, watching `watch` (the paths every consumer asked for).
    pub(crate) fn sensor(&self, watch: Vec<PathBuf>) -> crate::sensor::SensorConfig {
        crate::sensor::SensorConfig {
            watch,
            max_watched_inodes: self.max_watched_inodes,
            exclude_hooks: self.exclude_hooks.clone(),
            xdp: self.xdp.clone(),
        }
    }

    /// What the integrity worker needs.
    pub fn integrity(&self) -> crate::integrity::config::WorkerSettings {
        crate::integrity::config::WorkerSettings {
            collectors: self.collectors.clone(),
            watch: self.watch.clone(),
            integrity_interval: self.integrity_interval,
            verify_interval: self.verify_interval,
            state_dir: self.state_dir.clone(),
        }
    }

    /// The state database (`crate::store`).
    pub fn database(&self) -> PathBuf {
        crate::store::db_path(&self.state_dir)
    }
}

/// 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset).map_or(0, |before| before.matches('\n').count()) + 1
}

fn validate_collector(
    index: usize,
    table: &toml::Spanned<RawCollector>,
    text: &str,
    origin: &str,
) -> Result<CollectorConfig, ConfigError> {
    let raw = table.get_ref();
    let invalid = |key, message: String| ConfigError::InvalidCollector {
        origin: origin.into(),
        index,
        line: line_of(text, table.span().start),
        key,
        message,
    };
    let registry = crate::integrity::Registry::with_builtin();
    let Some(spec) = registry.spec(&raw.kind) else {
        let kinds: Vec<&str> = registry.kinds().collect();
        return Err(invalid("kind", format!("unknown kind {:?}; known: {}", raw.kind, kinds.join(", "))));
    };
    let given = [
        ("paths", raw.paths.is_some()),
        ("recursive", raw.recursive.is_some()),
        ("commands", raw.commands.is_some()),
        ("timeout", raw.timeout.is_some()),
    ];
    for (key, is_set) in given {
        if is_set && !spec.settings.contains(&key) {
            let accepted = if spec.settings.is_empty() { "none".to_string() } else { spec.settings.join(", ") };
            return Err(invalid(key, format!("not a setting of kind {:?} (its settings: {accepted})", raw.kind)));
        }
    }
    let name = raw.name.clone().unwrap_or_else(|| raw.kind.clone());
    if name.is_empty() {
        return Err(invalid("name", "empty".into()));
    }
    let paths = raw.paths.clone().unwrap_or_default();
    if spec.settings.contains(&"paths") && paths.is_empty() {
        return Err(invalid("paths", format!("kind {:?} needs at least one path", raw.kind)));
    }
    for path in &paths {
        if !path.starts_with('/') {
            return Err(invalid("paths", format!("{path} is not an absolute path")));
        }
        crate::integrity::paths::check_pattern(path).map_err(|e| invalid("paths", e.to_string()))?;
    }
    let mut commands = Vec::new();
    for (number, command) in raw.commands.iter().flatten().enumerate() {
        let argv = match command {
            RawCommand::Argv(argv) => argv.clone(),
            RawCommand::Line(line) => {
                shell_words::split(line).map_err(|e| invalid("commands", format!("entry {number} {line:?}: {e}")))?
            }
        };
        if argv.first().is_none_or(|program| program.is_empty()) {
            return Err(invalid("commands", format!("entry {number} is empty")));
        }
        commands.push(argv);
    }
    if spec.settings.contains(&"commands") && commands.is_empty() {
        return Err(invalid("commands", format!("kind {:?} needs at least one command", raw.kind)));
    }
    let timeout = raw
        .timeout
        .as_ref()
        .map_or(Ok(DEFAULT_COMMAND_TIMEOUT), ConfigDuration::finite)
        .and_then(|d| bounds::check_duration(d, COMMAND_TIMEOUT))
        .map_err(|m| invalid("timeout", m))?;
    Ok(CollectorConfig {
        kind: raw.kind.clone(),
        name,
        paths,
        recursive: raw.recursive.unwrap_or(false),
        commands,
        timeout,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tinyids_servers_and_serve_tables_are_read() {
        const MINIMAL: &str = "watch = []\nevents_log = \"-\"\nstate_dir = \"/x\"";
        let text = format!(
            "{}\nremote_check_interval = 7\n[[servers]]\nname = \"a\"\nhost = \"127.0.0.1\"\n[servers.tls]\nfingerprint = \"{}\"\n\n[serve]\nlisten = \"127.0.0.1:10500\"\nread_timeout = 2.5\n[serve.tls]\ncert = \"/c\"\nkey = \"/k\"\n",
            MINIMAL,
            "ab".repeat(32)
        );
        let config = Config::parse(&text, "t.toml").unwrap();
        assert_eq!(config.remote_check_interval, std::time::Duration::from_secs(7));
        assert_eq!(config.servers.len(), 1);
        assert_eq!(config.servers[0].port, crate::tinyids::DEFAULT_PORT);
        assert_eq!(config.servers[0].tls.as_ref().unwrap().fingerprint, Some([0xab; 32]));
        assert_eq!(config.serve.read_timeout, std::time::Duration::from_millis(2500));
        assert!(config.serve.tls.is_some());
        let bad = format!("{MINIMAL}\n[[servers]]\nname = \"a\"\nhost = \"h\"\nsecret = 1\n");
        assert!(Config::parse(&bad, "t.toml").unwrap_err().to_string().contains("secret"));
        let bad = format!("{MINIMAL}\n[serve]\nmax_connections = 0\n");
        assert!(Config::parse(&bad, "t.toml").unwrap_err().to_string().contains("serve.max_connections"));
        let bad = format!("{MINIMAL}\n[serve]\nmax_connections = 100000000\n");
        assert!(Config::parse(&bad, "t.toml").unwrap_err().to_string().contains("outside"));
    }

    #[test]
    fn the_metrics_endpoint_is_off_unless_its_listen_address_is_given_and_valid() {
        assert_eq!(Config::parse("", "t.toml").unwrap().metrics, None);
        let config = Config::parse("[metrics]\nlisten = \"127.0.0.1:9464\"\n", "t.toml").unwrap();
        assert_eq!(config.metrics.unwrap().listen, "127.0.0.1:9464".parse().unwrap());
        let config = Config::parse("[metrics]\nlisten = \"[::1]:9464\"\n", "t.toml").unwrap();
        assert_eq!(config.metrics.unwrap().listen, "[::1]:9464".parse().unwrap());
        for bad in ["localhost:9464", "127.0.0.1", "127.0.0.1:99999", ""] {
            let text = format!("[metrics]\nlisten = {bad:?}\n");
            let error = Config::parse(&text, "t.toml").unwrap_err().to_string();
            assert!(error.contains("metrics.listen") && error.contains("not a socket address"), "{bad:?}: {error}");
        }
        let error = Config::parse("[metrics]\n", "t.toml").unwrap_err().to_string();
        assert!(error.contains("listen"), "{error}");
        let error = Config::parse("[metrics]\nlisten = \"127.0.0.1:1\"\npath = \"/x\"\n", "t.toml").unwrap_err();
        assert!(error.to_string().contains("path"), "{error}");
    }

    #[test]
    fn config_file_is_the_flag_then_the_environment_then_the_system_file_then_none() {
        let dir = tempfile::tempdir().unwrap();
        let system = dir.path().join("ids.toml");
        let (flag, env) = (Path::new("/flag.toml"), Some(std::ffi::OsString::from("/env.toml")));
        assert_eq!(locate_from(Some(flag), env.clone(), &system), Some(flag.into()));
        assert_eq!(locate_from(None, env.clone(), &system), Some(PathBuf::from("/env.toml")));
        assert_eq!(locate_from(None, None, &system), None, "a missing system file is not read");
        std::fs::write(&system, "").unwrap();
        assert_eq!(locate_from(None, env, &system), Some(PathBuf::from("/env.toml")));
        assert_eq!(locate_from(None, Some("".into()), &system), Some(system.clone()), "empty IDS_CONFIG");
        assert_eq!(locate_from(None, None, &system), Some(system));
    }

    #[test]
    fn embedded_default_parses() {
        let config = Config::load(None).unwrap();
        assert_eq!(config.events_log, EventsLog::Stdout);
        assert!(config.watch.iter().any(|p| p == Path::new("/etc")));
        // A first run puts no filter on the host's interfaces unasked.
        assert_eq!(config.xdp.interfaces, crate::bans::config::XdpInterfaces::None);
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
        let err =
            Config::parse("watch = [\"etc\"]\nevents_log = \"-\"\nstate_dir = \"/x\"", "t").unwrap_err().to_string();
        assert!(err.contains("watch") && err.contains("not an absolute path"), "{err}");
    }

    #[test]
    fn sensor_keys_left_out_take_the_embedded_defaults() {
        let embedded = Config::load(None).unwrap();
        let config = Config::parse("[serve]\nlisten = \"127.0.0.1:10500\"\n", "server-only.toml").unwrap();
        assert_eq!(config.watch, embedded.watch);
        assert_eq!(config.events_log, embedded.events_log);
        assert_eq!(config.state_dir, embedded.state_dir);
        assert_eq!(config.state_dir, Path::new("/var/lib/ids"));
        assert_eq!(Config::parse("", "empty.toml").unwrap().watch, embedded.watch);
    }

    #[test]
    fn sensor_keys_given_are_still_checked() {
        let err = Config::parse("events_log = \"\"\n", "t").unwrap_err().to_string();
        assert!(err.contains("events_log") && err.contains("empty"), "{err}");
        let err = Config::parse("state_dir = \"var/lib/ids\"\n", "t").unwrap_err().to_string();
        assert!(err.contains("state_dir") && err.contains("not an absolute path"), "{err}");
        let err = Config::parse("watch = \"/etc\"\n", "t").unwrap_err().to_string();
        assert!(err.contains("watch"), "{err}");
        let err = Config::parse("state_dir = 3\n", "t").unwrap_err().to_string();
        assert!(err.contains("state_dir") && err.contains("line 1"), "{err}");
    }

    const BASE: &str = "watch = []\nevents_log = \"-\"\nstate_dir = \"/x\"\n";

    #[test]
    fn xdp_and_bans_sections_are_read_and_bad_values_named() {
        let config = Config::parse(
            &format!(
                "{BASE}[xdp]\ninterfaces = [\"eth0\"]\ntrusted = [\"10.0.0.0/8\"]\n[bans]\ndefault_duration = \"10m\"\n"
            ),
            "t",
        )
        .unwrap();
        assert_eq!(config.xdp.interfaces, crate::bans::config::XdpInterfaces::Named(vec!["eth0".into()]));
        assert_eq!(config.xdp.trusted[0].to_string(), "10.0.0.0/8");
        assert_eq!(config.bans.default_duration, Some(std::time::Duration::from_secs(600)));
        let defaults = Config::parse(BASE, "t").unwrap();
        assert!(defaults.xdp.trusted.iter().any(|t| t.to_string() == "127.0.0.0/8"));
        let err = Config::parse(&format!("{BASE}[xdp]\ntrusted = [\"10.0.0.0/33\"]\n"), "t").unwrap_err().to_string();
        assert!(err.contains("xdp.trusted") && err.contains("33"), "{err}");
        let err = Config::parse(&format!("{BASE}[bans]\ndefault_duration = \"-1h\"\n"), "t").unwrap_err().to_string();
        assert!(err.contains("bans.default_duration") && err.contains("negative"), "{err}");
    }

    /// Every duration setting of the file, with `{}` where its value goes: `strings[i]` and
    /// `seconds[i]` say the same duration.
    const EVERY_DURATION: &str = "integrity_interval = {0}\nverify_interval = {1}\nremote_check_interval = {2}\n\
        [xdp]\nscan_window = {3}\n[bans]\ndefault_duration = {4}\nscan_duration = {5}\nmax_duration = {6}\n\
        detect_duration = {7}\n[serve]\nread_timeout = {8}\nfailure_window = {9}\nlockout = {10}\n\
        [fleet]\nurl = \"amqp://a@127.0.0.1/%2f\"\nheartbeat = {11}\n\
        [collect]\nurl = \"amqp://c@127.0.0.1/%2f\"\nsilent_after = {12}\nrule_window = {13}\nrule_ban_for = {14}\n\
        [[collectors]]\nkind = \"command\"\ncommands = [\"true\"]\ntimeout = {15}\n";

    fn every_duration(values: &[&str]) -> String {
        values
            .iter()
            .enumerate()
            .fold(EVERY_DURATION.to_string(), |text, (i, value)| text.replace(&format!("{{{i}}}"), value))
    }

    #[test]
    fn every_duration_reads_the_same_as_a_string_with_a_unit_or_as_seconds() {
        let strings = [
            "\"5m\"",
            "\"1d\"",
            "\"90s\"",
            "\"10s\"",
            "\"2h\"",
            "\"1h 30m\"",
            "\"7d\"",
            "\"10m\"",
            "\"2500ms\"",
            "\"15m\"",
            "\"1h\"",
            "\"30s\"",
            "\"2m\"",
            "\"10m\"",
            "\"1h\"",
            "\"20s\"",
        ];
        let seconds = [
            "300", "86400", "90", "10", "7200", "5400", "604800", "600", "2.5", "900", "3600", "30", "120", "600",
            "3600", "20",
        ];
        let from_strings = Config::parse(&format!("{BASE}{}", every_duration(&strings)), "strings.toml").unwrap();
        let from_seconds = Config::parse(&format!("{BASE}{}", every_duration(&seconds)), "seconds.toml").unwrap();
        assert_eq!(format!("{from_strings:?}"), format!("{from_seconds:?}"));
        let secs = std::time::Duration::from_secs;
        assert_eq!(from_strings.integrity_interval, secs(300));
        assert_eq!(from_strings.bans.scan_duration, Some(secs(5400)));
        assert_eq!(from_strings.serve.read_timeout, std::time::Duration::from_millis(2500));
        assert_eq!(from_strings.collect.as_ref().unwrap().rule_ban_for, Some(secs(3600)));
        assert_eq!(from_strings.collectors[0].timeout, secs(20));
    }

    #[test]
    fn a_bad_duration_names_the_file_and_the_key() {
        let mut values = [
            "\"5m\"", "\"1d\"", "\"90s\"", "\"10s\"", "\"2h\"", "\"1h\"", "\"7d\"", "\"10m\"", "\"10s\"", "\"15m\"",
            "\"1h\"", "\"30s\"", "\"2m\"", "\"10m\"", "\"1h\"", "\"20s\"",
        ];
        let keys = [
            "integrity_interval",
            "verify_interval",
            "remote_check_interval",
            "xdp.scan_window",
            "bans.default_duration",
            "bans.scan_duration",
            "bans.max_duration",
            "bans.detect_duration",
            "serve.read_timeout",
            "serve.failure_window",
            "serve.lockout",
            "fleet.heartbeat",
            "collect.silent_after",
            "collect.rule_window",
            "collect.rule_ban_for",
            "collectors[0].timeout",
        ];
        for (index, key) in keys.iter().enumerate() {
            let good = values[index];
            values[index] = "\"5x\"";
            let error = Config::parse(&format!("{BASE}{}", every_duration(&values)), "/etc/ids/bad.toml")
                .unwrap_err()
                .to_string();
            let expected = r#"invalid duration "5x": expected a number and a unit (s, m, h, d), e.g. 90s, 10m, 1h"#;
            assert!(error.starts_with("config /etc/ids/bad.toml: "), "{key}: {error}");
            assert!(error.contains(key) && error.ends_with(expected), "{key}: {error}");
            assert_eq!(error.matches("invalid duration").count(), 1, "{error}");
            values[index] = good;
        }
        let error = Config::parse(&format!("{BASE}[bans]\nmax_duration = \"permanent\"\n"), "t.toml").unwrap_err();
        assert_eq!(
            error.to_string(),
            "config t.toml: bans.max_duration: must be a finite duration (\"permanent\" is not allowed here)"
        );
    }

    #[test]
    fn no_collectors_means_none() {
        let config = Config::parse(BASE, "t").unwrap();
        assert!(config.collectors.is_empty());
        assert_eq!(config.integrity_interval, std::time::Duration::from_secs(300));
        assert_eq!(config.verify_interval, std::time::Duration::from_secs(86_400));
    }

    #[test]
    fn intervals_are_read_and_zero_is_refused() {
        let config = Config::parse(&format!("{BASE}integrity_interval = 5\nverify_interval = 60\n"), "t").unwrap();
        assert_eq!(config.integrity_interval, std::time::Duration::from_secs(5));
        assert_eq!(config.verify_interval, std::time::Duration::from_secs(60));
        let err = Config::parse(&format!("{BASE}verify_interval = 0\n"), "t").unwrap_err().to_string();
        assert!(err.contains("verify_interval"), "{err}");
    }

    #[test]
    fn collectors_are_parsed_with_defaults() {
        let text = format!(
            "{BASE}[[collectors]]\nkind = \"file_contents\"\npaths = [\"/etc/*.conf\", \"/usr/bin\"]\nrecursive = true\n\
             [[collectors]]\nkind = \"command\"\ncommands = [\"iptables-save -t 'filter'\", [\"nft\", \"list ruleset\"]]\n\
             [[collectors]]\nkind = \"kernel_modules\"\nname = \"modules\"\n"
        );
        let collectors = Config::parse(&text, "t").unwrap().collectors;
        assert_eq!(collectors.len(), 3);
        assert_eq!(collectors[0].name, "file_contents");
        assert!(collectors[0].recursive);
        assert_eq!(collectors[1].commands, [vec!["iptables-save", "-t", "filter"], vec!["nft", "list ruleset"]]);
        assert_eq!(collectors[1].timeout, DEFAULT_COMMAND_TIMEOUT);
        assert_eq!(collectors[2].name, "modules");
    }

    #[test]
    fn detection_settings_are_read_and_checked() {
        let text = format!(
            "{BASE}web_roots = [\"/srv/www\"]\nrules = \"/etc/ids/rules.toml\"\nrules_mode = \"replace\"\n\
             [[logs]]\nkind = \"sshd\"\npath = \"/var/log/auth.log\"\n[xdp]\ntrusted = [\"10.1.0.0/16\", \"192.0.2.7\"]\n"
        );
        let config = Config::parse(&text, "t").unwrap();
        let detect = &config.detect;
        assert_eq!(detect.logs, [LogConfig { kind: LogKind::Sshd, path: "/var/log/auth.log".into() }]);
        assert_eq!(detect.rules_mode, RulesMode::Replace);
        // The detectors' bans are refused for these by the ban path ([xdp] trusted).
        let trusted: Vec<ipnet::IpNet> = config.xdp.trusted.iter().map(|net| net.ipnet()).collect();
        assert_eq!(trusted.len(), 2);
        assert!(trusted[1].contains(&"192.0.2.7".parse::<std::net::IpAddr>().unwrap()));
        let default = Config::parse(BASE, "t").unwrap().xdp;
        assert!(default.trusted.iter().any(|n| n.ipnet().contains(&"127.0.0.1".parse::<std::net::IpAddr>().unwrap())));
        let err = Config::parse(&format!("{BASE}[xdp]\ntrusted = [\"10.0.0.0/99\"]\n"), "t").unwrap_err().to_string();
        assert!(err.contains("xdp.trusted") && err.contains("10.0.0.0/99"), "{err}");
        let err =
            Config::parse(&format!("{BASE}[[logs]]\nkind = \"ftp\"\npath = \"/x\"\n"), "t").unwrap_err().to_string();
        assert!(err.contains("ftp"), "{err}");
    }

    fn collector_error(table: &str) -> String {
        Config::parse(&format!("{BASE}\n[[collectors]]\n{table}"), "c.toml").unwrap_err().to_string()
    }

    #[test]
    fn collector_errors_name_the_key_and_line() {
        let err = collector_error("kind = \"file_contents\"\npathz = [\"/etc\"]\n");
        assert!(err.contains("pathz") && err.contains("line 7") && err.contains("c.toml"), "{err}");
        let err = collector_error("kind = \"no_such\"\n");
        assert!(err.contains("collectors[0].kind") && err.contains("no_such") && err.contains("line 5"), "{err}");
        let err = collector_error("kind = \"file_contents\"\npaths = [\"/etc/[\"]\n");
        assert!(err.contains("collectors[0].paths") && err.contains("/etc/["), "{err}");
        let err = collector_error("kind = \"file_metadata\"\npaths = [\"etc\"]\n");
        assert!(err.contains("collectors[0].paths") && err.contains("not an absolute path"), "{err}");
        let err = collector_error("kind = \"file_metadata\"\n");
        assert!(err.contains("collectors[0].paths"), "{err}");
        let err = collector_error("kind = \"kernel_modules\"\ntimeout = 3\n");
        assert!(err.contains("collectors[0].timeout") && err.contains("not a setting"), "{err}");
        let err = collector_error("kind = \"command\"\ncommands = [\"echo 'open\"]\n");
        assert!(err.contains("collectors[0].commands"), "{err}");
        let err = collector_error("kind = \"command\"\ncommands = [\"true\"]\ntimeout = 0\n");
        assert!(err.contains("collectors[0].timeout"), "{err}");
        let err = collector_error("kind = \"kernel_modules\"\n[[collectors]]\nkind = \"kernel_modules\"\n");
        assert!(err.contains("collectors[1].name") && err.contains("line 7"), "{err}");
    }

    /// Each numeric and duration setting: a value outside its range (refused with an error
    /// naming the key and the range) and the two ends of the range (accepted).
    const RANGES: &[(&str, &str, &str, &[&str])] = &[
        // (setting as written, key named in the error, range named, accepted values)
        ("channel_capacity = 9223372036854775807", "channel_capacity", "1..=4194304", &["1", "4194304"]),
        ("channel_capacity = 0", "channel_capacity", "1..=4194304", &[]),
        ("max_watched_inodes = 0", "max_watched_inodes", "1..=16777216", &["1", "16777216"]),
        ("max_watched_inodes = 4294967295", "max_watched_inodes", "1..=16777216", &[]),
        ("integrity_interval = 9223372036854775807", "integrity_interval", "1s..=365days", YEAR),
        ("integrity_interval = 0", "integrity_interval", "1s..=365days", &[]),
        ("integrity_interval = \"366d\"", "integrity_interval", "1s..=365days", &[]),
        ("verify_interval = 9223372036854775807", "verify_interval", "1s..=365days", YEAR),
        ("remote_check_interval = 9223372036854775807", "remote_check_interval", "1s..=365days", YEAR),
        ("[serve]\nlockout = 9223372036854775807", "serve.lockout", "1s..=365days", YEAR),
        ("[serve]\nlockout = 0", "serve.lockout", "1s..=365days", &[]),
        ("[serve]\nfailure_window = 9223372036854775807", "serve.failure_window", "1s..=365days", YEAR),
        ("[serve]\nmax_failures = 4294967295", "serve.max_failures", "1..=1000000", &["1", "1000000"]),
        ("[serve]\nmax_line = 63", "serve.max_line", "64..=1048576", &["64", "1048576"]),
        ("[serve]\nread_timeout = 1e300", "serve.read_timeout", "(0, 1h]", &["0.001", "3600", "\"1ms\"", "\"1h\""]),
        ("[serve]\nmax_connections = 0", "serve.max_connections", "1..=1000000", &["1", "1000000"]),
        (
            "[serve]\nmax_connections_per_address = 1000001",
            "serve.max_connections_per_address",
            "1..=1000000",
            &["1", "1000000"],
        ),
        ("[xdp]\nscan_ports = 65537", "xdp.scan_ports", "0..=65536", &["0", "65536"]),
        ("[xdp]\nflood_syns = 4294967295", "xdp.flood_syns", "0..=1000000000", &["0", "1000000000"]),
        ("[xdp]\nscan_window = \"2d\"", "xdp.scan_window", "1s..=1day", &["\"1s\"", "\"1d\""]),
        (
            "[bans]\ndefault_duration = \"500000y\"",
            "bans.default_duration",
            "1s..=3650days",
            &["\"1s\"", "\"3650d\"", "\"permanent\""],
        ),
        ("[bans]\nscan_duration = \"3651d\"", "bans.scan_duration", "1s..=3650days", &["\"3650d\""]),
        ("[bans]\nmax_duration = \"500000y\"", "bans.max_duration", "1s..=3650days", &["\"3650d\""]),
        ("[bans]\ndetect_duration = \"3651d\"", "bans.detect_duration", "1s..=3650days", &["\"1s\""]),
        (
            "[[collectors]]\nkind = \"command\"\ncommands = [\"true\"]\ntimeout = 9223372036854775807",
            "collectors[0].timeout",
            "1s..=1day",
            &["1", "86400", "\"1s\"", "\"1d\""],
        ),
    ];

    /// The ends of a range of up to a year, as seconds and as strings.
    const YEAR: &[&str] = &["1", "31536000", "\"1s\"", "\"365d\""];

    #[test]
    fn every_numeric_setting_is_refused_outside_its_range_naming_key_and_range() {
        for (setting, key, range, accepted) in RANGES {
            let text = format!("{BASE}{setting}\n");
            let error = match Config::parse(&text, "t.toml") {
                Ok(_) => panic!("{setting:?} was accepted"),
                Err(e) => e.to_string(),
            };
            assert!(
                error.contains(key) && error.contains(range),
                "{setting:?}: the error names no {key} {range}: {error}"
            );
            let (name, _) = setting.rsplit_once(" = ").unwrap();
            for value in *accepted {
                let text = format!("{BASE}{name} = {value}\n");
                if let Err(e) = Config::parse(&text, "t.toml") {
                    panic!("{name} = {value} is within the range but refused: {e}");
                }
            }
        }
    }
}
