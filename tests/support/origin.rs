//! Owns the test origin: a real HTTP backing service on `127.0.0.1:0` whose behaviour each test
//! steers through the query string, and which records every request it sees.
//!
//! Query parameters understood by every path:
//! - `cc=...`: `Cache-Control` value; `etag=...`: an `ETag` to send (and honour in
//!   `If-None-Match`, answering 304); `vary=...`: a `Vary` value; `cookie=1`: a `Set-Cookie`;
//! - `status=NNN`: the status; `delay_ms=N`: wait before answering; `size=N`: body length;
//! - `ct=...`: content type (default `application/json`); `gz=1`: a pre-gzipped body with
//!   `Content-Encoding: gzip`.
//!
//! The body is JSON naming the origin (`served_by`), the path, the
//! `Authorization` and `Accept-Language` it saw, padded to `size`.

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::net::TcpListener;

/// One request as the origin saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Method.
    pub method: String,
    /// Path and query.
    pub uri: String,
    /// Request headers.
    pub headers: HeaderMap,
}

#[derive(Default)]
struct Shared {
    name: String,
    seen: Mutex<Vec<Seen>>,
}

/// A running origin.
pub struct Origin {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// Its address.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Origin {
    /// Starts an origin that calls itself `name` in its bodies.
    pub async fn start(name: &str) -> Origin {
        let shared = Arc::new(Shared {
            name: name.to_owned(),
            ..Default::default()
        });
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Origin {
            url: format!("http://{addr}"),
            addr,
            shared,
            task,
        }
    }

    /// Every request seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().unwrap().clone()
    }

    /// How many requests hit `path` (query ignored).
    pub fn hits(&self, path: &str) -> usize {
        self.seen()
            .iter()
            .filter(|s| s.uri.split('?').next() == Some(path))
            .count()
    }

    /// Stops accepting connections (existing ones die with the task).
    pub fn stop(&self) {
        self.task.abort();
    }
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    Query(q): Query<HashMap<String, String>>,
    request: Request,
) -> Response {
    let path = request.uri().path().to_owned();
    shared.seen.lock().unwrap().push(Seen {
        method: request.method().to_string(),
        uri: request.uri().to_string(),
        headers: request.headers().clone(),
    });
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
            .headers()
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
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let mut body = serde_json::json!({
        "served_by": shared.name,
        "path": path,
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
