//! The shared response cache for read routes (RFC 9111, opt-in per route).
//!
//! This module owns every rule of the cache; the read path asks it questions and follows the
//! answers:
//!
//! - **Keys** ([`key`]): computed from the request as the gateway sends it upstream — route,
//!   forwarded proto and host, upstream path and query, then the values of the headers the
//!   origin named in `Vary` (byte-exact, `Accept-*` normalised). Requests carrying credentials
//!   (`Authorization`, `Cookie`, identity headers) have an [`key::Identity`]: their private
//!   entries are keyed by it, and shared entries serve them only when the origin allowed it.
//! - **Storage and freshness** ([`policy`]): RFC 9111 §3–§4.2, including `Expires`, `Age`,
//!   heuristic freshness, stale windows and field-level `no-cache`/`private`.
//! - **Entries** ([`entry`]): the stored response with its prebuilt header blocks; encoded
//!   variants (gzip/br/zstd) stored next to it, keyed by the client's `Accept-Encoding`, so a
//!   hit never recompresses.
//! - **Invalidation** ([`coherence`]): by request path, through a fixed table of generation
//!   counters (no record that could be evicted, so an invalidated entry never comes back),
//!   shared with the other instances over AMQP when `cache.coherence` is on (bypassing the
//!   cache while that subscription is down).
//! - **Coalescing** ([`Cache::join`]): concurrent misses for one key make one upstream request.
//!
//! Memory: bodies up to `cache.max_object_bytes` within a `cache.max_bytes` budget (moka,
//! weighed in bytes, TinyLFU eviction).

pub(crate) mod coherence;
pub(crate) mod entry;
pub(crate) mod etag;
pub(crate) mod key;
pub(crate) mod policy;

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};
use moka::sync::Cache as Moka;
use tokio::sync::watch;

use crate::shared::lock;

pub(crate) use coherence::Coherence;
pub(crate) use entry::Entry;
pub(crate) use entry::{Encoded, Freshness, Meta, Sharing};
pub(crate) use key::Keys;

use crate::config::CacheSettings;

/// Upper bound on distinct `Accept-Encoding` values stored per entry; more are compressed on
/// the fly (clients send few distinct values, attackers many).
const MAX_ENCODED_VARIANTS_PER_ENTRY: u64 = 8;

/// `X-Cache`, stamped on every response of a cached route.
pub(crate) const X_CACHE: HeaderName = HeaderName::from_static("x-cache");

/// How a response on a cached route was produced: the `X-Cache` value and the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CacheStatus {
    /// Served from a fresh entry.
    Hit,
    /// Fetched from the upstream (stored or not).
    Miss,
    /// A stale entry the upstream confirmed with a 304.
    Revalidated,
    /// A stale entry served without the upstream: `stale-while-revalidate` (refreshed in the
    /// background) or `stale-if-error` (the upstream failed).
    Stale,
    /// Fetched from the upstream without looking at the cache or storing: with
    /// `cache.coherence`, while the invalidation subscription is down.
    Bypass,
}

impl CacheStatus {
    /// The `X-Cache` header value.
    pub(crate) fn header_value(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            Self::Hit => "HIT",
            Self::Miss => "MISS",
            Self::Revalidated => "REVALIDATED",
            Self::Stale => "STALE",
            Self::Bypass => "BYPASS",
        })
    }

    /// The `outcome` label of `cache_lookups_total`.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::Miss => "miss",
            Self::Revalidated => "revalidated",
            Self::Stale => "stale",
            Self::Bypass => "bypass",
        }
    }
}

/// A request path's invalidation generation, captured when a fetch begins: an entry is usable
/// only while its path's counter and the flush epoch still have these values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Generation {
    bucket: usize,
    value: u64,
    epoch: u64,
}

/// A stored entry found for a request, with the partition it was found in.
#[derive(Debug, Clone)]
pub(crate) struct Found {
    /// The entry.
    pub(crate) entry: Arc<Entry>,
    /// Found in the caller's private partition (else the shared one).
    pub(crate) private: bool,
}

#[derive(Clone)]
enum Value {
    Entry(Arc<Entry>),
    Encoded(Arc<Encoded>),
}

type Inflight = Arc<Mutex<HashMap<Vec<u8>, watch::Receiver<()>>>>;

/// The cache. Cheap to share behind an `Arc`.
pub(crate) struct Cache {
    store: Moka<Vec<u8>, Value>,
    /// Base key → the request header names its stored variants vary on. Losing a record only
    /// makes the variants unreachable (a miss), never wrong.
    vary: Moka<Vec<u8>, Arc<[HeaderName]>>,
    inflight: Inflight,
    /// Invalidations, flushes and bypass, shared with every cache of the process.
    coherence: Arc<Coherence>,
    max_object_bytes: usize,
    /// What it was built from: a reload keeps this cache (and its entries) when unchanged.
    settings: CacheSettings,
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
pub(crate) enum Flight {
    /// Nobody was fetching: go upstream; waiters are released when the guard drops.
    Leader(LeaderGuard),
    /// Someone was fetching and has finished (or the wait timed out): look again.
    Waited,
}

/// Held by the request fetching a key; dropping it (also on cancellation) releases waiters.
pub(crate) struct LeaderGuard {
    key: Vec<u8>,
    inflight: Inflight,
    _done: watch::Sender<()>,
}

impl Drop for LeaderGuard {
    fn drop(&mut self) {
        let mut map = lock(&self.inflight);
        map.remove(&self.key);
        // `_done` drops after this, waking every receiver.
    }
}

/// Runs `f` with the key `build` writes, built in a per-thread buffer: a lookup allocates
/// nothing.
fn with_key<R>(build: impl Fn(&mut Vec<u8>), f: impl FnOnce(&[u8]) -> R) -> R {
    thread_local! {
        static KEY: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    }
    KEY.with(|key| {
        let Ok(mut key) = key.try_borrow_mut() else {
            // Only re-entrancy could get here (it does not happen); stay correct anyway.
            let mut own = Vec::new();
            build(&mut own);
            return f(&own);
        };
        key.clear();
        build(&mut key);
        f(&key)
    })
}

/// `path` with percent-encoded unreserved characters decoded and other escapes upper-cased
/// (RFC 3986 §6.2.2): equivalent spellings of one path share one invalidation counter.
fn normalise_path(path: &str) -> std::borrow::Cow<'_, str> {
    if !path.contains('%') {
        return path.into();
    }
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let escape = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escape {
            Some(b) if b.is_ascii_alphanumeric() || b"-._~".contains(&b) => {
                out.push(char::from(b));
                i += 3;
            }
            Some(b) => {
                out.push_str(&format!("%{b:02X}"));
                i += 3;
            }
            None => {
                // Not an escape: copy the UTF-8 sequence starting here as it is.
                let len = path[i..].chars().next().map_or(1, char::len_utf8);
                out.push_str(&path[i..i + len]);
                i += len;
            }
        }
    }
    out.into()
}

/// The store key of `base`'s variant for `upstream` when it varies on `names`.
fn push_entry_key(key: &mut Vec<u8>, base: &[u8], names: &[HeaderName], upstream: &HeaderMap) {
    key.extend_from_slice(base);
    key::push_vary(key, names, upstream);
}

/// The store key of `entry`'s encoding for `accept_encoding` (byte-exact).
fn push_encoded_key(key: &mut Vec<u8>, entry: &Entry, accept_encoding: &[u8]) {
    key.push(b'z');
    key.extend_from_slice(&entry.id.to_be_bytes());
    key.extend_from_slice(accept_encoding);
}

impl Cache {
    /// An empty cache with the configured budget, on `coherence` (which a flush empties it
    /// through).
    pub(crate) fn shared(settings: &CacheSettings, coherence: Arc<Coherence>) -> Arc<Self> {
        let cache = Arc::new(Self::build(settings, coherence.clone()));
        coherence.register(Arc::downgrade(&cache));
        cache
    }

    /// An empty cache with the configured budget and a coherence state of its own (always
    /// serving, no second drops).
    #[cfg(test)]
    pub(crate) fn new(settings: &CacheSettings) -> Self {
        Self::build(settings, Coherence::new(Duration::ZERO, true))
    }

    fn build(settings: &CacheSettings, coherence: Arc<Coherence>) -> Self {
        let store = Moka::builder()
            .max_capacity(settings.max_bytes)
            .weigher(|key: &Vec<u8>, value: &Value| {
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
            inflight: Arc::default(),
            coherence,
            max_object_bytes: settings.max_object_bytes,
            settings: settings.clone(),
        }
    }

    /// The `[cache]` settings it was built from.
    pub(crate) fn settings(&self) -> &CacheSettings {
        &self.settings
    }

    /// Whether entries may be served and stored now (see [`Coherence::serving`]).
    pub(crate) fn serving(&self) -> bool {
        self.coherence.serving()
    }

    /// Largest body that may be stored.
    pub(crate) fn max_object_bytes(&self) -> usize {
        self.max_object_bytes
    }

    /// Drops every entry (a flush: [`Coherence::flush`] made them unusable already).
    pub(super) fn clear(&self) {
        self.store.invalidate_all();
        self.vary.invalidate_all();
    }

    /// The current invalidation generation of request `path`; capture it before fetching, so
    /// that a write landing while the fetch is under way invalidates what it brings back.
    pub(crate) fn generation(&self, path: &str) -> Generation {
        self.coherence.generation(path)
    }

    fn is_current(&self, generation: Generation) -> bool {
        self.coherence.is_current(generation)
    }

    /// Makes every stored response for request `path` (any route, query, variant or
    /// partition) unusable: RFC 9111 §4.4, after a successful unsafe request to that path.
    #[cfg(test)]
    pub(crate) fn invalidate_path(&self, path: &str) {
        self.coherence.invalidate_path(path);
    }

    /// The entry stored under `base` for this upstream request, if any and not invalidated.
    fn get(&self, base: &[u8], upstream: &HeaderMap) -> Option<Arc<Entry>> {
        // Bypassed (coherence on, subscription down): an invalidation may have been missed.
        if !self.coherence.serving() {
            return None;
        }
        // Most responses vary on nothing the request changes: their key is the base itself, so
        // a hit costs one store lookup. An entry under the plain key is current: storing a
        // varying response for `base` removes it.
        let value = match self.store.get(base) {
            Some(value) => value,
            None => {
                let names = self.vary.get(base)?;
                if names.is_empty() {
                    return None;
                }
                with_key(
                    |k| push_entry_key(k, base, &names, upstream),
                    |k| self.store.get(k),
                )?
            }
        };
        match value {
            Value::Entry(e) if self.is_current(e.meta.generation) => Some(e),
            _ => None,
        }
    }

    /// The entry this request may use, fresh or not: the caller's own (private) one first,
    /// then the shared one — for a request with credentials only if the origin allowed
    /// sharing it with authenticated requests (RFC 9111 §3.5).
    pub(crate) fn lookup(&self, keys: &Keys, upstream: &HeaderMap) -> Option<Found> {
        if let Some(private) = keys.private_base()
            && let Some(entry) = self.get(private, upstream)
        {
            return Some(Found {
                entry,
                private: true,
            });
        }
        let shared = keys.shared_base();
        let entry = self.get(shared, upstream)?;
        if keys.identity.is_some() && !entry.meta.sharing.with_credentials {
            return None;
        }
        Some(Found {
            entry,
            private: false,
        })
    }

    /// Stores `entry` under `base`, varying on `vary` (request header names, valued from
    /// `upstream`). Returns it, stored or not (too large).
    pub(crate) fn store(
        &self,
        base: &[u8],
        vary: Vec<HeaderName>,
        upstream: &HeaderMap,
        entry: Entry,
    ) -> Arc<Entry> {
        let entry = Arc::new(entry);
        if entry.body.len() > self.max_object_bytes
            || !self.coherence.serving()
            || !self.is_current(entry.meta.generation)
        {
            return entry;
        }
        let names: Arc<[HeaderName]> = vary.into();
        if names.is_empty() {
            self.store
                .insert(base.to_vec(), Value::Entry(entry.clone()));
        } else {
            // [`Cache::get`] tries the plain key first: an older response that varied on
            // nothing must not answer for this one.
            self.store.invalidate(base);
            let key = with_key(
                |k| push_entry_key(k, base, &names, upstream),
                <[u8]>::to_vec,
            );
            self.store.insert(key, Value::Entry(entry.clone()));
        }
        self.vary.insert(base.to_vec(), names);
        entry
    }

    /// Removes the entry `base` holds for this request shape (the upstream said it is gone, or
    /// no longer storable there).
    pub(crate) fn remove(&self, base: &[u8], upstream: &HeaderMap) {
        self.store.invalidate(base);
        if let Some(names) = self.vary.get(base)
            && !names.is_empty()
        {
            with_key(
                |k| push_entry_key(k, base, &names, upstream),
                |k| self.store.invalidate(k),
            );
        }
    }

    /// The stored encoding of `entry` for this `Accept-Encoding`, if any.
    pub(crate) fn encoded(&self, entry: &Entry, accept_encoding: &[u8]) -> Option<Arc<Encoded>> {
        let value = with_key(
            |k| push_encoded_key(k, entry, accept_encoding),
            |k| self.store.get(k),
        )?;
        match value {
            Value::Encoded(e) => Some(e),
            Value::Entry(_) => None,
        }
    }

    /// Stores an encoding of `entry`, unless the entry has too many already.
    pub(crate) fn put_encoded(&self, entry: &Entry, accept_encoding: &[u8], encoded: Arc<Encoded>) {
        if entry.variants.fetch_add(1, Ordering::Relaxed) < MAX_ENCODED_VARIANTS_PER_ENTRY {
            let key = with_key(
                |k| push_encoded_key(k, entry, accept_encoding),
                <[u8]>::to_vec,
            );
            self.store.insert(key, Value::Encoded(encoded));
        }
    }

    /// Leads the flight for `key`, or hands back the running leader's completion signal.
    fn lead(&self, key: &[u8]) -> Result<LeaderGuard, watch::Receiver<()>> {
        let mut map = lock(&self.inflight);
        if let Some(rx) = map.get(key) {
            return Err(rx.clone());
        }
        let (tx, rx) = watch::channel(());
        map.insert(key.to_vec(), rx);
        Ok(LeaderGuard {
            key: key.to_vec(),
            inflight: self.inflight.clone(),
            _done: tx,
        })
    }

    /// Leads the flight for `key` if nobody does (a background refresh that must run once).
    pub(crate) fn try_lead(&self, key: &[u8]) -> Option<LeaderGuard> {
        self.lead(key).ok()
    }

    /// Joins the flight for `key`: the first caller leads, later ones wait (at most `max_wait`)
    /// for the leader to finish.
    pub(crate) async fn join(&self, key: &[u8], max_wait: Duration) -> Flight {
        match self.lead(key) {
            Ok(guard) => Flight::Leader(guard),
            Err(mut rx) => {
                // Resolves with Err when the leader's sender drops: that is the signal.
                let _ = tokio::time::timeout(max_wait, rx.changed()).await;
                Flight::Waited
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::policy::Storable;
    use bytes::Bytes;
    use http::{HeaderValue, StatusCode};

    fn settings() -> CacheSettings {
        CacheSettings {
            max_bytes: 1 << 20,
            max_object_bytes: 1024,
            ..CacheSettings::default()
        }
    }

    fn req(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    fn policy() -> Storable {
        Storable {
            scope: policy::Scope::Shared,
            lifetime: Duration::from_secs(60),
            corrected_initial_age: Duration::ZERO,
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            drop_fields: Vec::new(),
        }
    }

    fn entry(c: &Cache, path: &str, body: &'static [u8]) -> Entry {
        Entry::new(
            StatusCode::OK,
            HeaderMap::new(),
            Bytes::from_static(body),
            Meta {
                policy: policy(),
                response_time: std::time::SystemTime::now(),
                sharing: Sharing {
                    with_credentials: false,
                    owner: None,
                },
                generation: c.generation(path),
                encodable: false,
                generated_etag: false,
            },
        )
    }

    fn keys(path: &str, upstream: &HeaderMap) -> Keys {
        Keys::new("r", path, upstream)
    }

    #[test]
    fn vary_keys_separate_variants_and_normalise_lists() {
        let c = Cache::new(&settings());
        let names = vec![HeaderName::from_static("accept-language")];
        let en = req(&[("accept-language", "en, fr")]);
        let base = keys("/p", &en).shared_base().to_vec();
        c.store(&base, names.clone(), &en, entry(&c, "/p", b"en"));
        let de = req(&[("accept-language", "de")]);
        c.store(&base, names, &de, entry(&c, "/p", b"de"));
        let body = |h: &HeaderMap| c.lookup(&keys("/p", h), h).map(|f| f.entry.body.clone());
        assert_eq!(body(&req(&[("accept-language", "en,fr")])).unwrap(), "en");
        assert_eq!(
            body(&req(&[("accept-language", "  en ,, fr")])).unwrap(),
            "en"
        );
        assert_eq!(body(&de).unwrap(), "de");
        assert!(body(&req(&[])).is_none());
        assert!(c.lookup(&Keys::new("other", "/p", &de), &de).is_none());
    }

    #[test]
    fn a_varying_response_replaces_a_plain_one() {
        let c = Cache::new(&settings());
        let none = req(&[]);
        let base = keys("/p", &none).shared_base().to_vec();
        c.store(&base, vec![], &none, entry(&c, "/p", b"plain"));
        let body = |h: &HeaderMap| c.lookup(&keys("/p", h), h).map(|f| f.entry.body.clone());
        assert_eq!(body(&none).unwrap(), "plain");
        let de = req(&[("accept-language", "de")]);
        let names = vec![HeaderName::from_static("accept-language")];
        c.store(&base, names, &de, entry(&c, "/p", b"de"));
        assert!(body(&req(&[("accept-language", "en")])).is_none());
        assert_eq!(body(&de).unwrap(), "de");
        c.store(&base, vec![], &none, entry(&c, "/p", b"plain2"));
        assert_eq!(body(&de).unwrap(), "plain2");
        c.remove(&base, &none);
        assert!(body(&none).is_none());
    }

    #[test]
    fn credentials_see_private_entries_and_only_shareable_shared_ones() {
        let c = Cache::new(&settings());
        let anon = req(&[]);
        let alice = req(&[("x-auth-sub", "alice")]);
        let bob = req(&[("x-auth-sub", "bob")]);
        let shared = keys("/p", &anon).shared_base().to_vec();
        c.store(&shared, vec![], &anon, entry(&c, "/p", b"anonymous"));
        assert!(c.lookup(&keys("/p", &anon), &anon).is_some());
        assert!(
            c.lookup(&keys("/p", &alice), &alice).is_none(),
            "a non-public entry never serves a request with credentials"
        );
        let k = keys("/p", &alice);
        let private = k.private_base().unwrap().to_vec();
        c.store(&private, vec![], &alice, entry(&c, "/p", b"alice"));
        assert_eq!(c.lookup(&k, &alice).unwrap().entry.body, "alice");
        assert!(c.lookup(&keys("/p", &bob), &bob).is_none());
        assert_eq!(
            c.lookup(&keys("/p", &anon), &anon).unwrap().entry.body,
            "anonymous"
        );
    }

    #[test]
    fn invalidating_a_path_hides_its_entries_only() {
        let c = Cache::new(&settings());
        let none = req(&[]);
        let (k1, k2) = (keys("/users/1", &none), keys("/users/2", &none));
        c.store(k1.shared_base(), vec![], &none, entry(&c, "/users/1", b"1"));
        c.store(k2.shared_base(), vec![], &none, entry(&c, "/users/2", b"2"));
        c.invalidate_path("/users/1");
        assert!(c.lookup(&k1, &none).is_none());
        assert!(c.lookup(&k2, &none).is_some());
        c.store(
            k1.shared_base(),
            vec![],
            &none,
            entry(&c, "/users/1", b"1b"),
        );
        assert_eq!(c.lookup(&k1, &none).unwrap().entry.body, "1b");
    }

    #[test]
    fn equivalent_path_spellings_share_an_invalidation() {
        assert_eq!(normalise_path("/users/%31%2fx%2F"), "/users/1%2Fx%2F");
        assert_eq!(normalise_path("/a%zz/é%7e"), "/a%zz/é~");
        let c = Cache::new(&settings());
        let before = c.generation("/users/1");
        c.invalidate_path("/users/%31");
        assert_ne!(before, c.generation("/users/1"));
    }

    #[test]
    fn a_fetch_overtaken_by_an_invalidation_is_not_stored() {
        let c = Cache::new(&settings());
        let none = req(&[]);
        let k = keys("/users/1", &none);
        let started = entry(&c, "/users/1", b"before the write");
        c.invalidate_path("/users/1");
        c.store(k.shared_base(), vec![], &none, started);
        assert!(c.lookup(&k, &none).is_none());
    }

    #[test]
    fn invalidations_are_never_forgotten() {
        // The old design kept invalidation records in a bounded map: enough later writes to
        // other paths evicted the record and the invalidated entry came back.
        let c = Cache::new(&settings());
        let none = req(&[]);
        let k = keys("/users/1", &none);
        c.store(
            k.shared_base(),
            vec![],
            &none,
            entry(&c, "/users/1", b"old"),
        );
        c.invalidate_path("/users/1");
        for i in 0..300_000 {
            c.invalidate_path(&format!("/other/{i}"));
        }
        assert!(c.lookup(&k, &none).is_none());
    }

    #[test]
    fn a_bypassed_cache_neither_serves_nor_stores_and_a_flush_empties_it() {
        let coherence = Coherence::new(Duration::ZERO, true);
        let c = Cache::shared(&settings(), coherence.clone());
        let none = req(&[]);
        let k = keys("/p", &none);
        c.store(k.shared_base(), vec![], &none, entry(&c, "/p", b"old"));
        assert!(c.lookup(&k, &none).is_some());
        let in_flight = entry(&c, "/p", b"fetched before the loss");
        assert!(coherence.unsubscribed());
        assert!(c.lookup(&k, &none).is_none(), "bypassed: never served");
        c.store.run_pending_tasks();
        assert_eq!(c.store.entry_count(), 0, "the flush emptied the store");
        c.store(k.shared_base(), vec![], &none, entry(&c, "/p", b"during"));
        assert!(coherence.subscribed());
        assert!(
            c.lookup(&k, &none).is_none(),
            "nothing stored while bypassed"
        );
        c.store(k.shared_base(), vec![], &none, in_flight);
        assert!(
            c.lookup(&k, &none).is_none(),
            "a fetch begun before the gap is not stored after it"
        );
        c.store(k.shared_base(), vec![], &none, entry(&c, "/p", b"new"));
        assert_eq!(c.lookup(&k, &none).unwrap().entry.body, "new");
    }

    #[test]
    fn oversized_bodies_are_not_stored() {
        let c = Cache::new(&settings());
        let big: &'static [u8] = Box::leak(vec![0u8; 2048].into_boxed_slice());
        let none = req(&[]);
        let k = keys("/p", &none);
        c.store(k.shared_base(), vec![], &none, entry(&c, "/p", big));
        assert!(c.lookup(&k, &none).is_none());
    }

    #[test]
    fn the_budget_bounds_memory() {
        let c = Cache::new(&CacheSettings {
            max_bytes: 64 * 1024,
            max_object_bytes: 1024,
            ..CacheSettings::default()
        });
        let body: &'static [u8] = Box::leak(vec![7u8; 1000].into_boxed_slice());
        let none = req(&[]);
        for i in 0..1000 {
            let k = keys(&format!("/p/{i}"), &none);
            c.store(k.shared_base(), vec![], &none, entry(&c, "/p", body));
        }
        c.store.run_pending_tasks();
        assert!(
            c.store.weighted_size() <= 64 * 1024,
            "{}",
            c.store.weighted_size()
        );
    }

    #[tokio::test]
    async fn concurrent_misses_have_one_leader() {
        let c = Arc::new(Cache::new(&settings()));
        let Flight::Leader(guard) = c.join(b"k", Duration::from_secs(5)).await else {
            panic!("first caller leads");
        };
        assert!(
            c.try_lead(b"k").is_none(),
            "a background refresh never doubles a flight"
        );
        let waiter = {
            let c = c.clone();
            tokio::spawn(async move {
                matches!(c.join(b"k", Duration::from_secs(5)).await, Flight::Waited)
            })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(guard);
        assert!(waiter.await.unwrap());
        assert!(matches!(
            c.join(b"k", Duration::from_secs(5)).await,
            Flight::Leader(_)
        ));
    }
}
