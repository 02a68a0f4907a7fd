//! The transaction layer (RFC 3261 §17), sans-I/O: state machines that
//! take events and the time as arguments and return what to do, in the
//! style of quinn-proto's `Connection`. No socket, no clock read, no
//! metric, no task in the machines; the proxy drives them from its receive
//! threads and the one timer schedule.
//!
//! - `invite`: a new INVITE's client side with failover over a dispatcher
//!   plan (Timer A, `fr_timeout`, `fr_inv_timeout`, CANCEL, late 2xx).
//! - `relay`: any other forwarded request's client side (Timer E/F, Timer
//!   A/B for a re-INVITE) and the 408/503 the proxy owes upstream when
//!   the next hop stays silent or cannot be reached.
//! - `server`: the trunk's INVITE server transaction (retransmissions, the
//!   ACK, RFC 6026 Accepted) and [`server_key`] (§17.2.3 matching).
//! - here: the client transaction table (keyed by the branch we add: a
//!   response matches the transaction whose branch is in its top Via,
//!   §17.1.3), branch and tag generation, and the timer schedule.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;

use bytes::Bytes;
use hmac::{Hmac, KeyInit, Mac};
use rand::RngCore;
use sha2::Sha256;
use tokio::time::{Duration, Instant};

pub mod invite;
pub mod relay;
pub mod server;

pub use server::server_key;

/// The RFC 3261 magic cookie plus sipedge's prefix, so our branches are
/// recognisable in captures.
pub const BRANCH_PREFIX: &str = "z9hG4bKse";

/// How long a finished transaction's entry stays for retransmitted
/// responses (64*T1, RFC 3261 Timer B/F).
pub const LINGER: Duration = Duration::from_secs(32);

/// Makes branch values that a stranger can neither guess nor compute:
/// a response is matched to its transaction by branch alone (§17.1.3), so
/// a guessable one lets anyone answer for a node (a forged 486 ends a
/// call). Fresh branches are 128 random bits from a CSPRNG (`rand`'s
/// thread-local ChaCha, seeded by the OS); derived ones a MAC under a
/// random per-process key.
pub struct BranchGen {
    /// HMAC-SHA256 keyed once, cloned per use: the key's blocks are
    /// hashed here, not on every forwarded request.
    derive: Hmac<Sha256>,
}

impl Default for BranchGen {
    fn default() -> Self {
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        BranchGen {
            derive: <Hmac<Sha256> as KeyInit>::new_from_slice(&key)
                .expect("HMAC takes a key of any length"),
        }
    }
}

impl std::fmt::Debug for BranchGen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("BranchGen").finish_non_exhaustive()
    }
}

/// A branch or tag value we generate, kept inline: no allocation and no
/// `fmt` on the path of every forwarded request.
#[derive(Clone, Copy)]
pub struct Token {
    buf: [u8; 48],
    len: u8,
}

impl Token {
    fn new(prefix: &str) -> Token {
        let mut t = Token {
            buf: [0; 48],
            len: 0,
        };
        t.push(prefix.as_bytes());
        t
    }

    fn push(&mut self, b: &[u8]) {
        let at = usize::from(self.len);
        let end = (at + b.len()).min(self.buf.len());
        self.buf[at..end].copy_from_slice(&b[..end - at]);
        self.len = end as u8;
    }

    /// `b` as lower-case hex, two digits a byte (as many bytes as fit).
    fn push_hex_bytes(&mut self, b: &[u8]) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let at = usize::from(self.len);
        let mut written = 0;
        for (d, &x) in self.buf[at..].chunks_exact_mut(2).zip(b) {
            d[0] = HEX[usize::from(x >> 4)];
            d[1] = HEX[usize::from(x & 0xf)];
            written += 2;
        }
        self.len = (at + written) as u8;
    }

    /// `N` bytes from this thread's CSPRNG, as hex.
    fn push_random<const N: usize>(&mut self) {
        let mut r = [0u8; N];
        rand::rng().fill_bytes(&mut r);
        self.push_hex_bytes(&r);
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII is ever pushed (a prefix constant and hex digits).
        std::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }
}

impl PartialEq for Token {
    fn eq(&self, other: &Token) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for Token {}

impl std::ops::Deref for Token {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Display for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

/// Random bits in a fresh branch or derived from a request's: 128, as
/// hex (RFC 3261 §8.1.1.7 asks for "unique", a response's source check
/// needs "unguessable").
const BRANCH_BITS: usize = 128;
/// In a tag: 64 (a To tag or Call-ID only needs to be unique).
const TAG_BITS: usize = 64;

impl BranchGen {
    /// A new branch value, e.g. `z9hG4bKse` and 32 random hex digits.
    pub fn next(&self) -> Token {
        let mut t = Token::new(BRANCH_PREFIX);
        t.push_random::<{ BRANCH_BITS / 8 }>();
        t
    }

    /// The branch for forwarding a request whose own branch is `incoming`
    /// from `src`: the same inputs give the same branch (retransmissions),
    /// different requests different ones, and without the key nobody can
    /// tell which.
    pub fn derived(&self, incoming: &[u8], src: SocketAddr) -> Token {
        let mut mac = self.derive.clone();
        match src.ip().to_canonical() {
            IpAddr::V4(a) => mac.update(&a.octets()),
            IpAddr::V6(a) => mac.update(&a.octets()),
        }
        mac.update(&src.port().to_be_bytes());
        mac.update(incoming);
        let sum = mac.finalize().into_bytes();
        let mut t = Token::new(BRANCH_PREFIX);
        t.push_hex_bytes(&sum[..BRANCH_BITS / 8]);
        t
    }

    /// A token for To tags and Call-IDs of our own requests.
    pub fn tag(&self) -> Token {
        let mut t = Token::new("se");
        t.push_random::<{ TAG_BITS / 8 }>();
        t
    }
}

/// An INVITE whose outcome is still open, as the transaction table sees
/// it: the sweeper keeps its entries while it is.
pub trait Pending {
    fn is_over(&self) -> bool;
}

/// What to do with a response whose top Via carries one of our branches,
/// and where its request went (a response is taken only from there, see
/// [`ClientTxn::sent_to`]). `I` is the new INVITE's state machine
/// (failover, timers).
#[derive(Debug)]
pub enum ClientTxn<I> {
    /// A new INVITE still deciding: the response goes to its state machine.
    Invite {
        call: I,
        /// The node this branch (leg) went to.
        to: crate::transport::Peer,
    },
    /// Any other forwarded request: relay responses upstream. Boxed: the
    /// table's slots are as large as its largest variant.
    Relay(Box<Relay>),
    /// A branch of an INVITE whose outcome is decided:
    /// kept until [`LINGER`] after `at` so a retransmitted 2xx is still
    /// relayed (RFC 6026 "Accepted").
    Decided {
        at: Instant,
        /// Where the INVITE came from: a retransmitted 2xx goes back there.
        upstream: crate::transport::Peer,
        /// The node this branch went to.
        to: crate::transport::Peer,
    },
    /// A health probe (OPTIONS) of dispatcher node `node`, sent at `sent`.
    /// The prober removes it when `[probe] timeout` runs out.
    Probe {
        /// Which set of the pool (0: the one taking calls), and the node.
        set: usize,
        node: usize,
        /// The pool generation `node` indexes.
        generation: u64,
        sent: Instant,
    },
}

impl<I> ClientTxn<I> {
    /// Where the request went, when the entry says (a probe names its
    /// node by index: the pool knows its address).
    pub fn sent_to(&self) -> Option<crate::transport::Peer> {
        match self {
            ClientTxn::Invite { to, .. } | ClientTxn::Decided { to, .. } => Some(*to),
            ClientTxn::Relay(r) => Some(r.to),
            ClientTxn::Probe { .. } => None,
        }
    }
}

#[derive(Debug)]
pub struct Relay {
    pub call_id: Box<[u8]>,
    /// The request was a BYE: its 2xx ends the dialog.
    pub is_bye: bool,
    /// Its 2xx pins the call to this pool member: a node's request for a
    /// Call-ID pinned elsewhere (FreeSWITCH `sofia recover`) or not known
    /// here, or a node's new outgoing INVITE.
    pub repin: Option<SocketAddr>,
    /// Where the request came from: its responses go back there (on the
    /// same TCP connection, RFC 3261 §18.2.2).
    pub upstream: crate::transport::Peer,
    /// Where it went.
    pub to: crate::transport::Peer,
    pub state: std::sync::Mutex<RelayState>,
}

/// A forwarded request's machine and what it sent.
#[derive(Debug)]
pub struct RelayState {
    pub client: relay::RelayClient,
    /// What was sent: resent by Timer E (A), and the request a local 408
    /// or 503 answers. Dropped once the transaction is done: the entry
    /// lingers for 32 s, the copy need not.
    pub request: Bytes,
}

impl RelayState {
    pub fn new(client: relay::RelayClient, request: Bytes) -> RelayState {
        RelayState { client, request }
    }

    /// A response with `code` came back: whether to relay it.
    pub fn on_response(&mut self, now: std::time::Instant, code: u16, fr_inv: Duration) -> bool {
        let relay = self.client.on_response(now, code, fr_inv);
        self.forget_if_done();
        relay
    }

    /// The request, taken when the machine is done with it.
    pub fn forget_if_done(&mut self) -> Option<Bytes> {
        self.client
            .next_wake()
            .is_none()
            .then(|| std::mem::take(&mut self.request))
    }
}

impl Relay {
    /// Runs `f` on the machine's state (a poisoned lock only means a panic
    /// elsewhere: the state is still usable).
    pub fn with_state<R>(&self, f: impl FnOnce(&mut RelayState) -> R) -> R {
        let mut c = self.state.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut c)
    }
}

/// The table of client transactions.
#[derive(Debug)]
pub struct ClientTxns<I> {
    map: crate::FastMap<Box<[u8]>, ClientTxn<I>>,
    /// Entries now: a cheap read for the overload check (`DashMap::len`
    /// locks every shard).
    count: std::sync::atomic::AtomicUsize,
}

impl<I> Default for ClientTxns<I> {
    fn default() -> Self {
        ClientTxns {
            map: Default::default(),
            count: Default::default(),
        }
    }
}

impl<I: Pending> ClientTxns<I> {
    /// A table with room for `n` transactions.
    pub fn with_capacity(n: usize) -> Self {
        ClientTxns {
            map: crate::fast_map_with_capacity(n),
            count: Default::default(),
        }
    }

    /// Inserts the transaction `make` builds unless `branch` has one
    /// already (a retransmitted request forwarded on the same branch: its
    /// transaction goes on, it does not start again). Whether it did.
    pub fn insert_new(&self, branch: &str, make: impl FnOnce() -> ClientTxn<I>) -> bool {
        match self.map.entry(branch.as_bytes().into()) {
            dashmap::Entry::Occupied(_) => false,
            dashmap::Entry::Vacant(v) => {
                v.insert(make());
                self.count.fetch_add(1, Ordering::Relaxed);
                true
            }
        }
    }

    pub fn insert(&self, branch: &str, txn: ClientTxn<I>) {
        if self.map.insert(branch.as_bytes().into(), txn).is_none() {
            self.count.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Removes and returns the transaction for `branch`.
    pub fn remove(&self, branch: &[u8]) -> Option<ClientTxn<I>> {
        let t = self.map.remove(branch).map(|(_, t)| t);
        if t.is_some() {
            self.count.fetch_sub(1, Ordering::Relaxed);
        }
        t
    }

    /// Runs `f` on the transaction for `branch` without holding the shard
    /// lock beyond the call.
    pub fn with<R>(&self, branch: &[u8], f: impl FnOnce(&ClientTxn<I>) -> R) -> Option<R> {
        self.map.get(branch).map(|t| f(&t))
    }

    pub fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The INVITE on `branch` has decided: from now on only a
    /// retransmitted 2xx is relayed, by the response path.
    pub fn decide(&self, branch: &[u8], at: Instant, upstream: crate::transport::Peer) {
        if let Some(mut t) = self.map.get_mut(branch) {
            if let Some(to) = t.sent_to() {
                *t = ClientTxn::Decided { at, upstream, to };
            }
        }
    }

    /// Drops relay entries and decided INVITE branches older than
    /// [`LINGER`] (their responses are long done), and INVITE entries whose
    /// state machine is over without deciding.
    pub fn sweep(&self, now: Instant) {
        self.map.retain(|_, t| {
            let keep = match t {
                ClientTxn::Invite { call, .. } => !call.is_over(),
                ClientTxn::Relay(r) => !r.with_state(|st| st.client.expired(now.into_std())),
                ClientTxn::Decided { at, .. } => now.duration_since(*at) < LINGER,
                // The prober removes its own; this only catches a stopped one.
                ClientTxn::Probe { sent, .. } => now.duration_since(*sent) < LINGER,
            };
            if !keep {
                self.count.fetch_sub(1, Ordering::Relaxed);
            }
            keep
        });
    }
}

/// RFC 3261 T1 and T2.
pub const T1: Duration = Duration::from_millis(500);
pub const T2: Duration = Duration::from_secs(4);

/// The slack of the proxy's timer schedule ([`crate::timer::Schedule`]):
/// retransmissions due within this much of each other go out together,
/// one wake-up per batch instead of one timer per request (Kamailio's tm
/// timer ticks are coarser still).
pub const TIMER_SLACK: Duration = Duration::from_millis(20);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn branches_are_unique_and_rfc3261() {
        let g = BranchGen::default();
        let a = g.next();
        let b = g.next();
        assert_ne!(*a, *b);
        assert!(a.starts_with("z9hG4bK"));
        let src: SocketAddr = "192.0.2.7:5060".parse().unwrap();
        let d = g.derived(b"z9hG4bKabc", src);
        assert!(d.starts_with(BRANCH_PREFIX) && d.len() > BRANCH_PREFIX.len());
        assert_eq!(*d, *g.derived(b"z9hG4bKabc", src));
        assert_ne!(*d, *g.derived(b"z9hG4bKabd", src));
        assert_ne!(
            *d,
            *g.derived(b"z9hG4bKabc", "192.0.2.8:5060".parse().unwrap())
        );
        assert_ne!(
            *d,
            *g.derived(b"z9hG4bKabc", "192.0.2.7:5061".parse().unwrap())
        );
        let t = g.tag();
        assert!(t.starts_with("se") && t.bytes().skip(2).all(|b| b.is_ascii_hexdigit()));
    }

    /// The random part of a branch: after the prefix, hex only.
    fn random_part(t: &Token) -> u128 {
        let tail = t.strip_prefix(BRANCH_PREFIX).unwrap();
        assert_eq!(tail.len(), BRANCH_BITS / 4, "{t}");
        u128::from_str_radix(tail, 16).unwrap()
    }

    #[test]
    fn consecutive_branches_share_nothing() {
        // A stranger who saw one branch (in a Via of a call it placed)
        // must not learn the next: no counter, no common prefix beyond
        // ours, 128 bits each.
        let g = BranchGen::default();
        let a: Vec<u128> = (0..64).map(|_| random_part(&g.next())).collect();
        for w in a.windows(2) {
            let diff = w[0] ^ w[1];
            // Two random 128-bit values agree in ~64 bits; a counter in
            // all but a few.
            assert!(diff.count_ones() > 24, "{:x} then {:x}", w[0], w[1]);
            assert!(
                w[1].wrapping_sub(w[0]) > 1 << 64,
                "{:x} then {:x}",
                w[0],
                w[1]
            );
        }
        // Every bit position takes both values across the sample: all 128
        // are random, none fixed per process.
        let ones = a.iter().fold(0u128, |acc, x| acc | x);
        let zeros = a.iter().fold(0u128, |acc, x| acc | !x);
        assert_eq!((ones, zeros), (u128::MAX, u128::MAX));
        // Another process (another key) derives another branch from the
        // same request: it cannot be computed from outside.
        let src: SocketAddr = "192.0.2.7:5060".parse().unwrap();
        let h = BranchGen::default();
        let (d, e) = (g.derived(b"z9hG4bKabc", src), h.derived(b"z9hG4bKabc", src));
        assert_eq!(random_part(&d), random_part(&g.derived(b"z9hG4bKabc", src)));
        assert!((random_part(&d) ^ random_part(&e)).count_ones() > 24);
        // Tags are random too.
        assert_ne!(*g.tag(), *g.tag());
    }

    /// A stand-in INVITE state: over once the flag is set.
    struct Call(std::sync::Arc<std::sync::atomic::AtomicBool>);
    impl Pending for Call {
        fn is_over(&self) -> bool {
            self.0.load(Ordering::Relaxed)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn sweep_keeps_live_and_recent() {
        let t = ClientTxns::default();
        let over = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let node = crate::transport::Peer::udp("127.0.0.1:5080".parse().unwrap());
        t.insert(
            "b1",
            ClientTxn::Invite {
                call: Call(over.clone()),
                to: node,
            },
        );
        t.insert(
            "b2",
            ClientTxn::Relay(Box::new(Relay {
                call_id: b"c".as_slice().into(),
                is_bye: false,
                repin: None,
                upstream: crate::transport::Peer::udp("127.0.0.1:5060".parse().unwrap()),
                to: crate::transport::Peer::udp("127.0.0.1:5080".parse().unwrap()),
                state: {
                    let now = Instant::now().into_std();
                    let client = relay::RelayClient::new(now, false, false, Duration::from_secs(2));
                    let mut st = RelayState::new(client, Bytes::new());
                    // Answered: from now on it only lingers.
                    st.on_response(now, 200, Duration::from_secs(120));
                    st.into()
                },
            })),
        );
        t.insert(
            "b3",
            ClientTxn::Invite {
                call: Call(Default::default()),
                to: node,
            },
        );
        t.decide(
            b"b3",
            Instant::now(),
            crate::transport::Peer::udp("127.0.0.1:5060".parse().unwrap()),
        );
        // A decided branch still knows where its INVITE went: a
        // retransmitted 2xx is taken only from there.
        assert!(
            t.with(
                b"b3",
                |e| matches!(e, ClientTxn::Decided { to, .. } if *to == node)
            ) == Some(true)
        );
        assert_eq!(t.with(b"b1", ClientTxn::sent_to), Some(Some(node)));
        t.sweep(Instant::now());
        assert_eq!(t.len(), 3);
        tokio::time::advance(LINGER).await;
        over.store(true, Ordering::Relaxed);
        t.sweep(Instant::now());
        assert!(t.is_empty());
    }
}
