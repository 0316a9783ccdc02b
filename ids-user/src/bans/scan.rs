//! Port scans and SYN floods found by `xdp_guard`: reads its `XDP_EVENTS` ring buffer and turns
//! each report into a ban request on the daemon's [`BanSender`](super::BanSender).
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::anyhow;
use aya::maps::{MapData, RingBuf};
use ids_common::{AF_INET, SCAN_PORTS, ScanEvent};
use ipnet::IpNet;
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;
use tracing::warn;

use super::{BanDuration, BanNet, BanRequest};

/// Counters of the scan reader, shown by `ids status`.
#[derive(Debug, Default)]
pub struct ScanStats {
    pub reports: AtomicU64,
    /// Reports the ban channel had no room for.
    pub dropped: AtomicU64,
    pub malformed: AtomicU64,
}

/// Decodes one ring-buffer record; `None` when its size is wrong.
pub fn decode(bytes: &[u8]) -> Option<ScanEvent> {
    if bytes.len() != std::mem::size_of::<ScanEvent>() {
        return None;
    }
    // SAFETY: the length matches and ScanEvent is plain integers (any bit pattern is valid).
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const ScanEvent) })
}

/// The ban a report asks for.
pub fn request_of(event: &ScanEvent, duration: Option<std::time::Duration>) -> BanRequest {
    let addr = if event.family == AF_INET as u32 {
        IpAddr::V4(Ipv4Addr::new(event.addr[0], event.addr[1], event.addr[2], event.addr[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(event.addr))
    };
    let net = BanNet::from_ipnet(IpNet::from(addr));
    let window = event.window_ns as f64 / 1e9;
    let (source, reason) = if event.what == SCAN_PORTS {
        ("port-scan", format!("{} distinct TCP ports within {window} s", event.ports))
    } else {
        ("syn-flood", format!("{} TCP SYNs within {window} s", event.syns))
    };
    let duration = match duration {
        Some(d) => BanDuration::For(d),
        None => BanDuration::Permanent,
    };
    BanRequest::new(net, reason, source, duration)
}

/// Reads reports until stop or until the channel closes.
pub(crate) async fn read(
    ring: RingBuf<MapData>,
    bans: mpsc::Sender<BanRequest>,
    duration: Option<std::time::Duration>,
    stats: Arc<ScanStats>,
    stop: crate::harness::Stop,
) -> anyhow::Result<()> {
    // SAFETY: the ring buffer owns its fd for as long as the AsyncFd holds it.
    let mut fd = unsafe { AsyncFd::register(ring) }
        .map_err(|e| anyhow!("registering the scan ring buffer with the reactor: {}", e.into_parts().1))?;
    loop {
        let mut guard = tokio::select! {
            _ = stop.stopped() => return Ok(()),
            guard = fd.readable_mut() => guard?,
        };
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            let Some(event) = decode(&item) else {
                stats.malformed.fetch_add(1, Ordering::Relaxed);
                warn!(len = item.len(), "malformed scan report");
                continue;
            };
            stats.reports.fetch_add(1, Ordering::Relaxed);
            match bans.try_send(request_of(&event, duration)) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    stats.dropped.fetch_add(1, Ordering::Relaxed);
                }
                Err(mpsc::error::TrySendError::Closed(_)) => return Ok(()),
            }
        }
        guard.clear_ready();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_decode_to_ban_requests() {
        let event = ScanEvent {
            what: SCAN_PORTS,
            family: AF_INET as u32,
            addr: [10, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            ports: 51,
            syns: 60,
            window_ns: 10_000_000_000,
        };
        let bytes = unsafe {
            std::slice::from_raw_parts(&event as *const ScanEvent as *const u8, std::mem::size_of::<ScanEvent>())
        };
        let decoded = decode(bytes).unwrap();
        assert_eq!(decoded, event);
        assert!(decode(&bytes[1..]).is_none());
        let request = request_of(&decoded, None);
        assert_eq!(request.net.to_string(), "10.0.0.9");
        assert_eq!(request.source, "port-scan");
        assert!(request.reason.contains("51 distinct TCP ports"));
        assert_eq!(request.duration, BanDuration::Permanent);
    }
}
