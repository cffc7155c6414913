//! One network's gateway on one worker, sans-IO: the [`Node`].
//!
//! A node composes the roles its worker owns — its WA instance (the
//! worker's index is the WA's `reply_node`), the OGPS, the IGPS, a reader of
//! the HSS, its slice of every presence server, the answers held for the
//! journal, the rate limits — and makes every presence decision of the flow
//! (`docs/architecture.md` indexes the thirteen steps to their functions).
//! It opens no socket, reads no clock and spawns nothing: the appliance's
//! runtime and the simulation drive the same code.
//!
//! **Ownership.** Each subscriber belongs to one worker:
//! [`presence_codec::shard::owner`] of its MSISDN. A node keeps the state of
//! the subscribers it owns (their credit and pending queries at the WA,
//! their records at the presence servers). Traffic is steered to the owner
//! before it arrives (a reuseport program on the device port, border links
//! that end at the owning worker); what still arrives at the wrong node is
//! handed over ([`CrossMessage`]) and counted ([`CrossKind`]).
//!
//! **Inputs**, each with `now` in microseconds on the caller's monotonic
//! clock (never going back): [`Node::handle_datagram`] (a device),
//! [`Node::handle_border_frame`] (a peer network, authenticated by the
//! border), [`Node::handle_cross`] (another worker), [`Node::handle_durable`]
//! (the journal), [`Node::handle_timeout`], and the refusals of the
//! runtime's queues ([`Node::handle_border_refused`],
//! [`Node::handle_cross_refused`]).
//!
//! **Outputs**, polled after inputs, in this order: [`Node::poll_transmit`]
//! (device datagrams and border frames; give each buffer back with
//! [`Node::recycle`]), [`Node::poll_cross`], [`Node::poll_journal`] (records
//! and the sync they need, once per turn), then [`Node::poll_timeout`].
//! Presence-server answers to other networks are held, as typed values,
//! until the journal reports their records durable; they are encoded once,
//! when released.

mod border;
mod counters;
mod cross;
mod device;
mod frames;
mod held;
mod provision;
mod route;
mod trace;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;

use ahash::{AHashMap, AHashSet};
use presence_codec::{shard, Msisdn, FRAME_LEN_ABSOLUTE_MAX, FRAME_LEN_DEFAULT_MAX};

use crate::journal::JournalSink;
use crate::roles::{
    AuthPolicy, DecisionRecord, DeviceAuthPolicy, Hss, HssReader, Igps, Millis, Ogps, OgpsCounters,
    Outbox, PresenceServer, PsId, Rate, SourceGuard, Transmit, WaConfig, WatcherApp,
    PS_PER_NETWORK_MAX,
};
use crate::table::{NetworkId, NumberingTable, TableReader};

pub use self::counters::{
    Alarm, Counts, CrossKind, DropReason, NodeCounters, PeerEvent, RoleCounters,
};
pub use self::cross::{CrossMessage, CROSS_MESSAGE_MAX};
pub use self::held::HELD_ANSWERS_MAX;
pub use self::provision::{provisioning_changes, Provisioned, SubscriberChange, Subscribers};
pub use self::trace::{TraceSink, Tracer};

use self::frames::Framer;
use self::held::Held;
use self::trace::Trace;

/// Largest frame a node sends to a peer network's border gateway: 16 KiB
/// batches hundreds of queries and keeps latency low (the stream framing
/// allows 65535).
pub const BORDER_FRAME_MAX: usize = 16 * 1024;
/// Retry-after told when a request is shed (a full inbox, a refused frame).
pub const SHED_RETRY_MS: u32 = 200;
/// Most role-to-role messages one input may cause (a guard against loops).
const WORK_MAX: usize = 1 << 16;
/// One device request in this many has its latency measured (by its
/// request id, so the answer finds its arrival time).
pub const LATENCY_SAMPLE_EVERY: u64 = 16;

/// Rate limits (`[limits]`) for the whole appliance; each node takes its
/// share.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeLimits {
    /// Every peer network's rate at the IGPS, unless listed in `peers`.
    pub peer_default: Option<Rate>,
    /// Peer networks with their own rate.
    pub peers: Vec<(NetworkId, Rate)>,
    /// Each watcher's rate at the WA (a watcher is owned by one node, so
    /// not shared).
    pub watcher: Option<Rate>,
    /// How failed credential checks of one watcher are limited (a watcher
    /// is owned by one node, so not shared).
    pub auth: AuthPolicy,
    /// Failed credential checks per source network (IPv4 /24, IPv6 /56)
    /// for the whole appliance (`None`: unlimited); each node takes its
    /// share.
    pub auth_failures_per_source: Option<Rate>,
}

/// How a node is set up.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// This network.
    pub network: NetworkId,
    /// This node's worker index: its WA's instance, the owner of the
    /// subscribers [`shard::owner`] gives it.
    pub worker: u16,
    /// Workers of this network's gateway.
    pub workers: u16,
    /// WA deadline for a query, in ms.
    pub deadline_ms: u16,
    /// Credit one query costs.
    pub query_cost: u64,
    /// Pending transactions of this node's WA.
    pub pending_max: usize,
    /// Wall-clock seconds at start (the WA numbers its transactions ahead
    /// of its previous life from it).
    pub boot_time_s: u64,
    /// Duplicate-window slots per peer WA instance at each presence-server
    /// slice.
    pub window_slots: usize,
    /// Rate limits.
    pub limits: NodeLimits,
    /// Subscriptions each presence-server slice keeps, and how often it
    /// notifies.
    pub watching: crate::roles::WatchLimits,
    /// Largest frame sent to a peer's border gateway.
    pub border_frame_max: usize,
    /// Wall-clock milliseconds at `now` = 0: charge records carry wall time,
    /// and devices' counters are compared with it.
    pub unix_ms_at_zero: u64,
    /// Devices' counters below this are refused (Unix milliseconds): they
    /// may have been taken before a restart (the runtime's `alive` stamp).
    /// 0: no floor (a first start).
    pub device_floor_unix_ms: u64,
    /// After a restart, the stream marks of the last window, shared by
    /// the node's presence servers (set by [`Node::rebuild_windows`]).
    pub restart_marks: Option<std::sync::Arc<crate::roles::RestartMarks>>,
    /// How far behind this node's wall clock a device's counter may be.
    pub device_clock_skew_ms: u64,
    /// How far ahead of it.
    pub device_clock_ahead_ms: u64,
    /// Accept devices' version 1 credentials in clear (**insecure**).
    pub insecure_credentials: bool,
    /// The number of the first record this node journals (the journal's
    /// numbering continues across restarts).
    pub first_record_seq: u64,
    /// Peer networks with a border relationship.
    pub peers: Vec<NetworkId>,
    /// Keep what the simulation's checkers need to see inside
    /// ([`Node::take_observations`]); off in the appliance.
    pub observe: bool,
    /// Trace one watcher's queries step by step.
    pub tracer: Option<Tracer>,
}

impl NodeConfig {
    /// Defaults for worker `worker` of `workers` of `network`: 1.5 s
    /// deadline, one unit per query, 65,536 pending transactions, 2^16
    /// window slots, no limits, no peers.
    pub fn new(network: NetworkId, worker: u16, workers: u16) -> NodeConfig {
        NodeConfig {
            network,
            worker,
            workers: workers.max(1),
            deadline_ms: 1500,
            query_cost: 1,
            pending_max: 65_536,
            boot_time_s: 0,
            window_slots: 1 << 16,
            limits: NodeLimits::default(),
            watching: crate::roles::WatchLimits::default(),
            border_frame_max: BORDER_FRAME_MAX,
            unix_ms_at_zero: 0,
            device_floor_unix_ms: 0,
            restart_marks: None,
            device_clock_skew_ms: DeviceAuthPolicy::default().clock_skew_ms,
            device_clock_ahead_ms: DeviceAuthPolicy::default().clock_ahead_ms,
            insecure_credentials: false,
            first_record_seq: 1,
            peers: Vec::new(),
            observe: false,
            tracer: None,
        }
    }

    /// How devices authenticate at this node's WA and presence servers.
    pub fn device_auth(&self) -> DeviceAuthPolicy {
        DeviceAuthPolicy {
            insecure_credentials: self.insecure_credentials,
            clock_skew_ms: self.device_clock_skew_ms,
            clock_ahead_ms: self.device_clock_ahead_ms,
            unix_ms_at_zero: self.unix_ms_at_zero,
            floor_unix_ms: self.device_floor_unix_ms,
        }
    }

    /// How long a presence server remembers a decision: longer than any
    /// deadline, so a retransmission always finds it.
    pub fn window_ms(&self) -> Millis {
        u64::from(self.deadline_ms) + 200
    }
}

/// What a node lets an observer see ([`NodeConfig::observe`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Observation {
    /// The WA accepted a device's request as transaction `txid`.
    Accepted {
        /// A.
        watcher: Msisdn,
        /// The device's request id.
        request: u64,
        /// The WA's transaction id.
        txid: u64,
    },
    /// A presence server decided a query afresh (not from its window).
    Decided(DecisionRecord),
}

/// A frame's way out through the border: the peer network, and the worker
/// of its gateway the frame is for (its border gateway sends it over a link
/// that ends at that worker when it has one).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BorderDest {
    /// The peer network.
    pub network: NetworkId,
    /// Its worker owning every message of the frame, if known.
    pub worker: Option<u16>,
}

/// Where an outgoing frame goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Destination {
    /// A device's address (one datagram).
    Device(SocketAddr),
    /// A peer network through the border gateway.
    Border(BorderDest),
}

/// One frame to send.
#[derive(Debug)]
pub struct Outgoing {
    /// Where.
    pub to: Destination,
    /// The frame's bytes (give the buffer back with [`Node::recycle`]).
    pub frame: Vec<u8>,
}

/// The numbering table's answer for a query's target, looked up with the
/// rest of its frame: for the WA (step 3) and the OGPS (step 5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Route {
    pub(crate) network: Option<NetworkId>,
    pub(crate) version: u32,
}

/// A role's message waiting to be routed, with what was looked up for it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Work {
    pub(crate) from: Addr,
    pub(crate) transmit: Transmit,
    pub(crate) route: Option<Route>,
    /// For a presence server's answer to a fresh decision: its record's
    /// number in the journal.
    pub(crate) record: Option<u64>,
}

use crate::roles::Addr;

/// One network's gateway on one worker (see the module docs).
#[derive(Debug)]
pub struct Node {
    config: NodeConfig,
    table: Arc<NumberingTable>,
    table_reader: TableReader,
    hss: HssReader,
    wa: WatcherApp,
    ogps: Ogps,
    /// Counters of OGPS instances replaced on reload (metrics stay
    /// cumulative).
    ogps_retired: OgpsCounters,
    igps: Igps,
    /// This node's slice of each presence server, by id.
    ps: Vec<Option<PresenceServer>>,
    /// The slices that have held a subscription, the only ones with watch
    /// timers or owed notifications (a subscription is taken only when a
    /// Subscribe reaches a slice, `deliver_to_presence_server`; none moves
    /// in with an imported subscriber). At most one entry per slice.
    watching: Vec<PsId>,
    /// Role output scratch, and the queue of messages between roles.
    out: Outbox,
    work: VecDeque<Work>,
    /// The current input's time.
    now_us: u64,
    now_ms: Millis,
    /// Where each owned watcher's device was last heard from.
    device_addrs: AHashMap<Msisdn, SocketAddr>,
    /// Failure budgets of device source networks (`None`: unlimited).
    source_guard: Option<SourceGuard>,
    /// Arrival time (µs) of sampled device requests, by (watcher, device
    /// request id): the latency histogram's start.
    arrivals: AHashMap<(Msisdn, u64), u64>,
    device_frames: Framer<SocketAddr>,
    border_frames: Framer<BorderDest>,
    cross_out: VecDeque<(u16, CrossMessage)>,
    held: Held,
    /// Peer networks' worker counts, as their border links told them.
    peer_workers: AHashMap<NetworkId, u16>,
    /// Subscribers provisioned on this node (for removal on reload).
    owned: AHashSet<Msisdn>,
    /// Subscribers removed, with when their device address is forgotten.
    departed: VecDeque<(Msisdn, Millis)>,
    /// Kept for observers ([`NodeConfig::observe`]).
    observations: Vec<Observation>,
    trace: Trace,
    /// The traced query's transaction at this node's presence server.
    traced_txid: Option<u64>,
    counters: NodeCounters,
    latency: Option<hdrhistogram::Histogram<u64>>,
}

impl Node {
    /// A node of `config.network` reading `table` (the numbering table) and
    /// `hss`, with no subscribers yet ([`Node::provision`]).
    pub fn new(config: NodeConfig, table: &Arc<NumberingTable>, hss: &Arc<Hss>) -> Node {
        let mut wa_config = WaConfig::new(config.network);
        wa_config.instance = config.worker;
        wa_config.deadline_ms = config.deadline_ms;
        wa_config.query_cost = config.query_cost;
        wa_config.pending_max = config.pending_max;
        wa_config.boot_time_s = config.boot_time_s;
        wa_config.watcher_rate = config.limits.watcher;
        wa_config.auth = config.limits.auth;
        wa_config.device_auth = config.device_auth();
        let wa = WatcherApp::new(wa_config, Default::default());
        let ogps = Ogps::new(config.network, table, config.peers.iter().copied());
        let mut igps = Igps::new(config.network, hss, table);
        let workers = usize::from(config.workers);
        let overrides: Vec<(NetworkId, Rate)> = config
            .limits
            .peers
            .iter()
            .map(|(n, r)| (*n, r.share(workers)))
            .collect();
        igps.set_peer_limits(
            config.limits.peer_default.map(|r| r.share(workers)),
            &overrides,
        );
        let held = Held::new(config.first_record_seq);
        let border_frame_max = config.border_frame_max;
        Node {
            table: table.clone(),
            table_reader: table.reader(),
            hss: hss.reader(),
            wa,
            ogps,
            ogps_retired: OgpsCounters::default(),
            igps,
            ps: (0..PS_PER_NETWORK_MAX).map(|_| None).collect(),
            watching: Vec::new(),
            out: Outbox::with_capacity(256, 256),
            work: VecDeque::with_capacity(256),
            now_us: 0,
            now_ms: 0,
            device_addrs: AHashMap::new(),
            source_guard: config
                .limits
                .auth_failures_per_source
                .map(|rate| SourceGuard::new(rate.share(usize::from(config.workers)))),
            arrivals: AHashMap::new(),
            device_frames: Framer::new(FRAME_LEN_DEFAULT_MAX),
            border_frames: Framer::new(border_frame_max),
            cross_out: VecDeque::new(),
            held,
            peer_workers: AHashMap::new(),
            owned: AHashSet::new(),
            departed: VecDeque::new(),
            observations: Vec::new(),
            trace: Trace(config.tracer.clone()),
            traced_txid: None,
            counters: NodeCounters::default(),
            latency: hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 3).ok(),
            config,
        }
    }

    /// The node's configuration.
    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// Whether this node owns `msisdn`'s state.
    #[inline]
    pub fn owns(&self, msisdn: Msisdn) -> bool {
        shard::owner(msisdn, self.config.workers) == self.config.worker
    }

    /// The worker that owns `msisdn`.
    #[inline]
    fn owner(&self, msisdn: Msisdn) -> u16 {
        shard::owner(msisdn, self.config.workers)
    }

    /// Starts an input at `now_us` (never before the previous one's).
    fn begin(&mut self, now_us: u64) {
        self.now_us = self.now_us.max(now_us);
        self.now_ms = self.now_us / 1000;
    }

    /// The WA's deadlines and retransmissions due by `now_us`, and the
    /// presence servers' subscription timers.
    pub fn handle_timeout(&mut self, now_us: u64) {
        self.begin(now_us);
        self.forget_departed();
        if self.wa.poll_timeout().is_some_and(|at| at <= self.now_ms) {
            self.wa.handle_timeout(self.now_ms, &mut self.out);
            self.drain_out(Addr::Wa(self.config.worker), None);
            self.run();
        }
        // Subscriptions: coalesced notifications whose interval opened,
        // expiries, and ends decided by provisioning.
        for i in 0..self.watching.len() {
            let now = self.now_ms;
            let Some(&id) = self.watching.get(i) else {
                break;
            };
            let Some(slice) = self.ps.get_mut(usize::from(id.0)).and_then(Option::as_mut) else {
                continue;
            };
            if slice.next_watch_timeout().is_some_and(|at| at <= now) {
                slice.poll_watches(now, &mut self.out);
                self.drain_out(Addr::Ps(id), None);
                self.run();
            }
        }
    }

    /// When [`Node::handle_timeout`] is next needed, in µs. Called every
    /// loop turn: it looks only at the slices that have held a
    /// subscription (a slice is about 1.2 KB, and there are 256 slots).
    pub fn poll_timeout(&self) -> Option<u64> {
        let watches = self
            .watching
            .iter()
            .filter_map(|id| self.ps.get(usize::from(id.0))?.as_ref())
            .filter_map(PresenceServer::next_watch_timeout)
            .min();
        match (self.wa.poll_timeout(), watches) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
        .map(|ms| ms.saturating_mul(1000))
    }

    /// The next frame to send. Frames stay open across inputs until the
    /// caller polls: once the closed ones are taken, the open ones close,
    /// so everything the inputs since the last poll produced for one
    /// destination leaves in as few frames as fit (a runtime that polls
    /// after a batch of datagrams sends one border frame per peer worker,
    /// not one per datagram).
    pub fn poll_transmit(&mut self) -> Option<Outgoing> {
        if let Some((to, frame)) = self.device_frames.pop_ready() {
            return Some(Outgoing {
                to: Destination::Device(to),
                frame,
            });
        }
        let (to, frame) = self.border_frames.pop_ready()?;
        self.counters.border_frames_out += 1;
        self.counters.peer(to.network, PeerEvent::FramesOut);
        Some(Outgoing {
            to: Destination::Border(to),
            frame,
        })
    }

    /// Whether a frame waits to be sent, closed or open.
    pub fn has_transmit(&self) -> bool {
        self.device_frames.has_any() || self.border_frames.has_any()
    }

    /// Takes a sent frame's buffer back for reuse, into the pool of the
    /// frames its size was made for (a device frame's buffer in the border
    /// pool would have to grow, and the border pool's overflow freed: both
    /// are allocator work on every frame).
    pub fn recycle(&mut self, frame: Vec<u8>) {
        if frame.capacity() >= self.config.border_frame_max.min(FRAME_LEN_ABSOLUTE_MAX) {
            self.border_frames.recycle(frame);
        } else {
            self.device_frames.recycle(frame);
        }
    }

    /// The next message for another worker: `(worker, message)`.
    pub fn poll_cross(&mut self) -> Option<(u16, CrossMessage)> {
        self.cross_out.pop_front()
    }

    /// Hands this turn's decision records to the journal, numbered, and
    /// asks for the sync the held answers wait for. Call once per turn,
    /// after the inputs.
    pub fn poll_journal(&mut self, sink: &mut impl JournalSink) {
        let names = self.table.snapshot();
        self.held.flush(sink, names.names());
    }

    /// Whether answers wait for the journal (the caller should not sleep
    /// long: the journal's syncer wakes it).
    pub fn holding(&self) -> bool {
        self.held.holding()
    }

    /// Pending transactions of this node's WA.
    pub fn pending(&self) -> usize {
        self.wa.pending_len()
    }

    /// Subscribers held by this node's presence-server slices.
    pub fn subscriber_count(&self) -> usize {
        self.ps
            .iter()
            .flatten()
            .map(PresenceServer::subscriber_count)
            .sum()
    }

    /// What the node counted.
    pub fn counters(&self) -> &NodeCounters {
        &self.counters
    }

    /// What the roles decided (the IGPS's spoofing alarm is also counted
    /// as [`Alarm::WatcherNotOfOrigin`] in [`Node::counters`]).
    pub fn role_counters(&self) -> RoleCounters {
        let mut ogps = self.ogps.counters();
        ogps.add(&self.ogps_retired);
        let mut roles = RoleCounters {
            wa: self.wa.counters(),
            ogps,
            igps: self.igps.counters(),
            ..RoleCounters::default()
        };
        for slice in self.ps.iter().flatten() {
            roles.ps.add(&slice.counters());
        }
        roles
    }

    /// Takes the latency samples gathered since the last call (µs, device
    /// request to answer, one request in [`LATENCY_SAMPLE_EVERY`]).
    pub fn take_latency(&mut self, into: &mut hdrhistogram::Histogram<u64>) {
        if let Some(local) = self.latency.as_mut() {
            let _ = into.add(&*local);
            local.reset();
        }
    }

    /// Takes what was kept for observers ([`NodeConfig::observe`]).
    pub fn take_observations(&mut self) -> Vec<Observation> {
        std::mem::take(&mut self.observations)
    }

    /// A's remaining credit, if `watcher` is this node's.
    pub fn credit(&self, watcher: Msisdn) -> Option<u64> {
        self.wa.credit(watcher)
    }

    /// A peer network's gateway said (on a border link) it runs `workers`
    /// workers: queries to it go to the link ending at their target's
    /// owner.
    pub fn set_peer_workers(&mut self, network: NetworkId, workers: u16) {
        if workers > 0 {
            self.peer_workers.insert(network, workers);
        }
    }

    /// Replaces the peer networks (a reload).
    pub fn set_peers(&mut self, peers: &[NetworkId]) {
        let old = std::mem::replace(
            &mut self.ogps,
            Ogps::new(self.config.network, &self.table, peers.iter().copied()),
        )
        .counters();
        self.ogps_retired.add(&old);
        self.config.peers = peers.to_vec();
        self.peer_workers.retain(|n, _| peers.contains(n));
    }

    /// The slice of presence server `id` in `slices`, made on first use: a
    /// server the HSS names that holds nobody here still decides
    /// (NotAvailable) and records like any other.
    fn slice<'a>(
        slices: &'a mut [Option<PresenceServer>],
        config: &NodeConfig,
        charging: crate::roles::Charging,
        id: PsId,
    ) -> Option<&'a mut PresenceServer> {
        let slot = slices.get_mut(usize::from(id.0))?;
        Some(slot.get_or_insert_with(|| {
            let mut ps =
                PresenceServer::new(id, config.network, config.window_ms(), config.window_slots);
            ps.set_charging(charging);
            ps.set_watch_limits(config.watching);
            ps.set_auth_policy(config.limits.auth);
            ps.set_device_auth(config.device_auth());
            if let Some(marks) = &config.restart_marks {
                ps.set_restart_marks(marks.clone());
            }
            ps
        }))
    }

    /// The name of a network, for traces.
    fn network_name(&self, id: NetworkId) -> String {
        self.table.snapshot().network_name(id).to_string()
    }
}
