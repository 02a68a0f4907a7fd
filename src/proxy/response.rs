//! The response path: match our branch in the top Via, then either hand
//! the response to its INVITE's state machine or relay it upstream
//! (RFC 3261 §16.7).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;

use super::{upstream_target, with_editor, Call, Pool, Proxy};
use crate::dialog::Removal;
use crate::metrics::{DropReason, ResponseOrigin};
use crate::sip::{HeaderName, Message, Via};
use crate::transaction::ClientTxn;
use crate::transport::Peer;

impl Proxy {
    pub(super) fn on_response(self: &Arc<Self>, msg: &Message<'_>, src: Peer) {
        let Some(branch) = msg.top_via().ok().and_then(|v| v.branch()) else {
            self.metrics.dropped(DropReason::Malformed);
            return;
        };
        let status = msg.status().unwrap_or_default();
        enum Action {
            /// From where the request did not go: dropped, counted.
            Foreign,
            Call(Arc<Call>),
            Decided(Peer),
            Probe,
            Relay {
                /// Relay it upstream (not a 100, not after our own 408/503).
                relay: bool,
                upstream: Peer,
                /// A 2xx ending the dialog (BYE) or moving it to the node
                /// that answered (`sofia recover`): the Call-ID, copied only
                /// then.
                ends: Option<Box<[u8]>>,
                repin: Option<(Box<[u8]>, SocketAddr)>,
            },
        }
        let now = std::time::Instant::now();
        let fr_inv = self.cfg.failover.fr_inv_timeout;
        let pool = self.pool();
        let action = self.tables.txns.with(branch, |t| {
            // First of all: a stranger who learnt or guessed a branch must
            // not end a call, stop a retransmission or revive a node.
            if !self.answers_from(&pool, t, src) {
                return Action::Foreign;
            }
            match t {
                // The state machine owns the decision (failover, relay, ACK).
                ClientTxn::Invite { call, .. } => Action::Call(call.clone()),
                ClientTxn::Decided { upstream, .. } => Action::Decided(*upstream),
                ClientTxn::Probe { .. } => Action::Probe,
                ClientTxn::Relay(r) => {
                    let ok = (200..300).contains(&status);
                    Action::Relay {
                        relay: r.with_state(|st| st.on_response(now, status, fr_inv)),
                        upstream: r.upstream,
                        ends: (ok && r.is_bye).then(|| r.call_id.clone()),
                        repin: r.repin.filter(|_| ok).map(|n| (r.call_id.clone(), n)),
                    }
                }
            }
        });
        if let Some(Action::Foreign) = action {
            self.metrics.dropped(DropReason::ForeignResponse);
            tracing::debug!(%src, status, "response from where its request did not go: dropped");
            return;
        }
        if let Some(Action::Probe) = action {
            // Only a final answer ends a probe (a 100 may come first).
            if status >= 200 {
                if let Some(ClientTxn::Probe {
                    set,
                    node,
                    generation,
                    sent,
                }) = self.tables.txns.remove(branch)
                {
                    self.probe_answered(set, node, generation, sent, status);
                }
            }
            return;
        }
        let from_node = pool.find(src.addr);
        if let Some(i) = from_node {
            // Any answer to a call shows the node's SIP stack is there.
            pool.call_reply(i, status);
            // A node's 2xx to an INVITE, initial or re-INVITE; a 2xx
            // retransmission (Decided) was checked the first time.
            if matches!(action, Some(Action::Call(_) | Action::Relay { .. })) {
                if let Some(node) = pool.adverts.get(i) {
                    node.check(msg);
                }
            }
        }
        match action {
            Some(Action::Probe | Action::Foreign) => {}
            None if from_node.is_some() && self.is_orphan_2xx(msg, src) => {
                // The other proxy of a keepalived pair forwarded this INVITE
                // and died before the trunk's ACK came: the node repeats its
                // 2xx to the VIP, now ours. Relayed statelessly (RFC 3261
                // §16.7 step 2, §16.11), the trunk ACKs again through us, and
                // the call survives the failover.
                self.relay_upstream(msg, None, false);
            }
            None => {
                // Not ours (RFC 3261 §18.1.2: drop) or long finished.
                self.metrics.dropped(DropReason::StrayResponse);
                tracing::debug!(%src, "response matches no transaction");
            }
            Some(Action::Call(call)) => self.call_response(&call, msg),
            Some(Action::Decided(upstream)) => {
                // A 2xx the node retransmits because the trunk's ACK has not
                // reached it yet: relay it (RFC 6026); anything else is over.
                let ok = msg.status().is_some_and(|c| (200..300).contains(&c));
                if ok
                    && msg
                        .cseq()
                        .is_ok_and(|c| c.method == crate::sip::Method::Invite)
                {
                    self.relay_upstream(msg, Some(upstream), false);
                }
            }
            Some(Action::Relay {
                relay,
                upstream,
                ends,
                repin,
            }) => {
                // The dialog follows the node's 2xx even when upstream
                // already has our 408 or 503.
                if let Some(call_id) = &ends {
                    self.tables.dialogs.remove(call_id, Removal::Bye);
                }
                if let Some((call_id, node)) = repin.filter(|_| ends.is_none()) {
                    // sofia recover, or a node's own call: the node that
                    // answered has the call (a BYE's 2xx ends it instead).
                    self.confirm(&pool, &call_id, node);
                }
                if relay {
                    self.relay_upstream(msg, Some(upstream), false);
                } else if status != 100 {
                    // Upstream already has our 408 or 503 (a 100 is hop by
                    // hop, RFC 3261 §16.7 step 5: upstream had ours).
                    self.metrics.dropped(DropReason::StrayResponse);
                }
            }
        }
    }

    /// Whether `src` may answer the request of `t`, by where that request
    /// went (see [`answers_for`]).
    fn answers_from<I>(&self, pool: &Pool, t: &ClientTxn<I>, src: Peer) -> bool {
        let trusted = |ip| self.security.lists_trusted() && self.security.is_trusted(ip);
        if let ClientTxn::Probe {
            set,
            node,
            generation,
            ..
        } = t
        {
            let Some((_, d, _)) = pool.set_at(*set).filter(|_| *generation == pool.generation)
            else {
                // Sent before a reload: its answer is ignored anyway.
                return true;
            };
            if *node >= d.len() {
                return true;
            }
            let to = Peer::new(d.addr(*node), d.transport(*node));
            return answers_for(to, src, Some(d.advertised(*node)), trusted);
        }
        let Some(to) = t.sent_to() else {
            return false;
        };
        // The common case first: no scan of the pool.
        if same_host(to, src) {
            return true;
        }
        let node = pool.find(to.addr).map(|i| pool.advertised(i));
        answers_for(to, src, node, trusted)
    }

    /// A 2xx to an INVITE whose top Via is ours (our sent-by over the
    /// transport it came on) but whose transaction is unknown here.
    fn is_orphan_2xx(&self, msg: &Message<'_>, src: Peer) -> bool {
        let ok = msg.status().is_some_and(|c| (200..300).contains(&c));
        let invite = msg
            .cseq()
            .is_ok_and(|c| c.method == crate::sip::Method::Invite);
        ok && invite
            && msg
                .top_via()
                .is_ok_and(|v| self.me.is_my_sent_by(src.transport, v.host_raw, v.port))
    }

    /// Removes our Via and sends the response to the Via below it (on the
    /// TCP connection `upstream` came in on, when it did); with `keep`, a
    /// copy of what was sent, for the INVITE's server transaction to
    /// repeat when the trunk retransmits the INVITE.
    pub(super) fn relay_upstream(
        &self,
        msg: &Message<'_>,
        upstream: Option<Peer>,
        keep: bool,
    ) -> Option<Bytes> {
        self.send_upstream(msg, upstream, keep, ResponseOrigin::Relayed)
    }

    /// [`Proxy::relay_upstream`] for a response of `origin` (a local answer
    /// built on a forwarded request carries our Via too).
    pub(super) fn send_upstream(
        &self,
        msg: &Message<'_>,
        upstream: Option<Peer>,
        keep: bool,
        origin: ResponseOrigin,
    ) -> Option<Bytes> {
        let Some(next) = msg.values(HeaderName::Via).nth(1) else {
            self.metrics.dropped(DropReason::NoRouteForResponse);
            return None;
        };
        let Some(mut to) = Via::parse(next).ok().as_ref().and_then(upstream_target) else {
            self.metrics.dropped(DropReason::NoRouteForResponse);
            return None;
        };
        if let Some(up) = upstream.filter(|u| u.transport == to.transport) {
            to.conn = up.conn;
        }
        with_editor(|ed| {
            let mut e = ed.edit(msg);
            e.remove_top_via();
            let out = e.finish();
            self.metrics
                .response_status(origin, msg.status().unwrap_or_default());
            let _ = self.send_to(out, to);
            keep.then(|| Bytes::copy_from_slice(out))
        })
    }
}

/// The source is where the request went: its host (any port: a node's
/// own TCP connection to us comes from an ephemeral one) or the
/// connection it went on.
fn same_host(to: Peer, src: Peer) -> bool {
    src.addr.ip().to_canonical() == to.addr.ip().to_canonical()
        || (src.conn.is_some() && src.conn == to.conn)
}

/// Whether a response from `src` may answer a request sent to `to`
/// (RFC 3261 §17.1.3 matches a response by branch alone, which anyone who
/// learns the branch can send). From where the request went (see
/// [`same_host`]); when it went to a pool node (`node`: its `advertised`
/// addresses) from one of those; when it went elsewhere, a carrier that
/// may answer from another of its signalling addresses, from a network
/// `trusted` lists.
fn answers_for(
    to: Peer,
    src: Peer,
    node: Option<&[IpAddr]>,
    trusted: impl FnOnce(IpAddr) -> bool,
) -> bool {
    if same_host(to, src) {
        return true;
    }
    let ip = src.addr.ip().to_canonical();
    match node {
        Some(advertised) => advertised.contains(&ip),
        None => trusted(ip),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::ConnId;

    fn udp(s: &str) -> Peer {
        Peer::udp(s.parse().unwrap())
    }

    #[test]
    fn a_response_is_taken_from_where_its_request_went() {
        let node = udp("10.0.1.10:5080");
        let none = |_| false;
        let all = |_| true;
        // The node, from any port (its TCP connection to us), IPv4-mapped
        // or not.
        assert!(answers_for(node, node, Some(&[]), none));
        assert!(answers_for(node, udp("10.0.1.10:40123"), Some(&[]), none));
        assert!(answers_for(
            node,
            udp("[::ffff:10.0.1.10]:5080"),
            Some(&[]),
            none
        ));
        // A stranger, trusted network or not: never for a node.
        assert!(!answers_for(node, udp("10.0.1.11:5080"), Some(&[]), all));
        // The node's advertised address (a public or VIP one).
        let vip: IpAddr = "203.0.113.10".parse().unwrap();
        assert!(answers_for(
            node,
            udp("203.0.113.10:5060"),
            Some(&[vip]),
            none
        ));
        assert!(!answers_for(
            node,
            udp("203.0.113.11:5060"),
            Some(&[vip]),
            none
        ));
        // On the connection the request went on, whatever its address.
        let conn = Some(ConnId::for_tests(7));
        let tcp = Peer::tcp("192.0.2.7:5060".parse().unwrap(), conn);
        let on_it = Peer::tcp("192.0.2.99:40000".parse().unwrap(), conn);
        assert!(answers_for(tcp, on_it, None, none));
        let other = Peer::tcp(
            "192.0.2.99:40000".parse().unwrap(),
            Some(ConnId::for_tests(8)),
        );
        assert!(!answers_for(tcp, other, None, none));
        assert!(!answers_for(tcp, Peer::tcp(on_it.addr, None), None, none));
        // A carrier: its address, or a trusted network (and only a listed
        // one: the caller passes false without a list).
        let carrier = udp("198.51.100.5:5060");
        assert!(answers_for(carrier, udp("198.51.100.5:5070"), None, none));
        assert!(!answers_for(carrier, udp("198.51.100.6:5060"), None, none));
        let listed = |ip: IpAddr| ip.to_string().starts_with("198.51.100.");
        assert!(answers_for(carrier, udp("198.51.100.6:5060"), None, listed));
        assert!(!answers_for(carrier, udp("192.0.2.1:5060"), None, listed));
    }
}
