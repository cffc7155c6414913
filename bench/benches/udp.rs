//! One datagram's round trip through the echo server (the ceiling's, with
//! the appliance's sockets and batching) per IO backend: a 64-byte
//! request, sent when the previous answer came back, so the server sleeps
//! in `epoll_wait` between requests and every round trip pays its
//! wake-up. This is where a backend that leaves received datagrams
//! unannounced shows (the worker then waits for its 10 ms timer).
//!
//! `cargo bench -p presence-bench --bench udp`

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use presence_bench::load::echo::EchoServer;
use presence_engine::config::IoBackend;

fn round_trip(c: &mut Criterion) {
    let mut group = c.benchmark_group("udp/round_trip");
    group.measurement_time(Duration::from_secs(5));
    for backend in [IoBackend::Mmsg, IoBackend::Gro, IoBackend::Uring] {
        let echo = EchoServer::start(1, backend).expect("echo server");
        let client = UdpSocket::bind("127.0.0.1:0").expect("client socket");
        client
            .set_read_timeout(Some(Duration::from_secs(1)))
            .expect("timeout");
        let request = [7u8; 64];
        let mut answer = [0u8; 128];
        group.bench_function(backend.name(), |b| {
            b.iter_custom(|iters| {
                let started = Instant::now();
                for _ in 0..iters {
                    client.send_to(&request, echo.addr()).expect("send");
                    let n = client.recv(&mut answer).expect("the echo answers");
                    assert_eq!(n, request.len());
                }
                started.elapsed()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, round_trip);
criterion_main!(benches);
