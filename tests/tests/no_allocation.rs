//! The role pipeline allocates nothing per query in steady state: a counting
//! global allocator watches 100,000 queries run through WA → OGPS → IGPS →
//! HSS → PS → WA after a warm-up. Steady state starts once the presence
//! server's duplicate window has gone round once: its ring is allocated a
//! chunk at a time as transactions first reach each chunk.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use presence_engine::sim::{Pipeline, SimNetwork};
use presence_engine::table::NumberingTable;

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn steady_state_queries_allocate_nothing() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/msisdn-prefixes.csv");
    let world = Arc::new(NumberingTable::load(&path, None).unwrap());
    let mut pipeline = Pipeline::new(
        &world,
        &SimNetwork::from_table(&world, "o2.gb").unwrap(),
        &SimNetwork::from_table(&world, "t-mobile.de").unwrap(),
        1000,
        1000,
    );
    // The pipeline's ring has 2^21 slots: one lap, and a little more.
    assert!(
        pipeline.run((1 << 21) + 20_000) > 0,
        "warm-up answers queries"
    );
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    let answered = pipeline.run(100_000);
    let allocations = ALLOCATIONS.load(Ordering::Relaxed) - before;
    assert_eq!(answered, 100_000, "every query answered with B's status");
    assert_eq!(allocations, 0, "allocations during 100,000 queries");
    assert_eq!(
        pipeline.charged,
        (1 << 21) + 120_000,
        "one charge record per query"
    );
}
