//! Acknowledgements (PROTOCOL.md "Acknowledgement and key deletion"): a member's commit that
//! imports `psk_id(k, G)` acknowledges epoch `k` of Send Group `G`. Stored per DGroup and
//! member as the latest acknowledged epoch of each Send Group (`store/acks.rs`).

use super::EngineError;
use super::ctx::Ctx;
use super::ids::{DGroupId, PskId};
use super::store::acks;

impl Ctx<'_> {
    /// Records that `acker` imported the epochs `psks` (of Send Groups of DGroup `d`).
    pub(crate) fn ack(&self, d: &DGroupId, acker: &str, psks: &[PskId]) -> Result<(), EngineError> {
        if psks.is_empty() {
            return Ok(());
        }
        let mut acked = acks::of(self.conn, d, acker)?;
        for p in psks {
            let e = acked.entry(p.group_id).or_insert(p.epoch);
            *e = (*e).max(p.epoch);
        }
        acks::set(self.conn, d, acker, &acked)
    }

    /// A commit of Send Group `gid` that added `members` was merged, leaving epoch `epoch`:
    /// they cannot import that epoch or any before it, so for eviction and PSK deletion they
    /// count as having acknowledged it.
    pub(crate) fn ack_joined(
        &self,
        d: &DGroupId,
        gid: &[u8; 32],
        epoch: u64,
        members: &[String],
    ) -> Result<(), EngineError> {
        let left = PskId {
            epoch,
            group_id: *gid,
        };
        for m in members {
            self.ack(d, m, &[left])?;
        }
        Ok(())
    }
}
