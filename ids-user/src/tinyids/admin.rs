//! Presentation of server records for `ids server list|show` (tables; JSON comes from the
//! record's serde form, which leaves the passphrase hash out).
use std::path::Path;

use super::store::Record;

pub fn table(records: &[Record]) -> String {
    let mut out = format!("{:<40} {:<32} {:<28} {:<28} {}\n", "client", "hash", "updated", "last check", "result");
    for record in records {
        let hash: String = record.hash.chars().take(32).collect();
        out += &format!(
            "{:<40} {:<32} {:<28} {:<28} {}\n",
            record.client,
            hash,
            record.updated,
            record.last_check.as_deref().unwrap_or("-"),
            record.last_result.as_deref().unwrap_or("-"),
        );
    }
    out += &format!("{} record(s)\n", records.len());
    out
}

pub fn details(record: &Record) -> String {
    format!(
        "client      {}\nhash        {}\ncreated     {}\nupdated     {}\nlast check  {}\nresult      {}\n",
        record.client,
        record.hash,
        record.created,
        record.updated,
        record.last_check.as_deref().unwrap_or("-"),
        record.last_result.as_deref().unwrap_or("-"),
    )
}

/// Administrative changes are logged on stderr as JSON (who ran them is the host's business).
pub fn log_action(action: &str, client: &str, db: &Path) {
    eprintln!(
        "{}",
        serde_json::json!({"time": crate::store::now(), "admin": action, "client": client, "db": db.display().to_string()})
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listings_never_show_the_passphrase_hash() {
        let record = Record {
            client: "10.0.0.1".into(),
            hash: "ab".into(),
            passphrase: "$argon2id$secret".into(),
            created: "t0".into(),
            updated: "t1".into(),
            last_check: None,
            last_result: None,
        };
        assert!(!table(std::slice::from_ref(&record)).contains("argon2"));
        assert!(!details(&record).contains("argon2"));
        assert!(!serde_json::to_string(&record).unwrap().contains("argon2"));
        assert!(table(&[record]).contains("10.0.0.1"));
    }
}
