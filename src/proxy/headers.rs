//! What crosses the proxy: hop-by-hop headers are dropped both ways, `X-Forwarded-*` are
//! believed only from trusted proxies, identity, override and client-address headers are never
//! taken from the client (whatever the spelling: `_` counts as `-`), `Authorization` stays with
//! us unless the route says otherwise, and the backend's `Server` / `X-Powered-By` stay with it.

use std::borrow::Cow;
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

/// Headers a client could use to poison a cache or confuse an upstream (unkeyed inputs):
/// overrides of the URL and method, and the client-address and host fields other proxies and
/// CDNs set, which a backend would take for the truth (allow lists, logs, redirects, links).
/// The gateway sets `X-Forwarded-For/Proto/Host` itself instead. Compared in normalised form
/// ([`normalised`]), so `X-Real_IP` goes too.
const NEVER_FORWARDED: &[&str] = &[
    "x-original-url",
    "x-rewrite-url",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-forwarded-scheme",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-server",
    "x-host",
    "forwarded",
    "x-real-ip",
    "true-client-ip",
    "x-client-ip",
    "x-cluster-client-ip",
    "cf-connecting-ip",
    "fastly-client-ip",
    "x-proxyuser-ip",
    "client-ip",
];

/// Upstream response fields that name the backend's software and version: a map for an
/// attacker (which CVEs apply), of no use to a client.
const NEVER_RETURNED: &[&str] = &["server", "x-powered-by"];

/// Prefix of identity headers the gateway sets from verified claims; client copies are removed.
pub(crate) const IDENTITY_HEADER_PREFIX: &str = "x-auth-";

/// The client chain; believed only from trusted proxies (also for rate-limit keys).
pub(crate) const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// The scheme the client used, as the upstream sees it (part of the cache key).
pub(crate) const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// The host the client asked for, as the upstream sees it (part of the cache key).
pub(crate) const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// What the forwarding rules need to know about the incoming connection and route.
#[derive(Debug)]
pub(crate) struct ForwardContext<'a> {
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

/// `name` with `_` read as `-`: nginx (`underscores_in_headers`), CGI, WSGI, PHP and some
/// Node frameworks turn both into the same variable, so `X-Auth_Sub` reaches a backend as
/// `X-Auth-Sub` would. Only names containing `_` (rare) are copied.
fn normalised(name: &HeaderName) -> Cow<'_, str> {
    let n = name.as_str();
    if n.as_bytes().contains(&b'_') {
        Cow::Owned(n.replace('_', "-"))
    } else {
        Cow::Borrowed(n)
    }
}

/// Copies `headers` without hop-by-hop fields, the fields `drop` names and those listed in
/// `Connection`. `drop` gets the field's name and its [`normalised`] form, which is what
/// every list comparison uses.
///
/// One pass that appends the kept fields to a map sized for them: cheaper than cloning the
/// whole map and then removing each unwanted name (every removal parses and hashes the name,
/// present or not).
fn copy_without(
    headers: &HeaderMap,
    extra: usize,
    drop: impl Fn(&HeaderName, &str) -> bool,
) -> HeaderMap {
    let listed = if headers.contains_key(header::CONNECTION) {
        connection_listed(headers)
    } else {
        Vec::new()
    };
    let mut out = HeaderMap::with_capacity(headers.keys_len() + extra);
    for (name, value) in headers {
        let norm = normalised(name);
        if HOP_BY_HOP.contains(&&*norm) || drop(name, &norm) || listed.contains(name) {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    out
}

/// Headers for the upstream request, from the client's.
pub(crate) fn upstream_request_headers(
    incoming: &HeaderMap,
    ctx: &ForwardContext<'_>,
) -> HeaderMap {
    let trusted = is_trusted(ctx.peer, ctx.trusted_proxies);
    let mut out = copy_without(incoming, 4, |name, norm| {
        // A field kept below only under its canonical spelling (`Content-Type` with a body,
        // a trusted `X-Forwarded-For`) is dropped when spelled with `_`: the gateway frames
        // and extends the canonical one, a backend merging both would read the other.
        let odd = name.as_str() != norm;
        NEVER_FORWARDED.contains(&norm)
            || norm.starts_with(IDENTITY_HEADER_PREFIX)
            || (!ctx.forward_authorization && *name == header::AUTHORIZATION)
            // A body on a GET is never forwarded, so neither are its framing headers; a
            // forwarded body is framed anew by the client library (from the body's length).
            || norm == header::CONTENT_LENGTH.as_str()
            || (norm == header::CONTENT_TYPE.as_str() && (!ctx.body || odd))
            || norm == header::CONTENT_ENCODING.as_str()
            || ctx.also_drop.iter().any(|d| d.as_str() == norm)
            || ((!trusted || odd)
                && (norm == X_FORWARDED_FOR.as_str()
                    || norm == X_FORWARDED_PROTO.as_str()
                    || norm == X_FORWARDED_HOST.as_str()))
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

/// Headers for the client, from the upstream response's: without hop-by-hop fields and
/// without `Server` / `X-Powered-By` (also what the cache stores, so a hit has neither).
pub(crate) fn response_headers(upstream: &HeaderMap) -> HeaderMap {
    // Room for what the read handler adds (ETag, X-Cache, Age, Vary) without growing.
    copy_without(upstream, 4, |_, norm| NEVER_RETURNED.contains(&norm))
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
    fn underscore_spellings_and_client_address_headers_are_dropped() {
        let names = [
            "x-auth_sub",
            "x_auth_sub",
            "x_auth-role",
            "x-forwarded_for",
            "x_forwarded_host",
            "x-forwarded_proto",
            "x-original_url",
            "x_http_method_override",
            "x-real_ip",
            "true-client-ip",
            "true_client_ip",
            "x-real-ip",
            "x-forwarded-prefix",
            "x_forwarded_prefix",
            "x-host",
            "x_host",
            "x-forwarded-server",
            "x-client-ip",
            "x_client_ip",
            "x-cluster-client-ip",
            "cf-connecting-ip",
            "cf_connecting_ip",
            "fastly-client-ip",
            "x-proxyuser-ip",
            "client-ip",
            "client_ip",
            "content_length",
            "content_type",
            "transfer_encoding",
            "proxy_authorization",
        ];
        let mut h = map(&[("accept", "*/*"), ("x_custom_thing", "kept")]);
        for name in names {
            h.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_static("1.2.3.4"),
            );
        }
        // Trusted, with a body: the canonical X-Forwarded-* and Content-Type would be kept.
        let mut c = ctx("127.0.0.1", &["127.0.0.1/32".parse().unwrap()]);
        c.body = true;
        let out = upstream_request_headers(&h, &c);
        for name in names {
            assert!(!out.contains_key(name), "{name} must not be forwarded");
        }
        let gateway_set: Vec<&str> = out.keys().map(HeaderName::as_str).collect();
        assert_eq!(
            gateway_set,
            [
                "accept",
                "x_custom_thing",
                "x-forwarded-for",
                "x-forwarded-proto"
            ]
        );
        assert_eq!(
            out["x-forwarded-for"], "127.0.0.1",
            "not extended by x-forwarded_for"
        );
        // A cache fill drops conditionals under any spelling (a PHP backend reads both).
        let h = map(&[("if_none_match", "\"a\""), ("range", "bytes=0-1")]);
        let mut c = ctx("10.0.0.1", &[]);
        c.also_drop = &[header::IF_NONE_MATCH, header::RANGE];
        assert!(
            upstream_request_headers(&h, &c)
                .get("if_none_match")
                .is_none()
        );
    }

    #[test]
    fn response_hop_by_hop_and_software_banners_are_dropped() {
        let h = map(&[
            ("connection", "close"),
            ("transfer-encoding", "chunked"),
            ("server", "Apache/2.4.1 (Unix)"),
            ("x-powered-by", "PHP/5.6.40"),
            ("x_powered_by", "Express"),
            ("etag", "\"a\""),
            ("x-served-by", "kept"),
        ]);
        let out = response_headers(&h);
        for gone in [
            "connection",
            "transfer-encoding",
            "server",
            "x-powered-by",
            "x_powered_by",
        ] {
            assert!(!out.contains_key(gone), "{gone} must not be returned");
        }
        assert_eq!(out["etag"], "\"a\"");
        assert_eq!(out["x-served-by"], "kept");
    }
}
