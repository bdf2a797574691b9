//! Cache keys: what of a request selects a stored response.
//!
//! Every input comes from the request **as the gateway sends it upstream** (the map built once
//! by the read path), never from the client's own headers: the origin can only have answered
//! on what it saw, and the gateway rewrites, drops and adds headers on the way (identity
//! headers from the verified token, `X-Forwarded-*`, `Accept-Encoding: identity`). A header is
//! therefore a key input exactly when it is part of the target URI (scheme and host, sent as
//! `X-Forwarded-Proto`/`X-Forwarded-Host`) or the origin names it in `Vary`.
//!
//! Keys are byte strings: header values are kept byte-exact (two values that differ only in
//! bytes a lossy UTF-8 conversion would merge are two variants), each value length-prefixed so
//! no value can imitate a delimiter.

use http::HeaderMap;
use http::header::{self, HeaderName};
use sha2::{Digest, Sha256};

use crate::proxy::{IDENTITY_HEADER_PREFIX, X_FORWARDED_HOST, X_FORWARDED_PROTO};

/// A fingerprint of the credentials a request carried upstream: `Authorization`, `Cookie` and
/// every identity header (`x-auth-*`: subject, propagated claims). Private entries are keyed by
/// it, so the same subject with another tenant claim, or another session cookie, is another
/// user. SHA-256: the inputs are client-influenced (cookies), and a collision would share a
/// private entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Identity([u8; 32]);

impl Identity {
    /// The fingerprint of `upstream`'s credentials, or `None` when it carries none (RFC 9111
    /// §3.5: the request is then not "authenticated" as far as the origin can tell).
    pub(crate) fn of(upstream: &HeaderMap) -> Option<Self> {
        let mut fields: Vec<(&str, &[u8])> = upstream
            .iter()
            .filter(|(name, _)| is_credential(name))
            .map(|(name, value)| (name.as_str(), value.as_bytes()))
            .collect();
        if fields.is_empty() {
            return None;
        }
        // Order-independent: the same identity always gets the same key.
        fields.sort();
        let mut hasher = Sha256::new();
        for (name, value) in fields {
            push_field(&mut hasher, name.as_bytes());
            push_field(&mut hasher, value);
        }
        Some(Self(hasher.finalize().into()))
    }
}

/// A length-prefixed field, so that no value can run into the next one.
fn push_field(hasher: &mut Sha256, bytes: &[u8]) {
    hasher.update((bytes.len() as u64).to_be_bytes());
    hasher.update(bytes);
}

/// Whether a header sent upstream identifies the caller.
fn is_credential(name: &HeaderName) -> bool {
    *name == header::AUTHORIZATION
        || *name == header::COOKIE
        || name.as_str().starts_with(IDENTITY_HEADER_PREFIX)
}

/// The keys of one request, computed once before the lookup.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    /// The shared partition's key of the resource: `s \0 route \0 proto \0 host \0
    /// path?query`, the target URI as the origin is asked for it (the route's template renders
    /// the upstream path from the request path), scoped to the route (two routes may share an
    /// upstream with different rules).
    shared: Vec<u8>,
    /// The caller's own partition: `p identity \0 …` (same resource), when it has credentials.
    private: Option<Vec<u8>>,
    /// The caller's credentials as sent upstream, if any.
    pub(crate) identity: Option<Identity>,
}

impl Keys {
    /// The keys for `route`, the request target (`path_and_query`, which with the route
    /// determines the upstream's) and the upstream request's headers.
    pub(crate) fn new(route: &str, path_and_query: &str, upstream: &HeaderMap) -> Self {
        let proto = upstream
            .get(X_FORWARDED_PROTO)
            .map_or(&b""[..], |v| v.as_bytes());
        let host = upstream
            .get(X_FORWARDED_HOST)
            .map_or(&b""[..], |v| v.as_bytes());
        let mut shared =
            Vec::with_capacity(route.len() + proto.len() + host.len() + path_and_query.len() + 5);
        shared.push(b's');
        for part in [route.as_bytes(), proto, host, path_and_query.as_bytes()] {
            shared.push(0);
            shared.extend_from_slice(part);
        }
        let identity = Identity::of(upstream);
        let private = identity.map(|id| {
            let mut key = Vec::with_capacity(shared.len() + 32);
            key.push(b'p');
            key.extend_from_slice(&id.0);
            key.extend_from_slice(&shared[1..]);
            key
        });
        Self {
            shared,
            private,
            identity,
        }
    }

    /// The shared partition's base key (before `Vary`).
    pub(crate) fn shared_base(&self) -> &[u8] {
        &self.shared
    }

    /// The caller's private partition's base key, when the request carries credentials.
    pub(crate) fn private_base(&self) -> Option<&[u8]> {
        self.private.as_deref()
    }
}

/// The request header names in a response's `Vary`, lower-cased, deduplicated and sorted.
/// (`Vary: *` responses are never stored.)
pub(crate) fn vary_names(response: &HeaderMap) -> Vec<HeaderName> {
    let mut names: Vec<HeaderName> = response
        .get_all(header::VARY)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|s| !s.is_empty())
        .filter_map(|s| HeaderName::from_bytes(s).ok())
        .collect();
    names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    names.dedup();
    names
}

/// Appends the secondary key for `names` to `key`: each name with the request's value for it,
/// normalised where RFC 9110 makes spellings equivalent (list whitespace; case and q-value
/// order for the `Accept-*` negotiation fields), and otherwise byte-exact.
pub(crate) fn push_vary(key: &mut Vec<u8>, names: &[HeaderName], upstream: &HeaderMap) {
    for name in names {
        key.push(0);
        key.extend_from_slice(name.as_str().as_bytes());
        // RFC 9111 §4.1: an absent field matches only an absent field, not an empty one.
        if !upstream.contains_key(name) {
            key.push(b'-');
            continue;
        }
        key.push(b'=');
        let value = normalised(name, upstream);
        key.extend_from_slice(&(value.len() as u64).to_be_bytes());
        key.extend_from_slice(&value);
    }
}

/// The request's value for a varying header, as one normalised byte string. A header sent
/// several times is one comma-separated list (RFC 9110 §5.3), absent is empty.
fn normalised(name: &HeaderName, upstream: &HeaderMap) -> Vec<u8> {
    let members = upstream
        .get_all(name)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|m| !m.is_empty());
    let negotiation = [
        header::ACCEPT,
        header::ACCEPT_ENCODING,
        header::ACCEPT_LANGUAGE,
        header::ACCEPT_CHARSET,
    ]
    .contains(name);
    if !negotiation {
        return members.collect::<Vec<_>>().join(&b","[..]);
    }
    // `fr;q=0.5,EN-us` and `en-US, fr;q=0.5` ask for the same thing: tokens are
    // case-insensitive, `q=1` is the default, and only q-values order preferences.
    let mut parsed: Vec<(u16, Vec<u8>)> = members
        .map(|member| {
            let mut parts = member.split(|b| *b == b';').map(<[u8]>::trim_ascii);
            let token = parts.next().unwrap_or_default().to_ascii_lowercase();
            let mut q = 1000;
            let mut params = Vec::new();
            for param in parts {
                match param
                    .strip_prefix(b"q=")
                    .or_else(|| param.strip_prefix(b"Q="))
                {
                    Some(v) => q = qvalue(v).unwrap_or(1001),
                    None => params.push(param.to_ascii_lowercase()),
                }
            }
            let mut normal = token;
            for p in params {
                normal.push(b';');
                normal.extend_from_slice(&p);
            }
            if q != 1000 {
                normal.extend_from_slice(format!(";q={q}").as_bytes());
            }
            (q, normal)
        })
        .collect();
    // Stable: members of equal weight keep the client's order.
    parsed.sort_by_key(|m| std::cmp::Reverse(m.0));
    parsed
        .into_iter()
        .map(|(_, m)| m)
        .collect::<Vec<_>>()
        .join(&b","[..])
}

/// A q-value (RFC 9110 §12.4.2) in thousandths, or `None` when malformed (then kept apart from
/// every valid weight, so it never merges with another spelling).
fn qvalue(v: &[u8]) -> Option<u16> {
    let s = std::str::from_utf8(v).ok()?;
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let whole = match int {
        "0" => 0,
        "1" => 1000,
        _ => return None,
    };
    let mut thousandths = 0u16;
    for (i, d) in frac
        .bytes()
        .chain(std::iter::repeat(b'0'))
        .take(3)
        .enumerate()
    {
        thousandths += u16::from(d - b'0') * [100, 10, 1][i];
    }
    let q = whole + thousandths;
    (q <= 1000).then_some(q)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn map(pairs: &[(&str, &[u8])]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_bytes(v).unwrap(),
            );
        }
        h
    }

    fn vary_key(name: &str, pairs: &[(&str, &[u8])]) -> Vec<u8> {
        let mut key = Vec::new();
        push_vary(
            &mut key,
            &[HeaderName::from_bytes(name.as_bytes()).unwrap()],
            &map(pairs),
        );
        key
    }

    #[test]
    fn host_and_proto_are_part_of_the_resource() {
        let a = Keys::new(
            "r",
            "/p",
            &map(&[
                ("x-forwarded-host", b"good"),
                ("x-forwarded-proto", b"https"),
            ]),
        );
        let b = Keys::new(
            "r",
            "/p",
            &map(&[
                ("x-forwarded-host", b"evil"),
                ("x-forwarded-proto", b"https"),
            ]),
        );
        let c = Keys::new(
            "r",
            "/p",
            &map(&[
                ("x-forwarded-host", b"good"),
                ("x-forwarded-proto", b"http"),
            ]),
        );
        let shared = |k: &Keys| k.shared_base().to_vec();
        assert_ne!(shared(&a), shared(&b));
        assert_ne!(shared(&a), shared(&c));
        // Delimiters cannot be imitated: route `r\0x` is not host `x`.
        assert_ne!(
            shared(&Keys::new("a", "/p", &map(&[("x-forwarded-host", b"b")]))),
            shared(&Keys::new("a", "/p", &map(&[("x-forwarded-proto", b"b")]))),
        );
    }

    #[test]
    fn identity_covers_every_credential_header() {
        assert!(Identity::of(&map(&[("accept", b"x")])).is_none());
        let alice_a = Identity::of(&map(&[("x-auth-sub", b"alice"), ("x-auth-tenant", b"a")]));
        let alice_b = Identity::of(&map(&[("x-auth-sub", b"alice"), ("x-auth-tenant", b"b")]));
        assert!(alice_a.is_some());
        assert_ne!(
            alice_a, alice_b,
            "a propagated claim is part of the identity"
        );
        let reordered = Identity::of(&map(&[("x-auth-tenant", b"a"), ("x-auth-sub", b"alice")]));
        assert_eq!(alice_a, reordered);
        assert_ne!(
            Identity::of(&map(&[("cookie", b"s=1")])),
            Identity::of(&map(&[("cookie", b"s=2")]))
        );
        assert!(Identity::of(&map(&[("authorization", b"Bearer t")])).is_some());
        let k = Keys::new("r", "/p", &map(&[("x-auth-sub", b"alice")]));
        assert!(k.identity.is_some());
        assert_ne!(k.shared_base(), k.private_base().unwrap());
        assert!(Keys::new("r", "/p", &map(&[])).private_base().is_none());
    }

    #[test]
    fn vary_values_are_byte_exact() {
        assert_ne!(
            vary_key("x-key", &[("x-key", b"\xff")]),
            vary_key("x-key", &[("x-key", b"\xfe")])
        );
        assert_eq!(
            vary_key("x-key", &[("x-key", b"a, b")]),
            vary_key("x-key", &[("x-key", b"a"), ("x-key", b"b")])
        );
        assert_ne!(
            vary_key("x-key", &[("x-key", b"A")]),
            vary_key("x-key", &[("x-key", b"a")])
        );
        assert_ne!(vary_key("x-key", &[]), vary_key("x-key", &[("x-key", b"")]));
    }

    #[test]
    fn negotiation_fields_are_normalised() {
        let lang = |v: &'static [u8]| vary_key("accept-language", &[("accept-language", v)]);
        assert_eq!(lang(b"en-US, fr;q=0.5"), lang(b"fr;q=0.5,EN-us"));
        assert_eq!(lang(b"en-US, fr;q=0.50"), lang(b"en-us;q=1.0 , fr;Q=0.5"));
        assert_ne!(
            lang(b"en, fr"),
            lang(b"fr, en"),
            "equal weights keep their order"
        );
        assert_ne!(lang(b"en"), lang(b"de"));
        assert_ne!(
            lang(b"en;q=2"),
            lang(b"en"),
            "a malformed weight stays apart"
        );
    }

    #[test]
    fn vary_names_are_normalised() {
        let h = map(&[
            ("vary", b"Accept-Encoding, accept-language"),
            ("vary", b"Accept-Language,,X-Tenant"),
        ]);
        let names: Vec<String> = vary_names(&h).iter().map(|n| n.to_string()).collect();
        assert_eq!(names, ["accept-encoding", "accept-language", "x-tenant"]);
    }
}
