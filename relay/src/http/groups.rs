//! `/v1/groups/{owner}/{group_id}` and its `/messages`.
//!
//! Access follows [`Access`]: the owner alone changes or deletes the group; the owner and current
//! members read everything and post; a dropped member reads up to the seq at which it was
//! dropped (so it can read the commit that removed it) and posts nothing. Anyone else gets 403
//! for an existing group; an unknown group is 404.

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, StatusCode};
use dmls_api::limits::MAX_GROUP_MEMBERS;
use dmls_api::openapi::{ClientId, GroupId};
use dmls_api::{
    GroupInfo, MessagesPage, PostMessageRequest, PostMessageResponse, Problem, PutGroupRequest,
};
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};

use super::auth::{Caller, sha256};
use super::error::{AuthedErrors, Error};
use super::extract::{Body, Json, Path, Query};
use super::welcomes::PageQuery;
use super::{AppState, check_client_ids, check_group_name, now_millis};
use crate::store::{Access, AppendOutcome, AppendRequest, GroupRecord};

/// Raw message bytes (`application/octet-stream`), for the OpenAPI document.
pub(crate) struct RawBytes;

impl utoipa::PartialSchema for RawBytes {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .content_media_type("application/octet-stream")
            .min_length(Some(1))
            .description(Some(
                "The message bytes, unencoded; never empty, and at most the relay's message size \
                 (`--max-message-bytes`, 1 MiB by default; 413 beyond)",
            ))
            .into()
    }
}

impl utoipa::ToSchema for RawBytes {}

/// The group, or 404.
async fn find_group(state: &AppState, owner: &str, group_id: &str) -> Result<GroupRecord, Error> {
    state
        .store
        .get_group(owner, group_id)
        .await?
        .ok_or_else(|| Error::NotFound(format!("no group {owner}/{group_id}")))
}

fn not_a_member(owner: &str, group_id: &str) -> Error {
    Error::Forbidden(format!("not a member of {owner}/{group_id}"))
}

/// Creates a group (201) or replaces its member list (200). Only `{owner}` may.
#[utoipa::path(
    put,
    path = "/v1/groups/{owner}/{group_id}",
    operation_id = "put_group",
    tag = "groups",
    params(
        ("owner" = ClientId, Path, description = "The owner's client id"),
        ("group_id" = GroupId, Path, description = "Lowercase hex of 1 to 64 bytes"),
    ),
    request_body = PutGroupRequest,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Created", body = GroupInfo),
        (status = 200, description = "Member list replaced", body = GroupInfo),
        (status = 400, description = "Invalid owner, group id, or member list", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The caller is not `{owner}`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown members (named in `detail`); nothing changed", body = Problem, content_type = "application/problem+json"),
        AuthedErrors,
    )
)]
pub(crate) async fn put(
    State(state): State<AppState>,
    caller: Caller,
    Path((owner, group_id)): Path<(String, String)>,
    Json(request): Json<PutGroupRequest>,
) -> Result<(StatusCode, axum::Json<GroupInfo>), Error> {
    check_group_name(&owner, &group_id)?;
    if caller.client_id != owner {
        return Err(Error::Forbidden(
            "only the owner named in the path may create or change its groups".into(),
        ));
    }
    if request.members.len() > MAX_GROUP_MEMBERS {
        return Err(Error::bad_request(format!(
            "at most {MAX_GROUP_MEMBERS} members"
        )));
    }
    check_client_ids(&request.members, "members")?;
    let created = state
        .store
        .put_group(&owner, &group_id, &request.members, now_millis())
        .await?;
    let group = find_group(&state, &owner, &group_id).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, axum::Json(group_info(group))))
}

fn group_info(group: GroupRecord) -> GroupInfo {
    GroupInfo {
        group_id: group.group_id,
        owner: group.owner,
        members: group.members,
        last_seq: group.last_seq,
        created_at: group.created_at,
    }
}

/// The group's member list and last seq, for its owner and current members.
#[utoipa::path(
    get,
    path = "/v1/groups/{owner}/{group_id}",
    operation_id = "get_group",
    tag = "groups",
    params(
        ("owner" = ClientId, Path, description = "The owner's client id"),
        ("group_id" = GroupId, Path, description = "Lowercase hex of 1 to 64 bytes"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The group", body = GroupInfo),
        (status = 400, description = "Invalid owner or group id", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Neither owner nor member", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such group", body = Problem, content_type = "application/problem+json"),
        AuthedErrors,
    )
)]
pub(crate) async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path((owner, group_id)): Path<(String, String)>,
) -> Result<axum::Json<GroupInfo>, Error> {
    check_group_name(&owner, &group_id)?;
    let group = find_group(&state, &owner, &group_id).await?;
    if group.access(&caller.client_id) != Access::Full {
        return Err(not_a_member(&owner, &group_id));
    }
    Ok(axum::Json(group_info(group)))
}

/// Deletes the group and its messages. Owner only.
#[utoipa::path(
    delete,
    path = "/v1/groups/{owner}/{group_id}",
    operation_id = "delete_group",
    tag = "groups",
    params(
        ("owner" = ClientId, Path, description = "The owner's client id"),
        ("group_id" = GroupId, Path, description = "Lowercase hex of 1 to 64 bytes"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "Invalid owner or group id", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The caller is not `{owner}`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such group", body = Problem, content_type = "application/problem+json"),
        AuthedErrors,
    )
)]
pub(crate) async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path((owner, group_id)): Path<(String, String)>,
) -> Result<StatusCode, Error> {
    check_group_name(&owner, &group_id)?;
    if caller.client_id != owner {
        return Err(Error::Forbidden("only the owner may delete a group".into()));
    }
    if !state.store.delete_group(&owner, &group_id).await? {
        return Err(Error::NotFound(format!("no group {owner}/{group_id}")));
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Is the body JSON (`application/json` or `application/*+json`)? Anything else is raw bytes.
fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Appends a message. Owner and current members only.
///
/// With an `Idempotency-Key`, a retry with the same key and bytes returns the first seq with 200
/// and stores nothing; the same key with other bytes is 409. JSON and raw forms of the same bytes
/// are the same message.
#[utoipa::path(
    post,
    path = "/v1/groups/{owner}/{group_id}/messages",
    operation_id = "post_message",
    tag = "groups",
    params(
        ("owner" = ClientId, Path, description = "The owner's client id"),
        ("group_id" = GroupId, Path, description = "Lowercase hex of 1 to 64 bytes"),
        ("Idempotency-Key" = Option<String>, Header, nullable = false, pattern = "^[!-~]{1,64}$", min_length = 1, max_length = 64, description = "1 to 64 visible ASCII characters, scoped to the group and the sender, kept at least 24 hours"),
    ),
    request_body(content(
        (RawBytes = "application/octet-stream"),
        (PostMessageRequest = "application/json"),
    )),
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Stored", body = PostMessageResponse),
        (status = 200, description = "A retry of a stored message (same Idempotency-Key and bytes); nothing stored", body = PostMessageResponse),
        (status = 400, description = "Malformed body, empty message, invalid Idempotency-Key, owner or group id", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Neither owner nor current member", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such group", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Idempotency-Key used before with other bytes", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Message too large", body = Problem, content_type = "application/problem+json"),
        AuthedErrors,
    )
)]
pub(crate) async fn post_message(
    State(state): State<AppState>,
    caller: Caller,
    Path((owner, group_id)): Path<(String, String)>,
    headers: HeaderMap,
    Body(body): Body,
) -> Result<(StatusCode, axum::Json<PostMessageResponse>), Error> {
    check_group_name(&owner, &group_id)?;
    let data = if is_json(&headers) {
        super::extract::require_object(&body)?;
        let request: PostMessageRequest = serde_json::from_slice(&body)
            .map_err(|e| Error::bad_request(format!("invalid JSON body: {e}")))?;
        request.data.into_inner()
    } else {
        body.to_vec()
    };
    if data.is_empty() {
        return Err(Error::bad_request("the message is empty"));
    }
    let max = state.config.max_message_bytes;
    if data.len() > max {
        return Err(Error::PayloadTooLarge(format!(
            "the message has {} bytes; the limit is {max}",
            data.len()
        )));
    }
    let idempotency = match headers.get(dmls_api::IDEMPOTENCY_KEY_HEADER) {
        None => None,
        Some(value) => {
            let key = value
                .to_str()
                .ok()
                .filter(|k| dmls_api::is_valid_idempotency_key(k))
                .ok_or_else(|| {
                    Error::bad_request("Idempotency-Key must be 1 to 64 visible ASCII characters")
                })?;
            Some((key.to_owned(), sha256(&data)))
        }
    };
    let request = AppendRequest {
        owner: owner.clone(),
        group_id: group_id.clone(),
        sender: caller.client_id,
        data,
        idempotency,
        received_at: state.now(),
    };
    match state.store.append(request).await? {
        AppendOutcome::Stored(seq) => {
            ::metrics::counter!(super::metrics::MESSAGES_STORED).increment(1);
            Ok((StatusCode::CREATED, axum::Json(PostMessageResponse { seq })))
        }
        AppendOutcome::Duplicate(seq) => {
            Ok((StatusCode::OK, axum::Json(PostMessageResponse { seq })))
        }
        AppendOutcome::IdempotencyConflict => Err(Error::Conflict(
            "this Idempotency-Key was used before with a different message".into(),
        )),
        AppendOutcome::NoGroup => Err(Error::NotFound(format!("no group {owner}/{group_id}"))),
        AppendOutcome::Forbidden => Err(Error::Forbidden(format!(
            "only the owner and current members may post to {owner}/{group_id}"
        ))),
        AppendOutcome::OverQuota(what) => Err(state.over_quota(what)),
    }
}

/// Reads messages in seq order. A dropped member sees only those stored before it was dropped.
#[utoipa::path(
    get,
    path = "/v1/groups/{owner}/{group_id}/messages",
    operation_id = "list_messages",
    tag = "groups",
    params(
        ("owner" = ClientId, Path, description = "The owner's client id"),
        ("group_id" = GroupId, Path, description = "Lowercase hex of 1 to 64 bytes"),
        PageQuery,
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of messages", body = MessagesPage),
        (status = 400, description = "Malformed query, owner or group id", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed to read this group", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such group", body = Problem, content_type = "application/problem+json"),
        AuthedErrors,
    )
)]
pub(crate) async fn list_messages(
    State(state): State<AppState>,
    caller: Caller,
    Path((owner, group_id)): Path<(String, String)>,
    Query(query): Query<PageQuery>,
) -> Result<axum::Json<MessagesPage>, Error> {
    check_group_name(&owner, &group_id)?;
    let (after, limit) = query.resolve()?;
    let group = find_group(&state, &owner, &group_id).await?;
    let upto = match group.access(&caller.client_id) {
        Access::Full => None,
        Access::ReadUpTo(upto) => Some(upto),
        Access::None => return Err(not_a_member(&owner, &group_id)),
    };
    let page = state
        .store
        .read_messages(&owner, &group_id, after, upto, limit)
        .await?;
    let next_after = page.items.last().map_or(after, |m| m.seq);
    Ok(axum::Json(MessagesPage {
        messages: page.items,
        next_after,
        more: page.more,
    }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use axum::http::HeaderValue;

    use super::*;

    fn with_type(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(CONTENT_TYPE, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn json_bodies_are_recognised_by_content_type() {
        assert!(is_json(&with_type("application/json")));
        assert!(is_json(&with_type("Application/JSON; charset=utf-8")));
        assert!(is_json(&with_type("application/problem+json")));
        assert!(!is_json(&with_type("application/octet-stream")));
        assert!(!is_json(&HeaderMap::new()));
    }
}
