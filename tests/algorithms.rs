//! Latency statistics and the load- and latency-aware algorithms over real
//! UDP on 127.0.0.1: fake nodes (plain sockets) that answer the proxy's
//! OPTIONS probes after a fixed delay, or not at all, and calls that
//! follow. Bounds are generous (a busy 2-core machine adds milliseconds to
//! any round trip) but one-sided where the delay makes them certain: a
//! node that waits 120 ms before answering can never measure below that.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use support::*;
use tokio::task::JoinHandle;

/// How a fake node answers probes.
#[derive(Clone, Copy)]
enum Answer {
    /// 200 after this delay.
    After(Duration),
    /// Never.
    Silent,
}

/// Fake nodes run by their own tasks (so one node's delay never delays
/// another's answer): probes answered as `answers` says, INVITEs counted
/// and answered 486 at once (not a failover code: each call tries one
/// node), anything else ignored.
struct Nodes {
    invites: Arc<[AtomicUsize]>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Nodes {
    /// Takes the harness's nodes.
    fn run(h: &mut Harness, answers: &[Answer]) -> Nodes {
        let invites: Arc<[AtomicUsize]> = answers.iter().map(|_| AtomicUsize::new(0)).collect();
        let tasks = std::mem::take(&mut h.nodes)
            .into_iter()
            .zip(answers.iter().copied())
            .enumerate()
            .map(|(i, (node, answer))| {
                let invites = invites.clone();
                tokio::spawn(async move {
                    while let Some(r) = node.recv_within(Duration::from_secs(3600)).await {
                        match (r.method().as_deref(), answer) {
                            (Some("OPTIONS"), Answer::After(delay)) => {
                                // The node's own processing time, not a
                                // wait for the proxy.
                                tokio::time::sleep(delay).await;
                                node.send(reply(&r, 200, "OK", None), r.from).await;
                            }
                            (Some("INVITE"), _) => {
                                invites[i].fetch_add(1, Ordering::SeqCst);
                                node.send(reply(&r, 486, "Busy Here", Some("fs")), r.from)
                                    .await;
                            }
                            _ => {}
                        }
                    }
                })
            })
            .collect();
        Nodes { invites, tasks }
    }

    fn invites(&self) -> Vec<usize> {
        self.invites
            .iter()
            .map(|c| c.load(Ordering::SeqCst))
            .collect()
    }

    /// Places `calls` calls one after the other; the node each reached.
    async fn place(&self, h: &Harness, calls: usize) -> Vec<usize> {
        let mut reached = Vec::with_capacity(calls);
        for _ in 0..calls {
            let before = self.invites();
            let mut call = h.trunk_call();
            h.trunk.send(call.invite(SDP_AUDIO), h.addr).await;
            let busy = loop {
                let r = h.trunk.recv().await;
                if r.status() != Some(100) {
                    break r;
                }
            };
            assert_eq!(busy.status(), Some(486), "{}", busy.text());
            h.trunk.send(call.ack_non2xx(&busy), h.addr).await;
            let after = self.invites();
            let node = (0..after.len())
                .find(|&i| after[i] > before[i])
                .expect("a node got the INVITE before its answer came back");
            reached.push(node);
        }
        reached
    }
}

/// `dispatcher.list` over the admin listener's JSON-RPC, as a client sees
/// it: the body as sent (for key order) and parsed.
async fn rpc_list(h: &Harness) -> (String, Value) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = listener.local_addr().unwrap();
    let backend: std::sync::Arc<dyn sipedge::admin::Backend> = h.proxy.clone();
    tokio::spawn(sipedge::admin::serve(
        listener,
        backend,
        tokio_util::sync::CancellationToken::new(),
    ));
    let body = r#"{"jsonrpc":"2.0","method":"dispatcher.list","id":1}"#;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(admin).await.unwrap();
    let request = format!(
        "POST /RPC HTTP/1.1\r\nHost: {admin}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(WAIT, conn.read_to_string(&mut answer))
        .await
        .expect("dispatcher.list answered")
        .unwrap();
    let json = answer.split("\r\n\r\n").nth(1).expect("a body");
    let value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {json}"));
    (json.to_owned(), value)
}

/// Node 0 answers at once, node 1 after 120 ms, node 2 never: the averages
/// order them, node 1 measures at least its delay, node 2 counts only
/// timeouts; `dispatcher.list` shows Kamailio's `LATENCY` block and the
/// metrics the same numbers in seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_statistics_from_nodes_with_fixed_delays() {
    let mut h = Harness::start(Options {
        nodes: 3,
        nodes_answer_probes: false,
        extra_toml: "[probe]\ninterval = \"100ms\"\ntimeout = \"400ms\"\n\
                     failure_threshold = 100\n",
        ..Options::default()
    })
    .await;
    let slow = Duration::from_millis(120);
    let _nodes = Nodes::run(
        &mut h,
        &[
            Answer::After(Duration::ZERO),
            Answer::After(slow),
            Answer::Silent,
        ],
    );
    let d = h.proxy.dispatcher();
    eventually("5 samples of nodes 0 and 1, 2 timeouts of node 2", || {
        let (a, b, c) = (
            d.latency(0).unwrap(),
            d.latency(1).unwrap(),
            d.latency(2).unwrap(),
        );
        a.count() >= 5 && b.count() >= 5 && c.timeouts() >= 2
    })
    .await;
    let fast = d.latency(0).unwrap();
    let slowed = d.latency(1).unwrap();
    let silent = d.latency(2).unwrap();
    assert!(slowed.average() >= 120.0, "{slowed:?}");
    assert!(slowed.max() >= 120, "{slowed:?}");
    assert!(slowed.estimate() >= 120.0, "{slowed:?}");
    // Loopback answers in well under a millisecond; allow a busy machine
    // 100 ms of scheduling on average and still be told apart.
    assert!(fast.average() < 100.0, "{fast:?}");
    assert!(fast.average() < slowed.average());
    assert_eq!(fast.timeouts(), 0);
    assert_eq!(silent.count(), 0, "{silent:?}");

    let (raw, list) = rpc_list(&h).await;
    let targets = &list["result"]["RECORDS"][0]["SET"]["TARGETS"];
    let latency = &targets[1]["DEST"]["LATENCY"];
    // Kamailio's keys, in its order, after PRIORITY.
    let block = raw
        .split("\"LATENCY\":{")
        .nth(2)
        .expect("three LATENCY blocks");
    let at = |key: &str| {
        block
            .find(&format!("\"{key}\":"))
            .unwrap_or_else(|| panic!("{key} in {raw}"))
    };
    let order = ["AVG", "STD", "EST", "MAX", "TIMEOUT"].map(at);
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{raw}");
    assert!(latency["AVG"].as_f64().unwrap() >= 120.0, "{latency}");
    assert!(latency["MAX"].is_i64(), "MAX is an integer: {latency}");
    assert!(
        targets[2]["DEST"]["LATENCY"]["TIMEOUT"].as_u64().unwrap() >= 2,
        "{list}"
    );

    let text = h.proxy.metrics().encode();
    let series = |uri: &str, stat: &str| {
        let prefix = format!(
            "sipedge_destination_latency_seconds{{set=\"1\",stat=\"{stat}\",uri=\"{uri}\"}} "
        );
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
            .parse::<f64>()
            .unwrap()
    };
    let slow_uri = d.uri(1).to_owned();
    assert!(series(&slow_uri, "max") >= 0.12, "{text}");
    assert!(series(&slow_uri, "avg") >= 0.12, "{text}");
    let timeouts = format!(
        "sipedge_destination_probe_timeouts_total{{set=\"1\",uri=\"{}\"}} ",
        d.uri(2)
    );
    let n: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix(&timeouts))
        .unwrap_or_else(|| panic!("no {timeouts} in\n{text}"))
        .parse()
        .unwrap();
    assert!(n >= 2, "{text}");
}

/// A call from the trunk answered 200 by whichever node the proxy picked:
/// the trunk's dialog, the node's, and the node's index.
async fn call_answered(h: &Harness) -> (Dialog, Dialog, usize) {
    let mut call = h.trunk_call();
    h.trunk.send(call.invite(SDP_AUDIO), h.addr).await;
    h.trunk.recv_response(100).await;
    let (node, inv) = h.recv_any_node().await;
    assert_eq!(inv.method().as_deref(), Some("INVITE"), "{}", inv.text());
    let node_side = Dialog::uas(&h.nodes[node], &inv, &unique("fs-"));
    h.nodes[node]
        .send(node_side.answer(&inv, 200, "OK", Some(SDP_NODE)), inv.from)
        .await;
    let ok = h.trunk.recv_response(200).await;
    call.learn_2xx(&ok);
    let (ack, _) = call.request("ACK", None);
    h.trunk.send(ack, h.addr).await;
    h.nodes[node].recv_request("ACK").await;
    (call, node_side, node)
}

/// The trunk hangs `call` up on `node`; the node answers the BYE.
async fn hang_up(h: &Harness, call: &mut Dialog, node_side: &Dialog, node: usize) {
    let (bye, _) = call.request("BYE", None);
    h.trunk.send(bye, h.addr).await;
    let got = h.nodes[node].recv_request("BYE").await;
    h.nodes[node]
        .send(node_side.answer(&got, 200, "OK", None), got.from)
        .await;
    h.trunk.recv_response(200).await;
}

/// Algorithm 10 with `maxload = 1` on both nodes: the first call goes to
/// node 0 (all idle: first in set order), the second to node 1 (least
/// loaded), the third finds both full and gets a 503; once the first call
/// hangs up, node 0 takes the next one. The load is the dialog table's,
/// so the hang-up frees the slot exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_load_caps_each_node_at_its_maxload() {
    let h = Harness::start(Options {
        algorithm: "call-load",
        destination_extra: vec!["maxload = 1", "maxload = 1"],
        ..Options::default()
    })
    .await;
    let (mut first, first_node_side, n0) = call_answered(&h).await;
    assert_eq!(n0, 0);
    let (_second, _, n1) = call_answered(&h).await;
    assert_eq!(n1, 1);

    let mut third = h.trunk_call();
    h.trunk.send(third.invite(SDP_AUDIO), h.addr).await;
    let refused = loop {
        let r = h.trunk.recv().await;
        if r.status() != Some(100) {
            break r;
        }
    };
    assert_eq!(refused.status(), Some(503), "{}", refused.text());
    h.trunk.send(third.ack_non2xx(&refused), h.addr).await;
    for node in &h.nodes {
        node.expect_nothing(QUIET).await;
    }
    // dispatcher.list shows each node's load as Kamailio's RUNTIME block,
    // after LATENCY.
    let (raw, list) = rpc_list(&h).await;
    let targets = &list["result"]["RECORDS"][0]["SET"]["TARGETS"];
    for t in 0..2 {
        assert_eq!(targets[t]["DEST"]["RUNTIME"]["DLGLOAD"], 1, "{raw}");
    }
    assert!(raw.find("\"LATENCY\"") < raw.find("\"RUNTIME\""), "{raw}");

    hang_up(&h, &mut first, &first_node_side, 0).await;
    let node0 = h.proxy.dispatcher().addr(0);
    eventually("node 0's call is gone from the dialog table", || {
        h.proxy.metrics().encode().contains(&format!(
            "sipedge_destination_calls_active{{set=\"1\",uri=\"sip:{node0}\"}} 0"
        ))
    })
    .await;
    let (_fourth, _, n) = call_answered(&h).await;
    assert_eq!(n, 0, "node 0 has room again");
}

/// Algorithm 11 over real sockets: rweights 50/30/20 split 100 calls
/// exactly; with the first node out of rotation its share goes to the
/// other two in proportion (30:20 of 100 = 60/40).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relative_weight_splits_calls_over_the_active_nodes() {
    let mut h = Harness::start(Options {
        nodes: 3,
        algorithm: "relative-weight",
        destination_extra: vec!["rweight = 50", "rweight = 30", "rweight = 20"],
        nodes_answer_probes: false,
        extra_toml: "[probe]\ninterval = \"100ms\"\ntimeout = \"300ms\"\nfailure_threshold = 1\n",
        ..Options::default()
    })
    .await;
    let ok = Answer::After(Duration::ZERO);
    let nodes = Nodes::run(&mut h, &[ok, ok, ok]);
    let reached = nodes.place(&h, 100).await;
    let count = |n: usize| reached.iter().filter(|&&r| r == n).count();
    assert_eq!([count(0), count(1), count(2)], [50, 30, 20]);

    // Node 0 drained by the operator: out of the spread.
    let d = h.proxy.dispatcher();
    d.set_state(0, "d".parse().unwrap());
    let reached = nodes.place(&h, 100).await;
    let count = |n: usize| reached.iter().filter(|&&r| r == n).count();
    assert_eq!([count(0), count(1), count(2)], [0, 60, 40]);
}

/// Algorithm 13 over real sockets: two nodes of equal priority 10; once
/// the probes show node 1 answering in 150 ms or more its priority drops
/// to 1 (10 - 150 / 10, never below 1) and node 0 gets every new call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_algorithm_prefers_the_fast_node() {
    let mut h = Harness::start(Options {
        nodes: 2,
        algorithm: "latency",
        destination_extra: vec!["priority = 10", "priority = 10"],
        nodes_answer_probes: false,
        extra_toml: "[probe]\ninterval = \"100ms\"\ntimeout = \"1s\"\n",
        ..Options::default()
    })
    .await;
    let nodes = Nodes::run(
        &mut h,
        &[
            Answer::After(Duration::ZERO),
            Answer::After(Duration::from_millis(150)),
        ],
    );
    let d = h.proxy.dispatcher();
    eventually("node 1's estimate reaches its 150 ms delay", || {
        d.latency(1).unwrap().estimate() >= 150.0
    })
    .await;
    // Node 0 answers loopback probes in about a millisecond; a busy
    // machine may stretch that, but below 90 ms its priority stays above 1.
    let fast = d.latency(0).unwrap().estimate();
    assert!(fast < 90.0, "node 0's estimate {fast} ms");
    let reached = nodes.place(&h, 20).await;
    assert_eq!(reached, [0; 20]);
}
