//! Our own Send Group: creation, adding members, DMLS Commits, sending
//! (PROTOCOL.md "INIT", "DMLS Update and DMLS Commit", "Leaf refresh", "Removal").

use openmls::prelude::*;
use openmls::schedule::{ExternalPsk, PreSharedKeyId, Psk};
use tls_codec::{Deserialize as _, Serialize as _};

use super::add::{config_extensions, group_config};
use super::config::{
    AddPolicy, DEFAULT_CIPHERSUITE, DGroupConfig, DMLS_EXTENSION_TYPE, PSK_LENGTH,
};
use super::contacts::KeyCheck;
use super::ctx::{
    CIPHERSUITE, Ctx, MAX_PAST_EPOCHS, capabilities, credential_identity, external_psk_id,
    join_config, message_hash,
};
use super::envelope::{DmlsEnvelope, is_control};
use super::identity::{DmlsSigner, validate_client_id};
use super::ids::{DGroupId, MessageId, PskId, send_group_id};
use super::store::send_groups::{self, OwnState, SendGroupRow};
use super::store::{acks, commit_log, contacts, dgroups, history, members, outbox, psks, seen};
use super::{Effect, EngineError, Event, ReceivedMessage};

/// [`Effect::PostWelcomes`] of one Welcome to each of `added`.
fn welcomes(added: &[String], welcome: &[u8]) -> Effect {
    Effect::PostWelcomes(
        added
            .iter()
            .map(|a| (a.clone(), welcome.to_vec()))
            .collect(),
    )
}

fn encode(m: &MlsMessageOut) -> Result<Vec<u8>, EngineError> {
    m.tls_serialize_detached()
        .map_err(|e| EngineError::Internal(format!("encoding MLS message: {e}")))
}

impl Ctx<'_> {
    /// INIT step 1 for the creator.
    pub(crate) fn create_dgroup(
        &mut self,
        name: &str,
        others: &[String],
        add_policy: AddPolicy,
        now_ms: u64,
    ) -> Result<DGroupId, EngineError> {
        let me = self.me()?;
        let mut members = vec![me.clone()];
        for o in others {
            validate_client_id(o)?;
            if members.contains(o) {
                return Err(EngineError::InvalidArgument(format!(
                    "member {o:?} is listed twice (or is us)"
                )));
            }
            self.check_verified(o, None)
                .map_err(|e| EngineError::InvalidArgument(e.to_string()))?;
            members.push(o.clone());
        }
        let config = DGroupConfig {
            dgroup_id: DGroupId(self.rand.bytes()?),
            name: name.to_owned(),
            members,
            cipher_suites: vec![DEFAULT_CIPHERSUITE],
            psk_length: PSK_LENGTH,
            add_policy,
            removed: Vec::new(),
        };
        config.validate()?;
        self.insert_dgroup(&config)?;
        self.create_own_send_group(&config, now_ms)?;
        Ok(config.dgroup_id)
    }

    /// Stores a DGroup and one row per Send Group.
    pub(crate) fn insert_dgroup(&mut self, config: &DGroupConfig) -> Result<(), EngineError> {
        let me = self.me()?;
        let d = config.dgroup_id;
        dgroups::insert(self.conn, &d, &config.encode()?, &config.name)?;
        for m in &config.members {
            let gid = send_group_id(&d, m);
            self.write_send_group(|conn| send_groups::insert(conn, &gid, &d, m, *m == me))?;
        }
        // Members the config lists as removed (docs/PROTOCOL.md "Add": a newcomer learns them
        // from its first Welcome) are known to be removed; our Send Group never holds them.
        for r in &config.removed {
            self.note_removed(&d, r)?;
        }
        members::removals_done(self.conn, &d)?;
        Ok(())
    }

    /// Creates our Send Group of a DGroup and queues the relay group and the key-package claim.
    pub(crate) fn create_own_send_group(
        &mut self,
        config: &DGroupConfig,
        now_ms: u64,
    ) -> Result<(), EngineError> {
        let me = self.me()?;
        let signer = self.signer()?;
        let gid = send_group_id(&config.dgroup_id, &me);
        let ext = Extension::Unknown(DMLS_EXTENSION_TYPE, UnknownExtension(config.encode()?));
        let extensions = Extensions::single(ext)
            .map_err(|e| EngineError::Internal(format!("config extension: {e}")))?;
        let jc = join_config();
        let group = MlsGroup::builder()
            .with_group_id(GroupId::from_slice(&gid))
            .ciphersuite(CIPHERSUITE)
            .with_capabilities(capabilities())
            .with_group_context_extensions(extensions)
            .use_ratchet_tree_extension(true)
            .max_past_epochs(MAX_PAST_EPOCHS)
            .sender_ratchet_configuration(*jc.sender_ratchet_configuration())
            .with_wire_format_policy(jc.wire_format_policy())
            .build(&self.provider, &signer, self.credential(&signer)?)
            .map_err(|e| EngineError::mls("creating our Send Group", e))?;
        let removed = members::removed_names(self.conn, &config.dgroup_id)?;
        let others: Vec<String> = config
            .members
            .iter()
            .filter(|m| **m != me && !removed.contains(m))
            .cloned()
            .collect();
        let state = if others.is_empty() {
            OwnState::Active
        } else {
            OwnState::Claiming
        };
        let epoch = group.epoch().as_u64();
        self.write_send_group(|conn| send_groups::own_created(conn, &gid, epoch, state, now_ms))?;
        if others.is_empty() {
            outbox::push(
                self.conn,
                &Effect::PutRelayGroup {
                    group_id: hex::encode(gid),
                    members: Vec::new(),
                },
            )?;
        } else {
            // The relay group is created once the claim is answered, with the members we
            // could add: the relay refuses a member list naming an account it does not know.
            outbox::push(
                self.conn,
                &Effect::ClaimKeyPackages {
                    dgroup_id: config.dgroup_id,
                    client_ids: others,
                },
            )?;
        }
        Ok(())
    }

    /// The relay answered a key-package claim. For the INIT claim of a new Send Group: add
    /// everyone in one commit (not posted) and queue the Welcomes (PROTOCOL.md "INIT"). For a
    /// late-add claim of an active Send Group ([`Ctx::retry_missing_members`]): add the members
    /// that got a key package in one posted DMLS commit ([`Ctx::dmls_commit_adding`]). Members
    /// left without a valid key package are remembered as missing and reported.
    pub(crate) fn claimed_key_packages(
        &mut self,
        outbox_id: u64,
        key_packages: Vec<(String, Vec<u8>)>,
        missing: Vec<String>,
        now_ms: u64,
    ) -> Result<Vec<Event>, EngineError> {
        let (dgroup_id, client_ids) = self.take_claim(outbox_id)?;
        let own = self.own_send_group(&dgroup_id)?;
        let late = match own.own_state {
            Some(OwnState::Claiming) => false,
            Some(OwnState::Active) => true,
            None => return Ok(Vec::new()),
        };
        let client_ids: Vec<String> = if late {
            if self.active_own(&dgroup_id).is_err() {
                // We were removed meanwhile: add nobody.
                return Ok(Vec::new());
            }
            // Only members still missing (not removed, not added meanwhile).
            let still = self.still_missing(&dgroup_id)?;
            client_ids
                .into_iter()
                .filter(|c| still.contains(c))
                .collect()
        } else {
            client_ids
        };
        let (adds, missing, mut rejected) = self.sort_claimed(&client_ids, key_packages, missing);
        // docs/PROTOCOL.md "Pinning": only verified keys when that is required, and never a
        // key other than the pinned one.
        let name = dgroups::name(self.conn, &dgroup_id)?.unwrap_or_default();
        let mut changed = Vec::new();
        let mut checked = Vec::with_capacity(adds.len());
        for (cid, kp) in adds {
            let key = kp.leaf_node().signature_key().as_slice().to_vec();
            if let Err(e) = self.check_verified(&cid, Some(&key)) {
                rejected.push((cid, e.to_string()));
                continue;
            }
            match self.check_key(&cid, &key, Some(dgroup_id), || {
                format!("a key package claimed for DGroup {name:?}")
            })? {
                KeyCheck::Changed(e) => changed.push((cid, *e)),
                KeyCheck::Pinned | KeyCheck::FirstSeen => checked.push((cid, kp)),
            }
        }
        let adds = checked;
        let added: Vec<String> = adds.iter().map(|(a, _)| a.clone()).collect();
        if late {
            if !adds.is_empty() {
                self.dmls_commit_adding(&dgroup_id, now_ms, adds)?;
                // The joiners missed the name values sent before (docs/PROTOCOL.md "Group name").
                self.resend_name(dgroup_id);
            }
        } else {
            self.add_initial_members(&dgroup_id, own.group_id, adds, now_ms)?;
        }
        for a in &added {
            members::delete_missing(self.conn, &dgroup_id, a)?;
        }
        for m in missing
            .iter()
            .chain(rejected.iter().map(|(m, _)| m))
            .chain(changed.iter().map(|(m, _)| m))
        {
            members::insert_missing(self.conn, &dgroup_id, m)?;
        }
        let mut events: Vec<Event> = changed.into_iter().map(|(_, e)| e).collect();
        events.extend(
            rejected
                .into_iter()
                .map(|(client_id, reason)| Event::KeyPackageRejected {
                    dgroup: dgroup_id,
                    client_id,
                    reason,
                }),
        );
        if !missing.is_empty() {
            events.push(Event::KeyPackagesMissing {
                dgroup: dgroup_id,
                client_ids: missing,
            });
        }
        Ok(events)
    }

    /// Takes the pending key-package claim `outbox_id` out of the outbox: its DGroup and
    /// whom it claimed for.
    fn take_claim(&self, outbox_id: u64) -> Result<(DGroupId, Vec<String>), EngineError> {
        let effect = outbox::get(self.conn, outbox_id)?.ok_or_else(|| {
            EngineError::InvalidArgument(format!("no pending outbox item {outbox_id}"))
        })?;
        let Effect::ClaimKeyPackages {
            dgroup_id,
            client_ids,
        } = effect
        else {
            return Err(EngineError::InvalidArgument(format!(
                "outbox item {outbox_id} is not a key-package claim"
            )));
        };
        outbox::delete(self.conn, outbox_id)?;
        Ok((dgroup_id, client_ids))
    }

    /// Sorts a claim's answer for `client_ids`: the members with a valid key package (the
    /// first one of each), those the relay had none for, and those whose key package we
    /// rejected, with why.
    #[allow(clippy::type_complexity)]
    fn sort_claimed(
        &self,
        client_ids: &[String],
        key_packages: Vec<(String, Vec<u8>)>,
        missing: Vec<String>,
    ) -> (
        Vec<(String, KeyPackage)>,
        Vec<String>,
        Vec<(String, String)>,
    ) {
        let mut missing: Vec<String> = missing
            .into_iter()
            .filter(|m| client_ids.contains(m))
            .collect();
        let mut adds: Vec<(String, KeyPackage)> = Vec::new();
        let mut rejected: Vec<(String, String)> = Vec::new();
        let answered =
            |cid: &String, adds: &[(String, KeyPackage)], rejected: &[(String, String)]| {
                adds.iter().any(|(a, _)| a == cid) || rejected.iter().any(|(r, _)| r == cid)
            };
        for (cid, bytes) in key_packages {
            if !client_ids.contains(&cid)
                || answered(&cid, &adds, &rejected)
                || missing.contains(&cid)
            {
                continue;
            }
            match self.validate_key_package(&cid, &bytes) {
                Ok(kp) => adds.push((cid, kp)),
                Err(EngineError::Malformed(why) | EngineError::Rejected(why)) => {
                    rejected.push((cid, why))
                }
                Err(e) => rejected.push((cid, e.to_string())),
            }
        }
        for c in client_ids {
            if !answered(c, &adds, &rejected) && !missing.contains(c) {
                missing.push(c.clone());
            }
        }
        (adds, missing, rejected)
    }

    /// INIT (PROTOCOL.md "INIT"): creates the relay group of our new Send Group `gid` with
    /// `adds`, adds them in one commit that is not posted (nobody else is in epoch 0), queues
    /// their Welcomes, and makes the group active.
    fn add_initial_members(
        &mut self,
        d: &DGroupId,
        gid: [u8; 32],
        adds: Vec<(String, KeyPackage)>,
        now_ms: u64,
    ) -> Result<(), EngineError> {
        let (added, kps): (Vec<String>, Vec<KeyPackage>) = adds.into_iter().unzip();
        // The relay group, with the members we add, before their Welcomes go out.
        outbox::push(
            self.conn,
            &Effect::PutRelayGroup {
                group_id: hex::encode(gid),
                members: added.clone(),
            },
        )?;
        if !kps.is_empty() {
            let signer = self.signer()?;
            let mut group = self.take_group(&gid)?;
            // Every own commit has a path (PROTOCOL.md "DMLS Update and DMLS Commit").
            let config = self.config_change(&group, d)?;
            let (_, welcome) =
                self.build_commit(&mut group, &signer, &[], &[], &kps, config.as_deref())?;
            let welcome = welcome
                .ok_or_else(|| EngineError::Internal("add commit without Welcome".into()))?;
            group
                .merge_pending_commit(&self.provider)
                .map_err(|e| EngineError::mls("merging add commit", e))?;
            self.export_psk(&group, &gid)?;
            self.keep_group(gid, group);
            outbox::push(self.conn, &welcomes(&added, &welcome))?;
        }
        self.write_send_group(|conn| send_groups::own_activated(conn, &gid, now_ms))
    }

    /// Config members still missing from our own Send Group of `d`: recorded as missing at a
    /// claim, not known to be removed and not in the group (docs/PROTOCOL.md "Late add").
    pub(crate) fn still_missing(&self, d: &DGroupId) -> Result<Vec<String>, EngineError> {
        let recorded = members::missing(self.conn, d)?;
        if recorded.is_empty() {
            return Ok(recorded);
        }
        let removed = members::removed_names(self.conn, d)?;
        let own = self.own_send_group(d)?;
        let present: Vec<String> = if own.joined {
            self.members_of(&own.group_id)?
        } else {
            Vec::new()
        };
        Ok(recorded
            .into_iter()
            .filter(|m| !removed.contains(m) && !present.contains(m))
            .collect())
    }

    /// Late add: queues a new key-package claim for the members still missing from our
    /// active Send Group of each DGroup that has no claim pending in the outbox. Forgets
    /// recorded members that were removed or added meanwhile. Returns the DGroups claimed for.
    pub(crate) fn retry_missing_members(&mut self) -> Result<Vec<DGroupId>, EngineError> {
        let ids = members::with_missing(self.conn)?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let pending: Vec<DGroupId> = self
            .outbox()?
            .into_iter()
            .filter_map(|item| match item.effect {
                Effect::ClaimKeyPackages { dgroup_id, .. } => Some(dgroup_id),
                _ => None,
            })
            .collect();
        let changed: Vec<String> = contacts::changes(self.conn)?
            .into_iter()
            .map(|c| c.client_id)
            .collect();
        let mut claimed = Vec::new();
        for d in ids {
            if pending.contains(&d) || self.active_own(&d).is_err() {
                continue;
            }
            let still = self.still_missing(&d)?;
            members::clear_missing(self.conn, &d)?;
            if still.is_empty() {
                continue;
            }
            for m in &still {
                members::insert_missing(self.conn, &d, m)?;
            }
            // A member with an unresolved key change stays missing but is not claimed for
            // until the user trusts a key (docs/PROTOCOL.md "Pinning").
            let still: Vec<String> = still.into_iter().filter(|m| !changed.contains(m)).collect();
            if still.is_empty() {
                continue;
            }
            outbox::push(
                self.conn,
                &Effect::ClaimKeyPackages {
                    dgroup_id: d,
                    client_ids: still,
                },
            )?;
            claimed.push(d);
        }
        Ok(claimed)
    }

    pub(crate) fn validate_key_package(
        &self,
        cid: &str,
        bytes: &[u8],
    ) -> Result<KeyPackage, EngineError> {
        let msg = MlsMessageIn::tls_deserialize_exact(bytes)
            .map_err(|e| EngineError::Malformed(format!("not an MLS message: {e}")))?;
        let MlsMessageBodyIn::KeyPackage(kp) = msg.extract() else {
            return Err(EngineError::Malformed(
                "another message type than a key package".into(),
            ));
        };
        let kp = kp
            .validate(self.provider.crypto, ProtocolVersion::Mls10)
            .map_err(|e| EngineError::Rejected(format!("invalid (RFC 9420): {e}")))?;
        let identity = credential_identity(kp.leaf_node().credential())?;
        if identity != cid {
            return Err(EngineError::Rejected(format!(
                "its credential names {identity:?}"
            )));
        }
        if kp.ciphersuite() != CIPHERSUITE {
            return Err(EngineError::Rejected(format!(
                "ciphersuite {:?} is not this Send Group's",
                kp.ciphersuite()
            )));
        }
        if !kp
            .leaf_node()
            .capabilities()
            .extensions()
            .contains(&ExtensionType::Unknown(DMLS_EXTENSION_TYPE))
        {
            return Err(EngineError::Rejected(
                "its leaf does not list the DGroup extension 0xFF00 in its capabilities".into(),
            ));
        }
        Ok(kp)
    }

    /// Our own usable Send Group of a DGroup, or why not.
    pub(crate) fn active_own(&self, d: &DGroupId) -> Result<SendGroupRow, EngineError> {
        let Some((_, _, we_removed)) = self.config(d)? else {
            return Err(EngineError::UnknownDGroup(d.to_hex()));
        };
        if we_removed {
            return Err(EngineError::NotReady(
                "we were removed from this DGroup".into(),
            ));
        }
        let own = self.own_send_group(d)?;
        if own.own_state != Some(OwnState::Active) {
            return Err(EngineError::NotReady(
                "members are not added yet: the key-package claim is unanswered".into(),
            ));
        }
        Ok(own)
    }

    /// Epochs of other Send Groups newer than what we imported: one per group, the latest
    /// (PROTOCOL.md "DMLS Commit").
    ///
    /// An epoch is left out while a member of our Send Group is not a member of that Send
    /// Group (it was added late to ours but not yet to that one, docs/PROTOCOL.md "Late add"): it
    /// cannot hold that PSK, so our commit would wait for it forever. It is imported once the
    /// other owner has added the member and we merged that commit.
    pub(crate) fn unimported(&self, d: &DGroupId) -> Result<Vec<PskId>, EngineError> {
        let me = self.me()?;
        let removed = members::removed_names(self.conn, d)?;
        let groups = self.send_groups_of(d)?;
        // Members of our Send Group that must be able to process our next commit.
        let mut ours: Option<Vec<String>> = None;
        let mut out = Vec::new();
        let acked = acks::of(self.conn, d, &me)?;
        for sg in &groups {
            if sg.is_own || removed.contains(&sg.owner) {
                continue;
            }
            let Some(latest) = psks::latest_epoch(self.conn, &sg.group_id)? else {
                continue;
            };
            if acked.get(&sg.group_id).is_some_and(|a| *a >= latest) {
                continue;
            }
            if ours.is_none() {
                let mut v = Vec::new();
                if let Some(own) = groups.iter().find(|g| g.is_own && g.joined) {
                    v = self.members_of(&own.group_id)?;
                    v.retain(|m| !removed.contains(m));
                }
                ours = Some(v);
            }
            if !self.has_members(&sg.group_id, ours.as_deref().unwrap_or_default())? {
                continue;
            }
            out.push(PskId {
                epoch: latest,
                group_id: sg.group_id,
            });
        }
        Ok(out)
    }

    /// Whether every client id of `ids` is a member of a Send Group we hold. Runs for every
    /// Send Group on every commit: compares the BasicCredential identities in place, without
    /// decoding every member's credential as [`Ctx::members_of`] does.
    fn has_members(&self, gid: &[u8; 32], ids: &[String]) -> Result<bool, EngineError> {
        if ids.is_empty() {
            return Ok(true);
        }
        self.with_group(gid, |g| {
            let members: Vec<Member> = g.members().collect();
            let present: std::collections::HashSet<&[u8]> = members
                .iter()
                .filter(|m| m.credential.credential_type() == CredentialType::Basic)
                .map(|m| m.credential.serialized_content())
                .collect();
            Ok(ids.iter().all(|id| present.contains(id.as_bytes())))
        })
    }

    /// Client ids of the current members of a Send Group we hold.
    pub(crate) fn members_of(&self, gid: &[u8; 32]) -> Result<Vec<String>, EngineError> {
        self.with_group(gid, |g| {
            Ok(g.members()
                .filter_map(|m| credential_identity(&m.credential).ok())
                .collect())
        })
    }

    /// A DMLS Commit in our Send Group: path, PSK imports, received Update proposals,
    /// pending removals. With `leaf_refresh`, also proposes our new leaf in every other Send
    /// Group (PROTOCOL.md "Leaf refresh").
    pub(crate) fn dmls_commit(
        &mut self,
        d: &DGroupId,
        now_ms: u64,
        leaf_refresh: bool,
    ) -> Result<(), EngineError> {
        self.dmls_commit_with(d, now_ms, leaf_refresh, Vec::new())
    }

    /// Late add (docs/PROTOCOL.md "Late add"): a DMLS Commit in our active Send Group that also
    /// adds these members, posted like every commit, followed by the relay group's new member
    /// list and then the Welcomes (so that a joiner can read the group once it joined).
    /// It imports no PSK: the Welcome would name it, and a joiner holds no PSK of epochs
    /// before it joined.
    pub(crate) fn dmls_commit_adding(
        &mut self,
        d: &DGroupId,
        now_ms: u64,
        adds: Vec<(String, KeyPackage)>,
    ) -> Result<(), EngineError> {
        // docs/PROTOCOL.md "Add": the config that lists them goes first, in a regular commit
        // (importing as usual), so that a receiver has learned of them before it merges the add.
        let own = self.active_own(d)?;
        let behind = self.with_group(&own.group_id, |g| self.config_change(g, d))?;
        if behind.is_some() {
            self.dmls_commit_with(d, now_ms, false, Vec::new())?;
        }
        self.dmls_commit_with(d, now_ms, false, adds)
    }

    /// The config we hold for `d`, encoded, if `group` (our Send Group of `d`) carries
    /// another one: our next commit there carries it (docs/PROTOCOL.md "DGroup configuration").
    pub(crate) fn config_change(
        &self,
        group: &MlsGroup,
        d: &DGroupId,
    ) -> Result<Option<Vec<u8>>, EngineError> {
        let Some((_, held, _)) = self.config(d)? else {
            return Err(EngineError::UnknownDGroup(d.to_hex()));
        };
        Ok((group_config(group) != Some(held.as_slice())).then_some(held))
    }

    /// [`Ctx::dmls_commit`], adding `adds` (then without PSK imports).
    fn dmls_commit_with(
        &mut self,
        d: &DGroupId,
        now_ms: u64,
        leaf_refresh: bool,
        adds: Vec<(String, KeyPackage)>,
    ) -> Result<(), EngineError> {
        let own = self.active_own(d)?;
        let me = self.me()?;
        let signer = self.signer()?;
        let gid = own.group_id;
        let mut group = self.take_group(&gid)?;
        let (added, kps): (Vec<String>, Vec<KeyPackage>) = adds.into_iter().unzip();
        let mut imports = if kps.is_empty() {
            self.psk_imports(&group, d)?
        } else {
            Vec::new()
        };
        let pending: Vec<String> = members::removed(self.conn, d)?
            .into_iter()
            .filter(|r| r.1)
            .map(|r| r.0)
            .collect();
        let (leaves, removed): (Vec<LeafNodeIndex>, Vec<String>) = group
            .members()
            .filter_map(|m| {
                credential_identity(&m.credential)
                    .ok()
                    .filter(|id| pending.contains(id))
                    .map(|id| (m.index, id))
            })
            .unzip();
        let config = self.config_change(&group, d)?;
        let (commit, welcome) = self.build_commit_in_psk_order(
            &mut group,
            &signer,
            &mut imports,
            &leaves,
            &kps,
            config.as_deref(),
        )?;
        let imports: Vec<PskId> = imports.into_iter().map(|(p, _)| p).collect();
        let left = group.epoch().as_u64();
        group
            .merge_pending_commit(&self.provider)
            .map_err(|e| EngineError::mls("merging our commit", e))?;
        self.export_psk(&group, &gid)?;
        commit_log::record(self.conn, &gid, group.epoch().as_u64(), &imports, &removed)?;
        self.ack(d, &me, &imports)?;
        self.ack_joined(d, &gid, left, &added)?;
        if !imports.is_empty() {
            self.prune_psks(d, &imports)?;
        }
        if !pending.is_empty() {
            self.removals_merged = true;
            members::removals_done(self.conn, d)?;
        }
        let changed = !pending.is_empty() || !added.is_empty();
        self.queue_own_commit(&group, &me, commit, changed, &added, welcome)?;
        self.write_send_group(|conn| send_groups::own_committed(conn, &gid, now_ms))?;
        self.keep_group(gid, group);
        if leaf_refresh {
            self.propose_leaf_refresh(d)?;
        }
        Ok(())
    }

    /// The PSK proposals of our next commit in `d`: the epochs of other Send Groups we have
    /// not imported yet ([`Ctx::unimported`]), each with a fresh nonce.
    fn psk_imports(
        &self,
        group: &MlsGroup,
        d: &DGroupId,
    ) -> Result<Vec<(PskId, PreSharedKeyId)>, EngineError> {
        let mut imports = Vec::new();
        for p in self.unimported(d)? {
            let id = PreSharedKeyId::new(
                group.ciphersuite(),
                self.provider.rand,
                Psk::External(ExternalPsk::new(p.to_bytes().to_vec())),
            )
            .map_err(|e| EngineError::mls("PSK nonce", e))?;
            imports.push((p, id));
        }
        Ok(imports)
    }

    /// [`Ctx::build_commit`] with the AAD listing the PSKs in the order of the commit's PSK
    /// proposals (PROTOCOL.md "Dependency hint"). openmls keeps our order, but should it ever
    /// choose another one, the commit is rebuilt once with `imports` in its order instead of
    /// failing.
    fn build_commit_in_psk_order(
        &mut self,
        group: &mut MlsGroup,
        signer: &DmlsSigner,
        imports: &mut Vec<(PskId, PreSharedKeyId)>,
        leaves: &[LeafNodeIndex],
        kps: &[KeyPackage],
        config: Option<&[u8]>,
    ) -> Result<(Vec<u8>, Option<Vec<u8>>), EngineError> {
        let built = self.build_commit(group, signer, imports, leaves, kps, config)?;
        let order = self.staged_psk_order(group)?;
        if order == imports.iter().map(|(p, _)| *p).collect::<Vec<_>>() {
            return Ok(built);
        }
        group
            .clear_pending_commit(&self.provider.storage)
            .map_err(|e| EngineError::mls("DMLS commit", e))?;
        let mut reordered = Vec::with_capacity(order.len());
        for p in &order {
            let pos = imports.iter().position(|(q, _)| q == p).ok_or_else(|| {
                EngineError::Internal(format!("openmls added a PSK proposal for {p:?}"))
            })?;
            reordered.push(imports.remove(pos));
        }
        *imports = reordered;
        let built = self.build_commit(group, signer, imports, leaves, kps, config)?;
        let again = self.staged_psk_order(group)?;
        if again != order {
            return Err(EngineError::Internal(format!(
                "openmls orders PSK proposals unpredictably: {again:?} after {order:?}"
            )));
        }
        Ok(built)
    }

    /// Queues what our merged commit sends: the commit itself; when it `changed` the
    /// membership, the relay group's new member list (after the commit, so removed members
    /// are dropped once it is posted and added ones can read it); then the Welcomes of the
    /// `added` members.
    fn queue_own_commit(
        &self,
        group: &MlsGroup,
        me: &str,
        commit: Vec<u8>,
        changed: bool,
        added: &[String],
        welcome: Option<Vec<u8>>,
    ) -> Result<(), EngineError> {
        let group_id = hex::encode(group.group_id().as_slice());
        seen::insert(self.conn, &message_hash(&commit))?;
        outbox::push(
            self.conn,
            &Effect::PostMessage {
                owner: me.to_owned(),
                group_id: group_id.clone(),
                data: commit,
            },
        )?;
        if changed {
            let members: Vec<String> = group
                .members()
                .filter_map(|m| credential_identity(&m.credential).ok())
                .filter(|id| id != me)
                .collect();
            outbox::push(self.conn, &Effect::PutRelayGroup { group_id, members })?;
        }
        if !added.is_empty() {
            let welcome = welcome
                .ok_or_else(|| EngineError::Internal("add commit without Welcome".into()))?;
            outbox::push(self.conn, &welcomes(added, &welcome))?;
        }
        Ok(())
    }

    /// Builds and stages (does not merge) a commit with a path importing `imports` in this
    /// order, with the AAD naming them in the same order, removing `leaves`, adding `adds`
    /// and committing received Update proposals; with `config`, it also replaces the DGroup
    /// config the group carries. Returns the commit's bytes and, when it adds members, the
    /// Welcome's.
    fn build_commit(
        &mut self,
        group: &mut MlsGroup,
        signer: &DmlsSigner,
        imports: &[(PskId, PreSharedKeyId)],
        leaves: &[LeafNodeIndex],
        adds: &[KeyPackage],
        config: Option<&[u8]>,
    ) -> Result<(Vec<u8>, Option<Vec<u8>>), EngineError> {
        let ids: Vec<PskId> = imports.iter().map(|(p, _)| *p).collect();
        let psk_proposals = imports
            .iter()
            .map(|(_, id)| Proposal::PreSharedKey(Box::new(PreSharedKeyProposal::new(id.clone()))))
            .collect::<Vec<_>>();
        // Dependency hint (PROTOCOL.md "Dependency hint").
        group.set_aad(PskId::list_to_aad(&ids));
        let mut builder = group.commit_builder();
        if let Some(config) = config {
            builder = builder
                .propose_group_context_extensions(config_extensions(config)?)
                .map_err(|e| EngineError::mls("DMLS commit", e))?;
        }
        let bundle = builder
            .add_proposals(psk_proposals)
            .propose_removals(leaves.iter().copied())
            .propose_adds(adds.iter().cloned())
            .force_self_update(true)
            .consume_proposal_store(true)
            .load_psks(&self.provider.storage)
            .map_err(|e| EngineError::mls("DMLS commit", e))?
            .build(self.provider.rand, self.provider.crypto, signer, |qp| {
                // openmls filters our own proposals too; keep them, and keep received
                // Updates only from members not removed by this commit.
                match qp.proposal() {
                    Proposal::Update(_) => {
                        matches!(qp.sender(), Sender::Member(l) if !leaves.contains(l))
                    }
                    Proposal::PreSharedKey(_)
                    | Proposal::Remove(_)
                    | Proposal::Add(_)
                    | Proposal::GroupContextExtensions(_) => true,
                    _ => false,
                }
            })
            .map_err(|e| EngineError::mls("DMLS commit", e))?
            .stage_commit(&self.provider)
            .map_err(|e| EngineError::mls("DMLS commit", e))?;
        let welcome = match bundle.to_welcome_msg() {
            Some(w) => Some(encode(&w)?),
            None => None,
        };
        Ok((encode(bundle.commit())?, welcome))
    }

    /// The psk_ids of the staged commit's PSK proposals, in commit order.
    fn staged_psk_order(&self, group: &MlsGroup) -> Result<Vec<PskId>, EngineError> {
        let staged = group
            .pending_commit()
            .ok_or_else(|| EngineError::Internal("no staged commit".into()))?;
        staged
            .psk_proposals()
            .map(|q| external_psk_id(q.psk_proposal()))
            .collect()
    }

    /// Update proposals for our own leaf in every other Send Group we are in (PROTOCOL.md "Leaf refresh").
    fn propose_leaf_refresh(&mut self, d: &DGroupId) -> Result<(), EngineError> {
        let signer = self.signer()?;
        for sg in self.send_groups_of(d)? {
            self.propose_leaf_refresh_in(&sg, &signer)?;
        }
        Ok(())
    }

    /// An Update proposal for our own leaf in `sg`, queued for the relay, unless `sg` is ours,
    /// not joined, of an owner known to be removed, or a group we are no longer in.
    pub(crate) fn propose_leaf_refresh_in(
        &mut self,
        sg: &SendGroupRow,
        signer: &DmlsSigner,
    ) -> Result<(), EngineError> {
        if sg.is_own || !sg.joined || sg.stop_epoch.is_some() {
            return Ok(());
        }
        let mut group = self.take_group(&sg.group_id)?;
        if !group.is_active() {
            self.keep_group(sg.group_id, group);
            return Ok(());
        }
        let proposed =
            group.propose_self_update(&self.provider, signer, LeafNodeParameters::default());
        self.keep_group(sg.group_id, group);
        let (msg, _) = proposed.map_err(|e| EngineError::mls("proposing leaf refresh", e))?;
        let data = encode(&msg)?;
        seen::insert(self.conn, &message_hash(&data))?;
        outbox::push(
            self.conn,
            &Effect::PostMessage {
                owner: sg.owner.clone(),
                group_id: hex::encode(sg.group_id),
                data,
            },
        )?;
        Ok(())
    }

    pub(crate) fn send(
        &mut self,
        d: &DGroupId,
        content_type: &str,
        body: &[u8],
        now_ms: u64,
    ) -> Result<MessageId, EngineError> {
        let own = self.active_own(d)?;
        let me = self.me()?;
        let gid = own.group_id;
        // Update policy (PROTOCOL.md "When to commit").
        let stale = now_ms.saturating_sub(own.last_update_ms) >= self.policy.max_update_age_ms
            || own.msgs_since_update >= self.policy.max_messages_per_update;
        let has_proposals =
            self.with_group(&gid, |g| Ok(g.pending_proposals().next().is_some()))?;
        let has_removals = members::removed(self.conn, d)?.iter().any(|r| r.1);
        let has_imports = self.policy.import_before_send && !self.unimported(d)?.is_empty();
        let config_behind = self
            .with_group(&gid, |g| self.config_change(g, d))?
            .is_some();
        let mut own = own;
        if stale || has_proposals || has_removals || has_imports || config_behind {
            self.dmls_commit(d, now_ms, stale)?;
            own = self.own_send_group(d)?;
        }
        let mut group = self.take_group(&gid)?;
        let envelope = DmlsEnvelope {
            sent_at_ms: now_ms,
            message_id: MessageId(self.rand.bytes()?),
            content_type: content_type.to_owned(),
            body: body.to_vec(),
        };
        let signer = self.signer()?;
        group.set_aad(Vec::new());
        let msg = group
            .create_message(&self.provider, &signer, &envelope.encode()?)
            .map_err(|e| EngineError::mls("encrypting message", e))?;
        let data = encode(&msg)?;
        let epoch = group.epoch().as_u64();
        self.keep_group(gid, group);
        let message_id = envelope.message_id;
        // Control messages (a leave) are not content.
        if !is_control(&envelope.content_type) {
            history::insert(
                self.conn,
                &ReceivedMessage {
                    dgroup: *d,
                    sender: me.clone(),
                    sent_at_ms: now_ms,
                    message_id,
                    content_type: envelope.content_type,
                    body: envelope.body,
                    epoch,
                    generation: Some(own.sent_in_epoch as u32),
                },
            )?;
        }
        self.write_send_group(|conn| send_groups::own_sent(conn, &gid))?;
        seen::insert(self.conn, &message_hash(&data))?;
        outbox::push(
            self.conn,
            &Effect::PostMessage {
                owner: me,
                group_id: hex::encode(gid),
                data,
            },
        )?;
        Ok(message_id)
    }

    pub(crate) fn remove(
        &mut self,
        d: &DGroupId,
        member: &str,
        now_ms: u64,
    ) -> Result<(), EngineError> {
        let Some((config, _, _)) = self.config(d)? else {
            return Err(EngineError::UnknownDGroup(d.to_hex()));
        };
        if member == self.me()? || !config.has_member(member) {
            return Err(EngineError::InvalidArgument(format!(
                "{member:?} is not another member of this DGroup"
            )));
        }
        self.active_own(d)?;
        self.note_removed(d, member)?;
        self.dmls_commit(d, now_ms, false)
    }

    pub(crate) fn commit_pending_removals(
        &mut self,
        now_ms: u64,
    ) -> Result<Vec<DGroupId>, EngineError> {
        let mut done = Vec::new();
        for d in members::with_pending_removals(self.conn)? {
            if self.active_own(&d).is_ok() {
                self.dmls_commit(&d, now_ms, false)?;
                done.push(d);
            }
        }
        Ok(done)
    }
}
