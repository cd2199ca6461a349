//! Identity-key fingerprints and safety numbers (PROTOCOL.md "Identity keys and safety
//! numbers"): what two people compare out of band to make sure that the keys their clients use
//! for each other are the ones the other really holds, and not keys a relay slipped in.

use sha2::{Digest as _, Sha256, Sha512};

use super::ctx::{Ctx, credential_identity};
use super::ids::DGroupId;
use super::store::{dgroups, meta};
use super::{EngineError, ids};

const FINGERPRINT_LABEL: &[u8] = b"DMLS identity key fingerprint v1";
const SAFETY_NUMBER_LABEL: &[u8] = b"DMLS safety number v1";

/// The fingerprint of an identity key: the first 16 bytes of
/// SHA-256("DMLS identity key fingerprint v1" || key), lowercase hex in groups of four.
pub fn fingerprint(key: &[u8]) -> String {
    let digest = Sha256::new()
        .chain_update(FINGERPRINT_LABEL)
        .chain_update(key)
        .finalize();
    let hex = hex::encode(&digest[..16]);
    hex.as_bytes()
        .chunks(4)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The 30 digits of one side of a safety number.
fn half(client_id: &str, key: &[u8]) -> String {
    let id = client_id.as_bytes();
    // Client ids are at most 64 bytes (API.md), so the length fits in two bytes.
    let len = u16::try_from(id.len()).unwrap_or(u16::MAX);
    let digest = Sha512::new()
        .chain_update(SAFETY_NUMBER_LABEL)
        .chain_update(len.to_be_bytes())
        .chain_update(id)
        .chain_update(key)
        .finalize();
    digest[..30]
        .chunks(5)
        .map(|chunk| {
            let n = chunk.iter().fold(0u64, |n, b| (n << 8) | u64::from(*b));
            format!("{:05}", n % 100_000)
        })
        .collect()
}

/// The safety number of two identities: 60 digits in twelve groups of five, the same for both
/// (the half of the client id that sorts first, bytewise, comes first).
pub fn safety_number(a_id: &str, a_key: &[u8], b_id: &str, b_key: &[u8]) -> String {
    let (a, b) = (half(a_id, a_key), half(b_id, b_key));
    let digits = if a_id.as_bytes() <= b_id.as_bytes() {
        a + &b
    } else {
        b + &a
    };
    digits
        .as_bytes()
        .chunks(5)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// An identity key a member's leaf carries in a Send Group we hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenKey {
    /// The Ed25519 public key of the leaf's credential.
    pub key: Vec<u8>,
    /// The DGroup of the Send Group.
    pub dgroup: DGroupId,
    /// Its name.
    pub dgroup_name: String,
    /// The owner of the Send Group the leaf is in.
    pub send_group_owner: String,
}

impl Ctx<'_> {
    /// Our identity key.
    pub(crate) fn identity_key(&self) -> Result<Vec<u8>, EngineError> {
        meta::get(self.conn, meta::Key::SignaturePublic)?.ok_or(EngineError::NoIdentity)
    }

    /// The identity keys of `client_id`'s leaves in every Send Group we hold, one entry per
    /// Send Group.
    pub(crate) fn identity_keys_of(&self, client_id: &str) -> Result<Vec<SeenKey>, EngineError> {
        let mut seen = Vec::new();
        for d in dgroups::all(self.conn)? {
            let summary = self.summary(&d)?;
            for owner in &summary.members {
                let gid = ids::send_group_id(&d, owner);
                let joined = self.send_group(&gid)?.is_some_and(|sg| sg.joined);
                if !joined {
                    continue;
                }
                let keys: Vec<Vec<u8>> = self.with_group(&gid, |g| {
                    Ok(g.members()
                        .filter(|m| {
                            credential_identity(&m.credential).is_ok_and(|id| id == client_id)
                        })
                        .map(|m| m.signature_key)
                        .collect())
                })?;
                seen.extend(keys.into_iter().map(|key| SeenKey {
                    key,
                    dgroup: d,
                    dgroup_name: summary.name.clone(),
                    send_group_owner: owner.clone(),
                }));
            }
        }
        Ok(seen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fingerprint_is_32_hex_digits_in_groups_of_four() {
        let f = fingerprint(&[7; 32]);
        let groups: Vec<&str> = f.split(' ').collect();
        assert_eq!(groups.len(), 8);
        assert!(groups.iter().all(|g| {
            g.len() == 4
                && g.bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        }));
        assert_ne!(f, fingerprint(&[8; 32]));
    }

    #[test]
    fn a_fingerprint_follows_the_protocol_text() {
        let key = [1u8, 2, 3];
        let mut input = b"DMLS identity key fingerprint v1".to_vec();
        input.extend_from_slice(&key);
        let digest = Sha256::digest(&input);
        assert_eq!(
            fingerprint(&key).replace(' ', ""),
            hex::encode(&digest[..16])
        );
    }

    #[test]
    fn both_sides_get_the_same_safety_number_and_any_key_change_changes_it() {
        let alice = [1u8; 32];
        let bob = [2u8; 32];
        let n = safety_number("alice", &alice, "bob", &bob);
        assert_eq!(n, safety_number("bob", &bob, "alice", &alice));
        let groups: Vec<&str> = n.split(' ').collect();
        assert_eq!(groups.len(), 12);
        assert!(
            groups
                .iter()
                .all(|g| g.len() == 5 && g.bytes().all(|b| b.is_ascii_digit()))
        );
        assert_ne!(n, safety_number("alice", &alice, "bob", &[3u8; 32]));
        assert_ne!(n, safety_number("alice", &[3u8; 32], "bob", &bob));
        // The first half belongs to the id that sorts first.
        assert!(n.replace(' ', "").starts_with(&half("alice", &alice)));
    }

    #[test]
    fn a_half_is_six_five_digit_numbers_of_sha512() {
        let mut input = b"DMLS safety number v1".to_vec();
        input.extend_from_slice(&[0, 3]);
        input.extend_from_slice(b"bob");
        input.extend_from_slice(&[9, 9]);
        let digest = Sha512::digest(&input);
        let first = digest[..5]
            .iter()
            .fold(0u64, |n, b| (n << 8) | u64::from(*b))
            % 100_000;
        let h = half("bob", &[9, 9]);
        assert_eq!(h.len(), 30);
        assert_eq!(&h[..5], format!("{first:05}"));
    }
}
