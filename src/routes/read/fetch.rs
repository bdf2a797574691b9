//! Step 4 of a read: one exchange with the upstream, bounded by its timeout, with the body
//! read up to a limit and the clock readings RFC 9111 §4.2.3 needs for `Age`.

use std::time::SystemTime;

use axum::body::Body;
use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{HeaderMap, Method};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::cache::policy::Timing;
use crate::error::GatewayError;
use crate::proxy::{DeadlineBody, OutgoingBody, Upstream};
use crate::state::AppState;

/// A body read up to a limit.
pub(super) enum Buffered {
    /// The whole body.
    Complete(Bytes),
    /// Over the limit: what was read, and the rest still to stream, by the upstream's
    /// `body_timeout`.
    Partial(Vec<Bytes>, DeadlineBody<Incoming>),
}

impl Buffered {
    /// The body to send: buffered bytes, or the read prefix followed by the rest as it comes.
    pub(super) fn into_body(self) -> Body {
        match self {
            Self::Complete(bytes) => Body::from(bytes),
            Self::Partial(prefix, rest) => {
                use futures_util::{StreamExt, TryStreamExt};
                let head = futures_util::stream::iter(prefix.into_iter().map(Ok::<_, axum::Error>));
                let tail = rest.into_data_stream().map_err(axum::Error::new);
                Body::from_stream(head.chain(tail))
            }
        }
    }
}

/// An upstream answer.
pub(super) struct Fetched {
    /// Status and headers as received.
    pub(super) parts: http::response::Parts,
    /// The body, read up to the limit.
    pub(super) body: Buffered,
    /// Wall-clock request and response times (for `Age`).
    pub(super) timing: Timing,
}

/// Sends `method path_and_query` with `headers` to `upstream` and reads the body up to
/// `limit`, all within the upstream timeout. A body that fails midway (reset, truncated) is an
/// error: it is never served as complete, nor stored.
pub(super) async fn fetch(
    state: &AppState,
    upstream: &Upstream,
    method: &Method,
    path_and_query: &PathAndQuery,
    headers: HeaderMap,
    limit: usize,
) -> Result<Fetched, GatewayError> {
    let exchange = async {
        let request_time = SystemTime::now();
        let response = upstream
            .send(method, path_and_query, headers, &OutgoingBody::empty())
            .await
            .map_err(|_| GatewayError::BadGateway)?;
        let timing = Timing {
            request_time,
            response_time: SystemTime::now(),
        };
        let (parts, body) = response.into_parts();
        let body = buffer(body, limit, upstream.body_timeout()).await?;
        Ok::<_, GatewayError>(Fetched {
            parts,
            body,
            timing,
        })
    };
    let result = tokio::time::timeout(upstream.timeout(), exchange)
        .await
        .map_err(|_| GatewayError::UpstreamTimeout)
        .and_then(|r| r);
    let outcome = match &result {
        Ok(_) => "ok",
        Err(GatewayError::UpstreamTimeout) => "timeout",
        Err(_) => "failed",
    };
    state.metrics.upstream(upstream.name(), outcome);
    result
}

/// Reads `body` up to `limit` bytes; a longer body streams on within `body_timeout`.
async fn buffer(
    mut body: Incoming,
    limit: usize,
    body_timeout: std::time::Duration,
) -> Result<Buffered, GatewayError> {
    let mut chunks = Vec::new();
    let mut len = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| GatewayError::BadGateway)?;
        if let Ok(data) = frame.into_data() {
            len += data.len();
            chunks.push(data);
            if len > limit {
                // Beyond here `timeout` no longer applies (the exchange returns): without
                // a deadline of its own a trickling origin would hold the stream forever.
                return Ok(Buffered::Partial(
                    chunks,
                    DeadlineBody::new(body, body_timeout),
                ));
            }
        }
    }
    Ok(Buffered::Complete(match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.swap_remove(0),
        _ => {
            let mut all = Vec::with_capacity(len);
            for c in &chunks {
                all.extend_from_slice(c);
            }
            Bytes::from(all)
        }
    }))
}
