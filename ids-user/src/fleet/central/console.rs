//! What the web console (`fleet::web`) reads and writes in the central database besides the
//! collector's tables: its users (argon2 hashes), sessions and API tokens (SHA-256 of the secret:
//! the database never holds one that could be replayed), and the aggregates its pages show.
use std::collections::BTreeMap;

use serde::Serialize;

use super::backend::Row;
use super::{ALERT_RECORD_COLUMNS, AlertFilter, AlertRecord, CentralError, CentralStore, alert_record, first_int};

/// A console session, found by the SHA-256 of its cookie.
#[derive(Debug, Clone, PartialEq)]
pub struct ConsoleSession {
    pub user: String,
    /// The session's CSRF token: every state-changing request carries it.
    pub csrf: String,
    /// RFC 3339.
    pub expires: String,
}

/// Alerts of one hour and kind (the Alerts page's timeline).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TimelineBucket {
    /// `2026-12-05T13` (UTC; the hours of the hosts' clocks).
    pub hour: String,
    pub kind: String,
    pub count: i64,
}

/// What a host raised since some time (the Fleet page).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct HostActivity {
    pub alerts: i64,
    /// `integrity` and `sensor_miss` alerts: its files drifted from their baseline.
    pub integrity: i64,
}

/// Fleet-applied ban alerts read to tell which hosts applied a fleet ban: the newest this many.
const BAN_ECHOES_READ: i64 = 5000;

impl CentralStore {
    /// Adds a console user, or sets the password hash of an existing one.
    pub fn set_console_user(&mut self, name: &str, hash: &str, now: &str) -> Result<bool, CentralError> {
        self.transaction("storing a console user", |db| {
            let existed = !db.query("SELECT name FROM console_users WHERE name = ?1", &[name.into()])?.is_empty();
            db.execute(
                "INSERT INTO console_users (name, hash, created) VALUES (?1, ?2, ?3)
                 ON CONFLICT (name) DO UPDATE SET hash = excluded.hash",
                &[name.into(), hash.into(), now.into()],
            )?;
            // A new password ends the sessions opened with the old one.
            db.execute("DELETE FROM console_sessions WHERE user_name = ?1", &[name.into()])?;
            Ok(existed)
        })
    }

    /// Removes a console user and ends their sessions; whether there was one.
    pub fn delete_console_user(&mut self, name: &str) -> Result<bool, CentralError> {
        self.transaction("removing a console user", |db| {
            db.execute("DELETE FROM console_sessions WHERE user_name = ?1", &[name.into()])?;
            Ok(db.execute("DELETE FROM console_users WHERE name = ?1", &[name.into()])? == 1)
        })
    }

    /// Console users and when each was added, by name.
    pub fn console_users(&mut self) -> Result<Vec<(String, String)>, CentralError> {
        let rows = self.read("reading console users", "SELECT name, created FROM console_users ORDER BY name", &[])?;
        pairs(&rows).map_err(CentralError::query(&self.name, "reading console users"))
    }

    /// The stored argon2 hash of `name`'s password.
    pub fn console_user_hash(&mut self, name: &str) -> Result<Option<String>, CentralError> {
        let rows =
            self.read("reading a console user", "SELECT hash FROM console_users WHERE name = ?1", &[name.into()])?;
        rows.first()
            .map(|row| row.text(0))
            .transpose()
            .map_err(CentralError::query(&self.name, "reading a console user"))
    }

    pub fn create_console_session(
        &mut self,
        id_hash: &str,
        user: &str,
        csrf: &str,
        now: &str,
        expires: &str,
    ) -> Result<(), CentralError> {
        self.transaction("opening a console session", |db| {
            // Expired sessions go whenever a new one opens: the table stays small.
            db.execute("DELETE FROM console_sessions WHERE expires <= ?1", &[now.into()])?;
            db.execute(
                "INSERT INTO console_sessions (id, user_name, csrf, created, expires) VALUES (?1, ?2, ?3, ?4, ?5)",
                &[id_hash.into(), user.into(), csrf.into(), now.into(), expires.into()],
            )?;
            Ok(())
        })
    }

    /// The session whose cookie hashes to `id_hash`, unless it expired by `now`.
    pub fn console_session(&mut self, id_hash: &str, now: &str) -> Result<Option<ConsoleSession>, CentralError> {
        let rows = self.read(
            "reading a console session",
            "SELECT user_name, csrf, expires FROM console_sessions WHERE id = ?1 AND expires > ?2",
            &[id_hash.into(), now.into()],
        )?;
        rows.first()
            .map(|row| Ok(ConsoleSession { user: row.text(0)?, csrf: row.text(1)?, expires: row.text(2)? }))
            .transpose()
            .map_err(CentralError::query(&self.name, "reading a console session"))
    }

    pub fn delete_console_session(&mut self, id_hash: &str) -> Result<(), CentralError> {
        self.transaction("closing a console session", |db| {
            db.execute("DELETE FROM console_sessions WHERE id = ?1", &[id_hash.into()]).map(|_| ())
        })
    }

    /// Stores an API token by the SHA-256 of its secret; an existing name is refused.
    pub fn add_console_token(&mut self, name: &str, hash: &str, now: &str) -> Result<bool, CentralError> {
        self.transaction("storing an API token", |db| {
            let inserted = db.execute(
                "INSERT INTO console_tokens (name, hash, created) VALUES (?1, ?2, ?3) ON CONFLICT (name) DO NOTHING",
                &[name.into(), hash.into(), now.into()],
            )?;
            Ok(inserted == 1)
        })
    }

    pub fn delete_console_token(&mut self, name: &str) -> Result<bool, CentralError> {
        self.transaction("removing an API token", |db| {
            Ok(db.execute("DELETE FROM console_tokens WHERE name = ?1", &[name.into()])? == 1)
        })
    }

    /// API tokens (names and when each was made).
    pub fn console_tokens(&mut self) -> Result<Vec<(String, String)>, CentralError> {
        let rows = self.read("reading API tokens", "SELECT name, created FROM console_tokens ORDER BY name", &[])?;
        pairs(&rows).map_err(CentralError::query(&self.name, "reading API tokens"))
    }

    /// The name of the token whose secret hashes to `hash`.
    pub fn console_token_name(&mut self, hash: &str) -> Result<Option<String>, CentralError> {
        let rows =
            self.read("reading API tokens", "SELECT name FROM console_tokens WHERE hash = ?1", &[hash.into()])?;
        rows.first().map(|row| row.text(0)).transpose().map_err(CentralError::query(&self.name, "reading API tokens"))
    }

    /// One alert by its id.
    pub fn alert_by_id(&mut self, id: i64) -> Result<Option<AlertRecord>, CentralError> {
        let sql = format!("SELECT {ALERT_RECORD_COLUMNS} FROM alerts WHERE id = ?1");
        let rows = self.read("reading an alert", &sql, &[id.into()])?;
        rows.first().map(alert_record).transpose().map_err(CentralError::query(&self.name, "reading an alert"))
    }

    /// How many alerts `filter` selects (its limit and ids aside), per hour and kind, oldest first.
    pub fn timeline(&mut self, filter: &AlertFilter) -> Result<Vec<TimelineBucket>, CentralError> {
        let filter = AlertFilter { after_id: None, before_id: None, ..filter.clone() };
        let (where_clause, params) = filter.where_clause();
        let sql = format!(
            "SELECT substr(time, 1, 13) AS hour, kind, CAST(COUNT(*) AS BIGINT) FROM alerts {where_clause}
             GROUP BY substr(time, 1, 13), kind ORDER BY hour, kind"
        );
        let rows = self.read("counting alerts per hour", &sql, &params)?;
        rows.iter()
            .map(|row| Ok(TimelineBucket { hour: row.text(0)?, kind: row.text(1)?, count: row.int(2)? }))
            .collect::<Result<_, String>>()
            .map_err(CentralError::query(&self.name, "counting alerts per hour"))
    }

    /// How many alerts `filter` selects (its limit and ids aside).
    pub fn count_alerts(&mut self, filter: &AlertFilter) -> Result<i64, CentralError> {
        let filter = AlertFilter { after_id: None, before_id: None, ..filter.clone() };
        let (where_clause, params) = filter.where_clause();
        let rows = self.read(
            "counting alerts",
            &format!("SELECT CAST(COUNT(*) AS BIGINT) FROM alerts {where_clause}"),
            &params,
        )?;
        first_int(&rows).map_err(CentralError::query(&self.name, "counting alerts"))
    }

    /// Per host, the alerts received (collector's clock) at or after `since`.
    pub fn host_activity(&mut self, since: &str) -> Result<BTreeMap<String, HostActivity>, CentralError> {
        let rows = self.read(
            "counting alerts per host",
            "SELECT host, CAST(COUNT(*) AS BIGINT),
                    CAST(SUM(CASE WHEN kind IN ('integrity', 'sensor_miss') THEN 1 ELSE 0 END) AS BIGINT)
             FROM alerts WHERE received >= ?1 GROUP BY host",
            &[since.into()],
        )?;
        rows.iter()
            .map(|row| Ok((row.text(0)?, HostActivity { alerts: row.int(1)?, integrity: row.int(2)? })))
            .collect::<Result<_, String>>()
            .map_err(CentralError::query(&self.name, "counting alerts per host"))
    }

    /// Each host's last heartbeat as it sent it (JSON), by host.
    pub fn heartbeats(&mut self) -> Result<BTreeMap<String, serde_json::Value>, CentralError> {
        let rows =
            self.read("reading heartbeats", "SELECT host, heartbeat FROM hosts WHERE heartbeat IS NOT NULL", &[])?;
        rows.iter()
            .map(|row| {
                let text = row.text(1)?;
                Ok((row.text(0)?, serde_json::from_str(&text).unwrap_or(serde_json::Value::Null)))
            })
            .collect::<Result<_, String>>()
            .map_err(CentralError::query(&self.name, "reading heartbeats"))
    }

    /// Every fleet ban decision, newest first (at most `limit`).
    pub fn ban_decisions(&mut self, limit: i64) -> Result<Vec<super::BanDecision>, CentralError> {
        let rows = self.read(
            "reading fleet bans",
            "SELECT rev, action, net, reason, origin, expires, time FROM fleet_bans ORDER BY rev DESC LIMIT ?1",
            &[limit.into()],
        )?;
        rows.iter()
            .map(super::decision)
            .collect::<Result<_, String>>()
            .map_err(CentralError::query(&self.name, "reading fleet bans"))
    }

    /// Per net, the hosts that reported applying a fleet ban of it (their `ban` alerts of source
    /// `fleet`), with when they first did; from the newest such alerts.
    pub fn fleet_ban_appliers(&mut self) -> Result<BTreeMap<String, BTreeMap<String, String>>, CentralError> {
        let rows = self.read(
            "reading fleet-applied bans",
            "SELECT host, time, alert FROM alerts
             WHERE kind = 'ban' AND alert LIKE '%\"source\":\"fleet\"%' ORDER BY id DESC LIMIT ?1",
            &[BAN_ECHOES_READ.into()],
        )?;
        let mut appliers: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        for row in &rows {
            let parsed = (|| -> Result<_, String> { Ok((row.text(0)?, row.text(1)?, row.text(2)?)) })()
                .map_err(CentralError::query(&self.name, "reading fleet-applied bans"))?;
            let (host, time, alert) = parsed;
            let Ok(alert) = serde_json::from_str::<serde_json::Value>(&alert) else { continue };
            let Some(net) = alert.get("net").and_then(|n| n.as_str()) else { continue };
            // Newest first: the last insert is the host's first report.
            appliers.entry(net.to_string()).or_default().insert(host, time);
        }
        Ok(appliers)
    }
}

fn pairs(rows: &[Row]) -> Result<Vec<(String, String)>, String> {
    rows.iter().map(|row| Ok((row.text(0)?, row.text(1)?))).collect()
}
