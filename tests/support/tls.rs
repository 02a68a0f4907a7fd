//! TLS test material: a PKI made by the test (rcgen) and a TLS client
//! that is a SIP trunk. Included with `#[path]` beside `mod support;` by
//! the TLS tests that need it.
#![allow(dead_code)] // each test file uses a part of it
//!
//! - [`Ca`]: a test CA that signs server and client certificates and CRLs.
//! - [`TlsTrunk`]: a tokio-rustls client trusting a given CA, optionally
//!   presenting a client certificate, with messages framed off the stream
//!   into an inbox ([`TlsTrunk::recv`] waits up to [`super::support::WAIT`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use sipedge::sip::{frame_stream, StreamFrame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::support::{Received, WAIT};

/// A test CA.
pub struct Ca {
    pub issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

/// A certificate and its key, as written to files.
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub der: CertificateDer<'static>,
    pub key_der: PrivateKeyDer<'static>,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let issuer =
            rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap())
                .unwrap();
        Ca { issuer }
    }

    pub fn der(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }

    /// Writes the CA certificate to `path`.
    pub fn write(&self, path: &Path) -> PathBuf {
        std::fs::write(path, self.issuer.pem()).unwrap();
        path.to_owned()
    }

    /// A certificate for `names` (none: a client certificate, with the
    /// client-auth usage) with `serial` and validity `[from, until]`
    /// (years, Jan 1st), written to `dir/<stem>.pem` (the chain: leaf,
    /// then this CA) and `dir/<stem>.key`.
    pub fn issue(
        &self,
        dir: &Path,
        stem: &str,
        names: &[&str],
        serial: u64,
        (from, until): (i32, i32),
    ) -> Issued {
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, stem);
        params.serial_number = Some(rcgen::SerialNumber::from(serial));
        params.not_before = rcgen::date_time_ymd(from, 1, 1);
        params.not_after = rcgen::date_time_ymd(until, 1, 1);
        if names.is_empty() {
            params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        }
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (cert_path, key_path) = (
            dir.join(format!("{stem}.pem")),
            dir.join(format!("{stem}.key")),
        );
        std::fs::write(&cert_path, format!("{}{}", cert.pem(), self.issuer.pem())).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        Issued {
            cert: cert_path,
            key: key_path,
            der: cert.der().clone(),
            key_der: PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        }
    }

    /// A CRL revoking `serials`, written to `path`.
    pub fn crl(&self, path: &Path, serials: &[u64]) -> PathBuf {
        let params = rcgen::CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2024, 1, 1),
            next_update: rcgen::date_time_ymd(2100, 1, 1),
            crl_number: rcgen::SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|&s| rcgen::RevokedCertParams {
                    serial_number: rcgen::SerialNumber::from(s),
                    revocation_time: rcgen::date_time_ymd(2024, 1, 1),
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(&self.issuer).unwrap();
        std::fs::write(path, crl.pem().unwrap()).unwrap();
        path.to_owned()
    }
}

/// The serial (hex) and `notAfter` (Unix seconds) of a DER certificate.
pub fn serial_and_not_after(der: &[u8]) -> (String, i64) {
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    (
        cert.raw_serial_as_string(),
        cert.validity().not_after.timestamp(),
    )
}

type Stream = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// A trunk connected to the proxy over TLS: what it reads is framed off
/// the stream into `inbox`; EOF or an error closes the inbox.
pub struct TlsTrunk {
    /// Its own end of the connection (what its Via names).
    pub addr: SocketAddr,
    /// The certificate chain the proxy served.
    pub served: Vec<CertificateDer<'static>>,
    out: tokio::io::WriteHalf<Stream>,
    inbox: mpsc::UnboundedReceiver<Received>,
}

/// Why a client handshake did not get through.
#[derive(Debug)]
pub struct HandshakeFailed(pub std::io::Error);

impl TlsTrunk {
    /// Connects from `from` (an address to bind, port 0: any) to `to`,
    /// trusting `ca` for `sip.test`, presenting `client` if given. With
    /// TLS 1.3 the server checks a client certificate after the client's
    /// handshake is done: a refusal shows as the inbox closing.
    pub async fn connect_from(
        from: Option<&str>,
        to: SocketAddr,
        ca: CertificateDer<'static>,
        client: Option<&Issued>,
    ) -> Result<TlsTrunk, HandshakeFailed> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca).unwrap();
        let builder =
            rustls::ClientConfig::builder_with_provider(sipedge::transport::tls::provider())
                .with_protocol_versions(sipedge::transport::tls::VERSIONS)
                .unwrap()
                .with_root_certificates(roots);
        let config = match client {
            Some(c) => builder
                .with_client_auth_cert(vec![c.der.clone()], c.key_der.clone_key())
                .unwrap(),
            None => builder.with_no_client_auth(),
        };
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        if let Some(ip) = from {
            socket
                .bind(SocketAddr::new(ip.parse().unwrap(), 0))
                .unwrap();
        }
        let tcp = tokio::time::timeout(WAIT, socket.connect(to))
            .await
            .expect("connect in time")
            .expect("connect to the TLS listener");
        let addr = tcp.local_addr().unwrap();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let name = ServerName::try_from("sip.test").unwrap();
        let tls = tokio::time::timeout(WAIT, connector.connect(name, tcp))
            .await
            .expect("handshake in time")
            .map_err(HandshakeFailed)?;
        let served = tls
            .get_ref()
            .1
            .peer_certificates()
            .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
            .unwrap_or_default();
        let (mut rd, out) = tokio::io::split(tls);
        let (tx, inbox) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut buf = bytes::BytesMut::new();
            let mut chunk = vec![0u8; 16 * 1024];
            loop {
                let n = match rd.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                buf.extend_from_slice(&chunk[..n]);
                loop {
                    if buf.starts_with(b"\r\n") {
                        let _ = buf.split_to(2);
                        let _ = tx.send(Received {
                            data: b"\r\n".to_vec(),
                            from: to,
                        });
                        continue;
                    }
                    match frame_stream(&buf, 1 << 16) {
                        Ok(StreamFrame::Message { len }) => {
                            let data = buf.split_to(len).to_vec();
                            let _ = tx.send(Received { data, from: to });
                        }
                        Ok(StreamFrame::KeepAlive { len, .. }) => {
                            let _ = buf.split_to(len);
                        }
                        Err(_) => break,
                    }
                }
            }
        });
        Ok(TlsTrunk {
            addr,
            served,
            out,
            inbox,
        })
    }

    pub async fn connect(
        to: SocketAddr,
        ca: CertificateDer<'static>,
        client: Option<&Issued>,
    ) -> TlsTrunk {
        TlsTrunk::connect_from(None, to, ca, client)
            .await
            .expect("handshake with the proxy")
    }

    /// Sends; an error (the proxy closed) is ignored: the inbox tells.
    pub async fn send(&mut self, data: impl AsRef<[u8]>) {
        let _ = self.out.write_all(data.as_ref()).await;
        let _ = self.out.flush().await;
    }

    /// Closes our side (close_notify, then FIN): the proxy reads the end.
    pub async fn close(mut self) {
        let _ = self.out.shutdown().await;
    }

    pub async fn recv(&mut self) -> Received {
        tokio::time::timeout(WAIT, self.inbox.recv())
            .await
            .expect("a message from the proxy over TLS in time")
            .expect("the TLS connection is open")
    }

    /// The proxy closes the connection without a SIP answer (within
    /// [`WAIT`]).
    pub async fn expect_closed(&mut self) {
        let got = tokio::time::timeout(WAIT, self.inbox.recv())
            .await
            .expect("the proxy closes the connection in time");
        assert!(got.is_none(), "got an answer: {}", got.unwrap().text());
    }

    /// The next response with status `code`, skipping provisionals below it.
    pub async fn recv_response(&mut self, code: u16) -> Received {
        loop {
            let r = self.recv().await;
            match r.status() {
                Some(c) if c == code => return r,
                Some(c) if c < 200 && c < code => continue,
                _ => panic!("expected {code}, got:\n{}", r.text()),
            }
        }
    }

    pub async fn recv_request(&mut self, method: &str) -> Received {
        let r = self.recv().await;
        assert_eq!(r.method().as_deref(), Some(method), "{}", r.text());
        r
    }
}
