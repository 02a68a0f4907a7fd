//! TLS test material, one home for every TLS test file: included with
//! `#[path = "support/tls.rs"] mod tls_support;` beside `mod support;`.
#![allow(dead_code)] // each test file uses a part of it
//!
//! - [`Scratch`]: a fresh directory for certificates and configs, removed
//!   on drop.
//! - [`Ca`]: a test CA (rcgen) that signs server and client certificates
//!   ([`Issued`]) and CRLs; [`self_signed`] for a certificate nobody trusts.
//! - [`TlsTrunk`]: a tokio-rustls client of a TLS SIP server (sipedge, or a
//!   Kamailio), optionally presenting a client certificate, with messages
//!   framed off the stream into an inbox ([`TlsTrunk::recv`] waits up to
//!   [`WAIT`]); [`silent_from`] and [`closed_within`] for raw TCP clients.
//! - [`EdgeSockets`] / [`Edge`]: sipedge with a UDP socket and a TLS
//!   listener on port 0, running until dropped; [`edge_toml`] its config;
//!   [`assert_our_rr`] checks a Record-Route it put.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use sipedge::proxy::Proxy;
use sipedge::sip::{frame_stream, StreamFrame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::support::{branch, config_toml, init_tracing, unique, Options, Peer, Received, WAIT};

/// The name in sipedge's test server certificates (and the SNI its
/// clients send).
pub const SIPEDGE_NAME: &str = "sip.test";

// ---------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------

pub use crate::support::Scratch;

/// `p` as config text.
pub fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp dir")
}

// ---------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------

/// A test CA.
pub struct Ca {
    pub issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

/// A certificate and its key, as written to files and as DER.
pub struct Issued {
    /// The chain, PEM: the leaf, then the CA (if any).
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The leaf.
    pub der: CertificateDer<'static>,
    /// The chain: the leaf, then the CA (if any).
    pub chain: Vec<CertificateDer<'static>>,
    pub key_der: PrivateKeyDer<'static>,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
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

    /// A certificate for `names` (DNS names, or IP addresses when they
    /// parse as one; none: a client certificate, with the client-auth
    /// usage) with `serial` and validity `[from, until]` (years, Jan 1st),
    /// written to `dir/<stem>.pem` (the chain: leaf, then this CA) and
    /// `dir/<stem>.key`.
    pub fn issue(
        &self,
        dir: &Path,
        stem: &str,
        names: &[&str],
        serial: u64,
        (from, until): (i32, i32),
    ) -> Issued {
        let mut params = leaf_params(names);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, stem);
        params.serial_number = Some(rcgen::SerialNumber::from(serial));
        params.not_before = rcgen::date_time_ymd(from, 1, 1);
        params.not_after = rcgen::date_time_ymd(until, 1, 1);
        if names.is_empty() {
            params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        }
        self.sign(dir, stem, params)
    }

    /// A certificate for `sans` with rcgen's defaults otherwise (no
    /// subject name, valid for ages, no usage restriction).
    pub fn leaf(&self, dir: &Path, stem: &str, sans: &[&str]) -> Issued {
        self.sign(dir, stem, leaf_params(sans))
    }

    /// [`leaf`](Self::leaf), but valid only during 2020.
    pub fn expired_leaf(&self, dir: &Path, stem: &str, sans: &[&str]) -> Issued {
        let mut params = leaf_params(sans);
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        self.sign(dir, stem, params)
    }

    /// A certificate for `sans` named `cn`, for `usages` only.
    pub fn with_usages(
        &self,
        dir: &Path,
        stem: &str,
        cn: &str,
        sans: &[&str],
        usages: Vec<rcgen::ExtendedKeyUsagePurpose>,
    ) -> Issued {
        let mut params = leaf_params(sans);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.extended_key_usages = usages;
        self.sign(dir, stem, params)
    }

    fn sign(&self, dir: &Path, stem: &str, params: rcgen::CertificateParams) -> Issued {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Issued::write(dir, stem, &cert, &key, Some(self))
    }

    /// A CRL revoking `serials`, written to `path`.
    pub fn crl(&self, path: &Path, serials: &[u64]) -> PathBuf {
        self.crl_until(path, serials, 2100)
    }

    /// A CRL as [`Ca::crl`] whose `nextUpdate` is 1 January of `year`
    /// (one in the past is stale).
    pub fn crl_until(&self, path: &Path, serials: &[u64], year: i32) -> PathBuf {
        let params = rcgen::CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2024, 1, 1),
            next_update: rcgen::date_time_ymd(year, 1, 1),
            crl_number: rcgen::SerialNumber::from(u64::try_from(year).unwrap()),
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

/// A self-signed certificate for `sans`, trusted by nobody.
pub fn self_signed(dir: &Path, stem: &str, sans: &[&str]) -> Issued {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = leaf_params(sans).self_signed(&key).unwrap();
    Issued::write(dir, stem, &cert, &key, None)
}

/// SANs from `names`: rcgen makes an IP address SAN of what parses as one.
fn leaf_params(names: &[&str]) -> rcgen::CertificateParams {
    rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap()
}

impl Issued {
    fn write(
        dir: &Path,
        stem: &str,
        cert: &rcgen::Certificate,
        key: &rcgen::KeyPair,
        ca: Option<&Ca>,
    ) -> Issued {
        let cert_path = dir.join(format!("{stem}.pem"));
        let key_path = dir.join(format!("{stem}.key"));
        let ca_pem = ca.map(|c| c.issuer.pem()).unwrap_or_default();
        std::fs::write(&cert_path, format!("{}{ca_pem}", cert.pem())).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        let mut chain = vec![cert.der().clone()];
        chain.extend(ca.map(Ca::der));
        Issued {
            cert: cert_path,
            key: key_path,
            der: cert.der().clone(),
            chain,
            key_der: PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        }
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

// ---------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------

type Stream = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// A trunk connected to a TLS SIP server: what it reads is framed off the
/// stream into `inbox` (a lone CRLF, a keep-alive pong, as its own
/// message); EOF or an error closes the inbox.
pub struct TlsTrunk {
    /// Its own end of the connection (what its Via names).
    pub addr: SocketAddr,
    /// The server's end.
    pub to: SocketAddr,
    /// The certificate chain the server served.
    pub served: Vec<CertificateDer<'static>>,
    out: tokio::io::WriteHalf<Stream>,
    inbox: mpsc::UnboundedReceiver<Received>,
}

/// Why a client handshake did not get through.
#[derive(Debug)]
pub struct HandshakeFailed(pub std::io::Error);

impl TlsTrunk {
    /// Connects from `from` (an address to bind, port 0: any) to `to`,
    /// trusting only `ca` for [`SIPEDGE_NAME`], presenting `client` if
    /// given. With TLS 1.3 the server checks a client certificate after
    /// the client's handshake is done: a refusal shows as the inbox
    /// closing.
    pub async fn connect_from(
        from: Option<&str>,
        to: SocketAddr,
        ca: CertificateDer<'static>,
        client: Option<&Issued>,
    ) -> Result<TlsTrunk, HandshakeFailed> {
        TlsTrunk::open(from, to, ca, SIPEDGE_NAME, client).await
    }

    /// [`connect_from`](Self::connect_from) any address; the handshake
    /// must get through.
    pub async fn connect(
        to: SocketAddr,
        ca: CertificateDer<'static>,
        client: Option<&Issued>,
    ) -> TlsTrunk {
        TlsTrunk::connect_from(None, to, ca, client)
            .await
            .expect("handshake with the proxy")
    }

    /// Connects to `to`, trusting only `ca` and checking the server as
    /// `name`; the handshake must get through.
    pub async fn connect_to(to: SocketAddr, ca: CertificateDer<'static>, name: &str) -> TlsTrunk {
        TlsTrunk::open(None, to, ca, name, None)
            .await
            .unwrap_or_else(|e| panic!("TLS handshake with {to} as {name}: {}", e.0))
    }

    async fn open(
        from: Option<&str>,
        to: SocketAddr,
        ca: CertificateDer<'static>,
        name: &str,
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
        let tcp = match from {
            Some(ip) => silent_from(ip, to).await,
            None => tokio::time::timeout(WAIT, tokio::net::TcpStream::connect(to))
                .await
                .expect("connect in time")
                .expect("connect to the TLS listener"),
        };
        let addr = tcp.local_addr().unwrap();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let name = ServerName::try_from(name.to_owned()).unwrap();
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
                    // frame_stream waits for what follows a lone CRLF; a
                    // pong is all there is.
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
            to,
            served,
            out,
            inbox,
        })
    }

    /// Sends; the connection must take it.
    pub async fn send(&mut self, data: impl AsRef<[u8]>) {
        self.try_send(data)
            .await
            .expect("write to the TLS connection");
    }

    /// Sends, where the server may already have closed the connection
    /// (the inbox tells).
    pub async fn try_send(&mut self, data: impl AsRef<[u8]>) -> std::io::Result<()> {
        self.out.write_all(data.as_ref()).await?;
        self.out.flush().await
    }

    /// Closes our side (close_notify, then FIN): the server reads the end.
    pub async fn close(mut self) {
        let _ = self.out.shutdown().await;
    }

    pub async fn recv(&mut self) -> Received {
        tokio::time::timeout(WAIT, self.inbox.recv())
            .await
            .expect("a message over TLS in time")
            .unwrap_or_else(|| panic!("{} closed the TLS connection", self.to))
    }

    /// The server closes the connection without a SIP answer (within
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

    /// An OPTIONS to the server itself; its response.
    pub async fn options(&mut self) -> Received {
        let (to, me) = (self.to, self.addr);
        let options = format!(
            "OPTIONS sip:{to};transport=tls SIP/2.0\r\n\
             Via: SIP/2.0/TLS {me};branch={};rport\r\nMax-Forwards: 70\r\n\
             From: <sip:probe@{me}>;tag=p\r\nTo: <sip:{to}>\r\nCall-ID: {}\r\n\
             CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
            branch(),
            unique("tls-options-"),
        );
        self.send(options).await;
        self.recv().await
    }
}

/// A TCP connection from `ip` (port 0) to `to`, which says nothing by
/// itself.
pub async fn silent_from(ip: &str, to: SocketAddr) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(ip.parse().unwrap(), 0))
        .unwrap();
    tokio::time::timeout(WAIT, socket.connect(to))
        .await
        .expect("connect in time")
        .expect("connect to the TLS listener")
}

/// The server closes `c` (EOF or reset) within `within`, sending nothing
/// that is not TLS (a TLS alert may come first); returns what it sent.
pub async fn closed_within(c: &mut tokio::net::TcpStream, within: Duration) -> usize {
    let mut b = [0u8; 512];
    let mut sent = 0;
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, c.read(&mut b)).await {
            Err(_) => panic!("still open after {within:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return sent,
            // A TLS record (an alert): content types 20-23.
            Ok(Ok(n)) => {
                assert!((20..=23).contains(&b[0]), "not TLS: {:?}", &b[..8]);
                sent += n;
            }
        }
    }
}

/// `value` is our Record-Route over `transport` (`None`: UDP): the right
/// address, and the transport parameter only for TLS.
pub fn assert_our_rr(value: &str, at: SocketAddr, transport: Option<&str>) {
    let uri = value
        .strip_prefix('<')
        .and_then(|v| v.strip_suffix('>'))
        .unwrap_or_else(|| panic!("not a <name-addr>: {value}"));
    let mut parts = uri.split(';');
    assert_eq!(parts.next(), Some(format!("sip:{at}").as_str()), "{value}");
    let params: Vec<&str> = parts.collect();
    assert!(params.contains(&"lr"), "{value}");
    let t: Vec<&str> = params
        .iter()
        .filter_map(|p| p.strip_prefix("transport="))
        .collect();
    assert_eq!(t, transport.into_iter().collect::<Vec<_>>(), "{value}");
}

/// The config of the built binary: UDP and TLS on 127.0.0.1 port 0, more
/// `tables`, one destination `node` (`host:port`), and last `[tls]` with
/// `tls_keys` (so more keys can be appended).
pub fn binary_toml(node: &str, tables: &str, tls_keys: &str) -> String {
    format!(
        "[listen]\nudp = [\"127.0.0.1:0\"]\ntls = [\"127.0.0.1:0\"]\nadvertise = \"127.0.0.1\"\n\
         {tables}[[dispatcher.destination]]\nuri = \"sip:{node}\"\n[tls]\n{tls_keys}"
    )
}

/// The transport of the `i`th Via of `msg`.
pub fn via_transport(msg: &Received, i: usize) -> String {
    let vias = msg.vias();
    let v = vias
        .get(i)
        .unwrap_or_else(|| panic!("no Via #{i}:\n{}", msg.text()));
    let via = sipedge::sip::Via::parse(v.as_bytes()).expect("a valid Via");
    String::from_utf8_lossy(via.transport).into_owned()
}

// ---------------------------------------------------------------------------
// sipedge with a TLS listener
// ---------------------------------------------------------------------------

/// sipedge's UDP socket (127.0.0.1) and TLS listener, port 0, bound
/// before its config is written.
pub struct EdgeSockets {
    udp: std::net::UdpSocket,
    tls: std::net::TcpListener,
    /// The UDP socket's address (what sipedge advertises).
    pub addr: SocketAddr,
    /// What the TLS listener is bound to (for `[listen] tls`).
    pub tls_listen: SocketAddr,
    /// Where a client on this machine reaches it: `tls_listen`, on
    /// 127.0.0.1 when bound to the unspecified address.
    pub tls_addr: SocketAddr,
}

impl EdgeSockets {
    /// The TLS listener on `tls_ip` ("0.0.0.0": clients may come from
    /// any loopback address).
    pub fn bind(tls_ip: &str) -> EdgeSockets {
        init_tracing();
        let udp = sipedge::transport::bind_udp(
            "127.0.0.1:0".parse().unwrap(),
            sipedge::transport::UdpOptions::default(),
        )
        .unwrap();
        let addr = udp.local_addr().unwrap();
        let ip: IpAddr = tls_ip.parse().unwrap();
        let tls = sipedge::transport::bind_stream(
            SocketAddr::new(ip, 0),
            &sipedge::transport::TcpOptions::default(),
            sipedge::transport::Transport::Tls,
        )
        .unwrap();
        let tls_listen = tls.local_addr().unwrap();
        let mut tls_addr = tls_listen;
        if ip.is_unspecified() {
            tls_addr.set_ip([127, 0, 0, 1].into());
        }
        EdgeSockets {
            udp,
            tls,
            addr,
            tls_listen,
            tls_addr,
        }
    }

    /// Runs sipedge on these sockets with the config `text`: written to
    /// `file` and read from there when given (what a reload re-reads).
    /// Health probing off unless `probing`: no probe touches a node
    /// behind the test's back. `nodes`: the test's UDP nodes, kept with
    /// it.
    pub fn run(self, text: &str, file: Option<&Path>, probing: bool, nodes: Vec<Peer>) -> Edge {
        let cfg = match file {
            Some(f) => {
                std::fs::write(f, text).unwrap();
                sipedge::config::read_config(f)
            }
            None => sipedge::config::from_toml(text, "test"),
        }
        .unwrap_or_else(|e| panic!("test config refused: {e}\n{text}"));
        let proxy = Proxy::with_listeners(cfg, vec![self.udp], vec![], vec![self.tls])
            .expect("build the proxy");
        if let Some(f) = file {
            proxy.set_config_path(f.to_owned());
        }
        if !probing {
            proxy.ping_active(Some(false));
        }
        let cancel = CancellationToken::new();
        tokio::spawn(proxy.clone().run(cancel.clone()));
        Edge {
            proxy,
            addr: self.addr,
            tls_addr: self.tls_addr,
            nodes,
            cancel,
        }
    }
}

/// The config of sipedge on `sockets` with these UDP `nodes`
/// ([`Options`]' defaults otherwise), serving `cert` / `key`; `more`:
/// more `[tls]` keys, then more tables.
pub fn edge_toml(
    sockets: &EdgeSockets,
    nodes: &[SocketAddr],
    cert: &Path,
    key: &Path,
    more: &str,
) -> String {
    let opts = Options {
        listen_extra: format!("tls = [\"{}\"]", sockets.tls_listen).leak(),
        extra_toml: format!(
            "[tls]\ncertificate = \"{}\"\nkey = \"{}\"\n{more}\n",
            path(cert),
            path(key)
        )
        .leak(),
        ..Options::default()
    };
    config_toml(sockets.addr, nodes, &opts)
}

/// sipedge with a UDP socket and a TLS listener, running until dropped.
pub struct Edge {
    pub proxy: Arc<Proxy>,
    pub addr: SocketAddr,
    pub tls_addr: SocketAddr,
    /// The test's UDP nodes, if it has any (node 0 first).
    pub nodes: Vec<Peer>,
    cancel: CancellationToken,
}

impl Drop for Edge {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}
