//! The open-loop driver: sends requests at a fixed rate whatever the
//! answers do, and measures each answer against the moment its request was
//! *meant* to be sent (sequence number ÷ rate), so a stall on either side
//! shows as latency instead of quietly slowing the sender down (no
//! coordinated omission).
//!
//! IO habits are the appliance's own: requests packed into full datagrams,
//! `sendmmsg`/`recvmmsg` in batches of 64 ([`presence_engine::runtime::udp`]),
//! several source sockets, one thread, no allocation per request. Like a
//! device gateway that batches, the driver packs each datagram with the
//! requests of one owning worker only (`presence_codec::shard::owner` of the
//! watcher, or of the publishing subscriber): the appliance's steering then
//! delivers the whole datagram to that worker.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token};
use presence_codec::shard::owner;
use presence_codec::{FrameReader, Message};
use presence_engine::runtime::udp::{RecvBatch, SendBatch};

use super::frames::{Added, OpenFrames, FRAME_MAX};
use super::plan::{Class, Destination, OutcomeKind, Workload, CLASSES, OUTCOME_KINDS, SEQ_MASK};
use super::population::Population;

/// Where requests go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Targets {
    /// A's devices' address (queries, subscriptions).
    pub a: SocketAddr,
    /// B's devices' address (publications), if known.
    pub b: Option<SocketAddr>,
    /// Workers of A's appliance: a datagram to A holds the requests of one
    /// owner only.
    pub a_workers: u16,
    /// Workers of B's appliance, likewise.
    pub b_workers: u16,
}

impl Targets {
    /// A and B, each with one worker (no grouping).
    pub fn new(a: SocketAddr, b: Option<SocketAddr>) -> Targets {
        Targets {
            a,
            b,
            a_workers: 1,
            b_workers: 1,
        }
    }
}

/// What answers the requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Responder {
    /// Presence appliances: answers and acks.
    Appliance,
    /// The ceiling's echo: the requests themselves come back.
    Echo,
}

/// One measured step.
#[derive(Clone, Debug)]
pub struct StepSpec {
    /// Requests per second offered.
    pub rate: f64,
    /// How long requests are sent.
    pub seconds: f64,
    /// An answer later than this after its intended send time counts as a
    /// timeout; the step waits this long after its last request.
    pub timeout: Duration,
    /// What is sent.
    pub workload: Workload,
}

/// What a step measured.
#[derive(Clone, Debug)]
pub struct StepResult {
    /// Offered rate, requests/s.
    pub rate: f64,
    /// Send window, s.
    pub seconds: f64,
    /// Requests sent.
    pub sent: u64,
    /// Requests answered (once each), at any time before the step ended.
    pub answered: u64,
    /// Of those, answered before the send window closed.
    pub answered_in_window: u64,
    /// Answered later than the timeout.
    pub late: u64,
    /// Never answered.
    pub lost: u64,
    /// Second answers to one request.
    pub duplicates: u64,
    /// Answers to no request of this step (an earlier step's, or garbage).
    pub stray: u64,
    /// Notifications of subscriptions (`--subscribe`) received.
    pub notifications: u64,
    /// Answers by request class and outcome.
    pub outcomes: [[u64; OUTCOME_KINDS]; CLASSES.len()],
    /// Answers that are not what their class should get.
    pub wrong: u64,
    /// Latency from intended send time to answer, µs.
    pub latency: Histogram<u64>,
    /// The same, of the `Overloaded` answers only: how soon a shed request
    /// learns it was shed, µs.
    pub shed_latency: Histogram<u64>,
    /// How far behind its schedule the sender fell at worst, µs.
    pub send_lag_max_us: u64,
    /// Failed `sendmmsg` calls (each may have dropped a batch's head).
    pub send_errors: u64,
    /// Requests of the step never encoded (the sender fell behind its
    /// schedule past the deadline).
    pub not_sent: u64,
    /// Datagrams still queued when the step ended (a socket that would not
    /// take them); their requests are in `lost`.
    pub stuck_datagrams: u64,
    /// Requests sent and not yet answered when the send window closed: the
    /// queue the system under test carried over its end.
    pub backlog_at_end: u64,
    /// Answers in the send window that were neither shed nor wrong.
    pub good_in_window: u64,
    /// The longest interval with no answer while requests were
    /// outstanding, µs (a stall of the system under test, or of the
    /// harness's receiving); to the step's end if some never were.
    pub max_gap_us: u64,
}

impl StepResult {
    /// Answers per second within the send window, counting only answers
    /// that were neither shed nor wrong.
    pub fn throughput_qps(&self) -> f64 {
        self.good_in_window as f64 / self.seconds.max(1e-9)
    }

    /// Requests that were not answered in time (late or never).
    pub fn timeouts(&self) -> u64 {
        self.late + self.lost
    }

    /// Answers shed for load.
    pub fn overloaded(&self) -> u64 {
        self.outcomes
            .iter()
            .map(|row| row[OutcomeKind::Overloaded as usize])
            .sum()
    }

    /// Whether every planned request went out and was answered in time,
    /// once, none shed and none answered wrongly.
    pub fn all_answered(&self) -> bool {
        self.sent > 0
            && self.lost == 0
            && self.late == 0
            && self.overloaded() == 0
            && self.wrong == 0
            && self.duplicates == 0
            && self.not_sent == 0
            && self.stuck_datagrams == 0
    }

    /// Whether the rate was carried without loss:
    /// [`all_answered`](Self::all_answered); the system keeping pace, not
    /// queueing (at most [`BACKLOG_MAX_S`] worth of requests unanswered
    /// when the send window closed, so a slowly growing queue fails however
    /// long the step); and the sender on schedule (so the rate really was
    /// offered).
    pub fn clean(&self) -> bool {
        self.all_answered()
            && (self.backlog_at_end as f64) <= self.rate * BACKLOG_MAX_S
            && self.send_lag_max_us < 50_000
    }
}

/// A line of progress, once a second.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    /// Seconds since the step began.
    pub elapsed_s: f64,
    /// Offered rate.
    pub rate: f64,
    /// Sent so far.
    pub sent: u64,
    /// Answered so far.
    pub answered: u64,
    /// Answers in the last second.
    pub answered_last_second: u64,
    /// Late so far.
    pub late: u64,
    /// Shed so far.
    pub overloaded: u64,
    /// p99 so far, µs.
    pub p99_us: u64,
    /// Highest latency of the answers in the last second, µs.
    pub max_last_second_us: u64,
}

/// Why the driver could not run.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// A socket.
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    /// A step the bitmap of answers cannot cover.
    #[error("a step of {0} requests is more than the harness tracks (2^32)")]
    TooManyRequests(u64),
    /// Publications asked for without B's address.
    #[error("publications need B's device address (--target-b)")]
    NoB,
    /// The histogram.
    #[error("histogram: {0}")]
    Histogram(String),
    /// A's and B's addresses of different families (one socket set serves both).
    #[error("A's and B's device addresses must both be IPv4 or both IPv6")]
    MixedFamilies,
}

/// The driver: sockets, batches and the sequence counter.
#[derive(Debug)]
pub struct Driver<'p> {
    population: &'p Population,
    targets: Targets,
    responder: Responder,
    sockets: Vec<UdpSocket>,
    readable: Vec<bool>,
    sends: Vec<SendBatch>,
    recv: RecvBatch,
    poll: Poll,
    events: Events,
    next_socket: usize,
    next_base: u64,
    /// Open frames, one per destination and owning worker.
    frames: OpenFrames,
    timer: Timer,
}

/// A timerfd in the driver's epoll set: wakes the sender when its next
/// request is due with microsecond precision (epoll's own timeout counts
/// whole milliseconds, which would send requests up to 1 ms late).
#[derive(Debug)]
struct Timer {
    fd: std::os::fd::OwnedFd,
}

const TIMER: Token = Token(usize::MAX);

/// This thread's timer slack, restored on drop.
struct TimerSlack(libc::c_int);

impl TimerSlack {
    fn set(ns: libc::c_ulong) -> TimerSlack {
        // SAFETY: prctl(PR_GET/SET_TIMERSLACK) takes and returns plain
        // integers.
        unsafe {
            let before = libc::prctl(libc::PR_GET_TIMERSLACK);
            libc::prctl(libc::PR_SET_TIMERSLACK, ns);
            TimerSlack(before)
        }
    }
}

impl Drop for TimerSlack {
    fn drop(&mut self) {
        // SAFETY: as in `set`; a negative (failed) reading restores the default.
        unsafe {
            libc::prctl(libc::PR_SET_TIMERSLACK, self.0.max(0) as libc::c_ulong);
        }
    }
}

impl Timer {
    fn new(poll: &Poll) -> std::io::Result<Timer> {
        use std::os::fd::{AsRawFd, FromRawFd};
        // SAFETY: timerfd_create takes no pointers; a non-negative result is
        // a new descriptor we own from here on.
        let raw = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `raw` is a descriptor just created and owned by nobody else.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
        poll.registry().register(
            &mut mio::unix::SourceFd(&fd.as_raw_fd()),
            TIMER,
            Interest::READABLE,
        )?;
        Ok(Timer { fd })
    }

    /// Fires once, `after` from now.
    fn arm(&self, after: Duration) {
        use std::os::fd::AsRawFd;
        let after = after.max(Duration::from_micros(1));
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: after.as_secs() as libc::time_t,
                tv_nsec: libc::c_long::from(after.subsec_nanos() as i32),
            },
        };
        // SAFETY: timerfd_settime reads `spec` and writes nothing (the old
        // value pointer is null).
        unsafe {
            libc::timerfd_settime(self.fd.as_raw_fd(), 0, &spec, std::ptr::null_mut());
        }
    }

    /// Clears the expiry count so the next expiry wakes epoll again.
    fn clear(&self) {
        use std::os::fd::AsRawFd;
        let mut count = 0u64;
        // SAFETY: read(2) of 8 bytes into a u64 we own.
        unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                (&mut count as *mut u64).cast(),
                std::mem::size_of::<u64>(),
            );
        }
    }
}

/// Socket buffers asked for (the kernel caps them at `net.core.[rw]mem_max`).
const SOCKET_BUFFER: usize = 8 << 20;
/// A step is carried only if, when its send window closes, no more than
/// this many seconds' worth of requests are waiting for their answer.
pub const BACKLOG_MAX_S: f64 = 0.05;

/// Most requests encoded between two looks at the answers.
const BURST_MAX: u64 = 4096;
/// Shortest sleep between two bursts of requests: at high rates requests
/// go in bursts of rate × this, each still timed from its own moment (so
/// the wait counts in the latency). 250 µs, not 100: every burst wakes the
/// appliance, and a wake-up costs tens of µs of CPU on a VM; at 100,000/s
/// this cut CPU per query by 1.1 µs in the harness, 0.7 in A and 0.8 in B,
/// and p50 and p99 fell too (`BENCHMARKS.md`).
const TICK: Duration = Duration::from_micros(250);

impl<'p> Driver<'p> {
    /// A driver with `sockets` source sockets on loopback.
    pub fn new(
        population: &'p Population,
        targets: Targets,
        responder: Responder,
        sockets: usize,
    ) -> Result<Driver<'p>, DriverError> {
        if targets
            .b
            .is_some_and(|b| b.is_ipv6() != targets.a.is_ipv6())
        {
            return Err(DriverError::MixedFamilies);
        }
        let poll = Poll::new()?;
        let mut list = Vec::new();
        let mut sends = Vec::new();
        for i in 0..sockets.max(1) {
            // The unspecified address: the kernel picks the source for the
            // route to the target (a loopback source cannot reach another
            // host).
            let local: SocketAddr = if targets.a.is_ipv6() {
                (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
            } else {
                (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
            };
            let socket = socket2::Socket::new(
                socket2::Domain::for_address(local),
                socket2::Type::DGRAM,
                Some(socket2::Protocol::UDP),
            )?;
            let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
            let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
            socket.set_nonblocking(true)?;
            socket.bind(&local.into())?;
            let mut socket = UdpSocket::from_std(socket.into());
            poll.registry()
                .register(&mut socket, Token(i), Interest::READABLE)?;
            let mut batch = SendBatch::new();
            batch.enable_gso(&socket);
            sends.push(batch);
            list.push(socket);
        }
        Ok(Driver {
            population,
            targets,
            responder,
            readable: vec![true; list.len()],
            sockets: list,
            sends,
            recv: RecvBatch::new(),
            events: Events::with_capacity(256),
            next_socket: 0,
            next_base: 0,
            frames: OpenFrames::new(targets.a_workers, targets.b_workers),
            timer: Timer::new(&poll)?,
            poll,
        })
    }

    /// Lets a frame that is not full wait up to `hold` for more requests of
    /// its owner before it is sent, as a device gateway that batches does:
    /// datagrams are then as full as the rate allows, whatever the number
    /// of owners they are split by. The wait counts in the latency (it runs
    /// from each request's intended send time).
    pub fn hold_frames(&mut self, hold: Duration) {
        self.frames
            .set_hold(u64::try_from(hold.as_nanos()).unwrap_or(u64::MAX));
    }

    /// At most `requests` requests per datagram (0: as many as fit): with
    /// 1, every request is a datagram of its own, as devices that do not
    /// batch send them.
    pub fn requests_per_datagram(&mut self, requests: usize) {
        self.frames.set_per_frame(requests);
    }

    /// Sends every datagram as a message of its own (no UDP GSO runs), as
    /// devices that each send their own datagrams reach the appliance.
    pub fn disable_gso(&mut self) {
        for batch in &mut self.sends {
            batch.disable_gso();
        }
    }

    /// Turns UDP GRO on for the answers' sockets; whether the kernel took
    /// it on all of them.
    pub fn enable_gro(&mut self) -> bool {
        let mut all = true;
        for socket in &self.sockets {
            all &= self.recv.enable_gro(socket);
        }
        all
    }

    /// Runs one step and returns what it measured; `progress` is called
    /// about once a second.
    pub fn run(
        &mut self,
        spec: &StepSpec,
        progress: &mut dyn FnMut(&Progress),
    ) -> Result<StepResult, DriverError> {
        // Timer slack is how late the kernel may fire this thread's timers;
        // the default (50 µs) would blur the schedule. Set for the step
        // only: threads and processes started later inherit it.
        let _slack = TimerSlack::set(1_000);
        let rate = spec.rate.max(1.0);
        let mut total = (rate * spec.seconds).ceil().max(1.0) as u64;
        if let Some(n) = spec.workload.finite_len(self.population) {
            total = total.min(n);
        }
        if total > u64::from(u32::MAX) {
            return Err(DriverError::TooManyRequests(total));
        }
        if self.targets.b.is_none() {
            if let Workload::Mix(mix, _) = spec.workload {
                if mix.publish_pct > 0.0 {
                    return Err(DriverError::NoB);
                }
            }
            if matches!(spec.workload, Workload::AttachEvery(_)) {
                return Err(DriverError::NoB);
            }
        }
        // Nothing of an earlier step goes out in this one.
        self.frames.clear();
        for batch in &mut self.sends {
            batch.clear();
        }
        let base = self.next_base;
        // The next step's sequence numbers start past this one's, so late
        // answers to this step are told apart.
        self.next_base = (base + total + (1 << 20)) & SEQ_MASK;
        let mut state = StepState {
            base,
            total,
            ns_per_request: 1e9 / rate,
            timeout_us: u64::try_from(spec.timeout.as_micros()).unwrap_or(u64::MAX),
            window_ns: (spec.seconds * 1e9) as u64,
            seen: vec![0u64; usize::try_from(total.div_ceil(64)).unwrap_or(0)],
            result: StepResult {
                rate,
                seconds: spec.seconds,
                sent: 0,
                answered: 0,
                answered_in_window: 0,
                late: 0,
                lost: 0,
                duplicates: 0,
                stray: 0,
                notifications: 0,
                outcomes: [[0; OUTCOME_KINDS]; CLASSES.len()],
                wrong: 0,
                latency: Histogram::new_with_bounds(1, 120_000_000, 3)
                    .map_err(|e| DriverError::Histogram(e.to_string()))?,
                shed_latency: Histogram::new_with_bounds(1, 120_000_000, 3)
                    .map_err(|e| DriverError::Histogram(e.to_string()))?,
                send_lag_max_us: 0,
                send_errors: 0,
                not_sent: 0,
                stuck_datagrams: 0,
                backlog_at_end: 0,
                good_in_window: 0,
                max_gap_us: 0,
            },
            gap_from_ns: 0,
            start: Instant::now(),
            max_since_progress_us: 0,
            window_closed: false,
        };
        let mut last_progress = 0u64;
        let mut answered_at_progress = 0u64;
        let timeout_ns = u64::try_from(spec.timeout.as_nanos()).unwrap_or(u64::MAX);
        loop {
            let now_ns = state.elapsed_ns();
            let mut worked = false;
            if state.result.sent < total && !self.backlogged() {
                let due = ((now_ns as f64 / state.ns_per_request) as u64 + 1).min(total);
                if due > state.result.sent {
                    let lag_ns = now_ns
                        .saturating_sub((state.result.sent as f64 * state.ns_per_request) as u64);
                    state.result.send_lag_max_us = state.result.send_lag_max_us.max(lag_ns / 1000);
                    let upto = due.min(state.result.sent + BURST_MAX);
                    if state.result.sent == state.result.answered {
                        // Nothing outstanding until now: a gap starts here.
                        state.gap_from_ns = now_ns;
                    }
                    self.send_burst(&spec.workload, &mut state, upto);
                    worked = true;
                }
            }
            self.close_due(&mut state);
            self.flush_all(&mut state);
            worked |= self.receive(&mut state);
            let now_ns = state.elapsed_ns();
            if now_ns / 1_000_000_000 > last_progress {
                last_progress = now_ns / 1_000_000_000;
                let r = &state.result;
                progress(&Progress {
                    elapsed_s: now_ns as f64 / 1e9,
                    rate,
                    sent: r.sent,
                    answered: r.answered,
                    answered_last_second: r.answered - answered_at_progress,
                    late: r.late,
                    overloaded: r.overloaded(),
                    p99_us: r.latency.value_at_quantile(0.99),
                    max_last_second_us: std::mem::take(&mut state.max_since_progress_us),
                });
                answered_at_progress = r.answered;
            }
            if state.result.sent == total {
                // Whatever the last burst could not queue goes now.
                self.close_all(&mut state);
            }
            if !state.window_closed && now_ns >= state.window_ns {
                state.window_closed = true;
                state.result.backlog_at_end =
                    state.result.sent.saturating_sub(state.result.answered);
            }
            let queued = self.queued();
            let last_intended = (total as f64 * state.ns_per_request) as u64;
            let done = state.result.sent == total && queued == 0 && state.result.answered >= total;
            if done || now_ns > last_intended.saturating_add(timeout_ns) {
                state.result.not_sent = total - state.result.sent;
                state.result.stuck_datagrams = queued;
                if state.result.answered < state.result.sent {
                    // Some never were answered: the gap runs to the end.
                    let gap = now_ns.saturating_sub(state.gap_from_ns) / 1000;
                    state.result.max_gap_us = state.result.max_gap_us.max(gap);
                }
                break;
            }
            if !worked {
                // Sleep until the next request is due (at least a tick) or
                // an answer arrives.
                let next_due_ns = if state.result.sent < total {
                    (state.result.sent as f64 * state.ns_per_request) as u64
                } else {
                    now_ns + 5_000_000
                };
                // An open frame's hold ends no later than this wake-up.
                let next_due_ns = next_due_ns.min(self.frames.next_due_ns());
                let wait = Duration::from_nanos(next_due_ns.saturating_sub(now_ns))
                    .clamp(TICK, Duration::from_millis(5));
                self.timer.arm(wait);
                self.wait(None)?;
            } else {
                self.wait(Some(Duration::ZERO))?;
            }
        }
        let mut result = state.result;
        result.lost = result.sent.saturating_sub(result.answered);
        Ok(result)
    }

    fn backlogged(&self) -> bool {
        self.sends.iter().any(|s| s.is_full())
    }

    /// Frames not yet handed to the kernel: open frames and queued
    /// datagrams.
    fn queued(&self) -> u64 {
        let open = self.frames.open();
        (open + self.sends.iter().map(SendBatch::len).sum::<usize>()) as u64
    }

    fn wait(&mut self, timeout: Option<Duration>) -> Result<(), DriverError> {
        match self.poll.poll(&mut self.events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
        for event in self.events.iter() {
            if event.token() == TIMER {
                self.timer.clear();
            } else if let Some(r) = self.readable.get_mut(event.token().0) {
                *r = true;
            }
        }
        Ok(())
    }

    /// Encodes requests up to sequence `upto` (exclusive, step-relative)
    /// into frames, one open frame per destination and owning worker, and
    /// queues the frames, as far as the batches take them.
    fn send_burst(&mut self, workload: &Workload, state: &mut StepState, upto: u64) {
        let population = self.population;
        // One clock reading per burst: a device's counter is its clock, and
        // the population keeps each one's counters increasing.
        let now_unix_ms = presence_engine::lab::unix_ms_now();
        while state.result.sent < upto {
            let seq = state.base + state.result.sent;
            // Software-pipelined draws: the misses of the requests a few
            // ahead overlap with this one's work.
            for stage in 1..=3u8 {
                let ahead = u64::from(4 - stage) * super::plan::PREFETCH_DISTANCE;
                workload.prefetch(population, seq + ahead, stage);
            }
            let (destination, message) =
                workload.request(population, seq, state.result.sent, now_unix_ms);
            let owner = match (&message, destination) {
                (Message::ClientRequest(r), Destination::A) => {
                    owner(r.watcher, self.targets.a_workers)
                }
                (Message::Publish(p), Destination::B) => {
                    owner(p.subscriber, self.targets.b_workers)
                }
                (Message::ClientRequest(r), Destination::B) => {
                    owner(r.watcher, self.targets.b_workers)
                }
                (Message::Publish(p), Destination::A) => {
                    owner(p.subscriber, self.targets.a_workers)
                }
                _ => 0,
            };
            let now_ns = state.elapsed_ns();
            let mut added = self.frames.add(destination, owner, &message, now_ns);
            if added == Added::Full {
                if !self.close_frame(destination, owner, state) {
                    return;
                }
                added = self.frames.add(destination, owner, &message, now_ns);
            }
            if added != Added::Taken {
                return;
            }
            state.result.sent += 1;
        }
        self.close_due(state);
    }

    /// Queues the open frames whose hold is over (all of them without a
    /// hold), as far as the batches take them.
    fn close_due(&mut self, state: &mut StepState) {
        self.close_held_since(state.elapsed_ns(), state);
    }

    /// Queues every open frame, held or not.
    fn close_all(&mut self, state: &mut StepState) {
        self.close_held_since(u64::MAX, state);
    }

    /// Queues the open frames due at `now_ns`.
    fn close_held_since(&mut self, now_ns: u64, state: &mut StepState) {
        for index in 0..self.frames.len() {
            let (destination, owner) = self.frames.slot_at(index);
            if self.frames.is_due(destination, owner, now_ns) {
                self.close_frame(destination, owner, state);
            }
        }
    }

    /// Queues the open frame for `destination`'s worker `owner` on the next
    /// socket; `false` if every batch is full (the frame stays open).
    fn close_frame(&mut self, destination: Destination, owner: u16, state: &mut StepState) -> bool {
        let to = match destination {
            Destination::A => Some(self.targets.a),
            Destination::B => self.targets.b,
        };
        let Some(frame) = self.frames.bytes_mut(destination, owner) else {
            return true;
        };
        if frame.is_empty() {
            return true;
        }
        let Some(to) = to else {
            frame.clear();
            return true;
        };
        let sockets = self.sockets.len();
        for _ in 0..sockets {
            let i = self.next_socket;
            self.next_socket = (i + 1) % sockets;
            let (Some(batch), Some(socket)) = (self.sends.get_mut(i), self.sockets.get(i)) else {
                continue;
            };
            if batch.is_full() {
                match batch.flush(socket) {
                    Ok(_) => {}
                    Err(_) => state.result.send_errors += 1,
                }
            }
            if batch.push(to, frame) {
                frame.clear();
                return true;
            }
        }
        false
    }

    fn flush_all(&mut self, state: &mut StepState) {
        for (batch, socket) in self.sends.iter_mut().zip(&self.sockets) {
            if !batch.is_empty() && batch.flush(socket).is_err() {
                state.result.send_errors += 1;
            }
        }
    }

    /// Reads every readable socket dry; whether anything arrived.
    fn receive(&mut self, state: &mut StepState) -> bool {
        let mut any = false;
        for (i, socket) in self.sockets.iter().enumerate() {
            if !self.readable.get(i).copied().unwrap_or(false) {
                continue;
            }
            loop {
                let n = self.recv.recv(socket).unwrap_or(0);
                if n == 0 {
                    if let Some(r) = self.readable.get_mut(i) {
                        *r = false;
                    }
                    break;
                }
                any = true;
                let now_ns = state.elapsed_ns();
                for k in 0..n {
                    match self.recv.datagrams(k) {
                        Some((datagrams, _)) => {
                            for bytes in datagrams {
                                state.record_datagram(bytes, now_ns, self.responder);
                            }
                        }
                        None => state.result.stray += 1,
                    }
                }
                if n < self.recv.capacity() {
                    if let Some(r) = self.readable.get_mut(i) {
                        *r = false;
                    }
                    break;
                }
            }
        }
        any
    }
}

struct StepState {
    base: u64,
    total: u64,
    ns_per_request: f64,
    timeout_us: u64,
    window_ns: u64,
    seen: Vec<u64>,
    result: StepResult,
    start: Instant,
    max_since_progress_us: u64,
    window_closed: bool,
    /// Since when no answer has come while requests were outstanding.
    gap_from_ns: u64,
}

impl StepState {
    fn elapsed_ns(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn record_datagram(&mut self, bytes: &[u8], now_ns: u64, responder: Responder) {
        let Ok(reader) = FrameReader::new(bytes, FRAME_MAX) else {
            self.result.stray += 1;
            return;
        };
        for message in reader {
            let (txid, outcome) = match (responder, message) {
                (Responder::Appliance, Ok(Message::Answer(a))) => {
                    (a.txid, OutcomeKind::of_outcome(&a.outcome))
                }
                (Responder::Appliance, Ok(Message::Ack(a))) => {
                    (a.txid, OutcomeKind::of_ack(a.status))
                }
                (Responder::Echo, Ok(Message::ClientRequest(r))) => (r.txid, OutcomeKind::Echo),
                (Responder::Echo, Ok(Message::Publish(p))) => (p.txid, OutcomeKind::Echo),
                (Responder::Appliance, Ok(Message::Notify(_))) => {
                    self.result.notifications += 1;
                    continue;
                }
                _ => {
                    self.result.stray += 1;
                    continue;
                }
            };
            self.record(txid, outcome, now_ns, responder);
        }
    }

    fn record(&mut self, txid: u64, outcome: OutcomeKind, now_ns: u64, responder: Responder) {
        let seq = (txid & SEQ_MASK).wrapping_sub(self.base) & SEQ_MASK;
        let (Some(class), true) = (Class::of_txid(txid), seq < self.total) else {
            self.result.stray += 1;
            return;
        };
        let (word, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
        let Some(w) = self.seen.get_mut(word) else {
            self.result.stray += 1;
            return;
        };
        if *w & bit != 0 {
            self.result.duplicates += 1;
            return;
        }
        *w |= bit;
        let r = &mut self.result;
        r.max_gap_us = r
            .max_gap_us
            .max(now_ns.saturating_sub(self.gap_from_ns) / 1000);
        self.gap_from_ns = now_ns;
        r.answered += 1;
        if now_ns <= self.window_ns {
            r.answered_in_window += 1;
        }
        let intended_ns = (seq as f64 * self.ns_per_request) as u64;
        let latency_us = now_ns.saturating_sub(intended_ns) / 1000;
        r.latency.saturating_record(latency_us.max(1));
        if outcome == OutcomeKind::Overloaded {
            r.shed_latency.saturating_record(latency_us.max(1));
        }
        self.max_since_progress_us = self.max_since_progress_us.max(latency_us);
        if latency_us > self.timeout_us {
            r.late += 1;
        }
        if let Some(cell) = r
            .outcomes
            .get_mut(class as usize)
            .and_then(|row| row.get_mut(outcome as usize))
        {
            *cell += 1;
        }
        let right = match responder {
            Responder::Echo => outcome == OutcomeKind::Echo,
            Responder::Appliance => class.expects(outcome) || outcome == OutcomeKind::Overloaded,
        };
        if !right {
            r.wrong += 1;
        } else if outcome != OutcomeKind::Overloaded && now_ns <= self.window_ns {
            r.good_in_window += 1;
        }
    }
}
