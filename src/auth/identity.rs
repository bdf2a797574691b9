//! [`Identity`]: who a verified token says the caller is, and the route checks against it.

use std::ops::Deref;
use std::sync::Arc;

use http::HeaderName;
use serde_json::{Map, Value};

use crate::config::{AuthPolicy, PolicyMatch};

/// Name of the subject header: AMQP header on writes, HTTP header upstream on reads.
pub(crate) const SUBJECT_HEADER: &str = "x-auth-sub";

/// Longest subject or propagated claim value; longer claims are refused (subject) or not sent.
const MAX_CLAIM_VALUE: usize = 1024;

/// The caller, from a verified token. Inserted into request extensions by
/// [`RequireAuth`](super::RequireAuth); cloning is one `Arc` increment.
#[derive(Clone, Debug)]
pub(crate) struct Identity(Arc<IdentityData>);

/// What an [`Identity`] holds (reached through `Deref`: `identity.subject`).
#[derive(Debug)]
pub(crate) struct IdentityData {
    /// The `sub` claim: 1–1024 bytes, no control characters.
    pub subject: String,
    /// Roles from `auth.roles_claim`.
    pub roles: Vec<String>,
    /// Scopes from `scope` (space-separated) and `scp` (array or space-separated).
    pub scopes: Vec<String>,
    /// `auth.propagate_claims` that the token carries: (`x-auth-<name>`, value). Values have
    /// no control characters, so each is a valid HTTP header value and AMQP string.
    pub propagated: Vec<(HeaderName, String)>,
    /// The token's `exp` (seconds since the epoch).
    pub expires_at: u64,
}

impl Deref for Identity {
    type Target = IdentityData;
    fn deref(&self) -> &IdentityData {
        &self.0
    }
}

impl Identity {
    /// Builds an identity (verified claims make one; tests too).
    pub(crate) fn new(data: IdentityData) -> Self {
        Self(Arc::new(data))
    }

    /// The identity headers, subject first: `("x-auth-sub", sub)`, then each propagated claim.
    /// Names are lower case; the same pairs serve as AMQP headers and upstream HTTP headers.
    pub(crate) fn headers(&self) -> impl Iterator<Item = (&str, &str)> {
        std::iter::once((SUBJECT_HEADER, self.subject.as_str())).chain(
            self.propagated
                .iter()
                .map(|(name, value)| (name.as_str(), value.as_str())),
        )
    }

    /// Whether this identity satisfies a route's policy.
    pub(crate) fn satisfies(&self, policy: &AuthPolicy) -> bool {
        let holds = |required: &[String], held: &[String]| {
            required.is_empty()
                || match policy.mode {
                    PolicyMatch::Any => required.iter().any(|r| held.contains(r)),
                    PolicyMatch::All => required.iter().all(|r| held.contains(r)),
                }
        };
        holds(&policy.roles, &self.roles) && holds(&policy.scopes, &self.scopes)
    }
}

/// A claim name or dotted path, resolved against a claims object.
#[derive(Debug, Clone)]
pub(crate) struct ClaimPath {
    whole: String,
    parts: Vec<String>,
}

impl ClaimPath {
    pub(crate) fn new(path: &str) -> Self {
        Self {
            whole: path.to_owned(),
            parts: path.split('.').map(str::to_owned).collect(),
        }
    }

    /// The whole name first (`https://example.com/roles` is one claim), then the path.
    pub(crate) fn get<'a>(&self, claims: &'a Map<String, Value>) -> Option<&'a Value> {
        if let Some(v) = claims.get(&self.whole) {
            return Some(v);
        }
        let (first, rest) = self.parts.split_first()?;
        rest.iter()
            .try_fold(claims.get(first)?, |v, part| v.as_object()?.get(part))
    }
}

/// Why verified claims do not make an identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClaimsError {
    /// `sub` missing, not a string, empty, too long or with control characters.
    Subject,
}

/// How claims become an [`Identity`] (from `[auth]`).
#[derive(Debug, Clone)]
pub(crate) struct Claims {
    pub(crate) roles: ClaimPath,
    pub(crate) propagate: Vec<(HeaderName, ClaimPath)>,
}

impl Claims {
    /// Builds the identity from verified claims (`exp` already checked to be a number).
    pub(crate) fn identity(&self, claims: &Map<String, Value>) -> Result<Identity, ClaimsError> {
        let subject = match claims.get("sub") {
            Some(Value::String(s)) if valid_value(s) => s.clone(),
            _ => return Err(ClaimsError::Subject),
        };
        let roles = self.roles.get(claims).map(strings).unwrap_or_default();
        let mut scopes = Vec::new();
        for name in ["scope", "scp"] {
            for s in claims.get(name).map(strings).unwrap_or_default() {
                if !scopes.contains(&s) {
                    scopes.push(s);
                }
            }
        }
        let propagated = self
            .propagate
            .iter()
            .filter_map(|(header, path)| {
                let value = match path.get(claims)? {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    Value::Array(items) => {
                        let all: Option<Vec<&str>> = items.iter().map(Value::as_str).collect();
                        all?.join(",")
                    }
                    Value::Null | Value::Object(_) => return None,
                };
                valid_value(&value).then(|| (header.clone(), value))
            })
            .collect();
        let expires_at = claims.get("exp").and_then(Value::as_u64).unwrap_or(0);
        Ok(Identity::new(IdentityData {
            subject,
            roles,
            scopes,
            propagated,
            expires_at,
        }))
    }
}

/// A value fit for a header: 1–1024 bytes, no control characters (no CR/LF injection).
fn valid_value(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_CLAIM_VALUE && !s.chars().any(char::is_control)
}

/// Strings of a claim: an array's string items, or a string split on spaces (OAuth `scope`).
fn strings(value: &Value) -> Vec<String> {
    match value {
        Value::String(s) => s
            .split(' ')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        Value::Array(items) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn extractor() -> Claims {
        Claims {
            roles: ClaimPath::new("realm_access.roles"),
            propagate: vec![
                (
                    HeaderName::from_static("x-auth-email"),
                    ClaimPath::new("email"),
                ),
                (
                    HeaderName::from_static("x-auth-tenant"),
                    ClaimPath::new("org.id"),
                ),
                (
                    HeaderName::from_static("x-auth-evil"),
                    ClaimPath::new("evil"),
                ),
            ],
        }
    }

    #[test]
    fn roles_scopes_and_claims_are_extracted() {
        let id = extractor()
            .identity(&claims(json!({
                "sub": "alice", "exp": 10,
                "realm_access": {"roles": ["admin", "user"]},
                "scope": "users:read  users:write", "scp": ["users:read", "orders:read"],
                "email": "a@example.com", "org": {"id": 42}, "evil": "x\r\nInjected: 1",
            })))
            .unwrap();
        assert_eq!(id.subject, "alice");
        assert_eq!(id.roles, ["admin", "user"]);
        assert_eq!(id.scopes, ["users:read", "users:write", "orders:read"]);
        let headers: Vec<_> = id.headers().collect();
        assert_eq!(
            headers,
            [
                ("x-auth-sub", "alice"),
                ("x-auth-email", "a@example.com"),
                ("x-auth-tenant", "42")
            ]
        );
        assert_eq!(id.expires_at, 10);
    }

    #[test]
    fn a_claim_name_with_dots_is_found_whole() {
        let path = ClaimPath::new("https://example.com/roles");
        let c = claims(json!({"https://example.com/roles": ["x"]}));
        assert_eq!(path.get(&c), Some(&json!(["x"])));
    }

    #[test]
    fn subject_must_be_a_clean_string() {
        for sub in [json!(42), json!(""), json!("a\nb"), json!("x".repeat(1025))] {
            let c = claims(json!({"sub": sub, "exp": 1}));
            assert_eq!(
                extractor().identity(&c).unwrap_err(),
                ClaimsError::Subject,
                "{sub}"
            );
        }
        assert!(extractor().identity(&claims(json!({"exp": 1}))).is_err());
    }

    #[test]
    fn policy_any_and_all() {
        let id = Identity::new(IdentityData {
            subject: "s".into(),
            roles: vec!["user".into()],
            scopes: vec!["a".into(), "b".into()],
            propagated: vec![],
            expires_at: 0,
        });
        let policy = |roles: &[&str], scopes: &[&str], mode| AuthPolicy {
            roles: roles.iter().map(|s| s.to_string()).collect(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            mode,
        };
        use PolicyMatch::{All, Any};
        assert!(id.satisfies(&policy(&[], &[], Any)));
        assert!(id.satisfies(&policy(&["admin", "user"], &[], Any)));
        assert!(!id.satisfies(&policy(&["admin", "user"], &[], All)));
        assert!(id.satisfies(&policy(&[], &["a", "b"], All)));
        assert!(!id.satisfies(&policy(&[], &["a", "c"], All)));
        assert!(id.satisfies(&policy(&[], &["a", "c"], Any)));
        // Both lists must hold.
        assert!(!id.satisfies(&policy(&["admin"], &["a"], Any)));
        assert!(id.satisfies(&policy(&["user"], &["b"], Any)));
    }
}
