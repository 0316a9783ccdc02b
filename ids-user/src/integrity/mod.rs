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
//! | `file_contents` | `paths`, `recursive` | `file:<abs path>` |
//! | `file_metadata` | `paths`, `recursive` | `meta:<abs path>` |
//! | `kernel_modules` | none | `module:<name>` |
//! | `listening_sockets` | none | `listen:<proto>:<addr>:<port>` (IPv6 address in brackets) |
//! | `command` | `commands`, `timeout` | `command:<cmd>` |
//! | `example_hostname` | none | `hostname:/etc/hostname`, `kernel:release` |
//!
//! Every collector also takes `name` (default: its kind), which must be unique.
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

use crate::config::CollectorConfig;

pub mod command;
pub mod diff;
pub mod example_hostname;
pub mod file_contents;
pub mod file_metadata;
pub mod kernel_modules;
pub mod listening_sockets;
pub mod paths;

/// A SHA-256 digest.
pub type Digest = [u8; 32];

/// One hashed thing.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Item {
    /// What was hashed, prefixed by its kind (`file:/etc/passwd`); unique within a collector.
    pub id: String,
    /// SHA-256 of the thing (contents, canonical metadata, error text, ...).
    #[serde(serialize_with = "serialize_hex")]
    pub digest: Digest,
    /// A small description of what was hashed (mode, size, ...), or `{"error": ...}`.
    pub detail: serde_json::Value,
}

impl Item {
    /// An item whose digest was computed by the caller.
    pub fn new(id: impl Into<String>, digest: Digest, detail: impl Serialize) -> Self {
        Self { id: id.into(), digest, detail: to_json(&detail) }
    }

    /// An item whose digest is the SHA-256 of `detail`'s canonical JSON (struct field order).
    pub fn of_detail(id: impl Into<String>, detail: impl Serialize) -> Self {
        let detail = to_json(&detail);
        let digest = sha256(detail.to_string().as_bytes());
        Self { id: id.into(), digest, detail }
    }

    /// An error item: the digest is that of the error text, the detail `{"error": text}`.
    pub fn error(id: impl Into<String>, error: impl std::fmt::Display) -> Self {
        let error = error.to_string();
        Self { id: id.into(), digest: sha256(error.as_bytes()), detail: serde_json::json!({ "error": error }) }
    }

    /// The error text of an error item.
    pub fn error_text(&self) -> Option<&str> {
        self.detail.get("error").and_then(|e| e.as_str())
    }
}

fn to_json(detail: &impl Serialize) -> serde_json::Value {
    serde_json::to_value(detail)
        .unwrap_or_else(|e| serde_json::json!({ "error": format!("detail not serialisable: {e}") }))
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
    #[error("collector {collector}: {message}")]
    Other { collector: String, message: String },
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

/// Builds the configured collectors and runs them; collectors run one after the other, and
/// the file collectors spread their own work over every core.
pub fn scan(registry: &Registry, configs: &[CollectorConfig]) -> Result<ScanReport, ScanError> {
    let collectors = configs.iter().map(|config| registry.build(config)).collect::<Result<Vec<_>, _>>()?;
    let hostname = hostname().map_err(ScanError::Hostname)?;
    scan_collectors(&hostname, &collectors)
}

/// Runs already built collectors; `hostname` goes into the aggregate.
pub fn scan_collectors(hostname: &str, collectors: &[Box<dyn Collector>]) -> Result<ScanReport, ScanError> {
    let mut reports = Vec::with_capacity(collectors.len());
    for collector in collectors {
        let mut items = collector.collect()?;
        sort_items(&mut items);
        reports.push(CollectorReport { name: collector.name().to_string(), digest: collector_digest(&items), items });
    }
    let aggregate = aggregate_digest(hostname, reports.iter().flat_map(|report| report.items.iter()));
    Ok(ScanReport { hostname: hostname.to_string(), aggregate, collectors: reports })
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

/// SHA-256 of a byte string.
pub fn sha256(bytes: &[u8]) -> Digest {
    Sha256::digest(bytes).into()
}

/// Lower-case hex.
pub fn hex(digest: &Digest) -> String {
    use std::fmt::Write as _;
    digest.iter().fold(String::with_capacity(64), |mut out, byte| {
        let _ = write!(out, "{byte:02x}");
        out
    })
}

fn serialize_hex<S: serde::Serializer>(digest: &Digest, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&hex(digest))
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
    fn hex_is_lower_case_and_64_long() {
        let text = hex(&sha256(b""));
        assert_eq!(text, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
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
