//! The whole role pipeline of two networks in one thread with no IO and no
//! faults, for the throughput benchmark and the allocation test.

use std::sync::Arc;

use presence_codec::{
    ClientOperation, ClientRequest, DeviceAuth, DeviceKey, DeviceSigner, Message, Msisdn, Outcome,
    PresenceState, Reachability,
};

use super::{SimNetwork, SimRng};
use crate::roles::{
    Addr, Ask, Hss, HssReader, Igps, IgpsLookup, Millis, Ogps, Outbox, PresenceServer, PsId,
    Subscriber, SubscriberRecord, Transmit, WaConfig, WatcherApp,
};
use crate::table::{NetworkId, NumberingTable, TableReader};

/// Where the pipeline's devices send from.
const DEVICE: std::net::SocketAddr = std::net::SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::LOCALHOST,
    9,
));

/// Buddies on each target's list in the [`Pipeline`].
pub const PIPELINE_BUDDIES: usize = 20;

/// Queries the [`Pipeline`] takes through each role together: the requests
/// of one device datagram in the node benchmarks.
pub(super) const PIPELINE_GROUP: usize = 16;

/// A device request of the pipeline: (watcher, target, txid, the
/// watcher's index).
type PipelineRequest = (Msisdn, Msisdn, u64, usize);

/// The request `r`, signed by its watcher's device at `now` (§5.11).
fn client_request(
    &(watcher, target, txid, w): &PipelineRequest,
    signers: &mut [DeviceSigner],
    now: Millis,
) -> ClientRequest<'static> {
    let request = ClientRequest {
        txid,
        watcher,
        target,
        operation: ClientOperation::Query,
        auth: DeviceAuth::UNSIGNED,
    };
    match signers.get_mut(w) {
        Some(signer) => signer.request(request, now),
        None => request,
    }
}

/// Which watcher is target `j`'s `k`-th buddy.
pub(super) fn buddy_index(j: usize, k: usize, watchers: usize) -> usize {
    (j.wrapping_mul(7) + k) % watchers.max(1)
}

/// `x % d` for a divisor fixed at start, by two multiplications instead of
/// a division (Lemire, Kaser and Kurz, "Faster remainder by direct
/// computation", 2019): exact for every 32-bit `x` and `d`. The query mix
/// takes two remainders a query, and a 64-bit division is dearer than some
/// roles' whole step.
#[derive(Clone, Copy, Debug)]
struct Remainder {
    divisor: u64,
    inverse: u64,
}

impl Remainder {
    fn new(divisor: usize) -> Remainder {
        let divisor = u32::try_from(divisor.max(1)).unwrap_or(u32::MAX);
        Remainder {
            divisor: u64::from(divisor),
            inverse: (u64::MAX / u64::from(divisor)).wrapping_add(1),
        }
    }

    fn of(self, x: u32) -> usize {
        let low = self.inverse.wrapping_mul(u64::from(x));
        ((u128::from(low) * u128::from(self.divisor)) >> 64) as usize
    }
}

/// Which target query `i` asks about and which of its buddies asks it: the
/// watcher [`buddy_index`] names, over a scattered walk of the targets,
/// without a division.
#[derive(Clone, Copy, Debug)]
pub(super) struct QueryMix {
    targets: Remainder,
    watchers: Remainder,
}

impl QueryMix {
    pub(super) fn new(targets: usize, watchers: usize) -> QueryMix {
        QueryMix {
            targets: Remainder::new(targets),
            watchers: Remainder::new(watchers),
        }
    }

    /// (target index, watcher index) of query `i`.
    pub(super) fn pick(self, i: u64) -> (usize, usize) {
        let j = self.targets.of((i as u32).wrapping_mul(0x9E37_79B9));
        let k = (i % PIPELINE_BUDDIES as u64) as u32;
        let w = self.watchers.of((j as u32).wrapping_mul(7).wrapping_add(k));
        (j, w)
    }
}

/// The whole role pipeline of two networks in one thread with no IO and no
/// faults: WA(A) → OGPS(A) → IGPS(B) → HSS(B) → PS(B) → WA(A), every check on
/// (device MAC and replay window, credit, buddy list, consent, charge
/// record). The devices' side, signing each request, runs in it too. For
/// the throughput benchmark and the allocation test.
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
    /// Each watcher's device: its key and counter.
    signers: Vec<DeviceSigner>,
    targets: Vec<Msisdn>,
    mix: QueryMix,
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
        let signers = watchers
            .iter()
            .map(|&(m, c)| DeviceSigner::new(DeviceKey::derive(m, &c)))
            .collect();
        let mut wa_config = WaConfig::new(net_a);
        wa_config.pending_max = 4096;
        // Virtual time runs a millisecond per thousand queries, so a
        // watcher asked more often than that runs its counter ahead of
        // the clock: no skew limit here.
        wa_config.device_auth.clock_skew_ms = u64::MAX;
        wa_config.device_auth.clock_ahead_ms = u64::MAX;
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
            let mut record = SubscriberRecord::new(t, b"device", buddies);
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
            mix: QueryMix::new(targets.len(), watchers.len()),
            watchers,
            signers,
            targets,
            out: Outbox::with_capacity(64, 64),
            now: 0,
            next: 0,
            answered: 0,
            charged: 0,
        }
    }

    /// Runs `n` queries through every role; returns how many were answered
    /// with B's status. Queries go in groups of [`PIPELINE_GROUP`], each
    /// role's step taken for the whole group before the next role's, as a
    /// node takes the requests of one device datagram and the queries of one
    /// border frame: the numbering table and the HSS are asked with
    /// `lookup_batch`, and the accounts and records a group will read are
    /// warmed first, so their cache misses overlap.
    pub fn run(&mut self, n: usize) -> u64 {
        let before = self.answered;
        let mut left = n;
        while left > 0 {
            let group = left.min(PIPELINE_GROUP);
            self.group(group);
            left -= group;
        }
        self.answered - before
    }

    /// One group of `size` (at most [`PIPELINE_GROUP`]) queries.
    fn group(&mut self, size: usize) {
        let mut requests: [PipelineRequest; PIPELINE_GROUP] =
            [(Msisdn::MIN, Msisdn::MIN, 0, 0); PIPELINE_GROUP];
        let mut targets = [Msisdn::MIN; PIPELINE_GROUP];
        for (slot, target) in requests.iter_mut().zip(targets.iter_mut()).take(size) {
            let i = self.next;
            self.next += 1;
            // Virtual time: a millisecond per thousand queries.
            if i.is_multiple_of(1000) {
                self.now += 1;
                self.wa.handle_timeout(self.now, &mut self.out);
                self.out.clear();
            }
            let (j, w) = self.mix.pick(i);
            let (watcher, _) = self.watchers[w];
            *target = self.targets[j];
            *slot = (watcher, *target, i, w);
        }
        let now = self.now;

        // Steps 1–5 at A: the targets placed by one batched lookup (steps 3
        // and 5 share it, as in a node), the watchers' accounts warmed.
        let mut networks = [None; PIPELINE_GROUP];
        let version = {
            let table = self.table.current();
            table.lookup_batch(&targets[..size], &mut networks[..size]);
            table.version() as u32
        };
        for r in &requests[..size] {
            std::hint::black_box(self.wa.knows(r.0));
        }
        let mut queries = [None; PIPELINE_GROUP];
        let mut routed = 0;
        for (r, network) in requests[..size].iter().zip(networks) {
            let (watcher, request) = (r.0, client_request(r, &mut self.signers, now));
            self.out.clear();
            self.wa
                .handle_request(now, watcher, DEVICE, &request, network, &mut self.out);
            let Some(Transmit {
                message: Message::Query(query),
                ..
            }) = self.out.transmits.pop()
            else {
                continue;
            };
            self.ogps
                .route(now, &query, Ask::Query, network, version, &mut self.out);
            if let Some(Transmit {
                message: Message::Query(query),
                ..
            }) = self.out.transmits.pop()
            {
                queries[routed] = Some(query);
                routed += 1;
            }
        }

        // Steps 7–10 at B: the watchers' networks and the targets' servers
        // by batched lookups, the targets' records and buddy lists warmed.
        let mut watchers = [Msisdn::MIN; PIPELINE_GROUP];
        for (slot, query) in watchers.iter_mut().zip(queries.iter().flatten()) {
            *slot = query.watcher;
        }
        for (slot, query) in targets.iter_mut().zip(queries.iter().flatten()) {
            *slot = query.target;
        }
        let mut watcher_networks = [None; PIPELINE_GROUP];
        let mut servers = [None; PIPELINE_GROUP];
        self.table
            .current()
            .lookup_batch(&watchers[..routed], &mut watcher_networks[..routed]);
        self.hss
            .current()
            .lookup_batch(&targets[..routed], &mut servers[..routed]);
        for &target in &targets[..routed] {
            std::hint::black_box(self.ps.first_buddy(target));
        }
        for ((query, watcher_network), server) in
            queries.iter().flatten().zip(watcher_networks).zip(servers)
        {
            self.out.clear();
            let lookup = IgpsLookup {
                watcher_network,
                server,
                decided: false,
            };
            self.igps.route(
                now,
                true,
                self.net_a,
                (query, Ask::Query),
                lookup,
                &mut self.out,
            );
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
            // Steps 11–13: the answer back at A's WA.
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
    }
}
