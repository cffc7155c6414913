//! The `[border]` section of the appliance's configuration file: who this
//! network is on the border, where it listens, its certificate, and the
//! peer networks it trusts and dials (`docs/operations.md`).
//!
//! ```toml
//! [border]
//! network = "alpha.example"          # our name, as our certificate carries it
//! listen = "0.0.0.0:7443"
//! certificate = "pki/bg.pem"         # relative paths: from the config file's folder
//! private_key = "pki/bg.key"
//!
//! [[border.peers]]
//! network = "beta.example"
//! address = "192.0.2.10:7443"        # omit to accept only
//! ca = "peers/beta-ca.pem"           # or: pinned_certificate = "peers/beta-bg.pem"
//! ```
//!
//! Loading is all or nothing, and every error names the file, the field and
//! the reason. Reloading builds a new [`BgTls`] generation from the same file:
//! that is how certificates rotate (`presence-gw pki bg --force`, then reload).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::endpoint::{EndpointSettings, HandshakeRate};
use crate::identity::NetworkName;
use crate::link::LinkSettings;
use crate::tls::{BgTls, TlsSetupError, TrustFile};

/// Largest per-link send queue the configuration accepts.
pub const SEND_QUEUE_BYTES_MAX: usize = 64 << 20;

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {field}: {reason}")]
pub struct ConfigError {
    /// The configuration file.
    pub file: PathBuf,
    /// The field (a TOML path such as `border.peers[1].ca`), or `-` for the
    /// whole file.
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBorder {
    network: String,
    listen: String,
    certificate: PathBuf,
    private_key: PathBuf,
    #[serde(default)]
    peers: Vec<RawPeer>,
    keepalive_ms: Option<u64>,
    dead_after_ms: Option<u64>,
    handshake_timeout_ms: Option<u64>,
    send_queue_bytes: Option<usize>,
    max_frame_len: Option<usize>,
    max_links: Option<usize>,
    max_pending_links: Option<usize>,
    max_pending_per_source: Option<usize>,
    handshakes_per_source_per_s: Option<u32>,
    handshake_burst_per_source: Option<u32>,
    backoff_min_ms: Option<u64>,
    backoff_max_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeer {
    network: String,
    address: Option<String>,
    ca: Option<PathBuf>,
    pinned_certificate: Option<PathBuf>,
}

/// One peer network from the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerConfig {
    /// Its name.
    pub network: NetworkName,
    /// Where to dial it, if we dial.
    pub address: Option<SocketAddr>,
    /// How its certificates are checked.
    pub trust: TrustFile,
}

/// The validated `[border]` section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BorderConfig {
    /// The file it came from (for errors on reload).
    pub file: PathBuf,
    /// Our network's name.
    pub network: NetworkName,
    /// Where we accept peers.
    pub listen: SocketAddr,
    /// Our BG certificate (PEM, chain).
    pub certificate: PathBuf,
    /// Our BG private key (PEM).
    pub private_key: PathBuf,
    /// The peers we trust.
    pub peers: Vec<PeerConfig>,
    /// Limits and timers.
    pub settings: EndpointSettings,
}

impl BorderConfig {
    /// Reads the `[border]` section of `file`.
    pub fn load(file: &Path) -> Result<BorderConfig, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|e| ConfigError {
            file: file.to_path_buf(),
            field: "-".into(),
            reason: e.to_string(),
        })?;
        BorderConfig::parse(&text, file)
    }

    /// Parses the `[border]` section of `text`, read from `file` (relative
    /// paths are taken from `file`'s folder). Other top-level sections are
    /// left to their owners.
    pub fn parse(text: &str, file: &Path) -> Result<BorderConfig, ConfigError> {
        let error = |field: &str, reason: String| ConfigError {
            file: file.to_path_buf(),
            field: field.to_string(),
            reason,
        };
        let table: toml::Table =
            toml::from_str(text).map_err(|e| error("-", e.message().to_string()))?;
        let border = table
            .get("border")
            .cloned()
            .ok_or_else(|| error("border", "missing section".into()))?;
        let raw: RawBorder = border
            .try_into()
            .map_err(|e: toml::de::Error| error("border", e.message().to_string()))?;
        let resolve = |p: &Path| relative_to(file, p);
        let network: NetworkName =
            raw.network
                .parse()
                .map_err(|e: crate::identity::NetworkNameError| {
                    error("border.network", e.to_string())
                })?;
        let listen: SocketAddr = raw
            .listen
            .parse()
            .map_err(|e: std::net::AddrParseError| error("border.listen", e.to_string()))?;
        let mut peers = Vec::with_capacity(raw.peers.len());
        for (i, peer) in raw.peers.iter().enumerate() {
            let field = |name: &str| format!("border.peers[{i}].{name}");
            let name: NetworkName =
                peer.network
                    .parse()
                    .map_err(|e: crate::identity::NetworkNameError| {
                        error(&field("network"), e.to_string())
                    })?;
            if name == network || peers.iter().any(|p: &PeerConfig| p.network == name) {
                return Err(error(
                    &field("network"),
                    format!("{name} is listed twice or is our own network"),
                ));
            }
            let address = match &peer.address {
                None => None,
                Some(a) => Some(a.parse().map_err(|e: std::net::AddrParseError| {
                    error(&field("address"), format!("{a:?}: {e}"))
                })?),
            };
            let trust = match (&peer.ca, &peer.pinned_certificate) {
                (Some(ca), None) => TrustFile::Ca(resolve(ca)),
                (None, Some(pin)) => TrustFile::Pinned(resolve(pin)),
                _ => {
                    return Err(error(
                        &field("ca"),
                        "give exactly one of `ca` and `pinned_certificate`".into(),
                    ))
                }
            };
            peers.push(PeerConfig {
                network: name,
                address,
                trust,
            });
        }
        let defaults = EndpointSettings::default();
        let link = LinkSettings {
            max_frame_len: raw.max_frame_len.unwrap_or(defaults.link.max_frame_len),
            send_queue_bytes: raw
                .send_queue_bytes
                .unwrap_or(defaults.link.send_queue_bytes),
            keepalive_ms: raw.keepalive_ms.unwrap_or(defaults.link.keepalive_ms),
            dead_after_ms: raw.dead_after_ms.unwrap_or(defaults.link.dead_after_ms),
            handshake_timeout_ms: raw
                .handshake_timeout_ms
                .unwrap_or(defaults.link.handshake_timeout_ms),
        };
        let max_links = raw.max_links.unwrap_or(defaults.max_links);
        // Unset, the pending limits follow max_links: a quarter of it, and
        // at most that for one source.
        let max_pending_links = raw.max_pending_links.unwrap_or((max_links / 4).max(1));
        let settings = EndpointSettings {
            link,
            max_links,
            max_pending_links,
            max_pending_per_source: raw
                .max_pending_per_source
                .unwrap_or(defaults.max_pending_per_source.min(max_pending_links)),
            handshakes_per_source: HandshakeRate {
                per_second: raw
                    .handshakes_per_source_per_s
                    .unwrap_or(defaults.handshakes_per_source.per_second),
                burst: raw
                    .handshake_burst_per_source
                    .unwrap_or(defaults.handshakes_per_source.burst),
            },
            backoff_min_ms: raw.backoff_min_ms.unwrap_or(defaults.backoff_min_ms),
            backoff_max_ms: raw.backoff_max_ms.unwrap_or(defaults.backoff_max_ms),
        };
        let checks: [(&str, bool, &str); 12] = [
            (
                "border.send_queue_bytes",
                link.send_queue_bytes <= SEND_QUEUE_BYTES_MAX,
                "must be at most 64 MiB",
            ),
            (
                "border.handshake_timeout_ms",
                link.handshake_timeout_ms > 0,
                "must be above 0",
            ),
            (
                "border.max_frame_len",
                (4..=65_535).contains(&link.max_frame_len),
                "must be 4 to 65535",
            ),
            (
                "border.send_queue_bytes",
                link.send_queue_bytes >= link.max_frame_len.saturating_add(2),
                "must hold at least one maximal frame",
            ),
            (
                "border.keepalive_ms",
                link.keepalive_ms > 0,
                "must be above 0",
            ),
            (
                "border.dead_after_ms",
                link.dead_after_ms > link.keepalive_ms,
                "must exceed keepalive_ms",
            ),
            (
                "border.max_links",
                (1..=65_536).contains(&settings.max_links),
                "must be 1 to 65536",
            ),
            (
                "border.max_pending_links",
                (1..=settings.max_links).contains(&settings.max_pending_links),
                "must be 1 to max_links",
            ),
            (
                "border.max_pending_per_source",
                (1..=settings.max_pending_links).contains(&settings.max_pending_per_source),
                "must be 1 to max_pending_links",
            ),
            (
                "border.handshakes_per_source_per_s",
                settings.handshakes_per_source.per_second >= 1,
                "must be at least 1",
            ),
            (
                "border.handshake_burst_per_source",
                settings.handshakes_per_source.burst >= 1,
                "must be at least 1",
            ),
            (
                "border.backoff_max_ms",
                settings.backoff_max_ms >= settings.backoff_min_ms && settings.backoff_min_ms > 0,
                "must be at least backoff_min_ms, which must be above 0",
            ),
        ];
        if let Some((field, _, reason)) = checks.iter().find(|(_, ok, _)| !ok) {
            return Err(error(field, (*reason).to_string()));
        }
        Ok(BorderConfig {
            file: file.to_path_buf(),
            network,
            listen,
            certificate: resolve(&raw.certificate),
            private_key: resolve(&raw.private_key),
            peers,
            settings,
        })
    }

    /// Reads the certificate files and builds TLS generation `generation`.
    /// Errors name the field whose file failed.
    pub fn tls(&self, generation: u64) -> Result<BgTls, ConfigError> {
        let trusts: Vec<(NetworkName, TrustFile)> = self
            .peers
            .iter()
            .map(|p| (p.network.clone(), p.trust.clone()))
            .collect();
        BgTls::load(
            generation,
            self.network.clone(),
            &self.certificate,
            &self.private_key,
            &trusts,
        )
        .map_err(|e| {
            let peer_field = |i: Option<usize>| {
                i.map_or_else(
                    || "border.peers".to_string(),
                    |i| format!("border.peers[{i}]"),
                )
            };
            let field = match &e {
                TlsSetupError::Pem { path, .. } if path == &self.private_key => {
                    "border.private_key".to_string()
                }
                TlsSetupError::Pem { path, .. } if path == &self.certificate => {
                    "border.certificate".to_string()
                }
                TlsSetupError::Pem { path, .. } => {
                    peer_field(self.peers.iter().position(|p| p.trust.path() == path))
                }
                TlsSetupError::Trust { network, .. } | TlsSetupError::DuplicatePeer(network) => {
                    peer_field(self.peers.iter().position(|p| &p.network == network))
                }
                _ => "border.certificate".to_string(),
            };
            ConfigError {
                file: self.file.clone(),
                field,
                reason: e.to_string(),
            }
        })
    }

    /// The peers we dial, with their addresses.
    pub fn dial_list(&self) -> Vec<(NetworkName, SocketAddr)> {
        self.peers
            .iter()
            .filter_map(|p| p.address.map(|a| (p.network.clone(), a)))
            .collect()
    }
}

/// `path` as a configuration file names it: relative paths are relative to
/// the folder holding `file`, so a configuration moves with its files.
pub fn relative_to(file: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        file.parent().unwrap_or(Path::new(".")).join(path)
    }
}
