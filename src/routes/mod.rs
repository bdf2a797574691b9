//! Request handlers, one module per kind of route. They talk to [`crate::amqp`] through its
//! own types and never see lapin.

mod encode;
pub mod publish;
pub mod read;

use std::net::SocketAddr;

use axum::extract::ConnectInfo;
use http::request::Parts;

/// The TCP peer of a request, if known.
fn peer(parts: &Parts) -> Option<std::net::IpAddr> {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
}
