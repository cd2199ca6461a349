//! `dmls_contact`, `dmls_key_change` and `dmls_held_welcome`: identity keys pinned per client
//! id, keys seen that differ from a pin, and the Welcomes refused for such a key
//! (docs/PROTOCOL.md "Pinning").

use rusqlite::{Connection, OptionalExtension as _, params};

use super::CachedSql as _;
use crate::engine::error::EngineError;

/// A pinned identity key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PinRow {
    pub(crate) client_id: String,
    pub(crate) key: Vec<u8>,
    pub(crate) first_seen_ms: u64,
    pub(crate) first_seen_where: String,
    pub(crate) verified_ms: Option<u64>,
}

/// A key seen for a pinned client id that is not its pinned key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ChangeRow {
    pub(crate) client_id: String,
    pub(crate) new_key: Vec<u8>,
    pub(crate) seen_ms: u64,
    pub(crate) seen_where: String,
}

/// Length of an Ed25519 public key, the only identity key of our ciphersuite.
const KEY_LEN: usize = 32;

/// A stored key must be an Ed25519 public key: anything else is a damaged row, refused
/// rather than compared.
fn checked(client_id: &str, key: Vec<u8>) -> Result<Vec<u8>, EngineError> {
    if key.len() != KEY_LEN {
        return Err(EngineError::UnreadableState(format!(
            "the contact {client_id:?} has an identity key of {} bytes, not {KEY_LEN}",
            key.len()
        )));
    }
    Ok(key)
}

fn pin_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<PinRow> {
    Ok(PinRow {
        client_id: r.get(0)?,
        key: r.get(1)?,
        first_seen_ms: r.get::<_, i64>(2)? as u64,
        first_seen_where: r.get(3)?,
        verified_ms: r.get::<_, Option<i64>>(4)?.map(|v| v as u64),
    })
}

/// The pin of `client_id`, if any.
pub(crate) fn get(conn: &Connection, client_id: &str) -> Result<Option<PinRow>, EngineError> {
    conn.row_cached(
        "SELECT client_id, key, first_seen_ms, first_seen_where, verified_ms
         FROM dmls_contact WHERE client_id = ?1",
        [client_id],
        pin_row,
    )
    .optional()?
    .map(|mut p| {
        p.key = checked(&p.client_id, std::mem::take(&mut p.key))?;
        Ok(p)
    })
    .transpose()
}

/// The pinned key of `client_id`, if any (the hot path: one per received commit).
pub(crate) fn key(conn: &Connection, client_id: &str) -> Result<Option<Vec<u8>>, EngineError> {
    conn.row_cached(
        "SELECT key FROM dmls_contact WHERE client_id = ?1",
        [client_id],
        |r| r.get(0),
    )
    .optional()?
    .map(|k| checked(client_id, k))
    .transpose()
}

/// Every pin, by client id.
pub(crate) fn all(conn: &Connection) -> Result<Vec<PinRow>, EngineError> {
    conn.rows_cached(
        "SELECT client_id, key, first_seen_ms, first_seen_where, verified_ms
         FROM dmls_contact ORDER BY client_id",
        [],
        pin_row,
    )?
    .into_iter()
    .map(|mut p| {
        p.key = checked(&p.client_id, std::mem::take(&mut p.key))?;
        Ok(p)
    })
    .collect()
}

/// Pins `key` for `client_id` (replacing any pin, unverified) and forgets the key changes
/// recorded for it.
pub(crate) fn pin(
    conn: &Connection,
    client_id: &str,
    key: &[u8],
    now_ms: u64,
    seen_where: &str,
) -> Result<(), EngineError> {
    conn.exec_cached(
        "INSERT OR REPLACE INTO dmls_contact(client_id, key, first_seen_ms, first_seen_where,
             verified_ms) VALUES (?1, ?2, ?3, ?4, NULL)",
        params![client_id, key, now_ms as i64, seen_where],
    )?;
    conn.exec_cached(
        "DELETE FROM dmls_key_change WHERE client_id = ?1",
        [client_id],
    )?;
    Ok(())
}

/// Marks the pin of `client_id` verified at `now_ms` if its key is still `key`. Returns
/// whether it did.
pub(crate) fn set_verified(
    conn: &Connection,
    client_id: &str,
    key: &[u8],
    now_ms: u64,
) -> Result<bool, EngineError> {
    Ok(conn.exec_cached(
        "UPDATE dmls_contact SET verified_ms = ?3 WHERE client_id = ?1 AND key = ?2",
        params![client_id, key, now_ms as i64],
    )? == 1)
}

/// Records that `new_key` was seen for `client_id` (pinned to another key). Returns whether
/// this key was not recorded before.
pub(crate) fn record_change(
    conn: &Connection,
    client_id: &str,
    new_key: &[u8],
    now_ms: u64,
    seen_where: &str,
) -> Result<bool, EngineError> {
    Ok(conn.exec_cached(
        "INSERT OR IGNORE INTO dmls_key_change(client_id, new_key, seen_ms, seen_where)
         VALUES (?1, ?2, ?3, ?4)",
        params![client_id, new_key, now_ms as i64, seen_where],
    )? == 1)
}

/// The key changes recorded, oldest first.
pub(crate) fn changes(conn: &Connection) -> Result<Vec<ChangeRow>, EngineError> {
    Ok(conn.rows_cached(
        "SELECT client_id, new_key, seen_ms, seen_where FROM dmls_key_change
         ORDER BY seen_ms, client_id",
        [],
        |r| {
            Ok(ChangeRow {
                client_id: r.get(0)?,
                new_key: r.get(1)?,
                seen_ms: r.get::<_, i64>(2)? as u64,
                seen_where: r.get(3)?,
            })
        },
    )?)
}

/// Keeps a Welcome refused because its signer `client_id` used `key`, not its pinned key.
pub(crate) fn hold_welcome(
    conn: &Connection,
    client_id: &str,
    key: &[u8],
    from: &str,
    data: &[u8],
) -> Result<(), EngineError> {
    conn.exec_cached(
        "INSERT INTO dmls_held_welcome(client_id, key, from_id, data) VALUES (?1, ?2, ?3, ?4)",
        params![client_id, key, from, data],
    )?;
    Ok(())
}

/// A Welcome held because its signer's key is not the pinned one.
pub(crate) struct HeldWelcome {
    /// The signer's key.
    pub(crate) key: Vec<u8>,
    /// The relay account that posted it.
    pub(crate) from: String,
    /// The Welcome (MLSMessage bytes).
    pub(crate) data: Vec<u8>,
}

/// Takes (deletes and returns) the Welcomes held for `client_id`, oldest first.
pub(crate) fn take_held_welcomes(
    conn: &Connection,
    client_id: &str,
) -> Result<Vec<HeldWelcome>, EngineError> {
    let rows = conn.rows_cached(
        "SELECT key, from_id, data FROM dmls_held_welcome WHERE client_id = ?1 ORDER BY id",
        [client_id],
        |r| {
            Ok(HeldWelcome {
                key: r.get(0)?,
                from: r.get(1)?,
                data: r.get(2)?,
            })
        },
    )?;
    conn.exec_cached(
        "DELETE FROM dmls_held_welcome WHERE client_id = ?1",
        [client_id],
    )?;
    Ok(rows)
}
