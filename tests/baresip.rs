//! A SIP stack nobody on the team wrote, on each side of sipedge over
//! TLS: Debian's baresip (libre). As a carrier-side caller, it sends its
//! call to sipedge's TLS listener (its outbound proxy) and a UDP node
//! answers; the node's T.38 re-INVITE and BYE reach baresip through the
//! Record-Route sipedge put in, over a TLS connection sipedge opens to
//! baresip's listener (its certificate checked against `ca_list`). As a
//! FreeSWITCH-like node, `sip:fax@127.0.0.1:PORT;transport=tls`, it is
//! probed with OPTIONS over TLS, answers a UDP trunk's call, its T.38
//! re-INVITE and its BYE, all over one connection. Media stays on
//! loopback: the SDP on our side names a sink socket on 127.0.0.1.

mod support;

#[path = "support/baresip.rs"]
mod baresip;
#[path = "support/tls.rs"]
mod tls_support;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use baresip::{Baresip, Role};
use sipedge::sip::HeaderName;
use support::*;
use tls_support::{
    assert_our_rr, edge_toml, path, via_transport, Ca, EdgeSockets, Issued, Scratch, SIPEDGE_NAME,
};

/// An audio offer or answer whose media goes to `rtp` (a sink on
/// loopback: baresip really sends RTP there).
fn sdp_audio(rtp: SocketAddr, version: u32) -> String {
    format!(
        "v=0\r\no=node 1 {version} IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 0 8\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n\
         a=sendrecv\r\n",
        ip = rtp.ip(),
        port = rtp.port()
    )
}

/// The T.38 re-INVITE offer, to the same sink.
fn sdp_t38(rtp: SocketAddr, version: u32) -> String {
    format!(
        "v=0\r\no=node 1 {version} IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n\
         m=image {port} udptl t38\r\na=T38FaxVersion:0\r\na=T38MaxBitRate:14400\r\n\
         a=T38FaxRateManagement:transferredTCF\r\na=T38FaxMaxDatagram:400\r\n\
         a=T38FaxUdpEC:t38UDPRedundancy\r\n",
        ip = rtp.ip(),
        port = rtp.port()
    )
}

/// The test CA (written to `dir/ca.pem`), sipedge's certificate
/// ([`SIPEDGE_NAME`] and 127.0.0.1) and baresip's (127.0.0.1).
fn pki(dir: &Scratch) -> (std::path::PathBuf, Issued, Issued) {
    let ca = Ca::new("sipedge test CA");
    let ca_pem = ca.write(&dir.join("ca.pem"));
    let ours = ca.leaf(dir, "sipedge", &[SIPEDGE_NAME, "127.0.0.1"]);
    let theirs = ca.leaf(dir, "baresip", &["127.0.0.1"]);
    (ca_pem, ours, theirs)
}

/// The ACK of a non-2xx final `resp` to the in-dialog INVITE `invite`
/// (RFC 3261 §17.1.1.3): its Request-URI, Via (branch), Route, From,
/// Call-ID and CSeq number, the To of the response.
fn ack_of(invite: &[u8], resp: &Received) -> Vec<u8> {
    let text = String::from_utf8_lossy(invite);
    let head = text.split("\r\n\r\n").next().unwrap();
    let mut lines = head.split("\r\n");
    let start = lines.next().unwrap().replacen("INVITE", "ACK", 1);
    let mut out = vec![start];
    for line in lines {
        let name = line
            .split(':')
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        match name.as_str() {
            "via" | "route" | "from" | "call-id" | "max-forwards" => out.push(line.to_owned()),
            _ => {}
        }
    }
    out.push(format!("To: {}", resp.header(HeaderName::To).unwrap()));
    out.push(format!("CSeq: {} ACK", resp.cseq().0));
    out.push("Content-Length: 0".to_owned());
    format!("{}\r\n\r\n", out.join("\r\n")).into_bytes()
}

/// The top Via's branch of the message with `cseq` (e.g. `2 ACK`) in
/// baresip's SIP trace, where each message follows a `TLS a -> b` line.
fn branch_in_trace(log: &str, cseq: &str) -> String {
    let block = log
        .split("\nTLS ")
        .find(|b| b.lines().any(|l| l == format!("CSeq: {cseq}")))
        .unwrap_or_else(|| panic!("no {cseq} in baresip's trace:\n{log}"));
    let via = block
        .lines()
        .find(|l| l.starts_with("Via:"))
        .expect("a Via");
    via.split(";branch=")
        .nth(1)
        .and_then(|b| b.split(';').next())
        .expect("a branch")
        .to_owned()
}

/// baresip's audio reaches `sink`: RTP version 2, from 127.0.0.1.
async fn rtp_arrives(sink: &tokio::net::UdpSocket) {
    let mut buf = [0u8; 2048];
    let (n, from) = tokio::time::timeout(WAIT, sink.recv_from(&mut buf))
        .await
        .expect("baresip's RTP in time")
        .unwrap();
    assert!(n >= 12 && buf[0] >> 6 == 2, "RTP: {:?}", &buf[..n.min(12)]);
    assert!(from.ip().is_loopback(), "{from}");
}

/// A final response to an in-dialog request, as baresip gives it.
async fn final_to(peer: &Peer, method: &str) -> Received {
    let got = peer
        .recv_until(|r| r.status().is_some_and(|s| s >= 200) && r.cseq_method() == method)
        .await;
    got.last().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baresip_calls_over_tls_to_a_udp_node_and_takes_the_nodes_requests() {
    let dir = Scratch::new("baresip-caller");
    let (ca_pem, ours, theirs) = pki(&dir);
    // Kept open for the test: baresip's RTP lands here.
    let sink = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let rtp = sink.local_addr().unwrap();
    let sockets = EdgeSockets::bind("127.0.0.1");
    let node = Peer::bind("node").await;
    let text = edge_toml(
        &sockets,
        &[node.addr],
        &ours.cert,
        &ours.key,
        &format!("ca_list = \"{}\"", path(&ca_pem)),
    );
    let edge = sockets.run(&text, None, false, vec![node]);
    let node = &edge.nodes[0];
    let proxy = format!("sip:{};transport=tls", edge.tls_addr);
    let bs = Baresip::start(
        Role::Caller {
            user: "carrier",
            proxy: &proxy,
            target: "sip:fax@sip.test",
        },
        &theirs,
        &ca_pem,
    );

    // The INVITE: ours over UDP on top of baresip's TLS Via; our two
    // Record-Routes, UDP towards the node and TLS towards baresip.
    let inv = node.recv_until_request("INVITE", SETTLE).await;
    assert_eq!(inv.vias().len(), 2, "{}", inv.text());
    assert_our_via(&inv, edge.addr);
    assert_eq!(via_transport(&inv, 1), "TLS", "{}", inv.text());
    let rr = inv.values(HeaderName::RecordRoute);
    assert_eq!(rr.len(), 2, "{}", inv.text());
    assert_our_rr(&rr[0], edge.addr, None);
    assert_our_rr(&rr[1], edge.tls_addr, Some("tls"));

    let mut fs = Dialog::uas(node, &inv, &unique("fs-"));
    node.send(fs.answer(&inv, 180, "Ringing", None), inv.from)
        .await;
    node.send(
        fs.answer(&inv, 200, "OK", Some(&sdp_audio(rtp, 1))),
        inv.from,
    )
    .await;
    // baresip's ACK follows the Record-Routes back through us.
    let ack = node.recv_request("ACK").await;
    assert_our_via(&ack, edge.addr);
    assert_eq!(via_transport(&ack, 1), "TLS", "{}", ack.text());
    assert_eq!(
        edge.proxy.tcp().stats().connected.load(Ordering::Relaxed),
        0
    );
    rtp_arrives(&sink).await;

    // The node's T.38 re-INVITE reaches baresip at its Contact over TLS:
    // sipedge connects to baresip's listener and checks its certificate.
    let t38 = sdp_t38(rtp, 2);
    let (reinvite, reinvite_branch) =
        fs.request("INVITE", Some(("application/sdp", t38.as_bytes())));
    node.send(&reinvite, edge.addr).await;
    let answer = final_to(node, "INVITE").await;
    assert_only_via(&answer, &reinvite_branch);
    assert_eq!(
        answer.status(),
        Some(488),
        "baresip has no T.38: {}",
        answer.text()
    );
    // The node's ACK of the 488 goes the INVITE's way, with the branch
    // sipedge gave the re-INVITE, so baresip's transaction takes it.
    node.send(ack_of(&reinvite, &answer), edge.addr).await;
    assert_eq!(
        edge.proxy.tcp().stats().connected.load(Ordering::Relaxed),
        1,
        "one TLS connection to baresip's listener"
    );

    // The node hangs up; baresip's 200 comes back.
    let (bye, bye_branch) = fs.request("BYE", None);
    node.send(bye, edge.addr).await;
    let ok = final_to(node, "BYE").await;
    assert_eq!(ok.status(), Some(200), "{}", ok.text());
    assert_only_via(&ok, &bye_branch);
    assert_eq!(
        edge.proxy.tcp().stats().connected.load(Ordering::Relaxed),
        1
    );

    // The ACK reached baresip with the branch of the re-INVITE it
    // answered (RFC 3261 §17.2.3: that is how its transaction knows it).
    let log = bs.stop();
    let n = answer.cseq().0;
    assert_eq!(
        branch_in_trace(&log, &format!("{n} ACK")),
        branch_in_trace(&log, &format!("{n} INVITE"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_trunk_calls_baresip_as_a_tls_node() {
    let dir = Scratch::new("baresip-node");
    let (ca_pem, ours, theirs) = pki(&dir);
    // Kept open for the test: baresip's RTP lands here.
    let sink = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let rtp = sink.local_addr().unwrap();
    let bs = Baresip::start(Role::Callee { user: "fax" }, &theirs, &ca_pem);
    // A dispatcher.list line with the user part: the probe's Request-URI
    // is the URI as written, and baresip answers OPTIONS only for a user
    // it has.
    let node_uri = format!("sip:fax@{};transport=tls", bs.tls);
    std::fs::write(dir.join("pool.list"), format!("1 {node_uri} 0 0\n")).unwrap();
    let sockets = EdgeSockets::bind("127.0.0.1");
    let text = format!(
        "[listen]\nudp = [\"{udp}\"]\nadvertise = \"{udp}\"\ntls = [\"{tls}\"]\n\n\
         [dispatcher]\nlist_file = \"pool.list\"\n\n\
         [tls]\ncertificate = \"{cert}\"\nkey = \"{key}\"\nca_list = \"{ca}\"\n",
        udp = sockets.addr,
        tls = sockets.tls_listen,
        cert = path(&ours.cert),
        key = path(&ours.key),
        ca = path(&ca_pem),
    );
    let edge = sockets.run(&text, Some(&dir.join("proxy.toml")), true, Vec::new());
    let outbound = || edge.proxy.tcp().stats().connected.load(Ordering::Relaxed);

    // Probed over TLS, and baresip's 200 counted. (The metrics name a
    // node by host and port.)
    let answered = format!(
        "sipedge_probe_total{{result=\"ok\",set=\"1\",uri=\"sip:{}:{};transport=tls\"}} ",
        bs.tls.ip(),
        bs.tls.port()
    );
    eventually("baresip answers the OPTIONS probe over TLS", || {
        edge.proxy.metrics().encode().lines().any(|l| {
            l.strip_prefix(&answered)
                .is_some_and(|n| n.parse::<u64>().unwrap() >= 1)
        })
    })
    .await;

    let trunk = Peer::bind("trunk").await;
    let mut call = Dialog::uac(&trunk, &format!("sip:fax@{}", edge.addr));
    trunk.send(call.invite(&sdp_audio(rtp, 1)), edge.addr).await;
    let ok = trunk.recv_until(|r| r.status() == Some(200)).await;
    let ok = ok.last().unwrap();
    assert_only_via(ok, &call.invite_branch);
    call.learn_2xx(ok);
    let rr = ok.values(HeaderName::RecordRoute);
    assert_eq!(rr.len(), 2, "{}", ok.text());
    assert!(
        call.remote_target.contains(";transport=tls"),
        "{}",
        ok.text()
    );
    let (ack, _) = call.request("ACK", None);
    trunk.send(ack, edge.addr).await;
    rtp_arrives(&sink).await;

    let t38 = sdp_t38(rtp, 2);
    let (reinvite, reinvite_branch) =
        call.request("INVITE", Some(("application/sdp", t38.as_bytes())));
    trunk.send(&reinvite, edge.addr).await;
    let answer = final_to(&trunk, "INVITE").await;
    assert_only_via(&answer, &reinvite_branch);
    assert_eq!(answer.status(), Some(488), "{}", answer.text());
    trunk.send(ack_of(&reinvite, &answer), edge.addr).await;

    let (bye, bye_branch) = call.request("BYE", None);
    trunk.send(bye, edge.addr).await;
    let ok = final_to(&trunk, "BYE").await;
    assert_eq!(ok.status(), Some(200), "{}", ok.text());
    assert_only_via(&ok, &bye_branch);
    assert_eq!(outbound(), 1, "probes and the whole call on one connection");

    // The trunk's ACKs, of the 200 and of the 488, reached baresip.
    let log = bs.stop();
    let n = answer.cseq().0;
    assert!(log.contains(&format!("CSeq: {} ACK", n - 1)), "{log}");
    assert_eq!(
        branch_in_trace(&log, &format!("{n} ACK")),
        branch_in_trace(&log, &format!("{n} INVITE"))
    );
}
