//! Typed async client of the relay HTTP API (`docs/API.md`).
//!
//! One method per route the DMLS client needs. Every call is retried with exponential backoff
//! and jitter on 429 (honouring `Retry-After`), on 5xx and on network errors, a bounded number
//! of times. Errors of the relay (`application/problem+json`) become [`RelayError::Problem`]
//! carrying the relay's `detail`. The bearer token never appears in logs or `Debug` output.

use std::time::Duration;

use dmls_api::{
    Bytes, ClaimKeyPackagesRequest, ClaimKeyPackagesResponse, ClientInfo, GroupInfo,
    IDEMPOTENCY_KEY_HEADER, MessagesPage, OutgoingWelcome, PostMessageResponse,
    PostWelcomesRequest, PostWelcomesResponse, Problem, PutGroupRequest, RegisterRequest,
    RegisterResponse, StreamEnd, StreamRequest, SyncRequest, SyncResponse,
    UploadKeyPackagesRequest, UploadKeyPackagesResponse, WelcomesPage, stream_events,
};
use eventsource_stream::Eventsource as _;
use futures::StreamExt as _;
use rand::Rng as _;
use reqwest::{Method, RequestBuilder, StatusCode, header};
use serde::de::DeserializeOwned;

/// Time limit of an ordinary request (not a long poll).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Extra time a long poll may take beyond its `wait_ms` (the relay answers at `wait_ms`).
const LONG_POLL_SLACK: Duration = Duration::from_secs(15);
/// A push stream silent for this long is taken for a dead connection (the relay sends a comment
/// line every 15 s while idle).
const STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(45);
/// Longest `Retry-After` we honour; a relay asking for more is treated as this.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// A bearer token. Its `Debug` and `Display` never show the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// Wraps a token received at registration or read from the configuration.
    pub fn new(token: impl Into<String>) -> Self {
        Token(token.into())
    }

    /// The secret itself, for storing it in the configuration file.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// Errors of the relay client.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The relay answered with an error status (its problem details, or the status alone).
    #[error("relay refused {route}: {status} {title}: {detail}")]
    Problem {
        /// Method and path of the request, without query or secrets.
        route: String,
        /// HTTP status.
        status: u16,
        /// Problem title (or the status's reason phrase).
        title: String,
        /// The relay's explanation.
        detail: String,
    },
    /// The relay could not be reached or the connection failed, after all retries.
    #[error("cannot reach the relay at {url} ({route}): {source}")]
    Network {
        /// Base URL of the relay.
        url: String,
        /// Method and path of the request.
        route: String,
        /// The transport error.
        #[source]
        source: reqwest::Error,
    },
    /// The relay's answer was not what API.md describes.
    #[error("unexpected answer from the relay to {route}: {detail}")]
    BadAnswer {
        /// Method and path of the request.
        route: String,
        /// What was wrong.
        detail: String,
    },
    /// The caller passed something the API does not allow; nothing was sent.
    #[error("invalid request: {0}")]
    InvalidInput(String),
    /// An authenticated route was called without a token.
    #[error("no token: register first")]
    NoToken,
}

impl RelayError {
    /// The HTTP status of a [`RelayError::Problem`].
    pub fn status(&self) -> Option<u16> {
        match self {
            RelayError::Problem { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Is this a 404 of the relay?
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }

    /// Is this a 409 of the relay?
    pub fn is_conflict(&self) -> bool {
        self.status() == Some(409)
    }
}

/// How failed requests are retried.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts in total, the first included (at least 1).
    pub max_attempts: u32,
    /// Delay before the first retry; doubled for each further one.
    pub base_delay: Duration,
    /// Longest delay between two attempts.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 6,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// The delay before retry number `retry` (0 for the first retry): exponential, capped,
    /// with "equal jitter" (between half and all of the nominal delay) so that many clients
    /// that failed together do not retry together.
    fn backoff(&self, retry: u32) -> Duration {
        let nominal = self
            .base_delay
            .saturating_mul(1u32.checked_shl(retry.min(20)).unwrap_or(u32::MAX))
            .min(self.max_delay);
        let half = nominal / 2;
        let jitter_ms = rand::rng().random_range(0..=half.as_millis().min(u64::MAX as u128) as u64);
        half + Duration::from_millis(jitter_ms)
    }
}

/// An async client of one relay.
#[derive(Clone)]
pub struct RelayClient {
    http: reqwest::Client,
    base: String,
    token: Option<Token>,
    retry: RetryPolicy,
}

impl std::fmt::Debug for RelayClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayClient")
            .field("base", &self.base)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("retry", &self.retry)
            .finish()
    }
}

/// A request body.
enum Body<'a> {
    None,
    Json(serde_json::Value),
    Raw(&'a [u8]),
}

impl RelayClient {
    /// A client of the relay at `base_url` (`http://HOST:PORT` or `https://…`), without a token.
    pub fn new(base_url: &str) -> Result<Self, RelayError> {
        let base = base_url.trim_end_matches('/').to_string();
        let parsed = reqwest::Url::parse(&base)
            .map_err(|e| RelayError::InvalidInput(format!("relay URL {base_url:?}: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
            return Err(RelayError::InvalidInput(format!(
                "relay URL {base_url:?} must be http://HOST[:PORT] or https://HOST[:PORT]"
            )));
        }
        let http = reqwest::Client::builder()
            .user_agent(concat!("dmls-client/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| RelayError::InvalidInput(format!("cannot build an HTTP client: {e}")))?;
        Ok(RelayClient {
            http,
            base,
            token: None,
            retry: RetryPolicy::default(),
        })
    }

    /// The same client, authenticated with `token`.
    pub fn with_token(mut self, token: Token) -> Self {
        self.token = Some(token);
        self
    }

    /// The same client with another retry policy.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// The relay's base URL.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    // ------------------------------------------------------------ clients

    /// `POST /v1/clients`: registers `client_id` and returns its token (shown only once).
    pub async fn register(&self, client_id: &str) -> Result<RegisterResponse, RelayError> {
        if !dmls_api::is_valid_client_id(client_id) {
            return Err(RelayError::InvalidInput(format!(
                "client id {client_id:?}: use 1 to 64 characters of a-z 0-9 . _ -"
            )));
        }
        let body = json(&RegisterRequest {
            client_id: client_id.to_string(),
        })?;
        self.call(
            Method::POST,
            "/v1/clients",
            Body::Json(body),
            None,
            false,
            None,
        )
        .await
    }

    /// `GET /v1/clients/me`.
    pub async fn me(&self) -> Result<ClientInfo, RelayError> {
        self.call(Method::GET, "/v1/clients/me", Body::None, None, true, None)
            .await
    }

    /// `DELETE /v1/clients/me`: deletes the account, its key packages, inbox and groups.
    pub async fn delete_me(&self) -> Result<(), RelayError> {
        self.call_empty(Method::DELETE, "/v1/clients/me", Body::None, None)
            .await
    }

    // ------------------------------------------------------------ key packages

    /// `POST /v1/key-packages`: adds to the stock; `last_resort` replaces the previous one.
    /// Returns how many are available now.
    pub async fn upload_key_packages(
        &self,
        key_packages: Vec<Vec<u8>>,
        last_resort: Option<Vec<u8>>,
    ) -> Result<u64, RelayError> {
        let body = json(&UploadKeyPackagesRequest {
            key_packages: key_packages.into_iter().map(Bytes).collect(),
            last_resort: last_resort.map(Bytes),
        })?;
        let r: UploadKeyPackagesResponse = self
            .call(
                Method::POST,
                "/v1/key-packages",
                Body::Json(body),
                None,
                true,
                None,
            )
            .await?;
        Ok(r.available)
    }

    /// `POST /v1/key-packages/claim`: one key package of each client id.
    pub async fn claim_key_packages(
        &self,
        client_ids: &[String],
    ) -> Result<ClaimKeyPackagesResponse, RelayError> {
        if client_ids.len() > dmls_api::limits::MAX_CLAIM_IDS {
            return Err(RelayError::InvalidInput(format!(
                "at most {} client ids per claim",
                dmls_api::limits::MAX_CLAIM_IDS
            )));
        }
        let body = json(&ClaimKeyPackagesRequest {
            client_ids: client_ids.to_vec(),
        })?;
        self.call(
            Method::POST,
            "/v1/key-packages/claim",
            Body::Json(body),
            None,
            true,
            None,
        )
        .await
    }

    // ------------------------------------------------------------ welcomes

    /// `POST /v1/welcomes`: delivers welcomes (all or nothing); returns their inbox ids, in
    /// the order of `welcomes`.
    ///
    /// Welcomes with the same bytes (an MLS Welcome is one message for everyone a commit adds)
    /// go as one `to_all` welcome, which the relay receives and stores once ([`fan_out`]). A
    /// relay from before `to_all` refuses it as an unknown field; then the welcomes are sent
    /// again one per recipient.
    pub async fn post_welcomes(
        &self,
        welcomes: Vec<(String, Vec<u8>)>,
    ) -> Result<Vec<u64>, RelayError> {
        if welcomes.len() > dmls_api::limits::MAX_WELCOMES_PER_POST {
            return Err(RelayError::InvalidInput(format!(
                "at most {} welcomes per post",
                dmls_api::limits::MAX_WELCOMES_PER_POST
            )));
        }
        let (grouped, positions) = fan_out(&welcomes);
        if grouped.len() == welcomes.len() {
            // Nothing shared bytes: the request is the one without `to_all`.
            return self.post_outgoing_welcomes(grouped).await;
        }
        match self.post_outgoing_welcomes(grouped).await {
            Ok(ids) => positions
                .iter()
                .map(|&p| ids.get(p).copied())
                .collect::<Option<Vec<u64>>>()
                .ok_or_else(|| RelayError::BadAnswer {
                    route: "POST /v1/welcomes".into(),
                    detail: format!("{} ids for {} recipients", ids.len(), positions.len()),
                }),
            Err(RelayError::Problem {
                status: 400,
                detail,
                ..
            }) if detail.contains("unknown field `to_all`") => {
                tracing::warn!(
                    "the relay does not know fan-out welcomes (`to_all`); sending one welcome per recipient"
                );
                let one_each = welcomes
                    .into_iter()
                    .map(|(to, data)| OutgoingWelcome::to_one(to, data))
                    .collect();
                self.post_outgoing_welcomes(one_each).await
            }
            Err(e) => Err(e),
        }
    }

    /// `POST /v1/welcomes` of these welcomes as they are; returns the relay's ids.
    pub async fn post_outgoing_welcomes(
        &self,
        welcomes: Vec<OutgoingWelcome>,
    ) -> Result<Vec<u64>, RelayError> {
        let body = json(&PostWelcomesRequest { welcomes })?;
        let r: PostWelcomesResponse = self
            .call(
                Method::POST,
                "/v1/welcomes",
                Body::Json(body),
                None,
                true,
                None,
            )
            .await?;
        Ok(r.ids)
    }

    /// `GET /v1/welcomes?after=ID&limit=N`: the own inbox.
    pub async fn list_welcomes(&self, after: u64, limit: u32) -> Result<WelcomesPage, RelayError> {
        let path = format!("/v1/welcomes?after={after}&limit={limit}");
        self.call(Method::GET, &path, Body::None, None, true, None)
            .await
    }

    /// `DELETE /v1/welcomes?upto=ID`: drops own welcomes with id ≤ `upto`.
    pub async fn delete_welcomes(&self, upto: u64) -> Result<(), RelayError> {
        self.call_empty(
            Method::DELETE,
            &format!("/v1/welcomes?upto={upto}"),
            Body::None,
            None,
        )
        .await
    }

    // ------------------------------------------------------------ groups

    /// `PUT /v1/groups/{owner}/{group_id}`: creates the group or replaces its member list.
    pub async fn put_group(
        &self,
        owner: &str,
        group_id: &str,
        members: &[String],
    ) -> Result<(), RelayError> {
        let path = group_path(owner, group_id)?;
        let body = json(&PutGroupRequest {
            members: members.to_vec(),
        })?;
        self.call_empty(Method::PUT, &path, Body::Json(body), None)
            .await
    }

    /// `GET /v1/groups/{owner}/{group_id}`.
    pub async fn get_group(&self, owner: &str, group_id: &str) -> Result<GroupInfo, RelayError> {
        let path = group_path(owner, group_id)?;
        self.call(Method::GET, &path, Body::None, None, true, None)
            .await
    }

    /// `DELETE /v1/groups/{owner}/{group_id}` (owner only).
    pub async fn delete_group(&self, owner: &str, group_id: &str) -> Result<(), RelayError> {
        let path = group_path(owner, group_id)?;
        self.call_empty(Method::DELETE, &path, Body::None, None)
            .await
    }

    /// `POST /v1/groups/{owner}/{group_id}/messages`: stores `data`, returns its `seq`.
    ///
    /// With an `idempotency_key` a retry (also one after a crash, with the same key) is
    /// deduplicated by the relay and answers the first `seq`.
    pub async fn post_message(
        &self,
        owner: &str,
        group_id: &str,
        data: &[u8],
        idempotency_key: Option<&str>,
    ) -> Result<u64, RelayError> {
        if let Some(k) = idempotency_key
            && !dmls_api::is_valid_idempotency_key(k)
        {
            return Err(RelayError::InvalidInput(format!(
                "idempotency key {k:?}: 1 to 64 visible ASCII characters"
            )));
        }
        let path = format!("{}/messages", group_path(owner, group_id)?);
        let r: PostMessageResponse = self
            .call(
                Method::POST,
                &path,
                Body::Raw(data),
                idempotency_key,
                true,
                None,
            )
            .await?;
        Ok(r.seq)
    }

    /// `GET /v1/groups/{owner}/{group_id}/messages?after=SEQ&limit=N`.
    pub async fn list_messages(
        &self,
        owner: &str,
        group_id: &str,
        after: u64,
        limit: u32,
    ) -> Result<MessagesPage, RelayError> {
        let path = format!(
            "{}/messages?after={after}&limit={limit}",
            group_path(owner, group_id)?
        );
        self.call(Method::GET, &path, Body::None, None, true, None)
            .await
    }

    // ------------------------------------------------------------ sync

    /// `POST /v1/sync`: new messages of every listed group and of the welcome inbox. With
    /// `wait_ms` the relay holds the request until something arrives; the HTTP time limit of
    /// this call is `wait_ms` plus a margin.
    pub async fn sync(&self, request: &SyncRequest) -> Result<SyncResponse, RelayError> {
        if request.groups.len() > dmls_api::limits::MAX_SYNC_GROUPS {
            return Err(RelayError::InvalidInput(format!(
                "at most {} groups per sync",
                dmls_api::limits::MAX_SYNC_GROUPS
            )));
        }
        let wait = request
            .wait_ms
            .unwrap_or(0)
            .min(dmls_api::limits::WAIT_MS_MAX);
        let timeout = REQUEST_TIMEOUT.max(Duration::from_millis(wait) + LONG_POLL_SLACK);
        let body = json(request)?;
        self.call(
            Method::POST,
            "/v1/sync",
            Body::Json(body),
            None,
            true,
            Some(timeout),
        )
        .await
    }

    /// Opens a push stream (`POST /v1/stream`) of the groups and inbox of `request`, from its
    /// cursors on. Opening is retried as any request; a stream that breaks later is not: open
    /// a new one with the cursors of the last event processed. A relay without push streams
    /// answers 404 or 405 ([`RelayError::status`]).
    pub async fn open_stream(&self, request: &StreamRequest) -> Result<EventStream, RelayError> {
        if request.groups.len() > dmls_api::limits::MAX_SYNC_GROUPS {
            return Err(RelayError::InvalidInput(format!(
                "at most {} groups per stream",
                dmls_api::limits::MAX_SYNC_GROUPS
            )));
        }
        let route = route_of(&Method::POST, "/v1/stream");
        let url = format!("{}/v1/stream", self.base);
        let token = self.token.as_ref().ok_or(RelayError::NoToken)?;
        let body = json(request)?;
        let attempts = self.retry.max_attempts.max(1);
        let mut attempt = 0u32;
        let resp = loop {
            attempt += 1;
            let last = attempt >= attempts;
            let sent = self
                .http
                .post(&url)
                .bearer_auth(token.expose())
                .header(header::ACCEPT, "text/event-stream")
                .json(&body)
                .send()
                .await;
            let delay = match sent {
                Ok(resp) if resp.status().is_success() => break resp,
                Ok(resp) => match self.busy_delay(&resp, attempt) {
                    Some(delay) if !last => delay,
                    _ => return Err(problem_of(route, resp).await),
                },
                Err(source) => {
                    if last {
                        return Err(RelayError::Network {
                            url: self.base.clone(),
                            route,
                            source,
                        });
                    }
                    self.retry.backoff(attempt - 1)
                }
            };
            tracing::debug!(%route, attempt, ?delay, "stream not opened, retrying");
            tokio::time::sleep(delay).await;
        };
        let is_event_stream = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if !is_event_stream {
            return Err(RelayError::BadAnswer {
                route,
                detail: "the answer is not text/event-stream".into(),
            });
        }
        Ok(EventStream {
            events: resp.bytes_stream().eventsource().boxed(),
            url: self.base.clone(),
            route,
            ended: false,
        })
    }

    // ------------------------------------------------------------ plumbing

    async fn call_empty(
        &self,
        method: Method,
        path: &str,
        body: Body<'_>,
        idempotency_key: Option<&str>,
    ) -> Result<(), RelayError> {
        self.send(method, path, body, idempotency_key, true, None)
            .await
            .map(|_| ())
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Body<'_>,
        idempotency_key: Option<&str>,
        auth: bool,
        timeout: Option<Duration>,
    ) -> Result<T, RelayError> {
        let route = route_of(&method, path);
        let bytes = self
            .send(method, path, body, idempotency_key, auth, timeout)
            .await?;
        serde_json::from_slice(&bytes).map_err(|e| RelayError::BadAnswer {
            route,
            detail: format!("invalid JSON: {e}"),
        })
    }

    /// Sends with retries; returns the body of a 2xx answer.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Body<'_>,
        idempotency_key: Option<&str>,
        auth: bool,
        timeout: Option<Duration>,
    ) -> Result<Vec<u8>, RelayError> {
        let route = route_of(&method, path);
        let url = format!("{}{}", self.base, path);
        let attempts = self.retry.max_attempts.max(1);
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let last = attempt >= attempts;
            let mut req: RequestBuilder = self
                .http
                .request(method.clone(), &url)
                .timeout(timeout.unwrap_or(REQUEST_TIMEOUT));
            if auth {
                let token = self.token.as_ref().ok_or(RelayError::NoToken)?;
                req = req.bearer_auth(token.expose());
            }
            if let Some(k) = idempotency_key {
                req = req.header(IDEMPOTENCY_KEY_HEADER, k);
            }
            req = match &body {
                Body::None => req,
                Body::Json(v) => req.json(v),
                Body::Raw(b) => req
                    .header(header::CONTENT_TYPE, "application/octet-stream")
                    .body(b.to_vec()),
            };
            let resp = match req.send().await {
                Ok(r) => r,
                Err(source) => {
                    if last {
                        return Err(RelayError::Network {
                            url: self.base.clone(),
                            route,
                            source,
                        });
                    }
                    tracing::debug!(%route, attempt, error = %source, "relay unreachable, retrying");
                    tokio::time::sleep(self.retry.backoff(attempt - 1)).await;
                    continue;
                }
            };
            let status = resp.status();
            if status.is_success() {
                match resp.bytes().await {
                    Ok(b) => return Ok(b.to_vec()),
                    Err(source) => {
                        if last {
                            return Err(RelayError::Network {
                                url: self.base.clone(),
                                route,
                                source,
                            });
                        }
                        tokio::time::sleep(self.retry.backoff(attempt - 1)).await;
                        continue;
                    }
                }
            }
            if let Some(delay) = self.busy_delay(&resp, attempt).filter(|_| !last) {
                tracing::debug!(%route, attempt, %status, ?delay, "relay busy, retrying");
                tokio::time::sleep(delay).await;
                continue;
            }
            return Err(problem_of(route, resp).await);
        }
    }
}

/// What a push stream carries (API.md "Push stream").
#[derive(Debug, Clone, PartialEq)]
pub enum StreamItem {
    /// News, as a sync answer: its cursors are where to resume after processing it.
    Sync(SyncResponse),
    /// Everything stored before the stream opened has been sent: caught up.
    Ready,
    /// The relay closes the stream (`shutdown` or `replaced`); nothing follows.
    End(StreamEnd),
}

type RawEvents = futures::stream::BoxStream<
    'static,
    Result<eventsource_stream::Event, eventsource_stream::EventStreamError<reqwest::Error>>,
>;

/// An open push stream; see [`RelayClient::open_stream`].
pub struct EventStream {
    events: RawEvents,
    url: String,
    route: String,
    ended: bool,
}

impl std::fmt::Debug for EventStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStream")
            .field("url", &self.url)
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

impl EventStream {
    /// The next item; `Ok(None)` after [`StreamItem::End`]. A connection that breaks, or stays
    /// silent for 45 s, is [`RelayError::Network`] or [`RelayError::BadAnswer`]; an `error`
    /// event of the relay is [`RelayError::Problem`]. Events of unknown names are skipped.
    pub async fn next(&mut self) -> Result<Option<StreamItem>, RelayError> {
        while !self.ended {
            let raw = match tokio::time::timeout(STREAM_IDLE_TIMEOUT, self.events.next()).await {
                Err(_elapsed) => return Err(self.broken("the relay sent nothing for 45 s")),
                Ok(None) => {
                    return Err(self.broken("the relay closed the stream without an end event"));
                }
                Ok(Some(Err(eventsource_stream::EventStreamError::Transport(source)))) => {
                    self.ended = true;
                    return Err(RelayError::Network {
                        url: self.url.clone(),
                        route: self.route.clone(),
                        source,
                    });
                }
                Ok(Some(Err(e))) => return Err(self.broken(&format!("not an event stream: {e}"))),
                Ok(Some(Ok(event))) => event,
            };
            match raw.event.as_str() {
                stream_events::SYNC => {
                    return self.parse(&raw.data).map(|s| Some(StreamItem::Sync(s)));
                }
                stream_events::READY => return Ok(Some(StreamItem::Ready)),
                stream_events::END => {
                    self.ended = true;
                    return self.parse(&raw.data).map(|e| Some(StreamItem::End(e)));
                }
                stream_events::ERROR => {
                    self.ended = true;
                    let problem: Problem = self.parse(&raw.data)?;
                    return Err(RelayError::Problem {
                        route: self.route.clone(),
                        status: problem.status,
                        title: problem.title,
                        detail: problem.detail,
                    });
                }
                other => tracing::debug!(event = other, "skipping an unknown stream event"),
            }
        }
        Ok(None)
    }

    fn parse<T: DeserializeOwned>(&mut self, data: &str) -> Result<T, RelayError> {
        serde_json::from_str(data).map_err(|e| {
            self.ended = true;
            RelayError::BadAnswer {
                route: self.route.clone(),
                detail: format!("invalid event data: {e}"),
            }
        })
    }

    fn broken(&mut self, detail: &str) -> RelayError {
        self.ended = true;
        RelayError::BadAnswer {
            route: self.route.clone(),
            detail: detail.to_owned(),
        }
    }
}

impl RelayClient {
    /// For an error answer worth retrying (429 or 5xx) after attempt number `attempt` (1 for
    /// the first), how long to wait: the relay's `Retry-After` (at most a minute), else the
    /// backoff. `None` for any other answer.
    fn busy_delay(&self, resp: &reqwest::Response, attempt: u32) -> Option<Duration> {
        let status = resp.status();
        (status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error()).then(|| {
            retry_after(resp)
                .unwrap_or_else(|| self.retry.backoff(attempt - 1))
                .min(MAX_RETRY_AFTER)
        })
    }
}

/// `/v1/groups/{owner}/{group_id}` after checking both parts, so nothing odd reaches the URL.
fn group_path(owner: &str, group_id: &str) -> Result<String, RelayError> {
    if !dmls_api::is_valid_client_id(owner) {
        return Err(RelayError::InvalidInput(format!(
            "owner {owner:?} is not a valid client id"
        )));
    }
    if !dmls_api::is_valid_group_id(group_id) {
        return Err(RelayError::InvalidInput(format!(
            "group id {group_id:?} is not lowercase hex of 1 to 64 bytes"
        )));
    }
    Ok(format!("/v1/groups/{owner}/{group_id}"))
}

/// `welcomes` (recipient, bytes) as the items of one `POST /v1/welcomes`: welcomes with the
/// same bytes become one `to_all` item (a recipient named twice with the same bytes gets a
/// second item), a welcome whose bytes no other shares stays a `to` item. Also returns, for
/// each welcome in order, the index of its id in the relay's answer (one id per recipient, in
/// item order).
pub fn fan_out(welcomes: &[(String, Vec<u8>)]) -> (Vec<OutgoingWelcome>, Vec<usize>) {
    // Items, each as the indices of its welcomes; items with the same bytes, by bytes.
    let mut items: Vec<Vec<usize>> = Vec::new();
    let mut by_bytes: std::collections::HashMap<&[u8], Vec<usize>> =
        std::collections::HashMap::new();
    for (i, (to, data)) in welcomes.iter().enumerate() {
        let same = by_bytes.entry(data.as_slice()).or_default();
        let free = same.iter().copied().find(|&item| {
            items[item].len() < dmls_api::limits::MAX_WELCOMES_PER_POST
                && items[item].iter().all(|&j| welcomes[j].0 != *to)
        });
        match free {
            Some(item) => items[item].push(i),
            None => {
                same.push(items.len());
                items.push(vec![i]);
            }
        }
    }
    let mut positions = vec![0; welcomes.len()];
    let mut next = 0;
    let mut outgoing = Vec::with_capacity(items.len());
    for item in items {
        for &i in &item {
            positions[i] = next;
            next += 1;
        }
        let data = welcomes[item[0]].1.clone();
        outgoing.push(match item.as_slice() {
            [one] => OutgoingWelcome::to_one(welcomes[*one].0.clone(), data),
            _ => {
                OutgoingWelcome::to_all(item.iter().map(|&i| welcomes[i].0.clone()).collect(), data)
            }
        });
    }
    (outgoing, positions)
}

fn json<T: serde::Serialize>(v: &T) -> Result<serde_json::Value, RelayError> {
    serde_json::to_value(v).map_err(|e| RelayError::InvalidInput(format!("cannot encode: {e}")))
}

/// `METHOD /path` without the query string, for errors and logs.
fn route_of(method: &Method, path: &str) -> String {
    let p = path.split('?').next().unwrap_or(path);
    format!("{method} {p}")
}

/// `Retry-After` in seconds (the relay sends delta-seconds).
fn retry_after(resp: &reqwest::Response) -> Option<Duration> {
    let v = resp.headers().get(header::RETRY_AFTER)?.to_str().ok()?;
    let secs: u64 = v.trim().parse().ok()?;
    Some(Duration::from_secs(secs))
}

/// Turns an error answer into [`RelayError::Problem`], with the relay's detail when it sent one.
async fn problem_of(route: String, resp: reqwest::Response) -> RelayError {
    let status = resp.status();
    let reason = status.canonical_reason().unwrap_or("error").to_string();
    let body = resp.bytes().await.unwrap_or_default();
    match serde_json::from_slice::<Problem>(&body) {
        Ok(p) => RelayError::Problem {
            route,
            status: status.as_u16(),
            title: p.title,
            detail: p.detail,
        },
        Err(_) => {
            let text = String::from_utf8_lossy(&body);
            let detail: String = text.chars().take(300).collect();
            RelayError::Problem {
                route,
                status: status.as_u16(),
                title: reason,
                detail,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn token_is_redacted_in_debug() {
        let c = RelayClient::new("http://127.0.0.1:1")
            .unwrap()
            .with_token(Token::new("s3cr3t"));
        assert!(!format!("{c:?}").contains("s3cr3t"));
        assert!(!format!("{:?}", Token::new("s3cr3t")).contains("s3cr3t"));
    }

    fn w(to: &str, data: &[u8]) -> (String, Vec<u8>) {
        (to.to_string(), data.to_vec())
    }

    #[test]
    fn welcomes_with_the_same_bytes_go_as_one_to_all_item() {
        let welcomes = vec![
            w("bob", b"W"),
            w("carol", b"other"),
            w("dave", b"W"),
            w("bob", b"W"),
            w("erin", b"W"),
        ];
        let (items, positions) = fan_out(&welcomes);
        assert_eq!(
            items,
            vec![
                OutgoingWelcome::to_all(
                    vec!["bob".into(), "dave".into(), "erin".into()],
                    b"W".to_vec()
                ),
                OutgoingWelcome::to_one("carol", b"other".to_vec()),
                // Bob twice with the same bytes: a second item.
                OutgoingWelcome::to_one("bob", b"W".to_vec()),
            ]
        );
        // The answer has ids for bob, dave, erin, carol, bob: each welcome's id, in order.
        assert_eq!(positions, vec![0, 3, 1, 4, 2]);
    }

    #[test]
    fn welcomes_of_distinct_bytes_stay_as_they_are() {
        let welcomes = vec![w("bob", b"1"), w("carol", b"2")];
        let (items, positions) = fan_out(&welcomes);
        assert_eq!(
            items,
            vec![
                OutgoingWelcome::to_one("bob", b"1".to_vec()),
                OutgoingWelcome::to_one("carol", b"2".to_vec())
            ]
        );
        assert_eq!(positions, vec![0, 1]);
        assert_eq!(fan_out(&[]), (Vec::new(), Vec::new()));
    }

    #[test]
    fn rejects_urls_that_are_not_http() {
        assert!(RelayClient::new("ftp://x").is_err());
        assert!(RelayClient::new("not a url").is_err());
        assert!(RelayClient::new("http://127.0.0.1:8080/").is_ok());
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy {
            max_attempts: 10,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
        };
        for retry in 0..30 {
            let d = p.backoff(retry);
            assert!(d <= Duration::from_secs(1), "{d:?}");
        }
        assert!(p.backoff(0) >= Duration::from_millis(50));
        assert!(p.backoff(5) >= Duration::from_millis(500));
    }

    #[test]
    fn group_paths_reject_bad_ids() {
        assert!(group_path("alice", "ab").is_ok());
        assert!(group_path("Alice", "ab").is_err());
        assert!(group_path("alice", "../x").is_err());
    }

    #[tokio::test]
    async fn unreachable_relay_is_a_network_error_after_retries() {
        let c = RelayClient::new("http://127.0.0.1:9")
            .unwrap()
            .with_token(Token::new("t"))
            .with_retry(RetryPolicy {
                max_attempts: 2,
                base_delay: Duration::from_millis(1),
                max_delay: Duration::from_millis(2),
            });
        let e = c.me().await.unwrap_err();
        assert!(matches!(e, RelayError::Network { .. }), "{e}");
    }
}
