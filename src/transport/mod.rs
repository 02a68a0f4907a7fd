//! Sockets. UDP now; TCP comes with its own issue.
//!
//! The proxy is handed already-bound sockets (so tests bind port 0 and a
//! standby can bind a VIP it does not hold yet).
//!
//! - `udp`: binding with the options a busy edge needs, a read-only tokio
//!   registration with batched receives, ICMP error reporting.
//! - `egress`: which of several sockets sends to a destination.

pub mod egress;
pub mod udp;

pub use egress::Egress;
pub use udp::{bind_udp, RecvBatch, SipSocket, UdpOptions};
