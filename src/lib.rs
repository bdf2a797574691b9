//! amqp-gateway: an HTTP front door whose writes become confirmed RabbitMQ events.
//!
//! The public API is what a binary or an embedding needs: [`Config`] (the TOML file →
//! validated types, in [`config`]), [`run`] (listeners, graceful shutdown, drain), [`app()`]
//! with [`AppState`] (the public router, e.g. for tests without a broker), and the contract
//! generator [`spec`]; [`telemetry`] sets up logging, [`tls`] the crypto provider. Everything
//! else is `pub(crate)`.
//!
//! Module map (request flow in `docs/architecture.md`):
//!
//! - `config`: the TOML file → validated [`Config`] (interpolation, rules).
//! - `server`: [`run`] — listeners, graceful shutdown, drain.
//! - `app`: [`app()`] — the public router and its middleware stack.
//! - `routes`: handlers; `routes::publish` turns a write into an event, `routes::read`
//!   proxies a read through the cache.
//! - `auth`: JWT verification (keys, JWKS refresh), the caller's identity, and the per-route
//!   `RequireAuthLayer`; `cors`: CORS layers from config.
//! - `amqp`: the pooled confirm-mode channel set and confirmed publishing, and cache
//!   invalidations between instances (`amqp::invalidation`) (no HTTP types).
//! - `proxy`: upstream targets, load balancing, passive health, forwarded headers.
//! - `cache`: the RFC 9111 shared cache, ETags, request coalescing, and what keeps it
//!   coherent across instances (`cache::Coherence`).
//! - `admin`: `/healthz`, `/readyz`, `/metrics`, `POST /reload` and the contract documents on
//!   the admin listener.
//! - `metrics`: Prometheus metrics and the request-metrics layer.
//! - `ratelimit`: per-route rate limits (governor) as a tower layer, after auth.
//! - `error`: `GatewayError`, the one error → response mapping.
//! - [`telemetry`]: logging setup and the access-log line.
//! - [`schema`]: JSON Schemas of write routes, compiled at load, checked before publishing.
//! - `template`: `{name}` templates for routing keys, `Location` and path rewrites.
//! - [`spec`]: the published contract, AsyncAPI 3.0 (events) and OpenAPI 3.1 (routes),
//!   generated from the config; `amqp-gateway spec` and the admin `/asyncapi.json`,
//!   `/openapi.json`.
//! - [`keys`]: JWT verification keys (secrets, PEM, JWKS) parsed and pinned to one algorithm;
//!   loaded by [`config`], looked up by `auth`.
//! - [`tls`]: TLS client settings for upstreams, JWKS URLs and the broker (one crypto provider).

pub(crate) mod admin;
pub(crate) mod amqp;
pub(crate) mod app;
pub(crate) mod auth;
pub(crate) mod cache;
pub mod config;
pub(crate) mod cors;
pub(crate) mod error;
pub(crate) mod host;
pub(crate) mod idempotency;
pub mod keys;
pub(crate) mod metrics;
pub(crate) mod proxy;
pub(crate) mod ratelimit;
pub(crate) mod routes;
pub mod schema;
pub(crate) mod server;
mod shared;
pub mod spec;
pub(crate) mod state;
pub mod telemetry;
pub(crate) mod template;
pub mod tls;

pub use app::app;
pub use auth::AuthStartError;
pub use config::Config;
pub use server::{RunError, run};
pub use state::AppState;
