//! The read handler: GET/HEAD proxied to an upstream, with ETag/304, the shared cache and
//! response compression.
//!
//! Order for one request: path checks → upstream path → cache lookup (fresh hit / stale
//! revalidation / coalesced miss) or a plain forward → generated ETag when the upstream has
//! none → `If-None-Match` → 304, or compression (stored per `Accept-Encoding` for cache
//! entries) with the ETag weakened for encoded bodies.

use std::borrow::Cow;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::OnceLock;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, FromRequestParts, RawPathParams, Request};
use axum::response::Response;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{HeaderMap, Method, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use tower::{Layer, ServiceExt};
use tower_http::compression::CompressionLayer;
use tower_http::compression::predicate::{DefaultPredicate, Predicate, SizeAbove};

use crate::auth::Identity;
use crate::cache::{self, Cache, Encoded, Entry, Flight, X_CACHE, age_value, etag, policy};
use crate::config::{CompressPolicy, ProxyTarget};
use crate::error::GatewayError;
use crate::proxy::{
    ForwardContext, Upstream, UpstreamError, response_headers, upstream_request_headers,
};
use crate::routes::encode;
use crate::state::AppState;

/// Characters kept as-is when a path parameter is put into an upstream path segment.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Bodies smaller than this are sent as they are: the coding overhead and CPU outweigh the
/// saving (nginx's `gzip_min_length` reasoning; a ~256-byte JSON rarely shrinks much).
const MIN_COMPRESS_BYTES: u64 = 256;

/// A read route as the handler needs it.
#[derive(Debug)]
pub struct ReadRoute {
    /// Route name (cache keys, logs).
    pub name: Arc<str>,
    /// Where and how to forward.
    pub target: ProxyTarget,
    /// The upstream, resolved at start-up.
    pub upstream: Arc<Upstream>,
    /// The name of the route's trailing `{*name}` parameter, if any.
    pub catch_all: Option<String>,
}

/// What one request carries into the helpers below.
struct Call<'a> {
    state: &'a AppState,
    route: &'a ReadRoute,
    parts: &'a Parts,
    /// The route's path parameters, when its upstream path is a template.
    params: Option<RawPathParams>,
    /// The upstream path and query, rendered on first use: a cache hit never needs it.
    path_and_query: OnceLock<PathAndQuery>,
    peer: Option<IpAddr>,
    /// Compress the response if the client accepts it.
    compress: bool,
    /// The verified caller, on routes that require a token.
    identity: Option<Identity>,
}

/// Handles one read request.
pub async fn handle(
    state: AppState,
    route: Arc<ReadRoute>,
    request: Request,
) -> Result<Response, GatewayError> {
    // A body on GET/HEAD is never forwarded (it would be an unkeyed cache input).
    let (mut parts, _body) = request.into_parts();
    check_path(parts.uri.path())?;
    let params = match route.target.upstream_path {
        None => None,
        Some(_) => Some(
            RawPathParams::from_request_parts(&mut parts, &())
                .await
                .map_err(|_| {
                    GatewayError::BadRequest("path parameters must be valid UTF-8".into())
                })?,
        ),
    };
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let has_credentials = parts.headers.contains_key(header::AUTHORIZATION);
    let compress = match route.target.compress {
        CompressPolicy::Always => true,
        CompressPolicy::Never => false,
        // BREACH: no compression of responses to authenticated requests by default.
        CompressPolicy::Auto => !has_credentials,
    };
    let identity = parts.extensions.get::<Identity>().cloned();
    let call = Call {
        identity,
        state: &state,
        route: &route,
        parts: &parts,
        params,
        path_and_query: OnceLock::new(),
        peer,
        compress,
    };
    match (&route.target.cache, &state.cache) {
        (Some(cfg), Some(cache)) => call.cached(cache, cfg.ttl).await,
        _ => call.uncached().await,
    }
}

/// Rejects paths whose meaning a backend could change by normalising them: dot segments
/// (plain or percent-encoded) would let `/public/../admin` match a public route and reach
/// `/admin` upstream.
fn check_path(path: &str) -> Result<(), GatewayError> {
    // Without a `.` or a `%` there is no dot segment, plain or encoded: skip the allocations
    // below for the usual path.
    if !path.bytes().any(|b| b == b'.' || b == b'%') {
        return Ok(());
    }
    let lower = path.to_ascii_lowercase();
    let decoded = lower.replace("%2e", ".");
    let dot_segment = decoded.split('/').any(|seg| seg == "." || seg == "..");
    if dot_segment || lower.contains("%2f") && decoded.contains("..") {
        return Err(GatewayError::BadRequest(
            "the path must not contain `.` or `..` segments".into(),
        ));
    }
    Ok(())
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

/// A body read up to a limit.
enum Buffered {
    /// The whole body.
    Complete(Bytes),
    /// Over the limit: what was read, and the rest still to stream.
    Partial(Vec<Bytes>, Incoming),
}

/// Reads `body` up to `limit` bytes. A body that fails midway (reset, truncated) is an error:
/// it is never served as complete, nor stored.
async fn buffer(mut body: Incoming, limit: usize) -> Result<Buffered, GatewayError> {
    let mut chunks = Vec::new();
    let mut len = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| GatewayError::BadGateway)?;
        if let Ok(data) = frame.into_data() {
            len += data.len();
            chunks.push(data);
            if len > limit {
                return Ok(Buffered::Partial(chunks, body));
            }
        }
    }
    Ok(Buffered::Complete(match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.swap_remove(0),
        _ => {
            let mut all = Vec::with_capacity(len);
            for c in &chunks {
                all.extend_from_slice(c);
            }
            Bytes::from(all)
        }
    }))
}

fn partial_body(prefix: Vec<Bytes>, rest: Incoming) -> Body {
    let head = futures_util::stream::iter(prefix.into_iter().map(Ok::<_, axum::Error>));
    let tail = rest.into_data_stream().map_err(axum::Error::new);
    use futures_util::{StreamExt, TryStreamExt};
    Body::from_stream(head.chain(tail.map_err(axum::Error::new)))
}

impl Call<'_> {
    fn forward_context(&self, for_cache: bool) -> ForwardContext<'_> {
        ForwardContext {
            peer: self.peer,
            trusted_proxies: &self.state.trusted_proxies,
            forward_authorization: self.route.target.forward_authorization,
            strip_conditionals: for_cache,
            identity_only: for_cache,
        }
    }

    /// Sends `method` upstream with `extra` headers, within the upstream timeout, and reads the
    /// body up to `limit` within the same deadline.
    async fn fetch(
        &self,
        method: &Method,
        for_cache: bool,
        extra: &HeaderMap,
        limit: usize,
    ) -> Result<(http::response::Parts, Buffered), GatewayError> {
        let mut headers =
            upstream_request_headers(&self.parts.headers, &self.forward_context(for_cache));
        // Client copies of X-Auth-* were dropped above; these come from the verified token.
        if let Some(identity) = &self.identity {
            for (name, value) in identity.headers() {
                if let (Ok(name), Ok(value)) = (
                    header::HeaderName::from_bytes(name.as_bytes()),
                    HeaderValue::from_str(value),
                ) {
                    headers.insert(name, value);
                }
            }
        }
        for (k, v) in extra {
            headers.insert(k, v.clone());
        }
        let path_and_query = match self.path_and_query.get() {
            Some(pq) => pq,
            None => {
                let pq =
                    upstream_path_and_query(self.route, self.params.as_ref(), &self.parts.uri)?;
                self.path_and_query.get_or_init(|| pq)
            }
        };
        let upstream = &self.route.upstream;
        let exchange = async {
            let response = upstream
                .send(method, path_and_query, headers)
                .await
                .map_err(|e| match e {
                    UpstreamError::Unreachable | UpstreamError::Failed => GatewayError::BadGateway,
                })?;
            let (parts, body) = response.into_parts();
            let body = buffer(body, limit).await?;
            Ok::<_, GatewayError>((parts, body))
        };
        let result = tokio::time::timeout(upstream.timeout(), exchange)
            .await
            .map_err(|_| GatewayError::UpstreamTimeout)
            .and_then(|r| r);
        let outcome = match &result {
            Ok(_) => "ok",
            Err(GatewayError::UpstreamTimeout) => "timeout",
            Err(_) => "failed",
        };
        self.state.metrics.upstream(upstream.name(), outcome);
        result
    }

    /// No cache: forward as received, add a generated ETag when possible, then finish.
    async fn uncached(&self) -> Result<Response, GatewayError> {
        let limit = self
            .state
            .cache
            .as_ref()
            .map_or(1024 * 1024, |c| c.max_object_bytes());
        let (parts, body) = self
            .fetch(&self.parts.method, false, &HeaderMap::new(), limit)
            .await?;
        let mut headers = response_headers(&parts.headers);
        let body = match body {
            Buffered::Complete(bytes) => {
                self.maybe_generate_etag(parts.status, &mut headers, &bytes);
                bytes.into()
            }
            Buffered::Partial(prefix, rest) => partial_body(prefix, rest),
        };
        let response = build(parts.status, headers, body);
        Ok(self.finish(response, None).await)
    }

    fn maybe_generate_etag(&self, status: StatusCode, headers: &mut HeaderMap, body: &[u8]) {
        let eligible = self.route.target.generate_etag
            && status == StatusCode::OK
            && self.parts.method == Method::GET
            && !headers.contains_key(header::ETAG)
            && !headers.contains_key(header::CONTENT_ENCODING);
        if eligible {
            headers.insert(header::ETAG, etag::generate(body));
        }
    }

    /// The cache key base for this request (route + path + query): shared, or the
    /// subject's own.
    fn base_key(&self, subject: Option<&str>) -> String {
        let target = self
            .parts
            .uri
            .path_and_query()
            .map_or("/", |pq| pq.as_str());
        match subject {
            // Concatenation, not `format!`: this runs on every cache lookup.
            None => ["s\0", &self.route.name, "\0", target].concat(),
            Some(sub) => ["u\0", sub, "\0", &self.route.name, "\0", target].concat(),
        }
    }

    fn path(&self) -> &str {
        self.parts.uri.path()
    }

    /// The subject private entries are keyed by, when the request is authenticated: the
    /// verified token's `sub`, or, on a public route that forwards credentials, a hash of them.
    fn subject(&self) -> Option<String> {
        if let Some(identity) = &self.identity {
            return Some(identity.subject.clone());
        }
        if self.route.target.forward_authorization {
            return self
                .parts
                .headers
                .get(header::AUTHORIZATION)
                .map(|v| format!("{:032x}", xxhash_rust::xxh3::xxh3_128(v.as_bytes())));
        }
        None
    }

    async fn cached(&self, cache: &Cache, ttl: Duration) -> Result<Response, GatewayError> {
        let subject = self.subject();
        let shared = self.base_key(None);
        let private = subject.as_deref().map(|s| self.base_key(Some(s)));
        let lookup = || {
            cache
                .lookup(&shared, self.path(), &self.parts.headers)
                .map(|e| (shared.as_str(), e))
                .or_else(|| {
                    private.as_deref().and_then(|p| {
                        cache
                            .lookup(p, self.path(), &self.parts.headers)
                            .map(|e| (p, e))
                    })
                })
        };
        let mut flight = None;
        let found = match lookup() {
            Some(hit) => Some(hit),
            None => {
                let key = private.as_deref().unwrap_or(&shared);
                match cache.join(key, self.route.upstream.timeout()).await {
                    Flight::Leader(guard) => {
                        flight = Some(guard);
                        None
                    }
                    Flight::Waited => lookup(),
                }
            }
        };
        match found {
            Some((_, entry)) if entry.is_fresh() => Ok(self.serve(cache, entry, "HIT").await),
            Some((base, entry)) => {
                self.revalidate(cache, base, entry, subject.as_deref(), ttl)
                    .await
            }
            None => {
                let result = self.miss(cache, subject.as_deref(), ttl).await;
                drop(flight);
                result
            }
        }
    }

    /// Fetches a full copy (GET, identity), stores it if allowed, and serves it.
    async fn miss(
        &self,
        cache: &Cache,
        subject: Option<&str>,
        ttl: Duration,
    ) -> Result<Response, GatewayError> {
        let (parts, body) = self
            .fetch(
                &Method::GET,
                true,
                &HeaderMap::new(),
                cache.max_object_bytes(),
            )
            .await?;
        self.store_fetched(cache, subject, ttl, parts, body).await
    }

    /// Revalidates a stale entry with its validators: 304 refreshes it, anything else replaces
    /// or drops it.
    async fn revalidate(
        &self,
        cache: &Cache,
        base: &str,
        entry: Arc<Entry>,
        subject: Option<&str>,
        ttl: Duration,
    ) -> Result<Response, GatewayError> {
        let mut conditional = HeaderMap::new();
        if let Some(tag) = entry.headers.get(header::ETAG) {
            conditional.insert(header::IF_NONE_MATCH, tag.clone());
        } else if let Some(lm) = entry.headers.get(header::LAST_MODIFIED) {
            conditional.insert(header::IF_MODIFIED_SINCE, lm.clone());
        } else {
            return self.miss(cache, subject, ttl).await;
        }
        let (parts, body) = self
            .fetch(&Method::GET, true, &conditional, cache.max_object_bytes())
            .await?;
        if parts.status != StatusCode::NOT_MODIFIED {
            cache.remove(base, &self.parts.headers);
            // The upstream answered in full; store/serve that answer rather than fetch again.
            return self.store_fetched(cache, subject, ttl, parts, body).await;
        }
        // RFC 9111 §4.3.4: update the stored headers with those of the 304.
        let mut headers = entry.headers.clone();
        for (name, value) in response_headers(&parts.headers).iter() {
            if name != header::CONTENT_LENGTH {
                headers.insert(name, value.clone());
            }
        }
        let decision = policy::storable(entry.status, &headers, subject.is_some(), ttl);
        let fresh_for = decision.map_or(Duration::ZERO, |d| d.fresh_for);
        let vary = cache::vary_names(&headers, !headers.contains_key(header::CONTENT_ENCODING));
        let refreshed = cache.store(
            base,
            self.path(),
            vary,
            &self.parts.headers,
            Entry::new(entry.status, headers, entry.body.clone(), fresh_for),
        );
        Ok(self.serve(cache, refreshed, "REVALIDATED").await)
    }

    async fn store_fetched(
        &self,
        cache: &Cache,
        subject: Option<&str>,
        ttl: Duration,
        parts: http::response::Parts,
        body: Buffered,
    ) -> Result<Response, GatewayError> {
        let mut headers = response_headers(&parts.headers);
        let bytes = match body {
            Buffered::Complete(bytes) => bytes,
            Buffered::Partial(prefix, rest) => {
                // Too large to store: stream it through.
                let response = build(parts.status, headers, partial_body(prefix, rest));
                return Ok(self.finish(response, Some("MISS")).await);
            }
        };
        self.maybe_generate_etag(parts.status, &mut headers, &bytes);
        match policy::storable(parts.status, &headers, subject.is_some(), ttl) {
            Some(decision) => {
                let base = match decision.scope {
                    policy::Scope::Shared => self.base_key(None),
                    policy::Scope::Subject => self.base_key(subject),
                };
                let vary =
                    cache::vary_names(&headers, !headers.contains_key(header::CONTENT_ENCODING));
                let entry = cache.store(
                    &base,
                    self.path(),
                    vary,
                    &self.parts.headers,
                    Entry::new(parts.status, headers, bytes, decision.fresh_for),
                );
                Ok(self.serve(cache, entry, "MISS").await)
            }
            None => {
                let response = build(parts.status, headers, Body::from(bytes));
                Ok(self.finish(response, Some("MISS")).await)
            }
        }
    }

    /// Serves a stored entry: 304 if the client's validator matches, else the body in the
    /// stored encoding for this `Accept-Encoding` (encoding it once if needed).
    async fn serve(&self, cache: &Cache, entry: Arc<Entry>, how: &'static str) -> Response {
        self.record_cache(how);
        let age = age_value(entry.age_secs());
        if self.validator_matches(entry.status, &entry.headers) {
            // Built from the entry's prebuilt 304 block: same fields and order as
            // [`Call::not_modified`] produces from the stored headers.
            let weak = entry.headers.contains_key(header::ETAG) && self.encodes(&entry.headers);
            let headers = entry.not_modified(age, how, self.compress, weak);
            return build(StatusCode::NOT_MODIFIED, headers, Body::empty());
        }
        let accept = self.parts.headers.get(header::ACCEPT_ENCODING);
        let Some(accept) = accept
            .filter(|_| self.compress && !entry.headers.contains_key(header::CONTENT_ENCODING))
        else {
            // No Accept-Encoding: on a compressing route still tell caches the representation
            // varies on it.
            let headers = entry.served(age, how, self.compress);
            return build(entry.status, headers, entry.body.clone());
        };
        // An `Accept-Encoding` that selects no coding is never stored as a variant: no lookup.
        if !encode::picks_identity(accept)
            && let Some(stored) = cache.encoded(&entry, accept.as_bytes())
        {
            return build(entry.status, stored.served(age, how), stored.body.clone());
        }
        let plain = build(entry.status, entry.headers.clone(), entry.body.clone());
        let encoded = compress(accept, plain).await;
        let (mut parts, body) = encoded.into_parts();
        if !parts.headers.contains_key(header::CONTENT_ENCODING) {
            parts.headers.insert(header::AGE, age);
            parts.headers.insert(X_CACHE, HeaderValue::from_static(how));
            return Response::from_parts(parts, body);
        }
        let Ok(collected) = body.collect().await else {
            return error_response(GatewayError::Internal);
        };
        let bytes = collected.to_bytes();
        let stored = Arc::new(Encoded::new(&parts.headers, bytes.clone()));
        cache.put_encoded(&entry, accept.as_bytes(), stored.clone());
        build(entry.status, stored.served(age, how), bytes)
    }

    /// A 304 for a 200 whose ETag the client already has (weak comparison), carrying the
    /// headers RFC 9110 §15.4.5 lists.
    fn not_modified(&self, status: StatusCode, headers: &HeaderMap) -> Option<Response> {
        if !self.validator_matches(status, headers) {
            return None;
        }
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        // Sized for the usual fields, so that building the map never grows it.
        let out = response.headers_mut();
        out.reserve(10);
        for name in cache::NOT_MODIFIED_FIELDS {
            for v in headers.get_all(&name) {
                out.append(name.clone(), v.clone());
            }
        }
        for name in [header::AGE, X_CACHE] {
            for v in headers.get_all(&name) {
                out.append(name.clone(), v.clone());
            }
        }
        if let Some(tag) = headers.get(header::ETAG) {
            // The 200 this stands for would be compressed (and weakly tagged) when the client
            // accepts an encoding; keep the tag the client would have seen.
            out.insert(
                header::ETAG,
                if self.encodes(headers) {
                    etag::weaken(tag)
                } else {
                    tag.clone()
                },
            );
        }
        if self.compress {
            append_vary_accept_encoding(out);
        }
        Some(response)
    }

    /// A 200 with `headers` is answered 304: the client's `If-None-Match` matches its ETag
    /// (weak comparison).
    fn validator_matches(&self, status: StatusCode, headers: &HeaderMap) -> bool {
        let inm = self.parts.headers.get_all(header::IF_NONE_MATCH);
        status == StatusCode::OK
            && inm.iter().next().is_some()
            && etag::none_match_matches(inm.iter(), headers.get(header::ETAG))
    }

    /// The 200 with `headers` would go out encoded for this client (which weakens its ETag).
    fn encodes(&self, headers: &HeaderMap) -> bool {
        self.compress
            && !headers.contains_key(header::CONTENT_ENCODING)
            && self
                .parts
                .headers
                .get(header::ACCEPT_ENCODING)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| ["gzip", "br", "zstd"].iter().any(|e| v.contains(e)))
    }

    fn record_cache(&self, how: &'static str) {
        let result = match how {
            "HIT" => "hit",
            "REVALIDATED" => "revalidated",
            _ => "miss",
        };
        self.state.metrics.cache(&self.route.name, result);
    }

    /// Final steps for a response not served from the cache: 304 or compression.
    async fn finish(&self, mut response: Response, how: Option<&'static str>) -> Response {
        if let Some(how) = how {
            self.record_cache(how);
            response
                .headers_mut()
                .insert(X_CACHE, HeaderValue::from_static(how));
        }
        if let Some(not_modified) = self.not_modified(response.status(), response.headers()) {
            return not_modified;
        }
        match self.parts.headers.get(header::ACCEPT_ENCODING) {
            Some(accept) if self.compress => compress(accept, response).await,
            _ => {
                if self.compress {
                    append_vary_accept_encoding(response.headers_mut());
                }
                response
            }
        }
    }
}

/// A response from its parts.
fn build(status: StatusCode, headers: HeaderMap, body: impl Into<Body>) -> Response {
    let mut response = Response::new(body.into());
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

fn append_vary_accept_encoding(headers: &mut HeaderMap) {
    cache::append_vary_accept_encoding(headers);
}

fn error_response(e: GatewayError) -> Response {
    axum::response::IntoResponse::into_response(e)
}

/// Runs one response through tower-http's compression for this `Accept-Encoding` (its
/// negotiation, q-values and compressible-type predicate), weakening the ETag when it encodes.
/// Complete bodies that tower-http would gzip or zstd-encode are encoded by [`encode`] instead,
/// with a reused encoder (same negotiation, predicate, headers and level; no per-response
/// encoder state).
async fn compress(accept_encoding: &HeaderValue, response: Response) -> Response {
    let predicate = DefaultPredicate::new().and(SizeAbove::new(MIN_COMPRESS_BYTES));
    let response = match encode_complete(accept_encoding, predicate.clone(), response).await {
        Ok(gzipped) => return weaken_etag_if_encoded(gzipped),
        Err(response) => response,
    };
    let mut request = http::Request::new(());
    request
        .headers_mut()
        .insert(header::ACCEPT_ENCODING, accept_encoding.clone());
    let mut slot = Some(response);
    let service = CompressionLayer::new()
        .compress_when(predicate)
        .layer(tower::service_fn(move |_: http::Request<()>| {
            let response = slot.take().unwrap_or_default();
            async move { Ok::<_, Infallible>(response) }
        }));
    let Ok(response) = service.oneshot(request).await;
    let (parts, body) = response.into_parts();
    weaken_etag_if_encoded(Response::from_parts(parts, Body::new(body)))
}

/// `Vary: accept-encoding` unless a `Vary` value mentions it (tower-http's test).
fn append_vary_if_absent(headers: &mut HeaderMap) {
    let varies = headers.get_all(header::VARY).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.to_ascii_lowercase().contains("accept-encoding"))
    });
    if !varies {
        headers.append(header::VARY, HeaderValue::from_static("accept-encoding"));
    }
}

fn weaken_etag_if_encoded(mut response: Response) -> Response {
    let headers = response.headers_mut();
    if headers.contains_key(header::CONTENT_ENCODING)
        && let Some(tag) = headers.get(header::ETAG)
    {
        let weak = etag::weaken(tag);
        headers.insert(header::ETAG, weak);
    }
    response
}

/// One of [`encode`]'s encoders for a complete body.
type Encoder = fn(&[u8]) -> Option<Bytes>;

/// The fast paths of [`compress`]: no coding when tower-http would pick none, gzip or zstd for
/// a complete body when tower-http would pick that coding. Hands the response back untouched
/// (`Err`) when none applies.
async fn encode_complete(
    accept_encoding: &HeaderValue,
    predicate: impl Predicate,
    response: Response,
) -> Result<Response, Response> {
    use hyper::body::Body as _;
    let compressible = !response.headers().contains_key(header::CONTENT_ENCODING)
        && !response.headers().contains_key(header::CONTENT_RANGE)
        && predicate.should_compress(&response);
    if encode::picks_identity(accept_encoding) {
        // tower-http would pass the body through, adding only `Vary` when compressible.
        let mut response = response;
        if compressible {
            append_vary_if_absent(response.headers_mut());
        }
        return Ok(response);
    }
    let coding: (&'static str, Encoder) = if encode::picks_zstd(accept_encoding) {
        ("zstd", encode::zstd)
    } else if encode::picks_gzip(accept_encoding) {
        ("gzip", encode::gzip)
    } else {
        return Err(response);
    };
    let applies = compressible && response.body().size_hint().exact().is_some();
    if !applies {
        return Err(response);
    }
    let (name, encoder) = coding;
    let (mut parts, body) = response.into_parts();
    // Only buffered bodies have an exact size here (streamed, over-limit ones do not), so
    // this does not wait on the network.
    let Ok(collected) = body.collect().await else {
        return Ok(error_response(GatewayError::Internal));
    };
    let bytes = collected.to_bytes();
    let Some(encoded) = encoder(&bytes) else {
        return Err(Response::from_parts(parts, Body::from(bytes)));
    };
    // The header changes tower-http makes when it encodes.
    append_vary_if_absent(&mut parts.headers);
    parts.headers.remove(header::ACCEPT_RANGES);
    parts.headers.remove(header::CONTENT_LENGTH);
    parts
        .headers
        .insert(header::CONTENT_ENCODING, HeaderValue::from_static(name));
    Ok(Response::from_parts(parts, Body::from(encoded)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_segments_are_rejected() {
        for bad in [
            "/a/../b",
            "/a/./b",
            "/a/%2e%2E/b",
            "/a/%2E/b",
            "/..",
            "/a/..",
        ] {
            assert!(check_path(bad).is_err(), "{bad}");
        }
        for ok in ["/a/b", "/a/..b/c", "/a/b.json", "/.well-known/x"] {
            assert!(check_path(ok).is_ok(), "{ok}");
        }
    }

    #[tokio::test]
    async fn compression_weakens_the_etag_and_respects_accept_encoding() {
        let body = "x".repeat(2000);
        let make = || {
            let mut r = Response::new(Body::from(body.clone()));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r.headers_mut()
                .insert(header::ETAG, HeaderValue::from_static("\"t\""));
            r
        };
        let gz = compress(&HeaderValue::from_static("gzip"), make()).await;
        assert_eq!(gz.headers()[header::CONTENT_ENCODING], "gzip");
        assert_eq!(gz.headers()[header::ETAG], "W/\"t\"");
        assert_eq!(gz.headers()[header::VARY], "accept-encoding");
        let zs = compress(&HeaderValue::from_static("gzip, deflate, br, zstd"), make()).await;
        assert_eq!(zs.headers()[header::CONTENT_ENCODING], "zstd");
        assert_eq!(zs.headers()[header::ETAG], "W/\"t\"");
        assert!(!zs.headers().contains_key(header::CONTENT_LENGTH));
        let id = compress(&HeaderValue::from_static("identity"), make()).await;
        assert!(!id.headers().contains_key(header::CONTENT_ENCODING));
        assert_eq!(id.headers()[header::ETAG], "\"t\"");
    }
}
