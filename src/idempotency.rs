//! [`IdempotencyRecord`]: which request body each `Idempotency-Key` was first used with, so a
//! key reused with another body is refused (422) instead of publishing a second, different
//! event under the first one's `message_id` (draft-ietf-httpapi-idempotency-key-header §2.7).
//!
//! Per instance and in memory: bounded in entries and time. Another instance behind the same
//! balancer has its own record, so a reused key that lands elsewhere is not caught there.

use std::time::Duration;

use moka::sync::Cache;
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// Keys remembered at most (oldest or least used go first beyond it); ~100 bytes each.
pub(crate) const IDEMPOTENCY_RECORD_CAPACITY: u64 = 100_000;
/// How long a key stays bound to its first body.
pub(crate) const IDEMPOTENCY_RECORD_TTL: Duration = Duration::from_secs(24 * 3600);

/// What the record says about a keyed request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyUse {
    /// First seen here (now recorded), or seen before with the same body: publish.
    Publish,
    /// Seen before with another body or content type: refuse.
    Reused,
}

/// Event id (the scoped UUIDv5 of the key) → SHA-256 of the first request's content type and
/// body. Injected through [`crate::state::AppState`]; kept across config reloads.
#[derive(Clone)]
pub(crate) struct IdempotencyRecord {
    seen: Cache<Uuid, [u8; 32]>,
}

impl std::fmt::Debug for IdempotencyRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdempotencyRecord")
            .field("entries", &self.seen.entry_count())
            .finish()
    }
}

impl Default for IdempotencyRecord {
    fn default() -> Self {
        Self::new(IDEMPOTENCY_RECORD_CAPACITY, IDEMPOTENCY_RECORD_TTL)
    }
}

impl IdempotencyRecord {
    /// A record of at most `capacity` keys, each kept `ttl` from its first use.
    pub(crate) fn new(capacity: u64, ttl: Duration) -> Self {
        Self {
            seen: Cache::builder()
                .max_capacity(capacity)
                .time_to_live(ttl)
                .build(),
        }
    }

    /// Records `event_id` with this body if it is new; otherwise compares. The first body
    /// stays bound to the key for the TTL whatever became of its publish: forgetting it after
    /// a failure could let a concurrent retry of the first body and a different body both be
    /// published under one id.
    pub(crate) fn check(&self, event_id: Uuid, content_type: Option<&str>, body: &[u8]) -> KeyUse {
        let fingerprint = fingerprint(content_type, body);
        // `entry().or_insert` is atomic per key: of two concurrent first uses with different
        // bodies, exactly one is recorded and the other is refused.
        let entry = self.seen.entry(event_id).or_insert(fingerprint);
        if entry.is_fresh() || *entry.value() == fingerprint {
            KeyUse::Publish
        } else {
            KeyUse::Reused
        }
    }
}

/// SHA-256 over the content type (length-prefixed, so type and body cannot trade bytes) and
/// the body.
fn fingerprint(content_type: Option<&str>, body: &[u8]) -> [u8; 32] {
    let content_type = content_type.unwrap_or("").as_bytes();
    let mut hash = Sha256::new();
    hash.update((content_type.len() as u64).to_be_bytes());
    hash.update(content_type);
    hash.update(body);
    hash.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_body_publishes_again_another_body_is_refused() {
        let record = IdempotencyRecord::default();
        let id = Uuid::now_v7();
        let json = Some("application/json");
        assert_eq!(record.check(id, json, b"{\"a\":1}"), KeyUse::Publish);
        assert_eq!(record.check(id, json, b"{\"a\":1}"), KeyUse::Publish);
        assert_eq!(record.check(id, json, b"{\"a\":2}"), KeyUse::Reused);
        assert_eq!(
            record.check(id, Some("text/plain"), b"{\"a\":1}"),
            KeyUse::Reused
        );
        // The refused body did not replace the first one.
        assert_eq!(record.check(id, json, b"{\"a\":1}"), KeyUse::Publish);
        // Other ids are independent.
        assert_eq!(record.check(Uuid::now_v7(), json, b"x"), KeyUse::Publish);
    }

    #[test]
    fn content_type_and_body_cannot_trade_bytes() {
        assert_ne!(
            fingerprint(Some("application/jsonx"), b"{}"),
            fingerprint(Some("application/json"), b"x{}")
        );
        assert_ne!(fingerprint(None, b""), fingerprint(Some(""), b"\0"));
    }
}
