//! Storage behind one trait, with a SQLite and a PostgreSQL implementation beside it.
//!
//! Handlers never see SQL: they call [`Store`]. Both backends must give the same answers; the
//! integration tests run every route against both.
//!
//! Guarantees every implementation keeps (API.md):
//! - `seq` is per group, starts at 1, and a reader paging with `after` never misses a message:
//!   a message with a higher seq never becomes visible before all lower ones of its group.
//! - Claims of key packages are atomic: two claimers never get the same (non-last-resort) one.
//! - `post_welcomes` is all or nothing.
//! - A welcome's bytes are stored once however many recipients it has, and are deleted with the
//!   last inbox entry that refers to them.
//! - An append with an idempotency key that was seen before (same group, same sender) returns the
//!   first seq and stores nothing; with another body it is a conflict.

pub(crate) mod batch;
mod common;
#[cfg(test)]
mod contract_tests;
mod migrations;
pub(crate) mod postgres;
pub(crate) mod sqlite;
mod sqlite_writer;
mod sync;

use std::sync::Arc;

use async_trait::async_trait;
use dmls_api::{ClaimedKeyPackage, Message, Welcome};

use self::batch::BatchWriter;
use self::common::Conn;
use self::sync::{SyncCandidate, SyncRange};
use crate::config::{Config, redact_url};
use crate::notify::{Notifier, StoreEvent};

/// What the store can fail with. Handlers map these to HTTP answers.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreError {
    /// The thing to create exists already (client id taken).
    #[error("already exists")]
    Conflict,
    /// These client ids are not registered.
    #[error("unknown clients: {0:?}")]
    UnknownClients(Vec<String>),
    /// Storing this would exceed the client's daily storage quota (which one: see
    /// [`DailyQuota::exceeded`]); nothing was stored.
    #[error("daily storage quota exceeded: {0}")]
    OverQuota(&'static str),
    /// Storing these key packages would exceed the per-client stock limit.
    #[error("key package stock limit of {limit} exceeded")]
    TooManyKeyPackages { limit: u64 },
    /// The database failed or could not be reached. Logged, never shown to clients.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Storage failed without an sqlx error to hand on: the append writer went away or is
    /// shutting down, or the batch this append was part of failed (the cause is logged once by
    /// the writer). Shown to clients as 503, like `Database`.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
}

pub(crate) type StoreResult<T> = Result<T, StoreError>;

/// Milliseconds since the Unix epoch, as stored in `created_at` and `received_at`.
pub(crate) type Millis = i64;

/// A registered client, found by its token hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ClientRecord {
    pub(crate) client_id: String,
    /// SHA-256 of the bearer token, compared in constant time by the caller.
    pub(crate) token_hash: [u8; 32],
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ClientStats {
    pub(crate) client_id: String,
    pub(crate) created_at: Millis,
    pub(crate) key_packages_available: u64,
    pub(crate) has_last_resort: bool,
}

/// Result of a claim: one entry per client id that had a package, and the ids that had none.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ClaimOutcome {
    pub(crate) key_packages: Vec<ClaimedKeyPackage>,
    pub(crate) missing: Vec<String>,
}

/// A group with its access list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GroupRecord {
    pub(crate) owner: String,
    pub(crate) group_id: String,
    /// Current members (may read and post), in the order the owner gave them.
    pub(crate) members: Vec<String>,
    /// Clients dropped from the member list, each with the last seq it may still read.
    pub(crate) former_members: Vec<(String, u64)>,
    pub(crate) last_seq: u64,
    pub(crate) created_at: Millis,
}

/// What a client may do in a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// Owner or current member: read everything, post.
    Full,
    /// Dropped member: read messages up to and including this seq, no posting.
    ReadUpTo(u64),
    None,
}

impl GroupRecord {
    pub(crate) fn access(&self, client_id: &str) -> Access {
        if self.owner == client_id || self.members.iter().any(|m| m == client_id) {
            Access::Full
        } else if let Some((_, upto)) = self.former_members.iter().find(|(c, _)| c == client_id) {
            Access::ReadUpTo(*upto)
        } else {
            Access::None
        }
    }
}

/// One append to a group, as the batch writer receives it.
#[derive(Debug, Clone)]
pub(crate) struct AppendRequest {
    pub(crate) owner: String,
    pub(crate) group_id: String,
    pub(crate) sender: String,
    pub(crate) data: Vec<u8>,
    /// `Idempotency-Key` with the SHA-256 of the body, if the request carried one.
    pub(crate) idempotency: Option<(String, [u8; 32])>,
    pub(crate) received_at: Millis,
}

/// The answer to one append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AppendOutcome {
    /// Stored under this seq (201).
    Stored(u64),
    /// Same idempotency key and body as before: the first seq, nothing stored (200).
    Duplicate(u64),
    /// Same idempotency key, different body (409).
    IdempotencyConflict,
    /// No such group (404).
    NoGroup,
    /// The sender is neither the owner nor a current member (403).
    Forbidden,
    /// Storing it would exceed the sender's daily storage quota (429); names which.
    OverQuota(&'static str),
}

/// Milliseconds in a day.
pub(crate) const DAY_MILLIS: Millis = 86_400_000;

/// The UTC day (days since the Unix epoch) of a time.
pub(crate) fn utc_day(at: Millis) -> i64 {
    at.div_euclid(DAY_MILLIS)
}

/// Per-client limits on what is stored per UTC day, group messages and welcomes together
/// (`--daily-message-quota`, `--daily-byte-quota`; 0 = no limit). Counted in the database
/// (`client_usage`), in the transaction that stores, so relay processes sharing PostgreSQL
/// enforce one quota together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct DailyQuota {
    pub(crate) messages: u64,
    pub(crate) bytes: u64,
}

/// What [`DailyQuota::exceeded`] names: the `limit` label of the refusal metric too.
pub(crate) const QUOTA_MESSAGES: &str = "daily_messages";
pub(crate) const QUOTA_BYTES: &str = "daily_bytes";

impl DailyQuota {
    pub(crate) fn from_config(config: &Config) -> Self {
        DailyQuota {
            messages: config.daily_message_quota,
            bytes: config.daily_byte_quota,
        }
    }

    /// Is any limit on (else usage is not even counted)?
    pub(crate) fn is_on(&self) -> bool {
        self.messages > 0 || self.bytes > 0
    }

    /// Which limit storing `messages` more items of `bytes` bytes on top of `used` would
    /// exceed, if any.
    pub(crate) fn exceeded(
        &self,
        used: batch::Usage,
        messages: usize,
        bytes: usize,
    ) -> Option<&'static str> {
        let after = used.plus(messages, bytes);
        if self.messages > 0 && from_db(after.messages) > self.messages {
            Some(QUOTA_MESSAGES)
        } else if self.bytes > 0 && from_db(after.bytes) > self.bytes {
            Some(QUOTA_BYTES)
        } else {
            None
        }
    }
}

impl batch::Usage {
    /// This usage with `messages` more items of `bytes` bytes in all.
    pub(crate) fn plus(self, messages: usize, bytes: usize) -> Self {
        let n = |v: usize| i64::try_from(v).unwrap_or(i64::MAX);
        batch::Usage {
            messages: self.messages.saturating_add(n(messages)),
            bytes: self.bytes.saturating_add(n(bytes)),
        }
    }
}

/// One welcome to store: its bytes, stored once, and its recipients, each of whom gets an inbox
/// entry of its own (one for every time it is named).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NewWelcome {
    pub(crate) to: Vec<String>,
    pub(crate) data: Vec<u8>,
}

impl NewWelcome {
    /// A welcome to one recipient.
    #[cfg(test)]
    pub(crate) fn to_one(to: &str, data: &[u8]) -> Self {
        NewWelcome {
            to: vec![to.to_string()],
            data: data.to_vec(),
        }
    }
}

/// One page of a cursor read.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Page<T> {
    pub(crate) items: Vec<T>,
    pub(crate) more: bool,
}

/// One group of a `sync` read, with the reader's cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SyncCursor {
    pub(crate) owner: String,
    pub(crate) group_id: String,
    pub(crate) after: u64,
}

/// What a `sync` read found for one group.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum SyncGroupResult {
    /// Readable and has messages after the cursor (at most the limit given to `sync_read`).
    Messages {
        cursor_index: usize,
        messages: Vec<Message>,
        more: bool,
    },
    /// Exists but the reader may not read it.
    Forbidden { cursor_index: usize },
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SyncRead {
    /// Only groups with news or forbidden ones; groups that do not exist or have nothing new are
    /// left out.
    pub(crate) groups: Vec<SyncGroupResult>,
    /// `None` when the inbox was not asked for.
    pub(crate) welcomes: Option<Page<Welcome>>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct PruneStats {
    pub(crate) messages: u64,
    pub(crate) welcomes: u64,
    /// Welcome bodies no inbox entry referred to any more.
    pub(crate) welcome_bodies: u64,
    pub(crate) idempotency_keys: u64,
    /// Per-client daily usage rows of past days.
    pub(crate) usage_days: u64,
}

/// What the provided methods of [`Store`] run on.
pub(crate) struct Shared<'a> {
    /// Where reads run.
    pub(crate) reads: Conn<'a>,
    /// Where single-statement writes run.
    pub(crate) writes: Conn<'a>,
    /// The group-commit writer that appends queue on.
    pub(crate) batch: &'a BatchWriter,
    /// Told what was stored, once committed.
    pub(crate) notifier: &'a Notifier,
}

/// Everything the relay stores. Implementations are cheap to share (`Arc<dyn Store>`).
///
/// An implementation supplies what its dialect does its own way; the provided methods run SQL
/// that is the same in both dialects (`common`) on what [`shared`](Store::shared) names.
#[async_trait]
pub(crate) trait Store: Send + Sync + 'static {
    /// What the provided methods run on.
    fn shared(&self) -> Shared<'_>;

    /// `"sqlite"` or `"postgres"`, for `/` and `/metrics`.
    fn backend(&self) -> &'static str {
        self.shared().reads.backend()
    }

    /// Where shared reads run.
    fn reads(&self) -> Conn<'_> {
        self.shared().reads
    }

    /// Where shared single-statement writes run.
    fn writes(&self) -> Conn<'_> {
        self.shared().writes
    }

    /// Does the database answer? (`/readyz`)
    async fn ping(&self) -> StoreResult<()> {
        self.reads().execute("SELECT 1", &[]).await?;
        Ok(())
    }

    /// Connections in use and idle, for `/metrics`.
    fn pool_stats(&self) -> (u32, u32);

    /// Closes the database (graceful shutdown): waits for in-flight writes.
    async fn close(&self);

    // ------------------------------------------------------------ clients

    /// Registers a client. `Conflict` if the id is taken.
    async fn create_client(
        &self,
        client_id: &str,
        token_hash: [u8; 32],
        now: Millis,
    ) -> StoreResult<()> {
        common::create_client(self.writes(), client_id, token_hash, now).await
    }

    /// The client whose token hashes to `token_hash`, if any.
    async fn client_by_token_hash(
        &self,
        token_hash: [u8; 32],
    ) -> StoreResult<Option<ClientRecord>> {
        common::client_by_token_hash(self.reads(), token_hash).await
    }

    async fn client_stats(&self, client_id: &str) -> StoreResult<Option<ClientStats>> {
        common::client_stats(self.reads(), client_id).await
    }

    /// Deletes the account, its key packages, its welcome inbox (and the bodies only it referred
    /// to), the groups it owns with their messages, and its idempotency keys. Its membership in
    /// others' groups goes too.
    async fn delete_client(&self, client_id: &str) -> StoreResult<()>;

    // ------------------------------------------------------------ key packages

    /// Adds to the stock and (if `Some`) replaces the last-resort package; returns the stock size.
    /// `TooManyKeyPackages` (and nothing stored) if the stock would exceed `max_stock`.
    async fn add_key_packages(
        &self,
        client_id: &str,
        key_packages: Vec<Vec<u8>>,
        last_resort: Option<Vec<u8>>,
        max_stock: u64,
        now: Millis,
    ) -> StoreResult<u64>;

    /// Atomically takes one package per id (oldest first; the last-resort one, kept, when the stock
    /// is empty). `UnknownClients` and nothing claimed if any id is not registered.
    async fn claim_key_packages(&self, client_ids: &[String]) -> StoreResult<ClaimOutcome> {
        let ids = dedup(client_ids);
        if ids.is_empty() {
            return Ok(ClaimOutcome {
                key_packages: Vec::new(),
                missing: Vec::new(),
            });
        }
        self.claim_distinct(ids).await
    }

    /// [`claim_key_packages`](Store::claim_key_packages) of at least one id, each once.
    async fn claim_distinct(&self, ids: Vec<String>) -> StoreResult<ClaimOutcome>;

    // ------------------------------------------------------------ welcomes

    /// Stores all welcomes or none, each one's bytes once; returns the inbox ids, one per
    /// recipient in order (a welcome's recipients in its order). `UnknownClients` names unknown
    /// recipients; `OverQuota` if they would take `from` over its daily quota (of the UTC day
    /// of `now`): every inbox entry counts as one welcome, every welcome's bytes once.
    async fn post_welcomes(
        &self,
        from: &str,
        mut welcomes: Vec<NewWelcome>,
        now: Millis,
    ) -> StoreResult<Vec<u64>> {
        welcomes.retain(|w| !w.to.is_empty());
        if welcomes.is_empty() {
            return Ok(Vec::new());
        }
        let recipients = common::recipients(&welcomes);
        let ids = self
            .insert_welcomes(from, welcomes, &recipients, now)
            .await?;
        for client_id in recipients {
            self.shared()
                .notifier
                .publish(StoreEvent::Inbox { client_id });
        }
        Ok(ids)
    }

    /// [`post_welcomes`](Store::post_welcomes) of at least one welcome, each with at least one
    /// recipient, to `recipients` (each once), committed when it returns.
    async fn insert_welcomes(
        &self,
        from: &str,
        welcomes: Vec<NewWelcome>,
        recipients: &[String],
        now: Millis,
    ) -> StoreResult<Vec<u64>>;

    async fn list_welcomes(
        &self,
        client_id: &str,
        after: u64,
        limit: u32,
    ) -> StoreResult<Page<Welcome>> {
        common::list_welcomes(self.reads(), client_id, after, limit).await
    }

    /// Drops the client's welcomes with id <= `upto`, and the bodies no other inbox entry
    /// refers to.
    async fn delete_welcomes(&self, client_id: &str, upto: u64) -> StoreResult<()>;

    // ------------------------------------------------------------ groups

    /// Creates the group (returns true) or replaces its member list (false). Members dropped by
    /// the replacement keep read access up to the current `last_seq`; re-added ones regain full
    /// access. `UnknownClients` if a member is not registered. The caller checks ownership.
    async fn put_group(
        &self,
        owner: &str,
        group_id: &str,
        members: &[String],
        now: Millis,
    ) -> StoreResult<bool>;

    async fn get_group(&self, owner: &str, group_id: &str) -> StoreResult<Option<GroupRecord>> {
        common::get_group(self.reads(), owner, group_id).await
    }

    /// Deletes the group and its messages; false if it did not exist.
    async fn delete_group(&self, owner: &str, group_id: &str) -> StoreResult<bool>;

    /// Appends messages. Concurrent appends are gathered into one transaction (group commit,
    /// see [`batch`]), and each is answered after the commit is durable. Access and idempotency
    /// are checked inside that transaction.
    async fn append(&self, request: AppendRequest) -> StoreResult<AppendOutcome> {
        self.shared().batch.append(request).await
    }

    /// Messages with `after < seq <= upto` (no upper bound if `None`), oldest first, at most `limit`.
    async fn read_messages(
        &self,
        owner: &str,
        group_id: &str,
        after: u64,
        upto: Option<u64>,
        limit: u32,
    ) -> StoreResult<Page<Message>> {
        common::read_messages(self.reads(), owner, group_id, after, upto, limit).await
    }

    /// Reads many groups and (optionally) the reader's inbox in as few queries as the backend
    /// allows, applying access rules per group. `limit` caps the total messages returned.
    async fn sync_read(
        &self,
        reader: &str,
        cursors: &[SyncCursor],
        welcomes_after: Option<u64>,
        limit: u32,
    ) -> StoreResult<SyncRead> {
        sync::read(self, reader, cursors, welcomes_after, limit).await
    }

    /// The first step of [`sync_read`](Store::sync_read): among the followed groups that
    /// exist, those with messages after the cursor and those the reader may not read.
    async fn sync_candidates(
        &self,
        reader: &str,
        cursors: &[SyncCursor],
    ) -> StoreResult<Vec<SyncCandidate>>;

    /// The messages of all `ranges` (those with `upto > after`), tagged with the range's index,
    /// ordered by range, then seq.
    async fn read_ranges(&self, ranges: &[SyncRange]) -> StoreResult<Vec<(usize, Message)>>;

    /// Deletes messages and welcomes received before `before` (with the welcome bodies no inbox
    /// entry refers to any more), and idempotency keys older than `idempotency_before`.
    async fn prune(&self, before: Millis, idempotency_before: Millis) -> StoreResult<PruneStats>;
}

/// Opens the database named by `config.database_url`, runs the migrations, and starts the
/// append writer (and, on PostgreSQL, the LISTEN task that forwards other processes' events to
/// `notifier`).
///
/// `sqlite://PATH` (the file is created if missing) or `postgres://` / `postgresql://`.
pub(crate) async fn open(config: &Config, notifier: Notifier) -> anyhow::Result<Arc<dyn Store>> {
    let url = config.database_url.trim();
    if url.starts_with("sqlite:") {
        Ok(Arc::new(
            sqlite::SqliteStore::open(url, config, notifier).await?,
        ))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(
            postgres::PostgresStore::open(url, config, notifier).await?,
        ))
    } else {
        anyhow::bail!(
            "unsupported database URL {:?}: use sqlite://PATH or postgres://USER@HOST/DB (--database-url or DATABASE_URL)",
            redact_url(url)
        )
    }
}

// ---------------------------------------------------------------- helpers shared by backends

/// Seqs, ids and cursors are u64 in the API and BIGINT in the databases. Values from clients
/// beyond i64::MAX cannot match anything stored, so saturating keeps their meaning.
pub(crate) fn to_db(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Stored seqs and ids are never negative; treat a negative one as 0 rather than failing.
pub(crate) fn from_db(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// The ids in their first-seen order, each once.
pub(crate) fn dedup(ids: &[String]) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    ids.iter()
        .filter(|id| seen.insert(id.as_str()))
        .cloned()
        .collect()
}

/// `limit + 1` rows were asked for: trims to `limit` and tells whether there were more.
pub(crate) fn page<T>(mut items: Vec<T>, limit: u32) -> Page<T> {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let more = items.len() > limit;
    items.truncate(limit);
    Page { items, more }
}
