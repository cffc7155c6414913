//! Shard-aware border links: each end's hello says which worker of its
//! gateway the link ends at, a sender picks the link that ends at the worker
//! a frame is for, and a dialer keeps one link per peer worker, each from a
//! source port the peer's listener steers to that worker.
//!
//! Without the peer's reuseport program (not loaded here) the kernel places
//! each connection on either worker of a shared port at random, so these
//! tests assert on what the hellos say rather than on where a dial lands.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::*;
use presence_border::{BgCounters, CloseReason, PeerIndex, SendError};

const P: PeerIndex = PeerIndex(0);

/// Two endpoints of network B, workers 0 and 1 of 2, sharing one
/// `SO_REUSEPORT` port, each with its own listener socket.
fn two_workers(
    mesh: &mut Mesh,
    b: &presence_border::pki::NetworkMaterial,
    trusted: &[&presence_border::pki::NetworkMaterial],
    dial: Vec<(presence_border::NetworkName, std::net::SocketAddr)>,
) -> (usize, usize, std::net::SocketAddr) {
    let first = presence_border::bind_listener("127.0.0.1:0".parse().unwrap(), true).unwrap();
    let addr = first.local_addr().unwrap();
    let second = presence_border::bind_listener(addr, true).unwrap();
    let w0 = mesh.add(tls(1, b, trusted), Some(first), dial.clone(), shard(0, 2));
    let w1 = mesh.add(tls(1, b, trusted), Some(second), dial, shard(1, 2));
    (w0, w1, addr)
}

#[test]
fn each_end_of_a_link_learns_the_other_ends_worker_from_its_hello() {
    let (a, b) = (material("a.example"), material("b.example"));
    let mut mesh = Mesh::new();
    let listener = presence_border::bind_listener("127.0.0.1:0".parse().unwrap(), true).unwrap();
    let addr = listener.local_addr().unwrap();
    let y = mesh.add(tls(1, &b, &[&a]), Some(listener), vec![], shard(0, 3));
    let x = mesh.add(
        tls(1, &a, &[&b]),
        None,
        vec![(b.network.clone(), addr)],
        shard(1, 2),
    );
    assert!(mesh.run_until(SECONDS_5, |m| {
        m.ep(x).dialed(P).iter().any(|l| l.peer_shard.is_some())
            && m.ep(y).endpoint.peer_workers(P).is_some()
    }));
    let dialed = mesh.ep(x).dialed(P);
    assert_eq!(dialed[0].peer_shard, Some(shard(0, 3)), "X hears Y's end");
    assert_eq!(mesh.ep(x).endpoint.peer_workers(P), Some(3));
    let accepted: Vec<_> = mesh
        .ep(y)
        .endpoint
        .links()
        .filter(|l| l.established)
        .collect();
    assert!(accepted.iter().all(|l| l.peer_shard == Some(shard(1, 2))));
    assert_eq!(
        mesh.ep(y).endpoint.peer_workers(P),
        Some(2),
        "Y hears X's end"
    );
    assert_eq!(mesh.ep(x).endpoint.shard(), shard(1, 2));

    // The hello is never handed on as a frame, and frames still pass.
    mesh.send(x, P, None, &frame(7)).unwrap();
    assert!(mesh.run_until(SECONDS_5, |m| !m.ep(y).inbox.is_empty()));
    assert_eq!(mesh.ep(y).seqs(), vec![7]);
    assert_eq!(BgCounters::get(&mesh.ep(y).counters().frames_in), 1);
}

#[test]
fn links_dialed_for_workers_the_peer_does_not_steer_to_are_kept_counted_and_not_redialed() {
    // Y says it is worker 0 of 3 but is alone on its port (no steering): X
    // dials once blind, learns n = 3, dials for workers 1 and 2 from ports
    // of those residues, and both land on worker 0.
    let (a, b) = (material("a.example"), material("b.example"));
    let mut mesh = Mesh::new();
    let listener = presence_border::bind_listener("127.0.0.1:0".parse().unwrap(), true).unwrap();
    let addr = listener.local_addr().unwrap();
    let _y = mesh.add(tls(1, &b, &[&a]), Some(listener), vec![], shard(0, 3));
    let x = mesh.add(
        tls(1, &a, &[&b]),
        None,
        vec![(b.network.clone(), addr)],
        shard(0, 1),
    );
    assert!(mesh.run_until(SECONDS_5, |m| m.ep(x).dialed(P).len() == 3));
    let dialed = mesh.ep(x).dialed(P);
    let mut aimed: Vec<u16> = dialed.iter().filter_map(|l| l.aimed_at).collect();
    aimed.sort_unstable();
    assert_eq!(
        aimed,
        vec![1, 2],
        "one blind dial, then one per missing worker"
    );
    for link in dialed.iter().filter(|l| l.aimed_at.is_some()) {
        let port = link.local_addr.unwrap().port();
        assert_eq!(port % 3, link.aimed_at.unwrap(), "source port residue");
        assert!(presence_border::endpoint::AIMED_PORTS.contains(&port));
        assert_eq!(link.peer_shard, Some(shard(0, 3)), "reached worker 0");
    }
    mesh.run_until(SECONDS_5, |m| {
        BgCounters::get(&m.ep(x).counters().dials_off_worker) == 2
    });
    assert_eq!(BgCounters::get(&mesh.ep(x).counters().dials_off_worker), 2);

    // Kept, and not dialed again while they are up.
    let attempts = BgCounters::get(&mesh.ep(x).counters().dial_attempts);
    assert_eq!(attempts, 3);
    mesh.run_for(Duration::from_millis(500));
    assert_eq!(
        BgCounters::get(&mesh.ep(x).counters().dial_attempts),
        attempts
    );
    assert_eq!(mesh.ep(x).dialed(P).len(), 3);
    assert_eq!(mesh.ep(x).endpoint.links_to(P), (3, 3));

    // Frames for workers 1 and 2 go over links ending at worker 0: counted.
    for k in 0..3u16 {
        mesh.send(x, P, Some(k), &frame(u32::from(k))).unwrap();
    }
    assert_eq!(BgCounters::get(&mesh.ep(x).counters().sends_off_worker), 2);
}

#[test]
fn frames_for_a_peer_worker_go_over_the_link_that_ends_at_it() {
    let (a, b) = (material("a.example"), material("b.example"));
    let mut mesh = Mesh::new();
    let x_listener = presence_border::bind_listener("127.0.0.1:0".parse().unwrap(), true).unwrap();
    let x_addr = x_listener.local_addr().unwrap();
    // B's two workers each dial X too, so that X has a link ending at each
    // whichever worker the kernel gives X's own dials.
    let (w0, w1, b_addr) = two_workers(&mut mesh, &b, &[&a], vec![(a.network.clone(), x_addr)]);
    let x = mesh.add(
        tls(1, &a, &[&b]),
        Some(x_listener),
        vec![(b.network.clone(), b_addr)],
        shard(0, 1),
    );
    assert!(mesh.run_until(SECONDS_5, |m| {
        m.ep(x).endpoint.peer_workers(P) == Some(2)
            && m.ep(x).ends_at(P, 0) > 0
            && m.ep(x).ends_at(P, 1) > 0
            && m.ep(x).dialed(P).len() == 2
    }));

    for i in 0..100u32 {
        let k = (i % 2) as u16;
        mesh.send(x, P, Some(k), &frame(u32::from(k) * 1000 + i))
            .unwrap();
    }
    assert!(mesh.run_until(SECONDS_5, |m| {
        m.ep(w0).inbox.len() + m.ep(w1).inbox.len() == 100
    }));
    assert!(mesh.ep(w0).seqs().iter().all(|s| s / 1000 == 0));
    assert!(mesh.ep(w1).seqs().iter().all(|s| s / 1000 == 1));
    assert_eq!(mesh.ep(w0).inbox.len(), 50);
    assert_eq!(BgCounters::get(&mesh.ep(x).counters().sends_off_worker), 0);

    // A worker beyond the peer's count, or none: any link, counted only
    // when a worker was named.
    mesh.send(x, P, Some(5), &frame(5)).unwrap();
    mesh.send(x, P, None, &frame(6)).unwrap();
    assert_eq!(BgCounters::get(&mesh.ep(x).counters().sends_off_worker), 1);
    assert!(mesh.run_until(SECONDS_5, |m| {
        m.ep(w0).inbox.len() + m.ep(w1).inbox.len() == 102
    }));
    assert_eq!(
        mesh.send(x, PeerIndex(9), Some(0), &frame(1)),
        Err(SendError::UnknownPeer)
    );
}

#[test]
fn once_a_peer_says_it_has_two_workers_the_second_is_dialed_from_a_port_of_its_residue() {
    let (a, b) = (material("a.example"), material("b.example"));
    let mut mesh = Mesh::new();
    let (w0, w1, b_addr) = two_workers(&mut mesh, &b, &[&a], vec![]);
    let x = mesh.add(
        tls(1, &a, &[&b]),
        None,
        vec![(b.network.clone(), b_addr)],
        shard(0, 1),
    );
    assert!(mesh.run_until(SECONDS_5, |m| {
        m.ep(x).dialed(P).len() == 2 && m.ep(x).dialed(P).iter().all(|l| l.peer_shard.is_some())
    }));
    assert_eq!(mesh.ep(x).endpoint.peer_workers(P), Some(2));
    let dialed = mesh.ep(x).dialed(P);
    let blind = dialed.iter().find(|l| l.aimed_at.is_none()).unwrap();
    let aimed = dialed.iter().find(|l| l.aimed_at.is_some()).unwrap();
    let first = blind.peer_shard.unwrap().worker;
    assert_eq!(
        aimed.aimed_at,
        Some(1 - first),
        "aimed at the worker missing"
    );
    assert_eq!(aimed.local_addr.unwrap().port() % 2, 1 - first);
    let landed = aimed.peer_shard.unwrap().worker;
    let off = u64::from(landed != 1 - first);
    assert!(mesh.run_until(SECONDS_5, |m| {
        BgCounters::get(&m.ep(x).counters().dials_off_worker) == off
    }));

    // Routes follow the hellos: frames for a worker with a link reach it;
    // the others go over the link there is, counted.
    let reached: Vec<u16> = vec![first, landed];
    for i in 0..40u32 {
        let k = (i % 2) as u16;
        mesh.send(x, P, Some(k), &frame(u32::from(k) * 1000 + i))
            .unwrap();
    }
    assert!(mesh.run_until(SECONDS_5, |m| {
        m.ep(w0).inbox.len() + m.ep(w1).inbox.len() == 40
    }));
    let mut expected_off = 0;
    for (k, ep) in [(0u16, w0), (1u16, w1)] {
        let for_k = mesh
            .ep(ep)
            .seqs()
            .iter()
            .filter(|s| **s / 1000 == u32::from(k))
            .count();
        if reached.contains(&k) {
            assert_eq!(for_k, 20, "frames for worker {k} reach it");
        } else {
            expected_off += 20;
        }
    }
    assert_eq!(
        BgCounters::get(&mesh.ep(x).counters().sends_off_worker),
        expected_off
    );
    // Nothing more is dialed while both links are up.
    mesh.run_for(Duration::from_millis(300));
    assert_eq!(BgCounters::get(&mesh.ep(x).counters().dial_attempts), 2);
}

#[test]
fn a_dialed_link_whose_peer_worker_dies_is_redialed_for_that_worker() {
    let (a, b) = (material("a.example"), material("b.example"));
    let mut mesh = Mesh::new();
    let (w0, w1, b_addr) = two_workers(&mut mesh, &b, &[&a], vec![]);
    let x = mesh.add(
        tls(1, &a, &[&b]),
        None,
        vec![(b.network.clone(), b_addr)],
        shard(0, 1),
    );
    assert!(mesh.run_until(SECONDS_5, |m| {
        m.ep(x).dialed(P).len() == 2 && m.ep(x).dialed(P).iter().all(|l| l.peer_shard.is_some())
    }));
    // Kill the worker the first (blind) link reached: at least that link
    // closes, and its target is dialed again; the survivor takes it.
    let first = mesh
        .ep(x)
        .dialed(P)
        .iter()
        .find(|l| l.aimed_at.is_none())
        .unwrap()
        .peer_shard
        .unwrap()
        .worker;
    let (dead, alive) = if first == 0 { (w0, w1) } else { (w1, w0) };
    let attempts = BgCounters::get(&mesh.ep(x).counters().dial_attempts);
    mesh.kill(dead);
    assert!(mesh.run_until(SECONDS_5, |m| {
        BgCounters::get(&m.ep(x).counters().dial_attempts) > attempts
            && m.ep(x).dialed(P).len() == 2
            && m.ep(x).ends_at(P, first) == 0
    }));
    assert!(mesh.ep(x).counters().closed(CloseReason::PeerClosed) >= 1);
    let survivor = 1 - first;
    assert_eq!(
        mesh.ep(x).ends_at(P, survivor),
        2,
        "both now end at the survivor"
    );
    let redialed = mesh
        .ep(x)
        .dialed(P)
        .into_iter()
        .find(|l| l.aimed_at == Some(first))
        .expect("redialed for the dead worker, from its residue");
    assert_eq!(redialed.local_addr.unwrap().port() % 2, first);
    // Frames for the dead worker still go out, over the survivor.
    let off = BgCounters::get(&mesh.ep(x).counters().sends_off_worker);
    mesh.send(x, P, Some(first), &frame(1)).unwrap();
    assert_eq!(
        BgCounters::get(&mesh.ep(x).counters().sends_off_worker),
        off + 1
    );
    assert!(mesh.run_until(SECONDS_5, |m| m.ep(alive).seqs().contains(&1)));
}

#[test]
fn rotation_replaces_every_dialed_link_and_loses_no_frame_then_shutdown_closes_them_all() {
    let (a, b) = (material("a.example"), material("b.example"));
    let mut mesh = Mesh::new();
    let (w0, w1, b_addr) = two_workers(&mut mesh, &b, &[&a], vec![]);
    let peers = vec![(b.network.clone(), b_addr)];
    let x = mesh.add(tls(1, &a, &[&b]), None, peers.clone(), shard(0, 1));
    assert!(mesh.run_until(SECONDS_5, |m| {
        m.ep(x).dialed(P).len() == 2 && m.ep(x).dialed(P).iter().all(|l| l.peer_shard.is_some())
    }));

    let a2 = a.rotated().unwrap();
    let mut sent = 0u32;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        if sent == 200 {
            mesh.reload(x, tls(2, &a2, &[&b]), &peers);
        }
        let k = (sent % 2) as u16;
        if mesh.send(x, P, Some(k), &frame(sent)).is_ok() {
            sent += 1;
        }
        mesh.step();
        let replaced = mesh.ep(x).counters().closed(CloseReason::Rotated) >= 2;
        let renewed = mesh
            .ep(x)
            .dialed(P)
            .iter()
            .filter(|l| l.generation == 2)
            .count()
            == 2;
        if sent >= 400 && replaced && renewed {
            break;
        }
    }
    assert!(
        mesh.ep(x).counters().closed(CloseReason::Rotated) >= 2,
        "both replaced"
    );
    let dialed = mesh.ep(x).dialed(P);
    assert_eq!(dialed.len(), 2);
    assert!(dialed
        .iter()
        .all(|l| l.generation == 2 && l.peer_shard.is_some()));
    assert!(mesh.run_until(SECONDS_5, |m| {
        m.ep(w0).inbox.len() + m.ep(w1).inbox.len() == sent as usize
    }));
    let mut seqs = mesh.ep(w0).seqs();
    seqs.extend(mesh.ep(w1).seqs());
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.len(), sent as usize, "every frame once");
    assert_eq!(BgCounters::get(&mesh.ep(x).counters().send_no_link), 0);

    // A clean stop closes every link, dialed ones included, and redials none.
    let attempts = BgCounters::get(&mesh.ep(x).counters().dial_attempts);
    mesh.begin_shutdown(x);
    assert!(mesh.run_until(SECONDS_5, |m| m.ep(x).endpoint.is_idle()));
    assert!(mesh.ep(x).counters().closed(CloseReason::Shutdown) >= 2);
    mesh.run_for(Duration::from_millis(200));
    assert_eq!(
        BgCounters::get(&mesh.ep(x).counters().dial_attempts),
        attempts
    );
}

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
    assert!(prometheus.contains("presence_bg_sends_off_worker_total 0"));
    assert!(prometheus.contains("presence_bg_dials_off_worker_total 0"));
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
