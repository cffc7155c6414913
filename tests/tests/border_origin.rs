//! The origin network of a query is the border link's authenticated peer,
//! never what the message says: a query network C sends claiming one of A's
//! subscribers as its watcher is refused by B's IGPS before the HSS is
//! asked (an alarm counter), answered to C, and charges no one.
//!
//! Real border gateways on loopback (TLS, generated certificates) carry the
//! frames; network B's IGPS, HSS and presence server decide them. The BG
//! names in the certificates are the numbering table's network names.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use presence_border::endpoint::EndpointSettings;
use presence_border::node::{BgNode, InboundFrame, NodeConfig};
use presence_border::pki::NetworkMaterial;
use presence_border::NetworkName;
use presence_codec::{
    encode_frame, DeviceAuth, DeviceKey, ErrorReason, FrameReader, Message, Msisdn, Outcome,
    PresenceState, Publish, Query, Reachability, FRAME_LEN_DEFAULT_MAX,
};
use presence_engine::roles::{Addr, Hss, Igps, Outbox, PresenceServer, PsId, SubscriberRecord};
use presence_engine::table::{NetworkId, NumberingTable, Prefix};

fn m(text: &str) -> Msisdn {
    text.parse().unwrap()
}

fn node(
    me: &NetworkMaterial,
    trusted: &[&NetworkMaterial],
    dial: Vec<(NetworkName, std::net::SocketAddr)>,
) -> BgNode {
    let tls = Arc::new(me.tls(1, trusted).unwrap());
    BgNode::start(NodeConfig {
        tls,
        listen: "127.0.0.1:0".parse().unwrap(),
        peers: dial,
        workers: 1,
        settings: EndpointSettings::default(),
        inbound_capacity: 1024,
    })
    .unwrap()
}

/// A WA numbers transactions under its instance (`reply_node` 3).
const TXID: u64 = (3 << 48) | 77;

fn query_frame(txid: u64, watcher: Msisdn, target: Msisdn) -> Vec<u8> {
    let query = Message::Query(Query {
        txid,
        watcher,
        target,
        hop_limit: 7,
        budget_ms: 1500,
        reply_node: 3,
        route_version: 1,
    });
    let mut frame = Vec::new();
    encode_frame(&[query], FRAME_LEN_DEFAULT_MAX, &mut frame).unwrap();
    frame
}

/// Charge records raised, and where answers went with what.
type Decided = (usize, Vec<(Addr, Outcome)>);

#[test]
fn a_query_is_charged_to_the_network_whose_certificate_carried_it() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/msisdn-prefixes.csv");
    let world = Arc::new(NumberingTable::load(&path, None).unwrap());
    let names = world.snapshot().names().clone();
    let id = |name: &NetworkName| -> NetworkId { names.id(name.as_str()).unwrap() };

    let a = NetworkMaterial::generate(&"o2.gb".parse().unwrap()).unwrap();
    let b = NetworkMaterial::generate(&"t-mobile.de".parse().unwrap()).unwrap();
    let c = NetworkMaterial::generate(&"vodafone.de".parse().unwrap()).unwrap();
    let bg_b = node(&b, &[&a, &c], vec![]);
    let bg_a = node(&a, &[&b], vec![(b.network.clone(), bg_b.local_addr())]);
    let bg_c = node(&c, &[&b], vec![(b.network.clone(), bg_b.local_addr())]);
    assert!(bg_a.wait_for_links(&b.network, 1, Duration::from_secs(5)));
    assert!(bg_c.wait_for_links(&b.network, 1, Duration::from_secs(5)));

    // B (a t-mobile.de subscriber) lets A's subscriber watch, and is attached.
    let (watcher_of_a, target_in_b) = (m("447700900123"), m("4915112345678"));
    assert_eq!(world.snapshot().lookup(watcher_of_a), Some(id(&a.network)));
    let net_b = id(&b.network);
    let hss = Arc::new(Hss::new(&[(Prefix::parse("49151").unwrap(), PsId(1))]));
    let mut igps = Igps::new(net_b, &hss, &world);
    let mut ps = PresenceServer::new(PsId(1), net_b, 10_000, 1024);
    ps.provision(
        target_in_b,
        SubscriberRecord::new(target_in_b, b"secret-b", vec![watcher_of_a]),
    );
    let mut out = Outbox::default();
    ps.handle(
        1_000,
        Addr::Device(target_in_b),
        net_b,
        &Message::Publish(DeviceKey::derive(target_in_b, b"secret-b").sign_publish(
            Publish {
                txid: 1,
                subscriber: target_in_b,
                state: PresenceState::Attached(Reachability::PACKET_DATA_AND_SMS),
                auth: DeviceAuth::UNSIGNED,
            },
            1_000,
        )),
        &mut out,
    );
    out.clear();

    // A asks genuinely; C sends the very same query, A's watcher and txid.
    assert!(bg_a.send(0, &b.network, query_frame(TXID, watcher_of_a, target_in_b)));
    assert!(bg_c.send(0, &b.network, query_frame(TXID, watcher_of_a, target_in_b)));
    let mut arrived: Vec<InboundFrame> = (0..2)
        .map(|_| bg_b.inbound().recv_timeout(Duration::from_secs(5)).unwrap())
        .collect();
    arrived.sort_by(|x, y| x.peer.cmp(&y.peer));
    assert_eq!(arrived[0].peer, a.network);
    assert_eq!(arrived[1].peer, c.network);
    assert_eq!(arrived[0].frame, arrived[1].frame, "byte-identical content");

    // B's side: the origin is the link's peer, handed beside the frame.
    let mut decided: HashMap<NetworkId, Decided> = HashMap::new();
    for inbound in &arrived {
        let origin = id(&inbound.peer);
        FrameReader::for_each_accepted(&inbound.frame, FRAME_LEN_DEFAULT_MAX, |message| {
            igps.handle(
                5_000,
                Addr::Border { network: origin },
                origin,
                &message,
                &mut out,
            );
        })
        .unwrap();
        let to_ps: Vec<_> = out.transmits.drain(..).collect();
        for transmit in to_ps {
            assert_eq!(transmit.origin, origin, "the IGPS carries the link's peer");
            if transmit.to != Addr::Ps(PsId(1)) {
                out.transmits.push(transmit);
                continue;
            }
            ps.handle(
                5_001,
                Addr::Igps,
                transmit.origin,
                &transmit.message,
                &mut out,
            );
        }
        let records = out.records.iter().filter(|r| r.chargeable()).count();
        assert!(out.records.iter().all(|r| r.origin == origin));
        let replies = out
            .transmits
            .iter()
            .map(|t| match t.message {
                Message::Answer(a) => (t.to, a.outcome),
                _ => panic!("only answers: {t:?}"),
            })
            .collect();
        decided.insert(origin, (records, replies));
        out.clear();
    }
    let (a_records, a_replies) = &decided[&id(&a.network)];
    assert_eq!(*a_records, 1, "A's query is charged to A");
    assert_eq!(a_replies.len(), 1);
    assert_eq!(
        a_replies[0].0,
        Addr::BorderReply {
            network: id(&a.network),
            reply_node: 3
        }
    );
    // C reused A's watcher and transaction id: refused, back to C, charged
    // to no one, and the alarm counted; A's decision is untouched.
    let (c_records, c_replies) = &decided[&id(&c.network)];
    assert_eq!(*c_records, 0);
    assert_eq!(
        c_replies,
        &vec![(
            Addr::BorderReply {
                network: id(&c.network),
                reply_node: 3
            },
            Outcome::Error(ErrorReason::Refused)
        )]
    );
    assert_eq!(igps.counters().spoofed_watcher, 1);
    assert_eq!(igps.counters().forwarded, 1, "no HSS lookup for C's query");
}
