//! `[security]` over real sockets: trusted networks (403 or a silent drop),
//! pool members always let in, in-dialog requests still matched to their
//! dialog, scanner User-Agents dropped, the per-source rate limit and its
//! block, and no open relay whichever the source.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use sipedge::metrics::{DropReason, RejectReason};
use support::*;

fn with_security(toml: &'static str) -> Options {
    Options {
        extra_toml: toml,
        // The nodes answer only after checking that nothing went elsewhere
        // (QUIET); a forwarded request waits `fr_timeout` for a first reply
        // before sipedge answers 408 itself.
        fr_timeout: "2s",
        ..Options::default()
    }
}

/// An OPTIONS to the proxy itself from `from`, with `user_agent`.
fn options_to_proxy(h: &Harness, from: SocketAddr, user_agent: Option<&str>) -> Vec<u8> {
    request_from(
        "OPTIONS",
        &format!("sip:{}", h.addr),
        from,
        None,
        user_agent,
    )
}

/// The trunk (127.0.0.1) is outside `trusted`: its INVITE gets 403 and
/// reaches no node; a pool member on the same host still starts calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_initial_requests_get_403_and_pool_members_pass() {
    let h = Harness::start(with_security(
        "[security]\ntrusted = [\"10.0.0.0/8\", \"2001:db8::/32\"]\n",
    ))
    .await;
    let mut call = h.trunk_call();
    h.trunk.send(call.invite(SDP_AUDIO), h.addr).await;
    let r = h.trunk.recv_response(403).await;
    assert_eq!(r.branch(), call.invite_branch);
    for n in &h.nodes {
        n.expect_nothing(QUIET).await;
    }
    assert_eq!(
        h.proxy.metrics().invites_rejected(RejectReason::Forbidden),
        1
    );

    // Node 0 calls out: pool members are always trusted.
    let node = &h.nodes[0];
    let mut out = Dialog::uac(node, &format!("sip:+15551239999@{}", h.trunk.addr));
    node.send(out.invite(SDP_AUDIO), h.addr).await;
    let inv = h.trunk.recv_request("INVITE").await;
    assert_eq!(inv.call_id(), out.call_id);
}

/// With `silent_drop`, an untrusted source hears nothing at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_drop_answers_nothing_and_counts() {
    let h = Harness::start(with_security(
        "[security]\ntrusted = [\"10.0.0.0/8\"]\nsilent_drop = true\n",
    ))
    .await;
    let mut call = h.trunk_call();
    h.trunk.send(call.invite(SDP_AUDIO), h.addr).await;
    h.trunk.expect_nothing(QUIET).await;
    h.nodes[0].expect_nothing(Duration::ZERO).await;
    assert_eq!(h.proxy.metrics().dropped_count(DropReason::Untrusted), 1);
}

/// A trusted trunk calls as usual, and a request in its dialog from an
/// address outside `trusted` (a trunk's second signalling address) still
/// reaches the node that has the call, and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_trunk_calls_and_in_dialog_requests_follow_their_dialog() {
    let h = Harness::start(with_security("[security]\ntrusted = [\"127.0.0.1/32\"]\n")).await;
    let Established { mut call, .. } = establish(&h).await;
    let node = &h.nodes[0];

    // The BYE comes from the trunk's other address, outside `trusted`.
    let Ok(other) = Peer::bind_at("trunk-b", "127.0.0.2:0".parse().unwrap()).await else {
        eprintln!("127.0.0.2 cannot be bound here; skipping the second-address part");
        return;
    };
    let (bye, _) = call.request("BYE", None);
    other.send(bye, h.addr).await;
    let got = node.recv_request("BYE").await;
    assert_eq!(got.call_id(), call.call_id);
    h.nodes[1].expect_nothing(QUIET).await;
    // The 200 goes back along the Via, to where the BYE came from.
    node.send(reply(&got, 200, "OK", None), got.from).await;
    other.recv_response(200).await;
}

/// A scanner's User-Agent is dropped silently (any case, a substring),
/// with the default list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scanner_user_agents_are_dropped_silently() {
    let h = Harness::start(Options::default()).await;
    for ua in ["friendly-scanner", "SIPVicious 0.3.4", "x sipcli/v1.8"] {
        let req = options_to_proxy(&h, h.trunk.addr, Some(ua));
        h.trunk.send(req, h.addr).await;
    }
    h.trunk.expect_nothing(QUIET).await;
    assert_eq!(h.proxy.metrics().dropped_count(DropReason::Scanner), 3);
    // Anyone else is answered.
    let req = options_to_proxy(&h, h.trunk.addr, Some("FreeSWITCH"));
    h.trunk.send(req, h.addr).await;
    h.trunk.recv_response(200).await;
}

/// Over the rate limit a source is blocked for `block_for`: its requests
/// are dropped (counted), then it is served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_blocks_a_flooding_source_then_forgives_it() {
    let h = Harness::start(with_security(
        "[security]\nrate_limit = { requests = 3, per = \"10s\", block_for = \"800ms\" }\n",
    ))
    .await;
    for _ in 0..3 {
        let req = options_to_proxy(&h, h.trunk.addr, None);
        h.trunk.send(req, h.addr).await;
        h.trunk.recv_response(200).await;
    }
    for _ in 0..4 {
        let req = options_to_proxy(&h, h.trunk.addr, None);
        h.trunk.send(req, h.addr).await;
    }
    let dropped = || h.proxy.metrics().dropped_count(DropReason::RateLimited);
    eventually("4 requests rate-limited", || dropped() >= 4).await;
    // The block began at the first of them, before now.
    let blocked_by = tokio::time::Instant::now();
    h.trunk.expect_nothing(QUIET).await;
    assert_eq!(dropped(), 4);
    // Pool members are never limited.
    let node = &h.nodes[0];
    for _ in 0..5 {
        node.send(options_to_proxy(&h, node.addr, None), h.addr)
            .await;
        node.recv_response(200).await;
    }
    // After the block, served again: the clock must pass block_for (800
    // ms) from its start, which `blocked_by` bounds from above.
    tokio::time::sleep_until(blocked_by + Duration::from_millis(800)).await;
    h.trunk
        .send(options_to_proxy(&h, h.trunk.addr, None), h.addr)
        .await;
    h.trunk.recv_response(200).await;
}

/// No open relay with `[security]` either: a trusted source's requests
/// for a foreign Request-URI with a Route to a victim go to the pool, an
/// untrusted source's get 403; the victim hears nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_open_relay_from_trusted_or_untrusted_sources() {
    let h = Harness::start(with_security("[security]\ntrusted = [\"127.0.0.1/32\"]\n")).await;
    let victim = Peer::bind("victim").await;
    let route = [("Route", format!("<sip:{};lr>", victim.addr))];
    let mut call = Dialog::uac(&h.trunk, "sip:bob@192.0.2.99");
    h.trunk
        .send(call.invite_with(SDP_AUDIO, &route), h.addr)
        .await;
    let inv = h.nodes[0].recv_request("INVITE").await;
    assert_eq!(inv.request_uri(), "sip:bob@192.0.2.99");

    if let Ok(outsider) = Peer::bind_at("outsider", "127.0.0.2:0".parse().unwrap()).await {
        let mut call = Dialog::uac(&outsider, "sip:bob@192.0.2.99");
        outsider
            .send(call.invite_with(SDP_AUDIO, &route), h.addr)
            .await;
        outsider.recv_response(403).await;
    }
    victim.expect_nothing(QUIET).await;
}

/// At `[limits] transactions` a new call gets 503 with Retry-After, while
/// the requests of a call already up still reach their node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_transaction_cap_new_calls_are_shed_established_ones_go_on() {
    let h = Harness::start(with_security("[limits]\ntransactions = 100\n")).await;
    // A call up before the flood.
    let Established { mut call, .. } = establish(&h).await;
    let node = &h.nodes[0];

    // Out-of-dialog requests for a user fill the table (each is a
    // transaction that lingers 32 s).
    for sent in 0..110 {
        let ruri = format!("sip:user{sent}@{}", h.addr);
        let req = request_from("OPTIONS", &ruri, h.trunk.addr, None, None);
        h.trunk.send(req, h.addr).await;
    }
    // The proxy has read enough of them to be at the cap.
    eventually("the transaction table at its cap", || {
        h.proxy.transaction_counts().0 >= 100
    })
    .await;

    let mut late = Dialog::uac(&h.trunk, &format!("sip:fax@{}", h.addr));
    h.trunk.send(late.invite(SDP_AUDIO), h.addr).await;
    let shed = h
        .trunk
        .recv_until(|r| r.status().is_some_and(|c| c >= 300) && r.call_id() == late.call_id)
        .await;
    let shed = shed.last().unwrap();
    assert_eq!(shed.status(), Some(503), "{}", shed.text());
    assert_eq!(shed.header_named("Retry-After").as_deref(), Some("5"));
    assert!(
        h.proxy.metrics().invites_rejected(RejectReason::Overload) >= 1,
        "counted"
    );

    // The call that was up before still gets its BYE through.
    let (bye, _) = call.request("BYE", None);
    h.trunk.send(bye, h.addr).await;
    let got = node
        .recv_until(|r| r.method().as_deref() == Some("BYE"))
        .await;
    assert_eq!(got.last().unwrap().call_id(), call.call_id);
}

/// From outside `trusted`, an in-dialog request for a call nobody knows is
/// not routed by its Request-URI, even one naming a node: 481, and the
/// node hears nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_in_dialog_request_is_not_routed_by_its_request_uri() {
    let h = Harness::start(with_security("[security]\ntrusted = [\"10.0.0.0/8\"]\n")).await;
    let node = &h.nodes[0];
    let ruri = format!("sip:fs@{}", node.addr);
    let bye = request_from("BYE", &ruri, h.trunk.addr, Some("b2"), None);
    h.trunk.send(bye, h.addr).await;
    h.trunk.recv_response(481).await;
    node.expect_nothing(QUIET).await;
}
