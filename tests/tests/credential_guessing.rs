//! Online credential guessing is limited before the credential is checked
//! (issue 15; docs/reliability.md, "Credential guessing"): per watcher, a
//! lock-out that doubles, whatever the number of sources; per source
//! network, a failure budget. Every refusal looks the same to the guesser,
//! and publication acks do not tell who is a subscriber. A's [`Node`] on
//! the shared numbering table, fed device datagrams.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use presence_codec::{
    AckStatus, ClientOperation, ClientRequest, DeviceAuth, DeviceKey, ErrorReason, FrameReader,
    Message, Msisdn, OpenFrame, Outcome, PresenceState, Publish, Reachability,
    FRAME_LEN_ABSOLUTE_MAX, FRAME_LEN_DEFAULT_MAX,
};
use presence_engine::node::{Destination, Node, NodeConfig, Provisioned};
use presence_engine::roles::{Hss, PsId, Rate};
use presence_engine::table::{NumberingTable, Prefix};

const UNAUTHENTICATED: Outcome = Outcome::Error(ErrorReason::Unauthenticated);

fn m(n: u64) -> Msisdn {
    Msisdn::from_u64(447_700_900_000 + n).unwrap()
}

/// A's node: watchers 0..`watchers` with credential "secret-<n>", and a
/// budget of `per_source` failed checks per source network (if any).
fn node_a(watchers: u64, per_source: Option<Rate>) -> Node {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/msisdn-prefixes.csv");
    let world = Arc::new(NumberingTable::load(&path, None).unwrap());
    let names = world.snapshot().names().clone();
    let (net_a, net_b) = (names.id("o2.gb").unwrap(), names.id("t-mobile.de").unwrap());
    let hss = Arc::new(Hss::new(&[(Prefix::parse("447700").unwrap(), PsId(0))]));
    let mut config = NodeConfig::new(net_a, 0, 1);
    config.peers = vec![net_b];
    config.limits.auth_failures_per_source = per_source;
    let mut node = Node::new(config, &world, &hss);
    node.set_peer_workers(net_b, 1);
    let subscribers: HashMap<Msisdn, Provisioned> = (0..watchers)
        .map(|n| {
            let account = Provisioned {
                credential: format!("secret-{n}").into_bytes(),
                credit: 1_000,
                consent: true,
                buddies: vec![],
            };
            (m(n), account)
        })
        .collect();
    node.provision(0, &subscribers, &hss);
    node
}

thread_local! {
    /// The last counter a device of this test signed with.
    static LAST_COUNTER: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// A device's next counter at `now_ms` (the node's clock is Unix time 0 at
/// 0): the clock, or past the last.
fn next_counter(now_ms: u64) -> u64 {
    LAST_COUNTER.with(|last| {
        last.set(now_ms.max(last.get() + 1));
        last.get()
    })
}

/// Asks, as `watcher` from `from` with `credential`, about a number of
/// t-mobile.de; returns the answer to the device, if one came (an accepted
/// query is answered later, by B).
fn ask(
    node: &mut Node,
    now_ms: u64,
    from: SocketAddr,
    id: u64,
    watcher: Msisdn,
    credential: &[u8],
) -> Option<Outcome> {
    let request = Message::ClientRequest(DeviceKey::derive(watcher, credential).sign_request(
        ClientRequest {
            txid: id,
            watcher,
            target: "4915112345678".parse().unwrap(),
            operation: ClientOperation::Query,
            auth: DeviceAuth::UNSIGNED,
        },
        next_counter(now_ms),
    ));
    let mut frame = OpenFrame::new(Vec::new(), FRAME_LEN_DEFAULT_MAX);
    frame.push(&request).unwrap();
    node.handle_datagram(now_ms * 1000, from, &frame.into_bytes());
    let mut answer = None;
    while let Some(out) = node.poll_transmit() {
        if out.to == Destination::Device(from) {
            for message in FrameReader::new(&out.frame, FRAME_LEN_ABSOLUTE_MAX).unwrap() {
                if let Ok(Message::Answer(a)) = message {
                    answer = Some(a.outcome);
                }
            }
        }
        node.recycle(out.frame);
    }
    answer
}

/// Source `n`: a different /24 for every `n`.
fn source(n: u64) -> SocketAddr {
    let [_, b, c, d] = (n as u32).to_be_bytes();
    SocketAddr::from((Ipv4Addr::new(10, b, c, d), 4000))
}

#[test]
fn a_guesser_with_a_thousand_sources_gets_eight_checks_a_minute_at_one_watcher() {
    let mut node = node_a(1, None);
    let victim = m(0);
    // One guess a millisecond for a minute, each from another /24.
    for now in 0..60_000u64 {
        let from = source(256 * (now % 1000));
        let answer = ask(&mut node, now, from, now, victim, b"guess");
        assert_eq!(answer, Some(UNAUTHENTICATED), "at {now} ms");
    }
    let wa = node.role_counters().wa;
    assert!(
        wa.auth_failures <= 10,
        "{} failed checks in a minute",
        wa.auth_failures
    );
    assert_eq!(wa.auth_failures, 8, "five, then after 6, 12 and 24 s");
    assert_eq!(wa.lockouts, 1, "one credential_guessing alarm for the run");
    // The owner with the right credential while locked out: the same
    // refusal, nothing learned, nothing debited.
    assert_eq!(
        ask(&mut node, 60_000, source(7), 1 << 40, victim, b"secret-0"),
        Some(UNAUTHENTICATED)
    );
    // And once the lock-out is over (24 s + 48 s after the last check),
    // the owner gets in: no answer yet, the query went out to B.
    assert_eq!(
        ask(&mut node, 90_010, source(7), 1 << 41, victim, b"secret-0"),
        None
    );
}

#[test]
fn a_source_network_spraying_many_watchers_is_held_to_its_failure_budget() {
    let rate = Rate {
        per_second: 10,
        burst: 100,
    };
    let mut node = node_a(10_000, Some(rate));
    // One /24, ten seconds, one guess a millisecond, each at another
    // watcher (known or not: both cost the source).
    let spray = |i: u64| SocketAddr::from((Ipv4Addr::new(192, 0, 2, (i % 250) as u8 + 1), 5000));
    for now in 0..10_000u64 {
        let answer = ask(
            &mut node,
            now,
            spray(now),
            now,
            m(now * 7 % 20_000),
            b"guess",
        );
        assert_eq!(answer, Some(UNAUTHENTICATED), "at {now} ms");
    }
    let wa = node.role_counters().wa;
    // The burst, then ten a second.
    assert!(
        (100..=200).contains(&wa.auth_failures),
        "{} checks reached",
        wa.auth_failures
    );
    assert_eq!(wa.auth_failures + wa.auth_source_limited, 10_000);
    // A subscriber of that /24 with the right credential is refused the
    // same way meanwhile (the price of a shared source network): here just
    // after a guess took the token that came back ...
    ask(&mut node, 10_000, spray(1), 10_000, m(1), b"guess");
    assert_eq!(
        ask(&mut node, 10_000, spray(3), 1 << 40, m(5), b"secret-5"),
        Some(UNAUTHENTICATED)
    );
    // ... one from another source network is not.
    assert_eq!(
        ask(
            &mut node,
            10_000,
            source(9 * 256),
            1 << 41,
            m(5),
            b"secret-5"
        ),
        None
    );
}

/// Publishes `state` as `subscriber` from `from`; returns the ack frame's
/// bytes and its status.
fn publish(
    node: &mut Node,
    now_ms: u64,
    from: SocketAddr,
    txid: u64,
    subscriber: Msisdn,
    credential: &[u8],
) -> (Vec<u8>, Option<AckStatus>) {
    let message = Message::Publish(DeviceKey::derive(subscriber, credential).sign_publish(
        Publish {
            txid,
            subscriber,
            state: PresenceState::Attached(Reachability::PACKET_DATA_AND_SMS),
            auth: DeviceAuth::UNSIGNED,
        },
        next_counter(now_ms),
    ));
    let mut frame = OpenFrame::new(Vec::new(), FRAME_LEN_DEFAULT_MAX);
    frame.push(&message).unwrap();
    node.handle_datagram(now_ms * 1000, from, &frame.into_bytes());
    let mut ack = (Vec::new(), None);
    while let Some(out) = node.poll_transmit() {
        if out.to == Destination::Device(from) {
            for message in FrameReader::new(&out.frame, FRAME_LEN_ABSOLUTE_MAX).unwrap() {
                if let Ok(Message::Ack(a)) = message {
                    ack = (out.frame.clone(), Some(a.status));
                }
            }
        }
        node.recycle(out.frame);
    }
    ack
}

#[test]
fn publication_acks_do_not_tell_who_is_a_subscriber() {
    // A's node also runs A's presence servers: its HSS holds 447700.
    let mut node = node_a(10, None);
    let from = source(1);
    let subscriber = m(3);
    let unknown_in_range = m(9_999);
    let out_of_range: Msisdn = "447911123456".parse().unwrap();
    let cases = [
        ("wrong credential", subscriber),
        ("unknown, in an HSS range", unknown_in_range),
        ("in no HSS range", out_of_range),
    ];
    let acks: Vec<(Vec<u8>, Option<AckStatus>)> = cases
        .iter()
        .map(|&(_, who)| publish(&mut node, 0, from, 77, who, b"wrong"))
        .collect();
    for ((name, _), (_, status)) in cases.iter().zip(&acks) {
        assert_eq!(*status, Some(AckStatus::Unauthenticated), "{name}");
    }
    assert!(
        acks.iter().all(|(bytes, _)| *bytes == acks[0].0),
        "byte-identical acks"
    );
    // The subscriber's own device is acked Ok.
    let (_, ok) = publish(&mut node, 0, from, 78, subscriber, b"secret-3");
    assert_eq!(ok, Some(AckStatus::Ok));
}

#[test]
fn guessing_a_subscribers_publication_credential_is_locked_out() {
    let mut node = node_a(10, None);
    let victim = m(4);
    for now in 0..60_000u64 {
        let from = source(256 * (now % 1000));
        let (_, status) = publish(&mut node, now, from, now, victim, b"guess");
        assert_eq!(status, Some(AckStatus::Unauthenticated), "at {now} ms");
    }
    let ps = node.role_counters().ps;
    assert_eq!(ps.auth_failures, 8, "checks reached in the minute");
    assert_eq!(ps.auth_locked, 60_000 - 8);
    assert_eq!(ps.lockouts, 1);
    // Nobody could publish false presence for the victim meanwhile, and
    // the victim's own device waits out the lock-out like anyone.
    let (_, locked) = publish(&mut node, 60_000, source(5), 1 << 40, victim, b"secret-4");
    assert_eq!(locked, Some(AckStatus::Unauthenticated));
    let (_, ok) = publish(&mut node, 90_010, source(5), 1 << 41, victim, b"secret-4");
    assert_eq!(ok, Some(AckStatus::Ok));
}
