//! A two-network laboratory on loopback: the files an operator would write
//! for each network (certificates, configuration, HSS table, provisioning),
//! generated; their appliances started in this process or as processes; and
//! a device-side client that speaks the wire format over UDP. Used by
//! `presence-gw demo`, the load harness and the integration tests; no
//! production layer imports it.

pub mod fanout;
pub mod netns;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use presence_border::pki::NetworkMaterial;
use presence_codec::{
    ClientOperation, ClientRequest, DeviceAuth, DeviceKey, DeviceSigner, FrameReader, FrameWriter,
    Message, Msisdn, OpenFrame, Outcome, PresenceState, Publish, Reachability,
    FRAME_LEN_DEFAULT_MAX,
};

use crate::rng::SplitMix64;
use crate::table::{NetworkId, NumberingTable, Prefix};

/// The prefixes the numbering table gives `network`.
pub fn network_prefixes(table: &NumberingTable, network: &str) -> Vec<Prefix> {
    let version = table.snapshot();
    let Some(id) = version.names().id(network) else {
        return Vec::new();
    };
    version
        .prefixes()
        .prefixes()
        .iter()
        .filter(|(_, n)| *n == id)
        .map(|(p, _)| *p)
        .collect()
}

/// Buddies on each of network B's subscribers' lists.
pub const DEMO_BUDDIES: usize = 20;

/// One generated network: its folder, its subscribers and their secrets.
#[derive(Debug, Clone)]
pub struct DemoNetwork {
    /// The network's name (numbering table and border).
    pub name: String,
    /// Its folder: `gw.toml`, `pki/`, `peers/`, `hss.csv`, `subscribers.csv`, `cdr/`.
    pub dir: PathBuf,
    /// Subscribers, with the credential their devices use.
    pub subscribers: Vec<(Msisdn, String)>,
}

impl DemoNetwork {
    /// The configuration file.
    pub fn config_path(&self) -> PathBuf {
        self.folder().config_path()
    }

    /// Its border material (CA and BG certificate), read from `pki/`: what
    /// a test border gateway speaking for this network presents.
    pub fn material(&self) -> Result<NetworkMaterial, DemoError> {
        let pki = self.dir.join("pki");
        Ok(NetworkMaterial {
            network: self
                .name
                .parse()
                .map_err(|e| DemoError::Other(format!("{e}")))?,
            ca: presence_border::pki::read_pair(&pki.join("ca.pem"), &pki.join("ca.key"))?,
            bg: presence_border::pki::read_pair(&pki.join("bg.pem"), &pki.join("bg.key"))?,
        })
    }

    /// Its name and folder.
    pub fn folder(&self) -> NetworkFolder {
        NetworkFolder {
            name: self.name.clone(),
            dir: self.dir.clone(),
        }
    }
}

/// A generated network's name and folder: all that configuring and starting
/// its appliance needs (its subscribers are in the folder's files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkFolder {
    /// The network's name.
    pub name: String,
    /// Its folder (see [`DemoNetwork::dir`]).
    pub dir: PathBuf,
}

impl NetworkFolder {
    /// The configuration file.
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("gw.toml")
    }
}

/// Why the demo files could not be made.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// A file.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Certificates.
    #[error("{0}")]
    Pki(#[from] presence_border::pki::PkiError),
    /// The numbering table.
    #[error("numbering table: {0}")]
    Table(String),
    /// Something else.
    #[error("{0}")]
    Other(String),
}

/// `count` subscriber numbers of `network` (12 digits), drawn from the
/// prefixes `table` gives it and routed to it by `table`.
pub fn draw_numbers(
    table: &NumberingTable,
    network: &str,
    count: usize,
    seed: u64,
) -> Result<Vec<Msisdn>, DemoError> {
    let prefixes = network_prefixes(table, network);
    let version = table.snapshot();
    let id: NetworkId = version
        .names()
        .id(network)
        .ok_or_else(|| DemoError::Table(format!("{network} is not in the table")))?;
    if prefixes.is_empty() {
        return Err(DemoError::Table(format!("{network} has no prefixes")));
    }
    let mut rng = SplitMix64::new(seed);
    let mut out = std::collections::BTreeSet::new();
    let mut attempts = 0usize;
    while out.len() < count {
        attempts += 1;
        if attempts > count.saturating_mul(1000).max(10_000) {
            return Err(DemoError::Table(format!(
                "cannot draw {count} numbers of {network}"
            )));
        }
        let prefix = prefixes[rng.below(prefixes.len() as u64) as usize];
        let mut value = prefix.value();
        for _ in prefix.len()..12 {
            value = value * 10 + rng.below(10);
        }
        let Ok(m) = Msisdn::from_u64(value) else {
            continue;
        };
        if version.lookup(m) == Some(id) {
            out.insert(m);
        }
    }
    Ok(out.into_iter().collect())
}

/// Writes both networks' folders under `root`: A's `watchers` subscribers
/// watch B's `targets` subscribers (each of B's lists holds
/// [`DEMO_BUDDIES`] of A's subscribers, and so does each of A's, for
/// queries inside A; B's subscribers on two presence servers). A dials B; B learns A's address later
/// ([`write_config`] with `peer_addr`).
pub fn write_two_networks(
    root: &Path,
    table_path: &Path,
    a_name: &str,
    b_name: &str,
    watchers: usize,
    targets: usize,
) -> Result<(DemoNetwork, DemoNetwork), DemoError> {
    let table =
        NumberingTable::load(table_path, None).map_err(|e| DemoError::Table(e.to_string()))?;
    let a_numbers = draw_numbers(&table, a_name, watchers, 0xA)?;
    let b_numbers = draw_numbers(&table, b_name, targets, 0xB)?;
    let secret = |m: Msisdn| format!("s{:x}", m.as_u64().wrapping_mul(0x9E37_79B9) & 0xffff_ffff);
    let mut networks = Vec::new();
    let mut materials = Vec::new();
    for (name, numbers) in [(a_name, &a_numbers), (b_name, &b_numbers)] {
        let dir = root.join(name);
        std::fs::create_dir_all(dir.join("peers"))?;
        let material = NetworkMaterial::generate(
            &name.parse().map_err(|e| DemoError::Other(format!("{e}")))?,
        )?;
        material.write_to(&dir.join("pki"), true)?;
        let mut subscribers_csv = String::from("msisdn,credential,credit,consent,buddies\n");
        for (j, m) in numbers.iter().enumerate() {
            // B's subscriber j is watched by A's (j*7+k) mod n; A's
            // subscriber j by A's j+1+13k (not itself), for internal queries.
            let n = a_numbers.len();
            let buddies: Vec<String> = if name == b_name {
                (0..DEMO_BUDDIES.min(n))
                    .map(|k| a_numbers[(j * 7 + k) % n].to_string())
                    .collect()
            } else {
                (0..DEMO_BUDDIES.min(n.saturating_sub(1)))
                    .map(|k| (j + 1 + 13 * k) % n)
                    .filter(|w| *w != j)
                    .map(|w| a_numbers[w].to_string())
                    .collect()
            };
            let buddies = buddies.join(";");
            let _ = writeln!(subscribers_csv, "{m},{},1000000000,1,{buddies}", secret(*m));
        }
        std::fs::write(dir.join("subscribers.csv"), subscribers_csv)?;
        // B's ranges split over two presence servers; A's on one.
        let mut hss = String::from("prefix,presence_server\n");
        for (i, p) in network_prefixes(&table, name).iter().enumerate() {
            let ps = if name == b_name { i % 2 } else { 0 };
            let _ = writeln!(hss, "{},{ps}", prefix_digits(p.value(), p.len()));
        }
        std::fs::write(dir.join("hss.csv"), hss)?;
        networks.push(DemoNetwork {
            name: name.to_string(),
            dir,
            subscribers: numbers.iter().map(|m| (*m, secret(*m))).collect(),
        });
        materials.push(material);
    }
    let b = networks
        .pop()
        .ok_or_else(|| DemoError::Other("no B".into()))?;
    let a = networks
        .pop()
        .ok_or_else(|| DemoError::Other("no A".into()))?;
    std::fs::write(
        a.dir.join("peers").join(format!("{}-ca.pem", b.name)),
        &materials[1].ca.cert_pem,
    )?;
    std::fs::write(
        b.dir.join("peers").join(format!("{}-ca.pem", a.name)),
        &materials[0].ca.cert_pem,
    )?;
    Ok((a, b))
}

fn prefix_digits(value: u64, len: usize) -> String {
    format!("{value:0len$}")
}

/// Writes `network`'s `gw.toml`: loopback addresses on OS-chosen ports,
/// `workers` workers, the peer dialed at `peer_addr` if known.
pub fn write_config(
    network: &DemoNetwork,
    peer: &DemoNetwork,
    table_path: &Path,
    workers: usize,
    peer_addr: Option<SocketAddr>,
    metrics: bool,
) -> Result<PathBuf, DemoError> {
    // Tests send little: a small duplicate window keeps them light.
    let settings = TwoNetworkSettings {
        workers,
        poll_mode: false,
        window_slots: 1 << 16,
        metrics,
        steering: true,
        pin_workers: false,
        io_backend: crate::config::IoBackend::Auto,
    };
    write_config_with(
        &network.folder(),
        &peer.name,
        table_path,
        peer_addr,
        &settings,
    )
}

/// Writes `network`'s `gw.toml` as [`write_config`] does, with `settings`.
pub fn write_config_with(
    network: &NetworkFolder,
    peer: &str,
    table_path: &Path,
    peer_addr: Option<SocketAddr>,
    settings: &TwoNetworkSettings,
) -> Result<PathBuf, DemoError> {
    let TwoNetworkSettings {
        workers,
        poll_mode,
        window_slots,
        metrics,
        steering,
        pin_workers,
        io_backend,
    } = *settings;
    let io_backend = io_backend.name();
    let table = std::fs::canonicalize(table_path)?;
    let address = peer_addr
        .map(|a| format!("address = \"{a}\"\n"))
        .unwrap_or_default();
    let metrics = if metrics {
        "metrics = \"127.0.0.1:0\"\n"
    } else {
        ""
    };
    let text = format!(
        r#"# presence-gw configuration for {name} (generated by the demo)
[network]
name = "{name}"
workers = {workers}
pin_workers = {pin_workers}
poll_mode = {poll_mode}
steering = {steering}

[listen]
client = "127.0.0.1:0"
{metrics}
[tables]
numbering = "{table}"

[hss]
ranges = "hss.csv"

[provisioning]
subscribers = "subscribers.csv"

[cdr]
directory = "cdr"

[io]
backend = "{io_backend}"

# The duplicate window's ring per peer WA instance (docs/operations.md,
# "Memory"): the demo's single worker takes ~400,000 queries/s from one.
[presence]
window_slots = {window_slots}

[border]
network = "{name}"
listen = "127.0.0.1:0"
certificate = "pki/bg.pem"
private_key = "pki/bg.key"

[[border.peers]]
network = "{peer}"
{address}ca = "peers/{peer}-ca.pem"
"#,
        name = network.name,
        table = table.display(),
    );
    let path = network.config_path();
    std::fs::write(&path, text)?;
    Ok(path)
}

/// How the two demo appliances run.
#[derive(Debug, Clone, Copy)]
pub struct TwoNetworkSettings {
    /// Workers per appliance.
    pub workers: usize,
    /// Workers spin instead of waiting in epoll.
    pub poll_mode: bool,
    /// Duplicate-window ring size (`[presence] window_slots`).
    pub window_slots: usize,
    /// Serve `/metrics` on an OS-chosen loopback port.
    pub metrics: bool,
    /// Steer traffic to its owner's worker in the kernel
    /// (`network.steering`).
    pub steering: bool,
    /// Pin worker `i` to the `i`-th CPU the process may use
    /// (`network.pin_workers`).
    pub pin_workers: bool,
    /// How client sockets move datagrams (`[io] backend`).
    pub io_backend: crate::config::IoBackend,
}

/// Both networks' appliances, running in this process.
#[derive(Debug)]
pub struct TwoAppliances {
    /// A's appliance (the watchers' network).
    pub a: crate::runtime::Appliance,
    /// B's appliance (the targets' network).
    pub b: crate::runtime::Appliance,
}

/// Starts B, then A dialing B, then tells B where A listens (a reload), and
/// waits up to 10 s for a border link each way.
pub fn start_two_appliances(
    a: &NetworkFolder,
    b: &NetworkFolder,
    table_path: &Path,
    settings: TwoNetworkSettings,
    options: crate::runtime::StartOptions,
) -> Result<TwoAppliances, DemoError> {
    use crate::config::ApplianceConfig;
    use crate::runtime::Appliance;
    use std::sync::atomic::Ordering;
    let write = |me: &NetworkFolder, peer: &NetworkFolder, addr| {
        write_config_with(me, &peer.name, table_path, addr, &settings)
    };
    let load =
        |path: &Path| ApplianceConfig::load(path).map_err(|e| DemoError::Other(e.to_string()));
    let start = |path: &Path| {
        Appliance::start(load(path)?, options.clone()).map_err(|e| DemoError::Other(e.to_string()))
    };
    let b_config = write(b, a, None)?;
    let mut b_app = start(&b_config)?;
    let a_config = write(a, b, Some(b_app.border_addr()))?;
    let a_app = start(&a_config)?;
    write(b, a, Some(a_app.border_addr()))?;
    b_app
        .reload()
        .map_err(|e| DemoError::Other(e.to_string()))?;
    let up = |app: &Appliance| app.border_counters().links_up.load(Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(10);
    while (up(&a_app) < 1 || up(&b_app) < 1) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(TwoAppliances { a: a_app, b: b_app })
}

/// A `presence-gw run` process, with the addresses it printed on starting.
#[derive(Debug)]
pub struct SpawnedAppliance {
    /// The process.
    pub child: std::process::Child,
    /// Its devices' address.
    pub client: SocketAddr,
    /// Its border gateway's address.
    pub border: SocketAddr,
    /// Its `/metrics` address, if it serves one.
    pub metrics: Option<SocketAddr>,
}

impl SpawnedAppliance {
    /// Runs `binary run --config config` (after `prepare`, which may set the
    /// command's CPU affinity or environment), its log to `log` (or
    /// nowhere), and reads the line it prints once it listens.
    pub fn start(
        binary: &Path,
        config: &Path,
        log: Option<&Path>,
        prepare: impl FnOnce(&mut std::process::Command),
    ) -> Result<SpawnedAppliance, DemoError> {
        use std::io::BufRead;
        use std::process::{Command, Stdio};
        let stderr = match log {
            Some(path) => Stdio::from(std::fs::File::create(path)?),
            None => Stdio::null(),
        };
        let mut command = Command::new(binary);
        command
            .args(["run", "--config"])
            .arg(config)
            .stdout(Stdio::piped())
            .stderr(stderr);
        prepare(&mut command);
        let mut child = command.spawn()?;
        let mut line = String::new();
        if let Some(stdout) = child.stdout.as_mut() {
            std::io::BufReader::new(stdout).read_line(&mut line)?;
        }
        let field = |name: &str| -> Option<SocketAddr> {
            line.split_whitespace()
                .find_map(|f| f.strip_prefix(name)?.strip_prefix('='))?
                .parse()
                .ok()
        };
        match (field("client"), field("border")) {
            (Some(client), Some(border)) => Ok(SpawnedAppliance {
                client,
                border,
                metrics: field("metrics"),
                child,
            }),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                Err(DemoError::Other(format!(
                    "{} did not start (it printed {line:?}; see its log)",
                    binary.display()
                )))
            }
        }
    }

    /// Waits until the log file `log` holds a line containing `text`
    /// (`false` if `wait` passed, or the process exited, first).
    pub fn wait_for_log(&mut self, log: &Path, text: &str, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            if std::fs::read_to_string(log).is_ok_and(|l| l.contains(text)) {
                return true;
            }
            if !matches!(self.child.try_wait(), Ok(None)) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: i32) -> std::io::Result<()> {
        let pid = i32::try_from(self.child.id()).map_err(std::io::Error::other)?;
        // SAFETY: kill(2) on our own child's pid, which we have not waited
        // for, so it cannot have been reused.
        if unsafe { libc::kill(pid, signal) } == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    /// SIGTERM, then the exit status once it exits (`None` if it did not
    /// within `wait`; it is then killed).
    pub fn terminate(&mut self, wait: Duration) -> Option<i32> {
        let _ = self.signal(libc::SIGTERM);
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }
}

impl Drop for SpawnedAppliance {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A device-side client: sends requests and publications over UDP in
/// batched frames and collects the answers.
#[derive(Debug)]
pub struct DeviceClient {
    socket: UdpSocket,
    to: SocketAddr,
    next_txid: u64,
    buf: Vec<u8>,
    /// The devices this client speaks for.
    devices: Devices,
}

/// Devices of many subscribers, as a test or tool speaks for them: each
/// one's key (derived from its provisioned secret) and counter, so every
/// request and publication is signed as that subscriber's device signs it
/// (docs/wire-format.md §5.11), counters increasing per device.
#[derive(Debug, Default)]
pub struct Devices {
    signers: HashMap<Msisdn, DeviceSigner>,
}

impl Devices {
    /// The signer of `subscriber`'s device, provisioned with `secret` (a
    /// new secret starts a new device).
    pub fn signer(&mut self, subscriber: Msisdn, secret: &[u8]) -> &mut DeviceSigner {
        let key = DeviceKey::derive(subscriber, secret);
        let signer = self
            .signers
            .entry(subscriber)
            .or_insert_with(|| DeviceSigner::new(key.clone()));
        if signer.key() != &key {
            *signer = DeviceSigner::new(key);
        }
        signer
    }

    /// A query from `watcher`'s device about `target`, signed now.
    pub fn query(
        &mut self,
        watcher: Msisdn,
        secret: &[u8],
        txid: u64,
        target: Msisdn,
    ) -> ClientRequest<'static> {
        self.request(watcher, secret, txid, target, ClientOperation::Query)
    }

    /// A request of `operation` from `watcher`'s device about `target`,
    /// signed now.
    pub fn request(
        &mut self,
        watcher: Msisdn,
        secret: &[u8],
        txid: u64,
        target: Msisdn,
        operation: ClientOperation,
    ) -> ClientRequest<'static> {
        let request = ClientRequest {
            txid,
            watcher,
            target,
            operation,
            auth: DeviceAuth::UNSIGNED,
        };
        self.signer(watcher, secret).request(request, unix_ms_now())
    }

    /// A publication of `state` by `subscriber`'s device, signed now.
    pub fn publish(
        &mut self,
        subscriber: Msisdn,
        secret: &[u8],
        txid: u64,
        state: PresenceState,
    ) -> Publish<'static> {
        let publish = Publish {
            txid,
            subscriber,
            state,
            auth: DeviceAuth::UNSIGNED,
        };
        self.signer(subscriber, secret)
            .publish(publish, unix_ms_now())
    }
}

/// The Unix time in milliseconds: a device's counter (§5.11).
pub fn unix_ms_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// What a device received: a final answer, or a notification of one of
/// its subscriptions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceMessage {
    /// A final answer.
    Answer(DeviceAnswer),
    /// A notification (§5.6), under the device's request id of its latest
    /// Subscribe.
    Notify(presence_codec::Notify),
}

/// A final answer a device received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceAnswer {
    /// The device's request id.
    pub txid: u64,
    /// B.
    pub target: Msisdn,
    /// The outcome.
    pub outcome: Outcome,
}

impl DeviceClient {
    /// A client of the appliance whose devices' address is `to`, from
    /// loopback when `to` is on loopback (else from the address the route
    /// to `to` picks).
    pub fn new(to: SocketAddr) -> std::io::Result<DeviceClient> {
        let local: SocketAddr = match to {
            SocketAddr::V4(v4) if v4.ip().is_loopback() => ([127, 0, 0, 1], 0).into(),
            SocketAddr::V4(_) => ([0, 0, 0, 0], 0).into(),
            SocketAddr::V6(v6) if v6.ip().is_loopback() => {
                (std::net::Ipv6Addr::LOCALHOST, 0).into()
            }
            SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let socket = UdpSocket::bind(local)?;
        socket.set_read_timeout(Some(Duration::from_millis(20)))?;
        Ok(DeviceClient {
            socket,
            to,
            next_txid: 1,
            buf: vec![0u8; 4096],
            devices: Devices::default(),
        })
    }

    /// Sends queries `(watcher, credential, target)`, as many to a frame as
    /// fit (27 signed requests in a default frame); returns their device
    /// request ids.
    pub fn query(&mut self, asks: &[(Msisdn, &str, Msisdn)]) -> std::io::Result<Vec<u64>> {
        let mut ids = Vec::with_capacity(asks.len());
        let mut frame = OpenFrame::new(Vec::new(), FRAME_LEN_DEFAULT_MAX);
        for (watcher, credential, target) in asks {
            let txid = self.next_txid;
            self.next_txid += 1;
            let message = Message::ClientRequest(self.devices.query(
                *watcher,
                credential.as_bytes(),
                txid,
                *target,
            ));
            if frame.push(&message).is_err() {
                let full = std::mem::replace(
                    &mut frame,
                    OpenFrame::new(Vec::new(), FRAME_LEN_DEFAULT_MAX),
                );
                self.socket.send_to(&full.into_bytes(), self.to)?;
                frame
                    .push(&message)
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
            }
            ids.push(txid);
        }
        if !frame.is_empty() {
            self.socket.send_to(&frame.into_bytes(), self.to)?;
        }
        Ok(ids)
    }

    /// Publishes each subscriber's status as attached (devices of B),
    /// batched into frames.
    pub fn publish_attached(&mut self, subscribers: &[(Msisdn, String)]) -> std::io::Result<()> {
        for chunk in subscribers.chunks(24) {
            let mut frame = Vec::with_capacity(FRAME_LEN_DEFAULT_MAX);
            let mut writer = FrameWriter::with_version(&mut frame, FRAME_LEN_DEFAULT_MAX, 2)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            for (subscriber, credential) in chunk {
                let txid = self.next_txid;
                self.next_txid += 1;
                let message = Message::Publish(self.devices.publish(
                    *subscriber,
                    credential.as_bytes(),
                    txid,
                    PresenceState::Attached(Reachability::PACKET_DATA_AND_SMS),
                ));
                writer
                    .push(&message)
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
            }
            self.socket.send_to(&frame, self.to)?;
            // Pace: the appliance's socket buffer is finite.
            std::thread::sleep(Duration::from_micros(200));
        }
        Ok(())
    }

    /// Sends one request of `operation` from `watcher`'s device (its
    /// secret `credential`) about `target`; returns its request id.
    pub fn ask(
        &mut self,
        watcher: Msisdn,
        credential: &str,
        target: Msisdn,
        operation: ClientOperation,
    ) -> std::io::Result<u64> {
        let txid = self.next_txid;
        self.next_txid += 1;
        let request = self
            .devices
            .request(watcher, credential.as_bytes(), txid, target, operation);
        let mut frame = OpenFrame::new(Vec::new(), FRAME_LEN_DEFAULT_MAX);
        frame
            .push(&Message::ClientRequest(request))
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        self.socket.send_to(&frame.into_bytes(), self.to)?;
        Ok(txid)
    }

    /// Publishes `state` as `subscriber`'s device (its secret
    /// `credential`).
    pub fn publish(
        &mut self,
        subscriber: Msisdn,
        credential: &str,
        state: PresenceState,
    ) -> std::io::Result<()> {
        let txid = self.next_txid;
        self.next_txid += 1;
        let publish = self
            .devices
            .publish(subscriber, credential.as_bytes(), txid, state);
        let mut frame = Vec::with_capacity(FRAME_LEN_DEFAULT_MAX);
        let mut writer = FrameWriter::with_version(&mut frame, FRAME_LEN_DEFAULT_MAX, 2)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        writer
            .push(&Message::Publish(publish))
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        self.socket.send_to(&frame, self.to)?;
        Ok(())
    }

    /// Answers and notifications received within `wait` (stops early once
    /// `want` arrived).
    pub fn receive(&mut self, want: usize, wait: Duration) -> Vec<DeviceMessage> {
        self.receive_kept(want, wait, Some)
    }

    /// Answers received within `wait` (stops early once `want` arrived);
    /// notifications are passed over.
    pub fn answers(&mut self, want: usize, wait: Duration) -> Vec<DeviceAnswer> {
        self.receive_kept(want, wait, |m| match m {
            DeviceMessage::Answer(a) => Some(a),
            DeviceMessage::Notify(_) => None,
        })
    }

    /// What `keep` keeps of the answers and notifications received within
    /// `wait` (stops early once it kept `want`).
    fn receive_kept<T>(
        &mut self,
        want: usize,
        wait: Duration,
        keep: impl Fn(DeviceMessage) -> Option<T>,
    ) -> Vec<T> {
        let deadline = Instant::now() + wait;
        let mut got = Vec::new();
        while got.len() < want && Instant::now() < deadline {
            let Ok(n) = self.socket.recv(&mut self.buf) else {
                continue;
            };
            let Some(frame) = self.buf.get(..n) else {
                continue;
            };
            let Ok(reader) = FrameReader::new(frame, FRAME_LEN_DEFAULT_MAX) else {
                continue;
            };
            for message in reader.flatten() {
                let received = match message {
                    Message::Answer(a) => DeviceMessage::Answer(DeviceAnswer {
                        txid: a.txid,
                        target: a.target,
                        outcome: a.outcome,
                    }),
                    Message::Notify(n) => DeviceMessage::Notify(n),
                    _ => continue,
                };
                got.extend(keep(received));
            }
        }
        got
    }
}

/// What a short load run measured.
#[derive(Debug, Clone)]
pub struct LoadSummary {
    /// Requests sent.
    pub sent: u64,
    /// Final answers received.
    pub answered: u64,
    /// Answers by outcome name.
    pub outcomes: HashMap<&'static str, u64>,
    /// Wall time.
    pub elapsed: Duration,
    /// Request-to-answer latency at the client, µs.
    pub latency: hdrhistogram::Histogram<u64>,
}

/// Runs `duration` of queries from A's `watchers` about B's `targets` (each
/// asked by one of its buddies, so permitted), keeping at most `window`
/// outstanding. Each datagram holds 32 requests of watchers one worker of
/// A's `workers` owns, as a batching device gateway sends them.
pub fn run_load(
    client_addr: SocketAddr,
    workers: u16,
    watchers: &[(Msisdn, String)],
    targets: &[(Msisdn, String)],
    duration: Duration,
    window: usize,
) -> Result<LoadSummary, DemoError> {
    let mut client = DeviceClient::new(client_addr)?;
    client
        .socket
        .set_read_timeout(Some(Duration::from_millis(1)))?;
    let mut latency = hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 3)
        .map_err(|e| DemoError::Other(e.to_string()))?;
    let mut sent_at: HashMap<u64, Instant> = HashMap::new();
    let mut outcomes: HashMap<&'static str, u64> = HashMap::new();
    let (mut sent, mut answered) = (0u64, 0u64);
    let start = Instant::now();
    let mut i = 0usize;
    let mut by_owner: Vec<Vec<(Msisdn, &str, Msisdn)>> = (0..workers.max(1))
        .map(|_| Vec::with_capacity(32))
        .collect();
    while start.elapsed() < duration
        || (!sent_at.is_empty() && start.elapsed() < duration + Duration::from_secs(3))
    {
        if start.elapsed() < duration && sent_at.len() + 32 <= window {
            let asks = loop {
                let j = (i.wrapping_mul(0x9E37_79B9)) % targets.len().max(1);
                let k = i % DEMO_BUDDIES.min(watchers.len()).max(1);
                let (watcher, credential) = &watchers[(j * 7 + k) % watchers.len()];
                let (target, _) = &targets[j];
                i += 1;
                let owner = presence_codec::shard::owner(*watcher, workers);
                let Some(asks) = by_owner.get_mut(usize::from(owner)) else {
                    continue;
                };
                asks.push((*watcher, credential.as_str(), *target));
                if asks.len() == 32 {
                    break std::mem::take(asks);
                }
            };
            let ids = client.query(&asks)?;
            let now = Instant::now();
            for id in ids {
                sent_at.insert(id, now);
                sent += 1;
            }
        }
        for answer in client.answers(1, Duration::from_millis(1)) {
            if let Some(at) = sent_at.remove(&answer.txid) {
                answered += 1;
                let _ = latency.record(
                    u64::try_from(at.elapsed().as_micros())
                        .unwrap_or(u64::MAX)
                        .max(1),
                );
                *outcomes.entry(answer.outcome.class().name()).or_default() += 1;
            }
        }
    }
    Ok(LoadSummary {
        sent,
        answered,
        outcomes,
        elapsed: start.elapsed(),
        latency,
    })
}
