//! RFC 9111 / RFC 9110 conformance of the read cache over real HTTP: a real gateway in front
//! of a scripted origin on port 0 that sets every header itself (`Date`, `Expires`, `Age`,
//! `Last-Modified`, `Cache-Control` extensions), and counts what reaches it.
//!
//! What it proves, one behaviour per test:
//! - freshness: `Expires` relative to `Date` in all three date formats, invalid or past
//!   `Expires` stale; `Age` and the apparent age (`Date` in the past) count against the
//!   lifetime; `cache = {}` stores only what the origin makes fresh; heuristic freshness from
//!   `Last-Modified` (10 %, capped);
//! - which statuses are stored (explicitly fresh 302/307/400/500/503; heuristically 404, not
//!   302), origin 206s never stored;
//! - `stale-while-revalidate` (stale answer at once, one background refresh),
//!   `stale-if-error` (5xx and unreachable origin; its window; `must-revalidate` disables it);
//! - qualified `private="…"`/`no-cache="…"` strip fields from stored responses (`Set-Cookie`
//!   too);
//! - revalidation with `If-Modified-Since` and header update from the 304;
//! - client conditionals (`If-None-Match`, `If-Modified-Since`) and ranges (`Range`,
//!   `If-Range`, 416) answered from a stored entry without the origin, strong ETags kept on
//!   identity 304s;
//! - `Vary: Accept-Language` normalisation;
//! - invalidation by an accepted write (its path, and the `Location` of a 201), with the real
//!   broker.
//!
//! Responses are made stale by the origin's `Age`/`Date`/`Expires` (or `max-age=0`), never by
//! waiting; the only waits are polls with deadlines for a background refresh.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use lapin::ExchangeKind;
use serde_json::json;
use support::gateway::{publish_route, read_route, topic_exchange, upstream};
use support::http::{Answer, asctime, get, imf_fixdate, now_plus, rfc850};
use support::origin::{Reply, Seen};
use support::poll::eventually;
use support::{Origin, TestGateway, TestQueue, amqp_url, base_config, unique_name};

const TTL_ROUTE: &str = "cache = { ttl = \"60s\" }";

/// A gateway in front of `origin` with one read route `/c/{*rest}` configured by `extra`.
async fn gateway(origin: &Origin, extra: &str) -> TestGateway {
    TestGateway::in_front_of(&origin.url, "", &read_route("c", "/c/{*rest}", "o", extra)).await
}

/// `GET` twice; the two answers.
async fn twice(url: &str) -> (Answer, Answer) {
    let first = get(url, &[]).await;
    let second = get(url, &[]).await;
    (first, second)
}

/// Checks, for each path of a table, that a second GET was or was not a HIT; all failures are
/// reported together.
async fn hit_table(gw: &TestGateway, origin: &Origin, rows: &[(&str, bool, &str)]) {
    let mut failures = Vec::new();
    for (path, hit, why) in rows {
        let (first, second) = twice(&gw.at(path)).await;
        let upstream = origin.hits(path);
        let ok = if *hit {
            second.x_cache() == "HIT" && upstream == 1
        } else {
            second.x_cache() != "HIT" && upstream == 2
        };
        if !ok || first.status != 200 {
            failures.push(format!(
                "{path} ({why}): expected {}, got {} then {}, {upstream} origin requests",
                if *hit { "HIT" } else { "the origin again" },
                first.summary(),
                second.summary()
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// 7. Expires.
// ---------------------------------------------------------------------------------------------

/// `Date` and `Expires` for each path, computed when the request arrives.
fn expires_origin_reply(s: &Seen) -> Reply {
    let (date, expires) = match s.path() {
        "/c/imf" => (imf_fixdate(now_plus(0)), imf_fixdate(now_plus(60))),
        "/c/rfc850" => (imf_fixdate(now_plus(0)), rfc850(now_plus(60))),
        "/c/asctime" => (imf_fixdate(now_plus(0)), asctime(now_plus(60))),
        // The origin's clock is an hour ahead: 60 s of lifetime, no apparent age.
        "/c/ahead" => (imf_fixdate(now_plus(3600)), imf_fixdate(now_plus(3660))),
        "/c/past" => (imf_fixdate(now_plus(0)), imf_fixdate(now_plus(-60))),
        "/c/zero" => (imf_fixdate(now_plus(0)), "0".to_owned()),
        // Date an hour ago, 60 s of lifetime: apparent age 3600 s > 60 s.
        "/c/old" => (imf_fixdate(now_plus(-3600)), imf_fixdate(now_plus(-3540))),
        // Expires before Date: stale although it lies in the gateway's future.
        "/c/before-date" => (imf_fixdate(now_plus(3600)), imf_fixdate(now_plus(3570))),
        _ => return Reply::status(500).body("origin: unexpected path"),
    };
    Reply::echo(s)
        .header("date", date)
        .header("expires", expires)
}

#[tokio::test]
async fn expires_after_date_is_fresh_in_every_date_format() {
    let origin = Origin::scripted("o", expires_origin_reply).await;
    // No ttl: only the origin's Expires can make these fresh.
    let gw = gateway(&origin, "cache = {}").await;
    hit_table(
        &gw,
        &origin,
        &[
            ("/c/imf", true, "IMF-fixdate, Date + 60 s"),
            ("/c/rfc850", true, "RFC 850 Expires"),
            ("/c/asctime", true, "asctime Expires"),
            ("/c/ahead", true, "lifetime is Expires - Date"),
        ],
    )
    .await;
}

#[tokio::test]
async fn past_invalid_or_pre_date_expires_is_stale_even_on_a_ttl_route() {
    let origin = Origin::scripted("o", expires_origin_reply).await;
    // The route ttl applies only when the origin gives no explicit freshness: Expires is one.
    let gw = gateway(&origin, TTL_ROUTE).await;
    hit_table(
        &gw,
        &origin,
        &[
            ("/c/past", false, "Expires in the past"),
            ("/c/zero", false, "Expires: 0 is invalid: already expired"),
            ("/c/before-date", false, "Expires - Date < 0"),
        ],
    )
    .await;
}

/// The brief says "Date 1 h in the past and Expires = that Date + 60 s → still fresh
/// (relative lifetime)". RFC 9111 §4.2.3 says otherwise, and so does the brief's own item 8
/// ("Date 100 s in the past + max-age=60 → stale (apparent age)"): the apparent age
/// (now − Date = 3600 s) exceeds the 60 s lifetime. This test follows the RFC; the relative
/// lifetime itself is shown by `/c/ahead` (fresh) and `/c/before-date` (stale) above.
#[tokio::test]
async fn expires_relative_to_an_hour_old_date_is_stale_by_apparent_age() {
    let origin = Origin::scripted("o", expires_origin_reply).await;
    let gw = gateway(&origin, TTL_ROUTE).await;
    hit_table(
        &gw,
        &origin,
        &[("/c/old", false, "Date an hour ago, Expires = Date + 60 s")],
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// 8. Age.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_origins_age_is_added_to_the_age_of_a_hit() {
    let origin = Origin::scripted("o", |s: &Seen| {
        Reply::echo(s)
            .header("cache-control", "max-age=60")
            .header("age", "30")
    })
    .await;
    let gw = gateway(&origin, TTL_ROUTE).await;
    let (_, hit) = twice(&gw.at("/c/aged")).await;
    assert_eq!(hit.x_cache(), "HIT");
    let age: u64 = hit.header("age").unwrap().parse().unwrap();
    assert!(
        (30..60).contains(&age),
        "Age {age}: at least the origin's 30"
    );
}

#[tokio::test]
async fn age_or_apparent_age_beyond_the_lifetime_is_stale_on_arrival() {
    let origin = Origin::scripted("o", |s: &Seen| {
        let reply = Reply::echo(s).header("cache-control", "max-age=60");
        match s.path() {
            "/c/age" => reply.header("age", "100"),
            _ => reply.header("date", imf_fixdate(now_plus(-100))),
        }
    })
    .await;
    let gw = gateway(&origin, TTL_ROUTE).await;
    hit_table(
        &gw,
        &origin,
        &[
            ("/c/age", false, "Age: 100 > max-age=60"),
            ("/c/date", false, "Date 100 s ago > max-age=60"),
        ],
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// 9. Routes without ttl; heuristic freshness.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn cache_without_ttl_stores_only_what_the_origin_makes_fresh() {
    let origin = Origin::scripted("o", |s: &Seen| match s.path() {
        "/c/fresh" => Reply::echo(s).header("cache-control", "max-age=60"),
        _ => Reply::echo(s),
    })
    .await;
    let gw = gateway(&origin, "cache = {}").await;
    hit_table(
        &gw,
        &origin,
        &[
            ("/c/silent", false, "no Cache-Control, no Expires"),
            ("/c/fresh", true, "max-age=60"),
        ],
    )
    .await;
}

#[tokio::test]
async fn heuristic_freshness_is_a_tenth_of_the_last_modified_age_capped() {
    let origin = Origin::scripted("o", |s: &Seen| {
        let reply = Reply::echo(s).header("last-modified", imf_fixdate(now_plus(-10 * 86_400)));
        if s.path().ends_with("/aged") {
            reply.header("age", "2")
        } else {
            reply
        }
    })
    .await;
    let routes = [
        read_route("h", "/h/{*rest}", "o", "cache = { heuristic = true }"),
        read_route(
            "hm",
            "/hm/{*rest}",
            "o",
            "cache = { heuristic = true, heuristic_max = \"1s\" }",
        ),
    ]
    .concat();
    let gw = TestGateway::in_front_of(&origin.url, "", &routes).await;
    hit_table(
        &gw,
        &origin,
        &[
            ("/h/x", true, "10 % of 10 days, capped at 24 h"),
            ("/h/aged", true, "Age: 2 is well within 24 h"),
            ("/hm/aged", false, "capped at 1 s, Age: 2"),
        ],
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// 10. Statuses.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn explicitly_fresh_redirects_and_errors_are_stored_with_their_status() {
    let origin = Origin::scripted("o", |s: &Seen| {
        let status: u16 = s.path().trim_start_matches("/c/s").parse().unwrap();
        let reply = Reply::status(status)
            .json(&json!({"status": status}))
            .header("cache-control", "max-age=60");
        if (300..400).contains(&status) {
            reply.header("location", "/elsewhere")
        } else {
            reply
        }
    })
    .await;
    let gw = gateway(&origin, TTL_ROUTE).await;
    let mut failures = Vec::new();
    for status in [302u16, 307, 400, 500, 503] {
        let path = format!("/c/s{status}");
        let (first, second) = twice(&gw.at(&path)).await;
        let ok = first.status == status
            && second.status == status
            && second.x_cache() == "HIT"
            && origin.hits(&path) == 1;
        if !ok {
            failures.push(format!(
                "{status} max-age=60: got {} then {}, {} origin requests",
                first.summary(),
                second.summary(),
                origin.hits(&path)
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[tokio::test]
async fn without_explicit_freshness_404_is_stored_and_302_is_not() {
    let origin = Origin::scripted("o", |s: &Seen| match s.path() {
        "/c/moved" => Reply::status(302).header("location", "/elsewhere"),
        _ => Reply::status(404).json(&json!({"missing": true})),
    })
    .await;
    let gw = gateway(&origin, TTL_ROUTE).await;
    let (_, moved) = twice(&gw.at("/c/moved")).await;
    assert_eq!(moved.status, 302);
    assert_ne!(moved.x_cache(), "HIT", "302 is not heuristically cacheable");
    assert_eq!(origin.hits("/c/moved"), 2);
    let (_, missing) = twice(&gw.at("/c/missing")).await;
    assert_eq!(
        (missing.status, missing.x_cache()),
        (404, "HIT"),
        "404 is heuristically cacheable: the route ttl applies"
    );
    assert_eq!(origin.hits("/c/missing"), 1);
}

const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz";

#[tokio::test]
async fn an_origin_206_is_passed_through_and_never_stored() {
    let origin = Origin::scripted("o", |s: &Seen| {
        let reply = if s.text("range") == "bytes=0-3" {
            Reply::status(206)
                .header("content-range", "bytes 0-3/26")
                .body(&ALPHABET[..4])
        } else {
            Reply::ok().body(ALPHABET)
        };
        reply
            .header("content-type", "text/plain")
            .header("cache-control", "max-age=60")
    })
    .await;
    let gw = gateway(&origin, TTL_ROUTE).await;
    let url = gw.at("/c/letters");
    let part = get(&url, &[("range", "bytes=0-3")]).await;
    assert_eq!(part.status, 206, "the origin's 206 is passed through");
    assert_eq!(part.header("content-range"), Some("bytes 0-3/26"));
    assert_eq!(part.body, b"abcd");
    assert_eq!(origin.last().text("range"), "bytes=0-3");
    let full = get(&url, &[]).await;
    assert_eq!(
        (full.status, full.x_cache()),
        (200, "MISS"),
        "the 206 was not stored"
    );
    assert_eq!(full.body, ALPHABET);
    assert_eq!(origin.count(), 2);
}

// ---------------------------------------------------------------------------------------------
// 11. stale-while-revalidate.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn stale_while_revalidate_answers_at_once_and_refreshes_once_in_the_background() {
    const REFRESH_DELAY: Duration = Duration::from_millis(1000);
    let version = Arc::new(AtomicUsize::new(1));
    let v = version.clone();
    let origin = Origin::scripted("o", move |_: &Seen| match v.load(Ordering::SeqCst) {
        1 => Reply::ok()
            .json(&json!({"v": 1}))
            .header("cache-control", "max-age=60, stale-while-revalidate=30")
            .header("age", "60"),
        n => Reply::ok()
            .json(&json!({ "v": n }))
            .header("cache-control", "max-age=60")
            .delay(REFRESH_DELAY),
    })
    .await;
    let gw = gateway(&origin, TTL_ROUTE).await;
    let url = gw.at("/c/news");
    let first = get(&url, &[]).await;
    assert_eq!(
        (first.x_cache(), first.json()["v"].as_u64()),
        ("MISS", Some(1))
    );
    version.store(2, Ordering::SeqCst);

    // Several stale requests together: all answered from the stale entry, none waits for the
    // (slow) refresh.
    let together: Vec<_> = (0..5)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { get(&url, &[]).await })
        })
        .collect();
    for t in together {
        let a = t.await.unwrap();
        assert_eq!(
            (a.status, a.x_cache(), a.json()["v"].as_u64()),
            (200, "STALE", Some(1)),
            "stale body at once"
        );
        assert!(
            a.elapsed < REFRESH_DELAY * 7 / 10,
            "answered after {:?}: it waited for the refresh",
            a.elapsed
        );
    }
    eventually(
        Duration::from_secs(5),
        "the background refresh",
        async || origin.count() >= 2,
    )
    .await;
    eventually(
        Duration::from_secs(5),
        "a HIT with the refreshed body",
        async || {
            let a = get(&url, &[]).await;
            a.x_cache() == "HIT" && a.json()["v"].as_u64() == Some(2)
        },
    )
    .await;
    assert_eq!(
        origin.count(),
        2,
        "exactly one background request for all the stale answers"
    );
}

// ---------------------------------------------------------------------------------------------
// 12. stale-if-error.
// ---------------------------------------------------------------------------------------------

/// An origin answering `{"v": 1}` with `cc` and `Age: age` while `fail` is 0, and that status
/// (empty body) otherwise.
async fn failing_origin(fail: Arc<AtomicU16>, cc: &'static str, age: &'static str) -> Origin {
    Origin::scripted("o", move |_: &Seen| match fail.load(Ordering::SeqCst) {
        0 => Reply::ok()
            .json(&json!({"v": 1}))
            .header("cache-control", cc)
            .header("age", age),
        status => Reply::status(status).body("origin error"),
    })
    .await
}

#[tokio::test]
async fn stale_if_error_serves_the_stale_body_on_5xx_and_when_unreachable() {
    let fail = Arc::new(AtomicU16::new(0));
    let origin = failing_origin(fail.clone(), "max-age=60, stale-if-error=600", "60").await;
    let gw = gateway(&origin, TTL_ROUTE).await;
    let url = gw.at("/c/page");
    assert_eq!(get(&url, &[]).await.x_cache(), "MISS");
    let mut failures = Vec::new();
    for status in [500u16, 502, 503, 504] {
        fail.store(status, Ordering::SeqCst);
        let a = get(&url, &[]).await;
        if (a.status, a.x_cache(), a.text().as_str()) != (200, "STALE", r#"{"v":1}"#) {
            failures.push(format!("origin {status}: got {} {}", a.summary(), a.text()));
        }
    }
    origin.stop_and_wait().await;
    let a = get(&url, &[]).await;
    if (a.status, a.x_cache()) != (200, "STALE") {
        failures.push(format!(
            "origin unreachable: got {} {}",
            a.summary(),
            a.text()
        ));
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[tokio::test]
async fn stale_if_error_ends_with_its_window_and_must_revalidate_disables_it() {
    let fail = Arc::new(AtomicU16::new(0));
    let late_fail = fail.clone();
    // Two entries: `/c/late` 940 s past its lifetime (window 600 s), `/c/strict` with
    // must-revalidate.
    let origin = Origin::scripted("o", move |s: &Seen| {
        match late_fail.load(Ordering::SeqCst) {
            0 if s.path() == "/c/late" => Reply::ok()
                .json(&json!({"v": 1}))
                .header("cache-control", "max-age=60, stale-if-error=600")
                .header("age", "1000"),
            0 => Reply::ok()
                .json(&json!({"v": 1}))
                .header(
                    "cache-control",
                    "max-age=60, stale-if-error=600, must-revalidate",
                )
                .header("age", "60"),
            status => Reply::status(status).body("origin error"),
        }
    })
    .await;
    let gw = gateway(&origin, TTL_ROUTE).await;
    for path in ["/c/late", "/c/strict"] {
        assert_eq!(get(&gw.at(path), &[]).await.status, 200);
    }
    fail.store(500, Ordering::SeqCst);
    for path in ["/c/late", "/c/strict"] {
        let a = get(&gw.at(path), &[]).await;
        assert_eq!(
            (a.status, a.text().as_str()),
            (500, "origin error"),
            "{path}: the origin's error, not the stale body ({})",
            a.summary()
        );
    }
    origin.stop_and_wait().await;
    let late = get(&gw.at("/c/late"), &[]).await;
    assert_eq!(late.status, 502, "unreachable, outside the window");
    let strict = get(&gw.at("/c/strict"), &[]).await;
    assert!(
        matches!(strict.status, 502 | 504),
        "unreachable with must-revalidate: an error, got {}",
        strict.summary()
    );
}

// ---------------------------------------------------------------------------------------------
// 13. Qualified private / no-cache.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn qualified_private_and_no_cache_fields_are_not_served_from_the_cache() {
    let origin = Origin::scripted("o", |s: &Seen| {
        let cc = match s.path() {
            "/c/private" => "max-age=60, private=\"X-Secret\"",
            _ => "max-age=60, no-cache=\"X-Secret\"",
        };
        Reply::echo(s)
            .header("cache-control", cc)
            .header("x-secret", "s3cr3t")
    })
    .await;
    let gw = gateway(&origin, TTL_ROUTE).await;
    for path in ["/c/private", "/c/no-cache"] {
        let (miss, hit) = twice(&gw.at(path)).await;
        assert_eq!(miss.header("x-secret"), Some("s3cr3t"), "{path}: the MISS");
        assert_eq!(hit.x_cache(), "HIT", "{path}: stored without the field");
        assert_eq!(hit.header("x-secret"), None, "{path}: the HIT");
        assert_eq!(hit.body, miss.body);
    }
}

#[tokio::test]
async fn set_cookie_is_stored_only_when_no_cache_names_it_and_then_without_it() {
    let origin = Origin::scripted("o", |s: &Seen| {
        let cc = match s.path() {
            "/c/named" => "public, max-age=60, no-cache=\"Set-Cookie\"",
            _ => "public, max-age=60",
        };
        Reply::echo(s)
            .header("cache-control", cc)
            .header("set-cookie", "session=abc")
    })
    .await;
    let gw = gateway(&origin, TTL_ROUTE).await;
    let (miss, hit) = twice(&gw.at("/c/named")).await;
    assert_eq!(miss.header("set-cookie"), Some("session=abc"));
    assert_eq!(
        hit.x_cache(),
        "HIT",
        "no-cache=\"Set-Cookie\": stored without the field"
    );
    assert_eq!(
        hit.header("set-cookie"),
        None,
        "the HIT must not set the cookie"
    );
    let (_, again) = twice(&gw.at("/c/plain")).await;
    assert_ne!(
        again.x_cache(),
        "HIT",
        "Set-Cookie without no-cache=\"Set-Cookie\""
    );
    assert_eq!(origin.hits("/c/plain"), 2);
}

// ---------------------------------------------------------------------------------------------
// 14. Revalidation with If-Modified-Since.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn last_modified_alone_revalidates_with_if_modified_since_and_the_304_updates_headers() {
    let last_modified = imf_fixdate(now_plus(-86_400));
    let lm = last_modified.clone();
    let origin = Origin::scripted("o", move |s: &Seen| {
        if s.headers.contains_key("if-modified-since") {
            Reply::status(304)
                .header("cache-control", "max-age=60")
                .header("x-version", "2")
        } else {
            Reply::ok()
                .body("v1")
                .header("content-type", "text/plain")
                .header("cache-control", "max-age=0")
                .header("last-modified", &lm)
                .header("x-version", "1")
        }
    })
    .await;
    // No generated ETag: Last-Modified is the only validator stored.
    let gw = gateway(&origin, &format!("{TTL_ROUTE}\netag = false")).await;
    let url = gw.at("/c/doc");
    let miss = get(&url, &[]).await;
    assert_eq!(
        (miss.x_cache(), miss.header("x-version")),
        ("MISS", Some("1"))
    );
    let revalidated = get(&url, &[]).await;
    assert_eq!(origin.count(), 2);
    assert_eq!(
        origin.last().raw("if-modified-since"),
        Some(last_modified.as_bytes()),
        "the stored Last-Modified, as stored"
    );
    assert_eq!(revalidated.status, 200);
    assert_eq!(revalidated.x_cache(), "REVALIDATED");
    assert_eq!(
        revalidated.header("x-version"),
        Some("2"),
        "updated by the 304"
    );
    assert_eq!(revalidated.body, b"v1");
    let hit = get(&url, &[]).await;
    assert_eq!(
        (hit.x_cache(), hit.header("x-version")),
        ("HIT", Some("2")),
        "fresh for 60 s after the 304, with its headers"
    );
    assert_eq!(origin.count(), 2);
}

// ---------------------------------------------------------------------------------------------
// 15. Client conditionals from a fresh entry.
// ---------------------------------------------------------------------------------------------

/// A client conditional request: what it is, its headers, the expected status.
type ConditionalCase = (&'static str, Vec<(&'static str, String)>, u16);

#[tokio::test]
async fn client_conditionals_are_answered_from_a_fresh_entry() {
    let modified: SystemTime = now_plus(-86_400);
    let origin = Origin::scripted("o", move |s: &Seen| {
        Reply::echo(s)
            .header("cache-control", "max-age=60")
            .header("etag", "\"e1\"")
            .header("last-modified", imf_fixdate(modified))
    })
    .await;
    let gw = gateway(&origin, TTL_ROUTE).await;
    let url = gw.at("/c/doc");
    assert_eq!(get(&url, &[]).await.x_cache(), "MISS");
    let at = |secs: u64| imf_fixdate(modified + Duration::from_secs(secs));
    let earlier = imf_fixdate(modified - Duration::from_secs(3600));
    let rows: Vec<ConditionalCase> = vec![
        (
            "matching If-None-Match",
            vec![("if-none-match", "\"e1\"".into())],
            304,
        ),
        (
            "If-Modified-Since = Last-Modified",
            vec![("if-modified-since", at(0))],
            304,
        ),
        (
            "If-Modified-Since after Last-Modified",
            vec![("if-modified-since", at(3600))],
            304,
        ),
        (
            "If-Modified-Since before Last-Modified",
            vec![("if-modified-since", earlier)],
            200,
        ),
        (
            "non-matching If-None-Match wins over a matching If-Modified-Since",
            vec![
                ("if-none-match", "\"other\"".into()),
                ("if-modified-since", at(0)),
            ],
            200,
        ),
    ];
    let mut failures = Vec::new();
    for (what, headers, expected) in &rows {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let a = get(&url, &headers).await;
        let mut ok = a.status == *expected;
        if *expected == 304 {
            ok &= a.body.is_empty()
                && a.header("etag") == Some("\"e1\"")
                && a.header("cache-control") == Some("max-age=60");
        } else {
            ok &= !a.body.is_empty();
        }
        if !ok {
            failures.push(format!(
                "{what}: expected {expected}, got {} (etag {:?}, cache-control {:?})",
                a.summary(),
                a.header("etag"),
                a.header("cache-control")
            ));
        }
    }
    assert_eq!(origin.count(), 1, "all answered by the gateway");
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// 16. Strong ETags on identity 304s.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_304_for_an_identity_body_keeps_the_strong_etag_and_an_encoded_one_the_weak() {
    let large = json!({"items": vec!["the same compressible words again and again"; 100]});
    let origin = Origin::scripted("o", move |s: &Seen| {
        let (tag, body) = if s.path().ends_with("/small") {
            ("\"s1\"", json!({"small": true}))
        } else {
            ("\"l1\"", large.clone())
        };
        // Always the full body: the gateway evaluates the client's If-None-Match itself.
        Reply::ok()
            .json(&body)
            .header("cache-control", "max-age=60")
            .header("etag", tag)
    })
    .await;
    let routes = [
        read_route("c", "/c/{*rest}", "o", TTL_ROUTE),
        read_route("u", "/u/{*rest}", "o", ""),
    ]
    .concat();
    let gw = TestGateway::in_front_of(&origin.url, "", &routes).await;
    let mut failures = Vec::new();
    for prefix in ["/c", "/u"] {
        for (name, sent_tag, encoding) in [
            ("small", "\"s1\"", None),
            ("large", "W/\"l1\"", Some("gzip")),
        ] {
            let url = gw.at(&format!("{prefix}/{name}"));
            let full = get(&url, &[("accept-encoding", "gzip")]).await;
            let conditional = get(
                &url,
                &[("accept-encoding", "gzip"), ("if-none-match", sent_tag)],
            )
            .await;
            let got = (
                full.status,
                full.header("content-encoding"),
                full.header("etag"),
                conditional.status,
                conditional.header("etag"),
            );
            let want = (200, encoding, Some(sent_tag), 304, Some(sent_tag));
            if got != want {
                failures.push(format!("{prefix}/{name}: expected {want:?}, got {got:?}"));
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// 17. Ranges.
// ---------------------------------------------------------------------------------------------

/// A range request: what it is, its headers, the expected status, `Content-Range` and body.
type RangeCase = (
    &'static str,
    Vec<(&'static str, &'static str)>,
    u16,
    Option<&'static str>,
    &'static [u8],
);

#[tokio::test]
async fn ranges_are_served_from_a_complete_stored_entry() {
    let origin = Origin::scripted("o", |s: &Seen| {
        let reply = match s.text("range").as_str() {
            "" => Reply::ok().body(ALPHABET),
            "bytes=0-9" => Reply::status(206)
                .header("content-range", "bytes 0-9/26")
                .body(&ALPHABET[..10]),
            other => Reply::status(500).body(format!("origin: unexpected range {other}")),
        };
        reply
            .header("content-type", "text/plain")
            .header("cache-control", "max-age=60")
            .header("etag", "\"r1\"")
    })
    .await;
    let gw = gateway(&origin, TTL_ROUTE).await;
    let url = gw.at("/c/letters");
    let full = get(&url, &[]).await;
    assert_eq!((full.status, full.x_cache()), (200, "MISS"));
    assert_eq!(full.body, ALPHABET);

    let rows: Vec<RangeCase> = vec![
        (
            "first ten",
            vec![("range", "bytes=0-9")],
            206,
            Some("bytes 0-9/26"),
            &ALPHABET[..10],
        ),
        (
            "suffix",
            vec![("range", "bytes=-5")],
            206,
            Some("bytes 21-25/26"),
            &ALPHABET[21..],
        ),
        (
            "unsatisfiable",
            vec![("range", "bytes=26-")],
            416,
            Some("bytes */26"),
            b"",
        ),
        (
            "If-Range matching",
            vec![("range", "bytes=0-9"), ("if-range", "\"r1\"")],
            206,
            Some("bytes 0-9/26"),
            &ALPHABET[..10],
        ),
        (
            "If-Range not matching",
            vec![("range", "bytes=0-9"), ("if-range", "\"other\"")],
            200,
            None,
            ALPHABET,
        ),
    ];
    let mut failures = Vec::new();
    for (what, headers, status, range, body) in &rows {
        let a = get(&url, headers).await;
        let got = (a.status, a.header("content-range"), a.body.as_slice());
        if got != (*status, *range, *body) {
            failures.push(format!(
                "{what}: expected {status} {range:?} {:?}, got {} {:?} {:?}",
                String::from_utf8_lossy(body),
                a.summary(),
                a.header("content-range"),
                a.text()
            ));
        }
    }
    if origin.count() != 1 {
        failures.push(format!(
            "the origin was contacted {} times, not once",
            origin.count()
        ));
    }

    // Nothing stored: the Range goes to the origin.
    let other = get(&gw.at("/c/other"), &[("range", "bytes=0-9")]).await;
    if origin.last().text("range") != "bytes=0-9" || other.status != 206 {
        failures.push(format!(
            "no entry: the origin must see the Range (saw {:?}), the client its 206 (got {})",
            origin.last().text("range"),
            other.summary()
        ));
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// 18. Vary: Accept-Language normalisation.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn accept_language_is_normalised_before_matching() {
    let origin = Origin::scripted("o", |s: &Seen| {
        Reply::echo(s)
            .header("cache-control", "public, max-age=60")
            .header("vary", "Accept-Language")
    })
    .await;
    let gw = gateway(&origin, TTL_ROUTE).await;
    let url = gw.at("/c/greeting");
    let first = get(&url, &[("accept-language", "en-US, fr;q=0.5")]).await;
    assert_eq!(first.x_cache(), "MISS");
    let same = get(&url, &[("accept-language", "fr;q=0.5,EN-us")]).await;
    assert_eq!(
        same.x_cache(),
        "HIT",
        "the same preferences in another order and case"
    );
    assert_eq!(same.body, first.body);
    let de = get(&url, &[("accept-language", "de")]).await;
    assert_eq!(de.x_cache(), "MISS");
    assert_eq!(origin.count(), 2);
}

// ---------------------------------------------------------------------------------------------
// 19. Invalidation by writes (real broker).
// ---------------------------------------------------------------------------------------------

/// A gateway with the real broker: cached `GET /users/{id}`, `PUT /users/{id}` (202) and
/// `POST /users/{id}/actions` (201, `Location: /users/{id}`); a queue bound to every event.
async fn write_gateway(origin: &Origin) -> (TestGateway, TestQueue) {
    let url = amqp_url();
    let exchange = unique_name("cache");
    let queue = TestQueue::bind(&url, &exchange, Some(ExchangeKind::Topic), "#").await;
    let config = [
        base_config(&url),
        topic_exchange(&exchange),
        upstream("o", &origin.url),
        read_route("get-user", "/users/{id}", "o", TTL_ROUTE),
        publish_route(
            "put-user",
            "/users/{id}",
            &exchange,
            "user.{id}.updated",
            "methods = [\"PUT\"]",
        ),
        publish_route(
            "user-action",
            "/users/{id}/actions",
            &exchange,
            "user.{id}.action",
            "publish.status = 201\npublish.location = \"/users/{id}\"",
        ),
    ]
    .concat();
    (TestGateway::start(&config).await, queue)
}

async fn write(gw: &TestGateway, method: reqwest::Method, path: &str) -> Answer {
    support::http::write(method, &gw.at(path), support::http::JSON, "{}").await
}

#[tokio::test]
async fn an_accepted_write_invalidates_the_cached_read_of_its_path() {
    let origin = Origin::scripted("o", Reply::echo).await;
    let (gw, queue) = write_gateway(&origin).await;
    let (_, hit) = twice(&gw.at("/users/1")).await;
    assert_eq!(hit.x_cache(), "HIT");
    let w = write(&gw, reqwest::Method::PUT, "/users/1").await;
    assert_eq!(w.status(), 202);
    queue.expect(Duration::from_secs(5), "the PUT").await;
    let after = get(&gw.at("/users/1"), &[]).await;
    assert_eq!(after.x_cache(), "MISS", "the write invalidated /users/1");
    assert_eq!(origin.hits("/users/1"), 2);
}

#[tokio::test]
async fn a_201_invalidates_the_cached_read_of_its_location() {
    let origin = Origin::scripted("o", Reply::echo).await;
    let (gw, queue) = write_gateway(&origin).await;
    let (_, hit) = twice(&gw.at("/users/7")).await;
    assert_eq!(hit.x_cache(), "HIT");
    let (_, other) = twice(&gw.at("/users/8")).await;
    assert_eq!(other.x_cache(), "HIT");
    let w = write(&gw, reqwest::Method::POST, "/users/7/actions").await;
    assert_eq!(w.status(), 201);
    assert_eq!(w.headers()["location"], "/users/7");
    queue.expect(Duration::from_secs(5), "the POST").await;
    let after = get(&gw.at("/users/7"), &[]).await;
    assert_eq!(
        after.x_cache(),
        "MISS",
        "the 201's Location (/users/7) was invalidated"
    );
    assert_eq!(origin.hits("/users/7"), 2);
    let kept = get(&gw.at("/users/8"), &[]).await;
    assert_eq!(kept.x_cache(), "HIT", "other paths keep their entries");
}
