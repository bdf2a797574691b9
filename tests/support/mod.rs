//! Shared support for the integration-test binaries (`mod support;`).
//!
//! This module owns nothing itself; it re-exports its submodules:
//!
//! * [`broker`] — the RabbitMQ node the tests talk to: [`amqp_url`] returns
//!   `AMQP_TEST_URL` when set, otherwise boots one private, throwaway node per
//!   test binary (via `scripts/broker.sh`); [`rabbitmqctl`] /
//!   [`rabbitmqctl_async`] control that node. Fault tests that stop, kill or alarm the
//!   broker use [`private_node`] instead: a node of the test binary's own (never the shared
//!   one), with `down`/`up` (same ports, same data) and its own `ctl`; [`private_tls_node`]
//!   is such a node with an amqps listener too (certificates of the test's making).
//! * [`cluster`] — [`cluster::cluster`]: ONE private 3-node RabbitMQ cluster per test binary
//!   (`scripts/broker.sh cluster-start`), each member a [`PrivateNode`] (`down`/`up`/`ctl`)
//!   plus SIGSTOP/SIGCONT ([`cluster::Frozen`]), the health check between fault phases and
//!   the quorum queue's leader.
//! * [`origin`] — [`Origin`]: a real backing HTTP service on port 0, steered by query
//!   ([`Origin::start`]) or by a closure of the test ([`Origin::scripted`], answering
//!   [`origin::Reply`]s); it records every request ([`origin::Seen`], raw header bytes).
//! * [`gateway`] — [`TestGateway`]: the real gateway in-process on port 0
//!   ([`TestGateway::ready_within`] times readiness after a fault); [`gateway::router`]: the
//!   public router with no server and no broker (`AppState::from_config`). Config pieces:
//!   [`base_config`] / [`gateway::base_config_with`] / [`gateway::base_config_amqp`] /
//!   [`gateway::base_config_full`] (`[server]` and `[amqp]`; a key the extra lines set replaces
//!   its default), [`gateway::topic_exchange`], [`gateway::publish_route`] and
//!   [`gateway::read_route`] (public and POST / GET+HEAD unless `extra` sets `auth` /
//!   `methods`; more publish settings as `publish.KEY = ...`), [`gateway::upstream`],
//!   [`gateway::events_config`] (the fault, drain, cluster and nginx gateways' write route),
//!   [`gateway::no_broker`] for gateways that must not reach a broker.
//! * [`http`] — the client side: [`http::get`] / [`http::send`] (raw header bytes) /
//!   [`http::write`] (a body, [`http::JSON`] headers) returning an [`http::Answer`] (also
//!   `status()` / `headers()` as reqwest names them), [`http::call`] (one request through a
//!   router in process), and HTTP dates in IMF-fixdate, RFC 850 and asctime forms
//!   ([`http::imf_fixdate`], [`http::rfc850`], [`http::asctime`]).
//! * [`poll`] — [`poll::eventually`]: poll a condition with a deadline instead of sleeping.
//! * [`tls`] — a throwaway PKI (rcgen) as PEM files and [`tls::TlsOrigin`], an https origin
//!   that echoes the HTTP version and client certificate it saw.
//! * [`tokens`] — test bearer tokens (HS256 and the fixture keys) and the `[auth]` section
//!   that verifies them.
//! * [`load`] — timed writes ([`load::post_event`]), concurrent writers recording every
//!   answer ([`load::Writers`]) and the drain-and-count check ([`load::DrainReport`]).
//! * [`nginx`] — [`nginx::Nginx`]: real nginx with a config derived from `deploy/nginx.conf`.
//! * [`process`] — [`process::GatewayProcess`]: the real binary as a child process (SIGKILL,
//!   SIGTERM).
//! * [`amqp`] — the AMQP side of assertions: [`TestQueue`], a uniquely named
//!   queue bound to an exchange, read with deadlines (`next`, `drain`,
//!   `count`); what a delivery carries: [`amqp::header`], [`amqp::header_str`],
//!   [`amqp::short`].
//!
//! Typical use:
//!
//! ```ignore
//! mod support;
//! use std::time::Duration;
//! use support::{amqp_url, TestQueue};
//!
//! #[tokio::test]
//! async fn publishes() {
//!     let url = amqp_url();
//!     let q = TestQueue::bind(&url, "orders", Some(lapin::ExchangeKind::Topic), "orders.#").await;
//!     // ... drive the gateway ...
//!     let msg = q.next(Duration::from_secs(5)).await.expect("no message");
//! }
//! ```
//!
//! Not every binary uses every helper, hence the `allow`s below; `pub`
//! items of this private module are "unreachable" by construction; and
//! unwrap/expect are fine in test code (outside `#[test]` fns too).
#![allow(
    dead_code,
    unused_imports,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used
)]

pub mod amqp;
pub mod broker;
pub mod cluster;
pub mod gateway;
pub mod http;
pub mod load;
pub mod nginx;
pub mod origin;
pub mod poll;
pub mod process;
pub mod tls;
pub mod tokens;

pub use amqp::{TestQueue, unique_name};
pub use broker::{
    NodeInfo, PrivateNode, amqp_url, booted_here, free_port, node, node_log_tail, node_name,
    private_node, private_tls_node, rabbitmqctl, rabbitmqctl_async, rabbitmqctl_ok,
    rabbitmqctl_ok_async,
};
pub use gateway::{TestGateway, base_config};
pub use origin::Origin;
