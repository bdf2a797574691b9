//! [`RequestMetricsLayer`]: counts every HTTP response and its latency by route, method and
//! status.
//!
//! The route name comes from the [`RouteName`] response extension that the router sets on
//! every routed response (401/403 from auth included); responses outside any route are
//! labelled `unmatched`. Latency is measured until the response head is ready, like the access
//! log. `app()` wraps the router in `RequestMetricsLayer::new(metrics)`, with the registry
//! of the process's `Metrics` (tests below drive it the same way).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use http::{Method, Request, Response};
use tower::{Layer, Service};

use super::Metrics;
use crate::telemetry::RouteName;

/// Layer that applies [`RequestMetrics`].
#[derive(Clone, Debug)]
pub(crate) struct RequestMetricsLayer {
    metrics: Arc<Metrics>,
    unmatched: Arc<str>,
}

impl RequestMetricsLayer {
    /// Records into `metrics`.
    pub(crate) fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            metrics,
            unmatched: Arc::from("unmatched"),
        }
    }
}

impl<S> Layer<S> for RequestMetricsLayer {
    type Service = RequestMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestMetrics {
            inner,
            metrics: self.metrics.clone(),
            unmatched: self.unmatched.clone(),
        }
    }
}

/// Middleware that records request metrics.
#[derive(Clone, Debug)]
pub(crate) struct RequestMetrics<S> {
    inner: S,
    metrics: Arc<Metrics>,
    unmatched: Arc<str>,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RequestMetrics<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        ResponseFuture {
            method: request.method().clone(),
            start: Instant::now(),
            metrics: self.metrics.clone(),
            unmatched: self.unmatched.clone(),
            inner: self.inner.call(request),
        }
    }
}

pin_project_lite::pin_project! {
    /// Response future of [`RequestMetrics`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        method: Method,
        start: Instant,
        metrics: Arc<Metrics>,
        unmatched: Arc<str>,
    }
}

impl<F, ResBody, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        if let Ok(response) = &result {
            let route = response
                .extensions()
                .get::<RouteName>()
                .map_or(&*this.unmatched, |r| &r.0);
            this.metrics.request(
                route,
                this.method,
                response.status().as_u16(),
                this.start.elapsed(),
            );
        }
        Poll::Ready(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::amqp::Readiness;
    use std::convert::Infallible;
    use tower::{ServiceBuilder, ServiceExt};

    #[tokio::test]
    async fn counts_by_route_method_and_status() {
        let metrics = Arc::new(Metrics::new());
        let svc = ServiceBuilder::new()
            .layer(RequestMetricsLayer::new(metrics.clone()))
            .service_fn(|req: Request<()>| async move {
                let mut res = Response::new(());
                if req.uri().path() == "/named" {
                    res.extensions_mut().insert(RouteName("get-user".into()));
                } else {
                    *res.status_mut() = http::StatusCode::NOT_FOUND;
                }
                Ok::<_, Infallible>(res)
            });
        let req = |p: &str| Request::builder().method("GET").uri(p).body(()).unwrap();
        svc.clone().oneshot(req("/named")).await.unwrap();
        svc.oneshot(req("/nope")).await.unwrap();
        let text = metrics.render(
            Readiness {
                ready_channels: 0,
                configured_channels: 0,
                blocked_channels: 0,
            },
            &[],
        );
        assert!(
            text.contains(
                "gateway_http_requests_total{route=\"get-user\",method=\"GET\",status=\"200\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "gateway_http_requests_total{route=\"unmatched\",method=\"GET\",status=\"404\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "gateway_http_request_duration_seconds_count{route=\"get-user\",method=\"GET\"} 1"
            ),
            "{text}"
        );
    }
}
