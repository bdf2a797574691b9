//! Hot reload over real HTTP: a gateway started from a config file (no broker: the routes here
//! are proxied), the file rewritten, then `POST /reload` on the admin listener or SIGHUP.
//!
//! What it proves:
//! 1. A valid file is served from the next request on (routes added and removed); an invalid
//!    one, or one that changes what only a restart applies, is refused with the reason and
//!    the running config keeps serving; `gateway_config_reload_total{result}` counts both.
//! 2. A request in flight during a reload finishes on the config it started with.
//! 3. Cache entries of unchanged routes survive a reload; a changed route starts empty.
//! 4. SIGHUP reloads too.
//! 5. Under load, 20 reloads fail no request.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use support::gateway::{base_config_with, no_broker, read_route, upstream};
use support::http::get;
use support::origin::{Reply, Seen};
use support::poll::eventually;
use support::{Origin, TestGateway};

/// A config file of its own for one test, removed on drop.
struct ConfigFile {
    path: PathBuf,
    broker: String,
}

impl ConfigFile {
    fn new(name: &str) -> ConfigFile {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let path = dir.join(format!("reload-{name}-{}.toml", std::process::id()));
        ConfigFile {
            path,
            broker: no_broker(),
        }
    }

    /// Writes `[server]` (with `server_extra`), `[amqp]`, upstream `o` on `origin` and
    /// `sections`.
    fn write(&self, server_extra: &str, origin: &str, sections: &str) -> &Path {
        let text = format!(
            "{}{}{sections}",
            base_config_with(&self.broker, server_extra),
            upstream("o", origin)
        );
        std::fs::write(&self.path, text).unwrap();
        &self.path
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn reload(gw: &TestGateway) -> (u16, serde_json::Value) {
    let r = support::http::client()
        .post(format!("{}/reload", gw.admin_url))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

async fn metric(gw: &TestGateway, line: &str) -> bool {
    let text = reqwest::get(format!("{}/metrics", gw.admin_url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines().any(|l| l == line)
}

fn echo_origin_delaying(path: &'static str, delay: Duration) -> impl Fn(&Seen) -> Reply {
    move |seen: &Seen| {
        let reply = Reply::ok().body(format!("served {}", seen.uri));
        if seen.path().ends_with(path) {
            reply.delay(delay)
        } else {
            reply
        }
    }
}

/// A gateway started from its own config file with read route `a` on `/a/{*rest}` to `origin`.
async fn serving_route_a(name: &str, origin: &Origin) -> (ConfigFile, TestGateway) {
    let file = ConfigFile::new(name);
    let gw = TestGateway::from_file(file.write(
        "",
        &origin.url,
        &read_route("a", "/a/{*rest}", "o", ""),
    ))
    .await;
    (file, gw)
}

#[tokio::test]
async fn a_valid_file_is_swapped_in_and_a_bad_one_refused() {
    let origin = Origin::scripted("o", echo_origin_delaying("/never", Duration::ZERO)).await;
    let (file, gw) = serving_route_a("swap", &origin).await;
    assert_eq!(get(&gw.at("/a/x"), &[]).await.status, 200);
    assert_eq!(get(&gw.at("/b/x"), &[]).await.status, 404);

    file.write("", &origin.url, &read_route("b", "/b/{*rest}", "o", ""));
    let (status, body) = reload(&gw).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["routes"], 1);
    assert_eq!(get(&gw.at("/b/x"), &[]).await.status, 200);
    assert_eq!(
        get(&gw.at("/a/x"), &[]).await.status,
        404,
        "a removed route is gone"
    );

    // Invalid: refused with the key, nothing changes.
    file.write(
        "",
        &origin.url,
        &format!("{}\nsurprise = 1\n", read_route("c", "/c/{*rest}", "o", "")),
    );
    let (status, body) = reload(&gw).await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("surprise"),
        "{body}"
    );
    assert_eq!(
        get(&gw.at("/b/x"), &[]).await.status,
        200,
        "the running config keeps serving"
    );
    assert_eq!(get(&gw.at("/c/x"), &[]).await.status, 404);

    // What only a restart applies: refused and named.
    file.write(
        "max_headers = 50",
        &origin.url,
        &read_route("c", "/c/{*rest}", "o", ""),
    );
    let (status, body) = reload(&gw).await;
    assert_eq!(status, 422, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("server.max_headers") && error.contains("restart"),
        "{error}"
    );
    assert_eq!(
        get(&gw.at("/c/x"), &[]).await.status,
        404,
        "nothing of a refused file is applied"
    );

    assert!(metric(&gw, "gateway_config_reload_total{result=\"ok\"} 1").await);
    assert!(metric(&gw, "gateway_config_reload_total{result=\"error\"} 2").await);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_request_in_flight_finishes_on_its_config() {
    let origin = Origin::scripted(
        "o",
        echo_origin_delaying("/slow", Duration::from_millis(600)),
    )
    .await;
    let (file, gw) = serving_route_a("inflight", &origin).await;
    let slow_url = gw.at("/a/slow");
    let slow = tokio::spawn(async move { get(&slow_url, &[]).await });
    // The request is at the origin (recorded before its delay) before the reload.
    eventually(
        Duration::from_secs(5),
        "the slow request reached the origin",
        async || origin.hits("/a/slow") == 1,
    )
    .await;
    file.write("", &origin.url, &read_route("b", "/b/{*rest}", "o", ""));
    assert_eq!(reload(&gw).await.0, 200);
    assert_eq!(
        get(&gw.at("/a/x"), &[]).await.status,
        404,
        "new requests see the new routes"
    );
    let answer = slow.await.unwrap();
    assert_eq!(
        answer.status, 200,
        "the request that started on route a finishes on it"
    );
    assert_eq!(answer.text(), "served /a/slow");
    gw.shutdown().await;
}

#[tokio::test]
async fn cache_entries_survive_for_unchanged_routes_only() {
    let origin = Origin::scripted("o", echo_origin_delaying("/never", Duration::ZERO)).await;
    let file = ConfigFile::new("cache");
    let routes = |d_ttl: &str| {
        format!(
            "{}{}",
            read_route("c", "/c/{*rest}", "o", "cache = { ttl = \"60s\" }"),
            read_route(
                "d",
                "/d/{*rest}",
                "o",
                &format!("cache = {{ ttl = \"{d_ttl}\" }}")
            )
        )
    };
    let gw = TestGateway::from_file(file.write("", &origin.url, &routes("60s"))).await;
    for path in ["/c/x", "/d/x"] {
        assert_eq!(get(&gw.at(path), &[]).await.x_cache(), "MISS");
        assert_eq!(get(&gw.at(path), &[]).await.x_cache(), "HIT");
    }
    file.write("", &origin.url, &routes("30s"));
    assert_eq!(reload(&gw).await.0, 200);
    assert_eq!(
        get(&gw.at("/c/x"), &[]).await.x_cache(),
        "HIT",
        "route c did not change"
    );
    assert_eq!(
        get(&gw.at("/d/x"), &[]).await.x_cache(),
        "MISS",
        "route d changed: what it stored before must not be served"
    );
    gw.shutdown().await;
}

#[cfg(unix)]
#[tokio::test]
async fn sighup_reloads_the_file() {
    let origin = Origin::scripted("o", echo_origin_delaying("/never", Duration::ZERO)).await;
    let (file, gw) = serving_route_a("hup", &origin).await;
    // Serving means `run` installed its SIGHUP handler (before it started listening).
    assert_eq!(get(&gw.at("/a/x"), &[]).await.status, 200);
    file.write("", &origin.url, &read_route("b", "/b/{*rest}", "o", ""));
    let status = std::process::Command::new("kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    eventually(
        Duration::from_secs(10),
        "route b served after SIGHUP",
        async || get(&gw.at("/b/x"), &[]).await.status == 200,
    )
    .await;
    gw.shutdown().await;
}

#[tokio::test]
async fn twenty_reloads_under_load_fail_no_request() {
    let origin = Origin::scripted("o", echo_origin_delaying("/never", Duration::ZERO)).await;
    let file = ConfigFile::new("load");
    let version = |n: usize| {
        // Route a in every version; route v{n} and a changing ttl make each file different.
        format!(
            "{}{}",
            read_route(
                "a",
                "/a/{*rest}",
                "o",
                &format!("cache = {{ ttl = \"{}s\" }}", 10 + n % 2)
            ),
            read_route(&format!("v{n}"), &format!("/v{n}/{{*rest}}"), "o", "")
        )
    };
    let gw = Arc::new(TestGateway::from_file(file.write("", &origin.url, &version(0))).await);
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut workers = Vec::new();
    for w in 0..6 {
        let (gw, stop, ok, failed) = (gw.clone(), stop.clone(), ok.clone(), failed.clone());
        workers.push(tokio::spawn(async move {
            let client = support::http::client();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                // Some cached, most not: both paths cross the swaps.
                let url = gw.at(&format!("/a/w{w}-{}", i % 50));
                let served = match client.get(&url).send().await {
                    Ok(r) => r.status() == 200 && r.bytes().await.is_ok(),
                    Err(_) => false,
                };
                let counter = if served { &ok } else { &failed };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for n in 1..=20 {
        file.write("", &origin.url, &version(n));
        let (status, body) = reload(&gw).await;
        assert_eq!(status, 200, "reload {n}: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed across 20 reloads",
        ok + failed
    );
    assert!(ok > 100, "the load ran ({ok} requests)");
    assert_eq!(
        get(&gw.at("/v20/x"), &[]).await.status,
        200,
        "the last file is in force"
    );
    Arc::into_inner(gw).unwrap().shutdown().await;
}
