//! `POST /v1/sync`: every followed group and the welcome inbox in one read, with long polling.
//!
//! The long poll subscribes to the [`Notifier`](crate::notify::Notifier) for its groups (and its
//! inbox, if it reads it) *before* its first read, so a message committed between that read and
//! the wait still wakes it. It then waits for an event naming one of its groups or its inbox,
//! the deadline, or shutdown. Such an event, or a [`StoreEvent::Resync`] (the PostgreSQL
//! listener was reconnected and events may have been lost), triggers a re-read; if the re-read
//! still finds nothing readable (say, a message past a dropped member's cut-off) it waits again
//! until the deadline. Shutdown answers at once with what was read last.
//!
//! A long poll that waits registers in [`Waiters`](crate::waiters::Waiters): when its client
//! starts more than `--max-waiting-per-client` of them, the oldest is evicted and answers at
//! once with what was read last (a normal 200, news or none); when the relay holds
//! `--max-waiting` of them in all, a new one that would wait is answered 503 instead.

use std::time::Duration;

use axum::extract::State;
use dmls_api::limits::{MAX_SYNC_GROUPS, SYNC_LIMIT_DEFAULT, SYNC_LIMIT_MAX, WAIT_MS_MAX};
use dmls_api::{GroupRef, Problem, SyncGroupCursor, SyncGroupMessages, SyncRequest, SyncResponse};
use tokio::time::Instant;

use super::AppState;
use super::auth::Caller;
use super::error::{AuthedErrors, Error};
use super::extract::Json;
use super::metrics::{LIMIT_WAITING, LIMIT_WAITING_PER_CLIENT, refused};
use crate::notify::EventKey;
#[cfg(doc)]
use crate::notify::StoreEvent;
use crate::store::{SyncCursor, SyncGroupResult, SyncRead};
use crate::waiters::Slot;

/// Reads new messages of many groups and the caller's inbox; optionally waits for news.
#[utoipa::path(
    post,
    path = "/v1/sync",
    operation_id = "sync",
    tag = "sync",
    request_body = SyncRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "News (groups with nothing new are left out), or nothing once `wait_ms` passed", body = SyncResponse),
        (status = 400, description = "Malformed body, invalid group name, more than 10,000 groups, limit not 1 to 5,000, or wait_ms over 30,000", body = Problem, content_type = "application/problem+json"),
        AuthedErrors,
    )
)]
pub(crate) async fn sync(
    State(state): State<AppState>,
    caller: Caller,
    Json(request): Json<SyncRequest>,
) -> Result<axum::Json<SyncResponse>, Error> {
    let (cursors, limit) = checked_cursors(request.groups, request.limit)?;
    let wait_ms = request.wait_ms.unwrap_or(0);
    if wait_ms > WAIT_MS_MAX {
        return Err(Error::bad_request(format!(
            "wait_ms must be 0 to {WAIT_MS_MAX}"
        )));
    }
    let welcomes_after = request.welcomes_after;

    if wait_ms == 0 {
        let found = state
            .store
            .sync_read(&caller.client_id, &cursors, welcomes_after, limit)
            .await?;
        return Ok(axum::Json(answer(&cursors, welcomes_after, found)));
    }

    // Subscribe before the first read: see the module comment.
    let keys = event_keys(&cursors, welcomes_after.map(|_| caller.client_id.as_str()));
    let events = state.notifier.subscribe(keys);
    let mut shutdown = state.shutdown.clone();
    let deadline = Instant::now() + Duration::from_millis(wait_ms);

    let mut found = state
        .store
        .sync_read(&caller.client_id, &cursors, welcomes_after, limit)
        .await?;
    if has_news(&found) || *shutdown.borrow_and_update() {
        return Ok(axum::Json(answer(&cursors, welcomes_after, found)));
    }
    // It waits: count it against the caps.
    let mut slot = register_waiter(&state, &caller.client_id)?;
    while !has_news(&found) {
        if *shutdown.borrow_and_update() {
            break;
        }
        let woke = tokio::select! {
            biased;
            changed = shutdown.changed() => {
                // An error means the relay is gone: answer as for shutdown.
                let _ = changed;
                Wake::Stop
            }
            // A newer long poll of the same client took its place.
            () = slot.evicted() => Wake::Stop,
            () = tokio::time::sleep_until(deadline) => Wake::Stop,
            () = events.notified() => Wake::Reread,
        };
        match woke {
            Wake::Reread => {
                found = state
                    .store
                    .sync_read(&caller.client_id, &cursors, welcomes_after, limit)
                    .await?
            }
            Wake::Stop => break,
        }
    }
    Ok(axum::Json(answer(&cursors, welcomes_after, found)))
}

/// Checks the groups and limit of a sync or stream request (API.md "Sync") and names the
/// groups by cursor; returns them with the limit to use.
pub(super) fn checked_cursors(
    groups: Vec<SyncGroupCursor>,
    limit: Option<u32>,
) -> Result<(Vec<SyncCursor>, u32), Error> {
    if groups.len() > MAX_SYNC_GROUPS {
        return Err(Error::bad_request(format!(
            "at most {MAX_SYNC_GROUPS} groups per sync"
        )));
    }
    let limit = limit.unwrap_or(SYNC_LIMIT_DEFAULT);
    if !(1..=SYNC_LIMIT_MAX).contains(&limit) {
        return Err(Error::bad_request(format!(
            "limit must be 1 to {SYNC_LIMIT_MAX}"
        )));
    }
    for g in &groups {
        super::check_group_name(&g.owner, &g.group_id)?;
    }
    let cursors = groups
        .into_iter()
        .map(|g| SyncCursor {
            owner: g.owner,
            group_id: g.group_id,
            after: g.after,
        })
        .collect();
    Ok((cursors, limit))
}

/// What a reader of `cursors` (and of the inbox of `inbox_of`, if any) waits for.
pub(super) fn event_keys(cursors: &[SyncCursor], inbox_of: Option<&str>) -> Vec<EventKey> {
    let mut keys: Vec<EventKey> = cursors
        .iter()
        .map(|c| EventKey::Group {
            owner: c.owner.clone(),
            group_id: c.group_id.clone(),
        })
        .collect();
    if let Some(client_id) = inbox_of {
        keys.push(EventKey::Inbox {
            client_id: client_id.to_owned(),
        });
    }
    keys
}

/// Registers a waiting request of `client_id` under the caps (counting what they refuse or
/// end early): 503 when the relay holds `--max-waiting` already.
pub(super) fn register_waiter(state: &AppState, client_id: &str) -> Result<Slot, Error> {
    match state.waiters.register(client_id) {
        Ok((slot, registered)) => {
            if registered.evicted > 0 {
                refused(LIMIT_WAITING_PER_CLIENT, registered.evicted as u64);
            }
            Ok(slot)
        }
        Err(_full) => {
            refused(LIMIT_WAITING, 1);
            Err(Error::Overloaded {
                retry_after_secs: OVERLOADED_RETRY_AFTER_SECS,
            })
        }
    }
}

/// Retry-After of the 503 beyond `--max-waiting`: long enough that refused clients do not
/// come back all at once, short against a long poll's 30 s.
const OVERLOADED_RETRY_AFTER_SECS: u64 = 5;

enum Wake {
    /// Something of interest may have been stored: read again.
    Reread,
    /// Deadline or shutdown: answer with the last read.
    Stop,
}

/// Is there anything to hand out? Forbidden groups alone are not news: the caller learns of them
/// in the answer when the wait ends, without turning its long poll into a busy loop.
pub(super) fn has_news(read: &SyncRead) -> bool {
    read.groups
        .iter()
        .any(|g| matches!(g, SyncGroupResult::Messages { messages, .. } if !messages.is_empty()))
        || read
            .welcomes
            .as_ref()
            .is_some_and(|page| !page.items.is_empty())
}

/// Turns the store's read into the wire answer, naming groups by the caller's cursors.
pub(super) fn answer(
    cursors: &[SyncCursor],
    welcomes_after: Option<u64>,
    read: SyncRead,
) -> SyncResponse {
    let mut groups = Vec::new();
    let mut forbidden = Vec::new();
    for result in read.groups {
        match result {
            SyncGroupResult::Messages {
                cursor_index,
                messages,
                more,
            } => {
                let Some(cursor) = cursors.get(cursor_index) else {
                    tracing::error!(
                        cursor_index,
                        "store returned a sync result for an unknown cursor"
                    );
                    continue;
                };
                if messages.is_empty() {
                    continue;
                }
                let next_after = messages.last().map_or(cursor.after, |m| m.seq);
                groups.push(SyncGroupMessages {
                    owner: cursor.owner.clone(),
                    group_id: cursor.group_id.clone(),
                    messages,
                    next_after,
                    more,
                });
            }
            SyncGroupResult::Forbidden { cursor_index } => {
                if let Some(cursor) = cursors.get(cursor_index) {
                    forbidden.push(GroupRef {
                        owner: cursor.owner.clone(),
                        group_id: cursor.group_id.clone(),
                    });
                }
            }
        }
    }
    let (welcomes, welcomes_next_after) = match (read.welcomes, welcomes_after) {
        (Some(page), Some(after)) => {
            let next = page.items.last().map_or(after, |w| w.id);
            (page.items, Some(next))
        }
        (Some(page), None) => {
            let next = page.items.last().map(|w| w.id);
            (page.items, next)
        }
        (None, after) => (Vec::new(), after),
    };
    SyncResponse {
        groups,
        welcomes,
        welcomes_next_after,
        forbidden,
    }
}

#[cfg(test)]
mod tests {
    use dmls_api::{Bytes, Message, Welcome};

    use super::*;
    use crate::store::Page;

    fn cursor(owner: &str, after: u64) -> SyncCursor {
        SyncCursor {
            owner: owner.into(),
            group_id: "ab".into(),
            after,
        }
    }

    fn message(seq: u64) -> Message {
        Message {
            seq,
            sender: "bob".into(),
            data: Bytes(vec![1]),
            received_at: 0,
        }
    }

    #[test]
    fn answers_name_groups_by_cursor_and_advance_cursors() {
        let cursors = [cursor("alice", 3), cursor("carol", 0)];
        let read = SyncRead {
            groups: vec![
                SyncGroupResult::Messages {
                    cursor_index: 0,
                    messages: vec![message(4), message(5)],
                    more: true,
                },
                SyncGroupResult::Forbidden { cursor_index: 1 },
            ],
            welcomes: Some(Page {
                items: vec![],
                more: false,
            }),
        };
        assert!(has_news(&read));
        let a = answer(&cursors, Some(7), read);
        assert_eq!(a.groups.len(), 1);
        assert_eq!(a.groups[0].owner, "alice");
        assert_eq!(a.groups[0].next_after, 5);
        assert!(a.groups[0].more);
        assert_eq!(
            a.forbidden,
            vec![GroupRef {
                owner: "carol".into(),
                group_id: "ab".into()
            }]
        );
        assert!(a.welcomes.is_empty());
        assert_eq!(
            a.welcomes_next_after,
            Some(7),
            "an empty inbox keeps the cursor"
        );
    }

    #[test]
    fn forbidden_alone_is_not_news_but_a_welcome_is() {
        let forbidden_only = SyncRead {
            groups: vec![SyncGroupResult::Forbidden { cursor_index: 0 }],
            welcomes: None,
        };
        assert!(!has_news(&forbidden_only));
        let welcome = Welcome {
            id: 9,
            from: "bob".into(),
            data: Bytes(vec![1]),
            received_at: 0,
        };
        let with_welcome = SyncRead {
            groups: vec![],
            welcomes: Some(Page {
                items: vec![welcome],
                more: false,
            }),
        };
        assert!(has_news(&with_welcome));
        assert_eq!(
            answer(&[], Some(2), with_welcome).welcomes_next_after,
            Some(9)
        );
    }

    #[test]
    fn an_unread_inbox_has_no_cursor() {
        let a = answer(
            &[],
            None,
            SyncRead {
                groups: vec![],
                welcomes: None,
            },
        );
        assert_eq!(a.welcomes_next_after, None);
    }
}
