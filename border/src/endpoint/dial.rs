//! Dialing: the dial targets kept for each peer (one link per peer worker
//! once the peer's hello tells how many), the local port that aims a link at
//! one peer worker, and redial backoff with jitter.
//!
//! Invariant (shard-aware links, see the parent module):
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

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::RangeInclusive;

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use socket2::{Domain, Protocol, Socket, Type};

use super::drive::log_end;
use super::{BgEndpoint, Slot, MAX_PEER_WORKERS};
use crate::counters::BgCounters;
use crate::identity::{NetworkName, PeerIndex};
use crate::link::{Direction, Link, Millis};

/// Local ports a link aimed at one peer worker is dialed from (Linux's
/// default ephemeral range).
pub const AIMED_PORTS: RangeInclusive<u16> = 32_768..=60_999;

/// Ports tried, each chosen at random, before an aimed dial gives up.
const AIMED_PORT_TRIES: usize = 8;

/// One link we keep dialed to a peer: before the peer's worker count is
/// known, the only one; after, the one for peer worker `k` (its index).
#[derive(Clone, Copy, Debug)]
pub(super) struct DialTarget {
    /// The slot of the dialed link serving this target, if one exists.
    pub(super) current: Option<usize>,
    /// When to dial next, if no current link.
    pub(super) next_dial: Millis,
    pub(super) backoff: Millis,
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
pub(super) struct Dialer {
    pub(super) network: NetworkName,
    pub(super) addr: Option<SocketAddr>,
    /// The peer's worker count, from the hello that last changed it.
    pub(super) workers: Option<u16>,
    /// One target until `workers` is known, then one per peer worker below
    /// `min(workers, MAX_PEER_WORKERS)`.
    pub(super) targets: Vec<DialTarget>,
    /// A link dialed before `workers` was known (learnt from another link)
    /// and not yet established: it is placed by the hello it brings, and no
    /// other dial to this peer starts before, so that two links do not go
    /// to one worker.
    pub(super) blind: Option<usize>,
}

impl Dialer {
    pub(super) fn new(
        network: NetworkName,
        addr: Option<SocketAddr>,
        now: Millis,
        backoff: Millis,
    ) -> Dialer {
        Dialer {
            network,
            addr,
            workers: None,
            targets: vec![DialTarget::due(now, backoff)],
            blind: None,
        }
    }

    /// The target `index` serves.
    pub(super) fn target_of(&self, index: usize) -> Option<usize> {
        self.targets.iter().position(|t| t.current == Some(index))
    }

    /// A target without a link: `preferred` if it is one, else the first.
    pub(super) fn free_target(&self, preferred: Option<u16>) -> Option<usize> {
        preferred
            .map(usize::from)
            .filter(|&k| self.targets.get(k).is_some_and(|t| t.current.is_none()))
            .or_else(|| self.targets.iter().position(|t| t.current.is_none()))
    }

    /// Whether `index` is one of this dialer's links (a target's or the
    /// blind one).
    pub(super) fn holds(&self, index: usize) -> bool {
        self.blind == Some(index) || self.target_of(index).is_some()
    }
}

impl BgEndpoint {
    /// `peer`'s hello says it has `workers` workers, not what we knew: one
    /// dial target per worker from now on (capped), and our live dialed
    /// links placed on them: each by the worker its hello names, else the
    /// one it was aimed at, else any free one; one still handshaking that
    /// was dialed blind waits for its hello ([`Dialer::blind`]). A link left
    /// over (the count shrank) stays up, serving the worker it reached, and
    /// is not redialed. Targets left free are dialed now.
    pub(super) fn learn_peer_workers(&mut self, peer: PeerIndex, workers: u16, now: Millis) {
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

    /// Dials `peer`'s target `target`: once the peer's worker count `n` is
    /// known, from a local port whose residue modulo `n` is `target` (when
    /// `n` > 1), so that the peer's listener steers it to that worker.
    pub(super) fn dial(
        &mut self,
        peer: PeerIndex,
        target: usize,
        registry: &Registry,
        now: Millis,
    ) {
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
    pub(super) fn schedule_redial(&mut self, peer: PeerIndex, target: usize, now: Millis) {
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
