//! openmls's storage over our connection, with cached statements.
//!
//! [`DmlsStorage`] reads and writes exactly the tables of openmls_sqlite_storage (created by
//! its migrations, see `provider::migrate`), with the same keys, values and `provider_version`,
//! so a database written by one is read by the other. The only difference: every statement
//! goes through the connection's statement cache instead of being parsed again on each call.
//! openmls reads and writes a few dozen rows for every message it processes (63 PSK look-ups
//! alone per commit), and parsing those statements took a large share of the engine's time.
//!
//! Keys and values are encoded with [`StateCodec`] and stored as BLOBs, as
//! openmls_sqlite_storage does with the codec it is given. A value that does not decode is an
//! error, never a panic.

use std::cell::RefCell;
use std::collections::HashMap;

use openmls_sqlite_storage::Codec;
use openmls_traits::storage::{StorageProvider, traits};
use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSqlOutput, Type, Value, ValueRef};
use rusqlite::{Connection, OptionalExtension, ToSql, params};
use serde::Serialize;
use zeroize::Zeroizing;

/// Codec of openmls's state in openmls_sqlite_storage: MessagePack (rmp-serde), a compact
/// binary format that, unlike JSON, does not spell every key byte as a decimal number. It is
/// self-describing, which openmls's serde types need (one of them is an untagged enum).
/// Loading and storing group state dominated the engine's cost with JSON.
#[derive(Default)]
pub(crate) struct StateCodec;

impl Codec for StateCodec {
    type Error = CodecError;

    fn to_vec<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, Self::Error> {
        // openmls's byte strings serialize as sequences of u8; store them as MessagePack
        // `bin` (one copy) instead of one integer per byte. rmp-serde reads `bin` back into
        // any sequence of u8.
        let mut out = Vec::new();
        let mut ser = rmp_serde::Serializer::new(&mut out)
            .with_bytes(rmp_serde::config::BytesMode::ForceIterables);
        value
            .serialize(&mut ser)
            .map_err(|e| CodecError(e.to_string()))?;
        Ok(out)
    }

    fn from_slice<T: serde::de::DeserializeOwned>(slice: &[u8]) -> Result<T, Self::Error> {
        rmp_serde::from_slice(slice).map_err(|e| CodecError(e.to_string()))
    }
}

/// An encoding or decoding error of [`StateCodec`].
#[derive(Debug, thiserror::Error)]
#[error("openmls state codec: {0}")]
pub(crate) struct CodecError(String);

/// Name of the storage codec, recorded in `dmls_meta` so that a database written with
/// another codec is refused with a clear error instead of failing to decode later.
pub(crate) const STATE_CODEC_NAME: &[u8] = b"msgpack-bin";

/// The `provider_version` openmls_sqlite_storage stores in (and filters on in) every row.
/// It is private there; it equals the version of the storage trait we implement, so a change
/// of that version makes openmls's bounds fail to compile here instead of reading other rows.
const VERSION: u16 = 1;

/// A key or value encoded with [`StateCodec`], bound as a BLOB.
struct Encoded<'v, T>(&'v T);

impl<T: Serialize> ToSql for Encoded<'_, T> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        let bytes = StateCodec::to_vec(self.0)
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        Ok(ToSqlOutput::Owned(Value::Blob(bytes)))
    }
}

/// A value decoded with [`StateCodec`] from a BLOB column.
struct Decoded<T>(T);

impl<T: serde::de::DeserializeOwned> FromSql for Decoded<T> {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        StateCodec::from_slice(value.as_blob()?)
            .map(Decoded)
            .map_err(|e| FromSqlError::Other(Box::new(e)))
    }
}

/// Decodes column `idx` of `row`.
fn column<T: serde::de::DeserializeOwned>(
    row: &rusqlite::Row<'_>,
    idx: usize,
) -> rusqlite::Result<T> {
    row.get::<_, Decoded<T>>(idx).map(|d| d.0)
}

/// The statements of a table holding one value per key.
struct KeyedTable {
    /// Reads the value: parameters key, version.
    select: &'static str,
    /// Writes (replacing) the value: parameters key, value, version.
    insert: &'static str,
    /// Deletes the value: parameters key, version.
    delete: &'static str,
}

/// PSK bundles by PSK id.
const PSKS: KeyedTable = KeyedTable {
    select: "SELECT psk_bundle FROM openmls_psks WHERE psk_id = ?1 AND provider_version = ?2",
    insert: "INSERT OR REPLACE INTO openmls_psks (psk_id, psk_bundle, provider_version) \
             VALUES (?1, ?2, ?3)",
    delete: "DELETE FROM openmls_psks WHERE psk_id = ?1 AND provider_version = ?2",
};

/// HPKE key pairs by public key.
const ENCRYPTION_KEYS: KeyedTable = KeyedTable {
    select: "SELECT key_pair FROM openmls_encryption_keys \
             WHERE public_key = ?1 AND provider_version = ?2",
    insert: "INSERT OR REPLACE INTO openmls_encryption_keys (public_key, key_pair, provider_version) \
             VALUES (?1, ?2, ?3)",
    delete: "DELETE FROM openmls_encryption_keys WHERE public_key = ?1 AND provider_version = ?2",
};

/// Signature key pairs by public key.
const SIGNATURE_KEYS: KeyedTable = KeyedTable {
    select: "SELECT signature_key FROM openmls_signature_keys \
             WHERE public_key = ?1 AND provider_version = ?2",
    insert: "INSERT OR REPLACE INTO openmls_signature_keys \
             (public_key, signature_key, provider_version) VALUES (?1, ?2, ?3)",
    delete: "DELETE FROM openmls_signature_keys WHERE public_key = ?1 AND provider_version = ?2",
};

/// Key packages by hash reference.
const KEY_PACKAGES: KeyedTable = KeyedTable {
    select: "SELECT key_package FROM openmls_key_packages \
             WHERE key_package_ref = ?1 AND provider_version = ?2",
    insert: "INSERT OR REPLACE INTO openmls_key_packages \
             (key_package_ref, key_package, provider_version) VALUES (?1, ?2, ?3)",
    delete: "DELETE FROM openmls_key_packages WHERE key_package_ref = ?1 AND provider_version = ?2",
};

/// Reads one group value: parameters group id, data type, version.
const GROUP_DATA_SELECT: &str = "SELECT group_data FROM openmls_group_data \
     WHERE group_id = ?1 AND data_type = ?2 AND provider_version = ?3";
/// Writes (replacing) one group value: parameters group id, data type, value, version.
const GROUP_DATA_INSERT: &str = "INSERT OR REPLACE INTO openmls_group_data \
     (group_id, data_type, group_data, provider_version) VALUES (?1, ?2, ?3, ?4)";
/// Deletes one group value: parameters group id, data type, version.
const GROUP_DATA_DELETE: &str = "DELETE FROM openmls_group_data \
     WHERE group_id = ?1 AND data_type = ?2 AND provider_version = ?3";

/// The `data_type` values of `openmls_group_data`, as openmls_sqlite_storage names them.
mod data_type {
    /// `MlsGroupJoinConfig`.
    pub(super) const JOIN_GROUP_CONFIG: &str = "join_group_config";
    /// `TreeSync`.
    pub(super) const TREE: &str = "tree";
    /// `InterimTranscriptHash`.
    pub(super) const INTERIM_TRANSCRIPT_HASH: &str = "interim_transcript_hash";
    /// `GroupContext`.
    pub(super) const CONTEXT: &str = "context";
    /// `ConfirmationTag`.
    pub(super) const CONFIRMATION_TAG: &str = "confirmation_tag";
    /// `GroupState`.
    pub(super) const GROUP_STATE: &str = "group_state";
    /// `MessageSecrets`.
    pub(super) const MESSAGE_SECRETS: &str = "message_secrets";
    /// `ResumptionPskStore`.
    pub(super) const RESUMPTION_PSK_STORE: &str = "resumption_psk_store";
    /// Own `LeafNodeIndex`.
    pub(super) const OWN_LEAF_INDEX: &str = "own_leaf_index";
    /// `GroupEpochSecrets`.
    pub(super) const GROUP_EPOCH_SECRETS: &str = "group_epoch_secrets";
}

/// Reads the HPKE key pairs of one epoch and leaf: parameters group id, epoch, leaf, version.
const EPOCH_KEYS_SELECT: &str = "SELECT key_pairs FROM openmls_epoch_keys_pairs \
     WHERE group_id = ?1 AND epoch_id = ?2 AND leaf_index = ?3 AND provider_version = ?4";
/// Writes (replacing) them: parameters group id, epoch, leaf, key pairs, version.
const EPOCH_KEYS_INSERT: &str = "INSERT OR REPLACE INTO openmls_epoch_keys_pairs \
     (group_id, epoch_id, leaf_index, key_pairs, provider_version) VALUES (?1, ?2, ?3, ?4, ?5)";
/// Deletes them: parameters group id, epoch, leaf, version.
const EPOCH_KEYS_DELETE: &str = "DELETE FROM openmls_epoch_keys_pairs \
     WHERE group_id = ?1 AND epoch_id = ?2 AND leaf_index = ?3 AND provider_version = ?4";

/// Queues a proposal, keeping an existing one with the same reference (same reference, same
/// content): parameters group id, reference, proposal, version.
const PROPOSAL_INSERT: &str = "INSERT OR IGNORE INTO openmls_proposals \
     (group_id, proposal_ref, proposal, provider_version) VALUES (?1, ?2, ?3, ?4)";
/// Reads a group's queued proposals: parameters group id, version. No `ORDER BY`, like
/// openmls_sqlite_storage, so that the query plan and thus the order of rows are the same.
const PROPOSALS_SELECT: &str = "SELECT proposal_ref, proposal FROM openmls_proposals \
     WHERE group_id = ?1 AND provider_version = ?2";
/// Reads the references of a group's queued proposals: parameters group id, version.
const PROPOSAL_REFS_SELECT: &str = "SELECT proposal_ref FROM openmls_proposals \
     WHERE group_id = ?1 AND provider_version = ?2";
/// Removes one queued proposal: parameters group id, reference, version.
const PROPOSAL_DELETE: &str = "DELETE FROM openmls_proposals \
     WHERE group_id = ?1 AND proposal_ref = ?2 AND provider_version = ?3";
/// Clears a group's proposal queue: parameters group id, version.
const PROPOSALS_CLEAR: &str =
    "DELETE FROM openmls_proposals WHERE group_id = ?1 AND provider_version = ?2";

/// Appends an own leaf node: parameters group id, leaf node, version.
const LEAF_NODE_INSERT: &str = "INSERT OR REPLACE INTO openmls_own_leaf_nodes \
     (group_id, leaf_node, provider_version) VALUES (?1, ?2, ?3)";
/// Reads a group's own leaf nodes: parameters group id, version. No `ORDER BY`, like
/// openmls_sqlite_storage (the rows come in insertion order).
const LEAF_NODES_SELECT: &str = "SELECT leaf_node FROM openmls_own_leaf_nodes \
     WHERE group_id = ?1 AND provider_version = ?2";
/// Deletes a group's own leaf nodes: parameters group id, version.
const LEAF_NODES_DELETE: &str =
    "DELETE FROM openmls_own_leaf_nodes WHERE group_id = ?1 AND provider_version = ?2";

/// openmls's storage: openmls_sqlite_storage's tables and encoding, with cached statements.
pub(crate) struct DmlsStorage<'a> {
    /// The connection; its statement cache holds our statements.
    conn: &'a Connection,
    /// With [`DmlsStorage::caching_psks`]: PSK bundles read through this storage, by encoded
    /// PSK id. Every commit of a round imports the same PSKs, so within one engine operation
    /// (one storage per operation) each is read from the database once. Writes and deletes
    /// of a PSK through this storage drop its entry; [`DmlsStorage::forget_cached`] drops all
    /// of them when a savepoint is rolled back. Zeroed when dropped.
    psks: Option<RefCell<PskCache>>,
}

/// Encoded PSK bundles by encoded PSK id (see `DmlsStorage::psks`).
type PskCache = HashMap<Vec<u8>, Zeroizing<Vec<u8>>>;

impl<'a> DmlsStorage<'a> {
    /// The storage over `conn`, whose openmls tables exist (see `provider::migrate`),
    /// reading every value from the database (the engine uses [`DmlsStorage::caching_psks`]).
    #[cfg(test)]
    pub(crate) fn new(conn: &'a Connection) -> Self {
        DmlsStorage { conn, psks: None }
    }

    /// Like [`DmlsStorage::new`], keeping the PSKs it reads in memory. Only for a storage
    /// that is the only writer of PSKs while it lives, and whose owner calls
    /// [`DmlsStorage::forget_cached`] after every rollback (the engine: one per operation).
    pub(crate) fn caching_psks(conn: &'a Connection) -> Self {
        DmlsStorage {
            conn,
            psks: Some(RefCell::new(HashMap::new())),
        }
    }

    /// Forgets everything read so far: the database may have been rolled back under it.
    pub(crate) fn forget_cached(&self) {
        if let Some(c) = &self.psks {
            c.borrow_mut().clear();
        }
    }

    /// Drops the cached PSK of `key`, if any.
    fn forget_psk(&self, key: &[u8]) {
        if let Some(c) = &self.psks {
            c.borrow_mut().remove(key);
        }
    }

    /// The encoded PSK id, the key of [`DmlsStorage::psks`] and of `openmls_psks`.
    fn psk_key<K: Serialize>(psk_id: &K) -> rusqlite::Result<Vec<u8>> {
        StateCodec::to_vec(psk_id).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
    }

    /// Runs a cached statement that returns no rows.
    fn exec(&self, sql: &str, params: impl rusqlite::Params) -> rusqlite::Result<()> {
        self.conn.prepare_cached(sql)?.execute(params).map(|_| ())
    }

    /// Reads the value of `key` in `table`, `None` if there is none.
    fn keyed<K: Serialize, T: serde::de::DeserializeOwned>(
        &self,
        table: &KeyedTable,
        key: &K,
    ) -> rusqlite::Result<Option<T>> {
        self.conn
            .prepare_cached(table.select)?
            .query_row(params![Encoded(key), VERSION], |r| column(r, 0))
            .optional()
    }

    /// Writes the value of `key` in `table`, replacing any.
    fn write_keyed<K: Serialize, T: Serialize>(
        &self,
        table: &KeyedTable,
        key: &K,
        value: &T,
    ) -> rusqlite::Result<()> {
        self.exec(table.insert, params![Encoded(key), Encoded(value), VERSION])
    }

    /// Deletes the value of `key` in `table`, if any.
    fn delete_keyed<K: Serialize>(&self, table: &KeyedTable, key: &K) -> rusqlite::Result<()> {
        self.exec(table.delete, params![Encoded(key), VERSION])
    }

    /// Reads the group value of type `kind`, `None` if there is none.
    fn group_data<G: Serialize, T: serde::de::DeserializeOwned>(
        &self,
        group_id: &G,
        kind: &str,
    ) -> rusqlite::Result<Option<T>> {
        self.conn
            .prepare_cached(GROUP_DATA_SELECT)?
            .query_row(params![Encoded(group_id), kind, VERSION], |r| column(r, 0))
            .optional()
    }

    /// Writes the group value of type `kind`, replacing any.
    fn write_group_data<G: Serialize, T: Serialize>(
        &self,
        group_id: &G,
        kind: &str,
        value: &T,
    ) -> rusqlite::Result<()> {
        self.exec(
            GROUP_DATA_INSERT,
            params![Encoded(group_id), kind, Encoded(value), VERSION],
        )
    }

    /// Deletes the group value of type `kind`, if any.
    fn delete_group_data<G: Serialize>(&self, group_id: &G, kind: &str) -> rusqlite::Result<()> {
        self.exec(GROUP_DATA_DELETE, params![Encoded(group_id), kind, VERSION])
    }

    /// Reads the rows of a query whose parameters are a group id and the version.
    fn group_rows<G: Serialize, T>(
        &self,
        sql: &str,
        group_id: &G,
        f: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<Vec<T>> {
        self.conn
            .prepare_cached(sql)?
            .query_map(params![Encoded(group_id), VERSION], f)?
            .collect()
    }
}

impl StorageProvider<VERSION> for DmlsStorage<'_> {
    type Error = rusqlite::Error;

    fn write_mls_join_config<
        GroupId: traits::GroupId<VERSION>,
        MlsGroupJoinConfig: traits::MlsGroupJoinConfig<VERSION>,
    >(
        &self,
        group_id: &GroupId,
        config: &MlsGroupJoinConfig,
    ) -> Result<(), Self::Error> {
        self.write_group_data(group_id, data_type::JOIN_GROUP_CONFIG, config)
    }

    fn append_own_leaf_node<
        GroupId: traits::GroupId<VERSION>,
        LeafNode: traits::LeafNode<VERSION>,
    >(
        &self,
        group_id: &GroupId,
        leaf_node: &LeafNode,
    ) -> Result<(), Self::Error> {
        self.exec(
            LEAF_NODE_INSERT,
            params![Encoded(group_id), Encoded(leaf_node), VERSION],
        )
    }

    fn queue_proposal<
        GroupId: traits::GroupId<VERSION>,
        ProposalRef: traits::ProposalRef<VERSION>,
        QueuedProposal: traits::QueuedProposal<VERSION>,
    >(
        &self,
        group_id: &GroupId,
        proposal_ref: &ProposalRef,
        proposal: &QueuedProposal,
    ) -> Result<(), Self::Error> {
        self.exec(
            PROPOSAL_INSERT,
            params![
                Encoded(group_id),
                Encoded(proposal_ref),
                Encoded(proposal),
                VERSION
            ],
        )
    }

    fn write_tree<GroupId: traits::GroupId<VERSION>, TreeSync: traits::TreeSync<VERSION>>(
        &self,
        group_id: &GroupId,
        tree: &TreeSync,
    ) -> Result<(), Self::Error> {
        self.write_group_data(group_id, data_type::TREE, tree)
    }

    fn write_interim_transcript_hash<
        GroupId: traits::GroupId<VERSION>,
        InterimTranscriptHash: traits::InterimTranscriptHash<VERSION>,
    >(
        &self,
        group_id: &GroupId,
        interim_transcript_hash: &InterimTranscriptHash,
    ) -> Result<(), Self::Error> {
        self.write_group_data(
            group_id,
            data_type::INTERIM_TRANSCRIPT_HASH,
            interim_transcript_hash,
        )
    }

    fn write_context<
        GroupId: traits::GroupId<VERSION>,
        GroupContext: traits::GroupContext<VERSION>,
    >(
        &self,
        group_id: &GroupId,
        group_context: &GroupContext,
    ) -> Result<(), Self::Error> {
        self.write_group_data(group_id, data_type::CONTEXT, group_context)
    }

    fn write_confirmation_tag<
        GroupId: traits::GroupId<VERSION>,
        ConfirmationTag: traits::ConfirmationTag<VERSION>,
    >(
        &self,
        group_id: &GroupId,
        confirmation_tag: &ConfirmationTag,
    ) -> Result<(), Self::Error> {
        self.write_group_data(group_id, data_type::CONFIRMATION_TAG, confirmation_tag)
    }

    fn write_group_state<
        GroupState: traits::GroupState<VERSION>,
        GroupId: traits::GroupId<VERSION>,
    >(
        &self,
        group_id: &GroupId,
        group_state: &GroupState,
    ) -> Result<(), Self::Error> {
        self.write_group_data(group_id, data_type::GROUP_STATE, group_state)
    }

    fn write_message_secrets<
        GroupId: traits::GroupId<VERSION>,
        MessageSecrets: traits::MessageSecrets<VERSION>,
    >(
        &self,
        group_id: &GroupId,
        message_secrets: &MessageSecrets,
    ) -> Result<(), Self::Error> {
        self.write_group_data(group_id, data_type::MESSAGE_SECRETS, message_secrets)
    }

    fn write_resumption_psk_store<
        GroupId: traits::GroupId<VERSION>,
        ResumptionPskStore: traits::ResumptionPskStore<VERSION>,
    >(
        &self,
        group_id: &GroupId,
        resumption_psk_store: &ResumptionPskStore,
    ) -> Result<(), Self::Error> {
        self.write_group_data(
            group_id,
            data_type::RESUMPTION_PSK_STORE,
            resumption_psk_store,
        )
    }

    fn write_own_leaf_index<
        GroupId: traits::GroupId<VERSION>,
        LeafNodeIndex: traits::LeafNodeIndex<VERSION>,
    >(
        &self,
        group_id: &GroupId,
        own_leaf_index: &LeafNodeIndex,
    ) -> Result<(), Self::Error> {
        self.write_group_data(group_id, data_type::OWN_LEAF_INDEX, own_leaf_index)
    }

    fn write_group_epoch_secrets<
        GroupId: traits::GroupId<VERSION>,
        GroupEpochSecrets: traits::GroupEpochSecrets<VERSION>,
    >(
        &self,
        group_id: &GroupId,
        group_epoch_secrets: &GroupEpochSecrets,
    ) -> Result<(), Self::Error> {
        self.write_group_data(
            group_id,
            data_type::GROUP_EPOCH_SECRETS,
            group_epoch_secrets,
        )
    }

    fn write_signature_key_pair<
        SignaturePublicKey: traits::SignaturePublicKey<VERSION>,
        SignatureKeyPair: traits::SignatureKeyPair<VERSION>,
    >(
        &self,
        public_key: &SignaturePublicKey,
        signature_key_pair: &SignatureKeyPair,
    ) -> Result<(), Self::Error> {
        self.write_keyed(&SIGNATURE_KEYS, public_key, signature_key_pair)
    }

    fn write_encryption_key_pair<
        EncryptionKey: traits::EncryptionKey<VERSION>,
        HpkeKeyPair: traits::HpkeKeyPair<VERSION>,
    >(
        &self,
        public_key: &EncryptionKey,
        key_pair: &HpkeKeyPair,
    ) -> Result<(), Self::Error> {
        self.write_keyed(&ENCRYPTION_KEYS, public_key, key_pair)
    }

    fn write_encryption_epoch_key_pairs<
        GroupId: traits::GroupId<VERSION>,
        EpochKey: traits::EpochKey<VERSION>,
        HpkeKeyPair: traits::HpkeKeyPair<VERSION>,
    >(
        &self,
        group_id: &GroupId,
        epoch: &EpochKey,
        leaf_index: u32,
        key_pairs: &[HpkeKeyPair],
    ) -> Result<(), Self::Error> {
        self.exec(
            EPOCH_KEYS_INSERT,
            params![
                Encoded(group_id),
                Encoded(epoch),
                leaf_index,
                Encoded(&key_pairs),
                VERSION
            ],
        )
    }

    fn write_key_package<
        HashReference: traits::HashReference<VERSION>,
        KeyPackage: traits::KeyPackage<VERSION>,
    >(
        &self,
        hash_ref: &HashReference,
        key_package: &KeyPackage,
    ) -> Result<(), Self::Error> {
        self.write_keyed(&KEY_PACKAGES, hash_ref, key_package)
    }

    fn write_psk<PskId: traits::PskId<VERSION>, PskBundle: traits::PskBundle<VERSION>>(
        &self,
        psk_id: &PskId,
        psk: &PskBundle,
    ) -> Result<(), Self::Error> {
        self.forget_psk(&Self::psk_key(psk_id)?);
        self.write_keyed(&PSKS, psk_id, psk)
    }

    fn mls_group_join_config<
        GroupId: traits::GroupId<VERSION>,
        MlsGroupJoinConfig: traits::MlsGroupJoinConfig<VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<MlsGroupJoinConfig>, Self::Error> {
        self.group_data(group_id, data_type::JOIN_GROUP_CONFIG)
    }

    fn own_leaf_nodes<GroupId: traits::GroupId<VERSION>, LeafNode: traits::LeafNode<VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<Vec<LeafNode>, Self::Error> {
        self.group_rows(LEAF_NODES_SELECT, group_id, |r| column(r, 0))
    }

    fn queued_proposal_refs<
        GroupId: traits::GroupId<VERSION>,
        ProposalRef: traits::ProposalRef<VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Vec<ProposalRef>, Self::Error> {
        self.group_rows(PROPOSAL_REFS_SELECT, group_id, |r| column(r, 0))
    }

    fn queued_proposals<
        GroupId: traits::GroupId<VERSION>,
        ProposalRef: traits::ProposalRef<VERSION>,
        QueuedProposal: traits::QueuedProposal<VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Vec<(ProposalRef, QueuedProposal)>, Self::Error> {
        self.group_rows(PROPOSALS_SELECT, group_id, |r| {
            Ok((column(r, 0)?, column(r, 1)?))
        })
    }

    fn tree<GroupId: traits::GroupId<VERSION>, TreeSync: traits::TreeSync<VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<TreeSync>, Self::Error> {
        self.group_data(group_id, data_type::TREE)
    }

    fn group_context<
        GroupId: traits::GroupId<VERSION>,
        GroupContext: traits::GroupContext<VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<GroupContext>, Self::Error> {
        self.group_data(group_id, data_type::CONTEXT)
    }

    fn interim_transcript_hash<
        GroupId: traits::GroupId<VERSION>,
        InterimTranscriptHash: traits::InterimTranscriptHash<VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<InterimTranscriptHash>, Self::Error> {
        self.group_data(group_id, data_type::INTERIM_TRANSCRIPT_HASH)
    }

    fn confirmation_tag<
        GroupId: traits::GroupId<VERSION>,
        ConfirmationTag: traits::ConfirmationTag<VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<ConfirmationTag>, Self::Error> {
        self.group_data(group_id, data_type::CONFIRMATION_TAG)
    }

    fn group_state<GroupState: traits::GroupState<VERSION>, GroupId: traits::GroupId<VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<GroupState>, Self::Error> {
        self.group_data(group_id, data_type::GROUP_STATE)
    }

    fn message_secrets<
        GroupId: traits::GroupId<VERSION>,
        MessageSecrets: traits::MessageSecrets<VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<MessageSecrets>, Self::Error> {
        self.group_data(group_id, data_type::MESSAGE_SECRETS)
    }

    fn resumption_psk_store<
        GroupId: traits::GroupId<VERSION>,
        ResumptionPskStore: traits::ResumptionPskStore<VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<ResumptionPskStore>, Self::Error> {
        self.group_data(group_id, data_type::RESUMPTION_PSK_STORE)
    }

    fn own_leaf_index<
        GroupId: traits::GroupId<VERSION>,
        LeafNodeIndex: traits::LeafNodeIndex<VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<LeafNodeIndex>, Self::Error> {
        self.group_data(group_id, data_type::OWN_LEAF_INDEX)
    }

    fn group_epoch_secrets<
        GroupId: traits::GroupId<VERSION>,
        GroupEpochSecrets: traits::GroupEpochSecrets<VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<GroupEpochSecrets>, Self::Error> {
        self.group_data(group_id, data_type::GROUP_EPOCH_SECRETS)
    }

    fn signature_key_pair<
        SignaturePublicKey: traits::SignaturePublicKey<VERSION>,
        SignatureKeyPair: traits::SignatureKeyPair<VERSION>,
    >(
        &self,
        public_key: &SignaturePublicKey,
    ) -> Result<Option<SignatureKeyPair>, Self::Error> {
        self.keyed(&SIGNATURE_KEYS, public_key)
    }

    fn encryption_key_pair<
        HpkeKeyPair: traits::HpkeKeyPair<VERSION>,
        EncryptionKey: traits::EncryptionKey<VERSION>,
    >(
        &self,
        public_key: &EncryptionKey,
    ) -> Result<Option<HpkeKeyPair>, Self::Error> {
        self.keyed(&ENCRYPTION_KEYS, public_key)
    }

    fn encryption_epoch_key_pairs<
        GroupId: traits::GroupId<VERSION>,
        EpochKey: traits::EpochKey<VERSION>,
        HpkeKeyPair: traits::HpkeKeyPair<VERSION>,
    >(
        &self,
        group_id: &GroupId,
        epoch: &EpochKey,
        leaf_index: u32,
    ) -> Result<Vec<HpkeKeyPair>, Self::Error> {
        // No row reads as no key pairs, as in openmls_sqlite_storage.
        Ok(self
            .conn
            .prepare_cached(EPOCH_KEYS_SELECT)?
            .query_row(
                params![Encoded(group_id), Encoded(epoch), leaf_index, VERSION],
                |r| column(r, 0),
            )
            .optional()?
            .unwrap_or_default())
    }

    fn key_package<
        KeyPackageRef: traits::HashReference<VERSION>,
        KeyPackage: traits::KeyPackage<VERSION>,
    >(
        &self,
        hash_ref: &KeyPackageRef,
    ) -> Result<Option<KeyPackage>, Self::Error> {
        self.keyed(&KEY_PACKAGES, hash_ref)
    }

    fn psk<PskBundle: traits::PskBundle<VERSION>, PskId: traits::PskId<VERSION>>(
        &self,
        psk_id: &PskId,
    ) -> Result<Option<PskBundle>, Self::Error> {
        let Some(cache) = &self.psks else {
            return self.keyed(&PSKS, psk_id);
        };
        let key = Self::psk_key(psk_id)?;
        let decode = |bytes: &[u8]| {
            StateCodec::from_slice(bytes)
                .map_err(|e| rusqlite::Error::FromSqlConversionFailure(0, Type::Blob, Box::new(e)))
        };
        if let Some(bytes) = cache.borrow().get(&key) {
            return decode(bytes).map(Some);
        }
        let bytes: Option<Vec<u8>> = self
            .conn
            .prepare_cached(PSKS.select)?
            .query_row(params![key, VERSION], |r| r.get(0))
            .optional()?;
        let Some(bytes) = bytes.map(Zeroizing::new) else {
            return Ok(None);
        };
        let bundle = decode(&bytes)?;
        cache.borrow_mut().insert(key, bytes);
        Ok(Some(bundle))
    }

    fn remove_proposal<
        GroupId: traits::GroupId<VERSION>,
        ProposalRef: traits::ProposalRef<VERSION>,
    >(
        &self,
        group_id: &GroupId,
        proposal_ref: &ProposalRef,
    ) -> Result<(), Self::Error> {
        self.exec(
            PROPOSAL_DELETE,
            params![Encoded(group_id), Encoded(proposal_ref), VERSION],
        )
    }

    fn delete_own_leaf_nodes<GroupId: traits::GroupId<VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        self.exec(LEAF_NODES_DELETE, params![Encoded(group_id), VERSION])
    }

    fn delete_group_config<GroupId: traits::GroupId<VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        self.delete_group_data(group_id, data_type::JOIN_GROUP_CONFIG)
    }

    fn delete_tree<GroupId: traits::GroupId<VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        self.delete_group_data(group_id, data_type::TREE)
    }

    fn delete_confirmation_tag<GroupId: traits::GroupId<VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        self.delete_group_data(group_id, data_type::CONFIRMATION_TAG)
    }

    fn delete_group_state<GroupId: traits::GroupId<VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        self.delete_group_data(group_id, data_type::GROUP_STATE)
    }

    fn delete_context<GroupId: traits::GroupId<VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        self.delete_group_data(group_id, data_type::CONTEXT)
    }

    fn delete_interim_transcript_hash<GroupId: traits::GroupId<VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        self.delete_group_data(group_id, data_type::INTERIM_TRANSCRIPT_HASH)
    }

    fn delete_message_secrets<GroupId: traits::GroupId<VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        self.delete_group_data(group_id, data_type::MESSAGE_SECRETS)
    }

    fn delete_all_resumption_psk_secrets<GroupId: traits::GroupId<VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        self.delete_group_data(group_id, data_type::RESUMPTION_PSK_STORE)
    }

    fn delete_own_leaf_index<GroupId: traits::GroupId<VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        self.delete_group_data(group_id, data_type::OWN_LEAF_INDEX)
    }

    fn delete_group_epoch_secrets<GroupId: traits::GroupId<VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        self.delete_group_data(group_id, data_type::GROUP_EPOCH_SECRETS)
    }

    fn clear_proposal_queue<
        GroupId: traits::GroupId<VERSION>,
        ProposalRef: traits::ProposalRef<VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        self.exec(PROPOSALS_CLEAR, params![Encoded(group_id), VERSION])
    }

    fn delete_signature_key_pair<SignaturePublicKey: traits::SignaturePublicKey<VERSION>>(
        &self,
        public_key: &SignaturePublicKey,
    ) -> Result<(), Self::Error> {
        self.delete_keyed(&SIGNATURE_KEYS, public_key)
    }

    fn delete_encryption_key_pair<EncryptionKey: traits::EncryptionKey<VERSION>>(
        &self,
        public_key: &EncryptionKey,
    ) -> Result<(), Self::Error> {
        self.delete_keyed(&ENCRYPTION_KEYS, public_key)
    }

    fn delete_encryption_epoch_key_pairs<
        GroupId: traits::GroupId<VERSION>,
        EpochKey: traits::EpochKey<VERSION>,
    >(
        &self,
        group_id: &GroupId,
        epoch: &EpochKey,
        leaf_index: u32,
    ) -> Result<(), Self::Error> {
        self.exec(
            EPOCH_KEYS_DELETE,
            params![Encoded(group_id), Encoded(epoch), leaf_index, VERSION],
        )
    }

    fn delete_key_package<KeyPackageRef: traits::HashReference<VERSION>>(
        &self,
        hash_ref: &KeyPackageRef,
    ) -> Result<(), Self::Error> {
        self.delete_keyed(&KEY_PACKAGES, hash_ref)
    }

    fn delete_psk<PskKey: traits::PskId<VERSION>>(
        &self,
        psk_id: &PskKey,
    ) -> Result<(), Self::Error> {
        self.forget_psk(&Self::psk_key(psk_id)?);
        self.delete_keyed(&PSKS, psk_id)
    }
}

#[cfg(test)]
mod tests {
    //! [`DmlsStorage`] and openmls_sqlite_storage read each other's rows, and the same
    //! operations leave the same rows in the tables.
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use openmls_sqlite_storage::{Codec as _, SqliteStorageProvider};
    use openmls_traits::storage::{Entity, Key, StorageProvider, traits};
    use rusqlite::Connection;
    use serde::{Deserialize, Serialize};

    use super::{DmlsStorage, StateCodec, VERSION};

    /// openmls_sqlite_storage with our codec.
    type Plain<'a> = SqliteStorageProvider<StateCodec, &'a Connection>;

    /// A key of any kind (and a proposal reference, which is also a value).
    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
    struct K(Vec<u8>);

    /// A value of any kind.
    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
    struct V(String, u32);

    impl Key<VERSION> for K {}
    impl Entity<VERSION> for K {}
    impl traits::GroupId<VERSION> for K {}
    impl traits::SignaturePublicKey<VERSION> for K {}
    impl traits::HashReference<VERSION> for K {}
    impl traits::PskId<VERSION> for K {}
    impl traits::EncryptionKey<VERSION> for K {}
    impl traits::EpochKey<VERSION> for K {}
    impl traits::ProposalRef<VERSION> for K {}

    impl Entity<VERSION> for V {}
    impl traits::QueuedProposal<VERSION> for V {}
    impl traits::TreeSync<VERSION> for V {}
    impl traits::GroupContext<VERSION> for V {}
    impl traits::InterimTranscriptHash<VERSION> for V {}
    impl traits::ConfirmationTag<VERSION> for V {}
    impl traits::SignatureKeyPair<VERSION> for V {}
    impl traits::PskBundle<VERSION> for V {}
    impl traits::HpkeKeyPair<VERSION> for V {}
    impl traits::GroupState<VERSION> for V {}
    impl traits::GroupEpochSecrets<VERSION> for V {}
    impl traits::LeafNodeIndex<VERSION> for V {}
    impl traits::MessageSecrets<VERSION> for V {}
    impl traits::ResumptionPskStore<VERSION> for V {}
    impl traits::KeyPackage<VERSION> for V {}
    impl traits::MlsGroupJoinConfig<VERSION> for V {}
    impl traits::LeafNode<VERSION> for V {}

    fn k(b: &[u8]) -> K {
        K(b.to_vec())
    }

    fn v(s: &str, n: u32) -> V {
        V(s.to_string(), n)
    }

    /// An in-memory database with openmls_sqlite_storage's tables.
    fn db() -> Connection {
        let mut conn = Connection::open_in_memory().unwrap();
        super::super::provider::migrate(&mut conn).unwrap();
        conn
    }

    /// Every group-data method: `w` writes and deletes, `r` reads.
    fn group_data<W, R>(w: &W, r: &R)
    where
        W: StorageProvider<VERSION, Error = rusqlite::Error>,
        R: StorageProvider<VERSION, Error = rusqlite::Error>,
    {
        let (g, other) = (k(b"group"), k(b"other group"));
        w.write_mls_join_config(&g, &v("config", 1)).unwrap();
        w.write_tree(&g, &v("tree", 2)).unwrap();
        w.write_interim_transcript_hash(&g, &v("ith", 3)).unwrap();
        w.write_context(&g, &v("context", 4)).unwrap();
        w.write_confirmation_tag(&g, &v("tag", 5)).unwrap();
        w.write_group_state(&g, &v("state", 6)).unwrap();
        w.write_message_secrets(&g, &v("secrets", 7)).unwrap();
        w.write_resumption_psk_store(&g, &v("resumption", 8))
            .unwrap();
        w.write_own_leaf_index(&g, &v("index", 9)).unwrap();
        w.write_group_epoch_secrets(&g, &v("epoch", 10)).unwrap();
        w.write_tree(&other, &v("other tree", 11)).unwrap();
        // Writing again replaces.
        w.write_tree(&g, &v("tree'", 12)).unwrap();

        assert_eq!(r.mls_group_join_config(&g).unwrap(), Some(v("config", 1)));
        assert_eq!(r.tree(&g).unwrap(), Some(v("tree'", 12)));
        assert_eq!(r.tree(&other).unwrap(), Some(v("other tree", 11)));
        assert_eq!(r.interim_transcript_hash(&g).unwrap(), Some(v("ith", 3)));
        assert_eq!(r.group_context(&g).unwrap(), Some(v("context", 4)));
        assert_eq!(r.confirmation_tag(&g).unwrap(), Some(v("tag", 5)));
        assert_eq!(r.group_state(&g).unwrap(), Some(v("state", 6)));
        assert_eq!(r.message_secrets(&g).unwrap(), Some(v("secrets", 7)));
        assert_eq!(
            r.resumption_psk_store(&g).unwrap(),
            Some(v("resumption", 8))
        );
        assert_eq!(r.own_leaf_index(&g).unwrap(), Some(v("index", 9)));
        assert_eq!(r.group_epoch_secrets(&g).unwrap(), Some(v("epoch", 10)));
        assert_eq!(r.group_context::<K, V>(&other).unwrap(), None);

        w.delete_group_config(&g).unwrap();
        w.delete_tree(&g).unwrap();
        w.delete_interim_transcript_hash(&g).unwrap();
        w.delete_context(&g).unwrap();
        w.delete_confirmation_tag(&g).unwrap();
        w.delete_group_state(&g).unwrap();
        w.delete_message_secrets(&g).unwrap();
        w.delete_all_resumption_psk_secrets(&g).unwrap();
        w.delete_own_leaf_index(&g).unwrap();
        w.delete_group_epoch_secrets(&g).unwrap();
        // Deleting what is not there is no error.
        w.delete_tree(&g).unwrap();

        assert_eq!(r.mls_group_join_config::<K, V>(&g).unwrap(), None);
        assert_eq!(r.tree::<K, V>(&g).unwrap(), None);
        assert_eq!(r.interim_transcript_hash::<K, V>(&g).unwrap(), None);
        assert_eq!(r.group_context::<K, V>(&g).unwrap(), None);
        assert_eq!(r.confirmation_tag::<K, V>(&g).unwrap(), None);
        assert_eq!(r.group_state::<V, K>(&g).unwrap(), None);
        assert_eq!(r.message_secrets::<K, V>(&g).unwrap(), None);
        assert_eq!(r.resumption_psk_store::<K, V>(&g).unwrap(), None);
        assert_eq!(r.own_leaf_index::<K, V>(&g).unwrap(), None);
        assert_eq!(r.group_epoch_secrets::<K, V>(&g).unwrap(), None);
        assert_eq!(r.tree(&other).unwrap(), Some(v("other tree", 11)));
        w.delete_tree(&other).unwrap();
    }

    /// Key pairs, key packages and PSKs: `w` writes and deletes, `r` reads.
    fn keyed<W, R>(w: &W, r: &R)
    where
        W: StorageProvider<VERSION, Error = rusqlite::Error>,
        R: StorageProvider<VERSION, Error = rusqlite::Error>,
    {
        let (a, b) = (k(b"a"), k(b"b"));
        w.write_signature_key_pair(&a, &v("sig", 1)).unwrap();
        w.write_encryption_key_pair(&a, &v("hpke", 2)).unwrap();
        w.write_key_package(&a, &v("kp", 3)).unwrap();
        w.write_psk(&a, &v("psk", 4)).unwrap();
        w.write_psk(&a, &v("psk'", 5)).unwrap();
        w.write_psk(&b, &v("psk b", 6)).unwrap();

        assert_eq!(r.signature_key_pair(&a).unwrap(), Some(v("sig", 1)));
        assert_eq!(r.encryption_key_pair(&a).unwrap(), Some(v("hpke", 2)));
        assert_eq!(r.key_package(&a).unwrap(), Some(v("kp", 3)));
        assert_eq!(r.psk(&a).unwrap(), Some(v("psk'", 5)));
        assert_eq!(r.psk(&b).unwrap(), Some(v("psk b", 6)));
        assert_eq!(r.signature_key_pair::<K, V>(&b).unwrap(), None);
        assert_eq!(r.encryption_key_pair::<V, K>(&b).unwrap(), None);
        assert_eq!(r.key_package::<K, V>(&b).unwrap(), None);
        assert_eq!(r.psk::<V, K>(&k(b"c")).unwrap(), None);

        w.delete_signature_key_pair(&a).unwrap();
        w.delete_encryption_key_pair(&a).unwrap();
        w.delete_key_package(&a).unwrap();
        w.delete_psk(&a).unwrap();
        w.delete_psk(&a).unwrap();

        assert_eq!(r.signature_key_pair::<K, V>(&a).unwrap(), None);
        assert_eq!(r.encryption_key_pair::<V, K>(&a).unwrap(), None);
        assert_eq!(r.key_package::<K, V>(&a).unwrap(), None);
        assert_eq!(r.psk::<V, K>(&a).unwrap(), None);
        assert_eq!(r.psk(&b).unwrap(), Some(v("psk b", 6)));
        w.delete_psk(&b).unwrap();
    }

    /// Epoch key pairs: `w` writes and deletes, `r` reads.
    fn epoch_keys<W, R>(w: &W, r: &R)
    where
        W: StorageProvider<VERSION, Error = rusqlite::Error>,
        R: StorageProvider<VERSION, Error = rusqlite::Error>,
    {
        let (g, e1, e2) = (k(b"group"), k(b"epoch 1"), k(b"epoch 2"));
        let pairs = vec![v("one", 1), v("two", 2)];
        w.write_encryption_epoch_key_pairs(&g, &e1, 3, &pairs)
            .unwrap();
        w.write_encryption_epoch_key_pairs(&g, &e2, 3, &[v("three", 3)])
            .unwrap();
        w.write_encryption_epoch_key_pairs::<K, K, V>(&g, &e1, 4, &[])
            .unwrap();

        assert_eq!(
            r.encryption_epoch_key_pairs::<K, K, V>(&g, &e1, 3).unwrap(),
            pairs
        );
        assert_eq!(
            r.encryption_epoch_key_pairs::<K, K, V>(&g, &e2, 3).unwrap(),
            vec![v("three", 3)]
        );
        assert_eq!(
            r.encryption_epoch_key_pairs::<K, K, V>(&g, &e1, 4).unwrap(),
            vec![]
        );
        assert_eq!(
            r.encryption_epoch_key_pairs::<K, K, V>(&g, &e1, 5).unwrap(),
            vec![]
        );

        w.delete_encryption_epoch_key_pairs(&g, &e1, 3).unwrap();
        assert_eq!(
            r.encryption_epoch_key_pairs::<K, K, V>(&g, &e1, 3).unwrap(),
            vec![]
        );
        assert_eq!(
            r.encryption_epoch_key_pairs::<K, K, V>(&g, &e2, 3).unwrap(),
            vec![v("three", 3)]
        );
        w.delete_encryption_epoch_key_pairs(&g, &e2, 3).unwrap();
        w.delete_encryption_epoch_key_pairs(&g, &e1, 4).unwrap();
    }

    /// Proposals and own leaf nodes: `w` writes and deletes, `r` reads, and both read the
    /// same lists in the same order.
    fn lists<W, R>(w: &W, r: &R)
    where
        W: StorageProvider<VERSION, Error = rusqlite::Error>,
        R: StorageProvider<VERSION, Error = rusqlite::Error>,
    {
        let (g, other) = (k(b"group"), k(b"other"));
        // References not in sorted order, to see that both read them in the same order.
        let queued = [(k(b"\x09r"), 1), (k(b"\x01r"), 2), (k(b"\x05long ref"), 3)];
        for (pr, n) in &queued {
            w.queue_proposal(&g, pr, &v("proposal", *n)).unwrap();
        }
        // Queuing a reference again keeps the first proposal.
        w.queue_proposal(&g, &queued[0].0, &v("again", 9)).unwrap();
        w.queue_proposal(&other, &k(b"x"), &v("other", 7)).unwrap();

        let read: Vec<(K, V)> = r.queued_proposals(&g).unwrap();
        let written: Vec<(K, V)> = w.queued_proposals(&g).unwrap();
        assert_eq!(read, written);
        let mut sorted = read.clone();
        sorted.sort_by_key(|(_, p)| p.1);
        let expected: Vec<(K, V)> = queued
            .iter()
            .map(|(pr, n)| (pr.clone(), v("proposal", *n)))
            .collect();
        assert_eq!(sorted, expected);
        let refs: Vec<K> = r.queued_proposal_refs(&g).unwrap();
        assert_eq!(
            refs,
            read.iter().map(|(pr, _)| pr.clone()).collect::<Vec<_>>()
        );
        assert_eq!(refs, w.queued_proposal_refs::<K, K>(&g).unwrap());

        w.remove_proposal(&g, &queued[1].0).unwrap();
        let left: Vec<(K, V)> = r.queued_proposals(&g).unwrap();
        assert_eq!(left.len(), 2);
        assert!(left.iter().all(|(pr, _)| *pr != queued[1].0));
        w.clear_proposal_queue::<K, K>(&g).unwrap();
        assert_eq!(r.queued_proposals::<K, K, V>(&g).unwrap(), vec![]);
        assert_eq!(r.queued_proposal_refs::<K, K>(&g).unwrap(), vec![]);
        assert_eq!(
            r.queued_proposals(&other).unwrap(),
            vec![(k(b"x"), v("other", 7))]
        );
        w.clear_proposal_queue::<K, K>(&other).unwrap();

        let leaves = [v("leaf", 3), v("leaf", 1), v("leaf", 2), v("leaf", 1)];
        for leaf in &leaves {
            w.append_own_leaf_node(&g, leaf).unwrap();
        }
        w.append_own_leaf_node(&other, &v("other leaf", 0)).unwrap();
        assert_eq!(r.own_leaf_nodes::<K, V>(&g).unwrap(), leaves.to_vec());
        w.delete_own_leaf_nodes(&g).unwrap();
        assert_eq!(r.own_leaf_nodes::<K, V>(&g).unwrap(), vec![]);
        assert_eq!(
            r.own_leaf_nodes::<K, V>(&other).unwrap(),
            vec![v("other leaf", 0)]
        );
        w.delete_own_leaf_nodes(&other).unwrap();
    }

    /// All of the above, `w` writing and `r` reading.
    fn all<W, R>(w: &W, r: &R)
    where
        W: StorageProvider<VERSION, Error = rusqlite::Error>,
        R: StorageProvider<VERSION, Error = rusqlite::Error>,
    {
        group_data(w, r);
        keyed(w, r);
        epoch_keys(w, r);
        lists(w, r);
    }

    #[test]
    fn ours_reads_what_openmls_sqlite_storage_writes() {
        let conn = db();
        all(&Plain::new(&conn), &DmlsStorage::new(&conn));
    }

    #[test]
    fn openmls_sqlite_storage_reads_what_ours_writes() {
        let conn = db();
        all(&DmlsStorage::new(&conn), &Plain::new(&conn));
    }

    #[test]
    fn ours_reads_what_ours_writes() {
        let conn = db();
        all(&DmlsStorage::new(&conn), &DmlsStorage::new(&conn));
    }

    /// Writes (without deleting) a bit of everything.
    fn fill<S: StorageProvider<VERSION, Error = rusqlite::Error>>(s: &S) {
        let g = k(b"group");
        s.write_mls_join_config(&g, &v("config", 1)).unwrap();
        s.write_tree(&g, &v("tree", 2)).unwrap();
        s.write_tree(&g, &v("tree", 3)).unwrap();
        s.write_interim_transcript_hash(&g, &v("ith", 3)).unwrap();
        s.write_context(&g, &v("context", 4)).unwrap();
        s.write_confirmation_tag(&g, &v("tag", 5)).unwrap();
        s.write_group_state(&g, &v("state", 6)).unwrap();
        s.write_message_secrets(&g, &v("secrets", 7)).unwrap();
        s.write_resumption_psk_store(&g, &v("resumption", 8))
            .unwrap();
        s.write_own_leaf_index(&g, &v("index", 9)).unwrap();
        s.write_group_epoch_secrets(&g, &v("epoch", 10)).unwrap();
        s.delete_context(&g).unwrap();
        s.write_signature_key_pair(&k(b"s"), &v("sig", 1)).unwrap();
        s.write_encryption_key_pair(&k(b"e"), &v("hpke", 2))
            .unwrap();
        s.write_encryption_key_pair(&k(b"e2"), &v("hpke", 3))
            .unwrap();
        s.delete_encryption_key_pair(&k(b"e2")).unwrap();
        s.write_key_package(&k(b"kp"), &v("kp", 3)).unwrap();
        s.write_psk(&k(b"p"), &v("psk", 4)).unwrap();
        s.write_encryption_epoch_key_pairs(&g, &k(b"ep"), 2, &[v("x", 1), v("y", 2)])
            .unwrap();
        s.queue_proposal(&g, &k(b"\x07r"), &v("prop", 1)).unwrap();
        s.queue_proposal(&g, &k(b"\x02r"), &v("prop", 2)).unwrap();
        s.queue_proposal(&g, &k(b"\x07r"), &v("prop", 3)).unwrap();
        s.append_own_leaf_node(&g, &v("leaf", 1)).unwrap();
        s.append_own_leaf_node(&g, &v("leaf", 2)).unwrap();
    }

    /// Every row of openmls_sqlite_storage's tables, with its rowid.
    fn dump(conn: &Connection) -> Vec<(String, Vec<rusqlite::types::Value>)> {
        let tables: Vec<String> = conn
            .prepare(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'openmls_%' \
                 AND name != 'openmls_sqlite_storage_migrations' ORDER BY name",
            )
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(tables.len() >= 8, "{tables:?}");
        let mut rows = Vec::new();
        for table in tables {
            let mut stmt = conn
                .prepare(&format!("SELECT rowid, * FROM {table} ORDER BY rowid"))
                .unwrap();
            let n = stmt.column_count();
            let mut q = stmt.query([]).unwrap();
            while let Some(row) = q.next().unwrap() {
                let values = (0..n).map(|i| row.get(i).unwrap()).collect();
                rows.push((table.clone(), values));
            }
        }
        rows
    }

    #[test]
    fn same_operations_leave_the_same_rows() {
        let (plain, ours) = (db(), db());
        fill(&Plain::new(&plain));
        fill(&DmlsStorage::new(&ours));
        let rows = dump(&ours);
        assert!(rows.len() > 15, "{rows:?}");
        assert_eq!(dump(&plain), rows);
    }

    #[test]
    fn undecodable_rows_are_errors_like_openmls_sqlite_storage() {
        let conn = db();
        let bad = vec![0xc1u8]; // never used by MessagePack
        conn.execute(
            "INSERT INTO openmls_psks (psk_id, psk_bundle, provider_version) VALUES (?1, ?2, 1)",
            rusqlite::params![StateCodec::to_vec(&k(b"p")).unwrap(), bad],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO openmls_group_data (group_id, data_type, group_data, provider_version) \
             VALUES (?1, 'tree', 42, 1)",
            [StateCodec::to_vec(&k(b"g")).unwrap()],
        )
        .unwrap();
        let (ours, plain) = (DmlsStorage::new(&conn), Plain::new(&conn));
        let a = ours.psk::<V, K>(&k(b"p")).unwrap_err();
        let b = plain.psk::<V, K>(&k(b"p")).unwrap_err();
        assert!(
            matches!(a, rusqlite::Error::FromSqlConversionFailure(..)),
            "{a:?}"
        );
        assert!(
            matches!(b, rusqlite::Error::FromSqlConversionFailure(..)),
            "{b:?}"
        );
        let a = ours.tree::<K, V>(&k(b"g")).unwrap_err();
        let b = plain.tree::<K, V>(&k(b"g")).unwrap_err();
        assert!(matches!(a, rusqlite::Error::InvalidColumnType(..)), "{a:?}");
        assert!(matches!(b, rusqlite::Error::InvalidColumnType(..)), "{b:?}");
    }
    #[test]
    fn cached_psks_follow_writes_deletes_and_rollbacks() {
        let conn = db();
        let a = k(b"a");
        // Reads what openmls_sqlite_storage wrote.
        Plain::new(&conn).write_psk(&a, &v("plain", 0)).unwrap();
        let st = DmlsStorage::caching_psks(&conn);
        assert_eq!(st.psk(&a).unwrap(), Some(v("plain", 0)));
        st.write_psk(&a, &v("psk", 1)).unwrap();
        assert_eq!(st.psk(&a).unwrap(), Some(v("psk", 1)));
        // Read from the cache: the row is gone behind the storage's back.
        conn.execute("DELETE FROM openmls_psks", []).unwrap();
        assert_eq!(st.psk(&a).unwrap(), Some(v("psk", 1)));
        // A write through the storage replaces the cached value, a delete drops it.
        st.write_psk(&a, &v("psk'", 2)).unwrap();
        assert_eq!(st.psk(&a).unwrap(), Some(v("psk'", 2)));
        st.delete_psk(&a).unwrap();
        assert_eq!(st.psk::<V, K>(&a).unwrap(), None);
        // Rolled back under the cache: forgotten, read again.
        conn.execute_batch("SAVEPOINT t").unwrap();
        st.write_psk(&a, &v("gone", 3)).unwrap();
        assert_eq!(st.psk(&a).unwrap(), Some(v("gone", 3)));
        conn.execute_batch("ROLLBACK TO t; RELEASE t").unwrap();
        st.forget_cached();
        assert_eq!(st.psk::<V, K>(&a).unwrap(), None);
        // An undecodable row is an error, not a panic, and is not cached.
        conn.execute(
            "INSERT INTO openmls_psks (psk_id, psk_bundle, provider_version) VALUES (?1, x'c1', ?2)",
            rusqlite::params![StateCodec::to_vec(&a).unwrap(), VERSION],
        )
        .unwrap();
        assert!(st.psk::<V, K>(&a).is_err());
        assert!(st.psks.as_ref().is_some_and(|c| c.borrow().is_empty()));
    }
}
