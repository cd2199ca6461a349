//! `dmls_psk`: the PSKs we exported or received (PROTOCOL.md "PSK export"); the secrets
//! themselves live in openmls's PSK store.

use rusqlite::{Connection, OptionalExtension, params};

use super::CachedSql as _;
use crate::engine::error::EngineError;
use crate::engine::ids::PskId;

/// Records a PSK, stored at `stored_ms` (our clock, when known); whether it is new.
pub(crate) fn insert(
    conn: &Connection,
    psk: &PskId,
    stored_ms: Option<u64>,
) -> Result<bool, EngineError> {
    let n = conn.exec_cached(
        "INSERT OR IGNORE INTO dmls_psk(psk_id, group_id, epoch, stored_ms) VALUES (?1, ?2, ?3, ?4)",
        params![
            psk.to_bytes().as_slice(),
            psk.group_id.as_slice(),
            psk.epoch as i64,
            stored_ms.map(|t| t as i64)
        ],
    )?;
    Ok(n > 0)
}

/// Whether a PSK is stored.
pub(crate) fn contains(conn: &Connection, psk: &PskId) -> Result<bool, EngineError> {
    Ok(conn
        .row_cached(
            "SELECT 1 FROM dmls_psk WHERE psk_id = ?1",
            [psk.to_bytes().as_slice()],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

/// The latest epoch of Send Group `gid` we hold a PSK for.
pub(crate) fn latest_epoch(conn: &Connection, gid: &[u8; 32]) -> Result<Option<u64>, EngineError> {
    Ok(conn
        .row_cached(
            "SELECT MAX(epoch) FROM dmls_psk WHERE group_id = ?1",
            [gid.as_slice()],
            |r| r.get::<_, Option<i64>>(0),
        )?
        .map(|v| v as u64))
}

/// The epochs of `gid` we hold, oldest first, each with when we stored it (our clock; `None`
/// for rows stored without a clock).
pub(crate) fn held(
    conn: &Connection,
    gid: &[u8; 32],
) -> Result<Vec<(u64, Option<u64>)>, EngineError> {
    Ok(conn.rows_cached(
        "SELECT epoch, stored_ms FROM dmls_psk WHERE group_id = ?1 ORDER BY epoch",
        [gid.as_slice()],
        |r| {
            Ok((
                r.get::<_, i64>(0)?.max(0) as u64,
                r.get::<_, Option<i64>>(1)?.map(|t| t.max(0) as u64),
            ))
        },
    )?)
}

/// PSKs stored without a time get `now_ms`.
pub(crate) fn start_clocks(conn: &Connection, now_ms: u64) -> Result<(), EngineError> {
    conn.exec_cached(
        "UPDATE dmls_psk SET stored_ms = ?1 WHERE stored_ms IS NULL",
        params![now_ms as i64],
    )?;
    Ok(())
}

/// The PSKs of `gid` older than `epoch`.
pub(crate) fn older_than(
    conn: &Connection,
    gid: &[u8; 32],
    epoch: u64,
) -> Result<Vec<PskId>, EngineError> {
    let ids: Vec<Vec<u8>> = conn.rows_cached(
        "SELECT psk_id FROM dmls_psk WHERE group_id = ?1 AND epoch < ?2",
        params![gid.as_slice(), epoch as i64],
        |r| r.get(0),
    )?;
    ids.iter().map(|id| PskId::from_bytes(id)).collect()
}

/// Forgets a PSK.
pub(crate) fn delete(conn: &Connection, psk: &PskId) -> Result<(), EngineError> {
    conn.exec_cached(
        "DELETE FROM dmls_psk WHERE psk_id = ?1",
        [psk.to_bytes().as_slice()],
    )?;
    Ok(())
}
