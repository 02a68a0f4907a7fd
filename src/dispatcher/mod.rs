//! The FreeSWITCH pool: destinations, their passive health, and the order in
//! which a new call tries them (Kamailio `ds_select_dst` semantics).
//!
//! [`Dispatcher::plan`] answers "which node first, and where next on
//! failover" for one new INVITE. It is pure logic: no sockets, no timers, no
//! tokio, no allocation, no lock. The proxy's tasks share one
//! `Arc<Dispatcher>`; per-node state is an atomic flag and the round-robin /
//! weight position an atomic counter.
//!
//! # Set order
//! Like Kamailio, which keeps each destination set sorted by the priority
//! column, the pool has one fixed *set order*: highest `priority` first,
//! ties in config order (Kamailio breaks ties in reverse file order; config
//! order is what an operator reading the TOML expects). Every algorithm
//! picks a starting point in that order and fails over around it as a ring,
//! as Kamailio's failover list does. With equal priorities (the default) the
//! ring is simply config order.
//!
//! | `algorithm`   | Kamailio | first choice                                   |
//! |---------------|----------|------------------------------------------------|
//! | `round-robin` | 4        | the next position of a shared counter          |
//! | `hash-callid` | 0        | a stable hash of the Call-ID                   |
//! | `priority`    | 8        | the first in set order (highest priority)      |
//! | `weight`      | 9        | a 100-slot table, each node `weight` % of slots |
//! | `call-load`   | 10       | the fewest active calls, under its `maxload`   |
//! | `relative-weight` | 11   | `rweight` shares of 100 slots, active nodes only |
//! | `latency`     | 13       | highest priority lowered by latency, in turns  |
//!
//! The proxy hands `call-load` each node's active calls (the dialogs
//! pinned to it) through [`Dispatcher::plan_with_load`]; the latency
//! algorithms read each node's [`latency::LatencyCell`], fed by the probes.
//!
//! # Node health
//! Each node has Kamailio's states ([`health`]): active, trying, inactive,
//! disabled, plus a probing flag. OPTIONS probes and calls feed them: a
//! call that times out or fails at the transport level
//! ([`Dispatcher::call_failed`], Kamailio `ds_mark_dst`) counts as a
//! failure, and `failure_threshold` of them in a row take the node out
//! (inactive) until probes bring it back. Inactive and disabled nodes are
//! left out of new plans; the first choice moves to the next node in the
//! ring, as in Kamailio. A disabled node (an operator's drain) keeps its
//! calls: in-dialog requests still reach it.

pub mod health;
pub mod latency;
pub mod list;
mod plan;
mod section;
mod select;

#[cfg(test)]
mod tests;

use crate::value::Transport;
use std::cmp::Reverse;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use crate::value::{fnv1a, SipUri};
use health::{
    Failure, HealthConfig, ProbeResult, SetState, SharedHealth, State, Status, Transition,
};

pub use plan::{Plan, PLAN_CAPACITY};
pub use section::{Algorithm, Destination, DispatcherConfig};

/// Largest pool: a [`Plan`] stores node indices as `u16`.
pub const MAX_DESTINATIONS: usize = 1 << 16;

/// Kamailio's weight table size: weights are percentages.
const WEIGHT_SLOTS: usize = 100;

/// Why a dispatcher config cannot be turned into a pool.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DispatcherError {
    /// Config reading resolves names (`config::read_config`); a config
    /// built another way must do it too (`Config::resolve_names`).
    #[error("dispatcher.destination[{index}].uri: {uri}: its host name was not resolved")]
    Unresolved { index: usize, uri: SipUri },
    #[error("{count} destinations; at most {max} are supported")]
    TooManyDestinations { count: usize, max: usize },
}

/// One FreeSWITCH node.
#[derive(Debug)]
struct Node {
    /// Canonical (IPv4-mapped IPv6 folded to IPv4), so [`Dispatcher::find`]
    /// is a plain comparison.
    addr: SocketAddr,
    /// Normalised (`sip:HOST:PORT` and the transport): metrics labels,
    /// the shared registry, carrying health across a reload.
    uri: String,
    /// As written in the list file (see `Destination::written`), else
    /// `uri`.
    written: String,
    /// The flags column it was loaded with: a reload that changes it
    /// starts the node from the new flags.
    list_flags: u32,
    priority: i32,
    /// Probe and call outcomes; a lock-free read says whether new calls
    /// may go here.
    /// Shared with the same node in the pool a reload replaces, so its
    /// state and a probe in flight carry over.
    health: std::sync::Arc<SharedHealth>,
    /// Probe round-trip statistics, shared like `health` with the same
    /// node in the pool a reload replaces.
    latency: std::sync::Arc<latency::LatencyCell>,
    /// Algorithm 10: most active calls; 0 for no limit.
    maxload: usize,
    /// Algorithm 11: relative weight (0 none), and `weight` for `cc`.
    rweight: u32,
    weight: u32,
    /// `cc=1`: algorithms 11 and 13 read the congestion, not the latency.
    congestion_control: bool,
    /// From URI of this node's probes, when it has its own.
    ping_from: Option<String>,
    /// Its dispatcher.list attributes, if it came from one.
    attrs: Option<list::Attrs>,
    /// Every request goes over this (the URI's `;transport=`).
    transport: Transport,
    /// Takes TCP: large requests may switch to it (`tcp = true`).
    takes_tcp: bool,
    /// Addresses it may advertise besides its own (`advertised`),
    /// canonical like `addr`.
    advertised: Box<[std::net::IpAddr]>,
}

/// The destination set and its selection algorithm. `Send + Sync`; share it
/// through an `Arc`.
#[derive(Debug)]
pub struct Dispatcher {
    algorithm: Algorithm,
    /// In config order: the indices the rest of sipedge uses.
    nodes: Box<[Node]>,
    /// Set order (see the module docs): node indices, highest priority
    /// first, ties in config order. Every plan walks this as a ring.
    ring: Box<[u16]>,
    /// Weight only: which ring position each of 100 consecutive calls
    /// starts at.
    weight_slots: [u16; WEIGHT_SLOTS],
    /// Round-robin and weight: one tick per plan. Wrapping after 2^64 calls
    /// only skews a single turn.
    counter: AtomicUsize,
    /// `Some` when probes keep latency statistics (`[probe] latency_stats`).
    latency_alpha: Option<latency::Alpha>,
}

impl Dispatcher {
    /// Builds the pool from `[dispatcher]`. Each destination is an IP
    /// literal (its port defaults to 5060) or a host name resolved when the
    /// config was read. An empty pool is accepted here (config validation
    /// refuses it) and yields empty plans.
    pub fn new(cfg: &DispatcherConfig) -> Result<Dispatcher, DispatcherError> {
        Dispatcher::with_health(cfg, &HealthConfig::default())
    }

    /// [`Dispatcher::new`] with the probe thresholds and reply codes of
    /// `[probe]`.
    pub fn with_health(
        cfg: &DispatcherConfig,
        health: &HealthConfig,
    ) -> Result<Dispatcher, DispatcherError> {
        Dispatcher::reloaded(cfg, health, None)
    }

    /// The pool after `dispatcher.reload`: a destination that was in
    /// `previous` (same URI) keeps its health (state, probing flag, streaks)
    /// rather than the list file's initial flags; new ones start from their
    /// flags.
    pub fn reloaded(
        cfg: &DispatcherConfig,
        health: &HealthConfig,
        previous: Option<&Dispatcher>,
    ) -> Result<Dispatcher, DispatcherError> {
        let count = cfg.destinations.len();
        if count > MAX_DESTINATIONS {
            return Err(DispatcherError::TooManyDestinations {
                count,
                max: MAX_DESTINATIONS,
            });
        }
        let nodes = cfg
            .destinations
            .iter()
            .enumerate()
            .map(|(index, dest)| match dest.addr() {
                Some(addr) => Ok(Node {
                    addr: canonical(addr),
                    uri: dest.uri.to_string(),
                    written: dest.written.clone().unwrap_or_else(|| dest.uri.to_string()),
                    priority: dest.priority,
                    list_flags: dest.list_flags,
                    latency: stayed(previous, dest)
                        .map_or_else(Default::default, |n| n.latency.clone()),
                    maxload: dest
                        .maxload
                        .map_or(0, |m| usize::try_from(m).unwrap_or(usize::MAX)),
                    rweight: dest.rweight.unwrap_or(0),
                    weight: dest.weight.unwrap_or(0),
                    congestion_control: dest.congestion_control,
                    // A node that stays keeps its health (state, streaks,
                    // a probe in flight), unless its flags column changed:
                    // then it starts from the new flags (0 -> 8 starts
                    // probing it), as a new node does.
                    health: stayed(previous, dest)
                        .filter(|n| n.list_flags == dest.list_flags)
                        .map_or_else(
                            || {
                                std::sync::Arc::new(SharedHealth::new(health::Health::new(
                                    *health,
                                    Status::from_list_flags(dest.list_flags),
                                )))
                            },
                            |n| n.health.clone(),
                        ),
                    ping_from: dest.ping_from.clone(),
                    attrs: dest.attrs.clone(),
                    transport: dest.uri.transport.unwrap_or_default(),
                    takes_tcp: dest.tcp || dest.uri.transport == Some(Transport::Tcp),
                    advertised: dest.advertised.iter().map(|a| a.to_canonical()).collect(),
                }),
                None => Err(DispatcherError::Unresolved {
                    index,
                    uri: dest.uri.clone(),
                }),
            })
            .collect::<Result<Box<[Node]>, _>>()?;

        warn_about_latency_inputs(cfg, health);

        let mut ring: Box<[u16]> = (0..count).map(to_u16).collect();
        // Stable, so equal priorities keep config order.
        ring.sort_by_key(|&i| Reverse(nodes[usize::from(i)].priority));

        let weight_slots = if cfg.algorithm == Algorithm::Weight && count > 0 {
            let weights: Vec<u32> = ring
                .iter()
                .map(|&i| cfg.destinations[usize::from(i)].weight.unwrap_or(0))
                .collect();
            let shares = weight_shares(&weights);
            warn_about_weight_sum(&weights, &shares, |pos| {
                nodes[usize::from(ring[pos])].uri.as_str()
            });
            spread(&shares)
        } else {
            [0; WEIGHT_SLOTS]
        };

        Ok(Dispatcher {
            algorithm: cfg.algorithm,
            nodes,
            ring,
            weight_slots,
            counter: AtomicUsize::new(0),
            latency_alpha: health.latency(),
        })
    }

    /// Number of destinations.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// Where to send to node `i` (config order). An IPv4-mapped IPv6
    /// destination is returned as plain IPv4.
    ///
    /// # Panics
    /// If `i >= len()`, like slice indexing: indices come from
    /// [`Dispatcher::plan`] or [`Dispatcher::find`].
    pub fn addr(&self, i: usize) -> SocketAddr {
        self.nodes[i].addr
    }

    /// Node `i`'s URI as configured, e.g. `sip:10.0.1.10:5080`.
    ///
    /// # Panics
    /// If `i >= len()`.
    pub fn uri(&self, i: usize) -> &str {
        &self.nodes[i].uri
    }

    /// Node `i`'s URI as the list file wrote it, user part and parameters
    /// kept (`sip:callee@10.0.1.10:5080;transport=udp`), else as `uri`:
    /// what `dispatcher.list` shows and probes are sent to.
    ///
    /// # Panics
    /// If `i >= len()`.
    pub fn written(&self, i: usize) -> &str {
        &self.nodes[i].written
    }

    /// The node whose normalised URI is `uri` (what a reload matches
    /// nodes that stay by).
    pub fn find_uri(&self, uri: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.uri == uri)
    }

    /// Whether `uri` names node `i`, ignoring ASCII case (Kamailio's
    /// `strncasecmp`): as written, or in its normalised form.
    ///
    /// # Panics
    /// If `i >= len()`.
    pub fn named(&self, i: usize, uri: &str) -> bool {
        let node = &self.nodes[i];
        node.written.eq_ignore_ascii_case(uri) || node.uri.eq_ignore_ascii_case(uri)
    }

    /// Node `i`'s configured priority (for `dispatcher.list`).
    ///
    /// # Panics
    /// If `i >= len()`.
    pub fn priority(&self, i: usize) -> i32 {
        self.nodes[i].priority
    }

    /// The pool member at `addr`, if any. IP and port must match; an
    /// IPv4-mapped IPv6 address (what a dual-stack socket reports for an
    /// IPv4 peer) matches the IPv4 destination.
    pub fn find(&self, addr: SocketAddr) -> Option<usize> {
        let addr = canonical(addr);
        self.nodes.iter().position(|node| node.addr == addr)
    }

    /// The transport every request to node `i` takes.
    pub fn transport(&self, i: usize) -> Transport {
        self.nodes[i].transport
    }

    /// Node `i` takes SIP over TCP.
    pub fn takes_tcp(&self, i: usize) -> bool {
        self.nodes[i].takes_tcp
    }

    /// The nodes to try for one new call, in order: first choice, then
    /// failover. Inactive and disabled nodes are left out. When no node
    /// takes new calls, the plan holds the inactive ones in the normal
    /// order: a probe can be wrong (a firewall dropping OPTIONS), and
    /// trying a node that may have recovered beats answering 503 to every
    /// call. Disabled nodes never get new calls (that is a drain). Empty
    /// for an empty or fully disabled pool; at most [`PLAN_CAPACITY`] nodes.
    ///
    /// `call_id` is the Call-ID header value; only `hash-callid` reads it.
    /// `call-load` sees every node as idle here: the proxy uses
    /// [`Dispatcher::plan_with_load`].
    pub fn plan(&self, call_id: &[u8]) -> Plan {
        self.plan_with_load(call_id, |_| 0)
    }

    /// [`Dispatcher::plan`], where `load(i)` is the number of active calls
    /// on node `i` (the dialogs pinned to it); only `call-load` reads it.
    /// Under `call-load` a node at its `maxload` is left out, and when
    /// every node that takes calls is at its `maxload` the plan is empty
    /// (Kamailio's `ds_select_dst` fails: the call gets a 503).
    pub fn plan_with_load(&self, call_id: &[u8], load: impl Fn(usize) -> usize) -> Plan {
        let n = self.ring.len();
        if n == 0 {
            return Plan::new();
        }
        match self.algorithm {
            Algorithm::RoundRobin => {
                let ticket = self.counter.fetch_add(1, Relaxed);
                let start = ticket % n;
                let (plan, first) = self.walk(start);
                // Kamailio moves the counter past the node actually chosen,
                // so a suspect node's turn is not handed to its ring
                // successor on top of that node's own turn (which would
                // double its share). Only if no other call moved the counter
                // meanwhile; losing that race merely skews one turn.
                let skipped = (first + n - start) % n;
                if skipped != 0 {
                    let after = ticket.wrapping_add(1);
                    let _ = self.counter.compare_exchange(
                        after,
                        after.wrapping_add(skipped),
                        Relaxed,
                        Relaxed,
                    );
                }
                plan
            }
            Algorithm::HashCallid => self.walk(reduce(fnv1a(call_id), n)).0,
            Algorithm::Priority => self.walk(0).0,
            Algorithm::Weight => {
                let ticket = self.counter.fetch_add(1, Relaxed);
                let start = self.weight_slots[ticket % WEIGHT_SLOTS];
                self.walk(usize::from(start)).0
            }
            Algorithm::CallLoad => self.least_loaded(&load),
            Algorithm::RelativeWeight => {
                let ticket = self.counter.fetch_add(1, Relaxed);
                let node = |pos: usize| {
                    let node = &self.nodes[usize::from(self.ring[pos])];
                    select::Relative {
                        active: node.health.accepts_new_calls(),
                        rweight: node.rweight,
                        weight: node.weight,
                        cc: node.congestion_control,
                        congestion_ms: node.latency.congestion_ms(),
                    }
                };
                // No relative weight on any active node: Kamailio's empty
                // table names the first node.
                let start = select::relative_slot(n, node, ticket).unwrap_or(0);
                self.walk(start).0
            }
            Algorithm::Latency => self.latency_optimised(),
        }
    }

    /// Algorithm 10 (Kamailio `ds_get_leastloaded`): the node with the
    /// fewest calls among those that take calls and are under their
    /// `maxload`, ties to the first in set order; failover around the ring
    /// to the others under their `maxload`.
    fn least_loaded(&self, load: &dyn Fn(usize) -> usize) -> Plan {
        let under = |i: usize| {
            let max = self.nodes[i].maxload;
            max == 0 || load(i) < max
        };
        let mut best: Option<(usize, usize)> = None;
        for (pos, &index) in self.ring.iter().enumerate() {
            let i = usize::from(index);
            if self.nodes[i].health.accepts_new_calls() && under(i) {
                let calls = load(i);
                if best.is_none_or(|(fewest, _)| calls < fewest) {
                    best = Some((calls, pos));
                }
            }
        }
        match best {
            Some((_, start)) => self.walk_where(start, under).0,
            // Every node that takes calls is full: no call for any.
            None if self.nodes.iter().any(|n| n.health.accepts_new_calls()) => Plan::new(),
            // None takes calls: the inactive ones, as for the others.
            None => self.walk_where(0, under).0,
        }
    }

    /// Algorithm 13 (Kamailio `ds_manage_route_algo13`): every node that
    /// takes calls, by its priority lowered by its estimated latency
    /// ([`select::latency_priority`]; with `cc=1` its congestion), highest
    /// first, ties in turn from a position that moves past each call's
    /// first choice (round-robin among equals).
    fn latency_optimised(&self) -> Plan {
        let n = self.ring.len();
        let start = self.counter.load(Relaxed) % n;
        let accepts = |pos: usize| {
            self.nodes[usize::from(self.ring[pos])]
                .health
                .accepts_new_calls()
        };
        if !(0..n).any(accepts) {
            self.counter.store(start + 1, Relaxed);
            return self.walk(start).0;
        }
        // Sort key: higher effective priority first, then turn order.
        let key = |pos: usize| {
            let node = &self.nodes[usize::from(self.ring[pos])];
            let latency = if node.congestion_control {
                node.latency.congestion_ms()
            } else {
                node.latency.estimate_ms()
            };
            let turn = (pos + n - start) % n;
            (
                Reverse(select::latency_priority(node.priority, latency)),
                turn,
            )
        };
        // Selection by repeated scans: the next smallest key after the
        // last one taken; O(n) per plan entry, and no allocation.
        let mut plan = Plan::new();
        let mut last = None;
        while !plan.is_full() {
            let next = (0..n)
                .filter(|&pos| accepts(pos))
                .map(|pos| (key(pos), pos))
                .filter(|(k, _)| last.as_ref().is_none_or(|l| k > l))
                .min_by(|a, b| a.0.cmp(&b.0));
            let Some((k, pos)) = next else {
                break;
            };
            if last.is_none() {
                self.counter.store(pos + 1, Relaxed);
            }
            plan.push(self.ring[pos]);
            last = Some(k);
        }
        plan
    }

    /// A call timed out or hit a transport error on node `i` (Kamailio
    /// `ds_mark_dst`). Returns whether the node should be probed now rather
    /// than at the next interval.
    ///
    /// # Panics
    /// If `i >= len()`.
    pub fn call_failed(&self, i: usize, failure: Failure) -> bool {
        let node = &self.nodes[i];
        let outcome = node.health.record_call_failure(failure);
        log_transition(&node.uri, outcome.transition);
        if outcome.stranded {
            tracing::warn!(
                "{} is down and not probed (probing mode {}, flags {}): it gets no new \
                 calls until `dispatcher.set_state a {}` (or `ap` to probe it)",
                node.uri,
                node.health.get().config().mode().number(),
                node.health.flags(),
                node.uri,
            );
        }
        outcome.probe_now
    }

    /// Node `i` answered a call with `code`: ends a run of failures.
    ///
    /// # Panics
    /// If `i >= len()`.
    pub fn call_reply(&self, i: usize, code: u16) {
        let node = &self.nodes[i];
        log_transition(&node.uri, node.health.record_call_reply(code));
    }

    /// The outcome of a probe of node `i`.
    ///
    /// # Panics
    /// If `i >= len()`.
    pub fn probed(&self, i: usize, result: ProbeResult) {
        let node = &self.nodes[i];
        log_transition(&node.uri, node.health.record_probe(result));
    }

    /// A probe of node `i` ended with `result`, `rtt` after it was sent:
    /// feeds its latency statistics when they are kept. Like Kamailio, a
    /// 408 (its local timeout, or the node's) counts as a timeout and
    /// leaves the averages alone; a transport error counts as neither.
    ///
    /// # Panics
    /// If `i >= len()`.
    pub fn probe_latency(&self, i: usize, result: ProbeResult, rtt: Option<std::time::Duration>) {
        let Some(alpha) = self.latency_alpha else {
            return;
        };
        self.nodes[i].latency.update(|stats| match (result, rtt) {
            (ProbeResult::Timeout(_) | ProbeResult::Reply(408), _) => stats.timeout(),
            (ProbeResult::Reply(_), Some(rtt)) => {
                // Whole milliseconds, truncated, as Kamailio measures.
                stats.sample(i64::try_from(rtt.as_millis()).unwrap_or(i64::MAX), alpha)
            }
            _ => {}
        });
    }

    /// Node `i`'s latency statistics; `None` when they are not kept.
    ///
    /// # Panics
    /// If `i >= len()`.
    pub fn latency(&self, i: usize) -> Option<latency::LatencyStats> {
        self.latency_alpha?;
        Some(self.nodes[i].latency.get())
    }

    /// Whether `result` is a reply that counts as alive for node `i`
    /// (`reply_codes`; 2xx always).
    ///
    /// # Panics
    /// If `i >= len()`.
    pub fn probe_reply_counts(&self, i: usize, result: ProbeResult) -> bool {
        match result {
            ProbeResult::Reply(code) => self.nodes[i]
                .health
                .get()
                .config()
                .reply_codes()
                .matches(code),
            _ => false,
        }
    }

    /// An operator's `dispatcher.set_state` on node `i`.
    ///
    /// # Panics
    /// If `i >= len()`.
    pub fn set_state(&self, i: usize, cmd: SetState) {
        let node = &self.nodes[i];
        log_transition(&node.uri, node.health.set_state(cmd));
    }

    /// Node `i`'s state and probing flag.
    ///
    /// # Panics
    /// If `i >= len()`.
    pub fn status(&self, i: usize) -> Status {
        self.nodes[i].health.status()
    }

    /// Whether node `i` is probed (its probing flag and the probing mode,
    /// by the rules of [`health`]).
    ///
    /// # Panics
    /// If `i >= len()`.
    pub fn should_probe(&self, i: usize) -> bool {
        self.nodes[i].health.should_probe()
    }

    /// Whether node `i` is out of rotation and not probed
    /// ([`health::Health::stranded`]).
    ///
    /// # Panics
    /// If `i >= len()`.
    pub fn stranded(&self, i: usize) -> bool {
        self.nodes[i].health.stranded()
    }

    /// Node `i`'s own probe From URI, if it has one.
    ///
    /// # Panics
    /// If `i >= len()`.
    pub fn ping_from(&self, i: usize) -> Option<&str> {
        self.nodes[i].ping_from.as_deref()
    }

    /// Node `i`'s dispatcher.list attributes, if it came from one.
    ///
    /// # Panics
    /// If `i >= len()`.
    pub fn attrs(&self, i: usize) -> Option<&list::Attrs> {
        self.nodes[i].attrs.as_ref()
    }

    /// The addresses node `i` may advertise besides its own (its
    /// `advertised` key), IPv4-mapped IPv6 folded to IPv4.
    ///
    /// # Panics
    /// If `i >= len()`.
    pub fn advertised(&self, i: usize) -> &[std::net::IpAddr] {
        &self.nodes[i].advertised
    }

    /// Whether new calls may go to node `i` (active or trying).
    ///
    /// # Panics
    /// If `i >= len()`.
    pub fn accepts_new_calls(&self, i: usize) -> bool {
        self.nodes[i].health.accepts_new_calls()
    }

    /// The plan starting at ring position `start` (< ring length), and the
    /// ring position of its first node.
    fn walk(&self, start: usize) -> (Plan, usize) {
        self.walk_where(start, |_| true)
    }

    /// [`Dispatcher::walk`] over the nodes `keep` accepts (by index).
    fn walk_where(&self, start: usize, keep: impl Fn(usize) -> bool) -> (Plan, usize) {
        let n = self.ring.len();
        let mut plan = Plan::new();
        let mut first = None;
        for pos in (start..n).chain(0..start) {
            let index = self.ring[pos];
            let i = usize::from(index);
            if self.nodes[i].health.accepts_new_calls() && keep(i) {
                first.get_or_insert(pos);
                plan.push(index);
                if plan.is_full() {
                    break;
                }
            }
        }
        if first.is_none() {
            // No node takes new calls: try the ones that are only down,
            // never the disabled (see `plan`).
            for pos in (start..n).chain(0..start) {
                let index = self.ring[pos];
                let i = usize::from(index);
                if self.nodes[i].health.status().state != State::Disabled && keep(i) {
                    plan.push(index);
                    if plan.is_full() {
                        break;
                    }
                }
            }
        }
        (plan, first.unwrap_or(start))
    }
}

/// Algorithms 11 and 13 without their inputs are legal (Kamailio runs
/// them) but degenerate; say so at start and on every reload.
fn warn_about_latency_inputs(cfg: &DispatcherConfig, health: &HealthConfig) {
    if cfg.destinations.is_empty() {
        return;
    }
    let latency_read = cfg.algorithm == Algorithm::Latency
        || (cfg.algorithm == Algorithm::RelativeWeight
            && cfg.destinations.iter().any(|d| d.congestion_control));
    if latency_read && health.latency().is_none() {
        tracing::warn!(
            "algorithm \"{}\" reads the probes' latency estimate, but [probe] latency_stats \
             is off: every node's latency counts as 0",
            cfg.algorithm
        );
    }
    if cfg.algorithm == Algorithm::RelativeWeight
        && cfg
            .destinations
            .iter()
            .all(|d| d.rweight.is_none() && !(d.congestion_control && d.weight.is_some()))
    {
        tracing::warn!(
            "algorithm \"relative-weight\" but no destination has an rweight: like Kamailio, \
             every call starts at the first node"
        );
    }
}

/// The node of `previous` that `dest` continues (same URI), if any.
fn stayed<'a>(previous: Option<&'a Dispatcher>, dest: &Destination) -> Option<&'a Node> {
    let uri = dest.uri.to_string();
    previous.and_then(|p| p.nodes.iter().find(|n| n.uri == uri))
}

/// Logs a node's state change at info, with its reason (e.g.
/// "sip:10.0.1.10:5080 down: 3 consecutive timeouts (2s)").
fn log_transition(uri: &str, t: Option<Transition>) {
    match t {
        // Forged ICMP can cause these with every call.
        Some(t) if t.icmp_only() => tracing::debug!("{uri} {t}"),
        Some(t) => tracing::info!("{uri} {t}"),
        None => {}
    }
}

/// IPv4-mapped IPv6 folded to IPv4, flow label and scope dropped: the form
/// pool addresses are stored and compared in.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// What differs between node `i` of `old` and node `n` of `new`, the same
/// destination (same normalised URI) before and after a reload, column by
/// column: `priority 10 -> 5`, `flags 0 -> 8`, ... Empty when nothing did.
pub fn column_changes(old: &Dispatcher, i: usize, new: &Dispatcher, n: usize) -> Vec<String> {
    let (a, b) = (&old.nodes[i], &new.nodes[n]);
    let mut out = Vec::new();
    if a.written != b.written {
        out.push(format!("uri {} -> {}", a.written, b.written));
    }
    if a.addr != b.addr {
        // A host name that resolves elsewhere now.
        out.push(format!("address {} -> {}", a.addr, b.addr));
    }
    if a.list_flags != b.list_flags {
        out.push(format!(
            "flags {} -> {} (state now {})",
            a.list_flags,
            b.list_flags,
            new.status(n).flags().as_str()
        ));
    }
    if a.priority != b.priority {
        out.push(format!("priority {} -> {}", a.priority, b.priority));
    }
    let attrs = |x: &Node| {
        x.attrs
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default()
    };
    if attrs(a) != attrs(b) {
        out.push(format!("attrs \"{}\" -> \"{}\"", attrs(a), attrs(b)));
    }
    if a.ping_from != b.ping_from {
        out.push("ping_from".to_owned());
    }
    if a.takes_tcp != b.takes_tcp || a.advertised != b.advertised {
        out.push("tcp/advertised".to_owned());
    }
    out
}

/// Kamailio's `ds_get_hash` over one or two values, what its hash
/// algorithms (0 Call-ID, 1 From URI, 2 To URI, 3 R-URI...) reduce modulo
/// the set size, and what `dispatcher.hash` shows. Bytes are C `char`s,
/// signed on x86-64 as on Kamailio's builds, so a byte from 0x80 counts
/// as negative, as it does there. Never 0.
///
/// sipedge's own `hash-callid` uses FNV-1a with a different reduction
/// ([`Dispatcher::plan`]); this function is for answering like Kamailio.
pub fn kamailio_hash(x: &[u8], y: &[u8]) -> u32 {
    // A C `char` promoted to `int`, then to `unsigned`.
    fn c(b: u8) -> u32 {
        i32::from(b as i8) as u32
    }
    fn mix(h: u32, s: &[u8]) -> u32 {
        let mut h = h;
        let mut chunks = s.chunks_exact(4);
        for p in &mut chunks {
            let v = (c(p[0]) << 24)
                .wrapping_add(c(p[1]) << 16)
                .wrapping_add(c(p[2]) << 8)
                .wrapping_add(c(p[3]));
            h = h.wrapping_add(v ^ (v >> 3));
        }
        let v = chunks
            .remainder()
            .iter()
            .fold(0u32, |v, &b| (v << 8).wrapping_add(c(b)));
        h.wrapping_add(v ^ (v >> 3))
    }
    let h = mix(mix(0, x), y);
    let h = h
        .wrapping_add(h >> 11)
        .wrapping_add((h >> 13).wrapping_add(h >> 23));
    if h == 0 {
        1
    } else {
        h
    }
}

/// Maps a hash onto `0..n` with its high bits (multiply-shift). FNV's low
/// bits only ever see the input bytes' low bits (`% 2` would be a parity of
/// the bytes), its high bits mix everything.
fn reduce(hash: u64, n: usize) -> usize {
    let n = n as u128; // usize is at most 64 bits
    ((u128::from(hash) * n) >> 64) as usize // < n, so it fits
}

fn to_u16(i: usize) -> u16 {
    u16::try_from(i).expect("pool size is checked against MAX_DESTINATIONS")
}

/// Kamailio's weight semantics over ring positions: each node gets
/// `weight` of 100 slots in set order; once 100 are handed out the rest get
/// none (they are still failover targets), and if the weights add up to
/// less than 100 the last node takes the remainder.
fn weight_shares(weights: &[u32]) -> Vec<usize> {
    let mut left = WEIGHT_SLOTS;
    let mut shares: Vec<usize> = weights
        .iter()
        .map(|&w| {
            let share = usize::try_from(w).unwrap_or(usize::MAX).min(left);
            left -= share;
            share
        })
        .collect();
    if let Some(last) = shares.last_mut() {
        *last += left;
    }
    shares
}

/// Orders 100 slots so each ring position appears `shares[pos]` times,
/// interleaved (smooth weighted round-robin) rather than in runs. Kamailio
/// shuffles randomly; this is deterministic, so any 100 consecutive calls
/// split exactly by weight and tests can assert it.
fn spread(shares: &[usize]) -> [u16; WEIGHT_SLOTS] {
    let mut credit = vec![0i64; shares.len()];
    let mut slots = [0u16; WEIGHT_SLOTS];
    for slot in &mut slots {
        for (c, &share) in credit.iter_mut().zip(shares) {
            *c += share as i64; // share <= 100
        }
        // Most credit wins; ties go to the earlier position.
        let best = (0..credit.len())
            .max_by_key(|&pos| (credit[pos], Reverse(pos)))
            .expect("spread is only called for a non-empty pool");
        credit[best] -= WEIGHT_SLOTS as i64;
        *slot = to_u16(best);
    }
    slots
}

/// Weights that do not add up to 100 are legal (Kamailio accepts them) but
/// rarely what the operator meant; say what the pool will actually do.
fn warn_about_weight_sum<'a>(weights: &[u32], shares: &[usize], uri_at: impl Fn(usize) -> &'a str) {
    let sum: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    if sum == WEIGHT_SLOTS as u64 {
        return;
    }
    for (pos, (&weight, &share)) in weights.iter().zip(shares).enumerate() {
        if usize::try_from(weight).ok() != Some(share) {
            tracing::warn!(
                node = %uri_at(pos),
                weight,
                share_percent = share,
                weights_sum = sum,
                "weights do not add up to 100; like Kamailio, the last node takes any \
                 remainder and weight beyond 100 is dropped"
            );
        }
    }
}
