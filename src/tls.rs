//! TLS client settings for every outbound connection (upstream targets, JWKS URLs, the broker):
//! the `tls = { ca_file, server_name, client_cert_file, client_key_file }` table, loaded once
//! at config time into a ready [`ClientTls`].
//!
//! One crypto provider for the whole binary: aws-lc-rs (see `Cargo.toml`). Every config is
//! built with that provider passed explicitly, so nothing depends on a process-wide default;
//! [`install_default_provider`] also installs it as the default for libraries that ask for one.
//!
//! [`https_connector`] turns a [`ClientTls`] into the hyper connector of an HTTP client
//! (upstreams, JWKS URLs); `shared::ErrorChain` prints a connect error with the TLS reason that
//! hyper nests among its sources.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use hyper_rustls::{FixedServerNameResolver, HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use rustls::ClientConfig;
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// `tls = { … }` on an upstream, a JWKS key or `[amqp]`, as written in the file.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// PEM file of the CA certificate(s) that sign the server's certificate. When set, only
    /// these are trusted (a private CA); when absent, the Mozilla roots (webpki-roots).
    pub ca_file: Option<PathBuf>,
    /// Name the server's certificate must carry (and SNI), instead of the URL's host: for
    /// targets addressed by IP or by an internal alias.
    pub server_name: Option<String>,
    /// PEM certificate chain presented to servers that ask for a client certificate (mTLS).
    /// Requires `client_key_file`.
    pub client_cert_file: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of `client_cert_file`.
    pub client_key_file: Option<PathBuf>,
}

/// A loaded TLS client configuration: trust anchors, optional client certificate and the
/// server name to verify, ready to hand to a connector.
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<ClientConfig>,
    server_name: Option<ServerName<'static>>,
    /// SHA-256 of the settings and of every file's bytes as loaded: two loads are equal when
    /// they would verify and authenticate the same way (a reload keeps an upstream's pool
    /// unless its certificates changed on disk).
    fingerprint: [u8; 32],
}

impl PartialEq for ClientTls {
    fn eq(&self, other: &Self) -> bool {
        self.fingerprint == other.fingerprint
    }
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("server_name", &self.server_name)
            .field(
                "client_auth",
                &self.config.client_auth_cert_resolver.has_certs(),
            )
            .finish_non_exhaustive()
    }
}

/// A `tls` table that does not load: the field at fault (`ca_file`, …) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsError {
    /// The key inside the `tls` table.
    pub field: &'static str,
    /// What is wrong, naming the file.
    pub message: String,
}

fn error(field: &'static str, message: impl Into<String>) -> TlsError {
    TlsError {
        field,
        message: message.into(),
    }
}

/// The crypto provider every TLS config of the gateway uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Installs [`provider`] as rustls' process default (for code that builds configs without
/// naming one). Idempotent: a second call, or one after another library installed the same
/// provider, changes nothing.
pub fn install_default_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

impl ClientTls {
    /// Loads `settings` (or the defaults: Mozilla roots, no client certificate). File errors
    /// name the file; nothing else is read later.
    pub fn load(settings: Option<&TlsSettings>) -> Result<Self, TlsError> {
        let default = TlsSettings::default();
        let settings = settings.unwrap_or(&default);
        let mut fingerprint = Sha256::new();
        fingerprint.update(format!("{settings:?}").as_bytes());
        let roots = match &settings.ca_file {
            Some(path) => {
                let mut roots = RootCertStore::empty();
                for cert in read_certs("ca_file", path, &mut fingerprint)? {
                    roots.add(cert).map_err(|e| {
                        error(
                            "ca_file",
                            format!("{}: not a usable CA: {e}", path.display()),
                        )
                    })?;
                }
                roots
            }
            None => RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            },
        };
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| error("ca_file", format!("TLS set-up failed: {e}")))?
            .with_root_certificates(roots);
        let config = match (&settings.client_cert_file, &settings.client_key_file) {
            (None, None) => builder.with_no_client_auth(),
            (Some(cert), Some(key)) => {
                let chain = read_certs("client_cert_file", cert, &mut fingerprint)?;
                let key_bytes = read("client_key_file", key, &mut fingerprint)?;
                let key_der = PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|e| {
                    error(
                        "client_key_file",
                        format!("{}: no PEM private key: {e}", key.display()),
                    )
                })?;
                builder.with_client_auth_cert(chain, key_der).map_err(|e| {
                    error(
                        "client_key_file",
                        format!("{} does not match {}: {e}", key.display(), cert.display()),
                    )
                })?
            }
            (Some(_), None) => {
                return Err(error("client_key_file", "required with client_cert_file"));
            }
            (None, Some(_)) => {
                return Err(error("client_cert_file", "required with client_key_file"));
            }
        };
        let server_name = settings
            .server_name
            .as_deref()
            .map(|name| {
                ServerName::try_from(name.to_owned()).map_err(|_| {
                    error(
                        "server_name",
                        format!("`{name}` is not a DNS name or IP address"),
                    )
                })
            })
            .transpose()?;
        Ok(Self {
            config: Arc::new(config),
            server_name,
            fingerprint: fingerprint.finalize().into(),
        })
    }

    /// The rustls config (without ALPN: connectors add the protocols they speak).
    pub fn config(&self) -> &Arc<ClientConfig> {
        &self.config
    }

    /// The configured `server_name`, when it overrides the URL's host.
    pub fn server_name(&self) -> Option<&ServerName<'static>> {
        self.server_name.as_ref()
    }
}

/// A connector for `http://` (as is) and `https://` URIs, the latter over TLS with `tls` (its
/// roots, client certificate and `server_name`, which replaces the URI's host for SNI and
/// certificate verification). h2 when the server offers it over ALPN, else HTTP/1.1. `http`
/// is the TCP connector (timeouts, nodelay); it is set to accept `https://` URIs.
pub fn https_connector(tls: &ClientTls, mut http: HttpConnector) -> HttpsConnector<HttpConnector> {
    http.enforce_http(false);
    let builder = HttpsConnectorBuilder::new()
        .with_tls_config(ClientConfig::clone(tls.config()))
        .https_or_http();
    let builder = match tls.server_name() {
        Some(name) => builder.with_server_name_resolver(FixedServerNameResolver::new(name.clone())),
        None => builder,
    };
    builder.enable_http1().enable_http2().wrap_connector(http)
}

/// The bytes of `path`, added to `fingerprint`.
fn read(field: &'static str, path: &Path, fingerprint: &mut Sha256) -> Result<Vec<u8>, TlsError> {
    let bytes = std::fs::read(path)
        .map_err(|e| error(field, format!("{}: cannot read: {e}", path.display())))?;
    fingerprint.update(&bytes);
    Ok(bytes)
}

fn read_certs(
    field: &'static str,
    path: &Path,
    fingerprint: &mut Sha256,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(field, path, fingerprint)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            error(
                field,
                format!("{}: cannot read PEM certificates: {e}", path.display()),
            )
        })?;
    if certs.is_empty() {
        return Err(error(
            field,
            format!("{}: holds no PEM certificate", path.display()),
        ));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_load_the_mozilla_roots() {
        let tls = ClientTls::load(None).unwrap();
        assert!(tls.server_name().is_none());
        assert!(!tls.config().client_auth_cert_resolver.has_certs());
    }

    #[test]
    fn a_missing_ca_file_names_the_file() {
        let settings = TlsSettings {
            ca_file: Some(PathBuf::from("/nonexistent/ca.pem")),
            ..TlsSettings::default()
        };
        let err = ClientTls::load(Some(&settings)).unwrap_err();
        assert_eq!(err.field, "ca_file");
        assert!(
            err.message.contains("/nonexistent/ca.pem"),
            "{}",
            err.message
        );
    }

    #[test]
    fn a_client_cert_needs_its_key() {
        let settings = TlsSettings {
            client_cert_file: Some(PathBuf::from("cert.pem")),
            ..TlsSettings::default()
        };
        assert_eq!(
            ClientTls::load(Some(&settings)).unwrap_err().field,
            "client_key_file"
        );
    }

    #[test]
    fn a_bad_server_name_is_refused() {
        let settings = TlsSettings {
            server_name: Some("not a name".into()),
            ..TlsSettings::default()
        };
        assert_eq!(
            ClientTls::load(Some(&settings)).unwrap_err().field,
            "server_name"
        );
    }
}
