//! The border link on loopback: who gets in, what gets through, and what
//! happens when a peer breaks.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use presence_border::pki::{
    issue_bg_certificate, sign_bg_certificate, NetworkMaterial, PemPair, Validity,
};
use presence_border::{BgCounters, BgTls, CloseReason, Refusal};

#[test]
fn a_trusted_peer_exchanges_frames_both_ways_over_one_link_per_worker() {
    let a = material("a.example");
    let b = material("b.example");
    let node_b = start(tls(1, &b, &[&a]), vec![], 2, settings());
    let node_a = start(
        tls(1, &a, &[&b]),
        vec![(b.network.clone(), node_b.local_addr())],
        2,
        settings(),
    );
    assert!(
        node_a.wait_for_links(&b.network, 2, SECONDS_5),
        "one dialed link per worker"
    );
    assert!(node_b.wait_for_links(&a.network, 2, SECONDS_5));

    for seq in 0..100 {
        assert!(node_a.send((seq % 2) as usize, &b.network, frame(seq)));
    }
    let got = recv(&node_b, 100, SECONDS_5);
    assert_eq!(got.len(), 100);
    assert!(
        got.iter().all(|f| f.peer == a.network),
        "origin is A's certificate name"
    );
    let mut seqs: Vec<u32> = got.iter().map(|f| seq_of(&f.frame)).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (0..100).collect::<Vec<_>>());
    // (Which of B's workers takes each of A's connections is the kernel's
    // SO_REUSEPORT hash: either may take both.)

    // B dials A too (every worker dials every peer, so every worker has a
    // link of its own whichever worker the kernel gave A's connections to).
    node_b.reload(
        tls(2, &b, &[&a]),
        vec![(a.network.clone(), node_a.local_addr())],
    );
    assert!(node_b.wait_for_links(&a.network, 4, SECONDS_5));
    for seq in 0..50 {
        assert!(node_b.send((seq % 2) as usize, &a.network, frame(1000 + seq)));
    }
    let back = recv(&node_a, 50, SECONDS_5);
    assert_eq!(back.len(), 50);
    assert!(back.iter().all(|f| f.peer == b.network));
    assert_eq!(BgCounters::get(&node_a.counters().send_no_link), 0);
}

#[test]
fn a_pinned_peer_certificate_is_accepted_and_any_other_refused() {
    let a = material("a.example");
    let b = material("b.example");
    let pinned =
        Arc::new(BgTls::new(1, b.identity().unwrap(), &[a.trust_by_pin().unwrap()]).unwrap());
    let node_b = start(pinned, vec![], 1, settings());
    let node_a = start(
        tls(1, &a, &[&b]),
        vec![(b.network.clone(), node_b.local_addr())],
        1,
        settings(),
    );
    assert!(node_a.wait_for_links(&b.network, 1, SECONDS_5));

    // A's rotated certificate comes from the same CA, but it is not the pin.
    let a2 = a.rotated().unwrap();
    let node_a2 = start(
        tls(1, &a2, &[&b]),
        vec![(b.network.clone(), node_b.local_addr())],
        1,
        settings(),
    );
    assert!(wait_until(SECONDS_5, || node_b
        .counters()
        .refused(Refusal::UnknownCa)
        >= 1));
    assert_eq!(node_a2.links_to(&b.network).0, 0);
}

fn refused_by_b(
    presenting: NetworkMaterial,
    b: &NetworkMaterial,
    trusted_by_b: &[&NetworkMaterial],
) -> (Arc<BgCounters>, Arc<BgCounters>) {
    let node_b = start(tls(1, b, trusted_by_b), vec![], 1, settings());
    let node_x = start(
        tls(1, &presenting, &[b]),
        vec![(b.network.clone(), node_b.local_addr())],
        1,
        settings(),
    );
    assert!(wait_until(SECONDS_5, || {
        Refusal::ALL
            .iter()
            .map(|r| node_b.counters().refused(*r))
            .sum::<u64>()
            >= 2
    }));
    assert_eq!(node_b.links_to(&presenting.network), (0, 0));
    assert_eq!(node_x.links_to(&b.network), (0, 0));
    assert_eq!(BgCounters::get(&node_b.counters().frames_in), 0);
    (node_b.counters().clone(), node_x.counters().clone())
}

#[test]
fn a_certificate_from_an_unknown_ca_is_refused_in_the_handshake() {
    let a = material("a.example");
    let b = material("b.example");
    let stranger = material("c.example");
    let (b_counters, x_counters) = refused_by_b(stranger, &b, &[&a]);
    assert!(b_counters.refused(Refusal::UnknownCa) >= 2);
    assert!(
        x_counters.refused(Refusal::PeerRefused) >= 1,
        "the dialer hears B's alert"
    );
}

#[test]
fn a_certificate_for_another_network_name_is_refused() {
    let a = material("a.example");
    let b = material("b.example");
    // A CA made without the name constraint `presence-gw pki` puts in, whose
    // holder issues itself a certificate naming network C.
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = params.self_signed(&key).unwrap();
    let loose_ca = PemPair {
        cert_pem: ca_cert.pem(),
        key_pem: key.serialize_pem(),
    };
    let claims_c = NetworkMaterial {
        network: name("c.example"),
        bg: sign_bg_certificate(&loose_ca, &name("c.example"), Validity::days_from_now(1)).unwrap(),
        ca: loose_ca.clone(),
    };
    // B trusts that CA, but for network A only.
    let a_with_loose_ca = NetworkMaterial {
        ca: loose_ca,
        ..a.clone()
    };
    let (b_counters, _) = refused_by_b(claims_c, &b, &[&a_with_loose_ca]);
    assert!(b_counters.refused(Refusal::WrongNetwork) >= 2);
}

/// A certificate from A's own (name-constrained) CA naming a.example and
/// something else beside it: a URI, an IP address, a second DNS name.
fn with_extra_name(a: &NetworkMaterial, extra: rcgen::SanType) -> NetworkMaterial {
    let ca_key = rcgen::KeyPair::from_pem(&a.ca.key_pem).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&a.ca.cert_pem, ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec![a.network.as_str().to_string()]).unwrap();
    params.subject_alt_names.push(extra);
    params.is_ca = rcgen::IsCa::ExplicitNoCa;
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, &issuer).unwrap();
    NetworkMaterial {
        bg: PemPair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        },
        ..a.clone()
    }
}

#[test]
fn a_certificate_must_hold_exactly_one_name_the_networks() {
    let a = material("a.example");
    let b = material("b.example");
    let extras = [
        rcgen::SanType::URI("https://a.example/bg".try_into().unwrap()),
        rcgen::SanType::IpAddress("192.0.2.1".parse().unwrap()),
        rcgen::SanType::DnsName("bg2.a.example".try_into().unwrap()),
    ];
    for extra in extras {
        let what = format!("{extra:?}");
        let (b_counters, _) = refused_by_b(with_extra_name(&a, extra), &b, &[&a]);
        let refusals: u64 = [Refusal::WrongNetwork, Refusal::BadCertificate]
            .iter()
            .map(|r| b_counters.refused(*r))
            .sum();
        assert!(refusals >= 2, "{what}: refused as naming more than A");
    }
}

#[test]
fn a_network_ca_cannot_vouch_for_another_networks_name() {
    let a = material("a.example");
    let b = material("b.example");
    assert!(
        issue_bg_certificate(&a.ca, &name("c.example"), Validity::days_from_now(1)).is_err(),
        "pki refuses to issue it"
    );
    // A's CA (name-constrained to a.example) signs a certificate naming c.
    let claims_c = NetworkMaterial {
        network: name("c.example"),
        bg: sign_bg_certificate(&a.ca, &name("c.example"), Validity::days_from_now(1)).unwrap(),
        ca: a.ca.clone(),
    };
    let (b_counters, _) = refused_by_b(claims_c, &b, &[&a]);
    let refusals: u64 = [
        Refusal::WrongNetwork,
        Refusal::BadCertificate,
        Refusal::UnknownCa,
    ]
    .iter()
    .map(|r| b_counters.refused(*r))
    .sum();
    assert!(refusals >= 2, "name constraint violation refused");
}

#[test]
fn an_expired_certificate_is_refused() {
    let a = material("a.example");
    let b = material("b.example");
    let long_ago = Validity {
        not_before: time::OffsetDateTime::now_utc() - time::Duration::days(30),
        not_after: time::OffsetDateTime::now_utc() - time::Duration::days(1),
    };
    let expired = NetworkMaterial {
        bg: issue_bg_certificate(&a.ca, &a.network, long_ago).unwrap(),
        ..a.clone()
    };
    let (b_counters, _) = refused_by_b(expired, &b, &[&a]);
    assert!(b_counters.refused(Refusal::CertificateExpired) >= 2);
}

#[test]
fn plain_tcp_garbage_and_silence_are_refused_without_reading_presence_data() {
    let a = material("a.example");
    let b = material("b.example");
    let node_b = start(tls(1, &b, &[&a]), vec![], 1, settings());
    let addr = node_b.local_addr();

    // A presence frame in the clear, stream-framed.
    let mut clear = TcpStream::connect(addr).unwrap();
    clear.write_all(&[0x00, 0x08]).unwrap();
    clear.write_all(&frame(7)).unwrap();
    let mut sink = Vec::new();
    clear.set_read_timeout(Some(SECONDS_5)).unwrap();
    let _ = clear.read_to_end(&mut sink);
    assert!(wait_until(SECONDS_5, || node_b
        .counters()
        .refused(Refusal::NotTls)
        >= 1));

    // Noise that starts like a TLS handshake record.
    let mut noise = TcpStream::connect(addr).unwrap();
    let mut bytes = vec![0x16, 0x03, 0x01, 0x00, 0x40];
    bytes.extend((0..64u8).map(|i| i.wrapping_mul(37)));
    noise.write_all(&bytes).unwrap();
    noise.set_read_timeout(Some(SECONDS_5)).unwrap();
    let _ = noise.read_to_end(&mut sink);
    assert!(wait_until(SECONDS_5, || node_b
        .counters()
        .refused(Refusal::Protocol)
        >= 1));

    // Connected, silent: refused when the handshake deadline passes.
    let silent = TcpStream::connect(addr).unwrap();
    assert!(wait_until(SECONDS_5, || {
        node_b.counters().refused(Refusal::HandshakeTimeout) >= 1
    }));
    drop(silent);

    assert_eq!(BgCounters::get(&node_b.counters().frames_in), 0);
    assert!(node_b.inbound().is_empty());
}

#[test]
fn an_oversized_or_truncated_frame_closes_only_its_own_connection() {
    let a = material("a.example");
    let b = material("b.example");
    let a_tls = tls(1, &a, &[&b]);
    let node_b = start(tls(1, &b, &[&a]), vec![], 1, settings());
    let node_a = start(
        a_tls.clone(),
        vec![(b.network.clone(), node_b.local_addr())],
        1,
        settings(),
    );
    assert!(node_a.wait_for_links(&b.network, 1, SECONDS_5));

    // Oversized: a length prefix beyond B's 1472-byte maximum.
    let mut oversized = raw_client(&a_tls, &b, node_b.local_addr());
    oversized.write_all(&[0x00, 0x08]).unwrap();
    oversized.write_all(&frame(1)).unwrap();
    oversized.write_all(&[0xff, 0xff, 0x50, 0x01]).unwrap();
    oversized.flush().unwrap();
    assert!(wait_until(SECONDS_5, || node_b
        .counters()
        .closed(CloseReason::StreamError)
        == 1));
    let mut rest = Vec::new();
    let _ = oversized.read_to_end(&mut rest);

    // Truncated: half a frame, then close_notify.
    let mut truncated = raw_client(&a_tls, &b, node_b.local_addr());
    truncated
        .write_all(&[0x00, 0x20, 0x50, 0x01, 0x0a])
        .unwrap();
    truncated.conn.send_close_notify();
    truncated.flush().unwrap();
    assert!(wait_until(SECONDS_5, || node_b
        .counters()
        .closed(CloseReason::Truncated)
        == 1));

    // The whole frame before the bad prefix was handed on, from A.
    let first = recv(&node_b, 1, SECONDS_5);
    assert_eq!(first.len(), 1);
    assert_eq!(seq_of(&first[0].frame), 1);
    assert_eq!(first[0].peer, a.network);

    // A's own link was not touched.
    assert_eq!(node_a.links_to(&b.network), (1, 1));
    assert!(node_a.send(0, &b.network, frame(2)));
    let after = recv(&node_b, 1, SECONDS_5);
    assert_eq!(after.len(), 1);
    assert_eq!(seq_of(&after[0].frame), 2);
}

#[test]
fn a_killed_peer_is_detected_and_reconnected() {
    let a = material("a.example");
    let b = material("b.example");
    let b_tls = tls(1, &b, &[&a]);
    let node_b = start(b_tls.clone(), vec![], 1, settings());
    let b_addr = node_b.local_addr();
    let node_a = start(
        tls(1, &a, &[&b]),
        vec![(b.network.clone(), b_addr)],
        1,
        settings(),
    );
    assert!(node_a.wait_for_links(&b.network, 1, SECONDS_5));
    let dials_before = BgCounters::get(&node_a.counters().dial_attempts);

    // Killed: sockets dropped with no close_notify, as a `kill -9` leaves them.
    node_b.abort();
    assert!(wait_until(SECONDS_5, || node_a.links_to(&b.network).0 == 0));
    assert!(node_a.counters().closed(CloseReason::PeerClosed) >= 1);
    // While B is down, A keeps dialing with backoff, and sends are refused
    // (upstream answers them overloaded), not queued without bound.
    assert!(wait_until(SECONDS_5, || {
        BgCounters::get(&node_a.counters().dial_attempts) >= dials_before + 3
    }));
    node_a.send(0, &b.network, frame(9));
    assert!(wait_until(SECONDS_5, || {
        BgCounters::get(&node_a.counters().send_no_link) >= 1
    }));

    let node_b = start_on(b_addr, b_tls, vec![], 1, settings());
    assert!(
        node_a.wait_for_links(&b.network, 1, SECONDS_5),
        "reconnected"
    );
    assert!(node_a.send(0, &b.network, frame(10)));
    let got = recv(&node_b, 1, SECONDS_5);
    assert_eq!(got.len(), 1);
    assert_eq!(seq_of(&got[0].frame), 10);
}

/// Forwards TCP between a client and a server until frozen; frozen, it holds
/// every connection open and forwards nothing (a peer that vanished without a
/// FIN: a cut link, a hung host).
struct Blackhole {
    addr: std::net::SocketAddr,
    frozen: Arc<std::sync::atomic::AtomicBool>,
}

fn blackhole(to: std::net::SocketAddr) -> Blackhole {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let frozen = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let f = frozen.clone();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { return };
            let Ok(server) = TcpStream::connect(to) else {
                continue;
            };
            for (mut from, mut into) in [
                (client.try_clone().unwrap(), server.try_clone().unwrap()),
                (server, client),
            ] {
                let f = f.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16384];
                    loop {
                        let Ok(n) = from.read(&mut buf) else { return };
                        if n == 0 {
                            return;
                        }
                        while f.load(Ordering::Relaxed) {
                            std::thread::sleep(Duration::from_millis(10));
                        }
                        if into.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                });
            }
        }
    });
    Blackhole { addr, frozen }
}

#[test]
fn a_peer_that_goes_silent_is_declared_dead_and_redialed() {
    let a = material("a.example");
    let b = material("b.example");
    let node_b = start(tls(1, &b, &[&a]), vec![], 1, settings());
    let hole = blackhole(node_b.local_addr());
    let node_a = start(
        tls(1, &a, &[&b]),
        vec![(b.network.clone(), hole.addr)],
        1,
        settings(),
    );
    assert!(node_a.wait_for_links(&b.network, 1, SECONDS_5));
    // Keepalives keep an idle link alive.
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(node_a.counters().closed(CloseReason::DeadPeer), 0);
    assert!(BgCounters::get(&node_a.counters().keepalives_received) >= 5);

    hole.frozen.store(true, Ordering::Relaxed);
    assert!(wait_until(SECONDS_5, || node_a
        .counters()
        .closed(CloseReason::DeadPeer)
        >= 1));
    hole.frozen.store(false, Ordering::Relaxed);
    assert!(
        node_a.wait_for_links(&b.network, 1, SECONDS_5),
        "redialed once the path is back"
    );
}

#[test]
fn a_full_send_queue_refuses_frames_instead_of_growing() {
    let a = material("a.example");
    let b = material("b.example");
    let b_tls = tls(1, &b, &[&a]);
    // B completes the handshake and then never reads.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = b_tls.server_config().clone();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        let (mut sock, _) = listener.accept().unwrap();
        let mut conn = rustls::ServerConnection::new(server).unwrap();
        while conn.is_handshaking() {
            conn.complete_io(&mut sock).unwrap();
        }
        // Accept A (a keepalive), then read nothing more.
        conn.writer().write_all(&[0, 0]).unwrap();
        conn.complete_io(&mut sock).unwrap();
        let _ = done_rx.recv();
    });
    let mut small = settings();
    small.link.send_queue_bytes = 64 * 1024;
    small.link.dead_after_ms = 60_000;
    let node_a = start(tls(1, &a, &[&b]), vec![(b.network.clone(), addr)], 1, small);
    assert!(node_a.wait_for_links(&b.network, 1, SECONDS_5));
    let big = {
        let mut f = vec![0x50, 0x01];
        f.resize(1400, 0xab);
        f
    };
    assert!(wait_until(Duration::from_secs(20), || {
        for _ in 0..256 {
            node_a.send(0, &b.network, big.clone());
        }
        BgCounters::get(&node_a.counters().send_overloaded) > 0
    }));
    assert_eq!(
        node_a.links_to(&b.network).0,
        1,
        "overload does not drop the link"
    );
    done_tx.send(()).unwrap();
}

#[test]
fn rotating_certificates_drops_no_frame_and_drains_the_old_links() {
    let a = material("a.example");
    let b = material("b.example");
    // One worker at B, so that it holds both of A's links whichever way the
    // kernel would spread them.
    let node_b = start(tls(1, &b, &[&a]), vec![], 1, settings());
    let peers = vec![(b.network.clone(), node_b.local_addr())];
    let node_a = start(tls(1, &a, &[&b]), peers.clone(), 2, settings());
    assert!(node_a.wait_for_links(&b.network, 2, SECONDS_5));

    const FRAMES: u32 = 20_000;
    let a2 = a.rotated().unwrap();
    let b2 = b.rotated().unwrap();
    // B answers over the links A dialed (B dials nobody here), all the while
    // A replaces them: what B queued on a link A is closing still arrives.
    let back = std::thread::scope(|scope| {
        let answers = scope.spawn(|| {
            let mut sent = 0u32;
            while sent < FRAMES / 2 {
                if node_b.send(0, &a.network, frame(1_000_000 + sent)) {
                    sent += 1;
                    if sent.is_multiple_of(500) {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                } else {
                    std::thread::sleep(Duration::from_micros(100));
                }
            }
        });
        let mut seq = 0;
        while seq < FRAMES {
            if seq == FRAMES / 3 {
                node_a.reload(tls(2, &a2, &[&b]), peers.clone());
            }
            if seq == FRAMES / 2 {
                node_b.reload(tls(2, &b2, &[&a]), vec![]);
            }
            if node_a.send((seq % 2) as usize, &b.network, frame(seq)) {
                seq += 1;
            } else {
                std::thread::sleep(Duration::from_micros(100));
            }
            if seq % 500 == 0 {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        answers.join().unwrap();
        recv(&node_a, (FRAMES / 2) as usize, Duration::from_secs(20))
    });
    let mut back: Vec<u32> = back.iter().map(|f| seq_of(&f.frame)).collect();
    back.sort_unstable();
    back.dedup();
    assert_eq!(
        back.len(),
        (FRAMES / 2) as usize,
        "every answer arrived exactly once"
    );
    assert_eq!(BgCounters::get(&node_b.counters().send_no_link), 0);
    let got = recv(&node_b, FRAMES as usize, Duration::from_secs(20));
    let counters = node_a.counters();
    assert_eq!(BgCounters::get(&counters.send_no_link), 0);
    assert_eq!(BgCounters::get(&counters.send_overloaded), 0);
    let mut seqs: Vec<u32> = got.iter().map(|f| seq_of(&f.frame)).collect();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(
        seqs.len(),
        FRAMES as usize,
        "every frame arrived exactly once"
    );
    assert!(wait_until(SECONDS_5, || counters
        .closed(CloseReason::Rotated)
        >= 2));
    assert_eq!(node_a.links_to(&b.network), (2, 2));
    assert!(
        BgCounters::get(&counters.links_established) >= 4,
        "new links made"
    );
}

#[test]
fn a_peer_removed_from_the_trust_list_is_cut_off_on_reload() {
    let a = material("a.example");
    let b = material("b.example");
    let c = material("c.example");
    let node_b = start(tls(1, &b, &[&a, &c]), vec![], 1, settings());
    let node_a = start(
        tls(1, &a, &[&b]),
        vec![(b.network.clone(), node_b.local_addr())],
        1,
        settings(),
    );
    assert!(node_b.wait_for_links(&a.network, 1, SECONDS_5));
    node_b.reload(tls(2, &b, &[&c]), vec![]);
    assert!(wait_until(SECONDS_5, || node_b
        .counters()
        .closed(CloseReason::Untrusted)
        >= 1));
    // A redials and is refused from now on.
    assert!(wait_until(SECONDS_5, || node_b
        .counters()
        .refused(Refusal::UnknownCa)
        >= 1));
    assert_eq!(node_a.links_to(&b.network).0, 0);
}

#[test]
fn a_ca_bundle_lets_a_peer_rotate_its_ca_without_a_gap() {
    use presence_border::tls::{certificate_from_pem, Trust};
    use presence_border::PeerTrust;
    let (a_old, b) = (material("a.example"), material("b.example"));
    let a_new = material("a.example");
    let bundle = PeerTrust {
        network: a_old.network.clone(),
        trust: Trust::Ca(vec![
            certificate_from_pem(&a_old.ca.cert_pem).unwrap(),
            certificate_from_pem(&a_new.ca.cert_pem).unwrap(),
        ]),
    };
    let b_tls = Arc::new(BgTls::new(1, b.identity().unwrap(), &[bundle]).unwrap());
    let node_b = start(b_tls, vec![], 1, settings());
    let dial = vec![(b.network.clone(), node_b.local_addr())];
    let from_old = start(tls(1, &a_old, &[&b]), dial.clone(), 1, settings());
    let from_new = start(tls(1, &a_new, &[&b]), dial, 1, settings());
    assert!(from_old.wait_for_links(&b.network, 1, SECONDS_5));
    assert!(from_new.wait_for_links(&b.network, 1, SECONDS_5));
    assert!(node_b.wait_for_links(&a_old.network, 2, SECONDS_5));
}

#[test]
fn replacing_a_peers_ca_on_reload_cuts_the_links_it_authenticated() {
    let a = material("a.example");
    let b = material("b.example");
    let node_b = start(tls(1, &b, &[&a]), vec![], 1, settings());
    let node_a = start(
        tls(1, &a, &[&b]),
        vec![(b.network.clone(), node_b.local_addr())],
        1,
        settings(),
    );
    assert!(node_b.wait_for_links(&a.network, 1, SECONDS_5));
    // B now trusts another CA for the name a.example (say A's old CA was
    // compromised and replaced): A's existing link no longer verifies.
    let a_elsewhere = material("a.example");
    node_b.reload(tls(2, &b, &[&a_elsewhere]), vec![]);
    assert!(wait_until(SECONDS_5, || {
        node_b.counters().closed(CloseReason::Untrusted) >= 1
    }));
    assert!(wait_until(SECONDS_5, || node_b
        .counters()
        .refused(Refusal::UnknownCa)
        >= 1));
    assert_eq!(node_b.links_to(&a.network).0, 0);
    drop(node_a);
}

#[test]
fn a_flooding_peer_does_not_starve_the_others_on_its_worker() {
    let a = material("a.example");
    let b = material("b.example");
    let c = material("c.example");
    let node_b = start(tls(1, &b, &[&a, &c]), vec![], 1, settings());
    let node_a = start(
        tls(1, &a, &[&b]),
        vec![(b.network.clone(), node_b.local_addr())],
        1,
        settings(),
    );
    assert!(node_a.wait_for_links(&b.network, 1, SECONDS_5));
    // C writes keepalives as fast as TLS lets it, for two seconds: endless
    // input on one link of B's only worker.
    let c_tls = tls(1, &c, &[&b]);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood = {
        let stop = stop.clone();
        let addr = node_b.local_addr();
        let b = b.clone();
        std::thread::spawn(move || {
            let mut stream = raw_client(&c_tls, &b, addr);
            let burst = [0u8; 16 * 1024];
            while !stop.load(Ordering::Relaxed) {
                if stream.write_all(&burst).is_err() {
                    return;
                }
            }
        })
    };
    for seq in 0..200u32 {
        assert!(node_a.send(0, &b.network, frame(seq)));
        std::thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::Relaxed);
    flood.join().unwrap();
    let got: Vec<u32> = recv(&node_b, 400, Duration::from_secs(5))
        .iter()
        .filter(|f| f.peer == a.network)
        .map(|f| seq_of(&f.frame))
        .collect();
    assert_eq!(got.len(), 200, "A's frames all got through");
    assert_eq!(node_a.counters().closed(CloseReason::DeadPeer), 0);
    assert!(BgCounters::get(&node_b.counters().keepalives_received) > 1000);
}

#[test]
fn idle_connections_cannot_take_the_slots_our_own_dials_need() {
    let a = material("a.example");
    let b = material("b.example");
    let mut few = settings();
    few.max_links = 16;
    few.max_pending_links = 4;
    few.max_pending_per_source = 4;
    few.link.handshake_timeout_ms = 60_000;
    let node_a = start(tls(1, &a, &[&b]), vec![], 1, few);
    // Anyone can open TCP connections to A and say nothing.
    let idle: Vec<TcpStream> = (0..32)
        .map(|_| TcpStream::connect(node_a.local_addr()).unwrap())
        .collect();
    assert!(wait_until(SECONDS_5, || {
        let c = node_a.counters();
        BgCounters::get(&c.accept_full)
            + BgCounters::get(&c.accept_source_full)
            + c.refused(Refusal::EvictedIdle)
            >= 28
    }));
    // A's own dial to B still gets a slot, and the link works both ways.
    let node_b = start(tls(1, &b, &[&a]), vec![], 1, settings());
    node_a.reload(
        tls(2, &a, &[&b]),
        vec![(b.network.clone(), node_b.local_addr())],
    );
    assert!(node_a.wait_for_links(&b.network, 1, SECONDS_5));
    assert!(node_a.send(0, &b.network, frame(1)));
    assert_eq!(recv(&node_b, 1, SECONDS_5).len(), 1);
    drop(idle);
}

/// A TCP connection to `to` from `source` (any 127/8 address on loopback).
fn connect_from(source: std::net::Ipv4Addr, to: std::net::SocketAddr) -> Option<TcpStream> {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).ok()?;
    socket
        .bind(&SockAddr::from(std::net::SocketAddr::from((source, 0))))
        .ok()?;
    socket
        .connect_timeout(&SockAddr::from(to), Duration::from_secs(2))
        .ok()?;
    Some(socket.into())
}

/// Raises this process's open-file limit to its hard limit (a thousand
/// connections, both ends in one process).
fn raise_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write/read the one struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

#[test]
fn a_thousand_idle_connections_do_not_stop_a_configured_peers_handshake() {
    raise_file_limit();
    let a = material("a.example");
    let b = material("b.example");
    // Only admission defends B here: idle connections would otherwise live
    // a minute.
    let mut patient = settings();
    patient.link.handshake_timeout_ms = 60_000;
    let node_b = start(tls(1, &b, &[&a]), vec![], 1, patient);
    let to = node_b.local_addr();
    // 500 connections from one source: past its handshake budget they are
    // closed at once.
    let one = std::net::Ipv4Addr::new(127, 0, 0, 2);
    let mut idle: std::collections::VecDeque<TcpStream> =
        (0..500).filter_map(|_| connect_from(one, to)).collect();
    // 500 more from 250 sources, then a stream of new ones from ever other
    // sources, keeping a thousand open, while A dials.
    let source = |i: u32| std::net::Ipv4Addr::from(0x7F01_0000 | (i % 60_000));
    idle.extend((0..500).filter_map(|i| connect_from(source(i / 2), to)));
    assert!(idle.len() >= 990, "opened {}", idle.len());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut i = 500;
            while !stop.load(Ordering::Relaxed) {
                if let Some(c) = connect_from(source(i / 2), to) {
                    idle.push_back(c);
                    if idle.len() > 1_000 {
                        idle.pop_front();
                    }
                }
                i += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
            i - 500
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let node_a = start(
        tls(1, &a, &[&b]),
        vec![(b.network.clone(), to)],
        1,
        settings(),
    );
    let linked = node_a.wait_for_links(&b.network, 1, SECONDS_5);
    stop.store(true, Ordering::Relaxed);
    let opened_meanwhile = flood.join().unwrap();
    assert!(linked, "A's handshake completed under the flood");
    assert!(node_a.send(0, &b.network, frame(1)));
    assert_eq!(recv(&node_b, 1, SECONDS_5).len(), 1);
    let c = node_b.counters();
    assert!(
        BgCounters::get(&c.handshake_rate_limited) >= 400,
        "one source past its budget: {}",
        BgCounters::get(&c.handshake_rate_limited)
    );
    assert!(
        c.refused(Refusal::EvictedIdle) > 0,
        "idle connections made room ({opened_meanwhile} opened during the dial)"
    );
}
