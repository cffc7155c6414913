//! Rate limits: token buckets in their virtual-scheduling form (GCRA, the
//! generic cell rate algorithm of ATM and of most API gateways).
//!
//! A bucket of `burst` tokens refilled at `per_second` is kept as one number,
//! the theoretical arrival time (TAT) of the next conforming request: a
//! request at `now` conforms if `TAT - burst × interval ≤ now`, and then
//! moves TAT one interval on from `max(TAT, now)`. A refused request learns
//! exactly when the next one would conform: its retry-after. Eight bytes per
//! bucket, no timer, no refill loop; the same decisions as a token bucket.

use super::Millis;

/// A rate and burst, as configured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    /// Requests per second, sustained (at least 1).
    pub per_second: u32,
    /// Requests that may arrive at once after a quiet spell (at least 1).
    pub burst: u32,
}

impl Rate {
    /// Nanoseconds between conforming requests (exact to 1 ns up to the
    /// highest rate a u32 can state).
    fn interval_ns(self) -> u64 {
        1_000_000_000 / u64::from(self.per_second.max(1))
    }

    /// This rate shared over `shares` independent limiters (workers): each
    /// gets its part, at least 1 per second and a burst of at least 1.
    pub fn share(self, shares: usize) -> Rate {
        let n = u32::try_from(shares.max(1)).unwrap_or(u32::MAX);
        Rate {
            per_second: (self.per_second / n).max(1),
            burst: (self.burst / n).max(1),
        }
    }
}

/// One bucket: the theoretical arrival time of the next conforming request,
/// in nanoseconds on the caller's clock.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bucket {
    tat_ns: u64,
}

impl Bucket {
    /// Takes one token at `now`; `Err(retry_after_ms)` (at least 1) if none
    /// is left.
    pub fn take(&mut self, now: Millis, rate: Rate) -> Result<(), u32> {
        let now_ns = now.saturating_mul(1_000_000);
        let interval = rate.interval_ns();
        let tolerance = interval.saturating_mul(u64::from(rate.burst.max(1)) - 1);
        let tat = self.tat_ns.max(now_ns);
        let earliest = tat.saturating_sub(tolerance);
        if earliest > now_ns {
            let wait_ms = (earliest - now_ns).div_ceil(1_000_000).max(1);
            return Err(u32::try_from(wait_ms).unwrap_or(u32::MAX));
        }
        self.tat_ns = tat.saturating_add(interval);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let rate = Rate {
            per_second: 1000,
            burst: 10,
        };
        let mut bucket = Bucket::default();
        for _ in 0..10 {
            assert_eq!(bucket.take(5, rate), Ok(()));
        }
        assert_eq!(
            bucket.take(5, rate),
            Err(1),
            "empty: the next token in 1 ms"
        );
        // Over one second: 1000 more, not 1001.
        let granted = (6..1006)
            .flat_map(|ms| std::iter::repeat_n(ms, 5))
            .filter(|&ms| bucket.take(ms, rate).is_ok())
            .count();
        assert!((999..=1001).contains(&granted), "{granted}");
    }

    #[test]
    fn retry_after_says_when_the_next_request_conforms() {
        let rate = Rate {
            per_second: 2,
            burst: 1,
        };
        let mut bucket = Bucket::default();
        assert_eq!(bucket.take(1_000, rate), Ok(()));
        let Err(wait) = bucket.take(1_100, rate) else {
            panic!("conformed too early")
        };
        assert_eq!(wait, 400);
        assert!(bucket.take(1_100 + u64::from(wait) - 1, rate).is_err());
        assert_eq!(bucket.take(1_100 + u64::from(wait), rate), Ok(()));
    }

    #[test]
    fn a_rate_shared_over_workers_keeps_at_least_one() {
        let rate = Rate {
            per_second: 10,
            burst: 3,
        };
        assert_eq!(
            rate.share(4),
            Rate {
                per_second: 2,
                burst: 1
            }
        );
        assert_eq!(rate.share(100).per_second, 1);
    }
}
