//! Sockets. UDP now; TCP comes with its own issue.
//!
//! The proxy is handed already-bound sockets (so tests bind port 0 and a
//! standby can bind a VIP it does not hold yet).

pub mod udp;

pub use udp::{bind_udp, enable_icmp_errors, take_unreachable, UdpOptions};
