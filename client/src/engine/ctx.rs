//! The per-operation context shared by the engine's modules: the connection, the caches of
//! one operation (groups, Send Group rows, deferred leaf refreshes, cursors) and the
//! savepoints that keep them equal to storage.

use openmls::prelude::*;
use openmls::schedule::PreSharedKeyId;
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};

use rusqlite::Connection;
use sha2::{Digest, Sha256};

use super::config::{DGroupConfig, DMLS_EXTENSION_TYPE};
use super::deferred::DeferredRefreshes;
use super::ids::{DGroupId, PskId};
use super::provider::{DmlsRand, Provider};
use super::store::send_groups::{self, SendGroupRow};
use super::store::waiting::{self, Trigger};
use super::store::{Savepoint, dgroups, members, psks};
use super::{Counters, EngineError, UpdatePolicy};

/// The ciphersuite of our own Send Groups (PROTOCOL.md "Ciphersuite and wire format").
pub(crate) const CIPHERSUITE: Ciphersuite =
    Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;
/// Past epochs whose secrets are kept (PROTOCOL.md "Receiving": at least 5).
pub(crate) const MAX_PAST_EPOCHS: usize = 5;
/// How far out of order application messages of one epoch may arrive.
const OUT_OF_ORDER_TOLERANCE: u32 = 1000;
/// How far ahead of the last one a generation may be.
const MAXIMUM_FORWARD_DISTANCE: u32 = 10_000;

/// MLS groups kept in memory between operations, so that a group is not decoded from
/// storage for every message. A cached group always equals what storage holds: a group is
/// taken out while an operation works on it and put back only when that operation
/// succeeded, and the whole cache is dropped whenever a savepoint is rolled back.
pub(crate) type GroupCache = HashMap<[u8; 32], MlsGroup>;

/// Most groups kept in [`GroupCache`]; when full it is emptied (a cheap, rare reload).
const GROUP_CACHE_MAX: usize = 512;

/// Everything one engine operation needs.
pub(crate) struct Ctx<'a> {
    pub(crate) conn: &'a Connection,
    pub(crate) provider: Provider<'a>,
    pub(crate) rand: &'a DmlsRand,
    pub(crate) counters: &'a mut Counters,
    pub(crate) policy: UpdatePolicy,
    pub(crate) triggers: Vec<Trigger>,
    pub(crate) groups: &'a mut GroupCache,
    /// PSKs imported by commits merged in this operation, whose older PSKs may now be
    /// deleted: see [`Ctx::prune_deferred`].
    pub(crate) prune_later: Vec<(DGroupId, PskId)>,
    /// Relay read cursors reached in this operation (Send Group id to `seq`), written once at
    /// its end by [`Ctx::flush_cursors`], in the same transaction as everything else.
    cursors: BTreeMap<[u8; 32], u64>,
    /// Per Send Group: whether a commit may wait for a leaf-refresh proposal in it
    /// ([`Trigger::Proposal`] is queued only then). Looked up once per group and operation;
    /// `true` may be stale (rows released since), `false` never is: storing such a wait sets it.
    proposal_waits: HashMap<[u8; 32], bool>,
    /// Send Group rows read in this operation: every write to `dmls_send_group` goes through
    /// [`Ctx::write_send_group`], which empties it, as does a savepoint rollback.
    send_groups: RefCell<HashMap<[u8; 32], SendGroupRow>>,
    /// Deferred leaf refreshes received in this operation, written to `dmls_waiting` at its
    /// end by [`Ctx::flush_deferred`] if still deferred then (most are dropped before).
    pub(crate) deferred: DeferredRefreshes,
    /// The shell's clock for this operation (`now_ms` of the public call), when it gave one:
    /// PSKs record when they were stored ([`Ctx::store_psk`]).
    pub(crate) now_ms: Option<u64>,
    /// A commit that removes members was merged (ours or another's) in this operation, so a
    /// removed owner's Send Group may now be closed ([`Ctx::close_removed_groups`]).
    pub(crate) removals_merged: bool,
    /// Send Groups in which our leaf is still the one of our last-resort key package and whose
    /// epoch changed in this operation: [`Ctx::flush_leaf_refreshes`] proposes a leaf refresh
    /// in each at its end.
    pub(crate) refresh_leaves: Vec<[u8; 32]>,
    /// DGroups whose name register is to be sent again in our Send Group at the end of this
    /// operation ([`Ctx::flush_name_resends`]).
    pub(crate) name_resends: Vec<super::ids::DGroupId>,
    /// DGroups whose config gained members in this operation: their held Welcomes are tried
    /// again ([`Ctx::retry_held_welcomes`]).
    pub(crate) config_grew: Vec<DGroupId>,
}

/// SHA-256 of message bytes, the duplicate-detection key.
pub(crate) fn message_hash(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// Join config for every Send Group (ours and others').
pub(crate) fn join_config() -> MlsGroupJoinConfig {
    MlsGroupJoinConfig::builder()
        .use_ratchet_tree_extension(true)
        .max_past_epochs(MAX_PAST_EPOCHS)
        .sender_ratchet_configuration(SenderRatchetConfiguration::new(
            OUT_OF_ORDER_TOLERANCE,
            MAXIMUM_FORWARD_DISTANCE,
        ))
        .wire_format_policy(PURE_CIPHERTEXT_WIRE_FORMAT_POLICY)
        .build()
}

/// Leaf capabilities (docs/PROTOCOL.md "Key packages"): the DGroup config extension, and the
/// last_resort extension, which RFC 9420 requires a leaf to list when its key package carries it.
pub(crate) fn capabilities() -> Capabilities {
    Capabilities::builder()
        .extensions(vec![
            ExtensionType::Unknown(DMLS_EXTENSION_TYPE),
            ExtensionType::LastResort,
        ])
        .build()
}

/// The client id in a BasicCredential.
pub(crate) fn credential_identity(c: &Credential) -> Result<String, EngineError> {
    let basic = BasicCredential::try_from(c.clone())
        .map_err(|e| EngineError::Rejected(format!("credential is not a BasicCredential: {e}")))?;
    String::from_utf8(basic.identity().to_vec())
        .map_err(|_| EngineError::Rejected("credential identity is not UTF-8".into()))
}

/// The psk_id bytes of an external PSK proposal (openmls keeps the accessor private, so
/// read its TLS encoding: psktype(1 = external), opaque psk_id<V>, opaque psk_nonce<V>).
pub(crate) fn external_psk_id(p: &PreSharedKeyProposal) -> Result<PskId, EngineError> {
    use tls_codec::Serialize as _;
    let bytes = p
        .tls_serialize_detached()
        .map_err(|e| EngineError::Internal(format!("cannot encode PSK proposal: {e}")))?;
    let mut r = super::codec::Reader::new(&bytes, "PreSharedKeyID");
    if r.u8("psktype")? != 1 {
        return Err(EngineError::Rejected(
            "commit imports a PSK that is not external".into(),
        ));
    }
    PskId::from_bytes(r.opaque("psk_id")?)
}

impl<'a> Ctx<'a> {
    /// A context for one engine operation.
    pub(crate) fn new(
        conn: &'a Connection,
        crypto: &'a openmls_rust_crypto::RustCrypto,
        rand: &'a DmlsRand,
        counters: &'a mut Counters,
        policy: UpdatePolicy,
        groups: &'a mut GroupCache,
    ) -> Ctx<'a> {
        Ctx {
            conn,
            provider: Provider::new(conn, crypto, rand),
            rand,
            counters,
            policy,
            triggers: Vec::new(),
            groups,
            prune_later: Vec::new(),
            cursors: BTreeMap::new(),
            proposal_waits: HashMap::new(),
            send_groups: RefCell::new(HashMap::new()),
            deferred: DeferredRefreshes::default(),
            now_ms: None,
            removals_merged: false,
            refresh_leaves: Vec::new(),
            name_resends: Vec::new(),
            config_grew: Vec::new(),
        }
    }

    /// Records that the relay cursor of Send Group `gid` reached `seq`; stored at the end
    /// of the operation ([`Ctx::flush_cursors`]), so a batch of inputs writes each cursor once.
    pub(crate) fn note_cursor(&mut self, gid: [u8; 32], seq: u64) {
        let c = self.cursors.entry(gid).or_insert(seq);
        *c = (*c).max(seq);
    }

    /// Writes the cursors noted in this operation.
    pub(crate) fn flush_cursors(&mut self) -> Result<(), EngineError> {
        for (gid, seq) in std::mem::take(&mut self.cursors) {
            self.write_send_group(|conn| send_groups::advance_cursor(conn, &gid, seq))?;
        }
        Ok(())
    }

    /// Whether a commit in Send Group `gid` may wait for one of its proposals (see
    /// [`Ctx::proposal_waits`]).
    pub(crate) fn may_wait_for_proposal(&mut self, gid: &[u8; 32]) -> Result<bool, EngineError> {
        if let Some(v) = self.proposal_waits.get(gid) {
            return Ok(*v);
        }
        let v = waiting::any_waits_for_proposal(self.conn, gid)?;
        self.proposal_waits.insert(*gid, v);
        Ok(v)
    }

    /// Notes that a commit in Send Group `gid` now waits for a proposal.
    pub(crate) fn set_proposal_wait(&mut self, gid: [u8; 32]) {
        self.proposal_waits.insert(gid, true);
    }

    /// Loads an MLS group from openmls storage (bypassing the cache).
    pub(crate) fn load_group(&self, gid: &[u8; 32]) -> Result<MlsGroup, EngineError> {
        MlsGroup::load(&self.provider.storage, &GroupId::from_slice(gid))
            .map_err(|e| EngineError::mls("loading group", e))?
            .ok_or_else(|| EngineError::Internal(format!("group {} missing", hex::encode(gid))))
    }

    /// Takes an MLS group out of the cache, or loads it. Hand it back with
    /// [`Ctx::keep_group`] once the work on it succeeded; a group that is not handed back
    /// is simply loaded again next time.
    pub(crate) fn take_group(&mut self, gid: &[u8; 32]) -> Result<MlsGroup, EngineError> {
        match self.groups.remove(gid) {
            Some(g) => Ok(g),
            None => self.load_group(gid),
        }
    }

    /// Puts a group back into the cache (see [`GroupCache`]).
    pub(crate) fn keep_group(&mut self, gid: [u8; 32], group: MlsGroup) {
        if self.groups.len() >= GROUP_CACHE_MAX {
            self.groups.clear();
        }
        self.groups.insert(gid, group);
    }

    /// Runs `f` with read access to a group (cached or loaded), for queries.
    pub(crate) fn with_group<T>(
        &self,
        gid: &[u8; 32],
        f: impl FnOnce(&MlsGroup) -> Result<T, EngineError>,
    ) -> Result<T, EngineError> {
        match self.groups.get(gid) {
            Some(g) => f(g),
            None => f(&self.load_group(gid)?),
        }
    }

    /// Runs `f` inside savepoint `sp`; on error rolls back (openmls's writes included),
    /// drops the group cache, which may hold groups changed inside the savepoint, and forgets
    /// the triggers and prunes queued inside it.
    pub(crate) fn savepoint<T>(
        &mut self,
        sp: Savepoint,
        f: impl FnOnce(&mut Self) -> Result<T, EngineError>,
    ) -> Result<T, EngineError> {
        let conn = self.conn;
        sp.begin(conn)?;
        let (triggers, prune_later) = (self.triggers.len(), self.prune_later.len());
        let deferred = self.deferred.mark();
        match f(self) {
            Ok(v) => {
                sp.release(conn)?;
                Ok(v)
            }
            Err(e) => {
                self.groups.clear();
                self.send_groups.get_mut().clear();
                self.provider.storage.forget_cached();
                // What the rolled-back work queued is void too.
                self.triggers.truncate(triggers);
                self.prune_later.truncate(prune_later);
                self.deferred.rollback_to(deferred);
                // If even the rollback fails the connection is unusable; report the first error.
                let _ = sp.rollback(conn);
                Err(e)
            }
        }
    }

    /// One Send Group row (read once per operation; see [`Ctx::write_send_group`]).
    pub(crate) fn send_group(&self, gid: &[u8; 32]) -> Result<Option<SendGroupRow>, EngineError> {
        if let Some(row) = self.send_groups.borrow().get(gid) {
            return Ok(Some(row.clone()));
        }
        let row = send_groups::get(self.conn, gid)?;
        if let Some(row) = &row {
            self.send_groups.borrow_mut().insert(*gid, row.clone());
        }
        Ok(row)
    }

    /// Runs `write` (a function of [`send_groups`] that writes), and forgets the rows read
    /// so far.
    pub(crate) fn write_send_group<T>(
        &self,
        write: impl FnOnce(&Connection) -> Result<T, EngineError>,
    ) -> Result<T, EngineError> {
        self.send_groups.borrow_mut().clear();
        write(self.conn)
    }

    /// All Send Group rows of a DGroup (config order is not kept; sorted by owner).
    pub(crate) fn send_groups_of(&self, d: &DGroupId) -> Result<Vec<SendGroupRow>, EngineError> {
        send_groups::of_dgroup(self.conn, d)
    }

    /// Our own Send Group row of a DGroup.
    pub(crate) fn own_send_group(&self, d: &DGroupId) -> Result<SendGroupRow, EngineError> {
        self.send_groups_of(d)?
            .into_iter()
            .find(|r| r.is_own)
            .ok_or_else(|| EngineError::UnknownDGroup(d.to_hex()))
    }

    /// The config we hold for a DGroup.
    pub(crate) fn config(
        &self,
        d: &DGroupId,
    ) -> Result<Option<(DGroupConfig, Vec<u8>, bool)>, EngineError> {
        match dgroups::config(self.conn, d)? {
            None => Ok(None),
            Some((bytes, removed)) => Ok(Some((DGroupConfig::decode(&bytes)?, bytes, removed))),
        }
    }

    /// Exports and stores the PSK of the group's current epoch (PROTOCOL.md "PSK export"):
    /// into our table and into openmls's PSK store as an external PSK.
    pub(crate) fn export_psk(
        &mut self,
        group: &MlsGroup,
        gid: &[u8; 32],
    ) -> Result<PskId, EngineError> {
        let psk_id = PskId {
            epoch: group.epoch().as_u64(),
            group_id: *gid,
        };
        let secret = group
            .export_secret(self.provider.crypto, "exporter-psk", &psk_id.to_bytes(), 32)
            .map_err(|e| EngineError::mls("exporting PSK", e))?;
        self.store_psk(psk_id, &secret)?;
        Ok(psk_id)
    }

    /// Stores a PSK (both stores) and queues its trigger.
    pub(crate) fn store_psk(&mut self, psk_id: PskId, secret: &[u8]) -> Result<(), EngineError> {
        PreSharedKeyId::external(psk_id.to_bytes().to_vec(), Vec::new())
            .store(&self.provider, secret)
            .map_err(|e| EngineError::mls("storing PSK", e))?;
        if psks::insert(self.conn, &psk_id, self.now_ms)? {
            self.triggers.push(Trigger::Psk(psk_id));
        }
        Ok(())
    }

    /// Records that `member` left the DGroup: pending removal from our Send Group, no more
    /// imports, and its Send Group is not processed beyond its current epoch (PROTOCOL.md "Removal").
    pub(crate) fn note_removed(&mut self, d: &DGroupId, member: &str) -> Result<bool, EngineError> {
        let me = self.me()?;
        if member == me {
            return Ok(false);
        }
        if !members::insert_removed(self.conn, d, member)? {
            return Ok(false);
        }
        self.config_mark_removed(d, member)?;
        self.resend_name_set_by(d, member)?;
        let gid = super::ids::send_group_id(d, member);
        if let Some(sg) = self.send_group(&gid)? {
            let stop = if sg.joined {
                self.with_group(&gid, |g| Ok(g.epoch().as_u64()))?
            } else {
                0
            };
            self.write_send_group(|conn| send_groups::set_stop_epoch(conn, &gid, stop))?;
            // Its commits and proposals beyond the stop epoch are kept ('stopped'), in case a
            // commit of another member imports a later epoch of its group. Never joined: what
            // waits for its Welcome stays; joining sets the stop epoch then (`Ctx::welcome`).
            // Either way, closing the group deletes what is kept (`Ctx::close_removed_groups`).
            if sg.joined {
                self.stop_waiting(&gid, stop)?;
            }
        }
        Ok(true)
    }
}
