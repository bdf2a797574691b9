//! [`app`]: the public router, built from the route table, and its one middleware stack.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::handler::Handler;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, MethodRouter, on, on_service};
use http::Method;
use http::header::AUTHORIZATION;

use tower::ServiceBuilder;
use tower::util::MapResponseLayer;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;

use crate::auth::RequireAuthLayer;
use crate::config::{Route, RouteAction};
use crate::error::GatewayError;
use crate::host::PublicHostLayer;
use crate::metrics::{RequestMetricsLayer, method_label};
use crate::routes::publish::{self, WriteRoute};
use crate::routes::read::{self, ReadRoute};
use crate::state::AppState;
use crate::telemetry::{AccessLogLayer, REQUEST_ID, RouteName};

/// Request ids for requests that arrive without one: UUIDv7, so they sort by time in logs.
#[derive(Clone, Copy, Debug, Default)]
struct MakeRequestUuidV7;

impl MakeRequestId for MakeRequestUuidV7 {
    fn make_request_id<B>(&mut self, _: &http::Request<B>) -> Option<RequestId> {
        // Formatted on the stack: the header value is the only allocation.
        let mut buf = uuid::Uuid::encode_buffer();
        let id = uuid::Uuid::now_v7().hyphenated().encode_lower(&mut buf);
        http::HeaderValue::from_str(id).ok().map(RequestId::new)
    }
}

/// Builds the public router for `state.paths`.
///
/// Shape, for speed: the global middleware stack wraps the routed service once (`Router::layer`
/// would wrap every endpoint, and axum boxes and clones each wrapped endpoint per request), and
/// each route's own layers (route name, auth) wrap its handler service directly rather than
/// through `route_layer`, for the same reason.
pub fn app(state: AppState) -> Router {
    let state_metrics = state.metrics.clone();
    let public_host = state
        .public_host
        .clone()
        .map(|host| PublicHostLayer::new(host, state.trusted_proxies.clone()));
    // One MethodRouter per path (axum wants that), with our 405 as its fallback.
    let mut router = Router::new();
    for path in state.paths.iter() {
        let mut allow: Vec<&'static str> = Vec::new();
        let mut methods: MethodRouter<AppState> = MethodRouter::new();
        let mut served: Vec<Method> = Vec::new();
        for (filter, route) in path.routes() {
            // Config validation admits only the standard methods: never `OTHER`.
            allow.extend(route.methods.iter().map(method_label));
            served.extend(route.methods.iter().cloned());
            // A RoutePath's routes serve disjoint methods, so merging cannot overlap.
            methods = methods.merge(route_service(route, filter, &state));
        }
        if allow.contains(&"GET") && !allow.contains(&"HEAD") {
            allow.push("HEAD");
        }
        methods = methods.fallback(move || {
            let allow = allow.clone();
            async move { GatewayError::MethodNotAllowed { allow } }
        });
        if let Some(cors) = path.cors() {
            // Around the whole path, 405 fallback included: a preflight `OPTIONS` is answered
            // here, before auth; auth failures get the CORS headers too.
            methods = methods.layer(crate::cors::layer(cors, &served));
        }
        router = router.route(path.path(), methods);
    }
    let routed = router
        .fallback(|| async { GatewayError::NotFound })
        .with_state(state);
    let stack = ServiceBuilder::new()
        // Outermost first.
        // Marked before anything could print it (nothing logs headers today).
        .layer(SetSensitiveRequestHeadersLayer::new([AUTHORIZATION]))
        // Before the access log, so the line has the id; a client-sent id is kept.
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuidV7))
        .layer(AccessLogLayer::new())
        .layer(RequestMetricsLayer::new(state_metrics))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        // A panic is a bug: answer 500 problem+json, keep the connection alive.
        .layer(CatchPanicLayer::custom(|_| {
            GatewayError::Internal.into_response()
        }))
        // Before routing and auth: a request for another host is refused whatever its path.
        .option_layer(public_host);
    Router::new().fallback_service(stack.service(routed))
}

/// One route's methods (`filter`): its handler (publish or proxy) behind its own layers.
fn route_service(route: &Route, filter: MethodFilter, state: &AppState) -> MethodRouter<AppState> {
    match &route.action {
        RouteAction::Publish(target) => {
            let write = Arc::new(WriteRoute {
                name: Arc::from(route.name.as_str()),
                target: target.clone(),
            });
            layered(
                route,
                state,
                filter,
                move |State(state): State<AppState>, request: Request| {
                    let write = write.clone();
                    async move { publish::handle(state, write, request).await }
                },
            )
        }
        RouteAction::Proxy(target) => {
            let Some(upstream) = state.upstreams.get(&target.upstream) else {
                // Config validation guarantees the upstream exists.
                return on(filter, || async { GatewayError::Internal });
            };
            let definition = xxhash_rust::xxh3::xxh3_64(format!("{target:?}").as_bytes());
            let read = Arc::new(ReadRoute {
                name: Arc::from(route.name.as_str()),
                cache_scope: Arc::from(format!("{}#{definition:016x}", route.name)),
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
            layered(
                route,
                state,
                filter,
                move |State(state): State<AppState>, request: Request| {
                    let read = read.clone();
                    async move { read::handle(state, read, request).await }
                },
            )
        }
    }
}

/// `handler` behind the route's layers. The route name is outermost, so 401/403/429 are
/// labelled with the route too; auth runs first, then the rate limits (keyed by the identity
/// auth inserted), then the handler: a refused request is never published nor proxied.
fn layered<H, T>(
    route: &Route,
    state: &AppState,
    filter: MethodFilter,
    handler: H,
) -> MethodRouter<AppState>
where
    H: Handler<T, AppState>,
    T: 'static,
{
    let service = ServiceBuilder::new()
        .layer(route_name_layer(&route.name))
        .layer(RequireAuthLayer::for_route(
            &route.auth,
            state.auth.as_ref(),
        ))
        .option_layer(state.rate_limits.layer(&route.name))
        .service(handler.with_state(state.clone()));
    on_service(filter, service)
}

/// Labels a route's responses with its name, for the access log and the metrics.
fn route_name_layer(name: &str) -> MapResponseLayer<impl Fn(Response) -> Response + Clone + use<>> {
    let name: Arc<str> = Arc::from(name);
    MapResponseLayer::new(move |mut response: Response| {
        response.extensions_mut().insert(RouteName(name.clone()));
        response
    })
}
