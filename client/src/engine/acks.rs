//! Acknowledgements (PROTOCOL.md "Acknowledgement and key deletion"): a member's commit that
//! imports `psk_id(k, G)` acknowledges epoch `k` of Send Group `G`.
//!
//! Every commit of a round imports an epoch of every other Send Group of its DGroup, so acks
//! are kept as one row per DGroup and member (`dmls_acks`), holding the latest acknowledged
//! epoch of each Send Group: one read and one write per merged commit instead of one upsert
//! per imported PSK, and PSK pruning reads a DGroup's acks in one query.
//!
//! The row's `acks` BLOB is a sequence of 40-byte entries, Send Group id (32 bytes) then epoch
//! (big-endian u64), sorted by group id.

use std::collections::{BTreeMap, HashMap};

use rusqlite::{Connection, OptionalExtension, params};

use super::EngineError;
use super::ctx::Ctx;
use super::ids::{DGroupId, PskId};
use super::state::CachedSql as _;

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

impl Ctx<'_> {
    /// Records that `acker` imported the epochs `psks` (of Send Groups of DGroup `d`).
    pub(crate) fn ack(&self, d: &DGroupId, acker: &str, psks: &[PskId]) -> Result<(), EngineError> {
        if psks.is_empty() {
            return Ok(());
        }
        let mut acks = self.acks_of(d, acker)?;
        for p in psks {
            let e = acks.entry(p.group_id).or_insert(p.epoch);
            *e = (*e).max(p.epoch);
        }
        self.conn.exec_cached(
            "INSERT INTO dmls_acks(dgroup_id, acker, acks) VALUES (?1, ?2, ?3)
             ON CONFLICT(dgroup_id, acker) DO UPDATE SET acks = excluded.acks",
            params![d.0.as_slice(), acker, encode(&acks)],
        )?;
        Ok(())
    }

    /// The latest epoch of each Send Group of `d` that `acker` imported.
    pub(crate) fn acks_of(&self, d: &DGroupId, acker: &str) -> Result<Acks, EngineError> {
        let bytes: Option<Vec<u8>> = self
            .conn
            .row_cached(
                "SELECT acks FROM dmls_acks WHERE dgroup_id = ?1 AND acker = ?2",
                params![d.0.as_slice(), acker],
                |r| r.get(0),
            )
            .optional()?;
        bytes.map_or(Ok(Acks::new()), |b| decode(&b))
    }

    /// [`Ctx::acks_of`] every member of `d` that acknowledged anything.
    pub(crate) fn dgroup_acks(&self, d: &DGroupId) -> Result<HashMap<String, Acks>, EngineError> {
        let mut st = self
            .conn
            .prepare_cached("SELECT acker, acks FROM dmls_acks WHERE dgroup_id = ?1")?;
        let rows = st.query_map([d.0.as_slice()], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?))
        })?;
        let mut out = HashMap::new();
        for row in rows {
            let (acker, bytes) = row?;
            out.insert(acker, decode(&bytes)?);
        }
        Ok(out)
    }
}

/// Moves acknowledgements from the table of earlier versions (`dmls_ack`: one row per member
/// and Send Group) into `dmls_acks`, then drops it. Acks of Send Groups we no longer know are
/// dropped with it (nothing reads them).
pub(crate) fn migrate(conn: &Connection) -> Result<(), EngineError> {
    let old: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'dmls_ack')",
        [],
        |r| r.get(0),
    )?;
    if !old {
        return Ok(());
    }
    let mut merged: BTreeMap<(Vec<u8>, String), Acks> = BTreeMap::new();
    {
        let mut st = conn.prepare(
            "SELECT s.dgroup_id, a.acker, a.group_id, a.epoch
             FROM dmls_ack a JOIN dmls_send_group s ON s.group_id = a.group_id",
        )?;
        let rows = st.query_map([], |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Vec<u8>>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })?;
        for row in rows {
            let (d, acker, gid, epoch) = row?;
            let Ok(gid) = <[u8; 32]>::try_from(gid.as_slice()) else {
                continue;
            };
            merged
                .entry((d, acker))
                .or_default()
                .insert(gid, epoch as u64);
        }
    }
    conn.execute_batch("SAVEPOINT dmls_migrate_acks")?;
    let moved = (|| -> rusqlite::Result<()> {
        for ((d, acker), acks) in &merged {
            conn.execute(
                "INSERT OR REPLACE INTO dmls_acks(dgroup_id, acker, acks) VALUES (?1, ?2, ?3)",
                params![d, acker, encode(acks)],
            )?;
        }
        conn.execute_batch("DROP TABLE dmls_ack")
    })();
    match moved {
        Ok(()) => conn.execute_batch("RELEASE dmls_migrate_acks")?,
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK TO dmls_migrate_acks; RELEASE dmls_migrate_acks");
            return Err(e.into());
        }
    }
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

    #[test]
    fn acks_of_the_earlier_table_are_moved() {
        let conn = Connection::open_in_memory().unwrap();
        super::super::state::migrate(&conn).unwrap();
        // The table as earlier versions created it, with rows.
        conn.execute_batch(
            "CREATE TABLE dmls_ack (acker TEXT NOT NULL, group_id BLOB NOT NULL,
                 epoch INTEGER NOT NULL, PRIMARY KEY (acker, group_id)) WITHOUT ROWID",
        )
        .unwrap();
        let (d, g1, g2) = ([9u8; 16], [1u8; 32], [2u8; 32]);
        for (g, owner) in [(g1, "a"), (g2, "b")] {
            conn.execute(
                "INSERT INTO dmls_send_group(group_id, dgroup_id, owner, is_own) VALUES (?1, ?2, ?3, 0)",
                params![g.as_slice(), d.as_slice(), owner],
            )
            .unwrap();
        }
        for (acker, g, e) in [("b", g1, 3), ("a", g2, 5), ("c", g1, 2), ("c", g2, 4)] {
            conn.execute(
                "INSERT INTO dmls_ack(acker, group_id, epoch) VALUES (?1, ?2, ?3)",
                params![acker, g.as_slice(), e],
            )
            .unwrap();
        }
        // An ack of a group we do not know is dropped.
        conn.execute(
            "INSERT INTO dmls_ack(acker, group_id, epoch) VALUES ('c', x'00', 1)",
            [],
        )
        .unwrap();
        super::super::state::migrate(&conn).unwrap();
        let gone: bool = conn
            .query_row(
                "SELECT NOT EXISTS (SELECT 1 FROM sqlite_master WHERE name = 'dmls_ack')",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert!(gone);
        let read = |acker: &str| -> Acks {
            let b: Vec<u8> = conn
                .query_row(
                    "SELECT acks FROM dmls_acks WHERE dgroup_id = ?1 AND acker = ?2",
                    params![d.as_slice(), acker],
                    |r| r.get(0),
                )
                .unwrap();
            decode(&b).unwrap()
        };
        assert_eq!(read("a"), [(g2, 5)].into_iter().collect());
        assert_eq!(read("b"), [(g1, 3)].into_iter().collect());
        assert_eq!(read("c"), [(g1, 2), (g2, 4)].into_iter().collect());
        // Running it again changes nothing.
        super::super::state::migrate(&conn).unwrap();
        assert_eq!(read("c"), [(g1, 2), (g2, 4)].into_iter().collect());
    }
}
