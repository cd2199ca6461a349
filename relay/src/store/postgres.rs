//! The PostgreSQL store: for several relay processes sharing one database.
//!
//! Ordering of seqs. Every append batch first locks the rows of the groups it writes
//! (`SELECT ... FOR NO KEY UPDATE`, in id order so two batches never deadlock), computes the
//! seqs from the locked `last_seq`, and writes `last_seq` back; the lock is held until COMMIT.
//! This is the same as `UPDATE relay_groups SET last_seq = last_seq + 1 ... RETURNING last_seq`
//! per append, in fewer statements. A second writer to the same group, in this process or
//! another, waits on the row lock and, once it gets it, reads the `last_seq` the first one
//! committed (PostgreSQL re-reads a locked row's newest version under READ COMMITTED). So
//! seq N+1 is always committed after seq N, and any snapshot that sees N+1 also sees N: a
//! reader paging with `after` never skips a message that commits later. Welcome ids get the
//! same guarantee per inbox by locking the recipients' `clients` rows before taking ids.
//!
//! Waking long polls across processes: appends and welcomes call `pg_notify` inside their
//! transaction (PostgreSQL delivers it at commit, never for a rolled-back one), and a listener
//! task in every process forwards what it hears to the local [`Notifier`]. When its LISTEN
//! connection drops, the task connects again and then wakes every long poll to read again, so
//! a NOTIFY lost in between delays no one (see [`forward_events`]).

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use dmls_api::{ClaimedKeyPackage, Message, Welcome};
use futures::{StreamExt as _, TryStreamExt as _};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use sqlx::{Postgres, SqlSafeStr as _, Transaction};
use tokio::task::JoinHandle;

use super::batch::{ApplyBatch, BatchWriter};
use super::{
    Access, AppendOutcome, AppendRequest, ClaimOutcome, ClientRecord, ClientStats, GroupRecord,
    Millis, Page, PruneStats, SYNC_WELCOMES_LIMIT, Store, StoreError, StoreEvent, StoreResult,
    SyncCandidate, SyncCursor, SyncGroupResult, SyncRange, SyncRead, assemble_sync, decode_event,
    dedup, encode_event, from_db, page, plan_sync, to_db,
};
use crate::config::{Config, redact_url};
use crate::notify::Notifier;

/// The NOTIFY channel every relay process listens on.
pub const EVENTS_CHANNEL: &str = "dmls_events";

/// `application_name` of each process's LISTEN connection (as `pg_stat_activity` shows it).
pub const LISTEN_APPLICATION_NAME: &str = "dmls-relay listen";

/// Pause between attempts to open a LISTEN connection again after an error.
const RELISTEN_DELAY: Duration = Duration::from_secs(1);

/// How long one attempt to open a LISTEN connection may wait for the server.
const LISTEN_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Most message bytes in one INSERT statement of a batch: small statements go out in one
/// socket write (see [`STATEMENT_CHUNK_BYTES`]); a single larger message gets its own statement.
const INSERT_CHUNK_BYTES: usize = STATEMENT_CHUNK_BYTES;

fn migrator() -> Migrator {
    Migrator::with_migrations(vec![Migration::new(
        1,
        "init".into(),
        MigrationType::Simple,
        include_str!("../../../migrations/postgres/0001_init.sql").into_sql_str(),
        false,
    )])
}

/// Bytes of parameters per statement for the list queries of `sync`.
///
/// sqlx 0.9.0 does not set TCP_NODELAY (transact-rs/sqlx#4335, fixed upstream after 0.9.0).
/// A statement larger than the socket's send buffer goes out in two writes, and Nagle holds the
/// second until the server's delayed ACK, about 40 ms later. Statements below this size go out
/// in one write, so a `sync` over thousands of groups runs as a few such statements in
/// parallel instead.
const STATEMENT_CHUNK_BYTES: usize = 8 * 1024;

/// How many of those statements one `sync` runs at once (each takes a pooled connection).
const SYNC_PARALLEL_QUERIES: usize = 8;

/// Splits `items` into consecutive ranges whose estimated parameter size stays below
/// [`STATEMENT_CHUNK_BYTES`] (each range holds at least one item).
fn statement_chunks<T>(items: &[T], size: impl Fn(&T) -> usize) -> Vec<std::ops::Range<usize>> {
    let mut chunks = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (i, item) in items.iter().enumerate() {
        let item_bytes = size(item);
        if i > start && bytes + item_bytes > STATEMENT_CHUNK_BYTES {
            chunks.push(start..i);
            start = i;
            bytes = 0;
        }
        bytes += item_bytes;
    }
    if start < items.len() {
        chunks.push(start..items.len());
    }
    chunks
}

pub struct PostgresStore {
    pool: PgPool,
    batch: BatchWriter,
    notifier: Notifier,
    listener: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl PostgresStore {
    /// Connects, runs the migrations (under PostgreSQL's advisory lock, so relays starting
    /// together do not race), starts listening for other processes' events and the writer.
    pub async fn open(url: &str, config: &Config, notifier: Notifier) -> anyhow::Result<Self> {
        let shown = redact_url(url);
        let options = PgConnectOptions::from_str(url).with_context(|| {
            format!(
                "invalid PostgreSQL URL {shown:?}: use postgres://USER[:PASSWORD]@HOST[:PORT]/DB"
            )
        })?;
        let pool = PgPoolOptions::new()
            .max_connections(config.db_max_connections.max(2))
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options.clone())
            .await
            .with_context(|| {
                format!(
                    "cannot connect to PostgreSQL at {shown:?}: check that the server runs and accepts connections \
                     on that host and port, that the user and password are right, and that the database exists"
                )
            })?;
        migrator()
            .run(&pool)
            .await
            .with_context(|| format!("cannot apply the database migrations to {shown:?}"))?;
        let listen_options = options.application_name(LISTEN_APPLICATION_NAME);
        let listener = listen(&listen_options)
            .await
            .with_context(|| format!("cannot LISTEN on {EVENTS_CHANNEL} at {shown:?}"))?;
        let listener = tokio::spawn(forward_events(listener, listen_options, notifier.clone()));
        let batch = BatchWriter::spawn(
            PostgresBatch { pool: pool.clone() },
            config.append_batch_max,
            notifier.clone(),
        );
        Ok(PostgresStore {
            pool,
            batch,
            notifier,
            listener: std::sync::Mutex::new(Some(listener)),
        })
    }

    /// Which of `ids` are not registered (in `ids` order).
    async fn unknown_clients(
        tx: &mut Transaction<'static, Postgres>,
        ids: &[String],
    ) -> StoreResult<Vec<String>> {
        let unknown: Vec<(String,)> = sqlx::query_as(
            "SELECT u.id FROM unnest($1::text[]) WITH ORDINALITY AS u(id, n) \
             WHERE NOT EXISTS (SELECT 1 FROM clients c WHERE c.client_id = u.id) ORDER BY u.n",
        )
        .bind(ids.to_vec())
        .fetch_all(&mut **tx)
        .await?;
        Ok(unknown.into_iter().map(|(id,)| id).collect())
    }

    /// Among the followed groups that exist, those with news and those the reader may not
    /// read: one query per chunk of cursors (see [`statement_chunks`]), run concurrently.
    async fn sync_candidates(
        &self,
        reader: &str,
        cursors: &[SyncCursor],
    ) -> StoreResult<Vec<SyncCandidate>> {
        let chunks = statement_chunks(cursors, |c| c.owner.len() + c.group_id.len() + 20);
        let reads = chunks.into_iter().map(|chunk| {
            let offset = chunk.start;
            let part = &cursors[chunk];
            async move {
                let rows: Vec<(i64, i64, i64, String, Option<i64>, bool)> = sqlx::query_as(
                    "SELECT c.n - 1, g.id, g.last_seq, g.owner, m.read_upto, m.client_id IS NOT NULL \
                     FROM unnest($1::text[], $2::text[], $3::bigint[]) \
                       WITH ORDINALITY AS c(owner, group_id, after_seq, n) \
                     JOIN relay_groups g ON g.owner = c.owner AND g.group_id = c.group_id \
                     LEFT JOIN group_members m ON m.group_ref = g.id AND m.client_id = $4 \
                     WHERE g.last_seq > c.after_seq OR (g.owner <> $4 AND m.client_id IS NULL)",
                )
                .bind(part.iter().map(|c| c.owner.clone()).collect::<Vec<_>>())
                .bind(part.iter().map(|c| c.group_id.clone()).collect::<Vec<_>>())
                .bind(part.iter().map(|c| to_db(c.after)).collect::<Vec<_>>())
                .bind(reader)
                .fetch_all(&self.pool)
                .await?;
                Ok::<_, StoreError>(
                    rows.into_iter()
                        .map(|(index, group_ref, last_seq, owner, read_upto, listed)| {
                            SyncCandidate {
                                cursor_index: offset
                                    .saturating_add(usize::try_from(index).unwrap_or(usize::MAX)),
                                group_ref,
                                last_seq: from_db(last_seq),
                                access: if owner == reader || (listed && read_upto.is_none()) {
                                    Access::Full
                                } else if let Some(upto) = read_upto {
                                    Access::ReadUpTo(from_db(upto))
                                } else {
                                    Access::None
                                },
                            }
                        })
                        .collect::<Vec<_>>(),
                )
            }
        });
        let parts: Vec<Vec<_>> = futures::stream::iter(reads)
            .buffered(SYNC_PARALLEL_QUERIES)
            .try_collect()
            .await?;
        Ok(parts.into_iter().flatten().collect())
    }

    /// The messages of all `ranges`, tagged with the range's index: one query per chunk of
    /// ranges, run concurrently.
    async fn read_ranges(&self, ranges: &[SyncRange]) -> StoreResult<Vec<(usize, Message)>> {
        let wanted: Vec<(usize, &SyncRange)> = ranges
            .iter()
            .enumerate()
            .filter(|(_, r)| r.upto > r.after)
            .collect();
        let chunks = statement_chunks(&wanted, |_| 4 * 12);
        let reads = chunks.into_iter().map(|chunk| {
            let part = &wanted[chunk];
            async move {
                let rows: Vec<(i64, i64, String, Vec<u8>, i64)> = sqlx::query_as(
                    "SELECT r.i, m.seq, m.sender, m.data, m.received_at \
                     FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[]) \
                       AS r(i, g, after_seq, upto_seq) \
                     JOIN messages m \
                       ON m.group_ref = r.g AND m.seq > r.after_seq AND m.seq <= r.upto_seq \
                     ORDER BY r.i, m.seq",
                )
                .bind(
                    part.iter()
                        .map(|(i, _)| i64::try_from(*i).unwrap_or(i64::MAX))
                        .collect::<Vec<_>>(),
                )
                .bind(part.iter().map(|(_, r)| r.group_ref).collect::<Vec<_>>())
                .bind(part.iter().map(|(_, r)| to_db(r.after)).collect::<Vec<_>>())
                .bind(part.iter().map(|(_, r)| to_db(r.upto)).collect::<Vec<_>>())
                .fetch_all(&self.pool)
                .await?;
                Ok::<_, StoreError>(
                    rows.into_iter()
                        .map(|(i, seq, sender, data, received_at)| {
                            (
                                usize::try_from(i).unwrap_or(usize::MAX),
                                message((seq, sender, data, received_at)),
                            )
                        })
                        .collect::<Vec<_>>(),
                )
            }
        });
        let parts: Vec<Vec<_>> = futures::stream::iter(reads)
            .buffered(SYNC_PARALLEL_QUERIES)
            .try_collect()
            .await?;
        Ok(parts.into_iter().flatten().collect())
    }

    async fn read_range(
        &self,
        group_ref: i64,
        after: u64,
        limit: u64,
    ) -> StoreResult<Vec<Message>> {
        let rows: Vec<(i64, String, Vec<u8>, i64)> = sqlx::query_as(
            "SELECT seq, sender, data, received_at FROM messages \
             WHERE group_ref = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .bind(group_ref)
        .bind(to_db(after))
        .bind(to_db(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(message).collect())
    }
}

fn message((seq, sender, data, received_at): (i64, String, Vec<u8>, i64)) -> Message {
    Message {
        seq: from_db(seq),
        sender,
        data: data.into(),
        received_at,
    }
}

fn welcome((id, from, data, received_at): (i64, String, Vec<u8>, i64)) -> Welcome {
    Welcome {
        id: from_db(id),
        from,
        data: data.into(),
        received_at,
    }
}

/// A fresh connection LISTENing on [`EVENTS_CHANNEL`], in a pool of its own: it holds its
/// connection for good, so it must not take one from the requests, and a pool per listener
/// means a dead connection still being closed never holds up its replacement.
async fn listen(options: &PgConnectOptions) -> Result<PgListener, sqlx::Error> {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(LISTEN_CONNECT_TIMEOUT)
        .connect_lazy_with(options.clone());
    let mut listener = PgListener::connect_with(&pool).await?;
    // When the connection is lost, `try_recv` connects again and LISTENs on the new connection
    // *before* it reports the loss with `Ok(None)` (or fails if it cannot): `forward_events`
    // relies on it. This is sqlx's default; set here so that a change of default cannot
    // silently reopen the gap.
    listener.eager_reconnect(true);
    listener.listen(EVENTS_CHANNEL).await?;
    Ok(listener)
}

/// Forwards NOTIFYs from every relay process (this one included; duplicates are harmless) to
/// the local notifier, for as long as the store is open.
///
/// While the LISTEN connection is down, NOTIFYs of other processes' commits reach nobody here.
/// So once a connection LISTENs again, this publishes [`StoreEvent::Resync`] and every waiting
/// long poll reads again. Why that misses nothing: take a commit C whose NOTIFY was lost, and a
/// long poll W waiting on this process that has not seen C. W subscribed to the notifier before
/// its read, and that read did not see C, so W subscribed before C committed. C's NOTIFY was
/// lost, so C committed before the new connection's LISTEN took effect (PostgreSQL delivers a
/// NOTIFY to every session that LISTENs when the notifying transaction commits). `Resync` is
/// published after that LISTEN returned, hence after C committed and after W subscribed: W
/// receives it, and its next read starts after C committed, so it sees C. A commit after the
/// LISTEN took effect is NOTIFYed as usual.
async fn forward_events(first: PgListener, options: PgConnectOptions, notifier: Notifier) {
    let mut listener = first;
    loop {
        match listener.try_recv().await {
            Ok(Some(notification)) => {
                if let Some(event) = decode_event(notification.payload()) {
                    notifier.publish(event);
                }
            }
            // The connection was lost, and sqlx has already connected and LISTENed again
            // (eager reconnect, see `listen`).
            Ok(None) => {
                tracing::warn!(
                    "lost the PostgreSQL LISTEN connection and opened a new one; waking every long poll to read again"
                );
                notifier.publish(StoreEvent::Resync);
            }
            Err(e) => {
                tracing::warn!(error = %e, "PostgreSQL LISTEN failed; connecting again");
                // Never call `try_recv` on this listener again: it could reconnect inside that
                // call, where nothing could wake the long polls afterwards.
                drop(listener);
                listener = relisten(&options).await;
                tracing::info!(
                    "listening to PostgreSQL again; waking every long poll to read again"
                );
                notifier.publish(StoreEvent::Resync);
            }
        }
    }
}

/// A new LISTEN connection, retried every [`RELISTEN_DELAY`] until it works.
async fn relisten(options: &PgConnectOptions) -> PgListener {
    loop {
        tokio::time::sleep(RELISTEN_DELAY).await;
        match listen(options).await {
            Ok(listener) => return listener,
            Err(e) => tracing::warn!(error = %e, "cannot LISTEN again yet; retrying in 1 s"),
        }
    }
}

/// Sends `events` when the transaction commits.
async fn notify_on_commit(
    tx: &mut Transaction<'static, Postgres>,
    events: &[StoreEvent],
) -> Result<(), sqlx::Error> {
    let payloads: Vec<String> = events.iter().filter_map(encode_event).collect();
    if payloads.is_empty() {
        return Ok(());
    }
    sqlx::query("SELECT pg_notify('dmls_events', p) FROM unnest($1::text[]) AS p")
        .bind(payloads)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// The group-commit half of the store.
struct PostgresBatch {
    pool: PgPool,
}

/// A message row of a batch, in column arrays for `unnest`.
#[derive(Default)]
struct MessageRows {
    group: Vec<i64>,
    seq: Vec<i64>,
    sender: Vec<String>,
    data: Vec<Vec<u8>>,
    received_at: Vec<i64>,
    bytes: usize,
}

impl MessageRows {
    async fn insert(&mut self, tx: &mut Transaction<'static, Postgres>) -> Result<(), sqlx::Error> {
        if self.group.is_empty() {
            return Ok(());
        }
        let rows = std::mem::take(self);
        sqlx::query(
            "INSERT INTO messages (group_ref, seq, sender, data, received_at) \
             SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::bytea[], $5::bigint[])",
        )
        .bind(rows.group)
        .bind(rows.seq)
        .bind(rows.sender)
        .bind(rows.data)
        .bind(rows.received_at)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }
}

impl ApplyBatch for PostgresBatch {
    async fn apply_batch<'a>(
        &'a self,
        batch: &'a [AppendRequest],
    ) -> Result<Vec<AppendOutcome>, sqlx::Error> {
        let mut tx = self.pool.begin().await?;

        let mut names: Vec<(&str, &str)> = Vec::new();
        let mut seen = HashSet::new();
        for req in batch {
            if seen.insert((req.owner.as_str(), req.group_id.as_str())) {
                names.push((req.owner.as_str(), req.group_id.as_str()));
            }
        }
        // Lock the groups (see the module comment): in id order, so concurrent batches that
        // touch the same groups queue instead of deadlocking.
        let locked: Vec<(i64, String, String, i64)> = sqlx::query_as(
            "SELECT g.id, g.owner, g.group_id, g.last_seq FROM relay_groups g \
             JOIN unnest($1::text[], $2::text[]) AS u(owner, group_id) \
               ON g.owner = u.owner AND g.group_id = u.group_id \
             ORDER BY g.id FOR NO KEY UPDATE OF g",
        )
        .bind(names.iter().map(|(o, _)| o.to_string()).collect::<Vec<_>>())
        .bind(names.iter().map(|(_, g)| g.to_string()).collect::<Vec<_>>())
        .fetch_all(&mut *tx)
        .await?;
        let mut groups: HashMap<(String, String), (i64, i64, i64)> = locked
            .into_iter()
            .map(|(id, owner, group_id, last_seq)| ((owner, group_id), (id, last_seq, last_seq)))
            .collect();
        let group_refs: Vec<i64> = groups.values().map(|(id, _, _)| *id).collect();

        let senders: Vec<String> =
            dedup(&batch.iter().map(|r| r.sender.clone()).collect::<Vec<_>>());
        let posters: HashSet<(i64, String)> = sqlx::query_as::<_, (i64, String)>(
            "SELECT group_ref, client_id FROM group_members \
             WHERE read_upto IS NULL AND group_ref = ANY($1) AND client_id = ANY($2)",
        )
        .bind(group_refs)
        .bind(senders)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .collect();

        let mut keyed_group = Vec::new();
        let mut keyed_sender = Vec::new();
        let mut keyed_key = Vec::new();
        for req in batch {
            if let (Some((key, _)), Some((id, _, _))) = (
                &req.idempotency,
                groups.get(&(req.owner.clone(), req.group_id.clone())),
            ) {
                keyed_group.push(*id);
                keyed_sender.push(req.sender.clone());
                keyed_key.push(key.clone());
            }
        }
        // (group, sender, key) -> (body hash, seq): what was stored before and in this batch.
        let mut keys: HashMap<(i64, String, String), (Vec<u8>, i64)> = HashMap::new();
        if !keyed_group.is_empty() {
            let rows: Vec<(i64, String, String, Vec<u8>, i64)> = sqlx::query_as(
                "SELECT i.group_ref, i.sender, i.idem_key, i.body_hash, i.seq FROM idempotency_keys i \
                 JOIN unnest($1::bigint[], $2::text[], $3::text[]) AS u(g, s, k) \
                   ON i.group_ref = u.g AND i.sender = u.s AND i.idem_key = u.k",
            )
            .bind(keyed_group)
            .bind(keyed_sender)
            .bind(keyed_key)
            .fetch_all(&mut *tx)
            .await?;
            keys.extend(
                rows.into_iter()
                    .map(|(g, s, k, h, seq)| ((g, s, k), (h, seq))),
            );
        }

        let mut outcomes = Vec::with_capacity(batch.len());
        let mut messages = MessageRows::default();
        let mut new_keys: Vec<(i64, String, String, Vec<u8>, i64, i64)> = Vec::new();
        for req in batch {
            let Some((id, _, last_seq)) =
                groups.get_mut(&(req.owner.clone(), req.group_id.clone()))
            else {
                outcomes.push(AppendOutcome::NoGroup);
                continue;
            };
            if req.sender != req.owner && !posters.contains(&(*id, req.sender.clone())) {
                outcomes.push(AppendOutcome::Forbidden);
                continue;
            }
            if let Some((key, body_hash)) = &req.idempotency
                && let Some((seen_hash, seq)) = keys.get(&(*id, req.sender.clone(), key.clone()))
            {
                outcomes.push(if seen_hash.as_slice() == body_hash.as_slice() {
                    AppendOutcome::Duplicate(from_db(*seq))
                } else {
                    AppendOutcome::IdempotencyConflict
                });
                continue;
            }
            *last_seq += 1;
            if messages.bytes + req.data.len() > INSERT_CHUNK_BYTES {
                messages.insert(&mut tx).await?;
            }
            messages.group.push(*id);
            messages.seq.push(*last_seq);
            messages.sender.push(req.sender.clone());
            messages.data.push(req.data.clone());
            messages.received_at.push(req.received_at);
            messages.bytes += req.data.len();
            if let Some((key, body_hash)) = &req.idempotency {
                keys.insert(
                    (*id, req.sender.clone(), key.clone()),
                    (body_hash.to_vec(), *last_seq),
                );
                new_keys.push((
                    *id,
                    req.sender.clone(),
                    key.clone(),
                    body_hash.to_vec(),
                    *last_seq,
                    req.received_at,
                ));
            }
            outcomes.push(AppendOutcome::Stored(from_db(*last_seq)));
        }
        messages.insert(&mut tx).await?;

        let mut touched_ids = Vec::new();
        let mut touched_seqs = Vec::new();
        let mut events = Vec::new();
        for ((owner, group_id), (id, before, after)) in &groups {
            if after > before {
                touched_ids.push(*id);
                touched_seqs.push(*after);
                events.push(StoreEvent::Group {
                    owner: owner.clone(),
                    group_id: group_id.clone(),
                });
            }
        }
        if !touched_ids.is_empty() {
            sqlx::query(
                "UPDATE relay_groups g SET last_seq = u.last_seq \
                 FROM unnest($1::bigint[], $2::bigint[]) AS u(id, last_seq) WHERE g.id = u.id",
            )
            .bind(touched_ids)
            .bind(touched_seqs)
            .execute(&mut *tx)
            .await?;
        }
        if !new_keys.is_empty() {
            let mut g = Vec::new();
            let mut s = Vec::new();
            let mut k = Vec::new();
            let mut h = Vec::new();
            let mut q = Vec::new();
            let mut t = Vec::new();
            for (group, sender, key, hash, seq, at) in new_keys {
                g.push(group);
                s.push(sender);
                k.push(key);
                h.push(hash);
                q.push(seq);
                t.push(at);
            }
            sqlx::query(
                "INSERT INTO idempotency_keys (group_ref, sender, idem_key, body_hash, seq, created_at) \
                 SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::bytea[], $5::bigint[], $6::bigint[])",
            )
            .bind(g)
            .bind(s)
            .bind(k)
            .bind(h)
            .bind(q)
            .bind(t)
            .execute(&mut *tx)
            .await?;
        }
        notify_on_commit(&mut tx, &events).await?;
        tx.commit().await?;
        Ok(outcomes)
    }
}

#[async_trait]
impl Store for PostgresStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    fn pool_stats(&self) -> (u32, u32) {
        let idle = u32::try_from(self.pool.num_idle()).unwrap_or(u32::MAX);
        (self.pool.size().saturating_sub(idle), idle)
    }

    async fn close(&self) {
        self.batch.close().await;
        let listener = match self.listener.lock() {
            Ok(mut guard) => guard.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some(listener) = listener {
            listener.abort();
        }
        self.pool.close().await;
    }

    async fn create_client(
        &self,
        client_id: &str,
        token_hash: [u8; 32],
        now: Millis,
    ) -> StoreResult<()> {
        let done = sqlx::query(
            "INSERT INTO clients (client_id, token_hash, created_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        )
        .bind(client_id)
        .bind(&token_hash[..])
        .bind(now)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            Err(StoreError::Conflict)
        } else {
            Ok(())
        }
    }

    async fn client_by_token_hash(
        &self,
        token_hash: [u8; 32],
    ) -> StoreResult<Option<ClientRecord>> {
        let row: Option<(String, Vec<u8>)> =
            sqlx::query_as("SELECT client_id, token_hash FROM clients WHERE token_hash = $1")
                .bind(&token_hash[..])
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.and_then(|(client_id, hash)| {
            Some(ClientRecord {
                client_id,
                token_hash: <[u8; 32]>::try_from(hash.as_slice()).ok()?,
            })
        }))
    }

    async fn client_stats(&self, client_id: &str) -> StoreResult<Option<ClientStats>> {
        let row: Option<(i64, i64, bool)> = sqlx::query_as(
            "SELECT c.created_at, (SELECT COUNT(*) FROM key_packages k WHERE k.client_id = c.client_id), \
             c.last_resort IS NOT NULL FROM clients c WHERE c.client_id = $1",
        )
        .bind(client_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(
            row.map(|(created_at, available, has_last_resort)| ClientStats {
                client_id: client_id.to_string(),
                created_at,
                key_packages_available: from_db(available),
                has_last_resort,
            }),
        )
    }

    async fn delete_client(&self, client_id: &str) -> StoreResult<()> {
        // Foreign keys cascade to key packages, welcomes, owned groups (with their messages,
        // members and idempotency keys), memberships and the client's idempotency keys.
        let mut tx = self.pool.begin().await?;
        // Lock the owned groups first, in id order like append batches do, so the cascade
        // cannot deadlock with a batch writing to two of them.
        sqlx::query("SELECT 1 FROM relay_groups WHERE owner = $1 ORDER BY id FOR UPDATE")
            .bind(client_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM clients WHERE client_id = $1")
            .bind(client_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn add_key_packages(
        &self,
        client_id: &str,
        key_packages: Vec<Vec<u8>>,
        last_resort: Option<Vec<u8>>,
        max_stock: u64,
        now: Millis,
    ) -> StoreResult<u64> {
        let mut tx = self.pool.begin().await?;
        // The client's row lock serialises concurrent uploads, so two of them cannot both pass
        // the stock check.
        let exists: Option<(i32,)> =
            sqlx::query_as("SELECT 1 FROM clients WHERE client_id = $1 FOR NO KEY UPDATE")
                .bind(client_id)
                .fetch_optional(&mut *tx)
                .await?;
        if exists.is_none() {
            return Err(StoreError::UnknownClients(vec![client_id.to_string()]));
        }
        let (stock,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM key_packages WHERE client_id = $1")
                .bind(client_id)
                .fetch_one(&mut *tx)
                .await?;
        let total = from_db(stock).saturating_add(key_packages.len() as u64);
        // Only a growing stock can exceed the limit (it may have been lowered since).
        if !key_packages.is_empty() && total > max_stock {
            return Err(StoreError::TooManyKeyPackages { limit: max_stock });
        }
        if !key_packages.is_empty() {
            sqlx::query(
                "INSERT INTO key_packages (client_id, data, created_at) \
                 SELECT $1, u.d, $3 FROM unnest($2::bytea[]) WITH ORDINALITY AS u(d, n) ORDER BY u.n",
            )
            .bind(client_id)
            .bind(key_packages)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        if let Some(lr) = last_resort {
            sqlx::query("UPDATE clients SET last_resort = $1 WHERE client_id = $2")
                .bind(lr)
                .bind(client_id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(total)
    }

    async fn claim_key_packages(&self, client_ids: &[String]) -> StoreResult<ClaimOutcome> {
        let ids = dedup(client_ids);
        if ids.is_empty() {
            return Ok(ClaimOutcome {
                key_packages: Vec::new(),
                missing: Vec::new(),
            });
        }
        let mut tx = self.pool.begin().await?;
        let unknown = Self::unknown_clients(&mut tx, &ids).await?;
        if !unknown.is_empty() {
            return Err(StoreError::UnknownClients(unknown));
        }
        // Each client's oldest package that no concurrent claim has locked: two claimers never
        // get the same one, and neither waits for the other.
        let taken: Vec<(String, Vec<u8>)> = sqlx::query_as(
            "DELETE FROM key_packages k USING ( \
               SELECT p.id FROM unnest($1::text[]) AS c(client_id) \
               CROSS JOIN LATERAL ( \
                 SELECT kp.id FROM key_packages kp WHERE kp.client_id = c.client_id \
                 ORDER BY kp.id LIMIT 1 FOR UPDATE SKIP LOCKED) p \
             ) s WHERE k.id = s.id RETURNING k.client_id, k.data",
        )
        .bind(ids.clone())
        .fetch_all(&mut *tx)
        .await?;
        let mut taken: HashMap<String, Vec<u8>> = taken.into_iter().collect();
        let without: Vec<String> = ids
            .iter()
            .filter(|id| !taken.contains_key(*id))
            .cloned()
            .collect();
        let mut last_resorts: HashMap<String, Vec<u8>> = HashMap::new();
        if !without.is_empty() {
            let rows: Vec<(String, Vec<u8>)> = sqlx::query_as(
                "SELECT client_id, last_resort FROM clients WHERE client_id = ANY($1) AND last_resort IS NOT NULL",
            )
            .bind(without)
            .fetch_all(&mut *tx)
            .await?;
            last_resorts.extend(rows);
        }
        tx.commit().await?;
        let mut outcome = ClaimOutcome {
            key_packages: Vec::new(),
            missing: Vec::new(),
        };
        for id in ids {
            if let Some(data) = taken.remove(&id) {
                outcome.key_packages.push(ClaimedKeyPackage {
                    client_id: id,
                    key_package: data.into(),
                    last_resort: false,
                });
            } else if let Some(data) = last_resorts.remove(&id) {
                outcome.key_packages.push(ClaimedKeyPackage {
                    client_id: id,
                    key_package: data.into(),
                    last_resort: true,
                });
            } else {
                outcome.missing.push(id);
            }
        }
        Ok(outcome)
    }

    async fn post_welcomes(
        &self,
        from: &str,
        welcomes: Vec<(String, Vec<u8>)>,
        now: Millis,
    ) -> StoreResult<Vec<u64>> {
        if welcomes.is_empty() {
            return Ok(Vec::new());
        }
        let mut recipients = dedup(
            &welcomes
                .iter()
                .map(|(to, _)| to.clone())
                .collect::<Vec<_>>(),
        );
        let mut tx = self.pool.begin().await?;
        let unknown = Self::unknown_clients(&mut tx, &recipients).await?;
        if !unknown.is_empty() {
            return Err(StoreError::UnknownClients(unknown));
        }
        // Lock the inboxes before taking ids (see the module comment), in a fixed order so two
        // posts to the same recipients cannot deadlock.
        recipients.sort();
        sqlx::query(
            "SELECT 1 FROM clients WHERE client_id = ANY($1) ORDER BY client_id FOR NO KEY UPDATE",
        )
        .bind(recipients.clone())
        .execute(&mut *tx)
        .await?;
        let mut ids: Vec<(i64,)> = sqlx::query_as(
            "SELECT nextval(pg_get_serial_sequence('welcomes', 'id')) FROM generate_series(1, $1)",
        )
        .bind(i64::try_from(welcomes.len()).unwrap_or(i64::MAX))
        .fetch_all(&mut *tx)
        .await?;
        ids.sort_unstable();
        let ids: Vec<i64> = ids.into_iter().map(|(id,)| id).collect();
        let (to, data): (Vec<String>, Vec<Vec<u8>>) = welcomes.into_iter().unzip();
        sqlx::query(
            "INSERT INTO welcomes (id, recipient, sender, data, received_at) \
             SELECT u.id, u.recipient, $4, u.data, $5 FROM unnest($1::bigint[], $2::text[], $3::bytea[]) AS u(id, recipient, data)",
        )
        .bind(ids.clone())
        .bind(to)
        .bind(data)
        .bind(from)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let events: Vec<StoreEvent> = recipients
            .iter()
            .map(|client_id| StoreEvent::Inbox {
                client_id: client_id.clone(),
            })
            .collect();
        notify_on_commit(&mut tx, &events).await?;
        tx.commit().await?;
        for event in events {
            self.notifier.publish(event);
        }
        Ok(ids.into_iter().map(from_db).collect())
    }

    async fn list_welcomes(
        &self,
        client_id: &str,
        after: u64,
        limit: u32,
    ) -> StoreResult<Page<Welcome>> {
        let rows: Vec<(i64, String, Vec<u8>, i64)> = sqlx::query_as(
            "SELECT id, sender, data, received_at FROM welcomes WHERE recipient = $1 AND id > $2 ORDER BY id LIMIT $3",
        )
        .bind(client_id)
        .bind(to_db(after))
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.pool)
        .await?;
        Ok(page(rows.into_iter().map(welcome).collect(), limit))
    }

    async fn delete_welcomes(&self, client_id: &str, upto: u64) -> StoreResult<()> {
        sqlx::query("DELETE FROM welcomes WHERE recipient = $1 AND id <= $2")
            .bind(client_id)
            .bind(to_db(upto))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn put_group(
        &self,
        owner: &str,
        group_id: &str,
        members: &[String],
        now: Millis,
    ) -> StoreResult<bool> {
        let members = dedup(members);
        let mut everyone = members.clone();
        everyone.push(owner.to_string());
        let mut tx = self.pool.begin().await?;
        let unknown = Self::unknown_clients(&mut tx, &dedup(&everyone)).await?;
        if !unknown.is_empty() {
            return Err(StoreError::UnknownClients(unknown));
        }
        let created = sqlx::query(
            "INSERT INTO relay_groups (owner, group_id, last_seq, created_at) VALUES ($1, $2, 0, $3) \
             ON CONFLICT (owner, group_id) DO NOTHING",
        )
        .bind(owner)
        .bind(group_id)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        // The row lock orders this change against append batches: appends committed before it
        // are within a dropped member's reach, later ones see the new member list.
        let (group_ref, last_seq): (i64, i64) = sqlx::query_as(
            "SELECT id, last_seq FROM relay_groups WHERE owner = $1 AND group_id = $2 FOR NO KEY UPDATE",
        )
        .bind(owner)
        .bind(group_id)
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE group_members SET read_upto = $1, ordinal = NULL \
             WHERE group_ref = $2 AND read_upto IS NULL AND NOT (client_id = ANY($3))",
        )
        .bind(last_seq)
        .bind(group_ref)
        .bind(members.clone())
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO group_members (group_ref, client_id, ordinal, read_upto) \
             SELECT $1, u.m, u.n, NULL FROM unnest($2::text[]) WITH ORDINALITY AS u(m, n) \
             ON CONFLICT (group_ref, client_id) DO UPDATE SET ordinal = EXCLUDED.ordinal, read_upto = NULL",
        )
        .bind(group_ref)
        .bind(members)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(created)
    }

    async fn get_group(&self, owner: &str, group_id: &str) -> StoreResult<Option<GroupRecord>> {
        let group: Option<(i64, i64, i64)> = sqlx::query_as(
            "SELECT id, last_seq, created_at FROM relay_groups WHERE owner = $1 AND group_id = $2",
        )
        .bind(owner)
        .bind(group_id)
        .fetch_optional(&self.pool)
        .await?;
        let Some((group_ref, last_seq, created_at)) = group else {
            return Ok(None);
        };
        let rows: Vec<(String, Option<i64>)> = sqlx::query_as(
            "SELECT client_id, read_upto FROM group_members WHERE group_ref = $1 \
             ORDER BY ordinal IS NULL, ordinal, client_id",
        )
        .bind(group_ref)
        .fetch_all(&self.pool)
        .await?;
        let mut record = GroupRecord {
            owner: owner.to_string(),
            group_id: group_id.to_string(),
            members: Vec::new(),
            former_members: Vec::new(),
            last_seq: from_db(last_seq),
            created_at,
        };
        for (client_id, read_upto) in rows {
            match read_upto {
                None => record.members.push(client_id),
                Some(upto) => record.former_members.push((client_id, from_db(upto))),
            }
        }
        Ok(Some(record))
    }

    async fn delete_group(&self, owner: &str, group_id: &str) -> StoreResult<bool> {
        // Messages, members and idempotency keys go with it (ON DELETE CASCADE).
        let done = sqlx::query("DELETE FROM relay_groups WHERE owner = $1 AND group_id = $2")
            .bind(owner)
            .bind(group_id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn append(&self, request: AppendRequest) -> StoreResult<AppendOutcome> {
        self.batch.append(request).await
    }

    async fn read_messages(
        &self,
        owner: &str,
        group_id: &str,
        after: u64,
        upto: Option<u64>,
        limit: u32,
    ) -> StoreResult<Page<Message>> {
        let rows: Vec<(i64, String, Vec<u8>, i64)> = sqlx::query_as(
            "SELECT m.seq, m.sender, m.data, m.received_at FROM relay_groups g \
             JOIN messages m ON m.group_ref = g.id \
             WHERE g.owner = $1 AND g.group_id = $2 AND m.seq > $3 AND m.seq <= $4 ORDER BY m.seq LIMIT $5",
        )
        .bind(owner)
        .bind(group_id)
        .bind(to_db(after))
        .bind(upto.map_or(i64::MAX, to_db))
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.pool)
        .await?;
        Ok(page(rows.into_iter().map(message).collect(), limit))
    }

    async fn sync_read(
        &self,
        reader: &str,
        cursors: &[SyncCursor],
        welcomes_after: Option<u64>,
        limit: u32,
    ) -> StoreResult<SyncRead> {
        let mut groups = Vec::new();
        if !cursors.is_empty() {
            let candidates = self.sync_candidates(reader, cursors).await?;
            let (forbidden, ranges) = plan_sync(cursors, candidates, limit);
            let messages = self.read_ranges(&ranges).await?;
            let (mut found, pruned) = assemble_sync(&ranges, messages);
            // Ranges whose messages were all pruned: read on past the gap, one by one (rare).
            for i in pruned {
                let Some(range) = ranges.get(i) else { continue };
                let messages = self
                    .read_range(range.group_ref, range.after, range.upto - range.after)
                    .await?;
                if let Some(last) = messages.last() {
                    let more = last.seq < range.readable_upto;
                    found.push(SyncGroupResult::Messages {
                        cursor_index: range.cursor_index,
                        messages,
                        more,
                    });
                }
            }
            groups = found;
            groups.extend(forbidden);
            groups.sort_by_key(|g| match g {
                SyncGroupResult::Messages { cursor_index, .. }
                | SyncGroupResult::Forbidden { cursor_index } => *cursor_index,
            });
        }
        let welcomes = match welcomes_after {
            Some(after) => Some(
                self.list_welcomes(reader, after, SYNC_WELCOMES_LIMIT)
                    .await?,
            ),
            None => None,
        };
        Ok(SyncRead { groups, welcomes })
    }

    async fn prune(&self, before: Millis, idempotency_before: Millis) -> StoreResult<PruneStats> {
        // PostgreSQL's MVCC lets appends go on during large deletes, so no chunking.
        let messages = sqlx::query("DELETE FROM messages WHERE received_at < $1")
            .bind(before)
            .execute(&self.pool)
            .await?;
        let welcomes = sqlx::query("DELETE FROM welcomes WHERE received_at < $1")
            .bind(before)
            .execute(&self.pool)
            .await?;
        let keys = sqlx::query("DELETE FROM idempotency_keys WHERE created_at < $1")
            .bind(idempotency_before)
            .execute(&self.pool)
            .await?;
        Ok(PruneStats {
            messages: messages.rows_affected(),
            welcomes: welcomes.rows_affected(),
            idempotency_keys: keys.rows_affected(),
        })
    }
}
