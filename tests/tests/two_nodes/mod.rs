//! Two networks' nodes on the shared numbering table, driven by hand:
//! the helpers the node-level tests share.
#![allow(dead_code, unreachable_pub)]

use std::path::Path;
use std::sync::Arc;

use presence_codec::{
    ClientOperation, ClientRequest, DeviceAuth, DeviceKey, FrameReader, Message, Msisdn, OpenFrame,
    FRAME_LEN_ABSOLUTE_MAX, FRAME_LEN_DEFAULT_MAX,
};
use presence_engine::journal::JournalSink;
use presence_engine::node::{Node, NodeConfig, Outgoing, Provisioned};
use presence_engine::roles::{DecisionRecord, Hss};
use presence_engine::table::{NetworkId, NumberingTable};

/// The shipped numbering table, and the ids of o2.gb (A's network) and
/// t-mobile.de (B's) in it.
pub fn world() -> (Arc<NumberingTable>, NetworkId, NetworkId) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/msisdn-prefixes.csv");
    let world = Arc::new(NumberingTable::load(&path, None).unwrap());
    let names = world.snapshot().names().clone();
    let (net_a, net_b) = (names.id("o2.gb").unwrap(), names.id("t-mobile.de").unwrap());
    (world, net_a, net_b)
}

/// A device's request, signed with the key of `secret` and `counter` as
/// its clock (§5.11), in a frame.
pub fn request(
    watcher: Msisdn,
    secret: &[u8],
    txid: u64,
    target: Msisdn,
    operation: ClientOperation,
    counter: u64,
) -> Vec<u8> {
    frame(&Message::ClientRequest(
        DeviceKey::derive(watcher, secret).sign_request(
            ClientRequest {
                txid,
                watcher,
                target,
                operation,
                auth: DeviceAuth::UNSIGNED,
            },
            counter,
        ),
    ))
}

pub fn m(text: &str) -> Msisdn {
    text.parse().unwrap()
}

/// A journal that keeps what it is given.
#[derive(Default)]
pub struct Journal {
    pub records: Vec<(u64, DecisionRecord)>,
    pub tickets: Vec<u64>,
}

impl JournalSink for Journal {
    fn append(&mut self, seq: u64, _at_unix_ms: u64, _origin: &str, record: &DecisionRecord) {
        self.records.push((seq, *record));
    }
    fn mark(&mut self, _mark: presence_engine::journal::MarkRef<'_>) {}
    fn sync(&mut self, ticket: u64) {
        self.tickets.push(ticket);
    }
}

pub fn frame(message: &Message<'_>) -> Vec<u8> {
    let mut frame = OpenFrame::new(Vec::new(), FRAME_LEN_DEFAULT_MAX);
    frame.push(message).unwrap();
    frame.into_bytes()
}

pub fn messages(frame: &[u8]) -> Vec<Message<'_>> {
    FrameReader::new(frame, FRAME_LEN_ABSOLUTE_MAX)
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

pub fn drain(node: &mut Node) -> Vec<Outgoing> {
    std::iter::from_fn(|| node.poll_transmit()).collect()
}

pub fn provisioned(credential: &[u8], buddies: Vec<Msisdn>) -> Provisioned {
    Provisioned {
        credential: credential.to_vec(),
        credit: 10,
        consent: true,
        buddies,
    }
}

pub fn node(
    network: NetworkId,
    peer: NetworkId,
    world: &Arc<NumberingTable>,
    hss: &Arc<Hss>,
) -> Node {
    let mut config = NodeConfig::new(network, 0, 1);
    config.peers = vec![peer];
    let mut node = Node::new(config, world, hss);
    // The peer's border links said: one worker.
    node.set_peer_workers(peer, 1);
    node
}
