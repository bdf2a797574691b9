//! Cache invalidations between gateway instances: the message, its publishing, and the
//! subscriber that receives the other instances' ones.
//!
//! Every instance declares the gateway-owned fanout exchange (`cache.invalidation_exchange`,
//! durable) and binds a server-named, exclusive, auto-delete queue of its own to it. The
//! subscriber runs on a connection of its own (named `amqp-gateway-invalidation <instance>`
//! in the broker, so an operator can tell it apart; never one of the publishing slots that
//! `/readyz` counts), declares the exchange, queue and binding on every (re)connect, consumes
//! without acks (the queue is this instance's alone and dies with its connection), and
//! reconnects with backoff. What it learns goes to an [`InvalidationSink`]: no cache types
//! here, and no HTTP ones.
//!
//! Invalidations are published through the publishing pool ([`ChannelSet::publish`]): with
//! a confirm and `mandatory`, so an `Ok` means the broker has put the message in every bound
//! queue.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Connection, Consumer, ExchangeKind};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::connect::{Manager, NodeConnection};
use super::pool::{CHANNEL_CHECK_INTERVAL, CLOSE_TIMEOUT, MAX_BACKOFF, MIN_BACKOFF, manager};
use super::{ChannelSet, Event, PoolSettings, PublishError};
use crate::shared::ErrorChain;

/// The message format version this gateway writes and reads.
pub(crate) const VERSION: u32 = 1;

/// Largest message body read; a larger one is unreadable (and so treated as a missed
/// invalidation).
const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// AMQP `type` of invalidation messages.
const MESSAGE_TYPE: &str = "cache.invalidate";

/// What one accepted write invalidates, as JSON on the wire:
/// `{"v":1,"instance":"<id>","path":"/orders","related":["/orders/7"]}`.
///
/// Unknown fields are ignored (a later version may add some); a change of meaning takes a new
/// `v`, which older instances cannot read and answer with a flush.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Invalidation {
    /// Format version ([`VERSION`]).
    #[serde(rename = "v")]
    pub version: u32,
    /// The sending instance: an instance skips its own messages (it applied them already).
    pub instance: String,
    /// The request path the write was made to.
    pub path: String,
    /// `Location` / `Content-Location` references of the answer (the receiver keeps the
    /// relative ones, as the sender does).
    #[serde(default)]
    pub related: Vec<String>,
}

/// Why a message could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum DecodeError {
    /// Over 64 KiB.
    #[error("message of {0} bytes is too large")]
    TooLarge(usize),
    /// Not the JSON object described at [`Invalidation`].
    #[error("not an invalidation message: {0}")]
    Malformed(String),
    /// A version this gateway does not know.
    #[error("unknown message version {0}")]
    Version(u32),
}

impl Invalidation {
    /// The message body.
    pub(crate) fn encode(&self) -> Vec<u8> {
        // Strings and a list of strings only: serialising cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads a message body.
    pub(crate) fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        if body.len() > MAX_MESSAGE_BYTES {
            return Err(DecodeError::TooLarge(body.len()));
        }
        let message: Self =
            serde_json::from_slice(body).map_err(|e| DecodeError::Malformed(e.to_string()))?;
        if message.version != VERSION {
            return Err(DecodeError::Version(message.version));
        }
        Ok(message)
    }
}

/// Publishes this instance's invalidations.
#[derive(Debug, Clone)]
pub(crate) struct InvalidationPublisher {
    exchange: String,
    instance: Arc<str>,
}

impl InvalidationPublisher {
    /// Publishes on `exchange`, as `instance`.
    pub(crate) fn new(exchange: &str, instance: Arc<str>) -> Self {
        Self {
            exchange: exchange.to_owned(),
            instance,
        }
    }

    /// Tells the other instances that a write to `path` (answered with `related`
    /// references) succeeded. `Ok` once the broker confirmed it into every bound queue;
    /// [`PublishError::Unroutable`] when no instance is subscribed. Bounded by the pool's
    /// `confirm_timeout`.
    pub(crate) async fn publish(
        &self,
        channels: &ChannelSet,
        path: &str,
        related: &[&str],
    ) -> Result<(), PublishError> {
        let body = Invalidation {
            version: VERSION,
            instance: self.instance.to_string(),
            path: path.to_owned(),
            related: related.iter().map(|r| (*r).to_owned()).collect(),
        }
        .encode();
        let mut id = [0u8; uuid::fmt::Hyphenated::LENGTH];
        let id: &str = uuid::Uuid::now_v7().hyphenated().encode_lower(&mut id);
        channels
            .publish(&Event {
                exchange: &self.exchange,
                routing_key: "",
                body: &body,
                message_id: id,
                correlation_id: None,
                content_type: Some("application/json"),
                message_type: MESSAGE_TYPE,
                priority: None,
                timestamp: SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
                headers: Vec::new(),
            })
            .await
    }
}

/// Where the subscriber reports. Called from its task: keep it quick and non-blocking.
pub(crate) trait InvalidationSink: Send + Sync + 'static {
    /// Consuming: every invalidation published from now on reaches this instance.
    fn subscribed(&self);
    /// Not consuming any more: invalidations may be missed until [`Self::subscribed`].
    fn unsubscribed(&self);
    /// Another instance's invalidation.
    fn received(&self, invalidation: &Invalidation);
    /// A message that could not be read, which may have been an invalidation.
    fn unreadable(&self, error: &DecodeError);
}

/// The running subscriber: stops when closed or dropped.
#[derive(Debug)]
pub(crate) struct Subscriber {
    stop: watch::Sender<bool>,
    task: tokio::sync::Mutex<Option<JoinHandle<()>>>,
}

impl Subscriber {
    /// Starts subscribing to `exchange` as `instance`, over the nodes (and TLS) of `pool`;
    /// returns at once. Until the first subscription the sink has heard nothing: its owner
    /// starts out unsubscribed.
    pub(crate) fn start(
        pool: &PoolSettings,
        exchange: &str,
        instance: Arc<str>,
        sink: Arc<dyn InvalidationSink>,
    ) -> Result<Self, String> {
        let name = format!("amqp-gateway-invalidation {instance}");
        let manager = manager(pool, &name)?;
        let (stop, stop_rx) = watch::channel(false);
        let run = Run {
            manager,
            exchange: exchange.to_owned(),
            instance,
            connect_timeout: pool.connect_timeout,
            sink,
        };
        let task = tokio::spawn(run.supervise(stop_rx));
        Ok(Self {
            stop,
            task: tokio::sync::Mutex::new(Some(task)),
        })
    }

    /// Stops consuming and closes the connection, within `deadline`.
    pub(crate) async fn close(&self, deadline: Duration) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.lock().await.take() {
            let abort = task.abort_handle();
            if tokio::time::timeout(deadline, task).await.is_err() {
                abort.abort();
            }
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        // Never outlive the gateway that started it.
        let _ = self.stop.send(true);
    }
}

struct Run {
    manager: Manager,
    exchange: String,
    instance: Arc<str>,
    /// Bounds the connect, and then the declarations and `basic.consume`, each.
    connect_timeout: Duration,
    sink: Arc<dyn InvalidationSink>,
}

impl Run {
    /// Keeps the subscription up until `stop` turns true.
    async fn supervise(self, mut stop: watch::Receiver<bool>) {
        let mut backoff = MIN_BACKOFF;
        loop {
            if *stop.borrow() {
                return;
            }
            match self.subscribe().await {
                Ok((conn, consumer)) => {
                    backoff = MIN_BACKOFF;
                    self.sink.subscribed();
                    tracing::info!(exchange = %self.exchange, "Cache invalidations: subscribed.");
                    let stopped = self.consume(&conn, consumer, &mut stop).await;
                    self.sink.unsubscribed();
                    if conn.status().connected() {
                        let why = if stopped {
                            "gateway shutting down"
                        } else {
                            "gateway resubscribing"
                        };
                        let _ =
                            tokio::time::timeout(CLOSE_TIMEOUT, conn.close(200, why.into())).await;
                    }
                    if stopped {
                        return;
                    }
                    tracing::warn!(
                        "Cache invalidations: subscription lost; the cache is bypassed until it is back."
                    );
                }
                Err(error) => {
                    tracing::warn!(%error, retry_in_ms = backoff.as_millis() as u64, "Cache invalidations: cannot subscribe.");
                }
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                _ = stop.changed() => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Connects, declares the exchange and this instance's queue, binds and consumes.
    async fn subscribe(&self) -> Result<(NodeConnection, Consumer), String> {
        let conn = tokio::time::timeout(
            self.connect_timeout,
            deadpool::managed::Manager::create(&self.manager),
        )
        .await
        .map_err(|_| "connecting timed out".to_owned())?
        .map_err(|e| format!("connect: {}", ErrorChain(&e)))?;
        let setup = async {
            let channel = conn.create_channel().await?;
            channel
                .exchange_declare(
                    self.exchange.as_str().into(),
                    ExchangeKind::Fanout,
                    ExchangeDeclareOptions {
                        durable: true,
                        ..ExchangeDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await?;
            let queue = channel
                .queue_declare(
                    "".into(),
                    QueueDeclareOptions {
                        exclusive: true,
                        auto_delete: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await?;
            channel
                .queue_bind(
                    queue.name().clone(),
                    self.exchange.as_str().into(),
                    "".into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            channel
                .basic_consume(
                    queue.name().clone(),
                    "amqp-gateway-invalidation".into(),
                    BasicConsumeOptions {
                        no_ack: true,
                        exclusive: true,
                        ..BasicConsumeOptions::default()
                    },
                    FieldTable::default(),
                )
                .await
        };
        let error = match tokio::time::timeout(self.connect_timeout, setup).await {
            Ok(Ok(consumer)) => return Ok((conn, consumer)),
            Ok(Err(error)) => format!(
                "declare and consume on `{}`: {}",
                self.exchange,
                ErrorChain(&error)
            ),
            Err(_) => format!("declare and consume on `{}`: timed out", self.exchange),
        };
        // Closed rather than dropped: a dropped lapin connection stays open.
        let _ = tokio::time::timeout(
            CLOSE_TIMEOUT,
            conn.close(320, "gateway resubscribing".into()),
        )
        .await;
        Err(error)
    }

    /// Hands deliveries to the sink until the subscription ends. Returns `true` when stopped
    /// on request.
    async fn consume(
        &self,
        conn: &Connection,
        mut consumer: Consumer,
        stop: &mut watch::Receiver<bool>,
    ) -> bool {
        let mut tick = tokio::time::interval(CHANNEL_CHECK_INTERVAL);
        loop {
            tokio::select! {
                _ = stop.changed() => return true,
                delivery = consumer.next() => match delivery {
                    Some(Ok(delivery)) => self.deliver(&delivery.data),
                    Some(Err(error)) => {
                        tracing::warn!(error = %ErrorChain(&error), "Cache invalidations: consumer failed.");
                        return false;
                    }
                    None => return false,
                },
                // A broker's `connection.close` (e.g. `rabbitmqctl close_connection`) may
                // only change the connection's status: look at it.
                _ = tick.tick() => {
                    if !conn.status().connected() {
                        return false;
                    }
                }
            }
        }
    }

    fn deliver(&self, body: &[u8]) {
        match Invalidation::decode(body) {
            Ok(invalidation) if *invalidation.instance == *self.instance => {}
            Ok(invalidation) => self.sink.received(&invalidation),
            Err(error) => {
                tracing::warn!(%error, "Cache invalidations: unreadable message; flushing the cache.");
                self.sink.unreadable(&error);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_read_as_documented() {
        let message = Invalidation {
            version: VERSION,
            instance: "i-1".into(),
            path: "/orders".into(),
            related: vec!["/orders/7".into()],
        };
        let body = message.encode();
        assert_eq!(
            std::str::from_utf8(&body).unwrap(),
            r#"{"v":1,"instance":"i-1","path":"/orders","related":["/orders/7"]}"#
        );
        assert_eq!(Invalidation::decode(&body).unwrap(), message);
        let bare = Invalidation::decode(br#"{"v":1,"instance":"i","path":"/p"}"#).unwrap();
        assert!(bare.related.is_empty());
    }

    #[test]
    fn unreadable_messages_are_errors() {
        assert!(matches!(
            Invalidation::decode(b"not json"),
            Err(DecodeError::Malformed(_))
        ));
        assert!(matches!(
            Invalidation::decode(br#"{"v":1,"instance":"i"}"#),
            Err(DecodeError::Malformed(_))
        ));
        assert_eq!(
            Invalidation::decode(br#"{"v":2,"instance":"i","path":"/p"}"#),
            Err(DecodeError::Version(2))
        );
        let big = vec![b' '; MAX_MESSAGE_BYTES + 1];
        assert_eq!(
            Invalidation::decode(&big),
            Err(DecodeError::TooLarge(MAX_MESSAGE_BYTES + 1))
        );
    }
}
