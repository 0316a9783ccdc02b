//! Checking the database for damage, and recovering what can be read from a damaged one.
//!
//! The daemon runs `PRAGMA quick_check` before it opens `ids.db` and refuses to start on damage
//! ([`check_at_start`]); `ids db check` runs the full `integrity_check`; `ids db recover`
//! ([`recover`]) copies every row it can read into a new database, keeps the damaged file beside
//! it, and puts the new one in its place.
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags, params_from_iter, types::Value};

use super::{Store, StoreError};

/// The tables `recover` copies, with whether their rows have an integer `id` (the rowid), which
/// lets the copy step over an unreadable stretch instead of stopping at it.
const TABLES: &[(&str, bool)] = &[
    ("current_items", false),
    ("baseline_items", false),
    ("alerts", true),
    ("bans", true),
    ("offenders", false),
    ("log_offsets", false),
];

/// Problems listed at most, by a check.
const MAX_PROBLEMS: usize = 20;

/// Which check to run: `quick_check` (O(pages), at every start) or `integrity_check` (also
/// compares every index with its table).
#[derive(Debug, Clone, Copy)]
pub enum Check {
    Quick,
    Full,
}

/// The problems the check finds in the database at `path`; empty when it is sound.
pub fn check(path: &Path, which: Check) -> Result<Vec<String>, StoreError> {
    let error = |source| StoreError::Query { path: path.into(), what: "checking the database", source };
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|source| StoreError::Open { path: path.into(), source })?;
    let pragma = match which {
        Check::Quick => "quick_check",
        Check::Full => "integrity_check",
    };
    let mut statement = conn.prepare(&format!("PRAGMA {pragma}({MAX_PROBLEMS})")).map_err(error)?;
    let rows = statement.query_map([], |row| row.get::<_, String>(0)).map_err(error)?;
    let mut problems = Vec::new();
    for row in rows {
        // A page too damaged to read at all stops the check: that is damage too.
        match row {
            Ok(text) if text == "ok" => {}
            Ok(text) => problems.push(text),
            Err(e) => problems.push(e.to_string()),
        }
    }
    Ok(problems)
}

/// Refuses a damaged database before the daemon opens it (a missing one is created later).
pub fn check_at_start(path: &Path) -> Result<(), StoreError> {
    if !path.exists() {
        return Ok(());
    }
    let problems = match check(path, Check::Quick) {
        Ok(problems) => problems,
        Err(e) => vec![e.to_string()],
    };
    if problems.is_empty() {
        return Ok(());
    }
    Err(StoreError::Damaged { path: path.into(), problems: problems.join("; ") })
}

/// What `recover` copied from one table.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TableRecovery {
    pub table: &'static str,
    pub copied: u64,
    /// Why the copy of this table stopped or skipped rows; `None`: every row was read.
    pub error: Option<String>,
}

/// What `recover` did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Recovery {
    pub tables: Vec<TableRecovery>,
    /// Where the damaged file now is.
    pub damaged: PathBuf,
}

/// Copies every readable row of the database at `path` into a new database of the current
/// schema, renames the damaged file (and its `-wal`, `-shm`) to `<name>.damaged-<unix time>`,
/// and puts the new one at `path`. The daemon must not be running.
pub fn recover(path: &Path) -> Result<Recovery, StoreError> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "ids.db".into());
    let beside = |suffix: String| path.with_file_name(format!("{name}{suffix}"));
    let fresh_path = beside(format!(".recovering-{}", std::process::id()));
    remove_with_journals(&fresh_path);
    let tables = {
        let old = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|source| StoreError::Open { path: path.into(), source })?;
        let mut fresh = Store::open(&fresh_path)?;
        let tx = fresh.conn.transaction().map_err(|source| StoreError::Query {
            path: fresh_path.clone(),
            what: "starting the copy",
            source,
        })?;
        let tables: Vec<TableRecovery> =
            TABLES.iter().map(|&(table, has_id)| copy_table(&old, &tx, table, has_id)).collect();
        tx.commit().map_err(|source| StoreError::Query {
            path: fresh_path.clone(),
            what: "committing the copy",
            source,
        })?;
        tables
        // Both connections close here; the new database's journal is folded into its file.
    };
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let damaged = beside(format!(".damaged-{stamp}"));
    let rename = |from: &Path, to: &Path| {
        std::fs::rename(from, to).map_err(|e| StoreError::Recover {
            path: path.into(),
            message: format!("renaming {} to {}: {e}", from.display(), to.display()),
        })
    };
    rename(path, &damaged)?;
    // The journal files belong to the damaged file: left behind, the new database would read them.
    for suffix in ["-wal", "-shm"] {
        let journal = beside(suffix.to_string());
        if journal.exists() {
            rename(&journal, &PathBuf::from(format!("{}{suffix}", damaged.display())))?;
        }
    }
    rename(&fresh_path, path)?;
    Ok(Recovery { tables, damaged })
}

fn remove_with_journals(path: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}

/// Copies the rows of `table` that can be read. A read that fails ends the copy of a table
/// without ids; with ids, the copy goes on after the unreadable stretch (found by stepping past
/// it with growing strides).
fn copy_table(old: &Connection, fresh: &rusqlite::Transaction<'_>, table: &'static str, has_id: bool) -> TableRecovery {
    let mut report = TableRecovery { table, copied: 0, error: None };
    let columns = match column_names(fresh, table) {
        Ok(columns) => columns,
        Err(e) => {
            report.error = Some(format!("reading the new table's columns: {e}"));
            return report;
        }
    };
    let list = columns.join(", ");
    let placeholders = vec!["?"; columns.len()].join(", ");
    let mut insert = match fresh.prepare(&format!("INSERT OR IGNORE INTO {table} ({list}) VALUES ({placeholders})")) {
        Ok(insert) => insert,
        Err(e) => {
            report.error = Some(e.to_string());
            return report;
        }
    };
    let select = if has_id {
        format!("SELECT {list} FROM {table} WHERE id > ?1 ORDER BY id")
    } else {
        format!("SELECT {list} FROM {table}")
    };
    let id_column = columns.iter().position(|c| c == "id");
    // Row ids start at 1 (INTEGER PRIMARY KEY, AUTOINCREMENT).
    let mut after: i64 = 0;
    let mut stride: i64 = 1;
    let mut errors = Vec::new();
    loop {
        let outcome = (|| -> rusqlite::Result<()> {
            let mut statement = old.prepare(&select)?;
            let mut rows = if has_id { statement.query([after])? } else { statement.query([])? };
            while let Some(row) = rows.next()? {
                let values: Vec<Value> = (0..columns.len()).map(|i| row.get(i)).collect::<Result<_, _>>()?;
                if let Some(Value::Integer(id)) = id_column.map(|i| &values[i]) {
                    after = *id;
                    stride = 1;
                }
                insert.execute(params_from_iter(values.iter()))?;
                report.copied += 1;
            }
            Ok(())
        })();
        match outcome {
            Ok(()) => break,
            Err(e) => {
                if errors.len() < 3 {
                    errors.push(e.to_string());
                }
                // Without ids there is no place to resume from; with them, step past the damage,
                // but not for ever (ids are below 2^62 in practice: 64 growing strides reach it).
                if !has_id || stride > i64::MAX / 4 {
                    break;
                }
                after = after.saturating_add(stride);
                stride = stride.saturating_mul(2);
            }
        }
    }
    if !errors.is_empty() {
        report.error = Some(errors.join("; "));
    }
    report
}

fn column_names(conn: &Connection, table: &str) -> rusqlite::Result<Vec<String>> {
    let mut statement = conn.prepare(&format!("PRAGMA table_info({table})"))?;
    statement.query_map([], |row| row.get::<_, String>(1))?.collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::AlertRow;

    #[test]
    fn a_damaged_page_is_found_and_recover_keeps_the_readable_rows_and_the_damaged_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ids.db");
        let rows: Vec<AlertRow> = (0..5000)
            .map(|i| AlertRow {
                time: format!("2026-12-04T00:00:{:02}Z", i % 60),
                kind: "integrity".into(),
                item_id: format!("file:/etc/file-{i:05}"),
                collector: "files".into(),
                what: serde_json::json!({"change": "changed", "padding": "x".repeat(100)}),
            })
            .collect();
        Store::open(&path).unwrap().apply(&[], &rows).unwrap();
        assert!(check(&path, Check::Quick).unwrap().is_empty());
        let pages = std::fs::metadata(&path).unwrap().len() / 4096;
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&file, &[0xA5; 8 * 4096], (pages / 2) * 4096).unwrap();
        drop(file);

        let error = check_at_start(&path).unwrap_err().to_string();
        assert!(error.contains(&path.display().to_string()) && error.contains("ids db recover"), "{error}");
        assert!(!check(&path, Check::Full).unwrap().is_empty());

        let recovery = recover(&path).unwrap();
        assert!(recovery.damaged.exists());
        assert!(check(&path, Check::Full).unwrap().is_empty());
        let alerts = recovery.tables.iter().find(|t| t.table == "alerts").unwrap();
        let kept = Store::open(&path).unwrap().alerts().unwrap().len();
        assert_eq!(kept as u64, alerts.copied);
        // The rows on the damaged pages are lost, the ones past them are not.
        assert!(kept > 2500 && kept < 5000, "{kept} alerts recovered: {alerts:?}");
        assert!(alerts.error.is_some());
        check_at_start(&path).unwrap();
    }
}
