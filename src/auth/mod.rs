//! Authentication (JWT bearer tokens) and per-route authorization (roles, scopes).
//!
//! This module owns: the keys in use (`keys`: lookup by `kid`; `jwks`: JWKS URLs with
//! refresh), how a token becomes an [`Identity`] ([`Authenticator`]), and the per-route rule as
//! a tower layer ([`RequireAuthLayer`] → [`RequireAuth`]). It knows nothing of AMQP or
//! upstreams. Static keys (secrets, PEM files, JWKS files) arrive parsed in the validated
//! [`AuthConfig`](crate::config::AuthConfig): `config` loads them once with [`crate::keys`],
//! and `auth` depends on `config`, never the other way round.
//!
//! # What a request goes through
//!
//! 1. Every client-sent `X-Auth-*` header is removed, on public routes too: identity headers
//!    come from a verified token or not at all.
//! 2. Public route: done. Otherwise exactly one `Authorization: Bearer <jwt>` (scheme
//!    case-insensitive); tokens in the query string or cookies are never read.
//! 3. The token (at most [`MAX_TOKEN_BYTES`]) is verified with the key named by its `kid` (or
//!    the keys without `kid`), using that key's one algorithm: `alg: none`, HS/RS confusion and
//!    any `alg` other than the key's fail. `exp`, `iss`, `aud`, `sub` are required, `nbf` is
//!    enforced, with the configured leeway; `typ`, when present, must be `JWT` or `at+jwt`.
//! 4. The route's policy is checked against the identity's roles and scopes.
//!
//! | outcome | status | `WWW-Authenticate` | problem type |
//! | --- | --- | --- | --- |
//! | no token, or another scheme | 401 | `Bearer` | `unauthorized` |
//! | two `Authorization` headers | 400 | `Bearer error="invalid_request"` | `invalid-auth-request` |
//! | bad/expired/not-yet-valid token, wrong `iss`/`aud`, unknown `kid` | 401 | `Bearer error="invalid_token"` | `invalid-token` |
//! | valid token, missing role/scope | 403 | `Bearer error="insufficient_scope"[, scope="…"]` | `insufficient-scope` |
//!
//! Bodies and logs never contain the token or the verifier's error text; a reason code
//! (`expired`, `unknown-kid`, …) is logged at debug level.
//!
//! # Extension contract
//!
//! On success the request reaches the handler with an [`Identity`] in its extensions
//! (`request.extensions().get::<Identity>()`); on public routes there is none. Cloning it is
//! one `Arc` increment. [`Identity::headers`] yields the identity headers, subject first:
//! `x-auth-sub`, then `x-auth-<name>` for each `auth.propagate_claims` entry the token carries.
//! - writes add them to the AMQP headers;
//! - reads send them upstream (client copies were removed in step 1) and key private cached
//!   responses by `identity.subject`.
//!
//! # Key sets and the token cache
//!
//! Static keys are parsed once, at config load (so `check` reports a bad PEM by name, and a
//! reload reads the files again).
//! JWKS URLs are fetched at start-up, and start-up fails if one cannot be: the gateway never
//! serves with a cold key set. They are refetched every `jwks_refresh`, and on an unknown `kid`
//! at most once per `jwks_cooldown` (one fetch in flight; others wait for it). A failed fetch
//! keeps the last good set for up to `jwks_max_stale`.
//!
//! A verified token's identity is cached under the token's SHA-256 until
//! `min(exp + leeway, token_cache_ttl)`, bounded to `token_cache_size` entries. Any change of
//! a JWKS document empties the cache, so a removed key stops working at the next successful
//! fetch (≤ `jwks_refresh`, or at once via an unknown-`kid` refetch); static keys change only
//! with a restart.

mod authenticator;
mod identity;
mod jwks;
pub(crate) mod keys;
mod layer;
mod service;

pub use authenticator::AuthStartError;
pub(crate) use authenticator::{Authenticator, Rejection};
#[cfg(test)]
pub(crate) use identity::IdentityData;
pub(crate) use identity::{Identity, SUBJECT_HEADER};
pub(crate) use layer::RequireAuthLayer;
