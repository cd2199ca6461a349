//! Shared harness of the relay's integration tests: a relay per backend on 127.0.0.1:0, clients
//! registered over real HTTP, and helpers for the calls most tests make.
//!
//! `backend_tests!` runs one test body on SQLite always and on PostgreSQL when
//! `DMLS_TEST_DATABASE_URL` is set (each run gets a fresh database).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use dmls_api::{
    ClaimKeyPackagesResponse, ClientInfo, GroupInfo, MessagesPage, PostMessageResponse,
    PostWelcomesResponse, Problem, RegisterResponse, SyncResponse, UploadKeyPackagesResponse,
    WelcomesPage,
};
use dmls_relay::{Config, RunningRelay};
use reqwest::{RequestBuilder, Response, StatusCode};
use serde_json::{Value, json};

/// Runs each body once per backend: `mod NAME { fn sqlite(); fn postgres() }`.
macro_rules! backend_tests {
    ($( $(#[$meta:meta])* async fn $name:ident($db:ident: Db) $body:block )*) => { $(
        $(#[$meta])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            async fn body($db: $crate::common::Db) $body

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                body($crate::common::Db::sqlite()).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if let Some(db) = $crate::common::Db::postgres(module_path!()).await {
                    body(db).await
                }
            }
        }
    )* };
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A database for one test: a SQLite file in a temporary directory, or a fresh PostgreSQL
/// database. Several relays may be started on it (two relay processes sharing PostgreSQL).
pub struct Db {
    pub backend: Backend,
    pub url: String,
    _dir: Option<tempfile::TempDir>,
}

impl Db {
    pub fn sqlite() -> Db {
        let dir = tempfile::tempdir().unwrap();
        let url = dmls_relay::testing::sqlite_test_url(dir.path());
        Db {
            backend: Backend::Sqlite,
            url,
            _dir: Some(dir),
        }
    }

    /// `None` (after printing that the variant is skipped) when `DMLS_TEST_DATABASE_URL` is unset.
    pub async fn postgres(test_name: &str) -> Option<Db> {
        match dmls_relay::testing::postgres_test_url().await {
            Some(url) => Some(Db {
                backend: Backend::Postgres,
                url,
                _dir: None,
            }),
            None => {
                dmls_relay::testing::skip_notice(test_name);
                None
            }
        }
    }

    /// A relay with the default limits except the request rate and registration limits,
    /// which are off so that tests may call as fast as they like.
    pub async fn relay(&self) -> Relay {
        self.start(&[]).await
    }

    /// A relay with these extra command-line flags (they replace the harness's defaults).
    pub async fn start(&self, flags: &[&str]) -> Relay {
        let running = dmls_relay::start(self.config(flags))
            .await
            .expect("relay starts");
        Relay::serving(running)
    }

    /// [`start`](Self::start), with the relay reading the time (ms since the Unix epoch) from
    /// `clock`.
    pub async fn start_with_clock(
        &self,
        flags: &[&str],
        clock: impl Fn() -> i64 + Send + Sync + 'static,
    ) -> Relay {
        let running = dmls_relay::testing::start_with_clock(self.config(flags), clock)
            .await
            .expect("relay starts");
        Relay::serving(running)
    }

    /// The relay's configuration with these flags.
    fn config(&self, flags: &[&str]) -> Config {
        let defaults = [
            ("--rate-limit-per-second", "0"),
            ("--registrations-per-minute", "0"),
        ];
        let mut args = vec![
            "dmls-relay",
            "--bind",
            "127.0.0.1:0",
            "--database-url",
            &self.url,
        ];
        for (flag, value) in defaults {
            if !flags.contains(&flag) {
                args.extend([flag, value]);
            }
        }
        args.extend_from_slice(flags);
        <Config as clap::Parser>::parse_from(args)
    }
}

impl Relay {
    fn serving(running: RunningRelay) -> Relay {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        Relay {
            url: running.url(),
            http,
            running: Some(running),
        }
    }
}

/// A relay serving in this test process.
pub struct Relay {
    pub url: String,
    pub http: reqwest::Client,
    running: Option<RunningRelay>,
}

impl Relay {
    pub fn at(&self, path: &str) -> String {
        format!("{}{}", self.url, path)
    }

    pub fn get(&self, path: &str) -> RequestBuilder {
        self.http.get(self.at(path))
    }

    pub fn post(&self, path: &str) -> RequestBuilder {
        self.http.post(self.at(path))
    }

    /// `POST /v1/clients` without a bearer.
    pub async fn try_register(&self, client_id: &str) -> Response {
        self.post("/v1/clients")
            .json(&json!({ "client_id": client_id }))
            .send()
            .await
            .unwrap()
    }

    /// Registers `client_id` (expecting 201).
    pub async fn register(&self, client_id: &str) -> Client {
        let resp = self.try_register(client_id).await;
        assert_eq!(
            resp.status(),
            StatusCode::CREATED,
            "registering {client_id}"
        );
        let body: RegisterResponse = resp.json().await.unwrap();
        assert_eq!(body.client_id, client_id);
        self.client(client_id, &body.token)
    }

    /// A client handle with a given token (which may be wrong, for tests of auth).
    pub fn client(&self, client_id: &str, token: &str) -> Client {
        Client {
            id: client_id.to_string(),
            token: token.to_string(),
            base: self.url.clone(),
            http: self.http.clone(),
        }
    }

    /// A relay running elsewhere (another process) at `url`.
    pub fn remote(url: &str, http: reqwest::Client) -> Relay {
        Relay {
            url: url.to_owned(),
            http,
            running: None,
        }
    }

    pub async fn stop(mut self) {
        if let Some(running) = self.running.take() {
            running.shutdown().await.unwrap();
        }
    }
}

/// A registered client, calling with its bearer token.
#[derive(Clone)]
pub struct Client {
    pub id: String,
    pub token: String,
    base: String,
    http: reqwest::Client,
}

impl Client {
    fn at(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn get(&self, path: &str) -> RequestBuilder {
        self.http.get(self.at(path)).bearer_auth(&self.token)
    }

    pub fn post(&self, path: &str) -> RequestBuilder {
        self.http.post(self.at(path)).bearer_auth(&self.token)
    }

    pub fn put(&self, path: &str) -> RequestBuilder {
        self.http.put(self.at(path)).bearer_auth(&self.token)
    }

    pub fn delete(&self, path: &str) -> RequestBuilder {
        self.http.delete(self.at(path)).bearer_auth(&self.token)
    }

    pub async fn me(&self) -> ClientInfo {
        ok_json(
            self.get("/v1/clients/me").send().await.unwrap(),
            StatusCode::OK,
        )
        .await
    }

    pub async fn try_upload(&self, key_packages: &[&[u8]], last_resort: Option<&[u8]>) -> Response {
        let body = json!({
            "key_packages": key_packages.iter().map(|k| b64(k)).collect::<Vec<_>>(),
            "last_resort": last_resort.map(b64),
        });
        self.post("/v1/key-packages")
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// Uploads key packages (expecting 201); returns the stock size.
    pub async fn upload(&self, key_packages: &[&[u8]], last_resort: Option<&[u8]>) -> u64 {
        let r: UploadKeyPackagesResponse = ok_json(
            self.try_upload(key_packages, last_resort).await,
            StatusCode::CREATED,
        )
        .await;
        r.available
    }

    pub async fn try_claim(&self, client_ids: &[&str]) -> Response {
        self.post("/v1/key-packages/claim")
            .json(&json!({ "client_ids": client_ids }))
            .send()
            .await
            .unwrap()
    }

    pub async fn claim(&self, client_ids: &[&str]) -> ClaimKeyPackagesResponse {
        ok_json(self.try_claim(client_ids).await, StatusCode::OK).await
    }

    pub async fn try_send_welcomes(&self, welcomes: &[(&str, &[u8])]) -> Response {
        let list: Vec<Value> = welcomes
            .iter()
            .map(|(to, data)| json!({ "to": to, "data": b64(data) }))
            .collect();
        self.post("/v1/welcomes")
            .json(&json!({ "welcomes": list }))
            .send()
            .await
            .unwrap()
    }

    /// Posts welcomes (expecting 201); returns their ids.
    pub async fn send_welcomes(&self, welcomes: &[(&str, &[u8])]) -> Vec<u64> {
        let r: PostWelcomesResponse =
            ok_json(self.try_send_welcomes(welcomes).await, StatusCode::CREATED).await;
        r.ids
    }

    pub async fn welcomes(&self, after: u64, limit: Option<u32>) -> WelcomesPage {
        let mut path = format!("/v1/welcomes?after={after}");
        if let Some(limit) = limit {
            path.push_str(&format!("&limit={limit}"));
        }
        ok_json(self.get(&path).send().await.unwrap(), StatusCode::OK).await
    }

    /// The whole inbox, for checks that it did not change.
    pub async fn inbox(&self) -> Vec<(u64, String, Vec<u8>)> {
        let page = self.welcomes(0, Some(1000)).await;
        page.welcomes
            .into_iter()
            .map(|w| (w.id, w.from, w.data.0))
            .collect()
    }

    pub async fn try_put_group(&self, owner: &str, group_id: &str, members: &[&str]) -> Response {
        self.put(&group_path(owner, group_id))
            .json(&json!({ "members": members }))
            .send()
            .await
            .unwrap()
    }

    /// Creates one of this client's groups (expecting 201).
    pub async fn create_group(&self, group_id: &str, members: &[&str]) {
        let resp = self.try_put_group(&self.id, group_id, members).await;
        assert_eq!(
            resp.status(),
            StatusCode::CREATED,
            "creating group {group_id}"
        );
    }

    /// Replaces the members of one of this client's groups (expecting 200).
    pub async fn set_members(&self, group_id: &str, members: &[&str]) {
        let resp = self.try_put_group(&self.id, group_id, members).await;
        assert_eq!(
            resp.status(),
            StatusCode::OK,
            "replacing members of {group_id}"
        );
    }

    pub async fn group(&self, owner: &str, group_id: &str) -> GroupInfo {
        ok_json(
            self.get(&group_path(owner, group_id)).send().await.unwrap(),
            StatusCode::OK,
        )
        .await
    }

    /// Posts raw bytes.
    pub async fn try_post(&self, owner: &str, group_id: &str, data: &[u8]) -> Response {
        self.post(&format!("{}/messages", group_path(owner, group_id)))
            .header("content-type", "application/octet-stream")
            .body(data.to_vec())
            .send()
            .await
            .unwrap()
    }

    /// Posts raw bytes (expecting 201); returns the seq.
    pub async fn post_message(&self, owner: &str, group_id: &str, data: &[u8]) -> u64 {
        let r: PostMessageResponse = ok_json(
            self.try_post(owner, group_id, data).await,
            StatusCode::CREATED,
        )
        .await;
        r.seq
    }

    pub async fn try_messages(
        &self,
        owner: &str,
        group_id: &str,
        after: u64,
        limit: Option<u32>,
    ) -> Response {
        let mut path = format!("{}/messages?after={after}", group_path(owner, group_id));
        if let Some(limit) = limit {
            path.push_str(&format!("&limit={limit}"));
        }
        self.get(&path).send().await.unwrap()
    }

    pub async fn messages(
        &self,
        owner: &str,
        group_id: &str,
        after: u64,
        limit: Option<u32>,
    ) -> MessagesPage {
        ok_json(
            self.try_messages(owner, group_id, after, limit).await,
            StatusCode::OK,
        )
        .await
    }

    /// The seqs a client reads from `after` on, following `next_after` to the end.
    pub async fn all_seqs(&self, owner: &str, group_id: &str) -> Vec<u64> {
        let mut seqs = Vec::new();
        let mut after = 0;
        loop {
            let page = self.messages(owner, group_id, after, Some(1000)).await;
            seqs.extend(page.messages.iter().map(|m| m.seq));
            after = page.next_after;
            if !page.more {
                return seqs;
            }
        }
    }

    pub async fn try_sync(&self, request: &Value) -> Response {
        self.post("/v1/sync").json(request).send().await.unwrap()
    }

    pub async fn sync(&self, request: &Value) -> SyncResponse {
        ok_json(self.try_sync(request).await, StatusCode::OK).await
    }
}

pub fn group_path(owner: &str, group_id: &str) -> String {
    format!("/v1/groups/{owner}/{group_id}")
}

/// A valid 32-byte group id (64 hex digits) made from `n`.
pub fn gid(n: u8) -> String {
    format!("{n:02x}").repeat(32)
}

pub fn b64(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// Asserts the status and decodes the JSON body.
pub async fn ok_json<T: serde::de::DeserializeOwned>(resp: Response, expected: StatusCode) -> T {
    let status = resp.status();
    let url = resp.url().clone();
    let text = resp.text().await.unwrap();
    assert_eq!(status, expected, "{url}: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{url}: {e}: {text}"))
}

/// Asserts an RFC 9457 problem answer with this status and returns it.
pub async fn expect_problem(resp: Response, expected: StatusCode) -> Problem {
    let status = resp.status();
    let url = resp.url().clone();
    let content_type = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string());
    let text = resp.text().await.unwrap();
    assert_eq!(status, expected, "{url}: {text}");
    assert!(
        content_type
            .as_deref()
            .is_some_and(|c| c.starts_with("application/problem+json")),
        "{url}: content-type {content_type:?}"
    );
    let problem: Problem =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{url}: not a problem: {e}: {text}"));
    assert_eq!(problem.status, expected.as_u16(), "{url}: {text}");
    assert!(
        !problem.title.is_empty() && !problem.kind.is_empty(),
        "{url}: {text}"
    );
    problem
}

/// An open push stream (`POST /v1/stream`) read as a third-party client would: the bytes
/// through a server-sent-events parser.
pub struct Stream {
    events: futures::stream::BoxStream<
        'static,
        Result<eventsource_stream::Event, eventsource_stream::EventStreamError<reqwest::Error>>,
    >,
}

/// One event of a push stream: its name and its data as JSON.
#[derive(Debug)]
pub struct StreamEvent {
    pub name: String,
    pub data: Value,
}

impl StreamEvent {
    /// The data of a `sync` event.
    pub fn sync(&self) -> SyncResponse {
        assert_eq!(self.name, "sync", "{self:?}");
        serde_json::from_value(self.data.clone()).unwrap()
    }
}

impl Stream {
    /// The next event within `within`, or `None` when the stream ended; panics on a transport
    /// error or when nothing came in time.
    pub async fn next_within(&mut self, within: Duration) -> Option<StreamEvent> {
        use futures::StreamExt as _;
        let next = tokio::time::timeout(within, self.events.next())
            .await
            .expect("a stream event in time")?;
        let event = next.expect("a well-formed event stream");
        let data = serde_json::from_str(&event.data).expect("event data is JSON");
        Some(StreamEvent {
            name: event.event,
            data,
        })
    }

    /// The next event (within 5 s), which must exist.
    pub async fn next(&mut self) -> StreamEvent {
        self.next_within(Duration::from_secs(5))
            .await
            .expect("the stream goes on")
    }

    /// Nothing arrives within `within`.
    pub async fn assert_quiet(&mut self, within: Duration) {
        use futures::StreamExt as _;
        if let Ok(next) = tokio::time::timeout(within, self.events.next()).await {
            panic!("expected no event, got {next:?}");
        }
    }
}

impl Client {
    pub async fn try_stream(&self, request: &Value) -> Response {
        self.post("/v1/stream")
            .header("accept", "text/event-stream")
            .json(request)
            .send()
            .await
            .unwrap()
    }

    /// Opens a push stream (expecting 200 text/event-stream).
    pub async fn stream(&self, request: &Value) -> Stream {
        use eventsource_stream::Eventsource as _;
        use futures::StreamExt as _;
        let resp = self.try_stream(request).await;
        assert_eq!(resp.status(), StatusCode::OK);
        let content_type = resp.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(
            content_type.starts_with("text/event-stream"),
            "{content_type}"
        );
        Stream {
            events: resp.bytes_stream().eventsource().boxed(),
        }
    }
}
