//! [`Transports`]: the one thing the proxy knows about sockets. It owns
//! the receive loops and every send, for every transport; the proxy gets
//! each message as one [`Inbound`] event through its [`Handler`] and sends
//! with one [`Transports::send`]. Which UDP socket sends, the ICMP errors
//! a send or a read turns up, and connecting to a TCP peer in the
//! background all stay in here.
//!
//! The place for anything that must see every message in or out (packet
//! capture, a per-transport counter): [`deliver`] for every message
//! received, [`Transports::send`] (and its background connects) for every
//! one sent.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use crate::capture::{Capture, IpProto};

use super::tls::TlsInbound;
use super::udp::IcmpReport;
use super::{
    Inbound, OnMessage, Peer, PerTransport, Privileged, TcpError, TcpOptions, TcpTransport,
    TlsClient, Transport, UdpTransport,
};

/// What the transports hand received messages and transport errors to
/// (the proxy). Called on the receive threads and the TCP connections'
/// tasks, so nothing here may wait.
pub trait Handler: Send + Sync + 'static {
    /// One message, any transport.
    fn on_message(self: &Arc<Self>, msg: Inbound<'_>);

    /// `to` is unreachable: an ICMP error from `to`'s own host for a
    /// datagram sent to it (see [`IcmpVerdict`]), or a background TCP
    /// connect (or TLS handshake) to it failed. May be called from inside a
    /// [`Transports::send`], so it should only note the fact; act on it in
    /// [`after_batch`](Self::after_batch).
    fn on_unreachable(&self, to: SocketAddr);

    /// Every ICMP error read from a UDP socket's error queue, judged (for
    /// the handler's counters and logs). Those [`IcmpVerdict::Accepted`]
    /// then go to [`on_unreachable`](Self::on_unreachable); the others are
    /// dropped here.
    fn on_icmp(&self, _report: IcmpReport) {}

    /// A send to `to` failed (a full socket buffer, an unreachable peer, a
    /// failed background connect): for the handler's counters. The
    /// transport layer keeps no metrics of its own, so it imports nothing
    /// above it.
    fn on_send_failed(&self, to: Peer);

    /// May an inbound TCP connection from `ip` take the slots kept for
    /// trusted sources and pool members (`[tcp] reserved_trusted`)?
    fn privileged(&self, _ip: IpAddr) -> bool {
        false
    }

    /// After each batch of messages (one `recvmmsg`, one TCP message) and
    /// after a failed background connect: the place for work deferred
    /// from the calls above.
    fn after_batch(&self) {}
}

/// Every transport's sockets, receive loops and sends (see the module
/// doc).
pub struct Transports<H> {
    udp: UdpTransport,
    tcp: TcpTransport,
    /// Our listening addresses per transport.
    listening: PerTransport<Vec<SocketAddr>>,
    /// Bound TCP listeners, accepting from [`Transports::attach`] on (a
    /// message read before would have nowhere to go).
    pending_tcp: Mutex<Vec<std::net::TcpListener>>,
    /// Bound TLS listeners and what they serve, likewise.
    pending_tls: Mutex<Vec<std::net::TcpListener>>,
    tls: Option<Arc<TlsInbound>>,
    /// The connections we open over TLS: trust, our client certificate,
    /// each peer's identity.
    tls_client: Arc<TlsClient>,
    /// Weak: the handler owns the transports.
    handler: Arc<OnceLock<Weak<H>>>,
    /// For the background TCP connects.
    rt: tokio::runtime::Handle,
    /// `[capture]`: where every message in and out is copied, if set.
    capture: Arc<OnceLock<Capture>>,
    /// Its sending task, started by [`run`](Self::run).
    capture_task: Mutex<Option<crate::capture::Sender>>,
}

/// Every received message, from any transport, passes here on its way to
/// the handler: the one receive hook (packet capture).
fn deliver<H: Handler>(capture: &OnceLock<Capture>, h: &Arc<H>, msg: Inbound<'_>) {
    if let Some(c) = capture.get() {
        c.record(
            msg.data,
            msg.from.addr,
            msg.local,
            ip_proto(msg.from.transport),
        );
    }
    h.on_message(msg);
}

fn ip_proto(t: Transport) -> IpProto {
    match t {
        Transport::Udp => IpProto::Udp,
        Transport::Tcp => IpProto::Tcp,
        Transport::Tls => IpProto::Tls,
    }
}

/// The handler as the UDP receive threads see it: each message through
/// [`deliver`], everything else straight to the handler.
struct Tap<H> {
    handler: Arc<H>,
    capture: Arc<OnceLock<Capture>>,
}

impl<H: Handler> Handler for Tap<H> {
    fn on_message(self: &Arc<Self>, msg: Inbound<'_>) {
        deliver(&self.capture, &self.handler, msg);
    }
    fn on_unreachable(&self, to: SocketAddr) {
        self.handler.on_unreachable(to);
    }
    fn on_icmp(&self, report: IcmpReport) {
        self.handler.on_icmp(report);
    }
    fn on_send_failed(&self, to: Peer) {
        self.handler.on_send_failed(to);
    }
    fn privileged(&self, ip: IpAddr) -> bool {
        self.handler.privileged(ip)
    }
    fn after_batch(&self) {
        self.handler.after_batch();
    }
}

impl<H: Handler> Transports<H> {
    /// Takes already-bound UDP sockets (from [`super::bind_udp`]) and TCP
    /// listeners (from [`super::bind_tcp`]). Nothing is read until
    /// [`attach`](Self::attach) and [`run`](Self::run). Must run inside a
    /// tokio runtime.
    pub fn new(
        udp: Vec<std::net::UdpSocket>,
        tcp: Vec<std::net::TcpListener>,
        tcp_options: TcpOptions,
    ) -> io::Result<Transports<H>> {
        let udp = UdpTransport::new(udp)?;
        let tcp_addrs = tcp
            .iter()
            .map(std::net::TcpListener::local_addr)
            .collect::<io::Result<Vec<_>>>()?;
        let listening = PerTransport::from_fn(|t| match t {
            Transport::Udp => udp.local_addrs().to_vec(),
            Transport::Tcp => tcp_addrs.clone(),
            Transport::Tls => Vec::new(),
        });
        let handler: Arc<OnceLock<Weak<H>>> = Arc::default();
        let capture: Arc<OnceLock<Capture>> = Arc::default();
        let (slot, tap) = (handler.clone(), capture.clone());
        // On the connection's task, like a datagram on its receive thread.
        let on_message: OnMessage = Arc::new(move |msg| {
            if let Some(h) = slot.get().and_then(Weak::upgrade) {
                deliver(&tap, &h, msg);
                h.after_batch();
            }
        });
        let slot = handler.clone();
        let privileged: Privileged = Arc::new(move |ip| {
            slot.get()
                .and_then(Weak::upgrade)
                .is_some_and(|h| h.privileged(ip))
        });
        Ok(Transports {
            udp,
            tcp: TcpTransport::with_privileged(tcp_options, on_message, Some(privileged)),
            listening,
            pending_tcp: Mutex::new(tcp),
            pending_tls: Mutex::new(Vec::new()),
            tls: None,
            tls_client: Arc::default(),
            handler,
            rt: tokio::runtime::Handle::current(),
            capture,
            capture_task: Mutex::new(None),
        })
    }

    /// Copies every message received and sent to `capture`, whose
    /// `sender` [`run`](Self::run) starts. Before [`attach`](Self::attach).
    pub fn with_capture(self, capture: Capture, sender: crate::capture::Sender) -> Transports<H> {
        let _ = self.capture.set(capture);
        let sender = sender.with_local_source(super::egress::route_source);
        if let Ok(mut task) = self.capture_task.lock() {
            *task = Some(sender);
        }
        self
    }

    /// The capture's counters, when `[capture]` is set.
    pub fn capture(&self) -> Option<&Capture> {
        self.capture.get()
    }

    /// Adds already-bound TLS listeners (from [`super::bind_tcp`]) serving
    /// `tls`; their connections share the TCP transport's caps and
    /// timeouts. Before [`attach`](Self::attach).
    pub fn with_tls(
        mut self,
        listeners: Vec<std::net::TcpListener>,
        tls: Arc<TlsInbound>,
    ) -> io::Result<Transports<H>> {
        self.listening[Transport::Tls] = listeners
            .iter()
            .map(std::net::TcpListener::local_addr)
            .collect::<io::Result<Vec<_>>>()?;
        self.pending_tls = Mutex::new(listeners);
        self.tls = Some(tls);
        Ok(self)
    }

    /// Sets who gets what arrives, and starts accepting on the TCP and TLS
    /// listeners. Once; a second handler is refused.
    pub fn attach(&self, handler: Weak<H>) -> io::Result<()> {
        if self.handler.set(handler).is_err() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "the transports already have a handler",
            ));
        }
        let listeners = match self.pending_tcp.lock() {
            Ok(mut l) => std::mem::take(&mut *l),
            Err(_) => Vec::new(),
        };
        for l in listeners {
            self.tcp.serve(l)?;
        }
        let listeners = match self.pending_tls.lock() {
            Ok(mut l) => std::mem::take(&mut *l),
            Err(_) => Vec::new(),
        };
        if let Some(tls) = &self.tls {
            for l in listeners {
                super::tls::serve(&self.tcp, l, tls.clone())?;
            }
        }
        Ok(())
    }

    /// Reads until `cancel` fires: one thread per UDP socket (started
    /// here), the TCP connections' tasks (started as they open). Returns
    /// once every reader has stopped.
    pub async fn run(&self, cancel: CancellationToken) {
        let task = self.capture_task.lock().ok().and_then(|mut t| t.take());
        if let Some(task) = task {
            self.rt.spawn(task.run(cancel.clone()));
        }
        let readers = match self.handler() {
            Some(handler) => {
                let tap = Arc::new(Tap {
                    handler,
                    capture: self.capture.clone(),
                });
                self.udp.spawn_readers(&tap, &cancel)
            }
            None => Vec::new(),
        };
        cancel.cancelled().await;
        self.tcp.shutdown().await;
        // They see the cancel within RECV_TIMEOUT.
        let _ = tokio::task::spawn_blocking(move || {
            for t in readers {
                let _ = t.join();
            }
        })
        .await;
    }

    /// Our listening addresses over `transport`, in the order given.
    pub fn local_addrs(&self, transport: Transport) -> &[SocketAddr] {
        &self.listening[transport]
    }

    /// The TCP transport's counters and open connections.
    pub fn tcp(&self) -> &TcpTransport {
        &self.tcp
    }

    /// The client side of TLS, for the proxy to configure (at start and on
    /// reload) and to read the handshake counters from.
    pub fn tls_client(&self) -> &TlsClient {
        &self.tls_client
    }

    /// The TLS listeners' identity in force and counters, when there are
    /// TLS listeners.
    pub fn tls_inbound(&self) -> Option<&Arc<TlsInbound>> {
        self.tls.as_ref()
    }

    /// Sends `bytes` to `to` over its transport, without waiting. Over
    /// UDP from the socket egress picks. Over TCP on the known
    /// connection, else the open one to that address, else a new one
    /// opened in the background, whose failure reaches the handler like
    /// an ICMP error. A failed send is counted, never fatal.
    ///
    /// The one send hook: each message sent is captured here (or, sent
    /// on a connection being opened, once it is queued on it).
    pub fn send(&self, bytes: &[u8], to: Peer) -> io::Result<()> {
        let r = match to.transport {
            Transport::Udp => self
                .udp
                .send(bytes, to.addr, |report| {
                    if let Some(h) = self.handler() {
                        super::udp::report_icmp(&*h, report);
                    }
                })
                .map(|()| self.udp.source_for(to.addr)),
            Transport::Tcp | Transport::Tls => self.send_stream(bytes, to),
        };
        match r {
            Ok(Some(local)) => {
                if let Some(c) = self.capture.get() {
                    c.record(bytes, local, to.addr, ip_proto(to.transport));
                }
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(e) => {
                tracing::debug!("send to {to}: {e}");
                if let Some(h) = self.handler() {
                    h.on_send_failed(to);
                }
                Err(e)
            }
        }
    }

    /// Over TCP or TLS: the known connection, else the open one to that
    /// address (ours or the peer's; over TLS ours only if its certificate
    /// proves who `to` must be now), else a new one opened in the
    /// background, whose failed connect or handshake reaches the handler
    /// like an ICMP error (the INVITE fails over at once, not at
    /// fr_timeout). Our end of the connection it was queued on, `None`
    /// when that connection is being opened.
    fn send_stream(&self, bytes: &[u8], to: Peer) -> io::Result<Option<SocketAddr>> {
        let msg = Bytes::copy_from_slice(bytes);
        let queue = |conn| match self.tcp.send_on(conn, msg.clone()) {
            Ok(()) => Some(Ok(self.tcp.local_of(conn))),
            // Gone: try the next way.
            Err(TcpError::Closed(_)) => None,
            Err(e) => Some(Err(io::Error::new(io::ErrorKind::WouldBlock, e))),
        };
        if let Some(done) = to.conn.and_then(queue) {
            return done;
        }
        let tls = to.transport == Transport::Tls;
        let reuse = !tls || self.tls_client.may_reuse(to.addr);
        let open = self.tcp.conn_over(to.transport, to.addr);
        if let Some(done) = open.filter(|_| reuse).and_then(queue) {
            return done;
        }
        let tcp = self.tcp.clone();
        let captured = self.capture.get().map(|c| (c.clone(), msg.clone()));
        if tls {
            let client = self.tls_client.clone();
            let upgrade = move |s| async move { client.handshake(s, to.addr).await };
            self.dial(to, captured, async move {
                tcp.send_over(Transport::Tls, to.addr, msg, reuse, upgrade)
                    .await
            });
        } else {
            self.dial(to, captured, async move { tcp.send(to.addr, msg).await });
        }
        Ok(None)
    }

    /// Runs `dial` (a connect and a send) in the background; its failure
    /// goes to the handler as `to` unreachable. `captured`: the capture
    /// and the message, recorded once it is queued on the new connection.
    fn dial(
        &self,
        to: Peer,
        captured: Option<(Capture, Bytes)>,
        dial: impl std::future::Future<Output = Result<super::ConnId, TcpError>> + Send + 'static,
    ) {
        let slot = self.handler.clone();
        let tcp = self.tcp.clone();
        self.rt.spawn(async move {
            match dial.await {
                Ok(conn) => {
                    if let (Some((c, msg)), Some(local)) = (captured, tcp.local_of(conn)) {
                        c.record(&msg, local, to.addr, ip_proto(to.transport));
                    }
                }
                Err(e) => {
                    tracing::debug!("send to {to}: {e}");
                    if let Some(h) = slot.get().and_then(Weak::upgrade) {
                        h.on_send_failed(to);
                        h.on_unreachable(to.addr);
                        h.after_batch();
                    }
                }
            }
        });
    }

    fn handler(&self) -> Option<Arc<H>> {
        self.handler.get().and_then(Weak::upgrade)
    }
}
