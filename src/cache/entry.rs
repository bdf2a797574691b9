//! A stored response ([`Entry`]), its freshness, and the header blocks a hit or a 304 clones.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, StatusCode};

use super::key::Identity;
use super::policy::Storable;
use super::{CacheStatus, Generation, X_CACHE, etag};

/// The stored fields a 304 repeats (RFC 9110 §15.4.5), in the order they are sent; `Age`,
/// `X-Cache`, `ETag` and `Vary: accept-encoding` follow.
pub(crate) const NOT_MODIFIED_FIELDS: [HeaderName; 6] = [
    header::CACHE_CONTROL,
    header::CONTENT_LOCATION,
    header::DATE,
    header::EXPIRES,
    header::VARY,
    header::LAST_MODIFIED,
];

/// How a stored entry may be used now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Freshness {
    /// Within its freshness lifetime: serve it.
    Fresh,
    /// Stale, within `stale-while-revalidate`: serve it and refresh it in the background.
    StaleWhileRevalidate,
    /// Stale: revalidate before use (or serve it on an upstream error within
    /// `stale-if-error`, see [`Entry::usable_on_error`]).
    Stale,
}

/// Who may reuse a stored entry besides the request that stored it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sharing {
    /// A request carrying credentials may use it from the shared partition (RFC 9111 §3.5:
    /// the origin marked it `public`, `s-maxage`, or `must-revalidate` with a lifetime).
    pub(crate) with_credentials: bool,
    /// Set when the entry is shared only through `must-revalidate`: the identity that stored
    /// it. A 304 confirms the stored body to another identity only while it is fresh, never
    /// on revalidation (that would hand one user's body to another on the origin's "not
    /// modified" for a tag that is the same for everybody).
    pub(crate) owner: Option<Identity>,
}

/// What the cache knows about a response besides its bytes.
#[derive(Debug, Clone)]
pub(crate) struct Meta {
    /// The storage decision (lifetime, age, stale windows).
    pub(crate) policy: Storable,
    /// When the response arrived (RFC 9111 §4.2.3 `response_time`: the resident time counts
    /// from here).
    pub(crate) response_time: SystemTime,
    /// Reuse rules.
    pub(crate) sharing: Sharing,
    /// The request path's invalidation generation when the fetch began.
    pub(crate) generation: Generation,
    /// The gateway would compress this body for a client that accepts a coding (type and
    /// size), so a 200 for such a client carries a weak ETag and so must its 304.
    pub(crate) encodable: bool,
    /// The ETag is the gateway's own (the origin sent none): never sent upstream as a
    /// validator.
    pub(crate) generated_etag: bool,
}

/// A stored response.
#[derive(Debug)]
pub(crate) struct Entry {
    /// Unique per stored entry; ties encoded variants to this exact body.
    pub(crate) id: u64,
    /// Status.
    pub(crate) status: StatusCode,
    /// End-to-end response headers as stored (without `Age` and the fields the origin said
    /// not to store), with the ETag, generated if the upstream had none.
    pub(crate) headers: HeaderMap,
    /// The body as the upstream sent it (identity unless it was already encoded).
    pub(crate) body: Bytes,
    pub(crate) meta: Meta,
    /// Encoded variants stored so far.
    pub(crate) variants: AtomicU64,
    /// `headers` + `Age` + `X-Cache` slots, built once: what a hit clones ([`Entry::served`]).
    served: HeaderMap,
    /// The same with `Vary: accept-encoding` (routes that compress).
    served_vary: HeaderMap,
    /// The 304 for this entry, without and with `Vary: accept-encoding`.
    not_modified: [HeaderMap; 2],
    /// The weak form of the ETag, for a 304 standing for an encoded 200.
    weak_etag: Option<HeaderValue>,
}

impl Entry {
    /// Builds an entry from a storable response.
    pub(crate) fn new(status: StatusCode, mut headers: HeaderMap, body: Bytes, meta: Meta) -> Self {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        // `Age` is recomputed on every use; fields the origin excluded are not kept (RFC 9111
        // §5.2.2.4, §5.2.2.7: `no-cache="f"`, `private="f"`).
        headers.remove(header::AGE);
        for name in &meta.policy.drop_fields {
            headers.remove(name);
        }
        let served = served_block(&headers, false);
        let served_vary = served_block(&headers, true);
        let not_modified = [
            not_modified_block(&headers, false),
            not_modified_block(&headers, true),
        ];
        let weak_etag = headers.get(header::ETAG).map(etag::weaken);
        Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            status,
            headers,
            body,
            meta,
            variants: AtomicU64::new(0),
            served,
            served_vary,
            not_modified,
            weak_etag,
        }
    }

    /// RFC 9111 §4.2.3 `current_age`.
    pub(crate) fn age(&self) -> Duration {
        self.meta
            .policy
            .current_age(self.meta.response_time, SystemTime::now())
    }

    /// The `Age` to send, in whole seconds.
    pub(crate) fn age_secs(&self) -> u64 {
        self.age().as_secs()
    }

    /// Whether the entry may be served now, and how.
    pub(crate) fn freshness(&self) -> Freshness {
        let age = self.age();
        let policy = &self.meta.policy;
        if age < policy.lifetime {
            Freshness::Fresh
        } else if age < policy.lifetime + policy.stale_while_revalidate {
            Freshness::StaleWhileRevalidate
        } else {
            Freshness::Stale
        }
    }

    /// Whether the stale entry may answer instead of an upstream error (RFC 5861
    /// `stale-if-error`; never with `must-revalidate`, which the policy folds in).
    pub(crate) fn usable_on_error(&self) -> bool {
        self.age() < self.meta.policy.lifetime + self.meta.policy.stale_if_error
    }

    /// The response headers for serving this entry: `Age` and `X-Cache` set, and with
    /// `vary_accept_encoding`, `Vary: accept-encoding`.
    pub(crate) fn served(&self, status: CacheStatus, vary_accept_encoding: bool) -> HeaderMap {
        let block = if vary_accept_encoding {
            &self.served_vary
        } else {
            &self.served
        };
        stamp(block.clone(), self.age_secs(), status)
    }

    /// The headers of a 304 for this entry; the ETag weakened with `weak_etag` (the 200 it
    /// stands for would be encoded).
    pub(crate) fn not_modified(
        &self,
        status: CacheStatus,
        vary_accept_encoding: bool,
        weak_etag: bool,
    ) -> HeaderMap {
        let block = &self.not_modified[usize::from(vary_accept_encoding)];
        let mut headers = stamp(block.clone(), self.age_secs(), status);
        if weak_etag && let Some(weak) = &self.weak_etag {
            headers.insert(header::ETAG, weak.clone());
        }
        headers
    }

    /// Bytes this entry holds, for the cache budget.
    pub(crate) fn weight(&self) -> u32 {
        // The stored headers are held five times (as stored, the two served blocks and,
        // for the fields a 304 carries, the two 304 blocks): count them so.
        let headers: usize = self
            .headers
            .iter()
            .map(|(k, v)| 5 * (k.as_str().len() + v.len() + 32))
            .sum();
        u32::try_from(self.body.len() + headers + 256).unwrap_or(u32::MAX)
    }
}

/// A stored encoded body for one entry and one `Accept-Encoding` value.
#[derive(Debug)]
pub(crate) struct Encoded {
    /// The response headers after encoding, with `Age` and `X-Cache` slots.
    served: HeaderMap,
    /// The encoded body.
    pub(crate) body: Bytes,
}

impl Encoded {
    /// An encoded variant with its response headers after encoding.
    pub(crate) fn new(headers: &HeaderMap, body: Bytes) -> Self {
        Self {
            served: served_block(headers, false),
            body,
        }
    }

    /// The response headers for serving this variant of `entry`.
    pub(crate) fn served(&self, entry: &Entry, status: CacheStatus) -> HeaderMap {
        stamp(self.served.clone(), entry.age_secs(), status)
    }
}

/// Ages below this are served from a table of prebuilt values ([`age_value`]): a hit then
/// clones a static header value instead of formatting and allocating one.
const AGE_TABLE_LEN: u64 = 1024;

/// The `Age` header value for `secs`.
pub(crate) fn age_value(secs: u64) -> HeaderValue {
    static TABLE: std::sync::OnceLock<Box<[HeaderValue]>> = std::sync::OnceLock::new();
    if secs >= AGE_TABLE_LEN {
        return HeaderValue::from(secs);
    }
    let table = TABLE.get_or_init(|| {
        (0..AGE_TABLE_LEN)
            .map(|n| {
                // Leaked once (~4 KB in all): `from_static` values clone without refcounting.
                let digits: &'static str = Box::leak(n.to_string().into_boxed_str());
                HeaderValue::from_static(digits)
            })
            .collect()
    });
    usize::try_from(secs)
        .ok()
        .and_then(|i| table.get(i))
        .cloned()
        .unwrap_or_else(|| HeaderValue::from(secs))
}

/// Overwrites the `Age` and `X-Cache` slots of a served block (in place: both names are
/// present, so nothing grows).
fn stamp(mut headers: HeaderMap, age: u64, status: CacheStatus) -> HeaderMap {
    headers.insert(header::AGE, age_value(age));
    if status != CacheStatus::Hit {
        headers.insert(X_CACHE, status.header_value());
    }
    headers
}

/// `headers` as a hit serves them: with `Age` and `X-Cache: HIT` slots already in place, so
/// that a hit clones one block and overwrites the `Age` value in place (no growth of the
/// cloned map, no re-hashing of names), and optionally with `Vary: accept-encoding`.
fn served_block(headers: &HeaderMap, vary_accept_encoding: bool) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(headers.len() + 3);
    for (name, value) in headers {
        out.append(name.clone(), value.clone());
    }
    out.insert(header::AGE, HeaderValue::from_static("0"));
    out.insert(X_CACHE, CacheStatus::Hit.header_value());
    if vary_accept_encoding {
        append_vary_accept_encoding(&mut out);
    }
    out
}

/// The fields of `headers` a 304 carries (RFC 9110 §15.4.5), with `Age` and `X-Cache` slots,
/// then `ETag` and, optionally, `Vary: accept-encoding`.
pub(crate) fn not_modified_block(headers: &HeaderMap, vary_accept_encoding: bool) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(10);
    for name in NOT_MODIFIED_FIELDS {
        for v in headers.get_all(&name) {
            out.append(name.clone(), v.clone());
        }
    }
    out.insert(header::AGE, HeaderValue::from_static("0"));
    out.insert(X_CACHE, CacheStatus::Hit.header_value());
    if let Some(tag) = headers.get(header::ETAG) {
        out.insert(header::ETAG, tag.clone());
    }
    if vary_accept_encoding {
        append_vary_accept_encoding(&mut out);
    }
    out
}

/// Appends `Vary: accept-encoding` unless a `Vary` value already names it or is `*`.
pub(crate) fn append_vary_accept_encoding(headers: &mut HeaderMap) {
    let present = headers.get_all(header::VARY).iter().any(|v| {
        v.as_bytes().split(|b| *b == b',').any(|t| {
            let t = t.trim_ascii();
            t.eq_ignore_ascii_case(b"accept-encoding") || t == b"*"
        })
    });
    if !present {
        headers.append(header::VARY, HeaderValue::from_static("accept-encoding"));
    }
}
