//! Steps 6–7 of a read: what the client gets. Its conditionals (`If-None-Match`,
//! `If-Modified-Since`) become a 304, its `Range` a 206 from a complete stored entry, and the
//! body is encoded for its `Accept-Encoding` (stored encodings reused), with the ETag weakened
//! exactly when the body is encoded — so a 304 carries the tag its 200 would have carried.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{HeaderMap, Method, StatusCode};
use http_body_util::BodyExt;
use tower::{Layer, ServiceExt};
use tower_http::compression::CompressionLayer;
use tower_http::compression::predicate::{DefaultPredicate, Predicate, SizeAbove};

use crate::cache::entry::{NOT_MODIFIED_FIELDS, append_vary_accept_encoding};
use crate::cache::{Cache, CacheStatus, Encoded, Entry, X_CACHE, etag, policy};
use crate::config::{CompressPolicy, CompressionLevel, CompressionSettings};
use crate::error::GatewayError;
use crate::routes::encode;

/// Bodies smaller than this are sent as they are: the coding overhead and CPU outweigh the
/// saving (nginx's `gzip_min_length` reasoning; a ~256-byte JSON rarely shrinks much).
const MIN_COMPRESS_BYTES: u64 = 256;

/// tower-http's compressible-type rules plus our size floor.
fn predicate() -> impl Predicate {
    DefaultPredicate::new().and(SizeAbove::new(MIN_COMPRESS_BYTES))
}

/// Whether the gateway would encode this response for a client accepting a coding: no
/// coding yet, a compressible type, large enough.
pub(super) fn encodable(status: StatusCode, headers: &HeaderMap, body: &Bytes) -> bool {
    if headers.contains_key(header::CONTENT_ENCODING) || headers.contains_key(header::CONTENT_RANGE)
    {
        return false;
    }
    let response = build(status, headers.clone(), body.clone());
    predicate().should_compress(&response)
}

/// Answers one client from a stored entry or an upstream response.
pub(super) struct Responder<'a> {
    request: &'a Parts,
    /// Compress for this client when it accepts a coding.
    compress: bool,
    /// How hard: `dynamic` for upstream responses, `cached` for stored variants.
    levels: CompressionSettings,
}

impl<'a> Responder<'a> {
    /// The responder for `request` on a route with this compression policy.
    pub(super) fn new(
        policy: CompressPolicy,
        levels: CompressionSettings,
        request: &'a Parts,
    ) -> Self {
        // BREACH: a response to a request with credentials may reflect input next to secrets;
        // `Cookie` counts as `Authorization` does.
        let credentials = request.headers.contains_key(header::AUTHORIZATION)
            || request.headers.contains_key(header::COOKIE);
        let compress = match policy {
            CompressPolicy::Always => true,
            CompressPolicy::Never => false,
            CompressPolicy::Auto => !credentials,
        };
        Self {
            request,
            compress,
            levels,
        }
    }

    /// Whether the client sent a `Range`.
    pub(super) fn wants_range(&self) -> bool {
        self.request.headers.contains_key(header::RANGE)
    }

    /// A 200 of an `encodable` body goes out encoded for this client (and so with a weak
    /// ETag).
    fn encodes(&self, encodable: bool) -> bool {
        self.compress
            && encodable
            && self
                .request
                .headers
                .get(header::ACCEPT_ENCODING)
                .is_some_and(encode::accepts_coding)
    }

    /// Whether the client's conditionals say its copy of a 200 with `headers` is current
    /// (RFC 9110 §13.2.2: `If-None-Match` first, weak comparison; `If-Modified-Since` only
    /// without it).
    fn not_modified(&self, status: StatusCode, headers: &HeaderMap) -> bool {
        let method = &self.request.method;
        if status != StatusCode::OK || !(method == Method::GET || method == Method::HEAD) {
            return false;
        }
        let inm = self.request.headers.get_all(header::IF_NONE_MATCH);
        if inm.iter().next().is_some() {
            return etag::none_match_matches(inm.iter(), headers.get(header::ETAG));
        }
        let date = |map: &HeaderMap, name| map.get(name).and_then(policy::http_date);
        match (
            date(&self.request.headers, header::IF_MODIFIED_SINCE),
            date(headers, header::LAST_MODIFIED),
        ) {
            (Some(since), Some(modified)) => modified <= since,
            _ => false,
        }
    }

    /// Serves a stored entry as `status`: 304 if the client's copy is current, 206/416 for a
    /// range, else the body in the stored encoding for this `Accept-Encoding` (encoding it once
    /// if needed).
    pub(super) async fn entry(
        &self,
        cache: &Cache,
        entry: &Arc<Entry>,
        status: CacheStatus,
    ) -> Response {
        if self.not_modified(entry.status, &entry.headers) {
            let headers =
                entry.not_modified(status, self.compress, self.encodes(entry.meta.encodable));
            return build(StatusCode::NOT_MODIFIED, headers, Body::empty());
        }
        if let Some(partial) = self.range(entry, status) {
            return partial;
        }
        let accept = self.request.headers.get(header::ACCEPT_ENCODING);
        let Some(accept) = accept.filter(|_| self.compress && entry.meta.encodable) else {
            // No coding: on a compressing route still tell caches the representation varies
            // on `Accept-Encoding`.
            let headers = entry.served(status, self.compress);
            return build(entry.status, headers, entry.body.clone());
        };
        // An `Accept-Encoding` that selects no coding is never stored as a variant: no lookup.
        if !encode::picks_identity(accept)
            && let Some(stored) = cache.encoded(entry, accept.as_bytes())
        {
            return build(
                entry.status,
                stored.served(entry, status),
                stored.body.clone(),
            );
        }
        let plain = build(entry.status, entry.headers.clone(), entry.body.clone());
        // Stored and served many times: encoded once, at the cached level.
        let encoded = compress(accept, plain, self.levels.cached).await;
        let (mut parts, body) = encoded.into_parts();
        if !parts.headers.contains_key(header::CONTENT_ENCODING) {
            parts.headers.insert(header::AGE, entry_age(entry));
            parts.headers.insert(X_CACHE, status.header_value());
            return Response::from_parts(parts, body);
        }
        let Ok(collected) = body.collect().await else {
            return error_response(GatewayError::Internal);
        };
        let bytes = collected.to_bytes();
        let stored = Arc::new(Encoded::new(&parts.headers, bytes.clone()));
        cache.put_encoded(entry, accept.as_bytes(), stored.clone());
        build(entry.status, stored.served(entry, status), bytes)
    }

    /// A single byte range of a complete stored 200 (RFC 9110 §14): 206, or 416 when it
    /// cannot be satisfied. `None` serves the whole entry: no `Range`, not a GET, an
    /// `If-Range` that does not match, several ranges or a malformed one.
    fn range(&self, entry: &Entry, status: CacheStatus) -> Option<Response> {
        let range = self.request.headers.get(header::RANGE)?;
        if self.request.method != Method::GET || entry.status != StatusCode::OK {
            return None;
        }
        if let Some(if_range) = self.request.headers.get(header::IF_RANGE)
            && !if_range_matches(if_range, &entry.headers)
        {
            return None;
        }
        let len = entry.body.len() as u64;
        let mut headers = entry.served(status, false);
        headers.remove(header::CONTENT_LENGTH);
        match byte_range(range.as_bytes(), len)? {
            Some((first, last)) => {
                let content_range = format!("bytes {first}-{last}/{len}");
                headers.insert(
                    header::CONTENT_RANGE,
                    HeaderValue::try_from(content_range).ok()?,
                );
                let (start, end) = (usize::try_from(first).ok()?, usize::try_from(last).ok()?);
                let body = entry.body.slice(start..=end);
                Some(build(StatusCode::PARTIAL_CONTENT, headers, body))
            }
            None => {
                headers.insert(
                    header::CONTENT_RANGE,
                    HeaderValue::try_from(format!("bytes */{len}")).ok()?,
                );
                Some(build(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    headers,
                    Body::empty(),
                ))
            }
        }
    }

    /// Serves an upstream response (not from an entry): 304 if the client's copy is current,
    /// else compressed for this client. `cache` labels it on cached routes.
    pub(super) async fn upstream(
        &self,
        status: StatusCode,
        mut headers: HeaderMap,
        body: Body,
        cache: Option<CacheStatus>,
    ) -> Response {
        if let Some(cache) = cache {
            headers.insert(X_CACHE, cache.header_value());
        }
        let response = build(status, headers, body);
        if self.not_modified(status, response.headers()) {
            let encodable = !response.headers().contains_key(header::CONTENT_ENCODING)
                && predicate().should_compress(&response);
            return self.not_modified_response(response.headers(), encodable);
        }
        match self.request.headers.get(header::ACCEPT_ENCODING) {
            Some(accept) if self.compress => compress(accept, response, self.levels.dynamic).await,
            _ => {
                let mut response = response;
                if self.compress {
                    append_vary_accept_encoding(response.headers_mut());
                }
                response
            }
        }
    }

    /// A 304 standing for a 200 with `headers`, carrying the fields RFC 9110 §15.4.5 lists
    /// and the ETag that 200 would carry.
    fn not_modified_response(&self, headers: &HeaderMap, encodable: bool) -> Response {
        let mut out = HeaderMap::with_capacity(10);
        for name in NOT_MODIFIED_FIELDS.iter().chain(&[header::AGE, X_CACHE]) {
            for v in headers.get_all(name) {
                out.append(name.clone(), v.clone());
            }
        }
        if let Some(tag) = headers.get(header::ETAG) {
            let tag = if self.encodes(encodable) {
                etag::weaken(tag)
            } else {
                tag.clone()
            };
            out.insert(header::ETAG, tag);
        }
        if self.compress {
            append_vary_accept_encoding(&mut out);
        }
        build(StatusCode::NOT_MODIFIED, out, Body::empty())
    }
}

fn entry_age(entry: &Entry) -> HeaderValue {
    crate::cache::entry::age_value(entry.age_secs())
}

/// `If-Range` (RFC 9110 §13.1.5): a strong ETag equal to the entry's (strong) one, or an
/// HTTP-date equal to its `Last-Modified`.
fn if_range_matches(if_range: &HeaderValue, headers: &HeaderMap) -> bool {
    let value = if_range.as_bytes().trim_ascii();
    if value.starts_with(b"\"") {
        return headers
            .get(header::ETAG)
            .is_some_and(|tag| tag.as_bytes().trim_ascii() == value);
    }
    if value.starts_with(b"W/") {
        return false;
    }
    match (
        policy::http_date(if_range),
        headers
            .get(header::LAST_MODIFIED)
            .and_then(policy::http_date),
    ) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

/// One `bytes` range of a representation of `len` bytes: `Some(Some((first, last)))`,
/// `Some(None)` when unsatisfiable, `None` when the field is to be ignored (malformed, another
/// unit, several ranges).
fn byte_range(value: &[u8], len: u64) -> Option<Option<(u64, u64)>> {
    let value = std::str::from_utf8(value).ok()?.trim();
    let (unit, spec) = value.split_once('=')?;
    if !unit.trim().eq_ignore_ascii_case("bytes") || spec.contains(',') {
        return None;
    }
    let (first, last) = spec.trim().split_once('-')?;
    let number = |s: &str| -> Option<u64> {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    match (first.trim(), last.trim()) {
        ("", suffix) => {
            let suffix = number(suffix)?;
            if suffix == 0 || len == 0 {
                return Some(None);
            }
            Some(Some((len.saturating_sub(suffix), len - 1)))
        }
        (first, "") => {
            let first = number(first)?;
            Some((first < len).then(|| (first, len - 1)))
        }
        (first, last) => {
            let (first, last) = (number(first)?, number(last)?);
            if last < first {
                return None;
            }
            Some((first < len).then(|| (first, last.min(len - 1))))
        }
    }
}

/// A response from its parts.
pub(super) fn build(status: StatusCode, headers: HeaderMap, body: impl Into<Body>) -> Response {
    let mut response = Response::new(body.into());
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

fn error_response(e: GatewayError) -> Response {
    axum::response::IntoResponse::into_response(e)
}

/// Runs one response through tower-http's compression for this `Accept-Encoding` (its
/// negotiation, q-values and compressible-type predicate) at `level`, weakening the ETag when
/// it encodes. Complete bodies that tower-http would gzip, br- or zstd-encode are encoded by
/// [`encode`] instead (same negotiation, predicate and headers; no per-response encoder
/// state for gzip and zstd, a body-sized one for br).
async fn compress(
    accept_encoding: &HeaderValue,
    response: Response,
    level: CompressionLevel,
) -> Response {
    let response = match encode_complete(accept_encoding, response, level).await {
        Ok(encoded) => return weaken_etag_if_encoded(encoded),
        Err(response) => response,
    };
    let mut request = http::Request::new(());
    request
        .headers_mut()
        .insert(header::ACCEPT_ENCODING, accept_encoding.clone());
    let mut slot = Some(response);
    // One level for every coding here: the gzip number (1–9) means about the same effort on
    // br's and zstd's scales.
    let service = CompressionLayer::new()
        .quality(tower_http::CompressionLevel::Precise(
            i32::try_from(level.gzip()).unwrap_or(6),
        ))
        .compress_when(predicate())
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

/// The codings [`encode`] has for a complete body.
#[derive(Clone, Copy)]
enum Coding {
    Gzip,
    Br,
    Zstd,
}

/// The fast paths of [`compress`]: no coding when tower-http would pick none, gzip, br or zstd
/// for a complete body when tower-http would pick that coding. Hands the response back
/// untouched (`Err`) when none applies.
async fn encode_complete(
    accept_encoding: &HeaderValue,
    response: Response,
    level: CompressionLevel,
) -> Result<Response, Response> {
    use hyper::body::Body as _;
    let compressible = !response.headers().contains_key(header::CONTENT_ENCODING)
        && !response.headers().contains_key(header::CONTENT_RANGE)
        && predicate().should_compress(&response);
    if encode::picks_identity(accept_encoding) {
        // tower-http would pass the body through, adding only `Vary` when compressible.
        let mut response = response;
        if compressible {
            append_vary_if_absent(response.headers_mut());
        }
        return Ok(response);
    }
    let coding = if encode::picks_zstd(accept_encoding) {
        Coding::Zstd
    } else if encode::picks_br(accept_encoding) {
        Coding::Br
    } else if encode::picks_gzip(accept_encoding) {
        Coding::Gzip
    } else {
        return Err(response);
    };
    let applies = compressible && response.body().size_hint().exact().is_some();
    if !applies {
        return Err(response);
    }
    let (mut parts, body) = response.into_parts();
    // Only buffered bodies have an exact size here (streamed, over-limit ones do not), so
    // this does not wait on the network.
    let Ok(collected) = body.collect().await else {
        return Ok(error_response(GatewayError::Internal));
    };
    let bytes = collected.to_bytes();
    let (name, encoded) = match coding {
        Coding::Gzip => ("gzip", encode::gzip(&bytes, level.gzip())),
        Coding::Br => ("br", encode::br(&bytes, level.brotli())),
        Coding::Zstd => ("zstd", encode::zstd(&bytes, level.zstd())),
    };
    let Some(encoded) = encoded else {
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
        let level = CompressionLevel::Fast;
        let gz = compress(&HeaderValue::from_static("gzip"), make(), level).await;
        assert_eq!(gz.headers()[header::CONTENT_ENCODING], "gzip");
        assert_eq!(gz.headers()[header::ETAG], "W/\"t\"");
        assert_eq!(gz.headers()[header::VARY], "accept-encoding");
        let zs = compress(
            &HeaderValue::from_static("gzip, deflate, br, zstd"),
            make(),
            level,
        )
        .await;
        assert_eq!(zs.headers()[header::CONTENT_ENCODING], "zstd");
        assert_eq!(zs.headers()[header::ETAG], "W/\"t\"");
        assert!(!zs.headers().contains_key(header::CONTENT_LENGTH));
        let brotli = compress(
            &HeaderValue::from_static("gzip, deflate, br"),
            make(),
            level,
        )
        .await;
        assert_eq!(brotli.headers()[header::CONTENT_ENCODING], "br");
        assert_eq!(brotli.headers()[header::ETAG], "W/\"t\"");
        let id = compress(&HeaderValue::from_static("identity"), make(), level).await;
        assert!(!id.headers().contains_key(header::CONTENT_ENCODING));
        assert_eq!(id.headers()[header::ETAG], "\"t\"");
    }

    #[test]
    fn byte_ranges() {
        let r = |v: &str| byte_range(v.as_bytes(), 100);
        assert_eq!(r("bytes=0-9"), Some(Some((0, 9))));
        assert_eq!(r("bytes=90-"), Some(Some((90, 99))));
        assert_eq!(r("bytes=-5"), Some(Some((95, 99))));
        assert_eq!(r("bytes=-500"), Some(Some((0, 99))));
        assert_eq!(r("bytes=95-500"), Some(Some((95, 99))));
        assert_eq!(r("Bytes = 1-2"), Some(Some((1, 2))));
        assert_eq!(r("bytes=100-"), Some(None));
        assert_eq!(r("bytes=-0"), Some(None));
        for ignored in [
            "bytes=5-1",
            "bytes=0-1,3-4",
            "items=0-1",
            "bytes=a-b",
            "bytes=-",
            "0-1",
        ] {
            assert_eq!(r(ignored), None, "{ignored}");
        }
        assert_eq!(byte_range(b"bytes=0-", 0), Some(None));
    }

    #[test]
    fn if_range_needs_a_strong_match() {
        let mut h = HeaderMap::new();
        h.insert(header::ETAG, HeaderValue::from_static("\"a\""));
        h.insert(
            header::LAST_MODIFIED,
            HeaderValue::from_static("Sun, 06 Nov 1994 08:49:37 GMT"),
        );
        let m = |v: &'static str| if_range_matches(&HeaderValue::from_static(v), &h);
        assert!(m("\"a\""));
        assert!(!m("W/\"a\""));
        assert!(!m("\"b\""));
        assert!(m("Sun, 06 Nov 1994 08:49:37 GMT"));
        assert!(!m("Sun, 06 Nov 1994 08:49:38 GMT"));
    }
}
