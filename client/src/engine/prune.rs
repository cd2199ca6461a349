//! Deleting what nobody will use again: PSKs nobody will import (PROTOCOL.md "Acknowledgement and
//! key deletion"), and the kept messages of a removed owner once no commit can import its epochs.

use super::EngineError;
use super::ctx::Ctx;
use super::ids::{DGroupId, PskId, send_group_id};
use super::store::{acks, members, psks, send_groups, waiting};
use openmls::schedule::{ExternalPsk, Psk};
use openmls_traits::storage::StorageProvider as _;

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
        let removed: Vec<String> = members::removed_names(self.conn, d)?;
        let acks = acks::of_dgroup(self.conn, d)?;
        for owner in &config.members {
            let gid = send_group_id(d, owner);
            if !imported.iter().any(|p| p.group_id == gid) {
                continue;
            }
            // The oldest epoch of G acknowledged by its other current members, if they all
            // acknowledged one.
            let min_ack = config
                .members
                .iter()
                .filter(|m| *m != owner && !removed.contains(m))
                .map(|m| acks.get(m).and_then(|a| a.get(&gid)).copied())
                .try_fold(None, |min: Option<u64>, a| {
                    a.map(|a| Some(min.map_or(a, |m| m.min(a))))
                });
            // No holder at all, or one that acknowledged nothing of G.
            let Some(Some(min_ack)) = min_ack else {
                continue;
            };
            for psk_id in psks::older_than(self.conn, &gid, min_ack)? {
                self.delete_psk(&psk_id)?;
            }
        }
        Ok(())
    }

    /// Deletes a stored PSK from both stores (openmls's and ours).
    pub(crate) fn delete_psk(&self, psk_id: &PskId) -> Result<(), EngineError> {
        self.provider
            .storage
            .delete_psk(&Psk::External(ExternalPsk::new(psk_id.to_bytes().to_vec())))
            .map_err(|e| EngineError::mls("deleting PSK", e))?;
        psks::delete(self.conn, psk_id)
    }
}

impl Ctx<'_> {
    /// Closes the Send Group of every removed owner X that no other Send Group we hold still
    /// has as a member (docs/PROTOCOL.md "Closing a removed member's Send Group"). A member stops importing X's epochs
    /// once it knows of the removal, and removes X in its next commit; so once we merged the
    /// commit of every other Send Group that removed X, we merged every commit that could
    /// import an epoch of X's group, and the limit we process it up to is final. X's kept
    /// commits and proposals are deleted, and later ones are dropped instead of kept: a
    /// removed member can no longer make us store its messages.
    ///
    /// Conservative: a Send Group we never joined, or one of a removed owner that stopped
    /// before removing X, keeps X's group open.
    pub(crate) fn close_removed_groups(&mut self) -> Result<(), EngineError> {
        self.removals_merged = false;
        for (gid, d, x) in send_groups::open_removed(self.conn)? {
            let mut dropped_everywhere = true;
            for y in self.send_groups_of(&d)? {
                if y.owner == x {
                    continue;
                }
                if !y.joined || self.members_of(&y.group_id)?.contains(&x) {
                    dropped_everywhere = false;
                    break;
                }
            }
            if !dropped_everywhere {
                continue;
            }
            self.deferred.take_group(&gid);
            // Everything of it still waiting: kept commits and proposals ('stopped'), and, if
            // we never joined it, what waits for its Welcome. (Nothing else of it can be
            // waiting: every commit that imported one of its epochs was merged, so we reached
            // the limit.)
            waiting::delete_group(self.conn, &gid)?;
            self.write_send_group(|conn| send_groups::close(conn, &gid))?;
        }
        Ok(())
    }
}
