//! Structured logs of the real binary: one JSON access line per request with request id,
//! route, status and latency, and never a token, a query string or broker credentials.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use lapin::ExchangeKind;
use support::gateway::{base_config_full, publish_route, topic_exchange};
use support::process::GatewayProcess;
use support::{TestQueue, amqp_url, unique_name};

#[tokio::test]
async fn json_access_logs_carry_request_id_route_status_latency_and_no_secrets() {
    let url = amqp_url();
    let exchange = unique_name("logs");
    let q = TestQueue::bind(&url, &exchange, Some(ExchangeKind::Topic), "#").await;
    let config = [
        base_config_full(
            &url,
            "listen = \"{listen}\"\nadmin_listen = \"{admin}\"",
            "connections = 1\nchannels_per_connection = 2",
        ),
        topic_exchange(&exchange),
        publish_route(
            "write",
            "/w/{id}",
            &exchange,
            "w.{id}",
            "methods = [\"PUT\"]",
        ),
    ]
    .concat();
    let mut gw = GatewayProcess::start_with(&config, &["--log-format", "json"]).await;
    let client = reqwest::Client::new();
    let res = client
        .put(format!("{}/w/1?access_token=qs-secret-42", gw.url))
        .header("x-request-id", "log-test-1")
        .header("authorization", "Bearer sekrit-token-123")
        .header("content-type", "application/json")
        .body(r#"{"password":"body-secret-7"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    q.expect(Duration::from_secs(5), "the write").await;
    let res = client
        .get(format!("{}/nope", gw.url))
        .header("x-request-id", "log-test-2")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    assert!(
        gw.terminate(Duration::from_secs(15)).await,
        "clean exit on SIGTERM"
    );
    let log = gw.log();

    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect();
    let access = |id: &str| {
        lines
            .iter()
            .find(|v| v["request_id"] == id && v["message"] == "Request completed.")
            .unwrap_or_else(|| panic!("no access line for {id} in\n{log}"))
            .clone()
    };
    let write = access("log-test-1");
    assert_eq!(write["status"], 202);
    assert_eq!(write["route"], "write");
    assert!(
        write["latency_ms"].as_f64().is_some_and(|ms| ms >= 0.0),
        "{write}"
    );
    assert_eq!(write["path"], "/w/1", "the path, never the query");
    let missing = access("log-test-2");
    assert_eq!(missing["status"], 404);

    for secret in [
        "sekrit-token-123",
        "qs-secret-42",
        "body-secret-7",
        "guest:guest",
    ] {
        assert!(
            !log.contains(secret),
            "`{secret}` leaked into the logs:\n{log}"
        );
    }
}
