//! `dmls_acks`: acknowledgements (PROTOCOL.md "Acknowledgement and key deletion"), one row per
//! DGroup and member holding the latest epoch it acknowledged of each Send Group: one read and
//! one write per merged commit instead of one upsert per imported PSK, and PSK pruning reads a
//! DGroup's acks in one query.
//!
//! The row's `acks` BLOB is a sequence of 40-byte entries, Send Group id (32 bytes) then epoch
//! (big-endian u64), sorted by group id.

use std::collections::{BTreeMap, HashMap};

use rusqlite::{Connection, OptionalExtension, params};

use super::CachedSql as _;
use crate::engine::error::EngineError;
use crate::engine::ids::DGroupId;

/// Latest acknowledged epoch per Send Group id.
pub(crate) type Acks = BTreeMap<[u8; 32], u64>;

const ENTRY: usize = 40;

fn encode(acks: &Acks) -> Vec<u8> {
    let mut out = Vec::with_capacity(acks.len() * ENTRY);
    for (gid, epoch) in acks {
        out.extend_from_slice(gid);
        out.extend_from_slice(&epoch.to_be_bytes());
    }
    out
}

fn decode(bytes: &[u8]) -> Result<Acks, EngineError> {
    if !bytes.len().is_multiple_of(ENTRY) {
        return Err(EngineError::Internal(format!(
            "stored acknowledgements have a length of {} bytes, not a multiple of {ENTRY}",
            bytes.len()
        )));
    }
    let mut acks = Acks::new();
    for e in bytes.chunks_exact(ENTRY) {
        let (gid, epoch) = e.split_at(32);
        let (Ok(gid), Ok(epoch)) = (<[u8; 32]>::try_from(gid), <[u8; 8]>::try_from(epoch)) else {
            continue;
        };
        acks.insert(gid, u64::from_be_bytes(epoch));
    }
    Ok(acks)
}

/// The latest epoch of each Send Group of `d` that `acker` acknowledged.
pub(crate) fn of(conn: &Connection, d: &DGroupId, acker: &str) -> Result<Acks, EngineError> {
    let bytes: Option<Vec<u8>> = conn
        .row_cached(
            "SELECT acks FROM dmls_acks WHERE dgroup_id = ?1 AND acker = ?2",
            params![d.0.as_slice(), acker],
            |r| r.get(0),
        )
        .optional()?;
    bytes.map_or(Ok(Acks::new()), |b| decode(&b))
}

/// [`of`] every member of `d` that acknowledged anything.
pub(crate) fn of_dgroup(
    conn: &Connection,
    d: &DGroupId,
) -> Result<HashMap<String, Acks>, EngineError> {
    let rows: Vec<(String, Vec<u8>)> = conn.rows_cached(
        "SELECT acker, acks FROM dmls_acks WHERE dgroup_id = ?1",
        [d.0.as_slice()],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    rows.into_iter()
        .map(|(acker, bytes)| Ok((acker, decode(&bytes)?)))
        .collect()
}

/// Replaces what `acker` acknowledged in `d`.
pub(crate) fn set(
    conn: &Connection,
    d: &DGroupId,
    acker: &str,
    acks: &Acks,
) -> Result<(), EngineError> {
    conn.exec_cached(
        "INSERT INTO dmls_acks(dgroup_id, acker, acks) VALUES (?1, ?2, ?3)
         ON CONFLICT(dgroup_id, acker) DO UPDATE SET acks = excluded.acks",
        params![d.0.as_slice(), acker, encode(acks)],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn encoding_round_trips_and_bad_lengths_are_errors() {
        let acks: Acks = [([1; 32], 7), ([2; 32], u64::MAX)].into_iter().collect();
        assert_eq!(decode(&encode(&acks)).unwrap(), acks);
        assert!(decode(&[]).unwrap().is_empty());
        assert!(decode(&[0; 41]).is_err());
    }
}
