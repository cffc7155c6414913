//! OGPS numbering-table lookups (step 5): the shared table alone, and with ten
//! million random ported numbers; single and batched (prefetching) lookups;
//! loading the shared table; applying one ported-number change while another
//! thread keeps reading.
//!
//! `cargo bench -p presence-bench --bench table`

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use presence_bench::{random_msisdns, shared_rows, shared_table_path, XorShift};
use presence_codec::Msisdn;
use presence_engine::table::{NetworkId, NumberingTable, PortedMap, TableVersion};

/// Lookups per criterion iteration.
const LOOKUPS: usize = 4096;
/// Distinct probe numbers, cycled through (far more than the caches hold).
const PROBES: usize = 1 << 20;
/// Ported numbers in the large table.
const PORTED: usize = 10_000_000;

fn lookups(c: &mut Criterion, name: &str, version: &TableVersion, probes: &[Msisdn]) {
    let mut group = c.benchmark_group(format!("table/{name}"));
    group.throughput(Throughput::Elements(LOOKUPS as u64));
    let mut offset = 0usize;
    group.bench_function("lookup", |b| {
        b.iter(|| {
            let window = &probes[offset..offset + LOOKUPS];
            offset = (offset + LOOKUPS) % (probes.len() - LOOKUPS);
            let mut found = 0u32;
            for &m in window {
                found += u32::from(version.lookup(black_box(m)).is_some());
            }
            found
        })
    });
    let mut out = vec![None; LOOKUPS];
    group.bench_function("lookup_batch", |b| {
        b.iter(|| {
            let window = &probes[offset..offset + LOOKUPS];
            offset = (offset + LOOKUPS) % (probes.len() - LOOKUPS);
            version.lookup_batch(black_box(window), &mut out);
            out[LOOKUPS - 1]
        })
    });
    group.finish();
}

/// The shared table plus `PORTED` random numbers ported to random networks.
fn with_ported(table: &NumberingTable, rows_probe: &[Msisdn]) -> NumberingTable {
    let base = table.snapshot();
    let networks = base.names().len() as u64;
    let mut rng = XorShift::new(0x9077);
    // `entries` is allocated before the RSS baseline and freed after the
    // second reading (the build's own scratch is freed inside it), so the
    // difference is the map itself.
    let mut entries: Vec<(Msisdn, NetworkId)> = rows_probe
        .iter()
        .map(|&m| (m, NetworkId((rng.next_u64() % networks) as u16)))
        .collect();
    entries.sort_unstable_by_key(|(m, _)| *m);
    entries.dedup_by_key(|(m, _)| *m);
    entries.truncate(PORTED);
    assert_eq!(entries.len(), PORTED, "enough distinct numbers");
    let rss_before = resident_bytes();
    let ported = PortedMap::build(&entries, 0x5eed).expect("distinct");
    let rss_after = resident_bytes();
    drop(entries);
    eprintln!(
        "ported: resident memory grew by {} bytes: {:.1} bytes per ported number",
        rss_after.saturating_sub(rss_before),
        rss_after.saturating_sub(rss_before) as f64 / ported.len() as f64
    );
    NumberingTable::new(base.prefixes().clone(), ported, base.names().clone())
}

/// Resident set size of this process (Linux), in bytes; 0 elsewhere.
fn resident_bytes() -> usize {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<usize>().ok())
        .map_or(0, |pages| pages * 4096)
}

fn table(c: &mut Criterion) {
    let rows = shared_rows();
    let table = NumberingTable::load(&shared_table_path(), None).expect("shared table");
    let probes = random_msisdns(&rows, PROBES, 1);
    {
        let v = table.snapshot();
        eprintln!(
            "shared table: {} prefixes, {} networks, {} segments, {} bytes",
            v.prefixes().len(),
            v.names().len(),
            v.prefixes().segment_count(),
            v.prefixes().memory_bytes()
        );
    }

    lookups(c, "shared", &table.snapshot(), &probes);

    let mut group = c.benchmark_group("table/load");
    group.sample_size(10);
    group.bench_function("shared_csv", |b| {
        b.iter(|| NumberingTable::load(&shared_table_path(), None).expect("loads"))
    });
    group.finish();

    let ported_numbers = random_msisdns(&rows, PORTED + PORTED / 50, 2);
    let big = Arc::new(with_ported(&table, &ported_numbers));
    drop(ported_numbers);
    let v = big.snapshot();
    eprintln!(
        "ported: {} numbers, {} bytes accounted, {:.1} bytes per ported number",
        v.ported().len(),
        v.ported().memory_bytes(),
        v.ported().memory_bytes() as f64 / v.ported().len() as f64
    );
    // Probes: a separate draw, so almost none is ported: each lookup pays the
    // override probe and then the prefix lookup (the expensive case).
    let mixed = random_msisdns(&rows, PROBES, 3);
    lookups(c, "shared_plus_10m_ported", &v, &mixed);
    drop(v);

    // 100,000 scattered updates touch nearly every shard of the bulk load;
    // while a few shards still use the bulk block, the room of the others is
    // dead. Compaction gives it back (a writer-side rebuild).
    let updates: Vec<(Msisdn, Option<&str>)> = random_msisdns(&rows, 100_000, 4)
        .into_iter()
        .map(|m| (m, Some("vodafone.gb")))
        .collect();
    big.update_ported(&updates).expect("valid");
    let v = big.snapshot();
    let (memory, dead) = (v.ported().memory_bytes(), v.ported().dead_bytes());
    drop(v);
    let started = std::time::Instant::now();
    let version = big.compact_ported(0.25);
    let elapsed = started.elapsed();
    let v = big.snapshot();
    eprintln!(
        "after 100,000 updates: {memory} bytes, {dead} dead; compact_ported -> {version:?} in {elapsed:?}: {} bytes ({:.1} per ported number)",
        v.ported().memory_bytes(),
        v.ported().memory_bytes() as f64 / v.ported().len() as f64
    );

    // One ported-number change while another thread reads continuously.
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let big = big.clone();
        let stop = stop.clone();
        let probes = mixed.clone();
        std::thread::spawn(move || {
            let mut reader = big.reader();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for &m in &probes[..4096] {
                    n += u64::from(reader.lookup(m).is_some());
                }
            }
            n
        })
    };
    let mut rng = XorShift::new(99);
    let mut group = c.benchmark_group("table/shared_plus_10m_ported");
    group.measurement_time(Duration::from_secs(5));
    group.bench_function("set_ported_under_read_load", |b| {
        b.iter_batched(
            || rng.msisdn(),
            |m| big.set_ported(m, "vodafone.gb").expect("valid"),
            BatchSize::SmallInput,
        )
    });
    group.finish();
    stop.store(true, Ordering::Relaxed);
    black_box(reader.join().expect("reader"));
}

criterion_group!(benches, table);
criterion_main!(benches);
