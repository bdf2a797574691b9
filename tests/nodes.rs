//! `[amqp] urls`: the connection slots of one gateway over several broker nodes, on the test
//! broker reached under two names (`127.0.0.1` and `localhost`: two "nodes" to the gateway)
//! and a port nothing listens on (a dead node).
//!
//! What it proves: slots spread round-robin over the nodes; a node that refuses is skipped for
//! the next one; `/readyz` names each slot's node and `gateway_amqp_connections{node}` counts
//! them; writes are confirmed through whichever node a slot is on.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use support::gateway::{publish_route, topic_exchange};
use support::{TestGateway, amqp_url, base_config, free_port, unique_name};

/// A gateway config whose `[amqp]` lists `urls` and opens `connections` connections, with an
/// exchange and a POST route on it.
fn config(urls: &[String], connections: usize) -> (String, String) {
    let exchange = unique_name("nodes");
    let base = base_config(&amqp_url())
        .replacen(
            &format!("url = \"{}\"", amqp_url()),
            &format!("urls = {urls:?}"),
            1,
        )
        .replacen(
            "connections = 2",
            &format!("connections = {connections}"),
            1,
        );
    let text = format!(
        "{base}{}{}",
        topic_exchange(&exchange),
        publish_route("create-order", "/orders", &exchange, "order.created", "")
    );
    (text, exchange)
}

/// The test broker's URL with `host` instead of `127.0.0.1`.
fn on_host(host: &str) -> String {
    amqp_url().replacen("127.0.0.1", host, 1)
}

/// `/readyz` `connections[].node`, sorted.
async fn slot_nodes(gw: &TestGateway) -> Vec<Option<String>> {
    let body: serde_json::Value = reqwest::get(format!("{}/readyz", gw.admin_url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut nodes: Vec<Option<String>> = body["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["node"].as_str().map(str::to_owned))
        .collect();
    nodes.sort();
    nodes
}

fn port() -> String {
    amqp_url()
        .rsplit(':')
        .next()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn slots_spread_over_the_nodes_and_readyz_names_them() {
    let (text, _) = config(&[on_host("127.0.0.1"), on_host("localhost")], 4);
    let gw = TestGateway::start(&text).await;
    let p = port();
    let a = format!("127.0.0.1:{p}");
    let b = format!("localhost:{p}");
    support::poll::eventually(
        Duration::from_secs(10),
        "all four slots connected",
        async || slot_nodes(&gw).await.iter().all(Option::is_some),
    )
    .await;
    assert_eq!(
        slot_nodes(&gw).await,
        [
            Some(a.clone()),
            Some(a.clone()),
            Some(b.clone()),
            Some(b.clone())
        ],
        "four connections over two nodes: two each"
    );
    let metrics = reqwest::get(format!("{}/metrics", gw.admin_url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for node in [&a, &b] {
        let line = format!("gateway_amqp_connections{{node=\"{node}\"}} 2");
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} missing:\n{metrics}"
        );
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn a_dead_node_is_skipped_and_writes_are_confirmed_on_the_live_one() {
    let dead = amqp_url().replacen(&format!(":{}/", port()), &format!(":{}/", free_port()), 1);
    let (text, exchange) = config(&[dead, on_host("127.0.0.1")], 2);
    let queue = support::TestQueue::bind(
        &amqp_url(),
        &exchange,
        Some(lapin::ExchangeKind::Topic),
        "order.created",
    )
    .await;
    let gw = TestGateway::start(&text).await;
    let live = format!("127.0.0.1:{}", port());
    support::poll::eventually(
        Duration::from_secs(10),
        "both slots on the live node",
        async || slot_nodes(&gw).await == [Some(live.clone()), Some(live.clone())],
    )
    .await;
    let status = support::http::write(
        reqwest::Method::POST,
        &gw.at("/orders"),
        support::http::JSON,
        r#"{"order":1}"#,
    )
    .await
    .status();
    assert_eq!(status, 202);
    assert_eq!(
        queue.expect(Duration::from_secs(5), "the order").await.data,
        br#"{"order":1}"#
    );
    gw.shutdown().await;
}
