//! Logging setup and the per-request log line.
//!
//! Logs go to stderr as text or JSON. The request span carries method, path and request id;
//! the completion line adds the route name (from a response extension set by the handler),
//! status and latency. `Authorization` is marked sensitive before the trace layer, so it can
//! never be printed.

use std::time::Duration;

use axum::extract::Request;
use clap::ValueEnum;
use tracing::Span;
use tracing_subscriber::EnvFilter;

/// Log output format.
#[derive(Debug, Clone, Copy, Default, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Default log filter. lapin logs every returned (unroutable) message at WARN with its full
/// body, which may carry personal data; we report those as 503s ourselves.
pub const DEFAULT_FILTER: &str = "info,lapin=warn,lapin::returned_messages=error";

/// The matched route's name, attached to responses for the access log.
#[derive(Debug, Clone)]
pub struct RouteName(pub std::sync::Arc<str>);

/// Installs the global subscriber. `filter` is an `EnvFilter` directive (e.g. from `RUST_LOG`).
pub fn init(format: LogFormat, filter: Option<&str>) {
    let filter = EnvFilter::try_new(filter.unwrap_or(DEFAULT_FILTER))
        .unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second init (tests) is harmless: keep the first subscriber.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// The request span: method, path (never the query, which may carry secrets) and request id.
pub fn make_span(request: &Request) -> Span {
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    tracing::info_span!(
        "request",
        method = %request.method(),
        path = %request.uri().path(),
        request_id,
    )
}

/// The access-log line.
pub fn on_response<B>(response: &http::Response<B>, latency: Duration, _span: &Span) {
    let route = response
        .extensions()
        .get::<RouteName>()
        .map_or("-", |r| &r.0);
    tracing::info!(
        status = response.status().as_u16(),
        route,
        latency_ms = latency.as_secs_f64() * 1000.0,
        "Request completed."
    );
}
