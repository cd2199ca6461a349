//! Adding members to a running DGroup (docs/PROTOCOL.md "Add"), and the held DGroup config
//! that grows with every config a member merges (docs/PROTOCOL.md "DGroup configuration").

use openmls::prelude::*;

use super::config::{DGroupConfig, DMLS_EXTENSION_TYPE};
use super::ctx::Ctx;
use super::identity::validate_client_id;
use super::ids::{DGroupId, send_group_id};
use super::store::send_groups::{self, SendGroupRow};
use super::store::{dgroups, members, outbox};
use super::{Effect, EngineError, Event};

/// The config a Send Group carries, encoded.
pub(crate) fn group_config(group: &MlsGroup) -> Option<&[u8]> {
    group
        .extensions()
        .unknown(DMLS_EXTENSION_TYPE)
        .map(|e| e.0.as_slice())
}

/// The required_capabilities extension a config change carries with the config: RFC 9420
/// requires every member to support the GroupContext extensions (openmls checks it through
/// this extension), and every leaf lists 0xFF00 (docs/PROTOCOL.md "Key packages").
fn required_config_support() -> RequiredCapabilitiesExtension {
    RequiredCapabilitiesExtension::new(&[ExtensionType::Unknown(DMLS_EXTENSION_TYPE)], &[], &[])
}

/// The GroupContext extensions of a config change (docs/PROTOCOL.md "DGroup configuration"):
/// required_capabilities naming 0xFF00 alone, and the config.
pub(crate) fn config_extensions(config: &[u8]) -> Result<Extensions<GroupContext>, EngineError> {
    let ext = Extension::Unknown(DMLS_EXTENSION_TYPE, UnknownExtension(config.to_vec()));
    Extensions::from_vec(vec![
        Extension::RequiredCapabilities(required_config_support()),
        ext,
    ])
    .map_err(|e| EngineError::Internal(format!("config extension: {e}")))
}

impl Ctx<'_> {
    /// We add `names` to `d` (docs/PROTOCOL.md "Add"): they join the config we hold, our
    /// next commit (made at once) announces it, and a key-package claim for them is queued;
    /// its answer adds them to our Send Group in a late-add commit.
    pub(crate) fn add_members(
        &mut self,
        d: &DGroupId,
        names: &[String],
        now_ms: u64,
    ) -> Result<(), EngineError> {
        let Some((held, _, _)) = self.config(d)? else {
            return Err(EngineError::UnknownDGroup(d.to_hex()));
        };
        self.active_own(d)?;
        let me = self.me()?;
        if !held.may_add(&me) {
            return Err(EngineError::InvalidArgument(format!(
                "only the group's admins may add members to it; its admin is its creator, {}",
                held.creator()
            )));
        }
        if names.is_empty() {
            return Err(EngineError::InvalidArgument(
                "name at least one member to add".into(),
            ));
        }
        let removed = members::removed_names(self.conn, d)?;
        for (i, n) in names.iter().enumerate() {
            validate_client_id(n)?;
            if *n == me {
                return Err(EngineError::InvalidArgument(
                    "you are a member already".into(),
                ));
            }
            if names[..i].contains(n) {
                return Err(EngineError::InvalidArgument(format!(
                    "{n:?} is listed twice"
                )));
            }
            if removed.contains(n) {
                return Err(EngineError::InvalidArgument(format!(
                    "{n:?} was removed from this group (or left it); adding a removed member \
                     again is not supported: create a new group with it"
                )));
            }
            if held.has_member(n) {
                return Err(EngineError::InvalidArgument(format!(
                    "{n:?} is a member of this group already"
                )));
            }
            self.check_verified(n, None)
                .map_err(|e| EngineError::InvalidArgument(e.to_string()))?;
        }
        let names_ref: Vec<&str> = names.iter().map(String::as_str).collect();
        let new = held.with(&names_ref, &[]);
        self.set_held_config(d, &held, &new, &me)?;
        // The announcement: a DMLS Commit carrying the new config.
        self.dmls_commit(d, now_ms, false)?;
        outbox::push(
            self.conn,
            &Effect::ClaimKeyPackages {
                dgroup_id: *d,
                client_ids: names.to_vec(),
            },
        )?;
        Ok(())
    }

    /// Replaces the config we hold for `d`, `old`, with `new` (a successor: nothing dropped)
    /// and applies what it brings, as learned from `by`: every new member gets its Send
    /// Group's row and is recorded as missing from our Send Group (we add it late); every
    /// member newly listed as removed becomes known to be removed.
    pub(crate) fn set_held_config(
        &mut self,
        d: &DGroupId,
        old: &DGroupConfig,
        new: &DGroupConfig,
        by: &str,
    ) -> Result<Vec<Event>, EngineError> {
        if new == old {
            return Ok(Vec::new());
        }
        dgroups::set_config(self.conn, d, &new.encode()?)?;
        let me = self.me()?;
        let mut events = Vec::new();
        let added: Vec<String> = old
            .new_members(new)
            .into_iter()
            .map(str::to_owned)
            .collect();
        if !added.is_empty() {
            self.config_grew.push(*d);
        }
        for m in added {
            let gid = send_group_id(d, &m);
            if self.send_group(&gid)?.is_none() {
                let own = m == me;
                self.write_send_group(|conn| send_groups::insert(conn, &gid, d, &m, own))?;
            }
            if m != me {
                members::insert_missing(self.conn, d, &m)?;
                events.push(Event::MemberAdded {
                    dgroup: *d,
                    member: m,
                    by: by.to_owned(),
                });
            }
        }
        for r in new.removed.iter().filter(|r| !old.removed.contains(r)) {
            if self.note_removed(d, r)? {
                self.removals_merged = true;
                events.push(Event::MemberRemoved {
                    dgroup: *d,
                    member: r.clone(),
                    by: by.to_owned(),
                });
            }
        }
        Ok(events)
    }

    /// Merges `incoming` (a config of `d` from a commit or Welcome of `by`) into the config we
    /// hold, and applies what it brings ([`Ctx::set_held_config`]).
    pub(crate) fn adopt_config(
        &mut self,
        d: &DGroupId,
        incoming: &DGroupConfig,
        by: &str,
    ) -> Result<Vec<Event>, EngineError> {
        let Some((held, _, _)) = self.config(d)? else {
            return Ok(Vec::new());
        };
        let merged = held.merged(incoming)?;
        self.set_held_config(d, &held, &merged, by)
    }

    /// `member` is known to be removed: the config we hold lists it as removed.
    pub(crate) fn config_mark_removed(
        &mut self,
        d: &DGroupId,
        member: &str,
    ) -> Result<(), EngineError> {
        if let Some((held, _, _)) = self.config(d)?
            && held.has_member(member)
            && !held.removed.iter().any(|r| r == member)
        {
            let new = held.with(&[], &[member]);
            dgroups::set_config(self.conn, d, &new.encode()?)?;
        }
        Ok(())
    }

    /// Checks the GroupContextExtensions proposal of a commit of `sg`'s owner, if it has one
    /// (docs/PROTOCOL.md "DGroup configuration"), and returns the config it carries.
    pub(crate) fn check_config_change(
        &self,
        group: &MlsGroup,
        sg: &SendGroupRow,
        staged: &StagedCommit,
    ) -> Result<Option<DGroupConfig>, EngineError> {
        let mut changes = staged
            .queued_proposals()
            .filter_map(|q| match q.proposal() {
                Proposal::GroupContextExtensions(p) => Some(p.extensions()),
                _ => None,
            });
        let Some(exts) = changes.next() else {
            return Ok(None);
        };
        let only_config = exts.iter().all(|e| match e {
            Extension::Unknown(DMLS_EXTENSION_TYPE, _) => true,
            Extension::RequiredCapabilities(r) => *r == required_config_support(),
            _ => false,
        });
        if changes.next().is_some() || exts.iter().count() != 2 || !only_config {
            return Err(EngineError::Rejected(
                "commit changes other GroupContext extensions than the DGroup config (and the \
                 required_capabilities naming it)"
                    .into(),
            ));
        }
        let bytes = exts.unknown(DMLS_EXTENSION_TYPE).ok_or_else(|| {
            EngineError::Rejected("commit removes the DGroup config extension".into())
        })?;
        let new = DGroupConfig::decode(&bytes.0)
            .map_err(|e| EngineError::Rejected(format!("commit's DGroup config: {e}")))?;
        new.validate()?;
        let old = group_config(group)
            .ok_or_else(|| EngineError::Internal("Send Group without DGroup config".into()))
            .and_then(DGroupConfig::decode)?;
        old.check_successor(&new)?;
        let (held, _, _) = self
            .config(&sg.dgroup_id)?
            .ok_or_else(|| EngineError::UnknownDGroup(sg.dgroup_id.to_hex()))?;
        held.check_same_dgroup(&new)?;
        let unknown = held.new_members(&new);
        if !unknown.is_empty() && !held.may_add(&sg.owner) {
            return Err(EngineError::Rejected(format!(
                "{}'s commit adds {unknown:?} to the DGroup config, but only its admin {} may add \
                 members",
                sg.owner,
                held.creator()
            )));
        }
        Ok(Some(new))
    }

    /// Whether a Welcome of `owner` with `config`, for a DGroup whose config we hold, is to be
    /// held rather than joined: its owner is not a member we know, or it brings members we do
    /// not know and its owner may not add. `Err` when it is of another DGroup config altogether.
    pub(crate) fn welcome_is_held(
        &self,
        owner: &str,
        config: &DGroupConfig,
    ) -> Result<bool, EngineError> {
        let Some((held, _, we_removed)) = self.config(&config.dgroup_id)? else {
            return Ok(false);
        };
        if we_removed {
            return Ok(false);
        }
        held.check_same_dgroup(config)
            .map_err(|e| EngineError::Rejected(format!("Welcome: {e}")))?;
        let unknown_members = !held.new_members(config).is_empty();
        Ok(!held.has_member(owner) || (unknown_members && !held.may_add(owner)))
    }

    /// Retries the Welcomes held for the DGroups whose config gained members in this
    /// operation; one that is still not admitted is held again.
    pub(crate) fn retry_held_welcomes(&mut self) -> Result<Vec<Event>, EngineError> {
        let mut events = Vec::new();
        while let Some(d) = self.config_grew.pop() {
            let now_ms = self.now_ms.unwrap_or_default();
            for (from, data) in dgroups::take_held_welcomes(self.conn, &d)? {
                match self.savepoint(super::store::Savepoint::Released, |c| {
                    c.welcome(None, &from, &data, now_ms)
                }) {
                    Ok(ev) => events.extend(ev),
                    Err(e) if e.is_input_error() => events.push(Event::Ignored {
                        reason: format!("held Welcome from {from} rejected: {e}"),
                    }),
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(events)
    }
}
