//! Eviction (PROTOCOL.md "Acknowledgement and key deletion"): an owner removes from its Send
//! Group the members that have acknowledged nothing for longer than a threshold.
//!
//! A member acknowledges epoch `k` of Send Group `G` by importing it (or a later epoch) in one
//! of its commits (`acks.rs`). A member is *behind* on `G` when `G` has moved past an epoch
//! that it has not acknowledged: that epoch's PSK, no longer the latest, cannot be deleted
//! because of it (`prune.rs`). It has been behind since `G` moved past it, that is since we
//! stored the PSK of the next epoch we hold (`dmls_psk.stored_ms`, our clock). Owing only the
//! latest epoch of a group is not being behind: in a group where nobody commits, nobody is
//! evicted, however long it stays quiet. Evicting members behind for long lets the others
//! delete old PSKs, which restores forward secrecy.
//!
//! A member cannot import epochs from before it joined a Send Group: when a commit adds
//! members late, it counts for them as acknowledging the epoch it leaves
//! (`Ctx::ack_joined`).
//!
//! Eviction is a removal like [`Ctx::remove`]: one commit of our Send Group removes every
//! member behind for too long, and every other member then removes them from theirs.
//! So that members who read but never send are not evicted, [`Ctx::acknowledge_overdue`]
//! commits (importing what is new) when we ourselves have been behind for a while.

use std::collections::{HashMap, HashSet};

use super::ctx::Ctx;
use super::ids::DGroupId;
use super::store::{acks, dgroups, members, psks};
use super::{EngineError, Event};

impl Ctx<'_> {
    /// For every current member of `d` (us included) that is behind: since when, by our
    /// clock. PSKs without a stored time (rows of older versions) count as not owed.
    pub(crate) fn behind_since(&self, d: &DGroupId) -> Result<HashMap<String, u64>, EngineError> {
        let removed: HashSet<String> = members::removed_names(self.conn, d)?.into_iter().collect();
        let acks = acks::of_dgroup(self.conn, d)?;
        let mut out: HashMap<String, u64> = HashMap::new();
        for g in self.send_groups_of(d)? {
            if !g.joined || removed.contains(&g.owner) {
                continue;
            }
            let held = psks::held(self.conn, &g.group_id)?;
            if held.is_empty() {
                continue;
            }
            for m in self.members_of(&g.group_id)? {
                if m == g.owner || removed.contains(&m) {
                    continue;
                }
                let acked = acks.get(&m).and_then(|a| a.get(&g.group_id)).copied();
                // The oldest held epoch it has not acknowledged, and when the group moved
                // past it (the next epoch we hold; none: it owes only the latest).
                let Some(owed) = held.iter().position(|(e, _)| acked.is_none_or(|a| *e > a)) else {
                    continue;
                };
                if let Some((_, Some(t))) = held.get(owed + 1) {
                    let since = out.entry(m).or_insert(*t);
                    *since = (*since).min(*t);
                }
            }
        }
        Ok(out)
    }

    /// DGroups whose Send Group of ours is active, in the order we learned them.
    fn active_dgroups(&self) -> Result<Vec<DGroupId>, EngineError> {
        let mut out = dgroups::not_left(self.conn)?;
        out.retain(|d| self.active_own(d).is_ok());
        Ok(out)
    }

    /// Removes, in every DGroup whose Send Group of ours is active, the members of our Send
    /// Group that have been behind since `threshold_ms` or more before `now_ms`: one commit
    /// per DGroup. Returns one [`Event::MemberEvicted`] per removed member.
    pub(crate) fn evict_silent_members(
        &mut self,
        now_ms: u64,
        threshold_ms: u64,
    ) -> Result<Vec<Event>, EngineError> {
        if threshold_ms == 0 {
            return Err(EngineError::InvalidArgument(
                "the eviction threshold must be longer than zero".into(),
            ));
        }
        // PSKs stored by older versions have no time: their clock starts now.
        psks::start_clocks(self.conn, now_ms)?;
        let me = self.me()?;
        let mut events = Vec::new();
        for d in self.active_dgroups()? {
            let own = self.own_send_group(&d)?;
            let behind = self.behind_since(&d)?;
            let mut silent = Vec::new();
            for m in self.members_of(&own.group_id)? {
                if m == me {
                    continue;
                }
                if let Some(&t) = behind.get(&m)
                    && now_ms.saturating_sub(t) >= threshold_ms
                {
                    silent.push((m, t));
                }
            }
            if silent.is_empty() {
                continue;
            }
            for (m, _) in &silent {
                self.note_removed(&d, m)?;
            }
            self.dmls_commit(&d, now_ms, false)?;
            events.extend(silent.into_iter().map(|(member, behind_since_ms)| {
                Event::MemberEvicted {
                    dgroup: d,
                    member,
                    behind_since_ms,
                }
            }));
        }
        Ok(events)
    }

    /// Commits (with a path, importing what is new) in every DGroup where we have been behind
    /// since `deadline_ms` or more before `now_ms` and there is something to import. Returns
    /// those DGroups.
    pub(crate) fn acknowledge_overdue(
        &mut self,
        now_ms: u64,
        deadline_ms: u64,
    ) -> Result<Vec<DGroupId>, EngineError> {
        let me = self.me()?;
        let mut done = Vec::new();
        for d in self.active_dgroups()? {
            let overdue = self
                .behind_since(&d)?
                .get(&me)
                .is_some_and(|t| now_ms.saturating_sub(*t) >= deadline_ms);
            if overdue && !self.unimported(&d)?.is_empty() {
                self.dmls_commit(&d, now_ms, false)?;
                done.push(d);
            }
        }
        Ok(done)
    }
}
