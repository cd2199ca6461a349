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
//! - An append with an idempotency key that was seen before (same group, same sender) returns the
//!   first seq and stores nothing; with another body it is a conflict.

pub mod batch;
pub mod postgres;
pub mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;
use dmls_api::{ClaimedKeyPackage, Message, Welcome};

use crate::config::{Config, redact_url};
use crate::notify::Notifier;

/// What the store can fail with. Handlers map these to HTTP answers.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The thing to create exists already (client id taken).
    #[error("already exists")]
    Conflict,
    /// These client ids are not registered.
    #[error("unknown clients: {0:?}")]
    UnknownClients(Vec<String>),
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

pub type StoreResult<T> = Result<T, StoreError>;

/// Milliseconds since the Unix epoch, as stored in `created_at` and `received_at`.
pub type Millis = i64;

/// A registered client, found by its token hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientRecord {
    pub client_id: String,
    /// SHA-256 of the bearer token, compared in constant time by the caller.
    pub token_hash: [u8; 32],
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientStats {
    pub client_id: String,
    pub created_at: Millis,
    pub key_packages_available: u64,
    pub has_last_resort: bool,
}

/// Result of a claim: one entry per client id that had a package, and the ids that had none.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimOutcome {
    pub key_packages: Vec<ClaimedKeyPackage>,
    pub missing: Vec<String>,
}

/// A group with its access list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRecord {
    pub owner: String,
    pub group_id: String,
    /// Current members (may read and post), in the order the owner gave them.
    pub members: Vec<String>,
    /// Clients dropped from the member list, each with the last seq it may still read.
    pub former_members: Vec<(String, u64)>,
    pub last_seq: u64,
    pub created_at: Millis,
}

/// What a client may do in a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Owner or current member: read everything, post.
    Full,
    /// Dropped member: read messages up to and including this seq, no posting.
    ReadUpTo(u64),
    None,
}

impl GroupRecord {
    pub fn access(&self, client_id: &str) -> Access {
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
pub struct AppendRequest {
    pub owner: String,
    pub group_id: String,
    pub sender: String,
    pub data: Vec<u8>,
    /// `Idempotency-Key` with the SHA-256 of the body, if the request carried one.
    pub idempotency: Option<(String, [u8; 32])>,
    pub received_at: Millis,
}

/// The answer to one append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendOutcome {
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
}

/// One page of a cursor read.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub more: bool,
}

/// One group of a `sync` read, with the reader's cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncCursor {
    pub owner: String,
    pub group_id: String,
    pub after: u64,
}

/// What a `sync` read found for one group.
#[derive(Debug, Clone, PartialEq)]
pub enum SyncGroupResult {
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
pub struct SyncRead {
    /// Only groups with news or forbidden ones; groups that do not exist or have nothing new are
    /// left out.
    pub groups: Vec<SyncGroupResult>,
    /// `None` when the inbox was not asked for.
    pub welcomes: Option<Page<Welcome>>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PruneStats {
    pub messages: u64,
    pub welcomes: u64,
    pub idempotency_keys: u64,
}

/// Everything the relay stores. Implementations are cheap to share (`Arc<dyn Store>`).
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// `"sqlite"` or `"postgres"`, for `/` and `/metrics`.
    fn backend(&self) -> &'static str;

    /// Does the database answer? (`/readyz`)
    async fn ping(&self) -> StoreResult<()>;

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
    ) -> StoreResult<()>;

    /// The client whose token hashes to `token_hash`, if any.
    async fn client_by_token_hash(&self, token_hash: [u8; 32])
    -> StoreResult<Option<ClientRecord>>;

    async fn client_stats(&self, client_id: &str) -> StoreResult<Option<ClientStats>>;

    /// Deletes the account, its key packages, its welcome inbox, the groups it owns with their
    /// messages, and its idempotency keys. Its membership in others' groups goes too.
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
    async fn claim_key_packages(&self, client_ids: &[String]) -> StoreResult<ClaimOutcome>;

    // ------------------------------------------------------------ welcomes

    /// Stores all welcomes or none; returns their ids in order. `UnknownClients` names unknown
    /// recipients.
    async fn post_welcomes(
        &self,
        from: &str,
        welcomes: Vec<(String, Vec<u8>)>,
        now: Millis,
    ) -> StoreResult<Vec<u64>>;

    async fn list_welcomes(
        &self,
        client_id: &str,
        after: u64,
        limit: u32,
    ) -> StoreResult<Page<Welcome>>;

    /// Drops the client's welcomes with id <= `upto`.
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

    async fn get_group(&self, owner: &str, group_id: &str) -> StoreResult<Option<GroupRecord>>;

    /// Deletes the group and its messages; false if it did not exist.
    async fn delete_group(&self, owner: &str, group_id: &str) -> StoreResult<bool>;

    /// Appends messages. Implementations gather concurrent appends into one transaction (group
    /// commit, see [`batch`]) and answer each after the commit is durable. Access and idempotency
    /// are checked inside that transaction.
    async fn append(&self, request: AppendRequest) -> StoreResult<AppendOutcome>;

    /// Messages with `after < seq <= upto` (no upper bound if `None`), oldest first, at most `limit`.
    async fn read_messages(
        &self,
        owner: &str,
        group_id: &str,
        after: u64,
        upto: Option<u64>,
        limit: u32,
    ) -> StoreResult<Page<Message>>;

    /// Reads many groups and (optionally) the reader's inbox in as few queries as the backend
    /// allows, applying access rules per group. `limit` caps the total messages returned.
    async fn sync_read(
        &self,
        reader: &str,
        cursors: &[SyncCursor],
        welcomes_after: Option<u64>,
        limit: u32,
    ) -> StoreResult<SyncRead>;

    /// Deletes messages and welcomes received before `before`, and idempotency keys older than
    /// `idempotency_before`.
    async fn prune(&self, before: Millis, idempotency_before: Millis) -> StoreResult<PruneStats>;
}

/// Something new was stored: the notifier wakes long polls that wait for it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum StoreEvent {
    /// A message was appended to `{owner}/{group_id}`.
    Group { owner: String, group_id: String },
    /// A welcome arrived in this client's inbox.
    Inbox { client_id: String },
    /// Events may have been missed (the PostgreSQL LISTEN connection was lost and is back):
    /// anything may have changed, so every waiter reads again. Never sent between processes.
    Resync,
}

/// Opens the database named by `config.database_url`, runs the migrations, and starts the
/// append writer (and, on PostgreSQL, the LISTEN task that forwards other processes' events to
/// `notifier`).
///
/// `sqlite://PATH` (the file is created if missing) or `postgres://` / `postgresql://`.
pub async fn open(config: &Config, notifier: Notifier) -> anyhow::Result<Arc<dyn Store>> {
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

/// How many welcomes a `sync` answer carries at most (the inbox pages on in the next sync).
pub(crate) const SYNC_WELCOMES_LIMIT: u32 = dmls_api::limits::PAGE_LIMIT_DEFAULT;

/// A followed group that exists, as the first `sync` query found it.
pub(crate) struct SyncCandidate {
    pub cursor_index: usize,
    pub group_ref: i64,
    pub last_seq: u64,
    pub access: Access,
}

/// A range of one group's messages that a `sync` answer will carry.
pub(crate) struct SyncRange {
    pub cursor_index: usize,
    pub group_ref: i64,
    pub after: u64,
    /// Highest seq to read in this answer (`after` + its share of the limit).
    pub upto: u64,
    /// Highest seq the reader may read now; more exist if `upto` is below it.
    pub readable_upto: u64,
}

/// Decides, without reading messages, what a `sync` answer holds: forbidden groups, and for
/// groups with news a seq range each, in cursor order, sharing `limit` between them.
///
/// Seqs are gap-free (only pruning removes old messages), so `last_seq - after` bounds the
/// messages a group has after the cursor and the ranges can be read in one query.
pub(crate) fn plan_sync(
    reader_cursors: &[SyncCursor],
    mut candidates: Vec<SyncCandidate>,
    limit: u32,
) -> (Vec<SyncGroupResult>, Vec<SyncRange>) {
    candidates.sort_by_key(|c| c.cursor_index);
    let mut remaining = u64::from(limit);
    let mut forbidden = Vec::new();
    let mut ranges = Vec::new();
    for c in candidates {
        let Some(cursor) = reader_cursors.get(c.cursor_index) else {
            continue;
        };
        let readable_upto = match c.access {
            Access::Full => c.last_seq,
            Access::ReadUpTo(upto) => c.last_seq.min(upto),
            Access::None => {
                forbidden.push(SyncGroupResult::Forbidden {
                    cursor_index: c.cursor_index,
                });
                continue;
            }
        };
        if readable_upto <= cursor.after {
            continue;
        }
        let take = (readable_upto - cursor.after).min(remaining);
        remaining -= take;
        ranges.push(SyncRange {
            cursor_index: c.cursor_index,
            group_ref: c.group_ref,
            after: cursor.after,
            upto: cursor.after + take,
            readable_upto,
        });
    }
    (forbidden, ranges)
}

/// Puts the messages read for `ranges` (ordered by range, then seq; `range_index` is the
/// position in `ranges`) into the answer. Ranges without rows are returned for a fallback read
/// (their messages were pruned) unless their share of the limit was zero.
pub(crate) fn assemble_sync(
    ranges: &[SyncRange],
    rows: Vec<(usize, Message)>,
) -> (Vec<SyncGroupResult>, Vec<usize>) {
    let mut per_range: Vec<Vec<Message>> = ranges.iter().map(|_| Vec::new()).collect();
    for (i, m) in rows {
        if let Some(v) = per_range.get_mut(i) {
            v.push(m);
        }
    }
    let mut groups = Vec::new();
    let mut empty = Vec::new();
    for (i, (range, messages)) in ranges.iter().zip(per_range).enumerate() {
        if messages.is_empty() && range.upto > range.after {
            empty.push(i);
            continue;
        }
        let last = messages.last().map_or(range.after, |m| m.seq);
        groups.push(SyncGroupResult::Messages {
            cursor_index: range.cursor_index,
            messages,
            more: last < range.readable_upto,
        });
    }
    (groups, empty)
}

/// The payload of a PostgreSQL NOTIFY, and of nothing else: `["g", owner, group_id]` or
/// `["i", client_id]`. `None` for [`StoreEvent::Resync`], which each process raises for itself.
pub(crate) fn encode_event(event: &StoreEvent) -> Option<String> {
    let parts: Vec<&str> = match event {
        StoreEvent::Group { owner, group_id } => vec!["g", owner, group_id],
        StoreEvent::Inbox { client_id } => vec!["i", client_id],
        StoreEvent::Resync => return None,
    };
    serde_json::to_string(&parts).ok()
}

pub(crate) fn decode_event(payload: &str) -> Option<StoreEvent> {
    let parts: Vec<String> = serde_json::from_str(payload).ok()?;
    match parts.as_slice() {
        [kind, owner, group_id] if kind == "g" => Some(StoreEvent::Group {
            owner: owner.clone(),
            group_id: group_id.clone(),
        }),
        [kind, client_id] if kind == "i" => Some(StoreEvent::Inbox {
            client_id: client_id.clone(),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_survive_the_notify_payload() {
        for e in [
            StoreEvent::Group {
                owner: "alice".into(),
                group_id: "ab".into(),
            },
            StoreEvent::Inbox {
                client_id: "bob".into(),
            },
        ] {
            assert_eq!(encode_event(&e).as_deref().and_then(decode_event), Some(e));
        }
        assert_eq!(encode_event(&StoreEvent::Resync), None);
        assert_eq!(decode_event("nonsense"), None);
        assert_eq!(decode_event(r#"["r"]"#), None);
    }

    #[test]
    fn sync_limit_is_shared_in_cursor_order() {
        let cursors: Vec<SyncCursor> = (0..3)
            .map(|i| SyncCursor {
                owner: "o".into(),
                group_id: format!("{i:02x}"),
                after: 5,
            })
            .collect();
        let candidates = vec![
            SyncCandidate {
                cursor_index: 2,
                group_ref: 3,
                last_seq: 50,
                access: Access::Full,
            },
            SyncCandidate {
                cursor_index: 0,
                group_ref: 1,
                last_seq: 8,
                access: Access::Full,
            },
            SyncCandidate {
                cursor_index: 1,
                group_ref: 2,
                last_seq: 9,
                access: Access::None,
            },
        ];
        let (forbidden, ranges) = plan_sync(&cursors, candidates, 10);
        assert_eq!(
            forbidden,
            vec![SyncGroupResult::Forbidden { cursor_index: 1 }]
        );
        assert_eq!(ranges.len(), 2);
        assert_eq!((ranges[0].after, ranges[0].upto), (5, 8));
        assert_eq!(
            (ranges[1].after, ranges[1].upto, ranges[1].readable_upto),
            (5, 12, 50)
        );
    }
}
