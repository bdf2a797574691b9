//! [`Coherence`]: what decides whether a stored entry may still be used, beyond its own
//! freshness — shared by every [`Cache`] the process builds (reloads included) and by the
//! invalidation subscriber.
//!
//! - **Path generations**: a fixed table of counters; invalidating a path bumps its counter,
//!   and an entry is usable only while the counter still has the value captured when its fetch
//!   began. Local writes and invalidations received from other instances go through the same
//!   [`Coherence::invalidate_written`].
//! - **Epoch**: one more counter every entry captures; bumping it ([`Coherence::flush`]) makes
//!   every entry and every fetch under way unusable at once, and empties the caches.
//! - **Bypass**: with `cache.coherence`, the cache neither serves nor stores while the
//!   invalidation subscription is down ([`Coherence::unsubscribed`]): a missed invalidation can
//!   then never be served around. It flushes when the subscription is lost and again when it
//!   is back ([`Coherence::subscribed`]), so nothing cached before the gap survives it.
//! - **Second drop**: with `cache.reinvalidate_after`, every invalidation is applied again
//!   after that delay, for consumers that apply a published write after its 202 (a read in
//!   between re-caches the old body). The delay is one constant, so deadlines come in order: a
//!   FIFO queue and one task ([`Coherence::new`]) suffice. The queue is bounded; past the bound
//!   the second drop becomes a flush at the newest deadline (more is dropped, never less).
//!
//! No AMQP here: the subscriber (`crate::amqp::invalidation`) tells this type what happened
//! through the server's wiring.

use std::collections::VecDeque;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::{Cache, Generation, normalise_path};
use crate::shared::lock;

/// Invalidation counters: a path maps to one of these by a keyed hash. A collision only
/// invalidates more than asked (never less); 64 Ki counters take 512 KiB.
const GENERATION_BUCKETS: usize = 1 << 16;

/// Most second drops pending at once (24 bytes each); past it, a flush stands in for them.
const MAX_PENDING: usize = 1 << 16;

/// Second drops waiting for their deadline.
#[derive(Default)]
struct Pending {
    /// (deadline, bucket), deadlines non-decreasing.
    queue: VecDeque<(Instant, usize)>,
    /// A flush owed for drops the queue had no room for.
    flush_at: Option<Instant>,
}

/// The validity state every cache of the process shares. See the module doc.
pub(crate) struct Coherence {
    generations: Box<[AtomicU64]>,
    /// Seeds the path hash per process, so which paths share a counter cannot be planned.
    seed: u64,
    epoch: AtomicU64,
    /// The cache may serve and store (always, without `cache.coherence`).
    serving: AtomicBool,
    reinvalidate_after: Duration,
    pending: Mutex<Pending>,
    /// Wakes the second-drop task: a drop was queued into an empty queue, or `self` is gone.
    wake: Arc<Notify>,
    /// The caches built on this state, emptied by a flush (their entries are unusable anyway:
    /// this frees their memory at once).
    caches: Mutex<Vec<Weak<Cache>>>,
}

impl std::fmt::Debug for Coherence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coherence")
            .field("serving", &self.serving())
            .field("epoch", &self.epoch.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Drop for Coherence {
    fn drop(&mut self) {
        // The second-drop task holds only a weak reference: wake it so that it sees the end.
        self.wake.notify_one();
    }
}

impl Coherence {
    /// The state for a process. `serving` is where the cache starts: `true` without
    /// `cache.coherence`, `false` with it (not subscribed yet). A non-zero
    /// `reinvalidate_after` spawns the second-drop task (it must be called within a Tokio
    /// runtime then); the task ends when the returned value is dropped.
    pub(crate) fn new(reinvalidate_after: Duration, serving: bool) -> Arc<Self> {
        let coherence = Arc::new(Self {
            generations: (0..GENERATION_BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            seed: RandomState::new().hash_one(0u8),
            epoch: AtomicU64::new(0),
            serving: AtomicBool::new(serving),
            reinvalidate_after,
            pending: Mutex::default(),
            wake: Arc::new(Notify::new()),
            caches: Mutex::default(),
        });
        if !reinvalidate_after.is_zero() {
            tokio::spawn(second_drops(
                Arc::downgrade(&coherence),
                coherence.wake.clone(),
            ));
        }
        coherence
    }

    /// Whether the cache may serve and store now.
    pub(crate) fn serving(&self) -> bool {
        self.serving.load(Ordering::SeqCst)
    }

    /// The invalidation subscription is up (again): flush what was stored before or during
    /// the gap, then serve. Returns whether the cache was bypassed until now.
    pub(crate) fn subscribed(&self) -> bool {
        self.flush();
        !self.serving.swap(true, Ordering::SeqCst)
    }

    /// The invalidation subscription is down: bypass the cache and flush it. Returns whether
    /// the cache was serving until now.
    pub(crate) fn unsubscribed(&self) -> bool {
        // Bypass first, so that nothing is stored between the flush and the bypass.
        let was = self.serving.swap(false, Ordering::SeqCst);
        self.flush();
        was
    }

    /// Makes every stored entry, and every fetch under way, unusable; empties the caches.
    pub(crate) fn flush(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        let mut caches = lock(&self.caches);
        caches.retain(|c| c.strong_count() > 0);
        for cache in caches.iter().filter_map(Weak::upgrade) {
            cache.clear();
        }
    }

    /// Registers a cache to be emptied by [`Coherence::flush`].
    pub(super) fn register(&self, cache: Weak<Cache>) {
        let mut caches = lock(&self.caches);
        caches.retain(|c| c.strong_count() > 0);
        caches.push(cache);
    }

    fn bucket(&self, path: &str) -> usize {
        // `/users/%31` and `/users/1` are one resource to the router (and upstream): one
        // counter.
        let path = normalise_path(path);
        // The bucket count is a power of two: the mask keeps the low bits of the hash.
        let hash = xxhash_rust::xxh3::xxh3_64_with_seed(path.as_bytes(), self.seed);
        (hash as usize) & (GENERATION_BUCKETS - 1)
    }

    /// The current generation of request `path` (see [`super::Cache::generation`]).
    pub(crate) fn generation(&self, path: &str) -> Generation {
        let bucket = self.bucket(path);
        let value = self
            .generations
            .get(bucket)
            .map_or(0, |g| g.load(Ordering::Acquire));
        Generation {
            bucket,
            value,
            epoch: self.epoch.load(Ordering::SeqCst),
        }
    }

    /// Whether entries captured at `generation` are still valid.
    pub(super) fn is_current(&self, generation: Generation) -> bool {
        self.epoch.load(Ordering::SeqCst) == generation.epoch
            && self
                .generations
                .get(generation.bucket)
                .is_some_and(|g| g.load(Ordering::Acquire) == generation.value)
    }

    /// RFC 9111 §4.4: after a non-error answer to an unsafe request, what was stored for its
    /// target `path` is invalid, and so is what was stored for a same-origin `Location` or
    /// `Content-Location` of the answer (relative references only: an absolute URL may name
    /// another host). For a local write and for one received from another instance alike;
    /// applied again after `cache.reinvalidate_after` when set.
    pub(crate) fn invalidate_written<'a>(
        &self,
        path: &'a str,
        related: impl IntoIterator<Item = &'a str>,
    ) {
        for path in written_paths(path, related) {
            let bucket = self.bucket(path);
            self.bump(bucket);
            self.schedule(bucket);
        }
    }

    /// Makes every stored response for request `path` unusable, once.
    #[cfg(test)]
    pub(crate) fn invalidate_path(&self, path: &str) {
        self.bump(self.bucket(path));
    }

    fn bump(&self, bucket: usize) {
        if let Some(g) = self.generations.get(bucket) {
            g.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Queues the second drop of `bucket`, when configured.
    fn schedule(&self, bucket: usize) {
        if self.reinvalidate_after.is_zero() {
            return;
        }
        let deadline = Instant::now() + self.reinvalidate_after;
        let mut pending = lock(&self.pending);
        let was_idle = pending.queue.is_empty() && pending.flush_at.is_none();
        if pending.queue.back() == Some(&(deadline, bucket)) {
            return;
        }
        if pending.queue.len() < MAX_PENDING {
            pending.queue.push_back((deadline, bucket));
        } else {
            // The delay is constant: this deadline is the latest yet.
            pending.flush_at = Some(deadline);
        }
        drop(pending);
        if was_idle {
            self.wake.notify_one();
        }
    }

    /// Applies the second drops due at `now`; returns the next deadline.
    fn apply_due(&self, now: Instant) -> Option<Instant> {
        let mut pending = lock(&self.pending);
        while let Some(&(deadline, bucket)) = pending.queue.front()
            && deadline <= now
        {
            pending.queue.pop_front();
            self.bump(bucket);
        }
        let flush = pending.flush_at.is_some_and(|at| at <= now);
        if flush {
            pending.flush_at = None;
        }
        let next = match (pending.queue.front(), pending.flush_at) {
            (Some(&(d, _)), Some(f)) => Some(d.min(f)),
            (Some(&(d, _)), None) => Some(d),
            (None, f) => f,
        };
        drop(pending);
        if flush {
            self.flush();
        }
        next
    }

    /// Second drops queued and not yet applied (tests, and a bound that tests check).
    #[cfg(test)]
    fn pending(&self) -> usize {
        lock(&self.pending).queue.len()
    }
}

/// The paths an unsafe request to `path` invalidates: the path itself, then each relative
/// reference of `related` (`Location`, `Content-Location`) without its query or fragment.
pub(crate) fn written_paths<'a>(
    path: &'a str,
    related: impl IntoIterator<Item = &'a str>,
) -> impl Iterator<Item = &'a str> {
    std::iter::once(path).chain(
        related
            .into_iter()
            .filter(|reference| reference.starts_with('/') && !reference.starts_with("//"))
            .map(|reference| reference.split(['?', '#']).next().unwrap_or(reference)),
    )
}

/// The second-drop task: sleeps until the earliest deadline (or a wake-up), applies what is
/// due, and ends when its [`Coherence`] is dropped.
async fn second_drops(coherence: Weak<Coherence>, wake: Arc<Notify>) {
    loop {
        let next = {
            let Some(coherence) = coherence.upgrade() else {
                return;
            };
            coherence.apply_due(Instant::now())
        };
        match next {
            Some(deadline) => {
                tokio::select! {
                    () = tokio::time::sleep_until(deadline) => {}
                    () = wake.notified() => {}
                }
            }
            None => wake.notified().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_paths_keep_relative_references_only() {
        let paths: Vec<&str> = written_paths(
            "/orders",
            [
                "/orders/7?x=1#f",
                "https://other.example/orders/8",
                "//other.example/x",
                "relative",
            ],
        )
        .collect();
        assert_eq!(paths, ["/orders", "/orders/7"]);
    }

    #[test]
    fn a_flush_invalidates_every_path_and_every_fetch_under_way() {
        let c = Coherence::new(Duration::ZERO, true);
        let a = c.generation("/a");
        let b = c.generation("/b");
        assert!(c.is_current(a) && c.is_current(b));
        c.flush();
        assert!(!c.is_current(a) && !c.is_current(b));
        assert!(c.is_current(c.generation("/a")));
    }

    #[test]
    fn losing_the_subscription_bypasses_and_flushes_and_regaining_it_flushes_again() {
        let c = Coherence::new(Duration::ZERO, false);
        assert!(!c.serving());
        let before = c.generation("/a");
        assert!(c.subscribed());
        assert!(c.serving());
        assert!(!c.is_current(before), "what was fetched before subscribing");
        let cached = c.generation("/a");
        assert!(c.unsubscribed());
        assert!(!c.serving());
        assert!(!c.is_current(cached));
        let during = c.generation("/a");
        assert!(!c.unsubscribed(), "already bypassing");
        assert!(c.subscribed());
        assert!(
            !c.is_current(during),
            "a fetch begun in the gap is not stored"
        );
    }

    // The second-drop task sleeps for the real delay; these call what it calls with a
    // `now` of their choosing instead.
    #[tokio::test]
    async fn the_second_drop_comes_after_the_delay() {
        let delay = Duration::from_secs(2);
        let c = Coherence::new(delay, true);
        let written = Instant::now();
        c.invalidate_written("/orders", ["/orders/1"]);
        assert_eq!(c.pending(), 2);
        // A read between the write and the consumer's apply re-caches the old body.
        let recached = c.generation("/orders");
        let next = c.apply_due(written + delay - Duration::from_millis(100));
        assert!(c.is_current(recached));
        assert!(next.is_some_and(|at| at >= written + delay));
        assert_eq!(c.apply_due(written + delay + Duration::from_secs(1)), None);
        assert!(!c.is_current(recached));
        assert_eq!(c.pending(), 0);
    }

    #[tokio::test]
    async fn a_flood_of_writes_is_bounded_and_ends_in_a_flush() {
        let delay = Duration::from_secs(1);
        let c = Coherence::new(delay, true);
        let other = c.generation("/never-written");
        for i in 0..MAX_PENDING + 10 {
            c.invalidate_written(&format!("/p/{i}"), []);
        }
        assert_eq!(c.pending(), MAX_PENDING);
        assert_eq!(c.apply_due(Instant::now() + delay * 2), None);
        assert_eq!(c.pending(), 0);
        assert!(
            !c.is_current(other),
            "the overflow became a flush, which drops every entry"
        );
    }

    #[tokio::test]
    async fn the_second_drop_task_holds_no_strong_reference() {
        let c = Coherence::new(Duration::from_secs(60), true);
        c.invalidate_written("/a", []);
        let weak = Arc::downgrade(&c);
        drop(c);
        assert!(weak.upgrade().is_none());
    }
}
