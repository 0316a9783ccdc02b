//! The server's records: one row per client identity in its own SQLite file (not the sensor's
//! state database), `records(client, hash, passphrase, created, updated, last_check,
//! last_result)`; `passphrase` is an argon2id hash in PHC form, never the passphrase.
//!
//! WAL journal with `synchronous = FULL`: a write has reached the disk when its transaction
//! returns, so the server answers `20 OK` only after that. All writes go through one connection
//! behind a mutex, and each changes one row in one transaction, so concurrent UPDATEs never leave
//! a torn record. A write that depends on a passphrase is conditional on the passphrase hash it
//! was checked against still being the stored one (compare-and-set), so a CHANGEPHRASE racing an
//! UPDATE cannot let a stale passphrase win.
//!
//! The time and result of the last CHECK are kept in memory and written in batches: they are
//! informational, and writing them per CHECK would cost a disk flush per CHECK.
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use rusqlite::{Connection, OptionalExtension as _, params};

const MIGRATIONS: &[&str] = &[
    // 0 → 1
    "CREATE TABLE records (
         client      TEXT PRIMARY KEY,
         hash        TEXT NOT NULL,
         passphrase  TEXT NOT NULL,
         created     TEXT NOT NULL,
         updated     TEXT NOT NULL,
         last_check  TEXT,
         last_result TEXT
     ) WITHOUT ROWID;",
];

#[derive(Debug, thiserror::Error)]
pub enum RecordStoreError {
    #[error("opening server database {path}: {source}")]
    Open { path: PathBuf, source: rusqlite::Error },
    #[error("server database {path} has schema version {found}, newer than this program's {known}")]
    TooNew { path: PathBuf, found: usize, known: usize },
    #[error("server database {path}: {what}: {source}")]
    Query { path: PathBuf, what: &'static str, source: rusqlite::Error },
    #[error("hashing a passphrase: {0}")]
    Hash(String),
}

/// One client's record.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Record {
    pub client: String,
    pub hash: String,
    #[serde(skip)]
    pub passphrase: String,
    pub created: String,
    pub updated: String,
    pub last_check: Option<String>,
    pub last_result: Option<String>,
}

/// The result of a conditional write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    Done,
    /// No record for the client.
    Missing,
    /// The record's passphrase changed since it was checked.
    Changed,
    /// A record appeared since the client was found to have none.
    Exists,
}

pub struct RecordStore {
    path: PathBuf,
    writer: Mutex<Connection>,
    reader: Mutex<Connection>,
}

fn open_connection(path: &Path) -> Result<Connection, RecordStoreError> {
    let conn = Connection::open(path).map_err(|source| RecordStoreError::Open { path: path.into(), source })?;
    let query = |what| move |source| RecordStoreError::Query { path: path.into(), what, source };
    conn.busy_timeout(std::time::Duration::from_secs(10)).map_err(query("setting busy timeout"))?;
    conn.pragma_update(None, "journal_mode", "WAL").map_err(query("setting WAL mode"))?;
    conn.pragma_update(None, "synchronous", "FULL").map_err(query("setting synchronous = FULL"))?;
    Ok(conn)
}

impl RecordStore {
    /// Opens (creating and migrating if needed) the database at `path`. A new file is made
    /// readable by its owner only (SQLite gives its -wal and -shm files the same mode).
    pub fn open(path: &Path) -> Result<Self, RecordStoreError> {
        if !path.exists() {
            use std::os::unix::fs::OpenOptionsExt as _;
            std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(|e| {
                RecordStoreError::Open {
                    path: path.into(),
                    source: rusqlite::Error::InvalidPath(format!("{}: {e}", path.display()).into()),
                }
            })?;
        }
        let mut writer = open_connection(path)?;
        migrate(&mut writer, path)?;
        let reader = open_connection(path)?;
        Ok(Self { path: path.into(), writer: Mutex::new(writer), reader: Mutex::new(reader) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn error(&self, what: &'static str) -> impl FnOnce(rusqlite::Error) -> RecordStoreError + '_ {
        move |source| RecordStoreError::Query { path: self.path.clone(), what, source }
    }

    fn lock<'a>(conn: &'a Mutex<Connection>) -> std::sync::MutexGuard<'a, Connection> {
        conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn get(&self, client: &str) -> Result<Option<Record>, RecordStoreError> {
        let conn = Self::lock(&self.reader);
        let mut statement = conn
            .prepare_cached(
                "SELECT client, hash, passphrase, created, updated, last_check, last_result FROM records WHERE client = ?1",
            )
            .map_err(self.error("preparing a lookup"))?;
        statement.query_row(params![client], row_to_record).optional().map_err(self.error("looking up a client"))
    }

    pub fn list(&self) -> Result<Vec<Record>, RecordStoreError> {
        let conn = Self::lock(&self.reader);
        let mut statement = conn
            .prepare("SELECT client, hash, passphrase, created, updated, last_check, last_result FROM records ORDER BY client")
            .map_err(self.error("preparing the list"))?;
        let rows = statement.query_map([], row_to_record).map_err(self.error("listing records"))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(self.error("reading a record"))
    }

    /// Stores a first record for `client` unless one exists.
    pub fn insert(&self, client: &str, hash: &str, passphrase_hash: &str) -> Result<Written, RecordStoreError> {
        let now = crate::store::now();
        let conn = Self::lock(&self.writer);
        let n = conn
            .execute(
                "INSERT INTO records (client, hash, passphrase, created, updated) VALUES (?1, ?2, ?3, ?4, ?4)
                 ON CONFLICT (client) DO NOTHING",
                params![client, hash, passphrase_hash, now],
            )
            .map_err(self.error("inserting a record"))?;
        Ok(if n == 1 { Written::Done } else { Written::Exists })
    }

    /// Sets the hash if the stored passphrase hash is still `checked`.
    pub fn update_hash(&self, client: &str, checked: &str, hash: &str) -> Result<Written, RecordStoreError> {
        let now = crate::store::now();
        let conn = Self::lock(&self.writer);
        let n = conn
            .execute(
                "UPDATE records SET hash = ?3, updated = ?4 WHERE client = ?1 AND passphrase = ?2",
                params![client, checked, hash, now],
            )
            .map_err(self.error("updating a hash"))?;
        self.outcome(&conn, client, n)
    }

    /// Sets the passphrase hash if it is still `checked`.
    pub fn update_passphrase(&self, client: &str, checked: &str, new_hash: &str) -> Result<Written, RecordStoreError> {
        let now = crate::store::now();
        let conn = Self::lock(&self.writer);
        let n = conn
            .execute(
                "UPDATE records SET passphrase = ?3, updated = ?4 WHERE client = ?1 AND passphrase = ?2",
                params![client, checked, new_hash, now],
            )
            .map_err(self.error("changing a passphrase"))?;
        self.outcome(&conn, client, n)
    }

    /// Deletes the record if its passphrase hash is still `checked`.
    pub fn delete_checked(&self, client: &str, checked: &str) -> Result<Written, RecordStoreError> {
        let conn = Self::lock(&self.writer);
        let n = conn
            .execute("DELETE FROM records WHERE client = ?1 AND passphrase = ?2", params![client, checked])
            .map_err(self.error("deleting a record"))?;
        self.outcome(&conn, client, n)
    }

    fn outcome(&self, conn: &Connection, client: &str, changed: usize) -> Result<Written, RecordStoreError> {
        if changed == 1 {
            return Ok(Written::Done);
        }
        let exists: Option<i64> = conn
            .query_row("SELECT 1 FROM records WHERE client = ?1", params![client], |row| row.get(0))
            .optional()
            .map_err(self.error("looking up a client"))?;
        Ok(if exists.is_some() { Written::Changed } else { Written::Missing })
    }

    /// Administration: removes a record whatever its passphrase. Whether one existed.
    pub fn delete(&self, client: &str) -> Result<bool, RecordStoreError> {
        let conn = Self::lock(&self.writer);
        let n = conn
            .execute("DELETE FROM records WHERE client = ?1", params![client])
            .map_err(self.error("deleting a record"))?;
        Ok(n == 1)
    }

    /// Administration: replaces a record's passphrase hash. Whether the record exists.
    pub fn reset_passphrase(&self, client: &str, new_hash: &str) -> Result<bool, RecordStoreError> {
        let now = crate::store::now();
        let conn = Self::lock(&self.writer);
        let n = conn
            .execute(
                "UPDATE records SET passphrase = ?2, updated = ?3 WHERE client = ?1",
                params![client, new_hash, now],
            )
            .map_err(self.error("resetting a passphrase"))?;
        Ok(n == 1)
    }

    /// Records the last CHECK of several clients in one transaction: `(client, time, result)`.
    pub fn record_checks(&self, checks: &[(String, String, &'static str)]) -> Result<(), RecordStoreError> {
        let mut conn = Self::lock(&self.writer);
        let tx = conn.transaction().map_err(self.error("starting a transaction"))?;
        {
            let mut statement = tx
                .prepare_cached("UPDATE records SET last_check = ?2, last_result = ?3 WHERE client = ?1")
                .map_err(self.error("preparing a CHECK record"))?;
            for (client, time, result) in checks {
                statement.execute(params![client, time, result]).map_err(self.error("recording a CHECK"))?;
            }
        }
        tx.commit().map_err(self.error("committing CHECK records"))
    }
}

fn row_to_record(row: &rusqlite::Row<'_>) -> rusqlite::Result<Record> {
    Ok(Record {
        client: row.get(0)?,
        hash: row.get(1)?,
        passphrase: row.get(2)?,
        created: row.get(3)?,
        updated: row.get(4)?,
        last_check: row.get(5)?,
        last_result: row.get(6)?,
    })
}

fn migrate(conn: &mut Connection, path: &Path) -> Result<(), RecordStoreError> {
    let query = |what| move |source| RecordStoreError::Query { path: path.into(), what, source };
    let version: i64 =
        conn.pragma_query_value(None, "user_version", |row| row.get(0)).map_err(query("reading the schema version"))?;
    let version = usize::try_from(version).unwrap_or(usize::MAX);
    if version > MIGRATIONS.len() {
        return Err(RecordStoreError::TooNew { path: path.into(), found: version, known: MIGRATIONS.len() });
    }
    for (from, migration) in MIGRATIONS.iter().enumerate().skip(version) {
        let tx = conn.transaction().map_err(query("starting a migration"))?;
        tx.execute_batch(migration).map_err(query("migrating the schema"))?;
        tx.pragma_update(None, "user_version", from as i64 + 1).map_err(query("setting the schema version"))?;
        tx.commit().map_err(query("committing a migration"))?;
    }
    Ok(())
}

/// argon2id with the crate's default cost (19 MiB, 2 passes): the PHC string to store.
pub fn hash_passphrase(passphrase: &str) -> Result<String, RecordStoreError> {
    let salt = SaltString::generate(&mut password_hash::rand_core::OsRng);
    argon2::Argon2::default()
        .hash_password(passphrase.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| RecordStoreError::Hash(e.to_string()))
}

/// Whether `passphrase` matches the stored PHC string (argon2 compares in constant time).
/// A stored value that does not parse matches nothing.
pub fn verify_passphrase(passphrase: &str, stored: &str) -> bool {
    match PasswordHash::new(stored) {
        Ok(parsed) => argon2::Argon2::default().verify_password(passphrase.as_bytes(), &parsed).is_ok(),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditional_writes_follow_the_checked_passphrase() {
        let dir = tempfile::tempdir().unwrap();
        let store = RecordStore::open(&dir.path().join("records.db")).unwrap();
        let first = hash_passphrase("one").unwrap();
        assert_eq!(store.insert("10.0.0.1", "aa", &first).unwrap(), Written::Done);
        assert_eq!(store.insert("10.0.0.1", "bb", &first).unwrap(), Written::Exists);
        assert_eq!(store.update_hash("10.0.0.1", &first, "cc").unwrap(), Written::Done);
        let second = hash_passphrase("two").unwrap();
        assert_eq!(store.update_passphrase("10.0.0.1", &first, &second).unwrap(), Written::Done);
        // A write checked against the old passphrase hash no longer applies.
        assert_eq!(store.update_hash("10.0.0.1", &first, "dd").unwrap(), Written::Changed);
        assert_eq!(store.update_hash("10.0.0.9", &first, "dd").unwrap(), Written::Missing);
        let record = store.get("10.0.0.1").unwrap().unwrap();
        assert_eq!(record.hash, "cc");
        assert!(verify_passphrase("two", &record.passphrase));
        assert!(!verify_passphrase("one", &record.passphrase));
        assert!(!record.passphrase.contains("two"));
        assert_eq!(store.delete_checked("10.0.0.1", &second).unwrap(), Written::Done);
        assert_eq!(store.get("10.0.0.1").unwrap(), None);
    }

    #[test]
    fn records_survive_reopening_and_checks_are_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("records.db");
        {
            let store = RecordStore::open(&path).unwrap();
            store.insert("a", "h", &hash_passphrase("p").unwrap()).unwrap();
            store.record_checks(&[("a".into(), "2026-01-01T00:00:00Z".into(), "ok")]).unwrap();
        }
        let store = RecordStore::open(&path).unwrap();
        let record = store.get("a").unwrap().unwrap();
        assert_eq!(record.last_result.as_deref(), Some("ok"));
        assert_eq!(store.list().unwrap().len(), 1);
        assert!(store.reset_passphrase("a", &hash_passphrase("q").unwrap()).unwrap());
        assert!(store.delete("a").unwrap());
        assert!(!store.delete("a").unwrap());
    }

    #[test]
    fn a_new_database_is_private_to_its_owner() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("records.db");
        RecordStore::open(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let missing_dir = dir.path().join("absent/records.db");
        let error = RecordStore::open(&missing_dir).err().unwrap().to_string();
        assert!(error.contains("absent/records.db"), "{error}");
    }

    #[test]
    fn newer_schema_is_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("records.db");
        Connection::open(&path).unwrap().pragma_update(None, "user_version", 99).unwrap();
        let error = RecordStore::open(&path).err().unwrap().to_string();
        assert!(error.contains("records.db") && error.contains("99"), "{error}");
    }

    #[test]
    fn a_corrupt_stored_hash_matches_nothing() {
        assert!(!verify_passphrase("p", "not a phc string"));
    }
}
