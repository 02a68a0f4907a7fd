//! SIP over TLS, client side: sipedge connects to nodes over TLS. A UDP
//! trunk (a plain socket) calls through sipedge to FreeSWITCH stand-ins
//! that are tokio-rustls servers written here, with certificates from a
//! test CA (rcgen). Checked: the whole call over one reused connection,
//! RFC 5922 identities (wrong name refused, wildcards by the setting, an
//! IP literal against its IP SAN), SNI, our client certificate, and that a
//! failed or stalled handshake fails the INVITE over at once (or after
//! `handshake_timeout`), not at `fr_timeout`. And a real third-party TLS
//! peer: Debian's Kamailio with its tls module (OpenSSL) as the node,
//! requiring our client certificate.

#[path = "support/dns.rs"]
mod dns_server;
#[allow(dead_code)] // the registry part is for tests/registry.rs
#[path = "support/kamailio.rs"]
mod kamailio;
#[path = "support/kamailio_tls.rs"]
mod kamailio_tls;
mod support;
#[path = "support/tls.rs"]
mod tls_support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kamailio_tls::{tls_modules, TlsFiles, TlsKamailio};
use rustls::pki_types::CertificateDer;
use sipedge::sip::{frame_stream, HeaderName, StreamFrame, Via};
use sipedge::transport::tls::Handshake;
use support::*;
use tls_support::{assert_our_rr, self_signed, Ca, Edge, EdgeSockets, Issued, Scratch};
use tokio::io::{AsyncReadExt, AsyncWriteExt, WriteHalf};
use tokio::sync::mpsc;

type ServerStream = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;

/// One connection's write half, shared by the test and the probe answerer.
type Writer = Arc<tokio::sync::Mutex<WriteHalf<ServerStream>>>;

/// What a node's TLS server saw of one handshake.
#[derive(Debug, Clone)]
struct Hello {
    sni: Option<String>,
    client_certificate: bool,
}

/// How a fake node answers a connection.
enum Mode {
    /// A TLS server with this config.
    Tls(Arc<rustls::ServerConfig>),
    /// Not TLS: answers the ClientHello with plain SIP text.
    Plain,
    /// Accepts and never says anything.
    Silent,
}

/// A fake FreeSWITCH node listening on TCP (TLS, or not, by [`Mode`]).
/// Answers OPTIONS probes with 200 itself; everything else goes to its
/// inbox.
struct TlsNode {
    name: String,
    addr: SocketAddr,
    inbox: tokio::sync::Mutex<mpsc::UnboundedReceiver<Received>>,
    /// The connections' write halves, in accept order.
    writers: Arc<Mutex<Vec<Writer>>>,
    /// TCP connections accepted.
    accepted: Arc<AtomicUsize>,
    hellos: Arc<Mutex<Vec<Hello>>>,
    probes: Arc<AtomicUsize>,
}

impl TlsNode {
    async fn start(name: &str, mode: Mode) -> TlsNode {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, inbox) = mpsc::unbounded_channel();
        let writers: Arc<Mutex<Vec<_>>> = Arc::default();
        let accepted = Arc::new(AtomicUsize::new(0));
        let hellos: Arc<Mutex<Vec<Hello>>> = Arc::default();
        let probes = Arc::new(AtomicUsize::new(0));
        let (w, a, h, p) = (
            writers.clone(),
            accepted.clone(),
            hellos.clone(),
            probes.clone(),
        );
        let mode = Arc::new(mode);
        tokio::spawn(async move {
            loop {
                let Ok((mut tcp, from)) = listener.accept().await else {
                    return;
                };
                a.fetch_add(1, Ordering::SeqCst);
                let config = match &*mode {
                    Mode::Tls(c) => c.clone(),
                    Mode::Plain => {
                        tokio::spawn(async move {
                            let mut buf = [0u8; 1024];
                            let _ = tcp.read(&mut buf).await;
                            let _ = tcp.write_all(b"SIP/2.0 400 Bad Request\r\n\r\n").await;
                            let _ = tcp.read(&mut buf).await;
                        });
                        continue;
                    }
                    Mode::Silent => {
                        // Held open, never answered.
                        tokio::spawn(async move {
                            let mut buf = [0u8; 1024];
                            while let Ok(n) = tcp.read(&mut buf).await {
                                if n == 0 {
                                    return;
                                }
                            }
                        });
                        continue;
                    }
                };
                let (tx, w, h, p) = (tx.clone(), w.clone(), h.clone(), p.clone());
                tokio::spawn(async move {
                    let acceptor = tokio_rustls::TlsAcceptor::from(config);
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let conn = tls.get_ref().1;
                    h.lock().unwrap().push(Hello {
                        sni: conn.server_name().map(str::to_owned),
                        client_certificate: conn.peer_certificates().is_some_and(|c| !c.is_empty()),
                    });
                    let (rd, wr) = tokio::io::split(tls);
                    let wr = Arc::new(tokio::sync::Mutex::new(wr));
                    w.lock().unwrap().push(wr.clone());
                    read_messages(rd, from, tx, wr, p).await;
                });
            }
        });
        TlsNode {
            name: name.to_owned(),
            addr,
            inbox: tokio::sync::Mutex::new(inbox),
            writers,
            accepted,
            hellos,
            probes,
        }
    }

    /// Sends on the newest connection.
    async fn send(&self, data: impl AsRef<[u8]>) {
        let w = self
            .writers
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("a connection");
        let mut w = w.lock().await;
        w.write_all(data.as_ref()).await.unwrap();
        w.flush().await.unwrap();
    }

    /// Closes every connection (TLS close_notify, then FIN).
    async fn close_all(&self) {
        let writers: Vec<_> = self.writers.lock().unwrap().drain(..).collect();
        for w in writers {
            let _ = w.lock().await.shutdown().await;
        }
    }

    fn hellos(&self) -> Vec<Hello> {
        self.hellos.lock().unwrap().clone()
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// Frames messages off `rd`; OPTIONS (probes) are answered here.
async fn read_messages(
    mut rd: tokio::io::ReadHalf<ServerStream>,
    from: SocketAddr,
    tx: mpsc::UnboundedSender<Received>,
    wr: Writer,
    probes: Arc<AtomicUsize>,
) {
    let mut buf = bytes::BytesMut::new();
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        let n = match rd.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        while let Ok(StreamFrame::Message { len }) = frame_stream(&buf, 1 << 16) {
            let data = buf.split_to(len).to_vec();
            let r = Received { data, from };
            if r.method().as_deref() == Some("OPTIONS") {
                probes.fetch_add(1, Ordering::SeqCst);
                let mut w = wr.lock().await;
                let _ = w.write_all(&reply(&r, 200, "OK", None)).await;
                let _ = w.flush().await;
                continue;
            }
            let _ = tx.send(r);
        }
    }
}

impl Inbox for TlsNode {
    fn name(&self) -> &str {
        &self.name
    }

    async fn recv_within(&self, wait: Duration) -> Option<Received> {
        let mut inbox = self.inbox.lock().await;
        tokio::time::timeout(wait, inbox.recv())
            .await
            .ok()
            .flatten()
    }
}

/// A node's server config: `leaf`'s identity; with `client_ca`, a client
/// certificate chaining to it is required.
fn server_config(
    leaf: &Issued,
    client_ca: Option<CertificateDer<'static>>,
) -> Arc<rustls::ServerConfig> {
    let provider = sipedge::transport::tls::provider();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(sipedge::transport::tls::VERSIONS)
        .unwrap();
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca).unwrap();
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    Arc::new(
        builder
            .with_single_cert(leaf.chain.clone(), leaf.key_der.clone_key())
            .unwrap(),
    )
}

/// A scratch directory with the test CA and sipedge's own certificate.
struct Pki {
    dir: Scratch,
    ca: Ca,
    ca_file: std::path::PathBuf,
    ours: Issued,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let dir = Scratch::new(name);
        let ca = Ca::new("sipedge outbound test CA");
        let ca_file = ca.write(&dir.join("ca.pem"));
        let ours = ca.leaf(&dir, "sipedge", &["sipedge.test"]);
        Pki {
            dir,
            ca,
            ca_file,
            ours,
        }
    }

    /// A node certificate for `sans` from the test CA.
    fn node(&self, stem: &str, sans: &[&str]) -> Issued {
        self.ca.leaf(&self.dir, stem, sans)
    }
}

/// A running proxy: a UDP socket for the trunk, a TLS listener (the node
/// side's Record-Route), and the given TLS destinations.
struct Setup {
    edge: Edge,
    trunk: Peer,
    /// The config file it was read from (for `dispatcher.reload`).
    config: std::path::PathBuf,
}

impl std::ops::Deref for Setup {
    type Target = Edge;
    fn deref(&self) -> &Edge {
        &self.edge
    }
}

impl Setup {
    /// `destinations`: each one's `[[dispatcher.destination]]` keys;
    /// `tls_extra`: more `[tls]` keys. `probing`: off, no probe runs (the
    /// INVITE is the first thing each node sees).
    async fn start(pki: &Pki, destinations: &[String], tls_extra: &str, probing: bool) -> Setup {
        let sockets = EdgeSockets::bind("127.0.0.1");
        let (addr, tls_addr) = (sockets.addr, sockets.tls_addr);
        let mut text = format!(
            "[listen]\nudp = [\"{addr}\"]\nadvertise = \"{addr}\"\ntls = [\"{tls_addr}\"]\n\n\
             [dispatcher]\nalgorithm = \"priority\"\n\n"
        );
        for d in destinations {
            text += &format!("[[dispatcher.destination]]\n{d}\n\n");
        }
        text += &format!(
            "[failover]\nfr_timeout = \"30s\"\nfr_inv_timeout = \"120s\"\n\n\
             [tls]\ncertificate = \"{}\"\nkey = \"{}\"\nca_list = \"{}\"\n\
             handshake_timeout = \"1s\"\n{tls_extra}\n",
            pki.ours.cert.display(),
            pki.ours.key.display(),
            pki.ca_file.display(),
        );
        let config = pki.dir.join("proxy.toml");
        let edge = sockets.run(&text, Some(&config), probing, Vec::new());
        Setup {
            edge,
            trunk: Peer::bind("trunk").await,
            config,
        }
    }

    fn handshakes(&self, o: Handshake) -> u64 {
        self.proxy.tls_client().stats().handshakes(o)
    }
}

/// `sip:ADDR;transport=tls` with more keys.
fn dest(node: &TlsNode, extra: &str) -> String {
    format!("uri = \"sip:{};transport=tls\"\n{extra}", node.addr)
}

/// The trunk's INVITE, sent; returns its dialog.
async fn call(s: &Setup) -> Dialog {
    let mut call = Dialog::uac(&s.trunk, &format!("sip:fax@{}", s.addr));
    s.trunk.send(call.invite(SDP_AUDIO), s.addr).await;
    call
}

/// The whole call, UDP trunk to a TLS node: probed over TLS, INVITE / 200
/// / ACK, the T.38 re-INVITE and BYE, all on the one connection sipedge
/// opened; the node got SNI for its configured name and our client
/// certificate, which it requires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_trunk_to_tls_node_full_call_on_one_connection() {
    let pki = Pki::new("tls-out-call");
    let leaf = pki.node("fs1", &["fs1.test"]);
    let node = TlsNode::start("fs1", Mode::Tls(server_config(&leaf, Some(pki.ca.der())))).await;
    let s = Setup::start(
        &pki,
        &[dest(&node, "tls_server_name = \"fs1.test\"")],
        "",
        true,
    )
    .await;
    // Probed over TLS first.
    eventually("the node is probed over TLS", || {
        node.probes.load(Ordering::SeqCst) > 0
    })
    .await;

    let mut call = call(&s).await;
    s.trunk.recv_response(100).await;
    let inv = node.recv_request("INVITE").await;
    assert_our_via_over(&inv, s.tls_addr, "TLS");
    let vias = inv.vias();
    assert_eq!(vias.len(), 2, "{}", inv.text());
    assert_eq!(Via::parse(vias[1].as_bytes()).unwrap().transport, b"UDP");
    let rr = inv.values(HeaderName::RecordRoute);
    assert_eq!(rr.len(), 2, "a double Record-Route:\n{}", inv.text());
    assert_our_rr(&rr[0], s.tls_addr, Some("tls"));
    assert_our_rr(&rr[1], s.addr, None);

    let fs = Dialog::uas_at(node.addr, &inv, &unique("fs-")).over_tls();
    node.send(fs.answer(&inv, 200, "OK", Some(SDP_NODE))).await;
    let ok = s.trunk.recv_until(|r| r.status() == Some(200)).await;
    let ok = ok.last().unwrap();
    assert_only_via(ok, &call.invite_branch);
    call.learn_2xx(ok);
    let (ack, _) = call.request("ACK", None);
    s.trunk.send(ack, s.addr).await;
    node.recv_request("ACK").await;

    // The T.38 re-INVITE, to the same node on the same connection.
    let (reinvite, branch) = call.request("INVITE", Some(("application/sdp", SDP_T38.as_bytes())));
    s.trunk.send(reinvite, s.addr).await;
    let reinv = node.recv_request("INVITE").await;
    assert_eq!(reinv.body(), SDP_T38.as_bytes());
    assert_our_via_over(&reinv, s.tls_addr, "TLS");
    node.send(fs.answer(&reinv, 200, "OK", Some(SDP_T38))).await;
    let ok = s.trunk.recv_until(|r| r.status() == Some(200)).await;
    assert_only_via(ok.last().unwrap(), &branch);
    let (ack, _) = call.request("ACK", None);
    s.trunk.send(ack, s.addr).await;
    assert_eq!(node.recv_request("ACK").await.cseq(), (2, "ACK".to_owned()));

    let (bye, branch) = call.request("BYE", None);
    s.trunk.send(bye, s.addr).await;
    let bye = node.recv_request("BYE").await;
    node.send(fs.answer(&bye, 200, "OK", None)).await;
    let ok = s.trunk.recv_until(|r| r.status() == Some(200)).await;
    assert_only_via(ok.last().unwrap(), &branch);

    assert_eq!(node.accepted(), 1, "one connection carried probes and call");
    let hellos = node.hellos();
    assert_eq!(hellos.len(), 1);
    assert_eq!(hellos[0].sni.as_deref(), Some("fs1.test"));
    assert!(hellos[0].client_certificate, "our client certificate");
    assert_eq!(s.handshakes(Handshake::Ok), 1);
}

/// The node presents a certificate for another name: refused, and the
/// INVITE is at the next node at once (not at fr_timeout, 30 s). The next
/// node, an IP literal without `tls_server_name`, proves its IP SAN and
/// gets no SNI.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_name_is_refused_and_the_invite_fails_over_at_once() {
    let pki = Pki::new("tls-out-name");
    let wrong = pki.node("wrong", &["other.test"]);
    let good = pki.node("good", &["127.0.0.1"]);
    let n0 = TlsNode::start("wrong-name", Mode::Tls(server_config(&wrong, None))).await;
    let n1 = TlsNode::start("ip-san", Mode::Tls(server_config(&good, None))).await;
    let s = Setup::start(
        &pki,
        &[dest(&n0, "tls_server_name = \"fs1.test\""), dest(&n1, "")],
        "",
        false,
    )
    .await;
    let started = Instant::now();
    let _call = call(&s).await;
    let inv = n1.recv_request("INVITE").await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_our_via_over(&inv, s.tls_addr, "TLS");
    assert_eq!(n0.accepted(), 1, "it was tried");
    assert!(n0.hellos().is_empty(), "its handshake did not complete");
    n0.expect_nothing(Duration::ZERO).await;
    assert_eq!(s.handshakes(Handshake::WrongName), 1);
    let hellos = n1.hellos();
    assert_eq!(hellos.len(), 1);
    assert_eq!(hellos[0].sni, None, "no SNI for an IP literal");
}

/// `*.pool.test` proves `fs1.pool.test` only with `wildcards = true`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_certificates_follow_the_setting() {
    let pki = Pki::new("tls-out-wildcard");
    let wild = pki.node("wild", &["*.pool.test"]);
    let good = pki.node("good", &["127.0.0.1"]);
    for wildcards in [false, true] {
        let n0 = TlsNode::start("wildcard", Mode::Tls(server_config(&wild, None))).await;
        let n1 = TlsNode::start("ip-san", Mode::Tls(server_config(&good, None))).await;
        let s = Setup::start(
            &pki,
            &[
                dest(&n0, "tls_server_name = \"fs1.pool.test\""),
                dest(&n1, ""),
            ],
            &format!("wildcards = {wildcards}"),
            false,
        )
        .await;
        let _call = call(&s).await;
        let (took, other) = if wildcards { (&n0, &n1) } else { (&n1, &n0) };
        let inv = took.recv_request("INVITE").await;
        assert_our_via_over(&inv, s.tls_addr, "TLS");
        other.expect_nothing(Duration::ZERO).await;
        assert_eq!(
            s.handshakes(Handshake::WrongName),
            u64::from(!wildcards),
            "wildcards = {wildcards}"
        );
    }
}

/// Nodes whose handshake fails (an untrusted certificate, an expired
/// one, a node that speaks plain SIP) are passed at once; one that never answers the
/// ClientHello after `handshake_timeout` (1 s); the INVITE reaches the
/// last well before `fr_timeout` (30 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_and_stalled_handshakes_fail_over_before_fr_timeout() {
    let pki = Pki::new("tls-out-failover");
    let untrusted = self_signed(&pki.dir, "untrusted", &["127.0.0.1"]);
    let expired = pki.ca.expired_leaf(&pki.dir, "expired", &["127.0.0.1"]);
    let good = pki.node("good", &["127.0.0.1"]);
    let n0 = TlsNode::start("untrusted", Mode::Tls(server_config(&untrusted, None))).await;
    let ne = TlsNode::start("expired", Mode::Tls(server_config(&expired, None))).await;
    let n1 = TlsNode::start("plain", Mode::Plain).await;
    let n2 = TlsNode::start("silent", Mode::Silent).await;
    let n3 = TlsNode::start("good", Mode::Tls(server_config(&good, None))).await;
    let s = Setup::start(
        &pki,
        &[
            dest(&n0, ""),
            dest(&ne, ""),
            dest(&n1, ""),
            dest(&n2, ""),
            dest(&n3, ""),
        ],
        "",
        false,
    )
    .await;
    let started = Instant::now();
    let _call = call(&s).await;
    let inv = n3.recv_request("INVITE").await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "the silent node costs handshake_timeout, no more: {took:?}"
    );
    assert_our_via_over(&inv, s.tls_addr, "TLS");
    for n in [&n0, &ne, &n1, &n2] {
        assert_eq!(n.accepted(), 1, "{} was tried", n.name);
    }
    assert_eq!(s.handshakes(Handshake::UnknownCa), 1);
    assert_eq!(s.handshakes(Handshake::Expired), 1);
    assert_eq!(s.handshakes(Handshake::Protocol), 1, "not TLS");
    assert_eq!(s.handshakes(Handshake::Timeout), 1);
    assert_eq!(s.handshakes(Handshake::Ok), 1);
    let failed: u64 = Handshake::ALL
        .iter()
        .filter(|h| h.result() == "failed")
        .map(|&h| s.handshakes(h))
        .sum();
    assert_eq!(failed, 3, "the untrusted, the expired and the plain node");
    // The same counts, exported.
    let text = s.proxy.metrics().encode();
    for line in [
        "sipedge_tls_handshakes_total{direction=\"outbound\",reason=\"unknown_ca\",result=\"failed\"} 1",
        "sipedge_tls_handshakes_total{direction=\"outbound\",reason=\"expired\",result=\"failed\"} 1",
        "sipedge_tls_handshakes_total{direction=\"outbound\",reason=\"timeout\",result=\"timeout\"} 1",
        "sipedge_tls_handshakes_total{direction=\"outbound\",reason=\"none\",result=\"ok\"} 1",
        "sipedge_tls_connections{direction=\"outbound\"} 1",
    ] {
        assert!(text.contains(line), "{line} missing from:\n{text}");
    }
}

/// `tls_verify = false` accepts a self-signed certificate for another
/// name from that destination, and only from that one: the same
/// certificate from the destination before it is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_verify_false_accepts_a_self_signed_node() {
    let pki = Pki::new("tls-out-noverify");
    let lab = self_signed(&pki.dir, "lab", &["lab.invalid"]);
    let checked = TlsNode::start("checked", Mode::Tls(server_config(&lab, None))).await;
    let lab_node = TlsNode::start("lab", Mode::Tls(server_config(&lab, None))).await;
    let s = Setup::start(
        &pki,
        &[dest(&checked, ""), dest(&lab_node, "tls_verify = false")],
        "",
        false,
    )
    .await;
    let _call = call(&s).await;
    let inv = lab_node.recv_request("INVITE").await;
    assert_our_via_over(&inv, s.tls_addr, "TLS");
    assert_eq!(checked.accepted(), 1, "tried first");
    checked.expect_nothing(Duration::ZERO).await;
    assert_eq!(s.handshakes(Handshake::UnknownCa), 1);
    assert_eq!(s.handshakes(Handshake::Ok), 1);
}

/// A node's call out to a carrier that speaks only TLS: a `sips:`
/// Request-URI is reached over TLS (the carrier proves its IP SAN and
/// gets our client certificate), and the node's BYE to the carrier's
/// `;transport=tls` Contact opens a new TLS connection once the first is
/// gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_calls_a_tls_trunk_by_sips_uri_and_contact() {
    let pki = Pki::new("tls-out-egress");
    let carrier_cert = pki.node("carrier", &["127.0.0.1"]);
    let carrier = TlsNode::start(
        "carrier",
        Mode::Tls(server_config(&carrier_cert, Some(pki.ca.der()))),
    )
    .await;
    let node = Peer::bind("node").await.answering_probes();
    let s = Setup::start(&pki, &[format!("uri = \"sip:{}\"", node.addr)], "", false).await;

    let mut out = Dialog::uac(&node, &format!("sips:+15551239999@{}", carrier.addr));
    node.send(out.invite(SDP_AUDIO), s.addr).await;
    let inv = carrier.recv_request("INVITE").await;
    assert_our_via_over(&inv, s.tls_addr, "TLS");
    let rr = inv.values(HeaderName::RecordRoute);
    assert_eq!(rr.len(), 2, "a double Record-Route:\n{}", inv.text());
    assert_our_rr(&rr[0], s.tls_addr, Some("tls"));
    assert_our_rr(&rr[1], s.addr, None);
    assert!(carrier.hellos()[0].client_certificate);

    let carrier_side = Dialog::uas_at(carrier.addr, &inv, &unique("carrier-")).over_tls();
    carrier
        .send(carrier_side.answer(&inv, 200, "OK", Some(SDP_AUDIO)))
        .await;
    let got = node.recv_until(|r| r.status() == Some(200)).await;
    out.learn_2xx(got.last().unwrap());
    let (ack, _) = out.request("ACK", None);
    node.send(ack, s.addr).await;
    carrier.recv_request("ACK").await;
    assert_eq!(carrier.accepted(), 1);

    // The carrier drops the connection; the node hangs up.
    carrier.close_all().await;
    eventually("the proxy sees the connection closed", || {
        s.proxy.tcp().connections() == 0
    })
    .await;
    let (bye, branch) = out.request("BYE", None);
    node.send(bye, s.addr).await;
    let bye = carrier.recv_request("BYE").await;
    assert_our_via_over(&bye, s.tls_addr, "TLS");
    assert_eq!(carrier.accepted(), 2, "a new connection to its Contact");
    carrier
        .send(carrier_side.answer(&bye, 200, "OK", None))
        .await;
    let got = node.recv_until(|r| r.status() == Some(200)).await;
    assert_only_via(got.last().unwrap(), &branch);
    assert_eq!(s.handshakes(Handshake::Ok), 2);
}

/// `dispatcher.reload` puts the destinations' new TLS identities in force:
/// a node refused for the wrong `tls_server_name` is probed with the right
/// one after the reload, comes back, and takes the next call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_puts_new_identities_in_force() {
    let pki = Pki::new("tls-out-reload");
    let fs1 = pki.node("fs1", &["fs1.test"]);
    let good = pki.node("good", &["127.0.0.1"]);
    let n0 = TlsNode::start("fs1", Mode::Tls(server_config(&fs1, None))).await;
    let n1 = TlsNode::start("ip-san", Mode::Tls(server_config(&good, None))).await;
    let probe = "[probe]\ninterval = \"200ms\"\nsuccess_threshold = 1\n";
    let s = Setup::start(
        &pki,
        &[dest(&n0, "tls_server_name = \"wrong.test\""), dest(&n1, "")],
        probe,
        false,
    )
    .await;
    let _call = call(&s).await;
    n1.recv_request("INVITE").await;
    assert_eq!(s.handshakes(Handshake::WrongName), 1);

    let text = std::fs::read_to_string(&s.config).unwrap();
    std::fs::write(&s.config, text.replace("wrong.test", "fs1.test")).unwrap();
    s.proxy.reload().expect("reload");
    s.proxy.ping_active(Some(true));
    eventually("fs1 is probed with its right name", || {
        n0.probes.load(Ordering::SeqCst) > 0
    })
    .await;
    eventually("fs1 is back in the pool", || {
        s.proxy.pool().status(0).state == sipedge::dispatcher::health::State::Active
    })
    .await;
    let _call = call(&s).await;
    let inv = n0.recv_request("INVITE").await;
    assert_our_via_over(&inv, s.tls_addr, "TLS");
    assert_eq!(n0.hellos().last().unwrap().sni.as_deref(), Some("fs1.test"));
}

/// Interop with a real TLS stack: Debian's Kamailio (tls.so, OpenSSL) is
/// the TLS node, requiring a client certificate from the test CA and
/// relaying to a UDP FreeSWITCH stand-in. Probes, INVITE / 200 / ACK, the
/// T.38 re-INVITE and BYE all go over the one TLS connection sipedge
/// opened; the in-dialog requests follow Kamailio's `;transport=tls`
/// Record-Route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_through_kamailio_as_the_tls_node() {
    let pki = Pki::new("tls-out-kamailio");
    let leaf = pki.node("kamailio", &["127.0.0.1"]);
    let fs = Peer::bind("fs").await;
    let files = TlsFiles {
        server: &leaf,
        client_ca: Some(&pki.ca_file),
        ca_list: None,
        client: None,
    };
    let k = TlsKamailio::node(&tls_modules(), &files, fs.addr);
    let s = Setup::start(
        &pki,
        &[format!("uri = \"sip:{};transport=tls\"", k.tls)],
        "",
        true,
    )
    .await;
    eventually("Kamailio answers our probe over TLS", || {
        s.proxy.pool().status(0).state == sipedge::dispatcher::health::State::Active
            && s.handshakes(Handshake::Ok) == 1
    })
    .await;

    let mut call = call(&s).await;
    let inv = fs.recv_request("INVITE").await;
    let vias = inv.vias();
    assert_eq!(
        vias.len(),
        3,
        "Kamailio's, ours, the trunk's:\n{}",
        inv.text()
    );
    assert!(
        vias[1].starts_with(&format!("SIP/2.0/TLS {}", s.tls_addr)),
        "our TLS Via: {}",
        vias[1]
    );
    let node = Dialog::uas(&fs, &inv, &unique("fs-"));
    fs.send(node.answer(&inv, 200, "OK", Some(SDP_NODE)), inv.from)
        .await;
    let got = s.trunk.recv_until(|r| r.status() == Some(200)).await;
    let ok = got.last().unwrap();
    assert_only_via(ok, &call.invite_branch);
    call.learn_2xx(ok);
    let (ack, _) = call.request("ACK", None);
    s.trunk.send(ack, s.addr).await;
    fs.recv_request("ACK").await;

    let (reinvite, branch) = call.request("INVITE", Some(("application/sdp", SDP_T38.as_bytes())));
    s.trunk.send(reinvite, s.addr).await;
    let reinv = fs.recv_request("INVITE").await;
    assert_eq!(reinv.body(), SDP_T38.as_bytes());
    fs.send(node.answer(&reinv, 200, "OK", Some(SDP_T38)), reinv.from)
        .await;
    let got = s.trunk.recv_until(|r| r.status() == Some(200)).await;
    assert_only_via(got.last().unwrap(), &branch);
    let (ack, _) = call.request("ACK", None);
    s.trunk.send(ack, s.addr).await;
    assert_eq!(fs.recv_request("ACK").await.cseq(), (2, "ACK".to_owned()));

    let (bye, branch) = call.request("BYE", None);
    s.trunk.send(bye, s.addr).await;
    let bye = fs.recv_request("BYE").await;
    fs.send(node.answer(&bye, 200, "OK", None), bye.from).await;
    let got = s.trunk.recv_until(|r| r.status() == Some(200)).await;
    assert_only_via(got.last().unwrap(), &branch);

    assert_eq!(
        s.handshakes(Handshake::Ok),
        1,
        "one TLS connection for everything"
    );
    let failed: u64 = Handshake::ALL
        .iter()
        .filter(|h| h.result() == "failed")
        .map(|&h| s.handshakes(h))
        .sum();
    assert_eq!(failed, 0, "Kamailio log:\n{}", k.kamailio.log());
}

/// A carrier named by a host name (`sips:+1555@carrier.test`, located by
/// SRV `_sips._tcp`) must prove that name (RFC 5922 §7.2), not its
/// address: its certificate for `carrier.test` is accepted and gets that
/// SNI; reached by another name, the same certificate is refused and the
/// node gets 503 at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_carrier_by_host_name_proves_that_name() {
    use dns_server::{FakeDns, Zone};
    let pki = Pki::new("tls-out-names");
    let cert = pki.node("carrier", &["carrier.test"]);
    let carrier = TlsNode::start("carrier", Mode::Tls(server_config(&cert, None))).await;
    let localhost = std::net::Ipv4Addr::LOCALHOST;
    let dns = FakeDns::start(
        Zone::new()
            .srv(
                "_sips._tcp.carrier.test",
                10,
                10,
                carrier.addr.port(),
                "carrier.test",
            )
            .a("carrier.test", localhost)
            .a("alias.test", localhost),
    )
    .await;
    let node = Peer::bind("node").await.answering_probes();
    let s = Setup::start(
        &pki,
        &[format!("uri = \"sip:{}\"", node.addr)],
        dns.toml(),
        false,
    )
    .await;

    let mut out = Dialog::uac(&node, "sips:+15551239999@carrier.test");
    node.send(out.invite(SDP_AUDIO), s.addr).await;
    let inv = carrier.recv_request("INVITE").await;
    assert_our_via_over(&inv, s.tls_addr, "TLS");
    assert_eq!(carrier.hellos()[0].sni.as_deref(), Some("carrier.test"));
    carrier.send(reply(&inv, 486, "Busy Here", Some("c"))).await;
    node.recv_until(|r| r.status() == Some(486)).await;

    // The same server by a name its certificate does not carry.
    let mut out = Dialog::uac(
        &node,
        &format!("sips:+15551239999@alias.test:{}", carrier.addr.port()),
    );
    node.send(out.invite(SDP_AUDIO), s.addr).await;
    node.recv_until(|r| r.status() == Some(503)).await;
    assert_eq!(s.handshakes(Handshake::WrongName), 1);
    assert_eq!(carrier.accepted(), 2);
    carrier.expect_nothing(Duration::ZERO).await;
}
