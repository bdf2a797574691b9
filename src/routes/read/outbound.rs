//! Steps 1–2 of a read: the request checks, then the upstream request, built once.
//!
//! [`Outbound`] is the request exactly as the upstream will get it: method, path and query
//! (rewritten by the route's template; rendered on first use, so a cache hit never renders
//! it), and every header (client headers that may cross, `X-Forwarded-*`, identity headers
//! from the verified token). The cache computes its keys from this map, so what the origin saw
//! and what selects a stored response are the same.

use std::borrow::Cow;
use std::convert::Infallible;
use std::sync::OnceLock;

use axum::extract::{FromRequestParts, RawPathParams};
use http::header::{self, HeaderName, HeaderValue};
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{HeaderMap, Method};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use super::ReadRoute;
use crate::auth::Identity;
use crate::error::GatewayError;
use crate::proxy::{ForwardContext, upstream_request_headers};
use crate::state::AppState;

/// Characters kept as-is when a path parameter is put into an upstream path segment.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Request fields the cache answers itself (RFC 9111 §4.3.2, RFC 9110 §14), with
/// `Accept-Encoding` (the gateway encodes): its upstream fetches are complete, unconditional
/// and identity-encoded, so these never reach the upstream from a cached route (unless the
/// request is passed through, see [`Outbound::pass_through`]).
const ANSWERED_BY_CACHE: [HeaderName; 7] = [
    header::ACCEPT_ENCODING,
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_MATCH,
    header::IF_UNMODIFIED_SINCE,
    header::IF_RANGE,
    header::RANGE,
];

/// The upstream request for one read.
#[derive(Debug, Clone)]
pub(super) struct Outbound {
    /// Method sent upstream.
    pub(super) method: Method,
    /// Path and query sent upstream, once rendered ([`Outbound::path_and_query`]).
    path_and_query: OnceLock<PathAndQuery>,
    /// Every header sent upstream.
    pub(super) headers: HeaderMap,
}

/// What the upstream path and query are rendered from.
#[derive(Debug, Clone, Copy)]
pub(super) struct Target<'a> {
    pub(super) route: &'a ReadRoute,
    /// The route's path parameters, when its upstream path is a template.
    pub(super) params: Option<&'a RawPathParams>,
    pub(super) uri: &'a http::Uri,
}

/// Step 1: rejects paths a backend could read differently, and extracts the path parameters
/// a templated upstream path needs.
pub(super) async fn check(
    route: &ReadRoute,
    parts: &mut Parts,
) -> Result<Option<RawPathParams>, GatewayError> {
    crate::routes::path::check(parts.uri.path())?;
    match route.target.upstream_path {
        None => Ok(None),
        Some(_) => RawPathParams::from_request_parts(parts, &())
            .await
            .map(Some)
            .map_err(|_| GatewayError::BadRequest("path parameters must be valid UTF-8".into())),
    }
}

impl Outbound {
    /// Builds the upstream request of a checked request; for a cache fill (`cache_fill`): a GET
    /// for the complete, identity-encoded representation, without the fields the cache answers
    /// itself (the gateway compresses, answers conditionals and ranges).
    pub(super) fn new(
        state: &AppState,
        route: &ReadRoute,
        parts: &Parts,
        cache_fill: bool,
    ) -> Self {
        let peer = crate::proxy::peer(&parts.extensions);
        let mut headers = upstream_request_headers(
            &parts.headers,
            &ForwardContext {
                peer,
                trusted_proxies: &state.trusted_proxies,
                forward_authorization: route.target.forward_authorization,
                public_host: state.public_host.as_ref().map(|h| &h.header),
                authority: parts.uri.authority(),
                body: !matches!(parts.method, Method::GET | Method::HEAD),
                also_drop: if cache_fill { &ANSWERED_BY_CACHE } else { &[] },
            },
        );
        // Client copies of X-Auth-* were dropped above; these come from the verified token.
        if let Some(identity) = parts.extensions.get::<Identity>() {
            for (name, value) in identity.headers() {
                if let (Ok(name), Ok(value)) = (
                    HeaderName::from_bytes(name.as_bytes()),
                    HeaderValue::from_str(value),
                ) {
                    headers.insert(name, value);
                }
            }
        }
        if cache_fill {
            headers.insert(
                header::ACCEPT_ENCODING,
                HeaderValue::from_static("identity"),
            );
        }
        Self {
            method: if cache_fill {
                Method::GET
            } else {
                parts.method.clone()
            },
            path_and_query: OnceLock::new(),
            headers,
        }
    }

    /// The upstream path and query, rendered from `target` on first use.
    pub(super) fn path_and_query(
        &self,
        target: Option<Target<'_>>,
    ) -> Result<&PathAndQuery, GatewayError> {
        if let Some(pq) = self.path_and_query.get() {
            return Ok(pq);
        }
        // Only a background refresh has no target, and it is handed a rendered request.
        let target = target.ok_or(GatewayError::Internal)?;
        let pq = upstream_path_and_query(target.route, target.params, target.uri)?;
        Ok(self.path_and_query.get_or_init(|| pq))
    }

    /// Turns a cache fill back into the request as received, for one the cache passes through
    /// (a range of an entry it does not hold).
    pub(super) fn pass_through(&mut self, client: &Parts) {
        self.method = client.method.clone();
        self.headers.remove(header::ACCEPT_ENCODING);
        for name in &ANSWERED_BY_CACHE {
            for value in client.headers.get_all(name) {
                self.headers.append(name.clone(), value.clone());
            }
        }
    }
}

/// The upstream path (rewritten with the route's template, or the request path unchanged) and
/// the request's query string.
fn upstream_path_and_query(
    route: &ReadRoute,
    params: Option<&RawPathParams>,
    uri: &http::Uri,
) -> Result<PathAndQuery, GatewayError> {
    let path = match (&route.target.upstream_path, params) {
        (Some(template), Some(params)) => {
            let params: Vec<(&str, &str)> = params.iter().collect();
            Cow::Owned(
                template
                    .render(|name| {
                        let value = params
                            .iter()
                            .find(|(k, _)| *k == name)
                            .map_or("", |(_, v)| v);
                        let encoded = if route.catch_all.as_deref() == Some(name) {
                            // A catch-all keeps its slashes; each segment is encoded on its own.
                            value
                                .split('/')
                                .map(|s| utf8_percent_encode(s, SEGMENT).to_string())
                                .collect::<Vec<_>>()
                                .join("/")
                        } else {
                            utf8_percent_encode(value, SEGMENT).to_string()
                        };
                        Ok::<_, Infallible>(Cow::Owned(encoded))
                    })
                    .unwrap_or_default(),
            )
        }
        _ => Cow::Borrowed(uri.path()),
    };
    let pq = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.into_owned(),
    };
    PathAndQuery::try_from(pq)
        .map_err(|_| GatewayError::BadRequest("invalid request target".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pass_through_restores_what_a_cache_fill_drops() {
        let client = http::Request::builder()
            .method(Method::HEAD)
            .header("range", "bytes=0-1")
            .header("if-none-match", "\"a\"")
            .header("accept-encoding", "gzip")
            .header("accept", "application/json")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        let mut fill = HeaderMap::new();
        fill.insert("accept", HeaderValue::from_static("application/json"));
        fill.insert("accept-encoding", HeaderValue::from_static("identity"));
        let mut out = Outbound {
            method: Method::GET,
            path_and_query: OnceLock::new(),
            headers: fill,
        };
        out.pass_through(&client);
        assert_eq!(out.method, Method::HEAD);
        assert_eq!(out.headers, client.headers);
    }
}
