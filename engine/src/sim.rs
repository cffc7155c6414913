//! A deterministic simulation of several networks running the real roles.
//!
//! One seed drives everything: the subscribers and their buddy lists, the
//! queries, and the faults — message loss, duplication, delay and so
//! reordering on every network hop, presence-server restarts, subscribers
//! moved between presence servers, consent withdrawn and given back, status
//! publications — all on a virtual clock. The same seed gives the same run,
//! event for event, so a failure replays exactly.
//!
//! Checkers, for every query:
//! - A gets exactly one final outcome, no later than its deadline;
//! - an answer showing B's status was permitted by B's buddy list and consent
//!   (as the simulation's own model holds them) when the presence server
//!   decided;
//! - exactly one charge record per query answered with B's status from
//!   another network, charging A's network; none for a refused query; at most
//!   one for a query whose answer was lost (A timed out);
//! - A's credit ends at its start less one unit per query not refunded, and is
//!   never negative.
//!
//! Device-to-WA hops are local and reliable (A's device retrying is outside
//! the flow); every hop after the WA goes through the lossy network.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::sync::Arc;

use presence_codec::{
    ClientOperation, ClientRequest, Consent, ConsentScope, ConsentUpdate, Credential, Message,
    Msisdn, Outcome, PresenceState, Publish, Reachability, MSISDN_MAX,
};

use crate::roles::{
    Addr, DecisionRecord, Hss, Igps, IngressPoint, Millis, Ogps, Outbox, PresenceServer, PsId,
    Subscriber, SubscriberRecord, Transmit, WaConfig, WatcherApp,
};
use crate::table::{NetworkId, NumberingTable, Prefix};

/// A deterministic pseudo-random stream (splitmix64): the simulation's only
/// source of randomness.
#[derive(Debug, Clone)]
pub struct SimRng(u64);

impl SimRng {
    /// A stream from a seed.
    pub fn new(seed: u64) -> SimRng {
        SimRng(seed)
    }
    /// The next value.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// A value in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * 1.0 < p
    }
}

/// One simulated network: its name in the world numbering table and the
/// prefixes it owns.
#[derive(Debug, Clone)]
pub struct SimNetwork {
    /// Name, as in the numbering table.
    pub name: String,
    /// Its number ranges.
    pub prefixes: Vec<Prefix>,
    /// Other networks' longer prefixes inside its ranges (step 3 needs them).
    pub foreign_inside: Vec<Prefix>,
}

impl SimNetwork {
    /// Network `name` as a numbering-table CSV (`prefix,network,…`) gives it.
    pub fn from_table_csv(csv: &str, name: &str) -> SimNetwork {
        let rows: Vec<(Prefix, &str)> = csv
            .lines()
            .filter_map(|line| {
                let mut fields = line.split(',');
                let prefix = Prefix::parse(fields.next()?)?;
                Some((prefix, fields.next()?))
            })
            .collect();
        let prefixes: Vec<Prefix> = rows
            .iter()
            .filter(|(_, n)| *n == name)
            .map(|(p, _)| *p)
            .collect();
        let own: BTreeSet<Prefix> = prefixes.iter().copied().collect();
        let foreign_inside = rows
            .iter()
            .filter(|(p, n)| {
                *n != name
                    && (1..p.len()).any(|len| {
                        let shorter = p.value() / 10u64.pow((p.len() - len) as u32);
                        Msisdn::from_u64(shorter).is_ok_and(|m| own.contains(&Prefix::of(m)))
                    })
            })
            .map(|(p, _)| *p)
            .collect();
        SimNetwork {
            name: name.to_owned(),
            prefixes,
            foreign_inside,
        }
    }
}

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// The seed.
    pub seed: u64,
    /// The networks (at least three for the runs).
    pub networks: Vec<SimNetwork>,
    /// Presence servers per network.
    pub ps_per_network: u16,
    /// Subscribers per network.
    pub subscribers_per_network: usize,
    /// Queries in the run.
    pub queries: usize,
    /// Virtual time over which queries are spread.
    pub duration_ms: Millis,
    /// Probability a network hop loses a message.
    pub loss: f64,
    /// Probability a network hop delivers a message twice.
    pub duplication: f64,
    /// Network hop delay range (uniform), which also reorders.
    pub delay_ms: (Millis, Millis),
    /// Presence-server restarts during the run.
    pub restarts: usize,
    /// How long a restarting presence server is down.
    pub restart_down_ms: Millis,
    /// Subscribers moved between presence servers during the run.
    pub moves: usize,
    /// Consent changes during the run.
    pub consent_changes: usize,
    /// Status publications during the run.
    pub publications: usize,
    /// Subscribers ported from the first network to the second.
    pub ported: usize,
}

impl SimConfig {
    /// The standard run: 10,000 queries, 5% loss, 3% duplication,
    /// 1–40 ms delays, restarts, moves and consent changes.
    pub fn standard(seed: u64, networks: Vec<SimNetwork>) -> SimConfig {
        SimConfig {
            seed,
            networks,
            ps_per_network: 3,
            subscribers_per_network: 300,
            queries: 10_000,
            duration_ms: 20_000,
            loss: 0.05,
            duplication: 0.03,
            delay_ms: (1, 40),
            restarts: 4,
            restart_down_ms: 300,
            moves: 30,
            consent_changes: 60,
            publications: 600,
            ported: 5,
        }
    }
}

/// What a run saw. `violations` is empty when every checker held.
#[derive(Debug, Clone, Default)]
pub struct SimReport {
    /// The seed.
    pub seed: u64,
    /// Queries A asked.
    pub queries: u64,
    /// Final outcomes by kind.
    pub outcomes: BTreeMap<&'static str, u64>,
    /// Charge records raised.
    pub charges: u64,
    /// Messages sent on network hops (after the WA), including retransmissions.
    pub network_messages: u64,
    /// Of those, lost by the simulated network.
    pub lost: u64,
    /// Retransmissions by the WAs.
    pub retransmissions: u64,
    /// Checker failures, each naming the query.
    pub violations: Vec<String>,
}

#[derive(Debug)]
struct NetworkState {
    id: NetworkId,
    wa: WatcherApp,
    ogps: Ogps,
    igps: Vec<Igps>,
    hss: Arc<Hss>,
    ps: Vec<PresenceServer>,
    ps_down_until: Vec<Millis>,
    journal: Vec<DecisionRecord>,
    wa_timer_at: Option<Millis>,
}

#[derive(Debug, Clone, Copy)]
enum Event {
    /// A message arriving at `to` in network `net`.
    Deliver {
        net: usize,
        from: Addr,
        to: Addr,
        origin: NetworkId,
        message: Message<'static>,
    },
    /// A asks (step 1).
    Ask {
        query: usize,
    },
    WaTimer {
        net: usize,
    },
    Restart {
        net: usize,
        ps: u16,
    },
    Recover {
        net: usize,
        ps: u16,
    },
    Move {
        subscriber: usize,
    },
    ConsentChange {
        subscriber: usize,
    },
    Publish {
        subscriber: usize,
    },
}

#[derive(Debug, Clone)]
struct SimSubscriber {
    msisdn: Msisdn,
    /// The network that serves this subscriber (after porting).
    net: usize,
    credential: [u8; 8],
    credit: u64,
}

/// The checker's own model of who may watch whom (step 10).
#[derive(Debug, Clone, Default)]
struct Permission {
    buddies: BTreeSet<Msisdn>,
    consent_all: bool,
    withdrawn: BTreeSet<Msisdn>,
}

impl Permission {
    fn permits(&self, watcher: Msisdn) -> bool {
        self.consent_all && self.buddies.contains(&watcher) && !self.withdrawn.contains(&watcher)
    }
}

#[derive(Debug, Clone)]
struct AskedQuery {
    watcher: usize,
    target: Msisdn,
    bad_credential: bool,
    asked_at: Millis,
    wa_txid: Option<u64>,
    outcomes: Vec<(Millis, Outcome)>,
}

struct World {
    config: SimConfig,
    rng: SimRng,
    now: Millis,
    seq: u64,
    queue: BinaryHeap<Reverse<(Millis, u64)>>,
    events: HashMap<u64, Event>,
    nets: Vec<NetworkState>,
    subscribers: Vec<SimSubscriber>,
    by_msisdn: HashMap<Msisdn, usize>,
    permissions: HashMap<Msisdn, Permission>,
    queries: Vec<AskedQuery>,
    by_wa_txid: HashMap<(usize, u64), usize>,
    by_client: HashMap<(Msisdn, u64), usize>,
    outbox: Outbox,
    report: SimReport,
    deadline_ms: Millis,
}

const DEADLINE_MS: u16 = 1500;
const WINDOW_MS: Millis = 10_000;

/// Runs one simulation and checks it.
pub fn run(config: &SimConfig, world_table: &Arc<NumberingTable>) -> SimReport {
    let mut world = World::build(config.clone(), world_table);
    world.schedule_workload();
    world.run_to_end();
    world.check();
    world.report
}

impl World {
    fn build(config: SimConfig, world_table: &Arc<NumberingTable>) -> World {
        let mut rng = SimRng::new(config.seed);
        let version = world_table.snapshot();
        let ids: Vec<NetworkId> = config
            .networks
            .iter()
            .map(|n| {
                version
                    .names()
                    .id(&n.name)
                    .expect("simulated network in the table")
            })
            .collect();

        // Subscribers: numbers drawn from each network's prefixes.
        let mut subscribers = Vec::new();
        let mut by_msisdn = HashMap::new();
        for (net, network) in config.networks.iter().enumerate() {
            let mut made = 0;
            while made < config.subscribers_per_network {
                let prefix = network.prefixes[rng.below(network.prefixes.len() as u64) as usize];
                let digits = 11 + rng.below(2) as usize;
                let msisdn = extend(prefix, digits, &mut rng);
                // Only numbers the world table routes to this network.
                if version.lookup(msisdn) != Some(ids[net]) || by_msisdn.contains_key(&msisdn) {
                    continue;
                }
                let mut credential = [0u8; 8];
                credential.copy_from_slice(&rng.next_u64().to_le_bytes());
                let credit = if rng.chance(0.05) { 3 } else { 1_000_000 };
                by_msisdn.insert(msisdn, subscribers.len());
                subscribers.push(SimSubscriber {
                    msisdn,
                    net,
                    credential,
                    credit,
                });
                made += 1;
            }
        }
        // Porting: some numbers of the first network move to the second.
        let mut ported_out = Vec::new();
        if config.networks.len() >= 2 {
            for s in subscribers
                .iter_mut()
                .filter(|s| s.net == 0)
                .take(config.ported)
            {
                s.net = 1;
                ported_out.push(s.msisdn);
            }
            let second = &config.networks[1].name;
            let changes: Vec<(Msisdn, Option<&str>)> = ported_out
                .iter()
                .map(|&m| (m, Some(second.as_str())))
                .collect();
            world_table.update_ported(&changes).expect("valid name");
        }

        // Buddy lists: each subscriber lets a few others watch.
        let mut permissions: HashMap<Msisdn, Permission> = HashMap::new();
        for s in &subscribers {
            let mut buddies = BTreeSet::new();
            for _ in 0..6 {
                buddies.insert(subscribers[rng.below(subscribers.len() as u64) as usize].msisdn);
            }
            permissions.insert(
                s.msisdn,
                Permission {
                    buddies,
                    consent_all: true,
                    withdrawn: BTreeSet::new(),
                },
            );
        }

        let mut nets = Vec::new();
        for (net, network) in config.networks.iter().enumerate() {
            let id = ids[net];
            let ranges: Vec<(Prefix, PsId)> = network
                .prefixes
                .iter()
                .enumerate()
                .map(|(i, &p)| (p, PsId((i % usize::from(config.ps_per_network)) as u16)))
                .collect();
            let hss = Arc::new(Hss::new(&ranges));
            let mut wa_config = WaConfig::new(id, network.prefixes.clone());
            wa_config.foreign_ranges = network.foreign_inside.clone();
            wa_config.igps_count = 2;
            wa_config.deadline_ms = DEADLINE_MS;
            if net == 0 {
                wa_config.ported_out = ported_out.clone();
            }
            if net == 1 {
                wa_config.ported_in = ported_out.clone();
            }
            let wa_subscribers: HashMap<Msisdn, Subscriber> = subscribers
                .iter()
                .filter(|s| s.net == net)
                .map(|s| {
                    (
                        s.msisdn,
                        Subscriber {
                            credential: s.credential.to_vec(),
                            credit: s.credit,
                        },
                    )
                })
                .collect();
            let peers = ids
                .iter()
                .filter(|&&other| other != id)
                .map(|&other| {
                    (
                        other,
                        vec![
                            IngressPoint { id: 0, up: true },
                            IngressPoint { id: 1, up: true },
                        ],
                    )
                })
                .collect();
            let mut ps: Vec<PresenceServer> = (0..config.ps_per_network)
                .map(|p| PresenceServer::new(PsId(p), id, 2, WINDOW_MS, 1 << 16))
                .collect();
            for s in subscribers.iter().filter(|s| s.net == net) {
                let home = match hss.lookup(s.msisdn) {
                    Some(p) => p,
                    None => {
                        // Ported in: give it a presence server explicitly.
                        let p = PsId((s.msisdn.as_u64() % u64::from(config.ps_per_network)) as u16);
                        hss.move_subscriber(s.msisdn, p).expect("valid server");
                        p
                    }
                };
                let model = &permissions[&s.msisdn];
                ps[usize::from(home.0)].provision(
                    s.msisdn,
                    SubscriberRecord::new(
                        s.credential.to_vec(),
                        model.buddies.iter().copied().collect(),
                    ),
                );
            }
            nets.push(NetworkState {
                id,
                wa: WatcherApp::new(wa_config, wa_subscribers),
                ogps: Ogps::new(id, 2, world_table, peers),
                igps: (0..2).map(|_| Igps::new(id, &hss, world_table)).collect(),
                hss,
                ps_down_until: vec![0; ps.len()],
                ps,
                journal: Vec::new(),
                wa_timer_at: None,
            });
        }
        World {
            config,
            rng,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            events: HashMap::new(),
            nets,
            subscribers,
            by_msisdn,
            permissions,
            queries: Vec::new(),
            by_wa_txid: HashMap::new(),
            by_client: HashMap::new(),
            outbox: Outbox::with_capacity(16, 4),
            report: SimReport {
                seed: 0,
                ..SimReport::default()
            },
            deadline_ms: u64::from(DEADLINE_MS),
        }
    }

    fn schedule(&mut self, at: Millis, event: Event) {
        self.seq += 1;
        self.queue.push(Reverse((at, self.seq)));
        self.events.insert(self.seq, event);
    }

    fn schedule_workload(&mut self) {
        self.report.seed = self.config.seed;
        let duration = self.config.duration_ms.max(1);
        let n = self.subscribers.len() as u64;
        for _ in 0..self.config.queries {
            let watcher = self.rng.below(n) as usize;
            let w = self.subscribers[watcher].msisdn;
            let roll = self.rng.below(100);
            let target = if roll < 55 {
                // Someone who lists A as a buddy, if anyone does.
                let candidates: Vec<Msisdn> = self
                    .permissions
                    .iter()
                    .filter(|(_, p)| p.buddies.contains(&w))
                    .map(|(&m, _)| m)
                    .collect();
                let mut sorted = candidates;
                sorted.sort_unstable();
                if sorted.is_empty() {
                    self.subscribers[self.rng.below(n) as usize].msisdn
                } else {
                    sorted[self.rng.below(sorted.len() as u64) as usize]
                }
            } else if roll < 90 {
                self.subscribers[self.rng.below(n) as usize].msisdn
            } else if roll < 95 {
                // An unprovisioned number in a simulated network's range.
                let net = self.rng.below(self.config.networks.len() as u64) as usize;
                let prefixes = &self.config.networks[net].prefixes;
                let prefix = prefixes[self.rng.below(prefixes.len() as u64) as usize];
                extend(prefix, 13, &mut self.rng)
            } else {
                // A number of no simulated network.
                Msisdn::from_u64(8_800_000_000_000 + self.rng.below(99_999_999))
                    .unwrap_or(Msisdn::MAX)
            };
            let bad_credential = self.rng.chance(0.01);
            let at = self.rng.below(duration);
            self.queries.push(AskedQuery {
                watcher,
                target,
                bad_credential,
                asked_at: at,
                wa_txid: None,
                outcomes: Vec::new(),
            });
            let query = self.queries.len() - 1;
            self.schedule(at, Event::Ask { query });
        }
        let n_nets = self.nets.len() as u64;
        for _ in 0..self.config.restarts {
            let net = self.rng.below(n_nets) as usize;
            let ps = self.rng.below(u64::from(self.config.ps_per_network)) as u16;
            let at = self.rng.below(duration);
            self.schedule(at, Event::Restart { net, ps });
        }
        for _ in 0..self.config.moves {
            let subscriber = self.rng.below(n) as usize;
            let at = self.rng.below(duration);
            self.schedule(at, Event::Move { subscriber });
        }
        for _ in 0..self.config.consent_changes {
            let subscriber = self.rng.below(n) as usize;
            let at = self.rng.below(duration);
            self.schedule(at, Event::ConsentChange { subscriber });
        }
        for _ in 0..self.config.publications {
            let subscriber = self.rng.below(n) as usize;
            let at = self.rng.below(duration);
            self.schedule(at, Event::Publish { subscriber });
        }
    }

    fn run_to_end(&mut self) {
        while let Some(Reverse((at, seq))) = self.queue.pop() {
            self.now = at;
            let Some(event) = self.events.remove(&seq) else {
                continue;
            };
            self.dispatch(event);
        }
        self.report.queries = self.queries.len() as u64;
        for net in &self.nets {
            self.report.retransmissions += net.wa.counters().retransmissions;
        }
    }

    fn dispatch(&mut self, event: Event) {
        match event {
            Event::Ask { query } => self.ask(query),
            Event::Deliver {
                net,
                from,
                to,
                origin,
                message,
            } => self.deliver(net, from, to, origin, message),
            Event::WaTimer { net } => {
                self.nets[net].wa_timer_at = None;
                let mut out = std::mem::take(&mut self.outbox);
                self.nets[net].wa.handle_timeout(self.now, &mut out);
                self.route(net, Addr::Wa(0), &mut out);
                self.outbox = out;
            }
            Event::Restart { net, ps } => {
                let down = &mut self.nets[net].ps_down_until[usize::from(ps)];
                *down = (*down).max(self.now + self.config.restart_down_ms);
                let at = self.now + self.config.restart_down_ms;
                self.schedule(at, Event::Recover { net, ps });
            }
            Event::Recover { net, ps } => {
                let state = &mut self.nets[net];
                if state.ps_down_until[usize::from(ps)] <= self.now {
                    state.ps[usize::from(ps)].restart(self.now, state.journal.iter());
                }
            }
            Event::Move { subscriber } => self.move_subscriber(subscriber),
            Event::ConsentChange { subscriber } => self.change_consent(subscriber),
            Event::Publish { subscriber } => self.publish(subscriber),
        }
    }

    fn ask(&mut self, query: usize) {
        let q = &self.queries[query];
        let s = &self.subscribers[q.watcher];
        let net = s.net;
        let mut credential = s.credential;
        if q.bad_credential {
            credential[0] ^= 0xff;
        }
        let client_txid = query as u64;
        let request = ClientRequest {
            txid: client_txid,
            watcher: s.msisdn,
            target: q.target,
            operation: ClientOperation::Query,
            credential: Credential::new(&credential).unwrap_or(Credential::EMPTY),
        };
        self.by_client.insert((s.msisdn, client_txid), query);
        let mut out = std::mem::take(&mut self.outbox);
        self.nets[net].wa.handle(
            self.now,
            Addr::Device(s.msisdn),
            &Message::ClientRequest(request),
            &mut out,
        );
        // The query the WA sends for this request names its transaction id.
        if let Some(Transmit {
            message: Message::Query(sent),
            ..
        }) = out.transmits.first()
        {
            self.queries[query].wa_txid = Some(sent.txid);
            self.by_wa_txid.insert((net, sent.txid), query);
        }
        self.route(net, Addr::Wa(0), &mut out);
        self.outbox = out;
    }

    fn deliver(
        &mut self,
        net: usize,
        from: Addr,
        to: Addr,
        origin: NetworkId,
        message: Message<'static>,
    ) {
        let now = self.now;
        let mut out = std::mem::take(&mut self.outbox);
        match to {
            Addr::Wa(_) => self.nets[net].wa.handle(now, from, &message, &mut out),
            Addr::Ogps => self.nets[net].ogps.handle(now, from, &message, &mut out),
            Addr::Igps(i) => {
                if let Some(igps) = self.nets[net].igps.get_mut(usize::from(i)) {
                    igps.handle(now, from, origin, &message, &mut out);
                }
            }
            Addr::Ps(p) => {
                let state = &mut self.nets[net];
                let index = usize::from(p.0);
                if index < state.ps.len() && state.ps_down_until[index] <= now {
                    let before = state.ps[index].counters().duplicates;
                    state.ps[index].handle(now, from, origin, &message, &mut out);
                    let replayed = state.ps[index].counters().duplicates != before;
                    if !replayed {
                        self.check_permission(net, &out);
                    }
                    let state = &mut self.nets[net];
                    state.journal.extend(out.records.iter().copied());
                    self.report.charges +=
                        out.records.iter().filter(|r| r.chargeable()).count() as u64;
                }
            }
            _ => {}
        }
        self.route(net, to, &mut out);
        self.outbox = out;
    }

    /// Step 10 checker: a fresh decision showing B's status must be permitted
    /// by the model at this moment.
    fn check_permission(&mut self, net: usize, out: &Outbox) {
        for t in &out.transmits {
            if let Message::Answer(answer) = t.message {
                if matches!(
                    answer.outcome,
                    Outcome::Attached { .. } | Outcome::Detached { .. }
                ) {
                    let watcher = match self.find_query(net, &t.to, answer.txid) {
                        Some(q) => self.subscribers[self.queries[q].watcher].msisdn,
                        None => continue,
                    };
                    let permitted = self
                        .permissions
                        .get(&answer.target)
                        .is_some_and(|p| p.permits(watcher));
                    if !permitted {
                        self.report.violations.push(format!(
                            "seed {}: at {} ms, {} saw {}'s status without permission",
                            self.config.seed, self.now, watcher, answer.target
                        ));
                    }
                }
            }
        }
    }

    /// The query a network transaction belongs to: answers go to the WA of the
    /// origin network, which numbered the transaction.
    fn find_query(&self, net: usize, to: &Addr, txid: u64) -> Option<usize> {
        let origin_net = match to {
            Addr::BorderReply { network, .. } => self.nets.iter().position(|n| n.id == *network)?,
            _ => net,
        };
        self.by_wa_txid.get(&(origin_net, txid)).copied()
    }

    /// Sends what a role produced: through the lossy network for network
    /// hops, straight to the checker for answers to devices.
    fn route(&mut self, net: usize, from: Addr, out: &mut Outbox) {
        for t in out.transmits.drain(..) {
            match t.to {
                Addr::Device(device) => {
                    if let Message::Answer(answer) = t.message {
                        if let Some(&q) = self.by_client.get(&(device, answer.txid)) {
                            self.queries[q].outcomes.push((self.now, answer.outcome));
                        }
                    }
                }
                Addr::Provisioning => {}
                Addr::Border { network, ingress } => {
                    if let Some(dest) = self.nets.iter().position(|n| n.id == network) {
                        // The border link authenticates the sender's network,
                        // and the message arrives from the link, not a role.
                        let origin = self.nets[net].id;
                        let link = Addr::Border {
                            network: origin,
                            ingress,
                        };
                        self.send_lossy(dest, link, Addr::Igps(ingress), origin, t.message);
                    }
                }
                Addr::BorderReply {
                    network,
                    reply_node,
                } => {
                    if let Some(dest) = self.nets.iter().position(|n| n.id == network) {
                        let origin = self.nets[net].id;
                        let link = Addr::Border {
                            network: origin,
                            ingress: 0,
                        };
                        self.send_lossy(dest, link, Addr::Wa(reply_node), origin, t.message);
                    }
                }
                local => self.send_lossy(net, from, local, t.origin, t.message),
            }
        }
        out.records.clear();
        // Keep the WA's timer scheduled.
        for n in 0..self.nets.len() {
            if let Some(at) = self.nets[n].wa.poll_timeout() {
                if self.nets[n].wa_timer_at.is_none_or(|s| at < s) {
                    self.nets[n].wa_timer_at = Some(at);
                    self.schedule(at.max(self.now), Event::WaTimer { net: n });
                }
            }
        }
    }

    fn send_lossy(
        &mut self,
        net: usize,
        from: Addr,
        to: Addr,
        origin: NetworkId,
        message: Message<'static>,
    ) {
        self.report.network_messages += 1;
        if self.rng.chance(self.config.loss) {
            self.report.lost += 1;
            return;
        }
        let copies = if self.rng.chance(self.config.duplication) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let (lo, hi) = self.config.delay_ms;
            let delay = lo + self.rng.below(hi.saturating_sub(lo) + 1);
            self.schedule(
                self.now + delay,
                Event::Deliver {
                    net,
                    from,
                    to,
                    origin,
                    message,
                },
            );
        }
    }

    fn move_subscriber(&mut self, subscriber: usize) {
        let s = &self.subscribers[subscriber];
        let state = &mut self.nets[s.net];
        let Some(from) = state.hss.lookup(s.msisdn) else {
            return;
        };
        let to = PsId((from.0 + 1) % self.config.ps_per_network);
        let (fi, ti) = (usize::from(from.0), usize::from(to.0));
        if fi == ti || state.ps_down_until[fi] > self.now || state.ps_down_until[ti] > self.now {
            return;
        }
        if let Some((record, window)) = state.ps[fi].export(self.now, s.msisdn, to) {
            state.ps[ti].import(self.now, s.msisdn, record, &window);
            state
                .hss
                .move_subscriber(s.msisdn, to)
                .expect("valid server");
        }
    }

    fn change_consent(&mut self, subscriber: usize) {
        let owner = self.subscribers[subscriber].msisdn;
        let net = self.subscribers[subscriber].net;
        let model = self.permissions.entry(owner).or_default();
        let roll = self.rng.below(3);
        let (scope, consent) = match roll {
            0 => (
                ConsentScope::All,
                if model.consent_all {
                    Consent::Withdraw
                } else {
                    Consent::Grant
                },
            ),
            _ => {
                let buddies: Vec<Msisdn> = model.buddies.iter().copied().collect();
                if buddies.is_empty() {
                    return;
                }
                let w = buddies[self.rng.below(buddies.len() as u64) as usize];
                let consent = if model.withdrawn.contains(&w) {
                    Consent::Grant
                } else {
                    Consent::Withdraw
                };
                (ConsentScope::Watcher(w), consent)
            }
        };
        // Provisioning is synchronous and reliable: the model and the
        // presence server change at the same virtual moment.
        match (scope, consent) {
            (ConsentScope::All, c) => model.consent_all = c == Consent::Grant,
            (ConsentScope::Watcher(w), Consent::Withdraw) => {
                model.withdrawn.insert(w);
            }
            (ConsentScope::Watcher(w), Consent::Grant) => {
                model.withdrawn.remove(&w);
            }
        }
        let update = Message::ConsentUpdate(ConsentUpdate {
            txid: self.seq,
            owner,
            scope,
            consent,
        });
        self.deliver_to_home_ps(net, owner, Addr::Provisioning, &update);
    }

    /// Hands `message` about `msisdn` straight to the presence server that
    /// holds it (provisioning and devices reach it reliably); its replies are
    /// not followed.
    fn deliver_to_home_ps(
        &mut self,
        net: usize,
        msisdn: Msisdn,
        from: Addr,
        message: &Message<'_>,
    ) {
        let state = &mut self.nets[net];
        if let Some(ps) = state.hss.lookup(msisdn) {
            let mut out = std::mem::take(&mut self.outbox);
            state.ps[usize::from(ps.0)].handle(self.now, from, state.id, message, &mut out);
            out.clear();
            self.outbox = out;
        }
    }

    fn publish(&mut self, subscriber: usize) {
        let s = self.subscribers[subscriber].clone();
        let state = if self.rng.chance(0.6) {
            PresenceState::Attached(match self.rng.below(3) {
                0 => Reachability::PACKET_DATA,
                1 => Reachability::SMS,
                _ => Reachability::PACKET_DATA_AND_SMS,
            })
        } else {
            PresenceState::Detached
        };
        let publication = Message::Publish(Publish {
            txid: self.seq,
            subscriber: s.msisdn,
            state,
            credential: Credential::new(&s.credential).unwrap_or(Credential::EMPTY),
        });
        self.deliver_to_home_ps(s.net, s.msisdn, Addr::Device(s.msisdn), &publication);
    }

    fn check(&mut self) {
        let seed = self.config.seed;
        // Charge records by (origin network, transaction).
        let mut charges: HashMap<(NetworkId, u64), Vec<&DecisionRecord>> = HashMap::new();
        for net in &self.nets {
            for r in net.journal.iter().filter(|r| r.chargeable()) {
                charges.entry((r.origin, r.txid)).or_default().push(r);
            }
        }
        let mut violations = Vec::new();
        let mut spent: HashMap<usize, u64> = HashMap::new();
        for (i, q) in self.queries.iter().enumerate() {
            let watcher = &self.subscribers[q.watcher];
            let origin = self.nets[watcher.net].id;
            let name = format!(
                "seed {seed}: query {i} ({} asks about {})",
                watcher.msisdn, q.target
            );
            if q.outcomes.len() != 1 {
                violations.push(format!(
                    "{name}: {} final outcomes, not 1: {:?}",
                    q.outcomes.len(),
                    q.outcomes
                ));
                continue;
            }
            let (at, outcome) = q.outcomes[0];
            *self
                .report
                .outcomes
                .entry(outcome_name(outcome))
                .or_default() += 1;
            if at > q.asked_at + self.deadline_ms {
                violations.push(format!(
                    "{name}: answered at {at} ms, after its deadline {}",
                    q.asked_at + self.deadline_ms
                ));
            }
            let records = q
                .wa_txid
                .and_then(|t| charges.get(&(origin, t)))
                .map_or(&[][..], |v| v.as_slice());
            if records
                .iter()
                .any(|r| r.watcher != watcher.msisdn || r.target != q.target)
            {
                violations.push(format!("{name}: a charge record names another query"));
            }
            let shows_status =
                matches!(outcome, Outcome::Attached { .. } | Outcome::Detached { .. });
            let target_net = self
                .by_msisdn
                .get(&q.target)
                .map(|&s| self.subscribers[s].net);
            let external = target_net.is_some_and(|n| n != watcher.net);
            let expected: &[usize] = match (shows_status, external, outcome) {
                (true, true, _) => &[1],
                (_, _, Outcome::Error(presence_codec::ErrorReason::Timeout)) if external => &[0, 1],
                _ => &[0],
            };
            if !expected.contains(&records.len()) {
                violations.push(format!(
                    "{name}: outcome {outcome:?}, {} charge records (expected {expected:?})",
                    records.len()
                ));
            }
            if !q.bad_credential
                && matches!(
                    outcome,
                    Outcome::Attached { .. } | Outcome::Detached { .. } | Outcome::NotAvailable
                )
            {
                *spent.entry(q.watcher).or_default() += 1;
            }
        }
        // Every charge record belongs to a query of the network it charges.
        for net in &self.nets {
            for r in net.journal.iter().filter(|r| r.chargeable()) {
                let origin_net = self.nets.iter().position(|n| n.id == r.origin);
                let query = origin_net.and_then(|n| self.by_wa_txid.get(&(n, r.txid)));
                if query.is_none() {
                    violations.push(format!(
                        "seed {seed}: charge record {r:?} matches no query of the network it charges"
                    ));
                }
            }
        }
        // Liveness: with retransmissions, loss must rarely reach A.
        let timeouts = self.report.outcomes.get("timeout").copied().unwrap_or(0);
        if timeouts * 100 > self.queries.len() as u64 {
            violations.push(format!(
                "seed {seed}: {timeouts} of {} queries timed out (more than 1%)",
                self.queries.len()
            ));
        }
        // Credit: start less one per query not refunded; never negative.
        for (i, s) in self.subscribers.iter().enumerate() {
            let credit = self.nets[s.net].wa.credit(s.msisdn).unwrap_or(0);
            let used = spent.get(&i).copied().unwrap_or(0);
            if s.credit.checked_sub(used) != Some(credit) {
                violations.push(format!(
                    "seed {seed}: {} has credit {credit}, expected {} less {used}",
                    s.msisdn, s.credit
                ));
            }
        }
        self.report.violations.extend(violations);
    }
}

fn outcome_name(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Attached { .. } => "attached",
        Outcome::Detached { .. } => "detached",
        Outcome::NotAvailable => "not_available",
        Outcome::Overloaded { .. } => "overloaded",
        Outcome::Error(presence_codec::ErrorReason::Timeout) => "timeout",
        Outcome::Error(presence_codec::ErrorReason::UnknownNetwork) => "unknown_network",
        Outcome::Error(presence_codec::ErrorReason::Unauthenticated) => "unauthenticated",
        Outcome::Error(presence_codec::ErrorReason::CreditExhausted) => "credit_exhausted",
        Outcome::Error(_) => "error",
    }
}

/// `prefix` followed by random digits up to `digits` digits in all.
/// A number of `digits` digits starting with `prefix`, the rest drawn from `rng`.
pub fn extend(prefix: Prefix, digits: usize, rng: &mut SimRng) -> Msisdn {
    let mut value = prefix.value();
    for _ in prefix.len()..digits.max(prefix.len()) {
        value = value * 10 + rng.below(10);
    }
    Msisdn::from_u64(value.min(MSISDN_MAX)).unwrap_or(Msisdn::MAX)
}

/// Buddies on each target's list in the [`Pipeline`].
pub const PIPELINE_BUDDIES: usize = 20;

/// Which watcher is target `j`'s `k`-th buddy.
fn buddy_index(j: usize, k: usize, watchers: usize) -> usize {
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
        let version = world.snapshot();
        let net_a = version.names().id(&a.name).expect("network A in the table");
        let net_b = version.names().id(&b.name).expect("network B in the table");
        let mut rng = SimRng::new(0x9191);
        let draw = |net: &SimNetwork, id: NetworkId, n: usize, rng: &mut SimRng| {
            let mut out: BTreeSet<Msisdn> = BTreeSet::new();
            while out.len() < n {
                let prefix = net.prefixes[rng.below(net.prefixes.len() as u64) as usize];
                let m = extend(prefix, 12, rng);
                if version.lookup(m) == Some(id) {
                    out.insert(m);
                }
            }
            out.into_iter().collect::<Vec<_>>()
        };
        let watcher_numbers = draw(a, net_a, watchers, &mut rng);
        let targets = draw(b, net_b, targets, &mut rng);
        let watchers: Vec<(Msisdn, [u8; 8])> = watcher_numbers
            .iter()
            .map(|&m| (m, rng.next_u64().to_le_bytes()))
            .collect();
        let mut wa_config = WaConfig::new(net_a, a.prefixes.clone());
        wa_config.foreign_ranges = a.foreign_inside.clone();
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
        let mut ps = PresenceServer::new(PsId(0), net_b, 4, 2_000, 1 << 21);
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
        let peers = HashMap::from([(net_b, vec![IngressPoint { id: 0, up: true }])]);
        Pipeline {
            wa,
            ogps: Ogps::new(net_a, 1, world, peers),
            igps: Igps::new(net_b, &hss, world),
            ps,
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
            self.wa.handle(
                now,
                Addr::Device(watcher),
                &Message::ClientRequest(request),
                &mut self.out,
            );
            let Some(t) = self.out.transmits.pop() else {
                continue;
            };
            self.ogps
                .handle(now, Addr::Wa(0), &t.message, &mut self.out);
            let Some(t) = self.out.transmits.pop() else {
                continue;
            };
            self.igps.handle(
                now,
                Addr::Border {
                    network: self.net_a,
                    ingress: 0,
                },
                self.net_a,
                &t.message,
                &mut self.out,
            );
            let Some(t) = self.out.transmits.pop() else {
                continue;
            };
            self.ps
                .handle(now, Addr::Igps(0), t.origin, &t.message, &mut self.out);
            self.charged += self.out.records.iter().filter(|r| r.chargeable()).count() as u64;
            self.out.records.clear();
            let Some(t) = self.out.transmits.pop() else {
                continue;
            };
            self.wa.handle(now, Addr::Ogps, &t.message, &mut self.out);
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
