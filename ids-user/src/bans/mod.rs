//! Bans: the one path by which anything in `ids` bans or unbans an address or prefix.
//!
//! # API
//! - [`BanRequest`] names what to ban ([`BanNet`], parsed with [`BanNet::parse`]), why (`reason`,
//!   free text, not empty), who asks (`source`: `manual`, `port-scan`, `syn-flood`,
//!   `ssh-bruteforce`, `web-attack`, ...: lowercase letters, digits and `-`), for how long
//!   ([`BanDuration`]: the configured default, a fixed duration, permanent, or
//!   [`BanDuration::Escalating`]`(base)`: `base × 2^(earlier offences of this net)`, at most
//!   `[bans] max_duration`, with the why kept in the ban's `escalation`; the store counts every
//!   net's offences in `offenders`, a manual ban only with `[bans] manual_counts_as_offence`), and
//!   optionally the detector's alert to raise with the decision ([`BanRequest::raising`]).
//! - Inside the daemon, every detector holds a [`BanSender`] (the daemon owns the one receiver)
//!   and calls `sender.try_send(request)`; the daemon hands each request to [`Bans::apply`], which
//!   decides trust and escalation (here only), records the ban, raises its alert (kind `ban`) and
//!   the detector's alert with the decision (offence, duration), and puts it in the kernel map.
//! - Code that owns a [`Bans`] (the daemon for control requests; the CLI when no daemon runs,
//!   with no kernel maps) calls [`Bans::ban`], [`Bans::ban_all`], [`Bans::unban`], [`Bans::list`].
//!
//! Bans live in the store (`bans` table) and, while the daemon runs, in the pinned maps of the
//! XDP program ([`kernel`]). [`Bans::expire`] removes expired bans from both; [`Bans::reconcile`]
//! makes the maps equal to the store at start (the maps survived the daemon; the store may have
//! been edited while it was down).

pub mod config;
pub mod kernel;
pub mod links;
pub mod net;
pub mod scan;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use tracing::{info, warn};

pub use self::config::{BansConfig, XdpConfig, parse_duration};
pub use self::kernel::BanMaps;
pub use self::net::BanNet;
use crate::alert::{Alert, AlertBody, AlertSink, BanAlert, DetectAction};
use crate::store::bans_table::NewBan;
use crate::store::{BanRow, Escalation, Store, StoreError};

/// How long a ban lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BanDuration {
    /// `[bans] default_duration`.
    Default,
    For(Duration),
    Permanent,
    /// `base × 2^n` where `n` is how many times the net was banned before, capped at
    /// `[bans] max_duration`.
    Escalating(Duration),
    /// Until this instant (a fleet ban: the same expiry on every host).
    Until(SystemTime),
}

/// A request to ban one address or prefix.
#[derive(Debug, Clone)]
pub struct BanRequest {
    pub net: BanNet,
    pub reason: String,
    pub source: String,
    pub duration: BanDuration,
    /// Allow prefixes broader than /8 (IPv4) or /16 (IPv6).
    pub force: bool,
    /// The asking detector's alert: raised by the ban path once it decided, with the decision
    /// (`DetectAction`) filled in.
    pub alert: Option<Box<Alert>>,
    /// The asking detector's count of requests that ended in a ban (`ids status`), counted here.
    pub banned: Option<Arc<AtomicU64>>,
}

impl BanRequest {
    pub fn new(net: BanNet, reason: impl Into<String>, source: impl Into<String>, duration: BanDuration) -> Self {
        Self { net, reason: reason.into(), source: source.into(), duration, force: false, alert: None, banned: None }
    }

    /// Has the ban path raise `alert` with its decision.
    pub fn raising(mut self, alert: Alert) -> Self {
        self.alert = Some(Box::new(alert));
        self
    }

    /// Has the ban path count the request in `banned` if it bans.
    pub fn counted_in(mut self, banned: Arc<AtomicU64>) -> Self {
        self.banned = Some(banned);
        self
    }
}

/// The source of the bans of `ids ban` and the control socket.
pub const MANUAL: &str = "manual";

/// Where detectors send ban requests; the daemon owns the receiving end.
pub type BanSender = tokio::sync::mpsc::Sender<BanRequest>;

#[derive(Debug, thiserror::Error)]
pub enum BanError {
    #[error(transparent)]
    Net(#[from] net::NetParseError),
    #[error("{what} {value:?}: {message}")]
    Invalid { what: &'static str, value: String, message: String },
    #[error(
        "{net} is trusted (by {trusted}: an [xdp] trusted entry, or an address of this host with [xdp] trust_local); trusted addresses are never banned"
    )]
    Trusted { net: BanNet, trusted: BanNet },
    #[error("{net} covers more than a /{limit} of the address space; pass --force to ban it anyway")]
    TooBroad { net: BanNet, limit: u8 },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("kernel map: {0:#}")]
    Kernel(anyhow::Error),
}

/// The result of a ban: the stored row and whether it is new (false: it was banned already).
#[derive(Debug, Clone, serde::Serialize)]
pub struct BanOutcome {
    #[serde(flatten)]
    pub ban: BanRow,
    pub created: bool,
    /// How many offences of the net are counted, this ban included (a manual ban is none unless
    /// `[bans] manual_counts_as_offence`).
    #[serde(skip)]
    pub offence: u32,
    /// How long this ban lasts (`None`: permanent), escalation applied.
    #[serde(skip)]
    pub duration: Option<Duration>,
}

/// What the ban path decided for one request.
struct Decision {
    offence: u32,
    /// Whether this ban, if new, counts as an offence of its net.
    counts: bool,
    duration: Option<Duration>,
    expires: Option<String>,
    escalation: Option<Escalation>,
}

/// `1st`, `2nd`, `3rd`, `4th`, ..., `11th`, `12th`, `13th`, `21st`, ...
fn ordinal(n: u32) -> String {
    let suffix = match (n % 10, n % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}

fn human(duration: Duration) -> String {
    humantime::format_duration(duration).to_string()
}

/// Why an escalating ban of `base` lasts `duration` at its `offence`th offence (`max`: the cap).
fn escalation(offence: u32, base: Duration, duration: Duration, max: Duration) -> Escalation {
    let doublings = offence.saturating_sub(1);
    let uncapped = match 1u32.checked_shl(doublings) {
        Some(factor) if doublings < 32 => base.checked_mul(factor),
        _ => None,
    };
    let mut reason = match doublings {
        0 => format!("{} offence: the base duration, {}", ordinal(offence), human(base)),
        1 => format!("{} offence: {} doubled once", ordinal(offence), human(base)),
        2 => format!("{} offence: {} doubled twice", ordinal(offence), human(base)),
        n => format!("{} offence: {} doubled {n} times", ordinal(offence), human(base)),
    };
    if doublings > 0 && uncapped == Some(duration) {
        reason += &format!(" = {}", human(duration));
    } else if uncapped != Some(duration) {
        if let Some(uncapped) = uncapped.filter(|u| doublings > 0 && *u > max) {
            reason += &format!(" = {}", human(uncapped));
        }
        reason += &format!(", capped at [bans] max_duration = {}", human(max));
    }
    Escalation { offence, base: human(base), duration: human(duration), reason }
}

/// What [`Bans::reconcile`] changed in the kernel maps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Reconciled {
    pub added: usize,
    pub removed: usize,
    pub kept: usize,
    pub expired: usize,
}

pub struct Bans {
    store: Store,
    kernel: Option<BanMaps>,
    /// `configured` plus, with `[xdp] trust_local`, the host's addresses as last read.
    trusted: Vec<BanNet>,
    /// The `[xdp] trusted` entries.
    configured: Vec<BanNet>,
    /// With `[xdp] trust_local`: the host's addresses as last read (sorted); `None` without it.
    local: Option<Vec<std::net::IpAddr>>,
    config: BansConfig,
    /// Where the alerts of detectors' bans go.
    sink: AlertSink,
    /// The parts received so far of a bulk ban ([`Bans::stage`]).
    bulk: Option<Bulk>,
    /// The earliest expiry in the store (`None`: none expires), so that [`Bans::expire`] touches
    /// the database only when a ban is due.
    next_expiry: Option<String>,
}

/// A bulk ban being received in parts: every request checked already, none applied.
struct Bulk {
    token: String,
    /// Parts received so far.
    parts: usize,
    requests: Vec<BanRequest>,
}

/// Most requests one bulk ban may hold (the maps hold at most 2M + 1M single addresses and
/// 2 × 256k prefixes).
pub const BULK_MAX: usize = 4 << 20;

/// The addresses of this host's interfaces (`getifaddrs`); empty if the call fails.
pub fn local_addresses() -> Vec<std::net::IpAddr> {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    let mut out = Vec::new();
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a linked list that freeifaddrs releases below.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        warn!(error = %std::io::Error::last_os_error(), "listing this host's addresses");
        return out;
    }
    let mut cursor = list;
    while !cursor.is_null() {
        // SAFETY: a node of the list getifaddrs returned, alive until freeifaddrs.
        let entry = unsafe { &*cursor };
        if !entry.ifa_addr.is_null() {
            // SAFETY: ifa_addr points to a sockaddr whose family says which sockaddr_* it is.
            match i32::from(unsafe { (*entry.ifa_addr).sa_family }) {
                libc::AF_INET => {
                    let sin = unsafe { &*(entry.ifa_addr as *const libc::sockaddr_in) };
                    out.push(IpAddr::V4(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr))));
                }
                libc::AF_INET6 => {
                    let sin6 = unsafe { &*(entry.ifa_addr as *const libc::sockaddr_in6) };
                    out.push(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)));
                }
                _ => {}
            }
        }
        cursor = entry.ifa_next;
    }
    // SAFETY: the list getifaddrs returned, freed once.
    unsafe { libc::freeifaddrs(list) };
    out
}

fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_micros(time).to_string()
}

fn kernel_id(row: &BanRow) -> u32 {
    row.id.clamp(0, u32::MAX as i64) as u32
}

impl Bans {
    /// The bans of the database in `state_dir`; `kernel`: the maps to enforce them in (`None`
    /// when no daemon runs: only the store changes).
    pub fn open(
        state_dir: &std::path::Path,
        xdp: &XdpConfig,
        bans: &BansConfig,
        kernel: Option<BanMaps>,
        sink: AlertSink,
    ) -> Result<Self, BanError> {
        std::fs::create_dir_all(state_dir).map_err(|e| BanError::Invalid {
            what: "state_dir",
            value: state_dir.display().to_string(),
            message: e.to_string(),
        })?;
        let store = Store::open(&crate::store::db_path(state_dir))?;
        let mut bans = Self::with_store(store, kernel, xdp.trusted.clone(), bans.clone(), sink);
        if xdp.trust_local {
            bans.set_local_addresses(local_addresses());
        }
        Ok(bans)
    }

    pub fn with_store(
        store: Store,
        kernel: Option<BanMaps>,
        trusted: Vec<BanNet>,
        config: BansConfig,
        sink: AlertSink,
    ) -> Self {
        let next_expiry = store.next_ban_expiry().unwrap_or(Some(String::new()));
        Self { store, kernel, configured: trusted.clone(), trusted, local: None, config, sink, bulk: None, next_expiry }
    }

    /// Trusts `addresses` (this host's) besides the configured entries, from now on instead of
    /// the ones given before. Returns whether the set changed; the kernel's trusted maps are
    /// updated in [`Bans::reconcile`], or here once the maps hold the trusted set.
    fn set_local_addresses(&mut self, mut addresses: Vec<std::net::IpAddr>) -> bool {
        addresses.sort();
        addresses.dedup();
        if self.local.as_ref() == Some(&addresses) {
            return false;
        }
        let mut trusted = self.configured.clone();
        for addr in &addresses {
            let net = BanNet::from_ipnet(ipnet::IpNet::from(*addr));
            if !trusted.iter().any(|t| net.within(t)) {
                trusted.push(net);
            }
        }
        self.trusted = trusted;
        self.local = Some(addresses);
        true
    }

    /// With `[xdp] trust_local`: reads this host's addresses again; a new one is trusted from
    /// now on (never dropped, never banned), a removed one no longer. Cheap when nothing changed
    /// (one `getifaddrs`), so the daemon calls it with each interface rescan.
    pub fn refresh_local_addresses(&mut self) -> Result<(), BanError> {
        if self.local.is_none() {
            return Ok(());
        }
        let before = self.trusted.clone();
        if !self.set_local_addresses(local_addresses()) {
            return Ok(());
        }
        let added: Vec<String> = self.trusted.iter().filter(|t| !before.contains(t)).map(|t| t.to_string()).collect();
        let removed: Vec<String> = before.iter().filter(|t| !self.trusted.contains(t)).map(|t| t.to_string()).collect();
        info!(?added, ?removed, "this host's addresses changed; trusted addresses updated");
        if let Some(kernel) = &mut self.kernel {
            kernel.set_trusted(&self.trusted).map_err(BanError::Kernel)?;
        }
        Ok(())
    }

    /// `[xdp] trusted` and `[bans]` as read again (SIGHUP), from now on; the kernel's trusted
    /// maps follow at once. Bans in place are not touched.
    pub fn reconfigure(&mut self, trusted: Vec<BanNet>, config: BansConfig) -> Result<(), BanError> {
        self.config = config;
        if trusted == self.configured {
            return Ok(());
        }
        self.configured = trusted;
        match self.local.take() {
            Some(addresses) => {
                self.set_local_addresses(addresses);
            }
            None => self.trusted = self.configured.clone(),
        }
        if let Some(kernel) = &mut self.kernel {
            kernel.set_trusted(&self.trusted).map_err(BanError::Kernel)?;
        }
        Ok(())
    }

    pub fn store(&mut self) -> &mut Store {
        &mut self.store
    }

    /// Where the ban path raises its alerts.
    pub fn sink(&self) -> &AlertSink {
        &self.sink
    }

    /// Refuses what may not be banned; changes nothing.
    pub fn check(&self, request: &BanRequest) -> Result<(), BanError> {
        if request.reason.trim().is_empty() {
            return Err(BanError::Invalid { what: "reason", value: request.reason.clone(), message: "empty".into() });
        }
        if request.source.is_empty()
            || !request.source.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(BanError::Invalid {
                what: "source",
                value: request.source.clone(),
                message: "must be lowercase letters, digits and '-'".into(),
            });
        }
        if matches!(request.duration, BanDuration::For(d) | BanDuration::Escalating(d) if d.is_zero()) {
            return Err(BanError::Invalid { what: "duration", value: "0s".into(), message: "zero".into() });
        }
        if let BanDuration::Until(until) = request.duration
            && until <= SystemTime::now()
        {
            return Err(BanError::Invalid { what: "expiry", value: rfc3339(until), message: "already past".into() });
        }
        if let Some(trusted) = self.trusted.iter().find(|t| request.net.within(t)) {
            return Err(BanError::Trusted { net: request.net, trusted: *trusted });
        }
        if request.net.is_broad() && !request.force {
            let limit = if request.net.is_ipv4() { net::BROAD_V4 } else { net::BROAD_V6 };
            return Err(BanError::TooBroad { net: request.net, limit });
        }
        Ok(())
    }

    /// The decision for `request`: its offence number, its duration (escalation is decided here
    /// only) and the expiry that follows.
    fn decide(&self, request: &BanRequest) -> Result<Decision, BanError> {
        let earlier = self.store.offences(&request.net.to_string())?;
        let counts = request.source != MANUAL || self.config.manual_counts_as_offence;
        let mut escalated = None;
        let duration = match request.duration {
            BanDuration::Default => self.config.default_duration,
            BanDuration::For(d) => Some(d),
            BanDuration::Permanent => None,
            BanDuration::Until(until) => Some(until.duration_since(SystemTime::now()).unwrap_or_default()),
            BanDuration::Escalating(base) => {
                let factor = 1u32.checked_shl(earlier.min(31)).unwrap_or(u32::MAX);
                let max = self.config.max_duration;
                let duration = base.saturating_mul(factor).min(max).max(base.min(max));
                escalated = Some(escalation(earlier.saturating_add(1), base, duration, max));
                Some(duration)
            }
        };
        let expires = match request.duration {
            BanDuration::Until(until) => Some(rfc3339(until)),
            _ => duration.map(|d| {
                rfc3339(
                    SystemTime::now()
                        .checked_add(d)
                        .unwrap_or(SystemTime::now() + Duration::from_secs(100 * 365 * 86_400)),
                )
            }),
        };
        let offence = if counts { earlier.saturating_add(1) } else { earlier };
        Ok(Decision { offence, counts, duration, expires, escalation: escalated })
    }

    /// Applies a request from the ban channel (detectors, the scan detector, fleet decisions)
    /// and raises the asking detector's alert with the decision.
    pub fn apply(&mut self, mut request: BanRequest) {
        let alert = request.alert.take();
        let banned = request.banned.take();
        let net = request.net;
        let action = match self.ban(request) {
            Ok(outcome) => {
                if let Some(banned) = banned {
                    banned.fetch_add(1, Ordering::Relaxed);
                }
                DetectAction::BanRequested {
                    duration_s: outcome.duration.map_or(0, |d| d.as_secs()),
                    offence: outcome.offence,
                    escalation: outcome.ban.escalation.clone(),
                }
            }
            Err(BanError::Trusted { .. }) => DetectAction::NotBannedTrusted,
            Err(e) => {
                warn!(%net, error = %e, "ban request refused");
                DetectAction::BanNotDelivered { reason: e.to_string() }
            }
        };
        if let Some(mut alert) = alert {
            if let AlertBody::Detect(detect) = &mut alert.body {
                detect.action = action;
            }
            self.sink.emit(*alert);
        }
    }

    /// Bans one net (see the module doc).
    pub fn ban(&mut self, request: BanRequest) -> Result<BanOutcome, BanError> {
        Ok(self.ban_all(vec![request])?.remove(0))
    }

    /// Checks every request; the first refused is returned with its index. Changes nothing.
    pub fn check_all(&self, requests: &[BanRequest]) -> Result<(), (usize, BanError)> {
        requests.iter().enumerate().try_for_each(|(index, request)| self.check(request).map_err(|e| (index, e)))
    }

    /// Bans every request, in one store transaction, then in the kernel maps; if any request is
    /// refused, or the kernel does not take one, nothing changes (the store's transaction is
    /// rolled back, the maps lose what this call added).
    pub fn ban_all(&mut self, requests: Vec<BanRequest>) -> Result<Vec<BanOutcome>, BanError> {
        let mut nets = Vec::with_capacity(requests.len());
        let mut decisions = Vec::with_capacity(requests.len());
        for request in &requests {
            self.check(request)?;
            decisions.push(self.decide(request)?);
            nets.push(request.net.to_string());
        }
        let new: Vec<NewBan<'_>> = requests
            .iter()
            .zip(&nets)
            .zip(&decisions)
            .map(|((r, net), decision)| NewBan {
                net,
                reason: &r.reason,
                source: &r.source,
                expires: decision.expires.clone(),
                escalation: decision.escalation.clone(),
                offence: decision.counts,
            })
            .collect();
        let kernel = &mut self.kernel;
        let stored = self.store.add_bans_then(&new, |stored| {
            let Some(kernel) = kernel else { return Ok(()) };
            let entries: Vec<(BanNet, u32)> =
                requests.iter().zip(stored).map(|(r, (row, _))| (r.net, kernel_id(row))).collect();
            kernel.insert_all(&entries).map_err(|e| {
                // Keep store and maps equal: undo what this call added (a net banned before keeps
                // its entry, which has the same id).
                for ((net, id), (_, created)) in entries.iter().zip(stored) {
                    if *created && let Err(e) = kernel.remove(net, *id) {
                        warn!(%net, error = crate::error_text::one_line(e.as_ref()), "undoing a ban in the kernel map");
                    }
                }
                BanError::Kernel(e)
            })
        })?;
        for (row, _) in &stored {
            if let Some(expires) = &row.expires
                && self.next_expiry.as_ref().is_none_or(|next| expires < next)
            {
                self.next_expiry = Some(expires.clone());
            }
        }
        if requests.len() > 1 {
            let new = stored.iter().filter(|(_, created)| *created).count();
            info!(bans = stored.len(), new, "banned in bulk");
        }
        let mut outcomes = Vec::with_capacity(stored.len());
        let mut alerts = Vec::new();
        for ((request, (row, created)), decision) in requests.iter().zip(stored).zip(decisions) {
            if created && request.source != MANUAL {
                alerts.push(Alert::now(AlertBody::Ban(BanAlert {
                    net: row.net.clone(),
                    source: row.source.clone(),
                    reason: row.reason.clone(),
                    expires: row.expires.clone(),
                    offence: decision.offence,
                    escalation: row.escalation.clone(),
                })));
            }
            if created && requests.len() == 1 {
                info!(net = %row.net, source = %row.source, reason = %row.reason, expires = ?row.expires, "banned");
            }
            outcomes.push(BanOutcome { ban: row, created, offence: decision.offence, duration: decision.duration });
        }
        self.sink.emit_all(alerts);
        Ok(outcomes)
    }

    /// Receives part `part` (from 1) of the `parts` of bulk ban `token` (a list too long for one
    /// control request): checks its requests and keeps them; the last part applies them all with
    /// [`Bans::ban_all`], so the bulk is banned whole or not at all. A refusal (the index counts
    /// from the bulk's first request) drops the bulk. A new bulk replaces one left unfinished.
    // Once per control request: the size of the error costs nothing that matters.
    #[allow(clippy::result_large_err)]
    pub fn ban_part(
        &mut self,
        token: &str,
        part: usize,
        parts: usize,
        requests: Vec<BanRequest>,
    ) -> Result<Option<Vec<BanOutcome>>, (Option<usize>, BanError)> {
        let invalid =
            |message: String| (None, BanError::Invalid { what: "bulk ban", value: token.to_string(), message });
        if part == 1 {
            if let Some(old) = self.bulk.take() {
                warn!(token = old.token, parts = old.parts, "an unfinished bulk ban is dropped for a new one");
            }
            self.bulk = Some(Bulk { token: token.to_string(), parts: 0, requests: Vec::new() });
        }
        // A part of another bulk leaves the one under way alone.
        let Some(mut bulk) = self.bulk.take_if(|b| b.token == token) else {
            return Err(invalid(format!(
                "part {part} of {parts} of a bulk ban not under way (another replaced it?); nothing was banned"
            )));
        };
        if part != bulk.parts + 1 || part > parts || bulk.requests.len() + requests.len() > BULK_MAX {
            return Err(invalid(format!(
                "part {part} of {parts} after {} parts, {} requests (at most {BULK_MAX}); nothing was banned",
                bulk.parts,
                bulk.requests.len()
            )));
        }
        self.check_all(&requests).map_err(|(index, e)| (Some(bulk.requests.len() + index), e))?;
        bulk.parts = part;
        bulk.requests.extend(requests);
        if part < parts {
            self.bulk = Some(bulk);
            return Ok(None);
        }
        self.ban_all(bulk.requests).map(Some).map_err(|e| (None, e))
    }

    /// Lifts the ban of `net`; `None` when it was not banned.
    pub fn unban(&mut self, net: &BanNet) -> Result<Option<BanRow>, BanError> {
        let Some(mut row) = self.store.remove_ban(&net.to_string())? else { return Ok(None) };
        if let Some(kernel) = &mut self.kernel {
            if let Some((packets, bytes)) = kernel.hits().get(&kernel_id(&row)) {
                row.packets = *packets;
                row.bytes = *bytes;
            }
            kernel.remove(net, kernel_id(&row)).map_err(BanError::Kernel)?;
        }
        info!(net = %row.net, "unbanned");
        Ok(Some(row))
    }

    /// Every ban, with the kernel's hit counters when the daemon runs (the last stored ones otherwise).
    pub fn list(&mut self) -> Result<Vec<BanRow>, BanError> {
        let mut rows = self.store.bans()?;
        if let Some(kernel) = &self.kernel {
            let hits = kernel.hits();
            for row in &mut rows {
                if let Some((packets, bytes)) = hits.get(&kernel_id(row)) {
                    row.packets = *packets;
                    row.bytes = *bytes;
                }
            }
        }
        Ok(rows)
    }

    /// Packets dropped per net for the bans `source` made (the fleet's, for the heartbeat).
    pub fn packets_of_source(&mut self, source: &str) -> Result<std::collections::BTreeMap<String, u64>, BanError> {
        let rows = self.store.bans_of_source(source)?;
        let hits = self.kernel.as_ref().map(|kernel| kernel.hits()).unwrap_or_default();
        Ok(rows
            .iter()
            .map(|row| (row.net.clone(), hits.get(&kernel_id(row)).map_or(row.packets, |(packets, _)| *packets)))
            .collect())
    }

    /// How many times `net` has been banned.
    #[cfg(test)]
    pub fn offences(&self, net: &BanNet) -> Result<u32, BanError> {
        Ok(self.store.offences(&net.to_string())?)
    }

    /// How long until the next stored ban expires (zero if one is due or its time does not
    /// parse); `None` when no ban expires.
    pub fn until_next_expiry(&self) -> Option<Duration> {
        let next = self.next_expiry.as_deref()?;
        Some(
            humantime::parse_rfc3339(next)
                .ok()
                .and_then(|at| at.duration_since(SystemTime::now()).ok())
                .unwrap_or(Duration::ZERO),
        )
    }

    /// Removes expired bans from the store and the maps; returns them.
    pub fn expire(&mut self) -> Result<Vec<BanRow>, BanError> {
        let now = crate::store::now();
        if self.next_expiry.as_ref().is_none_or(|next| *next > now) {
            return Ok(Vec::new());
        }
        let expired = self.store.remove_expired_bans(&now)?;
        self.next_expiry = self.store.next_ban_expiry()?;
        if let Some(kernel) = &mut self.kernel {
            for row in &expired {
                match BanNet::parse(&row.net) {
                    Ok(net) => kernel.remove(&net, kernel_id(row)).map_err(BanError::Kernel)?,
                    Err(e) => warn!(error = %e, "stored ban does not parse"),
                }
            }
        }
        for row in &expired {
            info!(net = %row.net, "ban expired");
        }
        Ok(expired)
    }

    /// Stores the kernel's hit counters (so `ids bans` shows them while the daemon is down).
    pub fn snapshot_hits(&mut self) -> Result<(), BanError> {
        let Some(kernel) = &self.kernel else { return Ok(()) };
        let hits: Vec<(i64, u64, u64)> = kernel.hits().into_iter().map(|(id, (p, b))| (id as i64, p, b)).collect();
        if !hits.is_empty() {
            self.store.record_ban_hits(&hits)?;
        }
        Ok(())
    }

    /// Makes the kernel maps hold exactly the store's unexpired bans and the configured trusted
    /// prefixes.
    pub fn reconcile(&mut self) -> Result<Reconciled, BanError> {
        let expired = self.store.remove_expired_bans(&crate::store::now())?.len();
        let Some(kernel) = &mut self.kernel else { return Ok(Reconciled { expired, ..Default::default() }) };
        kernel.set_trusted(&self.trusted).map_err(BanError::Kernel)?;
        let mut want: HashMap<BanNet, u32> = HashMap::new();
        for row in self.store.bans()? {
            match BanNet::parse(&row.net) {
                Ok(net) => {
                    want.insert(net, kernel_id(&row));
                }
                Err(e) => warn!(error = %e, "stored ban does not parse; not enforced"),
            }
        }
        let have = kernel.entries().map_err(BanError::Kernel)?;
        let mut report = Reconciled { expired, ..Default::default() };
        for (net, id) in &have {
            if want.get(net) != Some(id) {
                kernel.remove(net, *id).map_err(BanError::Kernel)?;
                report.removed += 1;
            }
        }
        for (net, id) in &want {
            if have.get(net) == Some(id) {
                report.kept += 1;
            } else {
                kernel.insert(net, *id).map_err(BanError::Kernel)?;
                report.added += 1;
            }
        }
        let ids: std::collections::HashSet<u32> = want.values().copied().collect();
        kernel.retain_hits(&ids);
        info!(
            added = report.added,
            removed = report.removed,
            kept = report.kept,
            expired,
            "ban maps reconciled with the store"
        );
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bans() -> Bans {
        let config = BansConfig {
            default_duration: Some(Duration::from_secs(3600)),
            scan_duration: Some(Duration::from_secs(3600)),
            max_duration: Duration::from_secs(86_400),
            detect_duration: Duration::from_secs(600),
            manual_counts_as_offence: false,
        };
        let trusted = vec![BanNet::parse("127.0.0.0/8").unwrap(), BanNet::parse("10.9.9.9").unwrap()];
        Bans::with_store(Store::open_in_memory().unwrap(), None, trusted, config, AlertSink::new(None, None))
    }

    fn request(net: &str) -> BanRequest {
        BanRequest::new(BanNet::parse(net).unwrap(), "test", "manual", BanDuration::Default)
    }

    #[test]
    fn local_addresses_include_loopback() {
        let addresses = local_addresses();
        assert!(addresses.contains(&"127.0.0.1".parse().unwrap()), "{addresses:?}");
    }

    #[test]
    fn ban_of_trusted_address_is_refused() {
        let mut bans = bans();
        let err = bans.ban(request("127.0.0.5")).unwrap_err().to_string();
        assert!(err.contains("127.0.0.5") && err.contains("trusted"), "{err}");
        // A prefix that merely contains a trusted address is allowed: the trusted one still passes.
        bans.ban(request("10.0.0.0/8")).unwrap();
        assert_eq!(bans.list().unwrap().len(), 1);
    }

    #[test]
    fn broad_prefix_needs_force_and_empty_reason_is_refused() {
        let mut bans = bans();
        let err = bans.ban(request("::/0")).unwrap_err().to_string();
        assert!(err.contains("--force"), "{err}");
        let mut forced = request("::/0");
        forced.force = true;
        bans.ban(forced).unwrap();
        let mut empty = request("10.1.1.1");
        empty.reason = " ".into();
        assert!(bans.ban(empty).unwrap_err().to_string().contains("reason"));
        assert_eq!(bans.list().unwrap().len(), 1);
    }

    #[test]
    fn one_bad_request_in_a_batch_changes_nothing() {
        let mut bans = bans();
        let err = bans.ban_all(vec![request("10.1.1.1"), request("127.0.0.1")]).unwrap_err();
        assert!(matches!(err, BanError::Trusted { .. }));
        assert!(bans.list().unwrap().is_empty());
    }

    fn escalating(net: &str, base: Duration) -> BanRequest {
        BanRequest::new(BanNet::parse(net).unwrap(), "5 failed logins", "ssh-bruteforce", BanDuration::Escalating(base))
    }

    fn ban_alerts(inbox: &mut crate::harness::Inbox<Arc<Alert>>) -> Vec<serde_json::Value> {
        let mut alerts = Vec::new();
        while let crate::harness::Received::Item(alert) = inbox.try_recv() {
            alerts.push(serde_json::to_value(&*alert).unwrap());
        }
        alerts
    }

    #[test]
    fn an_escalated_ban_says_why_in_its_row_and_its_alert() {
        let mut bans = bans();
        let mut inbox = bans.sink().subscribe(16);
        let base = Duration::from_secs(600);
        let mut reasons = Vec::new();
        for offence in 1..=3u32 {
            let outcome = bans.ban(escalating("10.5.5.5", base)).unwrap();
            assert_eq!(outcome.offence, offence);
            let escalation = outcome.ban.escalation.clone().unwrap();
            assert_eq!((escalation.offence, escalation.base.as_str()), (offence, "10m"));
            reasons.push((escalation.duration, escalation.reason));
            bans.unban(&BanNet::parse("10.5.5.5").unwrap()).unwrap();
        }
        let expected = [
            ("10m", "1st offence: the base duration, 10m"),
            ("20m", "2nd offence: 10m doubled once = 20m"),
            ("40m", "3rd offence: 10m doubled twice = 40m"),
        ];
        let expected: Vec<(String, String)> = expected.iter().map(|(d, r)| (d.to_string(), r.to_string())).collect();
        assert_eq!(reasons, expected);
        let alerts = ban_alerts(&mut inbox);
        assert_eq!(alerts.len(), 3, "{alerts:?}");
        assert_eq!(
            alerts[2]["escalation"],
            serde_json::json!({"offence": 3, "base": "10m", "duration": "40m", "reason": "3rd offence: 10m doubled twice = 40m"})
        );
        // The cap of [bans] max_duration (1 day) is named when it cuts the doubling short.
        for _ in 0..5 {
            bans.ban(escalating("10.5.5.5", base)).unwrap();
            bans.unban(&BanNet::parse("10.5.5.5").unwrap()).unwrap();
        }
        let capped = bans.ban(escalating("10.5.5.5", base)).unwrap().ban.escalation.unwrap();
        assert_eq!(
            capped.reason,
            "9th offence: 10m doubled 8 times = 1day 18h 40m, capped at [bans] max_duration = 1day"
        );
        assert_eq!(capped.duration, "1day");
        // `ids bans` reads it back from the store.
        assert_eq!(bans.list().unwrap()[0].escalation.as_ref(), Some(&capped));
    }

    #[test]
    fn a_manual_ban_is_no_offence_unless_configured() {
        let base = Duration::from_secs(600);
        for (manual_counts, first_detector_ban) in [(false, "10m"), (true, "20m")] {
            let mut bans = bans();
            bans.config.manual_counts_as_offence = manual_counts;
            let manual = bans.ban(request("10.6.6.6")).unwrap();
            assert_eq!(manual.ban.escalation, None);
            assert_eq!(bans.offences(&manual.ban.net.parse().unwrap()).unwrap(), u32::from(manual_counts));
            bans.unban(&BanNet::parse("10.6.6.6").unwrap()).unwrap();
            let detector = bans.ban(escalating("10.6.6.6", base)).unwrap();
            let escalation = detector.ban.escalation.unwrap();
            assert_eq!(escalation.duration, first_detector_ban, "manual_counts_as_offence = {manual_counts}");
            assert_eq!(detector.offence, 1 + u32::from(manual_counts));
        }
    }

    #[test]
    fn ordinals_read_as_words_do() {
        let ordinals: Vec<String> = [1, 2, 3, 4, 11, 12, 13, 21, 22, 101, 111].into_iter().map(ordinal).collect();
        assert_eq!(ordinals, ["1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "101st", "111th"]);
    }

    #[test]
    fn escalating_bans_double_for_repeat_offenders() {
        let mut bans = bans();
        let base = Duration::from_secs(600);
        let mut escalating = request("10.2.2.2");
        escalating.source = "web-attack".into();
        escalating.duration = BanDuration::Escalating(base);
        let expires = |outcome: &BanOutcome| {
            humantime::parse_rfc3339(outcome.ban.expires.as_deref().unwrap())
                .unwrap()
                .duration_since(SystemTime::now())
                .unwrap()
        };
        let first = bans.ban(escalating.clone()).unwrap();
        assert!(expires(&first) <= base);
        bans.unban(&escalating.net).unwrap();
        let second = bans.ban(escalating.clone()).unwrap();
        assert!(expires(&second) > base && expires(&second) <= 2 * base, "{second:?}");
        assert_eq!(bans.offences(&escalating.net).unwrap(), 2);
    }

    #[test]
    fn expire_removes_due_bans_only() {
        let mut bans = bans();
        assert!(bans.expire().unwrap().is_empty());
        let mut short = request("10.4.4.4");
        short.duration = BanDuration::For(Duration::from_millis(20));
        bans.ban(short).unwrap();
        bans.ban(request("10.4.4.5")).unwrap();
        assert!(bans.expire().unwrap().is_empty(), "expired early");
        std::thread::sleep(Duration::from_millis(40));
        let expired = bans.expire().unwrap();
        assert_eq!(expired.len(), 1);
        assert_eq!(expired[0].net, "10.4.4.4");
        assert_eq!(bans.list().unwrap().len(), 1);
    }

    #[test]
    fn local_addresses_are_trusted_until_they_go() {
        let mut bans = bans();
        assert!(bans.set_local_addresses(vec!["192.0.2.10".parse().unwrap(), "127.0.0.1".parse().unwrap()]));
        assert!(!bans.set_local_addresses(vec!["127.0.0.1".parse().unwrap(), "192.0.2.10".parse().unwrap()]));
        let err = bans.ban(request("192.0.2.10")).unwrap_err();
        assert!(matches!(err, BanError::Trusted { .. }), "{err}");
        assert!(bans.set_local_addresses(vec!["127.0.0.1".parse().unwrap()]));
        bans.ban(request("192.0.2.10")).unwrap();
        // The configured entries stay whatever the host's addresses are.
        assert!(bans.ban(request("10.9.9.9")).is_err());
    }

    #[test]
    fn unban_is_idempotent() {
        let mut bans = bans();
        bans.ban(request("10.3.3.3")).unwrap();
        assert!(bans.unban(&BanNet::parse("10.3.3.3").unwrap()).unwrap().is_some());
        assert!(bans.unban(&BanNet::parse("10.3.3.3").unwrap()).unwrap().is_none());
    }
}
