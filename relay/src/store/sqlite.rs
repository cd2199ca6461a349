//! The SQLite store: one file, no set-up; for a relay that runs as a single process.
//!
//! - WAL journal: readers never wait for the writer and see the last committed state.
//! - `synchronous=FULL`: a commit is on disk before the append is acknowledged, so an
//!   acknowledged message survives power loss. Group commit ([`super::batch`]) pays that fsync
//!   once for many appends.
//! - Appends go through a connection of their own on a thread of their own
//!   ([`super::sqlite_writer`]), every other write through one sqlx connection (`writer`, a
//!   pool of one). All open with `BEGIN IMMEDIATE`, which takes SQLite's write lock at once: a
//!   transaction never has to upgrade a read lock (which can fail with SQLITE_BUSY midway), and
//!   writes are serialised, which is what makes seqs gap-free for readers: a commit makes a
//!   whole batch visible at once.
//! - Reads go through their own pool, so they run concurrently with each other and the writer.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use dmls_api::Message;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{Sqlite, Transaction};

use super::batch::{BatchWriter, NewUsage, Usage};
use super::common::{self, Conn, RangeMessageRow};
use super::migrations::{self, migrator};
use super::sqlite_writer::SqliteAppender;
use super::sync::{self, SyncCandidate, SyncRange};
use super::{
    ClaimOutcome, DailyQuota, Millis, NewWelcome, PruneStats, Shared, Store, StoreError,
    StoreResult, SyncCursor, from_db, to_db, utc_day,
};
use crate::config::{Config, redact_url};
use crate::notify::Notifier;

/// How long a statement waits for another process's write lock before failing (only another
/// process can hold it: in this one, writes queue for the single writer connection).
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Rows deleted per transaction when pruning, so appends are not blocked for long.
const PRUNE_CHUNK: i64 = 5_000;

/// A JSON array for `json_each(?)`: SQLite's way of binding a list.
fn json_list<T: serde::Serialize>(items: &T) -> StoreResult<String> {
    serde_json::to_string(items)
        .map_err(|e| StoreError::Unavailable(format!("cannot encode a query list: {e}")))
}

pub(crate) struct SqliteStore {
    /// One connection: every write transaction.
    writer: SqlitePool,
    readers: SqlitePool,
    batch: BatchWriter,
    notifier: Notifier,
    quota: DailyQuota,
}

impl SqliteStore {
    /// Opens (creating if missing) the database file, runs the migrations, starts the writer.
    pub(crate) async fn open(
        url: &str,
        config: &Config,
        notifier: Notifier,
    ) -> anyhow::Result<Self> {
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
        let filename = options.get_filename().to_path_buf();
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
        migrator(migrations::SQLITE)
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
        let quota = DailyQuota::from_config(config);
        let appender = SqliteAppender::start(&filename, BUSY_TIMEOUT, quota)?;
        let batch = BatchWriter::spawn(appender, config.append_batch_max, notifier.clone());
        Ok(SqliteStore {
            writer,
            readers,
            batch,
            notifier,
            quota,
        })
    }

    async fn write_tx(&self) -> StoreResult<Transaction<'static, Sqlite>> {
        Ok(self.writer.begin_with("BEGIN IMMEDIATE").await?)
    }

    /// `UnknownClients` (in `ids` order) unless every one of `ids` is registered.
    async fn require_clients(tx: &mut SqliteConnection, ids: &[String]) -> StoreResult<()> {
        let unknown: Vec<(String,)> = sqlx::query_as(
            "SELECT j.value FROM json_each(?) j \
             WHERE NOT EXISTS (SELECT 1 FROM clients c WHERE c.client_id = j.value) ORDER BY j.key",
        )
        .bind(json_list(&ids)?)
        .fetch_all(tx)
        .await?;
        common::all_known(unknown.into_iter().map(|(id,)| id).collect())
    }

    /// Deletes those of `bodies` that no inbox entry refers to any more.
    async fn delete_bodies_if_unreferenced(
        tx: &mut SqliteConnection,
        bodies: &[i64],
    ) -> StoreResult<()> {
        if bodies.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "DELETE FROM welcome_bodies WHERE id IN (SELECT value FROM json_each(?)) \
             AND NOT EXISTS (SELECT 1 FROM welcomes w WHERE w.body = welcome_bodies.id)",
        )
        .bind(json_list(&bodies)?)
        .execute(tx)
        .await?;
        Ok(())
    }
}

/// What `client_id` stored on `day` so far.
async fn read_usage(
    tx: &mut SqliteConnection,
    client_id: &str,
    day: i64,
) -> Result<Usage, sqlx::Error> {
    let row: Option<(i64, i64)> =
        sqlx::query_as("SELECT messages, bytes FROM client_usage WHERE client_id = ? AND day = ?")
            .bind(client_id)
            .bind(day)
            .fetch_optional(tx)
            .await?;
    Ok(row.map_or_else(Usage::default, |(messages, bytes)| Usage {
        messages,
        bytes,
    }))
}

/// Sets the usage rows a batch or a welcome post changed.
async fn write_usage(tx: &mut SqliteConnection, usage: &[NewUsage<'_>]) -> Result<(), sqlx::Error> {
    // 4 bound values per row.
    for chunk in usage.chunks(1000) {
        let mut insert =
            sqlx::QueryBuilder::new("INSERT INTO client_usage (client_id, day, messages, bytes) ");
        insert.push_values(chunk, |mut row, (client_id, day, u)| {
            row.push_bind(*client_id)
                .push_bind(*day)
                .push_bind(u.messages)
                .push_bind(u.bytes);
        });
        insert.push(
            " ON CONFLICT (client_id, day) DO UPDATE SET messages = excluded.messages, bytes = excluded.bytes",
        );
        insert.build().execute(&mut *tx).await?;
    }
    Ok(())
}

#[async_trait]
impl Store for SqliteStore {
    fn shared(&self) -> Shared<'_> {
        Shared {
            reads: Conn::Sqlite(&self.readers),
            writes: Conn::Sqlite(&self.writer),
            batch: &self.batch,
            notifier: &self.notifier,
        }
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

    async fn delete_client(&self, client_id: &str) -> StoreResult<()> {
        // Foreign keys cascade to key packages, welcomes, owned groups (with their messages,
        // members and idempotency keys), memberships and the client's idempotency keys.
        let mut tx = self.write_tx().await?;
        let bodies = common::inbox_bodies(Conn::SqliteTx(&mut tx), client_id).await?;
        sqlx::query("DELETE FROM clients WHERE client_id = ?")
            .bind(client_id)
            .execute(&mut *tx)
            .await?;
        Self::delete_bodies_if_unreferenced(&mut tx, &bodies).await?;
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
        let total = common::stock_after(stock, key_packages.len(), max_stock)?;
        for kp in key_packages {
            sqlx::query("INSERT INTO key_packages (client_id, data, created_at) VALUES (?, ?, ?)")
                .bind(client_id)
                .bind(kp)
                .bind(now)
                .execute(&mut *tx)
                .await?;
        }
        if let Some(lr) = last_resort {
            common::set_last_resort(Conn::SqliteTx(&mut tx), client_id, &lr).await?;
        }
        tx.commit().await?;
        Ok(total)
    }

    async fn claim_distinct(&self, ids: Vec<String>) -> StoreResult<ClaimOutcome> {
        // BEGIN IMMEDIATE: no other claim runs between choosing a package and deleting it.
        let mut tx = self.write_tx().await?;
        Self::require_clients(&mut tx, &ids).await?;
        let mut taken = HashMap::new();
        let mut last_resorts = HashMap::new();
        for id in &ids {
            let package: Option<(Vec<u8>,)> = sqlx::query_as(
                "DELETE FROM key_packages WHERE id = \
                 (SELECT id FROM key_packages WHERE client_id = ? ORDER BY id LIMIT 1) RETURNING data",
            )
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some((data,)) = package {
                taken.insert(id.clone(), data);
                continue;
            }
            let last_resort: Option<(Option<Vec<u8>>,)> =
                sqlx::query_as("SELECT last_resort FROM clients WHERE client_id = ?")
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await?;
            if let Some((Some(data),)) = last_resort {
                last_resorts.insert(id.clone(), data);
            }
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
        let mut tx = self.write_tx().await?;
        Self::require_clients(&mut tx, recipients).await?;
        if self.quota.is_on() {
            let day = utc_day(now);
            let used = read_usage(&mut tx, from, day).await?;
            let after = common::welcome_usage(self.quota, used, &welcomes)?;
            write_usage(&mut tx, &[(from, day, after)]).await?;
        }
        let mut ids = Vec::with_capacity(common::entry_count(&welcomes));
        for welcome in welcomes {
            let (body,): (i64,) =
                sqlx::query_as("INSERT INTO welcome_bodies (data) VALUES (?) RETURNING id")
                    .bind(welcome.data)
                    .fetch_one(&mut *tx)
                    .await?;
            for to in welcome.to {
                let (id,): (i64,) = sqlx::query_as(
                    "INSERT INTO welcomes (recipient, sender, body, received_at) VALUES (?, ?, ?, ?) RETURNING id",
                )
                .bind(to)
                .bind(from)
                .bind(body)
                .bind(now)
                .fetch_one(&mut *tx)
                .await?;
                ids.push(from_db(id));
            }
        }
        tx.commit().await?;
        Ok(ids)
    }

    async fn delete_welcomes(&self, client_id: &str, upto: u64) -> StoreResult<()> {
        let mut tx = self.write_tx().await?;
        let bodies =
            common::delete_welcome_entries(Conn::SqliteTx(&mut tx), client_id, upto).await?;
        Self::delete_bodies_if_unreferenced(&mut tx, &bodies).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn put_group(
        &self,
        owner: &str,
        group_id: &str,
        members: &[String],
        now: Millis,
    ) -> StoreResult<bool> {
        let (members, everyone) = common::group_clients(owner, members);
        let members_json = json_list(&members)?;
        let mut tx = self.write_tx().await?;
        Self::require_clients(&mut tx, &everyone).await?;
        let created = common::insert_group(Conn::SqliteTx(&mut tx), owner, group_id, now).await?;
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

    async fn delete_group(&self, owner: &str, group_id: &str) -> StoreResult<bool> {
        // Messages, members and idempotency keys go with it (ON DELETE CASCADE).
        let mut tx = self.write_tx().await?;
        let deleted = common::delete_group(Conn::SqliteTx(&mut tx), owner, group_id).await?;
        tx.commit().await?;
        Ok(deleted)
    }

    async fn sync_candidates(
        &self,
        reader: &str,
        cursors: &[SyncCursor],
    ) -> StoreResult<Vec<SyncCandidate>> {
        // One query for every cursor; groups with nothing new cost one index lookup each.
        let list: Vec<(&str, &str, i64)> = cursors
            .iter()
            .map(|c| (c.owner.as_str(), c.group_id.as_str(), to_db(c.after)))
            .collect();
        let rows: Vec<sync::CandidateRow> = sqlx::query_as(
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
        Ok(rows
            .into_iter()
            .map(|row| sync::candidate(0, reader, row))
            .collect())
    }

    /// In one query.
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
        let rows: Vec<RangeMessageRow> = sqlx::query_as(
            "SELECT r.value ->> 0, m.seq, m.sender, m.data, m.received_at FROM json_each(?) r \
             JOIN messages m ON m.group_ref = r.value ->> 1 AND m.seq > r.value ->> 2 AND m.seq <= r.value ->> 3 \
             ORDER BY r.key, m.seq",
        )
        .bind(json_list(&wanted)?)
        .fetch_all(&self.readers)
        .await?;
        Ok(rows.into_iter().map(common::range_message).collect())
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
            // The bodies of the welcomes just pruned (and any other unreferenced one); the cutoff
            // (`? >= 0`, always true) only keeps the statement's shape.
            (
                "DELETE FROM welcome_bodies WHERE id IN (SELECT b.id FROM welcome_bodies b \
                 WHERE ? >= 0 AND NOT EXISTS (SELECT 1 FROM welcomes w WHERE w.body = b.id) LIMIT ?)",
                0,
                &mut stats.welcome_bodies,
            ),
            (
                "DELETE FROM idempotency_keys WHERE (group_ref, sender, idem_key) IN \
                 (SELECT group_ref, sender, idem_key FROM idempotency_keys WHERE created_at < ? LIMIT ?)",
                idempotency_before,
                &mut stats.idempotency_keys,
            ),
            (
                "DELETE FROM client_usage WHERE (client_id, day) IN \
                 (SELECT client_id, day FROM client_usage WHERE day < ? LIMIT ?)",
                utc_day(idempotency_before),
                &mut stats.usage_days,
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
