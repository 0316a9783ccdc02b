//! The syslog output: each alert as one RFC 5424 message, to a local Unix datagram socket
//! (`/dev/log`), over UDP (RFC 5426) or over TCP with octet counting (RFC 6587).
//!
//! `<PRI>1 TIMESTAMP HOSTNAME ids PROCID KIND - {alert JSON}`: PRI is the facility × 8 plus the
//! syslog severity of the alert's severity, MSGID the alert's kind, no structured data (the MSG is
//! the alert as the events log holds it, which a SIEM parses as JSON).
use std::io::Write as _;
use std::net::{TcpStream, ToSocketAddrs as _, UdpSocket};
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use super::config::{Facility, SyslogTransport};
use super::{Deliver, Failure};
use crate::alert::{Alert, Severity};

/// How long a connect or send may take before the attempt counts as failed.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// The syslog severity (RFC 5424 table 2) of an alert's severity.
pub(crate) fn syslog_severity(severity: Severity) -> u8 {
    match severity {
        Severity::Critical => 2, // crit
        Severity::High => 3,     // err
        Severity::Medium => 4,   // warning
        Severity::Low => 5,      // notice
    }
}

/// What stays the same in every message of a daemon.
pub(crate) struct Header {
    pub(crate) facility: Facility,
    /// Printable ASCII, at most 255 characters (RFC 5424 HOSTNAME); `-` when unknown.
    pub(crate) hostname: String,
    pub(crate) pid: u32,
}

impl Header {
    pub(crate) fn new(facility: Facility) -> Self {
        let hostname = crate::integrity::hostname().unwrap_or_default();
        Self { facility, hostname: header_field(&hostname, 255), pid: std::process::id() }
    }
}

/// A header field as RFC 5424 allows it: printable US-ASCII without spaces, at most `max`
/// characters; NILVALUE (`-`) when nothing is left.
fn header_field(text: &str, max: usize) -> String {
    let field: String = text.chars().filter(|c| c.is_ascii_graphic()).take(max).collect();
    if field.is_empty() { "-".into() } else { field }
}

/// One alert as an RFC 5424 message (without transport framing).
pub(crate) fn format(header: &Header, alert: &Alert) -> Vec<u8> {
    let pri = u32::from(header.facility.0) * 8 + u32::from(syslog_severity(alert.severity()));
    let mut message = format!(
        "<{pri}>1 {} {} ids {} {} - ",
        alert.time.rfc3339(),
        header.hostname,
        header.pid,
        header_field(alert.kind().name(), 32),
    )
    .into_bytes();
    // serde_json escapes control characters, so the message stays one line.
    if serde_json::to_writer(&mut message, alert).is_err() {
        message.extend_from_slice(b"{}");
    }
    message
}

/// RFC 6587 octet counting: `LENGTH SP MESSAGE`.
pub(crate) fn octet_counted(message: &[u8]) -> Vec<u8> {
    let mut framed = format!("{} ", message.len()).into_bytes();
    framed.extend_from_slice(message);
    framed
}

/// A syslog destination with its socket, opened at the first send and again after a failure.
pub(crate) struct Syslog {
    header: Header,
    transport: SyslogTransport,
    socket: Option<Socket>,
}

enum Socket {
    Unix(UnixDatagram),
    Udp(UdpSocket),
    Tcp(TcpStream),
}

impl Syslog {
    pub(crate) fn new(transport: SyslogTransport, facility: Facility) -> Self {
        Self { header: Header::new(facility), transport, socket: None }
    }

    fn connect(&self) -> std::io::Result<Socket> {
        Ok(match &self.transport {
            SyslogTransport::Unix(path) => {
                let socket = UnixDatagram::unbound()?;
                socket.connect(path)?;
                // A syslog daemon that stops reading fills the socket: a send then waits, bounded.
                socket.set_write_timeout(Some(SEND_TIMEOUT))?;
                Socket::Unix(socket)
            }
            SyslogTransport::Udp(host_port) => {
                let mut last = None;
                for address in host_port.to_socket_addrs()? {
                    let local = if address.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
                    match UdpSocket::bind(local).and_then(|s| s.connect(address).map(|()| s)) {
                        Ok(socket) => return Ok(Socket::Udp(socket)),
                        Err(e) => last = Some(e),
                    }
                }
                return Err(last.unwrap_or_else(|| no_address(host_port)));
            }
            SyslogTransport::Tcp(host_port) => {
                let mut last = None;
                for address in host_port.to_socket_addrs()? {
                    match TcpStream::connect_timeout(&address, SEND_TIMEOUT) {
                        Ok(stream) => {
                            stream.set_write_timeout(Some(SEND_TIMEOUT))?;
                            stream.set_nodelay(true)?;
                            return Ok(Socket::Tcp(stream));
                        }
                        Err(e) => last = Some(e),
                    }
                }
                return Err(last.unwrap_or_else(|| no_address(host_port)));
            }
        })
    }
}

fn no_address(host_port: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::NotFound, format!("{host_port} resolves to no address"))
}

impl Deliver for Syslog {
    fn deliver(&mut self, alert: &Alert) -> Result<(), Failure> {
        let message = format(&self.header, alert);
        let socket = match self.socket.take() {
            Some(socket) => socket,
            None => self.connect().map_err(|e| Failure::Retry(format!("connecting: {e}")))?,
        };
        let sent = match &socket {
            Socket::Unix(socket) => socket.send(&message).map(drop),
            Socket::Udp(socket) => socket.send(&message).map(drop),
            Socket::Tcp(stream) => {
                let mut stream = stream;
                stream.write_all(&octet_counted(&message))
            }
        };
        match sent {
            Ok(()) => {
                self.socket = Some(socket);
                Ok(())
            }
            // Too long for a datagram: no retry makes it shorter.
            Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) => {
                self.socket = Some(socket);
                Err(Failure::Permanent(format!("{} bytes: {e}", message.len())))
            }
            // The socket is dropped: the next attempt connects anew (a restarted syslog daemon
            // has a new socket at the same path, a TCP peer a new connection).
            Err(e) => Err(Failure::Retry(format!("sending: {e}"))),
        }
    }

    fn check(&mut self) -> Result<(), String> {
        self.socket = Some(self.connect().map_err(|e| format!("connecting: {e}"))?);
        Ok(())
    }

    fn describe(&self) -> String {
        match &self.transport {
            SyslogTransport::Unix(path) => path.display().to_string(),
            SyslogTransport::Udp(address) => format!("udp://{address}"),
            SyslogTransport::Tcp(address) => format!("tcp://{address}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::{AlertBody, BanAlert, DetectAction, DetectAlert, Detector};
    use crate::time::Timestamp;

    fn detect(severity: Severity) -> Alert {
        Alert {
            time: Timestamp::at(std::time::UNIX_EPOCH + Duration::from_micros(1_500_000)),
            body: AlertBody::Detect(DetectAlert {
                rule: "r".into(),
                severity,
                detector: Detector::Webshell,
                description: "line\nbreak".into(),
                source: None,
                path: None,
                count: None,
                window_s: None,
                process: None,
                evidence: vec![],
                action: DetectAction::AlertOnly,
            }),
        }
    }

    #[test]
    fn a_message_has_the_rfc_5424_header_and_the_alert_as_json() {
        let header = Header { facility: Facility(10), hostname: "web1".into(), pid: 4242 };
        let alert = detect(Severity::High);
        let message = String::from_utf8(format(&header, &alert)).unwrap();
        // authpriv (10) × 8 + err (3) = 83.
        let expected_head = "<83>1 1970-01-01T00:00:01.500000Z web1 ids 4242 detect - ";
        assert!(message.starts_with(expected_head), "{message}");
        let json: serde_json::Value = serde_json::from_str(&message[expected_head.len()..]).unwrap();
        assert_eq!(json, serde_json::to_value(&alert).unwrap());
        assert!(!message.contains('\n'), "{message}");
    }

    #[test]
    fn severities_map_to_syslog_severities_and_the_facility_sets_pri() {
        let header = Header { facility: Facility(3), hostname: "h".into(), pid: 1 };
        for (severity, pri) in [
            (Severity::Critical, "<26>"),
            (Severity::High, "<27>"),
            (Severity::Medium, "<28>"),
            (Severity::Low, "<29>"),
        ] {
            let message = format(&header, &detect(severity));
            assert!(message.starts_with(pri.as_bytes()), "{severity:?}: {}", String::from_utf8_lossy(&message));
        }
        let ban = Alert::now(AlertBody::Ban(BanAlert {
            net: "192.0.2.1/32".into(),
            source: "port-scan".into(),
            reason: "scan".into(),
            expires: None,
            offence: 1,
            escalation: None,
        }));
        let message = String::from_utf8(format(&header, &ban)).unwrap();
        assert!(message.starts_with("<29>1 "), "{message}");
        assert_eq!(message.split(' ').nth(5), Some("ban"));
    }

    #[test]
    fn header_fields_are_printable_ascii_or_nil() {
        assert_eq!(header_field("web 1\u{e9}\n", 255), "web1");
        assert_eq!(header_field("", 255), "-");
        assert_eq!(header_field(&"a".repeat(300), 255).len(), 255);
    }

    #[test]
    fn octet_counting_prefixes_the_length_in_bytes() {
        assert_eq!(octet_counted("<1>1 é".as_bytes()), "7 <1>1 é".as_bytes());
    }
}
