//! `/healthz`, `/readyz`, `/metrics`, `/openapi.json` and `/`.

use crate::common::*;
use reqwest::StatusCode;
use serde_json::Value;

/// Every route of API.md, as (method, OpenAPI path).
const ROUTES: &[(&str, &str)] = &[
    ("post", "/v1/clients"),
    ("get", "/v1/clients/me"),
    ("delete", "/v1/clients/me"),
    ("post", "/v1/key-packages"),
    ("post", "/v1/key-packages/claim"),
    ("post", "/v1/welcomes"),
    ("get", "/v1/welcomes"),
    ("delete", "/v1/welcomes"),
    ("put", "/v1/groups/{owner}/{group_id}"),
    ("get", "/v1/groups/{owner}/{group_id}"),
    ("delete", "/v1/groups/{owner}/{group_id}"),
    ("post", "/v1/groups/{owner}/{group_id}/messages"),
    ("get", "/v1/groups/{owner}/{group_id}/messages"),
    ("post", "/v1/sync"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/openapi.json"),
    ("get", "/"),
];

backend_tests! {
    async fn healthz_is_200_without_a_token(db: Db) {
        let relay = db.relay().await;
        assert_eq!(relay.get("/healthz").send().await.unwrap().status(), StatusCode::OK);
    }

    async fn readyz_is_200_when_the_database_answers(db: Db) {
        let relay = db.relay().await;
        assert_eq!(relay.get("/readyz").send().await.unwrap().status(), StatusCode::OK);
    }

    async fn metrics_expose_the_named_families(db: Db) {
        let relay = db.relay().await;
        let alice = relay.register("alice").await;
        alice.create_group(&gid(1), &[]).await;
        alice.post_message("alice", &gid(1), b"counted").await;
        alice.me().await;
        let resp = relay.get("/metrics").send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let content_type = resp.headers()["content-type"].to_str().unwrap().to_string();
        assert!(content_type.starts_with("text/plain"), "{content_type}");
        let text = resp.text().await.unwrap();
        let families: Vec<(&str, &str)> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_once(' '))
            .collect();
        for (name, kind) in [
            ("dmls_relay_http_requests_total", "counter"),
            ("dmls_relay_http_request_duration_seconds", "histogram"),
            ("dmls_relay_messages_stored_total", "counter"),
            ("dmls_relay_long_polls_waiting", "gauge"),
            ("dmls_relay_db_pool_connections", "gauge"),
        ] {
            assert!(families.contains(&(name, kind)), "no {kind} {name} in:\n{text}");
        }
        // Requests are counted by route (its template) and status.
        assert!(
            text.lines().any(|l| l.starts_with("dmls_relay_http_requests_total{")
                && l.contains("status=\"201\"")
                && l.contains("/v1/groups/{owner}/{group_id}/messages")),
            "no request count for the message route with status 201 in:\n{text}"
        );
    }

    async fn openapi_json_is_openapi_3_1_and_describes_every_route(db: Db) {
        let relay = db.relay().await;
        let resp = relay.get("/openapi.json").send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let doc: Value = resp.json().await.unwrap();
        let version = doc["openapi"].as_str().unwrap();
        assert!(version.starts_with("3.1"), "openapi {version}");
        let paths = doc["paths"].as_object().expect("paths");
        let missing: Vec<String> = ROUTES
            .iter()
            .filter(|(method, path)| paths.get(*path).and_then(|p| p.get(*method)).is_none())
            .map(|(method, path)| format!("{method} {path}"))
            .collect();
        assert!(missing.is_empty(), "routes missing from /openapi.json: {missing:?}\npaths: {:?}", paths.keys().collect::<Vec<_>>());
    }

    async fn the_front_page_names_the_version_and_the_backend(db: Db) {
        let relay = db.relay().await;
        let resp = relay.get("/").send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let text = resp.text().await.unwrap();
        assert!(text.contains(env!("CARGO_PKG_VERSION")), "{text}");
        let backend = match db.backend {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        };
        assert!(text.to_lowercase().contains(backend), "{text}");
    }

    async fn an_unknown_route_is_a_404_problem(db: Db) {
        let relay = db.relay().await;
        let alice = relay.register("alice").await;
        let resp = alice.get("/v1/nothing-here").send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    }

    async fn a_relay_restarted_on_the_same_database_keeps_its_data(db: Db) {
        let relay = db.relay().await;
        let alice = relay.register("alice").await;
        alice.create_group(&gid(1), &[]).await;
        alice.post_message("alice", &gid(1), b"durable").await;
        relay.stop().await;
        let relay = db.relay().await;
        let alice = relay.client("alice", &alice.token);
        assert_eq!(alice.all_seqs("alice", &gid(1)).await, vec![1]);
        assert_eq!(alice.post_message("alice", &gid(1), b"next").await, 2);
    }
}

/// When the database goes away, `/readyz` and every route that needs it answer 503 (a problem,
/// never a hang or a 500), while `/healthz` stays 200. Dropping a database under a running relay
/// is only possible on PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_database_makes_readyz_and_routes_answer_503_on_postgres() {
    use sqlx::{Connection as _, Executor as _};
    let Some(db) =
        Db::postgres("operations::a_lost_database_makes_readyz_and_routes_answer_503_on_postgres")
            .await
    else {
        return;
    };
    let relay = db.relay().await;
    let alice = relay.register("alice").await;
    let name = db
        .url
        .rsplit('/')
        .next()
        .unwrap()
        .split('?')
        .next()
        .unwrap()
        .to_string();
    let base = std::env::var("DMLS_TEST_DATABASE_URL").unwrap();
    // Refuse new connections and end the relay's: the database is gone for the relay. (DROP
    // DATABASE would do too, but it waits for a checkpoint, which can take long on a busy server.)
    let mut admin = sqlx::PgConnection::connect(&base).await.unwrap();
    for sql in [
        format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false"),
        format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"),
    ] {
        admin.execute(sqlx::AssertSqlSafe(sql)).await.unwrap();
    }
    assert_eq!(
        relay.get("/healthz").send().await.unwrap().status(),
        StatusCode::OK
    );
    // A readiness probe or a client must not hang on a dead database.
    let quick = std::time::Duration::from_secs(5);
    let readyz = relay.get("/readyz").timeout(quick).send().await.unwrap();
    expect_problem(readyz, StatusCode::SERVICE_UNAVAILABLE).await;
    let me = alice
        .get("/v1/clients/me")
        .timeout(quick)
        .send()
        .await
        .unwrap();
    expect_problem(me, StatusCode::SERVICE_UNAVAILABLE).await;
    let register = relay
        .post("/v1/clients")
        .timeout(quick)
        .json(&serde_json::json!({ "client_id": "bob" }));
    expect_problem(
        register.send().await.unwrap(),
        StatusCode::SERVICE_UNAVAILABLE,
    )
    .await;
}

/// A preflight from `origin` for a POST with a bearer token and a JSON body.
async fn preflight(relay: &Relay, origin: &str) -> reqwest::Response {
    relay
        .http
        .request(reqwest::Method::OPTIONS, relay.at("/v1/sync"))
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,content-type,idempotency-key",
        )
        .send()
        .await
        .unwrap()
}

/// The `access-control-allow-origin` of a response, if any.
fn allowed_origin(resp: &reqwest::Response) -> Option<String> {
    resp.headers()
        .get("access-control-allow-origin")
        .map(|v| v.to_str().unwrap().to_string())
}

/// Without `--cors-origins` the relay sends no CORS header: a page of another origin can call
/// neither with a preflight nor with a simple request.
#[tokio::test]
async fn cors_is_off_by_default() {
    let db = Db::sqlite();
    let relay = db.relay().await;
    let alice = relay.register("alice").await;
    assert_eq!(
        allowed_origin(&preflight(&relay, "https://chat.example.org").await),
        None
    );
    let me = alice
        .get("/v1/clients/me")
        .header("origin", "https://chat.example.org")
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), StatusCode::OK);
    assert_eq!(allowed_origin(&me), None);
    assert!(
        !me.headers()
            .keys()
            .any(|k| k.as_str().starts_with("access-control-")),
        "{:?}",
        me.headers()
    );
}

/// `--cors-origins` lets the named origins call (preflight and the request itself, with the
/// headers a client needs to read) and no other; `*` lets any origin call.
#[tokio::test]
async fn cors_origins_allow_exactly_the_named_origins() {
    let db = Db::sqlite();
    let relay = db
        .start(&[
            "--cors-origins",
            "https://chat.example.org,http://localhost:3000",
        ])
        .await;
    let alice = relay.register("alice").await;
    for origin in ["https://chat.example.org", "http://localhost:3000"] {
        let resp = preflight(&relay, origin).await;
        assert!(resp.status().is_success(), "{}", resp.status());
        assert_eq!(allowed_origin(&resp).as_deref(), Some(origin));
        let methods = resp.headers()["access-control-allow-methods"]
            .to_str()
            .unwrap();
        assert!(
            methods.contains("POST") && methods.contains("DELETE"),
            "{methods}"
        );
        let headers = resp.headers()["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .to_ascii_lowercase();
        for h in ["authorization", "content-type", "idempotency-key"] {
            assert!(headers.contains(h), "{h} not in {headers}");
        }
        assert!(
            resp.headers()
                .get("access-control-allow-credentials")
                .is_none()
        );
    }
    let me = alice
        .get("/v1/clients/me")
        .header("origin", "https://chat.example.org")
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), StatusCode::OK);
    assert_eq!(
        allowed_origin(&me).as_deref(),
        Some("https://chat.example.org")
    );
    let exposed = me.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(
        exposed.contains("retry-after") && exposed.contains("x-request-id"),
        "{exposed}"
    );

    // Another origin, or a named one with another scheme or port, gets nothing.
    for other in [
        "https://evil.example",
        "http://chat.example.org",
        "http://localhost:3001",
    ] {
        assert_eq!(
            allowed_origin(&preflight(&relay, other).await),
            None,
            "{other}"
        );
    }

    let any = Db::sqlite().start(&["--cors-origins", "*"]).await;
    let resp = preflight(&any, "https://anywhere.example").await;
    assert_eq!(allowed_origin(&resp).as_deref(), Some("*"));
}
