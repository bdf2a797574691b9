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
    /// Algorithm: HS256 (the demo key) or, with `--key`, RS256/PS256/ES256/ES384/EdDSA.
    #[arg(long, default_value = "HS256")]
    alg: String,
    /// PEM private key for a non-HMAC `--alg` (e.g. `tests/fixtures/keys/rsa1.key`).
    #[arg(long)]
    key: Option<std::path::PathBuf>,
}

fn encoding_key(args: &Args, alg: Algorithm) -> Result<EncodingKey, String> {
    let Some(path) = &args.key else {
        if !matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
            return Err(format!("{alg:?} needs --key PRIVATE_KEY.pem"));
        }
        let secret = std::env::var("JWT_SECRET").unwrap_or_else(|_| DEMO_SECRET.to_owned());
        return Ok(EncodingKey::from_secret(secret.as_bytes()));
    };
    let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    match alg {
        Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 | Algorithm::PS256 => {
            EncodingKey::from_rsa_pem(&pem)
        }
        Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(&pem),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem),
        other => return Err(format!("--key does not apply to {other:?}")),
    }
    .map_err(|e| format!("{}: {e}", path.display()))
}

fn main() -> ExitCode {
    let args = Args::parse();
    let alg: Algorithm = match args.alg.parse() {
        Ok(alg) => alg,
        Err(_) => {
            eprintln!("mint_token: unknown --alg {}", args.alg);
            return ExitCode::FAILURE;
        }
    };
    let key = match encoding_key(&args, alg) {
        Ok(key) => key,
        Err(e) => {
            eprintln!("mint_token: {e}");
            return ExitCode::FAILURE;
        }
    };
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
    let mut header = Header::new(alg);
    header.kid = Some(args.kid);
    match encode(&header, &claims, &key) {
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
