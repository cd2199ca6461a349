//! Group commit: one writer task per store gathers the appends that are waiting into one
//! transaction.
//!
//! A durable commit costs one fsync (SQLite `synchronous=FULL`) or one WAL flush (PostgreSQL).
//! One transaction per request caps a disk at a few thousand appends per second; sharing the
//! commit among every append that queued up meanwhile lifts that several times, and costs an
//! idle relay nothing (a lone append is a batch of one and is not delayed).
//!
//! The backend supplies [`ApplyBatch`]: "check and store these appends, in order, in one
//! transaction". The writer answers every waiter only after that transaction committed, then
//! publishes [`StoreEvent::Group`] so long polls wake. What an append's outcome is, given its
//! group, the member list and the idempotency keys, is decided the same way on both backends
//! ([`plan`]); each backend reads those and writes the result in its own SQL.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Mutex;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::{AppendOutcome, AppendRequest, DailyQuota, StoreError, StoreResult, from_db};
use crate::notify::{Notifier, StoreEvent};

/// How a backend stores one batch of appends.
pub(crate) trait ApplyBatch: Send + Sync + 'static {
    /// Checks and stores `batch` in order, in ONE transaction, and returns one outcome per
    /// request (same order). A later request sees the effects of earlier ones (seq, idempotency
    /// keys). An error means nothing of the batch was committed.
    fn apply_batch<'a>(
        &'a self,
        batch: &'a [AppendRequest],
    ) -> impl Future<Output = Result<Vec<AppendOutcome>, sqlx::Error>> + Send + 'a;
}

/// `(owner, group_id)` of an append.
pub(crate) type GroupName<'a> = (&'a str, &'a str);

/// A group a batch appends to, as read at the start of its transaction.
pub(crate) struct BatchGroup {
    pub(crate) id: i64,
    /// `last_seq` when read.
    pub(crate) read_seq: i64,
    /// `last_seq` after the appends planned so far.
    pub(crate) last_seq: i64,
}

impl BatchGroup {
    pub(crate) fn new(id: i64, last_seq: i64) -> Self {
        BatchGroup {
            id,
            read_seq: last_seq,
            last_seq,
        }
    }

    /// Did the batch append to it?
    pub(crate) fn touched(&self) -> bool {
        self.last_seq > self.read_seq
    }
}

/// The groups of `batch`, each once, in first-seen order.
pub(crate) fn group_names(batch: &[AppendRequest]) -> Vec<GroupName<'_>> {
    let mut seen = HashSet::new();
    batch
        .iter()
        .map(|r| (r.owner.as_str(), r.group_id.as_str()))
        .filter(|name| seen.insert(*name))
        .collect()
}

/// The groups of a batch that exist, from `(owner, group_id, id, last_seq)` rows, keyed by the
/// batch's own names.
pub(crate) fn batch_groups<'a>(
    names: &[GroupName<'a>],
    rows: Vec<(String, String, i64, i64)>,
) -> HashMap<GroupName<'a>, BatchGroup> {
    let mut found: HashMap<(String, String), (i64, i64)> = rows
        .into_iter()
        .map(|(owner, group_id, id, last_seq)| ((owner, group_id), (id, last_seq)))
        .collect();
    names
        .iter()
        .filter_map(|&(owner, group_id)| {
            let (id, last_seq) = found.remove(&(owner.to_string(), group_id.to_string()))?;
            Some(((owner, group_id), BatchGroup::new(id, last_seq)))
        })
        .collect()
}

/// What a batch needs to know besides its groups, asked inside its transaction.
pub(crate) trait Lookups: Send {
    /// May `sender`, who does not own the group `group_ref`, post to it (a current member)?
    fn may_post(
        &mut self,
        group_ref: i64,
        sender: &str,
    ) -> impl Future<Output = Result<bool, sqlx::Error>> + Send;

    /// The body hash and seq stored before this batch under this idempotency key.
    fn stored_key(
        &mut self,
        group_ref: i64,
        sender: &str,
        key: &str,
    ) -> impl Future<Output = Result<Option<(Vec<u8>, i64)>, sqlx::Error>> + Send;

    /// What `sender` stored on `day` before this batch (asked only when a quota is on). The
    /// backend makes sure no other transaction changes it until this one ends.
    fn usage(
        &mut self,
        sender: &str,
        day: i64,
    ) -> impl Future<Output = Result<Usage, sqlx::Error>> + Send;
}

/// Messages and bytes a client stored on one UTC day (`client_usage`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Usage {
    pub(crate) messages: i64,
    pub(crate) bytes: i64,
}

/// A client's usage of one day after a batch: `(client_id, day, usage)`.
pub(crate) type NewUsage<'a> = (&'a str, i64, Usage);

/// A message the batch stores: its group, its seq and its request.
pub(crate) type NewMessage<'a> = (i64, i64, &'a AppendRequest);

/// An idempotency key a batch stores, with the seq of its message.
pub(crate) struct NewKey<'a> {
    pub(crate) group_ref: i64,
    pub(crate) sender: &'a str,
    pub(crate) key: &'a str,
    pub(crate) body_hash: &'a [u8; 32],
    pub(crate) seq: i64,
    pub(crate) created_at: i64,
}

/// The idempotency keys of those of `messages` whose request has one.
pub(crate) fn new_keys<'a>(messages: &[NewMessage<'a>]) -> Vec<NewKey<'a>> {
    messages
        .iter()
        .filter_map(|&(group_ref, seq, req)| {
            let (key, body_hash) = req.idempotency.as_ref()?;
            Some(NewKey {
                group_ref,
                sender: &req.sender,
                key,
                body_hash,
                seq,
                created_at: req.received_at,
            })
        })
        .collect()
}

/// The outcome of every append of a batch, and the messages to store.
pub(crate) struct Plan<'a> {
    pub(crate) outcomes: Vec<AppendOutcome>,
    /// In batch order; those whose request has an idempotency key store the key too.
    pub(crate) messages: Vec<NewMessage<'a>>,
    /// The senders' usage after the batch, for each (sender, day) that stored anything; empty
    /// when no quota is on.
    pub(crate) usage: Vec<NewUsage<'a>>,
}

/// Decides every append of `batch` in order, advancing `last_seq` of its group in `groups`: a
/// later append sees the seqs, idempotency keys and quota usage of earlier ones.
pub(crate) async fn plan<'a>(
    batch: &'a [AppendRequest],
    groups: &mut HashMap<GroupName<'a>, BatchGroup>,
    lookups: &mut impl Lookups,
    quota: DailyQuota,
) -> Result<Plan<'a>, sqlx::Error> {
    let mut plan = Plan {
        outcomes: Vec::with_capacity(batch.len()),
        messages: Vec::with_capacity(batch.len()),
        usage: Vec::new(),
    };
    // (sender, day) -> (usage so far, did this batch add to it)
    let mut usage: HashMap<(&str, i64), (Usage, bool)> = HashMap::new();
    // Keys stored by this batch: (group, sender, key) -> (body hash, seq).
    let mut batch_keys: HashMap<(i64, &str, &str), (&[u8; 32], i64)> = HashMap::new();
    for req in batch {
        let Some(group) = groups.get_mut(&(req.owner.as_str(), req.group_id.as_str())) else {
            plan.outcomes.push(AppendOutcome::NoGroup);
            continue;
        };
        if req.sender != req.owner && !lookups.may_post(group.id, &req.sender).await? {
            plan.outcomes.push(AppendOutcome::Forbidden);
            continue;
        }
        if let Some((key, body_hash)) = &req.idempotency {
            let seen = match batch_keys.get(&(group.id, req.sender.as_str(), key.as_str())) {
                Some((hash, seq)) => Some((hash.to_vec(), *seq)),
                None => lookups.stored_key(group.id, &req.sender, key).await?,
            };
            if let Some((seen_hash, seq)) = seen {
                plan.outcomes.push(if seen_hash == body_hash {
                    AppendOutcome::Duplicate(from_db(seq))
                } else {
                    AppendOutcome::IdempotencyConflict
                });
                continue;
            }
        }
        if quota.is_on() {
            let day = super::utc_day(req.received_at);
            let entry = match usage.entry((req.sender.as_str(), day)) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert((lookups.usage(&req.sender, day).await?, false))
                }
            };
            if let Some(what) = quota.exceeded(entry.0, 1, req.data.len()) {
                plan.outcomes.push(AppendOutcome::OverQuota(what));
                continue;
            }
            entry.0 = entry.0.plus(1, req.data.len());
            entry.1 = true;
        }
        if let Some((key, body_hash)) = &req.idempotency {
            batch_keys.insert(
                (group.id, req.sender.as_str(), key.as_str()),
                (body_hash, group.last_seq + 1),
            );
        }
        group.last_seq += 1;
        plan.messages.push((group.id, group.last_seq, req));
        plan.outcomes
            .push(AppendOutcome::Stored(from_db(group.last_seq)));
    }
    plan.usage = usage
        .into_iter()
        .filter(|(_, (_, added))| *added)
        .map(|((sender, day), (u, _))| (sender, day, u))
        .collect();
    // A fixed order, so concurrent writers of the same rows take their locks alike.
    plan.usage
        .sort_unstable_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
    Ok(plan)
}

struct Job {
    request: AppendRequest,
    reply: oneshot::Sender<StoreResult<AppendOutcome>>,
}

/// The queue in front of the writer task.
pub(crate) struct BatchWriter {
    /// `None` once closing: new appends are refused.
    queue: Mutex<Option<mpsc::Sender<Job>>>,
    task: tokio::sync::Mutex<Option<JoinHandle<()>>>,
}

impl BatchWriter {
    /// Starts the writer task. `max_batch` bounds the appends per transaction (and so the
    /// latency a large batch adds to the appends queued behind it).
    pub(crate) fn spawn<A: ApplyBatch>(applier: A, max_batch: usize, notifier: Notifier) -> Self {
        let max_batch = max_batch.max(1);
        // Bounded: when the database cannot keep up, appenders wait here instead of piling up
        // request bodies in memory.
        let (tx, rx) = mpsc::channel(max_batch.saturating_mul(4));
        let task = tokio::spawn(run(applier, rx, max_batch, notifier));
        BatchWriter {
            queue: Mutex::new(Some(tx)),
            task: tokio::sync::Mutex::new(Some(task)),
        }
    }

    /// Queues one append and waits until its batch committed (or failed).
    pub(crate) async fn append(&self, request: AppendRequest) -> StoreResult<AppendOutcome> {
        let queue = match self.queue.lock() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        let Some(queue) = queue else {
            return Err(StoreError::Unavailable("the store is shutting down".into()));
        };
        let (reply, answer) = oneshot::channel();
        queue
            .send(Job { request, reply })
            .await
            .map_err(|_| StoreError::Unavailable("the append writer has stopped".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Unavailable("the append writer has stopped".into()))?
    }

    /// Refuses new appends, lets the writer finish everything already queued, and waits for it.
    pub(crate) async fn close(&self) {
        match self.queue.lock() {
            Ok(mut guard) => drop(guard.take()),
            Err(poisoned) => drop(poisoned.into_inner().take()),
        }
        if let Some(task) = self.task.lock().await.take()
            && let Err(e) = task.await
        {
            tracing::error!(error = %e, "append writer task failed");
        }
    }
}

async fn run<A: ApplyBatch>(
    applier: A,
    mut rx: mpsc::Receiver<Job>,
    max_batch: usize,
    notifier: Notifier,
) {
    let mut jobs = Vec::with_capacity(max_batch);
    // `recv_many` waits for the first job, then takes whatever else is queued: no timer, so a
    // lone append is written at once and batches form exactly when the disk is the bottleneck.
    while rx.recv_many(&mut jobs, max_batch).await > 0 {
        let (requests, replies): (Vec<AppendRequest>, Vec<_>) =
            jobs.drain(..).map(|j| (j.request, j.reply)).unzip();
        match applier.apply_batch(&requests).await {
            Ok(outcomes) if outcomes.len() == requests.len() => {
                let mut woken = HashSet::new();
                for (request, outcome) in requests.iter().zip(&outcomes) {
                    if matches!(outcome, AppendOutcome::Stored(_))
                        && woken.insert((request.owner.as_str(), request.group_id.as_str()))
                    {
                        notifier.publish(StoreEvent::Group {
                            owner: request.owner.clone(),
                            group_id: request.group_id.clone(),
                        });
                    }
                }
                for (reply, outcome) in replies.into_iter().zip(outcomes) {
                    // The requester may have gone away (client disconnected); its message is
                    // stored anyway, as a retry with the same idempotency key will find.
                    let _ = reply.send(Ok(outcome));
                }
            }
            Ok(outcomes) => {
                tracing::error!(
                    expected = requests.len(),
                    got = outcomes.len(),
                    "append batch returned the wrong number of outcomes"
                );
                fail_all(replies, "append batch answered incompletely");
            }
            Err(e) => {
                tracing::error!(error = %e, appends = requests.len(), "append batch failed; nothing of it was stored");
                fail_all(replies, "append batch failed");
            }
        }
    }
}

fn fail_all(replies: Vec<oneshot::Sender<StoreResult<AppendOutcome>>>, why: &str) {
    for reply in replies {
        let _ = reply.send(Err(StoreError::Unavailable(why.to_string())));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Fails every other batch; records batch sizes.
    struct Flaky {
        calls: Arc<AtomicUsize>,
        sizes: Arc<Mutex<Vec<usize>>>,
    }

    impl ApplyBatch for Flaky {
        async fn apply_batch<'a>(
            &'a self,
            batch: &'a [AppendRequest],
        ) -> Result<Vec<AppendOutcome>, sqlx::Error> {
            self.sizes.lock().unwrap().push(batch.len());
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            if self.calls.fetch_add(1, Ordering::SeqCst) == 0 {
                return Err(sqlx::Error::PoolTimedOut);
            }
            Ok(batch
                .iter()
                .enumerate()
                .map(|(i, _)| AppendOutcome::Stored(i as u64 + 1))
                .collect())
        }
    }

    fn request() -> AppendRequest {
        AppendRequest {
            owner: "alice".into(),
            group_id: "ab".into(),
            sender: "alice".into(),
            data: vec![1],
            idempotency: None,
            received_at: 0,
        }
    }

    #[tokio::test]
    async fn a_failed_batch_fails_its_waiters_and_the_writer_goes_on() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let writer = Arc::new(BatchWriter::spawn(
            Flaky {
                calls: Arc::new(AtomicUsize::new(0)),
                sizes: sizes.clone(),
            },
            64,
            Notifier::new(),
        ));
        let first = writer.append(request()).await;
        assert!(matches!(first, Err(StoreError::Unavailable(_))));
        // Many concurrent appends while the writer is busy are gathered into few batches.
        let mut tasks = Vec::new();
        for _ in 0..32 {
            let w = writer.clone();
            tasks.push(tokio::spawn(async move { w.append(request()).await }));
        }
        for t in tasks {
            assert!(matches!(t.await.unwrap(), Ok(AppendOutcome::Stored(_))));
        }
        assert!(sizes.lock().unwrap().len() < 32);
        writer.close().await;
        assert!(matches!(
            writer.append(request()).await,
            Err(StoreError::Unavailable(_))
        ));
    }
}
