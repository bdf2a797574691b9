//! What crosses the proxy: hop-by-hop headers are dropped both ways, `X-Forwarded-*` are
//! believed only from trusted proxies, identity and override headers are never taken from the
//! client, and `Authorization` stays with us unless the route says otherwise.

use std::net::IpAddr;

use http::HeaderMap;
use http::header::{self, HeaderName, HeaderValue};
use ipnet::IpNet;

/// RFC 9110 §7.6.1 connection-specific fields, plus the de-facto ones.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Headers a client could use to poison a cache or confuse an upstream (unkeyed inputs).
const NEVER_FORWARDED: &[&str] = &[
    "x-original-url",
    "x-rewrite-url",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-forwarded-scheme",
    "x-forwarded-port",
    "forwarded",
    "x-real-ip",
];

/// Prefix of identity headers the gateway sets from verified claims; client copies are removed.
pub const IDENTITY_HEADER_PREFIX: &str = "x-auth-";

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// What the forwarding rules need to know about the incoming connection and route.
#[derive(Debug)]
pub struct ForwardContext<'a> {
    /// The TCP peer, if known.
    pub peer: Option<IpAddr>,
    /// `server.trusted_proxies`.
    pub trusted_proxies: &'a [IpNet],
    /// Keep the client's `Authorization`.
    pub forward_authorization: bool,
    /// Drop the client's conditional headers (the gateway is fetching a full copy to store).
    pub strip_conditionals: bool,
    /// Ask for an identity body (the gateway compresses itself).
    pub identity_only: bool,
}

fn remove_connection_listed(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(*name);
    }
}

/// Headers for the upstream request, from the client's.
pub fn upstream_request_headers(incoming: &HeaderMap, ctx: &ForwardContext<'_>) -> HeaderMap {
    let mut out = incoming.clone();
    remove_connection_listed(&mut out);
    for name in NEVER_FORWARDED {
        out.remove(*name);
    }
    let identity: Vec<HeaderName> = out
        .keys()
        .filter(|k| k.as_str().starts_with(IDENTITY_HEADER_PREFIX))
        .cloned()
        .collect();
    for name in identity {
        out.remove(name);
    }
    if !ctx.forward_authorization {
        out.remove(header::AUTHORIZATION);
    }
    // A body on a GET is never forwarded, so neither are its framing headers.
    out.remove(header::CONTENT_LENGTH);
    out.remove(header::CONTENT_TYPE);
    out.remove(header::CONTENT_ENCODING);
    if ctx.strip_conditionals {
        for name in [
            header::IF_NONE_MATCH,
            header::IF_MODIFIED_SINCE,
            header::IF_MATCH,
            header::IF_UNMODIFIED_SINCE,
            header::IF_RANGE,
            header::RANGE,
        ] {
            out.remove(name);
        }
    }
    if ctx.identity_only {
        out.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
    }

    let trusted = ctx
        .peer
        .is_some_and(|ip| ctx.trusted_proxies.iter().any(|net| net.contains(&ip)));
    let host = incoming.get(header::HOST).cloned();
    if !trusted {
        out.remove(X_FORWARDED_FOR);
        out.remove(X_FORWARDED_PROTO);
        out.remove(X_FORWARDED_HOST);
    }
    if let Some(peer) = ctx.peer {
        let chain = match out.get(X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
            Some(prior) if trusted => format!("{prior}, {peer}"),
            _ => peer.to_string(),
        };
        if let Ok(v) = HeaderValue::try_from(chain) {
            out.insert(X_FORWARDED_FOR, v);
        }
    }
    if !out.contains_key(X_FORWARDED_PROTO) {
        out.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    }
    if !out.contains_key(X_FORWARDED_HOST)
        && let Some(host) = host
    {
        out.insert(X_FORWARDED_HOST, host);
    }
    // The upstream sees its own authority as Host (the client's goes in X-Forwarded-Host).
    out.remove(header::HOST);
    out
}

/// Headers for the client, from the upstream response's.
pub fn response_headers(upstream: &HeaderMap) -> HeaderMap {
    let mut out = upstream.clone();
    remove_connection_listed(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(peer: &str, trusted: &[IpNet]) -> ForwardContext<'static> {
        ForwardContext {
            peer: Some(peer.parse().unwrap()),
            trusted_proxies: Box::leak(trusted.to_vec().into_boxed_slice()),
            forward_authorization: false,
            strip_conditionals: false,
            identity_only: false,
        }
    }

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn untrusted_peers_cannot_set_forwarded_headers() {
        let h = map(&[
            ("host", "api.example.com"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.example"),
        ]);
        let out = upstream_request_headers(&h, &ctx("10.1.2.3", &[]));
        assert_eq!(out["x-forwarded-for"], "10.1.2.3");
        assert_eq!(out["x-forwarded-proto"], "http");
        assert_eq!(out["x-forwarded-host"], "api.example.com");
        assert!(!out.contains_key("host"));
    }

    #[test]
    fn trusted_proxies_extend_the_chain() {
        let h = map(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "a.example"),
        ]);
        let out =
            upstream_request_headers(&h, &ctx("127.0.0.1", &["127.0.0.1/32".parse().unwrap()]));
        assert_eq!(out["x-forwarded-for"], "1.2.3.4, 127.0.0.1");
        assert_eq!(out["x-forwarded-proto"], "https");
        assert_eq!(out["x-forwarded-host"], "a.example");
    }

    #[test]
    fn hop_by_hop_identity_and_overrides_are_dropped() {
        let h = map(&[
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("upgrade", "websocket"),
            ("x-auth-sub", "admin"),
            ("authorization", "Bearer t"),
            ("x-http-method-override", "DELETE"),
            ("x-original-url", "/admin"),
            ("accept", "application/json"),
        ]);
        let out = upstream_request_headers(&h, &ctx("10.0.0.1", &[]));
        for gone in [
            "connection",
            "x-secret",
            "keep-alive",
            "te",
            "upgrade",
            "x-auth-sub",
            "authorization",
            "x-http-method-override",
            "x-original-url",
        ] {
            assert!(!out.contains_key(gone), "{gone} must not be forwarded");
        }
        assert_eq!(out["accept"], "application/json");
        let mut c = ctx("10.0.0.1", &[]);
        c.forward_authorization = true;
        assert_eq!(
            upstream_request_headers(&h, &c)["authorization"],
            "Bearer t"
        );
    }

    #[test]
    fn response_hop_by_hop_is_dropped() {
        let h = map(&[
            ("connection", "close"),
            ("transfer-encoding", "chunked"),
            ("etag", "\"a\""),
        ]);
        let out = response_headers(&h);
        assert!(!out.contains_key("connection") && !out.contains_key("transfer-encoding"));
        assert_eq!(out["etag"], "\"a\"");
    }
}
