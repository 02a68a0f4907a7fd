//! Shared harness for the in-process proxy tests: the real proxy on
//! 127.0.0.1 port 0, a fake trunk and fake FreeSWITCH nodes as plain UDP
//! sockets, raw SIP bytes in and out (mini-redis `tests/server.rs` style).
//!
//! - [`Harness::start`]: binds the proxy and the peers, writes the TOML
//!   config, runs the proxy until the harness is dropped.
//! - [`Peer`]: a fake trunk or node; every receive is bounded by [`WAIT`]
//!   (or a given duration) and panics with what was expected.
//! - [`TcpPeer`]: a fake node listening on TCP, or a fake trunk connected
//!   to the proxy's TCP listener; messages framed off the stream with
//!   [`sipedge::sip::frame_stream`], the same API as [`Peer`].
//! - [`Received`]: one datagram or framed message, read with
//!   [`sipedge::sip::Message::parse`].
//! - [`Dialog`]: one side of a dialog, building the requests that side sends
//!   (initial INVITE, CANCEL, ACK, in-dialog requests) from templates;
//!   [`reply`] builds a response to a received request.
//!
//! Nothing here sleeps for a fixed time except [`Inbox::expect_nothing`],
//! which is how "this must not arrive" is checked; [`eventually`] polls a
//! condition up to a deadline.
#![allow(dead_code)] // each test file uses a part of it

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sipedge::proxy::Proxy;
use sipedge::sip::{frame_stream, HeaderName, Message, NameAddr, SipError, StartLine, StreamFrame};
use sipedge::transport::Transport;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpSocket, UdpSocket};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The longest any test waits for one packet that must arrive: generous,
/// a busy 2-core machine running several test binaries can stall a test
/// task for a second; a passing test never waits this long.
pub const WAIT: Duration = Duration::from_secs(5);

/// The longest [`eventually`] waits for a state to be reached.
pub const SETTLE: Duration = Duration::from_secs(10);

/// Waits until `cond` holds (a metric, a state, a table size), polling
/// every few ms; panics naming `what` after [`SETTLE`]. For effects the
/// test cannot receive as a message, instead of sleeping a fixed time.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + SETTLE;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within {SETTLE:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// How long a test listens for a packet that must not arrive. Longer than
/// the proxy's reaction to anything the test just did (it reacts within
/// microseconds on loopback), shorter than any timer the test relies on.
pub const QUIET: Duration = Duration::from_millis(400);

/// A plain audio offer (the trunk's first INVITE).
pub const SDP_AUDIO: &str = "v=0\r\n\
o=trunk 1 1 IN IP4 192.0.2.10\r\n\
s=-\r\n\
c=IN IP4 192.0.2.10\r\n\
t=0 0\r\n\
m=audio 40000 RTP/AVP 0 8 101\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=sendrecv\r\n";

/// The T.38 re-INVITE offer.
pub const SDP_T38: &str = "v=0\r\n\
o=trunk 1 2 IN IP4 192.0.2.10\r\n\
s=-\r\n\
c=IN IP4 192.0.2.10\r\n\
t=0 0\r\n\
m=image 40002 udptl t38\r\n\
a=T38FaxVersion:0\r\n\
a=T38MaxBitRate:14400\r\n\
a=T38FaxRateManagement:transferredTCF\r\n\
a=T38FaxMaxDatagram:400\r\n\
a=T38FaxUdpEC:t38UDPRedundancy\r\n";

/// The node's answer (any SDP will do for the proxy).
pub const SDP_NODE: &str = "v=0\r\n\
o=FreeSWITCH 1 1 IN IP4 198.51.100.20\r\n\
s=FreeSWITCH\r\n\
c=IN IP4 198.51.100.20\r\n\
t=0 0\r\n\
m=audio 20000 RTP/AVP 0\r\n\
a=rtpmap:0 PCMU/8000\r\n";

/// Unique tokens for Call-IDs, tags and branches across the tests of one
/// binary (they run in parallel, each with its own proxy).
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{:x}x{n}", std::process::id())
}

/// A fresh RFC 3261 branch.
pub fn branch() -> String {
    unique("z9hG4bKtest")
}

/// `RUST_LOG=sipedge=debug cargo test ...` shows the proxy's logs.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

// ---------------------------------------------------------------------------
// The proxy
// ---------------------------------------------------------------------------

/// How to start the proxy.
#[derive(Debug, Clone)]
pub struct Options {
    /// Number of fake nodes (destinations, in this order).
    pub nodes: usize,
    /// `priority` with equal priorities tries node 0 first, then node 1...:
    /// deterministic, so the tests know which node gets the INVITE.
    pub algorithm: &'static str,
    /// 5 s by default: a busy machine can hold a fake node's answer past a
    /// short timer and fail the call over behind the test's back. Tests
    /// about a node's silence set it short.
    pub fr_timeout: &'static str,
    pub fr_inv_timeout: &'static str,
    /// Also listen on this address (port 0), as a second socket.
    pub extra_socket: Option<&'static str>,
    /// More config, appended as is (e.g. a `[probe]` section).
    pub extra_toml: &'static str,
    /// The fake nodes answer OPTIONS probes with 200 while the test reads
    /// from them; off, the test sees the probes itself.
    pub nodes_answer_probes: bool,
    /// Everything (proxy, trunk, nodes) on `::1` instead of 127.0.0.1.
    pub ipv6: bool,
    /// The proxy also listens on TCP, on the same port number as its UDP
    /// socket (what it advertises for both), via `[listen] tcp`.
    pub tcp: bool,
    /// How each node (by index) is reached; nodes beyond the list are
    /// [`NodeKind::Udp`].
    pub node_kinds: Vec<NodeKind>,
    /// More `[listen]` settings, as is (e.g. `udp_mtu = 1000`).
    pub listen_extra: &'static str,
    /// More keys of node `i`'s `[[dispatcher.destination]]`, as is (e.g.
    /// `advertised = ["203.0.113.10"]`); nodes beyond the list get none.
    pub destination_extra: Vec<&'static str>,
    /// Health probing runs; off, it is paused before the proxy starts, so
    /// no probe touches a node (or opens a TCP connection) behind the
    /// test's back.
    pub probing: bool,
}

/// How the proxy reaches a fake node. Every node has a UDP [`Peer`] (in
/// [`Harness::nodes`]); the TCP kinds also have a [`TcpPeer`] listening on
/// the same port number (in [`Harness::tcp_nodes`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NodeKind {
    /// `uri = "sip:ADDR"`.
    #[default]
    Udp,
    /// `uri = "sip:ADDR;transport=tcp"`: every request over TCP. Its UDP
    /// peer should receive nothing.
    Tcp,
    /// `uri = "sip:ADDR"` and `tcp = true`: UDP, and TCP for requests over
    /// `listen.udp_mtu` (RFC 3261 §18.1.1).
    Dual,
    /// `uri = "sip:ADDR;transport=tcp"` with nothing listening on the TCP
    /// port: every connect is refused.
    TcpRefused,
}

impl NodeKind {
    fn has_tcp_port(self) -> bool {
        self != NodeKind::Udp
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            nodes: 2,
            algorithm: "priority",
            fr_timeout: "5s",
            fr_inv_timeout: "120s",
            extra_socket: None,
            extra_toml: "",
            nodes_answer_probes: true,
            ipv6: false,
            tcp: false,
            node_kinds: Vec::new(),
            listen_extra: "",
            destination_extra: Vec::new(),
            probing: true,
        }
    }
}

/// The config text for a proxy on `listen` with these destinations.
pub fn config_toml(listen: SocketAddr, nodes: &[SocketAddr], opts: &Options) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "[listen]\nudp = [\"{listen}\"]\nadvertise = \"{listen}\""
    );
    if opts.tcp {
        // Same port number as UDP (separate port spaces).
        let _ = writeln!(t, "tcp = [\"{listen}\"]");
    }
    if !opts.listen_extra.is_empty() {
        let _ = writeln!(t, "{}", opts.listen_extra);
    }
    let _ = writeln!(t, "\n[dispatcher]\nalgorithm = \"{}\"\n", opts.algorithm);
    for (i, n) in nodes.iter().enumerate() {
        let kind = opts.node_kinds.get(i).copied().unwrap_or_default();
        let dest = match kind {
            NodeKind::Udp => format!("uri = \"sip:{n}\""),
            NodeKind::Tcp | NodeKind::TcpRefused => format!("uri = \"sip:{n};transport=tcp\""),
            NodeKind::Dual => format!("uri = \"sip:{n}\"\ntcp = true"),
        };
        let extra = opts.destination_extra.get(i).copied().unwrap_or_default();
        let _ = writeln!(t, "[[dispatcher.destination]]\n{dest}\n{extra}\n");
    }
    let _ = writeln!(
        t,
        "[failover]\nfr_timeout = \"{}\"\nfr_inv_timeout = \"{}\"\n",
        opts.fr_timeout, opts.fr_inv_timeout
    );
    t.push_str(opts.extra_toml);
    t
}

/// A running proxy with its fake trunk and nodes. Dropping it stops the
/// proxy.
pub struct Harness {
    pub proxy: Arc<Proxy>,
    /// Where the proxy listens (and what it advertises).
    pub addr: SocketAddr,
    /// The second socket, with [`Options::extra_socket`].
    pub extra: Option<SocketAddr>,
    pub trunk: Peer,
    pub nodes: Vec<Peer>,
    /// The proxy's TCP listener, with [`Options::tcp`] (same port as
    /// `addr`).
    pub tcp_addr: Option<SocketAddr>,
    /// Node `i`'s TCP side, for the [`NodeKind`]s that listen on TCP.
    pub tcp_nodes: Vec<Option<TcpPeer>>,
    cancel: CancellationToken,
}

impl Harness {
    /// Binds everything on 127.0.0.1 port 0 and starts the proxy. Call
    /// inside a tokio runtime.
    pub async fn start(opts: Options) -> Harness {
        init_tracing();
        let ip: IpAddr = if opts.ipv6 {
            "::1".parse().unwrap()
        } else {
            "127.0.0.1".parse().unwrap()
        };
        let any = SocketAddr::new(ip, 0);
        let (socket, listener) = bind_proxy(any, opts.tcp);
        let addr = socket.local_addr().unwrap();
        let peer = |name: String| async move {
            if opts.ipv6 {
                Peer::bind_at(&name, any).await.expect("bind a peer on ::1")
            } else {
                Peer::bind(&name).await
            }
        };
        let trunk = peer("trunk".to_owned()).await;
        let mut nodes = Vec::new();
        let mut tcp_nodes = Vec::new();
        for i in 0..opts.nodes {
            let name = format!("node{i}");
            let kind = opts.node_kinds.get(i).copied().unwrap_or_default();
            let (node, tcp) = if kind.has_tcp_port() {
                let (udp, tcp) = bind_dual(&name, ip).await;
                let tcp = (kind != NodeKind::TcpRefused).then(|| {
                    let t = TcpPeer::listen(&name, tcp);
                    if opts.nodes_answer_probes {
                        t.answering_probes()
                    } else {
                        t
                    }
                });
                (udp, tcp)
            } else {
                (peer(name).await, None)
            };
            nodes.push(if opts.nodes_answer_probes {
                node.answering_probes()
            } else {
                node
            });
            tcp_nodes.push(tcp);
        }
        let node_addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
        let text = config_toml(addr, &node_addrs, &opts);
        let cfg = sipedge::config::from_toml(&text, "test")
            .unwrap_or_else(|e| panic!("test config refused: {e}\n{text}"));
        let mut sockets = vec![socket];
        let mut extra = None;
        if let Some(ip) = opts.extra_socket {
            let s = sipedge::transport::bind_udp(
                format!("{ip}:0").parse().unwrap(),
                sipedge::transport::UdpOptions::default(),
            )
            .expect("bind the second proxy socket");
            extra = Some(s.local_addr().unwrap());
            sockets.push(s);
        }
        let proxy =
            Proxy::with_tcp(cfg, sockets, listener.into_iter().collect()).expect("build the proxy");
        let tcp_addr = proxy.tcp_addrs().first().copied();
        if !opts.probing {
            proxy.ping_active(Some(false));
        }
        let cancel = CancellationToken::new();
        tokio::spawn(proxy.clone().run(cancel.clone()));
        Harness {
            proxy,
            addr,
            extra,
            trunk,
            nodes,
            tcp_addr,
            tcp_nodes,
            cancel,
        }
    }

    /// Node `i`'s TCP side; panics for a node without one.
    pub fn tcp_node(&self, i: usize) -> &TcpPeer {
        self.tcp_nodes
            .get(i)
            .and_then(Option::as_ref)
            .unwrap_or_else(|| panic!("node{i} does not listen on TCP"))
    }

    /// A new trunk connection to the proxy's TCP listener, from `from`
    /// (port 0).
    pub async fn tcp_trunk_from(&self, name: &str, from: IpAddr) -> TcpPeer {
        let to = self
            .tcp_addr
            .expect("the proxy listens on TCP (Options::tcp)");
        TcpPeer::connect(name, from, to).await
    }

    /// A trunk-side dialog for a new call to `fax@<proxy>`.
    pub fn trunk_call(&self) -> Dialog {
        let ruri = format!("sip:fax@{}", self.addr);
        Dialog::uac(&self.trunk, &ruri)
    }

    /// An OPTIONS keep-alive from the trunk to the proxy itself
    /// (Request-URI = the proxy's address, no user part). Returns the bytes,
    /// the branch and the Call-ID.
    pub fn keepalive(&self, max_forwards: u8) -> (Vec<u8>, String, String) {
        let (b, cid) = (branch(), unique("ka-"));
        let options = assemble(
            &format!("OPTIONS sip:{} SIP/2.0", self.addr),
            &[
                (
                    "Via",
                    format!("SIP/2.0/UDP {};branch={b};rport", self.trunk.addr),
                ),
                ("Max-Forwards", max_forwards.to_string()),
                (
                    "From",
                    format!("<sip:keepalive@{}>;tag=ka1", self.trunk.addr),
                ),
                ("To", format!("<sip:{}>", self.addr)),
                ("Call-ID", cid.clone()),
                ("CSeq", "7 OPTIONS".to_owned()),
            ],
            None,
        );
        (options, b, cid)
    }

    /// Which node (index) has this address.
    pub fn node_index(&self, addr: SocketAddr) -> usize {
        self.nodes
            .iter()
            .position(|n| n.addr == addr)
            .unwrap_or_else(|| panic!("{addr} is not a fake node"))
    }

    /// Receives the next message on whichever node gets one first
    /// (bounded by [`WAIT`]); returns the node's index and the message.
    pub async fn recv_any_node(&self) -> (usize, Received) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            for (i, n) in self.nodes.iter().enumerate() {
                if let Some(r) = n.recv_within(Duration::from_millis(5)).await {
                    return (i, r);
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no node received anything within {WAIT:?}"
            );
        }
    }

    /// Stops the proxy (as a crash or a restart would); the trunk and the
    /// nodes stay.
    pub fn stop(&self) {
        self.cancel.cancel();
    }

    /// Messages the proxy dropped without an answer, every reason.
    pub fn dropped(&self) -> u64 {
        let m = self.proxy.metrics();
        sipedge::metrics::DropReason::ALL
            .iter()
            .map(|r| m.dropped_count(*r))
            .sum()
    }
}

/// The proxy's UDP socket on `any` and, with `tcp`, its TCP listener on the
/// same port number (retried on another port when that one is taken).
fn bind_proxy(any: SocketAddr, tcp: bool) -> (std::net::UdpSocket, Option<std::net::TcpListener>) {
    let mut last = None;
    for _ in 0..50 {
        let udp = sipedge::transport::bind_udp(any, sipedge::transport::UdpOptions::default())
            .expect("bind the proxy socket");
        if !tcp {
            return (udp, None);
        }
        let at = udp.local_addr().unwrap();
        match sipedge::transport::bind_tcp(at, &sipedge::transport::TcpOptions::default()) {
            Ok(l) => return (udp, Some(l)),
            Err(e) => last = Some(e),
        }
    }
    panic!("no port free on both UDP and TCP: {last:?}");
}

/// A node's UDP peer and a TCP listener on the same port number.
async fn bind_dual(name: &str, ip: IpAddr) -> (Peer, std::net::TcpListener) {
    let mut last = None;
    for _ in 0..50 {
        let l = std::net::TcpListener::bind((ip, 0)).expect("bind a TCP node");
        match Peer::bind_at(name, l.local_addr().unwrap()).await {
            Ok(p) => return (p, l),
            Err(e) => last = Some(e),
        }
    }
    panic!("no port free on both UDP and TCP: {last:?}");
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

// ---------------------------------------------------------------------------
// Peers
// ---------------------------------------------------------------------------

/// A fake trunk or FreeSWITCH node: a plain UDP socket on 127.0.0.1.
pub struct Peer {
    pub name: String,
    pub addr: SocketAddr,
    sock: UdpSocket,
    /// Answer the proxy's own OPTIONS probes (one Via: not a relayed
    /// request) with 200 and keep waiting, so tests do not see them.
    answer_probes: bool,
}

impl Peer {
    pub async fn bind(name: &str) -> Peer {
        let sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind a peer");
        Peer {
            name: name.to_owned(),
            addr: sock.local_addr().unwrap(),
            sock,
            answer_probes: false,
        }
    }

    /// A peer on a given address (e.g. a fixed port that a fixture's Via
    /// names); the bind error when the address is taken.
    pub async fn bind_at(name: &str, addr: SocketAddr) -> std::io::Result<Peer> {
        let sock = UdpSocket::bind(addr).await?;
        Ok(Peer {
            name: name.to_owned(),
            addr: sock.local_addr()?,
            sock,
            answer_probes: false,
        })
    }

    pub fn answering_probes(mut self) -> Peer {
        self.answer_probes = true;
        self
    }

    pub async fn send(&self, data: impl AsRef<[u8]>, to: SocketAddr) {
        self.sock
            .send_to(data.as_ref(), to)
            .await
            .unwrap_or_else(|e| panic!("{} cannot send to {to}: {e}", self.name));
    }

    /// The next message, or `None` after `wait`.
    async fn next_within(&self, wait: Duration) -> Option<Received> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut buf = vec![0u8; 65_535];
        loop {
            let (n, from) = tokio::time::timeout_at(deadline, self.sock.recv_from(&mut buf))
                .await
                .ok()?
                .unwrap_or_else(|e| panic!("{} recv: {e}", self.name));
            let r = Received {
                data: buf[..n].to_vec(),
                from,
            };
            if self.answer_probes && r.is_probe() {
                self.send(reply(&r, 200, "OK", None), from).await;
                continue;
            }
            return Some(r);
        }
    }

    /// Skips other messages until a `method` request arrives; panics after
    /// `within`.
    pub async fn recv_until_request(&self, method: &str, within: Duration) -> Received {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.recv_within(left).await {
                Some(r) if r.method().as_deref() == Some(method) => return r,
                Some(_) => continue,
                None => panic!("{} received no {method} within {within:?}", self.name),
            }
        }
    }
}

/// Receiving, the same for the UDP and the TCP fakes: the next message or
/// one of a kind, bounded by [`WAIT`].
#[allow(async_fn_in_trait)]
pub trait Inbox {
    fn name(&self) -> &str;

    /// The next message within `wait`, or `None`.
    async fn recv_within(&self, wait: Duration) -> Option<Received>;

    /// Said in a "received nothing" panic (e.g. connections closed).
    fn state(&self) -> String {
        String::new()
    }

    /// The next message; panics after [`WAIT`].
    async fn recv(&self) -> Received {
        match self.recv_within(WAIT).await {
            Some(r) => r,
            None => panic!(
                "{} received nothing within {WAIT:?}{}",
                self.name(),
                self.state()
            ),
        }
    }

    /// The next message, which must be a `method` request.
    async fn recv_request(&self, method: &str) -> Received {
        let r = self.recv().await;
        assert_eq!(
            r.method().as_deref(),
            Some(method),
            "{} expected a {method} request, got:\n{}",
            self.name(),
            r.text()
        );
        r
    }

    /// The next message, which must be a `code` response.
    async fn recv_response(&self, code: u16) -> Received {
        let r = self.recv().await;
        assert_eq!(
            r.status(),
            Some(code),
            "{} expected a {code} response, got:\n{}",
            self.name(),
            r.text()
        );
        r
    }

    /// Receives until a message satisfies `done`; returns everything
    /// received, the matching message last. Panics after [`WAIT`].
    async fn recv_until(&self, mut done: impl FnMut(&Received) -> bool) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut got = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some(r) = self.recv_within(left).await else {
                let seen: Vec<String> = got.iter().map(Received::first_line).collect();
                panic!(
                    "{}: the expected message did not arrive within {WAIT:?}; got {seen:?}",
                    self.name()
                );
            };
            let stop = done(&r);
            got.push(r);
            if stop {
                return got;
            }
        }
    }

    /// Nothing may arrive within `wait`.
    async fn expect_nothing(&self, wait: Duration) {
        if let Some(r) = self.recv_within(wait).await {
            panic!("{} expected nothing, got:\n{}", self.name(), r.text());
        }
    }
}

impl Inbox for Peer {
    fn name(&self) -> &str {
        &self.name
    }

    async fn recv_within(&self, wait: Duration) -> Option<Received> {
        self.next_within(wait).await
    }
}

impl Inbox for TcpPeer {
    fn name(&self) -> &str {
        &self.name
    }

    async fn recv_within(&self, wait: Duration) -> Option<Received> {
        self.next_within(wait).await
    }

    fn state(&self) -> String {
        format!(" (connections closed: {:?})", self.closed.lock().unwrap())
    }
}

/// A request from `from` for `ruri` (its To: the same URI, with `to_tag`
/// when in a dialog), with `user_agent`.
pub fn request_from(
    method: &str,
    ruri: &str,
    from: SocketAddr,
    to_tag: Option<&str>,
    user_agent: Option<&str>,
) -> Vec<u8> {
    let to = match to_tag {
        Some(t) => format!("<{ruri}>;tag={t}"),
        None => format!("<{ruri}>"),
    };
    let mut headers = vec![
        (
            "Via",
            format!("SIP/2.0/UDP {from};branch={};rport", branch()),
        ),
        ("Max-Forwards", "70".to_owned()),
        ("From", format!("<sip:probe@{from}>;tag={}", unique("f"))),
        ("To", to),
        ("Call-ID", unique("sec-")),
        ("CSeq", format!("1 {method}")),
    ];
    if let Some(ua) = user_agent {
        headers.push(("User-Agent", ua.to_owned()));
    }
    assemble(&format!("{method} {ruri} SIP/2.0"), &headers, None)
}

/// The proxy's Via is on top: its address, a UDP Via, an RFC 3261 branch.
pub fn assert_our_via(msg: &Received, proxy: SocketAddr) {
    assert_our_via_over(msg, proxy, "UDP");
}

/// The proxy's Via is on top: its address, `SIP/2.0/<transport>`, an RFC
/// 3261 branch.
pub fn assert_our_via_over(msg: &Received, proxy: SocketAddr, transport: &str) {
    let m = msg.msg();
    let via = m.top_via().expect("a top Via");
    assert!(
        via.transport.eq_ignore_ascii_case(transport.as_bytes()),
        "top Via should be SIP/2.0/{transport}:\n{}",
        msg.text()
    );
    assert_eq!(via.host.ip(), Some(proxy.ip()), "top Via:\n{}", msg.text());
    assert_eq!(via.port, Some(proxy.port()), "top Via:\n{}", msg.text());
    let b = via.branch().expect("our Via has a branch");
    assert!(
        b.starts_with(b"z9hG4bK"),
        "branch not RFC 3261:\n{}",
        msg.text()
    );
}

/// `rr` (a Record-Route or Route value of ours) carries the node hint: a
/// `node` parameter of 44 (IPv4 node) or 68 (IPv6) lower-case hex digits
/// that names no address. Returns the hint.
pub fn assert_opaque_hint(rr: &str, node: SocketAddr) -> String {
    let at = rr.find(";node=").unwrap_or_else(|| panic!("no hint: {rr}")) + 6;
    let end = rr[at..].find([';', '>']).map_or(rr.len(), |e| at + e);
    let hint = &rr[at..end];
    assert!(
        [44, 68].contains(&hint.len())
            && hint
                .bytes()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()),
        "not an opaque hint: {rr}"
    );
    // (The proxy itself is on the same loopback IP in tests.)
    assert!(!rr.contains(&node.to_string()), "{node} in {rr}");
    hint.to_owned()
}

/// A response relayed upstream carries only the sender's own Via.
pub fn assert_only_via(msg: &Received, branch: &str) {
    let vias = msg.vias();
    assert_eq!(vias.len(), 1, "our Via was not removed:\n{}", msg.text());
    assert_eq!(msg.branch(), branch, "wrong Via left:\n{}", msg.text());
}

// ---------------------------------------------------------------------------
// TCP peers
// ---------------------------------------------------------------------------

/// Cap on one framed message in a fake peer: above the proxy's own, so a
/// message the proxy sends is never refused here.
const PEER_MAX_MESSAGE: usize = 4 * sipedge::sip::DEFAULT_MAX_MESSAGE;

/// What a TCP peer's connections deliver, in arrival order (connection
/// index first).
enum TcpEvent {
    Msg(usize, Received),
    /// A CRLF on its own: the RFC 5626 pong.
    Pong(usize),
    /// The far end closed the connection (or it broke).
    Closed(usize),
    /// Bytes that do not frame as SIP.
    Bad(usize, String),
}

/// A fake node listening on TCP, or a fake trunk connected to the proxy's
/// TCP listener. Each connection has a reader task framing messages off
/// the stream (partial reads and several messages per read both handled);
/// the test reads them in order with the same calls as [`Peer`]. `send`
/// writes on the connection the last message came in on (where the proxy
/// expects responses, RFC 3261 §18.2.2). Dropping it closes everything.
pub struct TcpPeer {
    pub name: String,
    /// A node: its listening address. A trunk: its end of the connection.
    pub addr: SocketAddr,
    writers: Arc<tokio::sync::Mutex<Vec<Option<OwnedWriteHalf>>>>,
    tx: mpsc::UnboundedSender<TcpEvent>,
    events: tokio::sync::Mutex<mpsc::UnboundedReceiver<TcpEvent>>,
    /// Connections accepted (a node) or opened (a trunk: 1).
    accepted: Arc<AtomicUsize>,
    /// The connection the last message came in on.
    current: AtomicUsize,
    /// Pongs and closes seen while waiting for something else.
    pongs: AtomicUsize,
    closed: Mutex<Vec<usize>>,
    answer_probes: bool,
    stop: CancellationToken,
}

impl Drop for TcpPeer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl TcpPeer {
    fn new(name: &str, addr: SocketAddr) -> TcpPeer {
        let (tx, rx) = mpsc::unbounded_channel();
        TcpPeer {
            name: name.to_owned(),
            addr,
            writers: Default::default(),
            tx,
            events: tokio::sync::Mutex::new(rx),
            accepted: Default::default(),
            current: AtomicUsize::new(0),
            pongs: AtomicUsize::new(0),
            closed: Mutex::new(Vec::new()),
            answer_probes: false,
            stop: CancellationToken::new(),
        }
    }

    /// A node accepting the proxy's connections on `listener`. Call inside
    /// a tokio runtime.
    pub fn listen(name: &str, listener: std::net::TcpListener) -> TcpPeer {
        listener.set_nonblocking(true).unwrap();
        let listener = tokio::net::TcpListener::from_std(listener).expect("register a listener");
        let peer = TcpPeer::new(name, listener.local_addr().unwrap());
        let (writers, accepted) = (peer.writers.clone(), peer.accepted.clone());
        let (tx, stop) = (peer.tx.clone(), peer.stop.clone());
        tokio::spawn(async move {
            loop {
                let (stream, from) = tokio::select! {
                    () = stop.cancelled() => return,
                    a = listener.accept() => match a {
                        Ok(a) => a,
                        Err(_) => return,
                    },
                };
                accepted.fetch_add(1, Ordering::Relaxed);
                let (rd, wr) = stream.into_split();
                let mut w = writers.lock().await;
                w.push(Some(wr));
                let idx = w.len() - 1;
                drop(w);
                tokio::spawn(read_conn(idx, rd, from, tx.clone(), stop.clone()));
            }
        });
        peer
    }

    /// A trunk: one connection from `from` (port 0) to the proxy at `to`.
    pub async fn connect(name: &str, from: IpAddr, to: SocketAddr) -> TcpPeer {
        let socket = if from.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .expect("a TCP socket");
        socket
            .bind(SocketAddr::new(from, 0))
            .unwrap_or_else(|e| panic!("{name} cannot bind {from}: {e}"));
        let stream = tokio::time::timeout(WAIT, socket.connect(to))
            .await
            .unwrap_or_else(|_| panic!("{name}: connect to {to} timed out"))
            .unwrap_or_else(|e| panic!("{name} cannot connect to {to}: {e}"));
        let _ = stream.set_nodelay(true);
        let peer = TcpPeer::new(name, stream.local_addr().unwrap());
        peer.accepted.store(1, Ordering::Relaxed);
        let (rd, wr) = stream.into_split();
        peer.writers.lock().await.push(Some(wr));
        tokio::spawn(read_conn(0, rd, to, peer.tx.clone(), peer.stop.clone()));
        peer
    }

    /// Answer the proxy's own OPTIONS probes (one Via) with 200 on their
    /// connection and keep waiting, so tests do not see them.
    pub fn answering_probes(mut self) -> TcpPeer {
        self.answer_probes = true;
        self
    }

    /// Connections accepted so far (a trunk: its one).
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Writes `data` on the connection the last message came in on.
    pub async fn send(&self, data: impl AsRef<[u8]>) {
        self.send_on(self.current.load(Ordering::Relaxed), data)
            .await;
    }

    /// Writes `data` on the current connection; the error when the far end
    /// has already closed it (a write racing the proxy's close).
    pub async fn try_send(&self, data: impl AsRef<[u8]>) -> std::io::Result<()> {
        let conn = self.current.load(Ordering::Relaxed);
        let write = async {
            let mut w = self.writers.lock().await;
            match w.get_mut(conn) {
                Some(Some(wr)) => wr.write_all(data.as_ref()).await,
                _ => Err(std::io::ErrorKind::NotConnected.into()),
            }
        };
        tokio::time::timeout(WAIT, write)
            .await
            .unwrap_or_else(|_| panic!("{}: write stuck for {WAIT:?}", self.name))
    }

    /// Writes `data` on connection `conn` (in accept order), bounded by
    /// [`WAIT`].
    pub async fn send_on(&self, conn: usize, data: impl AsRef<[u8]>) {
        let write = async {
            let mut w = self.writers.lock().await;
            let n = w.len();
            let Some(Some(wr)) = w.get_mut(conn) else {
                panic!("{}: no open connection {conn} ({n} so far)", self.name);
            };
            wr.write_all(data.as_ref()).await
        };
        match tokio::time::timeout(WAIT, write).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("{} cannot write on connection {conn}: {e}", self.name),
            Err(_) => panic!(
                "{}: write on connection {conn} stuck for {WAIT:?}",
                self.name
            ),
        }
    }

    /// Closes our sending side of connection `conn` (a FIN): the far end
    /// sees the connection end and closes it.
    pub async fn close(&self, conn: usize) {
        let wr = self
            .writers
            .lock()
            .await
            .get_mut(conn)
            .and_then(Option::take);
        let Some(mut wr) = wr else {
            panic!("{}: no open connection {conn}", self.name);
        };
        let _ = tokio::time::timeout(WAIT, wr.shutdown()).await;
    }

    /// The next event before `deadline`.
    async fn next_event(&self, deadline: tokio::time::Instant) -> Option<TcpEvent> {
        let mut rx = self.events.lock().await;
        tokio::time::timeout_at(deadline, rx.recv())
            .await
            .ok()
            .flatten()
    }

    /// The next message, or `None` after `wait`. Pongs and closes are
    /// noted on the way.
    async fn next_within(&self, wait: Duration) -> Option<Received> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match self.next_event(deadline).await? {
                TcpEvent::Msg(conn, r) => {
                    if self.answer_probes && r.is_probe() {
                        self.send_on(conn, reply(&r, 200, "OK", None)).await;
                        continue;
                    }
                    self.current.store(conn, Ordering::Relaxed);
                    return Some(r);
                }
                TcpEvent::Pong(_) => {
                    self.pongs.fetch_add(1, Ordering::Relaxed);
                }
                TcpEvent::Closed(conn) => self.closed.lock().unwrap().push(conn),
                TcpEvent::Bad(conn, e) => panic!("{} connection {conn}: {e}", self.name),
            }
        }
    }

    /// The next thing on the wire is a CRLF pong (RFC 5626 §3.5.1);
    /// panics after [`WAIT`] or on a message.
    pub async fn recv_pong(&self) {
        // One seen while waiting for a message counts.
        let seen = self.pongs.load(Ordering::Relaxed);
        if seen > 0 {
            self.pongs.store(seen - 1, Ordering::Relaxed);
            return;
        }
        let deadline = tokio::time::Instant::now() + WAIT;
        match self.next_event(deadline).await {
            Some(TcpEvent::Pong(_)) => {}
            Some(TcpEvent::Msg(_, r)) => {
                panic!("{} expected a CRLF pong, got:\n{}", self.name, r.text())
            }
            Some(TcpEvent::Closed(c)) => {
                panic!("{}: connection {c} closed instead of a pong", self.name)
            }
            Some(TcpEvent::Bad(c, e)) => panic!("{} connection {c}: {e}", self.name),
            None => panic!("{}: no CRLF pong within {WAIT:?}", self.name),
        }
    }

    /// The far end closes connection `conn`; nothing else may arrive
    /// first. Panics after [`WAIT`].
    pub async fn expect_closed(&self, conn: usize) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if self.closed.lock().unwrap().contains(&conn) {
                return;
            }
            match self.next_event(deadline).await {
                Some(TcpEvent::Closed(c)) => self.closed.lock().unwrap().push(c),
                Some(TcpEvent::Pong(_)) => {
                    self.pongs.fetch_add(1, Ordering::Relaxed);
                }
                Some(TcpEvent::Msg(_, r)) => panic!(
                    "{} expected connection {conn} to close, got:\n{}",
                    self.name,
                    r.text()
                ),
                Some(TcpEvent::Bad(c, e)) => panic!("{} connection {c}: {e}", self.name),
                None => panic!("{}: connection {conn} still open after {WAIT:?}", self.name),
            }
        }
    }
}

/// One connection's reader: frames messages off the stream and reports
/// them, a CRLF pong, or the close.
async fn read_conn(
    idx: usize,
    mut rd: OwnedReadHalf,
    from: SocketAddr,
    tx: mpsc::UnboundedSender<TcpEvent>,
    stop: CancellationToken,
) {
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        let n = tokio::select! {
            () = stop.cancelled() => return,
            r = rd.read(&mut chunk) => r.unwrap_or(0),
        };
        if n == 0 {
            let _ = tx.send(TcpEvent::Closed(idx));
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        loop {
            // frame_stream waits for what follows a lone CRLF; a pong is
            // all there is.
            if buf.starts_with(b"\r\n") {
                buf.drain(..2);
                let _ = tx.send(TcpEvent::Pong(idx));
                continue;
            }
            match frame_stream(&buf, PEER_MAX_MESSAGE) {
                Ok(StreamFrame::Message { len }) => {
                    let data: Vec<u8> = buf.drain(..len).collect();
                    let _ = tx.send(TcpEvent::Msg(idx, Received { data, from }));
                }
                Ok(StreamFrame::KeepAlive { len, .. }) => {
                    buf.drain(..len);
                }
                Err(SipError::Incomplete) => break,
                Err(e) => {
                    let text = String::from_utf8_lossy(&buf).into_owned();
                    let _ = tx.send(TcpEvent::Bad(idx, format!("{e}:\n{text}")));
                    return;
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Received messages
// ---------------------------------------------------------------------------

/// One datagram as received.
#[derive(Clone)]
pub struct Received {
    pub data: Vec<u8>,
    pub from: SocketAddr,
}

impl std::fmt::Debug for Received {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "from {}:\n{}", self.from, self.text())
    }
}

fn utf8(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

impl Received {
    /// The message view; panics (showing the bytes) if it does not parse.
    pub fn msg(&self) -> Message<'_> {
        Message::parse(&self.data)
            .unwrap_or_else(|e| panic!("unparsable message ({e}):\n{}", self.text()))
    }

    pub fn text(&self) -> String {
        utf8(&self.data)
    }

    pub fn first_line(&self) -> String {
        self.text().lines().next().unwrap_or_default().to_owned()
    }

    pub fn status(&self) -> Option<u16> {
        self.msg().status()
    }

    pub fn reason(&self) -> String {
        match *self.msg().start_line() {
            StartLine::Response { reason, .. } => utf8(reason),
            StartLine::Request { .. } => panic!("not a response:\n{}", self.text()),
        }
    }

    pub fn method(&self) -> Option<String> {
        self.msg().method().map(|m| utf8(m.as_bytes()))
    }

    pub fn request_uri(&self) -> String {
        utf8(self.msg().request_uri_bytes().expect("a request"))
    }

    /// The first value of a header (whole line value).
    pub fn header(&self, name: HeaderName) -> Option<String> {
        self.msg().header(name).map(utf8)
    }

    /// The first value of a header sipedge has no name for.
    pub fn header_named(&self, name: &str) -> Option<String> {
        self.msg().header_by_name(name.as_bytes()).map(utf8)
    }

    /// Every value of a header, list headers split at commas.
    pub fn values(&self, name: HeaderName) -> Vec<String> {
        self.msg().values(name).map(utf8).collect()
    }

    pub fn vias(&self) -> Vec<String> {
        self.values(HeaderName::Via)
    }

    /// The branch of the top Via.
    pub fn branch(&self) -> String {
        let m = self.msg();
        let via = m.top_via().expect("a top Via");
        utf8(via.branch().expect("a branch"))
    }

    pub fn call_id(&self) -> String {
        utf8(self.msg().call_id().expect("a Call-ID"))
    }

    pub fn cseq(&self) -> (u32, String) {
        let m = self.msg();
        let c = m.cseq().expect("a CSeq");
        (c.number, utf8(c.method.as_bytes()))
    }

    pub fn cseq_method(&self) -> String {
        self.cseq().1
    }

    pub fn to_tag(&self) -> Option<String> {
        self.msg().to_tag().expect("a To header").map(utf8)
    }

    pub fn tag_in_from(&self) -> Option<String> {
        self.msg().from_tag().expect("a From header").map(utf8)
    }

    pub fn max_forwards(&self) -> Option<u8> {
        self.msg().max_forwards().expect("a valid Max-Forwards")
    }

    /// The URI inside the (first) Contact.
    pub fn contact_uri(&self) -> Option<String> {
        let m = self.msg();
        let c = m.header(HeaderName::Contact)?;
        Some(utf8(NameAddr::parse(c).expect("a valid Contact").uri))
    }

    pub fn body(&self) -> &[u8] {
        Message::parse(&self.data).expect("parses").body()
    }

    /// An OPTIONS the proxy sent on its own (one Via): a health probe.
    fn is_probe(&self) -> bool {
        Message::parse(&self.data).is_ok_and(|m| {
            m.method().is_some_and(|x| x.as_bytes() == b"OPTIONS")
                && m.values(HeaderName::Via).count() == 1
        })
    }
}

// ---------------------------------------------------------------------------
// Building messages
// ---------------------------------------------------------------------------

/// Assembles a message: start line, header lines, body with its
/// Content-Length (and Content-Type when there is a body).
pub fn assemble(start: &str, headers: &[(&str, String)], body: Option<(&str, &[u8])>) -> Vec<u8> {
    let mut s = format!("{start}\r\n");
    for (name, value) in headers {
        let _ = write!(s, "{name}: {value}\r\n");
    }
    let body = body.unwrap_or(("", b""));
    if !body.1.is_empty() {
        let _ = write!(s, "Content-Type: {}\r\n", body.0);
    }
    let _ = write!(s, "Content-Length: {}\r\n\r\n", body.1.len());
    let mut out = s.into_bytes();
    out.extend_from_slice(body.1);
    out
}

/// A response to `req`, as a UA answers it: every Via and Record-Route
/// echoed in order, From, Call-ID and CSeq copied, To copied with `to_tag`
/// added when it has none, then the `extra` headers (Contact...) and the
/// body.
pub fn reply(req: &Received, code: u16, reason: &str, to_tag: Option<&str>) -> Vec<u8> {
    reply_with(req, code, reason, to_tag, &[], None)
}

pub fn reply_with(
    req: &Received,
    code: u16,
    reason: &str,
    to_tag: Option<&str>,
    extra: &[(&str, String)],
    body: Option<(&str, &[u8])>,
) -> Vec<u8> {
    let m = req.msg();
    let mut h: Vec<(&str, String)> = Vec::new();
    for v in m.values(HeaderName::Via) {
        h.push(("Via", utf8(v)));
    }
    for v in m.values(HeaderName::RecordRoute) {
        h.push(("Record-Route", utf8(v)));
    }
    h.push(("From", utf8(m.header(HeaderName::From).expect("From"))));
    let mut to = utf8(m.header(HeaderName::To).expect("To"));
    if let (Some(tag), None) = (to_tag, req.to_tag()) {
        let _ = write!(to, ";tag={tag}");
    }
    h.push(("To", to));
    h.push(("Call-ID", req.call_id()));
    h.push(("CSeq", utf8(m.header(HeaderName::CSeq).expect("CSeq"))));
    h.extend(extra.iter().cloned());
    assemble(&format!("SIP/2.0 {code} {reason}"), &h, body)
}

/// One side of a dialog (RFC 3261 §12): what it needs to build the
/// requests it sends.
#[derive(Debug, Clone)]
pub struct Dialog {
    /// This side's address (its Via sent-by and Contact).
    pub local: SocketAddr,
    /// The transport in this side's Via (and `;transport=tcp` in its
    /// Contact for TCP).
    pub transport: Transport,
    pub call_id: String,
    pub local_uri: String,
    pub local_tag: String,
    pub local_contact: String,
    pub remote_uri: String,
    pub remote_tag: Option<String>,
    /// Request-URI of in-dialog requests: the peer's Contact (for the UAC,
    /// the initial Request-URI until a 2xx tells otherwise).
    pub remote_target: String,
    /// Route headers of in-dialog requests, in the order they are sent.
    pub route: Vec<String>,
    pub cseq: u32,
    /// The initial INVITE (UAC only): its Request-URI and branch, which
    /// CANCEL and the ACK for a non-2xx reuse.
    pub invite_uri: String,
    pub invite_branch: String,
    pub invite_cseq: u32,
}

impl Dialog {
    /// The caller side (the trunk): a new call to `ruri`.
    pub fn uac(peer: &Peer, ruri: &str) -> Dialog {
        Dialog::uac_at(peer.addr, ruri)
    }

    /// The caller side at `local` (e.g. a TCP connection's address).
    pub fn uac_at(local: SocketAddr, ruri: &str) -> Dialog {
        let user = "+15551230000";
        Dialog {
            local,
            transport: Transport::Udp,
            call_id: unique("call-"),
            local_uri: format!("sip:{user}@{local}"),
            local_tag: unique("tag-"),
            local_contact: format!("sip:{user}@{local}"),
            remote_uri: ruri.to_owned(),
            remote_tag: None,
            remote_target: ruri.to_owned(),
            route: Vec::new(),
            cseq: 0,
            invite_uri: ruri.to_owned(),
            invite_branch: String::new(),
            invite_cseq: 0,
        }
    }

    /// The callee side (a node) of a received INVITE, answered with
    /// `local_tag`: route set = Record-Route in order (§12.1.1).
    pub fn uas(peer: &Peer, invite: &Received, local_tag: &str) -> Dialog {
        Dialog::uas_at(peer.addr, invite, local_tag)
    }

    /// The callee side at `local`.
    pub fn uas_at(local: SocketAddr, invite: &Received, local_tag: &str) -> Dialog {
        let m = invite.msg();
        let from = m.from().expect("From");
        let to = m.to().expect("To");
        Dialog {
            local,
            transport: Transport::Udp,
            call_id: invite.call_id(),
            local_uri: utf8(to.uri),
            local_tag: local_tag.to_owned(),
            local_contact: format!("sip:fs@{local}"),
            remote_uri: utf8(from.uri),
            remote_tag: from.tag().map(utf8),
            remote_target: invite.contact_uri().expect("the INVITE has a Contact"),
            route: invite.values(HeaderName::RecordRoute),
            cseq: 100,
            invite_uri: String::new(),
            invite_branch: String::new(),
            invite_cseq: 0,
        }
    }

    /// This side speaks TCP: `SIP/2.0/TCP` Via, `;transport=tcp` Contact.
    pub fn over_tcp(mut self) -> Dialog {
        self.transport = Transport::Tcp;
        self.local_contact.push_str(";transport=tcp");
        self
    }

    /// This side speaks TLS: `SIP/2.0/TLS` Via, `;transport=tls` Contact.
    pub fn over_tls(mut self) -> Dialog {
        self.transport = Transport::Tls;
        self.local_contact.push_str(";transport=tls");
        self
    }

    fn via(&self, branch: &str) -> String {
        format!(
            "SIP/2.0/{} {};branch={branch};rport",
            self.transport.via_name(),
            self.local
        )
    }

    fn hdr_from(&self) -> String {
        format!("<{}>;tag={}", self.local_uri, self.local_tag)
    }

    fn hdr_to(&self) -> String {
        match &self.remote_tag {
            Some(t) => format!("<{}>;tag={t}", self.remote_uri),
            None => format!("<{}>", self.remote_uri),
        }
    }

    /// The initial INVITE with an SDP offer (remembers its branch).
    pub fn invite(&mut self, sdp: &str) -> Vec<u8> {
        self.invite_with(sdp, &[])
    }

    /// The initial INVITE with extra headers (e.g. a Route).
    pub fn invite_with(&mut self, sdp: &str, extra: &[(&str, String)]) -> Vec<u8> {
        self.cseq += 1;
        self.invite_cseq = self.cseq;
        self.invite_branch = branch();
        let mut h = vec![
            ("Via", self.via(&self.invite_branch)),
            ("Max-Forwards", "70".to_owned()),
            ("From", self.hdr_from()),
            ("To", self.hdr_to()),
            ("Call-ID", self.call_id.clone()),
            ("CSeq", format!("{} INVITE", self.cseq)),
            ("Contact", format!("<{}>", self.local_contact)),
            ("User-Agent", "fake-trunk".to_owned()),
        ];
        h.extend(extra.iter().cloned());
        assemble(
            &format!("INVITE {} SIP/2.0", self.invite_uri),
            &h,
            Some(("application/sdp", sdp.as_bytes())),
        )
    }

    /// CANCEL for the initial INVITE (§9.1: same Request-URI, Call-ID,
    /// From, To, CSeq number and branch).
    pub fn cancel(&self) -> Vec<u8> {
        let h = [
            ("Via", self.via(&self.invite_branch)),
            ("Max-Forwards", "70".to_owned()),
            ("From", self.hdr_from()),
            ("To", format!("<{}>", self.remote_uri)),
            ("Call-ID", self.call_id.clone()),
            ("CSeq", format!("{} CANCEL", self.invite_cseq)),
        ];
        assemble(&format!("CANCEL {} SIP/2.0", self.invite_uri), &h, None)
    }

    /// ACK for a non-2xx final to the initial INVITE (§17.1.1.3: same
    /// branch, To from the response).
    pub fn ack_non2xx(&self, resp: &Received) -> Vec<u8> {
        let h = [
            ("Via", self.via(&self.invite_branch)),
            ("Max-Forwards", "70".to_owned()),
            ("From", self.hdr_from()),
            ("To", resp.header(HeaderName::To).expect("To")),
            ("Call-ID", self.call_id.clone()),
            ("CSeq", format!("{} ACK", self.invite_cseq)),
        ];
        assemble(&format!("ACK {} SIP/2.0", self.invite_uri), &h, None)
    }

    /// Learns the dialog from a 2xx to the initial INVITE (UAC, §12.1.2):
    /// remote tag, remote target = Contact, route set = Record-Route
    /// reversed.
    pub fn learn_2xx(&mut self, resp: &Received) {
        self.remote_tag = resp.to_tag();
        if let Some(c) = resp.contact_uri() {
            self.remote_target = c;
        }
        let mut rr = resp.values(HeaderName::RecordRoute);
        rr.reverse();
        self.route = rr;
    }

    /// An in-dialog request (new branch, next CSeq; ACK reuses the last
    /// INVITE's CSeq number). Returns the bytes and the branch.
    pub fn request(&mut self, method: &str, body: Option<(&str, &[u8])>) -> (Vec<u8>, String) {
        self.request_with(method, body, &[])
    }

    pub fn request_with(
        &mut self,
        method: &str,
        body: Option<(&str, &[u8])>,
        extra: &[(&str, String)],
    ) -> (Vec<u8>, String) {
        let n = if method == "ACK" {
            self.invite_cseq
        } else {
            self.cseq += 1;
            self.cseq
        };
        if method == "INVITE" {
            self.invite_cseq = n;
        }
        let b = branch();
        let mut h = vec![("Via", self.via(&b)), ("Max-Forwards", "70".to_owned())];
        for r in &self.route {
            h.push(("Route", r.clone()));
        }
        h.push(("From", self.hdr_from()));
        h.push(("To", self.hdr_to()));
        h.push(("Call-ID", self.call_id.clone()));
        h.push(("CSeq", format!("{n} {method}")));
        if method == "INVITE" {
            h.push(("Contact", format!("<{}>", self.local_contact)));
        }
        h.extend(extra.iter().cloned());
        let start = format!("{method} {} SIP/2.0", self.remote_target);
        (assemble(&start, &h, body), b)
    }

    /// A 2xx (or other) response from this side to an in-dialog request or
    /// the initial INVITE: with this side's Contact.
    pub fn answer(&self, req: &Received, code: u16, reason: &str, body: Option<&str>) -> Vec<u8> {
        let extra = [("Contact", format!("<{}>", self.local_contact))];
        reply_with(
            req,
            code,
            reason,
            Some(&self.local_tag),
            &extra,
            body.map(|b| ("application/sdp", b.as_bytes())),
        )
    }
}

/// A call the trunk placed through the proxy and a node answered.
pub struct Established {
    /// The trunk's side.
    pub call: Dialog,
    /// The answering node's side.
    pub node_side: Dialog,
    /// Index of the answering node.
    pub node: usize,
}

/// INVITE (100, 180, 200) and ACK: node 0 answers.
pub async fn establish(h: &Harness) -> Established {
    let mut call = h.trunk_call();
    h.trunk.send(call.invite(SDP_AUDIO), h.addr).await;
    h.trunk.recv_response(100).await;
    let node = 0;
    let inv = h.nodes[node].recv_request("INVITE").await;
    let node_side = Dialog::uas(&h.nodes[node], &inv, &unique("fs-"));
    h.nodes[node]
        .send(node_side.answer(&inv, 180, "Ringing", None), inv.from)
        .await;
    h.trunk.recv_response(180).await;
    h.nodes[node]
        .send(node_side.answer(&inv, 200, "OK", Some(SDP_NODE)), inv.from)
        .await;
    let ok = h.trunk.recv_response(200).await;
    call.learn_2xx(&ok);
    let (ack, _) = call.request("ACK", None);
    h.trunk.send(ack, h.addr).await;
    h.nodes[node].recv_request("ACK").await;
    Established {
        call,
        node_side,
        node,
    }
}

/// A fresh directory (unique per test, so tests run in parallel), removed
/// on drop.
pub struct Scratch(std::path::PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(unique(&format!("sipedge-{name}-")));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl std::ops::Deref for Scratch {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------------------
// Third-party peers as child processes (Kamailio, baresip)
// ---------------------------------------------------------------------------

/// Until the SIP peer `child` answers an OPTIONS for `ruri` on UDP `to`
/// (sent every 200 ms) with a response `ready` accepts. Panics with the
/// peer's `log` when it exits or `within` passes.
pub fn until_options_answered(
    child: &mut std::process::Child,
    to: SocketAddr,
    ruri: &str,
    ready: fn(&[u8]) -> bool,
    within: Duration,
    log: impl Fn() -> String,
) {
    let probe = std::net::UdpSocket::bind(("127.0.0.1", 0)).unwrap();
    probe
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let me = probe.local_addr().unwrap();
    let options = format!(
        "OPTIONS {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKready\r\n\
         Max-Forwards: 70\r\nFrom: <sip:ready@{me}>;tag=r\r\nTo: <{ruri}>\r\n\
         Call-ID: ready-{me}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    );
    let deadline = std::time::Instant::now() + within;
    let mut buf = [0u8; 4096];
    while std::time::Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{to} exited ({status}); log:\n{}", log());
        }
        let _ = probe.send_to(options.as_bytes(), to);
        if let Ok(n) = probe.recv(&mut buf) {
            if ready(&buf[..n]) {
                return;
            }
        }
    }
    panic!("{to} did not answer within {within:?}; log:\n{}", log());
}

/// Stops a peer's process: SIGTERM first (it stops its own children and
/// flushes its log), SIGKILL after 5 s. Nothing to do once it has exited.
pub fn terminate(child: &mut std::process::Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}
