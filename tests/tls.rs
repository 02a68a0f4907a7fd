//! SIP over TLS, server side: a trunk that only speaks TLS calls through
//! sipedge to UDP nodes. Certificates are made by the test (rcgen): a test
//! CA and a server certificate for `sip.test` signed by it; the trunk is a
//! tokio-rustls client that trusts only that CA.

mod support;
#[path = "support/tls.rs"]
mod tls_support;

use std::net::SocketAddr;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use sipedge::sip::{HeaderName, Via};
use support::*;
use tls_support::{
    assert_our_rr, binary_toml, closed_within, edge_toml, path, silent_from, Ca, Edge, EdgeSockets,
    Scratch, TlsTrunk,
};
use tokio::io::AsyncWriteExt;

fn no_route(msg: &Received) {
    assert!(
        msg.values(HeaderName::Route).is_empty(),
        "our Route values must be consumed:\n{}",
        msg.text()
    );
}

/// A running proxy with a TLS listener (serving `sip.test` from `ca`) and
/// two UDP nodes.
struct Setup {
    edge: Edge,
    ca: CertificateDer<'static>,
    _dir: Scratch,
}

impl std::ops::Deref for Setup {
    type Target = Edge;
    fn deref(&self) -> &Edge {
        &self.edge
    }
}

impl Setup {
    /// `tls_extra`: more `[tls]` keys; `extra`: more tables.
    async fn start(name: &str, tls_extra: &str, extra: &str) -> Setup {
        let dir = Scratch::new(name);
        let ca = Ca::new("sipedge test CA");
        let server = ca.leaf(&dir, "server", &["sip.test"]);
        let sockets = EdgeSockets::bind("127.0.0.1");
        let tls_addr = sockets.tls_addr;
        let nodes = vec![Peer::bind("node0").await, Peer::bind("node1").await];
        let node_addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
        let more = format!("{tls_extra}\n{extra}");
        let text = edge_toml(&sockets, &node_addrs, &server.cert, &server.key, &more);
        let edge = sockets.run(&text, None, false, nodes);
        assert_eq!(edge.proxy.tls_addrs(), [tls_addr]);
        Setup {
            edge,
            ca: ca.der(),
            _dir: dir,
        }
    }
}

/// A TLS trunk's call to UDP nodes: INVITE, 100/200 back on the TLS
/// connection, ACK, a T.38 re-INVITE and BYE over the same connection, all
/// at the node the call is pinned to; a CRLF ping answered with a pong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_trunk_to_udp_nodes_full_call() {
    let s = Setup::start("tls-call", "", "").await;
    let (proxy, addr, tls_addr, nodes) = (&s.proxy, s.addr, s.tls_addr, &s.nodes);
    let ca = s.ca.clone();
    let mut trunk = TlsTrunk::connect(tls_addr, ca, None).await;
    let mut call = Dialog::uac_at(trunk.addr, &format!("sip:fax@{addr}")).over_tls();
    trunk.send(call.invite(SDP_AUDIO)).await;
    let trying = trunk.recv_response(100).await;
    assert_eq!(trying.branch(), call.invite_branch);

    // At node 0 over UDP: our UDP Via above the trunk's TLS one, and two
    // Record-Routes, the one the node reaches us on first.
    let node = &nodes[0];
    let inv = node.recv_request("INVITE").await;
    assert_eq!(inv.from, addr, "sent from the proxy's UDP socket");
    assert_our_via_over(&inv, addr, "UDP");
    let vias = inv.vias();
    assert_eq!(vias.len(), 2, "{}", inv.text());
    let trunk_via = Via::parse(vias[1].as_bytes()).expect("the trunk's Via");
    assert_eq!(trunk_via.transport, b"TLS");
    let rr = inv.values(HeaderName::RecordRoute);
    assert_eq!(rr.len(), 2, "a double Record-Route:\n{}", inv.text());
    assert_our_rr(&rr[0], addr, None);
    assert_our_rr(&rr[1], tls_addr, Some("tls"));

    let fs = Dialog::uas(node, &inv, &unique("fs-"));
    node.send(fs.answer(&inv, 200, "OK", Some(SDP_NODE)), inv.from)
        .await;
    let ok = trunk.recv_response(200).await;
    assert_only_via(&ok, &call.invite_branch);
    assert_eq!(ok.values(HeaderName::RecordRoute), rr);
    call.learn_2xx(&ok);

    let (ack, _) = call.request("ACK", None);
    trunk.send(ack).await;
    let ack = node.recv_request("ACK").await;
    assert_our_via_over(&ack, addr, "UDP");
    no_route(&ack);

    // The T.38 re-INVITE, pinned to the same node.
    let (reinvite, reinvite_branch) =
        call.request("INVITE", Some(("application/sdp", SDP_T38.as_bytes())));
    trunk.send(reinvite).await;
    let reinv = node.recv_request("INVITE").await;
    assert_eq!(reinv.body(), SDP_T38.as_bytes());
    no_route(&reinv);
    node.send(fs.answer(&reinv, 200, "OK", Some(SDP_T38)), reinv.from)
        .await;
    let ok = trunk.recv_response(200).await;
    assert_eq!(ok.cseq(), (2, "INVITE".to_owned()));
    assert_only_via(&ok, &reinvite_branch);
    let (ack, _) = call.request("ACK", None);
    trunk.send(ack).await;
    assert_eq!(node.recv_request("ACK").await.cseq(), (2, "ACK".to_owned()));

    // The node's re-INVITE reaches the trunk on its own TLS connection.
    let mut fs = fs;
    let (reinvite, node_branch) =
        fs.request("INVITE", Some(("application/sdp", SDP_NODE.as_bytes())));
    node.send(reinvite, addr).await;
    let reinv = trunk.recv_request("INVITE").await;
    assert_our_via_over(&reinv, tls_addr, "TLS");
    no_route(&reinv);
    trunk
        .send(call.answer(&reinv, 200, "OK", Some(SDP_AUDIO)))
        .await;
    let got = node.recv_until(|r| r.status() == Some(200)).await;
    assert_only_via(got.last().unwrap(), &node_branch);

    // RFC 5626 keep-alive over TLS.
    trunk.send("\r\n\r\n").await;
    assert_eq!(trunk.recv().await.data, b"\r\n");

    // BYE from the trunk, to the pinned node; its 200 back over TLS.
    let (bye, bye_branch) = call.request("BYE", None);
    trunk.send(bye).await;
    let bye = node.recv_request("BYE").await;
    no_route(&bye);
    node.send(fs.answer(&bye, 200, "OK", None), bye.from).await;
    let ok = trunk.recv_response(200).await;
    assert_eq!(ok.cseq().1, "BYE");
    assert_only_via(&ok, &bye_branch);
    nodes[1].expect_nothing(Duration::ZERO).await;

    // One inbound connection carried it all.
    let stats = proxy.tcp().stats();
    assert_eq!(stats.accepted.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert_eq!(
        stats.connected.load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

/// A client that opens a connection and never says hello holds its slot
/// only `[tls] handshake_timeout`; handshakes in progress count against
/// `[tcp] max_connections_per_source`; a client speaking plain SIP to the
/// TLS port is closed at once. Every slot comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_are_bounded_in_time_and_per_source() {
    let s = Setup::start(
        "tls-hs",
        "handshake_timeout = \"1s\"",
        "[tcp]\nmax_connections_per_source = 1",
    )
    .await;
    let tcp = s.proxy.tcp();
    let src: std::net::IpAddr = "127.0.0.2".parse().unwrap();
    let mut silent = silent_from("127.0.0.2", s.tls_addr).await;
    eventually("the silent client holds a slot", || {
        tcp.connections_from(src) == 1
    })
    .await;
    // A second handshake from the same source is refused at once.
    let mut second = silent_from("127.0.0.2", s.tls_addr).await;
    closed_within(&mut second, WAIT).await;
    assert_eq!(
        tcp.stats()
            .refused_per_source
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    // The silent one goes at the handshake timeout, well within WAIT.
    let opened = tokio::time::Instant::now();
    closed_within(&mut silent, WAIT).await;
    assert!(opened.elapsed() < WAIT, "closed by the handshake timeout");
    eventually("its slot comes back", || {
        tcp.connections_from(src) == 0 && tcp.connections() == 0
    })
    .await;

    // Plain SIP where a ClientHello belongs: closed, slot back.
    let mut plain = silent_from("127.0.0.3", s.tls_addr).await;
    plain
        .write_all(b"OPTIONS sip:x@127.0.0.1 SIP/2.0\r\nContent-Length: 0\r\n\r\n")
        .await
        .unwrap();
    closed_within(&mut plain, Duration::from_millis(900)).await;
    eventually("no connection left", || tcp.connections() == 0).await;

    // And a real client still gets through.
    let mut trunk = TlsTrunk::connect(s.tls_addr, s.ca.clone(), None).await;
    trunk.send("\r\n\r\n").await;
    assert_eq!(trunk.recv().await.data, b"\r\n");
}

/// `[tcp]` holds for TLS connections as for TCP ones: beyond
/// `max_connections` a new one is closed before its handshake, and
/// connections left idle for `idle_timeout` are closed (a CRLF ping is
/// traffic: the pinged one outlives the other).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_caps_and_idle_timeout_hold_for_tls() {
    use std::sync::atomic::Ordering::Relaxed;
    let s = Setup::start(
        "tls-idle",
        "",
        "[tcp]\nidle_timeout = \"3s\"\nmax_connections = 2",
    )
    .await;
    let tcp = s.proxy.tcp();
    let opened = tokio::time::Instant::now();
    let mut a = TlsTrunk::connect(s.tls_addr, s.ca.clone(), None).await;
    let mut b = TlsTrunk::connect(s.tls_addr, s.ca.clone(), None).await;
    eventually("two connections", || tcp.connections() == 2).await;
    let mut third = silent_from("127.0.0.1", s.tls_addr).await;
    closed_within(&mut third, WAIT).await;
    assert_eq!(tcp.stats().refused_cap.load(Relaxed), 1);

    // b pings 2 s in; a says nothing.
    tokio::time::sleep(Duration::from_secs(2)).await;
    b.send("\r\n\r\n").await;
    assert_eq!(b.recv().await.data, b"\r\n");
    a.expect_closed().await;
    assert!(
        opened.elapsed() >= Duration::from_secs(3),
        "not before idle_timeout"
    );
    assert_eq!(tcp.stats().closed_idle.load(Relaxed), 1);
    assert_eq!(tcp.connections(), 1, "b is still open");
    b.expect_closed().await;
    assert_eq!(tcp.stats().closed_idle.load(Relaxed), 2);
    eventually("no connection left", || tcp.connections() == 0).await;
}

/// The built binary with `[listen] tls` on port 0: `check-config` takes
/// it, `serve` prints the TLS listener, answers an OPTIONS over TLS, and
/// exits 0 on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_serves_tls() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let dir = Scratch::new("tls-bin");
    let ca = Ca::new("sipedge test CA");
    let server = ca.leaf(&dir, "server", &["sip.test"]);
    let (chain, key) = (path(&server.cert), path(&server.key));
    let cfg = dir.join("proxy.toml");
    std::fs::write(
        &cfg,
        binary_toml(
            "127.0.0.1:9",
            "",
            &format!("certificate = \"{chain}\"\nkey = \"{key}\"\n"),
        ),
    )
    .unwrap();
    let bin = env!("CARGO_BIN_EXE_sipedge");
    let out = Command::new(bin)
        .args(["check-config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");

    let mut child = Command::new(bin)
        .args(["--config", cfg.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let tls_addr: SocketAddr = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find_map(|l| l.strip_prefix("listening on tls:").map(str::to_owned))
            .expect("a tls listening line")
            .parse()
            .unwrap()
    })
    .await
    .unwrap();

    let mut trunk = TlsTrunk::connect(tls_addr, ca.der(), None).await;
    let me = trunk.addr;
    trunk
        .send(format!(
            "OPTIONS sip:{tls_addr} SIP/2.0\r\nVia: SIP/2.0/TLS {me};branch=z9hG4bKtlsbin1;rport\r\n\
             From: <sip:trunk@{me}>;tag=1\r\nTo: <sip:{tls_addr}>\r\nCall-ID: tls-bin-1\r\n\
             CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        ))
        .await;
    let ok = trunk.recv_response(200).await;
    assert_eq!(ok.call_id(), "tls-bin-1");

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0));
}
