//! Identifiers: DGroup ids, Send Group ids, PSK ids, message ids (PROTOCOL.md
//! "Send Group identifiers", "PSK export", "Application payload").

use sha2::{Digest, Sha256};

use super::EngineError;

/// A DGroup id: 16 random bytes, shown as lowercase hex.
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct DGroupId(pub [u8; 16]);

impl DGroupId {
    /// Parses 32 hex digits.
    pub fn from_hex(s: &str) -> Result<Self, EngineError> {
        let v = hex::decode(s).map_err(|e| {
            EngineError::InvalidArgument(format!("DGroup id {s:?} is not hex: {e}"))
        })?;
        Self::from_slice(&v)
    }

    /// Takes exactly 16 bytes.
    pub fn from_slice(b: &[u8]) -> Result<Self, EngineError> {
        let a: [u8; 16] = b.try_into().map_err(|_| {
            EngineError::InvalidArgument(format!("DGroup id must be 16 bytes, got {}", b.len()))
        })?;
        Ok(DGroupId(a))
    }

    /// Lowercase hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl std::fmt::Display for DGroupId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl std::fmt::Debug for DGroupId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DGroupId({})", self.to_hex())
    }
}

/// The 16 random bytes identifying an application message (its envelope's `message_id`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(pub [u8; 16]);

impl MessageId {
    /// Lowercase hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl std::fmt::Display for MessageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl std::fmt::Debug for MessageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MessageId({})", self.to_hex())
    }
}

/// `send_group_id = SHA-256("dmls send group" || dgroup_id || owner_client_id)`
/// (PROTOCOL.md "Send Group identifiers").
pub fn send_group_id(dgroup_id: &DGroupId, owner: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"dmls send group");
    h.update(dgroup_id.0);
    h.update(owner.as_bytes());
    h.finalize().into()
}

/// A DMLS PSK id: `uint64_be(epoch) || send_group_id` (40 bytes) (PROTOCOL.md "PSK export").
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PskId {
    /// The exporting Send Group's epoch.
    pub epoch: u64,
    /// The exporting Send Group's id.
    pub group_id: [u8; 32],
}

impl PskId {
    /// Encoded length in bytes.
    pub const LEN: usize = 40;

    /// The 40-byte wire form.
    pub fn to_bytes(&self) -> [u8; 40] {
        let mut out = [0u8; 40];
        out[..8].copy_from_slice(&self.epoch.to_be_bytes());
        out[8..].copy_from_slice(&self.group_id);
        out
    }

    /// Parses exactly 40 bytes.
    pub fn from_bytes(b: &[u8]) -> Result<Self, EngineError> {
        if b.len() != Self::LEN {
            return Err(EngineError::Malformed(format!(
                "psk_id must be {} bytes, got {}",
                Self::LEN,
                b.len()
            )));
        }
        let mut e = [0u8; 8];
        e.copy_from_slice(&b[..8]);
        let mut g = [0u8; 32];
        g.copy_from_slice(&b[8..]);
        Ok(PskId {
            epoch: u64::from_be_bytes(e),
            group_id: g,
        })
    }

    /// Parses a commit's dependency hint: psk_ids concatenated (PROTOCOL.md "Dependency hint").
    pub fn list_from_aad(aad: &[u8]) -> Result<Vec<PskId>, EngineError> {
        if !aad.len().is_multiple_of(Self::LEN) {
            return Err(EngineError::Rejected(format!(
                "commit authenticated_data of {} bytes is not a list of {}-byte psk_ids",
                aad.len(),
                Self::LEN
            )));
        }
        aad.chunks(Self::LEN).map(Self::from_bytes).collect()
    }

    /// Encodes psk_ids as a commit's dependency hint.
    pub fn list_to_aad(ids: &[PskId]) -> Vec<u8> {
        ids.iter().flat_map(|p| p.to_bytes()).collect()
    }
}

impl std::fmt::Display for PskId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", hex::encode(self.group_id), self.epoch)
    }
}

impl std::fmt::Debug for PskId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A psk_id names a key, it is not secret.
        write!(f, "PskId({self})")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn psk_id_is_big_endian_epoch_then_group_id() {
        let p = PskId {
            epoch: 0x0102_0304_0506_0708,
            group_id: [0xaa; 32],
        };
        let b = p.to_bytes();
        assert_eq!(&b[..8], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(&b[8..], &[0xaa; 32]);
        assert_eq!(PskId::from_bytes(&b).unwrap(), p);
        assert!(PskId::from_bytes(&b[..39]).is_err());
    }

    #[test]
    fn aad_is_concatenated_psk_ids() {
        let a = PskId {
            epoch: 1,
            group_id: [1; 32],
        };
        let b = PskId {
            epoch: 7,
            group_id: [2; 32],
        };
        let aad = PskId::list_to_aad(&[a, b]);
        assert_eq!(aad.len(), 80);
        assert_eq!(PskId::list_from_aad(&aad).unwrap(), vec![a, b]);
        assert!(PskId::list_from_aad(&[]).unwrap().is_empty());
        assert!(PskId::list_from_aad(&aad[..41]).is_err());
    }

    #[test]
    fn send_group_id_is_sha256_of_label_dgroup_and_owner() {
        let d = DGroupId([7; 16]);
        let mut h = Sha256::new();
        h.update(b"dmls send groupalice".as_slice().get(..15).unwrap());
        h.update([7u8; 16]);
        h.update(b"alice");
        let want: [u8; 32] = h.finalize().into();
        assert_eq!(send_group_id(&d, "alice"), want);
        assert_ne!(send_group_id(&d, "alice"), send_group_id(&d, "bob"));
        assert_ne!(
            send_group_id(&d, "alice"),
            send_group_id(&DGroupId([8; 16]), "alice")
        );
    }

    #[test]
    fn dgroup_id_hex_round_trips() {
        let d = DGroupId([0xab; 16]);
        assert_eq!(DGroupId::from_hex(&d.to_hex()).unwrap(), d);
        assert!(DGroupId::from_hex("abcd").is_err());
        assert!(DGroupId::from_hex("zz").is_err());
    }
}
