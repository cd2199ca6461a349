//! The SQLite store: one file, no set-up; for a relay that runs as a single process.
//!
//! - WAL journal: readers never wait for the writer and see the last committed state.
//! - `synchronous=FULL`: a commit is on disk before the append is acknowledged, so an
//!   acknowledged message survives power loss. Group commit ([`super::batch`]) pays that fsync
//!   once for many appends.
//! - All writes go through one connection (`writer`, a pool of one) and open with
//!   `BEGIN IMMEDIATE`, which takes SQLite's write lock at once: a transaction never has to
//!   upgrade a read lock (which can fail with SQLITE_BUSY midway), and writes are serialised,
//!   which is what makes seqs gap-free for readers: a commit makes a whole batch visible at once.
//! - Reads go through their own pool, so they run concurrently with each other and the writer.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use dmls_api::{ClaimedKeyPackage, Message, Welcome};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{SqlSafeStr as _, Sqlite, Transaction};

use super::batch::{ApplyBatch, BatchWriter};
use super::{
    Access, AppendOutcome, AppendRequest, ClaimOutcome, ClientRecord, ClientStats, GroupRecord,
    Millis, Page, PruneStats, SYNC_WELCOMES_LIMIT, Store, StoreError, StoreEvent, StoreResult,
    SyncCandidate, SyncCursor, SyncRange, SyncRead, assemble_sync, dedup, from_db, page, plan_sync,
    to_db,
};
use crate::config::{Config, redact_url};
use crate::notify::Notifier;

/// How long a statement waits for another process's write lock before failing (only another
/// process can hold it: in this one, writes queue for the single writer connection).
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Rows deleted per transaction when pruning, so appends are not blocked for long.
const PRUNE_CHUNK: i64 = 5_000;

fn migrator() -> Migrator {
    Migrator::with_migrations(vec![Migration::new(
        1,
        "init".into(),
        MigrationType::Simple,
        include_str!("../../../migrations/sqlite/0001_init.sql").into_sql_str(),
        false,
    )])
}

/// A JSON array for `json_each(?)`: SQLite's way of binding a list.
fn json_list<T: serde::Serialize>(items: &T) -> StoreResult<String> {
    serde_json::to_string(items)
        .map_err(|e| StoreError::Unavailable(format!("cannot encode a query list: {e}")))
}

pub struct SqliteStore {
    /// One connection: every write transaction.
    writer: SqlitePool,
    readers: SqlitePool,
    batch: BatchWriter,
    notifier: Notifier,
}

impl SqliteStore {
    /// Opens (creating if missing) the database file, runs the migrations, starts the writer.
    pub async fn open(url: &str, config: &Config, notifier: Notifier) -> anyhow::Result<Self> {
        let shown = redact_url(url);
        // Every connection of an in-memory database is a database of its own, and nothing
        // acknowledged would survive a restart.
        if url.contains(":memory:") || url.contains("mode=memory") {
            anyhow::bail!(
                "in-memory SQLite ({shown:?}) is not supported: use sqlite://PATH to a file"
            );
        }
        let options = SqliteConnectOptions::from_str(url)
            .with_context(|| format!("invalid SQLite database URL {shown:?}: use sqlite://PATH"))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT)
            .statement_cache_capacity(256);
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            // Idle connections are never closed: the writer's cached statements stay prepared.
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options.clone())
            .await
            .with_context(|| {
                format!("cannot open the SQLite database {shown:?}: check that its directory exists and is writable")
            })?;
        migrator()
            .run(&writer)
            .await
            .with_context(|| format!("cannot apply the database migrations to {shown:?}"))?;
        let readers = SqlitePoolOptions::new()
            .max_connections(config.db_max_connections.max(1))
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options)
            .await
            .with_context(|| {
                format!("cannot open read connections to the SQLite database {shown:?}")
            })?;
        let batch = BatchWriter::spawn(
            SqliteBatch {
                pool: writer.clone(),
            },
            config.append_batch_max,
            notifier.clone(),
        );
        Ok(SqliteStore {
            writer,
            readers,
            batch,
            notifier,
        })
    }

    async fn write_tx(&self) -> StoreResult<Transaction<'static, Sqlite>> {
        Ok(self.writer.begin_with("BEGIN IMMEDIATE").await?)
    }

    /// Which of `ids` are not registered (in `ids` order).
    async fn unknown_clients(
        tx: &mut Transaction<'static, Sqlite>,
        ids: &[String],
    ) -> StoreResult<Vec<String>> {
        let unknown: Vec<(String,)> = sqlx::query_as(
            "SELECT j.value FROM json_each(?) j \
             WHERE NOT EXISTS (SELECT 1 FROM clients c WHERE c.client_id = j.value) ORDER BY j.key",
        )
        .bind(json_list(&ids)?)
        .fetch_all(&mut **tx)
        .await?;
        Ok(unknown.into_iter().map(|(id,)| id).collect())
    }

    async fn read_range(
        &self,
        group_ref: i64,
        after: u64,
        limit: u64,
    ) -> StoreResult<Vec<Message>> {
        let rows: Vec<(i64, String, Vec<u8>, i64)> = sqlx::query_as(
            "SELECT seq, sender, data, received_at FROM messages \
             WHERE group_ref = ? AND seq > ? ORDER BY seq LIMIT ?",
        )
        .bind(group_ref)
        .bind(to_db(after))
        .bind(to_db(limit))
        .fetch_all(&self.readers)
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

/// The group-commit half of the store: owns a handle to the writer connection.
struct SqliteBatch {
    pool: SqlitePool,
}

struct BatchGroup {
    id: i64,
    last_seq: i64,
    dirty: bool,
}

impl ApplyBatch for SqliteBatch {
    async fn apply_batch<'a>(
        &'a self,
        batch: &'a [AppendRequest],
    ) -> Result<Vec<AppendOutcome>, sqlx::Error> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        // The write lock is held from BEGIN IMMEDIATE to COMMIT, so `last_seq` read here cannot
        // change under us: seqs are computed in memory and written back once per group.
        let mut groups: HashMap<(&str, &str), Option<BatchGroup>> = HashMap::new();
        let mut posters: HashMap<(i64, &str), bool> = HashMap::new();
        let mut outcomes = Vec::with_capacity(batch.len());
        // Messages are inserted after the loop in multi-row statements: every statement is a
        // round trip to sqlx's SQLite worker thread, and those hops dominate the append cost.
        let mut new_messages: Vec<(i64, i64, &AppendRequest)> = Vec::with_capacity(batch.len());
        // All groups of the batch in one query (unknown ones stay `None`).
        for req in batch {
            groups.insert((req.owner.as_str(), req.group_id.as_str()), None);
        }
        let names = serde_json::to_string(&groups.keys().collect::<Vec<_>>())
            .map_err(|e| sqlx::Error::Protocol(format!("encoding group names: {e}")))?;
        let rows: Vec<(String, String, i64, i64)> = sqlx::query_as(
            "SELECT g.owner, g.group_id, g.id, g.last_seq FROM json_each(?) j \
             JOIN relay_groups g ON g.owner = json_extract(j.value, '$[0]') \
             AND g.group_id = json_extract(j.value, '$[1]')",
        )
        .bind(names)
        .fetch_all(&mut *tx)
        .await?;
        for (owner, group_id, id, last_seq) in &rows {
            if let Some(slot) = groups.get_mut(&(owner.as_str(), group_id.as_str())) {
                *slot = Some(BatchGroup {
                    id: *id,
                    last_seq: *last_seq,
                    dirty: false,
                });
            }
        }
        for req in batch {
            let name = (req.owner.as_str(), req.group_id.as_str());
            let Some(Some(group)) = groups.get_mut(&name) else {
                outcomes.push(AppendOutcome::NoGroup);
                continue;
            };
            let may_post = if req.sender == req.owner {
                true
            } else if let Some(&known) = posters.get(&(group.id, req.sender.as_str())) {
                known
            } else {
                let row: Option<(i64,)> = sqlx::query_as(
                    "SELECT 1 FROM group_members WHERE group_ref = ? AND client_id = ? AND read_upto IS NULL",
                )
                .bind(group.id)
                .bind(&req.sender)
                .fetch_optional(&mut *tx)
                .await?;
                posters.insert((group.id, req.sender.as_str()), row.is_some());
                row.is_some()
            };
            if !may_post {
                outcomes.push(AppendOutcome::Forbidden);
                continue;
            }
            if let Some((key, body_hash)) = &req.idempotency {
                let seen: Option<(Vec<u8>, i64)> = sqlx::query_as(
                    "SELECT body_hash, seq FROM idempotency_keys WHERE group_ref = ? AND sender = ? AND idem_key = ?",
                )
                .bind(group.id)
                .bind(&req.sender)
                .bind(key)
                .fetch_optional(&mut *tx)
                .await?;
                if let Some((seen_hash, seq)) = seen {
                    outcomes.push(if seen_hash == body_hash {
                        AppendOutcome::Duplicate(from_db(seq))
                    } else {
                        AppendOutcome::IdempotencyConflict
                    });
                    continue;
                }
            }
            group.last_seq += 1;
            group.dirty = true;
            new_messages.push((group.id, group.last_seq, req));
            if let Some((key, body_hash)) = &req.idempotency {
                sqlx::query(
                    "INSERT INTO idempotency_keys (group_ref, sender, idem_key, body_hash, seq, created_at) \
                     VALUES (?, ?, ?, ?, ?, ?)",
                )
                .bind(group.id)
                .bind(&req.sender)
                .bind(key)
                .bind(&body_hash[..])
                .bind(group.last_seq)
                .bind(req.received_at)
                .execute(&mut *tx)
                .await?;
            }
            outcomes.push(AppendOutcome::Stored(from_db(group.last_seq)));
        }
        // 5 bound values per row; SQLite allows 32,766 per statement.
        for chunk in new_messages.chunks(1000) {
            let mut insert = sqlx::QueryBuilder::new(
                "INSERT INTO messages (group_ref, seq, sender, data, received_at) ",
            );
            insert.push_values(chunk, |mut row, (group_ref, seq, req)| {
                row.push_bind(*group_ref)
                    .push_bind(*seq)
                    .push_bind(req.sender.as_str())
                    .push_bind(req.data.as_slice())
                    .push_bind(req.received_at);
            });
            insert.build().execute(&mut *tx).await?;
        }
        // Every touched group's new `last_seq` in one statement.
        let dirty: Vec<(i64, i64)> = groups
            .values()
            .flatten()
            .filter(|g| g.dirty)
            .map(|g| (g.id, g.last_seq))
            .collect();
        if !dirty.is_empty() {
            let dirty = serde_json::to_string(&dirty)
                .map_err(|e| sqlx::Error::Protocol(format!("encoding seqs: {e}")))?;
            sqlx::query(
                "UPDATE relay_groups SET last_seq = (SELECT json_extract(j.value, '$[1]') \
                 FROM json_each(?1) j WHERE json_extract(j.value, '$[0]') = relay_groups.id) \
                 WHERE id IN (SELECT json_extract(j.value, '$[0]') FROM json_each(?1) j)",
            )
            .bind(dirty)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(outcomes)
    }
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.readers).await?;
        Ok(())
    }

    fn pool_stats(&self) -> (u32, u32) {
        let idle =
            u32::try_from(self.readers.num_idle() + self.writer.num_idle()).unwrap_or(u32::MAX);
        let size = self.readers.size() + self.writer.size();
        (size.saturating_sub(idle), idle)
    }

    async fn close(&self) {
        self.batch.close().await;
        self.readers.close().await;
        self.writer.close().await;
    }

    async fn create_client(
        &self,
        client_id: &str,
        token_hash: [u8; 32],
        now: Millis,
    ) -> StoreResult<()> {
        let done = sqlx::query(
            "INSERT INTO clients (client_id, token_hash, created_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
        )
        .bind(client_id)
        .bind(&token_hash[..])
        .bind(now)
        .execute(&self.writer)
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
            sqlx::query_as("SELECT client_id, token_hash FROM clients WHERE token_hash = ?")
                .bind(&token_hash[..])
                .fetch_optional(&self.readers)
                .await?;
        Ok(row.and_then(|(client_id, hash)| {
            Some(ClientRecord {
                client_id,
                token_hash: <[u8; 32]>::try_from(hash.as_slice()).ok()?,
            })
        }))
    }

    async fn client_stats(&self, client_id: &str) -> StoreResult<Option<ClientStats>> {
        let row: Option<(i64, i64, i64)> = sqlx::query_as(
            "SELECT c.created_at, (SELECT COUNT(*) FROM key_packages k WHERE k.client_id = c.client_id), \
             c.last_resort IS NOT NULL FROM clients c WHERE c.client_id = ?",
        )
        .bind(client_id)
        .fetch_optional(&self.readers)
        .await?;
        Ok(
            row.map(|(created_at, available, has_last_resort)| ClientStats {
                client_id: client_id.to_string(),
                created_at,
                key_packages_available: from_db(available),
                has_last_resort: has_last_resort != 0,
            }),
        )
    }

    async fn delete_client(&self, client_id: &str) -> StoreResult<()> {
        // Foreign keys cascade to key packages, welcomes, owned groups (with their messages,
        // members and idempotency keys), memberships and the client's idempotency keys.
        let mut tx = self.write_tx().await?;
        sqlx::query("DELETE FROM clients WHERE client_id = ?")
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
        let mut tx = self.write_tx().await?;
        let stock: Option<(i64,)> = sqlx::query_as(
            "SELECT (SELECT COUNT(*) FROM key_packages WHERE client_id = ?1) FROM clients WHERE client_id = ?1",
        )
        .bind(client_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((stock,)) = stock else {
            return Err(StoreError::UnknownClients(vec![client_id.to_string()]));
        };
        let total = from_db(stock).saturating_add(key_packages.len() as u64);
        // Only a growing stock can exceed the limit (it may have been lowered since).
        if !key_packages.is_empty() && total > max_stock {
            return Err(StoreError::TooManyKeyPackages { limit: max_stock });
        }
        for kp in key_packages {
            sqlx::query("INSERT INTO key_packages (client_id, data, created_at) VALUES (?, ?, ?)")
                .bind(client_id)
                .bind(kp)
                .bind(now)
                .execute(&mut *tx)
                .await?;
        }
        if let Some(lr) = last_resort {
            sqlx::query("UPDATE clients SET last_resort = ? WHERE client_id = ?")
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
        // BEGIN IMMEDIATE: no other claim runs between choosing a package and deleting it.
        let mut tx = self.write_tx().await?;
        let unknown = Self::unknown_clients(&mut tx, &ids).await?;
        if !unknown.is_empty() {
            return Err(StoreError::UnknownClients(unknown));
        }
        let mut outcome = ClaimOutcome {
            key_packages: Vec::new(),
            missing: Vec::new(),
        };
        for id in ids {
            let taken: Option<(Vec<u8>,)> = sqlx::query_as(
                "DELETE FROM key_packages WHERE id = \
                 (SELECT id FROM key_packages WHERE client_id = ? ORDER BY id LIMIT 1) RETURNING data",
            )
            .bind(&id)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some((data,)) = taken {
                outcome.key_packages.push(ClaimedKeyPackage {
                    client_id: id,
                    key_package: data.into(),
                    last_resort: false,
                });
                continue;
            }
            let last_resort: Option<(Option<Vec<u8>>,)> =
                sqlx::query_as("SELECT last_resort FROM clients WHERE client_id = ?")
                    .bind(&id)
                    .fetch_optional(&mut *tx)
                    .await?;
            match last_resort {
                Some((Some(data),)) => outcome.key_packages.push(ClaimedKeyPackage {
                    client_id: id,
                    key_package: data.into(),
                    last_resort: true,
                }),
                _ => outcome.missing.push(id),
            }
        }
        tx.commit().await?;
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
        let recipients = dedup(
            &welcomes
                .iter()
                .map(|(to, _)| to.clone())
                .collect::<Vec<_>>(),
        );
        let mut tx = self.write_tx().await?;
        let unknown = Self::unknown_clients(&mut tx, &recipients).await?;
        if !unknown.is_empty() {
            return Err(StoreError::UnknownClients(unknown));
        }
        let mut ids = Vec::with_capacity(welcomes.len());
        for (to, data) in welcomes {
            let (id,): (i64,) = sqlx::query_as(
                "INSERT INTO welcomes (recipient, sender, data, received_at) VALUES (?, ?, ?, ?) RETURNING id",
            )
            .bind(to)
            .bind(from)
            .bind(data)
            .bind(now)
            .fetch_one(&mut *tx)
            .await?;
            ids.push(from_db(id));
        }
        tx.commit().await?;
        for client_id in recipients {
            self.notifier.publish(StoreEvent::Inbox { client_id });
        }
        Ok(ids)
    }

    async fn list_welcomes(
        &self,
        client_id: &str,
        after: u64,
        limit: u32,
    ) -> StoreResult<Page<Welcome>> {
        let rows: Vec<(i64, String, Vec<u8>, i64)> = sqlx::query_as(
            "SELECT id, sender, data, received_at FROM welcomes WHERE recipient = ? AND id > ? ORDER BY id LIMIT ?",
        )
        .bind(client_id)
        .bind(to_db(after))
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.readers)
        .await?;
        Ok(page(rows.into_iter().map(welcome).collect(), limit))
    }

    async fn delete_welcomes(&self, client_id: &str, upto: u64) -> StoreResult<()> {
        sqlx::query("DELETE FROM welcomes WHERE recipient = ? AND id <= ?")
            .bind(client_id)
            .bind(to_db(upto))
            .execute(&self.writer)
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
        let members_json = json_list(&members)?;
        let mut tx = self.write_tx().await?;
        let unknown = Self::unknown_clients(&mut tx, &dedup(&everyone)).await?;
        if !unknown.is_empty() {
            return Err(StoreError::UnknownClients(unknown));
        }
        let created = sqlx::query(
            "INSERT INTO relay_groups (owner, group_id, last_seq, created_at) VALUES (?, ?, 0, ?) \
             ON CONFLICT (owner, group_id) DO NOTHING",
        )
        .bind(owner)
        .bind(group_id)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        let (group_ref, last_seq): (i64, i64) = sqlx::query_as(
            "SELECT id, last_seq FROM relay_groups WHERE owner = ? AND group_id = ?",
        )
        .bind(owner)
        .bind(group_id)
        .fetch_one(&mut *tx)
        .await?;
        // Dropped members keep what was stored before they were dropped (the commit that
        // removed them included); someone dropped earlier keeps the older bound.
        sqlx::query(
            "UPDATE group_members SET read_upto = ?, ordinal = NULL \
             WHERE group_ref = ? AND read_upto IS NULL AND client_id NOT IN (SELECT value FROM json_each(?))",
        )
        .bind(last_seq)
        .bind(group_ref)
        .bind(&members_json)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO group_members (group_ref, client_id, ordinal, read_upto) \
             SELECT ?, value, key, NULL FROM json_each(?) WHERE true \
             ON CONFLICT (group_ref, client_id) DO UPDATE SET ordinal = excluded.ordinal, read_upto = NULL",
        )
        .bind(group_ref)
        .bind(&members_json)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(created)
    }

    async fn get_group(&self, owner: &str, group_id: &str) -> StoreResult<Option<GroupRecord>> {
        let group: Option<(i64, i64, i64)> = sqlx::query_as(
            "SELECT id, last_seq, created_at FROM relay_groups WHERE owner = ? AND group_id = ?",
        )
        .bind(owner)
        .bind(group_id)
        .fetch_optional(&self.readers)
        .await?;
        let Some((group_ref, last_seq, created_at)) = group else {
            return Ok(None);
        };
        let rows: Vec<(String, Option<i64>)> = sqlx::query_as(
            "SELECT client_id, read_upto FROM group_members WHERE group_ref = ? \
             ORDER BY ordinal IS NULL, ordinal, client_id",
        )
        .bind(group_ref)
        .fetch_all(&self.readers)
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
        let mut tx = self.write_tx().await?;
        let done = sqlx::query("DELETE FROM relay_groups WHERE owner = ? AND group_id = ?")
            .bind(owner)
            .bind(group_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
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
             WHERE g.owner = ? AND g.group_id = ? AND m.seq > ? AND m.seq <= ? ORDER BY m.seq LIMIT ?",
        )
        .bind(owner)
        .bind(group_id)
        .bind(to_db(after))
        .bind(upto.map_or(i64::MAX, to_db))
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.readers)
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
            // One query finds, among the followed groups that exist, those with news and those
            // the reader may not read; groups with nothing new cost one index lookup each.
            let list: Vec<(&str, &str, i64)> = cursors
                .iter()
                .map(|c| (c.owner.as_str(), c.group_id.as_str(), to_db(c.after)))
                .collect();
            let rows: Vec<(i64, i64, i64, String, Option<i64>, i64)> = sqlx::query_as(
                "SELECT c.key, g.id, g.last_seq, g.owner, m.read_upto, m.client_id IS NOT NULL \
                 FROM json_each(?1) c \
                 JOIN relay_groups g ON g.owner = c.value ->> 0 AND g.group_id = c.value ->> 1 \
                 LEFT JOIN group_members m ON m.group_ref = g.id AND m.client_id = ?2 \
                 WHERE g.last_seq > c.value ->> 2 OR (g.owner <> ?2 AND m.client_id IS NULL)",
            )
            .bind(json_list(&list)?)
            .bind(reader)
            .fetch_all(&self.readers)
            .await?;
            let candidates = rows
                .into_iter()
                .map(
                    |(index, group_ref, last_seq, owner, read_upto, listed)| SyncCandidate {
                        cursor_index: usize::try_from(index).unwrap_or(usize::MAX),
                        group_ref,
                        last_seq: from_db(last_seq),
                        access: if owner == reader || (listed != 0 && read_upto.is_none()) {
                            Access::Full
                        } else if let Some(upto) = read_upto {
                            Access::ReadUpTo(from_db(upto))
                        } else {
                            Access::None
                        },
                    },
                )
                .collect();
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
                    found.push(super::SyncGroupResult::Messages {
                        cursor_index: range.cursor_index,
                        messages,
                        more,
                    });
                }
            }
            groups = found;
            groups.extend(forbidden);
            groups.sort_by_key(|g| match g {
                super::SyncGroupResult::Messages { cursor_index, .. }
                | super::SyncGroupResult::Forbidden { cursor_index } => *cursor_index,
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
        let mut stats = PruneStats::default();
        for (sql, cutoff, count) in [
            (
                "DELETE FROM messages WHERE rowid IN \
                 (SELECT rowid FROM messages WHERE received_at < ? LIMIT ?)",
                before,
                &mut stats.messages,
            ),
            (
                "DELETE FROM welcomes WHERE id IN (SELECT id FROM welcomes WHERE received_at < ? LIMIT ?)",
                before,
                &mut stats.welcomes,
            ),
            (
                "DELETE FROM idempotency_keys WHERE (group_ref, sender, idem_key) IN \
                 (SELECT group_ref, sender, idem_key FROM idempotency_keys WHERE created_at < ? LIMIT ?)",
                idempotency_before,
                &mut stats.idempotency_keys,
            ),
        ] {
            // Small transactions: appends wait for the write lock at most one chunk long.
            loop {
                let mut tx = self.write_tx().await?;
                let done = sqlx::query(sql)
                    .bind(cutoff)
                    .bind(PRUNE_CHUNK)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                *count += done.rows_affected();
                if done.rows_affected() < PRUNE_CHUNK as u64 {
                    break;
                }
            }
        }
        Ok(stats)
    }
}

impl SqliteStore {
    /// The messages of all `ranges` in one query, tagged with the range's index.
    async fn read_ranges(&self, ranges: &[SyncRange]) -> StoreResult<Vec<(usize, Message)>> {
        let wanted: Vec<(usize, i64, i64, i64)> = ranges
            .iter()
            .enumerate()
            .filter(|(_, r)| r.upto > r.after)
            .map(|(i, r)| (i, r.group_ref, to_db(r.after), to_db(r.upto)))
            .collect();
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<(i64, i64, String, Vec<u8>, i64)> = sqlx::query_as(
            "SELECT r.value ->> 0, m.seq, m.sender, m.data, m.received_at FROM json_each(?) r \
             JOIN messages m ON m.group_ref = r.value ->> 1 AND m.seq > r.value ->> 2 AND m.seq <= r.value ->> 3 \
             ORDER BY r.key, m.seq",
        )
        .bind(json_list(&wanted)?)
        .fetch_all(&self.readers)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(i, seq, sender, data, received_at)| {
                (
                    usize::try_from(i).unwrap_or(usize::MAX),
                    message((seq, sender, data, received_at)),
                )
            })
            .collect())
    }
}
