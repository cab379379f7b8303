//! Optional TLS under the shardfs handshake, for networks that cannot be trusted with file
//! content: daemons present a certificate signed by the cluster's CA, and every client
//! (mounts, tools, and daemons connecting to each other) checks it against that CA and the
//! host name or IP address it dialled. The cluster-secret handshake then runs inside the
//! encrypted channel as before; clients need no certificate of their own.
//!
//! Configurations are loaded once per process and live as long as it does, so that
//! [`ClientOptions`](crate::ClientOptions) and [`ServerConfig`](crate::ServerConfig) stay
//! `Copy`.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} from {path}: {reason}")]
    Read { what: &'static str, path: String, reason: String },
    #[error("{path} holds no {what}")]
    Empty { what: &'static str, path: String },
    #[error("{path} is readable by other users (mode {mode:o}); chmod 600 it")]
    KeyTooOpen { path: String, mode: u32 },
    #[error("invalid TLS setup: {0}")]
    Config(String),
}

/// A daemon's TLS: the certificate it serves with, and the CA it checks the daemons it
/// connects to against.
#[derive(Clone, Copy, Debug)]
pub struct DaemonTls {
    pub server: &'static TlsServer,
    pub client: &'static TlsClient,
}

/// A daemon's TLS flags.
#[cfg(feature = "cli")]
#[derive(clap::Args, Debug, Default)]
pub struct DaemonTlsArgs {
    /// PEM certificate chain this daemon serves TLS with (its certificate first), signed by
    /// the cluster CA and naming the host or IP address others dial. With --tls-key and
    /// --tls-ca; without all three, connections are plain TCP.
    #[arg(long, value_name = "FILE", requires_all = ["tls_key", "tls_ca"])]
    pub tls_cert: Option<std::path::PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires_all = ["tls_cert", "tls_ca"])]
    pub tls_key: Option<std::path::PathBuf>,
    /// PEM certificate of the cluster CA, which the daemons this one connects to must
    /// present certificates from.
    #[arg(long, value_name = "FILE", requires_all = ["tls_cert", "tls_key"])]
    pub tls_ca: Option<std::path::PathBuf>,
}

#[cfg(feature = "cli")]
impl DaemonTlsArgs {
    /// The TLS these flags ask for, loaded.
    pub fn load(&self) -> Result<Option<DaemonTls>, TlsError> {
        DaemonTls::from_files(
            self.tls_cert.as_deref(),
            self.tls_key.as_deref(),
            self.tls_ca.as_deref(),
        )
    }
}

impl DaemonTls {
    /// TLS from a daemon's `--tls-cert`, `--tls-key` and `--tls-ca`: none of them, or all.
    pub fn from_files(
        cert: Option<&Path>,
        key: Option<&Path>,
        ca: Option<&Path>,
    ) -> Result<Option<DaemonTls>, TlsError> {
        match (cert, key, ca) {
            (None, None, None) => Ok(None),
            (Some(cert), Some(key), Some(ca)) => Ok(Some(DaemonTls {
                server: TlsServer::load(cert, key)?,
                client: TlsClient::load(ca)?,
            })),
            _ => Err(TlsError::Config("--tls-cert, --tls-key and --tls-ca go together".into())),
        }
    }
}

/// A daemon's side: its certificate chain and key.
pub struct TlsServer {
    acceptor: TlsAcceptor,
}

/// A client's side: the CA that signs the cluster's daemon certificates.
pub struct TlsClient {
    connector: TlsConnector,
}

impl std::fmt::Debug for TlsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsServer")
    }
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsClient")
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_error(
    what: &'static str,
    path: &Path,
) -> impl FnOnce(rustls_pki_types::pem::Error) -> TlsError {
    move |e| TlsError::Read { what, path: path.display().to_string(), reason: e.to_string() }
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(read_error("certificates", path))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(read_error("certificates", path))?;
    if certs.is_empty() {
        return Err(TlsError::Empty { what: "PEM certificate", path: path.display().to_string() });
    }
    Ok(certs)
}

impl TlsServer {
    /// Loads a PEM certificate chain (the daemon's certificate first) and its PEM private
    /// key, for the life of the process.
    pub fn load(cert: &Path, key: &Path) -> Result<&'static TlsServer, TlsError> {
        let chain = certificates(cert)?;
        // Like the cluster secret, the key may be read by its owner only.
        let mode = std::fs::metadata(key)
            .map_err(|e| TlsError::Read {
                what: "a private key",
                path: key.display().to_string(),
                reason: e.to_string(),
            })?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            let path = key.display().to_string();
            return Err(TlsError::KeyTooOpen { path, mode: mode & 0o7777 });
        }
        let key = PrivateKeyDer::from_pem_file(key).map_err(read_error("a private key", key))?;
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| TlsError::Config(format!("certificate and key: {e}")))?;
        let acceptor = TlsAcceptor::from(Arc::new(config));
        Ok(Box::leak(Box::new(TlsServer { acceptor })))
    }

    pub(crate) async fn accept(
        &self,
        stream: TcpStream,
    ) -> std::io::Result<tokio_rustls::server::TlsStream<TcpStream>> {
        self.acceptor.accept(stream).await
    }
}

impl TlsClient {
    /// Loads the PEM certificates of the CA(s) daemons' certificates must chain to, for the
    /// life of the process.
    pub fn load(ca: &Path) -> Result<&'static TlsClient, TlsError> {
        let mut roots = RootCertStore::empty();
        for cert in certificates(ca)? {
            roots.add(cert).map_err(|e| TlsError::Config(format!("CA certificate: {e}")))?;
        }
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = TlsConnector::from(Arc::new(config));
        Ok(Box::leak(Box::new(TlsClient { connector })))
    }

    /// Opens TLS over `stream` to `addr` (`host:port`), checking the daemon's certificate
    /// names that host.
    pub(crate) async fn connect(
        &self,
        addr: &str,
        stream: TcpStream,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let name = ServerName::try_from(host.to_owned()).map_err(|e| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{host}: {e}"))
        })?;
        self.connector.connect(name, stream).await
    }
}
