//! The handler of upstream routes: GET/HEAD proxied to an upstream, through the shared cache on
//! routes that have one; unsafe methods relayed without it ([`relay`]). The read pipeline,
//! one owner per step:
//!
//! 1. request checks and 2. the upstream request, headers built once ([`outbound`]);
//! 3. cache lookup — keys, `Vary`, credentials ([`crate::cache`]);
//! 4. fetch / revalidate / coalesce ([`fetch`], sequenced here);
//! 5. store ([`crate::cache`] decides, [`Cached::keep`] applies);
//! 6. encode and 7. respond — conditionals, ranges, compression ([`respond`]).
//!
//! See `docs/architecture.md` for the flow chart.

mod fetch;
mod outbound;
mod relay;
mod respond;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use bytes::Bytes;
use http::header;
use http::{HeaderMap, Method, StatusCode};

use crate::cache::policy::{self, Rules, Scope, Timing};
use crate::cache::{
    Cache, CacheStatus, Entry, Flight, Found, Freshness, Generation, Keys, Meta, Sharing, etag, key,
};
use crate::config::{CacheConfig, ProxyTarget};
use crate::error::GatewayError;
use crate::proxy::{Upstream, response_headers};
use crate::state::AppState;
use fetch::{Buffered, Fetched, fetch};
use outbound::{Outbound, Target};
use respond::Responder;

/// Largest body given a generated ETag on routes without a cache.
const DEFAULT_BUFFER_BYTES: usize = 1024 * 1024;

/// A read route as the handler needs it.
#[derive(Debug)]
pub(crate) struct ReadRoute {
    /// Route name (logs, metrics).
    pub name: Arc<str>,
    /// What its cache keys start with: the name and a digest of the route's definition, so
    /// that after a reload that changed the route, entries stored under the old definition
    /// are never served (they age out), while an unchanged route keeps its entries.
    pub cache_scope: Arc<str>,
    /// Where and how to forward.
    pub target: ProxyTarget,
    /// The upstream, resolved at start-up.
    pub upstream: Arc<Upstream>,
    /// The name of the route's trailing `{*name}` parameter, if any.
    pub catch_all: Option<String>,
}

/// Handles one request on an upstream route.
pub(crate) async fn handle(
    state: AppState,
    route: Arc<ReadRoute>,
    request: Request,
) -> Result<Response, GatewayError> {
    if !matches!(*request.method(), Method::GET | Method::HEAD) {
        return relay::handle(&state, &route, request).await;
    }
    // A body on GET/HEAD is never forwarded (it would be an unkeyed cache input).
    let (mut parts, _body) = request.into_parts();
    let params = outbound::check(&route, &mut parts).await?;
    let cache = route.target.cache.as_ref().zip(state.cache.as_ref());
    let outbound = Outbound::new(&state, &route, &parts, cache.is_some());
    let target = Target {
        route: &route,
        params: params.as_ref(),
        uri: &parts.uri,
    };
    let responder = Responder::new(route.target.compress, state.compression, &parts);
    let Some((config, cache)) = cache else {
        return forward(&state, target, outbound, &responder, None).await;
    };
    // With the route, the request target determines the upstream's (the route's template
    // renders it from the path), so keying on it is keying on what the origin is asked for.
    let request_target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let cached = Cached {
        keys: Keys::new(&route.cache_scope, request_target, &outbound.headers),
        generation: cache.generation(parts.uri.path()),
        rules: rules(config),
        cache,
        state: &state,
        route: &route,
        target: Some(target),
        outbound,
    };
    let (status, answer) = cached.answer(&responder).await?;
    let response = match answer {
        Answer::PassThrough(mut outbound) => {
            outbound.pass_through(&parts);
            return forward(&state, target, *outbound, &responder, Some(status)).await;
        }
        Answer::Stored(entry) => responder.entry(cache, &entry, status).await,
        Answer::Upstream(code, headers, body) => {
            responder.upstream(code, headers, body, Some(status)).await
        }
    };
    state.metrics.cache(&route.name, status.label());
    Ok(response)
}

/// The route's freshness fallbacks.
fn rules(config: &CacheConfig) -> Rules {
    Rules {
        default_ttl: config.ttl,
        heuristic_max: config.heuristic.then_some(config.heuristic_max),
    }
}

/// No cache (or a request the cache passes through): forward as received, add a generated
/// ETag when possible, then answer.
async fn forward(
    state: &AppState,
    target: Target<'_>,
    outbound: Outbound,
    responder: &Responder<'_>,
    status: Option<CacheStatus>,
) -> Result<Response, GatewayError> {
    let route = target.route;
    let limit = state
        .cache
        .as_ref()
        .map_or(DEFAULT_BUFFER_BYTES, |c| c.max_object_bytes());
    let path_and_query = outbound.path_and_query(Some(target))?.clone();
    let method = outbound.method;
    // The request's own headers move into the exchange: nothing after it needs them.
    let fetched = fetch(
        state,
        &route.upstream,
        &method,
        &path_and_query,
        outbound.headers,
        limit,
    )
    .await?;
    let mut headers = response_headers(&fetched.parts.headers);
    if let Buffered::Complete(bytes) = &fetched.body {
        maybe_generate_etag(route, &method, fetched.parts.status, &mut headers, bytes);
    }
    if let Some(status) = status {
        state.metrics.cache(&route.name, status.label());
    }
    Ok(responder
        .upstream(
            fetched.parts.status,
            headers,
            fetched.body.into_body(),
            status,
        )
        .await)
}

/// Adds a strong ETag computed from the body to a complete 200 that has none (route `etag`).
/// Returns whether it did.
fn maybe_generate_etag(
    route: &ReadRoute,
    method: &Method,
    status: StatusCode,
    headers: &mut HeaderMap,
    body: &[u8],
) -> bool {
    let eligible = route.target.generate_etag
        && status == StatusCode::OK
        && method == Method::GET
        && !headers.contains_key(header::ETAG)
        && !headers.contains_key(header::CONTENT_ENCODING);
    if eligible {
        headers.insert(header::ETAG, etag::generate(body));
    }
    eligible
}

/// What the cache steps produce for the responder.
enum Answer {
    /// A stored entry.
    Stored(Arc<Entry>),
    /// An upstream (or revalidated) answer sent as it is: not storable, or stored without
    /// fields this requester may still see.
    Upstream(StatusCode, HeaderMap, Body),
    /// Not the cache's to answer (a range of an entry it does not hold): forward as received.
    PassThrough(Box<Outbound>),
}

/// One read on a cached route: everything the steps after the lookup need. The shared parts
/// are borrowed (a hit clones no `Arc`); a background refresh takes owned copies along.
struct Cached<'a> {
    state: &'a AppState,
    route: &'a Arc<ReadRoute>,
    cache: &'a Arc<Cache>,
    /// What the upstream path is rendered from (`None` in a background refresh, which gets a
    /// rendered request).
    target: Option<Target<'a>>,
    /// The upstream request of a cache fill (GET, unconditional, identity).
    outbound: Outbound,
    keys: Keys,
    /// The request path's invalidation generation before anything was fetched.
    generation: Generation,
    rules: Rules,
}

/// 5xx answers that `stale-if-error` may hide (RFC 5861 §4).
fn is_error(status: StatusCode) -> bool {
    matches!(status.as_u16(), 500 | 502 | 503 | 504)
}

impl Cached<'_> {
    /// Steps 3–5: lookup, then a hit, a revalidation, a background refresh or a coalesced
    /// fetch; the status says how the answer was produced.
    async fn answer(
        &self,
        responder: &Responder<'_>,
    ) -> Result<(CacheStatus, Answer), GatewayError> {
        let mut flight = None;
        let found = match self.cache.lookup(&self.keys, &self.outbound.headers) {
            Some(found) => Some(found),
            None if responder.wants_range() => {
                return Ok((
                    CacheStatus::Miss,
                    Answer::PassThrough(Box::new(self.outbound.clone())),
                ));
            }
            // Bypassed (coherence on, not subscribed): nothing is stored, so there is no fill
            // to wait for.
            None if !self.cache.serving() => {
                let fetched = self.fill(&HeaderMap::new()).await?;
                return Ok((CacheStatus::Bypass, self.keep(fetched)));
            }
            // Misses coalesce per partition the request may store into.
            None => match self.cache.join(self.base_of(true), self.timeout()).await {
                Flight::Leader(guard) => {
                    flight = Some(guard);
                    None
                }
                Flight::Waited => self.cache.lookup(&self.keys, &self.outbound.headers),
            },
        };
        let Some(found) = found else {
            let fetched = self.fill(&HeaderMap::new()).await?;
            let answer = self.keep(fetched);
            drop(flight);
            return Ok((CacheStatus::Miss, answer));
        };
        match found.entry.freshness() {
            Freshness::Fresh => Ok((CacheStatus::Hit, Answer::Stored(found.entry))),
            Freshness::StaleWhileRevalidate => {
                // RFC 5861 §3: answer now, refresh once in the background.
                if let Some(guard) = self.cache.try_lead(self.base(&found))
                    // Rendered now: the refresh runs after this request's parts are gone.
                    && self.outbound.path_and_query(self.target).is_ok()
                {
                    let state = self.state.clone();
                    let (route, cache) = (self.route.clone(), self.cache.clone());
                    let (outbound, keys) = (self.outbound.clone(), self.keys.clone());
                    let (generation, rules, stale) = (self.generation, self.rules, found.clone());
                    tokio::spawn(async move {
                        let _refreshing = guard;
                        let this = Cached {
                            state: &state,
                            route: &route,
                            cache: &cache,
                            target: None,
                            outbound,
                            keys,
                            generation,
                            rules,
                        };
                        let _ = this.revalidate(&stale).await;
                    });
                }
                Ok((CacheStatus::Stale, Answer::Stored(found.entry)))
            }
            Freshness::Stale => {
                // Concurrent requests for one stale entry make one revalidation.
                let _guard = match self.cache.join(self.base(&found), self.timeout()).await {
                    Flight::Leader(guard) => Some(guard),
                    Flight::Waited => {
                        if let Some(again) = self.cache.lookup(&self.keys, &self.outbound.headers)
                            && again.entry.freshness() == Freshness::Fresh
                        {
                            return Ok((CacheStatus::Hit, Answer::Stored(again.entry)));
                        }
                        None
                    }
                };
                self.revalidate(&found).await
            }
        }
    }

    /// Where `found` is stored.
    fn base(&self, found: &Found) -> &[u8] {
        self.base_of(found.private)
    }

    /// The base key of this request's private partition (with `private`, when it has one: a
    /// request with credentials), else of the shared one.
    fn base_of(&self, private: bool) -> &[u8] {
        match self.keys.private_base() {
            Some(base) if private => base,
            _ => self.keys.shared_base(),
        }
    }

    /// Fetches a complete copy for the cache: the cache-fill request, plus `conditional`
    /// validators when revalidating.
    async fn fill(&self, conditional: &HeaderMap) -> Result<Fetched, GatewayError> {
        let path_and_query = self.outbound.path_and_query(self.target)?;
        let mut headers = self.outbound.headers.clone();
        for (name, value) in conditional {
            headers.insert(name, value.clone());
        }
        fetch(
            self.state,
            &self.route.upstream,
            &self.outbound.method,
            path_and_query,
            headers,
            self.cache.max_object_bytes(),
        )
        .await
    }

    fn timeout(&self) -> std::time::Duration {
        self.route.upstream.timeout()
    }

    /// Revalidates a stale entry with its validators (RFC 9111 §4.3): a 304 refreshes it, an
    /// error may be answered with it (`stale-if-error`), anything else replaces it.
    async fn revalidate(&self, found: &Found) -> Result<(CacheStatus, Answer), GatewayError> {
        let entry = &found.entry;
        // An entry shared only through `must-revalidate` is confirmed by a 304 only to the
        // identity that stored it: another user's "not modified" (for a tag that is the same
        // for everybody) must not hand them the first user's body.
        let may_confirm = entry
            .meta
            .sharing
            .owner
            .is_none_or(|owner| self.keys.identity == Some(owner));
        let mut conditional = HeaderMap::new();
        if may_confirm {
            if let Some(tag) = entry
                .headers
                .get(header::ETAG)
                .filter(|_| !entry.meta.generated_etag)
            {
                conditional.insert(header::IF_NONE_MATCH, tag.clone());
            } else if let Some(modified) = entry.headers.get(header::LAST_MODIFIED) {
                conditional.insert(header::IF_MODIFIED_SINCE, modified.clone());
            }
        }
        let fetched = self.fill(&conditional).await;
        let fetched = match fetched {
            Err(e) if entry.usable_on_error() => {
                tracing::debug!(error = %e, "Upstream failed; serving a stale entry (stale-if-error).");
                return Ok((CacheStatus::Stale, Answer::Stored(entry.clone())));
            }
            Err(e) => return Err(e),
            Ok(fetched) => fetched,
        };
        if is_error(fetched.parts.status) && entry.usable_on_error() {
            return Ok((CacheStatus::Stale, Answer::Stored(entry.clone())));
        }
        if fetched.parts.status == StatusCode::NOT_MODIFIED && !conditional.is_empty() {
            return Ok((CacheStatus::Revalidated, self.refresh(found, &fetched)));
        }
        self.cache.remove(self.base(found), &self.outbound.headers);
        Ok((CacheStatus::Miss, self.keep(fetched)))
    }

    /// Applies a 304 to a stored entry (RFC 9111 §4.3.4: its header fields replace the stored
    /// ones), then stores the result where the updated response now belongs.
    fn refresh(&self, found: &Found, fetched: &Fetched) -> Answer {
        let entry = &found.entry;
        let mut headers = entry.headers.clone();
        let update = response_headers(&fetched.parts.headers);
        for name in update.keys() {
            // Fields describing the stored body stay the stored body's.
            if [
                header::CONTENT_LENGTH,
                header::CONTENT_ENCODING,
                header::CONTENT_TYPE,
                header::CONTENT_RANGE,
            ]
            .contains(name)
            {
                continue;
            }
            headers.remove(name);
            for value in update.get_all(name) {
                headers.append(name.clone(), value.clone());
            }
        }
        match self.decide(entry.status, &headers, &fetched.timing) {
            Some((private, meta)) => {
                if private != found.private {
                    self.cache.remove(self.base(found), &self.outbound.headers);
                }
                let meta = Meta {
                    generated_etag: entry.meta.generated_etag,
                    encodable: entry.meta.encodable,
                    ..meta
                };
                self.put(private, entry.status, headers, entry.body.clone(), meta)
            }
            None => {
                self.cache.remove(self.base(found), &self.outbound.headers);
                Answer::Upstream(entry.status, headers, Body::from(entry.body.clone()))
            }
        }
    }

    /// Stores a fetched response if the rules allow, and says what to send.
    fn keep(&self, fetched: Fetched) -> Answer {
        let Fetched {
            parts,
            body,
            timing,
        } = fetched;
        let status = parts.status;
        let mut headers = response_headers(&parts.headers);
        let bytes = match body {
            Buffered::Complete(bytes) => bytes,
            // Too large to store: stream it through.
            partial @ Buffered::Partial(..) => {
                return Answer::Upstream(status, headers, partial.into_body());
            }
        };
        let generated_etag =
            maybe_generate_etag(self.route, &Method::GET, status, &mut headers, &bytes);
        // A partial response is never a complete entry (RFC 9111 §3.4).
        let decided = if headers.contains_key(header::CONTENT_RANGE) {
            None
        } else {
            self.decide(status, &headers, &timing)
        };
        let Some((private, meta)) = decided else {
            return Answer::Upstream(status, headers, Body::from(bytes));
        };
        let meta = Meta {
            generated_etag,
            encodable: respond::encodable(status, &headers, &bytes),
            ..meta
        };
        self.put(private, status, headers, bytes, meta)
    }

    /// Stores a response in this caller's private (`true`) or the shared partition and says
    /// what to send: the entry, or — when the origin excluded fields from storage
    /// (`private="…"`, `no-cache="…"`) — the whole response, which this requester may see.
    fn put(
        &self,
        private: bool,
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
        meta: Meta,
    ) -> Answer {
        let full = (!meta.policy.drop_fields.is_empty()).then(|| headers.clone());
        let entry = self.cache.store(
            self.base_of(private),
            key::vary_names(&headers),
            &self.outbound.headers,
            Entry::new(status, headers, body.clone(), meta),
        );
        match full {
            Some(headers) => Answer::Upstream(status, headers, Body::from(body)),
            None => Answer::Stored(entry),
        }
    }

    /// The storage decision for a response to this request: whether it goes to this caller's
    /// private partition (else the shared one) and its metadata, or `None` when it must not be
    /// stored.
    fn decide(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        timing: &Timing,
    ) -> Option<(bool, Meta)> {
        let credentials = self.keys.identity.is_some();
        let decision = policy::storable(status, headers, credentials, &self.rules, timing)?;
        let private = match decision.scope {
            Scope::Shared => false,
            // Private scope needs credentials, so there is a private partition.
            Scope::Private => {
                self.keys.private_base()?;
                true
            }
        };
        // Whether a request with credentials may reuse it from the shared partition (RFC
        // 9111 §3.5), whoever stored it.
        let with_credentials = decision.scope == Scope::Shared
            && (credentials
                || policy::storable(status, headers, true, &self.rules, timing)
                    .is_some_and(|d| d.scope == Scope::Shared));
        let directives = policy::Directives::parse(headers);
        let owner = (decision.scope == Scope::Shared
            && !directives.public
            && directives.s_maxage.is_none())
        .then_some(self.keys.identity)
        .flatten();
        Some((
            private,
            Meta {
                policy: decision,
                response_time: timing.response_time,
                sharing: Sharing {
                    with_credentials,
                    owner,
                },
                generation: self.generation,
                encodable: false,
                generated_etag: false,
            },
        ))
    }
}
