//! Which captured messages go to the collector (`[capture] what`):
//! sans-I/O, fed each message's call facts and the time, returning what to
//! send now. Runs on the capture task, never on the call path.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::sip::Method;

/// What `[capture] what` selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum What {
    /// Every message received or sent, probes and keep-alives included.
    #[default]
    All,
    /// The messages of calls: those whose CSeq method is one of
    /// [`CALL_METHODS`] (INVITE transactions, the requests of their
    /// dialogs, and the answers to both). No OPTIONS probes or
    /// keep-alives, no REGISTER, SUBSCRIBE, NOTIFY, MESSAGE, PUBLISH.
    Calls,
    /// The messages of calls (as [`What::Calls`]) that got a final answer
    /// of 300 or more to an INVITE (initial or re-INVITE; from a node, a
    /// trunk or sipedge itself, including a 503 that made it fail over):
    /// a call's messages are held until then (bounded, see
    /// [`Limits`]) and sent at once, and its later ones as they come.
    Failures,
}

/// The CSeq methods of a call's messages for [`What::Calls`].
pub const CALL_METHODS: [Method<'static>; 8] = [
    Method::Invite,
    Method::Ack,
    Method::Cancel,
    Method::Bye,
    Method::Prack,
    Method::Update,
    Method::Info,
    Method::Refer,
];

/// What the filter needs to know of one message.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    pub call_id: &'a [u8],
    pub cseq_method: Method<'a>,
    /// A response's status; `None` for a request.
    pub status: Option<u16>,
}

impl Facts<'_> {
    fn is_call(&self) -> bool {
        CALL_METHODS.contains(&self.cseq_method)
    }

    /// A final answer of 300 or more to an INVITE.
    fn is_failure(&self) -> bool {
        self.cseq_method == Method::Invite && self.status.is_some_and(|s| s >= 300)
    }

    /// The call is over: the answer to its BYE, or to its CANCEL.
    fn ends_call(&self) -> bool {
        matches!(self.cseq_method, Method::Bye | Method::Cancel)
            && self.status.is_some_and(|s| s >= 200)
    }
}

/// The bounds on what [`What::Failures`] holds while it waits for a
/// call's outcome: beyond them the oldest held call is forgotten (its
/// messages are never sent, even should it fail later).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Calls held at once.
    pub calls: usize,
    /// Messages held per call; later ones are not held.
    pub per_call: usize,
    /// Bytes held in all.
    pub bytes: usize,
    /// A call is held this long after its first message, and a failed
    /// call's messages pass this long after its last one.
    pub hold: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            calls: 10_000,
            per_call: 32,
            bytes: 32 << 20,
            hold: Duration::from_secs(300),
        }
    }
}

/// A call [`What::Failures`] holds or passes.
struct Call<T> {
    /// Its key in the age order.
    seq: u64,
    since: Instant,
    /// Held messages and their sizes; `None` once the call failed (its
    /// messages then pass).
    held: Option<Vec<(T, usize)>>,
}

/// The filter: stateless for `all` and `calls`, a bounded table of calls
/// for `failures`.
pub struct Filter<T> {
    what: What,
    limits: Limits,
    calls: HashMap<Box<[u8]>, Call<T>>,
    /// Call-IDs by first (or, once failed, last) message: what goes first
    /// when a bound is hit.
    order: BTreeMap<u64, Box<[u8]>>,
    next_seq: u64,
    bytes: usize,
}

impl<T> Filter<T> {
    pub fn new(what: What, limits: Limits) -> Filter<T> {
        Filter {
            what,
            limits,
            calls: HashMap::new(),
            order: BTreeMap::new(),
            next_seq: 0,
            bytes: 0,
        }
    }

    /// Offers one message (`item`, `size` bytes, `facts` about it, `None`
    /// when it has no readable Call-ID or CSeq) at `now`; what may go to
    /// the collector is pushed onto `out`, in order.
    pub fn offer(
        &mut self,
        now: Instant,
        facts: Option<Facts<'_>>,
        item: T,
        size: usize,
        out: &mut Vec<T>,
    ) {
        match (self.what, facts) {
            (What::All, _) => out.push(item),
            (What::Calls, Some(f)) if f.is_call() => out.push(item),
            (What::Failures, Some(f)) if f.is_call() => {
                self.offer_failures(now, f, item, size, out)
            }
            _ => {}
        }
    }

    /// Calls held or passing now.
    pub fn calls(&self) -> usize {
        self.calls.len()
    }

    fn offer_failures(
        &mut self,
        now: Instant,
        f: Facts<'_>,
        item: T,
        size: usize,
        out: &mut Vec<T>,
    ) {
        self.expire(now);
        let seq = self.next_seq;
        self.next_seq += 1;
        if !self.calls.contains_key(f.call_id) {
            if f.ends_call() {
                return;
            }
            let key: Box<[u8]> = f.call_id.into();
            self.order.insert(seq, key.clone());
            let call = Call {
                seq,
                since: now,
                held: Some(Vec::new()),
            };
            self.calls.insert(key, call);
        }
        let Some(call) = self.calls.get_mut(f.call_id) else {
            return;
        };
        let failed = match &mut call.held {
            None => {
                out.push(item);
                true
            }
            Some(held) if f.is_failure() => {
                let held = std::mem::take(held);
                call.held = None;
                self.bytes -= held.iter().map(|(_, n)| n).sum::<usize>();
                out.extend(held.into_iter().map(|(t, _)| t));
                out.push(item);
                true
            }
            Some(_) if f.ends_call() => false,
            Some(held) => {
                if held.len() < self.limits.per_call {
                    held.push((item, size));
                    self.bytes += size;
                }
                false
            }
        };
        if failed {
            // A failed call's messages pass, and it stays known for `hold`
            // after its last one (and goes last when a bound is hit).
            self.order.remove(&call.seq);
            call.seq = seq;
            call.since = now;
            self.order.insert(seq, f.call_id.into());
        }
        if f.ends_call() {
            self.forget(f.call_id);
        }
        self.shed();
    }

    /// Forgets calls older than `hold`.
    fn expire(&mut self, now: Instant) {
        while let Some((_, key)) = self.order.first_key_value() {
            let old = self
                .calls
                .get(key)
                .is_none_or(|c| now.duration_since(c.since) >= self.limits.hold);
            if !old {
                break;
            }
            let key = key.clone();
            self.forget(&key);
        }
    }

    /// Forgets the oldest calls while a bound is exceeded.
    fn shed(&mut self) {
        while self.calls.len() > self.limits.calls || self.bytes > self.limits.bytes {
            let Some((_, key)) = self.order.pop_first() else {
                break;
            };
            self.forget(&key);
        }
    }

    fn forget(&mut self, call_id: &[u8]) {
        if let Some(call) = self.calls.remove(call_id) {
            self.order.remove(&call.seq);
            if let Some(held) = call.held {
                self.bytes -= held.iter().map(|(_, n)| n).sum::<usize>();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(call: &'static str, method: Method<'static>, status: Option<u16>) -> Facts<'static> {
        Facts {
            call_id: call.as_bytes(),
            cseq_method: method,
            status,
        }
    }

    fn run(what: What, limits: Limits, msgs: &[(u64, Facts<'static>, u32)]) -> Vec<u32> {
        let t0 = Instant::now();
        let mut f = Filter::new(what, limits);
        let mut out = Vec::new();
        for (secs, facts, id) in msgs {
            f.offer(
                t0 + Duration::from_secs(*secs),
                Some(*facts),
                *id,
                100,
                &mut out,
            );
        }
        out
    }

    fn ladder(call: &'static str, final_status: u16) -> Vec<(u64, Facts<'static>, u32)> {
        vec![
            (0, facts(call, Method::Invite, None), 1),
            (0, facts(call, Method::Invite, Some(100)), 2),
            (1, facts(call, Method::Invite, Some(final_status)), 3),
            (1, facts(call, Method::Ack, None), 4),
        ]
    }

    #[test]
    fn all_passes_everything_and_calls_leaves_out_probes() {
        let mut msgs = ladder("a", 200);
        msgs.push((2, facts("p", Method::Options, None), 5));
        msgs.push((2, facts("p", Method::Options, Some(200)), 6));
        msgs.push((2, facts("r", Method::Register, None), 7));
        msgs.push((3, facts("a", Method::Bye, None), 8));
        assert_eq!(
            run(What::All, Limits::default(), &msgs),
            [1, 2, 3, 4, 5, 6, 7, 8]
        );
        assert_eq!(run(What::Calls, Limits::default(), &msgs), [1, 2, 3, 4, 8]);
        let t0 = Instant::now();
        let mut f = Filter::new(What::Calls, Limits::default());
        let mut out = Vec::new();
        f.offer(t0, None, 9, 1, &mut out);
        assert!(out.is_empty(), "unreadable messages belong to no call");
        let mut f = Filter::new(What::All, Limits::default());
        f.offer(t0, None, 9, 1, &mut out);
        assert_eq!(out, [9]);
    }

    #[test]
    fn failures_sends_a_failed_call_whole_and_nothing_of_a_good_one() {
        let mut msgs = ladder("good", 200);
        msgs.push((2, facts("good", Method::Bye, None), 10));
        msgs.push((2, facts("good", Method::Bye, Some(200)), 11));
        let bad: Vec<_> = ladder("bad", 503)
            .into_iter()
            .map(|(t, f, id)| (t, f, id + 20))
            .collect();
        msgs.extend(bad);
        msgs.push((3, facts("p", Method::Options, Some(503)), 30));
        assert_eq!(
            run(What::Failures, Limits::default(), &msgs),
            [21, 22, 23, 24]
        );
    }

    #[test]
    fn a_failover_counts_and_the_rest_of_the_call_follows() {
        let msgs = [
            (0, facts("c", Method::Invite, None), 1),
            (0, facts("c", Method::Invite, Some(503)), 2), // node 0
            (0, facts("c", Method::Ack, None), 3),
            (1, facts("c", Method::Invite, Some(200)), 4), // node 1
            (9, facts("c", Method::Bye, None), 5),
            (9, facts("c", Method::Bye, Some(200)), 6),
            (9, facts("c", Method::Bye, None), 7), // a stray retransmission: call forgotten
        ];
        let limits = Limits::default();
        assert_eq!(run(What::Failures, limits, &msgs), [1, 2, 3, 4, 5, 6]);
        let t0 = Instant::now();
        let mut f = Filter::new(What::Failures, limits);
        let mut out = Vec::new();
        for (s, facts, id) in msgs {
            f.offer(t0 + Duration::from_secs(s), Some(facts), id, 1, &mut out);
        }
        assert_eq!(f.calls(), 1, "the stray BYE's call is held, nothing else");
    }

    #[test]
    fn a_failed_reinvite_brings_the_held_ladder() {
        let mut msgs = ladder("fax", 200);
        msgs.push((30, facts("fax", Method::Invite, None), 5));
        msgs.push((30, facts("fax", Method::Invite, Some(488)), 6));
        assert_eq!(
            run(What::Failures, Limits::default(), &msgs),
            [1, 2, 3, 4, 5, 6]
        );
    }

    #[test]
    fn holding_is_bounded_by_calls_messages_bytes_and_time() {
        let limits = Limits {
            calls: 2,
            per_call: 2,
            bytes: 1000,
            hold: Duration::from_secs(60),
        };
        // Three calls: the first is shed when the third comes, and so its
        // INVITE is never sent; a call's third message is not held.
        let msgs = [
            (0, facts("a", Method::Invite, None), 1),
            (0, facts("b", Method::Invite, None), 2),
            (0, facts("c", Method::Invite, None), 3),
            (0, facts("b", Method::Invite, Some(100)), 4),
            (0, facts("b", Method::Invite, Some(180)), 5),
            (0, facts("b", Method::Invite, Some(486)), 6),
            (0, facts("a", Method::Invite, Some(503)), 7),
            (0, facts("c", Method::Invite, Some(503)), 8),
        ];
        assert_eq!(run(What::Failures, limits, &msgs), [2, 4, 6, 7, 8]);
        // Held past `hold`: forgotten.
        let msgs = [
            (0, facts("a", Method::Invite, None), 1),
            (61, facts("a", Method::Invite, Some(503)), 2),
        ];
        assert_eq!(run(What::Failures, limits, &msgs), [2]);
        // Bytes: 100 each, 1000 at most.
        let t0 = Instant::now();
        let mut f = Filter::new(
            What::Failures,
            Limits {
                calls: 100,
                ..limits
            },
        );
        let mut out = Vec::new();
        let ids: Vec<String> = (0..20).map(|i| format!("call{i}")).collect();
        for id in &ids {
            let fx = Facts {
                call_id: id.as_bytes(),
                cseq_method: Method::Invite,
                status: None,
            };
            f.offer(t0, Some(fx), 0u8, 100, &mut out);
        }
        assert_eq!(f.calls(), 10);
        assert!(out.is_empty());
    }
}
