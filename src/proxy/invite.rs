//! One task per new INVITE from the trunk: answer 100, try the nodes in
//! the dispatcher's order, fail over on silence (`fr_timeout`), a failover
//! code or a send error, and never after the node has the call (a ringing
//! 1xx or any 2xx: a second INVITE would double-send a fax).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::sync::{broadcast, mpsc};
use tokio::time::{sleep_until, Duration, Instant};

use super::{with_editor, Pool, Proxy, ServerInvite};
use crate::dialog::Removal;
use crate::dispatcher::health::Failure;
use crate::dispatcher::Plan;
use crate::metrics::{FailoverReason, RejectReason};
use crate::sip::{HeaderName, Message, Method, Response};
use crate::transaction::{ClientTxn, Token};

/// What an INVITE task hears: the responses on its branches and the
/// destinations reported unreachable.
struct Replies {
    rx: mpsc::Receiver<Bytes>,
    icmp: broadcast::Receiver<SocketAddr>,
}

/// One try on one node: our branch, its address, the INVITE as sent.
struct Leg {
    branch: Token,
    addr: SocketAddr,
    invite: Bytes,
}

/// RFC 3261 T1: the first retransmission interval of our INVITE.
const T1: Duration = Duration::from_millis(500);

/// Ends an INVITE's "deciding" count (taken in `start_invite`) when
/// dropped, also on early return.
struct Deciding<'a>(&'a AtomicUsize);

impl Drop for Deciding<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How one attempt on a node ended.
enum Attempt {
    /// Try the next node.
    Failover,
    /// The call is decided (answered, rejected, cancelled or timed out).
    Done,
}

/// A new INVITE as started on the receive path, handed to its task: the
/// rest of the plan, the reply channel and the first try already sent.
pub(super) struct Started {
    /// The pool this INVITE was planned on: its node indices stay valid
    /// whatever a reload does meanwhile.
    pool: Arc<Pool>,
    plan: Plan,
    tx: mpsc::Sender<Bytes>,
    replies: Replies,
    branches: Vec<Token>,
    pop_route: bool,
    first: Option<Leg>,
    /// When the INVITE arrived (the setup-time histogram).
    received: Instant,
}

impl Proxy {
    /// The synchronous start of a new INVITE: 100 to the trunk and the
    /// INVITE to the first node, so both leave with the datagrams of the
    /// same receive batch. Counts the call as deciding until its task ends.
    pub(super) fn start_invite(
        &self,
        msg: &Message<'_>,
        src: SocketAddr,
        server: &ServerInvite,
    ) -> Started {
        let pool = self.pool();
        self.calls_deciding.fetch_add(1, Ordering::Relaxed);
        self.answer(msg, src, server, 100, b"Trying");
        let (tx, rx) = mpsc::channel(32);
        let mut started = Started {
            plan: pool.plan(msg.call_id().unwrap_or_default()),
            pool,
            tx,
            // Subscribed before the first send: its ICMP error must not be
            // missed.
            replies: Replies {
                rx,
                icmp: self.unreachable.subscribe(),
            },
            branches: Vec::new(),
            pop_route: self.first_route_is_me(msg),
            first: None,
            received: Instant::now(),
        };
        started.first = self.next_leg(msg, src, server, &mut started);
        started
    }

    /// Sends the INVITE to the next node of the plan that takes it (a send
    /// error marks the node suspect and moves on). `None`: no node left,
    /// or the trunk cancelled.
    fn next_leg(
        &self,
        msg: &Message<'_>,
        src: SocketAddr,
        server: &ServerInvite,
        st: &mut Started,
    ) -> Option<Leg> {
        let call_id = msg.call_id().unwrap_or_default();
        for node in st.plan.by_ref() {
            if server.cancel.is_cancelled() {
                return None;
            }
            let addr = st.pool.addr(node);
            let branch = self.branches.next();
            let rr = st.pool.record_routes.get(node).map(|r| &**r);
            let invite = self.invite_for(msg, src, &branch, rr, st.pop_route)?;
            self.txns.insert(&branch, ClientTxn::Invite(st.tx.clone()));
            st.branches.push(branch);
            self.pin(call_id, addr);
            if self.send(&invite, addr).is_err() {
                self.metrics.failover(FailoverReason::Transport);
                self.call_failed(&st.pool, node, Failure::TransportError);
                continue;
            }
            return Some(Leg {
                branch,
                addr,
                invite,
            });
        }
        None
    }

    /// The rest of a new INVITE's life: wait on each node, fail over, answer.
    pub(super) async fn drive_invite(
        self: Arc<Self>,
        raw: Bytes,
        src: SocketAddr,
        server: Arc<ServerInvite>,
        mut st: Started,
    ) {
        let deciding = Deciding(&self.calls_deciding);
        let Ok(msg) = Message::parse(&raw) else {
            // Parsed once already; never happens. Let the sweeper have it.
            let _ = server.decided.set(Instant::now());
            return;
        };
        let call_id = msg.call_id().unwrap_or_default();
        let mut decided = false;
        let mut leg = st.first.take();
        while let Some(l) = leg {
            match self
                .attempt(&msg, src, &server, &l, &mut st.replies, &st.pool)
                .await
            {
                Attempt::Failover => {
                    tracing::info!(node = %l.addr, "INVITE failed over");
                    leg = self.next_leg(&msg, src, &server, &mut st);
                }
                Attempt::Done => {
                    decided = true;
                    break;
                }
            }
        }
        if !decided {
            // The table first: whoever sees the answer sees the call gone.
            self.dialogs.remove(call_id, Removal::Failed);
            if server.cancel.is_cancelled() {
                self.answer(&msg, src, &server, 487, b"Request Terminated");
            } else {
                self.metrics.invite_rejected(RejectReason::AllDown);
                self.answer(&msg, src, &server, 503, b"All media servers unavailable");
            }
        }
        self.metrics.invite_setup(st.received.elapsed());
        drop(deciding);
        // Decided. What is left for the retransmission window (a 2xx
        // retransmitted by the node, the trunk's INVITE retransmissions and
        // its ACK for a non-2xx) is served from the tables, which the
        // sweeper clears after LINGER; this task and its buffers go now.
        let now = Instant::now();
        let _ = server.decided.set(now);
        for b in &st.branches {
            self.txns.decide(b.as_bytes(), now);
        }
    }

    /// Waits for the outcome on one node.
    async fn attempt(
        &self,
        msg: &Message<'_>,
        src: SocketAddr,
        server: &ServerInvite,
        leg: &Leg,
        replies: &mut Replies,
        pool: &Pool,
    ) -> Attempt {
        let (branch, addr) = (&*leg.branch, leg.addr);
        // Timer A (RFC 3261 §17.1.1.2): resend to a silent node at T1,
        // doubling, until anything comes back.
        let mut resend_every = T1;
        let mut resend_at = Instant::now() + T1;
        let mut heard = false;
        let fr = self.cfg.failover.fr_timeout;
        let fr_inv = self.cfg.failover.fr_inv_timeout;
        let mut deadline = Instant::now() + fr;
        // 100 only: the node may still be replaced; a ringing 1xx: never.
        let mut trying = false;
        let mut ringing = false;
        let mut cancel_sent = false;
        // The trunk cancelled before the node sent any provisional: RFC 3261
        // §9.1 forbids sending our CANCEL until one arrives.
        let mut cancel_pending = false;
        loop {
            tokio::select! {
                _ = server.cancel.cancelled(), if !cancel_sent && !cancel_pending => {
                    if trying || ringing {
                        self.send_hop(msg, Method::Cancel, branch, None, addr);
                        cancel_sent = true;
                        // Wait for the node's 487 a while longer.
                        deadline = Instant::now() + fr;
                    } else {
                        cancel_pending = true;
                    }
                }
                _ = sleep_until(resend_at), if !heard => {
                    let _ = self.send(&leg.invite, addr);
                    resend_every *= 2;
                    resend_at = Instant::now() + resend_every;
                }
                r = replies.icmp.recv() => {
                    // The node's port is closed (ICMP port unreachable):
                    // no reason to wait for fr_timeout.
                    if r.is_ok_and(|a| a == addr) && !trying && !ringing {
                        self.metrics.failover(FailoverReason::Transport);
                        return Attempt::Failover;
                    }
                }
                _ = sleep_until(deadline) => {
                    if ringing {
                        // fr_inv_timeout: the node has the call but no final.
                        self.send_hop(msg, Method::Cancel, branch, None, addr);
                        self.dialogs.remove(msg.call_id().unwrap_or_default(), Removal::Failed);
                        self.answer(msg, src, server, 408, b"Request Timeout");
                        return Attempt::Done;
                    }
                    if cancel_sent || cancel_pending {
                        // Cancelled: the caller answers 487, no other node.
                        return Attempt::Failover;
                    }
                    if trying {
                        self.send_hop(msg, Method::Cancel, branch, None, addr);
                    }
                    self.metrics.failover(FailoverReason::Timeout);
                    if let Some(i) = pool.find(addr) {
                        self.call_failed(pool, i, Failure::Timeout(fr));
                    }
                    return Attempt::Failover;
                }
                r = replies.rx.recv() => {
                    let Some(b) = r else { return Attempt::Done };
                    let Ok(resp) = Message::parse(&b) else { continue };
                    // Responses to our CANCEL share the branch: not the answer.
                    if !is_invite_response(&resp) {
                        continue;
                    }
                    let Some(code) = resp.status() else { continue };
                    heard = true;
                    if code < 200 && cancel_pending {
                        self.send_hop(msg, Method::Cancel, branch, None, addr);
                        (cancel_pending, cancel_sent) = (false, true);
                    }
                    match code {
                        100 => {
                            trying = true;
                            deadline = Instant::now() + fr_inv;
                        }
                        101..=199 => {
                            ringing = true;
                            deadline = Instant::now() + fr_inv;
                            self.relay_upstream(&resp, Some(server));
                        }
                        200..=299 => {
                            self.relay_upstream(&resp, Some(server));
                            return Attempt::Done;
                        }
                        _ => {
                            // The client transaction ACKs a non-2xx itself.
                            let to = resp.header(HeaderName::To);
                            self.send_hop(msg, Method::Ack, branch, to, addr);
                            let failover = self.cfg.failover.codes.contains(&code)
                                && !ringing
                                && !cancel_sent
                                && !cancel_pending;
                            if failover {
                                self.metrics.failover(FailoverReason::Code);
                                // Marked like a silent node (the issue's
                                // "suspect"): the next calls skip it until a
                                // probe, sent now, finds it answering.
                                if let Some(i) = pool.find(addr) {
                                    self.call_failed(pool, i, Failure::BadCode(code));
                                }
                                return Attempt::Failover;
                            }
                            self.dialogs.remove(msg.call_id().unwrap_or_default(), Removal::Failed);
                            self.relay_upstream(&resp, Some(server));
                            return Attempt::Done;
                        }
                    }
                }
            }
        }
    }

    /// The INVITE as sent to `node`.
    fn invite_for(
        &self,
        msg: &Message<'_>,
        src: SocketAddr,
        branch: &str,
        record_route: Option<&[u8]>,
        pop_route: bool,
    ) -> Option<Bytes> {
        with_editor(|ed| {
            self.forward_edit(ed, msg, src, branch, record_route, pop_route)
                .ok()
                .map(Bytes::copy_from_slice)
        })
    }

    /// A local answer to the trunk's INVITE, remembered for retransmissions.
    fn answer(
        &self,
        msg: &Message<'_>,
        src: SocketAddr,
        server: &ServerInvite,
        code: u16,
        reason: &[u8],
    ) {
        let Ok(via) = msg.top_via() else { return };
        let tag = self.branches.tag();
        let mut out = BytesMut::new();
        Response::new(msg, code, reason, tag.as_bytes())
            .received(src)
            .write(&mut out);
        let out = out.freeze();
        self.metrics
            .response_status(crate::metrics::ResponseOrigin::Local, code);
        // Remembered first: the trunk may retransmit its INVITE the moment
        // this answer reaches it, and must get this answer again.
        server.remember(out.clone());
        let _ = self.send(&out, super::reply_target(via, src));
    }

    /// CANCEL or ACK for our INVITE on `branch` (RFC 3261 §9.1, §17.1.1.3):
    /// same Request-URI, Call-ID, From, CSeq number and branch.
    fn send_hop(
        &self,
        inv: &Message<'_>,
        method: Method<'_>,
        branch: &str,
        to: Option<&[u8]>,
        addr: SocketAddr,
    ) {
        let (Some(ruri), Ok(cseq)) = (inv.request_uri_bytes(), inv.cseq()) else {
            return;
        };
        let m = String::from_utf8_lossy(method.as_bytes());
        let mut s = String::with_capacity(512);
        let _ = write!(
            s,
            "{m} {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch={branch};rport\r\nMax-Forwards: 70\r\nFrom: {from}\r\nTo: {to}\r\nCall-ID: {cid}\r\nCSeq: {n} {m}\r\nContent-Length: 0\r\n\r\n",
            self.sent_by,
            ruri = String::from_utf8_lossy(ruri),
            from = String::from_utf8_lossy(inv.header(HeaderName::From).unwrap_or_default()),
            to = String::from_utf8_lossy(to.or(inv.header(HeaderName::To)).unwrap_or_default()),
            cid = String::from_utf8_lossy(inv.call_id().unwrap_or_default()),
            n = cseq.number,
        );
        let _ = self.send(s.as_bytes(), addr);
    }
}

fn is_invite_response(resp: &Message<'_>) -> bool {
    resp.cseq().is_ok_and(|c| c.method == Method::Invite)
}
