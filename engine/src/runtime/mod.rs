//! The appliance runtime: one event-loop thread per core around the sans-IO
//! roles (`docs/architecture.md`, "The runtime").
//!
//! Each worker owns, with no lock shared on the per-message path:
//! - a UDP socket on the client address, bound with `SO_REUSEPORT` (the
//!   kernel spreads devices over the workers), read and written in batches
//!   of up to 64 datagrams per `recvmmsg`/`sendmmsg`;
//! - a border-gateway endpoint (its own TLS link to every peer network, its
//!   share of the links peers dial, on the same `SO_REUSEPORT` port);
//! - a shard (`shard.rs`): its WA instance, OGPS, IGPS and slices of the
//!   presence servers;
//! - a bounded inbox (`crossbeam::queue::ArrayQueue`) other workers push
//!   messages for its state into, with one wake-up per sending worker per
//!   loop turn, not one per message.
//!
//! Per loop turn a worker: polls (or, in poll mode, spins), drains its
//! sockets and inbox, runs the roles, then writes: one `sendmmsg` for the
//! devices, one batch of TLS records per border link, one `write` of charge
//! records, and one wake-up per worker it handed messages to.

pub mod metrics;
mod shard;
pub mod steer;
pub mod udp;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use crossbeam::channel::{self, Receiver, Sender};
use crossbeam::queue::ArrayQueue;
use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token, Waker};
use presence_border::endpoint::{bind_listener, BgEndpoint, EndpointSetup};
use presence_border::{BgCounters, BgTls, NetworkName, PeerIndex, SendError};
use presence_codec::{Msisdn, Outcome};

use crate::config::{self, ApplianceConfig, ConfigError, Subscribers};
use crate::roles::{Addr, Hss, Transmit};
use crate::sim::SimNetwork;
use crate::table::{NetworkId, NetworkNames, NumberingTable, Prefix};

use self::metrics::{Metrics, WorkerReport};
use self::shard::Shard;
use self::udp::{RecvBatch, SendBatch};

/// Largest message carried between workers (envelope and body).
pub(crate) const CROSS_MESSAGE_MAX: usize = presence_codec::BODY_LEN_MAX + 2;
/// Messages one worker's inbox holds.
pub const INBOX_CAPACITY: usize = 64 * 1024;
/// Messages a worker takes from its inbox per turn.
const INBOX_BUDGET: usize = 4096;
/// Datagram batches a worker reads per turn before turning to other work.
const RECV_BATCHES_PER_TURN: usize = 16;

const WAKER: Token = Token(0);
const UDP: Token = Token(1);
const BORDER_TOKENS: usize = 2;

/// Microseconds on the process's monotonic clock.
pub(crate) fn now_us() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let start = START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// A message handed from one worker to another. (The variants differ in
/// size on purpose: the inbox is a fixed array of these, allocated once,
/// and a boxed variant would allocate per message.)
#[derive(Clone, Copy)]
#[allow(clippy::large_enum_variant)]
pub(crate) enum CrossMsg {
    /// Role output for state the other worker owns.
    Role { from: Addr, transmit: Transmit },
    /// A device's message (it borrows from the datagram, so it travels
    /// encoded).
    Device {
        from: SocketAddr,
        arrived_us: u64,
        len: u16,
        bytes: [u8; CROSS_MESSAGE_MAX],
    },
}

/// Called with each step of a traced query (the demo prints them).
pub type TraceSink = Arc<dyn Fn(u8, String) + Send + Sync>;

/// What every worker reads and nobody writes on the per-message path.
pub(crate) struct Shared {
    pub(crate) network: NetworkId,
    pub(crate) workers: usize,
    pub(crate) table: Arc<NumberingTable>,
    pub(crate) names: ArcSwap<NetworkNames>,
    pub(crate) hss: Arc<Hss>,
    pub(crate) own_ranges: Vec<Prefix>,
    pub(crate) foreign_ranges: Vec<Prefix>,
    pub(crate) deadline_ms: u16,
    pub(crate) query_cost: u64,
    pub(crate) pending_max: usize,
    pub(crate) boot_time_s: u64,
    /// Peer networks on the border, with their names.
    pub(crate) peer_networks: ArcSwap<Vec<(NetworkId, NetworkName)>>,
    pub(crate) inboxes: Vec<ArrayQueue<CrossMsg>>,
    pub(crate) wakers: Vec<Arc<Waker>>,
    pub(crate) trace: Option<Msisdn>,
    trace_sink: Option<TraceSink>,
    unix_ms_at_start: u64,
    started: Instant,
    pub(crate) poll_mode: bool,
    pub(crate) window_slots: usize,
    /// Rate limits (`[limits]`); fixed while running.
    pub(crate) limits: crate::config::Limits,
    /// Largest frame sent to a peer's BG.
    pub(crate) border_frame_max: usize,
    /// Each worker's pending WA transactions, published every turn while
    /// stopping (the drain ends when all are zero).
    stop_pending: Vec<AtomicUsize>,
    /// Workers whose border links have closed.
    closed_workers: AtomicUsize,
}

impl Shared {
    pub(crate) fn network_name(&self, id: NetworkId) -> String {
        self.names.load().name(id).to_string()
    }

    pub(crate) fn unix_ms_at(&self, millis: u64) -> u64 {
        self.unix_ms_at_start.saturating_add(millis)
    }

    pub(crate) fn trace_step(&self, step: u8, text: String) {
        if let Some(sink) = &self.trace_sink {
            sink(step, text);
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// Per-worker counters, kept locally and published every report interval.
#[derive(Debug, Default, Clone)]
pub(crate) struct WorkerStats {
    pub(crate) requests: u64,
    pub(crate) publications: u64,
    pub(crate) bad_datagrams: u64,
    pub(crate) bad_messages: u64,
    pub(crate) unknown_subscriber: u64,
    pub(crate) border_queries_in: u64,
    pub(crate) border_answers_in: u64,
    pub(crate) bad_border_frames: u64,
    pub(crate) border_frames_out: u64,
    pub(crate) border_shed_queries: u64,
    pub(crate) border_shed_other: u64,
    pub(crate) charged: u64,
    pub(crate) shed: u64,
    pub(crate) cross: u64,
    pub(crate) no_device_addr: u64,
    pub(crate) dropped_loops: u64,
    pub(crate) udp_send_errors: u64,
    /// Final answers to devices by outcome: attached, detached, not
    /// available, overloaded, error.
    pub(crate) outcomes: [u64; 5],
    /// Spoofing alarms, in [`metrics::ALARMS`] order (the first is the
    /// IGPS's, filled in at report time).
    pub(crate) alarms: [u64; metrics::ALARMS.len()],
    pub(crate) latency: Option<hdrhistogram::Histogram<u64>>,
    /// Per peer network: queries in, answers in, frames out, frames refused.
    pub(crate) peers: Vec<(NetworkId, [u64; 4])>,
}

impl WorkerStats {
    pub(crate) fn count_outcome(&mut self, outcome: &Outcome) {
        let i = match outcome {
            Outcome::Attached { .. } => 0,
            Outcome::Detached { .. } => 1,
            Outcome::NotAvailable => 2,
            Outcome::Overloaded { .. } => 3,
            Outcome::Error(_) => 4,
        };
        if let Some(n) = self.outcomes.get_mut(i) {
            *n += 1;
        }
    }

    pub(crate) fn peer_event(&mut self, network: NetworkId, event: usize) {
        let index = match self.peers.iter().position(|(n, _)| *n == network) {
            Some(i) => i,
            None => {
                self.peers.push((network, [0; 4]));
                self.peers.len() - 1
            }
        };
        if let Some(n) = self
            .peers
            .get_mut(index)
            .and_then(|(_, e)| e.get_mut(event))
        {
            *n += 1;
        }
    }

    pub(crate) fn latency_sample(&mut self, micros: u64) {
        if let Some(h) = self.latency.as_mut() {
            h.saturating_record(micros.max(1));
        }
    }
}

enum Command {
    Provision {
        subscribers: Arc<Subscribers>,
        hss: Arc<Hss>,
        done: Sender<()>,
    },
    Border {
        tls: Arc<BgTls>,
        peers: Vec<(NetworkName, SocketAddr)>,
    },
    Stop,
}

struct WorkerHandle {
    commands: Sender<Command>,
    thread: Option<JoinHandle<()>>,
}

/// Why the appliance could not start or reload.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration or a file it names.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The charge-record journal could not be recovered or opened.
    #[error("charge-record journal: {0}")]
    Journal(Box<crate::journal::JournalError>),
    /// A socket, thread or file could not be set up.
    #[error("{what}: {source}")]
    Io {
        /// What was being set up.
        what: String,
        /// The failure.
        source: std::io::Error,
    },
}

fn io_error(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> StartError {
    let what = what.into();
    move |source| StartError::Io { what, source }
}

/// A running appliance.
pub struct Appliance {
    config: ApplianceConfig,
    shared: Arc<Shared>,
    workers: Vec<WorkerHandle>,
    metrics: Arc<Metrics>,
    border_counters: Arc<BgCounters>,
    generation: u64,
    client_addr: SocketAddr,
    border_addr: SocketAddr,
    metrics_server: Option<metrics::MetricsServer>,
    stopped: Arc<AtomicBool>,
    /// Held while running: the CDR directory's lock.
    _lock: std::fs::File,
}

impl std::fmt::Debug for Appliance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Appliance")
            .field("network", &self.config.network)
            .field("client_addr", &self.client_addr)
            .field("border_addr", &self.border_addr)
            .finish()
    }
}

/// Options the configuration file does not carry.
#[derive(Clone, Default)]
pub struct StartOptions {
    /// Trace every query from this watcher, step by step.
    pub trace: Option<Msisdn>,
    /// Where traced steps go.
    pub trace_sink: Option<TraceSink>,
}

impl std::fmt::Debug for StartOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StartOptions")
            .field("trace", &self.trace)
            .finish()
    }
}

impl Appliance {
    /// Loads everything the configuration names and starts the workers.
    pub fn start(config: ApplianceConfig, options: StartOptions) -> Result<Appliance, StartError> {
        let table = Arc::new(
            NumberingTable::load(&config.numbering, config.ported.as_deref()).map_err(|e| {
                ConfigError {
                    file: config.file.clone(),
                    field: "tables.numbering".into(),
                    reason: e.to_string(),
                }
            })?,
        );
        let names = table.snapshot().names().clone();
        let network = names.id(&config.network).ok_or_else(|| ConfigError {
            file: config.file.clone(),
            field: "network.name".into(),
            reason: format!(
                "{:?} is not a network of the numbering table",
                config.network
            ),
        })?;
        for (name, _) in &config.limits.peers {
            if names.id(name).is_none() {
                return Err(ConfigError {
                    file: config.file.clone(),
                    field: format!("limits.peers.{name}"),
                    reason: format!("{name:?} is not a network of the numbering table"),
                }
                .into());
            }
        }
        let csv = std::fs::read_to_string(&config.numbering)
            .map_err(io_error(format!("reading {}", config.numbering.display())))?;
        let ranges = SimNetwork::from_table_csv(&csv, &config.network);
        let hss_ranges = config::load_hss_ranges(&config.hss_ranges)?;
        let hss = Arc::new(Hss::new(&hss_ranges));
        let subscribers = Arc::new(config::load_subscribers(&config.subscribers)?);
        let tls = Arc::new(config.border.tls(1)?);
        let peer_networks = peer_networks(&tls, &names, &config)?;
        let workers = config.workers;

        let mut polls = Vec::with_capacity(workers);
        let mut wakers = Vec::with_capacity(workers);
        for _ in 0..workers {
            let poll = Poll::new().map_err(io_error("creating a poll"))?;
            wakers.push(Arc::new(
                Waker::new(poll.registry(), WAKER).map_err(io_error("creating a waker"))?,
            ));
            polls.push(poll);
        }
        let started = Instant::now();
        let unix_ms_at_start = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(0));
        let shared = Arc::new(Shared {
            network,
            workers,
            table: table.clone(),
            names: ArcSwap::from_pointee(names),
            hss,
            own_ranges: config.own_ranges.clone().unwrap_or(ranges.prefixes),
            foreign_ranges: if config.own_ranges.is_some() {
                Vec::new()
            } else {
                ranges.foreign_inside
            },
            deadline_ms: config.deadline_ms,
            query_cost: config.query_cost,
            pending_max: config.pending_max,
            boot_time_s: unix_ms_at_start / 1000,
            peer_networks: ArcSwap::from_pointee(peer_networks),
            inboxes: (0..workers)
                .map(|_| ArrayQueue::new(INBOX_CAPACITY))
                .collect(),
            wakers,
            trace: options.trace,
            trace_sink: options.trace_sink,
            unix_ms_at_start,
            started,
            poll_mode: config.poll_mode,
            limits: config.limits.clone(),
            window_slots: config.window_slots,
            border_frame_max: shard::BORDER_FRAME_MAX
                .min(config.border.settings.link.max_frame_len),
            stop_pending: (0..workers).map(|_| AtomicUsize::new(usize::MAX)).collect(),
            closed_workers: AtomicUsize::new(0),
        });
        let metrics = Arc::new(Metrics::new(workers, table.clone()));
        let border_counters = Arc::new(BgCounters::default());

        // Sockets: the first bind picks the ports (when 0), the others share.
        let first_udp = bind_udp(config.client_listen)?;
        let client_addr = first_udp.local_addr().map_err(io_error("client socket"))?;
        let first_tcp = bind_listener(config.border.listen, true).map_err(io_error(format!(
            "border listener {}",
            config.border.listen
        )))?;
        let border_addr = first_tcp
            .local_addr()
            .map_err(io_error("border listener"))?;
        let mut udps = vec![first_udp];
        let mut tcps = vec![first_tcp];
        for _ in 1..workers {
            udps.push(bind_udp(client_addr)?);
            tcps.push(bind_listener(border_addr, true).map_err(io_error("border listener"))?);
        }

        // One appliance per CDR directory: SO_REUSEPORT would otherwise let
        // a second instance share the ports silently.
        let lock = lock_directory(&config.cdr_directory)?;
        // The journal: torn tails cut, numbering continued, and the
        // decisions young enough to matter for duplicate suppression.
        let window_ms = u64::from(config.deadline_ms) + 200;
        let recovery = crate::journal::recover(
            &config.cdr_directory,
            &config.network,
            unix_ms_at_start.saturating_sub(window_ms),
        )
        .map_err(|e| StartError::Journal(Box::new(e)))?;
        for (path, damage) in &recovery.damage {
            tracing::warn!(segment = %path.display(), %damage, "charge-record journal damage found on start");
        }
        tracing::info!(
            segments = recovery.segments,
            records = recovery.records,
            recent = recovery.recent.len(),
            "charge-record journal recovered"
        );
        // Started before the workers, so a failure leaves nothing running.
        let metrics_server = match config.metrics_listen {
            Some(addr) => Some(
                metrics::MetricsServer::start(addr, metrics.clone(), border_counters.clone())
                    .map_err(io_error(format!("metrics listener {addr}")))?,
            ),
            None => None,
        };
        let stopped = Arc::new(AtomicBool::new(false));
        // Build every worker first (fallible), then start them all: a
        // failure leaves no thread behind.
        let mut built = Vec::with_capacity(workers);
        for (index, ((poll, udp), tcp)) in polls.into_iter().zip(udps).zip(tcps).enumerate() {
            let (commands, command_rx) = channel::bounded(16);
            let waker = shared.wakers[index].clone();
            let worker_id = u16::try_from(index).unwrap_or(u16::MAX);
            let journal = crate::journal::JournalWriter::open(
                &config.cdr_directory,
                &config.network,
                worker_id,
                recovery.next_seq(worker_id),
                config.segment_limits,
                move || {
                    let _ = waker.wake();
                },
            )
            .map_err(|e| StartError::Journal(Box::new(e)))?;
            let mut shard = Shard::new(index, shared.clone(), journal);
            shard.provision(0, &subscribers, &shared.hss);
            shard.rebuild_windows(shared.now_ms(), &recovery.recent);
            let endpoint = BgEndpoint::new(
                EndpointSetup {
                    tls: tls.clone(),
                    settings: config.border.settings,
                    listener: Some(tcp),
                    peers: config.border.dial_list(),
                    token_base: BORDER_TOKENS,
                    counters: border_counters.clone(),
                },
                poll.registry(),
                shared.now_ms(),
            )
            .map_err(io_error("border endpoint"))?;
            let mut worker = Worker {
                index,
                poll,
                udp: UdpSocket::from_std(udp),
                recv: RecvBatch::new(),
                send: SendBatch::new(),
                endpoint,
                shard,
                shared: shared.clone(),
                metrics: metrics.clone(),
                commands: command_rx,
                pin: config.pin_workers,
                udp_more: false,
                peer_map: PeerMap::build(&tls, &shared.names.load()),
            };
            worker
                .poll
                .registry()
                .register(&mut worker.udp, UDP, Interest::READABLE)
                .map_err(io_error("registering the client socket"))?;
            let gso = worker.send.enable_gso(&worker.udp);
            if index == 0 {
                tracing::info!(gso, "UDP segmentation offload");
            }
            built.push((worker, commands));
        }
        let mut handles = Vec::with_capacity(workers);
        for (worker, commands) in built {
            let thread = match std::thread::Builder::new()
                .name(format!("worker-{}", worker.index))
                .spawn(move || worker.run())
            {
                Ok(thread) => thread,
                Err(e) => {
                    stop_handles(&mut handles, &shared);
                    return Err(io_error("starting a worker")(e));
                }
            };
            handles.push(WorkerHandle {
                commands,
                thread: Some(thread),
            });
        }
        tracing::info!(
            network = %config.network,
            workers,
            client = %client_addr,
            border = %border_addr,
            subscribers = subscribers.len(),
            "appliance started"
        );
        Ok(Appliance {
            config,
            shared,
            workers: handles,
            metrics,
            border_counters,
            generation: 1,
            client_addr,
            border_addr,
            metrics_server,
            stopped,
            _lock: lock,
        })
    }

    /// The UDP address devices use.
    pub fn client_addr(&self) -> SocketAddr {
        self.client_addr
    }

    /// The TCP address peers' border gateways dial.
    pub fn border_addr(&self) -> SocketAddr {
        self.border_addr
    }

    /// The metrics HTTP address, if serving.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_server
            .as_ref()
            .map(metrics::MetricsServer::addr)
    }

    /// The metrics, rendered as Prometheus text.
    pub fn render_metrics(&self) -> String {
        self.metrics.render(&self.border_counters)
    }

    /// Summed worker reports.
    pub fn report(&self) -> WorkerReport {
        self.metrics.total()
    }

    /// The border gateway's counters.
    pub fn border_counters(&self) -> &Arc<BgCounters> {
        &self.border_counters
    }

    /// Re-reads the configuration file and what it names: the numbering
    /// table and ported numbers, the HSS table, provisioning, border TLS
    /// material and peers. Everything is read and checked before anything
    /// changes: on error the appliance keeps running as it was. Traffic is
    /// not interrupted. A subscriber the new HSS table places on another
    /// presence server is moved (with its state) before the HSS switches,
    /// so no query meets a server that does not hold it yet.
    pub fn reload(&mut self) -> Result<(), StartError> {
        let config = ApplianceConfig::load(&self.config.file)?;
        let old = &self.config;
        for (field, changed) in [
            ("network.name", config.network != old.network),
            ("network.workers", config.workers != old.workers),
            ("network.poll_mode", config.poll_mode != old.poll_mode),
            ("network.pin_workers", config.pin_workers != old.pin_workers),
            ("network.own_ranges", config.own_ranges != old.own_ranges),
            ("listen.client", config.client_listen != old.client_listen),
            (
                "listen.metrics",
                config.metrics_listen != old.metrics_listen,
            ),
            ("cdr.directory", config.cdr_directory != old.cdr_directory),
            ("wa.deadline_ms", config.deadline_ms != old.deadline_ms),
            ("wa.query_cost", config.query_cost != old.query_cost),
            ("wa.pending_max", config.pending_max != old.pending_max),
            (
                "presence.window_slots",
                config.window_slots != old.window_slots,
            ),
            ("border.listen", config.border.listen != old.border.listen),
            ("limits", config.limits != old.limits),
        ] {
            if changed {
                return Err(ConfigError {
                    file: config.file.clone(),
                    field: field.into(),
                    reason: "cannot change while running; restart to change it".into(),
                }
                .into());
            }
        }
        // 1. Read and check everything.
        let hss_ranges = config::load_hss_ranges(&config.hss_ranges)?;
        let subscribers = Arc::new(config::load_subscribers(&config.subscribers)?);
        let generation = self.generation + 1;
        let tls = Arc::new(config.border.tls(generation)?);
        let table_error = |e: crate::table::LoadError| ConfigError {
            file: config.file.clone(),
            field: "tables.numbering".into(),
            reason: e.to_string(),
        };
        let candidate = NumberingTable::load(&config.numbering, config.ported.as_deref())
            .map_err(table_error)?;
        let peers = peer_networks(&tls, &candidate.snapshot().names().clone(), &config)?;
        drop(candidate);
        // 2. Move subscribers under the new HSS table, on every worker.
        let new_hss = Arc::new(Hss::new(&hss_ranges));
        let (done_tx, done_rx) = channel::bounded(self.workers.len());
        for worker in &self.workers {
            let _ = worker.commands.send(Command::Provision {
                subscribers: subscribers.clone(),
                hss: new_hss.clone(),
                done: done_tx.clone(),
            });
        }
        for waker in &self.shared.wakers {
            let _ = waker.wake();
        }
        for _ in 0..self.workers.len() {
            if done_rx.recv_timeout(Duration::from_secs(10)).is_err() {
                tracing::warn!("a worker did not confirm provisioning in 10 s");
                break;
            }
        }
        // 3. Publish: HSS, table, names, peers.
        if let Err(e) = self.shared.hss.replace_ranges(&hss_ranges) {
            tracing::error!(error = %e, "HSS table not replaced");
        }
        self.shared
            .table
            .reload(&config.numbering, config.ported.as_deref())
            .map_err(table_error)?;
        self.shared
            .names
            .store(Arc::new(self.shared.table.snapshot().names().clone()));
        self.shared.peer_networks.store(Arc::new(peers));
        for worker in &self.workers {
            let _ = worker.commands.send(Command::Border {
                tls: tls.clone(),
                peers: config.border.dial_list(),
            });
        }
        for waker in &self.shared.wakers {
            let _ = waker.wake();
        }
        self.generation = generation;
        self.config = config;
        tracing::info!(
            generation,
            subscribers = subscribers.len(),
            "configuration reloaded"
        );
        Ok(())
    }

    /// Stops cleanly: workers finish the turn, write what they queued, close
    /// border links with close_notify, flush and sync charge records.
    pub fn stop(mut self) {
        self.stop_workers();
    }

    fn stop_workers(&mut self) {
        if self.stopped.swap(true, Ordering::SeqCst) {
            return;
        }
        stop_handles(&mut self.workers, &self.shared);
        if let Some(server) = self.metrics_server.take() {
            server.stop();
        }
        tracing::info!(network = %self.config.network, "appliance stopped");
    }
}

impl Drop for Appliance {
    fn drop(&mut self) {
        self.stop_workers();
    }
}

/// Asks workers to stop and waits for them.
fn stop_handles(handles: &mut [WorkerHandle], shared: &Shared) {
    for worker in handles.iter() {
        let _ = worker.commands.send(Command::Stop);
    }
    for waker in &shared.wakers {
        let _ = waker.wake();
    }
    for worker in handles.iter_mut() {
        if let Some(thread) = worker.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Takes an exclusive lock on `dir/.lock` (created if missing).
fn lock_directory(dir: &std::path::Path) -> Result<std::fs::File, StartError> {
    use std::os::fd::AsRawFd;
    let what = format!("CDR directory {}", dir.display());
    std::fs::create_dir_all(dir).map_err(io_error(what.clone()))?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(".lock"))
        .map_err(io_error(what.clone()))?;
    // SAFETY: flock on a descriptor we own; no memory is passed.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        return Err(StartError::Io {
            what: format!("{what}: another presence-gw holds it"),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(file)
}

/// The numbering-table id of every border peer (peers are named as in the
/// numbering table).
fn peer_networks(
    tls: &BgTls,
    names: &NetworkNames,
    config: &ApplianceConfig,
) -> Result<Vec<(NetworkId, NetworkName)>, ConfigError> {
    let peers = tls.peers();
    (0..peers.len())
        .filter_map(|i| u16::try_from(i).ok().and_then(|i| peers.name(PeerIndex(i))))
        .enumerate()
        .map(|(i, name)| {
            names
                .id(name.as_str())
                .map(|id| (id, name.clone()))
                .ok_or_else(|| ConfigError {
                    file: config.file.clone(),
                    field: format!("border.peers[{i}].network"),
                    reason: format!("{name} is not a network of the numbering table"),
                })
        })
        .collect()
}

fn bind_udp(addr: SocketAddr) -> Result<std::net::UdpSocket, StartError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let what = format!("client socket {addr}");
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
        .map_err(io_error(what.clone()))?;
    socket
        .set_reuse_address(true)
        .map_err(io_error(what.clone()))?;
    socket
        .set_reuse_port(true)
        .map_err(io_error(what.clone()))?;
    // Room for bursts: 4 MB each way (the kernel caps it at rmem_max).
    let _ = socket.set_recv_buffer_size(4 << 20);
    let _ = socket.set_send_buffer_size(4 << 20);
    socket
        .set_nonblocking(true)
        .map_err(io_error(what.clone()))?;
    socket.bind(&addr.into()).map_err(io_error(what))?;
    Ok(socket.into())
}

struct Worker {
    index: usize,
    poll: Poll,
    udp: UdpSocket,
    recv: RecvBatch,
    send: SendBatch,
    endpoint: BgEndpoint,
    shard: Shard,
    shared: Arc<Shared>,
    metrics: Arc<Metrics>,
    commands: Receiver<Command>,
    pin: bool,
    /// The last read stopped at its budget with datagrams left.
    udp_more: bool,
    /// The endpoint's peers as numbering-table networks, and back.
    peer_map: PeerMap,
}

/// The border endpoint's peer positions (of its current TLS generation)
/// and the numbering table's networks, both ways: built when the
/// generation changes, so no frame pays a name lookup.
#[derive(Debug, Default)]
struct PeerMap {
    origins: Vec<Option<NetworkId>>,
    peers: ahash::AHashMap<NetworkId, PeerIndex>,
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
            if let Some(network) = network {
                map.peers.insert(network, PeerIndex(index));
            }
        }
        map
    }
}

/// Hands each inbound border frame to the shard with its origin network.
struct BorderInbound<'a> {
    shard: &'a mut Shard,
    origins: &'a [Option<NetworkId>],
    now: u64,
}

impl presence_border::Deliver for BorderInbound<'_> {
    fn deliver(&mut self, peer: PeerIndex, frame: &[u8]) -> bool {
        match self.origins.get(peer.get()).copied().flatten() {
            Some(origin) => {
                self.shard.on_border_frame(self.now, origin, frame);
                true
            }
            None => false,
        }
    }
}

/// How often a worker publishes its counters.
const REPORT_MS: u64 = 100;
/// How often a worker runs border timers.
const TICK_MS: u64 = 10;
/// How long a clean stop waits for border peers to answer close_notify.
const STOP_LINGER_MS: u64 = 2_000;

impl Worker {
    fn run(mut self) {
        if self.pin {
            pin_to_cpu(self.index);
        }
        self.shard.stats.latency = hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 3).ok();
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
            let now = self.shared.now_ms();
            let timeout = if self.shared.poll_mode
                || self.udp_more
                || self.endpoint.has_ready()
                || !self
                    .shared
                    .inboxes
                    .get(self.index)
                    .is_none_or(ArrayQueue::is_empty)
            {
                Duration::ZERO
            } else if self.shard.holding() {
                // Answers wait for the journal's syncer, which wakes us;
                // a short nap bounds the wait should a wake-up be missed.
                Duration::from_millis(1)
            } else {
                let until_timer = self
                    .shard
                    .next_deadline()
                    .map_or(TICK_MS, |at| at.saturating_sub(now));
                Duration::from_millis(until_timer.clamp(1, TICK_MS))
            };
            if self.poll.poll(&mut events, Some(timeout)).is_err() {
                continue;
            }
            let now = self.shared.now_ms();
            let mut udp_ready = self.shared.poll_mode || self.udp_more;
            for event in events.iter() {
                match event.token() {
                    WAKER => {}
                    UDP => udp_ready = true,
                    token => {
                        let mut inbound = BorderInbound {
                            shard: &mut self.shard,
                            origins: &self.peer_map.origins,
                            now,
                        };
                        self.endpoint
                            .handle_event(self.poll.registry(), token, now, &mut inbound);
                    }
                }
            }
            let mut inbound = BorderInbound {
                shard: &mut self.shard,
                origins: &self.peer_map.origins,
                now,
            };
            self.endpoint
                .poll_ready(self.poll.registry(), now, &mut inbound);
            if udp_ready && draining_since.is_none() {
                self.read_datagrams(now);
            }
            self.read_inbox(now);
            if self.shard.next_deadline().is_some_and(|at| at <= now) {
                self.shard.on_timer(now);
            }
            let stop = self.read_commands(now);
            if stop && draining_since.is_none() {
                draining_since = Some(now);
            }
            // Draining is collective: every worker keeps serving its inbox and
            // its links until no worker has a transaction in flight (or the
            // deadline passed), so no worker strands another's query.
            if let (Some(since), None) = (draining_since, stopping_since) {
                if let Some(mine) = self.shared.stop_pending.get(self.index) {
                    mine.store(self.shard.pending(), Ordering::Relaxed);
                }
                let all_drained = self
                    .shared
                    .stop_pending
                    .iter()
                    .all(|p| p.load(Ordering::Relaxed) == 0);
                let overdue = now.saturating_sub(since) > u64::from(self.shared.deadline_ms) + 100;
                if all_drained || overdue {
                    stopping_since = Some(now);
                    self.endpoint.begin_shutdown(self.poll.registry(), now);
                }
            }
            self.write_out(now);
            if now.saturating_sub(last_tick) >= TICK_MS {
                self.endpoint.tick(self.poll.registry(), now);
                last_tick = now;
            }
            if now.saturating_sub(last_report) >= REPORT_MS || stopping_since.is_some() {
                self.report();
                last_report = now;
            }
            if let Some(since) = stopping_since {
                let lingered = now.saturating_sub(since) >= STOP_LINGER_MS;
                if (self.endpoint.is_idle() || lingered) && !closed {
                    closed = true;
                    self.shared.closed_workers.fetch_add(1, Ordering::SeqCst);
                }
                // Leave together (or at the hard limit): until then a closed
                // worker still takes what others hand it.
                let everyone =
                    self.shared.closed_workers.load(Ordering::SeqCst) >= self.shared.workers;
                if (closed && everyone) || now.saturating_sub(since) >= 2 * STOP_LINGER_MS {
                    self.endpoint.shutdown(self.poll.registry(), now);
                    if !self.shard.journal.close() {
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

    /// Reads up to [`RECV_BATCHES_PER_TURN`] batches; if the budget runs
    /// out with the socket still full, `udp_more` makes the next turn read
    /// again (edge-triggered readiness will not say so).
    fn read_datagrams(&mut self, now: u64) {
        self.udp_more = false;
        for _ in 0..RECV_BATCHES_PER_TURN {
            let n = match self.recv.recv(&self.udp) {
                Ok(n) => n,
                Err(_) => {
                    self.shard.stats.bad_datagrams += 1;
                    return;
                }
            };
            if n == 0 {
                return;
            }
            let arrived = now_us();
            for i in 0..n {
                match self.recv.get(i) {
                    Some((bytes, from)) => self.shard.on_datagram(now, arrived, from, bytes),
                    None => self.shard.stats.bad_datagrams += 1,
                }
            }
            self.write_out(now);
            if n < udp::BATCH {
                return;
            }
        }
        self.udp_more = true;
    }

    fn read_inbox(&mut self, now: u64) {
        let Some(inbox) = self.shared.inboxes.get(self.index) else {
            return;
        };
        for _ in 0..INBOX_BUDGET {
            let Some(message) = inbox.pop() else {
                break;
            };
            self.shard.on_cross(now, message);
        }
    }

    /// Returns whether a stop was asked for.
    fn read_commands(&mut self, now: u64) -> bool {
        let mut stop = false;
        while let Ok(command) = self.commands.try_recv() {
            match command {
                Command::Provision {
                    subscribers,
                    hss,
                    done,
                } => {
                    self.shard.provision(now, &subscribers, &hss);
                    let _ = done.send(());
                }
                Command::Border { tls, peers } => {
                    self.endpoint.reload(tls, &peers, self.poll.registry(), now);
                    self.peer_map = PeerMap::build(self.endpoint.tls(), &self.shared.names.load());
                    self.shard.refresh_peers();
                }
                Command::Stop => stop = true,
            }
        }
        stop
    }

    /// Writes everything the turn produced: device frames, border frames,
    /// charge records, and one wake-up per worker handed messages.
    fn write_out(&mut self, now: u64) {
        self.shard.close_frames();
        // Answers whose charge records are now durable join the border's
        // ready list.
        self.shard.release_held();
        // The ready lists are taken and put back, keeping their capacity.
        let mut frames = std::mem::take(&mut self.shard.ready_device);
        for (to, frame) in frames.drain(..) {
            if self.send.is_full() && self.send.flush(&self.udp).is_err() {
                self.shard.stats.udp_send_errors += 1;
            }
            if !self.send.push(to, &frame) {
                self.shard.stats.udp_send_errors += 1;
            }
            self.shard.give_back(frame);
        }
        self.shard.ready_device = frames;
        while !self.send.is_empty() {
            match self.send.flush(&self.udp) {
                Ok(0) => break,
                Ok(_) => {}
                Err(_) => self.shard.stats.udp_send_errors += 1,
            }
        }
        let mut frames = std::mem::take(&mut self.shard.ready_border);
        for (network, frame) in frames.drain(..) {
            let sent = match self.peer_map.peers.get(&network) {
                Some(peer) => self.endpoint.send(*peer, &frame),
                None => Err(SendError::UnknownPeer),
            };
            match sent {
                Ok(()) => {
                    self.shard.stats.border_frames_out += 1;
                    self.shard.stats.peer_event(network, 2);
                }
                Err(_) => {
                    self.shard.stats.peer_event(network, 3);
                    self.shard.shed_border_frame(now, &frame);
                }
            }
            self.shard.give_back(frame);
        }
        self.shard.ready_border = frames;
        // Shedding may have produced device answers.
        if !self.shard.ready_device.is_empty() {
            let mut frames = std::mem::take(&mut self.shard.ready_device);
            for (to, frame) in frames.drain(..) {
                if self.send.is_full() {
                    let _ = self.send.flush(&self.udp);
                }
                let _ = self.send.push(to, &frame);
                self.shard.give_back(frame);
            }
            self.shard.ready_device = frames;
            let _ = self.send.flush(&self.udp);
        }
        self.endpoint.flush(self.poll.registry(), now);
        for (worker, wake) in self.shard.wake.iter_mut().enumerate() {
            if std::mem::take(wake) {
                if let Some(waker) = self.shared.wakers.get(worker) {
                    let _ = waker.wake();
                }
            }
        }
    }

    fn report(&mut self) {
        let inbox = self
            .shared
            .inboxes
            .get(self.index)
            .map_or(0, ArrayQueue::len);
        let pending = self.shard.pending();
        let subscribers = self.shard.subscriber_count();
        let cdr = (self.shard.journal.records_written, self.shard.voided);
        let roles = self.shard.role_events();
        self.shard.collect_alarms();
        self.metrics.publish(
            self.index,
            &mut self.shard.stats,
            pending,
            inbox,
            subscribers,
            cdr,
            roles,
        );
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
