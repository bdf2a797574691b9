//! The published contract: an AsyncAPI 3.0 document of the events the gateway publishes
//! ([`asyncapi`]) and an OpenAPI 3.1 document of its HTTP routes ([`openapi`]), both generated
//! from a validated [`Config`].
//!
//! This module owns what the two documents share: the [`Format`] choice, [`Contract`] (both
//! documents for one config, what the admin listener serves), stable identifiers for
//! components, the route schemas embedded as components, and the broker servers without
//! credentials.
//!
//! Everything here is a pure function of the config: no clock, no environment, no I/O. Maps are
//! `serde_json::Map`, a `BTreeMap` in this build, so keys come out sorted and a regenerated
//! document diffs cleanly against the checked-in copy (`docs/asyncapi.json`,
//! `docs/openapi.json`). Lists follow config order.

pub mod asyncapi;
pub mod openapi;

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

use crate::config::{Config, Route};
use crate::schema::Schema;

/// `info.version` of both documents: the crate's version, so a document names the build whose
/// behaviour it describes.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Which document to generate (`amqp-gateway spec --format ...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// AsyncAPI 3.0.0 with the AMQP bindings (0.3.0): the events.
    Asyncapi,
    /// OpenAPI 3.1.0: the HTTP routes.
    Openapi,
}

/// The document of `format` for `config`.
pub fn document(config: &Config, format: Format) -> Value {
    match format {
        Format::Asyncapi => asyncapi::document(config),
        Format::Openapi => openapi::document(config),
    }
}

/// `document` as pretty-printed JSON with a final newline: the form checked in under `docs/`.
pub fn to_pretty_json(document: &Value) -> String {
    // Serialising a `Value` cannot fail (string keys only); the fallback is never taken.
    let mut text = serde_json::to_string_pretty(document).unwrap_or_default();
    text.push('\n');
    text
}

/// Both documents of one config, built once per (re)load so the admin endpoints only serve
/// them, and a document always matches the config the public listener is serving.
#[derive(Debug, Clone)]
pub struct Contract {
    /// The AsyncAPI document.
    pub asyncapi: Value,
    /// The OpenAPI document.
    pub openapi: Value,
}

impl Contract {
    /// Generates both documents for `config`.
    pub fn new(config: &Config) -> Self {
        Self {
            asyncapi: asyncapi::document(config),
            openapi: openapi::document(config),
        }
    }
}

/// Hands out component keys and operation ids: `[A-Za-z0-9_.-]` only (what AsyncAPI allows
/// for component keys, and what needs no JSON-pointer escaping in a `$ref`), unique within one
/// document. Route names may hold any printable character, so they are sanitised, and a name
/// that collides after sanitising gets `-2`, `-3`, … in config order (deterministic).
#[derive(Debug, Default)]
pub(crate) struct Ids {
    taken: BTreeSet<String>,
}

impl Ids {
    /// A fresh id derived from `name`.
    pub(crate) fn take(&mut self, name: &str) -> String {
        let mut base: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        if base.is_empty() {
            base.push('_');
        }
        let mut id = base.clone();
        let mut n = 1;
        while !self.taken.insert(id.clone()) {
            n += 1;
            id = format!("{base}-{n}");
        }
        id
    }
}

/// Schema components the OpenAPI document defines itself (the problem body, the 2xx body of a
/// publish).
pub(crate) const RESERVED_SCHEMAS: &[&str] = &["Problem", "Accepted"];

/// Where a route's schema lives in both documents.
pub(crate) fn schema_pointer(id: &str) -> String {
    format!("#/components/schemas/{id}")
}

/// A route schema, ready to sit at `#/components/schemas/{id}`: local references (`#/$defs/…`,
/// the only kind the gateway accepts, see [`crate::schema`]) are rewritten to point into the
/// component, since `#` now means the whole contract document rather than the schema file. A
/// top-level `$id` goes: it would make those references resolve against the schema's own URI
/// again, and no validator of the contract could fetch it. Values of keywords that hold data
/// rather than schemas (`const`, `enum`, `default`, `examples`) are left as written.
pub(crate) fn embedded_schema(schema: &Schema, id: &str) -> Value {
    let mut document = schema.document().clone();
    let own_id = match &mut document {
        Value::Object(map) => match map.remove("$id") {
            Some(Value::String(own)) => Some(own),
            _ => None,
        },
        _ => None,
    };
    rewrite_refs(&mut document, &schema_pointer(id), own_id.as_deref());
    document
}

fn rewrite_refs(value: &mut Value, base: &str, own_id: Option<&str>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map.iter_mut() {
                match (key.as_str(), child) {
                    ("$ref", Value::String(target)) => {
                        let local = own_id
                            .and_then(|own| target.strip_prefix(own))
                            .unwrap_or(target.as_str());
                        if let Some(fragment) = local.strip_prefix('#') {
                            *target = format!("{base}{fragment}");
                        }
                    }
                    ("const" | "enum" | "default" | "examples", _) => {}
                    (_, child) => rewrite_refs(child, base, own_id),
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                rewrite_refs(item, base, own_id);
            }
        }
        _ => {}
    }
}

/// One broker URL as published: never its user or password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BrokerServer {
    /// `amqp` or `amqps`.
    pub(crate) protocol: &'static str,
    /// `host:port` (IPv6 literals in brackets).
    pub(crate) host: String,
    /// The virtual host, decoded (`/` for `%2f`).
    pub(crate) vhost: String,
}

/// The broker servers of `[amqp] url`/`urls`, in config order. Only scheme, host, port and
/// vhost are read from the parsed URL, so credentials cannot reach a document (the same rule
/// as `BrokerUri`'s masked `Debug`, stricter: not even the user name is published).
pub(crate) fn broker_servers(config: &Config) -> Vec<BrokerServer> {
    config
        .amqp
        .urls
        .iter()
        .map(|uri| BrokerServer {
            protocol: if uri.is_tls() { "amqps" } else { "amqp" },
            host: uri.authority(),
            vhost: uri.vhost().to_owned(),
        })
        .collect()
}

/// The headers every identity carries on an authenticated route: `x-auth-sub` and one
/// `x-auth-<name>` per `auth.propagate_claims` entry, as JSON Schema properties (names as the
/// gateway writes them, lower case) and whether each is always present.
pub(crate) fn identity_headers(config: &Config) -> Vec<(String, Value, bool)> {
    let mut headers = vec![(
        crate::auth::SUBJECT_HEADER.to_owned(),
        json!({
            "type": "string",
            "minLength": 1,
            "maxLength": 1024,
            "description": "The verified token's `sub` claim. Set by the gateway only; a client-sent copy is always removed.",
        }),
        true,
    )];
    if let Some(auth) = &config.auth {
        for propagated in auth.propagate_claims.values() {
            let claim = &propagated.claim;
            headers.push((
                propagated.header.as_str().to_owned(),
                json!({
                    "type": "string",
                    "maxLength": 1024,
                    "description": format!("The verified token's `{claim}` claim (`auth.propagate_claims`); absent when the token does not carry it."),
                }),
                false,
            ));
        }
    }
    headers
}

/// The route schemas as components, and per route (config order) the component id of its
/// schema, if it has one. Ids are the same in both documents, so `#/components/schemas/{id}`
/// names the same schema in each; [`RESERVED_SCHEMAS`] are never taken by a route.
pub(crate) fn schema_components(config: &Config) -> (Map<String, Value>, Vec<Option<String>>) {
    let mut ids = Ids::default();
    for name in RESERVED_SCHEMAS {
        ids.take(name);
    }
    let mut components = Map::new();
    let per_route = config
        .routes
        .iter()
        .map(|route| {
            let schema = publish_schema(route)?;
            let id = ids.take(&route.name);
            components.insert(id.clone(), embedded_schema(schema, &id));
            Some(id)
        })
        .collect();
    (components, per_route)
}

fn publish_schema(route: &Route) -> Option<&Schema> {
    match &route.action {
        crate::config::RouteAction::Publish(target) => target.schema.as_deref(),
        crate::config::RouteAction::Proxy(_) => None,
    }
}

/// A duration as config writes it (`1m`, `30s`): `humantime`'s form.
pub(crate) fn duration(d: std::time::Duration) -> String {
    humantime::format_duration(d).to_string()
}

#[cfg(test)]
mod tests;
