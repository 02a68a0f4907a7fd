//! Every transition of the INVITE client, driven by hand: no socket, no
//! sleep, the clock is a value.

use super::*;
use crate::transaction::BranchGen;

const CODES: &[u16] = &[500, 502, 503, 504];

fn settings() -> Settings<'static> {
    Settings {
        fr_timeout: Duration::from_secs(2),
        fr_inv_timeout: Duration::from_secs(120),
        failover_codes: CODES,
    }
}

fn peer(node: usize) -> Peer {
    Peer::udp(SocketAddr::from(([127, 0, 0, 1], 5080 + node as u16)))
}

/// The machine plus a pretend driver: every `Forward` is "sent" at once
/// (or fails, for the nodes in `broken`), everything else is logged.
struct Harness {
    c: InviteClient,
    now: Instant,
    s: Settings<'static>,
    gen: BranchGen,
    /// Branch of each leg sent, by order.
    legs: Vec<(usize, Token)>,
    broken: Vec<usize>,
    /// Nodes the INVITE is too large to send to (EMSGSIZE here).
    too_large: Vec<usize>,
    tcp: bool,
    log: Vec<Action>,
}

impl Harness {
    fn new(nodes: &[usize]) -> Harness {
        Harness {
            c: InviteClient::new(nodes.iter().copied().collect()),
            now: Instant::now(),
            s: settings(),
            gen: BranchGen::default(),
            legs: Vec::new(),
            broken: Vec::new(),
            too_large: Vec::new(),
            tcp: false,
            log: Vec::new(),
        }
    }

    /// Runs `f` on the machine and returns what it asked for, with the
    /// forwards carried out.
    fn step(
        &mut self,
        f: impl FnOnce(&mut InviteClient, Instant, &Settings<'_>, &mut Vec<Action>),
    ) -> Vec<Action> {
        let mut out = Vec::new();
        f(&mut self.c, self.now, &self.s, &mut out);
        let mut done = Vec::new();
        let mut i = 0;
        while i < out.len() {
            let a = out[i].clone();
            i += 1;
            if let Action::Forward { node } = a {
                if self.broken.contains(&node) {
                    let mut more = Vec::new();
                    self.c.send_failed(node, &mut more);
                    out.extend(more);
                } else if self.too_large.contains(&node) {
                    let mut more = Vec::new();
                    self.c.send_failed_here(node, true, &mut more);
                    out.extend(more);
                } else {
                    let b = self.gen.next();
                    let to = if self.tcp {
                        Peer::new(peer(node).addr, Transport::Tcp)
                    } else {
                        peer(node)
                    };
                    self.c.sent(
                        self.now,
                        node,
                        b,
                        to,
                        Bytes::from_static(b"INVITE"),
                        &self.s,
                    );
                    self.legs.push((node, b));
                }
            }
            done.push(a);
        }
        self.log.extend(done.iter().cloned());
        done
    }

    fn start(&mut self) -> Vec<Action> {
        self.step(|c, _, _, out| c.start(out))
    }

    fn branch(&self, leg: usize) -> Token {
        self.legs[leg].1
    }

    fn respond(&mut self, leg: usize, code: u16) -> Vec<Action> {
        let b = self.branch(leg);
        self.step(|c, now, s, out| c.on_response(now, b.as_bytes(), code, s, out))
    }

    fn cancel(&mut self) -> Vec<Action> {
        self.step(|c, now, s, out| c.on_cancel(now, s, out))
    }

    fn advance(&mut self, d: Duration) -> Vec<Action> {
        self.now += d;
        self.step(|c, now, s, out| c.on_timer(now, s, out))
    }

    /// Fires the timer at the machine's own next wake-up.
    fn wake(&mut self) -> Vec<Action> {
        let at = self.c.next_wake().expect("a timer is set");
        let d = at.saturating_duration_since(self.now);
        self.advance(d)
    }
}

fn answer(outcome: Outcome) -> impl Fn(&Action) -> bool {
    move |a| *a == Action::Answer(outcome)
}

#[test]
fn the_first_node_is_tried_and_its_answer_relayed() {
    let mut h = Harness::new(&[0, 1]);
    assert_eq!(h.start(), vec![Action::Forward { node: 0 }]);
    assert_eq!(h.c.next_wake(), Some(h.now + T1), "Timer A first");
    assert!(h.respond(0, 100).is_empty(), "100 is hop by hop");
    assert_eq!(h.c.next_wake(), Some(h.now + h.s.fr_inv_timeout));
    assert_eq!(h.respond(0, 180), vec![Action::RelayProvisional]);
    assert_eq!(h.respond(0, 183), vec![Action::RelayProvisional]);
    assert_eq!(
        h.respond(0, 200),
        vec![Action::Pin { node: 0 }, Action::RelayFinal, Action::Decided]
    );
    assert!(h.c.is_decided());
    assert_eq!(h.c.next_wake(), None);
    // Nothing more happens to a decided call.
    assert!(h.respond(0, 200).is_empty());
    assert!(h.cancel().is_empty());
    assert!(h.advance(Duration::from_secs(300)).is_empty());
    assert_eq!(h.c.branches().count(), 1);
}

#[test]
fn a_2xx_without_provisionals_decides() {
    let mut h = Harness::new(&[0]);
    h.start();
    assert_eq!(
        h.respond(0, 200),
        vec![Action::Pin { node: 0 }, Action::RelayFinal, Action::Decided]
    );
}

#[test]
fn each_failover_code_fails_over_and_marks_the_node() {
    for code in [500, 502, 503, 504] {
        let mut h = Harness::new(&[0, 1]);
        h.start();
        let b0 = h.branch(0);
        assert_eq!(
            h.respond(0, code),
            vec![
                Action::Ack {
                    branch: b0,
                    to: peer(0)
                },
                Action::FailedOver {
                    node: 0,
                    reason: FailoverReason::Code
                },
                Action::Mark {
                    node: 0,
                    failure: Failure::BadCode(code)
                },
                Action::Forward { node: 1 },
            ],
            "{code}"
        );
        assert_eq!(h.legs.len(), 2);
        assert_ne!(h.branch(0), h.branch(1), "a new branch per leg");
        assert_eq!(
            h.respond(1, 200),
            vec![Action::Pin { node: 1 }, Action::RelayFinal, Action::Decided]
        );
    }
}

#[test]
fn other_finals_are_relayed_without_failover() {
    for code in [300, 302, 404, 486, 488, 501, 580, 600, 603] {
        let mut h = Harness::new(&[0, 1]);
        h.start();
        let b0 = h.branch(0);
        assert_eq!(
            h.respond(0, code),
            vec![
                Action::Ack {
                    branch: b0,
                    to: peer(0)
                },
                Action::Unpin,
                Action::RelayFinal,
                Action::Decided
            ],
            "{code}"
        );
        assert_eq!(h.legs.len(), 1, "{code}: no second node");
    }
}

#[test]
fn never_fails_over_once_the_node_rang() {
    let mut h = Harness::new(&[0, 1]);
    h.start();
    h.respond(0, 180);
    let out = h.respond(0, 503);
    assert!(out.contains(&Action::RelayFinal), "{out:?}");
    assert!(!out.iter().any(|a| matches!(a, Action::Forward { .. })));
    assert_eq!(out.last(), Some(&Action::Decided));
}

#[test]
fn a_100_alone_still_allows_failover_on_a_code() {
    let mut h = Harness::new(&[0, 1]);
    h.start();
    h.respond(0, 100);
    let out = h.respond(0, 503);
    assert_eq!(out.last(), Some(&Action::Forward { node: 1 }));
}

#[test]
fn timer_a_doubles_until_fr_timeout_fails_over() {
    let mut h = Harness::new(&[0, 1]);
    h.start();
    let resend = Action::Resend {
        to: peer(0),
        bytes: Bytes::from_static(b"INVITE"),
    };
    // Timer A: 500 ms, then 1 s, then 2 s (past fr_timeout of 2 s).
    assert_eq!(h.wake(), vec![resend.clone()]);
    assert_eq!(h.c.next_wake(), Some(h.now + Duration::from_secs(1)));
    assert_eq!(h.wake(), vec![resend]);
    // fr_timeout (2 s after the send) comes before the next resend.
    let out = h.wake();
    assert_eq!(
        out,
        vec![
            Action::FailedOver {
                node: 0,
                reason: FailoverReason::Timeout
            },
            Action::Mark {
                node: 0,
                failure: Failure::Timeout(Duration::from_secs(2))
            },
            Action::Forward { node: 1 },
        ]
    );
}

#[test]
fn a_timer_fired_early_within_the_slack_counts_as_due() {
    let mut h = Harness::new(&[0]);
    h.start();
    let out = h.advance(T1 - TIMER_SLACK);
    assert!(matches!(out[..], [Action::Resend { .. }]), "{out:?}");
    // Too early: nothing, and the wake-up stays.
    let mut h = Harness::new(&[0]);
    h.start();
    assert!(h.advance(T1 / 2).is_empty());
    assert_eq!(h.c.next_wake(), Some(h.now + T1 / 2));
}

#[test]
fn no_timer_a_over_tcp_or_once_heard() {
    let mut h = Harness::new(&[0, 1]);
    h.tcp = true;
    h.start();
    assert_eq!(h.c.next_wake(), Some(h.now + h.s.fr_timeout));
    assert!(h.advance(Duration::from_secs(1)).is_empty());
    let mut h = Harness::new(&[0]);
    h.start();
    h.respond(0, 100);
    assert!(
        h.advance(Duration::from_secs(1)).is_empty(),
        "heard: no resend"
    );
}

#[test]
fn fr_inv_timeout_after_ringing_answers_408_and_cancels() {
    let mut h = Harness::new(&[0, 1]);
    h.start();
    h.respond(0, 180);
    assert!(h.advance(Duration::from_secs(119)).is_empty());
    let b0 = h.branch(0);
    assert_eq!(
        h.wake(),
        vec![
            Action::Cancel {
                branch: b0,
                to: peer(0)
            },
            Action::Unpin,
            Action::Answer(Outcome::TimedOut),
            Action::Decided,
        ]
    );
    assert_eq!(h.legs.len(), 1, "the node had the call: no failover");
}

#[test]
fn a_trying_node_silent_until_fr_inv_timeout_is_cancelled_and_failed_over() {
    let mut h = Harness::new(&[0, 1]);
    h.start();
    h.respond(0, 100);
    let b0 = h.branch(0);
    let out = h.wake();
    assert_eq!(
        out[..2],
        [
            Action::Cancel {
                branch: b0,
                to: peer(0)
            },
            Action::FailedOver {
                node: 0,
                reason: FailoverReason::Timeout
            }
        ]
    );
    assert_eq!(out.last(), Some(&Action::Forward { node: 1 }));
}

#[test]
fn cancel_before_any_provisional_waits_for_one() {
    let mut h = Harness::new(&[0, 1]);
    h.start();
    assert!(
        h.cancel().is_empty(),
        "RFC 3261 §9.1: not before a provisional"
    );
    let b0 = h.branch(0);
    // The first provisional releases the CANCEL; a 180 is still relayed.
    assert_eq!(
        h.respond(0, 180),
        vec![
            Action::Cancel {
                branch: b0,
                to: peer(0)
            },
            Action::RelayProvisional
        ]
    );
    // The node's 487: ACKed and relayed, no failover to node 1.
    assert_eq!(
        h.respond(0, 487),
        vec![
            Action::Ack {
                branch: b0,
                to: peer(0)
            },
            Action::Unpin,
            Action::RelayFinal,
            Action::Decided
        ]
    );
    assert_eq!(h.legs.len(), 1);
}

#[test]
fn cancel_after_a_provisional_is_sent_at_once_and_a_503_then_is_not_failed_over() {
    let mut h = Harness::new(&[0, 1]);
    h.start();
    h.respond(0, 100);
    let b0 = h.branch(0);
    assert_eq!(
        h.cancel(),
        vec![Action::Cancel {
            branch: b0,
            to: peer(0)
        }]
    );
    assert!(h.cancel().is_empty(), "one CANCEL per leg");
    let out = h.respond(0, 503);
    assert!(out.contains(&Action::RelayFinal), "{out:?}");
    assert_eq!(h.legs.len(), 1);
}

#[test]
fn a_cancelled_leg_that_never_confirms_gets_487_at_its_deadline() {
    // Cancelled before any provisional, and the node stays silent.
    let mut h = Harness::new(&[0, 1]);
    h.start();
    h.cancel();
    let out = h.advance(h.s.fr_timeout);
    assert!(out.iter().any(answer(Outcome::Cancelled)), "{out:?}");
    assert_eq!(out.last(), Some(&Action::Decided));
    assert_eq!(h.legs.len(), 1, "no next node for a cancelled call");
    // Cancelled after a ringing 180, and no 487 comes.
    let mut h = Harness::new(&[0, 1]);
    h.start();
    h.respond(0, 180);
    h.cancel();
    let out = h.wake();
    assert!(out.iter().any(answer(Outcome::Cancelled)), "{out:?}");
}

#[test]
fn icmp_unreachable_fails_over_at_once_but_only_for_its_address_and_before_a_provisional() {
    let mut h = Harness::new(&[0, 1, 2]);
    h.start();
    let other = peer(7).addr;
    assert!(h
        .step(|c, _, _, out| c.on_unreachable(other, out))
        .is_empty());
    let a0 = peer(0).addr;
    assert_eq!(
        h.step(|c, _, _, out| c.on_unreachable(a0, out)),
        vec![
            Action::FailedOver {
                node: 0,
                reason: FailoverReason::Transport
            },
            Action::Forward { node: 1 }
        ]
    );
    h.respond(1, 100);
    let a1 = peer(1).addr;
    assert!(
        h.step(|c, _, _, out| c.on_unreachable(a1, out)).is_empty(),
        "the node answered: the error is about something else"
    );
}

#[test]
fn a_send_error_marks_the_node_and_moves_on() {
    let mut h = Harness::new(&[0, 1]);
    h.broken = vec![0];
    assert_eq!(
        h.start(),
        vec![
            Action::Forward { node: 0 },
            Action::FailedOver {
                node: 0,
                reason: FailoverReason::Transport
            },
            Action::Mark {
                node: 0,
                failure: Failure::TransportError
            },
            Action::Forward { node: 1 },
        ]
    );
    let nodes: Vec<usize> = h.legs.iter().map(|l| l.0).collect();
    assert_eq!(nodes, [1], "only node 1's INVITE went out");
}

#[test]
fn an_invite_too_large_for_every_node_answers_513_and_blames_none() {
    let mut h = Harness::new(&[0, 1]);
    h.too_large = vec![0, 1];
    let out = h.start();
    assert!(out.iter().any(answer(Outcome::TooLarge)), "{out:?}");
    assert!(
        !out.iter().any(|a| matches!(a, Action::Mark { .. })),
        "a local send error is no node's failure: {out:?}"
    );
    // Too large for the first (UDP) node only: the second takes it.
    let mut h = Harness::new(&[0, 1]);
    h.too_large = vec![0];
    let out = h.start();
    assert!(!out.iter().any(|a| matches!(a, Action::Mark { .. })));
    assert_eq!(h.legs.len(), 1);
    assert_eq!(
        h.respond(0, 200),
        vec![Action::Pin { node: 1 }, Action::RelayFinal, Action::Decided]
    );
    // Too large for one, a transport failure on the other: not the
    // caller's message alone, 503.
    let mut h = Harness::new(&[0, 1]);
    (h.too_large, h.broken) = (vec![0], vec![1]);
    assert!(h.start().iter().any(answer(Outcome::AllDown)));
}

#[test]
fn all_nodes_down_answers_503() {
    let mut h = Harness::new(&[]);
    assert_eq!(
        h.start(),
        vec![
            Action::Unpin,
            Action::Answer(Outcome::AllDown),
            Action::Decided
        ]
    );
    // Every node fails: the last failure brings the 503.
    let mut h = Harness::new(&[0, 1]);
    h.start();
    h.respond(0, 503);
    let out = h.respond(1, 500);
    assert!(out.iter().any(answer(Outcome::AllDown)), "{out:?}");
    let mut h = Harness::new(&[0, 1]);
    h.broken = vec![0, 1];
    assert!(h.start().iter().any(answer(Outcome::AllDown)));
}

#[test]
fn a_late_2xx_from_a_failed_over_node_wins_and_the_other_leg_is_cancelled() {
    let mut h = Harness::new(&[0, 1]);
    h.start();
    // Node 0 silent: fr_timeout, node 1 tried.
    while h.legs.len() < 2 {
        h.wake();
    }
    h.respond(1, 100);
    let b1 = h.branch(1);
    assert_eq!(
        h.respond(0, 200),
        vec![
            Action::Pin { node: 0 },
            Action::RelayFinal,
            Action::Cancel {
                branch: b1,
                to: peer(1)
            }
        ]
    );
    // Node 1's ringing is not the caller's any more, nor its 487.
    assert!(h.respond(1, 180).is_empty());
    let out = h.respond(1, 487);
    assert_eq!(
        out,
        vec![
            Action::Ack {
                branch: b1,
                to: peer(1)
            },
            Action::Decided
        ]
    );
}

#[test]
fn a_late_2xx_before_the_other_leg_answered_cancels_it_on_its_first_provisional() {
    let mut h = Harness::new(&[0, 1]);
    h.start();
    while h.legs.len() < 2 {
        h.wake();
    }
    let out = h.respond(0, 200);
    assert_eq!(out, vec![Action::Pin { node: 0 }, Action::RelayFinal]);
    let b1 = h.branch(1);
    assert_eq!(
        h.respond(1, 100),
        vec![Action::Cancel {
            branch: b1,
            to: peer(1)
        }]
    );
    // A retransmission of node 0's 2xx is relayed again, nothing else.
    assert_eq!(h.respond(0, 200), vec![Action::RelayFinal]);
    // Node 1 never answers the CANCEL: the call is decided at its deadline.
    assert_eq!(h.wake().last(), Some(&Action::Decided));
}

#[test]
fn a_late_failure_from_a_failed_over_node_is_only_acked() {
    let mut h = Harness::new(&[0, 1]);
    h.start();
    while h.legs.len() < 2 {
        h.wake();
    }
    let b0 = h.branch(0);
    assert_eq!(
        h.respond(0, 503),
        vec![Action::Ack {
            branch: b0,
            to: peer(0)
        }]
    );
    assert!(h.respond(0, 180).is_empty(), "not relayed");
    assert_eq!(
        h.respond(1, 200),
        vec![Action::Pin { node: 1 }, Action::RelayFinal, Action::Decided]
    );
}

#[test]
fn unknown_branches_are_ignored() {
    let mut h = Harness::new(&[0]);
    h.start();
    let out = h.step(|c, now, s, out| c.on_response(now, b"z9hG4bKnot-ours", 200, s, out));
    assert!(out.is_empty());
    assert!(!h.c.is_decided());
}
