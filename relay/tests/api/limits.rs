//! Request rate limits: per client, and registrations per IP address.

use crate::common::*;
use reqwest::StatusCode;
use serde_json::json;

/// Registers `client_id` with this `X-Forwarded-For` (none for `None`); returns the status.
async fn register_via(relay: &Relay, client_id: &str, forwarded_for: Option<&str>) -> StatusCode {
    let mut request = relay
        .post("/v1/clients")
        .json(&json!({ "client_id": client_id }));
    if let Some(value) = forwarded_for {
        request = request.header("x-forwarded-for", value);
    }
    request.send().await.unwrap().status()
}

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

    async fn clients_behind_a_trusted_proxy_are_limited_apart_and_others_cannot_spoof(db: Db) {
        // The tests call from 127.0.0.1: here a trusted proxy, behind a trusted load balancer
        // in 10.9.0.0/16.
        let relay = db.start(&["--registrations-per-minute", "1", "--trusted-proxies", "10.9.0.0/16,127.0.0.1"]).await;
        let created = StatusCode::CREATED;
        let limited = StatusCode::TOO_MANY_REQUESTS;
        assert_eq!(register_via(&relay, "a1", Some("203.0.113.1")).await, created);
        assert_eq!(register_via(&relay, "a2", Some("203.0.113.2")).await, created, "another client, its own limit");
        assert_eq!(register_via(&relay, "a3", Some("203.0.113.1")).await, limited, "the first client again");
        // A client cannot pose as another by writing addresses in front of the one the proxy adds.
        assert_eq!(register_via(&relay, "a4", Some("198.51.100.9, 203.0.113.1")).await, limited);
        // Through the load balancer and the proxy; an IPv6 client.
        assert_eq!(register_via(&relay, "a5", Some("203.0.113.2, 10.9.0.3")).await, limited);
        assert_eq!(register_via(&relay, "a6", Some("2001:db8::1, 10.9.0.3")).await, created);
        // A malformed header counts as the proxy's own address (no error), as does no header.
        assert_eq!(register_via(&relay, "a7", Some("203.0.113.3, not-an-address")).await, created);
        assert_eq!(register_via(&relay, "a8", None).await, limited);
        relay.stop().await;

        // Now 127.0.0.1 is not a trusted proxy: its X-Forwarded-For is ignored.
        let relay = db.start(&["--registrations-per-minute", "1", "--trusted-proxies", "10.0.0.0/8"]).await;
        assert_eq!(register_via(&relay, "b1", Some("203.0.113.1")).await, created);
        assert_eq!(register_via(&relay, "b2", Some("203.0.113.2")).await, limited, "spoofing gains nothing");
        assert_eq!(register_via(&relay, "b3", None).await, limited);
    }
}
