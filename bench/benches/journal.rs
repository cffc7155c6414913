//! The charge-record journal on the worker's side: what one loop turn's
//! `end_turn` costs the worker (encode is the node's; here: the turn's one
//! `write`, rotation, and handing the sync to the syncer thread), with
//! segments rotating rarely (64 MiB, the default) and often (1 MiB: a
//! rotation every 128 turns, which makes what rotation costs the worker
//! visible in the mean).
//!
//! `cargo bench -p presence-bench --bench journal`
//!
//! Only `end_turn` is timed; closed segments are deleted between timed
//! turns so the bench does not fill the disk. Besides criterion's figures
//! it prints, per variant, the percentiles of every turn it timed (wall
//! time: on a shared VM the far tail includes the thread being descheduled).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use presence_codec::{Msisdn, Outcome, Reachability};
use presence_engine::journal::{
    segment_paths, JournalSettings, JournalSink, JournalTime, JournalWriter, SegmentLimits,
    SyncState,
};
use presence_engine::roles::{DecisionRecord, PsId};
use presence_engine::table::NetworkId;

/// Records one turn appends (about what a worker's turn holds at
/// 150,000 charged queries/s).
const RECORDS_PER_TURN: u64 = 128;

fn record(txid: u64) -> DecisionRecord {
    DecisionRecord {
        origin: NetworkId(1),
        txid,
        watcher: Msisdn::parse_digits(b"447700900123").unwrap(),
        target: Msisdn::parse_digits(b"4915112345678").unwrap(),
        reply_node: 0,
        at: 0,
        ps: PsId(1),
        outcome: Outcome::Attached {
            reach: Reachability::PACKET_DATA,
            confirmed_age_s: 9,
        },
    }
}

fn turns(c: &mut Criterion, name: &str, max_bytes: u64) {
    let dir: PathBuf = std::env::temp_dir().join(format!("bench-journal-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let settings = JournalSettings {
        segments: SegmentLimits {
            max_bytes,
            max_age: Duration::from_secs(3600),
        },
        ..JournalSettings::default()
    };
    let epoch = Instant::now();
    let mut now_us = 1_000_000u64;
    let time = |us: u64| JournalTime {
        us,
        unix_ms: 1_700_000_000_000 + us / 1000,
    };
    let mut w =
        JournalWriter::open(&dir, "t-mobile.de", 0, 1, settings, time(now_us), || {}).unwrap();
    // Every timed turn, in ns (up to 10 s).
    let mut took_ns =
        hdrhistogram::Histogram::<u64>::new_with_bounds(1, 10_000_000_000, 3).unwrap();
    let mut group = c.benchmark_group("journal/turn_128_records");
    group.throughput(Throughput::Elements(RECORDS_PER_TURN));
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            for i in 0..iters {
                for _ in 0..RECORDS_PER_TURN {
                    let seq = w.next_seq();
                    w.append(seq, 1, "o2.gb", &record(seq));
                }
                // The worker's clock is the real one: the syncer's syncs
                // take real time, and so does what the group commit waits.
                let start = Instant::now();
                now_us = 1_000_000 + u64::try_from((start - epoch).as_micros()).unwrap();
                let state = w.end_turn(time(now_us));
                assert_eq!(state, SyncState::Healthy, "the journal failed");
                let took = start.elapsed();
                timed += took;
                let _ = took_ns.record(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX).max(1));
                if i % 256 == 255 {
                    let mut paths = segment_paths(&dir, None).unwrap();
                    paths.pop();
                    for p in paths {
                        let _ = std::fs::remove_file(p);
                    }
                }
            }
            timed
        })
    });
    group.finish();
    let us = |q: f64| took_ns.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "journal/turn_128_records/{name}: end_turn over {} turns: p50 {:.1} µs, p99 {:.1} µs, \
         p99.9 {:.1} µs, p99.99 {:.1} µs, max {:.1} µs",
        took_ns.len(),
        us(0.5),
        us(0.99),
        us(0.999),
        us(0.9999),
        took_ns.max() as f64 / 1000.0
    );
    w.close(time(now_us + 1));
    drop(w);
    let _ = std::fs::remove_dir_all(&dir);
}

fn journal(c: &mut Criterion) {
    turns(c, "segment_64MiB", 64 << 20);
    turns(c, "segment_1MiB", 1 << 20);
}

criterion_group!(benches, journal);
criterion_main!(benches);
