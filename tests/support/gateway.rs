//! Owns the gateway under test: [`TestGateway::start`] runs the real `amqp_gateway::run` in
//! this process on `127.0.0.1:0` listeners and waits (with a deadline) until `/readyz` says the
//! publishing channels are up; [`TestGateway::reads`] / [`TestGateway::in_front_of`] start
//! read-only gateways (no broker) from config pieces ([`base_config_with`], [`upstream`],
//! [`read_route`]).

use std::net::SocketAddr;
use std::time::Duration;

use amqp_gateway::Config;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// `[server]` and `[amqp]` for a test config; routes and exchanges are appended by the test.
pub fn base_config(amqp_url: &str) -> String {
    base_config_full(amqp_url, "", "")
}

/// [`base_config`] with `server_extra` lines in `[server]` (`trusted_proxies = [...]`,
/// `public_host = "..."`); a key it sets replaces the default (see [`base_config_full`]).
pub fn base_config_with(amqp_url: &str, server_extra: &str) -> String {
    base_config_full(amqp_url, server_extra, "")
}

/// [`base_config`] with `amqp_extra` lines in `[amqp]` (`tls = { ... }`, `retry_after = ...`);
/// a key it sets replaces the default (see [`base_config_full`]).
pub fn base_config_amqp(amqp_url: &str, amqp_extra: &str) -> String {
    base_config_full(amqp_url, "", amqp_extra)
}

/// `[server]` and `[amqp]` with `server_extra` and `amqp_extra` lines added. The defaults:
/// `listen = "127.0.0.1:0"`, `admin_listen = "127.0.0.1:1"`, `max_body_bytes = 65536`,
/// `shutdown_timeout = "5s"`; `url = amqp_url`, `connections = 2`,
/// `channels_per_connection = 4`, `confirm_timeout = "5s"`, `connect_timeout = "2s"`. A key the
/// extra lines set replaces its default (`urls = [...]` replaces `url`), so a test states only
/// what it needs differently.
pub fn base_config_full(amqp_url: &str, server_extra: &str, amqp_extra: &str) -> String {
    let server = table(
        &[
            ("listen", "\"127.0.0.1:0\"".to_owned()),
            ("admin_listen", "\"127.0.0.1:1\"".to_owned()),
            ("max_body_bytes", "65536".to_owned()),
            ("shutdown_timeout", "\"5s\"".to_owned()),
        ],
        server_extra,
    );
    let mut amqp_defaults = vec![
        ("connections", "2".to_owned()),
        ("channels_per_connection", "4".to_owned()),
        ("confirm_timeout", "\"5s\"".to_owned()),
        ("connect_timeout", "\"2s\"".to_owned()),
    ];
    if !sets(amqp_extra, "urls") {
        amqp_defaults.insert(0, ("url", format!("\"{amqp_url}\"")));
    }
    let amqp = table(&amqp_defaults, amqp_extra);
    format!("\n[server]\n{server}\n[amqp]\n{amqp}")
}

/// The `defaults` whose keys `extra` does not set, then `extra`, one `key = value` a line.
fn table(defaults: &[(&str, String)], extra: &str) -> String {
    let mut out = String::new();
    for (key, value) in defaults {
        if !sets(extra, key) {
            out.push_str(&format!("{key} = {value}\n"));
        }
    }
    out.push_str(extra.trim_matches('\n'));
    out.push('\n');
    out
}

/// Whether a line of `lines` sets `key` (`key = ...`, `key.sub = ...`).
fn sets(lines: &str, key: &str) -> bool {
    lines.lines().any(|l| {
        l.trim_start()
            .strip_prefix(key)
            .is_some_and(|rest| rest.trim_start().starts_with(['=', '.']))
    })
}

/// The write-load gateway of the fault, drain and cluster tests: [`base_config_full`] with
/// `server_extra` and `amqp_extra`, the topic exchange `exchange`, and the public route
/// `event`: `POST /events/{id}` publishing to `exchange` with routing key `ev.{id}`
/// ([`super::load::post_event`] writes to it).
pub fn events_config(
    amqp_url: &str,
    exchange: &str,
    server_extra: &str,
    amqp_extra: &str,
) -> String {
    [
        base_config_full(amqp_url, server_extra, amqp_extra),
        topic_exchange(exchange),
        publish_route("event", "/events/{id}", exchange, "ev.{id}", ""),
    ]
    .concat()
}

/// An AMQP URL on a port nothing listens on: for gateways that only serve reads (start them
/// with [`TestGateway::start_unready`]).
pub fn no_broker() -> String {
    format!(
        "amqp://guest:guest@127.0.0.1:{}/%2f",
        super::broker::free_port()
    )
}

/// `[upstreams.NAME]` with the one target `url` and short timeouts (2 s per request, 300 ms to
/// connect).
pub fn upstream(name: &str, url: &str) -> String {
    format!(
        "\n[upstreams.{name}]\ntargets = [\"{url}\"]\ntimeout = \"2s\"\nconnect_timeout = \"300ms\"\n"
    )
}

/// A GET/HEAD `[[routes]]` table named `name` on `path`, proxied to `upstream`; `extra` adds
/// lines (`auth = ...`, `cache = ...`, `compress = ...`). Without an `auth` line in `extra` the
/// route is `auth = "public"`; a `methods` line replaces GET/HEAD.
pub fn read_route(name: &str, path: &str, upstream: &str, extra: &str) -> String {
    format!(
        "\n[[routes]]\nname = \"{name}\"\npath = \"{path}\"\n{}upstream = \"{upstream}\"\n{}{extra}\n",
        default_line(extra, "methods", "[\"GET\", \"HEAD\"]"),
        default_line(extra, "auth", "\"public\""),
    )
}

/// `[[amqp.exchanges]]`: a topic exchange `name`, declared by the gateway.
pub fn topic_exchange(name: &str) -> String {
    format!("\n[[amqp.exchanges]]\nname = \"{name}\"\ntype = \"topic\"\n")
}

/// A `POST` `[[routes]]` table named `name` on `path`, publishing to `exchange` with
/// `routing_key`; `extra` adds lines (`schema = ...`, `rate_limits = ...`, and more of the
/// publish settings as dotted keys: `publish.status = 201`). Without an `auth` line in `extra`
/// the route is `auth = "public"`; a `methods` line replaces POST.
pub fn publish_route(
    name: &str,
    path: &str,
    exchange: &str,
    routing_key: &str,
    extra: &str,
) -> String {
    format!(
        "\n[[routes]]\nname = \"{name}\"\npath = \"{path}\"\n{}{}publish.exchange = \"{exchange}\"\npublish.routing_key = \"{routing_key}\"\n{extra}\n",
        default_line(extra, "methods", "[\"POST\"]"),
        default_line(extra, "auth", "\"public\""),
    )
}

/// `key = value` unless `extra` sets `key` itself.
fn default_line(extra: &str, key: &str, value: &str) -> String {
    if sets(extra, key) {
        String::new()
    } else {
        format!("{key} = {value}\n")
    }
}

/// The public router of `config` (TOML) with no server around it and no broker needed
/// ([`amqp_gateway::AppState::from_config`]): drive it with
/// `tower::ServiceExt::oneshot` ([`super::http::call`]).
pub async fn router(config: &str) -> axum::Router {
    let config = Config::from_toml(config, "test-config", |_| None)
        .unwrap_or_else(|e| panic!("test config invalid: {e}"));
    let state = amqp_gateway::AppState::from_config(&config)
        .await
        .unwrap_or_else(|e| panic!("state for the test config: {e}"));
    amqp_gateway::app(state)
}

/// A running gateway.
pub struct TestGateway {
    /// `http://127.0.0.1:PORT` of the public listener.
    pub url: String,
    /// `http://127.0.0.1:PORT` of the admin listener.
    pub admin_url: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), amqp_gateway::RunError>>>,
}

impl TestGateway {
    /// Starts a gateway with `config` (TOML) and waits until it is ready to publish.
    pub async fn start(config: &str) -> TestGateway {
        let gw = Self::start_unready(config).await;
        gw.wait_ready(Duration::from_secs(20)).await;
        gw
    }

    /// Starts a read-only gateway (no broker: [`no_broker`]) with `server_extra` in `[server]`
    /// and `sections` (upstreams, `[auth]`, routes) after it.
    pub async fn reads(server_extra: &str, sections: &str) -> TestGateway {
        let config = format!("{}{sections}", base_config_with(&no_broker(), server_extra));
        Self::start_unready(&config).await
    }

    /// [`TestGateway::reads`] with upstream `o` ([`upstream`]) on `origin_url` first in
    /// `sections`.
    pub async fn in_front_of(origin_url: &str, server_extra: &str, sections: &str) -> TestGateway {
        let sections = format!("{}{sections}", upstream("o", origin_url));
        Self::reads(server_extra, &sections).await
    }

    /// [`TestGateway::in_front_of`] with the test `[auth]` section
    /// ([`super::tokens::auth_section`]) before `routes`.
    pub async fn in_front_of_with_auth(
        origin_url: &str,
        server_extra: &str,
        routes: &str,
    ) -> TestGateway {
        let sections = format!("{}{routes}", super::tokens::auth_section("", ""));
        Self::in_front_of(origin_url, server_extra, &sections).await
    }

    /// Starts a gateway without waiting for the broker.
    pub async fn start_unready(config: &str) -> TestGateway {
        let config = Config::from_toml(config, "test-config", |_| None)
            .unwrap_or_else(|e| panic!("test config invalid: {e}"));
        Self::launch(config).await
    }

    /// Starts a gateway from the config file `path` (so it can be reloaded), without waiting
    /// for the broker.
    pub async fn from_file(path: &std::path::Path) -> TestGateway {
        let config =
            Config::load(path, |_| None).unwrap_or_else(|e| panic!("test config invalid: {e}"));
        Self::launch(config).await
    }

    async fn launch(config: Config) -> TestGateway {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let admin_addr: SocketAddr = admin.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(amqp_gateway::run(config, listener, admin, async move {
            let _ = stopped.await;
        }));
        TestGateway {
            url: format!("http://{addr}"),
            admin_url: format!("http://{admin_addr}"),
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Polls `/readyz` until it answers 200, or panics at `timeout`.
    pub async fn wait_ready(&self, timeout: Duration) {
        self.ready_within(timeout, "start").await;
    }

    /// Polls `/readyz` until it answers 200 and returns how long that took; panics at
    /// `timeout`, naming `after` (what the gateway should have become ready after).
    pub async fn ready_within(&self, timeout: Duration, after: &str) -> Duration {
        let started = Instant::now();
        let client = reqwest::Client::new();
        let url = format!("{}/readyz", self.admin_url);
        loop {
            if let Ok(r) = client.get(&url).send().await
                && r.status() == 200
            {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < timeout,
                "gateway not ready within {timeout:?} after {after}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `self.url` + `path`.
    pub fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// Triggers graceful shutdown and waits for `run` to return.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(15), task)
                .await
                .expect("gateway did not stop within 15s")
                .expect("gateway task panicked")
                .expect("gateway returned an error");
        }
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
