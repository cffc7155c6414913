//! End to end: bursts of 1,024 external, permitted queries from network A's
//! devices through both appliances (WA → OGPS → border gateways over TLS →
//! IGPS → HSS → PS and back) and their answers, with every check on:
//! credentials, prepay credit, buddy lists, consent, charge records. Both
//! appliances run embedded (one worker each) on loopback; 10,000
//! subscribers each. The figure is answered queries per second of wall time
//! for a burst, all IO included; the open-loop rates are `presence-load`'s
//! job (`BENCHMARKS.md`).
//!
//! `cargo bench -p presence-bench --bench e2e`

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use presence_bench::load::driver::{Driver, Responder, StepSpec};
use presence_bench::load::plan::{Mix, Workload};
use presence_bench::load::population::Population;
use presence_bench::load::topology::{ApplianceSettings, Networks, Topology, A_NAME, B_NAME};
use presence_bench::shared_table_path;
use presence_engine::lab::TwoNetworkSettings;

const BURST: u64 = 1024;
const SUBSCRIBERS: usize = 10_000;

fn e2e(c: &mut Criterion) {
    let root = std::env::temp_dir().join(format!("presence-e2e-bench-{SUBSCRIBERS}"));
    let (networks, _) =
        Networks::prepare(&root, &shared_table_path(), SUBSCRIBERS, SUBSCRIBERS).expect("networks");
    let settings = ApplianceSettings {
        appliance: TwoNetworkSettings {
            workers: 1,
            poll_mode: false,
            window_slots: 1 << 20,
            metrics: false,
            steering: true,
            pin_workers: false,
            io_backend: presence_engine::config::IoBackend::Auto,
        },
        cpus: Vec::new(),
    };
    let (topology, targets) = Topology::embedded(&networks, &settings).expect("appliances");
    let population = Population::load_folders(&root, A_NAME, B_NAME).expect("population");
    let mut driver = Driver::new(&population, targets, Responder::Appliance, 1).expect("driver");
    // A burst: every query due at once, then wait for every answer.
    let rate = 1e9;
    let spec = StepSpec {
        rate,
        seconds: BURST as f64 / rate,
        timeout: Duration::from_secs(3),
        workload: Workload::Mix(Mix::default(), 7),
    };
    let warm = driver.run(&spec, &mut |_| {}).expect("warm-up burst");
    assert_eq!(warm.answered, BURST, "the appliances answer");
    let mut group = c.benchmark_group("e2e");
    group.throughput(Throughput::Elements(BURST));
    group.measurement_time(Duration::from_secs(10));
    group.bench_function("two_networks_embedded/burst_of_1024_queries", |b| {
        b.iter_custom(|iters| {
            let started = Instant::now();
            for _ in 0..iters {
                let result = driver.run(&spec, &mut |_| {}).expect("burst");
                assert_eq!(result.lost, 0, "every query answered");
            }
            started.elapsed()
        })
    });
    group.finish();
    drop(driver);
    topology.stop();
}

criterion_group!(benches, e2e);
criterion_main!(benches);
