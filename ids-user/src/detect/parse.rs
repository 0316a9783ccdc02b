//! Parsers of the log formats: only the parts the logging program writes itself are trusted.
//!
//! - sshd via syslog: `TIMESTAMP HOST sshd[PID]: MESSAGE` (also `sshd-session[PID]`, OpenSSH 9.8+).
//!   The timestamp and host are written by syslog, so the first ` sshd[` is the program's tag.
//!   The client address is taken by the rule from the end of the message (see `rules.toml`).
//! - Access logs in the combined format:
//!   `ADDR IDENT USER [TIME] "REQUEST" STATUS BYTES "REFERER" "USER-AGENT"`. The address is the
//!   first field and nothing else; nginx escapes `"` in fields as `\x22`, Apache as `\"`.
use std::borrow::Cow;
use std::net::IpAddr;

/// The pid and message of an sshd syslog line, or `None` for any other line.
pub fn sshd_line(line: &str) -> Option<(u32, &str)> {
    let mut from = 0;
    // The tag follows the timestamp and host: at most a few fields in.
    while let Some(found) = line[from..].find(" sshd") {
        let at = from + found + " sshd".len();
        let rest = &line[at..];
        let rest = rest.strip_prefix("-session").unwrap_or(rest);
        if let Some(rest) = rest.strip_prefix('[') {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits > 0
                && let Some(message) = rest[digits..].strip_prefix("]: ")
                && let Ok(pid) = rest[..digits].parse()
            {
                return Some((pid, message));
            }
        }
        from = at;
        // The tag is never further than the fourth space-separated field (RFC 3164 stamp, host).
        if line[..from].matches(' ').count() > 5 {
            return None;
        }
    }
    None
}

/// The fields of a combined-format access log line that rules look at.
#[derive(Debug, Clone, PartialEq)]
pub struct AccessLine<'a> {
    pub addr: IpAddr,
    pub request: &'a str,
    pub status: u16,
    pub referer: &'a str,
    pub user_agent: &'a str,
}

/// Parses a combined (or common) format line; `None` if it is not one or the first field is not
/// an IP address.
pub fn access_line(line: &str) -> Option<AccessLine<'_>> {
    let (addr, rest) = line.split_once(' ')?;
    let addr: IpAddr = addr.parse().ok()?;
    // ident and user, then the bracketed time (written by the server: no brackets inside).
    let open = memchr::memchr(b'[', rest.as_bytes())?;
    let rest = &rest[open + 1..];
    let close = memchr::memchr(b']', rest.as_bytes())?;
    let rest = rest.get(close + 1..)?.strip_prefix(' ')?;
    let (request, rest) = quoted(rest)?;
    let rest = rest.strip_prefix(' ')?;
    let (status, rest) = rest.split_once(' ').unwrap_or((rest, ""));
    let status: u16 = status.parse().ok()?;
    let (_, rest) = rest.split_once(' ').unwrap_or((rest, ""));
    let (referer, user_agent) = match quoted(rest) {
        Some((referer, rest)) => {
            let user_agent = rest.strip_prefix(' ').and_then(quoted).map_or("", |(ua, _)| ua);
            (referer, user_agent)
        }
        None => ("", ""),
    };
    Some(AccessLine { addr, request, status, referer, user_agent })
}

/// A field in double quotes at the start of `text`: its contents (escapes kept) and the rest
/// after the closing quote.
fn quoted(text: &str) -> Option<(&str, &str)> {
    let body = text.strip_prefix('"')?;
    let bytes = body.as_bytes();
    let mut i = 0;
    while let Some(found) = memchr::memchr2(b'\\', b'"', &bytes[i..]) {
        i += found;
        if bytes[i] == b'"' {
            return Some((&body[..i], &body[i + 1..]));
        }
        i += 2;
        if i >= bytes.len() {
            break;
        }
    }
    None
}

/// Percent-decodes `text` (and `+` as a space) as a browser would send it, then once more if
/// that left escapes (double encoding is a common evasion). Invalid UTF-8 is replaced.
pub fn decode_request(text: &str) -> Cow<'_, str> {
    if memchr::memchr3(b'%', b'+', b'\\', text.as_bytes()).is_none() {
        return Cow::Borrowed(text);
    }
    let once = percent_decode(text);
    if once.contains('%') { Cow::Owned(percent_decode(&once)) } else { Cow::Owned(once) }
}

fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

/// `%XX` and nginx's `\xXX` escapes and `+`.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escape = match bytes[i] {
            b'%' => Some(1),
            b'\\' if bytes.get(i + 1) == Some(&b'x') => Some(2),
            _ => None,
        };
        if let Some(skip) = escape
            && let (Some(hi), Some(lo)) =
                (bytes.get(i + skip).copied().and_then(hex_value), bytes.get(i + skip + 1).copied().and_then(hex_value))
        {
            out.push(hi << 4 | lo);
            i += skip + 2;
            continue;
        }
        out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Evidence as it may be shown: control characters (C0, DEL, C1 and Unicode format controls
/// such as bidirectional overrides) become `\xNN` / `\u{NNNN}`, and the result is at most
/// `max` bytes (cut on a character boundary, with `…` appended).
pub fn escape_evidence(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max) + 8);
    for c in text.chars() {
        if out.len() >= max {
            out.push('…');
            break;
        }
        let code = c as u32;
        if code < 0x20 || code == 0x7f {
            out.push_str(&format!("\\x{code:02x}"));
        } else if c.is_control() || matches!(code, 0x200b..=0x200f | 0x202a..=0x202e | 0x2066..=0x2069 | 0xfeff) {
            out.push_str(&format!("\\u{{{code:04x}}}"));
        } else if c == '\\' {
            out.push_str("\\\\");
        } else {
            out.push(c);
        }
    }
    out
}
