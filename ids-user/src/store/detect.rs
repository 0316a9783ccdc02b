//! The detectors' tables: log offsets and detection alerts.
use rusqlite::{OptionalExtension as _, params};

use super::{Store, StoreError};

/// Where a followed log was left: the file, the offset after its last complete line, and the
/// digest of its first `head_len` bytes (a different digest means the file was replaced or
/// truncated and rewritten).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogOffset {
    pub dev: u64,
    pub ino: u64,
    pub offset: u64,
    pub head_len: u64,
    pub head_hash: String,
}

impl Store {
    pub fn log_offset(&self, path: &str) -> Result<Option<LogOffset>, StoreError> {
        self.conn
            .query_row("SELECT dev, ino, offset, head_len, head_hash FROM log_offsets WHERE path = ?1", [path], |row| {
                Ok(LogOffset {
                    dev: row.get::<_, i64>(0)? as u64,
                    ino: row.get::<_, i64>(1)? as u64,
                    offset: row.get::<_, i64>(2)? as u64,
                    head_len: row.get::<_, i64>(3)? as u64,
                    head_hash: row.get(4)?,
                })
            })
            .optional()
            .map_err(|source| self.query_error("reading a log offset", source))
    }

    pub fn set_log_offset(&self, path: &str, at: &LogOffset) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT OR REPLACE INTO log_offsets (path, dev, ino, offset, head_len, head_hash)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![path, at.dev as i64, at.ino as i64, at.offset as i64, at.head_len as i64, at.head_hash],
            )
            .map(drop)
            .map_err(|source| self.query_error("storing a log offset", source))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_persist() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ids.db");
        let store = Store::open(&path).unwrap();
        assert_eq!(store.log_offset("/var/log/auth.log").unwrap(), None);
        let at = LogOffset { dev: 2049, ino: 77, offset: 1234, head_len: 256, head_hash: "ab".into() };
        store.set_log_offset("/var/log/auth.log", &at).unwrap();
        drop(store);
        let store = Store::open(&path).unwrap();
        assert_eq!(store.log_offset("/var/log/auth.log").unwrap(), Some(at));
    }
}
