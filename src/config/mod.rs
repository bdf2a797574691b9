//! Configuration: the TOML file, parsed once at start-up into validated types.
//!
//! Loading is three steps, each with its own error shape but one [`ConfigError`] out:
//! 1. `${VAR}` interpolation of the text ([`interpolate`]), with the environment passed in;
//! 2. TOML → the serde `Raw*` types (`deny_unknown_fields`, typed durations and addresses);
//!    errors carry the key path and the line;
//! 3. validation: cross-field rules (a route's exchange exists, routing-key
//!    placeholders are path parameters, …) that produce the [`Config`] the rest of the program
//!    uses. Nothing downstream re-checks what this module guarantees.

mod auth;
mod broker;
mod interpolate;
mod route;
mod secret;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use http::Method;
use ipnet::IpNet;
use serde::Deserialize;

pub use auth::{
    AuthConfig, AuthKey, CorsConfig, CorsOrigins, CorsPolicy, JwksUrl, PropagatedClaim,
};
pub use broker::BrokerUri;
pub use interpolate::{InterpolateError, interpolate};
pub(crate) use route::is_json_media_type;
pub use route::{
    AuthPolicy, CacheConfig, CloudEventsConfig, CompressPolicy, PolicyMatch, ProxyTarget,
    PublishTarget, RateLimitConfig, RateLimitKey, Route, RouteAction, RouteAuth, RoutePath,
    StaticProperties,
};
pub use secret::Secret;

use crate::tls::{ClientTls, TlsSettings};

use auth::{RawAuthConfig, validate_auth, validate_cors, validate_policy};
use route::{RawRoute, RawRouteCors, path_shape};

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
    auth: Option<RawAuthConfig>,
    #[serde(default)]
    cors: Option<CorsConfig>,
    #[serde(default)]
    upstreams: BTreeMap<String, RawUpstreamConfig>,
    #[serde(default)]
    cache: CacheSettings,
    #[serde(default)]
    compression: CompressionSettings,
    #[serde(default)]
    routes: Vec<RawRoute>,
}

/// `[compression]`: how hard read responses are compressed (a route's `compress` says
/// whether). Reloadable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompressionSettings {
    /// Responses encoded for one request and not kept (uncached routes, misses): `fast` by
    /// default, as nginx's `gzip_comp_level 1`: the CPU is spent on every response.
    #[serde(default = "CompressionLevel::fast")]
    pub dynamic: CompressionLevel,
    /// Encoded variants stored with a cache entry: encoded once, served many times, so
    /// `high` by default (smaller bodies on the wire for the same CPU over the entry's life).
    #[serde(default = "CompressionLevel::high")]
    pub cached: CompressionLevel,
}

impl Default for CompressionSettings {
    fn default() -> Self {
        Self {
            dynamic: CompressionLevel::Fast,
            cached: CompressionLevel::High,
        }
    }
}

/// A compression effort, mapped to each coding's own scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CompressionLevel {
    /// gzip 1, br 1, zstd 1.
    Fast,
    /// gzip 6, br 4, zstd 3 (each library's usual default; br's own default is 11).
    Default,
    /// gzip 9, br 9, zstd 12: near the best ratios without br's and zstd's slowest modes.
    High,
    /// gzip 9, br 11, zstd 19: the smallest bodies, at many times the CPU of `high`.
    Best,
}

impl CompressionLevel {
    const fn fast() -> Self {
        Self::Fast
    }

    const fn high() -> Self {
        Self::High
    }

    /// The gzip (deflate) level, 1–9.
    pub const fn gzip(self) -> u32 {
        match self {
            Self::Fast => 1,
            Self::Default => 6,
            Self::High | Self::Best => 9,
        }
    }

    /// The brotli quality, 0–11.
    pub const fn brotli(self) -> u32 {
        match self {
            Self::Fast => 1,
            Self::Default => 4,
            Self::High => 9,
            Self::Best => 11,
        }
    }

    /// The zstd level, 1–22.
    pub const fn zstd(self) -> i32 {
        match self {
            Self::Fast => 1,
            Self::Default => 3,
            Self::High => 12,
            Self::Best => 19,
        }
    }
}

/// `[cache]`: the shared response cache used by read routes with `cache = {...}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSettings {
    /// Memory budget for stored bodies (all encodings) and headers, in bytes. Default 64 MiB.
    #[serde(default = "default_cache_max_bytes")]
    pub max_bytes: u64,
    /// Largest response body that is stored or given a generated ETag, in bytes; larger ones
    /// are streamed through. Default 1 MiB, at most `max_bytes`.
    #[serde(default = "default_cache_max_object_bytes")]
    pub max_object_bytes: usize,
    /// Cache coherence across instances: publish every local invalidation on
    /// `invalidation_exchange` and apply the other instances' ones; while the subscription is
    /// down the cache is bypassed. Default `false` (one instance needs none). Restart to change.
    #[serde(default)]
    pub coherence: bool,
    /// The gateway-owned fanout exchange invalidations travel on (declared durable by every
    /// instance). Default `amqp-gateway.cache-invalidation`; same rules as
    /// `amqp.exchanges[].name`, and not one of them. Restart to change.
    #[serde(default = "default_invalidation_exchange")]
    pub invalidation_exchange: String,
    /// Every invalidation (local or received) drops its paths a second time after this
    /// delay, for consumers that apply a published write after its 202. `0` (the default)
    /// disables it; at most 1 h. Restart to change.
    #[serde(default, with = "humantime_serde")]
    pub reinvalidate_after: Duration,
}

impl Default for CacheSettings {
    fn default() -> Self {
        Self {
            max_bytes: default_cache_max_bytes(),
            max_object_bytes: default_cache_max_object_bytes(),
            coherence: false,
            invalidation_exchange: default_invalidation_exchange(),
            reinvalidate_after: Duration::ZERO,
        }
    }
}

fn default_invalidation_exchange() -> String {
    "amqp-gateway.cache-invalidation".to_owned()
}

/// Longest `cache.reinvalidate_after`: the pending second drops are kept in memory.
pub const MAX_REINVALIDATE_AFTER: Duration = Duration::from_secs(3600);

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
    /// The one host name clients reach the gateway by (`api.example.com`, optionally with a
    /// port). When set, requests for any other host (`Host`, or a trusted proxy's
    /// `X-Forwarded-Host`; port and case aside) are refused with 421, and upstreams get this
    /// exact value as `X-Forwarded-Host`. Unset: the client's host is forwarded and is part
    /// of every cache key.
    #[serde(default)]
    pub public_host: Option<PublicHost>,
    /// How long in-flight requests get to finish after SIGTERM/SIGINT. Default 30s.
    #[serde(default = "default_shutdown_timeout", with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// After SIGTERM, keep serving this long with `/readyz` failing and `Connection: close` on
    /// every response, before refusing new connections (lets load balancers notice). Default 0s.
    #[serde(default, with = "humantime_serde")]
    pub shutdown_delay: Duration,
    /// Deadline for a request head to arrive (slowloris). hyper uses the same timer while a
    /// keep-alive connection is idle, so this is also the idle timeout: keep it above the
    /// upstream keep-alive timeout of any proxy in front (deploy/nginx.conf uses 5s). It also
    /// bounds the start of every connection: one that sends nothing, or only (part of) the
    /// HTTP/2 preface, and no complete request head within it is closed. Default 10s.
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
    /// Deepest nesting of arrays/objects accepted in a JSON body of a publish route (a
    /// top-level `{}` is 1): 400 beyond it, checked before parsing, schema or not. Default 64,
    /// 1–[`MAX_JSON_DEPTH_LIMIT`].
    #[serde(default = "default_max_json_depth")]
    pub max_json_depth: usize,
    /// Most open client connections on the public listener. Beyond it, new connections wait
    /// in the kernel's accept backlog (not refused, not read) until an open one closes, so a
    /// flood of idle connections cannot exhaust file descriptors or memory. Default: no limit;
    /// set it below the process's file-descriptor limit (`ulimit -n`) minus what upstream and
    /// AMQP connections need.
    #[serde(default)]
    pub max_connections: Option<usize>,
    /// A response write to a client that makes no progress for this long (the client stopped
    /// reading and the socket buffer is full) ends the connection, which releases the
    /// upstream connection and task behind the response. Default 30s.
    #[serde(default = "default_write_timeout", with = "humantime_serde")]
    pub write_timeout: Duration,
}

/// Highest `server.max_json_depth`: serde_json refuses depth 128 itself (its recursion
/// limit), with a vaguer "not valid JSON"; keeping ours below it means the depth limit always
/// answers first, with its own message.
pub const MAX_JSON_DEPTH_LIMIT: usize = 127;

/// `server.public_host`, parsed at load time: `host` or `host:port`, nothing else.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "String")]
pub struct PublicHost {
    /// The value upstreams get as `X-Forwarded-Host`, exactly as configured.
    pub header: http::HeaderValue,
    /// The host name alone, lower-cased, without port or trailing dot: what a request's host is
    /// compared with.
    pub name: String,
}

impl TryFrom<String> for PublicHost {
    type Error = String;

    fn try_from(value: String) -> Result<Self, String> {
        let authority: http::uri::Authority = value
            .parse()
            .map_err(|_| format!("`{value}` is not a host name (with an optional port)"))?;
        if authority.as_str().contains('@') || authority.host().is_empty() {
            return Err(format!("`{value}` must be a host name, without user info"));
        }
        let header = http::HeaderValue::from_str(authority.as_str())
            .map_err(|_| format!("`{value}` is not a valid header value"))?;
        Ok(Self {
            header,
            name: host_name(authority.as_str().as_bytes()),
        })
    }
}

impl PublicHost {
    /// Whether a request's `Host` (or trusted `X-Forwarded-Host`) value names this host:
    /// case-insensitively, ignoring the port and a trailing dot.
    pub fn matches(&self, host: &[u8]) -> bool {
        host_name(host) == self.name
    }
}

/// The host name of a `host[:port]` value, lower-cased, without a trailing dot (IPv6 literals
/// keep their brackets).
fn host_name(value: &[u8]) -> String {
    let value = String::from_utf8_lossy(value.trim_ascii()).to_ascii_lowercase();
    let host = if value.starts_with('[') {
        value.split_inclusive(']').next().unwrap_or_default()
    } else {
        value.rsplit_once(':').map_or(value.as_str(), |(h, _)| h)
    };
    host.strip_suffix('.').unwrap_or(host).to_owned()
}

const fn default_header_read_timeout() -> Duration {
    Duration::from_secs(10)
}
const fn default_body_read_timeout() -> Duration {
    Duration::from_secs(30)
}
const fn default_write_timeout() -> Duration {
    Duration::from_secs(30)
}
const fn default_max_header_bytes() -> usize {
    32 * 1024
}
const fn default_max_headers() -> usize {
    100
}
const fn default_max_json_depth() -> usize {
    64
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
    #[serde(default)]
    url: Option<Secret>,
    #[serde(default)]
    urls: Vec<Secret>,
    #[serde(default)]
    connections: Option<usize>,
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
    #[serde(default)]
    tls: Option<TlsSettings>,
}

/// One connection per instance for one node, two (on two nodes) for a cluster. Each lapin
/// connection runs its I/O on an OS thread of its own, and every publish and confirm crosses
/// to it and back: on a small machine a second connection to the same node costs CPU per
/// write (BENCHMARKS.md, "Write latency"), and buys little, since a node that fails takes
/// both. A cluster's second connection keeps half the channels up when one node fails.
const fn default_connections(urls: usize) -> usize {
    if urls > 1 { 2 } else { 1 }
}
/// Few, busy channels: the broker batches confirms (and its quorum-queue commands) per
/// channel, so 64 writes in flight over 4 channels cost it less per message and come back
/// sooner than over 16 (BENCHMARKS.md, "Write latency").
const fn default_channels_per_connection() -> usize {
    4
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
#[derive(Debug, Clone, PartialEq)]
pub struct AmqpConfig {
    /// Broker URLs (`amqp://` or `amqps://`, all the same scheme), one per cluster node
    /// (`url = "…"` is the one-node form). May carry credentials: printed masked.
    pub urls: Vec<BrokerUri>,
    /// Number of AMQP connections (1–64). Default 1 with one URL, 2 with a cluster's `urls`.
    pub connections: usize,
    /// Confirm-mode publishing channels per connection (1–128). Default 4.
    pub channels_per_connection: usize,
    /// Longest wait for a publish to be confirmed before answering 504. Default 5s.
    pub confirm_timeout: Duration,
    /// Longest wait for a TCP+AMQP connection to open. Default 5s.
    pub connect_timeout: Duration,
    /// `Retry-After` sent with 503s caused by the broker. Default 1s (rounded up to seconds).
    pub retry_after: Duration,
    /// Exchanges declared durable at every (re)connect.
    pub exchanges: Vec<ExchangeConfig>,
    /// TLS towards the broker: present exactly when the URL is `amqps://` (the `tls` table, or
    /// the defaults: Mozilla roots, no client certificate).
    pub tls: Option<ClientTls>,
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

/// `[upstreams.NAME]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstreamConfig {
    targets: Vec<String>,
    #[serde(default = "default_upstream_timeout", with = "humantime_serde")]
    timeout: Duration,
    #[serde(default = "default_upstream_connect_timeout", with = "humantime_serde")]
    connect_timeout: Duration,
    #[serde(default = "default_fail_timeout", with = "humantime_serde")]
    fail_timeout: Duration,
    #[serde(default = "default_upstream_body_timeout", with = "humantime_serde")]
    body_timeout: Duration,
    #[serde(default)]
    tls: Option<TlsSettings>,
}

/// `[upstreams.NAME]`, validated: a load-balanced set of HTTP(S) targets.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamConfig {
    /// Base URLs (`http://host:port` or `https://host[:port]`), at least one.
    pub targets: Vec<UpstreamTarget>,
    /// Whole-request timeout towards a target, headers and body. Default 5s.
    pub timeout: Duration,
    /// TCP (and TLS) connect timeout; a target that fails to connect is skipped for
    /// `fail_timeout` and the next one is tried. Default 1s, at most `timeout`.
    pub connect_timeout: Duration,
    /// How long a target that failed to connect is skipped (passive health). Default 10s.
    pub fail_timeout: Duration,
    /// Deadline for the part of a response body that is streamed to the client instead of
    /// buffered (bodies over `cache.max_object_bytes` on reads, every answer of a proxied
    /// write), counted from when streaming starts. `timeout` covers only the head and the buffered
    /// prefix; without this bound an origin trickling bytes (or a client reading slowly enough
    /// to stay under `server.write_timeout`) holds an upstream connection and a task forever.
    /// When it passes, the response is cut off (the client sees an aborted body, never a short
    /// complete one) and the upstream connection is closed. Default 5m, at least `timeout`.
    pub body_timeout: Duration,
    /// TLS for `https://` targets (the `tls` table, or the defaults).
    pub tls: ClientTls,
}

/// One upstream target, parsed: `scheme://authority` and nothing else (a path or query is
/// refused at load, so there is nothing to drop later).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTarget {
    /// `http` or `https`.
    pub scheme: http::uri::Scheme,
    /// `host[:port]`.
    pub authority: http::uri::Authority,
}

impl std::fmt::Display for UpstreamTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}", self.scheme, self.authority)
    }
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
const fn default_upstream_body_timeout() -> Duration {
    Duration::from_secs(300)
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
    pub cors: Option<CorsPolicy>,
    /// `[upstreams.*]`.
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    /// `[cache]`.
    pub cache: CacheSettings,
    /// `[compression]`.
    pub compression: CompressionSettings,
    /// `[[routes]]`, in file order.
    pub routes: Vec<Route>,
    /// The same routes grouped by path, as the router serves them.
    pub paths: Vec<RoutePath>,
    /// The file it was loaded from ([`Config::load`]), which a reload reads again; `None`
    /// when parsed from memory.
    pub source: Option<std::path::PathBuf>,
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
        let mut config = Self::from_toml(&text, &file, env)?;
        config.source = Some(path.to_owned());
        Ok(config)
    }

    /// The settings of `self` that differ in `next` and that only a restart applies: the
    /// listeners and their protocol limits, the shutdown timings, and `[amqp]` (connections
    /// and declared exchanges are set up once). Empty when `next` can be swapped in live.
    pub fn restart_required(&self, next: &Config) -> Vec<&'static str> {
        let (a, b) = (&self.server, &next.server);
        let mut changed = Vec::new();
        for (key, differs) in [
            ("server.listen", a.listen != b.listen),
            ("server.admin_listen", a.admin_listen != b.admin_listen),
            (
                "server.header_read_timeout",
                a.header_read_timeout != b.header_read_timeout,
            ),
            (
                "server.max_header_bytes",
                a.max_header_bytes != b.max_header_bytes,
            ),
            ("server.max_headers", a.max_headers != b.max_headers),
            (
                "server.max_connections",
                a.max_connections != b.max_connections,
            ),
            ("server.write_timeout", a.write_timeout != b.write_timeout),
            (
                "server.shutdown_timeout",
                a.shutdown_timeout != b.shutdown_timeout,
            ),
            (
                "server.shutdown_delay",
                a.shutdown_delay != b.shutdown_delay,
            ),
            ("amqp", self.amqp != next.amqp),
            // The subscriber and the second-drop schedule are set up once, at start-up.
            (
                "cache.coherence",
                self.cache.coherence != next.cache.coherence,
            ),
            (
                "cache.invalidation_exchange",
                self.cache.invalidation_exchange != next.cache.invalidation_exchange,
            ),
            (
                "cache.reinvalidate_after",
                self.cache.reinvalidate_after != next.cache.reinvalidate_after,
            ),
        ] {
            if differs {
                changed.push(key);
            }
        }
        changed
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
        if server.max_connections == Some(0) {
            return Err(invalid("server.max_connections", "must be at least 1"));
        }
        if !(1..=MAX_JSON_DEPTH_LIMIT).contains(&server.max_json_depth) {
            return Err(invalid(
                "server.max_json_depth",
                format!(
                    "must be between 1 and {MAX_JSON_DEPTH_LIMIT} (serde_json's own limit is 128)"
                ),
            ));
        }
        for (key, value) in [
            ("server.header_read_timeout", server.header_read_timeout),
            ("server.body_read_timeout", server.body_read_timeout),
            ("server.write_timeout", server.write_timeout),
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
        validate_invalidation_exchange(&self.cache.invalidation_exchange, &amqp)?;
        if self.cache.reinvalidate_after > MAX_REINVALIDATE_AFTER {
            return Err(invalid("cache.reinvalidate_after", "must be at most 1h"));
        }
        let auth = self.auth.map(validate_auth).transpose()?;
        let cors = self
            .cors
            .as_ref()
            .map(|c| validate_cors(c, "cors"))
            .transpose()?;
        // CORS is answered per path (a preflight names the method it will use), so routes that
        // share a path must share their CORS settings.
        let mut cors_by_path: BTreeMap<String, (Option<CorsPolicy>, usize)> = BTreeMap::new();
        let upstreams = self
            .upstreams
            .into_iter()
            .map(|(name, raw)| Ok((name.clone(), validate_upstream(&name, raw)?)))
            .collect::<Result<BTreeMap<_, _>, Invalid>>()?;

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
            let mut route = raw.validate(i, &exchanges, &upstreams)?;
            route.cors = match raw_cors {
                None => cors.clone(),
                Some(RawRouteCors::Enabled(false)) => None,
                Some(RawRouteCors::Enabled(true)) => match &cors {
                    Some(global) => Some(global.clone()),
                    None => {
                        return Err(invalid(key("cors"), "`cors = true` needs a [cors] section"));
                    }
                },
                Some(RawRouteCors::Custom(c)) => Some(validate_cors(&c, &key("cors"))?),
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
            if route.auth != RouteAuth::Public && auth.is_none() {
                return Err(invalid(
                    key("auth"),
                    "route requires authentication but there is no [auth] section (use auth = \"public\" or add [auth])",
                ));
            }
            // A claim key is read from the identity, which carries only propagated claims.
            for (j, limit) in route.rate_limits.iter().enumerate() {
                if let Some(name) = limit.by.claim_name()
                    && !auth
                        .as_ref()
                        .is_some_and(|a| a.propagate_claims.contains_key(name))
                {
                    return Err(invalid(
                        key(&format!("rate_limits[{j}].by")),
                        format!(
                            "claim `{name}` is not in auth.propagate_claims (rate limits read verified claims from there)"
                        ),
                    ));
                }
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
        let paths = RoutePath::group(&routes)
            .map_err(|(i, field, message)| invalid(format!("routes[{i}].{field}"), message))?;
        Ok(Config {
            server,
            amqp,
            auth,
            cors,
            upstreams,
            cache: self.cache,
            compression: self.compression,
            routes,
            paths,
            source: None,
        })
    }
}

impl RawAmqpConfig {
    fn validate(self) -> Result<AmqpConfig, Invalid> {
        let (key, urls) = match (self.url, self.urls.is_empty()) {
            (Some(url), true) => ("amqp.url", vec![url]),
            (None, false) => ("amqp.urls", self.urls),
            (Some(_), false) => {
                return Err(invalid("amqp.urls", "give `url` or `urls`, not both"));
            }
            (None, true) => {
                return Err(invalid(
                    "amqp.url",
                    "required (or `urls`, one per cluster node)",
                ));
            }
        };
        if urls.len() > 16 {
            return Err(invalid(key, "at most 16 broker URLs"));
        }
        let urls = urls
            .iter()
            .enumerate()
            .map(|(i, url)| {
                let at = if key == "amqp.url" {
                    key.to_owned()
                } else {
                    format!("{key}[{i}]")
                };
                // The message never quotes the URL: it may carry credentials.
                BrokerUri::parse(url.expose()).map_err(|m| invalid(&at, m))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let schemes: BTreeSet<bool> = urls.iter().map(BrokerUri::is_tls).collect();
        if schemes.len() > 1 {
            return Err(invalid(
                key,
                "all broker URLs must use the same scheme (amqp:// or amqps://)",
            ));
        }
        let connections = self.connections.unwrap_or(default_connections(urls.len()));
        if !(1..=64).contains(&connections) {
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
            if let Some(problem) = exchange_name_problem(name) {
                return Err(invalid(key, problem));
            }
            if !seen.insert(name) {
                return Err(invalid(key, format!("exchange `{name}` is declared twice")));
            }
        }
        let amqps = schemes.contains(&true);
        let tls = match (amqps, &self.tls) {
            (false, Some(_)) => {
                return Err(invalid("amqp.tls", "needs an amqps:// URL"));
            }
            (false, None) => None,
            (true, settings) => Some(
                ClientTls::load(settings.as_ref())
                    .map_err(|e| invalid(format!("amqp.tls.{}", e.field), e.message))?,
            ),
        };
        Ok(AmqpConfig {
            tls,
            urls,
            connections,
            channels_per_connection: self.channels_per_connection,
            confirm_timeout: self.confirm_timeout,
            connect_timeout: self.connect_timeout,
            retry_after: self.retry_after,
            exchanges: self.exchanges,
        })
    }
}

/// Why the broker would refuse to let the gateway declare a (non-empty) exchange `name`.
fn exchange_name_problem(name: &str) -> Option<&'static str> {
    if name.starts_with("amq.") {
        Some("names starting with `amq.` are reserved by the broker")
    } else if name.len() > 255 || name.chars().any(char::is_control) {
        Some("must be at most 255 bytes without control characters")
    } else {
        None
    }
}

/// `cache.invalidation_exchange`: a name the broker accepts, and not one of the configured
/// exchanges (it is declared as a fanout of its own).
fn validate_invalidation_exchange(name: &str, amqp: &AmqpConfig) -> Result<(), Invalid> {
    let key = "cache.invalidation_exchange";
    if name.is_empty() {
        return Err(invalid(key, "must not be empty"));
    }
    if let Some(problem) = exchange_name_problem(name) {
        return Err(invalid(key, problem));
    }
    if amqp.exchanges.iter().any(|e| e.name == name) {
        return Err(invalid(
            key,
            format!(
                "`{name}` is also in amqp.exchanges; the invalidation exchange is the gateway's own"
            ),
        ));
    }
    Ok(())
}

fn validate_upstream(name: &str, upstream: RawUpstreamConfig) -> Result<UpstreamConfig, Invalid> {
    let key = format!("upstreams.{name}.targets");
    if upstream.targets.is_empty() {
        return Err(invalid(key, "at least one target is required"));
    }
    let targets = upstream
        .targets
        .iter()
        .map(|target| {
            let uri: http::Uri = target
                .parse()
                .map_err(|_| invalid(&key, format!("`{target}` is not a valid URL")))?;
            // Only scheme and authority of a target are used (the request path is sent as it
            // is, or as the route's `upstream_path` renders it): a path or query here would be
            // silently dropped, sending `/users` where `/v1/users` was meant.
            if uri
                .path_and_query()
                .is_some_and(|pq| pq.as_str() != "/" && !pq.as_str().is_empty())
            {
                return Err(invalid(
                    &key,
                    format!(
                        "`{target}` has a path or query; targets are scheme://host[:port] only (rewrite paths with a route's `upstream_path`)"
                    ),
                ));
            }
            let parts = uri.into_parts();
            match (parts.scheme, parts.authority) {
                (Some(scheme), Some(authority))
                    if matches!(scheme.as_str(), "http" | "https") =>
                {
                    Ok(UpstreamTarget { scheme, authority })
                }
                _ => Err(invalid(
                    &key,
                    format!("`{target}` must be an http://host:port or https://host[:port] URL"),
                )),
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
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
    if upstream.body_timeout < upstream.timeout {
        return Err(invalid(
            format!("upstreams.{name}.body_timeout"),
            "must be at least `timeout`",
        ));
    }
    let tls = ClientTls::load(upstream.tls.as_ref())
        .map_err(|e| invalid(format!("upstreams.{name}.tls.{}", e.field), e.message))?;
    Ok(UpstreamConfig {
        targets,
        timeout: upstream.timeout,
        connect_timeout: upstream.connect_timeout,
        fail_timeout: upstream.fail_timeout,
        body_timeout: upstream.body_timeout,
        tls,
    })
}
