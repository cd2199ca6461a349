//! The one driver of the engine's outbox ([`perform_outbox`]), for every shell: the async
//! facade ([`crate::client::Client`]), a test network, a benchmark.
//!
//! The driver performs the outbox oldest first through a [`Transport`] (the relay, or a
//! stand-in for it) and tells the engine, through an [`OutboxEngine`], what was performed.
//! Both traits return futures, so that the facade can run the engine off the async executor;
//! a synchronous shell implements them with plain code and runs the driver with
//! `futures::executor::block_on`.

use std::collections::VecDeque;
use std::future::Future;

use sha2::{Digest as _, Sha256};

use crate::engine::{Effect, Event, Input, OutboxItem};

/// The relay side of the outbox: one call per [`Effect`].
pub trait Transport {
    /// What a call fails with.
    type Error: std::fmt::Display;

    /// `POST /v1/key-packages/claim` for `client_ids`.
    fn claim_key_packages(
        &mut self,
        client_ids: Vec<String>,
    ) -> impl Future<Output = Result<ClaimAnswer, Self::Error>> + Send;

    /// `PUT /v1/groups/{our id}/{group_id}` with `members` (create or replace).
    fn put_relay_group(
        &mut self,
        group_id: String,
        members: Vec<String>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// `POST /v1/welcomes` with these `(to, data)` pairs.
    fn post_welcomes(
        &mut self,
        welcomes: Vec<(String, Vec<u8>)>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// `POST /v1/groups/{owner}/{group_id}/messages` with `idempotency_key`, which is stable
    /// across restarts (see [`idempotency_key`]), so that a post repeated after a crash is
    /// stored once.
    fn post_message(
        &mut self,
        owner: String,
        group_id: String,
        data: Vec<u8>,
        idempotency_key: String,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Whether retrying cannot change `error` (a refusal of the item itself): the driver then
    /// drops the item, reported as [`Event::Ignored`], so that one bad item cannot block the
    /// outbox for ever. Any other error stops the driver and keeps the item for the next run.
    fn is_permanent(&self, error: &Self::Error) -> bool;
}

/// The answer to a key-package claim.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClaimAnswer {
    /// `(client_id, MLSMessage-framed key package)` pairs.
    pub key_packages: Vec<(String, Vec<u8>)>,
    /// Client ids for which there was none.
    pub missing: Vec<String>,
}

/// The engine side of the outbox: [`crate::engine::Engine`] itself, or a shell's handle to
/// one. Every call first marks `performed` done ([`crate::engine::Engine::outbox_done_many`],
/// one transaction) when it is not empty.
pub trait OutboxEngine {
    /// What a call fails with.
    type Error;

    /// Marks `performed` done, then returns the outbox, oldest first
    /// ([`crate::engine::Engine::outbox`]). When it holds anything but key-package claims,
    /// everything the engine committed so far must be durable before this returns: what is
    /// posted must never be lost locally once it reached the relay.
    fn outbox(
        &mut self,
        performed: Vec<u64>,
    ) -> impl Future<Output = Result<Vec<OutboxItem>, Self::Error>> + Send;

    /// Marks `performed` done.
    fn outbox_done(
        &mut self,
        performed: Vec<u64>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Marks `performed` done, then hands the engine the answer to a claim
    /// ([`Input::ClaimedKeyPackages`], which marks the claim's item done itself).
    fn handle_claim(
        &mut self,
        performed: Vec<u64>,
        answer: Input,
    ) -> impl Future<Output = Result<Vec<Event>, Self::Error>> + Send;
}

/// Why [`perform_outbox`] stopped.
#[derive(Debug)]
pub enum OutboxError<E, T> {
    /// The engine failed.
    Engine(E),
    /// The transport failed (not permanently): the item stays in the outbox.
    Transport(T),
}

/// Performed items are marked done in batches of this many: each mark is a database commit
/// (an fsync with a synchronous database). A crash before the mark posts them again with the
/// same idempotency keys, which the relay stores once.
const DONE_BATCH: usize = 64;

/// Carries out the engine's outbox, oldest first, until it is empty. Returns the events that
/// claim answers produced.
///
/// It works through one snapshot of the outbox at a time and reads it again only after a
/// claim answer (which queues new items), so that a long outbox is read a few times, not once
/// per item. Items performed before an error are marked done all the same.
pub async fn perform_outbox<E, T>(
    engine: &mut E,
    transport: &mut T,
) -> Result<Vec<Event>, OutboxError<E::Error, T::Error>>
where
    E: OutboxEngine,
    T: Transport,
{
    let mut events = Vec::new();
    let mut done = Vec::new();
    let result = perform_items(engine, transport, &mut events, &mut done).await;
    engine
        .outbox_done(done)
        .await
        .map_err(OutboxError::Engine)?;
    result.map(|()| events)
}

/// [`perform_outbox`]'s loop; performed items not yet marked are left in `done`.
async fn perform_items<E, T>(
    engine: &mut E,
    transport: &mut T,
    events: &mut Vec<Event>,
    done: &mut Vec<u64>,
) -> Result<(), OutboxError<E::Error, T::Error>>
where
    E: OutboxEngine,
    T: Transport,
{
    let mut queue = VecDeque::new();
    loop {
        if queue.is_empty() {
            // What was performed must not be read (and performed) again.
            let items = engine.outbox(std::mem::take(done)).await;
            queue.extend(items.map_err(OutboxError::Engine)?);
        }
        let Some(item) = queue.pop_front() else {
            return Ok(());
        };
        let id = item.id;
        let result = match item.effect {
            Effect::ClaimKeyPackages { client_ids, .. } => {
                // Its answer queues new items: read the outbox again after it.
                queue.clear();
                let answer = transport
                    .claim_key_packages(client_ids)
                    .await
                    .map_err(OutboxError::Transport)?;
                let input = Input::ClaimedKeyPackages {
                    outbox_id: id,
                    key_packages: answer.key_packages,
                    missing: answer.missing,
                };
                let claimed = engine.handle_claim(std::mem::take(done), input).await;
                events.extend(claimed.map_err(OutboxError::Engine)?);
                continue;
            }
            Effect::PutRelayGroup { group_id, members } => {
                transport.put_relay_group(group_id, members).await
            }
            Effect::PostWelcomes(welcomes) => transport.post_welcomes(welcomes).await,
            Effect::PostMessage {
                owner,
                group_id,
                data,
            } => {
                let key = idempotency_key(id, &data);
                transport.post_message(owner, group_id, data, key).await
            }
        };
        match result {
            Ok(()) => {}
            Err(e) if transport.is_permanent(&e) => {
                tracing::warn!(outbox_id = id, error = %e, "relay refused an outbox item; dropping it");
                events.push(Event::Ignored {
                    reason: format!("relay refused outbox item {id}: {e}"),
                });
            }
            Err(e) => return Err(OutboxError::Transport(e)),
        }
        done.push(id);
        if done.len() >= DONE_BATCH {
            let marked = engine.outbox_done(std::mem::take(done)).await;
            marked.map_err(OutboxError::Engine)?;
        }
    }
}

/// Idempotency key of outbox item `id` with body `data`: stable across restarts, so a post
/// retried after a crash is stored once; the body hash keeps keys of a re-created state
/// database from clashing with old ones.
pub fn idempotency_key(id: u64, data: &[u8]) -> String {
    let digest = Sha256::digest(data);
    format!("ob{id}-{}", hex::encode(&digest[..12]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotency_keys_are_valid_and_stable() {
        let k = idempotency_key(42, b"hello");
        assert!(dmls_api::is_valid_idempotency_key(&k));
        assert_eq!(k, idempotency_key(42, b"hello"));
        assert_ne!(k, idempotency_key(43, b"hello"));
    }
}
