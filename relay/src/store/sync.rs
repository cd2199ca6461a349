//! `sync`: one read of many groups and the reader's inbox.
//!
//! The backends find the followed groups with news and read their messages in their own
//! dialect ([`Store::sync_candidates`], [`Store::read_ranges`]); deciding what an answer holds
//! and putting it together is the same for both and written here.

use dmls_api::Message;

use super::{Access, Store, StoreResult, SyncCursor, SyncGroupResult, SyncRead, common, from_db};

/// How many welcomes a `sync` answer carries at most (the inbox pages on in the next sync).
const SYNC_WELCOMES_LIMIT: u32 = dmls_api::limits::PAGE_LIMIT_DEFAULT;

/// A followed group that exists, as the first `sync` query found it.
pub(crate) struct SyncCandidate {
    pub(crate) cursor_index: usize,
    pub(crate) group_ref: i64,
    pub(crate) last_seq: u64,
    pub(crate) access: Access,
}

/// A followed group as the first `sync` query finds it: the cursor's index (from `offset`),
/// the group's id and `last_seq`, its owner, and the reader's membership row if any
/// (`read_upto`, and whether there is one).
pub(crate) type CandidateRow = (i64, i64, i64, String, Option<i64>, bool);

pub(crate) fn candidate(
    offset: usize,
    reader: &str,
    (index, group_ref, last_seq, owner, read_upto, listed): CandidateRow,
) -> SyncCandidate {
    SyncCandidate {
        cursor_index: offset.saturating_add(usize::try_from(index).unwrap_or(usize::MAX)),
        group_ref,
        last_seq: from_db(last_seq),
        access: if owner == reader || (listed && read_upto.is_none()) {
            Access::Full
        } else if let Some(upto) = read_upto {
            Access::ReadUpTo(from_db(upto))
        } else {
            Access::None
        },
    }
}

/// A range of one group's messages that a `sync` answer will carry.
pub(crate) struct SyncRange {
    pub(crate) cursor_index: usize,
    pub(crate) group_ref: i64,
    pub(crate) after: u64,
    /// Highest seq to read in this answer (`after` + its share of the limit).
    pub(crate) upto: u64,
    /// Highest seq the reader may read now; more exist if `upto` is below it.
    pub(crate) readable_upto: u64,
}

/// Decides, without reading messages, what a `sync` answer holds: forbidden groups, and for
/// groups with news a seq range each, in cursor order, sharing `limit` between them.
///
/// Seqs are gap-free (only pruning removes old messages), so `last_seq - after` bounds the
/// messages a group has after the cursor and the ranges can be read in one query.
fn plan_sync(
    reader_cursors: &[SyncCursor],
    mut candidates: Vec<SyncCandidate>,
    limit: u32,
) -> (Vec<SyncGroupResult>, Vec<SyncRange>) {
    candidates.sort_by_key(|c| c.cursor_index);
    let mut remaining = u64::from(limit);
    let mut forbidden = Vec::new();
    let mut ranges = Vec::new();
    for c in candidates {
        let Some(cursor) = reader_cursors.get(c.cursor_index) else {
            continue;
        };
        let readable_upto = match c.access {
            Access::Full => c.last_seq,
            Access::ReadUpTo(upto) => c.last_seq.min(upto),
            Access::None => {
                forbidden.push(SyncGroupResult::Forbidden {
                    cursor_index: c.cursor_index,
                });
                continue;
            }
        };
        if readable_upto <= cursor.after {
            continue;
        }
        let take = (readable_upto - cursor.after).min(remaining);
        remaining -= take;
        ranges.push(SyncRange {
            cursor_index: c.cursor_index,
            group_ref: c.group_ref,
            after: cursor.after,
            upto: cursor.after + take,
            readable_upto,
        });
    }
    (forbidden, ranges)
}

/// Puts the messages read for `ranges` (ordered by range, then seq; `range_index` is the
/// position in `ranges`) into the answer. Ranges without rows are returned for a fallback read
/// (their messages were pruned) unless their share of the limit was zero.
fn assemble_sync(
    ranges: &[SyncRange],
    rows: Vec<(usize, Message)>,
) -> (Vec<SyncGroupResult>, Vec<usize>) {
    let mut per_range: Vec<Vec<Message>> = ranges.iter().map(|_| Vec::new()).collect();
    for (i, m) in rows {
        if let Some(v) = per_range.get_mut(i) {
            v.push(m);
        }
    }
    let mut groups = Vec::new();
    let mut empty = Vec::new();
    for (i, (range, messages)) in ranges.iter().zip(per_range).enumerate() {
        if messages.is_empty() && range.upto > range.after {
            empty.push(i);
            continue;
        }
        let last = messages.last().map_or(range.after, |m| m.seq);
        groups.push(SyncGroupResult::Messages {
            cursor_index: range.cursor_index,
            messages,
            more: last < range.readable_upto,
        });
    }
    (groups, empty)
}

/// [`Store::sync_read`]: the groups of `cursors` with news (and those the reader may not read),
/// then the inbox if asked for.
pub(crate) async fn read<S: Store + ?Sized>(
    store: &S,
    reader: &str,
    cursors: &[SyncCursor],
    welcomes_after: Option<u64>,
    limit: u32,
) -> StoreResult<SyncRead> {
    let groups = if cursors.is_empty() {
        Vec::new()
    } else {
        let candidates = store.sync_candidates(reader, cursors).await?;
        let (forbidden, ranges) = plan_sync(cursors, candidates, limit);
        let messages = store.read_ranges(&ranges).await?;
        let (mut found, pruned) = assemble_sync(&ranges, messages);
        // Ranges whose messages were all pruned: read on past the gap, one by one (rare).
        for i in pruned {
            let Some(range) = ranges.get(i) else { continue };
            let messages = common::read_range(
                store.reads(),
                range.group_ref,
                range.after,
                range.upto - range.after,
            )
            .await?;
            if let Some(last) = messages.last() {
                let more = last.seq < range.readable_upto;
                found.push(SyncGroupResult::Messages {
                    cursor_index: range.cursor_index,
                    messages,
                    more,
                });
            }
        }
        found.extend(forbidden);
        found.sort_by_key(|g| match g {
            SyncGroupResult::Messages { cursor_index, .. }
            | SyncGroupResult::Forbidden { cursor_index } => *cursor_index,
        });
        found
    };
    let welcomes = match welcomes_after {
        Some(after) => Some(
            store
                .list_welcomes(reader, after, SYNC_WELCOMES_LIMIT)
                .await?,
        ),
        None => None,
    };
    Ok(SyncRead { groups, welcomes })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_limit_is_shared_in_cursor_order() {
        let cursors: Vec<SyncCursor> = (0..3)
            .map(|i| SyncCursor {
                owner: "o".into(),
                group_id: format!("{i:02x}"),
                after: 5,
            })
            .collect();
        let candidates = vec![
            SyncCandidate {
                cursor_index: 2,
                group_ref: 3,
                last_seq: 50,
                access: Access::Full,
            },
            SyncCandidate {
                cursor_index: 0,
                group_ref: 1,
                last_seq: 8,
                access: Access::Full,
            },
            SyncCandidate {
                cursor_index: 1,
                group_ref: 2,
                last_seq: 9,
                access: Access::None,
            },
        ];
        let (forbidden, ranges) = plan_sync(&cursors, candidates, 10);
        assert_eq!(
            forbidden,
            vec![SyncGroupResult::Forbidden { cursor_index: 1 }]
        );
        assert_eq!(ranges.len(), 2);
        assert_eq!((ranges[0].after, ranges[0].upto), (5, 8));
        assert_eq!(
            (ranges[1].after, ranges[1].upto, ranges[1].readable_upto),
            (5, 12, 50)
        );
    }
}
