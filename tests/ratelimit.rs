//! Per-route rate limits over real HTTP: a real gateway in front of a scripted origin on port 0
//! (no broker for reads), plus one write route against the test broker.
//!
//! What it proves:
//! 1. By subject: a user who spends the limit gets 429 problem+json with `Retry-After`,
//!    `RateLimit` and `RateLimit-Policy`; another user is unaffected; nothing refused reaches
//!    the origin; after the refill the user is let through again; the refusal is counted.
//! 2. By IP: `X-Forwarded-For` names the client only when the peer is a trusted proxy (the
//!    rightmost untrusted address), else the peer is the key.
//! 3. By claim: users of one tenant share a bucket, another tenant has its own.
//! 4. Route-wide: one bucket for everyone; with two limits, the first exceeded answers.
//! 5. Writes: a refused request publishes nothing.
//! 6. Config errors name the key path.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use lapin::ExchangeKind;
use serde_json::json;
use support::gateway::{publish_route, read_route, topic_exchange};
use support::http::{Answer, get};
use support::origin::Reply;
use support::poll::eventually;
use support::tokens::{auth_section, bearer, claims, hs};
use support::{Origin, TestGateway, TestQueue, amqp_url, base_config, unique_name};

/// An origin answering every request with an empty 200.
async fn origin() -> Origin {
    Origin::scripted("o", |_| Reply::ok()).await
}

/// A bearer token for `sub` in tenant `tenant`.
fn token_in(sub: &str, tenant: &str) -> String {
    let mut c = claims(sub, &["user"], "");
    c["org"] = json!({ "tenant": tenant });
    bearer(&hs(&c))
}

/// A bearer token for `sub` (tenant `t-1`).
fn token(sub: &str) -> String {
    token_in(sub, "t-1")
}

/// A read route `name` on `/name` with `auth` and `rate_limits = [limits]`.
fn limited_route(name: &str, auth: &str, limits: &str) -> String {
    read_route(
        name,
        &format!("/{name}"),
        "o",
        &format!("auth = {auth}\nrate_limits = [ {limits} ]"),
    )
}

/// A gateway with `[auth]` in front of `origin`.
async fn gateway(origin: &Origin, server_extra: &str, routes: &str) -> TestGateway {
    TestGateway::in_front_of_with_auth(&origin.url, server_extra, routes).await
}

/// `Retry-After` as seconds.
fn retry_after(a: &Answer) -> u64 {
    a.header("retry-after")
        .unwrap_or_else(|| panic!("429 without Retry-After: {:?}", a.headers))
        .parse()
        .unwrap()
}

/// Checks a 429 from `policy` (its `RateLimit-Policy` item) and returns its `Retry-After`.
fn assert_limited(a: &Answer, name: &str, policy: &str) -> u64 {
    assert_eq!(a.status, 429, "{}", a.text());
    assert_eq!(a.header("content-type"), Some("application/problem+json"));
    assert_eq!(a.header("cache-control"), Some("no-store"));
    let body = a.json();
    assert_eq!(body["type"], "urn:amqp-gateway:problem:rate-limited");
    assert_eq!(body["status"], 429);
    assert_eq!(a.header("ratelimit-policy"), Some(policy));
    let secs = retry_after(a);
    assert!(secs >= 1, "Retry-After is at least 1 s");
    assert_eq!(
        a.header("ratelimit"),
        Some(format!("\"{name}\";r=0;t={secs}").as_str()),
        "RateLimit says nothing remains until Retry-After"
    );
    secs
}

#[tokio::test]
async fn by_subject_a_user_over_the_limit_gets_429_others_do_not_and_it_refills() {
    let origin = origin().await;
    // 3 per 6 s: one request comes back every 2 s, which leaves a slow machine 2 s to send
    // the first four requests without a refill in between.
    let route = limited_route(
        "me",
        "\"authenticated\"",
        "{ by = \"subject\", limit = 3, per = \"6s\" }",
    );
    let gw = gateway(&origin, "", &route).await;
    let url = gw.at("/me");
    let alice = token("alice");
    for i in 1..=3 {
        let a = get(&url, &[("authorization", &alice)]).await;
        assert_eq!(a.status, 200, "request {i} is within the limit");
        assert_eq!(a.header("ratelimit-policy"), Some("\"subject\";q=3;w=6"));
        let remaining = 3 - i;
        assert!(
            a.header("ratelimit")
                .is_some_and(|v| v.starts_with(&format!("\"subject\";r={remaining};t="))),
            "{:?}",
            a.header("ratelimit")
        );
    }
    let refused = get(&url, &[("authorization", &alice)]).await;
    let secs = assert_limited(&refused, "subject", "\"subject\";q=3;w=6");
    assert!(secs <= 2, "one request comes back within 2 s, not {secs}");
    assert_eq!(
        origin.count(),
        3,
        "the refused request never reached the origin"
    );

    let bob = get(&url, &[("authorization", &token("bob"))]).await;
    assert_eq!(bob.status, 200, "bob has his own bucket");
    assert_eq!(origin.count(), 4);

    eventually(
        Duration::from_secs(10),
        "alice is let through again",
        async || get(&url, &[("authorization", &alice)]).await.status == 200,
    )
    .await;
    assert_eq!(origin.count(), 5, "refused polls never reached the origin");

    let metrics = get(&format!("{}/metrics", gw.admin_url), &[]).await.text();
    let line = metrics
        .lines()
        .find(|l| l.starts_with("gateway_rate_limited_total{route=\"me\"}"))
        .unwrap_or_else(|| panic!("no rate_limited_total for the route in\n{metrics}"));
    let counted: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(counted >= 1, "{line}");
}

#[tokio::test]
async fn by_ip_forwarded_for_counts_only_from_a_trusted_proxy() {
    let origin = origin().await;
    let route = limited_route(
        "ip",
        "\"public\"",
        "{ by = \"ip\", limit = 2, per = \"1h\" }",
    );
    let policy = "\"ip\";q=2;w=3600";

    // Behind a trusted proxy (the test client is 127.0.0.1): the forwarded client is the key.
    let trusted = gateway(&origin, "trusted_proxies = [\"127.0.0.1/32\"]", &route).await;
    let url = trusted.at("/ip");
    let first = [("x-forwarded-for", "203.0.113.1")];
    assert_eq!(get(&url, &first).await.status, 200);
    assert_eq!(get(&url, &first).await.status, 200);
    assert_limited(&get(&url, &first).await, "ip", policy);
    // A client cannot escape by prepending addresses: the rightmost untrusted one counts.
    let spoofed = [("x-forwarded-for", "198.51.100.7, 203.0.113.1")];
    assert_limited(&get(&url, &spoofed).await, "ip", policy);
    let second = [("x-forwarded-for", "203.0.113.2")];
    assert_eq!(
        get(&url, &second).await.status,
        200,
        "another client, own bucket"
    );
    assert_eq!(origin.count(), 3);

    // Not trusted: X-Forwarded-For is ignored, every request is the peer's.
    let direct = gateway(&origin, "", &route).await;
    let url = direct.at("/ip");
    assert_eq!(get(&url, &first).await.status, 200);
    assert_eq!(get(&url, &second).await.status, 200);
    let third = [("x-forwarded-for", "203.0.113.3")];
    assert_limited(&get(&url, &third).await, "ip", policy);
    assert_eq!(origin.count(), 5);
}

#[tokio::test]
async fn by_claim_users_of_one_tenant_share_a_bucket() {
    let origin = origin().await;
    let route = limited_route(
        "t",
        "\"authenticated\"",
        "{ by = \"claim:tenant\", limit = 2, per = \"1h\" }",
    );
    let gw = gateway(&origin, "", &route).await;
    let url = gw.at("/t");
    let call = |token: String| {
        let url = url.clone();
        async move { get(&url, &[("authorization", &token)]).await }
    };
    assert_eq!(call(token_in("alice", "t-1")).await.status, 200);
    assert_eq!(call(token_in("bob", "t-1")).await.status, 200);
    let carol = call(token_in("carol", "t-1")).await;
    assert_limited(&carol, "claim:tenant", "\"claim:tenant\";q=2;w=3600");
    assert_eq!(
        call(token_in("dave", "t-2")).await.status,
        200,
        "another tenant has its own bucket"
    );
    assert_eq!(origin.count(), 3);
}

#[tokio::test]
async fn route_wide_one_bucket_for_every_client() {
    let origin = origin().await;
    let route = limited_route(
        "all",
        "\"public\"",
        "{ by = \"route\", limit = 2, per = \"1h\" }",
    );
    // Trusted, so the two clients below would be different IPs: the route key ignores that.
    let gw = gateway(&origin, "trusted_proxies = [\"127.0.0.1/32\"]", &route).await;
    let url = gw.at("/all");
    assert_eq!(
        get(&url, &[("x-forwarded-for", "203.0.113.1")])
            .await
            .status,
        200
    );
    assert_eq!(
        get(&url, &[("x-forwarded-for", "203.0.113.2")])
            .await
            .status,
        200
    );
    let third = get(&url, &[("x-forwarded-for", "203.0.113.3")]).await;
    assert_limited(&third, "route", "\"route\";q=2;w=3600");
    assert_eq!(origin.count(), 2);
}

#[tokio::test]
async fn with_two_limits_the_stricter_answers_and_allowed_responses_list_both() {
    let origin = origin().await;
    let route = limited_route(
        "two",
        "\"authenticated\"",
        "{ by = \"subject\", limit = 5, per = \"1h\" }, { by = \"ip\", limit = 2, per = \"1h\" }",
    );
    let gw = gateway(&origin, "", &route).await;
    let url = gw.at("/two");
    let alice = token("alice");
    let first = get(&url, &[("authorization", &alice)]).await;
    assert_eq!(first.status, 200);
    assert_eq!(
        first.header("ratelimit-policy"),
        Some("\"subject\";q=5;w=3600, \"ip\";q=2;w=3600")
    );
    // One spent: 4 and 1 remain, and each comes back in one interval (720 s and 1800 s).
    assert_eq!(
        first.header("ratelimit"),
        Some("\"subject\";r=4;t=720, \"ip\";r=1;t=1800")
    );
    assert_eq!(get(&url, &[("authorization", &alice)]).await.status, 200);
    // The IP limit (2) is stricter than alice's own (5): it answers.
    let refused = get(&url, &[("authorization", &alice)]).await;
    assert_limited(&refused, "ip", "\"ip\";q=2;w=3600");
    // Bob has subject budget, but shares the IP.
    let bob = get(&url, &[("authorization", &token("bob"))]).await;
    assert_limited(&bob, "ip", "\"ip\";q=2;w=3600");
    assert_eq!(origin.count(), 2);
}

#[tokio::test]
async fn a_rate_limited_write_publishes_nothing() {
    let url = amqp_url();
    let exchange = unique_name("limited");
    let config = format!(
        "{}{}{}",
        base_config(&url),
        topic_exchange(&exchange),
        publish_route(
            "create-order",
            "/orders",
            &exchange,
            "order.created",
            "rate_limits = [ { by = \"route\", limit = 2, per = \"1h\" } ]"
        )
    );
    let gw = TestGateway::start(&config).await;
    let q = TestQueue::bind(&url, &exchange, Some(ExchangeKind::Topic), "#").await;
    let client = reqwest::Client::new();
    let mut statuses = Vec::new();
    for i in 0..3 {
        let res = client
            .post(gw.at("/orders"))
            .header("content-type", "application/json")
            .body(format!("{{\"n\":{i}}}"))
            .send()
            .await
            .unwrap();
        statuses.push(res.status().as_u16());
        if res.status() == 429 {
            assert_eq!(res.headers()["ratelimit-policy"], "\"route\";q=2;w=3600");
            let body: serde_json::Value = res.json().await.unwrap();
            assert_eq!(body["type"], "urn:amqp-gateway:problem:rate-limited");
        }
    }
    assert_eq!(statuses, [202, 202, 429]);
    let events = q.drain(Duration::from_millis(500)).await;
    let bodies: Vec<String> = events
        .iter()
        .map(|d| String::from_utf8_lossy(&d.data).into_owned())
        .collect();
    assert_eq!(
        bodies,
        ["{\"n\":0}", "{\"n\":1}"],
        "exactly the two accepted events, not the refused one"
    );
    gw.shutdown().await;
}

#[test]
fn config_errors_name_the_key_path() {
    let config = |auth: &str, limits: &str| {
        let routes = format!(
            "{}{}",
            auth_section("", ""),
            limited_route("r", auth, limits)
        );
        let text = format!(
            "{}{}{routes}",
            support::gateway::base_config_with(&support::gateway::no_broker(), ""),
            support::gateway::upstream("o", "http://127.0.0.1:1"),
        );
        match amqp_gateway::Config::from_toml(&text, "test-config", |_| None) {
            Ok(_) => panic!("should be refused: {limits}"),
            Err(e) => e.to_string(),
        }
    };
    let cases = [
        (
            "\"public\"",
            "{ by = \"subject\", limit = 1, per = \"1s\" }",
            "routes[0].rate_limits[0].by",
            "public",
        ),
        (
            "\"authenticated\"",
            "{ by = \"ip\", limit = 0, per = \"1s\" }",
            "routes[0].rate_limits[0].limit",
            "at least 1",
        ),
        (
            "\"authenticated\"",
            "{ by = \"ip\", limit = 1, per = \"1s\" }, { by = \"ip\", limit = 1, per = \"0s\" }",
            "routes[0].rate_limits[1].per",
            "greater than zero",
        ),
        (
            "\"authenticated\"",
            "{ by = \"header:x-api-key\", limit = 1, per = \"1s\" }",
            "routes[0].rate_limits[0].by",
            "not a rate-limit key",
        ),
    ];
    for (auth, limits, key, message) in cases {
        let error = config(auth, limits);
        assert!(
            error.contains(key) && error.contains(message),
            "{limits}: {error:?} should name {key:?} and say {message:?}"
        );
    }
}
