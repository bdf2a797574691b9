//! Property-based fuzzing of the request-to-event path over real HTTP against a real broker:
//! arbitrary methods, path parameters (any bytes, percent-encoded), media types, encodings and
//! bodies either become exactly the event they describe, or a clean 4xx/503 with nothing
//! published. Never a 500, never a panic.
//!
//! Short by default; a long run: `PROPTEST_CASES=20000 cargo test --test fuzz -- --nocapture`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::Write;
use std::time::Duration;

use lapin::ExchangeKind;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use support::amqp::header_str;
use support::gateway::{publish_route, topic_exchange};
use support::{TestGateway, TestQueue, amqp_url, base_config, unique_name};

#[derive(Debug, Clone)]
struct Input {
    method: &'static str,
    id: Vec<u8>,
    content_type: Option<&'static str>,
    gzip: bool,
    body: Vec<u8>,
}

fn input() -> impl Strategy<Value = Input> {
    let body = prop_oneof![
        2 => Just(b"{}".to_vec()),
        4 => "[ -~]{0,64}".prop_map(|s| format!("{{\"v\":{}}}", serde_json::Value::String(s)).into_bytes()),
        1 => proptest::collection::vec(any::<u8>(), 0..200),
        1 => Just(Vec::new()),
    ];
    (
        prop::sample::select(vec!["POST", "PUT", "PATCH", "DELETE", "POST", "PUT", "GET"]),
        prop_oneof![
            4 => "[a-zA-Z0-9_ ~!$&'()+,;=:@-]{1,20}".prop_map(String::into_bytes),
            1 => proptest::collection::vec(any::<u8>(), 0..300),
        ],
        prop::sample::select(vec![
            Some("application/json"),
            Some("application/json"),
            Some("application/json"),
            Some("application/json; charset=utf-8"),
            Some("text/plain"),
            Some("application/x-www-form-urlencoded"),
            None,
        ]),
        any::<bool>(),
        body,
    )
        .prop_map(|(method, id, content_type, gzip, body)| Input {
            method,
            id,
            content_type,
            gzip,
            body,
        })
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arbitrary_requests_become_exact_events_or_clean_errors() {
    let url = amqp_url();
    let exchange = unique_name("fuzz");
    let q = TestQueue::bind(&url, &exchange, Some(ExchangeKind::Topic), "#").await;
    let config = format!(
        "{}{}{}",
        base_config(&url),
        topic_exchange(&exchange),
        publish_route(
            "fuzz",
            "/f/{id}",
            &exchange,
            "fz.{id}.evt",
            "methods = [\"POST\", \"PUT\", \"PATCH\", \"DELETE\"]",
        ),
    );
    let gw = TestGateway::start(&config).await;
    let client = reqwest::Client::new();
    let handle = tokio::runtime::Handle::current();
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(128);
    let mut runner = TestRunner::new(Config::with_cases(cases));
    let accepted = std::sync::atomic::AtomicUsize::new(0);
    let result = runner.run(&input(), |case| {
        tokio::task::block_in_place(|| {
            handle.block_on(async {
                let encoded: String =
                    percent_encoding::percent_encode(&case.id, percent_encoding::NON_ALPHANUMERIC)
                        .to_string();
                let method = reqwest::Method::from_bytes(case.method.as_bytes()).unwrap();
                let mut req = client.request(method, gw.at(&format!("/f/{encoded}")));
                if let Some(ct) = case.content_type {
                    req = req.header("content-type", ct);
                }
                let body = if case.gzip {
                    req = req.header("content-encoding", "gzip");
                    gzip(&case.body)
                } else {
                    case.body.clone()
                };
                let res = req
                    .body(body)
                    .send()
                    .await
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                let status = res.status().as_u16();
                let content_type = res
                    .headers()
                    .get("content-type")
                    .map(|v| v.to_str().unwrap().to_owned());
                let text = res.text().await.unwrap();
                prop_assert!(
                    matches!(status, 202 | 400 | 404 | 405 | 413 | 415 | 431),
                    "unexpected {} for {:?}: {}",
                    status,
                    case,
                    text
                );
                if status != 202 {
                    prop_assert_eq!(
                        content_type.as_deref(),
                        Some("application/problem+json"),
                        "{:?}",
                        case
                    );
                    let got = q.next(Duration::from_millis(20)).await;
                    prop_assert!(
                        got.is_none(),
                        "a rejected request published something: {:?}",
                        case
                    );
                    return Ok(());
                }
                accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let body: serde_json::Value = serde_json::from_str(&text).unwrap();
                let d = q.next(Duration::from_secs(5)).await;
                prop_assert!(d.is_some(), "accepted but not queued: {:?}", case);
                let d = d.unwrap();
                let id = String::from_utf8(case.id.clone()).unwrap();
                prop_assert_eq!(d.routing_key.as_str(), format!("fz.{id}.evt"));
                prop_assert_eq!(
                    &d.data,
                    &case.body,
                    "the event body is the decoded request body"
                );
                prop_assert_eq!(
                    d.properties.message_id().as_ref().map(|m| m.as_str()),
                    body["event_id"].as_str()
                );
                let method = header_str(&d, "x-http-method").expect("x-http-method");
                prop_assert_eq!(method, case.method);
                Ok(())
            })
        })
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let accepted = accepted.into_inner();
    println!("fuzz: {cases} cases, {accepted} accepted and checked against the queue");
    assert!(
        accepted > 0,
        "the generator never produced an accepted request"
    );
}
