//! A new INVITE from the trunk as a state machine, driven by the receive
//! path (the nodes' responses, the trunk's CANCEL, ICMP errors) and by the
//! timer task (Timer A, `fr_timeout`, `fr_inv_timeout`): no task, channel
//! or message copy per response. It answers 100, tries the nodes in the
//! dispatcher's order, fails over on silence, a failover code or a send
//! error, and never after the node has the call (a ringing 1xx or any 2xx:
//! a second INVITE would double-send a fax).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};

use bytes::{Bytes, BytesMut};
use tokio::time::{Duration, Instant};

use super::request::RecordRoute;
use super::{with_editor, Pool, Proxy, ServerInvite, Timer};
use crate::dialog::Removal;
use crate::dispatcher::health::Failure;
use crate::dispatcher::Plan;
use crate::metrics::{FailoverReason, RejectReason};
use crate::sip::{HeaderName, Message, Method, Response};
use crate::transaction::{ClientTxn, Pending, Token, T1, TIMER_SLACK};
use crate::transport::{Peer, Transport};

/// A new INVITE's state machine. The transaction table holds it (one entry
/// per branch tried) until the call is decided; the timer schedule and the
/// server transaction only hold weak references.
pub(crate) struct Call {
    state: Mutex<CallState>,
    over: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Call").field("over", &self.over).finish()
    }
}

impl Pending for Arc<Call> {
    fn is_over(&self) -> bool {
        self.over.load(Ordering::Relaxed)
    }
}

struct CallState {
    /// The pool this INVITE was planned on: its node indices stay valid
    /// whatever a reload does meanwhile.
    pool: Arc<Pool>,
    plan: Plan,
    /// The trunk's INVITE as received: the next leg, CANCEL, ACK and local
    /// answers are built from it.
    invite: Bytes,
    src: Peer,
    server: Arc<ServerInvite>,
    /// Our own Route values at the top of the INVITE, consumed.
    pop_routes: usize,
    branches: Vec<Token>,
    /// The node being tried.
    leg: Option<Leg>,
    /// When the INVITE arrived (the setup-time histogram).
    received: Instant,
    /// The earliest wake-up in the timer schedule for this call.
    armed: Option<Instant>,
    /// A node failed over from answered after all (its 2xx was relayed):
    /// the current leg is only being cancelled, and its outcome is not
    /// the caller's any more.
    answered: bool,
    weak: Weak<Call>,
}

/// One try on one node.
#[derive(Debug)]
struct Leg {
    branch: Token,
    addr: SocketAddr,
    transport: Transport,
    /// The INVITE as sent (Timer A resends it over UDP).
    bytes: Bytes,
    /// Timer A (RFC 3261 §17.1.1.2): resend to a silent node at T1,
    /// doubling, until anything comes back.
    resend_every: Duration,
    resend_at: Instant,
    heard: bool,
    /// `fr_timeout`, then `fr_inv_timeout` after a provisional reply.
    deadline: Instant,
    /// 100 only: the node may still be replaced; a ringing 1xx: never.
    trying: bool,
    ringing: bool,
    cancel_sent: bool,
    /// The trunk cancelled before the node sent any provisional: RFC 3261
    /// §9.1 forbids sending our CANCEL until one arrives.
    cancel_pending: bool,
}

/// What an event did to the current leg.
enum Step {
    Wait,
    /// Try the next node.
    Failover,
    /// The call is decided (answered, rejected, cancelled or timed out).
    Done,
}

impl Leg {
    /// Where this leg's INVITE went.
    fn peer(&self) -> Peer {
        Peer::new(self.addr, self.transport)
    }
}

impl Call {
    fn lock(&self) -> std::sync::MutexGuard<'_, CallState> {
        // A panic while holding the lock cannot leave the state torn in a
        // way worse than dropping the call; go on with it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Proxy {
    /// Starts a new INVITE: 100 to the trunk and the INVITE to the first
    /// node, so both leave with the datagrams of the same receive batch.
    pub(super) fn start_invite(&self, msg: &Message<'_>, src: Peer, server: Arc<ServerInvite>) {
        self.calls_deciding.fetch_add(1, Ordering::Relaxed);
        self.answer(msg, src, &server, 100, b"Trying");
        let pool = self.pool();
        let call = Arc::new_cyclic(|weak| Call {
            state: Mutex::new(CallState {
                plan: pool.plan(msg.call_id().unwrap_or_default()),
                pool,
                invite: Bytes::copy_from_slice(msg.as_bytes()),
                src,
                server: server.clone(),
                pop_routes: self.our_routes(msg).count,
                branches: Vec::with_capacity(2),
                leg: None,
                received: Instant::now(),
                armed: None,
                answered: false,
                weak: weak.clone(),
            }),
            over: Default::default(),
        });
        // Reachable by a CANCEL before the first leg is sent (see next_leg).
        if let Ok(mut c) = server.call.lock() {
            *c = Some(call.clone());
        }
        let mut st = call.lock();
        self.advance(&call, &mut st, msg);
    }

    /// Sends the INVITE to the next node of the plan that takes it (a send
    /// error marks the node suspect and moves on), or, with no node left,
    /// answers the trunk and ends the call.
    fn advance(&self, call: &Arc<Call>, st: &mut CallState, msg: &Message<'_>) {
        if st.answered {
            // A node failed over from answered: no other node, no 503.
            return self.conclude(call, st);
        }
        match self.next_leg(call, st, msg) {
            Some(leg) => {
                st.leg = Some(leg);
                self.arm(st);
            }
            None => {
                // The table first: whoever sees the answer sees the call gone.
                self.dialogs
                    .remove(msg.call_id().unwrap_or_default(), Removal::Failed);
                if st.server.is_cancelled() {
                    self.answer(msg, st.src, &st.server, 487, b"Request Terminated");
                } else {
                    self.metrics.invite_rejected(RejectReason::AllDown);
                    self.answer(
                        msg,
                        st.src,
                        &st.server,
                        503,
                        b"All media servers unavailable",
                    );
                }
                self.conclude(call, st);
            }
        }
    }

    fn next_leg(&self, call: &Arc<Call>, st: &mut CallState, msg: &Message<'_>) -> Option<Leg> {
        let call_id = msg.call_id().unwrap_or_default();
        for node in st.plan.by_ref() {
            if st.server.is_cancelled() {
                return None;
            }
            let addr = st.pool.addr(node);
            let branch = self.branches.next();
            let (invite, transport) =
                self.invite_for(msg, st.src, &branch, &st.pool, node, st.pop_routes)?;
            self.txns.insert(&branch, ClientTxn::Invite(call.clone()));
            st.branches.push(branch);
            self.pin(call_id, addr);
            if self.send_to(&invite, Peer::new(addr, transport)).is_err() {
                self.metrics.failover(FailoverReason::Transport);
                self.call_failed(&st.pool, node, Failure::TransportError);
                continue;
            }
            let now = Instant::now();
            return Some(Leg {
                branch,
                addr,
                transport,
                bytes: invite,
                resend_every: T1,
                resend_at: now + T1,
                heard: false,
                deadline: now + self.cfg.failover.fr_timeout,
                trying: false,
                ringing: false,
                cancel_sent: false,
                cancel_pending: false,
            });
        }
        None
    }

    /// Makes sure the timer schedule wakes this call by its next deadline.
    fn arm(&self, st: &mut CallState) {
        let Some(leg) = &st.leg else { return };
        let next = if leg.heard || leg.transport != Transport::Udp {
            leg.deadline
        } else {
            leg.deadline.min(leg.resend_at)
        };
        if st.armed.is_none_or(|a| next < a) {
            st.armed = Some(next);
            self.timers.schedule(next, Timer::Call(st.weak.clone()));
        }
    }

    /// Decided: the trunk has its final answer. What is left for the
    /// retransmission window (a 2xx retransmitted by the node, the trunk's
    /// INVITE retransmissions and its ACK for a non-2xx) is served from the
    /// tables, which the sweeper clears after LINGER; the state goes now.
    fn conclude(&self, call: &Call, st: &mut CallState) {
        // Under the call's lock, so a plain check is enough here; `over`
        // is only set once the branches are Decided, because the sweeper
        // drops an Invite entry whose call is over: set earlier, it could
        // drop one before `decide` replaced it, and a retransmitted 2xx
        // would then find no transaction.
        if call.over.load(Ordering::Acquire) {
            return;
        }
        st.leg = None;
        self.metrics.invite_setup(st.received.elapsed());
        self.calls_deciding.fetch_sub(1, Ordering::Relaxed);
        let now = Instant::now();
        let _ = st.server.decided.set(now);
        if let Ok(mut c) = st.server.call.lock() {
            *c = None;
        }
        for b in &st.branches {
            self.txns.decide(b.as_bytes(), now, st.src);
        }
        call.over.store(true, Ordering::Release);
    }

    /// Acts on what an event did to the current leg.
    fn step(&self, call: &Arc<Call>, st: &mut CallState, step: Step) {
        match step {
            Step::Wait => self.arm(st),
            Step::Done => self.conclude(call, st),
            Step::Failover => {
                if let Some(leg) = &st.leg {
                    tracing::info!(node = %leg.addr, "INVITE failed over");
                }
                st.leg = None;
                let raw = st.invite.clone();
                match Message::parse(&raw) {
                    Ok(msg) => self.advance(call, st, &msg),
                    // Parsed once already; never happens.
                    Err(_) => self.conclude(call, st),
                }
            }
        }
    }

    /// A response on one of the call's branches.
    pub(super) fn call_response(&self, call: &Arc<Call>, resp: &Message<'_>, src: Peer) {
        // Responses to our CANCEL share the branch: not the answer.
        if !resp.cseq().is_ok_and(|c| c.method == Method::Invite) {
            return;
        }
        let Some(code) = resp.status() else { return };
        let Some(branch) = resp.top_via().ok().and_then(|v| v.branch()) else {
            return;
        };
        let mut st = call.lock();
        let st = &mut *st;
        let Some(leg) = st.leg.as_mut() else {
            // Decided meanwhile: the entry is about to become Decided.
            return;
        };
        if leg.branch.as_bytes() != branch {
            // An answer from a node already failed over (late 503, or a
            // 2xx after our CANCEL): ACK a non-2xx hop by hop, relay a
            // 2xx the caller must see (RFC 3261 §16.7 step 5).
            if code >= 300 {
                self.ack_leg(st, branch, resp.header(HeaderName::To), src);
            } else if code >= 200 {
                self.relay_upstream(resp, None, Some(st.src));
                self.answered_elsewhere(st, resp, src);
            }
            return;
        }
        let now = Instant::now();
        leg.heard = true;
        let fr_inv = self.cfg.failover.fr_inv_timeout;
        if code < 200 && leg.cancel_pending {
            leg.cancel_pending = false;
            leg.cancel_sent = true;
            let (b, a) = (leg.branch, leg.peer());
            self.cancel_leg(st, &b, a);
        }
        let Some(leg) = st.leg.as_mut() else { return };
        let step = match code {
            100 => {
                leg.trying = true;
                if !leg.cancel_sent {
                    leg.deadline = now + fr_inv;
                }
                Step::Wait
            }
            101..=199 => {
                leg.ringing = true;
                if !leg.cancel_sent {
                    leg.deadline = now + fr_inv;
                }
                if !st.answered {
                    self.relay_upstream(resp, Some(&st.server), Some(st.src));
                }
                Step::Wait
            }
            200..=299 => {
                st.server.forget();
                self.relay_upstream(resp, None, Some(st.src));
                Step::Done
            }
            _ => {
                // The client transaction ACKs a non-2xx itself.
                let failover = self.cfg.failover.codes.contains(&code)
                    && !leg.ringing
                    && !leg.cancel_sent
                    && !leg.cancel_pending;
                let (b, addr) = (leg.branch, leg.addr);
                let peer = leg.peer();
                self.ack_leg(st, b.as_bytes(), resp.header(HeaderName::To), peer);
                if st.answered {
                    // The 487 to our CANCEL, or whatever: the caller has
                    // its answer from the other node.
                    Step::Done
                } else if failover {
                    self.metrics.failover(FailoverReason::Code);
                    // Marked like a silent node (the "suspect"):
                    // the next calls skip it until a probe, sent now, finds
                    // it answering.
                    if let Some(i) = st.pool.find(addr) {
                        self.call_failed(&st.pool, i, Failure::BadCode(code));
                    }
                    Step::Failover
                } else {
                    let call_id = resp.call_id().unwrap_or_default();
                    self.dialogs.remove(call_id, Removal::Failed);
                    self.relay_upstream(resp, Some(&st.server), Some(st.src));
                    Step::Done
                }
            }
        };
        self.step(call, st, step);
    }

    /// A node the call failed over from answered 2xx after all (it was
    /// only slow): that node has the call now. Pin it there, and cancel
    /// the current leg (RFC 3261 §16.7 step 10), once it has answered
    /// provisionally (§9.1).
    fn answered_elsewhere(&self, st: &mut CallState, resp: &Message<'_>, src: Peer) {
        if st.answered {
            return;
        }
        st.answered = true;
        st.server.forget();
        self.pin(resp.call_id().unwrap_or_default(), src.addr);
        self.cancel_current_leg(st);
    }

    /// The trunk cancelled the INVITE.
    pub(super) fn call_cancelled(&self, call: &Arc<Call>) {
        let mut st = call.lock();
        self.cancel_current_leg(&mut st);
    }

    /// CANCELs the leg in progress: now if the node has answered
    /// provisionally, else on its first provisional (RFC 3261 §9.1).
    fn cancel_current_leg(&self, st: &mut CallState) {
        let Some(leg) = st.leg.as_mut() else { return };
        if leg.cancel_sent || leg.cancel_pending {
            return;
        }
        if leg.trying || leg.ringing {
            leg.cancel_sent = true;
            // Wait for the node's 487 a while longer.
            leg.deadline = Instant::now() + self.cfg.failover.fr_timeout;
            let (b, a) = (leg.branch, leg.peer());
            self.cancel_leg(st, &b, a);
            // The earlier deadline must be armed.
            self.arm(st);
        } else {
            leg.cancel_pending = true;
        }
    }

    /// The node's port is closed (ICMP port unreachable): no reason to wait
    /// for `fr_timeout`.
    pub(super) fn call_unreachable(&self, call: &Arc<Call>, addr: SocketAddr) {
        let mut st = call.lock();
        let st = &mut *st;
        let Some(leg) = &st.leg else { return };
        if leg.addr != addr || leg.trying || leg.ringing {
            return;
        }
        self.metrics.failover(FailoverReason::Transport);
        self.step(call, st, Step::Failover);
    }

    /// The timer schedule woke the call at `now`.
    pub(super) fn call_timer(&self, call: &Arc<Call>, now: Instant) {
        let mut st = call.lock();
        let st = &mut *st;
        // The schedule hands entries out up to TIMER_SLACK early.
        let due = now + TIMER_SLACK;
        if st.armed.is_some_and(|a| a <= due) {
            st.armed = None;
        }
        let Some(leg) = st.leg.as_mut() else { return };
        if !leg.heard && leg.transport == Transport::Udp && leg.resend_at <= due {
            let _ = self.send(&leg.bytes, leg.addr);
            leg.resend_every *= 2;
            leg.resend_at = now + leg.resend_every;
        }
        if leg.deadline > due {
            return self.step(call, st, Step::Wait);
        }
        let (branch, addr, peer) = (leg.branch, leg.addr, leg.peer());
        let step = if st.answered {
            // Cancelling a leg the caller no longer waits for: done.
            Step::Done
        } else if leg.ringing {
            // fr_inv_timeout: the node has the call but no final.
            self.cancel_leg(st, &branch, peer);
            let raw = st.invite.clone();
            if let Ok(msg) = Message::parse(&raw) {
                self.dialogs
                    .remove(msg.call_id().unwrap_or_default(), Removal::Failed);
                self.answer(&msg, st.src, &st.server, 408, b"Request Timeout");
            }
            Step::Done
        } else if leg.cancel_sent || leg.cancel_pending {
            // Cancelled: the next-leg step sees it and answers 487.
            Step::Failover
        } else {
            if leg.trying {
                self.cancel_leg(st, &branch, peer);
            }
            self.metrics.failover(FailoverReason::Timeout);
            let fr = self.cfg.failover.fr_timeout;
            if let Some(i) = st.pool.find(addr) {
                self.call_failed(&st.pool, i, Failure::Timeout(fr));
            }
            Step::Failover
        };
        self.step(call, st, step);
    }

    /// The INVITE as sent to `node`, and the transport it goes over: the
    /// node's, or TCP when it is too large for UDP and the node takes TCP
    /// (RFC 3261 §18.1.1).
    fn invite_for(
        &self,
        msg: &Message<'_>,
        src: Peer,
        branch: &str,
        pool: &Pool,
        node: usize,
        pop_routes: usize,
    ) -> Option<(Bytes, Transport)> {
        with_editor(|ed| {
            let rr = |t| RecordRoute::for_node(pool, node, src.transport, t);
            let t = pool.transport(node);
            let out = self
                .forward_edit(ed, msg, src.addr, branch, t, rr(t), pop_routes)
                .ok()?;
            if !(pool.takes_tcp(node) && self.over_mtu(out.len(), t)) {
                return Some((Bytes::copy_from_slice(out), t));
            }
            let tcp = Transport::Tcp;
            let out = self
                .forward_edit(ed, msg, src.addr, branch, tcp, rr(tcp), pop_routes)
                .ok()?;
            Some((Bytes::copy_from_slice(out), tcp))
        })
    }

    /// A local answer to the trunk's INVITE, remembered for retransmissions.
    fn answer(
        &self,
        msg: &Message<'_>,
        src: Peer,
        server: &ServerInvite,
        code: u16,
        reason: &[u8],
    ) {
        let Ok(via) = msg.top_via() else { return };
        let tag = self.branches.tag();
        let mut out = BytesMut::with_capacity(msg.len().min(2048) + 128);
        Response::new(msg, code, reason, tag.as_bytes())
            .received(src.addr)
            .write(&mut out);
        let out = out.freeze();
        self.metrics
            .response_status(crate::metrics::ResponseOrigin::Local, code);
        // Remembered first: the trunk may retransmit its INVITE the moment
        // this answer reaches it, and must get this answer again.
        server.remember(out.clone());
        let _ = self.send_to(&out, super::reply_target(via, src));
    }

    /// CANCEL for our INVITE on `branch` to `addr`.
    fn cancel_leg(&self, st: &CallState, branch: &str, addr: Peer) {
        if let Ok(inv) = Message::parse(&st.invite) {
            self.send_hop(&inv, Method::Cancel, branch.as_bytes(), None, addr);
        }
    }

    /// ACK for a non-2xx final on `branch` from `addr`.
    fn ack_leg(&self, st: &CallState, branch: &[u8], to: Option<&[u8]>, addr: Peer) {
        if let Ok(inv) = Message::parse(&st.invite) {
            self.send_hop(&inv, Method::Ack, branch, to, addr);
        }
    }

    /// CANCEL or ACK for our INVITE on `branch` (RFC 3261 §9.1, §17.1.1.3):
    /// same Request-URI, Call-ID, From, CSeq number and branch.
    fn send_hop(
        &self,
        inv: &Message<'_>,
        method: Method<'_>,
        branch: &[u8],
        to: Option<&[u8]>,
        addr: Peer,
    ) {
        let (Some(ruri), Ok(cseq)) = (inv.request_uri_bytes(), inv.cseq()) else {
            return;
        };
        let m = String::from_utf8_lossy(method.as_bytes());
        let mut s = String::with_capacity(512);
        let _ = write!(
            s,
            "{m} {ruri} SIP/2.0\r\nVia: SIP/2.0/{t} {sent_by};branch={branch};rport\r\nMax-Forwards: 70\r\nFrom: {from}\r\nTo: {to}\r\nCall-ID: {cid}\r\nCSeq: {n} {m}\r\nContent-Length: 0\r\n\r\n",
            t = addr.transport.via_name(),
            sent_by = self.sent_by.get(addr.transport),
            branch = String::from_utf8_lossy(branch),
            ruri = String::from_utf8_lossy(ruri),
            from = String::from_utf8_lossy(inv.header(HeaderName::From).unwrap_or_default()),
            to = String::from_utf8_lossy(to.or(inv.header(HeaderName::To)).unwrap_or_default()),
            cid = String::from_utf8_lossy(inv.call_id().unwrap_or_default()),
            n = cseq.number,
        );
        let _ = self.send_to(s.as_bytes(), addr);
    }
}
