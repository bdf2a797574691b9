//! amqp-gateway: an HTTP front door whose writes become confirmed RabbitMQ events.
//!
//! Module map (request flow in `docs/architecture.md`):
//!
//! - [`config`]: the TOML file → validated [`config::Config`] (interpolation, rules).
//! - [`server`]: [`run`] — listeners, graceful shutdown, drain.
//! - [`app`]: [`app()`] — the public router and its middleware stack.
//! - [`routes`]: handlers; [`routes::publish`] turns a write into an event.
//! - [`amqp`]: the pooled confirm-mode channel set and confirmed publishing (no HTTP types).
//! - [`admin`]: `/healthz`, `/readyz` on the admin listener.
//! - [`error`]: [`error::GatewayError`], the one error → response mapping.
//! - [`telemetry`]: logging setup and the access-log line.
//! - [`template`]: `{name}` templates for routing keys, `Location` and path rewrites.

pub mod admin;
pub mod amqp;
pub mod app;
pub mod config;
pub mod error;
pub mod routes;
pub mod server;
pub mod state;
pub mod telemetry;
pub mod template;

pub use app::app;
pub use config::Config;
pub use server::{RunError, run};
