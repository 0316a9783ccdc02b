//! The `[xdp]` and `[bans]` config sections, raw (serde) and validated.
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::net::BanNet;
use crate::bounds::{BAN, SCAN_WINDOW, check, check_duration};
use crate::time::ConfigDuration;

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
    scan_window: ConfigDuration,
    #[serde(default)]
    mode: XdpModeSetting,
    /// Per-interface overrides of `mode`: interface name → mode.
    #[serde(default)]
    interface_modes: std::collections::BTreeMap<String, XdpModeSetting>,
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
            interface_modes: Default::default(),
            trust_local: default_trust_local(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBans {
    #[serde(default = "default_duration")]
    default_duration: ConfigDuration,
    #[serde(default = "default_duration")]
    scan_duration: ConfigDuration,
    #[serde(default = "default_max_duration")]
    max_duration: ConfigDuration,
    #[serde(default = "default_detect_duration")]
    detect_duration: ConfigDuration,
    /// Whether `ids ban` (source `manual`) counts as an offence toward a detector's escalation.
    #[serde(default)]
    manual_counts_as_offence: bool,
}

impl Default for RawBans {
    fn default() -> Self {
        Self {
            default_duration: default_duration(),
            scan_duration: default_duration(),
            max_duration: default_max_duration(),
            detect_duration: default_detect_duration(),
            manual_counts_as_offence: false,
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
fn default_scan_window() -> ConfigDuration {
    ConfigDuration::secs(10)
}
fn default_duration() -> ConfigDuration {
    ConfigDuration::secs(3600)
}
fn default_detect_duration() -> ConfigDuration {
    ConfigDuration::secs(600)
}
fn default_max_duration() -> ConfigDuration {
    ConfigDuration::secs(30 * 86_400)
}

/// `[xdp] mode` (and `[xdp] interface_modes`): which program enforces bans on an interface, and
/// how it is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpModeSetting {
    /// XDP in native (driver) mode where the driver has it, except on veth; the tc ingress
    /// program elsewhere (a veth's packets come from local sockets as socket buffers, which XDP
    /// would copy first; generic-mode XDP copies too). Generic XDP only if tc cannot attach.
    #[default]
    Auto,
    /// XDP in native mode only: an interface whose driver lacks it is left without the filter (logged).
    Native,
    /// XDP in generic (skb) mode everywhere, for drivers whose native XDP misbehaves.
    Generic,
    /// The tc ingress program (`tc_guard`), whatever the driver.
    Tc,
}

/// `[xdp] interfaces`: where the XDP program (ban filter, SYN watcher) is attached.
#[derive(Debug, Clone, PartialEq)]
pub enum XdpInterfaces {
    /// `[]`, the default: nowhere. A first run must not put a filter on the host's uplink unasked.
    None,
    /// `["*"]`: every interface but loopback, new ones included.
    All,
    /// These interfaces, by name (loopback too when named).
    Named(Vec<String>),
}

/// The `[xdp] interfaces` entry that means every interface.
pub const ALL_INTERFACES: &str = "*";

impl XdpInterfaces {
    /// Whether the program belongs on `interface`.
    pub fn wants(&self, interface: &str) -> bool {
        match self {
            Self::None => false,
            // Loopback's traffic comes from this host, and generic-mode XDP would tax every local
            // connection: "every interface" leaves it out; named, it is attached.
            Self::All => !is_loopback(interface),
            Self::Named(names) => names.iter().any(|name| name == interface),
        }
    }

    /// Named interfaces this host does not have (the program cannot enforce anything there).
    pub fn absent(&self) -> Vec<String> {
        match self {
            Self::Named(names) => names
                .iter()
                .filter(|name| !std::path::Path::new("/sys/class/net").join(name).exists())
                .cloned()
                .collect(),
            Self::None | Self::All => Vec::new(),
        }
    }
}

/// Whether `interface` is a loopback device (`IFF_LOOPBACK` in its sysfs flags).
fn is_loopback(interface: &str) -> bool {
    const IFF_LOOPBACK: u32 = 0x8;
    std::fs::read_to_string(format!("/sys/class/net/{interface}/flags"))
        .ok()
        .and_then(|flags| u32::from_str_radix(flags.trim().trim_start_matches("0x"), 16).ok())
        .is_some_and(|flags| flags & IFF_LOOPBACK != 0)
}

#[derive(Debug, Clone, PartialEq)]
pub struct XdpConfig {
    /// Interfaces the XDP program is attached to.
    pub interfaces: XdpInterfaces,
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
    /// Interfaces whose mode is not `mode`.
    pub interface_modes: std::collections::BTreeMap<String, XdpModeSetting>,
    /// Trust the addresses of this host's interfaces (as found when the daemon or CLI starts).
    pub trust_local: bool,
}

impl XdpConfig {
    /// The mode configured for `interface`: its `interface_modes` entry, else `mode`.
    pub fn mode_of(&self, interface: &str) -> XdpModeSetting {
        self.interface_modes.get(interface).copied().unwrap_or(self.mode)
    }
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
    /// Whether a manual ban (`ids ban`, source `manual`) counts as an offence of the net, so that a
    /// detector's later ban of it escalates; by default it does not.
    pub manual_counts_as_offence: bool,
}

/// A ban duration as people write it (`90s`, `10m`, `1h 30m`, `7d`), or `permanent`/`forever`
/// (`None`). Zero and negative durations are refused.
pub fn parse_duration(text: &str) -> Result<Option<Duration>, String> {
    crate::time::parse_duration_or_permanent(text)
}

pub(crate) fn validate(xdp: RawXdp, bans: RawBans) -> Result<(XdpConfig, BansConfig), (&'static str, String)> {
    let mut trusted = Vec::new();
    for entry in &xdp.trusted {
        trusted.push(BanNet::parse(entry).map_err(|e| ("xdp.trusted", e.to_string()))?);
    }
    let interfaces = match xdp.interfaces.as_slice() {
        [] => XdpInterfaces::None,
        [all] if all == ALL_INTERFACES => XdpInterfaces::All,
        names => {
            for name in names {
                if name == ALL_INTERFACES {
                    return Err((
                        "xdp.interfaces",
                        format!("{ALL_INTERFACES:?} (every interface) cannot be combined with names"),
                    ));
                }
                if name.is_empty() || name.len() > 15 || name.contains('/') {
                    return Err(("xdp.interfaces", format!("{name:?} is not an interface name")));
                }
            }
            XdpInterfaces::Named(names.to_vec())
        }
    };
    for name in xdp.interface_modes.keys() {
        if name.is_empty() || name.len() > 15 || name.contains('/') || name == ALL_INTERFACES {
            return Err(("xdp.interface_modes", format!("{name:?} is not an interface name")));
        }
    }
    if !xdp.pin_dir.is_absolute() {
        return Err(("xdp.pin_dir", format!("{} is not an absolute path", xdp.pin_dir.display())));
    }
    let scan_ports = check(xdp.scan_ports, 0..=65_536).map_err(|e| ("xdp.scan_ports", e))?;
    let flood_syns = check(xdp.flood_syns, 0..=1_000_000_000).map_err(|e| ("xdp.flood_syns", e))?;
    let scan_window = xdp.scan_window.finite().map_err(|e| ("xdp.scan_window", e))?;
    let scan_window = check_duration(scan_window, SCAN_WINDOW).map_err(|e| ("xdp.scan_window", e))?;
    let ban = |key: &'static str, setting: &ConfigDuration| -> Result<Option<Duration>, (&'static str, String)> {
        match setting.value().map_err(|e| (key, e))? {
            Some(duration) => check_duration(duration, BAN).map(Some).map_err(|e| (key, e)),
            None => Ok(None),
        }
    };
    let finite = |key: &'static str, setting: &ConfigDuration| {
        setting.finite().map_err(|e| (key, e))?;
        ban(key, setting).map(|d| d.unwrap_or(BAN.max))
    };
    let default_duration = ban("bans.default_duration", &bans.default_duration)?;
    let scan_duration = ban("bans.scan_duration", &bans.scan_duration)?;
    let max_duration = finite("bans.max_duration", &bans.max_duration)?;
    let detect_duration = finite("bans.detect_duration", &bans.detect_duration)?;
    Ok((
        XdpConfig {
            interfaces,
            trusted,
            pin_dir: xdp.pin_dir,
            scan_ports,
            flood_syns,
            scan_window,
            mode: xdp.mode,
            interface_modes: xdp.interface_modes,
            trust_local: xdp.trust_local,
        },
        BansConfig {
            default_duration,
            scan_duration,
            max_duration,
            detect_duration,
            manual_counts_as_offence: bans.manual_counts_as_offence,
        },
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
        assert!(error.contains("unknown variant") && error.contains("native") && error.contains("tc"), "{error}");
    }

    #[test]
    fn a_mode_per_interface_overrides_the_global_one() {
        let raw: RawXdp = toml::from_str("mode = \"native\"\n[interface_modes]\nveth0 = \"tc\"").unwrap();
        let xdp = validate(raw, RawBans::default()).unwrap().0;
        assert_eq!(xdp.mode_of("veth0"), XdpModeSetting::Tc);
        assert_eq!(xdp.mode_of("eth0"), XdpModeSetting::Native);
        let raw: RawXdp = toml::from_str("[interface_modes]\n\"a/b\" = \"tc\"").unwrap();
        assert_eq!(validate(raw, RawBans::default()).unwrap_err().0, "xdp.interface_modes");
    }

    #[test]
    fn interfaces_empty_means_none_star_means_all_but_loopback() {
        let interfaces =
            |text: &str| validate(toml::from_str(text).unwrap(), RawBans::default()).map(|c| c.0.interfaces);
        let none = interfaces("").unwrap();
        assert_eq!(none, XdpInterfaces::None);
        assert!(!none.wants("eth0"));
        let all = interfaces("interfaces = [\"*\"]").unwrap();
        assert!(all.wants("eth0") && !all.wants("lo"));
        let named = interfaces("interfaces = [\"lo\", \"eth1\"]").unwrap();
        assert!(named.wants("lo") && named.wants("eth1") && !named.wants("eth0"));
        let error = interfaces("interfaces = [\"*\", \"lo\"]").unwrap_err();
        assert!(error.0 == "xdp.interfaces" && error.1.contains("cannot be combined"), "{error:?}");
    }

    #[test]
    fn loopback_is_told_apart_by_its_flags() {
        assert!(is_loopback("lo"));
        assert!(!is_loopback("no-such-interface"));
        let others: Vec<String> = std::fs::read_dir("/sys/class/net")
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|name| name != "lo")
            .collect();
        assert!(others.iter().all(|name| !is_loopback(name) || name.starts_with("lo")), "{others:?}");
    }

    #[test]
    fn absent_interfaces_are_named() {
        let interfaces = XdpInterfaces::Named(vec!["lo".into(), "idsnosuch0".into()]);
        assert_eq!(interfaces.absent(), ["idsnosuch0"]);
        assert!(XdpInterfaces::All.absent().is_empty());
    }

    #[test]
    fn durations_parse_and_bad_ones_are_named() {
        assert_eq!(parse_duration("10m").unwrap(), Some(Duration::from_secs(600)));
        assert_eq!(parse_duration("permanent").unwrap(), None);
        assert!(parse_duration("-5m").unwrap_err().contains("negative"));
        assert!(parse_duration("0s").unwrap_err().contains("zero"));
        assert_eq!(
            parse_duration("soon").unwrap_err(),
            r#"invalid duration "soon": expected a number and a unit (s, m, h, d), e.g. 90s, 10m, 1h"#
        );
    }
}
