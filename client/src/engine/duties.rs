//! The engine's clock-driven duties ([`Engine::poll_timeout`],
//! [`Engine::handle_timeout`]): committing pending removals, late-add retries, overdue
//! acknowledgements and eviction. This module holds when each is next due; the duties
//! themselves are the engine's public methods.

use super::ids::DGroupId;
use super::store::members;
use super::{DEFAULT_ACK_DEADLINE_MS, DEFAULT_EVICTION_THRESHOLD_MS, Engine, EngineError, Event};

/// When the engine does its clock-driven duties ([`Engine::set_duty_policy`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DutyPolicy {
    /// Evict members that have been behind for this long ([`Engine::evict_silent_members`]);
    /// `None` never evicts. Default 30 days ([`DEFAULT_EVICTION_THRESHOLD_MS`]); zero is taken as
    /// one millisecond.
    pub eviction_threshold_ms: Option<u64>,
    /// Acknowledge what others updated once we have been behind for this long
    /// ([`Engine::acknowledge_overdue`]). Default 7 days ([`DEFAULT_ACK_DEADLINE_MS`]),
    /// well within the eviction threshold, so that a member who only reads is not evicted.
    pub ack_deadline_ms: u64,
    /// How often, while caught up, to look for overdue acknowledgements and members to evict.
    /// Default one minute.
    pub check_interval_ms: u64,
    /// How often to claim key packages again for members missing from our Send Groups
    /// ([`Engine::retry_missing_members`]; each claim is a relay request). Default one
    /// minute.
    pub retry_interval_ms: u64,
}

impl Default for DutyPolicy {
    fn default() -> Self {
        DutyPolicy {
            eviction_threshold_ms: Some(DEFAULT_EVICTION_THRESHOLD_MS),
            ack_deadline_ms: DEFAULT_ACK_DEADLINE_MS,
            check_interval_ms: 60_000,
            retry_interval_ms: 60_000,
        }
    }
}

/// What is due when (in memory: a reopened engine starts with every duty due).
#[derive(Debug, Default)]
pub(crate) struct Duties {
    pub(crate) policy: DutyPolicy,
    /// The relay had nothing newer for us at the shell's last sync.
    pub(crate) caught_up: bool,
    /// The clock of the group message after which pending removals are to be committed.
    removals_due: Option<u64>,
    /// When overdue acknowledgements and eviction were last looked at.
    checked_at: Option<u64>,
    /// When claims for missing members were last retried.
    retried_at: Option<u64>,
}

/// A duty [`Duties::take_due`] found due.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Due {
    pub(crate) removals: bool,
    pub(crate) check: bool,
    pub(crate) retry: bool,
}

impl Duties {
    /// Sets the policy; the next caught-up `handle_timeout` checks with it.
    pub(crate) fn set_policy(&mut self, mut policy: DutyPolicy) {
        policy.eviction_threshold_ms = policy.eviction_threshold_ms.map(|t| t.max(1));
        self.policy = policy;
        self.checked_at = None;
    }

    /// A group message was handled at `now_ms`: it may have shown a removal to apply to our
    /// own Send Group.
    pub(crate) fn note_group_message(&mut self, now_ms: u64) {
        self.removals_due.get_or_insert(now_ms);
    }

    /// A member missing from one of our Send Groups showed it is back (its Welcome or a
    /// commit of its Send Group arrived), so it has key packages again: late-add retries are
    /// due at once.
    pub(crate) fn retry_now(&mut self) {
        self.retried_at = None;
    }

    /// When the next duty is due (0: at once), if any.
    pub(crate) fn next(&self) -> Option<u64> {
        let check = self
            .caught_up
            .then(|| after(self.checked_at, self.policy.check_interval_ms));
        let retry = after(self.retried_at, self.policy.retry_interval_ms);
        [self.removals_due, check, Some(retry)]
            .into_iter()
            .flatten()
            .min()
    }

    /// Which duties are due at `now_ms`, recorded as done (a failing duty is tried again
    /// when next due, not at once).
    pub(crate) fn take_due(&mut self, now_ms: u64) -> Due {
        let removals = self.removals_due.is_some_and(|t| t <= now_ms);
        if removals {
            self.removals_due = None;
        }
        let check =
            self.caught_up && after(self.checked_at, self.policy.check_interval_ms) <= now_ms;
        if check {
            self.checked_at = Some(now_ms);
        }
        let retry = after(self.retried_at, self.policy.retry_interval_ms) <= now_ms;
        if retry {
            self.retried_at = Some(now_ms);
        }
        Due {
            removals,
            check,
            retry,
        }
    }
}

impl Engine {
    /// After an input: makes late-add retries due at once if `events` show a member that is
    /// missing from our Send Group of its DGroup active (it posted a Welcome of its Send
    /// Group, or committed in it), since it has uploaded key packages by then.
    pub(crate) fn note_activity<'e>(
        &mut self,
        events: impl Iterator<Item = &'e Event>,
    ) -> Result<(), EngineError> {
        let mut seen: Vec<(&DGroupId, &str)> = Vec::new();
        for e in events {
            // A member added to a DGroup: we add it to our Send Group at once.
            if matches!(e, Event::MemberAdded { .. }) {
                self.duties.retry_now();
                return Ok(());
            }
            let (Event::JoinedSendGroup { dgroup, owner, .. }
            | Event::SendGroupAdvanced { dgroup, owner, .. }) = e
            else {
                continue;
            };
            if seen.contains(&(dgroup, owner.as_str())) {
                continue;
            }
            seen.push((dgroup, owner.as_str()));
            if members::missing(&self.conn, dgroup)?.contains(owner) {
                self.duties.retry_now();
                return Ok(());
            }
        }
        Ok(())
    }

    /// Sets when the clock-driven duties run (not persisted); the next caught-up
    /// [`Engine::handle_timeout`] looks for overdue acknowledgements and members to evict with
    /// it.
    pub fn set_duty_policy(&mut self, policy: DutyPolicy) {
        self.duties.set_policy(policy);
    }

    /// The duty policy in force.
    pub fn duty_policy(&self) -> DutyPolicy {
        self.duties.policy
    }

    /// Tells the engine whether the relay had nothing newer for us at the shell's last sync.
    /// Overdue acknowledgements and eviction run only while it is true, so that commits
    /// waiting on the relay count; a new engine is not caught up.
    pub fn set_caught_up(&mut self, caught_up: bool) {
        self.duties.caught_up = caught_up;
    }

    /// When [`Engine::handle_timeout`] next has something to do, on the shell's clock
    /// (milliseconds since the Unix epoch; a time already past means at once), or `None`.
    /// It changes after every input, [`Engine::set_caught_up`] and
    /// [`Engine::handle_timeout`].
    pub fn poll_timeout(&self) -> Option<u64> {
        self.duties.next()
    }

    /// Does the clock-driven duties due at `now_ms`, in this order: commits removals learned
    /// from other Send Groups after a group message was handled
    /// ([`Engine::commit_pending_removals`]); while caught up, at most once per check
    /// interval, acknowledges what is overdue ([`Engine::acknowledge_overdue`]) and then
    /// evicts members behind for longer than the threshold ([`Engine::evict_silent_members`],
    /// reported as [`Event::MemberEvicted`]); at most once per retry interval, claims key
    /// packages again for missing members ([`Engine::retry_missing_members`]). What they
    /// queue is in the outbox. A duty that fails is tried again when next due.
    pub fn handle_timeout(&mut self, now_ms: u64) -> Result<Vec<Event>, EngineError> {
        let due = self.duties.take_due(now_ms);
        let mut events = Vec::new();
        if due.removals {
            self.commit_pending_removals(now_ms)?;
        }
        if due.check {
            // Our own acknowledgements first, so that others do not evict us for only reading.
            self.acknowledge_overdue(now_ms, self.duties.policy.ack_deadline_ms)?;
            if let Some(threshold_ms) = self.duties.policy.eviction_threshold_ms {
                events.extend(self.evict_silent_members(now_ms, threshold_ms)?);
            }
        }
        if due.retry {
            self.retry_missing_members()?;
        }
        Ok(events)
    }
}

/// `interval` after `last`, or 0 (due at once) when it never ran.
fn after(last: Option<u64>, interval: u64) -> u64 {
    last.map_or(0, |t| t.saturating_add(interval))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duties_fall_due_by_the_clock() {
        let mut d = Duties::default();
        // A fresh engine retries missing members at once, and checks nothing before it is
        // caught up.
        assert_eq!(d.next(), Some(0));
        assert_eq!(
            d.take_due(5),
            Due {
                retry: true,
                ..Due::default()
            }
        );
        assert_eq!(d.next(), Some(60_005));
        d.note_group_message(10);
        d.note_group_message(20);
        assert_eq!(d.next(), Some(10));
        d.caught_up = true;
        assert_eq!(d.next(), Some(0));
        assert_eq!(
            d.take_due(30),
            Due {
                removals: true,
                check: true,
                retry: false
            }
        );
        assert_eq!(d.next(), Some(60_005));
        assert_eq!(d.take_due(60_004), Due::default());
        let all = d.take_due(60_030);
        assert!(all.check && all.retry && !all.removals);
        // A new policy is checked with at the next caught-up call.
        d.set_policy(DutyPolicy {
            eviction_threshold_ms: Some(0),
            ..DutyPolicy::default()
        });
        assert_eq!(d.policy.eviction_threshold_ms, Some(1));
        assert_eq!(d.next(), Some(0));
        d.caught_up = false;
        assert_eq!(d.next(), Some(120_030));
    }
}
