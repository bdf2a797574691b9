//! Config loading: one failing case per validation rule, plus the happy path.

use super::*;

const BASE: &str = r#"
[server]
listen = "127.0.0.1:8080"
admin_listen = "127.0.0.1:9090"

[amqp]
url = "amqp://guest:guest@127.0.0.1:5672/%2f"

[[amqp.exchanges]]
name = "users"
type = "topic"

[[routes]]
name = "update-user"
path = "/users/{id}"
methods = ["PUT", "PATCH"]
auth = "public"
publish = { exchange = "users", routing_key = "user.{id}.updated" }
"#;

fn no_env(_: &str) -> Option<String> {
    None
}

fn load(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml(text, "test.toml", no_env)
}

/// Loads BASE with `from` replaced by `to` and returns the error line.
fn error_of(from: &str, to: &str) -> String {
    assert!(BASE.contains(from), "fixture does not contain {from:?}");
    match load(&BASE.replacen(from, to, 1)) {
        Ok(_) => panic!("replacing {from:?} with {to:?} should fail"),
        Err(e) => e.to_string(),
    }
}

fn with_route(extra: &str) -> String {
    format!("{BASE}\n{extra}")
}

fn route_error(extra: &str) -> String {
    match load(&with_route(extra)) {
        Ok(_) => panic!("route should be rejected:\n{extra}"),
        Err(e) => e.to_string(),
    }
}

fn assert_has(err: &str, parts: &[&str]) {
    for p in parts {
        assert!(err.contains(p), "error {err:?} should contain {p:?}");
    }
}

#[test]
fn base_config_loads_with_defaults() {
    let c = load(BASE).unwrap();
    assert_eq!(c.server.max_body_bytes, 1024 * 1024);
    assert_eq!(c.amqp.connections, 1);
    assert_eq!(c.amqp.channels_per_connection, 4);
    assert_eq!(c.amqp.confirm_timeout, Duration::from_secs(5));
    assert_eq!(c.routes.len(), 1);
    let RouteAction::Publish(p) = &c.routes[0].action else {
        panic!("publish route expected");
    };
    assert_eq!(p.status, 202);
    assert_eq!(p.content_types, ["application/json"]);
    assert_eq!(c.routes[0].path_params, ["id"]);
}

#[test]
fn secrets_come_from_the_environment_and_are_masked() {
    let text = BASE.replace(
        "amqp://guest:guest@127.0.0.1:5672/%2f",
        "${AMQP_URL:-amqp://x@localhost}",
    );
    let env = |k: &str| (k == "AMQP_URL").then(|| "amqp://u:s3cr3t@10.0.0.1:5672/%2f".to_owned());
    let c = Config::from_toml(&text, "t", env).unwrap();
    let url = &c.amqp.urls[0];
    assert_eq!(url.authority(), "10.0.0.1:5672");
    assert_eq!(url.uri().authority.userinfo.password, "s3cr3t");
    assert!(!format!("{c:?}").contains("s3cr3t"));
}

#[test]
fn missing_variable_names_file_line_and_variable() {
    let err = error_of("127.0.0.1:8080", "${LISTEN}");
    assert_has(&err, &["test.toml:3:", "LISTEN", "not set"]);
}

#[test]
fn syntax_error_names_the_line() {
    let err = error_of("methods = [\"PUT\", \"PATCH\"]", "methods = [");
    assert_has(&err, &["test.toml:17:", "expected"]);
}

#[test]
fn unknown_keys_are_rejected_with_their_path() {
    let err = error_of("[amqp]\n", "[amqp]\nchanels = 3\n");
    assert_has(&err, &["test.toml:7:", "amqp", "chanels"]);
}

#[test]
fn typed_values_report_key_and_line() {
    let err = error_of("127.0.0.1:9090", "not-an-address");
    assert_has(&err, &["server.admin_listen", "test.toml:4:"]);
    let err = error_of("[amqp]\n", "[amqp]\nconfirm_timeout = \"soon\"\n");
    assert_has(&err, &["amqp.confirm_timeout"]);
    let err = error_of("type = \"topic\"", "type = \"round-robin\"");
    assert_has(&err, &["amqp.exchanges[0].type", "round-robin"]);
}

#[test]
fn server_rules() {
    assert_has(
        &error_of("127.0.0.1:9090", "127.0.0.1:8080"),
        &["server.admin_listen", "differ"],
    );
    assert_has(
        &error_of(
            "admin_listen = \"127.0.0.1:9090\"",
            "admin_listen = \"127.0.0.1:9090\"\nmax_body_bytes = 0",
        ),
        &["server.max_body_bytes"],
    );
    assert_has(
        &error_of(
            "admin_listen = \"127.0.0.1:9090\"",
            "admin_listen = \"127.0.0.1:9090\"\nmax_body_bytes = 99999999999",
        ),
        &["server.max_body_bytes"],
    );
    assert_has(
        &error_of(
            "admin_listen = \"127.0.0.1:9090\"",
            "admin_listen = \"127.0.0.1:9090\"\ntrusted_proxies = [\"nope\"]",
        ),
        &["server.trusted_proxies"],
    );
    for (k, v) in [
        ("max_header_bytes", "100"),
        ("max_headers", "0"),
        ("header_read_timeout", "\"0s\""),
        ("body_read_timeout", "\"0s\""),
        ("write_timeout", "\"0s\""),
        ("max_connections", "0"),
    ] {
        let err = error_of(
            "admin_listen = \"127.0.0.1:9090\"",
            &format!("admin_listen = \"127.0.0.1:9090\"\n{k} = {v}"),
        );
        assert_has(&err, &[&format!("server.{k}")]);
    }
}

#[test]
fn amqp_rules() {
    let err = error_of(
        "amqp://guest:guest@127.0.0.1:5672/%2f",
        "http://guest:pw@host",
    );
    assert_has(&err, &["amqp.url"]);
    assert!(!err.contains("pw"), "the URL must not be echoed: {err}");
    for (k, v) in [
        ("connections", "0"),
        ("connections", "65"),
        ("channels_per_connection", "0"),
        ("channels_per_connection", "129"),
        ("confirm_timeout", "\"0s\""),
        ("connect_timeout", "\"0s\""),
    ] {
        let err = error_of("[amqp]\n", &format!("[amqp]\n{k} = {v}\n"));
        assert_has(&err, &[&format!("amqp.{k}")]);
    }
    assert_has(
        &error_of("[amqp]\n", "[amqp]\ntls = { server_name = \"rabbit\" }\n"),
        &["amqp.tls", "amqps://"],
    );
    let url_line = "url = \"amqp://guest:guest@127.0.0.1:5672/%2f\"";
    let cluster = BASE.replacen(
        url_line,
        "urls = [\"amqp://u:p@n1:5672/%2f\", \"amqp://u:p@n2:5672/%2f\", \"amqp://u:p@n3:5672/%2f\"]",
        1,
    );
    let amqp = load(&cluster).unwrap().amqp;
    assert_eq!(amqp.urls.len(), 3);
    // A cluster's default: two connections, on two nodes.
    assert_eq!(amqp.connections, 2);
    assert_has(
        &error_of(url_line, &format!("{url_line}\nurls = [\"amqp://n2/%2f\"]")),
        &["amqp.urls", "not both"],
    );
    assert_has(&error_of(url_line, ""), &["amqp.url", "required"]);
    assert_has(
        &error_of(url_line, "urls = [\"amqp://n1/%2f\", \"amqps://n2/%2f\"]"),
        &["amqp.urls", "same scheme"],
    );
    assert_has(
        &error_of(url_line, "urls = [\"amqp://n1/%2f\", \"http://u:pw@n2/\"]"),
        &["amqp.urls[1]", "not a valid"],
    );
    let amqps = |tls: &str| {
        BASE.replacen(
            "url = \"amqp://guest:guest@127.0.0.1:5672/%2f\"",
            &format!("url = \"amqps://guest:guest@127.0.0.1:5671/%2f\"\n{tls}"),
            1,
        )
    };
    assert!(load(&amqps("")).unwrap().amqp.tls.is_some());
    assert!(load(BASE).unwrap().amqp.tls.is_none());
    assert_has(
        &load(&amqps(
            "tls = { client_cert_file = \"/nonexistent/c.pem\" }",
        ))
        .unwrap_err()
        .to_string(),
        &["amqp.tls.client_key_file", "required"],
    );
}

#[test]
fn exchange_rules() {
    assert_has(
        &error_of("name = \"users\"", "name = \"\""),
        &["amqp.exchanges[0].name", "default exchange"],
    );
    assert_has(
        &error_of("name = \"users\"", "name = \"amq.topic\""),
        &["reserved"],
    );
    assert_has(
        &error_of(
            "name = \"users\"",
            &format!("name = \"{}\"", "x".repeat(256)),
        ),
        &["255"],
    );
    let dup = BASE.replace(
        "[[routes]]",
        "[[amqp.exchanges]]\nname = \"users\"\ntype = \"direct\"\n\n[[routes]]",
    );
    assert_has(
        &load(&dup).unwrap_err().to_string(),
        &["amqp.exchanges[1].name", "twice"],
    );
}

const ROUTE_HEAD: &str =
    "[[routes]]\nname = \"r2\"\npath = \"/things/{id}\"\nmethods = [\"POST\"]\nauth = \"public\"\n";

#[test]
fn route_needs_exactly_one_action() {
    assert_has(&route_error(ROUTE_HEAD), &["routes[1]", "exactly one"]);
    let both = format!(
        "{ROUTE_HEAD}upstream = \"u\"\npublish = {{ exchange = \"users\", routing_key = \"k\" }}\n[upstreams.u]\ntargets = [\"http://127.0.0.1:1\"]\n"
    );
    assert_has(&route_error(&both), &["routes[1]", "exactly one"]);
}

fn publish_route(publish: &str) -> String {
    format!("{ROUTE_HEAD}publish = {{ {publish} }}\n")
}

#[test]
fn publish_rules() {
    let cases: &[(&str, &[&str])] = &[
        (
            "exchange = \"nope\", routing_key = \"k\"",
            &["routes[1].publish.exchange", "not declared"],
        ),
        (
            "exchange = \"users\", routing_key = \"a.{other}\"",
            &["routes[1].publish.routing_key", "{other}"],
        ),
        (
            "exchange = \"users\", routing_key = \"a.{id\"",
            &["routes[1].publish.routing_key", "unclosed"],
        ),
        (
            "exchange = \"\", routing_key = \"\"",
            &["routes[1].publish.routing_key", "queue name"],
        ),
        (
            "exchange = \"users\", routing_key = \"k\", status = 200",
            &["routes[1].publish.status"],
        ),
        (
            "exchange = \"users\", routing_key = \"k\", status = 201",
            &["routes[1].publish.location"],
        ),
        (
            "exchange = \"users\", routing_key = \"k\", location = \"/x/{nope}\"",
            &["routes[1].publish.location", "{nope}"],
        ),
        (
            "exchange = \"users\", routing_key = \"k\", content_types = []",
            &["routes[1].publish.content_types"],
        ),
        (
            "exchange = \"users\", routing_key = \"k\", content_types = [\"json\"]",
            &["routes[1].publish.content_types", "`json`"],
        ),
        (
            "exchange = \"users\", routing_key = \"k\", properties = { priority = 10 }",
            &["routes[1].publish.properties.priority"],
        ),
        (
            "exchange = \"users\", routing_key = \"k\", properties = { type = \"\" }",
            &["routes[1].publish.properties.type"],
        ),
        (
            "exchange = \"users\", routing_key = \"k\", properties = { expiration = \"1\" }",
            &["expiration"],
        ),
        (
            "exchange = \"users\", routing_key = \"k\", headers = { \"x-http-method\" = \"GET\" }",
            &["routes[1].publish.headers", "set by the gateway"],
        ),
        (
            "exchange = \"users\", routing_key = \"k\", headers = { \"x-param-id\" = \"1\" }",
            &["routes[1].publish.headers"],
        ),
    ];
    for (publish, parts) in cases {
        assert_has(&route_error(&publish_route(publish)), parts);
    }
    let long = format!(
        "exchange = \"users\", routing_key = \"{}\"",
        "k".repeat(256)
    );
    assert_has(
        &route_error(&publish_route(&long)),
        &["routes[1].publish.routing_key", "255"],
    );
}

#[test]
fn a_client_chosen_queue_on_the_default_exchange_needs_consent() {
    // On the default exchange the routing key is the queue: `{id}` would let clients pick one.
    for publish in [
        "exchange = \"\", routing_key = \"{id}\"",
        "exchange = \"\", routing_key = \"jobs-{id}\"",
    ] {
        assert_has(
            &route_error(&publish_route(publish)),
            &[
                "routes[1].publish.routing_key",
                "default exchange",
                "allow_client_routing_key",
            ],
        );
    }
    // A fixed queue name, or consent, loads.
    for publish in [
        "exchange = \"\", routing_key = \"jobs\"",
        "exchange = \"\", routing_key = \"jobs-{id}\", allow_client_routing_key = true",
    ] {
        load(&with_route(&publish_route(publish))).unwrap();
    }
    // Consent where it means nothing is a mistake to point out.
    for publish in [
        "exchange = \"users\", routing_key = \"user.{id}\", allow_client_routing_key = true",
        "exchange = \"\", routing_key = \"jobs\", allow_client_routing_key = true",
    ] {
        assert_has(
            &route_error(&publish_route(publish)),
            &["routes[1].publish.allow_client_routing_key"],
        );
    }
}

#[test]
fn publish_route_variants_load() {
    let ok = publish_route(
        "exchange = \"\", routing_key = \"things-{id}\", allow_client_routing_key = true, status = 201, location = \"/things/{id}/{event_id}\", content_types = [\"Application/JSON\", \"text/plain\"], properties = { type = \"T\", content_type = \"application/json\", priority = 5 }, headers = { \"x-schema\" = \"1\" }",
    );
    let c = load(&with_route(&ok)).unwrap();
    let RouteAction::Publish(p) = &c.routes[1].action else {
        panic!("publish route expected");
    };
    assert_eq!(p.content_types, ["application/json", "text/plain"]);
    assert_eq!(p.headers, [("x-schema".to_owned(), "1".to_owned())]);
    assert_eq!(p.properties.priority, Some(5));
}

#[test]
fn cloudevents_on_a_publish_route() {
    let publish = |ce: &str| {
        publish_route(&format!(
            "exchange = \"users\", routing_key = \"user.{{id}}\", {ce}"
        ))
    };
    let cloudevents = |ce: &str| {
        let c = load(&with_route(&publish(ce))).unwrap();
        let RouteAction::Publish(p) = &c.routes[1].action else {
            panic!("publish route expected");
        };
        p.cloudevents.clone()
    };
    // `true`: the source names the route (percent-encoded), the type follows the message.
    let on = cloudevents("cloudevents = true").unwrap();
    assert_eq!(on.source, "urn:amqp-gateway:route:r2");
    assert_eq!(on.event_type, None);
    let spaced = load(&with_route(
        &publish("cloudevents = true").replace("name = \"r2\"", "name = \"user updates\""),
    ))
    .unwrap();
    let RouteAction::Publish(p) = &spaced.routes[1].action else {
        panic!("publish route expected");
    };
    assert_eq!(
        p.cloudevents.as_ref().map(|c| c.source.as_str()),
        Some("urn:amqp-gateway:route:user%20updates")
    );
    assert_eq!(cloudevents("cloudevents = false"), None);
    assert_eq!(cloudevents(""), None);
    let set = cloudevents(
        "cloudevents = { source = \"https://api.example.com/users\", type = \"com.example.user.updated\" }",
    )
    .unwrap();
    assert_eq!(set.source, "https://api.example.com/users");
    assert_eq!(set.event_type.as_deref(), Some("com.example.user.updated"));

    for (ce, parts) in [
        (
            "cloudevents = \"yes\"",
            &["publish.cloudevents", "`true`"][..],
        ),
        (
            "cloudevents = { sauce = \"x\" }",
            &["publish.cloudevents.sauce", "unknown key"],
        ),
        (
            "cloudevents = { source = \"has space\" }",
            &["publish.cloudevents.source", "URI-reference"],
        ),
        (
            "cloudevents = { type = \"\" }",
            &["publish.cloudevents.type"],
        ),
        (
            "cloudevents = { type = 1 }",
            &["publish.cloudevents.type", "string"],
        ),
        // The gateway sets the binding's headers; a static one would contradict them.
        (
            "cloudevents = true, headers = { \"CloudEvents_source\" = \"x\" }",
            &["publish.headers", "set by the gateway"],
        ),
    ] {
        assert_has(&route_error(&publish(ce)), parts);
    }
    // Without the binding the name is the route's own business.
    load(&with_route(&publish(
        "headers = { \"cloudEvents_source\" = \"x\" }",
    )))
    .unwrap();
}

#[test]
fn compression_levels() {
    let c = load(BASE).unwrap();
    assert_eq!(c.compression.dynamic, CompressionLevel::Fast);
    assert_eq!(c.compression.cached, CompressionLevel::High);
    let c = load(&format!(
        "{BASE}\n[compression]\ndynamic = \"default\"\ncached = \"best\"\n"
    ))
    .unwrap();
    assert_eq!(c.compression.dynamic, CompressionLevel::Default);
    assert_eq!(
        (
            c.compression.cached.gzip(),
            c.compression.cached.brotli(),
            c.compression.cached.zstd()
        ),
        (9, 11, 19)
    );
    let err = load(&format!("{BASE}\n[compression]\ndynamic = \"turbo\"\n"))
        .unwrap_err()
        .to_string();
    assert_has(&err, &["compression.dynamic", "turbo"]);
}

#[test]
fn route_rules() {
    let pub_ok = "publish = { exchange = \"users\", routing_key = \"k\" }\n";
    let route = |name: &str, path: &str, methods: &str| {
        format!(
            "[[routes]]\nname = \"{name}\"\npath = \"{path}\"\nmethods = {methods}\nauth = \"public\"\n{pub_ok}"
        )
    };
    let cases: Vec<(String, &[&str])> = vec![
        (route("", "/x", "[\"POST\"]"), &["routes[1].name"]),
        (
            route("update-user", "/x", "[\"POST\"]"),
            &["routes[1].name", "duplicate"],
        ),
        (
            route("r", "x", "[\"POST\"]"),
            &["routes[1].path", "start with"],
        ),
        (
            route("r", "/x/{a-b}", "[\"POST\"]"),
            &["routes[1].path", "invalid parameter"],
        ),
        (
            route("r", "/x/{*rest}/y", "[\"POST\"]"),
            &["routes[1].path", "catch-all"],
        ),
        (
            route("r", "/x/{a}/{a}", "[\"POST\"]"),
            &["routes[1].path", "twice"],
        ),
        (
            route("r", "/x/a{b}", "[\"POST\"]"),
            &["routes[1].path", "whole segment"],
        ),
        (route("r", "/x y", "[\"POST\"]"), &["routes[1].path"]),
        (
            route("r", "/x", "[]"),
            &["routes[1].methods", "at least one"],
        ),
        (
            route("r", "/x", "[\"post\"]"),
            &["routes[1].methods", "`post`"],
        ),
        (
            route("r", "/x", "[\"POST\", \"POST\"]"),
            &["routes[1].methods", "twice"],
        ),
        (
            route("r", "/x", "[\"GET\"]"),
            &["routes[1].methods", "cannot publish"],
        ),
        (
            route("r", "/users/{id}", "[\"PUT\"]"),
            &["routes[1].methods", "already served by route `update-user`"],
        ),
        (
            route("r", "/users/{uid}", "[\"DELETE\"]"),
            &["routes[1].path", "spell the parameters"],
        ),
        (
            route("r", "/users/{*rest}", "[\"DELETE\"]"),
            &["routes[1].path"],
        ),
    ];
    for (extra, parts) in &cases {
        assert_has(&route_error(extra), parts);
    }
}

#[test]
fn auth_rules() {
    let protected = "[[routes]]\nname = \"r\"\npath = \"/p\"\nmethods = [\"POST\"]\npublish = { exchange = \"users\", routing_key = \"k\" }\n";
    assert_has(&route_error(protected), &["routes[1].auth", "[auth]"]);
    let auth = |keys: &str, extra: &str| {
        format!("[auth]\nissuer = \"i\"\naudience = \"a\"\n{extra}\n{keys}\n")
    };
    let hs = "[[auth.keys]]\nalgorithm = \"HS256\"\nsecret = \"0123456789abcdef0123456789abcdef\"";
    let cases: Vec<(String, &[&str])> = vec![
        (auth("", ""), &["auth.keys", "at least one"]),
        (auth(hs, "leeway = \"2m\""), &["auth.leeway"]),
        (auth(hs, "roles_claim = \"a..b\""), &["auth.roles_claim"]),
        (
            auth("[[auth.keys]]\nalgorithm = \"RS256\"\nsecret = \"s\"", ""),
            &["auth.keys[0].algorithm"],
        ),
        (
            auth("[[auth.keys]]\nalgorithm = \"HS256\"", ""),
            &["auth.keys[0]", "exactly one"],
        ),
    ];
    for (extra, parts) in &cases {
        let text = BASE.replacen("[[routes]]", &format!("{extra}\n[[routes]]"), 1);
        assert_has(&load(&text).unwrap_err().to_string(), parts);
    }
}

/// `[auth]` and a protected route on top of BASE.
fn with_auth(auth: &str, route: &str) -> String {
    BASE.replacen("[[routes]]", &format!("{auth}\n[[routes]]"), 1) + "\n" + route
}

const SECRET32: &str = "0123456789abcdef0123456789abcdef";

fn auth_section(keys: &str, extra: &str) -> String {
    format!("[auth]\nissuer = \"i\"\naudience = \"a\"\n{extra}\n{keys}\n")
}

fn hs_key(extra: &str) -> String {
    format!("[[auth.keys]]\nalgorithm = \"HS256\"\nsecret = \"{SECRET32}\"\n{extra}\n")
}

fn fixture(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/keys")
        .join(name)
        .display()
        .to_string()
}

#[test]
fn protected_routes_load_with_their_policy() {
    let route = "[[routes]]\nname = \"ban\"\npath = \"/ban/{id}\"\nmethods = [\"POST\"]\nauth = { roles = [\"admin\"], scopes = [\"users:ban\"], match = \"all\" }\npublish = { exchange = \"users\", routing_key = \"user.{id}.banned\" }\n";
    let c = load(&with_auth(
        &auth_section(&hs_key("kid = \"k1\""), ""),
        route,
    ))
    .unwrap();
    let auth = c.auth.as_ref().unwrap();
    assert_eq!(auth.jwks_refresh, Duration::from_secs(300));
    assert_eq!(auth.jwks_cooldown, Duration::from_secs(30));
    assert_eq!(auth.jwks_timeout, Duration::from_secs(5));
    assert_eq!(auth.token_cache_size, 10_000);
    assert_eq!(auth.token_cache_ttl, Duration::from_secs(60));
    assert_eq!(
        c.routes[1].auth,
        RouteAuth::Required(AuthPolicy {
            roles: vec!["admin".into()],
            scopes: vec!["users:ban".into()],
            mode: PolicyMatch::All,
        })
    );
    // `authenticated` and an omitted `auth` are both "any valid token".
    let plain = "[[routes]]\nname = \"r\"\npath = \"/r\"\nmethods = [\"POST\"]\nauth = \"authenticated\"\npublish = { exchange = \"users\", routing_key = \"k\" }\n";
    let c = load(&with_auth(&auth_section(&hs_key(""), ""), plain)).unwrap();
    assert_eq!(c.routes[1].auth, RouteAuth::Required(AuthPolicy::default()));
}

#[test]
fn key_rules() {
    let key = |body: &str| format!("[[auth.keys]]\n{body}\n");
    let cases: Vec<(String, &[&str])> = vec![
        (
            key(&format!("algorithm = \"none\"\nsecret = \"{SECRET32}\"")),
            &["auth.keys[0].algorithm", "unsupported"],
        ),
        (
            key("algorithm = \"HS256\"\nsecret = \"0123456789abcdef0123456789abcde\""),
            &["auth.keys[0].secret", "32 bytes"],
        ),
        (
            key(&format!("algorithm = \"HS512\"\nsecret = \"{SECRET32}\"")),
            &["auth.keys[0].secret", "64 bytes"],
        ),
        (
            key("algorithm = \"RS256\"\npublic_key_pem = \"/nonexistent/key.pem\""),
            &["auth.keys[0].public_key_pem", "cannot read"],
        ),
        (
            key(&format!(
                "algorithm = \"RS256\"\npublic_key_pem = \"{}\"",
                fixture("ec256.pub.pem")
            )),
            &["auth.keys[0].public_key_pem", "not a usable RS256"],
        ),
        (
            key(&format!(
                "algorithm = \"ES256\"\npublic_key_pem = \"{}\"",
                fixture("ec384.pub.pem")
            )),
            &["auth.keys[0].public_key_pem", "curve"],
        ),
        (
            key(&format!(
                "algorithm = \"RS256\"\njwks_file = \"{}\"",
                fixture("rsa1.pub.pem")
            )),
            &["auth.keys[0].jwks_file", "not a JWKS"],
        ),
        (
            key("algorithm = \"RS256\"\njwks_url = \"http://issuer.example/jwks\""),
            &["auth.keys[0].jwks_url", "only to a loopback address"],
        ),
        (
            key("algorithm = \"RS256\"\njwks_url = \"ftp://issuer.example/jwks\""),
            &["auth.keys[0].jwks_url", "https://"],
        ),
        (
            key(
                "algorithm = \"RS256\"\njwks_url = \"https://issuer.example/jwks\"\ntls = { ca_file = \"/nonexistent/ca.pem\" }",
            ),
            &["auth.keys[0].tls.ca_file", "/nonexistent/ca.pem"],
        ),
        (
            key(
                "algorithm = \"RS256\"\njwks_url = \"http://127.0.0.1:1/jwks\"\ntls = { server_name = \"a\" }",
            ),
            &["auth.keys[0].tls", "needs an https://"],
        ),
        (
            key("algorithm = \"RS256\"\nkid = \"k\"\njwks_url = \"http://127.0.0.1:1/jwks\""),
            &["auth.keys[0].kid", "not allowed"],
        ),
        (
            key("algorithm = \"HS256\"\njwks_url = \"http://127.0.0.1:1/jwks\""),
            &["auth.keys[0].algorithm", "never HMAC from a JWKS"],
        ),
        (
            format!("{}{}", hs_key("kid = \"k\""), hs_key("kid = \"k\"")),
            &["auth.keys[1].kid", "used twice"],
        ),
    ];
    for (keys, parts) in &cases {
        let text = BASE.replacen(
            "[[routes]]",
            &format!("{}\n[[routes]]", auth_section(keys, "")),
            1,
        );
        assert_has(&load(&text).unwrap_err().to_string(), parts);
    }
}

#[test]
fn auth_setting_rules() {
    let cases: Vec<(&str, &[&str])> = vec![
        (
            "propagate_claims = { sub = \"sub\" }",
            &["auth.propagate_claims.sub", "not `sub`"],
        ),
        (
            "propagate_claims = { Email = \"email\" }",
            &["auth.propagate_claims.Email"],
        ),
        (
            "propagate_claims = { email = \"a..b\" }",
            &["auth.propagate_claims.email", "dotted"],
        ),
        ("jwks_refresh = \"500ms\"", &["auth.jwks_refresh"]),
        ("jwks_cooldown = \"0s\"", &["auth.jwks_cooldown"]),
        ("jwks_timeout = \"0s\"", &["auth.jwks_timeout"]),
        (
            "jwks_refresh = \"10m\"\njwks_max_stale = \"5m\"",
            &["auth.jwks_max_stale"],
        ),
        ("token_cache_ttl = \"2h\"", &["auth.token_cache_ttl"]),
    ];
    for (extra, parts) in &cases {
        let text = BASE.replacen(
            "[[routes]]",
            &format!("{}\n[[routes]]", auth_section(&hs_key(""), extra)),
            1,
        );
        assert_has(&load(&text).unwrap_err().to_string(), parts);
    }
    let empty_issuer = auth_section(&hs_key(""), "").replace("issuer = \"i\"", "issuer = \"\"");
    let text = BASE.replacen("[[routes]]", &format!("{empty_issuer}\n[[routes]]"), 1);
    assert_has(&load(&text).unwrap_err().to_string(), &["auth.issuer"]);
}

#[test]
fn route_policy_rules() {
    let route = |auth: &str| {
        format!(
            "[[routes]]\nname = \"r\"\npath = \"/r\"\nmethods = [\"POST\"]\nauth = {auth}\npublish = {{ exchange = \"users\", routing_key = \"k\" }}\n"
        )
    };
    let cases: Vec<(String, &[&str])> = vec![
        (route("{ roles = [\"\"] }"), &["routes[1].auth", "role"]),
        (
            route("{ scopes = [\"a b\"] }"),
            &["routes[1].auth", "scope"],
        ),
        (route("{ scopes = ['a\"b'] }"), &["routes[1].auth", "scope"]),
        (
            route("{ roles = [\"x\"], match = \"some\" }"),
            &["routes[1].auth"],
        ),
    ];
    for (extra, parts) in &cases {
        let text = with_auth(&auth_section(&hs_key(""), ""), extra);
        assert_has(&load(&text).unwrap_err().to_string(), parts);
    }
    // Identity headers are the gateway's: a static route header cannot claim one.
    assert_has(
        &route_error(&publish_route(
            "exchange = \"users\", routing_key = \"k\", headers = { \"X-Auth-Email\" = \"x\" }",
        )),
        &["routes[1].publish.headers", "set by the gateway"],
    );
}

#[test]
fn rate_limits_load_typed_with_defaults_and_unique_policy_names() {
    let route = "[[routes]]\nname = \"r\"\npath = \"/r\"\nmethods = [\"POST\"]\nauth = \"authenticated\"\npublish = { exchange = \"users\", routing_key = \"k\" }\nrate_limits = [ { by = \"subject\", limit = 100, per = \"1m\", burst = 20 }, { by = \"ip\", limit = 10, per = \"1s\" }, { by = \"claim:tenant\", limit = 5, per = \"1s\" }, { by = \"route\", limit = 1000, per = \"1h\" }, { by = \"ip\", limit = 1000, per = \"1h\" } ]\n";
    let auth = auth_section(
        &hs_key(""),
        "propagate_claims = { tenant = \"org.tenant\" }",
    );
    let c = load(&with_auth(&auth, route)).unwrap();
    let limits = &c.routes[1].rate_limits;
    let n = |v: u32| std::num::NonZeroU32::new(v).unwrap();
    assert_eq!(
        limits[0],
        RateLimitConfig {
            by: RateLimitKey::Subject,
            limit: n(100),
            per: Duration::from_secs(60),
            burst: n(20),
            policy: "subject".into(),
        }
    );
    assert_eq!(limits[1].by, RateLimitKey::Ip);
    assert_eq!(limits[1].burst, n(10), "burst defaults to limit");
    assert_eq!(limits[2].by, RateLimitKey::Claim("x-auth-tenant".into()));
    assert_eq!(limits[2].policy, "claim:tenant");
    assert_eq!(limits[3].by, RateLimitKey::Route);
    assert_eq!(
        limits[4].policy, "ip-4",
        "a second `ip` limit gets its own policy name"
    );
    assert!(c.routes[0].rate_limits.is_empty());
}

#[test]
fn rate_limit_rules() {
    let limits = |list: &str| {
        format!(
            "{}rate_limits = [ {list} ]\n",
            publish_route("exchange = \"users\", routing_key = \"k\"")
        )
    };
    let cases: &[(&str, &[&str])] = &[
        (
            "{ by = \"subject\", limit = 1, per = \"1s\" }",
            &["routes[1].rate_limits[0].by", "public"],
        ),
        (
            "{ by = \"claim:tenant\", limit = 1, per = \"1s\" }",
            &["routes[1].rate_limits[0].by", "public"],
        ),
        (
            "{ by = \"ip\", limit = 1, per = \"1s\" }, { by = \"ip\", limit = 0, per = \"1s\" }",
            &["routes[1].rate_limits[1].limit", "at least 1"],
        ),
        (
            "{ by = \"ip\", limit = 1, per = \"0s\" }",
            &["routes[1].rate_limits[0].per", "greater than zero"],
        ),
        (
            "{ by = \"ip\", limit = 10, per = \"5ns\" }",
            &["routes[1].rate_limits[0].per", "nanoseconds"],
        ),
        (
            "{ by = \"user\", limit = 1, per = \"1s\" }",
            &[
                "routes[1].rate_limits[0].by",
                "`user` is not a rate-limit key",
            ],
        ),
        (
            "{ by = \"claim:\", limit = 1, per = \"1s\" }",
            &["routes[1].rate_limits[0].by", "not a rate-limit key"],
        ),
        (
            "{ by = \"route\", limit = 1, per = \"1s\", burst = 0 }",
            &["routes[1].rate_limits[0].burst", "at least 1"],
        ),
        (
            "{ by = \"route\", limit = -1, per = \"1s\" }",
            &["routes[1].rate_limits[0].limit"],
        ),
        (
            "{ by = \"route\", limit = 1, per = \"soon\" }",
            &["routes[1].rate_limits[0].per"],
        ),
        (
            "{ by = \"route\", limit = 1, per = \"1s\", window = \"1s\" }",
            &["routes[1].rate_limits[0]", "unknown field `window`"],
        ),
    ];
    for (list, parts) in cases {
        assert_has(&route_error(&limits(list)), parts);
    }
    // A claim key must be a propagated claim: that is where the identity carries claims.
    let route = "[[routes]]\nname = \"r\"\npath = \"/r\"\nmethods = [\"POST\"]\npublish = { exchange = \"users\", routing_key = \"k\" }\nrate_limits = [ { by = \"claim:plan\", limit = 1, per = \"1s\" } ]\n";
    let text = with_auth(&auth_section(&hs_key(""), ""), route);
    assert_has(
        &load(&text).unwrap_err().to_string(),
        &["routes[1].rate_limits[0].by", "propagate_claims"],
    );
}

#[test]
fn cors_rules() {
    let global =
        |body: &str| BASE.replacen("[[routes]]", &format!("[cors]\n{body}\n[[routes]]"), 1);
    let cases: Vec<(String, &[&str])> = vec![
        (
            global("allowed_origins = []"),
            &["cors.allowed_origins", "at least one"],
        ),
        (
            global("allowed_origins = [\"*\", \"https://a.example\"]"),
            &["cors.allowed_origins", "only entry"],
        ),
        (
            global("allowed_origins = [\"*\"]\nallow_credentials = true"),
            &["cors.allow_credentials"],
        ),
        (
            global("allowed_origins = [\"https://a.example/\"]"),
            &["cors.allowed_origins", "not an origin"],
        ),
        (
            global("allowed_origins = [\"https://a.example/app\"]"),
            &["cors.allowed_origins"],
        ),
        (
            global("allowed_origins = [\"ftp://a.example\"]"),
            &["cors.allowed_origins"],
        ),
        (
            global("allowed_origins = [\"https://a.example\"]\nallowed_headers = [\"bad header\"]"),
            &["cors.allowed_headers"],
        ),
        (
            global("allowed_origins = [\"https://a.example\"]\nexposed_headers = [\"*\"]"),
            &["cors.exposed_headers", "wildcards"],
        ),
        (
            global("allowed_origins = [\"https://a.example\"]\nmax_age = \"2days\""),
            &["cors.max_age"],
        ),
    ];
    for (text, parts) in &cases {
        assert_has(&load(text).unwrap_err().to_string(), parts);
    }
    // A route asking for the global CORS when there is none.
    let route = |cors: &str, path: &str, method: &str| {
        format!(
            "[[routes]]\nname = \"r{method}{}\"\npath = \"{path}\"\nmethods = [\"{method}\"]\nauth = \"public\"\ncors = {cors}\npublish = {{ exchange = \"users\", routing_key = \"k\" }}\n",
            path.replace(['/', '{', '}'], "")
        )
    };
    assert_has(
        &route_error(&route("true", "/c", "POST")),
        &["routes[1].cors", "[cors]"],
    );
    assert_has(
        &route_error(&route("{ allowed_origins = [] }", "/c", "POST")),
        &["routes[1].cors.allowed_origins"],
    );
    // Routes on one path share CORS: DELETE on BASE's /users/{id} may not differ.
    assert_has(
        &route_error(&route(
            "{ allowed_origins = [\"https://a.example\"] }",
            "/users/{id}",
            "DELETE",
        )),
        &["routes[1].cors", "share CORS"],
    );
    // Global default, `false`, and a table override.
    let text = global("allowed_origins = [\"https://app.example\"]")
        + "\n"
        + &route("false", "/c", "POST")
        + "\n"
        + &route(
            "{ allowed_origins = [\"https://other.example\"], max_age = \"1m\" }",
            "/d",
            "POST",
        );
    let c = load(&text).unwrap();
    assert_eq!(
        c.routes[0].cors.as_ref().unwrap().origins,
        CorsOrigins::List(vec![http::HeaderValue::from_static("https://app.example")])
    );
    assert_eq!(
        c.routes[0].cors.as_ref().unwrap().max_age,
        Duration::from_secs(600)
    );
    assert!(c.routes[1].cors.is_none());
    assert_eq!(
        c.routes[2].cors.as_ref().unwrap().max_age,
        Duration::from_secs(60)
    );
}

#[test]
fn upstream_rules() {
    let up = |targets: &str, extra: &str| {
        BASE.replacen(
            "[[routes]]",
            &format!("[upstreams.u]\ntargets = {targets}\n{extra}\n[[routes]]"),
            1,
        )
    };
    assert_has(
        &load(&up("[]", "")).unwrap_err().to_string(),
        &["upstreams.u.targets", "at least one"],
    );
    assert_has(
        &load(&up("[\"ftp://x\"]", "")).unwrap_err().to_string(),
        &["upstreams.u.targets", "http://"],
    );
    for with_path in [
        "https://api.internal/v1",
        "http://127.0.0.1:1/v1/",
        "http://127.0.0.1:1//",
        "http://127.0.0.1:1/?a=1",
        "http://127.0.0.1:1?a=1",
    ] {
        assert_has(
            &load(&up(
                &format!("[\"http://127.0.0.1:2\", \"{with_path}\"]"),
                "",
            ))
            .unwrap_err()
            .to_string(),
            &["upstreams.u.targets", with_path, "has a path"],
        );
    }
    for bare in [
        "http://127.0.0.1:1",
        "http://127.0.0.1:1/",
        "https://api.internal",
    ] {
        let c = load(&up(&format!("[\"{bare}\"]"), "")).unwrap();
        let targets: Vec<String> = c.upstreams["u"]
            .targets
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(targets, [bare.trim_end_matches('/')]);
    }
    assert_has(
        &load(&up("[\"http://127.0.0.1:1\"]", "timeout = \"0s\""))
            .unwrap_err()
            .to_string(),
        &["upstreams.u.timeout"],
    );
    assert_has(
        &load(&up(
            "[\"https://127.0.0.1:1\"]",
            "tls = { ca_file = \"/nonexistent/ca.pem\" }",
        ))
        .unwrap_err()
        .to_string(),
        &["upstreams.u.tls.ca_file", "/nonexistent/ca.pem"],
    );
    assert_has(
        &load(&up("[\"https://127.0.0.1:1\"]", "tls = { cafile = \"x\" }"))
            .unwrap_err()
            .to_string(),
        &["upstreams.u.tls", "cafile"],
    );
    let c = load(&up(
        "[\"https://127.0.0.1:1\"]",
        "tls = { server_name = \"api.internal\" }",
    ))
    .unwrap();
    assert!(c.upstreams["u"].tls.server_name().is_some());
    let read = "[[routes]]\nname = \"r\"\npath = \"/r\"\nmethods = [\"GET\"]\nauth = \"public\"\nupstream = \"missing\"\n";
    assert_has(
        &route_error(read),
        &["routes[1].upstream", "unknown upstream"],
    );
}

#[test]
fn every_file_in_config_dir_loads() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut found = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            Config::load(&path, no_env).unwrap_or_else(|e| panic!("{e}"));
            found += 1;
        }
    }
    assert!(found > 0, "no config files found in {}", dir.display());
}

mod fuzz {
    //! Property tests (the project's fuzzing; `PROPTEST_CASES=100000 cargo test fuzz` for a
    //! long run): loading never panics, and interpolated values survive TOML exactly.
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn loading_arbitrary_text_never_panics(text in "\\PC{0,400}") {
            let _ = load(&text);
        }

        #[test]
        fn loading_mutated_base_config_never_panics(cut in 0usize..600, insert in "\\PC{0,20}") {
            let mut text = BASE.to_owned();
            let at = cut.min(text.len());
            let at = (0..=at).rev().find(|i| text.is_char_boundary(*i)).unwrap_or(0);
            text.insert_str(at, &insert);
            let _ = load(&text);
        }

        #[test]
        fn interpolated_values_round_trip_through_toml(value in "\\PC{0,64}|[\"\\\\\\n\\t$}{]{0,16}") {
            let env = |k: &str| (k == "V").then(|| value.clone());
            let text = interpolate("k = \"${V}\"\nm = \"\"\"\n${V}\"\"\"\n", env).unwrap();
            let table: toml::Table = toml::from_str(&text).unwrap();
            prop_assert_eq!(table["k"].as_str(), Some(value.as_str()));
            prop_assert_eq!(table["m"].as_str(), Some(value.as_str()));
        }

        #[test]
        fn interpolating_arbitrary_text_never_panics(text in "\\PC{0,200}") {
            let _ = interpolate(&text, |_| Some("x".to_owned()));
            let _ = interpolate(&text, |_| None);
        }
    }
}

#[test]
fn the_compose_deployment_config_loads() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/gateway.toml");
    let env =
        |k: &str| (k == "AMQP_URL").then(|| "amqp://gateway:gateway@rabbitmq:5672/%2f".to_owned());
    let config = Config::load(&path, env).unwrap_or_else(|e| panic!("{e}"));
    assert!(!config.routes.is_empty());
}

#[test]
fn public_host_is_parsed_and_compared_by_name() {
    let with = |v: &str| {
        load(&BASE.replacen(
            "admin_listen = \"127.0.0.1:9090\"",
            &format!("admin_listen = \"127.0.0.1:9090\"\npublic_host = \"{v}\""),
            1,
        ))
    };
    let host = with("API.example.com:8443")
        .unwrap()
        .server
        .public_host
        .unwrap();
    assert_eq!(host.header, "API.example.com:8443");
    for same in [
        &b"api.example.com"[..],
        b"API.EXAMPLE.COM:80",
        b"api.example.com.",
        b" api.example.com ",
    ] {
        assert!(host.matches(same), "{}", String::from_utf8_lossy(same));
    }
    for other in [
        &b"evil.example"[..],
        b"api.example.com.evil",
        b"",
        b"\xffapi",
    ] {
        assert!(!host.matches(other), "{}", String::from_utf8_lossy(other));
    }
    let v6 = with("[::1]:8080").unwrap().server.public_host.unwrap();
    assert!(v6.matches(b"[::1]") && !v6.matches(b"[::2]:8080"));
    for bad in [
        "user@api.example.com",
        "https://api.example.com",
        "api.example.com/x",
        "",
    ] {
        assert_has(&with(bad).unwrap_err().to_string(), &["server.public_host"]);
    }
}

#[test]
fn cache_rules_are_optional_and_checked() {
    let route = |cache: &str| {
        format!(
            "[upstreams.u]\ntargets = [\"http://127.0.0.1:9\"]\n\n[[routes]]\nname = \"r\"\npath = \"/r\"\nmethods = [\"GET\"]\nauth = \"public\"\nupstream = \"u\"\ncache = {cache}\n"
        )
    };
    let config = load(&with_route(&route("{}"))).unwrap();
    let RouteAction::Proxy(p) = &config.routes[1].action else {
        panic!("a read route");
    };
    let cache = p.cache.as_ref().unwrap();
    assert_eq!(cache.ttl, None);
    assert!(!cache.heuristic);
    assert_eq!(cache.heuristic_max, Duration::from_secs(86_400));
    let config = load(&with_route(&route(
        "{ ttl = \"5s\", heuristic = true, heuristic_max = \"1h\" }",
    )))
    .unwrap();
    let RouteAction::Proxy(p) = &config.routes[1].action else {
        panic!("a read route");
    };
    let cache = p.cache.as_ref().unwrap();
    assert_eq!(cache.ttl, Some(Duration::from_secs(5)));
    assert_eq!(cache.heuristic_max, Duration::from_secs(3600));
    assert_has(&route_error(&route("{ ttl = \"0s\" }")), &["cache.ttl"]);
    assert_has(
        &route_error(&route("{ heuristic = true, heuristic_max = \"0s\" }")),
        &["cache.heuristic_max"],
    );
    assert_has(&route_error(&route("{ tll = \"5s\" }")), &["tll"]);
}

/// A directory of this test's own for schema files, removed when dropped.
struct SchemaDir(std::path::PathBuf);

impl SchemaDir {
    fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("gw-config-{test}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    /// Writes `text` as `name` and returns its absolute path.
    fn file(&self, name: &str, text: &str) -> String {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    }
}

impl Drop for SchemaDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn schema_route(schema: &str, publish_extra: &str) -> String {
    format!(
        "[[routes]]\nname = \"s\"\npath = \"/s\"\nmethods = [\"POST\"]\nauth = \"public\"\nschema = \"{schema}\"\npublish = {{ exchange = \"users\", routing_key = \"s\"{publish_extra} }}\n"
    )
}

#[test]
fn schema_rules() {
    let dir = SchemaDir::new("schema-rules");
    let good = dir.file("good.json", r#"{"type": "object"}"#);
    let c = load(&with_route(&schema_route(&good, ""))).unwrap();
    let RouteAction::Publish(p) = &c.routes[1].action else {
        panic!("publish route expected");
    };
    assert_eq!(p.schema.as_ref().map(|s| s.file()), Some(good.as_str()));
    // `+json` types are JSON too.
    load(&with_route(&schema_route(
        &good,
        ", content_types = [\"application/json\", \"application/vnd.acme+json\"]",
    )))
    .unwrap();

    let err = route_error(&schema_route(
        &good,
        ", content_types = [\"application/json\", \"text/plain\"]",
    ));
    assert_has(&err, &["routes[1].schema", "text/plain"]);

    let broken = dir.file("broken.json", r#"{"type": "object""#);
    let err = route_error(&schema_route(&broken, ""));
    assert_has(&err, &["routes[1].schema: ", &broken, "not valid JSON"]);

    let bad_keyword = dir.file("bad.json", r#"{"type": "objet"}"#);
    let err = route_error(&schema_route(&bad_keyword, ""));
    assert_has(
        &err,
        &["routes[1].schema: ", &bad_keyword, "invalid schema"],
    );

    let remote = dir.file("remote.json", r#"{"$ref": "https://example.com/x.json"}"#);
    let err = route_error(&schema_route(&remote, ""));
    assert_has(
        &err,
        &[
            "routes[1].schema: ",
            &remote,
            "https://example.com/x.json",
            "self-contained",
        ],
    );

    let missing = dir.0.join("missing.json").display().to_string();
    let err = route_error(&schema_route(&missing, ""));
    assert_has(&err, &["routes[1].schema: ", &missing, "cannot read file"]);

    let err = match load(&format!(
        "{BASE}\n[upstreams.u]\ntargets = [\"http://127.0.0.1:1\"]\n\n[[routes]]\nname = \"r\"\npath = \"/r\"\nmethods = [\"GET\"]\nauth = \"public\"\nupstream = \"u\"\nschema = \"{good}\"\n"
    )) {
        Ok(_) => panic!("a schema on an upstream route must be refused"),
        Err(e) => e.to_string(),
    };
    assert_has(&err, &["routes[1].schema", "only to publish routes"]);
}

#[test]
fn max_json_depth_defaults_to_64_and_is_bounded() {
    assert_eq!(load(BASE).unwrap().server.max_json_depth, 64);
    let with = |n: &str| {
        BASE.replacen(
            "admin_listen = \"127.0.0.1:9090\"",
            &format!("admin_listen = \"127.0.0.1:9090\"\nmax_json_depth = {n}"),
            1,
        )
    };
    assert_eq!(load(&with("127")).unwrap().server.max_json_depth, 127);
    assert_eq!(load(&with("1")).unwrap().server.max_json_depth, 1);
    for bad in ["0", "128", "512"] {
        let err = load(&with(bad)).unwrap_err().to_string();
        assert_has(&err, &["server.max_json_depth", "between 1 and 127"]);
    }
}

#[test]
fn demo_schema_accepts_what_the_demo_sends() {
    // scripts/demo.sh runs from the repo root, as the lib tests do.
    let c = Config::load(Path::new("config/gateway.toml"), no_env).unwrap();
    let route = c.routes.iter().find(|r| r.name == "create-user").unwrap();
    let RouteAction::Publish(p) = &route.action else {
        panic!("publish route expected");
    };
    let schema = p
        .schema
        .as_ref()
        .expect("the demo's create-user route has a schema");
    let demo = serde_json::json!({"name": "Ada Lovelace", "email": "ada@example.com"});
    assert!(schema.validate(&demo).is_ok());
    let bad = serde_json::json!({"email": "not-an-email", "admin": true});
    assert_eq!(schema.validate(&bad).unwrap_err().errors.len(), 3);
}

/// The container image's default config (deploy/image.toml) must not trust a secret written in
/// this repository: without `JWT_SECRET` (or `AMQP_URL`) it does not load, and the error names
/// the variable.
#[test]
fn the_image_config_requires_its_secrets_from_the_environment() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/image.toml");
    let secret = "a-secret-of-at-least-32-bytes-0123456789";
    let env = |missing: &'static str| {
        move |k: &str| {
            let value = match k {
                "AMQP_URL" => "amqp://gateway:gateway@rabbitmq:5672/%2f",
                "JWT_SECRET" => secret,
                "GATEWAY_SCHEMA_DIR" => "config/schemas",
                _ => return None,
            };
            (k != missing).then(|| value.to_owned())
        }
    };
    for missing in ["JWT_SECRET", "AMQP_URL"] {
        let err = Config::load(&path, env(missing))
            .expect_err("the image config must not load without its secrets")
            .to_string();
        assert_has(&err, &[missing, "not set", "image.toml"]);
    }
    let config = Config::load(&path, env("")).unwrap_or_else(|e| panic!("{e}"));
    assert!(config.auth.is_some());
    // No `${VAR:-default}` for a secret, whatever the variable is called.
    let text = std::fs::read_to_string(&path).unwrap();
    for line in text.lines().filter(|l| !l.trim_start().starts_with('#')) {
        let setting = line.split('#').next().unwrap_or("");
        if ["secret", "url ="].iter().any(|k| setting.contains(k)) {
            assert!(!setting.contains(":-"), "a secret with a default: {line}");
        }
    }
    // And the image uses it (config/gateway.toml, with the demo secret, is not copied).
    let dockerfile =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Dockerfile")).unwrap();
    assert!(
        dockerfile.contains("COPY deploy/image.toml /etc/amqp-gateway/gateway.toml"),
        "the Dockerfile must install deploy/image.toml as the image's config"
    );
    assert!(!dockerfile.contains("COPY config/ "));
}

#[test]
fn connection_limits_and_body_deadlines() {
    let c = load(BASE).unwrap();
    assert_eq!(c.server.max_connections, None, "unlimited by default");
    assert_eq!(c.server.write_timeout, Duration::from_secs(30));
    let c = load(&BASE.replacen(
        "admin_listen = \"127.0.0.1:9090\"",
        "admin_listen = \"127.0.0.1:9090\"\nmax_connections = 2\nwrite_timeout = \"5s\"",
        1,
    ))
    .unwrap();
    assert_eq!(c.server.max_connections, Some(2));
    assert_eq!(c.server.write_timeout, Duration::from_secs(5));
    let upstream = |extra: &str| {
        format!(
            "{BASE}\n[upstreams.u]\ntargets = [\"http://127.0.0.1:1\"]\ntimeout = \"5s\"\n{extra}\n"
        )
    };
    let c = load(&upstream("")).unwrap();
    assert_eq!(c.upstreams["u"].body_timeout, Duration::from_secs(300));
    let c = load(&upstream("body_timeout = \"1m\"")).unwrap();
    assert_eq!(c.upstreams["u"].body_timeout, Duration::from_secs(60));
    let err = load(&upstream("body_timeout = \"1s\""))
        .unwrap_err()
        .to_string();
    assert_has(&err, &["upstreams.u.body_timeout", "at least `timeout`"]);
}

#[test]
fn max_token_lifetime_is_optional_and_at_least_a_second() {
    let auth = |extra: &str| {
        format!(
            "{BASE}\n[auth]\nissuer = \"i\"\naudience = \"a\"\n{extra}\n[[auth.keys]]\nalgorithm = \"HS256\"\nsecret = \"0123456789abcdef0123456789abcdef\"\n"
        )
    };
    assert_eq!(
        load(&auth("")).unwrap().auth.unwrap().max_token_lifetime,
        None
    );
    assert_eq!(
        load(&auth("max_token_lifetime = \"24h\""))
            .unwrap()
            .auth
            .unwrap()
            .max_token_lifetime,
        Some(Duration::from_secs(86400))
    );
    let err = load(&auth("max_token_lifetime = \"0s\""))
        .unwrap_err()
        .to_string();
    assert_has(&err, &["auth.max_token_lifetime"]);
}

#[test]
fn cache_coherence_keys_have_defaults_types_and_rules() {
    let c = load(BASE).unwrap();
    assert!(!c.cache.coherence);
    assert_eq!(
        c.cache.invalidation_exchange,
        "amqp-gateway.cache-invalidation"
    );
    assert_eq!(c.cache.reinvalidate_after, Duration::ZERO);
    let on = load(&with_route(
        "[cache]\ncoherence = true\ninvalidation_exchange = \"gw.inv\"\nreinvalidate_after = \"2s\"",
    ))
    .unwrap();
    assert!(on.cache.coherence);
    assert_eq!(on.cache.invalidation_exchange, "gw.inv");
    assert_eq!(on.cache.reinvalidate_after, Duration::from_secs(2));
    for (table, parts) in [
        ("coherence = \"yes\"", &["cache.coherence"][..]),
        (
            "reinvalidate_after = \"soon\"",
            &["cache.reinvalidate_after"],
        ),
        (
            "reinvalidate_after = \"2h\"",
            &["cache.reinvalidate_after", "1h"],
        ),
        (
            "invalidation_exchange = \"\"",
            &["cache.invalidation_exchange"],
        ),
        ("invalidation_exchange = \"amq.fanout\"", &["amq."]),
        ("invalidation_exchange = \"users\"", &["amqp.exchanges"]),
        ("coherent = true", &["coherent"]),
    ] {
        assert_has(&route_error(&format!("[cache]\n{table}")), parts);
    }
}

#[test]
fn cache_coherence_keys_need_a_restart() {
    let a = load(BASE).unwrap();
    for (table, key) in [
        ("coherence = true", "cache.coherence"),
        (
            "invalidation_exchange = \"gw.inv\"",
            "cache.invalidation_exchange",
        ),
        ("reinvalidate_after = \"1s\"", "cache.reinvalidate_after"),
    ] {
        let b = load(&with_route(&format!("[cache]\n{table}"))).unwrap();
        assert_eq!(a.restart_required(&b), [key]);
    }
    let budget = load(&with_route("[cache]\nmax_bytes = 1048576")).unwrap();
    assert!(a.restart_required(&budget).is_empty());
}

#[test]
fn routes_are_grouped_by_path_for_the_router() {
    use axum::routing::MethodFilter;
    // BASE's PUT/PATCH /users/{id}, a DELETE on the same path, and another path.
    let text = with_route(
        "[[routes]]\nname = \"delete-user\"\npath = \"/users/{id}\"\nmethods = [\"DELETE\"]\nauth = \"public\"\npublish = { exchange = \"users\", routing_key = \"user.{id}.deleted\" }\n\n[[routes]]\nname = \"create-user\"\npath = \"/users\"\nmethods = [\"POST\"]\nauth = \"public\"\npublish = { exchange = \"users\", routing_key = \"user.created\" }\n",
    );
    let c = load(&text).unwrap();
    let paths: Vec<(&str, Vec<(MethodFilter, &str)>)> = c
        .paths
        .iter()
        .map(|p| {
            let routes = p.routes().map(|(f, r)| (f, r.name.as_str())).collect();
            (p.path(), routes)
        })
        .collect();
    assert_eq!(
        paths,
        [
            (
                "/users/{id}",
                vec![
                    (MethodFilter::PUT.or(MethodFilter::PATCH), "update-user"),
                    (MethodFilter::DELETE, "delete-user"),
                ]
            ),
            ("/users", vec![(MethodFilter::POST, "create-user")]),
        ]
    );
    assert!(c.paths.iter().all(|p| p.cors().is_none()));
}

#[test]
fn keys_are_loaded_with_the_config() {
    let keys = format!(
        "{}[[auth.keys]]\nalgorithm = \"ES256\"\npublic_key_pem = \"{}\"\n[[auth.keys]]\nalgorithm = \"RS256\"\njwks_url = \"http://127.0.0.1:1/jwks\"\n",
        hs_key("kid = \"k1\""),
        fixture("ec256.pub.pem"),
    );
    let text = BASE.replacen(
        "[[routes]]",
        &format!("{}\n[[routes]]", auth_section(&keys, "")),
        1,
    );
    let c = load(&text).unwrap();
    let loaded: Vec<String> = c
        .auth
        .unwrap()
        .keys
        .iter()
        .map(|k| match k {
            AuthKey::Static(keys) => keys
                .iter()
                .map(|k| format!("{:?} {:?}", k.kid, k.alg))
                .collect::<Vec<_>>()
                .join(", "),
            AuthKey::Url(u) => format!("{} {:?}", u.url, u.algorithm),
        })
        .collect();
    assert_eq!(
        loaded,
        [
            "Some(\"k1\") HS256",
            "None ES256",
            "http://127.0.0.1:1/jwks RS256"
        ]
    );
}
