//! CORS for browser clients: a [`CorsConfig`] (global `[cors]` or a route's override) becomes
//! a tower-http [`CorsLayer`] for one path.
//!
//! The layer sits outside authentication, so a preflight (`OPTIONS` with
//! `Access-Control-Request-Method`) is answered without a token, and auth failures still carry
//! `Access-Control-Allow-Origin` so a page can read its 401. Allowed methods are the methods
//! the path serves (plus `HEAD` with `GET`); they are not configured separately.

use http::Method;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};

use crate::config::{CorsOrigins, CorsPolicy};

/// The CORS layer for a path serving `methods`.
pub(crate) fn layer(policy: &CorsPolicy, methods: &[Method]) -> CorsLayer {
    let mut allowed: Vec<Method> = methods.to_vec();
    if allowed.contains(&Method::GET) && !allowed.contains(&Method::HEAD) {
        allowed.push(Method::HEAD);
    }
    let origin = match &policy.origins {
        CorsOrigins::Any => AllowOrigin::from(Any),
        CorsOrigins::List(list) => AllowOrigin::list(list.iter().cloned()),
    };
    CorsLayer::new()
        .allow_origin(origin)
        .allow_methods(allowed)
        .allow_headers(policy.allowed_headers.clone())
        .expose_headers(policy.exposed_headers.clone())
        .max_age(policy.max_age)
        .allow_credentials(policy.allow_credentials)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
    use std::convert::Infallible;
    use std::time::Duration;
    use tower::{ServiceBuilder, ServiceExt, service_fn};

    fn config() -> CorsPolicy {
        CorsPolicy {
            origins: CorsOrigins::List(vec![HeaderValue::from_static("https://app.example.com")]),
            allowed_headers: vec![
                HeaderName::from_static("authorization"),
                HeaderName::from_static("content-type"),
            ],
            exposed_headers: vec![HeaderName::from_static("location")],
            max_age: Duration::from_secs(600),
            allow_credentials: true,
        }
    }

    #[tokio::test]
    async fn preflight_is_answered_without_calling_the_route() {
        let svc = ServiceBuilder::new()
            .layer(layer(&config(), &[Method::POST]))
            .service(service_fn(|_: Request<Body>| async {
                panic!("a preflight must not reach the route");
                #[allow(unreachable_code)]
                Ok::<_, Infallible>(Response::new(Body::empty()))
            }));
        let res = svc
            .oneshot(
                Request::options("/x")
                    .header("origin", "https://app.example.com")
                    .header("access-control-request-method", "POST")
                    .header("access-control-request-headers", "authorization")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        let h = res.headers();
        assert_eq!(h["access-control-allow-origin"], "https://app.example.com");
        assert_eq!(h["access-control-allow-methods"], "POST");
        assert_eq!(h["access-control-allow-credentials"], "true");
        assert_eq!(h["access-control-max-age"], "600");
    }

    #[tokio::test]
    async fn other_origins_get_no_allow_origin() {
        let svc = ServiceBuilder::new()
            .layer(layer(&config(), &[Method::GET]))
            .service(service_fn(|_: Request<Body>| async {
                Ok::<_, Infallible>(Response::new(Body::empty()))
            }));
        let res = svc
            .oneshot(
                Request::get("/x")
                    .header("origin", "https://evil.example")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert!(res.headers().get("access-control-allow-origin").is_none());
    }
}
