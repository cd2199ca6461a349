//! The HTTP API (`docs/API.md`): one module per resource.
//!
//! Routes are registered through utoipa-axum's [`OpenApiRouter`], so every route the router
//! serves is in `/openapi.json` by construction. The shared state is one small [`Ctx`].
//!
//! Layers, outermost first: secrets are marked sensitive, a request id is set (or kept) and
//! echoed, requests are traced, CORS answers the origins of `--cors-origins` (none by default;
//! `crate::cors`), bare error responses get a problem+json body, and requests time out.

pub(crate) mod auth;
pub(crate) mod clients;
pub(crate) mod error;
pub(crate) mod extract;
pub(crate) mod groups;
pub(crate) mod key_packages;
pub(crate) mod metrics;
pub(crate) mod ops;
pub(crate) mod rate_limit;
pub(crate) mod stream;
pub(crate) mod sync;
pub(crate) mod welcomes;

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::http::header::AUTHORIZATION;
use axum::middleware;
use tokio::sync::watch;
use tower::ServiceBuilder;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::Config;
use crate::config::RegistrationMode;
use crate::notify::Notifier;
use crate::store::{DAY_MILLIS, Millis, Store};
use crate::waiters::Waiters;

/// Where handlers read the time of day: milliseconds since the Unix epoch. The system clock,
/// except in tests that move the day on (the daily storage quota).
pub(crate) type Clock = Arc<dyn Fn() -> Millis + Send + Sync>;

/// What every handler shares.
pub(crate) struct Ctx {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) notifier: Notifier,
    pub(crate) config: Config,
    pub(crate) rate_limits: rate_limit::RateLimits,
    pub(crate) auth_cache: auth::AuthCache,
    /// SHA-256 of the operator's registration token in `token` mode.
    pub(crate) registration_token_hash: Option<[u8; 32]>,
    /// Turns true when the relay shuts down; long polls watch it to answer at once.
    pub(crate) shutdown: watch::Receiver<bool>,
    pub(crate) started: Instant,
    /// Waiting long polls and open push streams, per client and in all, with their caps.
    pub(crate) waiters: Arc<Waiters>,
    /// Push streams open now (`/metrics`).
    pub(crate) streams_open: Arc<std::sync::atomic::AtomicUsize>,
    clock: Clock,
}

pub(crate) type AppState = Arc<Ctx>;

impl Ctx {
    pub(crate) fn new(
        config: Config,
        store: Arc<dyn Store>,
        notifier: Notifier,
        shutdown: watch::Receiver<bool>,
        clock: Option<Clock>,
    ) -> Self {
        let registration_token_hash = match config.registration {
            RegistrationMode::Token => config
                .registration_token
                .as_deref()
                .map(|t| auth::sha256(t.as_bytes())),
            RegistrationMode::Open => None,
        };
        Ctx {
            rate_limits: rate_limit::RateLimits::new(&config),
            waiters: Arc::new(Waiters::new(
                config.max_waiting_per_client,
                config.max_waiting,
            )),
            streams_open: Arc::default(),
            clock: clock.unwrap_or_else(|| Arc::new(now_millis)),
            auth_cache: auth::AuthCache::new(),
            store,
            notifier,
            config,
            registration_token_hash,
            shutdown,
            started: Instant::now(),
        }
    }

    /// Now, by this relay's clock: `received_at` of what is stored, and the day of the daily
    /// storage quota.
    pub(crate) fn now(&self) -> Millis {
        (self.clock)()
    }

    /// Push streams open now.
    pub(crate) fn streams_open(&self) -> usize {
        self.streams_open.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Long polls waiting now: the waiting requests that are not push streams.
    pub(crate) fn long_polls_waiting(&self) -> usize {
        self.waiters.total().saturating_sub(self.streams_open())
    }

    /// The 429 for a store over the daily quota `what`, counted in the metrics; Retry-After is
    /// the time until the UTC day ends.
    pub(crate) fn over_quota(&self, what: &'static str) -> error::Error {
        error::Error::over_quota(what, self.now())
    }
}

/// Whole seconds from `now` to the next 00:00 UTC (at least 1).
pub(crate) fn secs_to_next_utc_day(now: Millis) -> u64 {
    let left = DAY_MILLIS - now.rem_euclid(DAY_MILLIS);
    u64::try_from((left + 999) / 1000).unwrap_or(1).max(1)
}

/// Milliseconds since the Unix epoch (`received_at`, `created_at`).
pub(crate) fn now_millis() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| Millis::try_from(d.as_millis()).unwrap_or(Millis::MAX))
        .unwrap_or(0)
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "DMLS relay",
        description = "Durable store-and-forward service for Distributed MLS. The relay never parses MLS content. \
                       Errors are application/problem+json (RFC 9457). This document states every constraint \
                       the relay enforces on a request (patterns, lengths, ranges, item counts) except the sizes \
                       the operator configures, which the descriptions name with their defaults: a request body \
                       over `--max-body-bytes` (16 MiB by default) is 413.",
        license(name = "MIT OR Apache-2.0")
    ),
    modifiers(&BearerAuth),
    components(schemas(dmls_api::Problem)),
    tags(
        (name = "clients", description = "Registration and accounts"),
        (name = "key-packages", description = "Key package stock and claims"),
        (name = "welcomes", description = "Per-client welcome inbox"),
        (name = "groups", description = "Groups, their member lists and messages"),
        (name = "sync", description = "One long-polling read of everything a client follows, or a push stream of it"),
        (name = "operations", description = "Health, readiness, metrics and this document"),
    )
)]
struct ApiDoc;

/// Declares the `bearer` security scheme that authenticated routes name.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("The token from `POST /v1/clients` (or the operator's registration token there)"))
                    .build(),
            ),
        );
    }
}

/// Every route, with its OpenAPI description.
fn api_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(clients::register))
        .routes(routes!(clients::me, clients::delete_me))
        .routes(routes!(key_packages::upload))
        .routes(routes!(key_packages::claim))
        .routes(routes!(welcomes::post, welcomes::list, welcomes::delete))
        .routes(routes!(groups::put, groups::get, groups::delete))
        .routes(routes!(groups::post_message, groups::list_messages))
        .routes(routes!(sync::sync))
        .routes(routes!(stream::stream))
        .routes(routes!(ops::index))
        .routes(routes!(ops::healthz))
        .routes(routes!(ops::readyz))
        .routes(routes!(ops::metrics))
        .routes(routes!(ops::openapi_json))
}

/// The OpenAPI 3.1 document of every route (the router serves it at `/openapi.json`).
#[cfg(test)]
fn openapi() -> utoipa::openapi::OpenApi {
    api_router().into_openapi()
}

/// The relay's whole HTTP service.
pub(crate) fn router(ctx: AppState) -> Router {
    // Install the recorder before the first request records anything.
    metrics::handle();
    let (routes, api) = api_router().split_for_parts();
    let document: Arc<str> = match api.to_pretty_json() {
        Ok(json) => json.into(),
        Err(e) => {
            tracing::error!(error = %e, "cannot serialise the OpenAPI document");
            "{}".into()
        }
    };
    let timeout = ctx.config.request_timeout();
    let body_limit = ctx.config.max_body_bytes;
    let cors = ctx.config.cors_origins.layer();
    routes
        .fallback(ops::not_found)
        .method_not_allowed_fallback(ops::method_not_allowed)
        // Inside routing, so the matched route template is known.
        .layer(middleware::from_fn(metrics::track))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::Extension(ops::OpenApiDocument(document)))
        .layer(
            ServiceBuilder::new()
                .layer(SetSensitiveRequestHeadersLayer::new([AUTHORIZATION]))
                .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
                .layer(TraceLayer::new_for_http().make_span_with(request_span))
                .layer(PropagateRequestIdLayer::x_request_id())
                .option_layer(cors)
                .layer(middleware::map_response(error::problem_for_bare_errors))
                .layer(TimeoutLayer::with_status_code(
                    StatusCode::REQUEST_TIMEOUT,
                    timeout,
                )),
        )
        .with_state(ctx)
}

/// The span of one request: method, path (never the query or headers) and request id, so log
/// lines of one request can be found by the id the client saw in `x-request-id`.
fn request_span<B>(request: &axum::http::Request<B>) -> tracing::Span {
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    tracing::info_span!("request", method = %request.method(), path = %request.uri().path(), request_id)
}

/// Checks that a path names a group: a valid owner client id and a valid group id.
pub(crate) fn check_group_name(owner: &str, group_id: &str) -> Result<(), error::Error> {
    if !dmls_api::is_valid_client_id(owner) {
        return Err(error::Error::bad_request(format!(
            "invalid owner {owner:?}: 1 to 64 characters of a-z 0-9 . _ -"
        )));
    }
    if !dmls_api::is_valid_group_id(group_id) {
        return Err(error::Error::bad_request(format!(
            "invalid group id {group_id:?}: lowercase hex of 1 to 64 bytes"
        )));
    }
    Ok(())
}

/// Checks a list of client ids from a body: each valid, none twice.
pub(crate) fn check_client_ids(ids: &[String], what: &str) -> Result<(), error::Error> {
    let mut seen = std::collections::HashSet::with_capacity(ids.len());
    for id in ids {
        if !dmls_api::is_valid_client_id(id) {
            return Err(error::Error::bad_request(format!(
                "invalid client id {id:?} in {what}: 1 to 64 characters of a-z 0-9 . _ -"
            )));
        }
        if !seen.insert(id.as_str()) {
            return Err(error::Error::bad_request(format!(
                "client id {id:?} appears twice in {what}"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn openapi_is_3_1_with_unique_operation_ids_and_the_bearer_scheme() {
        let doc = openapi();
        let json = serde_json::to_value(&doc).unwrap_or_default();
        assert!(
            json["openapi"]
                .as_str()
                .is_some_and(|v| v.starts_with("3.1"))
        );
        assert_eq!(
            json["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
        let mut ids = HashSet::new();
        let mut operations = 0;
        for (path, item) in doc.paths.paths.iter() {
            for op in [&item.get, &item.put, &item.post, &item.delete]
                .into_iter()
                .flatten()
            {
                operations += 1;
                let id = op.operation_id.clone().unwrap_or_default();
                assert!(
                    ids.insert(id.clone()),
                    "operation id {id:?} of {path} is used twice"
                );
            }
        }
        assert_eq!(
            operations, 20,
            "every route of API.md and the operations routes"
        );
    }

    #[test]
    fn client_id_lists_refuse_invalid_and_repeated_ids() {
        assert!(check_client_ids(&["bob".into(), "carol".into()], "members").is_ok());
        assert!(check_client_ids(&["Bob".into()], "members").is_err());
        assert!(check_client_ids(&["bob".into(), "bob".into()], "members").is_err());
    }
}
