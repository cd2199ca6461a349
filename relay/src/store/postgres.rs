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
//! Welcome bodies (one per welcome, shared by its recipients' inbox entries) are deleted once no
//! entry refers to them. Whoever deletes entries checks their bodies in a statement of its own
//! *after* its deletion committed: of two recipients deleting entries of one body concurrently,
//! the later commit's check starts after both commits and sees no entry left, so no body is
//! left behind without row locks (a check inside the deleting transaction could miss the other
//! deletion). No new entry ever refers to an existing body. Pruning also sweeps every
//! unreferenced body, which collects one left over by a relay stopped between the two steps.
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
use dmls_api::Message;
use futures::{StreamExt as _, TryStreamExt as _};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgListener, PgPool, PgPoolOptions};
use tokio::task::JoinHandle;

use super::batch::{
    self, ApplyBatch, BatchGroup, BatchWriter, GroupName, Lookups, NewMessage, NewUsage, Usage,
};
use super::common::{self, Conn, RangeMessageRow};
use super::migrations::{self, migrator};
use super::sync::{self, SyncCandidate, SyncRange};
use super::{
    AppendOutcome, AppendRequest, ClaimOutcome, DailyQuota, Millis, NewWelcome, PruneStats, Shared,
    Store, StoreError, StoreResult, SyncCursor, dedup, from_db, to_db, utc_day,
};
use crate::config::{Config, redact_url};
use crate::notify::{Notifier, StoreEvent};

/// The NOTIFY channel every relay process listens on.
const EVENTS_CHANNEL: &str = "dmls_events";

/// `application_name` of each process's LISTEN connection (as `pg_stat_activity` shows it).
pub const LISTEN_APPLICATION_NAME: &str = "dmls-relay listen";

/// Pause between attempts to open a LISTEN connection again after an error.
const RELISTEN_DELAY: Duration = Duration::from_secs(1);

/// How long one attempt to open a LISTEN connection may wait for the server.
const LISTEN_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Bytes of parameters per statement for the list queries of `sync`, and of message data per
/// INSERT of an append batch (a single larger message gets its own statement).
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

pub(crate) struct PostgresStore {
    pool: PgPool,
    batch: BatchWriter,
    notifier: Notifier,
    listener: std::sync::Mutex<Option<JoinHandle<()>>>,
    quota: DailyQuota,
}

impl PostgresStore {
    /// Connects, runs the migrations (under PostgreSQL's advisory lock, so relays starting
    /// together do not race), starts listening for other processes' events and the writer.
    pub(crate) async fn open(
        url: &str,
        config: &Config,
        notifier: Notifier,
    ) -> anyhow::Result<Self> {
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
        migrator(migrations::POSTGRES)
            .run(&pool)
            .await
            .with_context(|| format!("cannot apply the database migrations to {shown:?}"))?;
        let listen_options = options.application_name(LISTEN_APPLICATION_NAME);
        let listener = listen(&listen_options)
            .await
            .with_context(|| format!("cannot LISTEN on {EVENTS_CHANNEL} at {shown:?}"))?;
        let listener = tokio::spawn(forward_events(listener, listen_options, notifier.clone()));
        let quota = DailyQuota::from_config(config);
        let batch = BatchWriter::spawn(
            PostgresBatch {
                pool: pool.clone(),
                quota,
            },
            config.append_batch_max,
            notifier.clone(),
        );
        Ok(PostgresStore {
            pool,
            batch,
            notifier,
            listener: std::sync::Mutex::new(Some(listener)),
            quota,
        })
    }

    /// `UnknownClients` (in `ids` order) unless every one of `ids` is registered.
    async fn require_clients(tx: &mut PgConnection, ids: &[String]) -> StoreResult<()> {
        let unknown: Vec<(String,)> = sqlx::query_as(
            "SELECT u.id FROM unnest($1::text[]) WITH ORDINALITY AS u(id, n) \
             WHERE NOT EXISTS (SELECT 1 FROM clients c WHERE c.client_id = u.id) ORDER BY u.n",
        )
        .bind(ids.to_vec())
        .fetch_all(tx)
        .await?;
        common::all_known(unknown.into_iter().map(|(id,)| id).collect())
    }

    /// Deletes those of `bodies` that no inbox entry refers to any more; called after the
    /// deletion of entries committed (see the module comment).
    async fn delete_bodies_if_unreferenced(&self, bodies: &[i64]) -> StoreResult<()> {
        if bodies.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "DELETE FROM welcome_bodies b WHERE b.id = ANY($1) \
             AND NOT EXISTS (SELECT 1 FROM welcomes w WHERE w.body = b.id)",
        )
        .bind(bodies)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

/// Runs `queries` (one per chunk of a list, see [`statement_chunks`]), up to
/// [`SYNC_PARALLEL_QUERIES`] at once, and joins their rows in order.
async fn joined<R>(
    queries: impl Iterator<Item = impl Future<Output = StoreResult<Vec<R>>>>,
) -> StoreResult<Vec<R>> {
    let parts: Vec<Vec<R>> = futures::stream::iter(queries)
        .buffered(SYNC_PARALLEL_QUERIES)
        .try_collect()
        .await?;
    Ok(parts.into_iter().flatten().collect())
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

/// `count` new ids of `table`'s `id` sequence, ascending.
async fn next_ids(
    tx: &mut PgConnection,
    table: &'static str,
    count: usize,
) -> Result<Vec<i64>, sqlx::Error> {
    let mut ids: Vec<(i64,)> = sqlx::query_as(
        "SELECT nextval(pg_get_serial_sequence($1, 'id')) FROM generate_series(1, $2)",
    )
    .bind(table)
    .bind(i64::try_from(count).unwrap_or(i64::MAX))
    .fetch_all(tx)
    .await?;
    ids.sort_unstable();
    Ok(ids.into_iter().map(|(id,)| id).collect())
}

/// Sends `events` when the transaction commits.
async fn notify_on_commit(tx: &mut PgConnection, events: &[StoreEvent]) -> Result<(), sqlx::Error> {
    let payloads: Vec<String> = events.iter().filter_map(encode_event).collect();
    if payloads.is_empty() {
        return Ok(());
    }
    sqlx::query("SELECT pg_notify('dmls_events', p) FROM unnest($1::text[]) AS p")
        .bind(payloads)
        .execute(tx)
        .await?;
    Ok(())
}

/// The payload of a PostgreSQL NOTIFY, and of nothing else: `["g", owner, group_id]` or
/// `["i", client_id]`. `None` for [`StoreEvent::Resync`], which each process raises for itself.
fn encode_event(event: &StoreEvent) -> Option<String> {
    let parts: Vec<&str> = match event {
        StoreEvent::Group { owner, group_id } => vec!["g", owner, group_id],
        StoreEvent::Inbox { client_id } => vec!["i", client_id],
        StoreEvent::Resync => return None,
    };
    serde_json::to_string(&parts).ok()
}

fn decode_event(payload: &str) -> Option<StoreEvent> {
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

/// The group-commit half of the store.
struct PostgresBatch {
    pool: PgPool,
    quota: DailyQuota,
}

impl ApplyBatch for PostgresBatch {
    async fn apply_batch<'a>(
        &'a self,
        batch: &'a [AppendRequest],
    ) -> Result<Vec<AppendOutcome>, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let mut groups = lock_groups(&mut tx, batch).await?;
        // Membership and idempotency keys of the whole batch in one query each, then every
        // outcome in memory.
        let mut lookups = PostgresLookups {
            posters: read_posters(&mut tx, batch, &groups).await?,
            keys: read_idempotency_keys(&mut tx, batch, &groups).await?,
            usage: if self.quota.is_on() {
                let senders: Vec<(&str, i64)> = batch
                    .iter()
                    .map(|r| (r.sender.as_str(), utc_day(r.received_at)))
                    .collect();
                lock_usage(&mut tx, &senders).await?
            } else {
                HashMap::new()
            },
        };
        let plan = batch::plan(batch, &mut groups, &mut lookups, self.quota).await?;
        insert_messages(&mut tx, &plan.messages).await?;
        let events = write_last_seqs(&mut tx, &groups).await?;
        insert_idempotency_keys(&mut tx, &plan.messages).await?;
        write_usage(&mut tx, &plan.usage).await?;
        notify_on_commit(&mut tx, &events).await?;
        tx.commit().await?;
        Ok(plan.outcomes)
    }
}

/// Locks the groups of `batch` that exist (see the module comment): in id order, so
/// concurrent batches that touch the same groups queue instead of deadlocking.
async fn lock_groups<'a>(
    tx: &mut PgConnection,
    batch: &'a [AppendRequest],
) -> Result<HashMap<GroupName<'a>, BatchGroup>, sqlx::Error> {
    let names = batch::group_names(batch);
    let rows: Vec<(String, String, i64, i64)> = sqlx::query_as(
        "SELECT g.owner, g.group_id, g.id, g.last_seq FROM relay_groups g \
         JOIN unnest($1::text[], $2::text[]) AS u(owner, group_id) \
           ON g.owner = u.owner AND g.group_id = u.group_id \
         ORDER BY g.id FOR NO KEY UPDATE OF g",
    )
    .bind(names.iter().map(|(o, _)| o.to_string()).collect::<Vec<_>>())
    .bind(names.iter().map(|(_, g)| g.to_string()).collect::<Vec<_>>())
    .fetch_all(tx)
    .await?;
    Ok(batch::batch_groups(&names, rows))
}

/// The current members among the batch's senders, per group.
async fn read_posters(
    tx: &mut PgConnection,
    batch: &[AppendRequest],
    groups: &HashMap<GroupName<'_>, BatchGroup>,
) -> Result<HashMap<i64, HashSet<String>>, sqlx::Error> {
    let group_refs: Vec<i64> = groups.values().map(|g| g.id).collect();
    let senders: Vec<String> = dedup(&batch.iter().map(|r| r.sender.clone()).collect::<Vec<_>>());
    let rows: Vec<(i64, String)> = sqlx::query_as(
        "SELECT group_ref, client_id FROM group_members \
         WHERE read_upto IS NULL AND group_ref = ANY($1) AND client_id = ANY($2)",
    )
    .bind(group_refs)
    .bind(senders)
    .fetch_all(tx)
    .await?;
    let mut posters: HashMap<i64, HashSet<String>> = HashMap::new();
    for (group_ref, client_id) in rows {
        posters.entry(group_ref).or_default().insert(client_id);
    }
    Ok(posters)
}

/// (group, sender, key) -> (body hash, seq)
type StoredKeys = HashMap<(i64, String, String), (Vec<u8>, i64)>;

/// The idempotency keys stored before this batch that its appends name.
async fn read_idempotency_keys(
    tx: &mut PgConnection,
    batch: &[AppendRequest],
    groups: &HashMap<GroupName<'_>, BatchGroup>,
) -> Result<StoredKeys, sqlx::Error> {
    let mut keyed_group = Vec::new();
    let mut keyed_sender = Vec::new();
    let mut keyed_key = Vec::new();
    for req in batch {
        if let (Some((key, _)), Some(group)) = (
            &req.idempotency,
            groups.get(&(req.owner.as_str(), req.group_id.as_str())),
        ) {
            keyed_group.push(group.id);
            keyed_sender.push(req.sender.clone());
            keyed_key.push(key.clone());
        }
    }
    if keyed_group.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<(i64, String, String, Vec<u8>, i64)> = sqlx::query_as(
        "SELECT i.group_ref, i.sender, i.idem_key, i.body_hash, i.seq FROM idempotency_keys i \
         JOIN unnest($1::bigint[], $2::text[], $3::text[]) AS u(g, s, k) \
           ON i.group_ref = u.g AND i.sender = u.s AND i.idem_key = u.k",
    )
    .bind(keyed_group)
    .bind(keyed_sender)
    .bind(keyed_key)
    .fetch_all(tx)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(g, s, k, h, seq)| ((g, s, k), (h, seq)))
        .collect())
}

/// Usage rows of `(client_id, day)`, created with zeros where missing and locked until the
/// transaction ends, so that relay processes sharing the database count one quota: a second
/// transaction storing for the same client and day waits here and then reads what the first
/// committed. Locked in (client_id, day) order, so two such transactions cannot deadlock.
async fn lock_usage(
    tx: &mut PgConnection,
    keys: &[(&str, i64)],
) -> Result<HashMap<(String, i64), Usage>, sqlx::Error> {
    let mut keys: Vec<(&str, i64)> = keys.to_vec();
    keys.sort_unstable();
    keys.dedup();
    // `DO UPDATE` (a no-op change) rather than `DO NOTHING`: it locks an existing row and
    // returns it, in the one statement.
    let rows: Vec<(String, i64, i64, i64)> = sqlx::query_as(
        "INSERT INTO client_usage (client_id, day, messages, bytes) \
         SELECT u.c, u.d, 0, 0 FROM unnest($1::text[], $2::bigint[]) WITH ORDINALITY AS u(c, d, n) ORDER BY u.n \
         ON CONFLICT (client_id, day) DO UPDATE SET messages = client_usage.messages \
         RETURNING client_id, day, messages, bytes",
    )
    .bind(keys.iter().map(|(c, _)| *c).collect::<Vec<_>>())
    .bind(keys.iter().map(|(_, d)| *d).collect::<Vec<_>>())
    .fetch_all(tx)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(c, d, messages, bytes)| ((c, d), Usage { messages, bytes }))
        .collect())
}

/// Sets the usage rows (locked by [`lock_usage`]) to their new values.
async fn write_usage(tx: &mut PgConnection, usage: &[NewUsage<'_>]) -> Result<(), sqlx::Error> {
    if usage.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "UPDATE client_usage c SET messages = u.m, bytes = u.b \
         FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[]) AS u(id, d, m, b) \
         WHERE c.client_id = u.id AND c.day = u.d",
    )
    .bind(usage.iter().map(|(c, _, _)| *c).collect::<Vec<_>>())
    .bind(usage.iter().map(|(_, d, _)| *d).collect::<Vec<_>>())
    .bind(usage.iter().map(|(_, _, u)| u.messages).collect::<Vec<_>>())
    .bind(usage.iter().map(|(_, _, u)| u.bytes).collect::<Vec<_>>())
    .execute(tx)
    .await?;
    Ok(())
}

/// Answers from what was read at the start of the batch.
struct PostgresLookups {
    posters: HashMap<i64, HashSet<String>>,
    keys: StoredKeys,
    /// Locked usage rows of the batch's senders (empty when no quota is on).
    usage: HashMap<(String, i64), Usage>,
}

impl Lookups for PostgresLookups {
    async fn may_post(&mut self, group_ref: i64, sender: &str) -> Result<bool, sqlx::Error> {
        Ok(self
            .posters
            .get(&group_ref)
            .is_some_and(|members| members.contains(sender)))
    }

    async fn stored_key(
        &mut self,
        group_ref: i64,
        sender: &str,
        key: &str,
    ) -> Result<Option<(Vec<u8>, i64)>, sqlx::Error> {
        Ok(self
            .keys
            .get(&(group_ref, sender.to_string(), key.to_string()))
            .cloned())
    }

    async fn usage(&mut self, sender: &str, day: i64) -> Result<Usage, sqlx::Error> {
        self.usage
            .get(&(sender.to_string(), day))
            .copied()
            .ok_or_else(|| sqlx::Error::Protocol("a usage row of the batch was not locked".into()))
    }
}

/// The batch's messages, in statements of at most [`STATEMENT_CHUNK_BYTES`] of message data.
async fn insert_messages(
    tx: &mut PgConnection,
    messages: &[NewMessage<'_>],
) -> Result<(), sqlx::Error> {
    for chunk in statement_chunks(messages, |(_, _, req)| req.data.len()) {
        let rows = &messages[chunk];
        sqlx::query(
            "INSERT INTO messages (group_ref, seq, sender, data, received_at) \
             SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::bytea[], $5::bigint[])",
        )
        .bind(rows.iter().map(|(g, _, _)| *g).collect::<Vec<_>>())
        .bind(rows.iter().map(|(_, seq, _)| *seq).collect::<Vec<_>>())
        .bind(rows.iter().map(|(_, _, r)| r.sender.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|(_, _, r)| r.data.as_slice()).collect::<Vec<_>>())
        .bind(rows.iter().map(|(_, _, r)| r.received_at).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

/// Writes back `last_seq` of every group the batch appended to; returns their events.
async fn write_last_seqs(
    tx: &mut PgConnection,
    groups: &HashMap<GroupName<'_>, BatchGroup>,
) -> Result<Vec<StoreEvent>, sqlx::Error> {
    let mut touched_ids = Vec::new();
    let mut touched_seqs = Vec::new();
    let mut events = Vec::new();
    for ((owner, group_id), group) in groups {
        if group.touched() {
            touched_ids.push(group.id);
            touched_seqs.push(group.last_seq);
            events.push(StoreEvent::Group {
                owner: owner.to_string(),
                group_id: group_id.to_string(),
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
        .execute(tx)
        .await?;
    }
    Ok(events)
}

/// The idempotency keys of the stored messages that have one, in one statement.
async fn insert_idempotency_keys(
    tx: &mut PgConnection,
    messages: &[NewMessage<'_>],
) -> Result<(), sqlx::Error> {
    let keyed = batch::new_keys(messages);
    if keyed.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO idempotency_keys (group_ref, sender, idem_key, body_hash, seq, created_at) \
         SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::bytea[], $5::bigint[], $6::bigint[])",
    )
    .bind(keyed.iter().map(|k| k.group_ref).collect::<Vec<_>>())
    .bind(keyed.iter().map(|k| k.sender).collect::<Vec<_>>())
    .bind(keyed.iter().map(|k| k.key).collect::<Vec<_>>())
    .bind(keyed.iter().map(|k| &k.body_hash[..]).collect::<Vec<_>>())
    .bind(keyed.iter().map(|k| k.seq).collect::<Vec<_>>())
    .bind(keyed.iter().map(|k| k.created_at).collect::<Vec<_>>())
    .execute(tx)
    .await?;
    Ok(())
}

#[async_trait]
impl Store for PostgresStore {
    fn shared(&self) -> Shared<'_> {
        Shared {
            reads: Conn::Postgres(&self.pool),
            writes: Conn::Postgres(&self.pool),
            batch: &self.batch,
            notifier: &self.notifier,
        }
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
        // Then the client's row, which welcome posts to it lock too: the bodies read next are
        // all those the cascade deletes entries of.
        sqlx::query("SELECT 1 FROM clients WHERE client_id = $1 FOR UPDATE")
            .bind(client_id)
            .execute(&mut *tx)
            .await?;
        let bodies = common::inbox_bodies(Conn::PostgresTx(&mut tx), client_id).await?;
        sqlx::query("DELETE FROM clients WHERE client_id = $1")
            .bind(client_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.delete_bodies_if_unreferenced(&bodies).await
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
        let total = common::stock_after(stock, key_packages.len(), max_stock)?;
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
            common::set_last_resort(Conn::PostgresTx(&mut tx), client_id, &lr).await?;
        }
        tx.commit().await?;
        Ok(total)
    }

    async fn claim_distinct(&self, ids: Vec<String>) -> StoreResult<ClaimOutcome> {
        let mut tx = self.pool.begin().await?;
        Self::require_clients(&mut tx, &ids).await?;
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
        let taken: HashMap<String, Vec<u8>> = taken.into_iter().collect();
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
        Ok(common::claim_outcome(ids, taken, last_resorts))
    }

    async fn insert_welcomes(
        &self,
        from: &str,
        welcomes: Vec<NewWelcome>,
        recipients: &[String],
        now: Millis,
    ) -> StoreResult<Vec<u64>> {
        let mut tx = self.pool.begin().await?;
        Self::require_clients(&mut tx, recipients).await?;
        // Lock the inboxes before taking ids (see the module comment), in a fixed order so two
        // posts to the same recipients cannot deadlock.
        let mut recipients = recipients.to_vec();
        recipients.sort();
        sqlx::query(
            "SELECT 1 FROM clients WHERE client_id = ANY($1) ORDER BY client_id FOR NO KEY UPDATE",
        )
        .bind(recipients.clone())
        .execute(&mut *tx)
        .await?;
        if self.quota.is_on() {
            let day = utc_day(now);
            let used = lock_usage(&mut tx, &[(from, day)])
                .await?
                .remove(&(from.to_string(), day))
                .unwrap_or_default();
            let after = common::welcome_usage(self.quota, used, &welcomes)?;
            write_usage(&mut tx, &[(from, day, after)]).await?;
        }
        let ids = next_ids(&mut tx, "welcomes", common::entry_count(&welcomes)).await?;
        let body_ids = next_ids(&mut tx, "welcome_bodies", welcomes.len()).await?;
        let mut to = Vec::with_capacity(ids.len());
        let mut entry_bodies = Vec::with_capacity(ids.len());
        let mut data = Vec::with_capacity(welcomes.len());
        for (welcome, body) in welcomes.into_iter().zip(&body_ids) {
            entry_bodies.extend(std::iter::repeat_n(*body, welcome.to.len()));
            to.extend(welcome.to);
            data.push(welcome.data);
        }
        sqlx::query(
            "INSERT INTO welcome_bodies (id, data) SELECT * FROM unnest($1::bigint[], $2::bytea[])",
        )
        .bind(body_ids)
        .bind(data)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO welcomes (id, recipient, sender, body, received_at) \
             SELECT u.id, u.recipient, $4, u.body, $5 FROM unnest($1::bigint[], $2::text[], $3::bigint[]) AS u(id, recipient, body)",
        )
        .bind(ids.clone())
        .bind(to)
        .bind(entry_bodies)
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
        Ok(ids.into_iter().map(from_db).collect())
    }

    async fn delete_welcomes(&self, client_id: &str, upto: u64) -> StoreResult<()> {
        let bodies = common::delete_welcome_entries(self.writes(), client_id, upto).await?;
        self.delete_bodies_if_unreferenced(&bodies).await
    }

    async fn put_group(
        &self,
        owner: &str,
        group_id: &str,
        members: &[String],
        now: Millis,
    ) -> StoreResult<bool> {
        let (members, everyone) = common::group_clients(owner, members);
        let mut tx = self.pool.begin().await?;
        Self::require_clients(&mut tx, &everyone).await?;
        let created = common::insert_group(Conn::PostgresTx(&mut tx), owner, group_id, now).await?;
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

    async fn delete_group(&self, owner: &str, group_id: &str) -> StoreResult<bool> {
        common::delete_group(self.writes(), owner, group_id).await
    }

    /// One query per chunk of cursors (see [`statement_chunks`]), run concurrently.
    async fn sync_candidates(
        &self,
        reader: &str,
        cursors: &[SyncCursor],
    ) -> StoreResult<Vec<SyncCandidate>> {
        let chunks = statement_chunks(cursors, |c| c.owner.len() + c.group_id.len() + 20);
        joined(chunks.into_iter().map(|chunk| {
            let offset = chunk.start;
            let part = &cursors[chunk];
            async move {
                let rows: Vec<sync::CandidateRow> = sqlx::query_as(
                    "SELECT c.n - 1, g.id, g.last_seq, g.owner, m.read_upto, m.client_id IS NOT NULL \
                     FROM unnest($1::text[], $2::text[], $3::bigint[]) \
                       WITH ORDINALITY AS c(owner, group_id, after_seq, n) \
                     JOIN relay_groups g ON g.owner = c.owner AND g.group_id = c.group_id \
                     LEFT JOIN group_members m ON m.group_ref = g.id AND m.client_id = $4 \
                     WHERE g.last_seq > c.after_seq OR (g.owner <> $4 AND m.client_id IS NULL)",
                )
                .bind(part.iter().map(|c| c.owner.as_str()).collect::<Vec<_>>())
                .bind(part.iter().map(|c| c.group_id.as_str()).collect::<Vec<_>>())
                .bind(part.iter().map(|c| to_db(c.after)).collect::<Vec<_>>())
                .bind(reader)
                .fetch_all(&self.pool)
                .await?;
                Ok(rows
                    .into_iter()
                    .map(|row| sync::candidate(offset, reader, row))
                    .collect())
            }
        }))
        .await
    }

    /// One query per chunk of ranges, run concurrently.
    async fn read_ranges(&self, ranges: &[SyncRange]) -> StoreResult<Vec<(usize, Message)>> {
        let wanted: Vec<(usize, &SyncRange)> = ranges
            .iter()
            .enumerate()
            .filter(|(_, r)| r.upto > r.after)
            .collect();
        let chunks = statement_chunks(&wanted, |_| 4 * 12);
        joined(chunks.into_iter().map(|chunk| {
            let part = &wanted[chunk];
            async move {
                let rows: Vec<RangeMessageRow> = sqlx::query_as(
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
                Ok(rows.into_iter().map(common::range_message).collect())
            }
        }))
        .await
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
        let welcome_bodies = common::delete_unreferenced_bodies(self.writes()).await?;
        let keys = sqlx::query("DELETE FROM idempotency_keys WHERE created_at < $1")
            .bind(idempotency_before)
            .execute(&self.pool)
            .await?;
        let usage = sqlx::query("DELETE FROM client_usage WHERE day < $1")
            .bind(utc_day(idempotency_before))
            .execute(&self.pool)
            .await?;
        Ok(PruneStats {
            messages: messages.rows_affected(),
            welcomes: welcomes.rows_affected(),
            welcome_bodies,
            idempotency_keys: keys.rows_affected(),
            usage_days: usage.rows_affected(),
        })
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
}
