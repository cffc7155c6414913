//! Admission of inbound connections before they authenticate.
//!
//! Anyone can open a TCP connection to the border port, so what an
//! unauthenticated connection may hold is bounded three ways:
//!
//! - **Handshakes per source**: each source (an IPv4 address, an IPv6 /64)
//!   may start [`HandshakeRate`] handshakes per second on a worker; past it a
//!   new connection is closed at once, before any TLS work. The budgets live
//!   in a fixed table indexed by a keyed hash ([`SourceRates`]): bounded
//!   whatever the number of sources, and two sources sharing a slot only
//!   make the limit stricter.
//! - **Unauthenticated connections per source** (`max_pending_per_source`)
//!   and **in total** (`max_pending_links`, and never the slots our own
//!   dials need).
//! - **Eviction instead of refusal**: when a limit is reached, an
//!   unauthenticated connection in its scope is closed to make room (see
//!   [`victim`]). A connection that never sent a byte may go once it is
//!   [`SILENT_IDLE_MS`] old; one that is part-way through a handshake once
//!   it has sent nothing for [`TALKING_IDLE_MS`], or has not finished its
//!   handshake [`TALKING_MAX_MS`] after it was accepted (a handshake takes
//!   a few round trips; dripping a byte a second must not keep a slot). A
//!   configured peer's handshake finishes well within that, so connections
//!   that only hold slots give way to it; and a peer turned away once
//!   (every pending connection still fresh) is let in on its redial.
//! - **Configured peers' addresses** (those we dial) are exempt from the
//!   per-source budget and cap: nobody else can exhaust them for the peer.

use std::net::IpAddr;

use crate::link::Millis;

/// A connection that never sent a byte may be evicted once it is this old.
pub const SILENT_IDLE_MS: Millis = 100;

/// A connection part-way through its handshake may be evicted once this
/// long has passed since its last byte (longer than any round trip a
/// handshake waits for).
pub const TALKING_IDLE_MS: Millis = 1_000;

/// A connection part-way through its handshake may be evicted once it has
/// been this long since it was accepted, whatever it still sends.
pub const TALKING_MAX_MS: Millis = 2_000;

/// Slots of a [`SourceRates`] table.
pub const SOURCE_RATE_SLOTS: usize = 1024;

/// New handshakes a source may start on one worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HandshakeRate {
    /// Sustained, per second (at least 1).
    pub per_second: u32,
    /// At once after a quiet spell (at least 1).
    pub burst: u32,
}

impl Default for HandshakeRate {
    /// 20 per second, 40 at once: a peer gateway dials one link per pair of
    /// workers (at most [`MAX_PEER_WORKERS`](super::MAX_PEER_WORKERS)
    /// spread over our workers by the kernel), and redials with backoff.
    fn default() -> HandshakeRate {
        HandshakeRate {
            per_second: 20,
            burst: 40,
        }
    }
}

/// What rate limits and counts a source: an IPv4 address (an IPv4-mapped
/// IPv6 address counts as its IPv4 address), or an IPv6 /64, since one
/// host commonly holds a whole /64.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SourceKey(u128);

impl SourceKey {
    /// The key of connections from `ip`.
    pub fn of(ip: IpAddr) -> SourceKey {
        match ip {
            IpAddr::V4(v4) => SourceKey(u128::from(u32::from(v4))),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => SourceKey::of(IpAddr::V4(v4)),
                // Tagged so no /64 equals an IPv4 address.
                None => SourceKey((1 << 64) | (u128::from(v6) >> 64)),
            },
        }
    }
}

/// Handshake budgets of sources: GCRA token buckets (one theoretical
/// arrival time each) in a fixed table indexed by a keyed hash.
#[derive(Debug)]
pub struct SourceRates {
    rate: HandshakeRate,
    /// Theoretical arrival time of each slot's next conforming handshake, ns.
    tat_ns: Box<[u64]>,
    hasher: std::collections::hash_map::RandomState,
}

impl SourceRates {
    /// Budgets of `rate` per source.
    pub fn new(rate: HandshakeRate) -> SourceRates {
        SourceRates {
            rate,
            tat_ns: vec![0; SOURCE_RATE_SLOTS].into_boxed_slice(),
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }

    /// The slot of `source`'s budget.
    pub fn slot(&self, source: SourceKey) -> usize {
        use std::hash::BuildHasher;
        (self.hasher.hash_one(source) as usize) % SOURCE_RATE_SLOTS
    }

    /// Takes one handshake of `source`'s budget at `now`; false when it is
    /// spent.
    pub fn take(&mut self, now: Millis, source: SourceKey) -> bool {
        let slot = self.slot(source);
        let Some(tat_ns) = self.tat_ns.get_mut(slot) else {
            return false;
        };
        let interval = 1_000_000_000 / u64::from(self.rate.per_second.max(1));
        let tolerance = interval.saturating_mul(u64::from(self.rate.burst.max(1)) - 1);
        let now_ns = now.saturating_mul(1_000_000);
        let tat = (*tat_ns).max(now_ns);
        if tat.saturating_sub(tolerance) > now_ns {
            return false;
        }
        *tat_ns = tat.saturating_add(interval);
        true
    }
}

/// An unauthenticated inbound connection, as admission sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pending {
    /// Its slot.
    pub index: usize,
    /// Where it came from.
    pub source: SourceKey,
    /// It has sent at least one byte.
    pub talking: bool,
    /// When it last sent a byte, or was accepted if it never did.
    pub last_rx: Millis,
    /// When it was accepted.
    pub created: Millis,
}

impl Pending {
    fn evictable(&self, now: Millis) -> bool {
        if self.talking {
            now.saturating_sub(self.last_rx) >= TALKING_IDLE_MS
                || now.saturating_sub(self.created) >= TALKING_MAX_MS
        } else {
            now.saturating_sub(self.created) >= SILENT_IDLE_MS
        }
    }
}

/// The connection to evict from `pending` (those `in_scope`) to make room
/// at `now`: silent ones before talking ones, then the oldest; none if
/// every one is too fresh to tell from a peer's handshake.
pub fn victim(
    pending: &[Pending],
    now: Millis,
    in_scope: impl Fn(&Pending) -> bool,
) -> Option<usize> {
    pending
        .iter()
        .filter(|p| in_scope(p) && p.evictable(now))
        .min_by_key(|p| (p.talking, p.created, p.last_rx))
        .map(|p| p.index)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn a_source_gets_its_burst_then_its_rate() {
        let mut rates = SourceRates::new(HandshakeRate {
            per_second: 10,
            burst: 3,
        });
        let a = SourceKey::of(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)));
        let b = SourceKey::of(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)));
        assert!((0..3).all(|_| rates.take(1_000, a)));
        assert!(!rates.take(1_000, a), "burst spent");
        if rates.slot(a) != rates.slot(b) {
            assert!(rates.take(1_000, b), "another source has its own");
        }
        assert!(!rates.take(1_099, a));
        assert!(rates.take(1_100, a), "one interval later");
    }

    #[test]
    fn an_ipv6_source_is_its_64_and_a_mapped_ipv4_its_address() {
        let one: Ipv6Addr = "2001:db8:1:2::1".parse().unwrap();
        let same_64: Ipv6Addr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let next_64: Ipv6Addr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(
            SourceKey::of(IpAddr::V6(one)),
            SourceKey::of(IpAddr::V6(same_64))
        );
        assert_ne!(
            SourceKey::of(IpAddr::V6(one)),
            SourceKey::of(IpAddr::V6(next_64))
        );
        let v4 = Ipv4Addr::new(198, 51, 100, 7);
        assert_eq!(
            SourceKey::of(IpAddr::V6(v4.to_ipv6_mapped())),
            SourceKey::of(IpAddr::V4(v4))
        );
    }

    #[test]
    fn silent_connections_go_before_talking_ones_and_fresh_ones_stay() {
        let source = SourceKey::of(IpAddr::V4(Ipv4Addr::LOCALHOST));
        let at = |index, talking, created, last_rx| Pending {
            index,
            source,
            talking,
            last_rx,
            created,
        };
        let pending = [
            at(0, true, 0, 0),
            at(1, false, 850, 850),
            at(2, false, 800, 800),
            at(3, false, 990, 990),
            // Drips a byte every 900 ms: never a second idle.
            at(4, true, 100, 1_900),
        ];
        assert_eq!(victim(&pending, 1_000, |_| true), Some(2), "oldest silent");
        assert_eq!(victim(&pending, 1_000, |p| p.index != 2), Some(1));
        assert_eq!(
            victim(&pending, 1_000, |p| p.talking),
            Some(0),
            "a second without a byte"
        );
        assert_eq!(victim(&pending, 999, |p| p.talking), None, "still talking");
        assert_eq!(victim(&pending, 1_000, |p| p.index == 3), None, "too fresh");
        assert_eq!(victim(&pending, 2_099, |p| p.index == 4), None);
        assert_eq!(
            victim(&pending, 2_100, |p| p.index == 4),
            Some(4),
            "two seconds without finishing its handshake, however it drips"
        );
    }
}
