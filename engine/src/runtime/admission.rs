//! Admission at the device port: shed by projected queueing delay, at once.
//!
//! A worker reads its client socket dry into a bounded staging queue every
//! turn and works the queue in slices of [`WORK_SLICE_US`], so while the
//! queue has room no datagram waits in the kernel's socket buffer for
//! longer than about one slice. When it is full (2,048 datagrams with
//! `mmsg`: about 10 ms of work for one small request each, far more for
//! packed frames), the queue is past its depth: what is read then goes
//! into a spare batch and is answered `Overloaded` at once, so a full
//! queue never leaves datagrams to age in the socket.
//! Each datagram read is admitted or shed there and then: its *projected*
//! wait is what it already waited in the socket (the kernel's arrival
//! stamp) plus the work staged ahead of it (datagrams × the measured
//! service time per datagram). Past `[limits] device_queue_ms` it is
//! answered `Overloaded` at once, with that projection as its retry-after,
//! instead of being served after its device gave up, or shed only after it
//! waited the whole limit (the rule before this module: a shed answer then
//! came 20 ms late). Admitted datagrams are served within the limit (as far
//! as the estimate holds: it counts the device work only, not border
//! answers arriving meanwhile, so a worker busy with both serves later).
//!
//! Pure arithmetic, no clock of its own: the worker passes times in.

/// How long one turn works staged datagrams before it reads the socket
/// again (and sheds what arrived past capacity), µs.
pub(crate) const WORK_SLICE_US: u64 = 500;

/// A slice that served fewer datagrams is no sample of the service time:
/// its fixed costs (the turn's sends, a TLS write) divided by one or two
/// datagrams would overstate it many times, and a burst after a light
/// spell would then be shed for a backlog the worker clears in time.
const SAMPLE_DATAGRAMS_MIN: usize = 32;

/// What to do with a datagram just read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Admit {
    /// Stage it: it will be served within the limit.
    Stage,
    /// Answer it `Overloaded` now, retry after this many ms.
    Shed {
        /// The projected wait, ms (at least 1).
        retry_after_ms: u32,
    },
}

/// The device port's admission control: the limit and the measured
/// service time.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DeviceAdmission {
    /// Longest projected wait admitted, ns; 0 admits everything.
    limit_ns: u64,
    /// Service time per datagram, ns, a moving average (1/8 per sample).
    /// Starts at 0: nothing is shed for work not yet measured.
    ns_per_datagram: u64,
}

impl DeviceAdmission {
    /// Admission with a limit of `limit_ns` (0: off).
    pub(crate) fn new(limit_ns: u64) -> DeviceAdmission {
        DeviceAdmission {
            limit_ns,
            ns_per_datagram: 0,
        }
    }

    /// Decides for a datagram that waited `queued_ns` in the socket, with
    /// `staged_ahead` datagrams staged and not yet served.
    pub(crate) fn decide(&self, queued_ns: u64, staged_ahead: usize) -> Admit {
        let projected_ns = self.projected_ns(queued_ns, staged_ahead);
        if self.limit_ns == 0 || projected_ns <= self.limit_ns {
            Admit::Stage
        } else {
            shed_after(projected_ns)
        }
    }

    /// For a datagram read while staging is full: shed, with its projected
    /// wait as retry-after.
    pub(crate) fn staging_full(&self, queued_ns: u64, staged_ahead: usize) -> Admit {
        shed_after(self.projected_ns(queued_ns, staged_ahead))
    }

    /// Time in the socket plus the staged work ahead, ns.
    fn projected_ns(&self, queued_ns: u64, staged_ahead: usize) -> u64 {
        let ahead_ns = self
            .ns_per_datagram
            .saturating_mul(u64::try_from(staged_ahead).unwrap_or(u64::MAX));
        queued_ns.saturating_add(ahead_ns)
    }

    /// Whether shedding is on at all (a limit is set).
    pub(crate) fn sheds(&self) -> bool {
        self.limit_ns > 0
    }

    /// `datagrams` were served in `elapsed_ns` (a sample once there are
    /// [`SAMPLE_DATAGRAMS_MIN`] of them).
    pub(crate) fn served(&mut self, datagrams: usize, elapsed_ns: u64) {
        let Some(sample) = u64::try_from(datagrams)
            .ok()
            .filter(|&d| d >= SAMPLE_DATAGRAMS_MIN as u64)
            .map(|d| elapsed_ns / d)
        else {
            return;
        };
        self.ns_per_datagram = if self.ns_per_datagram == 0 {
            sample
        } else {
            (self.ns_per_datagram.saturating_mul(7)).saturating_add(sample) / 8
        };
    }

    /// The measured service time per datagram, ns.
    pub(crate) fn ns_per_datagram(&self) -> u64 {
        self.ns_per_datagram
    }
}

/// Shed, retry after `projected_ns` (in whole ms, at least 1).
fn shed_after(projected_ns: u64) -> Admit {
    let retry_after_ms = u32::try_from(projected_ns / 1_000_000).unwrap_or(u32::MAX);
    Admit::Shed {
        retry_after_ms: retry_after_ms.max(1),
    }
}

/// Border work sampled in one turn below this many frame bytes is no
/// sample of the service time (its fixed costs would dominate).
const SAMPLE_BYTES_MIN: usize = 16 * 1024;

/// Admission at the border's receiving side: shed by projected queueing
/// delay, before the frames are read.
///
/// A peer's frames wait in the link's TCP receive queue, which the kernel
/// sizes on its own (megabytes on a fast path), and TCP keeps no arrival
/// time. So the wait is projected from depth and service time: before a
/// link is read, the bytes in its socket's receive queue (`FIONREAD`,
/// [`presence_border::Deliver::backlog`]) times the measured service time
/// per frame byte (TLS and the node's work on border frames, a moving
/// average) is how long the queue takes to drain, which in a steady
/// backlog is how long the frames now at its head waited. Past
/// `[limits] border_queue_ms`, each query in the frames read in that
/// service is answered `Overloaded` back to the peer at once, unread by the
/// IGPS, HSS or presence servers (nothing charged), with the projection as
/// retry-after; answers in them are handled as usual (they end our own
/// transactions). Shedding costs a fraction of serving, so the queue drains
/// and admission resumes. The estimate counts border work only, not the
/// device work of the same worker, as [`DeviceAdmission`]'s counts device
/// work only.
///
/// Pure arithmetic, no clock of its own: the worker passes times in.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BorderAdmission {
    /// Longest projected wait admitted, ns; 0 admits everything.
    limit_ns: u64,
    /// Service time per frame byte, ps (a frame byte takes tens of ns),
    /// a moving average (1/8 per sample). Starts at 0: nothing is shed for
    /// work not yet measured.
    ps_per_byte: u64,
}

impl BorderAdmission {
    /// Admission with a limit of `limit_ns` (0: off).
    pub(crate) fn new(limit_ns: u64) -> BorderAdmission {
        BorderAdmission {
            limit_ns,
            ps_per_byte: 0,
        }
    }

    /// Decides for the frames about to be read from a link whose socket
    /// holds `socket_bytes` unread: `None` to serve them, or `Some(ms)` to
    /// answer their queries `Overloaded`, retry after `ms` (at least 1).
    pub(crate) fn decide(&self, socket_bytes: usize) -> Option<u32> {
        if self.limit_ns == 0 {
            return None;
        }
        let projected_ns = self
            .ps_per_byte
            .saturating_mul(u64::try_from(socket_bytes).unwrap_or(u64::MAX))
            / 1000;
        if projected_ns <= self.limit_ns {
            return None;
        }
        match shed_after(projected_ns) {
            Admit::Shed { retry_after_ms } => Some(retry_after_ms),
            Admit::Stage => None,
        }
    }

    /// `bytes` of border frames were served (none shed) in `elapsed_ns`
    /// (a sample once there are [`SAMPLE_BYTES_MIN`] of them).
    pub(crate) fn served(&mut self, bytes: usize, elapsed_ns: u64) {
        let Some(sample) = u64::try_from(bytes)
            .ok()
            .filter(|&b| b >= SAMPLE_BYTES_MIN as u64)
            .map(|b| elapsed_ns.saturating_mul(1000) / b)
        else {
            return;
        };
        self.ps_per_byte = if self.ps_per_byte == 0 {
            sample
        } else {
            // A turn the thread spent descheduled is no measure of the
            // work: one sample moves the average by an eighth of at most
            // twice itself, so a real slowdown still shows within a few
            // turns but one stall does not start shedding.
            let sample = sample.min(self.ps_per_byte.saturating_mul(2));
            (self.ps_per_byte.saturating_mul(7)).saturating_add(sample) / 8
        };
    }

    /// The measured service time per frame byte, ps.
    pub(crate) fn ps_per_byte(&self) -> u64 {
        self.ps_per_byte
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn off_admits_everything() {
        let mut a = DeviceAdmission::new(0);
        a.served(1, 10 * MS);
        assert_eq!(a.decide(u64::MAX, usize::MAX), Admit::Stage);
    }

    #[test]
    fn nothing_is_shed_before_service_is_measured_unless_it_already_waited_too_long() {
        let a = DeviceAdmission::new(20 * MS);
        assert_eq!(a.decide(0, 1_000_000), Admit::Stage);
        assert_eq!(a.decide(25 * MS, 0), Admit::Shed { retry_after_ms: 25 });
    }

    #[test]
    fn a_datagram_behind_more_work_than_the_limit_is_shed_at_once_with_the_projection() {
        let mut a = DeviceAdmission::new(20 * MS);
        // 100 µs per datagram: 200 staged datagrams are the whole limit.
        a.served(40, 4 * MS);
        assert_eq!(a.ns_per_datagram(), 100_000);
        assert_eq!(a.decide(0, 199), Admit::Stage);
        assert_eq!(a.decide(0, 200), Admit::Stage, "exactly the limit");
        assert_eq!(a.decide(0, 201), Admit::Shed { retry_after_ms: 20 });
        // Time already spent in the socket counts too.
        assert_eq!(a.decide(5 * MS, 150), Admit::Stage);
        assert_eq!(a.decide(6 * MS, 150), Admit::Shed { retry_after_ms: 21 });
    }

    #[test]
    fn a_datagram_with_no_room_in_staging_is_shed_with_its_projected_wait() {
        let mut a = DeviceAdmission::new(20 * MS);
        a.served(40, 4 * MS);
        assert!(a.sheds());
        assert_eq!(
            a.staging_full(2 * MS, 100),
            Admit::Shed { retry_after_ms: 12 }
        );
        assert_eq!(a.staging_full(0, 0), Admit::Shed { retry_after_ms: 1 });
        assert!(!DeviceAdmission::new(0).sheds());
    }

    #[test]
    fn the_service_time_follows_the_work_as_a_moving_average() {
        let mut a = DeviceAdmission::new(20 * MS);
        a.served(32, 32 * 80_000);
        for _ in 0..64 {
            a.served(40, 40 * 10_000);
        }
        assert!(
            (10_000..11_000).contains(&a.ns_per_datagram()),
            "{}",
            a.ns_per_datagram()
        );
        a.served(0, 5 * MS);
        a.served(2, 5 * MS);
        assert!(
            a.ns_per_datagram() < 11_000,
            "a slice of a datagram or two is no sample: its fixed costs would dominate"
        );
    }

    #[test]
    fn border_frames_are_served_until_the_socket_holds_more_than_the_limit_of_work() {
        let mut a = BorderAdmission::new(20 * MS);
        assert_eq!(
            a.decide(64 << 20),
            None,
            "nothing is shed before the service time is measured"
        );
        // 50 ns per byte: 400,000 bytes are the whole 20 ms.
        a.served(100_000, 5 * MS);
        assert_eq!(a.ps_per_byte(), 50_000);
        assert_eq!(a.decide(0), None);
        assert_eq!(a.decide(400_000), None, "exactly the limit");
        assert_eq!(a.decide(400_020), Some(20));
        assert_eq!(a.decide(2_000_000), Some(100));
    }

    #[test]
    fn border_admission_off_serves_everything_and_small_turns_are_no_sample() {
        let mut off = BorderAdmission::new(0);
        off.served(100_000, 5 * MS);
        assert_eq!(off.decide(usize::MAX), None);
        let mut a = BorderAdmission::new(20 * MS);
        a.served(1_000, 5 * MS);
        assert_eq!(a.ps_per_byte(), 0, "one small frame's fixed costs");
        a.served(100_000, 5 * MS);
        for _ in 0..64 {
            a.served(100_000, MS);
        }
        assert!(
            (10_000..11_000).contains(&a.ps_per_byte()),
            "{}",
            a.ps_per_byte()
        );
    }

    #[test]
    fn one_descheduled_turn_moves_the_border_service_time_by_an_eighth_at_most() {
        let mut a = BorderAdmission::new(20 * MS);
        a.served(100_000, 2 * MS);
        assert_eq!(a.ps_per_byte(), 20_000);
        // 100 ms off the CPU during a turn of 16 KiB: no real work costs that.
        a.served(16 * 1024, 100 * MS);
        assert_eq!(a.ps_per_byte(), 22_500, "(7 × 20,000 + 2 × 20,000) / 8");
        // A real slowdown still shows within a few turns.
        for _ in 0..24 {
            a.served(100_000, 10 * MS);
        }
        assert!(a.ps_per_byte() > 90_000, "{}", a.ps_per_byte());
    }
}
