//! `[[routes]]`: the raw route shape (`publish` or `upstream`), its validation against the
//! path, the exchanges and the upstreams, and the validated [`Route`] the handlers use.

use std::collections::{BTreeMap, BTreeSet};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::MethodFilter;
use http::Method;
use serde::Deserialize;

use super::auth::{CorsConfig, CorsPolicy};
use super::{
    AUTH_HEADER_PREFIX, Invalid, PARAM_HEADER_PREFIX, RESERVED_HEADERS, UpstreamConfig, invalid,
};
use crate::schema::Schema;
use crate::template::{Template, is_param_name};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
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
    /// JSON Schema file of a publish route's bodies (relative to the working directory).
    #[serde(default)]
    schema: Option<String>,
    #[serde(default)]
    pub(super) cors: Option<RawRouteCors>,
    #[serde(default)]
    rate_limits: Vec<RawRateLimit>,
}

/// One `rate_limits` entry as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRateLimit {
    by: String,
    limit: u32,
    #[serde(with = "humantime_serde")]
    per: Duration,
    #[serde(default)]
    burst: Option<u32>,
}

/// One validated `rate_limits` entry of a route: at most `limit` requests per `per` for each
/// key (GCRA: one request every `per / limit`, up to `burst` at once).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitConfig {
    /// Whose requests share a bucket.
    pub by: RateLimitKey,
    /// Requests per `per` (at least 1).
    pub limit: NonZeroU32,
    /// The window `limit` is counted over (greater than zero, at least 1 ns per request).
    pub per: Duration,
    /// Most requests at once (default `limit`).
    pub burst: NonZeroU32,
    /// The policy's name in the `RateLimit` and `RateLimit-Policy` headers: `by` as written,
    /// with `-<index>` when an earlier limit of the route has the same `by`. Visible ASCII
    /// without `"` or `\`, so it is a valid structured-field string as it is.
    pub policy: String,
}

/// What a rate limit is keyed by (`by = "..."`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateLimitKey {
    /// The verified token's `sub` (authenticated routes only).
    Subject,
    /// A verified claim, one of `auth.propagate_claims` (authenticated routes only). Holds the
    /// identity header it is propagated as (`x-auth-tenant` for `claim:tenant`), which is how
    /// the caller's identity (`auth::Identity`) carries it.
    Claim(String),
    /// The client IP: the TCP peer, or the rightmost untrusted `X-Forwarded-For` address
    /// when the peer is a trusted proxy. IPv6 clients are keyed by their /64.
    Ip,
    /// One bucket for the whole route.
    Route,
}

impl RateLimitKey {
    fn parse(by: &str) -> Option<Self> {
        match by {
            "subject" => Some(Self::Subject),
            "ip" => Some(Self::Ip),
            "route" => Some(Self::Route),
            _ => {
                let name = by.strip_prefix("claim:")?;
                (!name.is_empty()).then(|| Self::Claim(format!("{AUTH_HEADER_PREFIX}{name}")))
            }
        }
    }

    /// The claim name of a `claim:NAME` key.
    pub(super) fn claim_name(&self) -> Option<&str> {
        match self {
            Self::Claim(header) => header.strip_prefix(AUTH_HEADER_PREFIX),
            _ => None,
        }
    }
}

impl RawRateLimit {
    fn validate(
        self,
        key: &dyn Fn(&str) -> String,
        public: bool,
        earlier: &[RateLimitConfig],
    ) -> Result<RateLimitConfig, Invalid> {
        let by = RateLimitKey::parse(&self.by).ok_or_else(|| {
            invalid(
                key("by"),
                format!(
                    "`{}` is not a rate-limit key: use \"subject\", \"claim:NAME\", \"ip\" or \"route\"",
                    self.by
                ),
            )
        })?;
        if public && matches!(by, RateLimitKey::Subject | RateLimitKey::Claim(_)) {
            return Err(invalid(
                key("by"),
                format!(
                    "`{}` needs a verified token, and this route is auth = \"public\"; use \"ip\" or \"route\"",
                    self.by
                ),
            ));
        }
        let limit = NonZeroU32::new(self.limit)
            .ok_or_else(|| invalid(key("limit"), "must be at least 1"))?;
        if self.per.is_zero() {
            return Err(invalid(key("per"), "must be greater than zero"));
        }
        // governor spaces requests `per / limit` apart; a zero spacing would be no limit.
        if (self.per / limit.get()).is_zero() {
            return Err(invalid(key("per"), "must be at least `limit` nanoseconds"));
        }
        let burst = match self.burst {
            None => limit,
            Some(b) => {
                NonZeroU32::new(b).ok_or_else(|| invalid(key("burst"), "must be at least 1"))?
            }
        };
        let same = earlier.iter().filter(|l| l.by == by).count();
        let policy = if same == 0 {
            self.by
        } else {
            format!("{}-{}", self.by, earlier.len())
        };
        Ok(RateLimitConfig {
            by,
            limit,
            per: self.per,
            burst,
            policy,
        })
    }
}

/// A route's `cors`: `false` (none), `true` (the global `[cors]`) or its own table.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum RawRouteCors {
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
    /// Freshness for responses the origin gives no explicit lifetime (`max-age`, `s-maxage`,
    /// `Expires`) and that are cacheable without one. Optional: without it the route caches
    /// only what the origin marks cacheable. Greater than zero.
    #[serde(default, with = "humantime_serde")]
    pub ttl: Option<Duration>,
    /// Heuristic freshness (RFC 9111 §4.2.2) for responses without an explicit lifetime: 10 %
    /// of the time since `Last-Modified`, at most `heuristic_max`. Default false.
    #[serde(default)]
    pub heuristic: bool,
    /// Cap of heuristic freshness. Default 24h; greater than zero.
    #[serde(default = "default_heuristic_max", with = "humantime_serde")]
    pub heuristic_max: Duration,
}

const fn default_heuristic_max() -> Duration {
    Duration::from_secs(24 * 3600)
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
    /// On the default exchange a routing key is a queue name: a `{param}` in it lets the
    /// client pick any queue of the vhost. Refused unless this says it is meant.
    #[serde(default)]
    allow_client_routing_key: bool,
    /// `true`, or `{ source = "...", type = "..." }`: checked by hand for errors that name
    /// the key (serde's untagged enums only say "did not match any variant").
    #[serde(default)]
    cloudevents: Option<toml::Value>,
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
    pub cors: Option<CorsPolicy>,
    /// What it does.
    pub action: RouteAction,
    /// `rate_limits`, in the order they are checked (empty: none).
    pub rate_limits: Vec<RateLimitConfig>,
}

/// The routes that share one path, as the router serves them.
///
/// Built only by config validation, which is where what makes a path servable is checked, so
/// holding one means: its routes share one CORS policy (a preflight is answered per path), no
/// method is served by two of them (the router would panic merging them), and each route's
/// methods are a [`MethodFilter`] already.
#[derive(Debug, Clone)]
pub struct RoutePath {
    /// [`path_shape`] of `path`: what makes two spellings the same path.
    shape: String,
    path: String,
    cors: Option<CorsPolicy>,
    routes: Vec<(MethodFilter, Route)>,
}

impl RoutePath {
    /// Groups `routes` (in file order) by path. `Err` is the index of the route that breaks a
    /// rule (CORS differs from the first route of its path, or a method already served there)
    /// and why; the rules are checked with their config keys before this runs, so this only
    /// makes them hold by construction.
    pub(super) fn group(routes: &[Route]) -> Result<Vec<Self>, (usize, &'static str, String)> {
        let mut paths: Vec<Self> = Vec::new();
        for (i, route) in routes.iter().enumerate() {
            let filter = route
                .methods
                .iter()
                .map(|m| {
                    MethodFilter::try_from(m.clone())
                        .map_err(|_| (i, "methods", format!("`{m}` cannot be routed")))
                })
                .try_fold(None, |acc: Option<MethodFilter>, f| {
                    f.map(|f| Some(acc.map_or(f, |a| a.or(f))))
                })?
                .ok_or_else(|| (i, "methods", "at least one method is required".to_owned()))?;
            let shape = path_shape(&route.path);
            let Some(path) = paths.iter_mut().find(|p| p.shape == shape) else {
                paths.push(Self {
                    shape,
                    path: route.path.clone(),
                    cors: route.cors.clone(),
                    routes: vec![(filter, route.clone())],
                });
                continue;
            };
            if path.cors != route.cors {
                return Err((i, "cors", "differs on the same path".to_owned()));
            }
            let taken = path
                .routes
                .iter()
                .any(|(_, r)| r.methods.iter().any(|m| route.methods.contains(m)));
            if taken {
                return Err((
                    i,
                    "methods",
                    "a method is served twice on the path".to_owned(),
                ));
            }
            path.routes.push((filter, route.clone()));
        }
        Ok(paths)
    }

    /// The path pattern, as its routes spell it.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The CORS policy of every route on the path.
    pub fn cors(&self) -> Option<&CorsPolicy> {
        self.cors.as_ref()
    }

    /// The routes, in file order, each with the methods it serves (disjoint).
    pub fn routes(&self) -> impl Iterator<Item = (MethodFilter, &Route)> {
        self.routes.iter().map(|(filter, route)| (*filter, route))
    }
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
    /// Success status: 202 Accepted or 201 Created.
    pub status: http::StatusCode,
    /// `Location` template; placeholders are path parameters or `event_id`.
    pub location: Option<Template>,
    /// Accepted request media types (lower-case `type/subtype`).
    pub content_types: Vec<String>,
    /// Static message properties.
    pub properties: StaticProperties,
    /// Static AMQP headers.
    pub headers: Vec<(String, String)>,
    /// The route's compiled JSON Schema (`schema = "..."`): every body must match it (422).
    /// Set only when every accepted content type is JSON (config validation).
    pub schema: Option<Arc<Schema>>,
    /// CloudEvents binary mode (`cloudevents`): the event's attributes as `cloudEvents_*`
    /// AMQP headers.
    pub cloudevents: Option<CloudEventsConfig>,
}

/// `publish.cloudevents`: the CloudEvents 1.0 attributes the route's events carry, in the
/// AMQP binding's binary mode (the body stays the request body; `datacontenttype` is the AMQP
/// `content_type`). `id` is the event id, `subject` the request path, `time` the publish time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudEventsConfig {
    /// `source`: the table's `source` (a URI-reference), default
    /// `urn:amqp-gateway:route:<route name, percent-encoded>`.
    pub source: String,
    /// `type`: the table's `type`, default the message's AMQP `type` (`publish.properties.type`,
    /// else the rendered routing key).
    pub event_type: Option<String>,
}

impl CloudEventsConfig {
    /// Header-name prefix of the binding (CloudEvents AMQP binding 1.0.2 §3.1.3.1).
    pub const PREFIX: &'static str = "cloudEvents_";

    fn parse(
        raw: toml::Value,
        route: &str,
        key: &dyn Fn(&str) -> String,
    ) -> Result<Option<Self>, Invalid> {
        // Everything but RFC 3986 `unreserved` is escaped: the name becomes one URN segment.
        const UNRESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
            .remove(b'-')
            .remove(b'.')
            .remove(b'_')
            .remove(b'~');
        let default_source = || {
            format!(
                "urn:amqp-gateway:route:{}",
                percent_encoding::utf8_percent_encode(route, UNRESERVED)
            )
        };
        let table = match raw {
            toml::Value::Boolean(false) => return Ok(None),
            toml::Value::Boolean(true) => toml::Table::new(),
            toml::Value::Table(t) => t,
            _ => {
                return Err(invalid(
                    key("cloudevents"),
                    "must be `true`, `false` or a table `{ source = \"...\", type = \"...\" }`",
                ));
            }
        };
        let mut config = CloudEventsConfig {
            source: default_source(),
            event_type: None,
        };
        for (name, value) in table {
            let field = format!("cloudevents.{name}");
            let toml::Value::String(value) = value else {
                return Err(invalid(key(&field), "must be a string"));
            };
            match name.as_str() {
                // A URI-reference (RFC 3986): no spaces, controls or non-ASCII.
                "source"
                    if value.is_empty()
                        || value.len() > 255
                        || !value.chars().all(|c| c.is_ascii_graphic()) =>
                {
                    return Err(invalid(
                        key(&field),
                        "must be a URI-reference: 1–255 visible ASCII characters",
                    ));
                }
                "source" => config.source = value,
                "type"
                    if value.is_empty()
                        || value.len() > 255
                        || value.chars().any(char::is_control) =>
                {
                    return Err(invalid(
                        key(&field),
                        "must be 1–255 bytes without control characters",
                    ));
                }
                "type" => config.event_type = Some(value),
                _ => {
                    return Err(invalid(
                        key(&field),
                        "unknown key (expected `source` or `type`)",
                    ));
                }
            }
        }
        Ok(Some(config))
    }
}

/// Where a read route forwards.
#[derive(Debug, Clone)]
pub struct ProxyTarget {
    /// Key into [`Config::upstreams`](super::Config::upstreams).
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

/// Whether a lower-case `type/subtype` is JSON: `application/json` or a `+json` suffix
/// (`application/problem+json`, `application/vnd.acme.user+json`). Case-insensitive.
pub(crate) fn is_json_media_type(essence: &str) -> bool {
    essence.eq_ignore_ascii_case("application/json")
        || essence
            .len()
            .checked_sub(5)
            .and_then(|at| essence.get(at..))
            .is_some_and(|suffix| suffix.eq_ignore_ascii_case("+json"))
}

/// The path with parameter names erased, so `/u/{id}` and `/u/{uid}` collide.
pub(super) fn path_shape(path: &str) -> String {
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
    pub(super) fn validate(
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
                "OPTIONS" => Method::OPTIONS,
                other => {
                    return Err(invalid(
                        key("methods"),
                        format!(
                            "unsupported method `{other}` (GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS; upper case)"
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
        let mut rate_limits: Vec<RateLimitConfig> = Vec::with_capacity(self.rate_limits.len());
        for (j, raw) in self.rate_limits.into_iter().enumerate() {
            let limit_key = |field: &str| format!("routes[{i}].rate_limits[{j}].{field}");
            let limit = raw.validate(&limit_key, auth == RouteAuth::Public, &rate_limits)?;
            rate_limits.push(limit);
        }
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
                    .find(|m| matches!(**m, Method::GET | Method::HEAD | Method::OPTIONS))
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
                let mut target = publish.validate(i, &self.name, &path_params, exchanges)?;
                if let Some(file) = self.schema {
                    // A schema describes JSON; a route that also took, say, text/plain would
                    // publish those bodies unchecked, so it may not.
                    if let Some(ct) = target
                        .content_types
                        .iter()
                        .find(|ct| !is_json_media_type(ct))
                    {
                        return Err(invalid(
                            key("schema"),
                            format!(
                                "a schema needs JSON bodies, but `publish.content_types` lists `{ct}` (only application/json and */*+json)"
                            ),
                        ));
                    }
                    let schema = Schema::load(&file)
                        .map_err(|m| invalid(key("schema"), format!("{file}: {m}")))?;
                    target.schema = Some(Arc::new(schema));
                }
                RouteAction::Publish(target)
            }
            (None, Some(_)) if self.schema.is_some() => {
                return Err(invalid(
                    key("schema"),
                    "applies only to publish routes (upstream routes forward bodies unchecked)",
                ));
            }
            (None, Some(upstream)) => {
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
                if self
                    .cache
                    .as_ref()
                    .is_some_and(|c| c.ttl.is_some_and(|t| t.is_zero()))
                {
                    return Err(invalid(key("cache.ttl"), "must be greater than zero"));
                }
                if self
                    .cache
                    .as_ref()
                    .is_some_and(|c| c.heuristic_max.is_zero())
                {
                    return Err(invalid(
                        key("cache.heuristic_max"),
                        "must be greater than zero",
                    ));
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
            rate_limits,
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
        route: &str,
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
        // The default exchange delivers to the queue the routing key names, any queue: with a
        // client-controlled word in it, a client could fill (or feed commands to) queues
        // this route was never meant to reach.
        let client_controlled = routing_key.params().next().is_some();
        if self.exchange.is_empty() && client_controlled && !self.allow_client_routing_key {
            return Err(invalid(
                key("routing_key"),
                "on the default exchange (`exchange = \"\"`) the routing key is a queue name, and a `{param}` lets clients address any queue; use a fixed queue name, an exchange, or set `allow_client_routing_key = true` if every queue of the vhost may be written to",
            ));
        }
        if self.allow_client_routing_key && !(self.exchange.is_empty() && client_controlled) {
            return Err(invalid(
                key("allow_client_routing_key"),
                "only applies to the default exchange (`exchange = \"\"`) with a `{param}` in `routing_key`",
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
        let cloudevents = self
            .cloudevents
            .map(|raw| CloudEventsConfig::parse(raw, route, &key))
            .transpose()?
            .flatten();
        let ce_prefix = CloudEventsConfig::PREFIX.to_ascii_lowercase();
        let mut headers = Vec::with_capacity(self.headers.len());
        for (name, value) in self.headers {
            let lower = name.to_ascii_lowercase();
            if RESERVED_HEADERS.contains(&lower.as_str())
                || lower.starts_with(PARAM_HEADER_PREFIX)
                || lower.starts_with(AUTH_HEADER_PREFIX)
                || (cloudevents.is_some() && lower.starts_with(&ce_prefix))
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
            status: if self.status == 201 {
                http::StatusCode::CREATED
            } else {
                http::StatusCode::ACCEPTED
            },
            location,
            content_types,
            properties: self.properties,
            headers,
            schema: None,
            cloudevents,
        })
    }
}
