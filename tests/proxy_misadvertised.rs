//! Misadvertised nodes over real UDP sockets on 127.0.0.1: a node's 2xx to
//! an INVITE whose Contact or SDP `c=` names an address no peer can use is
//! counted in `sipedge_node_misadvertised_total{uri,where}` (and logged),
//! and still relayed byte for byte: sipedge reports, it does not rewrite.
//!
//! The nodes are on loopback, so loopback is what they may advertise.
//! `algorithm = "priority"`: node 0 answers every call.

mod support;

use sipedge::metrics::{AdvertisedIn, NODE_MISADVERTISED_TOTAL};
use sipedge::sip::HeaderName;
use support::*;

/// An audio answer whose session-level `c=` line names `c`.
fn sdp_audio(c: &str) -> String {
    format!(
        "v=0\r\no=FreeSWITCH 1 1 IN IP4 127.0.0.1\r\ns=FreeSWITCH\r\nc=IN IP4 {c}\r\n\
         t=0 0\r\nm=audio 20000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
    )
}

/// A T.38 answer whose media-level `c=` line names `c` (the session-level
/// one is right: the media line is where the fax goes).
fn sdp_t38(c: &str) -> String {
    format!(
        "v=0\r\no=FreeSWITCH 1 2 IN IP4 127.0.0.1\r\ns=FreeSWITCH\r\nc=IN IP4 127.0.0.1\r\n\
         t=0 0\r\nm=image 20002 udptl t38\r\nc=IN IP4 {c}\r\na=T38FaxVersion:0\r\n\
         a=T38MaxBitRate:14400\r\na=T38FaxUdpEC:t38UDPRedundancy\r\n"
    )
}

/// Node `i`'s `uri` label: its configured URI.
fn node_uri(h: &Harness, i: usize) -> String {
    format!("sip:{}", h.nodes[i].addr)
}

/// Node `i`'s count for `place`, read from the proxy's metrics.
fn misadvertised(h: &Harness, i: usize, place: AdvertisedIn) -> u64 {
    h.proxy.metrics().misadvertised(&node_uri(h, i), place)
}

/// Both places of node 0: (contact, sdp).
fn counts(h: &Harness) -> (u64, u64) {
    (
        misadvertised(h, 0, AdvertisedIn::Contact),
        misadvertised(h, 0, AdvertisedIn::Sdp),
    )
}

/// A new call from the trunk that node 0 answers with whatever `answer`
/// builds from its side of the dialog and the INVITE it got. Returns the
/// trunk's and the node's dialogs and the 2xx as the trunk received it,
/// after the ACK reached the node.
async fn answered_call(
    h: &Harness,
    answer: impl FnOnce(&Dialog, &Received) -> Vec<u8>,
) -> (Dialog, Dialog, Received) {
    let mut call = h.trunk_call();
    h.trunk.send(call.invite(SDP_AUDIO), h.addr).await;
    h.trunk.recv_response(100).await;
    let node = &h.nodes[0];
    let inv = node.recv_request("INVITE").await;
    let fs = Dialog::uas(node, &inv, &unique("fs-"));
    node.send(answer(&fs, &inv), inv.from).await;
    let ok = h.trunk.recv_until(|r| r.status() == Some(200)).await;
    let ok = ok.last().expect("the 200").clone();
    call.learn_2xx(&ok);
    let (ack, _) = call.request("ACK", None);
    h.trunk.send(ack, h.addr).await;
    node.recv_request("ACK").await;
    (call, fs, ok)
}

/// The body of a 2xx the node sent with `sdp`, as the trunk must get it.
fn assert_relayed_as_is(ok: &Received, sdp: &str) {
    assert_eq!(ok.body(), sdp.as_bytes(), "the SDP is not rewritten");
    assert_eq!(
        ok.header(HeaderName::ContentLength).as_deref(),
        Some(sdp.len().to_string().as_str())
    );
}

/// (1) A wildcard in the SDP: counted as `sdp`, and the 2xx reaches the
/// trunk unchanged. A 183 with the same SDP is not a 2xx: not counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_in_the_sdp_is_counted_and_relayed_unchanged() {
    let h = Harness::start(Options::default()).await;
    let bad = sdp_audio("0.0.0.0");
    let mut call = h.trunk_call();
    h.trunk.send(call.invite(SDP_AUDIO), h.addr).await;
    let node = &h.nodes[0];
    let inv = node.recv_request("INVITE").await;
    let fs = Dialog::uas(node, &inv, &unique("fs-"));
    node.send(
        fs.answer(&inv, 183, "Session Progress", Some(&bad)),
        inv.from,
    )
    .await;
    let progress = h.trunk.recv_until(|r| r.status() == Some(183)).await;
    assert_relayed_as_is(progress.last().unwrap(), &bad);
    assert_eq!(counts(&h), (0, 0), "a 183 is not checked");

    let sent = fs.answer(&inv, 200, "OK", Some(&bad));
    node.send(&sent, inv.from).await;
    let ok = h.trunk.recv_response(200).await;
    assert_relayed_as_is(&ok, &bad);
    assert_only_via(&ok, &call.invite_branch);
    assert_eq!(ok.contact_uri(), Some(fs.local_contact.clone()));
    assert_eq!(counts(&h), (0, 1));
    // Once per 2xx, not once per c= line or per scrape.
    assert_eq!(counts(&h), (0, 1));
    assert_eq!(misadvertised(&h, 1, AdvertisedIn::Sdp), 0, "node 1's own");

    // The call goes on as usual.
    call.learn_2xx(&ok);
    let (ack, _) = call.request("ACK", None);
    h.trunk.send(ack, h.addr).await;
    node.recv_request("ACK").await;

    // In the exposition too, with the node's URI and the place.
    let text = h.proxy.metrics().encode();
    let series = format!(
        "{NODE_MISADVERTISED_TOTAL}{{uri=\"{}\",where=\"sdp\"}} 1",
        node_uri(&h, 0)
    );
    assert!(text.lines().any(|l| l == series), "no {series} in:\n{text}");
}

/// (2) A wildcard in the Contact: counted as `contact`; the Contact
/// reaches the trunk as the node wrote it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_in_the_contact_is_counted() {
    let h = Harness::start(Options::default()).await;
    let good = sdp_audio("127.0.0.1");
    let (_, _, ok) = answered_call(&h, |fs, inv| {
        reply_with(
            inv,
            200,
            "OK",
            Some(&fs.local_tag),
            &[("Contact", "<sip:fs@0.0.0.0:5080>".to_owned())],
            Some(("application/sdp", good.as_bytes())),
        )
    })
    .await;
    assert_eq!(ok.contact_uri().as_deref(), Some("sip:fs@0.0.0.0:5080"));
    assert_relayed_as_is(&ok, &good);
    assert_eq!(counts(&h), (1, 0));
}

/// (3) A node on loopback advertising loopback (its own address in the
/// Contact, 127.0.0.1 in the SDP) is right: nothing counted, and every
/// node's series are exported at 0 from the start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_correct_2xx_is_not_counted() {
    let h = Harness::start(Options::default()).await;
    let text = h.proxy.metrics().encode();
    for i in 0..h.nodes.len() {
        for place in ["contact", "sdp"] {
            let series = format!(
                "{NODE_MISADVERTISED_TOTAL}{{uri=\"{}\",where=\"{place}\"}} 0",
                node_uri(&h, i)
            );
            assert!(text.lines().any(|l| l == series), "no {series} in:\n{text}");
        }
    }
    let good = sdp_audio("127.0.0.1");
    let (mut call, fs, ok) =
        answered_call(&h, |fs, inv| fs.answer(inv, 200, "OK", Some(&good))).await;
    assert_relayed_as_is(&ok, &good);
    // A right T.38 re-INVITE answer too.
    let (reinvite, _) = call.request("INVITE", Some(("application/sdp", SDP_T38.as_bytes())));
    h.trunk.send(reinvite, h.addr).await;
    let node = &h.nodes[0];
    let reinv = node.recv_request("INVITE").await;
    let t38 = sdp_t38("127.0.0.1");
    node.send(fs.answer(&reinv, 200, "OK", Some(&t38)), reinv.from)
        .await;
    let ok = h.trunk.recv_until(|r| r.status() == Some(200)).await;
    assert_relayed_as_is(ok.last().unwrap(), &t38);
    assert_eq!(counts(&h), (0, 0));
}

/// (4) An address that is not the node's and not one of its aliases is
/// counted; the same address listed in the node's `advertised` is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_address_is_counted_unless_it_is_an_alias() {
    let public = sdp_audio("203.0.113.10");
    let answer = |fs: &Dialog, inv: &Received| {
        reply_with(
            inv,
            200,
            "OK",
            Some(&fs.local_tag),
            &[("Contact", "<sip:fs@203.0.113.10:5080>".to_owned())],
            Some(("application/sdp", public.as_bytes())),
        )
    };

    let h = Harness::start(Options::default()).await;
    let (_, _, ok) = answered_call(&h, answer).await;
    assert_relayed_as_is(&ok, &public);
    assert_eq!(counts(&h), (1, 1));
    drop(h);

    let h = Harness::start(Options {
        destination_extra: vec![r#"advertised = ["192.0.2.99", "203.0.113.10"]"#],
        ..Options::default()
    })
    .await;
    let (_, _, ok) = answered_call(&h, answer).await;
    assert_relayed_as_is(&ok, &public);
    assert_eq!(counts(&h), (0, 0));
    // An alias does not make every other address right.
    let other = sdp_audio("203.0.113.11");
    answered_call(&h, |fs, inv| fs.answer(inv, 200, "OK", Some(&other))).await;
    assert_eq!(counts(&h), (0, 1));
}

/// (5) The T.38 re-INVITE's 200, the one that matters for a fax: a
/// wildcard on its image line is counted, and relayed unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_t38_reinvite_answer_is_checked() {
    let h = Harness::start(Options::default()).await;
    let good = sdp_audio("127.0.0.1");
    let (mut call, fs, _) =
        answered_call(&h, |fs, inv| fs.answer(inv, 200, "OK", Some(&good))).await;
    assert_eq!(counts(&h), (0, 0));

    let (reinvite, branch) = call.request("INVITE", Some(("application/sdp", SDP_T38.as_bytes())));
    h.trunk.send(reinvite, h.addr).await;
    let node = &h.nodes[0];
    let reinv = node.recv_request("INVITE").await;
    let bad = sdp_t38("0.0.0.0");
    node.send(fs.answer(&reinv, 200, "OK", Some(&bad)), reinv.from)
        .await;
    let got = h.trunk.recv_until(|r| r.status() == Some(200)).await;
    let ok = got.last().unwrap();
    assert_eq!(ok.cseq(), (2, "INVITE".to_owned()));
    assert_only_via(ok, &branch);
    assert_relayed_as_is(ok, &bad);
    assert_eq!(counts(&h), (0, 1));

    // The ACK still reaches the node: the call is not touched.
    let (ack, _) = call.request("ACK", None);
    h.trunk.send(ack, h.addr).await;
    assert_eq!(node.recv_request("ACK").await.cseq(), (2, "ACK".to_owned()));
}
