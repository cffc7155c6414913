//! The presence flow under faults: several networks of two nodes each —
//! the code the appliance ships — in a deterministic simulation
//! (`presence_engine::sim`), many seeds.
//!
//! `SIM_SEED=<n> cargo test -p presence-tests --test simulation` replays one
//! seed; `SIM_SEEDS=<count>` runs more than the default 200.

use std::path::Path;
use std::sync::Arc;

use presence_engine::sim::{self, SimConfig, SimNetwork, SimReport};
use presence_engine::table::NumberingTable;

const NETWORKS: [&str; 3] = ["o2.gb", "t-mobile.de", "batelco.bs"];

fn world() -> (Arc<NumberingTable>, Vec<SimNetwork>) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/msisdn-prefixes.csv");
    let table = NumberingTable::load(&path, None).expect("shared table");
    let networks = NETWORKS
        .iter()
        .map(|name| SimNetwork::from_table(&table, name).expect("network in the table"))
        .collect();
    (Arc::new(table), networks)
}

fn run_seed(seed: u64) -> SimReport {
    let (table, networks) = world();
    sim::run(&SimConfig::standard(seed, networks), &table)
}

fn assert_clean(report: &SimReport) {
    assert!(
        report.violations.is_empty(),
        "SIM_SEED={} fails:\n{}",
        report.seed,
        report
            .violations
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn one_seed_exercises_every_outcome_and_every_fault() {
    let report = run_seed(1);
    assert_clean(&report);
    eprintln!("{report:?}");
    for outcome in [
        "attached",
        "detached",
        "not_available",
        "unknown_network",
        "unauthenticated",
        "credit_exhausted",
        "charging_unavailable",
    ] {
        assert!(
            report.outcomes.get(outcome).copied().unwrap_or(0) > 0,
            "seed 1 never produced {outcome}: {:?}",
            report.outcomes
        );
    }
    for fault in [
        "restart",
        "ingress_down",
        "move",
        "range_reassignment",
        "port",
        "consent",
        "buddies",
        "journal_failure",
    ] {
        assert!(
            report.faults.get(fault).copied().unwrap_or(0) > 0,
            "seed 1 never injected {fault}: {:?}",
            report.faults
        );
    }
    assert!(report.charges > 0 && report.lost > 0 && report.retransmissions > 0);
    assert!(
        report.cross_worker > 0,
        "the steering's misses are handed over"
    );
    assert!(
        report.attempts > report.queries,
        "devices asked again after a restart"
    );
}

#[test]
fn a_seed_replays_exactly() {
    let a = run_seed(7);
    let b = run_seed(7);
    assert_eq!(a.outcomes, b.outcomes);
    assert_eq!(
        (
            a.charges,
            a.border_frames,
            a.lost,
            a.cross_worker,
            a.attempts
        ),
        (
            b.charges,
            b.border_frames,
            b.lost,
            b.cross_worker,
            b.attempts
        )
    );
}

#[test]
fn many_seeds_hold_every_checker() {
    if let Ok(seed) = std::env::var("SIM_SEED") {
        let report = run_seed(seed.parse().expect("SIM_SEED is a number"));
        eprintln!("{report:?}");
        return assert_clean(&report);
    }
    let seeds: u64 = std::env::var("SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let (table_path_world, networks) = world();
    drop(table_path_world);
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(4) as u64;
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let networks = networks.clone();
            std::thread::spawn(move || {
                let mut failures = Vec::new();
                let mut queries = 0;
                for seed in (1000 + t..1000 + seeds).step_by(threads as usize) {
                    // Each seed gets a fresh world table: porting changes it.
                    let (table, _) = world();
                    let report = sim::run(&SimConfig::standard(seed, networks.clone()), &table);
                    queries += report.queries;
                    if !report.violations.is_empty() {
                        failures.push(report);
                    }
                }
                (failures, queries)
            })
        })
        .collect();
    let mut total = 0;
    for handle in handles {
        let (failures, queries) = handle.join().unwrap();
        total += queries;
        if let Some(report) = failures.first() {
            assert_clean(report);
        }
    }
    eprintln!("{seeds} seeds, {total} queries, every checker held");
}
