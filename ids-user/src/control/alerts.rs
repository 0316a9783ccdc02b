//! The `alerts` request of the control protocol, answered on the store: by the daemon for its
//! clients, and by `ids alerts` itself when no daemon runs.
use serde_json::{Value, json};

use crate::alert::Severity;
use crate::store::{AlertFilter, AlertRow, Store, StoredAlert};

/// The alerts `filter` selects, at least as severe as `least` when given, as the answer's `data`:
/// a list of `{"id", "time", "kind", "severity", "source", "item", "what"}`, oldest first.
pub(crate) fn rows(
    store: &Store,
    limit: usize,
    filter: &AlertFilter,
    least: Option<Severity>,
) -> Result<Value, String> {
    let severe_enough = |row: &AlertRow| least.is_none_or(|least| row.severity() >= least);
    let keep: Option<&dyn Fn(&AlertRow) -> bool> = least.is_some().then_some(&severe_enough);
    let alerts = store.alerts_matching(limit, filter, keep).map_err(|e| e.to_string())?;
    Ok(Value::Array(alerts.iter().map(row).collect()))
}

fn row(alert: &StoredAlert) -> Value {
    let StoredAlert { id, row } = alert;
    json!({
        "id": id,
        "time": row.time,
        "kind": row.kind,
        "severity": row.severity().name(),
        "source": row.collector,
        "item": row.item_id,
        "what": row.what,
    })
}
