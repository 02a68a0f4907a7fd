//! Interop with a real third-party TLS SIP peer: Debian's Kamailio 5.6
//! with its tls module (OpenSSL), started by each test on free loopback
//! ports (`tests/support/kamailio_tls.rs`).
//!
//! - A carrier's Kamailio as a TLS trunk: a UDP caller → Kamailio → TLS →
//!   sipedge → UDP nodes, with the T.38 re-INVITE and the BYE following
//!   the Record-Route path to the node that answered.
//! - The Kamailio TLS node fixture, checked on its own: it answers an
//!   OPTIONS over TLS and relays a call to the user agent behind it (the
//!   call from sipedge through it is `tests/tls_kamailio_node.rs`).

mod support;

#[allow(dead_code)] // the registry part is for tests/registry.rs
#[path = "support/kamailio.rs"]
mod kamailio;
#[path = "support/kamailio_tls.rs"]
mod kamailio_tls;
#[path = "support/tls.rs"]
mod tls_support;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use kamailio_tls::*;
use sipedge::sip::HeaderName;
use support::*;
use tls_support::{via_transport, TlsTrunk};

/// sipedge's Record-Route on the trunk side: its TLS listener, with
/// `;transport=tls`.
fn assert_tls_rr(rr: &str, tls_addr: SocketAddr) {
    assert!(
        rr.starts_with(&format!("<sip:{tls_addr};")) && rr.contains(";transport=tls"),
        "sipedge's trunk-side Record-Route must name its TLS listener with \
         ;transport=tls: {rr}"
    );
}

/// A UDP caller's call through a carrier's Kamailio that relays it to
/// sipedge over TLS: INVITE/100/200/ACK, a T.38 re-INVITE from the trunk
/// side and the BYE, all at the node that answered; all of it on the one
/// TLS connection Kamailio opened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kamailio_tls_trunk_call_to_udp_nodes() {
    let Some(modules) = tls_modules_or_skip("kamailio_tls_trunk_call_to_udp_nodes") else {
        return;
    };
    let pki = Pki::new();
    let edge = start_edge(&pki, "", None).await;
    let kam = pki.trunk(&modules, edge.tls_addr, None);
    let caller = Peer::bind("caller").await;
    let node = &edge.nodes[0];

    let mut call = Dialog::uac(&caller, &format!("sip:fax@{}", kam.udp));
    caller.send(call.invite(SDP_AUDIO), kam.udp).await;
    let inv = node.recv_request("INVITE").await;
    assert_eq!(inv.from, edge.addr, "sent from sipedge's UDP socket");
    assert_our_via_over(&inv, edge.addr, "UDP");
    // Below ours: Kamailio's Via, over TLS (it reached us over TLS), then
    // the caller's.
    assert_eq!(inv.vias().len(), 3, "{}", inv.text());
    assert_eq!(via_transport(&inv, 1), "TLS", "{}", inv.text());
    assert_eq!(via_transport(&inv, 2), "UDP", "{}", inv.text());
    // Ours twice (UDP towards the node, TLS towards the trunk), then
    // Kamailio's two.
    let rr = inv.values(HeaderName::RecordRoute);
    assert_eq!(rr.len(), 4, "{}", inv.text());
    assert!(rr[0].starts_with(&format!("<sip:{};", edge.addr)), "{rr:?}");
    assert!(!rr[0].contains("transport="), "{rr:?}");
    assert_tls_rr(&rr[1], edge.tls_addr);
    assert!(
        rr[2].contains("transport=tls"),
        "Kamailio's TLS side: {rr:?}"
    );
    assert!(inv.values(HeaderName::Route).is_empty(), "{}", inv.text());
    assert_eq!(
        edge.proxy.tcp().stats().accepted.load(Ordering::Relaxed),
        1,
        "Kamailio connected over TLS"
    );

    let fs = Dialog::uas(node, &inv, &unique("fs-"));
    node.send(fs.answer(&inv, 200, "OK", Some(SDP_NODE)), inv.from)
        .await;
    let ok = final_response(&caller, 200).await;
    assert_eq!(ok.values(HeaderName::RecordRoute), rr);
    call.learn_2xx(&ok);
    assert_eq!(call.remote_target, format!("sip:fs@{}", node.addr));

    let (ack, _) = call.request("ACK", None);
    caller.send(ack, kam.udp).await;
    let ack = node.recv_request("ACK").await;
    assert_eq!(via_transport(&ack, 1), "TLS", "{}", ack.text());

    // The T.38 re-INVITE from the trunk side, to the same node over TLS.
    let (reinvite, _) = call.request("INVITE", Some(("application/sdp", SDP_T38.as_bytes())));
    caller.send(reinvite, kam.udp).await;
    let reinv = node.recv_request("INVITE").await;
    assert_eq!(reinv.body(), SDP_T38.as_bytes());
    assert_eq!(via_transport(&reinv, 1), "TLS", "{}", reinv.text());
    assert!(
        reinv.values(HeaderName::Route).is_empty(),
        "{}",
        reinv.text()
    );
    node.send(fs.answer(&reinv, 200, "OK", Some(SDP_T38)), reinv.from)
        .await;
    let ok = final_response(&caller, 200).await;
    assert_eq!(ok.cseq(), (2, "INVITE".to_owned()));
    let (ack, _) = call.request("ACK", None);
    caller.send(ack, kam.udp).await;
    assert_eq!(node.recv_request("ACK").await.cseq(), (2, "ACK".to_owned()));

    // The BYE, to the same node; its 200 back to the caller.
    let (bye, _) = call.request("BYE", None);
    caller.send(bye, kam.udp).await;
    let bye = node.recv_request("BYE").await;
    assert_eq!(via_transport(&bye, 1), "TLS", "{}", bye.text());
    node.send(fs.answer(&bye, 200, "OK", None), bye.from).await;
    let ok = final_response(&caller, 200).await;
    assert_eq!(ok.cseq_method(), "BYE");

    edge.nodes[1].expect_nothing(Duration::ZERO).await;
    assert_eq!(
        edge.proxy.tcp().stats().accepted.load(Ordering::Relaxed),
        1,
        "the whole call on Kamailio's one TLS connection"
    );
    drop(kam);
}

/// The Kamailio TLS node of `tests/tls_kamailio_node.rs`, on its own: a
/// tokio-rustls client trusting the test CA and checking the node's name
/// gets its 200 to an OPTIONS over TLS, and an INVITE it sends reaches the
/// user agent behind the node, Record-Routed over TLS, whose 200 comes
/// back on the same connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kamailio_tls_node_fixture_relays_to_its_user_agent() {
    let Some(modules) = tls_modules_or_skip("kamailio_tls_node_fixture_relays_to_its_user_agent")
    else {
        return;
    };
    let pki = Pki::new();
    let uas = Peer::bind("uas").await;
    let kam = pki.node(&modules, uas.addr);
    let mut client = TlsTrunk::connect_to(kam.tls, pki.ca_der.clone(), NODE_NAME).await;
    let ok = client.options().await;
    assert_eq!(ok.status(), Some(200), "{}", ok.text());

    let mut call = Dialog::uac_at(client.addr, &format!("sip:fax@{}", kam.tls)).over_tls();
    client.send(call.invite(SDP_AUDIO)).await;
    let inv = uas.recv_request("INVITE").await;
    assert_eq!(via_transport(&inv, 1), "TLS", "{}", inv.text());
    let rr = inv.values(HeaderName::RecordRoute);
    assert_eq!(
        rr.len(),
        2,
        "Kamailio's double Record-Route:\n{}",
        inv.text()
    );
    assert!(rr[0].starts_with(&format!("<sip:{};", kam.udp)), "{rr:?}");
    assert!(
        rr[1].starts_with(&format!("<sip:{};transport=tls;", kam.tls)),
        "{rr:?}"
    );
    let fs = Dialog::uas(&uas, &inv, &unique("fs-"));
    uas.send(fs.answer(&inv, 200, "OK", Some(SDP_NODE)), inv.from)
        .await;
    let ok = client.recv_response(200).await;
    call.learn_2xx(&ok);
    let (ack, _) = call.request("ACK", None);
    client.send(ack).await;
    uas.recv_request("ACK").await;
    drop(kam);
}
