//! The client side of a new INVITE from the trunk, with failover over a
//! dispatcher plan, as a sans-I/O state machine (quinn-proto's
//! `Connection` is the model): events in (a response on one of its
//! branches, the trunk's CANCEL, an ICMP error, a timer), [`Action`]s out,
//! and [`InviteClient::next_wake`] says when to call
//! [`InviteClient::on_timer`] next. No socket, no clock read, no metric,
//! no lock: the proxy's driver does all of that.
//!
//! The rules it keeps: fail over on silence (`fr_timeout`), a
//! failover code or a transport error; never once the node has the call (a
//! ringing 1xx or any 2xx: a second INVITE would double-send a fax); CANCEL
//! a leg only after it answered provisionally (RFC 3261 §9.1); a node
//! failed over from that answers 2xx after all gets the call (§16.7).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{Token, T1, TIMER_SLACK};
use crate::dispatcher::health::Failure;
use crate::dispatcher::Plan;
use crate::metrics::FailoverReason;
use crate::transport::{Peer, Transport};

/// The settings an INVITE client reads (`[failover]`).
#[derive(Debug, Clone, Copy)]
pub struct Settings<'a> {
    /// No reply at all from a node within this: fail over.
    pub fr_timeout: Duration,
    /// A provisional but no final within this: give up (408).
    pub fr_inv_timeout: Duration,
    /// Final codes that fail over to the next node.
    pub failover_codes: &'a [u16],
}

/// What the driver must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Build the INVITE for plan node `node` on a new branch, pin the call
    /// to it, send it, then report [`InviteClient::sent`],
    /// [`InviteClient::send_failed`] or [`InviteClient::send_failed_here`].
    Forward { node: usize },
    /// Timer A: send the leg's INVITE again, as it was.
    Resend { to: Peer, bytes: Bytes },
    /// CANCEL the INVITE sent on `branch` (RFC 3261 §9.1).
    Cancel { branch: Token, to: Peer },
    /// ACK the non-2xx final response being handled (§17.1.1.3), sent on
    /// `branch` to `to`.
    Ack { branch: Token, to: Peer },
    /// Relay the provisional response being handled to the trunk; the
    /// server transaction repeats it for a retransmitted INVITE.
    RelayProvisional,
    /// Relay the final response being handled to the trunk.
    RelayFinal,
    /// Answer the trunk's INVITE locally with a final response (the
    /// proxy's rescue chooses the status for the outcome).
    Answer(Outcome),
    /// The call belongs to plan node `node` (it answered 2xx).
    Pin { node: usize },
    /// The call failed: forget its Call-ID.
    Unpin,
    /// Feed node `node`'s health with a failure.
    Mark { node: usize, failure: Failure },
    /// The call left node `node` for the next one.
    FailedOver { node: usize, reason: FailoverReason },
    /// The trunk has its final answer: the call's state may go; its
    /// branches only linger for retransmissions.
    Decided,
}

/// Why a new INVITE ends with a local answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// No node left to try.
    AllDown,
    /// The trunk cancelled and no node answered it.
    Cancelled,
    /// A node rang but sent no final within `fr_inv_timeout`.
    TimedOut,
    /// Every node tried was only failed by our own send, the INVITE being
    /// too large for a datagram (RFC 3261 §21.5.14: 513).
    TooLarge,
}

/// The state of the try in progress (its branch, node, destination and
/// bytes are the last of [`InviteClient::tried`]).
#[derive(Debug)]
struct Leg {
    resend_every: Duration,
    resend_at: Instant,
    /// Anything came back: no more Timer A.
    heard: bool,
    /// `fr_timeout`, then `fr_inv_timeout` after a provisional reply.
    deadline: Instant,
    /// 100 only: the node may still be replaced; a ringing 1xx: never.
    trying: bool,
    ringing: bool,
    cancel_sent: bool,
    /// Cancelled before the node sent any provisional: §9.1 forbids
    /// sending our CANCEL until one arrives.
    cancel_pending: bool,
}

/// A leg tried, for its late answers and for the CANCEL and ACK built
/// from what it sent; the last one is the leg in progress, if any.
#[derive(Debug, Clone)]
struct Tried {
    branch: Token,
    node: usize,
    to: Peer,
    bytes: Bytes,
}

/// A new INVITE's client side: the plan, the leg in progress, and what is
/// left of the legs before it.
#[derive(Debug)]
pub struct InviteClient {
    plan: Plan,
    tried: Vec<Tried>,
    leg: Option<Leg>,
    /// A [`Action::Forward`] is out: waiting for `sent` or `send_failed`.
    forwarding: bool,
    /// The trunk cancelled.
    cancelled: bool,
    /// A node failed over from answered 2xx after all: the current leg is
    /// only being cancelled, its outcome is not the caller's any more.
    answered: bool,
    decided: bool,
    /// Sends that failed on our side because the INVITE was too large, and
    /// those that failed any other way: 513 only when all were the first.
    too_large: bool,
    other_failure: bool,
}

impl InviteClient {
    pub fn new(plan: Plan) -> InviteClient {
        InviteClient {
            plan,
            tried: Vec::with_capacity(2),
            leg: None,
            forwarding: false,
            cancelled: false,
            answered: false,
            decided: false,
            too_large: false,
            other_failure: false,
        }
    }

    /// Tries the first node.
    pub fn start(&mut self, out: &mut Vec<Action>) {
        self.advance(out);
    }

    pub fn is_decided(&self) -> bool {
        self.decided
    }

    /// Every branch an INVITE went out on, in order.
    pub fn branches(&self) -> impl Iterator<Item = &Token> {
        self.tried.iter().map(|t| &t.branch)
    }

    /// The INVITE as sent on `branch` (CANCEL and ACK are built from it).
    pub fn sent_request(&self, branch: &Token) -> Option<&Bytes> {
        self.tried
            .iter()
            .find(|t| t.branch == *branch)
            .map(|t| &t.bytes)
    }

    /// The plan node the INVITE on `branch` went to.
    pub fn node_on(&self, branch: &[u8]) -> Option<usize> {
        self.tried
            .iter()
            .find(|t| t.branch.as_bytes() == branch)
            .map(|t| t.node)
    }

    /// When [`InviteClient::on_timer`] wants to run next.
    pub fn next_wake(&self) -> Option<Instant> {
        let leg = self.leg.as_ref()?;
        let udp = self.tried.last()?.to.transport == Transport::Udp;
        if leg.heard || !udp {
            Some(leg.deadline)
        } else {
            Some(leg.deadline.min(leg.resend_at))
        }
    }

    /// The INVITE for `node` went out on `branch` to `to`.
    pub fn sent(
        &mut self,
        now: Instant,
        node: usize,
        branch: Token,
        to: Peer,
        bytes: Bytes,
        s: &Settings<'_>,
    ) {
        self.forwarding = false;
        self.tried.push(Tried {
            branch,
            node,
            to,
            bytes,
        });
        self.leg = Some(Leg {
            resend_every: T1,
            resend_at: now + T1,
            heard: false,
            deadline: now + s.fr_timeout,
            trying: false,
            ringing: false,
            cancel_sent: false,
            cancel_pending: false,
        });
    }

    /// The INVITE for `node` could not be built or sent: next node.
    pub fn send_failed(&mut self, node: usize, out: &mut Vec<Action>) {
        self.forwarding = false;
        self.other_failure = true;
        out.push(Action::FailedOver {
            node,
            reason: FailoverReason::Transport,
        });
        out.push(Action::Mark {
            node,
            failure: Failure::TransportError,
        });
        self.advance(out);
    }

    /// The INVITE for `node` could not be sent for a reason of our own
    /// (`too_large`: it does not fit a datagram): next node, but the node
    /// is not blamed, since it never saw the request.
    pub fn send_failed_here(&mut self, node: usize, too_large: bool, out: &mut Vec<Action>) {
        self.forwarding = false;
        if too_large {
            self.too_large = true;
        } else {
            self.other_failure = true;
        }
        out.push(Action::FailedOver {
            node,
            reason: FailoverReason::Transport,
        });
        self.advance(out);
    }

    /// The next node of the plan, or the final answer when none is left.
    fn advance(&mut self, out: &mut Vec<Action>) {
        self.leg = None;
        if self.decided || self.forwarding {
            return;
        }
        if self.answered {
            // A node failed over from has the call: no other node, no 503.
            return self.decide(out);
        }
        if self.cancelled {
            out.push(Action::Unpin);
            out.push(Action::Answer(Outcome::Cancelled));
            return self.decide(out);
        }
        match self.plan.next() {
            Some(node) => {
                self.forwarding = true;
                out.push(Action::Forward { node });
            }
            None => {
                out.push(Action::Unpin);
                let only_too_large = self.too_large && !self.other_failure && self.tried.is_empty();
                out.push(Action::Answer(if only_too_large {
                    Outcome::TooLarge
                } else {
                    Outcome::AllDown
                }));
                self.decide(out);
            }
        }
    }

    fn decide(&mut self, out: &mut Vec<Action>) {
        self.leg = None;
        if !self.decided {
            self.decided = true;
            out.push(Action::Decided);
        }
    }

    /// A response with status `code` on `branch` (only responses to the
    /// INVITE: the driver keeps those to our CANCEL away).
    pub fn on_response(
        &mut self,
        now: Instant,
        branch: &[u8],
        code: u16,
        s: &Settings<'_>,
        out: &mut Vec<Action>,
    ) {
        if self.decided {
            return;
        }
        let current = match (&self.leg, self.tried.last()) {
            (Some(_), Some(t)) if t.branch.as_bytes() == branch => (t.branch, t.node, t.to),
            _ => return self.on_earlier_response(now, branch, code, s, out),
        };
        let (branch, node, to) = current;
        let Some(leg) = self.leg.as_mut() else { return };
        leg.heard = true;
        if code < 200 && leg.cancel_pending {
            leg.cancel_pending = false;
            leg.cancel_sent = true;
            leg.deadline = now + s.fr_timeout;
            out.push(Action::Cancel { branch, to });
        }
        match code {
            100..=199 => {
                if code == 100 {
                    leg.trying = true;
                } else {
                    leg.ringing = true;
                }
                if !leg.cancel_sent {
                    leg.deadline = now + s.fr_inv_timeout;
                }
                if code > 100 && !self.answered {
                    out.push(Action::RelayProvisional);
                }
            }
            200..=299 => {
                // Confirmed on this node: the shared registry learns it
                // now (the pin at the send was this proxy's own).
                out.push(Action::Pin { node });
                out.push(Action::RelayFinal);
                self.decide(out);
            }
            _ => {
                let failover = s.failover_codes.contains(&code)
                    && !leg.ringing
                    && !leg.cancel_sent
                    && !leg.cancel_pending;
                out.push(Action::Ack { branch, to });
                if self.answered {
                    // The 487 to our CANCEL, or whatever: the caller has its
                    // answer from the other node.
                    self.decide(out);
                } else if failover {
                    out.push(Action::FailedOver {
                        node,
                        reason: FailoverReason::Code,
                    });
                    // Marked like a silent node: the next calls skip it
                    // until a probe finds it answering.
                    out.push(Action::Mark {
                        node,
                        failure: Failure::BadCode(code),
                    });
                    self.advance(out);
                } else {
                    out.push(Action::Unpin);
                    out.push(Action::RelayFinal);
                    self.decide(out);
                }
            }
        }
    }

    /// An answer from a node already failed over (a late 503, or a 2xx
    /// after all): ACK a non-2xx hop by hop; a 2xx is the caller's (§16.7
    /// step 5), and its node gets the call.
    fn on_earlier_response(
        &mut self,
        now: Instant,
        branch: &[u8],
        code: u16,
        s: &Settings<'_>,
        out: &mut Vec<Action>,
    ) {
        let Some(t) = self.tried.iter().find(|t| t.branch.as_bytes() == branch) else {
            return;
        };
        let (branch, node, to) = (t.branch, t.node, t.to);
        if code >= 300 {
            out.push(Action::Ack { branch, to });
        } else if code >= 200 {
            if !self.answered {
                // The table first: whoever sees the answer finds the call
                // pinned to its node.
                out.push(Action::Pin { node });
            }
            out.push(Action::RelayFinal);
            if !self.answered {
                self.answered = true;
                self.cancel_current_leg(now, s, out);
                if self.leg.is_none() {
                    // No leg in progress to wind down.
                    self.decide(out);
                }
            }
        }
    }

    /// The trunk cancelled the INVITE.
    pub fn on_cancel(&mut self, now: Instant, s: &Settings<'_>, out: &mut Vec<Action>) {
        if self.decided {
            return;
        }
        self.cancelled = true;
        self.cancel_current_leg(now, s, out);
    }

    /// CANCELs the leg in progress: now if the node has answered
    /// provisionally, else on its first provisional (§9.1).
    fn cancel_current_leg(&mut self, now: Instant, s: &Settings<'_>, out: &mut Vec<Action>) {
        let (Some(leg), Some(&Tried { branch, to, .. })) = (self.leg.as_mut(), self.tried.last())
        else {
            return;
        };
        if leg.cancel_sent || leg.cancel_pending {
            return;
        }
        if leg.trying || leg.ringing {
            leg.cancel_sent = true;
            // Wait for the node's 487 a while longer.
            leg.deadline = now + s.fr_timeout;
            out.push(Action::Cancel { branch, to });
        } else {
            leg.cancel_pending = true;
        }
    }

    /// `addr` is unreachable (ICMP, a failed connect): the leg waiting on
    /// it fails over now, not at `fr_timeout`, unless the node already
    /// answered (the error is then about something else).
    pub fn on_unreachable(&mut self, addr: SocketAddr, out: &mut Vec<Action>) {
        let (Some(leg), Some(&Tried { node, to, .. })) = (&self.leg, self.tried.last()) else {
            return;
        };
        if to.addr != addr || leg.trying || leg.ringing || self.decided {
            return;
        }
        out.push(Action::FailedOver {
            node,
            reason: FailoverReason::Transport,
        });
        self.advance(out);
    }

    /// The timer the driver set from [`InviteClient::next_wake`] fired at
    /// `now` (a schedule may fire up to [`TIMER_SLACK`] early).
    pub fn on_timer(&mut self, now: Instant, s: &Settings<'_>, out: &mut Vec<Action>) {
        let due = now + TIMER_SLACK;
        let (Some(leg), Some(sent)) = (self.leg.as_mut(), self.tried.last()) else {
            return;
        };
        let (branch, to, node) = (sent.branch, sent.to, sent.node);
        if !leg.heard && to.transport == Transport::Udp && leg.resend_at <= due {
            out.push(Action::Resend {
                to,
                bytes: sent.bytes.clone(),
            });
            leg.resend_every *= 2;
            leg.resend_at = now + leg.resend_every;
        }
        if leg.deadline > due {
            return;
        }
        if self.answered {
            // Cancelling a leg the caller no longer waits for: done.
            self.decide(out);
        } else if leg.cancel_sent || leg.cancel_pending {
            // Cancelled and the node never confirmed: 487 to the trunk.
            self.advance(out);
        } else if leg.ringing {
            // fr_inv_timeout: the node has the call but sent no final.
            out.push(Action::Cancel { branch, to });
            out.push(Action::Unpin);
            out.push(Action::Answer(Outcome::TimedOut));
            self.decide(out);
        } else {
            if leg.trying {
                out.push(Action::Cancel { branch, to });
            }
            out.push(Action::FailedOver {
                node,
                reason: FailoverReason::Timeout,
            });
            out.push(Action::Mark {
                node,
                failure: Failure::Timeout(s.fr_timeout),
            });
            self.advance(out);
        }
    }
}

#[cfg(test)]
mod tests;
