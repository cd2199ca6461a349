//! Abuse controls: the per-client cap on waiting long polls (the oldest is answered at once),
//! the global cap on waiting long polls (503), and the per-client daily storage quota (429),
//! with the refusals counted in `/metrics`.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use crate::common::*;
use dmls_api::SyncResponse;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::task::JoinHandle;

const DAY_MS: i64 = 86_400_000;

/// A long poll of `client` on these groups (each from seq 0), running in the background.
fn long_poll(client: &Client, groups: &[(&str, &str)]) -> JoinHandle<reqwest::Response> {
    let groups: Vec<Value> = groups
        .iter()
        .map(|(owner, group_id)| json!({"owner": owner, "group_id": group_id, "after": 0}))
        .collect();
    let client = client.clone();
    tokio::spawn(async move {
        client
            .try_sync(&json!({"groups": groups, "wait_ms": 30000}))
            .await
    })
}

/// Long polls waiting on this relay, as its index page tells.
async fn waiting(relay: &Relay) -> usize {
    let page = relay.get("/").send().await.unwrap().text().await.unwrap();
    let rest = page
        .split("Long polls waiting: ")
        .nth(1)
        .expect("the index page shows the waiting long polls");
    rest[..rest.find('<').unwrap()].trim().parse().unwrap()
}

/// Waits (polling, up to a minute) until `n` long polls wait on the relay.
async fn until_waiting(relay: &Relay, n: usize) {
    for _ in 0..600 {
        if waiting(relay).await == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{n} long polls never waited (now {})", waiting(relay).await);
}

/// The value of this exact metric line (name with labels), 0 when absent.
async fn metric(relay: &Relay, series: &str) -> f64 {
    let text = relay
        .get("/metrics")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

async fn answer(poll: JoinHandle<reqwest::Response>) -> SyncResponse {
    ok_json(poll.await.unwrap(), StatusCode::OK).await
}

fn retry_after(resp: &reqwest::Response) -> u64 {
    resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

backend_tests! {
    async fn a_client_beyond_its_long_poll_cap_has_its_oldest_answered_at_once(db: Db) {
        let relay = db.start(&["--max-waiting-per-client", "2"]).await;
        let alice = relay.register("alice").await;
        let bob = relay.register("bob").await;
        alice.create_group(&gid(1), &[]).await;
        bob.create_group(&gid(2), &[]).await;
        let refused_before = metric(&relay, "dmls_relay_refusals_total{limit=\"waiting_per_client\"}").await;

        // Bob at his cap, Alice at hers.
        let b1 = long_poll(&bob, &[("bob", &gid(2))]);
        let b2 = long_poll(&bob, &[("bob", &gid(2))]);
        until_waiting(&relay, 2).await;
        let a1 = long_poll(&alice, &[("alice", &gid(1))]);
        until_waiting(&relay, 3).await;
        let a2 = long_poll(&alice, &[("alice", &gid(1))]);
        until_waiting(&relay, 4).await;

        // A third of Alice's: her oldest answers at once (200, nothing new), the rest wait.
        let a3 = long_poll(&alice, &[("alice", &gid(1))]);
        let evicted = answer(a1).await;
        assert!(evicted.groups.is_empty() && evicted.forbidden.is_empty(), "{evicted:?}");
        until_waiting(&relay, 4).await;
        assert!(!a2.is_finished() && !a3.is_finished(), "only the oldest is answered");
        assert!(!b1.is_finished() && !b2.is_finished(), "another client is unaffected");
        assert!(
            metric(&relay, "dmls_relay_refusals_total{limit=\"waiting_per_client\"}").await >= refused_before + 1.0
        );
        assert_eq!(metric(&relay, "dmls_relay_clients_by_waiting_requests{waiting=\"2-4\"}").await, 2.0);

        // The newer ones still answer correctly when a message arrives.
        let seq = alice.post_message("alice", &gid(1), b"news").await;
        for poll in [a2, a3] {
            let news = answer(poll).await;
            assert_eq!(news.groups.len(), 1);
            assert_eq!(news.groups[0].messages[0].seq, seq);
            assert_eq!(news.groups[0].messages[0].data.0, b"news");
        }
        assert!(!b1.is_finished() && !b2.is_finished());
        bob.post_message("bob", &gid(2), b"for bob").await;
        for poll in [b1, b2] {
            assert_eq!(answer(poll).await.groups[0].messages[0].data.0, b"for bob");
        }
        until_waiting(&relay, 0).await;
    }

    async fn beyond_the_global_cap_long_polls_get_503_and_others_are_served(db: Db) {
        let relay = db.start(&["--max-waiting", "2"]).await;
        let alice = relay.register("alice").await;
        let bob = relay.register("bob").await;
        let carol = relay.register("carol").await;
        alice.create_group(&gid(1), &["bob"]).await;
        let refused_before = metric(&relay, "dmls_relay_refusals_total{limit=\"waiting\"}").await;

        let a = long_poll(&alice, &[("alice", &gid(1))]);
        let b = long_poll(&bob, &[("alice", &gid(1))]);
        until_waiting(&relay, 2).await;
        let resp = carol.try_sync(&json!({"groups": [], "welcomes_after": 0, "wait_ms": 30000})).await;
        let wait = retry_after(&resp);
        assert!((1..=60).contains(&wait), "Retry-After {wait}");
        expect_problem(resp, StatusCode::SERVICE_UNAVAILABLE).await;
        assert!(metric(&relay, "dmls_relay_refusals_total{limit=\"waiting\"}").await >= refused_before + 1.0);

        // Requests that do not wait are served, and the waiting ones are undisturbed.
        carol.sync(&json!({"groups": [], "welcomes_after": 0})).await;
        assert_eq!(carol.me().await.client_id, "carol");
        assert!(!a.is_finished() && !b.is_finished());

        // Once they are answered, a new long poll waits again.
        alice.post_message("alice", &gid(1), b"m").await;
        assert_eq!(answer(a).await.groups.len(), 1);
        assert_eq!(answer(b).await.groups.len(), 1);
        until_waiting(&relay, 0).await;
        let inbox = carol.clone();
        let c = tokio::spawn(async move {
            inbox.try_sync(&json!({"groups": [], "welcomes_after": 0, "wait_ms": 30000})).await
        });
        until_waiting(&relay, 1).await;
        alice.send_welcomes(&[("carol", b"w")]).await;
        assert_eq!(answer(c).await.welcomes[0].data.0, b"w");
    }

    async fn a_client_over_its_daily_message_quota_gets_429_stores_nothing_and_the_quota_resets(db: Db) {
        // A day to come: the pruner (by the system clock) drops usage rows of past days.
        let today = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
            / DAY_MS;
        let day = today + 100;
        let now = Arc::new(AtomicI64::new(day * DAY_MS + 3_600_000));
        let clock = now.clone();
        let relay = db
            .start_with_clock(
                &["--daily-message-quota", "3", "--daily-byte-quota", "0"],
                move || clock.load(Ordering::SeqCst),
            )
            .await;
        let alice = relay.register("alice").await;
        let bob = relay.register("bob").await;
        alice.create_group(&gid(1), &[]).await;
        bob.create_group(&gid(2), &[]).await;
        let refused_before = metric(&relay, "dmls_relay_refusals_total{limit=\"daily_messages\"}").await;

        alice.post_message("alice", &gid(1), b"1").await;
        alice.post_message("alice", &gid(1), b"2").await;
        // Two welcomes would make four: refused whole.
        let resp = alice.try_send_welcomes(&[("bob", b"w1"), ("bob", b"w2")]).await;
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(retry_after(&resp), 23 * 3600, "seconds until 00:00 UTC");
        expect_problem(resp, StatusCode::TOO_MANY_REQUESTS).await;
        assert!(bob.inbox().await.is_empty(), "nothing stored");
        // One fits; then the day's quota is used up, for group messages too.
        alice.send_welcomes(&[("bob", b"w1")]).await;
        let resp = alice.try_post("alice", &gid(1), b"4").await;
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        expect_problem(resp, StatusCode::TOO_MANY_REQUESTS).await;
        assert_eq!(alice.group("alice", &gid(1)).await.last_seq, 2, "nothing stored");
        assert_eq!(bob.inbox().await.len(), 1);
        assert!(
            metric(&relay, "dmls_relay_refusals_total{limit=\"daily_messages\"}").await >= refused_before + 2.0
        );
        // Another client has its own quota.
        bob.post_message("bob", &gid(2), b"b").await;

        // The next UTC day, Alice may store again.
        now.store((day + 1) * DAY_MS, Ordering::SeqCst);
        assert_eq!(alice.post_message("alice", &gid(1), b"4").await, 3);
        alice.send_welcomes(&[("bob", b"w2")]).await;
        assert_eq!(bob.inbox().await.len(), 2);
    }

    async fn a_client_over_its_daily_byte_quota_gets_429_and_stores_nothing(db: Db) {
        let relay = db.start(&["--daily-message-quota", "0", "--daily-byte-quota", "10"]).await;
        let alice = relay.register("alice").await;
        let bob = relay.register("bob").await;
        alice.create_group(&gid(1), &[]).await;
        alice.post_message("alice", &gid(1), b"123456").await;
        let resp = alice.try_post("alice", &gid(1), b"12345").await;
        let wait = retry_after(&resp);
        assert!((1..=86_400).contains(&wait), "Retry-After {wait}");
        expect_problem(resp, StatusCode::TOO_MANY_REQUESTS).await;
        let resp = alice.try_send_welcomes(&[("bob", b"12345")]).await;
        expect_problem(resp, StatusCode::TOO_MANY_REQUESTS).await;
        assert!(bob.inbox().await.is_empty());
        // What still fits is stored.
        assert_eq!(alice.post_message("alice", &gid(1), b"1234").await, 2);
        assert_eq!(alice.all_seqs("alice", &gid(1)).await, vec![1, 2]);
    }

    async fn relays_sharing_a_database_enforce_one_daily_quota(db: Db) {
        let flags = ["--daily-message-quota", "10", "--daily-byte-quota", "0"];
        let first = db.start(&flags).await;
        let second = db.start(&flags).await;
        let alice = first.register("alice").await;
        alice.create_group(&gid(1), &[]).await;
        let via_second = second.client("alice", &alice.token);
        let mut posts = Vec::new();
        for i in 0..30u8 {
            let client = if i % 2 == 0 { alice.clone() } else { via_second.clone() };
            posts.push(tokio::spawn(async move {
                client.try_post("alice", &gid(1), &[i]).await.status()
            }));
        }
        let mut stored = 0;
        for post in posts {
            match post.await.unwrap() {
                StatusCode::CREATED => stored += 1,
                StatusCode::TOO_MANY_REQUESTS => {}
                other => panic!("unexpected {other}"),
            }
        }
        assert_eq!(stored, 10);
        assert_eq!(alice.group("alice", &gid(1)).await.last_seq, 10);
    }
}

backend_tests! {
    async fn beyond_the_connection_cap_new_connections_get_503_and_open_ones_are_served(db: Db) {
        let relay = db.start(&["--max-connections", "3"]).await;
        // Alice calls over the harness's keep-alive connection, opened before the cap is reached.
        let alice = relay.register("alice").await;
        let before = metric(&relay, "dmls_relay_refusals_total{limit=\"connections\"}").await;
        let addr = relay.url.trim_start_matches("http://").to_string();
        // A new connection per request.
        let fresh = || reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
        // Idle connections fill the cap.
        let mut idle = Vec::new();
        let mut refused = None;
        for _ in 0..10 {
            idle.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
            let resp = fresh().get(relay.at("/healthz")).send().await.unwrap();
            if resp.status() == StatusCode::SERVICE_UNAVAILABLE {
                refused = Some(resp);
                break;
            }
        }
        let resp = refused.expect("a 503 once the cap is reached");
        let wait = retry_after(&resp);
        assert!((1..=60).contains(&wait), "Retry-After {wait}");
        expect_problem(resp, StatusCode::SERVICE_UNAVAILABLE).await;
        // The connections the relay holds are served as before.
        assert_eq!(alice.me().await.client_id, "alice");

        // Once the idle ones are gone, new connections are accepted again.
        drop(idle);
        let mut served = false;
        for _ in 0..100 {
            if fresh().get(relay.at("/healthz")).send().await.unwrap().status() == StatusCode::OK {
                served = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(served, "new connections are served after the idle ones closed");
        assert!(metric(&relay, "dmls_relay_refusals_total{limit=\"connections\"}").await >= before + 1.0);
    }
}
