//! RFC 9111 storage and freshness rules for a shared cache, as the gateway applies them.

use std::time::Duration;

use http::{HeaderMap, StatusCode, header};

/// The response `Cache-Control` directives the cache acts on.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Directives {
    /// `no-store`.
    pub no_store: bool,
    /// `no-cache` (store, but revalidate before every use).
    pub no_cache: bool,
    /// `private` (never in a shared cache).
    pub private: bool,
    /// `public`.
    pub public: bool,
    /// `must-revalidate`.
    pub must_revalidate: bool,
    /// `max-age`, seconds.
    pub max_age: Option<u64>,
    /// `s-maxage`, seconds (shared caches only; wins over `max-age`).
    pub s_maxage: Option<u64>,
}

impl Directives {
    /// Parses every `Cache-Control` field of `headers`. Unknown directives are ignored; a
    /// malformed `max-age` value makes the response not fresh (RFC 9111 §4.2.1: treat as stale).
    pub fn parse(headers: &HeaderMap) -> Self {
        let mut d = Self::default();
        for value in headers.get_all(header::CACHE_CONTROL) {
            let Ok(value) = value.to_str() else { continue };
            for part in value.split(',') {
                let (name, arg) = match part.split_once('=') {
                    Some((n, a)) => (n.trim(), Some(a.trim().trim_matches('"'))),
                    None => (part.trim(), None),
                };
                let secs = || arg.and_then(|a| a.parse::<u64>().ok()).or(Some(0));
                match name.to_ascii_lowercase().as_str() {
                    "no-store" => d.no_store = true,
                    // `no-cache="field"` restricts only fields; treating it as a whole-response
                    // `no-cache` is the conservative reading.
                    "no-cache" => d.no_cache = true,
                    "private" => d.private = true,
                    "public" => d.public = true,
                    "must-revalidate" | "proxy-revalidate" => d.must_revalidate = true,
                    "max-age" => d.max_age = secs(),
                    "s-maxage" => d.s_maxage = secs(),
                    _ => {}
                }
            }
        }
        d
    }
}

/// Where a storable response goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Reusable for every requester of the URL.
    Shared,
    /// Reusable only for the same authenticated subject.
    Subject,
}

/// A decision to store: where, and for how long it is fresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Storable {
    /// Who may reuse it.
    pub scope: Scope,
    /// Freshness lifetime from now (already reduced by the upstream's `Age`).
    pub fresh_for: Duration,
}

/// Statuses a shared cache may store by default (RFC 9110 §15.1 "heuristically cacheable"
/// minus 206 and 501, which we do not handle).
fn cacheable_status(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414
    )
}

/// Decides whether a response may be stored, per RFC 9111 §3 and §3.5 for a shared cache.
///
/// `authenticated`: the request carried credentials the response may depend on. Such a response
/// is shared only when the upstream says so (`public`, `s-maxage`, `must-revalidate`);
/// otherwise it is stored per subject. `default_ttl` applies when the upstream gives no
/// lifetime.
pub fn storable(
    status: StatusCode,
    headers: &HeaderMap,
    authenticated: bool,
    default_ttl: Duration,
) -> Option<Storable> {
    if !cacheable_status(status) {
        return None;
    }
    let d = Directives::parse(headers);
    if d.no_store || d.private {
        return None;
    }
    // A response that sets a cookie is about one client (conservative; RFC 9111 allows it).
    if headers.contains_key(header::SET_COOKIE) {
        return None;
    }
    let vary_star = headers
        .get_all(header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|t| t.trim() == "*"));
    if vary_star {
        return None;
    }
    let scope = if !authenticated || d.public || d.s_maxage.is_some() || d.must_revalidate {
        Scope::Shared
    } else {
        Scope::Subject
    };
    let lifetime = if d.no_cache {
        Duration::ZERO
    } else {
        match d.s_maxage.or(d.max_age) {
            Some(secs) => Duration::from_secs(secs),
            None => default_ttl,
        }
    };
    let age = headers
        .get(header::AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(Duration::ZERO, Duration::from_secs);
    Some(Storable {
        scope,
        fresh_for: lifetime.saturating_sub(age),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn h(cc: &str) -> HeaderMap {
        let mut m = HeaderMap::new();
        if !cc.is_empty() {
            m.insert(header::CACHE_CONTROL, HeaderValue::from_str(cc).unwrap());
        }
        m
    }
    const TTL: Duration = Duration::from_secs(60);

    #[test]
    fn parses_directives() {
        let d = Directives::parse(&h("public, max-age=30, S-MAXAGE=\"90\", no-cache"));
        assert!(d.public && d.no_cache && !d.private);
        assert_eq!((d.max_age, d.s_maxage), (Some(30), Some(90)));
        assert_eq!(Directives::parse(&h("max-age=abc")).max_age, Some(0));
    }

    #[test]
    fn freshness_prefers_s_maxage_then_max_age_then_ttl() {
        let s = |cc| {
            storable(StatusCode::OK, &h(cc), false, TTL)
                .unwrap()
                .fresh_for
        };
        assert_eq!(s("max-age=10, s-maxage=20"), Duration::from_secs(20));
        assert_eq!(s("max-age=10"), Duration::from_secs(10));
        assert_eq!(s(""), TTL);
        assert_eq!(s("no-cache, max-age=100"), Duration::ZERO);
        let mut aged = h("max-age=100");
        aged.insert(header::AGE, HeaderValue::from_static("30"));
        assert_eq!(
            storable(StatusCode::OK, &aged, false, TTL)
                .unwrap()
                .fresh_for,
            Duration::from_secs(70)
        );
    }

    #[test]
    fn not_storable_cases() {
        for cc in ["no-store", "private", "private, max-age=60"] {
            assert!(
                storable(StatusCode::OK, &h(cc), false, TTL).is_none(),
                "{cc}"
            );
        }
        for status in [
            StatusCode::INTERNAL_SERVER_ERROR,
            StatusCode::BAD_GATEWAY,
            StatusCode::PARTIAL_CONTENT,
            StatusCode::FOUND,
        ] {
            assert!(
                storable(status, &h("max-age=60"), false, TTL).is_none(),
                "{status}"
            );
        }
        let mut cookie = h("max-age=60");
        cookie.insert(header::SET_COOKIE, HeaderValue::from_static("a=b"));
        assert!(storable(StatusCode::OK, &cookie, false, TTL).is_none());
        let mut vary = h("max-age=60");
        vary.insert(header::VARY, HeaderValue::from_static("accept, *"));
        assert!(storable(StatusCode::OK, &vary, false, TTL).is_none());
        assert!(storable(StatusCode::NOT_FOUND, &h(""), false, TTL).is_some());
    }

    #[test]
    fn authenticated_responses_are_per_subject_unless_marked_shareable() {
        let scope = |cc| storable(StatusCode::OK, &h(cc), true, TTL).unwrap().scope;
        assert_eq!(scope("max-age=60"), Scope::Subject);
        assert_eq!(scope(""), Scope::Subject);
        assert_eq!(scope("public, max-age=60"), Scope::Shared);
        assert_eq!(scope("s-maxage=60"), Scope::Shared);
        assert_eq!(scope("must-revalidate, max-age=60"), Scope::Shared);
        assert_eq!(
            storable(StatusCode::OK, &h("max-age=60"), false, TTL)
                .unwrap()
                .scope,
            Scope::Shared
        );
    }

    mod fuzz {
        //! Header parsers under arbitrary input.
        use super::*;
        use crate::cache::etag;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn cache_control_and_etag_parsers_never_panic(cc in "[ -~]{0,120}", inm in "[ -~]{0,120}", tag in "[ -~]{0,40}") {
                let mut h = HeaderMap::new();
                if let Ok(v) = HeaderValue::from_str(&cc) {
                    h.insert(header::CACHE_CONTROL, v.clone());
                    h.insert(header::VARY, v);
                }
                let _ = Directives::parse(&h);
                let _ = storable(StatusCode::OK, &h, true, TTL);
                let _ = crate::cache::vary_names(&h, true);
                if let (Ok(inm), Ok(tag)) = (HeaderValue::from_str(&inm), HeaderValue::from_str(&tag)) {
                    let _ = etag::none_match_matches([&inm], Some(&tag));
                    let weak = etag::weaken(&tag);
                    // Weakening never changes what matches under weak comparison.
                    prop_assert_eq!(
                        etag::none_match_matches([&inm], Some(&tag)),
                        etag::none_match_matches([&inm], Some(&weak))
                    );
                }
            }
        }
    }
}
