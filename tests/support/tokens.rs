//! Bearer tokens for tests: the test issuer, audience and HS256 secret, claims, minting with the
//! fixture keys (`tests/fixtures/keys`), and the `[auth]` section that verifies them.

use std::path::PathBuf;

use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};

/// The HS256 secret of key `hs`.
pub const SECRET: &str = "integration-test-secret-0123456789abcdef";
/// The required `iss`.
pub const ISS: &str = "https://issuer.test";
/// The required `aud`.
pub const AUD: &str = "gateway-tests";

/// A file of `tests/fixtures/keys`.
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/keys")
        .join(name)
}

/// The bytes of a fixture key.
pub fn pem(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).unwrap()
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

/// Claims of a valid token for `sub` with these roles and scope string; `email` is
/// `<sub>@example.com`, the tenant (`org.tenant`) is `t-1`.
pub fn claims(sub: &str, roles: &[&str], scope: &str) -> Value {
    json!({
        "sub": sub, "iss": ISS, "aud": AUD, "iat": now(), "exp": now() + 300,
        "realm_access": {"roles": roles}, "scope": scope,
        "email": format!("{sub}@example.com"), "org": {"tenant": "t-1"},
    })
}

/// A token for `claims` signed with the fixture key of `alg`, under `kid`.
pub fn mint(alg: Algorithm, kid: Option<&str>, claims: &Value) -> String {
    let key = match alg {
        Algorithm::HS256 => EncodingKey::from_secret(SECRET.as_bytes()),
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem("rsa1.key")).unwrap(),
        Algorithm::ES256 => EncodingKey::from_ec_pem(&pem("ec256.key")).unwrap(),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem("ed25519.key")).unwrap(),
        other => panic!("no test key for {other:?}"),
    };
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    encode(&header, claims, &key).unwrap()
}

/// An HS256 token (key `hs`).
pub fn hs(claims: &Value) -> String {
    mint(Algorithm::HS256, Some("hs"), claims)
}

/// `Bearer <token>`.
pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// The `[auth]` section: issuer, audience, roles from `realm_access.roles`, claims `email` and
/// `tenant` (`org.tenant`) propagated, and key `hs` (HS256, [`SECRET`]). `settings` adds or
/// overrides `[auth]` settings; `more_keys` appends `[[auth.keys]]` tables.
pub fn auth_section(settings: &str, more_keys: &str) -> String {
    format!(
        r#"
[auth]
issuer = "{ISS}"
audience = "{AUD}"
leeway = "30s"
roles_claim = "realm_access.roles"
propagate_claims = {{ email = "email", tenant = "org.tenant" }}
{settings}

[[auth.keys]]
kid = "hs"
algorithm = "HS256"
secret = "{SECRET}"
{more_keys}
"#
    )
}
