//! One entry point per parser of outside input, for the fuzz targets in `fuzz/`. Each feeds the
//! bytes to the parser the daemon uses on that input and checks what must hold whatever the
//! input: no panic, and where a value can be written back, that it reads back the same.
//!
//! Built only with the `fuzzing` feature: the rest of the crate stays crate-private.
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use crate::config::{Config, LogKind};
use crate::detect::engine::Engine;
use crate::detect::rules::{RuleSet, SHIPPED_RULES, parse_rules};
use crate::detect::webshell::Scanner;
use crate::detect::{journal, parse};

/// A TinyIDS request line (`tinyids::codec::parse`); a parsed request written back with
/// `to_line` must parse to the same request, or client and server would disagree.
pub fn tinyids_line(data: &[u8]) {
    if let Ok(request) = crate::tinyids::codec::parse(data) {
        let line = request.to_line();
        let again = crate::tinyids::codec::parse(line.as_bytes());
        assert_eq!(again.as_ref(), Ok(&request), "{line:?} does not read back");
    }
}

/// A ring-buffer record as the kernel side would send it (`sensor::decode::decode`).
pub fn ring_record(data: &[u8]) {
    let _ = crate::sensor::decode::decode(data);
}

/// A configuration file (`Config::parse`); its text is read from disk as UTF-8.
pub fn config(data: &[u8]) {
    // Lossy, so that every input reaches the parser (a file that is not UTF-8 is refused on reading).
    let _ = Config::parse(&String::from_utf8_lossy(data), "fuzz");
}

/// An operator's rules file: parsed, then compiled as `RuleSet::load` does with it.
pub fn rules(data: &[u8]) {
    if let Ok(rules) = parse_rules(&String::from_utf8_lossy(data), "fuzz") {
        let _ = RuleSet::compile(rules, "fuzz".into());
    }
}

/// The shipped rules in one engine kept across inputs, so windows fill and evict as in the daemon.
fn engine() -> &'static Mutex<Engine> {
    static ENGINE: OnceLock<Mutex<Engine>> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let rules =
            RuleSet::compile(parse_rules(SHIPPED_RULES, "(shipped)").expect("shipped rules parse"), "fuzz".into())
                .expect("shipped rules compile");
        Mutex::new(Engine::new(rules))
    })
}

/// A log line: the first byte picks the log kind and whether the line was cut at the length
/// limit; the rest is the line. Runs the sshd and access-log parsers on their own, then the line
/// engine (rules, windows, evidence) as the detect worker does.
pub fn log_line(data: &[u8]) {
    // An empty input is an empty sshd line.
    let (&selector, line) = data.split_first().unwrap_or((&0, &[]));
    let kind = match selector % 3 {
        0 => LogKind::Sshd,
        1 => LogKind::Nginx,
        _ => LogKind::Apache,
    };
    let cut = selector & 0x80 != 0;
    let text = String::from_utf8_lossy(line);
    if let Some((_, message)) = parse::sshd_line(&text) {
        let _ = crate::process::login::parse_accepted(message);
    }
    if let Some(access) = parse::access_line(&text) {
        let _ = parse::decode_request(access.request);
    }
    // The last character may go past the bound by its longest escape (`\u{feff}`, 8 bytes) less
    // one, then the 3-byte `…` follows.
    let evidence = parse::escape_evidence(&text, 256);
    assert!(evidence.len() <= 256 + 7 + 3, "evidence of {} bytes", evidence.len());
    // A panic while the engine was held poisons it; the fuzzer stops at that panic anyway.
    let mut engine = engine().lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut crossings = Vec::new();
    engine.line(kind, line, cut, Instant::now(), &mut crossings);
    let _ = engine.take_flood();
}

/// One entry of `journalctl -o json` (`detect::journal::entry_line`).
pub fn journal_entry(data: &[u8]) {
    let _ = journal::entry_line(data);
}

/// One control-socket request line, decoded by `control::decode_request` as the socket does; a decoded request written
/// back as JSON (as the CLI sends it) must decode to the same request.
pub fn control_request(data: &[u8]) {
    if let Ok(request) = crate::control::decode_request(data) {
        let json = serde_json::to_string(&request).expect("a request encodes");
        let again: crate::control::Request = serde_json::from_str(&json).expect("an encoded request decodes");
        assert_eq!(again, request, "{json} does not read back");
    }
}

/// The contents of a written web file, as the webshell scanner reads them.
pub fn webshell(data: &[u8]) {
    static SCANNER: OnceLock<Scanner> = OnceLock::new();
    let _ = SCANNER.get_or_init(Scanner::new).scan_bytes(data);
}

/// A message from the broker (`fleet::message::Inbound::parse`, what the collector and the
/// agents read): the first byte picks the AMQP `type`, the rest is the body. A message that
/// parses, written back, must parse to the same message.
pub fn fleet_message(data: &[u8]) {
    use crate::fleet::message::{Inbound, types};
    const TYPES: [&str; 7] =
        [types::ALERT, types::GAP, types::HEARTBEAT, types::SNAPSHOT_REQUEST, types::BAN, types::SNAPSHOT, "gossip"];
    let (&selector, body) = data.split_first().unwrap_or((&0, &[]));
    let message_type = TYPES[usize::from(selector) % TYPES.len()];
    let Ok(message) = Inbound::parse(message_type, body) else { return };
    let written = match &message {
        Inbound::Alert(m) => serde_json::to_vec(m),
        Inbound::Gap(m) => serde_json::to_vec(m),
        Inbound::Heartbeat(m) => serde_json::to_vec(m),
        Inbound::SnapshotRequest(m) => serde_json::to_vec(m),
        Inbound::Ban(m) => serde_json::to_vec(m),
        Inbound::Snapshot(m) => serde_json::to_vec(m),
    }
    .expect("a parsed message serialises");
    assert_eq!(Inbound::parse(message_type, &written).as_ref(), Ok(&message), "does not read back");
}
