//! SIP over TCP (RFC 3261 §18): listeners, outgoing connections, one
//! connection per peer, stream framing with [`frame_stream`], RFC 5626
//! §3.5.1 CRLF keep-alives, idle timeout and a connection cap.
//!
//! One task per connection does both directions: it reads and frames
//! inbound bytes, and drains that connection's bounded send queue. Nothing
//! is spawned per message. A send never waits: a full queue (a stalled
//! peer) is an error for that send only, so one slow peer cannot hold up
//! the proxy or other connections.
//!
//! Received messages go, whole and unparsed, through one bounded channel
//! the proxy reads: `(bytes, peer, ConnId)`. Responses go back with
//! [`TcpTransport::send_on`] on the connection the request came in on
//! (RFC 3261 §18.2.2).

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use dashmap::DashMap;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::sip::{frame_stream, SipError, StreamFrame, DEFAULT_MAX_MESSAGE};

/// One received message: the whole message's bytes (framed, not parsed),
/// the peer's address and the connection it came in on.
pub type Inbound = (Bytes, SocketAddr, ConnId);

/// Identifies one TCP connection for its lifetime; never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(u64);

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
    /// Messages queued per connection before a send fails.
    pub send_queue: usize,
    /// Capacity of the inbound channel to the proxy. When full, readers
    /// stop reading (TCP back-pressure) rather than drop.
    pub inbound_queue: usize,
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
            send_queue: 256,
            inbound_queue: 4096,
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
    /// Outgoing connections established.
    pub connected: AtomicU64,
    /// Connections closed on a message whose framing was invalid.
    pub closed_malformed: AtomicU64,
    /// Connections closed on a message beyond `max_message`.
    pub closed_oversized: AtomicU64,
    /// Connections closed by the idle timeout.
    pub closed_idle: AtomicU64,
    /// Sends refused because the connection's queue was full.
    pub send_queue_full: AtomicU64,
    /// Outgoing connects that failed or timed out.
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
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
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
    socket.listen(opts.backlog)?;
    Ok(socket.into())
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
    queue: mpsc::Sender<Bytes>,
}

struct Inner {
    opts: TcpOptions,
    stats: TcpStats,
    by_id: DashMap<ConnId, Conn>,
    /// One connection per peer, reused for outgoing requests. An inbound
    /// connection is reused too: it reaches the same peer.
    by_peer: DashMap<SocketAddr, ConnId>,
    /// Serialises connects to one peer so two concurrent sends open one
    /// connection, not two.
    dialing: DashMap<SocketAddr, Arc<tokio::sync::Mutex<()>>>,
    open: AtomicUsize,
    next_id: AtomicU64,
    inbound: mpsc::Sender<Inbound>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl TcpTransport {
    /// A transport with no listener yet (outgoing only until
    /// [`serve`](Self::serve)), and the receiver of inbound messages.
    pub fn new(opts: TcpOptions) -> (TcpTransport, mpsc::Receiver<Inbound>) {
        let (tx, rx) = mpsc::channel(opts.inbound_queue.max(1));
        let inner = Inner {
            opts,
            stats: TcpStats::default(),
            by_id: DashMap::new(),
            by_peer: DashMap::new(),
            dialing: DashMap::new(),
            open: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            inbound: tx,
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
        };
        (
            TcpTransport {
                inner: Arc::new(inner),
            },
            rx,
        )
    }

    /// Binds `addr` and starts accepting: [`new`](Self::new) +
    /// [`bind_tcp`] + [`serve`](Self::serve). Must run inside a tokio
    /// runtime.
    pub fn listen(
        addr: SocketAddr,
        opts: TcpOptions,
    ) -> io::Result<(TcpTransport, mpsc::Receiver<Inbound>, SocketAddr)> {
        let (transport, rx) = TcpTransport::new(opts);
        let listener = bind_tcp(addr, &opts)?;
        let local = transport.serve(listener)?;
        Ok((transport, rx, local))
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

    /// The connection to `peer`, if one is open.
    pub fn conn_to(&self, peer: SocketAddr) -> Option<ConnId> {
        self.inner.by_peer.get(&peer).map(|e| *e)
    }

    /// Queues `msg` for `to`, on the open connection to it or a new one.
    /// Waits only for a connect (bounded by `connect_timeout`).
    pub async fn send(&self, to: SocketAddr, msg: Bytes) -> Result<ConnId, TcpError> {
        if self.inner.shutdown.is_cancelled() {
            return Err(TcpError::Shutdown);
        }
        if let Some(id) = self.conn_to(to) {
            match self.send_on(id, msg.clone()) {
                // It closed under us: drop the stale entry and dial anew.
                Err(TcpError::Closed(_)) => {
                    self.inner.by_peer.remove_if(&to, |_, v| *v == id);
                }
                other => return other.map(|()| id),
            }
        }
        let lock = self.inner.dialing.entry(to).or_default().clone();
        let _guard = lock.lock().await;
        // Someone else may have connected while we waited for the lock.
        if let Some(id) = self.conn_to(to) {
            if let Ok(()) = self.send_on(id, msg.clone()) {
                return Ok(id);
            }
        }
        let result = self.connect(to).await;
        self.inner.dialing.remove(&to);
        let id = result?;
        self.send_on(id, msg).map(|()| id)
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

    async fn connect(&self, to: SocketAddr) -> Result<ConnId, TcpError> {
        let inner = &self.inner;
        let stream =
            match tokio::time::timeout(inner.opts.connect_timeout, TcpStream::connect(to)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    TcpStats::inc(&inner.stats.connect_failed);
                    tracing::debug!("tcp:{to}: connect failed: {e}");
                    return Err(TcpError::Connect(to, e));
                }
                Err(_) => {
                    TcpStats::inc(&inner.stats.connect_failed);
                    tracing::debug!("tcp:{to}: connect timed out");
                    return Err(TcpError::ConnectTimeout(to));
                }
            };
        TcpStats::inc(&inner.stats.connected);
        inner.open.fetch_add(1, Ordering::Relaxed);
        Ok(start_conn(inner, stream, to))
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
        let open = inner.open.fetch_add(1, Ordering::Relaxed);
        if open >= inner.opts.max_connections {
            inner.open.fetch_sub(1, Ordering::Relaxed);
            TcpStats::inc(&inner.stats.refused_cap);
            tracing::warn!(
                "tcp:{local}: connection from {peer} refused: {} connections open (max_connections)",
                open
            );
            drop(stream);
            continue;
        }
        TcpStats::inc(&inner.stats.accepted);
        start_conn(&inner, stream, peer);
    }
}

/// Registers a connection (already counted in `open`) and spawns its task.
fn start_conn(inner: &Arc<Inner>, stream: TcpStream, peer: SocketAddr) -> ConnId {
    // SIP messages are written whole; Nagle would only delay pipelined
    // responses.
    let _ = stream.set_nodelay(true);
    let id = ConnId(inner.next_id.fetch_add(1, Ordering::Relaxed));
    let (tx, rx) = mpsc::channel(inner.opts.send_queue.max(1));
    inner.by_id.insert(id, Conn { peer, queue: tx });
    inner.by_peer.insert(peer, id);
    let task_inner = inner.clone();
    inner.tasks.spawn(async move {
        let reason = run_conn(&task_inner, &stream, peer, id, rx).await;
        tracing::debug!("tcp:{peer}: {id} closed: {reason}");
        task_inner.by_id.remove(&id);
        task_inner.by_peer.remove_if(&peer, |_, v| *v == id);
        task_inner.open.fetch_sub(1, Ordering::Relaxed);
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
/// Largest single read.
const READ_CHUNK: usize = 16 * 1024;
/// Messages taken off the send queue per wake-up.
const WRITE_BATCH: usize = 16;

/// The connection's life: read and frame, write the queue, idle timeout.
async fn run_conn(
    inner: &Inner,
    stream: &TcpStream,
    peer: SocketAddr,
    id: ConnId,
    mut queue: mpsc::Receiver<Bytes>,
) -> CloseReason {
    let max = inner.opts.max_message.max(1);
    let idle = inner.opts.idle_timeout;
    let mut buf = BytesMut::with_capacity(READ_CHUNK.min(max));
    let mut out: VecDeque<Bytes> = VecDeque::new();
    let mut last_activity = Instant::now();
    let idle_sleep = tokio::time::sleep_until(last_activity + idle);
    tokio::pin!(idle_sleep);
    loop {
        tokio::select! {
            _ = inner.shutdown.cancelled() => return CloseReason::Shutdown,
            () = &mut idle_sleep => {
                if last_activity.elapsed() >= idle {
                    TcpStats::inc(&inner.stats.closed_idle);
                    return CloseReason::Idle;
                }
                idle_sleep.as_mut().reset(last_activity + idle);
            }
            r = stream.readable() => {
                if let Err(e) = r {
                    return e.into();
                }
                // After framing, fewer than `max` bytes remain buffered
                // (a full frame is taken off), so there is always room.
                let len = buf.len();
                let room = READ_CHUNK.min(max.saturating_sub(len)).max(1);
                buf.resize(len + room, 0);
                let n = match stream.try_read(&mut buf[len..]) {
                    Ok(0) => return CloseReason::Eof,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                    Err(e) => {
                        buf.truncate(len);
                        return e.into();
                    }
                };
                buf.truncate(len + n);
                if n == 0 {
                    continue;
                }
                last_activity = Instant::now();
                idle_sleep.as_mut().reset(last_activity + idle);
                if let Err(reason) = deliver(inner, &mut buf, max, peer, id, &mut out).await {
                    return reason;
                }
                if !out.is_empty() {
                    if let Err(e) = write_some(stream, &mut out) {
                        return e.into();
                    }
                }
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
                match write_some(stream, &mut out) {
                    Ok(0) => {}
                    Ok(_) => {
                        last_activity = Instant::now();
                        idle_sleep.as_mut().reset(last_activity + idle);
                    }
                    Err(e) => return e.into(),
                }
            }
            r = stream.writable(), if !out.is_empty() => {
                if let Err(e) = r {
                    return e.into();
                }
                match write_some(stream, &mut out) {
                    Ok(0) => {}
                    Ok(_) => {
                        last_activity = Instant::now();
                        idle_sleep.as_mut().reset(last_activity + idle);
                    }
                    Err(e) => return e.into(),
                }
            }
        }
    }
}

/// Takes every whole frame off the front of `buf`: messages go to the
/// proxy, pings get a pong queued in `out`.
async fn deliver(
    inner: &Inner,
    buf: &mut BytesMut,
    max: usize,
    peer: SocketAddr,
    id: ConnId,
    out: &mut VecDeque<Bytes>,
) -> Result<(), CloseReason> {
    loop {
        match frame_stream(buf, max) {
            Err(SipError::Incomplete) => return Ok(()),
            Err(SipError::TooLarge) => {
                TcpStats::inc(&inner.stats.closed_oversized);
                tracing::info!("tcp:{peer}: {id}: message over {max} bytes, closing");
                return Err(CloseReason::Oversized);
            }
            Err(e) => {
                TcpStats::inc(&inner.stats.closed_malformed);
                tracing::info!("tcp:{peer}: {id}: {e}, closing");
                return Err(CloseReason::Malformed(e));
            }
            Ok(StreamFrame::KeepAlive { len, ping }) => {
                buf.advance(len);
                // RFC 5626 §3.5.1: a double-CRLF ping is answered with a
                // single CRLF pong; a lone CRLF is ignored.
                if ping && out.len() < MAX_PENDING_PONGS {
                    out.push_back(Bytes::from_static(b"\r\n"));
                }
            }
            Ok(StreamFrame::Message { len }) => {
                let msg = buf.split_to(len).freeze();
                // Back-pressure: while the proxy is behind, this
                // connection stops reading rather than dropping.
                tokio::select! {
                    r = inner.inbound.send((msg, peer, id)) => {
                        if r.is_err() {
                            return Err(CloseReason::Shutdown);
                        }
                    }
                    _ = inner.shutdown.cancelled() => return Err(CloseReason::Shutdown),
                }
            }
        }
    }
}

/// Writes as much of `out` as the socket takes now; returns the bytes
/// written (0 when it would block).
fn write_some(stream: &TcpStream, out: &mut VecDeque<Bytes>) -> io::Result<usize> {
    let mut written = 0;
    while let Some(front) = out.front_mut() {
        match stream.try_write(front) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                written += n;
                front.advance(n);
                if front.is_empty() {
                    out.pop_front();
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    Ok(written)
}
