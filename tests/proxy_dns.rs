//! Host names in the requests the nodes send out, resolved as Kamailio
//! does by default (RFC 3263 without NAPTR): a URI with an explicit port →
//! A/AAAA of its host; else SRV `_sip._udp.<host>` (`_sip._tcp` with
//! `;transport=tcp`), lowest priority first, then A/AAAA of the target at
//! the SRV port; no SRV → A/AAAA of the host, port 5060. Answers are
//! cached for their TTL; a name that does not resolve gets the node
//! `478 Unresolvable destination` (Kamailio tm's answer).
//!
//! The proxy is pointed at a fake DNS server (`[dns] servers`), a plain
//! UDP socket on 127.0.0.1 serving a small table of records (TTL 60 s) and
//! logging what it is asked. The trunk fake plays the carrier: every name
//! resolves to 127.0.0.1 and the trunk's port.

mod support;

#[path = "support/dns.rs"]
mod dns_server;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use dns_server::{FakeDns, Zone};
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{RData, RecordType};
use sipedge::sip::HeaderName;
use support::*;

const LOOPBACK: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// A fake DNS server (empty table: the test fills it in with
/// [`FakeDns::set_zone`] once the trunk's port is known) and the proxy
/// using it.
async fn start() -> (FakeDns, Harness) {
    let dns = FakeDns::start(Zone::new()).await;
    let h = Harness::start(Options {
        extra_toml: dns.toml(),
        // The fake trunk answers only after checking that nothing went
        // elsewhere (QUIET); a forwarded request waits `fr_timeout` for a
        // first reply before sipedge answers 408 itself.
        fr_timeout: "2s",
        ..Options::default()
    })
    .await;
    (dns, h)
}

/// The node's INVITE as relayed to the trunk, checked as for an IP
/// literal: from the proxy's socket, Request-URI untouched, our Via above
/// the node's, one Record-Route with the node hint (opaque).
fn assert_relayed_invite(h: &Harness, inv: &Received, out: &Dialog, node: SocketAddr) {
    assert_eq!(inv.from, h.addr, "sent from the proxy's socket");
    assert_eq!(inv.call_id(), out.call_id);
    assert_eq!(
        inv.request_uri(),
        out.invite_uri,
        "Request-URI untouched:\n{}",
        inv.text()
    );
    assert_our_via(inv, h.addr);
    assert_eq!(inv.vias().len(), 2, "{}", inv.text());
    assert_eq!(inv.max_forwards(), Some(69));
    let rr = inv.values(HeaderName::RecordRoute);
    assert_eq!(rr.len(), 1, "{}", inv.text());
    assert!(rr[0].contains(";lr"), "{}", rr[0]);
    assert_opaque_hint(&rr[0], node);
    assert_eq!(inv.body(), SDP_AUDIO.as_bytes());
}

/// Node 0 starts a call to `ruri`; returns its dialog and the INVITE as
/// the trunk receives it (skipping anything else, e.g. a retransmission
/// of an earlier call's INVITE). When none comes, the panic says what node
/// 0 got instead and what the DNS was asked.
async fn call_out(h: &Harness, dns: &FakeDns, ruri: &str) -> (Dialog, Received) {
    let node = &h.nodes[0];
    let mut out = Dialog::uac(node, ruri);
    node.send(out.invite(SDP_AUDIO), h.addr).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match h.trunk.recv_within(left).await {
            Some(r) if r.method().as_deref() == Some("INVITE") && r.call_id() == out.call_id => {
                return (out, r);
            }
            Some(_) => continue,
            None => {
                let mut at_node = Vec::new();
                while let Some(r) = node.recv_within(Duration::ZERO).await {
                    at_node.push(r.first_line());
                }
                panic!(
                    "the trunk got no INVITE for {ruri} within {WAIT:?}; node 0 got {at_node:?}; \
                     the DNS was asked {:?}",
                    dns.queries()
                );
            }
        }
    }
}

/// The trunk turns the call down (486); node 0 gets the 486 and ACKs it.
async fn decline(h: &Harness, out: &Dialog, inv: &Received) {
    h.trunk
        .send(reply(inv, 486, "Busy Here", Some(&unique("busy-"))), h.addr)
        .await;
    let node = &h.nodes[0];
    let got = node
        .recv_until(|r| r.status().is_some_and(|c| c >= 200))
        .await;
    let busy = got.last().unwrap();
    assert_eq!(busy.status(), Some(486));
    assert_eq!(busy.call_id(), out.call_id);
    node.send(out.ack_non2xx(busy), h.addr).await;
}

// ---------------------------------------------------------------------------
// The fake DNS server itself
// ---------------------------------------------------------------------------

/// The fake answers as an authoritative server: the records asked for,
/// NODATA for a known name without that type, NXDOMAIN for an unknown
/// name; names in any case; every query logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_dns_server_answers_from_its_table_and_counts_queries() {
    let dns = FakeDns::start(
        Zone::new()
            .srv("_sip._udp.carrier.test", 10, 0, 5080, "trunk.carrier.test")
            .srv(
                "_sip._udp.carrier.test.",
                20,
                5,
                5090,
                "backup.carrier.test.",
            )
            .a("trunk.carrier.test", LOOPBACK),
    )
    .await;
    let wait = WAIT;

    let srv = dns_server::ask(dns.addr, "_sip._udp.carrier.test", RecordType::SRV, wait).await;
    assert_eq!(srv.response_code(), ResponseCode::NoError);
    assert_eq!(srv.queries().len(), 1, "the question is echoed");
    let got: Vec<(u16, u16, u16, String)> = srv
        .answers()
        .iter()
        .map(|r| match r.data() {
            RData::SRV(s) => (s.priority(), s.weight(), s.port(), s.target().to_ascii()),
            other => panic!("not an SRV: {other:?}"),
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (10, 0, 5080, "trunk.carrier.test.".to_owned()),
            (20, 5, 5090, "backup.carrier.test.".to_owned()),
        ]
    );
    assert!(srv.answers().iter().all(|r| r.ttl() == dns_server::TTL));
    assert!(srv.additionals().is_empty(), "no glue: the resolver asks");

    let a = dns_server::ask(dns.addr, "TRUNK.Carrier.test", RecordType::A, wait).await;
    assert_eq!(a.response_code(), ResponseCode::NoError);
    let ips: Vec<Ipv4Addr> = a
        .answers()
        .iter()
        .map(|r| match r.data() {
            RData::A(ip) => ip.0,
            other => panic!("not an A: {other:?}"),
        })
        .collect();
    assert_eq!(ips, vec![LOOPBACK]);

    let aaaa = dns_server::ask(dns.addr, "trunk.carrier.test", RecordType::AAAA, wait).await;
    assert_eq!(aaaa.response_code(), ResponseCode::NoError, "NODATA");
    assert!(aaaa.answers().is_empty());
    assert_eq!(aaaa.name_servers().len(), 1, "a SOA for negative caching");

    let nx = dns_server::ask(dns.addr, "_sip._udp.nowhere.test", RecordType::SRV, wait).await;
    assert_eq!(nx.response_code(), ResponseCode::NXDomain);
    assert!(nx.answers().is_empty());

    // A table set later replaces the first one.
    dns.set_zone(Zone::new().a("later.test", LOOPBACK));
    let later = dns_server::ask(dns.addr, "later.test", RecordType::A, wait).await;
    assert_eq!(later.answers().len(), 1);
    let gone = dns_server::ask(dns.addr, "trunk.carrier.test", RecordType::A, wait).await;
    assert_eq!(gone.response_code(), ResponseCode::NXDomain);

    assert_eq!(dns.count("_sip._udp.carrier.test", RecordType::SRV), 1);
    assert_eq!(dns.count("trunk.carrier.test.", RecordType::A), 2);
    assert_eq!(dns.count("trunk.carrier.test", RecordType::AAAA), 1);
    assert_eq!(dns.count_type(RecordType::SRV), 2);
    assert_eq!(
        dns.queries(),
        vec![
            ("_sip._udp.carrier.test".to_owned(), RecordType::SRV),
            ("trunk.carrier.test".to_owned(), RecordType::A),
            ("trunk.carrier.test".to_owned(), RecordType::AAAA),
            ("_sip._udp.nowhere.test".to_owned(), RecordType::SRV),
            ("later.test".to_owned(), RecordType::A),
            ("trunk.carrier.test".to_owned(), RecordType::A),
        ]
    );
}

// ---------------------------------------------------------------------------
// 1. SRV
// ---------------------------------------------------------------------------

/// `sip:+15551239999@carrier.test` (no port): SRV `_sip._udp.carrier.test`
/// → `trunk.carrier.test` at the trunk's port → A 127.0.0.1. The call goes
/// there with its Request-URI untouched, the 200 comes back to the node,
/// and the trunk's BYE follows our Record-Route back to node 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_call_to_a_host_name_goes_to_its_srv_target() {
    let (dns, h) = start().await;
    dns.set_zone(
        Zone::new()
            .srv(
                "_sip._udp.carrier.test",
                10,
                0,
                h.trunk.addr.port(),
                "trunk.carrier.test",
            )
            .a("trunk.carrier.test", LOOPBACK),
    );
    let node = &h.nodes[0];
    let (mut out, inv) = call_out(&h, &dns, "sip:+15551239999@carrier.test").await;
    assert_relayed_invite(&h, &inv, &out, node.addr);
    assert!(
        dns.count("_sip._udp.carrier.test", RecordType::SRV) >= 1,
        "SRV asked: {:?}",
        dns.queries()
    );
    assert!(
        dns.count("trunk.carrier.test", RecordType::A) >= 1,
        "the SRV target's A asked: {:?}",
        dns.queries()
    );

    let mut trunk_side = Dialog::uas(&h.trunk, &inv, &unique("trunk-"));
    h.trunk
        .send(trunk_side.answer(&inv, 200, "OK", Some(SDP_AUDIO)), h.addr)
        .await;
    let got = node.recv_until(|r| r.status() == Some(200)).await;
    let ok = got.last().unwrap();
    assert_eq!(ok.call_id(), out.call_id);
    assert_eq!(ok.vias().len(), 1, "our Via removed");
    out.learn_2xx(ok);
    let (ack, _) = out.request("ACK", None);
    node.send(ack, h.addr).await;
    assert_eq!(h.trunk.recv_request("ACK").await.call_id(), out.call_id);

    let (bye, _) = trunk_side.request("BYE", None);
    h.trunk.send(bye, h.addr).await;
    let bye = node.recv_request("BYE").await;
    assert_eq!(bye.call_id(), out.call_id);
    assert_our_via(&bye, h.addr);
    node.send(reply(&bye, 200, "OK", None), h.addr).await;
    let ok = h.trunk.recv_response(200).await;
    assert_eq!(ok.cseq_method(), "BYE");
    h.nodes[1].expect_nothing(Duration::ZERO).await;
}

// ---------------------------------------------------------------------------
// 2. Explicit port: A only
// ---------------------------------------------------------------------------

/// `sip:+1555@direct.carrier.test:PORT`: a port in the URI means no SRV
/// (RFC 3263 §4.2): A of the host, that port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_name_with_a_port_is_resolved_by_a_only() {
    let (dns, h) = start().await;
    dns.set_zone(Zone::new().a("direct.carrier.test", LOOPBACK));
    let ruri = format!("sip:+1555@direct.carrier.test:{}", h.trunk.addr.port());
    let (out, inv) = call_out(&h, &dns, &ruri).await;
    assert_relayed_invite(&h, &inv, &out, h.nodes[0].addr);
    assert!(
        dns.count("direct.carrier.test", RecordType::A) >= 1,
        "A asked: {:?}",
        dns.queries()
    );
    assert_eq!(
        dns.count_type(RecordType::SRV),
        0,
        "no SRV with an explicit port: {:?}",
        dns.queries()
    );
    decline(&h, &out, &inv).await;
}

// ---------------------------------------------------------------------------
// 3. SRV priority
// ---------------------------------------------------------------------------

/// Two SRV records: the lower priority value (the trunk) is tried first,
/// whatever the order of the answer; the backup gets nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lowest_srv_priority_value_is_tried_first() {
    let backup = Peer::bind("backup").await;
    let (dns, h) = start().await;
    dns.set_zone(
        Zone::new()
            // The backup first in the answer: the order must come from the
            // priorities.
            .srv(
                "_sip._udp.prio.test",
                20,
                100,
                backup.addr.port(),
                "backup.prio.test",
            )
            .srv(
                "_sip._udp.prio.test",
                10,
                0,
                h.trunk.addr.port(),
                "main.prio.test",
            )
            .a("backup.prio.test", LOOPBACK)
            .a("main.prio.test", LOOPBACK),
    );
    let (out, inv) = call_out(&h, &dns, "sip:+15551239999@prio.test").await;
    assert_relayed_invite(&h, &inv, &out, h.nodes[0].addr);
    backup.expect_nothing(QUIET).await;
    decline(&h, &out, &inv).await;
    backup.expect_nothing(Duration::ZERO).await;
}

// ---------------------------------------------------------------------------
// 4. Unresolvable
// ---------------------------------------------------------------------------

/// Nothing under `nowhere.test` (NXDOMAIN for the SRV and the A/AAAA
/// names): the node's INVITE gets `478 Unresolvable destination`, and
/// nothing goes anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unresolvable_host_name_gets_478() {
    let (dns, h) = start().await;
    dns.set_zone(Zone::new().a("elsewhere.test", LOOPBACK));
    let node = &h.nodes[0];
    let mut out = Dialog::uac(node, "sip:+15551239999@nowhere.test");
    node.send(out.invite(SDP_AUDIO), h.addr).await;
    let got = node
        .recv_until(|r| r.status().is_some_and(|c| c >= 200))
        .await;
    let fin = got.last().unwrap();
    assert_eq!(fin.status(), Some(478), "{}", fin.text());
    assert_eq!(fin.reason(), "Unresolvable destination");
    assert_eq!(fin.call_id(), out.call_id);
    assert_eq!(fin.branch(), out.invite_branch);
    assert!(
        dns.queries()
            .iter()
            .any(|(n, _)| n == "nowhere.test" || n.ends_with(".nowhere.test")),
        "the name was looked up: {:?}",
        dns.queries()
    );
    node.send(out.ack_non2xx(fin), h.addr).await;
    h.trunk.expect_nothing(QUIET).await;
    h.nodes[1].expect_nothing(Duration::ZERO).await;
}

// ---------------------------------------------------------------------------
// 5. Cache
// ---------------------------------------------------------------------------

/// Two calls to `carrier.test` within the TTL: the second asks nothing;
/// one SRV query and one A query in all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolution_is_cached_within_the_ttl() {
    let (dns, h) = start().await;
    dns.set_zone(
        Zone::new()
            .srv(
                "_sip._udp.carrier.test",
                10,
                0,
                h.trunk.addr.port(),
                "trunk.carrier.test",
            )
            .a("trunk.carrier.test", LOOPBACK),
    );
    let ruri = "sip:+15551239999@carrier.test";
    let (out, inv) = call_out(&h, &dns, ruri).await;
    assert_relayed_invite(&h, &inv, &out, h.nodes[0].addr);
    decline(&h, &out, &inv).await;
    let after_first = dns.queries();
    assert_eq!(
        dns.count("_sip._udp.carrier.test", RecordType::SRV),
        1,
        "{after_first:?}"
    );
    assert_eq!(
        dns.count("trunk.carrier.test", RecordType::A),
        1,
        "{after_first:?}"
    );

    let (out2, inv2) = call_out(&h, &dns, ruri).await;
    assert_relayed_invite(&h, &inv2, &out2, h.nodes[0].addr);
    decline(&h, &out2, &inv2).await;
    assert_eq!(
        dns.queries(),
        after_first,
        "the second call asked the DNS again"
    );
}

// ---------------------------------------------------------------------------
// 6. In-dialog requests from a node
// ---------------------------------------------------------------------------

/// The trunk answers with a host-named Contact
/// (`sip:trunk@trunkhost.test:PORT`): the node's ACK and BYE, whose
/// Request-URI is that Contact once our Route is consumed, reach the trunk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_dialog_request_to_a_host_named_contact_is_resolved() {
    let (dns, h) = start().await;
    dns.set_zone(Zone::new().a("trunkhost.test", LOOPBACK));
    let node = &h.nodes[0];
    // The call itself goes to an IP literal: only the in-dialog requests
    // need the DNS.
    let ruri = format!("sip:+15551239999@{}", h.trunk.addr);
    let (mut out, inv) = call_out(&h, &dns, &ruri).await;
    assert_relayed_invite(&h, &inv, &out, node.addr);

    let contact = format!("sip:trunk@trunkhost.test:{}", h.trunk.addr.port());
    let mut trunk_side = Dialog::uas(&h.trunk, &inv, &unique("trunk-"));
    trunk_side.local_contact = contact.clone();
    h.trunk
        .send(trunk_side.answer(&inv, 200, "OK", Some(SDP_AUDIO)), h.addr)
        .await;
    let got = node.recv_until(|r| r.status() == Some(200)).await;
    let ok = got.last().unwrap();
    assert_eq!(ok.contact_uri().as_deref(), Some(contact.as_str()));
    out.learn_2xx(ok);
    assert_eq!(out.remote_target, contact);
    assert_eq!(out.route.len(), 1, "our Record-Route: {:?}", out.route);

    let (ack, _) = out.request("ACK", None);
    node.send(ack, h.addr).await;
    let ack = h.trunk.recv_request("ACK").await;
    assert_eq!(ack.call_id(), out.call_id);
    assert_eq!(ack.request_uri(), contact);

    let (bye, _) = out.request("BYE", None);
    node.send(bye, h.addr).await;
    let bye = h.trunk.recv_request("BYE").await;
    assert_eq!(bye.from, h.addr, "sent from the proxy's socket");
    assert_eq!(bye.call_id(), out.call_id);
    assert_eq!(bye.request_uri(), contact, "Request-URI untouched");
    assert_our_via(&bye, h.addr);
    assert_eq!(bye.vias().len(), 2, "{}", bye.text());
    assert!(
        bye.values(HeaderName::Route).is_empty(),
        "our Route consumed:\n{}",
        bye.text()
    );
    h.trunk.send(reply(&bye, 200, "OK", None), h.addr).await;
    let got = node.recv_until(|r| r.status() == Some(200)).await;
    assert_eq!(got.last().unwrap().cseq_method(), "BYE");

    assert!(
        dns.count("trunkhost.test", RecordType::A) >= 1,
        "A asked: {:?}",
        dns.queries()
    );
    assert_eq!(
        dns.count_type(RecordType::SRV),
        0,
        "no SRV with an explicit port: {:?}",
        dns.queries()
    );
}
