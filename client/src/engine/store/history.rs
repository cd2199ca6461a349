//! `dmls_history`: application messages shown to the user, ours included.

use rusqlite::{Connection, params};

use super::CachedSql as _;
use crate::engine::ReceivedMessage;
use crate::engine::error::EngineError;
use crate::engine::ids::{DGroupId, MessageId};

/// Appends a message.
pub(crate) fn insert(conn: &Connection, m: &ReceivedMessage) -> Result<(), EngineError> {
    conn.exec_cached(
        "INSERT INTO dmls_history(dgroup_id, sender, sent_at_ms, message_id, content_type, body, epoch, generation)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            m.dgroup.0.as_slice(),
            m.sender,
            m.sent_at_ms as i64,
            m.message_id.0.as_slice(),
            m.content_type,
            m.body,
            m.epoch as i64,
            m.generation.map(i64::from)
        ],
    )?;
    Ok(())
}

/// The last `limit` messages of `d`, oldest first.
pub(crate) fn last(
    conn: &Connection,
    d: &DGroupId,
    limit: usize,
) -> Result<Vec<ReceivedMessage>, EngineError> {
    let rows = conn.rows_cached(
        "SELECT sender, sent_at_ms, message_id, content_type, body, epoch, generation FROM dmls_history
         WHERE dgroup_id = ?1 ORDER BY id DESC LIMIT ?2",
        params![d.0.as_slice(), limit as i64],
        |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, Vec<u8>>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, Vec<u8>>(4)?,
                r.get::<_, i64>(5)?,
                r.get::<_, Option<i64>>(6)?,
            ))
        },
    )?;
    let mut out =
        rows.into_iter()
            .map(|(sender, sent, mid, ct, body, epoch, generation)| {
                let message_id = MessageId(mid.as_slice().try_into().map_err(|_| {
                    EngineError::Internal("stored message id is not 16 bytes".into())
                })?);
                Ok(ReceivedMessage {
                    dgroup: *d,
                    sender,
                    sent_at_ms: sent as u64,
                    message_id,
                    content_type: ct,
                    body,
                    epoch: epoch as u64,
                    generation: generation.map(|g| g as u32),
                })
            })
            .collect::<Result<Vec<_>, EngineError>>()?;
    out.reverse();
    Ok(out)
}
