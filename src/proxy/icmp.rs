//! Who waits on a destination, for the ICMP errors about it: the INVITE
//! legs and forwarded requests sent there. An ICMP error from the
//! destination's host fails them over (or answers 503) at once; looking
//! them up here costs what was sent there since the last error, not a scan
//! of every transaction, so a flood of ICMP errors that pass the offender
//! check (a spoofed source) cannot stall the receive threads.

use std::net::SocketAddr;
use std::sync::{Arc, Weak};

use crate::transaction::Token;

/// Something sent to a destination and waiting on it. `C` is the new
/// INVITE's state (the driver's `Call`): generic, so this table needs
/// nothing from the driver that fills it.
pub(super) enum Waiter<C> {
    /// A new INVITE whose leg went there.
    Call(Weak<C>),
    /// A forwarded request's client transaction, by branch (inline: no
    /// allocation per forwarded request).
    Relay(Token),
}

/// Entries per destination below which nothing is pruned.
const PRUNE_FLOOR: usize = 64;

struct Waiters<C> {
    items: Vec<Waiter<C>>,
    /// Prune the finished entries once there are this many (then double
    /// what is left, so pruning stays amortised O(1) per entry).
    prune_at: usize,
}

impl<C> Default for Waiters<C> {
    fn default() -> Self {
        Waiters {
            items: Vec::new(),
            prune_at: 0,
        }
    }
}

/// Destination -> what waits on it.
pub(super) struct IcmpWatch<C> {
    map: crate::FastMap<SocketAddr, Waiters<C>>,
}

impl<C> Default for IcmpWatch<C> {
    fn default() -> Self {
        IcmpWatch {
            map: Default::default(),
        }
    }
}

impl<C> IcmpWatch<C> {
    /// `w` was just sent to `to`. `waiting` tells a finished entry (pruned
    /// as the list grows: a destination that never errs keeps no history).
    pub(super) fn watch(&self, to: SocketAddr, w: Waiter<C>, waiting: impl Fn(&Waiter<C>) -> bool) {
        let mut e = self.map.entry(to).or_default();
        e.items.push(w);
        if e.items.len() >= e.prune_at.max(PRUNE_FLOOR) {
            e.items.retain(|w| waiting(w));
            e.prune_at = e.items.len() * 2;
        }
    }

    /// Everything sent to `to` since the last call: an ICMP error from it
    /// came. Those not failed over by it (they had an answer) are immune
    /// to later ones, so none is kept.
    pub(super) fn take(&self, to: SocketAddr) -> Vec<Waiter<C>> {
        self.map
            .remove(&to)
            .map(|(_, w)| w.items)
            .unwrap_or_default()
    }

    /// Destinations with entries (for tests and the bounds).
    #[cfg(test)]
    pub(super) fn len(&self, to: SocketAddr) -> usize {
        self.map.get(&to).map_or(0, |w| w.items.len())
    }
}

impl<C> Waiter<C> {
    pub(super) fn call(call: &Arc<C>) -> Waiter<C> {
        Waiter::Call(Arc::downgrade(call))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finished_entries_are_pruned_as_the_list_grows_and_take_empties_it() {
        let w = IcmpWatch::<()>::default();
        let to: SocketAddr = "192.0.2.1:5080".parse().unwrap();
        let gen = crate::transaction::BranchGen::default();
        let branches: Vec<Token> = (0..10_000).map(|_| gen.next()).collect();
        // Every tenth one still waits.
        let waiting: std::collections::HashSet<Vec<u8>> = branches
            .iter()
            .step_by(10)
            .map(|b| b.as_bytes().to_vec())
            .collect();
        let live = |w: &Waiter<()>| matches!(w, Waiter::Relay(b) if waiting.contains(b.as_bytes()));
        for (n, b) in branches.iter().enumerate() {
            w.watch(to, Waiter::Relay(*b), live);
            assert!(
                w.len(to) <= PRUNE_FLOOR.max(2 * 1_000 + 2),
                "{n}: {}",
                w.len(to)
            );
        }
        let taken = w.take(to);
        assert!(taken.len() >= 1_000 / 10, "the live ones are kept");
        assert_eq!(w.len(to), 0);
        assert!(w.take(to).is_empty());
    }
}
