//! The shared response cache for read routes (RFC 9111, opt-in per route).
//!
//! What is cached: complete upstream responses with a cacheable status and no `no-store`,
//! `private`, `Set-Cookie` or `Vary: *` ([`policy::storable`]), bodies up to
//! `cache.max_object_bytes`, within a `cache.max_bytes` budget (moka, weighed in bytes, LRU-ish
//! TinyLFU eviction).
//!
//! Keys: `route + path + query`, then the values of the request headers the upstream named in
//! `Vary` (kept in a small index per base key). Responses to authenticated requests are stored
//! under the subject's own key unless the upstream marked them shareable, so one user can
//! never be served another's private body. Encoded variants (gzip/br/zstd) are stored next to
//! their identity entry, keyed by the request's `Accept-Encoding`, so a hit never recompresses.
//!
//! Concurrent misses for one key are coalesced ([`Cache::join`]): one leader goes upstream,
//! the others wait for it and then read the cache.

pub mod etag;
pub mod policy;

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, StatusCode, header};
use moka::sync::Cache as Moka;
use tokio::sync::watch;

use crate::config::CacheSettings;

/// Upper bound on distinct `Accept-Encoding` values stored per entry; more are compressed on
/// the fly (clients send few distinct values, attackers many).
const MAX_ENCODED_VARIANTS_PER_ENTRY: u64 = 8;

/// `X-Cache`, stamped on every response served from the cache.
pub const X_CACHE: HeaderName = HeaderName::from_static("x-cache");

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

/// Ages below this are served from a table of prebuilt values ([`age_value`]): a hit then
/// clones a static header value instead of formatting and allocating one.
const AGE_TABLE_LEN: u64 = 1024;

/// The `Age` header value for `secs`.
pub fn age_value(secs: u64) -> HeaderValue {
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

/// `headers` as a hit serves them: with `Age` and `X-Cache: HIT` slots already in place, so
/// that a hit clones one block and overwrites the `Age` value in place (no growth of the
/// cloned map, no re-hashing of names), and optionally with `Vary: accept-encoding`.
fn served_block(headers: &HeaderMap, vary_accept_encoding: bool) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(headers.len() + 3);
    for (name, value) in headers {
        out.append(name.clone(), value.clone());
    }
    out.insert(header::AGE, HeaderValue::from_static("0"));
    out.insert(X_CACHE, HeaderValue::from_static("HIT"));
    if vary_accept_encoding {
        append_vary_accept_encoding(&mut out);
    }
    out
}

/// The fields of `headers` a 304 carries (RFC 9110 §15.4.5), in the order the read handler
/// sends them, with `Age` and `X-Cache` slots, then `ETag` and, optionally,
/// `Vary: accept-encoding`.
fn not_modified_block(headers: &HeaderMap, vary_accept_encoding: bool) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(10);
    for name in NOT_MODIFIED_FIELDS {
        for v in headers.get_all(&name) {
            out.append(name.clone(), v.clone());
        }
    }
    out.insert(header::AGE, HeaderValue::from_static("0"));
    out.insert(X_CACHE, HeaderValue::from_static("HIT"));
    if let Some(tag) = headers.get(header::ETAG) {
        out.insert(header::ETAG, tag.clone());
    }
    if vary_accept_encoding {
        append_vary_accept_encoding(&mut out);
    }
    out
}

/// Appends `Vary: accept-encoding` unless a `Vary` value already names it or is `*`.
pub fn append_vary_accept_encoding(headers: &mut HeaderMap) {
    let present = headers
        .get_all(header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("accept-encoding") || t.trim() == "*")
        });
    if !present {
        headers.append(header::VARY, HeaderValue::from_static("accept-encoding"));
    }
}

/// A stored response.
#[derive(Debug)]
pub struct Entry {
    /// Unique per stored entry; ties encoded variants to this exact body.
    pub id: u64,
    /// Status.
    pub status: StatusCode,
    /// End-to-end response headers (with the ETag, generated if the upstream had none).
    pub headers: HeaderMap,
    /// The body as the upstream sent it (identity unless it was already encoded).
    pub body: Bytes,
    /// When it was stored or last revalidated.
    pub stored_at: Instant,
    /// Freshness lifetime from `stored_at`.
    pub fresh_for: Duration,
    /// `Age` the upstream reported when it was stored.
    pub initial_age: Duration,
    /// Encoded variants stored so far (bounded by [`MAX_ENCODED_VARIANTS_PER_ENTRY`]).
    variants: AtomicU64,
    /// `headers` + `Age` + `X-Cache` slots, built once: what a hit clones ([`Entry::served`]).
    served: HeaderMap,
    /// The same with `Vary: accept-encoding` (routes that compress, client without
    /// `Accept-Encoding`).
    served_vary: HeaderMap,
    /// The 304 for this entry, without and with `Vary: accept-encoding`
    /// ([`Entry::not_modified`]).
    not_modified: [HeaderMap; 2],
    /// The weak form of the ETag, for a 304 standing for an encoded 200.
    weak_etag: Option<HeaderValue>,
    /// The request path's invalidation generation when stored (see [`Cache::invalidate_path`]).
    generation: AtomicU64,
}

impl Entry {
    /// Builds an entry stored now.
    pub fn new(
        status: StatusCode,
        mut headers: HeaderMap,
        body: Bytes,
        fresh_for: Duration,
    ) -> Self {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        let initial_age = headers
            .remove(header::AGE)
            .and_then(|v| v.to_str().ok().and_then(|v| v.trim().parse::<u64>().ok()))
            .map_or(Duration::ZERO, Duration::from_secs);
        let served = served_block(&headers, false);
        let served_vary = served_block(&headers, true);
        let not_modified = [
            not_modified_block(&headers, false),
            not_modified_block(&headers, true),
        ];
        let weak_etag = headers.get(header::ETAG).map(etag::weaken);
        Self {
            served,
            served_vary,
            not_modified,
            weak_etag,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            status,
            headers,
            body,
            stored_at: Instant::now(),
            fresh_for,
            initial_age,
            variants: AtomicU64::new(0),
            generation: AtomicU64::new(0),
        }
    }

    /// Still fresh?
    pub fn is_fresh(&self) -> bool {
        self.stored_at.elapsed() < self.fresh_for
    }

    /// The `Age` to send, in whole seconds.
    pub fn age_secs(&self) -> u64 {
        (self.initial_age + self.stored_at.elapsed()).as_secs()
    }

    /// The response headers for serving this entry: `headers` plus `Age` (set to `age`),
    /// `X-Cache` (set to `how`) and, with `vary_accept_encoding`, `Vary: accept-encoding`.
    pub fn served(
        &self,
        age: HeaderValue,
        how: &'static str,
        vary_accept_encoding: bool,
    ) -> HeaderMap {
        let block = if vary_accept_encoding {
            &self.served_vary
        } else {
            &self.served
        };
        stamp(block.clone(), age, how)
    }

    /// The headers of a 304 for this entry: `Age` and `X-Cache` set, `Vary: accept-encoding`
    /// with `vary_accept_encoding`, the ETag weakened with `weak_etag` (the 200 it stands for
    /// would be encoded).
    pub fn not_modified(
        &self,
        age: HeaderValue,
        how: &'static str,
        vary_accept_encoding: bool,
        weak_etag: bool,
    ) -> HeaderMap {
        let block = &self.not_modified[usize::from(vary_accept_encoding)];
        let mut headers = stamp(block.clone(), age, how);
        if weak_etag && let Some(weak) = &self.weak_etag {
            headers.insert(header::ETAG, weak.clone());
        }
        headers
    }

    fn weight(&self) -> u32 {
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

/// Overwrites the `Age` and `X-Cache` slots of a served block (in place: both names are
/// present, so nothing grows).
fn stamp(mut headers: HeaderMap, age: HeaderValue, how: &'static str) -> HeaderMap {
    headers.insert(header::AGE, age);
    if how != "HIT" {
        headers.insert(X_CACHE, HeaderValue::from_static(how));
    }
    headers
}

/// A stored encoded body for one entry and one `Accept-Encoding` value.
#[derive(Debug)]
pub struct Encoded {
    /// The response headers after encoding (`Content-Encoding`, `Vary`), with `Age` and
    /// `X-Cache` slots (see [`Encoded::served`]).
    served: HeaderMap,
    /// The encoded body.
    pub body: Bytes,
}

impl Encoded {
    /// An encoded variant with its response headers after encoding.
    pub fn new(headers: &HeaderMap, body: Bytes) -> Self {
        Self {
            served: served_block(headers, false),
            body,
        }
    }

    /// The response headers for serving this variant, `Age` and `X-Cache` set.
    pub fn served(&self, age: HeaderValue, how: &'static str) -> HeaderMap {
        stamp(self.served.clone(), age, how)
    }
}

#[derive(Clone)]
enum Value {
    Entry(Arc<Entry>),
    Encoded(Arc<Encoded>),
}

/// The cache. Cheap to share behind an `Arc`.
pub struct Cache {
    store: Moka<String, Value>,
    /// Base key → the request header names its stored variants vary on.
    vary: Moka<String, Arc<[HeaderName]>>,
    inflight: Arc<Mutex<HashMap<String, watch::Receiver<()>>>>,
    /// Request path → generation, bumped by an accepted write to that path.
    generations: Moka<String, u64>,
    /// Set by the first [`Cache::invalidate_path`] that records a generation: until then
    /// every path's generation is 0 and lookups skip `generations`.
    invalidated: AtomicBool,
    next_generation: AtomicU64,
    max_object_bytes: usize,
    /// The cached routes' path patterns, when known: a request path none of them matches can
    /// have no entries, so a write to it has nothing to invalidate.
    paths: Option<matchit::Router<()>>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("entries", &self.store.entry_count())
            .field("weighted_bytes", &self.store.weighted_size())
            .finish_non_exhaustive()
    }
}

/// The result of joining a flight for a key.
pub enum Flight {
    /// Nobody was fetching: go upstream; waiters are released when the guard drops.
    Leader(LeaderGuard),
    /// Someone was fetching and has finished (or the wait timed out): look again.
    Waited,
}

/// Held by the request fetching a key; dropping it (also on cancellation) releases waiters.
pub struct LeaderGuard {
    key: String,
    inflight: Arc<Mutex<HashMap<String, watch::Receiver<()>>>>,
    _done: watch::Sender<()>,
}

impl Drop for LeaderGuard {
    fn drop(&mut self) {
        let mut map = match self.inflight.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        map.remove(&self.key);
        // `_done` drops after this, waking every receiver.
    }
}

/// Runs `f` with the key `build` writes, built in a per-thread buffer: a lookup allocates
/// nothing.
fn with_key<R>(build: impl Fn(&mut String), f: impl FnOnce(&str) -> R) -> R {
    thread_local! {
        static KEY: RefCell<String> = const { RefCell::new(String::new()) };
    }
    KEY.with(|key| {
        let Ok(mut key) = key.try_borrow_mut() else {
            // Only re-entrancy could get here (it does not happen); stay correct anyway.
            let mut own = String::new();
            build(&mut own);
            return f(&own);
        };
        key.clear();
        build(&mut key);
        f(&key)
    })
}

/// Runs `f` with the store key of `entry`'s variant for `accept_encoding`.
fn with_encoded_key<R>(entry: &Entry, accept_encoding: &[u8], f: impl FnOnce(&str) -> R) -> R {
    with_key(
        |key| {
            let _ = write!(
                key,
                "z\0{}\0{}",
                entry.id,
                String::from_utf8_lossy(accept_encoding)
            );
        },
        f,
    )
}

/// The key of an entry stored without varying request headers (`Cache::full_key` with no
/// names): what [`Cache::lookup`] tries first.
fn push_plain_key(key: &mut String, base: &str) {
    key.push_str("e\0");
    key.push_str(base);
}

impl Cache {
    /// An empty cache with the configured budget.
    pub fn new(settings: &CacheSettings) -> Self {
        let store = Moka::builder()
            .max_capacity(settings.max_bytes)
            .weigher(|key: &String, value: &Value| {
                let v = match value {
                    Value::Entry(e) => e.weight(),
                    Value::Encoded(e) => u32::try_from(e.body.len() + 512).unwrap_or(u32::MAX),
                };
                v.saturating_add(u32::try_from(key.len()).unwrap_or(u32::MAX))
            })
            .build();
        Self {
            store,
            vary: Moka::new(100_000),
            inflight: Arc::new(Mutex::new(HashMap::new())),
            generations: Moka::new(100_000),
            invalidated: AtomicBool::new(false),
            next_generation: AtomicU64::new(1),
            max_object_bytes: settings.max_object_bytes,
            paths: None,
        }
    }

    /// Tells the cache which route patterns (route syntax, e.g. `/users/{id}`) can store
    /// entries, so that [`Cache::invalidate_path`] skips the paths none of them matches (a
    /// `POST /users` next to a cached `GET /users/{id}`). Without it, every path is invalidated.
    pub fn for_paths<'a>(mut self, patterns: impl IntoIterator<Item = &'a str>) -> Self {
        let mut router = matchit::Router::new();
        let unique: std::collections::BTreeSet<&str> = patterns.into_iter().collect();
        for pattern in unique {
            if router.insert(pattern, ()).is_err() {
                // Cannot tell what matches: invalidate every path, as without this.
                return self;
            }
        }
        self.paths = Some(router);
        self
    }

    /// Largest body that may be stored.
    pub fn max_object_bytes(&self) -> usize {
        self.max_object_bytes
    }

    fn full_key(base: &str, names: &[HeaderName], request: &HeaderMap) -> String {
        let mut key = String::with_capacity(base.len() + 64);
        key.push_str("e\0");
        key.push_str(base);
        for name in names {
            key.push('\0');
            key.push_str(name.as_str());
            key.push('=');
            // Several fields are combined as a list; whitespace around commas is not
            // significant (RFC 9111 §4.1 normalisation).
            let values: Vec<String> = request
                .get_all(name)
                .iter()
                .map(|v| {
                    String::from_utf8_lossy(v.as_bytes())
                        .split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .collect();
            key.push_str(&values.join(","));
        }
        key
    }

    fn generation(&self, path: &str) -> u64 {
        if !self.invalidated.load(Ordering::Acquire) {
            return 0;
        }
        self.generations.get(path).unwrap_or(0)
    }

    /// Makes every stored response for request `path` (any route, query or variant) unusable:
    /// RFC 9111 §4.4, called after an accepted write to that path. O(1): entries remember the
    /// path's generation when stored, and a lookup ignores entries from older generations.
    pub fn invalidate_path(&self, path: &str) {
        if self.paths.as_ref().is_some_and(|r| r.at(path).is_err()) {
            return;
        }
        let next = self.next_generation.fetch_add(1, Ordering::Relaxed);
        self.generations.insert(path.to_owned(), next);
        // After the insert: a lookup that sees the flag also sees the generation.
        self.invalidated.store(true, Ordering::Release);
    }

    /// The stored entry for `base` matching `request`'s varying headers, fresh or not, unless
    /// request `path` was invalidated since it was stored.
    pub fn lookup(&self, base: &str, path: &str, request: &HeaderMap) -> Option<Arc<Entry>> {
        let usable = |value: Value| match value {
            Value::Entry(e) if e.generation.load(Ordering::Relaxed) == self.generation(path) => {
                Some(e)
            }
            _ => None,
        };
        // Most responses vary on nothing but Accept-Encoding (handled apart): their key is
        // known without the vary index, so a hit costs one store lookup. An entry under the
        // plain key is current: storing a varying response for `base` removes it.
        if let Some(value) = with_key(|k| push_plain_key(k, base), |k| self.store.get(k)) {
            return usable(value);
        }
        let names = self.vary.get(base)?;
        if names.is_empty() {
            return None;
        }
        usable(self.store.get(&Self::full_key(base, &names, request))?)
    }

    /// Stores `entry` under `base` (for request `path`), varying on `vary` (request header
    /// names).
    pub fn store(
        &self,
        base: &str,
        path: &str,
        vary: Vec<HeaderName>,
        request: &HeaderMap,
        entry: Entry,
    ) -> Arc<Entry> {
        entry
            .generation
            .store(self.generation(path), Ordering::Relaxed);
        let entry = Arc::new(entry);
        if entry.body.len() > self.max_object_bytes {
            return entry;
        }
        let names: Arc<[HeaderName]> = vary.into();
        let key = Self::full_key(base, &names, request);
        if !names.is_empty() {
            // [`Cache::lookup`] tries the plain key first: an older response that varied on
            // nothing must not answer for this one.
            with_key(|k| push_plain_key(k, base), |k| self.store.invalidate(k));
        }
        self.vary.insert(base.to_owned(), names);
        self.store.insert(key, Value::Entry(entry.clone()));
        entry
    }

    /// Removes every variant reachable from `base` for this request shape (used when an
    /// upstream revalidation says the entry is gone).
    pub fn remove(&self, base: &str, request: &HeaderMap) {
        with_key(|k| push_plain_key(k, base), |k| self.store.invalidate(k));
        if let Some(names) = self.vary.get(base) {
            self.store
                .invalidate(&Self::full_key(base, &names, request));
        }
    }

    /// The stored encoding of `entry` for this `Accept-Encoding`, if any.
    pub fn encoded(&self, entry: &Entry, accept_encoding: &[u8]) -> Option<Arc<Encoded>> {
        match with_encoded_key(entry, accept_encoding, |key| self.store.get(key))? {
            Value::Encoded(e) => Some(e),
            Value::Entry(_) => None,
        }
    }

    /// Stores an encoding of `entry`, unless the entry has too many already.
    pub fn put_encoded(&self, entry: &Entry, accept_encoding: &[u8], encoded: Arc<Encoded>) {
        if entry.variants.fetch_add(1, Ordering::Relaxed) < MAX_ENCODED_VARIANTS_PER_ENTRY {
            let key = with_encoded_key(entry, accept_encoding, str::to_owned);
            self.store.insert(key, Value::Encoded(encoded));
        }
    }

    /// Joins the flight for `key`: the first caller leads, later ones wait (at most `max_wait`)
    /// for the leader to finish.
    pub async fn join(&self, key: &str, max_wait: Duration) -> Flight {
        let mut rx = {
            let mut map = match self.inflight.lock() {
                Ok(m) => m,
                Err(poisoned) => poisoned.into_inner(),
            };
            match map.get(key) {
                Some(rx) => rx.clone(),
                None => {
                    let (tx, rx) = watch::channel(());
                    map.insert(key.to_owned(), rx);
                    return Flight::Leader(LeaderGuard {
                        key: key.to_owned(),
                        inflight: self.inflight.clone(),
                        _done: tx,
                    });
                }
            }
        };
        // Resolves with Err when the leader's sender drops: that is the signal.
        let _ = tokio::time::timeout(max_wait, rx.changed()).await;
        Flight::Waited
    }
}

/// The request header names in a response's `Vary`, lower-cased, deduplicated, sorted;
/// `Accept-Encoding` is dropped when `except_accept_encoding` (the gateway encodes itself).
pub fn vary_names(response: &HeaderMap, except_accept_encoding: bool) -> Vec<HeaderName> {
    let mut names: Vec<HeaderName> = response
        .get_all(header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .filter_map(|s| HeaderName::from_bytes(s.as_bytes()).ok())
        .filter(|n| !(except_accept_encoding && *n == header::ACCEPT_ENCODING))
        .collect();
    names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    names.dedup();
    names
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn settings() -> CacheSettings {
        CacheSettings {
            max_bytes: 1 << 20,
            max_object_bytes: 1024,
        }
    }

    fn req(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    fn entry(body: &'static [u8]) -> Entry {
        Entry::new(
            StatusCode::OK,
            HeaderMap::new(),
            Bytes::from_static(body),
            Duration::from_secs(60),
        )
    }

    #[test]
    fn vary_keys_separate_variants_and_normalise_lists() {
        let c = Cache::new(&settings());
        let names = vec![HeaderName::from_static("accept-language")];
        c.store(
            "b",
            "/p",
            names.clone(),
            &req(&[("accept-language", "en, fr")]),
            entry(b"en"),
        );
        c.store(
            "b",
            "/p",
            names,
            &req(&[("accept-language", "de")]),
            entry(b"de"),
        );
        assert_eq!(
            c.lookup("b", "/p", &req(&[("accept-language", "en,fr")]))
                .unwrap()
                .body,
            "en"
        );
        assert_eq!(
            c.lookup("b", "/p", &req(&[("accept-language", "  en ,, fr")]))
                .unwrap()
                .body,
            "en"
        );
        assert_eq!(
            c.lookup("b", "/p", &req(&[("accept-language", "de")]))
                .unwrap()
                .body,
            "de"
        );
        assert!(c.lookup("b", "/p", &req(&[])).is_none());
        assert!(c.lookup("other", "/p", &req(&[])).is_none());
    }

    #[test]
    fn a_varying_response_replaces_a_plain_one() {
        let c = Cache::new(&settings());
        c.store("b", "/p", vec![], &req(&[]), entry(b"plain"));
        assert_eq!(c.lookup("b", "/p", &req(&[])).unwrap().body, "plain");
        let names = vec![HeaderName::from_static("accept-language")];
        c.store(
            "b",
            "/p",
            names,
            &req(&[("accept-language", "de")]),
            entry(b"de"),
        );
        assert!(
            c.lookup("b", "/p", &req(&[("accept-language", "en")]))
                .is_none()
        );
        assert_eq!(
            c.lookup("b", "/p", &req(&[("accept-language", "de")]))
                .unwrap()
                .body,
            "de"
        );
        c.store("b", "/p", vec![], &req(&[]), entry(b"plain2"));
        assert_eq!(
            c.lookup("b", "/p", &req(&[("accept-language", "de")]))
                .unwrap()
                .body,
            "plain2"
        );
        c.remove("b", &req(&[]));
        assert!(c.lookup("b", "/p", &req(&[])).is_none());
    }

    #[test]
    fn invalidating_a_path_hides_its_entries_only() {
        let c = Cache::new(&settings());
        c.store("a", "/users/1", vec![], &req(&[]), entry(b"1"));
        c.store("b", "/users/2", vec![], &req(&[]), entry(b"2"));
        c.invalidate_path("/users/1");
        assert!(c.lookup("a", "/users/1", &req(&[])).is_none());
        assert!(c.lookup("b", "/users/2", &req(&[])).is_some());
        c.store("a", "/users/1", vec![], &req(&[]), entry(b"1b"));
        assert_eq!(c.lookup("a", "/users/1", &req(&[])).unwrap().body, "1b");
    }

    #[test]
    fn writes_to_paths_no_cached_route_matches_invalidate_nothing() {
        let c = Cache::new(&settings()).for_paths(["/users/{id}", "/users/{id}", "/c/{*rest}"]);
        assert!(c.paths.is_some());
        c.store("a", "/users/1", vec![], &req(&[]), entry(b"1"));
        c.invalidate_path("/users");
        c.generations.run_pending_tasks();
        assert_eq!(c.generations.entry_count(), 0);
        assert!(c.lookup("a", "/users/1", &req(&[])).is_some());
        c.invalidate_path("/users/1");
        assert!(c.lookup("a", "/users/1", &req(&[])).is_none());
        c.store("b", "/c/x/y", vec![], &req(&[]), entry(b"2"));
        c.invalidate_path("/c/x/y");
        assert!(c.lookup("b", "/c/x/y", &req(&[])).is_none());
    }

    #[test]
    fn oversized_bodies_are_not_stored() {
        let c = Cache::new(&settings());
        let big: &'static [u8] = Box::leak(vec![0u8; 2048].into_boxed_slice());
        c.store("b", "/p", vec![], &req(&[]), entry(big));
        assert!(c.lookup("b", "/p", &req(&[])).is_none());
    }

    #[test]
    fn the_budget_bounds_memory() {
        let c = Cache::new(&CacheSettings {
            max_bytes: 64 * 1024,
            max_object_bytes: 1024,
        });
        let body: &'static [u8] = Box::leak(vec![7u8; 1000].into_boxed_slice());
        for i in 0..1000 {
            c.store(&format!("k{i}"), "/p", vec![], &req(&[]), entry(body));
        }
        c.store.run_pending_tasks();
        assert!(
            c.store.weighted_size() <= 64 * 1024,
            "{}",
            c.store.weighted_size()
        );
    }

    #[test]
    fn vary_names_are_normalised() {
        let h = req(&[
            ("vary", "Accept-Encoding, accept-language"),
            ("vary", "Accept-Language,,X-Tenant"),
        ]);
        let names: Vec<String> = vary_names(&h, true).iter().map(|n| n.to_string()).collect();
        assert_eq!(names, ["accept-language", "x-tenant"]);
        assert_eq!(vary_names(&h, false).len(), 3);
    }

    #[tokio::test]
    async fn concurrent_misses_have_one_leader() {
        let c = Arc::new(Cache::new(&settings()));
        let Flight::Leader(guard) = c.join("k", Duration::from_secs(5)).await else {
            panic!("first caller leads");
        };
        let waiter = {
            let c = c.clone();
            tokio::spawn(async move {
                matches!(c.join("k", Duration::from_secs(5)).await, Flight::Waited)
            })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(guard);
        assert!(waiter.await.unwrap());
        assert!(matches!(
            c.join("k", Duration::from_secs(5)).await,
            Flight::Leader(_)
        ));
    }
}
