//! Every map of the sensor, in one place. Names are what the daemon looks them up by.
use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    macros::map,
    maps::{HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf, lpm_trie::Key},
};
use ids_common::{
    BanHits, BanId, FileEvent, InodeKey, PROGRAM_COUNT, PathPrefix, ProgramId, SIGNAL_COUNT, ScanPortKey, ScanState,
    Signal,
};

const EXEC_EVENTS_BYTES: u32 = 1 << 20;
const FILE_EVENTS_BYTES: u32 = 16 << 20;
const NET_EVENTS_BYTES: u32 = 1 << 20;

/// Exec, fork, exit and module records.
#[map]
pub static EXEC_EVENTS: RingBuf = RingBuf::with_byte_size(EXEC_EVENTS_BYTES, 0);
/// File-change records: the busiest signal gets the largest buffer.
#[map]
pub static FILE_EVENTS: RingBuf = RingBuf::with_byte_size(FILE_EVENTS_BYTES, 0);
/// Connect records (and the XDP program's incoming SYNs).
#[map]
pub static NET_EVENTS: RingBuf = RingBuf::with_byte_size(NET_EVENTS_BYTES, 0);

/// The flags a record of the signal rings is committed with. The daemon reads those rings on a
/// short timer as well as on wakeups, so a record needs no wakeup to be read soon: one is sent
/// only once a quarter of the ring is waiting, so that a burst is read before the ring fills.
/// A wakeup per record (the default whenever the reader has caught up) cost the daemon more CPU
/// than handling the record.
#[inline(always)]
fn wakeup_flags(ring: &RingBuf, bytes: u32) -> u64 {
    if ring.query(BPF_RB_AVAIL_DATA as u64) >= (bytes / 4) as u64 {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

#[inline(always)]
pub fn exec_wakeup() -> u64 {
    wakeup_flags(&EXEC_EVENTS, EXEC_EVENTS_BYTES)
}

#[inline(always)]
pub fn file_wakeup() -> u64 {
    wakeup_flags(&FILE_EVENTS, FILE_EVENTS_BYTES)
}

#[inline(always)]
pub fn net_wakeup() -> u64 {
    wakeup_flags(&NET_EVENTS, NET_EVENTS_BYTES)
}

/// Records that did not fit in their ring buffer, per signal (index = `Signal`).
#[map]
pub static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(SIGNAL_COUNT, 0);

/// Runs that failed, per program (index = `ProgramId`; see there for what counts).
#[map]
pub static PROGRAM_ERRORS: PerCpuArray<u64> = PerCpuArray::with_max_entries(PROGRAM_COUNT, 0);

/// Every inode of the watch set (value `WATCHED_FILE` or `WATCHED_DIR`). The daemon fills it from
/// the config; the programs add inodes created in watched directories. Its size is set at load.
#[map]
pub static WATCHED_INODES: HashMap<InodeKey, u32> = HashMap::with_max_entries(65536, BPF_F_NO_PREALLOC);

/// Absolute path prefixes of the watch set, for syscalls that name a path rather than a file.
#[map]
pub static WATCHED_PREFIXES: LpmTrie<PathPrefix, u32> = LpmTrie::with_max_entries(4096, BPF_F_NO_PREALLOC);

/// Flags of an open that may create or truncate, by thread, from enter to exit.
#[map]
pub static PENDING_OPENS: LruHashMap<u64, u64> = LruHashMap::with_max_entries(8192, 0);

/// Path-based changes waiting for their syscall to succeed, by thread.
#[map]
pub static PENDING_FILE_EVENTS: LruHashMap<u64, FileEvent> = LruHashMap::with_max_entries(8192, 0);

/// Per-CPU room to build a file record (too large for the 512-byte stack).
#[map]
pub static FILE_SCRATCH: PerCpuArray<FileEvent> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU room for an LPM lookup key.
#[map]
pub static PREFIX_SCRATCH: PerCpuArray<Key<PathPrefix>> = PerCpuArray::with_max_entries(1, 0);

// ---------------------------------------------------------------- XDP bans
// The daemon pins the ban, trusted and hit maps under `[xdp] pin_dir`, so they (and the program
// that uses them) outlive it. Sizes are the most entries each may hold.

/// Banned single IPv4 addresses (network byte order) → ban id.
#[map]
pub static BAN_V4: HashMap<[u8; 4], BanId> = HashMap::with_max_entries(1 << 21, BPF_F_NO_PREALLOC);
/// Banned single IPv6 addresses → ban id.
#[map]
pub static BAN_V6: HashMap<[u8; 16], BanId> = HashMap::with_max_entries(1 << 20, BPF_F_NO_PREALLOC);
/// Banned IPv4 prefixes → ban id.
#[map]
pub static BAN_NET_V4: LpmTrie<[u8; 4], BanId> = LpmTrie::with_max_entries(1 << 18, BPF_F_NO_PREALLOC);
/// Banned IPv6 prefixes → ban id.
#[map]
pub static BAN_NET_V6: LpmTrie<[u8; 16], BanId> = LpmTrie::with_max_entries(1 << 18, BPF_F_NO_PREALLOC);
/// Packets and bytes dropped per ban id.
#[map]
pub static BAN_HITS: PerCpuHashMap<BanId, BanHits> = PerCpuHashMap::with_max_entries(1 << 21, BPF_F_NO_PREALLOC);
/// Trusted IPv4 addresses and prefixes: never dropped, never counted as scanners.
#[map]
pub static TRUSTED_V4: LpmTrie<[u8; 4], u32> = LpmTrie::with_max_entries(4096, BPF_F_NO_PREALLOC);
#[map]
pub static TRUSTED_V6: LpmTrie<[u8; 16], u32> = LpmTrie::with_max_entries(4096, BPF_F_NO_PREALLOC);

/// Scan detector: state per source (IPv6 or IPv4-mapped address).
#[map]
pub static SCAN_SOURCES: LruHashMap<[u8; 16], ScanState> = LruHashMap::with_max_entries(65536, 0);
/// Scan detector: the window in which each (source, port) pair was last counted.
#[map]
pub static SCAN_PORTS: LruHashMap<ScanPortKey, u64> = LruHashMap::with_max_entries(262144, 0);
/// Sources over a scan threshold (`ScanEvent`).
#[map]
pub static XDP_EVENTS: RingBuf = RingBuf::with_byte_size(256 << 10, 0);

#[inline(always)]
pub fn count_lost(signal: Signal) {
    if let Some(counter) = LOST.get_ptr_mut(signal as u32) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU while the program runs.
        unsafe { *counter += 1 };
    }
}

#[inline(always)]
pub fn count_error(program: ProgramId) {
    if let Some(counter) = PROGRAM_ERRORS.get_ptr_mut(program as u32) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU while the program runs.
        unsafe { *counter += 1 };
    }
}

/// How a tracing or LSM program entry ends a run: counts its error if it had one. Those programs
/// only observe, so their verdict is 0 either way.
#[inline(always)]
pub fn count_failure(program: ProgramId, run: Result<(), i64>) {
    if run.is_err() {
        count_error(program);
    }
}
