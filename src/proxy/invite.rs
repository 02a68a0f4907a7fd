//! The driver of a new INVITE from the trunk: it feeds the sans-I/O
//! machines of [`crate::transaction`] (the trunk's server transaction and
//! the client side with failover) with what the receive path and the timer
//! schedule see, and carries out what they ask: sends, relays, local
//! answers, pins, health marks, counters. No task, channel or message copy
//! per response; the receive thread that read an event drives the call to
//! the end under its lock.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use bytes::{Bytes, BytesMut};
use tokio::time::Instant;

use super::forward::RecordRoute;
use super::rescue::Refusal;
use super::{with_editor, Pool, Proxy, Timer};
use crate::dialog::Removal;
use crate::metrics::CallOutcome;
use crate::sip::{HeaderName, HopRequest, Message, Method};
use crate::transaction::invite::{Action, InviteClient, Settings};
use crate::transaction::server::{Matched, ServerInvite};
use crate::transaction::{ClientTxn, Pending, Token};
use crate::transport::{Peer, SendFault, Transport};

/// A new INVITE from the trunk: its server transaction, held in the
/// server table until it has lingered after its final answer, and while
/// it is deciding, the client side. The client table holds it for each
/// branch tried until it is decided; the timer schedule only weakly.
pub(crate) struct Call {
    state: Mutex<CallState>,
    /// Decided: the sweeper may drop the branches' `Invite` entries (set
    /// only once they became `Decided`).
    over: AtomicBool,
}

struct CallState {
    server: ServerInvite,
    /// Until the call is decided.
    client: Option<Box<Deciding>>,
    /// Where the INVITE came from: answers go back there.
    src: Peer,
    /// When the INVITE arrived (the setup-time histogram).
    received: Instant,
    /// The earliest wake-up in the timer schedule for this call.
    armed: Option<Instant>,
    weak: Weak<Call>,
}

/// What only a deciding call needs.
struct Deciding {
    machine: InviteClient,
    /// The pool this INVITE was planned on: its node indices stay valid
    /// whatever a reload does meanwhile.
    pool: Arc<Pool>,
    /// The trunk's INVITE as received: the next leg and local answers are
    /// built from it (parsed again only for those, which are rare).
    invite: Bytes,
    /// Where its Call-ID is in `invite`: pins need it on every event.
    call_id: std::ops::Range<usize>,
    /// Our own Route values at the top of the INVITE, consumed.
    pop_routes: usize,
    /// The node of the try sent and not yet ended, for its outcome
    /// (`sipedge_destination_call_outcomes_total`).
    open: Option<usize>,
}

impl std::fmt::Debug for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Call").field("over", &self.over).finish()
    }
}

impl Pending for Arc<Call> {
    fn is_over(&self) -> bool {
        self.over.load(Ordering::Acquire)
    }
}

impl Call {
    /// A call for the INVITE `msg` from `src`, planned on `pool`; `load(i)`
    /// is the number of calls node `i` has now (for `call-load`).
    pub(super) fn new(
        msg: &Message<'_>,
        src: Peer,
        pool: Arc<Pool>,
        pop_routes: usize,
        load: impl Fn(usize) -> usize,
    ) -> Arc<Call> {
        let plan = pool.plan_with_load(msg.call_id().unwrap_or_default(), load);
        Arc::new_cyclic(|weak| Call {
            state: Mutex::new(CallState {
                server: ServerInvite::default(),
                client: Some(Box::new(Deciding {
                    machine: InviteClient::new(plan),
                    pool,
                    invite: Bytes::copy_from_slice(msg.as_bytes()),
                    call_id: slice_range(msg.as_bytes(), msg.call_id().unwrap_or_default()),
                    pop_routes,
                    open: None,
                })),
                src,
                received: Instant::now(),
                armed: None,
                weak: weak.clone(),
            }),
            over: AtomicBool::new(false),
        })
    }

    fn lock(&self) -> MutexGuard<'_, CallState> {
        // A panic while holding the lock cannot leave the state torn in a
        // way worse than dropping the call; go on with it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Deciding (not yet answered finally).
    pub(super) fn is_deciding(&self) -> bool {
        !self.over.load(Ordering::Acquire)
    }

    /// Lingered long enough after its final answer.
    pub(super) fn expired(&self, now: Instant) -> bool {
        self.lock().server.expired(now.into_std())
    }
}

thread_local! {
    /// The actions of one event, reused: no allocation per event.
    static ACTIONS: std::cell::RefCell<Vec<Action>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Where `part` (a slice of `whole`) lies in `whole`; empty when it is
/// not part of it.
fn slice_range(whole: &[u8], part: &[u8]) -> std::ops::Range<usize> {
    let start = (part.as_ptr() as usize).wrapping_sub(whole.as_ptr() as usize);
    match start.checked_add(part.len()) {
        Some(end) if end <= whole.len() => start..end,
        _ => 0..0,
    }
}

/// The try on `node` ended as `outcome`: counted on the node (a late 2xx
/// from a node failed over from counts too, though its try is not the open
/// one).
fn end_try(d: &mut Deciding, node: usize, outcome: CallOutcome) {
    if let Some(m) = d.pool.node_metrics.get(node) {
        m.call_outcome(outcome);
    }
    if d.open == Some(node) {
        d.open = None;
    }
}

/// Runs `f` with this thread's action buffer, empty (a fresh one if it is
/// in use).
fn with_actions<R>(f: impl FnOnce(&mut Vec<Action>) -> R) -> R {
    ACTIONS.with(|a| match a.try_borrow_mut() {
        Ok(mut v) => {
            v.clear();
            f(&mut v)
        }
        Err(_) => f(&mut Vec::new()),
    })
}

impl Proxy {
    fn invite_settings(&self) -> Settings<'_> {
        Settings {
            fr_timeout: self.cfg.failover.fr_timeout,
            fr_inv_timeout: self.cfg.failover.fr_inv_timeout,
            failover_codes: &self.cfg.failover.codes,
        }
    }

    /// Starts a new INVITE: 100 to the trunk and the INVITE to the first
    /// node, so both leave with the datagrams of the same receive batch.
    pub(super) fn start_invite(&self, call: &Arc<Call>, msg: &Message<'_>) {
        self.calls_deciding.fetch_add(1, Ordering::Relaxed);
        self.on_call(call, Some(msg), None, None, |st, m, _, out| {
            self.answer(st, msg, 100, b"Trying");
            m.start(out);
        });
    }

    /// A retransmission of the INVITE: what the server transaction says.
    pub(super) fn invite_again(&self, call: &Call, src: Peer) {
        let again = call.lock().server.on_invite();
        if let Matched::Repeat(last) = again {
            let _ = self.send_to(&last, src);
        }
    }

    /// An ACK matching the INVITE's transaction: true when it ends here (a
    /// non-2xx's ACK), false when it goes on (RFC 6026: a 2xx's ACK).
    pub(super) fn invite_acked(&self, call: &Call) -> bool {
        call.lock().server.on_ack() == Matched::Absorb
    }

    /// A response to the INVITE on one of the call's branches.
    pub(super) fn call_response(&self, call: &Arc<Call>, resp: &Message<'_>) {
        // Responses to our CANCEL share the branch: not the answer.
        if !resp.cseq().is_ok_and(|c| c.method == Method::Invite) {
            return;
        }
        let (Some(code), Some(branch)) =
            (resp.status(), resp.top_via().ok().and_then(|v| v.branch()))
        else {
            return;
        };
        let now = std::time::Instant::now();
        self.on_call(call, None, Some(resp), None, |_, m, s, out| {
            m.on_response(now, branch, code, s, out)
        });
    }

    /// The trunk cancelled the INVITE.
    pub(super) fn call_cancelled(&self, call: &Arc<Call>) {
        let now = std::time::Instant::now();
        self.on_call(call, None, None, None, |_, m, s, out| {
            m.on_cancel(now, s, out)
        });
    }

    /// `addr` is unreachable (ICMP port unreachable, a failed connect).
    pub(super) fn call_unreachable(&self, call: &Arc<Call>, addr: SocketAddr) {
        self.on_call(call, None, None, None, |_, m, _, out| {
            m.on_unreachable(addr, out)
        });
    }

    /// The timer schedule woke the call at `now`.
    pub(super) fn call_timer(&self, call: &Arc<Call>, now: Instant) {
        self.on_call(call, None, None, Some(now), |_, m, s, out| {
            m.on_timer(now.into_std(), s, out)
        });
    }

    /// One event for a deciding call, under its lock: `event` feeds the
    /// machine (and may answer the trunk first), then its actions are
    /// carried out. `woke`: the timer entry that fired at that instant
    /// is spent (the schedule hands entries out up to TIMER_SLACK early).
    fn on_call(
        &self,
        call: &Arc<Call>,
        invite: Option<&Message<'_>>,
        resp: Option<&Message<'_>>,
        woke: Option<Instant>,
        event: impl FnOnce(&mut CallState, &mut InviteClient, &Settings<'_>, &mut Vec<Action>),
    ) {
        let s = self.invite_settings();
        let mut st = call.lock();
        if let Some(now) = woke {
            let due = now + crate::transaction::TIMER_SLACK;
            if st.armed.is_some_and(|a| a <= due) {
                st.armed = None;
            }
        }
        with_actions(|out| {
            let Some(mut d) = st.client.take() else {
                return;
            };
            event(&mut st, &mut d.machine, &s, out);
            st.client = Some(d);
            self.drive(call, &mut st, invite, resp, out);
        });
    }

    /// Carries out the machine's actions (and those they lead to: a send
    /// error is fed back), then arms the next wake-up. `invite` is the
    /// received INVITE when at hand (else the stored copy is parsed, only
    /// for an action that builds on it), `resp` the response being handled.
    fn drive(
        &self,
        call: &Arc<Call>,
        st: &mut CallState,
        invite: Option<&Message<'_>>,
        resp: Option<&Message<'_>>,
        out: &mut Vec<Action>,
    ) {
        let Some(mut d) = st.client.take() else {
            return;
        };
        let stored = d.invite.clone();
        let call_id = stored.get(d.call_id.clone()).unwrap_or_default();
        // Runs `f` on the received INVITE: at hand, or parsed from the copy
        // (parsed once already, so it does not fail).
        let with_invite = |f: &mut dyn FnMut(&Message<'_>)| match invite {
            Some(m) => f(m),
            None => {
                if let Ok(m) = Message::parse(&stored) {
                    f(&m);
                }
            }
        };
        let s = self.invite_settings();
        let mut decided = false;
        let mut i = 0;
        while i < out.len() {
            let action = std::mem::replace(&mut out[i], Action::Decided);
            i += 1;
            match action {
                Action::Forward { node } => {
                    if let Some(m) = d.pool.node_metrics.get(node) {
                        m.call_routed();
                    }
                    d.open = Some(node);
                    let addr = d.pool.addr(node);
                    let branch = self.tables.branches.next();
                    self.pin(call_id, addr);
                    let mut built = None;
                    with_invite(&mut |inv| {
                        built = self.invite_for(inv, st.src, &branch, &d.pool, node, d.pop_routes);
                    });
                    let Some((bytes, transport)) = built else {
                        d.machine.send_failed(node, out);
                        continue;
                    };
                    let to = Peer::new(addr, transport);
                    // The call's story, one line per decision (grep the
                    // Call-ID): this node, each failover, the answer.
                    tracing::info!(
                        call_id = %Lossy(call_id),
                        set = d.pool.set,
                        node = d.pool.uri(node),
                        to = %to,
                        peer = %st.src,
                        "INVITE routed to node"
                    );
                    self.tables.txns.insert(
                        &branch,
                        ClientTxn::Invite {
                            call: call.clone(),
                            to,
                        },
                    );
                    // Before the send: its ICMP error may be read (on
                    // another thread) before the send returns.
                    self.watch_icmp(to.addr, super::icmp::Waiter::call(call));
                    match self.send_to(&bytes, to) {
                        Ok(()) => {
                            let now = Instant::now().into_std();
                            d.machine.sent(now, node, branch, to, bytes, &s);
                        }
                        Err(e) => match SendFault::of(&e) {
                            SendFault::Peer => d.machine.send_failed(node, out),
                            // The node never saw it: not its failure.
                            fault => {
                                let too_large = fault == SendFault::TooLarge;
                                d.machine.send_failed_here(node, too_large, out);
                            }
                        },
                    }
                }
                Action::Resend { to, bytes } => {
                    let _ = self.send_to(&bytes, to);
                }
                Action::Cancel { branch, to } => {
                    self.send_hop(&d.machine, Method::Cancel, &branch, None, to);
                }
                Action::Ack { branch, to } => {
                    let resp_to = resp.and_then(|r| r.header(HeaderName::To));
                    self.send_hop(&d.machine, Method::Ack, &branch, resp_to, to);
                }
                Action::RelayProvisional => {
                    if let Some(r) = resp {
                        if let Some(sent) = self.relay_upstream(r, Some(st.src), true) {
                            st.server.provisional(sent);
                        }
                    }
                }
                Action::RelayFinal => {
                    if let Some(r) = resp {
                        let code = r.status().unwrap_or_default();
                        // A 2xx was counted at its Pin; any other final
                        // relayed is the try in progress's own answer.
                        if code >= 300 {
                            if let Some(node) = d.open {
                                let outcome = if code == 487 {
                                    CallOutcome::Cancelled
                                } else {
                                    CallOutcome::Rejected
                                };
                                end_try(&mut d, node, outcome);
                            }
                        }
                        // Fields are evaluated only when info is on: the
                        // node is found from the Via only for the log.
                        tracing::info!(
                            call_id = %Lossy(call_id),
                            code,
                            node = r
                                .top_via()
                                .ok()
                                .and_then(|v| v.branch())
                                .and_then(|b| d.machine.node_on(b))
                                .map_or("", |n| d.pool.uri(n)),
                            peer = %st.src,
                            "INVITE answered by node"
                        );
                        // A 2xx is not repeated by us (the node's UAS core
                        // resends it), so it is not kept.
                        let keep = !(200..300).contains(&code);
                        let sent = self.relay_upstream(r, Some(st.src), keep);
                        st.server.finished(
                            code,
                            sent.unwrap_or_default(),
                            Instant::now().into_std(),
                        );
                    }
                }
                Action::Answer(outcome) => {
                    use crate::transaction::invite::Outcome;
                    let ended = match outcome {
                        Outcome::TimedOut => Some(CallOutcome::Timeout),
                        Outcome::Cancelled => Some(CallOutcome::Cancelled),
                        // The last try failed over already.
                        Outcome::AllDown | Outcome::TooLarge => None,
                    };
                    if let (Some(node), Some(ended)) = (d.open, ended) {
                        end_try(&mut d, node, ended);
                    }
                    let answer = Refusal::from(outcome).answer();
                    tracing::info!(
                        call_id = %Lossy(call_id),
                        code = answer.code,
                        reason = answer.label.map_or("cancelled", |l| l.as_str()),
                        peer = %st.src,
                        "INVITE answered locally"
                    );
                    with_invite(&mut |inv| {
                        self.count_refusal(inv, &answer);
                        self.answer(st, inv, answer.code, &answer.phrase);
                    });
                }
                Action::Pin { node } => {
                    end_try(&mut d, node, CallOutcome::Answered);
                    self.confirm(&d.pool, call_id, d.pool.addr(node));
                }
                Action::Unpin => {
                    self.tables.dialogs.remove(call_id, Removal::Failed);
                }
                Action::Mark { node, failure } => self.call_failed(&d.pool, node, failure),
                Action::FailedOver { node, reason } => {
                    end_try(&mut d, node, CallOutcome::FailedOver);
                    self.metrics.failover(reason);
                    // The code when a response made it fail over.
                    let code = resp
                        .and_then(|r| r.status())
                        .filter(|_| reason == crate::metrics::FailoverReason::Code);
                    tracing::info!(
                        call_id = %Lossy(call_id),
                        node = d.pool.uri(node),
                        reason = reason.as_str(),
                        code,
                        "INVITE failed over"
                    );
                }
                Action::Decided => decided = true,
            }
        }
        out.clear();
        if decided {
            self.conclude(call, st, &d.machine);
            return;
        }
        if let Some(wake) = d.machine.next_wake() {
            let wake = Instant::from_std(wake);
            if st.armed.is_none_or(|a| wake < a) {
                st.armed = Some(wake);
                self.tables
                    .timers
                    .schedule(wake, Timer::Call(st.weak.clone()));
            }
        }
        st.client = Some(d);
    }

    /// Decided: the trunk has its final answer. What is left for the
    /// retransmission window (a 2xx retransmitted by the node, the trunk's
    /// INVITE retransmissions and its ACK for a non-2xx) is served from the
    /// tables, which the sweeper clears after LINGER; the client side goes
    /// now.
    fn conclude(&self, call: &Call, st: &mut CallState, machine: &InviteClient) {
        self.metrics.invite_setup(st.received.elapsed());
        self.calls_deciding.fetch_sub(1, Ordering::Relaxed);
        let now = Instant::now();
        for b in machine.branches() {
            self.tables.txns.decide(b.as_bytes(), now, st.src);
        }
        // Only now: the sweeper drops an `Invite` entry whose call is over,
        // and a retransmitted 2xx must still find its `Decided` one.
        call.over.store(true, Ordering::Release);
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
        let hint = self.hint(pool.addr(node), msg.call_id().unwrap_or_default());
        with_editor(|ed| {
            let rr = |t| RecordRoute::for_node(pool, node, src.transport, t, hint);
            let tcp_fallback = pool.takes_tcp(node);
            let (out, t) = self
                .forward_edit_mtu(
                    ed,
                    msg,
                    src.addr,
                    branch,
                    pool.transport(node),
                    tcp_fallback,
                    rr,
                    pop_routes,
                )
                .ok()?;
            Some((Bytes::copy_from_slice(out), t))
        })
    }

    /// A local answer to the trunk's INVITE; the server transaction keeps
    /// it for retransmissions.
    fn answer(&self, st: &mut CallState, msg: &Message<'_>, code: u16, reason: &[u8]) {
        let Some((out, to)) = self.local_response(msg, st.src, code, reason, &[]) else {
            return;
        };
        let out = out.freeze();
        if code < 200 {
            st.server.provisional(out.clone());
        } else {
            st.server
                .finished(code, out.clone(), Instant::now().into_std());
        }
        let _ = self.send_to(&out, to);
    }

    /// CANCEL or ACK for our INVITE on `branch`, built from what was sent
    /// on it (RFC 3261 §9.1, §17.1.1.3).
    fn send_hop(
        &self,
        machine: &InviteClient,
        method: Method<'_>,
        branch: &Token,
        to: Option<&[u8]>,
        peer: Peer,
    ) {
        let Some(sent) = machine.sent_request(branch) else {
            return;
        };
        let Ok(invite) = Message::parse(sent) else {
            return;
        };
        let mut out = BytesMut::with_capacity(512);
        let hop = HopRequest {
            invite: &invite,
            method,
            to,
        };
        if hop.write(&mut out).is_some() {
            let _ = self.send_to(&out, peer);
        }
    }
}

/// Bytes shown as text in a log field, converted only when the line is
/// written (a level that is off costs nothing).
struct Lossy<'a>(&'a [u8]);

impl std::fmt::Display for Lossy<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&String::from_utf8_lossy(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::slice_range;

    #[test]
    fn a_slice_is_found_in_its_buffer_and_a_stranger_is_not() {
        let whole = b"INVITE sip:a@b SIP/2.0\r\ni: abc@host\r\n".to_vec();
        let at = whole.windows(8).position(|w| w == b"abc@host").unwrap();
        assert_eq!(slice_range(&whole, &whole[at..at + 8]), at..at + 8);
        assert_eq!(slice_range(&whole, b"abc@host"), 0..0);
        assert_eq!(slice_range(&whole, &whole[..0]), 0..0);
    }
}
