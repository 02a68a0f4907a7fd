//! Debian's Kamailio with its tls module (`kamailio-tls-modules`) as a
//! real third-party TLS SIP peer of sipedge: a carrier's trunk that sends
//! calls to sipedge over TLS (`tests/fixtures/kamailio/tls_trunk.cfg`) and
//! a FreeSWITCH-like node that receives them over TLS (`tls_endpoint.cfg`),
//! each on free loopback ports with a `tls.cfg` written here. The
//! certificates come from a test CA made with rcgen ([`Pki`]).
//!
//! A missing `tls.so` fails the test, unless
//! `SIPEDGE_ALLOW_KAMAILIO_TLS_SKIP=1` says a skip is fine (a developer's
//! machine without the package); CI sets nothing, so a missing peer fails
//! there.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, ServerName};
use sipedge::proxy::Proxy;
use sipedge::sip::{frame_stream, StreamFrame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::kamailio::{fixture, free_udp_port, module_dir, temp_dir, Kamailio};
use crate::support::*;

/// The environment variable that lets the tests skip without `tls.so`.
pub const ALLOW_SKIP: &str = "SIPEDGE_ALLOW_KAMAILIO_TLS_SKIP";

/// The name in sipedge's server certificate (and the SNI Kamailio sends).
pub const SIPEDGE_NAME: &str = "sip.test";
/// The name in the Kamailio node's server certificate.
pub const NODE_NAME: &str = "kamailio.test";

/// tm's `fr_timer` in the trunk (ms): how long Kamailio waits for sipedge
/// before answering its caller 408.
pub const TRUNK_FR_TIMER_MS: u64 = 2_000;

/// Kamailio's module directory (as `mpath`) when `tls.so` is installed;
/// `None` (said loudly) when it is not and [`ALLOW_SKIP`] is `1`; panics
/// otherwise.
pub fn tls_modules_or_skip(test: &str) -> Option<String> {
    if let Some(dir) = module_dir("tls.so") {
        return Some(format!("{}/", dir.display()));
    }
    if std::env::var(ALLOW_SKIP).as_deref() == Ok("1") {
        eprintln!(
            "\n*** SKIPPED {test}: Kamailio's tls.so is not installed ({ALLOW_SKIP}=1) ***\n"
        );
        return None;
    }
    panic!(
        "{test}: Kamailio's tls.so is not installed: the TLS interop tests need Debian's \
         kamailio and kamailio-tls-modules (apt-get install kamailio kamailio-tls-modules), \
         or {ALLOW_SKIP}=1 to skip them"
    )
}

/// A PEM certificate (chain, leaf first) and its key.
#[derive(Debug, Clone)]
pub struct Identity {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The test CA and what it signed, as PEM files in a temp directory
/// (removed on drop).
pub struct Pki {
    pub dir: PathBuf,
    /// The CA certificate, PEM (for `ca_list` / `client_ca`).
    pub ca_pem: PathBuf,
    pub ca_der: CertificateDer<'static>,
    /// sipedge's server certificate: [`SIPEDGE_NAME`] and 127.0.0.1.
    pub sipedge: Identity,
    /// The Kamailios' server certificate: [`NODE_NAME`] and 127.0.0.1.
    pub kamailio: Identity,
    /// A client certificate for the carrier's Kamailio (mutual TLS).
    pub client: Identity,
    /// A client certificate from another CA, which sipedge must refuse.
    pub foreign_client: Identity,
}

impl Pki {
    pub fn new() -> Pki {
        let dir = std::env::temp_dir().join(unique("sipedge-kam-pki-"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "sipedge kamailio test CA");
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let mut other_ca_params = ca_params.clone();
        other_ca_params.distinguished_name = rcgen::DistinguishedName::new();
        other_ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "another CA");
        let ca =
            rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap())
                .unwrap();
        let other_ca = rcgen::CertifiedIssuer::self_signed(
            other_ca_params,
            rcgen::KeyPair::generate().unwrap(),
        )
        .unwrap();
        let ca_pem = dir.join("ca.pem");
        std::fs::write(&ca_pem, ca.pem()).unwrap();
        let issue = |ca: &rcgen::CertifiedIssuer<'_, rcgen::KeyPair>,
                     file: &str,
                     cn: &str,
                     sans: Vec<String>,
                     eku| {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut params = rcgen::CertificateParams::new(sans).unwrap();
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, cn);
            params.extended_key_usages = eku;
            let leaf = params.signed_by(&key, ca).unwrap();
            let id = Identity {
                cert: dir.join(format!("{file}.pem")),
                key: dir.join(format!("{file}.key")),
            };
            std::fs::write(&id.cert, format!("{}{}", leaf.pem(), ca.pem())).unwrap();
            std::fs::write(&id.key, key.serialize_pem()).unwrap();
            id
        };
        use rcgen::ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
        let server = |name: &str| vec![name.to_owned(), "127.0.0.1".to_owned()];
        let sipedge = issue(
            &ca,
            "sipedge",
            SIPEDGE_NAME,
            server(SIPEDGE_NAME),
            vec![ServerAuth, ClientAuth],
        );
        let kamailio = issue(
            &ca,
            "kamailio",
            NODE_NAME,
            server(NODE_NAME),
            vec![ServerAuth, ClientAuth],
        );
        let client = issue(
            &ca,
            "client",
            "carrier.test",
            vec!["carrier.test".to_owned()],
            vec![ClientAuth],
        );
        let foreign_client = issue(
            &other_ca,
            "foreign-client",
            "carrier.test",
            vec!["carrier.test".to_owned()],
            vec![ClientAuth],
        );
        Pki {
            ca_der: ca.der().clone(),
            dir,
            ca_pem,
            sipedge,
            kamailio,
            client,
            foreign_client,
        }
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp dir")
}

/// Kamailio's `tls.cfg`: its server certificate, and a client profile
/// that checks the server against the test CA (sending `SNI`), presenting
/// `client` when given.
fn tls_cfg(pki: &Pki, client: Option<&Identity>) -> String {
    let mut t = format!(
        "[server:default]\nmethod = TLSv1.2+\nverify_certificate = no\n\
         require_certificate = no\ncertificate = {}\nprivate_key = {}\n\n\
         [client:default]\nmethod = TLSv1.2+\nverify_certificate = yes\n\
         require_certificate = yes\nca_list = {}\nserver_name = {SIPEDGE_NAME}\n",
        path(&pki.kamailio.cert),
        path(&pki.kamailio.key),
        path(&pki.ca_pem),
    );
    if let Some(c) = client {
        t.push_str(&format!(
            "certificate = {}\nprivate_key = {}\n",
            path(&c.cert),
            path(&c.key)
        ));
    }
    t
}

/// A running Kamailio with a UDP and a TLS listener.
pub struct TlsKamailio {
    pub kamailio: Kamailio,
    /// Its UDP side (where a caller sends, what `kamailio.addr` is too).
    pub udp: SocketAddr,
    /// Its TLS listener.
    pub tls: SocketAddr,
}

impl TlsKamailio {
    fn start(
        fixture_name: &str,
        modules: &str,
        pki: &Pki,
        client: Option<&Identity>,
        more: &[(&str, String)],
    ) -> TlsKamailio {
        let dir = temp_dir();
        let tls_cfg_path = dir.join("tls.cfg");
        std::fs::write(&tls_cfg_path, tls_cfg(pki, client)).expect("write tls.cfg");
        let udp_port = free_udp_port();
        let tls_port = free_tcp_port();
        let mut cfg = fixture(fixture_name)
            .replace("@UDP_PORT@", &udp_port.to_string())
            .replace("@TLS_PORT@", &tls_port.to_string())
            .replace("@MODULES@", modules)
            .replace("@TLS_CFG@", path(&tls_cfg_path));
        for (k, v) in more {
            cfg = cfg.replace(k, v);
        }
        let udp = SocketAddr::from((Ipv4Addr::LOCALHOST, udp_port));
        TlsKamailio {
            kamailio: Kamailio::run(dir, &cfg, udp),
            udp,
            tls: SocketAddr::from((Ipv4Addr::LOCALHOST, tls_port)),
        }
    }

    /// A carrier's Kamailio relaying what its UDP side gets to sipedge's
    /// TLS listener `sipedge`, presenting `client` if given.
    pub fn trunk(
        modules: &str,
        pki: &Pki,
        sipedge: SocketAddr,
        client: Option<&Identity>,
    ) -> TlsKamailio {
        TlsKamailio::start(
            "tls_trunk.cfg",
            modules,
            pki,
            client,
            &[
                ("@SIPEDGE_HOST@", sipedge.ip().to_string()),
                ("@SIPEDGE_PORT@", sipedge.port().to_string()),
                ("@FR_TIMER@", TRUNK_FR_TIMER_MS.to_string()),
            ],
        )
    }

    /// A TLS node relaying what it gets to the UDP user agent `uas`.
    pub fn node(modules: &str, pki: &Pki, uas: SocketAddr) -> TlsKamailio {
        TlsKamailio::start(
            "tls_endpoint.cfg",
            modules,
            pki,
            None,
            &[("@UAS@", uas.to_string())],
        )
    }
}

/// A loopback TCP port free right now.
pub fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("find a free port")
        .port()
}

/// A tokio-rustls client of a TLS SIP server: one connection, messages
/// framed off the stream.
pub struct TlsClient {
    /// Its own end of the connection (what its Via names).
    pub addr: SocketAddr,
    to: SocketAddr,
    tls: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    buf: bytes::BytesMut,
}

impl TlsClient {
    /// Connects to `to`, trusting only `ca` and checking the server as
    /// `name`.
    pub async fn connect(to: SocketAddr, ca: CertificateDer<'static>, name: &str) -> TlsClient {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca).unwrap();
        let config =
            rustls::ClientConfig::builder_with_provider(sipedge::transport::tls::provider())
                .with_protocol_versions(sipedge::transport::tls::VERSIONS)
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect(to).await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let server = ServerName::try_from(name.to_owned()).unwrap();
        let tls = tokio::time::timeout(WAIT, connector.connect(server, tcp))
            .await
            .expect("handshake in time")
            .unwrap_or_else(|e| panic!("TLS handshake with {to} as {name}: {e}"));
        TlsClient {
            addr,
            to,
            tls,
            buf: bytes::BytesMut::new(),
        }
    }

    pub async fn send(&mut self, data: impl AsRef<[u8]>) {
        self.tls.write_all(data.as_ref()).await.unwrap();
        self.tls.flush().await.unwrap();
    }

    /// The next message, within [`WAIT`].
    pub async fn recv(&mut self) -> Received {
        let mut chunk = vec![0u8; 16 * 1024];
        let read = async {
            loop {
                if let Ok(StreamFrame::Message { len }) = frame_stream(&self.buf, 1 << 16) {
                    return self.buf.split_to(len).to_vec();
                }
                let n = self.tls.read(&mut chunk).await.expect("read over TLS");
                assert!(n > 0, "{} closed the TLS connection", self.to);
                self.buf.extend_from_slice(&chunk[..n]);
            }
        };
        let data = tokio::time::timeout(WAIT, read)
            .await
            .expect("a message over TLS in time");
        Received {
            data,
            from: self.to,
        }
    }

    /// The next response with status `code`, skipping provisionals.
    pub async fn recv_response(&mut self, code: u16) -> Received {
        loop {
            let r = self.recv().await;
            match r.status() {
                Some(c) if c == code => return r,
                Some(c) if c < 200 => continue,
                _ => panic!("expected {code}, got:\n{}", r.text()),
            }
        }
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

/// sipedge with a UDP socket and a TLS listener (certificate
/// [`Pki::sipedge`]), running until dropped.
pub struct Edge {
    pub proxy: Arc<Proxy>,
    pub addr: SocketAddr,
    pub tls_addr: SocketAddr,
    /// Its UDP nodes (with [`Edge::start`]'s `destinations` `None`).
    pub nodes: Vec<Peer>,
    cancel: CancellationToken,
}

impl Edge {
    /// `tls_extra`: more `[tls]` keys. `destinations`: the
    /// `[[dispatcher.destination]]` tables; `None` is two UDP nodes of the
    /// test's own ([`Edge::nodes`], node 0 first).
    pub async fn start(pki: &Pki, tls_extra: &str, destinations: Option<&str>) -> Edge {
        init_tracing();
        let socket = sipedge::transport::bind_udp(
            "127.0.0.1:0".parse().unwrap(),
            sipedge::transport::UdpOptions::default(),
        )
        .unwrap();
        let addr = socket.local_addr().unwrap();
        let tls_listener = sipedge::transport::bind_stream(
            "127.0.0.1:0".parse().unwrap(),
            &sipedge::transport::TcpOptions::default(),
            sipedge::transport::Transport::Tls,
        )
        .unwrap();
        let tls_addr = tls_listener.local_addr().unwrap();
        let mut nodes = Vec::new();
        if destinations.is_none() {
            nodes.push(Peer::bind("node0").await.answering_probes());
            nodes.push(Peer::bind("node1").await.answering_probes());
        }
        let node_addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
        let opts = Options {
            listen_extra: format!("tls = [\"{tls_addr}\"]").leak(),
            extra_toml: format!(
                "[tls]\ncertificate = \"{}\"\nkey = \"{}\"\n{tls_extra}\n\n{}\n",
                path(&pki.sipedge.cert),
                path(&pki.sipedge.key),
                destinations.unwrap_or_default(),
            )
            .leak(),
            ..Options::default()
        };
        let text = config_toml(addr, &node_addrs, &opts);
        let cfg = sipedge::config::from_toml(&text, "test")
            .unwrap_or_else(|e| panic!("test config refused: {e}\n{text}"));
        let proxy = Proxy::with_listeners(cfg, vec![socket], vec![], vec![tls_listener])
            .expect("build the proxy");
        // No probes behind the test's back: the peers see only the call.
        proxy.ping_active(Some(false));
        let cancel = CancellationToken::new();
        tokio::spawn(proxy.clone().run(cancel.clone()));
        Edge {
            proxy,
            addr,
            tls_addr,
            nodes,
            cancel,
        }
    }
}

impl Drop for Edge {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}
