//! [`RateLimitLayer`]: a route's `rate_limits`, checked after authentication and before the
//! handler, so a refused request is never published nor sent upstream.
//!
//! Each configured limit is one governor keyed GCRA limiter: `limit` requests per `per`, one
//! every `per / limit` once the `burst` is spent. Limits are checked in their config order and
//! the first one exceeded answers `429` (problem+json, `Retry-After`, `RateLimit`,
//! `RateLimit-Policy`). A request refused by a later limit has already counted against the
//! earlier ones: governor has no "check without taking", and the over-count only ever makes a
//! limit stricter, never looser.
//!
//! Keys (`by`): the verified `sub`, a verified claim (one of `auth.propagate_claims`, read from
//! the [`Identity`]), the client IP ([`client_ip`]; IPv6 by /64, since one host commonly holds a
//! whole /64), or one key for the whole route. Requests without the keyed value (a token
//! without the claim, no peer address) share one bucket per limit rather than going unlimited.
//! A key is stored as a 128-bit xxh3 hash of the value under a per-process random seed: every
//! entry has the same small size whatever the subject's length, and collisions (two callers
//! sharing a bucket) can neither happen by chance nor be aimed at without knowing the seed.
//!
//! Memory is bounded twice: [`RateLimits::sweep`] (every [`SWEEP_INTERVAL`], from a task that
//! [`crate::run`] starts) drops keys whose bucket is full again, which a fresh key would look
//! like anyway; and each limit holds at most [`MAX_KEYS_PER_LIMIT`] keys. Past that cap a key
//! that has no bucket yet shares one overflow bucket with every other such key, while keys
//! that already have a bucket keep it. The choice: during a flood of new keys (spoofed
//! subjects cannot happen, but a botnet's IPs can) the limit still holds for the flood as a
//! whole, instead of either growing without bound or letting new keys through unlimited;
//! known clients are not affected, and new ones get their own bucket again as soon as the
//! sweep has made room.
//!
//! Header formats follow draft-ietf-httpapi-ratelimit-headers-10 ("RateLimit header fields for
//! HTTP", structured fields): `RateLimit-Policy: "<name>";q=<quota>;w=<window seconds>` and
//! `RateLimit: "<name>";r=<remaining>;t=<seconds until the bucket is full again>`. Allowed
//! responses carry both for every limit of the route; a 429 carries the limit that refused it.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::future::Future;
use std::hash::BuildHasher;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, MonotonicClock};
use governor::middleware::StateInformationMiddleware;
use governor::nanos::Nanos;
use governor::state::StateStore;
use governor::state::keyed::{DashMapStateStore, ShrinkableKeyedStateStore};
use governor::{Quota, RateLimiter};
use http::{HeaderMap, HeaderName, HeaderValue, Request};
use ipnet::IpNet;
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::auth::Identity;
use crate::config::{RateLimitConfig, RateLimitKey, Route};
use crate::error::GatewayError;
use crate::metrics::Metrics;
use crate::proxy::{X_FORWARDED_FOR, is_trusted, peer};

/// Most distinct keys one limit keeps; further new keys share the overflow bucket.
pub(crate) const MAX_KEYS_PER_LIMIT: usize = 100_000;

/// How often idle keys are dropped. Short enough that a burst of one-off keys is gone soon,
/// long enough that sweeping (a pass over every shard) costs nothing measurable.
pub(crate) const SWEEP_INTERVAL: Duration = Duration::from_secs(10);

/// `RateLimit` (the current state of each policy).
pub(crate) const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
/// `RateLimit-Policy` (the configured quotas).
pub(crate) const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");

/// The key all new keys share once a limit holds [`MAX_KEYS_PER_LIMIT`]. A real key hashing to
/// it is a 2^-128 event.
const OVERFLOW_KEY: u128 = u128::MAX;

/// The key of requests that lack the keyed value, and of the route-wide limit.
const NO_VALUE: &[u8] = b"";

/// One limit's keyed state, capped at `cap` keys (see the module docs for why new keys beyond
/// it share [`OVERFLOW_KEY`]). The cap is approximate under concurrency: requests racing past
/// the length check may add a few keys more.
#[derive(Debug)]
struct CappedStore {
    map: DashMapStateStore<u128>,
    cap: usize,
}

impl CappedStore {
    fn new(cap: usize) -> Self {
        Self {
            map: DashMapStateStore::default(),
            cap,
        }
    }

    /// The key whose bucket `key` uses: its own if it has one or there is room.
    fn resolve(&self, key: u128) -> u128 {
        // Known keys first: one shard lookup, while `len` visits every shard.
        if self.map.contains_key(&key) || self.map.len() < self.cap {
            key
        } else {
            OVERFLOW_KEY
        }
    }
}

impl StateStore for CappedStore {
    type Key = u128;

    fn measure_and_replace<T, F, E>(&self, key: &u128, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        self.map.measure_and_replace(&self.resolve(*key), f)
    }
}

impl ShrinkableKeyedStateStore<u128> for CappedStore {
    fn retain_recent(&self, drop_below: Nanos) {
        ShrinkableKeyedStateStore::retain_recent(&self.map, drop_below);
    }

    fn shrink_to_fit(&self) {
        self.map.shrink_to_fit();
    }

    fn len(&self) -> usize {
        self.map.len()
    }

    fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// governor with our store, std's monotonic clock, and the bucket state on allowed requests
/// (for the `RateLimit` header).
type Limiter = RateLimiter<u128, CappedStore, MonotonicClock, StateInformationMiddleware>;

/// A configured limit as the headers describe it.
#[derive(Debug)]
pub(crate) struct RatePolicy {
    name: String,
    header: HeaderValue,
}

impl RatePolicy {
    fn new(config: &RateLimitConfig) -> Self {
        let header = format!(
            "\"{}\";q={};w={}",
            config.policy,
            config.limit,
            ceil_secs(config.per).max(1)
        );
        Self {
            // Validated: visible ASCII without `"` or `\`, so this cannot fail; a name that
            // somehow did would only lose its header, never the limit.
            header: HeaderValue::from_str(&header)
                .unwrap_or_else(|_| HeaderValue::from_static("\"rate-limit\"")),
            name: config.policy.clone(),
        }
    }

    /// The policy name (`by` as configured, e.g. `subject`, `claim:tenant`, `ip-1`).
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Its `RateLimit-Policy` item: `"<name>";q=<quota>;w=<window seconds>`.
    pub(crate) fn policy_header(&self) -> HeaderValue {
        self.header.clone()
    }

    /// Appends its `RateLimit` item, `"<name>";r=<remaining>;t=<reset seconds>`, to `out`.
    fn push_state(&self, out: &mut String, remaining: u32, reset: Duration) {
        if !out.is_empty() {
            out.push_str(", ");
        }
        let _ = write!(
            out,
            "\"{}\";r={remaining};t={}",
            self.name,
            ceil_secs(reset)
        );
    }

    /// Its `RateLimit` value for a refused request: nothing remains until `reset`.
    pub(crate) fn exhausted_header(&self, reset: Duration) -> Option<HeaderValue> {
        let mut out = String::new();
        self.push_state(&mut out, 0, reset);
        HeaderValue::from_str(&out).ok()
    }
}

/// A policy for tests elsewhere in the crate.
#[cfg(test)]
pub(crate) fn test_policy(config: &RateLimitConfig) -> Arc<RatePolicy> {
    Arc::new(RatePolicy::new(config))
}

/// Whole seconds, rounded up (headers count in seconds; rounding down would invite a retry
/// that is refused again).
pub(crate) fn ceil_secs(d: Duration) -> u64 {
    d.as_secs().saturating_add(u64::from(d.subsec_nanos() > 0))
}

/// One configured limit, live.
struct Limit {
    by: RateLimitKey,
    limiter: Limiter,
    policy: Arc<RatePolicy>,
    /// `per / limit`: how long one spent request takes to come back.
    interval: Duration,
    burst: u32,
}

impl Limit {
    fn new(config: &RateLimitConfig, cap: usize) -> Self {
        // Validation guarantees `per / limit` is at least 1 ns; the fallback (1 ns) is never
        // used but keeps this infallible.
        let interval = (config.per / config.limit.get()).max(Duration::from_nanos(1));
        let quota = Quota::with_period(interval)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MAX))
            .allow_burst(config.burst);
        Self {
            by: config.by.clone(),
            limiter: Limiter::new(quota, CappedStore::new(cap), MonotonicClock),
            policy: Arc::new(RatePolicy::new(config)),
            interval,
            burst: config.burst.get(),
        }
    }
}

/// One route's limits, shared by every clone of its [`RateLimit`] service.
pub(crate) struct RouteLimits {
    route: Arc<str>,
    limits: Vec<Limit>,
    /// Every limit's `RateLimit-Policy` item, as one list (the same on every response).
    policy_header: Option<HeaderValue>,
    trusted_proxies: Arc<[IpNet]>,
    metrics: Arc<Metrics>,
    seed: u64,
}

impl std::fmt::Debug for RouteLimits {
    // Not the keyed state: it can hold 100,000 entries per limit.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteLimits")
            .field("route", &self.route)
            .field(
                "policies",
                &self
                    .limits
                    .iter()
                    .map(|l| l.policy.name())
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl RouteLimits {
    fn new(
        route: &str,
        configs: &[RateLimitConfig],
        trusted_proxies: Arc<[IpNet]>,
        metrics: Arc<Metrics>,
        seed: u64,
        cap: usize,
    ) -> Self {
        let limits: Vec<Limit> = configs.iter().map(|c| Limit::new(c, cap)).collect();
        let joined = limits
            .iter()
            .filter_map(|l| l.policy.header.to_str().ok())
            .collect::<Vec<_>>()
            .join(", ");
        Self {
            route: Arc::from(route),
            policy_header: HeaderValue::from_str(&joined).ok(),
            limits,
            trusted_proxies,
            metrics,
            seed,
        }
    }

    /// Takes one request from each limit in order. `Ok`: the `RateLimit` value for the
    /// response; `Err`: the 429 of the first limit exceeded.
    fn check<B>(&self, request: &Request<B>) -> Result<Option<HeaderValue>, GatewayError> {
        let identity = request.extensions().get::<Identity>();
        let mut state = String::new();
        for limit in &self.limits {
            let key = self.key(&limit.by, request, identity);
            match limit.limiter.check_key(&key) {
                Ok(snapshot) => {
                    let remaining = snapshot.remaining_burst_capacity();
                    let spent = limit.burst.saturating_sub(remaining);
                    let reset = limit.interval.checked_mul(spent).unwrap_or(Duration::MAX);
                    limit.policy.push_state(&mut state, remaining, reset);
                }
                Err(not_until) => {
                    let retry_after = not_until.wait_time_from(limit.limiter.clock().now());
                    self.metrics.rate_limited(&self.route);
                    // The policy, never the key: subjects and IPs stay out of this log.
                    tracing::debug!(
                        route = &*self.route,
                        policy = limit.policy.name(),
                        retry_after_ms = retry_after.as_millis() as u64,
                        "Request rate-limited."
                    );
                    return Err(GatewayError::TooManyRequests {
                        retry_after,
                        policy: limit.policy.clone(),
                    });
                }
            }
        }
        Ok(HeaderValue::from_str(&state).ok())
    }

    /// The bucket key of `request` for a limit keyed `by`.
    fn key<B>(&self, by: &RateLimitKey, request: &Request<B>, identity: Option<&Identity>) -> u128 {
        let hash = |bytes: &[u8]| xxhash_rust::xxh3::xxh3_128_with_seed(bytes, self.seed);
        match by {
            RateLimitKey::Route => hash(NO_VALUE),
            RateLimitKey::Subject => hash(identity.map_or(NO_VALUE, |i| i.subject.as_bytes())),
            RateLimitKey::Claim(header) => hash(
                identity
                    .and_then(|i| {
                        i.propagated
                            .iter()
                            .find(|(name, _)| name.as_str() == header)
                    })
                    .map_or(NO_VALUE, |(_, value)| value.as_bytes()),
            ),
            RateLimitKey::Ip => {
                let ip = client_ip(
                    peer(request.extensions()),
                    request.headers(),
                    &self.trusted_proxies,
                );
                match ip.map(ip_key) {
                    Some((bytes, len)) => hash(&bytes[..len]),
                    None => hash(NO_VALUE),
                }
            }
        }
    }
}

/// The client address for rate limiting: the TCP peer; or, when the peer is a trusted proxy,
/// the rightmost `X-Forwarded-For` address that is not itself a trusted proxy (each proxy
/// appends the address it received from, so everything left of the first untrusted address
/// from the right could have been written by the client). If every address is trusted, the
/// leftmost one; if an entry does not parse, the last trusted hop before it (what follows it
/// leftwards is not believable).
pub(crate) fn client_ip(
    peer: Option<IpAddr>,
    headers: &HeaderMap,
    trusted_proxies: &[IpNet],
) -> Option<IpAddr> {
    let peer = peer?;
    if !is_trusted(Some(peer), trusted_proxies) {
        return Some(peer);
    }
    let mut client = peer;
    // Several field lines form one list, later lines appended later: walk them from the end.
    for value in headers.get_all(X_FORWARDED_FOR).iter().rev() {
        let Ok(text) = value.to_str() else {
            return Some(client);
        };
        for item in text.rsplit(',') {
            let Some(ip) = parse_forwarded(item.trim()) else {
                return Some(client);
            };
            if !is_trusted(Some(ip), trusted_proxies) {
                return Some(ip);
            }
            client = ip;
        }
    }
    Some(client)
}

/// An `X-Forwarded-For` entry: an IP, optionally with a port (`1.2.3.4:5`, `[::1]:5`) or in
/// brackets, as some proxies write them.
fn parse_forwarded(item: &str) -> Option<IpAddr> {
    item.parse::<IpAddr>()
        .ok()
        .or_else(|| item.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .or_else(|| {
            item.strip_prefix('[')
                .and_then(|s| s.strip_suffix(']'))
                .and_then(|s| s.parse().ok())
        })
}

/// The bytes an address is keyed by: IPv4 whole (IPv4-mapped IPv6 too), IPv6 by its /64
/// prefix, since a single host or subscriber usually holds a whole /64 and could otherwise
/// mint buckets at will.
fn ip_key(ip: IpAddr) -> ([u8; 8], usize) {
    let mut out = [0u8; 8];
    match ip {
        IpAddr::V4(v4) => {
            out[..4].copy_from_slice(&v4.octets());
            (out, 4)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                out[..4].copy_from_slice(&v4.octets());
                return (out, 4);
            }
            out.copy_from_slice(&v6.octets()[..8]);
            (out, 8)
        }
    }
}

/// Every route's limits, built once from the config; the app's layers and the sweeping task
/// share it through [`AppState`](crate::state::AppState).
#[derive(Debug, Default)]
pub(crate) struct RateLimits {
    routes: HashMap<String, Arc<RouteLimits>>,
}

impl RateLimits {
    /// The limiters of every route that has `rate_limits`.
    pub(crate) fn new(
        routes: &[Route],
        trusted_proxies: Arc<[IpNet]>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self::with_cap(routes, trusted_proxies, metrics, MAX_KEYS_PER_LIMIT)
    }

    fn with_cap(
        routes: &[Route],
        trusted_proxies: Arc<[IpNet]>,
        metrics: Arc<Metrics>,
        cap: usize,
    ) -> Self {
        // Random per process (std seeds RandomState from the OS): bucket keys cannot be
        // predicted, so colliding with someone else's bucket cannot be aimed at.
        let seed = std::hash::RandomState::new().hash_one(0x5eed_u64);
        let routes = routes
            .iter()
            .filter(|r| !r.rate_limits.is_empty())
            .map(|r| {
                let limits = RouteLimits::new(
                    &r.name,
                    &r.rate_limits,
                    trusted_proxies.clone(),
                    metrics.clone(),
                    seed,
                    cap,
                );
                (r.name.clone(), Arc::new(limits))
            })
            .collect();
        Self { routes }
    }

    /// Whether no route has limits (then nothing needs sweeping).
    pub(crate) fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// The layer for `route`, if it has limits.
    pub(crate) fn layer(&self, route: &str) -> Option<RateLimitLayer> {
        self.routes.get(route).map(|limits| RateLimitLayer {
            limits: limits.clone(),
        })
    }

    /// Drops every key whose bucket has refilled (indistinguishable from a new key) and
    /// returns the freed memory.
    pub(crate) fn sweep(&self) {
        for limit in self.routes.values().flat_map(|r| r.limits.iter()) {
            limit.limiter.retain_recent();
            limit.limiter.shrink_to_fit();
        }
    }

    /// Sweeps every `period` until the limits are dropped (a reload replaced them, or the
    /// gateway stopped): the task holds them only while sweeping.
    pub(crate) async fn sweep_every(limits: std::sync::Weak<Self>, period: Duration) {
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is immediate; there is nothing to sweep yet.
        ticks.tick().await;
        loop {
            ticks.tick().await;
            match limits.upgrade() {
                Some(limits) => limits.sweep(),
                None => return,
            }
        }
    }
}

/// Applies one route's limits to the service it wraps; see the [module docs](self).
#[derive(Clone, Debug)]
pub(crate) struct RateLimitLayer {
    limits: Arc<RouteLimits>,
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit {
            inner,
            limits: self.limits.clone(),
        }
    }
}

/// The service built by [`RateLimitLayer`]: answers 429 itself, or calls the inner service and
/// adds the `RateLimit` headers to its response.
#[derive(Clone, Debug)]
pub(crate) struct RateLimit<S> {
    inner: S,
    limits: Arc<RouteLimits>,
}

impl<S, B> Service<Request<B>> for RateLimit<S>
where
    S: Service<Request<B>, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        match self.limits.check(&request) {
            Ok(state) => ResponseFuture {
                kind: Kind::Allowed {
                    inner: self.inner.call(request),
                    policy: self.limits.policy_header.clone(),
                    state,
                },
            },
            Err(refused) => ResponseFuture {
                kind: Kind::Limited {
                    response: Some(refused.into_response()),
                },
            },
        }
    }
}

pin_project! {
    /// The future of [`RateLimit`]: the inner service's, or the ready 429.
    pub struct ResponseFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        // Allowed: the inner response, with `RateLimit-Policy` and `RateLimit` added.
        Allowed {
            #[pin]
            inner: F,
            policy: Option<HeaderValue>,
            state: Option<HeaderValue>,
        },
        // Refused: the 429, taken on first poll.
        Limited {
            response: Option<Response>,
        },
    }
}

impl<F, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Allowed {
                inner,
                policy,
                state,
            } => {
                let mut response = ready!(inner.poll(cx))?;
                let headers = response.headers_mut();
                // Appended: an upstream's own RateLimit fields stay, as further list members.
                if let Some(policy) = policy.take() {
                    headers.append(RATELIMIT_POLICY, policy);
                }
                if let Some(state) = state.take() {
                    headers.append(RATELIMIT, state);
                }
                Poll::Ready(Ok(response))
            }
            // Polled again after completion would be a caller's bug: answer 500, never panic.
            KindProj::Limited { response } => Poll::Ready(Ok(response
                .take()
                .unwrap_or_else(|| GatewayError::Internal.into_response()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::body::Body;
    use axum::extract::ConnectInfo;
    use tower::{ServiceExt, service_fn};

    use super::*;
    use crate::auth::IdentityData;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(X_FORWARDED_FOR, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_forwards() {
        let h = xff(&["6.6.6.6"]);
        assert_eq!(client_ip(ip("10.0.0.9"), &h, &[]), ip("10.0.0.9"));
        let trusted = nets(&["127.0.0.1/32"]);
        assert_eq!(client_ip(ip("10.0.0.9"), &h, &trusted), ip("10.0.0.9"));
        assert_eq!(client_ip(None, &h, &trusted), None);
    }

    #[test]
    fn a_trusted_peer_yields_the_rightmost_untrusted_forwarded_address() {
        let trusted = nets(&["127.0.0.1/32", "10.0.0.0/8"]);
        // The client put a fake first entry; the proxies appended the real one and themselves.
        let h = xff(&["6.6.6.6, 203.0.113.7, 10.1.1.1"]);
        assert_eq!(client_ip(ip("127.0.0.1"), &h, &trusted), ip("203.0.113.7"));
        // Several field lines are one list, in order.
        let h = xff(&["6.6.6.6", "203.0.113.8", "10.1.1.1, 10.2.2.2"]);
        assert_eq!(client_ip(ip("127.0.0.1"), &h, &trusted), ip("203.0.113.8"));
        // Ports and brackets, as some proxies write them.
        let h = xff(&["[2001:db8::1]:443, 198.51.100.1:80"]);
        assert_eq!(client_ip(ip("127.0.0.1"), &h, &trusted), ip("198.51.100.1"));
        let h = xff(&["[2001:db8::1]"]);
        assert_eq!(client_ip(ip("127.0.0.1"), &h, &trusted), ip("2001:db8::1"));
        // No header: the proxy itself is the client.
        assert_eq!(
            client_ip(ip("127.0.0.1"), &HeaderMap::new(), &trusted),
            ip("127.0.0.1")
        );
        // Only trusted hops: the leftmost.
        let h = xff(&["10.9.9.9, 10.1.1.1"]);
        assert_eq!(client_ip(ip("127.0.0.1"), &h, &trusted), ip("10.9.9.9"));
        // Garbage stops the walk at the last trusted hop before it.
        let h = xff(&["203.0.113.9, not-an-ip, 10.1.1.1"]);
        assert_eq!(client_ip(ip("127.0.0.1"), &h, &trusted), ip("10.1.1.1"));
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_slash_64() {
        let a = ip_key("2001:db8:1:2::1".parse().unwrap());
        let b = ip_key("2001:db8:1:2:ffff::9".parse().unwrap());
        let c = ip_key("2001:db8:1:3::1".parse().unwrap());
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(
            ip_key("::ffff:192.0.2.1".parse().unwrap()),
            ip_key("192.0.2.1".parse().unwrap())
        );
    }

    #[test]
    fn beyond_the_cap_new_keys_share_the_overflow_bucket_and_known_keys_keep_theirs() {
        let store = CappedStore::new(2);
        let quota = Quota::with_period(Duration::from_secs(3600)).unwrap();
        let limiter = Limiter::new(quota, store, MonotonicClock);
        assert!(limiter.check_key(&1).is_ok());
        assert!(limiter.check_key(&2).is_ok());
        // Full: key 3 gets the overflow bucket (its one request), key 4 shares it.
        assert!(limiter.check_key(&3).is_ok());
        assert!(limiter.check_key(&4).is_err(), "4 shares 3's bucket");
        assert!(limiter.check_key(&5).is_err(), "and so does 5");
        // Known keys still have their own (spent) buckets, not the overflow one.
        assert!(limiter.check_key(&1).is_err());
        assert_eq!(
            limiter.len(),
            3,
            "two keys and the overflow bucket, no more"
        );
        let store = CappedStore::new(2);
        assert!(store.map.is_empty());
        assert_eq!(store.resolve(7), 7);
    }

    fn config(by: RateLimitKey, policy: &str, limit: u32, per: Duration) -> RateLimitConfig {
        let limit = NonZeroU32::new(limit).unwrap();
        RateLimitConfig {
            by,
            limit,
            per,
            burst: limit,
            policy: policy.into(),
        }
    }

    fn request(subject: Option<&str>, peer: &str) -> Request<Body> {
        let mut r = Request::get("/x").body(Body::empty()).unwrap();
        r.extensions_mut()
            .insert(ConnectInfo(SocketAddr::new(peer.parse().unwrap(), 4000)));
        if let Some(subject) = subject {
            r.extensions_mut().insert(Identity::new(IdentityData {
                subject: subject.into(),
                roles: vec![],
                scopes: vec![],
                propagated: vec![(HeaderName::from_static("x-auth-tenant"), "t-1".into())],
                expires_at: 0,
            }));
        }
        r
    }

    #[tokio::test]
    async fn the_first_exceeded_limit_answers_429_and_the_handler_never_runs() {
        let metrics = Arc::new(Metrics::new());
        let limits = Arc::new(RouteLimits::new(
            "r",
            &[
                config(
                    RateLimitKey::Subject,
                    "subject",
                    2,
                    Duration::from_secs(3600),
                ),
                config(
                    RateLimitKey::Claim("x-auth-tenant".into()),
                    "claim:tenant",
                    3,
                    Duration::from_secs(3600),
                ),
            ],
            Arc::from(vec![]),
            metrics.clone(),
            1,
            MAX_KEYS_PER_LIMIT,
        ));
        let calls = Arc::new(AtomicUsize::new(0));
        let handler = {
            let calls = calls.clone();
            service_fn(move |_: Request<Body>| {
                calls.fetch_add(1, Ordering::SeqCst);
                async { Ok::<_, Infallible>(Response::new(Body::empty())) }
            })
        };
        let service = RateLimitLayer { limits }.layer(handler);
        let status = |r: &Response| r.status().as_u16();

        let first = service
            .clone()
            .oneshot(request(Some("a"), "10.0.0.1"))
            .await
            .unwrap();
        assert_eq!(status(&first), 200);
        assert_eq!(
            first.headers()[RATELIMIT_POLICY],
            "\"subject\";q=2;w=3600, \"claim:tenant\";q=3;w=3600"
        );
        assert_eq!(
            first.headers()[RATELIMIT],
            "\"subject\";r=1;t=1800, \"claim:tenant\";r=2;t=1200"
        );
        let second = service
            .clone()
            .oneshot(request(Some("a"), "10.0.0.1"))
            .await
            .unwrap();
        assert_eq!(status(&second), 200);
        let third = service
            .clone()
            .oneshot(request(Some("a"), "10.0.0.1"))
            .await
            .unwrap();
        assert_eq!(status(&third), 429);
        assert_eq!(third.headers()[RATELIMIT_POLICY], "\"subject\";q=2;w=3600");
        let retry: u64 = third.headers()[http::header::RETRY_AFTER]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=1800).contains(&retry), "{retry}");
        assert_eq!(
            third.headers()[RATELIMIT],
            format!("\"subject\";r=0;t={retry}").as_str()
        );
        assert_eq!(
            calls.load(Ordering::SeqCst),
            2,
            "the refused request ran nothing"
        );
        // Another subject of the same tenant: its own subject bucket, but the tenant's third
        // and last request; the fourth is refused by the tenant limit.
        let b = service
            .clone()
            .oneshot(request(Some("b"), "10.0.0.1"))
            .await
            .unwrap();
        assert_eq!(status(&b), 200);
        let b = service
            .clone()
            .oneshot(request(Some("b"), "10.0.0.1"))
            .await
            .unwrap();
        assert_eq!(status(&b), 429);
        assert_eq!(b.headers()[RATELIMIT_POLICY], "\"claim:tenant\";q=3;w=3600");
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        let text = metrics.render(
            crate::amqp::Readiness {
                ready_channels: 0,
                configured_channels: 0,
                blocked_channels: 0,
            },
            &[],
        );
        assert!(
            text.contains("gateway_rate_limited_total{route=\"r\"} 2"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn ip_limits_key_by_peer_and_sweeping_forgets_refilled_keys() {
        let limits = Arc::new(RouteLimits::new(
            "r",
            &[config(RateLimitKey::Ip, "ip", 1, Duration::from_millis(1))],
            Arc::from(vec![]),
            Arc::new(Metrics::new()),
            1,
            MAX_KEYS_PER_LIMIT,
        ));
        for peer in ["10.0.0.1", "10.0.0.2"] {
            assert!(limits.check(&request(None, peer)).is_ok(), "{peer}");
        }
        assert_eq!(limits.limits[0].limiter.len(), 2);
        // 1 ms per request: both buckets are full again well within this wait.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let all = RateLimits {
            routes: HashMap::from([("r".to_owned(), limits.clone())]),
        };
        all.sweep();
        assert_eq!(limits.limits[0].limiter.len(), 0);
    }
}
