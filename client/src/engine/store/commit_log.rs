//! `dmls_commit_log`: the commits merged in each Send Group (ours and others'), with the PSKs
//! each imported and the members it removed, read by `Engine::graph`. Only the latest
//! [`KEPT_EPOCHS`] epochs of each Send Group are kept.

use rusqlite::{Connection, params};

use super::CachedSql as _;
use crate::engine::error::EngineError;
use crate::engine::ids::PskId;

/// How many of the latest epochs of a Send Group the log keeps.
pub(crate) const KEPT_EPOCHS: u64 = 256;

/// One logged commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LoggedCommit {
    /// The epoch the commit left (the epoch it started).
    pub(crate) epoch: u64,
    /// Epochs of other Send Groups it imported.
    pub(crate) imports: Vec<PskId>,
    /// Members it removed.
    pub(crate) removed: Vec<String>,
}

/// Records the commit of Send Group `gid` that started `epoch`, and forgets its commits
/// older than [`KEPT_EPOCHS`] epochs.
pub(crate) fn record(
    conn: &Connection,
    gid: &[u8; 32],
    epoch: u64,
    imports: &[PskId],
    removed: &[String],
) -> Result<(), EngineError> {
    let blob: Vec<u8> = imports.iter().flat_map(PskId::to_bytes).collect();
    conn.exec_cached(
        "INSERT OR REPLACE INTO dmls_commit_log(group_id, epoch, imports, removed)
         VALUES (?1, ?2, ?3, ?4)",
        params![gid.as_slice(), epoch as i64, blob, removed.join(",")],
    )?;
    if let Some(oldest) = epoch.checked_sub(KEPT_EPOCHS) {
        conn.exec_cached(
            "DELETE FROM dmls_commit_log WHERE group_id = ?1 AND epoch <= ?2",
            params![gid.as_slice(), oldest as i64],
        )?;
    }
    Ok(())
}

/// The logged commits of Send Group `gid`, oldest first.
pub(crate) fn of_group(
    conn: &Connection,
    gid: &[u8; 32],
) -> Result<Vec<LoggedCommit>, EngineError> {
    let rows: Vec<(i64, Vec<u8>, String)> = conn.rows_cached(
        "SELECT epoch, imports, removed FROM dmls_commit_log WHERE group_id = ?1 ORDER BY epoch",
        [gid.as_slice()],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    rows.into_iter()
        .map(|(epoch, imports, removed)| {
            if !imports.len().is_multiple_of(PskId::LEN) {
                return Err(EngineError::Internal(format!(
                    "a logged commit's imports have {} bytes, not a multiple of {}",
                    imports.len(),
                    PskId::LEN
                )));
            }
            Ok(LoggedCommit {
                epoch: epoch as u64,
                imports: imports
                    .chunks_exact(PskId::LEN)
                    .map(PskId::from_bytes)
                    .collect::<Result<_, _>>()?,
                removed: removed
                    .split(',')
                    .filter(|m| !m.is_empty())
                    .map(str::to_string)
                    .collect(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn records_round_trip_and_old_epochs_are_forgotten() {
        let conn = Connection::open_in_memory().unwrap();
        crate::engine::store::schema::migrate(&conn).unwrap();
        let gid = [7; 32];
        let psk = PskId {
            epoch: 3,
            group_id: [9; 32],
        };
        record(&conn, &gid, 1, &[psk], &["bob".into(), "carol".into()]).unwrap();
        record(&conn, &gid, 2, &[], &[]).unwrap();
        let log = of_group(&conn, &gid).unwrap();
        assert_eq!(
            log,
            vec![
                LoggedCommit {
                    epoch: 1,
                    imports: vec![psk],
                    removed: vec!["bob".into(), "carol".into()],
                },
                LoggedCommit {
                    epoch: 2,
                    imports: vec![],
                    removed: vec![],
                },
            ]
        );
        assert!(of_group(&conn, &[8; 32]).unwrap().is_empty());
        record(&conn, &gid, 2 + KEPT_EPOCHS, &[], &[]).unwrap();
        let epochs: Vec<u64> = of_group(&conn, &gid)
            .unwrap()
            .iter()
            .map(|c| c.epoch)
            .collect();
        assert_eq!(epochs, vec![2 + KEPT_EPOCHS]);
    }
}
