//! Two networks' nodes — the code each appliance worker runs — allocate
//! nothing per query in steady state: device datagrams into A's node, its
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
