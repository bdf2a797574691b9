//! Unit tests of the generators on small configs; the real validators run in `tests/spec.rs`.

use serde_json::{Value, json};

use super::{Format, Ids, document};
use crate::config::Config;

fn config(extra: &str) -> Config {
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:8080"
admin_listen = "127.0.0.1:9090"

[amqp]
urls = ["amqp://app:pa55word@rabbit-1:5672/prod", "amqp://app:pa55word@rabbit-2:5673/prod"]

[[amqp.exchanges]]
name = "orders"
type = "topic"

[auth]
issuer = "i"
audience = "a"
propagate_claims = {{ tenant = "tenant" }}
[[auth.keys]]
kid = "k"
algorithm = "HS256"
secret = "0123456789abcdef0123456789abcdef"

[[routes]]
name = "create order"
path = "/orders/{{customer}}"
methods = ["POST"]
auth = {{ roles = ["clerk"] }}
publish = {{ exchange = "orders", routing_key = "order.{{customer}}.created", status = 201, location = "/orders/{{event_id}}" }}
rate_limits = [ {{ by = "subject", limit = 5, per = "1m" }} ]

[[routes]]
name = "create order!"
path = "/orders/{{customer}}/rush"
methods = ["PUT", "DELETE"]
auth = "public"
publish = {{ exchange = "orders", routing_key = "order.{{customer}}.created", properties = {{ type = "OrderCreated", priority = 5 }}, headers = {{ "x-schema-version" = "2" }} }}
{extra}
"#
    );
    Config::from_toml(&text, "test", |_| None).unwrap()
}

#[test]
fn ids_are_sanitised_and_unique_in_order() {
    let mut ids = Ids::default();
    assert_eq!(ids.take("create order"), "create_order");
    assert_eq!(ids.take("create_order"), "create_order-2");
    assert_eq!(ids.take("create/order"), "create_order-3");
    assert_eq!(ids.take(""), "_");
}

#[test]
fn asyncapi_shares_one_channel_per_exchange_and_key_and_hides_credentials() {
    let doc = document(&config(""), Format::Asyncapi);
    let text = doc.to_string();
    assert!(
        !text.contains("pa55word") && !text.contains("app@"),
        "{text}"
    );
    assert_eq!(doc["servers"]["broker-1"]["host"], "rabbit-1:5672");
    assert_eq!(doc["servers"]["broker-2"]["host"], "rabbit-2:5673");
    let channels = doc["channels"].as_object().unwrap();
    assert_eq!(channels.len(), 1, "{channels:?}");
    let (id, channel) = channels.iter().next().unwrap();
    assert_eq!(id, "orders.order.customer.created");
    assert_eq!(channel["address"], "order.{customer}.created");
    assert!(channel["parameters"]["customer"].is_object());
    assert_eq!(
        channel["bindings"]["amqp"]["exchange"],
        json!({"name": "orders", "type": "topic", "durable": true, "autoDelete": false, "vhost": "prod"})
    );
    assert_eq!(channel["messages"].as_object().unwrap().len(), 2);
    let ops = doc["operations"].as_object().unwrap();
    assert_eq!(ops.len(), 2);
    assert_eq!(ops["create_order"]["action"], "send");
    assert_eq!(ops["create_order_"]["bindings"]["amqp"]["priority"], 5);
    let rush = &doc["components"]["messages"]["create_order_"];
    assert_eq!(rush["bindings"]["amqp"]["messageType"], "OrderCreated");
    assert_eq!(
        rush["headers"]["properties"]["x-schema-version"]["const"],
        "2"
    );
    // Public route: no identity headers; protected: x-auth-sub required, claims optional.
    assert!(rush["headers"]["properties"].get("x-auth-sub").is_none());
    let created = &doc["components"]["messages"]["create_order"];
    let required = created["headers"]["required"].as_array().unwrap();
    assert!(required.contains(&json!("x-auth-sub")));
    assert!(!required.contains(&json!("x-auth-tenant")));
    assert!(created["headers"]["properties"]["x-auth-tenant"].is_object());
    assert!(required.contains(&json!("x-param-customer")));
    // DELETE without schema may publish without a content type.
    let props = rush["x-amqp-properties"]["required"].as_array().unwrap();
    assert!(!props.contains(&json!("content_type")));
}

#[test]
fn openapi_documents_auth_limits_and_the_write_contract() {
    let doc = document(&config(""), Format::Openapi);
    let post = &doc["paths"]["/orders/{customer}"]["post"];
    assert_eq!(post["operationId"], "create_order");
    assert_eq!(post["security"], json!([{"bearerAuth": []}]));
    assert!(post["description"].as_str().unwrap().contains("`clerk`"));
    let responses = post["responses"].as_object().unwrap();
    for code in [
        "201", "400", "401", "403", "408", "413", "415", "422", "429", "431", "503", "504",
    ] {
        assert!(responses.contains_key(code), "missing {code}");
    }
    assert!(!responses.contains_key("202") && !responses.contains_key("421"));
    assert_eq!(responses["201"]["headers"]["Location"]["required"], true);
    assert!(responses["201"]["headers"].get("RateLimit").is_some());
    let rush = &doc["paths"]["/orders/{customer}/rush"];
    assert_eq!(rush["put"]["operationId"], "create_order_-put");
    assert_eq!(rush["delete"]["security"], json!([]));
    assert_eq!(rush["delete"]["requestBody"]["required"], false);
    let rush_responses = rush["put"]["responses"].as_object().unwrap();
    for absent in ["401", "403", "429"] {
        assert!(
            !rush_responses.contains_key(absent),
            "{absent} on a public, unlimited route"
        );
    }
    assert_eq!(
        doc["components"]["securitySchemes"]["bearerAuth"]["bearerFormat"],
        "JWT"
    );
}

#[test]
fn schemas_are_embedded_with_their_local_refs_rewritten() {
    let dir = std::env::temp_dir().join(format!("spec-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("s.json");
    std::fs::write(
        &file,
        r##"{"$id": "https://example.com/s.json", "type": "object",
            "properties": {"a": {"$ref": "#/$defs/a"}, "b": {"$ref": "https://example.com/s.json#/$defs/a"},
                           "c": {"const": {"$ref": "#/kept"}}},
            "$defs": {"a": {"type": "string"}}}"##,
    )
    .unwrap();
    let extra = format!(
        "\n[[routes]]\nname = \"typed\"\npath = \"/typed\"\nmethods = [\"POST\"]\nauth = \"public\"\nschema = \"{}\"\npublish = {{ exchange = \"orders\", routing_key = \"typed\" }}\n",
        file.display()
    );
    let config = config(&extra);
    for format in [Format::Asyncapi, Format::Openapi] {
        let doc = document(&config, format);
        let schema = &doc["components"]["schemas"]["typed"];
        assert!(schema.get("$id").is_none());
        assert_eq!(
            schema["properties"]["a"]["$ref"],
            "#/components/schemas/typed/$defs/a"
        );
        assert_eq!(
            schema["properties"]["b"]["$ref"],
            "#/components/schemas/typed/$defs/a"
        );
        assert_eq!(
            schema["properties"]["c"]["const"],
            json!({"$ref": "#/kept"})
        );
    }
    let asyncapi = document(&config, Format::Asyncapi);
    assert_eq!(
        asyncapi["components"]["messages"]["typed"]["payload"],
        json!({"$ref": "#/components/schemas/typed"})
    );
    let openapi = document(&config, Format::Openapi);
    let body = &openapi["paths"]["/typed"]["post"]["requestBody"];
    assert_eq!(
        body["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/typed"
    );
    assert!(
        openapi["paths"]["/typed"]["post"]["responses"]["422"]["description"]
            .as_str()
            .unwrap()
            .contains("invalid-event")
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn output_is_deterministic() {
    let a = super::to_pretty_json(&document(&config(""), Format::Openapi));
    let b = super::to_pretty_json(&document(&config(""), Format::Openapi));
    assert_eq!(a, b);
    assert!(a.ends_with("}\n"));
    let _: Value = serde_json::from_str(&a).unwrap();
}
