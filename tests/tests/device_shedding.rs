//! Shedding at the device port (issue 16, item 4): a datagram that waited
//! too long in the socket is answered `Overloaded` at once, every request
//! and publication in it, with nothing checked, decided or debited.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use presence_codec::{
    AckStatus, ClientOperation, ClientRequest, DeviceAuth, DeviceKey, FrameReader, Message, Msisdn,
    OpenFrame, Outcome, PresenceState, Publish, FRAME_LEN_ABSOLUTE_MAX, FRAME_LEN_DEFAULT_MAX,
};
use presence_engine::node::{Destination, Node, NodeConfig, Provisioned};
use presence_engine::roles::{Hss, PsId};
use presence_engine::table::{NumberingTable, Prefix};

fn m(text: &str) -> Msisdn {
    text.parse().unwrap()
}

#[test]
fn a_shed_datagram_gets_overloaded_for_each_message_and_changes_nothing() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/msisdn-prefixes.csv");
    let world = Arc::new(NumberingTable::load(&path, None).unwrap());
    let names = world.snapshot().names().clone();
    let net_a = names.id("o2.gb").unwrap();
    let (a, b) = (m("447700900123"), m("447700900124"));
    let hss = Arc::new(Hss::new(&[(Prefix::parse("447700").unwrap(), PsId(0))]));
    let mut node = Node::new(NodeConfig::new(net_a, 0, 1), &world, &hss);
    node.provision(
        0,
        &HashMap::from([(
            a,
            Provisioned {
                credential: b"secret-a".to_vec(),
                credit: 1,
                consent: true,
                buddies: vec![],
            },
        )]),
        &hss,
    );
    let device: SocketAddr = "10.0.0.1:4000".parse().unwrap();
    let request = |txid| {
        Message::ClientRequest(DeviceKey::derive(a, b"secret-a").sign_request(
            ClientRequest {
                txid,
                watcher: a,
                target: b,
                operation: ClientOperation::Query,
                auth: DeviceAuth::UNSIGNED,
            },
            1_000 + txid,
        ))
    };
    let publish = Message::Publish(DeviceKey::derive(b, b"wrong").sign_publish(
        Publish {
            txid: 9,
            subscriber: b,
            state: PresenceState::Detached,
            auth: DeviceAuth::UNSIGNED,
        },
        1_000,
    ));
    let mut frame = OpenFrame::new(Vec::new(), FRAME_LEN_DEFAULT_MAX);
    for message in [request(7), request(8), publish] {
        frame.push(&message).unwrap();
    }
    node.shed_datagram(1_000_000, device, &frame.into_bytes(), 25);

    let mut replies = Vec::new();
    while let Some(out) = node.poll_transmit() {
        assert_eq!(out.to, Destination::Device(device));
        for message in FrameReader::new(&out.frame, FRAME_LEN_ABSOLUTE_MAX).unwrap() {
            replies.push(match message.unwrap() {
                Message::Answer(x) => (x.txid, Some(x.outcome), None),
                Message::Ack(x) => (x.txid, None, Some(x.status)),
                other => panic!("{other:?}"),
            });
        }
    }
    let overloaded = Some(Outcome::Overloaded { retry_after_ms: 25 });
    assert_eq!(
        replies,
        [
            (7, overloaded, None),
            (8, overloaded, None),
            (9, None, Some(AckStatus::Overloaded))
        ]
    );
    assert_eq!(node.counters().queue_shed, 3);
    assert_eq!(node.pending(), 0, "nothing started");
    assert_eq!(node.counters().requests, 0, "nothing taken as a request");

    // Nothing was debited or remembered: the device's next request, with a
    // new counter, is served with its one unit of credit.
    let mut frame = OpenFrame::new(Vec::new(), FRAME_LEN_DEFAULT_MAX);
    frame.push(&request(10)).unwrap();
    node.handle_datagram(2_000_000, device, &frame.into_bytes());
    assert_eq!(node.counters().requests, 1);
    let mut answers = Vec::new();
    while let Some(out) = node.poll_transmit() {
        for message in FrameReader::new(&out.frame, FRAME_LEN_ABSOLUTE_MAX).unwrap() {
            if let Ok(Message::Answer(x)) = message {
                answers.push((x.txid, x.outcome));
            }
        }
    }
    // B is nobody's number here: served, and answered as such.
    assert_eq!(answers, [(10, Outcome::NotAvailable)]);
}
