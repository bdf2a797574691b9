//! Authentication and authorization over real HTTP against the in-process gateway and a real
//! broker: the JWT attack table (design "Auth contract", scenarios 41–55), the role/scope
//! matrix on write and read routes, identity propagation into events, JWKS rotation with the
//! refetch cooldown (JWKS served by this test on port 0), CORS preflights.
//!
//! Every rejected write is also checked at the broker: nothing published.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, encode};
use lapin::ExchangeKind;
use reqwest::Method;
use serde_json::{Value, json};
use support::amqp::header_str;
use support::gateway::{publish_route, read_route, upstream};
use support::http::{JSON, write};
use support::origin::Origin;
use support::poll::eventually;
use support::tokens::{self, SECRET, bearer, claims, fixture, hs, mint, now, pem};
use support::{TestGateway, TestQueue, amqp_url, base_config, free_port, unique_name};
use tokio::net::TcpListener;
use tokio::time::Instant;

const WAIT: Duration = Duration::from_secs(5);

/// An RS256 token signed with `rsa2.key` (the key the test JWKS serves), under `kid`.
fn mint_rsa2(kid: &str, claims: &Value) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.to_owned());
    encode(
        &header,
        claims,
        &EncodingKey::from_rsa_pem(&pem("rsa2.key")).unwrap(),
    )
    .unwrap()
}

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
}

/// A JWK (RS256) for `rsa2.pub.pem` under `kid`.
fn rsa2_jwk(kid: &str) -> Value {
    let key = DecodingKey::from_rsa_pem(&pem("rsa2.pub.pem")).unwrap();
    let mut jwk = Jwk::from_decoding_key(&key, Some(Algorithm::RS256)).unwrap();
    jwk.common.key_id = Some(kid.to_owned());
    serde_json::to_value(jwk).unwrap()
}

fn jwks_doc(kids: &[&str]) -> String {
    json!({"keys": kids.iter().map(|k| rsa2_jwk(k)).collect::<Vec<_>>()}).to_string()
}

/// A JWKS endpoint served by the test on port 0: the document can be swapped or made to fail,
/// and every fetch is counted.
struct JwksServer {
    url: String,
    doc: Arc<Mutex<(u16, String)>>,
    fetches: Arc<AtomicUsize>,
}

impl JwksServer {
    async fn start(kids: &[&str]) -> JwksServer {
        let doc = Arc::new(Mutex::new((200, jwks_doc(kids))));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (d, f) = (doc.clone(), fetches.clone());
        let app = axum::Router::new().route(
            "/jwks",
            axum::routing::get(move || {
                let (d, f) = (d.clone(), f.clone());
                async move {
                    f.fetch_add(1, Ordering::SeqCst);
                    let (status, body) = d.lock().unwrap().clone();
                    (axum::http::StatusCode::from_u16(status).unwrap(), body)
                }
            }),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        JwksServer { url, doc, fetches }
    }

    fn serve(&self, kids: &[&str]) {
        *self.doc.lock().unwrap() = (200, jwks_doc(kids));
    }

    fn fail(&self) {
        self.doc.lock().unwrap().0 = 500;
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

/// The `[auth]` section with every test key (HS256, RS256, ES256, EdDSA, the JWKS); `extra`
/// adds settings.
fn auth_section(jwks_url: &str, extra: &str) -> String {
    let more_keys = format!(
        r#"
[[auth.keys]]
kid = "rs"
algorithm = "RS256"
public_key_pem = "{rs}"

[[auth.keys]]
kid = "es"
algorithm = "ES256"
public_key_pem = "{es}"

[[auth.keys]]
kid = "ed"
algorithm = "EdDSA"
public_key_pem = "{ed}"

[[auth.keys]]
algorithm = "RS256"
jwks_url = "{jwks_url}"
"#,
        rs = fixture("rsa1.pub.pem").display(),
        es = fixture("ec256.pub.pem").display(),
        ed = fixture("ed25519.pub.pem").display(),
    );
    tokens::auth_section(extra, &more_keys)
}

/// Write routes on `exchange`, one per policy; routing key = the route's last path segment.
fn write_routes(exchange: &str) -> String {
    let route = |name: &str, auth: &str| {
        publish_route(
            name,
            &format!("/w/{name}"),
            exchange,
            name,
            &format!("auth = {auth}"),
        )
    };
    [
        route("open", "\"public\""),
        route("any", "\"authenticated\""),
        route("admin", "{ roles = [\"admin\"] }"),
        route("admin-or-ops", "{ roles = [\"admin\", \"ops\"] }"),
        route(
            "admin-and-ops",
            "{ roles = [\"admin\", \"ops\"], match = \"all\" }",
        ),
        route("write", "{ scopes = [\"users:write\"] }"),
        route(
            "write-and-ban",
            "{ scopes = [\"users:write\", \"users:ban\"], match = \"all\" }",
        ),
        route(
            "admin-writes",
            "{ roles = [\"admin\"], scopes = [\"users:write\"] }",
        ),
    ]
    .concat()
}

struct Setup {
    gw: TestGateway,
    queue: TestQueue,
    jwks: JwksServer,
}

/// A gateway with the auth section, the write routes, `[cors]`, and `extra` appended; a queue
/// bound to every routing key of the test's exchange.
async fn setup(auth_extra: &str, extra: &str) -> Setup {
    let jwks = JwksServer::start(&["j1"]).await;
    let exchange = unique_name("auth");
    let config = format!(
        "{base}\n[[amqp.exchanges]]\nname = \"{exchange}\"\ntype = \"topic\"\n{auth}\n[cors]\nallowed_origins = [\"https://app.example\"]\n\n{routes}\n{extra}",
        base = base_config(&amqp_url()),
        auth = auth_section(&jwks.url, auth_extra),
        routes = write_routes(&exchange),
    );
    let queue = TestQueue::bind(&amqp_url(), &exchange, Some(ExchangeKind::Topic), "#").await;
    let gw = TestGateway::start(&config).await;
    Setup { gw, queue, jwks }
}

struct Answer {
    status: u16,
    challenge: Option<String>,
    body: String,
    headers: reqwest::header::HeaderMap,
}

async fn post(gw: &TestGateway, path: &str, authorization: &[&str]) -> Answer {
    let mut headers = JSON.to_vec();
    headers.extend(authorization.iter().map(|a| ("authorization", *a)));
    answer(write(Method::POST, &gw.at(path), &headers, "{}").await)
}

fn answer(res: support::http::Answer) -> Answer {
    Answer {
        status: res.status,
        challenge: res.header("www-authenticate").map(str::to_owned),
        body: res.text(),
        headers: res.headers,
    }
}

/// Expected status, `WWW-Authenticate` and problem type.
type Expect = (u16, Option<&'static str>, Option<&'static str>);

const UNAUTHORIZED: Expect = (401, Some("Bearer"), Some("unauthorized"));
const INVALID: Expect = (
    401,
    Some("Bearer error=\"invalid_token\""),
    Some("invalid-token"),
);
const ACCEPTED: Expect = (202, None, None);

/// Status, `WWW-Authenticate` and problem type of an answer, plus the hygiene every auth
/// failure must have: problem+json, `no-store`, and no trace of the token in the body.
fn check(row: &str, a: &Answer, expected: Expect, token: &str) {
    let (status, challenge, problem) = expected;
    assert_eq!(a.status, status, "{row}: status (body {})", a.body);
    assert_eq!(a.challenge.as_deref(), challenge, "{row}: WWW-Authenticate");
    if let Some(problem) = problem {
        let body: Value = serde_json::from_str(&a.body).unwrap();
        assert_eq!(
            body["type"],
            format!("urn:amqp-gateway:problem:{problem}"),
            "{row}"
        );
        assert_eq!(
            a.headers["content-type"], "application/problem+json",
            "{row}"
        );
        assert_eq!(a.headers["cache-control"], "no-store", "{row}");
    }
    if token.len() > 8 {
        for part in token.split('.').filter(|p| p.len() > 8) {
            assert!(!a.body.contains(part), "{row}: the body echoes the token");
        }
    }
}

#[tokio::test]
async fn attack_table() {
    let s = setup("", "").await;
    let alice = claims("alice", &[], "");
    let with = |patch: Value| {
        let mut c = alice.clone();
        for (k, v) in patch.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        c
    };
    let valid = hs(&alice);
    let (valid_head, rest) = valid.split_once('.').unwrap();
    let valid_sig = rest.split_once('.').unwrap().1;

    // HS256 tokens whose HMAC key is the RSA public key (PEM bytes), under the RS key's kid
    // and without kid (scenario 42).
    let confused = |kid: Option<&str>| {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = kid.map(str::to_owned);
        encode(&h, &alice, &EncodingKey::from_secret(&pem("rsa1.pub.pem"))).unwrap()
    };
    let tampered = format!(
        "{valid_head}.{}.{valid_sig}",
        b64(&with(json!({"realm_access": {"roles": ["admin"]}})))
    );
    let with_kid = |kid: &str| {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some(kid.to_owned());
        encode(&h, &alice, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap()
    };
    let with_typ = |typ: &str| {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some("hs".into());
        h.typ = Some(typ.into());
        encode(&h, &alice, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap()
    };
    let none = |alg: &str, sig: &str| {
        format!(
            "{}.{}.{sig}",
            b64(&json!({"alg": alg, "typ": "JWT", "kid": "hs"})),
            b64(&alice)
        )
    };

    // (row, Authorization headers, expected)
    let rows: Vec<(&str, Vec<String>, Expect)> = vec![
        ("no token", vec![], UNAUTHORIZED),
        (
            "Basic scheme",
            vec!["Basic YWxpY2U6cHc=".into()],
            UNAUTHORIZED,
        ),
        ("Bearer without token", vec!["Bearer".into()], INVALID),
        (
            "alg none, no signature",
            vec![bearer(&none("none", ""))],
            INVALID,
        ),
        ("alg None", vec![bearer(&none("None", ""))], INVALID),
        (
            "alg NONE with signature",
            vec![bearer(&none("NONE", valid_sig))],
            INVALID,
        ),
        (
            "HS256 signed with the RSA public key, kid rs",
            vec![bearer(&confused(Some("rs")))],
            INVALID,
        ),
        (
            "HS256 signed with the RSA public key, no kid",
            vec![bearer(&confused(None))],
            INVALID,
        ),
        (
            "expired beyond leeway",
            vec![bearer(&hs(&with(json!({"exp": now() - 120}))))],
            INVALID,
        ),
        (
            "not yet valid",
            vec![bearer(&hs(&with(json!({"nbf": now() + 120}))))],
            INVALID,
        ),
        (
            "wrong iss",
            vec![bearer(&hs(&with(json!({"iss": "https://evil.test"}))))],
            INVALID,
        ),
        (
            "wrong aud",
            vec![bearer(&hs(&with(json!({"aud": "another-api"}))))],
            INVALID,
        ),
        (
            "missing exp",
            vec![bearer(&hs(&with(json!({"exp": null}))))],
            INVALID,
        ),
        (
            "missing iss",
            vec![bearer(&hs(&with(json!({"iss": null}))))],
            INVALID,
        ),
        (
            "missing aud",
            vec![bearer(&hs(&with(json!({"aud": null}))))],
            INVALID,
        ),
        (
            "missing sub",
            vec![bearer(&hs(&with(json!({"sub": null}))))],
            INVALID,
        ),
        (
            "exp as a string (GHSA-h395-gr6q-cpjc)",
            vec![bearer(&hs(&with(json!({"exp": "9999999999"}))))],
            INVALID,
        ),
        (
            "nbf as a string",
            vec![bearer(&hs(&with(json!({"nbf": "99999999999"}))))],
            INVALID,
        ),
        ("unknown kid", vec![bearer(&with_kid("nobody"))], INVALID),
        (
            "kid path injection",
            vec![bearer(&with_kid("../../dev/null"))],
            INVALID,
        ),
        (
            "kid URL",
            vec![bearer(&with_kid("http://127.0.0.1:1/jwks"))],
            INVALID,
        ),
        (
            "10 KB kid",
            vec![bearer(&with_kid(&"k".repeat(10_000)))],
            INVALID,
        ),
        ("tampered payload", vec![bearer(&tampered)], INVALID),
        (
            "typ logout+jwt",
            vec![bearer(&with_typ("logout+jwt"))],
            INVALID,
        ),
        ("one segment", vec![bearer("abc")], INVALID),
        (
            "two segments",
            vec![bearer(&format!("{valid_head}.e30"))],
            INVALID,
        ),
        (
            "four segments",
            vec![bearer(&format!("{valid}.x"))],
            INVALID,
        ),
        (
            "bad base64",
            vec![bearer(&format!("{valid_head}.!!!.{valid_sig}"))],
            INVALID,
        ),
        (
            "16 KB token (over the 8 KiB token limit)",
            vec![bearer(&format!(
                "{valid_head}.{}.{valid_sig}",
                "A".repeat(16 * 1024)
            ))],
            INVALID,
        ),
        (
            // Over server.max_header_bytes: hyper refuses the head before any auth code runs.
            "64 KB token",
            vec![bearer(&format!(
                "{valid_head}.{}.{valid_sig}",
                "A".repeat(64 * 1024)
            ))],
            (431, None, None),
        ),
        (
            "two Authorization headers",
            vec![bearer(&valid), bearer(&valid)],
            (
                400,
                Some("Bearer error=\"invalid_request\""),
                Some("invalid-auth-request"),
            ),
        ),
        // Positive controls: the same gateway accepts what it should.
        ("valid HS256", vec![bearer(&valid)], ACCEPTED),
        (
            "lower-case scheme, extra spaces",
            vec![format!("bearer   {valid}")],
            ACCEPTED,
        ),
        (
            "expired within leeway",
            vec![bearer(&hs(&with(json!({"exp": now() - 5}))))],
            ACCEPTED,
        ),
        ("typ at+jwt", vec![bearer(&with_typ("at+jwt"))], ACCEPTED),
        (
            "valid RS256",
            vec![bearer(&mint(Algorithm::RS256, Some("rs"), &alice))],
            ACCEPTED,
        ),
        (
            "valid ES256",
            vec![bearer(&mint(Algorithm::ES256, Some("es"), &alice))],
            ACCEPTED,
        ),
        (
            "valid EdDSA",
            vec![bearer(&mint(Algorithm::EdDSA, Some("ed"), &alice))],
            ACCEPTED,
        ),
        (
            "valid RS256 from the JWKS",
            vec![bearer(&mint_rsa2("j1", &alice))],
            ACCEPTED,
        ),
    ];
    let mut accepted = 0;
    for (row, auth, expected) in &rows {
        let headers: Vec<&str> = auth.iter().map(String::as_str).collect();
        let a = post(&s.gw, "/w/any", &headers).await;
        check(
            row,
            &a,
            *expected,
            auth.first().map_or("", |h| h.trim_start_matches("Bearer ")),
        );
        accepted += u32::from(expected.0 == 202);
    }

    // Token in the query string, with no header (scenario 51): not looked at.
    for param in ["access_token", "jwt"] {
        let res = write(
            Method::POST,
            &s.gw.at(&format!("/w/any?{param}={valid}")),
            JSON,
            "{}",
        )
        .await;
        check(&format!("?{param}="), &answer(res), UNAUTHORIZED, &valid);
    }

    // Confirmed publishes are queued before the 202: the count is exact now.
    assert_eq!(
        s.queue.count().await,
        accepted,
        "exactly the accepted rows published"
    );
}

#[tokio::test]
async fn role_and_scope_matrix_on_write_routes() {
    let s = setup("", "").await;
    let token = |roles: &[&str], scope: &str| hs(&claims("alice", roles, scope));
    // `scp` as an array (Okta, Azure-style) instead of `scope`.
    let scp = |scp: Value| {
        let mut c = claims("alice", &[], "");
        c.as_object_mut().unwrap().remove("scope");
        c["scp"] = scp;
        hs(&c)
    };
    let forbidden = |scope: Option<&'static str>| {
        (
            403,
            Some(match scope {
                None => "Bearer error=\"insufficient_scope\"",
                Some("users:write") => "Bearer error=\"insufficient_scope\", scope=\"users:write\"",
                Some(_) => "Bearer error=\"insufficient_scope\", scope=\"users:write users:ban\"",
            }),
            Some("insufficient-scope"),
        )
    };
    let rows = vec![
        ("open", None, ACCEPTED),
        ("open", Some(token(&[], "")), ACCEPTED),
        ("any", None, UNAUTHORIZED),
        ("any", Some(token(&[], "")), ACCEPTED),
        ("admin", None, UNAUTHORIZED),
        ("admin", Some(token(&["user"], "")), forbidden(None)),
        ("admin", Some(token(&["admin"], "")), ACCEPTED),
        ("admin-or-ops", Some(token(&["ops"], "")), ACCEPTED),
        ("admin-or-ops", Some(token(&["user"], "")), forbidden(None)),
        (
            "admin-and-ops",
            Some(token(&["admin"], "")),
            forbidden(None),
        ),
        (
            "admin-and-ops",
            Some(token(&["admin", "ops"], "")),
            ACCEPTED,
        ),
        (
            "write",
            Some(token(&["admin"], "users:read")),
            forbidden(Some("users:write")),
        ),
        (
            "write",
            Some(token(&[], "users:read users:write")),
            ACCEPTED,
        ),
        ("write", Some(scp(json!(["users:write"]))), ACCEPTED),
        (
            "write",
            Some(scp(json!("users:read users:write"))),
            ACCEPTED,
        ),
        (
            "write",
            Some(scp(json!(["users:read"]))),
            forbidden(Some("users:write")),
        ),
        (
            "write-and-ban",
            Some(token(&[], "users:write")),
            forbidden(Some("both")),
        ),
        (
            "write-and-ban",
            Some(token(&[], "users:ban users:write")),
            ACCEPTED,
        ),
        (
            "admin-writes",
            Some(token(&["admin"], "")),
            forbidden(Some("users:write")),
        ),
        (
            "admin-writes",
            Some(token(&[], "users:write")),
            forbidden(Some("users:write")),
        ),
        (
            "admin-writes",
            Some(token(&["admin"], "users:write")),
            ACCEPTED,
        ),
        // Roles are read from the configured path only: a top-level `roles` grants nothing.
        (
            "admin",
            Some(hs(&{
                let mut c = claims("alice", &[], "");
                c["roles"] = json!(["admin"]);
                c
            })),
            forbidden(None),
        ),
    ];
    let mut expected_keys = Vec::new();
    for (route, token, expected) in &rows {
        let auth: Vec<String> = token.iter().map(|t| bearer(t)).collect();
        let headers: Vec<&str> = auth.iter().map(String::as_str).collect();
        let a = post(&s.gw, &format!("/w/{route}"), &headers).await;
        check(
            &format!("{route} with {token:?}"),
            &a,
            *expected,
            token.as_deref().unwrap_or(""),
        );
        if expected.0 == 202 {
            expected_keys.push(route.to_string());
        }
    }
    let mut published: Vec<String> = s
        .queue
        .drain(Duration::from_millis(300))
        .await
        .iter()
        .map(|d| d.routing_key.to_string())
        .collect();
    published.sort();
    expected_keys.sort();
    assert_eq!(
        published, expected_keys,
        "exactly the allowed requests published"
    );
}

#[tokio::test]
async fn identity_goes_into_amqp_headers_and_forged_copies_never_do() {
    let s = setup("", "").await;
    let token = hs(&claims("alice", &["admin"], ""));
    let res = write(
        Method::POST,
        &s.gw.at("/w/admin"),
        &[
            ("authorization", &bearer(&token)),
            ("content-type", "application/json"),
            ("x-auth-sub", "mallory"),
            ("X-Auth-Email", "mallory@example.com"),
            ("x-auth-role", "root"),
        ],
        "{}",
    )
    .await;
    assert_eq!(res.status(), 202);
    let d = s.queue.expect(WAIT, "the admin event").await;
    assert_eq!(header_str(&d, "x-auth-sub").as_deref(), Some("alice"));
    assert_eq!(
        header_str(&d, "x-auth-email").as_deref(),
        Some("alice@example.com")
    );
    assert_eq!(header_str(&d, "x-auth-tenant").as_deref(), Some("t-1"));
    assert_eq!(header_str(&d, "x-auth-role"), None);
    // The token itself is never copied into the event.
    let all = format!("{:?} {:?}", d.properties, String::from_utf8_lossy(&d.data));
    assert!(!all.contains(token.split('.').nth(2).unwrap()));

    // A public route: no identity, and forged identity headers are dropped.
    let res = write(
        Method::POST,
        &s.gw.at("/w/open"),
        &[
            ("content-type", "application/json"),
            ("x-auth-sub", "mallory"),
        ],
        "{}",
    )
    .await;
    assert_eq!(res.status(), 202);
    let d = s.queue.expect(WAIT, "the open event").await;
    assert_eq!(header_str(&d, "x-auth-sub"), None);
}

#[tokio::test]
async fn jwks_unknown_kid_refetch_respects_the_cooldown() {
    const COOLDOWN: Duration = Duration::from_secs(1);
    // Periodic refresh out of the way: every fetch here is one an unknown kid asked for.
    let s = setup("jwks_cooldown = \"1s\"\njwks_refresh = \"1h\"", "").await;
    let alice = claims("alice", &[], "");
    // RSA signing is slow in debug builds: mint everything before the clock matters.
    let unknown = bearer(&mint_rsa2("j-unknown-1", &alice));
    let flood: Vec<String> = (0..50)
        .map(|i| bearer(&mint_rsa2(&format!("flood-{i}"), &alice)))
        .collect();
    let j2 = bearer(&mint_rsa2("j2", &alice));
    let mut foreign = alice.clone();
    foreign["iss"] = json!("https://elsewhere.test");
    let foreign = bearer(&mint_rsa2("j-foreign", &foreign));
    let unknown_again = bearer(&mint_rsa2("j-unknown-2", &alice));
    let fresh_j1 = bearer(&mint_rsa2("j1", &claims("bob", &[], "")));
    let fresh_j2 = bearer(&mint_rsa2("j2", &claims("carol", &[], "")));

    assert_eq!(s.jwks.fetches(), 1, "fetched once at start-up");
    assert_eq!(
        post(&s.gw, "/w/any", &[&bearer(&mint_rsa2("j1", &alice))])
            .await
            .status,
        202
    );

    // Once the start-up fetch's cooldown has passed, an unknown kid costs exactly one fetch…
    tokio::time::sleep(COOLDOWN + Duration::from_millis(100)).await;
    let started = Instant::now();
    check(
        "unknown kid",
        &post(&s.gw, "/w/any", &[&unknown]).await,
        INVALID,
        "",
    );
    assert_eq!(s.jwks.fetches(), 2);
    // …and a flood of unknown kids inside the cooldown costs none.
    for token in &flood {
        assert_eq!(post(&s.gw, "/w/any", &[token]).await.status, 401);
    }
    assert!(
        started.elapsed() < COOLDOWN,
        "the flood outlasted the cooldown; slow machine?"
    );
    assert_eq!(s.jwks.fetches(), 2, "no refetch inside the cooldown");

    // Rotation: j2 appears. Inside the cooldown it is still unknown; once the cooldown has
    // passed, one refetch lets it through.
    s.jwks.serve(&["j1", "j2"]);
    eventually(
        Duration::from_secs(5),
        "j2 accepted after the cooldown",
        async || post(&s.gw, "/w/any", &[&j2]).await.status == 202,
    )
    .await;
    assert_eq!(s.jwks.fetches(), 3, "one refetch for the rotation");

    // An unknown kid that does not name our issuer never costs a fetch.
    tokio::time::sleep(COOLDOWN + Duration::from_millis(100)).await;
    assert_eq!(post(&s.gw, "/w/any", &[&foreign]).await.status, 401);
    assert_eq!(
        s.jwks.fetches(),
        3,
        "a foreign issuer's unknown kid fetched nothing"
    );

    // The JWKS endpoint fails: the last good keys keep working (stale-if-error), also for
    // tokens never seen (so not served from the token cache).
    s.jwks.fail();
    assert_eq!(post(&s.gw, "/w/any", &[&unknown_again]).await.status, 401);
    assert_eq!(s.jwks.fetches(), 4, "the failed refetch happened");
    assert_eq!(post(&s.gw, "/w/any", &[&fresh_j1]).await.status, 202);
    assert_eq!(post(&s.gw, "/w/any", &[&fresh_j2]).await.status, 202);
}

#[tokio::test]
async fn jwks_refresh_rotates_keys_and_drops_removed_ones() {
    // Refresh every second; no unknown-kid refetch within the hour.
    let s = setup("jwks_refresh = \"1s\"\njwks_cooldown = \"1h\"", "").await;
    let alice = claims("alice", &[], "");
    let j1 = bearer(&mint_rsa2("j1", &alice));
    let j2 = bearer(&mint_rsa2("j2", &alice));
    assert_eq!(
        post(&s.gw, "/w/any", &[&j1]).await.status,
        202,
        "j1 (and cached)"
    );
    assert_eq!(
        post(&s.gw, "/w/any", &[&j2]).await.status,
        401,
        "j2 not yet"
    );
    s.jwks.serve(&["j2"]);
    let before = s.jwks.fetches();
    eventually(Duration::from_secs(5), "a periodic refresh", async || {
        s.jwks.fetches() > before
    })
    .await;
    eventually(Duration::from_secs(5), "j2 accepted", async || {
        post(&s.gw, "/w/any", &[&j2]).await.status == 202
    })
    .await;
    // j1 was verified and cached before; its key is gone, and so is the cached identity.
    let a = post(&s.gw, "/w/any", &[&j1]).await;
    check("removed key", &a, INVALID, "");
}

#[tokio::test]
async fn startup_fails_when_a_jwks_url_cannot_be_fetched() {
    let dead = format!("http://127.0.0.1:{}/jwks", free_port());
    let config = format!(
        "{base}\n{auth}\n[[routes]]\nname = \"r\"\npath = \"/r\"\nmethods = [\"POST\"]\npublish = {{ exchange = \"\", routing_key = \"q\" }}\n",
        base = base_config(&amqp_url()),
        auth = auth_section(&dead, "jwks_timeout = \"1s\""),
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
    let err = result.unwrap_err().to_string();
    assert!(err.contains("auth.keys[4].jwks_url"), "{err}");
}

#[tokio::test]
async fn cors_preflight_is_answered_without_auth() {
    let extra = "[[routes]]\nname = \"nocors\"\npath = \"/nocors\"\nmethods = [\"POST\"]\nauth = \"public\"\ncors = false\npublish = { exchange = \"\", routing_key = \"nowhere\" }\n";
    let s = setup("", extra).await;
    let client = reqwest::Client::new();
    let preflight = |path: &str, origin: &str| {
        client
            .request(reqwest::Method::OPTIONS, s.gw.at(path))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization, content-type",
            )
            .send()
    };
    let res = preflight("/w/admin", "https://app.example").await.unwrap();
    assert_eq!(
        res.status(),
        200,
        "preflight needs no token and is not a 405"
    );
    let h = res.headers();
    assert_eq!(h["access-control-allow-origin"], "https://app.example");
    assert_eq!(h["access-control-allow-methods"], "POST");
    let allowed = h["access-control-allow-headers"].to_str().unwrap();
    assert!(
        allowed.contains("authorization") && allowed.contains("content-type"),
        "{allowed}"
    );
    assert!(h.get("www-authenticate").is_none());

    // Another origin gets no Access-Control-Allow-Origin: the browser blocks the call.
    let res = preflight("/w/admin", "https://evil.example").await.unwrap();
    assert!(res.headers().get("access-control-allow-origin").is_none());

    // The real request without a token: 401, readable by the page (CORS headers present).
    let res = write(
        Method::POST,
        &s.gw.at("/w/admin"),
        &[
            ("origin", "https://app.example"),
            ("content-type", "application/json"),
        ],
        "{}",
    )
    .await;
    let a = answer(res);
    check("cross-origin without token", &a, UNAUTHORIZED, "");
    assert_eq!(
        a.headers["access-control-allow-origin"],
        "https://app.example"
    );
    let exposed = a.headers["access-control-expose-headers"].to_str().unwrap();
    assert!(exposed.contains("www-authenticate"), "{exposed}");

    // A route with `cors = false`: no preflight answer, plain 405.
    let res = preflight("/nocors", "https://app.example").await.unwrap();
    assert_eq!(res.status(), 405);
    assert!(res.headers().get("access-control-allow-origin").is_none());
    assert_eq!(s.queue.count().await, 0, "nothing published");
}

#[tokio::test]
async fn read_routes_enforce_the_same_rules() {
    let origin = Origin::start("users").await;
    let extra = [
        upstream("users", &origin.url),
        read_route("read-open", "/r/open", "users", ""),
        read_route(
            "read-admin",
            "/r/admin",
            "users",
            "auth = { roles = [\"admin\"] }",
        ),
        read_route(
            "read-scoped",
            "/r/scoped",
            "users",
            "methods = [\"GET\"]\nauth = { scopes = [\"users:read\"] }",
        ),
    ]
    .concat();
    let s = setup("", &extra).await;
    let get = async |path: &str, token: Option<&str>| {
        let mut headers = vec![("x-auth-sub", "mallory".to_owned())];
        if let Some(t) = token {
            headers.push(("authorization", bearer(t)));
        }
        let headers = headers.iter().map(|(k, v)| (*k, v.as_bytes()));
        answer(support::http::send(Method::GET, &s.gw.at(path), headers).await)
    };
    let admin = hs(&claims("alice", &["admin"], "users:read"));
    let user = hs(&claims("bob", &["user"], ""));
    let expired = hs(&{
        let mut c = claims("alice", &["admin"], "");
        c["exp"] = json!(now() - 3600);
        c
    });
    let rows: Vec<(&str, Option<&str>, Expect)> = vec![
        ("/r/open", None, (200, None, None)),
        ("/r/admin", None, UNAUTHORIZED),
        ("/r/admin", Some(&expired), INVALID),
        (
            "/r/admin",
            Some(&user),
            (
                403,
                Some("Bearer error=\"insufficient_scope\""),
                Some("insufficient-scope"),
            ),
        ),
        ("/r/admin", Some(&admin), (200, None, None)),
        (
            "/r/scoped",
            Some(&user),
            (
                403,
                Some("Bearer error=\"insufficient_scope\", scope=\"users:read\""),
                Some("insufficient-scope"),
            ),
        ),
        ("/r/scoped", Some(&admin), (200, None, None)),
    ];
    for (path, token, expected) in &rows {
        let a = get(path, *token).await;
        check(
            &format!("GET {path} {token:?}"),
            &a,
            *expected,
            token.unwrap_or(""),
        );
    }
    // Rejected reads never reach the upstream; accepted ones never carry a forged identity.
    assert_eq!(origin.hits("/r/admin"), 1);
    assert_eq!(origin.hits("/r/scoped"), 1);
    for seen in origin.seen() {
        assert_ne!(
            seen.headers.get("x-auth-sub").map(|v| v.to_str().unwrap()),
            Some("mallory"),
            "forged identity reached the upstream: {}",
            seen.uri
        );
    }
}

#[tokio::test]
async fn read_routes_propagate_identity_and_key_private_cache_by_subject() {
    let origin = Origin::start("users").await;
    let extra = upstream("users", &origin.url)
        + &read_route(
            "me",
            "/me/{*rest}",
            "users",
            "methods = [\"GET\"]\nauth = \"authenticated\"\ncache = { ttl = \"60s\" }",
        );
    let s = setup("", &extra).await;
    let client = reqwest::Client::new();
    let get = async |path: &str, token: &str| {
        let res = client
            .get(s.gw.at(path))
            .header("authorization", bearer(token))
            .header("x-auth-sub", "mallory")
            .send()
            .await
            .unwrap();
        let x_cache = res.headers()["x-cache"].to_str().unwrap().to_owned();
        (x_cache, res.text().await.unwrap())
    };
    let mut alice_claims = claims("alice", &["user"], "");
    alice_claims["email"] = json!("alice@example.com");
    let alice = hs(&alice_claims);
    let alice_again = hs(&{
        let mut c = alice_claims.clone();
        c["jti"] = json!("another-token-same-subject");
        c
    });
    let bob = hs(&claims("bob", &["user"], ""));

    // Private (no `public`/`s-maxage`): one entry per subject.
    let private = "/me/profile?cc=max-age%3D60";
    assert_eq!(get(private, &alice).await.0, "MISS");
    let (x, body) = get(private, &bob).await;
    assert_eq!(x, "MISS", "bob must not be served alice's entry: {body}");
    assert_eq!(
        get(private, &alice_again).await.0,
        "HIT",
        "same subject, another token"
    );
    assert_eq!(origin.hits("/me/profile"), 2);

    // Marked public by the upstream: shared across subjects.
    let shared = "/me/news?cc=public%2C%20max-age%3D60";
    assert_eq!(get(shared, &alice).await.0, "MISS");
    assert_eq!(get(shared, &bob).await.0, "HIT");

    // The upstream sees the verified identity, never the forged header.
    let seen = origin.seen();
    let first = &seen[0];
    assert_eq!(first.headers["x-auth-sub"], "alice");
    assert_eq!(first.headers["x-auth-email"], "alice@example.com");
    assert_eq!(seen[1].headers["x-auth-sub"], "bob");
    assert!(seen.iter().all(|s| s.headers["x-auth-sub"] != "mallory"));
    assert!(
        seen.iter()
            .all(|s| !s.headers.contains_key("authorization"))
    );
}

/// Hardening of the claims checks over HTTP: a `crit` header, a lifetime over
/// `auth.max_token_lifetime`, an `exp` at u64::MAX (no overflow: refused here for its lifetime,
/// served twice — verified, then cached — on a gateway without the option), a `roles` string.
#[tokio::test]
async fn crit_lifetime_huge_exp_and_a_roles_string() {
    let s = setup(r#"max_token_lifetime = "1h""#, "").await;
    let mut crit = Header::new(Algorithm::HS256);
    crit.kid = Some("hs".into());
    crit.crit = Some(vec!["exp".into()]);
    let alice = claims("alice", &["admin"], "");
    let crit_token = encode(&crit, &alice, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap();
    let mut long = alice.clone();
    long["exp"] = json!(now() + 2 * 3600);
    let mut huge = alice.clone();
    huge["exp"] = json!(u64::MAX);
    for (row, token) in [
        ("crit header", crit_token),
        ("2h lifetime over a 1h maximum", hs(&long)),
        ("exp = u64::MAX over a 1h maximum", hs(&huge)),
    ] {
        let a = post(&s.gw, "/w/any", &[&bearer(&token)]).await;
        check(row, &a, INVALID, &token);
    }
    let a = post(&s.gw, "/w/any", &[&bearer(&hs(&alice))]).await;
    check("a 5-minute token", &a, ACCEPTED, "");
    // Only the 5-minute token was published.
    assert!(s.queue.next(WAIT).await.is_some());
    assert!(s.queue.next(Duration::from_millis(300)).await.is_none());

    let unbounded = setup("", "").await;
    for round in ["verified", "cached"] {
        let a = post(&unbounded.gw, "/w/any", &[&bearer(&hs(&huge))]).await;
        check(&format!("exp = u64::MAX, {round}"), &a, ACCEPTED, "");
    }
    // A roles claim that is one space-separated string grants each role in it.
    let mut roles = claims("bob", &[], "");
    roles["realm_access"] = json!({"roles": "editor admin"});
    let a = post(&unbounded.gw, "/w/admin", &[&bearer(&hs(&roles))]).await;
    check("roles \"editor admin\" on an admin route", &a, ACCEPTED, "");
    roles["realm_access"] = json!({"roles": "editor administrator"});
    let a = post(&unbounded.gw, "/w/admin", &[&bearer(&hs(&roles))]).await;
    assert_eq!(a.status, 403, "no role is matched by substring: {}", a.body);
}
