//! `POST /v1/sync`: many groups and the inbox in one request, and long polling.

use std::time::{Duration, Instant};

use crate::common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::Connection as _;

fn cursor(owner: &str, group_id: &str, after: u64) -> Value {
    json!({ "owner": owner, "group_id": group_id, "after": after })
}

/// Waits in `sync` on `waiter`'s view of group `alice/gid(1)` while `poster` posts into it after a
/// moment, and checks that the answer carries the message and arrives within 100 ms of the ack.
async fn assert_a_post_wakes_the_waiter(waiter: Client, poster: Client) {
    let request = json!({ "groups": [cursor("alice", &gid(1), 0)], "wait_ms": 10_000 });
    let wait = tokio::spawn(async move {
        let answer = waiter.sync(&request).await;
        (answer, Instant::now())
    });
    // Give the waiter time to reach the relay and start waiting.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !wait.is_finished(),
        "the long poll answered before anything was posted"
    );
    poster.post_message("alice", &gid(1), b"wake up").await;
    let acked = Instant::now();
    let (answer, answered) = tokio::time::timeout(Duration::from_secs(5), wait)
        .await
        .expect("waiter woke")
        .unwrap();
    assert_eq!(answer.groups.len(), 1, "{answer:?}");
    assert_eq!(answer.groups[0].messages[0].data.0, b"wake up");
    let late = answered.saturating_duration_since(acked);
    assert!(
        late <= Duration::from_millis(100),
        "woke {late:?} after the post was acknowledged"
    );
}

backend_tests! {
    async fn sync_reads_many_groups_at_once(db: Db) {
        let relay = db.relay().await;
        let alice = relay.register("alice").await;
        let bob = relay.register("bob").await;
        for n in 1..=3u8 {
            alice.create_group(&gid(n), &["bob"]).await;
            for i in 0..n {
                alice.post_message("alice", &gid(n), &[n, i]).await;
            }
        }
        let answer = bob
            .sync(&json!({ "groups": [cursor("alice", &gid(1), 0), cursor("alice", &gid(2), 0), cursor("alice", &gid(3), 1)] }))
            .await;
        let mut got: Vec<(String, Vec<u64>, u64, bool)> = answer
            .groups
            .iter()
            .map(|g| (g.group_id.clone(), g.messages.iter().map(|m| m.seq).collect(), g.next_after, g.more))
            .collect();
        got.sort();
        assert_eq!(
            got,
            vec![(gid(1), vec![1], 1, false), (gid(2), vec![1, 2], 2, false), (gid(3), vec![2, 3], 3, false)]
        );
        assert!(answer.groups.iter().all(|g| g.owner == "alice"));
        assert!(answer.forbidden.is_empty());
        assert!(answer.welcomes.is_empty());
        assert_eq!(answer.welcomes_next_after, None);
    }

    async fn groups_with_nothing_new_are_left_out(db: Db) {
        let relay = db.relay().await;
        let alice = relay.register("alice").await;
        alice.create_group(&gid(1), &[]).await;
        alice.create_group(&gid(2), &[]).await;
        alice.post_message("alice", &gid(1), b"old").await;
        alice.post_message("alice", &gid(2), b"new").await;
        let answer = alice.sync(&json!({ "groups": [cursor("alice", &gid(1), 1), cursor("alice", &gid(2), 0)] })).await;
        assert_eq!(answer.groups.len(), 1);
        assert_eq!(answer.groups[0].group_id, gid(2));
    }

    async fn groups_that_do_not_exist_return_nothing(db: Db) {
        let relay = db.relay().await;
        let alice = relay.register("alice").await;
        let bob = relay.register("bob").await;
        let answer = bob.sync(&json!({ "groups": [cursor("alice", &gid(7), 0), cursor("nobody", &gid(8), 0)] })).await;
        assert!(answer.groups.is_empty());
        assert!(answer.forbidden.is_empty());
        // Once the group exists and bob is a member, the same cursor finds its messages.
        alice.create_group(&gid(7), &["bob"]).await;
        alice.post_message("alice", &gid(7), b"welcome soon").await;
        let answer = bob.sync(&json!({ "groups": [cursor("alice", &gid(7), 0)] })).await;
        assert_eq!(answer.groups[0].messages.len(), 1);
    }

    async fn groups_the_caller_may_not_read_are_listed_as_forbidden(db: Db) {
        let relay = db.relay().await;
        let alice = relay.register("alice").await;
        let eve = relay.register("eve").await;
        alice.create_group(&gid(1), &[]).await;
        alice.post_message("alice", &gid(1), b"secret").await;
        eve.create_group(&gid(2), &[]).await;
        eve.post_message("eve", &gid(2), b"mine").await;
        let answer = eve.sync(&json!({ "groups": [cursor("alice", &gid(1), 0), cursor("eve", &gid(2), 0)] })).await;
        assert_eq!(answer.groups.len(), 1);
        assert_eq!(answer.groups[0].group_id, gid(2));
        assert_eq!(answer.forbidden.len(), 1);
        assert_eq!((answer.forbidden[0].owner.as_str(), answer.forbidden[0].group_id.as_str()), ("alice", gid(1).as_str()));
    }

    async fn a_dropped_member_syncs_up_to_the_cut_off_only(db: Db) {
        let relay = db.relay().await;
        let alice = relay.register("alice").await;
        let bob = relay.register("bob").await;
        alice.create_group(&gid(1), &["bob"]).await;
        alice.post_message("alice", &gid(1), b"commit removing bob").await;
        alice.set_members(&gid(1), &[]).await;
        alice.post_message("alice", &gid(1), b"after bob left").await;
        let answer = bob.sync(&json!({ "groups": [cursor("alice", &gid(1), 0)] })).await;
        let seqs: Vec<u64> = answer.groups.iter().flat_map(|g| g.messages.iter().map(|m| m.seq)).collect();
        assert_eq!(seqs, vec![1]);
        let answer = bob.sync(&json!({ "groups": [cursor("alice", &gid(1), 1)] })).await;
        assert!(answer.groups.iter().all(|g| g.messages.is_empty()), "{answer:?}");
    }

    async fn welcomes_after_reads_the_inbox(db: Db) {
        let relay = db.relay().await;
        let alice = relay.register("alice").await;
        let bob = relay.register("bob").await;
        let ids = alice.send_welcomes(&[("bob", b"w1"), ("bob", b"w2")]).await;
        let answer = bob.sync(&json!({ "welcomes_after": 0 })).await;
        assert_eq!(answer.welcomes.iter().map(|w| w.id).collect::<Vec<_>>(), ids);
        assert_eq!(answer.welcomes[0].from, "alice");
        assert_eq!(answer.welcomes_next_after, Some(ids[1]));
        let answer = bob.sync(&json!({ "welcomes_after": ids[0] })).await;
        assert_eq!(answer.welcomes.iter().map(|w| w.data.0.clone()).collect::<Vec<_>>(), vec![b"w2".to_vec()]);
        let answer = bob.sync(&json!({ "welcomes_after": ids[1] })).await;
        assert!(answer.welcomes.is_empty());
        assert_eq!(answer.welcomes_next_after, Some(ids[1]));
    }

    async fn a_null_welcomes_after_leaves_the_inbox_unread(db: Db) {
        let relay = db.relay().await;
        let alice = relay.register("alice").await;
        let bob = relay.register("bob").await;
        alice.send_welcomes(&[("bob", b"w1")]).await;
        let answer = bob.sync(&json!({ "groups": [], "welcomes_after": null })).await;
        assert!(answer.welcomes.is_empty());
        assert_eq!(answer.welcomes_next_after, None);
    }

    async fn the_limit_caps_the_total_messages(db: Db) {
        let relay = db.relay().await;
        let alice = relay.register("alice").await;
        for n in 1..=3u8 {
            alice.create_group(&gid(n), &[]).await;
            for i in 0..3u8 {
                alice.post_message("alice", &gid(n), &[i]).await;
            }
        }
        let groups = [cursor("alice", &gid(1), 0), cursor("alice", &gid(2), 0), cursor("alice", &gid(3), 0)];
        let answer = alice.sync(&json!({ "groups": groups, "limit": 4 })).await;
        let total: usize = answer.groups.iter().map(|g| g.messages.len()).sum();
        assert_eq!(total, 4);
        assert!(answer.groups.iter().any(|g| g.more), "{answer:?}");
        for g in &answer.groups {
            assert_eq!(g.next_after, g.messages.last().unwrap().seq);
            assert_eq!(g.more, g.next_after < 3, "{g:?}");
        }
    }

    async fn sync_follows_a_thousand_groups(db: Db) {
        let relay = db.relay().await;
        let alice = relay.register("alice").await;
        alice.create_group(&gid(1), &[]).await;
        alice.post_message("alice", &gid(1), b"only news").await;
        let groups: Vec<Value> = (0..1000u32).map(|i| cursor("alice", &format!("{i:08x}"), 0)).chain([cursor("alice", &gid(1), 0)]).collect();
        let answer = alice.sync(&json!({ "groups": groups })).await;
        assert_eq!(answer.groups.len(), 1);
        assert_eq!(answer.groups[0].group_id, gid(1));
    }

    async fn a_long_poll_answers_at_once_when_something_is_there(db: Db) {
        let relay = db.relay().await;
        let alice = relay.register("alice").await;
        alice.create_group(&gid(1), &[]).await;
        alice.post_message("alice", &gid(1), b"already here").await;
        let started = Instant::now();
        let answer = alice.sync(&json!({ "groups": [cursor("alice", &gid(1), 0)], "wait_ms": 10_000 })).await;
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(answer.groups.len(), 1);
    }

    async fn a_long_poll_times_out_empty(db: Db) {
        let relay = db.relay().await;
        let alice = relay.register("alice").await;
        alice.create_group(&gid(1), &[]).await;
        let started = Instant::now();
        let answer =
            alice.sync(&json!({ "groups": [cursor("alice", &gid(1), 0)], "welcomes_after": 0, "wait_ms": 300 })).await;
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(280), "answered after {waited:?}");
        assert!(waited < Duration::from_secs(3), "answered after {waited:?}");
        assert!(answer.groups.is_empty() && answer.welcomes.is_empty() && answer.forbidden.is_empty(), "{answer:?}");
    }

    async fn a_posted_message_wakes_a_long_poll_within_100_ms(db: Db) {
        let relay = db.relay().await;
        let alice = relay.register("alice").await;
        let bob = relay.register("bob").await;
        alice.create_group(&gid(1), &["bob"]).await;
        assert_a_post_wakes_the_waiter(bob, alice).await;
    }

    async fn a_welcome_wakes_a_long_poll_on_the_inbox(db: Db) {
        let relay = db.relay().await;
        let alice = relay.register("alice").await;
        let bob = relay.register("bob").await;
        let waiter = bob.clone();
        let wait = tokio::spawn(async move { waiter.sync(&json!({ "welcomes_after": 0, "wait_ms": 10_000 })).await });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!wait.is_finished());
        let started = Instant::now();
        alice.send_welcomes(&[("bob", b"join us")]).await;
        let answer = tokio::time::timeout(Duration::from_secs(5), wait).await.expect("waiter woke").unwrap();
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(answer.welcomes.len(), 1);
    }

    async fn a_post_to_a_group_not_listed_does_not_wake_the_long_poll(db: Db) {
        let relay = db.relay().await;
        let alice = relay.register("alice").await;
        alice.create_group(&gid(1), &[]).await;
        alice.create_group(&gid(2), &[]).await;
        let waiter = alice.clone();
        let started = Instant::now();
        let wait = tokio::spawn(async move { waiter.sync(&json!({ "groups": [cursor("alice", &gid(1), 0)], "wait_ms": 600 })).await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        alice.post_message("alice", &gid(2), b"elsewhere").await;
        let answer = wait.await.unwrap();
        assert!(answer.groups.is_empty(), "{answer:?}");
        assert!(started.elapsed() >= Duration::from_millis(550));
    }

    async fn a_wait_above_30_seconds_is_400(db: Db) {
        let relay = db.relay().await;
        let alice = relay.register("alice").await;
        expect_problem(alice.try_sync(&json!({ "groups": [], "wait_ms": 30_001 })).await, StatusCode::BAD_REQUEST).await;
    }

    async fn more_than_10000_groups_is_400(db: Db) {
        let relay = db.relay().await;
        let alice = relay.register("alice").await;
        let groups: Vec<Value> = (0..10_001u32).map(|i| cursor("alice", &format!("{i:08x}"), 0)).collect();
        expect_problem(alice.try_sync(&json!({ "groups": groups })).await, StatusCode::BAD_REQUEST).await;
    }
}

/// Two relay processes on one PostgreSQL database: a post through one wakes a waiter on the other
/// (LISTEN/NOTIFY). Only meaningful on PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_through_another_relay_process_wakes_a_long_poll_on_postgres() {
    let Some(db) =
        Db::postgres("sync::a_post_through_another_relay_process_wakes_a_long_poll_on_postgres")
            .await
    else {
        return;
    };
    let first = db.relay().await;
    let second = db.relay().await;
    let alice = first.register("alice").await;
    let bob = first.register("bob").await;
    alice.create_group(&gid(1), &["bob"]).await;
    let alice_via_second = second.client("alice", &alice.token);
    assert_a_post_wakes_the_waiter(bob, alice_via_second).await;
}

/// A message stored through another relay process while this process's LISTEN connection is
/// down (its NOTIFY reaches nobody here) still wakes a long poll on this process as soon as the
/// listener is back, not when the wait ends. The database refuses new connections while the
/// listener is down, so the post surely falls into the gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_while_the_listen_connection_is_down_wakes_a_long_poll_once_it_is_back_on_postgres()
{
    let Some(db) = Db::postgres(
        "sync::a_post_while_the_listen_connection_is_down_wakes_a_long_poll_once_it_is_back_on_postgres",
    )
    .await
    else {
        return;
    };
    let listen_name = dmls_relay::testing::LISTEN_APPLICATION_NAME;
    let database = {
        let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
        let (name,): (String,) = sqlx::query_as("SELECT current_database()")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
        name
    };
    assert!(
        database
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
    );
    // On the server's own database: a database cannot refuse connections while connected to.
    let server_url = std::env::var(dmls_relay::testing::TEST_DATABASE_URL_VAR).unwrap();
    let mut admin = sqlx::PgConnection::connect(&server_url).await.unwrap();

    let first = db.relay().await;
    let first_listener: Vec<(i32,)> = sqlx::query_as(
        "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND application_name = $2",
    )
    .bind(&database)
    .bind(listen_name)
    .fetch_all(&mut admin)
    .await
    .unwrap();
    assert_eq!(first_listener.len(), 1, "one LISTEN connection per relay");
    let second = db.relay().await;
    let alice = first.register("alice").await;
    let bob = first.register("bob").await;
    alice.create_group(&gid(1), &["bob"]).await;
    let alice_via_second = second.client("alice", &alice.token);
    // Warm the second relay up (pooled connection, cached token): it must post without opening a
    // new database connection.
    alice_via_second.me().await;

    let request = json!({ "groups": [cursor("alice", &gid(1), 0)], "wait_ms": 30_000 });
    let waiter = bob.clone();
    let wait = tokio::spawn(async move { waiter.sync(&request).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !wait.is_finished(),
        "the long poll answered before anything was posted"
    );

    // Take the first relay's LISTEN connection down and keep it down.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER DATABASE {database} ALLOW_CONNECTIONS false"
    )))
    .execute(&mut admin)
    .await
    .unwrap();
    let (killed,): (bool,) = sqlx::query_as("SELECT pg_terminate_backend($1, 5000)")
        .bind(first_listener[0].0)
        .fetch_one(&mut admin)
        .await
        .unwrap();
    assert!(killed);
    let posted = alice_via_second
        .try_post("alice", &gid(1), b"in the gap")
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let answered_in_the_gap = wait.is_finished();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER DATABASE {database} ALLOW_CONNECTIONS true"
    )))
    .execute(&mut admin)
    .await
    .unwrap();
    let reopened = Instant::now();
    assert_eq!(posted.status(), StatusCode::CREATED);
    assert!(
        !answered_in_the_gap,
        "the long poll woke while its relay could not hear NOTIFYs"
    );

    let answer = tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .expect("the long poll woke once its relay listened again, long before wait_ms")
        .unwrap();
    assert_eq!(answer.groups.len(), 1, "{answer:?}");
    assert_eq!(answer.groups[0].messages[0].data.0, b"in the gap");
    let late = reopened.elapsed();
    assert!(
        late < Duration::from_secs(5),
        "woke {late:?} after the database reopened"
    );
    first.stop().await;
    second.stop().await;
}
