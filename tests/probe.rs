//! OPTIONS health probing and node states over real UDP on
//! 127.0.0.1: fake nodes that answer, stay silent or are drained, and the
//! calls that follow. Short real intervals (100-300 ms) keep it fast; each
//! expectation is about which probe or call comes next, not about timing.

mod support;

use std::sync::Arc;
use std::time::Duration;

use sipedge::dispatcher::health::{State, Status};
use sipedge::sip::HeaderName;
use support::*;
use tokio_util::sync::CancellationToken;

fn status(h: &Harness, node: usize) -> Status {
    h.proxy.dispatcher().status(node)
}

/// The next OPTIONS probe `node` receives (other messages are a failure).
async fn next_probe(h: &Harness, node: usize) -> Received {
    let probe = h.nodes[node].recv_request("OPTIONS").await;
    assert_eq!(
        probe.vias().len(),
        1,
        "a probe starts here: {}",
        probe.text()
    );
    probe
}

/// `failure_threshold` unanswered probes take a node down, not one fewer;
/// `success_threshold` answered ones bring it back, not one fewer. The
/// state seen when probe k+1 arrives reflects k timeouts (each probe times
/// out 100 ms before the next one is sent).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_node_goes_down_after_exactly_the_threshold_and_comes_back() {
    let h = Harness::start(Options {
        nodes: 1,
        nodes_answer_probes: false,
        extra_toml: "[probe]\ninterval = \"300ms\"\ntimeout = \"150ms\"\n\
                     failure_threshold = 3\nsuccess_threshold = 2\n\
                     ping_from = \"sip:health@127.0.0.1\"\n",
        ..Options::default()
    })
    .await;
    let first = next_probe(&h, 0).await;
    // A well-formed probe: OPTIONS to the node's URI, our From, CSeq.
    assert_eq!(first.request_uri(), format!("sip:{}", h.nodes[0].addr));
    let from = first.header(HeaderName::From).unwrap();
    assert!(from.starts_with("<sip:health@127.0.0.1>;tag="), "{from}");
    assert_eq!(first.max_forwards(), Some(70));
    assert_eq!(first.cseq().1, "OPTIONS");
    assert_eq!(status(&h, 0).state, State::Active);

    // Unanswered: 1 and 2 timeouts leave it trying (still taking calls).
    for timeouts in 1..=2 {
        let _ = next_probe(&h, 0).await;
        assert_eq!(status(&h, 0).state, State::Trying, "after {timeouts}");
        assert!(h.proxy.dispatcher().accepts_new_calls(0));
    }
    // The third timeout takes it down.
    let probe = next_probe(&h, 0).await;
    assert_eq!(status(&h, 0).state, State::Inactive);
    assert!(!h.proxy.dispatcher().accepts_new_calls(0));

    // One answer is not enough with success_threshold = 2...
    h.nodes[0]
        .send(reply(&probe, 200, "OK", None), probe.from)
        .await;
    let probe = next_probe(&h, 0).await;
    assert_eq!(status(&h, 0).state, State::Inactive);
    // ...the second is.
    h.nodes[0]
        .send(reply(&probe, 200, "OK", None), probe.from)
        .await;
    let dispatcher = h.proxy.dispatcher();
    eventually("node back up", || {
        dispatcher.status(0).state == State::Active
    })
    .await;
}

/// A reply code outside `reply_codes` is a failed probe; a class or a
/// listed code is a success.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reply_codes_decide_what_counts_as_alive() {
    let h = Harness::start(Options {
        nodes: 1,
        nodes_answer_probes: false,
        extra_toml: "[probe]\ninterval = \"200ms\"\ntimeout = \"1s\"\n\
                     failure_threshold = 1\nreply_codes = [\"2xx\", 404]\n",
        ..Options::default()
    })
    .await;
    let probe = next_probe(&h, 0).await;
    h.nodes[0]
        .send(reply(&probe, 503, "Busy", None), probe.from)
        .await;
    let dispatcher = h.proxy.dispatcher();
    eventually("503 takes it down", || {
        dispatcher.status(0).state == State::Inactive
    })
    .await;
    let probe = next_probe(&h, 0).await;
    h.nodes[0]
        .send(reply(&probe, 404, "Not Found", None), probe.from)
        .await;
    eventually("404 is alive here", || {
        dispatcher.status(0).state == State::Active
    })
    .await;
}

/// A call that times out on a node takes it out of rotation at once
/// (Kamailio `ds_mark_dst("ip")`) and has it probed right away, not at the
/// next interval (10 s here); once it answers the probe it gets calls
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_call_takes_the_node_out_and_it_is_probed_at_once() {
    let h = two_nodes_probed_once("300ms").await;
    let mut call = h.trunk_call();
    h.trunk.send(call.invite(SDP_AUDIO), h.addr).await;
    // Node 0 swallows the INVITE (and its Timer A copy); fr_timeout 300 ms.
    let _ = h.nodes[0].recv_request("INVITE").await;
    let inv = h.nodes[1].recv_request("INVITE").await;
    assert_eq!(inv.call_id(), call.call_id, "failed over");
    assert_eq!(status(&h, 0).state, State::Inactive);
    // Probed now, well before the 10 s interval.
    let probe = h.nodes[0].recv_until_request("OPTIONS", WAIT).await;
    // Until it answers, new calls skip it.
    let mut second = h.trunk_call();
    h.trunk.send(second.invite(SDP_AUDIO), h.addr).await;
    let inv2 = h.nodes[1].recv_request("INVITE").await;
    assert_eq!(inv2.call_id(), second.call_id);
    h.nodes[0]
        .send(reply(&probe, 200, "OK", None), probe.from)
        .await;
    let dispatcher = h.proxy.dispatcher();
    eventually("back after the probe", || dispatcher.accepts_new_calls(0)).await;
    let mut third = h.trunk_call();
    h.trunk.send(third.invite(SDP_AUDIO), h.addr).await;
    let inv3 = h.nodes[0].recv_request("INVITE").await;
    assert_eq!(inv3.call_id(), third.call_id);
}

/// Drain: a node disabled by the operator gets no new INVITE, but the BYE
/// of the call it already has still reaches it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_node_gets_no_new_calls_but_keeps_its_dialogs() {
    let h = Harness::start(Options::default()).await;
    let mut est = establish(&h).await;
    assert_eq!(est.node, 0);
    // Drained the way an operator does it: dispatcher.set_state over the
    // admin listener's JSON-RPC.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = listener.local_addr().unwrap();
    let backend: std::sync::Arc<dyn sipedge::admin::Backend> = h.proxy.clone();
    tokio::spawn(sipedge::admin::serve(
        listener,
        backend,
        tokio_util::sync::CancellationToken::new(),
    ));
    let body = format!(
        r#"{{"jsonrpc":"2.0","method":"dispatcher.set_state","params":["d",1,"sip:{}"],"id":1}}"#,
        h.nodes[0].addr
    );
    let answer = post_rpc(admin, &body).await;
    assert!(answer.contains("Dispatcher state updated"), "{answer}");
    assert_eq!(status(&h, 0).state, State::Disabled);
    assert_eq!(status(&h, 0).flags().as_str(), "DX");

    let mut next = h.trunk_call();
    h.trunk.send(next.invite(SDP_AUDIO), h.addr).await;
    let inv = h.nodes[1].recv_request("INVITE").await;
    assert_eq!(inv.call_id(), next.call_id);
    h.nodes[0].expect_nothing(QUIET).await;

    let (bye, _) = est.call.request("BYE", None);
    h.trunk.send(bye, h.addr).await;
    let got = h.nodes[0].recv_request("BYE").await;
    assert_eq!(got.call_id(), est.call.call_id);
}

/// One JSON-RPC request over HTTP/1.1; the whole answer.
async fn post_rpc(admin: std::net::SocketAddr, body: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(admin).await.unwrap();
    let request = format!(
        "POST /RPC HTTP/1.1\r\nHost: {admin}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    let _ = tokio::time::timeout(WAIT, conn.read_to_string(&mut answer)).await;
    answer
}

/// Two nodes probed every 10 s (1 s timeout) that have answered the first
/// round; the test sees later probes itself.
/// Two nodes, each probed once and up; `fr_timeout` as given (short only
/// where the test is about a node's silence).
async fn two_nodes_probed_once(fr_timeout: &'static str) -> Harness {
    let h = Harness::start(Options {
        fr_timeout,
        nodes_answer_probes: false,
        extra_toml: "[probe]\ninterval = \"10s\"\ntimeout = \"1s\"\n",
        ..Options::default()
    })
    .await;
    for n in 0..2 {
        let p = next_probe(&h, n).await;
        h.nodes[n].send(reply(&p, 200, "OK", None), p.from).await;
    }
    h
}

/// Readiness: not before the first probe round has had its answers, and
/// not when no destination takes calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_first_round_and_the_active_nodes() {
    let h = Harness::start(Options {
        extra_toml: "[probe]\ninterval = \"10s\"\ntimeout = \"300ms\"\n",
        ..Options::default()
    })
    .await;
    assert!(h.proxy.ready().is_err(), "ready before any probe");
    // The nodes answer the probes while the test reads them.
    for n in &h.nodes {
        n.expect_nothing(Duration::from_millis(100)).await;
    }
    let proxy = h.proxy.clone();
    eventually("ready", || proxy.ready().is_ok()).await;
    for i in 0..2 {
        h.proxy.dispatcher().set_state(i, "d".parse().unwrap());
    }
    assert_eq!(h.proxy.ready(), Err("no destination is active".to_owned()));
}

/// `dispatcher.ping_active 0` pauses probing (a keepalived standby), `1`
/// resumes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_active_pauses_and_resumes_probing() {
    let h = Harness::start(Options {
        nodes: 1,
        nodes_answer_probes: false,
        extra_toml: "[probe]\ninterval = \"100ms\"\ntimeout = \"50ms\"\nfailure_threshold = 100\n",
        ..Options::default()
    })
    .await;
    let _ = next_probe(&h, 0).await;
    assert!(!h.proxy.ping_active(Some(false)));
    // At most one probe was already on its way.
    let _ = h.nodes[0].recv_within(Duration::from_millis(150)).await;
    h.nodes[0].expect_nothing(Duration::from_millis(400)).await;
    assert!(h.proxy.ping_active(Some(true)));
    assert!(h.proxy.ping_active(None));
    let _ = next_probe(&h, 0).await;
}

/// A keepalived standby (probing paused by its notify script) is ready
/// while it serves, even before its first round had its answers: its
/// probes leave from the VIP it does not hold, so stale or missing states
/// must not keep it from taking the VIP over. Resuming probes every node at
/// once, not an `interval` later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_standby_is_ready_and_probes_all_at_once_on_resume() {
    let h = Harness::start(Options {
        nodes_answer_probes: false,
        extra_toml: "[probe]\ninterval = \"60s\"\ntimeout = \"2s\"\n",
        ..Options::default()
    })
    .await;
    // The first round is out, unanswered (the answers went to the VIP's
    // holder): not ready yet while probing runs...
    for n in 0..2 {
        let _ = next_probe(&h, n).await;
    }
    assert_eq!(
        h.proxy.ready(),
        Err("the first probe round has not finished".to_owned())
    );
    // ...ready once paused.
    assert!(!h.proxy.ping_active(Some(false)));
    assert_eq!(h.proxy.ready(), Ok(()));
    // The first round times out (a node with a probe out is not probed
    // again before its answer or timeout).
    let dispatcher = h.proxy.dispatcher();
    eventually("first round timed out", || {
        (0..2).all(|n| dispatcher.status(n).state == State::Trying)
    })
    .await;
    assert_eq!(h.proxy.ready(), Ok(()), "still paused");
    // Taking over: both nodes get a probe now (the next round is a minute
    // away), and their answers count.
    assert!(h.proxy.ping_active(Some(true)));
    for n in 0..2 {
        let p = h.nodes[n].recv_until_request("OPTIONS", WAIT).await;
        h.nodes[n].send(reply(&p, 200, "OK", None), p.from).await;
    }
    eventually("both up", || {
        (0..2).all(|n| dispatcher.status(n).state == State::Active)
    })
    .await;
    assert_eq!(h.proxy.ready(), Ok(()));
    // Switching it on again while on sends nothing more.
    assert!(h.proxy.ping_active(Some(true)));
    for n in &h.nodes {
        n.expect_nothing(Duration::from_millis(300)).await;
    }
}

/// A failover code (503) marks the node like a silent one: out of rotation
/// and probed at once; a probe it answers brings it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_code_takes_the_node_out_until_a_probe_answers() {
    let h = two_nodes_probed_once("5s").await;
    let mut call = h.trunk_call();
    h.trunk.send(call.invite(SDP_AUDIO), h.addr).await;
    let inv = h.nodes[0].recv_request("INVITE").await;
    h.nodes[0]
        .send(
            reply(&inv, 503, "Service Unavailable", Some("n0")),
            inv.from,
        )
        .await;
    let inv1 = h.nodes[1].recv_request("INVITE").await;
    assert_eq!(inv1.call_id(), call.call_id);
    assert_eq!(status(&h, 0).state, State::Inactive);
    // The hop-by-hop ACK for the 503, then the urgent probe.
    let probe = h.nodes[0].recv_until_request("OPTIONS", WAIT).await;
    h.nodes[0]
        .send(reply(&probe, 200, "OK", None), probe.from)
        .await;
    let dispatcher = h.proxy.dispatcher();
    eventually("back after the probe", || dispatcher.accepts_new_calls(0)).await;
}

/// A proxy whose pool is read from a dispatcher.list (`list`, with
/// `{0}`, `{1}`... standing for the nodes' addresses) plus `toml`
/// appended to the config; it runs until the token is cancelled.
async fn from_list(
    name: &str,
    list: &str,
    nodes: &[&Peer],
    toml: &str,
) -> (Arc<sipedge::proxy::Proxy>, CancellationToken) {
    init_tracing();
    let dir = std::env::temp_dir().join(format!("sipedge-{name}-{}", unique("")));
    std::fs::create_dir_all(&dir).unwrap();
    let mut text = list.to_owned();
    for (i, n) in nodes.iter().enumerate() {
        text = text.replace(&format!("{{{i}}}"), &n.addr.to_string());
    }
    std::fs::write(dir.join("dispatcher.list"), text).unwrap();
    let socket = sipedge::transport::bind_udp(
        "127.0.0.1:0".parse().unwrap(),
        sipedge::transport::UdpOptions::default(),
    )
    .unwrap();
    let at = socket.local_addr().unwrap();
    let path = dir.join("sipedge.toml");
    std::fs::write(
        &path,
        format!(
            "[listen]\nudp = [\"{at}\"]\nadvertise = \"{at}\"\n\
             [dispatcher]\nlist_file = \"dispatcher.list\"\n\
             [failover]\nfr_timeout = \"500ms\"\n{toml}"
        ),
    )
    .unwrap();
    let cfg = sipedge::config::read_config(&path).unwrap_or_else(|e| panic!("{e}"));
    let proxy = sipedge::proxy::Proxy::with_tcp(cfg, vec![socket], Vec::new()).unwrap();
    let cancel = CancellationToken::new();
    tokio::spawn(proxy.clone().run(cancel.clone()));
    (proxy, cancel)
}

/// Answers the next OPTIONS probe `node` receives with 200.
async fn answer_probe(node: &Peer) {
    let p = node.recv_request("OPTIONS").await;
    node.send(reply(&p, 200, "OK", None), p.from).await;
}

/// The FreeSWITCH active-active deployment read as-is: a dispatcher.list
/// whose flags are all 0 (`1 sip:10.0.1.10:5080 0 10`), under the default
/// probing mode (its Kamailio runs `probing_mode 1`). Both nodes are
/// probed; a node that dies is taken out by its probes and comes back by
/// itself once it restarts, with no operator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_articles_list_is_probed_and_a_restarted_node_comes_back_by_itself() {
    let n0 = Peer::bind("node0").await;
    let n1 = Peer::bind("node1").await;
    let (proxy, cancel) = from_list(
        "article",
        "# setid destination flags priority\n1 sip:{0} 0 10\n1 sip:{1} 0 10\n",
        &[&n0, &n1],
        "[probe]\ninterval = \"200ms\"\ntimeout = \"150ms\"\nfailure_threshold = 2\n",
    )
    .await;
    answer_probe(&n0).await;
    answer_probe(&n1).await;
    let pool = proxy.dispatcher();
    assert_eq!(pool.status(0).flags().as_str(), "AP", "probed, as listed");
    assert_eq!(pool.status(1).flags().as_str(), "AP");

    // Node 1 dies: its port closes, the probes get ICMP errors.
    let at = n1.addr;
    let i = pool.find(at).unwrap();
    drop(n1);
    eventually("the dead node is taken out", || {
        pool.status(i).state == State::Inactive
    })
    .await;
    assert!(!pool.stranded(i), "probed: it is not left for an operator");

    // It restarts on the same address and answers: back by itself.
    let n1 = Peer::bind_at("node1", at).await.unwrap();
    for _ in 0..20 {
        answer_probe(&n1).await;
        if pool.status(i).state == State::Active {
            break;
        }
    }
    assert_eq!(pool.status(i).state, State::Active);
    let text = proxy.metrics().encode();
    assert!(
        text.contains(&format!(
            "sipedge_destination_stranded{{set=\"1\",uri=\"sip:{at}\"}} 0"
        )),
        "{text}"
    );
    cancel.cancel();
}

/// Kamailio's default `probing_mode 0` with the same list: nothing is
/// probed; a call that times out on a node takes it out, and as no probe
/// will bring it back it is logged and shown as stranded until an
/// operator sets it active.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mode_0_with_unflagged_nodes_probes_none_and_a_node_taken_out_is_stranded() {
    let n0 = Peer::bind("node0").await;
    let n1 = Peer::bind("node1").await;
    let (proxy, cancel) = from_list(
        "mode0",
        "1 sip:{0} 0 10\n1 sip:{1} 0 5\n",
        &[&n0, &n1],
        "[probe]\nmode = 0\ninterval = \"100ms\"\ntimeout = \"100ms\"\n",
    )
    .await;
    let pool = proxy.dispatcher();
    let first = pool.find(n0.addr).unwrap();
    assert_eq!(pool.status(first).flags().as_str(), "AX");
    // A call: node 0 (priority 10) stays silent, node 1 answers. No probe
    // reaches either node meanwhile.
    let trunk = Peer::bind("trunk").await;
    let mut call = Dialog::uac(&trunk, &format!("sip:fax@{}", proxy.local_addrs()[0]));
    trunk
        .send(call.invite("v=0\r\n"), proxy.local_addrs()[0])
        .await;
    let silent = n0.recv().await;
    assert_eq!(
        silent.method().as_deref(),
        Some("INVITE"),
        "{}",
        silent.text()
    );
    let inv = n1.recv().await;
    assert_eq!(inv.method().as_deref(), Some("INVITE"), "{}", inv.text());
    let node = Dialog::uas(&n1, &inv, "n1");
    n1.send(node.answer(&inv, 200, "OK", Some("v=0\r\n")), inv.from)
        .await;
    let ok = trunk
        .recv_until(|r| r.status().is_some_and(|c| c >= 200))
        .await;
    assert_eq!(ok.last().and_then(Received::status), Some(200));
    eventually("node 0 out", || pool.status(first).state == State::Inactive).await;
    assert!(pool.stranded(first));
    let text = proxy.metrics().encode();
    let series = format!(
        "sipedge_destination_stranded{{set=\"1\",uri=\"sip:{}\"}}",
        n0.addr
    );
    assert!(text.contains(&format!("{series} 1")), "{text}");
    // Neither node was ever probed.
    let probes: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("sipedge_probe_total{") && !l.ends_with(" 0"))
        .collect();
    assert!(probes.is_empty(), "{probes:?}");

    // The operator brings it back.
    pool.set_state(first, "a".parse().unwrap());
    assert!(!pool.stranded(first));
    assert!(proxy.metrics().encode().contains(&format!("{series} 0")));
    cancel.cancel();
}

/// A list URI with a user part and parameters is kept as written:
/// `dispatcher.list` shows it, `set_state` finds it by it (and
/// by its normalised form), and the OPTIONS probe's Request-URI keeps the
/// user, as Kamailio sends it; calls still go to its host and port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_uri_with_a_user_is_shown_matched_and_probed_as_written() {
    let n0 = Peer::bind("node0").await;
    let (proxy, cancel) = from_list(
        "written",
        "1 sip:callee@{0};transport=udp 8 10\n",
        &[&n0],
        "[probe]\ninterval = \"200ms\"\ntimeout = \"150ms\"\n",
    )
    .await;
    let written = format!("sip:callee@{};transport=udp", n0.addr);
    let probe = n0.recv_request("OPTIONS").await;
    assert_eq!(
        probe.first_line(),
        format!("OPTIONS {written} SIP/2.0"),
        "the probe keeps the user part"
    );
    n0.send(reply(&probe, 200, "OK", None), probe.from).await;

    use sipedge::admin::{Backend, Target};
    let listed: Vec<String> = proxy.destinations().into_iter().map(|d| d.uri).collect();
    assert_eq!(listed, std::slice::from_ref(&written));
    let drain = "d".parse().unwrap();
    // The normalised form: no user, the transport kept.
    for name in [
        written.to_uppercase(),
        format!("sip:{};transport=udp", n0.addr),
    ] {
        assert_eq!(
            Backend::set_state(&*proxy, 1, &Target::Uri(name.clone()), drain).unwrap(),
            1,
            "{name}"
        );
    }
    assert!(Backend::set_state(
        &*proxy,
        1,
        &Target::Uri(format!("sip:other@{}", n0.addr)),
        drain
    )
    .is_err());
    cancel.cancel();
}
