//! Upstream HTTP: load-balanced targets with passive health, pooled keep-alive connections,
//! and the header rules for what crosses the proxy in each direction.
//!
//! A request goes to the next healthy target round-robin. A target that refuses or times out
//! the TCP connect is skipped for `fail_timeout` and the request moves on to the next target
//! (safe: nothing was sent). Once something was sent, no retry here: the caller maps the error
//! to 502, and the whole exchange is bounded by the upstream `timeout` (→ 504).

mod body;
mod deadline;
mod headers;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::body::Body;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, Method, Request, Response, Uri};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

pub(crate) use body::{ClientBodyError, OutgoingBody};
pub(crate) use deadline::DeadlineBody;
pub(crate) use headers::{
    ForwardContext, IDENTITY_HEADER_PREFIX, response_headers, upstream_request_headers,
};
pub(crate) use headers::{
    X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO, is_trusted, peer, request_host,
};

use crate::config::UpstreamConfig;
use crate::shared::ErrorChain;
use crate::tls::https_connector;

/// How long an idle pooled connection to a target is kept. Below typical upstream keep-alive
/// timeouts would be ideal, but the client also retries a request whose pooled connection was
/// closed before it was written, so a race costs no error.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a request to an upstream failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum UpstreamError {
    /// No target accepted a connection.
    #[error("no upstream target accepted a connection")]
    Unreachable,
    /// A target accepted the request but the exchange failed (reset, malformed response).
    #[error("the upstream exchange failed")]
    Failed,
    /// The client's body could not be sent (too large, stalled, broken): the client's fault.
    #[error("{0}")]
    ClientBody(ClientBodyError),
}

struct Target {
    scheme: Scheme,
    authority: Authority,
    /// Milliseconds since `Upstreams::epoch` until which this target is skipped.
    down_until_ms: AtomicU64,
}

/// One `[upstreams.NAME]`: its targets and its own connection pool.
pub(crate) struct Upstream {
    name: Arc<str>,
    targets: Vec<Target>,
    next: AtomicUsize,
    timeout: Duration,
    fail_timeout: Duration,
    client: Client<HttpsConnector<HttpConnector>, Body>,
    epoch: Instant,
    /// What it was built from: a reload keeps this upstream (pool and health) when unchanged.
    config: UpstreamConfig,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.name)
            .field("targets", &self.targets.len())
            .finish_non_exhaustive()
    }
}

/// All configured upstreams, by name.
#[derive(Debug, Default)]
pub(crate) struct Upstreams {
    by_name: HashMap<String, Arc<Upstream>>,
}

impl Upstreams {
    /// Builds clients for every upstream, keeping from `previous` (the config before a reload)
    /// every upstream whose settings (and TLS files) did not change: its pooled connections
    /// and passive-health marks survive.
    pub(crate) fn reusing(
        config: &std::collections::BTreeMap<String, UpstreamConfig>,
        previous: Option<&Upstreams>,
    ) -> Self {
        let epoch = Instant::now();
        let by_name = config
            .iter()
            .map(|(name, cfg)| {
                if let Some(kept) = previous
                    .and_then(|p| p.by_name.get(name))
                    .filter(|u| u.config == *cfg)
                {
                    return (name.clone(), kept.clone());
                }
                let mut http = HttpConnector::new();
                http.set_connect_timeout(Some(cfg.connect_timeout));
                http.set_nodelay(true);
                let connector = https_connector(&cfg.tls, http);
                let client = Client::builder(TokioExecutor::new())
                    .pool_idle_timeout(POOL_IDLE_TIMEOUT)
                    // Without a pool timer hyper-util never starts its idle-eviction task, and
                    // idle connections (each holding a read buffer that grew with the largest
                    // responses it carried) are only dropped when the next request to the same
                    // upstream checks one out: after a burst they stayed, and their memory.
                    .pool_timer(TokioTimer::new())
                    .build(connector);
                let targets = cfg
                    .targets
                    .iter()
                    .map(|t| Target {
                        scheme: t.scheme.clone(),
                        authority: t.authority.clone(),
                        down_until_ms: AtomicU64::new(0),
                    })
                    .collect();
                let upstream = Upstream {
                    name: Arc::from(name.as_str()),
                    targets,
                    next: AtomicUsize::new(0),
                    timeout: cfg.timeout,
                    fail_timeout: cfg.fail_timeout,
                    client,
                    epoch,
                    config: cfg.clone(),
                };
                (name.clone(), Arc::new(upstream))
            })
            .collect();
        Self { by_name }
    }

    /// The upstream called `name`, if configured.
    pub(crate) fn get(&self, name: &str) -> Option<Arc<Upstream>> {
        self.by_name.get(name).cloned()
    }
}

/// Whether a TLS error sits in `error`'s source chain: rustls reports every TLS failure (a
/// refused certificate, an alert from the peer) as an `io::Error` of kind `InvalidData`, which
/// over h2 reaches us re-created from its message, so the kind is what survives.
fn is_tls_refusal(error: &(dyn std::error::Error + 'static)) -> bool {
    std::iter::successors(Some(error), |e| e.source()).any(|e| {
        e.is::<rustls::Error>()
            || e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::InvalidData)
    })
}

impl Upstream {
    /// The upstream's name in config.
    pub(crate) fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// The whole-exchange timeout.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Deadline for the streamed part of a response body (`body_timeout`).
    pub(crate) fn body_timeout(&self) -> Duration {
        self.config.body_timeout
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Target indexes to try, in order: healthy ones round-robin, then the ones marked down
    /// (soonest to recover first), so an upstream whose every target failed recently is still
    /// tried rather than refused outright.
    fn order(&self) -> Vec<usize> {
        let n = self.targets.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let now = self.now_ms();
        let (mut healthy, mut down): (Vec<usize>, Vec<usize>) = (0..n)
            .map(|k| (start + k) % n)
            .partition(|&i| self.targets[i].down_until_ms.load(Ordering::Relaxed) <= now);
        down.sort_by_key(|&i| self.targets[i].down_until_ms.load(Ordering::Relaxed));
        healthy.append(&mut down);
        healthy
    }

    /// Sends `method path_and_query` with `headers` (already filtered) and `body` to a target.
    /// The next target is tried only after a failed connect, and only while no target has
    /// read any of the body: a request whose body went out is never sent twice.
    pub(crate) async fn send(
        &self,
        method: &Method,
        path_and_query: &PathAndQuery,
        mut headers: HeaderMap,
        body: &OutgoingBody,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let order = self.order();
        let last = order.len().saturating_sub(1);
        for (attempt, i) in order.into_iter().enumerate() {
            let target = &self.targets[i];
            let uri = Uri::builder()
                .scheme(target.scheme.clone())
                .authority(target.authority.clone())
                .path_and_query(path_and_query.clone())
                .build()
                .map_err(|_| UpstreamError::Failed)?;
            // After a connect failure that still read the body (it cannot): nothing to resend.
            let Some(body) = body.attempt() else {
                return Err(UpstreamError::Unreachable);
            };
            let mut request = Request::builder()
                .method(method.clone())
                .uri(uri)
                .body(body)
                .map_err(|_| UpstreamError::Failed)?;
            // Only an attempt that may be followed by another needs its own copy.
            *request.headers_mut() = if attempt == last {
                std::mem::take(&mut headers)
            } else {
                headers.clone()
            };
            match self.client.request(request).await {
                Ok(response) => {
                    target.down_until_ms.store(0, Ordering::Relaxed);
                    return Ok(response);
                }
                // A TLS 1.3 server refuses a client certificate only after the client's half of
                // the handshake: the error surfaces on the request, yet the server never read
                // it, so it is a failed connect as well.
                Err(e)
                    if e.is_connect() || (target.scheme == Scheme::HTTPS && is_tls_refusal(&e)) =>
                {
                    let until = self.now_ms() + self.fail_timeout.as_millis() as u64;
                    target.down_until_ms.store(until, Ordering::Relaxed);
                    tracing::warn!(upstream = %self.name, target = %target.authority, error = %ErrorChain(&e), "Upstream target failed to connect (TCP or TLS); skipping it for a while.");
                }
                Err(e) => {
                    if let Some(cause) = ClientBodyError::find(&e) {
                        return Err(UpstreamError::ClientBody(cause));
                    }
                    tracing::warn!(upstream = %self.name, target = %target.authority, error = %ErrorChain(&e), "Upstream exchange failed.");
                    return Err(UpstreamError::Failed);
                }
            }
        }
        Err(UpstreamError::Unreachable)
    }
}
