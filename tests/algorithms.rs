//! Latency statistics and the load- and latency-aware algorithms over real
//! UDP on 127.0.0.1: fake nodes (plain sockets) that answer the proxy's
//! OPTIONS probes after a fixed delay, or not at all, and calls that
//! follow. Bounds are generous (a busy 2-core machine adds milliseconds to
//! any round trip) but one-sided where the delay makes them certain: a
//! node that waits 120 ms before answering can never measure below that.

mod support;

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

/// Takes the harness's nodes and answers their probes as `answers` says,
/// each from its own task (so one node's delay never delays another's
/// answer). Any other request reaching a node is a test failure.
fn answer_probes(h: &mut Harness, answers: &[Answer]) -> Vec<JoinHandle<()>> {
    std::mem::take(&mut h.nodes)
        .into_iter()
        .zip(answers.iter().copied())
        .map(|(node, answer)| {
            tokio::spawn(async move {
                loop {
                    let p = node
                        .recv_until_request("OPTIONS", Duration::from_secs(3600))
                        .await;
                    if let Answer::After(delay) = answer {
                        // The node's own processing time, not a wait for
                        // the proxy.
                        tokio::time::sleep(delay).await;
                        node.send(reply(&p, 200, "OK", None), p.from).await;
                    }
                }
            })
        })
        .collect()
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
    let _answering = answer_probes(
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
