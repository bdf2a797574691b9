//! Everything that speaks AMQP: the pooled set of confirm-mode channels, confirmed
//! publishing, and the cache invalidations exchanged between instances ([`invalidation`]).
//!
//! No HTTP types in here: the write handler hands over an [`Event`] and gets back `Ok` only
//! when the broker has confirmed a persistent message that was routed to at least one queue,
//! or a [`PublishError`] that says whether anything may have been enqueued.

mod connect;
pub(crate) mod invalidation;
mod pool;
mod publish;

use std::time::Duration;

use crate::config::{AmqpConfig, BrokerUri, ExchangeKind};
use crate::tls::ClientTls;

pub(crate) use pool::{ChannelSet, Readiness, SlotState};

/// A message to publish, already validated by the caller (names ≤ 255 bytes).
#[derive(Debug)]
pub(crate) struct Event<'a> {
    /// Exchange; `""` is the default exchange.
    pub exchange: &'a str,
    /// Routing key.
    pub routing_key: &'a str,
    /// Message body.
    pub body: &'a [u8],
    /// `message_id` (the event id).
    pub message_id: &'a str,
    /// `correlation_id` (the HTTP request id).
    pub correlation_id: Option<&'a str>,
    /// `content_type`.
    pub content_type: Option<&'a str>,
    /// `type`.
    pub message_type: &'a str,
    /// `priority`.
    pub priority: Option<u8>,
    /// `timestamp`, seconds since the Unix epoch.
    pub timestamp: u64,
    /// Headers, as string values.
    pub headers: Vec<(&'a str, &'a str)>,
}

/// `app_id` on every message.
pub(crate) const APP_ID: &str = "amqp-gateway";

/// Budget for the encoded properties and headers, well below RabbitMQ's 128 KiB `frame_max`:
/// an oversized header frame makes the broker close the whole connection.
pub(crate) const PROPERTIES_BUDGET_BYTES: usize = 16 * 1024;

/// Why a publish did not succeed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum PublishError {
    /// No channel could take the publish; nothing was sent.
    #[error("no publishing channel is available")]
    Unavailable,
    /// Every live connection is blocked by a broker resource alarm; nothing was sent.
    #[error("the broker connection is blocked")]
    Blocked,
    /// The broker returned the message: no queue is bound for it. Nothing is enqueued.
    #[error("the message was returned as unroutable")]
    Unroutable,
    /// The broker nacked the message. Nothing is enqueued.
    #[error("the broker nacked the message")]
    Nacked,
    /// The message was sent but no confirm arrived (timeout or channel loss): it may or may not
    /// be enqueued.
    #[error("the publish outcome is unknown: {0}")]
    Unknown(&'static str),
    /// The event is too large for the broker's frame limits; nothing was sent.
    #[error("message properties and headers exceed {PROPERTIES_BUDGET_BYTES} bytes")]
    PropertiesTooLarge,
    /// A channel was not in confirm mode or a name did not fit: a bug, nothing was confirmed.
    #[error("internal publishing error: {0}")]
    Internal(&'static str),
}

impl PublishError {
    /// A short stable label for metrics.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            Self::Unavailable => "unavailable",
            Self::Blocked => "blocked",
            Self::Unroutable => "unroutable",
            Self::Nacked => "nacked",
            Self::Unknown(_) => "unknown",
            Self::PropertiesTooLarge => "too_large",
            Self::Internal(_) => "internal",
        }
    }
}

/// Pool sizing and deadlines, from `[amqp]`.
#[derive(Debug, Clone)]
pub(crate) struct PoolSettings {
    /// Broker URLs, one per cluster node (passwords masked when printed).
    pub uris: Vec<BrokerUri>,
    /// TLS towards the broker: required for `amqps://` URLs (config validation always sets
    /// it then), ignored for `amqp://`.
    pub tls: Option<ClientTls>,
    /// Number of connections.
    pub connections: usize,
    /// Confirm-mode channels per connection.
    pub channels_per_connection: usize,
    /// Deadline for one connect (TCP + TLS + AMQP handshake + channel setup).
    pub connect_timeout: Duration,
    /// Deadline from publish to confirm.
    pub confirm_timeout: Duration,
    /// Exchanges to declare durable on each connect: (name, type).
    pub exchanges: Vec<(String, lapin::ExchangeKind)>,
}

impl From<&AmqpConfig> for PoolSettings {
    fn from(config: &AmqpConfig) -> Self {
        let kind = |kind| match kind {
            ExchangeKind::Topic => lapin::ExchangeKind::Topic,
            ExchangeKind::Direct => lapin::ExchangeKind::Direct,
            ExchangeKind::Fanout => lapin::ExchangeKind::Fanout,
            ExchangeKind::Headers => lapin::ExchangeKind::Headers,
        };
        Self {
            uris: config.urls.clone(),
            tls: config.tls.clone(),
            connections: config.connections,
            channels_per_connection: config.channels_per_connection,
            connect_timeout: config.connect_timeout,
            confirm_timeout: config.confirm_timeout,
            exchanges: config
                .exchanges
                .iter()
                .map(|e| (e.name.clone(), kind(e.kind)))
                .collect(),
        }
    }
}
