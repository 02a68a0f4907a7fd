//! The one timer schedule and the one loop that sleeps until its next
//! entry: the transaction timers, the prober's wake-ups and (through
//! [`sleep_loop`], over its own index) the dialog expiry all wait here, so
//! no task or tokio timer exists per request, call or dialog.
//!
//! Free of proxy types: an entry is any `T`, and whoever handles one checks
//! whether it still matters (entries are never cancelled).

use std::collections::BinaryHeap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;
use tokio::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

struct Due<T> {
    at: Instant,
    seq: u64,
    item: T,
}

impl<T> PartialEq for Due<T> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl<T> Eq for Due<T> {}
impl<T> PartialOrd for Due<T> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Due<T> {
    // Reversed: BinaryHeap is a max-heap, the earliest must come first;
    // `seq` keeps equal instants in scheduling order.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// Entries of type `T`, each due at an instant, handed out in order by
/// [`Schedule::run`] (one task per schedule: the wake-up goes to a single
/// waiter).
pub struct Schedule<T> {
    heap: Mutex<(BinaryHeap<Due<T>>, u64)>,
    /// Wakes the loop when the schedule gains an earlier first entry.
    changed: Notify,
    /// Entries due within this much of `now` are handed out together: one
    /// wake-up per batch instead of one per entry.
    slack: Duration,
}

impl<T> Default for Schedule<T> {
    /// A schedule that hands nothing out early.
    fn default() -> Self {
        Schedule::new(Duration::ZERO)
    }
}

impl<T> std::fmt::Debug for Schedule<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Schedule")
            .field("len", &self.len())
            .field("slack", &self.slack)
            .finish()
    }
}

impl<T> Schedule<T> {
    /// An empty schedule that hands entries out up to `slack` early.
    pub fn new(slack: Duration) -> Self {
        Schedule {
            heap: Mutex::new((BinaryHeap::new(), 0)),
            changed: Notify::new(),
            slack,
        }
    }

    /// Schedules `item` for `at` (a past `at`: as soon as the loop runs).
    pub fn schedule(&self, at: Instant, item: T) {
        let mut g = self.heap();
        let (heap, seq) = &mut *g;
        let earliest = heap.peek().is_none_or(|d| at < d.at);
        *seq += 1;
        heap.push(Due {
            at,
            seq: *seq,
            item,
        });
        drop(g);
        if earliest {
            self.changed.notify_one();
        }
    }

    /// Moves the entries due by `now` (plus the slack) into `out`, in
    /// order, and returns when the next one is due.
    pub fn take_due(&self, now: Instant, out: &mut Vec<T>) -> Option<Instant> {
        let mut g = self.heap();
        let heap = &mut g.0;
        while heap.peek().is_some_and(|d| d.at <= now + self.slack) {
            out.extend(heap.pop().map(|d| d.item));
        }
        heap.peek().map(|d| d.at)
    }

    /// Serves the schedule until `cancel` fires: `handle` gets the time of
    /// each wake-up and the entries due then (to drain; what it leaves is
    /// dropped). It may schedule more.
    pub async fn run(
        &self,
        cancel: &CancellationToken,
        mut handle: impl FnMut(Instant, &mut Vec<T>),
    ) {
        // Reused across rounds: no allocation per wake-up once warm.
        let mut due = Vec::new();
        sleep_loop(cancel, &self.changed, |now| {
            let next = self.take_due(now, &mut due);
            handle(now, &mut due);
            due.clear();
            next
        })
        .await;
    }

    pub fn len(&self) -> usize {
        self.heap().0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The heap is consistent after every single operation on it, so a
    /// panic elsewhere while it was held leaves nothing half-done.
    fn heap(&self) -> MutexGuard<'_, (BinaryHeap<Due<T>>, u64)> {
        self.heap.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The one sleep-until loop: runs `round` with the current time, sleeps
/// until the instant it returns (forever on `None`) or until `changed` is
/// notified, and again, until `cancel` fires. For a schedule with an index
/// of its own (the dialog table's, whose deadlines move); [`Schedule::run`]
/// is this over a [`Schedule`].
pub async fn sleep_loop(
    cancel: &CancellationToken,
    changed: &Notify,
    mut round: impl FnMut(Instant) -> Option<Instant>,
) {
    loop {
        let next = round(Instant::now());
        let sleep = async {
            match next {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            () = cancel.cancelled() => return,
            // A stored permit makes this ready at once, so an entry
            // scheduled between `round` and here is not missed.
            () = changed.notified() => {}
            () = sleep => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_hands_out_what_is_due_in_order() {
        let now = Instant::now();
        let q = Schedule::new(Duration::from_millis(20));
        let t1 = Duration::from_millis(500);
        q.schedule(now + Duration::from_millis(600), "b");
        q.schedule(now + t1, "a");
        q.schedule(now + Duration::from_millis(510), "a2");
        let mut out = Vec::new();
        assert_eq!(q.take_due(now, &mut out), Some(now + t1));
        assert!(out.is_empty());
        // Within the slack of the first: those two come out, in order.
        assert_eq!(
            q.take_due(now + t1, &mut out),
            Some(now + Duration::from_millis(600))
        );
        assert_eq!(out, ["a", "a2"]);
        assert_eq!(q.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn run_wakes_for_each_entry_and_stops_when_cancelled() {
        let q = std::sync::Arc::new(Schedule::default());
        let cancel = CancellationToken::new();
        let seen = std::sync::Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let (q, cancel, seen) = (q.clone(), cancel.clone(), seen.clone());
            async move {
                q.run(&cancel, |now, due| {
                    seen.lock().unwrap().extend(due.drain(..).map(|i| (i, now)));
                })
                .await;
            }
        });
        let start = Instant::now();
        q.schedule(start + Duration::from_secs(5), 2);
        q.schedule(start + Duration::from_secs(1), 1);
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert_eq!(
            *seen.lock().unwrap(),
            [
                (1, start + Duration::from_secs(1)),
                (2, start + Duration::from_secs(5))
            ]
        );
        cancel.cancel();
        tokio::time::timeout(Duration::from_secs(1), task)
            .await
            .expect("the loop did not stop")
            .expect("the loop panicked");
    }
}
