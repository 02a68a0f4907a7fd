//! UDP sockets set up the way a busy SIP edge needs them, each read by
//! its own thread.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;

use socket2::{Domain, Protocol, Socket, Type};
use tokio_util::sync::CancellationToken;

use super::{Egress, Handler, Inbound, Peer};

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

/// Binds a non-blocking UDP socket; [`SipSocket::new`] hands it to tokio.
/// An address already bound (another sipedge) is refused with
/// [`io::ErrorKind::AddrInUse`]; every error names `udp:ADDR`.
pub fn bind_udp(addr: SocketAddr, opts: UdpOptions) -> io::Result<UdpSocket> {
    let bind = || -> io::Result<UdpSocket> {
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        // The kernel may cap these (net.core.rmem_max); a smaller buffer is
        // not an error worth refusing to start over.
        let _ = socket.set_recv_buffer_size(opts.recv_buffer);
        let _ = socket.set_send_buffer_size(opts.send_buffer);
        super::prepare(&socket, addr, super::Transport::Udp, opts.freebind)?;
        socket.bind(&addr.into())?;
        Ok(socket.into())
    };
    bind().map_err(|e| super::bind_error(super::Transport::Udp, addr, e))
}

/// How many datagrams one receive call can return (`recvmmsg`).
pub const RECV_BATCH: usize = 8;

/// Largest datagram we read (the IPv4 UDP maximum).
pub const MAX_DATAGRAM: usize = 65_535;

/// How long a receive thread blocks before it looks at its stop flag.
pub const RECV_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(100);

/// A listening SIP socket, read by one thread blocked in `recvmmsg`.
///
/// Why not tokio: the whole receive path (parse, route, the INVITE state
/// machine, send) is synchronous and never waits, so a task on the runtime
/// only added an `epoll_wait` before every read and the scheduler's own
/// work, a fifth of the proxy's user CPU. A thread blocked in the read is
/// what Kamailio's UDP workers do, with several datagrams per read here.
/// Sends are non-blocking: a full send buffer loses the datagram like the
/// network would, and SIP retransmits.
#[derive(Debug)]
pub struct SipSocket {
    socket: UdpSocket,
    local: SocketAddr,
}

/// Buffers for one [`SipSocket::recv`]: up to [`RECV_BATCH`] datagrams.
/// Owned by one receive thread (the `recvmmsg` headers hold raw pointers,
/// so it is not `Send`).
pub struct RecvBatch {
    buf: Box<[u8]>,
    got: [(usize, Option<SocketAddr>); RECV_BATCH],
    len: usize,
    #[cfg(target_os = "linux")]
    headers: nix::sys::socket::MultiHeaders<nix::sys::socket::SockaddrStorage>,
}

impl Default for RecvBatch {
    fn default() -> Self {
        RecvBatch {
            buf: vec![0u8; MAX_DATAGRAM * RECV_BATCH].into_boxed_slice(),
            got: [(0, None); RECV_BATCH],
            len: 0,
            #[cfg(target_os = "linux")]
            headers: nix::sys::socket::MultiHeaders::preallocate(RECV_BATCH, None),
        }
    }
}

impl RecvBatch {
    /// The datagrams of the last receive and who sent them.
    pub fn datagrams(&self) -> impl Iterator<Item = (&[u8], SocketAddr)> {
        self.got[..self.len]
            .iter()
            .enumerate()
            .filter_map(|(i, &(n, src))| {
                let start = i * MAX_DATAGRAM;
                Some((self.buf.get(start..start + n)?, src?))
            })
    }
}

impl SipSocket {
    /// Takes `socket` (from [`bind_udp`]): blocking reads that give up
    /// after [`RECV_TIMEOUT`], and ICMP errors reported.
    pub fn new(socket: UdpSocket) -> io::Result<SipSocket> {
        socket.set_nonblocking(false)?;
        socket.set_read_timeout(Some(RECV_TIMEOUT))?;
        let local = socket.local_addr()?;
        if let Err(e) = enable_icmp_errors(&socket) {
            tracing::warn!(
                "udp:{local}: ICMP errors not reported, failover waits for fr_timeout: {e}"
            );
        }
        Ok(SipSocket { socket, local })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Sends one datagram without waiting.
    pub fn send_to(&self, buf: &[u8], to: SocketAddr) -> io::Result<usize> {
        socket2::SockRef::from(&self.socket).send_to_with_flags(buf, &to.into(), libc_dontwait())
    }

    /// Reads the destinations that drew an ICMP error (see
    /// [`take_unreachable`]).
    pub fn take_unreachable(&self, out: &mut Vec<SocketAddr>) {
        take_unreachable(&self.socket, out);
    }

    /// Blocks until datagrams or ICMP errors come, or [`RECV_TIMEOUT`]
    /// passes: fills `batch` with what is queued (up to [`RECV_BATCH`])
    /// and `unreachable` with destinations reported unreachable.
    pub fn recv(&self, batch: &mut RecvBatch, unreachable: &mut Vec<SocketAddr>) -> io::Result<()> {
        batch.len = 0;
        match recv_many(&self.socket, batch) {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Ok(())
            }
            // A pending ICMP error surfaces on the read.
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                self.take_unreachable(unreachable);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

/// The listening UDP sockets and which one sends to a destination.
#[derive(Debug)]
pub struct UdpTransport {
    /// Shared with their receive threads.
    sockets: Vec<Arc<SipSocket>>,
    locals: Vec<SocketAddr>,
    egress: Egress,
}

impl UdpTransport {
    /// Takes already-bound sockets (from [`bind_udp`]).
    pub fn new(sockets: Vec<UdpSocket>) -> io::Result<UdpTransport> {
        let sockets = sockets
            .into_iter()
            .map(|s| SipSocket::new(s).map(Arc::new))
            .collect::<io::Result<Vec<_>>>()?;
        let locals: Vec<SocketAddr> = sockets.iter().map(|s| s.local_addr()).collect();
        Ok(UdpTransport {
            egress: Egress::new(locals.clone()),
            locals,
            sockets,
        })
    }

    /// Every socket's address, in the order given.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.locals
    }

    /// Sends `bytes` to `to` from the socket [`Egress`] picks, without
    /// waiting. A pending ICMP error that makes the send fail is read
    /// (each destination it names goes to `unreachable`) and the send is
    /// tried once more.
    pub fn send(
        &self,
        bytes: &[u8],
        to: SocketAddr,
        mut unreachable: impl FnMut(SocketAddr),
    ) -> io::Result<()> {
        let Some(socket) = self.sockets.get(self.egress.pick(to)) else {
            return Err(io::ErrorKind::NotConnected.into());
        };
        let mut r = socket.send_to(bytes, to).map(|_| ());
        if matches!(&r, Err(e) if e.kind() == io::ErrorKind::ConnectionRefused) {
            // From an earlier datagram, maybe to another peer: this one was
            // not sent.
            let mut dead = Vec::new();
            socket.take_unreachable(&mut dead);
            dead.into_iter().for_each(&mut unreachable);
            r = socket.send_to(bytes, to).map(|_| ());
        }
        r
    }

    /// Starts one receive thread per socket, each feeding `handler` until
    /// `cancel` fires (seen within [`RECV_TIMEOUT`]). One reader per
    /// socket: two would reorder a node's 180 and 503 sent back to back,
    /// and a 503 seen before the 180 would fail the call over to a second
    /// node.
    pub fn spawn_readers<H: Handler>(
        &self,
        handler: &Arc<H>,
        cancel: &CancellationToken,
    ) -> Vec<std::thread::JoinHandle<()>> {
        let mut readers = Vec::new();
        for (i, socket) in self.sockets.iter().enumerate() {
            let (socket, h, c) = (socket.clone(), handler.clone(), cancel.clone());
            let rt = tokio::runtime::Handle::current();
            match std::thread::Builder::new()
                .name(format!("sipedge-udp-{i}"))
                .spawn(move || recv_loop(&socket, &h, &c, &rt))
            {
                Ok(t) => readers.push(t),
                Err(e) => tracing::error!("cannot start the receive thread of socket {i}: {e}"),
            }
        }
        readers
    }
}

/// A socket's receive thread: reads, hands every datagram to the end
/// (nothing on the path waits), reads again. In the runtime's context,
/// for its clock and for spawning.
fn recv_loop<H: Handler>(
    socket: &SipSocket,
    handler: &Arc<H>,
    cancel: &CancellationToken,
    rt: &tokio::runtime::Handle,
) {
    let _rt = rt.enter();
    let local = socket.local_addr();
    let mut batch = RecvBatch::default();
    let mut dead = Vec::new();
    while !cancel.is_cancelled() {
        if let Err(e) = socket.recv(&mut batch, &mut dead) {
            tracing::warn!("recv on udp:{local}: {e}");
            // Not a busy loop on a persistent error.
            std::thread::sleep(RECV_TIMEOUT);
            continue;
        }
        for addr in dead.drain(..) {
            handler.on_unreachable(addr);
        }
        for (data, src) in batch.datagrams() {
            handler.on_message(Inbound {
                data,
                from: Peer::udp(src),
                local,
            });
        }
        handler.after_batch();
    }
}

/// MSG_DONTWAIT as socket2 wants it.
fn libc_dontwait() -> i32 {
    nix::sys::socket::MsgFlags::MSG_DONTWAIT.bits()
}

/// One `recvmmsg`: every queued datagram up to the batch size.
#[cfg(target_os = "linux")]
fn recv_many(socket: &UdpSocket, batch: &mut RecvBatch) -> io::Result<usize> {
    use std::io::IoSliceMut;
    use std::os::fd::AsRawFd;

    use nix::sys::socket::{recvmmsg, MsgFlags};
    let mut chunks = batch.buf.chunks_mut(MAX_DATAGRAM);
    let mut slices: [[IoSliceMut<'_>; 1]; RECV_BATCH] =
        std::array::from_fn(|_| [IoSliceMut::new(chunks.next().unwrap_or_default())]);
    let results = recvmmsg(
        socket.as_raw_fd(),
        &mut batch.headers,
        slices.iter_mut(),
        // Block for the first datagram only, then take what is queued.
        MsgFlags::MSG_WAITFORONE,
        None,
    )?;
    let mut n = 0;
    for (slot, msg) in batch.got.iter_mut().zip(results) {
        *slot = (msg.bytes, msg.address.as_ref().and_then(socket_addr));
        n += 1;
    }
    batch.len = n;
    Ok(n)
}

/// Elsewhere: one datagram per call.
#[cfg(not(target_os = "linux"))]
fn recv_many(socket: &UdpSocket, batch: &mut RecvBatch) -> io::Result<usize> {
    let (n, src) = socket.recv_from(&mut batch.buf[..MAX_DATAGRAM])?;
    batch.got[0] = (n, Some(src));
    batch.len = 1;
    Ok(1)
}

#[cfg(target_os = "linux")]
fn socket_addr(a: &nix::sys::socket::SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        Some(SocketAddr::from((v4.ip(), v4.port())))
    } else {
        a.as_sockaddr_in6()
            .map(|v6| SocketAddr::from((v6.ip(), v6.port())))
    }
}
/// Asks the kernel to report ICMP errors (port or host unreachable) for
/// datagrams this unconnected socket sends (Linux IP_RECVERR): without it
/// a dead FreeSWITCH port is only noticed when `fr_timeout` runs out.
#[cfg(target_os = "linux")]
pub fn enable_icmp_errors(socket: &UdpSocket) -> io::Result<()> {
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
pub fn enable_icmp_errors(_socket: &UdpSocket) -> io::Result<()> {
    Ok(())
}

/// Reads the socket's error queue: the destinations of datagrams that drew
/// an ICMP error since the last call (the kernel reports the original
/// destination as the message's address).
#[cfg(target_os = "linux")]
pub fn take_unreachable(socket: &UdpSocket, out: &mut Vec<SocketAddr>) {
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
        if let Some(a) = msg.address.as_ref().and_then(socket_addr) {
            out.push(a);
        }
    }
}

#[cfg(not(target_os = "linux"))]
pub fn take_unreachable(_socket: &UdpSocket, _out: &mut Vec<SocketAddr>) {}

#[cfg(test)]
mod tests {
    use super::*;

    /// A keepalived standby binds the VIP before it holds it: only with
    /// freebind. 192.0.2.0/24 (TEST-NET-1) is on no interface here; nothing
    /// is sent.
    #[cfg(target_os = "linux")]
    #[test]
    fn freebind_binds_an_address_this_host_does_not_hold() {
        let vip: SocketAddr = "192.0.2.77:0".parse().unwrap();
        let refused = bind_udp(vip, UdpOptions::default()).unwrap_err();
        assert_eq!(refused.kind(), io::ErrorKind::AddrNotAvailable, "{refused}");
        let opts = UdpOptions {
            freebind: true,
            ..UdpOptions::default()
        };
        let socket = bind_udp(vip, opts).expect("freebind bind");
        assert_eq!(socket.local_addr().unwrap().ip(), vip.ip());
        // IPv6 too, where the host has IPv6 at all.
        let vip6: SocketAddr = "[2001:db8::77]:0".parse().unwrap();
        if std::net::UdpSocket::bind("[::1]:0").is_ok() {
            let socket = bind_udp(vip6, opts).expect("freebind bind (IPv6)");
            assert_eq!(socket.local_addr().unwrap().ip(), vip6.ip());
        }
    }
}
