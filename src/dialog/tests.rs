use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::{advance, Instant};
use tokio_util::sync::CancellationToken;

use super::{DialogStats, Dialogs, Pin, Removal, EXPIRY_BATCH};

const TTL: Duration = Duration::from_secs(7200);
const MS: Duration = Duration::from_millis(1);

fn node(n: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 1, n], 5080))
}

fn call(i: usize) -> Vec<u8> {
    format!("{i:08x}-a84b4c76e66710@pc33.atlanta.example.com").into_bytes()
}

fn table(max: usize) -> Arc<Dialogs> {
    Arc::new(Dialogs::new(TTL, max))
}

fn start_expiry(dialogs: &Arc<Dialogs>) -> (CancellationToken, JoinHandle<()>) {
    let cancel = CancellationToken::new();
    let task = tokio::spawn(Arc::clone(dialogs).run_expiry(cancel.clone()));
    (cancel, task)
}

/// Lets the expiry task run what the clock just made due. The paused clock
/// does not move while we yield, so this never waits on time.
async fn settle() {
    for _ in 0..8 {
        tokio::task::yield_now().await;
    }
}

async fn advance_settle(by: Duration) {
    advance(by).await;
    settle().await;
}

/// Map, deadline set and count agree: one deadline per dialog, the one the
/// dialog holds. Only meaningful when no operation is in flight.
fn assert_consistent(dialogs: &Dialogs) {
    let deadlines = dialogs.deadlines();
    assert_eq!(dialogs.map.len(), dialogs.len());
    assert_eq!(deadlines.len(), dialogs.len());
    for (when, seq, key) in deadlines.iter() {
        let dialog = dialogs.map.get(key).expect("deadline without a dialog");
        assert_eq!((dialog.deadline, dialog.seq), (*when, *seq));
    }
}

#[tokio::test(start_paused = true)]
async fn pin_get_remove() {
    let dialogs = table(10);
    assert!(dialogs.is_empty());
    assert_eq!(dialogs.get(b"a@h"), None);

    assert_eq!(dialogs.pin(b"a@h", node(1)), Pin::Pinned);
    assert_eq!(dialogs.pin(b"b@h", node(2)), Pin::Pinned);
    assert_eq!(dialogs.get(b"a@h"), Some(node(1)));
    assert_eq!(dialogs.get(b"b@h"), Some(node(2)));
    assert_eq!(dialogs.len(), 2);
    assert_consistent(&dialogs);

    assert!(dialogs.remove(b"a@h", Removal::Bye));
    assert_eq!(dialogs.get(b"a@h"), None);
    assert!(!dialogs.remove(b"a@h", Removal::Bye), "already gone");
    assert!(dialogs.remove(b"b@h", Removal::Failed));
    assert!(!dialogs.remove(b"never@h", Removal::Failed));
    assert!(dialogs.is_empty());
    assert_consistent(&dialogs);
    assert_eq!(
        dialogs.stats(),
        DialogStats {
            removed_bye: 1,
            removed_failed: 1,
            ..DialogStats::default()
        }
    );
}

#[tokio::test(start_paused = true)]
async fn call_ids_compare_byte_for_byte() {
    let dialogs = table(10);
    dialogs.pin(b"abc@host", node(1));
    assert_eq!(dialogs.get(b"ABC@host"), None, "Call-ID is case-sensitive");
    assert_eq!(dialogs.get(b"abc@hos"), None);
    assert_eq!(dialogs.get(b"abc@host "), None);
    // Any bytes, not only UTF-8.
    dialogs.pin(&[0xff, 0x00, 0x80], node(2));
    assert_eq!(dialogs.get(&[0xff, 0x00, 0x80]), Some(node(2)));
}

#[tokio::test(start_paused = true)]
async fn repin_replaces_the_node() {
    let dialogs = table(10);
    dialogs.pin(b"a@h", node(1));
    // FreeSWITCH `sofia recover` on node 2 took the call over.
    assert_eq!(dialogs.pin(b"a@h", node(2)), Pin::Pinned);
    assert_eq!(dialogs.get(b"a@h"), Some(node(2)));
    assert_eq!(dialogs.len(), 1);
    assert_consistent(&dialogs);
}

#[tokio::test(start_paused = true)]
async fn expires_at_ttl_and_not_before() {
    let dialogs = table(10);
    let (_cancel, _task) = start_expiry(&dialogs);
    settle().await;
    dialogs.pin(b"a@h", node(1));

    advance_settle(TTL - MS).await;
    assert_eq!(dialogs.get(b"a@h"), Some(node(1)), "expired early");
    assert_eq!(dialogs.stats().evicted_ttl, 0);

    advance_settle(MS).await;
    assert_eq!(dialogs.get(b"a@h"), None, "still there at ttl");
    assert!(dialogs.is_empty());
    assert_eq!(dialogs.stats().evicted_ttl, 1);
    assert_consistent(&dialogs);
}

#[tokio::test(start_paused = true)]
async fn repin_pushes_expiry_later() {
    let dialogs = table(10);
    let (_cancel, _task) = start_expiry(&dialogs);
    dialogs.pin(b"a@h", node(1));
    settle().await;

    advance_settle(TTL / 2).await;
    dialogs.pin(b"a@h", node(2));
    assert_consistent(&dialogs);

    // The first pin's deadline passes: nothing happens.
    advance_settle(TTL / 2).await;
    assert_eq!(dialogs.get(b"a@h"), Some(node(2)));
    assert_eq!(dialogs.stats().evicted_ttl, 0);

    advance_settle(TTL / 2 - MS).await;
    assert_eq!(dialogs.get(b"a@h"), Some(node(2)));

    advance_settle(MS).await;
    assert_eq!(dialogs.get(b"a@h"), None);
    assert_eq!(dialogs.stats().evicted_ttl, 1);
    assert_consistent(&dialogs);
}

#[tokio::test(start_paused = true)]
async fn removed_by_bye_is_not_a_ttl_eviction() {
    let dialogs = table(10);
    let (_cancel, _task) = start_expiry(&dialogs);
    dialogs.pin(b"a@h", node(1));
    dialogs.pin(b"b@h", node(1));
    settle().await;

    advance_settle(TTL / 2).await;
    assert!(dialogs.remove(b"a@h", Removal::Bye));
    // Its deadline left with it: the set does not grow with ended calls.
    assert_eq!(dialogs.deadlines().len(), 1);

    advance_settle(TTL).await;
    assert_eq!(
        dialogs.stats(),
        DialogStats {
            evicted_ttl: 1, // b@h only
            removed_bye: 1,
            ..DialogStats::default()
        }
    );
    assert!(dialogs.is_empty());
    assert_consistent(&dialogs);
}

#[tokio::test(start_paused = true)]
async fn cap_refuses_new_call_ids_but_repins_existing_ones() {
    let dialogs = table(2);
    assert_eq!(dialogs.pin(b"a@h", node(1)), Pin::Pinned);
    assert_eq!(dialogs.pin(b"b@h", node(1)), Pin::Pinned);

    assert_eq!(dialogs.pin(b"c@h", node(1)), Pin::Full);
    assert_eq!(dialogs.pin(b"d@h", node(2)), Pin::Full);
    assert_eq!(dialogs.get(b"c@h"), None);
    assert_eq!(dialogs.len(), 2);
    assert_eq!(dialogs.stats().rejected_full, 2);

    // A takeover still re-pins at the cap.
    assert_eq!(dialogs.pin(b"a@h", node(2)), Pin::Pinned);
    assert_eq!(dialogs.get(b"a@h"), Some(node(2)));
    assert_eq!(dialogs.stats().rejected_full, 2);

    // An ended call frees its slot.
    dialogs.remove(b"b@h", Removal::Bye);
    assert_eq!(dialogs.pin(b"c@h", node(1)), Pin::Pinned);
    assert_eq!(dialogs.pin(b"d@h", node(1)), Pin::Full);
    assert_eq!(dialogs.stats().rejected_full, 3);
    assert_consistent(&dialogs);
}

#[tokio::test(start_paused = true)]
async fn expiry_frees_slots_under_the_cap() {
    let dialogs = table(1);
    let (_cancel, _task) = start_expiry(&dialogs);
    dialogs.pin(b"a@h", node(1));
    assert_eq!(dialogs.pin(b"b@h", node(1)), Pin::Full);
    settle().await;
    advance_settle(TTL).await;
    assert_eq!(dialogs.pin(b"b@h", node(1)), Pin::Pinned);
}

#[tokio::test(start_paused = true)]
async fn zero_cap_pins_nothing() {
    let dialogs = table(0);
    assert_eq!(dialogs.pin(b"a@h", node(1)), Pin::Full);
    assert!(dialogs.is_empty());
    assert_consistent(&dialogs);
}

#[tokio::test(start_paused = true)]
async fn expiry_task_stops_when_cancelled() {
    let dialogs = table(10);
    let (cancel, task) = start_expiry(&dialogs);
    dialogs.pin(b"a@h", node(1));
    settle().await;

    cancel.cancel();
    // The paused clock auto-advances to the timeout if the task hangs.
    tokio::time::timeout(Duration::from_secs(1), task)
        .await
        .expect("expiry task did not stop")
        .expect("expiry task panicked");

    // Nothing expires any more, and the table still works.
    advance_settle(TTL * 2).await;
    assert_eq!(dialogs.get(b"a@h"), Some(node(1)));
    assert_eq!(dialogs.stats().evicted_ttl, 0);
    assert_eq!(Arc::strong_count(&dialogs), 1, "task released its Arc");
}

#[tokio::test(start_paused = true)]
async fn expiry_task_stops_when_cancelled_while_idle() {
    let dialogs = table(10);
    let (cancel, task) = start_expiry(&dialogs);
    settle().await;
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(1), task)
        .await
        .expect("expiry task did not stop")
        .expect("expiry task panicked");
}

#[tokio::test(start_paused = true)]
async fn many_call_ids_expire_in_order() {
    const N: usize = 200;
    let dialogs = table(N);
    let (_cancel, _task) = start_expiry(&dialogs);
    let start = Instant::now();
    // One new call per second.
    for i in 0..N {
        dialogs.pin(&call(i), node(1 + (i % 2) as u8));
        advance_settle(Duration::from_secs(1)).await;
    }
    // Call i expires at start + i s + TTL; we are at start + N s.
    let first_deadline = start + TTL;
    advance_settle(first_deadline - Instant::now() - MS).await;
    assert_eq!(dialogs.len(), N, "nothing expires early");

    for i in 0..N {
        advance_settle(MS).await;
        assert_eq!(dialogs.get(&call(i)), None, "call {i} at its deadline");
        assert_eq!(dialogs.len(), N - i - 1);
        if i + 1 < N {
            assert!(dialogs.get(&call(i + 1)).is_some(), "call {} early", i + 1);
        }
        advance_settle(Duration::from_secs(1) - MS).await;
    }
    assert_eq!(dialogs.stats().evicted_ttl, N as u64);
    assert_consistent(&dialogs);
}

#[tokio::test(start_paused = true)]
async fn a_burst_pinned_at_one_instant_expires_together() {
    // More than one batch, to exercise the cut-short path.
    let n = EXPIRY_BATCH * 2 + 17;
    let dialogs = table(n);
    let (_cancel, _task) = start_expiry(&dialogs);
    for i in 0..n {
        assert_eq!(dialogs.pin(&call(i), node(1)), Pin::Pinned);
    }
    // Equal instants stay distinct entries (the seq tells them apart).
    assert_eq!(dialogs.deadlines().len(), n);
    settle().await;

    advance_settle(TTL - MS).await;
    assert_eq!(dialogs.len(), n);
    advance(MS).await;
    // Each batch is one more round of the task.
    for _ in 0..8 {
        settle().await;
    }
    assert!(dialogs.is_empty());
    assert_eq!(dialogs.stats().evicted_ttl, n as u64);
    assert_consistent(&dialogs);
}

#[tokio::test(start_paused = true)]
async fn wakes_for_the_first_pin_after_idling() {
    let dialogs = table(10);
    let (_cancel, _task) = start_expiry(&dialogs);
    // Empty table: the task waits with no deadline at all.
    settle().await;
    dialogs.pin(b"a@h", node(1));
    advance_settle(TTL).await;
    assert_eq!(dialogs.get(b"a@h"), None);

    // And again after the table emptied.
    settle().await;
    dialogs.pin(b"b@h", node(1));
    advance_settle(TTL).await;
    assert_eq!(dialogs.get(b"b@h"), None);
    assert_eq!(dialogs.stats().evicted_ttl, 2);
}

/// With one TTL per table a later pin only gets an earlier deadline through
/// the race between reading the clock and taking the mutex (see
/// `Dialogs::schedule`); `pin_until` stands in for it.
#[tokio::test(start_paused = true)]
async fn wakes_early_for_an_earlier_deadline() {
    let dialogs = table(10);
    let (_cancel, _task) = start_expiry(&dialogs);
    dialogs.pin(b"late@h", node(1));
    settle().await; // now sleeping until now + TTL

    let soon = Duration::from_secs(10);
    dialogs.pin_until(b"early@h", node(2), Instant::now() + soon);
    advance_settle(soon).await;
    assert_eq!(dialogs.get(b"early@h"), None, "task overslept");
    assert_eq!(dialogs.get(b"late@h"), Some(node(1)));
    assert_eq!(dialogs.stats().evicted_ttl, 1);
}

#[tokio::test(start_paused = true)]
async fn removing_the_earliest_deadline_is_harmless() {
    let dialogs = table(10);
    let (_cancel, _task) = start_expiry(&dialogs);
    dialogs.pin(b"a@h", node(1));
    advance(Duration::from_secs(1)).await;
    dialogs.pin(b"b@h", node(1));
    settle().await; // sleeping until a's deadline

    dialogs.remove(b"a@h", Removal::Bye);
    advance_settle(TTL - Duration::from_secs(1)).await;
    assert_eq!(dialogs.get(b"b@h"), Some(node(1)));
    advance_settle(Duration::from_secs(1)).await;
    assert_eq!(dialogs.get(b"b@h"), None);
    assert_eq!(dialogs.stats().evicted_ttl, 1);
}

/// A pin between the task taking a deadline and removing the dialog wins:
/// the dialog's seq no longer matches.
#[tokio::test(start_paused = true)]
async fn a_repin_after_the_deadline_was_taken_keeps_the_dialog() {
    let dialogs = table(10);
    dialogs.pin(b"a@h", node(1));
    advance(TTL).await;

    let mut due = Vec::new();
    assert_eq!(dialogs.take_due(Instant::now(), &mut due), None);
    assert_eq!(due.len(), 1);

    dialogs.pin(b"a@h", node(2));
    dialogs.evict(&mut due);
    assert!(due.is_empty());
    assert_eq!(dialogs.get(b"a@h"), Some(node(2)));
    assert_eq!(dialogs.stats().evicted_ttl, 0);
    assert_consistent(&dialogs);
}

/// A BYE between the task taking a deadline and removing the dialog: counted
/// once, as a BYE.
#[tokio::test(start_paused = true)]
async fn a_bye_after_the_deadline_was_taken_is_counted_once() {
    let dialogs = table(10);
    dialogs.pin(b"a@h", node(1));
    advance(TTL).await;

    let mut due = Vec::new();
    dialogs.take_due(Instant::now(), &mut due);
    assert!(dialogs.remove(b"a@h", Removal::Bye));
    dialogs.evict(&mut due);
    assert_eq!(
        dialogs.stats(),
        DialogStats {
            removed_bye: 1,
            ..DialogStats::default()
        }
    );
    assert!(dialogs.is_empty());
    assert_consistent(&dialogs);
}

#[test]
fn concurrent_pins_and_removes_stay_consistent() {
    const THREADS: usize = 8;
    const CALLS: usize = 64;
    let dialogs = Dialogs::new(TTL, usize::MAX);
    std::thread::scope(|scope| {
        for t in 0..THREADS {
            let dialogs = &dialogs;
            scope.spawn(move || {
                for round in 0..200 {
                    // Every thread works the same Call-IDs.
                    let id = call((round * 7 + t) % CALLS);
                    match (round + t) % 3 {
                        0 | 1 => {
                            assert_eq!(dialogs.pin(&id, node(t as u8)), Pin::Pinned);
                        }
                        _ => {
                            dialogs.remove(&id, Removal::Bye);
                        }
                    }
                }
            });
        }
    });
    assert_consistent(&dialogs);
}

#[test]
fn concurrent_new_pins_respect_the_cap_exactly() {
    const THREADS: usize = 8;
    const EACH: usize = 100;
    const MAX: usize = 64;
    let dialogs = Dialogs::new(TTL, MAX);
    let pinned: usize = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                let dialogs = &dialogs;
                scope.spawn(move || {
                    (0..EACH)
                        .filter(|i| dialogs.pin(&call(t * EACH + i), node(1)) == Pin::Pinned)
                        .count()
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).sum()
    });
    assert_eq!(pinned, MAX);
    assert_eq!(dialogs.len(), MAX);
    assert_eq!(dialogs.stats().rejected_full, (THREADS * EACH - MAX) as u64);
    assert_consistent(&dialogs);
}

#[test]
fn debug_shows_size_not_call_ids() {
    let dialogs = Dialogs::new(TTL, 5);
    dialogs.pin(b"secret@h", node(1));
    let shown = format!("{dialogs:?}");
    assert!(shown.contains("len: 1"), "{shown}");
    assert!(!shown.contains("secret"), "{shown}");
}

/// The per-node count (what a drain waits for) follows pins, re-pins,
/// removals and TTL expiry.
#[tokio::test(start_paused = true)]
async fn dialogs_per_node_follow_every_change() {
    let dialogs = table(100);
    let (cancel, task) = start_expiry(&dialogs);
    for i in 0..3 {
        assert!(matches!(dialogs.pin(&call(i), node(1)), Pin::Pinned));
    }
    assert!(matches!(dialogs.pin(&call(3), node(2)), Pin::Pinned));
    assert_eq!(
        (dialogs.pinned_to(node(1)), dialogs.pinned_to(node(2))),
        (3, 1)
    );
    // Same node again: no change; takeover by node 2: moves one.
    dialogs.pin(&call(0), node(1));
    dialogs.pin(&call(1), node(2));
    assert_eq!(
        (dialogs.pinned_to(node(1)), dialogs.pinned_to(node(2))),
        (2, 2)
    );
    assert!(dialogs.remove(&call(2), Removal::Bye));
    assert!(!dialogs.remove(&call(2), Removal::Bye));
    assert_eq!(dialogs.pinned_to(node(1)), 1);
    advance_settle(TTL + MS).await;
    assert_eq!(
        (dialogs.pinned_to(node(1)), dialogs.pinned_to(node(2))),
        (0, 0)
    );
    assert_eq!(dialogs.pinned_to(node(9)), 0);
    cancel.cancel();
    task.await.unwrap();
}
