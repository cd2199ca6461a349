//! `POST /v1/stream`: the push form of `sync`, as server-sent events (API.md "Push stream").
//!
//! A stream reads the same groups and inbox as a sync request would, with the same access
//! rules and limits, and sends each read that has news as one `sync` event whose data is a sync
//! answer. Like a long poll it subscribes to the [`Notifier`](crate::notify::Notifier) before
//! its first read, so nothing committed between a read and the wait is missed, and it keeps
//! its own cursors: every message and welcome is sent once, in order. A client resumes after a
//! disconnect by opening a new stream with the cursors of the last event it processed.
//!
//! The stream holds a [`Slot`] in [`Waiters`](crate::waiters::Waiters) for as long as it is
//! open: it counts against the same caps as waiting long polls. It ends with an `end` event on
//! shutdown or when a newer waiting request of the same client evicts it, and with an `error`
//! event when the store fails.

use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderValue;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use dmls_api::stream_events::{END, ERROR, READY, SYNC};
use dmls_api::{GroupRef, Problem, StreamEnd, StreamRequest, SyncResponse};
use futures::Stream;
use tokio::sync::watch;

use super::AppState;
use super::auth::Caller;
use super::error::{AuthedErrors, Error, problem_body};
use super::extract::Json;
use super::metrics::STREAM_EVENTS;
use super::sync::{answer, checked_cursors, event_keys, register_waiter};
use crate::notify::Subscription;
use crate::store::{SyncCursor, SyncGroupResult, SyncRead};
use crate::waiters::Slot;

/// How often an idle stream sends a comment line, so that proxies and NATs keep the connection.
pub(crate) const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Opens a push stream of new messages of many groups and the caller's inbox.
#[utoipa::path(
    post,
    path = "/v1/stream",
    operation_id = "stream",
    tag = "sync",
    request_body = StreamRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A stream of server-sent events (API.md \"Push stream\"): `sync` events whose data is a sync answer (`SyncResponse`), one `ready` event (`{}`) once everything stored before the stream opened was sent, comment lines every 15 s while idle, and last an `end` event (`StreamEnd`: `shutdown` or `replaced`) or an `error` event (`Problem`). Resume by opening a new stream with the cursors of the last event processed.", content_type = "text/event-stream", body = String),
        (status = 400, description = "Malformed body, invalid group name, more than 10,000 groups, or limit not 1 to 5,000", body = Problem, content_type = "application/problem+json"),
        AuthedErrors,
    )
)]
pub(crate) async fn stream(
    State(state): State<AppState>,
    caller: Caller,
    Json(request): Json<StreamRequest>,
) -> Result<Response, Error> {
    let (cursors, limit) = checked_cursors(request.groups, request.limit)?;
    let welcomes_after = request.welcomes_after;
    let client_id = caller.client_id;
    let events = state.notifier.subscribe(event_keys(
        &cursors,
        welcomes_after.map(|_| client_id.as_str()),
    ));
    // The first read before the answer, so that a store failure is a status, not a stream that
    // breaks at once.
    let first = state
        .store
        .sync_read(&client_id, &cursors, welcomes_after, limit)
        .await?;
    let slot = register_waiter(&state, &client_id)?;
    let feed = Feed {
        shutdown: state.shutdown.clone(),
        _open: OpenStream::new(&state.streams_open),
        state,
        client_id,
        cursors,
        welcomes_after,
        limit,
        events,
        slot,
        read: Some(first),
        read_again: false,
        forbidden: HashSet::new(),
        ready_sent: false,
        finished: false,
    };
    let mut response = Sse::new(feed.into_stream())
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE).text("keep-alive"))
        .into_response();
    // Reverse proxies that buffer answers (nginx) must pass the events on at once.
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

/// One open stream: what it reads, where it is, and what it waits on.
struct Feed {
    state: AppState,
    client_id: String,
    cursors: Vec<SyncCursor>,
    welcomes_after: Option<u64>,
    limit: u32,
    events: Subscription,
    slot: Slot,
    shutdown: watch::Receiver<bool>,
    /// A read not yet turned into an event.
    read: Option<SyncRead>,
    /// The last read was cut short by the limit: read again without waiting.
    read_again: bool,
    /// Cursor indexes of the groups reported forbidden, so each is reported once (again only
    /// after it was readable in between).
    forbidden: HashSet<usize>,
    ready_sent: bool,
    finished: bool,
    _open: OpenStream,
}

/// Why a wait ended.
enum Wake {
    Reread,
    End(&'static str),
}

impl Feed {
    fn into_stream(self) -> impl Stream<Item = Result<Event, Infallible>> + Send + 'static {
        futures::stream::unfold(self, |mut feed| async move {
            let event = feed.next_event().await?;
            Some((Ok(event), feed))
        })
    }

    /// The next event to send, or `None` after the last one.
    async fn next_event(&mut self) -> Option<Event> {
        if self.finished {
            return None;
        }
        loop {
            if *self.shutdown.borrow_and_update() {
                return Some(self.end("shutdown"));
            }
            let read = match self.read.take() {
                Some(read) => read,
                None => {
                    if !self.read_again {
                        if !self.ready_sent {
                            self.ready_sent = true;
                            return Some(counted(READY, Event::default().event(READY).data("{}")));
                        }
                        if let Wake::End(reason) = self.wait().await {
                            return Some(self.end(reason));
                        }
                    }
                    match self
                        .state
                        .store
                        .sync_read(
                            &self.client_id,
                            &self.cursors,
                            self.welcomes_after,
                            self.limit,
                        )
                        .await
                    {
                        Ok(read) => read,
                        Err(e) => return Some(self.error(Error::from(e))),
                    }
                }
            };
            if let Some(news) = self.advance(read) {
                return Some(match Event::default().event(SYNC).json_data(&news) {
                    Ok(event) => counted(SYNC, event),
                    Err(e) => {
                        tracing::error!(error = %e, "cannot serialise a sync event");
                        self.error(Error::Unavailable)
                    }
                });
            }
        }
    }

    /// Waits for an event of its groups or inbox, shutdown, or eviction.
    async fn wait(&mut self) -> Wake {
        tokio::select! {
            biased;
            changed = self.shutdown.changed() => {
                // An error means the relay is gone: end as for shutdown.
                let _ = changed;
                Wake::End("shutdown")
            }
            () = self.slot.evicted() => Wake::End("replaced"),
            () = self.events.notified() => Wake::Reread,
        }
    }

    /// Moves the cursors past `read` and returns what to send of it, if anything: messages,
    /// welcomes, and groups newly forbidden.
    fn advance(&mut self, read: SyncRead) -> Option<SyncResponse> {
        let mut moves = Vec::new();
        let mut forbidden_now = HashSet::new();
        self.read_again = read
            .welcomes
            .as_ref()
            .is_some_and(|page| page.more && !page.items.is_empty());
        for group in &read.groups {
            match group {
                SyncGroupResult::Messages {
                    cursor_index,
                    messages,
                    more,
                } => {
                    if let Some(last) = messages.last() {
                        moves.push((*cursor_index, last.seq));
                        self.read_again |= *more;
                    }
                }
                SyncGroupResult::Forbidden { cursor_index } => {
                    forbidden_now.insert(*cursor_index);
                }
            }
        }
        let mut news = answer(&self.cursors, self.welcomes_after, read);
        for (index, seq) in moves {
            if let Some(cursor) = self.cursors.get_mut(index) {
                cursor.after = seq;
            }
        }
        if self.welcomes_after.is_some() {
            self.welcomes_after = news.welcomes_next_after;
        }
        let mut newly: Vec<usize> = forbidden_now.difference(&self.forbidden).copied().collect();
        newly.sort_unstable();
        news.forbidden = newly
            .into_iter()
            .filter_map(|i| self.cursors.get(i))
            .map(|c| GroupRef {
                owner: c.owner.clone(),
                group_id: c.group_id.clone(),
            })
            .collect();
        self.forbidden = forbidden_now;
        let empty = news.groups.is_empty() && news.welcomes.is_empty() && news.forbidden.is_empty();
        (!empty).then_some(news)
    }

    fn end(&mut self, reason: &str) -> Event {
        self.finished = true;
        let data = StreamEnd {
            reason: reason.to_owned(),
        };
        match Event::default().event(END).json_data(&data) {
            Ok(event) => counted(END, event),
            Err(_) => counted(END, Event::default().event(END).data("{}")),
        }
    }

    fn error(&mut self, error: Error) -> Event {
        self.finished = true;
        let problem = problem_body(error.status(), error.to_string());
        match Event::default().event(ERROR).json_data(&problem) {
            Ok(event) => counted(ERROR, event),
            Err(_) => counted(ERROR, Event::default().event(ERROR).data("{}")),
        }
    }
}

fn counted(name: &'static str, event: Event) -> Event {
    metrics::counter!(STREAM_EVENTS, "event" => name).increment(1);
    event
}

/// Counts an open stream in [`Ctx::streams_open`](super::Ctx) while it lives.
struct OpenStream(Arc<AtomicUsize>);

impl OpenStream {
    fn new(counter: &Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        OpenStream(Arc::clone(counter))
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
