//! Validated events against a real RabbitMQ node: a write route's JSON Schema (`schema =
//! "..."`) and the JSON depth limit (`server.max_json_depth`). Every refusal is checked twice:
//! the problem body, and that nothing reached the queue (a valid sentinel event sent after the
//! refused ones must be the first message consumed).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use lapin::ExchangeKind;
use reqwest::Method;
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::gateway::{publish_route, topic_exchange};
use support::http::{Answer, JSON, write};
use support::{TestGateway, TestQueue, amqp_url, base_config, unique_name};

const WAIT: Duration = Duration::from_secs(5);

/// A value that must never come back in a response.
const SECRET: &str = "sk_live_9f8e7d6c5b4a-DO-NOT-ECHO";

/// A directory of schema files for one test (unique per test binary and test), removed on drop.
struct SchemaDir(PathBuf);

impl SchemaDir {
    fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "amqp-gateway-schema-tests-{}-{test}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    /// Writes `schema` as `name`; returns the absolute path for the config.
    fn write(&self, name: &str, schema: &Value) -> String {
        self.write_text(name, &schema.to_string())
    }

    fn write_text(&self, name: &str, text: &str) -> String {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    }
}

impl Drop for SchemaDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The schema most tests use: a user with a name, an email-ish string and an address.
fn user_schema() -> Value {
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "required": ["name"],
        "properties": {
            "name": {"type": "string"},
            "age": {"type": "integer"},
            "token": {"type": "string", "pattern": "^tok_[a-z]+$"},
            "address": {
                "type": "object",
                "properties": {"zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
                "additionalProperties": false
            },
            "tags": {"type": "array", "items": {"type": "string"}}
        },
        "additionalProperties": false
    })
}

/// The config: `POST /things` validated by `schema_file` (routing key `thing.created`) and
/// `POST /raw` without a schema (routing key `raw`), on a fresh topic exchange.
fn config(exchange: &str, schema_file: &str) -> String {
    format!(
        "{}{}{}{}",
        base_config(&amqp_url()),
        topic_exchange(exchange),
        publish_route(
            "create-thing",
            "/things",
            exchange,
            "thing.created",
            &format!("schema = \"{schema_file}\"")
        ),
        publish_route("raw", "/raw", exchange, "raw", "")
    )
}

/// A gateway on `schema`, and a queue bound to everything it publishes.
async fn setup(dir: &SchemaDir, schema: &Value) -> (TestGateway, TestQueue) {
    let file = dir.write("schema.json", schema);
    let exchange = unique_name("schema");
    let gw = TestGateway::start(&config(&exchange, &file)).await;
    let q = TestQueue::bind(&amqp_url(), &exchange, Some(ExchangeKind::Topic), "#").await;
    (gw, q)
}

async fn post(gw: &TestGateway, path: &str, body: impl Into<reqwest::Body>) -> Answer {
    write(Method::POST, &gw.at(path), JSON, body).await
}

/// Status, problem `type`, and the body as text (to look for echoed values) and as JSON.
async fn answer(res: Answer) -> (StatusCode, String, Value) {
    let status = res.status();
    let content_type = res.headers()["content-type"].to_str().unwrap().to_owned();
    let text = res.text();
    let body: Value = serde_json::from_str(&text).unwrap();
    if !status.is_success() {
        assert_eq!(content_type, "application/problem+json", "{text}");
    }
    (status, text, body)
}

/// `(pointer, keyword)` pairs of a 422 body, sorted.
fn violations(body: &Value) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = body["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("no errors array in {body}"))
        .iter()
        .map(|e| {
            assert_eq!(
                e.as_object().unwrap().len(),
                2,
                "pointer and keyword only: {e}"
            );
            (
                e["pointer"].as_str().unwrap().to_owned(),
                e["keyword"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    v.sort();
    v
}

/// Sends a valid event to `/raw` and checks it is the first message in the queue: whatever was
/// refused before it was not published (a refused-but-published event would have been
/// confirmed, so queued, before its answer came back).
async fn assert_nothing_published_before_sentinel(gw: &TestGateway, q: &TestQueue) {
    let res = post(gw, "/raw", r#"{"sentinel":true}"#).await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let d = q.expect(WAIT, "the sentinel event").await;
    assert_eq!(
        d.routing_key.as_str(),
        "raw",
        "a refused event was published: {}",
        String::from_utf8_lossy(&d.data)
    );
    assert_eq!(d.data, br#"{"sentinel":true}"#);
}

#[tokio::test]
async fn valid_body_is_accepted_and_published_unchanged() {
    let dir = SchemaDir::new("valid");
    let (gw, q) = setup(&dir, &user_schema()).await;
    let body = r#"{"name":"Ada","age":36,"address":{"zip":"12345"},"tags":["x"]}"#;
    let (status, _, answer) = answer(post(&gw, "/things", body).await).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let d = q.expect(WAIT, "the valid event").await;
    assert_eq!(d.routing_key.as_str(), "thing.created");
    assert_eq!(d.data, body.as_bytes(), "published byte for byte");
    assert_eq!(
        d.properties.message_id().as_ref().unwrap().as_str(),
        answer["event_id"].as_str().unwrap()
    );
}

/// What is sent, the body, and the `(pointer, keyword)`s expected back.
type Case = (&'static str, Value, &'static [(&'static str, &'static str)]);

#[tokio::test]
async fn each_violation_is_a_422_naming_pointer_and_keyword() {
    let dir = SchemaDir::new("violations");
    let (gw, q) = setup(&dir, &user_schema()).await;
    let cases: [Case; 5] = [
        (
            "wrong type",
            json!({"name": "Ada", "age": "thirty-six"}),
            &[("/age", "type")],
        ),
        ("missing required", json!({"age": 36}), &[("", "required")]),
        (
            "pattern mismatch",
            json!({"name": "Ada", "address": {"zip": "1234X"}}),
            &[("/address/zip", "pattern")],
        ),
        (
            "additionalProperties",
            json!({"name": "Ada", "nickname": "Countess"}),
            &[("", "additionalProperties")],
        ),
        (
            "nested additionalProperties and an item type",
            json!({"name": "Ada", "address": {"zip": "12345", "city": "London"}, "tags": ["a", 7]}),
            &[("/address", "additionalProperties"), ("/tags/1", "type")],
        ),
    ];
    for (what, body, expected) in cases {
        let (status, text, problem) = answer(post(&gw, "/things", body.to_string()).await).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{what}: {text}");
        assert_eq!(
            problem["type"], "urn:amqp-gateway:problem:invalid-event",
            "{what}"
        );
        assert_eq!(problem["status"], 422);
        assert_eq!(problem["truncated"], false, "{what}");
        let mut expected: Vec<(String, String)> = expected
            .iter()
            .map(|(p, k)| ((*p).to_owned(), (*k).to_owned()))
            .collect();
        expected.sort();
        assert_eq!(violations(&problem), expected, "{what}");
    }
    assert_nothing_published_before_sentinel(&gw, &q).await;
}

#[tokio::test]
async fn values_from_the_body_are_never_echoed() {
    let dir = SchemaDir::new("no-echo");
    let (gw, q) = setup(&dir, &user_schema()).await;
    // The secret fails `pattern`, sits next to an additional property, and is the wrong type of
    // an item: every kind of error message the validator would write quotes it.
    let bodies = [
        json!({"name": "Ada", "token": SECRET}),
        json!({"name": "Ada", "extra": SECRET}),
        json!({"name": "Ada", "age": SECRET}),
        json!({"name": 5, "tags": [SECRET, 1]}),
    ];
    for body in bodies {
        let (status, text, problem) = answer(post(&gw, "/things", body.to_string()).await).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{text}");
        assert!(!violations(&problem).is_empty());
        assert!(
            !text.contains(SECRET) && !text.contains("sk_live"),
            "the response echoes a value: {text}"
        );
    }
    assert_nothing_published_before_sentinel(&gw, &q).await;
}

#[tokio::test]
async fn many_violations_are_capped_at_ten_and_marked_truncated() {
    let dir = SchemaDir::new("capped");
    let (gw, q) = setup(&dir, &user_schema()).await;
    let tags: Vec<u32> = (0..40).collect();
    let (status, text, problem) = answer(
        post(
            &gw,
            "/things",
            json!({"name": "Ada", "tags": tags}).to_string(),
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{text}");
    let errors = problem["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 10, "{text}");
    assert_eq!(problem["truncated"], true);
    for e in errors {
        assert_eq!(e["keyword"], "type");
        assert!(e["pointer"].as_str().unwrap().starts_with("/tags/"), "{e}");
    }
    assert_nothing_published_before_sentinel(&gw, &q).await;
}

#[tokio::test]
async fn draft_07_schema_is_enforced_with_draft_07_rules() {
    let dir = SchemaDir::new("draft7");
    // Tuple `items` + `additionalItems`: draft 7 only (2020-12 spells it `prefixItems`, and
    // refuses an array `items`), so this passes load and validates only as draft 7.
    let schema = json!({
        "$schema": "http://json-schema.org/draft-07/schema#",
        "type": "array",
        "items": [{"type": "string"}, {"type": "integer"}],
        "additionalItems": false,
        "definitions": {"unused": {"type": "null"}}
    });
    let (gw, q) = setup(&dir, &schema).await;
    let (status, text, problem) = answer(post(&gw, "/things", r#"["a",1,true]"#).await).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{text}");
    assert_eq!(
        violations(&problem),
        [("".to_owned(), "additionalItems".to_owned())]
    );
    let (status, text, problem) = answer(post(&gw, "/things", r#"[1,"a"]"#).await).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{text}");
    assert_eq!(
        violations(&problem),
        [
            ("/0".to_owned(), "type".to_owned()),
            ("/1".to_owned(), "type".to_owned())
        ]
    );
    assert_nothing_published_before_sentinel(&gw, &q).await;
    let (status, text, _) = answer(post(&gw, "/things", r#"["a",1]"#).await).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{text}");
    let d = q.expect(WAIT, "the valid draft-7 event").await;
    assert_eq!(d.data, br#"["a",1]"#);
}

#[tokio::test]
async fn remote_ref_fails_config_load_naming_the_key() {
    let dir = SchemaDir::new("remote-ref");
    let file = dir.write(
        "remote.json",
        &json!({"type": "object", "properties": {"x": {"$ref": "https://example.com/x.json"}}}),
    );
    let err = amqp_gateway::Config::from_toml(&config("x", &file), "test-config", |_| None)
        .expect_err("a remote $ref must fail the load")
        .to_string();
    assert!(
        err.contains(&format!("routes[0].schema: {file}: ")),
        "{err}"
    );
    assert!(err.contains("https://example.com/x.json"), "{err}");
    assert!(err.contains("self-contained"), "{err}");
}

#[tokio::test]
async fn catastrophic_backtracking_pattern_is_matched_in_linear_time() {
    let dir = SchemaDir::new("redos");
    let schema = json!({
        "type": "object",
        "properties": {"s": {"type": "string", "pattern": "^(a+)+$"}}
    });
    let (gw, q) = setup(&dir, &schema).await;
    // 2^29 paths for a backtracking engine; the regex crate's automaton walks it once.
    let evil = format!("{}b", "a".repeat(29));
    assert_eq!(evil.len(), 30);
    let started = Instant::now();
    let (status, text, problem) =
        answer(post(&gw, "/things", json!({ "s": evil }).to_string()).await).await;
    let took = started.elapsed();
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{text}");
    assert_eq!(
        violations(&problem),
        [("/s".to_owned(), "pattern".to_owned())]
    );
    assert!(took < Duration::from_secs(1), "validation took {took:?}");
    // Still linear for a much longer input.
    let started = Instant::now();
    let long = format!("{}b", "a".repeat(60_000));
    let (status, _, _) = answer(post(&gw, "/things", json!({ "s": long }).to_string()).await).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_nothing_published_before_sentinel(&gw, &q).await;
}

fn nested(depth: usize) -> String {
    format!(
        "{}{}",
        "{\"a\":".repeat(depth - 1) + "[]",
        "}".repeat(depth - 1)
    )
}

#[tokio::test]
async fn json_deeper_than_64_is_refused_by_default_and_64_is_accepted() {
    let dir = SchemaDir::new("depth");
    let (gw, q) = setup(&dir, &json!({})).await;
    for path in ["/raw", "/things"] {
        let (status, text, problem) = answer(post(&gw, path, nested(65)).await).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {text}");
        assert_eq!(problem["type"], "urn:amqp-gateway:problem:bad-request");
        assert_eq!(problem["detail"], "JSON nested deeper than 64");
        // Brackets inside strings are not nesting.
        let in_string = json!({ "s": "[".repeat(500) }).to_string();
        let (status, text, _) = answer(post(&gw, path, in_string).await).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{path}: {text}");
        q.expect(WAIT, "the event with brackets in a string").await;
    }
    assert_nothing_published_before_sentinel(&gw, &q).await;
    for path in ["/raw", "/things"] {
        let (status, text, _) = answer(post(&gw, path, nested(64)).await).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{path}: {text}");
        let d = q.expect(WAIT, "the depth-64 event").await;
        assert_eq!(d.data, nested(64).as_bytes());
    }
}

#[tokio::test]
async fn check_names_the_broken_schema_file_and_its_key() {
    let dir = SchemaDir::new("check");
    let broken = dir.write_text("broken.json", r#"{"type": "object", "properties": "#);
    let config = dir.write_text("gateway.toml", &config("x", &broken));
    let out = std::process::Command::new(support::process::BINARY)
        .args(["check", "--config", &config])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(64),
        "an invalid config exits 64 (EX_USAGE): {stderr}"
    );
    assert!(
        stderr.contains(&format!("routes[0].schema: {broken}: not valid JSON")),
        "{stderr}"
    );
    assert!(stderr.contains(&config), "names the config file: {stderr}");
}
