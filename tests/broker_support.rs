//! Exercises `tests/support` against a real RabbitMQ: the node (booted here
//! or given by `AMQP_TEST_URL`), `rabbitmqctl`, and `TestQueue` end to end
//! with a confirmed publish straight through lapin.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code, helpers included

mod support;

use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};
use support::{TestQueue, amqp_url};

const WAIT: Duration = Duration::from_secs(10);
const QUIET: Duration = Duration::from_millis(300);

/// Publishes `body` as mandatory with publisher confirms, asserts the broker
/// acked it, and returns whether it was routed to some queue.
async fn publish_confirmed(
    url: &str,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    properties: BasicProperties,
) -> bool {
    let conn = Connection::connect(url, ConnectionProperties::default())
        .await
        .expect("connect");
    let channel = conn.create_channel().await.expect("channel");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    let confirm = channel
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            body,
            properties,
        )
        .await
        .expect("basic.publish")
        .await
        .expect("publisher confirm");
    assert!(confirm.is_ack(), "broker nacked the publish: {confirm:?}");
    let routed = confirm.take_message().is_none();
    conn.close(200, "bye".into()).await.expect("close");
    routed
}

#[tokio::test]
async fn test_queue_receives_confirmed_publish_with_properties() {
    let url = amqp_url();
    let exchange = support::amqp::unique_name("it.support.topic");
    let q = TestQueue::bind(&url, &exchange, Some(ExchangeKind::Topic), "orders.*").await;
    assert_eq!(q.count().await, 0);

    let mut headers = FieldTable::default();
    headers.insert(
        "x-tenant".into(),
        AMQPValue::LongString(LongString::from("acme")),
    );
    let props = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_message_id("msg-1".into())
        .with_delivery_mode(2)
        .with_headers(headers);
    assert!(publish_confirmed(&url, &exchange, "orders.created", br#"{"id":1}"#, props).await);
    // Not matching the binding: returned as unroutable, never delivered.
    assert!(
        !publish_confirmed(
            &url,
            &exchange,
            "invoices.created",
            b"nope",
            BasicProperties::default()
        )
        .await
    );

    assert_eq!(q.wait_for_count(1, WAIT).await, 1, "queue count");
    let d = q
        .expect(WAIT, "the confirmed publish to orders.created")
        .await;
    assert_eq!(d.data, br#"{"id":1}"#);
    assert_eq!(d.exchange.as_str(), exchange);
    assert_eq!(d.routing_key.as_str(), "orders.created");
    assert_eq!(
        d.properties.content_type().as_ref().map(|s| s.as_str()),
        Some("application/json")
    );
    assert_eq!(
        d.properties.message_id().as_ref().map(|s| s.as_str()),
        Some("msg-1")
    );
    assert_eq!(*d.properties.delivery_mode(), Some(2));
    let got_headers = d.properties.headers().as_ref().expect("headers");
    assert_eq!(
        got_headers.inner().get("x-tenant"),
        Some(&AMQPValue::LongString(LongString::from("acme")))
    );

    assert!(q.next(QUIET).await.is_none(), "unexpected extra message");
    assert_eq!(q.count().await, 0);
}

#[tokio::test]
async fn drain_collects_everything_in_order() {
    let url = amqp_url();
    let exchange = support::amqp::unique_name("it.support.direct");
    let q = TestQueue::bind(&url, &exchange, Some(ExchangeKind::Direct), "k").await;
    for i in 0..5 {
        let body = format!("m{i}");
        let routed =
            publish_confirmed(&url, &exchange, "k", body.as_bytes(), Default::default()).await;
        assert!(routed);
    }
    let got: Vec<String> = q
        .drain(QUIET)
        .await
        .into_iter()
        .map(|d| String::from_utf8(d.data).unwrap())
        .collect();
    assert_eq!(got, ["m0", "m1", "m2", "m3", "m4"]);
    assert!(q.drain(QUIET).await.is_empty());
}

#[tokio::test]
async fn queues_in_one_binary_are_isolated() {
    let url = amqp_url();
    let exchange = support::amqp::unique_name("it.support.fanout");
    let a = TestQueue::bind(&url, &exchange, Some(ExchangeKind::Fanout), "").await;
    let b = TestQueue::bind(&url, &exchange, None, "").await;
    assert_ne!(a.name, b.name);
    assert!(publish_confirmed(&url, &exchange, "", b"both", Default::default()).await);
    assert_eq!(a.expect(WAIT, "fanout copy a").await.data, b"both");
    assert_eq!(b.expect(WAIT, "fanout copy b").await.data, b"both");

    // Default exchange: addressed by queue name, no binding.
    let c = TestQueue::bind(&url, "", None, "").await;
    assert!(publish_confirmed(&url, "", &c.name, b"direct", Default::default()).await);
    assert_eq!(
        c.expect(WAIT, "default-exchange publish").await.data,
        b"direct"
    );
    assert!(a.next(QUIET).await.is_none());
}

#[tokio::test]
async fn next_times_out_on_an_empty_queue() {
    let url = amqp_url();
    let q = TestQueue::bind(&url, "", None, "").await;
    let started = std::time::Instant::now();
    assert!(q.next(Duration::from_millis(400)).await.is_none());
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(400) && waited < Duration::from_secs(3),
        "next() waited {waited:?}"
    );
}

#[test]
fn rabbitmqctl_reaches_the_node() {
    let url = amqp_url();
    let Some(node) = support::node_name() else {
        eprintln!("skipped: AMQP_TEST_URL={url} without AMQP_TEST_NODE, no rabbitmqctl access");
        return;
    };
    let status = support::rabbitmqctl_ok(&["status"]);
    assert!(
        status.contains(&node),
        "status output does not mention {node}:\n{status}"
    );
    // The AMQP port of the URL is one of the node's listeners.
    let port = url.rsplit(':').next().unwrap().split('/').next().unwrap();
    let out = support::rabbitmqctl(&["eval", "rabbit_networking:active_listeners()."]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.split(|c: char| !c.is_ascii_digit()).any(|t| t == port),
        "node {node} does not listen on {port}: {text}"
    );
    // A failing command is reported as failure, not swallowed.
    let bad = support::rabbitmqctl(&["no_such_command"]);
    assert!(!bad.status.success());
}

#[test]
fn private_node_is_ours_when_no_url_is_given() {
    let url = amqp_url();
    if std::env::var_os("AMQP_TEST_URL").is_some() {
        assert!(!support::booted_here());
        assert_eq!(url, std::env::var("AMQP_TEST_URL").unwrap());
    } else {
        assert!(support::booted_here());
        assert!(url.starts_with("amqp://guest:guest@127.0.0.1:"), "{url}");
        assert!(url.ends_with("/%2f"), "{url}");
        let dir = support::node().dir.clone().expect("state dir");
        assert!(dir.join(".erlang.cookie").exists());
        assert_ne!(url, "amqp://guest:guest@127.0.0.1:5672/%2f");
    }
}
