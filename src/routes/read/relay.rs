//! Unsafe methods on an upstream route (POST, PUT, PATCH, DELETE, and OPTIONS that CORS did
//! not answer): proxied synchronously, for writes that need an answer now (a login, a payment).
//!
//! The body streams to one target under the same rules as a published write: `Content-Length`
//! over `max_body_bytes` is refused before anything is sent, a chunked body is cut off at the
//! limit (the upstream sees an aborted request, the client a 413), `Content-Encoding: gzip` is
//! decoded under the limit (read whole, then sent decoded), any other coding is a 415. The
//! answer — status, headers (`Set-Cookie`, `Location` included), body — streams back,
//! untouched by the cache and the compressor. A request is never sent to a second target once
//! the first read any of its body; a non-error answer invalidates what is cached for the
//! target URI (RFC 9111 §4.4), on this instance and, with `cache.coherence`, on the others.
//! Auth, identity headers and `forward_authorization` are those of reads ([`Outbound`]).

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use http::header::{self, HeaderValue};

use super::ReadRoute;
use super::outbound::{self, Outbound, Target};
use crate::error::GatewayError;
use crate::proxy::{ClientBodyError, DeadlineBody, OutgoingBody, UpstreamError, response_headers};
use crate::routes::body;
use crate::state::AppState;

/// Handles one unsafe request on an upstream route.
pub(super) async fn handle(
    state: &AppState,
    route: &ReadRoute,
    request: Request,
) -> Result<Response, GatewayError> {
    let (mut parts, client_body) = request.into_parts();
    let params = outbound::check(route, &mut parts).await?;
    let limit = state.max_body_bytes;
    body::check_declared(&parts.headers, limit)?;
    let gzip = body::is_gzip(&parts.headers)?;
    let mut outbound = Outbound::new(state, route, &parts, false);
    // The gateway reads the body itself; a client's `Expect: 100-continue` is answered here
    // (hyper sends the 100 when the body is first read), not by the upstream.
    outbound.headers.remove(header::EXPECT);
    let outgoing = if gzip {
        let decoded =
            body::read(&parts.headers, client_body, limit, state.body_read_timeout).await?;
        outbound.headers.remove(header::CONTENT_ENCODING);
        outbound
            .headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(decoded.len()));
        OutgoingBody::new(Body::from(decoded), limit, state.body_read_timeout)
    } else {
        OutgoingBody::new(client_body, limit, state.body_read_timeout)
    };
    let target = Target {
        route,
        params: params.as_ref(),
        uri: &parts.uri,
    };
    let path_and_query = outbound.path_and_query(Some(target))?.clone();
    let upstream = &route.upstream;
    let exchange = upstream.send(&parts.method, &path_and_query, outbound.headers, &outgoing);
    let result = match tokio::time::timeout(upstream.timeout(), exchange).await {
        Ok(Ok(response)) => Ok(response),
        Ok(Err(UpstreamError::ClientBody(cause))) => Err(match cause {
            ClientBodyError::TooLarge => GatewayError::PayloadTooLarge { limit },
            ClientBodyError::Timeout => GatewayError::RequestTimeout,
            ClientBodyError::Read => {
                GatewayError::BadRequest("the request body could not be read".into())
            }
        }),
        Ok(Err(UpstreamError::Unreachable | UpstreamError::Failed)) => {
            Err(GatewayError::BadGateway)
        }
        Err(_) => Err(GatewayError::UpstreamTimeout),
    };
    let outcome = match &result {
        Ok(_) => "ok",
        Err(GatewayError::UpstreamTimeout) => "timeout",
        Err(_) => "failed",
    };
    state.metrics.upstream(upstream.name(), outcome);
    let (answer, upstream_body) = result?.into_parts();
    let headers = response_headers(&answer.headers);
    if answer.status.is_success() || answer.status.is_redirection() {
        let related: Vec<&str> = [header::LOCATION, header::CONTENT_LOCATION]
            .into_iter()
            .filter_map(|name| headers.get(name))
            .filter_map(|value| value.to_str().ok())
            .collect();
        crate::routes::invalidate::written(state, parts.uri.path(), &related).await;
    }
    // The answer streams; `timeout` bounded only its head.
    let upstream_body = DeadlineBody::new(upstream_body, upstream.body_timeout());
    let mut response = Response::new(Body::new(upstream_body));
    *response.status_mut() = answer.status;
    *response.headers_mut() = headers;
    Ok(response)
}
