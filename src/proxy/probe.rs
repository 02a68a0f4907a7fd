//! OPTIONS health probing of the pool (Kamailio `ds_ping_interval`): every
//! probed node gets a probe each `[probe] interval`, and at once when a
//! call just failed on it. A probe is a client transaction like any other
//! (its branch in the transaction table); the response path reports the
//! answer, and this task reports the probes that ran out of `timeout`.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::time::{sleep_until, Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::{Pool, Proxy};
use crate::dispatcher::health::ProbeResult;
use crate::sip::{Method, OptionsRequest};
use crate::transaction::{ClientTxn, Token};

/// A probe waiting for its answer.
struct Pending {
    deadline: Instant,
    branch: Token,
    /// The pool the probe was sent from: `set` and `node` index it.
    pool: Arc<Pool>,
    set: usize,
    node: usize,
}

impl Proxy {
    /// The probe task: a round of probes at start and every interval, the
    /// urgent ones in between, and the timeouts.
    pub(super) async fn run_prober(self: Arc<Self>, cancel: CancellationToken) {
        let interval = self.cfg.probe.interval;
        let timeout = self.cfg.probe.timeout;
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // Probes in flight, oldest first (one timeout for all: in order).
        let mut pending: VecDeque<Pending> = VecDeque::new();
        let mut cseq: u32 = 0;
        loop {
            let next_timeout = pending.front().map(|p| p.deadline);
            let expire = async {
                match next_timeout {
                    Some(at) => sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                () = cancel.cancelled() => return,
                () = expire => {
                    let now = Instant::now();
                    while pending.front().is_some_and(|p| p.deadline <= now) {
                        let Some(p) = pending.pop_front() else { break };
                        // Still there: no final answer came.
                        if self.txns.remove(p.branch.as_bytes()).is_some() {
                            record(&p.pool, p.set, p.node, ProbeResult::Timeout(timeout), None);
                        }
                    }
                }
                () = self.probe_now.notified() => {
                    let paused = !self.probing_active.load(Ordering::Relaxed);
                    let urgent = self
                        .urgent_probes
                        .lock()
                        .map(|mut u| std::mem::take(&mut *u))
                        .unwrap_or_default();
                    let pool = self.pool();
                    // Indices from before a reload mean nothing now.
                    for (_, node) in urgent
                        .into_iter()
                        .filter(|&(generation, _)| !paused && generation == pool.generation)
                    {
                        self.probe(&pool, 0, node, &mut pending, &mut cseq, timeout);
                    }
                }
                _ = tick.tick() => {
                    if !self.probing_active.load(Ordering::Relaxed) {
                        continue;
                    }
                    let pool = self.pool();
                    let sets: Vec<(usize, usize)> = pool
                        .sets()
                        .enumerate()
                        .flat_map(|(s, (_, d, _))| {
                            (0..d.len()).filter(move |&n| d.should_probe(n)).map(move |n| (s, n))
                        })
                        .collect();
                    for (set, node) in sets {
                        self.probe(&pool, set, node, &mut pending, &mut cseq, timeout);
                    }
                    // Ready once this round's answers had their time.
                    if !self.first_round_done.load(Ordering::Relaxed) {
                        let p = self.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(timeout).await;
                            p.first_round_done.store(true, Ordering::Relaxed);
                        });
                    }
                }
            }
        }
    }

    /// Sends one probe to `node`, unless one is still out.
    fn probe(
        &self,
        pool: &Arc<Pool>,
        set: usize,
        node: usize,
        pending: &mut VecDeque<Pending>,
        cseq: &mut u32,
        timeout: std::time::Duration,
    ) {
        let out = pending.iter().any(|p| {
            (p.set, p.node) == (set, node) && self.txns.with(p.branch.as_bytes(), |_| ()).is_some()
        });
        if out {
            return;
        }
        let branch = self.branches.next();
        let tag = self.branches.tag();
        *cseq = cseq.wrapping_add(1);
        let Some((_, d, _)) = pool.set_at(set) else {
            return;
        };
        let target = d.uri(node);
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
            sent_by: self.sent_by.get(transport).as_bytes(),
            branch: branch.as_bytes(),
            from_uri: from.as_bytes(),
            from_tag: tag.as_bytes(),
            // Unique per probe: the branch is.
            call_id: branch.as_bytes(),
            cseq: *cseq,
            user_agent: Some(b"sipedge"),
        }
        .write(&mut buf);
        let now = Instant::now();
        let generation = pool.generation;
        self.txns.insert(
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
            self.txns.remove(branch.as_bytes());
            record(pool, set, node, ProbeResult::TransportError, None);
            return;
        }
        pending.push_back(Pending {
            deadline: now + timeout,
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
    if let Some(m) = series.get(node) {
        m.probe(result, alive, rtt);
    }
}
