//! Deleting PSKs nobody will import again (PROTOCOL.md "Acknowledgement and key deletion").

use openmls::schedule::{ExternalPsk, Psk};
use openmls_traits::storage::StorageProvider as _;
use rusqlite::params;

use super::EngineError;
use super::ctx::Ctx;
use super::ids::{DGroupId, PskId, send_group_id};
use super::state::CachedSql as _;

impl Ctx<'_> {
    /// Runs [`Ctx::prune_psks`] once per DGroup for everything merged commits imported
    /// during this operation. Acks are read from the database, so inputs rolled back since
    /// count for nothing.
    pub(crate) fn prune_deferred(&mut self) -> Result<(), EngineError> {
        let mut pending = std::mem::take(&mut self.prune_later);
        pending.sort_by_key(|(d, p)| (d.0, p.group_id));
        pending.dedup_by(|a, b| a.0 == b.0 && a.1.group_id == b.1.group_id);
        let mut start = 0;
        while start < pending.len() {
            let d = pending[start].0;
            let end = pending[start..]
                .iter()
                .position(|(x, _)| *x != d)
                .map_or(pending.len(), |n| start + n);
            let imported: Vec<PskId> = pending[start..end].iter().map(|(_, p)| *p).collect();
            self.prune_psks(&d, &imported)?;
            start = end;
        }
        Ok(())
    }

    /// Deletes every stored PSK `(k, G)`, for the Send Groups G named in `imported`, such that
    /// every current member other than G's owner has acknowledged (imported) an epoch of G
    /// newer than `k`. The latest PSK of each group is always kept, so [`Ctx::unimported`]
    /// still sees it.
    pub(crate) fn prune_psks(&self, d: &DGroupId, imported: &[PskId]) -> Result<(), EngineError> {
        let Some((config, _, _)) = self.config(d)? else {
            return Ok(());
        };
        let removed: Vec<String> = self.removed(d)?.into_iter().map(|r| r.0).collect();
        for owner in &config.members {
            let gid = send_group_id(d, owner);
            if !imported.iter().any(|p| p.group_id == gid) {
                continue;
            }
            // The oldest epoch of G acknowledged by its other current members, if they all
            // acknowledged one: one query per group, not one per member (this runs for every
            // merged commit, with one imported group per member).
            let holders: Vec<&String> = config
                .members
                .iter()
                .filter(|m| *m != owner && !removed.contains(m))
                .collect();
            let holders_json = serde_json::to_string(&holders)
                .map_err(|e| EngineError::Internal(format!("encoding member list: {e}")))?;
            let (acked, min_ack): (i64, Option<i64>) = self.conn.row_cached(
                "SELECT COUNT(a.epoch), MIN(a.epoch) FROM json_each(?2) m
                 LEFT JOIN dmls_ack a ON a.acker = m.value AND a.group_id = ?1",
                params![gid.as_slice(), holders_json],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            if holders.is_empty() || acked as usize != holders.len() {
                continue;
            }
            let Some(min_ack) = min_ack.map(|v| v as u64) else {
                continue;
            };
            let mut st = self
                .conn
                .prepare_cached("SELECT psk_id FROM dmls_psk WHERE group_id = ?1 AND epoch < ?2")?;
            let ids: Vec<Vec<u8>> = st
                .query_map(params![gid.as_slice(), min_ack as i64], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            for id in ids {
                let psk_id = PskId::from_bytes(&id)?;
                self.provider
                    .storage
                    .delete_psk(&Psk::External(ExternalPsk::new(psk_id.to_bytes().to_vec())))
                    .map_err(|e| EngineError::mls("deleting PSK", e))?;
                self.conn
                    .exec_cached("DELETE FROM dmls_psk WHERE psk_id = ?1", [id])?;
            }
        }
        Ok(())
    }
}
