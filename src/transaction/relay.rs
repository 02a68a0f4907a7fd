//! The client side of a forwarded request that is not a new INVITE (a
//! re-INVITE, BYE, INFO, an OPTIONS to the pool, a node's request to the
//! trunk), sans-I/O: Timer E (Timer A for an INVITE) resends it over UDP,
//! and when no final comes the proxy answers upstream itself (RFC 3261
//! §16.7 step 10, §16.8): 408 once the wait runs out, 503 at once when
//! the transport fails. Without this, a trunk's BYE or T.38 re-INVITE to
//! a dead node got `100 Trying` and then nothing, ever.
//!
//! How long it waits, as Kamailio's `tm` does: `fr_timeout` for a first
//! reply; after a provisional, `fr_inv_timeout` for an INVITE and Timer F
//! (64*T1 from the first send) for anything else.

use std::time::{Duration, Instant};

use super::{T1, T2, TIMER_SLACK};

/// 64*T1: RFC 3261 Timer B and F.
pub const TIMER_F: Duration = Duration::from_secs(32);

/// What the driver must do after an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayAction {
    /// Send the request again, as it was.
    Resend,
    /// No final came in time: answer 408 upstream.
    TimedOut,
}

/// A forwarded request's client transaction.
#[derive(Debug, Clone)]
pub struct RelayClient {
    invite: bool,
    /// Over TCP: no retransmissions (§17.1.2.2, Timer E is for UDP).
    reliable: bool,
    sent: Instant,
    every: Duration,
    resend_at: Instant,
    deadline: Instant,
    heard: bool,
    /// When a final came, or we answered upstream ourselves: the
    /// transaction is over, and only lingers for retransmitted responses.
    ended: Option<Instant>,
    /// We answered upstream ourselves: later finals are the node's late
    /// news, not for the client (but a 2xx to an INVITE still is).
    answered_locally: bool,
}

impl RelayClient {
    /// Sent at `now`; `fr_timeout` is how long to wait for a first reply.
    pub fn new(now: Instant, invite: bool, reliable: bool, fr_timeout: Duration) -> RelayClient {
        RelayClient {
            invite,
            reliable,
            sent: now,
            every: T1,
            resend_at: now + T1,
            deadline: now + fr_timeout.min(TIMER_F),
            heard: false,
            ended: None,
            answered_locally: false,
        }
    }

    /// When [`RelayClient::on_timer`] wants to run next.
    pub fn next_wake(&self) -> Option<Instant> {
        if self.ended.is_some() {
            return None;
        }
        if self.resending() {
            Some(self.deadline.min(self.resend_at))
        } else {
            Some(self.deadline)
        }
    }

    /// Timer A stops at the first reply; Timer E goes on at T2 after a
    /// provisional (§17.1.2.2).
    fn resending(&self) -> bool {
        !(self.reliable || self.invite && self.heard)
    }

    /// A response with status `code` came back: whether to relay it
    /// upstream (a 100 never is: it is hop by hop, RFC 3261 §16.7 step 5,
    /// and the proxy sent its own).
    pub fn on_response(&mut self, now: Instant, code: u16, fr_inv_timeout: Duration) -> bool {
        if self.answered_locally {
            // Upstream has our 408/503; only a 2xx to an INVITE still
            // matters to it (it establishes the dialog).
            return self.invite && (200..300).contains(&code);
        }
        if code < 200 {
            if !self.heard {
                self.heard = true;
                self.deadline = if self.invite {
                    now + fr_inv_timeout
                } else {
                    self.sent + TIMER_F
                };
                if !self.invite {
                    // Proceeding: Timer E at T2 from now on.
                    self.every = T2;
                    self.resend_at = now + T2;
                }
            }
        } else {
            self.heard = true;
            self.ended.get_or_insert(now);
        }
        code != 100
    }

    /// The timer set from [`RelayClient::next_wake`] fired at `now`.
    pub fn on_timer(&mut self, now: Instant) -> Option<RelayAction> {
        if self.ended.is_some() {
            return None;
        }
        let due = now + TIMER_SLACK;
        if self.deadline <= due {
            self.ended = Some(now);
            self.answered_locally = true;
            return Some(RelayAction::TimedOut);
        }
        if self.resending() && self.resend_at <= due {
            self.every = match (self.heard, self.invite) {
                (true, _) => T2,
                (false, true) => self.every * 2,
                (false, false) => (self.every * 2).min(T2),
            };
            self.resend_at = now + self.every;
            return Some(RelayAction::Resend);
        }
        None
    }

    /// The destination is unreachable at `now` (ICMP, a refused or failed
    /// connect, a send error): whether to answer 503 upstream (not when a
    /// final already came).
    pub fn on_transport_error(&mut self, now: Instant) -> bool {
        if self.ended.is_some() {
            return false;
        }
        self.ended = Some(now);
        self.answered_locally = true;
        true
    }

    /// Whether the entry may go at `now`: over for longer than the 64*T1
    /// a node's UAS core may retransmit a 2xx (RFC 6026); a transaction
    /// still waiting stays, whatever its age (a re-INVITE after its 100
    /// waits `fr_inv_timeout`).
    pub fn expired(&self, now: Instant) -> bool {
        self.ended
            .is_some_and(|e| now.saturating_duration_since(e) >= TIMER_F)
    }

    /// Whether a response has come back yet.
    pub fn heard(&self) -> bool {
        self.heard
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FR: Duration = Duration::from_secs(2);
    const FR_INV: Duration = Duration::from_secs(120);

    /// Fires every wake-up until the machine says something other than
    /// Resend; returns the resend intervals and that.
    fn run(c: &mut RelayClient, mut now: Instant) -> (Vec<u128>, Option<RelayAction>, Instant) {
        let mut gaps = Vec::new();
        let mut last = now;
        while let Some(at) = c.next_wake() {
            now = at;
            match c.on_timer(now) {
                Some(RelayAction::Resend) => {
                    gaps.push(now.duration_since(last).as_millis());
                    last = now;
                }
                other => return (gaps, other, now),
            }
        }
        (gaps, None, now)
    }

    #[test]
    fn timer_e_doubles_to_t2_and_silence_answers_408_at_fr_timeout() {
        let t0 = Instant::now();
        let mut c = RelayClient::new(t0, false, false, Duration::from_secs(10));
        let (gaps, end, at) = run(&mut c, t0);
        assert_eq!(gaps, [500, 1000, 2000, 4000]);
        assert_eq!(end, Some(RelayAction::TimedOut));
        assert_eq!(at, t0 + Duration::from_secs(10));
        assert_eq!(c.next_wake(), None);
        assert_eq!(c.on_timer(at + Duration::from_secs(1)), None, "only once");
    }

    #[test]
    fn timer_a_doubles_for_an_invite() {
        let t0 = Instant::now();
        let mut c = RelayClient::new(t0, true, false, Duration::from_secs(10));
        let (gaps, end, _) = run(&mut c, t0);
        assert_eq!(gaps, [500, 1000, 2000, 4000]);
        assert_eq!(end, Some(RelayAction::TimedOut));
        // The doubling is not capped at T2 for an INVITE.
        let mut c = RelayClient::new(t0, true, false, Duration::from_secs(30));
        let (gaps, _, _) = run(&mut c, t0);
        assert_eq!(gaps, [500, 1000, 2000, 4000, 8000]);
    }

    #[test]
    fn the_wait_is_capped_at_timer_f() {
        let t0 = Instant::now();
        let mut c = RelayClient::new(t0, false, false, Duration::from_secs(3600));
        let (gaps, end, at) = run(&mut c, t0);
        assert_eq!(end, Some(RelayAction::TimedOut));
        assert_eq!(at, t0 + TIMER_F);
        assert!(gaps.iter().skip(3).all(|g| *g == 4000), "{gaps:?}");
    }

    #[test]
    fn no_retransmission_over_tcp_but_the_408_all_the_same() {
        let t0 = Instant::now();
        let mut c = RelayClient::new(t0, false, true, FR);
        assert_eq!(c.next_wake(), Some(t0 + FR));
        let (gaps, end, _) = run(&mut c, t0);
        assert!(gaps.is_empty());
        assert_eq!(end, Some(RelayAction::TimedOut));
    }

    #[test]
    fn a_final_ends_it() {
        let t0 = Instant::now();
        let mut c = RelayClient::new(t0, false, false, FR);
        assert!(c.on_response(t0, 200, FR_INV));
        assert_eq!(c.next_wake(), None);
        assert_eq!(c.on_timer(t0 + FR), None);
        assert!(!c.on_transport_error(t0));
        // Retransmitted finals are still relayed (the node's business).
        assert!(c.on_response(t0, 200, FR_INV));
    }

    #[test]
    fn a_provisional_moves_the_deadline() {
        let t0 = Instant::now();
        // A re-INVITE: fr_inv_timeout after its 100, and no more Timer A.
        let mut c = RelayClient::new(t0, true, false, FR);
        assert!(
            !c.on_response(t0 + Duration::from_millis(100), 100, FR_INV),
            "a 100 is hop by hop"
        );
        assert!(c.heard());
        assert!(c.on_response(t0 + Duration::from_millis(150), 180, FR_INV));
        let wake = t0 + Duration::from_millis(100) + FR_INV;
        assert_eq!(c.next_wake(), Some(wake));
        assert_eq!(c.on_timer(t0 + FR), None);
        assert_eq!(c.on_timer(wake), Some(RelayAction::TimedOut));
        // A BYE: Timer F from the first send, Timer E at T2 meanwhile.
        let mut c = RelayClient::new(t0, false, false, FR);
        c.on_response(t0 + Duration::from_millis(100), 100, FR_INV);
        let (gaps, end, at) = run(&mut c, t0);
        assert_eq!(gaps[0], 4100, "T2 after the 100");
        assert!(gaps[1..].iter().all(|g| *g == 4000), "{gaps:?}");
        assert_eq!(end, Some(RelayAction::TimedOut));
        assert_eq!(at, t0 + TIMER_F);
    }

    #[test]
    fn a_transport_error_answers_503_once() {
        let t0 = Instant::now();
        let mut c = RelayClient::new(t0, false, false, FR);
        assert!(c.on_transport_error(t0));
        assert!(!c.on_transport_error(t0));
        assert_eq!(c.next_wake(), None);
        // What the node says afterwards is not for the client any more…
        assert!(!c.on_response(t0, 200, FR_INV));
        // …except a 2xx to an INVITE, which makes a dialog.
        let mut c = RelayClient::new(t0, true, false, FR);
        c.on_transport_error(t0);
        assert!(!c.on_response(t0, 180, FR_INV));
        assert!(c.on_response(t0, 200, FR_INV));
    }

    #[test]
    fn the_timeout_answers_once_and_late_answers_are_dropped() {
        let t0 = Instant::now();
        let mut c = RelayClient::new(t0, false, false, FR);
        let (_, end, at) = run(&mut c, t0);
        assert_eq!(end, Some(RelayAction::TimedOut));
        assert!(!c.on_response(at, 200, FR_INV));
        assert!(!c.on_transport_error(at));
    }

    #[test]
    fn it_lingers_from_its_end_and_never_while_it_waits() {
        let t0 = Instant::now();
        // A re-INVITE the node answered with 100: still waiting long after
        // 64*T1, so its entry must stay (its 408 is still owed).
        let mut c = RelayClient::new(t0, true, false, FR);
        c.on_response(t0, 100, FR_INV);
        assert!(!c.expired(t0 + TIMER_F * 3));
        c.on_response(t0 + TIMER_F * 3, 200, FR_INV);
        assert!(
            !c.expired(t0 + TIMER_F * 3 + TIMER_F / 2),
            "2xx retransmissions"
        );
        assert!(c.expired(t0 + TIMER_F * 4));
        // Over by our own 408: from then on.
        let mut c = RelayClient::new(t0, false, false, FR);
        let (_, _, at) = run(&mut c, t0);
        assert!(!c.expired(at));
        assert!(c.expired(at + TIMER_F));
    }
}
