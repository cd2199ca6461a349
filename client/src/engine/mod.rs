//! The sans-I/O DMLS engine (PROTOCOL.md).
//!
//! The engine is a state machine over one SQLite database: inputs go in through
//! [`Engine::handle`] and the user commands ([`Engine::send`], [`Engine::update`],
//! [`Engine::remove`], [`Engine::create_dgroup`]); what has to be sent to the relay is
//! written to a durable outbox ([`Engine::outbox`]) in the same transaction as the state
//! change that produced it, and what a user should see comes back as [`Event`]s.
//! It does no network, file or clock access of its own: time comes in as `now_ms`
//! parameters, randomness through the openmls provider, storage through the
//! [`rusqlite::Connection`] the caller opens.

mod config;
mod envelope;
mod error;
mod ids;

pub use config::{DGroupConfig, DMLS_EXTENSION_TYPE, PSK_LENGTH};
pub use envelope::{DmlsEnvelope, ENVELOPE_VERSION, TEXT_PLAIN};
pub use error::EngineError;
pub use ids::{DGroupId, MessageId, PskId, send_group_id};

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
    /// Generation (secret-tree ratchet position) of the message within that epoch.
    pub generation: u32,
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
    /// We were removed from the DGroup by a commit of `by`.
    WeWereRemoved {
        /// The DGroup.
        dgroup: DGroupId,
        /// The owner whose commit removed us.
        by: String,
    },
    /// A key-package claim came back without packages for these members, so they were not
    /// added to our Send Group and will not read it (DMLS has no late add; make a new DGroup).
    KeyPackagesMissing {
        /// The DGroup.
        dgroup: DGroupId,
        /// Client ids the relay had no key package for.
        client_ids: Vec<String>,
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
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// Its name.
    pub name: String,
    /// Members from the config, creator first (removed ones included).
    pub members: Vec<String>,
    /// Members known to be removed.
    pub removed: Vec<String>,
    /// Whether we were removed.
    pub we_are_removed: bool,
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
    /// Other members' epochs we have seen but not imported into our Send Group yet.
    pub unimported: Vec<PskId>,
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
}
