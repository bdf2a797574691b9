//! Protocol hardening and shutdown, over raw sockets where HTTP clients would "fix" the input.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use lapin::ExchangeKind;
use support::amqp::header;
use support::gateway::{base_config_with, no_broker, publish_route, read_route, topic_exchange};
use support::{TestGateway, TestQueue, amqp_url, base_config, unique_name};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A gateway with one write route on `exchange` and tight protocol limits.
async fn gateway(url: &str, exchange: &str, ready: bool) -> TestGateway {
    let config = format!(
        "{}{}{}",
        base_config_with(
            url,
            "shutdown_delay = \"300ms\"\nheader_read_timeout = \"500ms\"\nbody_read_timeout = \"500ms\"\nmax_header_bytes = 8192\nmax_headers = 20",
        ),
        topic_exchange(exchange),
        publish_route("write", "/w/{id}", exchange, "w.{id}", ""),
    );
    if ready {
        TestGateway::start(&config).await
    } else {
        TestGateway::start_unready(&config).await
    }
}

fn addr(gw: &TestGateway) -> String {
    gw.url.trim_start_matches("http://").to_owned()
}

/// Writes `raw`, reads until the server closes (or 5 s), returns what came back.
async fn exchange_raw(gw: &TestGateway, raw: &[u8]) -> String {
    let mut s = TcpStream::connect(addr(gw)).await.unwrap();
    s.write_all(raw).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn statuses(response: &str) -> Vec<u16> {
    response
        .match_indices("HTTP/1.1 ")
        .filter_map(|(i, _)| response[i + 9..i + 12].parse().ok())
        .collect()
}

#[tokio::test]
async fn request_smuggling_shapes_are_rejected_and_never_processed() {
    let gw = gateway(&no_broker(), "x", false).await;
    let cases: &[&[u8]] = &[
        // CL + TE: a smuggled GET hides in the body.
        b"POST /w/1 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
        // Two different Content-Lengths.
        b"POST /w/1 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 2\r\n\r\n{}x",
        b"POST /w/1 HTTP/1.1\r\nHost: x\r\nContent-Length: 3,2\r\n\r\n{}x",
        b"POST /w/1 HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        // Chunked not last / repeated.
        b"POST /w/1 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
        // Runaway chunk size.
        b"POST /w/1 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFFFFFF\r\n",
        // Invalid header name.
        b"GET /w/1 HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n",
    ];
    for raw in cases {
        let response = exchange_raw(&gw, raw).await;
        let codes = statuses(&response);
        assert_eq!(
            codes.first(),
            Some(&400),
            "{:?} -> {response:?}",
            String::from_utf8_lossy(raw)
        );
        assert_eq!(
            codes.len(),
            1,
            "a second (smuggled) request was answered: {response:?}"
        );
    }
}

#[tokio::test]
async fn oversized_heads_get_431_and_414() {
    let gw = gateway(&no_broker(), "x", false).await;
    let many: String = (0..30).map(|i| format!("X-H{i}: v\r\n")).collect();
    let response = exchange_raw(
        &gw,
        format!("GET /w/1 HTTP/1.1\r\nHost: x\r\n{many}\r\n").as_bytes(),
    )
    .await;
    assert_eq!(
        statuses(&response).first(),
        Some(&431),
        "too many headers: {response:?}"
    );
    let big = "a".repeat(10_000);
    let response = exchange_raw(
        &gw,
        format!("GET /w/1 HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(
        statuses(&response).first(),
        Some(&431),
        "one huge header: {response:?}"
    );
    let response = exchange_raw(
        &gw,
        format!("GET /w/{big} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
    )
    .await;
    let code = statuses(&response).first().copied();
    assert!(matches!(code, Some(414 | 431)), "long URI: {response:?}");
}

/// With `max_headers` left at its default (100) the server does not pass it to hyper, whose
/// own limit is the same: 100 headers are served, 101 get 431.
#[tokio::test]
async fn the_default_header_count_limit_is_100() {
    let config = format!(
        "{}{}",
        base_config(&no_broker()),
        publish_route("write", "/w/{id}", "", "w", "")
    );
    let gw = TestGateway::start_unready(&config).await;
    let head = |n: usize| {
        // `Host` is one of the n headers.
        let extra: String = (1..n).map(|i| format!("X-H{i}: v\r\n")).collect();
        format!("GET /w/1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{extra}\r\n")
    };
    // 99 + Connection + Host = 101 headers with `head(100)`; `head(99)` sends 100.
    let at_limit = exchange_raw(&gw, head(99).as_bytes()).await;
    assert_eq!(statuses(&at_limit).first(), Some(&405), "{at_limit:?}");
    let over = exchange_raw(&gw, head(100).as_bytes()).await;
    assert_eq!(statuses(&over).first(), Some(&431), "{over:?}");
}

#[tokio::test]
async fn slowloris_heads_are_cut_off_at_the_header_read_timeout() {
    let gw = gateway(&no_broker(), "x", false).await;
    let mut s = TcpStream::connect(addr(&gw)).await.unwrap();
    s.write_all(b"GET /w/1 HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    // The server must close the connection on its own; keep trickling meanwhile.
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let mut chunk = [0u8; 256];
            tokio::select! {
                n = s.read(&mut chunk) => match n {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                },
                _ = tokio::time::sleep(Duration::from_millis(100)) => {
                    if s.write_all(b"a").await.is_err() {
                        return;
                    }
                }
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "connection still open after 5 s of trickling"
    );
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(400) && elapsed < Duration::from_secs(3),
        "closed after {elapsed:?}"
    );
}

#[tokio::test]
async fn a_stalled_body_gets_408_and_oversized_expect_continue_gets_413() {
    let gw = gateway(&no_broker(), "x", false).await;
    let mut s = TcpStream::connect(addr(&gw)).await.unwrap();
    s.write_all(b"POST /w/1 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"a\":").await.unwrap();
    let mut out = Vec::new();
    let started = Instant::now();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    let response = String::from_utf8_lossy(&out);
    assert_eq!(statuses(&response).first(), Some(&408), "{response:?}");
    assert!(started.elapsed() < Duration::from_secs(3));

    let mut s = TcpStream::connect(addr(&gw)).await.unwrap();
    s.write_all(b"POST /w/1 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 99999999\r\nExpect: 100-continue\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let response = String::from_utf8_lossy(&buf[..n]);
    assert!(
        response.starts_with("HTTP/1.1 413"),
        "no 100 Continue, straight 413: {response:?}"
    );
}

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_writes_and_then_refuses() {
    let url = amqp_url();
    let exchange = unique_name("shutdown");
    let q = TestQueue::bind(&url, &exchange, Some(ExchangeKind::Topic), "#").await;
    let gw = gateway(&url, &exchange, true).await;
    let client = reqwest::Client::new();
    // A write whose body is still arriving when shutdown starts.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(1);
    let body = reqwest::Body::wrap_stream(tokio_stream_from(rx));
    let in_flight = tokio::spawn(
        client
            .post(gw.at("/w/1"))
            .header("content-type", "application/json")
            .body(body)
            .send(),
    );
    tx.send(Ok(b"{\"a\":".to_vec())).await.unwrap();
    // No wait needed here: during `shutdown_delay` the listener still accepts, and once
    // accepted a connection is drained, not dropped.
    let admin = gw.admin_url.clone();
    let public = gw.url.clone();
    let stopping = tokio::spawn(gw.shutdown());
    // During shutdown_delay: not ready, still serving, connections closed after each response.
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let r = reqwest::get(format!("{admin}/readyz")).await.unwrap();
        if r.status() == 503 {
            break;
        }
        assert!(Instant::now() < deadline, "/readyz never turned 503");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let during = reqwest::Client::new()
        .post(format!("{public}/w/2"))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(during.status(), 202);
    assert_eq!(during.headers()["connection"], "close");
    tx.send(Ok(b"1}".to_vec())).await.unwrap();
    drop(tx);
    let res = in_flight.await.unwrap().unwrap();
    assert_eq!(res.status(), 202, "the in-flight write completes");
    stopping.await.unwrap();
    let refused = TcpStream::connect(public.trim_start_matches("http://")).await;
    assert!(
        refused.is_err(),
        "new connections are refused after shutdown"
    );
    let got = q.drain(Duration::from_millis(300)).await;
    assert_eq!(got.len(), 2, "both accepted writes are in the queue");
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Result<Vec<u8>, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

// ---------------------------------------------------------------------------------------------
// Protect the backends and the broker: what crosses to them, and which paths are refused.
// ---------------------------------------------------------------------------------------------

/// Header fields a client may not hand to a backend, under every spelling a backend may merge
/// into the same name (`_` for `-`). The gateway sets `X-Forwarded-For/Proto/Host` itself.
const FORGED: &[&str] = &[
    "X-Auth-Sub",
    "X-Auth_Sub",
    "x_auth_sub",
    "X-Auth_Roles",
    "X-Forwarded_For",
    "X_Forwarded_Host",
    "X-Forwarded_Proto",
    "X-Original_URL",
    "X-Original-URL",
    "X_HTTP_Method_Override",
    "True-Client-IP",
    "True_Client_IP",
    "X-Real-IP",
    "X-Real_IP",
    "X-Forwarded-Prefix",
    "X_Forwarded_Prefix",
    "X-Host",
    "X_Host",
    "X-Forwarded-Server",
    "X-Client-IP",
    "X_Client_IP",
    "X-Cluster-Client-IP",
    "CF-Connecting-IP",
    "CF_Connecting_IP",
    "Fastly-Client-IP",
    "X-ProxyUser-Ip",
    "Client-IP",
    "Client_IP",
];

/// The names every forged field above stands for, as a backend that maps `_` to `-` reads them.
fn as_backend_reads(name: &str) -> String {
    name.to_ascii_lowercase().replace('_', "-")
}

/// A public route on `/r/{*rest}` taking GET, HEAD and POST, proxied to upstream `o` with the
/// request path as it is; `extra` adds lines (`cache = ...`).
fn proxy_route(extra: &str) -> String {
    read_route(
        "r",
        "/r/{*rest}",
        "o",
        &format!("methods = [\"GET\", \"HEAD\", \"POST\"]\n{extra}"),
    )
}

#[tokio::test]
async fn forwarding_and_identity_headers_never_reach_the_upstream_under_any_spelling() {
    let origin = support::Origin::scripted("o", |_| support::origin::Reply::ok()).await;
    let gw = TestGateway::in_front_of(&origin.url, "", &proxy_route("")).await;
    let mut headers: Vec<(&str, &[u8])> = FORGED.iter().map(|n| (*n, &b"6.6.6.6"[..])).collect();
    headers.push(("X-Forwarded-For", b"6.6.6.6"));
    headers.push(("Content-Type", b"application/json"));
    headers.push(("X-Kept_Custom", b"yes"));
    let get = support::http::send(reqwest::Method::GET, &gw.at("/r/a"), headers.clone()).await;
    assert_eq!(get.status, 200, "{}", get.text());
    let post = support::http::send_body(
        reqwest::Method::POST,
        &gw.at("/r/a"),
        headers,
        reqwest::Body::from("{}"),
    )
    .await;
    assert_eq!(post.status, 200, "{}", post.text());
    let seen = origin.seen();
    assert_eq!(
        seen.iter().map(|s| s.method.as_str()).collect::<Vec<_>>(),
        ["GET", "POST"]
    );
    let forged: Vec<String> = FORGED.iter().map(|n| as_backend_reads(n)).collect();
    for request in &seen {
        for (name, value) in &request.headers {
            let raw = name.as_str();
            let read_as = as_backend_reads(raw);
            assert!(
                !forged.contains(&read_as) || raw.starts_with("x-forwarded-"),
                "{} got `{raw}: {value:?}` from the client",
                request.method
            );
            assert_ne!(
                value.as_bytes(),
                b"6.6.6.6",
                "{} got a client value in `{raw}`",
                request.method
            );
        }
        // The gateway's own fields, under their one spelling only.
        assert_eq!(request.text("x-forwarded-for"), "127.0.0.1");
        assert_eq!(request.text("x-forwarded-proto"), "http");
        assert_eq!(request.text("x-kept_custom"), "yes", "other fields pass");
    }
    assert_eq!(seen[1].text("content-type"), "application/json");
}

#[tokio::test]
async fn server_and_x_powered_by_stay_with_the_upstream_on_reads_hits_and_proxied_writes() {
    let origin = support::Origin::scripted("o", |_| {
        support::origin::Reply::ok()
            .header("server", "Apache/2.4.1 (Unix) OpenSSL/1.0.1")
            .header("x-powered-by", "PHP/5.6.40")
            .header("cache-control", "public, max-age=60")
            .header("x-served-by", "o")
            .body("{}")
    })
    .await;
    let gw = TestGateway::in_front_of(&origin.url, "", &proxy_route("cache = {}")).await;
    let mut answers = Vec::new();
    for method in [
        reqwest::Method::GET,
        reqwest::Method::GET,
        reqwest::Method::POST,
    ] {
        answers.push(support::http::send(method, &gw.at("/r/a"), []).await);
    }
    assert_eq!(
        answers.iter().map(|a| a.summary()).collect::<Vec<_>>(),
        ["200 MISS", "200 HIT", "200 "],
        "a miss, a hit from the cache, then a proxied POST"
    );
    for answer in &answers {
        assert_eq!(answer.header("x-served-by"), Some("o"), "{answer:?}");
        assert!(answer.headers.get("server").is_none(), "{answer:?}");
        assert!(answer.headers.get("x-powered-by").is_none(), "{answer:?}");
    }
    assert_eq!(origin.count(), 2, "the hit was served from the cache");
}

/// Paths a backend could read as another path (Tomcat `;` parameters, backslashes, NUL,
/// overlong UTF-8, encoded dots), after a prefix the routes below match.
const BAD_PATHS: &[&str] = &[
    "/..;/admin",
    "/x/..;jsessionid=1/admin",
    "/.;/admin",
    "/%2e%2e;/admin",
    "/..%5cadmin",
    "/..%5Cadmin",
    "/a\\b",
    "/a%00.json",
    "/%c0%ae%c0%ae/admin",
    "/%c0%af",
    "/%e0%80%ae%e0%80%ae/admin",
    "/%ff",
    "/%2e%2e/admin",
    "/%zz",
];

/// Sends `method path` over a raw socket (an HTTP client would normalise the path) with a
/// JSON body; returns the status, the `Content-Type` and the body.
async fn raw_request(gw: &TestGateway, method: &str, path: &str) -> (u16, String, String) {
    let raw = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{{}}"
    );
    let response = exchange_raw(gw, raw.as_bytes()).await;
    let status = statuses(&response).first().copied().unwrap_or(0);
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let content_type = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type: ")
                .map(str::to_owned)
        })
        .unwrap_or_default();
    (status, content_type, body.to_owned())
}

#[tokio::test]
async fn paths_a_backend_could_read_differently_are_400_on_every_kind_of_route() {
    let origin = support::Origin::scripted("o", |_| support::origin::Reply::ok()).await;
    let config = format!(
        "{base}{exchange}{upstream}{reads}{rewritten}{publish}",
        base = base_config(&no_broker()),
        exchange = topic_exchange("w"),
        upstream = support::gateway::upstream("o", &origin.url),
        // Reads and proxied writes, the request path sent as it is.
        reads = proxy_route(""),
        rewritten = read_route(
            "t",
            "/t/{*rest}",
            "o",
            "methods = [\"GET\"]\nupstream_path = \"/u/{rest}\"",
        ),
        publish = publish_route("w", "/w/{*rest}", "w", "w", ""),
    );
    let gw = TestGateway::start_unready(&config).await;

    // The routes work for ordinary paths (dots included): the origin answers reads and proxied
    // writes, the publish route gets as far as the (absent) broker.
    for (method, path, status) in [
        ("GET", "/r/a/b.json", 200),
        ("POST", "/r/a/b.json", 200),
        ("GET", "/t/a/b.json", 200),
        ("POST", "/w/a/b", 503),
    ] {
        let (got, _, body) = raw_request(&gw, method, path).await;
        assert_eq!(got, status, "{method} {path}: {body}");
    }
    assert_eq!(origin.count(), 3);

    for (method, prefix) in [("GET", "/r"), ("POST", "/r"), ("GET", "/t"), ("POST", "/w")] {
        for bad in BAD_PATHS {
            let path = format!("{prefix}{bad}");
            let (status, content_type, body) = raw_request(&gw, method, &path).await;
            assert_eq!(status, 400, "{method} {path}: {body}");
            assert_eq!(content_type, "application/problem+json", "{method} {path}");
            let problem: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(problem["type"], "urn:amqp-gateway:problem:bad-request");
            // Refused by the path check, not by a later parameter or UTF-8 rule.
            let detail = problem["detail"].as_str().unwrap();
            assert!(!detail.contains("parameter"), "{method} {path}: {detail}");
        }
    }
    assert_eq!(origin.count(), 3, "no refused path reached the origin");
}

#[tokio::test]
async fn a_content_type_over_255_bytes_is_415_not_500() {
    let config = format!(
        "{}{}{}",
        base_config(&no_broker()),
        topic_exchange("w"),
        publish_route("w", "/w", "w", "w", "")
    );
    let gw = TestGateway::start_unready(&config).await;
    let post = |content_type: String| {
        let url = gw.at("/w");
        async move {
            support::http::send_body(
                reqwest::Method::POST,
                &url,
                [("content-type", content_type.as_bytes())],
                reqwest::Body::from("{}"),
            )
            .await
        }
    };
    // Accepted as a media type at 255 bytes (then the broker is missing: 503)...
    let at_limit = format!("application/json; x={}", "a".repeat(255 - 20));
    let answer = post(at_limit).await;
    assert_eq!(answer.status, 503, "{}", answer.text());
    // ...refused at 256: it could never be the message's `content_type`.
    let over = format!("application/json; x={}", "a".repeat(256 - 20));
    let answer = post(over).await;
    assert_eq!(answer.status, 415, "{}", answer.text());
    assert_eq!(
        answer.json()["type"],
        "urn:amqp-gateway:problem:unsupported-media-type"
    );
}

#[tokio::test]
async fn path_parameters_copied_into_headers_are_routing_key_words() {
    let url = amqp_url();
    let exchange = unique_name("params");
    let q = TestQueue::bind(&url, &exchange, Some(ExchangeKind::Topic), "#").await;
    // `note` is not in the routing key, only in the `x-param-note` header.
    let config = format!(
        "{}{}{}",
        base_config(&url),
        topic_exchange(&exchange),
        publish_route("p", "/p/{id}/{note}", &exchange, "p.{id}", "")
    );
    let gw = TestGateway::start(&config).await;
    let post = |path: String| {
        let url = gw.at(&path);
        async move {
            support::http::send_body(
                reqwest::Method::POST,
                &url,
                [("content-type", &b"application/json"[..])],
                reqwest::Body::from("{}"),
            )
            .await
        }
    };
    let long = "n".repeat(256);
    for bad in ["a.b", "a%2Eb", "%2A", "%23", "a%0Ab", long.as_str()] {
        let answer = post(format!("/p/1/{bad}")).await;
        assert_eq!(answer.status, 400, "{bad}: {}", answer.text());
        assert!(answer.text().contains("`note`"), "{}", answer.text());
    }
    let answer = post("/p/1/fine".to_owned()).await;
    assert_eq!(answer.status, 202, "{}", answer.text());
    let got = q.drain(Duration::from_millis(300)).await;
    assert_eq!(got.len(), 1, "only the valid request was published");
    let note = header(&got[0], "x-param-note").cloned();
    assert_eq!(
        note,
        Some(lapin::types::AMQPValue::LongString("fine".into()))
    );
}

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An empty HTTP/2 SETTINGS frame (length 0, type 4, no flags, stream 0).
const H2_SETTINGS: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];

/// Reads (and discards) until the server closes: `Some(elapsed)` at EOF or a reset, `None` if
/// the connection is still open after `limit`.
async fn closed_within(s: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(limit, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => continue,
            }
        }
    })
    .await
    .ok()
    .map(|()| started.elapsed())
}

#[tokio::test]
async fn idle_and_preface_only_connections_are_closed_at_the_header_read_timeout() {
    let gw = TestGateway::reads("header_read_timeout = \"300ms\"", "").await;
    let preface_and_settings = [H2_PREFACE, H2_SETTINGS].concat();
    let cases: [(&str, &[u8]); 4] = [
        ("nothing sent", b""),
        ("a partial HTTP/2 preface", &H2_PREFACE[..10]),
        ("the whole preface", H2_PREFACE),
        (
            "preface and SETTINGS, then no request",
            &preface_and_settings,
        ),
    ];
    for (what, sent) in cases {
        let mut s = TcpStream::connect(addr(&gw)).await.unwrap();
        s.write_all(sent).await.unwrap();
        let closed = closed_within(&mut s, Duration::from_secs(3)).await;
        let elapsed = closed.unwrap_or_else(|| panic!("{what}: still open after 3 s"));
        assert!(
            elapsed >= Duration::from_millis(200),
            "{what}: closed after {elapsed:?}, before the timeout"
        );
    }
    // A prompt h2c request is served as ever.
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let res = client.get(gw.at("/nothing")).send().await.unwrap();
    assert_eq!(res.version(), reqwest::Version::HTTP_2);
    assert_eq!(res.status(), 404);
}

/// Sends one keep-alive request and returns the start of the answer (`None`: nothing within
/// `limit`).
async fn ask(s: &mut TcpStream, limit: Duration) -> Option<String> {
    s.write_all(b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    read_some(s, limit).await
}

async fn read_some(s: &mut TcpStream, limit: Duration) -> Option<String> {
    let mut buf = [0u8; 4096];
    match tokio::time::timeout(limit, s.read(&mut buf)).await {
        Ok(Ok(n)) if n > 0 => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
        Ok(_) => Some(String::new()),
        Err(_) => None,
    }
}

#[tokio::test]
async fn connections_beyond_max_connections_wait_until_one_closes() {
    let gw = TestGateway::reads("max_connections = 2", "").await;
    let mut a = TcpStream::connect(addr(&gw)).await.unwrap();
    let mut b = TcpStream::connect(addr(&gw)).await.unwrap();
    for s in [&mut a, &mut b] {
        let answer = ask(s, Duration::from_secs(5)).await.expect("served");
        assert!(answer.starts_with("HTTP/1.1 404"), "{answer:?}");
    }
    // The third connection completes its handshake (the backlog) but is not read.
    let mut c = TcpStream::connect(addr(&gw)).await.unwrap();
    let early = ask(&mut c, Duration::from_millis(500)).await;
    assert_eq!(
        early, None,
        "a third connection was served while two were open"
    );
    // a and b are still served.
    let answer = ask(&mut b, Duration::from_secs(5)).await.expect("served");
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer:?}");
    drop(a);
    let answer = read_some(&mut c, Duration::from_secs(5))
        .await
        .expect("the waiting connection was not served after a slot freed");
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer:?}");
}

/// An origin on port 0 answering every request with a chunked body: `prefix` bytes at once,
/// then one byte every `trickle`, or (`None`) as fast as it can, forever. Each connection
/// whose write fails (the gateway let go of it) is reported on the channel.
async fn streaming_origin(
    prefix: usize,
    trickle: Option<Duration>,
) -> (String, tokio::sync::mpsc::UnboundedReceiver<Instant>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let chunk = |n: usize| {
                    let mut c = format!("{n:x}\r\n").into_bytes();
                    c.extend(std::iter::repeat_n(b'a', n));
                    c.extend_from_slice(b"\r\n");
                    c
                };
                let big = chunk(64 * 1024);
                let mut out = b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
                for _ in 0..prefix.div_ceil(64 * 1024) {
                    out.extend_from_slice(&big);
                }
                let mut failed = s.write_all(&out).await.is_err();
                while !failed {
                    failed = match trickle {
                        Some(every) => {
                            tokio::time::sleep(every).await;
                            s.write_all(&chunk(1)).await.is_err()
                        }
                        None => s.write_all(&big).await.is_err(),
                    };
                }
                let _ = tx.send(Instant::now());
            });
        }
    });
    (url, rx)
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_off_at_the_write_timeout() {
    // An endless body over the 1 MiB buffer: streamed, by a fast origin.
    let (origin, mut released) = streaming_origin(2 * 1024 * 1024, None).await;
    let gw = TestGateway::in_front_of(
        &origin,
        "write_timeout = \"500ms\"",
        &support::gateway::read_route("big", "/big", "o", ""),
    )
    .await;
    let mut client = TcpStream::connect(addr(&gw)).await.unwrap();
    client
        .write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    // The client reads nothing: every buffer on the way fills, the gateway's write stalls, and
    // after write_timeout the gateway must let go of the client and of the origin.
    tokio::time::timeout(Duration::from_secs(15), released.recv())
        .await
        .expect("the origin's connection is still held 15 s after the client stopped reading")
        .unwrap();
    assert!(
        closed_within(&mut client, Duration::from_secs(5))
            .await
            .is_some(),
        "the client connection was not ended"
    );
}

#[tokio::test]
async fn a_streamed_body_is_cut_off_at_the_upstream_body_timeout() {
    // 1.5 MiB at once (over the 1 MiB buffer, so it streams), then a byte every 100 ms forever.
    let (origin, mut released) =
        streaming_origin(1536 * 1024, Some(Duration::from_millis(100))).await;
    let sections = format!(
        "\n[upstreams.o]\ntargets = [\"{origin}\"]\ntimeout = \"1s\"\nconnect_timeout = \"300ms\"\nbody_timeout = \"1s\"\n{}",
        support::gateway::read_route("big", "/big", "o", "")
    );
    let gw = TestGateway::reads("", &sections).await;
    let mut client = TcpStream::connect(addr(&gw)).await.unwrap();
    client
        .write_all(b"GET /big HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    // A client that reads everything it gets.
    let mut got = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match client.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "still streaming 10 s in (body_timeout 1s)");
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        &got[..got.len().min(64)]
    );
    assert!(got.len() > 1024 * 1024, "the streamed prefix arrived");
    assert!(
        !got.ends_with(b"\r\n0\r\n\r\n"),
        "a body cut off at the deadline must not look complete"
    );
    tokio::time::timeout(Duration::from_secs(5), released.recv())
        .await
        .expect("the origin's connection is still held after body_timeout")
        .unwrap();
}

/// A proxy in front may open a connection and write its request just as the gateway stops
/// listening (nginx opens a new upstream connection for nearly every request while the
/// gateway answers `Connection: close`). That request is served, with `Connection: close`,
/// instead of the connection being cut (a 502 for a POST the proxy must not replay).
#[tokio::test]
async fn a_connection_opened_just_before_shutdown_is_served_not_cut() {
    let origin = support::Origin::scripted("o", |_| support::origin::Reply::ok().body("ok")).await;
    let gw = TestGateway::in_front_of(&origin.url, "", &proxy_route("")).await;
    let mut silent = TcpStream::connect(gw.url.trim_start_matches("http://"))
        .await
        .unwrap();
    let admin = gw.admin_url.clone();
    let stopping = tokio::spawn(gw.shutdown());
    // The admin listener stops with the public one: once it refuses, the accept loop is done.
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(admin.trim_start_matches("http://"))
        .await
        .is_ok()
    {
        assert!(
            Instant::now() < deadline,
            "the gateway did not stop listening"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    silent
        .write_all(b"GET /r/late HTTP/1.1\r\nhost: gw\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), silent.read_to_end(&mut answer))
        .await
        .expect("the gateway neither answered nor closed")
        .unwrap();
    let text = String::from_utf8_lossy(&answer).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 200"), "{text}");
    assert!(text.contains("connection: close"), "{text}");
    stopping.await.unwrap();
}

/// How one client connection fared across the shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fate {
    /// Connected, wrote its request, got a complete response.
    Answered,
    /// The connect was refused (or never completed): safe for a proxy to retry elsewhere.
    Refused,
    /// Connected and wrote its request, then the connection ended without a response: what a
    /// proxy turns into a 502 it must not replay for a POST.
    Cut,
}

/// One request on a new connection, the way nginx talks to an upstream while the gateway
/// drains (a new connection per request). Blocking, on a thread of its own: like a proxy in
/// another process, it can connect at any instant of the gateway's shutdown, not only when
/// the test's runtime lets it.
fn one_connection(addr: std::net::SocketAddr) -> Fate {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)) else {
        return Fate::Refused;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    if s.write_all(b"GET /nowhere HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n")
        .is_err()
    {
        return Fate::Cut;
    }
    let mut answer = Vec::new();
    match s.read_to_end(&mut answer) {
        Ok(_) if answer.starts_with(b"HTTP/1.1 404") => Fate::Answered,
        r => {
            eprintln!("CUT {r:?} {:?}", String::from_utf8_lossy(&answer));
            Fate::Cut
        }
    }
}

/// The listener's close races with clients still connecting: a connection the kernel
/// completed after the last `accept` and before the close was reset with its request unread.
/// Clients (threads, as another process would be) open connections as fast as they can
/// across several shutdowns; every connection that was established must be answered, the
/// others refused.
#[tokio::test]
async fn no_established_connection_is_cut_when_the_listener_closes() {
    const CLIENTS: usize = 8;
    const ROUNDS: usize = 6;
    let mut fates = std::collections::BTreeMap::new();
    for _ in 0..ROUNDS {
        let gw = gateway(&amqp_url(), &unique_name("cut"), true).await;
        let target: std::net::SocketAddr = addr(&gw).parse().unwrap();
        let clients: Vec<_> = (0..CLIENTS)
            .map(|_| {
                std::thread::spawn(move || {
                    let mut seen = Vec::new();
                    loop {
                        let fate = one_connection(target);
                        seen.push(fate);
                        if fate == Fate::Refused {
                            return seen;
                        }
                    }
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(200)).await;
        gw.shutdown().await;
        for c in clients {
            let seen = tokio::task::spawn_blocking(move || c.join().unwrap())
                .await
                .unwrap();
            for fate in seen {
                *fates.entry(fate).or_insert(0usize) += 1;
            }
        }
    }
    eprintln!("connection fates over {ROUNDS} shutdowns: {fates:?}");
    assert_eq!(fates.get(&Fate::Cut), None, "{fates:?}");
    assert!(
        fates.get(&Fate::Answered).copied().unwrap_or(0) > 1000,
        "too few connections to mean anything: {fates:?}"
    );
}
