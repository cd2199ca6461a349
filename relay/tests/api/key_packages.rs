//! `POST /v1/key-packages` and `POST /v1/key-packages/claim`.

use std::collections::HashSet;

use crate::common::*;
use reqwest::StatusCode;

backend_tests! {
    async fn upload_answers_201_with_the_stock_size(db: Db) {
        let relay = db.relay().await;
        let alice = relay.register("alice").await;
        assert_eq!(alice.upload(&[b"kp1", b"kp2", b"kp3"], None).await, 3);
        assert_eq!(alice.upload(&[b"kp4"], None).await, 4);
        assert_eq!(alice.me().await.key_packages_available, 4);
    }

    async fn a_claim_returns_one_package_and_removes_it(db: Db) {
        let relay = db.relay().await;
        let alice = relay.register("alice").await;
        let bob = relay.register("bob").await;
        alice.upload(&[b"kp1", b"kp2"], None).await;
        let claimed = bob.claim(&["alice"]).await;
        assert_eq!(claimed.key_packages.len(), 1);
        assert!(claimed.missing.is_empty());
        let kp = &claimed.key_packages[0];
        assert_eq!(kp.client_id, "alice");
        assert!(!kp.last_resort);
        assert!(kp.key_package.0 == b"kp1" || kp.key_package.0 == b"kp2");
        assert_eq!(alice.me().await.key_packages_available, 1);
    }

    async fn claims_hand_out_each_package_once(db: Db) {
        let relay = db.relay().await;
        let alice = relay.register("alice").await;
        let bob = relay.register("bob").await;
        alice.upload(&[b"kp1", b"kp2", b"kp3"], None).await;
        let mut got = HashSet::new();
        for _ in 0..3 {
            got.insert(bob.claim(&["alice"]).await.key_packages[0].key_package.0.clone());
        }
        assert_eq!(got.len(), 3);
        assert_eq!(bob.claim(&["alice"]).await.missing, vec!["alice".to_string()]);
    }

    async fn a_claim_covers_several_clients_at_once(db: Db) {
        let relay = db.relay().await;
        let alice = relay.register("alice").await;
        let bob = relay.register("bob").await;
        let carol = relay.register("carol").await;
        alice.upload(&[b"alice-kp"], None).await;
        bob.upload(&[b"bob-kp"], None).await;
        let claimed = carol.claim(&["alice", "bob", "carol"]).await;
        let mut pairs: Vec<_> =
            claimed.key_packages.iter().map(|k| (k.client_id.clone(), k.key_package.0.clone())).collect();
        pairs.sort();
        assert_eq!(pairs, vec![("alice".into(), b"alice-kp".to_vec()), ("bob".into(), b"bob-kp".to_vec())]);
        assert_eq!(claimed.missing, vec!["carol".to_string()]);
    }

    async fn the_last_resort_package_is_handed_out_flagged_and_kept_when_the_stock_is_empty(db: Db) {
        let relay = db.relay().await;
        let alice = relay.register("alice").await;
        let bob = relay.register("bob").await;
        alice.upload(&[b"kp1"], Some(b"last")).await;
        let first = bob.claim(&["alice"]).await.key_packages;
        assert_eq!((first[0].key_package.0.as_slice(), first[0].last_resort), (b"kp1".as_slice(), false));
        for _ in 0..2 {
            let again = bob.claim(&["alice"]).await;
            assert!(again.missing.is_empty());
            assert_eq!(again.key_packages[0].key_package.0, b"last");
            assert!(again.key_packages[0].last_resort);
        }
        let me = alice.me().await;
        assert_eq!((me.key_packages_available, me.has_last_resort), (0, true));
    }

    async fn a_new_last_resort_package_replaces_the_old_one(db: Db) {
        let relay = db.relay().await;
        let alice = relay.register("alice").await;
        let bob = relay.register("bob").await;
        alice.upload(&[], Some(b"old")).await;
        alice.upload(&[], Some(b"new")).await;
        assert_eq!(bob.claim(&["alice"]).await.key_packages[0].key_package.0, b"new");
    }

    async fn a_null_last_resort_keeps_the_previous_one(db: Db) {
        let relay = db.relay().await;
        let alice = relay.register("alice").await;
        let bob = relay.register("bob").await;
        alice.upload(&[], Some(b"last")).await;
        alice.upload(&[b"kp1"], None).await;
        assert!(alice.me().await.has_last_resort);
        bob.claim(&["alice"]).await;
        assert_eq!(bob.claim(&["alice"]).await.key_packages[0].key_package.0, b"last");
    }

    async fn a_client_with_no_packages_is_listed_as_missing(db: Db) {
        let relay = db.relay().await;
        relay.register("alice").await;
        let bob = relay.register("bob").await;
        let claimed = bob.claim(&["alice"]).await;
        assert!(claimed.key_packages.is_empty());
        assert_eq!(claimed.missing, vec!["alice".to_string()]);
    }

    async fn claiming_for_an_unknown_client_is_404_naming_it_and_claims_nothing(db: Db) {
        let relay = db.relay().await;
        let alice = relay.register("alice").await;
        let bob = relay.register("bob").await;
        alice.upload(&[b"kp1"], None).await;
        let problem = expect_problem(bob.try_claim(&["alice", "nobody"]).await, StatusCode::NOT_FOUND).await;
        assert!(problem.detail.contains("nobody"), "{problem:?}");
        assert_eq!(alice.me().await.key_packages_available, 1);
    }

    async fn two_concurrent_claimers_never_get_the_same_package(db: Db) {
        let relay = db.relay().await;
        let alice = relay.register("alice").await;
        let packages: Vec<Vec<u8>> = (0..40).map(|i| format!("kp{i}").into_bytes()).collect();
        let refs: Vec<&[u8]> = packages.iter().map(Vec::as_slice).collect();
        alice.upload(&refs, None).await;
        let claimers = [relay.register("bob").await, relay.register("carol").await];
        let tasks = claimers.map(|c| {
            tokio::spawn(async move {
                let mut got = Vec::new();
                for _ in 0..25 {
                    let claimed = c.claim(&["alice"]).await;
                    got.extend(claimed.key_packages.into_iter().map(|k| k.key_package.0));
                }
                got
            })
        });
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        let distinct: HashSet<_> = all.iter().collect();
        assert_eq!(all.len(), 40, "every package handed out once, then missing");
        assert_eq!(distinct.len(), 40, "no package handed out twice");
    }

    async fn uploading_beyond_the_stock_limit_is_refused_and_stores_nothing(db: Db) {
        let relay = db.start(&["--max-key-packages", "3"]).await;
        let alice = relay.register("alice").await;
        alice.upload(&[b"kp1", b"kp2"], None).await;
        let resp = alice.try_upload(&[b"kp3", b"kp4"], Some(b"lr")).await;
        let status = resp.status();
        assert!(status == StatusCode::CONFLICT || status == StatusCode::PAYLOAD_TOO_LARGE, "got {status}");
        expect_problem(resp, status).await;
        let me = alice.me().await;
        assert_eq!((me.key_packages_available, me.has_last_resort), (2, false));
        // Filling up to the limit exactly is fine.
        assert_eq!(alice.upload(&[b"kp3"], None).await, 3);
    }

    async fn a_key_package_above_the_size_limit_is_413_and_stores_nothing(db: Db) {
        let relay = db.start(&["--max-key-package-bytes", "100"]).await;
        let alice = relay.register("alice").await;
        let big = vec![7u8; 101];
        expect_problem(alice.try_upload(&[b"small", &big], None).await, StatusCode::PAYLOAD_TOO_LARGE).await;
        expect_problem(alice.try_upload(&[], Some(&big)).await, StatusCode::PAYLOAD_TOO_LARGE).await;
        let me = alice.me().await;
        assert_eq!((me.key_packages_available, me.has_last_resort), (0, false));
        assert_eq!(alice.upload(&[&[7u8; 100]], None).await, 1);
    }

    async fn claiming_more_than_1000_ids_is_400(db: Db) {
        let relay = db.relay().await;
        let alice = relay.register("alice").await;
        alice.upload(&[b"kp1"], None).await;
        let ids: Vec<String> = std::iter::repeat_n("alice".to_string(), 1001).collect();
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        expect_problem(alice.try_claim(&refs).await, StatusCode::BAD_REQUEST).await;
        assert_eq!(alice.me().await.key_packages_available, 1);
    }
}
