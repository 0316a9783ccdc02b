//! The kernel's notifications of link and address changes (the rtnetlink multicast groups of
//! links and of IPv4 and IPv6 addresses), so that the daemon attaches the XDP program to a new
//! interface and re-reads this host's addresses (`[xdp] trust_local`) when something changed,
//! at once, instead of polling for it.
//!
//! What a message says does not matter: any of them makes the caller look again, and a queue
//! overflow (`ENOBUFS`: more changes than the socket buffer held) counts as a change too.
use std::io;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};

use tokio::io::unix::AsyncFd;

const RTMGRP_LINK: u32 = 0x1;
const RTMGRP_IPV4_IFADDR: u32 = 0x10;
const RTMGRP_IPV6_IFADDR: u32 = 0x100;

/// A netlink socket subscribed to link and address changes.
pub struct LinkChanges {
    socket: AsyncFd<OwnedFd>,
    buffer: Vec<u8>,
}

impl LinkChanges {
    /// Opens and subscribes the socket; must be called inside a tokio runtime.
    pub fn open() -> io::Result<Self> {
        // SAFETY: plain system calls on a descriptor this function owns from the start.
        let fd = unsafe {
            let fd = libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            );
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            OwnedFd::from_raw_fd(fd)
        };
        // SAFETY: sockaddr_nl is plain data; zeroed is its unbound state.
        let mut address: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        address.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        address.nl_groups = RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR;
        // SAFETY: `address` is a valid sockaddr_nl of the length given.
        let bound = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const address).cast::<libc::sockaddr>(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if bound != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the OwnedFd is moved into the AsyncFd, which keeps it open while registered.
        let socket = unsafe { AsyncFd::register(fd) }.map_err(|e| e.into_parts().1)?;
        Ok(Self { socket, buffer: vec![0; 16 * 1024] })
    }

    /// Waits until at least one change was reported, and takes every message queued.
    pub async fn changed(&mut self) -> io::Result<()> {
        loop {
            let mut guard = self.socket.readable().await?;
            let mut changed = false;
            loop {
                let buffer = &mut self.buffer;
                let received = guard.try_io(|socket| {
                    // SAFETY: receives into `buffer`, within its length.
                    let n = unsafe { libc::recv(socket.as_raw_fd(), buffer.as_mut_ptr().cast(), buffer.len(), 0) };
                    if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
                });
                match received {
                    Ok(Ok(_)) => changed = true,
                    Ok(Err(e)) if e.raw_os_error() == Some(libc::ENOBUFS) => changed = true,
                    Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                    Ok(Err(e)) => return Err(e),
                    // Drained: the readiness is cleared for the next wait.
                    Err(_would_block) => break,
                }
            }
            if changed {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;
    use std::time::Duration;

    /// Removes the test's veth pair on drop.
    struct Veth(String);

    impl Drop for Veth {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["link", "del", &self.0]).status();
        }
    }

    fn ip(args: &[&str]) {
        let status = Command::new("ip").args(args).status().unwrap();
        assert!(status.success(), "ip {args:?}");
    }

    /// A new link and a new address are each reported.
    #[test]
    fn link_and_address_changes_are_reported() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let mut changes = LinkChanges::open().unwrap();

            let name = format!("idsln{}", std::process::id() % 100_000);
            ip(&["link", "add", &name, "type", "veth", "peer", "name", &format!("{name}p")]);
            let _veth = Veth(name.clone());
            tokio::time::timeout(Duration::from_secs(5), changes.changed())
                .await
                .expect("no report of a new link")
                .unwrap();

            // Take what the new link produced, then an address on it.
            while tokio::time::timeout(Duration::from_millis(200), changes.changed()).await.is_ok() {}
            ip(&["addr", "add", "10.233.77.1/32", "dev", &name]);
            tokio::time::timeout(Duration::from_secs(5), changes.changed())
                .await
                .expect("no report of a new address")
                .unwrap();
        });
    }
}
