//! `POST /v1/stream`: sync as server-sent events, read through an independent parser.

use std::time::{Duration, Instant};

use crate::common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

fn cursor(owner: &str, group_id: &str, after: u64) -> Value {
    json!({ "owner": owner, "group_id": group_id, "after": after })
}

/// The `seq`s and bytes of every message of a `sync` event, group by group.
fn messages_of(event: &StreamEvent) -> Vec<(String, u64, Vec<u8>)> {
    event
        .sync()
        .groups
        .into_iter()
        .flat_map(|g| {
            g.messages
                .into_iter()
                .map(move |m| (g.owner.clone(), m.seq, m.data.0))
        })
        .collect()
}

/// A post by `poster` into `alice/gid(1)` reaches `reader`'s open stream within 100 ms of its
/// acknowledgement.
async fn assert_a_post_is_pushed(reader: Client, poster: Client) {
    let mut stream = reader
        .stream(&json!({ "groups": [cursor("alice", &gid(1), 0)] }))
        .await;
    assert_eq!(stream.next().await.name, "ready", "nothing stored yet");
    for round in 0..3u8 {
        poster.post_message("alice", &gid(1), &[round]).await;
        let acked = Instant::now();
        let event = stream.next().await;
        let late = acked.elapsed();
        assert_eq!(
            messages_of(&event),
            vec![("alice".into(), u64::from(round) + 1, vec![round])]
        );
        assert!(
            late <= Duration::from_millis(100),
            "pushed {late:?} after the ack"
        );
    }
}

backend_tests! {
    async fn a_stream_sends_what_is_stored_then_ready_then_each_new_message(db: Db) {
        let relay = db.relay().await;
        let alice = relay.register("alice").await;
        let bob = relay.register("bob").await;
        alice.create_group(&gid(1), &["bob"]).await;
        alice.create_group(&gid(2), &["bob"]).await;
        for i in 1..=3u8 {
            alice.post_message("alice", &gid(1), &[i]).await;
        }
        let mut stream = bob
            .stream(&json!({ "groups": [cursor("alice", &gid(1), 1), cursor("alice", &gid(2), 0)] }))
            .await;
        let backlog = stream.next().await;
        assert_eq!(
            messages_of(&backlog),
            vec![("alice".into(), 2, vec![2]), ("alice".into(), 3, vec![3])],
            "after the cursor only"
        );
        let answer = backlog.sync();
        assert_eq!(answer.groups[0].next_after, 3);
        assert!(!answer.groups[0].more);
        assert_eq!(stream.next().await.name, "ready");
        stream.assert_quiet(Duration::from_millis(300)).await;
        alice.post_message("alice", &gid(2), b"x").await;
        let event = stream.next().await;
        assert_eq!(messages_of(&event), vec![("alice".into(), 1, b"x".to_vec())]);
        assert_eq!(event.sync().groups[0].group_id, gid(2));
    }

    async fn a_post_is_pushed_within_100_ms(db: Db) {
        let relay = db.relay().await;
        let alice = relay.register("alice").await;
        let bob = relay.register("bob").await;
        alice.create_group(&gid(1), &["bob"]).await;
        assert_a_post_is_pushed(bob, alice).await;
    }

    async fn the_limit_splits_a_backlog_into_events_in_order(db: Db) {
        let relay = db.relay().await;
        let alice = relay.register("alice").await;
        alice.create_group(&gid(1), &[]).await;
        for i in 1..=5u8 {
            alice.post_message("alice", &gid(1), &[i]).await;
        }
        let mut stream = alice
            .stream(&json!({ "groups": [cursor("alice", &gid(1), 0)], "limit": 2 }))
            .await;
        let mut seqs = Vec::new();
        let mut mores = Vec::new();
        loop {
            let event = stream.next().await;
            if event.name == "ready" {
                break;
            }
            let answer = event.sync();
            mores.push(answer.groups[0].more);
            seqs.extend(answer.groups[0].messages.iter().map(|m| m.seq));
        }
        assert_eq!(seqs, vec![1, 2, 3, 4, 5]);
        assert_eq!(mores, vec![true, true, false]);
    }

    async fn a_new_stream_from_the_last_cursors_resumes_without_loss_or_repeats(db: Db) {
        let relay = db.relay().await;
        let alice = relay.register("alice").await;
        let bob = relay.register("bob").await;
        alice.create_group(&gid(1), &["bob"]).await;
        alice.post_message("alice", &gid(1), b"1").await;
        alice.send_welcomes(&[("bob", b"w1")]).await;
        let request = json!({ "groups": [cursor("alice", &gid(1), 0)], "welcomes_after": 0 });
        let mut stream = bob.stream(&request).await;
        let first = stream.next().await.sync();
        assert_eq!(first.groups[0].next_after, 1);
        assert_eq!(first.welcomes.len(), 1);
        let welcomes_cursor = first.welcomes_next_after.unwrap();
        assert_eq!(stream.next().await.name, "ready");
        // The connection is lost; meanwhile more is stored.
        drop(stream);
        alice.post_message("alice", &gid(1), b"2").await;
        alice.post_message("alice", &gid(1), b"3").await;
        alice.send_welcomes(&[("bob", b"w2")]).await;
        let resumed = json!({
            "groups": [cursor("alice", &gid(1), first.groups[0].next_after)],
            "welcomes_after": welcomes_cursor,
        });
        let mut stream = bob.stream(&resumed).await;
        let event = stream.next().await;
        assert_eq!(
            messages_of(&event),
            vec![("alice".into(), 2, b"2".to_vec()), ("alice".into(), 3, b"3".to_vec())]
        );
        let welcomes = event.sync().welcomes;
        assert_eq!(welcomes.len(), 1);
        assert_eq!(welcomes[0].data.0, b"w2");
        assert_eq!(stream.next().await.name, "ready");
    }

    async fn welcomes_are_pushed_and_an_unread_inbox_is_not(db: Db) {
        let relay = db.relay().await;
        let alice = relay.register("alice").await;
        let bob = relay.register("bob").await;
        let carol = relay.register("carol").await;
        let mut with_inbox = bob.stream(&json!({ "welcomes_after": 0 })).await;
        let mut without = carol.stream(&json!({})).await;
        assert_eq!(with_inbox.next().await.name, "ready");
        assert_eq!(without.next().await.name, "ready");
        alice.send_welcomes(&[("bob", b"hello bob"), ("carol", b"hello carol")]).await;
        let event = with_inbox.next().await.sync();
        assert_eq!(event.welcomes.len(), 1);
        assert_eq!(event.welcomes[0].data.0, b"hello bob");
        assert_eq!(event.welcomes_next_after, Some(event.welcomes[0].id));
        without.assert_quiet(Duration::from_millis(300)).await;
    }

    async fn a_forbidden_group_is_reported_once(db: Db) {
        let relay = db.relay().await;
        let alice = relay.register("alice").await;
        let mallory = relay.register("mallory").await;
        alice.create_group(&gid(1), &[]).await;
        alice.create_group(&gid(2), &["mallory"]).await;
        let mut stream = mallory
            .stream(&json!({ "groups": [cursor("alice", &gid(1), 0), cursor("alice", &gid(2), 0)] }))
            .await;
        let first = stream.next().await.sync();
        assert_eq!(first.forbidden.len(), 1);
        assert_eq!(first.forbidden[0].group_id, gid(1));
        assert!(first.groups.is_empty());
        assert_eq!(stream.next().await.name, "ready");
        alice.post_message("alice", &gid(1), b"secret").await;
        alice.post_message("alice", &gid(2), b"for mallory").await;
        let event = stream.next().await;
        assert_eq!(messages_of(&event), vec![("alice".into(), 1, b"for mallory".to_vec())]);
        assert!(event.sync().forbidden.is_empty(), "reported once");
    }

    async fn shutdown_ends_a_stream_with_an_end_event(db: Db) {
        let relay = db.relay().await;
        let alice = relay.register("alice").await;
        let mut stream = alice.stream(&json!({ "welcomes_after": 0 })).await;
        assert_eq!(stream.next().await.name, "ready");
        let stopping = tokio::spawn(relay.stop());
        let end = stream.next().await;
        assert_eq!(end.name, "end");
        assert_eq!(end.data, json!({ "reason": "shutdown" }));
        assert!(stream.next_within(Duration::from_secs(5)).await.is_none(), "nothing after end");
        tokio::time::timeout(Duration::from_secs(10), stopping)
            .await
            .expect("the relay stops while a stream was open")
            .unwrap();
    }

    async fn a_client_over_its_waiting_cap_has_its_oldest_stream_replaced(db: Db) {
        let relay = db.start(&["--max-waiting-per-client", "1"]).await;
        let alice = relay.register("alice").await;
        let bob = relay.register("bob").await;
        alice.create_group(&gid(1), &["bob"]).await;
        let request = json!({ "groups": [cursor("alice", &gid(1), 0)] });
        let mut bobs = bob.stream(&request).await;
        assert_eq!(bobs.next().await.name, "ready");
        let mut old = alice.stream(&request).await;
        assert_eq!(old.next().await.name, "ready");
        let mut new = alice.stream(&request).await;
        let end = old.next().await;
        assert_eq!(end.name, "end");
        assert_eq!(end.data, json!({ "reason": "replaced" }));
        assert_eq!(new.next().await.name, "ready");
        // A long poll of alice's now replaces the new stream, and bob's is unaffected.
        let waiting = {
            let alice = alice.clone();
            tokio::spawn(async move {
                alice
                    .sync(&json!({ "groups": [cursor("alice", &gid(1), 0)], "wait_ms": 10_000 }))
                    .await
            })
        };
        assert_eq!(new.next().await.data, json!({ "reason": "replaced" }));
        alice.post_message("alice", &gid(1), b"m").await;
        assert_eq!(tokio::time::timeout(Duration::from_secs(5), waiting).await.unwrap().unwrap().groups.len(), 1);
        assert_eq!(messages_of(&bobs.next().await), vec![("alice".into(), 1, b"m".to_vec())]);
    }

    async fn beyond_the_relays_cap_a_stream_is_refused_with_503(db: Db) {
        let relay = db.start(&["--max-waiting", "1"]).await;
        let alice = relay.register("alice").await;
        let bob = relay.register("bob").await;
        let mut first = alice.stream(&json!({})).await;
        assert_eq!(first.next().await.name, "ready");
        let refused = bob.try_stream(&json!({})).await;
        assert_eq!(refused.headers()["retry-after"], "5");
        expect_problem(refused, StatusCode::SERVICE_UNAVAILABLE).await;
        let page = relay.get("/").send().await.unwrap().text().await.unwrap();
        assert!(page.contains("Push streams open: 1"), "{page}");
        drop(first);
        // The slot is freed once the relay notices the closed connection.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let resp = bob.try_stream(&json!({})).await;
            if resp.status() == StatusCode::OK {
                break;
            }
            assert!(Instant::now() < deadline, "the slot of a closed stream was never freed");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn a_bad_stream_request_is_400(db: Db) {
        let relay = db.relay().await;
        let alice = relay.register("alice").await;
        for body in [
            json!({ "wait_ms": 1000 }),
            json!({ "limit": 0 }),
            json!({ "limit": 5001 }),
            json!({ "groups": [cursor("Alice", &gid(1), 0)] }),
            json!([]),
        ] {
            expect_problem(alice.try_stream(&body).await, StatusCode::BAD_REQUEST).await;
        }
        let groups: Vec<Value> = (0..10_001u32).map(|i| cursor("alice", &format!("{i:08x}"), 0)).collect();
        expect_problem(alice.try_stream(&json!({ "groups": groups })).await, StatusCode::BAD_REQUEST).await;
        let anonymous = relay.post("/v1/stream").json(&json!({})).send().await.unwrap();
        expect_problem(anonymous, StatusCode::UNAUTHORIZED).await;
    }
}

/// Two relay processes on one PostgreSQL database: a post through one is pushed on a stream of
/// the other (LISTEN/NOTIFY). Only meaningful on PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_through_another_relay_process_is_pushed_on_postgres() {
    let Some(db) =
        Db::postgres("stream::a_post_through_another_relay_process_is_pushed_on_postgres").await
    else {
        return;
    };
    let first = db.relay().await;
    let second = db.relay().await;
    let alice = first.register("alice").await;
    let bob = first.register("bob").await;
    alice.create_group(&gid(1), &["bob"]).await;
    let alice_via_second = second.client("alice", &alice.token);
    assert_a_post_is_pushed(bob, alice_via_second).await;
}
