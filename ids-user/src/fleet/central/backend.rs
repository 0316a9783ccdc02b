//! The two databases behind [`super::CentralStore`]: one small execute/query layer, so that every
//! query of the central store is written once. Statements are written with SQLite's numbered
//! parameters (`?1`); for PostgreSQL they become `$1`. Integers are 64-bit on both sides
//! (`INTEGER` / `BIGINT`), text is text, and a NULL parameter carries its type because
//! PostgreSQL checks parameter types.
use std::collections::HashMap;
use std::path::Path;

use super::CentralError;

/// A statement parameter.
#[derive(Debug, Clone)]
pub(super) enum Value {
    Int(Option<i64>),
    Text(Option<String>),
    Bool(bool),
}

impl From<i64> for Value {
    fn from(value: i64) -> Self {
        Value::Int(Some(value))
    }
}
impl From<Option<i64>> for Value {
    fn from(value: Option<i64>) -> Self {
        Value::Int(value)
    }
}
impl From<&str> for Value {
    fn from(value: &str) -> Self {
        Value::Text(Some(value.to_string()))
    }
}
impl From<String> for Value {
    fn from(value: String) -> Self {
        Value::Text(Some(value))
    }
}
impl From<Option<String>> for Value {
    fn from(value: Option<String>) -> Self {
        Value::Text(value)
    }
}
impl From<Option<&str>> for Value {
    fn from(value: Option<&str>) -> Self {
        Value::Text(value.map(str::to_string))
    }
}
impl From<bool> for Value {
    fn from(value: bool) -> Self {
        Value::Bool(value)
    }
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        match self {
            Value::Int(value) => value.to_sql(),
            Value::Text(value) => value.to_sql(),
            Value::Bool(value) => value.to_sql(),
        }
    }
}

/// One value read from a row.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Cell {
    Null,
    Int(i64),
    Text(String),
}

/// One row read, with typed accessors whose errors name the column.
#[derive(Debug, Clone)]
pub(super) struct Row(Vec<Cell>);

impl Row {
    fn cell(&self, index: usize) -> Result<&Cell, String> {
        self.0.get(index).ok_or_else(|| format!("column {index} missing"))
    }

    pub(super) fn int(&self, index: usize) -> Result<i64, String> {
        match self.cell(index)? {
            Cell::Int(value) => Ok(*value),
            other => Err(format!("column {index}: expected an integer, found {other:?}")),
        }
    }

    pub(super) fn opt_int(&self, index: usize) -> Result<Option<i64>, String> {
        match self.cell(index)? {
            Cell::Null => Ok(None),
            _ => self.int(index).map(Some),
        }
    }

    pub(super) fn text(&self, index: usize) -> Result<String, String> {
        match self.cell(index)? {
            Cell::Text(value) => Ok(value.clone()),
            other => Err(format!("column {index}: expected text, found {other:?}")),
        }
    }

    pub(super) fn opt_text(&self, index: usize) -> Result<Option<String>, String> {
        match self.cell(index)? {
            Cell::Null => Ok(None),
            _ => self.text(index).map(Some),
        }
    }
}

pub(super) enum Db {
    Sqlite(rusqlite::Connection),
    Postgres {
        client: Box<postgres::Client>,
        /// Prepared once per connection: the collector runs the same few statements all day.
        prepared: HashMap<String, postgres::Statement>,
    },
}

/// How long a SQLite writer waits for another (`ids fleet ban` beside the collector).
const SQLITE_BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

impl Db {
    pub(super) fn open_sqlite(path: &Path) -> Result<Self, String> {
        let conn = rusqlite::Connection::open(path).map_err(|e| e.to_string())?;
        // WAL: `ids fleet ...` reads while the collector writes. FULL sync: the collector acks a
        // message to the broker once its transaction committed, so a commit must survive a
        // power cut, not only a crash of the process.
        conn.pragma_update(None, "journal_mode", "WAL").map_err(|e| format!("setting WAL mode: {e}"))?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(|e| format!("setting synchronous: {e}"))?;
        conn.busy_timeout(SQLITE_BUSY_TIMEOUT).map_err(|e| format!("setting busy timeout: {e}"))?;
        Ok(Db::Sqlite(conn))
    }

    pub(super) fn open_postgres(url: &str) -> Result<Self, String> {
        let client = postgres::Client::connect(url, postgres::NoTls).map_err(|e| e.to_string())?;
        Ok(Db::Postgres { client: Box::new(client), prepared: HashMap::new() })
    }

    /// Whether the connection is gone for good (PostgreSQL server restarted or unreachable):
    /// the store must be opened again.
    pub(super) fn is_closed(&self) -> bool {
        match self {
            Db::Sqlite(_) => false,
            Db::Postgres { client, .. } => client.is_closed(),
        }
    }

    pub(super) fn is_postgres(&self) -> bool {
        matches!(self, Db::Postgres { .. })
    }

    /// Runs statements without parameters (schema, transaction control).
    pub(super) fn batch(&mut self, sql: &str) -> Result<(), String> {
        match self {
            Db::Sqlite(conn) => conn.execute_batch(sql).map_err(|e| e.to_string()),
            Db::Postgres { client, .. } => client.batch_execute(sql).map_err(|e| e.to_string()),
        }
    }

    /// Starts a write transaction. SQLite takes the write lock now (IMMEDIATE), so that a reader
    /// turned writer never meets another writer half-way and fails with "busy".
    pub(super) fn begin(&mut self) -> Result<(), String> {
        self.batch(if self.is_postgres() { "BEGIN" } else { "BEGIN IMMEDIATE" })
    }

    pub(super) fn commit(&mut self) -> Result<(), String> {
        self.batch("COMMIT")
    }

    /// Rolls back after a failure; its own failure is of no further use (the connection is
    /// either already out of the transaction or broken).
    pub(super) fn rollback(&mut self) {
        let _ = self.batch("ROLLBACK");
    }

    /// Executes one statement; returns the number of rows it changed.
    pub(super) fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64, String> {
        match self {
            Db::Sqlite(conn) => {
                let mut statement = conn.prepare_cached(sql).map_err(|e| e.to_string())?;
                let changed =
                    statement.execute(rusqlite::params_from_iter(params.iter())).map_err(|e| e.to_string())?;
                Ok(changed as u64)
            }
            Db::Postgres { client, prepared } => {
                let statement = prepare_postgres(client, prepared, sql)?;
                client.execute(&statement, &postgres_params(params)).map_err(|e| e.to_string())
            }
        }
    }

    /// Runs one query; returns every row.
    pub(super) fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>, String> {
        match self {
            Db::Sqlite(conn) => {
                let mut statement = conn.prepare_cached(sql).map_err(|e| e.to_string())?;
                let columns = statement.column_count();
                let mut rows = statement.query(rusqlite::params_from_iter(params.iter())).map_err(|e| e.to_string())?;
                let mut out = Vec::new();
                while let Some(row) = rows.next().map_err(|e| e.to_string())? {
                    let mut cells = Vec::with_capacity(columns);
                    for index in 0..columns {
                        use rusqlite::types::ValueRef;
                        cells.push(match row.get_ref(index).map_err(|e| e.to_string())? {
                            ValueRef::Null => Cell::Null,
                            ValueRef::Integer(value) => Cell::Int(value),
                            ValueRef::Real(value) => Cell::Int(value as i64),
                            ValueRef::Text(bytes) | ValueRef::Blob(bytes) => {
                                Cell::Text(String::from_utf8_lossy(bytes).into_owned())
                            }
                        });
                    }
                    out.push(Row(cells));
                }
                Ok(out)
            }
            Db::Postgres { client, prepared } => {
                let statement = prepare_postgres(client, prepared, sql)?;
                let rows = client.query(&statement, &postgres_params(params)).map_err(|e| e.to_string())?;
                rows.iter().map(postgres_row).collect()
            }
        }
    }
}

fn prepare_postgres(
    client: &mut postgres::Client,
    prepared: &mut HashMap<String, postgres::Statement>,
    sql: &str,
) -> Result<postgres::Statement, String> {
    if let Some(statement) = prepared.get(sql) {
        return Ok(statement.clone());
    }
    let statement = client.prepare(&to_postgres_placeholders(sql)).map_err(|e| e.to_string())?;
    // Queries built from filters (`ids fleet alerts`) vary; keep the cache from growing without end.
    if prepared.len() >= 256 {
        prepared.clear();
    }
    prepared.insert(sql.to_string(), statement.clone());
    Ok(statement)
}

fn postgres_params(params: &[Value]) -> Vec<&(dyn postgres::types::ToSql + Sync)> {
    params
        .iter()
        .map(|value| -> &(dyn postgres::types::ToSql + Sync) {
            match value {
                Value::Int(value) => value,
                Value::Text(value) => value,
                Value::Bool(value) => value,
            }
        })
        .collect()
}

fn postgres_row(row: &postgres::Row) -> Result<Row, String> {
    use postgres::types::Type;
    let mut cells = Vec::with_capacity(row.len());
    for (index, column) in row.columns().iter().enumerate() {
        let error = |e: postgres::Error| format!("column {}: {e}", column.name());
        let cell = match *column.type_() {
            Type::INT8 => row.try_get::<_, Option<i64>>(index).map_err(error)?.map(Cell::Int),
            Type::INT4 => row.try_get::<_, Option<i32>>(index).map_err(error)?.map(|v| Cell::Int(v.into())),
            Type::INT2 => row.try_get::<_, Option<i16>>(index).map_err(error)?.map(|v| Cell::Int(v.into())),
            Type::BOOL => row.try_get::<_, Option<bool>>(index).map_err(error)?.map(|v| Cell::Int(v.into())),
            Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => {
                row.try_get::<_, Option<String>>(index).map_err(error)?.map(Cell::Text)
            }
            ref other => return Err(format!("column {}: unexpected type {other}", column.name())),
        };
        cells.push(cell.unwrap_or(Cell::Null));
    }
    Ok(Row(cells))
}

/// `?1` → `$1` outside string literals (the statements here quote text with `'`).
pub(super) fn to_postgres_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut in_literal = false;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_literal = !in_literal;
                out.push(c);
            }
            '?' if !in_literal && chars.peek().is_some_and(char::is_ascii_digit) => out.push('$'),
            _ => out.push(c),
        }
    }
    out
}

/// The database as errors name it: the SQLite path, or the PostgreSQL URL without its password.
pub(super) fn describe_postgres_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    let (authority, tail) = match rest.find('/') {
        Some(slash) => rest.split_at(slash),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{scheme}://{user}@{host}{tail}")
        }
        None => url.to_string(),
    }
}

impl CentralError {
    pub(super) fn query(database: &str, what: &'static str) -> impl Fn(String) -> CentralError + use<> {
        let database = database.to_string();
        move |message| CentralError::Query { database: database.clone(), what, message }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_renumbered_outside_literals_only() {
        assert_eq!(
            to_postgres_placeholders("SELECT ?1, '?2', ?12 WHERE a = 'x'"),
            "SELECT $1, '?2', $12 WHERE a = 'x'"
        );
    }

    #[test]
    fn a_postgres_password_never_shows() {
        assert_eq!(describe_postgres_url("postgres://ids:secret@db:5432/fleet"), "postgres://ids@db:5432/fleet");
        assert_eq!(describe_postgres_url("postgres://db/fleet"), "postgres://db/fleet");
    }
}
