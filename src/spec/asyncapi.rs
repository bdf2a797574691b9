//! The AsyncAPI 3.0.0 document: what the gateway publishes to RabbitMQ, seen from the gateway
//! (it is the application; every operation is a `send`).
//!
//! Owns the mapping config → AsyncAPI: one server per broker URL (no credentials), one channel
//! per (exchange, routing-key template) with the AMQP channel binding as the gateway declares
//! the exchange, one operation and one message per publish route, with the message properties
//! and application headers `routes::publish` and `amqp::publish` actually set. AMQP bindings
//! are version 0.3.0.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use super::{Ids, VERSION, broker_servers, identity_headers, schema_components, schema_pointer};
use crate::amqp::APP_ID;
use crate::config::{
    CloudEventsConfig, Config, ExchangeKind, PARAM_HEADER_PREFIX, PublishTarget, Route,
    RouteAction, RouteAuth,
};

/// The AMQP bindings version every binding object declares.
const BINDING_VERSION: &str = "0.3.0";

/// What a path parameter may be once it is a routing-key word (`routes::publish::check_word`):
/// every path parameter of a publish route is checked so, used in the key or not.
const WORD_RULE: &str = "1–255 bytes; no `.`, `*`, `#` or control characters (every path parameter is one routing-key word)";

/// The AsyncAPI document for `config`.
pub fn document(config: &Config) -> Value {
    let (schemas, schema_ids) = schema_components(config);
    let vhost = broker_servers(config)
        .first()
        .map_or_else(|| "/".to_owned(), |s| s.vhost.clone());

    let mut channel_ids = Ids::default();
    let mut message_ids = Ids::default();
    let mut operation_ids = Ids::default();
    // (exchange, routing-key template) → channel id; ids are handed out in config order.
    let mut channel_of: BTreeMap<(&str, String), String> = BTreeMap::new();
    let mut channels = Map::new();
    let mut operations = Map::new();
    let mut messages = Map::new();

    for (route, schema_id) in config.routes.iter().zip(&schema_ids) {
        let RouteAction::Publish(target) = &route.action else {
            continue;
        };
        let rk = target.routing_key.to_string();
        let channel_id = channel_of
            .entry((target.exchange.as_str(), rk.clone()))
            .or_insert_with(|| {
                let exchange = if target.exchange.is_empty() {
                    "default"
                } else {
                    &target.exchange
                };
                let id = channel_ids.take(&format!("{exchange}.{}", rk.replace(['{', '}'], "")));
                channels.insert(id.clone(), channel(config, target, &vhost));
                id
            })
            .clone();
        let message_id = message_ids.take(&route.name);
        messages.insert(
            message_id.clone(),
            message(config, route, target, schema_id.as_deref()),
        );
        if let Some(Value::Object(channel)) = channels.get_mut(&channel_id) {
            if let Some(Value::Object(list)) = channel.get_mut("messages") {
                list.insert(
                    message_id.clone(),
                    json!({ "$ref": format!("#/components/messages/{message_id}") }),
                );
            }
            if let Some(Value::String(description)) = channel.get_mut("description") {
                description.push_str(&format!(
                    "\n- route `{}`: {}",
                    route.name,
                    request_line(route)
                ));
            }
        }
        operations.insert(
            operation_ids.take(&route.name),
            operation(route, target, &channel_id, &message_id),
        );
    }

    let servers: Map<String, Value> = {
        let all = broker_servers(config);
        let many = all.len() > 1;
        all.into_iter()
            .enumerate()
            .map(|(i, s)| {
                let name = if many {
                    format!("broker-{}", i + 1)
                } else {
                    "broker".to_owned()
                };
                let value = json!({
                    "host": s.host,
                    "protocol": s.protocol,
                    "protocolVersion": "0.9.1",
                    "description": if many {
                        format!("Cluster node {} of `[amqp] urls`; the gateway spreads its connections over the nodes. Credentials are configured, never published.", i + 1)
                    } else {
                        "The broker of `[amqp] url`. Credentials are configured, never published.".to_owned()
                    },
                });
                (name, value)
            })
            .collect()
    };

    let mut components = Map::new();
    components.insert("messages".into(), Value::Object(messages));
    if !schemas.is_empty() {
        components.insert("schemas".into(), Value::Object(schemas));
    }
    json!({
        "asyncapi": "3.0.0",
        "info": {
            "title": "amqp-gateway events",
            "version": VERSION,
            "description": "The events amqp-gateway publishes to RabbitMQ, one operation per publish route. Each is published persistent (`delivery_mode` 2), `mandatory`, on a publisher-confirm channel; the HTTP 2xx is sent only after the broker's ack (an unroutable event is a 503, nothing is enqueued). Delivery is at least once: consumers deduplicate on `message_id`. Generated from the gateway's configuration (`amqp-gateway spec --format asyncapi`).",
            "license": { "name": "Apache-2.0", "url": "https://www.apache.org/licenses/LICENSE-2.0" },
        },
        "servers": servers,
        "channels": channels,
        "operations": operations,
        "components": components,
    })
}

/// `METHOD, METHOD /path`, for descriptions.
fn request_line(route: &Route) -> String {
    let methods: Vec<&str> = route.methods.iter().map(http::Method::as_str).collect();
    format!("{} {}", methods.join(", "), route.path)
}

/// The channel of `target`'s (exchange, routing-key template); the routes publishing to it
/// are appended to its description by the caller.
fn channel(config: &Config, target: &PublishTarget, vhost: &str) -> Value {
    let exchange = if target.exchange.is_empty() {
        // The default exchange always exists and is never declared.
        json!({ "name": "", "type": "default", "vhost": vhost })
    } else {
        let kind = config
            .amqp
            .exchanges
            .iter()
            .find(|e| e.name == target.exchange)
            .map(|e| e.kind);
        let kind = match kind {
            Some(ExchangeKind::Topic) => "topic",
            Some(ExchangeKind::Direct) => "direct",
            Some(ExchangeKind::Fanout) => "fanout",
            Some(ExchangeKind::Headers) => "headers",
            // Validation guarantees a named exchange is declared; never reached.
            None => "default",
        };
        // As `amqp::pool` declares it at every (re)connect: durable, not auto-delete.
        json!({
            "name": target.exchange,
            "type": kind,
            "durable": true,
            "autoDelete": false,
            "vhost": vhost,
        })
    };
    let mut parameters = Map::new();
    for name in target.routing_key.params() {
        parameters.insert(
            name.to_owned(),
            json!({
                "description": format!("The route's path parameter `{{{name}}}`, as one routing-key word: {WORD_RULE}."),
            }),
        );
    }
    let exchange_name = if target.exchange.is_empty() {
        "the default exchange (the routing key is a queue name)".to_owned()
    } else {
        format!("exchange `{}`", target.exchange)
    };
    let mut channel = json!({
        "address": target.routing_key.to_string(),
        "title": format!("{} {}", if target.exchange.is_empty() { "(default)" } else { &target.exchange }, target.routing_key),
        "description": format!("Routing key `{}` on {exchange_name}. Published by:", target.routing_key),
        "messages": {},
        "bindings": {
            "amqp": {
                "is": "routingKey",
                "exchange": exchange,
                "bindingVersion": BINDING_VERSION,
            }
        },
    });
    if !parameters.is_empty() {
        channel["parameters"] = Value::Object(parameters);
    }
    channel
}

/// The `send` operation of one publish route.
fn operation(route: &Route, target: &PublishTarget, channel: &str, message: &str) -> Value {
    let mut amqp = json!({
        "deliveryMode": 2,
        "mandatory": true,
        "timestamp": true,
        "bindingVersion": BINDING_VERSION,
    });
    if let Some(priority) = target.properties.priority {
        amqp["priority"] = json!(priority);
    }
    json!({
        "action": "send",
        "channel": { "$ref": format!("#/channels/{channel}") },
        "title": route.name,
        "summary": format!("{} → {}", request_line(route), target.routing_key),
        "description": format!(
            "Route `{}`: each accepted {} request is published as one event, confirmed by the broker before the HTTP {} is sent. `mandatory`: an event no queue is bound for is returned and answered 503; nothing is enqueued then.",
            route.name,
            request_line(route),
            target.status.as_u16(),
        ),
        "messages": [{ "$ref": format!("#/channels/{channel}/messages/{message}") }],
        "bindings": { "amqp": amqp },
    })
}

/// The message of one publish route: properties, headers and payload.
fn message(
    config: &Config,
    route: &Route,
    target: &PublishTarget,
    schema_id: Option<&str>,
) -> Value {
    // An empty DELETE without `Content-Type` is published without `content_type` (only where
    // no schema demands a body: `routes::publish::check_content_type`).
    let may_lack_type = target.schema.is_none()
        && target.properties.content_type.is_none()
        && route.methods.contains(&http::Method::DELETE);
    let accepted = target.content_types.join(", ");

    let mut properties = Map::new();
    properties.insert("message_id".into(), json!({
        "type": "string",
        "format": "uuid",
        "description": "The event id, also the `event_id` of the HTTP 2xx: a UUIDv7, or with an `Idempotency-Key` a UUIDv5 of route, method, path, subject and key, so a retry carries the same id. Consumers deduplicate on it.",
    }));
    properties.insert("correlation_id".into(), json!({
        "type": "string",
        "minLength": 1,
        "maxLength": 255,
        "description": "The request's `X-Request-Id`: the client's (1–255 visible ASCII characters), or the UUIDv7 the gateway generated and answered with.",
    }));
    properties.insert(
        "content_type".into(),
        match &target.properties.content_type {
            Some(fixed) => json!({ "const": fixed, "description": "Fixed by the route (`publish.properties.content_type`)." }),
            None => json!({
                "type": "string",
                "maxLength": 255,
                "description": format!("The request's `Content-Type` as sent, parameters included; its media type is one of: {accepted}.{}", if may_lack_type { " Absent for a DELETE sent without a body and without `Content-Type`." } else { "" }),
            }),
        },
    );
    properties.insert(
        "type".into(),
        match &target.properties.message_type {
            Some(fixed) => json!({ "const": fixed, "description": "Fixed by the route (`publish.properties.type`)." }),
            None if target.routing_key.params().next().is_none() => json!({
                "const": target.routing_key.to_string(),
                "description": "The routing key (no `publish.properties.type`).",
            }),
            None => json!({
                "type": "string",
                "description": format!("The rendered routing key (`{}` with the path parameters filled in).", target.routing_key),
            }),
        },
    );
    properties.insert(
        "timestamp".into(),
        json!({ "type": "integer", "minimum": 0, "description": "When the gateway published it, seconds since the Unix epoch." }),
    );
    properties.insert("app_id".into(), json!({ "const": APP_ID }));
    properties.insert(
        "delivery_mode".into(),
        json!({ "const": 2, "description": "Persistent." }),
    );
    if let Some(priority) = target.properties.priority {
        properties.insert(
            "priority".into(),
            json!({ "const": priority, "description": "Fixed by the route (`publish.properties.priority`)." }),
        );
    }
    let mut required_properties = vec![
        "message_id",
        "correlation_id",
        "type",
        "timestamp",
        "app_id",
        "delivery_mode",
    ];
    if !may_lack_type {
        required_properties.push("content_type");
    }
    if target.properties.priority.is_some() {
        required_properties.push("priority");
    }

    let mut message = json!({
        "name": route.name,
        "title": format!("{} event", route.name),
        "summary": format!("Published for {} (route `{}`).", request_line(route), route.name),
        "description": "AMQP message properties are listed in `x-amqp-properties` (a JSON Schema of the property table); the application headers in `headers`. Client request headers are never copied wholesale: only those named here reach the message.",
        "correlationId": {
            "description": "The AMQP `correlation_id` property: the HTTP request's `X-Request-Id`.",
            "location": "$message.header#/correlation_id",
        },
        "headers": headers(config, route, target),
        "payload": payload(target, schema_id),
        "bindings": { "amqp": { "bindingVersion": BINDING_VERSION } },
        "x-amqp-properties": {
            "type": "object",
            "properties": properties,
            "required": required_properties,
        },
    });
    if let Some(fixed) = &target.properties.message_type {
        message["bindings"]["amqp"]["messageType"] = json!(fixed);
    }
    let content_type =
        target
            .properties
            .content_type
            .as_ref()
            .or(match target.content_types.as_slice() {
                [only] => Some(only),
                _ => None,
            });
    if let Some(content_type) = content_type {
        message["contentType"] = json!(content_type);
    }
    message
}

/// The application headers (`basic.properties.headers`), all AMQP long strings.
fn headers(config: &Config, route: &Route, target: &PublishTarget) -> Value {
    let mut properties = Map::new();
    let mut required = Vec::new();
    let methods: Vec<&str> = route.methods.iter().map(http::Method::as_str).collect();
    properties.insert(
        "x-http-method".into(),
        json!({ "type": "string", "enum": methods, "description": "The HTTP method of the request." }),
    );
    required.push("x-http-method".to_owned());
    properties.insert(
        "x-http-path".into(),
        json!({ "type": "string", "description": format!("The request path as sent (percent-encoded, without the query), matching `{}`.", route.path) }),
    );
    required.push("x-http-path".to_owned());
    for param in &route.path_params {
        let name = format!("{PARAM_HEADER_PREFIX}{param}");
        properties.insert(
            name.clone(),
            json!({
                "type": "string",
                "minLength": 1,
                "maxLength": 255,
                "pattern": "^[^.*#]+$",
                "description": format!("The path parameter `{{{param}}}`, percent-decoded: {WORD_RULE}."),
            }),
        );
        required.push(name);
    }
    properties.insert(
        "traceparent".into(),
        json!({ "type": "string", "minLength": 1, "maxLength": 255, "description": "The request's W3C `traceparent`, when it sent one (1–255 visible ASCII characters)." }),
    );
    for (name, value) in &target.headers {
        properties.insert(
            name.clone(),
            json!({ "const": value, "description": "Fixed by the route (`publish.headers`)." }),
        );
        required.push(name.clone());
    }
    if let Some(ce) = &target.cloudevents {
        // CloudEvents binary mode (AMQP binding 1.0.2): the attributes as application headers;
        // `datacontenttype` is the AMQP `content_type`.
        let event_type = match &ce.event_type {
            Some(t) => {
                json!({ "const": t, "description": "CloudEvents `type` (`publish.cloudevents.type`)." })
            }
            None => {
                json!({ "type": "string", "description": "CloudEvents `type`: the message's AMQP `type`." })
            }
        };
        for (name, schema) in [
            (
                "specversion",
                json!({ "const": "1.0", "description": "CloudEvents `specversion`." }),
            ),
            (
                "id",
                json!({ "type": "string", "format": "uuid", "description": "CloudEvents `id`: the event id (= `message_id`)." }),
            ),
            (
                "source",
                json!({ "const": ce.source, "description": "CloudEvents `source`." }),
            ),
            ("type", event_type),
            (
                "subject",
                json!({ "type": "string", "description": "CloudEvents `subject`: the request path." }),
            ),
            (
                "time",
                json!({ "type": "string", "format": "date-time", "description": "CloudEvents `time`: the publish time (RFC 3339, milliseconds)." }),
            ),
        ] {
            let name = format!("{}{name}", CloudEventsConfig::PREFIX);
            required.push(name.clone());
            properties.insert(name, schema);
        }
    }
    if matches!(route.auth, RouteAuth::Required(_)) {
        for (name, schema, always) in identity_headers(config) {
            if always {
                required.push(name.clone());
            }
            properties.insert(name, schema);
        }
    }
    json!({
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": false,
    })
}

/// The body as published: the route's schema, or what its content types allow.
fn payload(target: &PublishTarget, schema_id: Option<&str>) -> Value {
    if let Some(id) = schema_id {
        // Every body was checked against it (422 otherwise) before it was published.
        return json!({ "$ref": schema_pointer(id) });
    }
    let all_json = target
        .content_types
        .iter()
        .all(|t| crate::config::is_json_media_type(t));
    let description = if all_json {
        format!(
            "Any JSON document ({}), as the client sent it (gzip decoded); checked for syntax and nesting depth only.",
            target.content_types.join(", ")
        )
    } else {
        format!(
            "The request body as sent (gzip decoded), unchanged; media types: {}. JSON ones are checked for syntax and nesting depth.",
            target.content_types.join(", ")
        )
    };
    json!({ "description": description })
}
