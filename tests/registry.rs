//! The shared call registry (`[dialogs] registry`) against a real
//! `redis-server` started by each test on a free loopback port: the pin on
//! the 2xx and its TTL, the delete after the BYE, a second proxy routing a
//! call it never saw, the re-pin of a takeover, an entry written by
//! someone else (the article's Kamailio script), Redis killed and
//! restarted, a slow Redis that must not stall other calls, drains shared
//! by the instances, and a real Kamailio sharing the registry.
//!
//! To tell the registry from the other ways an in-dialog request finds its
//! node, the calls here are answered with a Contact that names no pool
//! member and the trunk's requests to the second proxy carry no Route of
//! ours: only the registry (or the local table) can route them.

mod support;

#[path = "support/redis.rs"]
mod redis_server;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis_server::RedisServer;
use sipedge::dialog::registry::{Op, Outcome};
use sipedge::proxy::Proxy;
use support::*;
use tokio_util::sync::CancellationToken;

/// What the nodes put in their Contact: no pool member, so a trunk's
/// Request-URI never names the node (TEST-NET-1, never sent to).
const FOREIGN_CONTACT: &str = "sip:fs@192.0.2.10:5080";

const TIMEOUT_MS: u64 = 300;

fn registry_toml(redis: &RedisServer) -> &'static str {
    let text = format!(
        "[dialogs]\nttl = \"1h\"\nregistry = \"{}\"\nregistry_timeout = \"{TIMEOUT_MS}ms\"\n",
        redis.url()
    );
    Box::leak(text.into_boxed_str())
}

fn options(redis: &RedisServer) -> Options {
    Options {
        extra_toml: registry_toml(redis),
        ..Options::default()
    }
}

fn key(call_id: &str) -> String {
    format!("call:{call_id}")
}

/// How many `op`s ended with `outcome` on `proxy`'s registry.
fn count(proxy: &Proxy, op: Op, outcome: Outcome) -> u64 {
    proxy
        .dialogs()
        .registry()
        .expect("a registry is configured")
        .count(op, outcome)
}

/// A second proxy on the same nodes and the same Redis: the other half of
/// a pair, or the same box after a restart.
struct Second {
    proxy: Arc<Proxy>,
    addr: SocketAddr,
    cancel: CancellationToken,
}

impl Drop for Second {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

fn second(h: &Harness, redis: &RedisServer) -> Second {
    let socket = sipedge::transport::bind_udp(
        "127.0.0.1:0".parse().unwrap(),
        sipedge::transport::UdpOptions::default(),
    )
    .expect("bind the second proxy");
    let addr = socket.local_addr().unwrap();
    let nodes: Vec<SocketAddr> = h.nodes.iter().map(|n| n.addr).collect();
    let text = config_toml(addr, &nodes, &options(redis));
    let cfg = sipedge::config::from_toml(&text, "second").expect("second config");
    let proxy = Proxy::new(cfg, vec![socket]).expect("second proxy");
    let cancel = CancellationToken::new();
    tokio::spawn(proxy.clone().run(cancel.clone()));
    Second {
        proxy,
        addr,
        cancel,
    }
}

/// A call from the trunk through `h`, answered 200 by node 0 with
/// [`FOREIGN_CONTACT`], and ACKed.
async fn establish_call(h: &Harness) -> Established {
    let mut call = h.trunk_call();
    h.trunk.send(call.invite(SDP_AUDIO), h.addr).await;
    h.trunk.recv_response(100).await;
    let inv = h.nodes[0].recv_request("INVITE").await;
    let mut node_side = Dialog::uas(&h.nodes[0], &inv, &unique("fs-"));
    node_side.local_contact = FOREIGN_CONTACT.to_owned();
    h.nodes[0]
        .send(node_side.answer(&inv, 200, "OK", Some(SDP_NODE)), inv.from)
        .await;
    let ok = h.trunk.recv_response(200).await;
    call.learn_2xx(&ok);
    assert_eq!(call.remote_target, FOREIGN_CONTACT);
    let (ack, _) = call.request("ACK", None);
    h.trunk.send(ack, h.addr).await;
    h.nodes[0].recv_request("ACK").await;
    Established {
        call,
        node_side,
        node: 0,
    }
}

/// The whole call on one proxy: INVITE, 200, ACK, BYE, 200.
async fn full_call(h: &Harness) {
    let Established {
        mut call,
        node_side,
        node,
    } = establish_call(h).await;
    let (bye, _) = call.request("BYE", None);
    h.trunk.send(bye, h.addr).await;
    let bye = h.nodes[node].recv_request("BYE").await;
    h.nodes[node]
        .send(node_side.answer(&bye, 200, "OK", None), bye.from)
        .await;
    h.trunk.recv_response(200).await;
}

/// The trunk's in-dialog `method` for `call`, without our Route (sent to
/// a proxy that is not in the call's route set).
fn unrouted(call: &mut Dialog, method: &str) -> Vec<u8> {
    call.route.clear();
    call.request(method, None).0
}

/// A BYE from `peer` for a call it has with the pool under `call_id`,
/// without Route, to [`FOREIGN_CONTACT`].
fn bye_for(peer: &Peer, call_id: &str) -> Vec<u8> {
    let mut d = Dialog::uac(peer, FOREIGN_CONTACT);
    d.call_id = call_id.to_owned();
    d.remote_tag = Some("fs-tag".to_owned());
    d.request("BYE", None).0
}

/// `node` answers the BYE it gets 200, and `peer` receives that 200.
async fn bye_answered(h: &Harness, node: usize, peer: &Peer) {
    let bye = h.nodes[node].recv_request("BYE").await;
    h.nodes[node]
        .send(reply(&bye, 200, "OK", None), bye.from)
        .await;
    peer.recv_response(200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_2xx_writes_the_node_with_the_ttl_and_the_bye_deletes_it() {
    let redis = RedisServer::start();
    let h = Harness::start(options(&redis)).await;
    let Established {
        mut call,
        node_side,
        ..
    } = establish_call(&h).await;
    let want = format!("sip:{}", h.nodes[0].addr);
    eventually("the 2xx's SET", || {
        redis.get(&key(&call.call_id)).as_deref() == Some(want.as_str())
    })
    .await;
    let ttl = redis.ttl(&key(&call.call_id));
    assert!((3500..=3600).contains(&ttl), "EX [dialogs] ttl: {ttl}");
    // A write is counted once its answer is back, just after Redis has it.
    eventually("the SET counted", || {
        count(&h.proxy, Op::Set, Outcome::Ok) == 1
    })
    .await;
    // The instance that set the call up reads nothing: its table has it.
    let (bye, _) = call.request("BYE", None);
    h.trunk.send(bye, h.addr).await;
    let bye = h.nodes[0].recv_request("BYE").await;
    h.nodes[0]
        .send(node_side.answer(&bye, 200, "OK", None), bye.from)
        .await;
    h.trunk.recv_response(200).await;
    eventually("the BYE's DEL", || redis.get(&key(&call.call_id)).is_none()).await;
    eventually("the DEL counted", || {
        count(&h.proxy, Op::Del, Outcome::Ok) == 1
    })
    .await;
    let total_gets: u64 = Outcome::ALL
        .iter()
        .map(|&o| count(&h.proxy, Op::Get, o))
        .sum();
    assert_eq!(total_gets, 0, "no read for a call in the local table");
    let text = h.proxy.metrics().encode();
    assert!(
        text.contains("sipedge_registry_operations_total{op=\"set\",result=\"ok\"} 1"),
        "{text}"
    );
    assert!(text.contains("sipedge_registry_up 1"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_proxy_routes_the_requests_of_a_call_it_never_saw() {
    let redis = RedisServer::start();
    let h = Harness::start(options(&redis)).await;
    let b = second(&h, &redis);
    let Established {
        mut call,
        node_side,
        ..
    } = establish_call(&h).await;
    eventually("the 2xx's SET", || redis.get(&key(&call.call_id)).is_some()).await;

    // A re-INVITE and its ACK, then the BYE, all through the other proxy.
    h.trunk.send(unrouted(&mut call, "INVITE"), b.addr).await;
    h.trunk.recv_response(100).await;
    let reinv = h.nodes[0].recv_request("INVITE").await;
    h.nodes[0]
        .send(
            node_side.answer(&reinv, 200, "OK", Some(SDP_T38)),
            reinv.from,
        )
        .await;
    h.trunk.recv_response(200).await;
    h.trunk.send(unrouted(&mut call, "ACK"), b.addr).await;
    h.nodes[0].recv_request("ACK").await;
    h.trunk.send(unrouted(&mut call, "BYE"), b.addr).await;
    let bye = h.nodes[0].recv_request("BYE").await;
    assert_eq!(bye.request_uri(), FOREIGN_CONTACT);
    h.nodes[0]
        .send(node_side.answer(&bye, 200, "OK", None), bye.from)
        .await;
    h.trunk.recv_response(200).await;
    eventually("the other proxy's DEL", || {
        redis.get(&key(&call.call_id)).is_none()
    })
    .await;
    assert_eq!(count(&b.proxy, Op::Get, Outcome::Ok), 3);
    eventually("the DEL counted", || {
        count(&b.proxy, Op::Del, Outcome::Ok) == 1
    })
    .await;
    assert_eq!(
        b.proxy.dialogs().len(),
        0,
        "a read is not kept: a takeover elsewhere would make it stale"
    );

    // After the DEL nobody knows the call: 481.
    h.trunk.send(unrouted(&mut call, "BYE"), b.addr).await;
    h.trunk.recv_response(481).await;
    assert_eq!(count(&b.proxy, Op::Get, Outcome::Miss), 1);
    h.nodes[0].expect_nothing(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_re_pin_is_written_and_the_other_proxy_follows_it() {
    let redis = RedisServer::start();
    let h = Harness::start(options(&redis)).await;
    let b = second(&h, &redis);
    let Established {
        mut call,
        node_side,
        ..
    } = establish_call(&h).await;
    let (n0, n1) = (&h.nodes[0], &h.nodes[1]);
    let k = key(&call.call_id);
    eventually("the 2xx's SET", || redis.get(&k).is_some()).await;

    // Node 1 recovered the call (sofia recover) and re-INVITEs the trunk
    // through the proxy that set it up.
    let mut recovered = node_side.clone();
    recovered.local = n1.addr;
    let (reinvite, _) = recovered.request("INVITE", Some(("application/sdp", SDP_NODE.as_bytes())));
    n1.send(reinvite, h.addr).await;
    let reinv = h.trunk.recv_request("INVITE").await;
    h.trunk
        .send(call.answer(&reinv, 200, "OK", Some(SDP_AUDIO)), h.addr)
        .await;
    n1.recv_until(|r| r.status() == Some(200)).await;
    let want = format!("sip:{}", n1.addr);
    eventually("the re-pin's SET", || {
        redis.get(&k).as_deref() == Some(want.as_str())
    })
    .await;
    let ttl = redis.ttl(&k);
    assert!(
        (3500..=3600).contains(&ttl),
        "a re-pin renews the EX: {ttl}"
    );

    // The other proxy sends the trunk's BYE to node 1, not node 0.
    h.trunk.send(unrouted(&mut call, "BYE"), b.addr).await;
    let bye = n1.recv_request("BYE").await;
    n1.send(recovered.answer(&bye, 200, "OK", None), bye.from)
        .await;
    h.trunk.recv_response(200).await;
    n0.expect_nothing(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_taking_over_through_the_other_proxy_is_written_too() {
    let redis = RedisServer::start();
    let h = Harness::start(options(&redis)).await;
    let b = second(&h, &redis);
    let Established {
        mut call,
        node_side,
        ..
    } = establish_call(&h).await;
    let n1 = &h.nodes[1];
    let k = key(&call.call_id);
    eventually("the 2xx's SET", || redis.get(&k).is_some()).await;

    // Node 1's re-INVITE reaches the proxy that never saw the call.
    let mut recovered = node_side.clone();
    recovered.local = n1.addr;
    recovered.route.clear();
    recovered.remote_target = format!("sip:+15551230000@{}", h.trunk.addr);
    let (reinvite, _) = recovered.request("INVITE", Some(("application/sdp", SDP_NODE.as_bytes())));
    n1.send(reinvite, b.addr).await;
    let reinv = h.trunk.recv_request("INVITE").await;
    h.trunk
        .send(call.answer(&reinv, 200, "OK", Some(SDP_AUDIO)), b.addr)
        .await;
    n1.recv_until(|r| r.status() == Some(200)).await;
    let want = format!("sip:{}", n1.addr);
    eventually("the takeover's SET from the other proxy", || {
        redis.get(&k).as_deref() == Some(want.as_str())
    })
    .await;
    assert_eq!(
        count(&b.proxy, Op::Get, Outcome::Miss) + count(&b.proxy, Op::Get, Outcome::Ok),
        0,
        "a node's request needs no read"
    );
    // A third instance (a restart) now routes the BYE to node 1.
    let c = second(&h, &redis);
    h.trunk.send(unrouted(&mut call, "BYE"), c.addr).await;
    bye_answered(&h, 1, &h.trunk).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_written_by_kamailio_routes_the_call_and_a_foreign_one_is_ignored() {
    let redis = RedisServer::start();
    let h = Harness::start(options(&redis)).await;
    let n1 = h.nodes[1].addr;
    // The article's script: SET call:<Call-ID> $du EX 7200, with the
    // forms a dispatcher URI takes there.
    for value in [format!("sip:{n1}"), format!("sip:{n1};transport=udp")] {
        let call_id = unique("kam-");
        redis.set(&key(&call_id), &value, 7200);
        h.trunk.send(bye_for(&h.trunk, &call_id), h.addr).await;
        bye_answered(&h, 1, &h.trunk).await;
        eventually("the DEL, as Kamailio's BYE handling would", || {
            redis.get(&key(&call_id)).is_none()
        })
        .await;
    }
    assert_eq!(count(&h.proxy, Op::Get, Outcome::Ok), 2);

    // An entry naming no pool member is no entry: 481, counted.
    let call_id = unique("kam-");
    redis.set(&key(&call_id), "sip:192.0.2.66:5060", 7200);
    h.trunk.send(bye_for(&h.trunk, &call_id), h.addr).await;
    h.trunk.recv_response(481).await;
    assert_eq!(count(&h.proxy, Op::Get, Outcome::Foreign), 1);
    for n in &h.nodes {
        n.expect_nothing(QUIET).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_s_own_call_is_written_on_the_trunk_s_2xx() {
    let redis = RedisServer::start();
    let h = Harness::start(options(&redis)).await;
    let b = second(&h, &redis);
    let n0 = &h.nodes[0];
    // Node 0 calls out through the first proxy.
    let mut out = Dialog::uac(n0, &format!("sip:+15557654321@{}", h.trunk.addr));
    out.local_contact = FOREIGN_CONTACT.to_owned();
    n0.send(out.invite(SDP_NODE), h.addr).await;
    let inv = h.trunk.recv_request("INVITE").await;
    let mut trunk_side = Dialog::uas(&h.trunk, &inv, &unique("trunk-"));
    h.trunk
        .send(
            trunk_side.answer(&inv, 200, "OK", Some(SDP_AUDIO)),
            inv.from,
        )
        .await;
    n0.recv_until(|r| r.status() == Some(200)).await;
    let want = format!("sip:{}", n0.addr);
    eventually("the SET on the trunk's 2xx", || {
        redis.get(&key(&out.call_id)).as_deref() == Some(want.as_str())
    })
    .await;
    // The trunk hangs up through the other proxy.
    trunk_side.route.clear();
    let (bye, _) = trunk_side.request("BYE", None);
    h.trunk.send(bye, b.addr).await;
    let bye = n0.recv_request("BYE").await;
    n0.send(reply(&bye, 200, "OK", None), bye.from).await;
    h.trunk.recv_response(200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_run_fails_no_call_and_comes_back_by_itself() {
    let mut redis = RedisServer::start();
    let h = Harness::start(options(&redis)).await;
    let b = second(&h, &redis);
    // Both proxies are connected: a call through one, its BYE through the
    // other.
    let Established { mut call, .. } = establish_call(&h).await;
    eventually("the 2xx's SET", || redis.get(&key(&call.call_id)).is_some()).await;
    h.trunk.send(unrouted(&mut call, "BYE"), b.addr).await;
    bye_answered(&h, 0, &h.trunk).await;

    redis.kill();
    for _ in 0..5 {
        full_call(&h).await;
    }
    let failed = |p: &Proxy, op| {
        count(p, op, Outcome::Error)
            + count(p, op, Outcome::Timeout)
            + count(p, op, Outcome::Dropped)
    };
    eventually("the failed writes counted", || {
        failed(&h.proxy, Op::Set) == 5 && failed(&h.proxy, Op::Del) == 5
    })
    .await;
    assert!(!h.proxy.dialogs().registry().unwrap().is_up());
    assert!(h.proxy.metrics().encode().contains("sipedge_registry_up 0"));
    // A read while Redis is down is no entry.
    let lost = unique("lost-");
    h.trunk.send(bye_for(&h.trunk, &lost), b.addr).await;
    h.trunk.recv_response(481).await;
    assert_eq!(failed(&b.proxy, Op::Get), 1);

    redis.restart();
    // The first read after Redis is back finds the entry (no warm-up).
    let call_id = unique("back-");
    redis.set(&key(&call_id), &format!("sip:{}", h.nodes[1].addr), 7200);
    h.trunk.send(bye_for(&h.trunk, &call_id), b.addr).await;
    bye_answered(&h, 1, &h.trunk).await;
    // And writes go through again.
    let Established { call, .. } = establish_call(&h).await;
    eventually("a SET after the restart", || {
        redis.get(&key(&call.call_id)).is_some()
    })
    .await;
    // (Marked once the writer has its answer, just after Redis has it.)
    eventually("the registry is up again", || {
        h.proxy.dialogs().registry().unwrap().is_up()
    })
    .await;
    assert!(h.proxy.metrics().encode().contains("sipedge_registry_up 1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_redis_stalls_no_other_call() {
    const SLEEP_S: u64 = 4;
    let redis = RedisServer::start();
    let h = Harness::start(options(&redis)).await;
    let b = second(&h, &redis);
    let trunk2 = Peer::bind("trunk2").await;
    let call_id = unique("slow-");
    redis.set(&key(&call_id), &format!("sip:{}", h.nodes[1].addr), 7200);

    // Another client puts Redis to sleep.
    let mut sleeper = redis.conn();
    let asleep = std::thread::spawn(move || {
        redis::cmd("DEBUG")
            .arg("SLEEP")
            .arg(SLEEP_S)
            .query::<()>(&mut sleeper)
    });
    eventually("Redis is asleep", || {
        let Ok(mut c) = redis::Client::open(redis.url())
            .unwrap()
            .get_connection_with_timeout(Duration::from_millis(100))
        else {
            return true;
        };
        let _ = c.set_read_timeout(Some(Duration::from_millis(100)));
        redis::cmd("PING").query::<String>(&mut c).is_err()
    })
    .await;

    // The request that needs a read gives up after the timeout and is
    // routed as if there were no entry (481 here: no hint, no pool
    // member in the Request-URI)...
    let started = Instant::now();
    trunk2.send(bye_for(&trunk2, &call_id), b.addr).await;
    // ...while whole calls that need no read go on.
    full_call(&h).await;
    full_call(&h).await;
    assert!(!asleep.is_finished(), "the calls waited for Redis");
    trunk2.recv_response(481).await;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(TIMEOUT_MS - 50),
        "481 before the timeout: {waited:?}"
    );
    assert!(!asleep.is_finished(), "the read waited for Redis");
    assert_eq!(count(&b.proxy, Op::Get, Outcome::Timeout), 1);
    asleep.join().unwrap().expect("DEBUG SLEEP");
    // Awake again: the same request is routed by the entry.
    trunk2.send(bye_for(&trunk2, &call_id), b.addr).await;
    bye_answered(&h, 1, &trunk2).await;
}

// ---------------------------------------------------------------------------
// Drains that reach every proxy
// ---------------------------------------------------------------------------

/// `proxy`'s admin listener on a loopback port, and a `sipedge ctl`
/// client for it.
async fn admin(proxy: &Arc<Proxy>) -> (sipedge::admin::ctl::Client, CancellationToken) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let cancel = CancellationToken::new();
    let backend: Arc<dyn sipedge::admin::Backend> = proxy.clone();
    tokio::spawn(sipedge::admin::serve(listener, backend, cancel.clone()));
    (sipedge::admin::ctl::Client::new(&url).unwrap(), cancel)
}

/// The FLAGS `dispatcher.list` shows for `uri` in set 1.
async fn flags(ctl: &sipedge::admin::ctl::Client, uri: &str) -> String {
    let list = ctl.list().await.expect("dispatcher.list");
    list.records
        .iter()
        .filter(|r| r.set.id == 1)
        .flat_map(|r| &r.set.targets)
        .find(|t| t.dest.uri == uri)
        .unwrap_or_else(|| panic!("{uri} not listed"))
        .dest
        .flags
        .clone()
}

/// Polls `dispatcher.list` until `uri` shows `want` (within [`SETTLE`]).
async fn flags_become(ctl: &sipedge::admin::ctl::Client, uri: &str, want: &str) -> Duration {
    let started = Instant::now();
    loop {
        let got = flags(ctl, uri).await;
        if got == want {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < SETTLE,
            "{uri} still {got}, not {want}, after {SETTLE:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_on_one_proxy_reaches_the_other() {
    let redis = RedisServer::start();
    let h = Harness::start(options(&redis)).await;
    let b = second(&h, &redis);
    let (ctl_a, _stop_a) = admin(&h.proxy).await;
    let (ctl_b, _stop_b) = admin(&b.proxy).await;
    let n0 = format!("sip:{}", h.nodes[0].addr);
    assert_eq!(flags(&ctl_b, &n0).await, "AP");
    eventually("both instances subscribed", || {
        count(&h.proxy, Op::State, Outcome::Ok) >= 1 && count(&b.proxy, Op::State, Outcome::Ok) >= 1
    })
    .await;

    // Drain node 0 on A: B stops sending it new calls within a second.
    ctl_a.set_state("d", 1, &n0).await.expect("set_state on A");
    assert_eq!(flags(&ctl_a, &n0).await, "DX");
    let took = flags_become(&ctl_b, &n0, "DX").await;
    assert!(took < Duration::from_secs(1), "applied on B after {took:?}");
    let mut call = h.trunk_call();
    h.trunk.send(call.invite(SDP_AUDIO), b.addr).await;
    h.trunk.recv_response(100).await;
    let inv = h.nodes[1].recv_request("INVITE").await;
    h.nodes[1]
        .send(reply(&inv, 486, "Busy Here", Some("x")), inv.from)
        .await;
    h.trunk.recv_response(486).await;
    h.nodes[0].expect_nothing(QUIET).await;

    // A third instance started now (a restart) catches up from Redis.
    let c = second(&h, &redis);
    let (ctl_c, _stop_c) = admin(&c.proxy).await;
    flags_become(&ctl_c, &n0, "DX").await;

    // Undrain on B: A and the third follow.
    ctl_b.set_state("ap", 1, &n0).await.expect("set_state on B");
    flags_become(&ctl_a, &n0, "AP").await;
    flags_become(&ctl_c, &n0, "AP").await;

    // Every operator command travels, as if given on each instance (the
    // probes there then do with the node what they find); probe results
    // themselves never do.
    let n1 = format!("sip:{}", h.nodes[1].addr);
    ctl_a
        .set_state("ip", 1, &n1)
        .await
        .expect("set_state i on A");
    flags_become(&ctl_b, &n1, "IP").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_made_while_an_instance_was_cut_off_reaches_it_when_redis_is_back() {
    let mut redis = RedisServer::start();
    let h = Harness::start(options(&redis)).await;
    let (ctl_a, _stop_a) = admin(&h.proxy).await;
    let n1 = format!("sip:{}", h.nodes[1].addr);
    eventually("subscribed", || {
        count(&h.proxy, Op::State, Outcome::Ok) >= 1
    })
    .await;
    redis.kill();
    redis.restart();
    // Someone else (another instance) drained node 1 meanwhile.
    let mut c = redis.conn();
    redis::cmd("SET")
        .arg(format!("call:dispatcher:1:{n1}"))
        .arg("d")
        .query::<()>(&mut c)
        .unwrap();
    flags_become(&ctl_a, &n1, "DX").await;
    // And a live one after the reconnect.
    redis::cmd("PUBLISH")
        .arg("call:dispatcher")
        .arg(format!("1 1 ap {n1}"))
        .query::<()>(&mut c)
        .unwrap();
    flags_become(&ctl_a, &n1, "AP").await;
}

// ---------------------------------------------------------------------------
// Interop with the Kamailio script sipedge replaces
// ---------------------------------------------------------------------------

#[path = "support/kamailio.rs"]
mod kamailio;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kamailio_and_sipedge_share_one_registry_both_ways() {
    let redis = RedisServer::start();
    let h = Harness::start(options(&redis)).await;
    let nodes: Vec<SocketAddr> = h.nodes.iter().map(|n| n.addr).collect();
    let kam = kamailio::Kamailio::start(&nodes, redis.addr.port());

    // A call set up through Kamailio (its STORE_NODE on the 200)...
    let mut call = Dialog::uac(&h.trunk, &format!("sip:fax@{}", kam.addr));
    h.trunk.send(call.invite(SDP_AUDIO), kam.addr).await;
    let inv = h.nodes[0].recv_until_request("INVITE", WAIT).await;
    let mut node_side = Dialog::uas(&h.nodes[0], &inv, &unique("fs-"));
    node_side.local_contact = FOREIGN_CONTACT.to_owned();
    h.nodes[0]
        .send(node_side.answer(&inv, 200, "OK", Some(SDP_NODE)), inv.from)
        .await;
    let ok = h
        .trunk
        .recv_until(|r| r.status() == Some(200))
        .await
        .pop()
        .unwrap();
    call.learn_2xx(&ok);
    let want = format!("sip:{}", h.nodes[0].addr);
    eventually("Kamailio's SET", || {
        redis.get(&key(&call.call_id)).as_deref() == Some(want.as_str())
    })
    .await;
    // ...has its BYE routed by sipedge, which never saw it.
    h.trunk.send(unrouted(&mut call, "BYE"), h.addr).await;
    bye_answered(&h, 0, &h.trunk).await;
    eventually("sipedge's DEL", || redis.get(&key(&call.call_id)).is_none()).await;

    // A call set up through sipedge has its BYE routed by Kamailio's
    // ROUTE_TO_FS_NODE.
    let Established { mut call, .. } = establish_call(&h).await;
    eventually("sipedge's SET", || {
        redis.get(&key(&call.call_id)).as_deref() == Some(want.as_str())
    })
    .await;
    h.trunk.send(unrouted(&mut call, "BYE"), kam.addr).await;
    let bye = h.nodes[0].recv_request("BYE").await;
    h.nodes[0]
        .send(reply(&bye, 200, "OK", None), bye.from)
        .await;
    h.trunk.recv_until(|r| r.status() == Some(200)).await;
    // And one nobody stored gets Kamailio's 481, as sipedge's.
    let lost = unique("lost-");
    h.trunk.send(bye_for(&h.trunk, &lost), kam.addr).await;
    h.trunk.recv_until(|r| r.status() == Some(481)).await;
    h.trunk.send(bye_for(&h.trunk, &lost), h.addr).await;
    h.trunk.recv_response(481).await;
    drop(kam);
}
