//! `dmls_send_group`: one row per Send Group of each DGroup, ours included.
//!
//! `Ctx` keeps the rows it read during an operation; every function here that writes goes
//! through `Ctx::write_send_group`, which forgets them.

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSqlOutput, ValueRef};
use rusqlite::{Connection, OptionalExtension, ToSql, params};

use super::CachedSql as _;
use crate::engine::FollowedGroup;
use crate::engine::error::EngineError;
use crate::engine::ids::DGroupId;

/// The state of our own Send Group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OwnState {
    /// Created; the members are added once the key-package claim is answered.
    Claiming,
    /// Members added: usable.
    Active,
}

impl OwnState {
    fn name(self) -> &'static str {
        match self {
            OwnState::Claiming => "claiming",
            OwnState::Active => "active",
        }
    }
}

impl ToSql for OwnState {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.name()))
    }
}

impl FromSql for OwnState {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        match value.as_str()? {
            "claiming" => Ok(OwnState::Claiming),
            "active" => Ok(OwnState::Active),
            other => Err(FromSqlError::Other(
                format!("unknown own Send Group state {other:?}").into(),
            )),
        }
    }
}

/// One row of `dmls_send_group`.
#[derive(Debug, Clone)]
pub(crate) struct SendGroupRow {
    pub(crate) group_id: [u8; 32],
    pub(crate) dgroup_id: DGroupId,
    pub(crate) owner: String,
    pub(crate) is_own: bool,
    pub(crate) joined: bool,
    pub(crate) joined_epoch: Option<u64>,
    pub(crate) after_seq: u64,
    pub(crate) stop_epoch: Option<u64>,
    /// Removed owner only: commits are processed up to this epoch (see [`SendGroupRow::limit`]).
    pub(crate) psk_limit_epoch: Option<u64>,
    /// Removed owner only: no commit can import a later epoch of it any more
    /// (`Ctx::close_removed_groups`); nothing beyond the limit is kept.
    pub(crate) closed: bool,
    /// Our own Send Group only.
    pub(crate) own_state: Option<OwnState>,
    pub(crate) last_update_ms: u64,
    pub(crate) msgs_since_update: u64,
    pub(crate) sent_in_epoch: u64,
}

impl SendGroupRow {
    /// For a removed owner's Send Group: the epoch its commits are processed up to (the
    /// commit of epoch `limit - 1` is the last). That is `stop_epoch`, raised to the latest
    /// epoch whose PSK a commit we process imports (docs/PROTOCOL.md "Removal race").
    /// `None` when the owner is not known to be removed.
    pub(crate) fn limit(&self) -> Option<u64> {
        self.stop_epoch
            .map(|s| s.max(self.psk_limit_epoch.unwrap_or(0)))
    }
}

/// `SELECT` of every [`SendGroupRow`] column, followed by `$tail` (a literal, so that the
/// whole statement is a constant).
macro_rules! select_send_group {
    ($tail:literal) => {
        concat!(
            "SELECT group_id, dgroup_id, owner, is_own, joined, joined_epoch, after_seq, \
             stop_epoch, own_state, last_update_ms, msgs_since_update, sent_in_epoch, \
             psk_limit_epoch, closed FROM dmls_send_group ",
            $tail
        )
    };
}

fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SendGroupRow> {
    let gid: Vec<u8> = r.get(0)?;
    let did: Vec<u8> = r.get(1)?;
    let mut group_id = [0u8; 32];
    let mut dgroup_id = [0u8; 16];
    // Rows are written only by us with these lengths; anything else reads as zeros
    // and fails later lookups rather than panicking.
    if gid.len() == 32 {
        group_id.copy_from_slice(&gid);
    }
    if did.len() == 16 {
        dgroup_id.copy_from_slice(&did);
    }
    Ok(SendGroupRow {
        group_id,
        dgroup_id: DGroupId(dgroup_id),
        owner: r.get(2)?,
        is_own: r.get(3)?,
        joined: r.get(4)?,
        joined_epoch: r.get::<_, Option<i64>>(5)?.map(|v| v as u64),
        after_seq: r.get::<_, i64>(6)? as u64,
        stop_epoch: r.get::<_, Option<i64>>(7)?.map(|v| v as u64),
        own_state: r.get(8)?,
        last_update_ms: r.get::<_, i64>(9)? as u64,
        msgs_since_update: r.get::<_, i64>(10)? as u64,
        sent_in_epoch: r.get::<_, i64>(11)? as u64,
        psk_limit_epoch: r.get::<_, Option<i64>>(12)?.map(|v| v as u64),
        closed: r.get(13)?,
    })
}

/// One Send Group.
pub(crate) fn get(conn: &Connection, gid: &[u8; 32]) -> Result<Option<SendGroupRow>, EngineError> {
    Ok(conn
        .row_cached(
            select_send_group!("WHERE group_id = ?1"),
            [gid.as_slice()],
            from_row,
        )
        .optional()?)
}

/// Every Send Group of a DGroup, by owner.
pub(crate) fn of_dgroup(conn: &Connection, d: &DGroupId) -> Result<Vec<SendGroupRow>, EngineError> {
    Ok(conn.rows_cached(
        select_send_group!("WHERE dgroup_id = ?1 ORDER BY owner"),
        [d.0.as_slice()],
        from_row,
    )?)
}

/// Every Send Group of a removed owner that is not closed yet: id, DGroup and owner. Rows
/// whose group id is not 32 bytes are left out.
pub(crate) fn open_removed(
    conn: &Connection,
) -> Result<Vec<([u8; 32], DGroupId, String)>, EngineError> {
    let rows: Vec<(Vec<u8>, Vec<u8>, String)> = conn.rows_cached(
        "SELECT group_id, dgroup_id, owner FROM dmls_send_group
         WHERE stop_epoch IS NOT NULL AND closed = 0",
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    let mut out = Vec::with_capacity(rows.len());
    for (gid, d, owner) in rows {
        let d = DGroupId::from_slice(&d)?;
        if let Some(gid) = super::id32(&gid) {
            out.push((gid, d, owner));
        }
    }
    Ok(out)
}

/// Every Send Group with its relay cursor, in the order we learned them.
pub(crate) fn followed(conn: &Connection) -> Result<Vec<FollowedGroup>, EngineError> {
    Ok(conn.rows_cached(
        "SELECT owner, group_id, after_seq FROM dmls_send_group ORDER BY rowid",
        [],
        |r| {
            Ok(FollowedGroup {
                owner: r.get(0)?,
                group_id: hex::encode(r.get::<_, Vec<u8>>(1)?),
                after_seq: r.get::<_, i64>(2)? as u64,
            })
        },
    )?)
}

/// A new Send Group of DGroup `d`, not joined.
pub(crate) fn insert(
    conn: &Connection,
    gid: &[u8; 32],
    d: &DGroupId,
    owner: &str,
    is_own: bool,
) -> Result<(), EngineError> {
    conn.exec_cached(
        "INSERT INTO dmls_send_group(group_id, dgroup_id, owner, is_own) VALUES (?1, ?2, ?3, ?4)",
        params![gid.as_slice(), d.0.as_slice(), owner, is_own],
    )?;
    Ok(())
}

/// Raises the relay cursor of `gid` to `seq`.
pub(crate) fn advance_cursor(
    conn: &Connection,
    gid: &[u8; 32],
    seq: u64,
) -> Result<(), EngineError> {
    conn.exec_cached(
        "UPDATE dmls_send_group SET after_seq = MAX(after_seq, ?2) WHERE group_id = ?1",
        params![gid.as_slice(), seq as i64],
    )?;
    Ok(())
}

/// Raises the relay cursor of the Send Group `gid` of `owner` to `seq`; whether it exists.
pub(crate) fn advance_cursor_of(
    conn: &Connection,
    gid: &[u8],
    owner: &str,
    seq: u64,
) -> Result<bool, EngineError> {
    let n = conn.exec_cached(
        "UPDATE dmls_send_group SET after_seq = MAX(after_seq, ?3) WHERE group_id = ?1 AND owner = ?2",
        params![gid, owner, seq as i64],
    )?;
    Ok(n > 0)
}

/// We joined `gid` (another member's Send Group) at `epoch`.
pub(crate) fn set_joined(conn: &Connection, gid: &[u8; 32], epoch: u64) -> Result<(), EngineError> {
    conn.exec_cached(
        "UPDATE dmls_send_group SET joined = 1, joined_epoch = ?2 WHERE group_id = ?1",
        params![gid.as_slice(), epoch as i64],
    )?;
    Ok(())
}

/// The owner of `gid` was removed: nothing beyond epoch `stop` is processed.
pub(crate) fn set_stop_epoch(
    conn: &Connection,
    gid: &[u8; 32],
    stop: u64,
) -> Result<(), EngineError> {
    conn.exec_cached(
        "UPDATE dmls_send_group SET stop_epoch = ?2 WHERE group_id = ?1",
        params![gid.as_slice(), stop as i64],
    )?;
    Ok(())
}

/// A removed owner's `gid` is processed up to `epoch` ([`SendGroupRow::limit`]).
pub(crate) fn set_psk_limit(
    conn: &Connection,
    gid: &[u8; 32],
    epoch: u64,
) -> Result<(), EngineError> {
    conn.exec_cached(
        "UPDATE dmls_send_group SET psk_limit_epoch = ?2 WHERE group_id = ?1",
        params![gid.as_slice(), epoch as i64],
    )?;
    Ok(())
}

/// A removed owner's `gid` is closed ([`SendGroupRow::closed`]).
pub(crate) fn close(conn: &Connection, gid: &[u8; 32]) -> Result<(), EngineError> {
    conn.exec_cached(
        "UPDATE dmls_send_group SET closed = 1 WHERE group_id = ?1",
        [gid.as_slice()],
    )?;
    Ok(())
}

/// Forgets every Send Group of `d`: they are no longer followed (we left `d`).
pub(crate) fn delete_of_dgroup(conn: &Connection, d: &DGroupId) -> Result<(), EngineError> {
    conn.exec_cached(
        "DELETE FROM dmls_send_group WHERE dgroup_id = ?1",
        [d.0.as_slice()],
    )?;
    Ok(())
}

/// We created our own Send Group `gid` at `epoch`, in `state`, at `now_ms`.
pub(crate) fn own_created(
    conn: &Connection,
    gid: &[u8; 32],
    epoch: u64,
    state: OwnState,
    now_ms: u64,
) -> Result<(), EngineError> {
    conn.exec_cached(
        "UPDATE dmls_send_group SET joined = 1, joined_epoch = ?2, own_state = ?3, last_update_ms = ?4
         WHERE group_id = ?1",
        params![gid.as_slice(), epoch as i64, state, now_ms as i64],
    )?;
    Ok(())
}

/// The members of our own Send Group `gid` were added at `now_ms`: it is active.
pub(crate) fn own_activated(
    conn: &Connection,
    gid: &[u8; 32],
    now_ms: u64,
) -> Result<(), EngineError> {
    conn.exec_cached(
        "UPDATE dmls_send_group SET own_state = ?3, last_update_ms = ?2, msgs_since_update = 0,
         sent_in_epoch = 0 WHERE group_id = ?1",
        params![gid.as_slice(), now_ms as i64, OwnState::Active],
    )?;
    Ok(())
}

/// We committed in our own Send Group `gid` at `now_ms`.
pub(crate) fn own_committed(
    conn: &Connection,
    gid: &[u8; 32],
    now_ms: u64,
) -> Result<(), EngineError> {
    conn.exec_cached(
        "UPDATE dmls_send_group SET last_update_ms = ?2, msgs_since_update = 0, sent_in_epoch = 0
         WHERE group_id = ?1",
        params![gid.as_slice(), now_ms as i64],
    )?;
    Ok(())
}

/// We sent an application message in our own Send Group `gid`.
pub(crate) fn own_sent(conn: &Connection, gid: &[u8; 32]) -> Result<(), EngineError> {
    conn.exec_cached(
        "UPDATE dmls_send_group SET msgs_since_update = msgs_since_update + 1,
         sent_in_epoch = sent_in_epoch + 1 WHERE group_id = ?1",
        [gid.as_slice()],
    )?;
    Ok(())
}
