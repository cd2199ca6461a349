//! The `Store` contract, run against SQLite and (when `DMLS_TEST_DATABASE_URL` is set)
//! PostgreSQL. Each behaviour is a module with one test per backend:
//! `cargo test -p dmls-relay --lib store::contract_tests::<behaviour>`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::notify::{EventKey, Notifier};
use crate::store::{
    self, Access, AppendOutcome, AppendRequest, NewWelcome, Store, StoreError, SyncCursor,
    SyncGroupResult,
};
use crate::testing;

struct Db {
    store: Arc<dyn Store>,
    notifier: Notifier,
    url: String,
    _dir: Option<tempfile::TempDir>,
}

async fn open(url: &str) -> (Arc<dyn Store>, Notifier) {
    let notifier = Notifier::new();
    let store = store::open(&testing::test_config(url), notifier.clone())
        .await
        .unwrap();
    (store, notifier)
}

async fn sqlite_db() -> Db {
    let dir = tempfile::tempdir().unwrap();
    let url = testing::sqlite_test_url(dir.path());
    let (store, notifier) = open(&url).await;
    Db {
        store,
        notifier,
        url,
        _dir: Some(dir),
    }
}

async fn postgres_db(test: &str) -> Option<Db> {
    let Some(url) = testing::postgres_test_url().await else {
        testing::skip_notice(test);
        return None;
    };
    let (store, notifier) = open(&url).await;
    Some(Db {
        store,
        notifier,
        url,
        _dir: None,
    })
}

/// One test per backend for the behaviour `$name`, checked by the async fn `$name(Db)`.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                let db = super::sqlite_db().await;
                let store = db.store.clone();
                super::$name(db).await;
                store.close().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                let Some(db) = super::postgres_db(concat!(stringify!($name), "::postgres")).await else { return };
                let store = db.store.clone();
                super::$name(db).await;
                store.close().await;
            }
        }
    )*};
}

on_both_backends!(
    appends_get_consecutive_seqs_from_one,
    append_to_a_missing_group_is_no_group,
    only_owner_and_current_members_may_append,
    idempotent_retry_returns_the_first_seq_and_stores_nothing,
    idempotency_key_with_another_body_conflicts,
    dropped_member_reads_up_to_the_drop_and_may_not_post,
    re_added_member_regains_full_access,
    put_group_with_an_unknown_member_changes_nothing,
    claims_take_oldest_then_last_resort_then_report_missing,
    claim_naming_an_unknown_client_claims_nothing,
    concurrent_claims_never_hand_out_the_same_package,
    key_package_stock_limit_stores_nothing_when_exceeded,
    welcomes_are_all_or_nothing,
    welcome_ids_increase_and_delete_drops_up_to_id,
    welcome_fan_out_is_stored_once_and_goes_with_its_last_entry,
    welcome_bodies_go_when_recipients_delete_concurrently,
    pruning_deletes_the_bodies_of_pruned_welcomes,
    delete_group_removes_its_messages_and_idempotency_keys,
    delete_client_cascades_to_everything_it_owns,
    client_is_found_by_token_hash_and_ids_are_unique,
    sync_reports_news_and_forbidden_groups_and_skips_unknown_ones,
    sync_limit_caps_the_total_number_of_messages,
    sync_over_a_thousand_quiet_groups_is_fast,
    concurrent_writers_and_paging_readers_see_every_seq_exactly_once,
    commits_publish_events,
    prune_removes_old_messages_but_never_reuses_seqs,
    reopening_keeps_the_data,
);

// ---------------------------------------------------------------- helpers

const NOW: i64 = 1_700_000_000_000;
const GROUP: &str = "ab12";

fn token_hash(client_id: &str) -> [u8; 32] {
    Sha256::digest(client_id.as_bytes()).into()
}

async fn register(store: &dyn Store, ids: &[&str]) {
    for id in ids {
        store.create_client(id, token_hash(id), NOW).await.unwrap();
    }
}

fn strings(ids: &[&str]) -> Vec<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

fn append_req(owner: &str, sender: &str, data: &[u8]) -> AppendRequest {
    AppendRequest {
        owner: owner.into(),
        group_id: GROUP.into(),
        sender: sender.into(),
        data: data.to_vec(),
        idempotency: None,
        received_at: NOW,
    }
}

fn keyed(mut req: AppendRequest, key: &str) -> AppendRequest {
    let hash = Sha256::digest(&req.data).into();
    req.idempotency = Some((key.into(), hash));
    req
}

/// alice owns GROUP with members bob and carol; dave is registered but not a member.
async fn group_of_four(store: &dyn Store) {
    register(store, &["alice", "bob", "carol", "dave"]).await;
    assert!(
        store
            .put_group("alice", GROUP, &strings(&["bob", "carol"]), NOW)
            .await
            .unwrap()
    );
}

async fn all_seqs(store: &dyn Store, owner: &str) -> Vec<u64> {
    let page = store
        .read_messages(owner, GROUP, 0, None, 1000)
        .await
        .unwrap();
    page.items.iter().map(|m| m.seq).collect()
}

fn cursor(owner: &str, group_id: &str, after: u64) -> SyncCursor {
    SyncCursor {
        owner: owner.into(),
        group_id: group_id.into(),
        after,
    }
}

// ---------------------------------------------------------------- behaviours

async fn appends_get_consecutive_seqs_from_one(db: Db) {
    let s = &*db.store;
    group_of_four(s).await;
    for i in 1..=3u64 {
        assert_eq!(
            s.append(append_req("alice", "bob", b"m")).await.unwrap(),
            AppendOutcome::Stored(i)
        );
    }
    let page = s.read_messages("alice", GROUP, 1, None, 10).await.unwrap();
    assert_eq!(
        page.items.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![2, 3]
    );
    assert_eq!(page.items[0].sender, "bob");
    assert_eq!(page.items[0].received_at, NOW);
    assert!(!page.more);
    let limited = s
        .read_messages("alice", GROUP, 0, Some(2), 1)
        .await
        .unwrap();
    assert_eq!((limited.items.len(), limited.more), (1, true));
    assert_eq!(
        s.get_group("alice", GROUP).await.unwrap().unwrap().last_seq,
        3
    );
}

async fn append_to_a_missing_group_is_no_group(db: Db) {
    let s = &*db.store;
    register(s, &["alice"]).await;
    assert_eq!(
        s.append(append_req("alice", "alice", b"m")).await.unwrap(),
        AppendOutcome::NoGroup
    );
}

async fn only_owner_and_current_members_may_append(db: Db) {
    let s = &*db.store;
    group_of_four(s).await;
    assert_eq!(
        s.append(append_req("alice", "alice", b"o")).await.unwrap(),
        AppendOutcome::Stored(1)
    );
    assert_eq!(
        s.append(append_req("alice", "carol", b"c")).await.unwrap(),
        AppendOutcome::Stored(2)
    );
    assert_eq!(
        s.append(append_req("alice", "dave", b"d")).await.unwrap(),
        AppendOutcome::Forbidden
    );
    assert_eq!(all_seqs(s, "alice").await, vec![1, 2]);
}

async fn idempotent_retry_returns_the_first_seq_and_stores_nothing(db: Db) {
    let s = &*db.store;
    group_of_four(s).await;
    assert_eq!(
        s.append(keyed(append_req("alice", "bob", b"x"), "k1"))
            .await
            .unwrap(),
        AppendOutcome::Stored(1)
    );
    assert_eq!(
        s.append(append_req("alice", "bob", b"y")).await.unwrap(),
        AppendOutcome::Stored(2)
    );
    assert_eq!(
        s.append(keyed(append_req("alice", "bob", b"x"), "k1"))
            .await
            .unwrap(),
        AppendOutcome::Duplicate(1)
    );
    // The key is scoped to the sender: carol's k1 is another key.
    assert_eq!(
        s.append(keyed(append_req("alice", "carol", b"x"), "k1"))
            .await
            .unwrap(),
        AppendOutcome::Stored(3)
    );
    assert_eq!(all_seqs(s, "alice").await, vec![1, 2, 3]);
}

async fn idempotency_key_with_another_body_conflicts(db: Db) {
    let s = &*db.store;
    group_of_four(s).await;
    assert_eq!(
        s.append(keyed(append_req("alice", "bob", b"x"), "k1"))
            .await
            .unwrap(),
        AppendOutcome::Stored(1)
    );
    assert_eq!(
        s.append(keyed(append_req("alice", "bob", b"other"), "k1"))
            .await
            .unwrap(),
        AppendOutcome::IdempotencyConflict
    );
    assert_eq!(all_seqs(s, "alice").await, vec![1]);
}

async fn dropped_member_reads_up_to_the_drop_and_may_not_post(db: Db) {
    let s = &*db.store;
    group_of_four(s).await;
    s.append(append_req("alice", "alice", b"1")).await.unwrap();
    s.append(append_req("alice", "alice", b"2")).await.unwrap();
    assert!(
        !s.put_group("alice", GROUP, &strings(&["carol"]), NOW)
            .await
            .unwrap()
    );
    s.append(append_req("alice", "alice", b"3")).await.unwrap();
    let group = s.get_group("alice", GROUP).await.unwrap().unwrap();
    assert_eq!(group.members, vec!["carol"]);
    assert_eq!(group.former_members, vec![("bob".to_string(), 2)]);
    assert_eq!(group.access("bob"), Access::ReadUpTo(2));
    assert_eq!(
        s.append(append_req("alice", "bob", b"b")).await.unwrap(),
        AppendOutcome::Forbidden
    );
    let read = s
        .sync_read("bob", &[cursor("alice", GROUP, 0)], None, 100)
        .await
        .unwrap();
    let [SyncGroupResult::Messages { messages, more, .. }] = read.groups.as_slice() else {
        panic!("unexpected {:?}", read.groups)
    };
    assert_eq!(
        messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert!(!more);
    // Dropping again (still not a member) keeps the first bound.
    s.put_group("alice", GROUP, &strings(&["carol"]), NOW)
        .await
        .unwrap();
    assert_eq!(
        s.get_group("alice", GROUP)
            .await
            .unwrap()
            .unwrap()
            .access("bob"),
        Access::ReadUpTo(2)
    );
}

async fn re_added_member_regains_full_access(db: Db) {
    let s = &*db.store;
    group_of_four(s).await;
    s.put_group("alice", GROUP, &strings(&["carol"]), NOW)
        .await
        .unwrap();
    s.append(append_req("alice", "alice", b"1")).await.unwrap();
    s.put_group("alice", GROUP, &strings(&["bob", "carol"]), NOW)
        .await
        .unwrap();
    let group = s.get_group("alice", GROUP).await.unwrap().unwrap();
    assert_eq!(group.members, vec!["bob", "carol"]);
    assert!(group.former_members.is_empty());
    assert_eq!(
        s.append(append_req("alice", "bob", b"b")).await.unwrap(),
        AppendOutcome::Stored(2)
    );
}

async fn put_group_with_an_unknown_member_changes_nothing(db: Db) {
    let s = &*db.store;
    group_of_four(s).await;
    let err = s
        .put_group("alice", GROUP, &strings(&["bob", "zed", "yan"]), NOW)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::UnknownClients(ids) if ids == vec!["zed", "yan"]));
    assert_eq!(
        s.get_group("alice", GROUP).await.unwrap().unwrap().members,
        vec!["bob", "carol"]
    );
    assert!(
        s.put_group("alice", "cd", &strings(&["zed"]), NOW)
            .await
            .is_err()
    );
    assert!(s.get_group("alice", "cd").await.unwrap().is_none());
}

async fn claims_take_oldest_then_last_resort_then_report_missing(db: Db) {
    let s = &*db.store;
    register(s, &["alice", "bob", "carol"]).await;
    assert_eq!(
        s.add_key_packages(
            "bob",
            vec![b"b1".to_vec(), b"b2".to_vec()],
            Some(b"blr".to_vec()),
            10,
            NOW
        )
        .await
        .unwrap(),
        2
    );
    let ids = strings(&["bob", "carol"]);
    let first = s.claim_key_packages(&ids).await.unwrap();
    assert_eq!(first.key_packages.len(), 1);
    assert_eq!(
        (
            first.key_packages[0].key_package.0.as_slice(),
            first.key_packages[0].last_resort
        ),
        (&b"b1"[..], false)
    );
    assert_eq!(first.missing, vec!["carol"]);
    assert_eq!(
        s.claim_key_packages(&ids).await.unwrap().key_packages[0]
            .key_package
            .0,
        b"b2"
    );
    for _ in 0..2 {
        let lr = s.claim_key_packages(&ids).await.unwrap();
        assert_eq!(
            (
                lr.key_packages[0].key_package.0.as_slice(),
                lr.key_packages[0].last_resort
            ),
            (&b"blr"[..], true)
        );
    }
    let stats = s.client_stats("bob").await.unwrap().unwrap();
    assert_eq!(
        (stats.key_packages_available, stats.has_last_resort),
        (0, true)
    );
}

async fn claim_naming_an_unknown_client_claims_nothing(db: Db) {
    let s = &*db.store;
    register(s, &["alice", "bob"]).await;
    s.add_key_packages("bob", vec![b"b1".to_vec()], None, 10, NOW)
        .await
        .unwrap();
    let err = s
        .claim_key_packages(&strings(&["bob", "zed"]))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::UnknownClients(ids) if ids == vec!["zed"]));
    assert_eq!(
        s.client_stats("bob")
            .await
            .unwrap()
            .unwrap()
            .key_packages_available,
        1
    );
}

async fn concurrent_claims_never_hand_out_the_same_package(db: Db) {
    let s = db.store.clone();
    register(&*s, &["bob"]).await;
    let packages: Vec<Vec<u8>> = (0..40u32).map(|i| i.to_be_bytes().to_vec()).collect();
    s.add_key_packages("bob", packages, None, 100, NOW)
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            s.claim_key_packages(&strings(&["bob"])).await.unwrap()
        }));
    }
    let mut got = Vec::new();
    let mut missing = 0;
    for t in tasks {
        let outcome = t.await.unwrap();
        missing += outcome.missing.len();
        got.extend(outcome.key_packages.into_iter().map(|k| k.key_package.0));
    }
    got.sort();
    let before = got.len();
    got.dedup();
    assert_eq!((before, got.len(), missing), (40, 40, 10));
}

async fn key_package_stock_limit_stores_nothing_when_exceeded(db: Db) {
    let s = &*db.store;
    register(s, &["bob"]).await;
    assert_eq!(
        s.add_key_packages("bob", vec![vec![1]; 3], None, 4, NOW)
            .await
            .unwrap(),
        3
    );
    let err = s
        .add_key_packages("bob", vec![vec![2]; 2], Some(vec![9]), 4, NOW)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::TooManyKeyPackages { limit: 4 }));
    let stats = s.client_stats("bob").await.unwrap().unwrap();
    assert_eq!(
        (stats.key_packages_available, stats.has_last_resort),
        (3, false)
    );
    assert!(matches!(
        s.add_key_packages("zed", vec![vec![1]], None, 4, NOW).await,
        Err(StoreError::UnknownClients(_))
    ));
}

async fn welcomes_are_all_or_nothing(db: Db) {
    let s = &*db.store;
    register(s, &["alice", "bob"]).await;
    let err = s
        .post_welcomes(
            "alice",
            vec![
                NewWelcome::to_one("bob", b"w"),
                NewWelcome::to_one("zed", b"w"),
            ],
            NOW,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::UnknownClients(ids) if ids == vec!["zed"]));
    assert!(
        s.list_welcomes("bob", 0, 10)
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

async fn welcome_ids_increase_and_delete_drops_up_to_id(db: Db) {
    let s = &*db.store;
    register(s, &["alice", "bob", "carol"]).await;
    let ids = s
        .post_welcomes(
            "alice",
            vec![
                NewWelcome::to_one("bob", b"1"),
                NewWelcome::to_one("carol", b"2"),
                NewWelcome::to_one("bob", b"3"),
            ],
            NOW,
        )
        .await
        .unwrap();
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
    let bob = s.list_welcomes("bob", 0, 1).await.unwrap();
    assert_eq!(
        (bob.items[0].id, bob.items[0].from.as_str(), bob.more),
        (ids[0], "alice", true)
    );
    let rest = s.list_welcomes("bob", ids[0], 10).await.unwrap();
    assert_eq!(
        rest.items.iter().map(|w| w.id).collect::<Vec<_>>(),
        vec![ids[2]]
    );
    s.delete_welcomes("bob", ids[0]).await.unwrap();
    assert_eq!(s.list_welcomes("bob", 0, 10).await.unwrap().items.len(), 1);
    assert_eq!(
        s.list_welcomes("carol", 0, 10).await.unwrap().items.len(),
        1
    );
}

/// Rows and bytes of the welcome bodies table.
async fn welcome_bodies(s: &dyn Store) -> (i64, i64) {
    s.reads()
        .fetch_optional(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(data)), 0) FROM welcome_bodies",
            &[],
        )
        .await
        .unwrap()
        .unwrap()
}

fn fan_out(to: &[&str], data: &[u8]) -> NewWelcome {
    NewWelcome {
        to: strings(to),
        data: data.to_vec(),
    }
}

async fn welcome_fan_out_is_stored_once_and_goes_with_its_last_entry(db: Db) {
    let s = &*db.store;
    register(s, &["alice", "bob", "carol", "dave"]).await;
    let big = vec![7u8; 1000];
    let ids = s
        .post_welcomes(
            "alice",
            vec![
                fan_out(&["bob", "carol", "dave"], &big),
                NewWelcome::to_one("bob", b"solo"),
            ],
            NOW,
        )
        .await
        .unwrap();
    assert_eq!(ids.len(), 4);
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(
        welcome_bodies(s).await,
        (2, 1004),
        "each welcome stored once"
    );
    for (i, who) in ["bob", "carol", "dave"].into_iter().enumerate() {
        let inbox = s.list_welcomes(who, 0, 10).await.unwrap().items;
        assert_eq!(
            (inbox[0].id, inbox[0].from.as_str(), &inbox[0].data.0),
            (ids[i], "alice", &big),
            "{who}"
        );
    }
    assert_eq!(
        s.list_welcomes("bob", ids[0], 10).await.unwrap().items[0]
            .data
            .0,
        b"solo"
    );

    // One recipient's deletion keeps the body for the others.
    s.delete_welcomes("bob", ids[3]).await.unwrap();
    assert!(
        s.list_welcomes("bob", 0, 10)
            .await
            .unwrap()
            .items
            .is_empty()
    );
    assert_eq!(welcome_bodies(s).await, (1, 1000));
    assert_eq!(
        s.list_welcomes("carol", 0, 10).await.unwrap().items[0]
            .data
            .0,
        big
    );
    s.delete_welcomes("carol", ids[1]).await.unwrap();
    assert_eq!(welcome_bodies(s).await, (1, 1000));
    // The last one: with the account.
    s.delete_client("dave").await.unwrap();
    assert_eq!(welcome_bodies(s).await, (0, 0));
}

async fn welcome_bodies_go_when_recipients_delete_concurrently(db: Db) {
    let s = db.store.clone();
    let readers: Vec<String> = (0..8).map(|i| format!("r{i}")).collect();
    let names: Vec<&str> = readers.iter().map(String::as_str).collect();
    register(&*s, &names).await;
    register(&*s, &["alice"]).await;
    for round in 0..10u8 {
        let ids = s
            .post_welcomes("alice", vec![fan_out(&names, &[round; 64])], NOW)
            .await
            .unwrap();
        let last = *ids.iter().max().unwrap();
        let tasks: Vec<_> = readers
            .iter()
            .map(|r| {
                let (s, r) = (s.clone(), r.clone());
                tokio::spawn(async move { s.delete_welcomes(&r, last).await.unwrap() })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(welcome_bodies(&*s).await, (0, 0), "round {round}");
    }
}

async fn pruning_deletes_the_bodies_of_pruned_welcomes(db: Db) {
    let s = &*db.store;
    register(s, &["alice", "bob", "carol"]).await;
    s.post_welcomes(
        "alice",
        vec![fan_out(&["bob", "carol"], b"old")],
        NOW - 10_000,
    )
    .await
    .unwrap();
    s.post_welcomes("alice", vec![fan_out(&["bob", "carol"], b"new")], NOW)
        .await
        .unwrap();
    let stats = s.prune(NOW - 5_000, NOW - 5_000).await.unwrap();
    assert_eq!((stats.welcomes, stats.welcome_bodies), (2, 1));
    assert_eq!(welcome_bodies(s).await, (1, 3));
    for who in ["bob", "carol"] {
        let inbox = s.list_welcomes(who, 0, 10).await.unwrap().items;
        assert_eq!(inbox.len(), 1);
        assert_eq!(inbox[0].data.0, b"new");
    }
}

async fn delete_group_removes_its_messages_and_idempotency_keys(db: Db) {
    let s = &*db.store;
    group_of_four(s).await;
    s.append(keyed(append_req("alice", "bob", b"x"), "k"))
        .await
        .unwrap();
    assert!(s.delete_group("alice", GROUP).await.unwrap());
    assert!(!s.delete_group("alice", GROUP).await.unwrap());
    assert!(s.get_group("alice", GROUP).await.unwrap().is_none());
    s.put_group("alice", GROUP, &strings(&["bob"]), NOW)
        .await
        .unwrap();
    assert!(all_seqs(s, "alice").await.is_empty());
    assert_eq!(
        s.append(keyed(append_req("alice", "bob", b"x"), "k"))
            .await
            .unwrap(),
        AppendOutcome::Stored(1)
    );
}

async fn delete_client_cascades_to_everything_it_owns(db: Db) {
    let s = &*db.store;
    group_of_four(s).await;
    register(s, &["erin"]).await;
    s.put_group("erin", "cd", &strings(&["alice"]), NOW)
        .await
        .unwrap();
    s.append(append_req("alice", "alice", b"a")).await.unwrap();
    s.add_key_packages("alice", vec![vec![1]], None, 10, NOW)
        .await
        .unwrap();
    s.post_welcomes("bob", vec![NewWelcome::to_one("alice", &[1])], NOW)
        .await
        .unwrap();
    s.delete_client("alice").await.unwrap();
    assert!(
        s.client_by_token_hash(token_hash("alice"))
            .await
            .unwrap()
            .is_none()
    );
    assert!(s.client_stats("alice").await.unwrap().is_none());
    assert!(s.get_group("alice", GROUP).await.unwrap().is_none());
    assert!(
        s.list_welcomes("alice", 0, 10)
            .await
            .unwrap()
            .items
            .is_empty()
    );
    assert!(
        s.get_group("erin", "cd")
            .await
            .unwrap()
            .unwrap()
            .members
            .is_empty()
    );
    // The id is free again, with nothing of the old account attached.
    register(s, &["alice"]).await;
    assert_eq!(
        s.client_stats("alice")
            .await
            .unwrap()
            .unwrap()
            .key_packages_available,
        0
    );
}

async fn client_is_found_by_token_hash_and_ids_are_unique(db: Db) {
    let s = &*db.store;
    register(s, &["alice"]).await;
    let found = s
        .client_by_token_hash(token_hash("alice"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (found.client_id.as_str(), found.token_hash),
        ("alice", token_hash("alice"))
    );
    assert!(
        s.client_by_token_hash(token_hash("nobody"))
            .await
            .unwrap()
            .is_none()
    );
    assert!(matches!(
        s.create_client("alice", token_hash("other"), NOW).await,
        Err(StoreError::Conflict)
    ));
    assert_eq!(
        s.client_stats("alice").await.unwrap().unwrap().created_at,
        NOW
    );
}

async fn sync_reports_news_and_forbidden_groups_and_skips_unknown_ones(db: Db) {
    let s = &*db.store;
    group_of_four(s).await;
    register(s, &["erin"]).await;
    s.put_group("erin", "cd", &[], NOW).await.unwrap();
    s.put_group("bob", "ef", &[], NOW).await.unwrap();
    s.append(append_req("alice", "alice", b"1")).await.unwrap();
    s.append(append_req("alice", "alice", b"2")).await.unwrap();
    s.post_welcomes("alice", vec![NewWelcome::to_one("bob", b"w")], NOW)
        .await
        .unwrap();
    let cursors = [
        cursor("alice", GROUP, 1), // news: seq 2
        cursor("erin", "cd", 0),   // forbidden
        cursor("nobody", "99", 0), // does not exist
        cursor("bob", "ef", 0),    // own, nothing new
    ];
    let read = s.sync_read("bob", &cursors, Some(0), 100).await.unwrap();
    assert_eq!(read.groups.len(), 2);
    let SyncGroupResult::Messages {
        cursor_index: 0,
        messages,
        more: false,
    } = &read.groups[0]
    else {
        panic!("unexpected {:?}", read.groups[0])
    };
    assert_eq!(
        messages
            .iter()
            .map(|m| (m.seq, m.data.0.clone()))
            .collect::<Vec<_>>(),
        vec![(2, b"2".to_vec())]
    );
    assert_eq!(
        read.groups[1],
        SyncGroupResult::Forbidden { cursor_index: 1 }
    );
    assert_eq!(read.welcomes.unwrap().items.len(), 1);
    assert!(
        s.sync_read("bob", &cursors, None, 100)
            .await
            .unwrap()
            .welcomes
            .is_none()
    );
}

async fn sync_limit_caps_the_total_number_of_messages(db: Db) {
    let s = &*db.store;
    group_of_four(s).await;
    s.put_group("alice", "cd", &strings(&["bob"]), NOW)
        .await
        .unwrap();
    for _ in 0..3 {
        s.append(append_req("alice", "alice", b"m")).await.unwrap();
        let mut other = append_req("alice", "alice", b"n");
        other.group_id = "cd".into();
        s.append(other).await.unwrap();
    }
    let cursors = [cursor("alice", GROUP, 0), cursor("alice", "cd", 0)];
    let read = s.sync_read("bob", &cursors, None, 4).await.unwrap();
    let counts: Vec<(usize, bool)> = read
        .groups
        .iter()
        .map(|g| match g {
            SyncGroupResult::Messages { messages, more, .. } => (messages.len(), *more),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(counts, vec![(3, false), (1, true)]);
}

async fn sync_over_a_thousand_quiet_groups_is_fast(db: Db) {
    let s = &*db.store;
    register(s, &["alice", "bob"]).await;
    let mut cursors = Vec::new();
    for i in 0..1000u32 {
        // 32-byte ids, as DMLS Send Groups have.
        let gid = format!("{i:064x}");
        s.put_group("alice", &gid, &strings(&["bob"]), NOW)
            .await
            .unwrap();
        let mut req = append_req("alice", "alice", b"m");
        req.group_id = gid.clone();
        s.append(req).await.unwrap();
        cursors.push(cursor("alice", &gid, 1));
    }
    let mut times = Vec::new();
    for _ in 0..21 {
        let start = Instant::now();
        let read = s.sync_read("bob", &cursors, Some(0), 500).await.unwrap();
        times.push(start.elapsed());
        assert!(read.groups.is_empty());
    }
    times.sort();
    let p50 = times[times.len() / 2];
    eprintln!(
        "{}: sync over 1000 quiet groups p50 = {p50:?}",
        db.store.backend()
    );
    // A guard against a query plan that reads group by group (a thousand round trips), not the
    // speed target: that is measured by the relay_load benchmark on a quiet machine
    // (BENCHMARKS.md), while tests share the CPU with each other.
    assert!(p50 < Duration::from_millis(60), "p50 {p50:?}");
}

async fn concurrent_writers_and_paging_readers_see_every_seq_exactly_once(db: Db) {
    const WRITERS: u64 = 8;
    const EACH: u64 = 500;
    const TOTAL: u64 = WRITERS * EACH;
    let s = db.store.clone();
    group_of_four(&*s).await;
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let s = s.clone();
        writers.push(tokio::spawn(async move {
            let sender = ["alice", "bob", "carol"][(w % 3) as usize];
            for i in 0..EACH {
                let out = s
                    .append(append_req("alice", sender, format!("{w}-{i}").as_bytes()))
                    .await
                    .unwrap();
                assert!(matches!(out, AppendOutcome::Stored(_)));
            }
        }));
    }
    let mut readers = Vec::new();
    for r in 0..4 {
        let s = s.clone();
        readers.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut after = 0;
            let deadline = Instant::now() + Duration::from_secs(120);
            while after < TOTAL {
                assert!(Instant::now() < deadline, "reader {r} stuck at {after}");
                let batch: Vec<u64> = if r % 2 == 0 {
                    let page = s
                        .read_messages("alice", GROUP, after, None, 100)
                        .await
                        .unwrap();
                    page.items.iter().map(|m| m.seq).collect()
                } else {
                    let read = s
                        .sync_read("dave-is-not-reading", &[], None, 100)
                        .await
                        .unwrap();
                    assert!(read.groups.is_empty());
                    let read = s
                        .sync_read("bob", &[cursor("alice", GROUP, after)], None, 100)
                        .await
                        .unwrap();
                    match read.groups.first() {
                        Some(SyncGroupResult::Messages { messages, .. }) => {
                            messages.iter().map(|m| m.seq).collect()
                        }
                        _ => Vec::new(),
                    }
                };
                if batch.is_empty() {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                if let Some(last) = batch.last() {
                    after = *last;
                }
                seen.extend(batch);
            }
            seen
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    let expected: Vec<u64> = (1..=TOTAL).collect();
    for r in readers {
        assert_eq!(r.await.unwrap(), expected);
    }
}

async fn commits_publish_events(db: Db) {
    let s = &*db.store;
    group_of_four(s).await;
    let group = db.notifier.subscribe(vec![alice_group_key()]);
    let inbox = db.notifier.subscribe(vec![EventKey::Inbox {
        client_id: "carol".into(),
    }]);
    let elsewhere = db.notifier.subscribe(vec![EventKey::Inbox {
        client_id: "bob".into(),
    }]);
    s.append(append_req("alice", "bob", b"m")).await.unwrap();
    s.post_welcomes("alice", vec![NewWelcome::to_one("carol", &[1])], NOW)
        .await
        .unwrap();
    for woken in [group.notified(), inbox.notified()] {
        tokio::time::timeout(Duration::from_secs(2), woken)
            .await
            .unwrap();
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(50), elsewhere.notified())
            .await
            .is_err(),
        "nothing was stored for bob's inbox"
    );
}

async fn prune_removes_old_messages_but_never_reuses_seqs(db: Db) {
    let s = &*db.store;
    group_of_four(s).await;
    let mut old = keyed(append_req("alice", "bob", b"old"), "k");
    old.received_at = NOW - 10_000;
    s.append(old).await.unwrap();
    s.append(append_req("alice", "bob", b"new")).await.unwrap();
    s.post_welcomes("alice", vec![NewWelcome::to_one("bob", &[1])], NOW - 10_000)
        .await
        .unwrap();
    let stats = s.prune(NOW - 5_000, NOW - 5_000).await.unwrap();
    assert_eq!(
        (stats.messages, stats.welcomes, stats.idempotency_keys),
        (1, 1, 1)
    );
    assert_eq!(all_seqs(s, "alice").await, vec![2]);
    assert_eq!(
        s.append(append_req("alice", "bob", b"next")).await.unwrap(),
        AppendOutcome::Stored(3)
    );
    // A reader behind the pruned range still gets what is left.
    let read = s
        .sync_read("bob", &[cursor("alice", GROUP, 0)], None, 1)
        .await
        .unwrap();
    let [
        SyncGroupResult::Messages {
            messages,
            more: true,
            ..
        },
    ] = read.groups.as_slice()
    else {
        panic!("unexpected {:?}", read.groups)
    };
    assert_eq!(messages[0].seq, 2);
}

async fn reopening_keeps_the_data(db: Db) {
    let s = &*db.store;
    group_of_four(s).await;
    s.append(append_req("alice", "bob", b"m")).await.unwrap();
    s.close().await;
    let (again, _) = open(&db.url).await;
    assert_eq!(all_seqs(&*again, "alice").await, vec![1]);
    again.close().await;
}

// ---------------------------------------------------------------- single-backend tests

#[tokio::test]
async fn open_rejects_an_unsupported_database_url() {
    let err = store::open(
        &testing::test_config("mysql://root:pw@localhost/db"),
        Notifier::new(),
    )
    .await
    .err()
    .unwrap();
    let text = format!("{err:#}");
    assert!(
        text.contains("sqlite://") && !text.contains("pw@"),
        "{text}"
    );
}

#[tokio::test]
async fn open_explains_an_unreachable_postgres_server() {
    let err = store::open(
        &testing::test_config("postgres://u:pw@127.0.0.1:1/db"),
        Notifier::new(),
    )
    .await
    .err()
    .unwrap();
    let text = format!("{err:#}");
    assert!(
        text.contains("check that the server runs") && !text.contains("pw@"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_events_reach_another_relay_process_within_100_ms() {
    let Some(url) = testing::postgres_test_url().await else {
        testing::skip_notice("postgres_events_reach_another_relay_process_within_100_ms");
        return;
    };
    let (one, _) = open(&url).await;
    let (other, other_notifier) = open(&url).await;
    group_of_four(&*one).await;
    let events = other_notifier.subscribe(vec![alice_group_key()]);
    let start = Instant::now();
    one.append(append_req("alice", "bob", b"m")).await.unwrap();
    tokio::time::timeout(Duration::from_secs(1), events.notified())
        .await
        .unwrap();
    assert!(
        start.elapsed() < Duration::from_millis(100),
        "{:?}",
        start.elapsed()
    );
    one.close().await;
    other.close().await;
}

/// What an append to alice's group [`GROUP`] wakes.
fn alice_group_key() -> EventKey {
    EventKey::Group {
        owner: "alice".into(),
        group_id: GROUP.into(),
    }
}

/// The LISTEN connections of the stores open on the current database.
const LISTENER_PIDS: &str = "SELECT pid FROM pg_stat_activity \
     WHERE datname = current_database() AND application_name = $1";

/// When a store's LISTEN connection drops, it connects again, wakes every waiter with
/// `Resync` (NOTIFYs sent meanwhile were lost) and then forwards events as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_listener_reconnects_and_wakes_everyone_after_its_connection_drops() {
    let Some(url) = testing::postgres_test_url().await else {
        testing::skip_notice(
            "postgres_listener_reconnects_and_wakes_everyone_after_its_connection_drops",
        );
        return;
    };
    let (one, _) = open(&url).await;
    let (other, other_notifier) = open(&url).await;
    group_of_four(&*one).await;
    let admin = sqlx::PgPool::connect(&url).await.unwrap();
    let old: Vec<(i32,)> = sqlx::query_as(LISTENER_PIDS)
        .bind(store::postgres::LISTEN_APPLICATION_NAME)
        .fetch_all(&admin)
        .await
        .unwrap();
    assert_eq!(old.len(), 2, "one LISTEN connection per store");
    // Subscribed to nothing that is stored: only a Resync wakes it.
    let unrelated = other_notifier.subscribe(vec![EventKey::Inbox {
        client_id: "nobody".into(),
    }]);
    // pg_terminate_backend with a timeout waits until the backends are gone.
    let killed: Vec<(bool,)> = sqlx::query_as(
        "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity \
         WHERE datname = current_database() AND application_name = $1",
    )
    .bind(store::postgres::LISTEN_APPLICATION_NAME)
    .fetch_all(&admin)
    .await
    .unwrap();
    assert_eq!(killed, vec![(true,), (true,)]);
    tokio::time::timeout(Duration::from_secs(10), unrelated.notified())
        .await
        .expect("a Resync after the LISTEN connection dropped");
    let new: Vec<(i32,)> = sqlx::query_as(LISTENER_PIDS)
        .bind(store::postgres::LISTEN_APPLICATION_NAME)
        .fetch_all(&admin)
        .await
        .unwrap();
    assert!(
        new.iter().any(|pid| !old.contains(pid)),
        "a new LISTEN connection: {old:?} -> {new:?}"
    );
    // Resync comes once the new connection LISTENs: what is stored now is NOTIFYed again.
    let events = other_notifier.subscribe(vec![alice_group_key()]);
    one.append(append_req("alice", "bob", b"m")).await.unwrap();
    tokio::time::timeout(Duration::from_secs(2), events.notified())
        .await
        .expect("events flow again after the reconnect");
    admin.close().await;
    one.close().await;
    other.close().await;
}

/// Throughput of 1 KiB appends from 256 concurrent clients (group commit). A measurement, not
/// a check: `cargo test -p dmls-relay --test store_contract append_throughput -- --ignored --nocapture`.
async fn append_throughput(db: Db) {
    let s = db.store.clone();
    group_of_four(&*s).await;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..256 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..100 {
                s.append(append_req("alice", "bob", &[7u8; 1024]))
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let rate = 25_600.0 / start.elapsed().as_secs_f64();
    eprintln!("{}: {rate:.0} appends/s of 1 KiB", s.backend());
}

#[tokio::test(flavor = "multi_thread")]
#[ignore]
async fn append_throughput_sqlite() {
    let db = sqlite_db().await;
    let store = db.store.clone();
    append_throughput(db).await;
    store.close().await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore]
async fn append_throughput_postgres() {
    let Some(db) = postgres_db("append_throughput_postgres").await else {
        return;
    };
    let store = db.store.clone();
    append_throughput(db).await;
    store.close().await;
}
