//! [`Authenticator`]: bearer token → [`Identity`], or a [`Rejection`] with a reason code.

use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;
use http::header::AUTHORIZATION;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Header, Validation, decode, decode_header};
use moka::Expiry;
use moka::sync::Cache;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use tokio::task::AbortHandle;

use super::identity::{ClaimPath, Claims, Identity};
use super::jwks::{JwksTiming, Refreshed, RemoteJwks};
use super::keys::KeySet;
use crate::config::{AuthConfig, AuthKey};
use crate::keys::{JwsAlgorithm, VerifyKey};

/// Tokens longer than this are refused before any decoding (scenario 52).
pub(crate) const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Why a request was not authenticated. The `&'static str`s are reason codes for logs; they
/// never carry token content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rejection {
    /// No bearer token: no `Authorization` header, or another scheme (`Basic`). RFC 6750 §3.1:
    /// answered without an error code.
    Missing,
    /// The `Authorization` header is misused (sent twice): `invalid_request`, 400.
    InvalidRequest(&'static str),
    /// A token that is malformed, badly signed, expired, not yet valid, for another issuer or
    /// audience, or signed with an unknown key: `invalid_token`, 401.
    InvalidToken(&'static str),
}

impl Rejection {
    /// The reason code (`missing`, `expired`, `unknown-kid`, …).
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::InvalidRequest(r) | Self::InvalidToken(r) => r,
        }
    }
}

/// Error starting the authenticator: a JWKS URL that cannot be fetched (static keys were
/// loaded with the config and cannot fail here).
#[derive(Debug, thiserror::Error)]
#[error("{key}: {message}")]
pub struct AuthStartError {
    /// Config key, e.g. `auth.keys[2].jwks_url`.
    pub key: String,
    /// What went wrong.
    pub message: String,
}

/// Verifies bearer tokens against the configured keys. Built once at start-up; cheap to clone.
///
/// Hot path: the header is parsed without allocation beyond the token slice, keys and
/// `Validation`s were built at start-up, and a token verified once is served from a bounded
/// cache keyed by its SHA-256 until `min(exp + leeway, token_cache_ttl)`.
#[derive(Clone)]
pub(crate) struct Authenticator {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("static_keys", &self.inner.static_keys.len())
            .field("jwks_urls", &self.inner.remotes.len())
            .finish_non_exhaustive()
    }
}

struct Inner {
    static_keys: KeySet,
    remotes: Vec<Arc<RemoteJwks>>,
    /// One `Validation` per algorithm, built once, at [`JwsAlgorithm::index`].
    validations: [Validation; JwsAlgorithm::ALL.len()],
    issuer: String,
    leeway: u64,
    /// `auth.max_token_lifetime` in seconds.
    max_lifetime: Option<u64>,
    claims: Claims,
    cache: Option<Cache<[u8; 32], Identity>>,
    /// JWKS refresh tasks, stopped when the last clone is dropped.
    tasks: Vec<AbortHandle>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Cache entries live until the token's `exp` + leeway, and never longer than the TTL.
struct TokenExpiry {
    ttl: Duration,
    leeway: u64,
}

impl Expiry<[u8; 32], Identity> for TokenExpiry {
    fn expire_after_create(
        &self,
        _key: &[u8; 32],
        identity: &Identity,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        // Saturating: `exp` is the issuer's number, up to u64::MAX (a debug build would panic
        // inside the cache, a release build wrap to an entry that expires at once).
        let left = identity
            .expires_at
            .saturating_add(self.leeway)
            .saturating_sub(jsonwebtoken::get_current_timestamp());
        Some(Duration::from_secs(left).min(self.ttl))
    }
}

impl Authenticator {
    /// Takes the static keys loaded with the config, fetches every JWKS URL once (failing if
    /// one cannot be fetched: the gateway starts with a warm key cache or not at all), and
    /// spawns their refresh tasks. Must run inside a Tokio runtime.
    pub(crate) async fn start(config: &AuthConfig) -> Result<Self, AuthStartError> {
        let timing = JwksTiming {
            refresh: config.jwks_refresh,
            cooldown: config.jwks_cooldown,
            timeout: config.jwks_timeout,
            max_stale: config.jwks_max_stale,
        };
        let mut static_keys: Vec<Arc<VerifyKey>> = Vec::new();
        let mut remotes = Vec::new();
        for (i, key) in config.keys.iter().enumerate() {
            match key {
                AuthKey::Static(keys) => static_keys.extend(keys.iter().cloned()),
                AuthKey::Url(jwks) => {
                    let remote = RemoteJwks::start(i, jwks, timing)
                        .await
                        .map_err(|message| AuthStartError {
                            key: format!("auth.keys[{i}].jwks_url"),
                            message: format!("initial fetch of {} failed: {message}", jwks.url),
                        })?;
                    remotes.push(Arc::new(remote));
                }
            }
        }
        let (static_keys, duplicates) = KeySet::new(static_keys);
        if duplicates > 0 {
            // Only across sources (a `jwks_file` repeating another key's `kid`): config load
            // refuses a repeated `kid` among secrets and PEM keys, and a JWKS keeps its first.
            tracing::warn!(
                duplicates,
                "A kid is used by more than one static key; the first one configured is used."
            );
        }
        let leeway = config.leeway.as_secs();
        let validations = JwsAlgorithm::ALL.map(|alg| {
            let mut v = Validation::new(alg.jwt());
            v.leeway = leeway;
            v.validate_exp = true;
            // Off by default in jsonwebtoken (scenario 48).
            v.validate_nbf = true;
            v.validate_aud = true;
            v.set_issuer(&[&config.issuer]);
            v.set_audience(&[&config.audience]);
            // Without these, a token *missing* iss/aud passes (scenario 49); sub is the
            // identity we propagate.
            v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
            v
        });
        let cache = (config.token_cache_size > 0).then(|| {
            Cache::builder()
                .max_capacity(config.token_cache_size)
                .expire_after(TokenExpiry {
                    ttl: config.token_cache_ttl,
                    leeway,
                })
                .build()
        });
        let claims = Claims {
            roles: ClaimPath::new(&config.roles_claim),
            propagate: config
                .propagate_claims
                .values()
                .map(|p| (p.header.clone(), ClaimPath::new(&p.claim)))
                .collect(),
        };
        let tasks = remotes
            .iter()
            .map(|remote| {
                let cache = cache.clone();
                tokio::spawn(remote.clone().refresh_loop(move || {
                    if let Some(cache) = &cache {
                        cache.invalidate_all();
                    }
                }))
                .abort_handle()
            })
            .collect();
        tracing::info!(
            static_keys = static_keys.len(),
            jwks_urls = remotes.len(),
            token_cache = config.token_cache_size,
            "Token verification ready."
        );
        Ok(Self {
            inner: Arc::new(Inner {
                static_keys,
                remotes,
                validations,
                issuer: config.issuer.clone(),
                leeway,
                max_lifetime: config.max_token_lifetime.map(|d| d.as_secs()),
                claims,
                cache,
                tasks,
            }),
        })
    }

    /// Authenticates a request from its headers: exactly one `Authorization: Bearer <jwt>`.
    /// Tokens anywhere else (query string, cookies) are never looked at (RFC 6750 §2.3, §5.3).
    pub(crate) async fn authenticate(&self, headers: &HeaderMap) -> Result<Identity, Rejection> {
        let token = bearer_token(headers)?;
        self.verify(token).await
    }

    /// Verifies one compact JWS token.
    pub(crate) async fn verify(&self, token: &str) -> Result<Identity, Rejection> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(Rejection::InvalidToken("too-large"));
        }
        if token.bytes().filter(|b| *b == b'.').count() != 2 {
            return Err(Rejection::InvalidToken("malformed"));
        }
        let inner = &*self.inner;
        let digest: Option<[u8; 32]> = inner.cache.as_ref().map(|_| Sha256::digest(token).into());
        if let (Some(cache), Some(digest)) = (&inner.cache, &digest)
            && let Some(identity) = cache.get(digest)
        {
            // The entry's expiry is coarse; the token's own `exp` is the bound.
            if jsonwebtoken::get_current_timestamp()
                <= identity.expires_at.saturating_add(inner.leeway)
            {
                return Ok(identity);
            }
            cache.invalidate(digest);
        }
        let header = decode_header(token).map_err(|_| Rejection::InvalidToken("malformed"))?;
        check_typ(&header)?;
        check_crit(&header)?;
        let candidates = self.candidates(&header, token).await?;
        let mut reason = "unknown-kid";
        for key in candidates {
            if key.alg.jwt() != header.alg {
                reason = "alg-mismatch";
                continue;
            }
            let validation = &inner.validations[key.alg.index()];
            match decode::<Map<String, Value>>(token, &key.key, validation) {
                Ok(data) => {
                    if let Some(max) = inner.max_lifetime
                        && !lifetime_within(
                            &data.claims,
                            max,
                            jsonwebtoken::get_current_timestamp(),
                        )
                    {
                        return Err(Rejection::InvalidToken("lifetime-too-long"));
                    }
                    let identity = inner
                        .claims
                        .identity(&data.claims)
                        .map_err(|_| Rejection::InvalidToken("bad-subject"))?;
                    if let (Some(cache), Some(digest)) = (&inner.cache, digest) {
                        cache.insert(digest, identity.clone());
                    }
                    return Ok(identity);
                }
                // Another key without `kid` may still verify it.
                Err(e) if matches!(e.kind(), ErrorKind::InvalidSignature) => {
                    reason = "bad-signature";
                }
                Err(e) => return Err(Rejection::InvalidToken(reason_of(e.kind()))),
            }
        }
        Err(Rejection::InvalidToken(reason))
    }

    fn lookup(&self, kid: &str) -> Option<Arc<VerifyKey>> {
        let inner = &*self.inner;
        if let Some(key) = inner.static_keys.by_kid(kid) {
            return Some(key.clone());
        }
        inner
            .remotes
            .iter()
            .find_map(|r| r.keys().by_kid(kid).cloned())
    }

    /// The keys that may have signed this token: the one with its `kid`, or every key without
    /// a `kid` for its `alg`. An unknown `kid` refetches the JWKS URLs of that `alg` (subject
    /// to their cooldown) once the token looks like one of our issuer's.
    async fn candidates(
        &self,
        header: &Header,
        token: &str,
    ) -> Result<Vec<Arc<VerifyKey>>, Rejection> {
        let inner = &*self.inner;
        let Some(kid) = header.kid.as_deref() else {
            let mut keys: Vec<Arc<VerifyKey>> =
                inner.static_keys.without_kid(header.alg).cloned().collect();
            for remote in &inner.remotes {
                keys.extend(remote.keys().without_kid(header.alg).cloned());
            }
            if keys.is_empty() {
                return Err(Rejection::InvalidToken("no-key"));
            }
            return Ok(keys);
        };
        if kid.is_empty() || kid.len() > 256 {
            return Err(Rejection::InvalidToken("unknown-kid"));
        }
        if let Some(key) = self.lookup(kid) {
            return Ok(vec![key]);
        }
        let sources: Vec<&Arc<RemoteJwks>> = inner
            .remotes
            .iter()
            .filter(|r| r.alg.jwt() == header.alg)
            .collect();
        if sources.is_empty() || !self.claims_issuer_matches(token) {
            return Err(Rejection::InvalidToken("unknown-kid"));
        }
        for remote in sources {
            let outcome = remote.refetch_for_unknown_kid().await;
            tracing::debug!(
                key = remote.index,
                ?outcome,
                "JWKS refetch for an unknown kid."
            );
            if matches!(outcome, Refreshed::Changed | Refreshed::Expired) {
                self.invalidate_cache();
            }
        }
        self.lookup(kid)
            .map(|k| vec![k])
            .ok_or(Rejection::InvalidToken("unknown-kid"))
    }

    /// Unverified pre-check before an unknown `kid` may cost a JWKS fetch: the payload decodes
    /// and names our issuer. Anyone can forge that, but random garbage cannot.
    fn claims_issuer_matches(&self, token: &str) -> bool {
        #[derive(serde::Deserialize)]
        struct Iss {
            iss: String,
        }
        jsonwebtoken::dangerous::insecure_decode_claims::<Iss>(token)
            .is_ok_and(|c| c.iss == self.inner.issuer)
    }

    fn invalidate_cache(&self) {
        if let Some(cache) = &self.inner.cache {
            cache.invalidate_all();
        }
    }
}

/// `typ`, when present, must be a JWT or an RFC 9068 access token: a `logout+jwt`,
/// `secevent+jwt` or `dpop+jwt` signed by the same issuer is not an access token (RFC 8725
/// §3.11). Absent `typ` is accepted, as most issuers omit it.
fn check_typ(header: &Header) -> Result<(), Rejection> {
    match header.typ.as_deref() {
        None => Ok(()),
        Some(t)
            if t.eq_ignore_ascii_case("JWT")
                || t.eq_ignore_ascii_case("at+jwt")
                || t.eq_ignore_ascii_case("application/at+jwt") =>
        {
            Ok(())
        }
        Some(_) => Err(Rejection::InvalidToken("typ")),
    }
}

/// `crit` (RFC 7515 §4.1.11) lists header extensions the recipient must understand and
/// process, or reject the token. The gateway implements none, and jsonwebtoken parses `crit`
/// without acting on it, so any `crit` is refused (an empty list is invalid per the RFC too):
/// accepting it would silently ignore a condition the issuer made mandatory.
fn check_crit(header: &Header) -> Result<(), Rejection> {
    match &header.crit {
        None => Ok(()),
        Some(_) => Err(Rejection::InvalidToken("crit")),
    }
}

/// Whether the token lives no longer than `max` seconds: `exp - iat`, counted from `now`
/// instead when `iat` is absent or in the future (an `iat` set just before a far `exp` must
/// not hide a long life). A token without a numeric `exp` or with a malformed `iat` fails.
/// Saturating arithmetic: `exp` may be anything up to u64::MAX.
fn lifetime_within(claims: &Map<String, Value>, max: u64, now: u64) -> bool {
    fn seconds(value: &Value) -> Option<u64> {
        value.as_u64().or_else(|| {
            // Negative or fractional times (NumericDate allows fractions): whole seconds,
            // `as` saturates out-of-range floats.
            value
                .as_f64()
                .filter(|f| f.is_finite() && *f >= 0.0)
                .map(|f| f as u64)
        })
    }
    let Some(exp) = claims.get("exp").and_then(seconds) else {
        return false;
    };
    let start = match claims.get("iat") {
        None => now,
        Some(iat) => match seconds(iat) {
            Some(iat) => iat.min(now),
            None => return false,
        },
    };
    exp.saturating_sub(start) <= max
}

/// The token of exactly one `Authorization: Bearer <token>` header (scheme case-insensitive,
/// extra spaces before the token tolerated).
pub(crate) fn bearer_token(headers: &HeaderMap) -> Result<&str, Rejection> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Err(Rejection::Missing);
    };
    if values.next().is_some() {
        return Err(Rejection::InvalidRequest("duplicate-authorization"));
    }
    let bytes = value.as_bytes().trim_ascii();
    let (scheme, rest) = match bytes.iter().position(|b| *b == b' ') {
        Some(i) => bytes.split_at(i),
        None => (bytes, &b""[..]),
    };
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return Err(Rejection::Missing);
    }
    let token = rest.trim_ascii();
    if token.is_empty() {
        return Err(Rejection::InvalidToken("empty"));
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Err(Rejection::InvalidToken("too-large"));
    }
    // RFC 6750 b64token; a JWS compact token is base64url and dots.
    let b64token = |b: &u8| b.is_ascii_alphanumeric() || b"-._~+/=".contains(b);
    if !token.iter().all(b64token) {
        return Err(Rejection::InvalidToken("malformed"));
    }
    std::str::from_utf8(token).map_err(|_| Rejection::InvalidToken("malformed"))
}

fn reason_of(kind: &ErrorKind) -> &'static str {
    match kind {
        ErrorKind::ExpiredSignature => "expired",
        ErrorKind::ImmatureSignature => "not-yet-valid",
        ErrorKind::InvalidIssuer => "wrong-issuer",
        ErrorKind::InvalidAudience => "wrong-audience",
        ErrorKind::MissingRequiredClaim(_) => "missing-claim",
        ErrorKind::InvalidClaimFormat(_) => "bad-claim",
        ErrorKind::InvalidSignature => "bad-signature",
        ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => "alg-mismatch",
        ErrorKind::InvalidSubject => "bad-subject",
        _ => "malformed",
    }
}

#[cfg(test)]
mod tests;
