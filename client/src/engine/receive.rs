//! Receiving without any order (PROTOCOL.md "Receiving (UNPROTECT) and ordering", "INIT"
//! steps 2 and 3, "Removal").

use openmls::prelude::*;
use openmls_traits::storage::StorageProvider as _;
use tls_codec::Deserialize as _;

use super::config::{DGroupConfig, DMLS_EXTENSION_TYPE};
use super::contacts::KeyCheck;
use super::ctx::{Ctx, credential_identity, external_psk_id, join_config, message_hash};
use super::deferred::Refresh;
use super::envelope::{DmlsEnvelope, is_control};
use super::ids::{PskId, send_group_id};
use super::leave::LEAVE_CONTENT_TYPE;
use super::name::NAME_CONTENT_TYPE;
use super::store::meta::{self, Key as MetaKey};
use super::store::send_groups::{self, SendGroupRow};
use super::store::waiting::{self, Trigger};
use super::store::{
    Savepoint, commit_log, contacts, dgroups, history, last_resort, members, psks, seen,
};
use super::{EngineError, Event, ReceivedMessage, WaitReason};

/// Up to this many deferred leaf refreshes of an epoch are processed before a commit of that
/// epoch (it may reference them); with more, the commit is tried alone first.
const FEED_DEFERRED_FIRST_MAX: u64 = 4;

/// What one openmls `process_message` call gave.
enum Attempt {
    Processed(Box<ProcessedMessage>),
    /// The commit references a proposal we have not stored.
    MissingProposal,
    /// A replay of a generation already consumed: a duplicate.
    Replay,
}

/// What [`Ctx::quick_class`] tells of a message before any processing.
#[derive(PartialEq, Eq)]
enum Quick {
    /// A commit or proposal of an epoch the group has left: nothing to do, nothing to record
    /// (it is recognised as stale again at no cost).
    Stale,
    /// A leaf refresh to keep unprocessed ([`WaitReason::Commit`]).
    Defer,
    /// Everything else: [`Ctx::ingest`] decides, in a savepoint.
    Full,
}

/// What happened to one message.
enum Outcome {
    Done(Vec<Event>),
    Wait(WaitReason),
}

fn parse_protocol(data: &[u8]) -> Result<PrivateMessageIn, EngineError> {
    let msg = MlsMessageIn::tls_deserialize_exact(data)
        .map_err(|e| EngineError::Malformed(format!("not an MLSMessage: {e}")))?;
    match msg.extract() {
        MlsMessageBodyIn::PrivateMessage(pm) => Ok(pm),
        _ => Err(EngineError::Rejected(
            "Send Group messages must be PrivateMessages".into(),
        )),
    }
}

impl Ctx<'_> {
    /// A message from a Send Group on the relay. Atomic on its own: on an input error nothing
    /// changed except the noted cursor (the caller's transaction drops that too, unless it
    /// is [`super::Engine::handle_batch`], which moves past a rejected message).
    pub(crate) fn group_message(
        &mut self,
        owner: &str,
        group_id_hex: &str,
        seq: Option<u64>,
        data: &[u8],
    ) -> Result<Vec<Event>, EngineError> {
        let unknown = || EngineError::UnknownSendGroup {
            owner: owner.to_owned(),
            group_id: group_id_hex.to_owned(),
        };
        let gid: [u8; 32] = hex::decode(group_id_hex)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(unknown)?;
        let sg = self.send_group(&gid)?.ok_or_else(unknown)?;
        if sg.owner != owner {
            return Err(unknown());
        }
        if let Some(seq) = seq {
            self.note_cursor(gid, seq);
        }
        let pm = parse_protocol(data)?;
        if pm.group_id().as_slice() != gid.as_slice() {
            return Err(EngineError::Rejected(
                "message names another group than the relay group it came from".into(),
            ));
        }
        let (epoch, ct) = (pm.epoch().as_u64(), pm.content_type());
        // Most messages of a round are stale or deferred leaf refreshes: decided by reading
        // alone, and held in memory (if at all, see `deferred.rs`), with no savepoint.
        let quick = self.quick_class(&sg, epoch, ct);
        if quick == Quick::Stale {
            return Ok(Vec::new());
        }
        let hash = message_hash(data);
        if self.seen_or_waiting(&hash)? {
            self.counters.duplicates += 1;
            return Ok(Vec::new());
        }
        let mut events = if quick == Quick::Defer {
            self.store_waiting(
                &sg.group_id,
                data,
                &hash,
                &WaitReason::Commit(epoch),
                epoch,
                false,
            )?;
            self.proposal_deferred(&sg.group_id, epoch)?;
            Vec::new()
        } else {
            self.savepoint(Savepoint::Input, |c| {
                Ok(match c.ingest(&sg, data, &hash)? {
                    Outcome::Done(ev) => ev,
                    Outcome::Wait(w) => {
                        let is_commit = ct == ContentType::Commit;
                        c.store_waiting(&sg.group_id, data, &hash, &w, epoch, is_commit)?;
                        Vec::new()
                    }
                })
            })?
        };
        events.extend(self.run_triggers()?);
        Ok(events)
    }

    /// What [`Ctx::ingest`] would decide for a commit or proposal, when that can be told from
    /// the message header and the cached group alone and needs no processing:
    /// [`Quick::Full`] whenever in doubt.
    fn quick_class(&self, sg: &SendGroupRow, epoch: u64, ct: ContentType) -> Quick {
        if !sg.joined
            || sg.stop_epoch.is_some()
            || ct == ContentType::Application
            || epoch < sg.joined_epoch.unwrap_or(0)
        {
            return Quick::Full;
        }
        let Some(group) = self.groups.get(&sg.group_id) else {
            return Quick::Full;
        };
        let current = group.epoch().as_u64();
        if !group.is_active() {
            Quick::Full
        } else if epoch < current {
            Quick::Stale
        } else if epoch == current && ct == ContentType::Proposal && !sg.is_own {
            Quick::Defer
        } else {
            Quick::Full
        }
    }

    /// A leaf refresh of `epoch` is kept unprocessed ([`WaitReason::Commit`]): a commit that waits
    /// for a proposal of that epoch may try again.
    fn proposal_deferred(&mut self, gid: &[u8; 32], epoch: u64) -> Result<(), EngineError> {
        if self.may_wait_for_proposal(gid)? {
            self.triggers.push(Trigger::Proposal(*gid, epoch));
        }
        Ok(())
    }

    /// Whether a message was processed (or ignored for good) already, or waits: one query
    /// (and a look at the deferred leaf refreshes of this operation).
    fn seen_or_waiting(&self, hash: &[u8; 32]) -> Result<bool, EngineError> {
        if self.deferred.contains(hash) {
            return Ok(true);
        }
        seen::seen_or_waiting(self.conn, hash)
    }

    /// Keeps a message that waits for `w`.
    fn store_waiting(
        &mut self,
        gid: &[u8; 32],
        data: &[u8],
        hash: &[u8; 32],
        w: &WaitReason,
        epoch: u64,
        is_commit: bool,
    ) -> Result<(), EngineError> {
        match w {
            WaitReason::Proposal(_) => self.set_proposal_wait(*gid),
            WaitReason::Commit(e) => {
                // In memory until the end of the operation (see `deferred.rs`).
                self.deferred.insert(*gid, *e, *hash, data.to_vec());
                return Ok(());
            }
            _ => {}
        }
        waiting::insert(self.conn, gid, epoch, is_commit, w, hash, data)
    }

    /// Writes the deferred leaf refreshes still held in memory to `dmls_waiting`: at the end
    /// of every operation, in its transaction.
    pub(crate) fn flush_deferred(&mut self) -> Result<(), EngineError> {
        for ((gid, epoch), r) in self.deferred.take_all() {
            self.insert_deferred(&gid, epoch, &r)?;
        }
        Ok(())
    }

    /// One deferred leaf refresh as a `dmls_waiting` row.
    fn insert_deferred(&self, gid: &[u8; 32], epoch: u64, r: &Refresh) -> Result<(), EngineError> {
        let w = WaitReason::Commit(epoch);
        waiting::insert(self.conn, gid, epoch, false, &w, &r.hash, &r.data)
    }

    /// Processes queued triggers until none is left: each releases exactly the waiting
    /// messages that wait for it. A released message that fails is dropped; the others go on.
    pub(crate) fn run_triggers(&mut self) -> Result<Vec<Event>, EngineError> {
        let mut events = Vec::new();
        while !self.triggers.is_empty() {
            let t = self.triggers.remove(0);
            let rows = waiting::released_by(self.conn, &t)?;
            for w in rows {
                waiting::delete(self.conn, w.id)?;
                let (data, epoch, is_commit) = (w.data, w.epoch, w.is_commit);
                let Some(gid) = super::store::id32(&w.group_id) else {
                    continue;
                };
                let Some(sg) = self.send_group(&gid)? else {
                    continue;
                };
                let hash = message_hash(&data);
                match self.savepoint(Savepoint::Released, |c| c.ingest(&sg, &data, &hash)) {
                    Ok(Outcome::Done(ev)) => events.extend(ev),
                    Ok(Outcome::Wait(w)) => {
                        self.store_waiting(&gid, &data, &hash, &w, epoch, is_commit)?
                    }
                    Err(e) if e.is_input_error() => {
                        // A bad message changes nothing; drop it for good.
                        seen::insert(self.conn, &hash)?;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(events)
    }

    /// Decides what to do with one message of a Send Group, and does it.
    fn ingest(
        &mut self,
        sg: &SendGroupRow,
        data: &[u8],
        hash: &[u8; 32],
    ) -> Result<Outcome, EngineError> {
        let pm = parse_protocol(data)?;
        if pm.group_id().as_slice() != sg.group_id.as_slice() {
            return Err(EngineError::Rejected(
                "message names another group than the relay group it came from".into(),
            ));
        }
        let epoch = pm.epoch().as_u64();
        let ct = pm.content_type();
        if !sg.joined {
            // A removed owner's group that is closed is never joined: nothing of it is kept.
            if sg.closed {
                return Ok(Outcome::Done(Vec::new()));
            }
            return Ok(Outcome::Wait(WaitReason::Welcome));
        }
        let done_nothing = |c: &Ctx<'_>| -> Result<Outcome, EngineError> {
            seen::insert(c.conn, hash)?;
            Ok(Outcome::Done(Vec::new()))
        };
        // Removed owner: nothing beyond the epoch we held when we learned of the removal
        // (PROTOCOL.md "Removal"), except its commits up to an epoch that a commit we process
        // imports (docs/PROTOCOL.md "Removal race"): those are kept until then.
        if let (Some(stop), Some(limit)) = (sg.stop_epoch, sg.limit()) {
            match ct {
                ContentType::Application if epoch > stop => return done_nothing(self),
                // Closed: no commit can import a later epoch of it, so nothing is kept.
                ContentType::Commit | ContentType::Proposal if epoch >= limit && sg.closed => {
                    return Ok(Outcome::Done(Vec::new()));
                }
                ContentType::Commit | ContentType::Proposal if epoch >= limit => {
                    return Ok(Outcome::Wait(WaitReason::Stopped));
                }
                _ => {}
            }
        }
        // Messages of epochs before we joined are ignored (PROTOCOL.md "INIT").
        if epoch < sg.joined_epoch.unwrap_or(0) {
            return done_nothing(self);
        }
        let mut group = self.take_group(&sg.group_id)?;
        let result = self.ingest_into(&mut group, sg, data, hash, epoch, ct);
        // On success the group in memory equals storage; on error the caller rolls back.
        if result.is_ok() {
            self.keep_group(sg.group_id, group);
        }
        result
    }

    /// [`Ctx::ingest`] once the group is at hand: order checks, processing, then what the
    /// processed content does.
    fn ingest_into(
        &mut self,
        group: &mut MlsGroup,
        sg: &SendGroupRow,
        data: &[u8],
        hash: &[u8; 32],
        epoch: u64,
        ct: ContentType,
    ) -> Result<Outcome, EngineError> {
        if !group.is_active() {
            seen::insert(self.conn, hash)?;
            return Ok(Outcome::Done(Vec::new()));
        }
        let aad_psks = match self.check_order(group, sg, data, epoch, ct)? {
            Ok(psks) => psks,
            Err(outcome) => return Ok(outcome),
        };
        let processed = match self.process(group, sg, data, epoch, ct)? {
            Ok(p) => p,
            Err(Attempt::MissingProposal) => return Ok(Outcome::Wait(WaitReason::Proposal(epoch))),
            Err(_) => {
                self.counters.duplicates += 1;
                seen::insert(self.conn, hash)?;
                return Ok(Outcome::Done(Vec::new()));
            }
        };
        let sender = match processed.sender() {
            Sender::Member(l) => *l,
            _ => return Err(EngineError::Rejected("sender is not a member".into())),
        };
        let owner_sent = sender == LeafNodeIndex::new(0);
        let sender_id = credential_identity(processed.credential())?;
        let mut events = Vec::new();
        match processed.into_content() {
            ProcessedMessageContent::ApplicationMessage(app) => {
                // Owner-only (PROTOCOL.md "Terms": only the owner sends in a Send Group).
                if !owner_sent || sender_id != sg.owner {
                    return Err(EngineError::Rejected(format!(
                        "application message from non-owner {sender_id}"
                    )));
                }
                events = self.application_message(sg, epoch, app)?;
            }
            ProcessedMessageContent::ProposalMessage(qp) => {
                // Only a self-Update proposal from a non-owner (PROTOCOL.md "Leaf refresh").
                if owner_sent || !matches!(qp.proposal(), Proposal::Update(_)) {
                    return Err(EngineError::Rejected(format!(
                        "only a member's own Update proposal is accepted, got another proposal from {sender_id}"
                    )));
                }
                refresh_keeps_key(group, &qp)?;
                group
                    .store_pending_proposal(&self.provider.storage, *qp)
                    .map_err(|e| EngineError::mls("storing proposal", e))?;
            }
            ProcessedMessageContent::StagedCommitMessage(staged) => {
                if !owner_sent || sender_id != sg.owner {
                    return Err(EngineError::Rejected(format!(
                        "commit from non-owner {sender_id}"
                    )));
                }
                events = self.merge_commit(group, sg, epoch, *staged, &aad_psks)?;
            }
            _ => return Err(EngineError::Rejected("unexpected message content".into())),
        }
        self.counters.processed += 1;
        seen::insert(self.conn, hash)?;
        Ok(Outcome::Done(events))
    }

    /// Whether a message of `epoch` can be processed now by a group at its current epoch
    /// (PROTOCOL.md "Receiving"): `Ok` with the PSKs a commit's dependency hint names (all
    /// stored), else what to do with it instead.
    fn check_order(
        &mut self,
        group: &MlsGroup,
        sg: &SendGroupRow,
        data: &[u8],
        epoch: u64,
        ct: ContentType,
    ) -> Result<Result<Vec<PskId>, Outcome>, EngineError> {
        let current = group.epoch().as_u64();
        if epoch > current {
            return Ok(Err(Outcome::Wait(WaitReason::Epoch(epoch))));
        }
        match ct {
            // Stale: recognised as such again at no cost, so not recorded as seen.
            ContentType::Commit if epoch < current => Ok(Err(Outcome::Done(Vec::new()))),
            ContentType::Commit => {
                // Read the dependency hint before decrypting (PROTOCOL.md "Dependency hint").
                let aad_psks = PskId::list_from_aad(parse_protocol(data)?.aad())?;
                for p in &aad_psks {
                    if !psks::contains(self.conn, p)? {
                        if p.group_id != sg.group_id {
                            self.raise_psk_limit(p)?;
                        }
                        return Ok(Err(Outcome::Wait(WaitReason::Psk(*p))));
                    }
                }
                Ok(Ok(aad_psks))
            }
            // A stale leaf refresh: its sender sends it again with its next update.
            ContentType::Proposal if epoch < current => Ok(Err(Outcome::Done(Vec::new()))),
            ContentType::Proposal if !sg.is_own => {
                // Only the owner commits it, so we need it only if the owner's commit of
                // this epoch references it; most never are (the owner commits first and
                // they go stale). Keep it unprocessed until then, and let a commit that
                // waits for a proposal of this epoch try again.
                self.proposal_deferred(&sg.group_id, epoch)?;
                Ok(Err(Outcome::Wait(WaitReason::Commit(epoch))))
            }
            _ => Ok(Ok(Vec::new())),
        }
    }

    /// Processes a message with openmls, feeding it the deferred leaf refreshes of its epoch
    /// a commit may reference. `Err` with [`Attempt::MissingProposal`] when a commit
    /// references a proposal we do not have, [`Attempt::Replay`] for a duplicate.
    fn process(
        &mut self,
        group: &mut MlsGroup,
        sg: &SendGroupRow,
        data: &[u8],
        epoch: u64,
        ct: ContentType,
    ) -> Result<Result<ProcessedMessage, Attempt>, EngineError> {
        let current = group.epoch().as_u64();
        // A commit may reference deferred leaf refreshes of its epoch. Processing a few of
        // them first costs little even when the commit does not use them; with many (in a
        // round where everyone updates at once, the owner usually committed before it saw
        // them) try the commit alone first, at the price of one failed attempt if it does.
        if ct == ContentType::Commit
            && !sg.is_own
            && self.deferred_count(&sg.group_id, epoch)? <= FEED_DEFERRED_FIRST_MAX
        {
            self.process_deferred_proposals(group, sg, epoch)?;
        }
        match self.attempt(group, sg, data, epoch, current, ct)? {
            Attempt::Processed(p) => Ok(Ok(*p)),
            Attempt::MissingProposal => {
                // The commit references leaf refreshes: process the deferred ones of this
                // epoch, then the commit again.
                if self.process_deferred_proposals(group, sg, epoch)? == 0 {
                    return Ok(Err(Attempt::MissingProposal));
                }
                match self.attempt(group, sg, data, epoch, current, ct)? {
                    Attempt::Processed(p) => Ok(Ok(*p)),
                    other => Ok(Err(other)),
                }
            }
            Attempt::Replay => Ok(Err(Attempt::Replay)),
        }
    }

    /// An application message of the owner: kept in the history and shown, unless it is a
    /// control message (docs/PROTOCOL.md "Application payload"): a leave or a name is applied,
    /// others are dropped.
    fn application_message(
        &mut self,
        sg: &SendGroupRow,
        epoch: u64,
        app: ApplicationMessage,
    ) -> Result<Vec<Event>, EngineError> {
        let env = DmlsEnvelope::decode(&app.into_bytes())?;
        if is_control(&env.content_type) {
            return if env.content_type.eq_ignore_ascii_case(LEAVE_CONTENT_TYPE) {
                self.member_left(sg)
            } else if env.content_type.eq_ignore_ascii_case(NAME_CONTENT_TYPE) {
                self.name_received(sg, &env.body)
            } else {
                Ok(Vec::new())
            };
        }
        let m = ReceivedMessage {
            dgroup: sg.dgroup_id,
            sender: sg.owner.clone(),
            sent_at_ms: env.sent_at_ms,
            message_id: env.message_id,
            content_type: env.content_type,
            body: env.body,
            epoch,
            generation: None,
        };
        history::insert(self.conn, &m)?;
        Ok(vec![Event::Message(m)])
    }

    /// Checks a commit of the owner of `sg` of `epoch` and merges it (PROTOCOL.md "Receiving",
    /// "Dependency hint", "Removal"; docs/PROTOCOL.md "Late add").
    fn merge_commit(
        &mut self,
        group: &mut MlsGroup,
        sg: &SendGroupRow,
        epoch: u64,
        staged: StagedCommit,
        aad_psks: &[PskId],
    ) -> Result<Vec<Event>, EngineError> {
        // The AAD must name exactly the imported PSKs (PROTOCOL.md "Dependency hint").
        let imported = staged
            .psk_proposals()
            .map(|q| external_psk_id(q.psk_proposal()))
            .collect::<Result<Vec<_>, _>>()?;
        if imported != aad_psks {
            return Err(EngineError::Rejected(
                "commit authenticated_data differs from its PSK proposals".into(),
            ));
        }
        // docs/PROTOCOL.md "DGroup configuration": a config change only grows the config, and
        // brings new members only from a member that may add.
        let new_config = self.check_config_change(group, sg, &staged)?;
        // Late add (docs/PROTOCOL.md "Late add"): only config members not in the group yet;
        // one known to be removed stays removed (its adder did not know yet).
        let (added, stale_adds) = if staged.add_proposals().next().is_some() {
            self.check_late_adds(group, sg, &staged, new_config.as_ref())?
        } else {
            (Vec::new(), Vec::new())
        };
        // One key per identity (docs/PROTOCOL.md): the owner's path leaf keeps its key.
        if let Some(path_leaf) = staged.update_path_leaf_node() {
            let current = group
                .members()
                .find(|m| m.index == LeafNodeIndex::new(0))
                .map(|m| m.signature_key);
            if current.as_deref() != Some(path_leaf.signature_key().as_slice()) {
                return Err(EngineError::Rejected(
                    "commit changes its owner's identity key".into(),
                ));
            }
        }
        let mut removed = Vec::new();
        for r in staged.remove_proposals() {
            if let Some(c) = group.member(r.remove_proposal().removed()) {
                removed.push(credential_identity(c)?);
            }
        }
        let self_removed = staged.self_removed();
        self.removals_merged |= !removed.is_empty();
        let new_leaves = changed_leaves(&staged);
        // A removed owner's commit beyond the epoch we stopped at is merged only for
        // the PSK it lets us export (docs/PROTOCOL.md "Removal race"): none of its
        // other effects (acks, removals, events) apply.
        let beyond_stop = sg.stop_epoch.is_some_and(|s| epoch >= s);
        group
            .merge_staged_commit(&self.provider, staged)
            .map_err(|e| EngineError::mls("merging commit", e))?;
        if !beyond_stop {
            commit_log::record(
                self.conn,
                &sg.group_id,
                group.epoch().as_u64(),
                &imported,
                &removed,
            )?;
            self.ack(&sg.dgroup_id, &sg.owner, &imported)?;
            self.ack_joined(&sg.dgroup_id, &sg.group_id, epoch, &added)?;
            // Pruned once at the end of the operation (one batch of inputs), not
            // per commit: every commit of a round names every group.
            self.prune_later
                .extend(imported.iter().map(|p| (sg.dgroup_id, *p)));
        }
        let mut events = self.commit_merged(group, sg, self_removed, beyond_stop)?;
        if let Some(config) = new_config.filter(|_| !beyond_stop) {
            events.extend(self.adopt_config(&sg.dgroup_id, &config, &sg.owner)?);
        }
        if beyond_stop {
            removed.clear();
        } else {
            // docs/PROTOCOL.md "Pinning": the leaves the commit brought in or changed.
            let name = dgroups::name(self.conn, &sg.dgroup_id)?.unwrap_or_default();
            for (id, key) in new_leaves {
                let check = self.check_key(&id, &key, Some(sg.dgroup_id), || {
                    format!("a leaf in {}'s Send Group of DGroup {name:?}", sg.owner)
                })?;
                if let KeyCheck::Changed(e) = check {
                    events.push(*e);
                }
            }
        }
        if !beyond_stop {
            for x in stale_adds {
                events.push(Event::Ignored {
                    reason: format!(
                        "{} added {x} to its Send Group, but {x} is known to be removed: {x} stays \
                         removed (its owner removes it again once it learns of the removal)",
                        sg.owner
                    ),
                });
            }
        }
        for x in removed {
            if self.note_removed(&sg.dgroup_id, &x)? {
                events.push(Event::MemberRemoved {
                    dgroup: sg.dgroup_id,
                    member: x,
                    by: sg.owner.clone(),
                });
            }
        }
        Ok(events)
    }

    /// After merging a commit of `sg`: drops the leaf refreshes it left behind, then exports
    /// the new epoch's PSK and releases what waits for it, or, if it removed us, records that.
    fn commit_merged(
        &mut self,
        group: &MlsGroup,
        sg: &SendGroupRow,
        self_removed: bool,
        beyond_stop: bool,
    ) -> Result<Vec<Event>, EngineError> {
        let new_epoch = group.epoch().as_u64();
        // Deferred leaf refreshes of older epochs can no longer be committed.
        self.deferred.drop_older(&sg.group_id, new_epoch);
        waiting::drop_deferred_before(self.conn, &sg.group_id, new_epoch)?;
        let mut events = Vec::new();
        if self_removed {
            // Beyond the stop epoch: out of a group we stopped following anyway.
            if !beyond_stop && dgroups::set_we_removed(self.conn, &sg.dgroup_id)? {
                events.push(Event::WeWereRemoved {
                    dgroup: sg.dgroup_id,
                    by: sg.owner.clone(),
                });
            }
            last_resort::delete(self.conn, &sg.group_id)?;
        } else {
            self.export_psk(group, &sg.group_id)?;
            self.triggers.push(Trigger::Epoch(sg.group_id, new_epoch));
            self.check_last_resort_leaf(group, &sg.group_id)?;
            if !beyond_stop {
                events.push(Event::SendGroupAdvanced {
                    dgroup: sg.dgroup_id,
                    owner: sg.owner.clone(),
                    epoch: new_epoch,
                });
            }
        }
        Ok(events)
    }

    /// After a commit of `gid`: if our leaf there is still the one we joined with through our
    /// last-resort key package, a new leaf refresh is due in the new epoch; if the commit
    /// replaced it, nothing more is.
    fn check_last_resort_leaf(
        &mut self,
        group: &MlsGroup,
        gid: &[u8; 32],
    ) -> Result<(), EngineError> {
        let Some(joined_with) = last_resort::get(self.conn, gid)? else {
            return Ok(());
        };
        let current = own_leaf_key(group)?;
        if current == joined_with {
            self.refresh_leaves.push(*gid);
        } else {
            last_resort::delete(self.conn, gid)?;
        }
        Ok(())
    }

    /// Proposes a leaf refresh in every Send Group of [`Ctx::refresh_leaves`] that still holds
    /// our last-resort leaf: at the end of every operation, in its transaction.
    pub(crate) fn flush_leaf_refreshes(&mut self) -> Result<(), EngineError> {
        let mut gids = std::mem::take(&mut self.refresh_leaves);
        gids.sort_unstable();
        gids.dedup();
        for gid in gids {
            if last_resort::get(self.conn, &gid)?.is_none() {
                continue;
            }
            if let Some(sg) = self.send_group(&gid)? {
                let signer = self.signer()?;
                self.propose_leaf_refresh_in(&sg, &signer)?;
            }
        }
        Ok(())
    }

    /// A commit we process waits for `psk` (docs/PROTOCOL.md "Removal race"): if it is an
    /// epoch of a removed owner's Send Group beyond the limit we process that group up to,
    /// raise the limit to it and release the group's kept commits and proposals before it.
    /// Its commits then bring us to that epoch, whose PSK releases the waiting commit.
    fn raise_psk_limit(&mut self, psk: &PskId) -> Result<(), EngineError> {
        let Some(x) = self.send_group(&psk.group_id)? else {
            return Ok(());
        };
        if !x.joined || x.limit().is_none_or(|l| psk.epoch <= l) {
            return Ok(());
        }
        self.write_send_group(|conn| send_groups::set_psk_limit(conn, &psk.group_id, psk.epoch))?;
        self.triggers.push(Trigger::Limit(psk.group_id, psk.epoch));
        Ok(())
    }

    /// We learned that the owner of Send Group `gid` was removed and stop at `stop`
    /// (see [`Ctx::note_removed`]): its waiting application messages beyond `stop` are
    /// dropped, its commits and proposals beyond it are kept as [`WaitReason::Stopped`]. Commits
    /// already waiting for the PSK of a later epoch of it raise the limit at once.
    pub(crate) fn stop_waiting(&mut self, gid: &[u8; 32], stop: u64) -> Result<(), EngineError> {
        // Its deferred leaf refreshes held in memory are kept like the stored ones.
        for (epoch, r) in self.deferred.take_group(gid) {
            self.insert_deferred(gid, epoch, &r)?;
        }
        for w in waiting::beyond_stop(self.conn, gid, stop)? {
            let application = !w.is_commit
                && parse_protocol(&w.data)
                    .is_ok_and(|pm| pm.content_type() == ContentType::Application);
            if application {
                if w.epoch > stop {
                    waiting::delete(self.conn, w.id)?;
                    seen::insert(self.conn, &message_hash(&w.data))?;
                }
            } else {
                waiting::set_stopped(self.conn, w.id)?;
            }
        }
        let latest = waiting::awaited_psks_of(self.conn, gid)?
            .into_iter()
            .max_by_key(|p| p.epoch);
        if let Some(p) = latest {
            self.raise_psk_limit(&p)?;
        }
        Ok(())
    }

    /// Accepts the Add proposals of an owner's commit only when each adds a member of the
    /// DGroup config that is not in the Send Group already (docs/PROTOCOL.md "Late add").
    /// Returns the client ids it adds, and apart those known to be removed: they stay removed
    /// (docs/PROTOCOL.md "Add", add and removal race).
    fn check_late_adds(
        &self,
        group: &MlsGroup,
        sg: &SendGroupRow,
        staged: &StagedCommit,
        new_config: Option<&DGroupConfig>,
    ) -> Result<(Vec<String>, Vec<String>), EngineError> {
        let (mut config, _, _) = self
            .config(&sg.dgroup_id)?
            .ok_or_else(|| EngineError::UnknownDGroup(sg.dgroup_id.to_hex()))?;
        if let Some(new) = new_config {
            config = config.merged(new)?;
        }
        let removed: Vec<String> = members::removed_names(self.conn, &sg.dgroup_id)?;
        let mut present: Vec<String> = group
            .members()
            .filter_map(|m| credential_identity(&m.credential).ok())
            .collect();
        let mut added = Vec::new();
        let mut stale = Vec::new();
        for a in staged.add_proposals() {
            let id = credential_identity(a.add_proposal().key_package().leaf_node().credential())?;
            let why = if !config.has_member(&id) {
                "is not a member of the DGroup config"
            } else if present.contains(&id) {
                "is in the Send Group already"
            } else if removed.contains(&id) {
                // docs/PROTOCOL.md "Add", add and removal race: its owner had not learned of
                // the removal yet. The commit is merged; the member stays removed.
                present.push(id.clone());
                stale.push(id);
                continue;
            } else if present.contains(&id) {
                "is in the Send Group already"
            } else {
                present.push(id.clone());
                added.push(id);
                continue;
            };
            return Err(EngineError::Rejected(format!(
                "commit adds {id:?}, who {why}: only missing DGroup members may be added late"
            )));
        }
        Ok((added, stale))
    }

    /// One openmls `process_message` call in a savepoint: on failure openmls's writes are
    /// rolled back and `group` is loaded again, so it still equals storage.
    fn attempt(
        &mut self,
        group: &mut MlsGroup,
        sg: &SendGroupRow,
        data: &[u8],
        epoch: u64,
        current: u64,
        ct: ContentType,
    ) -> Result<Attempt, EngineError> {
        self.counters.process_attempts += 1;
        let pm = parse_protocol(data)?;
        let conn = self.conn;
        Savepoint::Process.begin(conn)?;
        match group.process_message(&self.provider, pm) {
            Ok(p) => {
                Savepoint::Process.release(conn)?;
                Ok(Attempt::Processed(Box::new(p)))
            }
            Err(e) => {
                Savepoint::Process.rollback(conn)?;
                self.provider.storage.forget_cached();
                *group = self.load_group(&sg.group_id)?;
                if matches!(
                    e,
                    ProcessMessageError::InvalidCommit(StageCommitError::MissingProposal)
                ) {
                    return Ok(Attempt::MissingProposal);
                }
                if format!("{e:?}").contains("SecretReuseError") {
                    return Ok(Attempt::Replay);
                }
                Err(EngineError::Rejected(format!(
                    "cannot process {ct:?} message of epoch {epoch} (we are at {current}): {e}"
                )))
            }
        }
    }

    /// How many deferred leaf refreshes of `epoch` wait in a Send Group.
    fn deferred_count(&self, gid: &[u8; 32], epoch: u64) -> Result<u64, EngineError> {
        let stored = waiting::deferred_count(self.conn, gid, epoch)?;
        Ok(stored + self.deferred.count(gid, epoch) as u64)
    }

    /// Processes the deferred leaf-refresh proposals of `epoch` of a Send Group we do not
    /// own (see [`WaitReason::Commit`]) into openmls's proposal store. A bad one is dropped.
    /// Returns how many were stored.
    fn process_deferred_proposals(
        &mut self,
        group: &mut MlsGroup,
        sg: &SendGroupRow,
        epoch: u64,
    ) -> Result<usize, EngineError> {
        // Stored ones arrived in earlier operations, before those held in memory.
        let mut all = waiting::take_deferred(self.conn, &sg.group_id, epoch)?;
        all.extend(
            self.deferred
                .take(&sg.group_id, epoch)
                .into_iter()
                .map(|r| r.data),
        );
        let mut stored = 0;
        for data in all {
            let hash = message_hash(&data);
            match self.savepoint(Savepoint::Deferred, |c| {
                c.store_deferred(group, sg, &data, epoch)
            }) {
                Ok(()) => stored += 1,
                // A bad one changes nothing and is dropped.
                Err(e) if e.is_input_error() => *group = self.load_group(&sg.group_id)?,
                Err(e) => return Err(e),
            }
            seen::insert(self.conn, &hash)?;
        }
        Ok(stored)
    }

    /// Processes one deferred proposal into openmls's proposal store.
    fn store_deferred(
        &mut self,
        group: &mut MlsGroup,
        sg: &SendGroupRow,
        data: &[u8],
        epoch: u64,
    ) -> Result<(), EngineError> {
        let reject = |why: &str| Err(EngineError::Rejected(format!("leaf refresh: {why}")));
        let processed = match self.attempt(group, sg, data, epoch, epoch, ContentType::Proposal)? {
            Attempt::Processed(p) => *p,
            Attempt::MissingProposal | Attempt::Replay => return reject("not processable"),
        };
        let owner_sent =
            matches!(processed.sender(), Sender::Member(l) if *l == LeafNodeIndex::new(0));
        let ProcessedMessageContent::ProposalMessage(qp) = processed.into_content() else {
            return reject("not a proposal");
        };
        // Only a member's own Update proposal (PROTOCOL.md "Leaf refresh").
        if owner_sent || !matches!(qp.proposal(), Proposal::Update(_)) {
            return reject("only a member's own Update proposal is accepted");
        }
        refresh_keeps_key(group, &qp)?;
        group
            .store_pending_proposal(&self.provider.storage, *qp)
            .map_err(|e| EngineError::mls("storing proposal", e))?;
        self.counters.processed += 1;
        Ok(())
    }
}

/// The encryption key of our own leaf in `group` (TLS-encoded), which a leaf refresh
/// replaces.
fn own_leaf_key(group: &MlsGroup) -> Result<Vec<u8>, EngineError> {
    use tls_codec::Serialize as _;
    group
        .own_leaf_node()
        .ok_or_else(|| EngineError::Internal("a group without our own leaf".into()))?
        .encryption_key()
        .tls_serialize_detached()
        .map_err(|e| EngineError::Internal(format!("encoding leaf key: {e}")))
}

/// A Welcome that passed [`Ctx::check_welcome`], ready to join.
struct CheckedWelcome {
    staged: StagedWelcome,
    gid: [u8; 32],
    owner: String,
    /// The identity key of the owner's leaf, which signed the Welcome.
    owner_key: Vec<u8>,
    config: DGroupConfig,
}

impl Ctx<'_> {
    /// A Welcome from our inbox (PROTOCOL.md "INIT" steps 2 and 3, "DGroup configuration").
    pub(crate) fn welcome(
        &mut self,
        inbox_id: Option<u64>,
        from: &str,
        data: &[u8],
        now_ms: u64,
    ) -> Result<Vec<Event>, EngineError> {
        if let Some(id) = inbox_id {
            self.set_welcome_cursor(id)?;
        }
        let me = self.me()?;
        let msg = MlsMessageIn::tls_deserialize_exact(data)
            .map_err(|e| EngineError::Malformed(format!("Welcome is not an MLSMessage: {e}")))?;
        let MlsMessageBodyIn::Welcome(welcome) = msg.extract() else {
            return Err(EngineError::Malformed(
                "inbox message is not a Welcome".into(),
            ));
        };
        let hash = message_hash(data);
        if seen::contains(self.conn, &hash)? {
            self.counters.duplicates += 1;
            return Ok(Vec::new());
        }
        let last_resort = self.last_resort_addressed(&welcome)?;
        // docs/PROTOCOL.md "Pinning": a Welcome signed with another key than its owner's
        // pinned one is not joined but held until the user trusts that key. Staging it
        // consumed the key package it is addressed to: that is undone, for a later join.
        Savepoint::Staging.begin(self.conn)?;
        let staged = self.check_welcome(welcome, from, &me).and_then(|w| {
            let differs = self.differs_from_pin(&w.owner, &w.owner_key)?;
            let hold = self.welcome_is_held(&w.owner, &w.config)?;
            Ok((w, differs, hold))
        });
        let w = match staged {
            Ok((w, false, true)) => {
                // docs/PROTOCOL.md "DGroup configuration": kept until the config we hold
                // admits it; retried when it gains members.
                Savepoint::Staging.rollback(self.conn)?;
                self.provider.storage.forget_cached();
                dgroups::hold_welcome(self.conn, &w.config.dgroup_id, from, data)?;
                return Ok(Vec::new());
            }
            Ok((w, true, _)) => {
                Savepoint::Staging.rollback(self.conn)?;
                self.provider.storage.forget_cached();
                let check =
                    self.check_key(&w.owner, &w.owner_key, Some(w.config.dgroup_id), || {
                        format!(
                            "the Welcome to {}'s Send Group of DGroup {:?}",
                            w.owner, w.config.name
                        )
                    })?;
                contacts::hold_welcome(self.conn, &w.owner, &w.owner_key, from, data)?;
                return Ok(match check {
                    KeyCheck::Changed(e) => vec![*e],
                    KeyCheck::Pinned | KeyCheck::FirstSeen => Vec::new(),
                });
            }
            Ok((w, false, false)) => {
                Savepoint::Staging.release(self.conn)?;
                w
            }
            Err(e) => {
                Savepoint::Staging.rollback(self.conn)?;
                self.provider.storage.forget_cached();
                return Err(e);
            }
        };
        let (gid, d) = (w.gid, w.config.dgroup_id);
        let mut events = Vec::new();
        // Removal race, never-joined case (docs/PROTOCOL.md "Removal race"): the owner is
        // known to be removed but its group is not closed, so a commit may still import one
        // of its epochs. Join, but show nothing of it: its commits are kept ('stopped') and
        // processed only up to an epoch a commit we process imports.
        let mut removed_owner = false;
        match self.config(&d)? {
            Some((_, _, we_removed)) => {
                if we_removed {
                    return Ok(vec![Event::Ignored {
                        reason: "Welcome for a DGroup we were removed from".into(),
                    }]);
                }
                let sg = self.send_group(&gid)?;
                if sg.as_ref().is_some_and(|s| s.joined) {
                    seen::insert(self.conn, &hash)?;
                    self.counters.duplicates += 1;
                    return Ok(Vec::new());
                }
                if sg.as_ref().is_some_and(|s| s.closed) {
                    return Ok(vec![Event::Ignored {
                        reason: format!("Welcome from removed member {}", w.owner),
                    }]);
                }
                removed_owner = sg.is_some_and(|s| s.stop_epoch.is_some());
            }
            None => {
                self.insert_dgroup(&w.config)?;
                events.push(Event::JoinedDGroup {
                    dgroup: d,
                    name: w.config.name.clone(),
                    members: w.config.members.clone(),
                });
            }
        }
        // docs/PROTOCOL.md "Pinning", place 3: the leaves of the group we join.
        events.extend(self.check_leaves(w.staged.members(), &d, &w.owner)?);
        let epoch = self.join_send_group(w.staged, gid, removed_owner)?;
        seen::insert(self.conn, &hash)?;
        if let Some(hash_ref) = last_resort {
            self.joined_through_last_resort(&gid, &hash_ref)?;
        }
        if !removed_owner {
            events.extend(self.adopt_config(&d, &w.config, &w.owner)?);
            events.push(Event::JoinedSendGroup {
                dgroup: d,
                owner: w.owner,
                epoch,
            });
        }
        // INIT step 2: make our own Send Group if we have none yet.
        let own = self.own_send_group(&d)?;
        if !own.joined {
            self.create_own_send_group(&w.config, now_ms)?;
        }
        events.extend(self.run_triggers()?);
        Ok(events)
    }

    /// The KeyPackageRef of our key package that `welcome` is addressed to, if that is a
    /// last-resort one (openmls keeps those after a join, for further Welcomes).
    fn last_resort_addressed(&self, welcome: &Welcome) -> Result<Option<Vec<u8>>, EngineError> {
        for secrets in welcome.secrets() {
            let hash_ref = secrets.new_member();
            let bundle: Option<KeyPackageBundle> = self
                .provider
                .storage
                .key_package(&hash_ref)
                .map_err(|e| EngineError::mls("reading key package", e))?;
            if let Some(bundle) = bundle {
                return Ok(bundle
                    .key_package()
                    .last_resort()
                    .then(|| hash_ref.as_slice().to_vec()));
            }
        }
        Ok(None)
    }

    /// We joined `gid` through our last-resort key package `hash_ref` (docs/PROTOCOL.md "Key
    /// packages"): its init and leaf keys may have served other Welcomes too, so the leaf is
    /// refreshed at once (and again each epoch until the owner commits a refresh), and a new
    /// last-resort key package is to replace it on the relay.
    fn joined_through_last_resort(
        &mut self,
        gid: &[u8; 32],
        hash_ref: &[u8],
    ) -> Result<(), EngineError> {
        if meta::get(self.conn, MetaKey::LastResortRef)?.as_deref() == Some(hash_ref) {
            meta::delete(self.conn, MetaKey::LastResortRef)?;
        }
        let key = self.with_group(gid, own_leaf_key)?;
        last_resort::insert(self.conn, gid, &key)?;
        self.refresh_leaves.push(*gid);
        Ok(())
    }

    /// Stages a Welcome and checks it against the rules of PROTOCOL.md "INIT" step 3: a
    /// valid DGroup config listing us and its owner, an allowed ciphersuite, sent and posted
    /// by the owner of the group it names, which is the owner's Send Group.
    fn check_welcome(
        &self,
        welcome: Welcome,
        from: &str,
        me: &str,
    ) -> Result<CheckedWelcome, EngineError> {
        let staged = StagedWelcome::new_from_welcome(&self.provider, &join_config(), welcome, None)
            .map_err(|e| EngineError::Rejected(format!("cannot process Welcome: {e}")))?;
        let ctx = staged.group_context();
        let gid: [u8; 32] = ctx
            .group_id()
            .as_slice()
            .try_into()
            .map_err(|_| EngineError::Rejected("Welcome group id is not 32 bytes".into()))?;
        let ext = ctx
            .extensions()
            .unknown(DMLS_EXTENSION_TYPE)
            .ok_or_else(|| {
                EngineError::Rejected("Welcome's group has no DGroup config extension".into())
            })?;
        let config = DGroupConfig::decode(&ext.0)
            .map_err(|e| EngineError::Rejected(format!("Welcome's DGroup config: {e}")))?;
        config.validate()?;
        let suite = u16::from(ctx.ciphersuite());
        if !config.cipher_suites.contains(&suite) {
            return Err(EngineError::Rejected(format!(
                "Welcome's ciphersuite 0x{suite:04x} is not allowed by the DGroup config"
            )));
        }
        // From the owner only (PROTOCOL.md "INIT" step 3).
        if staged.welcome_sender_index() != LeafNodeIndex::new(0) {
            return Err(EngineError::Rejected(
                "Welcome not sent by the owner (leaf 0)".into(),
            ));
        }
        let owner_leaf = staged
            .welcome_sender()
            .map_err(|e| EngineError::mls("Welcome sender", e))?;
        let owner = credential_identity(owner_leaf.credential())?;
        let owner_key = owner_leaf.signature_key().as_slice().to_vec();
        if owner != from {
            return Err(EngineError::Rejected(format!(
                "Welcome posted by {from} but its group is owned by {owner}"
            )));
        }
        if !config.has_member(&owner) {
            return Err(EngineError::Rejected(format!(
                "Welcome's owner {owner} is not a DGroup member"
            )));
        }
        if !config.has_member(me) {
            return Err(EngineError::Rejected(
                "the DGroup config does not list us".into(),
            ));
        }
        if owner == me {
            return Err(EngineError::Rejected(
                "Welcome to our own Send Group".into(),
            ));
        }
        if gid != send_group_id(&config.dgroup_id, &owner) {
            return Err(EngineError::Rejected(
                "Welcome's group id is not the Send Group id of its owner".into(),
            ));
        }
        Ok(CheckedWelcome {
            staged,
            gid,
            owner,
            owner_key,
            config,
        })
    }

    /// Joins Send Group `gid` through its staged Welcome and exports the PSK of the epoch
    /// joined, which it returns. A removed owner's group is stopped just before that epoch.
    fn join_send_group(
        &mut self,
        staged: StagedWelcome,
        gid: [u8; 32],
        removed_owner: bool,
    ) -> Result<u64, EngineError> {
        let group = staged
            .into_group(&self.provider)
            .map_err(|e| EngineError::mls("joining Send Group", e))?;
        let epoch = group.epoch().as_u64();
        self.export_psk(&group, &gid)?;
        self.keep_group(gid, group);
        self.write_send_group(|conn| send_groups::set_joined(conn, &gid, epoch))?;
        self.triggers.push(Trigger::Joined(gid));
        if removed_owner {
            // Stopped just before the epoch we joined at: no application message of it is
            // shown, and commits waiting for one of its later epochs raise the limit.
            let stop = epoch.saturating_sub(1);
            self.write_send_group(|conn| send_groups::set_stop_epoch(conn, &gid, stop))?;
            self.stop_waiting(&gid, stop)?;
        }
        Ok(epoch)
    }
}

/// The identity keys of the leaves a commit brings in or changes: its adds and its
/// committer's path leaf, as `(client id, key)`. Its Update proposals are not looked up again:
/// each was checked to keep its member's key when it was stored ([`refresh_keeps_key`]).
fn changed_leaves(staged: &StagedCommit) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut push = |leaf: &LeafNode| {
        if let Ok(id) = credential_identity(leaf.credential()) {
            out.push((id, leaf.signature_key().as_slice().to_vec()));
        }
    };
    for a in staged.add_proposals() {
        push(a.add_proposal().key_package().leaf_node());
    }
    if let Some(leaf) = staged.update_path_leaf_node() {
        push(leaf);
    }
    out
}

/// A leaf refresh (a member's own Update proposal) must keep the member's identity key
/// (docs/PROTOCOL.md "Pinning").
fn refresh_keeps_key(group: &MlsGroup, qp: &QueuedProposal) -> Result<(), EngineError> {
    let (Proposal::Update(u), Sender::Member(index)) = (qp.proposal(), qp.sender()) else {
        return Ok(());
    };
    let current = group
        .members()
        .find(|m| m.index == *index)
        .map(|m| m.signature_key);
    if current.as_deref() != Some(u.leaf_node().signature_key().as_slice()) {
        return Err(EngineError::Rejected(
            "a leaf refresh changes the member's identity key".into(),
        ));
    }
    Ok(())
}
