//! SIP over TLS (RFC 3261 §26.2, RFC 5630): the server side. Our
//! identity (certificate chain and key, checked at start) and the
//! listeners, whose accepted connections, once the handshake is done,
//! run the same stream machinery as TCP (`tcp.rs`): framing, CRLF
//! keep-alives, idle and message timeouts, the connection caps.
//!
//! rustls with the ring provider; TLS 1.2 and 1.3 only.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use super::{TcpTransport, Transport};

/// Which of the two PEM files a [`TlsSetupError`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PemFile {
    Certificate,
    Key,
}

/// Why our identity cannot be used: which file, and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct TlsSetupError {
    pub file: PemFile,
    pub reason: String,
}

/// The TLS versions sipedge speaks: 1.2 as the floor (RFC 8996 retired
/// 1.0 and 1.1; carriers' SBCs all do 1.2).
pub static VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// The crypto provider every TLS config here uses: ring, which builds from
/// the registry with no C toolchain beyond cc. rustls 0.23.48 deprecates
/// it for lacking post-quantum key exchange (X25519MLKEM768); moving to
/// aws-lc-rs is this one function and the Cargo features.
#[allow(deprecated)]
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Our server config from a PEM chain (leaf first) and a PEM private key
/// (PKCS#8, PKCS#1 or SEC1): refused when either holds nothing usable or
/// when the key is not the leaf certificate's.
pub fn server_config(
    chain_pem: &[u8],
    key_pem: &[u8],
) -> Result<Arc<rustls::ServerConfig>, TlsSetupError> {
    let cert_err = |reason: String| TlsSetupError {
        file: PemFile::Certificate,
        reason,
    };
    let chain = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_err(format!("not a PEM certificate chain: {e}")))?;
    if chain.is_empty() {
        return Err(cert_err(
            "no \"BEGIN CERTIFICATE\" block; give the PEM chain, leaf first".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsSetupError {
        file: PemFile::Key,
        reason: match e {
            rustls::pki_types::pem::Error::NoItemsFound => {
                "no PEM private key (\"BEGIN PRIVATE KEY\", \"BEGIN RSA PRIVATE KEY\" or \
                 \"BEGIN EC PRIVATE KEY\")"
                    .into()
            }
            e => format!("not a PEM private key: {e}"),
        },
    })?;
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| cert_err(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => TlsSetupError {
                file: PemFile::Key,
                reason: "does not match the certificate (the first in the chain must be the \
                         leaf whose key this is)"
                    .into(),
            },
            rustls::Error::General(reason) => TlsSetupError {
                file: PemFile::Key,
                reason: format!("not a usable private key: {reason}"),
            },
            e => cert_err(format!("not usable: {e}")),
        })?;
    Ok(Arc::new(config))
}

/// Starts accepting TLS on an already-bound listener (from
/// [`super::bind_tcp`]): each connection is admitted against `tcp`'s caps
/// first (so a handshake in progress holds a slot, counted per source),
/// gets `handshake_timeout` to finish its handshake, and then runs on
/// `tcp`'s connection machinery as [`Transport::Tls`]. Returns the local
/// address.
pub fn serve(
    tcp: &TcpTransport,
    listener: std::net::TcpListener,
    config: Arc<rustls::ServerConfig>,
    handshake_timeout: Duration,
) -> io::Result<SocketAddr> {
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let local = listener.local_addr()?;
    let acceptor = TlsAcceptor::from(config);
    let t = tcp.clone();
    tcp.spawn(async move {
        let shutdown = t.shutdown_token().clone();
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => return,
                a = listener.accept() => a,
            };
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and the like: back off instead of spinning.
                    tracing::warn!("tls:{local}: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            if !t.admit_inbound(peer, local, Transport::Tls) {
                continue;
            }
            let (t2, acceptor, shutdown) = (t.clone(), acceptor.clone(), shutdown.clone());
            // The handshake on its own task: a slow client must not hold
            // up the accept loop.
            t.spawn(async move {
                let conn_local = super::tcp::prepare_stream(&stream, Some(local));
                let handshake = tokio::time::timeout(handshake_timeout, acceptor.accept(stream));
                let outcome = tokio::select! {
                    _ = shutdown.cancelled() => None,
                    r = handshake => Some(r),
                };
                match outcome {
                    Some(Ok(Ok(tls))) => {
                        t2.start_inbound(tls, peer, conn_local, Transport::Tls);
                    }
                    Some(Ok(Err(e))) => {
                        tracing::debug!("tls:{peer}: handshake failed: {e}");
                        t2.release_inbound(peer);
                    }
                    Some(Err(_)) => {
                        tracing::debug!("tls:{peer}: handshake not done in {handshake_timeout:?}");
                        t2.release_inbound(peer);
                    }
                    None => t2.release_inbound(peer),
                }
            });
        }
    });
    Ok(local)
}
