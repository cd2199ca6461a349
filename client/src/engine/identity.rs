//! Our identity and key packages (PROTOCOL.md "Terms", "DGroup configuration").

use openmls::prelude::*;
use openmls_basic_credential::SignatureKeyPair;
use tls_codec::Serialize as _;

use super::EngineError;
use super::ctx::{CIPHERSUITE, Ctx, capabilities};
use super::state::{meta_get, meta_set};

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

impl Ctx<'_> {
    pub(crate) fn create_identity(&mut self, client_id: &str) -> Result<(), EngineError> {
        validate_client_id(client_id)?;
        if let Some(existing) = meta_get(self.conn, "client_id")? {
            return Err(EngineError::IdentityExists(
                String::from_utf8_lossy(&existing).into_owned(),
            ));
        }
        let keys = SignatureKeyPair::new(CIPHERSUITE.signature_algorithm())
            .map_err(|e| EngineError::mls("generating signature key", e))?;
        keys.store(&self.provider.storage)
            .map_err(|e| EngineError::mls("storing signature key", e))?;
        meta_set(self.conn, "client_id", client_id.as_bytes())?;
        meta_set(self.conn, "signature_public", keys.public())?;
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
}
