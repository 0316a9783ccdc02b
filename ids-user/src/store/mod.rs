//! The state database, `<state_dir>/ids.db` (SQLite, WAL journal).
//!
//! Tables:
//! - `current_items` and `baseline_items`: `(collector, item_id)` → `digest` (64 hex), `detail`
//!   (JSON text), `updated` (RFC 3339, UTC). `current_items` is what the daemon last hashed;
//!   `baseline_items` is the state accepted by `ids baseline`.
//! - `alerts`: `time`, `kind` (`integrity` | `sensor_miss`), `item_id`, `collector`, `what` (JSON:
//!   the change, the attributes that changed, old and new digest and detail). Detection alerts
//!   have kind `detect`, the rule id as `item_id`, the detector as `collector` and the whole alert
//!   object as `what`.
//! - `bans` (version 2, `bans_table.rs`): `id` (also the kernel's ban id), `net` (canonical address or
//!   prefix, unique), `reason`, `source`, `created`, `expires` (RFC 3339 UTC; NULL: permanent),
//!   `packets`/`bytes` (hit counters as last read from the kernel), `escalation` (version 5: why an
//!   escalating ban lasts as long as it does, JSON of `bans_table::Escalation`; NULL otherwise);
//!   `offenders`: `net` → number of offences (new bans but manual ones, unless
//!   `[bans] manual_counts_as_offence`), for escalating durations, and the time of the last.
//! - `log_offsets` (version 3, `detect.rs`): per followed log path, the file (`dev`, `ino`), the
//!   offset after the last complete line read, and the length and SHA-256 of the file's first bytes
//!   (truncation check). The log detectors escalate their bans from `offenders`.
//!
//! - `fleet_outbox` (version 4, `fleet_outbox.rs`): the fleet agent's `epoch` (this database's
//!   numbering of alerts), `confirmed_seq` (every alert up to this id was confirmed by the broker
//!   or dropped in a gap) and `ban_rev` (the last fleet ban decision applied); `fleet_gaps`: alert
//!   ids dropped unsent (`from_seq..=to_seq`) and whether the gap record reached the broker.
//!
//! The schema is versioned with `PRAGMA user_version`: [`MIGRATIONS`]`[n]` takes a database from
//! version `n` to `n + 1`, each in its own transaction, so a database of any earlier version (an
//! empty file is version 0) is brought up to date when it is opened.
//!
//! There is one writer: the daemon's integrity worker while `ids run` runs, the command line
//! (`ids baseline` offline) otherwise. Readers may open the file at any time (WAL).
use std::path::{Path, PathBuf};

#[cfg(test)]
use rusqlite::OptionalExtension as _;
use rusqlite::{Connection, params};

use crate::item::{Digest, Item, hex};

pub mod bans_table;
pub mod repair;
pub use bans_table::{AlertFilter, BanRow, Escalation, StoredAlert};
mod detect;
pub use detect::LogOffset;
mod fleet_outbox;
pub use fleet_outbox::{Gap, UnsentAlert};

/// Schema migrations, in order; never edit one that was released, append a new one.
pub const MIGRATIONS: &[&str] = &[
    // 0 → 1
    "CREATE TABLE current_items (
         collector TEXT NOT NULL,
         item_id   TEXT NOT NULL,
         digest    TEXT NOT NULL,
         detail    TEXT NOT NULL,
         updated   TEXT NOT NULL,
         PRIMARY KEY (collector, item_id)
     ) WITHOUT ROWID;
     CREATE TABLE baseline_items (
         collector TEXT NOT NULL,
         item_id   TEXT NOT NULL,
         digest    TEXT NOT NULL,
         detail    TEXT NOT NULL,
         updated   TEXT NOT NULL,
         PRIMARY KEY (collector, item_id)
     ) WITHOUT ROWID;
     CREATE TABLE alerts (
         id        INTEGER PRIMARY KEY,
         time      TEXT NOT NULL,
         kind      TEXT NOT NULL,
         item_id   TEXT NOT NULL,
         collector TEXT NOT NULL,
         what      TEXT NOT NULL
     );
     CREATE INDEX alerts_by_time ON alerts (time);",
    // 1 → 2: bans (see `bans`)
    "CREATE TABLE bans (
         id      INTEGER PRIMARY KEY AUTOINCREMENT,
         net     TEXT NOT NULL UNIQUE,
         reason  TEXT NOT NULL,
         source  TEXT NOT NULL,
         created TEXT NOT NULL,
         expires TEXT,
         packets INTEGER NOT NULL DEFAULT 0,
         bytes   INTEGER NOT NULL DEFAULT 0
     );
     CREATE INDEX bans_by_expiry ON bans (expires) WHERE expires IS NOT NULL;
     CREATE TABLE offenders (
         net   TEXT PRIMARY KEY,
         bans  INTEGER NOT NULL,
         last  TEXT NOT NULL
     ) WITHOUT ROWID;",
    // 2 → 3: the detectors' log positions (`detect`).
    "CREATE TABLE log_offsets (
         path      TEXT PRIMARY KEY,
         dev       INTEGER NOT NULL,
         ino       INTEGER NOT NULL,
         offset    INTEGER NOT NULL,
         head_len  INTEGER NOT NULL,
         head_hash TEXT NOT NULL
     ) WITHOUT ROWID;",
    // 3 → 4: the fleet agent's outbox (`fleet_outbox.rs`).
    "CREATE TABLE fleet_outbox (
         id            INTEGER PRIMARY KEY CHECK (id = 1),
         epoch         INTEGER NOT NULL,
         confirmed_seq INTEGER NOT NULL,
         ban_rev       INTEGER NOT NULL
     );
     CREATE TABLE fleet_gaps (
         from_seq INTEGER PRIMARY KEY,
         to_seq   INTEGER NOT NULL,
         time     TEXT NOT NULL,
         sent     INTEGER NOT NULL DEFAULT 0
     );",
    // 4 → 5: why an escalating ban lasts as long as it does (`bans_table::Escalation`, JSON).
    "ALTER TABLE bans ADD COLUMN escalation TEXT;",
];

/// Errors of the store, naming the database file and what was being done.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("opening database {path}: {source}")]
    Open { path: PathBuf, source: rusqlite::Error },
    #[error("database {path}: migrating from schema version {from}: {source}")]
    Migrate { path: PathBuf, from: usize, source: rusqlite::Error },
    #[error("database {path} has schema version {found}, newer than this program's {known}")]
    TooNew { path: PathBuf, found: usize, known: usize },
    #[error("database {path}: {what}: {source}")]
    Query { path: PathBuf, what: &'static str, source: rusqlite::Error },
    #[error(
        "database {path} is damaged ({problems}); stop here and run `ids db recover`: it copies what can be read into a new database, keeps the damaged file beside it, and the next start rescans every item"
    )]
    Damaged { path: PathBuf, problems: String },
    #[error("recovering database {path}: {message}")]
    Recover { path: PathBuf, message: String },
    #[error("database {path}: {table} row {collector}/{item_id}: {message}")]
    BadRow { path: PathBuf, table: &'static str, collector: String, item_id: String, message: String },
}

/// An item and the collector that produced it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredItem {
    pub collector: String,
    pub item: Item,
}

/// An alert as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertRow {
    pub time: String,
    pub kind: String,
    pub item_id: String,
    pub collector: String,
    pub what: serde_json::Value,
}

#[derive(Debug, Clone, Copy)]
enum Table {
    Current,
    Baseline,
}

impl Table {
    fn name(self) -> &'static str {
        match self {
            Table::Current => "current_items",
            Table::Baseline => "baseline_items",
        }
    }
}

pub struct Store {
    conn: Connection,
    path: PathBuf,
}

/// The database file in a state directory.
pub fn db_path(state_dir: &Path) -> PathBuf {
    state_dir.join("ids.db")
}

/// The current time as RFC 3339 (UTC, microseconds).
pub fn now() -> String {
    humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string()
}

/// Creates the database file 0600 if it is missing (SQLite gives its `-wal` and `-shm` the
/// database's mode), and takes group and other access away from the three files of an existing
/// one, made by a version that left them 0644. Best effort: a file that cannot be changed is
/// left to the open that follows, which reports what matters (an unreadable file).
fn restrict_to_owner(path: &Path) {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    if !path.exists() {
        let _ = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path);
    }
    for file in [path.to_path_buf(), sidecar(path, "-wal"), sidecar(path, "-shm")] {
        let Ok(metadata) = std::fs::metadata(&file) else { continue };
        let mode = metadata.permissions().mode();
        if mode & 0o077 != 0
            && let Err(e) = std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode & 0o700))
        {
            tracing::warn!(file = %file.display(), error = %e, "cannot make the state database private (0600)");
        }
    }
}

/// `ids.db` → `ids.db-wal`.
fn sidecar(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

impl Store {
    /// Opens (creating it if needed) and migrates the database at `path`.
    /// The file and its `-wal` and `-shm` are made private to their owner (0600): they hold
    /// every alert and ban.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        restrict_to_owner(path);
        let conn = Connection::open(path).map_err(|source| StoreError::Open { path: path.into(), source })?;
        Self::setup(conn, path)
    }

    /// A private database in memory (tests).
    #[cfg(test)]
    pub fn open_in_memory() -> Result<Self, StoreError> {
        let conn =
            Connection::open_in_memory().map_err(|source| StoreError::Open { path: ":memory:".into(), source })?;
        Self::setup(conn, Path::new(":memory:"))
    }

    fn setup(conn: Connection, path: &Path) -> Result<Self, StoreError> {
        let mut store = Self { conn, path: path.into() };
        let query = |what| {
            let path = path.to_path_buf();
            move |source| StoreError::Query { path, what, source }
        };
        // WAL: readers (`ids diff` offline) never block the writer; NORMAL sync is durable
        // enough for a cache of hashes that a rescan rebuilds.
        store.conn.pragma_update(None, "journal_mode", "WAL").map_err(query("setting WAL mode"))?;
        store.conn.pragma_update(None, "synchronous", "NORMAL").map_err(query("setting synchronous"))?;
        store.conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(query("setting busy timeout"))?;
        store.migrate()?;
        Ok(store)
    }

    /// The schema version (`PRAGMA user_version`).
    pub fn schema_version(&self) -> Result<usize, StoreError> {
        let version: i64 = self
            .conn
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .map_err(|source| self.query_error("reading user_version", source))?;
        Ok(version.max(0) as usize)
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        let found = self.schema_version()?;
        if found > MIGRATIONS.len() {
            return Err(StoreError::TooNew { path: self.path.clone(), found, known: MIGRATIONS.len() });
        }
        for (from, sql) in MIGRATIONS.iter().enumerate().skip(found) {
            let path = self.path.clone();
            let error = |source| StoreError::Migrate { path: path.clone(), from, source };
            let tx = self.conn.transaction().map_err(error)?;
            tx.execute_batch(sql).map_err(error)?;
            tx.pragma_update(None, "user_version", (from + 1) as i64).map_err(error)?;
            tx.commit().map_err(error)?;
        }
        Ok(())
    }

    fn query_error(&self, what: &'static str, source: rusqlite::Error) -> StoreError {
        StoreError::Query { path: self.path.clone(), what, source }
    }

    /// Replaces every current item with `items` (a full scan).
    pub fn replace_current(&mut self, items: &[StoredItem]) -> Result<(), StoreError> {
        self.replace(Table::Current, items)
    }

    /// Replaces the baseline with `items`.
    pub fn replace_baseline(&mut self, items: &[StoredItem]) -> Result<(), StoreError> {
        self.replace(Table::Baseline, items)
    }

    fn replace(&mut self, table: Table, items: &[StoredItem]) -> Result<(), StoreError> {
        let path = self.path.clone();
        let error = |what| {
            let path = path.clone();
            move |source| StoreError::Query { path, what, source }
        };
        let updated = now();
        let tx = self.conn.transaction().map_err(error("starting a transaction"))?;
        tx.execute(&format!("DELETE FROM {}", table.name()), []).map_err(error("clearing items"))?;
        {
            let mut insert = tx
                .prepare(&format!(
                    "INSERT OR REPLACE INTO {} (collector, item_id, digest, detail, updated) VALUES (?1, ?2, ?3, ?4, ?5)",
                    table.name()
                ))
                .map_err(error("preparing insert"))?;
            for stored in items {
                insert
                    .execute(params![
                        stored.collector,
                        stored.item.id,
                        hex(&stored.item.digest),
                        stored.item.detail.to_string(),
                        updated
                    ])
                    .map_err(error("inserting an item"))?;
            }
        }
        tx.commit().map_err(error("committing items"))
    }

    /// Copies the current items to the baseline (`ids baseline`); returns how many.
    #[cfg(test)]
    pub fn baseline_from_current(&mut self) -> Result<usize, StoreError> {
        let path = self.path.clone();
        let error = |what| {
            let path = path.clone();
            move |source| StoreError::Query { path, what, source }
        };
        let tx = self.conn.transaction().map_err(error("starting a transaction"))?;
        tx.execute("DELETE FROM baseline_items", []).map_err(error("clearing the baseline"))?;
        let copied = tx
            .execute(
                "INSERT INTO baseline_items (collector, item_id, digest, detail, updated)
                 SELECT collector, item_id, digest, detail, updated FROM current_items",
                [],
            )
            .map_err(error("copying current items to the baseline"))?;
        tx.commit().map_err(error("committing the baseline"))?;
        Ok(copied)
    }

    /// Applies changes to the current items in one transaction: `Some(item)` inserts or replaces,
    /// `None` removes, and records `alerts`.
    pub fn apply(&mut self, updates: &[(String, String, Option<Item>)], alerts: &[AlertRow]) -> Result<(), StoreError> {
        let path = self.path.clone();
        let error = |what| {
            let path = path.clone();
            move |source| StoreError::Query { path, what, source }
        };
        let updated = now();
        let tx = self.conn.transaction().map_err(error("starting a transaction"))?;
        {
            let mut upsert = tx
                .prepare(
                    "INSERT OR REPLACE INTO current_items (collector, item_id, digest, detail, updated)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .map_err(error("preparing upsert"))?;
            let mut delete = tx
                .prepare("DELETE FROM current_items WHERE collector = ?1 AND item_id = ?2")
                .map_err(error("preparing delete"))?;
            let mut alert = tx
                .prepare("INSERT INTO alerts (time, kind, item_id, collector, what) VALUES (?1, ?2, ?3, ?4, ?5)")
                .map_err(error("preparing alert insert"))?;
            for (collector, id, item) in updates {
                match item {
                    Some(item) => upsert
                        .execute(params![collector, id, hex(&item.digest), item.detail.to_string(), updated])
                        .map(drop)
                        .map_err(error("updating an item"))?,
                    None => delete.execute(params![collector, id]).map(drop).map_err(error("removing an item"))?,
                }
            }
            for row in alerts {
                alert
                    .execute(params![row.time, row.kind, row.item_id, row.collector, row.what.to_string()])
                    .map_err(error("recording an alert"))?;
            }
        }
        tx.commit().map_err(error("committing changes"))
    }

    pub fn current(&self) -> Result<Vec<StoredItem>, StoreError> {
        self.items(Table::Current)
    }

    pub fn baseline(&self) -> Result<Vec<StoredItem>, StoreError> {
        self.items(Table::Baseline)
    }

    /// How many items the baseline holds (0: none was accepted).
    pub fn baseline_len(&self) -> Result<u64, StoreError> {
        self.conn
            .query_row("SELECT COUNT(*) FROM baseline_items", [], |row| row.get::<_, i64>(0))
            .map(|count| count.max(0) as u64)
            .map_err(|source| self.query_error("counting the baseline", source))
    }

    /// Whether the baseline holds any item.
    #[cfg(test)]
    pub fn has_baseline(&self) -> Result<bool, StoreError> {
        let any: Option<i64> = self
            .conn
            .query_row("SELECT 1 FROM baseline_items LIMIT 1", [], |row| row.get(0))
            .optional()
            .map_err(|source| self.query_error("reading the baseline", source))?;
        Ok(any.is_some())
    }

    fn items(&self, table: Table) -> Result<Vec<StoredItem>, StoreError> {
        let error = |source| self.query_error("reading items", source);
        let mut select = self
            .conn
            .prepare(&format!(
                "SELECT collector, item_id, digest, detail FROM {} ORDER BY collector, item_id",
                table.name()
            ))
            .map_err(error)?;
        let rows = select
            .query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, String>(3)?,
                ))
            })
            .map_err(error)?;
        let mut items = Vec::new();
        for row in rows {
            let (collector, id, digest, detail) = row.map_err(error)?;
            let bad = |message: String| StoreError::BadRow {
                path: self.path.clone(),
                table: table.name(),
                collector: collector.clone(),
                item_id: id.clone(),
                message,
            };
            let digest = parse_hex(&digest).ok_or_else(|| bad(format!("digest {digest:?} is not 64 hex digits")))?;
            let detail = serde_json::from_str(&detail).map_err(|e| bad(format!("detail is not JSON: {e}")))?;
            items.push(StoredItem { collector, item: Item { id, digest, detail } });
        }
        Ok(items)
    }

    /// Every alert, oldest first.
    #[cfg(test)]
    pub fn alerts(&self) -> Result<Vec<AlertRow>, StoreError> {
        self.recent_alerts_matching(usize::MAX, &AlertFilter::default())
    }
}

/// 64 hex digits → digest.
pub fn parse_hex(text: &str) -> Option<Digest> {
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut digest = [0u8; 32];
    for (i, byte) in digest.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(digest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::item::sha256;

    fn stored(collector: &str, id: &str, content: &[u8]) -> StoredItem {
        StoredItem {
            collector: collector.into(),
            item: Item::new(id, sha256(content), serde_json::json!({"size": content.len()})),
        }
    }

    #[test]
    fn migration_from_empty_file_reaches_the_latest_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ids.db");
        std::fs::write(&path, b"").unwrap();
        let store = Store::open(&path).unwrap();
        assert_eq!(store.schema_version().unwrap(), MIGRATIONS.len());
        assert!(store.current().unwrap().is_empty());
        assert!(!store.has_baseline().unwrap());
        let mode: String = store.conn.pragma_query_value(None, "journal_mode", |row| row.get(0)).unwrap();
        assert_eq!(mode, "wal");
        drop(store);
        // Opening again does not re-run migrations.
        assert_eq!(Store::open(&path).unwrap().schema_version().unwrap(), MIGRATIONS.len());
    }

    #[test]
    fn newer_schema_is_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ids.db");
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
        drop(conn);
        let err = Store::open(&path).err().unwrap().to_string();
        assert!(err.contains("ids.db") && err.contains("99"), "{err}");
    }

    #[test]
    fn items_alerts_and_baseline_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ids.db");
        let mut store = Store::open(&path).unwrap();
        let items = vec![stored("files", "file:/a", b"1"), stored("meta", "meta:/a", b"2")];
        store.replace_current(&items).unwrap();
        assert_eq!(store.current().unwrap(), items);
        assert_eq!(store.baseline_from_current().unwrap(), 2);
        let changed = Item::new("file:/a", sha256(b"3"), serde_json::json!({"size": 1}));
        let alert = AlertRow {
            time: now(),
            kind: "integrity".into(),
            item_id: "file:/a".into(),
            collector: "files".into(),
            what: serde_json::json!({"change": "changed", "attributes": ["content"]}),
        };
        store
            .apply(
                &[("files".into(), "file:/a".into(), Some(changed.clone())), ("meta".into(), "meta:/a".into(), None)],
                std::slice::from_ref(&alert),
            )
            .unwrap();
        drop(store);
        let store = Store::open(&path).unwrap();
        assert_eq!(store.current().unwrap(), vec![StoredItem { collector: "files".into(), item: changed }]);
        assert_eq!(store.baseline().unwrap(), items);
        assert_eq!(store.alerts().unwrap(), vec![alert]);
    }

    #[test]
    fn hex_round_trips() {
        let digest = sha256(b"x");
        assert_eq!(parse_hex(&hex(&digest)), Some(digest));
        assert_eq!(parse_hex("zz"), None);
    }
}
