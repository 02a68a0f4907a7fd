//! Responses from where their request did not go, over real UDP on
//! loopback: a stranger on another loopback address who knows a branch
//! (it is in every Via the node sees) answers for the node or the carrier.
//! Its answer is dropped and counted in
//! `sipedge_dropped_messages_total{reason="foreign_response"}`; the real
//! answer still completes the exchange. A node's `advertised` address and,
//! for a carrier, a `[security] trusted` network may answer.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use sipedge::dispatcher::health::State;
use sipedge::metrics::DropReason;
use support::*;

fn foreign(h: &Harness) -> u64 {
    h.proxy.metrics().dropped_count(DropReason::ForeignResponse)
}

/// A UDP socket on another loopback address (not the proxy's, the
/// trunk's or a node's 127.0.0.1).
async fn stranger(ip: &str) -> Peer {
    let at: SocketAddr = format!("{ip}:0").parse().unwrap();
    Peer::bind_at(&format!("stranger {ip}"), at)
        .await
        .unwrap_or_else(|e| panic!("bind {at}: {e}"))
}

/// Waits until `n` foreign responses were counted: each was then handled
/// to the end (the count is the last thing done with one).
async fn counted(h: &Harness, n: u64) {
    eventually(&format!("{n} foreign responses counted"), || {
        foreign(h) == n
    })
    .await;
}

/// A stranger's 486 for the INVITE in flight to node 0 is not relayed, not
/// ACKed and fails nothing over; the node's real answer completes the call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strangers_486_for_a_nodes_invite_is_dropped_and_the_call_completes() {
    let h = Harness::start(Options::default()).await;
    let evil = stranger("127.0.0.2").await;
    let mut call = h.trunk_call();
    h.trunk.send(call.invite(SDP_AUDIO), h.addr).await;
    h.trunk.recv_response(100).await;
    let inv = h.nodes[0].recv_request("INVITE").await;

    evil.send(reply(&inv, 486, "Busy Here", Some("evil")), h.addr)
        .await;
    h.trunk.expect_nothing(QUIET).await;
    counted(&h, 1).await;
    // No ACK for a 486 the machine never saw, no failover to node 1.
    h.nodes[0].expect_nothing(Duration::ZERO).await;
    h.nodes[1].expect_nothing(Duration::ZERO).await;

    let node_side = Dialog::uas(&h.nodes[0], &inv, &unique("fs-"));
    h.nodes[0]
        .send(node_side.answer(&inv, 180, "Ringing", None), inv.from)
        .await;
    h.trunk.recv_response(180).await;
    h.nodes[0]
        .send(node_side.answer(&inv, 200, "OK", Some(SDP_NODE)), inv.from)
        .await;
    let ok = h.trunk.recv_response(200).await;
    assert_eq!(ok.branch(), call.invite_branch);
    call.learn_2xx(&ok);
    let (ack, _) = call.request("ACK", None);
    h.trunk.send(ack, h.addr).await;
    h.nodes[0].recv_request("ACK").await;
    assert_eq!(foreign(&h), 1);
}

/// The same for a BYE relayed to the node: a stranger's 200 neither
/// reaches the trunk nor ends the dialog; the node's 200 does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strangers_200_for_a_relayed_bye_is_dropped_and_the_nodes_is_relayed() {
    let h = Harness::start(Options::default()).await;
    let evil = stranger("127.0.0.2").await;
    let mut est = establish(&h).await;
    let (bye, bye_branch) = est.call.request("BYE", None);
    h.trunk.send(bye, h.addr).await;
    let at_node = h.nodes[est.node].recv_request("BYE").await;

    evil.send(reply(&at_node, 200, "OK", None), h.addr).await;
    h.trunk.expect_nothing(QUIET).await;
    counted(&h, 1).await;
    let pinned = |h: &Harness| h.proxy.dialogs().get(est.call.call_id.as_bytes());
    assert!(pinned(&h).is_some(), "the forged 200 ended nothing");

    h.nodes[est.node]
        .send(
            est.node_side.answer(&at_node, 200, "OK", None),
            at_node.from,
        )
        .await;
    let ok = h.trunk.recv_response(200).await;
    assert_eq!(ok.branch(), bye_branch);
    eventually("the dialog ended by the node's 200", || {
        pinned(&h).is_none()
    })
    .await;
    assert_eq!(foreign(&h), 1);
}

/// A node may answer from one of its `advertised` addresses (its public
/// or VIP address); a stranger still may not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nodes_advertised_address_may_answer() {
    let h = Harness::start(Options {
        destination_extra: vec![r#"advertised = ["127.0.0.2"]"#],
        ..Options::default()
    })
    .await;
    let alias = stranger("127.0.0.2").await;
    let evil = stranger("127.0.0.3").await;
    let mut call = h.trunk_call();
    h.trunk.send(call.invite(SDP_AUDIO), h.addr).await;
    h.trunk.recv_response(100).await;
    let inv = h.nodes[0].recv_request("INVITE").await;

    evil.send(reply(&inv, 486, "Busy Here", Some("evil")), h.addr)
        .await;
    counted(&h, 1).await;

    let node_side = Dialog::uas(&h.nodes[0], &inv, &unique("fs-"));
    alias
        .send(node_side.answer(&inv, 180, "Ringing", None), h.addr)
        .await;
    h.trunk.recv_response(180).await;
    alias
        .send(node_side.answer(&inv, 200, "OK", Some(SDP_NODE)), h.addr)
        .await;
    let ok = h.trunk.recv_response(200).await;
    call.learn_2xx(&ok);
    assert_eq!(foreign(&h), 1);
}

/// A request a node sends out to a carrier: the carrier's own address and
/// its other signalling address in a `[security] trusted` network answer;
/// a stranger outside them does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_carrier_answers_from_its_address_or_a_trusted_network() {
    let h = Harness::start(Options {
        extra_toml: "[security]\ntrusted = [\"127.0.0.1/32\", \"127.0.0.3/32\"]\n",
        ..Options::default()
    })
    .await;
    let evil = stranger("127.0.0.2").await;
    let second = stranger("127.0.0.3").await;
    let node = &h.nodes[0];
    let mut out = Dialog::uac(node, &format!("sip:+15551239999@{}", h.trunk.addr));
    node.send(out.invite(SDP_AUDIO), h.addr).await;
    node.recv_response(100).await;
    let inv = h.trunk.recv_request("INVITE").await;
    let carrier = Dialog::uas(&h.trunk, &inv, "carrier");

    evil.send(carrier.answer(&inv, 486, "Busy Here", None), h.addr)
        .await;
    node.expect_nothing(QUIET).await;
    counted(&h, 1).await;

    second
        .send(carrier.answer(&inv, 180, "Ringing", None), h.addr)
        .await;
    node.recv_response(180).await;
    h.trunk
        .send(carrier.answer(&inv, 200, "OK", Some(SDP_NODE)), inv.from)
        .await;
    let ok = node.recv_response(200).await;
    out.learn_2xx(&ok);
    assert_eq!(foreign(&h), 1);
}

/// A forged answer to a health probe does not revive a silent node: only
/// the node's own does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_probe_answer_does_not_revive_a_node() {
    let h = Harness::start(Options {
        nodes: 1,
        nodes_answer_probes: false,
        // Long enough a timeout that the answers below, sent as soon as
        // the probe is read, come in time on a busy machine.
        extra_toml: "[probe]\ninterval = \"1s\"\ntimeout = \"800ms\"\n\
                     failure_threshold = 1\nsuccess_threshold = 1\n",
        ..Options::default()
    })
    .await;
    let evil = stranger("127.0.0.2").await;
    let node = &h.nodes[0];
    let _ = node.recv_request("OPTIONS").await;
    let dispatcher = h.proxy.dispatcher();
    eventually("node 0 down after an unanswered probe", || {
        dispatcher.status(0).state == State::Inactive
    })
    .await;

    let probe = node.recv_request("OPTIONS").await;
    evil.send(reply(&probe, 200, "OK", None), h.addr).await;
    counted(&h, 1).await;
    assert_eq!(dispatcher.status(0).state, State::Inactive);

    let probe = node.recv_request("OPTIONS").await;
    node.send(reply(&probe, 200, "OK", None), probe.from).await;
    eventually("node 0 back after its own answer", || {
        dispatcher.accepts_new_calls(0)
    })
    .await;
    assert_eq!(foreign(&h), 1);
}
