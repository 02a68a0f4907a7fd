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

/// Asks the kernel to report ICMP errors (port or host unreachable) for
/// datagrams this unconnected socket sends (Linux IP_RECVERR): without it
/// a dead FreeSWITCH port is only noticed when `fr_timeout` runs out.
#[cfg(target_os = "linux")]
pub fn enable_icmp_errors(socket: &tokio::net::UdpSocket) -> io::Result<()> {
    use nix::sys::socket::{setsockopt, sockopt};
    let v6 = socket.local_addr()?.is_ipv6();
    if v6 {
        setsockopt(socket, sockopt::Ipv6RecvErr, &true)?;
    }
    // A dual-stack socket also carries IPv4 traffic.
    match setsockopt(socket, sockopt::Ipv4RecvErr, &true) {
        Err(e) if !v6 => Err(e.into()),
        _ => Ok(()),
    }
}

#[cfg(not(target_os = "linux"))]
pub fn enable_icmp_errors(_socket: &tokio::net::UdpSocket) -> io::Result<()> {
    Ok(())
}

/// Reads the socket's error queue: the destinations of datagrams that drew
/// an ICMP error since the last call (the kernel reports the original
/// destination as the message's address).
#[cfg(target_os = "linux")]
pub fn take_unreachable(socket: &tokio::net::UdpSocket, out: &mut Vec<SocketAddr>) {
    use std::io::IoSliceMut;
    use std::os::fd::AsRawFd;

    use nix::sys::socket::{recvmsg, MsgFlags, SockaddrStorage};
    let fd = socket.as_raw_fd();
    let mut data = [0u8; 64];
    // Room for the sock_extended_err control message and its offender.
    let mut cmsg = [0u8; 256];
    // Bounded: the queue holds at most what the kernel's buffer allows.
    for _ in 0..256 {
        let mut iov = [IoSliceMut::new(&mut data)];
        let flags = MsgFlags::MSG_ERRQUEUE | MsgFlags::MSG_DONTWAIT;
        let Ok(msg) = recvmsg::<SockaddrStorage>(fd, &mut iov, Some(&mut cmsg), flags) else {
            return;
        };
        let addr = msg.address.and_then(|a| {
            if let Some(v4) = a.as_sockaddr_in() {
                Some(SocketAddr::from((v4.ip(), v4.port())))
            } else {
                a.as_sockaddr_in6()
                    .map(|v6| SocketAddr::from((v6.ip(), v6.port())))
            }
        });
        if let Some(a) = addr {
            out.push(a);
        }
    }
}

#[cfg(not(target_os = "linux"))]
pub fn take_unreachable(_socket: &tokio::net::UdpSocket, _out: &mut Vec<SocketAddr>) {}
