//! Where an in-dialog request goes, as a pure decision (no socket, no
//! table, no clock): the request path gathers the facts (who sent it, the
//! pinned node, our Route values, the Request-URI) and carries the answer
//! out. Unit-tested here; the README's "In-dialog routing and the route
//! hint" states the rules.

use std::net::{IpAddr, SocketAddr};

use crate::sip::Uri;
use crate::transport::{Peer, Transport};

/// A SIP URI's address when its host is an IP literal (5060 by default,
/// 5061 over TLS).
pub(super) fn uri_addr(uri: &Uri<'_>) -> Option<SocketAddr> {
    let ip: IpAddr = uri.host?.ip()?;
    let port = uri
        .port
        .unwrap_or_else(|| crate::value::default_port(uri_transport(uri)));
    Some(SocketAddr::new(ip, port))
}

/// The transport a URI names: TLS for `sips:` (RFC 3261 §26.2), else its
/// `;transport=` (UDP when absent or unknown).
pub(super) fn uri_transport(uri: &Uri<'_>) -> Transport {
    if uri.scheme == crate::sip::Scheme::Sips {
        return Transport::Tls;
    }
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
            let port = uri
                .port
                .unwrap_or_else(|| crate::value::default_port(transport));
            let addr = SocketAddr::new(h.ip()?, port);
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
    pub hint: Option<Hint>,
    pub transport: Option<Transport>,
}

/// The node hint of our Route (its `node` parameter): opaque until
/// opened (`None` when it is not a whole hint).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Hint {
    pub token: Option<super::hint::Token>,
}

/// What the pool knows of an address that is one of its nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Member {
    pub transport: Transport,
    /// It takes TCP too: a request over `udp_mtu` may switch to it.
    pub takes_tcp: bool,
}

/// Who sent a request from outside the pool, as `[security] trusted`
/// sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Trust {
    /// From a network `[security] trusted` lists.
    Listed,
    /// `[security] trusted` lists none: anyone is let in.
    NoneListed,
    /// From outside the networks it lists.
    Stranger,
}

/// The facts an in-dialog request is routed on.
pub(super) struct InDialog<'a> {
    /// The pool member it came from, if any.
    pub from_node: Option<SocketAddr>,
    /// Its source, when not a pool member.
    pub trust: Trust,
    /// The node the call is known to be on: the local Call-ID table's,
    /// else (for a request from outside the pool) the shared registry's.
    pub pinned: Option<SocketAddr>,
    /// Hints are keyed with `[cluster] secret` (not the built-in key): one
    /// that opens is authentic, so the R-URI alone no longer steers for an
    /// unlisted source.
    pub signed: bool,
    pub ours: OurRoutes,
    pub request_uri: Option<&'a Uri<'a>>,
    /// The first Route value after ours.
    pub next_route: Option<&'a Uri<'a>>,
}

/// What the decision asks of the pool and of the hint's keys.
pub(super) trait Lookup {
    /// The pool member at `a`.
    fn member(&self, a: SocketAddr) -> Option<Member>;
    /// The pool member that advertises `a` (its `advertised` addresses),
    /// by its own address.
    fn advertiser(&self, a: SocketAddr) -> Option<SocketAddr>;
    /// The node the hint names, if it opens for this request's Call-ID
    /// (one AES-SIV open per key). Asked only when the hint matters (no
    /// pin).
    fn open(&self, hint: &Hint) -> Option<SocketAddr>;
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
    /// The hint would route it but does not open (empty, forged, cut, an
    /// address, or made for another Call-ID or with another key): 481,
    /// counted apart.
    BadHint,
}

/// Routes an in-dialog request (RFC 3261 §16.4, §16.12; the README's
/// "In-dialog routing and the route hint").
///
/// From a node, it is loose-routed towards the trunk: the next Route after
/// ours, else the Request-URI.
///
/// From the trunk, it goes to the node that has the call, the first of:
/// 1. the pinned node (the Call-ID table): it beats everything;
/// 2. the node the Request-URI names, by its address or one of its
///    `advertised` ones: the freshest target, which follows a `sofia
///    recover` takeover that a stale hint does not;
/// 3. the node our Record-Route's hint names, if it opens and the node is
///    in the pool;
/// 4. else 481, told apart when the hint was refused.
///
/// Who may steer by Request-URI: a listed trusted network, or anyone when
/// none is listed and hints are not keyed with a secret (as before signing
/// existed), or a request that carries our Route with a hint that opens (a
/// dialog that went through us). Anyone else reaches only the pinned node
/// or the pool node its hint names: never an open relay, and with a secret
/// never a node the sender chose (with the built-in key, anyone can seal a
/// hint naming any pool node).
///
/// It goes over the side our second Route names, else the node's transport.
pub(super) fn in_dialog(r: &InDialog<'_>, pool: &impl Lookup) -> Decision {
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
    let forward = |to: SocketAddr| {
        let node = pool.member(to);
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
    };
    if let Some(to) = r.pinned {
        return forward(to);
    }
    let ruri = r
        .request_uri
        .and_then(uri_addr)
        .and_then(|a| pool.member(a).map(|_| a).or_else(|| pool.advertiser(a)));
    let trusted = match r.trust {
        Trust::Listed => true,
        Trust::NoneListed => !r.signed,
        Trust::Stranger => false,
    };
    if let (Some(to), true) = (ruri, trusted) {
        return forward(to);
    }
    // Opened once, and only from here on (AES-SIV).
    let hinted = r.ours.hint.map(|h| pool.open(&h));
    if let (Some(to), Some(Some(_))) = (ruri, hinted) {
        return forward(to);
    }
    match hinted {
        Some(None) => Decision::BadHint,
        Some(Some(node)) if pool.member(node).is_some() => forward(node),
        _ => Decision::UnknownDialog,
    }
}

#[cfg(test)]
mod tests {
    use super::super::hint::{self, HintKeys};
    use super::*;

    const N0: &str = "10.0.1.10:5080";
    const N1: &str = "10.0.1.11:5080";
    /// N1's public address (its `advertised`), on its port.
    const N1_PUBLIC: &str = "203.0.113.11:5080";
    /// The Call-ID the test hints are sealed for.
    const CALL: &[u8] = b"call@trunk";

    fn keys() -> HintKeys {
        HintKeys::new(b"a secret for the route tests....", None)
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// N0 over UDP, N1 over TCP (and UDP), N1 advertising N1_PUBLIC.
    struct Pool;

    impl Lookup for Pool {
        fn member(&self, a: SocketAddr) -> Option<Member> {
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

        fn advertiser(&self, a: SocketAddr) -> Option<SocketAddr> {
            (a == addr(N1_PUBLIC)).then(|| addr(N1))
        }

        fn open(&self, hint: &Hint) -> Option<SocketAddr> {
            keys().open(&hint.token?, CALL)
        }
    }

    /// Pool, counting how often a MAC is checked.
    #[derive(Default)]
    struct Counting(std::cell::Cell<usize>);

    impl Lookup for Counting {
        fn member(&self, a: SocketAddr) -> Option<Member> {
            Pool.member(a)
        }
        fn advertiser(&self, a: SocketAddr) -> Option<SocketAddr> {
            Pool.advertiser(a)
        }
        fn open(&self, hint: &Hint) -> Option<SocketAddr> {
            self.0.set(self.0.get() + 1);
            Pool.open(hint)
        }
    }

    /// A hint naming `node` in the test call, or, when not `good`, with
    /// one bit of it flipped.
    fn hint(node: &str, good: bool) -> Option<Hint> {
        let mut text = keys().seal(addr(node), CALL).as_bytes().to_vec();
        if !good {
            text[0] = if text[0] == b'0' { b'1' } else { b'0' };
        }
        Some(Hint {
            token: hint::parse(&text),
        })
    }

    /// Our Route with a `node` parameter that is no hint at all.
    const NOT_A_HINT: Option<Hint> = Some(Hint { token: None });

    /// From the trunk (no trusted network listed), with our Route.
    fn facts<'a>(ruri: Option<&'a Uri<'a>>) -> InDialog<'a> {
        InDialog {
            from_node: None,
            trust: Trust::NoneListed,
            pinned: None,
            signed: false,
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

    fn udp(s: &str) -> Option<Peer> {
        Some(Peer::udp(addr(s)))
    }

    fn tcp(s: &str) -> Option<Peer> {
        Some(Peer::new(addr(s), Transport::Tcp))
    }

    #[test]
    fn the_pin_beats_the_request_uri_and_the_hint() {
        let ruri = Uri::parse(b"sip:fs@10.0.1.11:5080").unwrap();
        let mut f = facts(Some(&ruri));
        f.pinned = Some(addr(N0));
        f.ours.hint = hint(N1, false);
        assert_eq!(to(in_dialog(&f, &Pool)), udp(N0));
        // Even signed, a bad hint does not matter then, and is not opened.
        f.signed = true;
        f.trust = Trust::Stranger;
        let pool = Counting::default();
        assert_eq!(to(in_dialog(&f, &pool)), udp(N0));
        assert_eq!(pool.0.get(), 0, "no hint opened for a pinned call");
    }

    #[test]
    fn a_request_uri_naming_a_member_beats_a_stale_hint() {
        // `sofia recover` moved the call from N0 to N1: the hint still says
        // N0, the target refreshed by N1's re-INVITE says N1.
        let ruri = Uri::parse(b"sip:fs@10.0.1.11:5080").unwrap();
        let mut f = facts(Some(&ruri));
        f.ours.hint = hint(N0, false);
        assert_eq!(to(in_dialog(&f, &Pool)), tcp(N1), "over N1's transport");
        // Signed: the authentic hint of this call lets the R-URI steer,
        // whoever sends it.
        f.signed = true;
        f.ours.hint = hint(N0, true);
        for trust in [Trust::Listed, Trust::NoneListed, Trust::Stranger] {
            f.trust = trust;
            assert_eq!(to(in_dialog(&f, &Pool)), tcp(N1), "{trust:?}");
        }
    }

    #[test]
    fn a_request_uri_naming_an_advertised_address_goes_to_its_node() {
        let ruri = Uri::parse(b"sip:fs@203.0.113.11:5080").unwrap();
        let mut f = facts(Some(&ruri));
        f.ours.hint = hint(N0, true);
        assert_eq!(to(in_dialog(&f, &Pool)), tcp(N1));
        // Not a member, not advertised: the hint routes.
        let other = Uri::parse(b"sip:fs@203.0.113.12:5080").unwrap();
        f.request_uri = Some(&other);
        assert_eq!(to(in_dialog(&f, &Pool)), udp(N0));
    }

    #[test]
    fn without_a_secret_a_hint_that_opens_routes_as_before() {
        // (`Pool` opens with a secret's keys here; what `signed` changes is
        // only who may steer by the Request-URI.)
        let ruri = Uri::parse(b"sip:fs@192.0.2.10:5080").unwrap();
        let mut f = facts(Some(&ruri));
        f.ours.hint = hint(N1, true);
        for trust in [Trust::Listed, Trust::NoneListed, Trust::Stranger] {
            f.trust = trust;
            assert_eq!(to(in_dialog(&f, &Pool)), tcp(N1), "{trust:?}");
        }
        // One that does not open is refused, keyed or not.
        for bad in [hint(N1, false), NOT_A_HINT] {
            f.ours.hint = bad;
            assert_eq!(in_dialog(&f, &Pool), Decision::BadHint, "{bad:?}");
        }
        // No hint, no pin, no member in the Request-URI.
        f.ours.hint = None;
        assert_eq!(in_dialog(&f, &Pool), Decision::UnknownDialog);
    }

    #[test]
    fn signed_a_hint_routes_only_when_it_opens() {
        let ruri = Uri::parse(b"sip:fs@192.0.2.10:5080").unwrap();
        let mut f = facts(Some(&ruri));
        f.signed = true;
        f.ours.hint = hint(N1, true);
        assert_eq!(to(in_dialog(&f, &Pool)), tcp(N1));
        for bad in [hint(N1, false), NOT_A_HINT] {
            f.ours.hint = bad;
            assert_eq!(in_dialog(&f, &Pool), Decision::BadHint, "{bad:?}");
        }
        // An authentic hint for a node the pool no longer has: nowhere.
        f.ours.hint = hint("10.0.1.99:5080", true);
        assert_eq!(in_dialog(&f, &Pool), Decision::UnknownDialog);
    }

    #[test]
    fn a_bad_hint_is_refused_only_when_it_would_route() {
        let member = Uri::parse(b"sip:fs@10.0.1.10:5080").unwrap();
        let mut f = facts(Some(&member));
        f.signed = true;
        f.trust = Trust::Listed;
        f.ours.hint = hint(N1, false);
        let pool = Counting::default();
        assert_eq!(to(in_dialog(&f, &pool)), udp(N0), "a trusted R-URI");
        assert_eq!(pool.0.get(), 0, "the hint was not what routed it");
        // Unlisted sources need the hint to steer: refused.
        for trust in [Trust::NoneListed, Trust::Stranger] {
            f.trust = trust;
            assert_eq!(in_dialog(&f, &pool), Decision::BadHint, "{trust:?}");
        }
        assert_eq!(pool.0.get(), 2, "opened once per request");
    }

    #[test]
    fn who_may_steer_by_the_request_uri() {
        let ruri = Uri::parse(b"sip:fs@10.0.1.11:5080").unwrap();
        let mut f = facts(Some(&ruri));
        f.ours = OurRoutes::default();
        let cases = [
            // (trust, signed, routed by the R-URI without our Route)
            (Trust::Listed, false, true),
            (Trust::Listed, true, true),
            (Trust::NoneListed, false, true),
            (Trust::NoneListed, true, false),
            (Trust::Stranger, false, false),
            (Trust::Stranger, true, false),
        ];
        for (trust, signed, routed) in cases {
            f.trust = trust;
            f.signed = signed;
            let want = if routed { tcp(N1) } else { None };
            assert_eq!(to(in_dialog(&f, &Pool)), want, "{trust:?} signed {signed}");
            if !routed {
                assert_eq!(in_dialog(&f, &Pool), Decision::UnknownDialog);
            }
        }
        // A stranger's hint that opens is proof enough that the dialog
        // went through us (without a secret it could seal one naming the
        // node anyway); one that does not open is refused.
        f.trust = Trust::Stranger;
        f.signed = false;
        f.ours = OurRoutes {
            count: 1,
            hint: hint(N0, true),
            transport: None,
        };
        assert_eq!(to(in_dialog(&f, &Pool)), tcp(N1));
        f.ours.hint = hint(N0, false);
        assert_eq!(in_dialog(&f, &Pool), Decision::BadHint);
    }

    #[test]
    fn a_hint_or_request_uri_outside_the_pool_goes_nowhere() {
        let ruri = Uri::parse(b"sip:victim@192.0.2.66:5060").unwrap();
        let mut f = facts(Some(&ruri));
        f.ours.hint = hint("192.0.2.66:5060", true);
        assert_eq!(
            in_dialog(&f, &Pool),
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
        match in_dialog(&f, &Pool) {
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
        assert_eq!(to(in_dialog(&f, &Pool)), udp("192.0.2.5:5060"));
        f.next_route = Some(&proxy2);
        match in_dialog(&f, &Pool) {
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
        assert_eq!(to(in_dialog(&f, &Pool)), tcp("192.0.2.5:5060"));
        // A node's request is never refused for a hint: it is not routed
        // by one.
        f.signed = true;
        f.ours.hint = hint(N1, false);
        assert_eq!(to(in_dialog(&f, &Pool)), tcp("192.0.2.5:5060"));
        let nowhere = Uri::parse(b"sip:x@").ok();
        let mut f = facts(nowhere.as_ref());
        f.from_node = Some(addr(N0));
        f.request_uri = None;
        assert_eq!(in_dialog(&f, &Pool), Decision::UnknownDialog);
    }

    #[test]
    fn another_node_speaking_for_a_pinned_call_takes_it_over_on_its_2xx() {
        let trunk = Uri::parse(b"sip:t@192.0.2.5").unwrap();
        let mut f = facts(Some(&trunk));
        f.from_node = Some(addr(N1));
        f.pinned = Some(addr(N0));
        let Decision::Forward { repin, .. } = in_dialog(&f, &Pool) else {
            panic!()
        };
        assert_eq!(repin, Some(addr(N1)), "sofia recover");
        f.pinned = Some(addr(N1));
        let Decision::Forward { repin, .. } = in_dialog(&f, &Pool) else {
            panic!()
        };
        assert_eq!(repin, None, "the pinned node itself");
        f.pinned = None;
        let Decision::Forward { repin, .. } = in_dialog(&f, &Pool) else {
            panic!()
        };
        assert_eq!(repin, Some(addr(N1)), "a call set up elsewhere");
    }

    #[test]
    fn sips_and_transport_tls_go_over_tls_on_5061() {
        let hop = |u: &str| uri_hop(&Uri::parse(u.as_bytes()).unwrap());
        let tls = |s: &str| Some(Hop::Addr(Peer::new(addr(s), Transport::Tls)));
        assert_eq!(hop("sips:t@192.0.2.5"), tls("192.0.2.5:5061"));
        assert_eq!(hop("sip:t@192.0.2.5;transport=TLS"), tls("192.0.2.5:5061"));
        assert_eq!(
            hop("sips:192.0.2.5:5071;transport=tcp"),
            tls("192.0.2.5:5071")
        );
        assert_eq!(
            hop("sip:t@192.0.2.5"),
            Some(Hop::Addr(Peer::udp(addr("192.0.2.5:5060"))))
        );
        let Some(Hop::Name(t)) = hop("sips:carrier.example") else {
            panic!()
        };
        assert_eq!((t.transport, t.port), (Transport::Tls, None));
    }
}
