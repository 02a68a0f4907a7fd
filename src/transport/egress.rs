//! Which listening socket sends to a destination when there are several
//! (Kamailio `mhomed=1`): the one bound to the source address the kernel
//! would pick for that destination, so replies and forwarded requests
//! leave from the address the far end can answer.

use std::net::{IpAddr, SocketAddr, UdpSocket};

/// Destinations remembered; beyond this the cache starts over (it only
/// saves a `connect` per new destination).
const CACHE_MAX: usize = 4096;

/// The sockets' local addresses and the choice made per destination IP.
#[derive(Debug)]
pub struct Egress {
    locals: Vec<SocketAddr>,
    cache: crate::FastMap<IpAddr, usize>,
}

impl Egress {
    pub fn new(locals: Vec<SocketAddr>) -> Egress {
        Egress {
            locals,
            cache: Default::default(),
        }
    }

    /// Index of the socket to send to `to` from.
    pub fn pick(&self, to: SocketAddr) -> usize {
        if self.locals.len() <= 1 {
            return 0;
        }
        if let Some(i) = self.cache.get(&to.ip()) {
            return *i;
        }
        let i = self.choose(to);
        if self.cache.len() >= CACHE_MAX {
            self.cache.clear();
        }
        self.cache.insert(to.ip(), i);
        i
    }

    fn choose(&self, to: SocketAddr) -> usize {
        let family_ok = |l: &SocketAddr| l.is_ipv4() == to.is_ipv4() || is_dual_stack(l);
        // The source address the routing table gives for `to`.
        let source = route_source(to);
        let exact = source.and_then(|src| {
            self.locals
                .iter()
                .position(|l| family_ok(l) && same_ip(l.ip(), src))
        });
        exact
            .or_else(|| {
                self.locals
                    .iter()
                    .position(|l| family_ok(l) && l.ip().is_unspecified())
            })
            .or_else(|| self.locals.iter().position(family_ok))
            .unwrap_or(0)
    }
}

/// An IPv6 wildcard socket also carries IPv4 (we bind it dual-stack).
fn is_dual_stack(l: &SocketAddr) -> bool {
    l.ip() == IpAddr::from(std::net::Ipv6Addr::UNSPECIFIED)
}

fn same_ip(a: IpAddr, b: IpAddr) -> bool {
    a == b || a.to_canonical() == b.to_canonical()
}

/// Asks the kernel which source address it would use for `to`: a UDP
/// `connect` sends nothing, it only resolves the route.
pub(crate) fn route_source(to: SocketAddr) -> Option<IpAddr> {
    let any: SocketAddr = if to.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let probe = UdpSocket::bind(any).ok()?;
    probe.connect(to).ok()?;
    Some(probe.local_addr().ok()?.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn one_socket_is_always_the_one() {
        let e = Egress::new(vec![addr("0.0.0.0:5060")]);
        assert_eq!(e.pick(addr("192.0.2.1:5060")), 0);
    }

    #[test]
    fn the_socket_on_the_route_source_wins() {
        // 127.0.0.2 routes from 127.0.0.1 on every Linux loopback.
        let e = Egress::new(vec![
            addr("[::1]:5060"),
            addr("127.0.0.9:5060"),
            addr("127.0.0.1:5060"),
        ]);
        assert_eq!(e.pick(addr("127.0.0.1:5081")), 2);
        assert_eq!(e.pick(addr("[::1]:5081")), 0);
    }

    #[test]
    fn a_wildcard_socket_is_the_fallback() {
        let e = Egress::new(vec![addr("192.0.2.200:5060"), addr("0.0.0.0:5060")]);
        assert_eq!(e.pick(addr("127.0.0.1:5081")), 1);
        let e = Egress::new(vec![addr("127.0.0.1:5060"), addr("[::]:5060")]);
        assert_eq!(e.pick(addr("[::1]:5081")), 1);
    }
}
