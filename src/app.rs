//! [`app`]: the public router, built from the route table, and its one middleware stack.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, MethodRouter, on};
use http::header::AUTHORIZATION;
use http::{HeaderName, Method};

use tower::ServiceBuilder;
use tower::util::MapResponseLayer;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::trace::TraceLayer;

use crate::auth::RequireAuthLayer;
use crate::config::{Route, RouteAction};
use crate::error::GatewayError;
use crate::metrics::RequestMetricsLayer;
use crate::proxy::Upstreams;
use crate::routes::publish::{self, WriteRoute};
use crate::routes::read::{self, ReadRoute};
use crate::state::AppState;
use crate::telemetry::{self, RouteName};

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Request ids for requests that arrive without one: UUIDv7, so they sort by time in logs.
#[derive(Clone, Copy, Debug, Default)]
struct MakeRequestUuidV7;

impl MakeRequestId for MakeRequestUuidV7 {
    fn make_request_id<B>(&mut self, _: &http::Request<B>) -> Option<RequestId> {
        http::HeaderValue::try_from(uuid::Uuid::now_v7().to_string())
            .ok()
            .map(RequestId::new)
    }
}

/// Builds the public router for `state.routes`.
pub fn app(state: AppState) -> Router {
    let state_metrics = state.metrics.clone();
    // Group by path: axum wants one MethodRouter per path, with our 405 as its fallback.
    let mut by_path: BTreeMap<&str, Vec<&Route>> = BTreeMap::new();
    for route in state.routes.iter() {
        by_path.entry(route.path.as_str()).or_default().push(route);
    }
    let mut router = Router::new();
    for (path, routes) in by_path {
        let mut allow: Vec<&'static str> = Vec::new();
        let mut methods: MethodRouter<AppState> = MethodRouter::new();
        // Validation guarantees one CORS setting per path.
        let cors = routes.first().and_then(|r| r.cors.as_ref());
        let mut served: Vec<Method> = Vec::new();
        for route in &routes {
            allow.extend(route.methods.iter().map(static_method));
            served.extend(route.methods.iter().cloned());
            // Auth wraps only this route's methods (`route_layer`): 401/403 before the handler.
            let auth = RequireAuthLayer::for_route(&route.auth, state.auth.as_ref());
            // Validation guarantees distinct methods per path, so merging cannot overlap.
            methods = methods.merge(
                handler_for(route, &state.upstreams)
                    .route_layer(auth)
                    // Outermost, so 401/403 are labelled with the route too.
                    .route_layer(route_name_layer(&route.name)),
            );
        }
        if allow.contains(&"GET") && !allow.contains(&"HEAD") {
            allow.push("HEAD");
        }
        methods = methods.fallback(move || {
            let allow = allow.clone();
            async move { GatewayError::MethodNotAllowed { allow } }
        });
        if let Some(cors) = cors {
            // Around the whole path, 405 fallback included: a preflight `OPTIONS` is answered
            // here, before auth; auth failures get the CORS headers too.
            methods = methods.layer(crate::cors::layer(cors, &served));
        }
        router = router.route(path, methods);
    }
    router
        .fallback(|| async { GatewayError::NotFound })
        .with_state(state)
        .layer(
            // Outermost first.
            ServiceBuilder::new()
                // Before tracing, so the token can never reach a log line.
                .layer(SetSensitiveRequestHeadersLayer::new([AUTHORIZATION]))
                // Before tracing, so the span has the id; a client-sent id is kept.
                .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuidV7))
                .layer(
                    TraceLayer::new_for_http()
                        .make_span_with(telemetry::make_span)
                        .on_response(telemetry::on_response)
                        // The access-log line already carries 5xx statuses; no second line.
                        .on_failure(()),
                )
                .layer(RequestMetricsLayer::new(state_metrics))
                .layer(PropagateRequestIdLayer::new(REQUEST_ID))
                // A panic is a bug: answer 500 problem+json, keep the connection alive.
                .layer(CatchPanicLayer::custom(|_| {
                    GatewayError::Internal.into_response()
                })),
        )
}

fn static_method(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        _ => "OPTIONS",
    }
}

fn handler_for(route: &Route, upstreams: &Upstreams) -> MethodRouter<AppState> {
    let name: Arc<str> = Arc::from(route.name.as_str());
    let filter = route
        .methods
        .iter()
        .filter_map(|m| MethodFilter::try_from(m.clone()).ok())
        .reduce(MethodFilter::or)
        .unwrap_or(MethodFilter::POST);
    match &route.action {
        RouteAction::Publish(target) => {
            let write = Arc::new(WriteRoute {
                name: route.name.clone(),
                target: target.clone(),
            });
            on(
                filter,
                move |State(state): State<AppState>, request: Request| {
                    let write = write.clone();
                    async move { publish::handle(state, write, request).await }
                },
            )
        }
        RouteAction::Proxy(target) => {
            let Some(upstream) = upstreams.get(&target.upstream) else {
                // Config validation guarantees the upstream exists.
                return on(filter, || async { GatewayError::Internal });
            };
            let read = Arc::new(ReadRoute {
                name: name.clone(),
                target: target.clone(),
                upstream,
                catch_all: route
                    .path
                    .rsplit('/')
                    .next()
                    .and_then(|s| s.strip_prefix("{*"))
                    .and_then(|s| s.strip_suffix('}'))
                    .map(str::to_owned),
            });
            on(
                filter,
                move |State(state): State<AppState>, request: Request| {
                    let read = read.clone();
                    async move { read::handle(state, read, request).await }
                },
            )
        }
    }
}

/// Labels a route's responses with its name, for the access log and the metrics.
fn route_name_layer(name: &str) -> MapResponseLayer<impl Fn(Response) -> Response + Clone + use<>> {
    let name: Arc<str> = Arc::from(name);
    MapResponseLayer::new(move |mut response: Response| {
        response.extensions_mut().insert(RouteName(name.clone()));
        response
    })
}
