//! UDP sockets set up the way a busy SIP edge needs them.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

/// Socket options for the SIP UDP listeners.
#[derive(Debug, Clone, Copy)]
pub struct UdpOptions {
    /// SO_RCVBUF: bursts of INVITEs must not overflow the kernel queue.
    pub recv_buffer: usize,
    /// SO_SNDBUF.
    pub send_buffer: usize,
    /// IP_FREEBIND: bind an address this host does not hold yet (the
    /// keepalived VIP on the standby).
    pub freebind: bool,
}

impl Default for UdpOptions {
    fn default() -> Self {
        UdpOptions {
            recv_buffer: 4 << 20,
            send_buffer: 4 << 20,
            freebind: false,
        }
    }
}

/// Binds a non-blocking UDP socket for tokio.
pub fn bind_udp(addr: SocketAddr, opts: UdpOptions) -> io::Result<tokio::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_address(true)?;
    // The kernel may cap these (net.core.rmem_max); a smaller buffer is not
    // an error worth refusing to start over.
    let _ = socket.set_recv_buffer_size(opts.recv_buffer);
    let _ = socket.set_send_buffer_size(opts.send_buffer);
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if opts.freebind {
        if addr.is_ipv4() {
            socket.set_freebind_v4(true)?;
        } else {
            socket.set_freebind_v6(true)?;
        }
    }
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    tokio::net::UdpSocket::from_std(socket.into())
}
