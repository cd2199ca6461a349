//! `POST /v1/clients`, `GET /v1/clients/me`, `DELETE /v1/clients/me`.

use axum::extract::{FromRequestParts, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use dmls_api::{ClientInfo, Problem, RegisterRequest, RegisterResponse};

use super::auth::{self, Caller};
use super::error::{AuthedErrors, Error};
use super::extract::{ClientIp, Json};
use super::{AppState, now_millis};

/// Registers a client id and returns its token, which is shown only here.
///
/// In `token` registration mode the operator's registration token must be the bearer: without
/// it the answer is 401, with another token 403.
#[utoipa::path(
    post,
    path = "/v1/clients",
    operation_id = "register_client",
    tag = "clients",
    request_body = RegisterRequest,
    security((), ("bearer" = [])),
    responses(
        (status = 201, description = "Registered; keep the token, it is not shown again", body = RegisterResponse),
        (status = 400, description = "Invalid client id or body", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Token mode: no registration token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Token mode: wrong registration token", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Client id taken", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many registrations from this address", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Storage unavailable", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn register(
    State(state): State<AppState>,
    _allowed: RegistrationAllowed,
    Json(request): Json<RegisterRequest>,
) -> Result<(StatusCode, axum::Json<RegisterResponse>), Error> {
    if !dmls_api::is_valid_client_id(&request.client_id) {
        return Err(Error::bad_request(
            "invalid client_id: 1 to 64 characters of a-z 0-9 . _ -",
        ));
    }
    let token = auth::new_token();
    state
        .store
        .create_client(&request.client_id, token.hash, now_millis())
        .await
        .map_err(|e| match e {
            crate::store::StoreError::Conflict => {
                Error::Conflict(format!("client id {:?} is taken", request.client_id))
            }
            other => other.into(),
        })?;
    tracing::info!(client_id = %request.client_id, "client registered");
    Ok((
        StatusCode::CREATED,
        axum::Json(RegisterResponse {
            client_id: request.client_id,
            token: token.token,
        }),
    ))
}

/// Proof that a registration may go ahead: in `token` mode the bearer is the operator's
/// registration token (compared as SHA-256 hashes in constant time, so neither its content nor
/// its length leaks through timing), and the caller's address is under its registration rate.
/// An extractor, so it runs before the body is read: an unauthorised caller learns nothing about
/// its body.
pub(crate) struct RegistrationAllowed;

impl FromRequestParts<AppState> for RegistrationAllowed {
    type Rejection = Error;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        if let Some(expected) = &state.registration_token_hash {
            let presented = auth::bearer_token(&parts.headers)?.ok_or(Error::Unauthorized(
                "registration needs the operator's registration token as bearer",
            ))?;
            if !auth::hashes_equal(expected, &auth::sha256(presented.as_bytes())) {
                return Err(Error::Forbidden("wrong registration token".into()));
            }
        }
        let ClientIp(ip) = ClientIp::from_request_parts(parts, state).await?;
        state.rate_limits.check_registration(ip)?;
        Ok(RegistrationAllowed)
    }
}

/// The caller's account and key package stock.
#[utoipa::path(
    get,
    path = "/v1/clients/me",
    operation_id = "get_me",
    tag = "clients",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The caller's account", body = ClientInfo),
        AuthedErrors,
    )
)]
pub(crate) async fn me(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<axum::Json<ClientInfo>, Error> {
    // Gone between authentication and this read: the account was just deleted.
    let stats = state
        .store
        .client_stats(&caller.client_id)
        .await?
        .ok_or(Error::Unauthorized("invalid token"))?;
    Ok(axum::Json(ClientInfo {
        client_id: stats.client_id,
        created_at: stats.created_at,
        key_packages_available: stats.key_packages_available,
        has_last_resort: stats.has_last_resort,
        max_key_packages: state.config.max_key_packages,
    }))
}

/// Deletes the caller's account, key packages, welcome inbox and the groups it owns.
#[utoipa::path(
    delete,
    path = "/v1/clients/me",
    operation_id = "delete_me",
    tag = "clients",
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Deleted"),
        AuthedErrors,
    )
)]
pub(crate) async fn delete_me(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<StatusCode, Error> {
    state.store.delete_client(&caller.client_id).await?;
    state.auth_cache.forget_client(&caller.client_id);
    tracing::info!(client_id = %caller.client_id, "client deleted");
    Ok(StatusCode::NO_CONTENT)
}
