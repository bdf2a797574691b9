//! [`GatewayError`]: every way a request can fail, and the one place that turns it into a
//! response.
//!
//! Status follows blame: the client's mistakes are 4xx, the broker's or an upstream's are
//! 502/503/504, our own bugs are 500. Bodies are RFC 9457 `application/problem+json` with a
//! stable `type` per failure; internal detail (broker error text, IO errors) is logged where it
//! happens and never put in a body.

use std::time::Duration;

use axum::Json;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use serde::Serialize;

use crate::schema::SchemaViolation;

/// Prefix of every problem `type` URI.
pub(crate) const PROBLEM_TYPE_PREFIX: &str = "urn:amqp-gateway:problem:";

/// A failed request, mapped to one status and problem type each.
#[derive(Debug, thiserror::Error)]
pub(crate) enum GatewayError {
    /// No route matches the path.
    #[error("no route matches this path")]
    NotFound,
    /// The path matches but the method does not.
    #[error("method not allowed; allowed: {}", allow.join(", "))]
    MethodNotAllowed {
        /// The methods the path does take, for the `Allow` header.
        allow: Vec<&'static str>,
    },
    /// The request body is over `server.max_body_bytes` (compressed or decoded).
    #[error("request body exceeds {limit} bytes")]
    PayloadTooLarge {
        /// The configured limit.
        limit: usize,
    },
    /// The request body did not arrive within `server.body_read_timeout`.
    #[error("the request body was not received in time")]
    RequestTimeout,
    /// `Content-Type` missing or not accepted by the route.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The event's headers and properties would not fit the broker's frame budget.
    #[error("the request maps to more AMQP header data than the broker accepts")]
    HeadersTooLarge,
    /// A malformed request: bad JSON, bad path parameter, bad header value.
    #[error("{0}")]
    BadRequest(String),
    /// Well-formed JSON that fails the route's schema: 422 with the violations (pointer and
    /// keyword, never values) in an `errors` member.
    #[error("the event does not match the route's schema; nothing was published")]
    InvalidEvent {
        /// The first [`crate::schema::MAX_VIOLATIONS`] violations.
        errors: Vec<SchemaViolation>,
        /// More violations exist than are listed.
        truncated: bool,
    },
    /// The `Idempotency-Key` was already used with another body (or content type) on this
    /// route, method, path and subject: nothing was published.
    #[error(
        "this Idempotency-Key was already used with a different request body; nothing was published"
    )]
    IdempotencyKeyReused,
    /// The broker is unreachable or no publishing channel is up: nothing was published.
    #[error("the message broker is unavailable")]
    BrokerUnavailable {
        /// Seconds for `Retry-After`.
        retry_after: Duration,
    },
    /// The broker connection is blocked by a resource alarm: nothing was published.
    #[error("the message broker is refusing publishes (resource alarm)")]
    BrokerBlocked {
        /// Seconds for `Retry-After`.
        retry_after: Duration,
    },
    /// The broker returned the message as unroutable: no queue is bound for it.
    #[error("no queue is bound for this event; nothing was accepted")]
    NoRoute {
        /// Seconds for `Retry-After`.
        retry_after: Duration,
    },
    /// The broker nacked the message: nothing was accepted.
    #[error("the message broker rejected the event; nothing was accepted")]
    Nacked {
        /// Seconds for `Retry-After`.
        retry_after: Duration,
    },
    /// No confirm within `confirm_timeout`, or the channel died after the publish was sent:
    /// the event may or may not be queued.
    #[error(
        "the broker did not confirm in time; the event may or may not have been accepted. Retry with the same Idempotency-Key"
    )]
    OutcomeUnknown,
    /// The upstream could not be reached or its answer was broken.
    #[error("the upstream service is unavailable")]
    BadGateway,
    /// The upstream did not answer within its timeout.
    #[error("the upstream service did not answer in time")]
    UpstreamTimeout,
    /// No bearer token (no `Authorization`, or another scheme): 401 `Bearer`.
    #[error(
        "a bearer token is required in the Authorization header (tokens in the URL are never accepted)"
    )]
    Unauthorized,
    /// `Authorization` misused, e.g. sent twice: 400 `Bearer error="invalid_request"`.
    #[error("send exactly one Authorization header with a bearer token")]
    InvalidAuthRequest,
    /// The token is malformed, badly signed, expired, not yet valid, for another issuer or
    /// audience, or from an unknown key: 401 `Bearer error="invalid_token"`. Which one is
    /// logged (reason code), never told.
    #[error("the bearer token is not valid for this service")]
    InvalidToken,
    /// A valid token without the route's roles or scopes: 403
    /// `Bearer error="insufficient_scope"`.
    #[error("the token does not grant the role or scope this route requires")]
    InsufficientScope {
        /// The route's scopes, space-separated, for the `scope` parameter (RFC 6750 §3).
        scope: Option<std::sync::Arc<str>>,
    },
    /// A rate limit of the route is exhausted for this caller: nothing was published or sent
    /// upstream.
    #[error(
        "too many requests: rate limit `{}` is exhausted; retry after the Retry-After delay",
        policy.name()
    )]
    TooManyRequests {
        /// Until the limit lets one request through again, for `Retry-After` and `RateLimit`.
        retry_after: Duration,
        /// The limit that refused, for `RateLimit-Policy` and `RateLimit`.
        policy: std::sync::Arc<crate::ratelimit::RatePolicy>,
    },
    /// The request names a host other than `server.public_host`.
    #[error("this gateway does not serve the requested host")]
    MisdirectedRequest,
    /// A bug on our side (never the client's or the broker's fault).
    #[error("internal error")]
    Internal,
}

impl GatewayError {
    /// The HTTP status for this error.
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::BadRequest(_) | Self::InvalidAuthRequest => StatusCode::BAD_REQUEST,
            Self::InvalidEvent { .. } | Self::IdempotencyKeyReused => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            Self::Unauthorized | Self::InvalidToken => StatusCode::UNAUTHORIZED,
            Self::InsufficientScope { .. } => StatusCode::FORBIDDEN,
            Self::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::BrokerUnavailable { .. }
            | Self::BrokerBlocked { .. }
            | Self::NoRoute { .. }
            | Self::Nacked { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::OutcomeUnknown | Self::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::BadGateway => StatusCode::BAD_GATEWAY,
            Self::MisdirectedRequest => StatusCode::MISDIRECTED_REQUEST,
            Self::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable machine-readable code, last part of the problem `type`.
    pub(crate) fn code(&self) -> &'static str {
        match self {
            Self::NotFound => "not-found",
            Self::MethodNotAllowed { .. } => "method-not-allowed",
            Self::PayloadTooLarge { .. } => "payload-too-large",
            Self::RequestTimeout => "request-timeout",
            Self::UnsupportedMediaType(_) => "unsupported-media-type",
            Self::BadRequest(_) => "bad-request",
            Self::InvalidEvent { .. } => "invalid-event",
            Self::IdempotencyKeyReused => "idempotency-key-reused",
            Self::Unauthorized => "unauthorized",
            Self::InvalidAuthRequest => "invalid-auth-request",
            Self::InvalidToken => "invalid-token",
            Self::InsufficientScope { .. } => "insufficient-scope",
            Self::HeadersTooLarge => "headers-too-large",
            Self::BrokerUnavailable { .. } => "broker-unavailable",
            Self::BrokerBlocked { .. } => "broker-blocked",
            Self::NoRoute { .. } => "no-route",
            Self::Nacked { .. } => "nacked",
            Self::OutcomeUnknown => "publish-outcome-unknown",
            Self::BadGateway => "bad-gateway",
            Self::UpstreamTimeout => "upstream-timeout",
            Self::MisdirectedRequest => "misdirected-request",
            Self::TooManyRequests { .. } => "rate-limited",
            Self::Internal => "internal",
        }
    }

    /// The `WWW-Authenticate` challenge (RFC 6750 §3), for auth failures.
    fn www_authenticate(&self) -> Option<HeaderValue> {
        match self {
            Self::Unauthorized => Some(HeaderValue::from_static("Bearer")),
            Self::InvalidAuthRequest => {
                Some(HeaderValue::from_static("Bearer error=\"invalid_request\""))
            }
            Self::InvalidToken => Some(HeaderValue::from_static("Bearer error=\"invalid_token\"")),
            Self::InsufficientScope { scope: None } => Some(HeaderValue::from_static(
                "Bearer error=\"insufficient_scope\"",
            )),
            // Scopes are validated at load (RFC 6749 scope-tokens: no `"`, `\\` or controls).
            Self::InsufficientScope { scope: Some(scope) } => HeaderValue::try_from(format!(
                "Bearer error=\"insufficient_scope\", scope=\"{scope}\""
            ))
            .ok(),
            _ => None,
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::BrokerUnavailable { retry_after }
            | Self::BrokerBlocked { retry_after }
            | Self::NoRoute { retry_after }
            | Self::Nacked { retry_after }
            | Self::TooManyRequests { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }
}

#[derive(Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'a str,
    status: u16,
    detail: String,
    /// `invalid-event` only: the violations, and whether more were left out.
    #[serde(skip_serializing_if = "Option::is_none")]
    errors: Option<&'a [SchemaViolation]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    truncated: Option<bool>,
}

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        let status = self.status();
        let problem = Problem {
            kind: format!("{PROBLEM_TYPE_PREFIX}{}", self.code()),
            title: status.canonical_reason().unwrap_or("Error"),
            status: status.as_u16(),
            detail: self.to_string(),
            errors: match &self {
                Self::InvalidEvent { errors, .. } => Some(errors),
                _ => None,
            },
            truncated: match &self {
                Self::InvalidEvent { truncated, .. } => Some(*truncated),
                _ => None,
            },
        };
        let mut response = (status, Json(problem)).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        // Errors are about this request only; no cache may keep them.
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(after) = self.retry_after() {
            let secs = crate::ratelimit::ceil_secs(after).max(1);
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Self::TooManyRequests {
            retry_after,
            policy,
        } = &self
        {
            // draft-ietf-httpapi-ratelimit-headers-10: the refusing policy, with nothing left
            // until the same whole seconds `Retry-After` names.
            headers.insert(crate::ratelimit::RATELIMIT_POLICY, policy.policy_header());
            if let Some(state) = policy.exhausted_header((*retry_after).max(Duration::from_secs(1)))
            {
                headers.insert(crate::ratelimit::RATELIMIT, state);
            }
        }
        if let Some(challenge) = self.www_authenticate() {
            headers.insert(header::WWW_AUTHENTICATE, challenge);
        }
        if let Self::MethodNotAllowed { allow } = &self
            && let Ok(v) = HeaderValue::from_str(&allow.join(", "))
        {
            headers.insert(header::ALLOW, v);
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn parts(e: GatewayError) -> (StatusCode, http::HeaderMap, serde_json::Value) {
        let r = e.into_response();
        let (p, body) = r.into_parts();
        let bytes = axum::body::to_bytes(body, 1 << 16).await.unwrap();
        (p.status, p.headers, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn broker_errors_are_503_with_retry_after() {
        let (status, headers, body) = parts(GatewayError::NoRoute {
            retry_after: Duration::from_millis(1500),
        })
        .await;
        assert_eq!(status, 503);
        assert_eq!(headers[header::RETRY_AFTER], "2");
        assert_eq!(headers[header::CONTENT_TYPE], "application/problem+json");
        assert_eq!(body["type"], "urn:amqp-gateway:problem:no-route");
        assert_eq!(body["status"], 503);
    }

    #[tokio::test]
    async fn unknown_outcome_is_504_and_says_so() {
        let (status, _, body) = parts(GatewayError::OutcomeUnknown).await;
        assert_eq!(status, 504);
        assert_eq!(
            body["type"],
            "urn:amqp-gateway:problem:publish-outcome-unknown"
        );
    }

    #[tokio::test]
    async fn auth_failures_carry_their_challenge_and_are_not_stored() {
        let cases = [
            (GatewayError::Unauthorized, 401, "Bearer", "unauthorized"),
            (
                GatewayError::InvalidToken,
                401,
                "Bearer error=\"invalid_token\"",
                "invalid-token",
            ),
            (
                GatewayError::InvalidAuthRequest,
                400,
                "Bearer error=\"invalid_request\"",
                "invalid-auth-request",
            ),
            (
                GatewayError::InsufficientScope {
                    scope: Some("users:write admin".into()),
                },
                403,
                "Bearer error=\"insufficient_scope\", scope=\"users:write admin\"",
                "insufficient-scope",
            ),
            (
                GatewayError::InsufficientScope { scope: None },
                403,
                "Bearer error=\"insufficient_scope\"",
                "insufficient-scope",
            ),
        ];
        for (error, status, challenge, code) in cases {
            let (s, headers, body) = parts(error).await;
            assert_eq!(s, status);
            assert_eq!(headers[header::WWW_AUTHENTICATE], challenge);
            assert_eq!(headers[header::CACHE_CONTROL], "no-store");
            assert_eq!(body["type"], format!("urn:amqp-gateway:problem:{code}"));
        }
    }

    #[tokio::test]
    async fn invalid_event_is_422_with_pointers_and_keywords() {
        let (status, headers, body) = parts(GatewayError::InvalidEvent {
            errors: vec![SchemaViolation {
                pointer: "/address/zip".into(),
                keyword: "pattern".into(),
            }],
            truncated: false,
        })
        .await;
        assert_eq!(status, 422);
        assert_eq!(headers[header::CONTENT_TYPE], "application/problem+json");
        assert_eq!(body["type"], "urn:amqp-gateway:problem:invalid-event");
        assert_eq!(
            body["errors"],
            serde_json::json!([{"pointer": "/address/zip", "keyword": "pattern"}])
        );
        assert_eq!(body["truncated"], false);
        // Other problems carry neither member.
        let (_, _, other) = parts(GatewayError::NotFound).await;
        assert!(other.get("errors").is_none() && other.get("truncated").is_none());
    }

    #[tokio::test]
    async fn too_many_requests_is_429_with_retry_after_and_ratelimit_fields() {
        let config = crate::config::RateLimitConfig {
            by: crate::config::RateLimitKey::Ip,
            limit: std::num::NonZeroU32::new(10).unwrap(),
            per: Duration::from_millis(1500),
            burst: std::num::NonZeroU32::new(10).unwrap(),
            policy: "ip".into(),
        };
        let policy = crate::ratelimit::test_policy(&config);
        for (wait, secs) in [
            (Duration::from_millis(1), "1"),
            (Duration::from_millis(2100), "3"),
        ] {
            let (status, headers, body) = parts(GatewayError::TooManyRequests {
                retry_after: wait,
                policy: policy.clone(),
            })
            .await;
            assert_eq!(status, 429);
            assert_eq!(headers[header::RETRY_AFTER], secs);
            assert_eq!(headers["ratelimit-policy"], "\"ip\";q=10;w=2");
            assert_eq!(
                headers["ratelimit"],
                format!("\"ip\";r=0;t={secs}").as_str()
            );
            assert_eq!(headers[header::CONTENT_TYPE], "application/problem+json");
            assert_eq!(body["type"], "urn:amqp-gateway:problem:rate-limited");
            assert_eq!(body["status"], 429);
        }
    }

    #[tokio::test]
    async fn method_not_allowed_lists_allow() {
        let (status, headers, _) = parts(GatewayError::MethodNotAllowed {
            allow: vec!["PUT", "PATCH"],
        })
        .await;
        assert_eq!(status, 405);
        assert_eq!(headers[header::ALLOW], "PUT, PATCH");
    }
}
