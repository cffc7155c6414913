//! Border gateway pair throughput: frames of 44 batched queries (1472 bytes,
//! the default datagram size) from network A's BG to network B's BG over
//! TLS 1.3 (AES-128-GCM) on loopback. One event-loop thread per BG, so the
//! figure is per core on each side. Criterion reports both queries/s
//! (elements) and plaintext bytes/s.
//!
//! `cargo bench -p presence-bench --bench bg`

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use presence_bench::bg_pair::BgPair;
use presence_bench::sample_queries;
use presence_codec::{FrameWriter, FRAME_LEN_DEFAULT_MAX, STREAM_PREFIX_LEN};

fn bench_pair(c: &mut Criterion) {
    let queries = sample_queries(64);
    let mut frame = Vec::with_capacity(FRAME_LEN_DEFAULT_MAX);
    let mut writer = FrameWriter::new(&mut frame, FRAME_LEN_DEFAULT_MAX).expect("header");
    for q in &queries {
        if writer.push(q).is_err() {
            break;
        }
    }
    let per_frame = writer.message_count() as u64;
    let pair = BgPair::start(frame);
    let mut group = c.benchmark_group("bg/pair");
    group.throughput(Throughput::ElementsAndBytes {
        elements: per_frame,
        bytes: (pair.frame_len + STREAM_PREFIX_LEN) as u64,
    });
    group.measurement_time(Duration::from_secs(10));
    group.bench_function(format!("frames_of_{per_frame}_queries"), |b| {
        b.iter_custom(|iters| pair.transfer(iters))
    });
    group.finish();
}

criterion_group!(benches, bench_pair);
criterion_main!(benches);
