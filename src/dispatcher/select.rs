//! The arithmetic of Kamailio's algorithms 11 (relative weight, with
//! congestion control) and 13 (latency-optimised priority), as pure
//! functions over set positions, so the numbers can be checked against
//! Kamailio 5.6's `ds_update_latency`, `dp_init_relative_weights` and
//! `ds_manage_route_algo13` without a pool. Allocation-free: inputs come
//! through a closure, as [`super::Dispatcher::plan`] promises no heap.

/// Slots of the relative-weight table: weights are percentages.
const SLOTS: u64 = 100;

/// Coprime with [`SLOTS`]: `ticket * STRIDE % 100` visits every slot once
/// per 100 tickets, interleaved (Kamailio shuffles the table randomly;
/// this is deterministic, so any 100 consecutive calls split exactly).
const STRIDE: u64 = 61;

/// One node's inputs to algorithm 11, by set position.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Relative {
    /// Takes new calls (active or trying): only these share the calls.
    pub active: bool,
    /// `rweight=` (0 none).
    pub rweight: u32,
    /// `weight=`: what `cc=1` starts from.
    pub weight: u32,
    /// `cc=1`.
    pub cc: bool,
    /// [`super::latency::LatencyStats::congestion_ms`].
    pub congestion_ms: i64,
}

/// Each node's relative weight as Kamailio's `ds_update_latency` leaves
/// it: a `cc=1` node with a weight takes `weight - congestion` (not below
/// 0); when every node has `cc=1`, more than one is at 0 and none above,
/// each takes `(total congestion << 4) / its congestion` instead (shares
/// in inverse proportion to congestion).
pub(super) fn effective_rweights(
    n: usize,
    node: impl Fn(usize) -> Relative,
) -> impl Fn(usize) -> u64 {
    let (mut all_cc, mut congested, mut normal, mut total) = (true, 0u32, 0u32, 0i64);
    for pos in 0..n {
        let r = node(pos);
        all_cc &= r.cc;
        if r.cc && r.weight > 0 {
            total = total.saturating_add(r.congestion_ms.max(0));
            if cc_weight(&r) == 0 {
                congested += 1;
            } else {
                normal += 1;
            }
        }
    }
    let ratio = all_cc && congested > 1 && normal == 0;
    move |pos| {
        let r = node(pos);
        if ratio {
            let shifted = u64::try_from(total).unwrap_or(0) << 4;
            shifted / u64::try_from(r.congestion_ms.max(1)).unwrap_or(1)
        } else if r.cc && r.weight > 0 {
            cc_weight(&r)
        } else {
            u64::from(r.rweight)
        }
    }
}

fn cc_weight(r: &Relative) -> u64 {
    u64::try_from(
        i64::from(r.weight)
            .saturating_sub(r.congestion_ms.max(0))
            .max(0),
    )
    .unwrap_or(0)
}

/// The set position call number `ticket` starts at under algorithm 11:
/// each active node gets `rweight * 100 / sum` of 100 slots (truncated,
/// the remainder to the last node that got any, as Kamailio), over the
/// active nodes only. `None` when no active node has a relative weight.
pub(super) fn relative_slot(
    n: usize,
    node: impl Fn(usize) -> Relative,
    ticket: usize,
) -> Option<usize> {
    let weight = effective_rweights(n, &node);
    let active = |pos: usize| node(pos).active;
    let sum: u64 = (0..n).filter(|&p| active(p)).map(&weight).sum();
    if sum == 0 {
        return None;
    }
    let slot = (ticket as u64 % SLOTS) * STRIDE % SLOTS; // usize is at most 64 bits
    let mut end = 0;
    let mut last = None;
    for pos in (0..n).filter(|&p| active(p)) {
        let share = weight(pos).saturating_mul(SLOTS) / sum;
        if share == 0 {
            continue;
        }
        end += share;
        last = Some(pos);
        if slot < end {
            return Some(pos);
        }
    }
    last
}

/// Algorithm 13's effective priority of a node with `priority` and a
/// latency (the estimate, or with `cc=1` the congestion) of `latency_ms`:
/// lowered by `latency / priority` when the latency exceeds a positive
/// priority, and never below 1 then (Kamailio's `rpriority`).
pub(super) fn latency_priority(priority: i32, latency_ms: i64) -> i64 {
    let p = i64::from(priority);
    let handicap = if latency_ms > p && p > 0 {
        latency_ms / p
    } else {
        0
    };
    let r = p - handicap;
    if r < 1 && p > 0 {
        1
    } else {
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain<'a>(rweights: &'a [u32], active: &'a [bool]) -> impl Fn(usize) -> Relative + 'a {
        move |pos| Relative {
            active: active[pos],
            rweight: rweights[pos],
            ..Relative::default()
        }
    }

    /// How many of `calls` consecutive tickets start at each position.
    fn spread(n: usize, node: impl Fn(usize) -> Relative, calls: usize) -> Vec<usize> {
        let mut counts = vec![0; n];
        for t in 0..calls {
            counts[relative_slot(n, &node, t).expect("a slot")] += 1;
        }
        counts
    }

    #[test]
    fn relative_weights_split_every_100_calls_exactly() {
        let on = [true, true, true];
        assert_eq!(spread(3, plain(&[50, 30, 20], &on), 100), [50, 30, 20]);
        assert_eq!(spread(3, plain(&[50, 30, 20], &on), 1000), [500, 300, 200]);
        // Relative: 2:1:1 whatever the sum.
        assert_eq!(spread(3, plain(&[2, 1, 1], &on), 100), [50, 25, 25]);
        // Interleaved, not in runs: the first 10 calls reach all three.
        let first10 = spread(3, plain(&[50, 30, 20], &on), 10);
        assert!(first10.iter().all(|&c| c > 0), "{first10:?}");
    }

    #[test]
    fn an_inactive_nodes_share_goes_to_the_active_ones() {
        // 50/30 of 80: 62 and 37 truncated, the remaining 1 to the last.
        let off = [true, true, false];
        assert_eq!(spread(3, plain(&[50, 30, 20], &off), 100), [62, 38, 0]);
        let first_off = [false, true, true];
        assert_eq!(
            spread(3, plain(&[50, 30, 20], &first_off), 100),
            [0, 60, 40]
        );
        assert_eq!(relative_slot(3, plain(&[50, 30, 20], &[false; 3]), 0), None);
        assert_eq!(relative_slot(2, plain(&[0, 0], &[true, true]), 0), None);
    }

    #[test]
    fn congestion_control_takes_weight_minus_congestion() {
        let node = |congestion: [i64; 2]| {
            move |pos: usize| Relative {
                active: true,
                rweight: 50,
                weight: 50,
                cc: true,
                congestion_ms: congestion[pos],
            }
        };
        // No congestion: the weights.
        assert_eq!(spread(2, node([0, 0]), 100), [50, 50]);
        // 30 ms on the second: 50 and 20 -> 71 and 28, remainder 1 to it.
        let w = effective_rweights(2, node([0, 30]));
        assert_eq!((w(0), w(1)), (50, 20));
        assert_eq!(spread(2, node([0, 30]), 100), [71, 29]);
        // One fully congested, one not: it gets nothing.
        assert_eq!(spread(2, node([0, 80]), 100), [100, 0]);
        // Both fully congested: shares by (total << 4) / own congestion:
        // total 180 -> 2880 / 60 = 48 and 2880 / 120 = 24; 48 * 100 / 72
        // = 66, 24 * 100 / 72 = 33, remainder 1 to the last.
        let w = effective_rweights(2, node([60, 120]));
        assert_eq!((w(0), w(1)), (48, 24));
        assert_eq!(spread(2, node([60, 120]), 100), [66, 34]);
    }

    #[test]
    fn congestion_ratio_needs_cc_on_every_node() {
        let node = |pos: usize| Relative {
            active: true,
            rweight: 10,
            weight: 10,
            cc: pos < 2,
            congestion_ms: 50,
        };
        // Nodes 0 and 1 congested to 0, node 2 without cc keeps rweight.
        assert_eq!(spread(3, node, 100), [0, 0, 100]);
    }

    #[test]
    fn latency_priority_is_kamailios_rpriority() {
        assert_eq!(latency_priority(10, 0), 10);
        assert_eq!(latency_priority(10, 10), 10, "not above the priority");
        assert_eq!(latency_priority(10, 55), 5, "55 / 10 = 5 off");
        assert_eq!(latency_priority(30, 300), 20);
        assert_eq!(latency_priority(10, 500), 1, "never below 1");
        assert_eq!(latency_priority(0, 500), 0, "priority 0 keeps 0");
        assert_eq!(latency_priority(-5, 500), -5);
    }
}
