//! [`ChannelSet`]: `connections` × `channels_per_connection` long-lived confirm-mode channels,
//! shared by every request.
//!
//! The deadpool pool holds connections only (opened by our [`Manager`], over TLS for
//! `amqps://`), and its recycling checks nothing but `status().connected()`; channels are
//! ours. Each connection slot has a supervisor task that takes a connection from the pool, opens its channels in confirm mode, declares the
//! configured exchanges, and publishes the channels into a lock-free snapshot ([`ArcSwap`])
//! that requests read. When the connection fails the supervisor withdraws its channels first,
//! detaches the dead connection from the pool (it is never reused), and reconnects with
//! exponential backoff. A channel closed by the broker on its own (e.g. a 404 on a deleted
//! exchange) is replaced without touching its connection's other channels, after the
//! configured exchanges are declared again.
//!
//! Requests pick channels round-robin and never hold them: many publishes are in flight on one
//! channel at a time (lapin pipelines them and matches confirms by delivery tag), so there is
//! no per-request checkout and no channel churn.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use deadpool::Runtime;
use deadpool::managed::{Object, Pool, PoolConfig, PoolError, Timeouts};
use futures_util::StreamExt;
use lapin::options::{ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::FieldTable;
use lapin::uri::AMQPUri;
use lapin::{Channel, Connection, Event as ConnEvent};
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;

use super::connect::{CONNECTION_NAME, Manager};
use super::publish::{properties, publish_on};
use super::{Event, PROPERTIES_BUDGET_BYTES, PoolSettings, PublishError};
use crate::shared::{ErrorChain, lock};

/// First reconnect delay; doubles up to [`MAX_BACKOFF`].
pub(super) const MIN_BACKOFF: Duration = Duration::from_millis(100);
pub(super) const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How often a supervisor looks for channels the broker closed on their own, and for a
/// connection closed without an error event (a broker's `connection.close`, e.g. on
/// `stop_app` or `close_connection`, only changes the connection's status).
pub(super) const CHANNEL_CHECK_INTERVAL: Duration = Duration::from_millis(500);
/// AMQP heartbeat (seconds) requested when the URL does not set `heartbeat`: a connection
/// whose peer went silent (host gone, network partition, frozen broker) is declared dead
/// after two missed intervals, ~20 s, instead of the broker's default 60 s (~120 s). Pending
/// confirms end earlier anyway, at `confirm_timeout`.
const DEFAULT_HEARTBEAT_SECS: u16 = 10;
/// AMQP `frame_max` (bytes) requested when the URL does not set one. lapin keeps a send and a
/// receive buffer of 32 frames for each connection, so the broker's default (128 KiB) costs
/// 8 MiB of memory per connection; 32 KiB (2 MiB) still carries the largest properties a
/// publish may have ([`PROPERTIES_BUDGET_BYTES`]) in one frame, and bodies are split into frames
/// of any size anyway. See BENCHMARKS.md (resident memory).
const DEFAULT_FRAME_MAX: u32 = 32 * 1024;
const _: () = assert!(DEFAULT_FRAME_MAX as usize >= 2 * PROPERTIES_BUDGET_BYTES);
/// Longest wait for a clean `connection.close` of a connection we give up on.
pub(super) const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// One publishable channel and the blocked flag of its connection.
#[derive(Clone)]
struct Live {
    channel: Channel,
    blocked: Arc<AtomicBool>,
}

struct Inner {
    settings: PoolSettings,
    pool: Pool<Manager>,
    /// What requests read: every channel currently able to publish. Behind an `Arc` each, so
    /// that a publish takes one reference count rather than cloning a `Channel` (a dozen).
    live: ArcSwap<Vec<Arc<Live>>>,
    /// Per-slot channel lists; `live` is rebuilt from these when one changes.
    slots: Mutex<Vec<Vec<Arc<Live>>>>,
    /// The node each slot is connected to (an index into the URLs), `None` while it is not.
    nodes: Mutex<Vec<Option<usize>>>,
    next: AtomicUsize,
    /// Wakes supervisors to look for closed channels now rather than at the next tick.
    check: Notify,
}

/// One connection slot as `/readyz` and the metrics show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SlotState {
    /// `host:port` of the node it is connected to; `None` while (re)connecting.
    pub node: Option<Arc<str>>,
    /// Its channels that can publish now.
    pub ready_channels: usize,
}

/// Readiness as seen by `/readyz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Readiness {
    /// Channels that can publish now (connected, confirm mode, connection not blocked).
    pub ready_channels: usize,
    /// Channels configured.
    pub configured_channels: usize,
    /// Live channels whose connection is blocked by a resource alarm.
    pub blocked_channels: usize,
}

impl Readiness {
    /// Ready while at least one channel can publish.
    pub(crate) fn is_ready(&self) -> bool {
        self.ready_channels > 0
    }
}

/// The shared set of confirm-mode publishing channels. Cheap to clone.
#[derive(Clone)]
pub(crate) struct ChannelSet {
    inner: Arc<Inner>,
    stop: watch::Sender<bool>,
    tasks: Arc<tokio::sync::Mutex<JoinSet<()>>>,
}

impl std::fmt::Debug for ChannelSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelSet")
            .field("readiness", &self.readiness())
            .finish_non_exhaustive()
    }
}

impl ChannelSet {
    /// Starts one supervisor per connection; returns at once. Channels come up in the
    /// background: until then publishes fail with [`PublishError::Unavailable`].
    pub(crate) fn start(settings: PoolSettings) -> Result<Self, String> {
        let manager = manager(&settings, CONNECTION_NAME)?;
        let mut pool_config = PoolConfig::new(settings.connections);
        pool_config.timeouts = Timeouts {
            wait: Some(settings.connect_timeout),
            create: Some(settings.connect_timeout),
            recycle: Some(settings.connect_timeout),
        };
        let pool = Pool::builder(manager)
            .config(pool_config)
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| format!("cannot build the AMQP connection pool: {e}"))?;
        let inner = Arc::new(Inner {
            slots: Mutex::new(vec![Vec::new(); settings.connections]),
            nodes: Mutex::new(vec![None; settings.connections]),
            settings,
            pool,
            live: ArcSwap::from_pointee(Vec::new()),
            next: AtomicUsize::new(0),
            check: Notify::new(),
        });
        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        for slot in 0..inner.settings.connections {
            tasks.spawn(supervise(slot, inner.clone(), stop_rx.clone()));
        }
        Ok(Self {
            inner,
            stop,
            tasks: Arc::new(tokio::sync::Mutex::new(tasks)),
        })
    }

    /// Each connection slot: its node and ready channels (`/readyz`, metrics).
    pub(crate) fn slots(&self) -> Vec<SlotState> {
        self.inner.slot_states()
    }

    /// Current readiness.
    pub(crate) fn readiness(&self) -> Readiness {
        let live = self.inner.live.load();
        let blocked = live
            .iter()
            .filter(|l| l.blocked.load(Ordering::Relaxed))
            .count();
        let ready = live
            .iter()
            .filter(|l| !l.blocked.load(Ordering::Relaxed) && l.channel.status().connected())
            .count();
        Readiness {
            ready_channels: ready,
            configured_channels: self.inner.settings.connections
                * self.inner.settings.channels_per_connection,
            blocked_channels: blocked,
        }
    }

    /// Publishes `event` and waits for the broker's confirm, within `confirm_timeout`.
    pub(crate) async fn publish(&self, event: &Event<'_>) -> Result<(), PublishError> {
        let props = properties(event)?;
        let channel = self.pick()?;
        match tokio::time::timeout(
            self.inner.settings.confirm_timeout,
            publish_on(&channel.channel, event, props),
        )
        .await
        {
            Ok(Err(e @ (PublishError::Unavailable | PublishError::Unknown(_)))) => {
                // The channel died under us: let its supervisor replace it now.
                self.inner.check.notify_waiters();
                Err(e)
            }
            Ok(result) => result,
            Err(_elapsed) => Err(PublishError::Unknown("no confirm within confirm_timeout")),
        }
    }

    /// Round-robin over live channels, skipping blocked connections and dead channels.
    fn pick(&self) -> Result<Arc<Live>, PublishError> {
        let live = self.inner.live.load();
        let n = live.len();
        if n == 0 {
            return Err(PublishError::Unavailable);
        }
        let start = self.inner.next.fetch_add(1, Ordering::Relaxed);
        let mut saw_blocked = false;
        for k in 0..n {
            let l = &live[(start + k) % n];
            if l.blocked.load(Ordering::Relaxed) {
                saw_blocked = true;
            } else if l.channel.status().connected() {
                return Ok(l.clone());
            } else {
                self.inner.check.notify_waiters();
            }
        }
        Err(if saw_blocked {
            PublishError::Blocked
        } else {
            PublishError::Unavailable
        })
    }

    /// Stops the supervisors: new publishes fail, in-flight confirms get up to `deadline`,
    /// then channels and connections are closed cleanly.
    pub(crate) async fn close(&self, deadline: Duration) {
        let _ = self.stop.send(true);
        let mut tasks = self.tasks.lock().await;
        let drain = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(deadline, drain).await.is_err() {
            tracing::warn!("AMQP connections did not close within the shutdown deadline.");
            tasks.abort_all();
        }
    }
}

impl Inner {
    /// Each slot's node and ready channels.
    fn slot_states(&self) -> Vec<SlotState> {
        let nodes = lock(&self.nodes).clone();
        let slots = lock(&self.slots);
        nodes
            .iter()
            .zip(slots.iter())
            .map(|(node, channels)| SlotState {
                node: node.and_then(|i| self.pool.manager().label(i).cloned()),
                ready_channels: channels
                    .iter()
                    .filter(|l| {
                        !l.blocked.load(Ordering::Relaxed) && l.channel.status().connected()
                    })
                    .count(),
            })
            .collect()
    }

    fn set_node(&self, slot: usize, node: Option<usize>) {
        if let Some(entry) = lock(&self.nodes).get_mut(slot) {
            *entry = node;
        }
    }

    fn set_slot(&self, slot: usize, channels: Vec<Arc<Live>>) {
        // The mutex only serialises supervisors rebuilding the snapshot; requests never take it.
        let mut slots = lock(&self.slots);
        slots[slot] = channels;
        let live = slots.iter().flatten().cloned().collect();
        self.live.store(Arc::new(live));
    }
}

/// A connection manager for the nodes of `settings` (URL defaults applied), its connections
/// named `name`.
pub(super) fn manager(settings: &PoolSettings, name: &str) -> Result<Manager, String> {
    let uris = settings
        .uris
        .iter()
        .map(|uri| {
            let mut uri = uri.uri().clone();
            with_defaults(&mut uri);
            uri
        })
        .collect();
    Manager::new(uris, settings.tls.as_ref(), settings.connect_timeout, name)
}

/// The URL's settings, with `heartbeat=DEFAULT_HEARTBEAT_SECS` and
/// `frame_max=DEFAULT_FRAME_MAX` where it sets none (the operator's choice wins, a heartbeat
/// of 0, off, included). What lapin then negotiates from.
fn with_defaults(uri: &mut AMQPUri) {
    uri.query.heartbeat.get_or_insert(DEFAULT_HEARTBEAT_SECS);
    uri.query.frame_max.get_or_insert(DEFAULT_FRAME_MAX);
}

async fn open_channel(conn: &Connection) -> Result<Channel, lapin::Error> {
    let channel = conn.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok(channel)
}

/// Declares the configured exchanges, durable (idempotent when they exist as configured).
async fn declare_exchanges(
    channel: &Channel,
    exchanges: &[(String, lapin::ExchangeKind)],
) -> Result<(), String> {
    for (name, kind) in exchanges {
        let options = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        channel
            .exchange_declare(
                name.as_str().into(),
                kind.clone(),
                options,
                FieldTable::default(),
            )
            .await
            .map_err(|e| format!("declare exchange `{name}`: {e}"))?;
    }
    Ok(())
}

/// Re-declares the configured exchanges on a short-lived channel of its own, so that a
/// failure (which closes the channel it happens on) costs no publishing channel.
async fn redeclare_exchanges(conn: &Connection, inner: &Inner) -> Result<(), String> {
    if inner.settings.exchanges.is_empty() {
        return Ok(());
    }
    let work = async {
        let channel = conn
            .create_channel()
            .await
            .map_err(|e| format!("open channel: {e}"))?;
        declare_exchanges(&channel, &inner.settings.exchanges).await?;
        let _ = channel.close(200, "exchanges declared".into()).await;
        Ok(())
    };
    match tokio::time::timeout(inner.settings.connect_timeout, work).await {
        Ok(result) => result,
        Err(_) => Err("re-declaring exchanges timed out".to_owned()),
    }
}

/// Connects slot `slot` and sets up its channels and exchanges.
async fn connect(inner: &Inner) -> Result<(Object<Manager>, Vec<Channel>), String> {
    let setup = async {
        // The whole error chain (a TLS failure says why: unknown issuer, name mismatch, …);
        // lapin's errors never include the URL, so no password either.
        let conn = inner.pool.get().await.map_err(|e| {
            let why = match &e {
                PoolError::Backend(e) => ErrorChain(e).to_string(),
                other => ErrorChain(other).to_string(),
            };
            let nodes: Vec<String> = inner.settings.uris.iter().map(|u| u.authority()).collect();
            format!("connect to {}: {why}", nodes.join(", "))
        })?;
        let mut channels = Vec::with_capacity(inner.settings.channels_per_connection);
        for _ in 0..inner.settings.channels_per_connection {
            channels.push(
                open_channel(&conn)
                    .await
                    .map_err(|e| format!("open channel: {e}"))?,
            );
        }
        if let Some(first) = channels.first() {
            declare_exchanges(first, &inner.settings.exchanges).await?;
        }
        Ok((conn, channels))
    };
    match tokio::time::timeout(inner.settings.connect_timeout * 2, setup).await {
        Ok(result) => result,
        Err(_) => Err("connection setup timed out".to_owned()),
    }
}

/// Keeps slot `slot` connected until `stop` turns true.
async fn supervise(slot: usize, inner: Arc<Inner>, mut stop: watch::Receiver<bool>) {
    let mut backoff = MIN_BACKOFF;
    loop {
        if *stop.borrow() {
            return;
        }
        match connect(&inner).await {
            Ok((conn, channels)) => {
                backoff = MIN_BACKOFF;
                let node = inner.pool.manager().label(conn.node).cloned();
                tracing::info!(
                    slot,
                    node = node.as_deref().unwrap_or("?"),
                    channels = channels.len(),
                    "AMQP connection ready."
                );
                inner.set_node(slot, Some(conn.node));
                let stopped = serve(slot, &inner, &conn, channels, &mut stop).await;
                inner.set_slot(slot, Vec::new());
                inner.set_node(slot, None);
                // Detached from the pool, so a connection we gave up on is never handed out
                // again, and closed: on a clean stop, or when we abandon one that still looks
                // alive (a channel could not be reopened, exchanges could not be declared).
                // Bounded: on a half-dead socket the close-ok may never come.
                let conn = Object::take(conn);
                if stopped || conn.status().connected() {
                    let (code, why) = if stopped {
                        (200, "gateway shutting down")
                    } else {
                        (320, "gateway reconnecting")
                    };
                    let _ = tokio::time::timeout(CLOSE_TIMEOUT, conn.close(code, why.into())).await;
                }
                if stopped {
                    return;
                }
                tracing::warn!(slot, "AMQP connection lost; reconnecting.");
            }
            Err(error) => {
                tracing::warn!(slot, %error, retry_in_ms = backoff.as_millis() as u64, "AMQP connect failed.");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.changed() => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Publishes the slot's channels and watches them. Returns `true` when stopped on request,
/// `false` when the connection failed.
async fn serve(
    slot: usize,
    inner: &Inner,
    conn: &Connection,
    mut channels: Vec<Channel>,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    // Subscribe before reading the status, so that no block/unblock falls in between.
    let mut events = conn.events_listener();
    let blocked = Arc::new(AtomicBool::new(conn.status().blocked()));
    let publish = |channels: &[Channel]| {
        inner.set_slot(
            slot,
            channels
                .iter()
                .map(|c| {
                    Arc::new(Live {
                        channel: c.clone(),
                        blocked: blocked.clone(),
                    })
                })
                .collect(),
        );
    };
    publish(&channels);
    let mut tick = tokio::time::interval(CHANNEL_CHECK_INTERVAL);
    loop {
        tokio::select! {
            _ = stop.changed() => {
                // Withdraw the channels first so no new publish lands here, then let
                // outstanding confirms arrive (the caller bounds how long).
                inner.set_slot(slot, Vec::new());
                for channel in &channels {
                    let _ = channel.wait_for_confirms().await;
                    let _ = channel.close(200, "gateway shutting down".into()).await;
                }
                return true;
            }
            event = events.next() => match event {
                Some(ConnEvent::ConnectionBlocked(reason)) => {
                    tracing::warn!(slot, %reason, "AMQP connection blocked by the broker.");
                    blocked.store(true, Ordering::Relaxed);
                }
                Some(ConnEvent::ConnectionUnblocked) => {
                    tracing::info!(slot, "AMQP connection unblocked.");
                    blocked.store(false, Ordering::Relaxed);
                }
                Some(ConnEvent::Error(error)) => {
                    // lapin reports channel errors here too (a 404 on a publish to a deleted
                    // exchange, a 406): the connection's status below tells them apart, and
                    // only a connection error costs the sibling channels.
                    tracing::warn!(slot, %error, "AMQP error.");
                }
                Some(_) => {}
                None => return false,
            },
            _ = tick.tick() => {}
            _ = inner.check.notified() => {}
        }
        let status = conn.status();
        if !status.connected() {
            return false;
        }
        // The status is set before the event is sent: this heals a missed event.
        blocked.store(status.blocked(), Ordering::Relaxed);
        // Replace channels the broker closed on their own (the connection is still fine).
        let mut changed = false;
        for channel in &mut channels {
            if !channel.status().connected() {
                // Bounded: a broker that stopped answering must not park the supervisor.
                match tokio::time::timeout(inner.settings.connect_timeout, open_channel(conn)).await
                {
                    Ok(Ok(fresh)) => {
                        tracing::info!(slot, "Replaced a closed AMQP channel.");
                        *channel = fresh;
                        changed = true;
                    }
                    Ok(Err(error)) => {
                        tracing::warn!(slot, %error, "Could not reopen an AMQP channel.");
                        return false;
                    }
                    Err(_) => {
                        tracing::warn!(slot, "Reopening an AMQP channel timed out.");
                        return false;
                    }
                }
            }
        }
        if changed {
            // A channel closed by the broker is often a publish to an exchange that is gone
            // (deleted by an operator or a policy): declare the configured ones again before
            // the channels go back into service, or every channel would die the same way. An
            // exchange that cannot be declared fails this connection, as at start-up, and so
            // readiness once every connection fails.
            if let Err(error) = redeclare_exchanges(conn, inner).await {
                tracing::warn!(slot, %error, "Could not declare the exchanges again.");
                return false;
            }
            publish(&channels);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults(url: &str) -> AMQPUri {
        let mut uri: AMQPUri = url.parse().unwrap();
        with_defaults(&mut uri);
        uri
    }

    #[test]
    fn heartbeat_is_added_only_when_the_url_has_none() {
        assert_eq!(
            defaults("amqp://u:p@h:5672/%2f").query.heartbeat,
            Some(DEFAULT_HEARTBEAT_SECS)
        );
        // The operator's choice wins, 0 (off) included.
        assert_eq!(
            defaults("amqp://h/%2f?heartbeat=30").query.heartbeat,
            Some(30)
        );
        assert_eq!(
            defaults("amqp://h/%2f?heartbeat=0").query.heartbeat,
            Some(0)
        );
    }

    #[test]
    fn frame_max_is_added_only_when_the_url_has_none() {
        let uri = defaults("amqps://h/%2f?heartbeat=5");
        assert_eq!(uri.query.frame_max, Some(DEFAULT_FRAME_MAX));
        assert_eq!(uri.query.heartbeat, Some(5));
        assert_eq!(
            defaults("amqp://h/%2f?frame_max=131072").query.frame_max,
            Some(131072)
        );
        // Nothing else of the URL changes.
        let mut plain: AMQPUri = "amqps://u:p@h:5999/v?channel_max=7".parse().unwrap();
        let with = defaults("amqps://u:p@h:5999/v?channel_max=7");
        plain.query.heartbeat = with.query.heartbeat;
        plain.query.frame_max = with.query.frame_max;
        assert_eq!(plain, with);
    }
}
