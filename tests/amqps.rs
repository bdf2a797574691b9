//! amqps against a real RabbitMQ node with an amqps listener (`support::private_tls_node`):
//! the gateway's `[amqp] tls` table decides whom it trusts, which name it verifies and which
//! client certificate it presents.
//!
//! The certificates are made here with rcgen: a test CA, a server certificate for `localhost`
//! only (not `127.0.0.1`, so that the verified name is observable), a second CA that signed
//! nothing the broker has, and a client certificate from the test CA. The node also listens on
//! plain amqp, which is what the test's own queues use.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use lapin::ExchangeKind;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use reqwest::StatusCode;
use support::gateway::{base_config_amqp, publish_route, topic_exchange};
use support::{PrivateNode, TestGateway, TestQueue, private_tls_node, unique_name};

const WAIT: Duration = Duration::from_secs(5);
/// How long a gateway that must not connect is watched for. A good configuration is ready in
/// well under a second on loopback (and `connect_timeout` is 2 s), so a gateway still unready
/// after this never will be.
const UNREADY_WINDOW: Duration = Duration::from_secs(3);
/// Generous bound for the 503 of a gateway without channels (it answers at once).
const UNAVAILABLE_WITHIN: Duration = Duration::from_secs(3);
/// The common name of the client certificate, looked for in the broker's connection list.
const CLIENT_CN: &str = "amqps-gateway-test-client";

/// The certificates of this test binary, as PEM files in one directory (the layout
/// `broker.sh start --tls` expects, plus the gateway-side files).
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

static PKI: OnceLock<Pki> = OnceLock::new();

fn pki() -> &'static Pki {
    PKI.get_or_init(|| {
        // Under cargo's per-target scratch dir, one per process; earlier runs' leftovers go.
        let root = Path::new(env!("CARGO_TARGET_TMPDIR"));
        if let Ok(entries) = std::fs::read_dir(root) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if let Some(pid) = name.strip_prefix("amqps-pki-")
                    && !Path::new("/proc").join(pid).exists()
                {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
        let dir = root.join(format!("amqps-pki-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, pem: String| std::fs::write(dir.join(name), pem).unwrap();

        let (ca_pem, ca) = new_ca("amqp-gateway test CA");
        write("ca.pem", ca_pem);
        // The broker's certificate names `localhost` only.
        let (pem, key) = leaf(
            &ca,
            "localhost",
            &["localhost"],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        write("server.pem", pem);
        write("server.key", key);
        let (pem, key) = leaf(&ca, CLIENT_CN, &[], ExtendedKeyUsagePurpose::ClientAuth);
        write("client.pem", pem);
        write("client.key", key);
        let (other_pem, _) = new_ca("some other CA");
        write("other-ca.pem", other_pem);
        Pki { dir }
    })
}

fn new_ca(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), Issuer::new(params, key))
}

/// A certificate signed by `ca` and its PKCS#8 key, both PEM.
fn leaf(
    ca: &Issuer<'static, KeyPair>,
    cn: &str,
    names: &[&str],
    usage: ExtendedKeyUsagePurpose,
) -> (String, String) {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut params = CertificateParams::new(names).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, ca).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// The amqps node of this binary (booted on first use with [`pki`]'s certificates).
async fn node() -> &'static PrivateNode {
    private_tls_node(&pki().dir).await
}

/// A gateway config on the node's amqps port with `host` in the URL, the `[amqp] tls` table
/// `tls`, an exchange unique to the test and a POST route publishing to it. Returns the config
/// and the exchange.
fn gateway_config(node: &PrivateNode, host: &str, tls: &str) -> (String, String) {
    let exchange = unique_name("amqps");
    let url = format!("amqps://guest:guest@{host}:{}/%2f", node.tls_port());
    let config = format!(
        "{}{}{}",
        base_config_amqp(&url, &format!("tls = {{ {tls} }}")),
        topic_exchange(&exchange),
        publish_route("create-order", "/orders", &exchange, "order.created", "")
    );
    (config, exchange)
}

async fn post_order(gw: &TestGateway, body: &str) -> StatusCode {
    support::http::write(
        reqwest::Method::POST,
        &gw.at("/orders"),
        support::http::JSON,
        body.to_owned(),
    )
    .await
    .status()
}

/// Polls `/readyz` for [`UNREADY_WINDOW`]; panics if it ever answers 200.
async fn assert_stays_unready(gw: &TestGateway, why: &str) {
    let client = reqwest::Client::new();
    let until = Instant::now() + UNREADY_WINDOW;
    while Instant::now() < until {
        let status = client
            .get(format!("{}/readyz", gw.admin_url))
            .send()
            .await
            .unwrap()
            .status();
        assert_ne!(status, StatusCode::OK, "gateway became ready: {why}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A queue on the node (over plain amqp) receiving the route's `order.created` events.
async fn orders(node: &PrivateNode, exchange: &str) -> TestQueue {
    TestQueue::bind(
        node.url(),
        exchange,
        Some(ExchangeKind::Topic),
        "order.created",
    )
    .await
}

#[tokio::test]
async fn publishes_over_amqps_trusting_a_private_ca() {
    let node = node().await;
    let pki = pki();
    let (config, exchange) = gateway_config(
        node,
        "localhost",
        &format!(r#"ca_file = "{}""#, pki.path("ca.pem")),
    );
    let q = orders(node, &exchange).await;
    let gw = TestGateway::start(&config).await;

    let body = r#"{"order":42,"note":"über TLS"}"#;
    assert_eq!(post_order(&gw, body).await, StatusCode::ACCEPTED);
    let d = q.expect(WAIT, "the order published over amqps").await;
    assert_eq!(d.routing_key.as_str(), "order.created");
    assert_eq!(d.data, body.as_bytes());
    gw.shutdown().await;
}

#[tokio::test]
async fn a_ca_that_did_not_sign_the_broker_is_not_trusted() {
    let node = node().await;
    let pki = pki();
    let (config, _) = gateway_config(
        node,
        "localhost",
        &format!(r#"ca_file = "{}""#, pki.path("other-ca.pem")),
    );
    let gw = TestGateway::start_unready(&config).await;
    assert_stays_unready(&gw, "the broker's certificate is not from other-ca.pem").await;

    let started = Instant::now();
    let status = post_order(&gw, r#"{"order":1}"#).await;
    let took = started.elapsed();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(took < UNAVAILABLE_WITHIN, "503 took {took:?}");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_server_name_the_certificate_does_not_carry_is_refused() {
    let node = node().await;
    let pki = pki();
    let (config, _) = gateway_config(
        node,
        "localhost",
        &format!(
            r#"ca_file = "{}", server_name = "wrong.example""#,
            pki.path("ca.pem")
        ),
    );
    let gw = TestGateway::start_unready(&config).await;
    assert_stays_unready(&gw, "the certificate names localhost, not wrong.example").await;
    gw.shutdown().await;
}

#[tokio::test]
async fn server_name_replaces_the_url_host_in_verification() {
    let node = node().await;
    let pki = pki();
    let ca = format!(r#"ca_file = "{}""#, pki.path("ca.pem"));
    // The certificate does not name 127.0.0.1: by the URL host alone, refused …
    let (config, _) = gateway_config(node, "127.0.0.1", &ca);
    let by_host = TestGateway::start_unready(&config).await;
    // … and accepted with `server_name = "localhost"`, on the same URL.
    let (config, exchange) = gateway_config(
        node,
        "127.0.0.1",
        &format!(r#"{ca}, server_name = "localhost""#),
    );
    let q = orders(node, &exchange).await;
    let by_name = TestGateway::start(&config).await;
    assert_eq!(
        post_order(&by_name, r#"{"order":7}"#).await,
        StatusCode::ACCEPTED
    );
    assert_eq!(q.expect(WAIT, "the order").await.data, br#"{"order":7}"#);
    assert_stays_unready(&by_host, "the certificate does not name 127.0.0.1").await;
    by_name.shutdown().await;
    by_host.shutdown().await;
}

#[tokio::test]
async fn the_client_certificate_is_presented_to_the_broker() {
    let node = node().await;
    let pki = pki();
    let (config, exchange) = gateway_config(
        node,
        "localhost",
        &format!(
            r#"ca_file = "{}", client_cert_file = "{}", client_key_file = "{}""#,
            pki.path("ca.pem"),
            pki.path("client.pem"),
            pki.path("client.key")
        ),
    );
    let q = orders(node, &exchange).await;
    let gw = TestGateway::start(&config).await;
    assert_eq!(
        post_order(&gw, r#"{"order":9}"#).await,
        StatusCode::ACCEPTED
    );
    q.expect(WAIT, "the order sent with a client certificate")
        .await;
    // The broker verified the certificate against ca.pem (verify_peer) and shows its subject on
    // the gateway's connections; no other test's gateway presents one.
    let listed = node
        .ctl_ok(&["list_connections", "--quiet", "ssl", "peer_cert_subject"])
        .await;
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("true") && l.contains(&format!("CN={CLIENT_CN}"))),
        "no TLS connection with the client certificate:\n{listed}"
    );
    gw.shutdown().await;
}
