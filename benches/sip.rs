//! Message-layer throughput: parse, and parse + the forwarding edit, on a
//! ~900-byte INVITE with SDP, two Via, Record-Route, Route and Contact
//! (`tests/fixtures/bench/invite.sip`). Also prints heap allocations per
//! message once the editor's buffers are warm (counted by a wrapping
//! global allocator), and the branch generation every forwarded request
//! pays (a fresh random branch, one derived by HMAC from the sender's).
//!
//! Run: `cargo bench --bench sip`.

use std::hint::black_box;
use std::net::SocketAddr;

use criterion::{criterion_group, Criterion, Throughput};
use sipedge::sip::{Editor, Message};
use sipedge::transaction::BranchGen;
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

const INVITE: &[u8] = include_bytes!("../tests/fixtures/bench/invite.sip");
const VIA: &[u8] = b"SIP/2.0/UDP 203.0.113.5:5060;branch=z9hG4bKd8a3f0.1c9e4b7a20f3;rport";
const RR: &[u8] = b"<sip:203.0.113.5;lr;n=a>";

fn source() -> SocketAddr {
    "198.51.100.7:5060".parse().unwrap()
}

/// The forwarding edit of a proxy: parse, then new top Via, Record-Route,
/// Max-Forwards - 1, Route pop.
fn parse_edit<'e>(ed: &'e mut Editor, bytes: &[u8]) -> &'e [u8] {
    let msg = Message::parse(bytes).expect("bench INVITE parses");
    let mut e = ed.edit(&msg);
    e.insert_via(VIA);
    e.insert_record_route(RR);
    e.decrement_max_forwards().expect("Max-Forwards > 0");
    e.pop_route();
    e.finish()
}

/// What the proxy does to an initial INVITE before sending it to a node:
/// the above plus the sanity checks and received/rport on the sender's Via.
fn forward<'e>(ed: &'e mut Editor, bytes: &[u8], src: SocketAddr) -> &'e [u8] {
    let msg = Message::parse(bytes).expect("bench INVITE parses");
    msg.validate().expect("bench INVITE is valid");
    let mut e = ed.edit(&msg);
    e.set_received(src).expect("top Via");
    e.insert_via(VIA);
    e.insert_record_route(RR);
    e.decrement_max_forwards().expect("Max-Forwards > 0");
    e.pop_route();
    e.finish()
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("sip");
    g.throughput(Throughput::Elements(1));
    g.bench_function("parse", |b| {
        b.iter(|| {
            let m = Message::parse(black_box(INVITE)).unwrap();
            black_box(m.header_count());
        })
    });
    g.bench_function("parse_validate", |b| {
        b.iter(|| {
            let m = Message::parse(black_box(INVITE)).unwrap();
            m.validate().unwrap();
            black_box(m.header_count());
        })
    });
    let mut ed = Editor::new();
    let src = source();
    g.bench_function("parse_edit", |b| {
        b.iter(|| black_box(parse_edit(&mut ed, black_box(INVITE)).len()))
    });
    g.bench_function("parse_validate_edit", |b| {
        b.iter(|| black_box(forward(&mut ed, black_box(INVITE), src).len()))
    });
    let branches = BranchGen::default();
    g.bench_function("branch_next", |b| {
        b.iter(|| black_box(branches.next().len()))
    });
    g.bench_function("branch_derived", |b| {
        b.iter(|| {
            black_box(
                branches
                    .derived(black_box(b"z9hG4bKd8a3f0.1c9e4b7a20f3"), src)
                    .len(),
            )
        })
    });
    g.finish();
}

/// Allocations per message for parse + validate + edit with a warm editor
/// (the wider of the two edit paths).
fn report_allocations() {
    let mut ed = Editor::new();
    let src = source();
    forward(&mut ed, INVITE, src);
    const N: usize = 100_000;
    let region = Region::new(GLOBAL);
    for _ in 0..N {
        black_box(forward(&mut ed, black_box(INVITE), src).len());
    }
    let stats = region.change();
    println!(
        "sip/parse_validate_edit: {} bytes in, {} bytes out, {:.3} allocations per message ({} over {N})",
        INVITE.len(),
        forward(&mut ed, INVITE, src).len(),
        stats.allocations as f64 / N as f64,
        stats.allocations,
    );
    let branches = BranchGen::default();
    let region = Region::new(GLOBAL);
    for _ in 0..N {
        black_box(branches.next().len());
        black_box(
            branches
                .derived(black_box(b"z9hG4bKd8a3f0.1c9e4b7a20f3"), src)
                .len(),
        );
    }
    println!(
        "branch next + derived: {} allocations over {N}",
        region.change().allocations
    );
}

criterion_group!(benches, bench);

fn main() {
    report_allocations();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
