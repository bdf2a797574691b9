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

/// The client chain; believed only from trusted proxies (also for rate-limit keys).
pub(crate) const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// The scheme the client used, as the upstream sees it (part of the cache key).
pub(crate) const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// The host the client asked for, as the upstream sees it (part of the cache key).
pub(crate) const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// What the forwarding rules need to know about the incoming connection and route.
#[derive(Debug)]
pub struct ForwardContext<'a> {
    /// The TCP peer, if known.
    pub peer: Option<IpAddr>,
    /// `server.trusted_proxies`.
    pub trusted_proxies: &'a [IpNet],
    /// Keep the client's `Authorization`.
    pub forward_authorization: bool,
    /// `server.public_host`: sent as `X-Forwarded-Host` whatever the client said (requests
    /// for other hosts never get this far).
    pub public_host: Option<&'a HeaderValue>,
    /// The request target's authority, for HTTP/2 requests that carry no `Host`.
    pub authority: Option<&'a http::uri::Authority>,
    /// The request's body goes upstream (unsafe methods): its `Content-Type` goes with it.
    /// Length and coding are the gateway's to frame (it may have decoded the body).
    pub body: bool,
    /// Further client fields the caller handles itself (e.g. conditionals a cache answers).
    pub also_drop: &'a [HeaderName],
}

/// The names listed in `Connection` (hop-by-hop by declaration), usually none.
fn connection_listed(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect()
}

/// Copies `headers` without the fields `drop` names and those listed in `Connection`.
///
/// One pass that appends the kept fields to a map sized for them: cheaper than cloning the
/// whole map and then removing each unwanted name (every removal parses and hashes the name,
/// present or not).
fn copy_without(
    headers: &HeaderMap,
    extra: usize,
    drop: impl Fn(&HeaderName) -> bool,
) -> HeaderMap {
    let listed = if headers.contains_key(header::CONNECTION) {
        connection_listed(headers)
    } else {
        Vec::new()
    };
    let mut out = HeaderMap::with_capacity(headers.keys_len() + extra);
    for (name, value) in headers {
        if HOP_BY_HOP.contains(&name.as_str()) || drop(name) || listed.contains(name) {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    out
}

/// Headers for the upstream request, from the client's.
pub fn upstream_request_headers(incoming: &HeaderMap, ctx: &ForwardContext<'_>) -> HeaderMap {
    let trusted = is_trusted(ctx.peer, ctx.trusted_proxies);
    let mut out = copy_without(incoming, 4, |name| {
        let n = name.as_str();
        NEVER_FORWARDED.contains(&n)
            || n.starts_with(IDENTITY_HEADER_PREFIX)
            || (!ctx.forward_authorization && *name == header::AUTHORIZATION)
            // A body on a GET is never forwarded, so neither are its framing headers; a
            // forwarded body is framed anew by the client library (from the body's length).
            || *name == header::CONTENT_LENGTH
            || (*name == header::CONTENT_TYPE && !ctx.body)
            || *name == header::CONTENT_ENCODING
            || ctx.also_drop.contains(name)
            || (!trusted
                && (*name == X_FORWARDED_FOR
                    || *name == X_FORWARDED_PROTO
                    || *name == X_FORWARDED_HOST))
            // The upstream sees its own authority as Host (the client's goes in
            // X-Forwarded-Host).
            || *name == header::HOST
    });
    if let Some(peer) = ctx.peer {
        let mut chain = Vec::with_capacity(48);
        if trusted && let Some(prior) = out.get(X_FORWARDED_FOR) {
            chain.extend_from_slice(prior.as_bytes());
            chain.extend_from_slice(b", ");
        }
        push_ip(&mut chain, peer);
        if let Ok(v) = HeaderValue::from_maybe_shared(bytes::Bytes::from(chain)) {
            out.insert(X_FORWARDED_FOR, v);
        }
    }
    if !out.contains_key(X_FORWARDED_PROTO) {
        out.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    }
    if let Some(host) = ctx.public_host {
        out.insert(X_FORWARDED_HOST, host.clone());
    } else if !out.contains_key(X_FORWARDED_HOST) {
        let host = incoming.get(header::HOST).cloned().or_else(|| {
            ctx.authority
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        if let Some(host) = host {
            out.insert(X_FORWARDED_HOST, host);
        }
    }
    out
}

/// The host a request is for: a trusted proxy's `X-Forwarded-Host`, else `Host`, else the
/// request target's authority (HTTP/2).
pub(crate) fn request_host<'a>(
    incoming: &'a HeaderMap,
    authority: Option<&'a http::uri::Authority>,
    peer_trusted: bool,
) -> Option<&'a [u8]> {
    peer_trusted
        .then(|| incoming.get(X_FORWARDED_HOST))
        .flatten()
        .or_else(|| incoming.get(header::HOST))
        .map(HeaderValue::as_bytes)
        .or_else(|| authority.map(|a| a.as_str().as_bytes()))
}

/// The TCP peer of a request, from the connection info the server attaches.
pub(crate) fn peer(extensions: &http::Extensions) -> Option<IpAddr> {
    extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip())
}

/// Whether `peer` may set `X-Forwarded-*`.
pub(crate) fn is_trusted(peer: Option<IpAddr>, trusted_proxies: &[IpNet]) -> bool {
    peer.is_some_and(|ip| trusted_proxies.iter().any(|net| net.contains(&ip)))
}

/// Appends `ip` in its text form; IPv4 without `core::fmt`, which cost more than the rest of
/// the header building on every cache hit.
fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            let mut digits = itoa::Buffer::new();
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                out.extend_from_slice(digits.format(octet).as_bytes());
            }
        }
        IpAddr::V6(v6) => out.extend_from_slice(v6.to_string().as_bytes()),
    }
}

/// Headers for the client, from the upstream response's.
pub fn response_headers(upstream: &HeaderMap) -> HeaderMap {
    // Room for what the read handler adds (ETag, X-Cache, Age, Vary) without growing.
    copy_without(upstream, 4, |_| false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(peer: &str, trusted: &[IpNet]) -> ForwardContext<'static> {
        ForwardContext {
            peer: Some(peer.parse().unwrap()),
            trusted_proxies: Box::leak(trusted.to_vec().into_boxed_slice()),
            forward_authorization: false,
            public_host: None,
            authority: None,
            body: false,
            also_drop: &[],
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
    fn a_public_host_replaces_the_clients_and_h2_authority_is_used_without_host() {
        let h = map(&[
            ("host", "evil.example"),
            ("x-forwarded-host", "evil.example"),
        ]);
        let public = HeaderValue::from_static("api.example.com");
        let mut c = ctx("127.0.0.1", &["127.0.0.1/32".parse().unwrap()]);
        c.public_host = Some(&public);
        assert_eq!(
            upstream_request_headers(&h, &c)["x-forwarded-host"],
            "api.example.com"
        );
        let authority: http::uri::Authority = "h2.example".parse().unwrap();
        let mut c = ctx("10.0.0.1", &[]);
        c.authority = Some(&authority);
        assert_eq!(
            upstream_request_headers(&HeaderMap::new(), &c)["x-forwarded-host"],
            "h2.example"
        );
        assert_eq!(
            request_host(&h, None, false),
            Some(&b"evil.example"[..]),
            "Host when the peer is not trusted"
        );
        let forwarded = map(&[("host", "gw"), ("x-forwarded-host", "api.example.com")]);
        assert_eq!(
            request_host(&forwarded, None, true),
            Some(&b"api.example.com"[..])
        );
        assert_eq!(request_host(&forwarded, None, false), Some(&b"gw"[..]));
    }

    #[test]
    fn peers_are_written_in_their_text_form() {
        for ip in [
            "10.0.0.1",
            "255.255.255.255",
            "0.0.0.0",
            "::1",
            "2001:db8::1",
        ] {
            let mut out = Vec::new();
            push_ip(&mut out, ip.parse().unwrap());
            assert_eq!(out, ip.as_bytes());
        }
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
