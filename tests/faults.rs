//! Broker faults against a real RabbitMQ node of this binary's own (`support::private_node`,
//! never the node other test binaries share): the broker restarted (`stop_app`/`start_app`, a
//! full stop/start of the node, SIGKILL), connections killed (`close_all_connections`), a
//! channel closed by the broker (a publish to a deleted exchange), a resource alarm
//! (`connection.blocked`) and a frozen broker (SIGSTOP: only heartbeats notice).
//!
//! The tests fault the one node in turn (`SERIAL`). Each asserts, besides its own point, that
//! every write was answered within the write bound (`confirm_timeout` + `connect_timeout` +
//! margin), and that every write answered 2xx is in the queue afterwards.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use lapin::options::{ExchangeDeclareOptions, ExchangeDeleteOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties, ExchangeKind};
use support::gateway::{events_config, publish_route, read_route, topic_exchange, upstream};
use support::load::{DrainReport, Reply, Writers, client, post_event, status_counts};
use support::{Origin, PrivateNode, TestGateway, TestQueue, private_node, unique_name};
use tokio::sync::Mutex;

/// One fault at a time on the shared private node.
static SERIAL: Mutex<()> = Mutex::const_new(());

/// `amqp.confirm_timeout` of the gateways under test.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(3);
/// `amqp.connect_timeout` of the gateways under test.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Every write is answered within this. The request path never waits for a connection (a
/// write finds a live channel or is refused at once), so the bound is `confirm_timeout` plus
/// 1 s of scheduling slack on a busy 2-core machine — tighter than the promised
/// `confirm_timeout` + `connect_timeout` + ε.
const WRITE_BOUND: Duration = Duration::from_secs(3 + 1);
/// A write refused because no channel can publish is answered at once, far below
/// `confirm_timeout`.
const FAST_REJECT: Duration = Duration::from_secs(1);
/// Deadline for the gateway to notice an outage.
const NOTICE: Duration = Duration::from_secs(5);
/// Deadline for the gateway to be fully back after the broker is (reconnect backoff is at most
/// 5 s, plus connect and channel setup).
const RECOVERY: Duration = Duration::from_secs(30);
/// Channels configured: 2 connections × 4.
const CHANNELS: usize = 8;

/// A gateway on the private node, with a read route to an origin and write routes to two
/// exchanges, and a quorum queue bound to each exchange.
struct Rig {
    node: &'static PrivateNode,
    gw: TestGateway,
    _origin: Origin,
    exchange: String,
    queue: TestQueue,
    other_queue: TestQueue,
    client: reqwest::Client,
    prefix: String,
    next: AtomicU64,
    replies: std::sync::Mutex<Vec<Reply>>,
}

impl Rig {
    async fn start(name: &str) -> Rig {
        Self::start_with(name, "").await
    }

    /// `url_query`: appended to the broker URL (e.g. `?heartbeat=2`).
    async fn start_with(name: &str, url_query: &str) -> Rig {
        let node = private_node().await;
        let origin = Origin::start("origin").await;
        let exchange = unique_name("faults");
        let other = format!("{exchange}.other");
        let url = format!("{}{url_query}", node.url());
        let config = [
            events_config(
                &url,
                &exchange,
                "",
                &format!(
                    "confirm_timeout = \"{}ms\"\nconnect_timeout = \"{}ms\"\nretry_after = \"1s\"",
                    CONFIRM_TIMEOUT.as_millis(),
                    CONNECT_TIMEOUT.as_millis(),
                ),
            ),
            topic_exchange(&other),
            upstream("origin", &origin.url),
            publish_route("other", "/other/{id}", &other, "ev.{id}", ""),
            read_route("read", "/read/{*rest}", "origin", "methods = [\"GET\"]"),
        ]
        .concat();
        let gw = TestGateway::start(&config).await;
        let queue =
            TestQueue::bind_quorum(node.url(), &exchange, Some(ExchangeKind::Topic), "ev.*").await;
        let other_queue =
            TestQueue::bind_quorum(node.url(), &other, Some(ExchangeKind::Topic), "ev.*").await;
        let rig = Rig {
            node,
            gw,
            _origin: origin,
            exchange,
            queue,
            other_queue,
            client: client(),
            prefix: name.to_owned(),
            next: AtomicU64::new(0),
            replies: std::sync::Mutex::new(Vec::new()),
        };
        rig.wait_channels(CHANNELS, RECOVERY).await;
        rig
    }

    fn key(&self) -> String {
        format!(
            "{}-{}",
            self.prefix,
            self.next.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// One write to `/{route}/{key}`, recorded for [`Rig::finish`].
    async fn write_to(&self, route: &str) -> Reply {
        let key = self.key();
        let reply = post_event(&self.client, &self.gw.at(&format!("/{route}/{key}")), &key).await;
        self.replies.lock().unwrap().push(reply.clone());
        reply
    }

    async fn write(&self) -> Reply {
        self.write_to("events").await
    }

    /// `n` sequential writes; panics unless every one is 2xx. Sequential writes go round-robin
    /// over the channels, so `n ≥ CHANNELS` exercises every channel.
    async fn writes_succeed(&self, route: &str, n: usize, when: &str) {
        for _ in 0..n {
            let r = self.write_to(route).await;
            assert_eq!(r.status, 202, "{when}: write not accepted: {r:?}");
        }
    }

    /// `n` sequential writes; panics unless every one is a fast 503 with `Retry-After` and
    /// the problem type `problem`.
    async fn writes_rejected_fast(&self, n: usize, problem: &str, when: &str) {
        for _ in 0..n {
            let r = self.write().await;
            assert_eq!(r.status, 503, "{when}: {r:?}");
            assert_eq!(r.problem.as_deref(), Some(problem), "{when}: {r:?}");
            assert_eq!(r.retry_after.as_deref(), Some("1"), "{when}: {r:?}");
            assert!(
                r.latency < FAST_REJECT,
                "{when}: a 503 took {:?} (must be < {FAST_REJECT:?})",
                r.latency
            );
        }
    }

    /// `n` reads through the gateway; panics unless every one is a 200 from the origin.
    async fn reads_work(&self, n: usize, when: &str) {
        for i in 0..n {
            let r = self
                .client
                .get(self.gw.at(&format!("/read/item/{i}")))
                .send()
                .await
                .unwrap_or_else(|e| panic!("{when}: read failed: {e}"));
            assert_eq!(r.status(), 200, "{when}: read answered {}", r.status());
            let body: serde_json::Value = r.json().await.unwrap();
            assert_eq!(body["served_by"], "origin", "{when}");
        }
    }

    /// `/readyz` status and body.
    async fn readyz(&self) -> (u16, serde_json::Value) {
        let r = self
            .client
            .get(format!("{}/readyz", self.gw.admin_url))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    }

    /// Polls `/readyz` until `pred(status, body)`; returns how long it took, or panics with the
    /// last answer at `timeout`.
    async fn wait_readyz(
        &self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(u16, &serde_json::Value) -> bool,
    ) -> Duration {
        let started = Instant::now();
        loop {
            let (status, body) = self.readyz().await;
            if pred(status, &body) {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < timeout,
                "{what}: not within {timeout:?}; last /readyz: {status} {body}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn wait_not_ready(&self, what: &str) -> Duration {
        self.wait_readyz(NOTICE, what, |s, b| {
            s == 503 && b["channels"]["ready"] == 0 && b["draining"] == false
        })
        .await
    }

    /// Waits until `n` channels are ready (connected, confirm mode, not blocked).
    async fn wait_channels(&self, n: usize, timeout: Duration) -> Duration {
        self.wait_readyz(timeout, &format!("{n} ready channels"), |s, b| {
            s == 200 && b["channels"]["ready"] == n
        })
        .await
    }

    async fn metrics(&self) -> String {
        self.client
            .get(format!("{}/metrics", self.gw.admin_url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Peer ports of the gateway's AMQP connections, as the broker lists them.
    async fn gateway_connections(&self) -> Vec<u64> {
        gateway_connections(self.node).await
    }

    /// Asserts the bound on every write so far and that every accepted one is queued (once);
    /// returns the drain-and-count report.
    async fn finish(self) -> DrainReport {
        let replies = self.replies.lock().unwrap().clone();
        let mut drained = self
            .queue
            .consume_all(Duration::from_millis(500), RECOVERY)
            .await;
        drained.extend(
            self.other_queue
                .consume_all(Duration::from_millis(500), RECOVERY)
                .await,
        );
        let report = DrainReport::new(&replies, &drained);
        eprintln!("[{}] {report}", self.prefix);
        report.assert_sound();
        assert_eq!(report.duplicates, 0, "nothing here resends: {report}");
        assert!(
            report.max_latency <= WRITE_BOUND,
            "a write took {:?} > {WRITE_BOUND:?}: {report}",
            report.max_latency
        );
        self.queue.delete().await;
        self.other_queue.delete().await;
        self.gw.shutdown().await;
        report
    }
}

/// The gateway's AMQP connections as the broker lists them: (peer port, negotiated heartbeat
/// in seconds), sorted. Recognised by their client-provided name `amqp-gateway`.
async fn gateway_connections_with_heartbeat(node: &PrivateNode) -> Vec<(u64, u64)> {
    let out = node
        .ctl_ok(&[
            "list_connections",
            "--formatter",
            "json",
            "peer_port",
            "timeout",
            "client_properties",
        ])
        .await;
    let list: Vec<serde_json::Value> = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("list_connections output is not JSON ({e}):\n{out}"));
    let mut found: Vec<(u64, u64)> = list
        .iter()
        .filter(|c| {
            c["client_properties"]
                .to_string()
                .contains(r#""connection_name","longstr","amqp-gateway""#)
        })
        .map(|c| {
            (
                c["peer_port"].as_u64().unwrap(),
                c["timeout"].as_u64().unwrap(),
            )
        })
        .collect();
    found.sort_unstable();
    found
}

/// Peer ports of the gateway's AMQP connections (sorted).
async fn gateway_connections(node: &PrivateNode) -> Vec<u64> {
    gateway_connections_with_heartbeat(node)
        .await
        .into_iter()
        .map(|(port, _)| port)
        .collect()
}

/// Waits until the broker lists exactly `n` gateway connections, none of them in `old`.
async fn wait_fresh_connections(node: &PrivateNode, n: usize, old: &[u64]) -> Vec<u64> {
    let started = Instant::now();
    loop {
        let now = gateway_connections(node).await;
        if now.len() == n && now.iter().all(|p| !old.contains(p)) {
            return now;
        }
        assert!(
            started.elapsed() < RECOVERY,
            "broker lists gateway connections {now:?}; want {n} new ones, none of {old:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Puts the node back to normal after a test that may have failed half-way.
async fn heal(node: &PrivateNode) {
    if node.ctl(&["status"]).await.status.success() {
        node.ctl_ok(&["start_app"]).await;
    } else {
        node.up().await;
    }
    node.ctl_ok(&["set_vm_memory_high_watermark", "0.4"]).await;
}

/// The restart scenario for one way of taking the broker away and bringing it back.
async fn outage_and_recovery(rig: &Rig, how: &str) {
    rig.writes_succeed("events", 4, &format!("before {how}"))
        .await;
    match how {
        "stop_app" => {
            rig.node.ctl_ok(&["stop_app"]).await;
        }
        "node stop" => rig.node.down(false).await,
        "node kill -9" => rig.node.down(true).await,
        _ => unreachable!(),
    }
    let noticed = rig
        .wait_not_ready(&format!("/readyz fails after {how}"))
        .await;
    eprintln!("[restart] {how}: /readyz 503 after {noticed:?}");
    let during = format!("during {how}");
    rig.writes_rejected_fast(20, "broker-unavailable", &during)
        .await;
    rig.reads_work(10, &during).await;
    let metrics = rig.metrics().await;
    assert!(
        metrics.contains("gateway_amqp_channels{state=\"ready\"} 0"),
        "{during}: metrics still report ready channels:\n{metrics}"
    );
    match how {
        "stop_app" => {
            rig.node.ctl_ok(&["start_app"]).await;
        }
        _ => rig.node.up().await,
    }
    // The gateway reconnects by itself: nothing pokes it.
    let back = rig.wait_channels(CHANNELS, RECOVERY).await;
    eprintln!("[restart] {how}: all {CHANNELS} channels back {back:?} after the broker");
    // 202 is only possible on an Ack: a channel not in confirm mode answers NotRequested → 500.
    rig.writes_succeed("events", 2 * CHANNELS, &format!("after {how}"))
        .await;
    rig.reads_work(2, &format!("after {how}")).await;
}

#[tokio::test]
async fn broker_restart_fails_writes_fast_keeps_reads_and_recovers() {
    let _serial = SERIAL.lock().await;
    let node = private_node().await;
    heal(node).await;
    let rig = Rig::start("restart").await;
    for how in ["stop_app", "node stop", "node kill -9"] {
        outage_and_recovery(&rig, how).await;
    }
    // Everything accepted before each outage survived it (quorum queue, persistent messages).
    let report = rig.finish().await;
    assert_eq!(report.accepted, 3 * (4 + 2 * CHANNELS));
    assert_eq!(report.rejected, 3 * 20);
    assert_eq!(report.found, report.accepted);
}

#[tokio::test]
async fn killed_connections_are_replaced_and_never_reused() {
    let _serial = SERIAL.lock().await;
    let node = private_node().await;
    heal(node).await;
    let rig = Rig::start("kill").await;
    let listed = gateway_connections_with_heartbeat(node).await;
    assert_eq!(
        listed.len(),
        2,
        "one AMQP connection per pool slot: {listed:?}"
    );
    // The URL sets no heartbeat: the gateway asks for 10 s rather than the broker's 60 s.
    assert!(
        listed.iter().all(|(_, hb)| *hb == 10),
        "heartbeats: {listed:?}"
    );
    let mut before: Vec<u64> = listed.iter().map(|(port, _)| *port).collect();
    let gw_url = rig.gw.url.clone();
    // Writes in flight while the connections die.
    let writers = Writers::start(4, "kill-load", Duration::from_millis(5), move |_, _| {
        format!("{gw_url}/events/x")
    });
    for round in 1..=2 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        node.ctl_ok(&["close_all_connections", "test"]).await;
        let now = wait_fresh_connections(node, 2, &before).await;
        rig.wait_channels(CHANNELS, RECOVERY).await;
        eprintln!("[kill] round {round}: connections {before:?} -> {now:?}");
        before = now;
    }
    let load = writers.stop().await;
    let counts = status_counts(&load);
    eprintln!("[kill] load during the kills: {counts:?}");
    // Every channel publishes after the kills, and the pool did not grow: still two
    // connections, the ones that replaced the killed ones.
    rig.writes_succeed("events", 3 * CHANNELS, "after the kills")
        .await;
    assert_eq!(rig.gateway_connections().await, before);
    let metrics = rig.metrics().await;
    assert!(
        metrics.contains(&format!(
            "gateway_amqp_channels{{state=\"ready\"}} {CHANNELS}"
        )),
        "{metrics}"
    );
    // The writers' keys ride on the same queue (routing key ev.x).
    rig.replies.lock().unwrap().extend(load);
    let report = rig.finish().await;
    assert!(report.accepted >= 3 * CHANNELS);
}

#[tokio::test]
async fn a_channel_closed_by_the_broker_does_not_poison_the_pool() {
    let _serial = SERIAL.lock().await;
    let node = private_node().await;
    heal(node).await;
    let rig = Rig::start("channel").await;
    rig.writes_succeed("events", CHANNELS, "before").await;
    rig.writes_succeed("other", CHANNELS, "before").await;
    let connections = rig.gateway_connections().await;

    // An operator deletes the exchange under the running gateway (its bindings go with it).
    let admin = Connection::connect(node.url(), ConnectionProperties::default())
        .await
        .unwrap();
    let ch = admin.create_channel().await.unwrap();
    ch.exchange_delete(
        rig.exchange.as_str().into(),
        ExchangeDeleteOptions::default(),
    )
    .await
    .unwrap();

    // The publish that meets the missing exchange: the broker closes its channel (404).
    let r = rig.write().await;
    assert!(
        r.status == 504 || r.status == 503,
        "a publish to a deleted exchange must fail, never 2xx: {r:?}"
    );
    // The channel is replaced and the configured exchange declared again.
    rig.wait_channels(CHANNELS, NOTICE).await;
    let declared = async {
        loop {
            let probe = admin.create_channel().await.unwrap();
            let passive = ExchangeDeclareOptions {
                passive: true,
                ..ExchangeDeclareOptions::default()
            };
            if probe
                .exchange_declare(
                    rig.exchange.as_str().into(),
                    ExchangeKind::Topic,
                    passive,
                    FieldTable::default(),
                )
                .await
                .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(NOTICE, declared)
        .await
        .expect("the gateway did not declare the deleted exchange again");
    rig.queue.add_binding("ev.*").await;

    // Not poisoned: every channel (round-robin) publishes to both exchanges.
    rig.writes_succeed("events", 3 * CHANNELS, "after the channel error")
        .await;
    rig.writes_succeed("other", 3 * CHANNELS, "after the channel error")
        .await;
    // Contained: the channel error cost neither connection (same peer ports).
    assert_eq!(
        rig.gateway_connections().await,
        connections,
        "a channel error must not reconnect the connection"
    );
    let _ = admin.close(200, "bye".into()).await;
    let report = rig.finish().await;
    assert_eq!(report.accepted, 2 * CHANNELS + 6 * CHANNELS);
}

#[tokio::test]
async fn resource_alarm_sheds_writes_until_the_broker_unblocks() {
    let _serial = SERIAL.lock().await;
    let node = private_node().await;
    heal(node).await;
    let rig = Rig::start("alarm").await;
    rig.writes_succeed("events", CHANNELS, "before the alarm")
        .await;

    node.ctl_ok(&["set_vm_memory_high_watermark", "0"]).await;
    // RabbitMQ blocks a connection when it next publishes: until both connections are known
    // blocked, a write may land on one that is about to be, and then it waits for its confirm
    // in vain (504 at confirm_timeout). Writes keep coming until the gateway knows.
    let started = Instant::now();
    let mut during = Vec::new();
    loop {
        let batch = futures_util::future::join_all((0..4).map(|_| rig.write())).await;
        during.extend(batch);
        let (status, body) = rig.readyz().await;
        if status == 503 && body["channels"]["blocked"] == CHANNELS {
            break;
        }
        assert!(
            started.elapsed() < 4 * CONFIRM_TIMEOUT,
            "the gateway never saw both connections blocked: {body}; writes: {:?}",
            status_counts(&during)
        );
    }
    eprintln!(
        "[alarm] both connections blocked after {:?}; writes meanwhile: {:?}",
        started.elapsed(),
        status_counts(&during)
    );
    for r in &during {
        match r.status {
            503 => assert_eq!(r.problem.as_deref(), Some("broker-blocked"), "{r:?}"),
            // In flight when the connection was blocked: unknown, after confirm_timeout.
            504 => {
                assert_eq!(
                    r.problem.as_deref(),
                    Some("publish-outcome-unknown"),
                    "{r:?}"
                );
                assert!(
                    r.latency >= CONFIRM_TIMEOUT && r.latency <= WRITE_BOUND,
                    "a 504 must come at confirm_timeout: {r:?}"
                );
            }
            _ => panic!("during a resource alarm a write must be 503 or 504: {r:?}"),
        }
    }
    // Now every write is shed at once.
    rig.writes_rejected_fast(20, "broker-blocked", "while blocked")
        .await;
    rig.reads_work(5, "while blocked").await;
    let metrics = rig.metrics().await;
    assert!(
        metrics.contains(&format!(
            "gateway_amqp_channels{{state=\"blocked\"}} {CHANNELS}"
        )),
        "{metrics}"
    );

    node.ctl_ok(&["set_vm_memory_high_watermark", "0.4"]).await;
    let back = rig.wait_channels(CHANNELS, NOTICE).await;
    eprintln!("[alarm] unblocked after {back:?}");
    rig.writes_succeed("events", 2 * CHANNELS, "after the alarm")
        .await;
    let report = rig.finish().await;
    assert_eq!(report.accepted, 3 * CHANNELS);
}

/// Resumes a SIGSTOPped process on drop, so a failing test does not leave the node frozen.
struct Frozen(String);

impl Frozen {
    fn freeze(pid: &str) -> Frozen {
        signal("-STOP", pid);
        Frozen(pid.to_owned())
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        signal("-CONT", &self.0);
    }
}

fn signal(sig: &str, pid: &str) {
    let status = Command::new("kill").args([sig, pid]).status().unwrap();
    assert!(status.success(), "kill {sig} {pid}");
}

#[tokio::test]
async fn a_frozen_broker_is_noticed_by_heartbeats_and_writes_end_in_time() {
    let _serial = SERIAL.lock().await;
    let node = private_node().await;
    heal(node).await;
    // heartbeat=1: the dead peer is noticed after ~2 s of silence.
    let rig = Rig::start_with("frozen", "?heartbeat=1").await;
    rig.writes_succeed("events", CHANNELS, "before").await;
    let dir = node.info().dir.clone().unwrap();
    let pid = std::fs::read_to_string(dir.join("rabbit.pid")).unwrap();
    let frozen = Frozen::freeze(pid.trim());

    // The broker takes the bytes (the kernel does) and answers nothing.
    let stuck = futures_util::future::join_all((0..4).map(|_| rig.write())).await;
    let noticed = rig
        .wait_not_ready("/readyz fails once heartbeats stop")
        .await;
    eprintln!(
        "[frozen] /readyz 503 {noticed:?} after the writes; writes: {:?}",
        status_counts(&stuck)
    );
    for r in &stuck {
        assert!(
            r.status == 504 || r.status == 503,
            "nothing can be confirmed by a frozen broker: {r:?}"
        );
    }
    rig.writes_rejected_fast(10, "broker-unavailable", "while frozen")
        .await;
    rig.reads_work(5, "while frozen").await;

    drop(frozen);
    rig.wait_channels(CHANNELS, RECOVERY).await;
    rig.writes_succeed("events", 2 * CHANNELS, "after the freeze")
        .await;
    rig.finish().await;
}
