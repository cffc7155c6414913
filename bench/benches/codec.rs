//! Codec throughput: encode and decode (with full validation) of whole
//! datagrams of queries and of answers, at the default frame size of 1472
//! bytes. Throughput is reported in messages, so criterion's "elem/s" is
//! queries (or answers) per second on one core.
//!
//! The `device_mac` group: a device request's MAC (docs/wire-format.md
//! §5.11) as the WA checks it (`verify`: encode to the tag, keyed BLAKE3,
//! constant-time compare) and as a device makes it (`sign`). Issue 15's
//! budget is 0.15 µs per request.
//!
//! `cargo bench -p presence-bench --bench codec`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use presence_bench::{sample_answers, sample_queries};
use presence_codec::{
    samples, ClientOperation, ClientRequest, DeviceAuth, DeviceKey, FrameReader, FrameWriter,
    Message, FRAME_LEN_DEFAULT_MAX,
};

/// Encodes as many of `messages` as fit into one default frame.
fn encode_datagram(messages: &[Message<'_>], buf: &mut Vec<u8>) -> usize {
    buf.clear();
    let mut writer = FrameWriter::new(buf, FRAME_LEN_DEFAULT_MAX).expect("header fits");
    for m in messages {
        if writer.push(m).is_err() {
            break;
        }
    }
    writer.message_count()
}

fn bench_kind(c: &mut Criterion, name: &str, messages: &[Message<'_>]) {
    let mut buf = Vec::with_capacity(FRAME_LEN_DEFAULT_MAX);
    let per_datagram = encode_datagram(messages, &mut buf);
    let datagram = buf.clone();
    let mut group = c.benchmark_group(format!("codec/{name}"));
    group.throughput(Throughput::Elements(per_datagram as u64));

    group.bench_function(format!("encode_datagram_{per_datagram}"), |b| {
        b.iter(|| {
            let n = encode_datagram(black_box(messages), &mut buf);
            black_box(&buf);
            n
        })
    });

    group.bench_function(format!("decode_datagram_{per_datagram}"), |b| {
        b.iter(|| {
            // Full validation of every message, and a use of every field the
            // roles read, so nothing is optimised away.
            let mut checksum = 0u64;
            for message in
                FrameReader::new(black_box(&datagram), FRAME_LEN_DEFAULT_MAX).expect("valid header")
            {
                match message {
                    Ok(Message::Query(q)) => {
                        checksum = checksum
                            .wrapping_add(q.txid)
                            .wrapping_add(q.target.as_u64())
                            .wrapping_add(q.watcher.as_u64())
                            .wrapping_add(u64::from(q.budget_ms));
                    }
                    Ok(Message::Answer(a)) => {
                        checksum = checksum
                            .wrapping_add(a.txid)
                            .wrapping_add(a.target.as_u64());
                    }
                    Ok(_) => checksum = checksum.wrapping_add(1),
                    Err(_) => checksum = checksum.wrapping_sub(1),
                }
            }
            checksum
        })
    });
    group.finish();
}

fn device_mac(c: &mut Criterion) {
    let key = DeviceKey::derive(samples::WATCHER, b"k3y!");
    let request = key.sign_request(
        ClientRequest {
            txid: 77,
            watcher: samples::WATCHER,
            target: samples::TARGET,
            operation: ClientOperation::Query,
            auth: DeviceAuth::UNSIGNED,
        },
        samples::COUNTER,
    );
    let message = Message::ClientRequest(request);
    let mut group = c.benchmark_group("codec/device_mac");
    group.throughput(Throughput::Elements(1));
    group.bench_function("verify_request", |b| {
        b.iter(|| black_box(&key).verifies(black_box(&message)))
    });
    let mut counter = samples::COUNTER;
    group.bench_function("sign_request", |b| {
        b.iter(|| {
            counter += 1;
            black_box(&key).sign_request(black_box(request), counter)
        })
    });
    group.bench_function("derive_key", |b| {
        b.iter(|| DeviceKey::derive(black_box(samples::WATCHER), black_box(b"k3y!")))
    });
    group.finish();
}

fn codec(c: &mut Criterion) {
    let queries = sample_queries(64);
    let answers = sample_answers(64);
    bench_kind(c, "queries", &queries);
    bench_kind(c, "answers", &answers);
    device_mac(c);
}

criterion_group!(benches, codec);
criterion_main!(benches);
