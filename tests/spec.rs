//! The published contract (`amqp-gateway spec`, admin `/asyncapi.json` and `/openapi.json`),
//! checked by real validators: `@asyncapi/parser` (AsyncAPI 3.0, with its Spectral ruleset) and
//! `@redocly/openapi-core` (OpenAPI 3.1, `recommended` ruleset), pinned in
//! `tests/spec/package-lock.json` and installed by `tests/spec/install.sh` (run by
//! `scripts/test.sh`, which exports `SPEC_VALIDATORS_DIR`; run here when it is unset).
//!
//! What it proves:
//! 1. The documents of the demo config (`config/gateway.toml`, no environment overrides) pass
//!    both validators with no error, and say what the gateway does: one channel per (exchange,
//!    routing key) with `{param}` addresses and the AMQP binding, the bearer scheme, 201 +
//!    `Location` and 202 on publish routes, 429 + rate-limit headers only where a limit is, no
//!    broker credentials anywhere.
//!    A config with every other route kind and setting passes them too.
//! 2. The validators can fail: documents broken on purpose (a missing `info.version`, an
//!    operation sending another channel's message, a bad AMQP binding, an undeclared path
//!    parameter, a dangling `$ref`) are rejected.
//! 3. `docs/asyncapi.json` and `docs/openapi.json` are what the binary generates today.
//! 4. `spec` exits 64 on an invalid config, like `check`.
//! 5. The admin listener serves the documents of the running config, and after `POST /reload`
//!    those of the new one.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::{Value, json};
use support::gateway::{base_config, topic_exchange};
use support::process::BINARY;
use support::{TestGateway, amqp_url, unique_name};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Where the pinned validators are installed: `SPEC_VALIDATORS_DIR`, or installed now by
/// `tests/spec/install.sh` (idempotent; node and npm must be there).
fn validators() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(dir) = std::env::var_os("SPEC_VALIDATORS_DIR") {
            return PathBuf::from(dir);
        }
        let out = Command::new(format!("{ROOT}/tests/spec/install.sh"))
            .output()
            .expect("run tests/spec/install.sh");
        assert!(
            out.status.success(),
            "tests/spec/install.sh failed (node and npm are needed; scripts/test.sh installs them):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
    })
}

/// Runs the validator of `kind` (`asyncapi`, `openapi`) over `document`: whether it passed,
/// and what it printed.
fn validate(kind: &str, document: &Value) -> (bool, String) {
    let file = std::env::temp_dir().join(format!("{}.json", unique_name(kind)));
    std::fs::write(&file, serde_json::to_vec_pretty(document).unwrap()).unwrap();
    let out = Command::new("node")
        .arg(format!("{ROOT}/tests/spec/validate.mjs"))
        .arg(kind)
        .arg(&file)
        .env("SPEC_VALIDATORS_DIR", validators())
        .output()
        .expect("run node (the validators need it)");
    let _ = std::fs::remove_file(&file);
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), printed)
}

fn assert_valid(kind: &str, document: &Value) {
    let (ok, printed) = validate(kind, document);
    assert!(ok, "{kind} document rejected by its validator:\n{printed}");
}

/// `amqp-gateway spec --config FILE --format FORMAT` with an empty environment (so the demo
/// config's `${VAR:-default}`s take their defaults): exit code, stdout, stderr.
fn spec_cli(config: &Path, format: &str) -> (Option<i32>, String, String) {
    let out = Command::new(BINARY)
        .current_dir(ROOT)
        .env_clear()
        .args(["spec", "--config"])
        .arg(config)
        .args(["--format", format])
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn demo(format: &str) -> (String, Value) {
    let (code, text, stderr) = spec_cli(Path::new("config/gateway.toml"), format);
    assert_eq!(code, Some(0), "{stderr}");
    let value = serde_json::from_str(&text).unwrap();
    (text, value)
}

#[test]
fn the_demo_contract_passes_the_validators_and_says_what_the_gateway_does() {
    let (text, asyncapi) = demo("asyncapi");
    assert_valid("asyncapi", &asyncapi);
    assert_eq!(asyncapi["asyncapi"], "3.0.0");
    assert_eq!(asyncapi["info"]["version"], env!("CARGO_PKG_VERSION"));
    // Credentials of `amqp://guest:guest@…` never reach the document.
    assert!(!text.contains("guest"), "{text}");
    assert_eq!(
        asyncapi["servers"],
        json!({ "broker": {
            "host": "127.0.0.1:5672", "protocol": "amqp", "protocolVersion": "0.9.1",
            "description": asyncapi["servers"]["broker"]["description"],
        }})
    );
    // Four publish routes, four (exchange, routing key) pairs.
    let channels = asyncapi["channels"].as_object().unwrap();
    assert_eq!(channels.len(), 4, "{:?}", channels.keys());
    let updated = &channels["users.user.id.updated"];
    assert_eq!(updated["address"], "user.{id}.updated");
    assert!(updated["parameters"]["id"]["description"].is_string());
    assert_eq!(
        updated["bindings"]["amqp"],
        json!({
            "is": "routingKey",
            "exchange": { "name": "users", "type": "topic", "durable": true, "autoDelete": false, "vhost": "/" },
            "bindingVersion": "0.3.0",
        })
    );
    // Every `{param}` of an address is declared (the parser does not check this in 3.0).
    for (id, channel) in channels {
        let address = channel["address"].as_str().unwrap();
        for param in address.split('{').skip(1).filter_map(|p| p.split_once('}')) {
            assert!(
                channel["parameters"][param.0].is_object(),
                "channel {id}: `{{{}}}` is not declared",
                param.0
            );
        }
    }
    let operations = asyncapi["operations"].as_object().unwrap();
    assert_eq!(operations.len(), 4);
    for op in operations.values() {
        assert_eq!(op["action"], "send");
        assert_eq!(op["bindings"]["amqp"]["deliveryMode"], 2);
        assert_eq!(op["bindings"]["amqp"]["mandatory"], true);
    }
    let messages = &asyncapi["components"]["messages"];
    // The schema route's payload is its schema; the others are permissive.
    assert_eq!(
        messages["create-user"]["payload"]["$ref"],
        "#/components/schemas/create-user"
    );
    assert_eq!(
        asyncapi["components"]["schemas"]["create-user"]["required"],
        json!(["name"])
    );
    assert!(messages["update-user"]["payload"].get("$ref").is_none());
    // CloudEvents binary mode on `update-user` only: its attributes are required headers.
    let updated = &messages["update-user"]["headers"];
    assert_eq!(
        updated["properties"]["cloudEvents_source"]["const"],
        "urn:amqp-gateway:route:update-user"
    );
    for attribute in ["specversion", "id", "source", "type", "subject", "time"] {
        let name = json!(format!("cloudEvents_{attribute}"));
        assert!(
            updated["required"].as_array().unwrap().contains(&name),
            "{name} not required: {updated}"
        );
    }
    assert!(
        messages["delete-user"]["headers"]["properties"]
            .get("cloudEvents_id")
            .is_none()
    );
    // Static properties and headers; identity headers only on the protected route.
    let deleted = &messages["delete-user"];
    assert_eq!(deleted["bindings"]["amqp"]["messageType"], "UserDeleted");
    assert_eq!(
        deleted["headers"]["properties"]["x-schema-version"]["const"],
        "1"
    );
    assert!(deleted["headers"]["properties"].get("x-auth-sub").is_none());
    let banned = &messages["ban-user"]["headers"];
    assert!(
        banned["required"]
            .as_array()
            .unwrap()
            .contains(&json!("x-auth-sub"))
    );
    assert!(banned["properties"]["x-auth-email"].is_object());
    assert_eq!(
        messages["ban-user"]["x-amqp-properties"]["properties"]["app_id"]["const"],
        "amqp-gateway"
    );

    let (_, openapi) = demo("openapi");
    assert_valid("openapi", &openapi);
    assert_eq!(openapi["openapi"], "3.1.0");
    assert_eq!(openapi["info"]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(
        openapi["components"]["securitySchemes"]["bearerAuth"],
        json!({
            "type": "http", "scheme": "bearer", "bearerFormat": "JWT",
            "description": openapi["components"]["securitySchemes"]["bearerAuth"]["description"],
        })
    );
    let paths = &openapi["paths"];
    // 201 + Location (required) on create-user; 202 without on update-user.
    let create = &paths["/users"]["post"]["responses"];
    assert_eq!(create["201"]["headers"]["Location"]["required"], true);
    assert!(create.get("202").is_none());
    assert!(
        create["422"]["description"]
            .as_str()
            .unwrap()
            .contains("invalid-event")
    );
    let update = &paths["/users/{id}"]["put"];
    assert!(
        update["responses"]["202"]["headers"]
            .get("Location")
            .is_none()
    );
    assert_eq!(update["security"], json!([]));
    assert!(update["responses"].get("401").is_none());
    assert!(update["responses"].get("429").is_none());
    // The protected write: bearer, 401 and 403, the role in the description.
    let ban = &paths["/admin/users/{id}/ban"]["post"];
    assert_eq!(ban["security"], json!([{ "bearerAuth": [] }]));
    assert!(ban["description"].as_str().unwrap().contains("`admin`"));
    for code in ["401", "403", "503", "504"] {
        assert!(
            ban["responses"].get(code).is_some(),
            "ban-user lacks {code}"
        );
    }
    // The rate-limited proxied write: 429 with its headers, the upstream's answer, 502/504.
    let login = &paths["/auth/login"]["post"]["responses"];
    assert_eq!(
        login["429"]["headers"]["RateLimit-Policy"]["$ref"],
        "#/components/headers/RateLimit-Policy"
    );
    assert!(login["429"]["headers"].get("Retry-After").is_some());
    for code in ["default", "502", "504"] {
        assert!(login.get(code).is_some(), "login lacks {code}");
    }
    // Reads: the cache's headers, 304; the catch-all in OpenAPI syntax.
    let read = &paths["/users/{id}"]["get"]["responses"];
    for header in ["ETag", "Cache-Control", "Vary", "Age", "Last-Modified"] {
        assert!(read["200"]["headers"].get(header).is_some(), "{header}");
    }
    assert!(read.get("304").is_some());
    assert!(paths.get("/catalog/{rest}").is_some());
    assert_eq!(
        openapi["components"]["schemas"]["Problem"]["required"],
        json!(["type", "title", "status", "detail"])
    );
}

/// Every kind of route and setting the generators branch on, in one config: a cluster with a
/// password, the default exchange, several and non-JSON content types, static properties, a
/// draft-07 schema with local `$ref`s, scopes with `match = "all"`, an `authenticated` route,
/// claim-keyed limits, a catch-all read, a proxied write, `public_host`.
#[test]
fn every_route_kind_passes_the_validators() {
    let dir = std::env::temp_dir().join(unique_name("spec-kinds"));
    std::fs::create_dir_all(&dir).unwrap();
    let schema = dir.join("order.json");
    std::fs::write(
        &schema,
        r##"{
  "$schema": "http://json-schema.org/draft-07/schema#",
  "$id": "https://example.com/order.json",
  "type": "object",
  "required": ["lines"],
  "properties": {
    "lines": { "type": "array", "items": { "$ref": "#/definitions/line" } },
    "ship_to": { "$ref": "https://example.com/order.json#/definitions/address" }
  },
  "definitions": {
    "line": { "type": "object", "properties": { "sku": { "type": "string" }, "qty": { "type": "integer", "minimum": 1 } } },
    "address": { "type": "string" }
  }
}"##,
    )
    .unwrap();
    let text = format!(
        r#"
[server]
listen = "0.0.0.0:8080"
admin_listen = "127.0.0.1:9090"
public_host = "api.example.com"

[amqp]
urls = ["amqp://app:n0t-in-docs@rabbit-1:5672/shop", "amqp://app:n0t-in-docs@rabbit-2:5673/shop"]

[[amqp.exchanges]]
name = "orders"
type = "direct"

[[amqp.exchanges]]
name = "audit"
type = "fanout"

[auth]
issuer = "https://idp.example"
audience = "shop"
propagate_claims = {{ tenant = "org.tenant" }}
[[auth.keys]]
kid = "k1"
algorithm = "HS256"
secret = "0123456789abcdef0123456789abcdef"

[upstreams.shop]
targets = ["http://127.0.0.1:9001"]

[[routes]]
name = "place order"
path = "/tenants/{{tenant}}/orders"
methods = ["POST"]
auth = {{ scopes = ["orders:write", "orders:place"], match = "all" }}
schema = "{schema}"
rate_limits = [ {{ by = "claim:tenant", limit = 100, per = "1m" }}, {{ by = "subject", limit = 5, per = "1s", burst = 2 }} ]
[routes.publish]
exchange = "orders"
routing_key = "order.{{tenant}}.placed"
status = 201
location = "/tenants/{{tenant}}/orders/{{event_id}}"
content_types = ["application/json", "application/vnd.shop.order+json"]
properties = {{ type = "OrderPlaced", priority = 7 }}

[[routes]]
name = "upload"
path = "/uploads/{{kind}}"
methods = ["PUT", "DELETE"]
auth = "authenticated"
publish = {{ exchange = "", routing_key = "uploads.{{kind}}", allow_client_routing_key = true, content_types = ["text/plain", "application/octet-stream"] }}

[[routes]]
name = "audit"
path = "/audit"
methods = ["POST"]
auth = "public"
publish = {{ exchange = "audit", routing_key = "", properties = {{ content_type = "application/x-ndjson" }}, content_types = ["application/x-ndjson"] }}

[[routes]]
name = "files"
path = "/files/{{*path}}"
methods = ["GET", "HEAD"]
upstream = "shop"
etag = false
cache = {{ heuristic = true }}

[[routes]]
name = "checkout"
path = "/checkout"
methods = ["POST", "OPTIONS"]
auth = {{ roles = ["buyer"] }}
upstream = "shop"
rate_limits = [ {{ by = "route", limit = 1000, per = "1s" }} ]
"#,
        schema = schema.display()
    );
    let config = amqp_gateway::Config::from_toml(&text, "kinds.toml", |_| None).unwrap();
    let asyncapi = amqp_gateway::spec::asyncapi::document(&config);
    let openapi = amqp_gateway::spec::openapi::document(&config);
    let _ = std::fs::remove_dir_all(&dir);
    assert_valid("asyncapi", &asyncapi);
    assert_valid("openapi", &openapi);

    for document in [&asyncapi, &openapi] {
        let text = document.to_string();
        assert!(
            !text.contains("n0t-in-docs") && !text.contains("app@"),
            "{text}"
        );
        // The schema's `$id`-relative and local `$ref`s now point into the component.
        let order = &document["components"]["schemas"]["place_order"];
        assert_eq!(
            order["properties"]["lines"]["items"]["$ref"],
            "#/components/schemas/place_order/definitions/line"
        );
        assert_eq!(
            order["properties"]["ship_to"]["$ref"],
            "#/components/schemas/place_order/definitions/address"
        );
    }
    assert_eq!(asyncapi["servers"]["broker-1"]["host"], "rabbit-1:5672");
    assert_eq!(asyncapi["servers"]["broker-2"]["host"], "rabbit-2:5673");
    let channels = asyncapi["channels"].as_object().unwrap();
    assert_eq!(channels.len(), 3, "{:?}", channels.keys());
    let queue = channels
        .values()
        .find(|c| c["address"] == "uploads.{kind}")
        .unwrap();
    assert_eq!(
        queue["bindings"]["amqp"]["exchange"],
        json!({ "name": "", "type": "default", "vhost": "shop" })
    );
    let upload = &asyncapi["components"]["messages"]["upload"];
    assert!(
        upload.get("contentType").is_none(),
        "two media types: no single contentType"
    );
    assert!(
        upload["headers"]["required"]
            .as_array()
            .unwrap()
            .contains(&json!("x-auth-sub"))
    );
    let audit = &asyncapi["components"]["messages"]["audit"];
    assert_eq!(audit["contentType"], "application/x-ndjson");

    let paths = &openapi["paths"];
    let place = &paths["/tenants/{tenant}/orders"]["post"];
    assert!(
        place["description"]
            .as_str()
            .unwrap()
            .contains("all of the scopes `orders:write`, `orders:place`")
    );
    for code in ["201", "401", "403", "421", "422", "429"] {
        assert!(
            place["responses"].get(code).is_some(),
            "place order lacks {code}"
        );
    }
    assert_eq!(
        place["requestBody"]["content"]["application/vnd.shop.order+json"]["schema"]["$ref"],
        "#/components/schemas/place_order"
    );
    // `authenticated`: a token, no role: 401 but never 403.
    let upload = &paths["/uploads/{kind}"]["put"]["responses"];
    assert!(upload.get("401").is_some() && upload.get("403").is_none());
    let files = &paths["/files/{path}"]["get"]["responses"];
    assert!(files["200"]["headers"].get("X-Cache").is_some());
    assert!(paths["/checkout"]["options"]["responses"]["default"].is_object());
    assert_eq!(openapi["servers"][0]["url"], "https://api.example.com");
}

#[test]
fn the_validators_reject_broken_documents() {
    let (_, asyncapi) = demo("asyncapi");
    let (_, openapi) = demo("openapi");

    let mut no_version = asyncapi.clone();
    no_version["info"]
        .as_object_mut()
        .unwrap()
        .remove("version");
    let (ok, printed) = validate("asyncapi", &no_version);
    assert!(
        !ok,
        "an AsyncAPI document without info.version passed:\n{printed}"
    );
    assert!(printed.contains("version"), "{printed}");

    // (An address `{param}` without a `parameters` entry is NOT caught by @asyncapi/parser
    // 3.6.6; the demo test checks that itself.)
    let mut foreign = asyncapi.clone();
    foreign["operations"]["update-user"]["messages"] =
        json!([{ "$ref": "#/channels/users.user.id.banned/messages/ban-user" }]);
    let (ok, printed) = validate("asyncapi", &foreign);
    assert!(
        !ok,
        "an operation sending another channel's message passed:\n{printed}"
    );
    assert!(
        printed.contains("asyncapi3-operation-messages-from-referred-channel"),
        "{printed}"
    );

    let mut bad_binding = asyncapi.clone();
    bad_binding["channels"]["users.user.id.updated"]["bindings"]["amqp"]["exchange"]["type"] =
        json!("bogus");
    let (ok, printed) = validate("asyncapi", &bad_binding);
    assert!(
        !ok,
        "an AMQP binding with exchange type `bogus` passed:\n{printed}"
    );

    let mut no_param = openapi.clone();
    no_param["paths"]["/users/{id}"]["put"]
        .as_object_mut()
        .unwrap()
        .remove("parameters");
    let (ok, printed) = validate("openapi", &no_param);
    assert!(!ok, "an undeclared path parameter passed:\n{printed}");
    assert!(printed.contains("path-parameters-defined"), "{printed}");

    let mut dangling = openapi.clone();
    dangling["components"]["schemas"]
        .as_object_mut()
        .unwrap()
        .remove("Problem");
    let (ok, printed) = validate("openapi", &dangling);
    assert!(!ok, "a dangling $ref passed:\n{printed}");
}

#[test]
fn the_checked_in_documents_are_current() {
    for (format, file) in [
        ("asyncapi", "docs/asyncapi.json"),
        ("openapi", "docs/openapi.json"),
    ] {
        let (fresh, _) = demo(format);
        let checked_in = std::fs::read_to_string(Path::new(ROOT).join(file)).unwrap_or_default();
        assert!(
            checked_in == fresh,
            "{file} is stale; regenerate it with:\n  cargo build && env -i target/debug/amqp-gateway spec --config config/gateway.toml --format {format} > {file}"
        );
    }
}

#[test]
fn spec_exits_64_on_an_invalid_config() {
    let file = std::env::temp_dir().join(format!("{}.toml", unique_name("spec-invalid")));
    std::fs::write(&file, "[server]\nlisten = \"nowhere\"\n").unwrap();
    let (code, stdout, stderr) = spec_cli(&file, "openapi");
    let _ = std::fs::remove_file(&file);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(stderr.contains("invalid config"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_serves_the_contract_of_the_running_config() {
    let exchange = unique_name("spec");
    let route = |name: &str, path: &str, key: &str| {
        format!(
            "\n[[routes]]\nname = \"{name}\"\npath = \"{path}\"\nmethods = [\"POST\"]\nauth = \"public\"\npublish = {{ exchange = \"{exchange}\", routing_key = \"{key}\" }}\n"
        )
    };
    let head = format!("{}{}", base_config(&amqp_url()), topic_exchange(&exchange));
    let file = std::env::temp_dir().join(format!("{}.toml", unique_name("spec-admin")));
    std::fs::write(
        &file,
        format!("{head}{}", route("orders", "/orders/{id}", "order.{id}")),
    )
    .unwrap();
    let gw = TestGateway::from_file(&file).await;
    gw.wait_ready(Duration::from_secs(20)).await;
    let client = reqwest::Client::new();
    let fetch = async |path: &str| -> Value {
        let response = client
            .get(format!("{}{path}", gw.admin_url))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
        response.json().await.unwrap()
    };

    let asyncapi = fetch("/asyncapi.json").await;
    let openapi = fetch("/openapi.json").await;
    let config = amqp_gateway::Config::load(&file, |_| None).unwrap();
    assert_eq!(asyncapi, amqp_gateway::spec::asyncapi::document(&config));
    assert_eq!(openapi, amqp_gateway::spec::openapi::document(&config));
    assert!(!asyncapi.to_string().contains("guest"));
    assert_eq!(asyncapi["channels"].as_object().unwrap().len(), 1);
    assert_valid("asyncapi", &asyncapi);
    assert_valid("openapi", &openapi);

    // A second route; after the reload both documents describe it.
    std::fs::write(
        &file,
        format!(
            "{head}{}{}",
            route("orders", "/orders/{id}", "order.{id}"),
            route("refunds", "/refunds/{id}", "refund.{id}.requested")
        ),
    )
    .unwrap();
    let reloaded = client
        .post(format!("{}/reload", gw.admin_url))
        .send()
        .await
        .unwrap();
    assert_eq!(reloaded.status(), 200);
    let asyncapi = fetch("/asyncapi.json").await;
    let channels = asyncapi["channels"].as_object().unwrap();
    assert_eq!(channels.len(), 2, "{:?}", channels.keys());
    assert!(
        channels
            .values()
            .any(|c| c["address"] == "refund.{id}.requested")
    );
    let openapi = fetch("/openapi.json").await;
    assert!(openapi["paths"]["/refunds/{id}"]["post"]["responses"]["202"].is_object());
    gw.shutdown().await;
    let _ = std::fs::remove_file(&file);
}
