//! [`run`]: serve the public and admin listeners until shutdown, then drain.
//!
//! Shutdown order: `/readyz` turns false, both listeners stop accepting, in-flight requests
//! (each waiting on its confirm) get up to `server.shutdown_timeout`, and then the AMQP
//! channels and connections are closed cleanly.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::amqp::{ChannelSet, PoolSettings};
use crate::cache::Cache;
use crate::config::{Config, ExchangeKind, RouteAction};
use crate::metrics::Metrics;
use crate::proxy::Upstreams;
use crate::state::AppState;
use crate::{admin, app};

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

fn exchange_kind(kind: ExchangeKind) -> lapin::ExchangeKind {
    match kind {
        ExchangeKind::Topic => lapin::ExchangeKind::Topic,
        ExchangeKind::Direct => lapin::ExchangeKind::Direct,
        ExchangeKind::Fanout => lapin::ExchangeKind::Fanout,
        ExchangeKind::Headers => lapin::ExchangeKind::Headers,
    }
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
    // Before the broker pool: a JWKS URL that cannot be fetched stops start-up (the gateway
    // never serves with a cold key set), and nothing needs closing then.
    let auth = match &config.auth {
        Some(auth) => Some(crate::auth::Authenticator::start(auth).await?),
        None => None,
    };
    let channels = ChannelSet::start(PoolSettings {
        url: config.amqp.url.expose().to_owned(),
        connections: config.amqp.connections,
        channels_per_connection: config.amqp.channels_per_connection,
        connect_timeout: config.amqp.connect_timeout,
        confirm_timeout: config.amqp.confirm_timeout,
        exchanges: config
            .amqp
            .exchanges
            .iter()
            .map(|e| (e.name.clone(), exchange_kind(e.kind)))
            .collect(),
    })
    .map_err(RunError::Amqp)?;
    let draining = Arc::new(AtomicBool::new(false));
    let caches = config
        .routes
        .iter()
        .any(|r| matches!(&r.action, RouteAction::Proxy(p) if p.cache.is_some()));
    let state = AppState {
        auth,
        upstreams: Arc::new(Upstreams::new(&config.upstreams)),
        cache: caches.then(|| Arc::new(Cache::new(&config.cache))),
        trusted_proxies: config.server.trusted_proxies.clone().into(),
        metrics: Arc::new(Metrics::new()),
        routes: config.routes.into(),
        channels: channels.clone(),
        max_body_bytes: config.server.max_body_bytes,
        retry_after: config.amqp.retry_after,
        draining: draining.clone(),
    };

    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        draining.store(true, Ordering::Relaxed);
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    tracing::info!(
        listen = %listener.local_addr()?,
        admin = %admin_listener.local_addr()?,
        routes = state.routes.len(),
        "Gateway listening."
    );
    let public = axum::serve(
        listener,
        app(state.clone()).into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(stopped(stop_rx.clone()))
    .into_future();
    let admin = axum::serve(admin_listener, admin::router(state))
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
    let remaining = deadline.saturating_sub(started_drain.elapsed());
    channels
        .close(remaining.max(std::time::Duration::from_secs(1)))
        .await;
    tracing::info!("Gateway stopped.");
    Ok(())
}
