//! Protocol hardening and shutdown, over raw sockets where HTTP clients would "fix" the input.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use lapin::ExchangeKind;
use support::{TestGateway, TestQueue, amqp_url, base_config, unique_name};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A gateway with one write route on `exchange` and tight protocol limits.
async fn gateway(url: &str, exchange: &str, ready: bool) -> TestGateway {
    let config = format!(
        r#"{base}
[[amqp.exchanges]]
name = "{exchange}"
type = "topic"

[[routes]]
name = "write"
path = "/w/{{id}}"
methods = ["POST"]
auth = "public"
publish = {{ exchange = "{exchange}", routing_key = "w.{{id}}" }}
"#,
        base = base_config(url)
            .replace("shutdown_timeout = \"5s\"", "shutdown_timeout = \"5s\"\nshutdown_delay = \"300ms\"\nheader_read_timeout = \"500ms\"\nbody_read_timeout = \"500ms\"\nmax_header_bytes = 8192\nmax_headers = 20"),
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

fn no_broker() -> String {
    format!("amqp://guest:guest@127.0.0.1:{}/%2f", support::free_port())
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
        "{}\n[[routes]]\nname = \"write\"\npath = \"/w/{{id}}\"\nmethods = [\"POST\"]\nauth = \"public\"\npublish = {{ exchange = \"\", routing_key = \"w\" }}\n",
        base_config(&no_broker())
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
