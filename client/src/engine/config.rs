//! The DGroup configuration carried in GroupContext extension 0xFF00
//! (PROTOCOL.md "DGroup configuration").

use super::EngineError;
use super::codec::{Reader, put_opaque, put_varint};
use super::ids::DGroupId;

/// GroupContext extension type of the DGroup config ("dmls_dgroup").
pub const DMLS_EXTENSION_TYPE: u16 = 0xFF00;
/// The PSK length every Send Group of a DGroup exports (PROTOCOL.md).
pub const PSK_LENGTH: u16 = 32;
/// The default ciphersuite, MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519.
pub const DEFAULT_CIPHERSUITE: u16 = 0x0001;

/// Who may add members to a DGroup (docs/PROTOCOL.md "Add"). Set at creation, never changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AddPolicy {
    /// Any member not known to be removed (wire value 0).
    #[default]
    AnyMember,
    /// Only the admins: the creator, the first member of the config (wire value 1).
    Admins,
}

impl AddPolicy {
    fn to_wire(self) -> u8 {
        match self {
            AddPolicy::AnyMember => 0,
            AddPolicy::Admins => 1,
        }
    }
}

/// The DGroup configuration (docs/PROTOCOL.md "DGroup configuration"): a join-semilattice
/// whose members and removed sets only grow, so members that merged the same configs hold
/// the same config, byte for byte, whatever the order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DGroupConfig {
    /// The DGroup id.
    pub dgroup_id: DGroupId,
    /// Display name (UTF-8, may be empty).
    pub name: String,
    /// Client ids of the members, creator first.
    pub members: Vec<String>,
    /// Allowed ciphersuites (RFC 9420 code points).
    pub cipher_suites: Vec<u16>,
    /// PSK length; must be 32.
    pub psk_length: u16,
    /// Who may add members.
    pub add_policy: AddPolicy,
    /// Members known to be removed, sorted bytewise (each also in `members`).
    pub removed: Vec<String>,
}

impl DGroupConfig {
    /// TLS-encodes the config.
    pub fn encode(&self) -> Result<Vec<u8>, EngineError> {
        let mut out = Vec::new();
        put_opaque(&mut out, &self.dgroup_id.0)?;
        put_opaque(&mut out, self.name.as_bytes())?;
        let mut members = Vec::new();
        for m in &self.members {
            put_opaque(&mut members, m.as_bytes())?;
        }
        put_opaque(&mut out, &members)?;
        put_varint(&mut out, self.cipher_suites.len() * 2)?;
        for cs in &self.cipher_suites {
            out.extend_from_slice(&cs.to_be_bytes());
        }
        out.extend_from_slice(&self.psk_length.to_be_bytes());
        if self.has_trailing_part() {
            out.push(self.add_policy.to_wire());
            let mut removed = Vec::new();
            for m in &self.removed {
                put_opaque(&mut removed, m.as_bytes())?;
            }
            put_opaque(&mut out, &removed)?;
        }
        Ok(out)
    }

    /// Whether the optional part (add_policy, removed) is encoded: exactly when it is not
    /// the default, so every value has one encoding.
    fn has_trailing_part(&self) -> bool {
        self.add_policy != AddPolicy::AnyMember || !self.removed.is_empty()
    }

    /// Strictly decodes a config: minimal lengths, no trailing bytes, a 16-byte dgroup_id,
    /// UTF-8 name and member ids.
    pub fn decode(bytes: &[u8]) -> Result<Self, EngineError> {
        let mut r = Reader::new(bytes, "DGroupConfig");
        let id = r.opaque("dgroup_id")?;
        let dgroup_id = DGroupId::from_slice(id).map_err(|_| {
            EngineError::Malformed(format!(
                "DGroupConfig: dgroup_id must be 16 bytes, got {}",
                id.len()
            ))
        })?;
        let name = utf8(r.opaque("name")?, "name")?;
        let mut mr = Reader::new(r.opaque("members")?, "DGroupConfig members");
        let mut members = Vec::new();
        while !mr.is_empty() {
            members.push(utf8(mr.opaque("member")?, "member")?);
        }
        let suites = r.opaque("cipher_suites")?;
        if suites.len() % 2 != 0 {
            return Err(EngineError::Malformed(
                "DGroupConfig: cipher_suites has an odd number of bytes".into(),
            ));
        }
        let cipher_suites = suites
            .chunks(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
            .collect();
        let psk_length = r.u16("psk_length")?;
        let mut add_policy = AddPolicy::AnyMember;
        let mut removed = Vec::new();
        if !r.is_empty() {
            add_policy = match r.u8("add_policy")? {
                0 => AddPolicy::AnyMember,
                1 => AddPolicy::Admins,
                other => {
                    return Err(EngineError::Malformed(format!(
                        "DGroupConfig: unknown add_policy {other}"
                    )));
                }
            };
            let mut rr = Reader::new(r.opaque("removed")?, "DGroupConfig removed");
            while !rr.is_empty() {
                removed.push(utf8(rr.opaque("removed member")?, "removed member")?);
            }
            if add_policy == AddPolicy::AnyMember && removed.is_empty() {
                return Err(EngineError::Malformed(
                    "DGroupConfig: the optional part is present with default values".into(),
                ));
            }
        }
        r.finish()?;
        Ok(DGroupConfig {
            dgroup_id,
            name,
            members,
            cipher_suites,
            psk_length,
            add_policy,
            removed,
        })
    }

    /// Checks the rules a config must satisfy whoever made it: psk_length 32, at least one
    /// member, no empty or duplicate member ids, at least one suite.
    pub fn validate(&self) -> Result<(), EngineError> {
        if self.psk_length != PSK_LENGTH {
            return Err(EngineError::Rejected(format!(
                "DGroup config psk_length is {}, must be {PSK_LENGTH}",
                self.psk_length
            )));
        }
        if self.members.is_empty() {
            return Err(EngineError::Rejected(
                "DGroup config lists no members".into(),
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for m in &self.members {
            if m.is_empty() || !seen.insert(m.as_str()) {
                return Err(EngineError::Rejected(format!(
                    "DGroup config member list has an empty or duplicate id {m:?}"
                )));
            }
        }
        if self.cipher_suites.is_empty() {
            return Err(EngineError::Rejected(
                "DGroup config allows no ciphersuite".into(),
            ));
        }
        if !self.removed.windows(2).all(|w| w[0] < w[1]) {
            return Err(EngineError::Rejected(
                "DGroup config removed list is not sorted or names a member twice".into(),
            ));
        }
        if let Some(r) = self.removed.iter().find(|r| !self.has_member(r)) {
            return Err(EngineError::Rejected(format!(
                "DGroup config lists {r:?} as removed but not as a member"
            )));
        }
        Ok(())
    }

    /// Whether `client_id` is listed (removed ones included).
    pub fn has_member(&self, client_id: &str) -> bool {
        self.members.iter().any(|m| m == client_id)
    }

    /// The creator: the first member.
    pub fn creator(&self) -> &str {
        self.members.first().map(String::as_str).unwrap_or_default()
    }

    /// Whether `member` may add members under the config's [`AddPolicy`].
    pub fn may_add(&self, member: &str) -> bool {
        match self.add_policy {
            AddPolicy::AnyMember => self.has_member(member),
            AddPolicy::Admins => member == self.creator(),
        }
    }

    /// Checks that `other` is a config of the same DGroup: the fields that never change
    /// (dgroup_id, name, cipher_suites, psk_length, add_policy, creator) are equal.
    pub fn check_same_dgroup(&self, other: &DGroupConfig) -> Result<(), EngineError> {
        let differs = if self.dgroup_id != other.dgroup_id {
            Some("dgroup_id")
        } else if self.name != other.name {
            Some("name")
        } else if self.cipher_suites != other.cipher_suites {
            Some("cipher_suites")
        } else if self.psk_length != other.psk_length {
            Some("psk_length")
        } else if self.add_policy != other.add_policy {
            Some("add_policy")
        } else if self.creator() != other.creator() {
            Some("creator (first member)")
        } else {
            None
        };
        match differs {
            Some(field) => Err(EngineError::Rejected(format!(
                "the DGroup config changes its {field}, which never changes"
            ))),
            None => Ok(()),
        }
    }

    /// Checks that `new` may follow this config in a Send Group: same DGroup, and no member
    /// or removed member taken out.
    pub fn check_successor(&self, new: &DGroupConfig) -> Result<(), EngineError> {
        self.check_same_dgroup(new)?;
        if let Some(m) = self.members.iter().find(|m| !new.has_member(m)) {
            return Err(EngineError::Rejected(format!(
                "the DGroup config drops member {m:?}"
            )));
        }
        if let Some(m) = self.removed.iter().find(|m| !new.removed.contains(m)) {
            return Err(EngineError::Rejected(format!(
                "the DGroup config no longer lists {m:?} as removed"
            )));
        }
        Ok(())
    }

    /// The members of `other` this config does not list.
    pub fn new_members<'a>(&self, other: &'a DGroupConfig) -> Vec<&'a str> {
        other
            .members
            .iter()
            .filter(|m| !self.has_member(m))
            .map(String::as_str)
            .collect()
    }

    /// This config with `members` added and `removed` marked removed (docs/PROTOCOL.md "DGroup
    /// configuration": when the member set changes, the creator stays first and the others
    /// are sorted bytewise; otherwise the order is kept).
    pub fn with(&self, members: &[&str], removed: &[&str]) -> DGroupConfig {
        let mut out = self.clone();
        let grows = members.iter().any(|m| !self.has_member(m));
        if grows {
            let creator = self.creator().to_owned();
            let mut rest: Vec<String> = self
                .members
                .iter()
                .skip(1)
                .map(String::as_str)
                .chain(members.iter().copied())
                .filter(|m| *m != creator)
                .map(str::to_owned)
                .collect();
            rest.sort_unstable();
            rest.dedup();
            out.members = std::iter::once(creator).chain(rest).collect();
        }
        for r in removed {
            if out.has_member(r) && !out.removed.iter().any(|x| x == r) {
                out.removed.push((*r).to_owned());
            }
        }
        out.removed.sort_unstable();
        out
    }

    /// The merge of two configs of the same DGroup: members and removed are the unions.
    pub fn merged(&self, other: &DGroupConfig) -> Result<DGroupConfig, EngineError> {
        self.check_same_dgroup(other)?;
        let members: Vec<&str> = other.members.iter().map(String::as_str).collect();
        let removed: Vec<&str> = other.removed.iter().map(String::as_str).collect();
        Ok(self.with(&members, &removed))
    }
}

fn utf8(b: &[u8], field: &str) -> Result<String, EngineError> {
    String::from_utf8(b.to_vec())
        .map_err(|_| EngineError::Malformed(format!("DGroupConfig: {field} is not UTF-8")))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn sample() -> DGroupConfig {
        DGroupConfig {
            dgroup_id: DGroupId([9; 16]),
            name: "team".into(),
            members: vec!["alice".into(), "bob".into()],
            cipher_suites: vec![1],
            psk_length: 32,
            add_policy: AddPolicy::AnyMember,
            removed: Vec::new(),
        }
    }

    #[test]
    fn config_encoding_is_the_profile_layout() {
        let b = sample().encode().unwrap();
        let mut want = vec![16];
        want.extend([9; 16]);
        want.extend([4, b't', b'e', b'a', b'm']);
        want.extend([10, 5, b'a', b'l', b'i', b'c', b'e', 3, b'b', b'o', b'b']);
        want.extend([2, 0, 1]);
        want.extend([0, 32]);
        assert_eq!(b, want);
        assert_eq!(DGroupConfig::decode(&b).unwrap(), sample());
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let mut b = sample().encode().unwrap();
        b.push(0);
        assert!(DGroupConfig::decode(&b).is_err());
    }

    #[test]
    fn non_minimal_length_is_rejected() {
        let b = sample().encode().unwrap();
        // Re-encode the dgroup_id length (16) in two bytes.
        let mut bad = vec![0x40, 16];
        bad.extend_from_slice(&b[1..]);
        assert!(DGroupConfig::decode(&bad).is_err());
    }

    #[test]
    fn truncated_config_is_rejected() {
        let b = sample().encode().unwrap();
        for n in 0..b.len() {
            assert!(
                DGroupConfig::decode(&b[..n]).is_err(),
                "prefix of {n} bytes"
            );
        }
    }

    #[test]
    fn wrong_dgroup_id_length_is_rejected() {
        let b = sample().encode().unwrap();
        let mut bad = vec![15];
        bad.extend_from_slice(&b[2..]);
        assert!(DGroupConfig::decode(&bad).is_err());
    }

    #[test]
    fn odd_cipher_suite_bytes_are_rejected() {
        let mut c = sample().encode().unwrap();
        let n = c.len();
        // Replace "2, 0, 1, 0, 32" with "1, 0, 0, 32": a one-byte suite list.
        c.truncate(n - 5);
        c.extend([1, 0, 0, 32]);
        assert!(DGroupConfig::decode(&c).is_err());
    }

    #[test]
    fn psk_length_other_than_32_fails_validation() {
        let mut c = sample();
        c.psk_length = 64;
        let d = DGroupConfig::decode(&c.encode().unwrap()).unwrap();
        assert!(d.validate().is_err());
        assert!(sample().validate().is_ok());
    }

    #[test]
    fn duplicate_members_fail_validation() {
        let mut c = sample();
        c.members.push("alice".into());
        assert!(c.validate().is_err());
    }

    #[test]
    fn optional_part_round_trips_and_is_canonical() {
        let mut c = sample();
        c.add_policy = AddPolicy::Admins;
        c.removed = vec!["bob".into()];
        let b = c.encode().unwrap();
        let base = sample().encode().unwrap();
        assert_eq!(&b[..base.len()], &base[..]);
        assert_eq!(&b[base.len()..], &[1, 4, 3, b'b', b'o', b'b']);
        assert_eq!(DGroupConfig::decode(&b).unwrap(), c);
        // The optional part with default values is not the canonical encoding.
        let mut default_part = base.clone();
        default_part.extend([0, 0]);
        assert!(DGroupConfig::decode(&default_part).is_err());
        let mut bad_policy = base;
        bad_policy.extend([2, 0]);
        assert!(DGroupConfig::decode(&bad_policy).is_err());
    }

    #[test]
    fn removed_must_be_sorted_members() {
        let mut c = sample();
        c.removed = vec!["carol".into()];
        assert!(c.validate().is_err());
        c.removed = vec!["bob".into(), "alice".into()];
        assert!(c.validate().is_err());
        c.removed = vec!["alice".into(), "bob".into()];
        assert!(c.validate().is_ok());
    }

    #[test]
    fn merging_is_order_independent_and_keeps_the_creator_first() {
        let base = DGroupConfig {
            members: vec!["carol".into(), "zed".into(), "bob".into()],
            ..sample()
        };
        let x = base.with(&["xavier"], &[]);
        let y = base.with(&["yann"], &["zed"]);
        let xy = x.merged(&y).unwrap();
        let yx = y.merged(&x).unwrap();
        assert_eq!(xy, yx);
        assert_eq!(xy.members, ["carol", "bob", "xavier", "yann", "zed"]);
        assert_eq!(xy.removed, ["zed"]);
        assert_eq!(xy.merged(&x).unwrap(), xy);
        // Nothing new: the order is kept.
        assert_eq!(base.merged(&base).unwrap(), base);
        assert!(base.check_successor(&xy).is_ok());
        assert!(xy.check_successor(&base).is_err());
    }

    #[test]
    fn fixed_fields_may_not_change() {
        let base = sample();
        for change in [
            |c: &mut DGroupConfig| c.name = "other".into(),
            |c: &mut DGroupConfig| c.cipher_suites = vec![1, 3],
            |c: &mut DGroupConfig| c.add_policy = AddPolicy::Admins,
            |c: &mut DGroupConfig| c.members.swap(0, 1),
            |c: &mut DGroupConfig| c.dgroup_id = DGroupId([1; 16]),
        ] {
            let mut c = base.clone();
            change(&mut c);
            assert!(base.check_successor(&c).is_err());
            assert!(base.merged(&c).is_err());
        }
    }

    #[test]
    fn only_admins_add_under_the_admins_policy() {
        let mut c = sample();
        assert!(c.may_add("bob"));
        assert!(!c.may_add("mallory"));
        c.add_policy = AddPolicy::Admins;
        assert!(c.may_add("alice"));
        assert!(!c.may_add("bob"));
    }
}
