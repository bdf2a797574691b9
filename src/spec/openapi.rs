//! The OpenAPI 3.1.0 document: the gateway's public HTTP routes as clients call them.
//!
//! Owns the mapping config → OpenAPI: one path item per route path (the gateway's
//! `/files/{*rest}` becomes `/files/{rest}`), one operation per method; request bodies with the
//! route schema; the `bearerAuth` scheme and per-route security; and the responses each route
//! can actually give: the write contract (202/201, problem+json per `crate::error`), the read
//! contract (200/304 with the cache's headers, 502/504), proxied writes (the upstream's answer),
//! and the rate-limit headers of `crate::ratelimit`. A status appears only on routes that can
//! return it (401/403 only with auth, 429 only with a rate limit, 421 only with a public host).

use http::Method;
use serde_json::{Map, Value, json};

use super::{Ids, VERSION, duration, schema_components, schema_pointer};
use crate::config::{
    CacheConfig, Config, ProxyTarget, PublishTarget, Route, RouteAction, RouteAuth,
};
use crate::error::PROBLEM_TYPE_PREFIX;

/// The security scheme name routes with `auth` refer to.
const BEARER: &str = "bearerAuth";

/// The OpenAPI document for `config`.
pub fn document(config: &Config) -> Value {
    let (mut schemas, schema_ids) = schema_components(config);
    schemas.insert("Problem".into(), problem_schema());
    schemas.insert("Accepted".into(), accepted_schema());

    let mut ids = Ids::default();
    let mut paths = Map::new();
    for (route, schema_id) in config.routes.iter().zip(&schema_ids) {
        // `{*rest}` (catch-all) is the gateway's syntax; OpenAPI knows only `{rest}`.
        let path = route.path.replace("{*", "{");
        let item = paths
            .entry(path)
            .or_insert_with(|| Value::Object(Map::new()));
        // A GET route answers HEAD too (axum runs the GET handler without the body; the 405
        // `Allow` lists it), so HEAD is documented whether or not the config names it.
        let mut methods = route.methods.clone();
        if methods.contains(&Method::GET) && !methods.contains(&Method::HEAD) {
            methods.push(Method::HEAD);
        }
        for method in &methods {
            let op_id = if methods.len() == 1 {
                ids.take(&route.name)
            } else {
                ids.take(&format!(
                    "{}-{}",
                    route.name,
                    method.as_str().to_lowercase()
                ))
            };
            let op = operation(config, route, method, op_id, schema_id.as_deref());
            item[method.as_str().to_lowercase()] = op;
        }
    }

    let mut components = Map::new();
    components.insert("schemas".into(), Value::Object(schemas));
    components.insert("headers".into(), header_components());
    if let Some(auth) = &config.auth {
        components.insert(
            "securitySchemes".into(),
            json!({
                BEARER: {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": format!(
                        "A JWT in exactly one `Authorization: Bearer` header (never the query), at most 8 KiB, signed by a configured key; `exp`, `iss` = `{}`, `aud` containing `{}` and `sub` are required, `nbf` is enforced (leeway {}). Roles come from the `{}` claim, scopes from `scope`/`scp`.",
                        auth.issuer, auth.audience, duration(auth.leeway), auth.roles_claim
                    ),
                }
            }),
        );
    }

    let mut servers = Vec::new();
    if let Some(host) = &config.server.public_host {
        servers.push(json!({
            "url": format!("https://{}", host.name),
            "description": "`server.public_host`: the one host the gateway answers for (other hosts get 421). The scheme is that of the proxy in front; the gateway itself speaks plain HTTP.",
        }));
    }
    servers.push(json!({
        "url": format!("http://{}", config.server.listen),
        "description": "`server.listen`: the gateway's own listener (HTTP/1.1 and h2c).",
    }));

    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "amqp-gateway",
            "version": VERSION,
            "description": "The HTTP routes of an amqp-gateway. Writes with `publish` become confirmed RabbitMQ events (a 2xx only after the broker's ack; the events are described by the AsyncAPI document, `amqp-gateway spec --format asyncapi`); other routes are proxied to upstream services, reads through an RFC 9111 cache. Errors are RFC 9457 `application/problem+json` with `type` = `urn:amqp-gateway:problem:<code>` and `Cache-Control: no-store`. Every response carries `X-Request-Id` (the client's, or a generated UUIDv7). Generated from the gateway's configuration (`amqp-gateway spec --format openapi`).",
            "license": { "name": "Apache-2.0", "identifier": "Apache-2.0" },
        },
        "servers": servers,
        "paths": paths,
        "components": components,
    })
}

/// What a route's kind means for one method.
enum Kind<'a> {
    Publish(&'a PublishTarget),
    /// GET/HEAD of a proxied route: the read contract, through the cache when configured.
    Read(&'a ProxyTarget),
    /// Any other method of a proxied route: the upstream's answer, streamed back.
    ProxiedWrite,
}

fn operation(
    config: &Config,
    route: &Route,
    method: &Method,
    op_id: String,
    schema_id: Option<&str>,
) -> Value {
    let kind = match &route.action {
        RouteAction::Publish(target) => Kind::Publish(target),
        RouteAction::Proxy(target) if matches!(*method, Method::GET | Method::HEAD) => {
            Kind::Read(target)
        }
        RouteAction::Proxy(_) => Kind::ProxiedWrite,
    };
    let mut description = match &kind {
        Kind::Publish(target) => format!(
            "Publishes the request as a confirmed event to {} with routing key `{}` (route `{}`); answers {} once the broker has acknowledged it. Nothing is published when any check fails.",
            if target.exchange.is_empty() {
                "the default exchange".to_owned()
            } else {
                format!("exchange `{}`", target.exchange)
            },
            target.routing_key,
            route.name,
            target.status.as_u16(),
        ),
        Kind::Read(target) => format!(
            "Proxied to upstream `{}` (route `{}`){}.",
            target.upstream,
            route.name,
            if target.cache.is_some() {
                ", through the shared response cache"
            } else {
                ""
            }
        ),
        Kind::ProxiedWrite => {
            let upstream = match &route.action {
                RouteAction::Proxy(p) => p.upstream.as_str(),
                RouteAction::Publish(_) => "",
            };
            format!(
                "Proxied synchronously to upstream `{upstream}` (route `{}`): the body streams to one target and is never sent to a second one; the upstream's answer comes back as sent.",
                route.name
            )
        }
    };
    let security = match &route.auth {
        RouteAuth::Public => json!([]),
        RouteAuth::Required(policy) => {
            let mode = match policy.mode {
                crate::config::PolicyMatch::Any => "any",
                crate::config::PolicyMatch::All => "all",
            };
            let list = |items: &[String]| {
                items
                    .iter()
                    .map(|i| format!("`{i}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            description.push_str("\n\nRequires a valid bearer token");
            if !policy.roles.is_empty() {
                description.push_str(&format!(
                    " with {mode} of the roles {}",
                    list(&policy.roles)
                ));
            }
            if !policy.scopes.is_empty() {
                description.push_str(&format!(
                    "{} {mode} of the scopes {}",
                    if policy.roles.is_empty() {
                        " with"
                    } else {
                        " and"
                    },
                    list(&policy.scopes)
                ));
            }
            description.push('.');
            json!([{ BEARER: [] }])
        }
    };
    if !route.rate_limits.is_empty() {
        let limits: Vec<String> = route
            .rate_limits
            .iter()
            .map(|l| {
                format!(
                    "`{}`: {} per {}, burst {}",
                    l.policy,
                    l.limit,
                    duration(l.per),
                    l.burst
                )
            })
            .collect();
        description.push_str(&format!(
            "\n\nRate limits (per gateway instance, checked in order): {}.",
            limits.join("; ")
        ));
    }

    let mut op = json!({
        "operationId": op_id,
        "summary": summary(route, method, &kind),
        "description": description,
        "security": security,
        "responses": responses(config, route, method, &kind),
    });
    let parameters = parameters(route, method, &kind);
    if !parameters.is_empty() {
        op["parameters"] = Value::Array(parameters);
    }
    match &kind {
        Kind::Publish(target) => op["requestBody"] = publish_body(route, target, schema_id),
        Kind::ProxiedWrite if *method != Method::OPTIONS => {
            op["requestBody"] = json!({
                "required": false,
                "description": "Streamed to the upstream as sent; `Content-Encoding: gzip` is decoded first (any other coding is 415), under `server.max_body_bytes`.",
                "content": { "*/*": { "schema": {} } },
            });
        }
        _ => {}
    }
    op
}

fn summary(route: &Route, method: &Method, kind: &Kind<'_>) -> String {
    match kind {
        Kind::Publish(target) => format!("Publish `{}` ({})", target.routing_key, route.name),
        Kind::Read(target) => format!(
            "{method} via upstream `{}` ({})",
            target.upstream, route.name
        ),
        Kind::ProxiedWrite => format!("{method} proxied ({})", route.name),
    }
}

fn parameters(route: &Route, method: &Method, kind: &Kind<'_>) -> Vec<Value> {
    let mut out = Vec::new();
    let catch_all = route
        .path
        .rsplit('/')
        .next()
        .and_then(|seg| seg.strip_prefix("{*"))
        .and_then(|seg| seg.strip_suffix('}'));
    for name in &route.path_params {
        let mut schema = json!({ "type": "string" });
        let mut description = format!("Path parameter `{name}`.");
        if catch_all == Some(name.as_str()) {
            description = format!(
                "The rest of the path after the prefix (`{name}`); may span several segments."
            );
        }
        if matches!(kind, Kind::Publish(_)) {
            // Every parameter of a publish route becomes a routing-key word and an
            // `x-param-*` header (`routes::publish::check_word`): 400 otherwise.
            schema = json!({ "type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[^.*#]+$" });
            description.push_str(" One routing-key word once percent-decoded: 1–255 bytes, no `.`, `*`, `#` or control characters (400 otherwise).");
        }
        out.push(json!({
            "name": name,
            "in": "path",
            "required": true,
            "description": description,
            "schema": schema,
        }));
    }
    out.push(json!({
        "name": "X-Request-Id",
        "in": "header",
        "required": false,
        "description": if matches!(kind, Kind::Publish(_)) {
            "Kept and returned when sent, generated (UUIDv7) otherwise; becomes the event's `correlation_id`, so when sent it must be 1–255 visible ASCII characters (400 otherwise)."
        } else {
            "Kept, passed upstream and returned when sent; generated (UUIDv7) otherwise."
        },
        "schema": { "type": "string" },
    }));
    match kind {
        Kind::Publish(_) => {
            out.push(json!({
                "name": "Idempotency-Key",
                "in": "header",
                "required": false,
                "description": "Makes the event id a UUIDv5 of route, method, path, subject and key, so a retry is published under the same `message_id`. One header of 1–255 visible ASCII characters (400 otherwise); reused with a different body or content type: 422 `idempotency-key-reused`.",
                "schema": { "type": "string", "minLength": 1, "maxLength": 255 },
            }));
            out.push(json!({
                "name": "traceparent",
                "in": "header",
                "required": false,
                "description": "W3C trace context, copied into the event's `traceparent` header (1–255 visible ASCII characters, 400 otherwise).",
                "schema": { "type": "string", "minLength": 1, "maxLength": 255 },
            }));
            out.push(content_encoding());
        }
        Kind::ProxiedWrite if *method != Method::OPTIONS => out.push(content_encoding()),
        Kind::Read(_) => out.push(json!({
            "name": "If-None-Match",
            "in": "header",
            "required": false,
            "description": "Compared weakly with the response's `ETag` (lists and `*` too): a match is a 304.",
            "schema": { "type": "string" },
        })),
        _ => {}
    }
    out
}

fn content_encoding() -> Value {
    json!({
        "name": "Content-Encoding",
        "in": "header",
        "required": false,
        "description": "`gzip` (decoded by the gateway, under `server.max_body_bytes`) or `identity`; anything else, or more than one coding, is 415.",
        "schema": { "type": "string", "enum": ["gzip", "x-gzip", "identity"] },
    })
}

fn publish_body(route: &Route, target: &PublishTarget, schema_id: Option<&str>) -> Value {
    // An empty DELETE without `Content-Type` is accepted when no schema demands a body
    // (`routes::publish::check_content_type`); every other write must send one.
    let optional = target.schema.is_none() && route.methods.contains(&Method::DELETE);
    let schema = match schema_id {
        Some(id) => json!({ "$ref": schema_pointer(id) }),
        None => json!({}),
    };
    let content: Map<String, Value> = target
        .content_types
        .iter()
        .map(|t| (t.clone(), json!({ "schema": schema.clone() })))
        .collect();
    let mut description = "The event body, published unchanged (after gzip decoding). `Content-Type` must be one of the listed media types (415 otherwise); JSON bodies are checked for syntax and nesting depth (400)".to_owned();
    if schema_id.is_some() {
        description.push_str(" and against the schema (422 `invalid-event`)");
    }
    description.push_str(". `Content-Encoding: gzip` is accepted.");
    if optional {
        description.push_str(" A DELETE may omit the body and `Content-Type`.");
    }
    json!({
        "required": !optional,
        "description": description,
        "content": content,
    })
}

/// `{ "$ref": "#/components/headers/NAME" }`.
fn header_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/components/headers/{name}") })
}

fn header_components() -> Value {
    json!({
        "Retry-After": {
            "description": "Whole seconds to wait before retrying (rounded up, at least 1).",
            "schema": { "type": "integer", "minimum": 1 },
        },
        "RateLimit": {
            "description": "draft-ietf-httpapi-ratelimit-headers-10: per policy of the route, the remaining quota `r` and seconds `t` until it refills, e.g. `\"ip\";r=0;t=2`. On allowed responses for every limit, on a 429 for the one that refused.",
            "schema": { "type": "string" },
        },
        "RateLimit-Policy": {
            "description": "draft-ietf-httpapi-ratelimit-headers-10: the route's policies, quota `q` per window `w` seconds, e.g. `\"ip\";q=10;w=60`.",
            "schema": { "type": "string" },
        },
        "WWW-Authenticate": {
            "description": "RFC 6750 challenge: `Bearer`, `Bearer error=\"invalid_token\"`, `Bearer error=\"invalid_request\"` or `Bearer error=\"insufficient_scope\"` (with `scope=\"...\"` when the route requires scopes).",
            "schema": { "type": "string" },
        },
        "X-Request-Id": {
            "description": "The request's id: the client's `X-Request-Id`, or a generated UUIDv7.",
            "schema": { "type": "string" },
        },
        "ETag": {
            "description": "The upstream's entity tag, or a strong one the gateway generated from the body (route `etag`, default true); weakened (`W/`) when the gateway compressed the body.",
            "schema": { "type": "string" },
        },
        "Cache-Control": {
            "description": "As the upstream sent it.",
            "schema": { "type": "string" },
        },
        "Vary": {
            "description": "The upstream's, plus `Accept-Encoding` when the gateway may compress the response.",
            "schema": { "type": "string" },
        },
        "Last-Modified": {
            "description": "As the upstream sent it (HTTP-date).",
            "schema": { "type": "string" },
        },
        "Age": {
            "description": "Seconds since the response was generated or validated by the origin, per RFC 9111 §4.2.3 (routes with `cache`).",
            "schema": { "type": "integer", "minimum": 0 },
        },
        "X-Cache": {
            "description": "How the cache answered (routes with `cache`); `BYPASS` while `cache.coherence` has no subscription.",
            "schema": { "type": "string", "enum": ["HIT", "MISS", "REVALIDATED", "STALE", "BYPASS"] },
        },
    })
}

/// A problem+json response listing the problem codes it can carry.
fn problem(summary: &str, codes: &[&str], headers: &[&str]) -> Value {
    let types: Vec<String> = codes
        .iter()
        .map(|c| format!("`{PROBLEM_TYPE_PREFIX}{c}`"))
        .collect();
    let mut response = json!({
        "description": format!("{summary} Problem type: {}.", types.join(", ")),
        "content": {
            "application/problem+json": { "schema": { "$ref": "#/components/schemas/Problem" } }
        },
    });
    if !headers.is_empty() {
        let map: Map<String, Value> = headers
            .iter()
            .map(|h| ((*h).to_owned(), header_ref(h)))
            .collect();
        response["headers"] = Value::Object(map);
    }
    response
}

fn responses(config: &Config, route: &Route, method: &Method, kind: &Kind<'_>) -> Value {
    let mut r = Map::new();
    let limited = !route.rate_limits.is_empty();
    let auth = match &route.auth {
        RouteAuth::Public => None,
        RouteAuth::Required(policy) => Some(policy),
    };
    // Headers of responses that passed the rate limiter.
    let mut ok_headers = vec!["X-Request-Id"];
    if limited {
        ok_headers.extend(["RateLimit", "RateLimit-Policy"]);
    }
    let header_map = |names: &[&str]| -> Value {
        Value::Object(
            names
                .iter()
                .map(|h| ((*h).to_owned(), header_ref(h)))
                .collect(),
        )
    };

    match kind {
        Kind::Publish(target) => {
            let mut headers = header_map(&ok_headers);
            if let Some(location) = &target.location {
                headers["Location"] = json!({
                    "required": true,
                    "description": format!("`{location}` with the path parameters and the event id filled in: where the resource will be, created asynchronously by consumers."),
                    "schema": { "type": "string" },
                });
            }
            r.insert(
                target.status.as_str().to_owned(),
                json!({
                    "description": "The broker confirmed the event (persistent, routed to at least one queue). The body carries its id, the `message_id` of the event.",
                    "headers": headers,
                    "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Accepted" } } },
                }),
            );
        }
        Kind::Read(target) => {
            let cached = target.cache.is_some();
            let mut names = vec!["ETag", "Cache-Control", "Vary", "Last-Modified"];
            if cached {
                names.extend(["Age", "X-Cache"]);
            }
            names.extend(ok_headers.iter().copied());
            let mut ok = json!({
                "description": read_description(target.cache.as_ref()),
                "headers": header_map(&names),
            });
            if *method != Method::HEAD {
                ok["content"] = json!({ "*/*": { "schema": {} } });
            }
            r.insert("200".into(), ok);
            let mut not_modified = vec!["ETag", "Cache-Control", "Vary"];
            not_modified.extend(ok_headers.iter().copied());
            r.insert(
                "304".into(),
                json!({
                    "description": "`If-None-Match` matched the response's `ETag`; no body.",
                    "headers": header_map(&not_modified),
                }),
            );
            r.insert(
                "default".into(),
                json!({
                    "description": "Any other answer of the upstream, passed through (minus hop-by-hop headers, `Server` and `X-Powered-By`).",
                    "headers": header_map(&ok_headers),
                }),
            );
        }
        Kind::ProxiedWrite => {
            let mut default = json!({
                "description": "The upstream's answer as it sent it: status, headers (`Set-Cookie`, `Location`, …, minus hop-by-hop fields) and body, streamed, never stored.",
                "headers": header_map(&ok_headers),
            });
            if *method != Method::HEAD {
                default["content"] = json!({ "*/*": { "schema": {} } });
            }
            r.insert("default".into(), default);
        }
    }

    let mut bad_request = vec!["bad-request"];
    if auth.is_some() {
        bad_request.push("invalid-auth-request");
    }
    let mut bad_request_summary = match kind {
        Kind::Publish(_) => {
            "A path a backend could read differently, malformed or too deeply nested JSON, a path parameter that is not one routing-key word, a routing key over 255 bytes, or a malformed `Idempotency-Key`, `X-Request-Id` or `traceparent`."
        }
        _ => "A path a backend could read differently.",
    }
    .to_owned();
    if auth.is_some() {
        bad_request_summary
            .push_str(" `invalid-auth-request`: more than one `Authorization` header.");
    }
    r.insert(
        "400".into(),
        problem(&bad_request_summary, &bad_request, &[]),
    );
    if let Some(policy) = auth {
        r.insert(
            "401".into(),
            problem(
                "No bearer token, or one that is not valid for this service.",
                &["unauthorized", "invalid-token"],
                &["WWW-Authenticate"],
            ),
        );
        if !policy.roles.is_empty() || !policy.scopes.is_empty() {
            r.insert(
                "403".into(),
                problem(
                    "A valid token without the roles or scopes the route requires.",
                    &["insufficient-scope"],
                    &["WWW-Authenticate"],
                ),
            );
        }
    }
    let has_body = matches!(kind, Kind::Publish(_))
        || (matches!(kind, Kind::ProxiedWrite) && *method != Method::OPTIONS);
    if has_body {
        r.insert(
            "408".into(),
            problem(
                "The request body did not arrive within `server.body_read_timeout`.",
                &["request-timeout"],
                &[],
            ),
        );
        r.insert(
            "413".into(),
            problem(
                &format!(
                    "The body exceeds {} bytes (`server.max_body_bytes`), also after gzip decoding.",
                    config.server.max_body_bytes
                ),
                &["payload-too-large"],
                &[],
            ),
        );
        r.insert(
            "415".into(),
            problem(
                match kind {
                    Kind::Publish(_) => {
                        "`Content-Type` missing, not accepted by the route or over 255 bytes, or a `Content-Encoding` other than gzip."
                    }
                    _ => "A `Content-Encoding` other than gzip.",
                },
                &["unsupported-media-type"],
                &[],
            ),
        );
    }
    if config.server.public_host.is_some() {
        r.insert(
            "421".into(),
            problem(
                "The request names a host other than `server.public_host`.",
                &["misdirected-request"],
                &[],
            ),
        );
    }
    if let Kind::Publish(target) = kind {
        let mut codes = Vec::new();
        let mut summary = String::new();
        if target.schema.is_some() {
            codes.push("invalid-event");
            summary.push_str("The body does not match the route's schema (`errors` lists the pointers and keywords, `truncated` whether there were more), or the");
        } else {
            summary.push_str("The");
        }
        codes.push("idempotency-key-reused");
        summary.push_str(
            " `Idempotency-Key` was already used with another body or content type. Nothing was published.",
        );
        r.insert("422".into(), problem(&summary, &codes, &[]));
    }
    if limited {
        r.insert(
            "429".into(),
            problem(
                "A rate limit of the route is exhausted for this caller; nothing was published or sent upstream.",
                &["rate-limited"],
                &["Retry-After", "RateLimit", "RateLimit-Policy"],
            ),
        );
    }
    if matches!(kind, Kind::Publish(_)) {
        r.insert(
            "431".into(),
            problem(
                "The event's AMQP properties and headers would exceed 16 KiB.",
                &["headers-too-large"],
                &[],
            ),
        );
    }
    r.insert(
        "500".into(),
        problem("A bug on the gateway's side.", &["internal"], &[]),
    );
    match kind {
        Kind::Publish(_) => {
            r.insert(
                "503".into(),
                problem(
                    "Nothing was enqueued: no queue is bound for the event, the broker nacked it, no publishing channel is up, or the broker is blocked by a resource alarm. Retry later.",
                    &["no-route", "nacked", "broker-unavailable", "broker-blocked"],
                    &["Retry-After"],
                ),
            );
            r.insert(
                "504".into(),
                problem(
                    "Sent, but not confirmed within `amqp.confirm_timeout`: the event may or may not be enqueued. Retry with the same `Idempotency-Key`.",
                    &["publish-outcome-unknown"],
                    &[],
                ),
            );
        }
        Kind::Read(_) | Kind::ProxiedWrite => {
            r.insert(
                "502".into(),
                problem(
                    "No target of the upstream could be reached, or its answer was broken.",
                    &["bad-gateway"],
                    &[],
                ),
            );
            r.insert(
                "504".into(),
                problem(
                    "The upstream did not answer within its `timeout`.",
                    &["upstream-timeout"],
                    &[],
                ),
            );
        }
    }
    Value::Object(r)
}

fn read_description(cache: Option<&CacheConfig>) -> String {
    match cache {
        None => "The upstream's answer (minus hop-by-hop headers, `Server` and `X-Powered-By`); compressed (gzip, br, zstd) by `Accept-Encoding` as the route's `compress` allows.".to_owned(),
        Some(cache) => format!(
            "The upstream's answer or a stored copy (RFC 9111 shared cache; lifetime from the upstream's headers{}{}); compressed (gzip, br, zstd) by `Accept-Encoding` as the route's `compress` allows.",
            cache
                .ttl
                .map(|t| format!(", else {}", duration(t)))
                .unwrap_or_default(),
            if cache.heuristic {
                format!(", heuristic up to {}", duration(cache.heuristic_max))
            } else {
                String::new()
            }
        ),
    }
}

fn problem_schema() -> Value {
    json!({
        "type": "object",
        "description": "RFC 9457 problem details. `type` is stable per failure; `detail` never carries internal error text.",
        "required": ["type", "title", "status", "detail"],
        "properties": {
            "type": { "type": "string", "format": "uri", "description": format!("`{PROBLEM_TYPE_PREFIX}<code>`.") },
            "title": { "type": "string", "description": "The status's reason phrase." },
            "status": { "type": "integer", "minimum": 400, "maximum": 599 },
            "detail": { "type": "string" },
            "errors": {
                "type": "array",
                "description": "`invalid-event` only: where the body failed the schema and which keyword (never the values), at most 10.",
                "maxItems": crate::schema::MAX_VIOLATIONS,
                "items": {
                    "type": "object",
                    "required": ["pointer", "keyword"],
                    "properties": {
                        "pointer": { "type": "string", "description": "RFC 6901 JSON pointer into the body (`\"\"` is the body itself)." },
                        "keyword": { "type": "string", "description": "The schema keyword that failed." },
                    },
                },
            },
            "truncated": { "type": "boolean", "description": "`invalid-event` only: more violations exist than are listed." },
        },
    })
}

fn accepted_schema() -> Value {
    json!({
        "type": "object",
        "required": ["event_id", "status"],
        "additionalProperties": false,
        "properties": {
            "event_id": { "type": "string", "format": "uuid", "description": "The event's `message_id`." },
            "status": { "const": "accepted" },
        },
    })
}
