//! Synchronous proxy routes for unsafe methods, over real HTTP: a real gateway (no broker: these
//! routes need none) in front of origins on port 0 that record every request with its body.
//!
//! What it proves:
//! 1. POST/PUT/PATCH/DELETE bodies of several sizes, declared and chunked, reach the upstream
//!    byte for byte; status, `Location`, every `Set-Cookie` and the body come back.
//! 2. Limits as for published writes: a declared body over `max_body_bytes` is a 413 with
//!    nothing sent; a chunked one is cut off (413, the upstream never gets a whole request);
//!    gzip is decoded under the limit and sent decoded; other codings are 415.
//! 3. Never sent twice: a target that resets mid-request is tried once (502), while a target
//!    that refuses the connection (nothing sent) is skipped for the next one.
//! 4. A non-error answer invalidates the cached GET of the same path; an error answer does not.
//! 5. Auth and identity as on reads: 401 before anything is sent, identity headers from the
//!    token only, `Authorization` not forwarded unless the route says so.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use reqwest::Method;
use support::gateway::upstream;
use support::http::{Answer, get, send, send_body};
use support::origin::{Reply, Seen};
use support::tokens::{auth_section, bearer, claims, hs};
use support::{Origin, TestGateway};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

/// A route on `/NAME/{*rest}` to upstream `o` taking `methods`, public unless `extra` says.
fn route(name: &str, methods: &str, extra: &str) -> String {
    let auth = if extra.contains("auth ") {
        ""
    } else {
        "auth = \"public\"\n"
    };
    format!(
        "\n[[routes]]\nname = \"{name}\"\npath = \"/{name}/{{*rest}}\"\nmethods = {methods}\nupstream = \"o\"\n{auth}{extra}\n"
    )
}

/// An origin that answers 201 with a `Location`, two cookies and the body it received.
async fn echo_origin() -> Origin {
    Origin::scripted("echo", |seen: &Seen| {
        Reply::status(201)
            .header("location", format!("/w{}", seen.path()))
            .header("set-cookie", "a=1; Path=/")
            .header("set-cookie", "b=2; Path=/; HttpOnly")
            .header("x-method", &seen.method)
            .body(seen.body.clone())
    })
    .await
}

/// A deterministic body of `len` bytes.
fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

async fn send_bytes(method: Method, url: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Answer {
    send_body(
        method,
        url,
        headers.iter().map(|(k, v)| (*k, v.as_bytes())),
        reqwest::Body::from(body),
    )
    .await
}

/// A chunked body: `body` in `chunk`-byte pieces, no `Content-Length`.
fn chunked(body: Vec<u8>, chunk: usize) -> reqwest::Body {
    let pieces: Vec<Result<Vec<u8>, std::io::Error>> =
        body.chunks(chunk).map(|c| Ok(c.to_vec())).collect();
    reqwest::Body::wrap_stream(futures_util::stream::iter(pieces))
}

#[tokio::test]
async fn unsafe_methods_carry_bodies_there_and_answers_back() {
    let origin = echo_origin().await;
    let gw = TestGateway::in_front_of(
        &origin.url,
        "max_body_bytes = 1048576",
        &route("w", r#"["POST", "PUT", "PATCH", "DELETE"]"#, ""),
    )
    .await;
    let methods = [Method::POST, Method::PUT, Method::PATCH, Method::DELETE];
    for (k, len) in [0usize, 1, 70_000, 1_000_000].into_iter().enumerate() {
        let method = methods[k % methods.len()].clone();
        let body = payload(len);
        let answer = send_bytes(
            method.clone(),
            &gw.at(&format!("/w/item/{k}")),
            &[("content-type", "application/octet-stream")],
            body.clone(),
        )
        .await;
        assert_eq!(answer.status, 201, "{method} {len}: {}", answer.text());
        assert_eq!(answer.header("location"), Some(&*format!("/w/w/item/{k}")));
        let cookies: Vec<&str> = answer
            .headers
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(cookies, ["a=1; Path=/", "b=2; Path=/; HttpOnly"]);
        assert_eq!(answer.header("x-method"), Some(method.as_str()));
        assert!(
            answer.body == body,
            "{method} {len}: the body came back changed"
        );
        let seen = origin.last();
        assert_eq!(seen.method, method.as_str());
        assert_eq!(seen.path(), format!("/w/item/{k}"));
        assert!(
            seen.complete && seen.body == body,
            "{method} {len}: the origin got another body"
        );
        assert_eq!(seen.text("content-type"), "application/octet-stream");
        assert!(
            seen.raw("transfer-encoding").is_none(),
            "{method} {len}: a declared length is sent as one, not chunked"
        );
        if len > 0 {
            assert_eq!(seen.text("content-length"), len.to_string());
        }
    }
    assert_eq!(
        origin.count(),
        4,
        "each request reaches the origin exactly once"
    );
}

#[tokio::test]
async fn a_chunked_body_streams_through() {
    let origin = echo_origin().await;
    let gw = TestGateway::in_front_of(
        &origin.url,
        "max_body_bytes = 1048576",
        &route("w", r#"["POST"]"#, ""),
    )
    .await;
    let body = payload(300_000);
    let answer = send_body(
        Method::POST,
        &gw.at("/w/upload"),
        [],
        chunked(body.clone(), 16 * 1024),
    )
    .await;
    assert_eq!(answer.status, 201, "{}", answer.text());
    assert!(answer.body == body);
    let seen = origin.last();
    assert!(
        seen.complete && seen.body == body,
        "the origin got another body"
    );
    assert!(
        seen.raw("content-length").is_none(),
        "a chunked body is streamed on, not buffered into a Content-Length"
    );
}

#[tokio::test]
async fn over_the_limit_is_413_and_nothing_whole_reaches_the_upstream() {
    let origin = echo_origin().await;
    let gw = TestGateway::in_front_of(
        &origin.url,
        "max_body_bytes = 1000",
        &route("w", r#"["POST"]"#, ""),
    )
    .await;
    // Declared: refused before anything is sent.
    let answer = send_bytes(Method::POST, &gw.at("/w/a"), &[], payload(2000)).await;
    assert_eq!(answer.status, 413, "{}", answer.text());
    assert_eq!(
        answer.header("content-type"),
        Some("application/problem+json")
    );
    assert_eq!(
        origin.count(),
        0,
        "nothing may be sent for a declared oversize body"
    );
    // Chunked: cut off at the limit.
    let answer = send_body(
        Method::POST,
        &gw.at("/w/b"),
        [],
        chunked(payload(5000), 100),
    )
    .await;
    assert_eq!(answer.status, 413, "{}", answer.text());
    assert!(
        origin.seen().iter().all(|s| !s.complete),
        "the upstream must never receive a whole oversize request"
    );
    // Within the limit the same route works.
    let answer = send_bytes(Method::POST, &gw.at("/w/c"), &[], payload(1000)).await;
    assert_eq!(answer.status, 201);
}

#[tokio::test]
async fn gzip_bodies_are_decoded_under_the_limit_and_other_codings_refused() {
    use flate2::{Compression, write::GzEncoder};
    use std::io::Write;
    let origin = echo_origin().await;
    let gw = TestGateway::in_front_of(
        &origin.url,
        "max_body_bytes = 10000",
        &route("w", r#"["POST"]"#, ""),
    )
    .await;
    let gzip = |data: &[u8]| {
        let mut enc = GzEncoder::new(Vec::new(), Compression::default());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    };
    let body = br#"{"user":"ada"}"#.to_vec();
    let answer = send_bytes(
        Method::POST,
        &gw.at("/w/gz"),
        &[("content-encoding", "gzip")],
        gzip(&body),
    )
    .await;
    assert_eq!(answer.status, 201, "{}", answer.text());
    let seen = origin.last();
    assert_eq!(seen.body, body, "the upstream gets the decoded body");
    assert!(seen.raw("content-encoding").is_none());
    assert_eq!(seen.text("content-length"), body.len().to_string());
    // A bomb: small on the wire, over the limit decoded.
    let before = origin.count();
    let answer = send_bytes(
        Method::POST,
        &gw.at("/w/bomb"),
        &[("content-encoding", "gzip")],
        gzip(&vec![b'a'; 1_000_000]),
    )
    .await;
    assert_eq!(answer.status, 413);
    let answer = send_bytes(
        Method::POST,
        &gw.at("/w/br"),
        &[("content-encoding", "br")],
        b"xx".to_vec(),
    )
    .await;
    assert_eq!(answer.status, 415);
    assert_eq!(origin.count(), before, "refused bodies are never sent");
}

/// A TCP server that reads the start of each request, then resets the connection; counts
/// the connections it accepted.
async fn resetting_target(accepted: Arc<AtomicUsize>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            accepted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let _ = stream.read(&mut buf).await;
                // Closed with most of the request unread: the kernel answers with a RST.
                drop(stream);
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn a_target_that_resets_mid_request_is_not_retried() {
    let accepted = Arc::new(AtomicUsize::new(0));
    let a = resetting_target(accepted.clone()).await;
    let b = resetting_target(accepted.clone()).await;
    let sections = format!(
        "\n[upstreams.o]\ntargets = [\"{a}\", \"{b}\"]\ntimeout = \"3s\"\nconnect_timeout = \"300ms\"\n{}",
        route("w", r#"["POST"]"#, "")
    );
    let gw = TestGateway::reads("max_body_bytes = 1048576", &sections).await;
    let answer = send_bytes(Method::POST, &gw.at("/w/pay"), &[], payload(200_000)).await;
    assert_eq!(answer.status, 502, "{}", answer.text());
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "a request whose body went out must not be sent to another target"
    );
}

#[tokio::test]
async fn a_refused_connect_moves_on_to_the_next_target() {
    let origin = echo_origin().await;
    let dead = format!("http://127.0.0.1:{}", support::free_port());
    let sections = format!(
        "\n[upstreams.o]\ntargets = [\"{dead}\", \"{}\"]\ntimeout = \"3s\"\nconnect_timeout = \"300ms\"\n{}",
        origin.url,
        route("w", r#"["POST"]"#, "")
    );
    let gw = TestGateway::reads("", &sections).await;
    // Round-robin starts at the dead target for one of these two.
    for k in 0..2 {
        let answer = send_bytes(Method::POST, &gw.at(&format!("/w/{k}")), &[], payload(100)).await;
        assert_eq!(answer.status, 201, "{}", answer.text());
    }
    assert_eq!(
        origin.count(),
        2,
        "each request reached the live target once"
    );
    assert!(
        origin
            .seen()
            .iter()
            .all(|s| s.complete && s.body == payload(100))
    );
}

#[tokio::test]
async fn a_successful_put_invalidates_the_cached_get_and_a_failed_one_does_not() {
    let fail = Arc::new(AtomicUsize::new(0));
    let fail_flag = fail.clone();
    let origin = Origin::scripted("doc", move |seen: &Seen| match seen.method.as_str() {
        "GET" => Reply::ok().body(format!("version {}", seen.uri)),
        _ if fail_flag.load(Ordering::SeqCst) == 1 => Reply::status(500),
        _ => Reply::status(204),
    })
    .await;
    let gw = TestGateway::in_front_of(
        &origin.url,
        "",
        &route(
            "d",
            r#"["GET", "HEAD", "PUT"]"#,
            "cache = { ttl = \"60s\" }",
        ),
    )
    .await;
    let url = gw.at("/d/doc");
    assert_eq!(get(&url, &[]).await.x_cache(), "MISS");
    assert_eq!(get(&url, &[]).await.x_cache(), "HIT");
    fail.store(1, Ordering::SeqCst);
    assert_eq!(
        send_bytes(Method::PUT, &url, &[], b"v2".to_vec())
            .await
            .status,
        500
    );
    assert_eq!(
        get(&url, &[]).await.x_cache(),
        "HIT",
        "an error answer must not invalidate"
    );
    fail.store(0, Ordering::SeqCst);
    assert_eq!(
        send_bytes(Method::PUT, &url, &[], b"v2".to_vec())
            .await
            .status,
        204
    );
    assert_eq!(
        get(&url, &[]).await.x_cache(),
        "MISS",
        "a successful PUT must invalidate the cached GET"
    );
    assert_eq!(origin.hits("/d/doc"), 4, "2 GET fills and 2 PUTs");
}

#[tokio::test]
async fn auth_and_identity_apply_as_on_reads() {
    let origin = echo_origin().await;
    let sections = format!(
        "{}{}",
        auth_section("", ""),
        route("w", r#"["POST"]"#, "auth = { roles = [\"payer\"] }")
    );
    let gw = TestGateway::in_front_of(&origin.url, "", &sections).await;
    let url = gw.at("/w/pay");
    let answer = send_bytes(Method::POST, &url, &[], b"{}".to_vec()).await;
    assert_eq!(answer.status, 401);
    let other = bearer(&hs(&claims("bob", &["reader"], "")));
    let answer = send_bytes(
        Method::POST,
        &url,
        &[("authorization", &other)],
        b"{}".to_vec(),
    )
    .await;
    assert_eq!(answer.status, 403);
    assert_eq!(
        origin.count(),
        0,
        "refused requests never reach the upstream"
    );
    let token = bearer(&hs(&claims("ada", &["payer"], "")));
    let answer = send_bytes(
        Method::POST,
        &url,
        &[("authorization", &token), ("x-auth-sub", "mallory")],
        b"{}".to_vec(),
    )
    .await;
    assert_eq!(answer.status, 201, "{}", answer.text());
    let seen = origin.last();
    assert_eq!(
        seen.text("x-auth-sub"),
        "ada",
        "identity comes from the token only"
    );
    assert!(
        seen.raw("authorization").is_none(),
        "Authorization is not forwarded unless the route says so"
    );
}

#[tokio::test]
async fn options_is_proxied_and_a_slow_upstream_is_504() {
    let origin = Origin::scripted("slow", |seen: &Seen| match seen.method.as_str() {
        "OPTIONS" => Reply::status(204).header("allow", "OPTIONS, POST"),
        _ => Reply::status(200).delay(Duration::from_secs(5)),
    })
    .await;
    let gw =
        TestGateway::in_front_of(&origin.url, "", &route("w", r#"["POST", "OPTIONS"]"#, "")).await;
    let answer = send(Method::OPTIONS, &gw.at("/w/x"), []).await;
    assert_eq!(answer.status, 204);
    assert_eq!(answer.header("allow"), Some("OPTIONS, POST"));
    // `upstream()` gives the route a 2 s timeout.
    let answer = send_bytes(Method::POST, &gw.at("/w/x"), &[], b"{}".to_vec()).await;
    assert_eq!(answer.status, 504, "{}", answer.text());
    assert!(answer.elapsed < Duration::from_secs(4));
}

#[test]
fn upstream_routes_take_unsafe_methods_but_publish_routes_not_options() {
    let base = support::gateway::base_config(&support::gateway::no_broker());
    let ok = format!(
        "{base}{}{}",
        upstream("o", "http://127.0.0.1:1"),
        route(
            "w",
            r#"["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]"#,
            ""
        )
    );
    amqp_gateway::Config::from_toml(&ok, "t", |_| None).unwrap();
    let bad = format!(
        "{base}{}{}",
        upstream("o", "http://127.0.0.1:1"),
        route("w", r#"["TRACE"]"#, "")
    );
    let err = amqp_gateway::Config::from_toml(&bad, "t", |_| None).unwrap_err();
    assert!(err.to_string().contains("routes[0].methods"), "{err}");
}
