//! Our own tables next to openmls's, and the transaction helper.
//!
//! openmls_sqlite_storage runs no transactions itself, so every engine operation wraps
//! openmls's writes and ours in one SAVEPOINT that is rolled back on error (`Ctx::savepoint`).

use rusqlite::{Connection, OptionalExtension, params};

use super::EngineError;

/// Our schema, applied idempotently at open. (Key-only tables are `WITHOUT ROWID`, one
/// b-tree instead of two; databases created before that keep their rowid tables, which
/// behave the same.)
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS dmls_meta (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
-- One row per DGroup we know (PROTOCOL.md 'DGroup configuration').
CREATE TABLE IF NOT EXISTS dmls_dgroup (
    dgroup_id BLOB PRIMARY KEY,
    config BLOB NOT NULL,
    name TEXT NOT NULL,
    we_removed INTEGER NOT NULL DEFAULT 0
);
-- One row per Send Group of each DGroup, ours included.
CREATE TABLE IF NOT EXISTS dmls_send_group (
    group_id BLOB PRIMARY KEY,
    dgroup_id BLOB NOT NULL,
    owner TEXT NOT NULL,
    is_own INTEGER NOT NULL,
    joined INTEGER NOT NULL DEFAULT 0,
    joined_epoch INTEGER,
    after_seq INTEGER NOT NULL DEFAULT 0,
    -- set when the owner was removed: epochs beyond this one are not processed
    stop_epoch INTEGER,
    -- removed owner only: its commits are processed up to this epoch (> stop_epoch) because
    -- a commit of another Send Group imports the PSK of that epoch (ENGINE_NOTES.md 'Removal race')
    psk_limit_epoch INTEGER,
    -- removed owner only: 1 once every other member's Send Group we hold has dropped it, so no
    -- commit can import a later epoch of it; its kept commits are deleted, later ones dropped
    closed INTEGER NOT NULL DEFAULT 0,
    -- own group: 'claiming' until members are added, then 'active'
    own_state TEXT,
    last_update_ms INTEGER NOT NULL DEFAULT 0,
    msgs_since_update INTEGER NOT NULL DEFAULT 0,
    sent_in_epoch INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS dmls_send_group_by_dgroup ON dmls_send_group(dgroup_id);
-- Removed members per DGroup; pending = still in our own Send Group.
CREATE TABLE IF NOT EXISTS dmls_removed (
    dgroup_id BLOB NOT NULL,
    member TEXT NOT NULL,
    pending INTEGER NOT NULL,
    PRIMARY KEY (dgroup_id, member)
);
-- Config members missing from our own Send Group (no valid key package could be claimed
-- for them); `Engine::retry_missing_members` claims again and adds them late.
CREATE TABLE IF NOT EXISTS dmls_missing (
    dgroup_id BLOB NOT NULL,
    member TEXT NOT NULL,
    PRIMARY KEY (dgroup_id, member)
);
-- Exported PSKs (the secret itself lives in openmls's PSK store) (PROTOCOL.md 'PSK export').
-- stored_ms: our clock when we stored it (NULL in rows of older versions, and when the
-- operation had no clock); members that have not acknowledged it since are behind (`evict.rs`).
CREATE TABLE IF NOT EXISTS dmls_psk (
    psk_id BLOB PRIMARY KEY,
    group_id BLOB NOT NULL,
    epoch INTEGER NOT NULL,
    stored_ms INTEGER
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS dmls_psk_by_group ON dmls_psk(group_id, epoch);
-- Per DGroup and member: the latest epoch of each Send Group it acknowledged (imported),
-- encoded as `acks.rs` describes. (Earlier versions had one row per member and Send Group in
-- `dmls_ack`; `acks::migrate` moves those here.)
CREATE TABLE IF NOT EXISTS dmls_acks (
    dgroup_id BLOB NOT NULL,
    acker TEXT NOT NULL,
    acks BLOB NOT NULL,
    PRIMARY KEY (dgroup_id, acker)
) WITHOUT ROWID;
-- Received messages that cannot be processed yet (PROTOCOL.md 'Receiving').
-- wait_kind: 'epoch' (wait_epoch), 'psk' (wait_psk), 'welcome', 'proposal' (wait_epoch),
-- 'commit' (wait_epoch: deferred leaf refresh), 'stopped' (beyond a removed owner's limit).
-- id: insertion order (no AUTOINCREMENT: ids only order the rows present, nothing outside
-- refers to them).
CREATE TABLE IF NOT EXISTS dmls_waiting (
    id INTEGER PRIMARY KEY,
    group_id BLOB NOT NULL,
    epoch INTEGER NOT NULL,
    is_commit INTEGER NOT NULL,
    wait_kind TEXT NOT NULL,
    wait_epoch INTEGER,
    wait_psk BLOB,
    hash BLOB NOT NULL UNIQUE,
    data BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS dmls_waiting_by_epoch ON dmls_waiting(group_id, wait_kind, wait_epoch);
-- Only commits waiting for a PSK are looked up by it (most rows are deferred leaf refreshes).
CREATE INDEX IF NOT EXISTS dmls_waiting_by_psk ON dmls_waiting(wait_psk) WHERE wait_psk IS NOT NULL;
-- Hashes of messages already processed or sent, for duplicate detection.
CREATE TABLE IF NOT EXISTS dmls_seen (
    hash BLOB PRIMARY KEY
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dmls_history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    dgroup_id BLOB NOT NULL,
    sender TEXT NOT NULL,
    sent_at_ms INTEGER NOT NULL,
    message_id BLOB NOT NULL,
    content_type TEXT NOT NULL,
    body BLOB NOT NULL,
    epoch INTEGER NOT NULL,
    generation INTEGER
);
CREATE INDEX IF NOT EXISTS dmls_history_by_dgroup ON dmls_history(dgroup_id, id);
-- Durable outbox (effects as MessagePack), performed in id order by the shell.
CREATE TABLE IF NOT EXISTS dmls_outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    effect BLOB NOT NULL
);
";

/// Applies our schema.
pub(crate) fn migrate(conn: &Connection) -> Result<(), EngineError> {
    conn.execute_batch(SCHEMA)?;
    // Columns added after the first release: add them to older databases.
    add_column(conn, "dmls_send_group", "psk_limit_epoch", "INTEGER")?;
    add_column(conn, "dmls_psk", "stored_ms", "INTEGER")?;
    add_column(
        conn,
        "dmls_send_group",
        "closed",
        "INTEGER NOT NULL DEFAULT 0",
    )?;
    super::acks::migrate(conn)
}

/// Adds column `column` of `sql_type` to `table` unless it has it.
fn add_column(
    conn: &Connection,
    table: &str,
    column: &str,
    sql_type: &str,
) -> Result<(), EngineError> {
    let has: bool = conn.query_row(
        "SELECT COUNT(*) FROM pragma_table_info(?1) WHERE name = ?2",
        [table, column],
        |r| r.get::<_, i64>(0).map(|n| n > 0),
    )?;
    if !has {
        conn.execute_batch(&format!(
            "ALTER TABLE {table} ADD COLUMN {column} {sql_type}"
        ))?;
    }
    Ok(())
}

/// `execute` and `query_row` through the connection's statement cache: openmls's storage and
/// our tables run the same few dozen statements for every message, and parsing them again
/// each time cost more than running them.
pub(crate) trait CachedSql {
    /// Like `Connection::execute`, with a cached statement.
    fn exec_cached(&self, sql: &str, p: impl rusqlite::Params) -> rusqlite::Result<usize>;
    /// Like `Connection::query_row`, with a cached statement.
    fn row_cached<T>(
        &self,
        sql: &str,
        p: impl rusqlite::Params,
        f: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T>;
}

impl CachedSql for Connection {
    fn exec_cached(&self, sql: &str, p: impl rusqlite::Params) -> rusqlite::Result<usize> {
        self.prepare_cached(sql)?.execute(p)
    }

    fn row_cached<T>(
        &self,
        sql: &str,
        p: impl rusqlite::Params,
        f: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        self.prepare_cached(sql)?.query_row(p, f)
    }
}

/// Statements kept in the connection's cache (rusqlite's default is 16).
pub(crate) const STATEMENT_CACHE: usize = 256;

/// Reads a meta value.
pub(crate) fn meta_get(conn: &Connection, key: &str) -> Result<Option<Vec<u8>>, EngineError> {
    Ok(conn
        .row_cached("SELECT value FROM dmls_meta WHERE key = ?1", [key], |r| {
            r.get(0)
        })
        .optional()?)
}

/// Writes a meta value.
pub(crate) fn meta_set(conn: &Connection, key: &str, value: &[u8]) -> Result<(), EngineError> {
    conn.exec_cached(
        "INSERT INTO dmls_meta(key, value) VALUES (?1, ?2)
         ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        params![key, value],
    )?;
    Ok(())
}
