//! Cache coherence across instances (`[cache] coherence`): real gateways on the shared
//! broker, each test on an invalidation exchange of its own (tests run in parallel and share
//! paths), in front of one origin whose body changes as a consumer's write would change it.
//!
//! - A write accepted by instance A (publish route, after its confirm) makes instance B drop
//!   its entry once the invalidation is delivered; without coherence (the control) B keeps
//!   serving the pre-write body. Through nginx in front of both, no read serves it either.
//! - A proxied unsafe request through A invalidates B too.
//! - An instance whose subscriber connection is closed at the broker bypasses its cache
//!   (`X-Cache: BYPASS`, every read goes to the origin, `gateway_cache_coherent` 0, `/readyz`
//!   still 200) while it cannot resubscribe, and after resubscribing caches again with nothing
//!   from before.
//! - `reinvalidate_after`: a read between the 202 and the consumer's apply re-caches the old
//!   body; the second drop removes it after the delay.
//! - Before its first subscription an instance is ready but bypasses its cache.
//! - A reload keeps the subscription, and the cache it builds anew is invalidated too; a
//!   reload that changes a coherence key is refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use lapin::ExchangeKind;
use reqwest::Method;
use support::gateway::{publish_route, read_route, topic_exchange, upstream};
use support::http::{Answer, get, send_body};
use support::nginx::{Nginx, addr_of};
use support::origin::{Reply, Seen};
use support::poll::eventually;
use support::{Origin, TestGateway, TestQueue, amqp_url, base_config, unique_name};

/// Deadline for anything that travels through the broker.
const DEADLINE: Duration = Duration::from_secs(10);

/// An origin serving `GET /docs/{id}` as `doc <id> v<version>`; a `PUT` bumps the version
/// (a synchronous write), and so does [`Docs::apply`] (a consumer applying an event).
struct Docs {
    origin: Origin,
    version: Arc<AtomicUsize>,
}

impl Docs {
    async fn start() -> Docs {
        let version = Arc::new(AtomicUsize::new(0));
        let v = version.clone();
        let origin = Origin::scripted("docs", move |seen: &Seen| {
            if seen.method == "GET" || seen.method == "HEAD" {
                Reply::ok().body(format!("{} v{}", seen.path(), v.load(Ordering::SeqCst)))
            } else {
                v.fetch_add(1, Ordering::SeqCst);
                Reply::status(204)
            }
        })
        .await;
        Docs { origin, version }
    }

    /// What a consumer of the published event does.
    fn apply(&self) {
        self.version.fetch_add(1, Ordering::SeqCst);
    }

    fn body(&self, path: &str) -> String {
        format!("{path} v{}", self.version.load(Ordering::SeqCst))
    }
}

/// Names one test's exchanges.
struct Exchanges {
    events: String,
    invalidations: String,
}

impl Exchanges {
    fn new() -> Exchanges {
        Exchanges {
            events: unique_name("coherence.events"),
            invalidations: unique_name("coherence.invalidations"),
        }
    }
}

/// A config with cached `GET /docs/{id}` (also proxying `PUT`) and `POST /docs/{id}`
/// published to `ex.events`; `cache` adds `[cache]` lines.
fn config(docs: &Docs, ex: &Exchanges, cache: &str) -> String {
    [
        base_config(&amqp_url()),
        topic_exchange(&ex.events),
        format!(
            "\n[cache]\ninvalidation_exchange = \"{}\"\n{cache}\n",
            ex.invalidations
        ),
        upstream("o", &docs.origin.url),
        read_route(
            "doc",
            "/docs/{id}",
            "o",
            "methods = [\"GET\", \"HEAD\", \"PUT\"]\ncache = { ttl = \"60s\" }",
        ),
        publish_route("write-doc", "/docs/{id}", &ex.events, "doc.{id}", ""),
    ]
    .concat()
}

/// A gateway on [`config`], subscribed when `cache` turns coherence on.
async fn gateway(docs: &Docs, ex: &Exchanges, cache: &str) -> TestGateway {
    let gw = TestGateway::start(&config(docs, ex, cache)).await;
    if cache.contains("coherence = true") {
        wait_coherent(&gw, true).await;
    }
    gw
}

async fn readyz(gw: &TestGateway) -> (u16, serde_json::Value) {
    let a = get(&format!("{}/readyz", gw.admin_url), &[]).await;
    (a.status, a.json())
}

async fn wait_coherent(gw: &TestGateway, coherent: bool) {
    eventually(
        DEADLINE,
        &format!("cache.coherent == {coherent}"),
        async || readyz(gw).await.1["cache"]["coherent"] == coherent,
    )
    .await;
}

async fn metrics(gw: &TestGateway) -> String {
    get(&format!("{}/metrics", gw.admin_url), &[]).await.text()
}

/// The value of the metric line starting with `series` (0 when absent).
async fn metric(gw: &TestGateway, series: &str) -> u64 {
    let text = metrics(gw).await;
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

async fn received(gw: &TestGateway) -> u64 {
    metric(
        gw,
        "gateway_cache_invalidations_total{outcome=\"received\"}",
    )
    .await
}

async fn wait_received(gw: &TestGateway, at_least: u64) {
    eventually(
        DEADLINE,
        "the invalidation reached the instance",
        async || received(gw).await >= at_least,
    )
    .await;
}

async fn write(gw: &TestGateway, method: Method, path: &str) -> Answer {
    send_body(
        method,
        &gw.at(path),
        [("content-type", b"application/json".as_slice())],
        reqwest::Body::from("{}"),
    )
    .await
}

/// `GET` twice: the first fills the cache, the second must be a hit of the same body.
async fn warm(gw: &TestGateway, path: &str, body: &str) {
    let first = get(&gw.at(path), &[]).await;
    assert_eq!(first.text(), body, "{}", first.summary());
    let second = get(&gw.at(path), &[]).await;
    assert_eq!(second.x_cache(), "HIT", "{}", second.summary());
    assert_eq!(second.text(), body);
}

/// A write through A, then B: with `coherent`, B's first read after the invalidation arrived
/// is the new body; without, B answers its cached pre-write body (the control).
async fn write_through_a_then_read_b(coherent: bool) {
    let docs = Docs::start().await;
    let ex = Exchanges::new();
    let events = TestQueue::bind(&amqp_url(), &ex.events, Some(ExchangeKind::Topic), "#").await;
    let cache = format!("coherence = {coherent}");
    let a = gateway(&docs, &ex, &cache).await;
    let b = gateway(&docs, &ex, &cache).await;
    let old = docs.body("/docs/1");
    warm(&a, "/docs/1", &old).await;
    warm(&b, "/docs/1", &old).await;

    let w = write(&a, Method::POST, "/docs/1").await;
    assert_eq!(w.status, 202, "{}", w.text());
    events.expect(DEADLINE, "the POST's event").await;
    docs.apply();
    let new = docs.body("/docs/1");
    let on_a = get(&a.at("/docs/1"), &[]).await;
    assert_eq!(
        (on_a.x_cache(), on_a.text()),
        ("MISS", new.clone()),
        "A invalidated its own entry"
    );
    if coherent {
        wait_received(&b, 1).await;
        assert_eq!(received(&a).await, 0, "A skips its own invalidation");
        let on_b = get(&b.at("/docs/1"), &[]).await;
        assert_eq!((on_b.x_cache(), on_b.text()), ("MISS", new.clone()));
        assert_eq!(
            metric(&a, "gateway_cache_invalidations_total{outcome=\"sent\"}").await,
            1
        );
        // Through the load balancer, whichever instance answers.
        let nginx = Nginx::start(&[addr_of(&a.url), addr_of(&b.url)]);
        for _ in 0..6 {
            let r = get(&nginx.at("/docs/1"), &[]).await;
            assert_eq!(r.text(), new, "{}", r.summary());
        }
    } else {
        let on_b = get(&b.at("/docs/1"), &[]).await;
        assert_eq!(
            (on_b.x_cache(), on_b.text()),
            ("HIT", old),
            "without coherence B serves the pre-write body"
        );
    }
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_write_accepted_by_one_instance_invalidates_the_other() {
    write_through_a_then_read_b(true).await;
}

#[tokio::test]
async fn without_coherence_the_other_instance_serves_the_pre_write_body() {
    write_through_a_then_read_b(false).await;
}

#[tokio::test]
async fn a_proxied_write_through_one_instance_invalidates_the_other() {
    let docs = Docs::start().await;
    let ex = Exchanges::new();
    let a = gateway(&docs, &ex, "coherence = true").await;
    let b = gateway(&docs, &ex, "coherence = true").await;
    let old = docs.body("/docs/2");
    warm(&a, "/docs/2", &old).await;
    warm(&b, "/docs/2", &old).await;
    let w = write(&a, Method::PUT, "/docs/2").await;
    assert_eq!(w.status, 204);
    let new = docs.body("/docs/2");
    assert_ne!(new, old);
    wait_received(&b, 1).await;
    let on_b = get(&b.at("/docs/2"), &[]).await;
    assert_eq!((on_b.x_cache(), on_b.text()), ("MISS", new));
    a.shutdown().await;
    b.shutdown().await;
}

/// The broker's ids (`<node.N.M.0>`, what `close_connection` takes) of the connections whose
/// client-provided name contains `fragment`. From the table output: the JSON formatter
/// writes pids as `#PID<...>`, which `close_connection` refuses.
async fn connections_named(fragment: &str) -> Vec<String> {
    let out = support::rabbitmqctl_ok_async(&[
        "list_connections",
        "--quiet",
        "--no-table-headers",
        "pid",
        "client_properties",
    ])
    .await;
    out.lines()
        .filter(|line| line.contains(fragment))
        .filter_map(|line| line.split('\t').next())
        .map(|pid| pid.trim().to_owned())
        .collect()
}

/// Deletes exchange `name` (a test's own).
async fn delete_exchange(name: &str) {
    let conn = lapin::Connection::connect(&amqp_url(), lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    channel
        .exchange_delete(
            name.into(),
            lapin::options::ExchangeDeleteOptions::default(),
        )
        .await
        .unwrap();
    let _ = conn.close(200, "done".into()).await;
}

#[tokio::test]
async fn a_lost_subscription_bypasses_the_cache_until_it_is_back_and_flushes_it() {
    let docs = Docs::start().await;
    let ex = Exchanges::new();
    let gw = gateway(&docs, &ex, "coherence = true").await;
    assert_eq!(metric(&gw, "gateway_cache_coherent").await, 1);
    let path = "/docs/3";
    let before = docs.body(path);
    warm(&gw, path, &before).await;

    // Keep the subscriber from coming back at once: its exchange is now a topic exchange, so
    // declaring it as a fanout fails until the test removes it.
    delete_exchange(&ex.invalidations).await;
    let squatter = TestQueue::bind(
        &amqp_url(),
        &ex.invalidations,
        Some(ExchangeKind::Topic),
        "#",
    )
    .await;
    let instance = readyz(&gw).await.1["cache"]["instance"]
        .as_str()
        .unwrap()
        .to_owned();
    let names = connections_named(&format!("amqp-gateway-invalidation {instance}")).await;
    assert_eq!(names.len(), 1, "one subscriber connection: {names:?}");
    support::rabbitmqctl_ok_async(&["close_connection", &names[0], "coherence test"]).await;

    wait_coherent(&gw, false).await;
    let (status, body) = readyz(&gw).await;
    assert_eq!(
        status, 200,
        "a bypassed cache does not fail readiness: {body}"
    );
    assert_eq!(metric(&gw, "gateway_cache_coherent").await, 0);
    let hits = docs.origin.hits(path);
    for _ in 0..3 {
        let r = get(&gw.at(path), &[]).await;
        assert_eq!((r.x_cache(), r.text()), ("BYPASS", before.clone()));
    }
    assert_eq!(
        docs.origin.hits(path),
        hits + 3,
        "bypassed: every read went to the origin"
    );

    squatter.delete().await;
    delete_exchange(&ex.invalidations).await;
    wait_coherent(&gw, true).await;
    assert_eq!(metric(&gw, "gateway_cache_coherent").await, 1);
    // Nothing from before the gap was kept, and caching resumed.
    let first = get(&gw.at(path), &[]).await;
    assert_eq!(first.x_cache(), "MISS");
    let second = get(&gw.at(path), &[]).await;
    assert_eq!(second.x_cache(), "HIT");
    gw.shutdown().await;
}

#[tokio::test]
async fn the_second_invalidation_drops_what_was_recached_before_the_consumer_applied() {
    let docs = Docs::start().await;
    let ex = Exchanges::new();
    let cache = "coherence = true\nreinvalidate_after = \"1s\"";
    let events = TestQueue::bind(&amqp_url(), &ex.events, Some(ExchangeKind::Topic), "#").await;
    let a = gateway(&docs, &ex, cache).await;
    let b = gateway(&docs, &ex, cache).await;
    let path = "/docs/4";
    let old = docs.body(path);
    warm(&a, path, &old).await;
    warm(&b, path, &old).await;

    let w = write(&a, Method::POST, path).await;
    assert_eq!(w.status, 202, "{}", w.text());
    let written = Instant::now();
    events.expect(DEADLINE, "the POST's event").await;
    wait_received(&b, 1).await;
    // Before the consumer applies the write, reads re-cache the old body on both.
    warm(&a, path, &old).await;
    warm(&b, path, &old).await;
    docs.apply();
    let new = docs.body(path);
    for gw in [&a, &b] {
        let r = get(&gw.at(path), &[]).await;
        assert_eq!(
            (r.x_cache(), r.text()),
            ("HIT", old.clone()),
            "the gap the second invalidation closes"
        );
    }
    for gw in [&a, &b] {
        eventually(DEADLINE, "the second drop", async || {
            get(&gw.at(path), &[]).await.text() == new
        })
        .await;
    }
    // A's drop was scheduled just before `written`, B's just after.
    assert!(
        written.elapsed() >= Duration::from_millis(900),
        "not before the delay"
    );
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_reload_keeps_the_subscription_and_its_new_cache_is_invalidated() {
    let docs = Docs::start().await;
    let ex = Exchanges::new();
    let events = TestQueue::bind(&amqp_url(), &ex.events, Some(ExchangeKind::Topic), "#").await;
    let a = gateway(&docs, &ex, "coherence = true").await;
    let file = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("{}.toml", unique_name("coherence-reload")));
    std::fs::write(&file, config(&docs, &ex, "coherence = true")).unwrap();
    let b = TestGateway::from_file(&file).await;
    b.wait_ready(DEADLINE).await;
    wait_coherent(&b, true).await;
    let instance = readyz(&b).await.1["cache"]["instance"].clone();

    // A new budget: the reload builds a new cache.
    let reloaded = config(&docs, &ex, "coherence = true\nmax_bytes = 4194304");
    std::fs::write(&file, &reloaded).unwrap();
    let r = support::http::client()
        .post(format!("{}/reload", b.admin_url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let (_, ready) = readyz(&b).await;
    assert_eq!(ready["cache"]["instance"], instance, "the same subscriber");
    assert_eq!(ready["cache"]["coherent"], true);

    let path = "/docs/5";
    let old = docs.body(path);
    warm(&b, path, &old).await;
    let w = write(&a, Method::POST, path).await;
    assert_eq!(w.status, 202, "{}", w.text());
    events.expect(DEADLINE, "the POST's event").await;
    docs.apply();
    wait_received(&b, 1).await;
    let on_b = get(&b.at(path), &[]).await;
    assert_eq!((on_b.x_cache(), on_b.text()), ("MISS", docs.body(path)));

    std::fs::write(
        &file,
        reloaded.replace("coherence = true", "coherence = false"),
    )
    .unwrap();
    let r = support::http::client()
        .post(format!("{}/reload", b.admin_url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    assert!(r.text().await.unwrap().contains("cache.coherence"));
    let _ = std::fs::remove_file(&file);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn until_it_first_subscribes_an_instance_bypasses_its_cache_and_is_still_ready() {
    let docs = Docs::start().await;
    let ex = Exchanges::new();
    // The invalidation exchange exists with another type: subscribing fails until it is gone.
    let squatter = TestQueue::bind(
        &amqp_url(),
        &ex.invalidations,
        Some(ExchangeKind::Topic),
        "#",
    )
    .await;
    let gw = TestGateway::start(&config(&docs, &ex, "coherence = true")).await;
    let (status, body) = readyz(&gw).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["cache"]["coherent"], false, "{body}");
    let path = "/docs/6";
    for _ in 0..2 {
        let r = get(&gw.at(path), &[]).await;
        assert_eq!(r.x_cache(), "BYPASS", "{}", r.summary());
    }
    assert_eq!(docs.origin.hits(path), 2);
    squatter.delete().await;
    delete_exchange(&ex.invalidations).await;
    wait_coherent(&gw, true).await;
    warm(&gw, path, &docs.body(path)).await;
    gw.shutdown().await;
}
