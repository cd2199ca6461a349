//! Trust on first use (docs/PROTOCOL.md "Pinning"): the first identity key accepted for a
//! client id is pinned; a key package, Welcome or leaf that carries another key for it is
//! reported as a key change, and what it would let in (an add to our Send Group, a join) is
//! refused until the user trusts the new key.

use openmls::prelude::*;

use super::ctx::{Ctx, credential_identity};
use super::ids::{self, DGroupId};
use super::store::{contacts, dgroups, meta};
use super::verify::fingerprint;
use super::{EngineError, Event};

/// A contact: a client id and the identity key pinned for it ([`super::Engine::contacts`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contact {
    /// Client id.
    pub client_id: String,
    /// The pinned identity key (Ed25519 public key).
    pub key: Vec<u8>,
    /// When the key was first accepted (the shell's clock, ms since the Unix epoch; 0 when it
    /// was pinned from Send Groups held before contacts were kept).
    pub first_seen_ms: u64,
    /// Where it was first accepted.
    pub first_seen_where: String,
    /// When the safety number with this key was confirmed ([`super::Engine::confirm_verified`]);
    /// `None`: not verified.
    pub verified_ms: Option<u64>,
}

/// A key seen for a contact that is not its pinned key ([`Event::KeyChanged`],
/// [`super::Engine::key_changes`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyChange {
    /// The contact.
    pub client_id: String,
    /// Its pinned key.
    pub pinned_key: Vec<u8>,
    /// The other key seen.
    pub new_key: Vec<u8>,
    /// When it was first seen (the shell's clock).
    pub seen_ms: u64,
    /// Where it was first seen.
    pub seen_where: String,
}

/// A member's leaf, in a Send Group we hold, whose identity key is not the member's pinned key
/// ([`super::DGroupStatus::key_mismatches`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyMismatch {
    /// The member.
    pub member: String,
    /// The owner of the Send Group the leaf is in.
    pub send_group_owner: String,
    /// The key of the leaf.
    pub leaf_key: Vec<u8>,
    /// The pinned key (ours, for our own leaves); `None` when the member has no pin.
    pub pinned_key: Option<Vec<u8>>,
}

/// What is pinned for a client id.
enum Pin {
    /// Nothing yet.
    None,
    /// This key.
    Key(Vec<u8>),
    /// Our own id, before our identity key is stored: nothing to compare.
    Own,
}

/// What [`Ctx::check_key`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum KeyCheck {
    /// The key is the pinned one (or ours).
    Pinned,
    /// No key was pinned for the client id: this one is now.
    FirstSeen,
    /// Another key is pinned: the change is recorded and reported in the event.
    Changed(Box<Event>),
}

impl Ctx<'_> {
    /// Checks `key` for `client_id`, seen at `seen_where`, against its pin (ours for our own
    /// id): pins it when there is none; records and reports it when it differs.
    pub(crate) fn check_key(
        &self,
        client_id: &str,
        key: &[u8],
        dgroup: Option<DGroupId>,
        seen_where: impl FnOnce() -> String,
    ) -> Result<KeyCheck, EngineError> {
        let now = self.now_ms.unwrap_or(0);
        match self.pinned_key(client_id)? {
            Pin::Own => Ok(KeyCheck::Pinned),
            Pin::Key(p) if p == key => Ok(KeyCheck::Pinned),
            Pin::None => {
                contacts::pin(self.conn, client_id, key, now, &seen_where())?;
                Ok(KeyCheck::FirstSeen)
            }
            Pin::Key(pinned_key) => {
                let seen_where = seen_where();
                contacts::record_change(self.conn, client_id, key, now, &seen_where)?;
                Ok(KeyCheck::Changed(Box::new(Event::KeyChanged {
                    dgroup,
                    change: KeyChange {
                        client_id: client_id.to_owned(),
                        pinned_key,
                        new_key: key.to_vec(),
                        seen_ms: now,
                        seen_where,
                    },
                })))
            }
        }
    }

    /// Whether `key` is another key than the one pinned for `client_id` (read-only: a first
    /// key is not pinned here, see [`Ctx::check_key`]).
    pub(crate) fn differs_from_pin(
        &self,
        client_id: &str,
        key: &[u8],
    ) -> Result<bool, EngineError> {
        Ok(matches!(self.pinned_key(client_id)?, Pin::Key(p) if p != key))
    }

    /// The key pinned for `client_id`: ours for our own id.
    fn pinned_key(&self, client_id: &str) -> Result<Pin, EngineError> {
        if client_id == self.me()? {
            // Our own leaves carry our key (none before the identity is complete).
            return Ok(match meta::get(self.conn, meta::Key::SignaturePublic)? {
                Some(own) => Pin::Key(own),
                None => Pin::Own,
            });
        }
        Ok(contacts::key(self.conn, client_id)?.map_or(Pin::None, Pin::Key))
    }

    /// Checks every leaf of `members` (a Send Group of `dgroup` owned by `owner`) against the
    /// pins, pinning first-seen keys; returns the key changes found.
    pub(crate) fn check_leaves(
        &self,
        members: impl Iterator<Item = Member>,
        dgroup: &DGroupId,
        owner: &str,
    ) -> Result<Vec<Event>, EngineError> {
        let mut events = Vec::new();
        let name = dgroups::name(self.conn, dgroup)?.unwrap_or_default();
        for m in members {
            let Ok(id) = credential_identity(&m.credential) else {
                continue;
            };
            let check = self.check_key(&id, &m.signature_key, Some(*dgroup), || {
                format!("a leaf in {owner}'s Send Group of DGroup {name:?}")
            })?;
            if let KeyCheck::Changed(e) = check {
                events.push(*e);
            }
        }
        Ok(events)
    }

    /// The leaves of the Send Groups of `d` we hold whose key is not their member's pinned
    /// key (ours for our own), or whose member has no pin.
    pub(crate) fn key_mismatches(&self, d: &DGroupId) -> Result<Vec<KeyMismatch>, EngineError> {
        let me = self.me()?;
        let own_key = meta::get(self.conn, meta::Key::SignaturePublic)?;
        let summary = self.summary(d)?;
        let mut found = Vec::new();
        for owner in &summary.members {
            let gid = ids::send_group_id(d, owner);
            if !self.send_group(&gid)?.is_some_and(|sg| sg.joined) {
                continue;
            }
            let leaves: Vec<(String, Vec<u8>)> = self.with_group(&gid, |g| {
                Ok(g.members()
                    .filter_map(|m| {
                        credential_identity(&m.credential)
                            .ok()
                            .map(|id| (id, m.signature_key))
                    })
                    .collect())
            })?;
            for (member, leaf_key) in leaves {
                let pinned_key = if member == me {
                    own_key.clone()
                } else {
                    contacts::key(self.conn, &member)?
                };
                if pinned_key.as_ref() != Some(&leaf_key) {
                    found.push(KeyMismatch {
                        member,
                        send_group_owner: owner.clone(),
                        leaf_key,
                        pinned_key,
                    });
                }
            }
        }
        Ok(found)
    }

    /// The members of `d` (not us, not removed) whose pinned key is not verified.
    pub(crate) fn unverified_members(&self, d: &DGroupId) -> Result<Vec<String>, EngineError> {
        let me = self.me()?;
        let summary = self.summary(d)?;
        let mut out = Vec::new();
        for m in &summary.members {
            if *m == me || summary.removed.contains(m) {
                continue;
            }
            if contacts::get(self.conn, m)?.is_none_or(|p| p.verified_ms.is_none()) {
                out.push(m.clone());
            }
        }
        Ok(out)
    }

    /// Whether only verified contacts may be added ([`super::Engine::set_require_verified`]).
    pub(crate) fn require_verified(&self) -> Result<bool, EngineError> {
        Ok(meta::get(self.conn, meta::Key::RequireVerified)?.is_some())
    }

    /// With [`Ctx::require_verified`] on, refuses `client_id` unless its pinned key is
    /// verified and, when given, is `key`.
    pub(crate) fn check_verified(
        &self,
        client_id: &str,
        key: Option<&[u8]>,
    ) -> Result<(), EngineError> {
        if !self.require_verified()? {
            return Ok(());
        }
        match contacts::get(self.conn, client_id)? {
            Some(p) if p.verified_ms.is_some() && key.is_none_or(|k| k == p.key) => Ok(()),
            Some(p) if p.verified_ms.is_some() => Err(EngineError::Rejected(format!(
                "{client_id}'s key {} is not its verified key",
                fingerprint(key.unwrap_or_default())
            ))),
            _ => Err(EngineError::Rejected(format!(
                "{client_id} is not verified, and only verified contacts may be added \
                 (compare safety numbers, then `dmls verify {client_id} --confirm`)"
            ))),
        }
    }

    /// Makes `client_id` a contact from one of its key packages (claimed for that alone,
    /// before any group with it), so that its safety number can be compared first. Pins its key
    /// when it has none; a key other than the pinned one is a key change. Returns the key and
    /// the key change, if any.
    pub(crate) fn add_contact(
        &self,
        client_id: &str,
        key_package: &[u8],
    ) -> Result<(Vec<u8>, Option<Event>), EngineError> {
        if client_id == self.me()? {
            return Err(EngineError::InvalidArgument(format!(
                "{client_id} is you: contacts are the others"
            )));
        }
        let kp = self.validate_key_package(client_id, key_package)?;
        let key = kp.leaf_node().signature_key().as_slice().to_vec();
        let check = self.check_key(client_id, &key, None, || {
            "a key package fetched to add the contact".to_string()
        })?;
        Ok(match check {
            KeyCheck::Changed(e) => (key, Some(*e)),
            KeyCheck::Pinned | KeyCheck::FirstSeen => (key, None),
        })
    }

    /// Every contact.
    pub(crate) fn contacts(&self) -> Result<Vec<Contact>, EngineError> {
        Ok(contacts::all(self.conn)?
            .into_iter()
            .map(|p| Contact {
                client_id: p.client_id,
                key: p.key,
                first_seen_ms: p.first_seen_ms,
                first_seen_where: p.first_seen_where,
                verified_ms: p.verified_ms,
            })
            .collect())
    }

    /// Every key change not resolved yet.
    pub(crate) fn key_changes(&self) -> Result<Vec<KeyChange>, EngineError> {
        let mut out = Vec::new();
        for c in contacts::changes(self.conn)? {
            let Some(pinned_key) = contacts::key(self.conn, &c.client_id)? else {
                continue;
            };
            out.push(KeyChange {
                client_id: c.client_id,
                pinned_key,
                new_key: c.new_key,
                seen_ms: c.seen_ms,
                seen_where: c.seen_where,
            });
        }
        Ok(out)
    }

    /// The user checked `fingerprint` out of band and trusts it for `client_id`: pins the
    /// recorded key change with that fingerprint (unverified), joins the Welcomes held for it
    /// and claims key packages again where the member is missing.
    pub(crate) fn trust(
        &mut self,
        client_id: &str,
        fp: &str,
        now_ms: u64,
    ) -> Result<Vec<Event>, EngineError> {
        let wanted = parse_fingerprint(fp)?;
        let change = contacts::changes(self.conn)?
            .into_iter()
            .find(|c| c.client_id == client_id && normalized(&fingerprint(&c.new_key)) == wanted);
        let Some(change) = change else {
            let pinned = contacts::key(self.conn, client_id)?;
            return Err(EngineError::InvalidArgument(match pinned {
                Some(k) if normalized(&fingerprint(&k)) == wanted => {
                    format!("{fp} is already {client_id}'s pinned key")
                }
                Some(_) => format!(
                    "no key with fingerprint {fp} was seen for {client_id} (see `dmls contacts`)"
                ),
                None => format!("{client_id} is not a contact"),
            }));
        };
        contacts::pin(
            self.conn,
            client_id,
            &change.new_key,
            now_ms,
            &format!("trusted by the user after {}", change.seen_where),
        )?;
        let mut events = Vec::new();
        for held in contacts::take_held_welcomes(self.conn, client_id)? {
            if held.key != change.new_key {
                continue;
            }
            let (from, data) = (held.from, held.data);
            // One held Welcome that no longer applies (a duplicate, a group left meanwhile)
            // must not keep the others out.
            match self.savepoint(super::store::Savepoint::Input, |c| {
                c.welcome(None, &from, &data, now_ms)
            }) {
                Ok(e) => events.extend(e),
                Err(e) if e.is_input_error() => events.push(Event::Ignored {
                    reason: format!("a Welcome held for {client_id}'s new key: {e}"),
                }),
                Err(e) => return Err(e),
            }
        }
        self.retry_missing_members()?;
        Ok(events)
    }

    /// The user compared the safety number with `client_id` out of band: marks its pinned
    /// key verified. Refused when it has no pin or an unresolved key change. Leaves with
    /// another key stay flagged ([`Ctx::key_mismatches`]): the verification is of the pin.
    pub(crate) fn confirm_verified(
        &mut self,
        client_id: &str,
        now_ms: u64,
    ) -> Result<Vec<u8>, EngineError> {
        let pin = contacts::get(self.conn, client_id)?.ok_or_else(|| {
            EngineError::InvalidArgument(format!(
                "no key is known for {client_id} yet: it becomes a contact at the first \
                 group with it"
            ))
        })?;
        if contacts::changes(self.conn)?
            .iter()
            .any(|c| c.client_id == client_id)
        {
            return Err(EngineError::InvalidArgument(format!(
                "{client_id} has an unresolved key change: check it first (`dmls contacts`)"
            )));
        }
        contacts::set_verified(self.conn, client_id, &pin.key, now_ms)?;
        Ok(pin.key)
    }

    /// Pins the keys of the members of every Send Group we hold that has no pin yet: run once,
    /// when a state database of a version without contacts is first opened. A member seen with
    /// two keys keeps the first pinned and the other as a key change.
    pub(crate) fn backfill_contacts(&mut self) -> Result<(), EngineError> {
        if meta::get(self.conn, meta::Key::ContactsBackfilled)?.is_some() {
            return Ok(());
        }
        if meta::get(self.conn, meta::Key::ClientId)?.is_some() {
            for d in dgroups::all(self.conn)? {
                let summary = self.summary(&d)?;
                for owner in &summary.members {
                    let gid = ids::send_group_id(&d, owner);
                    if !self.send_group(&gid)?.is_some_and(|sg| sg.joined) {
                        continue;
                    }
                    let members: Vec<Member> =
                        self.with_group(&gid, |g| Ok(g.members().collect()))?;
                    self.check_leaves(members.into_iter(), &d, owner)?;
                }
            }
        }
        meta::set(self.conn, meta::Key::ContactsBackfilled, &[1])
    }
}

/// A fingerprint argument as 32 lowercase hex digits (spaces and case ignored).
fn parse_fingerprint(fp: &str) -> Result<String, EngineError> {
    let n = normalized(fp);
    if n.len() != 32 || !n.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(EngineError::InvalidArgument(format!(
            "{fp:?} is not a fingerprint: 32 hexadecimal digits, as `dmls contacts` shows them"
        )));
    }
    Ok(n)
}

fn normalized(fp: &str) -> String {
    fp.chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fingerprint_argument_ignores_spaces_and_case_and_refuses_anything_else() {
        let fp = fingerprint(&[5; 32]);
        assert_eq!(parse_fingerprint(&fp).ok(), Some(fp.replace(' ', "")));
        assert_eq!(
            parse_fingerprint(&fp.to_uppercase()).ok(),
            Some(fp.replace(' ', ""))
        );
        for bad in [
            "",
            "abcd",
            &fp[..fp.len() - 1],
            &format!("{fp}0"),
            &fp.replace('a', "g"),
        ] {
            if bad == fp {
                continue;
            }
            assert!(
                matches!(parse_fingerprint(bad), Err(EngineError::InvalidArgument(_))),
                "{bad:?}"
            );
        }
    }
}
