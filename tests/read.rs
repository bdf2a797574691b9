//! The read path over real HTTP: a real gateway in front of real origins on port 0.
//!
//! The broker in these tests is a closed port on purpose: reads must work without it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::Read;
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use support::gateway::{no_broker, read_route};
use support::{Origin, TestGateway, base_config};

fn client() -> reqwest::Client {
    // No automatic decompression: the tests look at what is on the wire.
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// A gateway with the standard read routes over `targets`; no broker.
async fn gateway(targets: &[&Origin], extra: &str) -> TestGateway {
    let targets: Vec<String> = targets.iter().map(|o| format!("\"{}\"", o.url)).collect();
    let config = [
        base_config(&no_broker()),
        format!(
            r#"
[upstreams.users]
targets = [{targets}]
timeout = "1s"
connect_timeout = "300ms"
fail_timeout = "30s"

[cache]
max_bytes = 8388608
max_object_bytes = 262144
"#,
            targets = targets.join(", "),
        ),
        read_route(
            "get-user",
            "/users/{id}",
            "users",
            "upstream_path = \"/api/users/{id}\"",
        ),
        read_route(
            "catalog",
            "/catalog/{*rest}",
            "users",
            "methods = [\"GET\"]",
        ),
        read_route(
            "cached",
            "/cached/{*rest}",
            "users",
            "cache = { ttl = \"60s\" }",
        ),
        read_route(
            "plain",
            "/plain/{*rest}",
            "users",
            "methods = [\"GET\"]\netag = false\ncompress = \"never\"",
        ),
        extra.to_owned(),
    ]
    .concat();
    TestGateway::start_unready(&config).await
}

async fn get(
    c: &reqwest::Client,
    url: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, HeaderMap, Vec<u8>) {
    let mut req = c.get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = req.send().await.unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    (status, headers, res.bytes().await.unwrap().to_vec())
}

fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)))
}

fn gunzip(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(body)
        .read_to_end(&mut out)
        .unwrap();
    out
}

/// Sends `GET target` on a raw socket and returns the status code.
async fn raw_status(gw: &TestGateway, target: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = gw.url.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out);
    text.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn forwards_with_rewrite_query_and_the_right_headers() {
    let origin = Origin::start("a").await;
    let gw = gateway(&[&origin], "").await;
    let (status, headers, body) = get(
        &client(),
        &gw.at("/users/42?fields=name&x=%20y"),
        &[
            ("authorization", "Bearer secret-token"),
            ("x-request-id", "rid-1"),
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-host", "evil.example"),
            ("x-auth-sub", "admin"),
            ("x-original-url", "/admin"),
            ("connection", "keep-alive, x-hop"),
            ("x-hop", "1"),
            ("accept-language", "en"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-request-id"], "rid-1");
    assert_eq!(
        json(&body)["authorization"],
        "",
        "Authorization is not forwarded by default"
    );
    let seen = origin.seen();
    assert_eq!(seen.len(), 1);
    let s = &seen[0];
    assert_eq!(s.uri, "/api/users/42?fields=name&x=%20y");
    assert_eq!(
        s.headers["x-forwarded-for"], "127.0.0.1",
        "untrusted X-Forwarded-For replaced"
    );
    assert_eq!(s.headers["x-forwarded-proto"], "http");
    assert_eq!(
        s.headers["x-forwarded-host"],
        gw.url.trim_start_matches("http://")
    );
    assert_eq!(s.headers["x-request-id"], "rid-1");
    assert!(
        s.headers["traceparent"]
            .to_str()
            .unwrap()
            .starts_with("00-4bf9")
    );
    assert_eq!(s.headers["accept-language"], "en");
    for gone in ["authorization", "x-auth-sub", "x-original-url", "x-hop"] {
        assert!(
            !s.headers.contains_key(gone),
            "{gone} must not reach the upstream"
        );
    }
    assert_eq!(s.headers["host"], origin.addr.to_string());
}

#[tokio::test]
async fn request_id_is_generated_and_sent_both_ways() {
    let origin = Origin::start("a").await;
    let gw = gateway(&[&origin], "").await;
    let (_, headers, _) = get(&client(), &gw.at("/users/1"), &[]).await;
    let rid = headers["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(uuid::Uuid::parse_str(&rid).unwrap().get_version_num(), 7);
    assert_eq!(origin.seen()[0].headers["x-request-id"], rid.as_str());
}

#[tokio::test]
async fn catch_all_routes_forward_the_path_unchanged() {
    let origin = Origin::start("a").await;
    let gw = gateway(&[&origin], "").await;
    let (status, _, _) = get(&client(), &gw.at("/catalog/books/2024/x%20y.json?q=1"), &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(origin.seen()[0].uri, "/catalog/books/2024/x%20y.json?q=1");
    // Raw requests: HTTP clients normalise dot segments away before sending.
    for target in [
        "/catalog/a/%2e%2e/admin",
        "/catalog/a/../admin",
        "/catalog/./x",
    ] {
        let status = raw_status(&gw, target).await;
        assert_eq!(
            status, 400,
            "{target}: dot segments never reach an upstream"
        );
    }
    assert_eq!(origin.seen().len(), 1);
}

#[tokio::test]
async fn round_robin_across_targets_and_failover_when_one_dies() {
    let a = Origin::start("a").await;
    let b = Origin::start("b").await;
    let gw = gateway(&[&a, &b], "").await;
    let c = client();
    let mut served = Vec::new();
    for i in 0..6 {
        let (status, _, body) = get(&c, &gw.at(&format!("/users/{i}")), &[]).await;
        assert_eq!(status, StatusCode::OK);
        served.push(json(&body)["served_by"].as_str().unwrap().to_owned());
    }
    assert_eq!(served.iter().filter(|s| *s == "a").count(), 3, "{served:?}");
    assert_eq!(served.iter().filter(|s| *s == "b").count(), 3, "{served:?}");
    b.stop();
    // Fresh connections: the pooled ones to b died with it.
    let c = client();
    for i in 0..6 {
        let (status, _, body) = get(&c, &gw.at(&format!("/users/{i}")), &[]).await;
        assert_eq!(status, StatusCode::OK, "request {i} must fail over to a");
        assert_eq!(json(&body)["served_by"], "a");
    }
}

#[tokio::test]
async fn unreachable_upstream_is_502_and_slow_one_504() {
    let dead = Origin::start("dead").await;
    dead.stop();
    let gw = gateway(&[&dead], "").await;
    let (status, headers, body) = get(&client(), &gw.at("/users/1"), &[]).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(headers["content-type"], "application/problem+json");
    let problem = json(&body);
    assert_eq!(problem["type"], "urn:amqp-gateway:problem:bad-gateway");
    assert!(
        !problem.to_string().contains("127.0.0.1"),
        "no internal detail: {problem}"
    );

    let slow = Origin::start("slow").await;
    let gw = gateway(&[&slow], "").await;
    let started = std::time::Instant::now();
    let (status, _, body) = get(&client(), &gw.at("/users/1?delay_ms=3000"), &[]).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(
        json(&body)["type"],
        "urn:amqp-gateway:problem:upstream-timeout"
    );
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "bounded by the 1s upstream timeout"
    );
}

#[tokio::test]
async fn generated_etag_gives_304_for_identity_and_gzip_alike() {
    let origin = Origin::start("a").await;
    let gw = gateway(&[&origin], "").await;
    let c = client();
    let (_, headers, body) = get(&c, &gw.at("/users/1?size=3000"), &[]).await;
    let tag = headers["etag"].to_str().unwrap().to_owned();
    assert!(tag.starts_with('"'), "strong tag on identity: {tag}");
    assert!(headers.get("content-encoding").is_none());
    assert_eq!(body.len(), 3000);

    let (_, gz_headers, gz_body) = get(
        &c,
        &gw.at("/users/1?size=3000"),
        &[("accept-encoding", "gzip")],
    )
    .await;
    assert_eq!(gz_headers["content-encoding"], "gzip");
    assert_eq!(
        gz_headers["etag"].to_str().unwrap(),
        format!("W/{tag}"),
        "weak once encoded"
    );
    assert_eq!(gunzip(&gz_body), body);
    assert!(
        gz_headers["vary"]
            .to_str()
            .unwrap()
            .to_ascii_lowercase()
            .contains("accept-encoding")
    );

    for (inm, ae) in [
        (tag.clone(), ""),
        (format!("W/{tag}"), "gzip"),
        (format!("\"zzz\", {tag}"), "gzip"),
        ("*".to_owned(), ""),
    ] {
        let mut h = vec![("if-none-match", inm.as_str())];
        if !ae.is_empty() {
            h.push(("accept-encoding", ae));
        }
        let (status, headers, body) = get(&c, &gw.at("/users/1?size=3000"), &h).await;
        assert_eq!(
            status,
            StatusCode::NOT_MODIFIED,
            "If-None-Match {inm} with {ae:?}"
        );
        assert!(body.is_empty());
        assert!(headers.contains_key("etag"));
    }
    let (status, _, _) = get(
        &c,
        &gw.at("/users/1?size=3000"),
        &[("if-none-match", "\"other\"")],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn upstream_etag_is_passed_and_304_keeps_caching_headers() {
    let origin = Origin::start("a").await;
    let gw = gateway(&[&origin], "").await;
    let url = gw.at("/users/1?etag=%22v1%22&cc=max-age%3D30");
    let (_, headers, _) = get(&client(), &url, &[]).await;
    assert_eq!(headers["etag"], "\"v1\"");
    let (status, headers, body) = get(&client(), &url, &[("if-none-match", "W/\"v1\"")]).await;
    assert_eq!(status, StatusCode::NOT_MODIFIED);
    assert!(body.is_empty());
    assert_eq!(headers["etag"], "\"v1\"");
    assert_eq!(headers["cache-control"], "max-age=30");
}

#[tokio::test]
async fn head_works_on_get_routes() {
    let origin = Origin::start("a").await;
    let gw = gateway(&[&origin], "").await;
    for path in ["/users/1?size=500", "/catalog/x", "/cached/h?size=500"] {
        let res = client().head(gw.at(path)).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{path}");
        assert!(res.headers().contains_key("content-type"));
        assert!(
            res.bytes().await.unwrap().is_empty(),
            "HEAD has no body: {path}"
        );
    }
}

#[tokio::test]
async fn compression_per_encoding_only_for_compressible_types() {
    let origin = Origin::start("a").await;
    let gw = gateway(&[&origin], "").await;
    let c = client();
    for enc in ["gzip", "br", "zstd"] {
        let (_, headers, body) = get(
            &c,
            &gw.at("/users/1?size=3000"),
            &[("accept-encoding", enc)],
        )
        .await;
        assert_eq!(headers["content-encoding"], enc);
        assert!(
            body.len() < 3000,
            "{enc} body should be smaller: {}",
            body.len()
        );
    }
    let (_, headers, _) = get(
        &c,
        &gw.at("/users/1?size=3000&ct=image/png"),
        &[("accept-encoding", "gzip")],
    )
    .await;
    assert!(
        headers.get("content-encoding").is_none(),
        "images are not compressed"
    );
    let (_, headers, _) = get(&c, &gw.at("/users/1"), &[("accept-encoding", "gzip")]).await;
    assert!(
        headers.get("content-encoding").is_none(),
        "tiny bodies are not compressed"
    );
    let (_, headers, body) = get(
        &c,
        &gw.at("/users/1?size=3000&gz=1"),
        &[("accept-encoding", "br")],
    )
    .await;
    assert_eq!(
        headers["content-encoding"], "gzip",
        "already-encoded upstream bodies pass untouched"
    );
    assert_eq!(gunzip(&body).len(), 3000);
    let (_, headers, _) = get(
        &c,
        &gw.at("/plain/x?size=3000"),
        &[("accept-encoding", "gzip")],
    )
    .await;
    assert!(
        headers.get("content-encoding").is_none(),
        "compress = never"
    );
    let (_, headers, _) = get(
        &c,
        &gw.at("/users/1?size=3000"),
        &[("accept-encoding", "gzip"), ("authorization", "Bearer x")],
    )
    .await;
    assert!(
        headers.get("content-encoding").is_none(),
        "no compression for credentialed requests by default (BREACH)"
    );
}

#[tokio::test]
async fn cache_hit_answers_without_the_upstream_and_reports_age() {
    let origin = Origin::start("a").await;
    let gw = gateway(&[&origin], "").await;
    let c = client();
    let url = gw.at("/cached/u/1?size=2500");
    let (_, h1, b1) = get(&c, &url, &[]).await;
    assert_eq!(h1["x-cache"], "MISS");
    let (_, h2, b2) = get(&c, &url, &[]).await;
    assert_eq!(h2["x-cache"], "HIT");
    assert!(h2.contains_key("age"));
    assert_eq!(b1, b2);
    assert_eq!(origin.hits("/cached/u/1"), 1);
    // Encoded variants are served from the cache too, and stay byte-identical.
    let (_, g1, gz1) = get(&c, &url, &[("accept-encoding", "gzip")]).await;
    let (_, g2, gz2) = get(&c, &url, &[("accept-encoding", "gzip")]).await;
    assert_eq!(
        (
            g1["x-cache"].to_str().unwrap(),
            g2["x-cache"].to_str().unwrap()
        ),
        ("HIT", "HIT")
    );
    assert_eq!(g1["content-encoding"], "gzip");
    assert_eq!(gz1, gz2);
    assert_eq!(gunzip(&gz1), b1);
    assert_eq!(origin.hits("/cached/u/1"), 1);
    let metrics = client()
        .get(format!("{}/metrics", gw.admin_url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "gateway_cache_lookups_total{route=\"cached\",outcome=\"hit\"} 3",
        "gateway_cache_lookups_total{route=\"cached\",outcome=\"miss\"} 1",
        "gateway_upstream_requests_total{upstream=\"users\",outcome=\"ok\"} 1",
    ] {
        assert!(metrics.contains(line), "missing {line} in\n{metrics}");
    }
    // A different query is a different key.
    let (_, h3, _) = get(&c, &gw.at("/cached/u/1?size=2501"), &[]).await;
    assert_eq!(h3["x-cache"], "MISS");
}

#[tokio::test]
async fn uncacheable_responses_are_never_hits() {
    let origin = Origin::start("a").await;
    let gw = gateway(&[&origin], "").await;
    let c = client();
    for q in [
        "cc=no-store",
        "cc=private%2C%20max-age%3D60",
        "cookie=1",
        "vary=*",
        "status=500",
        "status=502",
        "status=302",
    ] {
        let url = gw.at(&format!("/cached/x?{q}"));
        get(&c, &url, &[]).await;
        let (_, headers, _) = get(&c, &url, &[]).await;
        assert_ne!(
            headers.get("x-cache").map(|v| v.to_str().unwrap()),
            Some("HIT"),
            "{q}"
        );
    }
    let url = gw.at("/cached/missing?status=404");
    get(&c, &url, &[]).await;
    let (status, headers, _) = get(&c, &url, &[]).await;
    assert_eq!(
        (status, headers["x-cache"].to_str().unwrap()),
        (StatusCode::NOT_FOUND, "HIT"),
        "404 is cacheable"
    );
}

#[tokio::test]
async fn vary_headers_key_the_cache() {
    let origin = Origin::start("a").await;
    let gw = gateway(&[&origin], "").await;
    let c = client();
    let url = gw.at("/cached/v?vary=Accept-Language");
    let (_, _, en) = get(&c, &url, &[("accept-language", "en")]).await;
    let (_, h, fr) = get(&c, &url, &[("accept-language", "fr")]).await;
    assert_eq!(h["x-cache"], "MISS");
    assert_eq!(json(&en)["accept_language"], "en");
    assert_eq!(json(&fr)["accept_language"], "fr");
    let (_, h, en2) = get(&c, &url, &[("accept-language", "en")]).await;
    assert_eq!(h["x-cache"], "HIT");
    assert_eq!(json(&en2)["accept_language"], "en");
}

#[tokio::test]
async fn stale_entries_are_revalidated_with_if_none_match() {
    let origin = Origin::start("a").await;
    let gw = gateway(&[&origin], "").await;
    let c = client();
    let url = gw.at("/cached/r?etag=%22r1%22&cc=max-age%3D0");
    let (_, h, b1) = get(&c, &url, &[]).await;
    assert_eq!(h["x-cache"], "MISS");
    let (status, h, b2) = get(&c, &url, &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(h["x-cache"], "REVALIDATED");
    assert_eq!(b1, b2, "the stored body is served after a 304");
    let seen = origin.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].headers["if-none-match"], "\"r1\"");
    // A client validator is answered by the gateway after revalidation.
    let (status, _, _) = get(&c, &url, &[("if-none-match", "\"r1\"")]).await;
    assert_eq!(status, StatusCode::NOT_MODIFIED);
}

#[tokio::test]
async fn concurrent_misses_make_one_upstream_request() {
    let origin = Origin::start("a").await;
    let gw = gateway(&[&origin], "").await;
    let c = client();
    let url = gw.at("/cached/slow?delay_ms=300&size=1000");
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let c = c.clone();
            let url = url.clone();
            tokio::spawn(async move { get(&c, &url, &[]).await })
        })
        .collect();
    for t in tasks {
        let (status, _, body) = t.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body.len(), 1000);
    }
    assert_eq!(
        origin.hits("/cached/slow"),
        1,
        "coalesced into one upstream request"
    );
}

#[tokio::test]
async fn one_user_never_receives_another_users_cached_body() {
    let origin = Origin::start("a").await;
    let extra = read_route(
        "me",
        "/me/{*rest}",
        "users",
        "methods = [\"GET\"]\nforward_authorization = true\ncache = { ttl = \"60s\" }",
    );
    let gw = gateway(&[&origin], &extra).await;
    let c = client();
    let url = gw.at("/me/profile?cc=max-age%3D60");
    let (_, ha, a) = get(&c, &url, &[("authorization", "Bearer user-a")]).await;
    let (_, hb, b) = get(&c, &url, &[("authorization", "Bearer user-b")]).await;
    assert_eq!(json(&a)["authorization"], "Bearer user-a");
    assert_eq!(
        json(&b)["authorization"],
        "Bearer user-b",
        "B must not get A's body"
    );
    assert_eq!(
        (
            ha["x-cache"].to_str().unwrap(),
            hb["x-cache"].to_str().unwrap()
        ),
        ("MISS", "MISS")
    );
    let (_, ha2, a2) = get(&c, &url, &[("authorization", "Bearer user-a")]).await;
    assert_eq!(ha2["x-cache"], "HIT", "stored per subject");
    assert_eq!(json(&a2)["authorization"], "Bearer user-a");
    let (_, _, anon) = get(&c, &url, &[]).await;
    assert_eq!(
        json(&anon)["authorization"],
        "",
        "anonymous never gets a private body"
    );
    // Marked public by the upstream: shared across users.
    let shared = gw.at("/me/shared?cc=public%2C%20max-age%3D60");
    get(&c, &shared, &[("authorization", "Bearer user-a")]).await;
    let (_, h, _) = get(&c, &shared, &[("authorization", "Bearer user-b")]).await;
    assert_eq!(h["x-cache"], "HIT");
}

#[tokio::test]
async fn reads_work_while_the_broker_is_down() {
    let origin = Origin::start("a").await;
    let gw = gateway(&[&origin], "").await;
    let ready = client()
        .get(format!("{}/readyz", gw.admin_url))
        .send()
        .await
        .unwrap();
    assert_eq!(
        ready.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "no broker in this test"
    );
    let (status, _, _) = get(&client(), &gw.at("/users/1"), &[]).await;
    assert_eq!(status, StatusCode::OK);
}

/// `[compression]`: responses encoded for one request use the `dynamic` level, variants
/// stored with a cache entry the `cached` one, for every coding; swapping the two levels swaps
/// which body is smaller. Every body decodes to the origin's.
#[tokio::test]
async fn dynamic_and_cached_responses_are_compressed_at_their_own_levels() {
    // JSON of the usual kind (repeated keys, words, names): every coding's higher levels do
    // better on it by a wide margin (levels are not monotonic on every input).
    let words = [
        "lorem",
        "ipsum",
        "dolor",
        "sit",
        "amet",
        "consectetur",
        "adipiscing",
        "elit",
    ];
    let names = [
        "Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Ken", "Margaret",
    ];
    let body: String = (0..300usize)
        .map(|i| {
            let bio: Vec<&str> = (0..12usize)
                .map(|j| words[(i * 31 + j * 17 + i * j) % words.len()])
                .collect();
            format!(
                r#"{{"id":{i},"name":"{}","email":"{}{i}@example.com","active":{},"bio":"{}"}},"#,
                names[i % names.len()],
                names[(i * 7) % names.len()].to_lowercase(),
                i % 3 == 0,
                bio.join(" ")
            )
        })
        .collect();
    let served = body.clone();
    let origin = Origin::scripted("o", move |_| {
        support::origin::Reply::ok()
            .header("content-type", "application/json")
            .header("cache-control", "max-age=60")
            .body(served.clone())
    })
    .await;
    let decode = |coding: &str, encoded: &[u8]| -> Vec<u8> {
        match coding {
            "gzip" => gunzip(encoded),
            "br" => {
                let mut out = Vec::new();
                brotli::BrotliDecompress(&mut &encoded[..], &mut out).unwrap();
                out
            }
            _ => zstd::stream::decode_all(encoded).unwrap(),
        }
    };
    let c = client();
    for (dynamic, cached, cached_is_smaller) in [("fast", "high", true), ("high", "fast", false)] {
        let sections = format!(
            "{}{}\n[compression]\ndynamic = \"{dynamic}\"\ncached = \"{cached}\"\n",
            support::gateway::read_route("plain", "/plain/{id}", "o", ""),
            support::gateway::read_route(
                "stored",
                "/stored/{id}",
                "o",
                "cache = { ttl = \"60s\" }"
            ),
        );
        let gw = TestGateway::in_front_of(&origin.url, "", &sections).await;
        for coding in ["gzip", "br", "zstd"] {
            let accept = [("accept-encoding", coding)];
            let (_, plain_headers, plain) = get(&c, &gw.at("/plain/1"), &accept).await;
            get(&c, &gw.at("/stored/1"), &accept).await;
            let (_, stored_headers, stored) = get(&c, &gw.at("/stored/1"), &accept).await;
            assert_eq!(plain_headers["content-encoding"], coding);
            assert_eq!(stored_headers["content-encoding"], coding);
            assert_eq!(stored_headers["x-cache"], "HIT");
            assert_eq!(decode(coding, &plain), body.as_bytes());
            assert_eq!(decode(coding, &stored), body.as_bytes());
            assert_eq!(
                stored.len() < plain.len(),
                cached_is_smaller,
                "{coding}: dynamic {dynamic} gave {} bytes, cached {cached} {} bytes",
                plain.len(),
                stored.len()
            );
        }
        gw.shutdown().await;
    }
}
