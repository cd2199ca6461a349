//! The typed relay client against a real relay in this process (SQLite, 127.0.0.1:0).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use clap::Parser as _;
use dmls_api::{SyncGroupCursor, SyncRequest};
use dmls_client::relay::{RelayClient, RelayError, Token};

async fn start_relay(dir: &std::path::Path) -> dmls_relay::RunningRelay {
    dmls_relay::testing::start_sqlite_relay(dir)
        .await
        .expect("relay starts")
}

async fn register(url: &str, name: &str) -> RelayClient {
    let anon = RelayClient::new(url).unwrap();
    let r = anon.register(name).await.unwrap();
    assert_eq!(r.client_id, name);
    anon.with_token(Token::new(r.token))
}

const GID: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_the_client_needs_works_against_the_relay() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start_relay(dir.path()).await;
    let alice = register(&relay.url(), "alice").await;
    let bob = register(&relay.url(), "bob").await;

    // A taken name is a conflict with the relay's detail.
    let e = RelayClient::new(&relay.url())
        .unwrap()
        .register("alice")
        .await
        .unwrap_err();
    assert!(e.is_conflict(), "{e}");

    let me = alice.me().await.unwrap();
    assert_eq!(me.client_id, "alice");
    assert_eq!(me.key_packages_available, 0);

    let available = bob
        .upload_key_packages(vec![b"kp1".to_vec(), b"kp2".to_vec()], Some(b"lr".to_vec()))
        .await
        .unwrap();
    assert_eq!(available, 2);
    let claimed = alice
        .claim_key_packages(&["bob".to_string()])
        .await
        .unwrap();
    assert_eq!(claimed.key_packages.len(), 1);
    assert!(claimed.missing.is_empty());

    alice
        .put_group("alice", GID, &["bob".to_string()])
        .await
        .unwrap();
    let info = bob.get_group("alice", GID).await.unwrap();
    assert_eq!(info.members, vec!["bob".to_string()]);

    // Bob may not create groups in Alice's name.
    let e = bob.put_group("alice", GID, &[]).await.unwrap_err();
    assert_eq!(e.status(), Some(403), "{e}");
    assert!(matches!(e, RelayError::Problem { .. }));

    // The same idempotency key and body is stored once.
    let s1 = alice
        .post_message("alice", GID, b"m1", Some("ob1-x"))
        .await
        .unwrap();
    let s1b = alice
        .post_message("alice", GID, b"m1", Some("ob1-x"))
        .await
        .unwrap();
    assert_eq!(s1, s1b);
    let s2 = alice.post_message("alice", GID, b"m2", None).await.unwrap();
    assert!(s2 > s1);
    let page = bob.list_messages("alice", GID, 0, 100).await.unwrap();
    assert_eq!(page.messages.len(), 2);
    assert_eq!(page.messages[0].data.0, b"m1");

    let ids = alice
        .post_welcomes(vec![("bob".into(), b"w".to_vec())])
        .await
        .unwrap();
    assert_eq!(ids.len(), 1);
    let inbox = bob.list_welcomes(0, 10).await.unwrap();
    assert_eq!(inbox.welcomes.len(), 1);
    assert_eq!(inbox.welcomes[0].from, "alice");
    bob.delete_welcomes(inbox.next_after).await.unwrap();
    assert!(bob.list_welcomes(0, 10).await.unwrap().welcomes.is_empty());

    let sync = bob
        .sync(&SyncRequest {
            groups: vec![SyncGroupCursor {
                owner: "alice".into(),
                group_id: GID.into(),
                after: 0,
            }],
            welcomes_after: Some(0),
            limit: None,
            wait_ms: None,
        })
        .await
        .unwrap();
    assert_eq!(sync.groups.len(), 1);
    assert_eq!(sync.groups[0].messages.len(), 2);

    // A long poll is woken by a post.
    let waiter = {
        let bob = bob.clone();
        tokio::spawn(async move {
            let t = Instant::now();
            let r = bob
                .sync(&SyncRequest {
                    groups: vec![SyncGroupCursor {
                        owner: "alice".into(),
                        group_id: GID.into(),
                        after: s2,
                    }],
                    welcomes_after: None,
                    limit: None,
                    wait_ms: Some(20_000),
                })
                .await
                .unwrap();
            (t.elapsed(), r)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    alice.post_message("alice", GID, b"m3", None).await.unwrap();
    let (waited, r) = waiter.await.unwrap();
    assert!(
        waited < Duration::from_secs(10),
        "long poll took {waited:?}"
    );
    assert_eq!(r.groups[0].messages[0].data.0, b"m3");

    alice.delete_group("alice", GID).await.unwrap();
    let e = bob.get_group("alice", GID).await.unwrap_err();
    assert!(e.is_not_found() || e.status() == Some(403), "{e}");

    bob.delete_me().await.unwrap();
    let e = bob.me().await.unwrap_err();
    assert_eq!(e.status(), Some(401), "{e}");
    relay.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_bad_token_is_refused_and_never_shown() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start_relay(dir.path()).await;
    let c = RelayClient::new(&relay.url())
        .unwrap()
        .with_token(Token::new("not-a-real-token-xyz"));
    let e = c.me().await.unwrap_err();
    assert_eq!(e.status(), Some(401), "{e}");
    assert!(!e.to_string().contains("not-a-real-token-xyz"));
    assert!(!format!("{e:?}").contains("not-a-real-token-xyz"));
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_calls_are_retried_after_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("relay.db").display());
    let config = dmls_relay::Config::parse_from([
        "dmls-relay",
        "--bind",
        "127.0.0.1:0",
        "--database-url",
        &db,
        "--rate-limit-per-second",
        "2",
        "--rate-limit-burst",
        "2",
        "--registrations-per-minute",
        "0",
    ]);
    let relay = dmls_relay::start(config).await.unwrap();
    let alice = register(&relay.url(), "alice").await;
    // Six calls at a rate of 2/s: some get 429 and pass after waiting Retry-After.
    let t = Instant::now();
    for _ in 0..6 {
        alice.me().await.unwrap();
    }
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "no call was limited: {:?}",
        t.elapsed()
    );
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn welcomes_with_the_same_bytes_are_posted_once_for_all_recipients() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start_relay(dir.path()).await;
    let alice = register(&relay.url(), "alice").await;
    let bob = register(&relay.url(), "bob").await;
    let carol = register(&relay.url(), "carol").await;
    let welcome = vec![9u8; 5000];
    let ids = alice
        .post_welcomes(vec![
            ("bob".into(), welcome.clone()),
            ("carol".into(), b"other".to_vec()),
            ("carol".into(), welcome.clone()),
        ])
        .await
        .unwrap();
    assert_eq!(ids.len(), 3);
    let bob_inbox = bob.list_welcomes(0, 10).await.unwrap().welcomes;
    let carol_inbox = carol.list_welcomes(0, 10).await.unwrap().welcomes;
    assert_eq!(bob_inbox.len(), 1);
    assert_eq!((bob_inbox[0].id, &bob_inbox[0].data.0), (ids[0], &welcome));
    // The ids answer the welcomes in the order given.
    let carol_ids: Vec<(u64, Vec<u8>)> =
        carol_inbox.into_iter().map(|w| (w.id, w.data.0)).collect();
    assert!(carol_ids.contains(&(ids[1], b"other".to_vec())));
    assert!(carol_ids.contains(&(ids[2], welcome.clone())));
    relay.shutdown().await.unwrap();
}

/// A stand-in for a relay from before fan-out welcomes, on 127.0.0.1: `POST /v1/welcomes`
/// reads the body as that relay did (`to` and `data` only, unknown fields refused) and answers
/// 400 with serde's message, or 201 with ids 1, 2, ...; one request per connection. Returns its
/// URL and the bodies it received.
fn old_relay() -> (
    String,
    std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
) {
    use std::io::{BufRead as _, BufReader, Read as _, Write as _};

    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct OldWelcome {
        to: String,
        data: String,
    }
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct OldRequest {
        welcomes: Vec<OldWelcome>,
    }

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let bodies = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut length = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some((name, value)) = line.split_once(':')
                    && name.eq_ignore_ascii_case("content-length")
                {
                    length = value.trim().parse().unwrap();
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            bodies
                .lock()
                .unwrap()
                .push(serde_json::from_slice(&body).unwrap());
            let (status, answer) = match serde_json::from_slice::<OldRequest>(&body) {
                Ok(r) => (
                    "201 Created",
                    serde_json::json!({ "ids": (1..=r.welcomes.len() as u64).collect::<Vec<_>>() }),
                ),
                Err(e) => (
                    "400 Bad Request",
                    serde_json::json!({
                        "type": "about:blank", "title": "Bad Request", "status": 400,
                        "detail": format!("Failed to deserialize the JSON body into the target type: {e}"),
                    }),
                ),
            };
            let answer = answer.to_string();
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
                answer.len()
            );
        }
    });
    (url, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_without_fan_out_gets_the_welcomes_one_per_recipient() {
    let (url, seen) = old_relay();
    let alice = RelayClient::new(&url).unwrap().with_token(Token::new("t"));
    let ids = alice
        .post_welcomes(vec![
            ("bob".into(), b"W".to_vec()),
            ("carol".into(), b"W".to_vec()),
        ])
        .await
        .unwrap();
    assert_eq!(ids, vec![1, 2]);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(
        seen[0]["welcomes"][0]["to_all"],
        serde_json::json!(["bob", "carol"])
    );
    assert_eq!(
        seen[1]["welcomes"],
        serde_json::json!([{ "to": "bob", "data": "Vw==" }, { "to": "carol", "data": "Vw==" }])
    );
}
