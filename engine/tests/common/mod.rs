//! Helpers shared by the appliance-level tests.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use presence_border::endpoint::EndpointSettings;
use presence_border::node::{BgNode, NodeConfig};
use presence_border::pki::NetworkMaterial;

/// The shipped numbering table.
pub(crate) fn table() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/msisdn-prefixes.csv")
}

/// A number from the environment, or `default`.
#[allow(dead_code)] // not every test binary reads the environment
pub(crate) fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A test border gateway speaking for `me`, trusting `peer`, dialing it at
/// `dial` if given (else only accepting).
#[allow(dead_code)] // not every test binary runs a border gateway
pub(crate) fn bg_node(
    me: &NetworkMaterial,
    peer: &NetworkMaterial,
    dial: Option<SocketAddr>,
) -> BgNode {
    BgNode::start(NodeConfig {
        tls: std::sync::Arc::new(me.tls(1, &[peer]).unwrap()),
        listen: "127.0.0.1:0".parse().unwrap(),
        peers: dial
            .map(|a| vec![(peer.network.clone(), a)])
            .unwrap_or_default(),
        workers: 1,
        settings: EndpointSettings::default(),
        inbound_capacity: 65_536,
    })
    .unwrap()
}
