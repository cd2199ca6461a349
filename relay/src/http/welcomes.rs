//! `POST /v1/welcomes`, `GET /v1/welcomes`, `DELETE /v1/welcomes`: the per-client inbox.

use axum::extract::State;
use axum::http::StatusCode;
use dmls_api::limits::{MAX_WELCOMES_PER_POST, PAGE_LIMIT_DEFAULT, PAGE_LIMIT_MAX};
use dmls_api::{OutgoingWelcome, PostWelcomesRequest, PostWelcomesResponse, Problem, WelcomesPage};
use serde::Deserialize;
use utoipa::IntoParams;

use super::AppState;
use super::auth::Caller;
use super::error::{AuthedErrors, Error};
use super::extract::{Json, Query};
use crate::store::{NewWelcome, StoreError};

/// A cursor page: `after` (exclusive, default 0) and `limit` (default 100, at most 1,000).
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct PageQuery {
    /// Return items after this id or seq (default 0: from the start).
    #[param(format = "uint64", maximum = 18446744073709551615usize)]
    pub(crate) after: Option<u64>,
    /// Most items to return (1 to 1,000, default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub(crate) limit: Option<u32>,
}

impl PageQuery {
    /// `(after, limit)` with defaults applied; 400 for a limit out of range.
    pub(crate) fn resolve(&self) -> Result<(u64, u32), Error> {
        let limit = self.limit.unwrap_or(PAGE_LIMIT_DEFAULT);
        if !(1..=PAGE_LIMIT_MAX).contains(&limit) {
            return Err(Error::bad_request(format!(
                "limit must be 1 to {PAGE_LIMIT_MAX}"
            )));
        }
        Ok((self.after.unwrap_or(0), limit))
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct DeleteQuery {
    /// Drop the caller's welcomes with id up to and including this one.
    #[param(format = "uint64", maximum = 18446744073709551615usize)]
    pub(crate) upto: u64,
}

/// Delivers welcomes to recipients' inboxes, all or nothing; a `to_all` welcome is stored once
/// for all its recipients.
#[utoipa::path(
    post,
    path = "/v1/welcomes",
    operation_id = "post_welcomes",
    tag = "welcomes",
    request_body = PostWelcomesRequest,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Stored; inbox ids, one per recipient, in request order", body = PostWelcomesResponse),
        (status = 400, description = "Malformed body, neither or both of `to` and `to_all`, an empty or repeating `to_all`, invalid recipient, empty welcome or more than 1,000 recipients", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown recipients (named in `detail`); nothing stored", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "A welcome or the body is too large", body = Problem, content_type = "application/problem+json"),
        AuthedErrors,
    )
)]
pub(crate) async fn post(
    State(state): State<AppState>,
    caller: Caller,
    Json(request): Json<PostWelcomesRequest>,
) -> Result<(StatusCode, axum::Json<PostWelcomesResponse>), Error> {
    let max = state.config.max_welcome_bytes;
    let mut entries = 0usize;
    let mut welcomes = Vec::with_capacity(request.welcomes.len());
    for welcome in request.welcomes {
        let (to, data) = recipients(welcome)?;
        entries += to.len();
        if entries > MAX_WELCOMES_PER_POST {
            return Err(Error::bad_request(format!(
                "at most {MAX_WELCOMES_PER_POST} welcomes per request (counted by recipient)"
            )));
        }
        let shown = match to.as_slice() {
            [one] => format!("{one:?}"),
            [first, rest @ ..] => format!("{first:?} and {} others", rest.len()),
            [] => String::new(),
        };
        if data.is_empty() {
            return Err(Error::bad_request(format!(
                "the welcome to {shown} is empty"
            )));
        }
        if data.len() > max {
            return Err(Error::PayloadTooLarge(format!(
                "the welcome to {shown} has {} bytes; the limit is {max}",
                data.len()
            )));
        }
        welcomes.push(NewWelcome { to, data });
    }
    if welcomes.is_empty() {
        return Ok((
            StatusCode::CREATED,
            axum::Json(PostWelcomesResponse { ids: Vec::new() }),
        ));
    }
    let ids = match state
        .store
        .post_welcomes(&caller.client_id, welcomes, state.now())
        .await
    {
        Ok(ids) => ids,
        Err(StoreError::OverQuota(what)) => return Err(state.over_quota(what)),
        Err(e) => return Err(e.into()),
    };
    ::metrics::counter!(super::metrics::WELCOMES_STORED)
        .increment(u64::try_from(entries).unwrap_or(0));
    Ok((
        StatusCode::CREATED,
        axum::Json(PostWelcomesResponse { ids }),
    ))
}

/// The recipients of one welcome (one for `to`, several for `to_all`) and its bytes; 400
/// unless exactly one of the two is given, `to_all` names at least one recipient and none
/// twice, and every recipient id is valid.
fn recipients(welcome: OutgoingWelcome) -> Result<(Vec<String>, Vec<u8>), Error> {
    let to = match (welcome.to, welcome.to_all) {
        (Some(to), None) => vec![to],
        (None, Some(to_all)) => {
            if to_all.is_empty() {
                return Err(Error::bad_request("`to_all` names no recipient"));
            }
            if to_all.len() > MAX_WELCOMES_PER_POST {
                return Err(Error::bad_request(format!(
                    "at most {MAX_WELCOMES_PER_POST} welcomes per request (counted by recipient)"
                )));
            }
            let mut seen = std::collections::HashSet::with_capacity(to_all.len());
            if let Some(twice) = to_all.iter().find(|id| !seen.insert(id.as_str())) {
                return Err(Error::bad_request(format!(
                    "`to_all` names {twice:?} more than once"
                )));
            }
            to_all
        }
        (Some(_), Some(_)) => {
            return Err(Error::bad_request(
                "a welcome names its recipients in `to` or in `to_all`, not both",
            ));
        }
        (None, None) => {
            return Err(Error::bad_request(
                "a welcome needs a recipient: `to` or `to_all`",
            ));
        }
    };
    if let Some(bad) = to.iter().find(|id| !dmls_api::is_valid_client_id(id)) {
        return Err(Error::bad_request(format!("invalid recipient {bad:?}")));
    }
    Ok((to, welcome.data.into_inner()))
}

/// Reads the caller's own inbox, ids increasing.
#[utoipa::path(
    get,
    path = "/v1/welcomes",
    operation_id = "list_welcomes",
    tag = "welcomes",
    params(PageQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of the caller's welcomes", body = WelcomesPage),
        (status = 400, description = "Malformed query", body = Problem, content_type = "application/problem+json"),
        AuthedErrors,
    )
)]
pub(crate) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<PageQuery>,
) -> Result<axum::Json<WelcomesPage>, Error> {
    let (after, limit) = query.resolve()?;
    let page = state
        .store
        .list_welcomes(&caller.client_id, after, limit)
        .await?;
    let next_after = page.items.last().map_or(after, |w| w.id);
    Ok(axum::Json(WelcomesPage {
        welcomes: page.items,
        next_after,
        more: page.more,
    }))
}

/// Drops the caller's welcomes up to an id, once it has processed them.
#[utoipa::path(
    delete,
    path = "/v1/welcomes",
    operation_id = "delete_welcomes",
    tag = "welcomes",
    params(DeleteQuery),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Dropped"),
        (status = 400, description = "Missing or malformed `upto`", body = Problem, content_type = "application/problem+json"),
        AuthedErrors,
    )
)]
pub(crate) async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<DeleteQuery>,
) -> Result<StatusCode, Error> {
    state
        .store
        .delete_welcomes(&caller.client_id, query.upto)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
