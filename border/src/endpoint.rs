//! A border gateway's links on one worker thread: its share of inbound
//! connections (the listener is bound with `SO_REUSEPORT`, so the kernel
//! spreads peers' connections over the workers), one dialed connection per
//! peer, reconnection with backoff and jitter, keepalives, dead-peer
//! detection, and rotation to new TLS material.
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
use crate::link::{CloseReason, Deliver, Direction, Link, LinkError, LinkSettings, Millis};
use crate::tls::BgTls;

/// Endpoint limits beyond the per-link ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndpointSettings {
    /// Per-link limits and timers.
    pub link: LinkSettings,
    /// Most links (inbound and outbound) this worker holds. One slot per peer
    /// is kept for our own dialing; unauthenticated inbound connections may
    /// hold at most a quarter of the slots.
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
}

/// Dial state for one peer network, kept by name across reloads.
#[derive(Debug)]
struct Dialer {
    network: NetworkName,
    addr: Option<SocketAddr>,
    /// The slot of our current dialed link, if one exists.
    current: Option<usize>,
    /// When to dial next, if no current link.
    next_dial: Millis,
    backoff: Millis,
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
    /// Per peer: the slot `send` uses (an established, non-draining link).
    routes: Vec<Option<usize>>,
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
            let mut dialer = kept.unwrap_or(Dialer {
                network: network.clone(),
                addr,
                current: None,
                next_dial: now,
                backoff: self.settings.backoff_min_ms,
            });
            if dialer.addr != addr {
                dialer.addr = addr;
                dialer.next_dial = now;
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
                    // Replace: drain this one, dial anew now.
                    slot.link.begin_drain();
                    if dialer.current == Some(index) {
                        dialer.current = None;
                        dialer.next_dial = now;
                    }
                } else if !slot.link.is_draining() {
                    dialer.current = Some(index);
                }
            }
        }
        self.refresh_routes();
    }

    fn refresh_routes(&mut self) {
        let peers = self.dialers.len();
        self.routes.clear();
        self.routes.resize(peers, None);
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
            // Prefer our own dialed link of the newest generation.
            let rank = |link: &Link| {
                (
                    link.generation(),
                    matches!(link.direction(), Direction::Dialed(_)),
                )
            };
            let better = match *route {
                None => true,
                Some(current) => self
                    .slots
                    .get(current)
                    .and_then(Option::as_ref)
                    .is_some_and(|c| rank(&slot.link) > rank(&c.link)),
            };
            if better {
                *route = Some(index);
            }
        }
        // A peer whose only links are being replaced keeps using them until
        // the replacement is up: rotation drops nothing. (Links closing or
        // closed by the peer take no frames at all.)
        for (peer, route) in self.routes.iter_mut().enumerate() {
            if route.is_none() {
                *route = self.slots.iter().position(|s| {
                    s.as_ref().is_some_and(|s| {
                        s.link.peer().map(PeerIndex::get) == Some(peer)
                            && s.link.closing_reason().is_none()
                            && !s.link.peer_closed()
                    })
                });
            }
        }
    }

    /// Queues `frame` for `peer` on this worker's link to it.
    pub fn send(&mut self, peer: PeerIndex, frame: &[u8]) -> Result<(), SendError> {
        if !(presence_codec::STREAM_FRAME_LEN_MIN..=self.settings.link.max_frame_len)
            .contains(&frame.len())
        {
            return Err(SendError::InvalidFrame(frame.len()));
        }
        let Some(route) = self.routes.get(peer.get()) else {
            return Err(SendError::UnknownPeer);
        };
        let Some(index) = *route else {
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
                if received.established {
                    self.on_established(index);
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
            "border link established"
        );
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
            let reserved = self.dialers.iter().filter(|d| d.current.is_none()).count();
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
                });
            }
        }
    }

    fn dial(&mut self, peer: PeerIndex, registry: &Registry, now: Millis) {
        let Some(dialer) = self.dialers.get(peer.get()) else {
            return;
        };
        let Some(addr) = dialer.addr else { return };
        let Some(index) = self.slots.iter().position(Option::is_none) else {
            self.schedule_redial(peer, now);
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
        let socket = TcpStream::connect(addr);
        let (link, mut socket) = match (link, socket) {
            (Ok(link), Ok(socket)) => (link, socket),
            (Err(error), _) => {
                log_end(Some(peer), Some(addr), &error, self.tls.peers());
                self.schedule_redial(peer, now);
                return;
            }
            (_, Err(e)) => {
                tracing::warn!(peer = %dialer.network, %addr, error = %e, "border dial failed");
                self.schedule_redial(peer, now);
                return;
            }
        };
        let _ = socket.set_nodelay(true);
        let token = Token(self.token_base.saturating_add(1).saturating_add(index));
        if registry
            .register(&mut socket, token, Interest::READABLE | Interest::WRITABLE)
            .is_err()
        {
            self.schedule_redial(peer, now);
            return;
        }
        if let Some(free) = self.slots.get_mut(index) {
            *free = Some(Slot {
                link,
                socket,
                peer_addr: Some(addr),
                counted_up: false,
            });
        }
        if let Some(dialer) = self.dialers.get_mut(peer.get()) {
            dialer.current = Some(index);
        }
    }

    /// Next delay: the backoff with jitter in its upper half, then the
    /// backoff doubles up to the cap.
    fn schedule_redial(&mut self, peer: PeerIndex, now: Millis) {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let rng = self.rng;
        let max = self.settings.backoff_max_ms.max(1);
        let Some(dialer) = self.dialers.get_mut(peer.get()) else {
            return;
        };
        let half = (dialer.backoff / 2).max(1);
        let delay = half.saturating_add(rng % half.saturating_add(1));
        dialer.next_dial = now.saturating_add(delay);
        dialer.backoff = dialer.backoff.saturating_mul(2).min(max);
        dialer.current = None;
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
            let is_current = self
                .dialers
                .get(p.get())
                .is_some_and(|d| d.current == Some(index));
            let replaced = matches!(
                error,
                LinkError::Closed {
                    reason: CloseReason::Rotated | CloseReason::Shutdown | CloseReason::Untrusted,
                    ..
                }
            );
            if is_current && !replaced && !self.shutting_down {
                // A link that stayed up a while starts the backoff afresh; a
                // flapping peer keeps backing off.
                let stable = slot.link.is_established()
                    && now.saturating_sub(slot.link.established_at())
                        >= self.settings.backoff_max_ms;
                if let (true, Some(dialer)) = (stable, self.dialers.get_mut(p.get())) {
                    dialer.backoff = self.settings.backoff_min_ms;
                }
                self.schedule_redial(p, now);
            } else if let (true, Some(dialer)) = (is_current, self.dialers.get_mut(p.get())) {
                dialer.current = None;
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
                        .copied()
                        .flatten()
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
            let Some(dialer) = self.dialers.get(p) else {
                continue;
            };
            if dialer.current.is_none() && dialer.addr.is_some() && dialer.next_dial <= now {
                if let Ok(p) = u16::try_from(p) {
                    self.dial(PeerIndex(p), registry, now);
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
