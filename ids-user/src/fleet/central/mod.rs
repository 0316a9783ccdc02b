//! The collector's database ([`CentralStore`]): every host's alerts, the hosts and their
//! heartbeats, the gaps hosts reported, and the fleet's ban decisions. One API over SQLite (one
//! file, WAL) and PostgreSQL (several collectors on one queue share it); the schema is in
//! [`schema`], the same on both.
//!
//! Every time is RFC 3339 UTC with microseconds (`crate::store::now`), so that comparing the
//! text compares the instants. `received`, `last_seen` and `last_heartbeat` are the collector's
//! clock; `time` in `alerts` and `gaps` is the host's.
//!
//! `fleet_bans` is a log of decisions (ban and unban), numbered by `rev`; a net is banned while
//! its newest decision is a ban that has not expired. It is also the outbox: a decision is
//! recorded first and published from the table (`published`), so a decision made while the
//! broker is away goes out when it is back.
mod backend;
mod console;
mod schema;

pub use self::console::{HostActivity, TimelineBucket};

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use self::backend::{Db, Row, Value};
use super::config::CentralDatabase;
use super::message::{BanAction, BanDecision, BanSnapshot, Inbound, VERSION};
use crate::bans::BanNet;

/// Errors of the central database, naming it (a PostgreSQL URL without its password).
#[derive(Debug, thiserror::Error)]
pub enum CentralError {
    #[error("opening central database {database}: {message}")]
    Open { database: String, message: String },
    #[error("central database {database}: migrating from schema version {from}: {message}")]
    Migrate { database: String, from: usize, message: String },
    #[error("central database {database} has schema version {found}, newer than this program's {known}")]
    TooNew { database: String, found: usize, known: usize },
    #[error("central database {database}: {what}: {message}")]
    Query { database: String, what: &'static str, message: String },
}

/// A message as the collector received it, with the collector's time of receipt.
#[derive(Debug, Clone)]
pub struct Received {
    pub inbound: Inbound,
    /// RFC 3339 (collector's clock).
    pub received: String,
}

/// What one [`CentralStore::store_batch`] did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BatchOutcome {
    /// Alerts stored for the first time.
    pub alerts_stored: usize,
    /// Alerts and gaps already stored (redelivered or republished): not stored again.
    pub duplicates: usize,
    pub gaps_stored: usize,
    pub heartbeats: usize,
    /// Hosts that were silent and sent a heartbeat: each has its `host_back` alert stored.
    pub hosts_back: Vec<String>,
    /// The attackers named by the alerts stored for the first time (distinct, canonical): what
    /// the fleet rule looks at.
    pub attackers: Vec<String>,
}

/// A host as `ids fleet hosts` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct HostRecord {
    pub host: String,
    pub hostname: String,
    pub first_seen: String,
    pub last_seen: String,
    pub last_heartbeat: Option<String>,
    pub heartbeat_interval_s: Option<i64>,
    pub epoch: Option<i64>,
    /// `ok` or `silent`.
    pub status: String,
    /// The newest sequence number received of the host's current epoch.
    pub last_seq: i64,
    /// How many sequence numbers the host reported lost (gap records).
    pub gaps: i64,
    /// Alerts the host held unsent at its last heartbeat.
    pub backlog: i64,
    pub aggregate: Option<String>,
}

/// A stored alert.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlertRecord {
    /// The row id: increases with every stored alert (`--follow` reads past it).
    #[serde(skip)]
    pub id: i64,
    pub host: String,
    pub hostname: String,
    pub epoch: i64,
    pub seq: i64,
    pub time: String,
    pub kind: String,
    /// `low`, `medium`, `high` or `critical` ([`severity_of`]).
    pub severity: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    pub alert: serde_json::Value,
}

/// Which alerts [`CentralStore::alerts`] returns.
#[derive(Debug, Clone, Default)]
pub struct AlertFilter {
    pub host: Option<String>,
    pub kind: Option<String>,
    pub severity: Option<String>,
    pub rule: Option<String>,
    /// RFC 3339: alerts raised at or after this.
    pub since: Option<String>,
    /// RFC 3339: alerts raised before this.
    pub until: Option<String>,
    /// The newest `limit` (returned oldest first); with `after_id`, the first `limit` after it.
    pub limit: usize,
    pub after_id: Option<i64>,
    /// Only alerts older than this id (the console's next page).
    pub before_id: Option<i64>,
}

impl AlertFilter {
    /// The SQL conditions (`WHERE ...`, or nothing) and their parameters.
    fn where_clause(&self) -> (String, Vec<Value>) {
        let mut conditions = Vec::new();
        let mut params: Vec<Value> = Vec::new();
        let mut condition = |sql: &str, value: Value| {
            params.push(value);
            conditions.push(sql.replace('#', &format!("?{}", params.len())));
        };
        let text = |value: &Option<String>| value.as_deref().map(Value::from);
        if let Some(host) = text(&self.host) {
            condition("host = #", host);
        }
        if let Some(kind) = text(&self.kind) {
            condition("kind = #", kind);
        }
        if let Some(severity) = text(&self.severity) {
            condition("severity = #", severity);
        }
        if let Some(rule) = text(&self.rule) {
            condition("rule = #", rule);
        }
        if let Some(since) = text(&self.since) {
            condition("time >= #", since);
        }
        if let Some(until) = text(&self.until) {
            condition("time < #", until);
        }
        if let Some(after) = self.after_id {
            condition("id > #", after.into());
        }
        if let Some(before) = self.before_id {
            condition("id < #", before.into());
        }
        let clause = if conditions.is_empty() { String::new() } else { format!("WHERE {}", conditions.join(" AND ")) };
        (clause, params)
    }
}

/// A host the silence check found silent (its `host_silent` alert is stored).
#[derive(Debug, Clone, PartialEq)]
pub struct SilentHost {
    pub host: String,
    pub hostname: String,
    pub last_heartbeat: String,
}

/// Central alerts are stored under this epoch (hosts' epochs start at 1).
pub const CENTRAL_EPOCH: i64 = 0;
pub const HOST_SILENT: &str = "host_silent";
pub const HOST_BACK: &str = "host_back";

/// A host is silent after this many of its own heartbeat intervals unless `[collect]
/// silent_after` says otherwise.
const SILENT_AFTER_INTERVALS: u32 = 3;

pub struct CentralStore {
    db: Db,
    /// The database as errors name it.
    name: String,
}

/// RFC 3339 UTC with microseconds: the form every time in the database has.
pub fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_micros(time).to_string()
}

/// The address an alert names as its attacker, canonical, for the fleet rule: a detect alert's
/// `source`, a ban alert's `net` when it is a single address. A ban the host applied because the
/// fleet decided it (`source` `fleet...`) is an echo of a fleet decision, not a new witness.
pub fn attacker_of(kind: &str, alert: &serde_json::Value) -> Option<String> {
    let text = match kind {
        "detect" => alert.get("source")?.as_str()?,
        "ban" => {
            if alert.get("source").and_then(|s| s.as_str()).is_some_and(|s| s.starts_with("fleet")) {
                return None;
            }
            alert.get("net")?.as_str()?
        }
        _ => return None,
    };
    let net = BanNet::parse(text).ok()?;
    net.is_single().then(|| net.to_string())
}

/// How much an alert matters, as the console filters by it: a detector's is its rule's (in the
/// alert), a host kind's its kind's; the collector's own: a silent host is high, its return low.
pub fn severity_of(kind: &str, alert: &serde_json::Value) -> String {
    use crate::alert::{AlertKind, Severity};
    if kind == "detect"
        && let Some(severity) = alert.get("severity").and_then(|s| s.as_str()).and_then(Severity::parse)
    {
        return severity.name().to_string();
    }
    let severity = match kind {
        HOST_SILENT => Severity::High,
        HOST_BACK => Severity::Low,
        other => AlertKind::from_name(other).map_or(Severity::Medium, AlertKind::severity),
    };
    severity.name().to_string()
}

/// The rule a detector's alert names (none for the other kinds).
pub fn rule_of(kind: &str, alert: &serde_json::Value) -> Option<String> {
    (kind == "detect").then(|| alert.get("rule")?.as_str().map(str::to_string)).flatten()
}

impl CentralStore {
    /// Opens (creating it if needed) and migrates the central database.
    pub fn open(database: &CentralDatabase) -> Result<Self, CentralError> {
        let (db, name) = match database {
            CentralDatabase::Sqlite(path) => {
                let name = path.display().to_string();
                let db =
                    Db::open_sqlite(path).map_err(|message| CentralError::Open { database: name.clone(), message })?;
                (db, name)
            }
            CentralDatabase::Postgres(url) => {
                let name = backend::describe_postgres_url(url);
                let db = Db::open_postgres(url).map_err(|message| CentralError::Open {
                    // The driver's message may quote the URL: show it without the password.
                    database: name.clone(),
                    message: message.replace(url.as_str(), &name),
                })?;
                (db, name)
            }
        };
        let mut store = Self { db, name };
        store.migrate()?;
        Ok(store)
    }

    /// A SQLite central database at `path`.
    #[cfg(test)]
    pub fn open_sqlite(path: &std::path::Path) -> Result<Self, CentralError> {
        Self::open(&CentralDatabase::Sqlite(path.into()))
    }

    /// Whether the connection to the database is lost (PostgreSQL): open the store again.
    pub fn connection_lost(&self) -> bool {
        self.db.is_closed()
    }

    /// The database as messages name it.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn schema_version(&mut self) -> Result<usize, String> {
        let rows = if self.db.is_postgres() {
            self.db.batch("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)")?;
            self.db.query("SELECT version FROM schema_version", &[])?
        } else {
            self.db.query("PRAGMA user_version", &[])?
        };
        Ok(rows.first().map(|row| row.int(0)).transpose()?.unwrap_or(0).max(0) as usize)
    }

    fn migrate(&mut self) -> Result<(), CentralError> {
        let known = schema::MIGRATIONS.len();
        loop {
            let found = self.schema_version().map_err(|message| CentralError::Migrate {
                database: self.name.clone(),
                from: 0,
                message,
            })?;
            if found > known {
                return Err(CentralError::TooNew { database: self.name.clone(), found, known });
            }
            if found == known {
                return Ok(());
            }
            let name = self.name.clone();
            let error = |message| CentralError::Migrate { database: name.clone(), from: found, message };
            self.db.begin().map_err(error)?;
            match self.migrate_one(found) {
                Ok(()) => self.db.commit().map_err(error)?,
                Err(message) => {
                    self.db.rollback();
                    return Err(error(message));
                }
            }
        }
    }

    /// Applies migration `from` inside the open transaction, unless another collector did
    /// meanwhile (PostgreSQL: the version is re-read under the lock).
    fn migrate_one(&mut self, from: usize) -> Result<(), String> {
        let migration = &schema::MIGRATIONS[from];
        if self.db.is_postgres() {
            self.db.batch(&format!("SELECT pg_advisory_xact_lock({})", schema::POSTGRES_MIGRATION_LOCK))?;
            let rows = self.db.query("SELECT version FROM schema_version", &[])?;
            let current = rows.first().map(|row| row.int(0)).transpose()?.unwrap_or(0);
            if current as usize != from {
                return Ok(());
            }
            self.db.batch(migration.postgres)?;
            self.db.batch("DELETE FROM schema_version")?;
            self.db.execute("INSERT INTO schema_version (version) VALUES (?1)", &[Value::from(from as i64 + 1)])?;
        } else {
            self.db.batch(migration.sqlite)?;
            self.db.batch(&format!("PRAGMA user_version = {}", from + 1))?;
        }
        Ok(())
    }

    /// Runs `work` in one transaction: committed when it returns `Ok`, rolled back otherwise.
    fn transaction<T>(
        &mut self,
        what: &'static str,
        work: impl FnOnce(&mut Db) -> Result<T, String>,
    ) -> Result<T, CentralError> {
        let error = CentralError::query(&self.name, what);
        self.db.begin().map_err(&error)?;
        match work(&mut self.db) {
            Ok(value) => match self.db.commit() {
                Ok(()) => Ok(value),
                Err(message) => {
                    self.db.rollback();
                    Err(error(message))
                }
            },
            Err(message) => {
                self.db.rollback();
                Err(error(message))
            }
        }
    }

    fn read(&mut self, what: &'static str, sql: &str, params: &[Value]) -> Result<Vec<Row>, CentralError> {
        self.db.query(sql, params).map_err(CentralError::query(&self.name, what))
    }

    /// Stores what agents sent, in one transaction: alerts and gaps once each (a redelivered
    /// one is counted as a duplicate), hosts upserted, heartbeats recorded; a silent host's
    /// heartbeat marks it back and stores its `host_back` alert. Snapshot requests and the
    /// collector's own ban messages are not stored (ignored here).
    pub fn store_batch(&mut self, items: &[Received]) -> Result<BatchOutcome, CentralError> {
        self.transaction("storing a batch", |db| {
            let mut outcome = BatchOutcome::default();
            let mut attackers = BTreeMap::new();
            // The alerts' parameters, ALERT_COLUMNS per alert: inserted many rows per statement,
            // one round trip per chunk rather than per alert (PostgreSQL).
            let mut alert_rows: Vec<Value> = Vec::new();
            // Per host: the hostname, the newest (epoch, seq) and when, applied once per batch.
            let mut seen: BTreeMap<&str, (&str, (i64, i64), &str)> = BTreeMap::new();
            let mut note = |host, hostname, position, received| {
                let entry = seen.entry(host).or_insert((hostname, position, received));
                entry.0 = hostname;
                entry.1 = entry.1.max(position);
                entry.2 = received;
            };
            for item in items {
                let received = item.received.as_str();
                match &item.inbound {
                    Inbound::Alert(alert) => {
                        let attacker = attacker_of(&alert.kind, &alert.alert);
                        alert_rows.extend([
                            alert.host.as_str().into(),
                            alert.hostname.as_str().into(),
                            alert.epoch.into(),
                            alert.seq.into(),
                            alert.time.as_str().into(),
                            alert.kind.as_str().into(),
                            alert.alert.to_string().into(),
                            attacker.into(),
                            received.into(),
                            severity_of(&alert.kind, &alert.alert).into(),
                            rule_of(&alert.kind, &alert.alert).into(),
                        ]);
                        note(alert.host.as_str(), alert.hostname.as_str(), (alert.epoch, alert.seq), received);
                    }
                    Inbound::Gap(gap) => {
                        let inserted = db.execute(
                            "INSERT INTO gaps (host, epoch, from_seq, to_seq, time) VALUES (?1, ?2, ?3, ?4, ?5)
                             ON CONFLICT (host, epoch, from_seq) DO NOTHING",
                            &[
                                gap.host.as_str().into(),
                                gap.epoch.into(),
                                gap.from.into(),
                                gap.to.into(),
                                gap.time.as_str().into(),
                            ],
                        )?;
                        if inserted == 1 {
                            outcome.gaps_stored += 1;
                        } else {
                            outcome.duplicates += 1;
                        }
                        note(gap.host.as_str(), gap.hostname.as_str(), (gap.epoch, gap.to), received);
                    }
                    Inbound::Heartbeat(heartbeat) => {
                        if mark_back_in(db, &heartbeat.host, &heartbeat.hostname, received)? {
                            outcome.hosts_back.push(heartbeat.host.clone());
                        }
                        let record = serde_json::to_string(heartbeat).map_err(|e| e.to_string())?;
                        db.execute(
                            "INSERT INTO hosts (host, hostname, first_seen, last_seen, last_heartbeat,
                                                heartbeat_interval_s, epoch, last_seq, backlog, aggregate, status, heartbeat)
                             VALUES (?1, ?2, ?3, ?3, ?3, ?4, ?5, 0, ?6, ?7, 'ok', ?8)
                             ON CONFLICT (host) DO UPDATE SET
                                 hostname = excluded.hostname,
                                 last_seen = excluded.last_seen,
                                 last_heartbeat = excluded.last_heartbeat,
                                 heartbeat_interval_s = excluded.heartbeat_interval_s,
                                 last_seq = CASE WHEN hosts.epoch IS NULL OR excluded.epoch > hosts.epoch
                                                 THEN 0 ELSE hosts.last_seq END,
                                 epoch = CASE WHEN hosts.epoch IS NULL OR excluded.epoch > hosts.epoch
                                              THEN excluded.epoch ELSE hosts.epoch END,
                                 backlog = excluded.backlog,
                                 aggregate = excluded.aggregate,
                                 heartbeat = excluded.heartbeat",
                            &[
                                heartbeat.host.as_str().into(),
                                heartbeat.hostname.as_str().into(),
                                received.into(),
                                i64::try_from(heartbeat.interval_s).unwrap_or(i64::MAX).into(),
                                heartbeat.epoch.into(),
                                i64::try_from(heartbeat.backlog).unwrap_or(i64::MAX).into(),
                                heartbeat.aggregate.clone().into(),
                                record.into(),
                            ],
                        )?;
                        outcome.heartbeats += 1;
                    }
                    Inbound::SnapshotRequest(_) | Inbound::Ban(_) | Inbound::Snapshot(_) => {}
                }
            }
            for chunk in alert_rows.chunks(ALERT_COLUMNS * ALERTS_PER_STATEMENT) {
                // Only the rows actually inserted come back: the rest were stored before.
                let inserted = db.query(&insert_alerts_sql(chunk.len() / ALERT_COLUMNS), chunk)?;
                outcome.alerts_stored += inserted.len();
                outcome.duplicates += chunk.len() / ALERT_COLUMNS - inserted.len();
                for row in &inserted {
                    if let Some(attacker) = row.opt_text(0)? {
                        attackers.insert(attacker, ());
                    }
                }
            }
            for (host, (hostname, (epoch, seq), received)) in seen {
                // A newer epoch (the host's database was replaced) restarts the sequence.
                db.execute(
                    "INSERT INTO hosts (host, hostname, first_seen, last_seen, epoch, last_seq, status)
                     VALUES (?1, ?2, ?3, ?3, ?4, ?5, 'ok')
                     ON CONFLICT (host) DO UPDATE SET
                         hostname = excluded.hostname,
                         last_seen = excluded.last_seen,
                         last_seq = CASE
                             WHEN hosts.epoch IS NULL OR excluded.epoch > hosts.epoch THEN excluded.last_seq
                             WHEN excluded.epoch = hosts.epoch AND excluded.last_seq > hosts.last_seq THEN excluded.last_seq
                             ELSE hosts.last_seq END,
                         epoch = CASE WHEN hosts.epoch IS NULL OR excluded.epoch > hosts.epoch
                                      THEN excluded.epoch ELSE hosts.epoch END",
                    &[host.into(), hostname.into(), received.into(), epoch.into(), seq.into()],
                )?;
            }
            outcome.attackers = attackers.into_keys().collect();
            Ok(outcome)
        })
    }

    /// Every host, by id.
    pub fn hosts(&mut self) -> Result<Vec<HostRecord>, CentralError> {
        let rows = self.read(
            "reading hosts",
            "SELECT h.host, h.hostname, h.first_seen, h.last_seen, h.last_heartbeat, h.heartbeat_interval_s,
                    h.epoch, h.status, h.last_seq, h.backlog, h.aggregate,
                    CAST(COALESCE((SELECT SUM(g.to_seq - g.from_seq + 1) FROM gaps g WHERE g.host = h.host), 0) AS BIGINT)
             FROM hosts h ORDER BY h.host",
            &[],
        )?;
        rows.iter()
            .map(|row| {
                Ok(HostRecord {
                    host: row.text(0)?,
                    hostname: row.text(1)?,
                    first_seen: row.text(2)?,
                    last_seen: row.text(3)?,
                    last_heartbeat: row.opt_text(4)?,
                    heartbeat_interval_s: row.opt_int(5)?,
                    epoch: row.opt_int(6)?,
                    status: row.text(7)?,
                    last_seq: row.int(8)?,
                    backlog: row.int(9)?,
                    aggregate: row.opt_text(10)?,
                    gaps: row.int(11)?,
                })
            })
            .collect::<Result<_, String>>()
            .map_err(CentralError::query(&self.name, "reading hosts"))
    }

    /// The alerts `filter` selects, oldest first.
    pub fn alerts(&mut self, filter: &AlertFilter) -> Result<Vec<AlertRecord>, CentralError> {
        let (where_clause, mut params) = filter.where_clause();
        let limit = i64::try_from(filter.limit).unwrap_or(i64::MAX);
        params.push(limit.into());
        // Without `after_id`: the newest `limit`; with it: the next `limit` after it.
        let order = if filter.after_id.is_some() { "ASC" } else { "DESC" };
        let sql = format!(
            "SELECT {ALERT_RECORD_COLUMNS} FROM alerts {where_clause} ORDER BY id {order} LIMIT ?{}",
            params.len()
        );
        let rows = self.read("reading alerts", &sql, &params)?;
        let mut alerts = rows
            .iter()
            .map(alert_record)
            .collect::<Result<Vec<_>, String>>()
            .map_err(CentralError::query(&self.name, "reading alerts"))?;
        if filter.after_id.is_none() {
            alerts.reverse();
        }
        Ok(alerts)
    }

    /// The newest id in `alerts` (0 when empty): where `--follow` starts.
    pub fn newest_alert_id(&mut self) -> Result<i64, CentralError> {
        let rows = self.read("reading alerts", "SELECT CAST(COALESCE(MAX(id), 0) AS BIGINT) FROM alerts", &[])?;
        first_int(&rows).map_err(CentralError::query(&self.name, "reading alerts"))
    }

    /// Stores an alert of the collector's own (`host_silent`, `host_back`) about `host`.
    #[cfg_attr(
        not(test),
        expect(
            dead_code,
            reason = "central API for fleet rules to come; silence and return use it inside their transactions"
        )
    )]
    pub fn insert_fleet_alert(
        &mut self,
        host: &str,
        hostname: &str,
        kind: &str,
        alert: &serde_json::Value,
        now: &str,
    ) -> Result<(), CentralError> {
        self.transaction("storing a central alert", |db| insert_fleet_alert_in(db, host, hostname, kind, alert, now))
    }

    /// Marks `host` back if it was silent, storing its `host_back` alert; returns whether it was.
    /// (A heartbeat does this inside [`Self::store_batch`].)
    #[cfg_attr(not(test), expect(dead_code, reason = "central API; heartbeats mark hosts back inside store_batch"))]
    pub fn mark_back(&mut self, host: &str, hostname: &str, now: &str) -> Result<bool, CentralError> {
        self.transaction("marking a host back", |db| mark_back_in(db, host, hostname, now))
    }

    /// Marks silent every host whose last heartbeat is older than `silent_after` (or, when
    /// `None`, three of its own heartbeat intervals), storing a `host_silent` alert for each.
    /// A heartbeat that arrives meanwhile wins: the host stays `ok`.
    pub fn mark_silent(
        &mut self,
        now: SystemTime,
        silent_after: Option<Duration>,
    ) -> Result<Vec<SilentHost>, CentralError> {
        let rows = self.read(
            "reading heartbeats",
            "SELECT host, hostname, last_heartbeat, heartbeat_interval_s FROM hosts
             WHERE status = 'ok' AND last_heartbeat IS NOT NULL",
            &[],
        )?;
        let mut due = Vec::new();
        for row in &rows {
            let parsed =
                (|| -> Result<_, String> { Ok((row.text(0)?, row.text(1)?, row.text(2)?, row.opt_int(3)?)) })()
                    .map_err(CentralError::query(&self.name, "reading heartbeats"))?;
            let (host, hostname, last_heartbeat, interval_s) = parsed;
            let Ok(heard) = humantime::parse_rfc3339(&last_heartbeat) else {
                tracing::warn!(host, last_heartbeat, "unreadable last_heartbeat: the host is not judged");
                continue;
            };
            let allowed = silent_after.unwrap_or_else(|| {
                let interval = Duration::from_secs(interval_s.unwrap_or(30).clamp(1, 86_400) as u64);
                interval * SILENT_AFTER_INTERVALS
            });
            if now.duration_since(heard).is_ok_and(|quiet| quiet > allowed) {
                due.push(SilentHost { host, hostname, last_heartbeat });
            }
        }
        let now_text = rfc3339(now);
        let mut silent = Vec::new();
        for candidate in due {
            let became_silent = self.transaction("marking a host silent", |db| {
                let changed = db.execute(
                    "UPDATE hosts SET status = 'silent' WHERE host = ?1 AND status = 'ok' AND last_heartbeat = ?2",
                    &[candidate.host.as_str().into(), candidate.last_heartbeat.as_str().into()],
                )?;
                if changed == 1 {
                    let alert = serde_json::json!({
                        "kind": HOST_SILENT,
                        "time": now_text,
                        "host": candidate.host,
                        "hostname": candidate.hostname,
                        "last_heartbeat": candidate.last_heartbeat,
                    });
                    insert_fleet_alert_in(db, &candidate.host, &candidate.hostname, HOST_SILENT, &alert, &now_text)?;
                }
                Ok(changed == 1)
            })?;
            if became_silent {
                silent.push(candidate);
            }
        }
        Ok(silent)
    }

    /// How many distinct hosts stored an alert naming `attacker` received at or after `since`.
    pub fn distinct_hosts_for_attacker(&mut self, attacker: &str, since: &str) -> Result<u32, CentralError> {
        let rows = self.read(
            "counting hosts per attacker",
            "SELECT COUNT(DISTINCT host) FROM alerts WHERE attacker = ?1 AND received >= ?2 AND epoch <> 0",
            &[attacker.into(), since.into()],
        )?;
        let count = first_int(&rows).map_err(CentralError::query(&self.name, "counting hosts per attacker"))?;
        Ok(u32::try_from(count).unwrap_or(u32::MAX))
    }

    /// The fleet bans in force at `now`: per net, its newest decision if that is an unexpired ban.
    pub fn active_bans(&mut self, now: &str) -> Result<Vec<BanDecision>, CentralError> {
        let rows = self.read(
            "reading fleet bans",
            "SELECT rev, action, net, reason, origin, expires, time FROM fleet_bans f
             WHERE rev = (SELECT MAX(rev) FROM fleet_bans g WHERE g.net = f.net)
               AND action = 'ban' AND (expires IS NULL OR expires > ?1)
             ORDER BY rev",
            &[now.into()],
        )?;
        rows.iter()
            .map(decision)
            .collect::<Result<_, String>>()
            .map_err(CentralError::query(&self.name, "reading fleet bans"))
    }

    /// What an agent asking for a snapshot receives: the active bans as of the newest decision.
    pub fn snapshot(&mut self, now: &str) -> Result<BanSnapshot, CentralError> {
        let bans = self.active_bans(now)?;
        let rows =
            self.read("reading fleet bans", "SELECT CAST(COALESCE(MAX(rev), 0) AS BIGINT) FROM fleet_bans", &[])?;
        let rev = first_int(&rows).map_err(CentralError::query(&self.name, "reading fleet bans"))?;
        Ok(BanSnapshot { v: VERSION, rev, bans })
    }

    /// Records a decision (unpublished); returns it with its `rev`. `net` is stored canonical.
    pub fn record_decision(
        &mut self,
        action: BanAction,
        net: &BanNet,
        reason: &str,
        origin: &str,
        expires: Option<String>,
        now: &str,
    ) -> Result<BanDecision, CentralError> {
        let action_text = match action {
            BanAction::Ban => "ban",
            BanAction::Unban => "unban",
        };
        let net_text = net.to_string();
        let rev = self.transaction("recording a fleet ban decision", |db| {
            let rows = db.query(
                "INSERT INTO fleet_bans (action, net, reason, origin, expires, time, published)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) RETURNING rev",
                &[
                    action_text.into(),
                    net_text.as_str().into(),
                    reason.into(),
                    origin.into(),
                    expires.clone().into(),
                    now.into(),
                    false.into(),
                ],
            )?;
            first_int(&rows)
        })?;
        Ok(BanDecision {
            v: VERSION,
            rev,
            action,
            net: net_text,
            reason: reason.to_string(),
            origin: origin.to_string(),
            expires,
            time: now.to_string(),
        })
    }

    /// Decisions not yet confirmed by the broker, oldest first.
    pub fn unpublished_decisions(&mut self) -> Result<Vec<BanDecision>, CentralError> {
        let rows = self.read(
            "reading unpublished fleet bans",
            "SELECT rev, action, net, reason, origin, expires, time FROM fleet_bans WHERE published = ?1 ORDER BY rev",
            &[false.into()],
        )?;
        rows.iter()
            .map(decision)
            .collect::<Result<_, String>>()
            .map_err(CentralError::query(&self.name, "reading unpublished fleet bans"))
    }

    /// The broker confirmed decision `rev`.
    pub fn mark_published(&mut self, rev: i64) -> Result<(), CentralError> {
        self.transaction("marking a fleet ban published", |db| {
            db.execute("UPDATE fleet_bans SET published = ?1 WHERE rev = ?2", &[true.into(), rev.into()]).map(|_| ())
        })
    }

    /// The fleet rule, for the attackers a stored batch named: each alerted on by at least
    /// `hosts` distinct hosts within `window` (until `now`), and not covered by an active fleet
    /// ban, gets a ban decision for `ban_for` (`None`: permanent). Returns the decisions made.
    pub fn apply_fleet_rule(
        &mut self,
        attackers: &[String],
        hosts: u32,
        window: Duration,
        ban_for: Option<Duration>,
        now: SystemTime,
    ) -> Result<Vec<BanDecision>, CentralError> {
        if hosts == 0 || attackers.is_empty() {
            return Ok(Vec::new());
        }
        let now_text = rfc3339(now);
        let since = rfc3339(now.checked_sub(window).unwrap_or(SystemTime::UNIX_EPOCH));
        let mut active: Vec<BanNet> =
            self.active_bans(&now_text)?.iter().filter_map(|ban| BanNet::parse(&ban.net).ok()).collect();
        let mut decided = Vec::new();
        let mut looked_at = HashSet::new();
        for attacker in attackers {
            let Ok(net) = BanNet::parse(attacker) else { continue };
            if !looked_at.insert(net) || active.iter().any(|ban| net.within(ban)) {
                continue;
            }
            let witnesses = self.distinct_hosts_for_attacker(attacker, &since)?;
            if witnesses < hosts {
                continue;
            }
            let expires = ban_for.and_then(|d| now.checked_add(d)).map(rfc3339);
            let reason =
                format!("{witnesses} hosts alerted on {attacker} within {}", humantime::format_duration(window));
            decided.push(self.record_decision(BanAction::Ban, &net, &reason, "fleet-rule", expires, &now_text)?);
            active.push(net);
        }
        Ok(decided)
    }
}

/// The columns [`alert_record`] reads, in its order.
const ALERT_RECORD_COLUMNS: &str = "id, host, hostname, epoch, seq, time, kind, alert, severity, rule";

fn alert_record(row: &Row) -> Result<AlertRecord, String> {
    let text = row.text(7)?;
    Ok(AlertRecord {
        id: row.int(0)?,
        host: row.text(1)?,
        hostname: row.text(2)?,
        epoch: row.int(3)?,
        seq: row.int(4)?,
        time: row.text(5)?,
        kind: row.text(6)?,
        // Stored by the collector from parsed JSON; should a row have been edited by hand into
        // something else, show its text rather than fail the listing.
        alert: serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
        severity: row.text(8)?,
        rule: row.opt_text(9)?,
    })
}

/// Columns of one alert in [`insert_alerts_sql`].
const ALERT_COLUMNS: usize = 11;
/// Alerts per INSERT: 900 parameters, well within SQLite's 32766 and PostgreSQL's 65535.
const ALERTS_PER_STATEMENT: usize = 100;

/// `INSERT` of `rows` alerts that skips those already stored and returns the attacker of each
/// row it inserted.
fn insert_alerts_sql(rows: usize) -> String {
    let values: Vec<String> = (0..rows)
        .map(|row| {
            let first = row * ALERT_COLUMNS + 1;
            let placeholders: Vec<String> = (first..first + ALERT_COLUMNS).map(|n| format!("?{n}")).collect();
            format!("({})", placeholders.join(", "))
        })
        .collect();
    format!(
        "INSERT INTO alerts (host, hostname, epoch, seq, time, kind, alert, attacker, received, severity, rule) VALUES {}
         ON CONFLICT (host, epoch, seq) DO NOTHING RETURNING attacker",
        values.join(", ")
    )
}

fn first_int(rows: &[Row]) -> Result<i64, String> {
    rows.first().ok_or_else(|| "no row returned".to_string())?.int(0)
}

fn decision(row: &Row) -> Result<BanDecision, String> {
    let action = match row.text(1)?.as_str() {
        "ban" => BanAction::Ban,
        "unban" => BanAction::Unban,
        other => return Err(format!("fleet_bans rev {}: action {other:?}", row.int(0)?)),
    };
    Ok(BanDecision {
        v: VERSION,
        rev: row.int(0)?,
        action,
        net: row.text(2)?,
        reason: row.text(3)?,
        origin: row.text(4)?,
        expires: row.opt_text(5)?,
        time: row.text(6)?,
    })
}

/// Stores a central alert as the next of `host`'s epoch-0 sequence.
fn insert_fleet_alert_in(
    db: &mut Db,
    host: &str,
    hostname: &str,
    kind: &str,
    alert: &serde_json::Value,
    now: &str,
) -> Result<(), String> {
    let rows = db.query(
        "SELECT CAST(COALESCE(MAX(seq), 0) AS BIGINT) FROM alerts WHERE host = ?1 AND epoch = ?2",
        &[host.into(), CENTRAL_EPOCH.into()],
    )?;
    let seq = first_int(&rows)? + 1;
    db.execute(
        "INSERT INTO alerts (host, hostname, epoch, seq, time, kind, alert, attacker, received, severity)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, NULL, ?5, ?8)
         ON CONFLICT (host, epoch, seq) DO NOTHING",
        &[
            host.into(),
            hostname.into(),
            CENTRAL_EPOCH.into(),
            seq.into(),
            now.into(),
            kind.into(),
            alert.to_string().into(),
            severity_of(kind, alert).into(),
        ],
    )?;
    Ok(())
}

fn mark_back_in(db: &mut Db, host: &str, hostname: &str, now: &str) -> Result<bool, String> {
    let changed = db.execute("UPDATE hosts SET status = 'ok' WHERE host = ?1 AND status = 'silent'", &[host.into()])?;
    if changed == 1 {
        let alert = serde_json::json!({"kind": HOST_BACK, "time": now, "host": host, "hostname": hostname});
        insert_fleet_alert_in(db, host, hostname, HOST_BACK, &alert, now)?;
    }
    Ok(changed == 1)
}

#[cfg(test)]
mod tests;
