//! Request handlers, one module per kind of route. They talk to [`crate::amqp`] through its
//! own types and never see lapin.

mod encode;
pub mod publish;
pub mod read;

use std::net::SocketAddr;

use axum::extract::ConnectInfo;
use http::request::Parts;

use crate::error::GatewayError;
use crate::proxy::{is_trusted, request_host};
use crate::state::AppState;

/// The TCP peer of a request, if known.
fn peer(parts: &Parts) -> Option<std::net::IpAddr> {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
}

/// Refuses a request for a host other than `server.public_host` (421): an upstream that builds
/// absolute links from `X-Forwarded-Host` must never see a client-chosen host.
fn check_host(state: &AppState, parts: &Parts) -> Result<(), GatewayError> {
    let Some(public) = &state.public_host else {
        return Ok(());
    };
    let trusted = is_trusted(peer(parts), &state.trusted_proxies);
    match request_host(&parts.headers, parts.uri.authority(), trusted) {
        Some(host) if public.matches(host) => Ok(()),
        _ => Err(GatewayError::MisdirectedRequest),
    }
}
