//! Shared harness for the in-process proxy tests: the real proxy on
//! 127.0.0.1 port 0, a fake trunk and fake FreeSWITCH nodes as plain UDP
//! sockets, raw SIP bytes in and out (mini-redis `tests/server.rs` style).
//!
//! - [`Harness::start`]: binds the proxy and the peers, writes the TOML
//!   config, runs the proxy until the harness is dropped.
//! - [`Peer`]: a fake trunk or node; every receive is bounded by [`WAIT`]
//!   (or a given duration) and panics with what was expected.
//! - [`Received`]: one datagram, read with [`sipedge::sip::Message::parse`].
//! - [`Dialog`]: one side of a dialog, building the requests that side sends
//!   (initial INVITE, CANCEL, ACK, in-dialog requests) from templates;
//!   [`reply`] builds a response to a received request.
//!
//! Nothing here sleeps for a fixed time except [`Peer::expect_nothing`],
//! which is how "this must not arrive" is checked.
#![allow(dead_code)] // each test file uses a part of it

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sipedge::proxy::Proxy;
use sipedge::sip::{HeaderName, Message, NameAddr, StartLine};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

/// The longest any test waits for one packet that must arrive.
pub const WAIT: Duration = Duration::from_secs(2);

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
}

impl Default for Options {
    fn default() -> Self {
        Options {
            nodes: 2,
            algorithm: "priority",
            fr_timeout: "300ms",
            fr_inv_timeout: "120s",
            extra_socket: None,
            extra_toml: "",
            nodes_answer_probes: true,
            ipv6: false,
        }
    }
}

/// The config text for a proxy on `listen` with these destinations.
pub fn config_toml(listen: SocketAddr, nodes: &[SocketAddr], opts: &Options) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "[listen]\nudp = [\"{listen}\"]\nadvertise = \"{listen}\"\n"
    );
    let _ = writeln!(t, "[dispatcher]\nalgorithm = \"{}\"\n", opts.algorithm);
    for n in nodes {
        let _ = writeln!(t, "[[dispatcher.destination]]\nuri = \"sip:{n}\"\n");
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
    cancel: CancellationToken,
}

impl Harness {
    /// Binds everything on 127.0.0.1 port 0 and starts the proxy. Call
    /// inside a tokio runtime.
    pub async fn start(opts: Options) -> Harness {
        init_tracing();
        let any: SocketAddr = if opts.ipv6 {
            "[::1]:0".parse().unwrap()
        } else {
            "127.0.0.1:0".parse().unwrap()
        };
        let socket = sipedge::transport::bind_udp(any, sipedge::transport::UdpOptions::default())
            .expect("bind the proxy socket");
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
        for i in 0..opts.nodes {
            let node = peer(format!("node{i}")).await;
            nodes.push(if opts.nodes_answer_probes {
                node.answering_probes()
            } else {
                node
            });
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
        let proxy = Proxy::new(cfg, sockets).expect("build the proxy");
        let cancel = CancellationToken::new();
        tokio::spawn(proxy.clone().run(cancel.clone()));
        Harness {
            proxy,
            addr,
            extra,
            trunk,
            nodes,
            cancel,
        }
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

    /// Messages the proxy dropped without an answer, every reason.
    pub fn dropped(&self) -> u64 {
        let m = self.proxy.metrics();
        sipedge::metrics::DropReason::ALL
            .iter()
            .map(|r| m.dropped_count(*r))
            .sum()
    }
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
    pub async fn recv_within(&self, wait: Duration) -> Option<Received> {
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

    /// The next message; panics after [`WAIT`].
    pub async fn recv(&self) -> Received {
        match self.recv_within(WAIT).await {
            Some(r) => r,
            None => panic!("{} received nothing within {WAIT:?}", self.name),
        }
    }

    /// The next message, which must be a `method` request.
    pub async fn recv_request(&self, method: &str) -> Received {
        let r = self.recv().await;
        assert_eq!(
            r.method().as_deref(),
            Some(method),
            "{} expected a {method} request, got:\n{}",
            self.name,
            r.text()
        );
        r
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

    /// The next message, which must be a `code` response.
    pub async fn recv_response(&self, code: u16) -> Received {
        let r = self.recv().await;
        assert_eq!(
            r.status(),
            Some(code),
            "{} expected a {code} response, got:\n{}",
            self.name,
            r.text()
        );
        r
    }

    /// Receives until a message satisfies `done`; returns everything
    /// received, the matching message last. Panics after [`WAIT`].
    pub async fn recv_until(&self, mut done: impl FnMut(&Received) -> bool) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut got = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some(r) = self.recv_within(left).await else {
                let seen: Vec<String> = got.iter().map(Received::first_line).collect();
                panic!(
                    "{}: the expected message did not arrive within {WAIT:?}; got {seen:?}",
                    self.name
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
    pub async fn expect_nothing(&self, wait: Duration) {
        if let Some(r) = self.recv_within(wait).await {
            panic!("{} expected nothing, got:\n{}", self.name, r.text());
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
        let user = "+15551230000";
        Dialog {
            local: peer.addr,
            call_id: unique("call-"),
            local_uri: format!("sip:{user}@{}", peer.addr),
            local_tag: unique("tag-"),
            local_contact: format!("sip:{user}@{}", peer.addr),
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
        let m = invite.msg();
        let from = m.from().expect("From");
        let to = m.to().expect("To");
        Dialog {
            local: peer.addr,
            call_id: invite.call_id(),
            local_uri: utf8(to.uri),
            local_tag: local_tag.to_owned(),
            local_contact: format!("sip:fs@{}", peer.addr),
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

    fn via(&self, branch: &str) -> String {
        format!("SIP/2.0/UDP {};branch={branch};rport", self.local)
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
