//! `dispatcher.reload` (issue 4): the destinations are re-read from the
//! config file and its dispatcher.list; a node that stays keeps its state,
//! calls in progress keep their node, a bad file changes nothing.

mod support;

use std::path::PathBuf;

use sipedge::dispatcher::health::State;
use support::*;

/// A fresh directory under the system temp dir for one test's files.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sipedge-{}-{}", name, unique("")));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_swaps_the_pool_and_keeps_the_state_of_nodes_that_stay() {
    let h = Harness::start(Options::default()).await;
    let mut est = establish(&h).await; // a call on node 0
    let node2 = Peer::bind("node2").await.answering_probes();
    // Node 1 drained by the operator before the reload.
    h.proxy.dispatcher().set_state(1, "d".parse().unwrap());

    let dir = scratch("reload");
    let list = dir.join("pool.list");
    let config = dir.join("sipedge.toml");
    std::fs::write(
        &list,
        format!(
            "# node 0 leaves, node 1 stays, node 2 joins\n1 sip:{} 8 0\n1 sip:{} 8 0\n",
            h.nodes[1].addr, node2.addr
        ),
    )
    .unwrap();
    std::fs::write(
        &config,
        format!(
            "[listen]\nudp = [\"{a}\"]\nadvertise = \"{a}\"\n[dispatcher]\nalgorithm = \"priority\"\n\
             list_file = \"pool.list\"\n",
            a = h.addr
        ),
    )
    .unwrap();
    h.proxy.set_config_path(config.clone());
    assert_eq!(h.proxy.reload().expect("reload"), 2);

    let pool = h.proxy.dispatcher();
    assert_eq!(pool.len(), 2);
    assert_eq!(pool.find(h.nodes[0].addr), None, "node 0 left");
    let kept = pool.find(h.nodes[1].addr).expect("node 1 stays");
    assert_eq!(
        pool.status(kept).state,
        State::Disabled,
        "its state carried over"
    );
    let new = pool.find(node2.addr).expect("node 2 joined");
    assert_eq!(pool.status(new).state, State::Active);

    // New calls go to the new node (node 1 is drained).
    let mut call = h.trunk_call();
    h.trunk.send(call.invite(SDP_AUDIO), h.addr).await;
    let inv = node2.recv_request("INVITE").await;
    assert_eq!(inv.call_id(), call.call_id);
    // The call already on node 0 keeps going there.
    let (bye, _) = est.call.request("BYE", None);
    h.trunk.send(bye, h.addr).await;
    let got = h.nodes[0].recv_request("BYE").await;
    assert_eq!(got.call_id(), est.call.call_id);

    // A broken list is refused, naming the line; the pool stays.
    std::fs::write(&list, "1 sip:127.0.0.1:5080\none sip:127.0.0.1:5081\n").unwrap();
    let err = h.proxy.reload().unwrap_err().to_string();
    assert!(err.contains("pool.list:2:"), "{err}");
    assert_eq!(h.proxy.dispatcher().len(), 2);
    assert!(h.proxy.dispatcher().find(node2.addr).is_some());
    let _ = std::fs::remove_dir_all(dir);
}

/// A reload whose list_file is a device is refused at once, naming the
/// file and why, and the live pool stays: the file is never read (a read
/// of /dev/zero would not end before memory does).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_from_a_device_is_refused_without_reading_it() {
    let h = Harness::start(Options::default()).await;
    let dir = scratch("reload-dev");
    let config = dir.join("sipedge.toml");
    std::fs::write(
        &config,
        format!(
            "[listen]\nudp = [\"{a}\"]\nadvertise = \"{a}\"\n[dispatcher]\nlist_file = \"/dev/zero\"\n",
            a = h.addr
        ),
    )
    .unwrap();
    h.proxy.set_config_path(config);
    let proxy = h.proxy.clone();
    let reload = tokio::task::spawn_blocking(move || proxy.reload().map_err(|e| e.to_string()));
    let err = tokio::time::timeout(WAIT, reload)
        .await
        .expect("the reload must not read the device")
        .unwrap()
        .unwrap_err();
    assert!(
        err.contains("/dev/zero: cannot read it: not a regular file"),
        "{err}"
    );
    assert_eq!(h.proxy.dispatcher().len(), 2);
    let _ = std::fs::remove_dir_all(dir);
}
