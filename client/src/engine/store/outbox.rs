//! `dmls_outbox`: the durable outbox, effects encoded as MessagePack.

use rusqlite::{Connection, OptionalExtension};

use super::CachedSql as _;
use crate::engine::error::EngineError;
use crate::engine::{Effect, OutboxItem};

fn decode(id: i64, bytes: &[u8]) -> Result<Effect, EngineError> {
    rmp_serde::from_slice(bytes)
        .map_err(|e| EngineError::Internal(format!("outbox item {id} unreadable: {e}")))
}

/// Appends an effect; returns its id.
pub(crate) fn push(conn: &Connection, effect: &Effect) -> Result<u64, EngineError> {
    let bytes = rmp_serde::to_vec(effect)
        .map_err(|e| EngineError::Internal(format!("cannot encode outbox effect: {e}")))?;
    conn.exec_cached("INSERT INTO dmls_outbox(effect) VALUES (?1)", [bytes])?;
    Ok(conn.last_insert_rowid() as u64)
}

/// Everything in the outbox, oldest first.
pub(crate) fn all(conn: &Connection) -> Result<Vec<OutboxItem>, EngineError> {
    let rows: Vec<(i64, Vec<u8>)> =
        conn.rows_cached("SELECT id, effect FROM dmls_outbox ORDER BY id", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
    rows.into_iter()
        .map(|(id, bytes)| {
            Ok(OutboxItem {
                id: id as u64,
                effect: decode(id, &bytes)?,
            })
        })
        .collect()
}

/// One outbox item, if still pending.
pub(crate) fn get(conn: &Connection, id: u64) -> Result<Option<Effect>, EngineError> {
    let bytes: Option<Vec<u8>> = conn
        .row_cached(
            "SELECT effect FROM dmls_outbox WHERE id = ?1",
            [id as i64],
            |r| r.get(0),
        )
        .optional()?;
    bytes.map(|b| decode(id as i64, &b)).transpose()
}

/// Removes an item (performed or answered); idempotent.
pub(crate) fn delete(conn: &Connection, id: u64) -> Result<(), EngineError> {
    conn.exec_cached("DELETE FROM dmls_outbox WHERE id = ?1", [id as i64])?;
    Ok(())
}
