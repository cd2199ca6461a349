//! Deferred leaf refreshes received during one engine operation, kept in memory until its end.
//!
//! A leaf refresh in a Send Group we do not own is kept unprocessed until a commit of its
//! epoch needs it (`Wait::Commit` in `receive.rs`). In a round where every member updates, a
//! member receives a refresh from every other member in every Send Group, and most of them
//! are dropped again within the same batch, when the owner's commit of their epoch arrives
//! without them. So they stay here, and only those still deferred when the operation ends are
//! written to `dmls_waiting` (`Ctx::flush_deferred`), in the operation's
//! transaction: the saved INSERT and DELETE per refresh are what this is for.
//!
//! Savepoints roll this state back with the database through an undo journal
//! ([`DeferredRefreshes::mark`], [`DeferredRefreshes::rollback_to`]).

use std::collections::{BTreeMap, HashSet};

/// Send Group id and epoch.
type Key = ([u8; 32], u64);

/// One deferred leaf refresh: its message hash and bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refresh {
    pub(crate) hash: [u8; 32],
    pub(crate) data: Vec<u8>,
}

/// How to undo one change.
#[derive(Debug)]
enum Undo {
    /// A refresh was appended under this key.
    Added(Key),
    /// These refreshes were taken out of this key (they were its first entries).
    Removed(Key, Vec<Refresh>),
}

/// The deferred leaf refreshes of one operation, in arrival order per Send Group and epoch.
#[derive(Debug, Default)]
pub(crate) struct DeferredRefreshes {
    by_key: BTreeMap<Key, Vec<Refresh>>,
    hashes: HashSet<[u8; 32]>,
    journal: Vec<Undo>,
}

impl DeferredRefreshes {
    /// Whether a refresh with this message hash is held.
    pub(crate) fn contains(&self, hash: &[u8; 32]) -> bool {
        self.hashes.contains(hash)
    }

    /// Holds a refresh of `epoch` of Send Group `gid`; one already held is ignored.
    pub(crate) fn insert(&mut self, gid: [u8; 32], epoch: u64, hash: [u8; 32], data: Vec<u8>) {
        if !self.hashes.insert(hash) {
            return;
        }
        let key = (gid, epoch);
        self.by_key
            .entry(key)
            .or_default()
            .push(Refresh { hash, data });
        self.journal.push(Undo::Added(key));
    }

    /// How many refreshes of `epoch` of `gid` are held.
    pub(crate) fn count(&self, gid: &[u8; 32], epoch: u64) -> usize {
        self.by_key.get(&(*gid, epoch)).map_or(0, Vec::len)
    }

    /// Takes the refreshes of `epoch` of `gid`, in arrival order.
    pub(crate) fn take(&mut self, gid: &[u8; 32], epoch: u64) -> Vec<Refresh> {
        let from = self.remove_keys(vec![(*gid, epoch)]);
        self.removed_since(from).map(|(_, r)| r.clone()).collect()
    }

    /// Drops the refreshes of `gid` older than `epoch` (they can no longer be committed).
    pub(crate) fn drop_older(&mut self, gid: &[u8; 32], epoch: u64) {
        let keys = self.by_key.range((*gid, 0)..(*gid, epoch)).map(|(k, _)| *k);
        self.remove_keys(keys.collect());
    }

    /// Takes every refresh of `gid`, by epoch and then arrival order.
    pub(crate) fn take_group(&mut self, gid: &[u8; 32]) -> Vec<(u64, Refresh)> {
        let keys = self
            .by_key
            .range((*gid, 0)..=(*gid, u64::MAX))
            .map(|(k, _)| *k);
        let from = self.remove_keys(keys.collect());
        self.removed_since(from)
            .map(|(k, r)| (k.1, r.clone()))
            .collect()
    }

    /// Takes everything, by Send Group, epoch and arrival order.
    pub(crate) fn take_all(&mut self) -> Vec<(Key, Refresh)> {
        let from = self.remove_keys(self.by_key.keys().copied().collect());
        self.removed_since(from)
            .map(|(k, r)| (k, r.clone()))
            .collect()
    }

    /// A point to roll back to.
    pub(crate) fn mark(&self) -> usize {
        self.journal.len()
    }

    /// Undoes every change made since `mark`.
    pub(crate) fn rollback_to(&mut self, mark: usize) {
        while self.journal.len() > mark {
            let Some(undo) = self.journal.pop() else {
                break;
            };
            match undo {
                Undo::Added(key) => {
                    let list = self.by_key.get_mut(&key);
                    if let Some(r) = list.and_then(Vec::pop) {
                        self.hashes.remove(&r.hash);
                    }
                    if self.by_key.get(&key).is_some_and(Vec::is_empty) {
                        self.by_key.remove(&key);
                    }
                }
                Undo::Removed(key, mut removed) => {
                    self.hashes.extend(removed.iter().map(|r| r.hash));
                    // Anything added under the key later was undone already; keep order anyway.
                    if let Some(later) = self.by_key.remove(&key) {
                        removed.extend(later);
                    }
                    self.by_key.insert(key, removed);
                }
            }
        }
    }

    /// Removes `keys`, moving their refreshes into the journal (so that dropping them copies
    /// nothing); returns the journal position of the first removal.
    fn remove_keys(&mut self, keys: Vec<Key>) -> usize {
        let from = self.journal.len();
        for key in keys {
            if let Some(list) = self.by_key.remove(&key) {
                for r in &list {
                    self.hashes.remove(&r.hash);
                }
                self.journal.push(Undo::Removed(key, list));
            }
        }
        from
    }

    /// The refreshes removed by journal entries from `from` on, in order.
    fn removed_since(&self, from: usize) -> impl Iterator<Item = (Key, &Refresh)> {
        self.journal[from..]
            .iter()
            .filter_map(|u| match u {
                Undo::Removed(k, list) => Some((*k, list)),
                Undo::Added(_) => None,
            })
            .flat_map(|(k, list)| list.iter().map(move |r| (k, r)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(n: u8) -> [u8; 32] {
        [n; 32]
    }

    const G: [u8; 32] = [1; 32];
    const H: [u8; 32] = [2; 32];

    fn datas(v: &[Refresh]) -> Vec<Vec<u8>> {
        v.iter().map(|r| r.data.clone()).collect()
    }

    #[test]
    fn keeps_arrival_order_per_epoch_and_ignores_repeats() {
        let mut d = DeferredRefreshes::default();
        d.insert(G, 3, h(1), vec![1]);
        d.insert(G, 3, h(2), vec![2]);
        d.insert(G, 3, h(1), vec![9]);
        d.insert(G, 4, h(3), vec![3]);
        assert_eq!(d.count(&G, 3), 2);
        assert!(d.contains(&h(1)));
        assert_eq!(datas(&d.take(&G, 3)), vec![vec![1], vec![2]]);
        assert!(!d.contains(&h(1)));
        assert_eq!(d.count(&G, 3), 0);
        assert_eq!(d.count(&G, 4), 1);
    }

    #[test]
    fn drop_older_spares_other_groups_and_newer_epochs() {
        let mut d = DeferredRefreshes::default();
        d.insert(G, 1, h(1), vec![1]);
        d.insert(G, 2, h(2), vec![2]);
        d.insert(H, 1, h(3), vec![3]);
        d.drop_older(&G, 2);
        assert!(!d.contains(&h(1)));
        assert_eq!(d.count(&G, 2), 1);
        assert_eq!(d.count(&H, 1), 1);
        let all = d.take_all();
        assert_eq!(
            all.iter()
                .map(|(k, r)| (k.0, k.1, r.hash))
                .collect::<Vec<_>>(),
            vec![(G, 2, h(2)), (H, 1, h(3))]
        );
    }

    #[test]
    fn rollback_restores_exactly_the_state_at_the_mark() {
        let mut d = DeferredRefreshes::default();
        d.insert(G, 1, h(1), vec![1]);
        d.insert(G, 1, h(2), vec![2]);
        d.insert(H, 5, h(5), vec![5]);
        let mark = d.mark();
        let taken = d.take(&G, 1);
        assert_eq!(taken.len(), 2);
        d.insert(G, 1, h(3), vec![3]);
        d.insert(G, 2, h(4), vec![4]);
        d.drop_older(&H, 9);
        assert_eq!(d.take_group(&G).len(), 2);
        d.rollback_to(mark);
        assert!(d.contains(&h(1)) && d.contains(&h(2)) && d.contains(&h(5)));
        assert!(!d.contains(&h(3)) && !d.contains(&h(4)));
        assert_eq!(datas(&d.take(&G, 1)), vec![vec![1], vec![2]]);
        assert_eq!(d.count(&G, 2), 0);
        assert_eq!(d.count(&H, 5), 1);
    }

    #[test]
    fn nested_marks_roll_back_one_level_at_a_time() {
        let mut d = DeferredRefreshes::default();
        let outer = d.mark();
        d.insert(G, 1, h(1), vec![1]);
        let inner = d.mark();
        d.insert(G, 1, h(2), vec![2]);
        d.rollback_to(inner);
        assert_eq!(d.count(&G, 1), 1);
        assert!(!d.contains(&h(2)));
        d.rollback_to(outer);
        assert_eq!(d.count(&G, 1), 0);
        assert!(d.take_all().is_empty());
    }
}
