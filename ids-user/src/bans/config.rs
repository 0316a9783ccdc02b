//! The `[xdp]` and `[bans]` config sections, raw (serde) and validated.
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::net::BanNet;
use crate::bounds::{BAN, SCAN_WINDOW, check, check_duration};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawXdp {
    #[serde(default)]
    interfaces: Vec<String>,
    #[serde(default = "default_trusted")]
    trusted: Vec<String>,
    #[serde(default = "default_pin_dir")]
    pin_dir: PathBuf,
    #[serde(default = "default_scan_ports")]
    scan_ports: u32,
    #[serde(default = "default_flood_syns")]
    flood_syns: u32,
    #[serde(default = "default_scan_window")]
    scan_window: String,
    #[serde(default)]
    mode: XdpModeSetting,
    #[serde(default = "default_trust_local")]
    trust_local: bool,
}

impl Default for RawXdp {
    fn default() -> Self {
        Self {
            interfaces: Vec::new(),
            trusted: default_trusted(),
            pin_dir: default_pin_dir(),
            scan_ports: default_scan_ports(),
            flood_syns: default_flood_syns(),
            scan_window: default_scan_window(),
            mode: XdpModeSetting::default(),
            trust_local: default_trust_local(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBans {
    #[serde(default = "default_duration")]
    default_duration: String,
    #[serde(default = "default_duration")]
    scan_duration: String,
    #[serde(default = "default_max_duration")]
    max_duration: String,
    #[serde(default = "default_detect_duration")]
    detect_duration: String,
}

impl Default for RawBans {
    fn default() -> Self {
        Self {
            default_duration: default_duration(),
            scan_duration: default_duration(),
            max_duration: default_max_duration(),
            detect_duration: default_detect_duration(),
        }
    }
}

fn default_trusted() -> Vec<String> {
    vec!["127.0.0.0/8".into(), "::1".into()]
}
fn default_trust_local() -> bool {
    true
}
fn default_pin_dir() -> PathBuf {
    PathBuf::from("/sys/fs/bpf/ids")
}
fn default_scan_ports() -> u32 {
    50
}
fn default_flood_syns() -> u32 {
    0
}
fn default_scan_window() -> String {
    "10s".into()
}
fn default_duration() -> String {
    "1h".into()
}
fn default_detect_duration() -> String {
    "10m".into()
}
fn default_max_duration() -> String {
    "30d".into()
}

/// `[xdp]`: where the ban filter runs and what it trusts.
/// `[xdp] mode`: how the program is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpModeSetting {
    /// Native (driver) mode where the driver has it, generic otherwise.
    #[default]
    Auto,
    /// Native only: an interface whose driver lacks it is left without the program (logged).
    Native,
    /// Generic (skb) mode everywhere, for drivers whose native XDP misbehaves.
    Generic,
}

#[derive(Debug, Clone, PartialEq)]
pub struct XdpConfig {
    /// Interfaces the XDP program is attached to; empty means every interface, new ones included.
    pub interfaces: Vec<String>,
    /// Never dropped, never banned.
    pub trusted: Vec<BanNet>,
    /// bpffs directory of the pinned maps and links.
    pub pin_dir: PathBuf,
    /// Distinct ports per source and window that count as a port scan (0: off).
    pub scan_ports: u32,
    /// TCP SYNs per source and window that count as a SYN flood (0: off).
    pub flood_syns: u32,
    pub scan_window: Duration,
    pub mode: XdpModeSetting,
    /// Trust the addresses of this host's interfaces (as found when the daemon or CLI starts).
    pub trust_local: bool,
}

/// `[bans]`: durations.
#[derive(Debug, Clone, PartialEq)]
pub struct BansConfig {
    /// Of a ban that names no duration; `None` is permanent.
    pub default_duration: Option<Duration>,
    /// Of the automatic ban of a port scanner or SYN flooder; `None` is permanent.
    pub scan_duration: Option<Duration>,
    /// Longest duration an escalating ban reaches.
    pub max_duration: Duration,
    /// First ban of an address by a log detector (`crate::detect`); doubled for each earlier
    /// offence, up to `max_duration`.
    pub detect_duration: Duration,
}

/// A duration as people write it (`90s`, `10m`, `1h 30m`, `7d`), or `permanent`/`forever`
/// (`None`). Zero and negative durations are refused.
pub fn parse_duration(text: &str) -> Result<Option<Duration>, String> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("permanent") || text.eq_ignore_ascii_case("forever") {
        return Ok(None);
    }
    if text.starts_with('-') {
        return Err(format!("duration {text:?} is negative"));
    }
    let duration = humantime::parse_duration(text)
        .map_err(|e| format!("duration {text:?}: {e} (examples: 90s, 10m, 1h, 7d, permanent)"))?;
    if duration.is_zero() {
        return Err(format!("duration {text:?} is zero"));
    }
    Ok(Some(duration))
}

pub(crate) fn validate(xdp: RawXdp, bans: RawBans) -> Result<(XdpConfig, BansConfig), (&'static str, String)> {
    let mut trusted = Vec::new();
    for entry in &xdp.trusted {
        trusted.push(BanNet::parse(entry).map_err(|e| ("xdp.trusted", e.to_string()))?);
    }
    for name in &xdp.interfaces {
        if name.is_empty() || name.len() > 15 || name.contains('/') {
            return Err(("xdp.interfaces", format!("{name:?} is not an interface name")));
        }
    }
    if !xdp.pin_dir.is_absolute() {
        return Err(("xdp.pin_dir", format!("{} is not an absolute path", xdp.pin_dir.display())));
    }
    let scan_ports = check(xdp.scan_ports, 0..=65_536).map_err(|e| ("xdp.scan_ports", e))?;
    let flood_syns = check(xdp.flood_syns, 0..=1_000_000_000).map_err(|e| ("xdp.flood_syns", e))?;
    let scan_window = parse_duration(&xdp.scan_window)
        .map_err(|e| ("xdp.scan_window", e))?
        .ok_or(("xdp.scan_window", "must be a finite duration".to_string()))?;
    let scan_window = check_duration(scan_window, SCAN_WINDOW).map_err(|e| ("xdp.scan_window", e))?;
    let ban = |key: &'static str, text: &str| -> Result<Option<Duration>, (&'static str, String)> {
        match parse_duration(text).map_err(|e| (key, e))? {
            Some(duration) => check_duration(duration, BAN).map(Some).map_err(|e| (key, e)),
            None => Ok(None),
        }
    };
    let finite =
        |key: &'static str, duration: Option<Duration>| duration.ok_or((key, "must be a finite duration".to_string()));
    let default_duration = ban("bans.default_duration", &bans.default_duration)?;
    let scan_duration = ban("bans.scan_duration", &bans.scan_duration)?;
    let max_duration = finite("bans.max_duration", ban("bans.max_duration", &bans.max_duration)?)?;
    let detect_duration = finite("bans.detect_duration", ban("bans.detect_duration", &bans.detect_duration)?)?;
    Ok((
        XdpConfig {
            interfaces: xdp.interfaces,
            trusted,
            pin_dir: xdp.pin_dir,
            scan_ports,
            flood_syns,
            scan_window,
            mode: xdp.mode,
            trust_local: xdp.trust_local,
        },
        BansConfig { default_duration, scan_duration, max_duration, detect_duration },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xdp_mode_is_auto_by_default_and_named_modes_parse() {
        let (xdp, _) = validate(RawXdp::default(), RawBans::default()).unwrap();
        assert_eq!(xdp.mode, XdpModeSetting::Auto);
        let raw: RawXdp = toml::from_str("mode = \"generic\"").unwrap();
        assert_eq!(validate(raw, RawBans::default()).unwrap().0.mode, XdpModeSetting::Generic);
        let error = toml::from_str::<RawXdp>("mode = \"fast\"").unwrap_err().to_string();
        assert!(error.contains("unknown variant") && error.contains("native"), "{error}");
    }

    #[test]
    fn durations_parse_and_bad_ones_are_named() {
        assert_eq!(parse_duration("10m").unwrap(), Some(Duration::from_secs(600)));
        assert_eq!(parse_duration("permanent").unwrap(), None);
        assert!(parse_duration("-5m").unwrap_err().contains("negative"));
        assert!(parse_duration("0s").unwrap_err().contains("zero"));
        assert!(parse_duration("soon").unwrap_err().contains("\"soon\""));
    }
}
