//! [`run`]: serve the public and admin listeners until shutdown, then drain.
//!
//! Shutdown order: `/readyz` turns false, both listeners stop accepting, in-flight requests
//! (each waiting on its confirm) get up to `server.shutdown_timeout`, and then the AMQP
//! channels and connections are closed cleanly.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use axum::Router;
use axum::extract::ConnectInfo;
use http::Request;
use http::header::{CONNECTION, HeaderValue};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::ServiceExt;

use arc_swap::ArcSwap;

use crate::amqp::invalidation::{
    DecodeError, Invalidation, InvalidationPublisher, InvalidationSink, Subscriber,
};
use crate::amqp::{ChannelSet, PoolSettings};
use crate::cache::{Cache, Coherence};
use crate::config::{Config, RouteAction, ServerConfig};
use crate::idempotency::IdempotencyRecord;
use crate::metrics::Metrics;
use crate::proxy::Upstreams;
use crate::ratelimit::{RateLimits, SWEEP_INTERVAL};
use crate::spec::Contract;
use crate::state::AppState;
use crate::{admin, app};

mod close;
mod write_timeout;
use write_timeout::WriteTimeout;

/// Why the gateway could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The AMQP pool could not be built (not a connect failure: those are retried).
    #[error("{0}")]
    Amqp(String),
    /// Token verification could not start (a JWKS URL that cannot be fetched, a bad key).
    #[error("auth: {0}")]
    Auth(#[from] crate::auth::AuthStartError),
    /// A listener failed.
    #[error("server error: {0}")]
    Io(#[from] std::io::Error),
}

/// Runs the gateway on the given listeners until `shutdown` resolves, then drains.
///
/// Returns once both listeners are closed and the AMQP connections are shut, or the
/// `shutdown_timeout` has passed.
pub async fn run(
    config: Config,
    listener: TcpListener,
    admin_listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let pool_settings = PoolSettings::from(&config.amqp);
    let channels = ChannelSet::start(pool_settings.clone()).map_err(RunError::Amqp)?;
    let lasting = Lasting::new(&config, channels.clone());
    let subscriber = if config.cache.coherence {
        let sink = Arc::new(CoherenceSink {
            coherence: lasting.coherence.clone(),
            metrics: lasting.metrics.clone(),
        });
        match Subscriber::start(
            &pool_settings,
            &config.cache.invalidation_exchange,
            lasting.instance.clone(),
            sink,
        ) {
            Ok(subscriber) => Some(subscriber),
            Err(e) => {
                channels.close(Duration::from_secs(1)).await;
                return Err(RunError::Amqp(e));
            }
        }
    } else {
        None
    };
    // A JWKS URL that cannot be fetched stops start-up (the gateway never serves with a cold
    // key set): close the pool (and subscriber) we just started.
    let state = match build_state(&config, &lasting, None).await {
        Ok(state) => state,
        Err(e) => {
            if let Some(subscriber) = &subscriber {
                subscriber.close(Duration::from_secs(1)).await;
            }
            channels.close(Duration::from_secs(1)).await;
            return Err(e);
        }
    };
    let draining = lasting.draining.clone();
    let router = Arc::new(ArcSwap::from_pointee(app(state.clone())));
    let reloader = Arc::new(Reloader {
        lasting,
        router: router.clone(),
        contract: ArcSwap::from_pointee(Contract::new(&config)),
        current: tokio::sync::Mutex::new((config.clone(), state.clone())),
    });
    // Only a config read from a file can be read again.
    #[cfg(unix)]
    let hangups = match config.source {
        Some(_) => Some(spawn_sighup_reloads(reloader.clone())?),
        None => None,
    };

    let (stop_tx, stop_rx) = watch::channel(false);
    let delay = config.server.shutdown_delay;
    tokio::spawn(async move {
        shutdown.await;
        // Readiness fails first; listeners keep serving (with `Connection: close`) for
        // `shutdown_delay` so load balancers take the instance out before it refuses
        // connections.
        draining.store(true, Ordering::Relaxed);
        tracing::info!(
            delay_ms = delay.as_millis() as u64,
            "Shutdown requested; draining."
        );
        tokio::time::sleep(delay).await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    tracing::info!(
        listen = %listener.local_addr()?,
        admin = %admin_listener.local_addr()?,
        routes = config.routes.len(),
        "Gateway listening."
    );
    let limits = HttpLimits::from(&config.server);
    let public = serve_public(
        listener,
        router,
        limits,
        state.draining.clone(),
        stopped(stop_rx.clone()),
    );
    let admin = axum::serve(admin_listener, admin::router(state, reloader))
        .with_graceful_shutdown(stopped(stop_rx.clone()))
        .into_future();
    let servers = async { tokio::try_join!(public, admin) };
    tokio::pin!(servers);

    let deadline = config.server.shutdown_timeout;
    let started_drain;
    tokio::select! {
        result = &mut servers => {
            result?;
            started_drain = Instant::now();
        }
        () = stopped(stop_rx) => {
            started_drain = Instant::now();
            tracing::info!(deadline_ms = deadline.as_millis() as u64, "Shutting down; draining in-flight requests.");
            match tokio::time::timeout(deadline, &mut servers).await {
                Ok(result) => { result?; }
                Err(_) => tracing::warn!("In-flight requests did not finish within the shutdown deadline."),
            }
        }
    }
    #[cfg(unix)]
    if let Some(task) = hangups {
        task.abort();
    }
    let remaining = deadline.saturating_sub(started_drain.elapsed());
    if let Some(subscriber) = &subscriber {
        subscriber.close(Duration::from_secs(1)).await;
    }
    channels
        .close(remaining.max(std::time::Duration::from_secs(1)))
        .await;
    tracing::info!("Gateway stopped.");
    Ok(())
}

/// What every config shares, built once at start-up and kept across reloads.
struct Lasting {
    channels: ChannelSet,
    metrics: Arc<Metrics>,
    draining: Arc<AtomicBool>,
    /// Kept across reloads: a retry after a reload must still meet the body it was first
    /// sent with.
    idempotency: IdempotencyRecord,
    /// Invalidations and bypass: every cache built on reload shares it, so the subscriber
    /// (started once, in [`run`]; `cache.coherence` needs a restart to change) keeps acting
    /// on the cache in use.
    coherence: Arc<Coherence>,
    /// With `cache.coherence`.
    invalidations: Option<InvalidationPublisher>,
    instance: Arc<str>,
}

impl Lasting {
    /// What `config` starts with: fresh metrics, a new instance id, no idempotency record yet.
    fn new(config: &Config, channels: ChannelSet) -> Self {
        let instance: Arc<str> = uuid::Uuid::now_v7().to_string().into();
        Lasting {
            channels,
            metrics: Arc::new(Metrics::new()),
            draining: Arc::new(AtomicBool::new(false)),
            idempotency: IdempotencyRecord::default(),
            invalidations: config.cache.coherence.then(|| {
                InvalidationPublisher::new(&config.cache.invalidation_exchange, instance.clone())
            }),
            // With coherence the cache starts bypassed: nothing is served before the
            // subscription is up, since an invalidation published before it would be missed.
            coherence: Coherence::new(config.cache.reinvalidate_after, !config.cache.coherence),
            instance,
        }
    }
}

/// The request-handling state of [`crate::state::AppState::from_config`]: [`run`]'s, without
/// listeners, invalidation subscriber, reloads or shutdown. The channel set starts connecting
/// in the background (publishes answer 503 until it is up, and forever when the broker is
/// unreachable); its supervisors stop when the last clone of the state is dropped.
pub(crate) async fn standalone_state(config: &Config) -> Result<AppState, RunError> {
    let pool_settings = PoolSettings::from(&config.amqp);
    let channels = ChannelSet::start(pool_settings).map_err(RunError::Amqp)?;
    let lasting = Lasting::new(config, channels.clone());
    match build_state(config, &lasting, None).await {
        Ok(state) => Ok(state),
        Err(e) => {
            channels.close(Duration::from_secs(1)).await;
            Err(e)
        }
    }
}

/// What the invalidation subscriber reports, applied to the cache and counted.
struct CoherenceSink {
    coherence: Arc<Coherence>,
    metrics: Arc<Metrics>,
}

impl InvalidationSink for CoherenceSink {
    fn subscribed(&self) {
        self.coherence.subscribed();
    }

    fn unsubscribed(&self) {
        self.coherence.unsubscribed();
    }

    fn received(&self, invalidation: &Invalidation) {
        self.metrics.invalidation("received");
        self.coherence.invalidate_written(
            &invalidation.path,
            invalidation.related.iter().map(String::as_str),
        );
    }

    fn unreadable(&self, _: &DecodeError) {
        // It may have been an invalidation: drop everything rather than risk serving around
        // it.
        self.metrics.invalidation("unreadable");
        self.coherence.flush();
    }
}

/// The request-handling state for `config`. With `previous` (a reload), upstreams whose
/// settings did not change keep their pools, and the cache its entries when `[cache]` did not
/// change; token verification always starts anew (key files and JWKS are read again).
async fn build_state(
    config: &Config,
    lasting: &Lasting,
    previous: Option<&AppState>,
) -> Result<AppState, RunError> {
    let auth = match &config.auth {
        Some(auth) => Some(crate::auth::Authenticator::start(auth).await?),
        None => None,
    };
    let caches = config
        .routes
        .iter()
        .any(|r| matches!(&r.action, RouteAction::Proxy(p) if p.cache.is_some()));
    let cache = caches.then(|| {
        previous
            .and_then(|p| p.cache.clone())
            .filter(|c| *c.settings() == config.cache)
            .unwrap_or_else(|| Cache::shared(&config.cache, lasting.coherence.clone()))
    });
    let trusted_proxies: Arc<[ipnet::IpNet]> = config.server.trusted_proxies.clone().into();
    // Buckets start afresh with each config; idle keys are swept by a task that ends once
    // this config's limits are dropped (the next reload, or shutdown).
    let rate_limits = Arc::new(RateLimits::new(
        &config.routes,
        trusted_proxies.clone(),
        lasting.metrics.clone(),
    ));
    if !rate_limits.is_empty() {
        tokio::spawn(RateLimits::sweep_every(
            Arc::downgrade(&rate_limits),
            SWEEP_INTERVAL,
        ));
    }
    Ok(AppState {
        auth,
        rate_limits,
        upstreams: Arc::new(Upstreams::reusing(
            &config.upstreams,
            previous.map(|p| &*p.upstreams),
        )),
        cache,
        compression: config.compression,
        coherence: lasting.coherence.clone(),
        invalidations: lasting.invalidations.clone(),
        instance: lasting.instance.clone(),
        trusted_proxies,
        public_host: config.server.public_host.clone(),
        metrics: lasting.metrics.clone(),
        paths: config.paths.clone().into(),
        channels: lasting.channels.clone(),
        max_body_bytes: config.server.max_body_bytes,
        body_read_timeout: config.server.body_read_timeout,
        max_json_depth: config.server.max_json_depth,
        retry_after: config.amqp.retry_after,
        draining: lasting.draining.clone(),
        idempotency: lasting.idempotency.clone(),
    })
}

/// Swaps in a new config: SIGHUP and the admin `POST /reload`.
pub(crate) struct Reloader {
    lasting: Lasting,
    router: Arc<ArcSwap<Router>>,
    /// The AsyncAPI and OpenAPI documents of the config in use, swapped with the router, so
    /// the admin endpoints never wait for a reload in progress (which holds `current`).
    contract: ArcSwap<Contract>,
    /// The config and state in use; held for the whole reload, so reloads never interleave.
    current: tokio::sync::Mutex<(Config, AppState)>,
}

/// A successful reload.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Reloaded {
    /// Routes now served.
    pub(crate) routes: usize,
}

impl Reloader {
    /// The published contract of the config being served.
    pub(crate) fn contract(&self) -> Arc<Contract> {
        self.contract.load_full()
    }

    /// Reads the config file again; when it is valid and needs no restart, serves it from the
    /// next request on. On any error the running config stays as it was.
    pub(crate) async fn reload(&self) -> Result<Reloaded, String> {
        let mut current = self.current.lock().await;
        let result = self.swap(&mut current).await;
        match &result {
            Ok(done) => {
                self.lasting.metrics.reload("ok");
                tracing::info!(routes = done.routes, "Config reloaded.");
            }
            Err(error) => {
                self.lasting.metrics.reload("error");
                tracing::error!(%error, "Config reload failed; the running config is unchanged.");
            }
        }
        result
    }

    async fn swap(&self, current: &mut (Config, AppState)) -> Result<Reloaded, String> {
        let path = current
            .0
            .source
            .clone()
            .ok_or("the running config was not loaded from a file")?;
        let path_for_load = path.clone();
        let next = tokio::task::spawn_blocking(move || {
            Config::load(&path_for_load, |name| std::env::var(name).ok())
        })
        .await
        .map_err(|_| "the config loader failed".to_owned())?
        .map_err(|e| e.to_string())?;
        let restart = current.0.restart_required(&next);
        if !restart.is_empty() {
            return Err(format!(
                "{}: {} changed; restart the gateway to apply it",
                path.display(),
                restart.join(", ")
            ));
        }
        let state = build_state(&next, &self.lasting, Some(&current.1))
            .await
            .map_err(|e| e.to_string())?;
        self.router.store(Arc::new(app(state.clone())));
        self.contract.store(Arc::new(Contract::new(&next)));
        let routes = next.routes.len();
        *current = (next, state);
        Ok(Reloaded { routes })
    }
}

/// Reloads on every SIGHUP until the task is aborted (at shutdown).
#[cfg(unix)]
fn spawn_sighup_reloads(reloader: Arc<Reloader>) -> std::io::Result<tokio::task::JoinHandle<()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangups = signal(SignalKind::hangup())?;
    Ok(tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            let _ = reloader.reload().await;
        }
    }))
}

/// Protocol limits for the public listener, from `[server]`.
#[derive(Debug, Clone, Copy)]
struct HttpLimits {
    header_read_timeout: Duration,
    max_header_bytes: usize,
    max_headers: usize,
    max_connections: Option<usize>,
    write_timeout: Duration,
}

impl From<&ServerConfig> for HttpLimits {
    fn from(s: &ServerConfig) -> Self {
        Self {
            header_read_timeout: s.header_read_timeout,
            max_header_bytes: s.max_header_bytes,
            max_headers: s.max_headers,
            max_connections: s.max_connections,
            write_timeout: s.write_timeout,
        }
    }
}

/// hyper's own header-count limit for HTTP/1 requests (`DEFAULT_MAX_HEADERS` in hyper).
const HYPER_DEFAULT_MAX_HEADERS: usize = 100;

/// Most concurrent HTTP/2 streams per connection; more wait for a free stream.
const H2_MAX_CONCURRENT_STREAMS: u32 = 256;
/// HTTP/2 keep-alive pings notice dead peers holding streams open.
const H2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
/// How long a connection still silent when the listener stops may take to send its first
/// byte (it is then served one request with `Connection: close`).
const SHUTDOWN_FIRST_BYTE_GRACE: Duration = Duration::from_millis(500);
/// The HTTP/2 connection preface (RFC 9113 §3.4), what `auto` looks for.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What every public connection is served with.
struct ConnectionContext<'a> {
    router: &'a Arc<ArcSwap<Router>>,
    draining: &'a Arc<AtomicBool>,
    builders: &'a Arc<(
        auto::Builder<TokioExecutor>,
        auto::Builder<TokioExecutor>,
        auto::Builder<TokioExecutor>,
    )>,
    /// Changes (closes) when the listener stops: connections still waiting for their first
    /// byte get a short grace instead of their whole header deadline.
    peeking: &'a watch::Receiver<()>,
    graceful: &'a GracefulShutdown,
    limits: HttpLimits,
}

/// Serves one accepted connection on its own task; `permit` is its `max_connections` slot;
/// `stopped`: accepted from the backlog after the listener stopped.
fn spawn_connection(
    stream: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    ctx: &ConnectionContext<'_>,
    stopped: bool,
) {
    let _ = stream.set_nodelay(true);
    let router = ctx.router.clone();
    let draining = ctx.draining.clone();
    // Set by the first request head the connection completes (see the HTTP/2 guard below).
    let served = Arc::new(AtomicBool::new(false));
    let first_request = served.clone();
    let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
        first_request.store(true, Ordering::Relaxed);
        request.extensions_mut().insert(ConnectInfo(peer));
        // The router current when the request arrived: a reload swaps it for the next
        // requests, this one finishes on the config it started with.
        let response = Router::clone(&router.load()).oneshot(request);
        let draining = draining.clone();
        async move {
            let mut response = response.await?;
            if draining.load(Ordering::Relaxed) {
                // Close keep-alive connections one response at a time while draining.
                response
                    .headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
            }
            Ok::<_, Infallible>(response)
        }
    });
    let builders = ctx.builders.clone();
    let mut peeking = ctx.peeking.clone();
    let watcher = ctx.graceful.watcher();
    let limits = ctx.limits;
    tokio::spawn(async move {
        // Released when the connection ends, however it ends.
        let _permit = permit;
        let deadline = tokio::time::Instant::now() + limits.header_read_timeout;
        let mut peek_until = if stopped {
            deadline.min(tokio::time::Instant::now() + SHUTDOWN_FIRST_BYTE_GRACE)
        } else {
            deadline
        };
        let mut stopping = stopped;
        let mut first = [0u8; H2_PREFACE.len()];
        // A connection that sends nothing would otherwise wait here forever: hyper's
        // header timer only starts once hyper has the connection. When the listener stops,
        // one still silent gets a short grace (a proxy that just opened it is about to write
        // its request; cutting it now would turn that request into a 502), then it is closed.
        let plain_http1 = loop {
            tokio::select! {
                peeked = tokio::time::timeout_at(peek_until, stream.peek(&mut first)) => break match peeked {
                    Ok(peeked) => matches!(
                        peeked, Ok(n) if n > 0 && first[..n] != H2_PREFACE[..n]
                    ),
                    Err(_) => {
                        tracing::debug!(%peer, "Closing a connection that sent nothing within header_read_timeout.");
                        return;
                    }
                },
                _ = peeking.changed(), if !stopping => {
                    stopping = true;
                    peek_until = peek_until.min(tokio::time::Instant::now() + SHUTDOWN_FIRST_BYTE_GRACE);
                }
            }
        };
        let io = TokioIo::new(WriteTimeout::new(stream, limits.write_timeout));
        if stopping && plain_http1 {
            // Started after the listener stopped: served its one request without keep-alive,
            // outside the graceful watch (which would close it unread); holding the watcher
            // keeps the shutdown waiting for it.
            let _watcher = watcher;
            if let Err(error) = builders.2.serve_connection(io, service).await {
                tracing::debug!(%peer, %error, "Connection ended with an error.");
            }
            return;
        }
        let builder = if plain_http1 {
            &builders.0
        } else {
            &builders.1
        };
        let connection = watcher.watch(builder.serve_connection(io, service));
        let result = if plain_http1 {
            // hyper's own `header_read_timeout` bounds every HTTP/1 head.
            connection.await
        } else {
            // hyper has no header timeout for HTTP/2, nor for `auto` still reading a
            // partial preface: a peer that stops after (part of) the preface, or after the
            // SETTINGS exchange, and answers pings would hold the connection forever.
            // Without a complete request head by the deadline, it is closed (dropped).
            // Later idle periods are HTTP/2's own business (keep-alive pings).
            let unserved = async {
                tokio::time::sleep_until(deadline).await;
                if served.load(Ordering::Relaxed) {
                    std::future::pending::<()>().await;
                }
            };
            tokio::select! {
                result = connection => result,
                () = unserved => {
                    tracing::debug!(%peer, "Closing a connection without a request head within header_read_timeout.");
                    return;
                }
            }
        };
        if let Err(error) = result {
            tracing::debug!(%peer, %error, "Connection ended with an error.");
        }
    });
}

/// Serves `router` on `listener` (HTTP/1.1 and h2c) with the protocol limits, until `stop`
/// resolves; then stops accepting and waits for open connections to finish (the caller bounds
/// the wait). hyper answers oversized heads with 431 (414 for the URI), conflicting framing
/// (`Content-Length` with `Transfer-Encoding`) with 400, and closes connections whose head does
/// not arrive within `header_read_timeout`.
///
/// What hyper does not bound is bounded here: the wait for a connection's first byte and, on
/// HTTP/2 (or undecided) connections, for their first request head, by `header_read_timeout`;
/// a response write that makes no progress, by `write_timeout` ([`WriteTimeout`]); and the
/// number of open connections, by `max_connections` (one semaphore permit per connection,
/// taken *before* `accept`, so connections beyond it wait in the kernel's backlog).
async fn serve_public(
    listener: TcpListener,
    router: Arc<ArcSwap<Router>>,
    limits: HttpLimits,
    draining: Arc<AtomicBool>,
    stop: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes);
    if limits.max_headers != HYPER_DEFAULT_MAX_HEADERS {
        // Only when it differs: with an explicit limit hyper fills a header array of that size
        // on every request (~3 % of a cache hit); its default limit uses one on the stack.
        builder.http1().max_headers(limits.max_headers);
    }
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(H2_KEEPALIVE_INTERVAL);
    // Memory: `auto` tells HTTP/2 from HTTP/1 by *reading* up to 24 bytes and handing them to
    // hyper's HTTP/1 side as a prefix; hyper's 8 KiB read buffer then cannot take prefix + next
    // read and is reallocated at 16 KiB, on every connection. A connection whose first bytes
    // (peeked, not read) already differ from the HTTP/2 preface goes to an HTTP/1-only copy of
    // the same builder instead: 8 KiB less per keep-alive connection (8 MB at 1,000). Anything
    // undecided (a partial preface, EOF, an error) keeps the `auto` path.
    // The third serves connections that start while the listener stops: one HTTP/1 request,
    // then close (hyper's graceful shutdown would close such a fresh connection unread).
    let mut last_call = builder.clone().http1_only();
    last_call.http1().keep_alive(false);
    let builders = Arc::new((builder.clone().http1_only(), builder, last_call));
    // Dropped after the accept loop: connections still waiting for their first byte get
    // [`SHUTDOWN_FIRST_BYTE_GRACE`] more, then end.
    let (stop_peeking, peeking) = watch::channel(());
    let graceful = GracefulShutdown::new();
    let slots = limits
        .max_connections
        .map(|n| Arc::new(tokio::sync::Semaphore::new(n)));
    let connection = ConnectionContext {
        router: &router,
        draining: &draining,
        builders: &builders,
        peeking: &peeking,
        graceful: &graceful,
        limits,
    };
    tokio::pin!(stop);
    loop {
        // Waiting for a free slot before `accept` leaves new connections in the backlog (the
        // kernel completes their handshake; nothing reads them) instead of accepting and
        // dropping them: a client sees a slow start, not a reset, once a slot frees.
        let permit = match &slots {
            Some(slots) => tokio::select! {
                () = &mut stop => break,
                permit = slots.clone().acquire_owned() => match permit {
                    Ok(permit) => Some(permit),
                    // Never closed while the loop runs.
                    Err(_) => break,
                },
            },
            None => None,
        };
        let (stream, peer) = tokio::select! {
            () = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    // EMFILE and friends: back off instead of spinning; the listener is fine.
                    tracing::warn!(%error, "Accept failed.");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        spawn_connection(stream, peer, permit, &connection, false);
    }
    // Connections the kernel completed but we had not accepted yet: a proxy may already have
    // written a request on one, which closing the listener would reset ([`close`]). Serve them.
    let listener = listener.into_std()?;
    for (stream, peer) in close::take_queued(&listener).await {
        spawn_connection(stream, peer, None, &connection, true);
    }
    drop(listener);
    drop(stop_peeking);
    graceful.shutdown().await;
    Ok(())
}
