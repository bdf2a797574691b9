//! The write path against a real RabbitMQ node: every publish is consumed back and checked.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashSet;
use std::io::Write;
use std::time::Duration;

use lapin::ExchangeKind;
use lapin::types::AMQPValue;
use reqwest::Method;
use reqwest::StatusCode;
use support::amqp::{header, header_str, short};
use support::gateway::{no_broker, publish_route, read_route, topic_exchange, upstream};
use support::http::{JSON, write};
use support::{TestGateway, TestQueue, amqp_url, base_config, unique_name};

const WAIT: Duration = Duration::from_secs(5);
/// How long "nothing arrives" is observed for before concluding nothing was queued.
const QUIET: Duration = Duration::from_millis(300);

/// A gateway with one topic exchange (unique per test) and the usual write routes on it.
async fn gateway_with_exchange() -> (TestGateway, String) {
    let exchange = unique_name("users");
    let config = [
        base_config(&amqp_url()),
        topic_exchange(&exchange),
        publish_route(
            "update-user",
            "/users/{id}",
            &exchange,
            "user.{id}.updated",
            "methods = [\"PUT\", \"PATCH\"]",
        ),
        publish_route(
            "create-user",
            "/users",
            &exchange,
            "user.created",
            "publish.status = 201\npublish.location = \"/users/{event_id}\"",
        ),
        publish_route(
            "delete-user",
            "/users/{id}",
            &exchange,
            "user.{id}.deleted",
            "methods = [\"DELETE\"]\npublish.properties = { type = \"UserDeleted\", priority = 3 }\npublish.headers = { \"x-schema-version\" = \"2\" }",
        ),
        publish_route(
            "upload-note",
            "/notes/{id}",
            &exchange,
            "note.{id}",
            "publish.content_types = [\"text/plain\", \"application/json\"]",
        ),
    ]
    .concat();
    (TestGateway::start(&config).await, exchange)
}

#[tokio::test]
async fn put_publishes_a_persistent_event_with_every_contract_property() {
    let (gw, exchange) = gateway_with_exchange().await;
    let q = TestQueue::bind(
        &amqp_url(),
        &exchange,
        Some(ExchangeKind::Topic),
        "user.*.updated",
    )
    .await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let res = write(
        Method::PUT,
        &gw.at("/users/42"),
        &[
            ("content-type", "application/json; charset=utf-8"),
            ("x-request-id", "req-abc-123"),
            ("traceparent", traceparent),
            ("x-evil", "must-not-be-copied"),
        ],
        r#"{"name":"Ada"}"#,
    )
    .await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    assert_eq!(res.headers()["x-request-id"], "req-abc-123");
    let body: serde_json::Value = res.json();
    assert_eq!(body["status"], "accepted");
    let event_id = body["event_id"].as_str().unwrap().to_owned();
    assert_eq!(
        uuid::Uuid::parse_str(&event_id).unwrap().get_version_num(),
        7
    );

    let d = q.expect(WAIT, "the PUT event").await;
    assert_eq!(d.routing_key.as_str(), "user.42.updated");
    assert_eq!(d.data, br#"{"name":"Ada"}"#);
    let p = &d.properties;
    assert_eq!(*p.delivery_mode(), Some(2), "persistent");
    assert_eq!(
        short(p.content_type()),
        Some("application/json; charset=utf-8")
    );
    assert_eq!(short(p.message_id()), Some(event_id.as_str()));
    assert_eq!(short(p.correlation_id()), Some("req-abc-123"));
    assert_eq!(short(p.kind()), Some("user.42.updated"));
    assert_eq!(short(p.app_id()), Some("amqp-gateway"));
    let ts = p.timestamp().expect("timestamp");
    assert!(
        ts >= before && ts <= before + 60,
        "timestamp {ts} vs {before}"
    );
    assert_eq!(header_str(&d, "x-http-method").as_deref(), Some("PUT"));
    assert_eq!(header_str(&d, "x-http-path").as_deref(), Some("/users/42"));
    assert_eq!(header_str(&d, "x-param-id").as_deref(), Some("42"));
    assert_eq!(header_str(&d, "traceparent").as_deref(), Some(traceparent));
    assert!(
        header(&d, "x-evil").is_none(),
        "client headers are never copied wholesale"
    );
    let names: Vec<&str> = p
        .headers()
        .as_ref()
        .unwrap()
        .inner()
        .keys()
        .map(|k| k.as_str())
        .collect();
    assert_eq!(names.len(), 4, "only the contract's headers: {names:?}");
    gw.shutdown().await;
}

#[tokio::test]
async fn post_create_route_answers_201_with_location() {
    let (gw, exchange) = gateway_with_exchange().await;
    let q = TestQueue::bind(
        &amqp_url(),
        &exchange,
        Some(ExchangeKind::Topic),
        "user.created",
    )
    .await;
    let res = write(Method::POST, &gw.at("/users"), JSON, r#"{"name":"Grace"}"#).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let location = res.headers()["location"].to_str().unwrap().to_owned();
    let body: serde_json::Value = res.json();
    let event_id = body["event_id"].as_str().unwrap();
    assert_eq!(location, format!("/users/{event_id}"));
    let d = q.expect(WAIT, "the POST event").await;
    assert_eq!(short(d.properties.message_id()), Some(event_id));
    assert!(
        d.properties.correlation_id().is_some(),
        "a request id is generated when absent"
    );
    let metrics = || async {
        reqwest::get(format!("{}/metrics", gw.admin_url))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    // Readiness needs one channel; the other seven open meanwhile (under load, after the
    // first publish): wait for them rather than race them.
    support::poll::eventually(WAIT, "all 8 channels ready", async || {
        metrics()
            .await
            .contains("gateway_amqp_channels{state=\"ready\"} 8")
    })
    .await;
    let metrics = metrics().await;
    for line in [
        "gateway_publishes_total{route=\"create-user\",outcome=\"acked\"} 1",
        "gateway_http_requests_total{route=\"create-user\",method=\"POST\",status=\"201\"} 1",
        "gateway_publish_confirm_duration_seconds_count 1",
    ] {
        assert!(metrics.contains(line), "missing {line} in\n{metrics}");
    }
}

#[tokio::test]
async fn static_route_properties_and_headers_are_applied() {
    let (gw, exchange) = gateway_with_exchange().await;
    let q = TestQueue::bind(&amqp_url(), &exchange, Some(ExchangeKind::Topic), "user.#").await;
    let res = reqwest::Client::new()
        .delete(gw.at("/users/7"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::ACCEPTED, "a DELETE needs no body");
    let d = q.expect(WAIT, "the DELETE event").await;
    assert_eq!(d.routing_key.as_str(), "user.7.deleted");
    assert_eq!(short(d.properties.kind()), Some("UserDeleted"));
    assert_eq!(*d.properties.priority(), Some(3));
    assert_eq!(header_str(&d, "x-schema-version").as_deref(), Some("2"));
    assert!(d.data.is_empty());
    assert!(d.properties.content_type().is_none());
}

#[tokio::test]
async fn unroutable_event_is_503_and_nothing_is_queued() {
    let (gw, exchange) = gateway_with_exchange().await;
    // Bound, but to another key: the broker has nowhere to put user.9.updated.
    let q = TestQueue::bind(&amqp_url(), &exchange, Some(ExchangeKind::Topic), "other.#").await;
    let res = write(Method::PUT, &gw.at("/users/9"), JSON, "{}").await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.headers()["retry-after"], "1");
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    let body: serde_json::Value = res.json();
    assert_eq!(body["type"], "urn:amqp-gateway:problem:no-route");
    assert!(q.next(QUIET).await.is_none());
    assert_eq!(q.count().await, 0);
}

#[tokio::test]
async fn nacked_event_is_503_and_not_accepted() {
    let (gw, exchange) = gateway_with_exchange().await;
    // A queue that is always full and rejects new publishes: the broker nacks.
    let conn = lapin::Connection::connect(&amqp_url(), lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let qname = unique_name("full");
    let mut args = lapin::types::FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongLongInt(0));
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    let opts = lapin::options::QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..Default::default()
    };
    ch.queue_declare(qname.as_str().into(), opts, args)
        .await
        .unwrap();
    ch.queue_bind(
        qname.as_str().into(),
        exchange.as_str().into(),
        "user.*.updated".into(),
        Default::default(),
        Default::default(),
    )
    .await
    .unwrap();
    let res = write(Method::PATCH, &gw.at("/users/1"), JSON, "{}").await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(res.headers().contains_key("retry-after"));
    let body: serde_json::Value = res.json();
    assert_eq!(body["type"], "urn:amqp-gateway:problem:nacked");
}

#[tokio::test]
async fn routing_key_injection_is_rejected_before_publishing() {
    let (gw, exchange) = gateway_with_exchange().await;
    let q = TestQueue::bind(&amqp_url(), &exchange, Some(ExchangeKind::Topic), "#").await;
    let long = "a".repeat(250);
    for id in [
        "123.refunded",
        "%2A",
        "%23",
        "a%2Eb",
        "%00",
        "a%0Ab",
        long.as_str(),
    ] {
        let res = write(Method::PUT, &gw.at(&format!("/users/{id}")), JSON, "{}").await;
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "id {id:?}");
        assert_eq!(res.headers()["content-type"], "application/problem+json");
    }
    assert!(q.next(QUIET).await.is_none(), "nothing may be published");
}

#[tokio::test]
async fn bad_bodies_are_rejected_and_nothing_is_queued() {
    let (gw, exchange) = gateway_with_exchange().await;
    let q = TestQueue::bind(&amqp_url(), &exchange, Some(ExchangeKind::Topic), "#").await;
    let client = reqwest::Client::new();
    let put = |ct: Option<&str>, body: Vec<u8>| {
        let mut r = client.put(gw.at("/users/1")).body(body);
        if let Some(ct) = ct {
            r = r.header("content-type", ct);
        }
        r.send()
    };
    let cases: Vec<(Option<&str>, Vec<u8>, StatusCode, &str)> = vec![
        (
            Some("application/json"),
            b"{not json".to_vec(),
            StatusCode::BAD_REQUEST,
            "bad-request",
        ),
        (
            Some("application/json"),
            Vec::new(),
            StatusCode::BAD_REQUEST,
            "bad-request",
        ),
        (
            Some("text/plain"),
            b"hi".to_vec(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
        ),
        (
            None,
            b"{}".to_vec(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
        ),
        (
            Some("application/json"),
            vec![b' '; 65537],
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload-too-large",
        ),
    ];
    for (ct, body, status, code) in cases {
        let res = put(ct, body).await.unwrap();
        assert_eq!(res.status(), status, "content-type {ct:?}");
        let problem: serde_json::Value = res.json().await.unwrap();
        assert_eq!(problem["type"], format!("urn:amqp-gateway:problem:{code}"));
    }
    // Chunked (no Content-Length) over the limit is cut off too.
    let chunks =
        futures_util::stream::iter((0..20).map(|_| Ok::<_, std::io::Error>(vec![b' '; 4096])));
    let res = write(
        Method::PUT,
        &gw.at("/users/1"),
        JSON,
        reqwest::Body::wrap_stream(chunks),
    )
    .await;
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // Unknown encodings are refused.
    let res = write(
        Method::PUT,
        &gw.at("/users/1"),
        &[
            ("content-type", "application/json"),
            ("content-encoding", "br"),
        ],
        "{}",
    )
    .await;
    assert_eq!(res.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(q.next(QUIET).await.is_none(), "nothing may be published");
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

#[tokio::test]
async fn gzip_bodies_are_published_decoded_and_bombs_are_refused() {
    let (gw, exchange) = gateway_with_exchange().await;
    let q = TestQueue::bind(&amqp_url(), &exchange, Some(ExchangeKind::Topic), "#").await;
    let json = br#"{"name":"Zipped","tags":["a","b"]}"#;
    let res = write(
        Method::PUT,
        &gw.at("/users/5"),
        &[
            ("content-type", "application/json"),
            ("content-encoding", "gzip"),
        ],
        gzip(json),
    )
    .await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let d = q.expect(WAIT, "the gzip event").await;
    assert_eq!(d.data, json);

    // 64 KiB + 1 decoded from a few hundred bytes: over the limit after decoding.
    let mut big = vec![b' '; 65537];
    big[0] = b'1';
    let res = write(
        Method::PUT,
        &gw.at("/users/5"),
        &[
            ("content-type", "application/json"),
            ("content-encoding", "gzip"),
        ],
        gzip(&big),
    )
    .await;
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let res = write(
        Method::PUT,
        &gw.at("/users/5"),
        &[
            ("content-type", "application/json"),
            ("content-encoding", "gzip"),
        ],
        b"not gzip at all".to_vec(),
    )
    .await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert!(q.next(QUIET).await.is_none());
}

#[tokio::test]
async fn idempotency_key_gives_the_same_message_id_per_route() {
    let (gw, exchange) = gateway_with_exchange().await;
    let q = TestQueue::bind(&amqp_url(), &exchange, Some(ExchangeKind::Topic), "#").await;
    let send = async |path: &str, key: &str| {
        let headers = [
            ("content-type", "application/json"),
            ("idempotency-key", key),
        ];
        write(Method::PUT, &gw.at(path), &headers, "{}").await
    };
    let a = send("/users/1", "key-1").await.json();
    let b = send("/users/1", "key-1").await.json();
    let c = send("/users/1", "key-2").await.json();
    assert_eq!(a["event_id"], b["event_id"]);
    assert_ne!(a["event_id"], c["event_id"]);
    let ids: Vec<String> = q
        .drain(QUIET)
        .await
        .iter()
        .map(|d| short(d.properties.message_id()).unwrap().to_owned())
        .collect();
    assert_eq!(
        ids.len(),
        3,
        "a retry is published again; consumers dedupe on message_id"
    );
    assert_eq!(ids[0], a["event_id"].as_str().unwrap());
    assert_eq!(ids[0], ids[1]);
    assert_ne!(ids[0], ids[2]);
    let bad = write(
        Method::PUT,
        &gw.at("/users/1"),
        &[
            ("content-type", "application/json"),
            ("idempotency-key", &"x".repeat(256)),
        ],
        "{}",
    )
    .await;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn two_thousand_concurrent_writes_are_all_confirmed_and_queued() {
    let (gw, exchange) = gateway_with_exchange().await;
    let q = TestQueue::bind(
        &amqp_url(),
        &exchange,
        Some(ExchangeKind::Topic),
        "user.*.updated",
    )
    .await;
    let client = reqwest::Client::new();
    let tasks: Vec<_> = (0..2000)
        .map(|i| {
            let req = client
                .put(gw.at(&format!("/users/{i}")))
                .header("content-type", "application/json")
                .body(format!(r#"{{"n":{i}}}"#));
            tokio::spawn(async move {
                let res = req.send().await.unwrap();
                assert_eq!(res.status(), StatusCode::ACCEPTED);
                res.json::<serde_json::Value>().await.unwrap()["event_id"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
        })
        .collect();
    let mut accepted = HashSet::new();
    for t in tasks {
        accepted.insert(t.await.unwrap());
    }
    assert_eq!(accepted.len(), 2000, "distinct event ids");
    assert_eq!(q.wait_for_count(2000, Duration::from_secs(20)).await, 2000);
    let queued: HashSet<String> = q
        .drain(QUIET)
        .await
        .iter()
        .map(|d| short(d.properties.message_id()).unwrap().to_owned())
        .collect();
    assert_eq!(
        queued, accepted,
        "every accepted event is in the queue, none lost"
    );
}

#[tokio::test]
async fn h2c_prior_knowledge_is_served() {
    let (gw, exchange) = gateway_with_exchange().await;
    let q = TestQueue::bind(
        &amqp_url(),
        &exchange,
        Some(ExchangeKind::Topic),
        "user.created",
    )
    .await;
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let res = client
        .post(gw.at("/users"))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.version(), reqwest::Version::HTTP_2);
    assert_eq!(res.status(), StatusCode::CREATED);
    q.expect(WAIT, "the h2c event").await;
}

#[tokio::test]
async fn unknown_paths_are_404_and_wrong_methods_405_with_allow() {
    let (gw, _) = gateway_with_exchange().await;
    let client = reqwest::Client::new();
    let res = client.get(gw.at("/nope")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    let res = client.get(gw.at("/users/1")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(res.headers()["allow"], "PUT, PATCH, DELETE");
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["status"], 405);
    let res = client.put(gw.at("/users")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(res.headers()["allow"], "POST");
}

#[tokio::test]
async fn non_json_media_types_are_published_as_sent() {
    let (gw, exchange) = gateway_with_exchange().await;
    let q = TestQueue::bind(&amqp_url(), &exchange, Some(ExchangeKind::Topic), "note.*").await;
    let res = write(
        Method::POST,
        &gw.at("/notes/n1"),
        &[("content-type", "text/plain")],
        "remember the milk",
    )
    .await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let d = q.expect(WAIT, "the note").await;
    assert_eq!(d.data, b"remember the milk");
    assert_eq!(short(d.properties.content_type()), Some("text/plain"));
}

#[tokio::test]
async fn default_exchange_publishes_to_the_named_queue() {
    let url = amqp_url();
    let q = TestQueue::bind(&url, "", None, "").await;
    let config = base_config(&url) + &publish_route("jobs", "/jobs", "", &q.name, "");
    let gw = TestGateway::start(&config).await;
    let res = write(Method::POST, &gw.at("/jobs"), JSON, r#"{"job":1}"#).await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let d = q.expect(WAIT, "the job").await;
    assert_eq!(d.data, br#"{"job":1}"#);
}

#[tokio::test]
async fn unreachable_broker_means_not_ready_and_503() {
    // A port nothing listens on: connects are refused.
    let config = base_config(&no_broker()) + &publish_route("jobs", "/jobs", "", "jobs", "");
    let gw = TestGateway::start_unready(&config).await;
    let client = reqwest::Client::new();
    let health = client
        .get(format!("{}/healthz", gw.admin_url))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    let ready = client
        .get(format!("{}/readyz", gw.admin_url))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    let started = std::time::Instant::now();
    let res = write(Method::POST, &gw.at("/jobs"), JSON, "{}").await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "fails fast, no waiting on the broker"
    );
    assert_eq!(res.headers()["retry-after"], "1");
    let body: serde_json::Value = res.json();
    assert_eq!(body["type"], "urn:amqp-gateway:problem:broker-unavailable");
    gw.shutdown().await;
}

#[tokio::test]
async fn an_accepted_write_invalidates_the_cached_read_of_that_path() {
    let url = amqp_url();
    let origin = support::Origin::start("o").await;
    let exchange = unique_name("inv");
    let q = TestQueue::bind(&url, &exchange, Some(ExchangeKind::Topic), "#").await;
    let config = [
        base_config(&url),
        topic_exchange(&exchange),
        upstream("users", &origin.url),
        read_route(
            "get-user",
            "/users/{id}",
            "users",
            "methods = [\"GET\"]\ncache = { ttl = \"60s\" }",
        ),
        publish_route(
            "put-user",
            "/users/{id}",
            &exchange,
            "user.{id}.updated",
            "methods = [\"PUT\"]",
        ),
    ]
    .concat();
    let gw = TestGateway::start(&config).await;
    let client = reqwest::Client::new();
    let x_cache = |r: &reqwest::Response| r.headers()["x-cache"].to_str().unwrap().to_owned();
    let r = client.get(gw.at("/users/1")).send().await.unwrap();
    assert_eq!(x_cache(&r), "MISS");
    let r = client.get(gw.at("/users/1")).send().await.unwrap();
    assert_eq!(x_cache(&r), "HIT");
    let other = client.get(gw.at("/users/2")).send().await.unwrap();
    assert_eq!(x_cache(&other), "MISS");
    let w = write(Method::PUT, &gw.at("/users/1"), JSON, "{}").await;
    assert_eq!(w.status(), StatusCode::ACCEPTED);
    q.expect(WAIT, "the write").await;
    let r = client.get(gw.at("/users/1")).send().await.unwrap();
    assert_eq!(x_cache(&r), "MISS", "the write invalidated /users/1");
    let r = client.get(gw.at("/users/2")).send().await.unwrap();
    assert_eq!(x_cache(&r), "HIT", "other paths keep their entries");
    assert_eq!(origin.hits("/users/1"), 2);
}

/// `PUT path` with `key` and `body`; status and parsed body.
async fn put_keyed(
    gw: &TestGateway,
    path: &str,
    key: &str,
    body: &'static str,
    token: Option<&str>,
) -> (StatusCode, reqwest::header::HeaderMap, serde_json::Value) {
    let mut req = reqwest::Client::new()
        .put(gw.at(path))
        .header("content-type", "application/json")
        .header("idempotency-key", key)
        .body(body);
    if let Some(token) = token {
        req = req.header("authorization", support::tokens::bearer(token));
    }
    let res = req.send().await.unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    (status, headers, res.json().await.unwrap())
}

fn message_ids(deliveries: &[lapin::message::Delivery]) -> Vec<String> {
    deliveries
        .iter()
        .map(|d| short(d.properties.message_id()).unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn an_idempotency_key_reused_with_another_body_is_422_and_nothing_is_published() {
    let (gw, exchange) = gateway_with_exchange().await;
    let q = TestQueue::bind(&amqp_url(), &exchange, Some(ExchangeKind::Topic), "#").await;
    let key = unique_name("key");
    let (s1, _, first) = put_keyed(&gw, "/users/1", &key, r#"{"name":"Ada"}"#, None).await;
    let (s2, _, again) = put_keyed(&gw, "/users/1", &key, r#"{"name":"Ada"}"#, None).await;
    assert_eq!((s1, s2), (StatusCode::ACCEPTED, StatusCode::ACCEPTED));
    assert_eq!(first["event_id"], again["event_id"], "same key, same body");
    let published = q.drain(QUIET).await;
    let id = first["event_id"].as_str().unwrap();
    assert_eq!(
        message_ids(&published),
        [id, id],
        "published again, same message_id"
    );

    let (status, headers, problem) =
        put_keyed(&gw, "/users/1", &key, r#"{"name":"Eve"}"#, None).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    assert_eq!(headers["content-type"], "application/problem+json");
    assert_eq!(
        problem["type"],
        "urn:amqp-gateway:problem:idempotency-key-reused"
    );
    assert!(
        q.next(QUIET).await.is_none(),
        "nothing published for the reused key"
    );
    // The key stays bound to its first body.
    let (status, _, third) = put_keyed(&gw, "/users/1", &key, r#"{"name":"Ada"}"#, None).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(third["event_id"], first["event_id"]);
    let d = q.next(WAIT).await.expect("the first body again");
    assert_eq!(&d.data[..], br#"{"name":"Ada"}"#);
}

#[tokio::test]
async fn idempotency_keys_are_scoped_by_path_and_subject() {
    use support::tokens::{auth_section, claims, hs};
    let exchange = unique_name("scoped");
    let config = [
        base_config(&amqp_url()),
        topic_exchange(&exchange),
        auth_section("", ""),
        publish_route(
            "update-user",
            "/users/{id}",
            &exchange,
            "user.{id}.updated",
            "methods = [\"PUT\"]\nauth = \"authenticated\"",
        ),
    ]
    .concat();
    let q = TestQueue::bind(&amqp_url(), &exchange, Some(ExchangeKind::Topic), "#").await;
    let gw = TestGateway::start(&config).await;
    let alice = hs(&claims("alice", &[], ""));
    let bob = hs(&claims("bob", &[], ""));
    let key = "shared-key-1";
    let put = |path: &'static str, body: &'static str, token: &'static str| {
        let gw = &gw;
        async move {
            let (status, _, answer) = put_keyed(gw, path, key, body, Some(token)).await;
            assert_eq!(status, StatusCode::ACCEPTED, "{path} {answer}");
            answer["event_id"].as_str().unwrap().to_owned()
        }
    };
    let alice: &'static str = alice.leak();
    let bob: &'static str = bob.leak();
    let alice_1 = put("/users/1", "{}", alice).await;
    // Another subject, same key and path, another body: its own request, not a reuse.
    let bob_1 = put("/users/1", r#"{"x":1}"#, bob).await;
    // Same subject and key on another path (another body too): another request.
    let alice_2 = put("/users/2", r#"{"y":2}"#, alice).await;
    // And the same subject, path and key again: the same id.
    let alice_1_again = put("/users/1", "{}", alice).await;
    assert_ne!(alice_1, bob_1, "two subjects never share an event id");
    assert_ne!(alice_1, alice_2, "two paths never share an event id");
    assert_eq!(alice_1, alice_1_again);
    let ids = message_ids(&q.drain(QUIET).await);
    assert_eq!(
        ids,
        [&alice_1, &bob_1, &alice_2, &alice_1].map(String::as_str)
    );
}

/// A delivery read the way a CloudEvents SDK binding reads a binary-mode message: the
/// `cloudEvents_`-prefixed application headers are the attributes, the AMQP `content_type` is
/// `datacontenttype`, the body is the data (CloudEvents AMQP protocol binding 1.0.2, §3.1).
/// The SDK's own event builder then checks what we sent (required attributes, RFC 3339 time).
struct BinaryMode<'a>(&'a lapin::message::Delivery);

impl cloudevents::message::BinaryDeserializer for BinaryMode<'_> {
    fn deserialize_binary<R: Sized, V: cloudevents::message::BinarySerializer<R>>(
        self,
        mut visitor: V,
    ) -> cloudevents::message::Result<R> {
        use cloudevents::event::SpecVersion;
        use cloudevents::message::{Error, MessageAttributeValue};
        const PREFIX: &str = "cloudEvents_";
        let delivery = self.0;
        let text = |name: &str| header_str(delivery, &format!("{PREFIX}{name}"));
        let version =
            SpecVersion::try_from(text("specversion").ok_or(Error::WrongEncoding {})?.as_str())?;
        let attributes = version.attribute_names();
        visitor = visitor.set_spec_version(version)?;
        let headers = delivery.properties.headers().clone().unwrap_or_default();
        for name in headers.inner().keys() {
            let Some(attribute) = name.as_str().strip_prefix(PREFIX) else {
                continue;
            };
            if attribute == "specversion" {
                continue;
            }
            let value = MessageAttributeValue::String(text(attribute).unwrap());
            visitor = if attributes.contains(&attribute) {
                visitor.set_attribute(attribute, value)?
            } else {
                visitor.set_extension(attribute, value)?
            };
        }
        if let Some(ct) = short(delivery.properties.content_type()) {
            visitor = visitor.set_attribute(
                "datacontenttype",
                MessageAttributeValue::String(ct.to_owned()),
            )?;
        }
        visitor.end_with_data(delivery.data.clone())
    }
}

#[tokio::test]
async fn cloudevents_routes_publish_binary_mode_events_an_sdk_reads() {
    use cloudevents::AttributesReader;
    use cloudevents::message::BinaryDeserializer;

    let exchange = unique_name("ce");
    let config = [
        base_config(&amqp_url()),
        topic_exchange(&exchange),
        publish_route(
            "update user",
            "/users/{id}",
            &exchange,
            "user.{id}.updated",
            "methods = [\"PUT\"]\npublish.cloudevents = true",
        ),
        publish_route(
            "create-order",
            "/orders",
            &exchange,
            "order.created",
            "publish.cloudevents = { source = \"https://shop.example.com/orders\", type = \"com.example.order.created\" }",
        ),
        publish_route("plain", "/plain", &exchange, "plain", ""),
    ]
    .concat();
    let gw = TestGateway::start(&config).await;
    let queue = TestQueue::bind(&amqp_url(), &exchange, Some(ExchangeKind::Topic), "#").await;
    let client = reqwest::Client::new();
    let send = |method: reqwest::Method, path: &str, body: &'static str| {
        client
            .request(method, gw.at(path))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };

    // `cloudevents = true`: source from the route name, type = the AMQP type (routing key).
    let before = std::time::SystemTime::now() - Duration::from_secs(1);
    let r = send(reqwest::Method::PUT, "/users/42", r#"{"name":"Ada"}"#)
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let event_id = r.json::<serde_json::Value>().await.unwrap()["event_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let d = queue.expect(WAIT, "the CloudEvent").await;
    let mut event = BinaryMode(&d).into_event().expect("an SDK reads the event");
    assert_eq!(event.specversion(), cloudevents::event::SpecVersion::V10);
    assert_eq!(event.id(), event_id);
    assert_eq!(short(d.properties.message_id()), Some(event_id.as_str()));
    assert_eq!(
        event.source().to_string(),
        "urn:amqp-gateway:route:update%20user"
    );
    assert_eq!(event.ty(), "user.42.updated");
    assert_eq!(event.subject(), Some("/users/42"));
    assert_eq!(event.datacontenttype(), Some("application/json"));
    let time = std::time::SystemTime::from(*event.time().expect("a time attribute"));
    assert!(
        time >= before && time <= std::time::SystemTime::now() + Duration::from_secs(1),
        "{time:?}"
    );
    let (_, _, data) = event.take_data();
    assert_eq!(
        data,
        Some(cloudevents::Data::Binary(br#"{"name":"Ada"}"#.to_vec()))
    );

    // Source and type as configured.
    let r = send(reqwest::Method::POST, "/orders", "{}").await.unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let d = queue.expect(WAIT, "the order CloudEvent").await;
    let event = BinaryMode(&d).into_event().expect("an SDK reads the event");
    assert_eq!(
        event.source().to_string(),
        "https://shop.example.com/orders"
    );
    assert_eq!(event.ty(), "com.example.order.created");
    assert_eq!(short(d.properties.kind()), Some("order.created"));

    // Without `cloudevents` the message carries none of the binding's headers, and is no
    // CloudEvent to the SDK.
    let r = send(reqwest::Method::POST, "/plain", "{}").await.unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let d = queue.expect(WAIT, "the plain event").await;
    let headers = d.properties.headers().clone().unwrap_or_default();
    assert!(
        !headers
            .inner()
            .keys()
            .any(|k| k.as_str().starts_with("cloudEvents_")),
        "{headers:?}"
    );
    assert!(BinaryMode(&d).into_event().is_err());
}
