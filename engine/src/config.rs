//! The appliance's configuration file (`presence-gw run --config FILE.toml`)
//! and the data files it names: the HSS table and subscriber provisioning.
//!
//! Loading is all or nothing. Every error names the file, the field (or line)
//! and the reason, and the process refuses to start (or, on reload, keeps
//! running on what it had). Relative paths are taken from the config file's
//! folder. An annotated example is in `docs/operations.md`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use presence_border::BorderConfig;
use presence_codec::{Msisdn, CREDENTIAL_LEN_MAX};
use serde::Deserialize;

use crate::roles::{PsId, WatchLimits, BUDDIES_MAX, PS_PER_NETWORK_MAX};
use crate::table::Prefix;

/// Why a configuration or one of its files was refused: the file, the field
/// (`network.workers`, or `line N` in a data file, or `-`) and the reason.
/// The same type the `[border]` section reports with.
pub use presence_border::ConfigError;

use crate::roles::{AuthPolicy, Rate};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    network: RawNetwork,
    listen: RawListen,
    tables: RawTables,
    hss: RawHss,
    provisioning: RawProvisioning,
    cdr: RawCdr,
    #[serde(default)]
    wa: RawWa,
    #[serde(default)]
    presence: RawPresence,
    #[serde(default)]
    watching: RawWatching,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    devices: RawDevices,
    #[serde(default)]
    io: RawIo,
    // Validated by presence-border.
    #[allow(dead_code)]
    border: toml::Value,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNetwork {
    name: String,
    workers: Option<usize>,
    #[serde(default)]
    poll_mode: bool,
    #[serde(default)]
    pin_workers: Option<bool>,
    /// Advise large arenas onto transparent huge pages (default false).
    #[serde(default)]
    huge_pages: bool,
    /// Steer traffic to its owner's worker in the kernel (default true).
    steering: Option<bool>,
    /// This network's number ranges, overriding what the numbering table says.
    own_ranges: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListen {
    client: String,
    metrics: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTables {
    numbering: PathBuf,
    ported: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHss {
    ranges: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProvisioning {
    subscribers: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCdr {
    directory: PathBuf,
    segment_max_bytes: Option<u64>,
    segment_max_age_s: Option<u64>,
    group_commit_records: Option<u64>,
    group_commit_wait_us: Option<u64>,
    retain_days: Option<u64>,
    retain_max_bytes: Option<u64>,
    retain_unexported: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIo {
    #[serde(default)]
    backend: IoBackend,
    xdp_interface: Option<String>,
    xdp_mode: Option<XdpMode>,
}

/// Where the XDP program attaches (`[io] xdp_mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// In the driver, before the kernel builds a socket buffer.
    Native,
    /// In the kernel's generic receive path: every interface, but on one
    /// that carries software-segmented packets (veth, loopback) a run of
    /// datagrams arrives as one frame.
    Generic,
}

/// How a worker's client socket moves datagrams (`[io] backend`;
/// `BENCHMARKS.md` has what each costs on the project's VM).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum IoBackend {
    /// The backend that measured best for device traffic: `mmsg` today.
    /// GRO merges only a run of datagrams from one source address and
    /// port, which devices that each send their own do not make; for them
    /// its 16 large buffers per call cost more calls than `mmsg`'s 64.
    #[default]
    Auto,
    /// `recvmmsg`/`sendmmsg`, 64 datagrams a call, GSO on send.
    Mmsg,
    /// `mmsg` with UDP GRO on receive: a run of datagrams one source sent
    /// with GSO arrives as one entry and is cut back into its datagrams.
    Gro,
    /// io_uring: a multishot `recvmsg` into a ring of kernel-picked
    /// buffers (no system call per received batch), sends as linked
    /// `sendmsg` requests with GSO, one submit per flush. Linux ≥ 6.0
    /// with io_uring enabled (`kernel.io_uring_disabled` = 0); where the
    /// kernel refuses, the worker falls back to `mmsg` and logs it.
    Uring,
    /// AF_XDP: an XDP program hands IPv4 datagrams for the client port to
    /// one AF_XDP socket per worker and receive queue, read from shared
    /// memory; the client socket stays bound for the rest (IPv6, queues
    /// without a socket). Needs root (`CAP_NET_ADMIN`, `CAP_BPF`); where
    /// the program or a socket cannot be set up the worker logs why and
    /// uses `mmsg`. Bypasses nftables (`docs/operations.md`).
    Xdp,
}

impl IoBackend {
    /// Whether receive asks for UDP GRO.
    pub fn wants_gro(self) -> bool {
        matches!(self, IoBackend::Gro)
    }

    /// Whether the client socket is served through io_uring.
    pub fn wants_uring(self) -> bool {
        matches!(self, IoBackend::Uring)
    }

    /// Whether device datagrams come through AF_XDP.
    pub fn wants_xdp(self) -> bool {
        matches!(self, IoBackend::Xdp)
    }

    /// Its name in the configuration file.
    pub fn name(self) -> &'static str {
        match self {
            IoBackend::Auto => "auto",
            IoBackend::Mmsg => "mmsg",
            IoBackend::Gro => "gro",
            IoBackend::Uring => "uring",
            IoBackend::Xdp => "xdp",
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPresence {
    window_slots: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWatching {
    min_interval_ms: Option<u64>,
    expiry_max_s: Option<u32>,
    per_target: Option<u32>,
    per_watcher: Option<u32>,
    per_origin: Option<u32>,
    max: Option<u32>,
}

impl RawWatching {
    /// The subscription limits, each checked against its range.
    fn limits(
        &self,
        error: &impl Fn(&str, String) -> ConfigError,
    ) -> Result<WatchLimits, ConfigError> {
        let d = WatchLimits::default();
        let ranged = |value: Option<u32>, default: u32, max: u32, field: &str| {
            let v = value.unwrap_or(default);
            if (1..=max).contains(&v) {
                Ok(v)
            } else {
                Err(error(field, format!("must be 1 to {max}")))
            }
        };
        let min_interval_ms = self.min_interval_ms.unwrap_or(d.min_interval_ms);
        if min_interval_ms > 3_600_000 {
            return Err(error(
                "watching.min_interval_ms",
                "must be 0 to 3600000 (an hour)".into(),
            ));
        }
        Ok(WatchLimits {
            min_interval_ms,
            expiry_max_s: ranged(
                self.expiry_max_s,
                d.expiry_max_s,
                86_400,
                "watching.expiry_max_s",
            )?,
            per_target: ranged(
                self.per_target,
                d.per_target,
                1 << 16,
                "watching.per_target",
            )?,
            per_watcher: ranged(
                self.per_watcher,
                d.per_watcher,
                1 << 20,
                "watching.per_watcher",
            )?,
            per_origin: ranged(
                self.per_origin,
                d.per_origin,
                1 << 24,
                "watching.per_origin",
            )?,
            total: ranged(self.max, d.total, 1 << 24, "watching.max")?,
        })
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    peer_queries_per_s: Option<u32>,
    peer_burst: Option<u32>,
    #[serde(default)]
    peers: std::collections::BTreeMap<String, u32>,
    watcher_queries_per_s: Option<u32>,
    watcher_burst: Option<u32>,
    auth_free_failures: Option<u16>,
    auth_lockout_initial_ms: Option<u64>,
    auth_lockout_max_ms: Option<u64>,
    auth_failures_per_source_per_s: Option<u32>,
    auth_failures_per_source_burst: Option<u32>,
    device_queue_ms: Option<u32>,
    border_queue_ms: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDevices {
    clock_skew_ms: Option<u64>,
    clock_ahead_ms: Option<u64>,
    insecure_credentials: Option<bool>,
}

/// How devices authenticate (`[devices]`, docs/wire-format.md §5.11).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceSettings {
    /// How far behind the appliance's clock a device's counter (its clock)
    /// may be.
    pub clock_skew_ms: u64,
    /// How far ahead; also how long after a start counters are held off
    /// (nothing signed before a restart is taken after it).
    pub clock_ahead_ms: u64,
    /// Accept the version 1 form, the secret in clear: **insecure**, for
    /// devices not yet updated; off by default.
    pub insecure_credentials: bool,
}

impl Default for DeviceSettings {
    fn default() -> DeviceSettings {
        DeviceSettings {
            clock_skew_ms: crate::roles::DeviceAuthPolicy::default().clock_skew_ms,
            clock_ahead_ms: crate::roles::DeviceAuthPolicy::default().clock_ahead_ms,
            insecure_credentials: false,
        }
    }
}

/// Each watcher's queries per second unless `[limits]` says otherwise.
pub const WATCHER_QUERIES_PER_S_DEFAULT: u32 = 10;
/// How long a device datagram may wait in the socket before it is shed,
/// unless `[limits]` says otherwise: long enough that a burst is served,
/// short against any deadline.
pub const DEVICE_QUEUE_MS_DEFAULT: u32 = 20;

/// How much work a border link's socket may hold before the queries read
/// from it are shed, unless `[limits]` says otherwise: the same bound as a
/// device datagram's, since a peer's query is some device's request.
pub const BORDER_QUEUE_MS_DEFAULT: u32 = 20;

/// Each watcher's burst unless `[limits]` says otherwise.
pub const WATCHER_BURST_DEFAULT: u32 = 20;
/// Failed credential checks per second from one source network (IPv4 /24,
/// IPv6 /56), for the appliance, unless `[limits]` says otherwise.
pub const AUTH_FAILURES_PER_SOURCE_PER_S_DEFAULT: u32 = 10;
/// Their burst unless `[limits]` says otherwise.
pub const AUTH_FAILURES_PER_SOURCE_BURST_DEFAULT: u32 = 100;

/// Rate limits (`[limits]`, docs/reliability.md): token buckets per peer
/// network at the IGPS and per watcher at the WA.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// Every peer network's rate unless listed in `peers`.
    pub peer_default: Option<Rate>,
    /// Peer networks by name, with their rate.
    pub peers: Vec<(String, Rate)>,
    /// Each watcher's rate (`None`: unlimited, `watcher_queries_per_s =
    /// 0`).
    pub watcher: Option<Rate>,
    /// How failed credential checks of one watcher are limited.
    pub auth: AuthPolicy,
    /// Failed credential checks per source network for the appliance
    /// (`None`: unlimited, `auth_failures_per_source_per_s = 0`).
    pub auth_failures_per_source: Option<Rate>,
    /// A device datagram that waited longer than this in the client
    /// socket (the kernel's arrival stamp to the moment it is read) is
    /// answered `Overloaded` unchecked, so the excess past capacity gets an
    /// answer instead of a timeout (`None`: never, `device_queue_ms = 0`).
    pub device_queue_ms: Option<u32>,
    /// A peer's frames read from a border link whose socket held more than
    /// this much work (its unread bytes at the measured service time per
    /// byte) have their queries answered `Overloaded` unchecked, so a peer
    /// past this network's capacity gets answers instead of timeouts
    /// (`None`: never, `border_queue_ms = 0`).
    pub border_queue_ms: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWa {
    deadline_ms: Option<u16>,
    query_cost: Option<u64>,
    pending_max: Option<usize>,
}

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct ApplianceConfig {
    /// The configuration file.
    pub file: PathBuf,
    /// This network's name, in the numbering table and on the border.
    pub network: String,
    /// Worker threads (one event loop each).
    pub workers: usize,
    /// Workers spin on their sockets instead of sleeping in `epoll_wait`.
    pub poll_mode: bool,
    /// Pin worker `i` to CPU `i`.
    pub pin_workers: bool,
    /// Advise allocations of 4 MiB and more onto transparent huge pages
    /// (`runtime::hugepages`); off by default, see `docs/operations.md`.
    pub huge_pages: bool,
    /// How the client socket moves datagrams (`[io] backend`).
    pub io_backend: IoBackend,
    /// With `backend = "xdp"`: the interface (`[io] xdp_interface`;
    /// `None`, the one holding the client address) and the attach mode
    /// (`[io] xdp_mode`; `None`, native: generic only when named, see
    /// `docs/operations.md`).
    pub xdp_interface: Option<String>,
    pub xdp_mode: Option<XdpMode>,
    /// Steer each device datagram and border connection to the worker
    /// owning it with reuseport BPF programs (`docs/architecture.md`,
    /// "Ownership and steering"); off, the kernel hashes and workers hand
    /// messages over.
    pub steering: bool,
    /// This network's number ranges, if configured; otherwise the numbering
    /// table's prefixes of `network` (with other networks' longer prefixes
    /// inside them carved out).
    pub own_ranges: Option<Vec<Prefix>>,
    /// UDP address devices send requests and publications to.
    pub client_listen: SocketAddr,
    /// HTTP address of the Prometheus metrics.
    pub metrics_listen: Option<SocketAddr>,
    /// The numbering table (`prefix,network,…`).
    pub numbering: PathBuf,
    /// Ported numbers (`msisdn,network`).
    pub ported: Option<PathBuf>,
    /// The HSS table (`prefix,presence_server`).
    pub hss_ranges: PathBuf,
    /// Subscriber provisioning (`msisdn,credential,credit,consent,buddies`).
    pub subscribers: PathBuf,
    /// Where charge records are written.
    pub cdr_directory: PathBuf,
    /// When the journal opens a new segment and how many records one
    /// `fdatasync` gathers under load.
    pub journal: crate::journal::JournalSettings,
    /// Which closed segments may be deleted (none unless configured).
    pub retention: crate::journal::retention::Retention,
    /// WA deadline for a query, in ms.
    pub deadline_ms: u16,
    /// Credit one query costs.
    pub query_cost: u64,
    /// Pending transactions of the appliance's WA, shared by its workers
    /// ([`pending_per_worker`](Self::pending_per_worker)).
    pub pending_max: usize,
    /// Duplicate-window slots per WA instance at each presence-server slice.
    pub window_slots: usize,
    /// Subscriptions each presence-server slice keeps, and how often it
    /// notifies (`[watching]`).
    pub watching: WatchLimits,
    /// Rate limits.
    pub limits: Limits,
    /// How devices authenticate.
    pub devices: DeviceSettings,
    /// The border gateway.
    pub border: BorderConfig,
}

/// Most workers the appliance starts: a presence server's duplicate window
/// keeps a ring per WA instance of each origin network, at most 16 of them
/// (`roles::WINDOW_STREAMS_PER_ORIGIN_MAX`), so a network runs at most 16
/// WA instances.
pub const WORKERS_MAX: usize = crate::roles::WINDOW_STREAMS_PER_ORIGIN_MAX;

impl ApplianceConfig {
    /// Each worker's share of [`pending_max`](Self::pending_max) (at least
    /// 16). Steering gives every worker about `1/workers` of the watchers,
    /// so the appliance holds as many transactions, and remembers device
    /// requests as long, whatever the number of workers, in the same
    /// memory: tables that a busy worker keeps full (the device-request
    /// memory) do not grow with the workers and crowd each other out of
    /// the CPU caches.
    pub fn pending_per_worker(&self) -> usize {
        self.pending_max.div_ceil(self.workers.max(1)).max(16)
    }

    /// Reads and validates `file` (not yet the data files it names).
    pub fn load(file: &Path) -> Result<ApplianceConfig, ConfigError> {
        let error = |field: &str, reason: String| ConfigError {
            file: file.to_path_buf(),
            field: field.to_string(),
            reason,
        };
        let text = std::fs::read_to_string(file).map_err(|e| error("-", e.to_string()))?;
        let raw: RawFile = toml::from_str(&text).map_err(|e| {
            let field = e
                .span()
                .and_then(|span| text.get(..span.start))
                .map_or_else(
                    || "-".to_string(),
                    |before| format!("line {}", before.matches('\n').count() + 1),
                );
            error(&field, e.message().to_string())
        })?;
        let border = BorderConfig::parse(&text, file)?;
        if border.network.as_str() != raw.network.name {
            return Err(error(
                "border.network",
                format!(
                    "must equal network.name ({:?}): a network has one name",
                    raw.network.name
                ),
            ));
        }
        let resolve = |p: &Path| presence_border::config::relative_to(file, p);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let workers = raw.network.workers.unwrap_or(cores.min(WORKERS_MAX));
        if !(1..=WORKERS_MAX).contains(&workers) {
            return Err(error(
                "network.workers",
                format!("must be 1 to {WORKERS_MAX}"),
            ));
        }
        let addr = |field: &str, text: &str| {
            text.parse::<SocketAddr>()
                .map_err(|e| error(field, format!("{text:?}: {e}")))
        };
        let client_listen = addr("listen.client", &raw.listen.client)?;
        let metrics_listen = match &raw.listen.metrics {
            Some(m) => Some(addr("listen.metrics", m)?),
            None => None,
        };
        let own_ranges = match &raw.network.own_ranges {
            None => None,
            Some(list) => {
                let mut ranges = Vec::with_capacity(list.len());
                for (i, text) in list.iter().enumerate() {
                    ranges.push(Prefix::parse(text).ok_or_else(|| {
                        error(
                            &format!("network.own_ranges[{i}]"),
                            format!("{text:?} is not a prefix of 1 to 15 digits"),
                        )
                    })?);
                }
                if ranges.is_empty() {
                    return Err(error("network.own_ranges", "must not be empty".into()));
                }
                Some(ranges)
            }
        };
        let deadline_ms = raw.wa.deadline_ms.unwrap_or(1500);
        if !(100..=60_000).contains(&deadline_ms) {
            return Err(error("wa.deadline_ms", "must be 100 to 60000".into()));
        }
        let pending_max = raw.wa.pending_max.unwrap_or(65_536);
        if !(16..=(1 << 22)).contains(&pending_max) {
            return Err(error("wa.pending_max", "must be 16 to 4194304".into()));
        }
        let window_slots = raw.presence.window_slots.unwrap_or(1 << 19);
        if !(1024..=(1 << 22)).contains(&window_slots) {
            return Err(error(
                "presence.window_slots",
                "must be 1024 to 4194304".into(),
            ));
        }
        let watching = raw.watching.limits(&error)?;
        let segment_max_bytes = raw.cdr.segment_max_bytes.unwrap_or(64 << 20);
        if !((64 << 10)..=(1 << 40)).contains(&segment_max_bytes) {
            return Err(error(
                "cdr.segment_max_bytes",
                "must be 65536 to 1099511627776".into(),
            ));
        }
        let segment_max_age_s = raw.cdr.segment_max_age_s.unwrap_or(3600);
        if !(1..=7 * 86_400).contains(&segment_max_age_s) {
            return Err(error("cdr.segment_max_age_s", "must be 1 to 604800".into()));
        }
        let defaults = crate::journal::GroupCommit::default();
        let group_commit_records = raw.cdr.group_commit_records.unwrap_or(defaults.records);
        if !(1..=65_536).contains(&group_commit_records) {
            return Err(error(
                "cdr.group_commit_records",
                "must be 1 to 65536".into(),
            ));
        }
        let group_commit_wait_us = raw.cdr.group_commit_wait_us.unwrap_or(defaults.wait_us);
        if group_commit_wait_us > 100_000 {
            return Err(error(
                "cdr.group_commit_wait_us",
                "must be 0 to 100000".into(),
            ));
        }
        let limits = raw.limits.validate(&error)?;
        let defaults = DeviceSettings::default();
        let devices = DeviceSettings {
            clock_skew_ms: raw.devices.clock_skew_ms.unwrap_or(defaults.clock_skew_ms),
            clock_ahead_ms: raw
                .devices
                .clock_ahead_ms
                .unwrap_or(defaults.clock_ahead_ms),
            insecure_credentials: raw
                .devices
                .insecure_credentials
                .unwrap_or(defaults.insecure_credentials),
        };
        if !(1_000..=86_400_000).contains(&devices.clock_skew_ms) {
            return Err(error(
                "devices.clock_skew_ms",
                "must be 1000 to 86400000 (a day)".into(),
            ));
        }
        if !(100..=60_000).contains(&devices.clock_ahead_ms) {
            return Err(error(
                "devices.clock_ahead_ms",
                "must be 100 to 60000 (a minute)".into(),
            ));
        }
        let retention = crate::journal::retention::Retention {
            max_age: match raw.cdr.retain_days {
                None => None,
                Some(days @ 1..=36_500) => Some(std::time::Duration::from_secs(days * 86_400)),
                Some(_) => {
                    return Err(error("cdr.retain_days", "must be 1 to 36500".into()));
                }
            },
            max_bytes: match raw.cdr.retain_max_bytes {
                None => None,
                Some(bytes) if bytes >= 4 * segment_max_bytes => Some(bytes),
                Some(_) => {
                    return Err(error(
                        "cdr.retain_max_bytes",
                        "must be at least 4 × segment_max_bytes".into(),
                    ));
                }
            },
            unexported: raw.cdr.retain_unexported.unwrap_or(false),
        };
        Ok(ApplianceConfig {
            retention,
            journal: crate::journal::JournalSettings {
                segments: crate::journal::SegmentLimits {
                    max_bytes: segment_max_bytes,
                    max_age: std::time::Duration::from_secs(segment_max_age_s),
                },
                group_commit: crate::journal::GroupCommit {
                    records: group_commit_records,
                    wait_us: group_commit_wait_us,
                },
            },
            limits,
            devices,
            window_slots,
            watching,
            file: file.to_path_buf(),
            network: raw.network.name,
            workers,
            poll_mode: raw.network.poll_mode,
            pin_workers: raw.network.pin_workers.unwrap_or(true),
            huge_pages: raw.network.huge_pages,
            io_backend: raw.io.backend,
            xdp_interface: raw.io.xdp_interface,
            xdp_mode: raw.io.xdp_mode,
            steering: raw.network.steering.unwrap_or(true),
            own_ranges,
            client_listen,
            metrics_listen,
            numbering: resolve(&raw.tables.numbering),
            ported: raw.tables.ported.as_deref().map(resolve),
            hss_ranges: resolve(&raw.hss.ranges),
            subscribers: resolve(&raw.provisioning.subscribers),
            cdr_directory: resolve(&raw.cdr.directory),
            deadline_ms,
            query_cost: raw.wa.query_cost.unwrap_or(1),
            pending_max,
            border,
        })
    }
}

impl RawLimits {
    fn validate(
        &self,
        error: &impl Fn(&str, String) -> ConfigError,
    ) -> Result<Limits, ConfigError> {
        let rate = |field: &str, per_s: u32, burst: Option<u32>| {
            if per_s == 0 {
                return Err(error(field, "must be at least 1".into()));
            }
            let burst = burst.unwrap_or((per_s / 10).max(1));
            if burst == 0 {
                return Err(error(field, "burst must be at least 1".into()));
            }
            Ok(Rate {
                per_second: per_s,
                burst,
            })
        };
        let peer_default = self
            .peer_queries_per_s
            .map(|r| rate("limits.peer_queries_per_s", r, self.peer_burst))
            .transpose()?;
        let mut peers = Vec::new();
        for (name, per_s) in &self.peers {
            let field = format!("limits.peers.{name}");
            if name.is_empty() || name.len() > 64 {
                return Err(error(&field, "not a network name".into()));
            }
            peers.push((name.clone(), rate(&field, *per_s, None)?));
        }
        // 0 turns a limit that is on by default off.
        let watcher = match self
            .watcher_queries_per_s
            .unwrap_or(WATCHER_QUERIES_PER_S_DEFAULT)
        {
            0 => None,
            per_s => Some(rate(
                "limits.watcher_queries_per_s",
                per_s,
                Some(self.watcher_burst.unwrap_or(WATCHER_BURST_DEFAULT)),
            )?),
        };
        let auth_failures_per_source = match self
            .auth_failures_per_source_per_s
            .unwrap_or(AUTH_FAILURES_PER_SOURCE_PER_S_DEFAULT)
        {
            0 => None,
            per_s => Some(rate(
                "limits.auth_failures_per_source_per_s",
                per_s,
                Some(
                    self.auth_failures_per_source_burst
                        .unwrap_or(AUTH_FAILURES_PER_SOURCE_BURST_DEFAULT),
                ),
            )?),
        };
        let defaults = AuthPolicy::default();
        let auth = AuthPolicy {
            free_failures: self.auth_free_failures.unwrap_or(defaults.free_failures),
            lockout_initial_ms: self
                .auth_lockout_initial_ms
                .unwrap_or(defaults.lockout_initial_ms),
            lockout_max_ms: self.auth_lockout_max_ms.unwrap_or(defaults.lockout_max_ms),
        };
        if !(1..=100).contains(&auth.free_failures) {
            return Err(error(
                "limits.auth_free_failures",
                "must be 1 to 100".into(),
            ));
        }
        if !(1..=86_400_000).contains(&auth.lockout_initial_ms) {
            return Err(error(
                "limits.auth_lockout_initial_ms",
                "must be 1 to 86400000 (a day)".into(),
            ));
        }
        if !(auth.lockout_initial_ms..=604_800_000).contains(&auth.lockout_max_ms) {
            return Err(error(
                "limits.auth_lockout_max_ms",
                "must be at least auth_lockout_initial_ms and at most 604800000 (a week)".into(),
            ));
        }
        let device_queue_ms = match self.device_queue_ms.unwrap_or(DEVICE_QUEUE_MS_DEFAULT) {
            0 => None,
            ms @ 1..=10_000 => Some(ms),
            _ => {
                return Err(error(
                    "limits.device_queue_ms",
                    "must be 0 (never shed) to 10000".into(),
                ));
            }
        };
        let border_queue_ms = match self.border_queue_ms.unwrap_or(BORDER_QUEUE_MS_DEFAULT) {
            0 => None,
            ms @ 1..=10_000 => Some(ms),
            _ => {
                return Err(error(
                    "limits.border_queue_ms",
                    "must be 0 (never shed) to 10000".into(),
                ));
            }
        };
        Ok(Limits {
            peer_default,
            peers,
            watcher,
            auth,
            auth_failures_per_source,
            device_queue_ms,
            border_queue_ms,
        })
    }
}

/// Reads the HSS table: `prefix,presence_server` per line (a header line
/// starting `prefix` is skipped, `#` starts a comment).
pub fn load_hss_ranges(path: &Path) -> Result<Vec<(Prefix, PsId)>, ConfigError> {
    let text = read(path)?;
    let mut ranges = Vec::new();
    for (n, line) in data_lines(&text) {
        let error = |reason: String| line_error(path, n, reason);
        let mut fields = line.split(',').map(str::trim);
        let (Some(prefix), Some(ps), None) = (fields.next(), fields.next(), fields.next()) else {
            return Err(error("expected `prefix,presence_server`".into()));
        };
        let prefix =
            Prefix::parse(prefix).ok_or_else(|| error(format!("bad prefix {prefix:?}")))?;
        let ps: u16 = ps
            .parse()
            .ok()
            .filter(|ps| *ps < PS_PER_NETWORK_MAX)
            .ok_or_else(|| {
                error(format!(
                    "presence server must be 0 to {}",
                    PS_PER_NETWORK_MAX - 1
                ))
            })?;
        if ranges.iter().any(|(p, _)| *p == prefix) {
            return Err(error(format!("prefix {prefix:?} listed twice")));
        }
        ranges.push((prefix, PsId(ps)));
    }
    Ok(ranges)
}

pub use crate::node::{Provisioned, Subscribers};

/// Most subscribers one provisioning file holds.
pub const SUBSCRIBERS_MAX: usize = 50_000_000;

/// Reads subscriber provisioning: `msisdn,credential,credit,consent,buddies`
/// per line, `consent` `1` or `0`, `buddies` MSISDNs separated by `;` (may be
/// empty). A header line starting `msisdn` is skipped; `#` starts a comment.
pub fn load_subscribers(path: &Path) -> Result<Subscribers, ConfigError> {
    let text = read(path)?;
    let mut subscribers = HashMap::new();
    for (n, line) in data_lines(&text) {
        let error = |reason: String| line_error(path, n, reason);
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        let [msisdn, credential, credit, consent, buddies] = fields[..] else {
            return Err(error(
                "expected `msisdn,credential,credit,consent,buddies`".into(),
            ));
        };
        let msisdn: Msisdn = msisdn
            .parse()
            .map_err(|e| error(format!("msisdn {msisdn:?}: {e}")))?;
        if credential.is_empty() || credential.len() > CREDENTIAL_LEN_MAX {
            return Err(error(format!(
                "credential must be 1 to {CREDENTIAL_LEN_MAX} bytes"
            )));
        }
        let credit: u64 = credit
            .parse()
            .map_err(|_| error(format!("credit {credit:?} is not a whole number")))?;
        let consent = match consent {
            "1" => true,
            "0" => false,
            other => return Err(error(format!("consent {other:?} must be 1 or 0"))),
        };
        let buddies = buddies
            .split(';')
            .map(str::trim)
            .filter(|b| !b.is_empty())
            .map(|b| {
                b.parse::<Msisdn>()
                    .map_err(|e| error(format!("buddy {b:?}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if buddies.len() > BUDDIES_MAX {
            return Err(error(format!("more than {BUDDIES_MAX} buddies")));
        }
        if subscribers.len() >= SUBSCRIBERS_MAX {
            return Err(error(format!("more than {SUBSCRIBERS_MAX} subscribers")));
        }
        let provisioned = Provisioned {
            credential: credential.as_bytes().to_vec(),
            credit,
            consent,
            buddies,
        };
        if subscribers.insert(msisdn, provisioned).is_some() {
            return Err(error(format!("{msisdn} listed twice")));
        }
    }
    Ok(subscribers)
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_path_buf(),
        field: "-".into(),
        reason: e.to_string(),
    })
}

/// Non-empty, non-comment, non-header lines with their 1-based numbers.
fn data_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .map(|(i, line)| (i + 1, line.split('#').next().unwrap_or("").trim()))
        .filter(|(i, line)| {
            !line.is_empty()
                && !(*i == 1 && (line.starts_with("prefix") || line.starts_with("msisdn")))
        })
}

fn line_error(path: &Path, line: usize, reason: String) -> ConfigError {
    ConfigError {
        file: path.to_path_buf(),
        field: format!("line {line}"),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[network]
name = "o2.gb"
workers = 1

[listen]
client = "127.0.0.1:0"

[tables]
numbering = "table.csv"

[hss]
ranges = "hss.csv"

[provisioning]
subscribers = "subscribers.csv"

[cdr]
directory = "cdr"

[border]
network = "o2.gb"
listen = "127.0.0.1:0"
certificate = "pki/bg.pem"
private_key = "pki/bg.key"
"#;

    fn load(text: &str) -> Result<ApplianceConfig, ConfigError> {
        // A folder per call: tests run in parallel, and two loading texts
        // of one length must not remove each other's file.
        static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("config-test-{}-{call}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("gw.toml");
        std::fs::write(&file, text).unwrap();
        let result = ApplianceConfig::load(&file);
        let _ = std::fs::remove_dir_all(&dir);
        result
    }

    #[test]
    fn a_minimal_file_loads_with_defaults_and_resolved_paths() {
        let config = load(MINIMAL).unwrap();
        assert_eq!(config.network, "o2.gb");
        assert_eq!(config.workers, 1);
        assert_eq!(config.deadline_ms, 1500);
        assert_eq!(
            config.journal.group_commit,
            crate::journal::GroupCommit::default()
        );
        assert!(config.own_ranges.is_none());
        assert!(config.numbering.ends_with("table.csv") && config.numbering.is_absolute());
    }

    #[test]
    fn the_io_backend_is_auto_unless_named_and_an_unknown_one_is_refused_by_line() {
        assert_eq!(load(MINIMAL).unwrap().io_backend, IoBackend::Auto);
        let mmsg = MINIMAL.replace("[cdr]", "[io]\nbackend = \"mmsg\"\n\n[cdr]");
        assert_eq!(load(&mmsg).unwrap().io_backend, IoBackend::Mmsg);
        let gro = MINIMAL.replace("[cdr]", "[io]\nbackend = \"gro\"\n\n[cdr]");
        assert!(load(&gro).unwrap().io_backend.wants_gro());
        let uring = MINIMAL.replace("[cdr]", "[io]\nbackend = \"uring\"\n\n[cdr]");
        let uring = load(&uring).unwrap().io_backend;
        assert!(uring.wants_uring() && !uring.wants_gro());
        assert!(!IoBackend::Auto.wants_gro(), "auto is mmsg today");
        assert!(!IoBackend::Auto.wants_uring());
        let xdp = MINIMAL.replace("[cdr]", "[io]\nbackend = \"xdp\"\n\n[cdr]");
        let config = load(&xdp).unwrap();
        assert!(config.io_backend.wants_xdp());
        assert_eq!((config.xdp_interface, config.xdp_mode), (None, None));
        let named = MINIMAL.replace(
            "[cdr]",
            "[io]\nbackend = \"xdp\"\nxdp_interface = \"eth1\"\nxdp_mode = \"generic\"\n\n[cdr]",
        );
        let config = load(&named).unwrap();
        assert_eq!(config.xdp_interface.as_deref(), Some("eth1"));
        assert_eq!(config.xdp_mode, Some(XdpMode::Generic));
        let xdp = MINIMAL.replace("[cdr]", "[io]\nbackend = \"dpdk\"\n\n[cdr]");
        let error = load(&xdp).unwrap_err();
        assert!(error.field.starts_with("line "), "{error}");
        assert!(
            error.reason.contains("auto"),
            "says what is allowed: {error}"
        );
    }

    #[test]
    fn the_queue_limits_default_to_20_ms_0_turns_one_off_and_past_10_s_is_refused() {
        let limits = load(MINIMAL).unwrap().limits;
        assert_eq!(
            (limits.device_queue_ms, limits.border_queue_ms),
            (Some(20), Some(20))
        );
        let set = MINIMAL.replace(
            "[cdr]",
            "[limits]\nborder_queue_ms = 5\ndevice_queue_ms = 0\n\n[cdr]",
        );
        let limits = load(&set).unwrap().limits;
        assert_eq!(
            (limits.device_queue_ms, limits.border_queue_ms),
            (None, Some(5))
        );
        let off = MINIMAL.replace("[cdr]", "[limits]\nborder_queue_ms = 0\n\n[cdr]");
        assert_eq!(load(&off).unwrap().limits.border_queue_ms, None);
        let long = MINIMAL.replace("[cdr]", "[limits]\nborder_queue_ms = 10001\n\n[cdr]");
        let error = load(&long).unwrap_err();
        assert_eq!(error.field, "limits.border_queue_ms", "{error}");
    }

    #[test]
    fn watching_limits_default_and_are_checked_by_field() {
        assert_eq!(load(MINIMAL).unwrap().watching, WatchLimits::default());
        let set = MINIMAL.replace(
            "[cdr]",
            "[watching]\nmin_interval_ms = 0\nper_target = 8\nmax = 100\n\n[cdr]",
        );
        let watching = load(&set).unwrap().watching;
        assert_eq!(
            (
                watching.min_interval_ms,
                watching.per_target,
                watching.total
            ),
            (0, 8, 100)
        );
        for (bad, field) in [
            ("per_watcher = 0", "watching.per_watcher"),
            ("expiry_max_s = 100000", "watching.expiry_max_s"),
            ("min_interval_ms = 3600001", "watching.min_interval_ms"),
        ] {
            let text = MINIMAL.replace("[cdr]", &format!("[watching]\n{bad}\n\n[cdr]"));
            assert_eq!(load(&text).unwrap_err().field, field, "{bad}");
        }
    }

    #[test]
    fn workers_share_the_pending_transactions_of_the_appliance() {
        let mut config = load(MINIMAL).unwrap();
        config.pending_max = 65_536;
        assert_eq!(config.pending_per_worker(), 65_536);
        config.workers = 2;
        assert_eq!(config.pending_per_worker(), 32_768);
        config.workers = 3;
        assert_eq!(config.pending_per_worker(), 21_846, "rounded up");
        config.pending_max = 20;
        config.workers = 16;
        assert_eq!(config.pending_per_worker(), 16, "never below 16");
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (
                MINIMAL.replace("workers = 1", "workers = 1\nown_ranges = [\"44x\"]"),
                "network.own_ranges[0]",
            ),
            (
                MINIMAL.replace("127.0.0.1:0\"\n\n[tables]", "nowhere\"\n\n[tables]"),
                "listen.client",
            ),
            (
                MINIMAL.replace(
                    "network = \"o2.gb\"\nlisten",
                    "network = \"vodafone.de\"\nlisten",
                ),
                "border.network",
            ),
            (MINIMAL.replace("[cdr]", "[cdr]\nsize = 3"), "line 19"),
            (
                MINIMAL.replace("[cdr]", "[cdr]\ngroup_commit_records = 0"),
                "cdr.group_commit_records",
            ),
        ];
        for (text, field) in cases {
            let error = load(&text).unwrap_err();
            assert_eq!(error.field, field, "{error}");
        }
    }

    #[test]
    fn data_files_name_their_line() {
        let dir = std::env::temp_dir().join(format!("config-data-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let hss = dir.join("hss.csv");
        std::fs::write(&hss, "prefix,presence_server\n4915,0\n49151,300\n").unwrap();
        let error = load_hss_ranges(&hss).unwrap_err();
        assert_eq!(error.field, "line 3");
        let subs = dir.join("subscribers.csv");
        std::fs::write(
            &subs,
            "msisdn,credential,credit,consent,buddies\n491511,x,5,2,\n",
        )
        .unwrap();
        let error = load_subscribers(&subs).unwrap_err();
        assert_eq!(error.field, "line 2");
        assert!(error.reason.contains("consent"), "{error}");
        std::fs::write(&subs, "491511,x,5,1,447700900123;447700900124\n").unwrap();
        let loaded = load_subscribers(&subs).unwrap();
        assert_eq!(loaded.len(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
