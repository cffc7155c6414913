//! Watching (issue 17): publications fanned out to the subscriptions of
//! watchers in another network, in one thread, by B's node — the code the
//! appliance runs — with no IO: each publication checked (its MAC), its
//! subscriptions' Notifies built, queued behind the held answers, released
//! by the journal's report and encoded into border frames.
//!
//! - `watching/fanout_20_watchers`: 1,000 targets, each watched by the same
//!   20 watchers of o2.gb ([`FanOut`]); each iteration is one round of a
//!   publication per target (the status alternating, a second of node time
//!   apart so no notification is coalesced): 20,000 notifications.
//!   Throughput is in notifications; the publications are signed in the
//!   timed loop too.
//!
//! `cargo bench -p presence-bench --bench watching`

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use presence_bench::shared_table_path;
use presence_codec::{PresenceState, Reachability};
use presence_engine::lab::fanout::FanOut;
use presence_engine::table::NumberingTable;

const TARGETS: u64 = 1_000;
const WATCHERS: u64 = 20;

fn watching(c: &mut Criterion) {
    let world = Arc::new(NumberingTable::load(&shared_table_path(), None).expect("shared table"));
    // A day: the rounds (a second of node time each) never reach the end.
    let mut fan_out = FanOut::new(&world, TARGETS, WATCHERS, 86_400).expect("set-up");
    let granted = fan_out.node.role_counters().ps.watches_granted;
    assert_eq!(granted, TARGETS * WATCHERS, "every subscription granted");
    let device = "10.0.1.1:4000".parse().expect("address");
    let mut now_ms = 1_000u64;
    let mut group = c.benchmark_group("watching");
    group.throughput(Throughput::Elements(TARGETS * WATCHERS));
    group.bench_function("fanout_20_watchers", |bench| {
        bench.iter(|| {
            now_ms += 1_000;
            // Targets start detached: the first round attaches them.
            let state = if (now_ms / 1_000).is_multiple_of(2) {
                PresenceState::Attached(Reachability::PACKET_DATA_AND_SMS)
            } else {
                PresenceState::Detached
            };
            let before = fan_out.node.role_counters().ps.notifications;
            for i in 0..fan_out.targets.len() {
                let frame = fan_out.publication(i, state, now_ms);
                fan_out.node.handle_datagram(now_ms * 1000, device, &frame);
            }
            let bytes = fan_out.settle(now_ms * 1000);
            let sent = fan_out.node.role_counters().ps.notifications - before;
            assert_eq!(sent, TARGETS * WATCHERS, "every subscription notified");
            bytes
        });
    });
    group.finish();
}

criterion_group!(benches, watching);
criterion_main!(benches);
