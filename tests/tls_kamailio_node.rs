//! Outbound TLS to a real third-party TLS SIP peer: a UDP trunk's call
//! through sipedge to a node that is Debian's Kamailio 5.6 listening on
//! TLS (`tests/fixtures/kamailio/tls_endpoint.cfg`, a FreeSWITCH-like
//! endpoint that relays to a UDP user agent behind it). The destination is
//! `sip:127.0.0.1:PORT;transport=tls` with `tls_server_name`, checked
//! against the test CA (`[tls] ca_list`). INVITE/200/ACK, the T.38
//! re-INVITE and the BYE all go over one TLS connection to the node that
//! answered. And the other way back: a node's BYE reaches a Kamailio TLS
//! trunk, sipedge connecting to the TLS listener its Record-Route names.

mod support;

#[allow(dead_code)] // the registry part is for tests/registry.rs
#[path = "support/kamailio.rs"]
mod kamailio;
#[path = "support/kamailio_tls.rs"]
mod kamailio_tls;
#[path = "support/tls.rs"]
mod tls_support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use kamailio_tls::*;
use sipedge::sip::HeaderName;
use support::*;
use tls_support::via_transport;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_trunk_to_kamailio_tls_node_full_call() {
    let Some(modules) = tls_modules_or_skip("udp_trunk_to_kamailio_tls_node_full_call") else {
        return;
    };
    let pki = Pki::new();
    let uas = Peer::bind("uas").await;
    let kam = pki.node(&modules, uas.addr);
    // A UDP spare after the TLS node: it must see nothing of the call.
    let spare = Peer::bind("spare").await.answering_probes();
    let destinations = format!(
        "[[dispatcher.destination]]\nuri = \"sip:{};transport=tls\"\n\
         tls_server_name = \"{NODE_NAME}\"\n\n\
         [[dispatcher.destination]]\nuri = \"sip:{}\"\n",
        kam.tls, spare.addr
    );
    let ca_list = format!("ca_list = \"{}\"", pki.ca_pem.display());
    let edge = start_edge(&pki, &ca_list, Some(&destinations)).await;
    let trunk = Peer::bind("trunk").await;

    let mut call = Dialog::uac(&trunk, &format!("sip:fax@{}", edge.addr));
    trunk.send(call.invite(SDP_AUDIO), edge.addr).await;
    trunk.recv_response(100).await;
    // At the user agent behind Kamailio: Kamailio's Via, then ours over
    // TLS, then the trunk's.
    let inv = uas.recv_request("INVITE").await;
    assert_eq!(inv.vias().len(), 3, "{}", inv.text());
    assert_eq!(via_transport(&inv, 1), "TLS", "{}", inv.text());
    assert_eq!(via_transport(&inv, 2), "UDP", "{}", inv.text());
    // Kamailio's two Record-Routes, then ours: TLS towards the node, UDP
    // towards the trunk.
    let rr = inv.values(HeaderName::RecordRoute);
    assert_eq!(rr.len(), 4, "{}", inv.text());
    assert!(
        rr[2].starts_with(&format!("<sip:{};", edge.tls_addr)) && rr[2].contains(";transport=tls"),
        "our node-side Record-Route names our TLS listener with ;transport=tls: {rr:?}"
    );
    assert!(rr[3].starts_with(&format!("<sip:{};", edge.addr)), "{rr:?}");
    assert!(!rr[3].contains("transport="), "{rr:?}");
    assert_eq!(
        edge.proxy.tcp().stats().connected.load(Ordering::Relaxed),
        1,
        "one TLS connection to the node"
    );

    let fs = Dialog::uas(&uas, &inv, &unique("fs-"));
    uas.send(fs.answer(&inv, 200, "OK", Some(SDP_NODE)), inv.from)
        .await;
    let ok = trunk.recv_response(200).await;
    assert_only_via(&ok, &call.invite_branch);
    call.learn_2xx(&ok);
    assert_eq!(call.remote_target, format!("sip:fs@{}", uas.addr));

    let (ack, _) = call.request("ACK", None);
    trunk.send(ack, edge.addr).await;
    let ack = uas.recv_request("ACK").await;
    assert_eq!(via_transport(&ack, 1), "TLS", "{}", ack.text());

    // The T.38 re-INVITE, over TLS to the node that answered.
    let (reinvite, reinvite_branch) =
        call.request("INVITE", Some(("application/sdp", SDP_T38.as_bytes())));
    trunk.send(reinvite, edge.addr).await;
    let reinv = uas.recv_request("INVITE").await;
    assert_eq!(reinv.body(), SDP_T38.as_bytes());
    assert_eq!(via_transport(&reinv, 1), "TLS", "{}", reinv.text());
    uas.send(fs.answer(&reinv, 200, "OK", Some(SDP_T38)), reinv.from)
        .await;
    let ok = trunk.recv_until(|r| r.status() == Some(200)).await;
    let ok = ok.last().unwrap();
    assert_eq!(ok.cseq(), (2, "INVITE".to_owned()));
    assert_only_via(ok, &reinvite_branch);
    let (ack, _) = call.request("ACK", None);
    trunk.send(ack, edge.addr).await;
    assert_eq!(uas.recv_request("ACK").await.cseq(), (2, "ACK".to_owned()));

    // The BYE, to the same node; its 200 back to the trunk.
    let (bye, bye_branch) = call.request("BYE", None);
    trunk.send(bye, edge.addr).await;
    let bye = uas.recv_request("BYE").await;
    assert_eq!(via_transport(&bye, 1), "TLS", "{}", bye.text());
    uas.send(fs.answer(&bye, 200, "OK", None), bye.from).await;
    let ok = trunk.recv_until(|r| r.status() == Some(200)).await;
    let ok = ok.last().unwrap();
    assert_eq!(ok.cseq_method(), "BYE");
    assert_only_via(ok, &bye_branch);

    spare.expect_nothing(Duration::ZERO).await;
    assert_eq!(
        edge.proxy.tcp().stats().connected.load(Ordering::Relaxed),
        1,
        "the whole call on one TLS connection to the node"
    );
    drop(kam);
}

/// A call from a carrier's Kamailio TLS trunk (as in
/// `tests/tls_kamailio.rs`), hung up by the node: sipedge sends the BYE
/// to the trunk's Record-Route, Kamailio's TLS listener (an IP literal,
/// checked against the iPAddress SAN of its certificate), over a TLS
/// connection of its own (Kamailio's connection to us comes from another
/// port); Kamailio relays it to its caller, whose 200 comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_bye_reaches_a_kamailio_tls_trunk() {
    let Some(modules) = tls_modules_or_skip("node_bye_reaches_a_kamailio_tls_trunk") else {
        return;
    };
    let pki = Pki::new();
    let ca_list = format!("ca_list = \"{}\"", pki.ca_pem.display());
    let edge = start_edge(&pki, &ca_list, None).await;
    let kam = pki.trunk(&modules, edge.tls_addr, None);
    let caller = Peer::bind("caller").await;
    let node = &edge.nodes[0];

    let mut call = Dialog::uac(&caller, &format!("sip:fax@{}", kam.udp));
    caller.send(call.invite(SDP_AUDIO), kam.udp).await;
    let inv = node.recv_request("INVITE").await;
    let mut fs = Dialog::uas(node, &inv, &unique("fs-"));
    node.send(fs.answer(&inv, 200, "OK", Some(SDP_NODE)), inv.from)
        .await;
    let ok = caller.recv_until(|r| r.status() == Some(200)).await;
    call.learn_2xx(ok.last().unwrap());
    let (ack, _) = call.request("ACK", None);
    caller.send(ack, kam.udp).await;
    node.recv_request("ACK").await;
    assert_eq!(
        edge.proxy.tcp().stats().connected.load(Ordering::Relaxed),
        0,
        "nothing outbound yet"
    );

    let (bye, bye_branch) = fs.request("BYE", None);
    node.send(bye, edge.addr).await;
    let bye = caller.recv_request("BYE").await;
    // Kamailio's Via, ours over TLS, the node's.
    assert_eq!(bye.vias().len(), 3, "{}", bye.text());
    assert_eq!(via_transport(&bye, 1), "TLS", "{}", bye.text());
    assert_eq!(via_transport(&bye, 2), "UDP", "{}", bye.text());
    caller
        .send(call.answer(&bye, 200, "OK", None), bye.from)
        .await;
    let ok = node.recv_until(|r| r.status() == Some(200)).await;
    let ok = ok.last().unwrap();
    assert_eq!(ok.cseq_method(), "BYE");
    assert_only_via(ok, &bye_branch);
    assert_eq!(
        edge.proxy.tcp().stats().connected.load(Ordering::Relaxed),
        1,
        "one outbound TLS connection, to Kamailio's listener"
    );
    edge.nodes[1].expect_nothing(Duration::ZERO).await;
    drop(kam);
}
