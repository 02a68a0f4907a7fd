use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};

use super::*;
use std::time::Duration;

use crate::dispatcher::health::{Failure, ProbeResult};

fn dest(uri: &str) -> Destination {
    Destination::new(SipUri::parse(uri).unwrap())
}

fn with_priority(uri: &str, priority: i32) -> Destination {
    Destination {
        priority,
        ..dest(uri)
    }
}

fn with_weight(uri: &str, weight: u32) -> Destination {
    Destination {
        weight: Some(weight),
        ..dest(uri)
    }
}

fn pool(algorithm: Algorithm, destinations: Vec<Destination>) -> Dispatcher {
    Dispatcher::new(&DispatcherConfig {
        algorithm,
        destinations,
        ..Default::default()
    })
    .unwrap()
}

/// 10.0.1.10, .11, .12, port 5080, equal priorities.
fn three(algorithm: Algorithm) -> Dispatcher {
    pool(
        algorithm,
        vec![
            dest("sip:10.0.1.10:5080"),
            dest("sip:10.0.1.11:5080"),
            dest("sip:10.0.1.12:5080"),
        ],
    )
}

fn weighted(weights: &[u32]) -> Dispatcher {
    let dests = weights
        .iter()
        .enumerate()
        .map(|(i, &w)| with_weight(&format!("sip:10.0.1.{}:5080", 10 + i), w))
        .collect();
    pool(Algorithm::Weight, dests)
}

fn plan(d: &Dispatcher, call_id: &str) -> Vec<usize> {
    d.plan(call_id.as_bytes()).collect()
}

/// How many of `calls` plans start at each node.
fn first_choices(d: &Dispatcher, calls: usize) -> Vec<usize> {
    let mut counts = vec![0; d.len()];
    for i in 0..calls {
        let first = d.plan(format!("call-{i}").as_bytes()).next().unwrap();
        counts[first] += 1;
    }
    counts
}

const ALL: [Algorithm; 7] = [
    Algorithm::RoundRobin,
    Algorithm::HashCallid,
    Algorithm::Priority,
    Algorithm::Weight,
    Algorithm::CallLoad,
    Algorithm::RelativeWeight,
    Algorithm::Latency,
];

// --- construction -----------------------------------------------------------

#[test]
fn new_resolves_ip_literals() {
    let d = pool(
        Algorithm::RoundRobin,
        vec![
            with_priority("sip:10.0.1.10:5080", 10),
            dest("sip:10.0.1.11"),
            dest("sip:[2001:db8::10]:5080"),
            dest("sip:[::ffff:10.0.1.20]:5090"),
        ],
    );
    assert_eq!(d.len(), 4);
    assert!(!d.is_empty());
    assert_eq!(d.algorithm(), Algorithm::RoundRobin);
    assert_eq!(d.addr(0), "10.0.1.10:5080".parse().unwrap());
    assert_eq!(d.uri(0), "sip:10.0.1.10:5080");
    assert_eq!(d.priority(0), 10);
    // No port: SIP's default.
    assert_eq!(d.addr(1), "10.0.1.11:5060".parse().unwrap());
    assert_eq!(d.uri(1), "sip:10.0.1.11");
    assert_eq!(d.priority(1), 0);
    assert_eq!(d.addr(2), "[2001:db8::10]:5080".parse().unwrap());
    assert_eq!(d.uri(2), "sip:[2001:db8::10]:5080");
    // IPv4-mapped is sent to (and matched) as the IPv4 host it is.
    assert_eq!(d.addr(3), "10.0.1.20:5090".parse().unwrap());
    assert!((0..4).all(|i| d.accepts_new_calls(i)));
}

#[test]
fn a_host_name_routes_to_the_address_it_resolved_to() {
    let mut named = dest("sip:fs-b.pool.example:5080");
    let cfg = |b: Destination| DispatcherConfig {
        algorithm: Algorithm::RoundRobin,
        destinations: vec![dest("sip:10.0.1.10:5080"), b],
        ..Default::default()
    };
    // Not resolved: refused, naming it (config reading resolves names).
    let err = Dispatcher::new(&cfg(named.clone())).unwrap_err();
    assert_eq!(
        err,
        DispatcherError::Unresolved {
            index: 1,
            uri: SipUri::parse("sip:fs-b.pool.example:5080").unwrap(),
        }
    );
    assert!(err
        .to_string()
        .starts_with("dispatcher.destination[1].uri: sip:fs-b.pool.example:5080"));
    // Resolved: the node is found by that address, named by its URI.
    named.resolved = Some("10.0.1.11:5080".parse().unwrap());
    let d = Dispatcher::new(&cfg(named)).unwrap();
    assert_eq!(d.addr(1), "10.0.1.11:5080".parse().unwrap());
    assert_eq!(d.find("10.0.1.11:5080".parse().unwrap()), Some(1));
    assert_eq!(d.uri(1), "sip:fs-b.pool.example:5080");
}

#[test]
fn pool_size_is_capped() {
    let count = MAX_DESTINATIONS + 1;
    let err = Dispatcher::new(&DispatcherConfig {
        algorithm: Algorithm::RoundRobin,
        destinations: vec![dest("sip:10.0.1.10"); count],
        ..Default::default()
    })
    .unwrap_err();
    assert_eq!(
        err,
        DispatcherError::TooManyDestinations {
            count,
            max: MAX_DESTINATIONS
        }
    );
}

#[test]
fn dispatcher_is_send_and_sync() {
    fn shared<T: Send + Sync>() {}
    shared::<Dispatcher>();
    shared::<Plan>();
}

#[test]
fn empty_pool_gives_empty_plans() {
    for algorithm in ALL {
        let d = pool(algorithm, Vec::new());
        assert!(d.is_empty());
        assert_eq!(d.len(), 0);
        let p = d.plan(b"abc@host");
        assert_eq!(p.len(), 0);
        assert_eq!(p.count(), 0, "{algorithm}");
        assert_eq!(d.find("10.0.1.10:5080".parse().unwrap()), None);
    }
}

// --- round-robin (Kamailio 4) -------------------------------------------------

#[test]
fn round_robin_rotates_the_start_and_fails_over_around_the_ring() {
    let d = three(Algorithm::RoundRobin);
    assert_eq!(plan(&d, "a"), [0, 1, 2]);
    assert_eq!(plan(&d, "a"), [1, 2, 0]);
    assert_eq!(plan(&d, "a"), [2, 0, 1]);
    assert_eq!(plan(&d, "a"), [0, 1, 2]);
    assert_eq!(first_choices(&d, 300), [100, 100, 100]);
}

#[test]
fn round_robin_skips_a_suspect_without_doubling_its_successor() {
    let d = three(Algorithm::RoundRobin);
    d.call_failed(1, Failure::Timeout(Duration::from_secs(2)));
    // Kamailio moves its counter past the node it chose, so the live nodes
    // alternate instead of node 2 getting node 1's turn as well.
    let plans: Vec<Vec<usize>> = (0..6).map(|_| plan(&d, "a")).collect();
    assert_eq!(
        plans,
        [[0, 2], [2, 0], [0, 2], [2, 0], [0, 2], [2, 0]].map(Vec::from)
    );
    assert_eq!(first_choices(&d, 600), [300, 0, 300]);
}

#[test]
fn round_robin_ring_is_the_priority_set_order() {
    let d = pool(
        Algorithm::RoundRobin,
        vec![
            with_priority("sip:10.0.1.10:5080", 5),
            with_priority("sip:10.0.1.11:5080", 10),
            with_priority("sip:10.0.1.12:5080", 5),
        ],
    );
    assert_eq!(plan(&d, "a"), [1, 0, 2]);
    assert_eq!(plan(&d, "a"), [0, 2, 1]);
    assert_eq!(plan(&d, "a"), [2, 1, 0]);
}

#[test]
fn round_robin_counter_is_shared_exactly_across_threads() {
    let d = three(Algorithm::RoundRobin);
    let per_thread = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8).map(|_| s.spawn(|| first_choices(&d, 300))).collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect::<Vec<_>>()
    });
    let mut total = [0; 3];
    for counts in per_thread {
        for (t, c) in total.iter_mut().zip(counts) {
            *t += c;
        }
    }
    assert_eq!(total, [800, 800, 800]);
}

// --- hash-callid (Kamailio 0) -------------------------------------------------

#[test]
fn hash_callid_is_stable_for_a_call_id() {
    // RFC 3261's example Call-ID. The expected node is hard-coded: a change
    // of hash would silently move calls between nodes across an upgrade.
    let call_id = "a84b4c76e66710@pc33.atlanta.com";
    let d = three(Algorithm::HashCallid);
    assert_eq!(plan(&d, call_id), [1, 2, 0]);
    assert_eq!(plan(&d, call_id), [1, 2, 0]);
    // Another instance (another process, after a restart) agrees.
    assert_eq!(plan(&three(Algorithm::HashCallid), call_id), [1, 2, 0]);
    assert_eq!(fnv1a(call_id.as_bytes()), 0x9242_f865_a4a2_a10c);
    assert_eq!(reduce(0x9242_f865_a4a2_a10c, 3), 1);
}

#[test]
fn hash_callid_spreads_call_ids() {
    for n in [2, 3, 5] {
        let dests = (0..n)
            .map(|i| dest(&format!("sip:10.0.1.{}:5080", 10 + i)))
            .collect();
        let d = pool(Algorithm::HashCallid, dests);
        let calls = 1000 * n;
        let mut counts = vec![0; n];
        for i in 0..calls {
            // Sequential IDs, as some UAs generate them.
            let call_id = format!("{i}@10.20.30.40");
            counts[plan(&d, &call_id)[0]] += 1;
        }
        for count in counts {
            assert!((900..=1100).contains(&count), "n={n}: {count}");
        }
    }
}

#[test]
fn hash_callid_suspect_moves_only_its_own_calls() {
    let d = three(Algorithm::HashCallid);
    let ids: Vec<String> = (0..300).map(|i| format!("{i:08x}@trunk")).collect();
    let before: Vec<Vec<usize>> = ids.iter().map(|id| plan(&d, id)).collect();
    d.call_failed(2, Failure::Timeout(Duration::from_secs(2)));
    for (id, old) in ids.iter().zip(&before) {
        let new = plan(&d, id);
        let expected: Vec<usize> = old.iter().copied().filter(|&i| i != 2).collect();
        assert_eq!(new, expected, "{id}");
    }
    d.probed(2, ProbeResult::Reply(200));
    let after: Vec<Vec<usize>> = ids.iter().map(|id| plan(&d, id)).collect();
    assert_eq!(after, before);
}

// --- priority (Kamailio 8) ----------------------------------------------------

#[test]
fn priority_tries_highest_first_ties_in_config_order() {
    let d = pool(
        Algorithm::Priority,
        vec![
            with_priority("sip:10.0.1.10:5080", 0),
            with_priority("sip:10.0.1.11:5080", 10),
            with_priority("sip:10.0.1.12:5080", 5),
            with_priority("sip:10.0.1.13:5080", 10),
            with_priority("sip:10.0.1.14:5080", -3),
        ],
    );
    for call in ["a", "b", "c"] {
        assert_eq!(plan(&d, call), [1, 3, 2, 0, 4]);
    }
    d.call_failed(1, Failure::Timeout(Duration::from_secs(2)));
    assert_eq!(plan(&d, "a"), [3, 2, 0, 4]);
    d.call_failed(3, Failure::Timeout(Duration::from_secs(2)));
    assert_eq!(plan(&d, "a"), [2, 0, 4]);
    d.probed(1, ProbeResult::Reply(200));
    assert_eq!(plan(&d, "a"), [1, 2, 0, 4]);
}

// --- weight (Kamailio 9) ------------------------------------------------------

#[test]
fn weight_splits_every_hundred_calls_exactly() {
    let d = weighted(&[50, 30, 20]);
    for _ in 0..10 {
        assert_eq!(first_choices(&d, 100), [50, 30, 20]);
    }
    assert_eq!(first_choices(&d, 1000), [500, 300, 200]);
}

#[test]
fn weight_interleaves_instead_of_sending_runs() {
    let d = weighted(&[50, 50]);
    let firsts: Vec<usize> = (0..6).map(|_| plan(&d, "a")[0]).collect();
    assert_eq!(firsts, [0, 1, 0, 1, 0, 1]);
    // 80/20: never more than four calls in a row on the big node.
    let d = weighted(&[80, 20]);
    let firsts: Vec<usize> = (0..200).map(|_| plan(&d, "a")[0]).collect();
    assert!(firsts.windows(5).all(|w| w.contains(&1)), "{firsts:?}");
}

#[test]
fn weight_fails_over_around_the_ring() {
    let d = weighted(&[50, 30, 20]);
    for _ in 0..100 {
        let p = plan(&d, "a");
        let expected: Vec<usize> = (0..3).map(|k| (p[0] + k) % 3).collect();
        assert_eq!(p, expected);
    }
}

#[test]
fn weight_below_100_gives_the_rest_to_the_last_node() {
    // Kamailio: "If the sum is less than 100, then the last destination is
    // used to fill the missing percentage."
    assert_eq!(first_choices(&weighted(&[30, 30]), 100), [30, 70]);
    assert_eq!(first_choices(&weighted(&[10, 20, 30]), 100), [10, 20, 70]);
}

#[test]
fn weight_beyond_100_is_dropped_but_still_fails_over() {
    // Kamailio: destinations whose weight takes the sum over 100 are ignored
    // for the first choice.
    let d = weighted(&[60, 60, 10]);
    assert_eq!(first_choices(&d, 100), [60, 40, 0]);
    assert!(plan(&d, "a").contains(&2));
}

#[test]
fn weight_suspect_share_goes_to_its_ring_successor() {
    // As in Kamailio alg 9: the chosen slot moves to the next live node.
    let d = weighted(&[50, 30, 20]);
    d.call_failed(0, Failure::Timeout(Duration::from_secs(2)));
    assert_eq!(first_choices(&d, 100), [0, 80, 20]);
    assert!((0..50).all(|_| !plan(&d, "a").contains(&0)));
    d.probed(0, ProbeResult::Reply(200));
    assert_eq!(first_choices(&d, 100), [50, 30, 20]);
}

#[test]
fn weight_follows_the_priority_set_order() {
    // Slots are handed out in set order, so the lowest-priority node is the
    // "last" one that absorbs a remainder.
    let d = pool(
        Algorithm::Weight,
        vec![
            Destination {
                priority: 1,
                ..with_weight("sip:10.0.1.10:5080", 20)
            },
            Destination {
                priority: 9,
                ..with_weight("sip:10.0.1.11:5080", 20)
            },
        ],
    );
    assert_eq!(first_choices(&d, 100), [80, 20]);
    let p = plan(&d, "a");
    assert_eq!(p.len(), 2);
}

#[test]
fn weight_shares_and_spread() {
    assert_eq!(weight_shares(&[50, 30, 20]), [50, 30, 20]);
    assert_eq!(weight_shares(&[30, 30]), [30, 70]);
    assert_eq!(weight_shares(&[60, 60, 10]), [60, 40, 0]);
    assert_eq!(weight_shares(&[0, 0]), [0, 100]);
    assert_eq!(weight_shares(&[u32::MAX, 5]), [100, 0]);
    let slots = spread(&[50, 30, 20]);
    for (pos, share) in [50, 30, 20].into_iter().enumerate() {
        assert_eq!(
            slots.iter().filter(|&&s| usize::from(s) == pos).count(),
            share
        );
    }
}

// --- suspects ---------------------------------------------------------------

#[test]
fn mark_suspect_and_alive() {
    let d = three(Algorithm::Priority);
    assert!(d.accepts_new_calls(1));
    d.probed(1, ProbeResult::Reply(200)); // already alive: no change
    assert!(d.accepts_new_calls(1));
    d.call_failed(1, Failure::Timeout(Duration::from_secs(2)));
    d.call_failed(1, Failure::Timeout(Duration::from_secs(2))); // idempotent
    assert!(!d.accepts_new_calls(1));
    assert!(d.accepts_new_calls(0) && d.accepts_new_calls(2));
    assert_eq!(plan(&d, "a"), [0, 2]);
    d.probed(1, ProbeResult::Reply(200));
    assert!(d.accepts_new_calls(1));
    assert_eq!(plan(&d, "a"), [0, 1, 2]);
}

#[test]
fn all_suspect_falls_back_to_the_normal_order() {
    for algorithm in ALL {
        let dests = || {
            vec![
                with_weight("sip:10.0.1.10:5080", 50),
                with_weight("sip:10.0.1.11:5080", 30),
                with_weight("sip:10.0.1.12:5080", 20),
            ]
        };
        let healthy = pool(algorithm, dests());
        let down = pool(algorithm, dests());
        for i in 0..3 {
            down.call_failed(i, Failure::Timeout(Duration::from_secs(2)));
        }
        for call in 0..20 {
            let call_id = format!("{call}@trunk");
            let p = plan(&down, &call_id);
            assert_eq!(p, plan(&healthy, &call_id), "{algorithm} call {call}");
            assert_eq!(p.len(), 3);
        }
    }
}

// --- find -------------------------------------------------------------------

#[test]
fn find_matches_ip_and_port() {
    let d = pool(
        Algorithm::RoundRobin,
        vec![
            dest("sip:10.0.1.10:5080"),
            dest("sip:10.0.1.11:5080"),
            dest("sip:[2001:db8::10]:5080"),
            dest("sip:[::ffff:10.0.1.20]:5080"),
        ],
    );
    let find = |s: &str| d.find(s.parse().unwrap());
    assert_eq!(find("10.0.1.10:5080"), Some(0));
    assert_eq!(find("10.0.1.11:5080"), Some(1));
    assert_eq!(find("10.0.1.11:5081"), None);
    assert_eq!(find("10.0.1.12:5080"), None);
    assert_eq!(find("[2001:db8::10]:5080"), Some(2));
    assert_eq!(find("[2001:db8::11]:5080"), None);
    // What a dual-stack socket reports for an IPv4 peer.
    assert_eq!(find("[::ffff:10.0.1.11]:5080"), Some(1));
    assert_eq!(find("[::ffff:10.0.1.11]:5060"), None);
    // A destination written IPv4-mapped matches both forms.
    assert_eq!(find("10.0.1.20:5080"), Some(3));
    assert_eq!(find("[::ffff:10.0.1.20]:5080"), Some(3));
    // Flow label and scope id are not part of the identity.
    let ip: Ipv6Addr = "2001:db8::10".parse().unwrap();
    let with_scope = SocketAddr::V6(SocketAddrV6::new(ip, 5080, 7, 3));
    assert_eq!(d.find(with_scope), Some(2));
}

#[test]
fn advertised_aliases_stay_with_their_node() {
    let alias = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
    let d = pool(
        Algorithm::RoundRobin,
        vec![
            dest("sip:10.0.1.10:5080"),
            Destination {
                advertised: vec![alias("203.0.113.10"), alias("::ffff:203.0.113.11")],
                ..dest("sip:10.0.1.11:5080")
            },
        ],
    );
    assert!(d.advertised(0).is_empty());
    // Folded like the node's own address, so one comparison finds it.
    assert_eq!(
        d.advertised(1),
        [alias("203.0.113.10"), alias("203.0.113.11")]
    );
}

// --- plan capacity ----------------------------------------------------------

#[test]
fn plans_are_capped_at_32_nodes() {
    let dests: Vec<Destination> = (0..40)
        .map(|i| dest(&format!("sip:10.0.2.{i}:5060")))
        .collect();
    let d = pool(Algorithm::RoundRobin, dests.clone());
    let p = d.plan(b"a");
    assert_eq!(p.len(), PLAN_CAPACITY);
    assert_eq!(p.collect::<Vec<_>>(), (0..32).collect::<Vec<_>>());
    let p: Vec<usize> = d.plan(b"a").collect();
    assert_eq!(p.len(), PLAN_CAPACITY);
    assert_eq!(p[0], 1);
    assert_eq!(p[31], 32);

    // Suspects do not use up the capacity: the walk goes on to live nodes.
    let d = pool(Algorithm::Priority, dests.clone());
    for i in 0..32 {
        d.call_failed(i, Failure::Timeout(Duration::from_secs(2)));
    }
    assert_eq!(plan(&d, "a"), (32..40).collect::<Vec<_>>());
    d.probed(5, ProbeResult::Reply(200));
    assert_eq!(plan(&d, "a"), [5, 32, 33, 34, 35, 36, 37, 38, 39]);

    // Every node suspect: the first 32 in the normal order.
    for i in 0..40 {
        d.call_failed(i, Failure::Timeout(Duration::from_secs(2)));
    }
    assert_eq!(plan(&d, "a"), (0..32).collect::<Vec<_>>());
}

/// Values printed by a real Kamailio 5.6.3 (`kamcmd dispatcher.hash`):
/// BINRPC carries the unsigned hash as a signed 32-bit integer.
#[test]
fn kamailio_hash_matches_kamailio() {
    assert_eq!(kamailio_hash(b"abc", b""), 7_167_810);
    assert_eq!(kamailio_hash(b"abc", b"def"), 14_047_601);
    assert_eq!(
        kamailio_hash("héllo wörld".as_bytes(), b"x") as i32,
        -1_474_773_301
    );
    assert_eq!(kamailio_hash("héllo wörld".as_bytes(), b"x") % 7, 3);
    assert_ne!(kamailio_hash(b"", b""), 0);
}

#[test]
fn probe_latency_feeds_the_stats_and_a_reload_keeps_them_for_nodes_that_stay() {
    let ms = Duration::from_millis;
    let d = three(Algorithm::RoundRobin);
    d.probe_latency(0, ProbeResult::Reply(200), Some(ms(10)));
    d.probe_latency(0, ProbeResult::Reply(404), Some(ms(30)));
    d.probe_latency(0, ProbeResult::Timeout(ms(1000)), None);
    d.probe_latency(0, ProbeResult::Reply(408), Some(ms(999)));
    d.probe_latency(0, ProbeResult::TransportError, None);
    let s = d.latency(0).unwrap();
    assert_eq!((s.count(), s.max(), s.timeouts()), (2, 30, 2));
    assert_eq!(s.average(), 20.0);
    assert_eq!(d.latency(1).unwrap().count(), 0);

    // Node .11 leaves, .10 stays (and moves), .13 is new.
    let next = Dispatcher::reloaded(
        &DispatcherConfig {
            algorithm: Algorithm::RoundRobin,
            destinations: vec![dest("sip:10.0.1.13:5080"), dest("sip:10.0.1.10:5080")],
            ..Default::default()
        },
        &HealthConfig::default(),
        Some(&d),
    )
    .unwrap();
    assert_eq!(next.latency(1), Some(s), "kept across the reload");
    assert_eq!(next.latency(0).unwrap().count(), 0);

    // Off: nothing kept, nothing shown.
    let off = Dispatcher::with_health(
        &DispatcherConfig {
            destinations: vec![dest("sip:10.0.1.10:5080")],
            ..Default::default()
        },
        &HealthConfig::default().with_latency(None),
    )
    .unwrap();
    off.probe_latency(0, ProbeResult::Reply(200), Some(ms(10)));
    assert_eq!(off.latency(0), None);
}

// --- call load (Kamailio 10) --------------------------------------------------

fn with_maxload(uri: &str, maxload: u32) -> Destination {
    Destination {
        maxload: Some(maxload),
        ..dest(uri)
    }
}

fn loaded_plan(d: &Dispatcher, loads: &[usize]) -> Vec<usize> {
    d.plan_with_load(b"a", |i| loads[i]).collect()
}

#[test]
fn call_load_picks_the_least_loaded_node_ties_to_set_order() {
    let d = three(Algorithm::CallLoad);
    assert_eq!(loaded_plan(&d, &[3, 1, 2]), [1, 2, 0]);
    assert_eq!(loaded_plan(&d, &[0, 0, 0]), [0, 1, 2]);
    assert_eq!(
        loaded_plan(&d, &[5, 2, 2]),
        [1, 2, 0],
        "tie: first in set order"
    );
    // A node out of rotation is not chosen however idle.
    d.call_failed(1, Failure::Timeout(Duration::from_secs(2)));
    d.call_failed(1, Failure::Timeout(Duration::from_secs(2)));
    d.call_failed(1, Failure::Timeout(Duration::from_secs(2)));
    assert!(!d.accepts_new_calls(1));
    assert_eq!(loaded_plan(&d, &[3, 0, 2]), [2, 0]);
    // Simulated calls: each new call lands on the least loaded, so the
    // loads stay within one of each other.
    let d = three(Algorithm::CallLoad);
    let mut loads = [0usize; 3];
    for _ in 0..300 {
        let first = d.plan_with_load(b"a", |i| loads[i]).next().unwrap();
        loads[first] += 1;
    }
    assert_eq!(loads, [100, 100, 100]);
}

#[test]
fn call_load_skips_nodes_at_maxload_and_refuses_when_all_are_full() {
    let d = pool(
        Algorithm::CallLoad,
        vec![
            with_maxload("sip:10.0.1.10:5080", 2),
            with_maxload("sip:10.0.1.11:5080", 1),
            dest("sip:10.0.1.12:5080"),
        ],
    );
    // Node 1 is at its maxload: neither chosen nor a failover target.
    assert_eq!(loaded_plan(&d, &[1, 1, 5]), [0, 2]);
    assert_eq!(loaded_plan(&d, &[2, 1, 5]), [2]);
    // Node 2 has no limit.
    assert_eq!(loaded_plan(&d, &[2, 1, 500]), [2]);

    let capped = pool(
        Algorithm::CallLoad,
        vec![
            with_maxload("sip:10.0.1.10:5080", 2),
            with_maxload("sip:10.0.1.11:5080", 1),
        ],
    );
    assert_eq!(loaded_plan(&capped, &[1, 0]), [1, 0]);
    assert_eq!(
        loaded_plan(&capped, &[2, 1]),
        Vec::<usize>::new(),
        "all full: 503"
    );
    // Counting calls in: 3 fit, the 4th finds every node full.
    let mut loads = [0usize; 2];
    let mut placed = 0;
    for _ in 0..10 {
        match capped.plan_with_load(b"a", |i| loads[i]).next() {
            Some(first) => {
                loads[first] += 1;
                placed += 1;
            }
            None => break,
        }
    }
    assert_eq!((placed, loads), (3, [2, 1]));
}

// --- relative weight (Kamailio 11) ---------------------------------------------

fn with_rweight(uri: &str, rweight: u32) -> Destination {
    Destination {
        rweight: Some(rweight),
        ..dest(uri)
    }
}

#[test]
fn relative_weight_spreads_over_the_active_nodes_only() {
    let d = pool(
        Algorithm::RelativeWeight,
        vec![
            with_rweight("sip:10.0.1.10:5080", 50),
            with_rweight("sip:10.0.1.11:5080", 30),
            with_rweight("sip:10.0.1.12:5080", 20),
        ],
    );
    assert_eq!(first_choices(&d, 1000), [500, 300, 200]);
    // Node 2 out: 50:30 of 100 -> 62 and 37, the remainder to node 1.
    for _ in 0..3 {
        d.call_failed(2, Failure::Timeout(Duration::from_secs(2)));
    }
    assert_eq!(first_choices(&d, 1000), [620, 380, 0]);
    // Failover goes around the ring, still skipping node 2.
    assert!(plan(&d, "a").len() == 2);
}

#[test]
fn relative_weight_with_cc_follows_the_latency_estimator() {
    let cc = |uri: &str| Destination {
        weight: Some(50),
        rweight: Some(50),
        congestion_control: true,
        ..dest(uri)
    };
    let d = pool(
        Algorithm::RelativeWeight,
        vec![cc("sip:10.0.1.10:5080"), cc("sip:10.0.1.11:5080")],
    );
    assert_eq!(first_choices(&d, 100), [50, 50]);
    // Node 1: nine fast probes, then a 130 ms one: AVG 10 + 120 / 10 =
    // 22, EST 0.9 * 10 + 0.1 * 130 = 22 -> no congestion yet.
    let ms = Duration::from_millis;
    for _ in 0..9 {
        d.probe_latency(1, ProbeResult::Reply(200), Some(ms(10)));
    }
    d.probe_latency(1, ProbeResult::Reply(200), Some(ms(130)));
    assert_eq!(first_choices(&d, 100), [50, 50]);
    // Ten slow answers: the estimate moves faster than the average
    // (EST ~138, AVG 111), and the difference is the congestion.
    for _ in 0..10 {
        d.probe_latency(1, ProbeResult::Reply(200), Some(ms(200)));
    }
    let s = d.latency(1).unwrap();
    let congestion = (s.estimate() - s.average()) as u64;
    assert!(congestion > 0 && congestion < 50, "{s:?}");
    // Node 1's relative weight is 50 - congestion.
    let w1 = 50 - congestion;
    let share1 = w1 * 100 / (50 + w1);
    let share0 = 50 * 100 / (50 + w1);
    let remainder = 100 - share0 - share1;
    let got = first_choices(&d, 100);
    assert_eq!(
        got,
        [share0 as usize, (share1 + remainder) as usize],
        "{s:?}"
    );
    assert!(got[0] > got[1]);
}

// --- latency optimised (Kamailio 13) -------------------------------------------

#[test]
fn latency_algorithm_round_robins_equal_priorities() {
    let d = three(Algorithm::Latency);
    assert_eq!(plan(&d, "a"), [0, 1, 2]);
    assert_eq!(plan(&d, "a"), [1, 2, 0]);
    assert_eq!(plan(&d, "a"), [2, 0, 1]);
    assert_eq!(first_choices(&d, 300), [100, 100, 100]);
}

#[test]
fn latency_lowers_a_slow_nodes_priority() {
    let d = pool(
        Algorithm::Latency,
        vec![
            with_priority("sip:10.0.1.10:5080", 10),
            with_priority("sip:10.0.1.11:5080", 10),
            with_priority("sip:10.0.1.12:5080", 10),
        ],
    );
    // Node 1 answers probes in 55 ms: its priority becomes 10 - 55 / 10 =
    // 5, so it only gets calls on failover, last.
    for _ in 0..3 {
        d.probe_latency(1, ProbeResult::Reply(200), Some(Duration::from_millis(55)));
    }
    assert_eq!(d.latency(1).unwrap().estimate(), 55.0);
    let plans: Vec<Vec<usize>> = (0..4).map(|_| plan(&d, "a")).collect();
    assert_eq!(
        plans,
        [[0, 2, 1], [2, 0, 1], [0, 2, 1], [2, 0, 1]].map(Vec::from)
    );
    assert_eq!(first_choices(&d, 100), [50, 0, 50]);

    // A higher priority absorbs the same latency: 30 - 300 / 30 = 20, a
    // tie with the plain 20 -> they take turns.
    let d = pool(
        Algorithm::Latency,
        vec![
            with_priority("sip:10.0.1.10:5080", 30),
            with_priority("sip:10.0.1.11:5080", 20),
        ],
    );
    for _ in 0..3 {
        d.probe_latency(0, ProbeResult::Reply(200), Some(Duration::from_millis(300)));
    }
    assert_eq!(first_choices(&d, 100), [50, 50]);
    // Out of rotation: never first, never in the plan.
    for _ in 0..3 {
        d.call_failed(0, Failure::Timeout(Duration::from_secs(2)));
    }
    assert_eq!(plan(&d, "a"), [1]);
}
