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

/// The sum of the metric lines of the appliance serving `/metrics` at
/// `metrics` that start with `name` (a full name with labels, or a family
/// prefix like `presence_bg_closed_total{`).
#[allow(dead_code)] // not every test binary reads metrics
pub(crate) fn metric(metrics: SocketAddr, name: &str) -> u64 {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(metrics).unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).unwrap();
    body.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// A `presence-gw run` process of this build, its log discarded.
#[allow(dead_code)] // not every test binary runs an appliance
pub(crate) fn start(config: &Path) -> presence_engine::lab::SpawnedAppliance {
    presence_engine::lab::SpawnedAppliance::start(
        Path::new(env!("CARGO_BIN_EXE_presence-gw")),
        config,
        None,
        |_| {},
    )
    .unwrap()
}

/// A `presence-gw run` process of this build, its log written to `log`.
#[allow(dead_code)] // not every test binary runs an appliance
pub(crate) fn start_logged(config: &Path, log: &Path) -> presence_engine::lab::SpawnedAppliance {
    presence_engine::lab::SpawnedAppliance::start(
        Path::new(env!("CARGO_BIN_EXE_presence-gw")),
        config,
        Some(log),
        |_| {},
    )
    .unwrap()
}

/// A query as a peer network's WA instance 0 sends it: transaction `txid`.
#[allow(dead_code)] // not every test binary plays a peer
pub(crate) fn peer_query(
    txid: u64,
    watcher: presence_codec::Msisdn,
    target: presence_codec::Msisdn,
) -> presence_codec::Message<'static> {
    presence_codec::Message::Query(presence_codec::Query {
        txid,
        watcher,
        target,
        hop_limit: 7,
        budget_ms: 1500,
        reply_node: 0,
        route_version: 1,
    })
}
