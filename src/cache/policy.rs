//! RFC 9111 storage, freshness and age rules for a *shared* cache, as the gateway applies them.
//!
//! Pure functions of a response's status and header fields (plus the clock readings of the
//! exchange and the route's fallbacks): no I/O, no global clock. [`storable`] is the one
//! decision the read path needs: whether a response may be stored (RFC 9111 §3), by whom it
//! may be reused (§3.5), how long it is fresh (§4.2.1, §4.2.2), how old it already is
//! (§4.2.3), and how long it may be served stale (RFC 5861, bounded by §4.2.4).
//!
//! Everything here errs on the side of *not* reusing: a malformed lifetime makes the response
//! stale, a malformed `Expires` means "already expired", an unparsable field list in
//! `private="…"` means the whole response is private.

use std::borrow::Cow;
use std::time::{Duration, SystemTime};

use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue, StatusCode};

/// Largest delta-seconds value kept: RFC 9111 §1.2.2 says a recipient that cannot represent a
/// larger value uses 2^31 ("effectively infinite"), which also keeps every sum below from
/// overflowing.
const MAX_DELTA_SECS: u64 = 1 << 31;

/// [`MAX_DELTA_SECS`] as a duration: the upper bound of every lifetime and stale window.
const MAX_DELTA: Duration = Duration::from_secs(MAX_DELTA_SECS);

/// Parsed response `Cache-Control` (all `Cache-Control` field lines combined, RFC 9111 §5.2).
///
/// Directive names are case-insensitive (§5.2); arguments may be tokens or quoted strings
/// (§5.2, RFC 9110 §5.6.4). When a directive occurs more than once, the first occurrence wins
/// (§4.2.1 allows "first occurrence" or "stale"; first keeps a harmless duplicate usable).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Directives {
    /// `no-store` (§5.2.2.5): never store.
    pub no_store: bool,
    /// Unqualified `no-cache` (§5.2.2.4): store, but validate before every reuse.
    pub no_cache: bool,
    /// `no-cache="A, B"` (§5.2.2.4, qualified form): these fields (lower-cased) must not be
    /// reused without validation; the rest of the response may be.
    pub no_cache_fields: Vec<HeaderName>,
    /// Unqualified `private` (§5.2.2.7): a shared cache must not store the response.
    pub private: bool,
    /// `private="A, B"` (§5.2.2.7, qualified form): a shared cache must not store these fields
    /// (lower-cased), but may store the rest.
    pub private_fields: Vec<HeaderName>,
    /// `public` (§5.2.2.9): storable even when it otherwise would not be (status, credentials).
    pub public: bool,
    /// `must-revalidate` (§5.2.2.2): never serve stale without successful validation.
    pub must_revalidate: bool,
    /// `proxy-revalidate` (§5.2.2.8): `must-revalidate` for shared caches only.
    pub proxy_revalidate: bool,
    /// `immutable` (RFC 8246): the body will not change while fresh.
    pub immutable: bool,
    /// `max-age` (§5.2.2.1). A malformed value reads as zero (§4.2.1: treat as stale).
    pub max_age: Option<Duration>,
    /// `s-maxage` (§5.2.2.10): shared caches only, wins over `max-age`. Malformed: zero.
    pub s_maxage: Option<Duration>,
    /// `stale-while-revalidate` (RFC 5861 §3). Malformed: zero.
    pub stale_while_revalidate: Option<Duration>,
    /// `stale-if-error` (RFC 5861 §4). Malformed: zero.
    pub stale_if_error: Option<Duration>,
}

impl Directives {
    /// Parses every `Cache-Control` field line of `headers`. Unknown directives are ignored
    /// (§5.2.3). Bytes that are not UTF-8 are replaced, not rejected: dropping a whole line
    /// because of one odd byte would also drop a `no-store` or `private` next to it.
    pub(crate) fn parse(headers: &HeaderMap) -> Self {
        let mut d = Self::default();
        for line in headers.get_all(header::CACHE_CONTROL) {
            for (name, arg) in split_directives(&lossy(line)) {
                let arg = arg.as_deref();
                match name.as_str() {
                    "no-store" => d.no_store = true,
                    "no-cache" => qualified(arg, &mut d.no_cache, &mut d.no_cache_fields),
                    "private" => qualified(arg, &mut d.private, &mut d.private_fields),
                    "public" => d.public = true,
                    "must-revalidate" => d.must_revalidate = true,
                    "proxy-revalidate" => d.proxy_revalidate = true,
                    "immutable" => d.immutable = true,
                    "max-age" => first_delta(&mut d.max_age, arg),
                    "s-maxage" => first_delta(&mut d.s_maxage, arg),
                    "stale-while-revalidate" => first_delta(&mut d.stale_while_revalidate, arg),
                    "stale-if-error" => first_delta(&mut d.stale_if_error, arg),
                    _ => {}
                }
            }
        }
        d
    }
}

/// A route's freshness fallbacks (used only when the origin gives no explicit lifetime).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Rules {
    /// Route `ttl`: lifetime for responses without explicit freshness.
    pub default_ttl: Option<Duration>,
    /// When Some: heuristic freshness (10 % of Date − Last-Modified), capped at this.
    pub heuristic_max: Option<Duration>,
}

/// Clock readings of the exchange (RFC 9111 §4.2.3 `request_time` / `response_time`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    /// When the request that produced the response was sent upstream.
    pub request_time: SystemTime,
    /// When the response was received.
    pub response_time: SystemTime,
}

/// Who may reuse a stored response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    /// Every requester of the URL.
    Shared,
    /// Only the same credentials (subject) as the request that fetched it: the response to a
    /// request with credentials that the origin did not mark shareable (RFC 9111 §3.5).
    Private,
}

/// A decision to store a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Storable {
    /// Who may reuse it.
    pub scope: Scope,
    /// `freshness_lifetime` (§4.2.1): fresh while the current age is below it.
    pub lifetime: Duration,
    /// `corrected_initial_age` (§4.2.3): its age when received.
    pub corrected_initial_age: Duration,
    /// How long past its lifetime it may be served while revalidating in the background
    /// (RFC 5861 §3); zero when not allowed.
    pub stale_while_revalidate: Duration,
    /// How long past its lifetime it may be served when the origin fails (RFC 5861 §4); zero
    /// when not allowed.
    pub stale_if_error: Duration,
    /// Fields not to store: `no-cache="…"` and `private="…"` names, lower-cased, without
    /// duplicates. The caller removes them from the stored copy.
    pub drop_fields: Vec<HeaderName>,
}

impl Storable {
    /// Age at `now` for a response received at `response_time` (§4.2.3 `current_age`:
    /// `corrected_initial_age + resident_time`). A clock that went backwards counts as no
    /// resident time rather than panicking.
    pub(crate) fn current_age(&self, response_time: SystemTime, now: SystemTime) -> Duration {
        let resident_time = now.duration_since(response_time).unwrap_or(Duration::ZERO);
        self.corrected_initial_age.saturating_add(resident_time)
    }
}

/// The storage decision (§3, §3.5, §4.2) or None when the response must not be stored.
///
/// `credentials`: the request as the origin saw it carried `Authorization`, `Cookie` or the
/// gateway's identity headers, so the response may be about that requester only.
pub(crate) fn storable(
    status: StatusCode,
    headers: &HeaderMap,
    credentials: bool,
    rules: &Rules,
    timing: &Timing,
) -> Option<Storable> {
    // §3: only final responses; 206 and 304 only by a cache that understands them (ranges,
    // header updates of a stored response), which this one does not (it stores full bodies).
    if status.is_informational()
        || status == StatusCode::PARTIAL_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return None;
    }
    let d = Directives::parse(headers);
    // §3: no `no-store`; a shared cache must not store an unqualified `private` response.
    if d.no_store || d.private {
        return None;
    }
    let expires = headers.get(header::EXPIRES);
    // §3: explicit freshness (or `public`) makes any final status storable; otherwise only
    // the heuristically cacheable ones (RFC 9110 §15.1).
    let explicit = d.s_maxage.is_some() || d.max_age.is_some() || expires.is_some();
    if !explicit && !d.public && !heuristically_cacheable(status) {
        return None;
    }
    let drop_fields = dedup(d.no_cache_fields.iter().chain(&d.private_fields));
    // A cookie is about one client. RFC 9111 §7.3 would allow storing it, but only an origin
    // that says so (`private="set-cookie"` / `no-cache="set-cookie"`) gets it stored, without
    // the cookie.
    if headers.contains_key(header::SET_COOKIE) && !drop_fields.contains(&header::SET_COOKIE) {
        return None;
    }
    // §4.1: `Vary: *` always fails to match, so a stored copy could never be reused.
    if vary_star(headers) {
        return None;
    }
    // §3.5: a response to a request with credentials is shared only with `public`,
    // `s-maxage`, or `must-revalidate` (which forces validation with the requester's own
    // credentials once stale; it only means anything when there is a lifetime to be fresh
    // for, hence "explicit"). Otherwise it is kept for that requester alone.
    let scope =
        if !credentials || d.public || d.s_maxage.is_some() || (d.must_revalidate && explicit) {
            Scope::Shared
        } else {
            Scope::Private
        };
    let date = headers.get(header::DATE).and_then(http_date);
    // §4.2.3: a missing or invalid Date is taken to be the time of receipt (a recipient would
    // add one, RFC 9110 §6.6.1).
    let date_or_receipt = date.unwrap_or(timing.response_time);
    let lifetime = if d.no_cache {
        // §5.2.2.4: stored, but never reused without validation.
        Duration::ZERO
    } else if let Some(lifetime) = d.s_maxage.or(d.max_age) {
        // §4.2.1: s-maxage (shared caches), then max-age.
        lifetime
    } else if let Some(expires) = expires {
        // §4.2.1: Expires − Date; §5.3: an invalid Expires (e.g. "0") is a time in the past.
        http_date(expires).map_or(Duration::ZERO, |at| {
            at.duration_since(date_or_receipt).unwrap_or(Duration::ZERO)
        })
    } else if credentials && d.must_revalidate {
        // Security: the origin asked for validation with the requester's credentials and gave
        // no lifetime; a route ttl or a heuristic must not turn that into reuse without asking.
        Duration::ZERO
    } else {
        // §4.2.2: heuristic freshness, only without an explicit expiration time (the status
        // checks above allow it only for heuristically cacheable statuses or `public`).
        let heuristic = rules.heuristic_max.and_then(|max| {
            let last_modified = headers.get(header::LAST_MODIFIED).and_then(http_date)?;
            let since = date_or_receipt
                .duration_since(last_modified)
                .unwrap_or(Duration::ZERO);
            Some((since / 10).min(max))
        });
        heuristic.or(rules.default_ttl).unwrap_or(Duration::ZERO)
    }
    .min(MAX_DELTA);
    // §4.2.4: no stale response when a directive forbids it: no-cache, must-revalidate,
    // proxy-revalidate, s-maxage (§5.2.2.10: it implies proxy-revalidate in a shared cache).
    let no_stale = d.no_cache || d.must_revalidate || d.proxy_revalidate || d.s_maxage.is_some();
    let stale = |window: Option<Duration>| match window {
        Some(window) if !no_stale => window,
        _ => Duration::ZERO,
    };
    let stale_while_revalidate = stale(d.stale_while_revalidate);
    let stale_if_error = stale(d.stale_if_error);
    // §4.2.3 age calculation.
    let apparent_age = timing
        .response_time
        .duration_since(date_or_receipt)
        .unwrap_or(Duration::ZERO);
    let response_delay = timing
        .response_time
        .duration_since(timing.request_time)
        .unwrap_or(Duration::ZERO);
    let corrected_age_value = age_header(headers)
        .unwrap_or(Duration::ZERO)
        .saturating_add(response_delay);
    let corrected_initial_age = apparent_age.max(corrected_age_value);
    // A copy that is never fresh, cannot be validated (§4.3.1: no ETag or Last-Modified left
    // in the stored copy) and may not be served stale could never be reused.
    let has_validator = [header::ETAG, header::LAST_MODIFIED]
        .iter()
        .any(|name| headers.contains_key(name) && !drop_fields.contains(name));
    if lifetime.is_zero()
        && !has_validator
        && stale_while_revalidate.is_zero()
        && stale_if_error.is_zero()
    {
        return None;
    }
    Some(Storable {
        scope,
        lifetime,
        corrected_initial_age,
        stale_while_revalidate,
        stale_if_error,
        drop_fields,
    })
}

/// An HTTP-date (IMF-fixdate, RFC 850 and asctime formats; RFC 9110 §5.6.7).
///
/// `httpdate` parses all three (case-sensitively, as §5.6.7 requires), rejects dates whose
/// day name does not match the date, and reads an RFC 850 two-digit year below 70 as 20xx,
/// otherwise 19xx.
pub(crate) fn http_date(value: &HeaderValue) -> Option<SystemTime> {
    httpdate::parse_http_date(value.to_str().ok()?).ok()
}

/// Age field value per RFC 9111 §5.1 (first member of a list; invalid → None).
///
/// Only the first `Age` line is read (it is a singleton field); a value beyond 2^31 seconds
/// is clamped (§1.2.2).
pub(crate) fn age_header(headers: &HeaderMap) -> Option<Duration> {
    let line = headers.get(header::AGE)?;
    let first = line.as_bytes().split(|&b| b == b',').next()?;
    delta_seconds(std::str::from_utf8(first).ok()?.trim_matches([' ', '\t']))
}

/// Statuses that are heuristically cacheable (RFC 9110 §15.1) and therefore storable without
/// explicit freshness.
fn heuristically_cacheable(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// Whether any `Vary` line lists `*` (at any position).
fn vary_star(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::VARY)
        .iter()
        .any(|line| lossy(line).split(',').any(|member| member.trim() == "*"))
}

/// A field line as text: non-UTF-8 bytes become U+FFFD, which matches no directive or name.
fn lossy(value: &HeaderValue) -> Cow<'_, str> {
    String::from_utf8_lossy(value.as_bytes())
}

/// Splits one `Cache-Control` line into (lower-cased name, argument) pairs.
///
/// A quoted-string argument (RFC 9110 §5.6.4) is unquoted and unescaped, and the commas inside
/// it belong to it: `no-cache="a, b", max-age=5` is two directives. Whatever follows a closing
/// quote up to the next comma is malformed and skipped; an unterminated quote runs to the end.
fn split_directives(line: &str) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        // Empty list elements and OWS are allowed between members (RFC 9110 §5.6.1).
        while chars
            .next_if(|&c| c == ',' || c == ' ' || c == '\t')
            .is_some()
        {}
        if chars.peek().is_none() {
            return out;
        }
        let mut name = String::new();
        while let Some(c) = chars.next_if(|&c| c != ',' && c != '=') {
            name.push(c);
        }
        let arg = if chars.next_if_eq(&'=').is_some() {
            while chars.next_if(|&c| c == ' ' || c == '\t').is_some() {}
            let mut arg = String::new();
            if chars.next_if_eq(&'"').is_some() {
                loop {
                    match chars.next() {
                        None | Some('"') => break,
                        Some('\\') => arg.extend(chars.next()),
                        Some(c) => arg.push(c),
                    }
                }
                while chars.next_if(|&c| c != ',').is_some() {}
            } else {
                while let Some(c) = chars.next_if(|&c| c != ',') {
                    arg.push(c);
                }
                arg.truncate(arg.trim_end().len());
            }
            Some(arg)
        } else {
            None
        };
        let name = name.trim().to_ascii_lowercase();
        if !name.is_empty() {
            out.push((name, arg));
        }
    }
}

/// Records a directive that has an unqualified and a field-list form (`no-cache`, `private`).
///
/// A list with no valid field name in it (`private=""`) counts as the unqualified form: the
/// stricter reading, since what the origin meant to protect is unknown.
fn qualified(arg: Option<&str>, unqualified: &mut bool, fields: &mut Vec<HeaderName>) {
    let names: Vec<HeaderName> = arg
        .unwrap_or_default()
        .split(',')
        .map(|name| name.trim_matches([' ', '\t']))
        .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
        .collect();
    if names.is_empty() {
        *unqualified = true;
    }
    for name in names {
        if !fields.contains(&name) {
            fields.push(name);
        }
    }
}

/// Sets `slot` from a delta-seconds argument unless an earlier occurrence did; a missing or
/// malformed argument reads as zero (§4.2.1: a cache should treat such a response as stale).
fn first_delta(slot: &mut Option<Duration>, arg: Option<&str>) {
    if slot.is_none() {
        *slot = Some(arg.and_then(delta_seconds).unwrap_or(Duration::ZERO));
    }
}

/// A delta-seconds value (§1.2.2: `1*DIGIT`), clamped to 2^31 seconds.
fn delta_seconds(text: &str) -> Option<Duration> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // All digits: parsing fails only on u64 overflow, which is "more than 2^31" as well.
    let secs = text
        .parse::<u64>()
        .map_or(MAX_DELTA_SECS, |secs| secs.min(MAX_DELTA_SECS));
    Some(Duration::from_secs(secs))
}

/// The names in order of first appearance, each once.
fn dedup<'a>(names: impl Iterator<Item = &'a HeaderName>) -> Vec<HeaderName> {
    let mut out: Vec<HeaderName> = Vec::new();
    for name in names {
        if !out.contains(name) {
            out.push(name.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    /// `Sun, 06 Nov 1994 08:49:37 GMT` (the RFC 9110 §5.6.7 example), as a clock reading.
    const T0_SECS: u64 = 784_111_777;
    const T0_IMF: &str = "Sun, 06 Nov 1994 08:49:37 GMT";
    const TTL: Duration = Duration::from_secs(300);

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    /// The clock reading `offset` seconds after T0 (negative: before).
    fn at(offset: i64) -> SystemTime {
        let base = UNIX_EPOCH + secs(T0_SECS);
        if offset >= 0 {
            base + secs(offset.unsigned_abs())
        } else {
            base - secs(offset.unsigned_abs())
        }
    }

    /// `at(offset)` formatted as an IMF-fixdate.
    fn date(offset: i64) -> String {
        httpdate::fmt_http_date(at(offset))
    }

    fn hm(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (name, value) in pairs {
            m.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        m
    }

    /// Request sent and response received at T0.
    fn timing() -> Timing {
        Timing {
            request_time: at(0),
            response_time: at(0),
        }
    }

    fn ttl_rules() -> Rules {
        Rules {
            default_ttl: Some(TTL),
            heuristic_max: None,
        }
    }

    /// `storable` for a 200 without credentials, TTL rules, received at T0.
    fn ok(pairs: &[(&str, &str)]) -> Option<Storable> {
        storable(StatusCode::OK, &hm(pairs), false, &ttl_rules(), &timing())
    }

    fn lifetime(pairs: &[(&str, &str)]) -> Duration {
        ok(pairs).expect("storable").lifetime
    }

    fn cc(value: &str) -> Directives {
        Directives::parse(&hm(&[("cache-control", value)]))
    }

    fn names(list: &[&'static str]) -> Vec<HeaderName> {
        list.iter().map(|n| HeaderName::from_static(n)).collect()
    }

    // --- Directives -------------------------------------------------------------------------

    #[test]
    fn parses_every_directive_case_insensitively() {
        let d = cc(
            "Public, MAX-AGE=30, s-maxage=\"90\", Must-Revalidate, proxy-revalidate, \
             immutable, stale-while-revalidate=5, Stale-If-Error=\"7\", no-store",
        );
        assert_eq!(
            d,
            Directives {
                no_store: true,
                public: true,
                must_revalidate: true,
                proxy_revalidate: true,
                immutable: true,
                max_age: Some(secs(30)),
                s_maxage: Some(secs(90)),
                stale_while_revalidate: Some(secs(5)),
                stale_if_error: Some(secs(7)),
                ..Directives::default()
            }
        );
        assert_eq!(cc(""), Directives::default());
        assert_eq!(cc("  ,, , "), Directives::default());
    }

    #[test]
    fn combines_field_lines() {
        let d = Directives::parse(&hm(&[
            ("cache-control", "public"),
            ("cache-control", "max-age=10"),
            ("cache-control", "max-age=20, no-cache"),
        ]));
        assert!(d.public && d.no_cache);
        assert_eq!(
            d.max_age,
            Some(secs(10)),
            "first occurrence wins across lines"
        );
    }

    #[test]
    fn first_occurrence_wins_and_malformed_values_are_zero() {
        assert_eq!(cc("max-age=10, max-age=20").max_age, Some(secs(10)));
        assert_eq!(cc("max-age=abc, max-age=20").max_age, Some(secs(0)));
        for bad in [
            "max-age=abc",
            "max-age=-1",
            "max-age=1.5",
            "max-age",
            "max-age=",
            "max-age=\"\"",
            "max-age=\"1 0\"",
            "max-age=+5",
        ] {
            assert_eq!(cc(bad).max_age, Some(Duration::ZERO), "{bad}");
        }
        assert_eq!(cc("s-maxage=x").s_maxage, Some(Duration::ZERO));
        assert_eq!(
            cc("stale-while-revalidate=x").stale_while_revalidate,
            Some(Duration::ZERO)
        );
        assert_eq!(cc("stale-if-error").stale_if_error, Some(Duration::ZERO));
        assert_eq!(
            cc("max-age = 60").max_age,
            Some(secs(60)),
            "spaces tolerated"
        );
    }

    #[test]
    fn huge_values_clamp_to_2_pow_31() {
        let max = secs(1 << 31);
        assert_eq!(cc("max-age=2147483648").max_age, Some(max));
        assert_eq!(cc("max-age=2147483649").max_age, Some(max));
        assert_eq!(cc("max-age=2147483647").max_age, Some(secs((1 << 31) - 1)));
        let huge = format!("s-maxage={}", "9".repeat(400));
        assert_eq!(cc(&huge).s_maxage, Some(max));
        assert_eq!(
            cc("stale-if-error=18446744073709551616").stale_if_error,
            Some(max)
        );
        // And nothing downstream overflows.
        let s = ok(&[("cache-control", &huge), ("age", "99999999999999999999999")]).unwrap();
        assert_eq!(s.lifetime, max);
        assert_eq!(s.corrected_initial_age, max);
        assert_eq!(s.current_age(at(0), at(1)), max + secs(1));
    }

    #[test]
    fn qualified_no_cache_and_private_list_fields() {
        let d = cc("no-cache=\"Set-Cookie, X-Foo\", private=\"x-bar\", max-age=5");
        assert!(!d.no_cache && !d.private);
        assert_eq!(d.no_cache_fields, names(&["set-cookie", "x-foo"]));
        assert_eq!(d.private_fields, names(&["x-bar"]));
        assert_eq!(
            d.max_age,
            Some(secs(5)),
            "the comma inside quotes is not a separator"
        );
        // Token form (senders should not, recipients still understand it).
        let d = cc("private=X-Token, no-cache");
        assert!(d.no_cache && !d.private);
        assert_eq!(d.private_fields, names(&["x-token"]));
        // Unqualified and qualified together, lists merged without duplicates.
        let d = cc("no-cache=\"a\", no-cache, no-cache=\"A, b\"");
        assert!(d.no_cache);
        assert_eq!(d.no_cache_fields, names(&["a", "b"]));
        // A list naming no valid field is read as the unqualified directive.
        assert!(cc("private=\"\"").private);
        assert!(cc("no-cache=\" , \"").no_cache);
        assert!(cc("private=\"bad name\"").private);
    }

    #[test]
    fn quoted_strings_keep_commas_and_escapes() {
        let d = cc("no-cache=\"a, b\", max-age=5");
        assert_eq!(d.no_cache_fields, names(&["a", "b"]));
        assert_eq!(d.max_age, Some(secs(5)));
        // An unknown extension with a quoted comma does not leak a directive.
        let d = cc("ext=\"x, no-store, y\", max-age=5");
        assert!(!d.no_store);
        assert_eq!(d.max_age, Some(secs(5)));
        // Escaped quote inside the string.
        let d = cc(r#"ext="a\", no-store", public"#);
        assert!(!d.no_store && d.public);
        // Junk after the closing quote is skipped up to the next comma.
        let d = cc("max-age=\"60\"junk, public");
        assert_eq!(d.max_age, Some(secs(60)));
        assert!(d.public);
        // Unterminated quote runs to the end of the line.
        let d = cc("ext=\"x, no-store");
        assert!(!d.no_store);
        // ... but not into the next line.
        let d = Directives::parse(&hm(&[
            ("cache-control", "ext=\"x"),
            ("cache-control", "no-store"),
        ]));
        assert!(d.no_store);
    }

    #[test]
    fn unknown_directives_and_odd_bytes_are_ignored() {
        let d = cc("foo, bar=baz, community=\"UCI\", max-age=9");
        assert_eq!(d.max_age, Some(secs(9)));
        let mut h = HeaderMap::new();
        h.append(
            header::CACHE_CONTROL,
            HeaderValue::from_bytes(b"max-age=\xff\xfe, no-store, x=\"\x80\"").unwrap(),
        );
        let d = Directives::parse(&h);
        assert_eq!(
            d.max_age,
            Some(Duration::ZERO),
            "non-UTF-8 value reads as malformed"
        );
        assert!(d.no_store, "the rest of the line still counts");
        assert!(storable(StatusCode::OK, &h, false, &ttl_rules(), &timing()).is_none());
    }

    // --- Dates and Age ----------------------------------------------------------------------

    #[test]
    fn http_dates_in_all_three_formats() {
        let v = HeaderValue::from_static;
        let t0 = Some(at(0));
        assert_eq!(http_date(&v("Sun, 06 Nov 1994 08:49:37 GMT")), t0);
        assert_eq!(http_date(&v("Sunday, 06-Nov-94 08:49:37 GMT")), t0);
        assert_eq!(http_date(&v("Sun Nov  6 08:49:37 1994")), t0);
        assert_eq!(http_date(&v(" Sun, 06 Nov 1994 08:49:37 GMT ")), t0);
        for bad in [
            "0",
            "-1",
            "",
            "yesterday",
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Mon, 06 Nov 1994 08:49:37 GMT", // wrong day name
            "Sun, 31 Feb 1994 08:49:37 GMT",
            "sun, 06 nov 1994 08:49:37 GMT", // case-sensitive (RFC 9110 §5.6.7)
            "Sun, 06 Nov 1994 25:49:37 GMT",
        ] {
            assert_eq!(http_date(&v(bad)), None, "{bad}");
        }
        assert_eq!(
            http_date(&HeaderValue::from_bytes(b"Sun, 06 Nov 1994 08:49:37 GMT\xff").unwrap()),
            None
        );
    }

    #[test]
    fn age_header_rules() {
        let age = |v: &str| age_header(&hm(&[("age", v)]));
        assert_eq!(age("10"), Some(secs(10)));
        assert_eq!(age(" 10 "), Some(secs(10)));
        assert_eq!(age("10, 20"), Some(secs(10)), "first member of a list");
        assert_eq!(age("abc"), None);
        assert_eq!(age("abc, 10"), None, "first member invalid: ignored");
        assert_eq!(age("-5"), None);
        assert_eq!(age("1.5"), None);
        assert_eq!(age(""), None);
        assert_eq!(age("99999999999999999999"), Some(secs(1 << 31)));
        assert_eq!(age_header(&HeaderMap::new()), None);
        assert_eq!(
            age_header(&hm(&[("age", "7"), ("age", "8")])),
            Some(secs(7)),
            "first line"
        );
        let mut h = HeaderMap::new();
        h.insert(header::AGE, HeaderValue::from_bytes(b"\xff5").unwrap());
        assert_eq!(age_header(&h), None);
    }

    // --- Status codes -----------------------------------------------------------------------

    #[test]
    fn statuses_with_explicit_freshness_or_public() {
        let rules = ttl_rules();
        let store = |code: u16, pairs: &[(&str, &str)]| {
            storable(
                StatusCode::from_u16(code).unwrap(),
                &hm(pairs),
                false,
                &rules,
                &timing(),
            )
        };
        for code in [
            200, 203, 204, 300, 301, 302, 307, 308, 400, 404, 500, 502, 503,
        ] {
            assert!(
                store(code, &[("cache-control", "max-age=60")]).is_some(),
                "{code}"
            );
            assert!(
                store(code, &[("cache-control", "s-maxage=60")]).is_some(),
                "{code}"
            );
            assert!(store(code, &[("expires", &date(60))]).is_some(), "{code}");
        }
        // `public` without explicit freshness: the route ttl applies to any final status.
        assert_eq!(
            store(302, &[("cache-control", "public")]).unwrap().lifetime,
            TTL
        );
        for code in [100, 101, 103, 206, 304] {
            for cc in ["max-age=60", "public, max-age=60", "s-maxage=60", ""] {
                assert!(
                    store(code, &[("cache-control", cc), ("etag", "\"x\"")]).is_none(),
                    "{code} {cc}"
                );
            }
        }
    }

    #[test]
    fn statuses_without_explicit_freshness() {
        let rules = ttl_rules();
        let store = |code: u16| {
            storable(
                StatusCode::from_u16(code).unwrap(),
                &HeaderMap::new(),
                false,
                &rules,
                &timing(),
            )
        };
        for code in [200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501] {
            assert_eq!(store(code).map(|s| s.lifetime), Some(TTL), "{code}");
        }
        for code in [
            201, 202, 302, 303, 307, 400, 401, 403, 409, 429, 500, 502, 503, 504,
        ] {
            assert!(store(code).is_none(), "{code}");
        }
    }

    // --- no-store, private, no-cache, Set-Cookie, Vary --------------------------------------

    #[test]
    fn no_store_and_unqualified_private_are_never_stored() {
        for cc in [
            "no-store",
            "public, no-store, max-age=60",
            "private",
            "private, max-age=60",
            "public, private",
            "s-maxage=60, PRIVATE",
        ] {
            assert!(
                ok(&[("cache-control", cc), ("etag", "\"x\"")]).is_none(),
                "{cc}"
            );
        }
    }

    #[test]
    fn qualified_private_and_no_cache_drop_fields() {
        let s = ok(&[
            (
                "cache-control",
                "private=\"X-User, x-user\", no-cache=\"X-Debug\", max-age=60",
            ),
            ("x-user", "alice"),
        ])
        .unwrap();
        assert_eq!(s.drop_fields, names(&["x-debug", "x-user"]));
        assert_eq!(
            s.lifetime,
            secs(60),
            "qualified no-cache does not zero the lifetime"
        );
        assert_eq!(s.scope, Scope::Shared);
    }

    #[test]
    fn set_cookie_only_when_it_is_dropped() {
        let cookie = ("set-cookie", "sid=1");
        assert!(ok(&[("cache-control", "max-age=60"), cookie]).is_none());
        assert!(ok(&[("cache-control", "public, s-maxage=60"), cookie]).is_none());
        assert!(ok(&[("cache-control", "private=\"x-other\", max-age=60"), cookie]).is_none());
        for cc in [
            "private=\"Set-Cookie\", max-age=60",
            "no-cache=\"set-cookie\", max-age=60",
            "private=\"x-a, set-cookie\", max-age=60",
        ] {
            let s = ok(&[("cache-control", cc), cookie]).unwrap_or_else(|| panic!("{cc}"));
            assert!(s.drop_fields.contains(&header::SET_COOKIE), "{cc}");
            assert_eq!(s.lifetime, secs(60));
        }
    }

    #[test]
    fn unqualified_no_cache_is_stored_with_zero_lifetime() {
        let s = ok(&[
            ("cache-control", "no-cache, max-age=60, stale-if-error=60"),
            ("etag", "\"v1\""),
        ])
        .unwrap();
        assert_eq!(s.lifetime, Duration::ZERO);
        assert_eq!(
            s.stale_if_error,
            Duration::ZERO,
            "§4.2.4: no-cache forbids serving stale"
        );
        // No validator: could never be reused.
        assert!(ok(&[("cache-control", "no-cache, max-age=60")]).is_none());
    }

    #[test]
    fn vary_star_anywhere_is_never_stored() {
        let base = ("cache-control", "max-age=60");
        assert!(ok(&[base, ("vary", "*")]).is_none());
        assert!(ok(&[base, ("vary", "accept, *")]).is_none());
        assert!(ok(&[base, ("vary", "accept"), ("vary", "x-a , * ,y")]).is_none());
        assert!(ok(&[base, ("vary", "accept, x-star*")]).is_some());
        assert!(ok(&[base, ("vary", "accept-language")]).is_some());
    }

    // --- Credentials (§3.5) -----------------------------------------------------------------

    #[test]
    fn credentials_table() {
        let rules = ttl_rules();
        let with = |cc: &str| {
            storable(
                StatusCode::OK,
                &hm(&[("cache-control", cc), ("etag", "\"v\"")]),
                true,
                &rules,
                &timing(),
            )
            .map(|s| (s.scope, s.lifetime))
        };
        use Scope::{Private, Shared};
        assert_eq!(with("public"), Some((Shared, TTL)));
        assert_eq!(with("public, max-age=10"), Some((Shared, secs(10))));
        assert_eq!(with("s-maxage=10"), Some((Shared, secs(10))));
        assert_eq!(
            with("must-revalidate, max-age=10"),
            Some((Shared, secs(10)))
        );
        assert_eq!(
            with("must-revalidate, s-maxage=10"),
            Some((Shared, secs(10)))
        );
        assert_eq!(with("max-age=10"), Some((Private, secs(10))));
        assert_eq!(with(""), Some((Private, TTL)));
        assert_eq!(
            with("proxy-revalidate, max-age=10"),
            Some((Private, secs(10)))
        );
        // must-revalidate without an explicit lifetime: private and never fresh, even though
        // the route has a ttl (and heuristics would apply).
        assert_eq!(with("must-revalidate"), Some((Private, Duration::ZERO)));
        assert_eq!(
            with("public, must-revalidate"),
            Some((Shared, Duration::ZERO)),
            "shared, but still no ttl"
        );
        let heuristic = Rules {
            default_ttl: Some(TTL),
            heuristic_max: Some(secs(3600)),
        };
        let s = storable(
            StatusCode::OK,
            &hm(&[
                ("cache-control", "must-revalidate"),
                ("date", T0_IMF),
                ("last-modified", &date(-100_000)),
            ]),
            true,
            &heuristic,
            &timing(),
        )
        .unwrap();
        assert_eq!((s.scope, s.lifetime), (Private, Duration::ZERO));
        // ... and with no validator it is not stored at all.
        assert!(
            storable(
                StatusCode::OK,
                &hm(&[("cache-control", "must-revalidate")]),
                true,
                &rules,
                &timing()
            )
            .is_none()
        );
        // must-revalidate with Expires is explicit too.
        let s = storable(
            StatusCode::OK,
            &hm(&[
                ("cache-control", "must-revalidate"),
                ("date", T0_IMF),
                ("expires", &date(30)),
            ]),
            true,
            &rules,
            &timing(),
        )
        .unwrap();
        assert_eq!((s.scope, s.lifetime), (Shared, secs(30)));
        // Without credentials the same responses are shared, and ttl applies.
        let without = |cc: &str| {
            storable(
                StatusCode::OK,
                &hm(&[("cache-control", cc), ("etag", "\"v\"")]),
                false,
                &rules,
                &timing(),
            )
            .map(|s| (s.scope, s.lifetime))
        };
        assert_eq!(without("max-age=10"), Some((Shared, secs(10))));
        assert_eq!(without(""), Some((Shared, TTL)));
        assert_eq!(without("must-revalidate"), Some((Shared, TTL)));
    }

    // --- Lifetime (§4.2.1, §4.2.2) ----------------------------------------------------------

    #[test]
    fn explicit_lifetime_precedence() {
        let d = ("date", T0_IMF);
        let e = date(1000);
        let e = ("expires", e.as_str());
        assert_eq!(
            lifetime(&[("cache-control", "max-age=10, s-maxage=20"), d, e]),
            secs(20)
        );
        assert_eq!(
            lifetime(&[("cache-control", "s-maxage=20, max-age=10"), d, e]),
            secs(20)
        );
        assert_eq!(lifetime(&[("cache-control", "max-age=10"), d, e]), secs(10));
        assert_eq!(lifetime(&[d, e]), secs(1000));
        assert_eq!(
            lifetime(&[("cache-control", "max-age=0"), ("etag", "\"x\"")]),
            secs(0)
        );
        assert_eq!(lifetime(&[("cache-control", "public")]), TTL);
        assert_eq!(lifetime(&[]), TTL);
    }

    #[test]
    fn expires_is_relative_to_date() {
        // The origin's clock is an hour behind ours: Expires − Date still gives 60 s.
        let s = ok(&[("date", &date(-3600)), ("expires", &date(-3540))]).unwrap();
        assert_eq!(s.lifetime, secs(60));
        assert_eq!(
            s.corrected_initial_age,
            secs(3600),
            "apparent age from the skewed Date"
        );
        // Expires before Date: already stale (kept only thanks to stale-if-error here).
        let s = ok(&[
            ("date", T0_IMF),
            ("expires", &date(-10)),
            ("cache-control", "stale-if-error=30"),
        ])
        .unwrap();
        assert_eq!(s.lifetime, Duration::ZERO);
        // No Date (or an invalid one): relative to response_time.
        for d in [None, Some("garbage")] {
            let mut pairs = vec![("expires", date(45))];
            if let Some(d) = d {
                pairs.push(("date", d.to_owned()));
            }
            let pairs: Vec<(&str, &str)> = pairs.iter().map(|(n, v)| (*n, v.as_str())).collect();
            assert_eq!(lifetime(&pairs), secs(45), "{d:?}");
        }
        // The other formats count too.
        assert_eq!(
            lifetime(&[
                ("date", T0_IMF),
                ("expires", "Sunday, 06-Nov-94 08:50:37 GMT")
            ]),
            secs(60)
        );
        assert_eq!(
            lifetime(&[("date", T0_IMF), ("expires", "Sun Nov  6 08:51:37 1994")]),
            secs(120)
        );
    }

    #[test]
    fn invalid_expires_means_already_expired() {
        for bad in ["0", "-1", "never", "Sun, 06 Nov 1994 08:49:37 UTC"] {
            // Explicit (so a 302 is storable), but stale at once; ttl does not apply.
            let s = storable(
                StatusCode::FOUND,
                &hm(&[("date", T0_IMF), ("expires", bad), ("etag", "\"v\"")]),
                false,
                &ttl_rules(),
                &timing(),
            )
            .unwrap_or_else(|| panic!("{bad}"));
            assert_eq!(s.lifetime, Duration::ZERO, "{bad}");
            assert!(
                ok(&[("expires", bad)]).is_none(),
                "{bad}: useless without validator"
            );
        }
        // max-age wins over an invalid Expires.
        assert_eq!(
            lifetime(&[("expires", "0"), ("cache-control", "max-age=5")]),
            secs(5)
        );
    }

    #[test]
    fn heuristic_is_ten_percent_capped_and_only_without_explicit_freshness() {
        let rules = Rules {
            default_ttl: Some(TTL),
            heuristic_max: Some(secs(3600)),
        };
        let run = |pairs: &[(&str, &str)], timing: Timing| {
            storable(StatusCode::OK, &hm(pairs), false, &rules, &timing).map(|s| s.lifetime)
        };
        // 10 % of Date − Last-Modified.
        let lm = date(-10_000);
        assert_eq!(
            run(&[("date", T0_IMF), ("last-modified", &lm)], timing()),
            Some(secs(1000))
        );
        // Capped.
        let old = date(-1_000_000);
        assert_eq!(
            run(&[("date", T0_IMF), ("last-modified", &old)], timing()),
            Some(secs(3600))
        );
        // Without Date: from response_time.
        let later = Timing {
            request_time: at(0),
            response_time: at(10_000),
        };
        assert_eq!(run(&[("last-modified", T0_IMF)], later), Some(secs(1000)));
        // Last-Modified after Date: zero (but stored: it has a validator).
        assert_eq!(
            run(&[("date", T0_IMF), ("last-modified", &date(50))], timing()),
            Some(Duration::ZERO)
        );
        // Explicit freshness wins over the heuristic.
        assert_eq!(
            run(
                &[
                    ("date", T0_IMF),
                    ("last-modified", &lm),
                    ("cache-control", "max-age=7")
                ],
                timing()
            ),
            Some(secs(7))
        );
        assert_eq!(
            run(
                &[
                    ("date", T0_IMF),
                    ("last-modified", &lm),
                    ("expires", &date(9))
                ],
                timing()
            ),
            Some(secs(9))
        );
        // No (valid) Last-Modified: the ttl.
        assert_eq!(run(&[("date", T0_IMF)], timing()), Some(TTL));
        assert_eq!(
            run(&[("date", T0_IMF), ("last-modified", "bad")], timing()),
            Some(TTL)
        );
        // Heuristics off: the ttl even with Last-Modified.
        assert_eq!(lifetime(&[("date", T0_IMF), ("last-modified", &lm)]), TTL);
        // Not for a status that is not heuristically cacheable...
        assert!(
            storable(
                StatusCode::FOUND,
                &hm(&[("date", T0_IMF), ("last-modified", &lm)]),
                false,
                &rules,
                &timing()
            )
            .is_none()
        );
        // ... unless public.
        assert_eq!(
            storable(
                StatusCode::FOUND,
                &hm(&[
                    ("date", T0_IMF),
                    ("last-modified", &lm),
                    ("cache-control", "public")
                ]),
                false,
                &rules,
                &timing()
            )
            .map(|s| s.lifetime),
            Some(secs(1000))
        );
    }

    #[test]
    fn ttl_only_without_explicit_freshness() {
        assert_eq!(lifetime(&[]), TTL);
        assert_eq!(lifetime(&[("cache-control", "public")]), TTL);
        assert_eq!(lifetime(&[("cache-control", "max-age=3")]), secs(3));
        assert_eq!(lifetime(&[("cache-control", "s-maxage=4")]), secs(4));
        assert_eq!(
            lifetime(&[("cache-control", "max-age=0"), ("etag", "\"x\"")]),
            Duration::ZERO
        );
        assert_eq!(
            lifetime(&[("date", T0_IMF), ("expires", T0_IMF), ("etag", "\"x\"")]),
            Duration::ZERO
        );
        // No rules at all: zero, so only kept with a validator.
        let none = Rules::default();
        let s = storable(
            StatusCode::OK,
            &hm(&[("etag", "\"x\"")]),
            false,
            &none,
            &timing(),
        )
        .unwrap();
        assert_eq!(s.lifetime, Duration::ZERO);
        assert!(storable(StatusCode::OK, &HeaderMap::new(), false, &none, &timing()).is_none());
    }

    // --- Stale windows ----------------------------------------------------------------------

    #[test]
    fn stale_windows() {
        let s = ok(&[(
            "cache-control",
            "max-age=60, stale-while-revalidate=30, stale-if-error=600",
        )])
        .unwrap();
        assert_eq!(
            (s.stale_while_revalidate, s.stale_if_error),
            (secs(30), secs(600))
        );
        let s = ok(&[("cache-control", "max-age=60, stale-while-revalidate=abc")]).unwrap();
        assert_eq!(s.stale_while_revalidate, Duration::ZERO);
        for forbid in [
            "must-revalidate",
            "proxy-revalidate",
            "s-maxage=60",
            "no-cache",
        ] {
            let s = ok(&[
                (
                    "cache-control",
                    &format!("max-age=60, stale-while-revalidate=30, stale-if-error=600, {forbid}"),
                ),
                ("etag", "\"x\""),
            ])
            .unwrap();
            assert_eq!(
                (s.stale_while_revalidate, s.stale_if_error),
                (Duration::ZERO, Duration::ZERO),
                "{forbid}"
            );
        }
    }

    // --- Age (§4.2.3) -----------------------------------------------------------------------

    #[test]
    fn corrected_initial_age() {
        // Age header plus the response delay.
        let t = Timing {
            request_time: at(0),
            response_time: at(2),
        };
        let run = |pairs: &[(&str, &str)], t: Timing| {
            storable(StatusCode::OK, &hm(pairs), false, &ttl_rules(), &t)
                .unwrap()
                .corrected_initial_age
        };
        assert_eq!(run(&[("age", "10"), ("date", &date(2))], t), secs(12));
        // A Date in the past gives a larger apparent age, which wins.
        assert_eq!(run(&[("age", "10"), ("date", &date(-98))], t), secs(100));
        // A Date in the future (origin clock ahead) is not a negative age.
        assert_eq!(run(&[("date", &date(500))], t), secs(2));
        // No Date: apparent age zero; Age abc ignored.
        assert_eq!(run(&[("age", "abc")], t), secs(2));
        assert_eq!(run(&[("age", "10, 20")], timing()), secs(10));
        // request_time after response_time (clock step): no negative delay.
        let backwards = Timing {
            request_time: at(5),
            response_time: at(0),
        };
        assert_eq!(run(&[], backwards), Duration::ZERO);
    }

    #[test]
    fn current_age_adds_resident_time() {
        let s = ok(&[("age", "10"), ("cache-control", "max-age=60")]).unwrap();
        assert_eq!(s.corrected_initial_age, secs(10));
        assert_eq!(s.current_age(at(0), at(0)), secs(10));
        assert_eq!(s.current_age(at(0), at(35)), secs(45));
        // The clock went backwards: no resident time, no panic.
        assert_eq!(s.current_age(at(0), at(-35)), secs(10));
    }

    // --- Usefulness -------------------------------------------------------------------------

    #[test]
    fn none_when_nothing_could_reuse_it() {
        let zero = ("cache-control", "max-age=0");
        assert!(ok(&[zero]).is_none());
        assert!(ok(&[zero, ("etag", "\"v\"")]).is_some());
        assert!(ok(&[zero, ("last-modified", T0_IMF)]).is_some());
        assert!(ok(&[("cache-control", "max-age=0, stale-if-error=60")]).is_some());
        assert!(ok(&[("cache-control", "max-age=0, stale-while-revalidate=60")]).is_some());
        assert!(ok(&[("cache-control", "max-age=1")]).is_some());
        // A validator the stored copy will not keep does not count.
        assert!(
            ok(&[
                ("cache-control", "max-age=0, no-cache=\"etag\""),
                ("etag", "\"v\"")
            ])
            .is_none()
        );
        // s-maxage=0 disables the stale windows, so they do not keep it.
        assert!(ok(&[("cache-control", "s-maxage=0, stale-if-error=60")]).is_none());
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
                    h.insert(header::VARY, v.clone());
                    h.insert(header::EXPIRES, v.clone());
                    h.insert(header::AGE, v);
                }
                let _ = Directives::parse(&h);
                let rules = Rules { default_ttl: Some(TTL), heuristic_max: Some(secs(3600)) };
                for credentials in [false, true] {
                    if let Some(s) = storable(StatusCode::OK, &h, credentials, &rules, &timing()) {
                        let _ = s.current_age(at(0), at(10));
                    }
                }
                let _ = crate::cache::key::vary_names(&h);
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

            #[test]
            fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
                if let Ok(v) = HeaderValue::from_bytes(&bytes) {
                    let mut h = HeaderMap::new();
                    for name in [header::CACHE_CONTROL, header::DATE, header::EXPIRES, header::AGE,
                                 header::LAST_MODIFIED, header::VARY] {
                        h.insert(name, v.clone());
                    }
                    let _ = http_date(&v);
                    let _ = age_header(&h);
                    let rules = Rules { default_ttl: None, heuristic_max: Some(secs(60)) };
                    let _ = storable(StatusCode::OK, &h, true, &rules, &timing());
                }
            }

            #[test]
            fn delta_seconds_clamp(n in any::<u128>()) {
                let d = cc(&format!("max-age={n}")).max_age.unwrap();
                prop_assert_eq!(d.as_secs(), u64::try_from(n.min(1 << 31)).unwrap());
            }
        }
    }
}
