//! TLS towards upstreams and JWKS URLs over real connections: a read-only gateway (no broker)
//! in front of https origins on `127.0.0.1:0` whose certificates come from a throwaway CA made
//! by the test (`support::tls`).
//!
//! What it proves:
//! 1. `tls = { ca_file }` trusts a private CA; h2 is negotiated over ALPN when the origin
//!    offers it, HTTP/1.1 when it offers only that.
//! 2. Without `ca_file` (Mozilla roots) the private CA is refused: 502 problem+json that names
//!    nothing internal, and no request reaches the origin.
//! 3. `server_name` replaces the URL's host in verification: a name the certificate lacks is
//!    refused, the certificate's name accepted for a target addressed by IP.
//! 4. mTLS: an origin requiring a client certificate refuses the gateway without
//!    `client_cert_file`/`client_key_file`, and sees the certificate with them.
//! 5. JWKS over https: keys fetched with the key's `tls` verify tokens; without the CA,
//!    start-up fails naming `auth.keys[0].jwks_url` and the TLS reason.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, encode};
use serde_json::json;
use support::gateway::{TestGateway, base_config_with, no_broker, read_route, upstream};
use support::http::{Answer, get};
use support::poll::eventually;
use support::tls::{OriginOptions, Pki, TlsOrigin};
use support::tokens::{AUD, ISS, bearer, claims, pem};
use tokio::net::TcpListener;

/// `[upstreams.o]` on `url` with `tls` lines (`ca_file = '…'`, …; none: the defaults), and a
/// public read route `/r/{*rest}` on it.
fn sections(url: &str, tls: &str) -> String {
    let tls = if tls.is_empty() {
        String::new()
    } else {
        format!("tls = {{ {tls} }}\n")
    };
    format!(
        "{}{tls}{}",
        upstream("o", url),
        read_route("r", "/r/{*rest}", "o", "")
    )
}

/// `ca_file = '<the test CA>'`.
fn ca(pki: &Pki) -> String {
    format!("ca_file = '{}'", pki.ca_file.display())
}

/// A read-only gateway in front of `origin` with `tls`, and `GET /r/x` through it.
async fn read_through(origin: &TlsOrigin, tls: &str) -> Answer {
    let gw = TestGateway::reads("", &sections(&origin.url, tls)).await;
    let answer = get(&gw.at("/r/x"), &[]).await;
    gw.shutdown().await;
    answer
}

/// A 502 problem+json that tells the client nothing about the TLS failure or the set-up.
fn assert_bare_502(a: &Answer, pki: &Pki) {
    assert_eq!(a.status, 502, "{}", a.text());
    assert_eq!(
        a.header("content-type"),
        Some("application/problem+json"),
        "{}",
        a.text()
    );
    assert_eq!(a.json()["status"], 502, "{}", a.text());
    let body = a.text().to_lowercase();
    for internal in [
        "certificate",
        "unknownissuer",
        "issuer",
        "tls",
        "rustls",
        "handshake",
        "127.0.0.1",
        ".pem",
    ] {
        assert!(!body.contains(internal), "`{internal}` in {body}");
    }
    let dir = pki.dir.display().to_string().to_lowercase();
    assert!(!body.contains(&dir), "the PKI path in {body}");
}

#[tokio::test]
async fn https_upstream_trusting_ca_file_speaks_h2_via_alpn() {
    let pki = Pki::new();
    let origin = TlsOrigin::start(OriginOptions::new(&pki.server)).await;
    let a = read_through(&origin, &ca(&pki)).await;
    assert_eq!(a.status, 200, "{}", a.text());
    let seen = a.json();
    assert_eq!(seen["path"], "/r/x", "{seen}");
    assert_eq!(seen["alpn"], "h2", "{seen}");
    assert_eq!(seen["version"], "HTTP/2.0", "{seen}");
    assert_eq!(seen["client_cert"], false, "{seen}");
    assert_eq!(origin.requests(), 1);
}

#[tokio::test]
async fn https_upstream_offering_only_http11_is_spoken_to_in_http11() {
    let pki = Pki::new();
    let origin = TlsOrigin::start(OriginOptions {
        alpn: &["http/1.1"],
        ..OriginOptions::new(&pki.server)
    })
    .await;
    let a = read_through(&origin, &ca(&pki)).await;
    assert_eq!(a.status, 200, "{}", a.text());
    let seen = a.json();
    assert_eq!(seen["alpn"], "http/1.1", "{seen}");
    assert_eq!(seen["version"], "HTTP/1.1", "{seen}");
}

#[tokio::test]
async fn default_roots_refuse_a_private_ca_with_a_bare_502() {
    let pki = Pki::new();
    let origin = TlsOrigin::start(OriginOptions::new(&pki.server)).await;
    let a = read_through(&origin, "").await;
    assert_bare_502(&a, &pki);
    // The connection got as far as the handshake, which the gateway aborted (the origin sees
    // the alert), and no request was sent.
    eventually(
        Duration::from_secs(5),
        "the origin saw a failed handshake",
        async || origin.failed_handshakes() > 0,
    )
    .await;
    assert_eq!(origin.requests(), 0, "a request reached the origin");
}

#[tokio::test]
async fn server_name_the_certificate_lacks_is_502() {
    let pki = Pki::new();
    // The certificate names localhost and 127.0.0.1, not the configured name.
    let origin = TlsOrigin::start(OriginOptions::new(&pki.server)).await;
    let tls = format!("{}, server_name = \"other.internal\"", ca(&pki));
    let a = read_through(&origin, &tls).await;
    assert_bare_502(&a, &pki);
    assert_eq!(origin.requests(), 0, "a request reached the origin");
}

#[tokio::test]
async fn server_name_verifies_a_target_addressed_by_ip() {
    let pki = Pki::new();
    // The certificate names only api.internal; the target is https://127.0.0.1:PORT.
    let origin = TlsOrigin::start(OriginOptions::new(&pki.internal)).await;
    assert!(origin.url.starts_with("https://127.0.0.1:"));
    // Without the override the IP is verified, and the certificate does not carry it.
    let a = read_through(&origin, &ca(&pki)).await;
    assert_bare_502(&a, &pki);
    let tls = format!("{}, server_name = \"api.internal\"", ca(&pki));
    let a = read_through(&origin, &tls).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.json()["path"], "/r/x");
    assert_eq!(origin.requests(), 1);
}

/// An origin that requires a client certificate signed by the test's client CA.
async fn mtls_origin(pki: &Pki) -> TlsOrigin {
    TlsOrigin::start(OriginOptions {
        client_ca: Some(&pki.client_ca_file),
        ..OriginOptions::new(&pki.server)
    })
    .await
}

#[tokio::test]
async fn mtls_origin_refuses_a_gateway_without_a_client_certificate() {
    let pki = Pki::new();
    let origin = mtls_origin(&pki).await;
    let a = read_through(&origin, &ca(&pki)).await;
    assert_bare_502(&a, &pki);
    assert_eq!(origin.requests(), 0, "a request reached the origin");
}

#[tokio::test]
async fn mtls_origin_accepts_the_configured_client_certificate() {
    let pki = Pki::new();
    let origin = mtls_origin(&pki).await;
    let tls = format!(
        "{}, client_cert_file = '{}', client_key_file = '{}'",
        ca(&pki),
        pki.client.cert_file.display(),
        pki.client.key_file.display()
    );
    let a = read_through(&origin, &tls).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.json()["client_cert"], true, "{}", a.text());
}

/// With TLS 1.3 the server checks the client certificate after the client's side of the
/// handshake has finished, so its refusal (alert `certificate_required`) reaches the gateway
/// on the request, not the connect; the server read nothing, so the target is skipped like
/// one that refused the connection and the next one answers.
#[tokio::test]
async fn mtls_refusal_by_one_target_fails_over_to_the_next() {
    let pki = Pki::new();
    let strict = mtls_origin(&pki).await;
    let open = TlsOrigin::start(OriginOptions::new(&pki.server)).await;
    let sections = format!(
        "\n[upstreams.o]\ntargets = [\"{}\", \"{}\"]\ntimeout = \"2s\"\nconnect_timeout = \"300ms\"\ntls = {{ {} }}\n{}",
        strict.url,
        open.url,
        ca(&pki),
        read_route("r", "/r/{*rest}", "o", "")
    );
    let gw = TestGateway::reads("", &sections).await;
    for i in 0..4 {
        let a = get(&gw.at("/r/x"), &[]).await;
        assert_eq!(a.status, 200, "request {i}: {}", a.text());
    }
    assert_eq!(strict.requests(), 0);
    assert_eq!(open.requests(), 4);
    gw.shutdown().await;
}

/// A JWKS holding `rsa2.pub.pem` (RS256) under kid `j1`.
fn jwks_doc() -> String {
    let key = DecodingKey::from_rsa_pem(&pem("rsa2.pub.pem")).unwrap();
    let mut jwk = Jwk::from_decoding_key(&key, Some(Algorithm::RS256)).unwrap();
    jwk.common.key_id = Some("j1".to_owned());
    json!({ "keys": [jwk] }).to_string()
}

/// A token for `sub` signed with `rsa2.key` under kid `j1`.
fn jwks_token(sub: &str) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("j1".to_owned());
    let key = EncodingKey::from_rsa_pem(&pem("rsa2.key")).unwrap();
    encode(&header, &claims(sub, &["user"], ""), &key).unwrap()
}

/// `[auth]` whose only key is the JWKS at `jwks_url`, with `tls` lines (none: the defaults).
fn jwks_auth(jwks_url: &str, tls: &str) -> String {
    let tls = if tls.is_empty() {
        String::new()
    } else {
        format!("tls = {{ {tls} }}\n")
    };
    format!(
        "\n[auth]\nissuer = \"{ISS}\"\naudience = \"{AUD}\"\njwks_timeout = \"3s\"\n\n[[auth.keys]]\nalgorithm = \"RS256\"\njwks_url = \"{jwks_url}\"\n{tls}"
    )
}

#[tokio::test]
async fn jwks_over_https_with_ca_file_verifies_tokens() {
    let pki = Pki::new();
    let issuer = TlsOrigin::start(OriginOptions {
        jwks: Some(jwks_doc()),
        ..OriginOptions::new(&pki.server)
    })
    .await;
    let origin = TlsOrigin::start(OriginOptions::new(&pki.server)).await;
    let config = format!(
        "{auth}{upstream}tls = {{ {ca} }}\n{route}",
        auth = jwks_auth(&format!("{}/jwks", issuer.url), &ca(&pki)),
        upstream = upstream("o", &origin.url),
        ca = ca(&pki),
        route = read_route("r", "/r/{*rest}", "o", "auth = \"authenticated\""),
    );
    let gw = TestGateway::reads("", &config).await;
    let anonymous = get(&gw.at("/r/x"), &[]).await;
    assert_eq!(anonymous.status, 401, "{}", anonymous.text());
    let token = bearer(&jwks_token("alice"));
    let a = get(&gw.at("/r/x"), &[("authorization", &token)]).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.json()["path"], "/r/x");
    assert!(
        issuer.requests() >= 1,
        "the JWKS was not fetched over https"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn jwks_over_https_without_the_ca_fails_start_up_with_the_reason() {
    let pki = Pki::new();
    let issuer = TlsOrigin::start(OriginOptions {
        jwks: Some(jwks_doc()),
        ..OriginOptions::new(&pki.server)
    })
    .await;
    let config = format!(
        "{}{}",
        base_config_with(&no_broker(), ""),
        jwks_auth(&format!("{}/jwks", issuer.url), "")
    );
    let config = amqp_gateway::Config::from_toml(&config, "test", |_| None).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let result = tokio::time::timeout(
        Duration::from_secs(10),
        amqp_gateway::run(config, listener, admin, std::future::pending()),
    )
    .await
    .expect("start-up must fail fast, not hang");
    let err = result
        .expect_err("started with an untrusted JWKS")
        .to_string();
    assert!(err.contains("auth.keys[0].jwks_url"), "{err}");
    assert!(err.contains("invalid peer certificate"), "{err}");
    assert!(err.contains("UnknownIssuer"), "{err}");
    assert_eq!(issuer.requests(), 0, "the JWKS was served");
}
