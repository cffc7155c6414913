//! The whole role pipeline of two networks in one thread with no IO and no
//! faults, for the throughput benchmark and the allocation test.

use std::sync::Arc;

use presence_codec::{
    ClientOperation, ClientRequest, Credential, Message, Msisdn, Outcome, PresenceState,
    Reachability,
};

use super::{SimNetwork, SimRng};
use crate::roles::{
    Addr, Hss, HssReader, Igps, IgpsLookup, Millis, Ogps, Outbox, PresenceServer, PsId, Subscriber,
    SubscriberRecord, Transmit, WaConfig, WatcherApp,
};
use crate::table::{NetworkId, NumberingTable, TableReader};

/// Buddies on each target's list in the [`Pipeline`].
pub const PIPELINE_BUDDIES: usize = 20;

/// Which watcher is target `j`'s `k`-th buddy.
pub(super) fn buddy_index(j: usize, k: usize, watchers: usize) -> usize {
    (j.wrapping_mul(7) + k) % watchers.max(1)
}

/// The whole role pipeline of two networks in one thread with no IO and no
/// faults: WA(A) → OGPS(A) → IGPS(B) → HSS(B) → PS(B) → WA(A), every check on
/// (credential, credit, buddy list, consent, charge record). For the
/// throughput benchmark and the allocation test.
#[derive(Debug)]
pub struct Pipeline {
    wa: WatcherApp,
    ogps: Ogps,
    igps: Igps,
    ps: PresenceServer,
    table: TableReader,
    hss: HssReader,
    net_a: NetworkId,
    watchers: Vec<(Msisdn, [u8; 8])>,
    targets: Vec<Msisdn>,
    out: Outbox,
    now: Millis,
    next: u64,
    /// Queries answered with B's status so far.
    pub answered: u64,
    /// Charge records raised so far.
    pub charged: u64,
}

impl Pipeline {
    /// Network A with `watchers` subscribers asking about `targets`
    /// subscribers of network B (all on one presence server, each listing
    /// [`PIPELINE_BUDDIES`] of the watchers as buddies; every query asks on
    /// behalf of a buddy). Numbers are drawn from the networks' prefixes in
    /// `world`.
    pub fn new(
        world: &Arc<NumberingTable>,
        a: &SimNetwork,
        b: &SimNetwork,
        watchers: usize,
        targets: usize,
    ) -> Pipeline {
        let (net_a, net_b) = (a.id, b.id);
        let mut rng = SimRng::new(0x9191);
        let watcher_numbers = a.draw(world, watchers, 12, &mut rng);
        let targets = b.draw(world, targets, 12, &mut rng);
        let watchers: Vec<(Msisdn, [u8; 8])> = watcher_numbers
            .iter()
            .map(|&m| (m, rng.next_u64().to_le_bytes()))
            .collect();
        let mut wa_config = WaConfig::new(net_a);
        wa_config.pending_max = 4096;
        let wa = WatcherApp::new(
            wa_config,
            watchers
                .iter()
                .map(|&(m, c)| {
                    (
                        m,
                        Subscriber {
                            credential: c.to_vec(),
                            credit: u64::MAX / 2,
                        },
                    )
                })
                .collect(),
        );
        let hss = Arc::new(Hss::new(
            &b.prefixes.iter().map(|&p| (p, PsId(0))).collect::<Vec<_>>(),
        ));
        // The window outlives the WA deadline (1.5 s) at the virtual rate of a
        // million queries per second: two million slots.
        let mut ps = PresenceServer::new(PsId(0), net_b, 2_000, 1 << 21);
        for (i, &t) in targets.iter().enumerate() {
            let buddies = (0..PIPELINE_BUDDIES)
                .map(|k| watcher_numbers[buddy_index(i, k, watcher_numbers.len())])
                .collect();
            let mut record = SubscriberRecord::new(b"device".to_vec(), buddies);
            if i % 2 == 0 {
                record.state = PresenceState::Attached(Reachability::PACKET_DATA_AND_SMS);
            }
            ps.provision(t, record);
        }
        Pipeline {
            wa,
            ogps: Ogps::new(net_a, world, [net_b]),
            igps: Igps::new(net_b, &hss, world),
            ps,
            table: world.reader(),
            hss: hss.reader(),
            net_a,
            watchers,
            targets,
            out: Outbox::with_capacity(64, 64),
            now: 0,
            next: 0,
            answered: 0,
            charged: 0,
        }
    }

    /// Runs `n` queries through every role, one after another; returns how
    /// many were answered with B's status.
    pub fn run(&mut self, n: usize) -> u64 {
        let before = self.answered;
        for _ in 0..n {
            let i = self.next;
            self.next += 1;
            // Virtual time: a millisecond per thousand queries.
            if i.is_multiple_of(1000) {
                self.now += 1;
                self.wa.handle_timeout(self.now, &mut self.out);
                self.out.clear();
            }
            let j = (i.wrapping_mul(0x9E37_79B9) as usize) % self.targets.len();
            let target = self.targets[j];
            let (watcher, credential) =
                self.watchers[buddy_index(j, i as usize % PIPELINE_BUDDIES, self.watchers.len())];
            let request = ClientRequest {
                txid: i,
                watcher,
                target,
                operation: ClientOperation::Query,
                credential: Credential::new(&credential).unwrap_or(Credential::EMPTY),
            };
            let now = self.now;
            self.out.clear();
            // Steps 3 and 5 share one numbering-table lookup, as in a node.
            let (network, version) = {
                let table = self.table.current();
                (table.lookup(target), table.version() as u32)
            };
            self.wa
                .handle_request(now, watcher, &request, network, &mut self.out);
            let Some(Transmit {
                message: Message::Query(query),
                ..
            }) = self.out.transmits.pop()
            else {
                continue;
            };
            self.ogps
                .route(now, &query, network, version, &mut self.out);
            let Some(Transmit {
                message: Message::Query(query),
                ..
            }) = self.out.transmits.pop()
            else {
                continue;
            };
            let lookup = IgpsLookup {
                watcher_network: self.table.lookup(query.watcher),
                server: self.hss.lookup(query.target),
                decided: false,
            };
            self.igps
                .route(now, true, self.net_a, &query, lookup, &mut self.out);
            let Some(t) = self.out.transmits.pop() else {
                continue;
            };
            self.ps
                .handle(now, Addr::Igps, t.origin, &t.message, &mut self.out);
            self.charged += self.out.records.iter().filter(|r| r.chargeable()).count() as u64;
            self.out.records.clear();
            let Some(Transmit {
                message: Message::Answer(answer),
                ..
            }) = self.out.transmits.pop()
            else {
                continue;
            };
            self.wa.handle_answer(now, &answer, &mut self.out);
            if let Some(Transmit {
                message: Message::Answer(answer),
                ..
            }) = self.out.transmits.pop()
            {
                if matches!(
                    answer.outcome,
                    Outcome::Attached { .. } | Outcome::Detached { .. }
                ) {
                    self.answered += 1;
                }
            }
        }
        self.answered - before
    }
}
