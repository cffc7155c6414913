//! One query walked through the thirteen steps of the seed's sequence, with
//! the real roles and the shared numbering table, asserting each step.
//! A (447700900123, network o2.gb) asks about B (4915112345678, t-mobile.de).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use presence_codec::{
    ClientOperation, ClientRequest, Credential, Message, Msisdn, Outcome, PresenceState, Publish,
    Reachability,
};
use presence_engine::roles::{
    Addr, Hss, Igps, IngressPoint, Ogps, Outbox, PresenceServer, PsId, Subscriber,
    SubscriberRecord, WaConfig, WatcherApp,
};
use presence_engine::sim::SimNetwork;
use presence_engine::table::{NumberingTable, Prefix};

fn m(text: &str) -> Msisdn {
    text.parse().unwrap()
}

#[test]
fn a_query_walks_the_thirteen_steps() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/msisdn-prefixes.csv");
    let world = Arc::new(NumberingTable::load(&path, None).unwrap());
    let names = world.snapshot().names().clone();
    let (net_a, net_b) = (names.id("o2.gb").unwrap(), names.id("t-mobile.de").unwrap());
    let (a, b) = (m("447700900123"), m("4915112345678"));

    // Network A: the WA (A provisioned with a credential and 10 units of
    // credit) and the OGPS (B's network has two ingress points, one down).
    let o2 = SimNetwork::from_table_csv(&std::fs::read_to_string(&path).unwrap(), "o2.gb");
    let mut config = WaConfig::new(net_a, o2.prefixes);
    config.foreign_ranges = o2.foreign_inside;
    // A number of a carve-out inside o2's 44770 block is external (step 3).
    assert!(config
        .foreign_ranges
        .contains(&Prefix::parse("4477000").unwrap()));
    let mut wa = WatcherApp::new(
        config,
        HashMap::from([(
            a,
            Subscriber {
                credential: b"secret-a".to_vec(),
                credit: 10,
            },
        )]),
    );
    let mut ogps = Ogps::new(
        net_a,
        1,
        &world,
        HashMap::from([(
            net_b,
            vec![
                IngressPoint { id: 0, up: false },
                IngressPoint { id: 1, up: true },
            ],
        )]),
    );
    // Network B: HSS (B's range on presence server 1), an IGPS, and the
    // presence server holding B, who lets A watch and is attached.
    let hss = Arc::new(Hss::new(&[(Prefix::parse("49151").unwrap(), PsId(1))]));
    let mut igps = Igps::new(net_b, &hss, &world);
    let mut ps = PresenceServer::new(PsId(1), net_b, 4, 10_000, 1024);
    ps.provision(b, SubscriberRecord::new(b"secret-b".to_vec(), vec![a]));
    let mut out = Outbox::default();
    ps.handle(
        1_000,
        Addr::Device(b),
        net_b,
        &Message::Publish(Publish {
            txid: 1,
            subscriber: b,
            state: PresenceState::Attached(Reachability::PACKET_DATA_AND_SMS),
            credential: Credential::new(b"secret-b").unwrap(),
        }),
        &mut out,
    );
    out.clear();

    // Step 1: A asks the WA "is B attached?", naming B by MSISDN.
    let now = 5_000;
    let request = ClientRequest {
        txid: 42,
        watcher: a,
        target: b,
        operation: ClientOperation::Query,
        credential: Credential::new(b"secret-a").unwrap(),
    };
    wa.handle(
        now,
        Addr::Device(a),
        &Message::ClientRequest(request),
        &mut out,
    );
    // Step 2: the WA authenticated A and debited the credit.
    assert_eq!(wa.counters().accepted, 1);
    assert_eq!(wa.credit(a), Some(9));
    // Step 3: B's number is not in A's network.
    assert!(!wa.is_home(b));
    assert!(wa.is_home(a));
    assert!(!wa.is_home(m("447700012345")), "carved out of o2's block");
    // Step 4: the query goes to A's OGPS.
    assert_eq!(out.transmits.len(), 1);
    let step4 = out.transmits.pop().unwrap();
    assert_eq!(step4.to, Addr::Ogps);
    let Message::Query(query) = step4.message else {
        panic!("step 4 sends a query")
    };
    assert_eq!((query.watcher, query.target, query.hop_limit), (a, b, 8));
    assert_eq!(query.budget_ms, 1500);

    // Step 5: the OGPS derives B's network from B's MSISDN.
    assert_eq!(world.snapshot().lookup(b), Some(net_b));
    ogps.handle(now, Addr::Wa(0), &step4.message, &mut out);
    // Step 6: the query goes out through the border to B's IGPS (the ingress
    // point that is up), one hop used, the table version stamped.
    let step6 = out.transmits.pop().unwrap();
    assert_eq!(
        step6.to,
        Addr::Border {
            network: net_b,
            ingress: 1
        }
    );
    let Message::Query(forwarded) = step6.message else {
        panic!("step 6 forwards the query")
    };
    assert_eq!(forwarded.hop_limit, 7);
    assert_eq!(forwarded.route_version, 1);
    assert_eq!(forwarded.txid, query.txid);

    // Steps 7–8: B's IGPS asks the HSS for B's presence server. The origin is
    // the border link's authenticated peer: network A.
    assert_eq!(hss.lookup(b), Some(PsId(1)));
    igps.handle(
        now + 10,
        Addr::Border {
            network: net_a,
            ingress: 1,
        },
        net_a,
        &step6.message,
        &mut out,
    );
    // Step 9: the query goes to that presence server, origin carried beside it.
    let step9 = out.transmits.pop().unwrap();
    assert_eq!(step9.to, Addr::Ps(PsId(1)));
    assert_eq!(step9.origin, net_a);

    // Step 10: A is one of B's buddies and B still consents.
    assert!(ps.subscriber(b).unwrap().permits(a));
    ps.handle(
        now + 11,
        Addr::Igps(1),
        step9.origin,
        &step9.message,
        &mut out,
    );
    // Step 11: one charge record, for A, against A's network.
    assert_eq!(out.records.len(), 1);
    let record = out.records[0];
    assert!(record.chargeable());
    assert_eq!(
        (record.origin, record.watcher, record.target),
        (net_a, a, b)
    );
    // Step 12: B's status goes back to A's WA through the border.
    let step12 = out.transmits.pop().unwrap();
    assert_eq!(
        step12.to,
        Addr::BorderReply {
            network: net_a,
            reply_node: 0
        }
    );
    let Message::Answer(answer) = step12.message else {
        panic!("step 12 is an answer")
    };
    assert_eq!(
        answer.outcome,
        Outcome::Attached {
            reach: Reachability::PACKET_DATA_AND_SMS,
            confirmed_age_s: 4
        }
    );
    out.clear();

    // Step 13: the WA answers A, once.
    wa.handle(now + 20, Addr::Ogps, &step12.message, &mut out);
    let step13 = out.transmits.pop().unwrap();
    assert_eq!(step13.to, Addr::Device(a));
    let Message::Answer(final_answer) = step13.message else {
        panic!("step 13 is an answer")
    };
    assert_eq!(final_answer.txid, 42, "A's own request id");
    assert_eq!(final_answer.outcome, answer.outcome);
    assert_eq!(wa.pending_len(), 0);
    assert_eq!(wa.credit(a), Some(9), "an answered query is paid");
    // A duplicate of the answer changes nothing: A was answered exactly once.
    wa.handle(now + 21, Addr::Ogps, &step12.message, &mut out);
    assert!(out.transmits.is_empty());
    // And a retransmitted query is answered again without a second charge.
    ps.handle(
        now + 30,
        Addr::Igps(0),
        step9.origin,
        &step9.message,
        &mut out,
    );
    assert!(out.records.is_empty());
    assert_eq!(out.transmits.len(), 1);
}
