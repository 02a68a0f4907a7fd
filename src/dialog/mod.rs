//! Call-ID -> node table: pins in-dialog requests to the node that answered.
//!
//! The media negotiation of a call (the T.38 re-INVITE above all) happens on
//! one FreeSWITCH box, so every in-dialog request must reach the node that
//! answered the INVITE. The proxy [`pin`](Dialogs::pin)s a Call-ID when it
//! picks a node, pins it again on the 2xx and when another node takes the
//! call over (`sofia recover`), and [`remove`](Dialogs::remove)s it when the
//! dialog ends. Dialogs whose end sipedge never saw (a lost BYE, a node that
//! died) expire after the TTL.
//!
//! # The shared registry
//! With `[dialogs] registry`, the table is backed by Redis
//! ([`registry::Registry`]): [`Dialogs::confirm`] (a node's 2xx, a
//! takeover) also writes the entry there, [`Dialogs::remove`] after a BYE
//! deletes it, and [`Dialogs::lookup_shared`] reads it for a request the
//! local table does not know. The proxy talks to this interface only.
//!
//! # Expiry
//! Deadlines live in a `BTreeSet` ordered by time (an index a re-pin or a
//! BYE updates in place), and one task ([`Dialogs::run_expiry`], the shared
//! [`crate::timer::sleep_loop`]) sleeps until the earliest of them: no scan
//! per request, no timer per dialog (mini-redis `purge_expired_tasks`).
//!
//! # Locking
//! The map is a `DashMap`; the deadline set sits behind one std `Mutex`. The
//! order is always shard, then mutex: `pin` updates the set while it holds
//! the entry's shard, so a dialog and its deadline change together; the
//! expiry task never touches the map while it holds the mutex. Neither lock
//! is ever held across an `.await`.

use std::collections::BTreeSet;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use dashmap::mapref::entry::Entry;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub mod registry;
pub use registry::Registry;

/// The Call-ID bytes, shared by the map and the deadline set: one allocation
/// per dialog, and lookups with `&[u8]` (through `Borrow<[u8]>`) allocate
/// nothing.
type Key = Arc<[u8]>;

/// One scheduled expiry. `seq` is unique per pin: it orders equal instants
/// (a burst within one clock tick, a paused clock) by pin order, and tells
/// the deadline a dialog currently has from one a later pin replaced.
type Deadline = (Instant, u64, Key);

/// The most deadlines the expiry task takes per lock hold, so a burst of
/// expiries does not stall `pin` and `remove` behind the mutex.
const EXPIRY_BATCH: usize = 1024;

/// What [`Dialogs::pin`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pin {
    /// The Call-ID now maps to the node.
    Pinned,
    /// The table is at its cap and the Call-ID was new: not stored, counted
    /// in [`DialogStats::rejected_full`]. The call still works; its
    /// in-dialog requests fall back to the Record-Route hint.
    Full,
}

/// Why a dialog left the table, for the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    /// The BYE was answered 200.
    Bye,
    /// The INVITE got a final non-2xx: the dialog never started.
    Failed,
}

/// A snapshot of the table's counters (totals since start).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DialogStats {
    /// Entries removed by the expiry task because their TTL passed.
    pub evicted_ttl: u64,
    /// Entries removed with [`Removal::Bye`].
    pub removed_bye: u64,
    /// Entries removed with [`Removal::Failed`].
    pub removed_failed: u64,
    /// New Call-IDs not stored because the table was at its cap.
    pub rejected_full: u64,
}

struct Dialog {
    node: SocketAddr,
    /// With `seq`, finds this dialog's entry in the deadline set.
    deadline: Instant,
    seq: u64,
}

/// The Call-ID -> node table, shared as `Arc<Dialogs>`.
///
/// Call-IDs are compared byte for byte (RFC 3261 §20.8), so callers pass the
/// header value as it is on the wire, without surrounding whitespace.
pub struct Dialogs {
    map: crate::FastMap<Key, Dialog>,
    deadlines: Mutex<BTreeSet<Deadline>>,
    /// Tells the expiry task its earliest deadline moved earlier.
    expiry_changed: Notify,
    ttl: Duration,
    max: usize,
    /// Entries stored or about to be: a cheap cap check (`DashMap::len`
    /// locks every shard).
    count: AtomicUsize,
    next_seq: AtomicU64,
    evicted_ttl: AtomicU64,
    removed_bye: AtomicU64,
    removed_failed: AtomicU64,
    rejected_full: AtomicU64,
    /// Dialogs pinned to each node: what a drain waits to reach zero.
    per_node: crate::FastMap<SocketAddr, usize>,
    /// The shared registry, when configured.
    registry: Option<Arc<Registry>>,
}

impl Dialogs {
    /// An empty table whose entries live `ttl` after their last pin, holding
    /// at most `max` of them.
    pub fn new(ttl: Duration, max: usize) -> Dialogs {
        Dialogs {
            map: Default::default(),
            deadlines: Mutex::new(BTreeSet::new()),
            expiry_changed: Notify::new(),
            ttl,
            max,
            count: AtomicUsize::new(0),
            next_seq: AtomicU64::new(0),
            evicted_ttl: AtomicU64::new(0),
            removed_bye: AtomicU64::new(0),
            removed_failed: AtomicU64::new(0),
            rejected_full: AtomicU64::new(0),
            per_node: Default::default(),
            registry: None,
        }
    }

    /// The same table backed by a shared registry.
    pub fn with_registry(self, registry: Option<Registry>) -> Dialogs {
        Dialogs {
            registry: registry.map(Arc::new),
            ..self
        }
    }

    /// The shared registry, when configured (its writer task, its counters).
    pub fn registry(&self) -> Option<&Arc<Registry>> {
        self.registry.as_ref()
    }

    /// How many dialogs are pinned to `node` now.
    pub fn pinned_to(&self, node: SocketAddr) -> usize {
        self.per_node.get(&node).map_or(0, |n| *n)
    }

    fn node_gained(&self, node: SocketAddr) {
        *self.per_node.entry(node).or_insert(0) += 1;
    }

    fn node_lost(&self, node: SocketAddr) {
        if let Some(mut n) = self.per_node.get_mut(&node) {
            *n = n.saturating_sub(1);
        }
    }

    /// A node was chosen for a new INVITE, answered it, or took the call over:
    /// Call-ID -> node, TTL restarted. An existing Call-ID is always
    /// re-pinned, even at the cap; a new one is refused at the cap.
    pub fn pin(&self, call_id: &[u8], node: SocketAddr) -> Pin {
        self.pin_until(call_id, node, Instant::now() + self.ttl)
    }

    /// The node answered the INVITE with a 2xx, or took the call over:
    /// [`Dialogs::pin`], and the shared registry learns the node as `uri`
    /// (its dispatcher URI), whatever the local cap says.
    pub fn confirm(&self, call_id: &[u8], node: SocketAddr, uri: &str) -> Pin {
        if let Some(r) = &self.registry {
            r.set(call_id, uri);
        }
        self.pin(call_id, node)
    }

    /// The node the shared registry has for `call_id`, if its entry names
    /// an address `member` accepts; `None` without a registry, and when
    /// it fails or is slow (counted there). Not cached here: a takeover
    /// seen by another proxy would leave the copy stale.
    pub async fn lookup_shared(
        &self,
        call_id: &[u8],
        member: impl Fn(SocketAddr) -> bool,
    ) -> Option<SocketAddr> {
        match &self.registry {
            Some(r) => r.get(call_id, member).await,
            None => None,
        }
    }

    fn pin_until(&self, call_id: &[u8], node: SocketAddr, deadline: Instant) -> Pin {
        let seq = self.next_seq.fetch_add(1, Relaxed);
        // A known Call-ID (2xx confirmation, takeover) allocates nothing.
        let earliest = if let Some(mut dialog) = self.map.get_mut(call_id) {
            let (key, dialog) = dialog.pair_mut();
            self.repin(key, dialog, node, deadline, seq)
        } else {
            let reserved = self
                .count
                .fetch_update(Relaxed, Relaxed, |n| (n < self.max).then_some(n + 1));
            if reserved.is_err() {
                self.rejected_full.fetch_add(1, Relaxed);
                tracing::debug!(max = self.max, "dialog table full, call not pinned");
                return Pin::Full;
            }
            match self.map.entry(Key::from(call_id)) {
                // Another task stored this Call-ID since `get_mut`.
                Entry::Occupied(occupied) => {
                    self.count.fetch_sub(1, Relaxed);
                    let mut dialog = occupied.into_ref();
                    let (key, dialog) = dialog.pair_mut();
                    self.repin(key, dialog, node, deadline, seq)
                }
                Entry::Vacant(vacant) => {
                    self.node_gained(node);
                    let earliest = self.schedule(None, (deadline, seq, vacant.key().clone()));
                    vacant.insert(Dialog {
                        node,
                        deadline,
                        seq,
                    });
                    earliest
                }
            }
        };
        if earliest {
            self.expiry_changed.notify_one();
        }
        Pin::Pinned
    }

    /// Points an existing dialog at `node` with a new deadline. Called with
    /// the dialog's shard held, so the set update is atomic with it.
    fn repin(
        &self,
        key: &Key,
        dialog: &mut Dialog,
        node: SocketAddr,
        deadline: Instant,
        seq: u64,
    ) -> bool {
        let old = (dialog.deadline, dialog.seq);
        if dialog.node != node {
            self.node_lost(dialog.node);
            self.node_gained(node);
        }
        *dialog = Dialog {
            node,
            deadline,
            seq,
        };
        self.schedule(Some(old), (deadline, seq, key.clone()))
    }

    /// Replaces the dialog's `old` deadline (if any) with `new`. Returns
    /// whether `new` is now the earliest, i.e. the expiry task must wake.
    ///
    /// With one TTL per table and a monotonic clock that is mostly "the set
    /// was empty", but not only: `pin` reads the clock before taking the
    /// mutex, so a pin that read it first can insert after one that read it
    /// later, with an earlier deadline. Checking "earliest" rather than
    /// "was empty" covers both for the same price.
    fn schedule(&self, old: Option<(Instant, u64)>, new: Deadline) -> bool {
        let mut deadlines = self.deadlines();
        if let Some((when, seq)) = old {
            // Absent if the expiry task has just taken it; then its seq no
            // longer matches the dialog and the task leaves the dialog alone.
            deadlines.remove(&(when, seq, new.2.clone()));
        }
        let seq = new.1;
        deadlines.insert(new);
        deadlines.first().is_some_and(|first| first.1 == seq)
    }

    /// The node pinned for this Call-ID.
    pub fn get(&self, call_id: &[u8]) -> Option<SocketAddr> {
        self.map.get(call_id).map(|dialog| dialog.node)
    }

    /// The dialog ended (200 to BYE, final non-2xx to the INVITE): remove
    /// it. Returns whether it was in the table; only then is it counted.
    /// After a BYE the shared registry forgets it too, known here or not
    /// (another proxy may have set the call up); a failed INVITE was never
    /// written there.
    pub fn remove(&self, call_id: &[u8], reason: Removal) -> bool {
        if let (Some(r), Removal::Bye) = (&self.registry, reason) {
            r.del(call_id);
        }
        let Some((key, dialog)) = self.map.remove(call_id) else {
            return false;
        };
        self.count.fetch_sub(1, Relaxed);
        self.node_lost(dialog.node);
        // Removing the deadline the expiry task sleeps for needs no wake-up:
        // it wakes, finds nothing due, and sleeps until the next one.
        self.deadlines().remove(&(dialog.deadline, dialog.seq, key));
        let counter = match reason {
            Removal::Bye => &self.removed_bye,
            Removal::Failed => &self.removed_failed,
        };
        counter.fetch_add(1, Relaxed);
        true
    }

    /// Number of pinned dialogs.
    pub fn len(&self) -> usize {
        self.count.load(Relaxed)
    }

    /// Whether no dialog is pinned.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The counters, read now.
    pub fn stats(&self) -> DialogStats {
        DialogStats {
            evicted_ttl: self.evicted_ttl.load(Relaxed),
            removed_bye: self.removed_bye.load(Relaxed),
            removed_failed: self.removed_failed.load(Relaxed),
            rejected_full: self.rejected_full.load(Relaxed),
        }
    }

    /// Expiry task: removes dialogs whose TTL passed, until `cancel` fires.
    /// Run one per table (the wake-up goes to a single waiter). The shared
    /// sleep-until loop over this table's own index: deadlines move on
    /// every re-pin, which the set follows in place.
    pub async fn run_expiry(self: Arc<Self>, cancel: CancellationToken) {
        // Reused across rounds: no allocation per wake-up once warm.
        let mut due = Vec::new();
        crate::timer::sleep_loop(&cancel, &self.expiry_changed, |now| {
            let next = self.take_due(now, &mut due);
            self.evict(&mut due);
            next
        })
        .await;
    }

    /// Moves the deadlines that passed at `now` into `due` (at most
    /// [`EXPIRY_BATCH`]) and returns the next one to sleep until: a past
    /// instant if the batch was cut short, `None` if nothing is scheduled.
    fn take_due(&self, now: Instant, due: &mut Vec<Deadline>) -> Option<Instant> {
        let mut deadlines = self.deadlines();
        while due.len() < EXPIRY_BATCH && deadlines.first().is_some_and(|first| first.0 <= now) {
            due.extend(deadlines.pop_first());
        }
        deadlines.first().map(|first| first.0)
    }

    /// Removes the dialogs in `due` (drained) that still have that deadline.
    /// Runs without the mutex: lock order is shard, then mutex.
    fn evict(&self, due: &mut Vec<Deadline>) {
        let mut evicted = 0u64;
        for (_, seq, key) in due.drain(..) {
            // A pin since `take_due` gave the dialog a new seq and deadline.
            if let Some((_, dialog)) = self.map.remove_if(&key, |_, dialog| dialog.seq == seq) {
                self.node_lost(dialog.node);
                self.count.fetch_sub(1, Relaxed);
                evicted += 1;
            }
        }
        if evicted > 0 {
            self.evicted_ttl.fetch_add(evicted, Relaxed);
            tracing::debug!(evicted, "dialogs expired");
        }
    }

    /// The set is consistent after every single operation on it, so a panic
    /// elsewhere while it was held leaves nothing half-done to refuse.
    fn deadlines(&self) -> MutexGuard<'_, BTreeSet<Deadline>> {
        self.deadlines
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl fmt::Debug for Dialogs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dialogs")
            .field("len", &self.len())
            .field("max", &self.max)
            .field("ttl", &self.ttl)
            .field("stats", &self.stats())
            .finish()
    }
}

#[cfg(test)]
mod tests;
