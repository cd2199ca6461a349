//! A relay that misbehaves as its operator could: an HTTP proxy on 127.0.0.1 in front of the
//! real relay that forwards everything, but hands out key packages of its own making when a
//! client claims those of a chosen member, and rewrites the Welcomes a chosen member sends.
//! Clients talk to it as to any relay (its URL).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use dmls_api::{Bytes, ClaimKeyPackagesResponse, SyncResponse, WelcomesPage};

#[derive(Default)]
struct Plan {
    /// Per member: key packages to hand out instead of the real ones, one per claim.
    key_packages: HashMap<String, VecDeque<Vec<u8>>>,
    /// Per sender: Welcomes to deliver instead of its next real ones.
    welcomes: HashMap<String, VecDeque<Vec<u8>>>,
    /// Real Welcome (inbox id) to the bytes delivered instead, so that a Welcome read again
    /// is rewritten the same way.
    rewritten: HashMap<u64, Vec<u8>>,
    /// How many key packages and Welcomes were substituted.
    substituted: usize,
}

struct Shared {
    upstream: String,
    http: reqwest::Client,
    plan: Mutex<Plan>,
}

/// The running proxy.
pub struct KeySubstitutingRelay {
    url: String,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl KeySubstitutingRelay {
    /// Starts a proxy in front of the relay at `upstream`.
    pub async fn start(upstream: &str) -> KeySubstitutingRelay {
        let shared = Arc::new(Shared {
            upstream: upstream.trim_end_matches('/').to_string(),
            http: reqwest::Client::new(),
            plan: Mutex::new(Plan::default()),
        });
        let app = axum::Router::new()
            .fallback(forward)
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        KeySubstitutingRelay { url, shared, task }
    }

    /// Its base URL, for clients.
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// Hands out `forged` (one per claim, in order) instead of `member`'s real key packages.
    pub fn substitute_key_packages(&self, member: &str, forged: Vec<Vec<u8>>) {
        self.shared
            .plan
            .lock()
            .unwrap()
            .key_packages
            .entry(member.to_string())
            .or_default()
            .extend(forged);
    }

    /// Delivers `forged` instead of the next Welcome `sender` sent.
    pub fn rewrite_next_welcome_from(&self, sender: &str, forged: Vec<u8>) {
        self.shared
            .plan
            .lock()
            .unwrap()
            .welcomes
            .entry(sender.to_string())
            .or_default()
            .push_back(forged);
    }

    /// How many key packages and Welcomes were substituted so far.
    pub fn substituted(&self) -> usize {
        self.shared.plan.lock().unwrap().substituted
    }
}

impl Drop for KeySubstitutingRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 64 << 20).await.unwrap();
    let path = parts.uri.path().to_string();
    let target = format!(
        "{}{}",
        shared.upstream,
        parts.uri.path_and_query().map_or("/", |p| p.as_str())
    );
    let mut upstream = shared.http.request(parts.method.clone(), target).body(body);
    for (name, value) in &parts.headers {
        if name != header::HOST && name != header::CONTENT_LENGTH {
            upstream = upstream.header(name, value);
        }
    }
    let answer = upstream.send().await.unwrap();
    let status = answer.status();
    let headers = answer.headers().clone();
    let bytes = answer.bytes().await.unwrap().to_vec();
    let bytes = if status == StatusCode::OK {
        rewrite(&shared, &path, bytes)
    } else {
        bytes
    };
    respond(status, &headers, bytes)
}

fn respond(status: StatusCode, headers: &HeaderMap, body: Vec<u8>) -> Response {
    let mut r = Response::builder().status(status);
    for (name, value) in headers {
        if name != header::CONTENT_LENGTH && name != header::TRANSFER_ENCODING {
            r = r.header(name, value);
        }
    }
    r.body(Body::from(body)).unwrap()
}

fn rewrite(shared: &Shared, path: &str, bytes: Vec<u8>) -> Vec<u8> {
    let mut plan = shared.plan.lock().unwrap();
    match path {
        "/v1/key-packages/claim" => {
            let mut answer: ClaimKeyPackagesResponse = serde_json::from_slice(&bytes).unwrap();
            for kp in &mut answer.key_packages {
                let next = plan
                    .key_packages
                    .get_mut(&kp.client_id)
                    .and_then(VecDeque::pop_front);
                if let Some(forged) = next {
                    kp.key_package = Bytes(forged);
                    plan.substituted += 1;
                }
            }
            serde_json::to_vec(&answer).unwrap()
        }
        "/v1/sync" => {
            let mut answer: SyncResponse = serde_json::from_slice(&bytes).unwrap();
            for w in &mut answer.welcomes {
                rewrite_welcome(&mut plan, w);
            }
            serde_json::to_vec(&answer).unwrap()
        }
        "/v1/welcomes" => {
            let mut page: WelcomesPage = serde_json::from_slice(&bytes).unwrap();
            for w in &mut page.welcomes {
                rewrite_welcome(&mut plan, w);
            }
            serde_json::to_vec(&page).unwrap()
        }
        _ => bytes,
    }
}

fn rewrite_welcome(plan: &mut Plan, w: &mut dmls_api::Welcome) {
    if let Some(forged) = plan.rewritten.get(&w.id) {
        w.data = Bytes(forged.clone());
        return;
    }
    if let Some(forged) = plan.welcomes.get_mut(&w.from).and_then(VecDeque::pop_front) {
        plan.rewritten.insert(w.id, forged.clone());
        w.data = Bytes(forged);
        plan.substituted += 1;
    }
}
