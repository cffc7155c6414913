//! The simulated world: networks of nodes, devices, the event queue.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;

use presence_codec::{Msisdn, Outcome};

use super::journal::{SimJournal, SyncInFlight};
use super::{SimConfig, SimReport, SimRng};
use crate::node::{CrossMessage, Node, NodeConfig, Provisioned, Subscribers};
use crate::roles::{Hss, PsId};
use crate::table::{NetworkId, NumberingTable, Prefix};

/// The WA's deadline in the simulation.
pub(super) const DEADLINE_MS: u16 = 1500;
/// Wall-clock milliseconds at virtual time 0.
pub(super) const UNIX_MS_AT_ZERO: u64 = 1_700_000_000_000;
/// A device asks again (same request id) this long after an attempt its
/// gateway lost under it.
const DEVICE_RETRY_MS: u64 = DEADLINE_MS as u64 + 300;
/// Most attempts of one request.
const ATTEMPTS_MAX: usize = 6;
/// A failed journal tries a new segment after this long.
const JOURNAL_RETRY_MS: u64 = 1_000;

/// One network's gateway.
pub(super) struct Net {
    pub(super) id: NetworkId,
    pub(super) name: String,
    pub(super) hss: Arc<Hss>,
    /// The nodes, `None` while the gateway is down.
    pub(super) nodes: Vec<Option<Node>>,
    /// Each worker's journal (it outlives the gateway's lives).
    pub(super) journals: Vec<SimJournal>,
    /// Provisioning, as the operator's files hold it.
    pub(super) subscribers: Subscribers,
    /// Provisioning as the live nodes hold it (a reload sends them what
    /// changed since, as the appliance's does).
    pub(super) applied: Subscribers,
    /// Incremented at each restart.
    pub(super) life: u32,
    /// When each life started (µs).
    pub(super) life_started_us: Vec<u64>,
    /// Down until (µs), while restarting.
    pub(super) down_until: u64,
    /// Per worker: its border links are down until (µs).
    pub(super) ingress_down_until: Vec<u64>,
    /// Per worker: the timer event scheduled, if any (µs).
    pub(super) timer_at: Vec<Option<u64>>,
    /// Boot time of the current life, in seconds (strictly increasing).
    pub(super) boot_s: u64,
    /// The HSS ranges as provisioned.
    pub(super) ranges: Vec<(Prefix, PsId)>,
}

/// A subscriber as the simulation knows it.
#[derive(Debug, Clone)]
pub(super) struct SimSubscriber {
    pub(super) msisdn: Msisdn,
    /// The network serving it now (porting changes it).
    pub(super) net: usize,
    pub(super) credential: [u8; 8],
    /// Credit as provisioned.
    pub(super) credit: u64,
    /// Its device's address.
    pub(super) addr: SocketAddr,
    /// The last counter its device signed with (§5.11).
    pub(super) last_counter: u64,
}

/// The checker's model of who may watch whom (step 10).
#[derive(Debug, Clone, Default)]
pub(super) struct Permission {
    pub(super) buddies: BTreeSet<Msisdn>,
    pub(super) consent_all: bool,
    pub(super) withdrawn: BTreeSet<Msisdn>,
}

impl Permission {
    pub(super) fn permits(&self, watcher: Msisdn) -> bool {
        self.consent_all && self.buddies.contains(&watcher) && !self.withdrawn.contains(&watcher)
    }
}

/// One time a device sent a request.
#[derive(Debug, Clone)]
pub(super) struct Attempt {
    pub(super) at_us: u64,
    pub(super) net: usize,
    pub(super) life: u32,
    /// Whether it reached a live gateway.
    pub(super) delivered: bool,
    /// The WA's transaction, once accepted.
    pub(super) txid: Option<u64>,
}

/// A device request and what became of it.
#[derive(Debug, Clone)]
pub(super) struct AskedQuery {
    pub(super) watcher: usize,
    pub(super) target: Msisdn,
    pub(super) bad_credential: bool,
    pub(super) attempts: Vec<Attempt>,
    pub(super) outcomes: Vec<(u64, Outcome)>,
}

/// Something that happens at a virtual time. (A hand-off is carried as
/// the runtime's inboxes carry it, unboxed.)
#[allow(clippy::large_enum_variant)]
pub(super) enum Event {
    Ask {
        query: usize,
    },
    DeviceRetry {
        query: usize,
        attempt: usize,
    },
    Border {
        from: usize,
        to: usize,
        worker: Option<u16>,
        frame: Vec<u8>,
    },
    Cross {
        net: usize,
        life: u32,
        worker: u16,
        message: CrossMessage,
    },
    Timer {
        net: usize,
        life: u32,
        worker: usize,
    },
    Synced {
        net: usize,
        worker: usize,
        sync: SyncInFlight,
    },
    Restart {
        net: usize,
    },
    Recover {
        net: usize,
    },
    IngressDown {
        net: usize,
        worker: usize,
    },
    Move {
        subscriber: usize,
    },
    Reassign {
        net: usize,
    },
    Port {
        subscriber: usize,
    },
    Consent {
        subscriber: usize,
    },
    Buddies {
        subscriber: usize,
    },
    Publish {
        subscriber: usize,
    },
    JournalFail {
        net: usize,
        worker: usize,
    },
    JournalRecover {
        net: usize,
        worker: usize,
    },
}

struct Scheduled {
    at_us: u64,
    seq: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Scheduled) -> bool {
        (self.at_us, self.seq) == (other.at_us, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Scheduled) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Scheduled) -> std::cmp::Ordering {
        (self.at_us, self.seq).cmp(&(other.at_us, other.seq))
    }
}

/// The whole simulation.
pub(super) struct World {
    pub(super) config: SimConfig,
    pub(super) rng: SimRng,
    pub(super) now_us: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<Scheduled>>,
    pub(super) table: Arc<NumberingTable>,
    pub(super) nets: Vec<Net>,
    pub(super) subscribers: Vec<SimSubscriber>,
    pub(super) by_msisdn: BTreeMap<Msisdn, usize>,
    pub(super) by_addr: BTreeMap<SocketAddr, usize>,
    pub(super) permissions: BTreeMap<Msisdn, Permission>,
    pub(super) queries: Vec<AskedQuery>,
    /// Attempts by (watcher's network, WA transaction id).
    pub(super) by_txid: BTreeMap<(NetworkId, u64), (usize, usize)>,
    /// Fresh decisions on each transaction: (origin, txid) → networks that
    /// decided (a transaction is decided once per network at most).
    pub(super) decided_by: BTreeMap<(NetworkId, u64), Vec<NetworkId>>,
    /// Per subscriber: where and since when its current account runs (its
    /// credit restarted from provisioning then): the network, that
    /// gateway's life, and the time (a restart, or a port).
    pub(super) credit_life: Vec<(usize, u32, u64)>,
    pub(super) report: SimReport,
}

impl World {
    pub(super) fn build(config: SimConfig, table: &Arc<NumberingTable>) -> World {
        let mut rng = SimRng::new(config.seed);
        let workers = config.workers.max(1);
        // Subscribers: numbers drawn from each network's prefixes.
        let mut subscribers = Vec::new();
        let mut by_msisdn = BTreeMap::new();
        for (net, network) in config.networks.iter().enumerate() {
            let numbers = network.draw(
                table,
                config.subscribers_per_network,
                11 + (net % 2),
                &mut rng,
            );
            for msisdn in numbers {
                if by_msisdn.contains_key(&msisdn) {
                    continue;
                }
                let mut credential = [0u8; 8];
                credential.copy_from_slice(&rng.next_u64().to_le_bytes());
                let credit = if rng.chance(0.05) { 3 } else { 1_000_000 };
                let index = subscribers.len();
                by_msisdn.insert(msisdn, index);
                subscribers.push(SimSubscriber {
                    msisdn,
                    net,
                    credential,
                    credit,
                    last_counter: 0,
                    addr: SocketAddr::V4(SocketAddrV4::new(
                        Ipv4Addr::new(10, net as u8, (index >> 8) as u8, index as u8),
                        40_000 + (index % 1000) as u16,
                    )),
                });
            }
        }
        let by_addr = subscribers
            .iter()
            .enumerate()
            .map(|(i, s)| (s.addr, i))
            .collect();
        // Buddy lists: each subscriber lets a few others watch.
        let mut permissions: BTreeMap<Msisdn, Permission> = BTreeMap::new();
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
        for (n, network) in config.networks.iter().enumerate() {
            let ranges: Vec<(Prefix, PsId)> = network
                .prefixes
                .iter()
                .enumerate()
                .map(|(i, &p)| (p, PsId((i % usize::from(config.ps_per_network)) as u16)))
                .collect();
            let hss = Arc::new(Hss::new(&ranges));
            let provisioned: Subscribers = subscribers
                .iter()
                .filter(|s| s.net == n)
                .map(|s| {
                    (
                        s.msisdn,
                        Provisioned {
                            credential: s.credential.to_vec(),
                            credit: s.credit,
                            consent: true,
                            buddies: permissions[&s.msisdn].buddies.iter().copied().collect(),
                        },
                    )
                })
                .collect();
            nets.push(Net {
                id: network.id,
                name: network.name.clone(),
                hss,
                nodes: (0..workers).map(|_| None).collect(),
                journals: (0..workers).map(|_| SimJournal::default()).collect(),
                applied: provisioned.clone(),
                subscribers: provisioned,
                life: 0,
                life_started_us: vec![0],
                down_until: 0,
                ingress_down_until: vec![0; usize::from(workers)],
                timer_at: vec![None; usize::from(workers)],
                boot_s: UNIX_MS_AT_ZERO / 1000,
                ranges,
            });
        }
        let credit_life = subscribers.iter().map(|s| (s.net, 0, 0)).collect();
        let mut world = World {
            rng,
            now_us: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            table: table.clone(),
            nets,
            subscribers,
            by_msisdn,
            by_addr,
            permissions,
            queries: Vec::new(),
            by_txid: BTreeMap::new(),
            decided_by: BTreeMap::new(),
            credit_life,
            report: SimReport {
                seed: config.seed,
                ..SimReport::default()
            },
            config,
        };
        for net in 0..world.nets.len() {
            world.start_gateway(net);
        }
        world
    }

    /// Starts (or restarts) network `net`'s nodes: provisioning, the
    /// journal's numbering and recent decisions, the peers' worker counts.
    pub(super) fn start_gateway(&mut self, net: usize) {
        let now_ms = self.now_us / 1000;
        let workers = self.config.workers.max(1);
        let peers: Vec<NetworkId> = self
            .nets
            .iter()
            .map(|n| n.id)
            .filter(|&id| id != self.nets[net].id)
            .collect();
        let state = &mut self.nets[net];
        state.boot_s = (state.boot_s + 1).max((UNIX_MS_AT_ZERO + now_ms) / 1000);
        let window_ms = u64::from(DEADLINE_MS) + 200;
        let since = (UNIX_MS_AT_ZERO + now_ms).saturating_sub(window_ms);
        for worker in 0..workers {
            let w = usize::from(worker);
            let journal = &mut state.journals[w];
            let mut config = NodeConfig::new(state.id, worker, workers);
            config.deadline_ms = DEADLINE_MS;
            config.pending_max = 4096;
            config.window_slots = 1 << 14;
            config.boot_time_s = state.boot_s;
            config.unix_ms_at_zero = UNIX_MS_AT_ZERO;
            // After a restart, the previous life ended now: what it may
            // have taken was signed before now plus the most a device
            // clock runs ahead (a first start has no floor).
            if state.life > 0 {
                config.device_floor_unix_ms =
                    UNIX_MS_AT_ZERO + now_ms + config.device_clock_ahead_ms;
            }
            config.first_record_seq = journal.next_seq();
            config.peers = peers.clone();
            config.observe = true;
            let mut node = Node::new(config, &self.table, &state.hss);
            for &peer in &peers {
                node.set_peer_workers(peer, workers);
            }
            node.provision(self.now_us, &state.subscribers, &state.hss);
            state.applied.clone_from(&state.subscribers);
            let names = self.table.snapshot();
            let recent: Vec<crate::journal::JournalEntry> = state
                .journals
                .iter()
                .flat_map(|j| j.written.iter().filter(|s| !j.is_voided(s.seq)))
                .filter(|s| s.at_unix_ms >= since)
                .map(|s| crate::journal::JournalEntry {
                    seq: s.seq,
                    at_unix_ms: s.at_unix_ms,
                    origin: names.network_name(s.record.origin).to_string(),
                    txid: s.record.txid,
                    watcher: s.record.watcher,
                    target: s.record.target,
                    reply_node: s.record.reply_node,
                    ps: s.record.ps,
                    outcome: s.record.outcome,
                })
                .collect();
            let marks: Vec<crate::journal::StreamMark> = state
                .journals
                .iter()
                .flat_map(|j| j.marks.iter())
                .filter(|m| m.at_unix_ms >= since)
                .cloned()
                .collect();
            node.rebuild_windows(self.now_us, &recent, &marks);
            state.nodes[w] = Some(node);
            state.timer_at[w] = None;
        }
    }

    pub(super) fn schedule(&mut self, at_us: u64, event: Event) {
        self.seq += 1;
        self.queue.push(Reverse(Scheduled {
            at_us: at_us.max(self.now_us),
            seq: self.seq,
            event,
        }));
    }

    /// A uniform draw in `lo..=hi`.
    pub(super) fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.rng.below(hi.saturating_sub(lo) + 1)
    }

    pub(super) fn schedule_workload(&mut self) {
        let duration_us = self.config.duration_ms.max(1) * 1000;
        let n = self.subscribers.len() as u64;
        let networks = self.nets.len() as u64;
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
                if candidates.is_empty() {
                    self.subscribers[self.rng.below(n) as usize].msisdn
                } else {
                    candidates[self.rng.below(candidates.len() as u64) as usize]
                }
            } else if roll < 90 {
                self.subscribers[self.rng.below(n) as usize].msisdn
            } else if roll < 95 {
                // An unprovisioned number in a simulated network's range.
                let net = self.rng.below(networks) as usize;
                let prefixes = &self.config.networks[net].prefixes;
                let prefix = prefixes[self.rng.below(prefixes.len() as u64) as usize];
                super::extend(prefix, 13, &mut self.rng)
            } else {
                // A number of no simulated network.
                Msisdn::from_u64(8_800_000_000_000 + self.rng.below(99_999_999))
                    .unwrap_or(Msisdn::MAX)
            };
            let bad_credential = self.rng.chance(0.01);
            let at = self.rng.below(duration_us);
            self.queries.push(AskedQuery {
                watcher,
                target,
                bad_credential,
                attempts: Vec::new(),
                outcomes: Vec::new(),
            });
            let query = self.queries.len() - 1;
            self.schedule(at, Event::Ask { query });
        }
        type Make = fn(&mut World) -> Event;
        let faults: [(usize, Make); 9] = [
            (self.config.restarts, |w| Event::Restart {
                net: w.rng.below(w.nets.len() as u64) as usize,
            }),
            (self.config.ingress_downs, |w| Event::IngressDown {
                net: w.rng.below(w.nets.len() as u64) as usize,
                worker: w.rng.below(u64::from(w.config.workers.max(1))) as usize,
            }),
            (self.config.moves, |w| Event::Move {
                subscriber: w.rng.below(w.subscribers.len() as u64) as usize,
            }),
            (self.config.range_reassignments, |w| Event::Reassign {
                net: w.rng.below(w.nets.len() as u64) as usize,
            }),
            (self.config.ports, |w| Event::Port {
                subscriber: w.rng.below(w.subscribers.len() as u64) as usize,
            }),
            (self.config.consent_changes, |w| Event::Consent {
                subscriber: w.rng.below(w.subscribers.len() as u64) as usize,
            }),
            (self.config.buddy_changes, |w| Event::Buddies {
                subscriber: w.rng.below(w.subscribers.len() as u64) as usize,
            }),
            (self.config.publications, |w| Event::Publish {
                subscriber: w.rng.below(w.subscribers.len() as u64) as usize,
            }),
            (self.config.journal_failures, |w| Event::JournalFail {
                net: w.rng.below(w.nets.len() as u64) as usize,
                worker: w.rng.below(u64::from(w.config.workers.max(1))) as usize,
            }),
        ];
        for (count, make) in faults {
            for _ in 0..count {
                let event = make(self);
                let at = self.rng.below(duration_us);
                self.schedule(at, event);
            }
        }
    }

    pub(super) fn run_to_end(&mut self) {
        while let Some(Reverse(next)) = self.queue.pop() {
            self.now_us = next.at_us;
            self.dispatch(next.event);
        }
        self.report.queries = self.queries.len() as u64;
        self.report.attempts = self.queries.iter().map(|q| q.attempts.len() as u64).sum();
        for net in &self.nets {
            for node in net.nodes.iter().flatten() {
                let roles = node.role_counters();
                self.report.retransmissions += roles.wa.retransmissions;
                self.report.cross_worker += node.counters().cross_worker.total();
            }
        }
    }

    fn dispatch(&mut self, event: Event) {
        match event {
            Event::Ask { query } => self.ask(query),
            Event::DeviceRetry { query, attempt } => self.device_retry(query, attempt),
            Event::Border {
                from,
                to,
                worker,
                frame,
            } => self.deliver_border(from, to, worker, &frame),
            Event::Cross {
                net,
                life,
                worker,
                message,
            } => self.deliver_cross(net, life, worker, message),
            Event::Timer { net, life, worker } => self.fire_timer(net, life, worker),
            Event::Synced { net, worker, sync } => self.synced(net, worker, sync),
            Event::Restart { net } => self.restart(net),
            Event::Recover { net } => self.recover(net),
            Event::IngressDown { net, worker } => self.ingress_down(net, worker),
            Event::Move { subscriber } => self.move_subscriber(subscriber),
            Event::Reassign { net } => self.reassign(net),
            Event::Port { subscriber } => self.port(subscriber),
            Event::Consent { subscriber } => self.change_consent(subscriber),
            Event::Buddies { subscriber } => self.change_buddies(subscriber),
            Event::Publish { subscriber } => self.publish(subscriber),
            Event::JournalFail { net, worker } => self.journal_fail(net, worker),
            Event::JournalRecover { net, worker } => self.journal_recover(net, worker),
        }
    }

    /// The next counter of subscriber `index`'s device: its clock in Unix
    /// milliseconds, always above the last (§5.11).
    pub(super) fn next_counter(&mut self, index: usize) -> u64 {
        let clock = UNIX_MS_AT_ZERO + self.now_us / 1000;
        let s = &mut self.subscribers[index];
        s.last_counter = clock.max(s.last_counter + 1);
        s.last_counter
    }

    /// A device's request (step 1), or its next attempt.
    fn ask(&mut self, query: usize) {
        self.attempt(query);
    }

    fn attempt(&mut self, query: usize) {
        let q = &self.queries[query];
        let s = self.subscribers[q.watcher].clone();
        let net = s.net;
        let life = self.nets[net].life;
        let delivered = self.nets[net].down_until <= self.now_us;
        let attempt = q.attempts.len();
        self.queries[query].attempts.push(Attempt {
            at_us: self.now_us,
            net,
            life,
            delivered,
            txid: None,
        });
        let retry_at = self.now_us + DEVICE_RETRY_MS * 1000;
        self.schedule(retry_at, Event::DeviceRetry { query, attempt });
        if !delivered {
            return;
        }
        let mut credential = s.credential;
        if self.queries[query].bad_credential {
            credential[0] ^= 0xff;
        }
        // Each attempt signed anew (the device's next counter), under the
        // key of the secret the device holds.
        let counter = self.next_counter(self.queries[query].watcher);
        let request = presence_codec::DeviceKey::derive(s.msisdn, &credential).sign_request(
            presence_codec::ClientRequest {
                txid: query as u64,
                watcher: s.msisdn,
                target: self.queries[query].target,
                operation: presence_codec::ClientOperation::Query,
                auth: presence_codec::DeviceAuth::UNSIGNED,
            },
            counter,
        );
        let request = presence_codec::Message::ClientRequest(request);
        self.device_datagram(net, s.addr, s.msisdn, &request);
    }

    /// A device that got no answer asks again if its gateway lost the
    /// request (it restarted under it, or was down).
    fn device_retry(&mut self, query: usize, attempt: usize) {
        let q = &self.queries[query];
        if !q.outcomes.is_empty()
            || q.attempts.len() != attempt + 1
            || q.attempts.len() >= ATTEMPTS_MAX
        {
            return;
        }
        let a = &q.attempts[attempt];
        let lost = !a.delivered || self.nets[a.net].life != a.life;
        if lost {
            self.attempt(query);
        }
    }

    pub(super) fn journal_retry_ms() -> u64 {
        JOURNAL_RETRY_MS
    }
}
