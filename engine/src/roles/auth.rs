//! Online-guessing defence: failed authentication is limited *before* a
//! credential is checked (docs/reliability.md, "Credential guessing").
//!
//! Two limits, each checked before the credential and charged only when a
//! check fails:
//! - **per credential holder** ([`AuthGuard`], kept in the subscriber's
//!   own account): the [`AuthPolicy::free_failures`]-th consecutive
//!   failure, and each one after, locks the holder's checks out for a time
//!   that doubles, from [`AuthPolicy::lockout_initial_ms`] up to
//!   [`AuthPolicy::lockout_max_ms`]. A success resets it. With the defaults
//!   at most 8 failed checks reach one credential in any minute, whatever
//!   the number of sources, and one an hour once the lock-out has grown;
//! - **per source network** ([`SourceGuard`], kept by the node): failures
//!   from one IPv4 /24 or IPv6 /56 draw on a token bucket, so one source
//!   guessing across many subscribers is slowed too.
//!
//! While locked out, a request is refused exactly as a wrong credential is
//! (`Unauthenticated`): the answer does not tell a locked account from a
//! wrong credential or an unknown number. The price, stated in the docs:
//! someone guessing at a subscriber's credential also locks that subscriber
//! out for the lock-out's time, and a source network shared with a
//! guesser (a carrier NAT) shares its failure budget.

use std::net::IpAddr;

use super::limit::{Bucket, Rate};
use super::Millis;

/// How devices' requests and publications are authenticated
/// (docs/wire-format.md §5.11, docs/reliability.md §4a).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceAuthPolicy {
    /// Accept the version 1 form, the secret in clear (**insecure**: one
    /// captured request gives the secret away). Off by default.
    pub insecure_credentials: bool,
    /// How far behind this role's clock a counter (the device's clock, in
    /// Unix milliseconds) may be.
    pub clock_skew_ms: u64,
    /// How far ahead of this role's clock a counter may be. Short: a
    /// counter signed before a restart is at most this far ahead of the
    /// time it was signed, so the floor is the start plus this.
    pub clock_ahead_ms: u64,
    /// The Unix time, in milliseconds, at the role's time 0.
    pub unix_ms_at_zero: u64,
    /// Counters below this are refused: the Unix time the role started at
    /// plus [`clock_ahead_ms`](Self::clock_ahead_ms), so nothing signed
    /// before a restart is taken after it.
    pub floor_unix_ms: u64,
}

impl Default for DeviceAuthPolicy {
    /// MACs only; a device's clock may be a minute behind ours, two
    /// seconds ahead.
    fn default() -> DeviceAuthPolicy {
        DeviceAuthPolicy {
            insecure_credentials: false,
            clock_skew_ms: 60_000,
            clock_ahead_ms: 2_000,
            unix_ms_at_zero: 0,
            floor_unix_ms: 0,
        }
    }
}

impl DeviceAuthPolicy {
    /// What `counter` is to the clock at `now` (role time) and the floor.
    pub fn timeliness(&self, now: Millis, counter: u64) -> Timeliness {
        let wall = self.unix_ms_at_zero.saturating_add(now);
        if counter > wall.saturating_add(self.clock_ahead_ms)
            || counter < wall.saturating_sub(self.clock_skew_ms)
        {
            return Timeliness::OutOfTime;
        }
        if counter >= self.floor_unix_ms {
            Timeliness::Timely
        } else if counter.saturating_add(self.clock_ahead_ms) >= self.floor_unix_ms {
            // Signed within the last moments before the floor: possibly
            // before a restart, possibly by a device right after it. Not
            // taken; a device asking again once the floor has passed is.
            Timeliness::BeforeFloor {
                retry_after_ms: self.floor_unix_ms - counter,
            }
        } else {
            Timeliness::OutOfTime
        }
    }
}

/// What a counter is to the role's clock ([`DeviceAuthPolicy::timeliness`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timeliness {
    /// Within the skew, at or above the floor.
    Timely,
    /// Just below the floor (within [`DeviceAuthPolicy::clock_ahead_ms`]):
    /// not taken now; a new request after `retry_after_ms` is.
    BeforeFloor {
        /// Until the floor.
        retry_after_ms: u64,
    },
    /// Too far from the clock, or well below the floor: refused.
    OutOfTime,
}

/// What a [`ReplayWindow`] makes of a counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    /// Never seen, and not too old: take it (then [`ReplayWindow::mark`]).
    New,
    /// Seen already: a retransmission or a replay.
    Repeat,
    /// Too far below the highest counter seen to tell: refused.
    Old,
}

/// Counters seen from one key, as an anti-replay window (as IPsec's and
/// DTLS's): the highest, and which of the 63 below it were seen. Sixteen
/// bytes. Requests sent together may arrive in any order within the
/// window; below it, or at or below the floor it started at, a counter is
/// [`Seen::Old`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplayWindow {
    highest: u64,
    /// Bit `i`: counter `highest - i` was seen (bit 0 is `highest`).
    seen: u64,
}

impl ReplayWindow {
    /// Counters the window remembers below and at its highest.
    pub const SPAN: u64 = 64;

    /// A window that has seen every counter below `floor`.
    pub const fn starting_at(floor: u64) -> ReplayWindow {
        ReplayWindow {
            highest: floor.saturating_sub(1),
            seen: u64::MAX,
        }
    }

    /// The highest counter seen.
    pub const fn highest(&self) -> u64 {
        self.highest
    }

    /// What `counter` is to this window.
    pub fn classify(&self, counter: u64) -> Seen {
        if counter > self.highest {
            return Seen::New;
        }
        let behind = self.highest - counter;
        if behind >= Self::SPAN {
            return Seen::Old;
        }
        if self.seen & (1 << behind) != 0 {
            Seen::Repeat
        } else {
            Seen::New
        }
    }

    /// Records `counter` as seen (a [`Seen::New`] one).
    pub fn mark(&mut self, counter: u64) {
        if counter > self.highest {
            let ahead = counter - self.highest;
            self.seen = if ahead >= Self::SPAN {
                0
            } else {
                self.seen << ahead
            } | 1;
            self.highest = counter;
        } else {
            let behind = self.highest - counter;
            if behind < Self::SPAN {
                self.seen |= 1 << behind;
            }
        }
    }
}

/// How failed checks of one credential are limited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuthPolicy {
    /// Consecutive failures before the first lock-out (a user mistyping):
    /// the one that reaches this number starts it.
    pub free_failures: u16,
    /// The first lock-out; doubled with each further failure.
    pub lockout_initial_ms: u64,
    /// The longest lock-out.
    pub lockout_max_ms: u64,
}

impl Default for AuthPolicy {
    /// The fifth consecutive failure locks out for 6 s, each further one for
    /// twice as long, up to one hour: at most 8 failed checks in any minute
    /// (5 at once, then at 6, 18 and 42 s).
    fn default() -> AuthPolicy {
        AuthPolicy {
            free_failures: 5,
            lockout_initial_ms: 6_000,
            lockout_max_ms: 3_600_000,
        }
    }
}

/// The guard of one credential: consecutive failures (counted to 255),
/// and until when its checks are locked out. Eight bytes, packed, so it
/// fits beside a presence server's ten million records; zero for a holder
/// who never failed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AuthGuard(u64);

/// Bits of [`AuthGuard`] holding the lock-out's end (ms): 2^56 ms is over
/// two million years.
const LOCKED_UNTIL_BITS: u32 = 56;
const LOCKED_UNTIL_MASK: u64 = (1 << LOCKED_UNTIL_BITS) - 1;

/// What a failed check did to the guard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// Within the free failures.
    Counted,
    /// The holder is locked out; `first` when this failure started the
    /// lock-outs (the moment to raise an alarm, once per run of failures).
    LockedOut {
        /// Whether this is the first lock-out of the run.
        first: bool,
    },
}

impl AuthGuard {
    fn locked_until(&self) -> Millis {
        self.0 & LOCKED_UNTIL_MASK
    }

    /// Consecutive failures so far (at most 255).
    pub fn failures(&self) -> u16 {
        (self.0 >> LOCKED_UNTIL_BITS) as u16
    }

    /// Whether a credential may be checked at `now`.
    pub fn admits(&self, now: Millis) -> bool {
        now >= self.locked_until()
    }

    /// A check failed at `now`.
    pub fn failed(&mut self, now: Millis, policy: &AuthPolicy) -> Failure {
        let failures = (self.failures() + 1).min(255);
        let free = policy.free_failures.clamp(1, 255);
        let (locked_until, failure) = if failures < free {
            (self.locked_until(), Failure::Counted)
        } else {
            let past = u32::from(failures - free);
            let lockout = policy
                .lockout_initial_ms
                .checked_shl(past)
                .filter(|&ms| ms >> past == policy.lockout_initial_ms)
                .unwrap_or(u64::MAX)
                .min(policy.lockout_max_ms);
            let until = now.saturating_add(lockout).min(LOCKED_UNTIL_MASK);
            (until, Failure::LockedOut { first: past == 0 })
        };
        self.0 = u64::from(failures) << LOCKED_UNTIL_BITS | locked_until;
        failure
    }

    /// A check succeeded: the run of failures is over.
    pub fn succeeded(&mut self) {
        *self = AuthGuard::default();
    }
}

/// A source network: the /24 of an IPv4 address, the /56 of an IPv6 one
/// (an IPv4-mapped IPv6 address counts as its IPv4 address).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SourcePrefix(u64);

impl SourcePrefix {
    /// The source network of `ip`.
    pub fn of(ip: IpAddr) -> SourcePrefix {
        match ip {
            IpAddr::V4(v4) => SourcePrefix(u64::from(u32::from(v4) >> 8)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => SourcePrefix::of(IpAddr::V4(v4)),
                // Tagged so no /56 equals a /24.
                None => SourcePrefix((1 << 63) | (u128::from(v6) >> 72) as u64),
            },
        }
    }
}

/// Slots of a [`SourceGuard`].
pub const SOURCE_GUARD_SLOTS: usize = 4096;

/// Failure budgets of source networks: a fixed table of token buckets
/// indexed by a keyed hash of the source prefix. Bounded whatever the
/// number of sources; two prefixes that share a slot share a budget (a
/// collision only makes the limit stricter, never looser).
#[derive(Debug)]
pub struct SourceGuard {
    rate: Rate,
    buckets: Box<[Bucket]>,
    hasher: ahash::RandomState,
}

impl SourceGuard {
    /// A guard allowing `rate` failed checks per source network.
    pub fn new(rate: Rate) -> SourceGuard {
        SourceGuard {
            rate,
            buckets: vec![Bucket::default(); SOURCE_GUARD_SLOTS].into_boxed_slice(),
            hasher: ahash::RandomState::new(),
        }
    }

    fn slot(&self, source: SourcePrefix) -> usize {
        (self.hasher.hash_one(source) as usize) % SOURCE_GUARD_SLOTS
    }

    /// Whether `source` may have a credential checked at `now` (its
    /// failure budget is not spent). Takes nothing.
    pub fn admits(&self, now: Millis, source: SourcePrefix) -> bool {
        let mut probe = self.buckets[self.slot(source)];
        probe.take(now, self.rate).is_ok()
    }

    /// A check from `source` failed at `now`: one token of its budget.
    pub fn failed(&mut self, now: Millis, source: SourcePrefix) {
        let slot = self.slot(source);
        // Spent already: the failure is refused either way.
        let _ = self.buckets[slot].take(now, self.rate);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replay_window_takes_each_counter_once_in_any_order_and_refuses_the_old() {
        let mut window = ReplayWindow::starting_at(1_001);
        assert_eq!(window.classify(1_000), Seen::Repeat, "below the floor");
        assert_eq!(window.classify(999), Seen::Repeat);
        assert_eq!(window.classify(900), Seen::Old);
        for counter in [1_010, 1_003, 1_005, 1_001] {
            assert_eq!(window.classify(counter), Seen::New);
            window.mark(counter);
            assert_eq!(window.classify(counter), Seen::Repeat);
        }
        assert_eq!(window.classify(1_004), Seen::New, "out of order, unseen");
        assert_eq!(window.highest(), 1_010);
        window.mark(1_010 + 63);
        assert_eq!(
            window.classify(1_010),
            Seen::Repeat,
            "63 behind: still known"
        );
        assert_eq!(
            window.classify(1_009),
            Seen::Old,
            "64 behind: too old to tell"
        );
        window.mark(u64::MAX);
        assert_eq!(window.classify(u64::MAX), Seen::Repeat);
        assert_eq!(window.classify(1_073), Seen::Old);
    }

    #[test]
    fn a_counter_is_timely_within_the_skew_and_at_or_above_the_floor() {
        let policy = DeviceAuthPolicy {
            unix_ms_at_zero: 1_000_000,
            clock_skew_ms: 500,
            clock_ahead_ms: 50,
            floor_unix_ms: 1_000_080,
            ..DeviceAuthPolicy::default()
        };
        let at = |counter| policy.timeliness(100, counter);
        assert_eq!(at(1_000_100), Timeliness::Timely);
        assert_eq!(at(1_000_150), Timeliness::Timely, "ahead, within bounds");
        assert_eq!(at(1_000_151), Timeliness::OutOfTime);
        assert_eq!(at(1_000_080), Timeliness::Timely, "the floor itself");
        assert_eq!(
            at(1_000_030),
            Timeliness::BeforeFloor { retry_after_ms: 50 }
        );
        assert_eq!(at(1_000_029), Timeliness::OutOfTime, "before the start");
        assert_eq!(at(u64::MAX), Timeliness::OutOfTime);
        assert_eq!(at(0), Timeliness::OutOfTime);
        let no_floor = DeviceAuthPolicy {
            floor_unix_ms: 0,
            ..policy
        };
        assert_eq!(no_floor.timeliness(100, 999_600), Timeliness::Timely);
        assert_eq!(no_floor.timeliness(100, 999_599), Timeliness::OutOfTime);
    }
    use std::net::{Ipv4Addr, Ipv6Addr};

    /// Times at which a guesser trying as fast as allowed gets a check.
    fn checks_within(policy: &AuthPolicy, until: Millis) -> Vec<Millis> {
        let mut guard = AuthGuard::default();
        let mut at = Vec::new();
        let mut now = 0;
        while now < until {
            if guard.admits(now) {
                at.push(now);
                guard.failed(now, policy);
            } else {
                now += 1;
            }
        }
        at
    }

    #[test]
    fn at_most_ten_failed_checks_reach_a_credential_in_any_minute() {
        let policy = AuthPolicy::default();
        let checks = checks_within(&policy, 3_600_000);
        for (i, &start) in checks.iter().enumerate() {
            let in_minute = checks[i..]
                .iter()
                .take_while(|&&t| t < start + 60_000)
                .count();
            assert!(
                in_minute <= 10,
                "{in_minute} checks in the minute from {start} ms"
            );
        }
        assert_eq!(checks[..5], [0, 0, 0, 0, 0], "five failures at once");
        assert_eq!(
            checks[5..9],
            [6_000, 18_000, 42_000, 90_000],
            "then doubling lock-outs"
        );
    }

    #[test]
    fn lockouts_grow_to_the_maximum_and_never_overflow() {
        let policy = AuthPolicy::default();
        let mut guard = AuthGuard::default();
        let mut now = 0;
        for _ in 0..300 {
            guard.failed(now, &policy);
            now = guard.locked_until();
        }
        let before = now;
        guard.failed(now, &policy);
        assert_eq!(guard.locked_until() - before, policy.lockout_max_ms);
        assert_eq!(guard.failures(), 255, "counted to 255");
        assert!(!guard.admits(now));
    }

    #[test]
    fn a_success_ends_the_run_of_failures() {
        let policy = AuthPolicy::default();
        let mut guard = AuthGuard::default();
        for _ in 0..4 {
            assert_eq!(guard.failed(0, &policy), Failure::Counted);
        }
        assert_eq!(guard.failed(0, &policy), Failure::LockedOut { first: true });
        assert!(!guard.admits(5_999));
        assert!(guard.admits(6_000));
        assert_eq!(
            guard.failed(6_000, &policy),
            Failure::LockedOut { first: false }
        );
        guard.succeeded();
        assert!(guard.admits(6_000));
        assert_eq!(guard.failed(6_000, &policy), Failure::Counted);
    }

    #[test]
    fn source_networks_are_slash_24_and_slash_56() {
        let v4 = |a, b, c, d| SourcePrefix::of(IpAddr::V4(Ipv4Addr::new(a, b, c, d)));
        assert_eq!(v4(192, 0, 2, 1), v4(192, 0, 2, 254));
        assert_ne!(v4(192, 0, 2, 1), v4(192, 0, 3, 1));
        let v6 = |s: &str| SourcePrefix::of(IpAddr::V6(s.parse::<Ipv6Addr>().unwrap()));
        // A /56 ends inside the fourth group: 2001:db8:0:12xx.
        assert_eq!(v6("2001:db8:0:12ab::1"), v6("2001:db8:0:12cd:1:2:3:4"));
        assert_ne!(v6("2001:db8:0:12ab::1"), v6("2001:db8:0:13ab::1"));
        assert_eq!(v6("::ffff:192.0.2.7"), v4(192, 0, 2, 1));
    }

    #[test]
    fn a_source_spends_its_budget_and_earns_it_back() {
        let rate = Rate {
            per_second: 2,
            burst: 4,
        };
        let mut guard = SourceGuard::new(rate);
        let source = SourcePrefix::of(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 9)));
        let other = SourcePrefix::of(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9)));
        for _ in 0..4 {
            assert!(guard.admits(0, source));
            guard.failed(0, source);
        }
        assert!(!guard.admits(0, source), "burst spent");
        assert!(guard.admits(0, other) || guard.slot(other) == guard.slot(source));
        assert!(guard.admits(500, source), "one token back after 1/rate");
    }
}
