//! UDP sockets set up the way a busy SIP edge needs them, each read by
//! its own thread.

use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
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

/// How often a send is tried while pending ICMP errors make it fail.
const SEND_TRIES: usize = 4;

/// Whether a send's error may be an ICMP error pending on the socket (the
/// kernel hands it to the next call, whatever its destination).
fn from_icmp(e: &io::Error) -> bool {
    use nix::errno::Errno;
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::HostUnreachable
            | io::ErrorKind::NetworkUnreachable
    ) || [Errno::EPROTO, Errno::EACCES]
        .iter()
        .any(|&n| e.raw_os_error() == Some(n as i32))
}

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

    /// Reads the ICMP errors queued on the socket (see
    /// [`take_icmp_errors`]); returns how many.
    pub fn take_icmp_errors(&self, out: &mut Vec<IcmpReport>) -> usize {
        take_icmp_errors(&self.socket, out)
    }

    /// Blocks until datagrams or ICMP errors come, or [`RECV_TIMEOUT`]
    /// passes: fills `batch` with what is queued (up to [`RECV_BATCH`])
    /// and `icmp` with the ICMP errors reported.
    pub fn recv(&self, batch: &mut RecvBatch, icmp: &mut Vec<IcmpReport>) -> io::Result<()> {
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
            // A pending ICMP error surfaces on the read, as whatever errno
            // it carries (port unreachable, host unreachable, prohibited,
            // parameter problem...). Forged ones too: never sleep on them,
            // even when a send on another thread read the queue first.
            Err(e) if self.take_icmp_errors(icmp) > 0 || from_icmp(&e) => {
                tracing::trace!("udp:{}: {e} from the error queue", self.local);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

/// What an ICMP error on a socket's error queue is worth. ICMP is
/// forgeable (the node's address is no secret: it sits in every
/// Record-Route), so only an error from the destination's own host is
/// evidence; a host or port that really is closed answers from the address
/// the datagram went to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IcmpVerdict {
    /// From the destination's own address: the transaction just sent
    /// there may fail over.
    Accepted,
    /// From any other address (forged, or a router on the way): ignored.
    Forged,
    /// Not an unreachability reported by ICMP (an error of our own, such
    /// as a datagram too large, or ICMP "fragmentation needed"): ignored.
    Other,
}

impl IcmpVerdict {
    /// The verdict on an error-queue message about a datagram sent to
    /// `to`: `from_icmp` when the kernel got it from an ICMP packet (not
    /// our own stack), `errno` its error, `offender` that packet's source
    /// (`SO_EE_OFFENDER`).
    pub fn judge(
        to: SocketAddr,
        from_icmp: bool,
        errno: i32,
        offender: Option<IpAddr>,
    ) -> IcmpVerdict {
        if !from_icmp || errno == nix::errno::Errno::EMSGSIZE as i32 {
            return IcmpVerdict::Other;
        }
        match offender {
            Some(ip) if ip.to_canonical() == to.ip().to_canonical() => IcmpVerdict::Accepted,
            Some(_) => IcmpVerdict::Forged,
            None => IcmpVerdict::Other,
        }
    }
}

/// One message of a socket's error queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IcmpReport {
    /// Where the datagram that drew it went.
    pub to: SocketAddr,
    /// Who sent the ICMP packet, when the kernel says.
    pub offender: Option<IpAddr>,
    pub verdict: IcmpVerdict,
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

    /// The address of the socket [`Egress`] picks to send to `to`.
    pub fn source_for(&self, to: SocketAddr) -> Option<SocketAddr> {
        self.locals.get(self.egress.pick(to)).copied()
    }

    /// Sends `bytes` to `to` from the socket [`Egress`] picks, without
    /// waiting. A pending ICMP error that makes the send fail is read
    /// (each report goes to `icmp`) and the send is tried again, a few
    /// times: the error is about an earlier datagram, maybe to another
    /// peer. Errors that keep coming (a flood) fail the send as a local
    /// matter ([`io::ErrorKind::WouldBlock`]), never as the peer's fault.
    pub fn send(
        &self,
        bytes: &[u8],
        to: SocketAddr,
        mut icmp: impl FnMut(IcmpReport),
    ) -> io::Result<()> {
        let Some(socket) = self.sockets.get(self.egress.pick(to)) else {
            return Err(io::ErrorKind::NotConnected.into());
        };
        let mut reports = Vec::new();
        let mut r = Ok(());
        for _ in 0..SEND_TRIES {
            r = socket.send_to(bytes, to).map(|_| ());
            let Err(e) = &r else { break };
            // The receive thread may have read the queue first: an errno
            // ICMP can set is retried whether or not this read found any.
            if socket.take_icmp_errors(&mut reports) == 0 && !from_icmp(e) {
                break;
            }
        }
        reports.into_iter().for_each(&mut icmp);
        match r {
            // Never a verdict on this destination: an unconnected socket
            // learns of a refused port only from ICMP, about earlier
            // datagrams.
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!("ICMP errors keep arriving for earlier datagrams ({e})"),
            )),
            r => r,
        }
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
    let mut icmp = Vec::new();
    while !cancel.is_cancelled() {
        if let Err(e) = socket.recv(&mut batch, &mut icmp) {
            tracing::warn!("recv on udp:{local}: {e}");
            // Not a busy loop on a persistent error.
            std::thread::sleep(RECV_TIMEOUT);
            continue;
        }
        for report in icmp.drain(..) {
            report_icmp(&**handler, report);
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

/// Reads the socket's error queue: one [`IcmpReport`] per datagram that
/// drew an error since the last call (the kernel reports the original
/// destination as the message's address, and the ICMP packet's source as
/// the offender in its `IP_RECVERR` control message). Returns how many
/// messages it read, judged or not.
#[cfg(target_os = "linux")]
pub fn take_icmp_errors(socket: &UdpSocket, out: &mut Vec<IcmpReport>) -> usize {
    use std::io::IoSliceMut;
    use std::os::fd::AsRawFd;

    use nix::libc;
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, SockaddrStorage};
    let fd = socket.as_raw_fd();
    let mut data = [0u8; 64];
    // Room for the sock_extended_err control message and its offender.
    let mut cmsg = [0u8; 256];
    let mut read = 0;
    // Bounded: the queue holds at most what the kernel's buffer allows.
    for _ in 0..256 {
        let mut iov = [IoSliceMut::new(&mut data)];
        let flags = MsgFlags::MSG_ERRQUEUE | MsgFlags::MSG_DONTWAIT;
        let Ok(msg) = recvmsg::<SockaddrStorage>(fd, &mut iov, Some(&mut cmsg), flags) else {
            break;
        };
        read += 1;
        let Some(to) = msg.address.as_ref().and_then(socket_addr) else {
            continue;
        };
        let mut report = None;
        for c in msg.cmsgs().into_iter().flatten() {
            let (err, offender) = match c {
                ControlMessageOwned::Ipv4RecvErr(err, off) => (
                    err,
                    off.map(|o| {
                        IpAddr::from(std::net::Ipv4Addr::from(u32::from_be(o.sin_addr.s_addr)))
                    }),
                ),
                ControlMessageOwned::Ipv6RecvErr(err, off) => (
                    err,
                    off.map(|o| IpAddr::from(std::net::Ipv6Addr::from(o.sin6_addr.s6_addr))),
                ),
                _ => continue,
            };
            let from_icmp = matches!(
                err.ee_origin,
                libc::SO_EE_ORIGIN_ICMP | libc::SO_EE_ORIGIN_ICMP6
            );
            let errno = i32::try_from(err.ee_errno).unwrap_or(i32::MAX);
            report = Some(IcmpReport {
                to,
                offender,
                verdict: IcmpVerdict::judge(to, from_icmp, errno, offender),
            });
        }
        out.push(report.unwrap_or(IcmpReport {
            to,
            offender: None,
            verdict: IcmpVerdict::Other,
        }));
    }
    read
}

#[cfg(not(target_os = "linux"))]
pub fn take_icmp_errors(_socket: &UdpSocket, _out: &mut Vec<IcmpReport>) -> usize {
    0
}

/// Hands an ICMP error to `handler`: always to
/// [`Handler::on_icmp`], and to [`Handler::on_unreachable`] only when it
/// came from the destination's own host.
pub(super) fn report_icmp<H: Handler + ?Sized>(handler: &H, report: IcmpReport) {
    handler.on_icmp(report);
    if report.verdict == IcmpVerdict::Accepted {
        handler.on_unreachable(report.to);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A closed port's ICMP error, pending on the socket when the next
    /// send (to someone else) runs: that send still goes out, and the
    /// error is reported, judged from the kernel's offender.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_pending_icmp_error_is_read_and_judged_and_the_next_send_goes_out() {
        let closed = UdpSocket::bind("127.0.0.1:0").unwrap();
        let dead = closed.local_addr().unwrap();
        drop(closed);
        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
        let ours = bind_udp("127.0.0.1:0".parse().unwrap(), UdpOptions::default()).unwrap();
        let t = UdpTransport::new(vec![ours]).unwrap();
        let mut reports = Vec::new();
        t.send(b"x", dead, |r| reports.push(r)).unwrap();
        // On loopback the error is queued during that send; the loop only
        // bounds the wait should it come later.
        for _ in 0..10_000 {
            if !reports.is_empty() {
                break;
            }
            t.send(b"y", peer.local_addr().unwrap(), |r| reports.push(r))
                .expect("a pending error does not fail this send");
            std::thread::yield_now();
        }
        assert_eq!(
            reports,
            [IcmpReport {
                to: dead,
                offender: Some(dead.ip()),
                verdict: IcmpVerdict::Accepted,
            }]
        );
        let mut buf = [0u8; 8];
        peer.set_read_timeout(Some(RECV_TIMEOUT * 10)).unwrap();
        assert_eq!(peer.recv(&mut buf).unwrap(), 1, "the peer got a datagram");
    }

    #[test]
    fn only_icmp_from_the_destinations_host_is_accepted() {
        use nix::errno::Errno;
        let to: SocketAddr = "192.0.2.10:5080".parse().unwrap();
        let refused = Errno::ECONNREFUSED as i32;
        let node = Some(to.ip());
        let judge = |from_icmp, errno, offender| IcmpVerdict::judge(to, from_icmp, errno, offender);
        assert_eq!(judge(true, refused, node), IcmpVerdict::Accepted);
        let prohibited = Errno::EHOSTUNREACH as i32;
        assert_eq!(judge(true, prohibited, node), IcmpVerdict::Accepted);
        let stranger = Some("198.51.100.9".parse().unwrap());
        assert_eq!(judge(true, refused, stranger), IcmpVerdict::Forged);
        assert_eq!(judge(true, refused, None), IcmpVerdict::Other);
        assert_eq!(
            judge(false, refused, node),
            IcmpVerdict::Other,
            "our own stack"
        );
        let too_big = Errno::EMSGSIZE as i32;
        assert_eq!(judge(true, too_big, node), IcmpVerdict::Other);
        // A dual-stack socket reports an IPv4 offender v4-mapped.
        let mapped = Some("::ffff:192.0.2.10".parse().unwrap());
        assert_eq!(judge(true, refused, mapped), IcmpVerdict::Accepted);
        let to6: SocketAddr = "[::ffff:192.0.2.10]:5080".parse().unwrap();
        assert_eq!(
            IcmpVerdict::judge(to6, true, refused, node),
            IcmpVerdict::Accepted
        );
    }

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
