//! `dmls_waiting`: received messages that cannot be processed yet (PROTOCOL.md "Receiving"),
//! each with what it waits for ([`WaitReason`]), stored in three columns: `wait_kind` (the
//! names in [`kind`]), `wait_epoch` (for the reasons with an epoch) and `wait_psk`.

use rusqlite::{Connection, params};

use super::CachedSql as _;
use crate::engine::error::EngineError;
use crate::engine::ids::PskId;
use crate::engine::{WaitReason, WaitingMessage};

/// The stored names of the [`WaitReason`]s: this module's only mapping to and from them.
mod kind {
    pub(super) const EPOCH: &str = "epoch";
    pub(super) const PSK: &str = "psk";
    pub(super) const WELCOME: &str = "welcome";
    pub(super) const PROPOSAL: &str = "proposal";
    pub(super) const COMMIT: &str = "commit";
    pub(super) const STOPPED: &str = "stopped";
}

/// The `wait_kind`, `wait_epoch` and `wait_psk` of a reason.
fn encode(w: &WaitReason) -> (&'static str, Option<i64>, Option<Vec<u8>>) {
    match w {
        WaitReason::Epoch(e) => (kind::EPOCH, Some(*e as i64), None),
        WaitReason::Psk(p) => (kind::PSK, None, Some(p.to_bytes().to_vec())),
        WaitReason::Welcome => (kind::WELCOME, None, None),
        WaitReason::Proposal(e) => (kind::PROPOSAL, Some(*e as i64), None),
        WaitReason::Commit(e) => (kind::COMMIT, Some(*e as i64), None),
        WaitReason::Stopped => (kind::STOPPED, None, None),
    }
}

/// The reason stored as `kind`, `epoch`, `psk`; anything else than what [`encode`] writes is
/// an error.
fn decode(kind: &str, epoch: Option<i64>, psk: Option<&[u8]>) -> Result<WaitReason, EngineError> {
    let epoch = || {
        epoch.map(|e| e as u64).ok_or_else(|| {
            EngineError::UnreadableState(format!("a message waiting for {kind:?} has no epoch"))
        })
    };
    Ok(match kind {
        kind::EPOCH => WaitReason::Epoch(epoch()?),
        kind::PSK => WaitReason::Psk(PskId::from_bytes(psk.ok_or_else(|| {
            EngineError::UnreadableState("a message waiting for a PSK names none".into())
        })?)?),
        kind::WELCOME => WaitReason::Welcome,
        kind::PROPOSAL => WaitReason::Proposal(epoch()?),
        kind::COMMIT => WaitReason::Commit(epoch()?),
        kind::STOPPED => WaitReason::Stopped,
        other => {
            return Err(EngineError::UnreadableState(format!(
                "a message waits for {other:?}, which this version does not know"
            )));
        }
    })
}

/// A waiting message, as released.
#[derive(Debug)]
pub(crate) struct Waiting {
    pub(crate) id: i64,
    pub(crate) group_id: Vec<u8>,
    pub(crate) data: Vec<u8>,
    pub(crate) epoch: u64,
    pub(crate) is_commit: bool,
}

fn waiting_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Waiting> {
    Ok(Waiting {
        id: r.get(0)?,
        group_id: r.get(1)?,
        data: r.get(2)?,
        epoch: r.get::<_, i64>(3)? as u64,
        is_commit: r.get(4)?,
    })
}

/// Stores a message of Send Group `gid` that waits for `w`; one already waiting (same hash)
/// stays as it is.
pub(crate) fn insert(
    conn: &Connection,
    gid: &[u8; 32],
    epoch: u64,
    is_commit: bool,
    w: &WaitReason,
    hash: &[u8; 32],
    data: &[u8],
) -> Result<(), EngineError> {
    let (kind, wait_epoch, wait_psk) = encode(w);
    conn.exec_cached(
        "INSERT OR IGNORE INTO dmls_waiting(group_id, epoch, is_commit, wait_kind, wait_epoch, wait_psk, hash, data)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            gid.as_slice(),
            epoch as i64,
            is_commit,
            kind,
            wait_epoch,
            wait_psk,
            hash.as_slice(),
            data
        ],
    )?;
    Ok(())
}

/// Whether a message of `gid` waits for a proposal ([`WaitReason::Proposal`]).
pub(crate) fn any_waits_for_proposal(
    conn: &Connection,
    gid: &[u8; 32],
) -> Result<bool, EngineError> {
    Ok(conn.row_cached(
        "SELECT EXISTS (SELECT 1 FROM dmls_waiting WHERE group_id = ?1 AND wait_kind = ?2)",
        params![gid.as_slice(), kind::PROPOSAL],
        |r| r.get::<_, bool>(0),
    )?)
}

/// Something that may release waiting messages (PROTOCOL.md "Receiving").
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Trigger {
    /// Send Group reached this epoch.
    Epoch([u8; 32], u64),
    /// A PSK was stored.
    Psk(PskId),
    /// A proposal of this epoch was stored in this Send Group.
    Proposal([u8; 32], u64),
    /// We joined this Send Group.
    Joined([u8; 32]),
    /// The processing limit of a removed owner's Send Group was raised to this epoch
    /// (docs/PROTOCOL.md "Removal race"): its kept messages of earlier epochs may go on.
    Limit([u8; 32], u64),
}

/// The messages that trigger `t` releases, in the order to process them.
pub(crate) fn released_by(conn: &Connection, t: &Trigger) -> Result<Vec<Waiting>, EngineError> {
    let rows = match t {
        // Proposals and application messages first, then commits.
        Trigger::Epoch(g, e) => conn.rows_cached(
            "SELECT id, group_id, data, epoch, is_commit FROM dmls_waiting
             WHERE group_id = ?1 AND wait_kind = ?2 AND wait_epoch = ?3 ORDER BY is_commit, id",
            params![g.as_slice(), kind::EPOCH, *e as i64],
            waiting_row,
        ),
        Trigger::Proposal(g, e) => conn.rows_cached(
            "SELECT id, group_id, data, epoch, is_commit FROM dmls_waiting
             WHERE group_id = ?1 AND wait_kind = ?2 AND wait_epoch = ?3 ORDER BY id",
            params![g.as_slice(), kind::PROPOSAL, *e as i64],
            waiting_row,
        ),
        Trigger::Psk(p) => conn.rows_cached(
            "SELECT id, group_id, data, epoch, is_commit FROM dmls_waiting WHERE wait_psk = ?1 ORDER BY id",
            [p.to_bytes().as_slice()],
            waiting_row,
        ),
        Trigger::Joined(g) => conn.rows_cached(
            "SELECT id, group_id, data, epoch, is_commit FROM dmls_waiting
             WHERE group_id = ?1 AND wait_kind = ?2 ORDER BY is_commit, id",
            params![g.as_slice(), kind::WELCOME],
            waiting_row,
        ),
        // Proposals first (a commit may reference them), commits in epoch order.
        Trigger::Limit(g, e) => conn.rows_cached(
            "SELECT id, group_id, data, epoch, is_commit FROM dmls_waiting
             WHERE group_id = ?1 AND wait_kind = ?2 AND epoch < ?3 ORDER BY is_commit, epoch, id",
            params![g.as_slice(), kind::STOPPED, *e as i64],
            waiting_row,
        ),
    };
    Ok(rows?)
}

/// The messages of `gid` a removal stopping it at `stop` concerns: those beyond `stop`,
/// commits of `stop` itself, and deferred leaf refreshes.
pub(crate) fn beyond_stop(
    conn: &Connection,
    gid: &[u8; 32],
    stop: u64,
) -> Result<Vec<Waiting>, EngineError> {
    Ok(conn.rows_cached(
        "SELECT id, group_id, data, epoch, is_commit FROM dmls_waiting WHERE group_id = ?1
         AND (epoch > ?2 OR (is_commit AND epoch >= ?2) OR wait_kind = ?3)",
        params![gid.as_slice(), stop as i64, kind::COMMIT],
        waiting_row,
    )?)
}

/// The PSKs of epochs of `gid` that waiting commits wait for.
pub(crate) fn awaited_psks_of(
    conn: &Connection,
    gid: &[u8; 32],
) -> Result<Vec<PskId>, EngineError> {
    let psks: Vec<Vec<u8>> = conn.rows_cached(
        "SELECT wait_psk FROM dmls_waiting WHERE wait_kind = ?2 AND substr(wait_psk, 9) = ?1",
        params![gid.as_slice(), kind::PSK],
        |r| r.get(0),
    )?;
    Ok(psks
        .iter()
        .filter_map(|b| PskId::from_bytes(b).ok())
        .filter(|p| p.group_id == *gid)
        .collect())
}

/// How many deferred leaf refreshes ([`WaitReason::Commit`]) of `epoch` wait in `gid`.
pub(crate) fn deferred_count(
    conn: &Connection,
    gid: &[u8; 32],
    epoch: u64,
) -> Result<u64, EngineError> {
    Ok(conn.row_cached(
        "SELECT COUNT(*) FROM dmls_waiting WHERE group_id = ?1 AND wait_kind = ?2 AND wait_epoch = ?3",
        params![gid.as_slice(), kind::COMMIT, epoch as i64],
        |r| r.get::<_, i64>(0),
    )? as u64)
}

/// Takes (deletes and returns, in arrival order) the deferred leaf refreshes of `epoch` of `gid`.
pub(crate) fn take_deferred(
    conn: &Connection,
    gid: &[u8; 32],
    epoch: u64,
) -> Result<Vec<Vec<u8>>, EngineError> {
    let rows: Vec<(i64, Vec<u8>)> = conn.rows_cached(
        "SELECT id, data FROM dmls_waiting WHERE group_id = ?1 AND wait_kind = ?2 AND wait_epoch = ?3 ORDER BY id",
        params![gid.as_slice(), kind::COMMIT, epoch as i64],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let mut out = Vec::with_capacity(rows.len());
    for (id, data) in rows {
        delete(conn, id)?;
        out.push(data);
    }
    Ok(out)
}

/// Drops the deferred leaf refreshes of `gid` of epochs before `epoch`.
pub(crate) fn drop_deferred_before(
    conn: &Connection,
    gid: &[u8; 32],
    epoch: u64,
) -> Result<(), EngineError> {
    conn.exec_cached(
        "DELETE FROM dmls_waiting WHERE group_id = ?1 AND wait_kind = ?2 AND wait_epoch < ?3",
        params![gid.as_slice(), kind::COMMIT, epoch as i64],
    )?;
    Ok(())
}

/// Message `id` now waits for nothing but a raised limit ([`WaitReason::Stopped`]).
pub(crate) fn set_stopped(conn: &Connection, id: i64) -> Result<(), EngineError> {
    conn.exec_cached(
        "UPDATE dmls_waiting SET wait_kind = ?2, wait_epoch = NULL, wait_psk = NULL WHERE id = ?1",
        params![id, kind::STOPPED],
    )?;
    Ok(())
}

/// Deletes one waiting message.
pub(crate) fn delete(conn: &Connection, id: i64) -> Result<(), EngineError> {
    conn.exec_cached("DELETE FROM dmls_waiting WHERE id = ?1", [id])?;
    Ok(())
}

/// Deletes every waiting message of `gid`.
pub(crate) fn delete_group(conn: &Connection, gid: &[u8; 32]) -> Result<(), EngineError> {
    conn.exec_cached(
        "DELETE FROM dmls_waiting WHERE group_id = ?1",
        [gid.as_slice()],
    )?;
    Ok(())
}

/// The messages of `gid` waiting, by epoch and arrival, with what each waits for.
pub(crate) fn of_group(
    conn: &Connection,
    gid: &[u8; 32],
) -> Result<Vec<WaitingMessage>, EngineError> {
    type Row = (i64, bool, String, Option<i64>, Option<Vec<u8>>);
    let rows: Vec<Row> = conn.rows_cached(
        "SELECT epoch, is_commit, wait_kind, wait_epoch, wait_psk FROM dmls_waiting
         WHERE group_id = ?1 ORDER BY epoch, id",
        [gid.as_slice()],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
    )?;
    rows.into_iter()
        .map(|(epoch, is_commit, kind, we, wp)| {
            Ok(WaitingMessage {
                epoch: epoch as u64,
                is_commit,
                waits_for: decode(&kind, we, wp.as_deref())?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn every_reason_round_trips_and_unknown_kinds_are_errors() {
        let psk = PskId {
            epoch: 3,
            group_id: [7; 32],
        };
        for w in [
            WaitReason::Epoch(4),
            WaitReason::Psk(psk),
            WaitReason::Welcome,
            WaitReason::Proposal(5),
            WaitReason::Commit(6),
            WaitReason::Stopped,
        ] {
            let (k, e, p) = encode(&w);
            assert_eq!(decode(k, e, p.as_deref()).unwrap(), w);
        }
        assert!(matches!(
            decode("later", None, None),
            Err(EngineError::UnreadableState(_))
        ));
        assert!(decode(kind::EPOCH, None, None).is_err());
        assert!(decode(kind::PSK, None, None).is_err());
    }
}
