//! Eviction (PROTOCOL.md "Acknowledgement and key deletion"): an owner removes from its Send
//! Group the members that have acknowledged nothing for longer than a threshold.
//!
//! A member acknowledges with its commits (each imports the epochs of the others it has not
//! imported yet; one that imports nothing had nothing new to acknowledge), so "silent" means:
//! we have merged no commit of its Send Group for the threshold, by our clock. Its silence
//! counts from the latest of: our merge of its last commit, our joining the DGroup, our
//! adding it late, or (rows of older versions, which did not record times) the first check
//! by this version. The time is kept in `dmls_acks.active_ms` ([`Ctx::touch`]).
//!
//! A silent member holds back the deletion of every older PSK of every Send Group (it never
//! acknowledges a newer epoch), so evicting it restores forward secrecy for the others.
//! Eviction is a removal like [`Ctx::remove`]: one commit of our Send Group removes every
//! silent member, and every other member then removes them from theirs.

use std::collections::HashSet;

use super::ctx::Ctx;
use super::ids::DGroupId;
use super::{EngineError, Event};

impl Ctx<'_> {
    /// Removes, in every DGroup whose Send Group of ours is active, the members of our Send
    /// Group whose last activity is `threshold_ms` or more before `now_ms`: one commit per
    /// DGroup. Returns one [`Event::MemberEvicted`] per removed member.
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
        let me = self.me()?;
        let mut st = self
            .conn
            .prepare("SELECT dgroup_id FROM dmls_dgroup WHERE we_removed = 0 ORDER BY rowid")?;
        let ids: Vec<Vec<u8>> = st.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
        drop(st);
        let mut events = Vec::new();
        for id in ids {
            let d = DGroupId::from_slice(&id)?;
            let Ok(own) = self.active_own(&d) else {
                continue;
            };
            let removed: HashSet<String> = self.removed(&d)?.into_iter().map(|r| r.0).collect();
            let activity = self.activity(&d)?;
            let mut silent = Vec::new();
            for m in self.members_of(&own.group_id)? {
                if m == me || removed.contains(&m) {
                    continue;
                }
                match activity.get(&m).copied().flatten() {
                    // No time recorded (older versions): its silence counts from now.
                    None => self.touch(&d, &m, now_ms)?,
                    Some(t) if now_ms.saturating_sub(t) >= threshold_ms => silent.push((m, t)),
                    Some(_) => {}
                }
            }
            if silent.is_empty() {
                continue;
            }
            for (m, _) in &silent {
                self.note_removed(&d, m)?;
            }
            self.dmls_commit(&d, now_ms, false)?;
            events.extend(silent.into_iter().map(|(member, last_active_ms)| {
                Event::MemberEvicted {
                    dgroup: d,
                    member,
                    last_active_ms,
                }
            }));
        }
        Ok(events)
    }
}
