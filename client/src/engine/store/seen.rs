//! `dmls_seen`: hashes of messages already processed, ignored for good, or sent by us.

use rusqlite::{Connection, OptionalExtension};

use super::CachedSql as _;
use crate::engine::error::EngineError;

/// Whether a message was seen already.
pub(crate) fn contains(conn: &Connection, hash: &[u8; 32]) -> Result<bool, EngineError> {
    Ok(conn
        .row_cached(
            "SELECT 1 FROM dmls_seen WHERE hash = ?1",
            [hash.as_slice()],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

/// Whether a message was seen already or is waiting (`dmls_waiting`): one query.
pub(crate) fn seen_or_waiting(conn: &Connection, hash: &[u8; 32]) -> Result<bool, EngineError> {
    Ok(conn.row_cached(
        "SELECT EXISTS (SELECT 1 FROM dmls_seen WHERE hash = ?1)
             OR EXISTS (SELECT 1 FROM dmls_waiting WHERE hash = ?1)",
        [hash.as_slice()],
        |r| r.get::<_, bool>(0),
    )?)
}

/// Records a message as seen.
pub(crate) fn insert(conn: &Connection, hash: &[u8; 32]) -> Result<(), EngineError> {
    conn.exec_cached(
        "INSERT OR IGNORE INTO dmls_seen(hash) VALUES (?1)",
        [hash.as_slice()],
    )?;
    Ok(())
}
