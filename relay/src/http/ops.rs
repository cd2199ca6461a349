//! Operations routes: `/`, `/healthz`, `/readyz`, `/metrics`, `/openapi.json`, and the answers
//! for unknown routes and methods. None of them needs a token.

use std::sync::Arc;

use axum::Extension;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};

use super::AppState;
use super::error::{Error, problem};
use super::metrics as m;

/// The serialised OpenAPI document, built once with the router.
#[derive(Clone)]
pub(crate) struct OpenApiDocument(pub Arc<str>);

/// A short page for humans who open the relay's address in a browser.
#[utoipa::path(
    get,
    path = "/",
    operation_id = "index",
    tag = "operations",
    responses((status = 200, description = "Version, storage backend, uptime and counts", content_type = "text/html", body = String))
)]
pub(crate) async fn index(State(state): State<AppState>) -> Html<String> {
    let uptime = state.started.elapsed().as_secs();
    let (in_use, idle) = state.store.pool_stats();
    Html(format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>DMLS relay</title></head><body>\n\
         <h1>DMLS relay {version}</h1>\n\
         <p>A store-and-forward service for Distributed MLS clients. It stores opaque MLS messages and \
         never sees their content.</p>\n<ul>\n\
         <li>Storage: {backend}</li>\n\
         <li>Uptime: {days} d {hours} h {minutes} min {seconds} s</li>\n\
         <li>Long polls waiting: {waiting}</li>\n\
         <li>Push streams open: {streams}</li>\n\
         <li>Database connections: {in_use} in use, {idle} idle</li>\n\
         <li>Registration: {registration}</li>\n\
         </ul>\n<p>API: <a href=\"/openapi.json\">/openapi.json</a> · \
         <a href=\"/healthz\">/healthz</a> · <a href=\"/readyz\">/readyz</a> · <a href=\"/metrics\">/metrics</a></p>\n\
         </body></html>\n",
        version = env!("CARGO_PKG_VERSION"),
        backend = state.store.backend(),
        days = uptime / 86_400,
        hours = uptime / 3600 % 24,
        minutes = uptime / 60 % 60,
        seconds = uptime % 60,
        waiting = state.long_polls_waiting(),
        streams = state.streams_open(),
        registration = match state.config.registration {
            crate::config::RegistrationMode::Open => "open",
            crate::config::RegistrationMode::Token => "by token",
        },
    ))
}

/// Liveness: 200 while the process serves requests.
#[utoipa::path(get, path = "/healthz", operation_id = "healthz", tag = "operations", responses((status = 200, description = "Alive", content_type = "text/plain", body = String)))]
pub(crate) async fn healthz() -> &'static str {
    "ok\n"
}

/// Readiness: 200 when the database answers, else 503.
#[utoipa::path(
    get,
    path = "/readyz",
    operation_id = "readyz",
    tag = "operations",
    responses(
        (status = 200, description = "The database answers", content_type = "text/plain", body = String),
        (status = 503, description = "The database does not answer", body = dmls_api::Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn readyz(State(state): State<AppState>) -> Result<&'static str, Error> {
    state.store.ping().await?;
    Ok("ready\n")
}

/// Prometheus text exposition.
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    tag = "operations",
    responses((status = 200, description = "Prometheus text format 0.0.4", content_type = "text/plain", body = String))
)]
pub(crate) async fn metrics(State(state): State<AppState>) -> Response {
    // Gauges of this relay's state are sampled when scraped.
    ::metrics::gauge!(m::LONG_POLLS_WAITING).set(state.long_polls_waiting() as f64);
    ::metrics::gauge!(m::STREAMS_OPEN).set(state.streams_open() as f64);
    for (bucket, clients) in crate::waiters::BUCKETS
        .iter()
        .zip(state.waiters.clients_by_waiting())
    {
        ::metrics::gauge!(m::CLIENTS_BY_WAITING, "waiting" => *bucket).set(clients as f64);
    }
    let (in_use, idle) = state.store.pool_stats();
    ::metrics::gauge!(m::DB_CONNECTIONS, "state" => "in_use").set(f64::from(in_use));
    ::metrics::gauge!(m::DB_CONNECTIONS, "state" => "idle").set(f64::from(idle));
    let handle = m::handle();
    handle.run_upkeep();
    let mut response = handle.render().into_response();
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

/// This API's OpenAPI 3.1 description, generated from the router.
#[utoipa::path(
    get,
    path = "/openapi.json",
    operation_id = "openapi",
    tag = "operations",
    responses((status = 200, description = "OpenAPI 3.1 document", content_type = "application/json", body = Object))
)]
pub(crate) async fn openapi_json(
    Extension(OpenApiDocument(document)): Extension<OpenApiDocument>,
) -> Response {
    let mut response = document.to_string().into_response();
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// Unknown route.
pub(crate) async fn not_found() -> Response {
    problem(StatusCode::NOT_FOUND, "no such route; see /openapi.json")
}

/// Known route, other method.
pub(crate) async fn method_not_allowed() -> Response {
    problem(
        StatusCode::METHOD_NOT_ALLOWED,
        "this route does not take that method; see /openapi.json",
    )
}
