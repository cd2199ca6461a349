//! Wakes long polls when something is stored.
//!
//! Stores publish a [`StoreEvent`] after each commit. A long poll subscribes *before* it reads,
//! naming what it waits for (its groups, its inbox): an event wakes only the subscriptions that
//! name its group or inbox, so a relay holding many idle long polls does no work for them when
//! others' messages arrive. A wake-up that comes while the subscriber is not waiting is kept (a
//! permit, as with tokio's [`Notify`]), so an event committed between its read and its wait is
//! not lost. On PostgreSQL a listener task also forwards `NOTIFY`s from other relay processes
//! sharing the database, and publishes [`StoreEvent::Resync`] (wake everyone) after its
//! connection was lost and is back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

/// Cheap to clone; all clones share one registry of subscriptions.
#[derive(Clone, Default)]
pub(crate) struct Notifier {
    inner: Arc<Mutex<Registry>>,
}

#[derive(Default)]
struct Registry {
    next_id: u64,
    /// Every subscription, for `Resync`.
    all: HashMap<u64, Arc<Notify>>,
    /// The subscriptions that name each group or inbox.
    by_key: HashMap<EventKey, HashMap<u64, Arc<Notify>>>,
}

fn lock(registry: &Mutex<Registry>) -> MutexGuard<'_, Registry> {
    // Every change is a few map operations that cannot leave the registry half-changed.
    registry.lock().unwrap_or_else(|p| p.into_inner())
}

impl Notifier {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Wakes every subscription that waits for `event` (all of them for `Resync`). Never
    /// blocks on a subscriber.
    pub(crate) fn publish(&self, event: StoreEvent) {
        let registry = lock(&self.inner);
        let key = match event {
            StoreEvent::Group { owner, group_id } => EventKey::Group { owner, group_id },
            StoreEvent::Inbox { client_id } => EventKey::Inbox { client_id },
            StoreEvent::Resync => {
                registry.all.values().for_each(|n| n.notify_one());
                return;
            }
        };
        if let Some(subscribers) = registry.by_key.get(&key) {
            subscribers.values().for_each(|n| n.notify_one());
        }
    }

    /// A subscription to events of `keys` (and to `Resync`), from now on.
    pub(crate) fn subscribe(&self, keys: Vec<EventKey>) -> Subscription {
        let notify = Arc::new(Notify::new());
        let mut registry = lock(&self.inner);
        let id = registry.next_id;
        registry.next_id += 1;
        registry.all.insert(id, Arc::clone(&notify));
        for key in &keys {
            registry
                .by_key
                .entry(key.clone())
                .or_default()
                .insert(id, Arc::clone(&notify));
        }
        drop(registry);
        Subscription {
            registry: Arc::clone(&self.inner),
            id,
            keys,
            notify,
        }
    }
}

/// What a subscription waits for: one group's messages or one client's inbox.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum EventKey {
    Group { owner: String, group_id: String },
    Inbox { client_id: String },
}

/// Wakes when an event it names is published; unsubscribes when dropped.
pub(crate) struct Subscription {
    registry: Arc<Mutex<Registry>>,
    id: u64,
    keys: Vec<EventKey>,
    notify: Arc<Notify>,
}

impl Subscription {
    /// Resolves once an event it names (or `Resync`) was published since the subscription was
    /// made or this last resolved. Cancel-safe.
    pub(crate) async fn notified(&self) {
        self.notify.notified().await;
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut registry = lock(&self.registry);
        registry.all.remove(&self.id);
        for key in &self.keys {
            if let Some(subscribers) = registry.by_key.get_mut(key) {
                subscribers.remove(&self.id);
                if subscribers.is_empty() {
                    registry.by_key.remove(key);
                }
            }
        }
    }
}

/// Something new was stored: the notifier wakes long polls that wait for it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum StoreEvent {
    /// A message was appended to `{owner}/{group_id}`.
    Group { owner: String, group_id: String },
    /// A welcome arrived in this client's inbox.
    Inbox { client_id: String },
    /// Events may have been missed (the PostgreSQL LISTEN connection was lost and is back):
    /// anything may have changed, so every waiter reads again. Never sent between processes.
    Resync,
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Waker};

    use super::*;

    fn ready(f: impl Future<Output = ()>) -> bool {
        let mut f = pin!(f);
        f.as_mut()
            .poll(&mut Context::from_waker(Waker::noop()))
            .is_ready()
    }

    fn group(owner: &str) -> StoreEvent {
        StoreEvent::Group {
            owner: owner.into(),
            group_id: "ab".into(),
        }
    }

    fn group_key(owner: &str) -> EventKey {
        EventKey::Group {
            owner: owner.into(),
            group_id: "ab".into(),
        }
    }

    #[test]
    fn only_subscribers_of_the_event_wake_and_a_wake_up_is_kept_until_waited_for() {
        let n = Notifier::new();
        let alice = n.subscribe(vec![group_key("alice")]);
        let inbox = n.subscribe(vec![EventKey::Inbox {
            client_id: "bob".into(),
        }]);
        n.publish(group("alice"));
        n.publish(group("carol"));
        assert!(ready(alice.notified()), "published before it waited: kept");
        assert!(!ready(alice.notified()), "consumed");
        assert!(!ready(inbox.notified()));
        n.publish(StoreEvent::Inbox {
            client_id: "bob".into(),
        });
        assert!(ready(inbox.notified()));
        n.publish(StoreEvent::Resync);
        assert!(ready(alice.notified()) && ready(inbox.notified()));
    }

    #[test]
    fn dropped_subscriptions_leave_nothing_behind() {
        let n = Notifier::new();
        let a = n.subscribe(vec![group_key("alice"), group_key("bob")]);
        let b = n.subscribe(vec![group_key("alice")]);
        drop(a);
        n.publish(group("alice"));
        assert!(ready(b.notified()));
        drop(b);
        let registry = lock(&n.inner);
        assert!(registry.all.is_empty() && registry.by_key.is_empty());
    }
}
