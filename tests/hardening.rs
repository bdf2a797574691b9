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
