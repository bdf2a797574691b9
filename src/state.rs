//! [`AppState`]: what handlers share, injected through axum's state (never global).

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use crate::amqp::ChannelSet;
use crate::config::Route;

/// Shared request-handling state. Cheap to clone.
#[derive(Clone, Debug)]
pub struct AppState {
    /// The validated route table.
    pub routes: Arc<[Route]>,
    /// Publishing channels.
    pub channels: ChannelSet,
    /// `server.max_body_bytes`.
    pub max_body_bytes: usize,
    /// `Retry-After` for broker-caused 503s.
    pub retry_after: Duration,
    /// Set when shutdown starts, so `/readyz` takes the instance out of rotation.
    pub draining: Arc<AtomicBool>,
}
