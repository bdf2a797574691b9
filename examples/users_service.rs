//! A small backing service for the demo and the benchmarks: JSON resources with and without
//! ETags, so a read through the gateway shows a cached hit, a 304 and gzip.
//!
//! ```text
//! cargo run --example users_service -- --listen 127.0.0.1:9001
//! GET /api/users/{id}        ~2.5 KB JSON, strong ETag, Cache-Control: public, max-age=30,
//!                            answers If-None-Match with 304
//! GET /api/catalog/{*rest}   JSON without an ETag (the gateway generates one), max-age=60
//! GET /api/big               ~100 KB JSON, no ETag, max-age=60
//! POST /api/auth/login       {"username","password"} -> 200 {"session": ...} + Set-Cookie,
//!                            401 for a wrong password (demo: the password is "demo")
//! GET /healthz               200
//! ```

use std::net::SocketAddr;

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use clap::Parser;
use serde_json::json;

#[derive(Parser)]
#[command(about = "Example backing service for amqp-gateway")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9001")]
    listen: SocketAddr,
}

fn user(id: &str) -> serde_json::Value {
    let tags: Vec<String> = (0..40).map(|i| format!("interest-{i}")).collect();
    json!({
        "id": id,
        "name": format!("User {id}"),
        "email": format!("user{id}@example.com"),
        "bio": "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore et dolore magna aliqua. ".repeat(14),
        "tags": tags,
        "address": { "street": "1 Example Way", "city": "Exampleville", "country": "EX" },
        "version": 1,
    })
}

async fn get_user(Path(id): Path<String>, headers: HeaderMap) -> Response {
    if id.len() > 64 {
        return StatusCode::NOT_FOUND.into_response();
    }
    // The representation only changes with its version, so the tag derives from it.
    let tag = format!("\"user-{id}-v1\"");
    let mut out = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&tag) {
        out.insert(header::ETAG, v);
    }
    out.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=30"),
    );
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim().trim_start_matches("W/") == tag)
        });
    if matches {
        return (StatusCode::NOT_MODIFIED, out).into_response();
    }
    (out, axum::Json(user(&id))).into_response()
}

async fn catalog(Path(rest): Path<String>) -> Response {
    let items: Vec<serde_json::Value> = (0..20)
        .map(|i| json!({ "sku": format!("{rest}-{i}"), "title": format!("Item {i} in {rest}"), "price_cents": 999 + i }))
        .collect();
    (
        [(header::CACHE_CONTROL, "max-age=60")],
        axum::Json(json!({ "category": rest, "items": items })),
    )
        .into_response()
}

async fn big() -> Response {
    let users: Vec<serde_json::Value> = (0..45).map(|i| user(&i.to_string())).collect();
    (
        [(header::CACHE_CONTROL, "max-age=60")],
        axum::Json(json!({ "users": users })),
    )
        .into_response()
}

/// A synchronous write: the client needs the answer now, so the gateway proxies it.
async fn login(body: axum::body::Bytes) -> Response {
    let credentials: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let user = credentials["username"].as_str().unwrap_or_default();
    if user.is_empty() || credentials["password"].as_str() != Some("demo") {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({ "error": "invalid credentials" })),
        )
            .into_response();
    }
    let session = format!("demo-session-{user}");
    (
        [
            (
                header::SET_COOKIE,
                format!("session={session}; Path=/; HttpOnly; SameSite=Strict"),
            ),
            (header::CACHE_CONTROL, "no-store".to_owned()),
        ],
        axum::Json(json!({ "user": user, "session": session })),
    )
        .into_response()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let app = Router::new()
        .route("/api/users/{id}", get(get_user))
        .route("/api/catalog/{*rest}", get(catalog))
        .route("/api/big", get(big))
        .route("/api/auth/login", axum::routing::post(login))
        .route("/healthz", get(|| async { "ok" }));
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    eprintln!(
        "users-service listening on http://{}",
        listener.local_addr()?
    );
    axum::serve(listener, app).await?;
    Ok(())
}
