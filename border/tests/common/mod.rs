//! Shared setup for the border tests: generated networks, nodes on loopback.
#![allow(dead_code, unreachable_pub)]

use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::{Events, Poll};
use presence_border::endpoint::{EndpointSettings, HandshakeRate};
use presence_border::node::{BgNode, InboundFrame, NodeConfig};
use presence_border::pki::NetworkMaterial;
use presence_border::{
    BgCounters, BgEndpoint, BgTls, Deliver, Direction, EndpointSetup, LinkSettings, LinkView,
    NetworkName, PeerIndex,
};
use presence_codec::LinkHello;

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
        max_pending_links: 16,
        max_pending_per_source: 8,
        handshakes_per_source: HandshakeRate::default(),
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

/// Worker `worker` of `workers`.
pub fn shard(worker: u16, workers: u16) -> LinkHello {
    LinkHello { worker, workers }
}

/// One endpoint of a [`Mesh`], with the frames it received.
pub struct Ep {
    pub endpoint: BgEndpoint,
    pub inbox: Vec<(PeerIndex, Vec<u8>)>,
    poll: Poll,
    events: Events,
}

impl Ep {
    pub fn counters(&self) -> &Arc<BgCounters> {
        self.endpoint.counters()
    }

    /// Established links this endpoint dialed to `peer`.
    pub fn dialed(&self, peer: PeerIndex) -> Vec<LinkView> {
        self.endpoint
            .links()
            .filter(|l| l.established && l.direction == Direction::Dialed(peer))
            .collect()
    }

    /// Established, usable links to or from `peer` whose peer hello names
    /// `worker`.
    pub fn ends_at(&self, peer: PeerIndex, worker: u16) -> usize {
        self.endpoint
            .links()
            .filter(|l| l.established && !l.draining && l.peer == Some(peer))
            .filter(|l| l.peer_shard.map(|h| h.worker) == Some(worker))
            .count()
    }

    pub fn seqs(&self) -> Vec<u32> {
        self.inbox.iter().map(|(_, f)| seq_of(f)).collect()
    }
}

/// One loop turn of an endpoint, as a worker's: events, leftover reads,
/// writes, timers.
fn turn<D: Deliver>(
    endpoint: &mut BgEndpoint,
    poll: &mut Poll,
    events: &mut Events,
    now: u64,
    deliver: &mut D,
) {
    let _ = poll.poll(events, Some(Duration::ZERO));
    let registry = poll.registry();
    for event in events.iter() {
        endpoint.handle_event(registry, event.token(), now, deliver);
    }
    endpoint.poll_ready(registry, now, deliver);
    endpoint.flush(registry, now);
    endpoint.tick(registry, now);
}

/// Border endpoints driven by hand on this thread, each on its own `mio`
/// poll, as a runtime's worker loops would drive them: so that a test can
/// give each its own shard identity and look at its links between turns.
pub struct Mesh {
    eps: Vec<Option<Ep>>,
    start: Instant,
}

impl Mesh {
    pub fn new() -> Mesh {
        Mesh {
            eps: Vec::new(),
            start: Instant::now(),
        }
    }

    pub fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap()
    }

    /// Adds an endpoint; returns its index.
    pub fn add(
        &mut self,
        tls: Arc<BgTls>,
        listener: Option<std::net::TcpListener>,
        peers: Vec<(NetworkName, SocketAddr)>,
        shard: LinkHello,
    ) -> usize {
        let poll = Poll::new().unwrap();
        let endpoint = BgEndpoint::new(
            EndpointSetup {
                tls,
                settings: settings(),
                listener,
                peers,
                token_base: 0,
                counters: Arc::new(BgCounters::default()),
                shard,
            },
            poll.registry(),
            self.now(),
        )
        .unwrap();
        self.eps.push(Some(Ep {
            endpoint,
            inbox: Vec::new(),
            poll,
            events: Events::with_capacity(256),
        }));
        self.eps.len() - 1
    }

    pub fn ep(&self, i: usize) -> &Ep {
        self.eps[i].as_ref().expect("endpoint killed")
    }

    pub fn ep_mut(&mut self, i: usize) -> &mut Ep {
        self.eps[i].as_mut().expect("endpoint killed")
    }

    /// Drops endpoint `i` with its sockets, as a killed process would.
    pub fn kill(&mut self, i: usize) {
        self.eps[i] = None;
    }

    /// Reloads endpoint `i`.
    pub fn reload(&mut self, i: usize, tls: Arc<BgTls>, peers: &[(NetworkName, SocketAddr)]) {
        let now = self.now();
        let ep = self.ep_mut(i);
        ep.endpoint.reload(tls, peers, ep.poll.registry(), now);
    }

    /// Queues a frame at endpoint `i`.
    pub fn send(
        &mut self,
        i: usize,
        peer: PeerIndex,
        to_worker: Option<u16>,
        frame: &[u8],
    ) -> Result<(), presence_border::SendError> {
        self.ep_mut(i).endpoint.send(peer, to_worker, frame)
    }

    /// Starts a clean stop of endpoint `i`.
    pub fn begin_shutdown(&mut self, i: usize) {
        let now = self.now();
        let ep = self.ep_mut(i);
        ep.endpoint.begin_shutdown(ep.poll.registry(), now);
    }

    /// One loop turn of every endpoint: events, leftover reads, writes,
    /// timers.
    pub fn step(&mut self) {
        let now = self.now();
        for ep in self.eps.iter_mut().flatten() {
            let inbox = &mut ep.inbox;
            let mut deliver = |peer: PeerIndex, frame: &[u8]| {
                inbox.push((peer, frame.to_vec()));
                true
            };
            turn(
                &mut ep.endpoint,
                &mut ep.poll,
                &mut ep.events,
                now,
                &mut deliver,
            );
        }
        std::thread::sleep(Duration::from_millis(1));
    }

    /// One loop turn of endpoint `i` alone (the others wait), its frames
    /// handed to `deliver` instead of its inbox.
    pub fn step_with<D: Deliver>(&mut self, i: usize, deliver: &mut D) {
        let now = self.now();
        let ep = self.ep_mut(i);
        turn(&mut ep.endpoint, &mut ep.poll, &mut ep.events, now, deliver);
    }

    /// Turns until `cond` holds (true) or `timeout` passes (false).
    pub fn run_until(&mut self, timeout: Duration, mut cond: impl FnMut(&Mesh) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if cond(self) {
                return true;
            }
            self.step();
        }
        cond(self)
    }

    /// Turns for `duration`.
    pub fn run_for(&mut self, duration: Duration) {
        let deadline = Instant::now() + duration;
        while Instant::now() < deadline {
            self.step();
        }
    }
}
