//! The whole role pipeline in one thread with no IO: WA(A) → OGPS(A) →
//! IGPS(B) → HSS(B) → PS(B) → WA(A), with credentials, credit, buddy list,
//! consent and charge records all checked, on the shared numbering table.
//!
//! `cargo bench -p presence-bench --bench roles`

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use presence_bench::shared_table_path;
use presence_engine::sim::{Pipeline, SimNetwork};
use presence_engine::table::NumberingTable;

const BATCH: usize = 10_000;

fn roles(c: &mut Criterion) {
    let world = Arc::new(NumberingTable::load(&shared_table_path(), None).expect("shared table"));
    let network = |name| SimNetwork::from_table(&world, name).expect("network in the table");
    let (a, b) = (network("o2.gb"), network("t-mobile.de"));
    let mut group = c.benchmark_group("roles");
    group.throughput(Throughput::Elements(BATCH as u64));
    // 1,000 watchers and 1,000 targets: every role's state in the caches, so
    // this measures the roles' own work. 100,000 of each: state far beyond
    // the caches, so each query also pays its DRAM misses (subscriber
    // records, pending and window tables).
    for population in [1_000, 100_000] {
        let mut pipeline = Pipeline::new(&world, &a, &b, population, population);
        pipeline.run(100_000);
        group.bench_function(format!("pipeline_{population}_subscribers"), |bench| {
            bench.iter(|| {
                let answered = pipeline.run(BATCH);
                assert_eq!(answered, BATCH as u64);
                answered
            })
        });
    }
    group.finish();
}

criterion_group!(benches, roles);
criterion_main!(benches);
