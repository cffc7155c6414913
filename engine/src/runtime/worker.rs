//! One worker thread: its node and the IO around it. Nothing here decides
//! anything about presence; it moves bytes between the sockets, the border
//! links, the journal and the node, in the node's documented poll order.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crossbeam::channel::{Receiver, Sender};
use crossbeam::queue::ArrayQueue;
use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token};
use presence_border::endpoint::{BgEndpoint, EndpointSetup};
use presence_border::{BgCounters, BgTls, NetworkName, PeerIndex, SendError};

use super::admission::{Admit, BorderAdmission, DeviceAdmission, WORK_SLICE_US};
use super::metrics::{Metrics, RuntimeCounts};
use super::udp::{RecvBatch, SendBatch, BATCH};
use super::uring::UringUdp;
use super::xdp::{XdpPath, XdpPort};
use super::{io_error, shard_identity, Shared, SharedSubscribers, StartError};
use crate::config::{ApplianceConfig, IoBackend};
use crate::journal::{Durability, JournalEntry, JournalWriter};
use crate::node::{Destination, Node, NodeConfig, SubscriberChange};
use crate::roles::Hss;
use crate::table::{NetworkId, NetworkNames, NumberingTable};

pub(super) const WAKER: Token = Token(0);
/// The client socket, or with io_uring its ring, or with AF_XDP the port.
const UDP: Token = Token(1);
/// With AF_XDP: the client socket, which takes what the port does not.
const UDP_SOCKET: Token = Token(2);
const BORDER_TOKENS: usize = 3;
/// Hand-offs a worker takes from its inbox per turn.
const INBOX_BUDGET: usize = 4096;
/// Datagram batches a worker reads per turn before turning to other work.
const RECV_BATCHES_PER_TURN: usize = 16;
/// Batches of device datagrams a worker holds read but not yet served
/// (about 140 KB each; with UDP GRO 1 MiB each, and only the first
/// [`STAGED_BATCHES_GRO`] used): past them the socket buffer holds the rest.
const STAGED_BATCHES: usize = 32;
/// Staged batches with GRO: each entry may hold a run of up to 64
/// datagrams, so fewer entries hold as many.
const STAGED_BATCHES_GRO: usize = 8;
/// How often a worker publishes its counters.
const REPORT_MS: u64 = 100;
/// How often a worker runs border timers.
const TICK_MS: u64 = 10;
/// How long a clean stop waits for border peers to answer close_notify.
const STOP_LINGER_MS: u64 = 2_000;

/// What the appliance asks of a worker.
pub(super) enum Command {
    /// Apply provisioning changes against a candidate HSS (reload, step 2).
    Provision {
        changes: Vec<SubscriberChange>,
        hss: Arc<Hss>,
        done: Sender<()>,
    },
    /// New TLS material, dial list and peer networks (reload, step 3).
    Border {
        tls: Arc<BgTls>,
        dial: Vec<(NetworkName, SocketAddr)>,
        peers: Vec<NetworkId>,
    },
    /// Stop cleanly.
    Stop,
}

/// What building a worker takes.
pub(super) struct WorkerSetup<'a> {
    pub(super) index: usize,
    pub(super) poll: Poll,
    pub(super) udp: std::net::UdpSocket,
    pub(super) tcp: std::net::TcpListener,
    pub(super) node_config: NodeConfig,
    pub(super) table: Arc<NumberingTable>,
    pub(super) hss: Arc<Hss>,
    pub(super) subscribers: &'a SharedSubscribers,
    pub(super) recent: &'a [JournalEntry],
    /// The stream marks of the last window.
    pub(super) recent_marks: &'a [crate::journal::StreamMark],
    pub(super) config: &'a ApplianceConfig,
    pub(super) tls: Arc<BgTls>,
    pub(super) shared: Arc<Shared>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) border_counters: Arc<BgCounters>,
    pub(super) commands: Receiver<Command>,
    /// With `[io] backend = "xdp"`: the program attached for the appliance.
    pub(super) xdp: Option<Arc<XdpPath>>,
}

/// The border endpoint's peers (of its current TLS generation) as
/// numbering-table networks, and back: rebuilt when the generation
/// changes, so no frame pays a name lookup.
#[derive(Debug, Default)]
struct PeerMap {
    origins: Vec<Option<NetworkId>>,
    peers: ahash::AHashMap<NetworkId, PeerIndex>,
    /// The worker count each peer last told us (via its links' hellos).
    workers: Vec<Option<u16>>,
}

impl PeerMap {
    fn build(tls: &BgTls, names: &NetworkNames) -> PeerMap {
        let set = tls.peers();
        let mut map = PeerMap::default();
        for i in 0..set.len() {
            let Ok(index) = u16::try_from(i) else { break };
            let network = set
                .name(PeerIndex(index))
                .and_then(|n| names.id(n.as_str()));
            map.origins.push(network);
            map.workers.push(None);
            if let Some(network) = network {
                map.peers.insert(network, PeerIndex(index));
            }
        }
        map
    }
}

/// Hands each inbound border frame to the node with its origin network,
/// or, when the link's socket held more than the queue limit of work
/// ([`BorderAdmission`]), sheds its queries.
struct BorderInbound<'a> {
    node: &'a mut Node,
    origins: &'a [Option<NetworkId>],
    now_us: u64,
    admission: &'a BorderAdmission,
    /// For the link being read: answer its queries `Overloaded`, retry
    /// after this many ms.
    shedding: Option<u32>,
    /// Frame bytes served (not shed) this turn.
    served_bytes: usize,
    /// Frames shed this turn.
    shed_frames: usize,
    /// The deepest socket backlog seen this turn, bytes.
    backlog_max: usize,
}

impl<'a> BorderInbound<'a> {
    fn new(
        node: &'a mut Node,
        origins: &'a [Option<NetworkId>],
        now_us: u64,
        admission: &'a BorderAdmission,
    ) -> BorderInbound<'a> {
        BorderInbound {
            node,
            origins,
            now_us,
            admission,
            shedding: None,
            served_bytes: 0,
            shed_frames: 0,
            backlog_max: 0,
        }
    }
}

impl presence_border::Deliver for BorderInbound<'_> {
    fn deliver(&mut self, peer: PeerIndex, frame: &[u8]) -> bool {
        let Some(origin) = self.origins.get(peer.get()).copied().flatten() else {
            return false;
        };
        match self.shedding {
            Some(retry_after_ms) => {
                self.node
                    .shed_border_frame(self.now_us, origin, frame, retry_after_ms);
                self.shed_frames += 1;
            }
            None => {
                self.node.handle_border_frame(self.now_us, origin, frame);
                self.served_bytes = self.served_bytes.saturating_add(frame.len());
            }
        }
        true
    }

    fn backlog(&mut self, _peer: PeerIndex, socket_bytes: usize) {
        self.backlog_max = self.backlog_max.max(socket_bytes);
        self.shedding = self.admission.decide(socket_bytes);
    }
}

pub(super) struct Worker {
    index: usize,
    poll: Poll,
    udp: UdpSocket,
    /// Device datagrams read and admitted, not yet served.
    staged: Staged,
    admission: DeviceAdmission,
    /// Admission of peers' frames by their link's socket backlog.
    border_admission: BorderAdmission,
    /// The deepest border socket backlog seen since the last report, bytes.
    border_backlog_max: usize,
    send: SendBatch,
    /// With `[io] backend = "uring"`: the client socket's io_uring, which
    /// then does its receiving and sending.
    uring: Option<UringUdp>,
    /// With `[io] backend = "xdp"`: this worker's AF_XDP socket (workers
    /// past the interface's receive queues have none).
    xdp: Option<XdpPort>,
    /// With AF_XDP: the client socket said it has datagrams (its own
    /// token), and no read since found it dry.
    socket_ready: bool,
    endpoint: BgEndpoint,
    node: Node,
    journal: JournalWriter,
    /// The durability last reported to the node.
    durability: Durability,
    shared: Arc<Shared>,
    metrics: Arc<Metrics>,
    commands: Receiver<Command>,
    pin: bool,
    /// The last read stopped at its budget with datagrams left.
    udp_more: bool,
    peer_map: PeerMap,
    /// Workers whose inbox got messages this turn (woken once at its end).
    wake: Vec<bool>,
    /// Datagrams the socket would not take.
    udp_send_errors: u64,
    /// Event-loop turns so far.
    turns: u64,
}

impl Worker {
    pub(super) fn build(setup: WorkerSetup<'_>) -> Result<Worker, StartError> {
        let WorkerSetup {
            index,
            poll,
            udp,
            tcp,
            node_config,
            table,
            hss,
            subscribers,
            recent,
            recent_marks,
            config,
            tls,
            shared,
            metrics,
            border_counters,
            commands,
            xdp,
        } = setup;
        let clock = shared.clock;
        let waker = shared
            .wakers
            .get(index)
            .cloned()
            .ok_or_else(|| io_error("worker")(std::io::Error::other("no waker")))?;
        let journal = JournalWriter::open(
            &config.cdr_directory,
            &config.network,
            node_config.worker,
            node_config.first_record_seq,
            config.journal,
            clock.journal_time(),
            move || {
                let _ = waker.wake();
            },
        )
        .map_err(|e| StartError::Journal(Box::new(e)))?;
        let mut node = Node::new(node_config, &table, &hss);
        let now_us = clock.now_us();
        node.provision(now_us, subscribers, &hss);
        node.rebuild_windows(now_us, recent, recent_marks);
        let endpoint = BgEndpoint::new(
            EndpointSetup {
                tls: tls.clone(),
                settings: config.border.settings,
                listener: Some(tcp),
                peers: config.border.dial_list(),
                token_base: BORDER_TOKENS,
                counters: border_counters,
                shard: shard_identity(index, shared.workers),
            },
            poll.registry(),
            now_us / 1000,
        )
        .map_err(io_error("border endpoint"))?;
        let staged = Staged::new(&udp, config.io_backend);
        let uring = if config.io_backend.wants_uring() {
            match UringUdp::new(&udp) {
                Ok(ring) => Some(ring),
                Err(e) => {
                    if index == 0 {
                        tracing::warn!(
                            error = %e,
                            "[io] backend = \"uring\": this kernel refuses io_uring; using mmsg"
                        );
                    }
                    None
                }
            }
        } else {
            None
        };
        let xdp = match (&xdp, u32::try_from(index)) {
            (Some(path), Ok(queue)) if queue < path.queues() => match XdpPort::open(path, queue) {
                Ok(port) => Some(port),
                Err(e) => {
                    tracing::warn!(
                        worker = index,
                        error = %e,
                        "[io] backend = \"xdp\": no AF_XDP socket; this worker uses mmsg"
                    );
                    None
                }
            },
            _ => None,
        };
        let mut worker = Worker {
            index,
            udp: UdpSocket::from_std(udp),
            staged,
            admission: DeviceAdmission::new(shared.device_queue_ns),
            border_admission: BorderAdmission::new(shared.border_queue_ns),
            border_backlog_max: 0,
            send: SendBatch::new(),
            uring,
            xdp,
            socket_ready: true,
            endpoint,
            durability: journal_durability_start(&journal),
            journal,
            peer_map: PeerMap::build(&tls, &shared.names.load()),
            wake: vec![false; shared.workers],
            node,
            poll,
            metrics,
            commands,
            pin: config.pin_workers,
            udp_more: false,
            udp_send_errors: 0,
            turns: 0,
            shared,
        };
        // With io_uring the ring, not the socket, says when datagrams wait;
        // with AF_XDP the port and the socket both do.
        match (&worker.uring, &worker.xdp) {
            (Some(ring), _) => worker.poll.registry().register(
                &mut mio::unix::SourceFd(&ring.fd()),
                UDP,
                Interest::READABLE,
            ),
            (None, Some(port)) => worker
                .poll
                .registry()
                .register(
                    &mut mio::unix::SourceFd(&port.fd()),
                    UDP,
                    Interest::READABLE,
                )
                .and_then(|()| {
                    worker
                        .poll
                        .registry()
                        .register(&mut worker.udp, UDP_SOCKET, Interest::READABLE)
                }),
            (None, None) => {
                worker
                    .poll
                    .registry()
                    .register(&mut worker.udp, UDP, Interest::READABLE)
            }
        }
        .map_err(io_error("registering the client socket"))?;
        let gso = worker.send.enable_gso(&worker.udp);
        if index == 0 {
            tracing::info!(gso, "UDP segmentation offload");
        }
        Ok(worker)
    }

    pub(super) fn index(&self) -> usize {
        self.index
    }

    fn now_us(&self) -> u64 {
        self.shared.clock.now_us()
    }

    pub(super) fn run(mut self) {
        if self.pin {
            pin_to_cpu(self.index);
        }
        // The ring's receive runs in the task that armed it: this thread.
        if let Some(Err(e)) = self.uring.as_mut().map(UringUdp::arm) {
            tracing::warn!(
                worker = self.index,
                error = %e,
                "the io_uring receive cannot start; using mmsg"
            );
            if let Some(ring) = self.uring.take() {
                let registry = self.poll.registry();
                let _ = registry.deregister(&mut mio::unix::SourceFd(&ring.fd()));
                if let Err(e) = registry.register(&mut self.udp, UDP, Interest::READABLE) {
                    tracing::error!(worker = self.index, error = %e, "registering the client socket");
                }
            }
        }
        let mut events = Events::with_capacity(1024);
        let mut last_tick = 0;
        let mut last_report = 0;
        // A clean stop has two phases: draining (no new device requests;
        // the WA's transactions in flight get their answers or time out),
        // then closing (border links closed gracefully, records synced).
        let mut draining_since: Option<u64> = None;
        let mut stopping_since: Option<u64> = None;
        let mut closed = false;
        loop {
            self.turns += 1;
            let now_ms = self.now_us() / 1000;
            // Datagrams a flush took off the ring's queue make it no
            // longer readable: they wait in the ring, which says so.
            // (Not while draining: nothing more is read then.)
            let ring_more = draining_since.is_none()
                && (self.uring.as_mut().is_some_and(UringUdp::has_more)
                    || self.xdp.as_ref().is_some_and(XdpPort::has_more));
            let timeout = if self.shared.poll_mode
                || self.udp_more
                || ring_more
                || self.endpoint.has_ready()
                || !self
                    .shared
                    .inboxes
                    .get(self.index)
                    .is_none_or(ArrayQueue::is_empty)
            {
                Duration::ZERO
            } else if self.node.holding() {
                // Answers wait for the journal's syncer, which wakes us; a
                // short nap bounds the wait should a wake-up be missed.
                Duration::from_millis(1)
            } else {
                // The node's next timer, or a sync group commit holds back.
                let next_us = match (self.node.poll_timeout(), self.journal.sync_due_us()) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                let until_timer = next_us.map_or(TICK_MS, |at| (at / 1000).saturating_sub(now_ms));
                Duration::from_millis(until_timer.clamp(1, TICK_MS))
            };
            // With io_uring an interrupted wait is the ring's receive
            // work waking this thread: its completions are posted now.
            let interrupted = self.poll.poll(&mut events, Some(timeout)).is_err();
            if interrupted && self.uring.is_none() {
                continue;
            }
            let now_us = self.now_us();
            let now_ms = now_us / 1000;
            let mut udp_ready = self.shared.poll_mode || self.udp_more || interrupted || ring_more;
            let mut inbound = BorderInbound::new(
                &mut self.node,
                &self.peer_map.origins,
                now_us,
                &self.border_admission,
            );
            for event in events.iter() {
                match event.token() {
                    WAKER => {}
                    UDP => udp_ready = true,
                    UDP_SOCKET => {
                        self.socket_ready = true;
                        udp_ready = true;
                    }
                    token => {
                        self.endpoint.handle_event(
                            self.poll.registry(),
                            token,
                            now_ms,
                            &mut inbound,
                        );
                    }
                }
            }
            self.endpoint
                .poll_ready(self.poll.registry(), now_ms, &mut inbound);
            let (served_bytes, shed_frames, backlog) = (
                inbound.served_bytes,
                inbound.shed_frames,
                inbound.backlog_max,
            );
            self.border_backlog_max = self.border_backlog_max.max(backlog);
            if shed_frames == 0 {
                // A sample of the border's service time: TLS and the
                // node's work on the frames this turn read.
                let elapsed_ns = self.now_us().saturating_sub(now_us).saturating_mul(1000);
                self.border_admission.served(served_bytes, elapsed_ns);
            }
            if udp_ready && draining_since.is_none() {
                self.read_datagrams();
            }
            // Staged datagrams are served even while draining: they were
            // read, so their devices get an answer.
            self.serve_staged();
            if draining_since.is_some() {
                // No more reads: only staged work keeps the loop from
                // sleeping.
                self.udp_more = self.staged.len > 0;
            }
            // Serving took up to a slice: timers and hand-offs see the time
            // after it.
            let now_us = self.now_us();
            self.read_inbox(now_us);
            if self.node.poll_timeout().is_some_and(|at| at <= now_us) {
                self.node.handle_timeout(now_us);
            }
            let stop = self.read_commands(now_us);
            if stop && draining_since.is_none() {
                draining_since = Some(now_ms);
            }
            // Draining is collective: every worker keeps serving its inbox
            // and its links until no worker has a transaction in flight (or
            // the deadline passed), so no worker strands another's query.
            if let (Some(since), None) = (draining_since, stopping_since) {
                if let Some(mine) = self.shared.stop_pending.get(self.index) {
                    // Staged datagrams are queries not yet begun: the drain
                    // waits for them as for those in flight.
                    mine.store(self.node.pending() + self.staged.waiting, Ordering::Relaxed);
                }
                let all_drained = self
                    .shared
                    .stop_pending
                    .iter()
                    .all(|p| p.load(Ordering::Relaxed) == 0);
                let overdue =
                    now_ms.saturating_sub(since) > u64::from(self.shared.deadline_ms) + 100;
                if all_drained || overdue {
                    stopping_since = Some(now_ms);
                    self.endpoint.begin_shutdown(self.poll.registry(), now_ms);
                }
            }
            self.write_out();
            if now_ms.saturating_sub(last_tick) >= TICK_MS {
                self.endpoint.tick(self.poll.registry(), now_ms);
                self.learn_peer_workers();
                last_tick = now_ms;
            }
            if now_ms.saturating_sub(last_report) >= REPORT_MS || stopping_since.is_some() {
                self.report();
                last_report = now_ms;
            }
            if let Some(since) = stopping_since {
                let lingered = now_ms.saturating_sub(since) >= STOP_LINGER_MS;
                if (self.endpoint.is_idle() || lingered) && !closed {
                    closed = true;
                    self.shared.closed_workers.fetch_add(1, Ordering::SeqCst);
                }
                // Leave together (or at the hard limit): until then a closed
                // worker still takes what others hand it.
                let everyone =
                    self.shared.closed_workers.load(Ordering::SeqCst) >= self.shared.workers;
                if (closed && everyone) || now_ms.saturating_sub(since) >= 2 * STOP_LINGER_MS {
                    self.endpoint.shutdown(self.poll.registry(), now_ms);
                    if !self.journal.close(self.shared.clock.journal_time()) {
                        tracing::error!(
                            worker = self.index,
                            "charge records not all durable at stop"
                        );
                    }
                    self.report();
                    return;
                }
            }
        }
    }

    /// Reads the client socket dry (up to [`RECV_BATCHES_PER_TURN`]
    /// batches, and while staging has room), deciding for each datagram at
    /// once ([`DeviceAdmission`]): staged to be served, or answered
    /// `Overloaded` now because the work ahead of it would keep it past
    /// `[limits] device_queue_ms`. If the budget or the staging room runs
    /// out with datagrams left, `udp_more` makes the next turn read again
    /// (edge-triggered readiness will not say so).
    fn read_datagrams(&mut self) {
        self.udp_more = false;
        for _ in 0..RECV_BATCHES_PER_TURN {
            // With staging full the queue is past its depth: read into the
            // spare batch and shed all of it now, rather than let it age in
            // the socket (unless shedding is off).
            let (slot, overflow) = match self.staged.free_slot() {
                Some(slot) => (slot, false),
                None if self.admission.sheds() => (self.staged.spare(), true),
                None => {
                    self.udp_more = true;
                    return;
                }
            };
            let batch = &mut self.staged.batches[slot];
            let capacity = batch.capacity();
            let received = match (self.uring.as_mut(), self.xdp.as_mut()) {
                (Some(ring), _) => ring.recv_into(batch),
                // The port first; the socket when the port is dry and the
                // socket said it has datagrams.
                (None, Some(port)) => match port.recv_into(batch) {
                    0 if self.socket_ready => {
                        let read = batch.recv(&self.udp);
                        if read.as_ref().map_or(true, |n| *n < capacity) {
                            self.socket_ready = false;
                        }
                        read
                    }
                    n => Ok(n),
                },
                (None, None) => batch.recv(&self.udp),
            };
            let n = match received {
                Ok(n) => n,
                Err(_) => return,
            };
            if n == 0 {
                // With io_uring, receive work or datagrams a flush reaped
                // may still be waiting.
                self.udp_more = self.uring.as_mut().is_some_and(UringUdp::has_more);
                return;
            }
            // With AF_XDP a short read from the port may leave datagrams in
            // the socket.
            let source_more = self.uring.as_mut().is_some_and(UringUdp::has_more)
                || self.xdp.as_ref().is_some_and(XdpPort::has_more)
                || (self.xdp.is_some() && self.socket_ready);
            let now_us = self.shared.clock.now_us();
            let now_unix_ns = if self.shared.device_queue_ns > 0 {
                unix_ns_now()
            } else {
                0
            };
            let batch = &self.staged.batches[slot];
            let mut shed = 0u64;
            for i in 0..n {
                // One datagram, or with GRO a run of them from one source.
                let Some((datagrams, from)) = batch.datagrams(i) else {
                    shed |= 1 << i;
                    continue;
                };
                let queued_ns = batch
                    .arrival_unix_ns(i)
                    .map_or(0, |at| now_unix_ns.saturating_sub(at));
                let admit = if overflow {
                    self.admission.staging_full(queued_ns, self.staged.waiting)
                } else {
                    self.admission.decide(queued_ns, self.staged.waiting)
                };
                match admit {
                    Admit::Stage => self.staged.waiting += datagrams.count(),
                    Admit::Shed { retry_after_ms } => {
                        // Past capacity: answered now, unchecked, rather
                        // than served after its device gave up.
                        for bytes in datagrams {
                            self.node.shed_datagram(now_us, from, bytes, retry_after_ms);
                        }
                        shed |= 1 << i;
                    }
                }
            }
            if !overflow {
                self.staged.push(shed);
            }
            if shed != 0 {
                self.write_out();
            }
            // Fewer than a batch: the socket is dry, unless the ring still
            // holds datagrams (its descriptor will not say so again).
            if n < capacity && !source_more {
                return;
            }
        }
        self.udp_more = true;
    }

    /// Serves staged datagrams, oldest first, for about
    /// [`WORK_SLICE_US`]; what is left waits for the next turn, after the
    /// socket was read (and its excess shed) again.
    fn serve_staged(&mut self) {
        if self.staged.len == 0 {
            return;
        }
        let started_us = self.now_us();
        let mut now_us = started_us;
        let mut served = 0usize;
        let mut since_look = 0usize;
        while let Some((slot, i, shed)) = self.staged.next() {
            since_look += 1;
            if !shed {
                if let Some((datagrams, from)) = self.staged.batches[slot].datagrams(i) {
                    for bytes in datagrams {
                        self.node.handle_datagram(now_us, from, bytes);
                        served += 1;
                        since_look += 1;
                        self.staged.waiting = self.staged.waiting.saturating_sub(1);
                    }
                }
            }
            // Every batch's worth: send what is ready, look at the clock.
            if since_look >= BATCH {
                since_look = 0;
                self.write_out();
                now_us = self.now_us();
                if now_us.saturating_sub(started_us) >= WORK_SLICE_US {
                    break;
                }
            }
        }
        self.write_out();
        let elapsed_ns = self
            .now_us()
            .saturating_sub(started_us)
            .saturating_mul(1000);
        self.admission.served(served, elapsed_ns);
        if self.staged.len > 0 {
            self.udp_more = true;
        }
    }

    fn read_inbox(&mut self, now_us: u64) {
        let Some(inbox) = self.shared.inboxes.get(self.index) else {
            return;
        };
        for _ in 0..INBOX_BUDGET {
            let Some(message) = inbox.pop() else {
                break;
            };
            self.node.handle_cross(now_us, message);
        }
    }

    /// Returns whether a stop was asked for.
    fn read_commands(&mut self, now_us: u64) -> bool {
        let mut stop = false;
        while let Ok(command) = self.commands.try_recv() {
            match command {
                Command::Provision { changes, hss, done } => {
                    self.node.apply_provisioning(now_us, &changes, &hss);
                    let _ = done.send(());
                }
                Command::Border { tls, dial, peers } => {
                    self.endpoint
                        .reload(tls, &dial, self.poll.registry(), now_us / 1000);
                    self.peer_map = PeerMap::build(self.endpoint.tls(), &self.shared.names.load());
                    self.node.set_peers(&peers);
                }
                Command::Stop => stop = true,
            }
        }
        stop
    }

    /// The worker counts peers' links told (their hellos), for the node's
    /// choice of the link that ends at a target's owner.
    fn learn_peer_workers(&mut self) {
        for (i, known) in self.peer_map.workers.iter_mut().enumerate() {
            let Ok(peer) = u16::try_from(i).map(PeerIndex) else {
                break;
            };
            let told = self.endpoint.peer_workers(peer);
            if told != *known {
                *known = told;
                if let (Some(workers), Some(Some(network))) = (told, self.peer_map.origins.get(i)) {
                    self.node.set_peer_workers(*network, workers);
                }
            }
        }
    }

    /// Moves what the node produced, in its poll order: the journal's
    /// durability in, then datagrams and border frames, hand-offs, records
    /// and their sync; and wakes the workers handed messages.
    fn write_out(&mut self) {
        let now_us = self.now_us();
        let durability = self.journal.durability();
        if durability != self.durability {
            self.durability = durability;
            self.node.handle_durable(now_us, durability);
        }
        // A refused frame or hand-off makes the node answer for it, which
        // may produce more to send: loop until nothing is left.
        loop {
            while let Some(out) = self.node.poll_transmit() {
                match out.to {
                    Destination::Device(to) => {
                        if self.send.is_full() && self.flush_send().is_err() {
                            self.udp_send_errors += 1;
                        }
                        if !self.send.push(to, &out.frame) {
                            self.udp_send_errors += 1;
                        }
                        self.node.recycle(out.frame);
                    }
                    Destination::Border(dest) => {
                        let sent = match self.peer_map.peers.get(&dest.network) {
                            Some(peer) => self.endpoint.send(*peer, dest.worker, &out.frame),
                            None => Err(SendError::UnknownPeer),
                        };
                        match sent {
                            Ok(()) => self.node.recycle(out.frame),
                            Err(_) => self.node.handle_border_refused(now_us, dest, out.frame),
                        }
                    }
                }
            }
            let mut refused = false;
            while let Some((to, message)) = self.node.poll_cross() {
                let pushed = match self.shared.inboxes.get(usize::from(to)) {
                    Some(inbox) => inbox.push(message),
                    None => Err(message),
                };
                match pushed {
                    Ok(()) => {
                        if let Some(w) = self.wake.get_mut(usize::from(to)) {
                            *w = true;
                        }
                    }
                    Err(message) => {
                        self.node.handle_cross_refused(now_us, to, message);
                        refused = true;
                    }
                }
            }
            if !refused && !self.node.has_transmit() {
                break;
            }
        }
        while !self.send.is_empty() {
            match self.flush_send() {
                Ok(0) => break,
                Ok(_) => {}
                Err(_) => self.udp_send_errors += 1,
            }
        }
        if let Some(Err(_)) = self.xdp.as_mut().map(XdpPort::poll_tx) {
            self.udp_send_errors += 1;
        }
        self.node.poll_journal(&mut self.journal);
        let time = self.shared.clock.journal_time();
        if self.journal.end_turn(time) == crate::journal::SyncState::Failed {
            self.journal.try_recover(time);
        }
        let durability = self.journal.durability();
        if durability != self.durability {
            self.durability = durability;
            self.node.handle_durable(now_us, durability);
        }
        self.endpoint.flush(self.poll.registry(), now_us / 1000);
        for (worker, wake) in self.wake.iter_mut().enumerate() {
            if std::mem::take(wake) {
                if let Some(waker) = self.shared.wakers.get(worker) {
                    let _ = waker.wake();
                }
            }
        }
    }

    /// Sends what the send batch holds, through io_uring, the AF_XDP port
    /// or `sendmmsg`.
    fn flush_send(&mut self) -> std::io::Result<usize> {
        match (self.uring.as_mut(), self.xdp.as_mut()) {
            (Some(ring), _) => ring.flush(&mut self.send),
            (None, Some(port)) => port.flush(&mut self.send, &self.udp),
            (None, None) => self.send.flush(&self.udp),
        }
    }

    fn report(&mut self) {
        let inbox = self
            .shared
            .inboxes
            .get(self.index)
            .map_or(0, ArrayQueue::len);
        let runtime = RuntimeCounts {
            inbox,
            cdr_written: self.journal.records_written,
            udp_send_errors: self.udp_send_errors,
            turns: self.turns,
            staged: self.staged.waiting,
            service_ns: self.admission.ns_per_datagram(),
            border_service_ps: self.border_admission.ps_per_byte(),
            border_backlog: std::mem::take(&mut self.border_backlog_max),
            io_backend: if self.uring.is_some() {
                "uring"
            } else if self.xdp.is_some() {
                "xdp"
            } else if self.staged.gro {
                "gro"
            } else {
                "mmsg"
            },
            xdp: self.xdp.as_ref().map(XdpPort::counts).unwrap_or_default(),
        };
        self.metrics.publish(self.index, &mut self.node, runtime);
    }
}

/// Device datagrams read from the client socket and not yet served: a
/// ring of [`STAGED_BATCHES`] receive batches, oldest first, each with a
/// mask of the datagrams already answered when read (shed, or not a
/// datagram to serve), and one spare batch outside the ring. Bounded: when
/// every batch is staged, what is read goes into the spare batch and is
/// shed whole (or, with shedding off, waits in the socket).
struct Staged {
    /// Batches in use: [`STAGED_BATCHES`], or with GRO [`STAGED_BATCHES_GRO`].
    limit: usize,
    /// Whether the batches receive with UDP GRO.
    gro: bool,
    batches: Box<[RecvBatch]>,
    shed: [u64; STAGED_BATCHES],
    /// The oldest staged batch.
    head: usize,
    /// Staged batches.
    len: usize,
    /// The next datagram of the head batch.
    cursor: usize,
    /// Datagrams staged and not yet served (the shed ones not counted).
    waiting: usize,
}

impl Staged {
    /// Staging for `socket`, with UDP GRO if `backend` asks for it and the
    /// kernel has it.
    fn new(socket: &std::net::UdpSocket, backend: IoBackend) -> Staged {
        let mut first = RecvBatch::new();
        let gro = backend.wants_gro() && first.enable_gro(socket);
        if backend.wants_gro() && !gro {
            tracing::warn!(
                "[io] backend = \"gro\": this kernel refuses UDP GRO; receiving with mmsg"
            );
        }
        let limit = if gro {
            STAGED_BATCHES_GRO
        } else {
            STAGED_BATCHES
        };
        // `limit` staged batches and the spare one.
        let batches = std::iter::once(first)
            .chain((1..=limit).map(|_| {
                let mut batch = RecvBatch::new();
                if gro {
                    batch.enable_gro(socket);
                }
                batch
            }))
            .collect::<Box<[RecvBatch]>>();
        Staged {
            limit,
            gro,
            batches,
            shed: [0; STAGED_BATCHES],
            head: 0,
            len: 0,
            cursor: 0,
            waiting: 0,
        }
    }

    /// The spare batch: read into when staging is full, and shed whole.
    fn spare(&self) -> usize {
        self.limit
    }

    /// The batch the next read goes into, if staging has room.
    fn free_slot(&self) -> Option<usize> {
        (self.len < self.limit).then_some((self.head + self.len) % self.limit)
    }

    /// Stages the batch just read into [`free_slot`](Self::free_slot),
    /// with the mask of its entries already answered; a batch answered
    /// whole when read is not staged (its slot is read into again).
    fn push(&mut self, shed: u64) {
        if let Some(slot) = self.free_slot() {
            let count = self.batches[slot].len();
            let all = if count >= 64 {
                u64::MAX
            } else {
                (1u64 << count) - 1
            };
            if shed & all == all {
                return;
            }
            self.shed[slot] = shed;
            self.len += 1;
        }
    }

    /// The next staged entry (its batch, its index, whether it was
    /// answered when read), taken off the queue; the caller counts its
    /// datagrams off `waiting` as it serves them.
    fn next(&mut self) -> Option<(usize, usize, bool)> {
        while self.len > 0 {
            let slot = self.head;
            let count = self.batches[slot].len();
            if self.cursor < count {
                let i = self.cursor;
                self.cursor += 1;
                let shed = self.shed[slot] & (1 << i) != 0;
                return Some((slot, i, shed));
            }
            self.head = (self.head + 1) % self.limit;
            self.len -= 1;
            self.cursor = 0;
        }
        None
    }
}

/// The wall clock in Unix ns (what the kernel stamps datagrams with).
fn unix_ns_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The journal's state at start: everything recovered is durable.
fn journal_durability_start(journal: &JournalWriter) -> Durability {
    Durability {
        durable_seq: journal.next_seq() - 1,
        synced_ticket: 0,
        healthy: true,
    }
}

fn pin_to_cpu(index: usize) {
    // SAFETY: `set` is a plain bit set on the stack; sched_getaffinity and
    // sched_setaffinity read and write `size_of::<cpu_set_t>()` bytes of it.
    // A failure is harmless (the worker is not pinned).
    unsafe {
        let mut allowed: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut allowed) != 0 {
            return;
        }
        // The index-th CPU this process may run on (cycling if fewer).
        let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &allowed))
            .collect();
        let Some(&cpu) = cpus.get(index % cpus.len().max(1)) else {
            return;
        };
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        let _ = libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `count` datagrams from `from` waiting at `to`.
    fn send(from: &std::net::UdpSocket, to: &std::net::UdpSocket, count: u8) {
        for i in 0..count {
            from.send_to(&[i; 8], to.local_addr().unwrap()).unwrap();
        }
    }

    /// A sender and a non-blocking receiver on loopback.
    fn sockets() -> (std::net::UdpSocket, std::net::UdpSocket) {
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        b.set_nonblocking(true).unwrap();
        (a, b)
    }

    /// Reads into batch `slot` until it holds `want` entries.
    fn read_into(staged: &mut Staged, slot: usize, socket: &std::net::UdpSocket, want: usize) {
        for _ in 0..200 {
            if staged.batches[slot].recv(socket).unwrap() == want {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!("{want} datagrams did not arrive");
    }

    /// Reads into the next free slot until it holds `want` entries.
    fn read(staged: &mut Staged, socket: &std::net::UdpSocket, want: usize) {
        let slot = staged.free_slot().expect("room");
        read_into(staged, slot, socket, want);
    }

    #[test]
    fn staged_entries_come_out_in_order_and_entries_shed_when_read_are_skipped() {
        let (a, b) = sockets();
        let mut staged = Staged::new(&b, IoBackend::Mmsg);
        send(&a, &b, 4);
        read(&mut staged, &b, 4);
        staged.push(0b0101);
        let mut seen = Vec::new();
        while let Some((slot, i, shed)) = staged.next() {
            let first = staged.batches[slot].get(i).unwrap().0[0];
            seen.push((first, shed));
        }
        assert_eq!(seen, [(0, true), (1, false), (2, true), (3, false)]);
        assert_eq!(staged.len, 0, "a served batch leaves the ring");
    }

    #[test]
    fn a_batch_shed_whole_when_read_takes_no_room_so_reading_never_stops() {
        // Past capacity every entry of a batch may be shed as it is read;
        // staged, such batches would fill the ring with nothing to serve
        // and the worker would stop reading its socket for good.
        let (a, b) = sockets();
        let mut staged = Staged::new(&b, IoBackend::Mmsg);
        for _ in 0..(STAGED_BATCHES * 2) {
            send(&a, &b, 3);
            read(&mut staged, &b, 3);
            staged.push(0b111);
            assert!(staged.free_slot().is_some());
        }
        assert_eq!(staged.len, 0);
        assert!(staged.next().is_none());
    }

    #[test]
    fn the_spare_batch_is_outside_the_ring_so_shedding_into_it_never_touches_staged_work() {
        let (a, b) = sockets();
        let mut staged = Staged::new(&b, IoBackend::Mmsg);
        assert_eq!(staged.batches.len(), STAGED_BATCHES + 1);
        for _ in 0..STAGED_BATCHES {
            assert_ne!(staged.free_slot(), Some(staged.spare()));
            send(&a, &b, 1);
            read(&mut staged, &b, 1);
            staged.push(0);
        }
        assert_eq!(staged.free_slot(), None, "full");
        // Reading into the spare batch leaves every staged entry as it was.
        send(&a, &b, 2);
        let spare = staged.spare();
        read_into(&mut staged, spare, &b, 2);
        let mut served = 0;
        while let Some((_, _, shed)) = staged.next() {
            assert!(!shed);
            served += 1;
        }
        assert_eq!(served, STAGED_BATCHES);
    }
}
