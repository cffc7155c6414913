//! A border gateway's links on one worker thread: its share of inbound
//! connections (the listener is bound with `SO_REUSEPORT`, so the kernel
//! spreads peers' connections over the workers), its dialed connections to
//! each peer, reconnection with backoff and jitter, keepalives, dead-peer
//! detection, and rotation to new TLS material.
//!
//! Shard-aware links. The endpoint is worker `shard.worker` of
//! `shard.workers` of its gateway, and every link starts with each end's
//! hello (`docs/wire-format.md` §6.1), so both ends know which worker is at
//! the other. Invariants:
//! - Before a peer's worker count *n* is known, the endpoint dials that peer
//!   once, as an unsharded gateway would. Once any link's hello tells *n*
//!   ([`BgEndpoint::peer_workers`]), it keeps one dialed link per peer worker
//!   *k* below `min(n, MAX_PEER_WORKERS)`, dialed from a local port *p* in
//!   [`AIMED_PORTS`] with `p % n == k` (the peer's listener steers a
//!   connection to worker `source_port % n`). A link dialed for *k* that
//!   reaches another worker is kept (it serves the worker it reached;
//!   `dials_off_worker` counts it), and *k* is not dialed again until it
//!   closes. Each such dial target has its own backoff and jitter, and
//!   reload replaces every one of them.
//! - [`BgEndpoint::send`] with `Some(k)` queues on an established,
//!   non-draining link whose peer hello says worker *k* (our dialed link of
//!   the newest generation first); with none, on the peer's route as for
//!   `None` (any link), counted in `sends_off_worker`. The per-worker table
//!   is rebuilt when links come and go, never per frame.
//! - The border never reads presence messages: which peer worker a frame is
//!   for is the caller's to say.
//!
//! The endpoint registers its sockets on the worker's `mio` registry under
//! tokens `token_base ..= token_base + 1 + max_links`, and is driven by the
//! worker: [`BgEndpoint::handle_event`] for readiness, [`BgEndpoint::send`] to
//! queue frames, [`BgEndpoint::flush`] once per loop turn to write them
//! (one batch of syscalls per link per turn, not one per frame), and
//! [`BgEndpoint::tick`] for timers. Nothing here blocks, and nothing on the
//! per-frame path allocates or locks.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::sync::Arc;

use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};
use presence_codec::LinkHello;
use socket2::{Domain, Protocol, Socket, Type};

use crate::counters::BgCounters;
use crate::identity::{NetworkName, PeerIndex};
use crate::link::{CloseReason, Deliver, Direction, Link, LinkError, LinkSettings, Millis};
use crate::tls::BgTls;

/// Endpoint limits beyond the per-link ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndpointSettings {
    /// Per-link limits and timers.
    pub link: LinkSettings,
    /// Most links (inbound and outbound) this worker holds. A slot is kept
    /// for each link we should have dialed and have not (at most half the
    /// slots); unauthenticated inbound connections may hold at most a
    /// quarter of the slots.
    pub max_links: usize,
    /// First reconnect delay; doubles per failure.
    pub backoff_min_ms: Millis,
    /// Reconnect delay cap.
    pub backoff_max_ms: Millis,
}

impl Default for EndpointSettings {
    fn default() -> EndpointSettings {
        EndpointSettings {
            link: LinkSettings::default(),
            max_links: 256,
            backoff_min_ms: 100,
            backoff_max_ms: 10_000,
        }
    }
}

/// Why a frame was not queued. Upstream turns both into an overloaded (or
/// not-available) outcome for the query; nothing is queued partly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The peer is not in the trust list.
    #[error("unknown peer")]
    UnknownPeer,
    /// No link to the peer is up (connecting, or the peer is down).
    #[error("no link to the peer is up")]
    NoLink,
    /// The link's send queue is full.
    #[error("send queue full")]
    Overloaded,
    /// The frame is shorter than 4 bytes or longer than the link's maximum
    /// (§6): the peer would have to close the link over it.
    #[error("frame length {0} outside the stream limits")]
    InvalidFrame(usize),
}

/// Worker 0 of 1: the identity of an endpoint whose gateway is not sharded.
pub const SOLE_WORKER: LinkHello = LinkHello {
    worker: 0,
    workers: 1,
};

/// Most workers of one peer that an endpoint dials a link to, and routes
/// frames to by worker; a frame for a worker beyond goes over any link.
pub const MAX_PEER_WORKERS: u16 = 64;

/// Local ports a link aimed at one peer worker is dialed from (Linux's
/// default ephemeral range).
pub const AIMED_PORTS: RangeInclusive<u16> = 32_768..=60_999;

/// Ports tried, each chosen at random, before an aimed dial gives up.
const AIMED_PORT_TRIES: usize = 8;

/// Binds a TCP listener with `SO_REUSEADDR` and, when `reuse_port`,
/// `SO_REUSEPORT`, so every worker can bind the same address.
pub fn bind_listener(addr: SocketAddr, reuse_port: bool) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

struct Slot {
    link: Link,
    socket: TcpStream,
    peer_addr: Option<SocketAddr>,
    /// Counted in `links_up` (so closing uncounts it exactly once).
    counted_up: bool,
    /// The peer worker a dialed link was aimed at (its source port's residue
    /// modulo the peer's worker count), when that count was known.
    aimed_at: Option<u16>,
}

/// One link we keep dialed to a peer: before the peer's worker count is
/// known, the only one; after, the one for peer worker `k` (its index).
#[derive(Clone, Copy, Debug)]
struct DialTarget {
    /// The slot of the dialed link serving this target, if one exists.
    current: Option<usize>,
    /// When to dial next, if no current link.
    next_dial: Millis,
    backoff: Millis,
}

impl DialTarget {
    fn due(now: Millis, backoff: Millis) -> DialTarget {
        DialTarget {
            current: None,
            next_dial: now,
            backoff,
        }
    }
}

/// Dial state for one peer network, kept by name across reloads.
#[derive(Debug)]
struct Dialer {
    network: NetworkName,
    addr: Option<SocketAddr>,
    /// The peer's worker count, from the hello that last changed it.
    workers: Option<u16>,
    /// One target until `workers` is known, then one per peer worker below
    /// `min(workers, MAX_PEER_WORKERS)`.
    targets: Vec<DialTarget>,
    /// A link dialed before `workers` was known (learnt from another link)
    /// and not yet established: it is placed by the hello it brings, and no
    /// other dial to this peer starts before, so that two links do not go
    /// to one worker.
    blind: Option<usize>,
}

impl Dialer {
    fn new(network: NetworkName, addr: Option<SocketAddr>, now: Millis, backoff: Millis) -> Dialer {
        Dialer {
            network,
            addr,
            workers: None,
            targets: vec![DialTarget::due(now, backoff)],
            blind: None,
        }
    }

    /// The target `index` serves.
    fn target_of(&self, index: usize) -> Option<usize> {
        self.targets.iter().position(|t| t.current == Some(index))
    }

    /// A target without a link: `preferred` if it is one, else the first.
    fn free_target(&self, preferred: Option<u16>) -> Option<usize> {
        preferred
            .map(usize::from)
            .filter(|&k| self.targets.get(k).is_some_and(|t| t.current.is_none()))
            .or_else(|| self.targets.iter().position(|t| t.current.is_none()))
    }

    /// Whether `index` is one of this dialer's links (a target's or the
    /// blind one).
    fn holds(&self, index: usize) -> bool {
        self.blind == Some(index) || self.target_of(index).is_some()
    }
}

/// Where [`BgEndpoint::send`] puts frames for one peer.
#[derive(Debug, Default)]
struct Route {
    /// Any worker: an established, non-draining link (our dialed link of the
    /// newest generation first), or while the peer's only links drain, one
    /// of those.
    any: Option<usize>,
    /// Per peer worker below `min(workers, MAX_PEER_WORKERS)`: an
    /// established, non-draining link whose peer hello names that worker.
    by_worker: Vec<Option<usize>>,
}

/// One link, as [`BgEndpoint::links`] shows it (for metrics and tests).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkView {
    /// The authenticated peer, once established.
    pub peer: Option<PeerIndex>,
    /// Who dialed.
    pub direction: Direction,
    /// Established (the handshake finished and the peer accepted us).
    pub established: bool,
    /// Takes no new frames.
    pub draining: bool,
    /// The TLS generation it was made with.
    pub generation: u64,
    /// The peer's end, from its hello.
    pub peer_shard: Option<LinkHello>,
    /// For a dialed link: the peer worker it was aimed at, if the peer's
    /// worker count was known when it was dialed.
    pub aimed_at: Option<u16>,
    /// Our socket's address.
    pub local_addr: Option<SocketAddr>,
    /// The peer's socket address.
    pub peer_addr: Option<SocketAddr>,
}

/// What a worker's endpoint is made from.
#[derive(Debug)]
pub struct EndpointSetup {
    /// The TLS generation to start with.
    pub tls: Arc<BgTls>,
    /// Limits and timers.
    pub settings: EndpointSettings,
    /// This worker's listener (bound with [`bind_listener`]), if it accepts.
    pub listener: Option<std::net::TcpListener>,
    /// Peers to dial, by name (peers without an address are only accepted from).
    pub peers: Vec<(NetworkName, SocketAddr)>,
    /// First of the tokens the endpoint registers ([`BgEndpoint::token_count`]).
    pub token_base: usize,
    /// Counters shared by the gateway's workers.
    pub counters: Arc<BgCounters>,
    /// Which worker of its gateway this endpoint is, of how many: the hello
    /// every one of its links starts with ([`SOLE_WORKER`] when the gateway
    /// is not sharded).
    pub shard: LinkHello,
}

/// One worker's share of a border gateway.
pub struct BgEndpoint {
    tls: Arc<BgTls>,
    settings: EndpointSettings,
    shard: LinkHello,
    listener: Option<TcpListener>,
    slots: Vec<Option<Slot>>,
    /// Indexed by the current generation's [`PeerIndex`].
    dialers: Vec<Dialer>,
    /// Per peer (as `dialers`): the slots `send` uses.
    routes: Vec<Route>,
    /// Slots with frames queued since the last flush (each at most once:
    /// `dirty_mark`; a mark outlives its link, so a reused slot is not
    /// listed twice).
    dirty: Vec<usize>,
    dirty_mark: Vec<bool>,
    /// Slots whose read budget ran out: edge-triggered readiness will not
    /// report them again, so [`BgEndpoint::poll_ready`] does.
    ready: Vec<usize>,
    ready_mark: Vec<bool>,
    /// Stopping: no dialing, links closing.
    shutting_down: bool,
    token_base: usize,
    rng: u64,
    counters: Arc<BgCounters>,
}

impl std::fmt::Debug for BgEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BgEndpoint")
            .field("network", self.tls.own_network())
            .field("shard", &self.shard)
            .field("generation", &self.tls.generation())
            .field("links", &self.slots.iter().filter(|s| s.is_some()).count())
            .finish()
    }
}

impl BgEndpoint {
    /// An endpoint as `setup` says, registered on `registry`. Refused
    /// (`InvalidInput`) when `setup.shard` is not a worker of its count.
    pub fn new(setup: EndpointSetup, registry: &Registry, now: Millis) -> io::Result<BgEndpoint> {
        let EndpointSetup {
            tls,
            settings,
            listener,
            peers,
            token_base,
            counters,
            shard,
        } = setup;
        if shard.worker >= shard.workers {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "border shard: worker {} is not below the worker count {}",
                    shard.worker, shard.workers
                ),
            ));
        }
        let peer_addrs = &peers[..];
        let mut listener = match listener {
            Some(l) => {
                l.set_nonblocking(true)?;
                Some(TcpListener::from_std(l))
            }
            None => None,
        };
        if let Some(l) = listener.as_mut() {
            registry.register(l, Token(token_base), Interest::READABLE)?;
        }
        // Seeded apart per endpoint and per process: workers of one gateway
        // (started at the same instant, with the same token base) must not
        // draw the same numbers (their reconnects would jitter in step).
        let seed = {
            use std::hash::{BuildHasher, Hasher};
            let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
            hasher.write_u64(now);
            hasher.write_usize(token_base);
            hasher.write_u16(shard.worker);
            hasher.finish() | 1
        };
        let mut endpoint = BgEndpoint {
            tls: tls.clone(),
            settings,
            shard,
            listener,
            slots: (0..settings.max_links).map(|_| None).collect(),
            dialers: Vec::new(),
            routes: Vec::new(),
            dirty: Vec::with_capacity(settings.max_links),
            dirty_mark: vec![false; settings.max_links],
            ready: Vec::with_capacity(settings.max_links),
            ready_mark: vec![false; settings.max_links],
            shutting_down: false,
            token_base,
            rng: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
            counters,
        };
        endpoint.install(tls, peer_addrs, registry, now);
        Ok(endpoint)
    }

    /// The tokens this endpoint uses: `token_base` and the next
    /// `max_links + 1`.
    pub fn token_count(settings: &EndpointSettings) -> usize {
        settings.max_links.saturating_add(1)
    }

    /// Whether `token` is one of this endpoint's.
    pub fn owns(&self, token: Token) -> bool {
        token.0 >= self.token_base && token.0 <= self.token_base.saturating_add(self.slots.len())
    }

    /// The TLS generation new links use.
    pub fn tls(&self) -> &Arc<BgTls> {
        &self.tls
    }

    /// The counters this endpoint adds to.
    pub fn counters(&self) -> &Arc<BgCounters> {
        &self.counters
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Which worker of its gateway this endpoint is, of how many.
    pub fn shard(&self) -> LinkHello {
        self.shard
    }

    /// How many workers `peer`'s gateway has, as the hello of one of its
    /// links said (the newest that changed it); `None` until a link to it
    /// has brought a hello (and for ever for a peer that sends none).
    pub fn peer_workers(&self, peer: PeerIndex) -> Option<u16> {
        self.dialers.get(peer.get()).and_then(|d| d.workers)
    }

    /// Every link of this endpoint, handshaking ones included.
    pub fn links(&self) -> impl Iterator<Item = LinkView> + '_ {
        self.slots.iter().flatten().map(|slot| LinkView {
            peer: slot.link.peer(),
            direction: slot.link.direction(),
            established: slot.link.is_established(),
            draining: slot.link.is_draining(),
            generation: slot.link.generation(),
            peer_shard: slot.link.peer_shard(),
            aimed_at: slot.aimed_at,
            local_addr: slot.socket.local_addr().ok(),
            peer_addr: slot.peer_addr,
        })
    }

    /// The name of the peer at `peer` in the current generation.
    pub fn peer_name(&self, peer: PeerIndex) -> Option<&NetworkName> {
        self.tls.peers().name(peer)
    }

    /// Established links to or from `peer`, and how many of them take frames.
    pub fn links_to(&self, peer: PeerIndex) -> (usize, usize) {
        let mut up = 0;
        let mut usable = 0;
        for slot in self.slots.iter().flatten() {
            if slot.link.peer() == Some(peer) {
                up += 1;
                if !slot.link.is_draining() {
                    usable += 1;
                }
            }
        }
        (up, usable)
    }

    /// Installs TLS generation `tls` and the peers' dial addresses: new links
    /// use it; our dialed links made with older material are replaced by new
    /// ones and drained (closed once the new link is up and the old one has
    /// sent everything); links with peers no longer trusted, or whose
    /// certificates the new trust list refuses, are cut at once.
    pub fn reload(
        &mut self,
        tls: Arc<BgTls>,
        peer_addrs: &[(NetworkName, SocketAddr)],
        registry: &Registry,
        now: Millis,
    ) {
        self.install(tls, peer_addrs, registry, now);
    }

    fn install(
        &mut self,
        tls: Arc<BgTls>,
        peer_addrs: &[(NetworkName, SocketAddr)],
        registry: &Registry,
        now: Millis,
    ) {
        let new_peers = tls.peers().clone();
        // 1. With the old generation still current (so logs name peers
        //    right): cut links the new trust list refuses.
        let unix_now = rustls::pki_types::UnixTime::now();
        let mut names: Vec<Option<NetworkName>> = vec![None; self.slots.len()];
        for index in 0..self.slots.len() {
            let Some(slot) = self.slots.get(index).and_then(Option::as_ref) else {
                continue;
            };
            let old_peer = match slot.link.direction() {
                Direction::Dialed(p) => Some(p),
                Direction::Accepted => slot.link.peer(),
            };
            let Some(old_peer) = old_peer else {
                // An inbound handshake in progress: when it finishes, the
                // peer is authenticated against the new list.
                continue;
            };
            let name = self.tls.peers().name(old_peer).cloned();
            let new_index = name.as_ref().and_then(|name| new_peers.index_of(name));
            let still_trusted = new_index.is_some_and(|new_index| {
                if !slot.link.is_established() {
                    return true;
                }
                slot.link
                    .peer_certificates()
                    .and_then(<[_]>::split_first)
                    .is_some_and(|(end_entity, intermediates)| {
                        new_peers
                            .verify_established(
                                new_index,
                                matches!(slot.link.direction(), Direction::Dialed(_)),
                                end_entity,
                                intermediates,
                                unix_now,
                            )
                            .is_ok()
                    })
            });
            if still_trusted {
                if let Some(slot_name) = names.get_mut(index) {
                    *slot_name = name;
                }
            } else {
                self.close_slot(
                    index,
                    registry,
                    LinkError::closed(CloseReason::Untrusted),
                    now,
                );
            }
        }
        // 2. Switch generations; dialers are kept by name.
        self.tls = tls;
        let mut old_dialers = std::mem::take(&mut self.dialers);
        // (Dialers of peers no longer listed are dropped with `old_dialers`.)
        let mut dialers = Vec::with_capacity(new_peers.len());
        for i in 0..new_peers.len() {
            let Some(network) = u16::try_from(i)
                .ok()
                .and_then(|i| new_peers.name(PeerIndex(i)))
            else {
                continue;
            };
            let addr = peer_addrs
                .iter()
                .find(|(n, _)| n == network)
                .map(|(_, a)| *a);
            let kept = old_dialers
                .iter()
                .position(|d| &d.network == network)
                .map(|pos| old_dialers.swap_remove(pos));
            let mut dialer = kept.unwrap_or_else(|| {
                Dialer::new(network.clone(), addr, now, self.settings.backoff_min_ms)
            });
            if dialer.addr != addr {
                dialer.addr = addr;
                for target in &mut dialer.targets {
                    target.next_dial = now;
                }
            }
            dialers.push(dialer);
        }
        self.dialers = dialers;
        // 3. Renumber what stays; replace dialed links made with older
        //    material or to an old address.
        let generation = self.tls.generation();
        for index in 0..self.slots.len() {
            let Some(slot) = self.slots.get_mut(index).and_then(Option::as_mut) else {
                continue;
            };
            let Some(name) = names.get(index).and_then(Option::as_ref) else {
                continue;
            };
            let Some(p) = new_peers.index_of(name) else {
                continue;
            };
            slot.link.renumber(p);
            if let (Direction::Dialed(_), Some(dialer)) =
                (slot.link.direction(), self.dialers.get_mut(p.get()))
            {
                let stale = slot.link.generation() != generation || dialer.addr != slot.peer_addr;
                if stale {
                    // Replace: drain this one, dial its target anew now.
                    slot.link.begin_drain();
                    if let Some(target) = dialer
                        .target_of(index)
                        .and_then(|t| dialer.targets.get_mut(t))
                    {
                        target.current = None;
                        target.next_dial = now;
                    }
                    if dialer.blind == Some(index) {
                        dialer.blind = None;
                    }
                } else if !slot.link.is_draining() && !dialer.holds(index) {
                    // A link of ours no target holds: it serves a free one.
                    let preferred = slot.link.peer_shard().map(|h| h.worker).or(slot.aimed_at);
                    if let Some(target) = dialer
                        .free_target(preferred)
                        .and_then(|t| dialer.targets.get_mut(t))
                    {
                        target.current = Some(index);
                    }
                }
            }
        }
        self.refresh_routes();
    }

    /// `peer`'s hello says it has `workers` workers, not what we knew: one
    /// dial target per worker from now on (capped), and our live dialed
    /// links placed on them: each by the worker its hello names, else the
    /// one it was aimed at, else any free one; one still handshaking that
    /// was dialed blind waits for its hello ([`Dialer::blind`]). A link left
    /// over (the count shrank) stays up, serving the worker it reached, and
    /// is not redialed. Targets left free are dialed now.
    fn learn_peer_workers(&mut self, peer: PeerIndex, workers: u16, now: Millis) {
        let backoff = self.settings.backoff_min_ms;
        let Some(dialer) = self.dialers.get_mut(peer.get()) else {
            return;
        };
        dialer.workers = Some(workers);
        dialer.blind = None;
        dialer.targets.clear();
        dialer.targets.resize(
            usize::from(workers.clamp(1, MAX_PEER_WORKERS)),
            DialTarget::due(now, backoff),
        );
        let live = |slot: &Slot| {
            matches!(slot.link.direction(), Direction::Dialed(p) if p == peer)
                && !slot.link.is_draining()
        };
        // 1. By the worker a hello names; 2. by the worker aimed at.
        for by_hello in [true, false] {
            for (index, slot) in self.slots.iter().enumerate() {
                let Some(slot) = slot.as_ref().filter(|s| live(s)) else {
                    continue;
                };
                let wanted = if by_hello {
                    slot.link.peer_shard().map(|h| h.worker)
                } else {
                    slot.aimed_at
                };
                let Some(k) = wanted.map(usize::from) else {
                    continue;
                };
                if dialer.holds(index) {
                    continue;
                }
                if let Some(target) = dialer.targets.get_mut(k).filter(|t| t.current.is_none()) {
                    target.current = Some(index);
                }
            }
        }
        // 3. The rest: a blind one still handshaking waits for its hello;
        //    others take any free target.
        for (index, slot) in self.slots.iter().enumerate() {
            let Some(slot) = slot.as_ref().filter(|s| live(s)) else {
                continue;
            };
            if dialer.holds(index) {
                continue;
            }
            if !slot.link.is_established() && slot.aimed_at.is_none() && dialer.blind.is_none() {
                dialer.blind = Some(index);
            } else if let Some(target) = dialer
                .free_target(None)
                .and_then(|t| dialer.targets.get_mut(t))
            {
                target.current = Some(index);
            }
        }
        tracing::info!(
            peer = %dialer.network,
            workers,
            dialed = dialer.targets.len(),
            "border peer's worker count learnt"
        );
    }

    fn refresh_routes(&mut self) {
        self.routes.resize_with(self.dialers.len(), Route::default);
        for (route, dialer) in self.routes.iter_mut().zip(&self.dialers) {
            route.any = None;
            route.by_worker.clear();
            let workers = dialer.workers.map_or(0, |n| n.min(MAX_PEER_WORKERS));
            route.by_worker.resize(usize::from(workers), None);
        }
        for (index, slot) in self.slots.iter().enumerate() {
            let Some(slot) = slot else { continue };
            let Some(peer) = slot.link.peer() else {
                continue;
            };
            if slot.link.is_draining() {
                continue;
            }
            let Some(route) = self.routes.get_mut(peer.get()) else {
                continue;
            };
            if outranks(&self.slots, &slot.link, route.any) {
                route.any = Some(index);
            }
            let worker = slot.link.peer_shard().map(|h| usize::from(h.worker));
            if let Some(entry) = worker.and_then(|k| route.by_worker.get_mut(k)) {
                if outranks(&self.slots, &slot.link, *entry) {
                    *entry = Some(index);
                }
            }
        }
        // A peer whose only links are being replaced keeps using them until
        // the replacement is up: rotation drops nothing. (Links closing or
        // closed by the peer take no frames at all.)
        for (peer, route) in self.routes.iter_mut().enumerate() {
            if route.any.is_none() {
                route.any = self.slots.iter().position(|s| {
                    s.as_ref().is_some_and(|s| {
                        s.link.peer().map(PeerIndex::get) == Some(peer)
                            && s.link.closing_reason().is_none()
                            && !s.link.peer_closed()
                    })
                });
            }
        }
    }

    /// Queues `frame` for `peer` on one of this worker's links to it. With
    /// `to_worker` `Some(k)`: on a link that ends at the peer's worker `k`
    /// (as its hello said) when one takes frames, else on any (counted in
    /// `sends_off_worker`: the peer's worker that gets it hands it across).
    /// With `None`: on any link. Which worker a frame is for is the caller's
    /// to say; the border does not read it.
    pub fn send(
        &mut self,
        peer: PeerIndex,
        to_worker: Option<u16>,
        frame: &[u8],
    ) -> Result<(), SendError> {
        if !(presence_codec::STREAM_FRAME_LEN_MIN..=self.settings.link.max_frame_len)
            .contains(&frame.len())
        {
            return Err(SendError::InvalidFrame(frame.len()));
        }
        let Some(route) = self.routes.get(peer.get()) else {
            return Err(SendError::UnknownPeer);
        };
        let on_worker =
            to_worker.and_then(|k| route.by_worker.get(usize::from(k)).copied().flatten());
        let Some(index) = on_worker.or(route.any) else {
            BgCounters::add(&self.counters.send_no_link, 1);
            return Err(SendError::NoLink);
        };
        let Some(slot) = self.slots.get_mut(index).and_then(Option::as_mut) else {
            return Err(SendError::NoLink);
        };
        // A route to a draining link (no replacement yet) still carries.
        if !slot.link.queue_frame(frame) {
            BgCounters::add(&self.counters.send_overloaded, 1);
            return Err(SendError::Overloaded);
        }
        if to_worker.is_some() && slot.link.peer_shard().map(|h| h.worker) != to_worker {
            BgCounters::add(&self.counters.sends_off_worker, 1);
        }
        BgCounters::add(&self.counters.frames_out, 1);
        BgCounters::add(
            &self.counters.bytes_out,
            frame
                .len()
                .saturating_add(presence_codec::STREAM_PREFIX_LEN) as u64,
        );
        if let Some(mark) = self.dirty_mark.get_mut(index) {
            if !*mark {
                *mark = true;
                self.dirty.push(index);
            }
        }
        Ok(())
    }

    /// Handles readiness of one of this endpoint's tokens.
    pub fn handle_event<D: Deliver>(
        &mut self,
        registry: &Registry,
        token: Token,
        now: Millis,
        deliver: &mut D,
    ) {
        if token.0 == self.token_base {
            self.accept_all(registry, now);
            return;
        }
        let Some(index) = token.0.checked_sub(self.token_base.saturating_add(1)) else {
            return;
        };
        self.service(index, registry, now, deliver);
    }

    /// Whether some link has unread input left over from its read budget:
    /// the worker should poll without sleeping and call
    /// [`poll_ready`](Self::poll_ready).
    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    /// Services the links whose read budget ran out last turn.
    pub fn poll_ready<D: Deliver>(&mut self, registry: &Registry, now: Millis, deliver: &mut D) {
        let mut turn = std::mem::take(&mut self.ready);
        for &index in &turn {
            if let Some(mark) = self.ready_mark.get_mut(index) {
                *mark = false;
            }
        }
        for &index in &turn {
            self.service(index, registry, now, deliver);
        }
        // Keep the allocation: swap back whatever was re-listed meanwhile.
        turn.clear();
        turn.append(&mut self.ready);
        self.ready = turn;
    }

    fn service<D: Deliver>(
        &mut self,
        index: usize,
        registry: &Registry,
        now: Millis,
        deliver: &mut D,
    ) {
        let peers = self.tls.peers().clone();
        let Some(slot) = self.slots.get_mut(index).and_then(Option::as_mut) else {
            return;
        };
        let was_draining = slot.link.is_draining();
        let result = slot
            .link
            .receive(&mut slot.socket, now, &peers, &self.counters, deliver)
            .and_then(|received| slot.link.transmit(&mut slot.socket, now).map(|_| received));
        match result {
            Ok(received) => {
                if received.hello {
                    self.on_hello(index, now);
                }
                if received.established {
                    self.on_established(index);
                } else if received.hello {
                    self.refresh_routes();
                }
                if received.more {
                    if let Some(mark) = self.ready_mark.get_mut(index) {
                        if !*mark {
                            *mark = true;
                            self.ready.push(index);
                        }
                    }
                }
                self.after_io(index, registry, was_draining);
            }
            Err(error) => self.close_slot(index, registry, error, now),
        }
    }

    /// After a link did IO: finish it if its close completed, and re-route if
    /// it stopped taking frames.
    fn after_io(&mut self, index: usize, registry: &Registry, was_draining: bool) {
        let Some(slot) = self.slots.get(index).and_then(Option::as_ref) else {
            return;
        };
        if slot.link.is_finished() {
            let reason = slot
                .link
                .closing_reason()
                .unwrap_or(CloseReason::PeerClosed);
            self.finish_slot(index, registry, reason);
        } else if slot.link.is_draining() != was_draining {
            self.refresh_routes();
        }
    }

    /// A link's peer hello arrived: learn the peer's worker count, and count
    /// a dial that was aimed at one worker and reached another.
    fn on_hello(&mut self, index: usize, now: Millis) {
        let Some(slot) = self.slots.get(index).and_then(Option::as_ref) else {
            return;
        };
        let (Some(peer), Some(hello)) = (slot.link.peer(), slot.link.peer_shard()) else {
            return;
        };
        if let Some(aimed) = slot.aimed_at.filter(|&k| k != hello.worker) {
            BgCounters::add(&self.counters.dials_off_worker, 1);
            tracing::info!(
                peer = self.tls.peers().name(peer).map(NetworkName::as_str),
                addr = ?slot.peer_addr,
                aimed_at = aimed,
                reached = hello.worker,
                "border link dialed for one peer worker reached another"
            );
        }
        if self.peer_workers(peer) != Some(hello.workers) {
            self.learn_peer_workers(peer, hello.workers, now);
        }
    }

    fn on_established(&mut self, index: usize) {
        let Some(slot) = self.slots.get_mut(index).and_then(Option::as_mut) else {
            return;
        };
        slot.counted_up = true;
        BgCounters::add(&self.counters.links_established, 1);
        self.counters
            .links_up
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = slot.link.peer().and_then(|p| self.tls.peers().name(p));
        tracing::info!(
            peer = name.map(NetworkName::as_str),
            addr = ?slot.peer_addr,
            direction = ?slot.link.direction(),
            generation = slot.link.generation(),
            peer_shard = ?slot.link.peer_shard(),
            "border link established"
        );
        // A link dialed blind before the peer's worker count was known takes
        // the target of the worker it reached, and the others may be dialed.
        let preferred = slot.link.peer_shard().map(|h| h.worker);
        if let Some(dialer) = slot
            .link
            .peer()
            .and_then(|p| self.dialers.get_mut(p.get()))
            .filter(|d| d.blind == Some(index))
        {
            dialer.blind = None;
            if let Some(target) = dialer
                .free_target(preferred)
                .and_then(|t| dialer.targets.get_mut(t))
            {
                target.current = Some(index);
            }
        }
        self.refresh_routes();
    }

    fn accept_all(&mut self, registry: &Registry, now: Millis) {
        loop {
            let Some(listener) = self.listener.as_ref() else {
                return;
            };
            let (mut socket, addr) = match listener.accept() {
                Ok(pair) => pair,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "border accept failed");
                    return;
                }
            };
            if self.shutting_down {
                continue;
            }
            // Unauthenticated connections may take a quarter of the slots,
            // and never the ones our own dialers need.
            let pending = self
                .slots
                .iter()
                .flatten()
                .filter(|s| !s.link.is_established() && s.link.direction() == Direction::Accepted)
                .count();
            let free = self.slots.iter().filter(|s| s.is_none()).count();
            // One slot for each link we should have dialed and have not.
            let reserved = self
                .dialers
                .iter()
                .filter(|d| d.addr.is_some())
                .map(|d| d.targets.iter().filter(|t| t.current.is_none()).count())
                .sum::<usize>()
                .min(self.settings.max_links / 2);
            let index = self.slots.iter().position(Option::is_none);
            let (Some(index), true, true) = (
                index,
                pending < (self.settings.max_links / 4).max(1),
                free > reserved,
            ) else {
                BgCounters::add(&self.counters.accept_full, 1);
                tracing::warn!(%addr, "border connection dropped: no free link slot");
                continue;
            };
            let link = match Link::accept(
                self.tls.server_config().clone(),
                self.tls.generation(),
                self.shard,
                &self.settings.link,
                now,
            ) {
                Ok(link) => link,
                Err(error) => {
                    log_end(None, Some(addr), &error, self.tls.peers());
                    continue;
                }
            };
            let _ = socket.set_nodelay(true);
            let token = Token(self.token_base.saturating_add(1).saturating_add(index));
            if let Err(e) =
                registry.register(&mut socket, token, Interest::READABLE | Interest::WRITABLE)
            {
                tracing::warn!(error = %e, "border register failed");
                continue;
            }
            if let Some(free) = self.slots.get_mut(index) {
                *free = Some(Slot {
                    link,
                    socket,
                    peer_addr: Some(addr),
                    counted_up: false,
                    aimed_at: None,
                });
            }
        }
    }

    /// Dials `peer`'s target `target`: once the peer's worker count `n` is
    /// known, from a local port whose residue modulo `n` is `target` (when
    /// `n` > 1), so that the peer's listener steers it to that worker.
    fn dial(&mut self, peer: PeerIndex, target: usize, registry: &Registry, now: Millis) {
        let Some(dialer) = self.dialers.get(peer.get()) else {
            return;
        };
        let Some(addr) = dialer.addr else { return };
        let aim = dialer
            .workers
            .and_then(|n| u16::try_from(target).ok().map(|k| (k, n)));
        let Some(index) = self.slots.iter().position(Option::is_none) else {
            self.schedule_redial(peer, target, now);
            return;
        };
        BgCounters::add(&self.counters.dial_attempts, 1);
        let Some(config) = self.tls.client_config(peer) else {
            return;
        };
        let link = Link::dial(
            config.clone(),
            peer,
            &dialer.network,
            self.tls.generation(),
            self.shard,
            &self.settings.link,
            now,
        );
        let socket = match aim {
            Some((k, n)) if n > 1 => connect_aimed(addr, k, n, &mut self.rng),
            _ => TcpStream::connect(addr),
        };
        let (link, mut socket) = match (link, socket) {
            (Ok(link), Ok(socket)) => (link, socket),
            (Err(error), _) => {
                log_end(Some(peer), Some(addr), &error, self.tls.peers());
                self.schedule_redial(peer, target, now);
                return;
            }
            (_, Err(e)) => {
                tracing::warn!(peer = %dialer.network, %addr, error = %e, "border dial failed");
                self.schedule_redial(peer, target, now);
                return;
            }
        };
        let _ = socket.set_nodelay(true);
        let token = Token(self.token_base.saturating_add(1).saturating_add(index));
        if registry
            .register(&mut socket, token, Interest::READABLE | Interest::WRITABLE)
            .is_err()
        {
            self.schedule_redial(peer, target, now);
            return;
        }
        if let Some(free) = self.slots.get_mut(index) {
            *free = Some(Slot {
                link,
                socket,
                peer_addr: Some(addr),
                counted_up: false,
                aimed_at: aim.map(|(k, _)| k),
            });
        }
        if let Some(t) = self
            .dialers
            .get_mut(peer.get())
            .and_then(|d| d.targets.get_mut(target))
        {
            t.current = Some(index);
        }
    }

    /// Next delay of `peer`'s target `target`: its backoff with jitter in
    /// its upper half, then the backoff doubles up to the cap.
    fn schedule_redial(&mut self, peer: PeerIndex, target: usize, now: Millis) {
        let rng = next_random(&mut self.rng);
        let max = self.settings.backoff_max_ms.max(1);
        let Some(target) = self
            .dialers
            .get_mut(peer.get())
            .and_then(|d| d.targets.get_mut(target))
        else {
            return;
        };
        let half = (target.backoff / 2).max(1);
        let delay = half.saturating_add(rng % half.saturating_add(1));
        target.next_dial = now.saturating_add(delay);
        target.backoff = target.backoff.saturating_mul(2).min(max);
        target.current = None;
    }

    /// Ends a link for `error`: an alert or close_notify is attempted, the
    /// socket dropped, the reason counted and logged, a redial scheduled.
    fn close_slot(&mut self, index: usize, registry: &Registry, error: LinkError, now: Millis) {
        let Some(slot) = self.slots.get_mut(index) else {
            return;
        };
        if let (Some(s), LinkError::Closed { reason, .. }) = (slot.as_mut(), &error) {
            if *reason != CloseReason::Io {
                s.link.abort(now, *reason);
            }
        }
        if let Some(s) = slot.as_mut() {
            let _ = s.link.transmit(&mut s.socket, now);
        }
        match &error {
            LinkError::Refused { refusal, .. } => self.counters.refuse(*refusal),
            LinkError::Closed { reason, .. } => self.counters.close(*reason),
        }
        let (peer, addr) = self.remove_slot(index, registry, now, &error);
        log_end(peer, addr, &error, self.tls.peers());
    }

    /// Drops a link whose graceful close completed.
    fn finish_slot(&mut self, index: usize, registry: &Registry, reason: CloseReason) {
        self.counters.close(reason);
        let error = LinkError::closed(reason);
        let (peer, addr) = self.remove_slot(index, registry, 0, &error);
        log_end(peer, addr, &error, self.tls.peers());
    }

    fn remove_slot(
        &mut self,
        index: usize,
        registry: &Registry,
        now: Millis,
        error: &LinkError,
    ) -> (Option<PeerIndex>, Option<SocketAddr>) {
        let Some(mut slot) = self.slots.get_mut(index).and_then(Option::take) else {
            return (None, None);
        };
        let _ = registry.deregister(&mut slot.socket);
        if slot.counted_up {
            self.counters
                .links_up
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
        let peer = slot.link.peer().or(match slot.link.direction() {
            Direction::Dialed(p) => Some(p),
            Direction::Accepted => None,
        });
        if let Direction::Dialed(p) = slot.link.direction() {
            if let Some(dialer) = self
                .dialers
                .get_mut(p.get())
                .filter(|d| d.blind == Some(index))
            {
                // Its targets are due: they are dialed now.
                dialer.blind = None;
            }
            let target = self.dialers.get(p.get()).and_then(|d| d.target_of(index));
            let replaced = matches!(
                error,
                LinkError::Closed {
                    reason: CloseReason::Rotated | CloseReason::Shutdown | CloseReason::Untrusted,
                    ..
                }
            );
            match target {
                Some(t) if !replaced && !self.shutting_down => {
                    // A link that stayed up a while starts the backoff
                    // afresh; a flapping peer keeps backing off.
                    let stable = slot.link.is_established()
                        && now.saturating_sub(slot.link.established_at())
                            >= self.settings.backoff_max_ms;
                    if let (true, Some(target)) = (
                        stable,
                        self.dialers
                            .get_mut(p.get())
                            .and_then(|d| d.targets.get_mut(t)),
                    ) {
                        target.backoff = self.settings.backoff_min_ms;
                    }
                    self.schedule_redial(p, t, now);
                }
                Some(t) => {
                    if let Some(target) = self
                        .dialers
                        .get_mut(p.get())
                        .and_then(|d| d.targets.get_mut(t))
                    {
                        target.current = None;
                    }
                }
                None => {}
            }
        }
        self.refresh_routes();
        (peer, slot.peer_addr)
    }

    /// Writes what `send` queued, one batch per link.
    pub fn flush(&mut self, registry: &Registry, now: Millis) {
        while let Some(index) = self.dirty.pop() {
            if let Some(mark) = self.dirty_mark.get_mut(index) {
                *mark = false;
            }
            let Some(slot) = self.slots.get_mut(index).and_then(Option::as_mut) else {
                continue;
            };
            let was_draining = slot.link.is_draining();
            match slot.link.transmit(&mut slot.socket, now) {
                Ok(_) => self.after_io(index, registry, was_draining),
                Err(error) => self.close_slot(index, registry, error, now),
            }
        }
    }

    /// Runs timers: dials due peers, sends keepalives, closes dead peers and
    /// slow handshakes, closes drained links. Call every few tens of ms.
    pub fn tick(&mut self, registry: &Registry, now: Millis) {
        for index in 0..self.slots.len() {
            let Some(slot) = self.slots.get_mut(index).and_then(Option::as_mut) else {
                continue;
            };
            let was_draining = slot.link.is_draining();
            let result = slot.link.on_tick(now, &self.settings.link, &self.counters);
            if result.is_ok() && slot.link.is_drained() && slot.link.closing_reason().is_none() {
                // A replaced link closes once its replacement carries (or
                // at once when stopping).
                let peer = slot.link.peer();
                let replacement_up = peer.is_some_and(|p| {
                    self.routes
                        .get(p.get())
                        .and_then(|r| r.any)
                        .is_some_and(|r| r != index)
                });
                if self.shutting_down {
                    slot.link.close(now, CloseReason::Shutdown);
                } else if replacement_up {
                    slot.link.close(now, CloseReason::Rotated);
                }
            }
            let result =
                result.and_then(|()| slot.link.transmit(&mut slot.socket, now).map(|_| ()));
            match result {
                Ok(()) => self.after_io(index, registry, was_draining),
                Err(error) => self.close_slot(index, registry, error, now),
            }
        }
        if self.shutting_down {
            return;
        }
        for p in 0..self.dialers.len() {
            let (Some(dialer), Ok(peer)) = (self.dialers.get(p), u16::try_from(p)) else {
                continue;
            };
            if dialer.addr.is_none() || dialer.blind.is_some() {
                continue;
            }
            for t in 0..dialer.targets.len() {
                let due = self
                    .dialers
                    .get(p)
                    .and_then(|d| d.targets.get(t))
                    .is_some_and(|t| t.current.is_none() && t.next_dial <= now);
                if due {
                    self.dial(PeerIndex(peer), t, registry, now);
                }
            }
        }
    }

    /// Starts a clean stop: no more dialing or accepting; every link
    /// writes what it has queued, sends close_notify and waits for the
    /// peer's (at most `dead_after_ms`); handshakes in progress are dropped.
    /// Keep calling [`tick`](Self::tick) and handling events until
    /// [`is_idle`](Self::is_idle).
    pub fn begin_shutdown(&mut self, registry: &Registry, now: Millis) {
        self.shutting_down = true;
        for index in 0..self.slots.len() {
            let Some(slot) = self.slots.get_mut(index).and_then(Option::as_mut) else {
                continue;
            };
            if slot.link.is_established() {
                slot.link.begin_drain();
                slot.link.close(now, CloseReason::Shutdown);
            } else {
                self.close_slot(
                    index,
                    registry,
                    LinkError::closed(CloseReason::Shutdown),
                    now,
                );
            }
        }
        self.refresh_routes();
    }

    /// Whether no link is left.
    pub fn is_idle(&self) -> bool {
        self.slots.iter().all(Option::is_none)
    }

    /// Drops every link left now (after [`begin_shutdown`](Self::begin_shutdown)
    /// has had its time).
    pub fn shutdown(&mut self, registry: &Registry, now: Millis) {
        self.shutting_down = true;
        for index in 0..self.slots.len() {
            if self.slots.get(index).is_some_and(Option::is_some) {
                self.close_slot(
                    index,
                    registry,
                    LinkError::closed(CloseReason::Shutdown),
                    now,
                );
            }
        }
    }
}

/// Whether `candidate` should replace the link at `current` as a route:
/// our own dialed link of the newest generation first.
fn outranks(slots: &[Option<Slot>], candidate: &Link, current: Option<usize>) -> bool {
    let rank = |link: &Link| {
        (
            link.generation(),
            matches!(link.direction(), Direction::Dialed(_)),
        )
    };
    match current {
        None => true,
        Some(current) => slots
            .get(current)
            .and_then(Option::as_ref)
            .is_some_and(|c| rank(candidate) > rank(&c.link)),
    }
}

/// The next number of the endpoint's xorshift generator (jitter, ports).
fn next_random(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// A port of [`AIMED_PORTS`] whose residue modulo `workers` is `worker`,
/// picked by `random`.
fn aimed_port(random: u64, worker: u16, workers: u16) -> u16 {
    let (lo, hi) = (
        u64::from(*AIMED_PORTS.start()),
        u64::from(*AIMED_PORTS.end()),
    );
    let n = u64::from(workers.max(1));
    let k = u64::from(worker) % n;
    let p = lo.saturating_add(random % hi.saturating_sub(lo).saturating_add(1));
    let mut p = p.saturating_sub(p % n).saturating_add(k);
    if p > hi {
        p = p.saturating_sub(n);
    }
    if p < lo {
        p = p.saturating_add(n);
    }
    u16::try_from(p).unwrap_or(*AIMED_PORTS.start())
}

/// Starts a non-blocking connect to `addr` from a local port aimed at peer
/// worker `worker` of `workers` ([`aimed_port`]), bound on the unspecified
/// address of `addr`'s family; another port is tried when one is taken.
fn connect_aimed(
    addr: SocketAddr,
    worker: u16,
    workers: u16,
    rng: &mut u64,
) -> io::Result<TcpStream> {
    let any = match addr.ip() {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    let mut last = io::Error::from(io::ErrorKind::AddrInUse);
    for _ in 0..AIMED_PORT_TRIES {
        let port = aimed_port(next_random(rng), worker, workers);
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_nonblocking(true)?;
        match socket.bind(&SocketAddr::new(any, port).into()) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                last = e;
                continue;
            }
            Err(e) => return Err(e),
        }
        match socket.connect(&addr.into()) {
            Ok(()) => {}
            // Non-blocking: under way.
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            // The four-tuple is taken (a connection from that port to this
            // peer lingers in TIME_WAIT): another port.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::AddrInUse | io::ErrorKind::AddrNotAvailable
                ) =>
            {
                last = e;
                continue;
            }
            Err(e) => return Err(e),
        }
        return Ok(TcpStream::from_std(socket.into()));
    }
    Err(last)
}

fn log_end(
    peer: Option<PeerIndex>,
    addr: Option<SocketAddr>,
    error: &LinkError,
    peers: &crate::tls::PeerSet,
) {
    let name = peer.and_then(|p| peers.name(p)).map(NetworkName::as_str);
    match error {
        LinkError::Refused { refusal, detail } => tracing::warn!(
            peer = name,
            addr = ?addr,
            reason = refusal.name(),
            detail = detail.as_str(),
            "border connection refused"
        ),
        LinkError::Closed { reason, stream } => tracing::info!(
            peer = name,
            addr = ?addr,
            reason = reason.name(),
            stream_error = stream.map(|e| e.name()),
            "border link closed"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_aimed_port_has_the_workers_residue_and_stays_in_range() {
        let mut rng = 0x2545_F491_4F6C_DD1D_u64;
        for workers in [2u16, 3, 7, 8, 63, 64, 1000] {
            for worker in (0..workers).take(70) {
                for _ in 0..200 {
                    let port = aimed_port(next_random(&mut rng), worker, workers);
                    assert!(AIMED_PORTS.contains(&port), "{port}");
                    assert_eq!(port % workers, worker);
                }
            }
        }
        // Both ends of the range are reachable residues.
        assert_eq!(aimed_port(0, 0, 2), 32_768);
        assert_eq!(aimed_port(u64::from(60_999u16 - 32_768), 1, 2), 60_999);
        assert_eq!(aimed_port(u64::from(60_999u16 - 32_768), 0, 2), 60_998);
    }
}
