//! Read-only views of the state: outbox, DGroups, status, history, followed groups.

use rusqlite::params;

use super::ctx::{Ctx, credential_identity};
use super::ids::{DGroupId, MessageId, PskId};
use super::state::CachedSql as _;
use super::{
    DGroupStatus, DGroupSummary, EngineError, FollowedGroup, OutboxItem, ReceivedMessage,
    SendGroupStatus, WaitReason, WaitingMessage,
};

impl Ctx<'_> {
    pub(crate) fn outbox(&self) -> Result<Vec<OutboxItem>, EngineError> {
        let mut st = self
            .conn
            .prepare_cached("SELECT id, effect FROM dmls_outbox ORDER BY id")?;
        let rows: Vec<(i64, Vec<u8>)> = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        rows.into_iter()
            .map(|(id, bytes)| {
                let effect = Self::decode_effect(id, &bytes)?;
                Ok(OutboxItem {
                    id: id as u64,
                    effect,
                })
            })
            .collect()
    }

    pub(crate) fn outbox_done(&self, id: u64) -> Result<(), EngineError> {
        self.conn
            .exec_cached("DELETE FROM dmls_outbox WHERE id = ?1", [id as i64])?;
        Ok(())
    }

    pub(crate) fn summary(&self, d: &DGroupId) -> Result<DGroupSummary, EngineError> {
        let (config, _, we_are_removed) = self
            .config(d)?
            .ok_or_else(|| EngineError::UnknownDGroup(d.to_hex()))?;
        Ok(DGroupSummary {
            id: *d,
            name: config.name,
            members: config.members,
            removed: self.removed(d)?.into_iter().map(|r| r.0).collect(),
            we_are_removed,
        })
    }

    pub(crate) fn dgroups(&self) -> Result<Vec<DGroupSummary>, EngineError> {
        let mut st = self
            .conn
            .prepare_cached("SELECT dgroup_id FROM dmls_dgroup ORDER BY rowid")?;
        let ids: Vec<Vec<u8>> = st.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
        ids.iter()
            .map(|id| self.summary(&DGroupId::from_slice(id)?))
            .collect()
    }

    pub(crate) fn status(&self, d: &DGroupId) -> Result<DGroupStatus, EngineError> {
        let summary = self.summary(d)?;
        let acks = self.dgroup_acks(d)?;
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
            let mut st = self.conn.prepare_cached(
                "SELECT epoch, is_commit, wait_kind, wait_epoch, wait_psk FROM dmls_waiting
                 WHERE group_id = ?1 ORDER BY epoch, id",
            )?;
            let waiting = st
                .query_map([gid.as_slice()], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, bool>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, Option<i64>>(3)?,
                        r.get::<_, Option<Vec<u8>>>(4)?,
                    ))
                })?
                .collect::<Result<Vec<_>, _>>()?
                .into_iter()
                .map(|(epoch, is_commit, kind, we, wp)| {
                    let waits_for = match kind.as_str() {
                        "psk" => WaitReason::Psk(PskId::from_bytes(&wp.unwrap_or_default())?),
                        "welcome" => WaitReason::Welcome,
                        "proposal" => WaitReason::Proposal(we.unwrap_or(0) as u64),
                        "commit" => WaitReason::Commit(we.unwrap_or(0) as u64),
                        "stopped" => WaitReason::Stopped,
                        _ => WaitReason::Epoch(we.unwrap_or(0) as u64),
                    };
                    Ok(WaitingMessage {
                        epoch: epoch as u64,
                        is_commit,
                        waits_for,
                    })
                })
                .collect::<Result<Vec<_>, EngineError>>()?;
            // Who holds back deletion of older PSKs of this group (PROTOCOL.md
            // "Acknowledgement and key deletion"): current members other than the owner that
            // have not imported its latest epoch we hold.
            let mut holders = Vec::new();
            if let Some(latest) = self.latest_psk_epoch(&gid)? {
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
            });
        }
        let pending_removals = self
            .removed(d)?
            .into_iter()
            .filter(|r| r.1)
            .map(|r| r.0)
            .collect();
        Ok(DGroupStatus {
            summary,
            send_groups,
            pending_removals,
            unimported: self.unimported(d)?,
        })
    }

    pub(crate) fn history(
        &self,
        d: &DGroupId,
        limit: usize,
    ) -> Result<Vec<ReceivedMessage>, EngineError> {
        self.summary(d)?;
        let mut st = self.conn.prepare_cached(
            "SELECT sender, sent_at_ms, message_id, content_type, body, epoch, generation FROM dmls_history
             WHERE dgroup_id = ?1 ORDER BY id DESC LIMIT ?2",
        )?;
        let mut out = st
            .query_map(params![d.0.as_slice(), limit as i64], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, Vec<u8>>(4)?,
                    r.get::<_, i64>(5)?,
                    r.get::<_, Option<i64>>(6)?,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .map(|(sender, sent, mid, ct, body, epoch, generation)| {
                let message_id = MessageId(mid.as_slice().try_into().map_err(|_| {
                    EngineError::Internal("stored message id is not 16 bytes".into())
                })?);
                Ok(ReceivedMessage {
                    dgroup: *d,
                    sender,
                    sent_at_ms: sent as u64,
                    message_id,
                    content_type: ct,
                    body,
                    epoch: epoch as u64,
                    generation: generation.map(|g| g as u32),
                })
            })
            .collect::<Result<Vec<_>, EngineError>>()?;
        out.reverse();
        Ok(out)
    }

    pub(crate) fn followed_groups(&self) -> Result<Vec<FollowedGroup>, EngineError> {
        let mut st = self.conn.prepare_cached(
            "SELECT owner, group_id, after_seq FROM dmls_send_group ORDER BY rowid",
        )?;
        let rows = st
            .query_map([], |r| {
                Ok(FollowedGroup {
                    owner: r.get(0)?,
                    group_id: hex::encode(r.get::<_, Vec<u8>>(1)?),
                    after_seq: r.get::<_, i64>(2)? as u64,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
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
        let n = self.write_send_group(
            "UPDATE dmls_send_group SET after_seq = MAX(after_seq, ?3) WHERE group_id = ?1 AND owner = ?2",
            params![gid, owner, seq as i64],
        )?;
        if n == 0 {
            return Err(EngineError::UnknownSendGroup {
                owner: owner.to_owned(),
                group_id: group_id.to_owned(),
            });
        }
        Ok(())
    }
}
