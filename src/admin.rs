//! The admin listener: `/healthz` (process alive), `/readyz` (able to publish), `/metrics`
//! (Prometheus), `POST /reload` (read the config file again and swap it in), and the published
//! contract of the config being served: `/asyncapi.json` and `/openapi.json` ([`crate::spec`]).
//!
//! It lives on `server.admin_listen`, never on the public port, so load balancers and
//! operators can probe it without exposing broker state to clients.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use crate::server::Reloader;
use crate::state::AppState;

/// The admin router.
pub(crate) fn router(state: AppState, reloader: Arc<Reloader>) -> Router {
    Router::new()
        .route(
            "/healthz",
            get(|| async { Json(json!({ "status": "ok" })) }),
        )
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
        .merge(
            Router::new()
                .route("/reload", post(reload))
                .route(
                    "/asyncapi.json",
                    get(|State(r): State<Arc<Reloader>>| async move {
                        Json(r.contract().asyncapi.clone())
                    }),
                )
                .route(
                    "/openapi.json",
                    get(|State(r): State<Arc<Reloader>>| async move {
                        Json(r.contract().openapi.clone())
                    }),
                )
                .with_state(reloader),
        )
}

/// `POST /reload`: 200 with the new route count, or 422 with why the file was not applied
/// (the running config is unchanged then).
async fn reload(State(reloader): State<Arc<Reloader>>) -> Response {
    match reloader.reload().await {
        Ok(done) => Json(json!({ "status": "reloaded", "routes": done.routes })).into_response(),
        Err(error) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({ "status": "failed", "error": error })),
        )
            .into_response(),
    }
}

/// Prometheus text exposition.
async fn metrics(State(state): State<AppState>) -> Response {
    state.metrics.set_cache_coherent(state.coherence.serving());
    let body = state
        .metrics
        .render(state.channels.readiness(), &state.channels.slots());
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// Ready while at least one confirm-mode channel can publish and we are not draining.
async fn readyz(State(state): State<AppState>) -> Response {
    let r = state.channels.readiness();
    let draining = state.draining.load(Ordering::Relaxed);
    let ready = r.is_ready() && !draining;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "draining": draining,
        "channels": {
            "ready": r.ready_channels,
            "configured": r.configured_channels,
            "blocked": r.blocked_channels,
        },
        // One entry per connection slot: the broker node it is on (`null` while it
        // reconnects), so an operator sees how the instance spreads over a cluster.
        "connections": state.channels.slots().iter().enumerate().map(|(slot, s)| json!({
            "slot": slot,
            "node": s.node.as_deref(),
            "ready_channels": s.ready_channels,
        })).collect::<Vec<_>>(),
        // Informational: a bypassed cache (coherence on, subscription down) still serves
        // every request, from the origin, so it never fails readiness.
        "cache": {
            "coherence": state.invalidations.is_some(),
            "coherent": state.coherence.serving(),
            "instance": &*state.instance,
        },
    });
    (status, Json(body)).into_response()
}
