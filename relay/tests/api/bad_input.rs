//! A malformed or unauthorised request never gets a 5xx and never changes state: each test sends
//! one kind of bad input, checks the RFC 9457 answer, then checks that nothing changed.

use crate::common::*;
use reqwest::StatusCode;
use serde_json::json;

const JSON: &str = "application/json";

fn messages_path(owner: &str, group_id: &str) -> String {
    format!("{}/messages", group_path(owner, group_id))
}

/// A relay with alice (one key package, a last resort, one group with bob and one message) and
/// bob (one welcome from alice): the state the tests below must leave as it is.
async fn populated(db: &Db) -> (Relay, Client, Client) {
    let relay = db.relay().await;
    let alice = relay.register("alice").await;
    let bob = relay.register("bob").await;
    alice.upload(&[b"kp1"], Some(b"lr")).await;
    alice.create_group(&gid(1), &["bob"]).await;
    alice.post_message("alice", &gid(1), b"m1").await;
    alice.send_welcomes(&[("bob", b"w1")]).await;
    (relay, alice, bob)
}

/// Asserts that the state made by [`populated`] is unchanged.
async fn assert_unchanged(alice: &Client, bob: &Client) {
    let me = alice.me().await;
    assert_eq!(
        (me.key_packages_available, me.has_last_resort),
        (1, true),
        "alice's key packages"
    );
    let group = alice.group("alice", &gid(1)).await;
    assert_eq!(
        (group.last_seq, group.members.clone()),
        (1, vec!["bob".to_string()]),
        "alice's group"
    );
    assert_eq!(alice.all_seqs("alice", &gid(1)).await, vec![1]);
    let inbox = bob.inbox().await;
    assert_eq!(
        inbox.iter().map(|w| w.2.clone()).collect::<Vec<_>>(),
        vec![b"w1".to_vec()],
        "bob's inbox"
    );
    assert!(alice.inbox().await.is_empty(), "alice's inbox");
    assert_eq!(
        bob.me().await.key_packages_available,
        0,
        "bob's key packages"
    );
}

backend_tests! {
    async fn malformed_json_in_a_registration_is_400_and_registers_nobody(db: Db) {
        let (relay, alice, bob) = populated(&db).await;
        let resp = relay.post("/v1/clients").header("content-type", JSON).body(r#"{"client_id": "carol""#).send().await.unwrap();
        expect_problem(resp, StatusCode::BAD_REQUEST).await;
        relay.register("carol").await;
        assert_unchanged(&alice, &bob).await;
    }

    async fn a_registration_with_a_wrongly_typed_field_is_400(db: Db) {
        let (relay, alice, bob) = populated(&db).await;
        let resp = relay.post("/v1/clients").json(&json!({ "client_id": 42 })).send().await.unwrap();
        expect_problem(resp, StatusCode::BAD_REQUEST).await;
        assert_unchanged(&alice, &bob).await;
    }

    async fn a_registration_with_an_unknown_field_is_400(db: Db) {
        let (relay, alice, bob) = populated(&db).await;
        let resp = relay.post("/v1/clients").json(&json!({ "client_id": "carol", "admin": true })).send().await.unwrap();
        expect_problem(resp, StatusCode::BAD_REQUEST).await;
        relay.register("carol").await;
        assert_unchanged(&alice, &bob).await;
    }

    async fn malformed_json_in_a_key_package_upload_is_400(db: Db) {
        let (_relay, alice, bob) = populated(&db).await;
        let resp = alice.post("/v1/key-packages").header("content-type", JSON).body("{\"key_packages\": [").send().await.unwrap();
        expect_problem(resp, StatusCode::BAD_REQUEST).await;
        assert_unchanged(&alice, &bob).await;
    }

    async fn a_json_body_without_a_content_type_is_refused(db: Db) {
        let (_relay, alice, bob) = populated(&db).await;
        let resp = alice.post("/v1/key-packages").body(json!({ "key_packages": [b64(b"kp")] }).to_string()).send().await.unwrap();
        let status = resp.status();
        assert!(status == StatusCode::BAD_REQUEST || status == StatusCode::UNSUPPORTED_MEDIA_TYPE, "got {status}");
        expect_problem(resp, status).await;
        assert_unchanged(&alice, &bob).await;
    }

    async fn a_json_body_that_is_not_an_object_is_400_everywhere(db: Db) {
        let (relay, alice, bob) = populated(&db).await;
        // serde reads a struct from an array too (`[]` as a request with every field
        // defaulted); the API takes objects only.
        for body in ["[]", " [\"carol\"]", "null", "\"carol\"", "42"] {
            let register = relay.post("/v1/clients").header("content-type", JSON).body(body).send().await.unwrap();
            let problem = expect_problem(register, StatusCode::BAD_REQUEST).await;
            assert!(problem.detail.contains("JSON object"), "POST /v1/clients: {}", problem.detail);
            for (method, path) in [
                ("POST", "/v1/key-packages".to_string()),
                ("POST", "/v1/key-packages/claim".to_string()),
                ("POST", "/v1/welcomes".to_string()),
                ("POST", "/v1/sync".to_string()),
                ("PUT", group_path("alice", &gid(1))),
                ("POST", messages_path("alice", &gid(1))),
            ] {
                let request = if method == "PUT" { alice.put(&path) } else { alice.post(&path) };
                let resp = request
                    .header("content-type", JSON)
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                let problem = expect_problem(resp, StatusCode::BAD_REQUEST).await;
                assert!(problem.detail.contains("JSON object"), "{method} {path}: {}", problem.detail);
            }
        }
        assert_unchanged(&alice, &bob).await;
        assert_eq!(relay.try_register("carol").await.status(), StatusCode::CREATED);
    }

    async fn bad_base64_in_a_key_package_is_400_and_stores_none_of_the_upload(db: Db) {
        let (_relay, alice, bob) = populated(&db).await;
        let body = json!({ "key_packages": [b64(b"good"), "not base64!"], "last_resort": b64(b"new lr") });
        let resp = alice.post("/v1/key-packages").json(&body).send().await.unwrap();
        expect_problem(resp, StatusCode::BAD_REQUEST).await;
        assert_unchanged(&alice, &bob).await;
        assert_eq!(bob.claim(&["alice"]).await.key_packages[0].key_package.0, b"kp1");
        assert_eq!(bob.claim(&["alice"]).await.key_packages[0].key_package.0, b"lr");
    }

    async fn unpadded_base64_is_400(db: Db) {
        let (_relay, alice, bob) = populated(&db).await;
        let resp = alice.post("/v1/key-packages").json(&json!({ "key_packages": ["AQ"] })).send().await.unwrap();
        expect_problem(resp, StatusCode::BAD_REQUEST).await;
        assert_unchanged(&alice, &bob).await;
    }

    async fn bad_base64_in_a_welcome_is_400_and_stores_none_of_them(db: Db) {
        let (_relay, alice, bob) = populated(&db).await;
        let body = json!({ "welcomes": [{ "to": "bob", "data": b64(b"ok") }, { "to": "bob", "data": "%%%" }] });
        expect_problem(alice.post("/v1/welcomes").json(&body).send().await.unwrap(), StatusCode::BAD_REQUEST).await;
        assert_unchanged(&alice, &bob).await;
    }

    async fn bad_base64_in_a_json_message_is_400(db: Db) {
        let (_relay, alice, bob) = populated(&db).await;
        let resp = alice.post(&messages_path("alice", &gid(1))).json(&json!({ "data": "@@@@" })).send().await.unwrap();
        expect_problem(resp, StatusCode::BAD_REQUEST).await;
        assert_unchanged(&alice, &bob).await;
    }

    async fn malformed_json_in_a_message_is_400(db: Db) {
        let (_relay, alice, bob) = populated(&db).await;
        let resp = alice.post(&messages_path("alice", &gid(1))).header("content-type", JSON).body("{\"data\":").send().await.unwrap();
        expect_problem(resp, StatusCode::BAD_REQUEST).await;
        assert_unchanged(&alice, &bob).await;
    }

    async fn malformed_json_in_sync_is_400(db: Db) {
        let (_relay, alice, bob) = populated(&db).await;
        let resp = alice.post("/v1/sync").header("content-type", JSON).body("{\"groups\": 7}").send().await.unwrap();
        expect_problem(resp, StatusCode::BAD_REQUEST).await;
        assert_unchanged(&alice, &bob).await;
    }

    async fn malformed_json_in_a_group_put_is_400(db: Db) {
        let (_relay, alice, bob) = populated(&db).await;
        let resp = alice.put(&group_path("alice", &gid(1))).header("content-type", JSON).body("{\"members\": [\"carol\"").send().await.unwrap();
        expect_problem(resp, StatusCode::BAD_REQUEST).await;
        assert_unchanged(&alice, &bob).await;
    }

    async fn an_invalid_group_id_in_the_path_is_400(db: Db) {
        let (_relay, alice, bob) = populated(&db).await;
        let too_long = "ab".repeat(65);
        for bad in ["AB12", "abc", "xyz0", too_long.as_str()] {
            expect_problem(alice.try_put_group("alice", bad, &["bob"]).await, StatusCode::BAD_REQUEST).await;
            expect_problem(alice.try_post("alice", bad, b"m").await, StatusCode::BAD_REQUEST).await;
            expect_problem(alice.try_messages("alice", bad, 0, None).await, StatusCode::BAD_REQUEST).await;
            expect_problem(alice.get(&group_path("alice", bad)).send().await.unwrap(), StatusCode::BAD_REQUEST).await;
            expect_problem(alice.delete(&group_path("alice", bad)).send().await.unwrap(), StatusCode::BAD_REQUEST).await;
        }
        assert_unchanged(&alice, &bob).await;
    }

    async fn an_invalid_owner_in_the_path_is_400(db: Db) {
        let (_relay, alice, bob) = populated(&db).await;
        expect_problem(alice.try_put_group("Alice", &gid(1), &["bob"]).await, StatusCode::BAD_REQUEST).await;
        expect_problem(alice.try_post("Alice", &gid(1), b"m").await, StatusCode::BAD_REQUEST).await;
        expect_problem(alice.get(&group_path("a%20b", &gid(1))).send().await.unwrap(), StatusCode::BAD_REQUEST).await;
        assert_unchanged(&alice, &bob).await;
    }

    async fn an_invalid_member_id_is_400(db: Db) {
        let (_relay, alice, bob) = populated(&db).await;
        expect_problem(alice.try_put_group("alice", &gid(1), &["bob", "Not Valid"]).await, StatusCode::BAD_REQUEST).await;
        expect_problem(alice.try_put_group("alice", &gid(2), &["Not Valid"]).await, StatusCode::BAD_REQUEST).await;
        expect_problem(alice.get(&group_path("alice", &gid(2))).send().await.unwrap(), StatusCode::NOT_FOUND).await;
        assert_unchanged(&alice, &bob).await;
    }

    async fn an_invalid_client_id_in_a_claim_is_400_and_claims_nothing(db: Db) {
        let (_relay, alice, bob) = populated(&db).await;
        expect_problem(bob.try_claim(&["alice", "ALICE"]).await, StatusCode::BAD_REQUEST).await;
        assert_unchanged(&alice, &bob).await;
    }

    async fn an_invalid_recipient_id_in_a_welcome_is_400(db: Db) {
        let (_relay, alice, bob) = populated(&db).await;
        expect_problem(alice.try_send_welcomes(&[("bob", b"w"), ("B O B", b"w")]).await, StatusCode::BAD_REQUEST).await;
        assert_unchanged(&alice, &bob).await;
    }

    async fn an_invalid_group_id_in_sync_is_400(db: Db) {
        let (_relay, alice, bob) = populated(&db).await;
        let body = json!({ "groups": [{ "owner": "alice", "group_id": "NOT-HEX", "after": 0 }] });
        expect_problem(bob.try_sync(&body).await, StatusCode::BAD_REQUEST).await;
        assert_unchanged(&alice, &bob).await;
    }

    async fn non_numeric_cursors_are_400(db: Db) {
        let (_relay, alice, bob) = populated(&db).await;
        expect_problem(bob.get("/v1/welcomes?after=abc").send().await.unwrap(), StatusCode::BAD_REQUEST).await;
        expect_problem(bob.get(&format!("{}?after=-1", messages_path("alice", &gid(1)))).send().await.unwrap(), StatusCode::BAD_REQUEST).await;
        expect_problem(bob.delete("/v1/welcomes?upto=all").send().await.unwrap(), StatusCode::BAD_REQUEST).await;
        assert_unchanged(&alice, &bob).await;
    }

    async fn a_page_limit_above_the_maximum_is_400(db: Db) {
        let (_relay, alice, bob) = populated(&db).await;
        expect_problem(alice.try_messages("alice", &gid(1), 0, Some(1001)).await, StatusCode::BAD_REQUEST).await;
        expect_problem(bob.get("/v1/welcomes?after=0&limit=1001").send().await.unwrap(), StatusCode::BAD_REQUEST).await;
        let sync = json!({ "groups": [{ "owner": "alice", "group_id": gid(1), "after": 0 }], "limit": 5001 });
        expect_problem(bob.try_sync(&sync).await, StatusCode::BAD_REQUEST).await;
        assert_unchanged(&alice, &bob).await;
    }

    async fn a_body_above_the_request_limit_is_413(db: Db) {
        let relay = db.start(&["--max-body-bytes", "4096", "--max-message-bytes", "100000"]).await;
        let alice = relay.register("alice").await;
        alice.create_group(&gid(1), &[]).await;
        expect_problem(alice.try_post("alice", &gid(1), &vec![0u8; 8192]).await, StatusCode::PAYLOAD_TOO_LARGE).await;
        let kps: Vec<String> = (0..10).map(|_| b64(&[1u8; 1000])).collect();
        let resp = alice.post("/v1/key-packages").json(&json!({ "key_packages": kps })).send().await.unwrap();
        expect_problem(resp, StatusCode::PAYLOAD_TOO_LARGE).await;
        assert_eq!(alice.group("alice", &gid(1)).await.last_seq, 0);
        assert_eq!(alice.me().await.key_packages_available, 0);
    }

    async fn posting_to_an_unknown_group_is_404_and_creates_nothing(db: Db) {
        let (_relay, alice, bob) = populated(&db).await;
        expect_problem(alice.try_post("alice", &gid(2), b"m").await, StatusCode::NOT_FOUND).await;
        expect_problem(alice.try_post("carol", &gid(1), b"m").await, StatusCode::NOT_FOUND).await;
        expect_problem(alice.get(&group_path("alice", &gid(2))).send().await.unwrap(), StatusCode::NOT_FOUND).await;
        assert_unchanged(&alice, &bob).await;
    }

    async fn a_wrong_owner_cannot_change_anything_in_a_group(db: Db) {
        let (relay, alice, bob) = populated(&db).await;
        let eve = relay.register("eve").await;
        expect_problem(eve.try_put_group("alice", &gid(1), &["eve"]).await, StatusCode::FORBIDDEN).await;
        expect_problem(bob.try_put_group("alice", &gid(1), &["bob", "eve"]).await, StatusCode::FORBIDDEN).await;
        let resp = eve.delete(&group_path("alice", &gid(1))).send().await.unwrap();
        assert!(resp.status() == StatusCode::FORBIDDEN || resp.status() == StatusCode::NOT_FOUND, "got {}", resp.status());
        expect_problem(bob.delete(&group_path("alice", &gid(1))).send().await.unwrap(), StatusCode::FORBIDDEN).await;
        let resp = eve.try_post("alice", &gid(1), b"spam").await;
        assert!(resp.status() == StatusCode::FORBIDDEN || resp.status() == StatusCode::NOT_FOUND, "got {}", resp.status());
        assert_unchanged(&alice, &bob).await;
    }

    async fn a_request_without_a_token_is_401_and_changes_nothing(db: Db) {
        let (relay, alice, bob) = populated(&db).await;
        let anon = relay.http.clone();
        let url = |p: &str| relay.at(p);
        let requests = [
            anon.get(url("/v1/clients/me")),
            anon.delete(url("/v1/clients/me")),
            anon.post(url("/v1/key-packages")).json(&json!({ "key_packages": [b64(b"x")] })),
            anon.post(url("/v1/key-packages/claim")).json(&json!({ "client_ids": ["alice"] })),
            anon.post(url("/v1/welcomes")).json(&json!({ "welcomes": [{ "to": "bob", "data": b64(b"x") }] })),
            anon.get(url("/v1/welcomes?after=0")),
            anon.delete(url("/v1/welcomes?upto=1000")),
            anon.put(url(&group_path("alice", &gid(1)))).json(&json!({ "members": [] })),
            anon.get(url(&group_path("alice", &gid(1)))),
            anon.delete(url(&group_path("alice", &gid(1)))),
            anon.post(url(&messages_path("alice", &gid(1)))).body(b"x".to_vec()),
            anon.get(url(&messages_path("alice", &gid(1)))),
            anon.post(url("/v1/sync")).json(&json!({ "groups": [] })),
        ];
        for request in requests {
            expect_problem(request.send().await.unwrap(), StatusCode::UNAUTHORIZED).await;
        }
        assert_unchanged(&alice, &bob).await;
    }

    async fn a_foreign_token_is_401_and_changes_nothing(db: Db) {
        let (relay, alice, bob) = populated(&db).await;
        let forged = relay.client("alice", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
        expect_problem(forged.get("/v1/clients/me").send().await.unwrap(), StatusCode::UNAUTHORIZED).await;
        expect_problem(forged.delete("/v1/clients/me").send().await.unwrap(), StatusCode::UNAUTHORIZED).await;
        expect_problem(forged.try_post("alice", &gid(1), b"forged").await, StatusCode::UNAUTHORIZED).await;
        expect_problem(forged.delete(&group_path("alice", &gid(1))).send().await.unwrap(), StatusCode::UNAUTHORIZED).await;
        expect_problem(forged.try_claim(&["alice"]).await, StatusCode::UNAUTHORIZED).await;
        assert_unchanged(&alice, &bob).await;
    }

    async fn a_token_from_another_relay_is_401(db: Db) {
        let (relay, alice, bob) = populated(&db).await;
        let other_db = Db::sqlite();
        let other = other_db.relay().await;
        let stranger = other.register("alice").await;
        let foreign = relay.client("alice", &stranger.token);
        expect_problem(foreign.get("/v1/clients/me").send().await.unwrap(), StatusCode::UNAUTHORIZED).await;
        expect_problem(foreign.try_post("alice", &gid(1), b"x").await, StatusCode::UNAUTHORIZED).await;
        assert_unchanged(&alice, &bob).await;
    }

    async fn a_non_bearer_authorization_is_401(db: Db) {
        let (relay, alice, bob) = populated(&db).await;
        let resp = relay.get("/v1/clients/me").header("authorization", format!("Basic {}", alice.token)).send().await.unwrap();
        expect_problem(resp, StatusCode::UNAUTHORIZED).await;
        let resp = relay.get("/v1/clients/me").header("authorization", "Bearer").send().await.unwrap();
        expect_problem(resp, StatusCode::UNAUTHORIZED).await;
        assert_unchanged(&alice, &bob).await;
    }

    async fn a_member_cannot_read_another_clients_inbox_or_key_stock(db: Db) {
        let (relay, alice, bob) = populated(&db).await;
        let eve = relay.register("eve").await;
        assert!(eve.inbox().await.is_empty());
        eve.delete("/v1/welcomes?upto=1000000").send().await.unwrap();
        assert_unchanged(&alice, &bob).await;
    }
}
