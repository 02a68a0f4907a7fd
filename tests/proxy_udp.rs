//! The proxy core over real UDP sockets on 127.0.0.1: a fake
//! trunk and fake FreeSWITCH nodes exchange raw SIP with the in-process
//! proxy. Every expectation is RFC 3261 §16-17 or the behaviour contract
//! (`../shared/design.md`).
//!
//! The pool uses `algorithm = "priority"` with equal priorities, so node 0
//! is always the first choice and node 1 the failover target.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use sipedge::metrics::{FailoverReason, RejectReason};
use sipedge::sip::{HeaderName, NameAddr, Uri, Via};
use support::*;

fn dialog_node(h: &Harness, call_id: &str) -> Option<SocketAddr> {
    h.proxy.dialogs().get(call_id.as_bytes())
}

// ---------------------------------------------------------------------------
// 1. Normal call
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn normal_call_with_t38_reinvite_and_bye_stays_on_the_answering_node() {
    let h = Harness::start(Options::default()).await;
    let mut call = h.trunk_call();
    let invite = call.invite(SDP_AUDIO);
    h.trunk.send(&invite, h.addr).await;

    let trying = h.trunk.recv_response(100).await;
    assert_eq!(trying.branch(), call.invite_branch);
    assert_eq!(trying.cseq(), (1, "INVITE".to_owned()));

    // The INVITE at node 0: our Via on top, the trunk's below it, our
    // Record-Route, Max-Forwards - 1, Request-URI and body untouched.
    let inv = h.nodes[0].recv_request("INVITE").await;
    assert_eq!(inv.from, h.addr, "sent from the proxy's socket");
    assert_eq!(inv.request_uri(), call.invite_uri);
    assert_our_via(&inv, h.addr);
    assert_ne!(inv.branch(), call.invite_branch);
    let vias = inv.vias();
    assert_eq!(vias.len(), 2, "{}", inv.text());
    let trunk_via = Via::parse(vias[1].as_bytes()).expect("the trunk's Via");
    assert_eq!(trunk_via.branch(), Some(call.invite_branch.as_bytes()));
    let rr = inv.values(HeaderName::RecordRoute);
    assert_eq!(rr.len(), 1, "one Record-Route:\n{}", inv.text());
    let rr_addr = NameAddr::parse(rr[0].as_bytes()).expect("Record-Route name-addr");
    let rr_uri = Uri::parse(rr_addr.uri).expect("Record-Route URI");
    assert_eq!(rr_uri.host_raw, Some(&b"127.0.0.1"[..]));
    assert_eq!(rr_uri.port, Some(h.addr.port()));
    assert!(rr_uri.param(b"lr").is_some(), "no ;lr: {}", rr[0]);
    assert!(rr_uri.param(b"node").is_some(), "no node=: {}", rr[0]);
    assert_eq!(inv.max_forwards(), Some(69));
    assert_eq!(inv.body(), SDP_AUDIO.as_bytes());
    assert_eq!(inv.call_id(), call.call_id);
    assert_eq!(
        inv.header_named("User-Agent").as_deref(),
        Some("fake-trunk")
    );
    h.nodes[1].expect_nothing(Duration::ZERO).await;

    // The node's own 100 is hop-by-hop (RFC 3261 §16.7 step 5): the trunk
    // already had ours. 180 and 200 reach the trunk without our Via.
    let node = &h.nodes[0];
    let fs = Dialog::uas(node, &inv, &unique("fs-"));
    node.send(reply(&inv, 100, "Trying", None), inv.from).await;
    node.send(fs.answer(&inv, 180, "Ringing", None), inv.from)
        .await;
    let ringing = h.trunk.recv_response(180).await;
    assert_only_via(&ringing, &call.invite_branch);
    assert_eq!(ringing.to_tag().as_deref(), Some(fs.local_tag.as_str()));
    node.send(fs.answer(&inv, 200, "OK", Some(SDP_NODE)), inv.from)
        .await;
    let ok = h.trunk.recv_response(200).await;
    assert_only_via(&ok, &call.invite_branch);
    assert_eq!(ok.cseq(), (1, "INVITE".to_owned()));
    assert_eq!(ok.to_tag().as_deref(), Some(fs.local_tag.as_str()));
    assert_eq!(ok.body(), SDP_NODE.as_bytes());
    assert_eq!(ok.values(HeaderName::RecordRoute), rr);
    assert_eq!(dialog_node(&h, &call.call_id), Some(node.addr));
    call.learn_2xx(&ok);
    assert_eq!(call.route, rr);
    assert_eq!(call.remote_target, fs.local_contact);

    // ACK for the 2xx: end to end, to the same node, our Route popped.
    let (ack, _) = call.request("ACK", None);
    h.trunk.send(ack, h.addr).await;
    let ack = node.recv_request("ACK").await;
    assert_eq!(ack.cseq(), (1, "ACK".to_owned()));
    assert_eq!(ack.request_uri(), fs.local_contact);
    assert!(ack.values(HeaderName::Route).is_empty(), "{}", ack.text());
    assert_our_via(&ack, h.addr);

    // The T.38 re-INVITE reaches the answering node; its 200 the trunk.
    let (reinvite, reinvite_branch) =
        call.request("INVITE", Some(("application/sdp", SDP_T38.as_bytes())));
    h.trunk.send(reinvite, h.addr).await;
    let reinv = node.recv_request("INVITE").await;
    assert_eq!(reinv.cseq(), (2, "INVITE".to_owned()));
    assert_eq!(reinv.body(), SDP_T38.as_bytes());
    assert!(
        reinv.values(HeaderName::Route).is_empty(),
        "{}",
        reinv.text()
    );
    assert_our_via(&reinv, h.addr);
    node.send(fs.answer(&reinv, 200, "OK", Some(SDP_T38)), reinv.from)
        .await;
    let got = h.trunk.recv_until(|r| r.status() == Some(200)).await;
    let ok = got.last().unwrap();
    assert!(got
        .iter()
        .all(|r| r.status().is_some_and(|c| c == 100 || c == 200)));
    assert_eq!(ok.cseq(), (2, "INVITE".to_owned()));
    assert_only_via(ok, &reinvite_branch);
    assert_eq!(ok.body(), SDP_T38.as_bytes());
    let (ack, _) = call.request("ACK", None);
    h.trunk.send(ack, h.addr).await;
    assert_eq!(node.recv_request("ACK").await.cseq(), (2, "ACK".to_owned()));

    // BYE: same node, its 200 back, and the dialog is gone.
    let (bye, bye_branch) = call.request("BYE", None);
    h.trunk.send(bye, h.addr).await;
    let bye = node.recv_request("BYE").await;
    assert_eq!(bye.call_id(), call.call_id);
    assert_our_via(&bye, h.addr);
    node.send(fs.answer(&bye, 200, "OK", None), bye.from).await;
    let ok = h.trunk.recv_response(200).await;
    assert_eq!(ok.cseq(), (3, "BYE".to_owned()));
    assert_only_via(&ok, &bye_branch);
    assert_eq!(
        dialog_node(&h, &call.call_id),
        None,
        "dialog still pinned after BYE's 200"
    );

    // Nothing ever went to the other node.
    h.nodes[1].expect_nothing(QUIET).await;
}

// ---------------------------------------------------------------------------
// 2-5. Failover
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_on_503_acks_it_and_the_trunk_never_sees_it() {
    let h = Harness::start(Options::default()).await;
    let mut call = h.trunk_call();
    h.trunk.send(call.invite(SDP_AUDIO), h.addr).await;

    let inv0 = h.nodes[0].recv_request("INVITE").await;
    let tag0 = unique("fs0-");
    h.nodes[0]
        .send(
            reply(&inv0, 503, "Service Unavailable", Some(&tag0)),
            inv0.from,
        )
        .await;

    // RFC 3261 §17.1.1.3: the ACK for a non-2xx is hop-by-hop, on the
    // INVITE's branch, with the response's To.
    let ack = h.nodes[0].recv_request("ACK").await;
    assert_eq!(ack.branch(), inv0.branch());
    assert_eq!(ack.cseq(), (1, "ACK".to_owned()));
    assert_eq!(ack.request_uri(), inv0.request_uri());
    assert_eq!(ack.to_tag().as_deref(), Some(tag0.as_str()));
    assert_eq!(ack.call_id(), call.call_id);

    let inv1 = h.nodes[1].recv_request("INVITE").await;
    assert_ne!(
        inv1.branch(),
        inv0.branch(),
        "a new branch for the new node"
    );
    assert_eq!(inv1.body(), SDP_AUDIO.as_bytes());
    assert_eq!(inv1.max_forwards(), Some(69));
    let fs1 = Dialog::uas(&h.nodes[1], &inv1, &unique("fs1-"));
    h.nodes[1]
        .send(fs1.answer(&inv1, 200, "OK", Some(SDP_NODE)), inv1.from)
        .await;

    let got = h.trunk.recv_until(|r| r.status() == Some(200)).await;
    for r in &got {
        assert!(
            matches!(r.status(), Some(100 | 200)),
            "the trunk must only see 100 and the 200, got {}",
            r.first_line()
        );
    }
    let ok = got.last().unwrap();
    assert_eq!(ok.to_tag().as_deref(), Some(fs1.local_tag.as_str()));
    call.learn_2xx(ok);
    assert_eq!(dialog_node(&h, &call.call_id), Some(h.nodes[1].addr));
    assert!(h.proxy.metrics().failovers(FailoverReason::Code) >= 1);

    // The ACK and later requests go to the node that answered.
    let (ack, _) = call.request("ACK", None);
    h.trunk.send(ack, h.addr).await;
    h.nodes[1].recv_request("ACK").await;
    h.nodes[0].expect_nothing(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_when_the_first_node_stays_silent() {
    let h = Harness::start(Options {
        fr_timeout: "300ms",
        ..Options::default()
    })
    .await;
    let mut call = h.trunk_call();
    h.trunk.send(call.invite(SDP_AUDIO), h.addr).await;

    let inv0 = h.nodes[0].recv_request("INVITE").await;
    // Node 0 never answers; after fr_timeout node 1 gets the INVITE.
    let inv1 = h.nodes[1].recv_request("INVITE").await;
    assert_ne!(inv1.branch(), inv0.branch());
    assert_eq!(inv1.call_id(), call.call_id);
    let fs1 = Dialog::uas(&h.nodes[1], &inv1, &unique("fs1-"));
    h.nodes[1]
        .send(fs1.answer(&inv1, 200, "OK", Some(SDP_NODE)), inv1.from)
        .await;
    let got = h.trunk.recv_until(|r| r.status() == Some(200)).await;
    assert!(
        got.iter().all(|r| matches!(r.status(), Some(100 | 200))),
        "the trunk saw a failure: {:?}",
        got.iter().map(Received::first_line).collect::<Vec<_>>()
    );
    call.learn_2xx(got.last().unwrap());
    assert_eq!(dialog_node(&h, &call.call_id), Some(h.nodes[1].addr));
    assert!(h.proxy.metrics().failovers(FailoverReason::Timeout) >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_failover_after_180() {
    let h = Harness::start(Options::default()).await;
    let mut call = h.trunk_call();
    h.trunk.send(call.invite(SDP_AUDIO), h.addr).await;

    let inv = h.nodes[0].recv_request("INVITE").await;
    let tag = unique("fs0-");
    h.nodes[0]
        .send(reply(&inv, 180, "Ringing", Some(&tag)), inv.from)
        .await;
    h.nodes[0]
        .send(
            reply(&inv, 503, "Service Unavailable", Some(&tag)),
            inv.from,
        )
        .await;

    let got = h
        .trunk
        .recv_until(|r| r.status().is_some_and(|c| c >= 200))
        .await;
    let codes: Vec<u16> = got.iter().filter_map(Received::status).collect();
    assert_eq!(
        codes,
        [100, 180, 503],
        "the node had the call: its 503 is relayed"
    );
    let final_ = got.last().unwrap();
    assert_eq!(final_.reason(), "Service Unavailable");
    assert_only_via(final_, &call.invite_branch);

    // The proxy ACKs the 503 itself; the trunk's ACK is absorbed.
    let ack = h.nodes[0].recv_request("ACK").await;
    assert_eq!(ack.branch(), inv.branch());
    h.trunk.send(call.ack_non2xx(final_), h.addr).await;
    h.nodes[0].expect_nothing(QUIET).await;
    h.nodes[1].expect_nothing(Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_nodes_503_gives_503_all_media_servers_unavailable() {
    let h = Harness::start(Options::default()).await;
    let mut call = h.trunk_call();
    h.trunk.send(call.invite(SDP_AUDIO), h.addr).await;

    for node in &h.nodes {
        let inv = node.recv_request("INVITE").await;
        node.send(
            reply(&inv, 503, "Service Unavailable", Some(&unique("fs-"))),
            inv.from,
        )
        .await;
        assert_eq!(node.recv_request("ACK").await.branch(), inv.branch());
    }
    let got = h
        .trunk
        .recv_until(|r| r.status().is_some_and(|c| c >= 200))
        .await;
    let codes: Vec<u16> = got.iter().filter_map(Received::status).collect();
    assert_eq!(codes, [100, 503]);
    let final_ = got.last().unwrap();
    assert_eq!(final_.reason(), "All media servers unavailable");
    assert_eq!(final_.branch(), call.invite_branch);
    assert_eq!(final_.cseq(), (1, "INVITE".to_owned()));
    assert!(
        final_.to_tag().is_some(),
        "a final response carries a To tag"
    );
    assert_eq!(dialog_node(&h, &call.call_id), None);
    h.trunk.send(call.ack_non2xx(final_), h.addr).await;
    for node in &h.nodes {
        node.expect_nothing(QUIET).await;
    }
}

// ---------------------------------------------------------------------------
// 6-8. Local answers
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_dialog_bye_for_an_unknown_call_gets_481() {
    let h = Harness::start(Options::default()).await;
    let mut call = Dialog::uac(&h.trunk, "sip:someone@192.0.2.50:5060");
    call.remote_tag = Some("unknown-dialog".to_owned());
    let (bye, b) = call.request("BYE", None);
    h.trunk.send(bye, h.addr).await;
    let r = h.trunk.recv_response(481).await;
    assert_eq!(r.reason(), "Call/Transaction Does Not Exist");
    assert_eq!(r.branch(), b);
    assert_eq!(r.cseq(), (1, "BYE".to_owned()));
    assert_eq!(r.call_id(), call.call_id);

    // A CANCEL matching no transaction: 481 too (RFC 3261 §9.2).
    let mut stray = h.trunk_call();
    stray.invite(SDP_AUDIO); // sets the branch; never sent
    h.trunk.send(stray.cancel(), h.addr).await;
    let r = h.trunk.recv_response(481).await;
    assert_eq!(r.cseq(), (1, "CANCEL".to_owned()));
    assert_eq!(r.branch(), stray.invite_branch);
    for node in &h.nodes {
        node.expect_nothing(QUIET).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_forwards_zero_gets_483_except_options_to_us() {
    let h = Harness::start(Options::default()).await;
    let mut call = h.trunk_call();
    let invite = String::from_utf8(call.invite(SDP_AUDIO)).unwrap();
    let invite = invite.replace("Max-Forwards: 70\r\n", "Max-Forwards: 0\r\n");
    h.trunk.send(invite, h.addr).await;
    let r = h.trunk.recv_response(483).await;
    assert_eq!(r.branch(), call.invite_branch);
    assert_eq!(
        h.proxy
            .metrics()
            .invites_rejected(RejectReason::MaxForwards),
        1
    );

    // An OPTIONS for the proxy itself is not forwarded, so §16.3 lets the
    // proxy answer it as the final recipient even with Max-Forwards 0.
    let (options, b, _) = h.keepalive(0);
    h.trunk.send(options, h.addr).await;
    let r = h.trunk.recv_response(200).await;
    assert_eq!(r.branch(), b);
    for node in &h.nodes {
        node.expect_nothing(QUIET).await;
    }
}

/// Every INVITE sipedge refuses itself is counted under its reason:
/// 416, 420 and 483 among them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_invites_count_their_reason() {
    let h = Harness::start(Options::default()).await;
    let rejected = |r| h.proxy.metrics().invites_rejected(r);

    // A Request-URI scheme we cannot route: 416.
    let mut call = h.trunk_call();
    let invite = String::from_utf8(call.invite(SDP_AUDIO)).unwrap();
    let start = format!("INVITE {} SIP/2.0", call.invite_uri);
    assert!(invite.starts_with(&start));
    let invite = invite.replacen(&start, "INVITE soap.beep://192.0.2.2:3002/fax SIP/2.0", 1);
    h.trunk.send(invite, h.addr).await;
    let r = h.trunk.recv_response(416).await;
    assert_eq!(r.reason(), "Unsupported URI Scheme");
    assert_eq!(r.branch(), call.invite_branch);
    assert_eq!(rejected(RejectReason::UnsupportedUri), 1);

    // An extension the proxy must support and does not: 420, listed back.
    let mut call = h.trunk_call();
    let ext = [("Proxy-Require", "x-fax-relay".to_owned())];
    h.trunk
        .send(call.invite_with(SDP_AUDIO, &ext), h.addr)
        .await;
    let r = h.trunk.recv_response(420).await;
    assert_eq!(r.reason(), "Bad Extension");
    assert_eq!(
        r.header_named("Unsupported").as_deref(),
        Some("x-fax-relay")
    );
    assert_eq!(r.branch(), call.invite_branch);
    assert_eq!(rejected(RejectReason::BadExtension), 1);

    // No hops left: 483.
    let mut call = h.trunk_call();
    let invite = String::from_utf8(call.invite(SDP_AUDIO)).unwrap();
    let invite = invite.replace("Max-Forwards: 70\r\n", "Max-Forwards: 0\r\n");
    h.trunk.send(invite, h.addr).await;
    let r = h.trunk.recv_response(483).await;
    assert_eq!(r.reason(), "Too Many Hops");
    assert_eq!(r.branch(), call.invite_branch);
    assert_eq!(rejected(RejectReason::MaxForwards), 1);

    // Each counted once, under its own reason only.
    for reason in RejectReason::ALL {
        let want = match reason {
            RejectReason::UnsupportedUri
            | RejectReason::BadExtension
            | RejectReason::MaxForwards => 1,
            _ => 0,
        };
        assert_eq!(rejected(*reason), want, "{reason:?}");
    }
    for node in &h.nodes {
        node.expect_nothing(QUIET).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_without_call_id_gets_400_naming_it() {
    let h = Harness::start(Options::default()).await;
    let mut call = h.trunk_call();
    let invite = String::from_utf8(call.invite(SDP_AUDIO)).unwrap();
    let line = format!("Call-ID: {}\r\n", call.call_id);
    assert!(invite.contains(&line));
    h.trunk.send(invite.replace(&line, ""), h.addr).await;
    let r = h.trunk.recv_response(400).await;
    assert!(r.reason().contains("Call-ID"), "reason: {}", r.reason());
    assert_eq!(r.branch(), call.invite_branch);
    for node in &h.nodes {
        node.expect_nothing(QUIET).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_malformed_responses_are_dropped_and_counted() {
    let h = Harness::start(Options::default()).await;
    let before = h.dropped();
    let garbage: &[&[u8]] = &[
        // Not SIP at all.
        b"\x00\x01\x02 hello garbage \xff\xfe\r\n\r\n",
        // A response with a broken status line.
        b"SIP/2.0 2x0 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKx\r\n\
From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\nCall-ID: g1\r\nCSeq: 1 INVITE\r\n\
Content-Length: 0\r\n\r\n",
        // A response without any Via.
        b"SIP/2.0 200 OK\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\n\
Call-ID: g2\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n",
        // A request without Via: no way to route an answer.
        b"INVITE sip:x@127.0.0.1 SIP/2.0\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\n\
Call-ID: g3\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
    ];
    for g in garbage {
        h.trunk.send(g, h.addr).await;
    }
    let want = before + garbage.len() as u64;
    eventually("every bad datagram counted as dropped", || {
        h.dropped() >= want
    })
    .await;

    // Still serving; and nothing at all was answered to the garbage.
    let (options, _, _) = h.keepalive(70);
    h.trunk.send(options, h.addr).await;
    let r = h.trunk.recv().await;
    assert_eq!(r.status(), Some(200), "{}", r.text());
    assert_eq!(r.cseq_method(), "OPTIONS");
    for node in &h.nodes {
        node.expect_nothing(Duration::ZERO).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn options_to_the_proxy_itself_is_answered_locally() {
    let h = Harness::start(Options::default()).await;
    let (options, b, cid) = h.keepalive(70);
    h.trunk.send(options, h.addr).await;
    let r = h.trunk.recv_response(200).await;
    assert_eq!(r.branch(), b);
    assert_eq!(r.call_id(), cid);
    assert_eq!(r.cseq(), (7, "OPTIONS".to_owned()));
    assert!(r.to_tag().is_some());
    for node in &h.nodes {
        node.expect_nothing(QUIET).await;
    }
}

// ---------------------------------------------------------------------------
// 9-10. CANCEL and retransmissions
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_after_180_reaches_the_node_and_487_comes_back() {
    let h = Harness::start(Options::default()).await;
    let mut call = h.trunk_call();
    h.trunk.send(call.invite(SDP_AUDIO), h.addr).await;
    h.trunk.recv_response(100).await;
    let node = &h.nodes[0];
    let inv = node.recv_request("INVITE").await;
    let tag = unique("fs-");
    node.send(reply(&inv, 180, "Ringing", Some(&tag)), inv.from)
        .await;
    h.trunk.recv_response(180).await;

    h.trunk.send(call.cancel(), h.addr).await;
    // The CANCEL on the node: the branch, Request-URI and CSeq number of
    // the INVITE it cancels (RFC 3261 §9.1).
    let cancel = node.recv_request("CANCEL").await;
    assert_eq!(cancel.branch(), inv.branch());
    assert_eq!(cancel.request_uri(), inv.request_uri());
    assert_eq!(cancel.cseq(), (1, "CANCEL".to_owned()));
    assert_eq!(cancel.call_id(), call.call_id);
    node.send(reply(&cancel, 200, "OK", Some(&tag)), cancel.from)
        .await;
    node.send(reply(&inv, 487, "Request Terminated", Some(&tag)), inv.from)
        .await;

    let got = h.trunk.recv_until(|r| r.status() == Some(487)).await;
    let cancel_oks: Vec<&Received> = got
        .iter()
        .filter(|r| r.status() == Some(200) && r.cseq_method() == "CANCEL")
        .collect();
    assert_eq!(cancel_oks.len(), 1, "exactly one 200 for the CANCEL");
    assert_eq!(cancel_oks[0].branch(), call.invite_branch);
    assert!(
        got.iter().all(|r| matches!(r.status(), Some(200 | 487))),
        "{:?}",
        got.iter().map(Received::first_line).collect::<Vec<_>>()
    );
    let terminated = got.last().unwrap();
    assert_eq!(terminated.cseq(), (1, "INVITE".to_owned()));
    assert_only_via(terminated, &call.invite_branch);

    // The proxy ACKs the 487 hop-by-hop; the trunk's ACK is absorbed.
    let ack = node.recv_request("ACK").await;
    assert_eq!(ack.branch(), inv.branch());
    h.trunk.send(call.ack_non2xx(terminated), h.addr).await;
    node.expect_nothing(QUIET).await;
    h.nodes[1].expect_nothing(Duration::ZERO).await;
    eventually("dialog removed after the 487", || {
        dialog_node(&h, &call.call_id).is_none()
    })
    .await;
}

/// RFC 3261 §9.1 / §16.10: a CANCEL for a branch that has had no
/// provisional response yet MUST NOT be sent; the proxy waits for one.
/// The trunk still gets its 200 for the CANCEL at once, and in the end a
/// 487, and the INVITE never moves to another node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_before_any_provisional_waits_for_one() {
    let h = Harness::start(Options {
        fr_timeout: "1500ms",
        ..Options::default()
    })
    .await;
    let mut call = h.trunk_call();
    h.trunk.send(call.invite(SDP_AUDIO), h.addr).await;
    h.trunk.recv_response(100).await;
    let node = &h.nodes[0];
    let inv = node.recv_request("INVITE").await;

    h.trunk.send(call.cancel(), h.addr).await;
    let ok = h.trunk.recv_response(200).await;
    assert_eq!(ok.cseq_method(), "CANCEL");
    node.expect_nothing(Duration::from_millis(200)).await;

    // The node's first provisional releases the CANCEL.
    let tag = unique("fs-");
    node.send(reply(&inv, 180, "Ringing", Some(&tag)), inv.from)
        .await;
    let cancel = node.recv_request("CANCEL").await;
    assert_eq!(cancel.branch(), inv.branch());
    node.send(reply(&cancel, 200, "OK", Some(&tag)), cancel.from)
        .await;
    node.send(reply(&inv, 487, "Request Terminated", Some(&tag)), inv.from)
        .await;
    let got = h
        .trunk
        .recv_until(|r| r.status().is_some_and(|c| c >= 300))
        .await;
    assert_eq!(got.last().unwrap().status(), Some(487));
    h.nodes[1].expect_nothing(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invite_retransmissions_are_absorbed() {
    let h = Harness::start(Options::default()).await;
    let mut call = h.trunk_call();
    let invite = call.invite(SDP_AUDIO);
    h.trunk.send(&invite, h.addr).await;
    h.trunk.recv_response(100).await;
    // Timer A on the trunk: the same INVITE again; our 100 is repeated.
    h.trunk.send(&invite, h.addr).await;
    h.trunk.recv_response(100).await;

    let node = &h.nodes[0];
    let inv = node.recv_request("INVITE").await;
    node.send(reply(&inv, 180, "Ringing", Some(&unique("fs-"))), inv.from)
        .await;
    h.trunk.recv_response(180).await;
    // Once more after the 180: the last provisional is repeated.
    h.trunk.send(&invite, h.addr).await;
    let again = h.trunk.recv_response(180).await;
    assert_eq!(again.branch(), call.invite_branch);

    // After the 200 (RFC 6026 "Accepted"): a late copy of the INVITE is
    // absorbed. Not the old 180 again, and not a second call to a node.
    let fs = Dialog::uas(node, &inv, &unique("fs-"));
    node.send(fs.answer(&inv, 200, "OK", Some(SDP_NODE)), inv.from)
        .await;
    h.trunk.recv_response(200).await;
    h.trunk.send(&invite, h.addr).await;
    h.trunk.expect_nothing(QUIET).await;

    for n in &h.nodes {
        n.expect_nothing(QUIET).await;
    }
}

/// The same INVITE arriving twice at once (a trunk retransmitting while
/// the first copy is still queued, or a duplicated datagram) must still
/// start one transaction, whichever threads read them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_invite_copies_start_one_transaction() {
    let h = Harness::start(Options::default()).await;
    const CALLS: usize = 30;
    let mut calls = Vec::new();
    for _ in 0..CALLS {
        let mut call = h.trunk_call();
        let invite = call.invite(SDP_AUDIO);
        for _ in 0..3 {
            h.trunk.send(&invite, h.addr).await;
        }
        calls.push(call.call_id);
    }
    // Node 0 rings each INVITE it gets (so no timeout moves a call to node
    // 1) and counts them per Call-ID.
    let node = &h.nodes[0];
    let mut seen = std::collections::HashMap::<String, usize>::new();
    while let Some(inv) = node.recv_within(QUIET).await {
        assert_eq!(inv.method().as_deref(), Some("INVITE"), "{}", inv.text());
        node.send(reply(&inv, 180, "Ringing", Some(&unique("fs-"))), inv.from)
            .await;
        *seen.entry(inv.call_id()).or_default() += 1;
    }
    for cid in &calls {
        assert_eq!(seen.get(cid), Some(&1), "INVITEs forwarded for {cid}");
    }
    h.nodes[1].expect_nothing(Duration::ZERO).await;
}

/// A stateful proxy absorbs a retransmitted non-INVITE request in its
/// server transaction (RFC 3261 §17.2.2, §16); at most it may pass the copy
/// on as a retransmission of its own client transaction (same branch). A
/// copy forwarded on a new branch is a second BYE with the same CSeq to the
/// node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_dialog_retransmission_is_not_a_new_transaction() {
    let h = Harness::start(Options::default()).await;
    let Established {
        mut call,
        node_side,
        node,
    } = establish(&h).await;
    let node = &h.nodes[node];
    let (bye, bye_branch) = call.request("BYE", None);
    h.trunk.send(&bye, h.addr).await;
    let first = node.recv_request("BYE").await;
    // Timer E on the trunk: the node has not answered yet.
    h.trunk.send(&bye, h.addr).await;
    if let Some(copy) = node.recv_within(QUIET).await {
        assert_eq!(copy.method().as_deref(), Some("BYE"), "{}", copy.text());
        assert_eq!(
            copy.branch(),
            first.branch(),
            "the retransmission went out as a new transaction"
        );
    }
    node.send(node_side.answer(&first, 200, "OK", None), first.from)
        .await;
    let ok = h.trunk.recv_response(200).await;
    assert_only_via(&ok, &bye_branch);
}

// ---------------------------------------------------------------------------
// 11-12. Requests from the nodes
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_originated_bye_reaches_the_trunk_and_its_200_comes_back() {
    let h = Harness::start(Options::default()).await;
    let Established {
        call,
        mut node_side,
        node,
    } = establish(&h).await;
    let node = &h.nodes[node];
    assert_eq!(
        node_side.route.len(),
        1,
        "the node learned our Record-Route"
    );

    let (bye, bye_branch) = node_side.request("BYE", None);
    node.send(bye, h.addr).await;
    let bye = h.trunk.recv_request("BYE").await;
    assert_eq!(bye.from, h.addr);
    assert_eq!(bye.request_uri(), call.local_contact, "Request-URI kept");
    assert!(
        bye.values(HeaderName::Route).is_empty(),
        "our Route popped:\n{}",
        bye.text()
    );
    assert_our_via(&bye, h.addr);
    assert_eq!(bye.vias().len(), 2);
    assert_eq!(bye.max_forwards(), Some(69));
    assert_eq!(bye.call_id(), call.call_id);
    assert_eq!(
        bye.tag_in_from().as_deref(),
        Some(node_side.local_tag.as_str())
    );

    h.trunk
        .send(call.answer(&bye, 200, "OK", None), h.addr)
        .await;
    let ok = node.recv_response(200).await;
    assert_eq!(ok.cseq().1, "BYE");
    assert_only_via(&ok, &bye_branch);
    assert_eq!(
        dialog_node(&h, &call.call_id),
        None,
        "dialog still pinned after BYE's 200"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_reinvite_from_another_node_repins_the_call() {
    let h = Harness::start(Options::default()).await;
    let Established {
        mut call,
        node_side,
        node,
    } = establish(&h).await;
    assert_eq!(node, 0);
    let (a, b) = (&h.nodes[0], &h.nodes[1]);
    assert_eq!(dialog_node(&h, &call.call_id), Some(a.addr));

    // Node B recovered the call (sofia recover): same dialog, its own
    // Contact, the route set node A learned.
    let mut recovered = node_side.clone();
    recovered.local = b.addr;
    recovered.local_contact = format!("sip:fs@{}", b.addr);
    let (reinvite, reinvite_branch) =
        recovered.request("INVITE", Some(("application/sdp", SDP_NODE.as_bytes())));
    b.send(reinvite, h.addr).await;

    let reinv = h.trunk.recv_request("INVITE").await;
    assert_eq!(reinv.request_uri(), call.local_contact);
    assert_eq!(reinv.call_id(), call.call_id);
    assert_eq!(
        reinv.contact_uri().as_deref(),
        Some(recovered.local_contact.as_str())
    );
    assert_our_via(&reinv, h.addr);
    // The trunk's target refresh (RFC 3261 §12.2.2).
    call.remote_target = reinv.contact_uri().unwrap();
    h.trunk
        .send(call.answer(&reinv, 200, "OK", Some(SDP_AUDIO)), h.addr)
        .await;
    let got = b.recv_until(|r| r.status() == Some(200)).await;
    let ok = got.last().unwrap();
    assert_eq!(ok.cseq().1, "INVITE");
    assert_only_via(ok, &reinvite_branch);
    assert_eq!(
        dialog_node(&h, &call.call_id),
        Some(b.addr),
        "the takeover's 2xx re-pins the call"
    );
    let (ack, _) = recovered.request("ACK", None);
    b.send(ack, h.addr).await;
    h.trunk.recv_request("ACK").await;

    // The trunk's BYE goes to B, not A.
    let (bye, bye_branch) = call.request("BYE", None);
    h.trunk.send(bye, h.addr).await;
    let bye = b.recv_request("BYE").await;
    b.send(recovered.answer(&bye, 200, "OK", None), bye.from)
        .await;
    let ok = h.trunk.recv_response(200).await;
    assert_only_via(&ok, &bye_branch);
    a.expect_nothing(QUIET).await;
}

// ---------------------------------------------------------------------------
// 13. No open relay
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_requests_from_outside_only_go_to_the_pool() {
    let h = Harness::start(Options::default()).await;
    // A host the sender would like us to reach, observable.
    let victim = Peer::bind("victim").await;

    // INVITE for a foreign Request-URI, with a Route to the victim.
    let mut call = Dialog::uac(&h.trunk, "sip:bob@192.0.2.99");
    let invite = call.invite_with(SDP_AUDIO, &[("Route", format!("<sip:{};lr>", victim.addr))]);
    h.trunk.send(invite, h.addr).await;
    let inv = h.nodes[0].recv_request("INVITE").await;
    assert_eq!(
        inv.request_uri(),
        "sip:bob@192.0.2.99",
        "ds_select_dst keeps the R-URI"
    );
    assert_our_via(&inv, h.addr);

    // An out-of-dialog OPTIONS for a user at the victim.
    let options = assemble(
        &format!("OPTIONS sip:bob@{} SIP/2.0", victim.addr),
        &[
            (
                "Via",
                format!("SIP/2.0/UDP {};branch={};rport", h.trunk.addr, branch()),
            ),
            ("Max-Forwards", "70".to_owned()),
            ("From", format!("<sip:x@{}>;tag=o1", h.trunk.addr)),
            ("To", format!("<sip:bob@{}>", victim.addr)),
            ("Call-ID", unique("relay-")),
            ("CSeq", "1 OPTIONS".to_owned()),
        ],
        None,
    );
    h.trunk.send(options, h.addr).await;
    let opt = h.nodes[0].recv_request("OPTIONS").await;
    assert_our_via(&opt, h.addr);

    victim.expect_nothing(QUIET).await;
}

// ---------------------------------------------------------------------------
// Beyond the list: more of the core's behaviours
// ---------------------------------------------------------------------------

/// A node whose port is closed: the ICMP port unreachable surfaces as an
/// error on the proxy's UDP socket and moves the INVITE on at once, long
/// before fr_timeout ("or the send fails").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_on_icmp_port_unreachable() {
    let mut h = Harness::start(Options {
        fr_timeout: "10s",
        ..Options::default()
    })
    .await;
    drop(h.nodes.remove(0)); // node 0 dies: its port is closed
    let mut call = h.trunk_call();
    h.trunk.send(call.invite(SDP_AUDIO), h.addr).await;
    let inv = h.nodes[0].recv_request("INVITE").await;
    assert_eq!(inv.call_id(), call.call_id);
}

/// After a provisional reply fr_inv_timeout applies: CANCEL the branch and
/// answer 408, never a second node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fr_inv_timeout_after_180_cancels_and_answers_408() {
    let h = Harness::start(Options {
        fr_inv_timeout: "400ms",
        ..Options::default()
    })
    .await;
    let mut call = h.trunk_call();
    h.trunk.send(call.invite(SDP_AUDIO), h.addr).await;
    let node = &h.nodes[0];
    let inv = node.recv_request("INVITE").await;
    node.send(reply(&inv, 180, "Ringing", Some(&unique("fs-"))), inv.from)
        .await;
    let cancel = node.recv_request("CANCEL").await;
    assert_eq!(cancel.branch(), inv.branch());
    let got = h
        .trunk
        .recv_until(|r| r.status().is_some_and(|c| c >= 200))
        .await;
    let codes: Vec<u16> = got.iter().filter_map(Received::status).collect();
    assert_eq!(codes, [100, 180, 408]);
    h.nodes[1].expect_nothing(QUIET).await;
}

/// A node retransmitting its 2xx (its ACK got lost): every copy reaches the
/// trunk (RFC 3261 §16.7 step 10 / §13.3.1.4).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retransmitted_2xx_is_relayed() {
    // The node sends no provisional: fr_timeout must not be what a busy
    // machine tests here (it failed once at 300 ms), so it is far away.
    let h = Harness::start(Options {
        fr_timeout: "30s",
        ..Options::default()
    })
    .await;
    let mut call = h.trunk_call();
    h.trunk.send(call.invite(SDP_AUDIO), h.addr).await;
    let node = &h.nodes[0];
    let inv = node.recv_request("INVITE").await;
    let fs = Dialog::uas(node, &inv, &unique("fs-"));
    let ok = fs.answer(&inv, 200, "OK", Some(SDP_NODE));
    node.send(&ok, inv.from).await;
    h.trunk.recv_until(|r| r.status() == Some(200)).await;
    node.send(&ok, inv.from).await;
    let again = h.trunk.recv_response(200).await;
    assert_only_via(&again, &call.invite_branch);
}

/// Timer A (RFC 3261 §17.1.1.2): a node that has not answered yet gets the
/// same INVITE again (same branch) at T1, and nothing more once it answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_node_gets_the_invite_retransmitted() {
    let h = Harness::start(Options {
        fr_timeout: "5s",
        ..Options::default()
    })
    .await;
    let mut call = h.trunk_call();
    h.trunk.send(call.invite(SDP_AUDIO), h.addr).await;
    let first = h.nodes[0].recv_request("INVITE").await;
    let again = h.nodes[0].recv_request("INVITE").await;
    assert_eq!(
        again.branch(),
        first.branch(),
        "a retransmission, not a new try"
    );
    assert_eq!(again.call_id(), first.call_id());
    h.nodes[0]
        .send(
            reply(&again, 180, "Ringing", Some(&unique("fs0-"))),
            again.from,
        )
        .await;
    // T1 doubles to 1 s; once answered, no further copy comes.
    h.nodes[0].expect_nothing(Duration::from_millis(1500)).await;
    h.nodes[1].expect_nothing(Duration::ZERO).await;
}

/// Timer E (RFC 3261 §17.1.2.2): a forwarded non-INVITE request is resent
/// on the same branch while the node is silent, and no longer once it has
/// answered; the answer still reaches the trunk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_node_gets_a_non_invite_retransmitted() {
    // Timer E's first retransmission (T1) comes before sipedge gives up
    // on the node at `fr_timeout` (the default, 2 s).
    let h = Harness::start(Options {
        fr_timeout: "2s",
        ..Options::default()
    })
    .await;
    let options = request_from("OPTIONS", "sip:bob@192.0.2.99", h.trunk.addr, None, None);
    h.trunk.send(options, h.addr).await;
    let first = h.nodes[0].recv_request("OPTIONS").await;
    let again = h.nodes[0].recv_request("OPTIONS").await;
    assert_eq!(again.branch(), first.branch());
    h.nodes[0]
        .send(reply(&again, 200, "OK", Some(&unique("fs0-"))), again.from)
        .await;
    let ok = h.trunk.recv_response(200).await;
    assert_eq!(ok.status(), Some(200));
    h.nodes[0].expect_nothing(Duration::from_millis(1200)).await;
}

/// Graceful shutdown: new INVITEs get 503 at once, a call already ringing
/// still gets its answer, and the drain completes when it has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_refuses_new_calls_and_drains_ringing_ones() {
    let h = Harness::start(Options::default()).await;
    let mut call = h.trunk_call();
    h.trunk.send(call.invite(SDP_AUDIO), h.addr).await;
    let inv = h.nodes[0].recv_request("INVITE").await;
    let tag = unique("fs0-");
    h.nodes[0]
        .send(reply(&inv, 180, "Ringing", Some(&tag)), inv.from)
        .await;
    let got = h.trunk.recv_until(|r| r.status() == Some(180)).await;
    assert_eq!(got.last().and_then(Received::status), Some(180));

    h.proxy.begin_shutdown();
    let mut late = h.trunk_call();
    h.trunk.send(late.invite(SDP_AUDIO), h.addr).await;
    let got = h
        .trunk
        .recv_until(|r| r.status().is_some_and(|c| c >= 200))
        .await;
    let last = got.last().unwrap();
    assert_eq!(last.status(), Some(503));
    assert_eq!(last.call_id(), late.call_id);
    assert_eq!(
        h.proxy
            .metrics()
            .invites_rejected(RejectReason::ShuttingDown),
        1
    );
    // Still ringing: not drained.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), h.proxy.drained())
            .await
            .is_err()
    );
    h.nodes[0]
        .send(reply(&inv, 200, "OK", Some(&tag)), inv.from)
        .await;
    let got = h.trunk.recv_until(|r| r.status() == Some(200)).await;
    assert_eq!(got.last().unwrap().call_id(), call.call_id);
    tokio::time::timeout(Duration::from_secs(2), h.proxy.drained())
        .await
        .expect("drained once the call is answered");
    h.nodes[1].expect_nothing(Duration::ZERO).await;
}

/// Egress: a call FreeSWITCH sends out through sipedge goes to its
/// Request-URI (the trunk) with our Via and Record-Route, and the trunk's
/// in-dialog requests come back to that node (pinned, Route = our RR).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_originated_call_goes_out_and_its_dialog_comes_back() {
    let h = Harness::start(Options::default()).await;
    let node = &h.nodes[0];
    let mut out = Dialog::uac(node, &format!("sip:+15551239999@{}", h.trunk.addr));
    node.send(out.invite(SDP_AUDIO), h.addr).await;

    let inv = h.trunk.recv_request("INVITE").await;
    assert_eq!(inv.from, h.addr);
    assert_eq!(
        inv.request_uri(),
        out.invite_uri,
        "relayed to its Request-URI"
    );
    assert_our_via(&inv, h.addr);
    assert_eq!(inv.vias().len(), 2);
    assert_eq!(inv.max_forwards(), Some(69));
    let rr = inv.values(HeaderName::RecordRoute);
    assert_eq!(rr.len(), 1);
    assert!(rr[0].contains(";lr"), "{}", rr[0]);
    assert_opaque_hint(&rr[0], node.addr);
    assert_eq!(inv.body(), SDP_AUDIO.as_bytes());
    assert_eq!(dialog_node(&h, &out.call_id), Some(node.addr));

    let trunk_side = Dialog::uas(&h.trunk, &inv, &unique("trunk-"));
    h.trunk
        .send(trunk_side.answer(&inv, 200, "OK", Some(SDP_AUDIO)), h.addr)
        .await;
    let got = node.recv_until(|r| r.status() == Some(200)).await;
    let ok = got.last().unwrap();
    assert_eq!(ok.vias().len(), 1, "our Via removed");
    out.learn_2xx(ok);
    let (ack, _) = out.request("ACK", None);
    node.send(ack, h.addr).await;
    assert_eq!(h.trunk.recv_request("ACK").await.call_id(), out.call_id);

    // The trunk hangs up: its BYE follows our Record-Route back to node 0.
    let mut trunk_side = trunk_side;
    let (bye, _) = trunk_side.request("BYE", None);
    h.trunk.send(bye, h.addr).await;
    let bye = node.recv_request("BYE").await;
    assert_eq!(bye.call_id(), out.call_id);
    assert_our_via(&bye, h.addr);
    h.nodes[1].expect_nothing(Duration::ZERO).await;
}

/// A node's new request whose Request-URI is sipedge itself has nowhere to
/// go: 404, not a relay to our own address (a loop).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_originated_request_to_the_proxy_itself_gets_404() {
    let h = Harness::start(Options::default()).await;
    let node = &h.nodes[0];
    let mut out = Dialog::uac(node, &format!("sip:+15551239999@{}", h.addr));
    node.send(out.invite(SDP_AUDIO), h.addr).await;
    let got = node
        .recv_until(|r| r.status().is_some_and(|c| c >= 200))
        .await;
    assert_eq!(got.last().unwrap().status(), Some(404));
    assert_eq!(h.proxy.metrics().invites_rejected(RejectReason::NoRoute), 1);
    h.trunk.expect_nothing(QUIET).await;
    h.nodes[1].expect_nothing(QUIET).await;
}

/// A node that was failed over for silence answers 2xx after all: its 2xx
/// reaches the caller, the call is pinned to it, the leg on the next node
/// is cancelled once that node answers provisionally (RFC 3261 §9.1,
/// §16.7), and the caller hears nothing of that leg (no 180, no 487).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_2xx_from_a_failed_over_node_wins_and_the_other_leg_is_cancelled() {
    let h = Harness::start(Options {
        fr_timeout: "300ms",
        ..Options::default()
    })
    .await;
    let mut call = h.trunk_call();
    h.trunk.send(call.invite(SDP_AUDIO), h.addr).await;
    let (n0, n1) = (&h.nodes[0], &h.nodes[1]);
    let inv0 = n0.recv_request("INVITE").await;
    // fr_timeout (300 ms) passes without a word from node 0.
    let inv1 = n1.recv_request("INVITE").await;

    let fs = Dialog::uas(n0, &inv0, &unique("fs0-"));
    n0.send(fs.answer(&inv0, 200, "OK", Some(SDP_NODE)), inv0.from)
        .await;
    let got = h.trunk.recv_until(|r| r.status() == Some(200)).await;
    call.learn_2xx(got.last().unwrap());
    assert_eq!(dialog_node(&h, &call.call_id), Some(n0.addr));

    // Node 1 rings: our CANCEL follows, on its INVITE's branch.
    n1.send(reply(&inv1, 180, "Ringing", Some("fs1")), inv1.from)
        .await;
    let cancel = n1.recv_request("CANCEL").await;
    assert_eq!(cancel.branch(), inv1.branch());
    n1.send(reply(&cancel, 200, "OK", Some("fs1")), cancel.from)
        .await;
    n1.send(
        reply(&inv1, 487, "Request Terminated", Some("fs1")),
        inv1.from,
    )
    .await;
    assert_eq!(n1.recv_request("ACK").await.branch(), inv1.branch());

    // The caller's ACK goes to node 0, and it hears nothing of node 1.
    let (ack, _) = call.request("ACK", None);
    h.trunk.send(ack, h.addr).await;
    n0.recv_until(|r| r.method().as_deref() == Some("ACK"))
        .await;
    h.trunk.expect_nothing(QUIET).await;
}

/// Every `listen.udp` socket is served, not just the first: a call that
/// comes in on the second socket reaches a node and is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_listen_socket_is_served() {
    let h = Harness::start(Options {
        extra_socket: Some("127.0.0.9"),
        ..Options::default()
    })
    .await;
    let second = h.extra.expect("second socket");
    assert_eq!(h.proxy.local_addrs(), vec![h.addr, second]);
    let mut call = h.trunk_call();
    h.trunk.send(call.invite(SDP_AUDIO), second).await;
    let node = &h.nodes[0];
    let inv = node.recv_request("INVITE").await;
    assert_eq!(inv.call_id(), call.call_id);
    let fs = Dialog::uas(node, &inv, &unique("fs-"));
    node.send(fs.answer(&inv, 200, "OK", Some(SDP_NODE)), inv.from)
        .await;
    let got = h.trunk.recv_until(|r| r.status() == Some(200)).await;
    let ok = got.last().expect("the 200");
    assert_only_via(ok, &call.invite_branch);
    // And the first socket still works alongside it.
    let (ka, _, _) = h.keepalive(70);
    h.trunk.send(ka, h.addr).await;
    h.trunk.recv_response(200).await;
}

/// IPv6 end to end on ::1 (RFC 5118): a call with its T.38 re-INVITE and
/// BYE, bracketed addresses in Via, Record-Route and Request-URI.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_call_on_loopback() {
    if std::net::UdpSocket::bind("[::1]:0").is_err() {
        eprintln!("no IPv6 loopback here: skipped");
        return;
    }
    let h = Harness::start(Options {
        ipv6: true,
        ..Options::default()
    })
    .await;
    assert!(h.addr.is_ipv6());
    let mut est = establish(&h).await;
    let node = &h.nodes[est.node];
    // The T.38 re-INVITE and the BYE reach the answering node.
    let (reinvite, _) = est
        .call
        .request("INVITE", Some(("application/sdp", SDP_T38.as_bytes())));
    h.trunk.send(reinvite, h.addr).await;
    let got = node.recv_request("INVITE").await;
    assert_eq!(got.call_id(), est.call.call_id);
    assert!(
        got.vias()[0].contains(&format!("[::1]:{}", h.addr.port())),
        "{}",
        got.text()
    );
    node.send(
        est.node_side.answer(&got, 200, "OK", Some(SDP_NODE)),
        got.from,
    )
    .await;
    h.trunk.recv_until(|r| r.status() == Some(200)).await;
    let (bye, _) = est.call.request("BYE", None);
    h.trunk.send(bye, h.addr).await;
    let bye = node.recv_request("BYE").await;
    node.send(est.node_side.answer(&bye, 200, "OK", None), bye.from)
        .await;
    h.trunk.recv_until(|r| r.status() == Some(200)).await;
}

// ---------------------------------------------------------------------------
// Forwarded requests whose next hop does not answer
// ---------------------------------------------------------------------------

/// The status of the trunk's final answer to the request with CSeq `cseq`.
async fn final_for(h: &Harness, cseq: u32) -> Received {
    let got = h
        .trunk
        .recv_until(|r| r.status().is_some_and(|c| c >= 200) && r.cseq().0 == cseq)
        .await;
    got.last().cloned().expect("a final answer")
}

/// Node 0 had the call and is gone (its port closed: every datagram to it
/// comes back as ICMP port unreachable). The trunk's T.38 re-INVITE and
/// its BYE get 503 at once (RFC 3261 §16.7 step 10 with §16.8's rules:
/// a transport error is a 503), not `100 Trying` and then silence; the
/// dialog stays where it was (nothing is sent to node 1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_dialog_requests_to_a_dead_node_get_503_at_once() {
    let mut h = Harness::start(Options::default()).await;
    let Established { mut call, .. } = establish(&h).await;
    drop(h.nodes.remove(0));
    let started = std::time::Instant::now();
    let (reinvite, _) = call.request("INVITE", Some(("application/sdp", SDP_T38.as_bytes())));
    let cseq = call_cseq(&reinvite);
    h.trunk.send(reinvite, h.addr).await;
    let answer = final_for(&h, cseq).await;
    assert_eq!(answer.status(), Some(503), "{}", answer.first_line());
    assert_eq!(answer.call_id(), call.call_id);
    assert_eq!(answer.vias().len(), 1, "only the trunk's own Via");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "at once, not at fr_timeout (5 s): {:?}",
        started.elapsed()
    );
    let (bye, _) = call.request("BYE", None);
    let cseq = call_cseq(&bye);
    h.trunk.send(bye, h.addr).await;
    assert_eq!(final_for(&h, cseq).await.status(), Some(503));
    // Node 1 (now h.nodes[0]) never heard of the call.
    h.nodes[0].expect_nothing(Duration::ZERO).await;
    assert!(
        h.proxy
            .metrics()
            .forward_failures(sipedge::metrics::ForwardFailure::Transport)
            >= 2
    );
}

/// The node is there but silent: the trunk's BYE gets 408 once
/// `fr_timeout` passes (Kamailio's tm does the same after fr_timer), after
/// Timer E resent it; a re-INVITE the node only answered with 100 gets
/// 408 at `fr_inv_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_dialog_requests_to_a_silent_node_get_408() {
    let h = Harness::start(Options {
        fr_timeout: "800ms",
        fr_inv_timeout: "1500ms",
        ..Options::default()
    })
    .await;
    let Established { mut call, node, .. } = establish(&h).await;
    let node = &h.nodes[node];
    let (bye, _) = call.request("BYE", None);
    let cseq = call_cseq(&bye);
    let sent = std::time::Instant::now();
    h.trunk.send(bye, h.addr).await;
    let first = node.recv_request("BYE").await;
    let again = node.recv_request("BYE").await;
    assert_eq!(again.branch(), first.branch(), "Timer E: the same request");
    let answer = final_for(&h, cseq).await;
    assert_eq!(answer.status(), Some(408), "{}", answer.first_line());
    assert!(
        sent.elapsed() >= Duration::from_millis(800),
        "not before fr_timeout"
    );
    assert_eq!(
        h.proxy
            .metrics()
            .forward_failures(sipedge::metrics::ForwardFailure::Timeout),
        1
    );

    let (reinvite, _) = call.request("INVITE", Some(("application/sdp", SDP_T38.as_bytes())));
    let cseq = call_cseq(&reinvite);
    h.trunk.send(reinvite, h.addr).await;
    let got = node.recv_request("INVITE").await;
    node.send(reply(&got, 100, "Trying", None), got.from).await;
    let sent = std::time::Instant::now();
    let all = h
        .trunk
        .recv_until(|r| r.status().is_some_and(|c| c >= 200) && r.cseq().0 == cseq)
        .await;
    let answer = all.last().cloned().expect("a final answer");
    assert_eq!(answer.status(), Some(408), "{}", answer.first_line());
    assert_eq!(
        all.iter().filter(|r| r.status() == Some(100)).count(),
        1,
        "our own 100 only: the node's is hop by hop (RFC 3261 §16.7 step 5)"
    );
    assert!(
        sent.elapsed() >= Duration::from_millis(1000),
        "after a 100 the wait is fr_inv_timeout, not fr_timeout: {:?}",
        sent.elapsed()
    );
    // A late answer from the node is not relayed on top of our 408.
    node.send(reply(&got, 200, "OK", None), got.from).await;
    let late = h.trunk.recv_within(QUIET).await.map(|r| r.first_line());
    assert!(
        late.as_deref().is_none_or(|l| l.starts_with("SIP/2.0 200")),
        "only a 2xx to an INVITE may still pass: {late:?}"
    );
}

/// The trunk retransmits its BYE (its Timer E) while the node stays
/// silent: each copy goes on as a retransmission of our transaction, which
/// does not start again, so the 408 still comes `fr_timeout` after the
/// first send, not after the trunk's last copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retransmitted_request_does_not_restart_its_transaction() {
    let h = Harness::start(Options {
        fr_timeout: "800ms",
        ..Options::default()
    })
    .await;
    let Established { mut call, node, .. } = establish(&h).await;
    let (bye, _) = call.request("BYE", None);
    let cseq = call_cseq(&bye);
    let started = std::time::Instant::now();
    let mut answer = None;
    // Copies every 300 ms for up to 4 s: without the fix the deadline
    // moved with each one and the 408 came only after the last.
    while answer.is_none() && started.elapsed() < Duration::from_secs(4) {
        h.trunk.send(&bye, h.addr).await;
        answer = h
            .trunk
            .recv_within(Duration::from_millis(300))
            .await
            .filter(|r| r.status().is_some_and(|c| c >= 200) && r.cseq().0 == cseq);
    }
    let answer = answer.expect("a final answer while the trunk retransmits");
    assert_eq!(answer.status(), Some(408), "{}", answer.first_line());
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "408 at fr_timeout after the first copy: {:?}",
        started.elapsed()
    );
    // Every copy the node got is the same transaction.
    let first = h.nodes[node].recv_request("BYE").await;
    while let Some(copy) = h.nodes[node].recv_within(Duration::ZERO).await {
        assert_eq!(copy.branch(), first.branch());
    }
}

/// The CSeq number of a request we built.
fn call_cseq(req: &[u8]) -> u32 {
    sipedge::sip::Message::parse(req)
        .unwrap()
        .cseq()
        .unwrap()
        .number
}

// ---------------------------------------------------------------------------
// Server transactions match by branch and sent-by
// ---------------------------------------------------------------------------

/// `invite` with its top Via's branch replaced by `branch`.
fn with_branch(invite: &[u8], branch: &str) -> Vec<u8> {
    let text = String::from_utf8(invite.to_vec()).unwrap();
    let at = text.find("branch=").unwrap() + "branch=".len();
    let end = at + text[at..].find([';', '\r']).unwrap();
    format!("{}{}{}", &text[..at], branch, &text[end..]).into_bytes()
}

/// Two trunks that happen to pick the same branch value start two calls
/// (RFC 3261 §17.2.3: branch and sent-by); before, the second INVITE was
/// taken for a retransmission of the first and silently absorbed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_trunks_with_the_same_branch_are_two_transactions() {
    let h = Harness::start(Options::default()).await;
    let other = Peer::bind("trunk-2").await;
    let branch = "z9hG4bK-same-branch-1";
    let mut a = h.trunk_call();
    let mut b = Dialog::uac(&other, &format!("sip:+15550001111@{}", h.addr));
    let a_inv = with_branch(&a.invite(SDP_AUDIO), branch);
    let a_cseq = call_cseq(&a_inv);
    h.trunk.send(a_inv, h.addr).await;
    let first = h.nodes[0].recv_request("INVITE").await;
    assert_eq!(first.call_id(), a.call_id);
    let b_inv = with_branch(&b.invite(SDP_AUDIO), branch);
    other.send(&b_inv, h.addr).await;
    other.recv_response(100).await;
    let second = h.nodes[0].recv_request("INVITE").await;
    assert_eq!(second.call_id(), b.call_id);
    // Each gets its own answer, on its own way back.
    h.nodes[0]
        .send(reply(&second, 486, "Busy Here", Some("fs-b")), second.from)
        .await;
    assert_eq!(
        other
            .recv_until(|r| r.status().is_some_and(|c| c >= 200))
            .await
            .last()
            .unwrap()
            .status(),
        Some(486)
    );
    // Our hop-by-hop ACK for the 486, on the INVITE's branch.
    let ack = h.nodes[0].recv_request("ACK").await;
    assert_eq!(ack.branch(), second.branch());
    assert_eq!(ack.call_id(), b.call_id);
    h.nodes[0]
        .send(reply(&first, 200, "OK", Some("fs-a")), first.from)
        .await;
    assert_eq!(final_for(&h, a_cseq).await.status(), Some(200));
    // A real retransmission (same branch, same sent-by) is still absorbed:
    // it gets the 486 again, and no node sees it.
    other.send(&b_inv, h.addr).await;
    assert_eq!(other.recv_response(486).await.call_id(), b.call_id);
    h.nodes[0].expect_nothing(QUIET).await;
}

/// A trunk that reuses its INVITE's branch for the ACK of the 2xx (as
/// some RFC 2543-era stacks do) still reaches the node: after a 2xx the
/// INVITE's server transaction passes a matching ACK on (RFC 6026 §7.1);
/// only the ACK of a non-2xx ends there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_for_a_2xx_on_the_invites_branch_reaches_the_node() {
    let h = Harness::start(Options::default()).await;
    let mut call = h.trunk_call();
    h.trunk.send(call.invite(SDP_AUDIO), h.addr).await;
    let node = &h.nodes[0];
    let inv = node.recv_request("INVITE").await;
    let fs = Dialog::uas(node, &inv, &unique("fs-"));
    node.send(fs.answer(&inv, 200, "OK", Some(SDP_NODE)), inv.from)
        .await;
    let got = h.trunk.recv_until(|r| r.status() == Some(200)).await;
    call.learn_2xx(got.last().unwrap());
    let (ack, _) = call.request("ACK", None);
    h.trunk
        .send(with_branch(&ack, &call.invite_branch), h.addr)
        .await;
    let ack = node.recv_request("ACK").await;
    assert_eq!(ack.call_id(), call.call_id);
    assert_eq!(ack.cseq_method(), "ACK");
}

/// A node's call to a trunk address where nothing listens: the ICMP error
/// for that address (not a pool member) answers the node 503 at once, as
/// for a dead node; the trunk side has no dispatcher health to feed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nodes_call_to_an_unreachable_trunk_gets_503_at_once() {
    let h = Harness::start(Options::default()).await;
    let dead = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let node = &h.nodes[0];
    let mut out = Dialog::uac(node, &format!("sip:+15551239999@{dead_addr}"));
    let started = std::time::Instant::now();
    node.send(out.invite(SDP_AUDIO), h.addr).await;
    let got = node
        .recv_until(|r| r.status().is_some_and(|c| c >= 200))
        .await;
    let answer = got.last().unwrap();
    assert_eq!(answer.status(), Some(503), "{}", answer.first_line());
    assert_eq!(answer.call_id(), out.call_id);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "at the ICMP error, not at fr_timeout (5 s): {:?}",
        started.elapsed()
    );
    assert_eq!(
        h.proxy
            .metrics()
            .forward_failures(sipedge::metrics::ForwardFailure::Transport),
        1
    );
}

/// A node's 2xx for an INVITE the other proxy of a keepalived pair
/// forwarded (our Via on top: same VIP, a branch unknown here), repeated
/// because that proxy died before the trunk's ACK came: relayed to the
/// trunk, whose new ACK then reaches the node through us. The same 2xx
/// from outside the pool, a provisional, or a 2xx whose top Via is not ours
/// is dropped and counted (RFC 3261 §18.1.2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nodes_2xx_for_the_other_proxys_invite_reaches_the_trunk() {
    let h = Harness::start(Options::default()).await;
    let node = &h.nodes[0];
    let trunk_branch = unique("z9hG4bKtrunk-");
    let response = |code: &str, top_via_host: &str| {
        format!(
            "SIP/2.0 {code}\r\n\
             Via: SIP/2.0/UDP {top_via_host};branch=z9hG4bKother-proxy-1\r\n\
             Via: SIP/2.0/UDP {trunk};branch={trunk_branch};rport\r\n\
             Record-Route: <sip:{proxy};lr>\r\n\
             From: <sip:+15550001000@{trunk}>;tag=t1\r\n\
             To: <sip:fax@{proxy}>;tag=n1\r\n\
             Call-ID: orphan-2xx-1\r\n\
             CSeq: 1 INVITE\r\n\
             Contact: <sip:fs@{node}>\r\n\
             Content-Length: 0\r\n\r\n",
            trunk = h.trunk.addr,
            proxy = h.addr,
            node = node.addr,
        )
        .into_bytes()
    };
    let ok = response("200 OK", &h.addr.to_string());
    node.send(&ok, h.addr).await;
    let relayed = h.trunk.recv_response(200).await;
    assert_only_via(&relayed, &trunk_branch);
    assert_eq!(relayed.call_id(), "orphan-2xx-1");

    // The trunk's ACK follows the Record-Route to the node.
    let ack = format!(
        "ACK sip:fs@{node} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {trunk};branch={b};rport\r\n\
         Route: <sip:{proxy};lr>\r\n\
         From: <sip:+15550001000@{trunk}>;tag=t1\r\n\
         To: <sip:fax@{proxy}>;tag=n1\r\n\
         Call-ID: orphan-2xx-1\r\n\
         CSeq: 1 ACK\r\n\
         Max-Forwards: 70\r\n\
         Content-Length: 0\r\n\r\n",
        node = node.addr,
        trunk = h.trunk.addr,
        proxy = h.addr,
        b = unique("z9hG4bKack-"),
    );
    h.trunk.send(ack.as_bytes(), h.addr).await;
    let got = node.recv_request("ACK").await;
    assert_eq!(got.call_id(), "orphan-2xx-1");

    // Not relayed: from outside the pool, a provisional, another top Via.
    let before = h.dropped();
    h.trunk.send(&ok, h.addr).await;
    node.send(&response("180 Ringing", &h.addr.to_string()), h.addr)
        .await;
    node.send(&response("200 OK", "192.0.2.7:5060"), h.addr)
        .await;
    eventually("three stray responses counted", || {
        h.dropped() >= before + 3
    })
    .await;
    h.trunk.expect_nothing(Duration::from_millis(200)).await;
}
