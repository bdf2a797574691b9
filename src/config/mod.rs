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
    upstreams: BTreeMap<String, UpstreamConfig>,
    #[serde(default)]
    routes: Vec<RawRoute>,
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
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Required `iss` claim.
    pub issuer: String,
    /// Required `aud` claim.
    pub audience: String,
    /// Clock leeway for `exp`/`nbf`. Default 30s, at most 60s.
    #[serde(default = "default_leeway", with = "humantime_serde")]
    pub leeway: Duration,
    /// Claim holding the roles; a dotted path such as `realm_access.roles`. Default `roles`.
    #[serde(default = "default_roles_claim")]
    pub roles_claim: String,
    /// Verification keys, each with a fixed algorithm.
    #[serde(default)]
    pub keys: Vec<KeyConfig>,
}

const fn default_leeway() -> Duration {
    Duration::from_secs(30)
}
fn default_roles_claim() -> String {
    "roles".to_owned()
}

/// `[[auth.keys]]`: one verification key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// Key id matched against the token's `kid`.
    pub kid: Option<String>,
    /// The only algorithm this key verifies (`HS256`, `RS256`, `ES256`, …).
    pub algorithm: String,
    /// HMAC secret for `HS*`.
    pub secret: Option<Secret>,
    /// PEM file with the public key for `RS*`/`PS*`/`ES*`/`EdDSA`.
    pub public_key_pem: Option<PathBuf>,
    /// A JWKS file.
    pub jwks_file: Option<PathBuf>,
    /// A JWKS URL, refreshed periodically.
    pub jwks_url: Option<String>,
}

/// `[upstreams.NAME]`: a load-balanced set of HTTP targets for read routes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Base URLs (`http://host:port`), at least one.
    pub targets: Vec<String>,
    /// Whole-request timeout towards a target. Default 5s.
    #[serde(default = "default_upstream_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

const fn default_upstream_timeout() -> Duration {
    Duration::from_secs(5)
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
    publish: Option<RawPublish>,
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

/// `auth = { roles = [...], scopes = [...] }` on a route.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AuthPolicy {
    /// Roles, any of which grants access.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Scopes, any of which grants access.
    #[serde(default)]
    pub scopes: Vec<String>,
}

/// Per-route response cache (read routes).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// Freshness when the upstream gives none.
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
    /// `[upstreams.*]`.
    pub upstreams: BTreeMap<String, UpstreamConfig>,
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
        let amqp = self.amqp.validate()?;
        if let Some(auth) = &self.auth {
            validate_auth(auth)?;
        }
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
        for (i, raw) in self.routes.into_iter().enumerate() {
            let key = |field: &str| format!("routes[{i}].{field}");
            let route = raw.validate(i, &exchanges, &self.upstreams)?;
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
            // Until the read path and JWT verification land, refuse what we cannot serve
            // rather than serve it wrongly.
            if matches!(route.action, RouteAction::Proxy(_)) {
                return Err(invalid(
                    format!("routes[{i}].upstream"),
                    "read routes are not supported by this version yet",
                ));
            }
            if route.auth != RouteAuth::Public {
                return Err(invalid(
                    key("auth"),
                    "token verification is not supported by this version yet; use auth = \"public\"",
                ));
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
            upstreams: self.upstreams,
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
    if auth.leeway > Duration::from_secs(60) {
        return Err(invalid("auth.leeway", "must be at most 60s"));
    }
    if auth.keys.is_empty() {
        return Err(invalid("auth.keys", "at least one key is required"));
    }
    if auth.roles_claim.is_empty() || auth.roles_claim.split('.').any(str::is_empty) {
        return Err(invalid(
            "auth.roles_claim",
            "must be a claim name or dotted path",
        ));
    }
    for (i, k) in auth.keys.iter().enumerate() {
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
        let hmac = k.algorithm.starts_with("HS");
        if hmac != k.secret.is_some() {
            return Err(invalid(
                format!("auth.keys[{i}].algorithm"),
                "HS* algorithms take `secret`; other algorithms take a public key or JWKS",
            ));
        }
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
                if self.upstream_path.is_some() || self.cache.is_some() {
                    return Err(invalid(
                        key("publish"),
                        "`upstream_path` and `cache` apply only to upstream routes",
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
                RouteAction::Proxy(ProxyTarget {
                    upstream,
                    upstream_path,
                    cache: self.cache,
                })
            }
        };
        Ok(Route {
            name: self.name,
            path: self.path,
            path_params,
            methods,
            auth,
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
            if RESERVED_HEADERS.contains(&lower.as_str()) || lower.starts_with(PARAM_HEADER_PREFIX)
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
