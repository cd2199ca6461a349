//! The SQLite append writer: a thread of its own with its own connection, which stores a whole
//! batch of appends ([`super::batch`]) in one blocking call.
//!
//! Through sqlx every statement is a round trip to sqlx's SQLite worker thread, and those
//! hand-offs dominated the cost of an append. Here the batch crosses threads once: the writer
//! task hands it over and is answered when the transaction committed.
//!
//! Only appends use this connection; every other write goes through the store's sqlx writer.
//! Both open their transactions with `BEGIN IMMEDIATE`, so SQLite's write lock serialises
//! them, and the busy timeout makes one wait for the other.

use std::collections::HashMap;
use std::path::Path;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context as _;
use rusqlite::{Connection, OpenFlags, OptionalExtension as _, params};
use tokio::sync::oneshot;

use super::batch::{self, ApplyBatch, BatchGroup, GroupName, Lookups, NewMessage, Usage};
use super::{AppendOutcome, AppendRequest, DailyQuota};

/// Statements kept prepared on the writer's connection.
const STATEMENT_CACHE: usize = 32;

/// A batch for the writer thread, and where to answer.
struct Work {
    batch: Vec<AppendRequest>,
    reply: oneshot::Sender<Result<Vec<AppendOutcome>, sqlx::Error>>,
}

/// The group-commit half of the SQLite store ([`ApplyBatch`]): hands each batch to the writer
/// thread.
pub(crate) struct SqliteAppender {
    /// `None` once dropping: the thread then ends.
    queue: Option<mpsc::Sender<Work>>,
    thread: Option<JoinHandle<()>>,
}

impl SqliteAppender {
    /// Opens a connection to the database file at `path` (created and migrated already) and
    /// starts the writer thread.
    pub(crate) fn start(
        path: &Path,
        busy_timeout: Duration,
        quota: DailyQuota,
    ) -> anyhow::Result<Self> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .with_context(|| format!("cannot open the SQLite database {path:?} for appends"))?;
        // The journal mode is a property of the file (WAL, set when the store opened it); the
        // rest are per connection and must match the store's.
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(busy_timeout)?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        let (queue, work) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("sqlite-appends".into())
            .spawn(move || run(conn, work, quota))
            .context("cannot start the SQLite append thread")?;
        Ok(SqliteAppender {
            queue: Some(queue),
            thread: Some(thread),
        })
    }
}

impl Drop for SqliteAppender {
    fn drop(&mut self) {
        // Closing the queue ends the thread once it finished the batch at hand.
        drop(self.queue.take());
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the SQLite append thread panicked");
        }
    }
}

impl ApplyBatch for SqliteAppender {
    async fn apply_batch<'a>(
        &'a self,
        batch: &'a [AppendRequest],
    ) -> Result<Vec<AppendOutcome>, sqlx::Error> {
        let stopped = || sqlx::Error::WorkerCrashed;
        let (reply, answer) = oneshot::channel();
        self.queue
            .as_ref()
            .ok_or_else(stopped)?
            .send(Work {
                batch: batch.to_vec(),
                reply,
            })
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

fn run(mut conn: Connection, work: mpsc::Receiver<Work>, quota: DailyQuota) {
    while let Ok(Work { batch, reply }) = work.recv() {
        let result = apply(&mut conn, &batch, quota);
        // The writer task may have gone (shutting down); the batch is stored or not either way.
        let _ = reply.send(result);
    }
}

/// Checks and stores `batch` in one transaction (see [`ApplyBatch::apply_batch`]).
fn apply(
    conn: &mut Connection,
    batch: &[AppendRequest],
    quota: DailyQuota,
) -> Result<Vec<AppendOutcome>, sqlx::Error> {
    // The write lock is held from BEGIN IMMEDIATE to COMMIT, so `last_seq` read here cannot
    // change under us: seqs are computed in memory and written back once per group.
    conn.execute_batch("BEGIN IMMEDIATE").map_err(db)?;
    match store(conn, batch, quota) {
        Ok(outcomes) => {
            conn.execute_batch("COMMIT").map_err(db)?;
            Ok(outcomes)
        }
        Err(e) => {
            // Nothing of the batch is kept. A failed COMMIT has rolled back by itself.
            if !conn.is_autocommit()
                && let Err(rollback) = conn.execute_batch("ROLLBACK")
            {
                tracing::error!(error = %rollback, "cannot roll back a failed append batch");
            }
            Err(e)
        }
    }
}

fn store(
    conn: &mut Connection,
    batch: &[AppendRequest],
    quota: DailyQuota,
) -> Result<Vec<AppendOutcome>, sqlx::Error> {
    let names = batch::group_names(batch);
    let mut groups = read_groups(conn, &names)?;
    let mut lookups = SyncLookups {
        conn,
        posters: HashMap::new(),
    };
    // Every lookup answers at once: the plan's future never waits.
    let plan = futures::executor::block_on(batch::plan(batch, &mut groups, &mut lookups, quota))?;
    let conn = lookups.conn;
    insert_messages(conn, &plan.messages)?;
    write_last_seqs(conn, &groups)?;
    let mut usage = conn
        .prepare_cached(
            "INSERT INTO client_usage (client_id, day, messages, bytes) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT (client_id, day) DO UPDATE SET messages = excluded.messages, bytes = excluded.bytes",
        )
        .map_err(db)?;
    for (client_id, day, u) in &plan.usage {
        usage
            .execute(params![client_id, day, u.messages, u.bytes])
            .map_err(db)?;
    }
    Ok(plan.outcomes)
}

/// The groups of a batch that exist, one indexed lookup each.
fn read_groups<'a>(
    conn: &Connection,
    names: &[GroupName<'a>],
) -> Result<HashMap<GroupName<'a>, BatchGroup>, sqlx::Error> {
    let mut select = conn
        .prepare_cached("SELECT id, last_seq FROM relay_groups WHERE owner = ?1 AND group_id = ?2")
        .map_err(db)?;
    let mut rows = Vec::with_capacity(names.len());
    for &(owner, group_id) in names {
        let found: Option<(i64, i64)> = select
            .query_row(params![owner, group_id], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()
            .map_err(db)?;
        if let Some((id, last_seq)) = found {
            rows.push((owner.to_string(), group_id.to_string(), id, last_seq));
        }
    }
    Ok(batch::batch_groups(names, rows))
}

/// The stored messages, and the idempotency keys of those that have one.
fn insert_messages(conn: &Connection, messages: &[NewMessage<'_>]) -> Result<(), sqlx::Error> {
    let mut insert = conn
        .prepare_cached(
            "INSERT INTO messages (group_ref, seq, sender, data, received_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .map_err(db)?;
    for (group_ref, seq, req) in messages {
        insert
            .execute(params![
                group_ref,
                seq,
                req.sender,
                req.data,
                req.received_at
            ])
            .map_err(db)?;
    }
    let mut keys = conn
        .prepare_cached(
            "INSERT INTO idempotency_keys (group_ref, sender, idem_key, body_hash, seq, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )
        .map_err(db)?;
    for k in batch::new_keys(messages) {
        keys.execute(params![
            k.group_ref,
            k.sender,
            k.key,
            &k.body_hash[..],
            k.seq,
            k.created_at
        ])
        .map_err(db)?;
    }
    Ok(())
}

/// Every touched group's new `last_seq`.
fn write_last_seqs(
    conn: &Connection,
    groups: &HashMap<GroupName<'_>, BatchGroup>,
) -> Result<(), sqlx::Error> {
    let mut update = conn
        .prepare_cached("UPDATE relay_groups SET last_seq = ?2 WHERE id = ?1")
        .map_err(db)?;
    for g in groups.values().filter(|g| g.touched()) {
        update.execute(params![g.id, g.last_seq]).map_err(db)?;
    }
    Ok(())
}

/// Asks the batch's transaction, one query per question; a sender's membership once per group.
struct SyncLookups<'c> {
    conn: &'c mut Connection,
    /// group -> sender -> may post
    posters: HashMap<i64, HashMap<String, bool>>,
}

impl Lookups for SyncLookups<'_> {
    async fn may_post(&mut self, group_ref: i64, sender: &str) -> Result<bool, sqlx::Error> {
        if let Some(&known) = self.posters.get(&group_ref).and_then(|m| m.get(sender)) {
            return Ok(known);
        }
        let member = self
            .conn
            .prepare_cached(
                "SELECT 1 FROM group_members WHERE group_ref = ?1 AND client_id = ?2 AND read_upto IS NULL",
            )
            .and_then(|mut s| s.exists(params![group_ref, sender]))
            .map_err(db)?;
        self.posters
            .entry(group_ref)
            .or_default()
            .insert(sender.to_string(), member);
        Ok(member)
    }

    async fn stored_key(
        &mut self,
        group_ref: i64,
        sender: &str,
        key: &str,
    ) -> Result<Option<(Vec<u8>, i64)>, sqlx::Error> {
        self.conn
            .prepare_cached(
                "SELECT body_hash, seq FROM idempotency_keys WHERE group_ref = ?1 AND sender = ?2 AND idem_key = ?3",
            )
            .and_then(|mut s| {
                s.query_row(params![group_ref, sender, key], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .optional()
            })
            .map_err(db)
    }

    async fn usage(&mut self, sender: &str, day: i64) -> Result<Usage, sqlx::Error> {
        // The writer holds SQLite's write lock until COMMIT: nothing else changes the row.
        let row: Option<(i64, i64)> = self
            .conn
            .prepare_cached(
                "SELECT messages, bytes FROM client_usage WHERE client_id = ?1 AND day = ?2",
            )
            .and_then(|mut s| {
                s.query_row(params![sender, day], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()
            })
            .map_err(db)?;
        Ok(row.map_or_else(Usage::default, |(messages, bytes)| Usage {
            messages,
            bytes,
        }))
    }
}

/// A SQLite error of the writer, in the error type batches report.
fn db(e: rusqlite::Error) -> sqlx::Error {
    sqlx::Error::Io(std::io::Error::other(e))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::notify::Notifier;
    use crate::{store, testing};

    fn request(data: &[u8]) -> AppendRequest {
        AppendRequest {
            owner: "alice".into(),
            group_id: "ab".into(),
            sender: "alice".into(),
            data: data.to_vec(),
            idempotency: Some((format!("k{}", data[0]), [data[0]; 32])),
            received_at: 0,
        }
    }

    #[tokio::test]
    async fn a_batch_that_fails_midway_stores_nothing_and_the_writer_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let url = testing::sqlite_test_url(dir.path());
        let s = store::open(&testing::test_config(&url), Notifier::new())
            .await
            .unwrap();
        s.create_client("alice", [1; 32], 0).await.unwrap();
        s.put_group("alice", "ab", &[], 0).await.unwrap();
        let path = dir.path().join("relay.db");
        // The second message of a batch fails, after the first was inserted.
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TRIGGER boom BEFORE INSERT ON messages WHEN NEW.seq = 2 \
             BEGIN SELECT RAISE(ABORT, 'boom'); END;",
        )
        .unwrap();
        let appender =
            SqliteAppender::start(&path, Duration::from_secs(5), DailyQuota::default()).unwrap();
        let batch = vec![request(b"1"), request(b"2")];
        assert!(appender.apply_batch(&batch).await.is_err());
        assert_eq!(
            s.get_group("alice", "ab").await.unwrap().unwrap().last_seq,
            0
        );
        let count: i64 = conn
            .query_row(
                "SELECT (SELECT COUNT(*) FROM messages) + (SELECT COUNT(*) FROM idempotency_keys)",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(count, 0);
        conn.execute_batch("DROP TRIGGER boom").unwrap();
        assert_eq!(
            appender.apply_batch(&batch).await.unwrap(),
            [AppendOutcome::Stored(1), AppendOutcome::Stored(2)]
        );
        // The same keys again: duplicates, nothing more stored.
        assert_eq!(
            appender.apply_batch(&batch).await.unwrap(),
            [AppendOutcome::Duplicate(1), AppendOutcome::Duplicate(2)]
        );
        assert_eq!(
            s.get_group("alice", "ab").await.unwrap().unwrap().last_seq,
            2
        );
        drop(appender);
        s.close().await;
    }
}
