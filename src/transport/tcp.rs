//! SIP over TCP (RFC 3261 §18): listeners, outgoing connections, one
//! connection per peer, stream framing with [`frame_stream`], RFC 5626
//! §3.5.1 CRLF keep-alives, idle timeout and a connection cap.
//!
//! Against a slowloris (one source holding every slot with connections
//! that trickle bytes), inbound connections are admitted by [`admit`]: a
//! cap per source address, and slots kept for privileged sources (trusted
//! networks and pool members, as the [`Privileged`] callback says) that
//! nobody else may take; a message must arrive whole within
//! `message_timeout` of its first byte. Refusals are counted and logged at
//! most once per source per [`REFUSAL_LOG_INTERVAL`].
//!
//! One task per connection does both directions: it reads and frames
//! inbound bytes, and drains that connection's bounded send queue. Nothing
//! is spawned per message. A send never waits: a full queue (a stalled
//! peer) is an error for that send only, so one slow peer cannot hold up
//! the proxy or other connections.
//!
//! Received messages go, whole and unparsed, to one [`OnMessage`] callback
//! on the connection's own task. Responses go back with
//! [`TcpTransport::send_on`] on the connection the request came in on
//! (RFC 3261 §18.2.2).

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use dashmap::DashMap;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Inbound, Peer, Transport};
use crate::sip::{frame_stream, SipError, StreamFrame, DEFAULT_MAX_MESSAGE};

/// Handles a received message on the connection's own task: the receiver
/// never waits (the proxy), so no channel and no task wake-up per message,
/// and an answer queued on the same connection goes out without another.
pub type OnMessage = Arc<dyn Fn(Inbound<'_>) + Send + Sync>;

/// Says whether an inbound connection's source may use the slots kept
/// for trusted sources and pool members (`TcpOptions::reserved`). Asked
/// once per accepted connection.
pub type Privileged = Arc<dyn Fn(IpAddr) -> bool + Send + Sync>;

/// Identifies one TCP connection for its lifetime; never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(u64);

impl ConnId {
    /// A made-up id, for tests of code that only carries one around.
    #[doc(hidden)]
    pub fn for_tests(n: u64) -> ConnId {
        ConnId(n)
    }
}

impl std::fmt::Display for ConnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "tcp#{}", self.0)
    }
}

/// Settings for the TCP transport.
#[derive(Debug, Clone, Copy)]
pub struct TcpOptions {
    /// Cap on one message (headers and body); beyond it the connection is
    /// closed, since a stream cannot be resynchronised.
    pub max_message: usize,
    /// A connection without traffic in either direction for this long is
    /// closed.
    pub idle_timeout: Duration,
    /// Outgoing connect timeout. Kept short: a failed connect is a
    /// transport error the proxy fails over on, and it should come well
    /// before `fr_timeout` would.
    pub connect_timeout: Duration,
    /// Cap on open connections. New inbound ones beyond it are refused;
    /// outgoing ones are not (they go to nodes and trunks the proxy
    /// chose, and a flood of inbound connections must not stop failover).
    pub max_connections: usize,
    /// Inbound connections from one source address at most (privileged
    /// sources are exempt).
    pub max_per_source: usize,
    /// Of `max_connections`, the slots only privileged sources may take.
    pub reserved: usize,
    /// A message whose first byte came this long ago and that is still
    /// not whole closes its connection (a slowloris keeps the idle timer
    /// fed; this one it cannot).
    pub message_timeout: Duration,
    /// Messages queued per connection before a send fails.
    pub send_queue: usize,
    /// IP_FREEBIND on listeners (a standby binding the keepalived VIP).
    pub freebind: bool,
    /// listen(2) backlog.
    pub backlog: i32,
}

impl Default for TcpOptions {
    fn default() -> Self {
        TcpOptions {
            max_message: DEFAULT_MAX_MESSAGE,
            idle_timeout: Duration::from_secs(300),
            connect_timeout: Duration::from_secs(2),
            max_connections: 4096,
            max_per_source: 4096,
            reserved: 0,
            message_timeout: Duration::from_secs(10),
            send_queue: 256,
            freebind: false,
            backlog: 1024,
        }
    }
}

/// Counters the proxy exports as metrics.
#[derive(Debug, Default)]
pub struct TcpStats {
    /// Inbound connections accepted.
    pub accepted: AtomicU64,
    /// Inbound connections refused because of `max_connections`.
    pub refused_cap: AtomicU64,
    /// Inbound connections refused because their source had
    /// `max_per_source` open.
    pub refused_per_source: AtomicU64,
    /// Inbound connections from an unprivileged source refused because
    /// only the reserved slots were left.
    pub refused_reserved: AtomicU64,
    /// Connections closed on a message not whole within
    /// `message_timeout` of its first byte.
    pub closed_slow: AtomicU64,
    /// Outgoing connections established (for TLS: handshake done).
    pub connected: AtomicU64,
    /// Connections closed on a message whose framing was invalid.
    pub closed_malformed: AtomicU64,
    /// Connections closed on a message beyond `max_message`.
    pub closed_oversized: AtomicU64,
    /// Connections closed by the idle timeout.
    pub closed_idle: AtomicU64,
    /// Sends refused because the connection's queue was full.
    pub send_queue_full: AtomicU64,
    /// Outgoing connects that failed or timed out (for TLS: the
    /// handshake too; its reason is in [`super::tls::TlsStats`]).
    pub connect_failed: AtomicU64,
}

impl TcpStats {
    fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Why a send failed. Every variant is a transport failure for the
/// proxy: fail over (a new INVITE) or count a probe failure.
#[derive(Debug, thiserror::Error)]
pub enum TcpError {
    #[error("tcp connect to {0} failed: {1}")]
    Connect(SocketAddr, #[source] io::Error),
    #[error("tcp connect to {0} timed out")]
    ConnectTimeout(SocketAddr),
    /// Connected, but the TLS handshake failed or timed out.
    #[error("tls handshake with {0} failed: {1}")]
    Handshake(SocketAddr, #[source] io::Error),
    /// The connection has closed: for a response, open a new one to the
    /// Via's sent-by with [`TcpTransport::send`].
    #[error("tcp connection {0} is closed")]
    Closed(ConnId),
    /// The peer is not reading fast enough.
    #[error("tcp send queue to {0} is full")]
    QueueFull(SocketAddr),
    #[error("tcp transport is shut down")]
    Shutdown,
}

/// Binds a listening TCP socket (SO_REUSEADDR so a restart does not wait
/// for TIME_WAIT; IP_FREEBIND when asked). Non-blocking, ready for
/// [`TcpTransport::serve`].
pub fn bind_tcp(addr: SocketAddr, opts: &TcpOptions) -> io::Result<std::net::TcpListener> {
    bind_stream(addr, opts, Transport::Tcp)
}

/// [`bind_tcp`] for a listener of stream transport `transport` (TCP or
/// TLS), whose name its errors carry.
pub fn bind_stream(
    addr: SocketAddr,
    opts: &TcpOptions,
    transport: Transport,
) -> io::Result<std::net::TcpListener> {
    let bind = || -> io::Result<std::net::TcpListener> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        super::prepare(&socket, addr, transport, opts.freebind)?;
        socket.bind(&addr.into())?;
        socket.listen(opts.backlog)?;
        Ok(socket.into())
    };
    bind().map_err(|e| super::bind_error(transport, addr, e))
}

/// The TCP transport: listeners, connection table, counters. Cheap to
/// clone (an `Arc`).
#[derive(Clone)]
pub struct TcpTransport {
    inner: Arc<Inner>,
}

/// What the table holds for one connection.
struct Conn {
    peer: SocketAddr,
    /// Our end.
    local: SocketAddr,
    queue: mpsc::Sender<Bytes>,
}

/// A connection's byte stream: a TCP socket, or TLS over one.
pub(super) trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<S: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for S {}

struct Inner {
    opts: TcpOptions,
    stats: TcpStats,
    by_id: DashMap<ConnId, Conn>,
    /// One connection per peer and transport, reused for outgoing
    /// requests. An inbound connection is reused too: it reaches the same
    /// peer.
    by_peer: DashMap<(Transport, SocketAddr), ConnId>,
    /// Serialises connects to one peer so two concurrent sends open one
    /// connection, not two.
    dialing: DashMap<(Transport, SocketAddr), Arc<tokio::sync::Mutex<()>>>,
    open: AtomicUsize,
    /// Inbound connections open per source address (entries at 0 go).
    per_source: DashMap<IpAddr, usize>,
    privileged: Option<Privileged>,
    refusal_log: RefusalLog,
    next_id: AtomicU64,
    on_message: OnMessage,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl TcpTransport {
    /// A transport with no listener yet (outgoing only until
    /// [`serve`](Self::serve)) that hands every received message to
    /// `on_message`.
    pub fn new(opts: TcpOptions, on_message: OnMessage) -> TcpTransport {
        TcpTransport::with_privileged(opts, on_message, None)
    }

    /// [`new`](Self::new), with `privileged` saying which sources may use
    /// the reserved slots (none without it).
    pub fn with_privileged(
        opts: TcpOptions,
        on_message: OnMessage,
        privileged: Option<Privileged>,
    ) -> TcpTransport {
        let inner = Inner {
            opts,
            stats: TcpStats::default(),
            by_id: DashMap::new(),
            by_peer: DashMap::new(),
            dialing: DashMap::new(),
            open: AtomicUsize::new(0),
            per_source: DashMap::new(),
            privileged,
            refusal_log: RefusalLog::default(),
            next_id: AtomicU64::new(1),
            on_message,
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
        };
        TcpTransport {
            inner: Arc::new(inner),
        }
    }

    /// Binds `addr` and starts accepting: [`new`](Self::new) +
    /// [`bind_tcp`] + [`serve`](Self::serve). Must run inside a tokio
    /// runtime.
    pub fn listen(
        addr: SocketAddr,
        opts: TcpOptions,
        on_message: OnMessage,
    ) -> io::Result<(TcpTransport, SocketAddr)> {
        let transport = TcpTransport::new(opts, on_message);
        let listener = bind_tcp(addr, &opts)?;
        let local = transport.serve(listener)?;
        Ok((transport, local))
    }

    /// Starts an accept loop on an already-bound listener (from
    /// [`bind_tcp`]) and returns its local address.
    pub fn serve(&self, listener: std::net::TcpListener) -> io::Result<SocketAddr> {
        listener.set_nonblocking(true)?;
        let listener = TcpListener::from_std(listener)?;
        let local = listener.local_addr()?;
        let inner = self.inner.clone();
        self.inner
            .tasks
            .spawn(async move { accept_loop(inner, listener, local).await });
        Ok(local)
    }

    pub fn stats(&self) -> &TcpStats {
        &self.inner.stats
    }

    /// Connections open now (inbound and outgoing).
    pub fn connections(&self) -> usize {
        self.inner.open.load(Ordering::Relaxed)
    }

    /// The TCP connection to `peer`, if one is open.
    pub fn conn_to(&self, peer: SocketAddr) -> Option<ConnId> {
        self.conn_over(Transport::Tcp, peer)
    }

    /// The connection to `peer` over `transport` (TCP or TLS), if one is
    /// open.
    pub fn conn_over(&self, transport: Transport, peer: SocketAddr) -> Option<ConnId> {
        self.inner.by_peer.get(&(transport, peer)).map(|e| *e)
    }

    /// Queues `msg` for `to`, on the open connection to it or a new one.
    /// Waits only for a connect (bounded by `connect_timeout`).
    pub async fn send(&self, to: SocketAddr, msg: Bytes) -> Result<ConnId, TcpError> {
        // Plain TCP is never upgraded (see `connect`).
        self.send_over(Transport::Tcp, to, msg, true, |s| async move { Ok(s) })
            .await
    }

    /// [`send`](Self::send) over `transport`: a new connection to `to` is
    /// made a `transport` one by `upgrade` (the TLS handshake, bounded by
    /// its own timeout), whose failure is [`TcpError::Handshake`]. Plain
    /// TCP never calls it. Without `reuse`, a new connection even if one
    /// is open (it proves another identity than the one asked now); the
    /// new one takes its place for later sends.
    pub(super) async fn send_over<S, F, Fut>(
        &self,
        transport: Transport,
        to: SocketAddr,
        msg: Bytes,
        reuse: bool,
        upgrade: F,
    ) -> Result<ConnId, TcpError>
    where
        S: Stream,
        F: FnOnce(TcpStream) -> Fut,
        Fut: std::future::Future<Output = io::Result<S>>,
    {
        if self.inner.shutdown.is_cancelled() {
            return Err(TcpError::Shutdown);
        }
        if let Some(id) = self.conn_over(transport, to).filter(|_| reuse) {
            match self.send_on(id, msg.clone()) {
                // It closed under us: drop the stale entry and dial anew.
                Err(TcpError::Closed(_)) => {
                    self.inner
                        .by_peer
                        .remove_if(&(transport, to), |_, v| *v == id);
                }
                other => return other.map(|()| id),
            }
        }
        let lock = self
            .inner
            .dialing
            .entry((transport, to))
            .or_default()
            .clone();
        let _guard = lock.lock().await;
        // Someone else may have connected while we waited for the lock.
        if let Some(id) = self.conn_over(transport, to).filter(|_| reuse) {
            if let Ok(()) = self.send_on(id, msg.clone()) {
                return Ok(id);
            }
        }
        let result = self.connect(transport, to, upgrade).await;
        self.inner.dialing.remove(&(transport, to));
        let id = result?;
        self.send_on(id, msg).map(|()| id)
    }

    /// Our end of connection `conn`, while it is open.
    pub fn local_of(&self, conn: ConnId) -> Option<SocketAddr> {
        self.inner.by_id.get(&conn).map(|c| c.local)
    }

    /// Queues `msg` on connection `conn` without waiting. `Closed` when
    /// the connection is gone.
    pub fn send_on(&self, conn: ConnId, msg: Bytes) -> Result<(), TcpError> {
        let Some(entry) = self.inner.by_id.get(&conn) else {
            return Err(TcpError::Closed(conn));
        };
        let peer = entry.peer;
        match entry.queue.try_send(msg) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                TcpStats::inc(&self.inner.stats.send_queue_full);
                Err(TcpError::QueueFull(peer))
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(TcpError::Closed(conn)),
        }
    }

    /// Stops the accept loops and closes every connection; waits for the
    /// tasks to end.
    pub async fn shutdown(&self) {
        self.inner.shutdown.cancel();
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }

    async fn connect<S, F, Fut>(
        &self,
        transport: Transport,
        to: SocketAddr,
        upgrade: F,
    ) -> Result<ConnId, TcpError>
    where
        S: Stream,
        F: FnOnce(TcpStream) -> Fut,
        Fut: std::future::Future<Output = io::Result<S>>,
    {
        let inner = &self.inner;
        let stream =
            match tokio::time::timeout(inner.opts.connect_timeout, TcpStream::connect(to)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    TcpStats::inc(&inner.stats.connect_failed);
                    tracing::debug!("{transport}:{to}: connect failed: {e}");
                    return Err(TcpError::Connect(to, e));
                }
                Err(_) => {
                    TcpStats::inc(&inner.stats.connect_failed);
                    tracing::debug!("{transport}:{to}: connect timed out");
                    return Err(TcpError::ConnectTimeout(to));
                }
            };
        if transport == Transport::Tcp {
            TcpStats::inc(&inner.stats.connected);
            inner.open.fetch_add(1, Ordering::Relaxed);
            return Ok(start_tcp(inner, stream, to, None));
        }
        let local = prepare_stream(&stream, None);
        // Counted open from here: a handshake in progress holds a slot.
        inner.open.fetch_add(1, Ordering::Relaxed);
        let upgraded = tokio::select! {
            _ = inner.shutdown.cancelled() => Err(io::Error::other("shutdown")),
            r = upgrade(stream) => r,
        };
        match upgraded {
            Ok(s) => {
                TcpStats::inc(&inner.stats.connected);
                let (rd, wr) = tokio::io::split(s);
                Ok(start_conn(inner, rd, wr, to, local, transport, false))
            }
            Err(e) => {
                inner.open.fetch_sub(1, Ordering::Relaxed);
                TcpStats::inc(&inner.stats.connect_failed);
                Err(TcpError::Handshake(to, e))
            }
        }
    }

    /// Counts an inbound connection from `peer` on `local` against the
    /// caps (see [`admit`]); false when refused (counted and logged here).
    /// An admitted one holds its slot until [`start_inbound`]'s
    /// connection ends or [`release_inbound`] gives it back.
    ///
    /// [`start_inbound`]: Self::start_inbound
    /// [`release_inbound`]: Self::release_inbound
    pub(super) fn admit_inbound(
        &self,
        peer: SocketAddr,
        local: SocketAddr,
        transport: Transport,
    ) -> bool {
        admit_inbound(&self.inner, peer, local, transport)
    }

    /// Gives back the slot of an admitted connection that never started
    /// (a failed TLS handshake).
    pub(super) fn release_inbound(&self, peer: SocketAddr) {
        self.inner.open.fetch_sub(1, Ordering::Relaxed);
        release_source(&self.inner, source(peer.ip().to_canonical()));
    }

    /// Runs an admitted inbound connection over `transport` on the same
    /// machinery as TCP's.
    pub(super) fn start_inbound(
        &self,
        stream: impl Stream,
        peer: SocketAddr,
        local: SocketAddr,
        transport: Transport,
    ) -> ConnId {
        let (rd, wr) = tokio::io::split(stream);
        start_conn(&self.inner, rd, wr, peer, local, transport, true)
    }

    /// Runs `task` with the connections' tasks: [`shutdown`] waits for it.
    ///
    /// [`shutdown`]: Self::shutdown
    pub(super) fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        self.inner.tasks.spawn(task);
    }

    /// Fires on [`shutdown`](Self::shutdown).
    pub(super) fn shutdown_token(&self) -> &CancellationToken {
        &self.inner.shutdown
    }

    /// Inbound connections open now from `ip`'s source (its IPv6 /64).
    pub fn connections_from(&self, ip: IpAddr) -> usize {
        self.inner.per_source.get(&source(ip)).map_or(0, |n| *n)
    }
}

async fn accept_loop(inner: Arc<Inner>, listener: TcpListener, local: SocketAddr) {
    loop {
        let accepted = tokio::select! {
            _ = inner.shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and the like: back off instead of spinning; the
                // pending connection stays in the backlog.
                tracing::warn!("tcp:{local}: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if !admit_inbound(&inner, peer, local, Transport::Tcp) {
            drop(stream);
            continue;
        }
        start_tcp(&inner, stream, peer, Some(local));
    }
}

/// [`TcpTransport::admit_inbound`].
fn admit_inbound(inner: &Inner, peer: SocketAddr, local: SocketAddr, transport: Transport) -> bool {
    let ip = peer.ip().to_canonical();
    let privileged = inner.privileged.as_ref().is_some_and(|p| p(ip));
    let src = source(ip);
    let open = inner.open.fetch_add(1, Ordering::Relaxed);
    // Counted before the check, so concurrent accepts cannot both
    // take the last slot.
    let from_source = {
        let mut n = inner.per_source.entry(src).or_insert(0);
        *n += 1;
        *n - 1
    };
    if let Err(refused) = admit(&inner.opts, open, from_source, privileged) {
        inner.open.fetch_sub(1, Ordering::Relaxed);
        release_source(inner, src);
        TcpStats::inc(match refused {
            Refused::Full => &inner.stats.refused_cap,
            Refused::PerSource => &inner.stats.refused_per_source,
            Refused::Reserved => &inner.stats.refused_reserved,
        });
        if let Some(more) = inner.refusal_log.should_log(src, Instant::now()) {
            tracing::warn!(
                "{transport}:{local}: connection from {peer} refused: {refused} ({open} open, \
                 {from_source} from {src}; {more} more refused from {src} since its last \
                 line)"
            );
        }
        return false;
    }
    TcpStats::inc(&inner.stats.accepted);
    true
}

/// Why [`admit`] refused an inbound connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("max_connections reached")]
    Full,
    #[error("max_connections_per_source reached")]
    PerSource,
    #[error(
        "only the slots reserved for trusted sources and pool members are left \
         (reserved_trusted)"
    )]
    Reserved,
}

/// Whether a new inbound connection may open, with `open` connections
/// open (inbound and outgoing) and `from_source` already open from its
/// source; `privileged`: a trusted source or pool member, which may take
/// the reserved slots and is not capped per source.
pub fn admit(
    opts: &TcpOptions,
    open: usize,
    from_source: usize,
    privileged: bool,
) -> Result<(), Refused> {
    if open >= opts.max_connections {
        return Err(Refused::Full);
    }
    if privileged {
        return Ok(());
    }
    if open >= opts.max_connections.saturating_sub(opts.reserved) {
        return Err(Refused::Reserved);
    }
    if from_source >= opts.max_per_source {
        return Err(Refused::PerSource);
    }
    Ok(())
}

/// What counts as one source for `max_per_source` and the refusal log:
/// an IPv4 address, an IPv6 /64 (one host usually holds a whole /64, so
/// per address would cap nothing).
pub fn source(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => IpAddr::V6(std::net::Ipv6Addr::from_bits(
            v6.to_bits() & !u128::from(u64::MAX),
        )),
    }
}

/// One inbound connection from source `ip` (from [`source`]) fewer.
fn release_source(inner: &Inner, ip: IpAddr) {
    if let dashmap::mapref::entry::Entry::Occupied(mut e) = inner.per_source.entry(ip) {
        *e.get_mut() -= 1;
        if *e.get() == 0 {
            e.remove();
        }
    }
}

/// A refused source is logged at most once per this interval (a flood of
/// refusals would otherwise be a flood of log lines).
pub const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Sources in the refusal log at most (stale ones are forgotten first):
/// it must stay bounded under refusals from many addresses.
const REFUSAL_LOG_SOURCES: usize = 4096;

/// When each refused source was last logged, and its refusals since.
#[derive(Default)]
pub(super) struct RefusalLog {
    last: DashMap<IpAddr, (Instant, u64)>,
}

impl RefusalLog {
    /// `Some(refusals not logged since the source's last line)` when this
    /// one is to be logged.
    pub(super) fn should_log(&self, ip: IpAddr, now: Instant) -> Option<u64> {
        use dashmap::mapref::entry::Entry;
        if self.last.len() >= REFUSAL_LOG_SOURCES {
            self.last
                .retain(|_, (at, _)| now.duration_since(*at) < REFUSAL_LOG_INTERVAL);
        }
        let full = self.last.len() >= REFUSAL_LOG_SOURCES;
        match self.last.entry(ip) {
            // Refusals from this many sources at once: the new ones are
            // only counted (the metric), or the log would be the flood.
            Entry::Vacant(_) if full => None,
            Entry::Vacant(e) => {
                e.insert((now, 0));
                Some(0)
            }
            Entry::Occupied(mut e) => {
                let (at, suppressed) = e.get_mut();
                if now.duration_since(*at) >= REFUSAL_LOG_INTERVAL {
                    *at = now;
                    Some(std::mem::take(suppressed))
                } else {
                    *suppressed += 1;
                    None
                }
            }
        }
    }
}

/// Our end of `stream`, else the listener it was accepted on, and Nagle
/// off: SIP messages are written whole; Nagle would only delay pipelined
/// responses.
pub(super) fn prepare_stream(stream: &TcpStream, listener: Option<SocketAddr>) -> SocketAddr {
    let _ = stream.set_nodelay(true);
    let unspecified = SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, 0));
    stream.local_addr().ok().or(listener).unwrap_or(unspecified)
}

/// A plain TCP connection (already counted in `open`) started;
/// `listener`: the address an inbound one was accepted on.
fn start_tcp(
    inner: &Arc<Inner>,
    stream: TcpStream,
    peer: SocketAddr,
    listener: Option<SocketAddr>,
) -> ConnId {
    let local = prepare_stream(&stream, listener);
    // Owned halves: no lock between the two directions.
    let (rd, wr) = stream.into_split();
    let inbound = listener.is_some();
    start_conn(inner, rd, wr, peer, local, Transport::Tcp, inbound)
}

/// Registers a connection (already counted in `open`) and spawns its task.
fn start_conn(
    inner: &Arc<Inner>,
    rd: impl AsyncRead + Send + Unpin + 'static,
    wr: impl AsyncWrite + Send + Unpin + 'static,
    peer: SocketAddr,
    local: SocketAddr,
    transport: Transport,
    inbound: bool,
) -> ConnId {
    let id = ConnId(inner.next_id.fetch_add(1, Ordering::Relaxed));
    let (tx, rx) = mpsc::channel(inner.opts.send_queue.max(1));
    inner.by_id.insert(
        id,
        Conn {
            peer,
            local,
            queue: tx,
        },
    );
    inner.by_peer.insert((transport, peer), id);
    let task_inner = inner.clone();
    let from = Peer {
        addr: peer,
        transport,
        conn: Some(id),
    };
    inner.tasks.spawn(async move {
        let (mut rd, mut wr) = (rd, wr);
        let reason = run_conn(&task_inner, &mut rd, &mut wr, from, local, rx).await;
        tracing::debug!("{transport}:{peer}: {id} closed: {reason}");
        task_inner.by_id.remove(&id);
        task_inner
            .by_peer
            .remove_if(&(transport, peer), |_, v| *v == id);
        task_inner.open.fetch_sub(1, Ordering::Relaxed);
        if inbound {
            release_source(&task_inner, source(peer.ip().to_canonical()));
        }
        // Closed only now: a peer that sees the close and reconnects
        // finds its slot free.
        drop((rd, wr));
    });
    id
}

/// Why a connection ended (for the log line).
#[derive(Debug, thiserror::Error)]
enum CloseReason {
    #[error("peer closed")]
    Eof,
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("idle")]
    Idle,
    #[error("message not whole within message_timeout")]
    Slow,
    #[error("oversized message")]
    Oversized,
    #[error("malformed message: {0}")]
    Malformed(SipError),
    #[error("shutdown")]
    Shutdown,
}

/// Pongs queued beyond this are dropped: a peer that pings without
/// reading must not grow our memory.
const MAX_PENDING_PONGS: usize = 8;
/// Largest single read, once a message is arriving.
const READ_CHUNK: usize = 16 * 1024;
/// What an idle connection's read buffer holds: most of a connection's
/// life is waiting, and thousands of trunk and node connections each
/// keeping a 16 KiB buffer (plus a read chunk) resident was most of its
/// memory. A read that fills it grows it to [`READ_CHUNK`].
const IDLE_CHUNK: usize = 2 * 1024;
/// Messages taken off the send queue per wake-up.
const WRITE_BATCH: usize = 16;

/// The connection's life: read and frame, write the queue, idle timeout.
/// The same for every stream transport: `rd`/`wr` are a TCP socket's
/// halves or a TLS session's.
async fn run_conn(
    inner: &Inner,
    mut rd: impl AsyncRead + Unpin,
    mut wr: impl AsyncWrite + Unpin,
    from: Peer,
    local: SocketAddr,
    mut queue: mpsc::Receiver<Bytes>,
) -> CloseReason {
    let (peer, transport) = (from.addr, from.transport);
    let id = from.conn.unwrap_or(ConnId(0));
    let max = inner.opts.max_message.max(1);
    let idle = inner.opts.idle_timeout;
    let mut buf = BytesMut::new();
    let mut out: VecDeque<Bytes> = VecDeque::new();
    // Bytes handed to `wr` and not flushed yet (TLS buffers records).
    let mut unflushed = false;
    let message_timeout = inner.opts.message_timeout;
    let mut last_activity = Instant::now();
    // When the first byte of the message still incomplete in `buf` came.
    let mut partial_since: Option<Instant> = None;
    let wake = |last_activity: Instant, partial_since: Option<Instant>| {
        let idle_at = last_activity + idle;
        partial_since.map_or(idle_at, |p| idle_at.min(p + message_timeout))
    };
    let idle_sleep = tokio::time::sleep_until(last_activity + idle);
    tokio::pin!(idle_sleep);
    loop {
        // After framing, fewer than `max` bytes remain buffered (a full
        // frame is taken off), so there is always room.
        let room = max.saturating_sub(buf.len()).max(1);
        if buf.capacity() == buf.len() {
            let want = if buf.is_empty() {
                IDLE_CHUNK
            } else {
                READ_CHUNK
            };
            buf.reserve(want.min(room));
        }
        let mut limited = (&mut rd).take(room as u64);
        tokio::select! {
            _ = inner.shutdown.cancelled() => return CloseReason::Shutdown,
            () = &mut idle_sleep => {
                if partial_since.is_some_and(|p| p.elapsed() >= message_timeout) {
                    TcpStats::inc(&inner.stats.closed_slow);
                    tracing::debug!("{transport}:{peer}: {id}: message not whole in time, closing");
                    return CloseReason::Slow;
                }
                if last_activity.elapsed() >= idle {
                    TcpStats::inc(&inner.stats.closed_idle);
                    return CloseReason::Idle;
                }
                idle_sleep.as_mut().reset(wake(last_activity, partial_since));
            }
            // Cancel safe: nothing is read unless it completes. Straight
            // into `buf`, at most `room`.
            r = limited.read_buf(&mut buf) => {
                match r {
                    Ok(0) => return CloseReason::Eof,
                    Ok(_) => {}
                    Err(e) => return e.into(),
                }
                last_activity = Instant::now();
                let took = match deliver(inner, &mut buf, max, from, local, &mut out) {
                    Ok(took) => took,
                    Err(reason) => return reason,
                };
                if buf.is_empty() && buf.capacity() > IDLE_CHUNK {
                    // Back to a small buffer while idle; the messages just
                    // framed keep the big one until they are handled.
                    buf = BytesMut::new();
                }
                partial_since = match partial_since {
                    _ if buf.is_empty() => None,
                    // A new message began behind the ones taken off.
                    Some(_) if took => Some(last_activity),
                    Some(p) => Some(p),
                    None => Some(last_activity),
                };
                idle_sleep.as_mut().reset(wake(last_activity, partial_since));
            }
            m = queue.recv(), if out.is_empty() => {
                let Some(m) = m else { return CloseReason::Shutdown };
                out.push_back(m);
                while out.len() < WRITE_BATCH {
                    match queue.try_recv() {
                        Ok(m) => out.push_back(m),
                        Err(_) => break,
                    }
                }
            }
            // Cancel safe: one write (what it took leaves `out` only once
            // it returns) or a flush.
            r = write_out(&mut wr, &mut out), if !out.is_empty() || unflushed => {
                match r {
                    Ok(true) => {
                        unflushed = true;
                        last_activity = Instant::now();
                        idle_sleep.as_mut().reset(wake(last_activity, partial_since));
                    }
                    Ok(false) => unflushed = false,
                    Err(e) => return e.into(),
                }
            }
        }
    }
}

/// Takes every whole frame off the front of `buf`: messages go to the
/// proxy, pings get a pong queued in `out`. `Ok(true)` when it took any.
fn deliver(
    inner: &Inner,
    buf: &mut BytesMut,
    max: usize,
    from: Peer,
    local: SocketAddr,
    out: &mut VecDeque<Bytes>,
) -> Result<bool, CloseReason> {
    let (peer, transport) = (from.addr, from.transport);
    let id = from.conn.unwrap_or(ConnId(0));
    let mut took = false;
    loop {
        match frame_stream(buf, max) {
            Err(SipError::Incomplete) => return Ok(took),
            Err(SipError::TooLarge) => {
                TcpStats::inc(&inner.stats.closed_oversized);
                tracing::info!("{transport}:{peer}: {id}: message over {max} bytes, closing");
                return Err(CloseReason::Oversized);
            }
            Err(e) => {
                TcpStats::inc(&inner.stats.closed_malformed);
                tracing::info!("{transport}:{peer}: {id}: {e}, closing");
                return Err(CloseReason::Malformed(e));
            }
            Ok(StreamFrame::KeepAlive { len, ping }) => {
                took = true;
                buf.advance(len);
                // RFC 5626 §3.5.1: a double-CRLF ping is answered with a
                // single CRLF pong; a lone CRLF is ignored.
                if ping && out.len() < MAX_PENDING_PONGS {
                    out.push_back(Bytes::from_static(b"\r\n"));
                }
            }
            Ok(StreamFrame::Message { len }) => {
                took = true;
                (inner.on_message)(Inbound {
                    data: &buf[..len],
                    from,
                    local,
                });
                buf.advance(len);
            }
        }
    }
}

/// Writes (some of) the first message of `out` (`Ok(true)`; a message
/// written whole leaves `out`), or with `out` empty flushes what was
/// written (`Ok(false)`).
async fn write_out(
    wr: &mut (impl AsyncWrite + Unpin),
    out: &mut VecDeque<Bytes>,
) -> io::Result<bool> {
    let Some(front) = out.front_mut() else {
        wr.flush().await?;
        return Ok(false);
    };
    let n = wr.write(front).await?;
    if n == 0 {
        return Err(io::ErrorKind::WriteZero.into());
    }
    front.advance(n);
    if front.is_empty() {
        out.pop_front();
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Every wait in these tests is bounded by this.
    const WAIT: Duration = Duration::from_secs(5);

    fn msg(n: u32) -> Vec<u8> {
        let body = format!("body {n}");
        format!(
            "OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK{n}\r\nCall-ID: {n}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    fn local() -> SocketAddr {
        "127.0.0.1:0".parse().unwrap()
    }

    /// What the tests see of a received message: its bytes, the peer's
    /// address and the connection.
    type Received = (Bytes, SocketAddr, ConnId);

    /// A callback that queues every message for the test to read.
    fn collect() -> (OnMessage, mpsc::UnboundedReceiver<Received>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let on_message: OnMessage = Arc::new(move |m: Inbound<'_>| {
            let conn = m.from.conn.expect("a TCP message has its connection");
            let _ = tx.send((Bytes::copy_from_slice(m.data), m.from.addr, conn));
        });
        (on_message, rx)
    }

    fn start(opts: TcpOptions) -> (TcpTransport, mpsc::UnboundedReceiver<Received>, SocketAddr) {
        let (on_message, rx) = collect();
        let (t, addr) = TcpTransport::listen(local(), opts, on_message).expect("listen");
        (t, rx, addr)
    }

    /// A transport for sending only.
    fn outgoing(opts: TcpOptions) -> TcpTransport {
        TcpTransport::new(opts, collect().0)
    }

    async fn next(rx: &mut mpsc::UnboundedReceiver<Received>) -> Received {
        tokio::time::timeout(WAIT, rx.recv())
            .await
            .expect("timed out waiting for a message")
            .expect("channel closed")
    }

    /// Nothing more arrives within a short while.
    async fn nothing_more(rx: &mut mpsc::UnboundedReceiver<Received>) {
        if let Ok(m) = tokio::time::timeout(Duration::from_millis(200), rx.recv()).await {
            panic!("unexpected item: {m:?}");
        }
    }

    /// The peer closed the connection (EOF or reset) within `WAIT`.
    async fn assert_closed(client: &mut TcpStream) {
        let mut b = [0u8; 64];
        loop {
            match tokio::time::timeout(WAIT, client.read(&mut b)).await {
                Err(_) => panic!("connection still open"),
                Ok(Ok(0)) | Ok(Err(_)) => return,
                // Bytes the transport sent before closing (none expected
                // here, but they would not mean "open").
                Ok(Ok(_)) => continue,
            }
        }
    }

    async fn connect(addr: SocketAddr) -> TcpStream {
        tokio::time::timeout(WAIT, TcpStream::connect(addr))
            .await
            .expect("connect timed out")
            .expect("connect")
    }

    /// Polls `cond` until true or `WAIT` passes.
    async fn eventually(what: &str, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + WAIT;
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn pipelined_messages_arrive_separately() {
        let (_t, mut rx, addr) = start(TcpOptions::default());
        let mut c = connect(addr).await;
        let mut all = msg(1);
        all.extend(msg(2));
        all.extend(b"\r\n");
        all.extend(msg(3));
        c.write_all(&all).await.unwrap();
        let mut ids = Vec::new();
        for n in 1..=3 {
            let (m, peer, id) = next(&mut rx).await;
            assert_eq!(&m[..], &msg(n)[..]);
            assert_eq!(peer, c.local_addr().unwrap());
            ids.push(id);
        }
        assert!(ids.iter().all(|i| *i == ids[0]));
        nothing_more(&mut rx).await;
    }

    /// Each message says which of our addresses it came in on.
    #[tokio::test]
    async fn messages_carry_the_local_address() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let on_message: OnMessage = Arc::new(move |m: Inbound<'_>| {
            let _ = tx.send((m.from, m.local));
        });
        let (_t, addr) = TcpTransport::listen(local(), TcpOptions::default(), on_message).unwrap();
        let mut c = connect(addr).await;
        c.write_all(&msg(1)).await.unwrap();
        let (from, at) = tokio::time::timeout(WAIT, rx.recv())
            .await
            .expect("timed out waiting for a message")
            .expect("channel closed");
        assert_eq!(at, addr);
        assert_eq!(from.addr, c.local_addr().unwrap());
        assert_eq!(from.transport, super::super::Transport::Tcp);
    }

    #[tokio::test]
    async fn split_message_arrives_whole() {
        let (_t, mut rx, addr) = start(TcpOptions::default());
        let mut c = connect(addr).await;
        let m = msg(7);
        for b in &m {
            c.write_all(std::slice::from_ref(b)).await.unwrap();
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let (got, _, _) = next(&mut rx).await;
        assert_eq!(&got[..], &m[..]);
        nothing_more(&mut rx).await;
    }

    #[tokio::test]
    async fn ping_gets_pong_and_lone_crlf_is_ignored() {
        let (_t, mut rx, addr) = start(TcpOptions::default());
        let mut c = connect(addr).await;
        c.write_all(b"\r\n\r\n").await.unwrap();
        let mut pong = [0u8; 2];
        tokio::time::timeout(WAIT, c.read_exact(&mut pong))
            .await
            .expect("no pong")
            .unwrap();
        assert_eq!(&pong, b"\r\n");
        // A lone CRLF draws nothing, and the message after it arrives.
        let mut m = b"\r\n".to_vec();
        m.extend(msg(1));
        c.write_all(&m).await.unwrap();
        let (got, _, _) = next(&mut rx).await;
        assert_eq!(&got[..], &msg(1)[..]);
        let mut b = [0u8; 8];
        let r = tokio::time::timeout(Duration::from_millis(200), c.read(&mut b)).await;
        assert!(r.is_err(), "unexpected bytes or close: {r:?}");
    }

    #[tokio::test]
    async fn oversized_message_closes_only_its_connection() {
        let opts = TcpOptions {
            max_message: 1024,
            ..TcpOptions::default()
        };
        let (t, mut rx, addr) = start(opts);
        let mut good = connect(addr).await;
        // Content-Length beyond the cap.
        let mut big = connect(addr).await;
        big.write_all(b"INVITE sip:a@b SIP/2.0\r\nContent-Length: 5000\r\n\r\n")
            .await
            .unwrap();
        assert_closed(&mut big).await;
        assert_eq!(t.stats().closed_oversized.load(Ordering::Relaxed), 1);
        // Headers beyond the cap, never terminated.
        let mut long = connect(addr).await;
        let mut h = b"INVITE sip:a@b SIP/2.0\r\n".to_vec();
        while h.len() < 2000 {
            h.extend(b"X-Filler: 0123456789012345678901234567890123456789\r\n");
        }
        // The transport may close before it has read everything.
        let _ = long.write_all(&h).await;
        assert_closed(&mut long).await;
        assert_eq!(t.stats().closed_oversized.load(Ordering::Relaxed), 2);
        // The other connection still works.
        good.write_all(&msg(1)).await.unwrap();
        let (got, peer, _) = next(&mut rx).await;
        assert_eq!(&got[..], &msg(1)[..]);
        assert_eq!(peer, good.local_addr().unwrap());
        nothing_more(&mut rx).await;
    }

    #[tokio::test]
    async fn malformed_message_closes_only_its_connection() {
        let (t, mut rx, addr) = start(TcpOptions::default());
        let mut good = connect(addr).await;
        let mut bad = connect(addr).await;
        bad.write_all(b"INVITE sip:a@b SIP/2.0\r\nContent-Length: abc\r\n\r\n")
            .await
            .unwrap();
        assert_closed(&mut bad).await;
        assert_eq!(t.stats().closed_malformed.load(Ordering::Relaxed), 1);
        good.write_all(&msg(2)).await.unwrap();
        let (got, _, _) = next(&mut rx).await;
        assert_eq!(&got[..], &msg(2)[..]);
        nothing_more(&mut rx).await;
    }

    #[tokio::test]
    async fn send_reuses_one_connection_per_peer() {
        let peer = TcpListener::bind(local()).await.unwrap();
        let to = peer.local_addr().unwrap();
        let t = outgoing(TcpOptions::default());
        let id1 = t.send(to, Bytes::from(msg(1))).await.unwrap();
        let id2 = t.send(to, Bytes::from(msg(2))).await.unwrap();
        assert_eq!(id1, id2);
        let (mut s, _) = tokio::time::timeout(WAIT, peer.accept())
            .await
            .expect("no connection")
            .unwrap();
        let mut want = msg(1);
        want.extend(msg(2));
        let mut got = vec![0u8; want.len()];
        tokio::time::timeout(WAIT, s.read_exact(&mut got))
            .await
            .expect("messages not received")
            .unwrap();
        assert_eq!(got, want);
        let second = tokio::time::timeout(Duration::from_millis(200), peer.accept()).await;
        assert!(second.is_err(), "a second connection was opened");
        assert_eq!(t.connections(), 1);
        assert_eq!(t.stats().connected.load(Ordering::Relaxed), 1);
    }

    /// Concurrent sends to a peer with no connection yet dial once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_sends_open_one_connection() {
        let peer = TcpListener::bind(local()).await.unwrap();
        let to = peer.local_addr().unwrap();
        let t = outgoing(TcpOptions::default());
        let sends: Vec<_> = (1..=4)
            .map(|n| {
                let t = t.clone();
                tokio::spawn(async move { t.send(to, Bytes::from(msg(n))).await })
            })
            .collect();
        let mut ids = Vec::new();
        for s in sends {
            ids.push(
                tokio::time::timeout(WAIT, s)
                    .await
                    .unwrap()
                    .unwrap()
                    .unwrap(),
            );
        }
        assert!(ids.iter().all(|i| *i == ids[0]), "{ids:?}");
        let (mut s, _) = tokio::time::timeout(WAIT, peer.accept())
            .await
            .expect("no connection")
            .unwrap();
        let want: usize = (1..=4).map(|n| msg(n).len()).sum();
        let mut got = vec![0u8; want];
        tokio::time::timeout(WAIT, s.read_exact(&mut got))
            .await
            .expect("messages not received")
            .unwrap();
        let second = tokio::time::timeout(Duration::from_millis(200), peer.accept()).await;
        assert!(second.is_err(), "a second connection was opened");
        assert_eq!(t.stats().connected.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn send_on_answers_on_the_inbound_connection() {
        let (t, mut rx, addr) = start(TcpOptions::default());
        let mut c = connect(addr).await;
        c.write_all(&msg(1)).await.unwrap();
        let (_, peer, id) = next(&mut rx).await;
        let resp = b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n";
        t.send_on(id, Bytes::from_static(resp)).unwrap();
        let mut got = vec![0u8; resp.len()];
        tokio::time::timeout(WAIT, c.read_exact(&mut got))
            .await
            .expect("no response")
            .unwrap();
        assert_eq!(&got[..], &resp[..]);
        // `send` to the same peer reuses the inbound connection.
        assert_eq!(t.send(peer, Bytes::from_static(resp)).await.unwrap(), id);
        // Once the client has gone, the connection is reported closed.
        drop(c);
        eventually("the connection to close", || t.connections() == 0).await;
        assert!(matches!(
            t.send_on(id, Bytes::from_static(resp)),
            Err(TcpError::Closed(i)) if i == id
        ));
    }

    #[tokio::test]
    async fn send_to_a_closed_port_fails_fast() {
        let to = {
            let l = std::net::TcpListener::bind(local()).unwrap();
            l.local_addr().unwrap()
        };
        let t = outgoing(TcpOptions::default());
        let started = Instant::now();
        let r = tokio::time::timeout(WAIT, t.send(to, Bytes::from(msg(1))))
            .await
            .expect("send hung");
        assert!(
            matches!(r, Err(TcpError::Connect(a, _)) if a == to),
            "{r:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(t.stats().connect_failed.load(Ordering::Relaxed), 1);
        assert_eq!(t.connections(), 0);
    }

    #[tokio::test]
    async fn idle_connection_is_closed_and_traffic_keeps_it_open() {
        let opts = TcpOptions {
            idle_timeout: Duration::from_millis(200),
            ..TcpOptions::default()
        };
        let (t, _rx, addr) = start(opts);
        // Pings every 50 ms keep this one open past the timeout.
        let mut busy = connect(addr).await;
        let mut idle = connect(addr).await;
        let started = Instant::now();
        let mut pong = [0u8; 2];
        while started.elapsed() < Duration::from_millis(500) {
            busy.write_all(b"\r\n\r\n").await.unwrap();
            tokio::time::timeout(WAIT, busy.read_exact(&mut pong))
                .await
                .expect("no pong")
                .expect("busy connection closed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_closed(&mut idle).await;
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert_eq!(t.stats().closed_idle.load(Ordering::Relaxed), 1);
        assert_eq!(t.connections(), 1);
        // And the busy one closes too once it stops.
        assert_closed(&mut busy).await;
        assert_eq!(t.stats().closed_idle.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn connection_cap_refuses_the_extra_connection() {
        let opts = TcpOptions {
            max_connections: 2,
            ..TcpOptions::default()
        };
        let (t, mut rx, addr) = start(opts);
        let mut a = connect(addr).await;
        let mut b = connect(addr).await;
        eventually("two accepted", || {
            t.stats().accepted.load(Ordering::Relaxed) == 2
        })
        .await;
        let mut c = connect(addr).await;
        assert_closed(&mut c).await;
        assert_eq!(t.stats().refused_cap.load(Ordering::Relaxed), 1);
        assert_eq!(t.connections(), 2);
        for (n, s) in [(1, &mut a), (2, &mut b)] {
            s.write_all(&msg(n)).await.unwrap();
            let (got, _, _) = next(&mut rx).await;
            assert_eq!(&got[..], &msg(n)[..]);
        }
        // A slot freed is a slot usable again.
        drop(a);
        eventually("one closed", || t.connections() == 1).await;
        let mut d = connect(addr).await;
        d.write_all(&msg(4)).await.unwrap();
        let (got, _, _) = next(&mut rx).await;
        assert_eq!(&got[..], &msg(4)[..]);
    }

    async fn connect_from(ip: &str, addr: SocketAddr) -> TcpStream {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.bind(SocketAddr::new(ip.parse().unwrap(), 0)).unwrap();
        tokio::time::timeout(WAIT, s.connect(addr))
            .await
            .expect("connect timed out")
            .expect("connect")
    }

    #[test]
    fn admit_keeps_reserved_slots_and_caps_each_source() {
        let opts = TcpOptions {
            max_connections: 10,
            reserved: 3,
            max_per_source: 4,
            ..TcpOptions::default()
        };
        assert_eq!(admit(&opts, 0, 0, false), Ok(()));
        assert_eq!(admit(&opts, 6, 3, false), Ok(()));
        assert_eq!(admit(&opts, 6, 4, false), Err(Refused::PerSource));
        // Slots 7..10 are kept: only a privileged source takes them, and
        // it is not capped per source.
        assert_eq!(admit(&opts, 7, 0, false), Err(Refused::Reserved));
        assert_eq!(admit(&opts, 7, 50, true), Ok(()));
        assert_eq!(admit(&opts, 9, 0, true), Ok(()));
        assert_eq!(admit(&opts, 10, 0, true), Err(Refused::Full));
        assert_eq!(admit(&opts, 10, 0, false), Err(Refused::Full));
    }

    #[test]
    fn an_ipv6_source_is_its_64() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(source(ip("192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(source(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(source(ip("2001:db8:1:2:bbbb::9")), ip("2001:db8:1:2::"));
        assert_ne!(source(ip("2001:db8:1:3::1")), ip("2001:db8:1:2::"));
    }

    #[test]
    fn refusals_are_logged_once_per_source_per_interval() {
        let log = RefusalLog::default();
        let t0 = Instant::now();
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        assert_eq!(log.should_log(a, t0), Some(0));
        for _ in 0..1000 {
            assert_eq!(log.should_log(a, t0 + Duration::from_secs(1)), None);
        }
        // Another source has its own line.
        assert_eq!(log.should_log(b, t0 + Duration::from_secs(1)), Some(0));
        // The next line for `a` says how many were not logged.
        assert_eq!(log.should_log(a, t0 + REFUSAL_LOG_INTERVAL), Some(1000));
        assert_eq!(log.should_log(a, t0 + REFUSAL_LOG_INTERVAL), None);
        // Bounded: many sources make it forget the stale ones.
        let later = t0 + REFUSAL_LOG_INTERVAL * 3;
        for n in 0..(REFUSAL_LOG_SOURCES as u32 + 10) {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + n));
            log.should_log(ip, later);
        }
        assert!(log.last.len() <= REFUSAL_LOG_SOURCES, "{}", log.last.len());
    }

    /// A slowloris keeps the idle timer fed a byte at a time; the message
    /// deadline closes it. Whole messages, however slow, do not.
    #[tokio::test]
    async fn a_message_not_whole_in_time_closes_its_connection() {
        let opts = TcpOptions {
            message_timeout: Duration::from_millis(300),
            idle_timeout: Duration::from_secs(30),
            ..TcpOptions::default()
        };
        let (t, mut rx, addr) = start(opts);
        let mut slow = connect(addr).await;
        let mut steady = connect(addr).await;
        let started = Instant::now();
        let m = msg(1);
        let mut closed = false;
        for (i, b) in m.iter().enumerate() {
            if slow.write_all(std::slice::from_ref(b)).await.is_err() {
                closed = true;
                break;
            }
            // Whole messages, one every 100 ms, on the other connection.
            if i % 2 == 0 {
                steady.write_all(&msg(2)).await.unwrap();
                let (got, _, _) = next(&mut rx).await;
                assert_eq!(&got[..], &msg(2)[..]);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            if t.stats().closed_slow.load(Ordering::Relaxed) > 0 {
                break;
            }
        }
        if !closed {
            assert_closed(&mut slow).await;
        }
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert_eq!(t.stats().closed_slow.load(Ordering::Relaxed), 1);
        assert_eq!(t.stats().closed_idle.load(Ordering::Relaxed), 0);
        assert_eq!(t.connections(), 1, "the steady connection stays");
        // No partial message from the slow one reached the proxy.
        steady.write_all(&msg(3)).await.unwrap();
        let (got, _, _) = next(&mut rx).await;
        assert_eq!(&got[..], &msg(3)[..]);
    }

    #[tokio::test]
    async fn one_source_is_capped_and_the_others_still_connect() {
        let opts = TcpOptions {
            max_per_source: 2,
            ..TcpOptions::default()
        };
        let (t, mut rx, addr) = start(opts);
        let src: IpAddr = "127.0.0.2".parse().unwrap();
        let _a = connect_from("127.0.0.2", addr).await;
        let _b = connect_from("127.0.0.2", addr).await;
        eventually("two accepted", || t.connections_from(src) == 2).await;
        let mut c = connect_from("127.0.0.2", addr).await;
        assert_closed(&mut c).await;
        assert_eq!(t.stats().refused_per_source.load(Ordering::Relaxed), 1);
        let mut other = connect_from("127.0.0.3", addr).await;
        other.write_all(&msg(1)).await.unwrap();
        let (got, _, _) = next(&mut rx).await;
        assert_eq!(&got[..], &msg(1)[..]);
        // Closing one frees a slot for that source.
        drop(_a);
        eventually("one closed", || t.connections_from(src) == 1).await;
        let mut d = connect_from("127.0.0.2", addr).await;
        d.write_all(&msg(2)).await.unwrap();
        let (got, _, _) = next(&mut rx).await;
        assert_eq!(&got[..], &msg(2)[..]);
    }

    #[tokio::test]
    async fn full_send_queue_is_an_error_for_that_send() {
        let opts = TcpOptions {
            send_queue: 2,
            ..TcpOptions::default()
        };
        // A peer that accepts and never reads.
        let peer = TcpListener::bind(local()).await.unwrap();
        let to = peer.local_addr().unwrap();
        let t = outgoing(opts);
        let big = Bytes::from(vec![b'x'; 256 * 1024]);
        let mut full = None;
        for _ in 0..200 {
            match t.send(to, big.clone()).await {
                Ok(_) => tokio::task::yield_now().await,
                Err(e) => {
                    full = Some(e);
                    break;
                }
            }
        }
        assert!(
            matches!(full, Some(TcpError::QueueFull(a)) if a == to),
            "{full:?}"
        );
        assert!(t.stats().send_queue_full.load(Ordering::Relaxed) >= 1);
    }
}
