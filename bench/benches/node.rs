//! The node path with no IO: device datagrams through worker `i` of A's
//! gateway and worker `i` of B's ([`NodePair`]), frames encoded and decoded,
//! records journaled (durable at once), buffers recycled, as the runtime
//! drives them.
//!
//! - `node/pair_*`: one pair on one thread, queries per second.
//! - `node_scaling/threads_N`: N threads, each its own pair of workers
//!   `i` of N (the shared-nothing design: nothing is shared between
//!   threads but the read-only numbering table), each running the same
//!   number of queries. With perfect scaling N threads take as long as one;
//!   the time per query reported is wall time over one thread's queries,
//!   so its ratio to `threads_1` is the CPU per query at N workers over
//!   that at 1, with the IO, the kernel and the load generator left out.
//!
//! `cargo bench -p presence-bench --bench node`

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use presence_bench::shared_table_path;
use presence_engine::sim::{NodePair, NodePairSettings, SimNetwork};
use presence_engine::table::NumberingTable;

/// Large arenas on huge pages when `PRESENCE_BENCH_HUGE_PAGES=1`, as
/// `[network] huge_pages = true` does in the appliance.
#[global_allocator]
static ALLOCATOR: presence_engine::runtime::hugepages::HugePageAlloc =
    presence_engine::runtime::hugepages::HugePageAlloc;

/// Queries per measured iteration.
const BATCH: u64 = 16_000;

fn pair(world: &Arc<NumberingTable>, worker: u16, workers: u16, subscribers: usize) -> NodePair {
    let network = |name| SimNetwork::from_table(world, name).expect("network in the table");
    let settings = NodePairSettings {
        worker,
        workers,
        subscribers,
        ..NodePairSettings::default()
    };
    let mut pair = NodePair::new(world, &network("o2.gb"), &network("t-mobile.de"), settings);
    // Lap the duplicate window once, so its ring is complete.
    pair.run(300_000);
    pair
}

fn node(c: &mut Criterion) {
    presence_engine::runtime::hugepages::set_enabled(
        std::env::var_os("PRESENCE_BENCH_HUGE_PAGES").is_some_and(|v| v == "1"),
    );
    let world = Arc::new(NumberingTable::load(&shared_table_path(), None).expect("shared table"));
    let mut group = c.benchmark_group("node");
    group.throughput(Throughput::Elements(BATCH));
    for subscribers in [1_000, 100_000] {
        let mut pair = pair(&world, 0, 1, subscribers);
        group.bench_function(format!("pair_{subscribers}_subscribers"), |bench| {
            bench.iter(|| {
                let answered = pair.run(BATCH);
                assert_eq!(answered, BATCH);
                answered
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("node_scaling");
    group.throughput(Throughput::Elements(BATCH));
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    for threads in [1u16, 2] {
        if usize::from(threads) > cores {
            continue;
        }
        // Each thread's pair, built once and moved in and out of the
        // threads of each measurement.
        let mut pairs: Vec<NodePair> = (0..threads)
            .map(|i| pair(&world, i, threads, 100_000))
            .collect();
        group.bench_function(format!("threads_{threads}"), |bench| {
            bench.iter_custom(|iterations| {
                let start = Arc::new(Barrier::new(pairs.len()));
                let handles: Vec<_> = pairs
                    .drain(..)
                    .map(|mut pair| {
                        let start = start.clone();
                        std::thread::spawn(move || {
                            start.wait();
                            let began = Instant::now();
                            for _ in 0..iterations {
                                assert_eq!(pair.run(BATCH), BATCH);
                            }
                            (began.elapsed(), pair)
                        })
                    })
                    .collect();
                let mut slowest = Duration::ZERO;
                for handle in handles {
                    let (took, pair) = handle.join().expect("a pair's thread");
                    slowest = slowest.max(took);
                    pairs.push(pair);
                }
                slowest
            })
        });
    }
    group.finish();
}

criterion_group!(benches, node);
criterion_main!(benches);
