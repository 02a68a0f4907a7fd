//! [`Plan`]: the order in which one new call tries the pool, kept inline so
//! that building it per INVITE never touches the allocator.

use std::iter::FusedIterator;

/// Most nodes one call will try. A call that failed over 32 times has long
/// exhausted the caller's patience (32 × `fr_timeout`), so a longer plan
/// would only cost stack space.
pub const PLAN_CAPACITY: usize = 32;

/// The nodes to try for one new call: the first choice, then the failover
/// order. Yields destination indices for [`super::Dispatcher::addr`] and
/// friends, each at most once.
///
/// Inline (no heap), so [`super::Dispatcher::plan`] is allocation-free.
/// Indices are stored as `u16`, which is why a pool is capped at
/// [`super::MAX_DESTINATIONS`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    nodes: [u16; PLAN_CAPACITY],
    len: u8,
    next: u8,
}

impl Plan {
    pub(super) fn new() -> Plan {
        Plan {
            nodes: [0; PLAN_CAPACITY],
            len: 0,
            next: 0,
        }
    }

    /// Appends a node; a full plan ignores it (callers stop at
    /// [`Plan::is_full`]).
    pub(super) fn push(&mut self, index: u16) {
        let len = usize::from(self.len);
        if len < PLAN_CAPACITY {
            self.nodes[len] = index;
            self.len += 1;
        }
    }

    pub(super) fn is_full(&self) -> bool {
        usize::from(self.len) == PLAN_CAPACITY
    }

    /// Nodes not yet yielded ([`ExactSizeIterator::len`]).
    fn remaining(&self) -> usize {
        usize::from(self.len - self.next)
    }
}

impl Iterator for Plan {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        if self.next == self.len {
            return None;
        }
        let index = self.nodes[usize::from(self.next)];
        self.next += 1;
        Some(usize::from(index))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining(), Some(self.remaining()))
    }
}

impl ExactSizeIterator for Plan {}

/// A plan of given nodes, in order (state machine tests, tools); indices
/// past `u16` and nodes past [`PLAN_CAPACITY`] are left out.
impl FromIterator<usize> for Plan {
    fn from_iter<I: IntoIterator<Item = usize>>(nodes: I) -> Plan {
        let mut plan = Plan::new();
        for n in nodes {
            if let Ok(n) = u16::try_from(n) {
                plan.push(n);
            }
        }
        plan
    }
}

impl FusedIterator for Plan {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_stops_at_capacity_and_iterates_in_order() {
        let mut plan = Plan::new();
        assert_eq!(plan.len(), 0);
        for i in 0..40u16 {
            plan.push(i);
        }
        assert!(plan.is_full());
        assert_eq!(plan.len(), PLAN_CAPACITY);
        assert_eq!(plan.next(), Some(0));
        assert_eq!(plan.len(), PLAN_CAPACITY - 1);
        let rest: Vec<usize> = plan.by_ref().collect();
        assert_eq!(rest, (1..PLAN_CAPACITY).collect::<Vec<_>>());
        assert_eq!(plan.next(), None);
        assert_eq!(plan.next(), None);
    }
}
