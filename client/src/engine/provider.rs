//! The openmls provider: RustCrypto for cryptography, a ChaCha20 stream for randomness
//! (seedable for simulations), and openmls_sqlite_storage's tables over the caller's
//! connection, read and written through [`DmlsStorage`] with cached statements.

use std::sync::Mutex;

use openmls_rust_crypto::RustCrypto;
use openmls_sqlite_storage::SqliteStorageProvider;
use openmls_traits::OpenMlsProvider;
use openmls_traits::random::OpenMlsRand;
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

use super::EngineError;
use super::storage::{DmlsStorage, StateCodec};

/// openmls's randomness: a ChaCha20 stream, seeded from the OS or by a simulation.
pub(crate) struct DmlsRand(Mutex<ChaCha20Rng>);

impl DmlsRand {
    pub(crate) fn from_os() -> Result<Self, EngineError> {
        let mut seed = [0u8; 32];
        rand::rng().fill_bytes(&mut seed);
        Ok(Self::from_seed(seed))
    }

    pub(crate) fn from_seed(seed: [u8; 32]) -> Self {
        DmlsRand(Mutex::new(ChaCha20Rng::from_seed(seed)))
    }

    /// Random bytes for our own needs (ids, nonces).
    pub(crate) fn bytes<const N: usize>(&self) -> Result<[u8; N], EngineError> {
        self.random_array()
            .map_err(|e| EngineError::Internal(format!("randomness: {e}")))
    }
}

/// Error of [`DmlsRand`]: only a poisoned lock.
#[derive(Debug, thiserror::Error)]
#[error("random number generator lock poisoned")]
pub(crate) struct RandError;

impl OpenMlsRand for DmlsRand {
    type Error = RandError;

    fn random_array<const N: usize>(&self) -> Result<[u8; N], Self::Error> {
        let mut out = [0u8; N];
        self.0.lock().map_err(|_| RandError)?.fill_bytes(&mut out);
        Ok(out)
    }

    fn random_vec(&self, len: usize) -> Result<Vec<u8>, Self::Error> {
        let mut out = vec![0u8; len];
        self.0.lock().map_err(|_| RandError)?.fill_bytes(&mut out);
        Ok(out)
    }
}

/// The openmls storage over our connection: openmls_sqlite_storage's tables and encoding,
/// with cached statements.
pub(crate) type Storage<'a> = DmlsStorage<'a>;

/// The provider handed to openmls for one operation.
pub(crate) struct Provider<'a> {
    pub(crate) crypto: &'a RustCrypto,
    pub(crate) rand: &'a DmlsRand,
    pub(crate) storage: Storage<'a>,
}

impl<'a> Provider<'a> {
    pub(crate) fn new(
        conn: &'a rusqlite::Connection,
        crypto: &'a RustCrypto,
        rand: &'a DmlsRand,
    ) -> Self {
        Provider {
            crypto,
            rand,
            storage: DmlsStorage::caching_psks(conn),
        }
    }
}

impl<'a> OpenMlsProvider for Provider<'a> {
    type CryptoProvider = RustCrypto;
    type RandProvider = DmlsRand;
    type StorageProvider = Storage<'a>;

    fn storage(&self) -> &Self::StorageProvider {
        &self.storage
    }

    fn crypto(&self) -> &Self::CryptoProvider {
        self.crypto
    }

    fn rand(&self) -> &Self::RandProvider {
        self.rand
    }
}

/// Runs openmls_sqlite_storage's migrations on `conn`.
pub(crate) fn migrate(conn: &mut rusqlite::Connection) -> Result<(), EngineError> {
    SqliteStorageProvider::<StateCodec, &mut rusqlite::Connection>::new(conn)
        .run_migrations()
        .map_err(|e| EngineError::Migration(e.to_string()))
}
