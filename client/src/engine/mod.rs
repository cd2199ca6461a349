//! The sans-I/O DMLS engine (PROTOCOL.md).
//!
//! The engine is a state machine over one SQLite database: inputs go in through
//! [`Engine::handle`] and the user commands ([`Engine::send`], [`Engine::update`],
//! [`Engine::remove`], [`Engine::create_dgroup`]); what has to be sent to the relay is
//! written to a durable outbox ([`Engine::outbox`]) in the same transaction as the state
//! change that produced it, and what a user should see comes back as [`Event`]s.
//! It does no network, file or clock access of its own: time comes in as `now_ms`
//! parameters (its clock-driven duties run when the shell calls [`Engine::handle_timeout`]
//! at the time [`Engine::poll_timeout`] names), randomness through the openmls provider,
//! storage through the [`rusqlite::Connection`] the caller opens.

mod acks;
mod add;
mod codec;
mod config;
mod contacts;
mod ctx;
mod deferred;
mod duties;
mod envelope;
mod error;
mod evict;
mod identity;
mod ids;
mod leave;
mod name;
mod provider;
mod prune;
mod queries;
mod receive;
mod send_group;
mod storage;
mod store;
mod verify;

pub use config::{AddPolicy, DGroupConfig, DMLS_EXTENSION_TYPE, PSK_LENGTH};
pub use contacts::{Contact, KeyChange, KeyMismatch};
pub use duties::DutyPolicy;
pub use envelope::{
    CONTROL_CONTENT_TYPE_PREFIX, DmlsEnvelope, ENVELOPE_VERSION, TEXT_PLAIN, is_control,
};
pub use error::EngineError;
pub use ids::{DGroupId, MessageId, PskId, send_group_id};
pub use leave::LEAVE_CONTENT_TYPE;
pub use name::{MAX_NAME_BYTES, NAME_CONTENT_TYPE};
pub use verify::{SeenKey, fingerprint, safety_number};

/// The default eviction threshold, PROTOCOL.md "Acknowledgement and key deletion": 30 days
/// in milliseconds (see [`Engine::evict_silent_members`]).
pub const DEFAULT_EVICTION_THRESHOLD_MS: u64 = 30 * 24 * 60 * 60 * 1000;

/// The default deadline of [`Engine::acknowledge_overdue`]: 7 days in milliseconds.
pub const DEFAULT_ACK_DEADLINE_MS: u64 = 7 * 24 * 60 * 60 * 1000;

/// A last-resort key package older than this (28 days, in milliseconds) is replaced
/// ([`Engine::needs_last_resort`]): key packages are valid for 12 weeks, and the relay keeps
/// handing out the last resort until it is replaced.
pub const LAST_RESORT_MAX_AGE_MS: u64 = 28 * 24 * 60 * 60 * 1000;

/// A message to be shown to the user: an application message of another member,
/// or one of our own (in [`Engine::history`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMessage {
    /// The DGroup the message belongs to.
    pub dgroup: DGroupId,
    /// Client id of the sender (the owner of the Send Group it came through).
    pub sender: String,
    /// The envelope's `sent_at_ms` (sender's clock, milliseconds since the Unix epoch).
    pub sent_at_ms: u64,
    /// The envelope's random message id.
    pub message_id: MessageId,
    /// MIME type of `body`.
    pub content_type: String,
    /// The message body.
    pub body: Vec<u8>,
    /// Epoch of the sender's Send Group the message was encrypted in.
    pub epoch: u64,
    /// Generation (secret-tree ratchet position) of the message within that epoch, when
    /// known: openmls 0.9 does not expose it for received messages, so it is `None` there
    /// and `Some` for our own messages. Order a sender's messages by `(epoch, sent_at_ms)`.
    pub generation: Option<u32>,
}

/// Something the user interface should show, produced by [`Engine::handle`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// We joined a DGroup (first Welcome of it accepted, or we created it).
    JoinedDGroup {
        /// The DGroup.
        dgroup: DGroupId,
        /// Its name from the config.
        name: String,
        /// Its members from the config, creator first.
        members: Vec<String>,
    },
    /// We joined the Send Group of `owner` in `dgroup` through its Welcome.
    JoinedSendGroup {
        /// The DGroup.
        dgroup: DGroupId,
        /// Owner of the Send Group.
        owner: String,
        /// Epoch we joined at.
        epoch: u64,
    },
    /// A commit of `owner`'s Send Group was merged; its epoch is now `epoch`.
    SendGroupAdvanced {
        /// The DGroup.
        dgroup: DGroupId,
        /// Owner of the Send Group.
        owner: String,
        /// New epoch.
        epoch: u64,
    },
    /// An application message of another member was decrypted.
    Message(ReceivedMessage),
    /// `member` was removed from the Send Group of `by` (and so from the DGroup).
    MemberRemoved {
        /// The DGroup.
        dgroup: DGroupId,
        /// The removed member.
        member: String,
        /// The owner whose commit removed it.
        by: String,
    },
    /// `member` was added to the DGroup by `by` (docs/PROTOCOL.md "Add"): it is in the config
    /// we hold now, and we add it to our own Send Group (a key-package claim, then a late-add
    /// commit; [`DGroupStatus::pending_adds`] until then).
    MemberAdded {
        /// The DGroup.
        dgroup: DGroupId,
        /// The new member.
        member: String,
        /// The member whose commit or Welcome brought it (us when we added it).
        by: String,
    },
    /// `member` announced that it left the DGroup (docs/PROTOCOL.md "Leave"): it counts as
    /// removed from then on, and our next commit removes it from our Send Group, as after a
    /// [`Event::MemberRemoved`].
    MemberLeft {
        /// The DGroup.
        dgroup: DGroupId,
        /// The member that left.
        member: String,
    },
    /// The DGroup's name changed to `name`, set by `by` (docs/PROTOCOL.md "Group name"): the
    /// value came through any member's Send Group, whoever set it.
    GroupRenamed {
        /// The DGroup.
        dgroup: DGroupId,
        /// Its new name.
        name: String,
        /// The member that set it.
        by: String,
    },
    /// We were removed from the DGroup by a commit of `by`.
    WeWereRemoved {
        /// The DGroup.
        dgroup: DGroupId,
        /// The owner whose commit removed us.
        by: String,
    },
    /// A key-package claim came back without packages for these members, so they
    /// are not in our Send Group yet and cannot read it. The engine remembers them:
    /// [`Engine::retry_missing_members`] claims for them again and adds those that got a key
    /// package in one commit of our Send Group (late add); this event comes again for those
    /// still missing.
    KeyPackagesMissing {
        /// The DGroup.
        dgroup: DGroupId,
        /// Client ids the relay had no key package for.
        client_ids: Vec<String>,
    },
    /// A key-package claim returned a key package for `client_id` that we cannot add it with
    /// (docs/PROTOCOL.md "Key packages"): not valid under RFC 9420, another identity or
    /// ciphersuite, or no support for the DGroup extension. The member counts as missing,
    /// as with [`Event::KeyPackagesMissing`], and is claimed for again.
    KeyPackageRejected {
        /// The DGroup.
        dgroup: DGroupId,
        /// The member whose key package it was.
        client_id: String,
        /// Why it was rejected.
        reason: String,
    },
    /// We removed `member` from our Send Group of `dgroup` (and so from the DGroup, as with
    /// [`Engine::remove`]) because it had not acknowledged an update stored by us at
    /// `behind_since_ms`, longer ago than the eviction threshold
    /// ([`Engine::evict_silent_members`]).
    MemberEvicted {
        /// The DGroup.
        dgroup: DGroupId,
        /// The evicted member.
        member: String,
        /// See [`SendGroupStatus::behind_since_ms`].
        behind_since_ms: u64,
    },
    /// A key package, Welcome or leaf carried another identity key for `change.client_id` than
    /// the one pinned for it (docs/PROTOCOL.md "Pinning"). A key package with it was not added
    /// to our Send Group and a Welcome signed with it was not joined (it is held): nothing is
    /// encrypted to the new key until the user trusts it ([`Engine::trust`]). A leaf with it in
    /// another member's Send Group makes the DGroup unsafe ([`DGroupStatus::key_mismatches`]).
    KeyChanged {
        /// The DGroup where it was seen, if any.
        dgroup: Option<DGroupId>,
        /// The change.
        change: KeyChange,
    },
    /// An input was rejected or ignored without changing state, but that is worth telling
    /// (e.g. a Welcome for a DGroup we were removed from). Errors are returned as
    /// [`EngineError`] instead.
    Ignored {
        /// Why it was ignored.
        reason: String,
    },
}

/// An input for [`Engine::handle`]: something the shell fetched from the relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// A message of a Send Group, as read from the relay.
    GroupMessage {
        /// Owner of the relay group (`{owner}` in the path).
        owner: String,
        /// Relay group id, lowercase hex (the Send Group id).
        group_id: String,
        /// Relay sequence number. When `Some`, the engine records it as the read cursor
        /// of that group in the same transaction as the state it produced.
        seq: Option<u64>,
        /// The `MLSMessage` bytes.
        data: Vec<u8>,
    },
    /// A Welcome from our inbox.
    Welcome {
        /// Inbox id. When `Some`, recorded as the welcome cursor in the same transaction.
        inbox_id: Option<u64>,
        /// Relay account that posted it.
        from: String,
        /// The `MLSMessage` bytes (wire format mls_welcome).
        data: Vec<u8>,
    },
    /// The relay's answer to an [`Effect::ClaimKeyPackages`] of outbox item `outbox_id`.
    /// The shell passes it instead of calling [`Engine::outbox_done`] for that item.
    ClaimedKeyPackages {
        /// The outbox item that asked for the claim.
        outbox_id: u64,
        /// `(client_id, MLSMessage-framed key package)` pairs.
        key_packages: Vec<(String, Vec<u8>)>,
        /// Client ids for which the relay had none.
        missing: Vec<String>,
    },
}

/// Something the shell must do against the relay, in outbox order.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Effect {
    /// `POST /v1/key-packages/claim`; answer with [`Input::ClaimedKeyPackages`].
    ClaimKeyPackages {
        /// The DGroup whose Send Group needs them.
        dgroup_id: DGroupId,
        /// Whom to claim for.
        client_ids: Vec<String>,
    },
    /// `PUT /v1/groups/{our id}/{group_id}` with this member list (create or replace).
    PutRelayGroup {
        /// Send Group id, lowercase hex.
        group_id: String,
        /// Members other than us.
        members: Vec<String>,
    },
    /// `POST /v1/welcomes` with these `(to, data)` pairs.
    PostWelcomes(Vec<(String, Vec<u8>)>),
    /// `POST /v1/groups/{owner}/{group_id}/messages`.
    PostMessage {
        /// Owner of the relay group.
        owner: String,
        /// Relay group id, lowercase hex.
        group_id: String,
        /// `MLSMessage` bytes.
        data: Vec<u8>,
    },
}

/// One durable outbox entry. `id` is stable across restarts: use it as an idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxItem {
    /// Outbox id, increasing.
    pub id: u64,
    /// What to do.
    pub effect: Effect,
}

/// When [`Engine::send`] makes a commit first (PROTOCOL.md "When to commit").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpdatePolicy {
    /// Commit before a send when our last update is older than this (default 24 h).
    pub max_update_age_ms: u64,
    /// Commit before a send when this many messages were sent since our last update
    /// (default 1,000).
    pub max_messages_per_update: u64,
    /// Commit before a send when other members have updates we have not imported yet
    /// (default true).
    pub import_before_send: bool,
}

impl Default for UpdatePolicy {
    fn default() -> Self {
        UpdatePolicy {
            max_update_age_ms: 24 * 60 * 60 * 1000,
            max_messages_per_update: 1000,
            import_before_send: true,
        }
    }
}

/// One DGroup as listed by [`Engine::dgroups`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DGroupSummary {
    /// The DGroup id.
    pub id: DGroupId,
    /// Its name: the config's, or the latest a member set (docs/PROTOCOL.md "Group name").
    pub name: String,
    /// Who set `name`, unless it is the config's.
    pub renamed_by: Option<String>,
    /// Members from the config, creator first (removed ones included).
    pub members: Vec<String>,
    /// Members known to be removed.
    pub removed: Vec<String>,
    /// Whether we were removed (also true once we left).
    pub we_are_removed: bool,
    /// When we left the DGroup ([`Engine::leave`]; our clock, milliseconds since the Unix
    /// epoch), if we did.
    pub left_ms: Option<u64>,
    /// Who may add members ([`Engine::add`]).
    pub add_policy: AddPolicy,
}

/// What a waiting message waits for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaitReason {
    /// Its Send Group must reach this epoch first.
    Epoch(u64),
    /// This PSK (an epoch of another Send Group) must be stored first.
    Psk(PskId),
    /// We have not joined its Send Group yet (its Welcome has not been processed).
    Welcome,
    /// A commit that references a proposal (a member's leaf-refresh Update) of this epoch we
    /// have not received yet; retried when a proposal of that epoch arrives.
    Proposal(u64),
    /// A member's leaf-refresh Update proposal in a Send Group we do not own, kept
    /// unprocessed until a commit of this epoch references it. Most never are: when the
    /// owner commits before receiving it, it goes stale and is dropped.
    Commit(u64),
    /// A commit or leaf-refresh proposal of a removed member's Send Group beyond the epoch we
    /// process it up to (the epoch we held when we learned of the removal). It is kept, not
    /// processed: only if a commit of another Send Group imports the PSK of a later epoch of
    /// the removed member's group (it did so before learning of the removal) are its commits
    /// up to that epoch processed, for that PSK alone (docs/PROTOCOL.md "Removal race").
    Stopped,
}

/// A received message that could not be processed yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaitingMessage {
    /// Epoch in the message header.
    pub epoch: u64,
    /// Whether it is a commit (else an application message or proposal).
    pub is_commit: bool,
    /// What it waits for.
    pub waits_for: WaitReason,
}

/// State of one Send Group of a DGroup, from our point of view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendGroupStatus {
    /// Owner client id.
    pub owner: String,
    /// Send Group id, lowercase hex.
    pub group_id: String,
    /// Whether we hold the group (owner or joined through its Welcome).
    pub joined: bool,
    /// Our current epoch of it, if joined.
    pub epoch: Option<u64>,
    /// Current MLS members (leaf order), if joined.
    pub members: Vec<String>,
    /// Epoch authenticator of the current epoch (hex), if joined. Equal at every
    /// member that reached the same epoch.
    pub epoch_authenticator: Option<String>,
    /// Relay read cursor (last processed `seq`).
    pub after_seq: u64,
    /// Messages waiting, and exactly what each waits for.
    pub waiting: Vec<WaitingMessage>,
    /// Members that have not yet acknowledged (imported) the latest epoch of this Send
    /// Group we hold a PSK for, so hold back deletion of older PSKs (PROTOCOL.md
    /// "Acknowledgement and key deletion").
    pub psk_deletion_holders: Vec<String>,
    /// When the owner of this Send Group fell behind: our clock (ms since the Unix epoch) when
    /// we stored the oldest epoch of another Send Group that it has not acknowledged (imported
    /// in a commit of its own). `None` when it is up to date, however long it has been quiet.
    /// [`Engine::evict_silent_members`] evicts members behind for too long; for our own Send
    /// Group it is us ([`Engine::acknowledge_overdue`]).
    pub behind_since_ms: Option<u64>,
    /// We joined this Send Group through our last-resort key package and the owner has not
    /// committed a refresh of that leaf yet (we propose one in every epoch until it does;
    /// docs/PROTOCOL.md "Key packages").
    pub last_resort_leaf: bool,
}

/// Status of one DGroup ([`Engine::status`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DGroupStatus {
    /// Summary (config, removals).
    pub summary: DGroupSummary,
    /// One entry per member of the config, creator first.
    pub send_groups: Vec<SendGroupStatus>,
    /// Removed members still to be removed from our own Send Group by our next commit.
    pub pending_removals: Vec<String>,
    /// Members of the config (added after we created or joined our Send Group, or whose key
    /// package was missing) that are not known to be removed and not in our own Send Group
    /// yet: a key-package claim and a late-add commit will add them.
    pub pending_adds: Vec<String>,
    /// Welcomes kept unjoined until the config we hold lists their owner or the members they
    /// bring (docs/PROTOCOL.md "DGroup configuration").
    pub held_welcomes: u64,
    /// Other members' epochs we have seen but not imported into our Send Group yet.
    pub unimported: Vec<PskId>,
    /// Leaves in the Send Groups we hold whose identity key is not their member's pinned key
    /// (docs/PROTOCOL.md "Pinning"): when not empty, the DGroup is unsafe, someone may read
    /// what is sent in those Send Groups.
    pub key_mismatches: Vec<KeyMismatch>,
    /// Members (not us, not removed) whose identity key is not verified
    /// ([`Engine::confirm_verified`]).
    pub unverified: Vec<String>,
    /// Unresolved key changes of members of this DGroup ([`Engine::key_changes`]): they are
    /// not added to our Send Group, and their Welcomes with the new key are held, until the
    /// user trusts the new key ([`Engine::trust`]).
    pub key_changes: Vec<KeyChange>,
}

/// The dependency graph of one DGroup ([`Engine::graph`]): every Send Group's recent
/// commits and what each imported, for drawing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DGroupGraph {
    /// The DGroup's status ([`Engine::status`]).
    pub status: DGroupStatus,
    /// The commits we merged in each Send Group, in the order of `status.send_groups`
    /// (oldest first; only the latest 256 epochs of each are kept).
    pub commits: Vec<Vec<GraphCommit>>,
}

/// One commit merged in a Send Group ([`DGroupGraph`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphCommit {
    /// The epoch the commit started.
    pub epoch: u64,
    /// The epochs of other Send Groups it imported (their PSKs).
    pub imports: Vec<PskId>,
    /// The members it removed.
    pub removed: Vec<String>,
}

/// A Send Group to poll on the relay ([`Engine::followed_groups`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FollowedGroup {
    /// Owner client id.
    pub owner: String,
    /// Send Group id, lowercase hex.
    pub group_id: String,
    /// Relay cursor: read messages with `seq > after_seq`.
    pub after_seq: u64,
}

/// Processing counters, for tests and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// openmls `process_message` calls.
    pub process_attempts: u64,
    /// Messages delivered to [`Engine::handle`] that were processed successfully (commits merged,
    /// application messages decrypted, proposals stored).
    pub processed: u64,
    /// Duplicates recognised and dropped.
    pub duplicates: u64,
}

/// The DMLS engine of one identity over one SQLite database.
///
/// Every public method that changes state runs in one SQLite transaction: either all of
/// its effects (openmls state, our tables, outbox) are stored, or none.
pub struct Engine {
    conn: rusqlite::Connection,
    rand: provider::DmlsRand,
    crypto: openmls_rust_crypto::RustCrypto,
    policy: UpdatePolicy,
    counters: Counters,
    groups: ctx::GroupCache,
    duties: duties::Duties,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // No secrets: only the policy and counters.
        f.debug_struct("Engine")
            .field("policy", &self.policy)
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// Opens the engine over `conn` (a file for the CLI, `:memory:` for tests), running
    /// openmls's and our own schema migrations. Randomness comes from the OS.
    pub fn open(conn: rusqlite::Connection) -> Result<Engine, EngineError> {
        Self::open_with_rand(conn, provider::DmlsRand::from_os()?)
    }

    /// Like [`Engine::open`], but the openmls randomness (group ids, nonces, secrets) is a
    /// ChaCha20 stream seeded with `seed`: for deterministic simulations only.
    pub fn open_seeded(conn: rusqlite::Connection, seed: [u8; 32]) -> Result<Engine, EngineError> {
        Self::open_with_rand(conn, provider::DmlsRand::from_seed(seed))
    }

    /// Runs `f` in one transaction (a savepoint, so it also nests in a caller's
    /// transaction): on error everything it wrote, openmls's writes included, is rolled back.
    fn write<T>(
        &mut self,
        f: impl FnOnce(&mut ctx::Ctx<'_>) -> Result<T, EngineError>,
    ) -> Result<T, EngineError> {
        self.write_at(None, f)
    }

    /// [`Engine::write`] for an operation that knows the shell's clock (`now_ms`).
    fn write_at<T>(
        &mut self,
        now_ms: Option<u64>,
        f: impl FnOnce(&mut ctx::Ctx<'_>) -> Result<T, EngineError>,
    ) -> Result<T, EngineError> {
        let mut c = ctx::Ctx::new(
            &self.conn,
            &self.crypto,
            &self.rand,
            &mut self.counters,
            self.policy,
            &mut self.groups,
        );
        c.now_ms = now_ms;
        c.savepoint(store::Savepoint::Operation, |c| {
            let v = f(c)?;
            c.flush_name_resends()?;
            if c.removals_merged {
                c.close_removed_groups()?;
            }
            c.flush_leaf_refreshes()?;
            c.flush_deferred()?;
            c.prune_deferred()?;
            c.flush_cursors()?;
            Ok(v)
        })
    }

    /// Runs a read-only query.
    fn read<T>(
        &self,
        f: impl FnOnce(&ctx::Ctx<'_>) -> Result<T, EngineError>,
    ) -> Result<T, EngineError> {
        let mut counters = self.counters;
        // Queries see the cache through `Ctx::with_group` only; a copy is not needed, an
        // empty map loads from storage.
        let mut groups = ctx::GroupCache::new();
        let c = ctx::Ctx::new(
            &self.conn,
            &self.crypto,
            &self.rand,
            &mut counters,
            self.policy,
            &mut groups,
        );
        f(&c)
    }

    fn open_with_rand(
        mut conn: rusqlite::Connection,
        rand: provider::DmlsRand,
    ) -> Result<Engine, EngineError> {
        conn.set_prepared_statement_cache_capacity(store::STATEMENT_CACHE);
        // Every input runs in a nested savepoint, whose undo journal is a temporary file
        // unless temporary storage is in memory; and a batch of inputs changes many pages,
        // which should not spill to disk before the commit.
        conn.pragma_update(None, "temp_store", "MEMORY")?;
        conn.pragma_update(None, "cache_size", -32_000)?;
        provider::migrate(&mut conn)?;
        store::schema::migrate(&conn)?;
        match store::meta::get(&conn, store::meta::Key::StateCodec)? {
            Some(codec) if codec == storage::STATE_CODEC_NAME => {}
            Some(other) => {
                return Err(EngineError::Migration(format!(
                    "the state database stores openmls state as {:?}, this version reads {:?}",
                    String::from_utf8_lossy(&other),
                    String::from_utf8_lossy(storage::STATE_CODEC_NAME)
                )));
            }
            None if store::meta::get(&conn, store::meta::Key::ClientId)?.is_some() => {
                return Err(EngineError::Migration(
                    "the state database was written by an older dmls version (JSON openmls \
                     state); it cannot be read by this one: create a new identity"
                        .into(),
                ));
            }
            None => store::meta::set(
                &conn,
                store::meta::Key::StateCodec,
                storage::STATE_CODEC_NAME,
            )?,
        }
        let mut engine = Engine {
            conn,
            rand,
            crypto: openmls_rust_crypto::RustCrypto::default(),
            policy: UpdatePolicy::default(),
            counters: Counters::default(),
            groups: ctx::GroupCache::new(),
            duties: duties::Duties::default(),
        };
        if store::meta::get(&engine.conn, store::meta::Key::ContactsBackfilled)?.is_none() {
            engine.write(|c| c.backfill_contacts())?;
        }
        Ok(engine)
    }

    /// Sets the update policy used by [`Engine::send`] (not persisted).
    pub fn set_update_policy(&mut self, policy: UpdatePolicy) {
        self.policy = policy;
    }

    /// The update policy in force.
    pub fn update_policy(&self) -> UpdatePolicy {
        self.policy
    }

    /// Processing counters since this engine was opened.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// Creates our identity: an Ed25519 signature key (persisted) and a BasicCredential whose
    /// identity is `client_id` as UTF-8. Fails if an identity exists already.
    pub fn create_identity(&mut self, client_id: &str) -> Result<(), EngineError> {
        self.write(|c| c.create_identity(client_id))
    }

    /// Our client id, if the identity was created.
    pub fn client_id(&self) -> Result<Option<String>, EngineError> {
        self.read(
            |c| match store::meta::get(c.conn, store::meta::Key::ClientId)? {
                None => Ok(None),
                Some(_) => c.me().map(Some),
            },
        )
    }

    /// Generates `n` key packages (MLSMessage-framed, advertising extension type 0xFF00),
    /// stored for later joins. Upload them with `POST /v1/key-packages`.
    pub fn generate_key_packages(&mut self, n: usize) -> Result<Vec<Vec<u8>>, EngineError> {
        self.write(|c| (0..n).map(|_| c.key_package(false)).collect())
    }

    /// Generates one key package with the last_resort extension (reusable for several joins).
    /// Once the relay holds it, [`Engine::last_resort_uploaded`] makes it the current one.
    pub fn generate_last_resort_key_package(&mut self) -> Result<Vec<u8>, EngineError> {
        self.write(|c| c.key_package(true))
    }

    /// The relay took `key_package` (from [`Engine::generate_last_resort_key_package`]) at
    /// `now_ms` as our last-resort key package, replacing the previous one.
    pub fn last_resort_uploaded(
        &mut self,
        key_package: &[u8],
        now_ms: u64,
    ) -> Result<(), EngineError> {
        self.write(|c| c.last_resort_uploaded(key_package, now_ms))
    }

    /// Whether a new last-resort key package is to be uploaded at `now_ms` (docs/PROTOCOL.md
    /// "Key packages"): none was uploaded by this version of the engine yet, the current one
    /// served a Welcome, or it is older than [`LAST_RESORT_MAX_AGE_MS`] (key packages expire).
    /// The shell also uploads one when the relay reports it has none.
    pub fn needs_last_resort(&self, now_ms: u64) -> Result<bool, EngineError> {
        self.read(|c| c.needs_last_resort(now_ms))
    }

    /// Creates a DGroup with us (first) and `other_members`, and our Send Group in it
    /// (PROTOCOL.md "INIT" step 1). Queues `PutRelayGroup` and `ClaimKeyPackages`; the
    /// claim's answer ([`Input::ClaimedKeyPackages`]) adds the members and queues the Welcomes.
    pub fn create_dgroup(
        &mut self,
        name: &str,
        other_members: &[String],
        now_ms: u64,
    ) -> Result<DGroupId, EngineError> {
        self.create_dgroup_with_policy(name, other_members, AddPolicy::AnyMember, now_ms)
    }

    /// [`Engine::create_dgroup`] with the DGroup's [`AddPolicy`] (docs/PROTOCOL.md "Add"):
    /// whether any member may add members later, or only its admin (us, the creator).
    pub fn create_dgroup_with_policy(
        &mut self,
        name: &str,
        other_members: &[String],
        add_policy: AddPolicy,
        now_ms: u64,
    ) -> Result<DGroupId, EngineError> {
        self.write_at(Some(now_ms), |c| {
            c.create_dgroup(name, other_members, add_policy, now_ms)
        })
    }

    /// Adds `members` to `dgroup` (docs/PROTOCOL.md "Add"): they join the DGroup config we
    /// hold, a commit of our Send Group carrying it is queued at once (every other member
    /// follows it: adds them to its own Send Group), and so is a key-package claim for them,
    /// whose answer adds them to our Send Group. They can read what is sent after they joined,
    /// nothing before. Fails with [`EngineError::InvalidArgument`] when we may not add
    /// ([`AddPolicy::Admins`]), or a name is ours, twice, a member already or one removed
    /// (adding a removed member again is not supported).
    pub fn add(
        &mut self,
        dgroup: &DGroupId,
        members: &[String],
        now_ms: u64,
    ) -> Result<(), EngineError> {
        self.write_at(Some(now_ms), |c| c.add_members(dgroup, members, now_ms))
    }

    /// Processes one input in one transaction: on error nothing changed (not even the
    /// relay cursor, see [`Engine::set_group_cursor`] to skip a bad message).
    pub fn handle(&mut self, input: Input, now_ms: u64) -> Result<Vec<Event>, EngineError> {
        if matches!(input, Input::GroupMessage { .. }) {
            self.duties.note_group_message(now_ms);
        }
        let events = self.write_at(Some(now_ms), |c| Self::dispatch(c, input, now_ms))?;
        self.note_activity(events.iter())?;
        Ok(events)
    }

    /// Processes many inputs in one transaction, each in its own savepoint, and returns one
    /// result per input, in order. Much faster than [`Engine::handle`] per input: one
    /// database commit (one fsync with a synchronous database) for the whole batch.
    ///
    /// An input that fails with an input error ([`EngineError::is_input_error`]: malformed,
    /// rejected, unknown group) changes nothing except that its relay cursor (or welcome
    /// cursor) advances past it, so it is not fetched again; its error is returned in its
    /// slot. Any other error (the database failed, a bug) rolls back the whole batch and is
    /// returned as the outer error: then nothing changed, not even a cursor.
    pub fn handle_batch(
        &mut self,
        inputs: Vec<Input>,
        now_ms: u64,
    ) -> Result<Vec<Result<Vec<Event>, EngineError>>, EngineError> {
        if inputs
            .iter()
            .any(|i| matches!(i, Input::GroupMessage { .. }))
        {
            self.duties.note_group_message(now_ms);
        }
        let results = self.write_at(Some(now_ms), |c| {
            let mut results = Vec::with_capacity(inputs.len());
            for input in inputs {
                let result = match input {
                    // Atomic by itself: a rejected message changes nothing but its cursor,
                    // and only its expensive part needs a savepoint (most messages of a
                    // round are stale or deferred leaf refreshes, decided by reading alone).
                    Input::GroupMessage {
                        owner,
                        group_id,
                        seq,
                        data,
                    } => c
                        .group_message(&owner, &group_id, seq, &data)
                        .and_then(|mut events| {
                            // What it taught us of the config may admit held Welcomes.
                            events.extend(c.retry_held_welcomes()?);
                            Ok(events)
                        }),
                    Input::Welcome {
                        inbox_id: Some(id), ..
                    } => {
                        let r = c.savepoint(store::Savepoint::Input, |c| {
                            Self::dispatch(c, input, now_ms)
                        });
                        if r.as_ref().is_err_and(EngineError::is_input_error) {
                            // Not fetched again.
                            c.set_welcome_cursor(id)?;
                        }
                        r
                    }
                    input => c.savepoint(store::Savepoint::Input, |c| {
                        Self::dispatch(c, input, now_ms)
                    }),
                };
                match result {
                    Err(e) if !e.is_input_error() => return Err(e),
                    r => results.push(r),
                }
            }
            Ok(results)
        })?;
        self.note_activity(results.iter().flatten().flatten())?;
        Ok(results)
    }

    /// Processes one input (no transaction of its own).
    fn dispatch(
        c: &mut ctx::Ctx<'_>,
        input: Input,
        now_ms: u64,
    ) -> Result<Vec<Event>, EngineError> {
        match input {
            Input::GroupMessage {
                owner,
                group_id,
                seq,
                data,
            } => {
                let mut events = c.group_message(&owner, &group_id, seq, &data)?;
                events.extend(c.retry_held_welcomes()?);
                Ok(events)
            }
            Input::Welcome {
                inbox_id,
                from,
                data,
            } => {
                let mut events = c.welcome(inbox_id, &from, &data, now_ms)?;
                events.extend(c.retry_held_welcomes()?);
                Ok(events)
            }
            Input::ClaimedKeyPackages {
                outbox_id,
                key_packages,
                missing,
            } => c.claimed_key_packages(outbox_id, key_packages, missing, now_ms),
        }
    }

    /// Everything still to be sent, oldest first. Perform them in order and call
    /// [`Engine::outbox_done`] after each (or answer a claim with [`Input::ClaimedKeyPackages`]).
    pub fn outbox(&self) -> Result<Vec<OutboxItem>, EngineError> {
        self.read(|c| c.outbox())
    }

    /// Marks outbox item `id` as performed (idempotent).
    pub fn outbox_done(&mut self, id: u64) -> Result<(), EngineError> {
        self.outbox_done_many(&[id])
    }

    /// Marks several outbox items as performed in one transaction (idempotent). Cheaper than
    /// [`Engine::outbox_done`] per item: one database commit for all.
    pub fn outbox_done_many(&mut self, ids: &[u64]) -> Result<(), EngineError> {
        self.write(|c| ids.iter().try_for_each(|id| c.outbox_done(*id)))
    }

    /// Sends an application message in our Send Group of `dgroup`, committing first when
    /// the [`UpdatePolicy`] asks for it. Returns the envelope's message id.
    pub fn send(
        &mut self,
        dgroup: &DGroupId,
        content_type: &str,
        body: &[u8],
        now_ms: u64,
    ) -> Result<MessageId, EngineError> {
        if is_control(content_type) {
            return Err(EngineError::InvalidArgument(format!(
                "content type {content_type:?} is reserved for the protocol's control messages"
            )));
        }
        self.write_at(Some(now_ms), |c| c.send(dgroup, content_type, body, now_ms))
    }

    /// Renames `dgroup` to `name` for every member (docs/PROTOCOL.md "Group name"): the name
    /// goes into our Send Group as a control message (committing first when the
    /// [`UpdatePolicy`] asks for it). Concurrent renames end the same everywhere: the one with
    /// the greater clock wins, then the greater client id. `name` must not be empty, have
    /// control characters or be longer than [`MAX_NAME_BYTES`] bytes.
    pub fn rename(
        &mut self,
        dgroup: &DGroupId,
        name: &str,
        now_ms: u64,
    ) -> Result<(), EngineError> {
        self.write_at(Some(now_ms), |c| c.rename(dgroup, name, now_ms))
    }

    /// Leaves `dgroup` (docs/PROTOCOL.md "Leave"): announces it in our Send Group (committing
    /// first when the [`UpdatePolicy`] or pending proposals ask for it), then deletes every
    /// Send Group state, PSK and waiting message of the DGroup and stops following its Send
    /// Groups. The others remove us when they read the announcement; what is sent after it
    /// cannot be read here any more. The history of messages already received is kept, and
    /// [`DGroupSummary::left_ms`] records the leave.
    ///
    /// Returns whether the announcement was queued: not when we were removed already, nor
    /// when our Send Group was never set up (its key-package claim unanswered), since then
    /// nobody could read it; the others then remove us by eviction. Refused for a DGroup we
    /// already left.
    pub fn leave(&mut self, dgroup: &DGroupId, now_ms: u64) -> Result<bool, EngineError> {
        self.write_at(Some(now_ms), |c| c.leave(dgroup, now_ms))
    }

    /// Explicit DMLS Update: commits with a path and all pending imports, removals and
    /// received Update proposals, and queues an Update proposal for our leaf into every
    /// other Send Group of `dgroup` we are a member of (PROTOCOL.md "Leaf refresh").
    pub fn update(&mut self, dgroup: &DGroupId, now_ms: u64) -> Result<(), EngineError> {
        self.write_at(Some(now_ms), |c| c.dmls_commit(dgroup, now_ms, true))
    }

    /// Removes `member` from the DGroup: commits its removal from our Send Group now and
    /// drops it from the relay group's member list (PROTOCOL.md "Removal").
    pub fn remove(
        &mut self,
        dgroup: &DGroupId,
        member: &str,
        now_ms: u64,
    ) -> Result<(), EngineError> {
        self.write_at(Some(now_ms), |c| c.remove(dgroup, member, now_ms))
    }

    /// Commits in every DGroup where removals learned from other Send Groups are still to
    /// be applied to our own Send Group. Returns those DGroups.
    pub fn commit_pending_removals(&mut self, now_ms: u64) -> Result<Vec<DGroupId>, EngineError> {
        self.write_at(Some(now_ms), |c| c.commit_pending_removals(now_ms))
    }

    /// Eviction (PROTOCOL.md "Acknowledgement and key deletion"): in every DGroup, removes
    /// from our Send Group the members that have been behind (see
    /// [`SendGroupStatus::behind_since_ms`]) since `threshold_ms` or more before `now_ms`. A
    /// member that is up to date is never evicted, however long it has been quiet. One commit
    /// per DGroup removes them all, as [`Engine::remove`] would, and every other member then
    /// removes them too. Returns one [`Event::MemberEvicted`] per evicted member;
    /// `threshold_ms` 0 is refused.
    ///
    /// Call it only when the relay has nothing newer for us (after a sync that caught up), so
    /// that commits waiting there count; [`Engine::handle_timeout`] does so at most once a
    /// minute with a default threshold of 30 days ([`DEFAULT_EVICTION_THRESHOLD_MS`]).
    /// PSKs of older state databases, which did not record times, count from the first call.
    pub fn evict_silent_members(
        &mut self,
        now_ms: u64,
        threshold_ms: u64,
    ) -> Result<Vec<Event>, EngineError> {
        self.write_at(Some(now_ms), |c| {
            c.evict_silent_members(now_ms, threshold_ms)
        })
    }

    /// Keeps us from being evicted by others: in every DGroup where we have been behind since
    /// `deadline_ms` or more before `now_ms` (others updated and we have not imported it, see
    /// [`SendGroupStatus::behind_since_ms`] of our own Send Group) and there is something to
    /// import, makes a DMLS Commit importing it. Returns those DGroups. A member that reads
    /// but never sends acknowledges this way; [`Engine::handle_timeout`] calls it when a sync
    /// caught up, at most once a minute, with [`DEFAULT_ACK_DEADLINE_MS`] (7 days, well within
    /// the default eviction threshold). It commits at most once per deadline per DGroup when
    /// others keep updating, never in answer to a commit right away (PROTOCOL.md "When to
    /// commit").
    pub fn acknowledge_overdue(
        &mut self,
        now_ms: u64,
        deadline_ms: u64,
    ) -> Result<Vec<DGroupId>, EngineError> {
        self.write_at(Some(now_ms), |c| c.acknowledge_overdue(now_ms, deadline_ms))
    }

    /// Late add: for every DGroup whose own Send Group is active and still lacks config
    /// members whose key packages were missing at an earlier claim (see
    /// [`Event::KeyPackagesMissing`]; members known to be removed do not count), queues a new
    /// [`Effect::ClaimKeyPackages`] for them, unless a claim for that DGroup is already
    /// pending in the outbox. Its answer ([`Input::ClaimedKeyPackages`]) adds the members that
    /// got a key package in one DMLS commit of our Send Group (posted), then queues
    /// [`Effect::PutRelayGroup`] with the new member list and [`Effect::PostWelcomes`] for
    /// them; the others stay missing. Returns the DGroups claimed for.
    ///
    /// Each claim is a relay request (and consumes the key packages it finds), so call this
    /// only now and then ([`Engine::handle_timeout`] does so at most once a minute).
    pub fn retry_missing_members(&mut self) -> Result<Vec<DGroupId>, EngineError> {
        self.write(|c| c.retry_missing_members())
    }

    /// All DGroups we know.
    pub fn dgroups(&self) -> Result<Vec<DGroupSummary>, EngineError> {
        self.read(|c| c.dgroups())
    }

    /// Detailed status of one DGroup.
    pub fn status(&self, dgroup: &DGroupId) -> Result<DGroupStatus, EngineError> {
        self.read(|c| c.status(dgroup))
    }

    /// Our identity key: the Ed25519 public key of our credential, in every key package and
    /// leaf of ours ([`fingerprint`] shows it).
    pub fn identity_key(&self) -> Result<Vec<u8>, EngineError> {
        self.read(|c| c.identity_key())
    }

    /// The identity keys that `client_id`'s leaves carry in the Send Groups we hold, one entry
    /// per Send Group. More than one distinct key means the member is not who it was
    /// everywhere (a relay may have slipped its own key in somewhere).
    pub fn identity_keys_of(&self, client_id: &str) -> Result<Vec<SeenKey>, EngineError> {
        self.read(|c| c.identity_keys_of(client_id))
    }

    /// Every contact: the identity key pinned for each client id we met (docs/PROTOCOL.md
    /// "Pinning"), by client id.
    pub fn contacts(&self) -> Result<Vec<Contact>, EngineError> {
        self.read(|c| c.contacts())
    }

    /// Makes `client_id` a contact from `key_package`, one of its key packages (MLSMessage
    /// framed, as claimed from the relay), before any group with it, so that the safety number
    /// can be compared and confirmed first ([`Engine::confirm_verified`]). Its key is pinned if
    /// none was; another key than the pinned one is recorded as a key change, returned as its
    /// [`Event::KeyChanged`]. Returns the key. A key package that is not valid for `client_id`
    /// is refused and changes nothing.
    pub fn add_contact(
        &mut self,
        client_id: &str,
        key_package: &[u8],
        now_ms: u64,
    ) -> Result<(Vec<u8>, Option<Event>), EngineError> {
        self.write_at(Some(now_ms), |c| c.add_contact(client_id, key_package))
    }

    /// The key changes not resolved yet: keys seen for a contact that are not its pinned key.
    pub fn key_changes(&self) -> Result<Vec<KeyChange>, EngineError> {
        self.read(|c| c.key_changes())
    }

    /// The user checked the fingerprint `fingerprint` of a new key of `client_id` out of band
    /// and accepts it: it becomes the pinned key (not verified), the Welcomes held for it are
    /// joined (their events are returned) and key packages are claimed again for the DGroups
    /// that miss the member. Refused unless a key change with that fingerprint was recorded.
    pub fn trust(
        &mut self,
        client_id: &str,
        fingerprint: &str,
        now_ms: u64,
    ) -> Result<Vec<Event>, EngineError> {
        self.write_at(Some(now_ms), |c| c.trust(client_id, fingerprint, now_ms))
    }

    /// The user compared the safety number with `client_id` out of band: its pinned key is
    /// recorded as verified, and returned. Refused when it has no pin or an unresolved key
    /// change.
    pub fn confirm_verified(
        &mut self,
        client_id: &str,
        now_ms: u64,
    ) -> Result<Vec<u8>, EngineError> {
        self.write_at(Some(now_ms), |c| c.confirm_verified(client_id, now_ms))
    }

    /// When on, [`Engine::create_dgroup`] refuses members that are not verified contacts, and
    /// key packages claimed later are added only for verified contacts with their verified key.
    /// Kept in the state database.
    pub fn set_require_verified(&mut self, on: bool) -> Result<(), EngineError> {
        self.write(|c| {
            if on {
                store::meta::set(c.conn, store::meta::Key::RequireVerified, &[1])
            } else {
                store::meta::delete(c.conn, store::meta::Key::RequireVerified)
            }
        })
    }

    /// See [`Engine::set_require_verified`].
    pub fn require_verified(&self) -> Result<bool, EngineError> {
        self.read(|c| c.require_verified())
    }

    /// The dependency graph of one DGroup: its status and the commits merged in each of its
    /// Send Groups with the epochs they imported. Read-only.
    pub fn graph(&self, dgroup: &DGroupId) -> Result<DGroupGraph, EngineError> {
        self.read(|c| c.graph(dgroup))
    }

    /// The last `limit` application messages of `dgroup` (ours and others'), oldest first.
    pub fn history(
        &self,
        dgroup: &DGroupId,
        limit: usize,
    ) -> Result<Vec<ReceivedMessage>, EngineError> {
        self.read(|c| c.history(dgroup, limit))
    }

    /// Every Send Group of every DGroup, joined or not (their ids are computable from the
    /// config), with the relay cursor to read after. Our own Send Group is included: other
    /// members post their leaf-refresh Update proposals there.
    pub fn followed_groups(&self) -> Result<Vec<FollowedGroup>, EngineError> {
        self.read(|c| c.followed_groups())
    }

    /// The welcome inbox cursor: read welcomes with `id > cursor` (0 when none was read).
    pub fn welcome_cursor(&self) -> Result<u64, EngineError> {
        self.read(|c| c.welcome_cursor())
    }

    /// Advances the relay cursor of a followed group without processing anything, e.g.
    /// after [`Engine::handle`] rejected the message at `seq` (so it is not fetched again).
    pub fn set_group_cursor(
        &mut self,
        owner: &str,
        group_id: &str,
        seq: u64,
    ) -> Result<(), EngineError> {
        self.write(|c| c.set_group_cursor(owner, group_id, seq))
    }

    /// Advances the welcome cursor without processing anything (after a rejected Welcome).
    pub fn set_welcome_cursor(&mut self, inbox_id: u64) -> Result<(), EngineError> {
        self.write(|c| c.set_welcome_cursor(inbox_id))
    }
}
