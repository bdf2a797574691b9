//! Behind nginx (scenarios 78-83): real nginx from the Debian package, configured by the
//! shipped `deploy/nginx.conf` (see `support::nginx` for the few lines a test must change), in
//! front of two gateway instances on the shared broker, with an origin for reads.
//!
//! Under concurrent reads and writes, one of two instances shuts down gracefully (one test) or
//! is SIGKILLed (another). Must hold: every read is a 200 (nginx retries GETs elsewhere); every write
//! answered 2xx is in the queue (lost = 0); a failed write is a 502, 503 or 504 only (nginx
//! never replays a POST it already sent, so a POST caught by the crash is a 502, outcome
//! unknown). And nginx forwards the client's `X-Request-Id` (or its own `$request_id`) so
//! that it becomes the event's `correlation_id`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use lapin::ExchangeKind;
use support::gateway::{events_config, read_route, upstream};
use support::load::{DrainReport, Writers, client, post_event};
use support::nginx::{DEPLOY_CONF, Nginx, addr_of, upstream_keepalive_timeout};
use support::process::GatewayProcess;
use support::{Origin, TestGateway, TestQueue, amqp_url, unique_name};

/// Concurrent writers and readers through nginx.
const WRITERS: usize = 8;
const READERS: usize = 8;
/// Load between two events of the scenario.
const STEADY: Duration = Duration::from_millis(1500);

/// A gateway config; `listen`/`admin` are the listener addresses (`127.0.0.1:0` in process).
fn config(
    exchange: &str,
    origin: &Origin,
    listen: &str,
    admin: &str,
    shutdown_delay: Duration,
) -> String {
    [
        events_config(
            &amqp_url(),
            exchange,
            &format!(
                "listen = \"{listen}\"\nadmin_listen = \"{admin}\"\nshutdown_timeout = \"10s\"\nshutdown_delay = \"{}ms\"\ntrusted_proxies = [\"127.0.0.1/32\"]",
                shutdown_delay.as_millis()
            ),
            "connections = 1",
        ),
        upstream("origin", &origin.url),
        read_route("read", "/read/{*rest}", "origin", "methods = [\"GET\"]"),
    ]
    .concat()
}

/// GET loops through nginx until stopped; returns (status, path) of every read.
fn start_readers(
    base: String,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Vec<(u16, String)>>> {
    (0..READERS)
        .map(|r| {
            let base = base.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let client = client();
                let mut seen = Vec::new();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let path = format!("/read/r{r}/{n}");
                    let status = match client.get(format!("{base}{path}")).send().await {
                        Ok(resp) => {
                            let status = resp.status().as_u16();
                            // A 200 must carry the origin's whole body.
                            match resp.json::<serde_json::Value>().await {
                                Ok(body) if body["served_by"] == "origin" => status,
                                _ if status == 200 => 1,
                                _ => status,
                            }
                        }
                        Err(_) => 0,
                    };
                    seen.push((status, path));
                    n += 1;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                seen
            })
        })
        .collect()
}

#[test]
fn shipped_nginx_conf_never_replays_non_idempotent_requests() {
    // Static promises of deploy/nginx.conf that the failover test below relies on.
    let conf = std::fs::read_to_string(DEPLOY_CONF).unwrap();
    let directives: Vec<&str> = conf
        .lines()
        .map(|l| l.split('#').next().unwrap().trim())
        .filter(|l| !l.is_empty())
        .collect();
    let has = |d: &str| directives.iter().any(|l| l.starts_with(d));
    assert!(
        directives
            .iter()
            .any(|l| l.starts_with("proxy_next_upstream ") && !l.contains("non_idempotent")),
        "proxy_next_upstream must be set without non_idempotent"
    );
    assert!(
        !directives.iter().any(|l| l.contains("non_idempotent")),
        "POST/PATCH must never be replayed"
    );
    for d in [
        "proxy_next_upstream_tries ",
        "proxy_next_upstream_timeout ",
        "keepalive ",
        "proxy_http_version 1.1",
        "proxy_set_header Connection \"\"",
        "proxy_set_header X-Request-Id",
        "proxy_set_header X-Forwarded-For",
        "proxy_set_header X-Forwarded-Proto",
    ] {
        assert!(has(d), "{DEPLOY_CONF} lacks `{d}`");
    }
}

/// How one of the two instances goes away mid-load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// SIGTERM-like graceful shutdown, with `server.shutdown_delay` longer than nginx's upstream
    /// `keepalive_timeout`.
    Graceful,
    /// SIGKILL of a gateway process.
    Crash,
}

/// Reads and writes through nginx over two instances while one goes away; returns the read
/// statuses and the drain-and-count report, both already checked for what holds either way.
async fn failover(stop: Stop) -> (BTreeMap<u16, usize>, DrainReport) {
    let origin = Origin::start("origin").await;
    let exchange = unique_name("nginx");
    let queue =
        TestQueue::bind_durable(&amqp_url(), &exchange, Some(ExchangeKind::Topic), "ev.*").await;
    let shipped = std::fs::read_to_string(DEPLOY_CONF).unwrap();
    // Drain longer than nginx keeps an idle upstream connection: by the time the instance
    // stops accepting, nginx holds no connection to it that it could reuse (each response while
    // draining says `Connection: close`), so nothing already sent can be cut off.
    let drain = upstream_keepalive_timeout(&shipped) + Duration::from_secs(1);
    let survivor = TestGateway::start(&config(
        &exchange,
        &origin,
        "127.0.0.1:0",
        "127.0.0.1:1",
        Duration::ZERO,
    ))
    .await;
    let (mut graceful, mut crashing) = (None, None);
    let leaving = match stop {
        Stop::Graceful => {
            let gw = TestGateway::start(&config(
                &exchange,
                &origin,
                "127.0.0.1:0",
                "127.0.0.1:1",
                drain,
            ))
            .await;
            let addr = addr_of(&gw.url);
            graceful = Some(gw);
            addr
        }
        Stop::Crash => {
            let gw = GatewayProcess::start(&config(
                &exchange,
                &origin,
                "{listen}",
                "{admin}",
                Duration::ZERO,
            ))
            .await;
            let addr = gw.addr;
            crashing = Some(gw);
            addr
        }
    };
    let nginx = Nginx::start(&[leaving, addr_of(&survivor.url)]);

    let base = nginx.url.clone();
    let writers = Writers::start(
        WRITERS,
        &format!("nginx-{stop:?}"),
        Duration::from_millis(5),
        move |c, _| format!("{base}/events/w{c}"),
    );
    let stop_reads = Arc::new(AtomicBool::new(false));
    let readers = start_readers(nginx.url.clone(), stop_reads.clone());

    tokio::time::sleep(STEADY).await;
    let t = Instant::now();
    if let Some(gw) = graceful.take() {
        gw.shutdown().await;
    }
    if let Some(gw) = crashing.as_mut() {
        gw.kill();
    }
    eprintln!("[nginx {stop:?}] instance gone after {:?}", t.elapsed());
    tokio::time::sleep(STEADY).await;

    let replies = writers.stop().await;
    stop_reads.store(true, Ordering::Relaxed);
    let mut reads = Vec::new();
    for r in readers {
        reads.extend(r.await.unwrap());
    }
    let drained = queue
        .consume_all(Duration::from_millis(500), Duration::from_secs(60))
        .await;
    let report = DrainReport::new(&replies, &drained);
    let mut read_counts = BTreeMap::new();
    for (s, _) in &reads {
        *read_counts.entry(*s).or_insert(0usize) += 1;
    }
    eprintln!("[nginx {stop:?}] reads {read_counts:?}\n[nginx {stop:?}] writes REPORT {report}");

    let failed_reads: Vec<_> = reads.iter().filter(|(s, _)| *s != 200).take(10).collect();
    assert!(
        failed_reads.is_empty(),
        "reads must never fail behind nginx: {read_counts:?}, e.g. {failed_reads:?}\n{}",
        nginx.error_log()
    );
    assert!(
        reads.len() > 100,
        "too few reads to mean anything: {}",
        reads.len()
    );
    report.assert_sound_behind_proxy();
    assert!(
        report.accepted > 100,
        "too few accepted writes to mean anything: {report}"
    );
    // Nothing replays a POST: no event may be queued twice.
    assert_eq!(report.duplicates, 0, "{report}");
    queue.delete().await;
    survivor.shutdown().await;
    (read_counts, report)
}

#[tokio::test]
async fn graceful_shutdown_behind_nginx_fails_no_request() {
    let (_, report) = failover(Stop::Graceful).await;
    // Draining past nginx's keep-alive: not one write failed, not even as 502.
    assert_eq!(
        report.accepted, report.sent,
        "every write must be accepted across a graceful shutdown: {report}"
    );
}

#[tokio::test]
async fn crash_behind_nginx_fails_no_read_and_loses_no_accepted_write() {
    let (_, report) = failover(Stop::Crash).await;
    // POSTs in flight on the killed instance come back 502 (nginx does not replay them);
    // their events may or may not be queued (counted in `recovered`).
    eprintln!(
        "[nginx Crash] {} writes caught by the crash (502), {} of them queued anyway",
        report.bad_gateway, report.recovered
    );
}

#[tokio::test]
async fn nginx_forwards_request_ids_into_the_event() {
    let origin = Origin::start("origin").await;
    let exchange = unique_name("nginx-ids");
    let queue = TestQueue::bind(&amqp_url(), &exchange, Some(ExchangeKind::Topic), "ev.*").await;
    let gw = TestGateway::start(&config(
        &exchange,
        &origin,
        "127.0.0.1:0",
        "127.0.0.1:1",
        Duration::ZERO,
    ))
    .await;
    let nginx = Nginx::start(&[addr_of(&gw.url)]);
    let client = client();

    // The client's own id, when sane, is kept end to end.
    let r = post_event(&client, &nginx.at("/events/a"), "client-id-1").await;
    assert_eq!(r.status, 202, "{r:?}");
    let d = queue
        .expect(Duration::from_secs(5), "event with the client's id")
        .await;
    assert_eq!(
        d.properties.correlation_id().as_ref().map(|s| s.as_str()),
        Some("client-id-1")
    );

    // No id, or one that is not a sane token: nginx's $request_id (32 hex digits), which the
    // client also gets back.
    for sent in [None, Some("not a token; <script>")] {
        let mut req = client
            .post(nginx.at("/events/b"))
            .header("content-type", "application/json")
            .body("{}");
        if let Some(id) = sent {
            req = req.header("x-request-id", id);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 202);
        let echoed = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
        assert!(
            echoed.len() == 32 && echoed.bytes().all(|b| b.is_ascii_hexdigit()),
            "sent {sent:?}, got x-request-id {echoed:?}"
        );
        let d = queue
            .expect(Duration::from_secs(5), "event with nginx's id")
            .await;
        assert_eq!(
            d.properties.correlation_id().as_ref().map(|s| s.as_str()),
            Some(echoed.as_str()),
            "sent {sent:?}"
        );
    }

    // Reads: the origin sees the forwarded headers nginx set.
    let resp = client
        .get(nginx.at("/read/x"))
        .header("x-request-id", "read-id-1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen = origin.seen();
    let last = seen.last().unwrap();
    assert_eq!(last.headers["x-request-id"], "read-id-1");
    assert!(
        last.headers
            .get("x-forwarded-for")
            .is_some_and(|v| v.to_str().unwrap().contains("127.0.0.1")),
        "{:?}",
        last.headers
    );
    gw.shutdown().await;
}
