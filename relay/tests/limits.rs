//! Request rate limits: per client, and registrations per IP address.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod common;

use common::*;
use reqwest::StatusCode;

backend_tests! {
    async fn a_client_above_its_rate_is_429_with_retry_after(db: Db) {
        let relay = db.start(&["--rate-limit-per-second", "1", "--rate-limit-burst", "3"]).await;
        let alice = relay.register("alice").await;
        let mut limited = None;
        for _ in 0..10 {
            let resp = alice.get("/v1/clients/me").send().await.unwrap();
            if resp.status() == StatusCode::TOO_MANY_REQUESTS {
                limited = Some(resp);
                break;
            }
            assert_eq!(resp.status(), StatusCode::OK);
        }
        let resp = limited.expect("a 429 within 10 quick requests");
        let retry_after: u64 = resp.headers()["retry-after"].to_str().unwrap().parse().expect("Retry-After in seconds");
        assert!((1..=60).contains(&retry_after), "Retry-After {retry_after}");
        expect_problem(resp, StatusCode::TOO_MANY_REQUESTS).await;
    }

    async fn one_clients_rate_limit_does_not_limit_another(db: Db) {
        let relay = db.start(&["--rate-limit-per-second", "1", "--rate-limit-burst", "3"]).await;
        let alice = relay.register("alice").await;
        let bob = relay.register("bob").await;
        for _ in 0..10 {
            alice.get("/v1/clients/me").send().await.unwrap();
        }
        assert_eq!(bob.get("/v1/clients/me").send().await.unwrap().status(), StatusCode::OK);
    }

    async fn a_rate_limited_post_stores_nothing(db: Db) {
        let relay = db.start(&["--rate-limit-per-second", "1", "--rate-limit-burst", "3"]).await;
        let alice = relay.register("alice").await;
        alice.create_group(&gid(1), &[]).await;
        let mut stored = 0;
        let mut refused = 0;
        for _ in 0..8 {
            match alice.try_post("alice", &gid(1), b"m").await.status() {
                StatusCode::CREATED => stored += 1,
                StatusCode::TOO_MANY_REQUESTS => refused += 1,
                other => panic!("unexpected {other}"),
            }
        }
        assert!(refused > 0);
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
        assert_eq!(alice.group("alice", &gid(1)).await.last_seq, stored);
    }

    async fn registrations_above_the_per_ip_limit_are_429_with_retry_after(db: Db) {
        let relay = db.start(&["--registrations-per-minute", "2"]).await;
        relay.register("c1").await;
        relay.register("c2").await;
        let resp = relay.try_register("c3").await;
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(resp.headers().get("retry-after").is_some());
        expect_problem(resp, StatusCode::TOO_MANY_REQUESTS).await;
        // Nothing was registered: c3 cannot authenticate with any token, and its id stays free
        // on a relay without the limit (checked by re-registering after a restart).
        relay.stop().await;
        let relay = db.relay().await;
        relay.register("c3").await;
    }
}
