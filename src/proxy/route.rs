//! Where an in-dialog request goes, as a pure decision (no socket, no
//! table, no clock): the request path gathers the facts (who sent it, the
//! pinned node, our Route values, the Request-URI) and carries the answer
//! out. Unit-tested here; the rules are design.md's "Pinning and takeover".

use std::net::{IpAddr, SocketAddr};

use crate::sip::Uri;
use crate::transport::{Peer, Transport};

/// A SIP URI's address when its host is an IP literal (5060 by default).
pub(super) fn uri_addr(uri: &Uri<'_>) -> Option<SocketAddr> {
    let ip: IpAddr = uri.host?.ip()?;
    Some(SocketAddr::new(ip, uri.port.unwrap_or(5060)))
}

/// The transport a URI's `;transport=` names (UDP when absent or unknown).
pub(super) fn uri_transport(uri: &Uri<'_>) -> Transport {
    uri.param(b"transport")
        .flatten()
        .and_then(Transport::from_param)
        .unwrap_or_default()
}

/// The next hop a URI names: an address, or a host name to resolve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Hop {
    Addr(Peer),
    Name(crate::dns::Target),
}

impl Hop {
    /// The same hop over `t` (the side our second Route names).
    fn over(self, t: Option<Transport>) -> Hop {
        match (self, t) {
            (Hop::Addr(a), Some(t)) => Hop::Addr(Peer::new(a.addr, t)),
            (Hop::Name(mut n), Some(t)) => {
                n.transport = t;
                Hop::Name(n)
            }
            (hop, None) => hop,
        }
    }
}

/// The next hop of a SIP URI: its IP literal (5060 by default), or its
/// host name with the port it gives, over its `;transport=`.
pub(super) fn uri_hop(uri: &Uri<'_>) -> Option<Hop> {
    let transport = uri_transport(uri);
    match uri.host? {
        crate::sip::Host::Name(name) => Some(Hop::Name(crate::dns::Target {
            host: std::str::from_utf8(name).ok()?.to_ascii_lowercase().into(),
            port: uri.port,
            transport,
        })),
        h => {
            let addr = SocketAddr::new(h.ip()?, uri.port.unwrap_or(5060));
            Some(Hop::Addr(Peer::new(addr, transport)))
        }
    }
}

/// Our own Route values at the top of a request: how many (at most two,
/// after a double Record-Route), the node hint of the first, and the
/// transport the last one names (the side to send on).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct OurRoutes {
    pub count: usize,
    pub hint: Option<SocketAddr>,
    pub transport: Option<Transport>,
}

/// What the pool knows of an address that is one of its nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Member {
    pub transport: Transport,
    /// It takes TCP too: a request over `udp_mtu` may switch to it.
    pub takes_tcp: bool,
}

/// The facts an in-dialog request is routed on.
pub(super) struct InDialog<'a> {
    /// The pool member it came from, if any.
    pub from_node: Option<SocketAddr>,
    /// Whether its source is `[security] trusted` (pool members are).
    pub trusted: bool,
    /// The node the Call-ID is pinned to: the local table's, else (for a
    /// request from outside the pool) the shared registry's.
    pub pinned: Option<SocketAddr>,
    pub ours: OurRoutes,
    pub request_uri: Option<&'a Uri<'a>>,
    /// The first Route value after ours.
    pub next_route: Option<&'a Uri<'a>>,
}

/// Where it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Decision {
    Forward {
        hop: Hop,
        /// Our own Route values to consume.
        pop_routes: usize,
        /// A pool member speaks for a call not pinned to it (FreeSWITCH
        /// `sofia recover`, or a call set up through another proxy): its
        /// 2xx pins the call to it.
        repin: Option<SocketAddr>,
        tcp_fallback: bool,
    },
    /// Nowhere: 481 (an ACK is dropped).
    UnknownDialog,
}

/// Routes an in-dialog request (RFC 3261 §16.4, §16.12; design.md):
/// - from the trunk, to the node that has the call: the pinned node, else
///   our Record-Route's node hint, else a Request-URI naming a pool member
///   (only from a trusted source: from anyone else an in-dialog request
///   goes to the pinned node or along our own Route, nowhere else); over
///   the side our second Route names, else the node's transport;
/// - from a node, loose-routed towards the trunk: the next Route after
///   ours, else the Request-URI.
pub(super) fn in_dialog(
    r: &InDialog<'_>,
    member: impl Fn(SocketAddr) -> Option<Member>,
) -> Decision {
    let pop_routes = r.ours.count;
    if let Some(node) = r.from_node {
        let Some(hop) = r.next_route.or(r.request_uri).and_then(uri_hop) else {
            return Decision::UnknownDialog;
        };
        return Decision::Forward {
            hop: hop.over(r.ours.transport),
            pop_routes,
            // Not known to be its call (pinned elsewhere: a takeover; or
            // nowhere: set up through another proxy): its 2xx pins it.
            repin: (r.pinned != Some(node)).then_some(node),
            tcp_fallback: false,
        };
    }
    let hint = r.ours.hint.filter(|a| member(*a).is_some());
    let ruri = r
        .request_uri
        .and_then(uri_addr)
        .filter(|a| r.trusted && member(*a).is_some());
    let Some(to) = r.pinned.or(hint).or(ruri) else {
        return Decision::UnknownDialog;
    };
    let node = member(to);
    let transport = r
        .ours
        .transport
        .or(node.map(|m| m.transport))
        .unwrap_or_default();
    Decision::Forward {
        hop: Hop::Addr(Peer::new(to, transport)),
        pop_routes,
        repin: None,
        tcp_fallback: node.is_some_and(|m| m.takes_tcp),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const N0: &str = "10.0.1.10:5080";
    const N1: &str = "10.0.1.11:5080";

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// N0 over UDP, N1 over TCP (and UDP).
    fn pool(a: SocketAddr) -> Option<Member> {
        if a == addr(N0) {
            Some(Member {
                transport: Transport::Udp,
                takes_tcp: false,
            })
        } else if a == addr(N1) {
            Some(Member {
                transport: Transport::Tcp,
                takes_tcp: true,
            })
        } else {
            None
        }
    }

    fn facts<'a>(ruri: Option<&'a Uri<'a>>) -> InDialog<'a> {
        InDialog {
            from_node: None,
            trusted: true,
            pinned: None,
            ours: OurRoutes {
                count: 1,
                hint: None,
                transport: None,
            },
            request_uri: ruri,
            next_route: None,
        }
    }

    fn to(d: Decision) -> Option<Peer> {
        match d {
            Decision::Forward {
                hop: Hop::Addr(p), ..
            } => Some(p),
            _ => None,
        }
    }

    #[test]
    fn from_the_trunk_the_pin_wins_then_the_hint_then_a_trusted_request_uri() {
        let ruri = Uri::parse(b"sip:fs@10.0.1.11:5080").unwrap();
        let mut f = facts(Some(&ruri));
        f.pinned = Some(addr(N0));
        f.ours.hint = Some(addr(N1));
        assert_eq!(to(in_dialog(&f, pool)), Some(Peer::udp(addr(N0))));
        f.pinned = None;
        f.ours.hint = Some(addr(N0));
        assert_eq!(to(in_dialog(&f, pool)), Some(Peer::udp(addr(N0))));
        f.ours.hint = None;
        assert_eq!(
            to(in_dialog(&f, pool)),
            Some(Peer::new(addr(N1), Transport::Tcp)),
            "the node's own transport"
        );
        f.trusted = false;
        assert_eq!(
            in_dialog(&f, pool),
            Decision::UnknownDialog,
            "not from a stranger"
        );
    }

    #[test]
    fn a_hint_or_request_uri_outside_the_pool_goes_nowhere() {
        let ruri = Uri::parse(b"sip:victim@192.0.2.66:5060").unwrap();
        let mut f = facts(Some(&ruri));
        f.ours.hint = Some(addr("192.0.2.66:5060"));
        assert_eq!(
            in_dialog(&f, pool),
            Decision::UnknownDialog,
            "no open relay"
        );
    }

    #[test]
    fn our_second_route_names_the_side_and_tcp_nodes_may_take_large_requests() {
        let mut f = facts(None);
        f.pinned = Some(addr(N1));
        f.ours = OurRoutes {
            count: 2,
            hint: None,
            transport: Some(Transport::Udp),
        };
        match in_dialog(&f, pool) {
            Decision::Forward {
                hop,
                pop_routes,
                repin,
                tcp_fallback,
            } => {
                assert_eq!(hop, Hop::Addr(Peer::udp(addr(N1))));
                assert_eq!(pop_routes, 2);
                assert_eq!(repin, None);
                assert!(tcp_fallback);
            }
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn from_a_node_it_follows_the_next_route_else_the_request_uri() {
        let trunk = Uri::parse(b"sip:+15551230000@192.0.2.5:5060").unwrap();
        let proxy2 = Uri::parse(b"sip:edge.example;lr;transport=tcp").unwrap();
        let mut f = facts(Some(&trunk));
        f.from_node = Some(addr(N0));
        assert_eq!(
            to(in_dialog(&f, pool)),
            Some(Peer::udp(addr("192.0.2.5:5060")))
        );
        f.next_route = Some(&proxy2);
        match in_dialog(&f, pool) {
            Decision::Forward {
                hop: Hop::Name(t), ..
            } => {
                assert_eq!(&*t.host, "edge.example");
                assert_eq!(t.transport, Transport::Tcp);
            }
            d => panic!("{d:?}"),
        }
        // Over the side our second Route names.
        f.next_route = None;
        f.ours.transport = Some(Transport::Tcp);
        assert_eq!(
            to(in_dialog(&f, pool)),
            Some(Peer::new(addr("192.0.2.5:5060"), Transport::Tcp))
        );
        let nowhere = Uri::parse(b"sip:x@").ok();
        let mut f = facts(nowhere.as_ref());
        f.from_node = Some(addr(N0));
        f.request_uri = None;
        assert_eq!(in_dialog(&f, pool), Decision::UnknownDialog);
    }

    #[test]
    fn another_node_speaking_for_a_pinned_call_takes_it_over_on_its_2xx() {
        let trunk = Uri::parse(b"sip:t@192.0.2.5").unwrap();
        let mut f = facts(Some(&trunk));
        f.from_node = Some(addr(N1));
        f.pinned = Some(addr(N0));
        let Decision::Forward { repin, .. } = in_dialog(&f, pool) else {
            panic!()
        };
        assert_eq!(repin, Some(addr(N1)), "sofia recover");
        f.pinned = Some(addr(N1));
        let Decision::Forward { repin, .. } = in_dialog(&f, pool) else {
            panic!()
        };
        assert_eq!(repin, None, "the pinned node itself");
        f.pinned = None;
        let Decision::Forward { repin, .. } = in_dialog(&f, pool) else {
            panic!()
        };
        assert_eq!(repin, Some(addr(N1)), "a call set up elsewhere");
    }
}
