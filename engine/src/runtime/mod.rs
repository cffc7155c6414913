//! The appliance runtime: one [`Node`](crate::node::Node) per core, and the IO around it
//! (`docs/architecture.md`, "The runtime"). The runtime moves bytes and
//! decides nothing: every presence decision is the node's.
//!
//! Each worker thread owns, with no lock shared on the per-message path:
//! - its node: the subscribers [`presence_codec::shard::owner`] gives it;
//! - a UDP socket on the client address, one of a `SO_REUSEPORT` group
//!   whose classic-BPF program ([`steer`]) delivers each datagram to the
//!   worker owning its first message's subject; read and written in batches
//!   of up to 64 datagrams per `recvmmsg`/`sendmmsg` ([`udp`]);
//! - a border-gateway endpoint: its own TLS links to every worker of every
//!   peer network (each link says which worker it ends at), its share of
//!   the links peers dial (the listeners' group steers a connection by its
//!   source port);
//! - its journal writer and syncer thread;
//! - a bounded inbox (`crossbeam::queue::ArrayQueue`) for the hand-offs the
//!   steering could not avoid, with one wake-up per sending worker per loop
//!   turn.
//!
//! Per loop turn a worker polls (or, in poll mode, spins), feeds its node
//! what arrived (datagrams, border frames, hand-offs, the journal's
//! durability, timeouts), then moves what the node produced: one
//! `sendmmsg` for the devices, one batch of TLS records per border link,
//! one `write` of charge records and its sync request, and one wake-up per
//! worker it handed messages to.

mod admission;
mod alive;
pub mod hugepages;
pub mod metrics;
pub mod steer;
pub mod udp;
pub mod uring;
mod worker;
pub mod xdp;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam::channel::{self, Sender};
use crossbeam::queue::ArrayQueue;
use mio::{Poll, Waker};
use presence_border::endpoint::bind_listener;
use presence_border::{BgCounters, BgTls, NetworkName, PeerIndex};
use presence_codec::{LinkHello, Msisdn};

use crate::config::{self, ApplianceConfig, ConfigError, Subscribers};
use crate::journal::JournalTime;
use crate::node::{
    provisioning_changes, CrossMessage, NodeConfig, NodeLimits, SubscriberChange, Tracer,
};
use crate::roles::Hss;
use crate::table::{NetworkId, NetworkNames, NumberingTable, Prefix, PrefixIndex};

pub use self::metrics::{Metrics, WorkerReport};
pub use crate::node::TraceSink;

use self::worker::{Command, Worker, WorkerSetup};

/// Messages one worker's inbox holds.
pub const INBOX_CAPACITY: usize = 64 * 1024;

/// The process's clocks: a monotonic origin and the wall-clock time at it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Clock {
    started: Instant,
    unix_ms_at_start: u64,
}

impl Clock {
    fn new() -> Clock {
        Clock {
            started: Instant::now(),
            unix_ms_at_start: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(0)),
        }
    }

    /// Microseconds since the origin.
    pub(crate) fn now_us(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// The journal's time now.
    pub(crate) fn journal_time(&self) -> JournalTime {
        let us = self.now_us();
        JournalTime {
            us,
            unix_ms: self.unix_ms_at_start.saturating_add(us / 1000),
        }
    }
}

/// What every worker reads and nobody writes on the per-message path.
pub(crate) struct Shared {
    pub(crate) clock: Clock,
    pub(crate) workers: usize,
    pub(crate) names: arc_swap::ArcSwap<NetworkNames>,
    pub(crate) inboxes: Vec<ArrayQueue<CrossMessage>>,
    pub(crate) wakers: Vec<Arc<Waker>>,
    pub(crate) poll_mode: bool,
    pub(crate) deadline_ms: u16,
    /// Device datagrams queued longer than this (ns) are shed (0: never).
    pub(crate) device_queue_ns: u64,
    /// `[limits] border_queue_ms`, ns (0: never shed).
    pub(crate) border_queue_ns: u64,
    /// Each worker's pending WA transactions, published every turn while
    /// stopping (the drain ends when all are zero).
    pub(crate) stop_pending: Vec<AtomicUsize>,
    /// Workers whose border links have closed.
    pub(crate) closed_workers: AtomicUsize,
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
    table: Arc<NumberingTable>,
    hss: Arc<Hss>,
    /// The provisioning the workers hold (a reload sends them only what
    /// changed since).
    subscribers: SharedSubscribers,
    workers: Vec<WorkerHandle>,
    metrics: Arc<Metrics>,
    border_counters: Arc<BgCounters>,
    generation: u64,
    client_addr: SocketAddr,
    border_addr: SocketAddr,
    metrics_server: Option<metrics::MetricsServer>,
    /// The "alive until" stamp the next start's replay floor comes from.
    alive: alive::AliveStamp,
    /// The charge records' retention, if configured.
    housekeeping: Option<alive::Housekeeping>,
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

/// The numbering table `config` names, with the network's own ranges
/// (`network.own_ranges`) laid over it when configured: every role then
/// reads one table (the WA's step 3, the OGPS's step 5, the IGPS's
/// spoofing check).
fn load_table(config: &ApplianceConfig) -> Result<NumberingTable, ConfigError> {
    let error = |reason: String| ConfigError {
        file: config.file.clone(),
        field: "tables.numbering".into(),
        reason,
    };
    let table = NumberingTable::load(&config.numbering, config.ported.as_deref())
        .map_err(|e| error(e.to_string()))?;
    overlay_own_ranges(&table, config)?;
    Ok(table)
}

fn overlay_own_ranges(table: &NumberingTable, config: &ApplianceConfig) -> Result<(), ConfigError> {
    let Some(own) = &config.own_ranges else {
        return Ok(());
    };
    let version = table.snapshot();
    let id = version
        .names()
        .id(&config.network)
        .ok_or_else(|| ConfigError {
            file: config.file.clone(),
            field: "network.name".into(),
            reason: format!(
                "{:?} is not a network of the numbering table",
                config.network
            ),
        })?;
    let mut prefixes: Vec<(Prefix, NetworkId)> = version
        .prefixes()
        .prefixes()
        .iter()
        .filter(|(p, _)| !own.contains(p))
        .copied()
        .collect();
    prefixes.extend(own.iter().map(|&p| (p, id)));
    table
        .replace(
            PrefixIndex::build(&prefixes),
            version.ported().clone(),
            version.names().clone(),
        )
        .map_err(|e| ConfigError {
            file: config.file.clone(),
            field: "network.own_ranges".into(),
            reason: e.to_string(),
        })?;
    Ok(())
}

impl Appliance {
    /// Loads everything the configuration names and starts the workers.
    pub fn start(config: ApplianceConfig, options: StartOptions) -> Result<Appliance, StartError> {
        let clock = Clock::new();
        // Before any large table is allocated.
        hugepages::set_enabled(config.huge_pages);
        let table = Arc::new(load_table(&config)?);
        let names = table.snapshot().names().clone();
        let network = names.id(&config.network).ok_or_else(|| ConfigError {
            file: config.file.clone(),
            field: "network.name".into(),
            reason: format!(
                "{:?} is not a network of the numbering table",
                config.network
            ),
        })?;
        let limits = node_limits(&config, &names)?;
        let hss = Arc::new(Hss::new(&config::load_hss_ranges(&config.hss_ranges)?));
        let subscribers = Arc::new(config::load_subscribers(&config.subscribers)?);
        let tls = Arc::new(config.border.tls(1)?);
        let peer_networks = peer_networks(&tls, &names, &config)?;
        let workers = config.workers;
        let workers_u16 = u16::try_from(workers).unwrap_or(u16::MAX);

        let mut polls = Vec::with_capacity(workers);
        let mut wakers = Vec::with_capacity(workers);
        for _ in 0..workers {
            let poll = Poll::new().map_err(io_error("creating a poll"))?;
            wakers.push(Arc::new(
                Waker::new(poll.registry(), worker::WAKER).map_err(io_error("creating a waker"))?,
            ));
            polls.push(poll);
        }
        let shared = Arc::new(Shared {
            clock,
            workers,
            names: arc_swap::ArcSwap::from_pointee(names),
            inboxes: (0..workers)
                .map(|_| ArrayQueue::new(INBOX_CAPACITY))
                .collect(),
            wakers,
            poll_mode: config.poll_mode,
            deadline_ms: config.deadline_ms,
            device_queue_ns: config
                .limits
                .device_queue_ms
                .map_or(0, |ms| u64::from(ms) * 1_000_000),
            border_queue_ns: config
                .limits
                .border_queue_ms
                .map_or(0, |ms| u64::from(ms) * 1_000_000),
            stop_pending: (0..workers).map(|_| AtomicUsize::new(usize::MAX)).collect(),
            closed_workers: AtomicUsize::new(0),
        });
        let metrics = Arc::new(Metrics::new(workers, table.clone()));
        let border_counters = Arc::new(BgCounters::default());

        // Sockets: worker i binds (UDP) and listens (TCP) i-th, so the
        // steering programs' indices are the workers'. The first bind picks
        // the ports (when 0), the others share them.
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
        if config.steering {
            attach_steering(&udps[0], &tcps[0], workers_u16);
        } else {
            tracing::info!("steering off: the kernel hashes, workers hand messages over");
        }
        let xdp_path = if config.io_backend.wants_xdp() {
            attach_xdp(client_addr, &config)
        } else {
            None
        };

        // One appliance per CDR directory: SO_REUSEPORT would otherwise let
        // a second instance share the ports silently.
        let lock = lock_directory(&config.cdr_directory)?;
        // Device requests signed before this start are not taken after it
        // (read before the stamp is rewritten for this life).
        let last_alive = alive::last_alive(&config.cdr_directory);
        let replay_floor = alive::replay_floor(last_alive, config.devices.clock_ahead_ms);
        let wa_boot_s = alive::wa_boot_time_s(
            clock.unix_ms_at_start,
            last_alive,
            alive::last_wa_second(&config.cdr_directory),
        );
        if wa_boot_s > clock.unix_ms_at_start / 1000 + 5 {
            // The clock is behind where the previous life left it (it
            // stepped back, or that life's counter ran ahead of it); a
            // second or two is only the stamp's rounding after a quick
            // restart.
            tracing::warn!(
                behind_s = wa_boot_s - clock.unix_ms_at_start / 1000,
                "the clock is behind the previous run's: transaction ids continue from where it left them"
            );
        }
        let alive = alive::AliveStamp::start(&config.cdr_directory, wa_boot_s)
            .map_err(io_error("alive stamp in the CDR directory"))?;
        // The journal: torn tails cut, numbering continued, and the
        // decisions young enough to matter for duplicate suppression.
        let window_ms = u64::from(config.deadline_ms) + 200;
        let recovery = crate::journal::recover(
            &config.cdr_directory,
            &config.network,
            clock.unix_ms_at_start.saturating_sub(window_ms),
        )
        .map_err(|e| StartError::Journal(Box::new(e)))?;
        for (path, damage) in &recovery.damage {
            tracing::warn!(segment = %path.display(), %damage, "charge-record journal damage found on start");
        }
        tracing::info!(
            segments = recovery.segments,
            records = recovery.records,
            recent = recovery.recent.len(),
            marks = recovery.recent_marks.len(),
            "charge-record journal recovered"
        );
        // Retention, on its own thread, from now on (after recovery has read
        // every segment).
        let housekeeping: Option<Box<dyn FnMut() + Send>> = config.retention.is_on().then(|| {
            let (dir, network, retention) = (
                config.cdr_directory.clone(),
                config.network.clone(),
                config.retention,
            );
            let mut warned_unexported = 0usize;
            Box::new(move || {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
                match crate::journal::retention::sweep(&dir, &network, &retention, now) {
                    Ok(sweep) => {
                        for path in &sweep.deleted {
                            tracing::info!(segment = %path.display(), "charge-record segment deleted by retention");
                        }
                        if sweep.held_unexported > warned_unexported {
                            tracing::warn!(
                                segments = sweep.held_unexported,
                                "charge-record segments past retention are kept: no collector has marked them exported"
                            );
                        }
                        warned_unexported = sweep.held_unexported;
                    }
                    Err(e) => tracing::warn!(error = %e, "charge-record retention failed"),
                }
            }) as Box<dyn FnMut() + Send>
        });
        let housekeeping = housekeeping
            .map(alive::Housekeeping::start)
            .transpose()
            .map_err(io_error("housekeeping thread"))?;

        // Started before the workers, so a failure leaves nothing running.
        let metrics_server = match config.metrics_listen {
            Some(addr) => Some(
                metrics::MetricsServer::start(addr, metrics.clone(), border_counters.clone())
                    .map_err(io_error(format!("metrics listener {addr}")))?,
            ),
            None => None,
        };
        let stopped = Arc::new(AtomicBool::new(false));
        let tracer = options
            .trace
            .zip(options.trace_sink.clone())
            .map(|(watcher, sink)| Tracer { watcher, sink });
        // Build every worker first (fallible), then start them all: a
        // failure leaves no thread behind.
        let mut built = Vec::with_capacity(workers);
        for (index, ((poll, udp), tcp)) in polls.into_iter().zip(udps).zip(tcps).enumerate() {
            let worker_id = u16::try_from(index).unwrap_or(u16::MAX);
            let mut node_config = NodeConfig::new(network, worker_id, workers_u16);
            node_config.deadline_ms = config.deadline_ms;
            node_config.query_cost = config.query_cost;
            node_config.pending_max = config.pending_per_worker();
            node_config.boot_time_s = wa_boot_s;
            node_config.window_slots = config.window_slots;
            node_config.watching = config.watching;
            node_config.limits = limits.clone();
            node_config.border_frame_max =
                crate::node::BORDER_FRAME_MAX.min(config.border.settings.link.max_frame_len);
            node_config.unix_ms_at_zero = clock.unix_ms_at_start;
            node_config.device_floor_unix_ms = replay_floor;
            node_config.device_clock_skew_ms = config.devices.clock_skew_ms;
            node_config.device_clock_ahead_ms = config.devices.clock_ahead_ms;
            node_config.insecure_credentials = config.devices.insecure_credentials;
            node_config.first_record_seq = recovery.next_seq(worker_id);
            node_config.peers = peer_networks.iter().map(|(id, _)| *id).collect();
            node_config.tracer = tracer.clone();
            let (commands, command_rx) = channel::bounded(16);
            let worker = Worker::build(WorkerSetup {
                index,
                poll,
                udp,
                tcp,
                node_config,
                table: table.clone(),
                hss: hss.clone(),
                subscribers: &subscribers,
                recent: &recovery.recent,
                recent_marks: &recovery.recent_marks,
                config: &config,
                tls: tls.clone(),
                shared: shared.clone(),
                metrics: metrics.clone(),
                border_counters: border_counters.clone(),
                commands: command_rx,
                xdp: xdp_path.clone(),
            })?;
            built.push((worker, commands));
        }
        let mut handles = Vec::with_capacity(workers);
        for (worker, commands) in built {
            let thread = match std::thread::Builder::new()
                .name(format!("worker-{}", worker.index()))
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
        // Large arenas advised onto huge pages (hugepages.rs): say whether
        // the kernel will honour that.
        match hugepages::transparent_huge_pages().as_deref() {
            _ if !config.huge_pages => {}
            Some("always" | "madvise") => {}
            Some(setting) => tracing::warn!(
                setting,
                "transparent huge pages are off: large tables stay on 4 KiB pages \
                 (echo madvise > /sys/kernel/mm/transparent_hugepage/enabled)"
            ),
            None => tracing::warn!(
                "no transparent huge pages in this kernel: large tables stay on 4 KiB pages"
            ),
        }
        Ok(Appliance {
            config,
            shared,
            table,
            hss,
            subscribers,
            workers: handles,
            metrics,
            border_counters,
            generation: 1,
            client_addr,
            border_addr,
            metrics_server,
            alive,
            housekeeping,
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
            ("network.huge_pages", config.huge_pages != old.huge_pages),
            ("io.backend", config.io_backend != old.io_backend),
            (
                "io.xdp_interface",
                config.xdp_interface != old.xdp_interface,
            ),
            ("io.xdp_mode", config.xdp_mode != old.xdp_mode),
            ("network.steering", config.steering != old.steering),
            ("listen.client", config.client_listen != old.client_listen),
            (
                "listen.metrics",
                config.metrics_listen != old.metrics_listen,
            ),
            ("cdr.directory", config.cdr_directory != old.cdr_directory),
            ("cdr.retain_*", config.retention != old.retention),
            (
                "cdr.segment_* or cdr.group_commit_*",
                config.journal != old.journal,
            ),
            ("wa.deadline_ms", config.deadline_ms != old.deadline_ms),
            ("wa.query_cost", config.query_cost != old.query_cost),
            ("wa.pending_max", config.pending_max != old.pending_max),
            (
                "presence.window_slots",
                config.window_slots != old.window_slots,
            ),
            ("border.listen", config.border.listen != old.border.listen),
            ("limits", config.limits != old.limits),
            ("watching", config.watching != old.watching),
            ("devices", config.devices != old.devices),
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
        let candidate_table = load_table(&config)?;
        let candidate_names = candidate_table.snapshot().names().clone();
        let peers = peer_networks(&tls, &candidate_names, &config)?;
        drop(candidate_table);
        // 2. Move subscribers under the new HSS table, on every worker.
        let candidate = Arc::new(self.hss.fork());
        if let Err(e) = candidate.replace_ranges(&hss_ranges) {
            return Err(ConfigError {
                file: config.hss_ranges.clone(),
                field: "-".into(),
                reason: e.to_string(),
            }
            .into());
        }
        // Only what changed goes to the workers, each its own share: a
        // reload of an unchanged million-subscriber file costs them nothing.
        let changes = provisioning_changes(&self.subscribers, &subscribers, &self.hss, &candidate);
        let workers_u16 = u16::try_from(self.workers.len()).unwrap_or(u16::MAX);
        let mut shares: Vec<Vec<SubscriberChange>> = vec![Vec::new(); self.workers.len()];
        for change in changes {
            let owner = usize::from(presence_codec::shard::owner(change.msisdn(), workers_u16));
            if let Some(share) = shares.get_mut(owner) {
                share.push(change);
            }
        }
        let changed: usize = shares.iter().map(Vec::len).sum();
        let (done_tx, done_rx) = channel::bounded(self.workers.len());
        for (worker, changes) in self.workers.iter().zip(shares) {
            let _ = worker.commands.send(Command::Provision {
                changes,
                hss: candidate.clone(),
                done: done_tx.clone(),
            });
        }
        self.wake_all();
        // The workers apply them whatever happens next.
        let subscriber_count = subscribers.len();
        self.subscribers = subscribers;
        for _ in 0..self.workers.len() {
            if done_rx.recv_timeout(Duration::from_secs(10)).is_err() {
                tracing::warn!("a worker did not confirm provisioning in 10 s");
                break;
            }
        }
        // 3. Publish: HSS, table, names, peers.
        self.hss.publish(&candidate);
        self.table
            .reload(&config.numbering, config.ported.as_deref())
            .map_err(|e| ConfigError {
                file: config.file.clone(),
                field: "tables.numbering".into(),
                reason: e.to_string(),
            })?;
        overlay_own_ranges(&self.table, &config)?;
        self.shared
            .names
            .store(Arc::new(self.table.snapshot().names().clone()));
        let peer_ids: Vec<NetworkId> = peers.iter().map(|(id, _)| *id).collect();
        for worker in &self.workers {
            let _ = worker.commands.send(Command::Border {
                tls: tls.clone(),
                dial: config.border.dial_list(),
                peers: peer_ids.clone(),
            });
        }
        self.wake_all();
        self.generation = generation;
        self.config = config;
        tracing::info!(
            generation,
            subscribers = subscriber_count,
            changed,
            "configuration reloaded"
        );
        Ok(())
    }

    fn wake_all(&self) {
        for waker in &self.shared.wakers {
            let _ = waker.wake();
        }
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
        if let Some(housekeeping) = self.housekeeping.as_mut() {
            housekeeping.stop();
        }
        self.alive.stop();
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

/// Attaches the steering programs to the device and border groups. A
/// kernel that refuses them leaves the kernel's hash in place: traffic then
/// reaches its owner by hand-offs, counted in `presence_cross_worker_total`.
fn attach_steering(udp: &std::net::UdpSocket, tcp: &std::net::TcpListener, workers: u16) {
    if workers < 2 {
        return;
    }
    match steer::attach_reuseport_cbpf(udp, &steer::device_steering_program(workers)) {
        Ok(()) => tracing::info!(workers, "device datagrams steered to their owner's worker"),
        Err(e) => tracing::warn!(error = %e, "device steering not available: hand-offs instead"),
    }
    match steer::attach_reuseport_cbpf(tcp, &steer::source_port_steering_program(workers)) {
        Ok(()) => tracing::info!(workers, "border connections steered by source port"),
        Err(e) => tracing::warn!(error = %e, "border steering not available: hand-offs instead"),
    }
}

/// Attaches the XDP program for `[io] backend = "xdp"`; where it cannot be,
/// says why and leaves the workers on `mmsg`.
fn attach_xdp(client: SocketAddr, config: &ApplianceConfig) -> Option<Arc<xdp::XdpPath>> {
    use crate::config::XdpMode;
    let settings = xdp::XdpSettings {
        interface: config.xdp_interface.clone(),
        mode: config.xdp_mode.map(|mode| match mode {
            XdpMode::Native => xdp::program::AttachMode::Native,
            XdpMode::Generic => xdp::program::AttachMode::Generic,
        }),
    };
    match xdp::XdpPath::attach(client, &settings) {
        Ok(path) => {
            tracing::info!(
                interface = path.interface(),
                mode = path.mode().name(),
                queues = path.queues(),
                "XDP program attached: device datagrams through AF_XDP"
            );
            Some(path)
        }
        Err(e) => {
            tracing::warn!(error = %e, "[io] backend = \"xdp\": not available; using mmsg");
            None
        }
    }
}

/// The rate limits with peer names resolved.
fn node_limits(config: &ApplianceConfig, names: &NetworkNames) -> Result<NodeLimits, ConfigError> {
    let mut peers = Vec::with_capacity(config.limits.peers.len());
    for (name, rate) in &config.limits.peers {
        let id = names.id(name).ok_or_else(|| ConfigError {
            file: config.file.clone(),
            field: format!("limits.peers.{name}"),
            reason: format!("{name:?} is not a network of the numbering table"),
        })?;
        peers.push((id, *rate));
    }
    Ok(NodeLimits {
        peer_default: config.limits.peer_default,
        peers,
        watcher: config.limits.watcher,
        auth: config.limits.auth,
        auth_failures_per_source: config.limits.auth_failures_per_source,
    })
}

/// Takes an exclusive lock on `dir/.lock` (created if missing).
fn lock_directory(dir: &std::path::Path) -> Result<std::fs::File, StartError> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::DirBuilderExt;
    let what = format!("CDR directory {}", dir.display());
    // Created for the appliance's user and group only: the records in it
    // are personal data (an existing folder keeps the mode it was given).
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(dir)
            .map_err(io_error(what.clone()))?;
    }
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
    // Arrival stamps tell a datagram that waited too long (shed, not
    // served late); without them nothing is shed.
    if let Err(e) = udp::enable_arrival_times(&socket) {
        tracing::warn!(error = %e, "no arrival stamps on the client socket: nothing is shed by queueing delay");
    }
    socket
        .set_nonblocking(true)
        .map_err(io_error(what.clone()))?;
    socket.bind(&addr.into()).map_err(io_error(what))?;
    Ok(socket.into())
}

/// This worker's identity on border links.
pub(crate) fn shard_identity(worker: usize, workers: usize) -> LinkHello {
    LinkHello {
        worker: u16::try_from(worker).unwrap_or(0),
        workers: u16::try_from(workers).unwrap_or(1).max(1),
    }
}

/// Subscribers as loaded, shared by the workers.
pub(crate) type SharedSubscribers = Arc<Subscribers>;
