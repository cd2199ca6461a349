//! `dmls_meta`: single values of this database (identity, welcome cursor, state codec).

use rusqlite::{Connection, OptionalExtension, params};

use super::CachedSql as _;
use crate::engine::error::EngineError;

/// The values kept in `dmls_meta`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Key {
    /// Our client id (UTF-8).
    ClientId,
    /// Our signature public key (the key pair is in openmls's storage).
    SignaturePublic,
    /// The welcome inbox cursor (big-endian u64).
    WelcomeCursor,
    /// Name of the codec of openmls's state.
    StateCodec,
    /// The KeyPackageRef of our last-resort key package that has not served a Welcome yet;
    /// absent when a new one is to be uploaded (docs/PROTOCOL.md "Key packages").
    LastResortRef,
    /// When the relay took our current last-resort key package (big-endian u64, ms since
    /// the Unix epoch on the shell's clock).
    LastResortUploadedMs,
    /// Present (value 1) when only verified contacts may be added to a DGroup
    /// ([`crate::engine::Engine::set_require_verified`]).
    RequireVerified,
    /// Present once the keys of the members of Send Groups held before contacts were kept
    /// were pinned (at the first open by a version that keeps contacts).
    ContactsBackfilled,
}

impl Key {
    fn name(self) -> &'static str {
        match self {
            Key::ClientId => "client_id",
            Key::SignaturePublic => "signature_public",
            Key::WelcomeCursor => "welcome_cursor",
            Key::StateCodec => "state_codec",
            Key::LastResortRef => "last_resort_ref",
            Key::LastResortUploadedMs => "last_resort_uploaded_ms",
            Key::RequireVerified => "require_verified",
            Key::ContactsBackfilled => "contacts_backfilled",
        }
    }
}

/// Reads a value.
pub(crate) fn get(conn: &Connection, key: Key) -> Result<Option<Vec<u8>>, EngineError> {
    Ok(conn
        .row_cached(
            "SELECT value FROM dmls_meta WHERE key = ?1",
            [key.name()],
            |r| r.get(0),
        )
        .optional()?)
}

/// Writes a value.
pub(crate) fn set(conn: &Connection, key: Key, value: &[u8]) -> Result<(), EngineError> {
    conn.exec_cached(
        "INSERT INTO dmls_meta(key, value) VALUES (?1, ?2)
         ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        params![key.name(), value],
    )?;
    Ok(())
}

/// Deletes a value (nothing when it is absent).
pub(crate) fn delete(conn: &Connection, key: Key) -> Result<(), EngineError> {
    conn.exec_cached("DELETE FROM dmls_meta WHERE key = ?1", [key.name()])?;
    Ok(())
}

/// The welcome inbox cursor (0 when none was read).
pub(crate) fn welcome_cursor(conn: &Connection) -> Result<u64, EngineError> {
    Ok(get(conn, Key::WelcomeCursor)?
        .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0))
}

/// Stores the welcome inbox cursor.
pub(crate) fn set_welcome_cursor(conn: &Connection, id: u64) -> Result<(), EngineError> {
    set(conn, Key::WelcomeCursor, &id.to_be_bytes())
}
