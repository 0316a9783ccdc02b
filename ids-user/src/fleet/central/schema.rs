//! The central database's schema, the same tables on SQLite and PostgreSQL (docs/fleet-central.md).
//!
//! Versioned as `store/mod.rs` does it: `MIGRATIONS[n]` takes a database from version `n` to
//! `n + 1` in its own transaction; never edit a released one, append. SQLite keeps the version
//! in `PRAGMA user_version`, PostgreSQL in the one-row table `schema_version` (and takes an
//! advisory lock while migrating, since several collectors may start at once on one database).

/// One migration, in each dialect.
pub(super) struct Migration {
    pub(super) sqlite: &'static str,
    pub(super) postgres: &'static str,
}

pub(super) const MIGRATIONS: &[Migration] = &[
    // 0 → 1
    Migration {
        sqlite: "CREATE TABLE alerts (
                 id       INTEGER PRIMARY KEY AUTOINCREMENT,
                 host     TEXT NOT NULL,
                 hostname TEXT NOT NULL,
                 epoch    INTEGER NOT NULL,
                 seq      INTEGER NOT NULL,
                 time     TEXT NOT NULL,
                 kind     TEXT NOT NULL,
                 alert    TEXT NOT NULL,
                 attacker TEXT,
                 received TEXT NOT NULL,
                 UNIQUE (host, epoch, seq)
             );
             CREATE INDEX alerts_by_attacker ON alerts (attacker, received) WHERE attacker IS NOT NULL;
             CREATE INDEX alerts_by_time ON alerts (time);
             CREATE TABLE hosts (
                 host                 TEXT PRIMARY KEY,
                 hostname             TEXT NOT NULL,
                 first_seen           TEXT NOT NULL,
                 last_seen            TEXT NOT NULL,
                 last_heartbeat       TEXT,
                 heartbeat_interval_s INTEGER,
                 epoch                INTEGER,
                 last_seq             INTEGER NOT NULL DEFAULT 0,
                 backlog              INTEGER NOT NULL DEFAULT 0,
                 aggregate            TEXT,
                 status               TEXT NOT NULL DEFAULT 'ok' CHECK (status IN ('ok', 'silent')),
                 heartbeat            TEXT
             ) WITHOUT ROWID;
             CREATE TABLE gaps (
                 host     TEXT NOT NULL,
                 epoch    INTEGER NOT NULL,
                 from_seq INTEGER NOT NULL,
                 to_seq   INTEGER NOT NULL,
                 time     TEXT NOT NULL,
                 UNIQUE (host, epoch, from_seq)
             );
             CREATE TABLE fleet_bans (
                 rev       INTEGER PRIMARY KEY AUTOINCREMENT,
                 action    TEXT NOT NULL CHECK (action IN ('ban', 'unban')),
                 net       TEXT NOT NULL,
                 reason    TEXT NOT NULL,
                 origin    TEXT NOT NULL,
                 expires   TEXT,
                 time      TEXT NOT NULL,
                 published INTEGER NOT NULL DEFAULT 0
             );
             CREATE INDEX fleet_bans_by_net ON fleet_bans (net, rev);
             CREATE INDEX fleet_bans_unpublished ON fleet_bans (rev) WHERE published = 0;",
        postgres: "CREATE TABLE alerts (
                 id       BIGSERIAL PRIMARY KEY,
                 host     TEXT NOT NULL,
                 hostname TEXT NOT NULL,
                 epoch    BIGINT NOT NULL,
                 seq      BIGINT NOT NULL,
                 time     TEXT NOT NULL,
                 kind     TEXT NOT NULL,
                 alert    TEXT NOT NULL,
                 attacker TEXT,
                 received TEXT NOT NULL,
                 UNIQUE (host, epoch, seq)
             );
             CREATE INDEX alerts_by_attacker ON alerts (attacker, received) WHERE attacker IS NOT NULL;
             CREATE INDEX alerts_by_time ON alerts (time);
             CREATE TABLE hosts (
                 host                 TEXT PRIMARY KEY,
                 hostname             TEXT NOT NULL,
                 first_seen           TEXT NOT NULL,
                 last_seen            TEXT NOT NULL,
                 last_heartbeat       TEXT,
                 heartbeat_interval_s BIGINT,
                 epoch                BIGINT,
                 last_seq             BIGINT NOT NULL DEFAULT 0,
                 backlog              BIGINT NOT NULL DEFAULT 0,
                 aggregate            TEXT,
                 status               TEXT NOT NULL DEFAULT 'ok' CHECK (status IN ('ok', 'silent')),
                 heartbeat            TEXT
             );
             CREATE TABLE gaps (
                 host     TEXT NOT NULL,
                 epoch    BIGINT NOT NULL,
                 from_seq BIGINT NOT NULL,
                 to_seq   BIGINT NOT NULL,
                 time     TEXT NOT NULL,
                 UNIQUE (host, epoch, from_seq)
             );
             CREATE TABLE fleet_bans (
                 rev       BIGSERIAL PRIMARY KEY,
                 action    TEXT NOT NULL CHECK (action IN ('ban', 'unban')),
                 net       TEXT NOT NULL,
                 reason    TEXT NOT NULL,
                 origin    TEXT NOT NULL,
                 expires   TEXT,
                 time      TEXT NOT NULL,
                 published BOOLEAN NOT NULL DEFAULT FALSE
             );
             CREATE INDEX fleet_bans_by_net ON fleet_bans (net, rev);
             CREATE INDEX fleet_bans_unpublished ON fleet_bans (rev) WHERE NOT published;",
    },
    // 1 → 2: the console (docs/console.md): alerts get their severity and rule as columns (filters
    // and the timeline read them without parsing JSON), indexes for the console's filters, and
    // the console's users, sessions and API tokens.
    Migration {
        sqlite: "ALTER TABLE alerts ADD COLUMN severity TEXT NOT NULL DEFAULT 'medium';
             ALTER TABLE alerts ADD COLUMN rule TEXT;
             UPDATE alerts SET
                 rule = CASE WHEN kind = 'detect' THEN json_extract(alert, '$.rule') END,
                 severity = CASE
                     WHEN kind = 'detect' THEN COALESCE(json_extract(alert, '$.severity'), 'medium')
                     WHEN kind IN ('sensor_miss', 'remote_check', 'host_silent') THEN 'high'
                     WHEN kind IN ('ban', 'host_back') THEN 'low'
                     ELSE 'medium' END
             WHERE json_valid(alert);
             CREATE INDEX alerts_by_host ON alerts (host, id);
             CREATE INDEX alerts_by_kind ON alerts (kind, id);
             CREATE INDEX alerts_by_severity ON alerts (severity, id);
             CREATE INDEX alerts_by_rule ON alerts (rule, id) WHERE rule IS NOT NULL;
             CREATE TABLE console_users (
                 name    TEXT PRIMARY KEY,
                 hash    TEXT NOT NULL,
                 created TEXT NOT NULL
             );
             CREATE TABLE console_sessions (
                 id        TEXT PRIMARY KEY,
                 user_name TEXT NOT NULL,
                 csrf      TEXT NOT NULL,
                 created   TEXT NOT NULL,
                 expires   TEXT NOT NULL
             );
             CREATE INDEX console_sessions_by_expiry ON console_sessions (expires);
             CREATE TABLE console_tokens (
                 name    TEXT PRIMARY KEY,
                 hash    TEXT NOT NULL UNIQUE,
                 created TEXT NOT NULL
             );",
        postgres: "ALTER TABLE alerts ADD COLUMN severity TEXT NOT NULL DEFAULT 'medium';
             ALTER TABLE alerts ADD COLUMN rule TEXT;
             UPDATE alerts SET
                 rule = CASE WHEN kind = 'detect' THEN alert::jsonb->>'rule' END,
                 severity = CASE
                     WHEN kind = 'detect' THEN COALESCE(alert::jsonb->>'severity', 'medium')
                     WHEN kind IN ('sensor_miss', 'remote_check', 'host_silent') THEN 'high'
                     WHEN kind IN ('ban', 'host_back') THEN 'low'
                     ELSE 'medium' END;
             CREATE INDEX alerts_by_host ON alerts (host, id);
             CREATE INDEX alerts_by_kind ON alerts (kind, id);
             CREATE INDEX alerts_by_severity ON alerts (severity, id);
             CREATE INDEX alerts_by_rule ON alerts (rule, id) WHERE rule IS NOT NULL;
             CREATE TABLE console_users (
                 name    TEXT PRIMARY KEY,
                 hash    TEXT NOT NULL,
                 created TEXT NOT NULL
             );
             CREATE TABLE console_sessions (
                 id        TEXT PRIMARY KEY,
                 user_name TEXT NOT NULL,
                 csrf      TEXT NOT NULL,
                 created   TEXT NOT NULL,
                 expires   TEXT NOT NULL
             );
             CREATE INDEX console_sessions_by_expiry ON console_sessions (expires);
             CREATE TABLE console_tokens (
                 name    TEXT PRIMARY KEY,
                 hash    TEXT NOT NULL UNIQUE,
                 created TEXT NOT NULL
             );",
    },
];

/// Serialises migrations between collectors starting together on one PostgreSQL database
/// (an arbitrary constant: "ids-fleet" in ASCII).
pub(super) const POSTGRES_MIGRATION_LOCK: i64 = 0x6964_732d_666c_6565;
