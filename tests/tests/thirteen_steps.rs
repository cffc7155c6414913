//! One query walked through the thirteen steps of the seed's sequence, with
//! two networks' [`Node`]s — the code the appliance runs — on the shared
//! numbering table, asserting each step at the node's inputs and outputs.
//! A (447700900123, network o2.gb) asks about B (4915112345678,
//! t-mobile.de). Only bytes pass between the nodes, as on the wire. And
//! step 7 when B is past its capacity: the frame shed at B's border.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

mod two_nodes;
use two_nodes::*;

use presence_codec::{
    ClientOperation, DeviceAuth, DeviceKey, Message, Msisdn, OpenFrame, Outcome, PresenceState,
    Publish, Query, Reachability, FRAME_LEN_DEFAULT_MAX,
};
use presence_engine::journal::Durability;
use presence_engine::node::{BorderDest, Destination, Node};
use presence_engine::roles::{Hss, PsId};
use presence_engine::table::{NetworkId, NumberingTable, Prefix};

#[test]
fn a_query_walks_the_thirteen_steps_through_two_nodes() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/msisdn-prefixes.csv");
    let world = Arc::new(NumberingTable::load(&path, None).unwrap());
    let names = world.snapshot().names().clone();
    let (net_a, net_b) = (names.id("o2.gb").unwrap(), names.id("t-mobile.de").unwrap());
    let (a, b) = (m("447700900123"), m("4915112345678"));
    let a_device: SocketAddr = "10.0.0.1:4000".parse().unwrap();
    let b_device: SocketAddr = "10.0.1.1:4000".parse().unwrap();

    // Network A: A provisioned with a credential and 10 units of credit.
    let hss_a = Arc::new(Hss::new(&[(Prefix::parse("447700").unwrap(), PsId(0))]));
    let mut node_a = node(net_a, net_b, &world, &hss_a);
    node_a.provision(
        0,
        &HashMap::from([(a, provisioned(b"secret-a", vec![]))]),
        &hss_a,
    );
    // Network B: B's range on presence server 1; B lets A watch and is
    // attached.
    let hss_b = Arc::new(Hss::new(&[(Prefix::parse("49151").unwrap(), PsId(1))]));
    let mut node_b = node(net_b, net_a, &world, &hss_b);
    node_b.provision(
        0,
        &HashMap::from([(b, provisioned(b"secret-b", vec![a]))]),
        &hss_b,
    );
    node_b.handle_datagram(
        1_000_000,
        b_device,
        &frame(&Message::Publish(
            DeviceKey::derive(b, b"secret-b").sign_publish(
                Publish {
                    txid: 1,
                    subscriber: b,
                    state: PresenceState::Attached(Reachability::PACKET_DATA_AND_SMS),
                    auth: DeviceAuth::UNSIGNED,
                },
                1_000,
            ),
        )),
    );
    let acks = drain(&mut node_b);
    assert_eq!(
        acks[0].to,
        Destination::Device(b_device),
        "the publication is acked"
    );

    // Step 1: A asks "is B attached?", naming B by MSISDN.
    let now = 5_000_000;
    node_a.handle_datagram(now, a_device, &a_asks(a, b));
    // Step 2: the WA authenticated A and debited the credit.
    assert_eq!(node_a.credit(a), Some(9));
    // Step 3: B's number is not A's network's (the numbering table says;
    // a number carved out of o2's 44770 block is not o2's either).
    assert_eq!(world.snapshot().lookup(b), Some(net_b));
    assert_ne!(world.snapshot().lookup(m("447700012345")), Some(net_a));
    // Steps 4–6: the query went to A's OGPS, which found B's network
    // (step 5) and sent it out through the border (step 6), one hop used,
    // the table version stamped, to the worker of B's gateway owning B.
    let out = drain(&mut node_a);
    assert_eq!(out.len(), 1);
    assert_eq!(
        out[0].to,
        Destination::Border(BorderDest {
            network: net_b,
            worker: Some(0)
        })
    );
    let step6 = out[0].frame.clone();
    let Message::Query(query) = messages(&step6)[0] else {
        panic!("step 6 forwards a query")
    };
    assert_eq!((query.watcher, query.target, query.hop_limit), (a, b, 7));
    assert_eq!(query.route_version, 1);
    assert_eq!(query.budget_ms, 1500);

    // Steps 7–10: B's IGPS takes the origin from the border link (network
    // A, passed beside the frame: the message names no network), asks the
    // HSS for B's presence server (7–8) and forwards there (9), which finds
    // A on B's buddy list with B's consent (10). The answer waits for the
    // journal: nothing leaves yet.
    node_b.handle_border_frame(now + 10_000, net_a, &step6);
    assert!(
        drain(&mut node_b).is_empty(),
        "held until the charge is durable"
    );
    // Step 11: one charge record, for A, against A's network.
    let mut journal = Journal::default();
    node_b.poll_journal(&mut journal);
    assert_eq!(journal.records.len(), 1);
    let (seq, record) = journal.records[0];
    assert!(record.chargeable());
    assert_eq!(
        (record.origin, record.watcher, record.target, record.ps),
        (net_a, a, b, PsId(1))
    );
    // Step 12: once the record is durable, B's status goes back to A's WA
    // through the border, to the worker that asked.
    node_b.handle_durable(
        now + 11_000,
        Durability {
            durable_seq: seq,
            synced_ticket: journal.tickets[0],
            healthy: true,
        },
    );
    let out = drain(&mut node_b);
    assert_eq!(
        out[0].to,
        Destination::Border(BorderDest {
            network: net_a,
            worker: Some(0)
        })
    );
    let step12 = out[0].frame.clone();
    let Message::Answer(answer) = messages(&step12)[0] else {
        panic!("step 12 is an answer")
    };
    assert_eq!(
        answer.outcome,
        Outcome::Attached {
            reach: Reachability::PACKET_DATA_AND_SMS,
            confirmed_age_s: 4
        }
    );

    // Step 13: A's WA answers A, once, with A's own request id.
    node_a.handle_border_frame(now + 20_000, net_b, &step12);
    let out = drain(&mut node_a);
    assert_eq!(out[0].to, Destination::Device(a_device));
    let Message::Answer(final_answer) = messages(&out[0].frame)[0] else {
        panic!("step 13 is an answer")
    };
    assert_eq!(final_answer.txid, 42);
    assert_eq!(final_answer.outcome, answer.outcome);
    assert_eq!(node_a.pending(), 0);
    assert_eq!(node_a.credit(a), Some(9), "an answered query is paid");
    // A duplicate of the answer changes nothing: A was answered once.
    node_a.handle_border_frame(now + 21_000, net_b, &step12);
    assert!(drain(&mut node_a).is_empty());
    // A retransmitted query is answered again without a second charge.
    node_b.handle_border_frame(now + 30_000, net_a, &step6);
    node_b.poll_journal(&mut journal);
    assert_eq!(journal.records.len(), 1, "no second record");
    node_b.handle_durable(
        now + 31_000,
        Durability {
            durable_seq: seq,
            synced_ticket: *journal.tickets.last().unwrap(),
            healthy: true,
        },
    );
    let again = drain(&mut node_b);
    assert_eq!(messages(&again[0].frame), messages(&step12));
}

/// A's request "is B attached?", transaction 42, signed at 5 s.
fn a_asks(a: Msisdn, b: Msisdn) -> Vec<u8> {
    request(a, b"secret-a", 42, b, ClientOperation::Query, 5_000)
}

/// A's node asking B's about B, as in the first test, and the frame that
/// carries the query (step 6).
fn a_asks_about_b(
    world: &Arc<NumberingTable>,
    net_a: NetworkId,
    net_b: NetworkId,
) -> (Node, Node, Vec<u8>) {
    let (a, b) = (m("447700900123"), m("4915112345678"));
    let hss_a = Arc::new(Hss::new(&[(Prefix::parse("447700").unwrap(), PsId(0))]));
    let hss_b = Arc::new(Hss::new(&[(Prefix::parse("49151").unwrap(), PsId(1))]));
    // A and B list each other: either one's query would be a charged status.
    let mut node_a = node(net_a, net_b, world, &hss_a);
    node_a.provision(
        0,
        &HashMap::from([(a, provisioned(b"secret-a", vec![b]))]),
        &hss_a,
    );
    let mut node_b = node(net_b, net_a, world, &hss_b);
    node_b.provision(
        0,
        &HashMap::from([(b, provisioned(b"secret-b", vec![a]))]),
        &hss_b,
    );
    node_a.handle_datagram(5_000_000, "10.0.0.1:4000".parse().unwrap(), &a_asks(a, b));
    let out = drain(&mut node_a);
    assert_eq!(out.len(), 1);
    (node_a, node_b, out[0].frame.clone())
}

#[test]
fn a_frame_shed_at_bs_border_has_its_queries_answered_overloaded_and_its_answers_served() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/msisdn-prefixes.csv");
    let world = Arc::new(NumberingTable::load(&path, None).unwrap());
    let names = world.snapshot().names().clone();
    let (net_a, net_b) = (names.id("o2.gb").unwrap(), names.id("t-mobile.de").unwrap());
    let (a, b) = (m("447700900123"), m("4915112345678"));
    let (mut node_a, mut node_b, step6) = a_asks_about_b(&world, net_a, net_b);
    let Message::Query(a_query) = messages(&step6)[0] else {
        panic!("step 6 forwards a query")
    };

    // B's worker found the link's socket holding more than
    // `border_queue_ms` of work: the frame is shed, not served.
    node_b.shed_border_frame(5_001_000, net_a, &step6, 37);
    let shed = drain(&mut node_b);
    assert_eq!(shed.len(), 1, "answered at once, not held for the journal");
    assert_eq!(
        shed[0].to,
        Destination::Border(BorderDest {
            network: net_a,
            worker: Some(0)
        })
    );
    let Message::Answer(overloaded) = messages(&shed[0].frame)[0] else {
        panic!("a shed query is answered")
    };
    assert_eq!(
        (overloaded.txid, overloaded.reply_node, overloaded.target),
        (a_query.txid, a_query.reply_node, b)
    );
    assert_eq!(
        overloaded.outcome,
        Outcome::Overloaded { retry_after_ms: 37 }
    );
    let mut journal = Journal::default();
    node_b.poll_journal(&mut journal);
    assert!(
        journal.records.is_empty(),
        "nothing decided, nothing charged"
    );
    assert_eq!(node_b.role_counters().ps.charged, 0);
    assert_eq!(node_b.role_counters().igps.forwarded, 0, "unchecked");
    assert_eq!(node_b.counters().border_queue_shed, 1);

    // A frame from B to A, shed at A too, holds the answer to A's query
    // (B's Overloaded) and a query of B's own: the query is shed, the
    // answer served.
    let b_query = Query {
        txid: 7,
        watcher: b,
        target: a,
        hop_limit: 6,
        budget_ms: 1_500,
        reply_node: 0,
        route_version: 1,
    };
    let mut mixed = OpenFrame::new(Vec::new(), FRAME_LEN_DEFAULT_MAX);
    mixed.push(&Message::Answer(overloaded)).unwrap();
    mixed.push(&Message::Query(b_query)).unwrap();
    node_a.shed_border_frame(5_002_000, net_b, &mixed.into_bytes(), 12);
    let to_b: Vec<_> = drain(&mut node_a)
        .into_iter()
        .filter(|o| matches!(o.to, Destination::Border(d) if d.network == net_b))
        .collect();
    assert!(
        to_b.iter()
            .flat_map(|o| messages(&o.frame))
            .any(|message| matches!(message,
            Message::Answer(answer) if answer.txid == 7
                && answer.outcome == Outcome::Overloaded { retry_after_ms: 12 })),
        "B's query answered Overloaded"
    );
    // The answer was served: A's WA took B's Overloaded as not final and
    // holds its query back for the retry-after, pending, not lost.
    assert_eq!(node_a.counters().border_answers_in, 1);
    assert_eq!(node_a.counters().border_queue_shed, 1);
    assert_eq!(node_a.pending(), 1);
    node_a.poll_journal(&mut journal);
    assert!(journal.records.is_empty());
}
