//! `PUT`, `GET` and `DELETE /v1/groups/{owner}/{group_id}`: creation, member lists, access.

use crate::common::*;
use reqwest::StatusCode;

/// Reads of a group by a client without access: 403, or 404 where the relay hides existence.
fn is_refusal(status: StatusCode) -> bool {
    status == StatusCode::FORBIDDEN || status == StatusCode::NOT_FOUND
}

backend_tests! {
    async fn the_owner_creates_a_group_with_201(db: Db) {
        let relay = db.relay().await;
        let alice = relay.register("alice").await;
        relay.register("bob").await;
        let resp = alice.try_put_group("alice", &gid(1), &["bob"]).await;
        assert_eq!(resp.status(), StatusCode::CREATED);
        let group = alice.group("alice", &gid(1)).await;
        assert_eq!(group.group_id, gid(1));
        assert_eq!(group.owner, "alice");
        assert_eq!(group.members, vec!["bob".to_string()]);
        assert_eq!(group.last_seq, 0);
        assert!(group.created_at > 0);
    }

    async fn putting_an_existing_group_replaces_its_members_with_200(db: Db) {
        let relay = db.relay().await;
        let alice = relay.register("alice").await;
        relay.register("bob").await;
        relay.register("carol").await;
        alice.create_group(&gid(1), &["bob"]).await;
        let created_at = alice.group("alice", &gid(1)).await.created_at;
        let resp = alice.try_put_group("alice", &gid(1), &["carol"]).await;
        assert_eq!(resp.status(), StatusCode::OK);
        let group = alice.group("alice", &gid(1)).await;
        assert_eq!(group.members, vec!["carol".to_string()]);
        assert_eq!(group.created_at, created_at);
    }

    async fn two_owners_may_use_the_same_group_id(db: Db) {
        let relay = db.relay().await;
        let alice = relay.register("alice").await;
        let bob = relay.register("bob").await;
        alice.create_group(&gid(1), &[]).await;
        bob.create_group(&gid(1), &[]).await;
        alice.post_message("alice", &gid(1), b"a").await;
        assert_eq!(alice.group("alice", &gid(1)).await.last_seq, 1);
        assert_eq!(bob.group("bob", &gid(1)).await.last_seq, 0);
    }

    async fn putting_a_group_under_another_owner_is_403_and_creates_nothing(db: Db) {
        let relay = db.relay().await;
        let alice = relay.register("alice").await;
        let mallory = relay.register("mallory").await;
        expect_problem(mallory.try_put_group("alice", &gid(1), &["mallory"]).await, StatusCode::FORBIDDEN).await;
        expect_problem(alice.get(&group_path("alice", &gid(1))).send().await.unwrap(), StatusCode::NOT_FOUND).await;
    }

    async fn a_non_owner_cannot_replace_the_members(db: Db) {
        let relay = db.relay().await;
        let alice = relay.register("alice").await;
        let bob = relay.register("bob").await;
        alice.create_group(&gid(1), &["bob"]).await;
        expect_problem(bob.try_put_group("alice", &gid(1), &["bob", "alice"]).await, StatusCode::FORBIDDEN).await;
        assert_eq!(alice.group("alice", &gid(1)).await.members, vec!["bob".to_string()]);
    }

    async fn a_member_list_naming_an_unknown_client_is_404_and_changes_nothing(db: Db) {
        let relay = db.relay().await;
        let alice = relay.register("alice").await;
        relay.register("bob").await;
        let problem = expect_problem(alice.try_put_group("alice", &gid(1), &["nobody"]).await, StatusCode::NOT_FOUND).await;
        assert!(problem.detail.contains("nobody"), "{problem:?}");
        expect_problem(alice.get(&group_path("alice", &gid(1))).send().await.unwrap(), StatusCode::NOT_FOUND).await;
        alice.create_group(&gid(1), &["bob"]).await;
        expect_problem(alice.try_put_group("alice", &gid(1), &["bob", "nobody"]).await, StatusCode::NOT_FOUND).await;
        assert_eq!(alice.group("alice", &gid(1)).await.members, vec!["bob".to_string()]);
    }

    async fn a_member_reads_the_group(db: Db) {
        let relay = db.relay().await;
        let alice = relay.register("alice").await;
        let bob = relay.register("bob").await;
        alice.create_group(&gid(1), &["bob"]).await;
        alice.post_message("alice", &gid(1), b"m").await;
        let group = bob.group("alice", &gid(1)).await;
        assert_eq!(group.owner, "alice");
        assert_eq!(group.last_seq, 1);
    }

    async fn a_non_member_cannot_read_the_group(db: Db) {
        let relay = db.relay().await;
        let alice = relay.register("alice").await;
        let eve = relay.register("eve").await;
        alice.create_group(&gid(1), &[]).await;
        let resp = eve.get(&group_path("alice", &gid(1))).send().await.unwrap();
        let status = resp.status();
        assert!(is_refusal(status), "got {status}");
        expect_problem(resp, status).await;
    }

    async fn reading_an_unknown_group_is_404(db: Db) {
        let relay = db.relay().await;
        let alice = relay.register("alice").await;
        expect_problem(alice.get(&group_path("alice", &gid(9))).send().await.unwrap(), StatusCode::NOT_FOUND).await;
    }

    async fn the_owner_deletes_a_group_and_its_messages(db: Db) {
        let relay = db.relay().await;
        let alice = relay.register("alice").await;
        alice.create_group(&gid(1), &[]).await;
        alice.post_message("alice", &gid(1), b"m1").await;
        let resp = alice.delete(&group_path("alice", &gid(1))).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
        expect_problem(alice.get(&group_path("alice", &gid(1))).send().await.unwrap(), StatusCode::NOT_FOUND).await;
        // Re-created, it starts empty at seq 1.
        alice.create_group(&gid(1), &[]).await;
        assert!(alice.messages("alice", &gid(1), 0, None).await.messages.is_empty());
        assert_eq!(alice.post_message("alice", &gid(1), b"again").await, 1);
    }

    async fn a_member_cannot_delete_the_group(db: Db) {
        let relay = db.relay().await;
        let alice = relay.register("alice").await;
        let bob = relay.register("bob").await;
        alice.create_group(&gid(1), &["bob"]).await;
        alice.post_message("alice", &gid(1), b"m1").await;
        expect_problem(bob.delete(&group_path("alice", &gid(1))).send().await.unwrap(), StatusCode::FORBIDDEN).await;
        assert_eq!(alice.group("alice", &gid(1)).await.last_seq, 1);
    }

    async fn a_stranger_cannot_delete_the_group(db: Db) {
        let relay = db.relay().await;
        let alice = relay.register("alice").await;
        let eve = relay.register("eve").await;
        alice.create_group(&gid(1), &[]).await;
        let resp = eve.delete(&group_path("alice", &gid(1))).send().await.unwrap();
        let status = resp.status();
        assert!(is_refusal(status), "got {status}");
        expect_problem(resp, status).await;
        alice.group("alice", &gid(1)).await;
    }

    async fn deleting_an_unknown_group_is_404(db: Db) {
        let relay = db.relay().await;
        let alice = relay.register("alice").await;
        expect_problem(alice.delete(&group_path("alice", &gid(9))).send().await.unwrap(), StatusCode::NOT_FOUND).await;
    }
}
