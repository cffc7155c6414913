//! A captured device request cannot be used again (issue 15, items 1 and
//! 8; docs/reliability.md §4a, docs/wire-format.md §5.11).
//!
//! Two `presence-gw run` processes, A and B. A's device sends one signed
//! request; an attacker who captured its bytes sends them again, from
//! another address, while the request is remembered, after it is
//! forgotten, and after A restarted. Only the device's own retransmission
//! is answered (with the first answer); nothing is debited at A or charged
//! at B a second time; after the restart the capture is refused.

mod common;
use common::{metric, start, table};

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use presence_codec::{
    encode_frame, ErrorReason, FrameReader, Message, Outcome, FRAME_LEN_DEFAULT_MAX,
};
use presence_engine::lab::{self, DeviceClient, Devices};

/// The metric once it has held still for 300 ms (workers publish their
/// counters every 100 ms).
fn settled(metrics: SocketAddr, name: &str) -> u64 {
    let mut last = metric(metrics, name);
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let now = metric(metrics, name);
        if now == last {
            return now;
        }
        last = now;
    }
}

/// The answer datagram `socket` receives within `wait`, if any.
fn receive(socket: &UdpSocket, wait: Duration) -> Option<Vec<u8>> {
    socket.set_read_timeout(Some(wait)).unwrap();
    let mut buf = [0u8; 2048];
    socket.recv(&mut buf).ok().map(|n| buf[..n].to_vec())
}

fn outcome(datagram: &[u8]) -> Option<Outcome> {
    FrameReader::new(datagram, FRAME_LEN_DEFAULT_MAX)
        .ok()?
        .flatten()
        .find_map(|m| match m {
            Message::Answer(a) => Some(a.outcome),
            _ => None,
        })
}

/// Asks fresh questions of `watcher` about `target` until one is answered
/// with B's status (the border link may take a moment).
fn until_linked(
    a: SocketAddr,
    watcher: &(presence_codec::Msisdn, String),
    target: presence_codec::Msisdn,
) {
    let mut client = DeviceClient::new(a).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        client
            .query(&[(watcher.0, watcher.1.as_str(), target)])
            .unwrap();
        let answers = client.answers(1, Duration::from_secs(2));
        if answers
            .iter()
            .any(|x| matches!(x.outcome, Outcome::Attached { .. }))
        {
            return;
        }
        assert!(Instant::now() < deadline, "no link: {answers:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_captured_request_is_neither_answered_to_others_nor_charged_again_nor_taken_after_a_restart() {
    let root = std::env::temp_dir().join(format!("replay-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let (a, b) = lab::write_two_networks(&root, &table(), "o2.gb", "t-mobile.de", 20, 20).unwrap();
    let b_config = lab::write_config(&b, &a, &table(), 1, None, true).unwrap();
    let mut node_b = start(&b_config);
    let a_config = lab::write_config(&a, &b, &table(), 1, Some(node_b.border), true).unwrap();
    let mut node_a = start(&a_config);
    let (a_metrics, b_metrics) = (node_a.metrics.unwrap(), node_b.metrics.unwrap());
    DeviceClient::new(node_b.client)
        .unwrap()
        .publish_attached(&b.subscribers)
        .unwrap();
    // B's subscriber 0 lists A's subscriber 0 (the demo's buddy rule).
    let (watcher, target) = (a.subscribers[0].clone(), b.subscribers[0].0);
    until_linked(node_a.client, &watcher, target);

    let charges = "presence_ps_charge_records_total";
    let accepted = "presence_role_events_total{role=\"wa\",event=\"accepted\"}";
    let replays = "presence_role_events_total{role=\"wa\",event=\"replays\"}";
    let charged_before = settled(b_metrics, charges);
    let accepted_before = settled(a_metrics, accepted);

    // The device's request, and its bytes as an attacker captures them.
    let mut devices = Devices::default();
    let request = devices.query(watcher.0, watcher.1.as_bytes(), 900_001, target);
    let mut captured = Vec::new();
    encode_frame(&[Message::ClientRequest(request)], 1472, &mut captured).unwrap();
    assert_eq!(
        captured[1], 2,
        "a signed request travels in a version 2 frame"
    );
    let device = UdpSocket::bind("127.0.0.1:0").unwrap();
    let attacker = UdpSocket::bind("127.0.0.1:0").unwrap();
    let sent = Instant::now();
    device.send_to(&captured, node_a.client).unwrap();
    let first = receive(&device, Duration::from_secs(5)).expect("the device is answered");
    assert!(matches!(outcome(&first), Some(Outcome::Attached { .. })));

    // While remembered: the attacker gets nothing; the device's own
    // retransmission gets the first answer again, byte for byte.
    for _ in 0..3 {
        attacker.send_to(&captured, node_a.client).unwrap();
    }
    assert_eq!(receive(&attacker, Duration::from_millis(500)), None);
    device.send_to(&captured, node_a.client).unwrap();
    assert_eq!(
        receive(&device, Duration::from_secs(2)),
        Some(first.clone())
    );

    // Forgotten (four deadlines, 6 s): nobody gets anything.
    std::thread::sleep(Duration::from_millis(6_500).saturating_sub(sent.elapsed()));
    attacker.send_to(&captured, node_a.client).unwrap();
    device.send_to(&captured, node_a.client).unwrap();
    assert_eq!(receive(&attacker, Duration::from_millis(500)), None);
    assert_eq!(receive(&device, Duration::from_millis(200)), None);

    assert_eq!(
        settled(a_metrics, accepted),
        accepted_before + 1,
        "one query"
    );
    assert_eq!(
        settled(b_metrics, charges),
        charged_before + 1,
        "one charge"
    );
    assert!(settled(a_metrics, replays) >= 5, "the replays are counted");

    // A restarts: its memory and replay windows are gone, but nothing
    // signed before it started is taken.
    node_a.terminate(Duration::from_secs(10));
    let mut node_a = start(&a_config);
    let a_metrics = node_a.metrics.unwrap();
    until_linked(node_a.client, &watcher, target);
    let charged_before = settled(b_metrics, charges);
    let accepted_before = settled(a_metrics, accepted);
    attacker.send_to(&captured, node_a.client).unwrap();
    let refused = receive(&attacker, Duration::from_secs(2)).expect("refused, to its source");
    assert_eq!(
        outcome(&refused),
        Some(Outcome::Error(ErrorReason::Unauthenticated))
    );
    assert_eq!(settled(a_metrics, accepted), accepted_before);
    assert_eq!(
        settled(b_metrics, charges),
        charged_before,
        "not charged twice"
    );
    assert!(
        metric(
            a_metrics,
            "presence_role_events_total{role=\"wa\",event=\"auth_stale\"}"
        ) >= 1
    );
    node_a.terminate(Duration::from_secs(10));
    node_b.terminate(Duration::from_secs(10));
    let _ = std::fs::remove_dir_all(&root);
}
