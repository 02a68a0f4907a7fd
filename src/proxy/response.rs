//! The response path: match our branch in the top Via, then either hand
//! the response to its INVITE's state machine or relay it upstream
//! (RFC 3261 §16.7).

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;

use super::{upstream_target, with_editor, Call, Proxy};
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
        let action = self.tables.txns.with(branch, |t| match t {
            // The state machine owns the decision (failover, relay, ACK).
            ClientTxn::Invite(call) => Action::Call(call.clone()),
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
        });
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
        let pool = self.pool();
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
            Some(Action::Probe) => {}
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
