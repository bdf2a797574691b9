//! The write handler: an HTTP request becomes a confirmed AMQP event.
//!
//! Order matters and follows the contract: everything that can be rejected is checked before
//! anything is published (the path, size, encoding, media type, JSON depth and syntax, the
//! route's schema, path parameters, idempotency key), and the response is written only after
//! the broker's confirm.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{FromRequestParts, RawPathParams, Request};
use axum::response::Response;
use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderName, LOCATION};
use http::{HeaderMap, HeaderValue, Method};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use uuid::Uuid;

use crate::amqp::{Event, PublishError};
use crate::auth::Identity;
use crate::config::{PARAM_HEADER_PREFIX, PublishTarget, is_json_media_type};
use crate::error::GatewayError;
use crate::idempotency::KeyUse;
use crate::state::AppState;
use crate::telemetry::REQUEST_ID;

use super::{body, json};

/// Namespace for `Idempotency-Key` → event id (UUIDv5), fixed forever: changing it (or the
/// name's layout, see [`event_id`]) changes the ids of retried requests across an upgrade.
const IDEMPOTENCY_NAMESPACE: Uuid = Uuid::from_u128(0x6f1c_2c4e_8a57_4d0b_9b53_1d2e_7c41_a9f0);

/// Longest `Idempotency-Key` we accept.
const MAX_IDEMPOTENCY_KEY: usize = 255;
/// Longest `X-Request-Id` / `traceparent` copied into message properties.
const MAX_TRACE_ID: usize = 255;
/// Longest `Content-Type`: the AMQP `content_type` property is a short string.
const MAX_CONTENT_TYPE: usize = 255;
/// Longest path parameter (a routing-key word, an `x-param-*` value).
const MAX_PARAM: usize = 255;

/// Request headers read on every write, as pre-parsed names (a `&str` name is parsed and
/// hashed anew on every lookup).
const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// Characters kept as-is when a path parameter is put back into a `Location` path segment.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// A write route as the handler needs it.
#[derive(Debug)]
pub(crate) struct WriteRoute {
    /// Route name (logs, idempotency namespace).
    pub name: Arc<str>,
    /// What to publish where.
    pub target: PublishTarget,
}

/// The body of a 2xx, `{"event_id":"<uuid>","status":"accepted"}`, exactly as serde_json
/// would write it (a hyphenated UUID needs no escaping), without a serializer per request.
fn accepted_body(event_id: &str) -> Bytes {
    const HEAD: &str = r#"{"event_id":""#;
    const TAIL: &str = r#"","status":"accepted"}"#;
    let mut body = Vec::with_capacity(HEAD.len() + event_id.len() + TAIL.len());
    body.extend_from_slice(HEAD.as_bytes());
    body.extend_from_slice(event_id.as_bytes());
    body.extend_from_slice(TAIL.as_bytes());
    Bytes::from(body)
}

/// Handles one write request.
pub(crate) async fn handle(
    state: AppState,
    route: Arc<WriteRoute>,
    request: Request,
) -> Result<Response, GatewayError> {
    let (mut parts, body) = request.into_parts();
    // The path goes to consumers as `x-http-path` and selects what the cache invalidates.
    super::path::check(parts.uri.path())?;
    let identity = parts.extensions.remove::<Identity>();
    let params = RawPathParams::from_request_parts(&mut parts, &())
        .await
        .map_err(|_| GatewayError::BadRequest("path parameters must be valid UTF-8".into()))?;
    let params: Vec<(&str, &str)> = params.iter().collect();
    let headers = &parts.headers;
    let target = &route.target;

    let body = body::read(headers, body, state.max_body_bytes, state.body_read_timeout).await?;
    let (content_type, is_json) = check_content_type(headers, &parts.method, &body, target)?;
    if is_json {
        json::check(&body, state.max_json_depth, target.schema.as_deref())?;
    }
    let routing_key = render_routing_key(target, &params)?;

    let scope = KeyScope {
        route: &route.name,
        method: parts.method.as_str(),
        path: parts.uri.path(),
        subject: identity.as_ref().map_or("", |i| i.subject.as_str()),
    };
    let (event_id, keyed) = event_id(headers, &scope)?;
    let correlation_id = optional_trace_header(headers, &REQUEST_ID)?;
    let traceparent = optional_trace_header(headers, &TRACEPARENT)?;
    // Last check before publishing, so a request refused for anything else does not bind the
    // key to its body.
    if keyed && state.idempotency.check(event_id, content_type, &body) == KeyUse::Reused {
        return Err(GatewayError::IdempotencyKeyReused);
    }

    let mut event_id_buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let event_id_text: &str = event_id.hyphenated().encode_lower(&mut event_id_buf);
    let message_type = target
        .properties
        .message_type
        .as_deref()
        .unwrap_or(&routing_key);
    let now = SystemTime::now();
    let param_headers: Vec<(String, &str)> = params
        .iter()
        .map(|(k, v)| (format!("{PARAM_HEADER_PREFIX}{k}"), *v))
        .collect();
    let mut amqp_headers: Vec<(&str, &str)> =
        Vec::with_capacity(9 + param_headers.len() + target.headers.len());
    amqp_headers.push(("x-http-method", parts.method.as_str()));
    amqp_headers.push(("x-http-path", parts.uri.path()));
    amqp_headers.extend(param_headers.iter().map(|(k, v)| (k.as_str(), *v)));
    if let Some(tp) = traceparent {
        amqp_headers.push(("traceparent", tp));
    }
    amqp_headers.extend(target.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    // The caller, from the verified token only (the auth layer put it there; public routes
    // have none). Static route headers cannot use `x-auth-*` (config validation).
    if let Some(identity) = &identity {
        amqp_headers.extend(identity.headers());
    }
    // CloudEvents binary mode: attributes as strings, as the binding's receivers accept them
    // (`time` as RFC 3339: an AMQP 0-9-1 timestamp has whole seconds only).
    let time;
    if let Some(ce) = &target.cloudevents {
        time = humantime::format_rfc3339_millis(now).to_string();
        amqp_headers.extend([
            ("cloudEvents_specversion", "1.0"),
            ("cloudEvents_id", event_id_text),
            ("cloudEvents_source", ce.source.as_str()),
            (
                "cloudEvents_type",
                ce.event_type.as_deref().unwrap_or(message_type),
            ),
            ("cloudEvents_subject", parts.uri.path()),
            ("cloudEvents_time", time.as_str()),
        ]);
    }

    let event = Event {
        exchange: &target.exchange,
        routing_key: &routing_key,
        body: &body,
        message_id: event_id_text,
        correlation_id,
        content_type: target.properties.content_type.as_deref().or(content_type),
        message_type,
        priority: target.properties.priority,
        timestamp: now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        headers: amqp_headers,
    };
    let started = std::time::Instant::now();
    let published = state.channels.publish(&event).await;
    state.metrics.publish(
        &route.name,
        published
            .as_ref()
            .map_or_else(PublishError::label, |()| "acked"),
        published.is_ok().then(|| started.elapsed()),
    );
    published.map_err(|e| publish_error(e, &state, &route.name, event_id_text))?;
    let location = target
        .location
        .as_ref()
        .map(|t| {
            t.render(|name| {
                if name == "event_id" {
                    return Ok(Cow::Borrowed(event_id_text));
                }
                let value = params
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map_or("", |(_, v)| v);
                Ok::<_, GatewayError>(Cow::Owned(utf8_percent_encode(value, SEGMENT).to_string()))
            })
        })
        .transpose()?;
    // After the confirm, before the answer: see `invalidate`.
    let related: &[&str] = match &location {
        Some(location) => &[location.as_str()],
        None => &[],
    };
    super::invalidate::written(&state, parts.uri.path(), related).await;
    let mut response = Response::new(Body::from(accepted_body(event_id_text)));
    *response.status_mut() = target.status;
    // What `axum::Json` sets.
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some(location) = location {
        let value = HeaderValue::try_from(location).map_err(|_| GatewayError::Internal)?;
        response.headers_mut().insert(LOCATION, value);
    }
    Ok(response)
}

fn publish_error(e: PublishError, state: &AppState, route: &str, event_id: &str) -> GatewayError {
    let retry_after = state.retry_after;
    match e {
        PublishError::Unavailable => GatewayError::BrokerUnavailable { retry_after },
        PublishError::Blocked => GatewayError::BrokerBlocked { retry_after },
        PublishError::Unroutable => GatewayError::NoRoute { retry_after },
        PublishError::Nacked => GatewayError::Nacked { retry_after },
        PublishError::Unknown(why) => {
            // Logged with the id so an operator can reconcile what consumers later see.
            tracing::warn!(route, event_id, why, "Publish outcome unknown.");
            GatewayError::OutcomeUnknown
        }
        PublishError::PropertiesTooLarge => GatewayError::HeadersTooLarge,
        PublishError::Internal(why) => {
            tracing::error!(route, event_id, why, "Publish failed on our side.");
            GatewayError::Internal
        }
    }
}

/// Checks `Content-Type` against the route. Returns the content type to put on the message
/// and whether the body is JSON (to be checked by [`json::check`]).
fn check_content_type<'h>(
    headers: &'h HeaderMap,
    method: &Method,
    body: &[u8],
    target: &PublishTarget,
) -> Result<(Option<&'h str>, bool), GatewayError> {
    let raw = headers.get(CONTENT_TYPE);
    // It becomes the AMQP `content_type`, a short string (at most 255 bytes): a longer one
    // could never be published, so it is refused as a media type, before anything else.
    if raw.is_some_and(|v| v.len() > MAX_CONTENT_TYPE) {
        return Err(GatewayError::UnsupportedMediaType(format!(
            "Content-Type must be at most {MAX_CONTENT_TYPE} bytes"
        )));
    }
    let header = raw.and_then(|v| v.to_str().ok());
    let Some(full) = header else {
        // A DELETE usually has no body and so no type; anything else must say what it sends.
        // With a schema there is always a body to check: no exception.
        if body.is_empty() && method == Method::DELETE && target.schema.is_none() {
            return Ok((None, false));
        }
        return Err(GatewayError::UnsupportedMediaType(format!(
            "Content-Type is required; this route accepts {}",
            target.content_types.join(", ")
        )));
    };
    // The route's types are lower-case (config validation): compare without allocating.
    let essence = full.split(';').next().unwrap_or("").trim();
    if !target
        .content_types
        .iter()
        .any(|t| t.eq_ignore_ascii_case(essence))
    {
        return Err(GatewayError::UnsupportedMediaType(format!(
            "Content-Type `{}` is not accepted; this route accepts {}",
            essence.to_ascii_lowercase(),
            target.content_types.join(", ")
        )));
    }
    Ok((Some(full), is_json_media_type(essence)))
}

/// Checks that a path parameter is one routing-key word: non-empty, at most 255 bytes (an
/// AMQP short string), without `.`, `*`, `#` (topic syntax) or control characters.
fn check_word(name: &str, value: &str) -> Result<(), GatewayError> {
    if value.is_empty()
        || value.len() > MAX_PARAM
        || value
            .chars()
            .any(|c| matches!(c, '.' | '*' | '#') || c.is_control())
    {
        return Err(GatewayError::BadRequest(format!(
            "path parameter `{name}` must be 1–{MAX_PARAM} bytes and must not contain `.`, `*`, `#` or control characters"
        )));
    }
    Ok(())
}

/// Checks the path parameters and renders the routing key. Every parameter must be one
/// routing-key word, used in the key or not: each is also copied into an `x-param-*` header,
/// which consumers may route or look things up by.
fn render_routing_key(
    target: &PublishTarget,
    params: &[(&str, &str)],
) -> Result<String, GatewayError> {
    for (name, value) in params {
        check_word(name, value)?;
    }
    // A placeholder is always a path parameter (config validation): checked above.
    let key = target.routing_key.render(|name| {
        let value = params
            .iter()
            .find(|(k, _)| *k == name)
            .map_or("", |(_, v)| v);
        Ok::<_, GatewayError>(Cow::Borrowed(value))
    })?;
    if key.len() > 255 {
        return Err(GatewayError::BadRequest(
            "the routing key built from the path exceeds 255 bytes".into(),
        ));
    }
    Ok(key)
}

/// What an `Idempotency-Key` is scoped to: the same key from another caller, on another path
/// or with another method is another request (the draft leaves uniqueness to the client, and
/// clients of different users cannot coordinate).
#[derive(Debug, Clone, Copy)]
struct KeyScope<'a> {
    route: &'a str,
    method: &'a str,
    /// The request path as sent (before percent-decoding).
    path: &'a str,
    /// The verified `sub`; empty on public routes (a verified subject is never empty).
    subject: &'a str,
}

/// UUIDv7 by default; with `Idempotency-Key`, a UUIDv5 of the key and its [`KeyScope`], so a
/// retry of the same request carries the same `message_id` for consumers to deduplicate on.
/// Returns whether the id came from a key.
///
/// The UUIDv5 name is each of route, method, path, subject and key as an 8-byte big-endian
/// length followed by the bytes: no field can borrow bytes from its neighbour
/// (route `a` + path `/bc` never equals route `a/b` + path `c`).
fn event_id(headers: &HeaderMap, scope: &KeyScope<'_>) -> Result<(Uuid, bool), GatewayError> {
    let mut keys = headers.get_all(&IDEMPOTENCY_KEY).iter();
    let Some(key) = keys.next() else {
        return Ok((Uuid::now_v7(), false));
    };
    let bad = || {
        GatewayError::BadRequest(format!(
            "Idempotency-Key must be one header of 1–{MAX_IDEMPOTENCY_KEY} visible ASCII characters"
        ))
    };
    if keys.next().is_some() {
        return Err(bad());
    }
    let key = key.as_bytes();
    if key.is_empty()
        || key.len() > MAX_IDEMPOTENCY_KEY
        || !key.iter().all(|b| b.is_ascii_graphic() || *b == b' ')
    {
        return Err(bad());
    }
    let fields: [&[u8]; 5] = [
        scope.route.as_bytes(),
        scope.method.as_bytes(),
        scope.path.as_bytes(),
        scope.subject.as_bytes(),
        key,
    ];
    let mut name = Vec::with_capacity(fields.iter().map(|f| 8 + f.len()).sum());
    for field in fields {
        name.extend_from_slice(&(field.len() as u64).to_be_bytes());
        name.extend_from_slice(field);
    }
    Ok((Uuid::new_v5(&IDEMPOTENCY_NAMESPACE, &name), true))
}

/// A tracing header copied into the message, if present and sane.
fn optional_trace_header<'h>(
    headers: &'h HeaderMap,
    name: &HeaderName,
) -> Result<Option<&'h str>, GatewayError> {
    let Some(value) = headers.get(name) else {
        return Ok(None);
    };
    match value.to_str() {
        Ok(v)
            if !v.is_empty()
                && v.len() <= MAX_TRACE_ID
                && v.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            Ok(Some(v))
        }
        _ => Err(GatewayError::BadRequest(format!(
            "{name} must be 1–{MAX_TRACE_ID} visible ASCII characters"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::template::Template;

    fn target(rk: &str) -> PublishTarget {
        PublishTarget {
            exchange: "x".into(),
            routing_key: Template::parse(rk).unwrap(),
            status: http::StatusCode::ACCEPTED,
            location: None,
            content_types: vec!["application/json".into()],
            properties: Default::default(),
            headers: vec![],
            schema: None,
            cloudevents: None,
        }
    }

    #[test]
    fn routing_key_rejects_injection() {
        let t = target("user.{id}.updated");
        assert_eq!(
            render_routing_key(&t, &[("id", "42")]).unwrap(),
            "user.42.updated"
        );
        for bad in ["4.2", "*", "#", "a\u{0}b", "a\nb", ""] {
            assert!(
                matches!(
                    render_routing_key(&t, &[("id", bad)]),
                    Err(GatewayError::BadRequest(_))
                ),
                "{bad:?} must be rejected"
            );
        }
        let long = "a".repeat(250);
        assert!(render_routing_key(&t, &[("id", &long)]).is_err());
    }

    fn scope<'a>(route: &'a str, method: &'a str, path: &'a str, subject: &'a str) -> KeyScope<'a> {
        KeyScope {
            route,
            method,
            path,
            subject,
        }
    }

    fn keyed(h: &HeaderMap, s: KeyScope<'_>) -> Uuid {
        let (id, keyed) = event_id(h, &s).unwrap();
        assert!(keyed);
        assert_eq!(id.get_version_num(), 5);
        id
    }

    #[test]
    fn every_parameter_copied_into_a_header_is_one_word() {
        for ok in ["42", "a-b_c~d", "caf\u{e9}", "a/b", &"a".repeat(255)] {
            assert!(check_word("note", ok).is_ok(), "{ok:?}");
        }
        for bad in [
            "",
            "a.b",
            "*",
            "a#",
            "a\u{0}b",
            "a\rb",
            "\u{7f}",
            &"a".repeat(256),
        ] {
            assert!(
                matches!(check_word("note", bad), Err(GatewayError::BadRequest(m)) if m.contains("`note`")),
                "{bad:?} must be rejected"
            );
        }
    }

    #[test]
    fn an_overlong_content_type_is_415_before_anything_else() {
        let t = target("k");
        let mut h = HeaderMap::new();
        let long = format!("application/json; x={}", "a".repeat(255 - 20));
        assert_eq!(long.len(), 255);
        h.insert(CONTENT_TYPE, HeaderValue::from_str(&long).unwrap());
        let (ct, json) = check_content_type(&h, &Method::POST, b"{}", &t).unwrap();
        assert_eq!((ct, json), (Some(long.as_str()), true));
        let longer = format!("{long}a");
        h.insert(CONTENT_TYPE, HeaderValue::from_str(&longer).unwrap());
        assert!(matches!(
            check_content_type(&h, &Method::POST, b"{}", &t),
            Err(GatewayError::UnsupportedMediaType(m)) if m.contains("255")
        ));
        // Even where the media type alone would also be refused: the length is checked first.
        let other = format!("text/plain; x={}", "a".repeat(300));
        h.insert(CONTENT_TYPE, HeaderValue::from_str(&other).unwrap());
        assert!(matches!(
            check_content_type(&h, &Method::POST, b"{}", &t),
            Err(GatewayError::UnsupportedMediaType(m)) if m.contains("at most 255")
        ));
    }

    #[test]
    fn idempotency_key_is_deterministic_per_route_method_path_and_subject() {
        let mut h = HeaderMap::new();
        h.insert("idempotency-key", HeaderValue::from_static("abc"));
        let a = keyed(&h, scope("r1", "PUT", "/u/1", "alice"));
        assert_eq!(a, keyed(&h, scope("r1", "PUT", "/u/1", "alice")));
        for other in [
            scope("r2", "PUT", "/u/1", "alice"),
            scope("r1", "PATCH", "/u/1", "alice"),
            scope("r1", "PUT", "/u/2", "alice"),
            scope("r1", "PUT", "/u/1", "bob"),
            scope("r1", "PUT", "/u/1", ""),
        ] {
            assert_ne!(a, keyed(&h, other), "{other:?}");
        }
        // Length-prefixed fields: shifting bytes between neighbours is another name.
        assert_ne!(
            keyed(&h, scope("r", "PUT", "/ab", "")),
            keyed(&h, scope("r", "PUT", "/a", "b"))
        );
        h.append("idempotency-key", HeaderValue::from_static("def"));
        assert!(event_id(&h, &scope("r1", "PUT", "/u/1", "alice")).is_err());
    }

    #[test]
    fn without_key_ids_are_v7_and_distinct() {
        let h = HeaderMap::new();
        let s = scope("r", "POST", "/", "");
        let (a, keyed) = event_id(&h, &s).unwrap();
        assert!(!keyed);
        assert_eq!(a.get_version_num(), 7);
        assert_ne!(a, event_id(&h, &s).unwrap().0);
    }

    mod fuzz {
        //! Routing-key templating under arbitrary path parameters.
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn accepted_keys_are_one_word_per_parameter(a in "\\PC{0,80}", b in "\\PC{0,200}") {
                let t = target("order.{a}.x.{b}");
                if let Ok(key) = render_routing_key(&t, &[("a", &a), ("b", &b)]) {
                    prop_assert!(key.len() <= 255);
                    prop_assert_eq!(key.split('.').count(), 4, "{}", key);
                    prop_assert!(!key.contains(['*', '#']));
                    prop_assert!(!key.chars().any(char::is_control));
                    prop_assert_eq!(key, format!("order.{a}.x.{b}"));
                }
            }

            #[test]
            fn idempotency_keys_never_panic(key in proptest::collection::vec(any::<u8>(), 0..300)) {
                let mut h = HeaderMap::new();
                if let Ok(v) = HeaderValue::from_bytes(&key) {
                    h.insert("idempotency-key", v);
                }
                let _ = event_id(&h, &scope("r", "POST", "/", ""));
            }
        }
    }
}
