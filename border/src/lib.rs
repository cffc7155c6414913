//! The border gateway (BG): mutually authenticated, encrypted links between
//! the gateways of two operator networks.
//!
//! The seed's trust model is that networks trust each other through a secure
//! relationship between their border gateways, and that the gateways never read
//! the presence messages. Here the link is TLS 1.3 (rustls, `ring`) over TCP
//! with certificates on both sides; the peer's network is the name its
//! certificate carries, checked against an explicit trust list. The BG reads
//! only the stream framing (`docs/wire-format.md` §6) and hands each frame on
//! with that authenticated network beside it, never inside it.
//!
//! Layers:
//! - [`identity`]: network names and peer positions.
//! - [`pki`]: making a network's CA and BG certificates (`presence-gw pki`).
//! - [`tls`]: the trust list, certificate checks and rustls configurations.
//! - [`link`]: one connection as a state machine over `Read`/`Write`.
//! - [`endpoint`]: one worker's links on a `mio` registry: accept, dial
//!   (one link per peer worker once the peer's hello tells how many),
//!   reconnect, keepalive, rotation, and routing each frame to the link that
//!   ends at the peer worker the caller names.
//! - [`node`]: a BG on its own threads, for tests, benchmarks and the demo.

pub mod config;
pub mod counters;
pub mod endpoint;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod identity;
pub mod link;
pub mod node;
pub mod pki;
pub mod tls;

pub use config::{BorderConfig, ConfigError, PeerConfig};
pub use counters::BgCounters;
pub use endpoint::{
    bind_listener, BgEndpoint, EndpointSettings, EndpointSetup, LinkView, SendError,
    MAX_PEER_WORKERS, SOLE_WORKER,
};
pub use identity::{NetworkName, NetworkNameError, PeerIndex};
pub use link::{CloseReason, Deliver, Direction, Link, LinkError, LinkSettings, Millis};
pub use tls::{BgTls, Identity, PeerSet, PeerTrust, Refusal, TlsSetupError, Trust, TrustFile};
