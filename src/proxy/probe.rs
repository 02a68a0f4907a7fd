//! OPTIONS health probing of the pool (Kamailio `ds_ping_interval`): every
//! probed node gets a probe each `[probe] interval`, and at once when a
//! call just failed on it or an ICMP error made it suspect, but no more
//! than one such urgent probe per node per [`Proxy::urgent_gap`] (an ICMP
//! flood must not turn into a probe flood). A probe is a client
//! transaction like any other (its branch in the transaction table); the
//! response path reports the answer. The rounds, the urgent probes and the
//! timeouts are entries of the proxy's one timer schedule ([`Timer`]): no
//! task of its own.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::BytesMut;
use tokio::time::Instant;

use super::{Pool, Proxy, Timer};
use crate::dispatcher::health::ProbeResult;
use crate::sip::{Method, OptionsRequest};
use crate::transaction::{ClientTxn, Token, TIMER_SLACK};

/// A probe waiting for its answer.
struct Pending {
    deadline: Instant,
    branch: Token,
    /// The pool the probe was sent from: `set` and `node` index it.
    pool: Arc<Pool>,
    set: usize,
    node: usize,
}

/// What the prober remembers between its wake-ups. Only the timer task
/// takes the lock, so it is never contended.
pub(super) struct Prober {
    state: Mutex<ProberState>,
    /// Nodes to probe at once (pool generation, set, node): a call just
    /// failed on them, or probing just resumed.
    pub(super) urgent: Mutex<Vec<(u64, usize, usize)>>,
    /// The first round has been sent and answered in time (readiness).
    pub(super) first_round_done: AtomicBool,
    /// `dispatcher.ping_active`: probing paused (false) or running, e.g.
    /// from a keepalived notify script on the standby.
    pub(super) active: AtomicBool,
}

impl Default for Prober {
    fn default() -> Self {
        Prober {
            state: Default::default(),
            urgent: Default::default(),
            first_round_done: AtomicBool::new(false),
            active: AtomicBool::new(true),
        }
    }
}

#[derive(Default)]
struct ProberState {
    /// Probes in flight, oldest first (one timeout for all: in order).
    pending: VecDeque<Pending>,
    cseq: u32,
    /// When each node (pool generation, set, node) last got an urgent
    /// probe: the rate limit.
    last_urgent: Vec<((u64, usize, usize), Instant)>,
    /// Urgent probes held back by the rate limit, and when they are due.
    deferred: Vec<((u64, usize, usize), Instant)>,
}

/// Whether `key` may get an urgent probe at `now`, `gap` after its last
/// one: `Ok` (and noted as sent), or `Err(when)` it may.
fn urgent_allowed(
    last: &mut Vec<((u64, usize, usize), Instant)>,
    key: (u64, usize, usize),
    now: Instant,
    gap: std::time::Duration,
) -> Result<(), Instant> {
    // Old entries (and other generations') say nothing any more.
    last.retain(|&(_, at)| at + gap > now);
    match last.iter().find(|(k, _)| *k == key) {
        Some(&(_, at)) => Err(at + gap),
        None => {
            last.push((key, now));
            Ok(())
        }
    }
}

impl Prober {
    fn state(&self) -> MutexGuard<'_, ProberState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Proxy {
    /// Starts probing: the first round now, the next ones from its entry.
    pub(super) fn start_prober(&self) {
        let now = Instant::now();
        self.tables.timers.schedule(now, Timer::ProbeRound(now));
    }

    /// A round of probes was due at `at`: probe every node that wants it
    /// (unless probing is paused) and schedule the next round an interval
    /// after this one ran (tokio's `MissedTickBehavior::Delay`).
    pub(super) fn probe_round(&self, at: Instant, now: Instant) {
        let interval = self.cfg.probe.interval;
        let next = at.max(now) + interval;
        self.tables.timers.schedule(next, Timer::ProbeRound(next));
        if !self.prober.active.load(Ordering::Relaxed) {
            // Paused from the start (a standby): serving all the same, as
            // `ready` says; systemd must not wait for a round never sent.
            if let Some(n) = self.notifier() {
                n.ready(&format!("probing paused; {}", self.status_line()));
            }
            return;
        }
        if let Some(n) = self.notifier() {
            n.status(&self.status_line());
        }
        let pool = self.pool();
        let mut st = self.prober.state();
        for (s, (_, d, _)) in pool.sets().enumerate() {
            for n in (0..d.len()).filter(|&n| d.should_probe(n)) {
                self.probe(&pool, s, n, &mut st);
            }
        }
        // Ready once this round's answers had their time (never early:
        // the schedule may hand an entry out up to its slack before).
        if !self.prober.first_round_done.load(Ordering::Relaxed) {
            let at = now + self.cfg.probe.timeout + TIMER_SLACK;
            self.tables.timers.schedule(at, Timer::FirstRoundDone);
        }
    }

    /// Asks the prober to probe every node now (probing just resumed), by
    /// the urgent path: the timer task sends, as for a failed call.
    pub(super) fn probe_all_now(&self) {
        let pool = self.pool();
        let generation = pool.generation;
        let keys: Vec<_> = pool
            .sets()
            .enumerate()
            .flat_map(|(s, (_, d, _))| {
                (0..d.len())
                    .filter(|&n| d.should_probe(n))
                    .map(move |n| (generation, s, n))
            })
            .collect();
        self.probe_urgently(keys);
    }

    /// Queues the nodes `keys` (pool generation, set, node) for the urgent
    /// path; the first entry of a batch wakes the timer task, which takes
    /// the whole list.
    pub(super) fn probe_urgently(&self, keys: impl IntoIterator<Item = (u64, usize, usize)>) {
        let first = self.prober.urgent.lock().is_ok_and(|mut urgent| {
            let first = urgent.is_empty();
            for key in keys {
                if !urgent.contains(&key) {
                    urgent.push(key);
                }
            }
            first
        });
        if first {
            self.tables
                .timers
                .schedule(Instant::now(), Timer::ProbeUrgent);
        }
    }

    /// Asks the prober to probe node `node` of set `set` (its id) now, if
    /// it is probed at all: a node `dispatcher.add` just put in the pool
    /// learns its state without waiting a whole interval.
    pub(super) fn probe_soon(&self, set: u32, node: std::net::SocketAddr) {
        let pool = self.pool();
        let Some((s, n)) = pool.sets().enumerate().find_map(|(s, (id, d, _))| {
            let n = d.find(node).filter(|&n| id == set && d.should_probe(n))?;
            Some((s, n))
        }) else {
            return;
        };
        self.probe_urgently([(pool.generation, s, n)]);
    }

    /// The least time between two urgent probes of one node: the probe
    /// timeout (a second probe before the first had its answer would tell
    /// nothing new), and at least a second.
    pub(super) fn urgent_gap(&self) -> std::time::Duration {
        self.cfg
            .probe
            .timeout
            .max(std::time::Duration::from_secs(1))
    }

    /// Probes the nodes in `urgent` now, and those the rate limit held
    /// back whose time has come; holds back those probed urgently less
    /// than [`Proxy::urgent_gap`] ago.
    pub(super) fn probe_urgent(&self) {
        let urgent = self
            .prober
            .urgent
            .lock()
            .map(|mut u| std::mem::take(&mut *u))
            .unwrap_or_default();
        let pool = self.pool();
        let mut st = self.prober.state();
        if !self.prober.active.load(Ordering::Relaxed) {
            st.deferred.clear();
            return;
        }
        let now = Instant::now();
        let gap = self.urgent_gap();
        let mut due = Vec::new();
        st.deferred.retain(|&(key, at)| {
            // Fires up to the schedule's slack early.
            let now_due = at <= now + TIMER_SLACK;
            if now_due {
                due.push(key);
            }
            !now_due
        });
        // Indices from before a reload mean nothing now.
        for key in due
            .into_iter()
            .chain(urgent)
            .filter(|&(generation, _, _)| generation == pool.generation)
        {
            let (_, set, node) = key;
            if st.deferred.iter().any(|(k, _)| *k == key) {
                continue;
            }
            // The slack too: a deferred probe whose timer fired early is due.
            match urgent_allowed(&mut st.last_urgent, key, now + TIMER_SLACK, gap) {
                Ok(()) => self.probe(&pool, set, node, &mut st),
                Err(at) => {
                    st.deferred.push((key, at));
                    self.tables.timers.schedule(at, Timer::ProbeUrgent);
                }
            }
        }
    }

    /// A probe's timeout may have run out at `now`: report those with no
    /// final answer.
    pub(super) fn probe_timeouts(&self, now: Instant) {
        let timeout = self.cfg.probe.timeout;
        let mut st = self.prober.state();
        while st.pending.front().is_some_and(|p| p.deadline <= now) {
            let Some(p) = st.pending.pop_front() else {
                break;
            };
            // Still there: no final answer came.
            if self.tables.txns.remove(p.branch.as_bytes()).is_some() {
                record(&p.pool, p.set, p.node, ProbeResult::Timeout(timeout), None);
            }
        }
    }

    pub(super) fn first_round_done(&self) {
        self.prober.first_round_done.store(true, Ordering::Relaxed);
        // Every listener was bound before the proxy was built: serving.
        if let Some(n) = self.notifier() {
            n.ready(&self.status_line());
        }
    }

    /// systemd's watchdog keep-alive, from the timer task; the next one
    /// an interval on.
    pub(super) fn watchdog(&self, now: Instant) {
        let Some(n) = self.notifier() else { return };
        n.watchdog();
        if let Some(every) = n.watchdog_interval() {
            self.tables.timers.schedule(now + every, Timer::Watchdog);
        }
    }

    /// Sends one probe to `node`, unless one is still out.
    fn probe(&self, pool: &Arc<Pool>, set: usize, node: usize, st: &mut ProberState) {
        let out = st.pending.iter().any(|p| {
            (p.set, p.node) == (set, node)
                && self.tables.txns.with(p.branch.as_bytes(), |_| ()).is_some()
        });
        if out {
            return;
        }
        let branch = self.tables.branches.next();
        let tag = self.tables.branches.tag();
        st.cseq = st.cseq.wrapping_add(1);
        let Some((_, d, _)) = pool.set_at(set) else {
            return;
        };
        // As written: Kamailio's probe keeps the user part.
        let target = d.written(node);
        let from = d
            .ping_from(node)
            .map(str::to_owned)
            .unwrap_or_else(|| self.cfg.probe.ping_from_or(&self.cfg.listen.advertise));
        let method = Method::from_bytes(self.cfg.probe.method.as_bytes());
        let transport = d.transport(node);
        let mut buf = BytesMut::with_capacity(512);
        OptionsRequest {
            method,
            target: target.as_bytes(),
            transport: transport.via_name(),
            sent_by: self.me.sent_by()[transport].as_bytes(),
            branch: branch.as_bytes(),
            from_uri: from.as_bytes(),
            from_tag: tag.as_bytes(),
            // Unique per probe: the branch is.
            call_id: branch.as_bytes(),
            cseq: st.cseq,
            user_agent: Some(b"sipedge"),
        }
        .write(&mut buf);
        let now = Instant::now();
        let generation = pool.generation;
        self.tables.txns.insert(
            &branch,
            ClientTxn::Probe {
                set,
                node,
                generation,
                sent: now,
            },
        );
        let to = crate::transport::Peer::new(d.addr(node), transport);
        if self.send_to(&buf, to).is_err() {
            self.tables.txns.remove(branch.as_bytes());
            record(pool, set, node, ProbeResult::TransportError, None);
            return;
        }
        let deadline = now + self.cfg.probe.timeout;
        // Fires at the deadline at the earliest (see `probe_round`).
        self.tables
            .timers
            .schedule(deadline + TIMER_SLACK, Timer::ProbeTimeout);
        st.pending.push_back(Pending {
            deadline,
            branch,
            pool: pool.clone(),
            set,
            node,
        });
    }

    /// The response path saw the final answer to a probe of `node` in
    /// set number `set` of pool generation `generation`.
    pub(super) fn probe_answered(
        &self,
        set: usize,
        node: usize,
        generation: u64,
        sent: Instant,
        code: u16,
    ) {
        let rtt = sent.elapsed();
        tracing::trace!(set, node, code, ?rtt, "probe answered");
        let pool = self.pool();
        if pool.generation != generation {
            // Sent before a reload: the index may name another node now.
            return;
        }
        record(&pool, set, node, ProbeResult::Reply(code), Some(rtt));
    }
}

/// Records a probe's outcome into the node's health and its series.
fn record(
    pool: &Pool,
    set: usize,
    node: usize,
    result: ProbeResult,
    rtt: Option<std::time::Duration>,
) {
    let Some((_, d, series)) = pool.set_at(set) else {
        return;
    };
    if node >= d.len() {
        return;
    }
    let alive = d.probe_reply_counts(node, result);
    d.probed(node, result);
    d.probe_latency(node, result, rtt);
    if let Some(m) = series.get(node) {
        m.probe(result, alive, rtt);
        if let Some(stats) = d.latency(node) {
            m.latency(&stats);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urgent_probes_of_a_node_are_a_gap_apart() {
        let gap = std::time::Duration::from_secs(1);
        let t0 = Instant::now();
        let mut last = Vec::new();
        let (a, b) = ((1, 0, 0), (1, 0, 1));
        assert_eq!(urgent_allowed(&mut last, a, t0, gap), Ok(()));
        let soon = t0 + std::time::Duration::from_millis(10);
        assert_eq!(urgent_allowed(&mut last, a, soon, gap), Err(t0 + gap));
        assert_eq!(urgent_allowed(&mut last, b, soon, gap), Ok(()), "per node");
        assert_eq!(urgent_allowed(&mut last, a, t0 + gap, gap), Ok(()));
        assert_eq!(last.len(), 2);
        // Another pool generation is another node.
        assert_eq!(urgent_allowed(&mut last, (2, 0, 0), t0 + gap, gap), Ok(()));
    }
}
