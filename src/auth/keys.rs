//! Verification keys: parsed once (secrets, PEM files, JWKS documents), each bound to exactly
//! one algorithm, and looked up by `kid`.
//!
//! Nothing in here is driven by a token's header beyond a map lookup: `kid` is only a key into
//! the in-memory [`KeySet`], and `jku`/`x5u`/`jwk` header parameters are never followed
//! (RFC 8725 §3.10).

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};

use crate::config::KeyConfig;

/// Largest JWKS document accepted, from a file or a URL.
pub(crate) const MAX_JWKS_BYTES: usize = 512 * 1024;

/// One verification key and the one algorithm it verifies.
pub(crate) struct VerifyKey {
    /// The key id, matched against a token's `kid`; `None` verifies only tokens without one.
    pub(crate) kid: Option<String>,
    /// The only algorithm accepted with this key (RFC 8725 §3.1).
    pub(crate) alg: Algorithm,
    /// Parsed once; jsonwebtoken builds its verifier from it per call.
    pub(crate) key: DecodingKey,
}

impl std::fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

/// Keys by `kid`, plus the keys that have none.
#[derive(Debug, Default)]
pub(crate) struct KeySet {
    by_kid: HashMap<String, Arc<VerifyKey>>,
    no_kid: Vec<Arc<VerifyKey>>,
}

impl KeySet {
    /// Builds a set; a repeated `kid` keeps the first key (and is counted in the result).
    pub(crate) fn new(keys: Vec<VerifyKey>) -> (Self, usize) {
        let mut set = KeySet::default();
        let mut duplicates = 0;
        for key in keys {
            match &key.kid {
                Some(kid) if set.by_kid.contains_key(kid) => duplicates += 1,
                Some(kid) => {
                    set.by_kid.insert(kid.clone(), Arc::new(key));
                }
                None => set.no_kid.push(Arc::new(key)),
            }
        }
        (set, duplicates)
    }

    /// The key with this `kid`.
    pub(crate) fn by_kid(&self, kid: &str) -> Option<&Arc<VerifyKey>> {
        self.by_kid.get(kid)
    }

    /// Keys without `kid` that verify `alg`.
    pub(crate) fn without_kid(&self, alg: Algorithm) -> impl Iterator<Item = &Arc<VerifyKey>> {
        self.no_kid.iter().filter(move |k| k.alg == alg)
    }

    /// Number of keys.
    pub(crate) fn len(&self) -> usize {
        self.by_kid.len() + self.no_kid.len()
    }

    /// The `kid`s in the set (for start-up logs).
    pub(crate) fn kids(&self) -> Vec<&str> {
        let mut kids: Vec<&str> = self.by_kid.keys().map(String::as_str).collect();
        kids.sort_unstable();
        kids
    }
}

/// The algorithm for a config name; `None` for anything else (`none` included).
pub(crate) fn algorithm(name: &str) -> Option<Algorithm> {
    if !crate::config::JWT_ALGORITHMS.contains(&name) {
        return None;
    }
    Algorithm::from_str(name).ok()
}

/// Minimum HMAC secret length: the hash output size (RFC 7518 §3.2).
fn min_secret_len(alg: Algorithm) -> usize {
    match alg {
        Algorithm::HS384 => 48,
        Algorithm::HS512 => 64,
        _ => 32,
    }
}

/// What [`load_static`] and [`check_key_config`] report: the failing field of the key and why.
pub(crate) type KeyError = (&'static str, String);

/// Checks that a configured key loads (everything but a `jwks_url`, which is fetched at
/// start-up). Called by config validation, so `check` reports bad keys by name.
pub(crate) fn check_key_config(config: &KeyConfig) -> Result<(), KeyError> {
    if config.jwks_url.is_some() {
        return Ok(());
    }
    load_static(config).map(drop)
}

/// Loads a `secret`, `public_key_pem` or `jwks_file` key source.
pub(crate) fn load_static(config: &KeyConfig) -> Result<Vec<VerifyKey>, KeyError> {
    let alg = algorithm(&config.algorithm)
        .ok_or_else(|| ("algorithm", format!("unsupported `{}`", config.algorithm)))?;
    let kid = config.kid.clone();
    if let Some(secret) = &config.secret {
        let bytes = secret.expose().as_bytes();
        let min = min_secret_len(alg);
        if bytes.len() < min {
            // The length is no secret; the value never appears.
            return Err((
                "secret",
                format!("{alg:?} needs a secret of at least {min} bytes (RFC 7518 §3.2)"),
            ));
        }
        return Ok(vec![VerifyKey {
            kid,
            alg,
            key: DecodingKey::from_secret(bytes),
        }]);
    }
    if let Some(path) = &config.public_key_pem {
        let pem = std::fs::read(path).map_err(|e| {
            (
                "public_key_pem",
                format!("cannot read `{}`: {e}", path.display()),
            )
        })?;
        let key = pem_key(&pem, alg).map_err(|m| {
            (
                "public_key_pem",
                format!(
                    "`{}` is not a usable {alg:?} public key: {m}",
                    path.display()
                ),
            )
        })?;
        return Ok(vec![VerifyKey { kid, alg, key }]);
    }
    if let Some(path) = &config.jwks_file {
        let text = std::fs::read(path).map_err(|e| {
            (
                "jwks_file",
                format!("cannot read `{}`: {e}", path.display()),
            )
        })?;
        if text.len() > MAX_JWKS_BYTES {
            return Err((
                "jwks_file",
                format!("`{}` is larger than {MAX_JWKS_BYTES} bytes", path.display()),
            ));
        }
        let keys = parse_jwks(&text, alg)
            .map_err(|m| ("jwks_file", format!("`{}`: {m}", path.display())))?;
        return Ok(keys);
    }
    Err((
        "jwks_url",
        "is fetched at start-up, not loaded from config".into(),
    ))
}

/// A public key from PEM, checked against the algorithm's family and curve.
fn pem_key(pem: &[u8], alg: Algorithm) -> Result<DecodingKey, String> {
    let key = match alg {
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => DecodingKey::from_rsa_pem(pem),
        Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(pem),
        Algorithm::EdDSA => DecodingKey::from_ed_pem(pem),
        _ => return Err("HMAC keys are secrets, not PEM files".into()),
    }
    .map_err(|e| e.to_string())?;
    check_point_size(&key, alg)?;
    Ok(key)
}

/// An EC or Ed25519 key must be a point of the algorithm's curve: a P-384 key configured for
/// ES256 would otherwise fail every token instead of failing start-up.
fn check_point_size(key: &DecodingKey, alg: Algorithm) -> Result<(), String> {
    let expected = match alg {
        Algorithm::ES256 => 65,
        Algorithm::ES384 => 97,
        Algorithm::EdDSA => 32,
        _ => return Ok(()),
    };
    let len = key.try_get_as_bytes().map_err(|e| e.to_string())?.len();
    if len != expected {
        return Err(format!("the key is not on the curve of {alg:?}"));
    }
    Ok(())
}

/// Parses a JWKS document, keeping the keys usable with `alg`.
///
/// Skipped, not fatal (one odd key must not take the others down): keys with `use = "enc"`,
/// an `alg` other than ours, another key type or curve, symmetric (`oct`) keys, malformed
/// entries, repeated `kid`s. Fails when nothing usable is left.
pub(crate) fn parse_jwks(bytes: &[u8], alg: Algorithm) -> Result<Vec<VerifyKey>, String> {
    #[derive(serde::Deserialize)]
    struct Document {
        keys: Vec<serde_json::Value>,
    }
    let doc: Document = serde_json::from_slice(bytes)
        .map_err(|e| format!("not a JWKS document (`{{\"keys\": [...]}}`): {e}"))?;
    let total = doc.keys.len();
    let mut keys: Vec<VerifyKey> = Vec::with_capacity(total);
    for value in doc.keys {
        let Ok(jwk) = serde_json::from_value::<Jwk>(value) else {
            continue;
        };
        if let Some(key) = jwk_key(&jwk, alg)
            && !keys.iter().any(|k| k.kid.is_some() && k.kid == key.kid)
        {
            keys.push(key);
        }
    }
    if keys.is_empty() {
        return Err(format!(
            "none of its {total} keys is usable with {alg:?} (type, curve, `alg` or `use` differ)"
        ));
    }
    Ok(keys)
}

fn jwk_key(jwk: &Jwk, alg: Algorithm) -> Option<VerifyKey> {
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return None;
    }
    if let Some(key_alg) = jwk.common.key_algorithm
        && key_alg != KeyAlgorithm::from(alg)
    {
        return None;
    }
    let fits = match (&jwk.algorithm, alg) {
        (
            AlgorithmParameters::RSA(_),
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512,
        ) => true,
        (AlgorithmParameters::EllipticCurve(p), Algorithm::ES256) => p.curve == EllipticCurve::P256,
        (AlgorithmParameters::EllipticCurve(p), Algorithm::ES384) => p.curve == EllipticCurve::P384,
        (AlgorithmParameters::OctetKeyPair(p), Algorithm::EdDSA) => {
            p.curve == EllipticCurve::Ed25519
        }
        // Symmetric keys never come from a JWKS (guarantee 10), whatever the config says.
        _ => false,
    };
    if !fits {
        return None;
    }
    let key = DecodingKey::from_jwk(jwk).ok()?;
    check_point_size(&key, alg).ok()?;
    let kid = jwk
        .common
        .key_id
        .clone()
        .filter(|k| !k.is_empty() && k.len() <= 256);
    Some(VerifyKey { kid, alg, key })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn key_config(algorithm: &str) -> KeyConfig {
        KeyConfig {
            kid: None,
            algorithm: algorithm.into(),
            secret: None,
            public_key_pem: None,
            jwks_file: None,
            jwks_url: None,
            tls: None,
        }
    }

    #[test]
    fn none_is_not_an_algorithm() {
        for name in ["none", "None", "NONE", "hs256", ""] {
            assert!(algorithm(name).is_none(), "{name}");
        }
        assert_eq!(algorithm("EdDSA"), Some(Algorithm::EdDSA));
    }

    #[test]
    fn short_hmac_secrets_are_refused() {
        let mut c = key_config("HS256");
        c.secret = Some(Secret::new("x".repeat(31)));
        let (field, msg) = load_static(&c).unwrap_err();
        assert_eq!(field, "secret");
        assert!(msg.contains("32"), "{msg}");
        assert!(!msg.contains("xxx"), "the secret must not be echoed: {msg}");
        c.secret = Some(Secret::new("x".repeat(32)));
        assert_eq!(load_static(&c).unwrap().len(), 1);
        c.algorithm = "HS512".into();
        assert!(load_static(&c).is_err());
    }

    #[test]
    fn jwks_keeps_only_keys_for_its_algorithm() {
        // An RSA key (RS256), an `oct` key (never from a JWKS), an encryption key, a key with
        // another `alg`, and garbage.
        let n = "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw";
        let doc = format!(
            r#"{{"keys":[
              {{"kty":"RSA","kid":"r1","n":"{n}","e":"AQAB"}},
              {{"kty":"RSA","kid":"r1","n":"{n}","e":"AQAB"}},
              {{"kty":"oct","kid":"h1","k":"c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"}},
              {{"kty":"RSA","kid":"enc","use":"enc","n":"{n}","e":"AQAB"}},
              {{"kty":"RSA","kid":"ps","alg":"PS256","n":"{n}","e":"AQAB"}},
              {{"kty":"weird"}}, 17
            ]}}"#
        );
        let keys = parse_jwks(doc.as_bytes(), Algorithm::RS256).unwrap();
        let kids: Vec<_> = keys.iter().map(|k| k.kid.as_deref()).collect();
        assert_eq!(kids, [Some("r1")]);
        assert!(parse_jwks(doc.as_bytes(), Algorithm::ES256).is_err());
        assert!(parse_jwks(b"[]", Algorithm::RS256).is_err());
        // HMAC never comes from a JWKS, even when asked for.
        assert!(parse_jwks(doc.as_bytes(), Algorithm::HS256).is_err());
    }

    #[test]
    fn pem_of_the_wrong_family_is_refused() {
        let dir = std::env::temp_dir().join(format!("gw-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("garbage.pem");
        std::fs::write(
            &path,
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
        )
        .unwrap();
        let mut c = key_config("RS256");
        c.public_key_pem = Some(path.clone());
        let (field, msg) = load_static(&c).unwrap_err();
        assert_eq!(field, "public_key_pem");
        assert!(msg.contains("garbage.pem"), "{msg}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
