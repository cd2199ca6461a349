//! `POST /v1/clients`, `GET /v1/clients/me`, `DELETE /v1/clients/me`.

use crate::common::*;
use dmls_api::RegisterResponse;
use reqwest::StatusCode;

backend_tests! {
    async fn registration_returns_the_id_and_a_token(db: Db) {
        let relay = db.relay().await;
        let resp = relay.try_register("alice").await;
        assert_eq!(resp.status(), StatusCode::CREATED);
        let body: RegisterResponse = resp.json().await.unwrap();
        assert_eq!(body.client_id, "alice");
        assert!(body.token.len() >= 32, "token {} is too short for 32 random bytes", body.token.len());
    }

    async fn the_registration_token_authenticates_the_client(db: Db) {
        let relay = db.relay().await;
        let alice = relay.register("alice").await;
        assert_eq!(alice.me().await.client_id, "alice");
    }

    async fn tokens_differ_between_clients(db: Db) {
        let relay = db.relay().await;
        let alice = relay.register("alice").await;
        let bob = relay.register("bob").await;
        assert_ne!(alice.token, bob.token);
        assert_eq!(bob.me().await.client_id, "bob");
    }

    async fn registering_a_taken_id_is_409_and_keeps_the_first_token(db: Db) {
        let relay = db.relay().await;
        let alice = relay.register("alice").await;
        expect_problem(relay.try_register("alice").await, StatusCode::CONFLICT).await;
        assert_eq!(alice.me().await.client_id, "alice");
    }

    async fn registering_an_invalid_id_is_400(db: Db) {
        let relay = db.relay().await;
        let too_long = "a".repeat(65);
        for id in ["", "Alice", "a/b", "a b", "ünï", "a:b", too_long.as_str()] {
            expect_problem(relay.try_register(id).await, StatusCode::BAD_REQUEST).await;
        }
        // The longest and the most varied valid ids are accepted.
        relay.register(&"a".repeat(64)).await;
        relay.register("a.b_c-9").await;
    }

    async fn token_mode_registration_without_a_bearer_is_401(db: Db) {
        let relay = db.start(&["--registration", "token", "--registration-token", "operator-secret"]).await;
        expect_problem(relay.try_register("alice").await, StatusCode::UNAUTHORIZED).await;
        // Nothing was registered: the id is still free with the right token.
        let resp = relay
            .post("/v1/clients")
            .bearer_auth("operator-secret")
            .json(&serde_json::json!({ "client_id": "alice" }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED);
    }

    async fn token_mode_registration_with_a_wrong_token_is_403(db: Db) {
        let relay = db.start(&["--registration", "token", "--registration-token", "operator-secret"]).await;
        let resp = relay
            .post("/v1/clients")
            .bearer_auth("not-the-secret")
            .json(&serde_json::json!({ "client_id": "alice" }))
            .send()
            .await
            .unwrap();
        expect_problem(resp, StatusCode::FORBIDDEN).await;
    }

    async fn token_mode_registration_with_the_operator_token_succeeds(db: Db) {
        let relay = db.start(&["--registration", "token", "--registration-token", "operator-secret"]).await;
        let resp = relay
            .post("/v1/clients")
            .bearer_auth("operator-secret")
            .json(&serde_json::json!({ "client_id": "alice" }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED);
        let body: RegisterResponse = resp.json().await.unwrap();
        let alice = relay.client("alice", &body.token);
        assert_eq!(alice.me().await.client_id, "alice");
    }

    async fn me_describes_a_new_client(db: Db) {
        let relay = db.relay().await;
        let before = now_millis();
        let alice = relay.register("alice").await;
        let me = alice.me().await;
        assert_eq!(me.client_id, "alice");
        assert_eq!(me.key_packages_available, 0);
        assert!(!me.has_last_resort);
        // The default stock limit, so that clients size their uploads to it.
        assert_eq!(me.max_key_packages, 1000);
        assert!((before - 5_000..=now_millis() + 5_000).contains(&me.created_at), "created_at {}", me.created_at);
    }

    async fn me_counts_key_packages_and_the_last_resort(db: Db) {
        let relay = db.relay().await;
        let alice = relay.register("alice").await;
        alice.upload(&[b"kp1", b"kp2"], Some(b"lr")).await;
        let me = alice.me().await;
        assert_eq!(me.key_packages_available, 2);
        assert!(me.has_last_resort);
    }

    async fn me_without_a_token_is_401(db: Db) {
        let relay = db.relay().await;
        relay.register("alice").await;
        expect_problem(relay.get("/v1/clients/me").send().await.unwrap(), StatusCode::UNAUTHORIZED).await;
    }

    async fn deleting_me_is_204_and_the_token_stops_working(db: Db) {
        let relay = db.relay().await;
        let alice = relay.register("alice").await;
        let resp = alice.delete("/v1/clients/me").send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
        expect_problem(alice.get("/v1/clients/me").send().await.unwrap(), StatusCode::UNAUTHORIZED).await;
    }

    async fn deleting_me_removes_my_key_packages(db: Db) {
        let relay = db.relay().await;
        let alice = relay.register("alice").await;
        let bob = relay.register("bob").await;
        alice.upload(&[b"kp1"], Some(b"lr")).await;
        alice.delete("/v1/clients/me").send().await.unwrap();
        let problem = expect_problem(bob.try_claim(&["alice"]).await, StatusCode::NOT_FOUND).await;
        assert!(problem.detail.contains("alice"), "{problem:?}");
        // A new client under the same id starts with nothing.
        let alice_again = relay.register("alice").await;
        let me = alice_again.me().await;
        assert_eq!((me.key_packages_available, me.has_last_resort), (0, false));
        assert_eq!(bob.claim(&["alice"]).await.missing, vec!["alice".to_string()]);
    }

    async fn deleting_me_empties_my_inbox(db: Db) {
        let relay = db.relay().await;
        let alice = relay.register("alice").await;
        let bob = relay.register("bob").await;
        bob.send_welcomes(&[("alice", b"welcome")]).await;
        alice.delete("/v1/clients/me").send().await.unwrap();
        let alice_again = relay.register("alice").await;
        assert!(alice_again.inbox().await.is_empty());
    }

    async fn deleting_me_deletes_the_groups_i_own(db: Db) {
        let relay = db.relay().await;
        let alice = relay.register("alice").await;
        let bob = relay.register("bob").await;
        alice.create_group(&gid(1), &["bob"]).await;
        alice.post_message("alice", &gid(1), b"hello").await;
        alice.delete("/v1/clients/me").send().await.unwrap();
        expect_problem(bob.get(&group_path("alice", &gid(1))).send().await.unwrap(), StatusCode::NOT_FOUND).await;
        expect_problem(bob.try_messages("alice", &gid(1), 0, None).await, StatusCode::NOT_FOUND).await;
        // A new alice does not inherit the old group.
        let alice_again = relay.register("alice").await;
        expect_problem(
            alice_again.get(&group_path("alice", &gid(1))).send().await.unwrap(),
            StatusCode::NOT_FOUND,
        )
        .await;
    }

    async fn deleting_me_drops_me_from_others_groups(db: Db) {
        let relay = db.relay().await;
        let alice = relay.register("alice").await;
        let bob = relay.register("bob").await;
        alice.create_group(&gid(1), &["bob"]).await;
        bob.delete("/v1/clients/me").send().await.unwrap();
        let group = alice.group("alice", &gid(1)).await;
        assert!(!group.members.contains(&"bob".to_string()), "{group:?}");
        // A new client under the same id is not a member.
        let bob_again = relay.register("bob").await;
        assert!(!bob_again.try_post("alice", &gid(1), b"hi").await.status().is_success());
    }
}

fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}
