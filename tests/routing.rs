//! The public router without a broker or a socket: `AppState::from_config` on a config whose
//! broker nothing listens on, `app(state)`, and requests through `tower::ServiceExt::oneshot`.
//! Routing (served, 404, 405 with `Allow`), the auth rules (public, 401 with
//! `WWW-Authenticate`, 403 for a missing role) and a publish that cannot reach the broker
//! (503 problem, never 2xx).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use axum::body::Body;
use http::{Method, Request};
use support::free_port;
use support::gateway::{
    base_config, no_broker, publish_route, read_route, router, topic_exchange, upstream,
};
use support::http::{Answer, call};
use support::tokens::{auth_section, bearer, claims, hs};

/// A public write route `/events/{id}`, a protected write route `/admin/bans/{id}` (role
/// `admin`), and a public read route `/status` on an upstream that is never reached by these
/// tests; the broker is unreachable.
async fn gateway() -> axum::Router {
    let config = format!(
        "{}{}{}{}{}{}{}",
        base_config(&no_broker()),
        topic_exchange("events"),
        topic_exchange("users"),
        auth_section("", ""),
        upstream("o", &format!("http://127.0.0.1:{}/", free_port())),
        publish_route("events", "/events/{id}", "events", "event.{id}", ""),
        publish_route(
            "bans",
            "/admin/bans/{id}",
            "users",
            "user.{id}.banned",
            "auth = { roles = [\"admin\"] }",
        ),
    ) + &read_route("status", "/status", "o", "");
    router(&config).await
}

/// `method path` with `headers` and a JSON body (empty for GET).
async fn request(
    router: &axum::Router,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
) -> Answer {
    let mut builder = Request::builder().method(method.clone()).uri(path);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let body = if method == Method::POST {
        builder = builder.header("content-type", "application/json");
        Body::from(r#"{"n":1}"#)
    } else {
        Body::empty()
    };
    call(router, builder.body(body).unwrap()).await
}

/// Asserts an RFC 9457 problem with `status` and the stable code `code` (last part of `type`).
fn assert_problem(answer: &Answer, status: u16, code: &str) {
    assert_eq!(answer.status, status, "{}", answer.text());
    assert_eq!(
        answer.header("content-type"),
        Some("application/problem+json")
    );
    let body = answer.json();
    assert_eq!(body["status"], status);
    let kind = body["type"].as_str().unwrap_or_default();
    assert!(kind.ends_with(code), "problem type {kind:?}, wanted {code}");
}

#[tokio::test]
async fn served_paths_reach_their_route_and_others_are_404() {
    let app = gateway().await;
    // Served: the write route's own answer (the broker is down), not a routing error.
    let served = request(&app, Method::POST, "/events/e1", &[]).await;
    assert_problem(&served, 503, "broker-unavailable");
    let missing = request(&app, Method::GET, "/nope", &[]).await;
    assert_problem(&missing, 404, "not-found");
    // A prefix of a route's path is not that route.
    let prefix = request(&app, Method::POST, "/events", &[]).await;
    assert_problem(&prefix, 404, "not-found");
}

#[tokio::test]
async fn wrong_methods_are_405_with_allow() {
    let app = gateway().await;
    let write = request(&app, Method::GET, "/events/e1", &[]).await;
    assert_problem(&write, 405, "method-not-allowed");
    assert_eq!(write.header("allow"), Some("POST"));
    let read = request(&app, Method::DELETE, "/status", &[]).await;
    assert_problem(&read, 405, "method-not-allowed");
    assert_eq!(read.header("allow"), Some("GET, HEAD"));
}

#[tokio::test]
async fn public_routes_need_no_token() {
    let app = gateway().await;
    // Past auth, the publish itself fails for want of a broker: 503, not 401.
    let answer = request(&app, Method::POST, "/events/e1", &[]).await;
    assert_problem(&answer, 503, "broker-unavailable");
    assert!(answer.header("www-authenticate").is_none());
}

#[tokio::test]
async fn protected_routes_without_a_valid_token_are_401_with_a_challenge() {
    let app = gateway().await;
    let missing = request(&app, Method::POST, "/admin/bans/u1", &[]).await;
    assert_problem(&missing, 401, "unauthorized");
    assert_eq!(missing.header("www-authenticate"), Some("Bearer"));

    let bad = bearer("not.a.token");
    let invalid = request(
        &app,
        Method::POST,
        "/admin/bans/u1",
        &[("authorization", &bad)],
    )
    .await;
    assert_problem(&invalid, 401, "invalid-token");
    assert_eq!(
        invalid.header("www-authenticate"),
        Some("Bearer error=\"invalid_token\"")
    );
}

#[tokio::test]
async fn protected_routes_need_the_role() {
    let app = gateway().await;
    let reader = bearer(&hs(&claims("alice", &["reader"], "")));
    let forbidden = request(
        &app,
        Method::POST,
        "/admin/bans/u1",
        &[("authorization", &reader)],
    )
    .await;
    assert_problem(&forbidden, 403, "insufficient-scope");
    assert!(
        forbidden
            .header("www-authenticate")
            .is_some_and(|c| c.contains("insufficient_scope"))
    );

    // With the role, auth lets it through to the publish, which has no broker.
    let admin = bearer(&hs(&claims("root", &["admin"], "")));
    let allowed = request(
        &app,
        Method::POST,
        "/admin/bans/u1",
        &[("authorization", &admin)],
    )
    .await;
    assert_problem(&allowed, 503, "broker-unavailable");
}

#[tokio::test]
async fn publishing_without_a_broker_is_503_never_2xx() {
    let app = gateway().await;
    for id in ["a", "b", "c"] {
        let answer = request(&app, Method::POST, &format!("/events/{id}"), &[]).await;
        assert!(
            !(200..300).contains(&answer.status),
            "a publish with no broker answered {}",
            answer.status
        );
        assert_problem(&answer, 503, "broker-unavailable");
        assert!(
            answer.header("retry-after").is_some(),
            "503 without Retry-After"
        );
    }
}
