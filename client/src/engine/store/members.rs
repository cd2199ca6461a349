//! Members of a DGroup that are not (or no longer) in our Send Group: `dmls_removed` (removed
//! members, `pending` while still in our own Send Group) and `dmls_missing` (config members no
//! valid key package could be claimed for, docs/PROTOCOL.md "Late add").

use rusqlite::{Connection, params};

use super::CachedSql as _;
use crate::engine::error::EngineError;
use crate::engine::ids::DGroupId;

/// Members known to be removed from `d`, with whether their removal from our Send Group is
/// still pending; by member.
pub(crate) fn removed(conn: &Connection, d: &DGroupId) -> Result<Vec<(String, bool)>, EngineError> {
    Ok(conn.rows_cached(
        "SELECT member, pending FROM dmls_removed WHERE dgroup_id = ?1 ORDER BY member",
        [d.0.as_slice()],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?)
}

/// Records that `member` was removed from `d`, its removal from our Send Group pending;
/// whether that is news.
pub(crate) fn insert_removed(
    conn: &Connection,
    d: &DGroupId,
    member: &str,
) -> Result<bool, EngineError> {
    let n = conn.exec_cached(
        "INSERT OR IGNORE INTO dmls_removed(dgroup_id, member, pending) VALUES (?1, ?2, 1)",
        params![d.0.as_slice(), member],
    )?;
    Ok(n > 0)
}

/// Our commit removed every pending member of `d`.
pub(crate) fn removals_done(conn: &Connection, d: &DGroupId) -> Result<(), EngineError> {
    conn.exec_cached(
        "UPDATE dmls_removed SET pending = 0 WHERE dgroup_id = ?1",
        [d.0.as_slice()],
    )?;
    Ok(())
}

/// DGroups with removals still pending in our Send Group.
pub(crate) fn with_pending_removals(conn: &Connection) -> Result<Vec<DGroupId>, EngineError> {
    let ids: Vec<Vec<u8>> = conn.rows_cached(
        "SELECT DISTINCT dgroup_id FROM dmls_removed WHERE pending = 1",
        [],
        |r| r.get(0),
    )?;
    ids.iter().map(|id| DGroupId::from_slice(id)).collect()
}

/// Members recorded as missing from our Send Group of `d`, by member.
pub(crate) fn missing(conn: &Connection, d: &DGroupId) -> Result<Vec<String>, EngineError> {
    Ok(conn.rows_cached(
        "SELECT member FROM dmls_missing WHERE dgroup_id = ?1 ORDER BY member",
        [d.0.as_slice()],
        |r| r.get(0),
    )?)
}

/// DGroups with members recorded as missing, by id.
pub(crate) fn with_missing(conn: &Connection) -> Result<Vec<DGroupId>, EngineError> {
    let ids: Vec<Vec<u8>> = conn.rows_cached(
        "SELECT DISTINCT dgroup_id FROM dmls_missing ORDER BY dgroup_id",
        [],
        |r| r.get(0),
    )?;
    ids.iter().map(|id| DGroupId::from_slice(id)).collect()
}

/// Records `member` as missing (again).
pub(crate) fn insert_missing(
    conn: &Connection,
    d: &DGroupId,
    member: &str,
) -> Result<(), EngineError> {
    conn.exec_cached(
        "INSERT OR IGNORE INTO dmls_missing(dgroup_id, member) VALUES (?1, ?2)",
        params![d.0.as_slice(), member],
    )?;
    Ok(())
}

/// `member` is no longer missing (it was added).
pub(crate) fn delete_missing(
    conn: &Connection,
    d: &DGroupId,
    member: &str,
) -> Result<(), EngineError> {
    conn.exec_cached(
        "DELETE FROM dmls_missing WHERE dgroup_id = ?1 AND member = ?2",
        params![d.0.as_slice(), member],
    )?;
    Ok(())
}

/// Forgets every missing member of `d`.
pub(crate) fn clear_missing(conn: &Connection, d: &DGroupId) -> Result<(), EngineError> {
    conn.exec_cached(
        "DELETE FROM dmls_missing WHERE dgroup_id = ?1",
        [d.0.as_slice()],
    )?;
    Ok(())
}

/// The members known to be removed from `d`, by member.
pub(crate) fn removed_names(conn: &Connection, d: &DGroupId) -> Result<Vec<String>, EngineError> {
    Ok(removed(conn, d)?.into_iter().map(|r| r.0).collect())
}
