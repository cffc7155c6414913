//! Driving the endpoint: what the worker's loop calls (readiness, links
//! whose read budget ran out, flush, timers, shutdown), accepting links, and
//! ending them (counted, logged, and for a dialed link, its redial
//! scheduled).

use std::io;
use std::net::SocketAddr;

use mio::{Interest, Registry, Token};

use super::admission::{victim, Pending, SourceKey};
use super::{BgEndpoint, Slot};
use crate::counters::BgCounters;
use crate::identity::{NetworkName, PeerIndex};
use crate::link::{CloseReason, Deliver, Direction, Link, LinkError, Millis};
use crate::tls::Refusal;

impl BgEndpoint {
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
        if let (true, Some(peer)) = (slot.link.is_established(), slot.link.peer()) {
            deliver.backlog(peer, socket_backlog(&slot.socket));
        }
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
            let Some(index) = self.admit(registry, addr, now) else {
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

    /// Finds a slot for a new connection from `addr`, evicting an idle
    /// unauthenticated one if a limit is reached (see
    /// [`admission`](super::admission)); `None` when it must be dropped
    /// (counted, and logged at most once a second per reason).
    fn admit(&mut self, registry: &Registry, addr: SocketAddr, now: Millis) -> Option<usize> {
        let source = SourceKey::of(addr.ip());
        // A configured peer's address (one we dial) has no budget or cap
        // that others could spend for it.
        let peer_address = self
            .dialers
            .iter()
            .any(|d| d.addr.is_some_and(|a| a.ip() == addr.ip()));
        if !peer_address && !self.source_rates.take(now, source) {
            BgCounters::add(&self.counters.handshake_rate_limited, 1);
            if let Some(suppressed) = super::log_limit::admit("handshake_rate") {
                tracing::warn!(%addr, suppressed, "border connection dropped: too many handshakes from its source");
            }
            return None;
        }
        self.pending.clear();
        for (index, slot) in self.slots.iter().enumerate() {
            let Some(slot) = slot else { continue };
            if slot.link.is_established() || slot.link.direction() != Direction::Accepted {
                continue;
            }
            self.pending.push(Pending {
                index,
                source: slot
                    .peer_addr
                    .map_or(SourceKey::of(addr.ip()), |a| SourceKey::of(a.ip())),
                talking: slot.link.heard_from(),
                last_rx: slot.link.last_rx(),
                created: slot.link.created_at(),
            });
        }
        let from_source = self.pending.iter().filter(|p| p.source == source).count();
        if !peer_address && from_source >= self.settings.max_pending_per_source.max(1) {
            let Some(evict) = victim(&self.pending, now, |p| p.source == source) else {
                BgCounters::add(&self.counters.accept_source_full, 1);
                if let Some(suppressed) = super::log_limit::admit("source_full") {
                    tracing::warn!(%addr, suppressed, "border connection dropped: its source holds every unauthenticated slot it may");
                }
                return None;
            };
            self.evict(evict, registry, now);
        }
        // One slot for each link we should have dialed and have not.
        let reserved = self
            .dialers
            .iter()
            .filter(|d| d.addr.is_some())
            .map(|d| d.targets.iter().filter(|t| t.current.is_none()).count())
            .sum::<usize>()
            .min(self.settings.max_links / 2);
        let free = self.slots.iter().filter(|s| s.is_none()).count();
        if self.pending.len() >= self.settings.max_pending_links.max(1) || free <= reserved {
            let evict = victim(&self.pending, now, |_| true).filter(|_| free + 1 > reserved);
            let Some(evict) = evict else {
                BgCounters::add(&self.counters.accept_full, 1);
                if let Some(suppressed) = super::log_limit::admit("no_free_link_slot") {
                    tracing::warn!(%addr, suppressed, "border connection dropped: no free link slot");
                }
                return None;
            };
            self.evict(evict, registry, now);
        }
        self.slots.iter().position(Option::is_none)
    }

    /// Closes the unauthenticated connection in slot `index` to make room.
    fn evict(&mut self, index: usize, registry: &Registry, now: Millis) {
        self.pending.retain(|p| p.index != index);
        self.close_slot(
            index,
            registry,
            LinkError::refused(Refusal::EvictedIdle, "evicted to make room"),
            now,
        );
    }

    /// Ends a link for `error`: an alert or close_notify is attempted, the
    /// socket dropped, the reason counted and logged, a redial scheduled.
    pub(super) fn close_slot(
        &mut self,
        index: usize,
        registry: &Registry,
        error: LinkError,
        now: Millis,
    ) {
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

pub(super) fn log_end(
    peer: Option<PeerIndex>,
    addr: Option<SocketAddr>,
    error: &LinkError,
    peers: &crate::tls::PeerSet,
) {
    let name = peer.and_then(|p| peers.name(p)).map(NetworkName::as_str);
    match error {
        LinkError::Refused { refusal, detail } => {
            // One line per reason per second; the counters count them all.
            if let Some(suppressed) = super::log_limit::admit(refusal.name()) {
                tracing::warn!(
                    peer = name,
                    addr = ?addr,
                    reason = refusal.name(),
                    detail = detail.as_str(),
                    suppressed,
                    "border connection refused"
                );
            }
        }
        LinkError::Closed { reason, stream } => tracing::info!(
            peer = name,
            addr = ?addr,
            reason = reason.name(),
            stream_error = stream.map(|e| e.name()),
            "border link closed"
        ),
    }
}

/// Bytes waiting unread in `socket`'s receive queue (`FIONREAD`, which for
/// TCP is `SIOCINQ`); 0 if the kernel will not say.
fn socket_backlog(socket: &mio::net::TcpStream) -> usize {
    use std::os::fd::AsRawFd;
    let mut bytes: libc::c_int = 0;
    // SAFETY: FIONREAD writes one `c_int` through the pointer, which points
    // at a live local of that type; the descriptor is the stream's own.
    let rc = unsafe { libc::ioctl(socket.as_raw_fd(), libc::FIONREAD, &mut bytes) };
    if rc == 0 {
        usize::try_from(bytes).unwrap_or(0)
    } else {
        0
    }
}
