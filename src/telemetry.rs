//! Logging setup and the per-request log line.
//!
//! Logs go to stderr as text or JSON, through a writer thread (lines are formatted on the
//! request's thread, queued, and written in batches: no `write(2)` per line on the hot path;
//! the queue blocks rather than drops when full). Text logs are coloured only on a terminal. The request span carries method, path and request id;
//! the completion line adds the route name (from a response extension set by the handler),
//! status and latency. `Authorization` is marked sensitive before the trace layer, so it can
//! never be printed.

use std::io::IsTerminal;
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

/// Keeps the log writer thread; dropping it writes out what is still queued. Hold it until the
/// process exits.
#[must_use = "dropping the guard stops the log writer"]
#[derive(Debug)]
pub struct LogGuard {
    _worker: Option<tracing_appender::non_blocking::WorkerGuard>,
}

/// Installs the global subscriber. `filter` is an `EnvFilter` directive (e.g. from `RUST_LOG`).
pub fn init(format: LogFormat, filter: Option<&str>) -> LogGuard {
    let filter = EnvFilter::try_new(filter.unwrap_or(DEFAULT_FILTER))
        .unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let ansi = std::io::stderr().is_terminal();
    // Flushed whenever the queue runs empty, so a line is never held back while idle.
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("amqp-gateway-log")
        .finish(std::io::BufWriter::with_capacity(
            64 * 1024,
            std::io::stderr(),
        ));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(writer);
    // A second init (tests) is harmless: keep the first subscriber.
    let installed = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    LogGuard {
        _worker: installed.is_ok().then_some(guard),
    }
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
