//! The proxy over SIP-over-TCP (RFC 3261 §18): a fake trunk and fake
//! FreeSWITCH nodes speaking TCP, UDP or both, with the real proxy in
//! process. The TCP transport's own framing, keep-alive, idle and cap
//! rules have unit tests in `src/transport/tcp.rs`; these are about the
//! proxy on top of it: where requests and responses go, over which
//! transport, with which Via and Record-Route.
//!
//! The proxy's TCP listener is on the same port number as its UDP socket
//! (the harness advertises that one port for both). As in the UDP tests,
//! `algorithm = "priority"` makes node 0 the first choice.

mod support;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::time::Duration;

use sipedge::metrics::FailoverReason;
use sipedge::sip::{HeaderName, Via};
use support::*;

/// Where TCP trunks connect from: another host than the nodes, as in
/// production. (A trunk sharing a node's IP is a test of its own, below.)
fn trunk_ip() -> IpAddr {
    "127.0.0.2".parse().unwrap()
}

fn tcp_opts() -> Options {
    Options {
        tcp: true,
        ..Options::default()
    }
}

/// `value` is our Record-Route for `node` (its opaque hint) over
/// `transport` (`None`: the UDP one, with no transport parameter). Read by hand, not with the
/// crate's parser: the test must not share a bug with the proxy.
fn assert_our_rr(value: &str, proxy: SocketAddr, transport: Option<&str>, node: SocketAddr) {
    let uri = value
        .strip_prefix('<')
        .and_then(|v| v.strip_suffix('>'))
        .unwrap_or_else(|| panic!("not a <name-addr>: {value}"));
    let mut parts = uri.split(';');
    assert_eq!(
        parts.next(),
        Some(format!("sip:{proxy}").as_str()),
        "{value}"
    );
    let params: Vec<(&str, Option<&str>)> = parts
        .map(|p| match p.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (p, None),
        })
        .collect();
    let get = |name: &str| {
        params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    };
    assert_eq!(get("lr"), Some(None), "no ;lr: {value}");
    // The node's opaque hint: 44 hex digits for IPv4, 68 for IPv6.
    let hint = assert_opaque_hint(value, node);
    let want = if node.is_ipv4() { 44 } else { 68 };
    assert_eq!(get("node"), Some(Some(hint.as_str())), "{value}");
    assert_eq!(hint.len(), want, "{value}");
    match transport {
        None => assert_eq!(get("transport"), None, "{value}"),
        Some(t) => assert!(
            get("transport")
                .flatten()
                .is_some_and(|v| v.eq_ignore_ascii_case(t)),
            "expected ;transport={t}: {value}"
        ),
    }
}

fn no_route(msg: &Received) {
    assert!(
        msg.values(HeaderName::Route).is_empty(),
        "our Route values must be consumed:\n{}",
        msg.text()
    );
}

fn dialog_node(h: &Harness, call_id: &str) -> Option<SocketAddr> {
    h.proxy.dialogs().get(call_id.as_bytes())
}

fn stat(h: &Harness, f: impl Fn(&sipedge::transport::TcpStats) -> u64) -> u64 {
    f(h.proxy.tcp().stats())
}

/// A trunk-side dialog over TCP from `trunk` for a call to the proxy.
fn tcp_call(h: &Harness, trunk: &TcpPeer) -> Dialog {
    Dialog::uac_at(trunk.addr, &format!("sip:fax@{}", h.addr)).over_tcp()
}

/// An OPTIONS keep-alive to the proxy itself from `from` over TCP.
fn tcp_keepalive(h: &Harness, from: SocketAddr) -> (Vec<u8>, String) {
    let b = branch();
    let options = assemble(
        &format!("OPTIONS sip:{} SIP/2.0", h.addr),
        &[
            ("Via", format!("SIP/2.0/TCP {from};branch={b};rport")),
            ("Max-Forwards", "70".to_owned()),
            ("From", format!("<sip:keepalive@{from}>;tag=ka1")),
            ("To", format!("<sip:{}>", h.addr)),
            ("Call-ID", unique("ka-")),
            ("CSeq", "7 OPTIONS".to_owned()),
        ],
        None,
    );
    (options, b)
}

/// A call from a TCP trunk answered by UDP node `n`: the trunk's dialog,
/// the node's, and the INVITE the node saw.
async fn establish_tcp_trunk(h: &Harness, trunk: &TcpPeer, n: usize) -> (Dialog, Dialog, Received) {
    let mut call = tcp_call(h, trunk);
    trunk.send(call.invite(SDP_AUDIO)).await;
    let trying = trunk.recv_response(100).await;
    assert_eq!(trying.branch(), call.invite_branch);
    let node = &h.nodes[n];
    let inv = node.recv_request("INVITE").await;
    let fs = Dialog::uas(node, &inv, &unique("fs-"));
    node.send(fs.answer(&inv, 200, "OK", Some(SDP_NODE)), inv.from)
        .await;
    let got = trunk.recv_until(|r| r.status() == Some(200)).await;
    let ok = got.last().unwrap();
    assert_only_via(ok, &call.invite_branch);
    call.learn_2xx(ok);
    let (ack, _) = call.request("ACK", None);
    trunk.send(ack).await;
    let ack = node.recv_request("ACK").await;
    no_route(&ack);
    (call, fs, inv)
}

// ---------------------------------------------------------------------------
// a. TCP trunk, UDP nodes
// ---------------------------------------------------------------------------

/// A whole call from a TCP trunk to UDP nodes: the answers come back on
/// the trunk's connection, the node sees both of our Record-Routes (its
/// UDP side on top), in-dialog requests cross between the transports in
/// both directions without our Route values, and the proxy never opens a
/// connection of its own towards the trunk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_trunk_to_udp_nodes_full_call() {
    let h = Harness::start(tcp_opts()).await;
    let trunk = h.tcp_trunk_from("trunk", trunk_ip()).await;
    let mut call = tcp_call(&h, &trunk);
    trunk.send(call.invite(SDP_AUDIO)).await;

    let trying = trunk.recv_response(100).await;
    assert_eq!(trying.branch(), call.invite_branch);
    assert_eq!(trying.from, h.tcp_addr.unwrap());

    // The INVITE at node 0, over UDP: our UDP Via on top of the trunk's
    // TCP one, and two Record-Routes, the one the node reaches us on first.
    let node = &h.nodes[0];
    let inv = node.recv_request("INVITE").await;
    assert_eq!(inv.from, h.addr, "sent from the proxy's UDP socket");
    assert_our_via_over(&inv, h.addr, "UDP");
    let vias = inv.vias();
    assert_eq!(vias.len(), 2, "{}", inv.text());
    let trunk_via = Via::parse(vias[1].as_bytes()).expect("the trunk's Via");
    assert_eq!(trunk_via.transport, b"TCP");
    assert_eq!(trunk_via.branch(), Some(call.invite_branch.as_bytes()));
    let rr = inv.values(HeaderName::RecordRoute);
    assert_eq!(rr.len(), 2, "a double Record-Route:\n{}", inv.text());
    assert_our_rr(&rr[0], h.addr, None, node.addr);
    assert_our_rr(&rr[1], h.addr, Some("tcp"), node.addr);
    assert_eq!(inv.body(), SDP_AUDIO.as_bytes());
    assert_eq!(inv.max_forwards(), Some(69));

    // 180 and 200 reach the trunk on its connection, without our Via.
    let fs = Dialog::uas(node, &inv, &unique("fs-"));
    node.send(fs.answer(&inv, 180, "Ringing", None), inv.from)
        .await;
    let ringing = trunk.recv_response(180).await;
    assert_only_via(&ringing, &call.invite_branch);
    node.send(fs.answer(&inv, 200, "OK", Some(SDP_NODE)), inv.from)
        .await;
    let ok = trunk.recv_response(200).await;
    assert_only_via(&ok, &call.invite_branch);
    assert_eq!(ok.values(HeaderName::RecordRoute), rr);
    assert_eq!(ok.body(), SDP_NODE.as_bytes());
    assert_eq!(dialog_node(&h, &call.call_id), Some(node.addr));
    call.learn_2xx(&ok);

    // ACK: to the node over UDP, both our Routes consumed.
    let (ack, _) = call.request("ACK", None);
    trunk.send(ack).await;
    let ack = node.recv_request("ACK").await;
    assert_eq!(ack.request_uri(), fs.local_contact);
    assert_our_via_over(&ack, h.addr, "UDP");
    no_route(&ack);

    // The trunk's T.38 re-INVITE reaches the same node over UDP.
    let (reinvite, reinvite_branch) =
        call.request("INVITE", Some(("application/sdp", SDP_T38.as_bytes())));
    trunk.send(reinvite).await;
    let reinv = node.recv_request("INVITE").await;
    assert_eq!(reinv.cseq(), (2, "INVITE".to_owned()));
    assert_eq!(reinv.body(), SDP_T38.as_bytes());
    assert_our_via_over(&reinv, h.addr, "UDP");
    no_route(&reinv);
    node.send(fs.answer(&reinv, 200, "OK", Some(SDP_T38)), reinv.from)
        .await;
    let got = trunk.recv_until(|r| r.status() == Some(200)).await;
    assert!(got.iter().all(|r| matches!(r.status(), Some(100 | 200))));
    let ok = got.last().unwrap();
    assert_eq!(ok.cseq(), (2, "INVITE".to_owned()));
    assert_only_via(ok, &reinvite_branch);
    let (ack, _) = call.request("ACK", None);
    trunk.send(ack).await;
    assert_eq!(node.recv_request("ACK").await.cseq(), (2, "ACK".to_owned()));

    // The node's re-INVITE: its route set names our UDP side then our TCP
    // side; the proxy consumes both and reaches the trunk over TCP, on the
    // trunk's own connection.
    let mut fs = fs;
    assert_eq!(fs.route, rr);
    let (reinvite, node_branch) =
        fs.request("INVITE", Some(("application/sdp", SDP_NODE.as_bytes())));
    node.send(reinvite, h.addr).await;
    let reinv = trunk.recv_request("INVITE").await;
    assert_eq!(reinv.request_uri(), call.local_contact);
    assert_our_via_over(&reinv, h.addr, "TCP");
    assert_eq!(reinv.vias().len(), 2, "{}", reinv.text());
    no_route(&reinv);
    assert_eq!(reinv.body(), SDP_NODE.as_bytes());
    trunk
        .send(call.answer(&reinv, 200, "OK", Some(SDP_AUDIO)))
        .await;
    let got = node.recv_until(|r| r.status() == Some(200)).await;
    let ok = got.last().unwrap();
    assert_eq!(ok.cseq().1, "INVITE");
    assert_only_via(ok, &node_branch);
    let (ack, _) = fs.request("ACK", None);
    node.send(ack, h.addr).await;
    let ack = trunk.recv_request("ACK").await;
    assert_eq!(ack.call_id(), call.call_id);
    no_route(&ack);

    // The trunk hangs up: BYE to the node, its 200 back, dialog gone.
    let (bye, bye_branch) = call.request("BYE", None);
    trunk.send(bye).await;
    let bye = node.recv_request("BYE").await;
    assert_our_via_over(&bye, h.addr, "UDP");
    no_route(&bye);
    node.send(fs.answer(&bye, 200, "OK", None), bye.from).await;
    let ok = trunk.recv_response(200).await;
    assert_eq!(ok.cseq().1, "BYE");
    assert_only_via(&ok, &bye_branch);
    assert_eq!(dialog_node(&h, &call.call_id), None);

    // A second call, which the node hangs up: its BYE reaches the trunk
    // over TCP.
    let (call2, mut fs2, inv2) = establish_tcp_trunk(&h, &trunk, 0).await;
    assert_eq!(inv2.values(HeaderName::RecordRoute).len(), 2);
    let (bye, node_bye_branch) = fs2.request("BYE", None);
    node.send(bye, h.addr).await;
    let bye = trunk.recv_request("BYE").await;
    assert_eq!(bye.call_id(), call2.call_id);
    assert_our_via_over(&bye, h.addr, "TCP");
    no_route(&bye);
    trunk.send(call2.answer(&bye, 200, "OK", None)).await;
    let ok = node.recv_response(200).await;
    assert_only_via(&ok, &node_bye_branch);
    assert_eq!(dialog_node(&h, &call2.call_id), None);

    // Everything towards the trunk went on its own connection.
    assert_eq!(stat(&h, |s| s.connected.load(Ordering::Relaxed)), 0);
    assert_eq!(stat(&h, |s| s.accepted.load(Ordering::Relaxed)), 1);
    h.nodes[1].expect_nothing(QUIET).await;
    trunk.expect_nothing(Duration::ZERO).await;
}

/// A TCP trunk on the same host as a node (here: the same loopback IP) is
/// still the trunk: its INVITE goes to the pool once, with one Via of ours
/// and our two Record-Routes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_trunk_sharing_a_nodes_ip_is_still_the_trunk() {
    let h = Harness::start(tcp_opts()).await;
    let ip = h.addr.ip();
    assert_eq!(h.nodes[0].addr.ip(), ip, "the premise: same IP");
    let trunk = h.tcp_trunk_from("trunk", ip).await;
    let mut call = tcp_call(&h, &trunk);
    trunk.send(call.invite(SDP_AUDIO)).await;
    trunk.recv_response(100).await;
    let inv = h.nodes[0].recv_request("INVITE").await;
    assert_eq!(inv.vias().len(), 2, "one Via of ours:\n{}", inv.text());
    assert_eq!(inv.max_forwards(), Some(69), "{}", inv.text());
    let rr = inv.values(HeaderName::RecordRoute);
    assert_eq!(rr.len(), 2, "{}", inv.text());
    assert_our_rr(&rr[0], h.addr, None, h.nodes[0].addr);
    assert_our_rr(&rr[1], h.addr, Some("tcp"), h.nodes[0].addr);
}

// ---------------------------------------------------------------------------
// b. UDP trunk, TCP node
// ---------------------------------------------------------------------------

/// Node 0 is `;transport=tcp`: every request to it goes over TCP (Via
/// `SIP/2.0/TCP`), its answers come back on that connection, and
/// in-dialog requests cross in both directions; its UDP port gets nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_trunk_to_tcp_node_calls_with_reinvites_and_byes() {
    let h = Harness::start(Options {
        node_kinds: vec![NodeKind::Tcp],
        ..tcp_opts()
    })
    .await;
    let node = h.tcp_node(0);
    let mut call = h.trunk_call();
    h.trunk.send(call.invite(SDP_AUDIO), h.addr).await;
    h.trunk.recv_response(100).await;

    let inv = node.recv_request("INVITE").await;
    assert_our_via_over(&inv, h.addr, "TCP");
    assert_eq!(inv.vias().len(), 2, "{}", inv.text());
    let rr = inv.values(HeaderName::RecordRoute);
    assert_eq!(rr.len(), 2, "a double Record-Route:\n{}", inv.text());
    assert_our_rr(&rr[0], h.addr, Some("tcp"), node.addr);
    assert_our_rr(&rr[1], h.addr, None, node.addr);
    assert_eq!(inv.body(), SDP_AUDIO.as_bytes());

    let mut fs = Dialog::uas_at(node.addr, &inv, &unique("fs-")).over_tcp();
    node.send(fs.answer(&inv, 180, "Ringing", None)).await;
    h.trunk.recv_response(180).await;
    node.send(fs.answer(&inv, 200, "OK", Some(SDP_NODE))).await;
    let ok = h.trunk.recv_response(200).await;
    assert_only_via(&ok, &call.invite_branch);
    assert_eq!(ok.values(HeaderName::RecordRoute), rr);
    assert_eq!(dialog_node(&h, &call.call_id), Some(node.addr));
    call.learn_2xx(&ok);
    let (ack, _) = call.request("ACK", None);
    h.trunk.send(ack, h.addr).await;
    let ack = node.recv_request("ACK").await;
    assert_our_via_over(&ack, h.addr, "TCP");
    no_route(&ack);

    // The trunk's re-INVITE: over TCP to the node.
    let (reinvite, reinvite_branch) =
        call.request("INVITE", Some(("application/sdp", SDP_T38.as_bytes())));
    h.trunk.send(reinvite, h.addr).await;
    let reinv = node.recv_request("INVITE").await;
    assert_our_via_over(&reinv, h.addr, "TCP");
    no_route(&reinv);
    assert_eq!(reinv.body(), SDP_T38.as_bytes());
    node.send(fs.answer(&reinv, 200, "OK", Some(SDP_T38))).await;
    let got = h.trunk.recv_until(|r| r.status() == Some(200)).await;
    assert_only_via(got.last().unwrap(), &reinvite_branch);
    let (ack, _) = call.request("ACK", None);
    h.trunk.send(ack, h.addr).await;
    node.recv_request("ACK").await;

    // The node's re-INVITE, on its connection: to the trunk over UDP.
    let (reinvite, node_branch) =
        fs.request("INVITE", Some(("application/sdp", SDP_NODE.as_bytes())));
    node.send(reinvite).await;
    let reinv = h.trunk.recv_request("INVITE").await;
    assert_eq!(reinv.from, h.addr);
    assert_eq!(reinv.request_uri(), call.local_contact);
    assert_our_via_over(&reinv, h.addr, "UDP");
    no_route(&reinv);
    h.trunk
        .send(call.answer(&reinv, 200, "OK", Some(SDP_AUDIO)), h.addr)
        .await;
    let got = node.recv_until(|r| r.status() == Some(200)).await;
    assert!(
        got.iter().all(|r| matches!(r.status(), Some(100 | 200))),
        "{got:?}"
    );
    assert_only_via(got.last().unwrap(), &node_branch);
    let (ack, _) = fs.request("ACK", None);
    node.send(ack).await;
    h.trunk.recv_request("ACK").await;

    // The trunk hangs up.
    let (bye, bye_branch) = call.request("BYE", None);
    h.trunk.send(bye, h.addr).await;
    let bye = node.recv_request("BYE").await;
    assert_our_via_over(&bye, h.addr, "TCP");
    node.send(fs.answer(&bye, 200, "OK", None)).await;
    let ok = h.trunk.recv_response(200).await;
    assert_only_via(&ok, &bye_branch);
    assert_eq!(dialog_node(&h, &call.call_id), None);

    // A second call, which the node hangs up.
    let mut call2 = h.trunk_call();
    h.trunk.send(call2.invite(SDP_AUDIO), h.addr).await;
    let inv = node.recv_request("INVITE").await;
    let mut fs2 = Dialog::uas_at(node.addr, &inv, &unique("fs-")).over_tcp();
    node.send(fs2.answer(&inv, 200, "OK", Some(SDP_NODE))).await;
    let ok = h.trunk.recv_until(|r| r.status() == Some(200)).await;
    call2.learn_2xx(ok.last().unwrap());
    let (ack, _) = call2.request("ACK", None);
    h.trunk.send(ack, h.addr).await;
    node.recv_request("ACK").await;
    let (bye, node_bye_branch) = fs2.request("BYE", None);
    node.send(bye).await;
    let bye = h.trunk.recv_request("BYE").await;
    assert_eq!(bye.call_id(), call2.call_id);
    assert_our_via_over(&bye, h.addr, "UDP");
    no_route(&bye);
    h.trunk
        .send(call2.answer(&bye, 200, "OK", None), h.addr)
        .await;
    let ok = node.recv_response(200).await;
    assert_only_via(&ok, &node_bye_branch);
    assert_eq!(dialog_node(&h, &call2.call_id), None);

    // Nothing over UDP to the TCP node, nothing to node 1.
    h.nodes[0].expect_nothing(QUIET).await;
    h.nodes[1].expect_nothing(Duration::ZERO).await;
}

// ---------------------------------------------------------------------------
// c. Stream framing through the proxy
// ---------------------------------------------------------------------------

/// Two whole requests in one write (an OPTIONS to the proxy and an
/// INVITE) are both handled, in order; an INVITE that arrives in pieces
/// is handled once, whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_and_fragmented_requests() {
    let h = Harness::start(tcp_opts()).await;
    let trunk = h.tcp_trunk_from("trunk", trunk_ip()).await;

    let (ka, ka_branch) = tcp_keepalive(&h, trunk.addr);
    let mut call = tcp_call(&h, &trunk);
    let mut both = ka;
    both.extend_from_slice(&call.invite(SDP_AUDIO));
    trunk.send(&both).await;
    let ok = trunk.recv_response(200).await;
    assert_eq!(ok.branch(), ka_branch);
    assert_eq!(ok.cseq().1, "OPTIONS");
    let trying = trunk.recv_response(100).await;
    assert_eq!(trying.branch(), call.invite_branch);
    let inv = h.nodes[0].recv_request("INVITE").await;
    assert_eq!(inv.call_id(), call.call_id);
    assert_eq!(inv.body(), SDP_AUDIO.as_bytes());
    let fs = Dialog::uas(&h.nodes[0], &inv, &unique("fs-"));
    h.nodes[0]
        .send(fs.answer(&inv, 200, "OK", Some(SDP_NODE)), inv.from)
        .await;
    trunk.recv_response(200).await;

    // Cut inside the request line, inside a header, between the two CRLFs
    // ending the headers, and inside the body.
    let mut call2 = tcp_call(&h, &trunk);
    let invite = call2.invite(SDP_AUDIO);
    let blank = invite
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a header end");
    let cuts = [5, 60, blank + 2, blank + 4 + 10, invite.len()];
    let mut at = 0;
    for cut in cuts {
        trunk.send(&invite[at..cut]).await;
        at = cut;
        if cut < invite.len() {
            // Each piece is read on its own: nothing is delivered yet.
            h.nodes[0].expect_nothing(Duration::from_millis(50)).await;
        }
    }
    trunk.recv_response(100).await;
    let inv2 = h.nodes[0].recv_request("INVITE").await;
    assert_eq!(inv2.call_id(), call2.call_id);
    assert_eq!(inv2.body(), SDP_AUDIO.as_bytes());
    let fs2 = Dialog::uas(&h.nodes[0], &inv2, &unique("fs-"));
    h.nodes[0]
        .send(fs2.answer(&inv2, 200, "OK", Some(SDP_NODE)), inv2.from)
        .await;
    let ok = trunk.recv_response(200).await;
    assert_eq!(ok.call_id(), call2.call_id);
    // Handled once: no second INVITE, no second answer.
    h.nodes[0].expect_nothing(QUIET).await;
    trunk.expect_nothing(Duration::ZERO).await;
}

// ---------------------------------------------------------------------------
// d. Keep-alive
// ---------------------------------------------------------------------------

/// A double-CRLF ping on the trunk's connection gets a CRLF pong (RFC 5626
/// §3.5.1) and the connection goes on carrying SIP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crlf_ping_gets_a_pong_and_the_connection_stays_usable() {
    let h = Harness::start(tcp_opts()).await;
    let trunk = h.tcp_trunk_from("trunk", trunk_ip()).await;
    trunk.send(b"\r\n\r\n").await;
    trunk.recv_pong().await;
    let (ka, b) = tcp_keepalive(&h, trunk.addr);
    trunk.send(&ka).await;
    assert_eq!(trunk.recv_response(200).await.branch(), b);
    // Again, a ping right behind a request in the same write.
    let (ka, b) = tcp_keepalive(&h, trunk.addr);
    let mut both = ka;
    both.extend_from_slice(b"\r\n\r\n");
    trunk.send(&both).await;
    assert_eq!(trunk.recv_response(200).await.branch(), b);
    trunk.recv_pong().await;
    let (_call, _fs, _inv) = establish_tcp_trunk(&h, &trunk, 0).await;
    assert_eq!(stat(&h, |s| s.accepted.load(Ordering::Relaxed)), 1);
}

// ---------------------------------------------------------------------------
// e. A broken stream closes only its connection
// ---------------------------------------------------------------------------

/// An oversized message, and one whose Content-Length is unusable, each
/// close their own connection (counted), while another trunk connection
/// goes on working and nothing reaches a node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_or_malformed_stream_closes_only_that_connection() {
    let h = Harness::start(tcp_opts()).await;
    let good = h.tcp_trunk_from("good-trunk", trunk_ip()).await;
    let (ka, b) = tcp_keepalive(&h, good.addr);
    good.send(&ka).await;
    assert_eq!(good.recv_response(200).await.branch(), b);

    // Oversized: a header section longer than the cap, no end in sight.
    let big = h.tcp_trunk_from("big-trunk", trunk_ip()).await;
    let mut call = tcp_call(&h, &big);
    let invite = String::from_utf8(call.invite(SDP_AUDIO)).unwrap();
    let pad = "X".repeat(sipedge::sip::DEFAULT_MAX_MESSAGE + 1024);
    let oversized = invite.replacen("\r\n", &format!("\r\nX-Pad: {pad}\r\n"), 1);
    // The proxy may close before it has read it all: a failed write is
    // fine, the close is what is checked.
    let _ = big.try_send(oversized.as_bytes()).await;
    big.expect_closed(0).await;
    assert_eq!(stat(&h, |s| s.closed_oversized.load(Ordering::Relaxed)), 1);

    // Oversized by its Content-Length alone.
    let declared = h.tcp_trunk_from("declared-trunk", trunk_ip()).await;
    let mut call = tcp_call(&h, &declared);
    let invite = String::from_utf8(call.invite(SDP_AUDIO)).unwrap();
    let cl = format!("Content-Length: {}\r\n", SDP_AUDIO.len());
    let head = invite.split("\r\n\r\n").next().unwrap().to_owned() + "\r\n\r\n";
    let head = head.replace(
        &cl,
        &format!("Content-Length: {}\r\n", sipedge::sip::DEFAULT_MAX_MESSAGE),
    );
    assert_ne!(head, invite, "the Content-Length was replaced");
    let _ = declared.try_send(head.as_bytes()).await;
    declared.expect_closed(0).await;
    assert_eq!(stat(&h, |s| s.closed_oversized.load(Ordering::Relaxed)), 2);

    // Bad framing: a negative Content-Length cannot be skipped over.
    let bad = h.tcp_trunk_from("bad-trunk", trunk_ip()).await;
    let (ka, _) = tcp_keepalive(&h, bad.addr);
    let ka = String::from_utf8(ka)
        .unwrap()
        .replace("Content-Length: 0\r\n", "Content-Length: -1\r\n");
    let _ = bad.try_send(ka.as_bytes()).await;
    bad.expect_closed(0).await;
    assert_eq!(stat(&h, |s| s.closed_malformed.load(Ordering::Relaxed)), 1);

    // The first connection is untouched and still carries calls.
    let (ka, b) = tcp_keepalive(&h, good.addr);
    good.send(&ka).await;
    assert_eq!(good.recv_response(200).await.branch(), b);
    let (_call, _fs, _inv) = establish_tcp_trunk(&h, &good, 0).await;
    h.nodes[1].expect_nothing(Duration::ZERO).await;
    assert_eq!(stat(&h, |s| s.accepted.load(Ordering::Relaxed)), 4);
}

/// `[tcp]` reaches the proxy's transport: beyond `max_connections` a new
/// trunk connection is closed at once (counted) while the open ones work,
/// and connections left idle for `idle_timeout` are closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_section_caps_connections_and_closes_idle_ones() {
    let h = Harness::start(Options {
        extra_toml: "[tcp]\nidle_timeout = \"1s\"\nmax_connections = 2\n",
        ..tcp_opts()
    })
    .await;
    let a = h.tcp_trunk_from("trunk-a", trunk_ip()).await;
    let b = h.tcp_trunk_from("trunk-b", trunk_ip()).await;
    for t in [&a, &b] {
        // Accepted and served before the third one comes.
        let (ka, br) = tcp_keepalive(&h, t.addr);
        t.send(&ka).await;
        assert_eq!(t.recv_response(200).await.branch(), br);
    }
    let c = h.tcp_trunk_from("trunk-c", trunk_ip()).await;
    c.expect_closed(0).await;
    assert_eq!(stat(&h, |s| s.refused_cap.load(Ordering::Relaxed)), 1);
    assert_eq!(stat(&h, |s| s.accepted.load(Ordering::Relaxed)), 2);

    // No traffic on a and b: both closed by the idle timeout.
    a.expect_closed(0).await;
    b.expect_closed(0).await;
    assert_eq!(stat(&h, |s| s.closed_idle.load(Ordering::Relaxed)), 2);
    assert_eq!(h.proxy.tcp().connections(), 0);
}

// ---------------------------------------------------------------------------
// f. Over udp_mtu: TCP to a node that takes it
// ---------------------------------------------------------------------------

/// The MTU the next tests set: the trunk's first INVITE fits, a fax
/// re-INVITE with a long SDP does not.
const MTU: usize = 1000;

/// A T.38 offer padded to well over [`MTU`] bytes.
fn big_t38_sdp() -> String {
    let mut sdp = SDP_T38.to_owned();
    for i in 0..12 {
        sdp.push_str(&format!("a=X-vendor-{i}:{}\r\n", "t38".repeat(30)));
    }
    assert!(sdp.len() > MTU);
    sdp
}

/// A node with `tcp = true` gets the INVITE over UDP, and the trunk's
/// re-INVITE that is larger than `listen.udp_mtu` over TCP (RFC 3261
/// §18.1.1), not over UDP; its answer on that connection reaches the trunk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reinvite_over_udp_mtu_goes_to_a_tcp_capable_node_over_tcp() {
    let h = Harness::start(Options {
        node_kinds: vec![NodeKind::Dual],
        listen_extra: "udp_mtu = 1000",
        ..tcp_opts()
    })
    .await;
    let udp = &h.nodes[0];
    let tcp = h.tcp_node(0);
    let mut call = h.trunk_call();
    h.trunk.send(call.invite(SDP_AUDIO), h.addr).await;
    let inv = udp.recv_request("INVITE").await;
    assert!(inv.data.len() <= MTU, "{} bytes", inv.data.len());
    assert_our_via_over(&inv, h.addr, "UDP");
    let rr = inv.values(HeaderName::RecordRoute);
    assert_eq!(rr.len(), 1, "one transport, one Record-Route");
    let fs = Dialog::uas(udp, &inv, &unique("fs-"));
    udp.send(fs.answer(&inv, 200, "OK", Some(SDP_NODE)), inv.from)
        .await;
    let got = h.trunk.recv_until(|r| r.status() == Some(200)).await;
    call.learn_2xx(got.last().unwrap());
    let (ack, _) = call.request("ACK", None);
    h.trunk.send(ack, h.addr).await;
    udp.recv_request("ACK").await;

    let sdp = big_t38_sdp();
    let (reinvite, reinvite_branch) =
        call.request("INVITE", Some(("application/sdp", sdp.as_bytes())));
    h.trunk.send(reinvite, h.addr).await;
    let reinv = tcp.recv_request("INVITE").await;
    assert!(reinv.data.len() > MTU);
    assert_our_via_over(&reinv, h.addr, "TCP");
    assert_eq!(reinv.body(), sdp.as_bytes());
    assert_eq!(reinv.call_id(), call.call_id);
    no_route(&reinv);
    tcp.send(fs.answer(&reinv, 200, "OK", Some(SDP_T38))).await;
    let got = h.trunk.recv_until(|r| r.status() == Some(200)).await;
    let ok = got.last().unwrap();
    assert_only_via(ok, &reinvite_branch);
    assert_eq!(ok.cseq(), (2, "INVITE".to_owned()));
    // The small ACK goes back to UDP.
    let (ack, _) = call.request("ACK", None);
    h.trunk.send(ack, h.addr).await;
    assert_eq!(udp.recv_request("ACK").await.cseq(), (2, "ACK".to_owned()));
    // The big one never went over UDP.
    udp.expect_nothing(QUIET).await;
    tcp.expect_nothing(Duration::ZERO).await;
}

/// An initial INVITE over `listen.udp_mtu` to a `tcp = true` node goes
/// over TCP, with the double Record-Route of a call that changes
/// transport; the trunk's ACK and BYE follow our TCP Record-Route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_invite_over_udp_mtu_goes_to_a_tcp_capable_node_over_tcp() {
    let h = Harness::start(Options {
        node_kinds: vec![NodeKind::Dual],
        listen_extra: "udp_mtu = 1000",
        ..tcp_opts()
    })
    .await;
    let tcp = h.tcp_node(0);
    let sdp = big_t38_sdp();
    let mut call = h.trunk_call();
    h.trunk.send(call.invite(&sdp), h.addr).await;
    let inv = tcp.recv_request("INVITE").await;
    assert_our_via_over(&inv, h.addr, "TCP");
    let rr = inv.values(HeaderName::RecordRoute);
    assert_eq!(rr.len(), 2, "{}", inv.text());
    assert_our_rr(&rr[0], h.addr, Some("tcp"), tcp.addr);
    assert_our_rr(&rr[1], h.addr, None, tcp.addr);
    let fs = Dialog::uas_at(tcp.addr, &inv, &unique("fs-")).over_tcp();
    tcp.send(fs.answer(&inv, 200, "OK", Some(SDP_NODE))).await;
    let got = h.trunk.recv_until(|r| r.status() == Some(200)).await;
    call.learn_2xx(got.last().unwrap());
    let (ack, _) = call.request("ACK", None);
    h.trunk.send(ack, h.addr).await;
    let ack = tcp.recv_request("ACK").await;
    no_route(&ack);
    let (bye, _) = call.request("BYE", None);
    h.trunk.send(bye, h.addr).await;
    let bye = tcp.recv_request("BYE").await;
    no_route(&bye);
    tcp.send(fs.answer(&bye, 200, "OK", None)).await;
    h.trunk.recv_response(200).await;
    h.nodes[0].expect_nothing(QUIET).await;
}

// ---------------------------------------------------------------------------
// g. One connection per node
// ---------------------------------------------------------------------------

/// Two calls to the same TCP node, the second INVITE sent right behind the
/// first (before any connection is up), share one connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_to_a_tcp_node_share_one_connection() {
    let h = Harness::start(Options {
        node_kinds: vec![NodeKind::Tcp],
        // No probe opens the connection first: the calls do.
        probing: false,
        ..tcp_opts()
    })
    .await;
    let node = h.tcp_node(0);
    assert_eq!(node.accepted(), 0);
    let mut a = h.trunk_call();
    let mut b = h.trunk_call();
    h.trunk.send(a.invite(SDP_AUDIO), h.addr).await;
    h.trunk.send(b.invite(SDP_AUDIO), h.addr).await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let inv = node.recv_request("INVITE").await;
        let fs = Dialog::uas_at(node.addr, &inv, &unique("fs-")).over_tcp();
        node.send(fs.answer(&inv, 200, "OK", Some(SDP_NODE))).await;
        ids.push(inv.call_id());
    }
    ids.sort();
    let mut want = vec![a.call_id.clone(), b.call_id.clone()];
    want.sort();
    assert_eq!(ids, want);
    let got = h
        .trunk
        .recv_until({
            let mut oks = 0;
            move |r| {
                oks += usize::from(r.status() == Some(200));
                oks == 2
            }
        })
        .await;
    for call in [&mut a, &mut b] {
        let ok = got
            .iter()
            .find(|r| r.status() == Some(200) && r.call_id() == call.call_id)
            .expect("its 200");
        call.learn_2xx(ok);
        let (ack, _) = call.request("ACK", None);
        h.trunk.send(ack, h.addr).await;
        node.recv_request("ACK").await;
    }
    assert_eq!(node.accepted(), 1, "one connection for both calls");
    assert_eq!(stat(&h, |s| s.connected.load(Ordering::Relaxed)), 1);
    assert_eq!(h.proxy.tcp().connections(), 1);
}

// ---------------------------------------------------------------------------
// h. Connect refused: failover
// ---------------------------------------------------------------------------

/// Node 0 is `;transport=tcp` on a port where nothing listens: the refused
/// connect fails the INVITE over to node 1 at once (like an ICMP port
/// unreachable), long before fr_timeout, and the trunk only sees 100 and
/// the 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_tcp_connect_fails_over_to_the_next_node() {
    let h = Harness::start(Options {
        node_kinds: vec![NodeKind::TcpRefused, NodeKind::Udp],
        fr_timeout: "5s",
        // Node 0 must still be a candidate when the call comes: no probe
        // finds it down first.
        probing: false,
        ..tcp_opts()
    })
    .await;
    let started = tokio::time::Instant::now();
    let mut call = h.trunk_call();
    h.trunk.send(call.invite(SDP_AUDIO), h.addr).await;
    let inv = h.nodes[1].recv_request("INVITE").await;
    // Bounded well inside fr_timeout (5 s): it was the refused connect,
    // not the timer, that moved the call.
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "failover took {:?}",
        started.elapsed()
    );
    assert_eq!(inv.call_id(), call.call_id);
    assert_our_via_over(&inv, h.addr, "UDP");
    assert_eq!(
        inv.values(HeaderName::RecordRoute).len(),
        1,
        "UDP in, UDP out: {}",
        inv.text()
    );
    let fs = Dialog::uas(&h.nodes[1], &inv, &unique("fs-"));
    h.nodes[1]
        .send(fs.answer(&inv, 200, "OK", Some(SDP_NODE)), inv.from)
        .await;
    let got = h.trunk.recv_until(|r| r.status() == Some(200)).await;
    assert!(
        got.iter().all(|r| matches!(r.status(), Some(100 | 200))),
        "the trunk saw an error: {:?}",
        got.iter().map(Received::first_line).collect::<Vec<_>>()
    );
    call.learn_2xx(got.last().unwrap());
    assert_eq!(dialog_node(&h, &call.call_id), Some(h.nodes[1].addr));
    assert!(stat(&h, |s| s.connect_failed.load(Ordering::Relaxed)) >= 1);
    assert!(h.proxy.metrics().failovers(FailoverReason::Transport) >= 1);
    h.nodes[0].expect_nothing(QUIET).await;
}

// ---------------------------------------------------------------------------
// No retransmission over TCP
// ---------------------------------------------------------------------------

/// Timer A and Timer E are for unreliable transports (RFC 3261 §17.1.1.2,
/// §17.1.2.2): a silent TCP node gets its INVITE, and an OPTIONS, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_over_tcp_are_not_retransmitted() {
    let h = Harness::start(Options {
        node_kinds: vec![NodeKind::Tcp],
        fr_timeout: "5s",
        ..tcp_opts()
    })
    .await;
    let node = h.tcp_node(0);
    let mut call = h.trunk_call();
    h.trunk.send(call.invite(SDP_AUDIO), h.addr).await;
    let inv = node.recv_request("INVITE").await;
    let options = request_from("OPTIONS", "sip:bob@192.0.2.99", h.trunk.addr, None, None);
    h.trunk.send(options, h.addr).await;
    let opt = node.recv_request("OPTIONS").await;
    assert_eq!(opt.vias().len(), 2, "relayed, not a probe");
    // Over UDP both would be resent at T1 (500 ms), then 1 s, 2 s.
    node.expect_nothing(Duration::from_millis(1800)).await;
    node.send(reply(&opt, 200, "OK", Some("n0"))).await;
    let fs = Dialog::uas_at(node.addr, &inv, &unique("fs-")).over_tcp();
    node.send(fs.answer(&inv, 200, "OK", Some(SDP_NODE))).await;
    let got = h
        .trunk
        .recv_until({
            let mut oks = 0;
            move |r| {
                oks += usize::from(r.status() == Some(200));
                oks == 2
            }
        })
        .await;
    assert!(got.iter().any(|r| r.cseq().1 == "INVITE"));
    call.learn_2xx(
        got.iter()
            .find(|r| r.cseq().1 == "INVITE" && r.status() == Some(200))
            .unwrap(),
    );
    h.nodes[1].expect_nothing(Duration::ZERO).await;
}

// ---------------------------------------------------------------------------
// i. IPv6
// ---------------------------------------------------------------------------

/// A TCP trunk call on ::1: bracketed addresses in our Via and
/// Record-Routes, the answer on the trunk's connection, and the BYE.
/// (::1 is the only IPv6 loopback address, so the trunk shares the nodes'
/// IP here.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_tcp_trunk_call_on_loopback() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("no IPv6 loopback here: skipped");
        return;
    }
    let h = Harness::start(Options {
        ipv6: true,
        ..tcp_opts()
    })
    .await;
    assert!(h.addr.is_ipv6());
    let trunk = h.tcp_trunk_from("trunk", h.addr.ip()).await;
    let mut call = tcp_call(&h, &trunk);
    trunk.send(call.invite(SDP_AUDIO)).await;
    trunk.recv_response(100).await;
    let node = &h.nodes[0];
    let inv = node.recv_request("INVITE").await;
    assert!(
        inv.vias()[0].starts_with(&format!("SIP/2.0/UDP [::1]:{};", h.addr.port())),
        "{}",
        inv.text()
    );
    let rr = inv.values(HeaderName::RecordRoute);
    assert_eq!(rr.len(), 2, "{}", inv.text());
    assert_our_rr(&rr[0], h.addr, None, node.addr);
    assert_our_rr(&rr[1], h.addr, Some("tcp"), node.addr);
    assert!(
        rr[1].contains(&format!("[::1]:{}", h.addr.port())),
        "{}",
        rr[1]
    );
    let fs = Dialog::uas(node, &inv, &unique("fs-"));
    node.send(fs.answer(&inv, 200, "OK", Some(SDP_NODE)), inv.from)
        .await;
    let got = trunk.recv_until(|r| r.status() == Some(200)).await;
    let ok = got.last().unwrap();
    assert_only_via(ok, &call.invite_branch);
    call.learn_2xx(ok);
    let (ack, _) = call.request("ACK", None);
    trunk.send(ack).await;
    node.recv_request("ACK").await;
    let (bye, _) = call.request("BYE", None);
    trunk.send(bye).await;
    let bye = node.recv_request("BYE").await;
    no_route(&bye);
    node.send(fs.answer(&bye, 200, "OK", None), bye.from).await;
    trunk.recv_response(200).await;
}

/// A UDP trunk on ::1 calling a `;transport=tcp` node on ::1 (for
/// `ipv6_tcp_call`).
async fn ipv6_tcp_node_call() -> Option<(Harness, Dialog, Dialog)> {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("no IPv6 loopback here: skipped");
        return None;
    }
    let h = Harness::start(Options {
        ipv6: true,
        node_kinds: vec![NodeKind::Tcp],
        ..tcp_opts()
    })
    .await;
    let node = h.tcp_node(0);
    assert!(node.addr.is_ipv6());
    let mut call = h.trunk_call();
    h.trunk.send(call.invite(SDP_AUDIO), h.addr).await;
    let inv = node.recv_request("INVITE").await;
    assert!(
        inv.vias()[0].starts_with(&format!("SIP/2.0/TCP [::1]:{};", h.addr.port())),
        "{}",
        inv.text()
    );
    let rr = inv.values(HeaderName::RecordRoute);
    assert_eq!(rr.len(), 2, "{}", inv.text());
    assert_our_rr(&rr[0], h.addr, Some("tcp"), node.addr);
    assert_our_rr(&rr[1], h.addr, None, node.addr);
    let fs = Dialog::uas_at(node.addr, &inv, &unique("fs-")).over_tcp();
    node.send(fs.answer(&inv, 200, "OK", Some(SDP_NODE))).await;
    let got = h.trunk.recv_until(|r| r.status() == Some(200)).await;
    let ok = got.last().unwrap();
    assert_only_via(ok, &call.invite_branch);
    assert_eq!(ok.values(HeaderName::RecordRoute), rr);
    call.learn_2xx(ok);
    Some((h, call, fs))
}

/// IPv6 towards a TCP node: bracketed addresses in our TCP Via and both
/// Record-Routes, the 200 relayed, and the trunk's ACK and BYE delivered
/// over TCP. (Whether our Route values are consumed on IPv6 is the next
/// test.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_udp_trunk_to_tcp_node_on_loopback() {
    let Some((h, mut call, fs)) = ipv6_tcp_node_call().await else {
        return;
    };
    let node = h.tcp_node(0);
    let (ack, _) = call.request("ACK", None);
    h.trunk.send(ack, h.addr).await;
    let ack = node.recv_request("ACK").await;
    assert_our_via_over(&ack, h.addr, "TCP");
    let (bye, bye_branch) = call.request("BYE", None);
    h.trunk.send(bye, h.addr).await;
    let bye = node.recv_request("BYE").await;
    assert_our_via_over(&bye, h.addr, "TCP");
    node.send(fs.answer(&bye, 200, "OK", None)).await;
    assert_only_via(&h.trunk.recv_response(200).await, &bye_branch);
    h.nodes[0].expect_nothing(Duration::ZERO).await;
}

/// On IPv6 too, in-dialog requests arrive without our two Route values,
/// in both directions, and the node's BYE reaches the trunk over UDP as
/// our second Route says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_in_dialog_requests_consume_our_routes() {
    let Some((h, mut call, mut fs)) = ipv6_tcp_node_call().await else {
        return;
    };
    let node = h.tcp_node(0);
    let (ack, _) = call.request("ACK", None);
    h.trunk.send(ack, h.addr).await;
    no_route(&node.recv_request("ACK").await);
    let (bye, bye_branch) = fs.request("BYE", None);
    node.send(bye).await;
    let bye = h.trunk.recv_request("BYE").await;
    assert!(
        bye.vias()[0].starts_with(&format!("SIP/2.0/UDP [::1]:{};", h.addr.port())),
        "{}",
        bye.text()
    );
    no_route(&bye);
    h.trunk
        .send(call.answer(&bye, 200, "OK", None), h.addr)
        .await;
    assert_only_via(&node.recv_response(200).await, &bye_branch);
}

// ---------------------------------------------------------------------------
// More: CANCEL, failover codes, connections that go away, egress
// ---------------------------------------------------------------------------

/// The proxy's own hop-by-hop requests to a TCP node go over TCP: the ACK
/// for a 503 (which fails the call over to node 1) and, on the next call,
/// the CANCEL of a ringing INVITE and the ACK for its 487.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_and_cancel_to_a_tcp_node_go_over_tcp() {
    let h = Harness::start(Options {
        node_kinds: vec![NodeKind::Tcp],
        ..tcp_opts()
    })
    .await;
    let node = h.tcp_node(0);
    let mut call = h.trunk_call();
    h.trunk.send(call.invite(SDP_AUDIO), h.addr).await;
    let inv = node.recv_request("INVITE").await;
    let tag = unique("fs0-");
    node.send(reply(&inv, 503, "Service Unavailable", Some(&tag)))
        .await;
    let ack = node.recv_request("ACK").await;
    assert_eq!(ack.branch(), inv.branch());
    assert_our_via_over(&ack, h.addr, "TCP");
    assert_eq!(ack.to_tag().as_deref(), Some(tag.as_str()));
    let inv1 = h.nodes[1].recv_request("INVITE").await;
    assert_eq!(inv1.call_id(), call.call_id);
    let fs1 = Dialog::uas(&h.nodes[1], &inv1, &unique("fs1-"));
    h.nodes[1]
        .send(fs1.answer(&inv1, 200, "OK", Some(SDP_NODE)), inv1.from)
        .await;
    let got = h.trunk.recv_until(|r| r.status() == Some(200)).await;
    assert!(got.iter().all(|r| matches!(r.status(), Some(100 | 200))));
    call.learn_2xx(got.last().unwrap());

    // Node 0 was marked by its 503 and is probed at once; it answers the
    // probe (auto) and comes back for the next call.
    let dispatcher = h.proxy.dispatcher();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !dispatcher.accepts_new_calls(0) {
        assert!(tokio::time::Instant::now() < deadline, "node 0 not back");
        // Reading lets the node answer the probe.
        node.expect_nothing(Duration::from_millis(20)).await;
    }
    let mut call2 = h.trunk_call();
    h.trunk.send(call2.invite(SDP_AUDIO), h.addr).await;
    let inv = node.recv_request("INVITE").await;
    assert_eq!(inv.call_id(), call2.call_id);
    let tag = unique("fs0-");
    node.send(reply(&inv, 180, "Ringing", Some(&tag))).await;
    h.trunk.recv_until(|r| r.status() == Some(180)).await;
    h.trunk.send(call2.cancel(), h.addr).await;
    let cancel = node.recv_request("CANCEL").await;
    assert_eq!(cancel.branch(), inv.branch());
    assert_our_via_over(&cancel, h.addr, "TCP");
    node.send(reply(&cancel, 200, "OK", Some(&tag))).await;
    node.send(reply(&inv, 487, "Request Terminated", Some(&tag)))
        .await;
    let ack = node.recv_request("ACK").await;
    assert_eq!(ack.branch(), inv.branch());
    assert_our_via_over(&ack, h.addr, "TCP");
    let got = h.trunk.recv_until(|r| r.status() == Some(487)).await;
    assert_eq!(got.last().unwrap().call_id(), call2.call_id);
    h.nodes[0].expect_nothing(Duration::ZERO).await;
}

/// The node closes its connection between two requests of a call: the
/// A UDP trunk's call answered by TCP node 0 and ACKed: the trunk's side
/// and the node's.
async fn call_to_tcp_node(h: &Harness) -> (Dialog, Dialog) {
    let node = h.tcp_node(0);
    let mut call = h.trunk_call();
    h.trunk.send(call.invite(SDP_AUDIO), h.addr).await;
    let inv = node.recv_request("INVITE").await;
    let fs = Dialog::uas_at(node.addr, &inv, &unique("fs-")).over_tcp();
    node.send(fs.answer(&inv, 200, "OK", Some(SDP_NODE))).await;
    let got = h.trunk.recv_until(|r| r.status() == Some(200)).await;
    call.learn_2xx(got.last().unwrap());
    let (ack, _) = call.request("ACK", None);
    h.trunk.send(ack, h.addr).await;
    node.recv_request("ACK").await;
    (call, fs)
}

/// proxy opens a new one for the trunk's BYE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_node_connection_is_reopened_for_the_next_request() {
    let h = Harness::start(Options {
        node_kinds: vec![NodeKind::Tcp],
        probing: false,
        ..tcp_opts()
    })
    .await;
    let node = h.tcp_node(0);
    let (mut call, fs) = call_to_tcp_node(&h).await;
    assert_eq!(node.accepted(), 1);

    node.close(0).await;
    // The proxy closes its end in turn: its table has forgotten it then.
    node.expect_closed(0).await;

    let (bye, bye_branch) = call.request("BYE", None);
    h.trunk.send(bye, h.addr).await;
    let bye = node.recv_request("BYE").await;
    assert_eq!(node.accepted(), 2, "a new connection");
    node.send(fs.answer(&bye, 200, "OK", None)).await;
    assert_only_via(&h.trunk.recv_response(200).await, &bye_branch);
}

/// The trunk's connection goes away while the node rings (a NAT timeout, a
/// restart): the answer is sent on a new connection to the received IP
/// and the trunk's Via sent-by port (RFC 3261 §18.2.2), where the trunk
/// listens, not to the closed connection's ephemeral port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answer_after_the_trunks_connection_closed_goes_to_its_sent_by_port() {
    let h = Harness::start(tcp_opts()).await;
    let listening = std::net::TcpListener::bind((trunk_ip(), 0)).expect("bind the trunk");
    let trunk = TcpPeer::listen("trunk-listener", listening);
    let conn = h.tcp_trunk_from("trunk-conn", trunk_ip()).await;
    // Via sent-by and Contact: where the trunk listens.
    let mut call = Dialog::uac_at(trunk.addr, &format!("sip:fax@{}", h.addr)).over_tcp();
    conn.send(call.invite(SDP_AUDIO)).await;
    conn.recv_response(100).await;
    let node = &h.nodes[0];
    let inv = node.recv_request("INVITE").await;

    conn.close(0).await;
    conn.expect_closed(0).await;

    let fs = Dialog::uas(node, &inv, &unique("fs-"));
    node.send(fs.answer(&inv, 200, "OK", Some(SDP_NODE)), inv.from)
        .await;
    let ok = trunk.recv_response(200).await;
    assert_only_via(&ok, &call.invite_branch);
    call.learn_2xx(&ok);
    let (ack, _) = call.request("ACK", None);
    trunk.send(ack).await;
    node.recv_request("ACK").await;
}

/// A call a TCP node starts on its own connection to the proxy goes out
/// to the trunk over UDP with our two Record-Routes (the trunk's side on
/// top); the 200 comes back on the node's connection, and the trunk's BYE
/// reaches the node over TCP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_originated_call_over_the_nodes_own_tcp_connection() {
    let h = Harness::start(Options {
        nodes: 1,
        node_kinds: vec![NodeKind::Tcp],
        ..tcp_opts()
    })
    .await;
    let listening = h.tcp_node(0);
    let own = h.tcp_trunk_from("node0-conn", listening.addr.ip()).await;
    let mut out = Dialog::uac_at(
        listening.addr,
        &format!("sip:+15551239999@{}", h.trunk.addr),
    )
    .over_tcp();
    own.send(out.invite(SDP_AUDIO)).await;
    own.recv_response(100).await;

    let inv = h.trunk.recv_request("INVITE").await;
    assert_eq!(inv.request_uri(), out.invite_uri);
    assert_our_via_over(&inv, h.addr, "UDP");
    assert_eq!(inv.vias().len(), 2);
    let rr = inv.values(HeaderName::RecordRoute);
    assert_eq!(rr.len(), 2, "{}", inv.text());
    assert_our_rr(&rr[0], h.addr, None, listening.addr);
    assert_our_rr(&rr[1], h.addr, Some("tcp"), listening.addr);
    assert_eq!(dialog_node(&h, &out.call_id), Some(listening.addr));

    let mut trunk_side = Dialog::uas(&h.trunk, &inv, &unique("trunk-"));
    h.trunk
        .send(trunk_side.answer(&inv, 200, "OK", Some(SDP_AUDIO)), h.addr)
        .await;
    let got = own.recv_until(|r| r.status() == Some(200)).await;
    let ok = got.last().unwrap();
    assert_only_via(ok, &out.invite_branch);
    out.learn_2xx(ok);
    let (ack, _) = out.request("ACK", None);
    own.send(ack).await;
    assert_eq!(h.trunk.recv_request("ACK").await.call_id(), out.call_id);

    let (bye, bye_branch) = trunk_side.request("BYE", None);
    h.trunk.send(bye, h.addr).await;
    let bye = listening.recv_request("BYE").await;
    assert_eq!(bye.call_id(), out.call_id);
    assert_our_via_over(&bye, h.addr, "TCP");
    no_route(&bye);
    listening.send(reply(&bye, 200, "OK", None)).await;
    assert_only_via(&h.trunk.recv_response(200).await, &bye_branch);
}

/// Two FreeSWITCH instances on one host: node 1 starts a call on its own
/// TCP connection; the call is node 1's, and the trunk's BYE reaches
/// node 1, not node 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_originated_call_from_the_second_node_on_one_host_stays_with_it() {
    let h = Harness::start(Options {
        node_kinds: vec![NodeKind::Tcp, NodeKind::Tcp],
        ..tcp_opts()
    })
    .await;
    let node1 = h.tcp_node(1);
    let own = h.tcp_trunk_from("node1-conn", node1.addr.ip()).await;
    let mut out =
        Dialog::uac_at(node1.addr, &format!("sip:+15551239999@{}", h.trunk.addr)).over_tcp();
    own.send(out.invite(SDP_AUDIO)).await;
    let inv = h.trunk.recv_request("INVITE").await;
    let rr = inv.values(HeaderName::RecordRoute);
    assert_eq!(rr.len(), 2, "{}", inv.text());
    assert_our_rr(&rr[0], h.addr, None, node1.addr);
    assert_eq!(dialog_node(&h, &out.call_id), Some(node1.addr));
    let mut trunk_side = Dialog::uas(&h.trunk, &inv, &unique("trunk-"));
    h.trunk
        .send(trunk_side.answer(&inv, 200, "OK", Some(SDP_AUDIO)), h.addr)
        .await;
    out.learn_2xx(
        own.recv_until(|r| r.status() == Some(200))
            .await
            .last()
            .unwrap(),
    );
    let (bye, _) = trunk_side.request("BYE", None);
    h.trunk.send(bye, h.addr).await;
    let bye = node1.recv_request("BYE").await;
    assert_eq!(bye.call_id(), out.call_id);
    h.tcp_node(0).expect_nothing(QUIET).await;
}

/// Health probes of a `;transport=tcp` node go over TCP (Via
/// `SIP/2.0/TCP`, our TCP port), and its answer on that connection counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_of_a_tcp_node_go_over_tcp() {
    let h = Harness::start(Options {
        nodes: 1,
        node_kinds: vec![NodeKind::Tcp],
        nodes_answer_probes: false,
        extra_toml: "[probe]\ninterval = \"200ms\"\ntimeout = \"150ms\"\nfailure_threshold = 1\n",
        ..tcp_opts()
    })
    .await;
    let node = h.tcp_node(0);
    let probe = node.recv_request("OPTIONS").await;
    assert_eq!(probe.vias().len(), 1);
    assert_our_via_over(&probe, h.addr, "TCP");
    node.send(reply(&probe, 200, "OK", None)).await;
    // A second probe on the same connection, answered too: still active.
    let probe = node.recv_request("OPTIONS").await;
    node.send(reply(&probe, 200, "OK", None)).await;
    assert_eq!(node.accepted(), 1);
    let probe = node.recv_request("OPTIONS").await;
    assert_our_via_over(&probe, h.addr, "TCP");
    assert!(h.proxy.dispatcher().accepts_new_calls(0));
    h.nodes[0].expect_nothing(Duration::ZERO).await;
}

/// The TCP node that has the call goes away (its connection closed, its
/// port no longer listening): the trunk's BYE gets 503 as soon as the
/// new connect is refused (RFC 3261 §16.7 step 10 with §16.8), well before
/// `fr_timeout`, and the failure is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bye_to_a_tcp_node_that_is_gone_gets_503_at_once() {
    let mut h = Harness::start(Options {
        node_kinds: vec![NodeKind::Tcp],
        probing: false,
        ..tcp_opts()
    })
    .await;
    let (mut call, _) = call_to_tcp_node(&h).await;
    drop(h.tcp_nodes[0].take());
    eventually("the proxy to see the node's connection close", || {
        h.proxy.tcp().connections() == 0
    })
    .await;
    let started = std::time::Instant::now();
    let (bye, bye_branch) = call.request("BYE", None);
    h.trunk.send(bye, h.addr).await;
    let answer = h
        .trunk
        .recv_until(|r| r.status().is_some_and(|c| c >= 200))
        .await;
    let answer = answer.last().unwrap();
    assert_eq!(answer.status(), Some(503), "{}", answer.first_line());
    assert_only_via(answer, &bye_branch);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "at the refused connect, not at fr_timeout (5 s): {:?}",
        started.elapsed()
    );
    assert_eq!(
        h.proxy
            .metrics()
            .forward_failures(sipedge::metrics::ForwardFailure::Transport),
        1
    );
}

// ---------------------------------------------------------------------------
// i. A request too large for the nodes' transport
// ---------------------------------------------------------------------------

/// An INVITE that arrives whole over TCP but no longer fits a datagram
/// once our Via and Record-Route are added (65,400 bytes) cannot go to
/// UDP-only nodes: the trunk gets 513 (RFC 3261 §21.5.14), and the local
/// send error (EMSGSIZE) counts against no node: both stay active, none
/// is probed in a hurry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invite_too_large_for_udp_nodes_gets_513_and_blames_no_node() {
    use sipedge::dispatcher::health::State;
    let h = Harness::start(Options {
        // No probe would bring a wrongly marked node back behind the
        // test's back.
        probing: false,
        ..tcp_opts()
    })
    .await;
    let trunk = h.tcp_trunk_from("trunk", trunk_ip()).await;
    let mut call = tcp_call(&h, &trunk);
    let want = 65_400;
    let mut sdp = SDP_AUDIO.to_owned();
    let line = format!("a=x-pad:{}\r\n", "p".repeat(90));
    while call.clone().invite(&sdp).len() + line.len() <= want {
        sdp.push_str(&line);
    }
    let short = want - call.clone().invite(&sdp).len();
    sdp.push_str(&format!("a=x:{}\r\n", "q".repeat(short.saturating_sub(6))));
    let invite = call.invite(&sdp);
    assert!(
        (65_300..65_536).contains(&invite.len()),
        "{} bytes: must fit a TCP message (64 KiB) but not a datagram once forwarded",
        invite.len()
    );
    trunk.send(&invite).await;
    let got = trunk
        .recv_until(|r| r.status().is_some_and(|c| c >= 200))
        .await;
    let last = got.last().unwrap();
    assert_eq!(last.status(), Some(513), "{}", last.first_line());
    assert_eq!(last.branch(), call.invite_branch);
    let dispatcher = h.proxy.dispatcher();
    for i in 0..2 {
        assert_eq!(dispatcher.status(i).state, State::Active, "node{i}");
        assert!(dispatcher.accepts_new_calls(i), "node{i}");
        h.nodes[i].expect_nothing(Duration::ZERO).await;
    }
    assert_eq!(
        h.proxy
            .metrics()
            .invites_rejected(sipedge::metrics::RejectReason::TooLarge),
        1
    );
}

/// The same for a re-INVITE of an established call (a T.38 offer padded
/// past a datagram): 513 to the trunk, the node untouched and still up,
/// the call still there for the next, smaller re-INVITE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reinvite_too_large_for_a_udp_node_gets_513_and_the_call_goes_on() {
    use sipedge::dispatcher::health::State;
    let h = Harness::start(Options {
        probing: false,
        ..tcp_opts()
    })
    .await;
    let trunk = h.tcp_trunk_from("trunk", trunk_ip()).await;
    let (mut call, _fs, _inv) = establish_tcp_trunk(&h, &trunk, 0).await;
    // Without our Route values (the call is pinned here), so forwarding
    // only adds: 65,480 bytes fit a TCP message, not a datagram with our
    // Via on top.
    let strip = |m: Vec<u8>| -> Vec<u8> {
        String::from_utf8(m)
            .unwrap()
            .split_inclusive("\r\n")
            .filter(|l| !l.starts_with("Route:"))
            .collect::<String>()
            .into_bytes()
    };
    let build = |call: &mut Dialog, sdp: &str| {
        let (m, b) = call.request("INVITE", Some(("application/sdp", sdp.as_bytes())));
        (strip(m), b)
    };
    let mut sdp = SDP_AUDIO.to_owned();
    let base = build(&mut call.clone(), &sdp).0.len();
    sdp.push_str(&format!("a=x:{}\r\n", "p".repeat(65_480 - base - 6)));
    let (reinvite, branch) = build(&mut call, &sdp);
    assert!(
        (65_450..65_536).contains(&reinvite.len()),
        "{} bytes",
        reinvite.len()
    );
    trunk.send(&reinvite).await;
    let got = trunk
        .recv_until(|r| r.status().is_some_and(|c| c >= 200))
        .await;
    let last = got.last().unwrap();
    assert_eq!(last.status(), Some(513), "{}", last.first_line());
    assert_eq!(last.branch(), branch);
    h.nodes[0].expect_nothing(Duration::ZERO).await;
    assert_eq!(h.proxy.dispatcher().status(0).state, State::Active);
    // The call is still there: a normal re-INVITE reaches the node.
    let (reinvite, _) = call.request("INVITE", Some(("application/sdp", SDP_AUDIO.as_bytes())));
    trunk.send(&reinvite).await;
    let got = h.nodes[0].recv_request("INVITE").await;
    assert_eq!(got.call_id(), call.call_id);
}

// ---------------------------------------------------------------------------
// j. A slowloris
// ---------------------------------------------------------------------------

/// Opens `n` connections from `from` to `to`, each holding still. The
/// proxy refuses some: their sockets are kept too (the test cannot tell
/// which, and a real attacker would not care).
async fn hold_connections(from: &str, to: SocketAddr, n: usize) -> Vec<tokio::net::TcpStream> {
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.bind(SocketAddr::new(from.parse().unwrap(), 0)).unwrap();
        let c = tokio::time::timeout(WAIT, s.connect(to))
            .await
            .expect("connect timed out")
            .expect("connect");
        held.push(c);
    }
    held
}

/// Two untrusted sources open 150 connections each to a proxy with
/// `max_connections = 48`: each gets `max_connections_per_source` (20),
/// and the last 8 slots stay `reserved_trusted`. Meanwhile a trunk listed
/// in `[security] trusted` connects and places calls that succeed, and a
/// pool node's address still connects. The refusals are counted by
/// reason; an attacker's connection that starts a message and trickles
/// it is closed at `message_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_leaves_trusted_tcp_calls_alone() {
    use sipedge::metrics::TcpEvent;
    use tokio::io::AsyncWriteExt;
    let h = Harness::start(Options {
        extra_toml: "[tcp]\nmax_connections = 48\nmax_connections_per_source = 20\n\
                     reserved_trusted = 8\nmessage_timeout = \"1s\"\n\n\
                     [security]\ntrusted = [\"127.0.0.3/32\"]\n",
        ..tcp_opts()
    })
    .await;
    let to = h.tcp_addr.unwrap();
    let tcp = h.proxy.tcp();
    let (a, b): (IpAddr, IpAddr) = ("127.0.0.2".parse().unwrap(), "127.0.0.4".parse().unwrap());
    let mut first = hold_connections("127.0.0.2", to, 150).await;
    let _second = hold_connections("127.0.0.4", to, 150).await;
    let refused = || {
        let m = h.proxy.metrics();
        (
            m.tcp_events(TcpEvent::RefusedPerSource),
            m.tcp_events(TcpEvent::RefusedReserved),
        )
    };
    eventually("the proxy to admit or refuse all 300", || {
        let (per_source, reserved) = refused();
        per_source + reserved == 260
    })
    .await;
    let (per_source, reserved) = refused();
    assert!(
        per_source >= 130 && reserved >= 1,
        "{per_source} {reserved}"
    );
    assert_eq!((tcp.connections_from(a), tcp.connections_from(b)), (20, 20));
    assert_eq!(tcp.connections(), 40);

    // The trusted trunk takes a reserved slot and its calls go through,
    // with the attack still holding its connections.
    let trunk = h
        .tcp_trunk_from("trusted-trunk", "127.0.0.3".parse().unwrap())
        .await;
    for _ in 0..3 {
        let (mut call, fs, _) = establish_tcp_trunk(&h, &trunk, 0).await;
        let (bye, _) = call.request("BYE", None);
        trunk.send(bye).await;
        let bye = h.nodes[0].recv_request("BYE").await;
        h.nodes[0]
            .send(fs.answer(&bye, 200, "OK", None), bye.from)
            .await;
        trunk.recv_response(200).await;
    }
    assert_eq!(tcp.connections_from(a), 20);
    // A pool node (127.0.0.1) may take a reserved slot too.
    let _node_conn = hold_connections("127.0.0.1", to, 1).await;
    eventually("the node's connection to be admitted", || {
        tcp.connections_from("127.0.0.1".parse().unwrap()) == 1
    })
    .await;
    assert_eq!(tcp.connections(), 42);

    // Every held connection of the first source starts a message and then
    // stops: each accepted one is closed at message_timeout, although
    // idle_timeout (300 s) is far away.
    for c in &mut first {
        // A refused one may already be reset.
        let _ = c
            .write_all(b"INVITE sip:x@y SIP/2.0\r\nVia: SIP/2.0/TCP ")
            .await;
    }
    eventually("the trickling connections to be closed", || {
        tcp.connections_from(a) == 0
    })
    .await;
    let m = h.proxy.metrics();
    assert_eq!(m.tcp_events(TcpEvent::ClosedSlow), 20);
    assert_eq!(m.tcp_events(TcpEvent::ClosedIdle), 0);
    assert_eq!(tcp.connections_from(b), 20);
}
