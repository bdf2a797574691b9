//! [`AppState`]: what handlers share, injected through axum's state (never global).
//!
//! [`crate::run`] builds it for the listeners it serves; [`AppState::from_config`] builds the
//! same state without a server, for tests and for embedding the router ([`crate::app()`]) in
//! another service.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use ipnet::IpNet;

use crate::amqp::ChannelSet;
use crate::amqp::invalidation::InvalidationPublisher;
use crate::auth::Authenticator;
use crate::cache::{Cache, Coherence};
use crate::config::{PublicHost, RoutePath};
use crate::idempotency::IdempotencyRecord;
use crate::metrics::Metrics;
use crate::proxy::Upstreams;
use crate::ratelimit::RateLimits;

/// Shared request-handling state. Cheap to clone.
#[derive(Clone, Debug)]
pub struct AppState {
    /// The validated route table, grouped by path.
    pub(crate) paths: Arc<[RoutePath]>,
    /// Publishing channels.
    pub(crate) channels: ChannelSet,
    /// `server.max_body_bytes`.
    pub(crate) max_body_bytes: usize,
    /// `server.body_read_timeout`.
    pub(crate) body_read_timeout: Duration,
    /// `server.max_json_depth`.
    pub(crate) max_json_depth: usize,
    /// `Retry-After` for broker-caused 503s.
    pub(crate) retry_after: Duration,
    /// Upstream clients for read routes.
    pub(crate) upstreams: Arc<Upstreams>,
    /// The shared response cache (present when a route caches).
    pub(crate) cache: Option<Arc<Cache>>,
    /// How hard read responses are compressed (`[compression]`).
    pub(crate) compression: crate::config::CompressionSettings,
    /// Invalidations, flushes and bypass: the state every cache of the process is built on.
    pub(crate) coherence: Arc<Coherence>,
    /// Publishes invalidations to the other instances (with `cache.coherence`).
    pub(crate) invalidations: Option<InvalidationPublisher>,
    /// This process's id among the instances (in invalidation messages, `/readyz`).
    pub(crate) instance: Arc<str>,
    /// `server.trusted_proxies`.
    pub(crate) trusted_proxies: Arc<[IpNet]>,
    /// `server.public_host`: the only host requests may name; sent upstream as
    /// `X-Forwarded-Host`.
    pub(crate) public_host: Option<PublicHost>,
    /// Token verification (present when `[auth]` is configured).
    pub(crate) auth: Option<Authenticator>,
    /// Prometheus metrics.
    pub(crate) metrics: Arc<Metrics>,
    /// Every route's rate limiters (swept by a task of [`crate::run`]).
    pub(crate) rate_limits: Arc<RateLimits>,
    /// Which body each `Idempotency-Key` was first used with (per instance).
    pub(crate) idempotency: IdempotencyRecord,
    /// Set when shutdown starts, so `/readyz` takes the instance out of rotation.
    pub(crate) draining: Arc<AtomicBool>,
}

impl AppState {
    /// The request-handling state for `config`, without listeners: for tests and for embedding
    /// [`crate::app()`] in another service.
    ///
    /// It is the state [`crate::run`] serves, minus what belongs to a running server: no
    /// invalidation subscriber (with `cache.coherence` the cache therefore stays bypassed), no
    /// reloads, no shutdown drain. The publishing channels start connecting to `[amqp]` in the
    /// background and this returns at once: until they are up — forever, when the broker is
    /// unreachable — publish routes answer 503 `broker-unavailable`. Nothing blocks on the
    /// broker; the channels' supervisors stop when the last clone of the state is dropped.
    /// Must be called inside a Tokio runtime.
    ///
    /// # Errors
    ///
    /// The `[amqp]` settings cannot make a connection pool, or token verification cannot
    /// start (`[auth]` with a key that does not load or a JWKS URL that cannot be fetched).
    ///
    /// ```no_run
    /// # async fn demo(config: amqp_gateway::Config) -> Result<(), amqp_gateway::RunError> {
    /// let state = amqp_gateway::AppState::from_config(&config).await?;
    /// let router = amqp_gateway::app(state);
    /// # drop(router);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn from_config(config: &crate::Config) -> Result<Self, crate::RunError> {
        crate::server::standalone_state(config).await
    }
}
