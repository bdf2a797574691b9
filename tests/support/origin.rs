//! Owns the test origins: real HTTP backing services on `127.0.0.1:0` that record every request
//! they see (method, target, and the header map with the raw bytes of each value, non-UTF-8
//! ones included).
//!
//! Two kinds:
//! - [`Origin::start`]: steered by the query string of each request (below);
//! - [`Origin::scripted`]: answers with a closure the test gives, `Fn(&Seen) -> Reply`, which
//!   can read shared state (an atomic, an `Arc<Mutex<..>>`) so that the answer changes between
//!   requests; [`Reply`] sets any status, any header (raw bytes, repeated names: `Age`, `Date`,
//!   `Expires`, `Vary`, ...), the body and a delay.
//!
//! [`Origin::stop`] closes the listener and every open connection (the gateway's pooled ones
//! too), so the next request to it is refused.
//!
//! Query parameters understood by every path of [`Origin::start`]:
//! - `cc=...`: `Cache-Control` value; `etag=...`: an `ETag` to send (and honour in
//!   `If-None-Match`, answering 304); `vary=...`: a `Vary` value; `cookie=1`: a `Set-Cookie`;
//! - `status=NNN`: the status; `delay_ms=N`: wait before answering; `size=N`: body length;
//! - `ct=...`: content type (default `application/json`); `gz=1`: a pre-gzipped body with
//!   `Content-Encoding: gzip`.
//!
//! Its body is JSON naming the origin (`served_by`), the path, the `Authorization` and
//! `Accept-Language` it saw, padded to `size`.

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::{AbortHandle, JoinHandle};
use tokio::time::Instant;
use tower::ServiceExt;

/// One request as the origin saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Method.
    pub method: String,
    /// Path and query.
    pub uri: String,
    /// Request headers, values as the bytes received.
    pub headers: HeaderMap,
    /// The request body, as far as it arrived.
    pub body: Bytes,
    /// Whether the whole body arrived (false: the sender aborted it midway).
    pub complete: bool,
}

impl Seen {
    /// The path, without the query.
    pub fn path(&self) -> &str {
        self.uri.split('?').next().unwrap_or("")
    }

    /// The query, `""` when none.
    pub fn query(&self) -> &str {
        self.uri.split_once('?').map_or("", |(_, q)| q)
    }

    /// The raw bytes of the first `name` field, if any.
    pub fn raw(&self, name: &str) -> Option<&[u8]> {
        self.headers.get(name).map(HeaderValue::as_bytes)
    }

    /// Every `name` field, lossily decoded and joined with `, `; `""` when absent.
    pub fn text(&self, name: &str) -> String {
        self.headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// JSON naming what the origin saw: `{"method", "uri", "h": {name: value}}`, values
    /// lossily decoded (see [`Seen::text`]). A body built from it tells the test which request
    /// produced it.
    pub fn echo(&self) -> serde_json::Value {
        let mut h = serde_json::Map::new();
        for name in self.headers.keys() {
            h.insert(
                name.as_str().to_owned(),
                serde_json::Value::String(self.text(name.as_str())),
            );
        }
        serde_json::json!({"method": self.method, "uri": self.uri, "h": h})
    }
}

/// What a scripted origin answers to one request.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Header fields in order, repeated names allowed, values as raw bytes.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Body.
    pub body: Bytes,
    /// Wait this long before answering.
    pub delay: Duration,
}

impl Reply {
    /// An empty answer with `status`.
    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: Bytes::new(),
            delay: Duration::ZERO,
        }
    }

    /// An empty `200`.
    pub fn ok() -> Reply {
        Reply::status(200)
    }

    /// Appends a header field (`value` as raw bytes: obs-text allowed).
    pub fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Reply {
        let name = HeaderName::from_bytes(name.as_bytes()).unwrap();
        let value = HeaderValue::from_bytes(value.as_ref()).unwrap();
        self.headers.push((name, value));
        self
    }

    /// The body.
    pub fn body(mut self, body: impl Into<Bytes>) -> Reply {
        self.body = body.into();
        self
    }

    /// A `200` whose JSON body is [`Seen::echo`] of `seen`: it names what the origin saw.
    pub fn echo(seen: &Seen) -> Reply {
        Reply::ok().json(&seen.echo())
    }

    /// A JSON body with `Content-Type: application/json`.
    pub fn json(self, value: &serde_json::Value) -> Reply {
        self.header("content-type", "application/json")
            .body(value.to_string())
    }

    /// Answer after `delay`.
    pub fn delay(mut self, delay: Duration) -> Reply {
        self.delay = delay;
        self
    }
}

type Handler = Arc<dyn Fn(&Seen) -> Reply + Send + Sync>;

struct Shared {
    name: String,
    seen: Mutex<Vec<Seen>>,
    script: Option<Handler>,
}

/// A running origin.
pub struct Origin {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// Its address.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
    connections: Arc<Mutex<Vec<AbortHandle>>>,
}

impl Origin {
    /// Starts a query-steered origin that calls itself `name` in its bodies.
    pub async fn start(name: &str) -> Origin {
        Self::launch(name, None).await
    }

    /// Starts an origin that answers every request with `script(&seen)`, after recording it.
    pub async fn scripted(
        name: &str,
        script: impl Fn(&Seen) -> Reply + Send + Sync + 'static,
    ) -> Origin {
        Self::launch(name, Some(Arc::new(script))).await
    }

    async fn launch(name: &str, script: Option<Handler>) -> Origin {
        let shared = Arc::new(Shared {
            name: name.to_owned(),
            seen: Mutex::new(Vec::new()),
            script,
        });
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(Mutex::new(Vec::<AbortHandle>::new()));
        let conns = connections.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let app = app.clone();
                let service = hyper::service::service_fn(move |req: Request<_>| {
                    app.clone().oneshot(req.map(axum::body::Body::new))
                });
                let conn = tokio::spawn(async move {
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
                conns.lock().unwrap().push(conn.abort_handle());
            }
        });
        Origin {
            url: format!("http://{addr}"),
            addr,
            shared,
            task,
            connections,
        }
    }

    /// Every request seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().unwrap().clone()
    }

    /// The last request seen.
    pub fn last(&self) -> Seen {
        self.seen().pop().expect("the origin saw no request")
    }

    /// How many requests hit `path` (query ignored).
    pub fn hits(&self, path: &str) -> usize {
        self.seen().iter().filter(|s| s.path() == path).count()
    }

    /// How many requests it saw in all.
    pub fn count(&self) -> usize {
        self.shared.seen.lock().unwrap().len()
    }

    /// Stops accepting connections and closes the open ones.
    pub fn stop(&self) {
        self.task.abort();
        for conn in self.connections.lock().unwrap().drain(..) {
            conn.abort();
        }
    }

    /// [`Origin::stop`], then polls (2 s deadline) until a connection to it is refused.
    pub async fn stop_and_wait(&self) {
        self.stop();
        let deadline = Instant::now() + Duration::from_secs(2);
        while tokio::net::TcpStream::connect(self.addr).await.is_ok() {
            assert!(Instant::now() < deadline, "origin still accepting");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

async fn handle(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let (body, complete) = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(bytes) => (bytes, true),
        Err(_) => (Bytes::new(), false),
    };
    let request = Request::from_parts(parts, axum::body::Body::empty());
    let seen = Seen {
        method: request.method().to_string(),
        uri: request.uri().to_string(),
        headers: request.headers().clone(),
        body,
        complete,
    };
    shared.seen.lock().unwrap().push(seen.clone());
    match &shared.script {
        Some(script) => scripted(script(&seen)).await,
        None => {
            let q: Query<HashMap<String, String>> =
                Query::try_from_uri(request.uri()).unwrap_or_else(|_| Query(HashMap::new()));
            steered(&shared.name, q.0, &seen).await
        }
    }
}

async fn scripted(reply: Reply) -> Response {
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let mut response = Response::new(axum::body::Body::from(reply.body));
    *response.status_mut() = StatusCode::from_u16(reply.status).unwrap();
    for (name, value) in reply.headers {
        response.headers_mut().append(name, value);
    }
    response
}

async fn steered(name: &str, q: HashMap<String, String>, request: &Seen) -> Response {
    if let Some(ms) = q.get("delay_ms").and_then(|v| v.parse().ok()) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let mut headers = HeaderMap::new();
    let set = |h: &mut HeaderMap, k: header::HeaderName, v: &str| {
        h.insert(k, HeaderValue::from_str(v).unwrap());
    };
    if let Some(cc) = q.get("cc") {
        set(&mut headers, header::CACHE_CONTROL, cc);
    }
    if let Some(vary) = q.get("vary") {
        set(&mut headers, header::VARY, vary);
    }
    if q.contains_key("cookie") {
        set(&mut headers, header::SET_COOKIE, "session=abc");
    }
    if let Some(tag) = q.get("etag") {
        set(&mut headers, header::ETAG, tag);
        let inm = request
            .headers
            .get(header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok());
        if inm == Some(tag.as_str()) {
            return (StatusCode::NOT_MODIFIED, headers).into_response();
        }
    }
    let status = q
        .get("status")
        .and_then(|s| s.parse::<u16>().ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK);
    let header_str = |name: header::HeaderName| {
        request
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let mut body = serde_json::json!({
        "served_by": name,
        "path": request.path(),
        "authorization": header_str(header::AUTHORIZATION),
        "accept_language": header_str(header::ACCEPT_LANGUAGE),
    })
    .to_string();
    let size: usize = q.get("size").and_then(|s| s.parse().ok()).unwrap_or(0);
    if body.len() < size {
        body.pop();
        body.push_str(",\"pad\":\"");
        while body.len() + 2 < size {
            body.push('a');
        }
        body.push_str("\"}");
    }
    set(
        &mut headers,
        header::CONTENT_TYPE,
        q.get("ct").map_or("application/json", |s| s.as_str()),
    );
    if q.contains_key("gz") {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(body.as_bytes()).unwrap();
        set(&mut headers, header::CONTENT_ENCODING, "gzip");
        return (status, headers, enc.finish().unwrap()).into_response();
    }
    (status, headers, body).into_response()
}
