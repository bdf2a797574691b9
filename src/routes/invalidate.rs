//! After a successful write: invalidate what the cache holds for it, here and — with
//! `cache.coherence` — on every other instance.
//!
//! The invalidation message is published before the write's response is sent, and awaited
//! (bounded by `amqp.confirm_timeout`): once a client holds the 2xx, the broker has put the
//! invalidation in every subscribed instance's queue, and delivery takes the time a message
//! takes (milliseconds). A failure changes nothing of the write's own answer — the write is
//! done (confirmed, or answered by the upstream) — and is logged and counted
//! (`gateway_cache_invalidations_total{outcome="failed"}`). The other instances then serve
//! their entries until these expire (`cache.reinvalidate_after` does not help: its second
//! drop is scheduled on receipt): that is the one gap coherence leaves, visible in the metric.

use crate::amqp::PublishError;
use crate::state::AppState;

/// Invalidates `path` and the relative `related` references (`Location`,
/// `Content-Location`) of a successful write, locally and on the other instances.
pub(crate) async fn written(state: &AppState, path: &str, related: &[&str]) {
    if state.cache.is_none() && state.invalidations.is_none() {
        return;
    }
    state
        .coherence
        .invalidate_written(path, related.iter().copied());
    let Some(publisher) = &state.invalidations else {
        return;
    };
    // Only what a receiver would keep travels (it filters the same way).
    let related: Vec<&str> = crate::cache::coherence::written_paths(path, related.iter().copied())
        .skip(1)
        .collect();
    let outcome = match publisher.publish(&state.channels, path, &related).await {
        Ok(()) => "sent",
        // No queue is bound: no instance (this one included) is subscribed, so every one of
        // them bypasses its cache; nothing to tell.
        Err(PublishError::Unroutable) => "unrouted",
        Err(error) => {
            tracing::warn!(path, %error, "Cache invalidation not published; other instances may serve the old entry until it expires.");
            "failed"
        }
    };
    state.metrics.invalidation(outcome);
}
