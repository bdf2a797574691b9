//! [`PublicHostLayer`]: refuses every request for a host other than `server.public_host` with
//! 421 Misdirected Request, before routing and authentication.
//!
//! Why: upstreams build absolute links from the forwarded host, and a shared cache would keep
//! them; with a public host configured, no client-chosen host reaches an upstream at all. The
//! host compared is a trusted proxy's `X-Forwarded-Host`, else `Host`, else the HTTP/2
//! `:authority` (port and case aside, see [`PublicHost::matches`]).

use std::sync::Arc;
use std::task::{Context, Poll};

use axum::response::{IntoResponse, Response};
use futures_util::future::{Either, Ready, ready};
use http::Request;
use ipnet::IpNet;
use tower::{Layer, Service};

use crate::config::PublicHost;
use crate::error::GatewayError;
use crate::proxy::{is_trusted, peer, request_host};

/// Wraps a service so that requests for another host get 421 problem+json.
#[derive(Debug, Clone)]
pub(crate) struct PublicHostLayer {
    host: Arc<PublicHost>,
    trusted_proxies: Arc<[IpNet]>,
}

impl PublicHostLayer {
    /// Accept only `host`; believe `X-Forwarded-Host` from `trusted_proxies` only.
    pub(crate) fn new(host: PublicHost, trusted_proxies: Arc<[IpNet]>) -> Self {
        Self {
            host: Arc::new(host),
            trusted_proxies,
        }
    }
}

impl<S> Layer<S> for PublicHostLayer {
    type Service = PublicHostService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PublicHostService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service of [`PublicHostLayer`].
#[derive(Debug, Clone)]
pub(crate) struct PublicHostService<S> {
    inner: S,
    layer: PublicHostLayer,
}

impl<S, B> Service<Request<B>> for PublicHostService<S>
where
    S: Service<Request<B>, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Either<Ready<Result<Response, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let trusted = is_trusted(peer(request.extensions()), &self.layer.trusted_proxies);
        let host = request_host(request.headers(), request.uri().authority(), trusted);
        if host.is_some_and(|h| self.layer.host.matches(h)) {
            Either::Right(self.inner.call(request))
        } else {
            Either::Left(ready(Ok(GatewayError::MisdirectedRequest.into_response())))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::extract::ConnectInfo;
    use std::convert::Infallible;
    use std::net::SocketAddr;
    use tower::ServiceExt;

    fn service() -> impl Service<Request<()>, Response = Response, Error = Infallible> + Clone {
        let host = PublicHost::try_from("api.example.com".to_owned()).unwrap();
        let trusted: Arc<[IpNet]> = vec!["127.0.0.1/32".parse().unwrap()].into();
        PublicHostLayer::new(host, trusted).layer(tower::service_fn(|_: Request<()>| async {
            Ok::<_, Infallible>(Response::new(axum::body::Body::empty()))
        }))
    }

    async fn status(headers: &[(&str, &str)], peer: Option<&str>, uri: &str) -> u16 {
        let mut request = Request::builder().uri(uri);
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let mut request = request.body(()).unwrap();
        if let Some(peer) = peer {
            let addr: SocketAddr = peer.parse().unwrap();
            request.extensions_mut().insert(ConnectInfo(addr));
        }
        service().oneshot(request).await.unwrap().status().as_u16()
    }

    #[tokio::test]
    async fn only_the_public_host_passes() {
        assert_eq!(status(&[("host", "api.example.com")], None, "/").await, 200);
        assert_eq!(
            status(&[("host", "API.example.com:8443")], None, "/").await,
            200
        );
        assert_eq!(status(&[("host", "evil.example")], None, "/").await, 421);
        assert_eq!(status(&[], None, "/").await, 421, "no host at all");
        assert_eq!(
            status(&[], None, "http://api.example.com/x").await,
            200,
            "h2 authority"
        );
        // X-Forwarded-Host counts only from a trusted proxy, and then it is the host.
        let forwarded = [
            ("host", "api.example.com"),
            ("x-forwarded-host", "evil.example"),
        ];
        assert_eq!(status(&forwarded, Some("127.0.0.1:1"), "/").await, 421);
        assert_eq!(status(&forwarded, Some("10.0.0.1:1"), "/").await, 200);
    }
}
