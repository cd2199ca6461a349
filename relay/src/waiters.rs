//! Requests that hold a connection open while they wait, per client and in all: the caps that
//! keep one client (or many) from tying up the relay's memory and file descriptors.
//!
//! A request registers here when it starts to wait and gets a [`Slot`], which deregisters it
//! when dropped. Two caps apply (API.md "Limits"):
//! - per client (`--max-waiting-per-client`): a client that registers one more waiter than its
//!   cap has its OLDEST waiter evicted: that waiter's [`Slot::evicted`] resolves and the request
//!   answers at once with what it has (for a long poll, a normal 200 sync answer). The new one
//!   waits. So a client that reconnects while its earlier requests still wait on the relay
//!   (say, behind a broken NAT) is never locked out by them.
//! - in all (`--max-waiting`): beyond it, registering fails and the request is answered 503
//!   with Retry-After; waiters already registered are not disturbed.
//!
//! `POST /v1/sync` long polls register while they wait; `POST /v1/stream` push streams register
//! for as long as they are open. Both share the same caps; an evicted stream ends.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

/// One waiting request of a client, as the registry keeps it.
struct Entry {
    id: u64,
    /// Sent (or dropped) to evict the waiter.
    evict: oneshot::Sender<()>,
}

#[derive(Default)]
struct State {
    /// Waiters registered, all clients together.
    total: usize,
    next_id: u64,
    /// Each client's waiters, oldest first. Clients without waiters have no entry.
    clients: HashMap<String, VecDeque<Entry>>,
}

/// The registry of waiting requests. One per relay process.
pub(crate) struct Waiters {
    /// Most waiters per client; 0 = no cap.
    per_client: usize,
    /// Most waiters in all; 0 = no cap.
    global: usize,
    state: Mutex<State>,
}

/// The global cap is reached: the request must not wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Full;

/// What registering did besides adding the new waiter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Registered {
    /// Older waiters of the same client evicted to make room (0 or 1 unless the cap changed).
    pub(crate) evicted: usize,
}

/// How many clients have 1, 2-4, 5-8 and more than 8 waiters (`/metrics`).
pub(crate) const BUCKETS: [&str; 4] = ["1", "2-4", "5-8", "9+"];

impl Waiters {
    pub(crate) fn new(per_client: usize, global: usize) -> Self {
        Waiters {
            per_client,
            global,
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state stays consistent across a panic elsewhere: every change is a few plain
        // assignments that cannot panic halfway.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a waiter of `client_id`, evicting the client's oldest ones beyond its cap.
    /// `Err(Full)` (and nothing changed) when the global cap is reached.
    pub(crate) fn register(self: &Arc<Self>, client_id: &str) -> Result<(Slot, Registered), Full> {
        let mut state = self.lock();
        let mut evicted = 0;
        if let Some(queue) = state.clients.get_mut(client_id)
            && self.per_client > 0
        {
            while queue.len() >= self.per_client {
                let Some(oldest) = queue.pop_front() else {
                    break;
                };
                // The waiter may have finished meanwhile and dropped its receiver: fine.
                let _ = oldest.evict.send(());
                evicted += 1;
            }
        }
        state.total -= evicted;
        // A client at its own cap always gets in (its oldest made room), so the global cap
        // refuses only clients below theirs.
        if self.global > 0 && state.total >= self.global {
            return Err(Full);
        }
        let id = state.next_id;
        state.next_id += 1;
        state.total += 1;
        let (evict, evicted_rx) = oneshot::channel();
        state
            .clients
            .entry(client_id.to_owned())
            .or_default()
            .push_back(Entry { id, evict });
        Ok((
            Slot {
                waiters: Arc::clone(self),
                client_id: client_id.to_owned(),
                id,
                evicted: evicted_rx,
            },
            Registered { evicted },
        ))
    }

    /// Waiters registered now, all clients together.
    pub(crate) fn total(&self) -> usize {
        self.lock().total
    }

    /// Clients with 1, 2-4, 5-8 and more than 8 waiters, in the order of [`BUCKETS`].
    pub(crate) fn clients_by_waiting(&self) -> [usize; 4] {
        let state = self.lock();
        let mut buckets = [0; 4];
        for queue in state.clients.values() {
            let i = match queue.len() {
                0 => continue,
                1 => 0,
                2..=4 => 1,
                5..=8 => 2,
                _ => 3,
            };
            buckets[i] += 1;
        }
        buckets
    }

    fn deregister(&self, client_id: &str, id: u64) {
        let mut state = self.lock();
        let Some(queue) = state.clients.get_mut(client_id) else {
            return;
        };
        // Evicted entries are gone already; a live one is found near the front (oldest first).
        let removed = match queue.iter().position(|e| e.id == id) {
            Some(at) => queue.remove(at).is_some(),
            None => false,
        };
        if queue.is_empty() {
            state.clients.remove(client_id);
        }
        if removed {
            state.total -= 1;
        }
    }
}

/// A registered waiter; deregisters when dropped.
pub(crate) struct Slot {
    waiters: Arc<Waiters>,
    client_id: String,
    id: u64,
    evicted: oneshot::Receiver<()>,
}

impl Slot {
    /// Resolves when this waiter was evicted by a newer one of the same client. Cancel-safe.
    pub(crate) async fn evicted(&mut self) {
        let _ = (&mut self.evicted).await;
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.waiters.deregister(&self.client_id, self.id);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Waker};

    use super::*;

    fn resolved(f: impl Future<Output = ()>) -> bool {
        let mut f = pin!(f);
        f.as_mut()
            .poll(&mut Context::from_waker(Waker::noop()))
            .is_ready()
    }

    #[test]
    fn a_client_over_its_cap_evicts_its_oldest_waiter_only() {
        let w = Arc::new(Waiters::new(2, 0));
        let (mut a1, r) = w.register("alice").unwrap();
        assert_eq!(r.evicted, 0);
        let (mut a2, _) = w.register("alice").unwrap();
        let (mut b1, _) = w.register("bob").unwrap();
        assert!(!resolved(a1.evicted()));
        let (mut a3, r) = w.register("alice").unwrap();
        assert_eq!(r.evicted, 1);
        assert!(resolved(a1.evicted()), "the oldest is evicted");
        assert!(!resolved(a2.evicted()));
        assert!(!resolved(a3.evicted()));
        assert!(!resolved(b1.evicted()), "another client is unaffected");
        assert_eq!(w.total(), 3);
        assert_eq!(w.clients_by_waiting(), [1, 1, 0, 0]);
        drop(a1);
        assert_eq!(w.total(), 3, "an evicted slot was counted out already");
        drop((a2, a3, b1));
        assert_eq!(w.total(), 0);
        assert_eq!(w.clients_by_waiting(), [0, 0, 0, 0]);
    }

    #[test]
    fn the_global_cap_refuses_new_waiters_and_frees_with_them() {
        let w = Arc::new(Waiters::new(0, 2));
        let (a, _) = w.register("alice").unwrap();
        let (_b, _) = w.register("bob").unwrap();
        assert!(w.register("carol").is_err());
        assert_eq!(w.total(), 2);
        drop(a);
        assert!(w.register("carol").is_ok());
    }

    #[test]
    fn zero_turns_the_per_client_cap_off() {
        let w = Arc::new(Waiters::new(0, 0));
        let slots: Vec<_> = (0..100).map(|_| w.register("alice").unwrap()).collect();
        assert_eq!(w.total(), 100);
        assert_eq!(w.clients_by_waiting(), [0, 0, 0, 1]);
        drop(slots);
        assert_eq!(w.total(), 0);
    }
}
