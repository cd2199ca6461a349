//! `dmls_last_resort_leaf`: Send Groups we joined through our last-resort key package whose
//! leaf the owner has not replaced yet (docs/PROTOCOL.md "Key packages").

use rusqlite::{Connection, OptionalExtension, params};

use super::CachedSql as _;
use crate::engine::error::EngineError;

/// Records that we joined `gid` with the leaf whose encryption key is `encryption_key`.
pub(crate) fn insert(
    conn: &Connection,
    gid: &[u8; 32],
    encryption_key: &[u8],
) -> Result<(), EngineError> {
    conn.exec_cached(
        "INSERT INTO dmls_last_resort_leaf(group_id, encryption_key) VALUES (?1, ?2)
         ON CONFLICT(group_id) DO UPDATE SET encryption_key = excluded.encryption_key",
        params![&gid[..], encryption_key],
    )?;
    Ok(())
}

/// The encryption key of the last-resort leaf we still hold in `gid`, if any.
pub(crate) fn get(conn: &Connection, gid: &[u8; 32]) -> Result<Option<Vec<u8>>, EngineError> {
    Ok(conn
        .row_cached(
            "SELECT encryption_key FROM dmls_last_resort_leaf WHERE group_id = ?1",
            [&gid[..]],
            |r| r.get(0),
        )
        .optional()?)
}

/// Our leaf in `gid` was replaced (or we left it): nothing more to refresh.
pub(crate) fn delete(conn: &Connection, gid: &[u8; 32]) -> Result<(), EngineError> {
    conn.exec_cached(
        "DELETE FROM dmls_last_resort_leaf WHERE group_id = ?1",
        [&gid[..]],
    )?;
    Ok(())
}
