//! Configuration of the TinyIDS client and server: the `[[servers]]` tables (where `ids client`
//! and the daemon send their hash) and the `[serve]` table (`ids serve`). Parsed by
//! `crate::config` (unknown keys refused) and validated here.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::time::ConfigDuration;

/// One `[[servers]]` table, as TinyIDS's `[server__NAME]` sections.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub name: String,
    pub host: String,
    #[serde(default = "default_port")]
    pub port: u16,
    #[serde(default = "default_true")]
    pub enabled: bool,
    pub tls: Option<RawClientTls>,
}

/// `[servers.tls]`: TLS 1.3 to this server. The server is authenticated by a CA, a pinned
/// certificate fingerprint, or both; a client certificate is sent when one is given.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClientTls {
    pub ca: Option<PathBuf>,
    pub fingerprint: Option<String>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    pub server_name: Option<String>,
}

/// The `[serve]` table; every key is optional (the command line may give `listen` and `db`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServe {
    pub listen: Option<String>,
    pub db: Option<PathBuf>,
    pub audit_log: Option<String>,
    pub max_line: Option<usize>,
    pub read_timeout: Option<ConfigDuration>,
    pub max_connections: Option<usize>,
    pub max_connections_per_address: Option<usize>,
    pub max_failures: Option<u32>,
    pub failure_window: Option<ConfigDuration>,
    pub lockout: Option<ConfigDuration>,
    pub tls: Option<RawServeTls>,
}

/// `[serve.tls]`: the server's certificate chain and key (PEM); `client_ca` turns on mTLS.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServeTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

fn default_port() -> u16 {
    super::DEFAULT_PORT
}
fn default_true() -> bool {
    true
}

/// A validated `[[servers]]` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerEntry {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub enabled: bool,
    pub tls: Option<ClientTls>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ClientTls {
    pub ca: Option<PathBuf>,
    /// SHA-256 of the server certificate's DER, 32 bytes.
    pub fingerprint: Option<[u8; 32]>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// The name the certificate must carry; the host by default.
    pub server_name: Option<String>,
    /// Where the settings were given, so that errors name them as the user wrote them.
    pub origin: TlsOrigin,
}

/// Where a server's TLS settings come from: a `[servers.tls]` table or the `--tls-*` flags of
/// `ids client --server`. Both are validated by [`validate_client_tls`] and set up by
/// `super::tls::client_config`; only the names in errors differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsOrigin {
    Config,
    CommandLine,
}

impl TlsOrigin {
    /// The name of setting `key` (`ca`, `fingerprint`, `client_cert`, `client_key`,
    /// `server_name`): `tls.ca` in a configuration file, `--tls-ca` on the command line.
    pub fn setting(self, key: &str) -> String {
        match self {
            TlsOrigin::Config => format!("tls.{key}"),
            TlsOrigin::CommandLine => format!("--tls-{}", key.replace('_', "-")),
        }
    }
}

impl ClientTls {
    /// The name of one of these settings as the user gave it (see [`TlsOrigin::setting`]).
    pub fn setting(&self, key: &str) -> String {
        self.origin.setting(key)
    }
}

/// Validates the TLS settings of one server, from a `[servers.tls]` table or from the command
/// line; the error names the setting as `origin` spells it. Files are read when the connection
/// is set up (`super::tls::client_config`), whose errors name the setting too.
pub fn validate_client_tls(raw: &RawClientTls, origin: TlsOrigin) -> Result<ClientTls, String> {
    let fingerprint = raw
        .fingerprint
        .as_deref()
        .map(parse_fingerprint)
        .transpose()
        .map_err(|e| format!("{}: {e}", origin.setting("fingerprint")))?;
    if raw.ca.is_none() && fingerprint.is_none() {
        return Err(format!(
            "TLS needs {} or {} to authenticate the server",
            origin.setting("ca"),
            origin.setting("fingerprint")
        ));
    }
    if raw.client_cert.is_some() != raw.client_key.is_some() {
        return Err(format!("{} and {} go together", origin.setting("client_cert"), origin.setting("client_key")));
    }
    for (key, path) in [("ca", &raw.ca), ("client_cert", &raw.client_cert), ("client_key", &raw.client_key)] {
        if path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
            return Err(format!("{}: empty path", origin.setting(key)));
        }
    }
    if let Some(name) = &raw.server_name
        && rustls::pki_types::ServerName::try_from(name.as_str()).is_err()
    {
        return Err(format!("{}: {name:?} is not a DNS name or IP address", origin.setting("server_name")));
    }
    Ok(ClientTls {
        ca: raw.ca.clone(),
        fingerprint,
        client_cert: raw.client_cert.clone(),
        client_key: raw.client_key.clone(),
        server_name: raw.server_name.clone(),
        origin,
    })
}

impl ServerEntry {
    /// A plain-TCP server given on the command line as HOST:PORT (or HOST, port 10500).
    pub fn from_address(address: &str) -> Result<Self, String> {
        let (host, port) = split_host_port(address)?;
        Ok(Self { name: address.to_string(), host, port, enabled: true, tls: None })
    }

    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// `HOST:PORT`, `[V6]:PORT`, or a host alone (default port).
pub fn split_host_port(address: &str) -> Result<(String, u16), String> {
    if let Ok(socket) = address.parse::<SocketAddr>() {
        return Ok((socket.ip().to_string(), socket.port()));
    }
    if address.parse::<std::net::IpAddr>().is_ok() {
        return Ok((address.to_string(), super::DEFAULT_PORT));
    }
    match address.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && !host.contains(':') => {
            let port =
                port.parse::<u16>().map_err(|_| format!("{address:?}: port {port:?} is not a number 0-65535"))?;
            Ok((host.to_string(), port))
        }
        None if !address.is_empty() => Ok((address.to_string(), super::DEFAULT_PORT)),
        _ => Err(format!("{address:?} is not HOST:PORT")),
    }
}

/// Parses a SHA-256 fingerprint: 64 hex digits, optionally in colon-separated pairs.
pub fn parse_fingerprint(text: &str) -> Result<[u8; 32], String> {
    let digits: String = text.chars().filter(|c| *c != ':').collect();
    if !digits.is_ascii() || digits.len() != 64 {
        return Err(format!("{text:?} is not 64 hex digits (the SHA-256 of the server certificate's DER)"));
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&digits[2 * i..2 * i + 2], 16)
            .map_err(|_| format!("{text:?} has a character that is not a hex digit"))?;
    }
    Ok(out)
}

/// Validates the `[[servers]]` tables; the error names the table by index and name.
pub fn validate_servers(raw: &[RawServer]) -> Result<Vec<ServerEntry>, String> {
    let mut out: Vec<ServerEntry> = Vec::with_capacity(raw.len());
    for (index, server) in raw.iter().enumerate() {
        let at = format!("servers[{index}] ({:?})", server.name);
        if server.name.is_empty() {
            return Err(format!("servers[{index}].name is empty"));
        }
        if out.iter().any(|earlier| earlier.name == server.name) {
            return Err(format!("{at}: name is already used by another server"));
        }
        if server.host.is_empty() {
            return Err(format!("{at}: host is empty"));
        }
        if server.port == 0 {
            return Err(format!("{at}: port must be 1-65535"));
        }
        let tls = server
            .tls
            .as_ref()
            .map(|tls| validate_client_tls(tls, TlsOrigin::Config))
            .transpose()
            .map_err(|e| format!("{at}: {e}"))?;
        out.push(ServerEntry {
            name: server.name.clone(),
            host: server.host.clone(),
            port: server.port,
            enabled: server.enabled,
            tls,
        });
    }
    Ok(out)
}

/// Where the audit log goes.
#[derive(Debug, Clone, PartialEq)]
pub enum AuditLog {
    Stdout,
    File(PathBuf),
    Off,
}

/// The validated `[serve]` table with defaults applied (`listen` and `db` may still be unset:
/// the command line gives them).
#[derive(Debug, Clone, PartialEq)]
pub struct ServeConfig {
    pub listen: Option<SocketAddr>,
    pub db: Option<PathBuf>,
    pub audit_log: AuditLog,
    pub max_line: usize,
    pub read_timeout: Duration,
    pub max_connections: usize,
    /// Connections from one address at once, so that one host cannot take every slot.
    pub max_connections_per_address: usize,
    pub max_failures: u32,
    pub failure_window: Duration,
    pub lockout: Duration,
    pub tls: Option<ServeTls>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServeTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            listen: None,
            db: None,
            audit_log: AuditLog::Stdout,
            max_line: 8192,
            read_timeout: Duration::from_secs(10),
            max_connections: 1024,
            max_connections_per_address: 16,
            max_failures: 5,
            failure_window: Duration::from_secs(600),
            lockout: Duration::from_secs(600),
            tls: None,
        }
    }
}

/// Validates `[serve]`; the error names the key.
pub fn validate_serve(raw: &RawServe) -> Result<ServeConfig, String> {
    let mut config = ServeConfig::default();
    if let Some(listen) = &raw.listen {
        config.listen = Some(listen.parse().map_err(|_| format!("serve.listen: {listen:?} is not ADDRESS:PORT"))?);
    }
    config.db = raw.db.clone();
    config.audit_log = match raw.audit_log.as_deref() {
        None | Some("-") => AuditLog::Stdout,
        Some("") => AuditLog::Off,
        Some(path) => AuditLog::File(path.into()),
    };
    if let Some(max_line) = raw.max_line {
        if !(64..=1 << 20).contains(&max_line) {
            return Err(format!("serve.max_line: {max_line} is outside 64..=1048576 bytes"));
        }
        config.max_line = max_line;
    }
    if let Some(timeout) = &raw.read_timeout {
        let timeout = timeout.finite().map_err(|m| format!("serve.read_timeout: {m}"))?;
        if timeout.is_zero() || timeout > Duration::from_secs(3600) {
            return Err(format!("serve.read_timeout: {} is outside (0, 1h]", humantime::format_duration(timeout)));
        }
        config.read_timeout = timeout;
    }
    if let Some(max) = raw.max_connections {
        if !(1..=1_000_000).contains(&max) {
            return Err(format!("serve.max_connections: {max} is outside 1..=1000000"));
        }
        config.max_connections = max;
    }
    if let Some(max) = raw.max_connections_per_address {
        if !(1..=1_000_000).contains(&max) {
            return Err(format!("serve.max_connections_per_address: {max} is outside 1..=1000000"));
        }
        config.max_connections_per_address = max;
    }
    if let Some(max) = raw.max_failures {
        config.max_failures =
            crate::bounds::check(max, 1..=1_000_000).map_err(|m| format!("serve.max_failures: {m}"))?;
    }
    // Up to a year: the lockout is added to the time of a failure.
    let up_to_a_year = |key: &str, setting: &ConfigDuration| {
        setting
            .finite()
            .and_then(|d| crate::bounds::check_duration(d, crate::bounds::YEAR))
            .map_err(|m| format!("{key}: {m}"))
    };
    if let Some(window) = &raw.failure_window {
        config.failure_window = up_to_a_year("serve.failure_window", window)?;
    }
    if let Some(lockout) = &raw.lockout {
        config.lockout = up_to_a_year("serve.lockout", lockout)?;
    }
    config.tls = raw.tls.as_ref().map(|tls| ServeTls {
        cert: tls.cert.clone(),
        key: tls.key.clone(),
        client_ca: tls.client_ca.clone(),
    });
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_forms() {
        assert_eq!(split_host_port("127.0.0.1:99").unwrap(), ("127.0.0.1".into(), 99));
        assert_eq!(split_host_port("[::1]:99").unwrap(), ("::1".into(), 99));
        assert_eq!(split_host_port("ids.example").unwrap(), ("ids.example".into(), 10500));
        assert_eq!(split_host_port("ids.example:7").unwrap(), ("ids.example".into(), 7));
        assert!(split_host_port("ids.example:x").unwrap_err().contains("not a number"));
        assert!(split_host_port("").is_err());
    }

    #[test]
    fn fingerprints_accept_plain_and_colon_hex() {
        let plain = "00".repeat(31) + "ff";
        assert_eq!(parse_fingerprint(&plain).unwrap()[31], 0xff);
        let colons = vec!["AB"; 32].join(":");
        assert_eq!(parse_fingerprint(&colons).unwrap(), [0xab; 32]);
        assert!(parse_fingerprint("abcd").is_err());
        assert!(parse_fingerprint(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn tls_without_a_way_to_authenticate_the_server_is_refused() {
        let raw = RawServer {
            name: "a".into(),
            host: "h".into(),
            port: 1,
            enabled: true,
            tls: Some(RawClientTls {
                ca: None,
                fingerprint: None,
                client_cert: None,
                client_key: None,
                server_name: None,
            }),
        };
        assert!(validate_servers(&[raw]).unwrap_err().contains("needs tls.ca or tls.fingerprint"));
    }

    fn raw_tls() -> RawClientTls {
        RawClientTls { ca: None, fingerprint: None, client_cert: None, client_key: None, server_name: None }
    }

    #[test]
    fn command_line_tls_errors_name_the_flags() {
        let error = validate_client_tls(&raw_tls(), TlsOrigin::CommandLine).unwrap_err();
        assert!(error.contains("--tls-ca or --tls-fingerprint"), "{error}");
        let bad = RawClientTls { fingerprint: Some("12:34".into()), ..raw_tls() };
        let error = validate_client_tls(&bad, TlsOrigin::CommandLine).unwrap_err();
        assert!(error.starts_with("--tls-fingerprint: ") && error.contains("\"12:34\""), "{error}");
        let bad = RawClientTls { fingerprint: Some("é".repeat(32)), ..raw_tls() };
        assert!(validate_client_tls(&bad, TlsOrigin::CommandLine).unwrap_err().starts_with("--tls-fingerprint: "));
        let half = RawClientTls { ca: Some("/ca.pem".into()), client_cert: Some("/c.pem".into()), ..raw_tls() };
        let error = validate_client_tls(&half, TlsOrigin::CommandLine).unwrap_err();
        assert!(error.contains("--tls-client-cert and --tls-client-key"), "{error}");
        let bad = RawClientTls { ca: Some("/ca.pem".into()), server_name: Some("not a name".into()), ..raw_tls() };
        assert!(validate_client_tls(&bad, TlsOrigin::CommandLine).unwrap_err().starts_with("--tls-server-name: "));
        let good = RawClientTls { ca: Some("/ca.pem".into()), fingerprint: Some("ab".repeat(32)), ..raw_tls() };
        let tls = validate_client_tls(&good, TlsOrigin::CommandLine).unwrap();
        assert_eq!((tls.fingerprint, tls.origin), (Some([0xab; 32]), TlsOrigin::CommandLine));
        // The same settings in a configuration file are named as its keys.
        let error = validate_client_tls(&half, TlsOrigin::Config).unwrap_err();
        assert!(error.contains("tls.client_cert and tls.client_key"), "{error}");
    }

    #[test]
    fn duplicate_server_names_are_refused() {
        let raw = RawServer { name: "a".into(), host: "h".into(), port: 1, enabled: true, tls: None };
        assert!(validate_servers(&[raw.clone(), raw]).unwrap_err().contains("already used"));
    }

    #[test]
    fn serve_limits_are_checked() {
        let raw = RawServe { max_line: Some(10), ..Default::default() };
        assert!(validate_serve(&raw).unwrap_err().contains("serve.max_line"));
        let raw = RawServe { read_timeout: Some(ConfigDuration::secs(0)), ..Default::default() };
        assert!(validate_serve(&raw).unwrap_err().contains("serve.read_timeout"));
        let raw = RawServe { listen: Some("nowhere".into()), ..Default::default() };
        assert!(validate_serve(&raw).unwrap_err().contains("serve.listen"));
        let config = validate_serve(&RawServe::default()).unwrap();
        assert_eq!(config.max_line, 8192);
        assert_eq!(config.max_failures, 5);
        assert_eq!(config.max_connections_per_address, 16);
        for bad in [0, 1_000_001] {
            let raw = RawServe { max_connections_per_address: Some(bad), ..Default::default() };
            let error = validate_serve(&raw).unwrap_err();
            assert!(
                error.starts_with("serve.max_connections_per_address: ") && error.contains("1..=1000000"),
                "{error}"
            );
        }
        let raw = RawServe { max_connections_per_address: Some(1), ..Default::default() };
        assert_eq!(validate_serve(&raw).unwrap().max_connections_per_address, 1);
    }
}
