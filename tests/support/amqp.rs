//! Owns the AMQP side of test assertions: [`TestQueue`], a uniquely named
//! queue bound to an exchange, from which tests read what the gateway
//! published, and what a delivery carries ([`header`], [`header_str`], [`short`]).
//!
//! Messages are fetched with `basic.get` (auto-ack) polled every 10-50 ms
//! inside a deadline, never with fixed sleeps. Because nothing consumes in
//! the background, [`TestQueue::count`] is exactly "published and routed but
//! not yet read".
//!
//! The helper survives connection loss: any AMQP error drops the connection
//! and the next poll reconnects (within the caller's deadline). Use
//! [`TestQueue::bind_durable`] for fault tests that restart the broker, since
//! the exclusive queue of [`TestQueue::bind`] dies with its connection.
//!
//! Every AMQP operation is bounded by [`OP_TIMEOUT`]: when the broker drops
//! a connection while the test's runtime thread is blocked (e.g. in the
//! synchronous `rabbitmqctl`), lapin keeps reporting it as connected and
//! some operations (notably `Connection::close`) then never complete. In
//! async tests, prefer `support::rabbitmqctl_async` so lapin (and an
//! in-process gateway) keep running while the broker is being controlled.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use lapin::message::Delivery;
use lapin::options::{
    BasicGetOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions, QueuePurgeOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use tokio::sync::Mutex;
use tokio::time::Instant;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Upper bound for any single AMQP operation of this module.
pub const OP_TIMEOUT: Duration = Duration::from_secs(10);

/// Awaits one AMQP operation under [`OP_TIMEOUT`], naming it in errors.
async fn op<T, E: std::fmt::Display>(
    what: impl std::fmt::Display,
    fut: impl Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(OP_TIMEOUT, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!("{what}: no reply within {OP_TIMEOUT:?}")),
    }
}

/// The AMQP header `name` of `d`, as published; `None` when absent.
pub fn header<'a>(d: &'a Delivery, name: &str) -> Option<&'a AMQPValue> {
    d.properties.headers().as_ref()?.inner().get(name)
}

/// The AMQP header `name` of `d` as text (the gateway sends text headers as long strings);
/// `None` when absent, a panic when it has another type.
pub fn header_str(d: &Delivery, name: &str) -> Option<String> {
    match header(d, name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        other => panic!("header {name} has unexpected type {other:?}"),
    }
}

/// A short-string property (`content_type`, `message_id`, `kind`, ...) as `&str`.
pub fn short(s: &Option<ShortString>) -> Option<&str> {
    s.as_ref().map(|s| s.as_str())
}

/// A queue private to one test, bound to an exchange, read with deadlines.
pub struct TestQueue {
    /// Queue name, unique per process and run (`test.<pid>.<n>.<uuid>`).
    pub name: String,
    /// The exchange it is bound to (`""`: the default exchange, no binding).
    pub exchange: String,
    /// Durable, non-exclusive queue ([`TestQueue::bind_durable`])?
    pub durable: bool,
    url: String,
    link: Mutex<Option<Link>>,
}

struct Link {
    conn: Connection,
    channel: Channel,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// A queue (or other entity) name unique across test binaries and runs.
pub fn unique_name(prefix: &str) -> String {
    let n = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let uuid = uuid::Uuid::now_v7().simple().to_string();
    format!(
        "{prefix}.{}.{n}.{}",
        std::process::id(),
        &uuid[uuid.len() - 8..]
    )
}

impl TestQueue {
    /// Declares an exclusive, auto-delete queue with a unique name and binds
    /// it to `exchange` with `binding_key`.
    ///
    /// With `kind: Some(k)`, the exchange is first declared durable of kind
    /// `k` (idempotent if it already exists with the same kind and no
    /// arguments; a mismatch fails with PRECONDITION_FAILED). With `None` it
    /// must already exist. With `exchange == ""` nothing is bound: publish to
    /// the default exchange with routing key `q.name`.
    ///
    /// The queue disappears with its connection (end of test, broker restart).
    pub async fn bind(
        url: &str,
        exchange: &str,
        kind: Option<ExchangeKind>,
        binding_key: &str,
    ) -> TestQueue {
        Self::create(url, exchange, kind, binding_key, false, false).await
    }

    /// Like [`TestQueue::bind`], but the queue is durable and neither
    /// exclusive nor auto-delete: it survives connection loss and broker
    /// restarts (messages published as persistent survive too). Delete it
    /// with [`TestQueue::delete`]; leftovers only live as long as the node.
    pub async fn bind_durable(
        url: &str,
        exchange: &str,
        kind: Option<ExchangeKind>,
        binding_key: &str,
    ) -> TestQueue {
        Self::create(url, exchange, kind, binding_key, true, false).await
    }

    /// Like [`TestQueue::bind_durable`], but a quorum queue (`x-queue-type = quorum`): what
    /// write routes should target in production, where an ack means the message is on disk on
    /// a majority of replicas (on a single node: fsynced).
    pub async fn bind_quorum(
        url: &str,
        exchange: &str,
        kind: Option<ExchangeKind>,
        binding_key: &str,
    ) -> TestQueue {
        Self::create(url, exchange, kind, binding_key, true, true).await
    }

    async fn create(
        url: &str,
        exchange: &str,
        kind: Option<ExchangeKind>,
        binding_key: &str,
        durable: bool,
        quorum: bool,
    ) -> TestQueue {
        let q = TestQueue {
            name: unique_name("test"),
            exchange: exchange.to_string(),
            url: url.to_string(),
            durable,
            link: Mutex::new(None),
        };
        let channel = q.channel(Instant::now() + CONNECT_TIMEOUT).await;
        let options = if durable {
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            }
        } else {
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            }
        };
        let mut arguments = FieldTable::default();
        if quorum {
            arguments.insert(
                "x-queue-type".into(),
                AMQPValue::LongString("quorum".into()),
            );
        }
        op(
            format!("declare queue {}", q.name),
            channel.queue_declare(q.name.as_str().into(), options, arguments),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        if let (Some(kind), false) = (kind, exchange.is_empty()) {
            op(
                format!("declare exchange {exchange:?}"),
                channel.exchange_declare(
                    exchange.into(),
                    kind,
                    ExchangeDeclareOptions {
                        durable: true,
                        ..ExchangeDeclareOptions::default()
                    },
                    FieldTable::default(),
                ),
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        }
        q.add_binding(binding_key).await;
        q
    }

    /// Binds the queue to its exchange with one more key.
    pub async fn add_binding(&self, binding_key: &str) {
        if self.exchange.is_empty() {
            return;
        }
        let channel = self.channel(Instant::now() + CONNECT_TIMEOUT).await;
        op(
            format!(
                "bind queue {} to exchange {:?} with {binding_key:?}",
                self.name, self.exchange
            ),
            channel.queue_bind(
                self.name.as_str().into(),
                self.exchange.as_str().into(),
                binding_key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            ),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Waits up to `timeout` for the next message; `None` if none arrived.
    ///
    /// Panics if the queue could not be read at all by the deadline (e.g. it
    /// was deleted, or the broker stayed down), with the last AMQP error.
    pub async fn next(&self, timeout: Duration) -> Option<Delivery> {
        let deadline = Instant::now() + timeout;
        let mut poll = Duration::from_millis(10);
        loop {
            let last_error = match self.try_get(deadline).await {
                Ok(Some(delivery)) => return Some(delivery),
                Ok(None) => None,
                Err(e) => Some(e),
            };
            let now = Instant::now();
            if now >= deadline {
                if let Some(e) = last_error {
                    panic!("reading queue {}: {e}", self.name);
                }
                return None;
            }
            tokio::time::sleep(poll.min(deadline - now)).await;
            poll = (poll * 2).min(Duration::from_millis(50));
        }
    }

    /// Like [`TestQueue::next`], but panics with `what` if nothing arrives.
    pub async fn expect(&self, timeout: Duration, what: &str) -> Delivery {
        match self.next(timeout).await {
            Some(d) => d,
            None => panic!(
                "queue {} (exchange {:?}): no message within {timeout:?}: {what}",
                self.name, self.exchange
            ),
        }
    }

    /// Collects messages until none arrives for `quiet`.
    pub async fn drain(&self, quiet: Duration) -> Vec<Delivery> {
        let mut out = Vec::new();
        while let Some(d) = self.next(quiet).await {
            out.push(d);
        }
        out
    }

    /// Reads every message with a no-ack consumer (much faster than [`TestQueue::drain`] for
    /// thousands of messages) until none arrives for `quiet`, or panics at `timeout`.
    /// Reconnects once on a fresh connection; the queue must still exist.
    pub async fn consume_all(&self, quiet: Duration, timeout: Duration) -> Vec<Delivery> {
        use futures_util::StreamExt;
        let deadline = Instant::now() + timeout;
        let channel = self.channel(deadline).await;
        op(
            "basic.qos",
            channel.basic_qos(1000, lapin::options::BasicQosOptions::default()),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        let mut consumer = op(
            format!("consume {}", self.name),
            channel.basic_consume(
                self.name.as_str().into(),
                "drain".into(),
                lapin::options::BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            ),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        let mut out = Vec::new();
        loop {
            assert!(
                Instant::now() < deadline,
                "draining {}: still receiving after {timeout:?} ({} so far)",
                self.name,
                out.len()
            );
            match tokio::time::timeout(quiet, consumer.next()).await {
                Ok(Some(Ok(delivery))) => out.push(delivery),
                Ok(Some(Err(e))) => panic!("draining {}: {e}", self.name),
                Ok(None) => panic!("draining {}: the consumer was cancelled", self.name),
                Err(_quiet) => break,
            }
        }
        let _ = op(
            "basic.cancel",
            channel.basic_cancel(
                "drain".into(),
                lapin::options::BasicCancelOptions::default(),
            ),
        )
        .await;
        out
    }

    /// Number of messages in the queue now (passive declare).
    pub async fn count(&self) -> u32 {
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        loop {
            let channel = self.channel(deadline).await;
            let res = op(
                format!("count messages in {}", self.name),
                channel.queue_declare(
                    self.name.as_str().into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                ),
            )
            .await;
            match res {
                Ok(q) => return q.message_count(),
                Err(e) if Instant::now() >= deadline => panic!("{e}"),
                Err(_) => {
                    self.reset().await;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// Polls [`TestQueue::count`] until it equals `expected` or `timeout`
    /// elapses; returns the last count seen.
    pub async fn wait_for_count(&self, expected: u32, timeout: Duration) -> u32 {
        let deadline = Instant::now() + timeout;
        loop {
            let n = self.count().await;
            if n == expected || Instant::now() >= deadline {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Removes all messages; returns how many there were.
    pub async fn purge(&self) -> u32 {
        let channel = self.channel(Instant::now() + CONNECT_TIMEOUT).await;
        op(
            format!("purge {}", self.name),
            channel.queue_purge(self.name.as_str().into(), QueuePurgeOptions::default()),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Deletes the queue and closes the connection.
    pub async fn delete(self) {
        let channel = self.channel(Instant::now() + CONNECT_TIMEOUT).await;
        op(
            format!("delete {}", self.name),
            channel.queue_delete(self.name.as_str().into(), QueueDeleteOptions::default()),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        self.reset().await;
    }

    async fn try_get(&self, deadline: Instant) -> Result<Option<Delivery>, String> {
        let channel = self.try_channel(deadline).await?;
        let got = op(
            "basic.get",
            channel.basic_get(self.name.as_str().into(), BasicGetOptions { no_ack: true }),
        )
        .await;
        match got {
            Ok(msg) => Ok(msg.map(|m| m.delivery)),
            Err(e) => {
                self.reset().await;
                Err(e)
            }
        }
    }

    /// The open channel, (re)connecting when needed; panics if that fails
    /// until `deadline`. Never re-declares the queue: an exclusive queue that
    /// died with its connection must show up as an error, not as a fresh,
    /// empty, unbound queue.
    async fn channel(&self, deadline: Instant) -> Channel {
        loop {
            match self.try_channel(deadline).await {
                Ok(c) => return c,
                Err(e) if Instant::now() >= deadline => {
                    panic!(
                        "AMQP connection for test queue {} to {}: {e}",
                        self.name, self.url
                    )
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    async fn try_channel(&self, deadline: Instant) -> Result<Channel, String> {
        let mut link = self.link.lock().await;
        if let Some(l) = link.as_ref()
            && l.channel.status().connected()
        {
            return Ok(l.channel.clone());
        }
        *link = None;
        let timeout = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(500));
        let conn = tokio::time::timeout(
            timeout,
            Connection::connect(&self.url, ConnectionProperties::default()),
        )
        .await
        .map_err(|_| format!("connect: timed out after {timeout:?}"))?
        .map_err(|e| format!("connect: {e}"))?;
        let channel = op("create channel", conn.create_channel()).await?;
        *link = Some(Link {
            conn,
            channel: channel.clone(),
        });
        Ok(channel)
    }

    /// Drops the connection; the next operation reconnects. The close is
    /// best effort and bounded: on a connection the broker already dropped,
    /// lapin's close may never complete.
    async fn reset(&self) {
        if let Some(l) = self.link.lock().await.take() {
            let _ = tokio::time::timeout(
                Duration::from_secs(1),
                l.conn.close(200, "test queue done".into()),
            )
            .await;
        }
    }
}
