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
    ("post", "/v1/stream"),
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

/// The schema at `pointer` in `doc`, following a `$ref` to a component.
fn schema_at<'a>(doc: &'a Value, pointer: &str) -> &'a Value {
    let schema = doc
        .pointer(pointer)
        .unwrap_or_else(|| panic!("no {pointer} in /openapi.json"));
    match schema.get("$ref").and_then(Value::as_str) {
        Some(reference) => {
            let target = reference.strip_prefix('#').unwrap();
            doc.pointer(target)
                .unwrap_or_else(|| panic!("{pointer} refers to {reference}, which is missing"))
        }
        None => schema,
    }
}

/// The schema of the parameter `name` of `method path`.
fn parameter<'a>(doc: &'a Value, path: &str, method: &str, name: &str) -> &'a Value {
    let path_key = path.replace('~', "~0").replace('/', "~1");
    let parameters = doc
        .pointer(&format!("/paths/{path_key}/{method}/parameters"))
        .and_then(Value::as_array)
        .unwrap_or_else(|| panic!("{method} {path} has no parameters"));
    let index = parameters
        .iter()
        .position(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("{method} {path} has no parameter {name}"));
    schema_at(
        doc,
        &format!("/paths/{path_key}/{method}/parameters/{index}/schema"),
    )
}

/// `/openapi.json` states what the relay enforces (scripts/api-fuzz checks the whole of it
/// against the running relay): the formats of ids, tokens and base64, ranges, item counts.
#[tokio::test]
async fn openapi_json_states_the_constraints_the_relay_enforces() {
    use dmls_api::patterns;
    let db = Db::sqlite();
    let relay = db.relay().await;
    let doc: Value = relay
        .get("/openapi.json")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let schemas = "/components/schemas";

    let client_id = schema_at(
        &doc,
        &format!("{schemas}/RegisterRequest/properties/client_id"),
    );
    assert_eq!(client_id["pattern"], patterns::CLIENT_ID, "{client_id}");
    assert_eq!(
        (
            client_id["minLength"].as_u64(),
            client_id["maxLength"].as_u64()
        ),
        (Some(1), Some(64))
    );
    let token = schema_at(
        &doc,
        &format!("{schemas}/RegisterResponse/properties/token"),
    );
    assert_eq!(token["pattern"], patterns::TOKEN);

    for method in ["put", "get", "delete"] {
        let owner = parameter(&doc, "/v1/groups/{owner}/{group_id}", method, "owner");
        assert_eq!(owner["pattern"], patterns::CLIENT_ID, "{method}: {owner}");
        let group_id = parameter(&doc, "/v1/groups/{owner}/{group_id}", method, "group_id");
        assert_eq!(
            group_id["pattern"],
            patterns::GROUP_ID,
            "{method}: {group_id}"
        );
        assert_eq!(
            (
                group_id["minLength"].as_u64(),
                group_id["maxLength"].as_u64()
            ),
            (Some(2), Some(128))
        );
    }
    let key = parameter(
        &doc,
        "/v1/groups/{owner}/{group_id}/messages",
        "post",
        "Idempotency-Key",
    );
    assert_eq!(key["pattern"], patterns::IDEMPOTENCY_KEY, "{key}");
    assert_eq!(key["type"], "string", "a header is never null: {key}");

    for (path, name) in [
        ("/v1/welcomes", "limit"),
        ("/v1/groups/{owner}/{group_id}/messages", "limit"),
    ] {
        let limit = parameter(&doc, path, "get", name);
        assert_eq!(
            (limit["minimum"].as_u64(), limit["maximum"].as_u64()),
            (Some(1), Some(1000)),
            "{path}: {limit}"
        );
    }
    let upto = parameter(&doc, "/v1/welcomes", "delete", "upto");
    assert_eq!(upto["maximum"].as_u64(), Some(u64::MAX), "{upto}");
    assert_eq!(
        upto["format"], "uint64",
        "cursors are not limited to int64: {upto}"
    );

    let bytes = schema_at(
        &doc,
        &format!("{schemas}/PostMessageRequest/properties/data"),
    );
    assert_eq!(bytes["pattern"], patterns::BASE64, "{bytes}");
    assert_eq!(
        bytes["minLength"].as_u64(),
        Some(4),
        "empty data is refused: {bytes}"
    );
    let raw = schema_at(
        &doc,
        "/paths/~1v1~1groups~1{owner}~1{group_id}~1messages/post/requestBody/content/application~1octet-stream/schema",
    );
    assert_eq!(raw["minLength"].as_u64(), Some(1), "{raw}");

    let claim = schema_at(
        &doc,
        &format!("{schemas}/ClaimKeyPackagesRequest/properties/client_ids"),
    );
    assert_eq!(
        (claim["maxItems"].as_u64(), claim["uniqueItems"].as_bool()),
        (Some(1000), Some(true)),
        "{claim}"
    );
    assert_eq!(
        schema_at(
            &doc,
            &format!("{schemas}/ClaimKeyPackagesRequest/properties/client_ids/items")
        )["pattern"],
        patterns::CLIENT_ID
    );
    let members = schema_at(
        &doc,
        &format!("{schemas}/PutGroupRequest/properties/members"),
    );
    assert_eq!(
        (
            members["maxItems"].as_u64(),
            members["uniqueItems"].as_bool()
        ),
        (Some(10_000), Some(true)),
        "{members}"
    );
    let welcomes = schema_at(
        &doc,
        &format!("{schemas}/PostWelcomesRequest/properties/welcomes"),
    );
    assert_eq!(welcomes["maxItems"].as_u64(), Some(1000), "{welcomes}");
    // A welcome is `{"to", "data"}` or `{"to_all", "data"}`, nothing else.
    let one = schema_at(&doc, &format!("{schemas}/OutgoingWelcome/oneOf/0"));
    assert_eq!(
        one["properties"]["to"]["pattern"],
        patterns::CLIENT_ID,
        "{one}"
    );
    assert_eq!(one["required"], serde_json::json!(["to", "data"]), "{one}");
    assert_eq!(one["additionalProperties"], false, "{one}");
    let all = schema_at(&doc, &format!("{schemas}/OutgoingWelcome/oneOf/1"));
    let to_all = &all["properties"]["to_all"];
    assert_eq!(to_all["items"]["pattern"], patterns::CLIENT_ID, "{all}");
    assert_eq!(
        (
            to_all["minItems"].as_u64(),
            to_all["maxItems"].as_u64(),
            to_all["uniqueItems"].as_bool()
        ),
        (Some(1), Some(1000), Some(true)),
        "{all}"
    );
    assert_eq!(
        all["required"],
        serde_json::json!(["to_all", "data"]),
        "{all}"
    );
    assert_eq!(all["additionalProperties"], false, "{all}");

    let sync = schema_at(&doc, &format!("{schemas}/SyncRequest"));
    let limit = &sync["properties"]["limit"];
    assert_eq!(
        (limit["minimum"].as_u64(), limit["maximum"].as_u64()),
        (Some(1), Some(5000)),
        "{limit}"
    );
    assert_eq!(
        sync["properties"]["wait_ms"]["maximum"].as_u64(),
        Some(30_000),
        "{sync}"
    );
    assert_eq!(
        sync["properties"]["groups"]["maxItems"].as_u64(),
        Some(10_000),
        "{sync}"
    );
    assert_eq!(
        schema_at(
            &doc,
            &format!("{schemas}/SyncGroupCursor/properties/group_id")
        )["pattern"],
        patterns::GROUP_ID
    );
}

/// Whole numbers written as floats (`2.0`) are the same integers in JSON Schema, so the relay
/// takes them in request bodies; fractions are still 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_takes_whole_numbers_in_float_spelling() {
    let db = Db::sqlite();
    let relay = db.relay().await;
    let alice = relay.register("alice").await;
    alice.create_group(&gid(1), &[]).await;
    alice.post_message("alice", &gid(1), b"one").await;
    alice.post_message("alice", &gid(1), b"two").await;
    let body = r#"{"groups": [{"owner": "alice", "group_id": "GID", "after": 1.0}], "limit": 10.0, "wait_ms": 0.0, "welcomes_after": 0.0}"#
        .replace("GID", &gid(1));
    let resp = alice
        .post("/v1/sync")
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let answer: dmls_api::SyncResponse = resp.json().await.unwrap();
    assert_eq!(answer.groups.len(), 1);
    assert_eq!(
        answer.groups[0]
            .messages
            .iter()
            .map(|m| m.seq)
            .collect::<Vec<_>>(),
        vec![2]
    );
    assert_eq!(answer.welcomes_next_after, Some(0));
    let fraction = alice
        .post("/v1/sync")
        .header("content-type", "application/json")
        .body(body.replace("10.0", "10.5"))
        .send()
        .await
        .unwrap();
    expect_problem(fraction, StatusCode::BAD_REQUEST).await;
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
