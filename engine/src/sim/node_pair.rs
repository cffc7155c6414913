//! One worker of each of two networks' gateways, A's and B's, carrying
//! device datagrams through both [`Node`]s as the appliance's runtime does
//! (poll what the node sends, deliver it, hand the buffer back), with a
//! journal that is durable at once: the node path with no IO and no
//! faults, for the node benchmarks (one pair per thread, as one worker per
//! core) and the allocation test.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use presence_codec::{
    shard, ClientOperation, ClientRequest, DeviceAuth, DeviceKey, DeviceSigner, FrameReader,
    Message, Msisdn, OpenFrame, FRAME_LEN_ABSOLUTE_MAX, FRAME_LEN_DEFAULT_MAX,
};

use super::pipeline::{buddy_index, QueryMix};
use super::{SimNetwork, SimRng, PIPELINE_BUDDIES};
use crate::journal::{Durability, JournalSink};
use crate::node::{Destination, Node, NodeConfig, Provisioned};
use crate::roles::{DecisionRecord, Hss, PsId};
use crate::table::{NetworkId, NumberingTable};

/// How a [`NodePair`] is set up.
#[derive(Clone, Copy, Debug)]
pub struct NodePairSettings {
    /// The worker both nodes are (each gateway has `workers`); every
    /// watcher and target is one this worker owns, as steering delivers.
    pub worker: u16,
    /// Workers of each gateway.
    pub workers: u16,
    /// Watchers of A, and targets of B.
    pub subscribers: usize,
    /// Requests in each device datagram.
    pub per_datagram: usize,
    /// Virtual time between datagrams, µs.
    pub step_us: u64,
    /// The presence server's duplicate-window slots per stream: it must
    /// cover the decisions of a deadline and a half at the virtual rate.
    pub window_slots: usize,
}

impl Default for NodePairSettings {
    /// One worker of one, 1,000 subscribers, 16 requests a datagram, a
    /// virtual 100,000 queries/s, 2^18 window slots.
    fn default() -> NodePairSettings {
        NodePairSettings {
            worker: 0,
            workers: 1,
            subscribers: 1_000,
            per_datagram: 16,
            step_us: 160,
            window_slots: 1 << 18,
        }
    }
}

/// A journal that is durable at once and keeps nothing.
#[derive(Debug, Default)]
struct InstantJournal {
    last_seq: u64,
    last_ticket: u64,
}

impl JournalSink for InstantJournal {
    fn append(&mut self, seq: u64, _at_unix_ms: u64, _origin: &str, _record: &DecisionRecord) {
        self.last_seq = self.last_seq.max(seq);
    }
    fn mark(&mut self, _mark: crate::journal::MarkRef<'_>) {}
    fn sync(&mut self, ticket: u64) {
        self.last_ticket = self.last_ticket.max(ticket);
    }
}

/// Worker `worker` of A's gateway and of B's, wired back to back.
#[derive(Debug)]
pub struct NodePair {
    a: Node,
    b: Node,
    net_a: NetworkId,
    net_b: NetworkId,
    journal: InstantJournal,
    device: SocketAddr,
    watchers: Vec<(Msisdn, [u8; 8])>,
    /// Each watcher's device: its key and counter (§5.11).
    signers: Vec<DeviceSigner>,
    targets: Vec<Msisdn>,
    settings: NodePairSettings,
    datagram: Vec<u8>,
    now_us: u64,
    next: u64,
    /// Queries answered with B's status so far.
    pub answered: u64,
}

/// Draws `count` numbers of `network` that `worker` of `workers` owns.
fn owned_numbers(
    world: &NumberingTable,
    network: &SimNetwork,
    settings: &NodePairSettings,
    rng: &mut SimRng,
) -> Vec<Msisdn> {
    let mut out = Vec::with_capacity(settings.subscribers);
    while out.len() < settings.subscribers {
        let drawn = network.draw(world, settings.subscribers, 12, rng);
        if drawn.is_empty() {
            break;
        }
        out.extend(
            drawn
                .into_iter()
                .filter(|m| shard::owner(*m, settings.workers) == settings.worker),
        );
    }
    out.truncate(settings.subscribers);
    out.sort_unstable();
    out.dedup();
    out
}

impl NodePair {
    /// A's watchers ask about B's targets; each target lists
    /// [`PIPELINE_BUDDIES`] watchers as buddies and every query asks on
    /// behalf of one of them. Numbers are drawn from the networks'
    /// prefixes in `world`.
    pub fn new(
        world: &Arc<NumberingTable>,
        a: &SimNetwork,
        b: &SimNetwork,
        settings: NodePairSettings,
    ) -> NodePair {
        let mut rng = SimRng::new(0x90DE ^ u64::from(settings.worker));
        let watcher_numbers = owned_numbers(world, a, &settings, &mut rng);
        let targets = owned_numbers(world, b, &settings, &mut rng);
        let watchers: Vec<(Msisdn, [u8; 8])> = watcher_numbers
            .iter()
            .map(|&m| (m, rng.next_u64().to_le_bytes()))
            .collect();
        let node =
            |own: &SimNetwork, peer: NetworkId, subscribers: HashMap<Msisdn, Provisioned>| {
                let hss = Arc::new(Hss::new(
                    &own.prefixes
                        .iter()
                        .map(|&p| (p, PsId(0)))
                        .collect::<Vec<_>>(),
                ));
                let mut config = NodeConfig::new(own.id, settings.worker, settings.workers);
                config.peers = vec![peer];
                config.window_slots = settings.window_slots;
                // A thousand requests a virtual millisecond: a watcher's
                // counter may run ahead of the clock.
                config.device_clock_skew_ms = u64::MAX;
                config.device_clock_ahead_ms = u64::MAX;
                let mut node = Node::new(config, world, &hss);
                node.set_peer_workers(peer, settings.workers);
                node.provision(0, &subscribers, &hss);
                node
            };
        let account = |credential: &[u8], buddies: Vec<Msisdn>| Provisioned {
            credential: credential.to_vec(),
            credit: u64::MAX / 2,
            consent: true,
            buddies,
        };
        let node_a = node(
            a,
            b.id,
            watchers
                .iter()
                .map(|(m, c)| (*m, account(c, Vec::new())))
                .collect(),
        );
        let node_b = node(
            b,
            a.id,
            targets
                .iter()
                .enumerate()
                .map(|(j, t)| {
                    let buddies = (0..PIPELINE_BUDDIES)
                        .map(|k| watcher_numbers[buddy_index(j, k, watcher_numbers.len())])
                        .collect();
                    (*t, account(b"device", buddies))
                })
                .collect(),
        );
        NodePair {
            a: node_a,
            b: node_b,
            net_a: a.id,
            net_b: b.id,
            journal: InstantJournal::default(),
            device: SocketAddr::from((Ipv4Addr::new(10, 0, 0, 1), 4000)),
            signers: watchers
                .iter()
                .map(|&(m, c)| DeviceSigner::new(DeviceKey::derive(m, &c)))
                .collect(),
            watchers,
            targets,
            settings,
            datagram: Vec::with_capacity(FRAME_LEN_DEFAULT_MAX),
            now_us: 1_000_000,
            next: 0,
            answered: 0,
        }
    }

    /// Runs datagrams until at least `queries` more queries were sent;
    /// returns how many were answered with B's status.
    pub fn run(&mut self, queries: u64) -> u64 {
        let before = self.answered;
        let until = self.next + queries;
        while self.next < until {
            self.round();
        }
        self.answered - before
    }

    /// One device datagram through A's node, its border frames through
    /// B's, B's records made durable, B's answers back through A's, A's
    /// answers to the device.
    pub fn round(&mut self) {
        self.now_us += self.settings.step_us;
        let now = self.now_us;
        let (watchers, targets) = (self.watchers.len(), self.targets.len());
        if watchers == 0 || targets == 0 {
            return;
        }
        let mix = QueryMix::new(targets, watchers);
        let mut frame = OpenFrame::new(std::mem::take(&mut self.datagram), FRAME_LEN_DEFAULT_MAX);
        for _ in 0..self.settings.per_datagram {
            let i = self.next;
            let (j, w) = mix.pick(i);
            let (watcher, _) = self.watchers[w];
            let request = ClientRequest {
                txid: i,
                watcher,
                target: self.targets[j],
                operation: ClientOperation::Query,
                auth: DeviceAuth::UNSIGNED,
            };
            let request = Message::ClientRequest(self.signers[w].request(request, now / 1000));
            if frame.push(&request).is_err() {
                break;
            }
            self.next += 1;
        }
        self.datagram = frame.into_bytes();
        self.a.handle_datagram(now, self.device, &self.datagram);
        while let Some(out) = self.a.poll_transmit() {
            if let Destination::Border(_) = out.to {
                self.b.handle_border_frame(now, self.net_a, &out.frame);
            }
            self.a.recycle(out.frame);
        }
        self.b.poll_journal(&mut self.journal);
        self.b.handle_durable(
            now,
            Durability {
                durable_seq: self.journal.last_seq,
                synced_ticket: self.journal.last_ticket,
                healthy: true,
            },
        );
        while let Some(out) = self.b.poll_transmit() {
            if let Destination::Border(_) = out.to {
                self.a.handle_border_frame(now, self.net_b, &out.frame);
            }
            self.b.recycle(out.frame);
        }
        if self.a.poll_timeout().is_some_and(|at| at <= now) {
            self.a.handle_timeout(now);
        }
        while let Some(out) = self.a.poll_transmit() {
            if out.to == Destination::Device(self.device) {
                if let Ok(reader) = FrameReader::new(&out.frame, FRAME_LEN_ABSOLUTE_MAX) {
                    for message in reader.flatten() {
                        if let Message::Answer(answer) = message {
                            self.answered += u64::from(answer.outcome.shows_status());
                        }
                    }
                }
            }
            self.a.recycle(out.frame);
        }
    }

    /// Queries sent so far.
    pub fn sent(&self) -> u64 {
        self.next
    }
}
