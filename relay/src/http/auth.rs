//! Bearer tokens: creation, parsing, and the [`Caller`] extractor of authenticated routes.
//!
//! A token is 32 random bytes shown once to the client as base64url without padding. The relay
//! keeps only its SHA-256, so a database leak gives no usable token; since the token has 256 bits
//! of entropy a plain (unsalted) hash is enough and lets us look clients up by it.

use axum::extract::FromRequestParts;
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::Rng as _;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq as _;

use super::AppState;
use super::error::Error;

/// Token length in bytes before encoding.
const TOKEN_BYTES: usize = 32;

/// A fresh token: what the client gets, and the hash the relay stores.
pub(crate) struct NewToken {
    pub(crate) token: String,
    pub(crate) hash: [u8; 32],
}

impl std::fmt::Debug for NewToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NewToken(<redacted>)")
    }
}

pub(crate) fn new_token() -> NewToken {
    let mut raw = [0u8; TOKEN_BYTES];
    // ThreadRng is a CSPRNG seeded from the operating system.
    rand::rng().fill(&mut raw);
    NewToken {
        token: URL_SAFE_NO_PAD.encode(raw),
        hash: sha256(&raw),
    }
}

pub(crate) fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Constant-time equality of two hashes.
pub(crate) fn hashes_equal(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.ct_eq(b).into()
}

/// The bearer token of the request: `Ok(None)` without an `Authorization` header, 401 if the
/// header is there but is not `Bearer <token>`.
pub(crate) fn bearer_token(headers: &HeaderMap) -> Result<Option<&str>, Error> {
    let Some(value) = headers.get(AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| Error::Unauthorized("malformed Authorization header"))?;
    match value.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(Some(token.trim()))
        }
        _ => Err(Error::Unauthorized(
            "the Authorization header must be `Bearer <token>`",
        )),
    }
}

/// The SHA-256 of the raw token bytes, or `None` if `token` cannot be one of ours.
pub(crate) fn client_token_hash(token: &str) -> Option<[u8; 32]> {
    let raw = URL_SAFE_NO_PAD.decode(token).ok()?;
    (raw.len() == TOKEN_BYTES).then(|| sha256(&raw))
}

/// Recently authenticated tokens: SHA-256 of the token -> client id.
///
/// Saves one database round trip per request (the relay's hot path is one append per request).
/// Entries live at most [`AuthCache::TTL`]: a deleted account is dropped here at once by the
/// process that deleted it, and stops working on other relay processes sharing a PostgreSQL
/// database within the TTL. Only successful look-ups are kept, so a bad token always reaches the
/// database and cannot fill the cache.
pub(crate) struct AuthCache {
    entries: std::sync::Mutex<std::collections::HashMap<[u8; 32], (String, std::time::Instant)>>,
}

impl AuthCache {
    pub(crate) const TTL: std::time::Duration = std::time::Duration::from_secs(10);
    /// Bound on memory; when full the cache starts over (a miss only costs a database query).
    const MAX_ENTRIES: usize = 100_000;

    pub(crate) fn new() -> Self {
        AuthCache {
            entries: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    fn get(&self, hash: &[u8; 32]) -> Option<String> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .get(hash)
            .filter(|(_, at)| at.elapsed() < Self::TTL)
            .map(|(client_id, _)| client_id.clone())
    }

    fn insert(&self, hash: [u8; 32], client_id: String) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= Self::MAX_ENTRIES {
            entries.clear();
        }
        entries.insert(hash, (client_id, std::time::Instant::now()));
    }

    /// Forgets every token of `client_id` (its account was deleted).
    pub(crate) fn forget_client(&self, client_id: &str) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.retain(|_, (c, _)| c != client_id);
    }
}

impl Default for AuthCache {
    fn default() -> Self {
        Self::new()
    }
}

/// The authenticated client of a request. Extracting it also applies the per-client rate limit,
/// so every authenticated route is limited without each handler remembering to.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    pub(crate) client_id: String,
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = Error;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token =
            bearer_token(&parts.headers)?.ok_or(Error::Unauthorized("missing bearer token"))?;
        let hash = client_token_hash(token).ok_or(Error::Unauthorized("invalid token"))?;
        if let Some(client_id) = state.auth_cache.get(&hash) {
            state.rate_limits.check_client(&client_id)?;
            return Ok(Caller { client_id });
        }
        let record = state
            .store
            .client_by_token_hash(hash)
            .await?
            .ok_or(Error::Unauthorized("invalid token"))?;
        if !hashes_equal(&record.token_hash, &hash) {
            return Err(Error::Unauthorized("invalid token"));
        }
        state.rate_limits.check_client(&record.client_id)?;
        state.auth_cache.insert(hash, record.client_id.clone());
        Ok(Caller {
            client_id: record.client_id,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use axum::http::HeaderValue;

    use super::*;

    fn headers(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_str(auth).unwrap());
        h
    }

    #[test]
    fn new_tokens_are_32_bytes_base64url_and_hash_to_their_stored_hash() {
        let t = new_token();
        assert_eq!(t.token.len(), 43);
        assert!(!t.token.contains(['=', '+', '/']));
        assert_eq!(client_token_hash(&t.token), Some(t.hash));
        assert_ne!(new_token().token, t.token);
        assert!(!format!("{t:?}").contains(&t.token));
    }

    #[test]
    fn bearer_parsing() {
        assert_eq!(bearer_token(&HeaderMap::new()).unwrap(), None);
        assert_eq!(bearer_token(&headers("Bearer abc")).unwrap(), Some("abc"));
        assert_eq!(bearer_token(&headers("bearer abc")).unwrap(), Some("abc"));
        assert!(bearer_token(&headers("Basic abc")).is_err());
        assert!(bearer_token(&headers("Bearer ")).is_err());
        assert!(bearer_token(&headers("abc")).is_err());
    }

    #[test]
    fn tokens_of_the_wrong_shape_have_no_hash() {
        assert_eq!(client_token_hash("not base64!"), None);
        assert_eq!(client_token_hash("AAAA"), None);
    }
}
