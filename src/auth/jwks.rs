//! A JWKS URL: fetched at start-up, refreshed every `jwks_refresh`, refetched on an unknown
//! `kid` at most once per `jwks_cooldown`, one fetch at a time.
//!
//! A failed fetch keeps the last good key set (stale-if-error) for up to `jwks_max_stale`
//! since the last success; after that the set is emptied, so a key the issuer has withdrawn
//! cannot stay trusted forever while its JWKS endpoint is down.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use super::keys::KeySet;
use crate::config::JwksUrl;
use crate::keys::{JwsAlgorithm, MAX_JWKS_BYTES, parse_jwks};
use crate::shared::ErrorChain;
use crate::tls::https_connector;

/// Settings shared by every JWKS URL (from `[auth]`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct JwksTiming {
    pub(crate) refresh: Duration,
    pub(crate) cooldown: Duration,
    pub(crate) timeout: Duration,
    pub(crate) max_stale: Duration,
}

/// One JWKS URL and its current key set.
pub(crate) struct RemoteJwks {
    /// `auth.keys[i]`, for logs.
    pub(crate) index: usize,
    url: Uri,
    /// Every key taken from this set verifies this algorithm and no other.
    pub(crate) alg: JwsAlgorithm,
    keys: ArcSwap<KeySet>,
    timing: JwksTiming,
    /// `http://` (loopback only, checked at config time) or `https://` with the key's `tls`.
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    /// Time base for `last_attempt_ms`.
    epoch: Instant,
    /// When the last fetch started, in ms after `epoch` (+1, so 0 means never).
    last_attempt_ms: AtomicU64,
    /// Held while fetching: concurrent refetches wait for the one in flight.
    fetch_lock: tokio::sync::Mutex<()>,
    /// Last success and the SHA-256 of the document then served.
    last_good: Mutex<(Instant, [u8; 32])>,
}

/// What a refresh did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refreshed {
    /// The document changed; keys may have been removed.
    Changed,
    /// Same document as before.
    Unchanged,
    /// The fetch failed; the last good set is kept.
    Failed,
    /// The fetch failed for longer than `max_stale`; the set was emptied.
    Expired,
    /// No fetch: within the cooldown of the last one.
    CoolingDown,
}

impl RemoteJwks {
    /// Fetches the URL once; fails when it cannot be fetched or holds no usable key. An
    /// `https://` URL is fetched over TLS with the key's `tls` table (or the defaults).
    pub(crate) async fn start(
        index: usize,
        source: &JwksUrl,
        timing: JwksTiming,
    ) -> Result<Self, String> {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(timing.timeout));
        let client =
            Client::builder(TokioExecutor::new()).build(https_connector(&source.tls, http));
        let now = Instant::now();
        let remote = RemoteJwks {
            index,
            url: source.url.clone(),
            alg: source.algorithm,
            keys: ArcSwap::from_pointee(KeySet::default()),
            timing,
            client,
            epoch: now,
            last_attempt_ms: AtomicU64::new(0),
            fetch_lock: tokio::sync::Mutex::new(()),
            last_good: Mutex::new((now, [0; 32])),
        };
        let (set, digest) = remote.fetch().await?;
        remote.install(set, digest);
        Ok(remote)
    }

    /// The current key set.
    pub(crate) fn keys(&self) -> arc_swap::Guard<Arc<KeySet>> {
        self.keys.load()
    }

    /// Periodic refresh: always fetches (after any fetch in flight).
    pub(crate) async fn refresh(&self) -> Refreshed {
        let _flight = self.fetch_lock.lock().await;
        self.fetch_and_install().await
    }

    /// Refetch for an unknown `kid`: at most one fetch per cooldown, counting every fetch.
    /// Requests that arrive while a fetch is in flight wait for it instead of starting another.
    pub(crate) async fn refetch_for_unknown_kid(&self) -> Refreshed {
        // Cheap check first, so a flood of random kids during the cooldown never queues.
        if self.cooling_down() {
            return Refreshed::CoolingDown;
        }
        let _flight = self.fetch_lock.lock().await;
        // Whoever held the lock may just have fetched: the caller looks the kid up again.
        if self.cooling_down() {
            return Refreshed::CoolingDown;
        }
        self.fetch_and_install().await
    }

    fn cooling_down(&self) -> bool {
        let last = self.last_attempt_ms.load(Ordering::Acquire);
        if last == 0 {
            return false;
        }
        let since_epoch = self.epoch.elapsed().as_millis() as u64 + 1;
        since_epoch.saturating_sub(last) < self.timing.cooldown.as_millis() as u64
    }

    async fn fetch_and_install(&self) -> Refreshed {
        match self.fetch().await {
            Ok((set, digest)) => self.install(set, digest),
            Err(why) => {
                let stale_for = self.last_good_at().elapsed();
                if stale_for > self.timing.max_stale && self.keys.load().len() > 0 {
                    self.keys.store(Arc::new(KeySet::default()));
                    tracing::error!(
                        key = self.index,
                        url = %self.url,
                        why,
                        stale_s = stale_for.as_secs(),
                        "JWKS unreachable past auth.jwks_max_stale; its keys are dropped."
                    );
                    return Refreshed::Expired;
                }
                tracing::warn!(
                    key = self.index,
                    url = %self.url,
                    why,
                    "JWKS fetch failed; keeping the last good key set."
                );
                Refreshed::Failed
            }
        }
    }

    fn last_good_at(&self) -> Instant {
        self.last_good
            .lock()
            .map_or_else(|p| p.into_inner().0, |g| g.0)
    }

    fn install(&self, set: KeySet, digest: [u8; 32]) -> Refreshed {
        let changed = {
            let mut last = match self.last_good.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            let changed = last.1 != digest;
            *last = (Instant::now(), digest);
            changed
        };
        if !changed {
            return Refreshed::Unchanged;
        }
        tracing::info!(
            key = self.index,
            url = %self.url,
            keys = set.len(),
            kids = ?set.kids(),
            "JWKS loaded."
        );
        self.keys.store(Arc::new(set));
        Refreshed::Changed
    }

    /// One bounded GET: status 200, at most [`MAX_JWKS_BYTES`], within `timeout`.
    async fn fetch(&self) -> Result<(KeySet, [u8; 32]), String> {
        let started = self.epoch.elapsed().as_millis() as u64 + 1;
        self.last_attempt_ms.store(started, Ordering::Release);
        let request = Request::get(self.url.clone())
            .header(header::ACCEPT, "application/jwk-set+json, application/json")
            .header(header::USER_AGENT, "amqp-gateway")
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("request: {e}"))?;
        let body = tokio::time::timeout(self.timing.timeout, async {
            let response = self
                .client
                .request(request)
                .await
                // The reason (`invalid peer certificate: UnknownIssuer`, `Connection
                // refused`) is among the error's sources, not in its own message.
                .map_err(|e| format!("request failed: {}", ErrorChain(&e)))?;
            if response.status() != StatusCode::OK {
                return Err(format!("status {}", response.status().as_u16()));
            }
            Limited::new(response.into_body(), MAX_JWKS_BYTES)
                .collect()
                .await
                .map(|b| b.to_bytes())
                .map_err(|e| format!("body: {e}"))
        })
        .await
        .map_err(|_| format!("timed out after {:?}", self.timing.timeout))??;
        let digest: [u8; 32] = Sha256::digest(&body).into();
        let keys = parse_jwks(&body, self.alg)?;
        let (set, duplicates) = KeySet::new(keys.into_iter().map(Arc::new));
        if duplicates > 0 {
            tracing::warn!(
                key = self.index,
                duplicates,
                "JWKS repeats a kid; the first key is used."
            );
        }
        Ok((set, digest))
    }

    /// Refreshes every `refresh` until the task is aborted; `on_change` runs after a change
    /// (the authenticator empties its token cache then).
    pub(crate) async fn refresh_loop(self: Arc<Self>, on_change: impl Fn() + Send + 'static) {
        let mut tick =
            tokio::time::interval_at(Instant::now() + self.timing.refresh, self.timing.refresh);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if matches!(
                self.refresh().await,
                Refreshed::Changed | Refreshed::Expired
            ) {
                on_change();
            }
        }
    }
}
