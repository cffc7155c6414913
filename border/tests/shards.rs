//! The link hello (wire §6.1): each end of a border link says first which
//! worker of its gateway the link ends at; a second or malformed hello
//! closes the link, and a peer that sends none is served as before.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::*;
use presence_border::{BgCounters, CloseReason};

/// The first record a raw client gets from B: B's hello.
fn read_hello(stream: &mut impl Read) -> [u8; 8] {
    let mut first = [0u8; 8];
    stream.read_exact(&mut first).unwrap();
    first
}

#[test]
fn an_acceptor_says_hello_first_and_a_second_hello_closes_the_link() {
    let (a, b) = (material("a.example"), material("b.example"));
    let a_tls = tls(1, &a, &[&b]);
    let node_b = start(tls(1, &b, &[&a]), vec![], 1, settings());
    let mut client = raw_client(&a_tls, &b, node_b.local_addr());
    assert_eq!(
        read_hello(&mut client),
        [0, 6, 0x42, 0x01, 0, 0, 0, 1],
        "worker 0 of 1 (a node is not sharded)"
    );
    let hello = [0, 6, 0x42, 0x01, 0, 1, 0, 4];
    client.write_all(&hello).unwrap();
    client.write_all(&[0x00, 0x08]).unwrap();
    client.write_all(&frame(1)).unwrap();
    client.write_all(&hello).unwrap();
    client.write_all(&[0x00, 0x08]).unwrap();
    client.write_all(&frame(2)).unwrap();
    client.flush().unwrap();
    assert!(wait_until(SECONDS_5, || node_b
        .counters()
        .closed(CloseReason::BadHello)
        == 1));
    let got = recv(&node_b, 2, Duration::from_millis(500));
    assert_eq!(got.len(), 1, "the frame before the second hello, not after");
    assert_eq!(seq_of(&got[0].frame), 1);
    let mut prometheus = String::new();
    node_b.counters().render_prometheus(&mut prometheus);
    assert!(prometheus.contains("presence_bg_closed_total{reason=\"bad_hello\"} 1"));
}

#[test]
fn a_malformed_hello_closes_the_link() {
    let (a, b) = (material("a.example"), material("b.example"));
    let a_tls = tls(1, &a, &[&b]);
    let node_b = start(tls(1, &b, &[&a]), vec![], 1, settings());
    for (n, bad) in [
        &[0u8, 6, 0x42, 0x01, 0, 2, 0, 2][..], // worker 2 of 2
        &[0, 6, 0x42, 0x02, 0, 0, 0, 1],       // version 2
        &[0, 4, 0x42, 0x01, 0, 0],             // short
    ]
    .into_iter()
    .enumerate()
    {
        let mut client = raw_client(&a_tls, &b, node_b.local_addr());
        read_hello(&mut client);
        client.write_all(bad).unwrap();
        client.flush().unwrap();
        assert!(wait_until(SECONDS_5, || node_b
            .counters()
            .closed(CloseReason::BadHello)
            == n as u64 + 1));
    }
    assert_eq!(BgCounters::get(&node_b.counters().frames_in), 0);
}

#[test]
fn a_peer_that_sends_no_hello_is_served_as_before() {
    let (a, b) = (material("a.example"), material("b.example"));
    let a_tls = tls(1, &a, &[&b]);
    let node_b = start(tls(1, &b, &[&a]), vec![], 1, settings());
    let mut client = raw_client(&a_tls, &b, node_b.local_addr());
    read_hello(&mut client);
    for seq in 0..3 {
        client.write_all(&[0x00, 0x08]).unwrap();
        client.write_all(&frame(seq)).unwrap();
    }
    client.flush().unwrap();
    let got = recv(&node_b, 3, SECONDS_5);
    assert_eq!(
        got.iter().map(|f| seq_of(&f.frame)).collect::<Vec<_>>(),
        [0, 1, 2]
    );
    assert!(
        got.iter().all(|f| f.frame[0] == 0x50),
        "handed on unchanged"
    );
    assert_eq!(node_b.links_to(&a.network), (1, 1));
}
