//! The DGroup's name: a last-writer-wins register that every member converges on without any
//! order (docs/PROTOCOL.md "Group name").
//!
//! A rename is a control message in the renamer's Send Group carrying the register's new value
//! `(clock, set_by, name)`; a value replaces the register when `(clock, set_by)` is greater. A
//! member sends the value it holds again after a late add (the joiners missed the earlier
//! messages), and when the member who set it is known to be removed (others may have dropped
//! that member's message, "Removal race"): when it learns of the removal, or when it takes such
//! a value.

use super::codec::{Reader, put_opaque};
use super::ctx::Ctx;
use super::ids::DGroupId;
use super::store::dgroups::{self, NameRegister};
use super::store::members;
use super::store::send_groups::SendGroupRow;
use super::{EngineError, Event};

/// Content type of the control message that carries a DGroup name (docs/PROTOCOL.md "Group
/// name").
pub const NAME_CONTENT_TYPE: &str = "application/vnd.dmls.name";

/// The longest DGroup name, in bytes of UTF-8.
pub const MAX_NAME_BYTES: usize = 256;

impl NameRegister {
    /// `struct { uint64 clock; opaque set_by<V>; opaque name<V>; } DGroupName;`
    fn encode(&self) -> Result<Vec<u8>, EngineError> {
        let mut out = self.clock.to_be_bytes().to_vec();
        put_opaque(&mut out, self.set_by.as_bytes())?;
        put_opaque(&mut out, self.name.as_bytes())?;
        Ok(out)
    }

    /// Strict decoding: minimal lengths, no trailing bytes, UTF-8, a name of 1 to
    /// [`MAX_NAME_BYTES`] bytes and a non-empty `set_by`.
    fn decode(bytes: &[u8]) -> Result<NameRegister, EngineError> {
        let mut r = Reader::new(bytes, "DGroupName");
        let clock = r.u64("clock")?;
        let set_by = utf8(r.opaque("set_by")?, "set_by")?;
        let name = utf8(r.opaque("name")?, "name")?;
        r.finish()?;
        check_name(&name).map_err(|e| EngineError::Rejected(format!("DGroupName: {e}")))?;
        if set_by.is_empty() || clock == 0 {
            return Err(EngineError::Rejected(
                "DGroupName: a clock of 0 or an empty set_by is the config's name".into(),
            ));
        }
        Ok(NameRegister {
            clock,
            set_by,
            name,
        })
    }

    /// Whether `self` replaces `current`: a greater `(clock, set_by)` (bytewise).
    fn wins_over(&self, current: &NameRegister) -> bool {
        (self.clock, self.set_by.as_bytes()) > (current.clock, current.set_by.as_bytes())
    }
}

fn utf8(b: &[u8], field: &str) -> Result<String, EngineError> {
    String::from_utf8(b.to_vec())
        .map_err(|_| EngineError::Malformed(format!("DGroupName: {field} is not UTF-8")))
}

/// Why `name` cannot be a DGroup name, if it cannot.
fn check_name(name: &str) -> Result<(), String> {
    if name.trim().is_empty() {
        return Err("a group name must not be empty".into());
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(format!(
            "a group name has at most {MAX_NAME_BYTES} bytes, this one {}",
            name.len()
        ));
    }
    if name.chars().any(char::is_control) {
        return Err("a group name must not contain control characters".into());
    }
    Ok(())
}

impl Ctx<'_> {
    /// We rename `d` to `name`: the register takes `(clock + 1, us, name)`, which goes into our
    /// Send Group.
    pub(crate) fn rename(
        &mut self,
        d: &DGroupId,
        name: &str,
        now_ms: u64,
    ) -> Result<(), EngineError> {
        check_name(name).map_err(EngineError::InvalidArgument)?;
        self.active_own(d)?;
        let current = self.name_register(d)?;
        let value = NameRegister {
            clock: current.clock.saturating_add(1),
            set_by: self.me()?,
            name: name.to_owned(),
        };
        dgroups::set_name(self.conn, d, &value)?;
        self.send(d, NAME_CONTENT_TYPE, &value.encode()?, now_ms)?;
        Ok(())
    }

    /// The name register of `d`.
    fn name_register(&self, d: &DGroupId) -> Result<NameRegister, EngineError> {
        dgroups::name_register(self.conn, d)?.ok_or_else(|| EngineError::UnknownDGroup(d.to_hex()))
    }

    /// A name value sent by the owner of `sg`: it replaces our register if it wins. Its
    /// `set_by` must be a member of the DGroup config.
    pub(crate) fn name_received(
        &mut self,
        sg: &SendGroupRow,
        body: &[u8],
    ) -> Result<Vec<Event>, EngineError> {
        let value = NameRegister::decode(body)?;
        let Some((config, _, _)) = self.config(&sg.dgroup_id)? else {
            return Err(EngineError::UnknownDGroup(sg.dgroup_id.to_hex()));
        };
        if !config.has_member(&value.set_by) {
            return Err(EngineError::Rejected(format!(
                "DGroupName set by {:?}, who is not a member of the DGroup",
                value.set_by
            )));
        }
        let current = self.name_register(&sg.dgroup_id)?;
        if !value.wins_over(&current) {
            return Ok(Vec::new());
        }
        dgroups::set_name(self.conn, &sg.dgroup_id, &value)?;
        // Set by a removed member: some may have dropped its message ("Removal race").
        if members::removed_names(self.conn, &sg.dgroup_id)?.contains(&value.set_by) {
            self.resend_name(sg.dgroup_id);
        }
        Ok(vec![Event::GroupRenamed {
            dgroup: sg.dgroup_id,
            name: value.name,
            by: value.set_by,
        }])
    }

    /// Our name register is to be sent again in our Send Group of `d` at the end of this
    /// operation ([`Ctx::flush_name_resends`]), if a member ever renamed `d`.
    pub(crate) fn resend_name(&mut self, d: DGroupId) {
        self.name_resends.push(d);
    }

    /// `member` was removed from `d`: if it set our register's value, others may have dropped
    /// its message, so we send the value again.
    pub(crate) fn resend_name_set_by(
        &mut self,
        d: &DGroupId,
        member: &str,
    ) -> Result<(), EngineError> {
        if dgroups::name_register(self.conn, d)?.is_some_and(|r| r.set_by == member) {
            self.resend_name(*d);
        }
        Ok(())
    }

    /// Sends the name register again in our Send Group of every DGroup queued by
    /// [`Ctx::resend_name`] in this operation, where it was ever renamed and we can still send.
    pub(crate) fn flush_name_resends(&mut self) -> Result<(), EngineError> {
        let mut ds = std::mem::take(&mut self.name_resends);
        ds.sort_unstable_by_key(|d| d.0);
        ds.dedup();
        let Some(now_ms) = self.now_ms else {
            return Ok(());
        };
        for d in ds {
            let value = self.name_register(&d)?;
            if value.clock == 0 || self.active_own(&d).is_err() {
                continue;
            }
            self.send(&d, NAME_CONTENT_TYPE, &value.encode()?, now_ms)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn value(clock: u64, set_by: &str, name: &str) -> NameRegister {
        NameRegister {
            clock,
            set_by: set_by.into(),
            name: name.into(),
        }
    }

    #[test]
    fn encoding_is_the_profile_layout_and_decoding_is_strict() {
        let v = value(3, "bob", "team");
        let bytes = v.encode().unwrap();
        assert_eq!(
            bytes,
            [
                0, 0, 0, 0, 0, 0, 0, 3, 3, b'b', b'o', b'b', 4, b't', b'e', b'a', b'm'
            ]
        );
        assert_eq!(NameRegister::decode(&bytes).unwrap(), v);
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(NameRegister::decode(&trailing).is_err());
        for n in 0..bytes.len() {
            assert!(NameRegister::decode(&bytes[..n]).is_err(), "prefix {n}");
        }
        for bad in [
            value(0, "bob", "x"),
            value(1, "", "x"),
            value(1, "bob", ""),
            value(1, "bob", " "),
            value(1, "bob", "a\nb"),
            value(1, "bob", &"x".repeat(MAX_NAME_BYTES + 1)),
        ] {
            assert!(
                NameRegister::decode(&bad.encode().unwrap()).is_err(),
                "{bad:?}"
            );
        }
        assert!(
            NameRegister::decode(
                &value(1, "bob", &"x".repeat(MAX_NAME_BYTES))
                    .encode()
                    .unwrap()
            )
            .is_ok()
        );
    }

    #[test]
    fn the_greater_clock_wins_then_the_greater_client_id() {
        let config = value(0, "", "first");
        assert!(value(1, "alice", "a").wins_over(&config));
        assert!(value(2, "alice", "a").wins_over(&value(1, "bob", "b")));
        assert!(value(1, "bob", "b").wins_over(&value(1, "alice", "a")));
        assert!(!value(1, "alice", "a").wins_over(&value(1, "bob", "b")));
        assert!(!value(1, "bob", "b").wins_over(&value(1, "bob", "b")));
    }
}
