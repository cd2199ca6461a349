//! `POST` and `GET /v1/groups/{owner}/{group_id}/messages`: appending, reading by cursor,
//! idempotency, size limits and the access of members and dropped members.

use crate::common::*;
use dmls_api::{IDEMPOTENCY_KEY_HEADER, PostMessageResponse};
use reqwest::StatusCode;
use serde_json::json;

fn messages_path(owner: &str, group_id: &str) -> String {
    format!("{}/messages", group_path(owner, group_id))
}

backend_tests! {
    async fn raw_messages_get_increasing_seqs_from_1(db: Db) {
        let relay = db.relay().await;
        let alice = relay.register("alice").await;
        alice.create_group(&gid(1), &[]).await;
        for expected in 1..=3 {
            assert_eq!(alice.post_message("alice", &gid(1), &[expected as u8]).await, expected);
        }
        assert_eq!(alice.group("alice", &gid(1)).await.last_seq, 3);
    }

    async fn stored_messages_read_back_with_sender_data_and_time(db: Db) {
        let relay = db.relay().await;
        let alice = relay.register("alice").await;
        let bob = relay.register("bob").await;
        alice.create_group(&gid(1), &["bob"]).await;
        let payload: Vec<u8> = (0..=255).collect();
        alice.post_message("alice", &gid(1), &payload).await;
        bob.post_message("alice", &gid(1), b"from bob").await;
        let page = bob.messages("alice", &gid(1), 0, None).await;
        assert_eq!(page.messages.len(), 2);
        assert_eq!((page.messages[0].seq, page.messages[0].sender.as_str()), (1, "alice"));
        assert_eq!(page.messages[0].data.0, payload);
        assert_eq!((page.messages[1].seq, page.messages[1].sender.as_str()), (2, "bob"));
        assert_eq!(page.messages[1].data.0, b"from bob");
        assert!(page.messages.iter().all(|m| m.received_at > 0));
        assert_eq!((page.next_after, page.more), (2, false));
    }

    async fn a_json_message_is_stored_as_its_decoded_bytes(db: Db) {
        let relay = db.relay().await;
        let alice = relay.register("alice").await;
        alice.create_group(&gid(1), &[]).await;
        let resp = alice.post(&messages_path("alice", &gid(1))).json(&json!({ "data": b64(b"\x00json\xff") })).send().await.unwrap();
        let r: PostMessageResponse = ok_json(resp, StatusCode::CREATED).await;
        assert_eq!(r.seq, 1);
        assert_eq!(alice.messages("alice", &gid(1), 0, None).await.messages[0].data.0, b"\x00json\xff");
    }

    async fn posting_to_an_unknown_group_is_404(db: Db) {
        let relay = db.relay().await;
        let alice = relay.register("alice").await;
        expect_problem(alice.try_post("alice", &gid(9), b"m").await, StatusCode::NOT_FOUND).await;
        expect_problem(alice.get(&group_path("alice", &gid(9))).send().await.unwrap(), StatusCode::NOT_FOUND).await;
    }

    async fn reading_messages_of_an_unknown_group_is_404(db: Db) {
        let relay = db.relay().await;
        let alice = relay.register("alice").await;
        expect_problem(alice.try_messages("alice", &gid(9), 0, None).await, StatusCode::NOT_FOUND).await;
    }

    async fn a_non_member_cannot_post_and_nothing_is_stored(db: Db) {
        let relay = db.relay().await;
        let alice = relay.register("alice").await;
        let eve = relay.register("eve").await;
        alice.create_group(&gid(1), &[]).await;
        let resp = eve.try_post("alice", &gid(1), b"spam").await;
        let status = resp.status();
        assert!(status == StatusCode::FORBIDDEN || status == StatusCode::NOT_FOUND, "got {status}");
        expect_problem(resp, status).await;
        assert_eq!(alice.group("alice", &gid(1)).await.last_seq, 0);
    }

    async fn a_non_member_cannot_read_messages(db: Db) {
        let relay = db.relay().await;
        let alice = relay.register("alice").await;
        let eve = relay.register("eve").await;
        alice.create_group(&gid(1), &[]).await;
        alice.post_message("alice", &gid(1), b"secret").await;
        let resp = eve.try_messages("alice", &gid(1), 0, None).await;
        let status = resp.status();
        assert!(status == StatusCode::FORBIDDEN || status == StatusCode::NOT_FOUND, "got {status}");
        expect_problem(resp, status).await;
    }

    async fn a_retry_with_the_same_idempotency_key_and_body_returns_the_first_seq_with_200(db: Db) {
        let relay = db.relay().await;
        let alice = relay.register("alice").await;
        alice.create_group(&gid(1), &[]).await;
        let post = || {
            alice
                .post(&messages_path("alice", &gid(1)))
                .header(IDEMPOTENCY_KEY_HEADER, "retry-1")
                .header("content-type", "application/octet-stream")
                .body(b"commit".to_vec())
        };
        let first: PostMessageResponse = ok_json(post().send().await.unwrap(), StatusCode::CREATED).await;
        let again: PostMessageResponse = ok_json(post().send().await.unwrap(), StatusCode::OK).await;
        assert_eq!(first.seq, again.seq);
        assert_eq!(alice.group("alice", &gid(1)).await.last_seq, 1);
        assert_eq!(alice.messages("alice", &gid(1), 0, None).await.messages.len(), 1);
    }

    async fn the_same_idempotency_key_with_another_body_is_409_and_stores_nothing(db: Db) {
        let relay = db.relay().await;
        let alice = relay.register("alice").await;
        alice.create_group(&gid(1), &[]).await;
        let post = |body: &'static [u8]| {
            alice
                .post(&messages_path("alice", &gid(1)))
                .header(IDEMPOTENCY_KEY_HEADER, "retry-1")
                .header("content-type", "application/octet-stream")
                .body(body)
        };
        assert_eq!(post(b"first").send().await.unwrap().status(), StatusCode::CREATED);
        expect_problem(post(b"second").send().await.unwrap(), StatusCode::CONFLICT).await;
        assert_eq!(alice.group("alice", &gid(1)).await.last_seq, 1);
    }

    async fn idempotency_keys_are_scoped_to_the_sender(db: Db) {
        let relay = db.relay().await;
        let alice = relay.register("alice").await;
        let bob = relay.register("bob").await;
        alice.create_group(&gid(1), &["bob"]).await;
        for client in [&alice, &bob] {
            let resp = client
                .post(&messages_path("alice", &gid(1)))
                .header(IDEMPOTENCY_KEY_HEADER, "same-key")
                .header("content-type", "application/octet-stream")
                .body(b"same body".to_vec())
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::CREATED, "{}", client.id);
        }
        assert_eq!(alice.group("alice", &gid(1)).await.last_seq, 2);
    }

    async fn idempotency_keys_are_scoped_to_the_group(db: Db) {
        let relay = db.relay().await;
        let alice = relay.register("alice").await;
        alice.create_group(&gid(1), &[]).await;
        alice.create_group(&gid(2), &[]).await;
        for g in [gid(1), gid(2)] {
            let resp = alice
                .post(&messages_path("alice", &g))
                .header(IDEMPOTENCY_KEY_HEADER, "same-key")
                .header("content-type", "application/octet-stream")
                .body(b"same body".to_vec())
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::CREATED);
        }
    }

    async fn an_invalid_idempotency_key_is_400_and_stores_nothing(db: Db) {
        let relay = db.relay().await;
        let alice = relay.register("alice").await;
        alice.create_group(&gid(1), &[]).await;
        let too_long = "k".repeat(65);
        for key in ["", "has space", too_long.as_str()] {
            let resp = alice
                .post(&messages_path("alice", &gid(1)))
                .header(IDEMPOTENCY_KEY_HEADER, key)
                .header("content-type", "application/octet-stream")
                .body(b"m".to_vec())
                .send()
                .await
                .unwrap();
            expect_problem(resp, StatusCode::BAD_REQUEST).await;
        }
        assert_eq!(alice.group("alice", &gid(1)).await.last_seq, 0);
    }

    async fn a_message_above_the_size_limit_is_413_and_stores_nothing(db: Db) {
        let relay = db.start(&["--max-message-bytes", "1024"]).await;
        let alice = relay.register("alice").await;
        alice.create_group(&gid(1), &[]).await;
        expect_problem(alice.try_post("alice", &gid(1), &[0u8; 1025]).await, StatusCode::PAYLOAD_TOO_LARGE).await;
        let json_body = json!({ "data": b64(&[0u8; 1025]) });
        let resp = alice.post(&messages_path("alice", &gid(1))).json(&json_body).send().await.unwrap();
        expect_problem(resp, StatusCode::PAYLOAD_TOO_LARGE).await;
        assert_eq!(alice.group("alice", &gid(1)).await.last_seq, 0);
        assert_eq!(alice.post_message("alice", &gid(1), &[0u8; 1024]).await, 1);
    }

    async fn messages_page_with_after_limit_next_after_and_more(db: Db) {
        let relay = db.relay().await;
        let alice = relay.register("alice").await;
        alice.create_group(&gid(1), &[]).await;
        for i in 1..=5u8 {
            alice.post_message("alice", &gid(1), &[i]).await;
        }
        let first = alice.messages("alice", &gid(1), 0, Some(2)).await;
        assert_eq!(first.messages.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!((first.next_after, first.more), (2, true));
        let middle = alice.messages("alice", &gid(1), 2, Some(2)).await;
        assert_eq!(middle.messages.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![3, 4]);
        assert_eq!((middle.next_after, middle.more), (4, true));
        let last = alice.messages("alice", &gid(1), 4, Some(2)).await;
        assert_eq!(last.messages.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![5]);
        assert_eq!((last.next_after, last.more), (5, false));
        let beyond = alice.messages("alice", &gid(1), 5, Some(2)).await;
        assert!(beyond.messages.is_empty());
        assert_eq!((beyond.next_after, beyond.more), (5, false));
    }

    async fn the_page_limit_defaults_to_100(db: Db) {
        let relay = db.relay().await;
        let alice = relay.register("alice").await;
        alice.create_group(&gid(1), &[]).await;
        for i in 0..101u8 {
            alice.post_message("alice", &gid(1), &[i]).await;
        }
        let page = alice.messages("alice", &gid(1), 0, None).await;
        assert_eq!(page.messages.len(), 100);
        assert_eq!((page.next_after, page.more), (100, true));
    }

    async fn a_dropped_member_reads_up_to_the_cut_off_only(db: Db) {
        let relay = db.relay().await;
        let alice = relay.register("alice").await;
        let bob = relay.register("bob").await;
        alice.create_group(&gid(1), &["bob"]).await;
        bob.post_message("alice", &gid(1), b"bob's update").await;
        alice.post_message("alice", &gid(1), b"commit removing bob").await;
        alice.set_members(&gid(1), &[]).await;
        alice.post_message("alice", &gid(1), b"after bob left").await;
        let page = bob.messages("alice", &gid(1), 0, None).await;
        assert_eq!(page.messages.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![1, 2]);
        assert!(!page.more);
        let later = bob.try_messages("alice", &gid(1), 2, None).await;
        if later.status() == StatusCode::OK {
            let page: dmls_api::MessagesPage = later.json().await.unwrap();
            assert!(page.messages.is_empty(), "{page:?}");
        } else {
            let status = later.status();
            assert!(status == StatusCode::FORBIDDEN || status == StatusCode::NOT_FOUND, "got {status}");
        }
    }

    async fn a_dropped_member_cannot_post(db: Db) {
        let relay = db.relay().await;
        let alice = relay.register("alice").await;
        let bob = relay.register("bob").await;
        alice.create_group(&gid(1), &["bob"]).await;
        alice.set_members(&gid(1), &[]).await;
        expect_problem(bob.try_post("alice", &gid(1), b"late").await, StatusCode::FORBIDDEN).await;
        assert_eq!(alice.group("alice", &gid(1)).await.last_seq, 0);
    }

    async fn a_re_added_member_reads_everything_again(db: Db) {
        let relay = db.relay().await;
        let alice = relay.register("alice").await;
        let bob = relay.register("bob").await;
        alice.create_group(&gid(1), &["bob"]).await;
        alice.set_members(&gid(1), &[]).await;
        alice.post_message("alice", &gid(1), b"while bob was out").await;
        alice.set_members(&gid(1), &["bob"]).await;
        assert_eq!(bob.all_seqs("alice", &gid(1)).await, vec![1]);
        assert_eq!(bob.post_message("alice", &gid(1), b"back").await, 2);
    }
}
