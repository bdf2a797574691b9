//! [`RequireAuth`]: the service built by [`RequireAuthLayer`](super::RequireAuthLayer).

use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use futures_util::future::{BoxFuture, Either};
use http::{HeaderMap, HeaderName, Request};
use tower::Service;

use super::Rejection;
use super::layer::{Access, Rule};
use crate::config::AUTH_HEADER_PREFIX;
use crate::error::GatewayError;

/// Checks the route's rule, then calls the inner service with the caller's
/// [`Identity`](super::Identity) in the request extensions, or answers 400/401/403 itself.
#[derive(Clone, Debug)]
pub struct RequireAuth<S> {
    pub(crate) inner: S,
    pub(crate) rule: Arc<Rule>,
}

impl<S, B> Service<Request<B>> for RequireAuth<S>
where
    S: Service<Request<B>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    /// Public routes call through without boxing.
    type Future = Either<S::Future, BoxFuture<'static, Result<Response<Body>, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        // Identity headers come from a verified token or not at all, on every route.
        strip_identity_headers(request.headers_mut());
        if matches!(self.rule.access, Access::Public) {
            return Either::Left(self.inner.call(request));
        }
        // The clone may not be ready; keep the one `poll_ready` readied (tower's usual dance).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let rule = self.rule.clone();
        Either::Right(Box::pin(async move {
            let Access::Token {
                authenticator,
                policy,
                scope,
            } = &rule.access
            else {
                return inner.call(request).await;
            };
            let Some(authenticator) = authenticator else {
                tracing::error!("Protected route without [auth]; config validation prevents this.");
                return Ok(GatewayError::Internal.into_response());
            };
            let identity = match authenticator.authenticate(request.headers()).await {
                Ok(identity) => identity,
                Err(rejection) => {
                    // The reason code only: never the token, never jsonwebtoken's message.
                    tracing::debug!(reason = rejection.reason(), "Request not authenticated.");
                    return Ok(GatewayError::from(rejection).into_response());
                }
            };
            if !identity.satisfies(policy) {
                tracing::debug!(
                    reason = "insufficient-scope",
                    "Authenticated request not authorized."
                );
                return Ok(GatewayError::InsufficientScope {
                    scope: scope.clone(),
                }
                .into_response());
            }
            request.extensions_mut().insert(identity);
            inner.call(request).await
        }))
    }
}

impl From<Rejection> for GatewayError {
    fn from(rejection: Rejection) -> Self {
        match rejection {
            Rejection::Missing => GatewayError::Unauthorized,
            Rejection::InvalidRequest(_) => GatewayError::InvalidAuthRequest,
            Rejection::InvalidToken(_) => GatewayError::InvalidToken,
        }
    }
}

/// Removes every client-sent `X-Auth-*` header.
fn strip_identity_headers(headers: &mut HeaderMap) {
    let names: Vec<HeaderName> = headers
        .keys()
        .filter(|n| n.as_str().starts_with(AUTH_HEADER_PREFIX))
        .cloned()
        .collect();
    for name in names {
        headers.remove(name);
    }
}
