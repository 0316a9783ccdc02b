//! The fleet agent's outbox: the `alerts` table itself, read from the last alert the broker
//! confirmed; `fleet_outbox` keeps that position, and `fleet_gaps` what was dropped unsent.
use rusqlite::{OptionalExtension as _, params};

use super::{AlertRow, Store, StoreError};

/// Where the agent stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outbox {
    /// This database's numbering of alerts; set once, when the fleet first runs on it.
    pub epoch: i64,
    /// Every alert with an id up to this one was confirmed (or dropped in a gap).
    pub confirmed_seq: i64,
    /// The last fleet ban decision applied.
    pub ban_rev: i64,
    /// The newest alert's id (0: none).
    pub last_seq: i64,
}

impl Outbox {
    /// Alerts stored and not yet confirmed.
    pub fn backlog(&self) -> u64 {
        (self.last_seq - self.confirmed_seq).max(0) as u64
    }
}

/// Alerts `from..=to` were dropped unsent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    pub from: i64,
    pub to: i64,
    pub time: String,
}

/// A stored alert not yet confirmed: its id is its sequence number.
#[derive(Debug, Clone, PartialEq)]
pub struct UnsentAlert {
    pub seq: i64,
    pub row: AlertRow,
}

impl Store {
    /// The outbox position, created on first use with `new_epoch` (read only once it exists:
    /// the agent reads it for every batch, beside the daemon's writers).
    pub fn outbox(&self, new_epoch: i64) -> Result<Outbox, StoreError> {
        let error = |source| self.query_error("reading the fleet outbox", source);
        let read = || {
            self.conn
                .query_row("SELECT epoch, confirmed_seq, ban_rev FROM fleet_outbox WHERE id = 1", [], |row| {
                    Ok((row.get(0)?, row.get(1)?, row.get(2)?))
                })
                .optional()
        };
        let (epoch, confirmed_seq, ban_rev) = match read().map_err(error)? {
            Some(position) => position,
            None => {
                self.conn
                    .execute(
                        "INSERT OR IGNORE INTO fleet_outbox (id, epoch, confirmed_seq, ban_rev) VALUES (1, ?1, 0, 0)",
                        [new_epoch],
                    )
                    .map_err(error)?;
                read().map_err(error)?.unwrap_or((new_epoch, 0, 0))
            }
        };
        let last_seq = self.last_alert_id()?;
        Ok(Outbox { epoch, confirmed_seq, ban_rev, last_seq })
    }

    /// The last fleet ban decision applied (0: none, or no fleet yet).
    pub fn fleet_ban_rev(&self) -> Result<i64, StoreError> {
        self.conn
            .query_row("SELECT ban_rev FROM fleet_outbox WHERE id = 1", [], |row| row.get(0))
            .optional()
            .map(|rev| rev.unwrap_or(0))
            .map_err(|source| self.query_error("reading the last fleet ban decision", source))
    }

    /// The newest alert's id (0: none).
    pub fn last_alert_id(&self) -> Result<i64, StoreError> {
        self.conn
            .query_row("SELECT COALESCE(MAX(id), 0) FROM alerts", [], |row| row.get(0))
            .map_err(|source| self.query_error("reading the newest alert id", source))
    }

    /// Up to `limit` alerts after `after`, oldest first.
    pub fn alerts_after(&self, after: i64, limit: usize) -> Result<Vec<UnsentAlert>, StoreError> {
        let error = |source| self.query_error("reading unsent alerts", source);
        let mut statement = self
            .conn
            .prepare_cached(
                "SELECT id, time, kind, item_id, collector, what FROM alerts WHERE id > ?1 ORDER BY id LIMIT ?2",
            )
            .map_err(error)?;
        let rows = statement
            .query_map(params![after, limit as i64], |row| {
                let what: String = row.get(5)?;
                Ok(UnsentAlert {
                    seq: row.get(0)?,
                    row: AlertRow {
                        time: row.get(1)?,
                        kind: row.get(2)?,
                        item_id: row.get(3)?,
                        collector: row.get(4)?,
                        // A row that is not JSON (edited by hand) still goes, as a string.
                        what: serde_json::from_str(&what).unwrap_or(serde_json::Value::String(what)),
                    },
                })
            })
            .map_err(error)?;
        rows.collect::<Result<_, _>>().map_err(error)
    }

    /// Every alert up to `seq` was confirmed.
    pub fn confirm_alerts(&self, seq: i64) -> Result<(), StoreError> {
        self.conn
            .execute("UPDATE fleet_outbox SET confirmed_seq = MAX(confirmed_seq, ?1) WHERE id = 1", [seq])
            .map(drop)
            .map_err(|source| self.query_error("recording confirmed alerts", source))
    }

    /// Keeps at most `max_backlog` alerts unsent: the oldest beyond are dropped and recorded as
    /// a gap (one transaction). `None` when nothing had to go.
    pub fn cap_backlog(&mut self, max_backlog: u64, time: &str) -> Result<Option<Gap>, StoreError> {
        let path = self.path.clone();
        let error =
            move |source| StoreError::Query { path: path.clone(), what: "dropping the oldest unsent alerts", source };
        let tx = self.conn.transaction().map_err(error.clone())?;
        let confirmed: i64 = tx
            .query_row("SELECT confirmed_seq FROM fleet_outbox WHERE id = 1", [], |row| row.get(0))
            .optional()
            .map_err(error.clone())?
            .unwrap_or(0);
        let last: i64 =
            tx.query_row("SELECT COALESCE(MAX(id), 0) FROM alerts", [], |row| row.get(0)).map_err(error.clone())?;
        let keep_from = last - max_backlog.min(i64::MAX as u64) as i64;
        if keep_from <= confirmed {
            return Ok(None);
        }
        let gap = Gap { from: confirmed + 1, to: keep_from, time: time.to_string() };
        tx.execute(
            "INSERT INTO fleet_gaps (from_seq, to_seq, time) VALUES (?1, ?2, ?3)",
            params![gap.from, gap.to, gap.time],
        )
        .map_err(error.clone())?;
        tx.execute("UPDATE fleet_outbox SET confirmed_seq = ?1 WHERE id = 1", [keep_from]).map_err(error.clone())?;
        tx.commit().map_err(error)?;
        Ok(Some(gap))
    }

    /// Gaps whose record has not reached the broker, oldest first.
    pub fn unsent_gaps(&self) -> Result<Vec<Gap>, StoreError> {
        let error = |source| self.query_error("reading unsent gaps", source);
        let mut statement = self
            .conn
            .prepare("SELECT from_seq, to_seq, time FROM fleet_gaps WHERE sent = 0 ORDER BY from_seq")
            .map_err(error)?;
        let rows = statement
            .query_map([], |row| Ok(Gap { from: row.get(0)?, to: row.get(1)?, time: row.get(2)? }))
            .map_err(error)?;
        rows.collect::<Result<_, _>>().map_err(error)
    }

    pub fn gap_sent(&self, from: i64) -> Result<(), StoreError> {
        self.conn
            .execute("UPDATE fleet_gaps SET sent = 1 WHERE from_seq = ?1", [from])
            .map(drop)
            .map_err(|source| self.query_error("recording a sent gap", source))
    }

    /// Records the last fleet ban decision applied.
    pub fn set_ban_rev(&self, rev: i64) -> Result<(), StoreError> {
        self.conn
            .execute("UPDATE fleet_outbox SET ban_rev = ?1 WHERE id = 1", [rev])
            .map(drop)
            .map_err(|source| self.query_error("recording the last fleet ban decision", source))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(n: usize) -> AlertRow {
        AlertRow {
            time: "2026-12-05T00:00:00Z".into(),
            kind: "ban".into(),
            item_id: format!("192.0.2.{n}"),
            collector: "port-scan".into(),
            what: serde_json::json!({"offence": 1}),
        }
    }

    #[test]
    fn the_outbox_reads_after_the_confirmed_position_and_caps_with_a_gap() {
        let mut store = Store::open_in_memory().unwrap();
        let rows: Vec<AlertRow> = (1..=10).map(row).collect();
        store.apply(&[], &rows).unwrap();
        let outbox = store.outbox(77).unwrap();
        assert_eq!((outbox.epoch, outbox.confirmed_seq, outbox.last_seq, outbox.backlog()), (77, 0, 10, 10));
        // The epoch is set once.
        assert_eq!(store.outbox(99).unwrap().epoch, 77);
        let unsent = store.alerts_after(0, 3).unwrap();
        assert_eq!(unsent.iter().map(|a| a.seq).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(unsent[1].row, row(2));
        store.confirm_alerts(3).unwrap();
        // A late confirmation of an earlier alert never moves the position back.
        store.confirm_alerts(2).unwrap();
        assert_eq!(store.outbox(0).unwrap().confirmed_seq, 3);
        assert_eq!(store.cap_backlog(7, "t").unwrap(), None);
        let gap = store.cap_backlog(4, "t1").unwrap().unwrap();
        assert_eq!((gap.from, gap.to), (4, 6));
        let outbox = store.outbox(0).unwrap();
        assert_eq!((outbox.confirmed_seq, outbox.backlog()), (6, 4));
        assert_eq!(store.alerts_after(outbox.confirmed_seq, 100).unwrap()[0].seq, 7);
        assert_eq!(store.unsent_gaps().unwrap(), vec![gap]);
        store.gap_sent(4).unwrap();
        assert!(store.unsent_gaps().unwrap().is_empty());
        store.set_ban_rev(12).unwrap();
        assert_eq!(store.outbox(0).unwrap().ban_rev, 12);
    }
}
