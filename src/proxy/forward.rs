//! The one forwarding edit (RFC 3261 §16.6), with the switch to TCP for
//! a request too large for UDP (§18.1.1): what a new INVITE's legs and
//! every other forwarded request go through.

use std::net::SocketAddr;

use super::hint::HintText;
use super::{Pool, Proxy};
use crate::sip::{Editor, Message, SipError};
use crate::transport::Transport;

/// Our Record-Route: the one the next hop sees, and, when the call is
/// bridged between transports, the one the previous hop sees below it
/// (Kamailio's double Record-Route). Each is the pool's text up to the
/// hint's value, then this call's hint, then `>`: no formatting per call.
#[derive(Clone, Copy)]
pub(super) struct RecordRoute<'p> {
    pub out: &'p [u8],
    pub inbound: Option<&'p [u8]>,
    pub hint: HintText,
}

impl<'p> RecordRoute<'p> {
    /// For node `node`, a request that came in over `inbound` and goes out
    /// over `out`, with `hint` (see [`Proxy::hint`]).
    pub(super) fn for_node(
        pool: &'p Pool,
        node: usize,
        inbound: Transport,
        out: Transport,
        hint: HintText,
    ) -> Option<RecordRoute<'p>> {
        Some(RecordRoute {
            out: pool.record_route(node, out)?,
            inbound: if inbound == out {
                None
            } else {
                pool.record_route(node, inbound)
            },
            hint,
        })
    }
}

impl Proxy {
    /// The hint naming `node` in the call `call_id` (one AES-SIV seal).
    pub(super) fn hint(&self, node: SocketAddr, call_id: &[u8]) -> HintText {
        self.hint_keys.seal(node, call_id)
    }

    /// The forwarding edit for `transport`, or for TCP when the result is
    /// too large for UDP and the next hop takes TCP (RFC 3261 §18.1.1):
    /// the bytes and the transport they go over.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn forward_edit_mtu<'e, 'p>(
        &self,
        ed: &'e mut Editor,
        msg: &Message<'_>,
        src: SocketAddr,
        branch: &str,
        transport: Transport,
        tcp_fallback: bool,
        record_route: impl Fn(Transport) -> Option<RecordRoute<'p>>,
        pop_routes: usize,
    ) -> Result<(&'e [u8], Transport), SipError> {
        let rr = record_route(transport);
        let len = self
            .forward_edit(ed, msg, src, branch, transport, rr, pop_routes)?
            .len();
        if tcp_fallback && self.over_mtu(len, transport) {
            let tcp = Transport::Tcp;
            let out =
                self.forward_edit(ed, msg, src, branch, tcp, record_route(tcp), pop_routes)?;
            return Ok((out, tcp));
        }
        Ok((ed.output(), transport))
    }

    /// Would `len` bytes over `transport` exceed `listen.udp_mtu`?
    pub(super) fn over_mtu(&self, len: usize, transport: Transport) -> bool {
        let mtu = self.cfg.listen.udp_mtu;
        transport == Transport::Udp && mtu != 0 && len > mtu
    }

    /// The forwarding edit (RFC 3261 §16.6) into `ed`: received/rport on
    /// the sender's Via, Max-Forwards - 1, our Via for `transport` on
    /// `branch`, our Record-Route(s), our own first Route(s) consumed
    /// (§16.4). Fails with `TooManyHops` at Max-Forwards 0.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn forward_edit<'e>(
        &self,
        ed: &'e mut Editor,
        msg: &Message<'_>,
        src: SocketAddr,
        branch: &str,
        transport: Transport,
        record_route: Option<RecordRoute<'_>>,
        pop_routes: usize,
    ) -> Result<&'e [u8], SipError> {
        let mut e = ed.edit(msg);
        e.set_received(src)?;
        e.decrement_max_forwards()?;
        let prefix = self.me.via_prefix(transport);
        e.insert_via_parts(&[prefix, branch.as_bytes(), b";rport"]);
        if let Some(rr) = record_route {
            // The next hop's side on top (its route set starts there).
            for side in std::iter::once(rr.out).chain(rr.inbound) {
                e.insert_record_route_parts(&[side, rr.hint.as_bytes(), b">"]);
            }
        }
        e.pop_routes(pop_routes);
        Ok(e.finish())
    }
}
