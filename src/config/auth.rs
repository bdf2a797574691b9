//! Who may call: `[auth]` (token verification keys and claim rules), `[cors]`, and the
//! per-route `auth = {...}` policy, with their validation rules.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::route::AuthPolicy;
use super::{AUTH_HEADER_PREFIX, Invalid, Secret, invalid};
use crate::keys::{self, JwsAlgorithm, VerifyKey};
use crate::tls::{ClientTls, TlsSettings};

/// `[auth]` as written: how bearer tokens are verified. Optional while every route is public.
///
/// Every token must carry `exp`, `iss`, `aud` and `sub`; `nbf` is enforced when present.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAuthConfig {
    /// Required `iss` claim (exact match). Required, not empty.
    pub issuer: String,
    /// Required `aud` claim (the token's `aud`, string or array, must contain it). Required,
    /// not empty.
    pub audience: String,
    /// Clock leeway for `exp`/`nbf`. Default 30s, at most 60s.
    #[serde(default = "default_leeway", with = "humantime_serde")]
    pub leeway: Duration,
    /// Longest lifetime a token may claim: tokens whose `exp - iat` (`exp - now` without
    /// `iat`, or with an `iat` in the future) exceeds it get 401, so a leaked token minted with
    /// a far `exp` (or none in practice: `exp` near u64::MAX) is not good for years. Default:
    /// no limit.
    #[serde(default, with = "humantime_serde")]
    pub max_token_lifetime: Option<Duration>,
    /// Claim holding the roles: an array of strings, or one string holding a space-separated
    /// list (`"admin editor"` is two roles, like OAuth's `scope`); a dotted path such as
    /// `realm_access.roles`. A claim whose name itself contains dots (`https://x.io/roles`) is
    /// found too: the whole name is tried first. Default `roles`.
    #[serde(default = "default_roles_claim")]
    pub roles_claim: String,
    /// Claims propagated as identity headers: header suffix → claim name or dotted path.
    /// `{ email = "email" }` sends the `email` claim as `X-Auth-Email` upstream (reads) and as
    /// AMQP header `x-auth-email` (writes). The subject always goes as `x-auth-sub`. Suffixes
    /// are 1–64 of `a-z 0-9 -`, not `sub`. Default: none.
    #[serde(default)]
    pub propagate_claims: BTreeMap<String, String>,
    /// Verification keys, each with a fixed algorithm. At least one.
    #[serde(default)]
    pub keys: Vec<RawKeyConfig>,
    /// How often keys from a `jwks_url` are refetched. Default 5m, at least 1s.
    #[serde(default = "default_jwks_refresh", with = "humantime_serde")]
    pub jwks_refresh: Duration,
    /// A token whose `kid` is unknown triggers a refetch of the JWKS URLs at most once per this
    /// interval (counting every fetch). Default 30s, greater than zero.
    #[serde(default = "default_jwks_cooldown", with = "humantime_serde")]
    pub jwks_cooldown: Duration,
    /// Bound on one JWKS fetch (connect, headers and body). Default 5s, greater than zero.
    #[serde(default = "default_jwks_timeout", with = "humantime_serde")]
    pub jwks_timeout: Duration,
    /// How long the last good key set of a `jwks_url` stays in use while fetches fail; after
    /// that its keys are dropped and its tokens get 401. Default 24h, at least `jwks_refresh`.
    #[serde(default = "default_jwks_max_stale", with = "humantime_serde")]
    pub jwks_max_stale: Duration,
    /// Verified tokens whose claims are kept (keyed by the token's SHA-256), so a repeated token
    /// skips signature verification. Default 10000; 0 disables the cache.
    #[serde(default = "default_token_cache_size")]
    pub token_cache_size: u64,
    /// Longest a verified token stays cached (never past its `exp` + leeway). Bounds how long a
    /// token outlives the removal of its key from a JWKS. Default 60s, at most 1h.
    #[serde(default = "default_token_cache_ttl", with = "humantime_serde")]
    pub token_cache_ttl: Duration,
}

/// `[auth]`, validated: the claim rules, and every static key parsed (see [`AuthKey`]).
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// Required `iss` claim (exact match), not empty.
    pub issuer: String,
    /// Required `aud` claim (the token's `aud`, string or array, must contain it), not empty.
    pub audience: String,
    /// Clock leeway for `exp`/`nbf`, at most 60s.
    pub leeway: Duration,
    /// Longest lifetime a token may claim (`exp - iat`, or `exp - now`); `None`: no limit.
    pub max_token_lifetime: Option<Duration>,
    /// Claim holding the roles: a name or a dotted path.
    pub roles_claim: String,
    /// Claims propagated as identity headers, by header suffix (`email` → `x-auth-email`).
    pub propagate_claims: BTreeMap<String, PropagatedClaim>,
    /// The keys, in file order (`keys[i]` is `auth.keys[i]`), at least one.
    pub keys: Vec<AuthKey>,
    /// How often keys from a `jwks_url` are refetched, at least 1s.
    pub jwks_refresh: Duration,
    /// At most one refetch for an unknown `kid` per this interval, greater than zero.
    pub jwks_cooldown: Duration,
    /// Bound on one JWKS fetch, greater than zero.
    pub jwks_timeout: Duration,
    /// How long the last good set of a `jwks_url` stays in use while fetches fail, at least
    /// `jwks_refresh`.
    pub jwks_max_stale: Duration,
    /// Verified tokens kept (0: no token cache).
    pub token_cache_size: u64,
    /// Longest a verified token stays cached, at most 1h.
    pub token_cache_ttl: Duration,
}

/// One `auth.propagate_claims` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PropagatedClaim {
    /// `x-auth-<suffix>`: the identity header (lower case) it travels as.
    pub header: http::HeaderName,
    /// The claim name or dotted path it is read from.
    pub claim: String,
}

/// One `[[auth.keys]]` entry, loaded.
#[derive(Debug, Clone)]
pub enum AuthKey {
    /// A `secret`, `public_key_pem` or `jwks_file`: parsed at load (a JWKS file yields the keys
    /// usable with its algorithm, at least one).
    Static(Vec<Arc<VerifyKey>>),
    /// A `jwks_url`: fetched at start-up and refreshed while running.
    Url(JwksUrl),
}

/// A `jwks_url` and how to fetch it.
#[derive(Debug, Clone)]
pub struct JwksUrl {
    /// `https://…`, or `http://` to a loopback address.
    pub url: http::Uri,
    /// The algorithm of every key taken from it.
    pub algorithm: JwsAlgorithm,
    /// TLS for an `https://` URL (its `tls` table, or the defaults); unused for `http://`.
    pub tls: ClientTls,
}

const fn default_leeway() -> Duration {
    Duration::from_secs(30)
}
fn default_roles_claim() -> String {
    "roles".to_owned()
}
const fn default_jwks_refresh() -> Duration {
    Duration::from_secs(300)
}
const fn default_jwks_cooldown() -> Duration {
    Duration::from_secs(30)
}
const fn default_jwks_timeout() -> Duration {
    Duration::from_secs(5)
}
const fn default_jwks_max_stale() -> Duration {
    Duration::from_secs(24 * 3600)
}
const fn default_token_cache_size() -> u64 {
    10_000
}
const fn default_token_cache_ttl() -> Duration {
    Duration::from_secs(60)
}

/// `[cors]` (global) and a route's `cors = { ... }`: CORS for browser clients.
///
/// Allowed methods are not configured: a preflight is answered with the methods the path
/// serves. Preflights are answered before authentication.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CorsConfig {
    /// Origins allowed to call: each `scheme://host[:port]` (no path, no trailing `/`), or
    /// `["*"]` alone for any origin. Required, not empty.
    pub allowed_origins: Vec<String>,
    /// Request headers a page may send (answer to `Access-Control-Request-Headers`). Default:
    /// `authorization`, `content-type`, `idempotency-key`, `if-none-match`, `traceparent`,
    /// `x-request-id`.
    #[serde(default = "default_cors_allowed_headers")]
    pub allowed_headers: Vec<String>,
    /// Response headers a page's script may read. Default: `etag`, `location`, `retry-after`,
    /// `www-authenticate`, `x-request-id`.
    #[serde(default = "default_cors_exposed_headers")]
    pub exposed_headers: Vec<String>,
    /// How long a browser may reuse a preflight answer. Default 10m, at most 24h.
    #[serde(default = "default_cors_max_age", with = "humantime_serde")]
    pub max_age: Duration,
    /// Send `Access-Control-Allow-Credentials: true` (cookies, client certificates). Not allowed
    /// with `allowed_origins = ["*"]`. Default false.
    #[serde(default)]
    pub allow_credentials: bool,
}

/// A validated CORS policy ([`CorsConfig`] parsed): what the CORS layer (`cors::layer`) is built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorsPolicy {
    /// Who may call.
    pub origins: CorsOrigins,
    /// Request headers a page may send.
    pub allowed_headers: Vec<http::HeaderName>,
    /// Response headers a page's script may read.
    pub exposed_headers: Vec<http::HeaderName>,
    /// How long a browser may reuse a preflight answer (at most 24h).
    pub max_age: Duration,
    /// Send `Access-Control-Allow-Credentials: true` (never with [`CorsOrigins::Any`]).
    pub allow_credentials: bool,
}

/// `allowed_origins`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CorsOrigins {
    /// `["*"]`.
    Any,
    /// `scheme://host[:port]` each, as the `Origin` header spells them.
    List(Vec<http::HeaderValue>),
}

fn default_cors_allowed_headers() -> Vec<String> {
    [
        "authorization",
        "content-type",
        "idempotency-key",
        "if-none-match",
        "traceparent",
        "x-request-id",
    ]
    .map(String::from)
    .to_vec()
}
fn default_cors_exposed_headers() -> Vec<String> {
    [
        "etag",
        "location",
        "retry-after",
        "www-authenticate",
        "x-request-id",
    ]
    .map(String::from)
    .to_vec()
}
const fn default_cors_max_age() -> Duration {
    Duration::from_secs(600)
}

/// `[[auth.keys]]`: one verification key (or key set), with exactly one source.
///
/// Paths are relative to the working directory.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawKeyConfig {
    /// Key id matched against the token's `kid`. A key without `kid` verifies only tokens
    /// without `kid`. Unique among `secret`/`public_key_pem` keys; not allowed with JWKS
    /// sources (their keys carry their own `kid`).
    pub kid: Option<String>,
    /// The only algorithm this key verifies: one of [`JwsAlgorithm::ALL`]. For a JWKS, the
    /// algorithm of every key taken from it (keys of another type, curve or `alg` are skipped).
    pub algorithm: String,
    /// HMAC secret for `HS*` (raw bytes of the string): at least 32/48/64 bytes for
    /// HS256/384/512 (RFC 7518 §3.2). Use `${VAR}` interpolation.
    pub secret: Option<Secret>,
    /// PEM file with the public key for `RS*`/`PS*`/`ES*`/`EdDSA`; parsed at load time.
    pub public_key_pem: Option<PathBuf>,
    /// A JWKS file, read at load time. Not for `HS*`.
    pub jwks_file: Option<PathBuf>,
    /// A JWKS URL: fetched at start-up (start-up fails if it cannot be), then every
    /// `auth.jwks_refresh` and on an unknown `kid`. Not for `HS*`. `https://`, or `http://` to
    /// a loopback address only (keys fetched in plain text over a network could be swapped).
    pub jwks_url: Option<String>,
    /// TLS for an `https://` `jwks_url` (private CA, server name, client certificate).
    #[serde(default)]
    pub tls: Option<TlsSettings>,
}

/// Checks `[auth]` and loads its keys: the one place key files and secrets are read and parsed,
/// so a bad key stops start-up (and `check`) with its config key instead of failing every
/// request, and the authenticator is built from keys that are known to be good.
pub(super) fn validate_auth(auth: RawAuthConfig) -> Result<AuthConfig, Invalid> {
    if auth.issuer.is_empty() {
        return Err(invalid("auth.issuer", "must not be empty"));
    }
    if auth.audience.is_empty() {
        return Err(invalid("auth.audience", "must not be empty"));
    }
    if auth.leeway > Duration::from_secs(60) {
        return Err(invalid("auth.leeway", "must be at most 60s"));
    }
    if auth
        .max_token_lifetime
        .is_some_and(|d| d < Duration::from_secs(1))
    {
        return Err(invalid("auth.max_token_lifetime", "must be at least 1s"));
    }
    if auth.keys.is_empty() {
        return Err(invalid("auth.keys", "at least one key is required"));
    }
    if !is_claim_path(&auth.roles_claim) {
        return Err(invalid(
            "auth.roles_claim",
            "must be a claim name or dotted path",
        ));
    }
    let mut propagate_claims = BTreeMap::new();
    for (name, path) in auth.propagate_claims {
        let key = format!("auth.propagate_claims.{name}");
        let valid_name = (1..=64).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !valid_name || name == "sub" {
            return Err(invalid(
                key,
                "header suffixes are 1–64 of a-z, 0-9, `-`, and not `sub` (always sent)",
            ));
        }
        if !is_claim_path(&path) {
            return Err(invalid(key, "must be a claim name or dotted path"));
        }
        // Lower-case letters, digits and `-` after a fixed prefix: always a header name.
        let header = http::HeaderName::try_from(format!("{AUTH_HEADER_PREFIX}{name}"))
            .map_err(|_| invalid(&key, "not a header name"))?;
        propagate_claims.insert(
            name,
            PropagatedClaim {
                header,
                claim: path,
            },
        );
    }
    if auth.jwks_refresh < Duration::from_secs(1) {
        return Err(invalid("auth.jwks_refresh", "must be at least 1s"));
    }
    if auth.jwks_cooldown.is_zero() {
        return Err(invalid("auth.jwks_cooldown", "must be greater than zero"));
    }
    if auth.jwks_timeout.is_zero() {
        return Err(invalid("auth.jwks_timeout", "must be greater than zero"));
    }
    if auth.jwks_max_stale < auth.jwks_refresh {
        return Err(invalid(
            "auth.jwks_max_stale",
            "must be at least auth.jwks_refresh",
        ));
    }
    if auth.token_cache_ttl > Duration::from_secs(3600) {
        return Err(invalid("auth.token_cache_ttl", "must be at most 1h"));
    }
    let mut kids = BTreeSet::new();
    let mut keys = Vec::with_capacity(auth.keys.len());
    for (i, k) in auth.keys.iter().enumerate() {
        let key = |field: &str| format!("auth.keys[{i}].{field}");
        let source = match (&k.secret, &k.public_key_pem, &k.jwks_file, &k.jwks_url) {
            (Some(secret), None, None, None) => Source::Secret(secret),
            (None, Some(path), None, None) => Source::Pem(path),
            (None, None, Some(path), None) => Source::JwksFile(path),
            (None, None, None, Some(url)) => Source::Url(url),
            _ => {
                return Err(invalid(
                    format!("auth.keys[{i}]"),
                    "exactly one of secret, public_key_pem, jwks_file, jwks_url is required",
                ));
            }
        };
        let Some(alg) = JwsAlgorithm::from_name(&k.algorithm) else {
            return Err(invalid(
                key("algorithm"),
                format!(
                    "unsupported algorithm `{}` (one of {}; `none` never)",
                    k.algorithm,
                    JwsAlgorithm::ALL.map(JwsAlgorithm::name).join(", ")
                ),
            ));
        };
        if alg.is_hmac() != matches!(source, Source::Secret(_)) {
            return Err(invalid(
                key("algorithm"),
                "HS* algorithms take `secret`; other algorithms take a public key or JWKS (never HMAC from a JWKS)",
            ));
        }
        let jwks = matches!(source, Source::JwksFile(_) | Source::Url(_));
        if let Some(kid) = &k.kid {
            if jwks {
                return Err(invalid(
                    key("kid"),
                    "not allowed with a JWKS (its keys carry their own `kid`)",
                ));
            }
            if kid.is_empty() || kid.len() > 256 || kid.chars().any(char::is_control) {
                return Err(invalid(
                    key("kid"),
                    "must be 1–256 characters without control characters",
                ));
            }
            if !kids.insert(kid.as_str()) {
                return Err(invalid(key("kid"), format!("`{kid}` is used twice")));
            }
        }
        if !matches!(source, Source::Url(_)) && k.tls.is_some() {
            return Err(invalid(key("tls"), "only for an https:// jwks_url"));
        }
        let loaded = match source {
            Source::Url(url) => AuthKey::Url(jwks_url(url, alg, k.tls.as_ref(), &key)?),
            Source::Secret(secret) => {
                let loaded = keys::from_secret(k.kid.clone(), alg, secret.expose().as_bytes())
                    .map_err(|m| invalid(key("secret"), m))?;
                AuthKey::Static(vec![Arc::new(loaded)])
            }
            Source::Pem(path) => {
                let loaded = keys::from_pem_file(k.kid.clone(), alg, path)
                    .map_err(|m| invalid(key("public_key_pem"), m))?;
                AuthKey::Static(vec![Arc::new(loaded)])
            }
            Source::JwksFile(path) => {
                let loaded =
                    keys::from_jwks_file(alg, path).map_err(|m| invalid(key("jwks_file"), m))?;
                AuthKey::Static(loaded.into_iter().map(Arc::new).collect())
            }
        };
        keys.push(loaded);
    }
    Ok(AuthConfig {
        issuer: auth.issuer,
        audience: auth.audience,
        leeway: auth.leeway,
        max_token_lifetime: auth.max_token_lifetime,
        roles_claim: auth.roles_claim,
        propagate_claims,
        keys,
        jwks_refresh: auth.jwks_refresh,
        jwks_cooldown: auth.jwks_cooldown,
        jwks_timeout: auth.jwks_timeout,
        jwks_max_stale: auth.jwks_max_stale,
        token_cache_size: auth.token_cache_size,
        token_cache_ttl: auth.token_cache_ttl,
    })
}

/// Where a `[[auth.keys]]` entry takes its key from: exactly one of its four fields.
enum Source<'a> {
    Secret(&'a Secret),
    Pem(&'a PathBuf),
    JwksFile(&'a PathBuf),
    Url(&'a str),
}

/// A key's `jwks_url` and `tls`, checked: `https://` (with its TLS settings loaded now), or
/// `http://` to a loopback address without `tls`. Fetching it is the authenticator's job.
fn jwks_url(
    url: &str,
    algorithm: JwsAlgorithm,
    tls: Option<&TlsSettings>,
    key: &dyn Fn(&str) -> String,
) -> Result<JwksUrl, Invalid> {
    let uri: http::Uri = url
        .parse()
        .map_err(|_| invalid(key("jwks_url"), "not a valid URL"))?;
    let loopback = uri.host().is_some_and(is_loopback_host);
    match uri.scheme_str() {
        Some("https") if uri.authority().is_some() => {}
        Some("http") if loopback => {}
        Some("http") if uri.authority().is_some() => {
            return Err(invalid(
                key("jwks_url"),
                "plain http:// only to a loopback address; use https://",
            ));
        }
        _ => {
            return Err(invalid(
                key("jwks_url"),
                "must be an https://host[:port]/path URL (or http:// to loopback)",
            ));
        }
    }
    if uri.scheme_str() != Some("https") && tls.is_some() {
        return Err(invalid(key("tls"), "needs an https:// jwks_url"));
    }
    // For `http://` these are the defaults, never used: the connector speaks plain HTTP then.
    let tls =
        ClientTls::load(tls).map_err(|e| invalid(key(&format!("tls.{}", e.field)), e.message))?;
    Ok(JwksUrl {
        url: uri,
        algorithm,
        tls,
    })
}

/// `localhost`, `127.0.0.0/8` or `[::1]`: where a plain-text JWKS fetch cannot be observed.
fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A claim name, or a dotted path of names (`realm_access.roles`).
fn is_claim_path(path: &str) -> bool {
    !path.is_empty() && !path.split('.').any(str::is_empty) && !path.chars().any(char::is_control)
}

/// Roles and scopes listed by a route: checkable strings, and scopes that fit in a
/// `WWW-Authenticate: Bearer scope="..."` parameter (RFC 6749 §3.3 scope-token).
pub(super) fn validate_policy(policy: &AuthPolicy) -> Result<(), String> {
    for role in &policy.roles {
        if role.is_empty() || role.len() > 256 || role.chars().any(char::is_control) {
            return Err(format!(
                "role `{role}`: roles are 1–256 characters without control characters"
            ));
        }
    }
    for scope in &policy.scopes {
        let token = |b: u8| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b);
        if scope.is_empty() || scope.len() > 256 || !scope.bytes().all(token) {
            return Err(format!(
                "scope `{scope}`: scopes are 1–256 visible ASCII characters without space, `\"` or `\\`"
            ));
        }
    }
    Ok(())
}

pub(super) fn validate_cors(cors: &CorsConfig, key: &str) -> Result<CorsPolicy, Invalid> {
    let field = |f: &str| format!("{key}.{f}");
    if cors.allowed_origins.is_empty() {
        return Err(invalid(
            field("allowed_origins"),
            "must list at least one origin",
        ));
    }
    let any = cors.allowed_origins.iter().any(|o| o == "*");
    if any && cors.allowed_origins.len() > 1 {
        return Err(invalid(
            field("allowed_origins"),
            "`*` must be the only entry",
        ));
    }
    if any && cors.allow_credentials {
        return Err(invalid(
            field("allow_credentials"),
            "browsers refuse credentials with `allowed_origins = [\"*\"]`; list the origins",
        ));
    }
    let origins = if any {
        CorsOrigins::Any
    } else {
        let origin = |origin: &String| {
            let uri: Option<http::Uri> = origin.parse().ok();
            let valid = uri.is_some_and(|u| {
                matches!(u.scheme_str(), Some("http" | "https"))
                    && u.authority().is_some()
                    && u.path_and_query()
                        .is_none_or(|p| p.as_str().is_empty() || p.as_str() == "/")
                    && !origin.ends_with('/')
            });
            http::HeaderValue::from_str(origin)
                .ok()
                .filter(|_| valid)
                .ok_or_else(|| {
                    invalid(
                        field("allowed_origins"),
                        format!("`{origin}` is not an origin (scheme://host[:port], no path)"),
                    )
                })
        };
        CorsOrigins::List(
            cors.allowed_origins
                .iter()
                .map(origin)
                .collect::<Result<_, _>>()?,
        )
    };
    let header_names = |name: &str, list: &[String]| {
        list.iter()
            .map(|h| {
                http::HeaderName::from_bytes(h.as_bytes())
                    .ok()
                    .filter(|_| h != "*")
                    .ok_or_else(|| {
                        invalid(
                            field(name),
                            format!("`{h}` is not a header name (wildcards are not supported)"),
                        )
                    })
            })
            .collect::<Result<Vec<_>, _>>()
    };
    let allowed_headers = header_names("allowed_headers", &cors.allowed_headers)?;
    let exposed_headers = header_names("exposed_headers", &cors.exposed_headers)?;
    if cors.max_age > Duration::from_secs(24 * 3600) {
        return Err(invalid(field("max_age"), "must be at most 24h"));
    }
    Ok(CorsPolicy {
        origins,
        allowed_headers,
        exposed_headers,
        max_age: cors.max_age,
        allow_credentials: cors.allow_credentials,
    })
}

#[cfg(test)]
impl AuthConfig {
    /// `[auth]` loaded from the text of its table alone, as [`super::Config::from_toml`] loads
    /// it (for the authenticator's unit tests). Panics with the config key on an error.
    pub(crate) fn from_table(text: &str) -> Self {
        let raw: RawAuthConfig = toml::from_str(text).unwrap_or_else(|e| panic!("{e}"));
        validate_auth(raw).unwrap_or_else(|(key, message)| panic!("{key}: {message}"))
    }
}
