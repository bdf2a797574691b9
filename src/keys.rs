//! JWT verification keys: the algorithms a key may be pinned to, and parsing of every key
//! source (HMAC secrets, PEM files, JWKS documents) into [`VerifyKey`]s.
//!
//! This module depends on neither `config` nor `auth`, like `tls`: `config` calls it once at
//! load for the static sources (`secret`, `public_key_pem`, `jwks_file`), so a bad key stops
//! start-up and `check` with its config key, and the validated config carries the parsed keys;
//! `auth` calls `parse_jwks` at run time for the documents of `jwks_url`s, and looks keys up.
//!
//! Nothing in here is driven by a token's header: `jku`/`x5u`/`jwk` header parameters are never
//! followed (RFC 8725 §3.10).

use std::path::Path;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};

/// Largest JWKS document accepted, from a file or a URL.
pub(crate) const MAX_JWKS_BYTES: usize = 512 * 1024;

/// A JWS algorithm a key may be configured with: jsonwebtoken's [`Algorithm`] without the
/// possibility of anything else (its enum is `non_exhaustive`; `none` is in neither).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JwsAlgorithm {
    /// HMAC with SHA-256.
    HS256,
    /// HMAC with SHA-384.
    HS384,
    /// HMAC with SHA-512.
    HS512,
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RS256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    RS384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    RS512,
    /// RSASSA-PSS with SHA-256.
    PS256,
    /// RSASSA-PSS with SHA-384.
    PS384,
    /// RSASSA-PSS with SHA-512.
    PS512,
    /// ECDSA on P-256 with SHA-256.
    ES256,
    /// ECDSA on P-384 with SHA-384.
    ES384,
    /// Ed25519.
    EdDSA,
}

impl JwsAlgorithm {
    /// Every algorithm, in the order the config reference lists them.
    pub const ALL: [Self; 12] = [
        Self::HS256,
        Self::HS384,
        Self::HS512,
        Self::RS256,
        Self::RS384,
        Self::RS512,
        Self::PS256,
        Self::PS384,
        Self::PS512,
        Self::ES256,
        Self::ES384,
        Self::EdDSA,
    ];

    /// The name a config and a token header (`alg`) spell it with.
    pub const fn name(self) -> &'static str {
        match self {
            Self::HS256 => "HS256",
            Self::HS384 => "HS384",
            Self::HS512 => "HS512",
            Self::RS256 => "RS256",
            Self::RS384 => "RS384",
            Self::RS512 => "RS512",
            Self::PS256 => "PS256",
            Self::PS384 => "PS384",
            Self::PS512 => "PS512",
            Self::ES256 => "ES256",
            Self::ES384 => "ES384",
            Self::EdDSA => "EdDSA",
        }
    }

    /// The algorithm of a config name (exact case); `None` for anything else, `none` included.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.name() == name)
    }

    /// jsonwebtoken's name for it.
    pub const fn jwt(self) -> Algorithm {
        match self {
            Self::HS256 => Algorithm::HS256,
            Self::HS384 => Algorithm::HS384,
            Self::HS512 => Algorithm::HS512,
            Self::RS256 => Algorithm::RS256,
            Self::RS384 => Algorithm::RS384,
            Self::RS512 => Algorithm::RS512,
            Self::PS256 => Algorithm::PS256,
            Self::PS384 => Algorithm::PS384,
            Self::PS512 => Algorithm::PS512,
            Self::ES256 => Algorithm::ES256,
            Self::ES384 => Algorithm::ES384,
            Self::EdDSA => Algorithm::EdDSA,
        }
    }

    /// Its position in [`Self::ALL`]: per-algorithm tables are arrays indexed by it.
    pub const fn index(self) -> usize {
        self as usize
    }

    /// An HMAC algorithm: verified with a `secret`, never with a public key or a JWKS.
    pub const fn is_hmac(self) -> bool {
        matches!(self, Self::HS256 | Self::HS384 | Self::HS512)
    }

    /// Minimum HMAC secret length: the hash output size (RFC 7518 §3.2).
    const fn min_secret_len(self) -> usize {
        match self {
            Self::HS384 => 48,
            Self::HS512 => 64,
            _ => 32,
        }
    }
}

/// One verification key and the one algorithm it verifies. Built only by this module's
/// loaders, which check that the key fits the algorithm (family, curve, secret length).
pub struct VerifyKey {
    /// The key id, matched against a token's `kid`; `None` verifies only tokens without one.
    pub(crate) kid: Option<String>,
    /// The only algorithm accepted with this key (RFC 8725 §3.1).
    pub(crate) alg: JwsAlgorithm,
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

/// An HMAC key from a `secret` (its raw bytes), at least as long as the hash (RFC 7518 §3.2).
/// The error never contains the secret.
pub(crate) fn from_secret(
    kid: Option<String>,
    alg: JwsAlgorithm,
    secret: &[u8],
) -> Result<VerifyKey, String> {
    let min = alg.min_secret_len();
    if secret.len() < min {
        // The length is no secret; the value never appears.
        return Err(format!(
            "{alg:?} needs a secret of at least {min} bytes (RFC 7518 §3.2)"
        ));
    }
    Ok(VerifyKey {
        kid,
        alg,
        key: DecodingKey::from_secret(secret),
    })
}

/// A public key read from a PEM file, checked against the algorithm's family and curve.
pub(crate) fn from_pem_file(
    kid: Option<String>,
    alg: JwsAlgorithm,
    path: &Path,
) -> Result<VerifyKey, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
    let key = pem_key(&pem, alg).map_err(|m| {
        format!(
            "`{}` is not a usable {alg:?} public key: {m}",
            path.display()
        )
    })?;
    Ok(VerifyKey { kid, alg, key })
}

/// The keys of a JWKS file usable with `alg` (see [`parse_jwks`]).
pub(crate) fn from_jwks_file(alg: JwsAlgorithm, path: &Path) -> Result<Vec<VerifyKey>, String> {
    let text = std::fs::read(path).map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
    if text.len() > MAX_JWKS_BYTES {
        return Err(format!(
            "`{}` is larger than {MAX_JWKS_BYTES} bytes",
            path.display()
        ));
    }
    parse_jwks(&text, alg).map_err(|m| format!("`{}`: {m}", path.display()))
}

/// A public key from PEM, checked against the algorithm's family and curve.
fn pem_key(pem: &[u8], alg: JwsAlgorithm) -> Result<DecodingKey, String> {
    use JwsAlgorithm as A;
    let key = match alg {
        A::RS256 | A::RS384 | A::RS512 | A::PS256 | A::PS384 | A::PS512 => {
            DecodingKey::from_rsa_pem(pem)
        }
        A::ES256 | A::ES384 => DecodingKey::from_ec_pem(pem),
        A::EdDSA => DecodingKey::from_ed_pem(pem),
        A::HS256 | A::HS384 | A::HS512 => {
            return Err("HMAC keys are secrets, not PEM files".into());
        }
    }
    .map_err(|e| e.to_string())?;
    check_point_size(&key, alg)?;
    Ok(key)
}

/// An EC or Ed25519 key must be a point of the algorithm's curve: a P-384 key configured for
/// ES256 would otherwise fail every token instead of failing start-up.
fn check_point_size(key: &DecodingKey, alg: JwsAlgorithm) -> Result<(), String> {
    let expected = match alg {
        JwsAlgorithm::ES256 => 65,
        JwsAlgorithm::ES384 => 97,
        JwsAlgorithm::EdDSA => 32,
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
pub(crate) fn parse_jwks(bytes: &[u8], alg: JwsAlgorithm) -> Result<Vec<VerifyKey>, String> {
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

fn jwk_key(jwk: &Jwk, alg: JwsAlgorithm) -> Option<VerifyKey> {
    use JwsAlgorithm as A;
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return None;
    }
    if let Some(key_alg) = jwk.common.key_algorithm
        && key_alg != KeyAlgorithm::from(alg.jwt())
    {
        return None;
    }
    let fits = match (&jwk.algorithm, alg) {
        (
            AlgorithmParameters::RSA(_),
            A::RS256 | A::RS384 | A::RS512 | A::PS256 | A::PS384 | A::PS512,
        ) => true,
        (AlgorithmParameters::EllipticCurve(p), A::ES256) => p.curve == EllipticCurve::P256,
        (AlgorithmParameters::EllipticCurve(p), A::ES384) => p.curve == EllipticCurve::P384,
        (AlgorithmParameters::OctetKeyPair(p), A::EdDSA) => p.curve == EllipticCurve::Ed25519,
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

    #[test]
    fn none_is_not_an_algorithm() {
        for name in ["none", "None", "NONE", "hs256", ""] {
            assert!(JwsAlgorithm::from_name(name).is_none(), "{name}");
        }
        assert_eq!(JwsAlgorithm::from_name("EdDSA"), Some(JwsAlgorithm::EdDSA));
        for (i, alg) in JwsAlgorithm::ALL.into_iter().enumerate() {
            assert_eq!(alg.index(), i);
            assert_eq!(JwsAlgorithm::from_name(alg.name()), Some(alg));
            assert_eq!(format!("{:?}", alg.jwt()), alg.name());
        }
    }

    #[test]
    fn short_hmac_secrets_are_refused() {
        let msg = from_secret(None, JwsAlgorithm::HS256, "x".repeat(31).as_bytes()).unwrap_err();
        assert!(msg.contains("32"), "{msg}");
        assert!(!msg.contains("xxx"), "the secret must not be echoed: {msg}");
        assert!(from_secret(None, JwsAlgorithm::HS256, "x".repeat(32).as_bytes()).is_ok());
        assert!(from_secret(None, JwsAlgorithm::HS512, "x".repeat(32).as_bytes()).is_err());
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
        let keys = parse_jwks(doc.as_bytes(), JwsAlgorithm::RS256).unwrap();
        let kids: Vec<_> = keys.iter().map(|k| k.kid.as_deref()).collect();
        assert_eq!(kids, [Some("r1")]);
        assert!(parse_jwks(doc.as_bytes(), JwsAlgorithm::ES256).is_err());
        assert!(parse_jwks(b"[]", JwsAlgorithm::RS256).is_err());
        // HMAC never comes from a JWKS, even when asked for.
        assert!(parse_jwks(doc.as_bytes(), JwsAlgorithm::HS256).is_err());
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
        let msg = from_pem_file(None, JwsAlgorithm::RS256, &path).unwrap_err();
        assert!(msg.contains("garbage.pem"), "{msg}");
        assert!(msg.contains("not a usable RS256"), "{msg}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
