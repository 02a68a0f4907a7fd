//! Sockets: UDP and TCP, behind one facade.
//!
//! The proxy is handed already-bound sockets (so tests bind port 0 and a
//! standby can bind a VIP it does not hold yet).
//!
//! - `facade`: [`Transports`], what the proxy sees: it owns every receive
//!   loop and every send, hands each message to a [`Handler`] as one
//!   [`Inbound`] event, and keeps egress choice, ICMP bookkeeping and TCP
//!   connects to itself.
//! - `udp`: binding with the options a busy edge needs, one thread per
//!   socket blocked in `recvmmsg`, ICMP error reporting, each error judged
//!   by who sent it ([`IcmpVerdict`]: only the destination's own host
//!   counts).
//! - `tcp`: SIP over TCP: listeners, one connection per peer, stream
//!   framing, keep-alives, idle timeout, connection cap; the connection
//!   machinery is generic over the byte stream, so TLS runs on it too.
//! - `tls`: SIP over TLS, server side: our identity (checked at start,
//!   swapped on reload), mutual TLS, the listeners (handshakes bounded in
//!   time and per source, then `tcp`'s machinery), their counters.
//! - `tls_client`: SIP over TLS, the connections we open: what we trust,
//!   the certificate we present, and the RFC 5922 identity each peer must
//!   show ([`TlsClient`]).
//! - `egress`: which of several sockets sends to a destination.
//!
//! A new transport is one module here, one [`Transport`] variant (with
//! its entry in [`Transport::ALL`]) and its arm in the facade's `send`.

pub mod egress;
pub mod facade;
pub mod tcp;
pub mod tls;
pub mod tls_client;
pub mod udp;

pub use egress::Egress;
pub use facade::{Handler, Transports};
pub use tcp::{
    admit, bind_stream, bind_tcp, ConnId, OnMessage, Privileged, Refused, TcpError, TcpOptions,
    TcpStats, TcpTransport,
};
pub use tls_client::{PeerIdentity, TlsClient};
pub use udp::{bind_udp, IcmpReport, IcmpVerdict, RecvBatch, SipSocket, UdpOptions, UdpTransport};

/// The transport enum is a value type (config and dispatcher name it
/// too): it lives in the leaf module.
pub use crate::value::Transport;

/// One `T` per transport, indexed by [`Transport`] (a new transport is a
/// new slot, not a new field or a renumbered array).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PerTransport<T>([T; Transport::ALL.len()]);

impl<T> PerTransport<T> {
    /// Each slot from `f` of its transport.
    pub fn from_fn(f: impl FnMut(Transport) -> T) -> PerTransport<T> {
        PerTransport(Transport::ALL.map(f))
    }

    pub fn get(&self, t: Transport) -> &T {
        &self.0[t as usize]
    }

    /// Every slot with its transport, in [`Transport::ALL`] order.
    pub fn iter(&self) -> impl Iterator<Item = (Transport, &T)> {
        Transport::ALL.into_iter().zip(&self.0)
    }
}

impl<T> std::ops::Index<Transport> for PerTransport<T> {
    type Output = T;

    fn index(&self, t: Transport) -> &T {
        self.get(t)
    }
}

impl<T> std::ops::IndexMut<Transport> for PerTransport<T> {
    fn index_mut(&mut self, t: Transport) -> &mut T {
        &mut self.0[t as usize]
    }
}

/// One received message, from any transport: what the [`Handler`] gets.
#[derive(Debug, Clone, Copy)]
pub struct Inbound<'a> {
    /// The whole message (a datagram, or one framed off a stream).
    pub data: &'a [u8],
    /// Who sent it (for TCP, on which connection).
    pub from: Peer,
    /// Our address it arrived on (which listening socket, or the local
    /// end of the connection).
    pub local: std::net::SocketAddr,
}

/// Where a message came from, or where one goes: an address, the
/// transport, and for TCP the connection (RFC 3261 §18.2.2: a response
/// goes back on the connection its request came in on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// For TCP with a connection: also where to connect should it be gone.
    pub addr: std::net::SocketAddr,
    pub transport: Transport,
    pub conn: Option<ConnId>,
}

impl Peer {
    pub fn udp(addr: std::net::SocketAddr) -> Peer {
        Peer {
            addr,
            transport: Transport::Udp,
            conn: None,
        }
    }

    pub fn tcp(addr: std::net::SocketAddr, conn: Option<ConnId>) -> Peer {
        Peer {
            addr,
            transport: Transport::Tcp,
            conn,
        }
    }

    /// `addr` over `transport`, no connection known.
    pub fn new(addr: std::net::SocketAddr, transport: Transport) -> Peer {
        Peer {
            addr,
            transport,
            conn: None,
        }
    }
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.transport, self.addr)
    }
}

/// What every listening socket gets before `bind`: SO_REUSEADDR for a TCP
/// listener only (a restart need not wait for TIME_WAIT; on a UDP socket
/// it would let a second sipedge bind the same port and split the
/// traffic), IP_FREEBIND when asked (a keepalived standby binds the VIP it
/// does not hold yet), dual-stack for IPv6, non-blocking. SO_REUSEPORT is
/// never set, for the same reason.
fn prepare(
    socket: &socket2::Socket,
    addr: std::net::SocketAddr,
    transport: Transport,
    freebind: bool,
) -> std::io::Result<()> {
    socket.set_reuse_address(transport.is_stream())?;
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if freebind {
        if addr.is_ipv4() {
            socket.set_freebind_v4(true)?;
        } else {
            socket.set_freebind_v6(true)?;
        }
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = freebind;
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    socket.set_nonblocking(true)
}

/// `e` as a bind error that names the socket (`udp:ADDR: ...`), so the
/// message alone says which listener could not start; the kind is kept.
/// An address in use most likely means another sipedge holds it.
fn bind_error(
    transport: Transport,
    addr: std::net::SocketAddr,
    e: std::io::Error,
) -> std::io::Error {
    let why = if e.kind() == std::io::ErrorKind::AddrInUse {
        "address already in use (another sipedge running?)".to_owned()
    } else {
        e.to_string()
    };
    std::io::Error::new(e.kind(), format!("{transport}:{addr}: {why}"))
}

/// Whose fault a failed send is. Only [`SendFault::Peer`] is evidence
/// about the destination; a message too large for a datagram or a full
/// local buffer says nothing about the node and must not count against
/// its health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendFault {
    /// The message does not fit a datagram (EMSGSIZE): answer 513, or
    /// send it over TCP.
    TooLarge,
    /// Our side: buffers, a closed socket, a full queue.
    Local,
    /// The destination refused or cannot be reached.
    Peer,
}

impl SendFault {
    /// Classifies the error a send returned.
    pub fn of(e: &std::io::Error) -> SendFault {
        use std::io::ErrorKind as K;
        if e.raw_os_error() == Some(nix::errno::Errno::EMSGSIZE as i32) {
            return SendFault::TooLarge;
        }
        match e.kind() {
            K::ConnectionRefused
            | K::ConnectionReset
            | K::HostUnreachable
            | K::NetworkUnreachable => SendFault::Peer,
            _ => SendFault::Local,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_faults_blame_the_peer_only_on_its_evidence() {
        use std::io::{Error, ErrorKind};
        let too_large = Error::from_raw_os_error(nix::errno::Errno::EMSGSIZE as i32);
        assert_eq!(SendFault::of(&too_large), SendFault::TooLarge);
        for e in [
            Error::from_raw_os_error(nix::errno::Errno::ECONNREFUSED as i32),
            Error::from_raw_os_error(nix::errno::Errno::EHOSTUNREACH as i32),
        ] {
            assert_eq!(SendFault::of(&e), SendFault::Peer, "{e}");
        }
        for e in [
            Error::from_raw_os_error(nix::errno::Errno::ENOBUFS as i32),
            Error::from(ErrorKind::WouldBlock),
            Error::from(ErrorKind::NotConnected),
        ] {
            assert_eq!(SendFault::of(&e), SendFault::Local, "{e}");
        }
    }

    #[test]
    fn per_transport_slots_follow_all() {
        let p = PerTransport::from_fn(|t| t.via_name());
        for t in Transport::ALL {
            assert_eq!(p[t], t.via_name());
        }
        let order: Vec<_> = p.iter().map(|(t, _)| t).collect();
        assert_eq!(order, Transport::ALL);
        let mut q = PerTransport::<u16>::default();
        q[Transport::Tcp] = 5061;
        assert_eq!((q[Transport::Udp], q[Transport::Tcp]), (0, 5061));
    }
}
