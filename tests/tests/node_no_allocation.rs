//! Two networks' nodes — the code each appliance worker runs — allocate
//! nothing per query, nor per notification, in steady state: device datagrams into A's node, its
//! border frames into B's, B's records journaled and made durable, B's
//! answers back into A's, A's answers out to the device, every frame's
//! buffer handed back for reuse, as the runtime does ([`NodePair`]). A
//! counting global allocator watches 32,000 queries after a warm-up that
//! laps the presence server's duplicate window (its ring is allocated a
//! chunk at a time).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::Path;
use std::sync::Arc;

use presence_engine::sim::{NodePair, NodePairSettings, SimNetwork};
use presence_engine::table::NumberingTable;

struct Counting;

thread_local! {
    // Const-initialised and without a destructor: reading it allocates
    // nothing, so the allocator may use it.
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn two_nodes_in_steady_state_allocate_nothing_per_query() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/msisdn-prefixes.csv");
    let world = Arc::new(NumberingTable::load(&path, None).unwrap());
    let network = |name| SimNetwork::from_table(&world, name).unwrap();
    // Worker 1 of 2: steering and the peer-worker choice are in play. A
    // virtual 1,600 queries/s, so a 4,096-slot window covers what the
    // presence server must remember and laps in a short warm-up.
    let settings = NodePairSettings {
        worker: 1,
        workers: 2,
        subscribers: 256,
        per_datagram: 16,
        step_us: 10_000,
        window_slots: 4096,
    };
    let mut pair = NodePair::new(&world, &network("o2.gb"), &network("t-mobile.de"), settings);
    assert_eq!(pair.run(9_600), 9_600, "warm-up queries answered");
    let before = allocations();
    let answered = pair.run(32_000);
    let allocated = allocations() - before;
    assert_eq!(answered, 32_000, "every query shows B's status");
    assert_eq!(allocated, 0, "allocations during 32,000 queries");
}

#[test]
fn a_publication_fanned_out_to_its_watchers_allocates_nothing_per_notification() {
    use presence_codec::{PresenceState, Reachability};
    use presence_engine::lab::fanout::FanOut;

    const TARGETS: u64 = 100;
    const WATCHERS: u64 = 20;
    const ROUNDS: u64 = 30;
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/msisdn-prefixes.csv");
    let world = Arc::new(NumberingTable::load(&path, None).unwrap());
    let mut fan_out = FanOut::new(&world, TARGETS, WATCHERS, 3_600).unwrap();
    // Every round's publications, signed ahead (a second apart, so no
    // notification is coalesced), the status alternating.
    let at_ms = |round: u64| 1_000 + round * 1_000;
    let rounds: Vec<Vec<Vec<u8>>> = (1..=ROUNDS)
        .map(|round| {
            let state = if round % 2 == 1 {
                PresenceState::Attached(Reachability::PACKET_DATA_AND_SMS)
            } else {
                PresenceState::Detached
            };
            (0..fan_out.targets.len())
                .map(|i| fan_out.publication(i, state, at_ms(round)))
                .collect()
        })
        .collect();
    let device = "10.0.1.1:4000".parse().unwrap();
    let run = |fan_out: &mut FanOut, rounds: &[Vec<Vec<u8>>], first: u64| {
        for (r, frames) in (first..).zip(rounds) {
            let now_us = at_ms(r) * 1000;
            for frame in frames {
                fan_out.node.handle_datagram(now_us, device, frame);
            }
            fan_out.settle(now_us);
        }
    };
    // Warm-up: the queues reach their working size.
    run(&mut fan_out, &rounds[..10], 1);
    let notified = fan_out.node.role_counters().ps.notifications;
    let before = allocations();
    run(&mut fan_out, &rounds[10..], 11);
    let allocated = allocations() - before;
    let notifications = fan_out.node.role_counters().ps.notifications - notified;
    assert_eq!(notifications, (ROUNDS - 10) * TARGETS * WATCHERS);
    assert_eq!(
        allocated, 0,
        "allocations during {notifications} notifications"
    );
}
