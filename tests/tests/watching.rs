//! Watching across networks (issue 17), with two networks' [`Node`]s — the
//! code the appliance runs — and only bytes between them: A (o2.gb)
//! subscribes to B (t-mobile.de); B's presence server answers with B's
//! status and keeps the subscription; each change B publishes reaches A's
//! device as a Notify, at most one a second (changes in between
//! coalesced); a refresh is charged again; an unsubscription ends it with
//! no news after; consent withdrawn and expiry end it with a last Notify.

mod two_nodes;
use two_nodes::*;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;

use presence_codec::{
    ClientOperation, Consent, ConsentScope, ConsentUpdate, DeviceAuth, DeviceKey, Message, Notify,
    Outcome, PresenceState, Publish, Reachability,
};
use presence_engine::journal::Durability;
use presence_engine::node::{Destination, Node, Provisioned};
use presence_engine::roles::{Hss, PsId};
use presence_engine::table::{NetworkId, Prefix};

const A: &str = "447700900123";
const B: &str = "4915112345678";
const A_DEVICE: &str = "10.0.0.1:4000";
const B_DEVICE: &str = "10.0.1.1:4000";

/// A's and B's networks, and what passes between them.
struct Pair {
    a: Node,
    b: Node,
    net_a: NetworkId,
    net_b: NetworkId,
    journal: Journal,
    /// Everything A's device received, in order.
    a_device: Vec<Message<'static>>,
}

impl Pair {
    fn new() -> Pair {
        Pair::with_credit(10)
    }

    /// A with `credit` query units.
    fn with_credit(credit: u64) -> Pair {
        let (world, net_a, net_b) = world();
        let (a, b) = (m(A), m(B));
        let hss_a = Arc::new(Hss::new(&[(Prefix::parse("447700").unwrap(), PsId(0))]));
        let hss_b = Arc::new(Hss::new(&[(Prefix::parse("49151").unwrap(), PsId(1))]));
        let mut node_a = node(net_a, net_b, &world, &hss_a);
        let a_account = Provisioned {
            credit,
            ..provisioned(b"secret-a", vec![])
        };
        node_a.provision(0, &HashMap::from([(a, a_account)]), &hss_a);
        let mut node_b = node(net_b, net_a, &world, &hss_b);
        node_b.provision(
            0,
            &HashMap::from([(b, provisioned(b"secret-b", vec![a]))]),
            &hss_b,
        );
        Pair {
            a: node_a,
            b: node_b,
            net_a,
            net_b,
            journal: Journal::default(),
            a_device: Vec::new(),
        }
    }

    /// Moves frames between the nodes (B's answers released as its
    /// journal makes their records durable) until nothing moves.
    fn pump(&mut self, now_ms: u64) {
        let now = now_ms * 1000;
        for _ in 0..16 {
            let mut moved = false;
            for out in drain(&mut self.a) {
                moved = true;
                match out.to {
                    Destination::Border(_) => {
                        self.b.handle_border_frame(now, self.net_a, &out.frame)
                    }
                    Destination::Device(_) => self.a_device.extend(
                        messages(&out.frame)
                            .into_iter()
                            .map(|message| owned(&message)),
                    ),
                }
            }
            self.b.poll_journal(&mut self.journal);
            if let Some(&ticket) = self.journal.tickets.last() {
                let durable_seq = self.journal.records.last().map_or(0, |(seq, _)| *seq);
                self.b.handle_durable(
                    now,
                    Durability {
                        durable_seq,
                        synced_ticket: ticket,
                        healthy: true,
                    },
                );
            }
            for out in drain(&mut self.b) {
                moved = true;
                if let Destination::Border(_) = out.to {
                    self.a.handle_border_frame(now, self.net_b, &out.frame);
                }
            }
            if !moved {
                return;
            }
        }
    }

    /// A's device asks `operation` of its WA as request `txid` at `now_ms`.
    fn a_asks(&mut self, now_ms: u64, txid: u64, operation: ClientOperation) {
        let frame = request(m(A), b"secret-a", txid, m(B), operation, now_ms);
        self.a
            .handle_datagram(now_ms * 1000, A_DEVICE.parse().unwrap(), &frame);
        self.pump(now_ms);
    }

    /// B's device publishes `state` at `now_ms`.
    fn b_publishes(&mut self, now_ms: u64, state: PresenceState) {
        let b = m(B);
        let publish = DeviceKey::derive(b, b"secret-b").sign_publish(
            Publish {
                txid: now_ms,
                subscriber: b,
                state,
                auth: DeviceAuth::UNSIGNED,
            },
            now_ms,
        );
        let from: SocketAddr = B_DEVICE.parse().unwrap();
        self.b
            .handle_datagram(now_ms * 1000, from, &frame(&Message::Publish(publish)));
        self.pump(now_ms);
    }

    /// B's node runs its timers at `now_ms`.
    fn b_timers(&mut self, now_ms: u64) {
        self.b.handle_timeout(now_ms * 1000);
        self.pump(now_ms);
    }

    /// What A's device received since the last look.
    fn a_received(&mut self) -> Vec<Message<'static>> {
        std::mem::take(&mut self.a_device)
    }

    fn charge_records(&self) -> usize {
        self.journal
            .records
            .iter()
            .filter(|(_, r)| r.chargeable())
            .count()
    }
}

/// The messages devices get own nothing borrowed.
fn owned(message: &Message<'_>) -> Message<'static> {
    match *message {
        Message::Answer(a) => Message::Answer(a),
        Message::Notify(n) => Message::Notify(n),
        Message::Ack(a) => Message::Ack(a),
        ref other => panic!("a device gets answers, notifications and acks: {other:?}"),
    }
}

fn subscribe(expiry_s: u32) -> ClientOperation {
    ClientOperation::Subscribe {
        expiry_s: NonZeroU32::new(expiry_s).unwrap(),
    }
}

fn attached() -> PresenceState {
    PresenceState::Attached(Reachability::PACKET_DATA_AND_SMS)
}

fn notifies(received: &[Message<'_>]) -> Vec<Notify> {
    received
        .iter()
        .filter_map(|message| match message {
            Message::Notify(n) => Some(*n),
            _ => None,
        })
        .collect()
}

fn answer_of(received: &[Message<'_>], txid: u64) -> Option<Outcome> {
    received.iter().find_map(|message| match message {
        Message::Answer(a) if a.txid == txid => Some(a.outcome),
        _ => None,
    })
}

#[test]
fn a_subscription_across_networks_is_answered_then_notified_of_each_change() {
    let mut pair = Pair::new();
    pair.a_asks(5_000, 7, subscribe(60));
    let got = pair.a_received();
    assert!(
        matches!(answer_of(&got, 7), Some(Outcome::Detached { .. })),
        "answered with B's status now: {got:?}"
    );
    assert_eq!(
        pair.charge_records(),
        1,
        "a granted subscription is charged"
    );
    assert_eq!(pair.b.role_counters().ps.watches_granted, 1);

    // B attaches: A's device is told, under its own request id.
    pair.b_publishes(6_000, attached());
    let got = notifies(&pair.a_received());
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        (got[0].txid, got[0].watcher, got[0].target, got[0].seq),
        (7, m(A), m(B), 1)
    );
    assert!(matches!(got[0].outcome, Outcome::Attached { .. }));
    assert_eq!(got[0].remaining_s, 59);

    // Two changes inside the second: nothing now, the latest when it opens.
    pair.b_publishes(6_300, PresenceState::Detached);
    pair.b_publishes(6_600, attached());
    pair.b_publishes(6_800, PresenceState::Detached);
    assert!(notifies(&pair.a_received()).is_empty());
    pair.b_timers(7_000);
    let got = notifies(&pair.a_received());
    assert_eq!(got.len(), 1, "coalesced: {got:?}");
    assert_eq!(got[0].seq, 2);
    assert!(matches!(got[0].outcome, Outcome::Detached { .. }));
    assert_eq!(
        pair.charge_records(),
        1,
        "notifications are not charged yet"
    );
}

#[test]
fn a_refresh_is_charged_again_and_an_unsubscription_ends_the_news() {
    let mut pair = Pair::new();
    pair.a_asks(5_000, 7, subscribe(60));
    pair.a_asks(30_000, 8, subscribe(60));
    assert!(answer_of(&pair.a_received(), 8).is_some());
    assert_eq!(pair.charge_records(), 2);
    let ps = pair.b.role_counters().ps;
    assert_eq!((ps.watches_granted, ps.watches_refreshed), (1, 1));
    // Notifications now carry the refresh's request id.
    pair.b_publishes(31_000, attached());
    assert_eq!(notifies(&pair.a_received())[0].txid, 8);

    pair.a_asks(40_000, 9, ClientOperation::Unsubscribe);
    assert_eq!(
        answer_of(&pair.a_received(), 9),
        Some(Outcome::NotAvailable),
        "an unsubscription tells nothing"
    );
    assert_eq!(pair.charge_records(), 2, "and costs nothing");
    pair.b_publishes(42_000, PresenceState::Detached);
    assert!(notifies(&pair.a_received()).is_empty(), "no news after");
    assert_eq!(pair.b.role_counters().ps.unsubscribed, 1);
}

#[test]
fn consent_withdrawn_ends_the_subscription_with_a_last_notify_at_once() {
    let mut pair = Pair::new();
    pair.a_asks(5_000, 7, subscribe(60));
    pair.a_received();
    let withdraw = Message::ConsentUpdate(ConsentUpdate {
        txid: 1,
        owner: m(B),
        scope: ConsentScope::Watcher(m(A)),
        consent: Consent::Withdraw,
    });
    assert!(pair.b.handle_provisioning(6_000_000, &withdraw).is_some());
    pair.pump(6_000);
    let got = notifies(&pair.a_received());
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        (got[0].seq, got[0].remaining_s, got[0].outcome),
        (1, 0, Outcome::NotAvailable)
    );
    pair.b_publishes(7_000, attached());
    assert!(notifies(&pair.a_received()).is_empty(), "no later news");
}

#[test]
fn an_expired_subscription_ends_with_a_last_notify() {
    let mut pair = Pair::new();
    pair.a_asks(5_000, 7, subscribe(2));
    pair.a_received();
    pair.b_timers(6_999);
    assert!(pair.a_received().is_empty());
    pair.b_timers(7_000);
    let got = notifies(&pair.a_received());
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        (got[0].remaining_s, got[0].outcome),
        (0, Outcome::NotAvailable)
    );
    pair.b_publishes(8_000, attached());
    assert!(notifies(&pair.a_received()).is_empty());
}

#[test]
fn credit_running_out_ends_the_subscription_at_the_next_refresh() {
    // One unit: the subscription is paid, its refresh is not.
    let mut pair = Pair::with_credit(1);
    pair.a_asks(5_000, 7, subscribe(10));
    assert!(matches!(
        answer_of(&pair.a_received(), 7),
        Some(Outcome::Detached { .. })
    ));
    pair.a_asks(12_000, 8, subscribe(10));
    assert_eq!(
        answer_of(&pair.a_received(), 8),
        Some(Outcome::Error(presence_codec::ErrorReason::CreditExhausted)),
        "the refresh is refused and never sent"
    );
    assert_eq!(pair.b.role_counters().ps.watches_refreshed, 0);
    // So the subscription runs out: its last notification, then nothing.
    pair.b_timers(15_000);
    let got = notifies(&pair.a_received());
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!((got[0].txid, got[0].remaining_s), (7, 0));
    pair.b_publishes(16_000, attached());
    assert!(notifies(&pair.a_received()).is_empty());
    assert_eq!(pair.charge_records(), 1);
}
