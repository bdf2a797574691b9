//! Token verification without HTTP: every key type, every claim rule, the header parser and
//! the token cache. The same attacks run over real HTTP in `tests/auth.rs`.

use std::path::PathBuf;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::HeaderValue;
use jsonwebtoken::{Algorithm, EncodingKey, encode};
use serde_json::json;

use super::*;

const SECRET: &str = "unit-test-secret-unit-test-secret-0123456789";

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/keys")
        .join(name)
}

fn config(extra: &str) -> AuthConfig {
    AuthConfig::from_table(&config_text(extra))
}

fn config_text(extra: &str) -> String {
    format!(
        r#"
issuer = "https://issuer.test"
audience = "api"
leeway = "5s"
roles_claim = "realm_access.roles"
propagate_claims = {{ email = "email" }}
{extra}
[[keys]]
kid = "hs"
algorithm = "HS256"
secret = "{SECRET}"
[[keys]]
kid = "rs"
algorithm = "RS256"
public_key_pem = "{rs}"
[[keys]]
kid = "ps"
algorithm = "PS256"
public_key_pem = "{rs}"
[[keys]]
kid = "es"
algorithm = "ES256"
public_key_pem = "{es}"
[[keys]]
kid = "es384"
algorithm = "ES384"
public_key_pem = "{es384}"
[[keys]]
kid = "ed"
algorithm = "EdDSA"
public_key_pem = "{ed}"
[[keys]]
algorithm = "HS384"
secret = "{SECRET}{SECRET}"
"#,
        rs = fixture("rsa1.pub.pem").display(),
        es = fixture("ec256.pub.pem").display(),
        es384 = fixture("ec384.pub.pem").display(),
        ed = fixture("ed25519.pub.pem").display(),
    )
}

async fn authenticator() -> Authenticator {
    Authenticator::start(&config("")).await.unwrap()
}

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

fn claims() -> Value {
    json!({
        "sub": "alice", "iss": "https://issuer.test", "aud": "api",
        "exp": now() + 300, "iat": now(),
        "realm_access": {"roles": ["admin"]}, "scope": "users:write",
        "email": "alice@example.com",
    })
}

fn sign(alg: Algorithm, kid: Option<&str>, claims: &Value) -> String {
    let key = match alg {
        Algorithm::HS256 => EncodingKey::from_secret(SECRET.as_bytes()),
        Algorithm::HS384 => EncodingKey::from_secret(format!("{SECRET}{SECRET}").as_bytes()),
        Algorithm::RS256 | Algorithm::PS256 => {
            EncodingKey::from_rsa_pem(&std::fs::read(fixture("rsa1.key")).unwrap()).unwrap()
        }
        Algorithm::ES256 => {
            EncodingKey::from_ec_pem(&std::fs::read(fixture("ec256.key")).unwrap()).unwrap()
        }
        Algorithm::ES384 => {
            EncodingKey::from_ec_pem(&std::fs::read(fixture("ec384.key")).unwrap()).unwrap()
        }
        Algorithm::EdDSA => {
            EncodingKey::from_ed_pem(&std::fs::read(fixture("ed25519.key")).unwrap()).unwrap()
        }
        other => panic!("no test key for {other:?}"),
    };
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    encode(&header, claims, &key).unwrap()
}

fn hs(claims: &Value) -> String {
    sign(Algorithm::HS256, Some("hs"), claims)
}

/// A token with a hand-made header and payload and a given signature segment.
fn raw(header: &Value, payload: &Value, signature: &str) -> String {
    let b = |v: &Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap());
    format!("{}.{}.{signature}", b(header), b(payload))
}

async fn reason(auth: &Authenticator, token: &str) -> &'static str {
    match auth.verify(token).await {
        Ok(id) => panic!("token accepted as {}", id.subject),
        Err(r) => r.reason(),
    }
}

#[tokio::test]
async fn every_key_type_verifies_with_its_own_algorithm() {
    let auth = authenticator().await;
    for (alg, kid) in [
        (Algorithm::HS256, Some("hs")),
        (Algorithm::RS256, Some("rs")),
        (Algorithm::PS256, Some("ps")),
        (Algorithm::ES256, Some("es")),
        (Algorithm::ES384, Some("es384")),
        (Algorithm::EdDSA, Some("ed")),
        (Algorithm::HS384, None),
    ] {
        let id = auth
            .verify(&sign(alg, kid, &claims()))
            .await
            .unwrap_or_else(|r| panic!("{alg:?}: {}", r.reason()));
        assert_eq!(id.subject, "alice");
        assert_eq!(id.roles, ["admin"]);
        assert_eq!(id.scopes, ["users:write"]);
        assert_eq!(
            id.headers().collect::<Vec<_>>(),
            [
                ("x-auth-sub", "alice"),
                ("x-auth-email", "alice@example.com")
            ]
        );
    }
}

#[tokio::test]
async fn algorithm_is_fixed_by_the_key() {
    let auth = authenticator().await;
    // RS256 token presented with the PS256 key's kid, and the reverse.
    assert_eq!(
        reason(&auth, &sign(Algorithm::RS256, Some("ps"), &claims())).await,
        "alg-mismatch"
    );
    assert_eq!(
        reason(&auth, &sign(Algorithm::PS256, Some("rs"), &claims())).await,
        "alg-mismatch"
    );
    // HS/RS confusion: an HS256 token whose HMAC key is the RSA public key PEM, under the RSA
    // key's kid (scenario 42).
    let pem = std::fs::read(fixture("rsa1.pub.pem")).unwrap();
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("rs".into());
    let forged = encode(&header, &claims(), &EncodingKey::from_secret(&pem)).unwrap();
    assert_eq!(reason(&auth, &forged).await, "alg-mismatch");
    // Same without kid: the HS256 key-less candidates are HS384 only.
    let forged = encode(
        &Header::new(Algorithm::HS256),
        &claims(),
        &EncodingKey::from_secret(&pem),
    )
    .unwrap();
    assert_eq!(reason(&auth, &forged).await, "no-key");
}

#[tokio::test]
async fn alg_none_in_every_spelling_is_refused() {
    let auth = authenticator().await;
    for alg in ["none", "None", "NONE", "nOnE"] {
        for sig in ["", "c2ln"] {
            let token = raw(&json!({"alg": alg, "kid": "hs"}), &claims(), sig);
            assert_eq!(reason(&auth, &token).await, "malformed", "{alg} {sig:?}");
        }
    }
}

#[tokio::test]
async fn claim_rules() {
    let auth = authenticator().await;
    let with = |patch: Value| {
        let mut c = claims();
        for (k, v) in patch.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        hs(&c)
    };
    let cases = [
        (json!({"exp": now() - 60}), "expired"),
        (json!({"exp": null}), "missing-claim"),
        (json!({"iss": null}), "missing-claim"),
        (json!({"aud": null}), "missing-claim"),
        (json!({"sub": null}), "missing-claim"),
        (json!({"iss": "https://evil.test"}), "wrong-issuer"),
        (json!({"aud": "other-api"}), "wrong-audience"),
        (json!({"aud": ["other-api", "x"]}), "wrong-audience"),
        (json!({"nbf": now() + 60}), "not-yet-valid"),
        // Scenario 47, GHSA-h395-gr6q-cpjc: type-confused claims must not skip validation.
        // A string `exp` does not count as the required numeric `exp`.
        (json!({"exp": "9999999999"}), "missing-claim"),
        (json!({"nbf": "99999999999"}), "bad-claim"),
        (json!({"sub": 42}), "missing-claim"),
        (json!({"sub": "a\r\nX-Injected: 1"}), "bad-subject"),
    ];
    for (patch, expected) in cases {
        let token = with(patch.clone());
        assert_eq!(reason(&auth, &token).await, expected, "{patch}");
    }
    // Within the leeway (5s): accepted, both ways.
    assert!(auth.verify(&with(json!({"exp": now() - 2}))).await.is_ok());
    assert!(auth.verify(&with(json!({"nbf": now() + 2}))).await.is_ok());
    // aud as an array containing ours.
    assert!(
        auth.verify(&with(json!({"aud": ["x", "api"]})))
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn tampering_kid_and_typ() {
    let auth = authenticator().await;
    let token = hs(&claims());
    let mut parts: Vec<&str> = token.split('.').collect();
    let mut evil = claims();
    evil["realm_access"]["roles"] = json!(["admin", "root"]);
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&evil).unwrap());
    parts[1] = &payload;
    assert_eq!(reason(&auth, &parts.join(".")).await, "bad-signature");

    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("nope".into());
    let key = EncodingKey::from_secret(SECRET.as_bytes());
    assert_eq!(
        reason(&auth, &encode(&header, &claims(), &key).unwrap()).await,
        "unknown-kid"
    );
    for kid in ["../../dev/null", "' OR 1=1 --", "http://evil/jwks"] {
        header.kid = Some(kid.into());
        let token = encode(&header, &claims(), &key).unwrap();
        assert_eq!(reason(&auth, &token).await, "unknown-kid", "{kid}");
    }
    header.kid = Some("k".repeat(10_000));
    let token = encode(&header, &claims(), &key).unwrap();
    assert_eq!(reason(&auth, &token).await, "too-large");

    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("hs".into());
    for (typ, ok) in [
        ("JWT", true),
        ("at+jwt", true),
        ("logout+jwt", false),
        ("JWE", false),
    ] {
        header.typ = Some(typ.into());
        let result = auth
            .verify(&encode(&header, &claims(), &key).unwrap())
            .await;
        assert_eq!(result.is_ok(), ok, "typ {typ}");
    }
}

#[tokio::test]
async fn malformed_tokens_fail_fast() {
    let auth = authenticator().await;
    let valid = hs(&claims());
    let (head, _) = valid.split_once('.').unwrap();
    for bad in [
        "a",
        "a.b",
        "a.b.c.d",
        "!!!.???.***",
        &format!("{head}.%%%.sig"),
        &format!("{head}..sig"),
        "eyJhbGciOiJIUzI1NiJ9.e30.",
    ] {
        assert!(auth.verify(bad).await.is_err(), "{bad}");
    }
    // Deeply nested JSON in the payload.
    let nested = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let token = format!(
        "{head}.{}.{}",
        URL_SAFE_NO_PAD.encode(nested),
        valid.rsplit('.').next().unwrap()
    );
    assert!(auth.verify(&token).await.is_err());
    let huge = format!("{head}.{}.x", "a".repeat(MAX_TOKEN_BYTES));
    assert_eq!(reason(&auth, &huge).await, "too-large");
}

#[test]
fn bearer_header_parsing() {
    let parse = |values: &[&str]| {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        }
        bearer_token(&h).map(str::to_owned)
    };
    assert_eq!(parse(&[]), Err(Rejection::Missing));
    assert_eq!(parse(&["Basic dXNlcjpwYXNz"]), Err(Rejection::Missing));
    assert_eq!(parse(&["Token abc"]), Err(Rejection::Missing));
    assert_eq!(parse(&["Bearer a.b.c"]), Ok("a.b.c".into()));
    assert_eq!(parse(&["bearer a.b.c"]), Ok("a.b.c".into()));
    assert_eq!(parse(&["BEARER   a.b.c  "]), Ok("a.b.c".into()));
    assert_eq!(parse(&["Bearer"]), Err(Rejection::InvalidToken("empty")));
    assert_eq!(
        parse(&["Bearer a.b c"]),
        Err(Rejection::InvalidToken("malformed"))
    );
    assert_eq!(
        parse(&["Bearer a.b.c", "Bearer a.b.c"]),
        Err(Rejection::InvalidRequest("duplicate-authorization"))
    );
}

#[tokio::test]
async fn verified_tokens_are_cached_and_bounded_by_exp() {
    let auth = authenticator().await;
    let cache = auth.inner.cache.clone().unwrap();
    let token = hs(&claims());
    auth.verify(&token).await.unwrap();
    auth.verify(&token).await.unwrap();
    cache.run_pending_tasks();
    assert_eq!(cache.entry_count(), 1);
    // The key is the token's hash, never the token.
    let digest: [u8; 32] = Sha256::digest(&token).into();
    assert!(cache.contains_key(&digest));
    // An entry whose `exp` has passed is not served, whatever the cache's own expiry says.
    let mut expired = claims();
    expired["exp"] = json!(now() - 60);
    let stale = Identity::new(super::super::identity::IdentityData {
        subject: "mallory".into(),
        roles: vec![],
        scopes: vec![],
        propagated: vec![],
        expires_at: now() - 60,
    });
    let expired_token = hs(&expired);
    cache.insert(Sha256::digest(&expired_token).into(), stale);
    assert_eq!(reason(&auth, &expired_token).await, "expired");

    let uncached = Authenticator::start(&config("token_cache_size = 0"))
        .await
        .unwrap();
    assert!(uncached.inner.cache.is_none());
    assert!(uncached.verify(&token).await.is_ok());
}

/// `claims()` with `patch` applied (`null` removes a claim).
fn patched(patch: Value) -> Value {
    let mut c = claims();
    for (k, v) in patch.as_object().unwrap() {
        if v.is_null() {
            c.as_object_mut().unwrap().remove(k);
        } else {
            c[k] = v.clone();
        }
    }
    c
}

#[tokio::test]
async fn a_crit_header_is_refused_whatever_it_lists() {
    let auth = authenticator().await;
    // Properly signed with the right key: only `crit` is wrong. jsonwebtoken itself ignores it.
    for crit in [vec!["b64".to_owned()], vec!["exp".to_owned()], vec![]] {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("hs".into());
        header.crit = Some(crit.clone());
        let token = encode(
            &header,
            &claims(),
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        assert_eq!(reason(&auth, &token).await, "crit", "crit = {crit:?}");
    }
    // A crit that is not a list of strings does not parse as a header at all.
    let token = raw(
        &json!({"alg": "HS256", "kid": "hs", "crit": "b64"}),
        &claims(),
        "sig",
    );
    assert_eq!(reason(&auth, &token).await, "malformed");
}

#[tokio::test]
async fn max_token_lifetime_bounds_exp_minus_iat() {
    let auth = Authenticator::start(&config(r#"max_token_lifetime = "1h""#))
        .await
        .unwrap();
    let n = now();
    for ok in [
        json!({"iat": n, "exp": n + 3600}),
        json!({"iat": null, "exp": n + 3000}),
        // Issued a while ago: what counts is exp - iat.
        json!({"iat": n - 3000, "exp": n + 500}),
    ] {
        assert!(auth.verify(&hs(&patched(ok.clone()))).await.is_ok(), "{ok}");
    }
    for too_long in [
        json!({"iat": n, "exp": n + 3601}),
        json!({"iat": null, "exp": n + 7200}),
        // An iat in the future cannot shorten the life that is left.
        json!({"iat": n + 7000, "exp": n + 7200}),
        json!({"iat": n, "exp": u64::MAX}),
        json!({"iat": 0, "exp": n + 60}),
        json!({"iat": "yesterday", "exp": n + 60}),
    ] {
        assert_eq!(
            reason(&auth, &hs(&patched(too_long.clone()))).await,
            "lifetime-too-long",
            "{too_long}"
        );
    }
    // Without the option, a long-lived token is fine.
    let unbounded = authenticator().await;
    assert!(
        unbounded
            .verify(&hs(&patched(json!({"exp": n + 10 * 365 * 86400}))))
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn huge_exp_neither_panics_nor_wraps() {
    // `exp + leeway` overflowed u64 in the cache expiry and in the cache-hit check (a panic in
    // debug builds, a wrap in release). Each token is verified twice: once by signature (and
    // cached), once from the cache.
    let auth = authenticator().await;
    for exp in [json!(u64::MAX), json!(u64::MAX - 1), json!(i64::MAX)] {
        let token = hs(&patched(json!({ "exp": exp.clone() })));
        for round in 0..2 {
            let verified = auth.verify(&token).await;
            assert!(
                verified.is_ok(),
                "exp = {exp}, round {round}: {:?}",
                verified.err()
            );
        }
    }
    auth.inner.cache.as_ref().unwrap().run_pending_tasks();
    // An exp beyond u64 (a float) is not a NumericDate jsonwebtoken takes: refused, no panic.
    assert_eq!(
        reason(&auth, &hs(&patched(json!({"exp": 1e300})))).await,
        "missing-claim"
    );
    // A past or negative exp is still expired, cached or not.
    for exp in [json!(-1), json!(0), json!(now() - 3600)] {
        let token = hs(&patched(json!({ "exp": exp.clone() })));
        let r = reason(&auth, &token).await;
        assert!(
            matches!(r, "expired" | "bad-claim" | "missing-claim"),
            "exp = {exp}: {r}"
        );
    }
}

#[tokio::test]
async fn a_roles_string_is_a_space_separated_list() {
    let auth = authenticator().await;
    for (roles, expected) in [
        (json!("admin"), vec!["admin"]),
        (json!("admin editor"), vec!["admin", "editor"]),
        (json!("  admin   editor "), vec!["admin", "editor"]),
        (json!(["admin editor"]), vec!["admin editor"]),
        (json!(42), vec![]),
    ] {
        let token = hs(&patched(
            json!({ "realm_access": { "roles": roles.clone() } }),
        ));
        let identity = auth.verify(&token).await.unwrap();
        assert_eq!(identity.roles, expected, "roles = {roles}");
    }
}
