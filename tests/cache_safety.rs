//! Cache safety over real HTTP: a real gateway in front of a scripted origin on port 0 (no
//! broker: reads need none), each property shown as a pair of requests, "user A then user B"
//! or "evil then good", where a wrong cache would hand the second one the first one's body.
//!
//! What it proves:
//! 1. The cache keys and matches `Vary` on the headers the gateway sent upstream (the verified
//!    identity, the forwarded host), not on the client's copies; client headers that are
//!    passed through key as sent.
//! 2. For every header the gateway sets or forwards, without `Vary` only the target URI's
//!    parts (forwarded proto and host) key the entry; with `Vary: <header>` a change misses and
//!    the same value hits. A `public` response stays shared among credentialed requests.
//! 3. `Host`: each host is its own entry; with `server.public_host` other hosts (also a trusted
//!    proxy's `X-Forwarded-Host`) get 421 before anything goes upstream, and the upstream sees
//!    the canonical host.
//! 4. Credentials (RFC 9111 §3.5: `Authorization`, `Cookie`, identity headers): a non-`public`
//!    response to one is never reused for another requester, not through the route's ttl,
//!    not through a 304, and an anonymous entry never answers a credentialed request;
//!    responses to cookie requests are not compressed under `compress = "auto"`.
//! 5. Private entries are keyed by the whole identity sent upstream (claims too).
//! 6. `Vary` values are compared byte for byte (obs-text included).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use reqwest::Method;
use serde_json::json;
use support::gateway::read_route;
use support::http::{Answer, get, send};
use support::origin::{Reply, Seen};
use support::tokens::{bearer, claims, hs};
use support::{Origin, TestGateway};

/// A read route on `/NAME/{*rest}` with a 60 s route ttl and `extra` lines.
fn cached_route(name: &str, extra: &str) -> String {
    read_route(
        name,
        &format!("/{name}/{{*rest}}"),
        "o",
        &format!("cache = {{ ttl = \"60s\" }}\n{extra}"),
    )
}

/// A gateway with `[auth]` in front of `origin`.
async fn gateway(origin: &Origin, server_extra: &str, routes: &str) -> TestGateway {
    TestGateway::in_front_of_with_auth(&origin.url, server_extra, routes).await
}

/// A token for `sub` (tenant `t-1`).
fn token(sub: &str) -> String {
    bearer(&hs(&claims(sub, &["user"], "")))
}

/// What the origin saw of `name`, as its echo body reports it.
fn saw(a: &Answer, name: &str) -> String {
    a.json()["h"][name].as_str().unwrap_or("").to_owned()
}

/// An origin echoing each request, with `Cache-Control: cc` and, when not empty, `Vary: vary`.
async fn echo_origin(cc: &'static str, vary: &'static str) -> Origin {
    Origin::scripted("o", move |s: &Seen| {
        let reply = Reply::echo(s).header("cache-control", cc);
        if vary.is_empty() {
            reply
        } else {
            reply.header("vary", vary)
        }
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// 1. Key on what the origin saw.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn vary_on_the_identity_sent_upstream_keeps_users_apart() {
    let origin = echo_origin("public, max-age=60", "X-Auth-Sub").await;
    let gw = gateway(&origin, "", &cached_route("me", "auth = \"authenticated\"")).await;
    let url = gw.at("/me/profile");
    let alice = token("alice");
    let bob = token("bob");

    let a = get(&url, &[("authorization", &alice)]).await;
    assert_eq!((a.status, saw(&a, "x-auth-sub").as_str()), (200, "alice"));
    assert_eq!(a.x_cache(), "MISS");
    let b = get(&url, &[("authorization", &bob)]).await;
    assert_eq!(
        saw(&b, "x-auth-sub"),
        "bob",
        "bob must get the response the origin made for bob, not alice's ({})",
        b.summary()
    );
    assert_eq!(origin.count(), 2, "one origin request per identity");
    // A forged client copy of the identity header changes nothing: the key is what was sent.
    let a2 = get(&url, &[("authorization", &alice), ("x-auth-sub", "bob")]).await;
    assert_eq!(
        (a2.x_cache(), saw(&a2, "x-auth-sub").as_str()),
        ("HIT", "alice")
    );
    let b2 = get(&url, &[("authorization", &bob)]).await;
    assert_eq!(
        (b2.x_cache(), saw(&b2, "x-auth-sub").as_str()),
        ("HIT", "bob")
    );
    assert_eq!(origin.count(), 2);
}

#[tokio::test]
async fn vary_on_the_forwarded_host_sent_upstream_keeps_hosts_apart() {
    let origin = echo_origin("public, max-age=60", "X-Forwarded-Host").await;
    let gw = gateway(&origin, "", &cached_route("c", "")).await;
    let url = gw.at("/c/page");

    let a = get(&url, &[("host", "a.example")]).await;
    assert_eq!(
        (a.x_cache(), saw(&a, "x-forwarded-host").as_str()),
        ("MISS", "a.example")
    );
    let b = get(&url, &[("host", "b.example")]).await;
    assert_eq!(
        saw(&b, "x-forwarded-host"),
        "b.example",
        "b.example must not get a.example's body ({})",
        b.summary()
    );
    assert_eq!(origin.count(), 2);
    let a2 = get(&url, &[("host", "a.example")]).await;
    assert_eq!(
        (a2.x_cache(), saw(&a2, "x-forwarded-host").as_str()),
        ("HIT", "a.example")
    );
    let b2 = get(&url, &[("host", "b.example")]).await;
    assert_eq!(
        (b2.x_cache(), saw(&b2, "x-forwarded-host").as_str()),
        ("HIT", "b.example")
    );
    assert_eq!(origin.count(), 2);
}

#[tokio::test]
async fn vary_on_a_passed_through_client_header_keys_as_sent() {
    let origin = echo_origin("public, max-age=60", "Accept-Language").await;
    let gw = gateway(&origin, "", &cached_route("c", "")).await;
    let url = gw.at("/c/page");
    let en = get(&url, &[("accept-language", "en")]).await;
    let fr = get(&url, &[("accept-language", "fr")]).await;
    assert_eq!((en.x_cache(), fr.x_cache()), ("MISS", "MISS"));
    assert_eq!(saw(&fr, "accept-language"), "fr");
    let en2 = get(&url, &[("accept-language", "en")]).await;
    let fr2 = get(&url, &[("accept-language", "fr")]).await;
    assert_eq!(
        (en2.x_cache(), saw(&en2, "accept-language").as_str()),
        ("HIT", "en")
    );
    assert_eq!(
        (fr2.x_cache(), saw(&fr2, "accept-language").as_str()),
        ("HIT", "fr")
    );
    assert_eq!(origin.count(), 2);
}

// ---------------------------------------------------------------------------------------------
// 2. Every header the gateway sets or forwards upstream.
// ---------------------------------------------------------------------------------------------

/// One header of the table: the route it is tested on, two requests that differ in it, and
/// whether it keys the entry without `Vary`.
struct Row {
    /// The header as the upstream sees it (what `Vary` names).
    header: &'static str,
    /// Route prefix: `pub` (public), `who` (authenticated), `fwd` (forwards Authorization).
    route: &'static str,
    first: Vec<(&'static str, String)>,
    second: Vec<(&'static str, String)>,
    /// Part of the target URI (forwarded proto and host): a change is a MISS without Vary.
    keyed: bool,
}

fn row(header: &'static str, route: &'static str, name: &'static str, v: [&str; 2]) -> Row {
    Row {
        header,
        route,
        first: vec![(name, v[0].to_owned())],
        second: vec![(name, v[1].to_owned())],
        keyed: false,
    }
}

async fn get_owned(url: &str, headers: &[(&'static str, String)]) -> Answer {
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    get(url, &headers).await
}

#[tokio::test]
async fn each_forwarded_header_keys_only_when_it_is_part_of_the_target_or_varied_on() {
    // `public, max-age=60`; `Vary: <name>` on paths `/ROUTE/vary/<name>`.
    let origin = Origin::scripted("o", |s: &Seen| {
        let reply = Reply::echo(s).header("cache-control", "public, max-age=60");
        let segments: Vec<&str> = s.path().split('/').collect();
        match segments.as_slice() {
            ["", _, "vary", name] => reply.header("vary", name),
            _ => reply,
        }
    })
    .await;
    let routes = [
        cached_route("pub", ""),
        cached_route("who", "auth = \"authenticated\""),
        cached_route("fwd", "forward_authorization = true"),
    ]
    .concat();
    let gw = gateway(&origin, "trusted_proxies = [\"127.0.0.1/32\"]", &routes).await;
    let rows = vec![
        row(
            "x-forwarded-for",
            "pub",
            "x-forwarded-for",
            ["192.0.2.1", "192.0.2.2"],
        ),
        Row {
            keyed: true,
            ..row(
                "x-forwarded-proto",
                "pub",
                "x-forwarded-proto",
                ["http", "https"],
            )
        },
        Row {
            keyed: true,
            ..row(
                "x-forwarded-host",
                "pub",
                "x-forwarded-host",
                ["a.example", "b.example"],
            )
        },
        row("x-request-id", "pub", "x-request-id", ["rid-1", "rid-2"]),
        row(
            "traceparent",
            "pub",
            "traceparent",
            [
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ],
        ),
        row(
            "accept",
            "pub",
            "accept",
            ["application/json", "text/plain"],
        ),
        row("accept-language", "pub", "accept-language", ["en", "fr"]),
        row("user-agent", "pub", "user-agent", ["agent/1", "agent/2"]),
        Row {
            header: "x-auth-sub",
            route: "who",
            first: vec![("authorization", token("alice"))],
            second: vec![("authorization", token("bob"))],
            keyed: false,
        },
        row(
            "authorization",
            "fwd",
            "authorization",
            ["Bearer a", "Bearer b"],
        ),
        row("cookie", "pub", "cookie", ["s=1", "s=2"]),
    ];
    let mut failures = Vec::new();
    let mut check = |ok: bool, what: String| {
        if !ok {
            failures.push(what);
        }
    };
    for r in &rows {
        let h = r.header;
        // Without Vary.
        let path = format!("/{}/plain/{h}", r.route);
        let one = get_owned(&gw.at(&path), &r.first).await;
        check(
            one.status == 200 && one.x_cache() == "MISS",
            format!("{h}: first request without Vary: {}", one.summary()),
        );
        let two = get_owned(&gw.at(&path), &r.second).await;
        let expected = if r.keyed { "MISS" } else { "HIT" };
        check(
            two.x_cache() == expected,
            format!(
                "{h}: changed, no Vary: expected {expected}, got {}",
                two.summary()
            ),
        );
        check(
            origin.hits(&path) == if r.keyed { 2 } else { 1 },
            format!("{h}: origin requests without Vary: {}", origin.hits(&path)),
        );
        if r.keyed && two.status == 200 {
            check(
                saw(&two, h) == r.second[0].1,
                format!(
                    "{h}: the MISS must show the new value, saw {:?}",
                    saw(&two, h)
                ),
            );
        }
        // With `Vary: <header>`.
        let path = format!("/{}/vary/{h}", r.route);
        let one = get_owned(&gw.at(&path), &r.first).await;
        let two = get_owned(&gw.at(&path), &r.second).await;
        let three = get_owned(&gw.at(&path), &r.first).await;
        check(
            (one.x_cache(), two.x_cache(), three.x_cache()) == ("MISS", "MISS", "HIT"),
            format!(
                "{h}: Vary: first, changed, first again: expected MISS MISS HIT, got {} {} {}",
                one.x_cache(),
                two.x_cache(),
                three.x_cache()
            ),
        );
        check(
            three.body == one.body,
            format!("{h}: Vary: the HIT must be the first value's body"),
        );
        check(
            origin.hits(&path) == 2,
            format!("{h}: origin requests with Vary: {}", origin.hits(&path)),
        );
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// 3. Host.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn without_public_host_each_host_is_its_own_entry() {
    let origin = echo_origin("public, max-age=60", "").await;
    let gw = gateway(&origin, "", &cached_route("c", "")).await;
    let url = gw.at("/c/page");
    let evil = get(&url, &[("host", "evil.example")]).await;
    assert_eq!(
        (evil.x_cache(), saw(&evil, "x-forwarded-host").as_str()),
        ("MISS", "evil.example")
    );
    let good = get(&url, &[("host", "good.example")]).await;
    assert_eq!(
        good.x_cache(),
        "MISS",
        "another host is another entry: {}",
        good.text()
    );
    assert_eq!(origin.count(), 2);
    assert_eq!(origin.last().text("x-forwarded-host"), "good.example");
    assert_eq!(saw(&good, "x-forwarded-host"), "good.example");
}

#[tokio::test]
async fn public_host_refuses_other_hosts_with_421_and_canonicalises_the_forwarded_host() {
    let origin = echo_origin("public, max-age=60", "").await;
    let gw = gateway(
        &origin,
        "public_host = \"api.example.com\"\ntrusted_proxies = [\"127.0.0.1/32\"]",
        &cached_route("c", ""),
    )
    .await;
    let evil = get(&gw.at("/c/1"), &[("host", "evil.example")]).await;
    assert_eq!(evil.status, 421, "{}", evil.text());
    assert_eq!(
        evil.header("content-type"),
        Some("application/problem+json")
    );
    assert_eq!(origin.count(), 0, "nothing sent upstream for a wrong host");

    let ok = get(&gw.at("/c/1"), &[("host", "api.example.com")]).await;
    assert_eq!(ok.status, 200);
    assert_eq!(
        origin.last().raw("x-forwarded-host"),
        Some(&b"api.example.com"[..])
    );
    let mixed = get(&gw.at("/c/2"), &[("host", "API.Example.com:8080")]).await;
    assert_eq!(mixed.status, 200, "{}", mixed.text());
    assert_eq!(
        origin.last().raw("x-forwarded-host"),
        Some(&b"api.example.com"[..]),
        "the upstream sees the canonical host exactly"
    );
    // Same host upstream, same target: the same entry.
    let again = get(&gw.at("/c/1"), &[("host", "API.Example.com:8080")]).await;
    assert_eq!(again.x_cache(), "HIT");
    assert_eq!(origin.count(), 2);

    let proxied = get(
        &gw.at("/c/3"),
        &[
            ("host", "api.example.com"),
            ("x-forwarded-host", "evil.example"),
        ],
    )
    .await;
    assert_eq!(
        proxied.status, 421,
        "a trusted proxy's X-Forwarded-Host is checked too"
    );
    assert_eq!(origin.count(), 2);
    // Refused before routing: an unknown path is 421 too, not 404.
    let unrouted = get(&gw.at("/nowhere"), &[("host", "evil.example")]).await;
    assert_eq!(unrouted.status, 421);
}

// ---------------------------------------------------------------------------------------------
// 4. Credentials (RFC 9111 §3.5).
// ---------------------------------------------------------------------------------------------

/// alice, then bob, then alice again on `path` of an authenticated route (`/me/...`, 60 s
/// ttl) in front of `origin`: the three answers.
async fn alice_bob_alice(origin: &Origin, path: &str) -> [Answer; 3] {
    let gw = gateway(origin, "", &cached_route("me", "auth = \"authenticated\"")).await;
    let url = gw.at(path);
    let a = get(&url, &[("authorization", &token("alice"))]).await;
    let b = get(&url, &[("authorization", &token("bob"))]).await;
    let a2 = get(&url, &[("authorization", &token("alice"))]).await;
    [a, b, a2]
}

#[tokio::test]
async fn a_private_response_to_an_authenticated_request_is_per_identity() {
    let origin = echo_origin("max-age=60", "").await;
    let [a, b, a2] = alice_bob_alice(&origin, "/me/profile").await;
    assert_eq!(
        (a.x_cache(), saw(&a, "x-auth-sub").as_str()),
        ("MISS", "alice")
    );
    assert_eq!(
        (b.x_cache(), saw(&b, "x-auth-sub").as_str()),
        ("MISS", "bob")
    );
    assert_eq!(
        (a2.x_cache(), saw(&a2, "x-auth-sub").as_str()),
        ("HIT", "alice")
    );
    assert_eq!(origin.count(), 2);
}

#[tokio::test]
async fn must_revalidate_without_a_lifetime_never_becomes_fresh_for_others_through_the_ttl() {
    let origin = echo_origin("must-revalidate", "").await;
    let [a, b, _] = alice_bob_alice(&origin, "/me/profile").await;
    assert_eq!(saw(&a, "x-auth-sub"), "alice");
    assert_eq!(
        (b.x_cache(), saw(&b, "x-auth-sub").as_str()),
        ("MISS", "bob"),
        "the route ttl must not make alice's response fresh for bob"
    );
}

#[tokio::test]
async fn must_revalidate_with_a_lifetime_is_shared() {
    let origin = echo_origin("must-revalidate, max-age=60", "").await;
    let [a, b, _] = alice_bob_alice(&origin, "/me/news").await;
    assert_eq!(a.x_cache(), "MISS");
    assert_eq!(
        b.x_cache(),
        "HIT",
        "RFC 9111 §3.5: must-revalidate allows sharing"
    );
    assert_eq!(b.body, a.body);
    assert_eq!(origin.count(), 1);
}

#[tokio::test]
async fn a_304_never_hands_one_users_stored_body_to_another() {
    // Constant validator; any `If-None-Match: "v1"` gets a 304.
    let origin = Origin::scripted("o", |s: &Seen| {
        let reply = if s.text("if-none-match").contains("\"v1\"") {
            Reply::status(304)
        } else {
            Reply::echo(s)
        };
        reply
            .header("cache-control", "must-revalidate, max-age=0")
            .header("etag", "\"v1\"")
    })
    .await;
    let [a, b, a2] = alice_bob_alice(&origin, "/me/profile").await;
    assert_eq!(
        (a.status, a.x_cache(), saw(&a, "x-auth-sub").as_str()),
        (200, "MISS", "alice")
    );
    assert_eq!(b.status, 200);
    assert_eq!(
        saw(&b, "x-auth-sub"),
        "bob",
        "bob got alice's stored body through a 304 ({})",
        b.summary()
    );
    assert_eq!(a2.status, 200);
    assert_eq!(saw(&a2, "x-auth-sub"), "alice");
}

#[tokio::test]
async fn an_anonymous_private_entry_never_answers_a_credentialed_request() {
    let origin = echo_origin("max-age=60", "").await;
    let routes = [
        cached_route("pub", ""),
        cached_route("fwd", "forward_authorization = true"),
    ]
    .concat();
    let gw = gateway(&origin, "", &routes).await;

    let anon = get(&gw.at("/pub/x"), &[]).await;
    assert_eq!(anon.x_cache(), "MISS");
    let cookie = get(&gw.at("/pub/x"), &[("cookie", "s=1")]).await;
    assert_eq!(
        (cookie.x_cache(), saw(&cookie, "cookie").as_str()),
        ("MISS", "s=1"),
        "a Cookie request must not get the anonymous entry"
    );

    let anon = get(&gw.at("/fwd/x"), &[]).await;
    assert_eq!(anon.x_cache(), "MISS");
    let authz = get(&gw.at("/fwd/x"), &[("authorization", "Bearer t")]).await;
    assert_eq!(
        (authz.x_cache(), saw(&authz, "authorization").as_str()),
        ("MISS", "Bearer t"),
        "a forwarded-Authorization request must not get the anonymous entry"
    );
    assert_eq!(origin.count(), 4);
}

#[tokio::test]
async fn a_cookie_keys_a_private_entry() {
    let origin = echo_origin("max-age=60", "").await;
    let gw = gateway(&origin, "", &cached_route("pub", "")).await;
    let url = gw.at("/pub/cart");
    let alice = get(&url, &[("cookie", "s=alice")]).await;
    assert_eq!(
        (alice.x_cache(), saw(&alice, "cookie").as_str()),
        ("MISS", "s=alice")
    );
    let bob = get(&url, &[("cookie", "s=bob")]).await;
    assert_eq!(
        (bob.x_cache(), saw(&bob, "cookie").as_str()),
        ("MISS", "s=bob"),
        "bob's cookie must not get alice's body"
    );
    let alice2 = get(&url, &[("cookie", "s=alice")]).await;
    assert_eq!(
        (alice2.x_cache(), saw(&alice2, "cookie").as_str()),
        ("HIT", "s=alice"),
        "private per cookie"
    );
    let anon = get(&url, &[]).await;
    assert_eq!(
        (anon.x_cache(), saw(&anon, "cookie").as_str()),
        ("MISS", ""),
        "no cookie never gets a cookie's body"
    );
    assert_eq!(origin.count(), 3);
}

#[tokio::test]
async fn cookie_requests_are_not_compressed_under_auto() {
    let big = json!({"items": vec!["the same compressible words again and again"; 100]});
    let body = big.to_string();
    assert!(body.len() > 2000);
    let origin = Origin::scripted("o", move |_: &Seen| {
        Reply::ok()
            .json(&big)
            .header("cache-control", "public, max-age=60")
    })
    .await;
    let gw = gateway(&origin, "", &cached_route("pub", "compress = \"auto\"")).await;
    let url = gw.at("/pub/list");
    let with_cookie = [("cookie", "s=1"), ("accept-encoding", "gzip")];
    let c1 = get(&url, &with_cookie).await;
    assert_eq!(c1.status, 200);
    assert_eq!(
        c1.header("content-encoding"),
        None,
        "a Cookie request is credentialed: no compression (BREACH)"
    );
    assert_eq!(c1.body, body.as_bytes());
    let plain = get(&url, &[("accept-encoding", "gzip")]).await;
    assert_eq!(plain.header("content-encoding"), Some("gzip"));
    let c2 = get(&url, &with_cookie).await;
    assert_eq!(
        c2.header("content-encoding"),
        None,
        "nor from the stored gzip variant"
    );
    assert_eq!(c2.body, body.as_bytes());
}

// ---------------------------------------------------------------------------------------------
// 5. The whole identity keys private entries.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn private_entries_are_keyed_by_every_identity_header_sent_upstream() {
    let origin = echo_origin("max-age=60", "").await;
    let gw = gateway(&origin, "", &cached_route("me", "auth = \"authenticated\"")).await;
    let url = gw.at("/me/dashboard");
    let tenant = |t: &str| {
        let mut c = claims("alice", &["user"], "");
        c["org"]["tenant"] = json!(t);
        bearer(&hs(&c))
    };
    let a = get(&url, &[("authorization", &tenant("t-a"))]).await;
    assert_eq!(
        (a.x_cache(), saw(&a, "x-auth-tenant").as_str()),
        ("MISS", "t-a")
    );
    let b = get(&url, &[("authorization", &tenant("t-b"))]).await;
    assert_eq!(
        (b.x_cache(), saw(&b, "x-auth-tenant").as_str()),
        ("MISS", "t-b"),
        "same subject, another tenant: another entry"
    );
    let a2 = get(&url, &[("authorization", &tenant("t-a"))]).await;
    assert_eq!(
        (a2.x_cache(), saw(&a2, "x-auth-tenant").as_str()),
        ("HIT", "t-a")
    );
    assert_eq!(origin.count(), 2);
}

// ---------------------------------------------------------------------------------------------
// 6. Vary values byte for byte.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn vary_values_are_compared_byte_for_byte() {
    let origin = Origin::scripted("o", |s: &Seen| {
        let hex: String = s
            .raw("x-key")
            .unwrap_or_default()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Reply::ok()
            .json(&json!({ "key": hex }))
            .header("cache-control", "public, max-age=60")
            .header("vary", "X-Key")
    })
    .await;
    let gw = gateway(&origin, "", &cached_route("c", "")).await;
    let url = gw.at("/c/bytes");
    let key = |v: &'static [u8]| send(Method::GET, &url, [("x-key", v)]);
    let ff = key(b"\xff").await;
    assert_eq!(
        (ff.x_cache(), ff.json()["key"].as_str()),
        ("MISS", Some("ff"))
    );
    let fe = key(b"\xfe").await;
    assert_eq!(
        (fe.x_cache(), fe.json()["key"].as_str()),
        ("MISS", Some("fe")),
        "\\xfe is not \\xff"
    );
    let ff2 = key(b"\xff").await;
    assert_eq!(
        (ff2.x_cache(), ff2.json()["key"].as_str()),
        ("HIT", Some("ff"))
    );
    assert_eq!(origin.count(), 2);
}
