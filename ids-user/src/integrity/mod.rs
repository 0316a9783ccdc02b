//! Integrity snapshots: collectors hash parts of the host's state, and the hashes are combined into
//! one aggregate that is the same for the same state whatever the order of the scan.
//!
//! # Model
//!
//! A [`Collector`] yields [`Item`]s: an id naming what was hashed (`file:/etc/passwd`,
//! `module:ext4`, ...), a SHA-256 digest of it, and a small `detail` (JSON) saying what went into
//! the digest. Something that could not be read (a missing path, a command that failed or timed
//! out) is an *error item*: its digest is the digest of the error text and its detail is
//! `{"error": "..."}`, so that the disappearance of a watched file changes the hash instead of
//! aborting the scan. A collector returns `Err` only when it cannot work at all (its input source,
//! such as `/proc/modules`, is unreadable; its settings are wrong).
//!
//! [`collector_digest`] hashes one collector's sorted items; [`aggregate_digest`] hashes the
//! hostname and the sorted items of all collectors. [`scan`] builds the collectors of a
//! configuration and computes both. [`diff`] compares two sets of items (`ids diff`).
//!
//! # Built-in kinds (`[[collectors]]` `kind = ...`)
//!
//! | kind | settings | item ids |
//! |---|---|---|
//! | `file_contents` | `paths`, `recursive` | `file:<abs path>` (see *Paths in ids*) |
//! | `file_metadata` | `paths`, `recursive` | `meta:<abs path>` (see *Paths in ids*) |
//! | `kernel_modules` | none | `module:<name>` |
//! | `listening_sockets` | none | `listen:<proto>:<addr>:<port>` (IPv6 address in brackets) |
//! | `command` | `commands`, `timeout` | `command:<cmd>` |
//! | `example_hostname` | none | `hostname:/etc/hostname`, `kernel:release` |
//!
//! Every collector also takes `name` (default: its kind), which must be unique.
//!
//! # Paths in ids
//!
//! File names are bytes, ids are UTF-8 text; [`path_id`] maps one to the other losslessly and
//! unambiguously, and [`id_path`] maps back:
//!
//! - a path that is valid UTF-8 is written as it is: `file:/etc/passwd` (so ids of ordinary
//!   paths, including ones holding `%` or `\`, are exactly the path);
//! - a path that is not valid UTF-8 gets the kind followed by `%:` instead of `:`, and is
//!   percent-encoded: every byte of an invalid UTF-8 sequence becomes `%XX` (two upper-case hex
//!   digits), every `%` becomes `%25`, everything else (valid UTF-8, including non-ASCII) stays.
//!   The name `/tmp/a<0xff>b%` gives `file%:/tmp/a%FFb%25`.
//!
//! No kind holds `%`, so the two forms never meet: `file:/tmp/a%FFb` is the UTF-8 name
//! `/tmp/a%FFb`, `file%:/tmp/a%FFb` the name with the byte 0xff. A symbolic link's target in
//! `file_metadata`'s detail follows the same rule: `symlink_target` when it is UTF-8,
//! `symlink_target_escaped` (percent-encoded as above) when it is not.
//!
//! # Bad input
//!
//! The file collectors never hang and never panic on what they find; each of these is an item
//! saying what it is:
//!
//! - a FIFO, socket or device: `file_contents` never opens it; its item has detail
//!   `{"type": "fifo" | "socket" | "char" | "block"}` (digest: of that detail);
//! - a file that cannot be read (permission denied, an I/O error such as reading
//!   `/proc/self/mem` at offset 0): an error item with the system's error text. Root reads a
//!   mode-000 file anyway (`CAP_DAC_OVERRIDE`), so for root "unreadable" means an I/O error;
//! - a file that vanishes between the listing and the hashing: an error item
//!   `vanished during the scan: No such file or directory (os error 2)`;
//! - a named symbolic link that loops (`a -> b -> a`): `file_contents` has the error item
//!   `symbolic link loop: Too many levels of symbolic links (os error 40)`, `file_metadata` the
//!   link itself. Directory walks and `**` globs never follow links, so a link to an ancestor
//!   is one item and the scan ends;
//! - a directory that cannot be listed: `file_contents` has an error item for it,
//!   `file_metadata` its lstat detail plus `"error"`;
//! - large and sparse files are streamed in 64 KiB blocks (memory does not grow with size).
//!
//! # Adding a backend
//!
//! 1. Write a type implementing [`Collector`] in a new file of this module
//!    ([`example_hostname`] is a complete, small example).
//! 2. Write a constructor `fn(&CollectorConfig) -> Result<Box<dyn Collector>, CollectorError>`.
//! 3. Add a [`KindSpec`] for it (its `kind` string, the settings it accepts, the constructor) to
//!    [`Registry::with_builtin`], or call [`Registry::register`] on a registry of your own.
//!
//! Configuration validation (`crate::config`) asks the built-in registry which kinds exist and
//! which settings each accepts, so a kind added in step 3 is accepted in `[[collectors]]` at once.
use std::collections::BTreeMap;

use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::integrity::config::CollectorConfig;
pub(crate) use crate::item::{Digest, Item, escape_path, hex, sha256};
use crate::item::{serialize_hex, unescape};

pub mod command;
pub mod config;
pub mod diff;
pub mod example_hostname;
pub mod file_contents;
pub mod file_metadata;
pub mod kernel_modules;
pub mod listening_sockets;
pub mod paths;
pub mod progress;
pub mod sha_lanes;
pub mod worker;

/// The id of `path` for a collector of kind prefix `kind` (`"file"`, `"meta"`): see
/// *Paths in ids* in the module documentation.
pub fn path_id(kind: &str, path: &std::path::Path) -> String {
    match escape_path(path) {
        (false, text) => format!("{kind}:{text}"),
        (true, text) => format!("{kind}%:{text}"),
    }
}

/// The kind and path of an id made by [`path_id`]; `None` for an id of another form (or a
/// malformed escape).
pub fn id_path(id: &str) -> Option<(&str, std::path::PathBuf)> {
    use std::os::unix::ffi::OsStringExt as _;
    let (kind, rest) = id.split_once(':')?;
    match kind.strip_suffix('%') {
        None => Some((kind, std::path::PathBuf::from(rest))),
        Some(kind) => Some((kind, std::ffi::OsString::from_vec(unescape(rest)?).into())),
    }
}

/// The error text of an item for a path that could not be read: the system's text, said more
/// plainly for a symbolic link loop and for a file that vanished after it was listed.
pub(crate) fn io_error_text(error: &std::io::Error, listed: bool) -> String {
    match error.raw_os_error() {
        Some(libc::ELOOP) => format!("symbolic link loop: {error}"),
        Some(libc::ENOENT) if listed => format!("vanished during the scan: {error}"),
        _ => error.to_string(),
    }
}

/// Why a collector could not be built or could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum CollectorError {
    #[error("unknown collector kind {0:?}")]
    UnknownKind(String),
    #[error("collector {collector}: {key}: {message}")]
    Setting { collector: String, key: &'static str, message: String },
    #[error("collector {collector}: reading {path}: {source}")]
    Read { collector: String, path: String, source: std::io::Error },
}

/// A source of hashed items.
pub trait Collector: Send + Sync {
    /// The collector's name (its configured `name`, or its kind): the key of its digest.
    fn name(&self) -> &str;
    /// Hashes the current state. Items need not be sorted; ids must be unique.
    fn collect(&self) -> Result<Vec<Item>, CollectorError>;

    /// The `paths` patterns of a collector of files (empty for any other): the daemon watches
    /// them and calls [`Collector::collect_at`] for the paths that file events name.
    fn paths(&self) -> &[String] {
        &[]
    }

    /// The items [`Collector::collect`] would return for `target` itself and, when `deep`, for
    /// what is below it; `None` for a collector that is not about files (it is re-run whole).
    fn collect_at(&self, _target: &std::path::Path, _deep: bool) -> Option<Result<Vec<Item>, CollectorError>> {
        None
    }

    /// For a collector of files, its `recursive` setting (`None` for any other). A full scan
    /// expands each ([`Collector::paths`], recursive) that several collectors share only once
    /// and hands the result to each of them through [`Collector::collect_expanded`].
    fn walk_recursive(&self) -> Option<bool> {
        None
    }

    /// What [`Collector::collect`] returns, from an expansion of the collector's paths made once
    /// for the whole scan.
    fn collect_expanded(&self, _expanded: &paths::Expanded) -> Result<Vec<Item>, CollectorError> {
        self.collect()
    }

    /// Whether the daemon should re-run this collector when the sensor reports `trigger`, rather
    /// than only every `integrity_interval`.
    fn follows(&self, _trigger: Trigger) -> bool {
        false
    }
}

/// Kernel reports that make the daemon re-run the collectors that follow them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// A TCP socket entered or left LISTEN.
    ListeningSockets,
    /// A kernel module was loaded or freed.
    KernelModules,
}

impl Trigger {
    pub const ALL: [Trigger; 2] = [Trigger::ListeningSockets, Trigger::KernelModules];

    pub fn bit(self) -> u32 {
        1 << self as u32
    }
}

/// Builds a collector from its `[[collectors]]` table.
pub type Constructor = fn(&CollectorConfig) -> Result<Box<dyn Collector>, CollectorError>;

/// A collector kind: its `kind` string, the settings it accepts besides `kind` and `name`, and
/// its constructor.
#[derive(Debug, Clone, Copy)]
pub struct KindSpec {
    pub kind: &'static str,
    /// Keys among `paths`, `recursive`, `commands`, `timeout` that this kind accepts.
    pub settings: &'static [&'static str],
    pub construct: Constructor,
}

/// Maps `kind` strings to constructors.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    kinds: BTreeMap<&'static str, KindSpec>,
}

impl Registry {
    /// Every backend of this crate.
    pub fn with_builtin() -> Self {
        let mut registry = Self::default();
        registry.register(file_contents::SPEC);
        registry.register(file_metadata::SPEC);
        registry.register(kernel_modules::SPEC);
        registry.register(listening_sockets::SPEC);
        registry.register(command::SPEC);
        registry.register(example_hostname::SPEC);
        registry
    }

    /// Adds (or replaces) a kind.
    pub fn register(&mut self, spec: KindSpec) {
        self.kinds.insert(spec.kind, spec);
    }

    pub fn spec(&self, kind: &str) -> Option<&KindSpec> {
        self.kinds.get(kind)
    }

    pub fn kinds(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.kinds.keys().copied()
    }

    pub fn build(&self, config: &CollectorConfig) -> Result<Box<dyn Collector>, CollectorError> {
        let spec = self.spec(&config.kind).ok_or_else(|| CollectorError::UnknownKind(config.kind.clone()))?;
        (spec.construct)(config)
    }
}

/// The result of one collector.
#[derive(Debug, Clone, Serialize)]
pub struct CollectorReport {
    pub name: String,
    #[serde(serialize_with = "serialize_hex")]
    pub digest: Digest,
    /// Sorted by id.
    pub items: Vec<Item>,
}

/// The result of a whole scan.
#[derive(Debug, Clone, Serialize)]
pub struct ScanReport {
    pub hostname: String,
    #[serde(serialize_with = "serialize_hex")]
    pub aggregate: Digest,
    /// In configuration order.
    pub collectors: Vec<CollectorReport>,
}

/// Errors of [`scan`].
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error(transparent)]
    Collector(#[from] CollectorError),
    #[error("reading the hostname: {0}")]
    Hostname(std::io::Error),
}

/// Builds the configured collectors and runs them; collectors run side by side (one walking a
/// tree while another hashes), and the file collectors spread their own work over every core.
pub fn scan(registry: &Registry, configs: &[CollectorConfig]) -> Result<ScanReport, ScanError> {
    let collectors = configs.iter().map(|config| registry.build(config)).collect::<Result<Vec<_>, _>>()?;
    let hostname = hostname().map_err(ScanError::Hostname)?;
    scan_collectors(&hostname, &collectors)
}

/// Runs already built collectors; `hostname` goes into the aggregate.
pub fn scan_collectors(hostname: &str, collectors: &[Box<dyn Collector>]) -> Result<ScanReport, ScanError> {
    use rayon::prelude::*;
    let refs: Vec<&dyn Collector> = collectors.iter().map(|collector| collector.as_ref()).collect();
    let reports = collect_all(&refs)
        .into_par_iter()
        .zip(collectors.par_iter())
        .map(|(items, collector)| {
            let mut items = items?;
            sort_items(&mut items);
            Ok(CollectorReport { name: collector.name().to_string(), digest: collector_digest(&items), items })
        })
        .collect::<Result<Vec<_>, ScanError>>()?;
    let aggregate = aggregate_digest(hostname, reports.iter().flat_map(|report| report.items.iter()));
    Ok(ScanReport { hostname: hostname.to_string(), aggregate, collectors: reports })
}

/// Runs `collectors` side by side, one result each in their order. The trees that several file
/// collectors share (contents and metadata of the same paths, typically) are walked once, and
/// that walk lists the tree on every core itself.
pub fn collect_all(collectors: &[&dyn Collector]) -> Vec<Result<Vec<Item>, CollectorError>> {
    use rayon::prelude::*;
    fn walk_key(collector: &dyn Collector) -> Option<(&[String], bool)> {
        collector.walk_recursive().map(|recursive| (collector.paths(), recursive))
    }
    let mut shared: Vec<(&[String], bool)> = Vec::new();
    for (i, key) in collectors.iter().enumerate().filter_map(|(i, c)| Some((i, walk_key(*c)?))) {
        if !shared.contains(&key) && collectors[i + 1..].iter().any(|later| walk_key(*later) == Some(key)) {
            shared.push(key);
        }
    }
    let expansions: Vec<Option<paths::Expanded>> =
        shared.par_iter().map(|(patterns, recursive)| paths::expand(patterns, *recursive).ok()).collect();
    collectors
        .par_iter()
        .map(|collector| {
            let expanded = walk_key(*collector)
                .and_then(|key| shared.iter().position(|shared| *shared == key))
                .and_then(|index| expansions[index].as_ref());
            match expanded {
                Some(expanded) => collector.collect_expanded(expanded),
                None => collector.collect(),
            }
        })
        .collect()
}

fn sort_items(items: &mut [Item]) {
    items.sort_unstable_by(|a, b| a.id.cmp(&b.id).then(a.digest.cmp(&b.digest)));
}

/// SHA-256 over one collector's items sorted by (id, digest). The hostname is not part of it, so
/// that hosts holding the same files have the same per-collector digest.
pub fn collector_digest<'a>(items: impl IntoIterator<Item = &'a Item>) -> Digest {
    let mut hasher = Sha256::new();
    hash_sorted_items(&mut hasher, items);
    hasher.finalize().into()
}

/// SHA-256 over the hostname and every item sorted by (id, digest). Each string is preceded by
/// its length (u64, little endian), so no two different inputs share an encoding.
pub fn aggregate_digest<'a>(hostname: &str, items: impl IntoIterator<Item = &'a Item>) -> Digest {
    let mut hasher = Sha256::new();
    hash_str(&mut hasher, hostname);
    hash_sorted_items(&mut hasher, items);
    hasher.finalize().into()
}

fn hash_sorted_items<'a>(hasher: &mut Sha256, items: impl IntoIterator<Item = &'a Item>) {
    let mut pairs: Vec<(&str, &Digest)> = items.into_iter().map(|item| (item.id.as_str(), &item.digest)).collect();
    pairs.sort_unstable();
    hasher.update((pairs.len() as u64).to_le_bytes());
    for (id, digest) in pairs {
        hash_str(hasher, id);
        hasher.update(digest);
    }
}

fn hash_str(hasher: &mut Sha256, text: &str) {
    hasher.update((text.len() as u64).to_le_bytes());
    hasher.update(text.as_bytes());
}

/// The kernel's host name (`uname -n`).
pub fn hostname() -> std::io::Result<String> {
    // SAFETY: uname fills the zeroed struct; nodename is NUL-terminated within its array.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&mut uts) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let bytes: Vec<u8> = uts.nodename.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::*;

    /// The settings of a `[[collectors]]` table with only `kind` set.
    pub fn config(kind: &str) -> CollectorConfig {
        CollectorConfig {
            kind: kind.to_string(),
            name: kind.to_string(),
            paths: Vec::new(),
            recursive: false,
            commands: Vec::new(),
            timeout: std::time::Duration::from_secs(10),
        }
    }

    pub fn ids(items: &[Item]) -> Vec<&str> {
        let mut ids: Vec<&str> = items.iter().map(|item| item.id.as_str()).collect();
        ids.sort_unstable();
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(id: &str, content: &[u8]) -> Item {
        Item::new(id, sha256(content), serde_json::json!({}))
    }

    #[test]
    fn aggregate_does_not_depend_on_order() {
        let items = vec![item("file:/a", b"1"), item("file:/b", b"2"), item("module:x", b"3")];
        let mut reversed = items.clone();
        reversed.reverse();
        assert_eq!(aggregate_digest("h", &items), aggregate_digest("h", &reversed));
        assert_eq!(collector_digest(&items), collector_digest(&reversed));
    }

    #[test]
    fn aggregate_depends_on_hostname_ids_and_digests() {
        let items = vec![item("file:/a", b"1"), item("file:/b", b"2")];
        let base = aggregate_digest("h", &items);
        assert_ne!(base, aggregate_digest("other", &items));
        assert_ne!(base, aggregate_digest("h", &[item("file:/a", b"1"), item("file:/c", b"2")]));
        assert_ne!(base, aggregate_digest("h", &[item("file:/a", b"1"), item("file:/b", b"3")]));
        assert_ne!(base, aggregate_digest("h", &items[..1]));
        // Length prefixes: moving bytes between the hostname and an id changes the hash.
        assert_ne!(aggregate_digest("ab", &[item("c", b"")]), aggregate_digest("a", &[item("bc", b"")]));
    }

    #[test]
    fn path_ids_are_lossless_and_unambiguous() {
        use std::ffi::OsStr;
        use std::os::unix::ffi::OsStrExt as _;
        use std::path::Path;
        let cases: [&[u8]; 7] = [
            b"/etc/passwd",
            b"/tmp/a%FFb",
            b"/tmp/a\xffb",
            b"/tmp/a\xffb%",
            b"/tmp/\xc3\xa9t\xc3",
            b"/tmp/%25\xfe",
            "/tmp/\u{e9}t\u{e9}".as_bytes(),
        ];
        let mut seen = std::collections::BTreeSet::new();
        for case in cases {
            let path = Path::new(OsStr::from_bytes(case));
            let id = path_id("file", path);
            assert!(seen.insert(id.clone()), "two paths share the id {id}");
            assert_eq!(id_path(&id), Some(("file", path.to_path_buf())), "{id}");
        }
        assert_eq!(path_id("file", Path::new("/tmp/a%FFb")), "file:/tmp/a%FFb");
        assert_eq!(path_id("file", Path::new(OsStr::from_bytes(b"/tmp/a\xffb%"))), "file%:/tmp/a%FFb%25");
        assert_eq!(path_id("meta", Path::new(OsStr::from_bytes(b"/\xc3\xa9\xc3"))), "meta%:/\u{e9}%C3");
        assert_eq!(id_path("file%:/bad%G1"), None);
    }

    #[test]
    fn hex_is_lower_case_and_64_long() {
        let text = hex(&sha256(b""));
        assert_eq!(text, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    }

    /// Collectors sharing one walk (contents and metadata of the same tree, twice over) report
    /// exactly what each finds on its own, unreadable paths included.
    #[test]
    fn shared_walk_gives_each_collector_what_it_finds_alone() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().display().to_string();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::fs::write(dir.path().join("a/f"), "f").unwrap();
        std::fs::write(dir.path().join("a/b/g"), "g").unwrap();
        std::os::unix::fs::symlink("f", dir.path().join("a/link")).unwrap();
        let registry = Registry::with_builtin();
        let paths = vec![root.clone(), format!("{root}/missing"), format!("{root}/a/*")];
        let configs: Vec<CollectorConfig> = ["file_contents", "file_metadata", "file_metadata", "file_contents"]
            .iter()
            .enumerate()
            .map(|(i, kind)| CollectorConfig {
                name: format!("{kind}{i}"),
                paths: paths.clone(),
                recursive: i < 2,
                ..test_support::config(kind)
            })
            .collect();
        let report = scan(&registry, &configs).unwrap();
        for (config, shared) in configs.iter().zip(&report.collectors) {
            let mut alone = registry.build(config).unwrap().collect().unwrap();
            sort_items(&mut alone);
            assert_eq!(shared.items, alone, "{}", config.name);
            assert!(alone.iter().any(|item| item.id.ends_with("/missing")), "{alone:?}");
        }
        // Contents: a/f, a/b/g, a/link (named by the glob: followed), missing.
        assert_eq!(report.collectors[0].items.len(), 4);
        // Metadata: the root, a, a/b, a/f, a/b/g, a/link, missing.
        assert_eq!(report.collectors[1].items.len(), 7);
    }

    #[test]
    fn scan_orders_collectors_by_config_and_unknown_kind_is_named() {
        let registry = Registry::with_builtin();
        let err = scan(&registry, &[test_support::config("no_such_kind")]).unwrap_err().to_string();
        assert!(err.contains("no_such_kind"), "{err}");
        let report = scan(&registry, &[test_support::config("example_hostname")]).unwrap();
        assert_eq!(report.collectors.len(), 1);
        assert_eq!(report.collectors[0].name, "example_hostname");
        assert_eq!(report.aggregate, aggregate_digest(&report.hostname, &report.collectors[0].items));
    }
}
