//! `[[outputs]]`: where alerts go besides the events log. Every table has a `kind` (`file`,
//! `syslog`, `webhook`), an optional `name` (default `KIND-INDEX`), `min_severity`, `queue` and
//! the retry pauses; the other keys belong to one kind and are refused on the others.
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::alert::Severity;
use crate::bounds;
use crate::time::ConfigDuration;

/// Alerts an output holds while its destination is down, unless `queue` says otherwise.
pub const DEFAULT_QUEUE: usize = 10_000;
const QUEUE: std::ops::RangeInclusive<usize> = 1..=1_000_000;
/// The first pause after a failed delivery; it doubles up to `max_backoff`.
const DEFAULT_BACKOFF: Duration = Duration::from_millis(500);
const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Pauses and timeouts: at least a millisecond, at most an hour.
const PAUSE: std::ops::RangeInclusive<Duration> = Duration::from_millis(1)..=Duration::from_secs(3600);
const DEFAULT_WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);
/// The local syslog socket.
pub const DEFAULT_SYSLOG_SOCKET: &str = "/dev/log";

/// One `[[outputs]]` table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawOutput {
    kind: String,
    name: Option<String>,
    min_severity: Option<String>,
    queue: Option<usize>,
    backoff: Option<ConfigDuration>,
    max_backoff: Option<ConfigDuration>,
    // file
    path: Option<PathBuf>,
    // syslog
    address: Option<String>,
    facility: Option<String>,
    // webhook
    url: Option<String>,
    headers: Option<BTreeMap<String, String>>,
    ca_file: Option<PathBuf>,
    timeout: Option<ConfigDuration>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct OutputConfig {
    /// The label of its counters (`ids status`, metrics) and logs.
    pub name: String,
    /// Alerts below it are not sent.
    pub min_severity: Severity,
    /// Alerts waiting for delivery at most; more are dropped (and counted).
    pub queue: usize,
    /// The pause after the first failed attempt, doubled after each further one up to `max_backoff`.
    pub backoff: Duration,
    pub max_backoff: Duration,
    pub destination: Destination,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Destination {
    /// JSON lines appended to a file (mode 0600, created if missing, reopened on SIGHUP).
    File {
        path: PathBuf,
    },
    Syslog {
        transport: SyslogTransport,
        facility: Facility,
    },
    Webhook(WebhookConfig),
}

impl Destination {
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Destination::File { .. } => "file",
            Destination::Syslog { .. } => "syslog",
            Destination::Webhook(_) => "webhook",
        }
    }
}

/// Where syslog messages go.
#[derive(Debug, Clone, PartialEq)]
pub enum SyslogTransport {
    /// A local Unix datagram socket (`/dev/log`).
    Unix(PathBuf),
    /// `udp://HOST:PORT` (RFC 5426: one message per datagram).
    Udp(String),
    /// `tcp://HOST:PORT` (RFC 6587 octet counting).
    Tcp(String),
}

/// A syslog facility (RFC 5424 section 6.2.1), by its Linux name.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Facility(pub(crate) u8);

/// Facility names and codes as `<syslog.h>` numbers them.
const FACILITIES: [(&str, u8); 20] = [
    ("kern", 0),
    ("user", 1),
    ("mail", 2),
    ("daemon", 3),
    ("auth", 4),
    ("syslog", 5),
    ("lpr", 6),
    ("news", 7),
    ("uucp", 8),
    ("cron", 9),
    ("authpriv", 10),
    ("ftp", 11),
    ("local0", 16),
    ("local1", 17),
    ("local2", 18),
    ("local3", 19),
    ("local4", 20),
    ("local5", 21),
    ("local6", 22),
    ("local7", 23),
];

/// Alerts are security messages: `authpriv` is the facility syslog daemons keep in a file only
/// root reads (`/var/log/auth.log`, `/var/log/secure`), which suits what an alert names (users,
/// addresses, paths), and the one SIEM rules for security events already look at.
pub const DEFAULT_FACILITY: Facility = Facility(10);

#[derive(Debug, Clone, PartialEq)]
pub struct WebhookConfig {
    pub url: hyper::Uri,
    /// Sent with every request, after the daemon's own (`Content-Type`, `User-Agent`).
    pub headers: Vec<(hyper::header::HeaderName, hyper::header::HeaderValue)>,
    /// PEM CA certificates that sign the receiver's certificate (https); none: the system's.
    pub ca_file: Option<PathBuf>,
    /// One attempt, connection and response included.
    pub timeout: Duration,
}

/// Headers the request's framing depends on: the daemon sets them.
const RESERVED_HEADERS: [&str; 4] = ["host", "content-length", "transfer-encoding", "connection"];

/// An output's table: which, and what is wrong with which key.
#[derive(Debug)]
pub(crate) struct OutputError {
    pub(crate) index: usize,
    pub(crate) name: String,
    pub(crate) key: &'static str,
    pub(crate) message: String,
}

/// The keys that belong to one kind only, and the kind they belong to.
fn kind_only_keys(raw: &RawOutput) -> [(&'static str, &'static str, bool); 7] {
    [
        ("path", "file", raw.path.is_some()),
        ("address", "syslog", raw.address.is_some()),
        ("facility", "syslog", raw.facility.is_some()),
        ("url", "webhook", raw.url.is_some()),
        ("headers", "webhook", raw.headers.is_some()),
        ("ca_file", "webhook", raw.ca_file.is_some()),
        ("timeout", "webhook", raw.timeout.is_some()),
    ]
}

/// Validates every table; names must be unique.
pub(crate) fn validate(raw: &[RawOutput]) -> Result<Vec<OutputConfig>, OutputError> {
    let mut outputs: Vec<OutputConfig> = Vec::with_capacity(raw.len());
    for (index, table) in raw.iter().enumerate() {
        let output = validate_one(index, table)?;
        if outputs.iter().any(|earlier| earlier.name == output.name) {
            return Err(OutputError {
                index,
                name: output.name.clone(),
                key: "name",
                message: "is already the name of another output; set a unique `name`".into(),
            });
        }
        outputs.push(output);
    }
    Ok(outputs)
}

fn validate_one(index: usize, raw: &RawOutput) -> Result<OutputConfig, OutputError> {
    let name = raw.name.clone().unwrap_or_else(|| format!("{}-{index}", raw.kind));
    let error = |key: &'static str, message: String| OutputError { index, name: name.clone(), key, message };
    if name.is_empty() || name.len() > 64 || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b)) {
        return Err(error("name", format!("{name:?}: use 1 to 64 letters, digits, '_', '-' or '.'")));
    }
    if !["file", "syslog", "webhook"].contains(&raw.kind.as_str()) {
        return Err(error("kind", format!("{:?} is not an output kind (file, syslog or webhook)", raw.kind)));
    }
    for (key, kind, present) in kind_only_keys(raw) {
        if present && kind != raw.kind {
            return Err(error(key, format!("only a {kind} output takes `{key}`, this one is {}", raw.kind)));
        }
    }
    let min_severity = match &raw.min_severity {
        None => Severity::Low,
        Some(text) => Severity::parse(text).ok_or_else(|| {
            error("min_severity", format!("{text:?} is not a severity (low, medium, high or critical)"))
        })?,
    };
    let queue = raw.queue.unwrap_or(DEFAULT_QUEUE);
    bounds::check(queue, QUEUE).map_err(|m| error("queue", m))?;
    let pause = |key: &'static str, setting: &Option<ConfigDuration>, default: Duration| match setting {
        None => Ok(default),
        Some(setting) => setting.finite().and_then(pause_in_range).map_err(|m| error(key, m)),
    };
    let backoff = pause("backoff", &raw.backoff, DEFAULT_BACKOFF)?;
    let max_backoff = pause("max_backoff", &raw.max_backoff, DEFAULT_MAX_BACKOFF.max(backoff))?;
    if max_backoff < backoff {
        return Err(error("max_backoff", "must not be shorter than backoff".into()));
    }
    let destination = match raw.kind.as_str() {
        "file" => {
            let path =
                raw.path.clone().ok_or_else(|| error("path", "missing: the file alerts are appended to".into()))?;
            if !path.is_absolute() {
                return Err(error("path", format!("{} is not an absolute path", path.display())));
            }
            Destination::File { path }
        }
        "syslog" => {
            let transport = syslog_transport(raw.address.as_deref().unwrap_or(DEFAULT_SYSLOG_SOCKET))
                .map_err(|m| error("address", m))?;
            let facility = match &raw.facility {
                None => DEFAULT_FACILITY,
                Some(text) => {
                    FACILITIES.iter().find(|(n, _)| n == text).map(|(_, code)| Facility(*code)).ok_or_else(|| {
                        let names: Vec<&str> = FACILITIES.iter().map(|(n, _)| *n).collect();
                        error("facility", format!("{text:?} is not a syslog facility ({})", names.join(", ")))
                    })?
                }
            };
            Destination::Syslog { transport, facility }
        }
        _ => {
            let text =
                raw.url.as_deref().ok_or_else(|| error("url", "missing: the URL alerts are POSTed to".into()))?;
            let url = webhook_url(text).map_err(|m| error("url", m))?;
            let mut headers = Vec::new();
            for (header, value) in raw.headers.iter().flatten() {
                let parsed_name = hyper::header::HeaderName::from_bytes(header.as_bytes())
                    .map_err(|_| error("headers", format!("{header:?} is not a header name")))?;
                if RESERVED_HEADERS.contains(&parsed_name.as_str()) {
                    return Err(error("headers", format!("{header:?} is set by the daemon itself")));
                }
                let mut parsed_value = hyper::header::HeaderValue::from_str(value)
                    .map_err(|_| error("headers", format!("the value of {header:?} is not a valid header value")))?;
                // Credentials stay out of debug output.
                parsed_value.set_sensitive(true);
                headers.push((parsed_name, parsed_value));
            }
            if let Some(ca) = &raw.ca_file {
                if !ca.is_absolute() {
                    return Err(error("ca_file", format!("{} is not an absolute path", ca.display())));
                }
                if url.scheme_str() != Some("https") {
                    return Err(error("ca_file", "only an https:// url uses a CA file".into()));
                }
            }
            let timeout = pause("timeout", &raw.timeout, DEFAULT_WEBHOOK_TIMEOUT)?;
            Destination::Webhook(WebhookConfig { url, headers, ca_file: raw.ca_file.clone(), timeout })
        }
    };
    Ok(OutputConfig { name, min_severity, queue, backoff, max_backoff, destination })
}

fn pause_in_range(duration: Duration) -> Result<Duration, String> {
    if !PAUSE.contains(&duration) {
        return Err(format!("{} is out of range (1ms to 1h)", humantime::format_duration(duration)));
    }
    Ok(duration)
}

/// An absolute path (a Unix datagram socket), `udp://HOST:PORT` or `tcp://HOST:PORT`.
fn syslog_transport(address: &str) -> Result<SyslogTransport, String> {
    const FORMS: &str = "an absolute path of a Unix datagram socket, udp://HOST:PORT or tcp://HOST:PORT";
    if address.starts_with('/') {
        return Ok(SyslogTransport::Unix(address.into()));
    }
    let (scheme, host_port) = address.split_once("://").ok_or_else(|| format!("{address:?} is not {FORMS}"))?;
    check_host_port(host_port).map_err(|m| format!("{address:?}: {m}"))?;
    match scheme {
        "udp" => Ok(SyslogTransport::Udp(host_port.into())),
        "tcp" => Ok(SyslogTransport::Tcp(host_port.into())),
        _ => Err(format!("{address:?}: scheme {scheme:?} is not udp or tcp ({FORMS})")),
    }
}

/// `HOST:PORT` with a port: the host is resolved when the output connects, so that a name that
/// does not resolve yet is a warning then, not a configuration error.
fn check_host_port(host_port: &str) -> Result<(), String> {
    let (host, port) = host_port.rsplit_once(':').ok_or("no port (HOST:PORT)")?;
    if host.is_empty() || host.contains('/') {
        return Err("no host (HOST:PORT)".into());
    }
    let port: u16 = port.parse().map_err(|_| format!("{port:?} is not a port"))?;
    if port == 0 {
        return Err("port 0".into());
    }
    // An address literal is checked now; a name is left to connect time.
    let literal = if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(inner.parse::<std::net::Ipv6Addr>().is_ok())
    } else if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        Some(host.parse::<std::net::Ipv4Addr>().is_ok())
    } else {
        None
    };
    match literal {
        Some(false) => Err(format!("{host:?} is not an IP address")),
        _ => Ok(()),
    }
}

fn webhook_url(text: &str) -> Result<hyper::Uri, String> {
    let url: hyper::Uri = text.parse().map_err(|e| format!("{text:?} is not a URL ({e})"))?;
    match url.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(format!("{text:?}: the scheme must be http:// or https://")),
    }
    match url.authority() {
        Some(authority) if !authority.host().is_empty() => {
            if authority.as_str().contains('@') {
                return Err(format!(
                    "{text:?}: credentials in the URL are not sent; use headers = {{ Authorization = \"...\" }}"
                ));
            }
        }
        _ => return Err(format!("{text:?} has no host")),
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<OutputConfig>, OutputError> {
        #[derive(Deserialize)]
        struct Tables {
            outputs: Vec<RawOutput>,
        }
        let tables: Tables = toml::from_str(text).unwrap();
        validate(&tables.outputs)
    }

    fn error_of(text: &str) -> (usize, String, &'static str, String) {
        let e = parse(text).unwrap_err();
        (e.index, e.name, e.key, e.message)
    }

    #[test]
    fn each_kind_gets_its_defaults_and_a_name() {
        let outputs = parse(
            r#"
            [[outputs]]
            kind = "file"
            path = "/var/log/ids/alerts.jsonl"
            [[outputs]]
            kind = "syslog"
            min_severity = "high"
            [[outputs]]
            kind = "webhook"
            name = "siem"
            url = "https://siem.example:8443/ingest?src=ids"
            headers = { Authorization = "Bearer x" }
            ca_file = "/etc/ids/siem-ca.pem"
            timeout = "3s"
            queue = 50
            backoff = "100ms"
            max_backoff = "2s"
            "#,
        )
        .unwrap();
        assert_eq!(outputs[0].name, "file-0");
        assert_eq!(outputs[0].min_severity, Severity::Low);
        assert_eq!(outputs[0].queue, DEFAULT_QUEUE);
        assert_eq!((outputs[0].backoff, outputs[0].max_backoff), (DEFAULT_BACKOFF, DEFAULT_MAX_BACKOFF));
        assert_eq!(outputs[1].name, "syslog-1");
        assert_eq!(outputs[1].min_severity, Severity::High);
        assert_eq!(
            outputs[1].destination,
            Destination::Syslog { transport: SyslogTransport::Unix("/dev/log".into()), facility: DEFAULT_FACILITY }
        );
        let Destination::Webhook(webhook) = &outputs[2].destination else { panic!("{:?}", outputs[2]) };
        assert_eq!(outputs[2].name, "siem");
        assert_eq!((outputs[2].queue, outputs[2].backoff), (50, Duration::from_millis(100)));
        assert_eq!(webhook.url.path_and_query().map(|p| p.as_str()), Some("/ingest?src=ids"));
        assert_eq!(webhook.headers[0].0, "authorization");
        assert_eq!(webhook.timeout, Duration::from_secs(3));
    }

    #[test]
    fn syslog_addresses_and_facilities() {
        let outputs = parse(
            r#"
            [[outputs]]
            kind = "syslog"
            address = "udp://127.0.0.1:514"
            facility = "local3"
            [[outputs]]
            kind = "syslog"
            address = "tcp://siem.example:6514"
            "#,
        )
        .unwrap();
        assert_eq!(
            outputs[0].destination,
            Destination::Syslog { transport: SyslogTransport::Udp("127.0.0.1:514".into()), facility: Facility(19) }
        );
        assert!(matches!(
            &outputs[1].destination,
            Destination::Syslog { transport: SyslogTransport::Tcp(a), .. } if a == "siem.example:6514"
        ));
    }

    #[test]
    fn bad_tables_name_the_output_and_the_key() {
        let (index, name, key, message) = error_of("[[outputs]]\nkind = \"file\"\n[[outputs]]\nkind = \"email\"\n");
        assert_eq!((index, name.as_str(), key), (0, "file-0", "path"), "{message}");
        let (index, name, key, message) =
            error_of("[[outputs]]\nkind = \"file\"\npath = \"/a\"\n[[outputs]]\nkind = \"email\"\n");
        assert_eq!((index, name.as_str(), key), (1, "email-1", "kind"));
        assert!(message.contains("\"email\""), "{message}");
        let (_, _, key, message) = error_of("[[outputs]]\nkind = \"syslog\"\nmin_severity = \"urgent\"\n");
        assert_eq!(key, "min_severity");
        assert!(message.contains("\"urgent\""), "{message}");
        for url in ["ftp://a/b", "http://", "not a url", "https://user:pw@host/"] {
            let (_, _, key, message) = error_of(&format!("[[outputs]]\nkind = \"webhook\"\nurl = {url:?}\n"));
            assert_eq!(key, "url", "{url}: {message}");
        }
        for address in ["udp://127.0.0.1", "tcp://:514", "http://a:1", "relative/sock", "udp://1.2.3.400:514"] {
            let (_, _, key, message) = error_of(&format!("[[outputs]]\nkind = \"syslog\"\naddress = {address:?}\n"));
            assert_eq!(key, "address", "{address}: {message}");
        }
        let (_, _, key, _) = error_of("[[outputs]]\nkind = \"syslog\"\nfacility = \"security\"\n");
        assert_eq!(key, "facility");
        let (_, _, key, message) = error_of("[[outputs]]\nkind = \"file\"\npath = \"/a\"\nurl = \"http://a/\"\n");
        assert_eq!(key, "url");
        assert!(message.contains("only a webhook output"), "{message}");
        let (_, _, key, _) = error_of("[[outputs]]\nkind = \"file\"\npath = \"a\"\n");
        assert_eq!(key, "path");
        let (_, _, key, _) = error_of("[[outputs]]\nkind = \"file\"\npath = \"/a\"\nqueue = 0\n");
        assert_eq!(key, "queue");
        let (_, _, key, _) =
            error_of("[[outputs]]\nkind = \"file\"\npath = \"/a\"\nbackoff = \"10s\"\nmax_backoff = \"1s\"\n");
        assert_eq!(key, "max_backoff");
        let (_, _, key, _) = error_of("[[outputs]]\nkind = \"webhook\"\nurl = \"http://a/\"\ntimeout = \"soon\"\n");
        assert_eq!(key, "timeout");
        let (_, _, key, _) =
            error_of("[[outputs]]\nkind = \"webhook\"\nurl = \"http://a/\"\nca_file = \"/etc/ca.pem\"\n");
        assert_eq!(key, "ca_file");
        let (_, _, key, _) =
            error_of("[[outputs]]\nkind = \"webhook\"\nurl = \"http://a/\"\nheaders = { \"Bad Name\" = \"x\" }\n");
        assert_eq!(key, "headers");
        let (_, _, key, message) =
            error_of("[[outputs]]\nkind = \"webhook\"\nurl = \"http://a/\"\nheaders = { Content-Length = \"1\" }\n");
        assert_eq!(key, "headers", "{message}");
        let (index, _, key, _) = error_of(
            "[[outputs]]\nkind = \"file\"\nname = \"a\"\npath = \"/a\"\n[[outputs]]\nkind = \"file\"\nname = \"a\"\npath = \"/b\"\n",
        );
        assert_eq!((index, key), (1, "name"));
    }
}
