//! Forged ICMP over real sockets: ICMP port-unreachable
//! errors built by hand and sent through a raw socket, quoting a datagram
//! sipedge sent to a node, while calls go on. Raw sockets need root (or
//! CAP_NET_RAW), which the tests and CI have; elsewhere each test says
//! loudly that it was skipped.

mod support;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sipedge::dispatcher::health::State;
use sipedge::metrics::IcmpResult;
use socket2::{Domain, Protocol, Socket, Type};
use support::*;

/// Where the forged errors come from: a loopback address that is not the
/// nodes' (127.0.0.1).
const STRANGER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 9);

/// The forger's rate and how long it keeps at it.
const RATE: u32 = 2_000;
const FLOOD: Duration = Duration::from_secs(2);

/// A raw ICMP socket bound to `from`, or `None` (said loudly) without the
/// privilege.
fn raw_icmp(from: Ipv4Addr, test: &str) -> Option<Socket> {
    match Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4)) {
        Ok(s) => {
            s.bind(&SocketAddr::from((from, 0)).into())
                .expect("bind the raw socket");
            Some(s)
        }
        Err(e) => {
            eprintln!(
                "\n*** SKIPPED {test}: a raw ICMP socket needs root or CAP_NET_RAW ({e}) ***\n"
            );
            None
        }
    }
}

/// The Internet checksum (RFC 1071).
fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An ICMP destination unreachable (type 3), port unreachable (code 3),
/// quoting the IPv4 and UDP headers of a datagram from `sent_from` to
/// `sent_to` and the start of a SIP request, as a host's kernel would.
fn port_unreachable(sent_from: SocketAddrV4, sent_to: SocketAddrV4) -> Vec<u8> {
    let payload = b"INVITE s";
    let udp_len = 8 + payload.len() as u16;
    let mut ip = vec![0x45, 0, 0, 0, 0x12, 0x34, 0x40, 0, 64, 17, 0, 0];
    ip[2..4].copy_from_slice(&(20 + udp_len).to_be_bytes());
    ip.extend_from_slice(&sent_from.ip().octets());
    ip.extend_from_slice(&sent_to.ip().octets());
    let sum = checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    let mut icmp = vec![3, 3, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(&ip);
    icmp.extend_from_slice(&sent_from.port().to_be_bytes());
    icmp.extend_from_slice(&sent_to.port().to_be_bytes());
    icmp.extend_from_slice(&udp_len.to_be_bytes());
    icmp.extend_from_slice(&[0, 0]);
    icmp.extend_from_slice(payload);
    let sum = checksum(&icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    icmp
}

fn v4(a: SocketAddr) -> SocketAddrV4 {
    match a {
        SocketAddr::V4(a) => a,
        SocketAddr::V6(_) => panic!("an IPv4 address expected: {a}"),
    }
}

/// Sends `RATE` errors a second for `FLOOD` from `socket`, each quoting a
/// datagram from the proxy to one of `nodes` in turn, on a thread. Returns
/// how many it sent.
fn flood(
    socket: Socket,
    proxy: SocketAddr,
    nodes: Vec<SocketAddr>,
) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let packets: Vec<Vec<u8>> = nodes
            .iter()
            .map(|&n| port_unreachable(v4(proxy), v4(n)))
            .collect();
        let to = SocketAddr::from((*v4(proxy).ip(), 0)).into();
        let start = Instant::now();
        let mut sent = 0u64;
        while start.elapsed() < FLOOD {
            // Paced by the clock: `sent` keeps up with RATE per second.
            let due = (start.elapsed().as_secs_f64() * f64::from(RATE)) as u64;
            while sent < due {
                let p = &packets[sent as usize % packets.len()];
                socket.send_to(p, &to).expect("send a forged ICMP error");
                sent += 1;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        sent
    })
}

/// Serves `node` like a FreeSWITCH that answers at once: 200 to each
/// INVITE (no 100, so the INVITE leg stays open to ICMP failover until the
/// final; the same tag to a retransmission), 200 to the probes (counted
/// in `probes`), to CANCEL and BYE, nothing to the ACK.
fn serve(node: Peer, probes: Arc<AtomicUsize>, stop: Arc<AtomicBool>) {
    tokio::spawn(async move {
        let mut tags = std::collections::HashMap::new();
        while !stop.load(Ordering::Relaxed) {
            let Some(r) = node.recv_within(Duration::from_millis(200)).await else {
                continue;
            };
            let answer = match r.method().as_deref() {
                Some("OPTIONS") => {
                    probes.fetch_add(1, Ordering::Relaxed);
                    reply(&r, 200, "OK", None)
                }
                Some("INVITE") => {
                    let tag = tags.entry(r.branch()).or_insert_with(|| unique("fs-"));
                    reply(&r, 200, "OK", Some(tag))
                }
                Some("CANCEL") | Some("BYE") => reply(&r, 200, "OK", None),
                _ => continue,
            };
            node.send(answer, r.from).await;
        }
    });
}

/// A proxy with two nodes served by [`serve`]; probes every 10 s (the
/// first round at start), so any other probe during a test is urgent.
async fn start() -> (
    Harness,
    Vec<SocketAddr>,
    Vec<Arc<AtomicUsize>>,
    Arc<AtomicBool>,
) {
    let mut h = Harness::start(Options {
        nodes_answer_probes: false,
        extra_toml: "[probe]\ninterval = \"10s\"\ntimeout = \"500ms\"\n",
        ..Options::default()
    })
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let addrs: Vec<SocketAddr> = h.nodes.iter().map(|n| n.addr).collect();
    let mut counts = Vec::new();
    for node in h.nodes.drain(..) {
        let c = Arc::new(AtomicUsize::new(0));
        serve(node, c.clone(), stop.clone());
        counts.push(c);
    }
    // The first round answered: whatever comes later is urgent.
    let pool = h.proxy.dispatcher();
    eventually("the first probe round is answered", || {
        counts.iter().all(|c| c.load(Ordering::Relaxed) >= 1) && h.proxy.ready().is_ok()
    })
    .await;
    assert!((0..pool.len()).all(|i| pool.status(i).state == State::Active));
    (h, addrs, counts, stop)
}

/// New calls a second while an ICMP flood runs: a busy trunk's rate (on
/// a debug build sharing two cores with the flood).
const CALL_RATE: u32 = 100;

/// Places calls one after another, at most [`CALL_RATE`] a second, until
/// `flood` is done; each must be answered 200. Returns how many.
async fn calls_during(h: &Harness, flood: &std::thread::JoinHandle<u64>) -> usize {
    let mut n = 0;
    let mut pace = tokio::time::interval(Duration::from_secs(1) / CALL_RATE);
    while !flood.is_finished() || n < 5 {
        pace.tick().await;
        n += call(h).await;
    }
    n
}

/// ICMP errors from an address that is not the node, quoting datagrams
/// sipedge sent to both nodes, 2,000 a second for 2 s while calls go on:
/// every call is answered 200 by the node it went to first, both nodes
/// stay active, no urgent probe goes out, and every error is counted as
/// forged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_icmp_from_another_address_is_ignored_and_counted() {
    let Some(raw) = raw_icmp(
        STRANGER,
        "forged_icmp_from_another_address_is_ignored_and_counted",
    ) else {
        return;
    };
    let (h, nodes, probes, stop) = start().await;
    let before: Vec<usize> = probes.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    let forger = flood(raw, h.addr, nodes.clone());
    let calls = calls_during(&h, &forger).await;
    let sent = forger.join().unwrap();
    let m = h.proxy.metrics();
    eventually("every forged error is read and counted", || {
        m.icmp_errors(IcmpResult::Forged) >= sent * 9 / 10
    })
    .await;
    let pool = h.proxy.dispatcher();
    for (i, n) in nodes.iter().enumerate() {
        let idx = pool.find(*n).unwrap();
        assert_eq!(pool.status(idx).state, State::Active, "node {i}");
        let p = probes[i].load(Ordering::Relaxed) - before[i];
        assert_eq!(p, 0, "node {i}: no urgent probe for a forged error");
    }
    assert_eq!(m.icmp_errors(IcmpResult::Accepted), 0);
    assert_eq!(
        m.failovers(sipedge::metrics::FailoverReason::Transport),
        0,
        "no INVITE failed over"
    );
    let text = m.encode();
    assert!(
        text.contains(&format!(
            "sipedge_icmp_errors_total{{result=\"forged\"}} {}",
            m.icmp_errors(IcmpResult::Forged)
        )),
        "{text}"
    );
    eprintln!("{calls} calls answered during {sent} forged ICMP errors");
    stop.store(true, Ordering::Relaxed);
}

/// The same flood with the node's own address as its source (what an
/// attacker who can spoof it sends; on loopback every node is 127.0.0.1)
/// and quoting node 0 only: accepted, so an INVITE in flight to node 0
/// may fail over, but the node is at worst suspect (still taking calls),
/// never down, as its probes answer; urgent probes stay within one per
/// `max(probe timeout, 1 s)`; every call succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn icmp_from_the_nodes_address_alone_takes_no_node_down_and_probes_are_rate_limited() {
    let Some(raw) = raw_icmp(
        Ipv4Addr::LOCALHOST,
        "icmp_from_the_nodes_address_alone_takes_no_node_down_and_probes_are_rate_limited",
    ) else {
        return;
    };
    let (h, nodes, probes, stop) = start().await;
    let before = probes[0].load(Ordering::Relaxed);
    let pool = h.proxy.dispatcher();
    let idx = pool.find(nodes[0]).unwrap();
    let began = Instant::now();
    let forger = flood(raw, h.addr, vec![nodes[0]]);
    let mut worst = State::Active;
    let mut calls = 0;
    let mut pace = tokio::time::interval(Duration::from_secs(1) / CALL_RATE);
    while !forger.is_finished() || calls < 5 {
        pace.tick().await;
        calls += call(&h).await;
        let s = pool.status(idx).state;
        assert_ne!(s, State::Inactive, "ICMP alone took node 0 down");
        if s != State::Active {
            worst = s;
        }
    }
    let sent = forger.join().unwrap();
    let took = began.elapsed();
    let m = h.proxy.metrics();
    assert!(m.icmp_errors(IcmpResult::Accepted) > 0);
    assert!(pool.status(idx).state.accepts_new_calls());
    let urgent = probes[0].load(Ordering::Relaxed) - before;
    // One per second at most, plus the first and a periodic one.
    let bound = took.as_secs() as usize + 2;
    assert!(
        urgent <= bound,
        "{urgent} probes in {took:?} (at most {bound}) for {sent} ICMP errors"
    );
    eprintln!(
        "{calls} calls, {sent} ICMP errors, {urgent} probes of node 0, its worst state {worst:?}"
    );
    stop.store(true, Ordering::Relaxed);
}

/// One call, which must be answered 200.
async fn call(h: &Harness) -> usize {
    let mut call = h.trunk_call();
    h.trunk.send(call.invite(SDP_AUDIO), h.addr).await;
    let got = h
        .trunk
        .recv_until(|r| r.status().is_some_and(|c| c >= 200))
        .await;
    let last = got.last().unwrap();
    assert_eq!(last.status(), Some(200), "{}", last.text());
    1
}

/// The genuine case: node 0's port really is closed, the kernel answers
/// from the node's own address. The INVITE fails over to node 1 at once
/// (fr_timeout is 10 s), the error is counted as accepted, and the node
/// goes down only once a probe confirms it (the probe times out).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_really_closed_port_still_fails_over_at_once_and_a_probe_confirms_it() {
    let mut h = Harness::start(Options {
        fr_timeout: "10s",
        extra_toml: "[probe]\ninterval = \"10s\"\ntimeout = \"300ms\"\n",
        ..Options::default()
    })
    .await;
    let dead = h.nodes.remove(0).addr; // its port is closed now
    let pool = h.proxy.dispatcher();
    let idx = pool.find(dead).unwrap();
    let mut call = h.trunk_call();
    let began = Instant::now();
    h.trunk.send(call.invite(SDP_AUDIO), h.addr).await;
    let inv = h.nodes[0].recv_request("INVITE").await;
    assert_eq!(inv.call_id(), call.call_id);
    assert!(
        began.elapsed() < Duration::from_secs(5),
        "{:?}",
        began.elapsed()
    );
    let m = h.proxy.metrics();
    assert!(m.icmp_errors(IcmpResult::Accepted) >= 1);
    assert_eq!(m.icmp_errors(IcmpResult::Forged), 0);
    eventually("a probe confirms the dead node", || {
        pool.status(idx).state == State::Inactive
    })
    .await;
}
