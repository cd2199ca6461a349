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

/// The DGroup configuration, identical byte for byte in every Send Group of the DGroup.
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
        Ok(out)
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
        r.finish()?;
        Ok(DGroupConfig {
            dgroup_id,
            name,
            members,
            cipher_suites,
            psk_length,
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
        Ok(())
    }

    /// Whether `client_id` is listed.
    pub fn has_member(&self, client_id: &str) -> bool {
        self.members.iter().any(|m| m == client_id)
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
}
