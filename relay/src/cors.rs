//! Cross-origin access for browser clients (`--cors-origins`).
//!
//! Off by default: a relay answers no preflight and sends no `Access-Control-*` header, so a
//! page from another origin cannot read its answers. An operator who serves a web client names
//! its origins (or `*` for any). The relay authenticates with bearer tokens, never cookies, so
//! credentials are never allowed; a page can act only with a token its user gave it.

use std::time::Duration;

use axum::http::{HeaderValue, Method, header};
use tower_http::cors::{AllowOrigin, CorsLayer, ExposeHeaders};

/// The origins browsers may call the relay from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum CorsOrigins {
    /// None: no CORS headers at all (the default).
    #[default]
    Off,
    /// Any origin (`*`).
    Any,
    /// These origins, exactly as a browser sends them in `Origin` (`https://chat.example.org`).
    List(Vec<HeaderValue>),
}

impl CorsOrigins {
    /// Parses `--cors-origins`: empty (off), `*` (any origin), or a comma-separated list of
    /// origins `scheme://host[:port]` with scheme `http` or `https` and no path.
    pub fn parse(list: &str) -> Result<Self, String> {
        let list = list.trim();
        if list.is_empty() {
            return Ok(CorsOrigins::Off);
        }
        if list == "*" {
            return Ok(CorsOrigins::Any);
        }
        let mut origins = Vec::new();
        for entry in list.split(',').map(str::trim) {
            origins.push(parse_origin(entry)?);
        }
        Ok(CorsOrigins::List(origins))
    }

    /// The layer for these origins; `None` when CORS is off.
    pub(crate) fn layer(&self) -> Option<CorsLayer> {
        let allow = match self {
            CorsOrigins::Off => return None,
            CorsOrigins::Any => AllowOrigin::any(),
            CorsOrigins::List(origins) => AllowOrigin::list(origins.iter().cloned()),
        };
        Some(
            CorsLayer::new()
                .allow_origin(allow)
                .allow_methods([Method::GET, Method::POST, Method::PUT, Method::DELETE])
                .allow_headers([
                    header::AUTHORIZATION,
                    header::CONTENT_TYPE,
                    header::HeaderName::from_static(dmls_api::IDEMPOTENCY_KEY_HEADER),
                    header::HeaderName::from_static("x-request-id"),
                ])
                .expose_headers(ExposeHeaders::list([
                    header::RETRY_AFTER,
                    header::LOCATION,
                    header::HeaderName::from_static("x-request-id"),
                ]))
                .max_age(Duration::from_secs(3600)),
        )
    }
}

/// One origin: `http` or `https`, a host, an optional port, nothing else.
fn parse_origin(entry: &str) -> Result<HeaderValue, String> {
    let bad = |why: &str| {
        format!(
            "{entry:?} is not an origin ({why}); write e.g. https://chat.example.org or http://localhost:3000"
        )
    };
    if entry.is_empty() {
        return Err("empty entry in --cors-origins".into());
    }
    let uri: axum::http::Uri = entry.parse().map_err(|_| bad("not a URL"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(bad("the scheme must be http or https")),
    }
    let authority = uri.authority().ok_or_else(|| bad("no host"))?;
    if authority.as_str().contains('@') {
        return Err(bad("no user name"));
    }
    if entry.ends_with('/') || uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
        return Err(bad("no path, not even a trailing /"));
    }
    HeaderValue::from_str(&entry.to_ascii_lowercase()).map_err(|_| bad("not ASCII"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_origin_lists() {
        assert_eq!(CorsOrigins::parse(""), Ok(CorsOrigins::Off));
        assert_eq!(CorsOrigins::parse(" * "), Ok(CorsOrigins::Any));
        assert_eq!(
            CorsOrigins::parse("https://chat.example.org, http://localhost:3000"),
            Ok(CorsOrigins::List(vec![
                HeaderValue::from_static("https://chat.example.org"),
                HeaderValue::from_static("http://localhost:3000"),
            ]))
        );
        for bad in [
            "chat.example.org",
            "ftp://chat.example.org",
            "https://chat.example.org/",
            "https://chat.example.org/app",
            "https://user@chat.example.org",
            "https://a.example,",
            "https://a.example,*",
        ] {
            assert!(CorsOrigins::parse(bad).is_err(), "{bad} was accepted");
        }
    }
}
