//! Shared setup for the border tests: generated networks, nodes on loopback.
#![allow(dead_code, unreachable_pub)]

use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use presence_border::endpoint::EndpointSettings;
use presence_border::node::{BgNode, InboundFrame, NodeConfig};
use presence_border::pki::NetworkMaterial;
use presence_border::{BgTls, LinkSettings, NetworkName, PeerIndex};

pub fn name(s: &str) -> NetworkName {
    s.parse().unwrap()
}

pub fn material(s: &str) -> NetworkMaterial {
    NetworkMaterial::generate(&name(s)).unwrap()
}

pub fn tls(generation: u64, me: &NetworkMaterial, trusted: &[&NetworkMaterial]) -> Arc<BgTls> {
    Arc::new(me.tls(generation, trusted).unwrap())
}

/// Fast timers so that dead peers and reconnects show within a second.
pub fn settings() -> EndpointSettings {
    EndpointSettings {
        link: LinkSettings {
            max_frame_len: 1472,
            send_queue_bytes: 1 << 20,
            keepalive_ms: 100,
            dead_after_ms: 1_500,
            handshake_timeout_ms: 600,
        },
        max_links: 64,
        backoff_min_ms: 20,
        backoff_max_ms: 200,
    }
}

pub fn start(
    tls: Arc<BgTls>,
    peers: Vec<(NetworkName, SocketAddr)>,
    workers: usize,
    settings: EndpointSettings,
) -> BgNode {
    start_on(
        "127.0.0.1:0".parse().unwrap(),
        tls,
        peers,
        workers,
        settings,
    )
}

pub fn start_on(
    listen: SocketAddr,
    tls: Arc<BgTls>,
    peers: Vec<(NetworkName, SocketAddr)>,
    workers: usize,
    settings: EndpointSettings,
) -> BgNode {
    BgNode::start(NodeConfig {
        tls,
        listen,
        peers,
        workers,
        settings,
        inbound_capacity: 1 << 16,
    })
    .unwrap()
}

/// A frame the BG carries without reading: header, then an opaque body
/// holding `seq`.
pub fn frame(seq: u32) -> Vec<u8> {
    let mut f = vec![0x50, 0x01, 0x0a, 0x04];
    f.extend_from_slice(&seq.to_be_bytes());
    f
}

pub fn seq_of(frame: &[u8]) -> u32 {
    u32::from_be_bytes(frame[4..8].try_into().unwrap())
}

pub fn recv(node: &BgNode, n: usize, timeout: Duration) -> Vec<InboundFrame> {
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    while got.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match node.inbound().recv_timeout(left) {
            Ok(f) => got.push(f),
            Err(_) => break,
        }
    }
    got
}

pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    cond()
}

pub const SECONDS_5: Duration = Duration::from_secs(5);

/// A hand-driven TLS client holding A's identity, for sending what a real BG
/// never would.
pub fn raw_client(
    a_tls: &BgTls,
    b: &NetworkMaterial,
    addr: SocketAddr,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let config = a_tls.client_config(PeerIndex(0)).unwrap().clone();
    let conn = rustls::ClientConnection::new(config, b.network.server_name()).unwrap();
    let sock = TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(SECONDS_5)).unwrap();
    let mut stream = rustls::StreamOwned::new(conn, sock);
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock).unwrap();
    }
    stream
}
