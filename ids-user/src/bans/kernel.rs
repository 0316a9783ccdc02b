//! The kernel side of bans: the pinned maps of `xdp_guard` (bans, trusted prefixes, hit
//! counters) and the program's attachments, whose links are pinned too so that the program stays
//! on its interfaces while the daemon is down.
//!
//! Layout of `[xdp] pin_dir` (bpffs): one file per map (`BAN_V4`, `BAN_V6`, `BAN_NET_V4`,
//! `BAN_NET_V6`, `BAN_HITS`, `TRUSTED_V4`, `TRUSTED_V6`), `links/<interface>`, the XDP link of
//! `xdp_guard`, and `tc_links/<interface>`, the TCX link of `tc_guard` (one of the two per
//! interface, chosen by `[xdp] mode`; both programs share the maps).
//! At start the loader reuses the pinned maps, and a pinned link is moved to the new program
//! with `BPF_LINK_UPDATE`, an atomic swap: no packet meets an interface without the filter.
use std::collections::HashMap as StdHashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd as _, AsRawFd as _, OwnedFd};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow, bail};
use aya::maps::lpm_trie::Key;
use aya::maps::{HashMap, LpmTrie, MapData, PerCpuHashMap};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::xdp::{XdpLink, XdpMode};

use super::config::{XdpConfig, XdpInterfaces, XdpModeSetting};
use aya::programs::tc::{SchedClassifierLink, TcAttachOptions};
use aya::programs::{SchedClassifier, TcAttachType, Xdp};
use ids_common::{BanHits, BanId};
use ipnet::IpNet;
use tracing::{info, warn};

use super::net::BanNet;

/// Maps of `xdp_guard` that are pinned, by name.
pub const PINNED_MAPS: [&str; 7] =
    ["BAN_V4", "BAN_V6", "BAN_NET_V4", "BAN_NET_V6", "BAN_HITS", "TRUSTED_V4", "TRUSTED_V6"];
/// The XDP program.
pub const PROGRAM: &str = "xdp_guard";
/// The tc ingress program, for interfaces where XDP would copy each packet (`[xdp] mode`).
pub const TC_PROGRAM: &str = "tc_guard";

/// Handles on the pinned maps.
pub struct BanMaps {
    v4: HashMap<MapData, [u8; 4], BanId>,
    v6: HashMap<MapData, [u8; 16], BanId>,
    net_v4: LpmTrie<MapData, [u8; 4], BanId>,
    net_v6: LpmTrie<MapData, [u8; 16], BanId>,
    hits: PerCpuHashMap<MapData, BanId, BanHits>,
    trusted_v4: LpmTrie<MapData, [u8; 4], u32>,
    trusted_v6: LpmTrie<MapData, [u8; 16], u32>,
    /// Descriptors of `v4` and `v6` for batch updates (aya 0.14 has none).
    v4_fd: OwnedFd,
    v6_fd: OwnedFd,
}

/// `BPF_MAP_UPDATE_BATCH` (Linux 5.6).
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}
const _: () = assert!(std::mem::size_of::<BatchAttr>() == 56);

/// Puts `keys[i]` → `ids[i]` into the hash map `map` with `BPF_MAP_UPDATE_BATCH`, a few thousand
/// per system call instead of one; returns how many entries the kernel took before any error.
fn update_batch<K: Copy>(map: &OwnedFd, keys: &[K], ids: &[BanId]) -> (usize, Option<std::io::Error>) {
    let mut done = 0;
    for (keys, ids) in keys.chunks(8192).zip(ids.chunks(8192)) {
        let mut attr = BatchAttr {
            keys: keys.as_ptr() as u64,
            values: ids.as_ptr() as u64,
            count: keys.len() as u32,
            map_fd: map.as_raw_fd() as u32,
            ..Default::default()
        };
        // SAFETY: `attr` points at `count` keys and values that live through the call; the
        // kernel writes back only `attr.count`.
        let result = unsafe {
            libc::syscall(libc::SYS_bpf, BPF_MAP_UPDATE_BATCH, &raw mut attr, std::mem::size_of::<BatchAttr>() as u32)
        };
        if result < 0 {
            let error = std::io::Error::last_os_error();
            return (done + (attr.count as usize).min(keys.len()), Some(error));
        }
        done += keys.len();
    }
    (done, None)
}

fn v4(net: &BanNet) -> [u8; 4] {
    let o = net.octets();
    [o[0], o[1], o[2], o[3]]
}

fn v6(net: &BanNet) -> [u8; 16] {
    let mut a = [0u8; 16];
    a.copy_from_slice(&net.octets());
    a
}

fn net_of(addr: IpAddr, len: u32) -> Option<BanNet> {
    IpNet::new(addr, len as u8).ok().map(BanNet::from_ipnet)
}

impl BanMaps {
    /// Takes the maps out of the loaded object.
    pub fn take(ebpf: &mut aya::Ebpf) -> anyhow::Result<Self> {
        let mut take = |name: &str| ebpf.take_map(name).ok_or_else(|| anyhow!("eBPF object has no map {name}"));
        let fd_of = |map: &aya::maps::Map, name: &str| match map {
            aya::maps::Map::HashMap(data) => {
                data.fd().as_fd().try_clone_to_owned().with_context(|| format!("duplicating the descriptor of {name}"))
            }
            _ => Err(anyhow!("map {name} is not a hash map")),
        };
        let (v4, v6) = (take("BAN_V4")?, take("BAN_V6")?);
        let (v4_fd, v6_fd) = (fd_of(&v4, "BAN_V4")?, fd_of(&v6, "BAN_V6")?);
        Ok(Self {
            v4_fd,
            v6_fd,
            v4: HashMap::try_from(v4)?,
            v6: HashMap::try_from(v6)?,
            net_v4: LpmTrie::try_from(take("BAN_NET_V4")?)?,
            net_v6: LpmTrie::try_from(take("BAN_NET_V6")?)?,
            hits: PerCpuHashMap::try_from(take("BAN_HITS")?)?,
            trusted_v4: LpmTrie::try_from(take("TRUSTED_V4")?)?,
            trusted_v6: LpmTrie::try_from(take("TRUSTED_V6")?)?,
        })
    }

    /// Enforces ban `id` on `net` (replacing any entry for the same net).
    pub fn insert(&mut self, net: &BanNet, id: BanId) -> anyhow::Result<()> {
        let len = net.prefix_len() as u32;
        let result = match (net.is_ipv4(), net.is_single()) {
            (true, true) => self.v4.insert(v4(net), id, 0),
            (false, true) => self.v6.insert(v6(net), id, 0),
            (true, false) => self.net_v4.insert(&Key::new(len, v4(net)), id, 0),
            (false, false) => self.net_v6.insert(&Key::new(len, v6(net)), id, 0),
        };
        result.with_context(|| format!("adding the ban of {net} to the kernel map"))
    }

    /// Enforces every `(net, id)`: single addresses in batches, prefixes one by one. On an error
    /// some entries may have been inserted.
    pub fn insert_all(&mut self, entries: &[(BanNet, BanId)]) -> anyhow::Result<()> {
        let (mut keys4, mut ids4, mut keys6, mut ids6) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (net, id) in entries {
            match (net.is_ipv4(), net.is_single()) {
                (true, true) => {
                    keys4.push(v4(net));
                    ids4.push(*id);
                }
                (false, true) => {
                    keys6.push(v6(net));
                    ids6.push(*id);
                }
                _ => self.insert(net, *id)?,
            }
        }
        let (done4, failed4) = update_batch(&self.v4_fd, &keys4, &ids4);
        let (done6, failed6) = update_batch(&self.v6_fd, &keys6, &ids6);
        if failed4.is_some() || failed6.is_some() {
            // One by one from where the batch stopped: the error then names the net (a full map,
            // or a kernel without batch updates, which the slow path serves).
            let rest4 = keys4[done4..]
                .iter()
                .zip(&ids4[done4..])
                .map(|(k, id)| (BanNet::from_ipnet(IpNet::from(IpAddr::from(*k))), *id));
            let rest6 = keys6[done6..]
                .iter()
                .zip(&ids6[done6..])
                .map(|(k, id)| (BanNet::from_ipnet(IpNet::from(IpAddr::from(*k))), *id));
            for (net, id) in rest4.chain(rest6) {
                self.insert(&net, id)?;
            }
        }
        Ok(())
    }

    /// Stops enforcing the ban on `net`; a net not in the maps is not an error.
    pub fn remove(&mut self, net: &BanNet, id: BanId) -> anyhow::Result<()> {
        let len = net.prefix_len() as u32;
        let result = match (net.is_ipv4(), net.is_single()) {
            (true, true) => self.v4.remove(&v4(net)),
            (false, true) => self.v6.remove(&v6(net)),
            (true, false) => self.net_v4.remove(&Key::new(len, v4(net))),
            (false, false) => self.net_v6.remove(&Key::new(len, v6(net))),
        };
        let _ = self.hits.remove(&id);
        match result {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(aya::maps::MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("removing the ban of {net} from the kernel map")),
        }
    }

    /// Every ban the maps enforce: net → id.
    pub fn entries(&self) -> anyhow::Result<StdHashMap<BanNet, BanId>> {
        let mut out = StdHashMap::new();
        for item in self.v4.iter() {
            let (k, id) = item.context("reading BAN_V4")?;
            out.extend(net_of(IpAddr::V4(Ipv4Addr::from(k)), 32).map(|n| (n, id)));
        }
        for item in self.v6.iter() {
            let (k, id) = item.context("reading BAN_V6")?;
            out.extend(net_of(IpAddr::V6(Ipv6Addr::from(k)), 128).map(|n| (n, id)));
        }
        for item in self.net_v4.iter() {
            let (k, id) = item.context("reading BAN_NET_V4")?;
            out.extend(net_of(IpAddr::V4(Ipv4Addr::from(k.data())), k.prefix_len()).map(|n| (n, id)));
        }
        for item in self.net_v6.iter() {
            let (k, id) = item.context("reading BAN_NET_V6")?;
            out.extend(net_of(IpAddr::V6(Ipv6Addr::from(k.data())), k.prefix_len()).map(|n| (n, id)));
        }
        Ok(out)
    }

    /// Packets and bytes dropped for every ban that dropped any: id → (packets, bytes).
    pub fn hits(&self) -> StdHashMap<BanId, (u64, u64)> {
        let mut out = StdHashMap::new();
        for item in self.hits.iter() {
            match item {
                Ok((id, values)) => {
                    let sum = values.iter().fold((0u64, 0u64), |(p, b), h| (p + h.packets, b + h.bytes));
                    out.insert(id, sum);
                }
                Err(e) => {
                    warn!(error = %e, "reading BAN_HITS");
                    break;
                }
            }
        }
        out
    }

    /// Drops the hit counters of ids not in `ids` (bans lifted while the daemon was down).
    pub fn retain_hits(&mut self, ids: &std::collections::HashSet<BanId>) {
        let stale: Vec<BanId> = self.hits.keys().filter_map(Result::ok).filter(|id| !ids.contains(id)).collect();
        for id in stale {
            let _ = self.hits.remove(&id);
        }
    }

    /// Replaces the trusted prefixes with `trusted`.
    pub fn set_trusted(&mut self, trusted: &[BanNet]) -> anyhow::Result<()> {
        let old4: Vec<Key<[u8; 4]>> = self.trusted_v4.keys().filter_map(Result::ok).collect();
        let old6: Vec<Key<[u8; 16]>> = self.trusted_v6.keys().filter_map(Result::ok).collect();
        for net in trusted {
            let len = net.prefix_len() as u32;
            if net.is_ipv4() {
                self.trusted_v4.insert(&Key::new(len, v4(net)), 1, 0)
            } else {
                self.trusted_v6.insert(&Key::new(len, v6(net)), 1, 0)
            }
            .with_context(|| format!("adding trusted {net} to the kernel map"))?;
        }
        for key in old4 {
            if !trusted.iter().any(|t| t.is_ipv4() && t.prefix_len() as u32 == key.prefix_len() && v4(t) == key.data())
            {
                let _ = self.trusted_v4.remove(&key);
            }
        }
        for key in old6 {
            if !trusted.iter().any(|t| !t.is_ipv4() && t.prefix_len() as u32 == key.prefix_len() && v6(t) == key.data())
            {
                let _ = self.trusted_v6.remove(&key);
            }
        }
        Ok(())
    }
}

/// Which program enforces bans on an interface, and how it came to be there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachMode {
    /// `xdp_guard` in native (driver) mode, attached now.
    Native,
    /// `xdp_guard` in generic (skb) mode, attached now.
    Generic,
    /// A pinned XDP attachment from an earlier run, moved to this program (its mode kept).
    Replaced,
    /// `tc_guard` on the interface's tc ingress hook, attached now.
    Tc,
    /// A pinned tc attachment from an earlier run, moved to this program.
    TcReplaced,
}

impl AttachMode {
    pub fn name(self) -> &'static str {
        match self {
            Self::Native => "native",
            Self::Generic => "generic",
            Self::Replaced | Self::TcReplaced => "replaced",
            Self::Tc => "tc",
        }
    }

    /// The program that enforces in this mode.
    pub fn program(self) -> &'static str {
        match self {
            Self::Native | Self::Generic | Self::Replaced => PROGRAM,
            Self::Tc | Self::TcReplaced => TC_PROGRAM,
        }
    }

    /// The hook, as `ids status` names it: `xdp:xdp_guard` or `tc:tc_guard`.
    pub fn hook(self) -> String {
        match self {
            Self::Native | Self::Generic | Self::Replaced => format!("xdp:{PROGRAM}"),
            Self::Tc | Self::TcReplaced => format!("tc:{TC_PROGRAM}"),
        }
    }
}

/// The programs the attachments use; `tc` is `None` when the kernel refused to load it.
pub struct GuardPrograms<'a> {
    pub xdp: &'a mut Xdp,
    pub tc: Option<&'a mut SchedClassifier>,
}

/// Attachments of `xdp_guard` and `tc_guard` to interfaces.
pub struct XdpAttachments {
    pin_dir: PathBuf,
    want: XdpInterfaces,
    config: XdpConfig,
    pub attached: Vec<(String, AttachMode)>,
}

/// Directories of pinned links under `[xdp] pin_dir`: XDP links, tc links.
const XDP_LINKS: &str = "links";
const TC_LINKS: &str = "tc_links";

impl XdpAttachments {
    /// Also removes pinned links of interfaces no longer configured (the program leaves them).
    /// With no interface configured, that is every pinned link.
    pub fn new(pin_dir: &Path, config: &XdpConfig) -> Self {
        let want = config.interfaces.clone();
        let attachments =
            Self { pin_dir: pin_dir.into(), want: want.clone(), config: config.clone(), attached: Vec::new() };
        // "Every interface" keeps what it finds: an interface gone for now may come back.
        if want != XdpInterfaces::All {
            for dir in [XDP_LINKS, TC_LINKS] {
                for entry in std::fs::read_dir(pin_dir.join(dir)).into_iter().flatten().flatten() {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    if !want.wants(&name) {
                        match std::fs::remove_file(entry.path()) {
                            Ok(()) => info!(interface = name, "ban filter detached: interface no longer configured"),
                            Err(e) => warn!(path = %entry.path().display(), error = %e, "cannot remove pinned link"),
                        }
                    }
                }
            }
        }
        attachments
    }

    fn link_path(&self, dir: &str, interface: &str) -> PathBuf {
        self.pin_dir.join(dir).join(interface)
    }

    /// Attaches the ban filter to wanted interfaces that appeared since the last call.
    pub fn attach_new(&mut self, mut programs: GuardPrograms<'_>) {
        if self.want == XdpInterfaces::None {
            return;
        }
        let mut present: Vec<String> = match std::fs::read_dir("/sys/class/net") {
            Ok(entries) => entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect(),
            Err(e) => {
                warn!(error = %e, "cannot list /sys/class/net");
                return;
            }
        };
        present.sort();
        self.attached.retain(|(i, _)| present.contains(i));
        for dir in [XDP_LINKS, TC_LINKS] {
            if let Err(e) = std::fs::create_dir_all(self.pin_dir.join(dir)) {
                warn!(dir = %self.pin_dir.display(), error = %e, "cannot create the link pin directory");
            }
        }
        for interface in present {
            if self.attached.iter().any(|(i, _)| *i == interface) || !self.want.wants(&interface) {
                continue;
            }
            match self.attach(&mut programs, &interface) {
                Ok(mode) => {
                    info!(interface, program = mode.program(), mode = mode.name(), "ban filter attached");
                    self.attached.push((interface, mode));
                }
                Err(e) => {
                    warn!(interface, error = crate::error_text::one_line(e.as_ref()), "ban filter not attached")
                }
            }
        }
    }

    fn attach(&self, programs: &mut GuardPrograms<'_>, interface: &str) -> anyhow::Result<AttachMode> {
        let xdp_pin = self.link_path(XDP_LINKS, interface);
        let tc_pin = self.link_path(TC_LINKS, interface);
        let setting = self.config.mode_of(interface);
        let use_tc = match setting {
            XdpModeSetting::Tc => true,
            XdpModeSetting::Native | XdpModeSetting::Generic => false,
            // A veth gets tc; elsewhere a tc pin says native XDP failed in an earlier run;
            // otherwise native XDP is tried below, then tc.
            XdpModeSetting::Auto => {
                programs.tc.is_some() && (is_veth(interface) || (tc_pin.exists() && !xdp_pin.exists()))
            }
        };
        if use_tc {
            let tc = programs.tc.as_deref_mut().ok_or_else(|| anyhow!("the tc program {TC_PROGRAM} did not load"))?;
            let mode = self.attach_tc(tc, interface, &tc_pin)?;
            // Only now: the interface is never without a filter while the mode changes.
            remove_other_pin(&xdp_pin, interface);
            return Ok(mode);
        }
        if xdp_pin.exists() {
            match replace_pinned(programs.xdp, &xdp_pin) {
                Ok(()) => {
                    remove_other_pin(&tc_pin, interface);
                    return Ok(AttachMode::Replaced);
                }
                Err(e) => {
                    // A link of an interface that went away (or another kernel object): start over.
                    warn!(
                        interface,
                        error = crate::error_text::one_line(e.as_ref()),
                        "pinned XDP link not reusable; attaching anew"
                    );
                    let _ = std::fs::remove_file(&xdp_pin);
                }
            }
        }
        let program = &mut *programs.xdp;
        let attached = match setting {
            XdpModeSetting::Generic => program
                .attach(interface, XdpMode::Skb)
                .map(|id| (id, AttachMode::Generic))
                .with_context(|| format!("attaching to {interface} in generic mode")),
            XdpModeSetting::Native => program
                .attach(interface, XdpMode::Driver)
                .map(|id| (id, AttachMode::Native))
                .with_context(|| format!("attaching to {interface} in native mode ([xdp] mode = \"native\")")),
            XdpModeSetting::Auto | XdpModeSetting::Tc => match program.attach(interface, XdpMode::Driver) {
                Ok(id) => Ok((id, AttachMode::Native)),
                Err(native) => {
                    let native = anyhow::Error::from(native);
                    // Another XDP program holds the interface: say so rather than filter beside it.
                    if is_busy(&native) {
                        return Err(occupied_hint(native.context(format!("attaching to {interface}")), interface));
                    }
                    if let Some(tc) = programs.tc.as_deref_mut() {
                        return self.attach_tc(tc, interface, &tc_pin);
                    }
                    program
                        .attach(interface, XdpMode::Skb)
                        .map(|id| (id, AttachMode::Generic))
                        .with_context(|| format!("attaching to {interface} (native mode failed too: {native})"))
                }
            },
        };
        let (id, mode) = attached.map_err(|e| occupied_hint(e, interface))?;
        remove_other_pin(&tc_pin, interface);
        let link = program.take_link(id).context("taking the XDP link")?;
        match FdLink::try_from(link) {
            Ok(fd_link) => {
                fd_link.pin(&xdp_pin).with_context(|| format!("pinning the XDP link at {}", xdp_pin.display()))?;
            }
            Err(e) => warn!(interface, error = %e, "kernel gave a netlink attachment; it will not outlive the daemon"),
        }
        Ok(mode)
    }

    /// Attaches `tc_guard` to the ingress of `interface`: a pinned tc link from an earlier run is
    /// moved to this program; otherwise a new TCX link (Linux 6.6) is made and pinned, or, on an
    /// older kernel, a filter under a `clsact` qdisc, which leaves with the daemon.
    fn attach_tc(&self, program: &mut SchedClassifier, interface: &str, pin: &Path) -> anyhow::Result<AttachMode> {
        if pin.exists() {
            match replace_pinned_tc(program, pin) {
                Ok(()) => return Ok(AttachMode::TcReplaced),
                Err(e) => {
                    warn!(
                        interface,
                        error = crate::error_text::one_line(e.as_ref()),
                        "pinned tc link not reusable; attaching anew"
                    );
                    let _ = std::fs::remove_file(pin);
                }
            }
        }
        // TCX lets several programs share the hook: a tc_guard already there (no pin of ours led to
        // it) belongs to another ids, as an XDP program there would. Refused the same way, so
        // that one set of bans, not two, decides what the interface drops.
        if let Ok((_, programs)) = SchedClassifier::query_tcx(interface, TcAttachType::Ingress)
            && programs.iter().any(|info| info.name_as_str() == Some(TC_PROGRAM))
        {
            bail!(
                "{interface} already has an ids tc filter ({TC_PROGRAM}): another ids (its `[xdp] pin_dir` \
                 differs from this one's) holds it; stop it or run `ids xdp detach --config ITS_CONFIG`"
            );
        }
        let tcx = program.attach_with_options(
            interface,
            TcAttachType::Ingress,
            TcAttachOptions::TcxOrder(aya::programs::LinkOrder::default()),
        );
        match tcx {
            Ok(id) => {
                let link = program.take_link(id).context("taking the tc link")?;
                let fd_link = FdLink::try_from(link).context("the TCX attachment is not a BPF link")?;
                fd_link.pin(pin).with_context(|| format!("pinning the tc link at {}", pin.display()))?;
            }
            Err(tcx) => {
                if let Err(e) = aya::programs::tc::qdisc_add_clsact(interface) {
                    // EEXIST: the interface has its clsact qdisc already.
                    let exists = matches!(&e, aya::programs::tc::TcError::NetlinkError(n) if n.raw_os_error() == Some(libc::EEXIST))
                        || e.to_string().contains("exists");
                    if !exists {
                        return Err(anyhow!("adding the clsact qdisc to {interface}: {e} (TCX attach failed: {tcx})"));
                    }
                }
                program
                    .attach_with_options(interface, TcAttachType::Ingress, TcAttachOptions::Netlink(Default::default()))
                    .with_context(|| format!("attaching {TC_PROGRAM} to the tc ingress of {interface} (TCX: {tcx})"))?;
                warn!(interface, "kernel has no TCX links: the tc ban filter will not outlive the daemon");
            }
        }
        Ok(AttachMode::Tc)
    }
}

/// Removes the pin of the other program's link on an interface (a mode changed between runs), so
/// that one program enforces there, not both.
fn remove_other_pin(path: &Path, interface: &str) {
    if path.exists() {
        match std::fs::remove_file(path) {
            Ok(()) => info!(interface, pin = %path.display(), "earlier ban filter of another mode detached"),
            Err(e) => warn!(interface, pin = %path.display(), error = %e, "cannot remove pinned link"),
        }
    }
}

/// Whether `interface` is a veth (`ETHTOOL_GDRVINFO` names the driver).
pub fn is_veth(interface: &str) -> bool {
    driver_of(interface).as_deref() == Some("veth")
}

/// The driver of `interface`, as `ethtool -i` gives it.
fn driver_of(interface: &str) -> Option<String> {
    const ETHTOOL_GDRVINFO: u32 = 0x3;
    #[repr(C)]
    struct DrvInfo {
        cmd: u32,
        driver: [u8; 32],
        rest: [u8; 160],
    }
    #[repr(C)]
    struct IfReq {
        name: [u8; libc::IFNAMSIZ],
        data: *mut DrvInfo,
        _pad: [u8; 16],
    }
    if interface.len() >= libc::IFNAMSIZ {
        return None;
    }
    let mut info = DrvInfo { cmd: ETHTOOL_GDRVINFO, driver: [0; 32], rest: [0; 160] };
    let mut request = IfReq { name: [0; libc::IFNAMSIZ], data: &raw mut info, _pad: [0; 16] };
    request.name[..interface.len()].copy_from_slice(interface.as_bytes());
    // SAFETY: a socket this function closes; the ioctl writes into `info`, which outlives it.
    let ok = unsafe {
        let socket = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if socket < 0 {
            return None;
        }
        let rc = libc::ioctl(socket, libc::SIOCETHTOOL, &raw mut request);
        libc::close(socket);
        rc == 0
    };
    if !ok {
        return None;
    }
    let len = info.driver.iter().position(|&b| b == 0).unwrap_or(info.driver.len());
    Some(String::from_utf8_lossy(&info.driver[..len]).into_owned())
}

/// An attachment the kernel refused because the interface already has an XDP program: says so,
/// and how to find and remove it (most often another `ids` with another `[xdp] pin_dir`, or one
/// whose pins outlived it).
fn occupied_hint(error: anyhow::Error, interface: &str) -> anyhow::Error {
    if !is_busy(&error) {
        return error;
    }
    error.context(format!(
        "{interface} already has an XDP program: `ip link show {interface}` names it; if it is another          ids (its `[xdp] pin_dir` differs from this one's), stop it or run `ids xdp detach --config ITS_CONFIG`"
    ))
}

fn replace_pinned(program: &mut Xdp, path: &Path) -> anyhow::Result<()> {
    let pinned = PinnedLink::from_pin(path).with_context(|| format!("opening {}", path.display()))?;
    let fd_link: FdLink = pinned.into();
    let link = XdpLink::try_from(fd_link).context("the pinned object is not an XDP link")?;
    program.attach_to_link(link).context("replacing the program of the pinned link")?;
    Ok(())
}

/// Whether the kernel refused with `EBUSY` (the interface has an XDP program already).
fn is_busy(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause.downcast_ref::<std::io::Error>().is_some_and(|io| io.raw_os_error() == Some(libc::EBUSY))
            || cause.to_string().contains("os error 16")
    })
}

fn replace_pinned_tc(program: &mut SchedClassifier, path: &Path) -> anyhow::Result<()> {
    let pinned = PinnedLink::from_pin(path).with_context(|| format!("opening {}", path.display()))?;
    let fd_link: FdLink = pinned.into();
    let link = SchedClassifierLink::try_from(fd_link).context("the pinned object is not a tc link")?;
    program.attach_to_link(link).context("replacing the program of the pinned tc link")?;
    Ok(())
}

/// Removes every pin under `pin_dir` (links first, so the program leaves the interfaces), then
/// the directory. Returns what was removed.
pub fn remove_pins(pin_dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut removed = Vec::new();
    for dir in [XDP_LINKS, TC_LINKS] {
        let links = pin_dir.join(dir);
        if let Ok(entries) = std::fs::read_dir(&links) {
            for entry in entries.flatten() {
                std::fs::remove_file(entry.path()).with_context(|| format!("removing {}", entry.path().display()))?;
                removed.push(format!("{dir}/{}", entry.file_name().to_string_lossy()));
            }
            std::fs::remove_dir(&links).with_context(|| format!("removing {}", links.display()))?;
        }
    }
    for name in PINNED_MAPS {
        let path = pin_dir.join(name);
        if path.exists() {
            std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
            removed.push(name.to_string());
        }
    }
    if pin_dir.exists() {
        std::fs::remove_dir(pin_dir).with_context(|| format!("removing {}", pin_dir.display()))?;
    }
    Ok(removed)
}
