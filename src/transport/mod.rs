//! Sockets: UDP and TCP.
//!
//! The proxy is handed already-bound sockets (so tests bind port 0 and a
//! standby can bind a VIP it does not hold yet).
//!
//! - `udp`: binding with the options a busy edge needs, a read-only tokio
//!   registration with batched receives, ICMP error reporting.
//! - `tcp`: SIP over TCP: listeners, one connection per peer, stream
//!   framing, keep-alives, idle timeout, connection cap.
//! - `egress`: which of several sockets sends to a destination.

pub mod egress;
pub mod tcp;
pub mod udp;

pub use egress::Egress;
pub use tcp::{bind_tcp, ConnId, Inbound, TcpError, TcpOptions, TcpStats, TcpTransport};
pub use udp::{bind_udp, RecvBatch, SipSocket, UdpOptions};

/// A SIP transport sipedge speaks (RFC 3261 §18).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    #[default]
    Udp,
    Tcp,
}

impl Transport {
    /// As written in a Via (`SIP/2.0/UDP`).
    pub fn via_name(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
        }
    }

    /// A Via's transport token, case-insensitive; `None` for any other.
    pub fn from_via(token: &[u8]) -> Option<Transport> {
        if token.eq_ignore_ascii_case(b"UDP") {
            Some(Transport::Udp)
        } else if token.eq_ignore_ascii_case(b"TCP") {
            Some(Transport::Tcp)
        } else {
            None
        }
    }

    /// A URI's `transport=` value; `None` for any other.
    pub fn from_param(value: &[u8]) -> Option<Transport> {
        Transport::from_via(value)
    }
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

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        })
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
    socket.set_reuse_address(transport == Transport::Tcp)?;
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
