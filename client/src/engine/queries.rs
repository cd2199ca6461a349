//! Read-only views of the state: outbox, DGroups, status, history, followed groups.

use super::ctx::{Ctx, credential_identity};
use super::ids::DGroupId;
use super::store::{
    acks, commit_log, dgroups, history, last_resort, members, meta, outbox, psks, send_groups,
    waiting,
};
use super::{
    DGroupGraph, DGroupStatus, DGroupSummary, EngineError, FollowedGroup, GraphCommit, OutboxItem,
    ReceivedMessage, SendGroupStatus,
};

impl Ctx<'_> {
    pub(crate) fn outbox(&self) -> Result<Vec<OutboxItem>, EngineError> {
        outbox::all(self.conn)
    }

    pub(crate) fn outbox_done(&self, id: u64) -> Result<(), EngineError> {
        outbox::delete(self.conn, id)
    }

    pub(crate) fn summary(&self, d: &DGroupId) -> Result<DGroupSummary, EngineError> {
        let (config, _, we_are_removed) = self
            .config(d)?
            .ok_or_else(|| EngineError::UnknownDGroup(d.to_hex()))?;
        let register = dgroups::name_register(self.conn, d)?
            .ok_or_else(|| EngineError::UnknownDGroup(d.to_hex()))?;
        Ok(DGroupSummary {
            id: *d,
            name: register.name,
            renamed_by: (register.clock > 0).then_some(register.set_by),
            members: config.members,
            removed: members::removed_names(self.conn, d)?,
            we_are_removed,
            left_ms: dgroups::left_ms(self.conn, d)?,
            add_policy: config.add_policy,
        })
    }

    pub(crate) fn dgroups(&self) -> Result<Vec<DGroupSummary>, EngineError> {
        dgroups::all(self.conn)?
            .iter()
            .map(|d| self.summary(d))
            .collect()
    }

    pub(crate) fn status(&self, d: &DGroupId) -> Result<DGroupStatus, EngineError> {
        let summary = self.summary(d)?;
        let acks = acks::of_dgroup(self.conn, d)?;
        let behind = self.behind_since(d)?;
        let mut send_groups = Vec::new();
        for owner in &summary.members {
            let gid = super::ids::send_group_id(d, owner);
            let Some(sg) = self.send_group(&gid)? else {
                continue;
            };
            let (epoch, members, auth) = if sg.joined {
                self.with_group(&gid, |g| {
                    let members = g
                        .members()
                        .filter_map(|m| credential_identity(&m.credential).ok())
                        .collect();
                    Ok((
                        Some(g.epoch().as_u64()),
                        members,
                        Some(hex::encode(g.epoch_authenticator().as_slice())),
                    ))
                })?
            } else {
                (None, Vec::new(), None)
            };
            let waiting = waiting::of_group(self.conn, &gid)?;
            // Who holds back deletion of older PSKs of this group (PROTOCOL.md
            // "Acknowledgement and key deletion"): current members other than the owner that
            // have not imported its latest epoch we hold.
            let mut holders = Vec::new();
            if let Some(latest) = psks::latest_epoch(self.conn, &gid)? {
                for m in &summary.members {
                    if *m == sg.owner || summary.removed.contains(m) {
                        continue;
                    }
                    let acked = acks.get(m).and_then(|a| a.get(&gid));
                    if acked.is_none_or(|a| *a < latest) {
                        holders.push(m.clone());
                    }
                }
            }
            let behind_since_ms = behind.get(&sg.owner).copied();
            send_groups.push(SendGroupStatus {
                owner: sg.owner,
                group_id: hex::encode(gid),
                joined: sg.joined,
                epoch,
                members,
                epoch_authenticator: auth,
                after_seq: sg.after_seq,
                waiting,
                psk_deletion_holders: holders,
                behind_since_ms,
                last_resort_leaf: last_resort::get(self.conn, &gid)?.is_some(),
            });
        }
        let summary_members = summary.members.clone();
        // Nobody is left to verify in a DGroup we left.
        let unverified = if summary.left_ms.is_some() {
            Vec::new()
        } else {
            self.unverified_members(d)?
        };
        let pending_removals = members::removed(self.conn, d)?
            .into_iter()
            .filter(|r| r.1)
            .map(|r| r.0)
            .collect();
        let pending_adds = self.pending_adds(&summary, &send_groups)?;
        Ok(DGroupStatus {
            held_welcomes: dgroups::held_welcome_count(self.conn, d)?,
            summary,
            send_groups,
            pending_removals,
            pending_adds,
            unimported: self.unimported(d)?,
            key_mismatches: self.key_mismatches(d)?,
            unverified,
            key_changes: self
                .key_changes()?
                .into_iter()
                .filter(|k| summary_members.contains(&k.client_id))
                .collect(),
        })
    }

    /// Members of the config not known to be removed and not in our own Send Group yet,
    /// once it is set up (docs/PROTOCOL.md "Add", "Late add"), from the status's rows.
    fn pending_adds(
        &self,
        summary: &DGroupSummary,
        send_groups: &[SendGroupStatus],
    ) -> Result<Vec<String>, EngineError> {
        let me = self.me()?;
        let Some(own) = send_groups.iter().find(|g| g.owner == me && g.joined) else {
            return Ok(Vec::new());
        };
        if summary.we_are_removed {
            return Ok(Vec::new());
        }
        Ok(summary
            .members
            .iter()
            .filter(|m| **m != me && !summary.removed.contains(m) && !own.members.contains(m))
            .cloned()
            .collect())
    }

    pub(crate) fn graph(&self, d: &DGroupId) -> Result<DGroupGraph, EngineError> {
        let status = self.status(d)?;
        let mut commits = Vec::with_capacity(status.send_groups.len());
        for sg in &status.send_groups {
            let gid = super::ids::send_group_id(d, &sg.owner);
            commits.push(
                commit_log::of_group(self.conn, &gid)?
                    .into_iter()
                    .map(|c| GraphCommit {
                        epoch: c.epoch,
                        imports: c.imports,
                        removed: c.removed,
                    })
                    .collect(),
            );
        }
        Ok(DGroupGraph { status, commits })
    }

    pub(crate) fn history(
        &self,
        d: &DGroupId,
        limit: usize,
    ) -> Result<Vec<ReceivedMessage>, EngineError> {
        self.summary(d)?;
        history::last(self.conn, d, limit)
    }

    pub(crate) fn followed_groups(&self) -> Result<Vec<FollowedGroup>, EngineError> {
        send_groups::followed(self.conn)
    }

    pub(crate) fn set_group_cursor(
        &self,
        owner: &str,
        group_id: &str,
        seq: u64,
    ) -> Result<(), EngineError> {
        let gid = hex::decode(group_id).map_err(|_| {
            EngineError::InvalidArgument(format!("group id {group_id:?} is not hex"))
        })?;
        let known =
            self.write_send_group(|conn| send_groups::advance_cursor_of(conn, &gid, owner, seq))?;
        if !known {
            return Err(EngineError::UnknownSendGroup {
                owner: owner.to_owned(),
                group_id: group_id.to_owned(),
            });
        }
        Ok(())
    }

    pub(crate) fn set_welcome_cursor(&self, id: u64) -> Result<(), EngineError> {
        if id > meta::welcome_cursor(self.conn)? {
            meta::set_welcome_cursor(self.conn, id)?;
        }
        Ok(())
    }

    pub(crate) fn welcome_cursor(&self) -> Result<u64, EngineError> {
        meta::welcome_cursor(self.conn)
    }
}
