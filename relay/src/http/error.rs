//! One error type for every handler, answered as RFC 9457 `application/problem+json`.
//!
//! Handlers return `Result<_, Error>` and use `?`; a storage failure becomes a logged 503 whose
//! body says nothing about the database, so clients never see SQL or connection strings.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use dmls_api::Problem;

use crate::store::StoreError;

/// The media type of every error body (RFC 9457 section 3).
pub(crate) const PROBLEM_JSON: &str = "application/problem+json";

/// The answers every authenticated route may give besides its own, for the OpenAPI document
/// (`responses(..., AuthedErrors)` in a route's `#[utoipa::path]`).
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // never built: only its OpenAPI description is used
pub(crate) enum AuthedErrors {
    #[response(
        status = 401,
        description = "Missing or bad token",
        content_type = "application/problem+json"
    )]
    Unauthorized(Problem),
    #[response(
        status = 429,
        description = "Rate limited, or (posting group messages or welcomes) over the daily storage quota and nothing stored; see Retry-After",
        content_type = "application/problem+json"
    )]
    RateLimited(Problem),
    #[response(
        status = 503,
        description = "Storage unavailable, or (a `POST /v1/sync` that would wait) too many long polls waiting; see Retry-After",
        content_type = "application/problem+json"
    )]
    Unavailable(Problem),
}

/// Everything a request can fail with, by HTTP meaning (API.md "Errors").
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// 400: the request is malformed; nothing was changed.
    #[error("{0}")]
    BadRequest(String),
    /// 401: missing or bad token.
    #[error("{0}")]
    Unauthorized(&'static str),
    /// 403: authenticated, but not allowed.
    #[error("{0}")]
    Forbidden(String),
    /// 404: unknown thing.
    #[error("{0}")]
    NotFound(String),
    /// 409: conflicts with what is stored.
    #[error("{0}")]
    Conflict(String),
    /// 413: the body or an item in it is larger than the configured limit.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// 429: over a rate limit; retry after this many seconds.
    #[error("rate limit exceeded, retry in {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
    /// 429: over the client's daily storage quota; nothing was stored. Retry after this many
    /// seconds (when the UTC day ends).
    #[error(
        "daily storage quota exceeded ({what}); nothing was stored; the quota resets at 00:00 UTC, in {retry_after_secs} s"
    )]
    QuotaExceeded {
        what: &'static str,
        retry_after_secs: u64,
    },
    /// 503: the relay holds as many waiting requests as it may; retry after this many seconds.
    #[error("the relay is busy with too many waiting requests, retry in {retry_after_secs} s")]
    Overloaded { retry_after_secs: u64 },
    /// 503: storage failed. The cause was logged where it happened; it is never shown.
    #[error("storage is unavailable, try again later")]
    Unavailable,
}

impl Error {
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            Error::BadRequest(_) => StatusCode::BAD_REQUEST,
            Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Error::Forbidden(_) => StatusCode::FORBIDDEN,
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::Conflict(_) => StatusCode::CONFLICT,
            Error::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Error::RateLimited { .. } | Error::QuotaExceeded { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            Error::Overloaded { .. } | Error::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The 429 for a store over the daily quota `what` (a `limit` label of the refusal
    /// metric, counted here) at time `now`; Retry-After is the time until the UTC day ends.
    pub(crate) fn over_quota(what: &'static str, now: crate::store::Millis) -> Self {
        super::metrics::refused(what, 1);
        Error::QuotaExceeded {
            what: match what {
                crate::store::QUOTA_BYTES => "bytes per day",
                _ => "messages per day",
            },
            retry_after_secs: super::secs_to_next_utc_day(now),
        }
    }

    pub(crate) fn bad_request(detail: impl Into<String>) -> Self {
        Error::BadRequest(detail.into())
    }

    /// An extractor rejected the request (bad JSON, query or path, unreadable or oversized
    /// body). Axum says 413 for an oversized body and 400/415/422 for the rest; API.md knows
    /// only 400 and 413, and none of it may become a 5xx.
    pub(crate) fn from_rejection(status: StatusCode, detail: String) -> Self {
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            Error::PayloadTooLarge(detail)
        } else {
            Error::BadRequest(detail)
        }
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict => Error::Conflict("already exists".into()),
            StoreError::UnknownClients(ids) => {
                Error::NotFound(format!("unknown client ids: {}", ids.join(", ")))
            }
            // Handlers answer this with `Ctx::over_quota` (Retry-After by the relay's clock);
            // this is the fallback by the system clock.
            StoreError::OverQuota(what) => Error::over_quota(what, super::now_millis()),
            StoreError::TooManyKeyPackages { limit } => Error::Conflict(format!(
                "a client may keep at most {limit} key packages; claimers have not used enough of them yet"
            )),
            StoreError::Database(e) => {
                tracing::error!(error = %e, "database error");
                Error::Unavailable
            }
            StoreError::Unavailable(why) => {
                tracing::error!(error = %why, "storage unavailable");
                Error::Unavailable
            }
        }
    }
}

/// The problem details of this status and detail (API.md "Errors").
pub(crate) fn problem_body(status: StatusCode, detail: impl Into<String>) -> Problem {
    Problem {
        kind: "about:blank".into(),
        title: status.canonical_reason().unwrap_or("Error").into(),
        status: status.as_u16(),
        detail: detail.into(),
    }
}

/// A problem+json response with this status and detail; also used for errors raised outside
/// handlers (unknown routes, timeouts).
pub(crate) fn problem(status: StatusCode, detail: impl Into<String>) -> Response {
    let body = problem_body(status, detail);
    // Serialising four plain fields cannot fail; an empty object is still valid problem+json.
    let json = serde_json::to_vec(&body).unwrap_or_else(|_| b"{}".to_vec());
    (
        status,
        [(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON))],
        json,
    )
        .into_response()
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut response = problem(status, self.to_string());
        if let Error::RateLimited { retry_after_secs }
        | Error::QuotaExceeded {
            retry_after_secs, ..
        }
        | Error::Overloaded { retry_after_secs } = self
        {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(retry_after_secs.max(1)),
            );
        }
        response
    }
}

/// Gives errors produced outside our handlers (axum's 405, tower-http's 408 timeout) a
/// problem+json body, so every 4xx/5xx a client sees has the same shape. Responses that already
/// carry a content type are left alone.
pub(crate) async fn problem_for_bare_errors(response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error())
        || response.headers().contains_key(header::CONTENT_TYPE)
    {
        return response;
    }
    let detail = match status {
        StatusCode::METHOD_NOT_ALLOWED => "this route does not take that method",
        StatusCode::REQUEST_TIMEOUT => "the request took too long",
        _ => "the request failed",
    };
    let (mut parts, _) = response.into_parts();
    let (new_parts, body) = problem(status, detail).into_parts();
    parts.headers.extend(new_parts.headers);
    Response::from_parts(parts, body)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    async fn body_json(response: Response) -> serde_json::Value {
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn errors_are_problem_json_with_matching_status() {
        let response = Error::NotFound("unknown client ids: bob".into()).into_response();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert_eq!(response.headers()[header::CONTENT_TYPE], PROBLEM_JSON);
        let json = body_json(response).await;
        assert_eq!(json["status"], 404);
        assert_eq!(json["title"], "Not Found");
        assert_eq!(json["type"], "about:blank");
        assert_eq!(json["detail"], "unknown client ids: bob");
    }

    #[tokio::test]
    async fn database_errors_are_503_and_never_shown() {
        let e: Error =
            StoreError::Database(sqlx::Error::Protocol("secret table layout".into())).into();
        let response = e.into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        let json = body_json(response).await;
        assert!(!json.to_string().contains("secret"));
    }

    #[test]
    fn rate_limited_carries_retry_after_of_at_least_one_second() {
        let response = Error::RateLimited {
            retry_after_secs: 0,
        }
        .into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
    }

    #[test]
    fn rejections_map_to_400_or_413_only() {
        assert_eq!(
            Error::from_rejection(StatusCode::PAYLOAD_TOO_LARGE, String::new()).status(),
            413
        );
        assert_eq!(
            Error::from_rejection(StatusCode::UNSUPPORTED_MEDIA_TYPE, String::new()).status(),
            400
        );
        assert_eq!(
            Error::from_rejection(StatusCode::UNPROCESSABLE_ENTITY, String::new()).status(),
            400
        );
        assert_eq!(
            Error::from_rejection(StatusCode::INTERNAL_SERVER_ERROR, String::new()).status(),
            400
        );
    }

    #[tokio::test]
    async fn bare_error_responses_get_a_problem_body() {
        let bare = StatusCode::METHOD_NOT_ALLOWED.into_response();
        let response = problem_for_bare_errors(bare).await;
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(response.headers()[header::CONTENT_TYPE], PROBLEM_JSON);
        assert_eq!(body_json(response).await["status"], 405);
    }
}
