//! The `bans` and `offenders` tables, and alert queries used by `ids alerts`. The rules (what may
//! be banned, durations, the kernel maps) live in `crate::bans`; this is storage only.
use rusqlite::{OptionalExtension as _, Row, params};

use super::{AlertRow, Store, StoreError};

/// A ban as stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BanRow {
    /// Also the ban's id in the kernel maps.
    pub id: i64,
    /// Canonical address (`10.0.0.1`) or prefix (`10.0.0.0/8`).
    pub net: String,
    pub reason: String,
    pub source: String,
    /// RFC 3339 UTC.
    pub created: String,
    /// RFC 3339 UTC; `None`: permanent.
    pub expires: Option<String>,
    pub packets: u64,
    pub bytes: u64,
    /// Why the ban lasts as long as it does, when its duration escalated with the net's offences.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub escalation: Option<Escalation>,
}

/// How an escalating ban's duration was decided: `base` doubled for each earlier offence of the
/// net, capped at `[bans] max_duration`. Stored with the ban (JSON), shown by `ids bans` and in
/// the alerts of the ban.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Escalation {
    /// This ban's offence: the net's earlier offences plus one.
    pub offence: u32,
    /// The duration of a first offence (`10m`).
    pub base: String,
    /// The duration decided (`40m`).
    pub duration: String,
    /// The decision in words: `3rd offence: 10m doubled twice = 40m`.
    pub reason: String,
}

const COLUMNS: &str = "id, net, reason, source, created, expires, packets, bytes, escalation";

fn ban_row(row: &Row<'_>) -> rusqlite::Result<BanRow> {
    Ok(BanRow {
        id: row.get(0)?,
        net: row.get(1)?,
        reason: row.get(2)?,
        source: row.get(3)?,
        created: row.get(4)?,
        expires: row.get(5)?,
        packets: row.get::<_, i64>(6)?.max(0) as u64,
        bytes: row.get::<_, i64>(7)?.max(0) as u64,
        // Written by this program only; a value that does not read is left out, not fatal.
        escalation: row.get::<_, Option<String>>(8)?.and_then(|text| serde_json::from_str(&text).ok()),
    })
}

/// One ban to record.
#[derive(Debug, Clone)]
pub struct NewBan<'a> {
    pub net: &'a str,
    pub reason: &'a str,
    pub source: &'a str,
    pub expires: Option<String>,
    pub escalation: Option<Escalation>,
    /// Whether a new ban counts as an offence of its net (toward later escalation).
    pub offence: bool,
}

/// `expires` values compare as text: RFC 3339 UTC with microseconds has a fixed width.
fn later(a: &Option<String>, b: &Option<String>) -> Option<String> {
    match (a, b) {
        (None, _) | (_, None) => None,
        (Some(a), Some(b)) => Some(if a >= b { a.clone() } else { b.clone() }),
    }
}

/// Which alerts `ids alerts` asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AlertFilter {
    /// Only these kinds; empty: every kind.
    pub kinds: Vec<String>,
    /// Only alerts at or after this RFC 3339 time (the store's own format, so they compare as text).
    pub since: Option<String>,
    /// Only alerts stored after the one with this id, and then the oldest first: a cursor that
    /// `ids alerts --follow` moves along.
    pub after_id: Option<i64>,
}

/// An alert as stored, with its row id (`ids alerts show ID`).
#[derive(Debug, Clone, PartialEq)]
pub struct StoredAlert {
    pub id: i64,
    pub row: AlertRow,
}

impl Store {
    /// Records bans in one transaction. A net already banned keeps its row (and id); its expiry
    /// becomes the later of the two (with the escalation of the ban that set it). Returns each row
    /// and whether it is new. New bans with `offence` set count toward their net's offences.
    #[cfg(test)]
    pub fn add_bans(&mut self, bans: &[NewBan<'_>]) -> Result<Vec<(BanRow, bool)>, StoreError> {
        self.add_bans_then(bans, |_| Ok::<(), StoreError>(()))
    }

    /// Like [`Store::add_bans`], but `apply` sees the rows before the commit; if it fails, the
    /// transaction is rolled back and nothing is recorded.
    pub fn add_bans_then<E: From<StoreError>>(
        &mut self,
        bans: &[NewBan<'_>],
        apply: impl FnOnce(&[(BanRow, bool)]) -> Result<(), E>,
    ) -> Result<Vec<(BanRow, bool)>, E> {
        let path = self.path.clone();
        let error = |what| {
            let path = path.clone();
            move |source| StoreError::Query { path, what, source }
        };
        let created = super::now();
        let tx = self.conn.transaction().map_err(error("starting a transaction"))?;
        let mut out = Vec::with_capacity(bans.len());
        {
            let mut find = tx
                .prepare(&format!("SELECT {COLUMNS} FROM bans WHERE net = ?1"))
                .map_err(error("preparing ban lookup"))?;
            let mut extend = tx
                .prepare("UPDATE bans SET expires = ?2, escalation = ?3 WHERE id = ?1")
                .map_err(error("preparing ban update"))?;
            // A new net takes one statement; only a net banned already is looked up.
            let mut insert = tx
                .prepare(
                    "INSERT INTO bans (net, reason, source, created, expires, escalation) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                     ON CONFLICT (net) DO NOTHING",
                )
                .map_err(error("preparing ban insert"))?;
            let mut count = tx
                .prepare(
                    "INSERT INTO offenders (net, bans, last) VALUES (?1, 1, ?2)
                     ON CONFLICT (net) DO UPDATE SET bans = bans + 1, last = excluded.last",
                )
                .map_err(error("preparing the offence count"))?;
            for ban in bans {
                let escalation = ban.escalation.as_ref().and_then(|e| serde_json::to_string(e).ok());
                let inserted = insert
                    .execute(params![ban.net, ban.reason, ban.source, created, ban.expires, escalation])
                    .map_err(error("inserting a ban"))?;
                if inserted == 1 {
                    let id = tx.last_insert_rowid();
                    if ban.offence {
                        count.execute(params![ban.net, created]).map_err(error("counting offences"))?;
                    }
                    let row = BanRow {
                        id,
                        net: ban.net.to_string(),
                        reason: ban.reason.to_string(),
                        source: ban.source.to_string(),
                        created: created.clone(),
                        expires: ban.expires.clone(),
                        packets: 0,
                        bytes: 0,
                        escalation: ban.escalation.clone(),
                    };
                    out.push((row, true));
                    continue;
                }
                let mut row = find.query_row([ban.net], ban_row).map_err(error("looking up a ban"))?;
                let expires = later(&row.expires, &ban.expires);
                if expires != row.expires {
                    extend.execute(params![row.id, expires, escalation]).map_err(error("extending a ban"))?;
                    row.expires = expires;
                    row.escalation = ban.escalation.clone();
                }
                out.push((row, false));
            }
        }
        apply(&out)?;
        tx.commit().map_err(error("committing bans"))?;
        Ok(out)
    }

    /// Removes the ban of `net`; `None` when there was none.
    pub fn remove_ban(&mut self, net: &str) -> Result<Option<BanRow>, StoreError> {
        self.conn
            .query_row(&format!("DELETE FROM bans WHERE net = ?1 RETURNING {COLUMNS}"), [net], ban_row)
            .optional()
            .map_err(|source| self.query_error("removing a ban", source))
    }

    /// Every ban, oldest first.
    pub fn bans(&self) -> Result<Vec<BanRow>, StoreError> {
        let error = |source| self.query_error("reading bans", source);
        let mut select = self.conn.prepare(&format!("SELECT {COLUMNS} FROM bans ORDER BY id")).map_err(error)?;
        let rows = select.query_map([], ban_row).map_err(error)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(error)
    }

    /// The bans a source made (`fleet`), oldest first.
    pub fn bans_of_source(&self, source: &str) -> Result<Vec<BanRow>, StoreError> {
        let error = |e| self.query_error("reading bans", e);
        let mut select =
            self.conn.prepare(&format!("SELECT {COLUMNS} FROM bans WHERE source = ?1 ORDER BY id")).map_err(error)?;
        let rows = select.query_map([source], ban_row).map_err(error)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(error)
    }

    /// Removes and returns the bans whose expiry is at or before `now` (RFC 3339).
    pub fn remove_expired_bans(&mut self, now: &str) -> Result<Vec<BanRow>, StoreError> {
        let error = |source| self.query_error("removing expired bans", source);
        let mut delete = self
            .conn
            .prepare(&format!("DELETE FROM bans WHERE expires IS NOT NULL AND expires <= ?1 RETURNING {COLUMNS}"))
            .map_err(error)?;
        let rows = delete.query_map([now], ban_row).map_err(error)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(error)
    }

    /// The earliest expiry of any ban, if one expires.
    pub fn next_ban_expiry(&self) -> Result<Option<String>, StoreError> {
        self.conn
            .query_row("SELECT min(expires) FROM bans WHERE expires IS NOT NULL", [], |row| row.get(0))
            .map_err(|source| self.query_error("reading the next ban expiry", source))
    }

    /// How many bans `net` has received so far.
    pub fn offences(&self, net: &str) -> Result<u32, StoreError> {
        let count: Option<i64> = self
            .conn
            .query_row("SELECT bans FROM offenders WHERE net = ?1", [net], |row| row.get(0))
            .optional()
            .map_err(|source| self.query_error("reading offences", source))?;
        Ok(count.unwrap_or(0).clamp(0, u32::MAX as i64) as u32)
    }

    /// Stores the kernel's hit counters of bans: `(id, packets, bytes)`.
    pub fn record_ban_hits(&mut self, hits: &[(i64, u64, u64)]) -> Result<(), StoreError> {
        let path = self.path.clone();
        let error = move |source| StoreError::Query { path: path.clone(), what: "recording ban hits", source };
        let tx = self.conn.transaction().map_err(error.clone())?;
        {
            let mut update =
                tx.prepare("UPDATE bans SET packets = ?2, bytes = ?3 WHERE id = ?1").map_err(error.clone())?;
            for (id, packets, bytes) in hits {
                update.execute(params![id, *packets as i64, *bytes as i64]).map_err(error.clone())?;
            }
        }
        tx.commit().map_err(error)
    }

    /// The last `limit` alerts that `filter` selects, oldest first.
    #[cfg(test)]
    pub fn recent_alerts_matching(&self, limit: usize, filter: &AlertFilter) -> Result<Vec<AlertRow>, StoreError> {
        Ok(self.alerts_matching(limit, filter, None)?.into_iter().map(|alert| alert.row).collect())
    }

    /// The alerts `filter` selects and `keep` (when given) keeps, oldest first: the last `limit`
    /// of them, or with `after_id`, the first `limit` after it.
    pub fn alerts_matching(
        &self,
        limit: usize,
        filter: &AlertFilter,
        keep: Option<&dyn Fn(&AlertRow) -> bool>,
    ) -> Result<Vec<StoredAlert>, StoreError> {
        let error = |source| self.query_error("reading alerts", source);
        let newest_first = filter.after_id.is_none();
        let mut select = self
            .conn
            .prepare(if newest_first {
                "SELECT id, time, kind, item_id, collector, what FROM alerts
                 WHERE (?2 = '' OR instr(?2, ',' || kind || ',') > 0) AND (?3 IS NULL OR time >= ?3)
                 ORDER BY id DESC LIMIT ?1"
            } else {
                "SELECT id, time, kind, item_id, collector, what FROM alerts
                 WHERE (?2 = '' OR instr(?2, ',' || kind || ',') > 0) AND (?3 IS NULL OR time >= ?3)
                   AND id > ?4
                 ORDER BY id LIMIT ?1"
            })
            .map_err(error)?;
        let kinds = if filter.kinds.is_empty() { String::new() } else { format!(",{},", filter.kinds.join(",")) };
        // `keep` reads the row, so with it the SQL cannot stop at `limit`.
        let sql_limit = if keep.is_some() { -1 } else { limit.min(i64::MAX as usize) as i64 };
        let read = |row: &Row<'_>| {
            let what: String = row.get(5)?;
            Ok(StoredAlert {
                id: row.get(0)?,
                row: AlertRow {
                    time: row.get(1)?,
                    kind: row.get(2)?,
                    item_id: row.get(3)?,
                    collector: row.get(4)?,
                    what: serde_json::from_str(&what).unwrap_or(serde_json::Value::String(what)),
                },
            })
        };
        let rows = if newest_first {
            select.query_map(params![sql_limit, kinds, filter.since], read)
        } else {
            select.query_map(params![sql_limit, kinds, filter.since, filter.after_id], read)
        }
        .map_err(error)?;
        let mut alerts = Vec::new();
        for alert in rows {
            let alert = alert.map_err(error)?;
            if keep.is_some_and(|keep| !keep(&alert.row)) {
                continue;
            }
            alerts.push(alert);
            if alerts.len() >= limit {
                break;
            }
        }
        if newest_first {
            alerts.reverse();
        }
        Ok(alerts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ban<'a>(net: &'a str, expires: Option<&str>) -> NewBan<'a> {
        NewBan {
            net,
            reason: "test",
            source: "port-scan",
            expires: expires.map(String::from),
            escalation: None,
            offence: true,
        }
    }

    #[test]
    fn only_bans_that_are_offences_are_counted_and_escalation_is_kept() {
        let mut store = Store::open_in_memory().unwrap();
        let manual =
            NewBan { source: "manual", offence: false, ..ban("10.0.0.7", Some("2030-01-01T00:00:00.000000Z")) };
        store.add_bans(&[manual]).unwrap();
        assert_eq!(store.offences("10.0.0.7").unwrap(), 0);
        assert_eq!(store.bans().unwrap()[0].escalation, None);
        let escalation = Escalation {
            offence: 1,
            base: "10m".into(),
            duration: "10m".into(),
            reason: "1st offence: the base duration, 10m".into(),
        };
        let later =
            NewBan { escalation: Some(escalation.clone()), ..ban("10.0.0.7", Some("2031-01-01T00:00:00.000000Z")) };
        let stored = store.add_bans(&[later]).unwrap();
        assert!(!stored[0].1, "the net was banned already");
        assert_eq!(stored[0].0.escalation.as_ref(), Some(&escalation), "the later expiry brings its reason");
        assert_eq!(store.bans().unwrap()[0].escalation.as_ref(), Some(&escalation));
        store.remove_ban("10.0.0.7").unwrap();
        store.add_bans(&[ban("10.0.0.7", None)]).unwrap();
        assert_eq!(store.offences("10.0.0.7").unwrap(), 1);
    }

    #[test]
    fn bans_are_idempotent_keep_their_id_and_extend() {
        let mut store = Store::open_in_memory().unwrap();
        let first = store.add_bans(&[ban("10.0.0.1", Some("2030-01-01T00:00:00.000000Z"))]).unwrap();
        assert!(first[0].1);
        let again = store.add_bans(&[ban("10.0.0.1", Some("2031-01-01T00:00:00.000000Z"))]).unwrap();
        assert!(!again[0].1);
        assert_eq!(again[0].0.id, first[0].0.id);
        assert_eq!(again[0].0.expires.as_deref(), Some("2031-01-01T00:00:00.000000Z"));
        // A shorter ban does not shorten it; a permanent one makes it permanent.
        let shorter = store.add_bans(&[ban("10.0.0.1", Some("2029-01-01T00:00:00.000000Z"))]).unwrap();
        assert_eq!(shorter[0].0.expires.as_deref(), Some("2031-01-01T00:00:00.000000Z"));
        assert_eq!(store.add_bans(&[ban("10.0.0.1", None)]).unwrap()[0].0.expires, None);
        assert_eq!(store.bans().unwrap().len(), 1);
        assert_eq!(store.offences("10.0.0.1").unwrap(), 1);
    }

    #[test]
    fn bans_are_not_recorded_when_apply_fails() {
        let mut store = Store::open_in_memory().unwrap();
        store.add_bans(&[ban("10.0.0.1", None)]).unwrap();
        let seen = std::cell::Cell::new(0);
        let failed = store.add_bans_then(
            &[ban("10.0.0.2", None), ban("10.0.0.1", Some("2030-01-01T00:00:00.000000Z"))],
            |rows| {
                seen.set(rows.len());
                Err(StoreError::Query { path: "test".into(), what: "refusing", source: rusqlite::Error::InvalidQuery })
            },
        );
        assert!(failed.is_err());
        assert_eq!(seen.get(), 2);
        let bans = store.bans().unwrap();
        assert_eq!(bans.len(), 1, "{bans:?}");
        assert_eq!(bans[0].expires, None);
        assert_eq!(store.offences("10.0.0.2").unwrap(), 0);
    }

    #[test]
    fn expired_bans_leave_and_offences_are_remembered() {
        let mut store = Store::open_in_memory().unwrap();
        store.add_bans(&[ban("10.0.0.1", Some("2000-01-01T00:00:00.000000Z")), ban("10.0.0.2", None)]).unwrap();
        let gone = store.remove_expired_bans(&crate::store::now()).unwrap();
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].net, "10.0.0.1");
        assert_eq!(store.bans().unwrap().len(), 1);
        store.add_bans(&[ban("10.0.0.1", None)]).unwrap();
        assert_eq!(store.offences("10.0.0.1").unwrap(), 2);
        assert!(store.remove_ban("10.0.0.1").unwrap().is_some());
        assert!(store.remove_ban("10.0.0.1").unwrap().is_none());
    }

    #[test]
    fn alerts_are_filtered_by_kind_and_time_before_the_limit() {
        let mut store = Store::open_in_memory().unwrap();
        let row = |time: &str, kind: &str| AlertRow {
            time: time.into(),
            kind: kind.into(),
            item_id: format!("{kind}@{time}"),
            collector: String::new(),
            what: serde_json::json!({}),
        };
        let rows = [
            row("2026-12-05T01:00:00.000000Z", "integrity"),
            row("2026-12-05T02:00:00.000000Z", "detect"),
            row("2026-12-05T03:00:00.000000Z", "integrity"),
            row("2026-12-05T04:00:00.000000Z", "ban"),
        ];
        store.apply(&[], &rows).unwrap();
        let ids = |filter: AlertFilter, limit: usize| -> Vec<String> {
            store.recent_alerts_matching(limit, &filter).unwrap().into_iter().map(|r| r.item_id).collect()
        };
        let integrity = AlertFilter { kinds: vec!["integrity".into()], ..AlertFilter::default() };
        assert_eq!(ids(integrity.clone(), 1), ["integrity@2026-12-05T03:00:00.000000Z"]);
        assert_eq!(ids(integrity, 10).len(), 2);
        let recent = AlertFilter { since: Some("2026-12-05T02:00:00.000000Z".into()), ..AlertFilter::default() };
        assert_eq!(ids(recent, 10).len(), 3);
        let both = AlertFilter {
            kinds: vec!["detect".into(), "ban".into()],
            since: Some("2026-12-05T03:00:00.000000Z".into()),
            ..AlertFilter::default()
        };
        assert_eq!(ids(both, 10), ["ban@2026-12-05T04:00:00.000000Z"]);
        // A kind that is a part of another's name selects nothing more.
        let part = AlertFilter { kinds: vec!["integ".into()], ..AlertFilter::default() };
        assert!(ids(part, 10).is_empty());
        assert_eq!(store.recent_alerts_matching(10, &AlertFilter::default()).unwrap().len(), 4);
    }

    #[test]
    fn alerts_are_filtered_by_least_severity_and_followed_by_id() {
        use crate::alert::Severity;
        let mut store = Store::open_in_memory().unwrap();
        let row = |kind: &str, what: serde_json::Value| AlertRow {
            time: "2026-12-05T01:00:00.000000Z".into(),
            kind: kind.into(),
            item_id: String::new(),
            collector: String::new(),
            what,
        };
        let rows = [
            row("ban", serde_json::json!({})),
            row("detect", serde_json::json!({"severity": "critical"})),
            row("integrity", serde_json::json!({})),
            row("detect", serde_json::json!({"severity": "low"})),
            row("sensor_miss", serde_json::json!({})),
        ];
        store.apply(&[], &rows).unwrap();
        let ids = |filter: AlertFilter, least: Option<Severity>, limit: usize| -> Vec<i64> {
            let keep = move |row: &AlertRow| least.is_none_or(|least| row.severity() >= least);
            let keep: &dyn Fn(&AlertRow) -> bool = &keep;
            let keep = least.is_some().then_some(keep);
            store.alerts_matching(limit, &filter, keep).unwrap().into_iter().map(|a| a.id).collect()
        };
        let all = ids(AlertFilter::default(), None, 10);
        assert_eq!(all.len(), 5);
        assert_eq!(ids(AlertFilter::default(), Some(Severity::High), 10), [all[1], all[4]]);
        // The limit counts the alerts that pass, not the rows read.
        assert_eq!(ids(AlertFilter::default(), Some(Severity::High), 1), [all[4]]);
        assert_eq!(ids(AlertFilter::default(), Some(Severity::Medium), 10), [all[1], all[2], all[4]]);
        // After an id: the oldest first, so that a follower misses none however many came.
        let after = AlertFilter { after_id: Some(all[0]), ..AlertFilter::default() };
        assert_eq!(ids(after.clone(), None, 2), [all[1], all[2]]);
        assert_eq!(ids(after.clone(), Some(Severity::High), 1), [all[1]]);
        assert_eq!(ids(AlertFilter { after_id: Some(all[4]), ..after }, None, 10), Vec::<i64>::new());
    }
}
