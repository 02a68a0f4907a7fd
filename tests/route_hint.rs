//! The Record-Route hint over real sockets: it names no address (nor does
//! any header sipedge sends the trunk), and, sealed with `[cluster]
//! secret`, a dialog set up through one instance is routed by another that
//! never saw it (two proxies behind one VIP, or one after a restart); a
//! forged, cut or replayed hint, or a node's address in its place, is
//! refused with 481 and counted; another secret refuses; without a secret
//! the hint is still opaque and still routes, and the start-up summary
//! says what it is worth; and a Request-URI naming the node that took the
//! call over beats a stale hint.
//!
//! The second instance ("standby") advertises the first one's address, as
//! two proxies behind one keepalived VIP do, from a socket of its own; the
//! trunk sends it what it would send to the VIP after a failover.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;

use sipedge::metrics::{RejectReason, INVITES_REJECTED_TOTAL};
use sipedge::proxy::Proxy;
use sipedge::sip::HeaderName;
use support::*;
use tokio_util::sync::CancellationToken;

const SECRET: &str = "[cluster]\nsecret = \"a secret both proxies share, 41 bytes..\"\n";
const OTHER_SECRET: &str = "[cluster]\nsecret = \"another cluster's secret, not ours\"\n";

/// Where node 0's FreeSWITCH says it is in its Contact: an address that is
/// neither a pool member nor advertised (a node behind NAT), so only the
/// hint can route the trunk's requests on an instance without the pin.
const NODE_CONTACT: &str = "sip:fs@192.0.2.10:5080";

/// A second instance in front of the same pool, advertising `a`'s address
/// (the VIP), on a socket of its own. It never saw `a`'s calls.
struct Standby {
    proxy: Arc<Proxy>,
    addr: SocketAddr,
    cancel: CancellationToken,
}

impl Drop for Standby {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

fn standby(a: &Harness, extra_toml: &'static str) -> Standby {
    standby_with(a, &with(extra_toml))
}

/// [`standby`] configured with `opts` (the pool's `advertised`...).
fn standby_with(a: &Harness, opts: &Options) -> Standby {
    let nodes: Vec<SocketAddr> = a.nodes.iter().map(|n| n.addr).collect();
    // `udp` and `advertise` name `a`; the socket handed over is our own.
    let text = config_toml(a.addr, &nodes, opts);
    let cfg = sipedge::config::from_toml(&text, "standby")
        .unwrap_or_else(|e| panic!("standby config refused: {e}\n{text}"));
    let socket = sipedge::transport::bind_udp(
        "127.0.0.1:0".parse().unwrap(),
        sipedge::transport::UdpOptions::default(),
    )
    .expect("bind the standby's socket");
    let addr = socket.local_addr().unwrap();
    let proxy = Proxy::new(cfg, vec![socket]).expect("build the standby");
    // Its probes would only be noise at the fake nodes.
    proxy.ping_active(Some(false));
    let cancel = CancellationToken::new();
    tokio::spawn(proxy.clone().run(cancel.clone()));
    Standby {
        proxy,
        addr,
        cancel,
    }
}

fn with(extra_toml: &'static str) -> Options {
    Options {
        extra_toml,
        ..Options::default()
    }
}

/// INVITE (100, 200) and ACK through `h`: node 0 answers with `contact`
/// as its Contact.
async fn call_via(h: &Harness, contact: &str) -> (Dialog, Dialog) {
    let mut call = h.trunk_call();
    h.trunk.send(call.invite(SDP_AUDIO), h.addr).await;
    h.trunk.recv_response(100).await;
    let node = &h.nodes[0];
    let inv = node.recv_request("INVITE").await;
    let mut fs = Dialog::uas(node, &inv, &unique("fs-"));
    fs.local_contact = contact.to_owned();
    node.send(fs.answer(&inv, 200, "OK", Some(SDP_NODE)), inv.from)
        .await;
    let ok = h.trunk.recv_response(200).await;
    call.learn_2xx(&ok);
    let (ack, _) = call.request("ACK", None);
    h.trunk.send(ack, h.addr).await;
    node.recv_request("ACK").await;
    (call, fs)
}

/// The `node=` value of our Route.
fn hint_of(route: &str) -> &str {
    let at = route.find(";node=").expect("a hint") + 6;
    let end = route[at..].find([';', '>']).map_or(route.len(), |e| at + e);
    &route[at..end]
}

/// `route` with its `;node=` parameter replaced by `param` (with its
/// `;`; empty: removed).
fn with_hint(route: &str, param: &str) -> String {
    route.replacen(&format!(";node={}", hint_of(route)), param, 1)
}

fn rejected_bad_hint(p: &Proxy) -> u64 {
    p.metrics().invites_rejected(RejectReason::BadRouteHint)
}

/// `sipedge_invites_rejected_total{reason="bad_route_hint"}` as scraped.
fn scraped_bad_hint(p: &Proxy) -> String {
    let text = p.metrics().encode();
    let series = format!("{INVITES_REJECTED_TOTAL}{{reason=\"bad_route_hint\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
        .to_owned()
}

/// A call set up through A is routed by B, which never saw it, by its
/// sealed hint: re-INVITE, its ACK and BYE reach node 0 through B, and
/// responses come back; the hint names no address, and the node's Contact
/// is nothing B could route by.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dialog_set_up_through_one_instance_is_routed_by_another_with_the_same_secret() {
    let a = Harness::start(with(SECRET)).await;
    let b = standby(&a, SECRET);
    let (mut call, fs) = call_via(&a, NODE_CONTACT).await;
    let route = call.route[0].clone();
    assert!(
        route.starts_with(&format!("<sip:{};lr;node=", a.addr)),
        "{route}"
    );
    let hint = assert_opaque_hint(&route, a.nodes[0].addr);
    assert_eq!(
        hint.len(),
        44,
        "128-bit SIV tag and a sealed IPv4 address: {route}"
    );
    assert_eq!(b.proxy.dialogs().get(call.call_id.as_bytes()), None);

    let node = &a.nodes[0];
    let (reinvite, branch) = call.request("INVITE", Some(("application/sdp", SDP_T38.as_bytes())));
    a.trunk.send(reinvite, b.addr).await;
    let reinv = node.recv_request("INVITE").await;
    assert_eq!(reinv.request_uri(), NODE_CONTACT);
    assert!(
        reinv.values(HeaderName::Route).is_empty(),
        "our Route popped"
    );
    assert_eq!(reinv.from, b.addr, "sent by B");
    node.send(fs.answer(&reinv, 200, "OK", Some(SDP_T38)), reinv.from)
        .await;
    let got = a.trunk.recv_until(|r| r.status() == Some(200)).await;
    assert_only_via(got.last().unwrap(), &branch);
    let (ack, _) = call.request("ACK", None);
    a.trunk.send(ack, b.addr).await;
    assert_eq!(node.recv_request("ACK").await.cseq(), (2, "ACK".to_owned()));

    let (bye, branch) = call.request("BYE", None);
    a.trunk.send(bye, b.addr).await;
    let bye = node.recv_request("BYE").await;
    node.send(fs.answer(&bye, 200, "OK", None), bye.from).await;
    assert_only_via(&a.trunk.recv_response(200).await, &branch);
    assert_eq!(rejected_bad_hint(&b.proxy), 0);
    a.nodes[1].expect_nothing(QUIET).await;
}

/// On an instance without the pin, a hint without a value, forged, cut, a
/// node's address (the old, readable form), or made for another Call-ID is
/// refused: 481 to a re-INVITE (counted in `bad_route_hint`, as scraped)
/// and to a BYE, an ACK dropped; no node hears any of it. So is our Route
/// without a hint, or a bare Request-URI naming a node without our Route
/// (481, not a hint problem): with a secret, nothing unauthenticated
/// steers a dialog.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_cut_and_replayed_hints_get_481_and_are_counted() {
    let a = Harness::start(with(SECRET)).await;
    let b = standby(&a, SECRET);
    let (call, _) = call_via(&a, NODE_CONTACT).await;
    let (other, _) = call_via(&a, NODE_CONTACT).await;
    let good = call.route[0].clone();
    let hint = hint_of(&good).to_owned();
    // One bit off in the tag, one in the sealed address.
    let flip = |i: usize| {
        let mut h = hint.clone().into_bytes();
        h[i] = if h[i] == b'0' { b'1' } else { b'0' };
        with_hint(&good, &format!(";node={}", String::from_utf8(h).unwrap()))
    };
    let bad_routes = [
        ("no value", with_hint(&good, ";node")),
        ("forged tag", flip(0)),
        ("forged address", flip(hint.len() - 1)),
        (
            "cut",
            with_hint(&good, &format!(";node={}", &hint[..hint.len() - 2])),
        ),
        (
            "an address",
            with_hint(&good, &format!(";node={}", a.nodes[1].addr)),
        ),
        // The other call's genuine hint, replayed into this one.
        ("another Call-ID", other.route[0].clone()),
    ];
    let mut counted = 0;
    for (what, route) in &bad_routes {
        for method in ["INVITE", "BYE", "ACK"] {
            let mut forged = call.clone();
            forged.route = vec![route.clone()];
            let (req, branch) = forged.request(method, None);
            a.trunk.send(req, b.addr).await;
            if method == "ACK" {
                continue;
            }
            let r = a
                .trunk
                .recv_until(|r| r.status().is_some_and(|c| c >= 200))
                .await;
            let r = r.last().unwrap();
            assert_eq!(r.status(), Some(481), "{what} {method}: {}", r.text());
            assert_eq!(r.branch(), branch);
            if method == "INVITE" {
                counted += 1;
            }
        }
        assert_eq!(rejected_bad_hint(&b.proxy), counted, "{what}");
    }
    assert_eq!(scraped_bad_hint(&b.proxy), counted.to_string());

    // Our Route without a hint, or with a `node=` that is not even a URI
    // parameter: nothing to route by (481, not a hint problem).
    for param in ["", ";node="] {
        let mut unhinted = call.clone();
        unhinted.route = vec![with_hint(&good, param)];
        let (bye, _) = unhinted.request("BYE", None);
        a.trunk.send(bye, b.addr).await;
        a.trunk.recv_response(481).await;
    }
    // No Route of ours at all, the Request-URI naming node 0: not ours to
    // steer.
    let ruri = format!("sip:fs@{}", a.nodes[0].addr);
    let bare = request_from("BYE", &ruri, a.trunk.addr, Some("fs-x"), None);
    a.trunk.send(bare, b.addr).await;
    a.trunk.recv_response(481).await;
    assert_eq!(rejected_bad_hint(&b.proxy), counted);

    for node in &a.nodes {
        node.expect_nothing(QUIET).await;
    }
    // The genuine hint still works after all that.
    let mut genuine = call.clone();
    let (bye, _) = genuine.request("BYE", None);
    a.trunk.send(bye, b.addr).await;
    a.nodes[0].recv_request("BYE").await;
}

/// An instance with another secret refuses the hint, and so does one with
/// none (its built-in key opens no hint sealed with a secret); A, which
/// has the pin, never looks at it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_secret_refuses_the_hint_and_the_pin_never_needs_it() {
    let a = Harness::start(with(SECRET)).await;
    let (call, fs) = call_via(&a, NODE_CONTACT).await;
    let other = standby(&a, OTHER_SECRET);
    let mut c = call.clone();
    let (reinvite, _) = c.request("INVITE", Some(("application/sdp", SDP_T38.as_bytes())));
    a.trunk.send(reinvite, other.addr).await;
    let r = a
        .trunk
        .recv_until(|r| r.status().is_some_and(|c| c >= 200))
        .await;
    assert_eq!(r.last().unwrap().status(), Some(481));
    assert_eq!(rejected_bad_hint(&other.proxy), 1);
    a.nodes[0].expect_nothing(QUIET).await;

    let unsigned = standby(&a, "");
    let mut c = call.clone();
    let (options, _) = c.request("OPTIONS", None);
    a.trunk.send(options, unsigned.addr).await;
    a.trunk.recv_response(481).await;
    assert_eq!(rejected_bad_hint(&unsigned.proxy), 0, "not a re-INVITE");
    a.nodes[0].expect_nothing(QUIET).await;

    // A has the pin: even a mangled hint reaches the node there.
    let mut mangled = call.clone();
    mangled.route = vec![with_hint(&call.route[0], ";node=00")];
    let (bye, _) = mangled.request("BYE", None);
    a.trunk.send(bye, a.addr).await;
    let bye = a.nodes[0].recv_request("BYE").await;
    a.nodes[0]
        .send(fs.answer(&bye, 200, "OK", None), bye.from)
        .await;
    a.trunk.recv_response(200).await;
    assert_eq!(rejected_bad_hint(&a.proxy), 0);
}

/// Without a secret the hint is sealed with the built-in key: just as
/// opaque, and it still routes on another instance (one with a secret
/// refuses it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_secret_the_hint_is_still_opaque_and_still_routes() {
    let a = Harness::start(Options::default()).await;
    let b = standby(&a, "");
    let (mut call, fs) = call_via(&a, NODE_CONTACT).await;
    assert_eq!(call.route.len(), 1);
    let hint = assert_opaque_hint(&call.route[0], a.nodes[0].addr);
    assert_eq!(call.route[0], format!("<sip:{};lr;node={hint}>", a.addr));

    let signed = standby(&a, SECRET);
    let (reinvite, _) = call
        .clone()
        .request("INVITE", Some(("application/sdp", SDP_T38.as_bytes())));
    a.trunk.send(reinvite, signed.addr).await;
    let r = a
        .trunk
        .recv_until(|r| r.status().is_some_and(|c| c >= 200))
        .await;
    assert_eq!(r.last().unwrap().status(), Some(481));
    assert_eq!(rejected_bad_hint(&signed.proxy), 1);

    let (bye, branch) = call.request("BYE", None);
    a.trunk.send(bye, b.addr).await;
    let node = &a.nodes[0];
    let bye = node.recv_request("BYE").await;
    node.send(fs.answer(&bye, 200, "OK", None), bye.from).await;
    assert_only_via(&a.trunk.recv_response(200).await, &branch);
}

/// FreeSWITCH `sofia recover` moved the call from node 0 to node 1 (its
/// re-INVITE through A re-pinned it there). B, without the pin, gets the
/// trunk's BYE whose Route hint still names node 0 (which may be dead) and
/// whose Request-URI, refreshed by node 1's re-INVITE, names node 1: it
/// goes to node 1. The same when node 1's Contact is one of its
/// `advertised` addresses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_uri_naming_the_node_that_took_over_beats_a_stale_hint() {
    let opts = Options {
        extra_toml: SECRET,
        destination_extra: vec!["", "advertised = [\"192.0.2.11\"]"],
        ..Options::default()
    };
    let a = Harness::start(opts.clone()).await;
    let b = standby_with(&a, &opts);
    let (n0, n1) = (&a.nodes[0], &a.nodes[1]);
    for recovered_contact in [
        format!("sip:fs@{}", n1.addr),
        format!("sip:fs@192.0.2.11:{}", n1.addr.port()),
    ] {
        let (mut call, fs) = call_via(&a, &format!("sip:fs@{}", n0.addr)).await;
        let hint = assert_opaque_hint(&call.route[0], n0.addr);

        // Node 1 recovers the call: same dialog and route set, its Contact.
        let mut recovered = fs.clone();
        recovered.local = n1.addr;
        recovered.local_contact = recovered_contact.clone();
        let (reinvite, _) =
            recovered.request("INVITE", Some(("application/sdp", SDP_NODE.as_bytes())));
        n1.send(reinvite, a.addr).await;
        let reinv = a.trunk.recv_request("INVITE").await;
        call.remote_target = reinv.contact_uri().unwrap();
        assert_eq!(call.remote_target, recovered_contact);
        a.trunk
            .send(call.answer(&reinv, 200, "OK", Some(SDP_AUDIO)), a.addr)
            .await;
        n1.recv_until(|r| r.status() == Some(200)).await;
        eventually("A re-pins the call to node 1", || {
            a.proxy.dialogs().get(call.call_id.as_bytes()) == Some(n1.addr)
        })
        .await;
        let (ack, _) = recovered.request("ACK", None);
        n1.send(ack, a.addr).await;
        a.trunk.recv_request("ACK").await;

        // The VIP moves to B: the BYE's hint says node 0 (sealed), its
        // R-URI node 1.
        assert_eq!(hint_of(&call.route[0]), hint);
        let (bye, branch) = call.request("BYE", None);
        a.trunk.send(bye, b.addr).await;
        let bye = n1.recv_request("BYE").await;
        assert_eq!(bye.from, b.addr);
        assert_eq!(bye.request_uri(), recovered_contact);
        n1.send(recovered.answer(&bye, 200, "OK", None), bye.from)
            .await;
        assert_only_via(&a.trunk.recv_response(200).await, &branch);
        n0.expect_nothing(QUIET).await;
    }
    assert_eq!(rejected_bad_hint(&b.proxy), 0);
}

/// A call bridged between a TCP trunk and a UDP node gets two
/// Record-Routes (one per side): both carry the same hint, and the trunk's
/// BYE along them reaches the node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_record_routes_of_a_bridged_call_carry_the_hint() {
    let a = Harness::start(Options {
        tcp: true,
        ..with(SECRET)
    })
    .await;
    let trunk = a
        .tcp_trunk_from("trunk", "127.0.0.1".parse().unwrap())
        .await;
    let mut call = Dialog::uac_at(trunk.addr, &format!("sip:fax@{}", a.addr)).over_tcp();
    trunk.send(call.invite(SDP_AUDIO)).await;
    let node = &a.nodes[0];
    let inv = node.recv_request("INVITE").await;
    let rr = inv.values(HeaderName::RecordRoute);
    assert_eq!(rr.len(), 2, "{}", inv.text());
    let hint = assert_opaque_hint(&rr[0], node.addr);
    assert_eq!(rr[0], format!("<sip:{};lr;node={hint}>", a.addr));
    let tcp = a.tcp_addr.unwrap();
    assert_eq!(
        rr[1],
        format!("<sip:{tcp};transport=tcp;lr;node={hint}>"),
        "{rr:?}"
    );
    assert!(rr
        .iter()
        .all(|r| r.ends_with('>') && r.matches('>').count() == 1));

    let fs = Dialog::uas(node, &inv, &unique("fs-"));
    node.send(fs.answer(&inv, 200, "OK", Some(SDP_NODE)), inv.from)
        .await;
    let ok = trunk.recv_until(|r| r.status() == Some(200)).await;
    call.learn_2xx(ok.last().unwrap());
    let (bye, _) = call.request("BYE", None);
    trunk.send(bye).await;
    let bye = node.recv_request("BYE").await;
    assert!(bye.values(HeaderName::Route).is_empty(), "both popped");
}

/// The hint names no address and still routes after a restart: a call is
/// set up through A (node 0 rings, then answers); nothing sipedge sends
/// the trunk names a node (every header but the node's own Contact, which
/// is not ours to rewrite); A stops, a fresh instance with the same config
/// (which never saw the call) starts, and the trunk's BYE reaches node 0
/// by the hint alone. With a secret and with the built-in key alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hint_that_names_no_address_still_routes_after_a_restart() {
    for secret in [SECRET, ""] {
        let a = Harness::start(with(secret)).await;
        let nodes: Vec<SocketAddr> = a.nodes.iter().map(|n| n.addr).collect();
        let node = &a.nodes[0];
        let mut call = a.trunk_call();
        a.trunk.send(call.invite(SDP_AUDIO), a.addr).await;
        let mut to_trunk = vec![a.trunk.recv_response(100).await];
        let inv = node.recv_request("INVITE").await;
        let mut fs = Dialog::uas(node, &inv, &unique("fs-"));
        fs.local_contact = NODE_CONTACT.to_owned();
        node.send(fs.answer(&inv, 180, "Ringing", None), inv.from)
            .await;
        node.send(fs.answer(&inv, 200, "OK", Some(SDP_NODE)), inv.from)
            .await;
        to_trunk.extend(a.trunk.recv_until(|r| r.status() == Some(200)).await);
        let ok = to_trunk.last().unwrap();
        call.learn_2xx(ok);
        let (ack, _) = call.request("ACK", None);
        a.trunk.send(ack, a.addr).await;
        node.recv_request("ACK").await;

        assert!(to_trunk.iter().any(|r| r.status() == Some(180)));
        for r in &to_trunk {
            let text = r.text();
            let head = text.split("\r\n\r\n").next().unwrap();
            for line in head.lines().skip(1) {
                let name = line.split(':').next().unwrap().trim();
                if name.eq_ignore_ascii_case("Contact") || name.eq_ignore_ascii_case("m") {
                    continue;
                }
                for n in &nodes {
                    assert!(!line.contains(&n.to_string()), "{n} in {line:?}:\n{text}");
                }
            }
            if r.status() != Some(100) {
                let rr = r.values(HeaderName::RecordRoute);
                assert_eq!(rr.len(), 1, "{text}");
                assert_opaque_hint(&rr[0], node.addr);
            }
        }

        // A goes; a fresh instance takes its place.
        a.stop();
        let fresh = standby(&a, secret);
        assert_eq!(fresh.proxy.dialogs().get(call.call_id.as_bytes()), None);
        let (bye, branch) = call.request("BYE", None);
        a.trunk.send(bye, fresh.addr).await;
        let bye = node.recv_request("BYE").await;
        assert_eq!(bye.from, fresh.addr, "routed by the fresh instance");
        assert_eq!(bye.request_uri(), NODE_CONTACT);
        node.send(fs.answer(&bye, 200, "OK", None), bye.from).await;
        assert_only_via(&a.trunk.recv_response(200).await, &branch);
        assert_eq!(rejected_bad_hint(&fresh.proxy), 0);
        a.nodes[1].expect_nothing(QUIET).await;
    }
}

/// The binary's start-up summary says whether the hint is authenticated
/// (the secret read from a file relative to the config).
#[test]
fn the_start_up_summary_says_whether_the_hint_is_authenticated() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let dir = std::env::temp_dir().join(format!("sipedge-hint-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("cluster.secret"), "a secret read from a file\n").unwrap();
    let base = "[listen]\nudp = [\"127.0.0.1:0\"]\nadvertise = \"127.0.0.1\"\n\
                [[dispatcher.destination]]\nuri = \"sip:127.0.0.1:9\"\n";
    let cases = [
        ("", "route hint      unauthenticated (no [cluster] secret)"),
        (
            "[cluster]\nsecret_file = \"cluster.secret\"\n",
            "route hint      authenticated by [cluster] secret",
        ),
    ];
    for (i, (cluster, want)) in cases.into_iter().enumerate() {
        let cfg = dir.join(format!("proxy{i}.toml"));
        std::fs::write(&cfg, format!("{base}{cluster}")).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_sipedge"))
            .args(["--config", cfg.to_str().unwrap()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let summary: Vec<String> = lines
            .map_while(Result::ok)
            .take_while(|l| !l.starts_with("listening on"))
            .collect();
        let _ = child.kill();
        let _ = child.wait();
        assert!(
            summary.iter().any(|l| l.starts_with(want)),
            "{want:?} not in:\n{}",
            summary.join("\n")
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
