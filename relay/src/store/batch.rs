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
//! publishes [`StoreEvent::Group`] so long polls wake.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Mutex;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::{AppendOutcome, AppendRequest, StoreError, StoreEvent, StoreResult};
use crate::notify::Notifier;

/// How a backend stores one batch of appends.
pub trait ApplyBatch: Send + Sync + 'static {
    /// Checks and stores `batch` in order, in ONE transaction, and returns one outcome per
    /// request (same order). A later request sees the effects of earlier ones (seq, idempotency
    /// keys). An error means nothing of the batch was committed.
    fn apply_batch<'a>(
        &'a self,
        batch: &'a [AppendRequest],
    ) -> impl Future<Output = Result<Vec<AppendOutcome>, sqlx::Error>> + Send + 'a;
}

struct Job {
    request: AppendRequest,
    reply: oneshot::Sender<StoreResult<AppendOutcome>>,
}

/// The queue in front of the writer task.
pub struct BatchWriter {
    /// `None` once closing: new appends are refused.
    queue: Mutex<Option<mpsc::Sender<Job>>>,
    task: tokio::sync::Mutex<Option<JoinHandle<()>>>,
}

impl BatchWriter {
    /// Starts the writer task. `max_batch` bounds the appends per transaction (and so the
    /// latency a large batch adds to the appends queued behind it).
    pub fn spawn<A: ApplyBatch>(applier: A, max_batch: usize, notifier: Notifier) -> Self {
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
    pub async fn append(&self, request: AppendRequest) -> StoreResult<AppendOutcome> {
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
    pub async fn close(&self) {
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
