//! TLS for the tests: a throwaway PKI made with rcgen ([`Pki`]: a server CA, server
//! certificates, a client CA and a client certificate), written as PEM files into a temp
//! directory that is removed on drop, and [`TlsOrigin`]: an https origin on `127.0.0.1:0`
//! (tokio-rustls + hyper) that answers what it saw (HTTP version, ALPN, client certificate)
//! as JSON, or a JWKS document on `/jwks`, and counts handshakes and requests.
//!
//! Everything uses the gateway's one crypto provider (`amqp_gateway::tls::provider()`).

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

/// A certificate and its key, in memory and as PEM files.
pub struct Leaf {
    /// The certificate (DER).
    pub cert: CertificateDer<'static>,
    /// Its private key (PKCS#8 DER).
    pub key: PrivatePkcs8KeyDer<'static>,
    /// PEM file of the certificate.
    pub cert_file: PathBuf,
    /// PEM file of the key.
    pub key_file: PathBuf,
}

/// A signing CA.
struct Ca {
    params: CertificateParams,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> (Ca, String) {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        (Ca { params, key }, pem)
    }

    fn issue(
        &self,
        dir: &Path,
        file: &str,
        names: &[&str],
        usage: ExtendedKeyUsagePurpose,
    ) -> Leaf {
        let mut params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                .unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, names.first().copied().unwrap_or(file));
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        let cert_file = dir.join(format!("{file}.pem"));
        let key_file = dir.join(format!("{file}.key"));
        std::fs::write(&cert_file, cert.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        Leaf {
            cert: cert.der().clone(),
            key: PrivatePkcs8KeyDer::from(key.serialize_der()),
            cert_file,
            key_file,
        }
    }
}

/// The test PKI: all of it generated afresh per [`Pki::new`], in its own temp directory.
pub struct Pki {
    /// The directory holding every PEM file (removed on drop).
    pub dir: PathBuf,
    /// PEM file of the CA that signs the server certificates.
    pub ca_file: PathBuf,
    /// Server certificate for `localhost` and `127.0.0.1`.
    pub server: Leaf,
    /// Server certificate for `api.internal` only.
    pub internal: Leaf,
    /// PEM file of the CA that signs client certificates.
    pub client_ca_file: PathBuf,
    /// A client certificate signed by the client CA.
    pub client: Leaf,
}

impl Pki {
    /// Generates the CAs and certificates and writes them as PEM files.
    pub fn new() -> Pki {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let dir = std::env::temp_dir().join(format!(
            "amqp-gateway-tls-{}-{}-{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let (ca, ca_pem) = Ca::new("amqp-gateway test CA");
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, ca_pem).unwrap();
        let server = ca.issue(
            &dir,
            "server",
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let internal = ca.issue(
            &dir,
            "internal",
            &["api.internal"],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (client_ca, client_ca_pem) = Ca::new("amqp-gateway test client CA");
        let client_ca_file = dir.join("client-ca.pem");
        std::fs::write(&client_ca_file, client_ca_pem).unwrap();
        let client = client_ca.issue(
            &dir,
            "client",
            &["gateway.client"],
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        Pki {
            dir,
            ca_file,
            server,
            internal,
            client_ca_file,
            client,
        }
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// How a [`TlsOrigin`] is set up.
pub struct OriginOptions<'a> {
    /// Its certificate.
    pub leaf: &'a Leaf,
    /// ALPN protocols offered (`h2`, `http/1.1`).
    pub alpn: &'a [&'a str],
    /// When set, a client certificate signed by this CA (PEM file) is required.
    pub client_ca: Option<&'a Path>,
    /// When set, served on `/jwks` (as `application/json`).
    pub jwks: Option<String>,
}

impl<'a> OriginOptions<'a> {
    /// `leaf`, ALPN `h2` and `http/1.1`, no client certificate, no JWKS.
    pub fn new(leaf: &'a Leaf) -> Self {
        OriginOptions {
            leaf,
            alpn: &["h2", "http/1.1"],
            client_ca: None,
            jwks: None,
        }
    }
}

#[derive(Default)]
struct Counts {
    handshakes: AtomicUsize,
    failed_handshakes: AtomicUsize,
    requests: AtomicUsize,
}

/// A running https origin. Every other path answers 200 with
/// `{"path", "version", "alpn", "client_cert"}`: what it saw.
pub struct TlsOrigin {
    /// `https://127.0.0.1:PORT`.
    pub url: String,
    counts: Arc<Counts>,
    task: JoinHandle<()>,
}

impl TlsOrigin {
    /// Starts the origin on `127.0.0.1:0`.
    pub async fn start(options: OriginOptions<'_>) -> TlsOrigin {
        let provider = amqp_gateway::tls::provider();
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = match options.client_ca {
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                let pem = std::fs::read(ca).unwrap();
                for cert in rustls_pemfile_certs(&pem) {
                    roots.add(cert).unwrap();
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .unwrap();
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(
                vec![options.leaf.cert.clone()],
                PrivateKeyDer::Pkcs8(options.leaf.key.clone_key()),
            )
            .unwrap();
        config.alpn_protocols = options.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        let counts = Arc::new(Counts::default());
        let jwks: Option<Arc<str>> = options.jwks.map(Arc::from);
        let c = counts.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, counts, jwks) = (acceptor.clone(), c.clone(), jwks.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        counts.failed_handshakes.fetch_add(1, Ordering::SeqCst);
                        return;
                    };
                    counts.handshakes.fetch_add(1, Ordering::SeqCst);
                    let session = tls.get_ref().1;
                    let client_cert = session.peer_certificates().is_some_and(|c| !c.is_empty());
                    let alpn = session
                        .alpn_protocol()
                        .map(|p| String::from_utf8_lossy(p).into_owned());
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        counts.requests.fetch_add(1, Ordering::SeqCst);
                        let body = match &jwks {
                            Some(doc) if req.uri().path() == "/jwks" => doc.to_string(),
                            _ => serde_json::json!({
                                "path": req.uri().path(),
                                "version": format!("{:?}", req.version()),
                                "alpn": alpn,
                                "client_cert": client_cert,
                            })
                            .to_string(),
                        };
                        let response = Response::builder()
                            .header("content-type", "application/json")
                            .body(Full::new(Bytes::from(body)))
                            .unwrap();
                        async move { Ok::<_, Infallible>(response) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        TlsOrigin { url, counts, task }
    }

    /// Requests answered so far.
    pub fn requests(&self) -> usize {
        self.counts.requests.load(Ordering::SeqCst)
    }

    /// TLS handshakes that completed.
    pub fn handshakes(&self) -> usize {
        self.counts.handshakes.load(Ordering::SeqCst)
    }

    /// TLS handshakes that failed (on the server's side).
    pub fn failed_handshakes(&self) -> usize {
        self.counts.failed_handshakes.load(Ordering::SeqCst)
    }
}

impl Drop for TlsOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn rustls_pemfile_certs(pem: &[u8]) -> Vec<CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
}
