//! Wakes long polls when something is stored.
//!
//! Stores publish a [`StoreEvent`] after each commit. A `sync` long poll subscribes *before* it
//! reads, so an event committed between its read and its wait is not lost. On PostgreSQL a
//! listener task also forwards `NOTIFY`s from other relay processes sharing the database, and
//! publishes [`StoreEvent::Resync`] (wake everyone) after its connection was lost and is back.

use tokio::sync::broadcast;

/// Cheap to clone; all clones share one channel.
#[derive(Clone)]
pub(crate) struct Notifier {
    tx: broadcast::Sender<StoreEvent>,
}

impl Notifier {
    pub(crate) fn new() -> Self {
        // A waiter that lags behind this many events wakes and re-reads (see `Waiter`), so the
        // capacity bounds memory, not correctness.
        let (tx, _) = broadcast::channel(4096);
        Notifier { tx }
    }

    /// Tells every waiter that `event` happened. Never blocks.
    pub(crate) fn publish(&self, event: StoreEvent) {
        let _ = self.tx.send(event);
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<StoreEvent> {
        self.tx.subscribe()
    }
}

impl Default for Notifier {
    fn default() -> Self {
        Self::new()
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
