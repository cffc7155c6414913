//! The roles one worker runs, and where their messages go.
//!
//! Every worker runs a complete set of roles over its share of the state:
//! - WA instance `i` (the worker's index is its `reply_node`), owning the
//!   watchers whose MSISDN hashes to `i`, with their credit and pending
//!   transactions;
//! - the OGPS and an IGPS, which hold no per-query state;
//! - a slice of every presence server: the subscribers hashing to `i`.
//!
//! A message whose state lives on another worker goes to that worker's
//! bounded inbox (a lock-free `ArrayQueue`); answers find their WA by
//! `reply_node`, so they return to the worker that asked. A full inbox sheds:
//! a request is answered `Overloaded` to its device, anything else is
//! dropped and counted (its sender retransmits).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;

use ahash::AHashMap;
use presence_codec::{Answer, FrameReader, Message, Msisdn, Outcome, FRAME_LEN_DEFAULT_MAX};

use super::{CrossMsg, Shared, WorkerStats};
use crate::journal::{JournalEntry, JournalWriter, SyncState};
use crate::roles::{
    shed_refused_frame, Addr, Charging, DecisionRecord, HssReader, Igps, IngressPoint, Ogps,
    Outbox, PresenceServer, PsId, Subscriber, Transmit, WaConfig, WatcherApp,
};
use crate::table::NetworkId;

/// Largest frame a worker sends to a peer network's BG (the stream framing
/// allows 65535; 16 KB keeps latency low while batching hundreds of
/// queries).
pub(crate) const BORDER_FRAME_MAX: usize = 16 * 1024;
/// Retry-after told to a device when the appliance sheds its request.
pub(crate) const SHED_RETRY_MS: u32 = 200;
/// Bytes of presence-server answers a worker holds waiting for their charge
/// records to become durable; past it the presence server sheds new queries
/// from other networks with `Overloaded` until half of it is left.
pub(crate) const HELD_BYTES_MAX: usize = 16 << 20;
/// Retry-after told while answers wait for a slow disk.
const BACKLOG_RETRY_MS: u32 = 50;
/// Most role-to-role messages one input may cause (a guard against loops).
const WORK_MAX: usize = 1 << 16;

/// Which worker owns the state of `msisdn`: the presence server's own
/// shard hash, over workers.
pub(crate) fn owner(msisdn: Msisdn, workers: usize) -> usize {
    crate::roles::shard_index(msisdn, workers)
}

/// The subscriber a message is about, for routing to its state.
fn subject(message: &Message<'_>) -> Option<Msisdn> {
    match message {
        Message::Query(q) => Some(q.target),
        Message::Publish(p) => Some(p.subscriber),
        Message::BuddyUpdate(u) => Some(u.owner),
        Message::ConsentUpdate(u) => Some(u.owner),
        Message::ClientRequest(r) => Some(r.watcher),
        _ => None,
    }
}

/// Alarm counters ([`super::metrics::ALARMS`] order): a query or answer
/// sent to the device port.
pub(crate) const ALARM_SKIPPED_WA: usize = 1;
/// A peer's answer about a number of another network.
pub(crate) const ALARM_ANSWER_WRONG_NETWORK: usize = 2;

/// One device request in this many has its latency measured (by its
/// request id, so the answer finds its arrival time).
const LATENCY_SAMPLE_EVERY: u64 = 16;

/// Frames being filled for one destination.
#[derive(Debug, Default)]
struct FrameBuf {
    bytes: Vec<u8>,
}

/// Appends `message` to the frame being filled for `network`, opening one
/// (from `free` buffers) if needed; returns the frame it closed first
/// because `message` would not fit in `max` bytes.
fn append_framed(
    frames: &mut AHashMap<NetworkId, FrameBuf>,
    free: &mut Vec<Vec<u8>>,
    max: usize,
    network: NetworkId,
    message: &Message<'_>,
    bad_messages: &mut u64,
) -> Option<Vec<u8>> {
    let len = message.encoded_len();
    let full = frames
        .get(&network)
        .is_some_and(|f| f.bytes.len() + len > max);
    let closed = if full {
        frames.remove(&network).map(|f| f.bytes)
    } else {
        None
    };
    let frame = frames.entry(network).or_insert_with(|| {
        let mut bytes = free.pop().unwrap_or_default();
        bytes.extend_from_slice(&[presence_codec::FRAME_MAGIC, presence_codec::FRAME_VERSION]);
        FrameBuf { bytes }
    });
    if message.encode(&mut frame.bytes).is_err() {
        *bad_messages += 1;
    }
    closed
}

/// A frame of presence-server answers to another network, waiting until
/// the journal has made durable every record appended before it closed.
#[derive(Debug)]
struct HeldFrame {
    upto: u64,
    /// Released once a sync that started after it closed completes.
    ticket: u64,
    network: NetworkId,
    bytes: Vec<u8>,
}

/// One worker's roles and the routing between them.
pub(crate) struct Shard {
    pub(crate) index: usize,
    shared: Arc<Shared>,
    wa: WatcherApp,
    ogps: Ogps,
    /// Counters of OGPS instances replaced on reload (metrics stay cumulative).
    ogps_retired: crate::roles::OgpsCounters,
    igps: Igps,
    hss: HssReader,
    /// The numbering table, to check which network answers for a number.
    table: crate::table::TableReader,
    /// This worker's slice of each presence server, by id.
    ps: AHashMap<PsId, PresenceServer>,
    out: Outbox,
    work: VecDeque<(Addr, Transmit)>,
    /// Where each owned watcher's device was last heard from.
    device_addrs: AHashMap<Msisdn, SocketAddr>,
    /// Arrival time (µs) of device requests waiting for their answer, by
    /// (watcher, device request id): the latency histogram's start.
    arrivals: AHashMap<(Msisdn, u64), u64>,
    device_frames: AHashMap<SocketAddr, FrameBuf>,
    border_frames: AHashMap<NetworkId, FrameBuf>,
    free_bufs: Vec<Vec<u8>>,
    /// Frames ready for the socket / the border, filled during a turn.
    pub(crate) ready_device: Vec<(SocketAddr, Vec<u8>)>,
    pub(crate) ready_border: Vec<(NetworkId, Vec<u8>)>,
    /// Workers whose inbox got messages this turn (woken once at its end).
    pub(crate) wake: Vec<bool>,
    pub(crate) stats: WorkerStats,
    pub(crate) journal: JournalWriter,
    /// Presence-server answers to other networks being filled this turn.
    held_frames: AHashMap<NetworkId, FrameBuf>,
    /// Closed frames of such answers, oldest first, waiting for the journal.
    held: VecDeque<HeldFrame>,
    held_bytes: usize,
    /// The charging state told to the presence servers.
    charging: Charging,
    /// Answers refused because their charge record did not become durable.
    pub(crate) voided: u64,
    /// Subscribers provisioned on this worker (for removal on reload).
    owned: ahash::AHashSet<Msisdn>,
    /// The traced query's transaction at this presence server (demo).
    traced_txid: Option<u64>,
}

impl std::fmt::Debug for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard").field("index", &self.index).finish()
    }
}

impl Shard {
    pub(crate) fn new(index: usize, shared: Arc<Shared>, journal: JournalWriter) -> Shard {
        let wa = WatcherApp::new(Self::wa_config(index, &shared), Default::default());
        let ogps = Self::ogps(&shared);
        let igps = Igps::new(shared.network, &shared.hss, &shared.table);
        let workers = shared.workers;
        let mut shard = Shard {
            index,
            hss: shared.hss.reader(),
            table: shared.table.reader(),
            wa,
            ogps,
            ogps_retired: crate::roles::OgpsCounters::default(),
            igps,
            ps: AHashMap::new(),
            out: Outbox::with_capacity(256, 256),
            work: VecDeque::with_capacity(256),
            device_addrs: AHashMap::new(),
            arrivals: AHashMap::new(),
            device_frames: AHashMap::new(),
            border_frames: AHashMap::new(),
            free_bufs: Vec::new(),
            ready_device: Vec::new(),
            ready_border: Vec::new(),
            wake: vec![false; workers],
            stats: WorkerStats::default(),
            journal,
            held_frames: AHashMap::new(),
            held: VecDeque::new(),
            held_bytes: 0,
            charging: Charging::Available,
            voided: 0,
            owned: ahash::AHashSet::new(),
            traced_txid: None,
            shared,
        };
        shard.apply_peer_limits();
        shard
    }

    fn wa_config(index: usize, shared: &Shared) -> WaConfig {
        let mut config = WaConfig::new(shared.network, shared.own_ranges.clone());
        config.foreign_ranges = shared.foreign_ranges.clone();
        config.instance = u16::try_from(index).unwrap_or(u16::MAX);
        config.igps_count = 1;
        config.deadline_ms = shared.deadline_ms;
        config.query_cost = shared.query_cost;
        config.pending_max = shared.pending_max;
        config.boot_time_s = shared.boot_time_s;
        config.watcher_rate = shared.limits.watcher;
        config
    }

    fn ogps(shared: &Shared) -> Ogps {
        let peers = shared
            .peer_networks
            .load()
            .iter()
            .map(|(network, _)| (*network, vec![IngressPoint { id: 0, up: true }]))
            .collect();
        Ogps::new(shared.network, 1, &shared.table, peers)
    }

    /// After a reload changed the peer networks.
    pub(crate) fn refresh_peers(&mut self) {
        let old = std::mem::replace(&mut self.ogps, Self::ogps(&self.shared)).counters();
        let r = &mut self.ogps_retired;
        r.forwarded += old.forwarded;
        r.looped_home += old.looped_home;
        r.unknown_network += old.unknown_network;
        r.hop_limit_exceeded += old.hop_limit_exceeded;
        r.all_ingress_down += old.all_ingress_down;
        r.held_off += old.held_off;
        self.apply_peer_limits();
    }

    /// The IGPS's per-peer rate limits, this worker's share of them.
    fn apply_peer_limits(&mut self) {
        let workers = self.shared.workers;
        let names = self.shared.names.load();
        let overrides: Vec<(NetworkId, crate::roles::Rate)> = self
            .shared
            .limits
            .peers
            .iter()
            .filter_map(|(name, rate)| Some((names.id(name)?, rate.share(workers))))
            .collect();
        let default = self.shared.limits.peer_default.map(|r| r.share(workers));
        self.igps.set_peer_limits(default, &overrides);
    }

    /// Applies provisioning: this worker's watchers and its slice of each
    /// presence server, placed as `hss` (the new HSS table, not yet
    /// published to the IGPS) says. Existing subscribers keep their credit
    /// and status; a subscriber `hss` places on another presence server is
    /// exported from the old slice (which keeps a forwarding pointer, so
    /// queries still routed there by the old HSS reach the new one) and
    /// imported with its state; subscribers no longer listed are removed.
    pub(crate) fn provision(
        &mut self,
        now: u64,
        subscribers: &crate::config::Subscribers,
        hss: &crate::roles::Hss,
    ) {
        let workers = self.shared.workers;
        let index = self.index;
        let gone: Vec<Msisdn> = self
            .owned
            .iter()
            .copied()
            .filter(|m| !subscribers.contains_key(m))
            .collect();
        for m in gone {
            for ps in self.ps.values_mut() {
                ps.deprovision(m);
            }
            self.wa.deprovision(m);
            self.device_addrs.remove(&m);
            self.owned.remove(&m);
        }
        // Every owned subscriber may have a device address: sized now, the
        // map never rehashes (a stall of tens of milliseconds at a million
        // entries) while it fills under load.
        let owned_here = subscribers
            .keys()
            .filter(|m| owner(**m, workers) == index)
            .count();
        let have = self.device_addrs.len();
        self.device_addrs.reserve(owned_here.saturating_sub(have));
        let network = self.shared.network;
        // The duplicate window outlives the WA's deadline; its rings hold
        // `window_slots` transactions of each WA instance.
        let window_ms = u64::from(self.shared.deadline_ms) + 200;
        let window_slots = self.shared.window_slots;
        let charging = self.charging;
        for (m, p) in subscribers
            .iter()
            .filter(|(m, _)| owner(**m, workers) == index)
        {
            self.owned.insert(*m);
            self.wa.provision(
                *m,
                &Subscriber {
                    credential: p.credential.clone(),
                    credit: p.credit,
                },
            );
            let Some(home) = hss.lookup(*m) else {
                continue;
            };
            let elsewhere = self
                .ps
                .iter()
                .find(|(id, ps)| **id != home && ps.subscriber(*m).is_some())
                .map(|(id, _)| *id);
            let moved = elsewhere.and_then(|from| {
                self.ps
                    .get_mut(&from)
                    .and_then(|ps| ps.export(now, *m, home))
            });
            let ps = self.ps.entry(home).or_insert_with(|| {
                let mut ps = PresenceServer::new(home, network, 1, window_ms, window_slots);
                ps.set_charging(charging);
                ps
            });
            if let Some((record, entries)) = moved {
                ps.import(now, *m, record, &entries);
            }
            ps.reprovision(*m, p.credential.clone(), p.buddies.clone(), p.consent);
        }
    }

    /// Subscribers held by this worker's presence-server slices.
    pub(crate) fn subscriber_count(&self) -> usize {
        self.ps.values().map(PresenceServer::subscriber_count).sum()
    }

    /// Copies the roles' alarm counters into the worker's stats.
    pub(crate) fn collect_alarms(&mut self) {
        self.stats.alarms[0] = self.igps.counters().spoofed_watcher;
    }

    /// What the roles decided so far, in [`super::metrics::ROLE_EVENTS`] order.
    pub(crate) fn role_events(&self) -> [u64; super::metrics::ROLE_EVENTS.len()] {
        let wa = self.wa.counters();
        let mut ogps = self.ogps.counters();
        ogps.forwarded += self.ogps_retired.forwarded;
        ogps.looped_home += self.ogps_retired.looped_home;
        ogps.unknown_network += self.ogps_retired.unknown_network;
        ogps.hop_limit_exceeded += self.ogps_retired.hop_limit_exceeded;
        ogps.all_ingress_down += self.ogps_retired.all_ingress_down;
        ogps.held_off += self.ogps_retired.held_off;
        let igps = self.igps.counters();
        let mut ps = crate::roles::PsCounters::default();
        for server in self.ps.values() {
            let c = server.counters();
            ps.answered_status += c.answered_status;
            ps.not_available += c.not_available;
            ps.charged += c.charged;
            ps.duplicates += c.duplicates;
            ps.publications += c.publications;
            ps.refused += c.refused;
            ps.drops.overloaded += c.drops.overloaded;
            ps.charging_refused += c.charging_refused;
        }
        [
            wa.accepted,
            wa.internal,
            wa.unauthenticated,
            wa.credit_exhausted,
            wa.retransmissions,
            wa.final_answers,
            wa.timeouts,
            ogps.forwarded,
            ogps.looped_home,
            ogps.unknown_network,
            ogps.hop_limit_exceeded,
            ogps.all_ingress_down,
            igps.forwarded,
            igps.unknown_subscriber,
            igps.hop_limit_exceeded,
            ps.answered_status,
            ps.not_available,
            ps.charged,
            ps.duplicates,
            ps.publications,
            ps.refused,
            ps.drops.overloaded,
            wa.throttled,
            ogps.held_off,
            igps.throttled,
            ps.charging_refused,
        ]
    }

    /// Pending WA transactions.
    pub(crate) fn pending(&self) -> usize {
        self.wa.pending_len()
    }

    /// When the WA next needs [`on_timer`](Self::on_timer).
    pub(crate) fn next_deadline(&self) -> Option<u64> {
        self.wa.poll_timeout()
    }

    /// Runs the WA's deadlines and retransmissions due by `now`.
    pub(crate) fn on_timer(&mut self, now: u64) {
        self.wa.handle_timeout(now, &mut self.out);
        self.drain_out(Addr::Wa(self.wa_instance()));
        self.run(now);
    }

    fn wa_instance(&self) -> u16 {
        u16::try_from(self.index).unwrap_or(u16::MAX)
    }

    /// One datagram from a device.
    pub(crate) fn on_datagram(&mut self, now: u64, now_us: u64, from: SocketAddr, frame: &[u8]) {
        let Ok(reader) = FrameReader::new(frame, FRAME_LEN_DEFAULT_MAX) else {
            self.stats.bad_datagrams += 1;
            return;
        };
        self.warm_device_frame(reader.clone());
        for message in reader {
            match message {
                Ok(message) => self.on_device_message(now, now_us, from, &message),
                Err(_) => {
                    self.stats.bad_messages += 1;
                    break;
                }
            }
        }
        self.run(now);
    }

    /// The warm-up pass over a frame from devices: looks up every local
    /// watcher's subscriber entry and device address before any request is
    /// handled. The lookups are independent, so the processor overlaps
    /// their cache misses (a million subscribers do not fit in any cache);
    /// handling then finds the entries cached. Measured in `BENCHMARKS.md`.
    fn warm_device_frame(&self, reader: FrameReader<'_>) {
        let workers = self.shared.workers;
        for message in reader.flatten() {
            if let Message::ClientRequest(r) = message {
                if owner(r.watcher, workers) == self.index {
                    std::hint::black_box(self.wa.knows(r.watcher));
                    std::hint::black_box(self.device_addrs.get(&r.watcher));
                }
            }
        }
    }

    /// The warm-up pass over a border frame: the subscriber entries and
    /// buddy lists of queried targets, and the device addresses of answered
    /// watchers (see [`Self::warm_device_frame`]).
    fn warm_border_frame(&mut self, reader: FrameReader<'_>) {
        let workers = self.shared.workers;
        for message in reader.flatten() {
            match message {
                Message::Query(q) if owner(q.target, workers) == self.index => {
                    if let Some(ps) = self.hss.lookup(q.target).and_then(|id| self.ps.get(&id)) {
                        std::hint::black_box(ps.first_buddy(q.target));
                    }
                }
                Message::Answer(a) => {
                    if let Some(device) = self.wa.pending_device(a.txid) {
                        std::hint::black_box(self.device_addrs.get(&device));
                    }
                }
                _ => {}
            }
        }
    }

    fn on_device_message(
        &mut self,
        now: u64,
        now_us: u64,
        from: SocketAddr,
        message: &Message<'_>,
    ) {
        // Devices speak to their WA only: a query or answer on the device
        // port skipped the Watcher Application (no authentication, no
        // credit). Refused to its source, never routed: no HSS lookup, no
        // charge.
        if let Message::Query(_) | Message::Answer(_) = message {
            self.stats.alarms[ALARM_SKIPPED_WA] += 1;
            if let Message::Query(q) = message {
                let refusal = crate::roles::answer_to(
                    q,
                    Outcome::Error(presence_codec::ErrorReason::Refused),
                );
                self.frame_to_device(from, &refusal);
            }
            return;
        }
        let Some(subject) = subject(message) else {
            self.stats.bad_messages += 1;
            return;
        };
        let owner = owner(subject, self.shared.workers);
        if owner != self.index {
            let mut bytes = [0u8; super::CROSS_MESSAGE_MAX];
            let len = message.encoded_len();
            let Some(slot) = bytes.get_mut(..len) else {
                self.stats.bad_messages += 1;
                return;
            };
            let mut cursor: &mut [u8] = slot;
            if message.encode(&mut cursor).is_err() {
                self.stats.bad_messages += 1;
                return;
            }
            let cross = CrossMsg::Device {
                from,
                arrived_us: now_us,
                len: u16::try_from(len).unwrap_or(0),
                bytes,
            };
            if !self.push_cross(owner, cross) {
                self.shed_device(from, message);
            }
            return;
        }
        self.device_local(now, now_us, from, message);
    }

    /// Sends what a role just addressed to `who`'s device straight back to
    /// the datagram's source (a refusal, an ack), not via the address map.
    fn answer_source(&mut self, who: Msisdn, from: SocketAddr) {
        let mut i = 0;
        while i < self.out.transmits.len() {
            let to_source = self
                .out
                .transmits
                .get(i)
                .is_some_and(|t| t.to == Addr::Device(who));
            if !to_source {
                i += 1;
                continue;
            }
            let transmit = self.out.transmits.remove(i);
            if let Message::Answer(answer) = &transmit.message {
                self.stats.count_outcome(&answer.outcome);
            }
            self.frame_to_device(from, &transmit.message);
        }
    }

    /// Steps 2–4 for a traced request, from what the WA just produced.
    fn trace_wa(&self, watcher: Msisdn, target: Msisdn) {
        let to_ogps = self
            .out
            .transmits
            .iter()
            .any(|t| t.to == Addr::Ogps && matches!(t.message, Message::Query(_)));
        if !to_ogps {
            self.shared.trace_step(
                2,
                "A's WA answered A itself (refused, or B is in A's own network)".to_string(),
            );
            return;
        }
        let credit = self.wa.credit(watcher).unwrap_or(0);
        self.shared.trace_step(2, format!("A's WA authenticated A by credential and debited A's prepay credit ({credit} left)"));
        self.shared.trace_step(
            3,
            format!("A's WA: {target} is not a number of A's network"),
        );
        self.shared
            .trace_step(4, "A's WA sent the query to A's OGPS".to_string());
    }

    /// A device's message on the worker that owns its subject.
    pub(crate) fn device_local(
        &mut self,
        now: u64,
        now_us: u64,
        from: SocketAddr,
        message: &Message<'_>,
    ) {
        match message {
            Message::ClientRequest(request) => {
                self.stats.requests += 1;
                let traced = self.shared.trace == Some(request.watcher);
                if traced {
                    self.shared.trace_step(
                        1,
                        format!(
                            "A ({}) asks its WA: is {} attached?",
                            request.watcher, request.target
                        ),
                    );
                }
                self.wa
                    .handle(now, Addr::Device(request.watcher), message, &mut self.out);
                if traced {
                    self.trace_wa(request.watcher, request.target);
                }
                // Only a request the WA accepted (it produced a query) records
                // where the subscriber's device is: an unauthenticated sender
                // can neither redirect a subscriber's answers nor grow the map.
                let accepted = self
                    .out
                    .transmits
                    .iter()
                    .any(|t| matches!(t.message, Message::Query(_)));
                self.answer_source(request.watcher, from);
                if accepted {
                    self.device_addrs.insert(request.watcher, from);
                    // Latency is sampled (1 request in LATENCY_SAMPLE_EVERY,
                    // chosen by the device's id): a map insert and removal
                    // per query cost two cache misses of a million-entry
                    // table, a tenth of a worker's time at full load.
                    let sampled = request.txid % LATENCY_SAMPLE_EVERY == 0;
                    if sampled && self.arrivals.len() < self.shared.pending_max.saturating_mul(2) {
                        self.arrivals
                            .insert((request.watcher, request.txid), now_us);
                    }
                }
                self.drain_out(Addr::Wa(self.wa_instance()));
            }
            Message::Publish(publish) => {
                self.stats.publications += 1;
                let Some(id) = self.hss.lookup(publish.subscriber) else {
                    self.stats.unknown_subscriber += 1;
                    return;
                };
                if let Some(ps) = self.ps.get_mut(&id) {
                    ps.handle(
                        now,
                        Addr::Device(publish.subscriber),
                        self.shared.network,
                        message,
                        &mut self.out,
                    );
                    self.answer_source(publish.subscriber, from);
                    self.drain_out(Addr::Ps(id));
                }
            }
            _ => self.stats.bad_messages += 1,
        }
        self.run(now);
    }

    fn shed_device(&mut self, to: SocketAddr, message: &Message<'_>) {
        self.stats.shed += 1;
        if let Message::ClientRequest(request) = message {
            let outcome = Outcome::Overloaded {
                retry_after_ms: SHED_RETRY_MS,
            };
            self.stats.count_outcome(&outcome);
            let answer = Message::Answer(Answer {
                txid: request.txid,
                reply_node: 0,
                target: request.target,
                outcome,
            });
            self.frame_to_device(to, &answer);
        }
    }

    /// One frame from a peer network's BG, `origin` being that peer.
    pub(crate) fn on_border_frame(&mut self, now: u64, origin: NetworkId, frame: &[u8]) {
        let Ok(reader) = FrameReader::new(frame, BORDER_FRAME_MAX.max(u16::MAX as usize)) else {
            self.stats.bad_border_frames += 1;
            return;
        };
        self.warm_border_frame(reader.clone());
        for message in reader {
            match message {
                Ok(Message::Query(query)) => {
                    self.stats.border_queries_in += 1;
                    self.stats.peer_event(origin, 0);
                    let traced = self.shared.trace == Some(query.watcher);
                    if traced {
                        self.shared.trace_step(7, format!("B's IGPS received the query from its border gateway; the origin network, {}, is the peer the BG authenticated by certificate (the message names no network)", self.shared.network_name(origin)));
                    }
                    self.igps.handle(
                        now,
                        Addr::Border {
                            network: origin,
                            ingress: 0,
                        },
                        origin,
                        &Message::Query(query),
                        &mut self.out,
                    );
                    if traced {
                        for t in &self.out.transmits {
                            if let Addr::Ps(id) = t.to {
                                self.shared.trace_step(
                                    8,
                                    format!(
                                        "B's HSS: {} is held by presence server {}",
                                        query.target, id.0
                                    ),
                                );
                            }
                        }
                    }
                    self.drain_out(Addr::Igps(0));
                }
                Ok(Message::Answer(answer)) => {
                    self.stats.border_answers_in += 1;
                    self.stats.peer_event(origin, 1);
                    // Only B's network answers for B: an answer about a
                    // number of another network claims to be that network.
                    if self.table.lookup(answer.target) != Some(origin) {
                        self.stats.alarms[ALARM_ANSWER_WRONG_NETWORK] += 1;
                        continue;
                    }
                    // The peer's rate limit for us: hold further queries
                    // to it back here until its retry-after.
                    // Only for a transaction of ours, and never longer than
                    // a deadline: an unsolicited answer cannot silence us.
                    if let Outcome::Overloaded { retry_after_ms } = answer.outcome {
                        if self.wa.pending_device(answer.txid).is_some() {
                            let cap = u32::from(self.shared.deadline_ms);
                            self.ogps.hold_off(now, origin, retry_after_ms.min(cap));
                        }
                    }
                    self.work.push_back((
                        Addr::Ogps,
                        Transmit {
                            to: Addr::Wa(answer.reply_node),
                            origin,
                            message: Message::Answer(answer),
                        },
                    ));
                }
                Ok(_) => self.stats.bad_border_frames += 1,
                Err(_) => {
                    self.stats.bad_border_frames += 1;
                    break;
                }
            }
        }
        self.run(now);
    }

    /// A message another worker handed over.
    pub(crate) fn on_cross(&mut self, now: u64, message: CrossMsg) {
        match message {
            CrossMsg::Role { from, transmit } => {
                self.route(now, from, transmit);
            }
            CrossMsg::Device {
                from,
                arrived_us,
                len,
                bytes,
            } => {
                let Some(body) = bytes.get(..usize::from(len)) else {
                    return;
                };
                let mut frame = [0u8; super::CROSS_MESSAGE_MAX + 2];
                frame[0] = presence_codec::FRAME_MAGIC;
                frame[1] = presence_codec::FRAME_VERSION;
                let Some(dst) = frame.get_mut(2..2 + body.len()) else {
                    return;
                };
                dst.copy_from_slice(body);
                let frame = &frame[..2 + body.len()];
                if let Some(Ok(message)) = FrameReader::new(frame, frame.len())
                    .ok()
                    .and_then(|mut r| r.next())
                {
                    self.device_local(now, arrived_us, from, &message);
                }
            }
        }
        self.run(now);
    }

    /// Moves what a role produced onto the work list.
    fn drain_out(&mut self, from: Addr) {
        let names = (!self.out.records.is_empty()).then(|| self.shared.names.load());
        for record in self.out.records.drain(..) {
            if let Some(names) = &names {
                // Every decision is journaled (duplicate suppression is
                // rebuilt from them); while the journal has failed nothing
                // is taken, and the presence servers charge nothing.
                let at = self.shared.unix_ms_at(record.at);
                let _ = self.journal.append(&record, at, names.name(record.origin));
            }
            if record.chargeable() {
                self.stats.charged += 1;
                if self.shared.trace == Some(record.watcher) {
                    self.shared.trace_step(
                        11,
                        format!(
                            "B's presence server raised a charge record for {} against {}",
                            record.watcher,
                            self.shared.network_name(record.origin)
                        ),
                    );
                }
            }
        }
        for transmit in self.out.transmits.drain(..) {
            self.work.push_back((from, transmit));
        }
    }

    /// Delivers queued work until none is left.
    fn run(&mut self, now: u64) {
        let mut steps = 0usize;
        while let Some((from, transmit)) = self.work.pop_front() {
            steps += 1;
            if steps > WORK_MAX {
                self.stats.dropped_loops += 1;
                self.work.clear();
                return;
            }
            self.route(now, from, transmit);
        }
    }

    fn route(&mut self, now: u64, from: Addr, transmit: Transmit) {
        let workers = self.shared.workers;
        match transmit.to {
            Addr::Device(m) => {
                if let Message::Answer(answer) = &transmit.message {
                    let sampled = answer.txid % LATENCY_SAMPLE_EVERY == 0;
                    if let Some(at) = sampled
                        .then(|| self.arrivals.remove(&(m, answer.txid)))
                        .flatten()
                    {
                        self.stats
                            .latency_sample(super::now_us().saturating_sub(at));
                    }
                    self.stats.count_outcome(&answer.outcome);
                    if self.shared.trace == Some(m) {
                        self.shared
                            .trace_step(13, format!("A's WA answers A: {:?}", answer.outcome));
                    }
                }
                match self.device_addrs.get(&m).copied() {
                    Some(addr) => self.frame_to_device(addr, &transmit.message),
                    None => self.stats.no_device_addr += 1,
                }
            }
            Addr::Wa(instance) => {
                let owner = usize::from(instance) % workers;
                if owner != self.index {
                    self.cross_or_drop(owner, from, transmit);
                    return;
                }
                self.wa.handle(now, from, &transmit.message, &mut self.out);
                self.drain_out(Addr::Wa(self.wa_instance()));
            }
            Addr::Ogps => {
                self.ogps
                    .handle(now, from, &transmit.message, &mut self.out);
                if let Message::Query(q) = &transmit.message {
                    if self.shared.trace == Some(q.watcher) {
                        for t in &self.out.transmits {
                            if let (Addr::Border { network, .. }, Message::Query(f)) =
                                (t.to, &t.message)
                            {
                                self.shared.trace_step(5, format!("A's OGPS looked {} up in the numbering table (version {}): network {}", q.target, f.route_version, self.shared.network_name(network)));
                            }
                        }
                    }
                }
                self.drain_out(Addr::Ogps);
            }
            Addr::Igps(_) => {
                self.igps.handle(
                    now,
                    Addr::Ogps,
                    transmit.origin,
                    &transmit.message,
                    &mut self.out,
                );
                self.drain_out(Addr::Igps(0));
            }
            Addr::Ps(id) => {
                let Some(subject) = subject(&transmit.message) else {
                    self.stats.bad_messages += 1;
                    return;
                };
                let owner = owner(subject, workers);
                if owner != self.index {
                    self.cross_or_drop(owner, from, transmit);
                    return;
                }
                let traced = matches!(&transmit.message, Message::Query(q) if self.shared.trace == Some(q.watcher));
                if traced {
                    self.shared.trace_step(
                        9,
                        format!("B's IGPS forwarded the query to presence server {}", id.0),
                    );
                }
                match self.ps.get_mut(&id) {
                    Some(ps) => {
                        ps.handle(now, from, transmit.origin, &transmit.message, &mut self.out);
                        if traced {
                            if let Message::Query(q) = &transmit.message {
                                self.traced_txid = Some(q.txid);
                            }
                            for t in &self.out.transmits {
                                if let Message::Answer(a) = &t.message {
                                    let verdict = match a.outcome {
                                        Outcome::Attached { .. } | Outcome::Detached { .. } => "A is on B's buddy list and B consents, so B's status is shown",
                                        _ => "not permitted (or unknown): the same answer either way",
                                    };
                                    self.shared.trace_step(
                                        10,
                                        format!(
                                            "presence server {}: {verdict}: {:?}",
                                            id.0, a.outcome
                                        ),
                                    );
                                }
                            }
                        }
                        self.drain_out(Addr::Ps(id));
                    }
                    None => {
                        // The HSS names a server holding nobody here: the
                        // subscriber is not provisioned.
                        self.stats.unknown_subscriber += 1;
                        if let Message::Query(q) = transmit.message {
                            let reply = crate::roles::reply_addr(
                                self.shared.network,
                                transmit.origin,
                                q.reply_node,
                            );
                            self.work.push_back((
                                Addr::Ps(id),
                                Transmit {
                                    to: reply,
                                    origin: transmit.origin,
                                    message: Message::Answer(Answer {
                                        txid: q.txid,
                                        reply_node: q.reply_node,
                                        target: q.target,
                                        outcome: Outcome::NotAvailable,
                                    }),
                                },
                            ));
                        }
                    }
                }
            }
            Addr::Border { network, .. } => {
                if let (Message::Query(q), Some(_)) = (&transmit.message, self.shared.trace) {
                    if self.shared.trace == Some(q.watcher) {
                        self.shared.trace_step(6, format!("the query leaves through A's border gateway for {}'s (TLS 1.3, both sides authenticated by certificate)", self.shared.network_name(network)));
                    }
                }
                self.frame_to_border(network, &transmit.message);
            }
            Addr::BorderReply { network, .. } => {
                // A presence server's answer (a decision, a duplicate of
                // one, or an unknown subscriber) and the IGPS's NotAvailable
                // for a number no presence server holds, alike: held until
                // the records before them are durable and a sync that
                // started after their frame closed has completed, so
                // neither the bytes nor the timing tell unknown from not
                // permitted.
                let held = match (from, &transmit.message) {
                    (Addr::Ps(_), Message::Answer(_)) => true,
                    (Addr::Igps(_), Message::Answer(a)) => a.outcome == Outcome::NotAvailable,
                    _ => false,
                };
                if held {
                    self.frame_to_held(network, &transmit.message);
                }
                if let Message::Answer(a) = &transmit.message {
                    if self.traced_txid.is_some() && self.traced_txid == Some(a.txid) {
                        self.traced_txid = None;
                        self.shared.trace_step(
                            12,
                            format!(
                                "B's status goes back through the border gateways to {}",
                                self.shared.network_name(network)
                            ),
                        );
                    }
                }
                if !held {
                    self.frame_to_border(network, &transmit.message);
                }
            }
            Addr::Provisioning => {}
        }
    }

    fn cross_or_drop(&mut self, owner: usize, from: Addr, transmit: Transmit) {
        if !self.push_cross(owner, CrossMsg::Role { from, transmit }) {
            self.stats.shed += 1;
        }
    }

    fn push_cross(&mut self, owner: usize, message: CrossMsg) -> bool {
        let Some(inbox) = self.shared.inboxes.get(owner) else {
            return false;
        };
        if inbox.push(message).is_err() {
            return false;
        }
        self.stats.cross += 1;
        if let Some(w) = self.wake.get_mut(owner) {
            *w = true;
        }
        true
    }

    fn take_buf(&mut self) -> Vec<u8> {
        self.free_bufs.pop().unwrap_or_default()
    }

    /// Returns a frame buffer for reuse.
    pub(crate) fn give_back(&mut self, mut buf: Vec<u8>) {
        if self.free_bufs.len() < 1024 {
            buf.clear();
            self.free_bufs.push(buf);
        }
    }

    fn frame_to_device(&mut self, to: SocketAddr, message: &Message<'_>) {
        let len = message.encoded_len();
        let full = self
            .device_frames
            .get(&to)
            .is_some_and(|f| f.bytes.len() + len > FRAME_LEN_DEFAULT_MAX);
        if full {
            if let Some(frame) = self.device_frames.remove(&to) {
                self.ready_device.push((to, frame.bytes));
            }
        }
        if !self.device_frames.contains_key(&to) {
            let mut bytes = self.take_buf();
            bytes.extend_from_slice(&[presence_codec::FRAME_MAGIC, presence_codec::FRAME_VERSION]);
            self.device_frames.insert(to, FrameBuf { bytes });
        }
        if let Some(frame) = self.device_frames.get_mut(&to) {
            if message.encode(&mut frame.bytes).is_err() {
                self.stats.bad_messages += 1;
            }
        }
    }

    fn frame_to_border(&mut self, network: NetworkId, message: &Message<'_>) {
        let max = self.shared.border_frame_max;
        if let Some(full) = append_framed(
            &mut self.border_frames,
            &mut self.free_bufs,
            max,
            network,
            message,
            &mut self.stats.bad_messages,
        ) {
            self.ready_border.push((network, full));
        }
    }

    fn frame_to_held(&mut self, network: NetworkId, message: &Message<'_>) {
        let max = self.shared.border_frame_max;
        if let Some(full) = append_framed(
            &mut self.held_frames,
            &mut self.free_bufs,
            max,
            network,
            message,
            &mut self.stats.bad_messages,
        ) {
            self.hold(network, full);
        }
    }

    fn hold(&mut self, network: NetworkId, bytes: Vec<u8>) {
        self.held_bytes += bytes.len();
        let ticket = self.journal.ticket();
        self.held.push_back(HeldFrame {
            upto: self.journal.appended_seq(),
            ticket,
            network,
            bytes,
        });
    }

    /// Whether answers are waiting for the journal.
    pub(crate) fn holding(&self) -> bool {
        !self.held.is_empty()
    }

    /// Ends the journal's turn (writes the records and asks for a sync),
    /// then moves the held answers whose records are durable to the ready
    /// list. A failed journal stops charging: held answers not yet durable
    /// are refused (`Error(ChargingUnavailable)`), as are their decisions
    /// in the duplicate window, and released. The presence servers are
    /// told the charging state.
    pub(crate) fn release_held(&mut self) {
        let mut held = std::mem::take(&mut self.held_frames);
        for (network, frame) in held.drain() {
            self.hold(network, frame.bytes);
        }
        self.held_frames = held;
        let mut state = self.journal.end_turn();
        if state == SyncState::Failed && self.journal.try_recover() {
            state = SyncState::Healthy;
        }
        // The ticket first: the syncer publishes records, then tickets.
        let synced = self.journal.synced_ticket();
        let durable = self.journal.durable_seq();
        while let Some(frame) = self.held.front() {
            // Healthy: every frame waits for a sync that started after it
            // closed, so an answer with no record of its own (a repeat, an
            // unknown subscriber) leaves no sooner than a fresh decision.
            if state == SyncState::Healthy && (frame.ticket > synced || frame.upto > durable) {
                break;
            }
            let Some(frame) = self.held.pop_front() else {
                break;
            };
            self.held_bytes -= frame.bytes.len();
            let bytes = if frame.upto > durable {
                self.refuse_undurable(frame.network, frame.bytes)
            } else {
                frame.bytes
            };
            self.ready_border.push((frame.network, bytes));
        }
        let charging = match state {
            SyncState::Failed => Charging::Unavailable,
            SyncState::Healthy if self.held_bytes > HELD_BYTES_MAX => Charging::Backlogged {
                retry_after_ms: BACKLOG_RETRY_MS,
            },
            SyncState::Healthy
                if matches!(self.charging, Charging::Backlogged { .. })
                    && self.held_bytes > HELD_BYTES_MAX / 2 =>
            {
                self.charging
            }
            SyncState::Healthy => Charging::Available,
        };
        if charging != self.charging {
            self.charging = charging;
            for ps in self.ps.values_mut() {
                ps.set_charging(charging);
            }
        }
    }

    /// Rewrites a held frame whose records may not be on disk: every answer
    /// that showed B's status becomes `Error(ChargingUnavailable)`.
    fn refuse_undurable(&mut self, network: NetworkId, bytes: Vec<u8>) -> Vec<u8> {
        let mut out = self.take_buf();
        out.extend_from_slice(&[presence_codec::FRAME_MAGIC, presence_codec::FRAME_VERSION]);
        if let Ok(reader) = FrameReader::new(&bytes, bytes.len()) {
            for message in reader.flatten() {
                let message = match message {
                    Message::Answer(mut answer) => {
                        let was = answer.outcome;
                        if crate::roles::shows_status(&was) {
                            for ps in self.ps.values_mut() {
                                if ps.refuse_undurable(network, answer.txid, &was) {
                                    break;
                                }
                            }
                            answer.outcome =
                                Outcome::Error(presence_codec::ErrorReason::ChargingUnavailable);
                            self.voided += 1;
                        }
                        Message::Answer(answer)
                    }
                    other => other,
                };
                if message.encode(&mut out).is_err() {
                    self.stats.bad_messages += 1;
                }
            }
        }
        self.give_back(bytes);
        out
    }

    /// Rebuilds the presence servers' duplicate windows from journaled
    /// decisions (those about subscribers this worker owns).
    pub(crate) fn rebuild_windows(&mut self, now: u64, entries: &[JournalEntry]) {
        let names = self.shared.names.load();
        let workers = self.shared.workers;
        let mut by_ps: AHashMap<crate::roles::PsId, Vec<DecisionRecord>> = AHashMap::new();
        for e in entries {
            if owner(e.target, workers) != self.index {
                continue;
            }
            let Some(origin) = names.id(&e.origin) else {
                continue;
            };
            // The server that holds the subscriber now (the HSS may have
            // moved it since the decision).
            let ps = self.hss.lookup(e.target).unwrap_or(e.ps);
            by_ps.entry(ps).or_default().push(DecisionRecord {
                origin,
                txid: e.txid,
                watcher: e.watcher,
                target: e.target,
                reply_node: e.reply_node,
                at: e.at_unix_ms.saturating_sub(self.shared.unix_ms_at(0)),
                ps,
                outcome: e.outcome,
            });
        }
        for (id, records) in by_ps {
            if let Some(ps) = self.ps.get_mut(&id) {
                ps.restart(now, &records);
            }
        }
    }

    /// Closes every frame being filled: they join the ready lists.
    pub(crate) fn close_frames(&mut self) {
        for (to, frame) in self.device_frames.drain() {
            self.ready_device.push((to, frame.bytes));
        }
        for (network, frame) in self.border_frames.drain() {
            self.ready_border.push((network, frame.bytes));
        }
    }

    /// A frame the border refused: its queries are answered `Overloaded`.
    pub(crate) fn shed_border_frame(&mut self, now: u64, frame: &[u8]) {
        let shed = shed_refused_frame(frame, self.shared.network, SHED_RETRY_MS, &mut self.out);
        self.stats.border_shed_queries += u64::from(shed.queries_answered);
        self.stats.border_shed_other += u64::from(shed.dropped);
        self.drain_out(Addr::Ogps);
        self.run(now);
    }
}
