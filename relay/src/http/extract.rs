//! Axum's extractors, with their rejections turned into our problem+json 400/413.
//!
//! Axum answers a malformed body or query with a plain-text 400/415/422; API.md promises
//! problem+json for every error and only 400 or 413 for malformed input, so handlers take these
//! wrappers instead of axum's own.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::AppState;
use super::error::Error;

/// A JSON object body (needs `Content-Type: application/json`). Every request body of the API
/// is an object; serde would also read a struct from a JSON array (`[]` as a request with every
/// field defaulted), which is refused here.
pub(crate) struct Json<T>(pub T);

impl<S, T> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let (parts, body) = req.into_parts();
        let bytes =
            match axum::body::Bytes::from_request(Request::from_parts(parts.clone(), body), state)
                .await
            {
                Ok(bytes) => bytes,
                Err(rejection) => {
                    return Err(Error::from_rejection(
                        rejection.status(),
                        rejection.body_text(),
                    ));
                }
            };
        require_object(&bytes)?;
        let req = Request::from_parts(parts, axum::body::Body::from(bytes));
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(Json(value)),
            Err(rejection) => Err(Error::from_rejection(
                rejection.status(),
                rejection.body_text(),
            )),
        }
    }
}

/// Refuses a body that cannot be a JSON object (what does not start with `{`, leading white
/// space aside); a body that does but is malformed is left to the JSON parser to report.
pub(crate) fn require_object(json: &[u8]) -> Result<(), Error> {
    match json.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => Ok(()),
        _ => Err(Error::bad_request("the request body must be a JSON object")),
    }
}

/// A query string.
pub(crate) struct Query<T>(pub T);

impl<S, T> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(Query(value)),
            Err(rejection) => Err(Error::from_rejection(
                rejection.status(),
                rejection.body_text(),
            )),
        }
    }
}

/// Path parameters.
pub(crate) struct Path<T>(pub T);

impl<S, T> FromRequestParts<S> for Path<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Path(value)),
            Err(rejection) => Err(Error::from_rejection(
                rejection.status(),
                rejection.body_text(),
            )),
        }
    }
}

/// The whole body as bytes, within the router's body limit (413 beyond it).
pub(crate) struct Body(pub axum::body::Bytes);

impl<S> FromRequest<S> for Body
where
    S: Send + Sync,
{
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::body::Bytes::from_request(req, state).await {
            Ok(bytes) => Ok(Body(bytes)),
            Err(rejection) => Err(Error::from_rejection(
                rejection.status(),
                rejection.body_text(),
            )),
        }
    }
}

/// The client's IP address: the TCP peer's, or, when the peer is one of `--trusted-proxies`,
/// the client's address from `X-Forwarded-For` (see [`forwarded`](crate::forwarded)). `None`
/// without connect info (the server always has it; a router driven directly, as in unit tests,
/// has none).
pub(crate) struct ClientIp(pub Option<IpAddr>);

impl FromRequestParts<AppState> for ClientIp {
    type Rejection = Error;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.ip());
        Ok(ClientIp(peer.map(|peer| {
            state.config.trusted_proxies.client_ip(peer, &parts.headers)
        })))
    }
}
