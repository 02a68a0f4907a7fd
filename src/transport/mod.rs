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
