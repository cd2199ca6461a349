//! Our identity and key packages (PROTOCOL.md "Terms", "DGroup configuration").

use ed25519_dalek::Signer as _;
use openmls::prelude::*;
use openmls_basic_credential::SignatureKeyPair;
use openmls_traits::signatures::{Signer, SignerError};
use tls_codec::Serialize as _;
use zeroize::Zeroize as _;

use super::ctx::{CIPHERSUITE, Ctx, capabilities};
use super::store::meta::{self, Key};
use super::{EngineError, LAST_RESORT_MAX_AGE_MS};

/// Checks a relay client id: 1 to 64 characters of `a-z 0-9 . _ -` (API.md "Conventions").
pub(crate) fn validate_client_id(id: &str) -> Result<(), EngineError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(EngineError::InvalidArgument(format!(
            "client id {id:?} must be 1 to 64 characters of a-z 0-9 . _ -"
        )))
    }
}

/// Our signature key for one engine operation: the stored key pair, with its Ed25519 signing
/// key expanded once. `SignatureKeyPair::sign` expands the key again for every signature (a
/// scalar multiplication as costly as the signature itself), and a DMLS Update signs about
/// twice per member (PROTOCOL.md "Leaf refresh"). No `Debug`: it holds the private key.
pub(crate) struct DmlsSigner {
    pair: SignatureKeyPair,
    ed25519: Option<ed25519_dalek::SigningKey>,
}

impl DmlsSigner {
    /// Wraps a key pair; a key that is not Ed25519, or whose private half does not match its
    /// public key, signs through `SignatureKeyPair` itself.
    pub(crate) fn new(pair: SignatureKeyPair) -> Self {
        let ed25519 = (pair.signature_scheme() == SignatureScheme::ED25519)
            .then(|| expand_ed25519(&pair))
            .flatten();
        DmlsSigner { pair, ed25519 }
    }

    /// The public key.
    pub(crate) fn public(&self) -> &[u8] {
        self.pair.public()
    }
}

/// The Ed25519 signing key of a key pair. openmls_basic_credential exposes the private key
/// only through the pair's TLS encoding (`opaque private<V>; opaque public<V>; scheme`).
fn expand_ed25519(pair: &SignatureKeyPair) -> Option<ed25519_dalek::SigningKey> {
    let mut encoded = pair.tls_serialize_detached().ok()?;
    let key = super::codec::Reader::new(&encoded, "SignatureKeyPair")
        .opaque("private")
        .ok()
        .and_then(|private| <&[u8; 32]>::try_from(private).ok())
        .map(ed25519_dalek::SigningKey::from_bytes);
    encoded.zeroize();
    key.filter(|k| k.verifying_key().as_bytes().as_slice() == pair.public())
}

impl Signer for DmlsSigner {
    fn sign(&self, payload: &[u8]) -> Result<Vec<u8>, SignerError> {
        match &self.ed25519 {
            Some(key) => Ok(key.sign(payload).to_bytes().to_vec()),
            None => self.pair.sign(payload),
        }
    }

    fn signature_scheme(&self) -> SignatureScheme {
        self.pair.signature_scheme()
    }
}

impl Ctx<'_> {
    /// Our client id.
    pub(crate) fn me(&self) -> Result<String, EngineError> {
        let v = meta::get(self.conn, Key::ClientId)?.ok_or(EngineError::NoIdentity)?;
        String::from_utf8(v)
            .map_err(|_| EngineError::Internal("stored client id is not UTF-8".into()))
    }

    /// Our signature key.
    pub(crate) fn signer(&self) -> Result<DmlsSigner, EngineError> {
        let public = meta::get(self.conn, Key::SignaturePublic)?.ok_or(EngineError::NoIdentity)?;
        SignatureKeyPair::read(
            &self.provider.storage,
            &public,
            CIPHERSUITE.signature_algorithm(),
        )
        .map(DmlsSigner::new)
        .ok_or_else(|| EngineError::Internal("signature key missing from storage".into()))
    }

    /// Our credential with key.
    pub(crate) fn credential(&self, signer: &DmlsSigner) -> Result<CredentialWithKey, EngineError> {
        Ok(CredentialWithKey {
            credential: BasicCredential::new(self.me()?.into_bytes()).into(),
            signature_key: signer.public().into(),
        })
    }

    pub(crate) fn create_identity(&mut self, client_id: &str) -> Result<(), EngineError> {
        validate_client_id(client_id)?;
        if let Some(existing) = meta::get(self.conn, Key::ClientId)? {
            return Err(EngineError::IdentityExists(
                String::from_utf8_lossy(&existing).into_owned(),
            ));
        }
        let keys = SignatureKeyPair::new(CIPHERSUITE.signature_algorithm())
            .map_err(|e| EngineError::mls("generating signature key", e))?;
        keys.store(&self.provider.storage)
            .map_err(|e| EngineError::mls("storing signature key", e))?;
        meta::set(self.conn, Key::ClientId, client_id.as_bytes())?;
        meta::set(self.conn, Key::SignaturePublic, keys.public())?;
        Ok(())
    }

    pub(crate) fn key_package(&mut self, last_resort: bool) -> Result<Vec<u8>, EngineError> {
        let signer = self.signer()?;
        let cred = self.credential(&signer)?;
        let mut b = KeyPackage::builder().leaf_node_capabilities(capabilities());
        if last_resort {
            b = b.mark_as_last_resort();
        }
        let bundle = b
            .build(CIPHERSUITE, &self.provider, &signer, cred)
            .map_err(|e| EngineError::mls("building key package", e))?;
        MlsMessageOut::from(bundle.key_package().clone())
            .tls_serialize_detached()
            .map_err(|e| EngineError::Internal(format!("encoding key package: {e}")))
    }

    /// Whether a new last-resort key package is due ([`crate::engine::Engine::needs_last_resort`]).
    pub(crate) fn needs_last_resort(&self, now_ms: u64) -> Result<bool, EngineError> {
        if meta::get(self.conn, Key::LastResortRef)?.is_none() {
            return Ok(true);
        }
        let uploaded = meta::get(self.conn, Key::LastResortUploadedMs)?
            .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
            .map(u64::from_be_bytes);
        Ok(uploaded.is_none_or(|t| now_ms.saturating_sub(t) >= LAST_RESORT_MAX_AGE_MS))
    }

    /// Records our last-resort key package `bytes` as the one the relay took at `now_ms`.
    pub(crate) fn last_resort_uploaded(
        &mut self,
        bytes: &[u8],
        now_ms: u64,
    ) -> Result<(), EngineError> {
        use tls_codec::Deserialize as _;
        let msg = MlsMessageIn::tls_deserialize_exact(bytes)
            .map_err(|e| EngineError::InvalidArgument(format!("not a key package: {e}")))?;
        let MlsMessageBodyIn::KeyPackage(kp) = msg.extract() else {
            return Err(EngineError::InvalidArgument("not a key package".into()));
        };
        let kp = kp
            .validate(self.provider.crypto, ProtocolVersion::Mls10)
            .map_err(|e| EngineError::InvalidArgument(format!("invalid key package: {e}")))?;
        if !kp.last_resort() {
            return Err(EngineError::InvalidArgument(
                "not a last-resort key package".into(),
            ));
        }
        let hash_ref = kp
            .hash_ref(self.provider.crypto)
            .map_err(|e| EngineError::mls("hashing key package", e))?;
        meta::set(self.conn, Key::LastResortRef, hash_ref.as_slice())?;
        meta::set(self.conn, Key::LastResortUploadedMs, &now_ms.to_be_bytes())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_expanded_ed25519_key_signs_exactly_like_the_key_pair() {
        let pair = SignatureKeyPair::new(SignatureScheme::ED25519).unwrap();
        let expected = pair.sign(b"payload").unwrap();
        let signer = DmlsSigner::new(pair);
        assert!(signer.ed25519.is_some(), "the Ed25519 key was not expanded");
        // Ed25519 signatures are deterministic: the same key gives the same bytes.
        assert_eq!(signer.sign(b"payload").unwrap(), expected);
        assert_eq!(signer.signature_scheme(), SignatureScheme::ED25519);
    }

    #[test]
    fn a_key_pair_whose_halves_do_not_match_signs_through_the_key_pair() {
        let a = SignatureKeyPair::new(SignatureScheme::ED25519).unwrap();
        let b = SignatureKeyPair::new(SignatureScheme::ED25519).unwrap();
        // a's private key with b's public key: the expansion must notice and not be used.
        let encoded = a.tls_serialize_detached().unwrap();
        let private = super::super::codec::Reader::new(&encoded, "test")
            .opaque("private")
            .unwrap()
            .to_vec();
        let mixed =
            SignatureKeyPair::from_raw(SignatureScheme::ED25519, private, b.to_public_vec());
        let expected = mixed.sign(b"payload").unwrap();
        let signer = DmlsSigner::new(mixed);
        assert!(signer.ed25519.is_none());
        assert_eq!(signer.sign(b"payload").unwrap(), expected);
    }
}
