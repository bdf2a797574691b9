use amqp_gateway::auth::Authenticator;
use amqp_gateway::config::AuthConfig;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use std::time::Instant;
fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        for (alg, cache) in [("HS256", 0), ("HS256", 10000), ("RS256", 0), ("RS256", 10000), ("ES256", 0), ("ES256", 10000)] {
            let key = match alg {
                "HS256" => "secret = \"0123456789abcdef0123456789abcdef\"".to_string(),
                "RS256" => "public_key_pem = \"tests/fixtures/keys/rsa1.pub.pem\"".to_string(),
                _ => "public_key_pem = \"tests/fixtures/keys/ec256.pub.pem\"".to_string(),
            };
            let cfg: AuthConfig = toml::from_str(&format!("issuer = \"i\"\naudience = \"a\"\ntoken_cache_size = {cache}\n[[keys]]\nkid = \"k\"\nalgorithm = \"{alg}\"\n{key}\n")).unwrap();
            let auth = Authenticator::start(&cfg).await.unwrap();
            let ek = match alg {
                "HS256" => EncodingKey::from_secret(b"0123456789abcdef0123456789abcdef"),
                "RS256" => EncodingKey::from_rsa_pem(&std::fs::read("tests/fixtures/keys/rsa1.key").unwrap()).unwrap(),
                _ => EncodingKey::from_ec_pem(&std::fs::read("tests/fixtures/keys/ec256.key").unwrap()).unwrap(),
            };
            let mut h = Header::new(alg.parse::<Algorithm>().unwrap());
            h.kid = Some("k".into());
            let claims = serde_json::json!({"sub":"alice","iss":"i","aud":"a","exp": jsonwebtoken::get_current_timestamp()+3600, "roles":["admin"], "scope":"a b c", "email":"alice@example.com"});
            let token = encode(&h, &claims, &ek).unwrap();
            let n = 20000;
            auth.verify(&token).await.unwrap();
            let t = Instant::now();
            for _ in 0..n { auth.verify(&token).await.unwrap(); }
            let per = t.elapsed().as_secs_f64() * 1e6 / n as f64;
            println!("{alg} cache={cache}: {per:.2} µs/verify");
        }
    });
}
