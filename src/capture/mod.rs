//! Packet capture to a Homer / HEP collector (`[capture]`).
//!
//! The transport facade hands every message it receives or sends to
//! [`Capture::record`], which copies it into a bounded queue without
//! waiting (a full queue drops the message and counts it). One task
//! ([`Sender::run`]) drains the queue: it reads the Call-ID, applies
//! `what` ([`filter`]), encodes HEP v3 ([`hep`]) and sends one datagram
//! per message over UDP, or a stream of packets over TCP, reconnecting
//! with backoff. Nothing here is on the call path but the copy.
//!
//! - `hep`: the HEP v3 encoder (sans-I/O).
//! - `filter`: `what = "all" | "calls" | "failures"` (sans-I/O).

pub mod filter;
pub mod hep;

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use filter::What;
pub use hep::IpProto;

/// Messages waiting for the capture task at most; beyond, new ones are
/// dropped (and counted) rather than slow a call.
pub const QUEUE: usize = 16_384;

/// Reconnect backoff to a TCP collector: from the first, doubling, to
/// the last.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));

/// How packets reach the collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CollectorTransport {
    Udp,
    Tcp,
}

/// `[capture] hep`: `udp:HOST:PORT` or `tcp:HOST:PORT` (an IPv6 address in
/// brackets). A host name is resolved when the capture task starts (and
/// again at each TCP reconnect).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct Collector {
    pub transport: CollectorTransport,
    pub host: String,
    pub port: u16,
}

impl TryFrom<String> for Collector {
    type Error = String;

    fn try_from(text: String) -> Result<Collector, String> {
        let usage = || {
            format!(
                "{text:?} is not a HEP collector; write \"udp:HOST:PORT\" or \"tcp:HOST:PORT\" \
                 (e.g. \"udp:10.0.0.9:9060\")"
            )
        };
        let (proto, rest) = text.split_once(':').ok_or_else(usage)?;
        let transport = match proto.to_ascii_lowercase().as_str() {
            "udp" => CollectorTransport::Udp,
            "tcp" => CollectorTransport::Tcp,
            _ => return Err(usage()),
        };
        let (host, port) = rest.rsplit_once(':').ok_or_else(usage)?;
        let port: u16 = port.parse().ok().filter(|p| *p != 0).ok_or_else(usage)?;
        let bracketed = host.starts_with('[') && host.ends_with(']');
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty()
            || (bracketed != host.contains(':'))
            || host.chars().any(|c| c.is_whitespace() || c == '/')
        {
            return Err(usage());
        }
        Ok(Collector {
            transport,
            host: host.to_owned(),
            port,
        })
    }
}

impl fmt::Display for Collector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proto = match self.transport {
            CollectorTransport::Udp => "udp",
            CollectorTransport::Tcp => "tcp",
        };
        if self.host.contains(':') {
            write!(f, "{proto}:[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{proto}:{}:{}", self.host, self.port)
        }
    }
}

/// What the capture task is told (from `[capture]`).
#[derive(Debug, Clone)]
pub struct Settings {
    pub collector: Collector,
    pub capture_id: u32,
    pub auth_key: Option<Vec<u8>>,
    pub what: What,
}

/// The capture's counters (read into the metrics at scrape time).
#[derive(Debug, Default)]
pub struct CaptureStats {
    /// HEP packets handed to the collector's socket.
    pub sent: AtomicU64,
    /// Dropped: the queue was full.
    pub dropped_queue: AtomicU64,
    /// Dropped: the collector could not be reached (not connected, a send
    /// error).
    pub dropped_collector: AtomicU64,
    /// Dropped: too large for one HEP packet.
    pub dropped_too_large: AtomicU64,
}

/// One message as the transports saw it.
#[derive(Debug)]
pub struct Record {
    pub time: SystemTime,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub proto: IpProto,
    pub data: Bytes,
}

/// The call path's end: cheap to clone, never waits.
#[derive(Debug, Clone)]
pub struct Capture {
    queue: mpsc::Sender<Record>,
    stats: Arc<CaptureStats>,
}

impl Capture {
    /// The handle and the task that sends what it records (to be run by
    /// whoever owns the runtime).
    pub fn new(settings: Settings) -> (Capture, Sender) {
        let (queue, rx) = mpsc::channel(QUEUE);
        let stats = Arc::new(CaptureStats::default());
        let sender = Sender {
            rx,
            stats: stats.clone(),
            filter: filter::Filter::new(settings.what, filter::Limits::default()),
            settings,
            local_source: |_| None,
        };
        (Capture { queue, stats }, sender)
    }

    /// Queues one message received or sent, stamped now; a full queue
    /// drops it (counted). Copies only when there is room.
    pub fn record(&self, data: &[u8], src: SocketAddr, dst: SocketAddr, proto: IpProto) {
        match self.queue.try_reserve() {
            Ok(slot) => slot.send(Record {
                time: SystemTime::now(),
                src,
                dst,
                proto,
                data: Bytes::copy_from_slice(data),
            }),
            Err(_) => {
                self.stats.dropped_queue.fetch_add(1, Relaxed);
            }
        }
    }

    pub fn stats(&self) -> &CaptureStats {
        &self.stats
    }
}

/// The capture task: filter, encode, send (see the module doc).
pub struct Sender {
    rx: mpsc::Receiver<Record>,
    stats: Arc<CaptureStats>,
    filter: filter::Filter<Record>,
    settings: Settings,
    /// The source address the kernel routes from toward a peer, for
    /// messages on a wildcard socket (set by the transports).
    local_source: fn(SocketAddr) -> Option<IpAddr>,
}

/// Where packets go now.
enum Link {
    Udp(tokio::net::UdpSocket),
    Tcp(tokio::net::TcpStream),
}

impl Sender {
    /// How to learn our real address on a wildcard socket.
    pub fn with_local_source(mut self, f: fn(SocketAddr) -> Option<IpAddr>) -> Sender {
        self.local_source = f;
        self
    }

    /// Sends until `cancel` fires (or every [`Capture`] is gone).
    pub async fn run(mut self, cancel: CancellationToken) {
        let mut link: Option<Link> = None;
        let mut backoff = BACKOFF.0;
        let mut retry_at = tokio::time::Instant::now();
        let mut batch = Vec::new();
        let mut pass = Vec::new();
        let mut buf = Vec::new();
        let mut sources: std::collections::HashMap<IpAddr, IpAddr> = Default::default();
        loop {
            let n = tokio::select! {
                _ = cancel.cancelled() => return,
                n = self.rx.recv_many(&mut batch, 256) => n,
            };
            if n == 0 {
                return;
            }
            let now = std::time::Instant::now();
            for r in batch.drain(..) {
                let size = r.data.len();
                let data = r.data.clone();
                let facts = facts(&data);
                self.filter.offer(now, facts, r, size, &mut pass);
            }
            if pass.is_empty() {
                continue;
            }
            if link.is_none() && tokio::time::Instant::now() >= retry_at {
                match self.connect().await {
                    Ok(l) => {
                        link = Some(l);
                        backoff = BACKOFF.0;
                    }
                    Err(e) => {
                        tracing::warn!(
                            "capture: cannot reach the HEP collector {}: {e}; retrying in {backoff:?}",
                            self.settings.collector
                        );
                        retry_at = tokio::time::Instant::now() + backoff;
                        backoff = (backoff * 2).min(BACKOFF.1);
                    }
                }
            }
            let Some(l) = &mut link else {
                self.stats
                    .dropped_collector
                    .fetch_add(pass.len() as u64, Relaxed);
                pass.clear();
                continue;
            };
            buf.clear();
            let mut packets = 0u64;
            for mut r in pass.drain(..) {
                fill_wildcard(&mut r, &mut sources, self.local_source);
                let start = buf.len();
                if self.encode(&r, &mut buf).is_err() {
                    self.stats.dropped_too_large.fetch_add(1, Relaxed);
                    continue;
                }
                if let Link::Udp(s) = l {
                    // One datagram per message.
                    let r = s.send(&buf[start..]).await;
                    buf.truncate(start);
                    match r {
                        Ok(_) => {
                            self.stats.sent.fetch_add(1, Relaxed);
                        }
                        Err(e) => {
                            tracing::debug!("capture: send to the collector: {e}");
                            self.stats.dropped_collector.fetch_add(1, Relaxed);
                        }
                    }
                } else {
                    packets += 1;
                }
            }
            if let Link::Tcp(s) = l {
                if buf.is_empty() {
                    continue;
                }
                match tokio::select! {
                    _ = cancel.cancelled() => return,
                    r = s.write_all(&buf) => r,
                } {
                    Ok(()) => {
                        self.stats.sent.fetch_add(packets, Relaxed);
                    }
                    Err(e) => {
                        tracing::warn!(
                            "capture: the HEP collector {} connection failed: {e}; reconnecting",
                            self.settings.collector
                        );
                        self.stats.dropped_collector.fetch_add(packets, Relaxed);
                        link = None;
                        retry_at = tokio::time::Instant::now() + backoff;
                        backoff = (backoff * 2).min(BACKOFF.1);
                    }
                }
            }
        }
    }

    async fn connect(&self) -> std::io::Result<Link> {
        let c = &self.settings.collector;
        let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no address");
        for addr in tokio::net::lookup_host((c.host.as_str(), c.port)).await? {
            let r = match c.transport {
                CollectorTransport::Udp => {
                    let any: SocketAddr = if addr.is_ipv4() {
                        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
                    } else {
                        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
                    };
                    match tokio::net::UdpSocket::bind(any).await {
                        Ok(s) => s.connect(addr).await.map(|()| Link::Udp(s)),
                        Err(e) => Err(e),
                    }
                }
                CollectorTransport::Tcp => {
                    match tokio::time::timeout(BACKOFF.1, tokio::net::TcpStream::connect(addr))
                        .await
                    {
                        Ok(Ok(s)) => {
                            let _ = s.set_nodelay(true);
                            Ok(Link::Tcp(s))
                        }
                        Ok(Err(e)) => Err(e),
                        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
                    }
                }
            };
            match r {
                Ok(l) => {
                    tracing::info!("capture: sending HEP to {c} ({addr})");
                    return Ok(l);
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn encode(&self, r: &Record, out: &mut Vec<u8>) -> Result<(), hep::TooLarge> {
        let since = r
            .time
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let call_id = crate::sip::Message::parse(&r.data)
            .ok()
            .and_then(|m| m.call_id().ok());
        hep::encode(
            &hep::Packet {
                src: r.src,
                dst: r.dst,
                proto: r.proto,
                secs: u32::try_from(since.as_secs()).unwrap_or(u32::MAX),
                micros: since.subsec_micros(),
                capture_id: self.settings.capture_id,
                auth_key: self.settings.auth_key.as_deref(),
                correlation_id: call_id,
                payload: &r.data,
            },
            out,
        )
    }
}

/// A wildcard local address (`0.0.0.0`, `::`) made the one the kernel
/// routes from toward the peer, as the peer saw it (remembered per peer
/// address, a bounded few).
fn fill_wildcard(
    r: &mut Record,
    known: &mut std::collections::HashMap<IpAddr, IpAddr>,
    lookup: fn(SocketAddr) -> Option<IpAddr>,
) {
    let mut fix = |ours: &mut SocketAddr, peer: SocketAddr| {
        if !ours.ip().is_unspecified() {
            return;
        }
        let ip = match known.get(&peer.ip()) {
            Some(ip) => Some(*ip),
            None => {
                let ip = lookup(peer);
                if let Some(ip) = ip {
                    if known.len() >= 4096 {
                        known.clear();
                    }
                    known.insert(peer.ip(), ip);
                }
                ip
            }
        };
        if let Some(ip) = ip {
            ours.set_ip(ip);
        }
    };
    let (src, dst) = (r.src, r.dst);
    fix(&mut r.src, dst);
    fix(&mut r.dst, src);
}

/// The call facts of a message, if it reads as SIP.
fn facts(data: &[u8]) -> Option<filter::Facts<'_>> {
    let m = crate::sip::Message::parse(data).ok()?;
    Some(filter::Facts {
        call_id: m.call_id().ok()?,
        cseq_method: m.cseq().ok()?.method,
        status: m.status(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collector_strings() {
        let c = |s: &str| Collector::try_from(s.to_owned());
        assert_eq!(
            c("udp:10.0.0.9:9060").unwrap(),
            Collector {
                transport: CollectorTransport::Udp,
                host: "10.0.0.9".into(),
                port: 9060
            }
        );
        let t = c("TCP:[2001:db8::9]:9061").unwrap();
        assert_eq!(
            (t.transport, t.host.as_str(), t.port),
            (CollectorTransport::Tcp, "2001:db8::9", 9061)
        );
        assert_eq!(t.to_string(), "tcp:[2001:db8::9]:9061");
        assert_eq!(c("udp:homer.example:9060").unwrap().host, "homer.example");
        for bad in [
            "10.0.0.9:9060",
            "sctp:10.0.0.9:9060",
            "udp:10.0.0.9",
            "udp:10.0.0.9:0",
            "udp:10.0.0.9:70000",
            "udp::9060",
            "udp:2001:db8::9:9060",
            "udp:a b:1",
        ] {
            assert!(c(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let (cap, _sender) = Capture::new(Settings {
            collector: Collector::try_from("udp:127.0.0.1:9".to_owned()).unwrap(),
            capture_id: 1,
            auth_key: None,
            what: What::All,
        });
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        for _ in 0..QUEUE + 5 {
            cap.record(b"x", a, a, IpProto::Udp);
        }
        assert_eq!(cap.stats().dropped_queue.load(Relaxed), 5);
    }

    #[test]
    fn wildcard_addresses_take_the_routed_source() {
        let mut r = Record {
            time: SystemTime::now(),
            src: "0.0.0.0:5060".parse().unwrap(),
            dst: "192.0.2.7:5080".parse().unwrap(),
            proto: IpProto::Udp,
            data: Bytes::new(),
        };
        let mut known = Default::default();
        fill_wildcard(&mut r, &mut known, |_| Some([10, 0, 0, 1].into()));
        assert_eq!(r.src, "10.0.0.1:5060".parse().unwrap());
        assert_eq!(r.dst, "192.0.2.7:5080".parse().unwrap());
    }
}
