//! Prometheus metrics: the process-wide recorder and the request-counting middleware.
//!
//! The `metrics` facade has one global recorder per process, and tests start several relays in
//! one process, so the recorder is built once ([`handle`]) and shared by every relay.

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub(crate) const REQUESTS: &str = "dmls_relay_http_requests_total";
pub(crate) const REQUEST_DURATION: &str = "dmls_relay_http_request_duration_seconds";
pub(crate) const MESSAGES_STORED: &str = "dmls_relay_messages_stored_total";
pub(crate) const WELCOMES_STORED: &str = "dmls_relay_welcomes_stored_total";
pub(crate) const LONG_POLLS_WAITING: &str = "dmls_relay_long_polls_waiting";
pub(crate) const STREAMS_OPEN: &str = "dmls_relay_streams_open";
pub(crate) const STREAM_EVENTS: &str = "dmls_relay_stream_events_total";
pub(crate) const DB_CONNECTIONS: &str = "dmls_relay_db_pool_connections";
pub(crate) const REFUSALS: &str = "dmls_relay_refusals_total";
pub(crate) const CLIENTS_BY_WAITING: &str = "dmls_relay_clients_by_waiting_requests";

/// `limit` labels of [`REFUSALS`], one per limit (API.md "Limits"); the daily quota's are
/// [`QUOTA_MESSAGES`](crate::store::QUOTA_MESSAGES) and [`QUOTA_BYTES`](crate::store::QUOTA_BYTES).
pub(crate) const LIMIT_CLIENT_RATE: &str = "client_rate";
pub(crate) const LIMIT_REGISTRATIONS: &str = "registrations_per_address";
pub(crate) const LIMIT_WAITING_PER_CLIENT: &str = "waiting_per_client";
pub(crate) const LIMIT_WAITING: &str = "waiting";
pub(crate) const LIMIT_CONNECTIONS: &str = "connections";

/// Counts `n` requests refused (or, for `waiting_per_client`, long polls answered early) by
/// `limit`.
pub(crate) fn refused(limit: &'static str, n: u64) {
    metrics::counter!(REFUSALS, "limit" => limit).increment(n);
}

/// Latency buckets in seconds, up to the longest long poll.
const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 45.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process's Prometheus recorder, installed on first use.
pub(crate) fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(REQUEST_DURATION.into()), DURATION_BUCKETS)
            .unwrap_or_else(|_| PrometheusBuilder::new());
        match builder.install_recorder() {
            Ok(handle) => handle,
            Err(e) => {
                // Someone else installed a global recorder first (an embedding program): serve an
                // empty exposition rather than fail.
                tracing::warn!(error = %e, "metrics recorder already installed; /metrics will be empty");
                PrometheusBuilder::new().build_recorder().handle()
            }
        }
    })
}

/// Counts requests by method, matched route (the template, so ids do not explode the label
/// space) and status, and records their latency.
pub(crate) async fn track(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().as_str().to_owned();
    let route = match request.extensions().get::<MatchedPath>() {
        Some(path) => path.as_str().to_owned(),
        None => "unmatched".to_owned(),
    };
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!(REQUESTS, "method" => method.clone(), "route" => route.clone(), "status" => status).increment(1);
    metrics::histogram!(REQUEST_DURATION, "method" => method, "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}
