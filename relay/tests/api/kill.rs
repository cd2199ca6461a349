//! Durability under faults: the relay binary is killed with SIGKILL while clients append and a
//! push stream reads, and started again on the same database. Every acknowledged message must
//! be there with the same bytes, seqs gap-free; a retried post (same `Idempotency-Key`) is
//! stored once; the stream client, reopening from its last cursor, sees every message exactly
//! once and in order.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;
use dmls_api::PostMessageResponse;
use eventsource_stream::Eventsource as _;
use futures::StreamExt as _;
use reqwest::StatusCode;
use serde_json::json;

const APPENDERS: usize = 4;
const KILLS: usize = 2;

/// The relay binary, logging JSON into a file, on port 0.
struct Process {
    child: Child,
    url: String,
}

fn spawn(database_url: &str, log: &Path) -> Process {
    let out = std::fs::File::create(log).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_dmls-relay"))
        .args([
            "--bind",
            "127.0.0.1:0",
            "--database-url",
            database_url,
            "--log-format",
            "json",
            "--rate-limit-per-second",
            "0",
            "--registrations-per-minute",
            "0",
        ])
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let mut process = Process {
        child,
        url: String::new(),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(addr) = text.lines().find_map(|line| {
            let rest = &line[line.find("\"addr\":\"127.0.0.1:")? + 8..];
            Some(rest[..rest.find('"')?].to_owned())
        }) {
            process.url = format!("http://{addr}");
            return process;
        }
        assert!(
            Instant::now() < deadline,
            "the relay did not log its address:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where the relay is now (it moves to a new port on each start).
type Base = Arc<Mutex<String>>;

fn base(b: &Base) -> String {
    b.lock().unwrap().clone()
}

/// Posts `data` with `key` until the relay acknowledges it, retrying through failures (the
/// relay being down) with the same key; returns the seq.
async fn post_until_acked(
    http: &reqwest::Client,
    at: &Base,
    token: &str,
    key: &str,
    data: &[u8],
) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let sent = http
            .post(format!(
                "{}{}/messages",
                base(at),
                group_path("alice", &gid(1))
            ))
            .bearer_auth(token)
            .header("idempotency-key", key)
            .header("content-type", "application/octet-stream")
            .body(data.to_vec())
            .send()
            .await;
        if let Ok(resp) = sent {
            let status = resp.status();
            if status == StatusCode::CREATED || status == StatusCode::OK {
                if let Ok(answer) = resp.json::<PostMessageResponse>().await {
                    return answer.seq;
                }
            } else {
                assert!(status.is_server_error(), "post {key}: {status}");
            }
        }
        assert!(Instant::now() < deadline, "post {key} never acknowledged");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Follows `alice/gid(1)` on push streams until it has seen `total` messages, reopening from its
/// last cursor whenever a stream breaks; returns every (seq, data) in the order received.
async fn follow(
    http: reqwest::Client,
    at: Base,
    token: String,
    total: Arc<Mutex<Option<usize>>>,
) -> Vec<(u64, Vec<u8>)> {
    let mut got: Vec<(u64, Vec<u8>)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        if total.lock().unwrap().is_some_and(|n| got.len() >= n) {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "the stream reader did not get everything"
        );
        let after = got.last().map_or(0, |(seq, _)| *seq);
        let opened = http
            .post(format!("{}/v1/stream", base(&at)))
            .bearer_auth(&token)
            .json(&json!({ "groups": [{ "owner": "alice", "group_id": gid(1), "after": after }] }))
            .send()
            .await;
        let resp = match opened {
            Ok(resp) if resp.status() == StatusCode::OK => resp,
            _ => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let mut events = resp.bytes_stream().eventsource();
        loop {
            let event = match tokio::time::timeout(Duration::from_secs(1), events.next()).await {
                // Quiet: check whether everything arrived.
                Err(_) => {
                    if total.lock().unwrap().is_some_and(|n| got.len() >= n) {
                        return got;
                    }
                    continue;
                }
                Ok(Some(Ok(event))) => event,
                // Broken (the relay was killed) or ended: open another.
                Ok(_) => break,
            };
            if event.event != "sync" {
                continue;
            }
            let answer: dmls_api::SyncResponse = serde_json::from_str(&event.data).unwrap();
            for group in answer.groups {
                got.extend(group.messages.into_iter().map(|m| (m.seq, m.data.0)));
            }
        }
    }
}

backend_tests! {
    async fn nothing_acknowledged_is_lost_when_the_relay_is_killed_under_load(db: Db) {
        let logs = tempfile::tempdir().unwrap();
        let mut process = spawn(&db.url, &logs.path().join("relay-0.log"));
        let at: Base = Arc::new(Mutex::new(process.url.clone()));
        let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
        let setup = Relay::remote(&process.url, http.clone());
        let alice = setup.register("alice").await;
        let bob = setup.register("bob").await;
        alice.create_group(&gid(1), &["bob"]).await;

        let total = Arc::new(Mutex::new(None));
        let reader = tokio::spawn(follow(http.clone(), Arc::clone(&at), bob.token.clone(), Arc::clone(&total)));
        let stop = Arc::new(AtomicBool::new(false));
        let mut appenders = Vec::new();
        for a in 0..APPENDERS {
            let (http, at, token) = (http.clone(), Arc::clone(&at), alice.token.clone());
            let stop = Arc::clone(&stop);
            appenders.push(tokio::spawn(async move {
                let mut acked = Vec::new();
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("a{a}-{i}");
                    let data = format!("payload of {key}").into_bytes();
                    let seq = post_until_acked(&http, &at, &token, &key, &data).await;
                    acked.push((key, seq, data));
                    i += 1;
                }
                acked
            }));
        }
        for kill in 1..=KILLS {
            tokio::time::sleep(Duration::from_millis(700)).await;
            process.child.kill().unwrap();
            process.child.wait().unwrap();
            drop(process);
            process = spawn(&db.url, &logs.path().join(format!("relay-{kill}.log")));
            *at.lock().unwrap() = process.url.clone();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop.store(true, Ordering::Relaxed);
        let mut acked = Vec::new();
        for appender in appenders {
            acked.extend(appender.await.unwrap());
        }
        let posts = acked.len();
        assert!(posts > 50, "only {posts} posts: not under load");
        *total.lock().unwrap() = Some(posts);

        // Every acknowledged message is stored once, at its seq, with its bytes; seqs are 1..=n.
        let now = Relay::remote(&process.url, http.clone()).client("bob", &bob.token);
        let mut stored: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
        let mut after = 0;
        loop {
            let page = now.messages("alice", &gid(1), after, Some(1000)).await;
            stored.extend(page.messages.into_iter().map(|m| (m.seq, m.data.0)));
            after = page.next_after;
            if !page.more {
                break;
            }
        }
        let seqs: Vec<u64> = stored.keys().copied().collect();
        assert_eq!(seqs, (1..=posts as u64).collect::<Vec<_>>(), "gap-free, one per post");
        let mut times_stored: HashMap<&[u8], usize> = HashMap::new();
        for data in stored.values() {
            *times_stored.entry(data.as_slice()).or_default() += 1;
        }
        for (key, seq, data) in &acked {
            assert_eq!(stored.get(seq), Some(data), "{key} acknowledged at {seq}");
            assert_eq!(times_stored.get(data.as_slice()), Some(&1), "{key} stored once");
        }

        // The stream reader saw each exactly once, in order.
        let streamed = tokio::time::timeout(Duration::from_secs(60), reader).await.unwrap().unwrap();
        let streamed_seqs: Vec<u64> = streamed.iter().map(|(seq, _)| *seq).collect();
        assert_eq!(streamed_seqs, seqs, "every message once, in order, across reconnects");
        for (seq, data) in &streamed {
            assert_eq!(stored.get(seq), Some(data));
        }
        drop(process);
    }
}
