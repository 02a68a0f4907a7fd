//! Client transactions: what the proxy remembers about each request it
//! forwarded, keyed by the branch of the Via it added (RFC 3261 §17.1.3:
//! a response matches the transaction whose branch is in its top Via).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use dashmap::DashMap;
use tokio::sync::mpsc;
use tokio::time::{Duration, Instant};

/// The RFC 3261 magic cookie plus sipedge's prefix, so our branches are
/// recognisable in captures.
pub const BRANCH_PREFIX: &str = "z9hG4bKse";

/// How long a finished transaction's entry stays for retransmitted
/// responses (64*T1, RFC 3261 Timer B/F).
pub const LINGER: Duration = Duration::from_secs(32);

/// Makes branch values unique across restarts: a per-process nonce from the
/// clock and the pid, and a counter.
#[derive(Debug)]
pub struct BranchGen {
    nonce: u64,
    counter: AtomicU64,
}

impl Default for BranchGen {
    fn default() -> Self {
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        BranchGen {
            nonce: t ^ (u64::from(std::process::id()) << 40),
            counter: AtomicU64::new(1),
        }
    }
}

impl BranchGen {
    /// A new branch value, e.g. `z9hG4bKse3f2a9c01.1b`.
    pub fn next(&self) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!("{BRANCH_PREFIX}{:x}.{n:x}", self.nonce)
    }

    /// The branch for forwarding a request whose own branch is `incoming`
    /// from `src`: the same inputs give the same branch (retransmissions),
    /// different requests different ones.
    pub fn derived(&self, incoming: &[u8], src: SocketAddr) -> String {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ self.nonce;
        let src = src.to_string();
        for &b in incoming.iter().chain(b"|").chain(src.as_bytes()) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        format!("{BRANCH_PREFIX}{h:x}")
    }

    /// A token for To tags and Call-IDs of our own requests.
    pub fn tag(&self) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!("se{:x}{n:x}", self.nonce & 0xffff_ffff)
    }
}

/// What to do with a response whose top Via carries one of our branches.
#[derive(Debug)]
pub enum ClientTxn {
    /// A new INVITE being driven by its own task (failover, timers): the
    /// response goes to that task.
    Invite(mpsc::Sender<Bytes>),
    /// Any other forwarded request: relay responses upstream.
    Relay(Relay),
}

#[derive(Debug)]
pub struct Relay {
    pub call_id: Box<[u8]>,
    /// The request was a BYE: its 2xx ends the dialog.
    pub is_bye: bool,
    /// A pool member sent this request for a Call-ID pinned elsewhere
    /// (FreeSWITCH `sofia recover`): its 2xx re-pins the call to it.
    pub repin: Option<SocketAddr>,
    pub created: Instant,
    /// A response came back: stop retransmitting (Timer E / A).
    pub answered: std::sync::atomic::AtomicBool,
}

/// The table of client transactions.
#[derive(Debug, Default)]
pub struct ClientTxns {
    map: DashMap<Box<[u8]>, ClientTxn>,
}

impl ClientTxns {
    pub fn insert(&self, branch: &str, txn: ClientTxn) {
        self.map.insert(branch.as_bytes().into(), txn);
    }

    pub fn remove(&self, branch: &[u8]) {
        self.map.remove(branch);
    }

    /// Runs `f` on the transaction for `branch` without holding the shard
    /// lock beyond the call.
    pub fn with<R>(&self, branch: &[u8], f: impl FnOnce(&ClientTxn) -> R) -> Option<R> {
        self.map.get(branch).map(|t| f(&t))
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Drops relay entries older than [`LINGER`] (their responses are long
    /// done) and INVITE entries whose task has ended.
    pub fn sweep(&self, now: Instant) {
        self.map.retain(|_, t| match t {
            ClientTxn::Invite(tx) => !tx.is_closed(),
            ClientTxn::Relay(r) => now.duration_since(r.created) < LINGER,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn branches_are_unique_and_rfc3261() {
        let g = BranchGen::default();
        let a = g.next();
        let b = g.next();
        assert_ne!(a, b);
        assert!(a.starts_with("z9hG4bK"));
        let src: SocketAddr = "192.0.2.7:5060".parse().unwrap();
        let d = g.derived(b"z9hG4bKabc", src);
        assert_eq!(d, g.derived(b"z9hG4bKabc", src));
        assert_ne!(d, g.derived(b"z9hG4bKabd", src));
        assert_ne!(
            d,
            g.derived(b"z9hG4bKabc", "192.0.2.8:5060".parse().unwrap())
        );
    }

    #[tokio::test(start_paused = true)]
    async fn sweep_keeps_live_and_recent() {
        let t = ClientTxns::default();
        let (tx, rx) = mpsc::channel(1);
        t.insert("b1", ClientTxn::Invite(tx));
        t.insert(
            "b2",
            ClientTxn::Relay(Relay {
                call_id: b"c".as_slice().into(),
                is_bye: false,
                repin: None,
                created: Instant::now(),
                answered: Default::default(),
            }),
        );
        t.sweep(Instant::now());
        assert_eq!(t.len(), 2);
        tokio::time::advance(LINGER).await;
        drop(rx);
        t.sweep(Instant::now());
        assert!(t.is_empty());
    }
}
