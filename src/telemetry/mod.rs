//! Logging setup and the per-request log line.
//!
//! Logs go to stderr as text or JSON. Lines are formatted on the request's thread and written
//! out in batches by a writer thread (`writer`): no `write(2)` and no wake-up per line on the
//! hot path, and no line is ever dropped. Text logs are coloured only on a terminal.
//! Each response gets one access-log line from [`AccessLogLayer`] (method, path, request id,
//! route name, status, latency); no header value is ever logged.

mod access;
mod format;
mod writer;

use std::io::IsTerminal;

use clap::ValueEnum;
use http::HeaderName;
use tracing_subscriber::EnvFilter;

pub use access::{AccessLog, AccessLogLayer, ResponseFuture as AccessLogFuture, TARGET};

/// The request-id header: taken from the client (or nginx) when present, else generated.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

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
    _writer: Option<writer::FlushGuard>,
}

/// Installs the global subscriber. `filter` is an `EnvFilter` directive (e.g. from `RUST_LOG`).
pub fn init(format: LogFormat, filter: Option<&str>) -> LogGuard {
    let filter = EnvFilter::try_new(filter.unwrap_or(DEFAULT_FILTER))
        .unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let ansi = std::io::stderr().is_terminal();
    let (writer, guard) = writer::BatchWriter::new(std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(writer);
    // A second init (tests) is harmless: keep the first subscriber.
    let installed = match format {
        LogFormat::Text => builder
            .event_format(format::LineFormat::new(
                tracing_subscriber::fmt::format(),
                false,
            ))
            .try_init(),
        LogFormat::Json => builder
            .json()
            .event_format(format::LineFormat::new(
                tracing_subscriber::fmt::format().json().flatten_event(true),
                true,
            ))
            .try_init(),
    };
    LogGuard {
        _writer: installed.is_ok().then_some(guard),
    }
}

/// What the module's tests share.
#[cfg(test)]
pub(crate) mod test_support {
    use std::io::{self, Write};
    use std::sync::{Arc, Mutex, PoisonError};

    /// Collects what is written, for assertions.
    #[derive(Clone, Default)]
    pub(crate) struct Sink(pub(crate) Arc<Mutex<Vec<u8>>>);

    impl Sink {
        /// Everything written so far.
        pub(crate) fn bytes(&self) -> Vec<u8> {
            self.0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone()
        }
    }

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
}
