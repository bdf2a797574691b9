//! Mints an HS256 demo token for `config/gateway.toml` (issuer, audience and `kid` of its demo
//! key), signed with `JWT_SECRET` or the demo config's default secret.
//!
//! ```text
//! cargo run -q --example mint_token -- --sub alice --roles admin
//! TOKEN=$(cargo run -q --example mint_token -- --sub alice --roles admin)
//! curl -X POST localhost:8080/admin/users/42/ban -H "authorization: Bearer $TOKEN" \
//!      -H 'content-type: application/json' -d '{"reason":"spam"}'
//! ```
//!
//! For demos and tests only: a real deployment gets its tokens from its identity provider.

use std::process::ExitCode;

use clap::Parser;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::json;

/// Must match the default in `config/gateway.toml`.
const DEMO_SECRET: &str = "amqp-gateway-demo-secret-change-me-0123456789";

#[derive(Parser)]
#[command(about = "Mint an HS256 demo token for config/gateway.toml")]
struct Args {
    /// `sub` claim.
    #[arg(long)]
    sub: String,
    /// Roles, comma-separated (`roles` claim).
    #[arg(long, value_delimiter = ',')]
    roles: Vec<String>,
    /// Scopes, space-separated in one argument (`scope` claim).
    #[arg(long)]
    scope: Option<String>,
    /// `email` claim (propagated as `x-auth-email` by the demo config).
    #[arg(long)]
    email: Option<String>,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    ttl: u64,
    /// `iss` claim.
    #[arg(long, default_value = "amqp-gateway-demo")]
    issuer: String,
    /// `aud` claim.
    #[arg(long, default_value = "amqp-gateway")]
    audience: String,
    /// `kid` header.
    #[arg(long, default_value = "demo")]
    kid: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let secret = std::env::var("JWT_SECRET").unwrap_or_else(|_| DEMO_SECRET.to_owned());
    let now = jsonwebtoken::get_current_timestamp();
    let mut claims = json!({
        "sub": args.sub,
        "iss": args.issuer,
        "aud": args.audience,
        "iat": now,
        "exp": now + args.ttl,
        "roles": args.roles,
    });
    if let Some(scope) = args.scope {
        claims["scope"] = json!(scope);
    }
    if let Some(email) = args.email {
        claims["email"] = json!(email);
    }
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(args.kid);
    match encode(
        &header,
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    ) {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mint_token: {e}");
            ExitCode::FAILURE
        }
    }
}
