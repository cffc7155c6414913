//! Watching (issue 17): publications fanned out to the subscriptions of
//! watchers in another network, in one thread, by B's node — the code the
//! appliance runs — with no IO: each publication checked (its MAC), its
//! subscriptions' Notifies built, queued behind the held answers, released
//! by the journal's report and encoded into border frames.
//!
//! - `watching/fanout_20_watchers`: 1,000 targets, each watched by the same
//!   20 watchers of o2.gb; each iteration is one round of a publication per
//!   target (the status alternating, a second of node time apart so no
//!   notification is coalesced): 20,000 notifications. Throughput is in
//!   notifications.
//!
//! `cargo bench -p presence-bench --bench watching`

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use presence_bench::shared_table_path;
use presence_codec::{
    DeviceAuth, DeviceKey, FrameWriter, Message, Msisdn, PresenceState, Publish, Query,
    Reachability, Subscribe, FRAME_LEN_DEFAULT_MAX,
};
use presence_engine::journal::{Durability, JournalSink, MarkRef};
use presence_engine::node::{Destination, Node, NodeConfig, Provisioned};
use presence_engine::roles::{DecisionRecord, Hss, PsId};
use presence_engine::table::{NumberingTable, Prefix};

const TARGETS: u64 = 1_000;
const WATCHERS: u64 = 20;

/// A journal that is durable at once: it remembers what to report.
#[derive(Default)]
struct Instant {
    seq: u64,
    ticket: u64,
}

impl JournalSink for Instant {
    fn append(&mut self, seq: u64, _at: u64, _origin: &str, _record: &DecisionRecord) {
        self.seq = seq;
    }
    fn mark(&mut self, _mark: MarkRef<'_>) {}
    fn sync(&mut self, ticket: u64) {
        self.ticket = ticket;
    }
}

fn target(i: u64) -> Msisdn {
    Msisdn::from_u64(4_915_100_000_000 + i).expect("an MSISDN")
}

fn watcher(k: u64) -> Msisdn {
    Msisdn::from_u64(447_700_900_000 + k).expect("an MSISDN")
}

/// Reports the journal durable and takes what the node sends: border
/// frames' bytes (and the devices' acks).
fn settle(node: &mut Node, journal: &mut Instant, now_us: u64) -> usize {
    node.poll_journal(journal);
    node.handle_durable(
        now_us,
        Durability {
            durable_seq: journal.seq,
            synced_ticket: journal.ticket,
            healthy: true,
        },
    );
    let mut border_bytes = 0;
    while let Some(out) = node.poll_transmit() {
        if let Destination::Border(_) = out.to {
            border_bytes += out.frame.len();
        }
    }
    border_bytes
}

fn watching(c: &mut Criterion) {
    let world = Arc::new(NumberingTable::load(&shared_table_path(), None).expect("shared table"));
    let names = world.snapshot().names().clone();
    let (net_a, net_b) = (
        names.id("o2.gb").expect("o2.gb"),
        names.id("t-mobile.de").expect("t-mobile.de"),
    );
    let hss = Arc::new(Hss::new(&[(
        Prefix::parse("49151").expect("prefix"),
        PsId(1),
    )]));
    let mut config = NodeConfig::new(net_b, 0, 1);
    config.peers = vec![net_a];
    // A day: the rounds (a second of node time each) never reach the end.
    config.watching.expiry_max_s = 86_400;
    let mut node = Node::new(config, &world, &hss);
    node.set_peer_workers(net_a, 1);
    let buddies: Vec<Msisdn> = (0..WATCHERS).map(watcher).collect();
    let subscribers: HashMap<Msisdn, Provisioned> = (0..TARGETS)
        .map(|i| {
            (
                target(i),
                Provisioned {
                    credential: format!("secret-{i}").into_bytes(),
                    credit: 0,
                    consent: true,
                    buddies: buddies.clone(),
                },
            )
        })
        .collect();
    node.provision(0, &subscribers, &hss);

    // Every watcher subscribes to every target, from o2.gb's WA 0.
    let mut journal = Instant::default();
    let mut now_ms = 1_000u64;
    let mut txid = 1u64;
    for i in 0..TARGETS {
        let mut frame = Vec::new();
        let mut writer = FrameWriter::new(&mut frame, FRAME_LEN_DEFAULT_MAX).expect("frame");
        for k in 0..WATCHERS {
            let query = Query {
                txid,
                watcher: watcher(k),
                target: target(i),
                hop_limit: 5,
                budget_ms: 1_500,
                reply_node: 0,
                route_version: 1,
            };
            txid += 1;
            writer
                .push(&Message::Subscribe(Subscribe {
                    query,
                    expiry_s: NonZeroU32::new(86_400).expect("non-zero"),
                }))
                .expect("fits");
        }
        node.handle_border_frame(now_ms * 1000, net_a, &frame);
        settle(&mut node, &mut journal, now_ms * 1000);
    }
    let granted = node.role_counters().ps.watches_granted;
    assert_eq!(granted, TARGETS * WATCHERS, "every subscription granted");

    let keys: Vec<DeviceKey> = (0..TARGETS)
        .map(|i| DeviceKey::derive(target(i), format!("secret-{i}").as_bytes()))
        .collect();
    let device = "10.0.1.1:4000".parse().expect("address");
    let mut round = 0u64;
    let mut group = c.benchmark_group("watching");
    group.throughput(Throughput::Elements(TARGETS * WATCHERS));
    group.bench_function("fanout_20_watchers", |bench| {
        bench.iter(|| {
            round += 1;
            now_ms += 1_000;
            let state = if round % 2 == 1 {
                PresenceState::Attached(Reachability::PACKET_DATA_AND_SMS)
            } else {
                PresenceState::Detached
            };
            let before = node.role_counters().ps.notifications;
            for (i, key) in (0..TARGETS).zip(&keys) {
                let publish = key.sign_publish(
                    Publish {
                        txid: round,
                        subscriber: target(i),
                        state,
                        auth: DeviceAuth::UNSIGNED,
                    },
                    now_ms,
                );
                let mut frame = Vec::with_capacity(64);
                let mut writer =
                    FrameWriter::with_version(&mut frame, FRAME_LEN_DEFAULT_MAX, 2).expect("frame");
                writer.push(&Message::Publish(publish)).expect("fits");
                node.handle_datagram(now_ms * 1000, device, &frame);
            }
            let bytes = settle(&mut node, &mut journal, now_ms * 1000);
            let sent = node.role_counters().ps.notifications - before;
            assert_eq!(sent, TARGETS * WATCHERS, "every subscription notified");
            bytes
        });
    });
    group.finish();
}

criterion_group!(benches, watching);
criterion_main!(benches);
