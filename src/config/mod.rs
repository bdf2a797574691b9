//! Configuration: the TOML file, parsed once at start-up into validated types.
//!
//! Loading is three steps, each with its own error shape but one [`ConfigError`] out:
//! 1. `${VAR}` interpolation of the text ([`interpolate`]), with the environment passed in;
//! 2. TOML → the serde `Raw*` types (`deny_unknown_fields`, typed durations and addresses);
//!    errors carry the key path and the line;
//! 3. [`Config::validate`]: cross-field rules (a route's exchange exists, routing-key
//!    placeholders are path parameters, …) that produce the [`Config`] the rest of the program
//!    uses. Nothing downstream re-checks what this module guarantees.

mod interpolate;
mod secret;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::Method;
use ipnet::IpNet;
use serde::Deserialize;

pub use interpolate::{InterpolateError, interpolate};
pub use secret::Secret;

use crate::template::{Template, is_param_name};

/// Largest message body we let through to the broker: RabbitMQ's default `max_message_size`
/// is 16 MiB, minus room for properties and headers.
pub const MAX_BODY_BYTES_LIMIT: usize = 16 * 1024 * 1024 - 64 * 1024;

/// AMQP header names the gateway sets itself; static route headers may not use them.
pub const RESERVED_HEADERS: &[&str] =
    &["x-http-method", "x-http-path", "x-auth-sub", "traceparent"];

/// Prefix of the identity headers (`x-auth-sub`, `x-auth-<claim>`): set only by the gateway,
/// from a verified token; client-sent copies are always removed.
pub const AUTH_HEADER_PREFIX: &str = "x-auth-";

/// Prefix of the per-path-parameter AMQP headers (`x-param-id` for `{id}`).
pub const PARAM_HEADER_PREFIX: &str = "x-param-";

/// A config that failed to load: the file, where, and what is wrong, on one line.
#[derive(Debug, thiserror::Error)]
#[error("{file}{}: {}{message}", line.map(|l| format!(":{l}")).unwrap_or_default(), key.as_deref().map(|k| format!("{k}: ")).unwrap_or_default())]
pub struct ConfigError {
    /// The config file (or `<string>` when parsed from memory).
    pub file: String,
    /// 1-based line, when the parser knows it.
    pub line: Option<usize>,
    /// Dotted key path such as `routes[2].publish.exchange`.
    pub key: Option<String>,
    /// What is wrong.
    pub message: String,
}

// ---------------------------------------------------------------------------------------------
// Raw (serde) types. Field docs state unit, default and constraints.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    server: ServerConfig,
    amqp: RawAmqpConfig,
    #[serde(default)]
    auth: Option<AuthConfig>,
    #[serde(default)]
    cors: Option<CorsConfig>,
    #[serde(default)]
    upstreams: BTreeMap<String, UpstreamConfig>,
    #[serde(default)]
    cache: CacheSettings,
    #[serde(default)]
    routes: Vec<RawRoute>,
}

/// `[cache]`: the shared response cache used by read routes with `cache = {...}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSettings {
    /// Memory budget for stored bodies (all encodings) and headers, in bytes. Default 64 MiB.
    #[serde(default = "default_cache_max_bytes")]
    pub max_bytes: u64,
    /// Largest response body that is stored or given a generated ETag, in bytes; larger ones
    /// are streamed through. Default 1 MiB, at most `max_bytes`.
    #[serde(default = "default_cache_max_object_bytes")]
    pub max_object_bytes: usize,
}

impl Default for CacheSettings {
    fn default() -> Self {
        Self {
            max_bytes: default_cache_max_bytes(),
            max_object_bytes: default_cache_max_object_bytes(),
        }
    }
}

const fn default_cache_max_bytes() -> u64 {
    64 * 1024 * 1024
}
const fn default_cache_max_object_bytes() -> usize {
    1024 * 1024
}

/// `[server]`: listeners and HTTP limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Public listener (HTTP/1.1 and h2c). Required.
    pub listen: SocketAddr,
    /// Admin listener for `/healthz`, `/readyz`. Required; must differ from `listen`.
    pub admin_listen: SocketAddr,
    /// Largest accepted request body in bytes, after gzip decoding too. Default 1 MiB, at most
    /// [`MAX_BODY_BYTES_LIMIT`].
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Peers allowed to set `X-Forwarded-*`. Default: none.
    #[serde(default)]
    pub trusted_proxies: Vec<IpNet>,
    /// How long in-flight requests get to finish after SIGTERM/SIGINT. Default 30s.
    #[serde(default = "default_shutdown_timeout", with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// After SIGTERM, keep serving this long with `/readyz` failing and `Connection: close` on
    /// every response, before refusing new connections (lets load balancers notice). Default 0s.
    #[serde(default, with = "humantime_serde")]
    pub shutdown_delay: Duration,
    /// Deadline for a request head to arrive (slowloris). hyper uses the same timer while a
    /// keep-alive connection is idle, so this is also the idle timeout: keep it above the
    /// upstream keep-alive timeout of any proxy in front (deploy/nginx.conf uses 5s). Default 10s.
    #[serde(default = "default_header_read_timeout", with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Deadline for reading a request body; a stalled body gets 408. Default 30s.
    #[serde(default = "default_body_read_timeout", with = "humantime_serde")]
    pub body_read_timeout: Duration,
    /// Largest request head (request line + headers) in bytes: 431 beyond it (414 for the
    /// URI). Default 32 KiB, at least 8 KiB.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// Most request headers: 431 beyond it. Default 100.
    #[serde(default = "default_max_headers")]
    pub max_headers: usize,
}

const fn default_header_read_timeout() -> Duration {
    Duration::from_secs(10)
}
const fn default_body_read_timeout() -> Duration {
    Duration::from_secs(30)
}
const fn default_max_header_bytes() -> usize {
    32 * 1024
}
const fn default_max_headers() -> usize {
    100
}

const fn default_max_body_bytes() -> usize {
    1024 * 1024
}
const fn default_shutdown_timeout() -> Duration {
    Duration::from_secs(30)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAmqpConfig {
    url: Secret,
    #[serde(default = "default_connections")]
    connections: usize,
    #[serde(default = "default_channels_per_connection")]
    channels_per_connection: usize,
    #[serde(default = "default_confirm_timeout", with = "humantime_serde")]
    confirm_timeout: Duration,
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    connect_timeout: Duration,
    #[serde(default = "default_retry_after", with = "humantime_serde")]
    retry_after: Duration,
    #[serde(default)]
    exchanges: Vec<ExchangeConfig>,
}

const fn default_connections() -> usize {
    2
}
const fn default_channels_per_connection() -> usize {
    8
}
const fn default_confirm_timeout() -> Duration {
    Duration::from_secs(5)
}
const fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}
const fn default_retry_after() -> Duration {
    Duration::from_secs(1)
}

/// `[amqp]`, validated.
#[derive(Debug, Clone)]
pub struct AmqpConfig {
    /// Broker URL (`amqp://` or `amqps://`), may carry credentials: never logged.
    pub url: Secret,
    /// Number of AMQP connections (1–64). Default 2.
    pub connections: usize,
    /// Confirm-mode publishing channels per connection (1–128). Default 8.
    pub channels_per_connection: usize,
    /// Longest wait for a publish to be confirmed before answering 504. Default 5s.
    pub confirm_timeout: Duration,
    /// Longest wait for a TCP+AMQP connection to open. Default 5s.
    pub connect_timeout: Duration,
    /// `Retry-After` sent with 503s caused by the broker. Default 1s (rounded up to seconds).
    pub retry_after: Duration,
    /// Exchanges declared durable at every (re)connect.
    pub exchanges: Vec<ExchangeConfig>,
}

/// `[[amqp.exchanges]]`: an exchange the gateway declares (durable, idempotent).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ExchangeConfig {
    /// Exchange name; not empty, not `amq.*` (reserved by the broker), ≤ 255 bytes.
    pub name: String,
    /// Exchange type.
    #[serde(rename = "type")]
    pub kind: ExchangeKind,
}

/// AMQP exchange types.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ExchangeKind {
    /// Routing key pattern match.
    Topic,
    /// Exact routing key match.
    Direct,
    /// Every bound queue.
    Fanout,
    /// Header match.
    Headers,
}

/// `[auth]`: how bearer tokens are verified. Optional while every route is public.
///
/// Every token must carry `exp`, `iss`, `aud` and `sub`; `nbf` is enforced when present.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Required `iss` claim (exact match). Required, not empty.
    pub issuer: String,
    /// Required `aud` claim (the token's `aud`, string or array, must contain it). Required,
    /// not empty.
    pub audience: String,
    /// Clock leeway for `exp`/`nbf`. Default 30s, at most 60s.
    #[serde(default = "default_leeway", with = "humantime_serde")]
    pub leeway: Duration,
    /// Claim holding the roles (array of strings, or one string); a dotted path such as
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
    pub keys: Vec<KeyConfig>,
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

/// JWS algorithms a key may be configured with (`none` is not one of them).
pub const JWT_ALGORITHMS: &[&str] = &[
    "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256",
    "ES384", "EdDSA",
];

/// `[[auth.keys]]`: one verification key (or key set), with exactly one source.
///
/// Paths are relative to the working directory.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// Key id matched against the token's `kid`. A key without `kid` verifies only tokens
    /// without `kid`. Unique among `secret`/`public_key_pem` keys; not allowed with JWKS
    /// sources (their keys carry their own `kid`).
    pub kid: Option<String>,
    /// The only algorithm this key verifies: one of [`JWT_ALGORITHMS`]. For a JWKS, the
    /// algorithm of every key taken from it (keys of another type, curve or `alg` are skipped).
    pub algorithm: String,
    /// HMAC secret for `HS*` (raw bytes of the string): at least 32/48/64 bytes for
    /// HS256/384/512 (RFC 7518 §3.2). Use `${VAR}` interpolation.
    pub secret: Option<Secret>,
    /// PEM file with the public key for `RS*`/`PS*`/`ES*`/`EdDSA`; parsed at load time.
    pub public_key_pem: Option<PathBuf>,
    /// A JWKS file, read at load time. Not for `HS*`.
    pub jwks_file: Option<PathBuf>,
    /// An `http://` JWKS URL: fetched at start-up (start-up fails if it cannot be), then every
    /// `auth.jwks_refresh` and on an unknown `kid`. Not for `HS*`.
    pub jwks_url: Option<String>,
}

/// `[upstreams.NAME]`: a load-balanced set of HTTP targets for read routes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Base URLs (`http://host:port`), at least one.
    pub targets: Vec<String>,
    /// Whole-request timeout towards a target, headers and body. Default 5s.
    #[serde(default = "default_upstream_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// TCP connect timeout; a target that fails to connect is skipped for `fail_timeout` and
    /// the next one is tried. Default 1s, at most `timeout`.
    #[serde(default = "default_upstream_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How long a target that failed to connect is skipped (passive health). Default 10s.
    #[serde(default = "default_fail_timeout", with = "humantime_serde")]
    pub fail_timeout: Duration,
}

const fn default_upstream_timeout() -> Duration {
    Duration::from_secs(5)
}
const fn default_upstream_connect_timeout() -> Duration {
    Duration::from_secs(1)
}
const fn default_fail_timeout() -> Duration {
    Duration::from_secs(10)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    name: String,
    path: String,
    methods: Vec<String>,
    #[serde(default)]
    auth: Option<RawRouteAuth>,
    #[serde(default)]
    upstream: Option<String>,
    #[serde(default)]
    upstream_path: Option<String>,
    #[serde(default)]
    cache: Option<CacheConfig>,
    #[serde(default)]
    etag: Option<bool>,
    #[serde(default)]
    forward_authorization: Option<bool>,
    #[serde(default)]
    compress: Option<CompressPolicy>,
    #[serde(default)]
    publish: Option<RawPublish>,
    #[serde(default)]
    cors: Option<RawRouteCors>,
}

/// A route's `cors`: `false` (none), `true` (the global `[cors]`) or its own table.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawRouteCors {
    Enabled(bool),
    Custom(CorsConfig),
}

/// When a read route compresses responses (`compress = "..."`).
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum CompressPolicy {
    /// Compress responses to anonymous requests only. Responses to authenticated requests may
    /// reflect input next to secrets, which compression leaks (BREACH). The default.
    #[default]
    Auto,
    /// Always compress (the route's responses carry no secrets).
    Always,
    /// Never compress.
    Never,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawRouteAuth {
    Keyword(AuthKeyword),
    Policy(AuthPolicy),
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum AuthKeyword {
    Public,
    Authenticated,
}

/// `auth = { roles = [...], scopes = [...], match = "any" }` on a route.
///
/// Each non-empty list is a requirement and both must hold: with `match = "any"` the token
/// needs at least one listed role and at least one listed scope; with `"all"`, every one.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AuthPolicy {
    /// Roles (from `auth.roles_claim`). Not empty strings, no control characters.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Scopes (from `scope`, space-separated, or `scp`, array or string). RFC 6749 scope
    /// tokens: visible ASCII without `"` or `\`.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// `any` (default) or `all` of each list.
    #[serde(default, rename = "match")]
    pub mode: PolicyMatch,
}

/// How a route's role and scope lists are matched.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PolicyMatch {
    /// At least one of each list.
    #[default]
    Any,
    /// Every entry of each list.
    All,
}

/// Per-route response cache (read routes).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// Freshness when the upstream's `Cache-Control` gives none. Greater than zero.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPublish {
    exchange: String,
    routing_key: String,
    #[serde(default = "default_status")]
    status: u16,
    #[serde(default)]
    location: Option<String>,
    #[serde(default)]
    content_types: Option<Vec<String>>,
    #[serde(default)]
    properties: StaticProperties,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

const fn default_status() -> u16 {
    202
}

/// `publish.properties`: message properties fixed by the route, for consumers that switch on
/// them. Anything left out is derived from the request.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StaticProperties {
    /// AMQP `type`; default: the rendered routing key.
    #[serde(rename = "type")]
    pub message_type: Option<String>,
    /// AMQP `content_type`; default: the request's `Content-Type`.
    pub content_type: Option<String>,
    /// AMQP `priority` (0–9).
    pub priority: Option<u8>,
}

// ---------------------------------------------------------------------------------------------
// Validated types.
// ---------------------------------------------------------------------------------------------

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// `[server]`.
    pub server: ServerConfig,
    /// `[amqp]`.
    pub amqp: AmqpConfig,
    /// `[auth]`, present whenever a route is not public.
    pub auth: Option<AuthConfig>,
    /// `[cors]`, the default of every route.
    pub cors: Option<CorsConfig>,
    /// `[upstreams.*]`.
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    /// `[cache]`.
    pub cache: CacheSettings,
    /// `[[routes]]`, in file order.
    pub routes: Vec<Route>,
}

/// A validated route.
#[derive(Debug, Clone)]
pub struct Route {
    /// Unique name, used in logs and metrics.
    pub name: String,
    /// Path pattern (`/users/{id}`, `/files/{*rest}`).
    pub path: String,
    /// Path parameter names, in order.
    pub path_params: Vec<String>,
    /// Methods served.
    pub methods: Vec<Method>,
    /// Who may call it.
    pub auth: RouteAuth,
    /// CORS for this route (the global `[cors]` unless overridden); `None`: no CORS headers.
    /// Routes sharing a path share it.
    pub cors: Option<CorsConfig>,
    /// What it does.
    pub action: RouteAction,
}

/// Route access rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteAuth {
    /// No token needed.
    Public,
    /// A valid token with the given roles/scopes (empty policy: any valid token).
    Required(AuthPolicy),
}

/// What a route does with a request.
#[derive(Debug, Clone)]
pub enum RouteAction {
    /// Publish a confirmed event (writes).
    Publish(PublishTarget),
    /// Proxy to an upstream (reads).
    Proxy(ProxyTarget),
}

/// Where and how a write route publishes.
#[derive(Debug, Clone)]
pub struct PublishTarget {
    /// Exchange name; `""` is the default exchange.
    pub exchange: String,
    /// Routing key template; placeholders are path parameters.
    pub routing_key: Template,
    /// Success status: 202 or 201.
    pub status: u16,
    /// `Location` template; placeholders are path parameters or `event_id`.
    pub location: Option<Template>,
    /// Accepted request media types (lower-case `type/subtype`).
    pub content_types: Vec<String>,
    /// Static message properties.
    pub properties: StaticProperties,
    /// Static AMQP headers.
    pub headers: Vec<(String, String)>,
}

/// Where a read route forwards.
#[derive(Debug, Clone)]
pub struct ProxyTarget {
    /// Key into [`Config::upstreams`].
    pub upstream: String,
    /// Optional path rewrite; placeholders are path parameters.
    pub upstream_path: Option<Template>,
    /// Optional response cache.
    pub cache: Option<CacheConfig>,
    /// Generate a strong ETag from the body when the upstream sends none (`etag`, default true).
    pub generate_etag: bool,
    /// Forward the client's `Authorization` upstream (`forward_authorization`, default false).
    pub forward_authorization: bool,
    /// Response compression policy (`compress`, default `auto`).
    pub compress: CompressPolicy,
}

impl Config {
    /// Reads, interpolates, parses and validates `path`; `env` looks up `${VAR}`s.
    pub fn load(path: &Path, env: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            line: None,
            key: None,
            message: format!("cannot read file: {e}"),
        })?;
        Self::from_toml(&text, &file, env)
    }

    /// Like [`Config::load`], from text; `file` names it in errors.
    pub fn from_toml(
        text: &str,
        file: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let err = |line, key: Option<String>, message: String| ConfigError {
            file: file.to_owned(),
            line,
            key,
            message,
        };
        let text = interpolate(text, env).map_err(|e| {
            let line = match &e {
                InterpolateError::Missing { line, .. } | InterpolateError::Malformed { line } => {
                    *line
                }
            };
            // The line is already in the error's own message; keep the prefix for editors.
            let message = e.to_string();
            let message = message
                .split_once(": ")
                .map_or(message.clone(), |(_, m)| m.to_owned());
            err(Some(line), None, message)
        })?;
        let raw: RawConfig = {
            let de = toml::Deserializer::parse(&text)
                .map_err(|e| err(line_of(&text, e.span()), None, e.message().to_owned()))?;
            serde_path_to_error::deserialize(de).map_err(|e| {
                let key = e.path().to_string();
                let inner = e.into_inner();
                err(
                    line_of(&text, inner.span()),
                    (key != ".").then_some(key),
                    inner.message().to_owned(),
                )
            })?
        };
        raw.validate()
            .map_err(|(key, message)| err(None, Some(key), message))
    }
}

fn line_of(text: &str, span: Option<std::ops::Range<usize>>) -> Option<usize> {
    span.map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1)
}

type Invalid = (String, String);

fn invalid(key: impl Into<String>, message: impl Into<String>) -> Invalid {
    (key.into(), message.into())
}

impl RawConfig {
    fn validate(self) -> Result<Config, Invalid> {
        let server = self.server;
        if server.listen == server.admin_listen {
            return Err(invalid(
                "server.admin_listen",
                "must differ from server.listen",
            ));
        }
        if server.max_body_bytes == 0 || server.max_body_bytes > MAX_BODY_BYTES_LIMIT {
            return Err(invalid(
                "server.max_body_bytes",
                format!(
                    "must be between 1 and {MAX_BODY_BYTES_LIMIT} (broker max_message_size minus headroom)"
                ),
            ));
        }
        if !(8192..=1024 * 1024).contains(&server.max_header_bytes) {
            return Err(invalid(
                "server.max_header_bytes",
                "must be between 8192 and 1048576",
            ));
        }
        if !(1..=1000).contains(&server.max_headers) {
            return Err(invalid("server.max_headers", "must be between 1 and 1000"));
        }
        for (key, value) in [
            ("server.header_read_timeout", server.header_read_timeout),
            ("server.body_read_timeout", server.body_read_timeout),
        ] {
            if value.is_zero() {
                return Err(invalid(key, "must be greater than zero"));
            }
        }
        let amqp = self.amqp.validate()?;
        if self.cache.max_object_bytes == 0
            || self.cache.max_object_bytes as u64 > self.cache.max_bytes
        {
            return Err(invalid(
                "cache.max_object_bytes",
                "must be between 1 and cache.max_bytes",
            ));
        }
        if let Some(auth) = &self.auth {
            validate_auth(auth)?;
        }
        if let Some(cors) = &self.cors {
            validate_cors(cors, "cors")?;
        }
        // CORS is answered per path (a preflight names the method it will use), so routes that
        // share a path must share their CORS settings.
        let mut cors_by_path: BTreeMap<String, (Option<CorsConfig>, usize)> = BTreeMap::new();
        for (name, upstream) in &self.upstreams {
            validate_upstream(name, upstream)?;
        }

        let exchanges: BTreeSet<&str> = amqp.exchanges.iter().map(|e| e.name.as_str()).collect();
        let mut names = BTreeSet::new();
        // The router (axum, on matchit) rejects ambiguous patterns by panicking; find them here.
        let mut patterns = matchit::Router::new();
        let mut spelled: BTreeMap<String, String> = BTreeMap::new();
        let mut claimed: BTreeMap<(String, Method), String> = BTreeMap::new();
        let mut routes = Vec::with_capacity(self.routes.len());
        for (i, mut raw) in self.routes.into_iter().enumerate() {
            let key = |field: &str| format!("routes[{i}].{field}");
            let raw_cors = raw.cors.take();
            let mut route = raw.validate(i, &exchanges, &self.upstreams)?;
            route.cors = match raw_cors {
                None => self.cors.clone(),
                Some(RawRouteCors::Enabled(false)) => None,
                Some(RawRouteCors::Enabled(true)) => match &self.cors {
                    Some(global) => Some(global.clone()),
                    None => {
                        return Err(invalid(key("cors"), "`cors = true` needs a [cors] section"));
                    }
                },
                Some(RawRouteCors::Custom(c)) => {
                    validate_cors(&c, &key("cors"))?;
                    Some(c)
                }
            };
            if let RouteAuth::Required(policy) = &route.auth {
                validate_policy(policy).map_err(|m| invalid(key("auth"), m))?;
            }
            if !names.insert(route.name.clone()) {
                return Err(invalid(
                    key("name"),
                    format!("duplicate route name `{}`", route.name),
                ));
            }
            if route.auth != RouteAuth::Public && self.auth.is_none() {
                return Err(invalid(
                    key("auth"),
                    "route requires authentication but there is no [auth] section (use auth = \"public\" or add [auth])",
                ));
            }
            let shape = path_shape(&route.path);
            match spelled.get(&shape) {
                Some(path) if *path != route.path => {
                    return Err(invalid(
                        key("path"),
                        format!(
                            "`{}` and `{path}` are the same path; spell the parameters the same way",
                            route.path
                        ),
                    ));
                }
                Some(_) => {}
                None => {
                    patterns.insert(route.path.clone(), ()).map_err(|e| {
                        invalid(key("path"), format!("conflicts with another route: {e}"))
                    })?;
                    spelled.insert(shape.clone(), route.path.clone());
                }
            }
            match cors_by_path.get(&shape) {
                Some((cors, first)) if *cors != route.cors => {
                    return Err(invalid(
                        key("cors"),
                        format!(
                            "differs from routes[{first}] on the same path; routes sharing a path share CORS"
                        ),
                    ));
                }
                Some(_) => {}
                None => {
                    cors_by_path.insert(shape.clone(), (route.cors.clone(), i));
                }
            }
            for method in &route.methods {
                if let Some(other) =
                    claimed.insert((shape.clone(), method.clone()), route.name.clone())
                {
                    return Err(invalid(
                        key("methods"),
                        format!(
                            "{method} {} is already served by route `{other}`",
                            route.path
                        ),
                    ));
                }
            }
            routes.push(route);
        }
        Ok(Config {
            server,
            amqp,
            auth: self.auth,
            cors: self.cors,
            upstreams: self.upstreams,
            cache: self.cache,
            routes,
        })
    }
}

/// The path with parameter names erased, so `/u/{id}` and `/u/{uid}` collide.
fn path_shape(path: &str) -> String {
    path.split('/')
        .map(|seg| {
            if seg.starts_with("{*") {
                "{*}"
            } else if seg.starts_with('{') {
                "{}"
            } else {
                seg
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

impl RawAmqpConfig {
    fn validate(self) -> Result<AmqpConfig, Invalid> {
        // Don't echo the parser's message: it may quote the URL, credentials included.
        if self.url.expose().parse::<lapin::uri::AMQPUri>().is_err() {
            return Err(invalid("amqp.url", "not a valid amqp:// or amqps:// URL"));
        }
        if !(1..=64).contains(&self.connections) {
            return Err(invalid("amqp.connections", "must be between 1 and 64"));
        }
        if !(1..=128).contains(&self.channels_per_connection) {
            return Err(invalid(
                "amqp.channels_per_connection",
                "must be between 1 and 128",
            ));
        }
        if self.confirm_timeout.is_zero() {
            return Err(invalid("amqp.confirm_timeout", "must be greater than zero"));
        }
        if self.connect_timeout.is_zero() {
            return Err(invalid("amqp.connect_timeout", "must be greater than zero"));
        }
        let mut seen = BTreeSet::new();
        for (i, exchange) in self.exchanges.iter().enumerate() {
            let key = format!("amqp.exchanges[{i}].name");
            let name = exchange.name.as_str();
            if name.is_empty() {
                return Err(invalid(
                    key,
                    "must not be empty (the default exchange \"\" is never declared; publish to it directly)",
                ));
            }
            if name.starts_with("amq.") {
                return Err(invalid(
                    key,
                    "names starting with `amq.` are reserved by the broker",
                ));
            }
            if name.len() > 255 || name.chars().any(char::is_control) {
                return Err(invalid(
                    key,
                    "must be at most 255 bytes without control characters",
                ));
            }
            if !seen.insert(name) {
                return Err(invalid(key, format!("exchange `{name}` is declared twice")));
            }
        }
        Ok(AmqpConfig {
            url: self.url,
            connections: self.connections,
            channels_per_connection: self.channels_per_connection,
            confirm_timeout: self.confirm_timeout,
            connect_timeout: self.connect_timeout,
            retry_after: self.retry_after,
            exchanges: self.exchanges,
        })
    }
}

fn validate_auth(auth: &AuthConfig) -> Result<(), Invalid> {
    if auth.issuer.is_empty() {
        return Err(invalid("auth.issuer", "must not be empty"));
    }
    if auth.audience.is_empty() {
        return Err(invalid("auth.audience", "must not be empty"));
    }
    if auth.leeway > Duration::from_secs(60) {
        return Err(invalid("auth.leeway", "must be at most 60s"));
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
    for (name, path) in &auth.propagate_claims {
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
        if !is_claim_path(path) {
            return Err(invalid(key, "must be a claim name or dotted path"));
        }
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
    for (i, k) in auth.keys.iter().enumerate() {
        let key = |field: &str| format!("auth.keys[{i}].{field}");
        let sources = [
            k.secret.is_some(),
            k.public_key_pem.is_some(),
            k.jwks_file.is_some(),
            k.jwks_url.is_some(),
        ];
        if sources.iter().filter(|s| **s).count() != 1 {
            return Err(invalid(
                format!("auth.keys[{i}]"),
                "exactly one of secret, public_key_pem, jwks_file, jwks_url is required",
            ));
        }
        if !JWT_ALGORITHMS.contains(&k.algorithm.as_str()) {
            return Err(invalid(
                key("algorithm"),
                format!(
                    "unsupported algorithm `{}` (one of {}; `none` never)",
                    k.algorithm,
                    JWT_ALGORITHMS.join(", ")
                ),
            ));
        }
        let hmac = k.algorithm.starts_with("HS");
        if hmac != k.secret.is_some() {
            return Err(invalid(
                key("algorithm"),
                "HS* algorithms take `secret`; other algorithms take a public key or JWKS (never HMAC from a JWKS)",
            ));
        }
        let jwks = k.jwks_file.is_some() || k.jwks_url.is_some();
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
        if let Some(url) = &k.jwks_url {
            let uri: http::Uri = url
                .parse()
                .map_err(|_| invalid(key("jwks_url"), "not a valid URL"))?;
            if uri.scheme_str() != Some("http") || uri.authority().is_none() {
                return Err(invalid(
                    key("jwks_url"),
                    "must be an http://host[:port]/path URL (https is not supported yet; use a local sidecar or jwks_file)",
                ));
            }
        }
        // Parse secrets, PEMs and JWKS files now, so a bad key stops start-up (and `check`)
        // with its name instead of failing every request.
        crate::auth::keys::check_key_config(k).map_err(|(field, m)| invalid(key(field), m))?;
    }
    Ok(())
}

/// A claim name, or a dotted path of names (`realm_access.roles`).
fn is_claim_path(path: &str) -> bool {
    !path.is_empty() && !path.split('.').any(str::is_empty) && !path.chars().any(char::is_control)
}

/// Roles and scopes listed by a route: checkable strings, and scopes that fit in a
/// `WWW-Authenticate: Bearer scope="..."` parameter (RFC 6749 §3.3 scope-token).
fn validate_policy(policy: &AuthPolicy) -> Result<(), String> {
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

fn validate_cors(cors: &CorsConfig, key: &str) -> Result<(), Invalid> {
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
    for origin in cors.allowed_origins.iter().filter(|o| *o != "*") {
        let uri: Option<http::Uri> = origin.parse().ok();
        let valid = uri.is_some_and(|u| {
            matches!(u.scheme_str(), Some("http" | "https"))
                && u.authority().is_some()
                && u.path_and_query()
                    .is_none_or(|p| p.as_str().is_empty() || p.as_str() == "/")
                && !origin.ends_with('/')
        });
        if !valid || http::HeaderValue::from_str(origin).is_err() {
            return Err(invalid(
                field("allowed_origins"),
                format!("`{origin}` is not an origin (scheme://host[:port], no path)"),
            ));
        }
    }
    for (name, list) in [
        ("allowed_headers", &cors.allowed_headers),
        ("exposed_headers", &cors.exposed_headers),
    ] {
        if let Some(h) = list
            .iter()
            .find(|h| h.as_str() == "*" || http::HeaderName::from_bytes(h.as_bytes()).is_err())
        {
            return Err(invalid(
                field(name),
                format!("`{h}` is not a header name (wildcards are not supported)"),
            ));
        }
    }
    if cors.max_age > Duration::from_secs(24 * 3600) {
        return Err(invalid(field("max_age"), "must be at most 24h"));
    }
    Ok(())
}

fn validate_upstream(name: &str, upstream: &UpstreamConfig) -> Result<(), Invalid> {
    let key = format!("upstreams.{name}.targets");
    if upstream.targets.is_empty() {
        return Err(invalid(key, "at least one target is required"));
    }
    for target in &upstream.targets {
        let uri: http::Uri = target
            .parse()
            .map_err(|_| invalid(&key, format!("`{target}` is not a valid URL")))?;
        if uri.scheme_str() != Some("http") || uri.authority().is_none() {
            return Err(invalid(
                &key,
                format!("`{target}` must be an http://host:port URL"),
            ));
        }
    }
    if upstream.timeout.is_zero() {
        return Err(invalid(
            format!("upstreams.{name}.timeout"),
            "must be greater than zero",
        ));
    }
    if upstream.connect_timeout.is_zero() || upstream.connect_timeout > upstream.timeout {
        return Err(invalid(
            format!("upstreams.{name}.connect_timeout"),
            "must be greater than zero and at most `timeout`",
        ));
    }
    Ok(())
}

/// Parses `/a/{x}/{*rest}` into its parameter names, checking the syntax.
fn parse_path(path: &str) -> Result<Vec<String>, String> {
    if !path.starts_with('/') {
        return Err("must start with `/`".into());
    }
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let mut params = Vec::new();
    for (i, seg) in segments.iter().enumerate() {
        if seg.contains(['{', '}']) {
            let inner = seg
                .strip_prefix('{')
                .and_then(|s| s.strip_suffix('}'))
                .ok_or_else(|| format!("segment `{seg}`: a parameter must be a whole segment"))?;
            let (name, catch_all) = match inner.strip_prefix('*') {
                Some(name) => (name, true),
                None => (inner, false),
            };
            if !is_param_name(name) {
                return Err(format!("segment `{seg}`: invalid parameter name"));
            }
            if catch_all && i + 1 != segments.len() {
                return Err(format!(
                    "segment `{seg}`: a catch-all must be the last segment"
                ));
            }
            if params.iter().any(|p| p == name) {
                return Err(format!("parameter `{name}` appears twice"));
            }
            params.push(name.to_owned());
        } else if seg
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || c == '?' || c == '#')
        {
            return Err(format!(
                "segment `{seg}` contains characters not allowed in a path"
            ));
        }
    }
    Ok(params)
}

impl RawRoute {
    fn validate(
        self,
        i: usize,
        exchanges: &BTreeSet<&str>,
        upstreams: &BTreeMap<String, UpstreamConfig>,
    ) -> Result<Route, Invalid> {
        let key = |field: &str| format!("routes[{i}].{field}");
        if self.name.is_empty() || self.name.len() > 128 || self.name.chars().any(char::is_control)
        {
            return Err(invalid(
                key("name"),
                "must be 1–128 characters without control characters",
            ));
        }
        let path_params = parse_path(&self.path).map_err(|m| invalid(key("path"), m))?;
        if self.methods.is_empty() {
            return Err(invalid(key("methods"), "at least one method is required"));
        }
        let mut methods = Vec::with_capacity(self.methods.len());
        for m in &self.methods {
            let method = match m.as_str() {
                "GET" => Method::GET,
                "HEAD" => Method::HEAD,
                "POST" => Method::POST,
                "PUT" => Method::PUT,
                "PATCH" => Method::PATCH,
                "DELETE" => Method::DELETE,
                other => {
                    return Err(invalid(
                        key("methods"),
                        format!(
                            "unsupported method `{other}` (GET, HEAD, POST, PUT, PATCH, DELETE; upper case)"
                        ),
                    ));
                }
            };
            if methods.contains(&method) {
                return Err(invalid(key("methods"), format!("`{m}` is listed twice")));
            }
            methods.push(method);
        }
        let auth = match self.auth {
            None | Some(RawRouteAuth::Keyword(AuthKeyword::Authenticated)) => {
                RouteAuth::Required(AuthPolicy::default())
            }
            Some(RawRouteAuth::Keyword(AuthKeyword::Public)) => RouteAuth::Public,
            Some(RawRouteAuth::Policy(p)) => RouteAuth::Required(p),
        };
        let action = match (self.publish, self.upstream) {
            (Some(_), Some(_)) | (None, None) => {
                return Err(invalid(
                    format!("routes[{i}]"),
                    "a route needs exactly one of `upstream` (read) or `publish` (write)",
                ));
            }
            (Some(publish), None) => {
                if let Some(m) = methods
                    .iter()
                    .find(|m| matches!(**m, Method::GET | Method::HEAD))
                {
                    return Err(invalid(
                        key("methods"),
                        format!("{m} cannot publish; write routes take POST, PUT, PATCH, DELETE"),
                    ));
                }
                if self.upstream_path.is_some()
                    || self.cache.is_some()
                    || self.etag.is_some()
                    || self.forward_authorization.is_some()
                    || self.compress.is_some()
                {
                    return Err(invalid(
                        key("publish"),
                        "`upstream_path`, `cache`, `etag`, `forward_authorization` and `compress` apply only to upstream routes",
                    ));
                }
                RouteAction::Publish(publish.validate(i, &path_params, exchanges)?)
            }
            (None, Some(upstream)) => {
                if let Some(m) = methods
                    .iter()
                    .find(|m| !matches!(**m, Method::GET | Method::HEAD))
                {
                    return Err(invalid(
                        key("methods"),
                        format!(
                            "{m} cannot be proxied; read routes take GET and HEAD (writes use `publish`)"
                        ),
                    ));
                }
                if !upstreams.contains_key(&upstream) {
                    return Err(invalid(
                        key("upstream"),
                        format!("unknown upstream `{upstream}` (no [upstreams.{upstream}])"),
                    ));
                }
                let upstream_path = self
                    .upstream_path
                    .map(|p| {
                        let t =
                            Template::parse(&p).map_err(|m| invalid(key("upstream_path"), m))?;
                        check_params(&t, &path_params, &[])
                            .map_err(|m| invalid(key("upstream_path"), m))?;
                        if !p.starts_with('/') {
                            return Err(invalid(key("upstream_path"), "must start with `/`"));
                        }
                        Ok(t)
                    })
                    .transpose()?;
                if self.cache.as_ref().is_some_and(|c| c.ttl.is_zero()) {
                    return Err(invalid(key("cache.ttl"), "must be greater than zero"));
                }
                RouteAction::Proxy(ProxyTarget {
                    upstream,
                    upstream_path,
                    cache: self.cache,
                    generate_etag: self.etag.unwrap_or(true),
                    forward_authorization: self.forward_authorization.unwrap_or(false),
                    compress: self.compress.unwrap_or_default(),
                })
            }
        };
        Ok(Route {
            name: self.name,
            path: self.path,
            path_params,
            methods,
            auth,
            cors: None,
            action,
        })
    }
}

fn check_params(t: &Template, path_params: &[String], extra: &[&str]) -> Result<(), String> {
    for p in t.params() {
        if !path_params.iter().any(|pp| pp == p) && !extra.contains(&p) {
            return Err(format!(
                "placeholder `{{{p}}}` is not a path parameter of this route"
            ));
        }
    }
    Ok(())
}

impl RawPublish {
    fn validate(
        self,
        i: usize,
        path_params: &[String],
        exchanges: &BTreeSet<&str>,
    ) -> Result<PublishTarget, Invalid> {
        let key = |field: &str| format!("routes[{i}].publish.{field}");
        if !self.exchange.is_empty() && !exchanges.contains(self.exchange.as_str()) {
            return Err(invalid(
                key("exchange"),
                format!(
                    "exchange `{}` is not declared in [[amqp.exchanges]]",
                    self.exchange
                ),
            ));
        }
        let routing_key =
            Template::parse(&self.routing_key).map_err(|m| invalid(key("routing_key"), m))?;
        check_params(&routing_key, path_params, &[]).map_err(|m| invalid(key("routing_key"), m))?;
        if routing_key.literal_len() > 255 || self.routing_key.chars().any(char::is_control) {
            return Err(invalid(
                key("routing_key"),
                "must be at most 255 bytes without control characters",
            ));
        }
        if self.exchange.is_empty() && routing_key.segments().is_empty() {
            return Err(invalid(
                key("routing_key"),
                "the default exchange needs a routing key (the queue name)",
            ));
        }
        if !matches!(self.status, 201 | 202) {
            return Err(invalid(key("status"), "must be 201 or 202"));
        }
        let location = self
            .location
            .map(|l| {
                let t = Template::parse(&l).map_err(|m| invalid(key("location"), m))?;
                check_params(&t, path_params, &["event_id"])
                    .map_err(|m| invalid(key("location"), m))?;
                Ok::<_, Invalid>(t)
            })
            .transpose()?;
        if self.status == 201 && location.is_none() {
            return Err(invalid(
                key("location"),
                "status 201 needs a `location` template (e.g. \"/users/{event_id}\")",
            ));
        }
        let content_types = match self.content_types {
            None => vec!["application/json".to_owned()],
            Some(list) if list.is_empty() => {
                return Err(invalid(
                    key("content_types"),
                    "must list at least one media type",
                ));
            }
            Some(list) => list
                .into_iter()
                .map(|ct| {
                    let lower = ct.trim().to_ascii_lowercase();
                    let valid = lower.split_once('/').is_some_and(|(t, s)| {
                        let tok = |x: &str| {
                            !x.is_empty()
                                && x.chars()
                                    .all(|c| c.is_ascii_alphanumeric() || "!#$&-^_.+".contains(c))
                        };
                        tok(t) && tok(s)
                    });
                    if valid {
                        Ok(lower)
                    } else {
                        Err(invalid(
                            key("content_types"),
                            format!("`{ct}` is not a `type/subtype` media type"),
                        ))
                    }
                })
                .collect::<Result<_, _>>()?,
        };
        if self.properties.priority.is_some_and(|p| p > 9) {
            return Err(invalid(
                key("properties.priority"),
                "must be between 0 and 9",
            ));
        }
        for (name, value) in [
            ("type", &self.properties.message_type),
            ("content_type", &self.properties.content_type),
        ] {
            if value
                .as_ref()
                .is_some_and(|v| v.is_empty() || v.len() > 255)
            {
                return Err(invalid(
                    key(&format!("properties.{name}")),
                    "must be 1–255 bytes",
                ));
            }
        }
        let mut headers = Vec::with_capacity(self.headers.len());
        for (name, value) in self.headers {
            let lower = name.to_ascii_lowercase();
            if RESERVED_HEADERS.contains(&lower.as_str())
                || lower.starts_with(PARAM_HEADER_PREFIX)
                || lower.starts_with(AUTH_HEADER_PREFIX)
            {
                return Err(invalid(
                    key("headers"),
                    format!("header `{name}` is set by the gateway"),
                ));
            }
            if name.is_empty() || name.len() > 255 || value.len() > 4096 {
                return Err(invalid(
                    key("headers"),
                    format!("header `{name}`: names are 1–255 bytes, values at most 4096"),
                ));
            }
            headers.push((name, value));
        }
        Ok(PublishTarget {
            exchange: self.exchange,
            routing_key,
            status: self.status,
            location,
            content_types,
            properties: self.properties,
            headers,
        })
    }
}
