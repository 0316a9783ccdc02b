//! `[fleet]` (the agent in `ids run`) and `[collect]` (`ids collect`, `ids fleet ...`).
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::bounds;
use crate::time::ConfigDuration;

/// How to reach and log in to the broker: shared by the agent, the collector and the CLI.
#[derive(Debug, Clone, PartialEq)]
pub struct BrokerConfig {
    /// `amqp://USER@HOST:PORT/VHOST` or `amqps://...`; never holds a password.
    pub url: String,
    /// The password of the URL's user (first line of the file); `None` with a client certificate
    /// (EXTERNAL) or for a user without one.
    pub password_file: Option<PathBuf>,
    pub tls: TlsFiles,
}

/// `[fleet.tls]` / `[collect.tls]`: PEM files.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The CA that signed the broker's certificate (besides the system's).
    pub ca: Option<PathBuf>,
    /// A client certificate and its key: the broker authenticates the agent by it (EXTERNAL)
    /// when no password is given.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FleetConfig {
    pub broker: BrokerConfig,
    /// This host's id in every message; `/etc/machine-id` when not set.
    pub host_id: Option<String>,
    pub heartbeat: Duration,
    /// Alerts kept unsent while the broker cannot be reached; beyond this the oldest are
    /// dropped and a gap record says which.
    pub max_backlog: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CollectConfig {
    pub broker: BrokerConfig,
    /// Where the collector stores what it receives.
    pub database: CentralDatabase,
    /// A host is silent after this long without a heartbeat; `None`: three of its own heartbeat
    /// intervals.
    pub silent_after: Option<Duration>,
    /// Fleet rule: an address alerted on by `rule_hosts` hosts within `rule_window` is banned
    /// fleet-wide for `rule_ban_for` (0 hosts: the rule is off).
    pub rule_hosts: u32,
    pub rule_window: Duration,
    pub rule_ban_for: Option<Duration>,
    /// Refuse a message whose `host` is not the broker-validated `user_id` of its publisher.
    pub verify_host: bool,
    /// `[collect.web]`: the console; `None`: not served.
    pub web: Option<WebConfig>,
}

/// `[collect.web]`: the web console `ids collect` serves (docs/console.md).
#[derive(Debug, Clone, PartialEq)]
pub struct WebConfig {
    pub listen: std::net::SocketAddr,
    /// Certificate and key (PEM), and optionally the CA whose client certificates log in without
    /// a password. `None` only on a loopback address (`plain_http = true`).
    pub tls: Option<crate::tinyids::settings::ServeTls>,
    /// How long a login lasts.
    pub session_ttl: Duration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawWeb {
    #[serde(default = "default_web_listen")]
    listen: String,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    client_ca: Option<PathBuf>,
    #[serde(default)]
    plain_http: bool,
    #[serde(default = "default_session_ttl")]
    session_ttl: ConfigDuration,
}

fn default_web_listen() -> String {
    "127.0.0.1:8443".into()
}
fn default_session_ttl() -> ConfigDuration {
    ConfigDuration::secs(12 * 3600)
}

/// A login lasts from a second to a week.
const SESSION_TTL: bounds::MaxDuration = bounds::MaxDuration { max: Duration::from_secs(7 * 86_400), text: "7days" };

fn validate_web(raw: RawWeb) -> Result<WebConfig, (&'static str, String)> {
    let listen: std::net::SocketAddr =
        raw.listen.parse().map_err(|e| ("collect.web.listen", format!("{:?}: {e} (want ADDRESS:PORT)", raw.listen)))?;
    for path in [&raw.cert, &raw.key, &raw.client_ca].into_iter().flatten() {
        if !path.is_absolute() {
            return Err(("collect.web", format!("{} is not an absolute path", path.display())));
        }
    }
    let tls = match (raw.cert, raw.key) {
        (Some(cert), Some(key)) => Some(crate::tinyids::settings::ServeTls { cert, key, client_ca: raw.client_ca }),
        (None, None) => {
            if raw.client_ca.is_some() {
                return Err(("collect.web.client_ca", "needs cert and key (client certificates come with TLS)".into()));
            }
            if !raw.plain_http {
                return Err((
                    "collect.web",
                    "cert and key are needed (or plain_http = true on a loopback address)".into(),
                ));
            }
            if !listen.ip().is_loopback() {
                return Err((
                    "collect.web.plain_http",
                    format!(
                        "{listen} is not a loopback address: passwords and sessions would cross the network in clear"
                    ),
                ));
            }
            None
        }
        _ => return Err(("collect.web", "cert and key go together".into())),
    };
    Ok(WebConfig { listen, tls, session_ttl: duration("collect.web.session_ttl", raw.session_ttl, SESSION_TTL)? })
}

/// `[collect] database`: a path (SQLite) or a `postgres://` URL.
#[derive(Debug, Clone, PartialEq)]
pub enum CentralDatabase {
    Sqlite(PathBuf),
    Postgres(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFleet {
    url: String,
    password_file: Option<PathBuf>,
    #[serde(default)]
    tls: TlsFiles,
    host_id: Option<String>,
    #[serde(default = "default_heartbeat")]
    heartbeat: ConfigDuration,
    #[serde(default = "default_max_backlog")]
    max_backlog: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCollect {
    url: String,
    password_file: Option<PathBuf>,
    #[serde(default)]
    tls: TlsFiles,
    #[serde(default = "default_central_database")]
    database: String,
    silent_after: Option<ConfigDuration>,
    #[serde(default = "default_rule_hosts")]
    rule_hosts: u32,
    #[serde(default = "default_rule_window")]
    rule_window: ConfigDuration,
    #[serde(default = "default_rule_ban_for")]
    rule_ban_for: ConfigDuration,
    #[serde(default = "default_verify_host")]
    verify_host: bool,
    web: Option<RawWeb>,
}

fn default_heartbeat() -> ConfigDuration {
    ConfigDuration::secs(30)
}
fn default_max_backlog() -> u64 {
    1_000_000
}
fn default_central_database() -> String {
    "/var/lib/ids/fleet.db".into()
}
fn default_rule_hosts() -> u32 {
    3
}
fn default_rule_window() -> ConfigDuration {
    ConfigDuration::secs(600)
}
fn default_rule_ban_for() -> ConfigDuration {
    ConfigDuration::secs(3600)
}
fn default_verify_host() -> bool {
    true
}

/// Heartbeats and silence: from a second to a day.
const HEARTBEAT: bounds::MaxDuration = bounds::MaxDuration { max: Duration::from_secs(86_400), text: "1day" };
/// The backlog lives in SQLite: up to a billion alerts.
const MAX_BACKLOG: std::ops::RangeInclusive<u64> = 1..=1_000_000_000;
const RULE_HOSTS: std::ops::RangeInclusive<u32> = 0..=100_000;

/// A finite duration key within 1 s..=`limit`.
fn duration(
    key: &'static str,
    setting: ConfigDuration,
    limit: bounds::MaxDuration,
) -> Result<Duration, (&'static str, String)> {
    setting.finite().and_then(|value| bounds::check_duration(value, limit)).map_err(|m| (key, m))
}

fn broker(
    section: &'static str,
    url: String,
    password_file: Option<PathBuf>,
    tls: TlsFiles,
) -> Result<BrokerConfig, (&'static str, String)> {
    let key = if section == "fleet" { "fleet.url" } else { "collect.url" };
    url.parse::<lapin::uri::AMQPUri>().map_err(|e| (key, format!("{url:?}: {e}")))?;
    if has_password(&url) {
        return Err((key, format!("holds a password: put it in {section}.password_file (the URL shows up in logs)")));
    }
    if tls.cert.is_some() != tls.key.is_some() {
        return Err((if section == "fleet" { "fleet.tls" } else { "collect.tls" }, "cert and key go together".into()));
    }
    for path in [&password_file, &tls.ca, &tls.cert, &tls.key].into_iter().flatten() {
        if !path.is_absolute() {
            return Err((key, format!("{} is not an absolute path", path.display())));
        }
    }
    Ok(BrokerConfig { url, password_file, tls })
}

/// Whether the URL's user info carries a `:password` (lapin fills in `guest` when none is given).
fn has_password(url: &str) -> bool {
    let Some((_, rest)) = url.split_once("://") else { return false };
    let authority = rest.split('/').next().unwrap_or("");
    authority.rsplit_once('@').is_some_and(|(userinfo, _)| userinfo.contains(':'))
}

pub(crate) fn validate_fleet(raw: RawFleet) -> Result<FleetConfig, (&'static str, String)> {
    if let Some(host) = &raw.host_id {
        super::message::check_host_id(host).map_err(|m| ("fleet.host_id", m))?;
    }
    bounds::check(raw.max_backlog, MAX_BACKLOG).map_err(|m| ("fleet.max_backlog", m))?;
    Ok(FleetConfig {
        heartbeat: duration("fleet.heartbeat", raw.heartbeat, HEARTBEAT)?,
        broker: broker("fleet", raw.url, raw.password_file, raw.tls)?,
        host_id: raw.host_id,
        max_backlog: raw.max_backlog,
    })
}

pub(crate) fn validate_collect(raw: RawCollect) -> Result<CollectConfig, (&'static str, String)> {
    let database = if raw.database.starts_with("postgres://") || raw.database.starts_with("postgresql://") {
        CentralDatabase::Postgres(raw.database)
    } else if PathBuf::from(&raw.database).is_absolute() {
        CentralDatabase::Sqlite(raw.database.into())
    } else {
        return Err((
            "collect.database",
            format!("{:?} is neither an absolute path nor a postgres:// URL", raw.database),
        ));
    };
    bounds::check(raw.rule_hosts, RULE_HOSTS).map_err(|m| ("collect.rule_hosts", m))?;
    let rule_ban_for = raw.rule_ban_for.value().map_err(|m| ("collect.rule_ban_for", m))?;
    Ok(CollectConfig {
        silent_after: raw.silent_after.map(|s| duration("collect.silent_after", s, HEARTBEAT)).transpose()?,
        rule_window: duration("collect.rule_window", raw.rule_window, HEARTBEAT)?,
        broker: broker("collect", raw.url, raw.password_file, raw.tls)?,
        database,
        rule_hosts: raw.rule_hosts,
        rule_ban_for,
        verify_host: raw.verify_host,
        web: raw.web.map(validate_web).transpose()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fleet(toml_text: &str) -> Result<FleetConfig, (&'static str, String)> {
        validate_fleet(toml::from_str(toml_text).unwrap())
    }

    #[test]
    fn fleet_defaults_and_checks() {
        let config = fleet("url = \"amqp://host-a@127.0.0.1:5672/%2f\"").unwrap();
        assert_eq!(config.heartbeat, Duration::from_secs(30));
        assert_eq!(config.max_backlog, 1_000_000);
        assert_eq!(config.host_id, None);
        assert_eq!(fleet("url = \"amqp://a:secret@127.0.0.1/%2f\"").unwrap_err().0, "fleet.url");
        assert_eq!(fleet("url = \"amqp://a@h/%2f\"\nheartbeat = \"0s\"").unwrap_err().0, "fleet.heartbeat");
        assert_eq!(fleet("url = \"amqp://a@h/%2f\"\nhost_id = \"a b\"").unwrap_err().0, "fleet.host_id");
        assert_eq!(fleet("url = \"amqp://a@h/%2f\"\nmax_backlog = 0").unwrap_err().0, "fleet.max_backlog");
        let tls = fleet("url = \"amqps://h/%2f\"\n[tls]\ncert = \"/c.pem\"").unwrap_err();
        assert_eq!(tls.0, "fleet.tls");
    }

    #[test]
    fn collect_database_is_a_path_or_a_postgres_url() {
        let raw = |db: &str| -> RawCollect {
            toml::from_str(&format!("url = \"amqp://c@h/%2f\"\ndatabase = \"{db}\"")).unwrap()
        };
        assert_eq!(
            validate_collect(raw("/var/lib/ids/fleet.db")).unwrap().database,
            CentralDatabase::Sqlite("/var/lib/ids/fleet.db".into())
        );
        assert!(matches!(validate_collect(raw("postgres://u@h/ids")).unwrap().database, CentralDatabase::Postgres(_)));
        assert_eq!(validate_collect(raw("fleet.db")).unwrap_err().0, "collect.database");
        let defaults = validate_collect(raw("/f.db")).unwrap();
        assert_eq!((defaults.rule_hosts, defaults.rule_window), (3, Duration::from_secs(600)));
        assert_eq!(defaults.rule_ban_for, Some(Duration::from_secs(3600)));
        assert!(defaults.verify_host);
    }
}
