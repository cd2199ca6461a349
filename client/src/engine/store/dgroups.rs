//! `dmls_dgroup`: the DGroups we know, with their config.

use rusqlite::{Connection, OptionalExtension, params};

use super::CachedSql as _;
use crate::engine::error::EngineError;
use crate::engine::ids::DGroupId;

/// Stores a DGroup's config (encoded) and name.
pub(crate) fn insert(
    conn: &Connection,
    d: &DGroupId,
    config: &[u8],
    name: &str,
) -> Result<(), EngineError> {
    conn.exec_cached(
        "INSERT INTO dmls_dgroup(dgroup_id, config, name) VALUES (?1, ?2, ?3)",
        params![d.0.as_slice(), config, name],
    )?;
    Ok(())
}

/// The encoded config of a DGroup, and whether we were removed from it.
pub(crate) fn config(
    conn: &Connection,
    d: &DGroupId,
) -> Result<Option<(Vec<u8>, bool)>, EngineError> {
    Ok(conn
        .row_cached(
            "SELECT config, we_removed FROM dmls_dgroup WHERE dgroup_id = ?1",
            [d.0.as_slice()],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?)
}

/// The name of a DGroup.
pub(crate) fn name(conn: &Connection, d: &DGroupId) -> Result<Option<String>, EngineError> {
    Ok(conn
        .row_cached(
            "SELECT name FROM dmls_dgroup WHERE dgroup_id = ?1",
            [d.0.as_slice()],
            |r| r.get(0),
        )
        .optional()?)
}

/// Every DGroup, in the order we learned them.
pub(crate) fn all(conn: &Connection) -> Result<Vec<DGroupId>, EngineError> {
    ids(conn, "SELECT dgroup_id FROM dmls_dgroup ORDER BY rowid")
}

/// Every DGroup we were not removed from, in the order we learned them.
pub(crate) fn not_left(conn: &Connection) -> Result<Vec<DGroupId>, EngineError> {
    ids(
        conn,
        "SELECT dgroup_id FROM dmls_dgroup WHERE we_removed = 0 ORDER BY rowid",
    )
}

fn ids(conn: &Connection, sql: &str) -> Result<Vec<DGroupId>, EngineError> {
    let ids: Vec<Vec<u8>> = conn.rows_cached(sql, [], |r| r.get(0))?;
    ids.iter().map(|id| DGroupId::from_slice(id)).collect()
}

/// Records that we left `d` at `now_ms` (docs/PROTOCOL.md "Leave"); it counts as removed too.
pub(crate) fn set_left(conn: &Connection, d: &DGroupId, now_ms: u64) -> Result<(), EngineError> {
    conn.exec_cached(
        "UPDATE dmls_dgroup SET we_removed = 1, left_ms = ?2 WHERE dgroup_id = ?1",
        params![d.0.as_slice(), now_ms as i64],
    )?;
    Ok(())
}

/// When we left `d` (our clock), if we did.
pub(crate) fn left_ms(conn: &Connection, d: &DGroupId) -> Result<Option<u64>, EngineError> {
    Ok(conn
        .row_cached(
            "SELECT left_ms FROM dmls_dgroup WHERE dgroup_id = ?1",
            [d.0.as_slice()],
            |r| r.get::<_, Option<i64>>(0),
        )
        .optional()?
        .flatten()
        .map(|t| t as u64))
}

/// A DGroup's name register (docs/PROTOCOL.md "Group name"): its clock, who set it (empty for
/// the config's name) and the name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NameRegister {
    pub(crate) clock: u64,
    pub(crate) set_by: String,
    pub(crate) name: String,
}

/// The name register of `d`.
pub(crate) fn name_register(
    conn: &Connection,
    d: &DGroupId,
) -> Result<Option<NameRegister>, EngineError> {
    Ok(conn
        .row_cached(
            "SELECT name_clock, name_set_by, name FROM dmls_dgroup WHERE dgroup_id = ?1",
            [d.0.as_slice()],
            |r| {
                Ok(NameRegister {
                    clock: r.get::<_, i64>(0)? as u64,
                    set_by: r.get(1)?,
                    name: r.get(2)?,
                })
            },
        )
        .optional()?)
}

/// Replaces the name register of `d`.
pub(crate) fn set_name(
    conn: &Connection,
    d: &DGroupId,
    r: &NameRegister,
) -> Result<(), EngineError> {
    conn.exec_cached(
        "UPDATE dmls_dgroup SET name_clock = ?2, name_set_by = ?3, name = ?4 WHERE dgroup_id = ?1",
        params![d.0.as_slice(), r.clock as i64, r.set_by, r.name],
    )?;
    Ok(())
}

/// Records that we were removed from `d`; whether that is news.
pub(crate) fn set_we_removed(conn: &Connection, d: &DGroupId) -> Result<bool, EngineError> {
    let n = conn.exec_cached(
        "UPDATE dmls_dgroup SET we_removed = 1 WHERE dgroup_id = ?1 AND we_removed = 0",
        [d.0.as_slice()],
    )?;
    Ok(n > 0)
}

/// Replaces the encoded config of `d` (docs/PROTOCOL.md "DGroup configuration": it only grows).
pub(crate) fn set_config(
    conn: &Connection,
    d: &DGroupId,
    config: &[u8],
) -> Result<(), EngineError> {
    conn.exec_cached(
        "UPDATE dmls_dgroup SET config = ?2 WHERE dgroup_id = ?1",
        params![d.0.as_slice(), config],
    )?;
    Ok(())
}

/// At most this many Welcomes are held per DGroup; the oldest go first.
pub(crate) const MAX_HELD_WELCOMES: i64 = 32;

/// Holds a Welcome of `d` posted by `from` until the config we hold admits it.
pub(crate) fn hold_welcome(
    conn: &Connection,
    d: &DGroupId,
    from: &str,
    data: &[u8],
) -> Result<(), EngineError> {
    conn.exec_cached(
        "INSERT INTO dmls_waiting_welcome(dgroup_id, from_account, data) VALUES (?1, ?2, ?3)",
        params![d.0.as_slice(), from, data],
    )?;
    conn.exec_cached(
        "DELETE FROM dmls_waiting_welcome WHERE dgroup_id = ?1 AND id NOT IN \
         (SELECT id FROM dmls_waiting_welcome WHERE dgroup_id = ?1 ORDER BY id DESC LIMIT ?2)",
        params![d.0.as_slice(), MAX_HELD_WELCOMES],
    )?;
    Ok(())
}

/// Takes (deletes and returns) the held Welcomes of `d`, oldest first: `(from, data)`.
pub(crate) fn take_held_welcomes(
    conn: &Connection,
    d: &DGroupId,
) -> Result<Vec<(String, Vec<u8>)>, EngineError> {
    let rows = conn.rows_cached(
        "SELECT from_account, data FROM dmls_waiting_welcome WHERE dgroup_id = ?1 ORDER BY id",
        [d.0.as_slice()],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    conn.exec_cached(
        "DELETE FROM dmls_waiting_welcome WHERE dgroup_id = ?1",
        [d.0.as_slice()],
    )?;
    Ok(rows)
}

/// How many Welcomes of `d` are held.
pub(crate) fn held_welcome_count(conn: &Connection, d: &DGroupId) -> Result<u64, EngineError> {
    let n: i64 = conn.row_cached(
        "SELECT COUNT(*) FROM dmls_waiting_welcome WHERE dgroup_id = ?1",
        [d.0.as_slice()],
        |r| r.get(0),
    )?;
    Ok(n as u64)
}
