//! `POST /v1/welcomes`, `GET /v1/welcomes`, `DELETE /v1/welcomes`: the per-client inbox.

use std::time::{Duration, Instant};

use crate::common::*;
use reqwest::Response;
use reqwest::StatusCode;
use serde_json::{Value, json};

/// Posts `{"welcomes": items}` as given.
async fn try_post_items(client: &Client, items: Value) -> Response {
    client
        .post("/v1/welcomes")
        .json(&json!({ "welcomes": items }))
        .send()
        .await
        .unwrap()
}

/// Posts welcomes (expecting 201); returns their ids.
async fn post_items(client: &Client, items: Value) -> Vec<u64> {
    let r: dmls_api::PostWelcomesResponse =
        ok_json(try_post_items(client, items).await, StatusCode::CREATED).await;
    r.ids
}

backend_tests! {
    async fn posted_welcomes_land_in_the_recipients_inboxes(db: Db) {
        let relay = db.relay().await;
        let alice = relay.register("alice").await;
        let bob = relay.register("bob").await;
        let carol = relay.register("carol").await;
        let ids = alice.send_welcomes(&[("bob", b"w-bob"), ("carol", b"w-carol")]).await;
        assert_eq!(ids.len(), 2);
        assert_eq!(bob.inbox().await, vec![(ids[0], "alice".to_string(), b"w-bob".to_vec())]);
        assert_eq!(carol.inbox().await, vec![(ids[1], "alice".to_string(), b"w-carol".to_vec())]);
        let page = bob.welcomes(0, None).await;
        assert!(page.welcomes[0].received_at > 0);
    }

    async fn a_welcome_to_an_unknown_client_is_404_naming_it_and_nothing_is_stored(db: Db) {
        let relay = db.relay().await;
        let alice = relay.register("alice").await;
        let bob = relay.register("bob").await;
        let resp = alice.try_send_welcomes(&[("bob", b"w1"), ("nobody", b"w2")]).await;
        let problem = expect_problem(resp, StatusCode::NOT_FOUND).await;
        assert!(problem.detail.contains("nobody"), "{problem:?}");
        assert!(bob.inbox().await.is_empty());
    }

    async fn inbox_ids_increase(db: Db) {
        let relay = db.relay().await;
        let alice = relay.register("alice").await;
        let bob = relay.register("bob").await;
        for i in 0..5u8 {
            alice.send_welcomes(&[("bob", &[i])]).await;
        }
        let ids: Vec<u64> = bob.inbox().await.iter().map(|w| w.0).collect();
        assert_eq!(ids.len(), 5);
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
        let data: Vec<Vec<u8>> = bob.inbox().await.into_iter().map(|w| w.2).collect();
        assert_eq!(data, (0..5u8).map(|i| vec![i]).collect::<Vec<_>>());
    }

    async fn the_inbox_pages_with_after_and_limit(db: Db) {
        let relay = db.relay().await;
        let alice = relay.register("alice").await;
        let bob = relay.register("bob").await;
        for i in 0..5u8 {
            alice.send_welcomes(&[("bob", &[i])]).await;
        }
        let first = bob.welcomes(0, Some(2)).await;
        assert_eq!(first.welcomes.len(), 2);
        assert!(first.more);
        assert_eq!(first.next_after, first.welcomes[1].id);
        let second = bob.welcomes(first.next_after, Some(2)).await;
        assert_eq!(second.welcomes.iter().map(|w| w.data.0[0]).collect::<Vec<_>>(), vec![2, 3]);
        assert!(second.more);
        let third = bob.welcomes(second.next_after, Some(2)).await;
        assert_eq!(third.welcomes.len(), 1);
        assert!(!third.more);
        let past_the_end = bob.welcomes(third.next_after, Some(2)).await;
        assert!(past_the_end.welcomes.is_empty());
        assert!(!past_the_end.more);
        assert_eq!(past_the_end.next_after, third.next_after);
    }

    async fn a_client_reads_only_its_own_inbox(db: Db) {
        let relay = db.relay().await;
        let alice = relay.register("alice").await;
        let bob = relay.register("bob").await;
        let carol = relay.register("carol").await;
        alice.send_welcomes(&[("bob", b"for bob")]).await;
        assert!(carol.inbox().await.is_empty());
        assert!(alice.inbox().await.is_empty());
        assert_eq!(bob.inbox().await.len(), 1);
    }

    async fn delete_upto_drops_welcomes_up_to_that_id(db: Db) {
        let relay = db.relay().await;
        let alice = relay.register("alice").await;
        let bob = relay.register("bob").await;
        let ids = alice.send_welcomes(&[("bob", b"1"), ("bob", b"2"), ("bob", b"3")]).await;
        let resp = bob.delete(&format!("/v1/welcomes?upto={}", ids[1])).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
        assert_eq!(bob.inbox().await, vec![(ids[2], "alice".to_string(), b"3".to_vec())]);
    }

    async fn delete_upto_touches_only_the_callers_inbox(db: Db) {
        let relay = db.relay().await;
        let alice = relay.register("alice").await;
        let bob = relay.register("bob").await;
        let carol = relay.register("carol").await;
        alice.send_welcomes(&[("bob", b"b"), ("carol", b"c")]).await;
        let resp = carol.delete(&format!("/v1/welcomes?upto={}", u32::MAX)).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
        assert!(carol.inbox().await.is_empty());
        assert_eq!(bob.inbox().await.len(), 1);
    }

    async fn a_welcome_above_the_size_limit_is_413_and_nothing_is_stored(db: Db) {
        let relay = db.start(&["--max-welcome-bytes", "100"]).await;
        let alice = relay.register("alice").await;
        let bob = relay.register("bob").await;
        let big = vec![1u8; 101];
        expect_problem(alice.try_send_welcomes(&[("bob", b"ok"), ("bob", &big)]).await, StatusCode::PAYLOAD_TOO_LARGE)
            .await;
        assert!(bob.inbox().await.is_empty());
    }

    async fn posting_more_than_1000_welcomes_is_400_and_nothing_is_stored(db: Db) {
        let relay = db.relay().await;
        let alice = relay.register("alice").await;
        let bob = relay.register("bob").await;
        let many: Vec<(&str, &[u8])> = std::iter::repeat_n(("bob", b"w".as_slice()), 1001).collect();
        expect_problem(alice.try_send_welcomes(&many).await, StatusCode::BAD_REQUEST).await;
        assert!(bob.inbox().await.is_empty());
    }

    async fn a_to_all_welcome_reaches_every_recipient_with_the_same_bytes_and_ids_in_order(db: Db) {
        let relay = db.relay().await;
        let alice = relay.register("alice").await;
        let mut inboxes = Vec::new();
        for who in ["bob", "carol", "dave", "erin"] {
            inboxes.push(relay.register(who).await);
        }
        let ids = post_items(
            &alice,
            json!([
                { "to": "erin", "data": b64(b"for erin") },
                { "to_all": ["bob", "carol", "dave"], "data": b64(b"for all") },
            ]),
        )
        .await;
        assert_eq!(ids.len(), 4, "one id per recipient");
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
        let [bob, carol, dave, erin] = inboxes.as_slice() else { unreachable!() };
        assert_eq!(erin.inbox().await, vec![(ids[0], "alice".to_string(), b"for erin".to_vec())]);
        for (i, who) in [bob, carol, dave].into_iter().enumerate() {
            assert_eq!(who.inbox().await, vec![(ids[i + 1], "alice".to_string(), b"for all".to_vec())]);
        }
        // `sync` reads it too, and one recipient's delete leaves it to the others.
        let answer = carol.sync(&json!({ "welcomes_after": 0 })).await;
        assert_eq!(answer.welcomes.len(), 1);
        assert_eq!((answer.welcomes[0].id, answer.welcomes[0].data.0.as_slice()), (ids[2], b"for all".as_slice()));
        let resp = bob.delete(&format!("/v1/welcomes?upto={}", ids[1])).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
        assert!(bob.inbox().await.is_empty());
        assert_eq!(carol.inbox().await, vec![(ids[2], "alice".to_string(), b"for all".to_vec())]);
        assert_eq!(dave.inbox().await.len(), 1);
    }

    async fn a_to_all_welcome_naming_an_unknown_client_is_404_and_nothing_is_stored(db: Db) {
        let relay = db.relay().await;
        let alice = relay.register("alice").await;
        let bob = relay.register("bob").await;
        let resp = try_post_items(
            &alice,
            json!([
                { "to": "bob", "data": b64(b"w1") },
                { "to_all": ["bob", "nobody"], "data": b64(b"w2") },
            ]),
        )
        .await;
        let problem = expect_problem(resp, StatusCode::NOT_FOUND).await;
        assert!(problem.detail.contains("nobody"), "{problem:?}");
        assert!(bob.inbox().await.is_empty());
    }

    async fn a_welcome_needs_exactly_one_of_to_and_to_all_with_distinct_valid_ids(db: Db) {
        let relay = db.relay().await;
        let alice = relay.register("alice").await;
        let bob = relay.register("bob").await;
        let data = b64(b"w");
        let thousand: Vec<String> = (0..1000).map(|i| format!("c{i}")).collect();
        let thousand_and_one: Vec<String> = (0..1001).map(|i| format!("c{i}")).collect();
        for (items, says) in [
            (json!([{ "to": "bob", "to_all": ["bob"], "data": data }]), "not both"),
            (json!([{ "data": data }]), "`to` or `to_all`"),
            (json!([{ "to_all": [], "data": data }]), "no recipient"),
            (json!([{ "to_all": ["bob", "carol", "bob"], "data": data }]), "\"bob\" more than once"),
            (json!([{ "to_all": ["bob", "Bob"], "data": data }]), "invalid recipient \"Bob\""),
            (json!([{ "to_all": ["bob"], "data": "" }]), "empty"),
            (json!([{ "to_all": thousand_and_one, "data": data }]), "at most 1000"),
            (json!([{ "to": "bob", "data": data }, { "to_all": thousand, "data": data }]), "at most 1000"),
        ] {
            let problem = expect_problem(try_post_items(&alice, items.clone()).await, StatusCode::BAD_REQUEST).await;
            assert!(problem.detail.contains(says), "{items}: {problem:?}");
        }
        assert!(bob.inbox().await.is_empty());
    }

    async fn the_size_limit_applies_to_a_to_all_welcomes_data(db: Db) {
        let relay = db.start(&["--max-welcome-bytes", "100"]).await;
        let alice = relay.register("alice").await;
        let bob = relay.register("bob").await;
        relay.register("carol").await;
        let resp = try_post_items(&alice, json!([{ "to_all": ["bob", "carol"], "data": b64(&[1u8; 101]) }])).await;
        expect_problem(resp, StatusCode::PAYLOAD_TOO_LARGE).await;
        // 100 bytes to two recipients: each welcome is within the limit.
        post_items(&alice, json!([{ "to_all": ["bob", "carol"], "data": b64(&[1u8; 100]) }])).await;
        assert_eq!(bob.inbox().await.len(), 1);
    }

    async fn a_to_all_welcome_wakes_the_long_poll_of_every_recipient(db: Db) {
        let relay = db.relay().await;
        let alice = relay.register("alice").await;
        let mut waits = Vec::new();
        for who in ["bob", "carol"] {
            let waiter = relay.register(who).await;
            waits.push(tokio::spawn(async move { waiter.sync(&json!({ "welcomes_after": 0, "wait_ms": 10_000 })).await }));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(waits.iter().all(|w| !w.is_finished()));
        let started = Instant::now();
        post_items(&alice, json!([{ "to_all": ["bob", "carol"], "data": b64(b"join us") }])).await;
        for wait in waits {
            let answer = tokio::time::timeout(Duration::from_secs(5), wait).await.expect("waiter woke").unwrap();
            assert_eq!(answer.welcomes.len(), 1);
        }
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    async fn the_daily_quota_counts_a_to_all_welcome_per_recipient_and_its_bytes_once(db: Db) {
        let relay = db.start(&["--daily-message-quota", "4", "--daily-byte-quota", "10"]).await;
        let alice = relay.register("alice").await;
        for who in ["bob", "carol", "dave"] {
            relay.register(who).await;
        }
        // 3 welcomes of 8 bytes stored once: 3 of 4 welcomes, 8 of 10 bytes.
        post_items(&alice, json!([{ "to_all": ["bob", "carol", "dave"], "data": b64(b"12345678") }])).await;
        // Two more welcomes (of 1 byte) would make 5.
        let resp = try_post_items(&alice, json!([{ "to_all": ["bob", "carol"], "data": b64(b"1") }])).await;
        expect_problem(resp, StatusCode::TOO_MANY_REQUESTS).await;
        // 3 more bytes would make 11.
        let resp = try_post_items(&alice, json!([{ "to": "bob", "data": b64(b"123") }])).await;
        expect_problem(resp, StatusCode::TOO_MANY_REQUESTS).await;
        post_items(&alice, json!([{ "to": "bob", "data": b64(b"12") }])).await;
    }
}
