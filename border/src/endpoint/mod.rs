//! A border gateway's links on one worker thread: its share of inbound
//! connections (the listener is bound with `SO_REUSEPORT`, so the kernel
//! spreads peers' connections over the workers), its dialed connections to
//! each peer, reconnection with backoff and jitter, keepalives, dead-peer
//! detection, and rotation to new TLS material.
//!
//! Shard-aware links. The endpoint is worker `shard.worker` of
//! `shard.workers` of its gateway, and every link starts with each end's
//! hello (`docs/wire-format.md` §6.1), so both ends know which worker is at
//! the other. Invariants (those of dialing are documented in `dial.rs`, those
//! of routing frames in `routes.rs`):
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
use std::net::SocketAddr;
use std::sync::Arc;

use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};
use presence_codec::LinkHello;
use socket2::{Domain, Protocol, Socket, Type};

use crate::counters::BgCounters;
use crate::identity::{NetworkName, PeerIndex};
use crate::link::{CloseReason, Direction, Link, LinkError, LinkSettings, Millis};
use crate::tls::BgTls;

pub mod admission;
mod dial;
mod drive;
mod log_limit;
mod routes;

pub use admission::HandshakeRate;
pub use dial::AIMED_PORTS;
pub use routes::SendError;

use dial::Dialer;
use routes::Route;

/// Endpoint limits beyond the per-link ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndpointSettings {
    /// Per-link limits and timers.
    pub link: LinkSettings,
    /// Most links (inbound and outbound) this worker holds. A slot is kept
    /// for each link we should have dialed and have not (at most half the
    /// slots).
    pub max_links: usize,
    /// Most unauthenticated inbound connections this worker holds; past it
    /// the oldest idle one is evicted for a newcomer (see
    /// [`admission`]).
    pub max_pending_links: usize,
    /// Most unauthenticated inbound connections from one source (an IPv4
    /// address, an IPv6 /64) on this worker; past it that source's oldest
    /// idle one is evicted.
    pub max_pending_per_source: usize,
    /// Handshakes one source may start on this worker.
    pub handshakes_per_source: HandshakeRate,
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
            max_pending_links: 64,
            max_pending_per_source: 8,
            handshakes_per_source: HandshakeRate::default(),
            backoff_min_ms: 100,
            backoff_max_ms: 10_000,
        }
    }
}

/// Worker 0 of 1: the identity of an endpoint whose gateway is not sharded.
pub const SOLE_WORKER: LinkHello = LinkHello {
    worker: 0,
    workers: 1,
};

/// Most workers of one peer that an endpoint dials a link to, and routes
/// frames to by worker; a frame for a worker beyond goes over any link.
pub const MAX_PEER_WORKERS: u16 = 64;

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
    /// Handshake budgets of sources.
    source_rates: admission::SourceRates,
    /// Scratch list of unauthenticated inbound connections (reused).
    pending: Vec<admission::Pending>,
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
            source_rates: admission::SourceRates::new(settings.handshakes_per_source),
            pending: Vec::with_capacity(settings.max_links),
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
}
