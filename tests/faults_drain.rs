//! Drain-and-count under broker faults (scenario 13, Jepsen-style): concurrent clients post
//! events with unique keys while the broker is restarted three ways and every connection is
//! killed three times; afterwards the queue is drained and compared with the answers.
//!
//! Must hold: every write answered 2xx is in the queue (lost = 0); no write answered 503 is
//! (503 means nothing was enqueued); every answer is 2xx, 503 or 504 and comes within the
//! write bound. Reported, not asserted: duplicates and "recovered" (answered 504, queued
//! anyway).
//!
//! Runs against a RabbitMQ node of this binary's own (`support::private_node`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use lapin::ExchangeKind;
use support::gateway::events_config;
use support::load::{DrainReport, Writers, status_counts};
use support::{PrivateNode, TestGateway, TestQueue, private_node, unique_name};

/// Concurrent writers.
const CLIENTS: usize = 16;
/// Pause of each writer between two writes (bounds the message count, and so the drain).
const PAUSE: Duration = Duration::from_millis(10);
/// Steady load between two faults, once the gateway is ready again.
const STEADY: Duration = Duration::from_secs(2);
/// Every write is answered within confirm_timeout (3 s) + 1 s of slack: the request path
/// never waits for a connection.
const WRITE_BOUND: Duration = Duration::from_secs(4);
/// Deadline for the gateway to be ready again after a fault.
const RECOVERY: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy)]
enum Fault {
    /// `rabbitmqctl stop_app` then `start_app`.
    StopApp,
    /// The whole node stopped gracefully, then booted again (same ports, same data).
    NodeRestart,
    /// The node SIGKILLed, then booted again.
    NodeKill,
    /// `rabbitmqctl close_all_connections`.
    KillConnections,
}

async fn inject(node: &PrivateNode, fault: Fault) {
    match fault {
        Fault::StopApp => {
            node.ctl_ok(&["stop_app"]).await;
            node.ctl_ok(&["start_app"]).await;
        }
        Fault::NodeRestart => {
            node.down(false).await;
            node.up().await;
        }
        Fault::NodeKill => {
            node.down(true).await;
            node.up().await;
        }
        Fault::KillConnections => {
            node.ctl_ok(&["close_all_connections", "drain-and-count"])
                .await;
        }
    }
}

#[tokio::test]
async fn no_accepted_write_is_lost_across_broker_restarts_and_killed_connections() {
    let node = private_node().await;
    let exchange = unique_name("drain");
    let config = events_config(
        node.url(),
        &exchange,
        "",
        "confirm_timeout = \"3s\"\nconnect_timeout = \"1s\"\nretry_after = \"1s\"",
    );
    let gw = TestGateway::start(&config).await;
    // Bound before the load; a quorum queue, as write routes should target.
    let queue =
        TestQueue::bind_quorum(node.url(), &exchange, Some(ExchangeKind::Topic), "ev.*").await;
    let gw_url = gw.url.clone();
    let writers = Writers::start(CLIENTS, "drain", PAUSE, move |c, _| {
        format!("{gw_url}/events/c{c}")
    });
    let started = Instant::now();
    let schedule = [
        Fault::NodeRestart,
        Fault::KillConnections,
        Fault::NodeKill,
        Fault::KillConnections,
        Fault::StopApp,
        Fault::KillConnections,
    ];
    let mut accepted_before = 0;
    tokio::time::sleep(STEADY).await;
    for fault in schedule {
        let t = Instant::now();
        inject(node, fault).await;
        let injected = t.elapsed();
        let ready = gw.ready_within(RECOVERY, &format!("{fault:?}")).await;
        tokio::time::sleep(STEADY).await;
        // Progress: writes are accepted again after every fault.
        let replies = writers.ledger.replies();
        let accepted = replies.iter().filter(|r| r.accepted()).count();
        eprintln!(
            "[drain] {fault:?}: injected in {injected:?}, ready {ready:?} later; \
             {} writes so far, +{} accepted",
            replies.len(),
            accepted - accepted_before
        );
        assert!(
            accepted > accepted_before,
            "nothing accepted after {fault:?}: {:?}",
            status_counts(&replies)
        );
        accepted_before = accepted;
    }
    let replies = writers.stop().await;
    let load_time = started.elapsed();

    let drained = queue
        .consume_all(Duration::from_secs(1), Duration::from_secs(120))
        .await;
    let report = DrainReport::new(&replies, &drained);
    eprintln!(
        "[drain] {CLIENTS} clients, {load_time:.1?}, faults {schedule:?}\n[drain] REPORT {report}"
    );
    report.assert_sound();
    assert!(
        report.max_latency <= WRITE_BOUND,
        "a write took {:?} > {WRITE_BOUND:?}",
        report.max_latency
    );
    assert!(
        report.rejected > 0,
        "no write was ever rejected: the faults did not bite"
    );
    queue.delete().await;
    gw.shutdown().await;
}
