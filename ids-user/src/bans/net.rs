//! Ban targets: an IPv4 or IPv6 address or prefix, parsed from user input with errors that name
//! it, and kept in canonical form (host bits cleared, `/32` and `/128` for single addresses).
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;

/// An address or prefix that can be banned or trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BanNet(IpNet);

/// Prefixes shorter than these cover so much of the address space that a ban of them needs `force`.
pub const BROAD_V4: u8 = 8;
pub const BROAD_V6: u8 = 16;

/// Why `input` is not an address or prefix. Displayed as `"INPUT" MESSAGE` when `message` is
/// about the whole input (`"1.2.3" is not an IPv4 or IPv6 address`), `"INPUT": MESSAGE` when it
/// names a part of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetParseError {
    pub input: String,
    pub message: String,
    /// `message` continues the input's name as a sentence (`is not ...`).
    whole: bool,
}

impl fmt::Display for NetParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let separator = if self.whole { " " } else { ": " };
        write!(f, "{:?}{separator}{}", self.input, self.message)
    }
}

impl std::error::Error for NetParseError {}

impl BanNet {
    pub fn parse(input: &str) -> Result<Self, NetParseError> {
        let error = |message: String| NetParseError { input: input.to_string(), message, whole: false };
        let text = input.trim();
        if text.is_empty() {
            return Err(error("empty; expected an IPv4 or IPv6 address, optionally with /PREFIX".into()));
        }
        let (addr_text, prefix_text) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let addr = IpAddr::from_str(addr_text).map_err(|_| match prefix_text {
            None => NetParseError {
                input: input.to_string(),
                message: "is not an IPv4 or IPv6 address".into(),
                whole: true,
            },
            Some(_) => error(format!("{addr_text:?} is not an IPv4 or IPv6 address")),
        })?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix_text {
            None => max,
            Some(p) => {
                let length: u8 =
                    p.parse().map_err(|_| error(format!("prefix length {p:?} is not a number from 0 to {max}")))?;
                if length > max {
                    return Err(error(format!(
                        "prefix length {length} is longer than {max}, the length of the address"
                    )));
                }
                length
            }
        };
        let net = IpNet::new(addr, prefix).map_err(|e| error(e.to_string()))?;
        Ok(Self(net.trunc()))
    }

    pub fn from_ipnet(net: IpNet) -> Self {
        Self(net.trunc())
    }

    #[cfg(test)]
    pub fn ipnet(&self) -> IpNet {
        self.0
    }

    pub fn prefix_len(&self) -> u8 {
        self.0.prefix_len()
    }

    /// One address rather than a prefix.
    pub fn is_single(&self) -> bool {
        self.0.prefix_len() == self.0.max_prefix_len()
    }

    pub fn is_ipv4(&self) -> bool {
        matches!(self.0, IpNet::V4(_))
    }

    /// Covers more than a `/8` of IPv4 or a `/16` of IPv6.
    pub fn is_broad(&self) -> bool {
        self.prefix_len() < if self.is_ipv4() { BROAD_V4 } else { BROAD_V6 }
    }

    /// Whether every address of `self` lies in `other`.
    pub fn within(&self, other: &BanNet) -> bool {
        other.0.contains(&self.0)
    }

    /// Whether the two share any address.
    #[cfg(test)]
    pub fn overlaps(&self, other: &BanNet) -> bool {
        self.within(other) || other.within(self)
    }

    /// Network address bytes: 4 for IPv4, 16 for IPv6.
    pub fn octets(&self) -> Vec<u8> {
        match self.0.network() {
            IpAddr::V4(a) => a.octets().to_vec(),
            IpAddr::V6(a) => a.octets().to_vec(),
        }
    }
}

impl fmt::Display for BanNet {
    /// Single addresses without a prefix length, prefixes with it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_single() { write!(f, "{}", self.0.addr()) } else { write!(f, "{}", self.0) }
    }
}

impl FromStr for BanNet {
    type Err = NetParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_prefixes_parse_to_canonical_form() {
        assert_eq!(BanNet::parse("10.1.2.3").unwrap().to_string(), "10.1.2.3");
        assert_eq!(BanNet::parse("10.1.2.3/32").unwrap().to_string(), "10.1.2.3");
        assert_eq!(BanNet::parse("198.18.7.9/15").unwrap().to_string(), "198.18.0.0/15");
        assert_eq!(BanNet::parse("fd00::1").unwrap().to_string(), "fd00::1");
        assert_eq!(BanNet::parse("fd00:1::5/32").unwrap().to_string(), "fd00:1::/32");
        assert!(BanNet::parse("10.0.0.1").unwrap().is_single());
        assert!(!BanNet::parse("10.0.0.0/8").unwrap().is_single());
    }

    #[test]
    fn a_bad_address_is_named_once() {
        assert_eq!(BanNet::parse("1.2.3").unwrap_err().to_string(), r#""1.2.3" is not an IPv4 or IPv6 address"#);
        assert_eq!(
            BanNet::parse("1.2.3/8").unwrap_err().to_string(),
            r#""1.2.3/8": "1.2.3" is not an IPv4 or IPv6 address"#
        );
        assert_eq!(
            BanNet::parse("10.0.0.0/x").unwrap_err().to_string(),
            r#""10.0.0.0/x": prefix length "x" is not a number from 0 to 32"#
        );
    }

    #[test]
    fn bad_input_is_refused_naming_it() {
        let err = BanNet::parse("999.1.1.1").unwrap_err().to_string();
        assert!(err.contains("999.1.1.1") && err.contains("not an IPv4 or IPv6 address"), "{err}");
        let err = BanNet::parse("198.18.0.0/33").unwrap_err().to_string();
        assert!(err.contains("33") && err.contains("longer than 32"), "{err}");
        let err = BanNet::parse("::/129").unwrap_err().to_string();
        assert!(err.contains("longer than 128"), "{err}");
        assert!(BanNet::parse("10.0.0.0/x").unwrap_err().to_string().contains("not a number"));
        assert!(BanNet::parse("").unwrap_err().to_string().contains("empty"));
    }

    #[test]
    fn broad_prefixes_and_containment() {
        assert!(BanNet::parse("::/0").unwrap().is_broad());
        assert!(BanNet::parse("0.0.0.0/0").unwrap().is_broad());
        assert!(!BanNet::parse("10.0.0.0/8").unwrap().is_broad());
        let host = BanNet::parse("10.1.2.3").unwrap();
        let net = BanNet::parse("10.1.0.0/16").unwrap();
        assert!(host.within(&net) && !net.within(&host) && net.overlaps(&host));
        assert!(!BanNet::parse("fd00::1").unwrap().overlaps(&net));
    }
}
