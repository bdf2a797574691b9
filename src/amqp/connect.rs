//! [`Manager`]: how the pool opens broker connections — TCP, then TLS with our own rustls
//! config when the URL is `amqps://`, then the AMQP handshake.
//!
//! lapin's own connect functions take TLS settings as PEM blobs and build their own rustls
//! config (their trust store, their provider, the URL host as the name to verify). The
//! gateway's `[amqp] tls` table is already loaded into a [`ClientTls`] (private CA, client
//! certificate, `server_name` override, the one aws-lc-rs provider), so the transport is
//! ours: [`lapin::Connection::connector`] runs the AMQP handshake over the stream we open.
//!
//! Recycling checks only `status().connected()`, as deadpool-lapin did: the supervisors
//! (`pool.rs`) watch their connections and detach dead ones themselves.

use std::borrow::Cow;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_rs::traits::{Reactor, RuntimeKit};
use async_rs::{Runtime, TokioRuntime};
use deadpool::managed::{Metrics, RecycleError, RecycleResult};
use lapin::tcp::{AsyncTcpStream, RustlsConnector};
use lapin::uri::{AMQPScheme, AMQPUri};
use lapin::{Connection, ConnectionProperties, ErrorKind};
use rustls::ClientConfig;

use crate::shared::ErrorChain;
use crate::tls::ClientTls;

/// The name the gateway's publishing connections show in the broker's management UI and
/// `rabbitmqctl` (the invalidation subscriber's is its own, see `invalidation.rs`).
pub(super) const CONNECTION_NAME: &str = "amqp-gateway";

/// Where TLS goes, when it does: the rustls config and the name the broker's certificate must
/// carry (also sent as SNI when it is a DNS name).
#[derive(Clone)]
struct TlsTarget {
    config: Arc<ClientConfig>,
    name: String,
}

/// Creates connections to the cluster's nodes (deadpool's [`deadpool::managed::Manager`]).
///
/// Each `create` starts at the next node round-robin, from a random offset per process, so
/// the slots of one instance spread over the nodes and N instances spread evenly; a node that
/// refuses is skipped for the next one within the same `create`, and a slot whose connection
/// was lost gets the next node when it reconnects.
pub(super) struct Manager {
    nodes: Vec<Node>,
    next: AtomicUsize,
    /// The client-provided connection name.
    name: String,
}

/// A connection and the node it went to (its index in the configured URLs).
pub(super) struct NodeConnection {
    conn: Connection,
    /// Index into the manager's nodes.
    pub(super) node: usize,
}

impl std::ops::Deref for NodeConnection {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        &self.conn
    }
}

impl Manager {
    /// A manager over `uris` (one per node, defaults already applied), sharing `tls` and
    /// `connect_timeout` (see [`Node::new`]).
    pub(super) fn new(
        uris: Vec<AMQPUri>,
        tls: Option<&ClientTls>,
        connect_timeout: Duration,
        name: &str,
    ) -> Result<Self, String> {
        if uris.is_empty() {
            return Err("no broker URL".to_owned());
        }
        let nodes = uris
            .into_iter()
            .map(|uri| Node::new(uri, tls, connect_timeout))
            .collect::<Result<Vec<_>, _>>()?;
        // Random per process: instances started together do not all begin on node 0.
        let offset =
            std::hash::BuildHasher::hash_one(&std::hash::RandomState::new(), std::process::id())
                as usize;
        Ok(Self {
            next: AtomicUsize::new(offset % nodes.len()),
            nodes,
            name: name.to_owned(),
        })
    }

    /// `host:port` of node `index`, for logs, `/readyz` and metrics (never credentials).
    pub(super) fn label(&self, index: usize) -> Option<&Arc<str>> {
        self.nodes.get(index).map(|n| &n.label)
    }
}

/// One broker node: its URL, TLS target and stream deadline.
struct Node {
    uri: AMQPUri,
    tls: Option<TlsTarget>,
    /// Bound on TCP connect + TLS handshake (see [`Node::new`]).
    stream_timeout: Duration,
    /// `host:port`.
    label: Arc<str>,
}

impl Node {
    /// A node for `uri` (its defaults already applied). `tls` is used when the URL is
    /// `amqps://` (and required then). `connect_timeout` bounds the TCP
    /// connect and TLS handshake, or the URL's `connection_timeout` (ms) when shorter: lapin
    /// opens the stream on its own I/O thread, which would otherwise outlive a pool `create`
    /// that timed out and linger until the kernel gives up on an unanswered SYN.
    pub(super) fn new(
        uri: AMQPUri,
        tls: Option<&ClientTls>,
        connect_timeout: Duration,
    ) -> Result<Self, String> {
        let tls = match uri.scheme {
            AMQPScheme::AMQP => None,
            AMQPScheme::AMQPS => {
                // Config validation gives every amqps:// URL a `ClientTls` (the defaults when
                // there is no `tls` table).
                let tls = tls.ok_or("an amqps:// URL needs TLS settings")?;
                let name = match tls.server_name() {
                    Some(name) => name.to_str().into_owned(),
                    // The URL host, as lapin's default transport does.
                    None => uri.authority.host.clone(),
                };
                Some(TlsTarget {
                    config: tls.config().clone(),
                    name,
                })
            }
        };
        let stream_timeout = uri
            .query
            .connection_timeout
            .map(Duration::from_millis)
            .map_or(connect_timeout, |t| t.min(connect_timeout));
        let label = Arc::from(format!("{}:{}", uri.authority.host, uri.authority.port));
        Ok(Self {
            uri,
            tls,
            stream_timeout,
            label,
        })
    }

    async fn connect(&self, name: &str) -> Result<Connection, lapin::Error> {
        let tls = self.tls.clone();
        let timeout = self.stream_timeout;
        // lapin calls this on its I/O thread for the first connection, and again only when
        // auto-recovery is enabled (it is not: the supervisors reconnect). It must be `Fn`, so
        // it clones what it needs per call.
        let open = async move |uri: AMQPUri, runtime: TokioRuntime| match tokio::time::timeout(
            timeout,
            open_stream(&uri, &runtime, tls.as_ref()),
        )
        .await
        {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(error)) => Err(lapin_io_error(error, &runtime)),
            Err(_) => Err(lapin::Error::from(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("TCP/TLS connect did not finish within {timeout:?}"),
            ))),
        };
        let props = ConnectionProperties::default().with_connection_name(name.into());
        Connection::connector(self.uri.clone(), TokioRuntime::tokio_current(), open, props).await
    }
}

impl deadpool::managed::Manager for Manager {
    type Type = NodeConnection;
    type Error = lapin::Error;

    async fn create(&self) -> Result<NodeConnection, lapin::Error> {
        let n = self.nodes.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut last = None;
        for k in 0..n {
            let index = (start + k) % n;
            let node = &self.nodes[index];
            match node.connect(&self.name).await {
                Ok(conn) => return Ok(NodeConnection { conn, node: index }),
                Err(error) => {
                    if k + 1 < n {
                        tracing::warn!(node = %node.label, error = %ErrorChain(&error), "AMQP node refused the connection; trying the next node.");
                    }
                    last = Some(error);
                }
            }
        }
        Err(last.unwrap_or_else(|| {
            lapin::Error::from(io::Error::new(io::ErrorKind::NotFound, "no broker URL"))
        }))
    }

    async fn recycle(&self, conn: &mut NodeConnection, _: &Metrics) -> RecycleResult<lapin::Error> {
        if conn.status().connected() {
            Ok(())
        } else {
            Err(RecycleError::Message(Cow::Owned(format!(
                "lapin connection is not connected: {:?}",
                conn.status()
            ))))
        }
    }
}

/// TCP to the URL's host and port, then TLS when there is a target: what lapin's default
/// transport does, with our rustls config and verification name.
async fn open_stream<RK: RuntimeKit + Send + Sync>(
    uri: &AMQPUri,
    runtime: &Runtime<RK>,
    tls: Option<&TlsTarget>,
) -> io::Result<AsyncTcpStream<<RK as Reactor>::TcpStream>> {
    let addrs = runtime.to_socket_addrs((uri.authority.host.clone(), uri.authority.port));
    let stream = AsyncTcpStream::connect(runtime, addrs).await?;
    match tls {
        None => Ok(stream),
        Some(tls) => {
            stream
                .into_rustls(&RustlsConnector::from(tls.config.clone()), &tls.name)
                .await
        }
    }
}

/// What lapin's own transport returns for an I/O error: a runtime shutting down is told apart
/// (lapin does not try to recover from it).
fn lapin_io_error<RK: RuntimeKit>(error: io::Error, runtime: &Runtime<RK>) -> lapin::Error {
    if runtime.is_runtime_shutdown_error(&error) {
        ErrorKind::RuntimeShutdownError(Arc::new(error)).into()
    } else {
        error.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uri(url: &str) -> AMQPUri {
        url.parse().unwrap()
    }

    #[test]
    fn plain_urls_get_no_tls_even_with_settings() {
        let tls = ClientTls::load(None).unwrap();
        let m = Node::new(uri("amqp://h/%2f"), Some(&tls), Duration::from_secs(5)).unwrap();
        assert!(m.tls.is_none());
    }

    #[test]
    fn amqps_verifies_the_url_host_unless_a_server_name_is_set() {
        let defaults = ClientTls::load(None).unwrap();
        let m = Node::new(
            uri("amqps://u:p@10.0.0.7/%2f"),
            Some(&defaults),
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(m.tls.as_ref().unwrap().name, "10.0.0.7");
        let settings = crate::tls::TlsSettings {
            server_name: Some("rabbit.internal".into()),
            ..Default::default()
        };
        let tls = ClientTls::load(Some(&settings)).unwrap();
        let m = Node::new(
            uri("amqps://u:p@10.0.0.7/%2f"),
            Some(&tls),
            Duration::from_secs(5),
        )
        .unwrap();
        let target = m.tls.as_ref().unwrap();
        assert_eq!(target.name, "rabbit.internal");
        assert!(Arc::ptr_eq(&target.config, tls.config()));
    }

    #[test]
    fn the_stream_deadline_is_the_shorter_of_connect_timeout_and_connection_timeout() {
        let five = Duration::from_secs(5);
        let m = Node::new(uri("amqp://h/%2f"), None, five).unwrap();
        assert_eq!(m.stream_timeout, five);
        let m = Node::new(uri("amqp://h/%2f?connection_timeout=300"), None, five).unwrap();
        assert_eq!(m.stream_timeout, Duration::from_millis(300));
        let m = Node::new(uri("amqp://h/%2f?connection_timeout=60000"), None, five).unwrap();
        assert_eq!(m.stream_timeout, five);
    }
}
