//! `POST /v1/key-packages`, `POST /v1/key-packages/claim`.

use axum::extract::State;
use axum::http::StatusCode;
use dmls_api::limits::MAX_CLAIM_IDS;
use dmls_api::{
    ClaimKeyPackagesRequest, ClaimKeyPackagesResponse, Problem, UploadKeyPackagesRequest,
    UploadKeyPackagesResponse,
};

use super::auth::Caller;
use super::error::{AuthedErrors, Error};
use super::extract::Json;
use super::{AppState, check_client_ids, now_millis};

/// Adds key packages to the caller's stock and optionally replaces its last-resort package.
#[utoipa::path(
    post,
    path = "/v1/key-packages",
    operation_id = "upload_key_packages",
    tag = "key-packages",
    request_body = UploadKeyPackagesRequest,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Stored; the stock size", body = UploadKeyPackagesResponse),
        (status = 400, description = "Malformed body or an empty key package", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The stock would exceed the per-client limit; nothing stored", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "A key package or the body is too large", body = Problem, content_type = "application/problem+json"),
        AuthedErrors,
    )
)]
pub(crate) async fn upload(
    State(state): State<AppState>,
    caller: Caller,
    Json(request): Json<UploadKeyPackagesRequest>,
) -> Result<(StatusCode, axum::Json<UploadKeyPackagesResponse>), Error> {
    let max = state.config.max_key_package_bytes;
    for package in request
        .key_packages
        .iter()
        .chain(request.last_resort.iter())
    {
        if package.0.is_empty() {
            return Err(Error::bad_request("a key package is empty"));
        }
        if package.0.len() > max {
            return Err(Error::PayloadTooLarge(format!(
                "a key package has {} bytes; the limit is {max}",
                package.0.len()
            )));
        }
    }
    // More than the whole stock limit in one request can never be stored: say so without a
    // database round trip.
    let limit = state.config.max_key_packages;
    if u64::try_from(request.key_packages.len()).unwrap_or(u64::MAX) > limit {
        return Err(Error::Conflict(format!(
            "a client may keep at most {limit} key packages"
        )));
    }
    let packages = request
        .key_packages
        .into_iter()
        .map(|b| b.into_inner())
        .collect();
    let last_resort = request.last_resort.map(|b| b.into_inner());
    let available = state
        .store
        .add_key_packages(
            &caller.client_id,
            packages,
            last_resort,
            limit,
            now_millis(),
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(UploadKeyPackagesResponse { available }),
    ))
}

/// Takes one key package of each named client. Either every id is known and each is claimed
/// atomically, or 404 names the unknown ids and nothing is claimed.
#[utoipa::path(
    post,
    path = "/v1/key-packages/claim",
    operation_id = "claim_key_packages",
    tag = "key-packages",
    request_body = ClaimKeyPackagesRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Claimed packages, and the ids that had none", body = ClaimKeyPackagesResponse),
        (status = 400, description = "Malformed body, invalid or repeated ids, or more than 1,000", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown client ids (named in `detail`); nothing claimed", body = Problem, content_type = "application/problem+json"),
        AuthedErrors,
    )
)]
pub(crate) async fn claim(
    State(state): State<AppState>,
    _caller: Caller,
    Json(request): Json<ClaimKeyPackagesRequest>,
) -> Result<axum::Json<ClaimKeyPackagesResponse>, Error> {
    if request.client_ids.len() > MAX_CLAIM_IDS {
        return Err(Error::bad_request(format!(
            "at most {MAX_CLAIM_IDS} client ids per claim"
        )));
    }
    check_client_ids(&request.client_ids, "client_ids")?;
    if request.client_ids.is_empty() {
        return Ok(axum::Json(ClaimKeyPackagesResponse {
            key_packages: Vec::new(),
            missing: Vec::new(),
        }));
    }
    let outcome = state.store.claim_key_packages(&request.client_ids).await?;
    Ok(axum::Json(ClaimKeyPackagesResponse {
        key_packages: outcome.key_packages,
        missing: outcome.missing,
    }))
}
