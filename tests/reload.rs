//! `dispatcher.reload`: the destinations are re-read from the
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

/// Runs one RPC method against the proxy through the one dispatch table
/// (what JSON-RPC, kamcmd and `sipedge ctl` all reach); the result as
/// JSON, or the fault's message and data.
fn rpc(h: &Harness, method: &str, params: serde_json::Value) -> Result<serde_json::Value, String> {
    let params = params.as_array().cloned().unwrap_or_default();
    sipedge::admin::rpc::dispatch(method, &params, &*h.proxy)
        .map(|answer| serde_json::to_value(answer).unwrap())
        .map_err(|e| {
            let data = e.data.as_ref().and_then(|d| d.as_str()).unwrap_or_default();
            format!("{}: {data}", e.message)
        })
}

/// `dispatcher.add` and `dispatcher.remove`: a node added in
/// memory takes new calls once active (an inactive one is probed back);
/// a removed node gets no new call but its established call's BYE still
/// reaches it, as the dialog pins it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dispatcher_add_and_remove_change_the_pool_in_memory() {
    let h = Harness::start(Options::default()).await;
    let mut est = establish(&h).await; // a call on node 0
    let node2 = Peer::bind("node2").await;

    // Inactive and probing (flags 9): probes bring it in.
    let added = rpc(
        &h,
        "dispatcher.add",
        serde_json::json!([1, format!("sip:{}", node2.addr), 9, 50, "duid=n2"]),
    );
    assert_eq!(added.unwrap(), "Ok. Dispatcher destination added.");
    let pool = h.proxy.dispatcher();
    let i = pool.find(node2.addr).expect("added");
    assert_eq!(pool.len(), 3);
    assert_eq!(pool.priority(i), 50);
    assert_eq!(pool.status(i).state, State::Inactive);
    // Probed at once, not a probe interval later.
    let probe = node2.recv_request("OPTIONS").await;
    node2.send(reply(&probe, 200, "OK", None), probe.from).await;
    eventually("the added node is probed active", || {
        let pool = h.proxy.dispatcher();
        pool.find(node2.addr)
            .is_some_and(|i| pool.status(i).state == State::Active)
    })
    .await;
    // The others kept their state (node 0's call is still pinned there).
    assert!(h.proxy.dispatcher().find(h.nodes[0].addr).is_some());

    // Adding it again, or a host name, changes nothing.
    let again = rpc(
        &h,
        "dispatcher.add",
        serde_json::json!([1, format!("sip:{}", node2.addr)]),
    );
    assert!(
        again
            .as_ref()
            .unwrap_err()
            .starts_with("Adding dispatcher dst failed: set 1 already has"),
        "{again:?}"
    );
    // (A host name is resolved first: tests/pool_names.rs.)
    assert_eq!(h.proxy.dispatcher().len(), 3);

    // Nodes 0 and 1 leave: new calls go to the added node.
    for n in &h.nodes {
        let removed = rpc(
            &h,
            "dispatcher.remove",
            serde_json::json!([1, format!("sip:{}", n.addr)]),
        );
        assert_eq!(removed.unwrap(), "Ok. Dispatcher destination removed.");
    }
    assert_eq!(h.proxy.dispatcher().len(), 1);
    let mut call = h.trunk_call();
    h.trunk.send(call.invite(SDP_AUDIO), h.addr).await;
    let inv = node2.recv_request("INVITE").await;
    assert_eq!(inv.call_id(), call.call_id);
    // The call already on node 0 keeps going there.
    let (bye, _) = est.call.request("BYE", None);
    h.trunk.send(bye, h.addr).await;
    let got = h.nodes[0].recv_request("BYE").await;
    assert_eq!(got.call_id(), est.call.call_id);

    // Not there, or the last one of the set: refused.
    let gone = rpc(
        &h,
        "dispatcher.remove",
        serde_json::json!([1, format!("sip:{}", h.nodes[0].addr)]),
    );
    assert_eq!(
        gone.unwrap_err(),
        format!(
            "Removing dispatcher dst failed: destination sip:{} not found in set 1",
            h.nodes[0].addr
        )
    );
    let last = rpc(
        &h,
        "dispatcher.remove",
        serde_json::json!([1, format!("sip:{}", node2.addr)]),
    );
    assert!(last.unwrap_err().contains("last destination"));
    assert_eq!(h.proxy.dispatcher().len(), 1);

    // Another set: created by add, gone with its last node.
    let other = Peer::bind("other").await.answering_probes();
    let uri = format!("sip:{}", other.addr);
    rpc(&h, "dispatcher.add", serde_json::json!([7, uri, 0])).unwrap();
    assert!(h.proxy.pool().sets().any(|(id, _, _)| id == 7));
    rpc(&h, "dispatcher.remove", serde_json::json!([7, uri])).unwrap();
    assert!(!h.proxy.pool().sets().any(|(id, _, _)| id == 7));
}

/// A reload applies every column of the nodes that stay: a
/// changed flags column starts the node from its new flags (here 0 -> 4,
/// disabled, then back), a changed priority reorders; a node whose
/// columns did not change keeps its state (an operator's drain).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_the_changed_columns_of_nodes_that_stay() {
    let h = Harness::start(Options::default()).await;
    let dir = scratch("reload-columns");
    let list = dir.join("pool.list");
    let config = dir.join("sipedge.toml");
    std::fs::write(
        &config,
        format!(
            "[listen]\nudp = [\"{a}\"]\nadvertise = \"{a}\"\n[dispatcher]\nalgorithm = \"priority\"\n\
             list_file = \"pool.list\"\n",
            a = h.addr
        ),
    )
    .unwrap();
    let (n0, n1) = (h.nodes[0].addr, h.nodes[1].addr);
    let write = |f0: u32, p0: i32, f1: u32| {
        std::fs::write(&list, format!("1 sip:{n0} {f0} {p0}\n1 sip:{n1} {f1} 5\n")).unwrap();
    };
    h.proxy.set_config_path(config.clone());
    write(8, 10, 8);
    h.proxy.reload().expect("reload");
    // Node 1 drained by the operator.
    let pool = h.proxy.dispatcher();
    pool.set_state(pool.find(n1).unwrap(), "d".parse().unwrap());

    // Node 0's flags 8 -> 12 (disabled and probed), priority 10 -> 1;
    // node 1 unchanged.
    write(12, 1, 8);
    h.proxy.reload().expect("reload");
    let pool = h.proxy.dispatcher();
    let (i0, i1) = (pool.find(n0).unwrap(), pool.find(n1).unwrap());
    assert_eq!(pool.status(i0).flags().as_str(), "DP", "the new flags");
    assert_eq!(pool.priority(i0), 1);
    assert_eq!(pool.status(i1).state, State::Disabled, "its drain stays");

    // And back: 12 -> 8 makes node 0 active again.
    write(8, 1, 8);
    h.proxy.reload().expect("reload");
    let pool = h.proxy.dispatcher();
    assert_eq!(pool.status(pool.find(n0).unwrap()).flags().as_str(), "AP");
    assert_eq!(pool.status(pool.find(n1).unwrap()).state, State::Disabled);
    let _ = std::fs::remove_dir_all(dir);
}
