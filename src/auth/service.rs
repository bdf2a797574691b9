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
pub(crate) struct RequireAuth<S> {
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

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;
    use tower::{ServiceBuilder, ServiceExt, service_fn};

    use super::*;
    use crate::auth::{Authenticator, Identity, RequireAuthLayer};
    use crate::config::{AuthConfig, AuthPolicy, PolicyMatch, RouteAuth};

    const SECRET: &str = "layer-test-secret-layer-test-secret-0123";

    async fn authenticator() -> Authenticator {
        let config = AuthConfig::from_table(&format!(
            "issuer = \"iss\"\naudience = \"aud\"\n[[keys]]\nalgorithm = \"HS256\"\nsecret = \"{SECRET}\"\n"
        ));
        Authenticator::start(&config).await.unwrap()
    }

    fn token(roles: &[&str]) -> String {
        let claims = json!({
            "sub": "alice", "iss": "iss", "aud": "aud", "roles": roles,
            "exp": jsonwebtoken::get_current_timestamp() + 60,
        });
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    }

    /// Echoes what the handler saw: the identity's subject and any `x-auth-*` header.
    async fn echo(request: Request<Body>) -> Result<Response<Body>, Infallible> {
        let subject = request
            .extensions()
            .get::<Identity>()
            .map_or("-".to_owned(), |i| i.subject.clone());
        let forged = request.headers().contains_key("x-auth-sub");
        Ok(Response::new(Body::from(format!("{subject} {forged}"))))
    }

    async fn call(layer: RequireAuthLayer, request: Request<Body>) -> (u16, String, String) {
        let response = ServiceBuilder::new()
            .layer(layer)
            .service(service_fn(echo))
            .oneshot(request)
            .await
            .unwrap();
        let status = response.status().as_u16();
        let challenge = response
            .headers()
            .get("www-authenticate")
            .map_or(String::new(), |v| v.to_str().unwrap().to_owned());
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        (
            status,
            challenge,
            String::from_utf8_lossy(&body).into_owned(),
        )
    }

    fn request(auth: Option<&str>) -> Request<Body> {
        let mut builder = Request::post("/x").header("x-auth-sub", "forged");
        if let Some(auth) = auth {
            builder = builder.header("authorization", auth);
        }
        builder.body(Body::empty()).unwrap()
    }

    /// The layer of a route with `auth = { roles = ["admin"] }`.
    fn admin_only(authenticator: &Authenticator) -> RequireAuthLayer {
        let policy = AuthPolicy {
            roles: vec!["admin".into()],
            scopes: vec![],
            mode: PolicyMatch::Any,
        };
        RequireAuthLayer::for_route(&RouteAuth::Required(policy), Some(authenticator))
    }

    #[tokio::test]
    async fn public_routes_pass_without_identity_and_lose_forged_headers() {
        let (status, _, body) = call(RequireAuthLayer::public(), request(None)).await;
        assert_eq!((status, body.as_str()), (200, "- false"));
    }

    #[tokio::test]
    async fn protected_routes_insert_the_identity() {
        let layer = admin_only(&authenticator().await);
        let bearer = format!("Bearer {}", token(&["admin"]));
        let (status, _, body) = call(layer, request(Some(&bearer))).await;
        assert_eq!((status, body.as_str()), (200, "alice false"));
    }

    #[tokio::test]
    async fn rejections_never_reach_the_handler() {
        let layer = admin_only(&authenticator().await);
        let (status, challenge, body) = call(layer.clone(), request(None)).await;
        assert_eq!((status, challenge.as_str()), (401, "Bearer"));
        assert!(
            body.contains("urn:amqp-gateway:problem:unauthorized"),
            "{body}"
        );

        let bad = format!("Bearer {}x", token(&["admin"]));
        let (status, challenge, body) = call(layer.clone(), request(Some(&bad))).await;
        assert_eq!(
            (status, challenge.as_str()),
            (401, "Bearer error=\"invalid_token\"")
        );
        assert!(!body.contains(&bad[7..]), "the token must not be echoed");

        let user = format!("Bearer {}", token(&["user"]));
        let (status, challenge, _) = call(layer, request(Some(&user))).await;
        assert_eq!(
            (status, challenge.as_str()),
            (403, "Bearer error=\"insufficient_scope\"")
        );
    }

    #[tokio::test]
    async fn a_protected_route_without_authenticator_fails_closed() {
        let layer = RequireAuthLayer::for_route(
            &crate::config::RouteAuth::Required(AuthPolicy::default()),
            None,
        );
        let bearer = format!("Bearer {}", token(&[]));
        let (status, _, _) = call(layer, request(Some(&bearer))).await;
        assert_eq!(status, 500);
    }
}
