//! `POST /v1/welcomes`, `GET /v1/welcomes`, `DELETE /v1/welcomes`: the per-client inbox.

use crate::common::*;
use reqwest::StatusCode;

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
}
