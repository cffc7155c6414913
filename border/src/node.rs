//! A border gateway on its own threads: `workers` event loops, each with its
//! own [`BgEndpoint`] and its own `SO_REUSEPORT` listener on the shared port.
//!
//! This is the harness the tests, the benchmark setup and the demo use to run
//! a BG beside other code. Commands reach the workers through bounded
//! channels plus a `mio` waker; inbound frames leave through one bounded
//! channel (a full channel drops the frame and counts it). The appliance's
//! runtime embeds [`BgEndpoint`]s in its own worker loops instead, with no
//! channel on the frame path.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam::channel::{self, Receiver, Sender, TrySendError};
use mio::{Events, Poll, Token, Waker};

use crate::counters::BgCounters;
use crate::endpoint::{bind_listener, BgEndpoint, EndpointSettings, EndpointSetup, SOLE_WORKER};
use crate::identity::{NetworkName, PeerIndex};
use crate::link::Millis;
use crate::tls::BgTls;

const WAKER: Token = Token(0);
const ENDPOINT_TOKENS: usize = 1;
const COMMANDS_MAX: usize = 4096;
/// How long a clean stop waits for peers to answer close_notify.
const STOP_LINGER_MS: Millis = 2_000;

/// How to run a BG node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// TLS generation to start with.
    pub tls: Arc<BgTls>,
    /// Address to accept peers on (port 0: the OS picks one port for all
    /// workers).
    pub listen: SocketAddr,
    /// Peers to dial, by name.
    pub peers: Vec<(NetworkName, SocketAddr)>,
    /// Worker threads (each dials every peer once: one link per peer per worker).
    pub workers: usize,
    /// Endpoint limits and timers.
    pub settings: EndpointSettings,
    /// Capacity of the inbound frame channel.
    pub inbound_capacity: usize,
}

/// A frame received from a peer, with the authenticated peer network beside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundFrame {
    /// The peer network, from its certificate.
    pub peer: NetworkName,
    /// The worker that received it.
    pub worker: usize,
    /// The frame, unparsed.
    pub frame: Vec<u8>,
}

enum Command {
    Send {
        peer: NetworkName,
        frame: Vec<u8>,
    },
    Reload {
        tls: Arc<BgTls>,
        peers: Vec<(NetworkName, SocketAddr)>,
    },
    Stop,
    Abort,
}

/// Per-peer link counts a worker last published: (peer, links up, usable).
type LinkStatus = Vec<(NetworkName, usize, usize)>;

struct Worker {
    commands: Sender<Command>,
    waker: Arc<Waker>,
    status: Arc<Mutex<LinkStatus>>,
    thread: Option<JoinHandle<()>>,
}

/// A running BG node.
pub struct BgNode {
    workers: Vec<Worker>,
    inbound: Receiver<InboundFrame>,
    counters: Arc<BgCounters>,
    local_addr: SocketAddr,
}

impl std::fmt::Debug for BgNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BgNode")
            .field("local_addr", &self.local_addr)
            .field("workers", &self.workers.len())
            .finish()
    }
}

impl BgNode {
    /// Binds the listeners and starts the workers.
    pub fn start(config: NodeConfig) -> std::io::Result<BgNode> {
        let counters = Arc::new(BgCounters::default());
        let (inbound_tx, inbound) = channel::bounded(config.inbound_capacity.max(1));
        let first = bind_listener(config.listen, true)?;
        let local_addr = first.local_addr()?;
        let mut listeners = vec![first];
        for _ in 1..config.workers.max(1) {
            listeners.push(bind_listener(local_addr, true)?);
        }
        let mut workers = Vec::new();
        for (worker_index, listener) in listeners.into_iter().enumerate() {
            let poll = Poll::new()?;
            let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
            let (commands, command_rx) = channel::bounded(COMMANDS_MAX);
            let status = Arc::new(Mutex::new(Vec::new()));
            let endpoint = BgEndpoint::new(
                EndpointSetup {
                    tls: config.tls.clone(),
                    settings: config.settings,
                    listener: Some(listener),
                    peers: config.peers.clone(),
                    token_base: ENDPOINT_TOKENS,
                    counters: counters.clone(),
                    // Not sharded: every worker serves any subscriber, so each
                    // says it is the only one (peers dial it once).
                    shard: SOLE_WORKER,
                },
                poll.registry(),
                0,
            )?;
            let worker_status = status.clone();
            let inbound_tx = inbound_tx.clone();
            let thread = std::thread::Builder::new()
                .name(format!("bg-{worker_index}"))
                .spawn(move || {
                    run_worker(
                        worker_index,
                        poll,
                        endpoint,
                        command_rx,
                        inbound_tx,
                        worker_status,
                    )
                })?;
            workers.push(Worker {
                commands,
                waker,
                status,
                thread: Some(thread),
            });
        }
        Ok(BgNode {
            workers,
            inbound,
            counters,
            local_addr,
        })
    }

    /// The address peers dial.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The node's counters.
    pub fn counters(&self) -> &Arc<BgCounters> {
        &self.counters
    }

    /// Frames received from peers.
    pub fn inbound(&self) -> &Receiver<InboundFrame> {
        &self.inbound
    }

    /// Asks worker `worker` to send `frame` to `peer`. Returns `false` if the
    /// worker's command queue is full. Whether the frame was queued on a link
    /// shows in the counters (`frames_out`, `send_no_link`, `send_overloaded`).
    pub fn send(&self, worker: usize, peer: &NetworkName, frame: Vec<u8>) -> bool {
        self.command(
            worker,
            Command::Send {
                peer: peer.clone(),
                frame,
            },
        )
    }

    /// Installs new TLS material and peer addresses on every worker.
    pub fn reload(&self, tls: Arc<BgTls>, peers: Vec<(NetworkName, SocketAddr)>) {
        for worker in 0..self.workers.len() {
            self.command(
                worker,
                Command::Reload {
                    tls: tls.clone(),
                    peers: peers.clone(),
                },
            );
        }
    }

    fn command(&self, worker: usize, command: Command) -> bool {
        let Some(w) = self.workers.get(worker) else {
            return false;
        };
        match w.commands.try_send(command) {
            Ok(()) => {
                let _ = w.waker.wake();
                true
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
        }
    }

    /// Links to `peer` summed over workers: (up, usable).
    pub fn links_to(&self, peer: &NetworkName) -> (usize, usize) {
        let mut total = (0, 0);
        for worker in &self.workers {
            if let Ok(status) = worker.status.lock() {
                for (name, up, usable) in status.iter() {
                    if name == peer {
                        total.0 += up;
                        total.1 += usable;
                    }
                }
            }
        }
        total
    }

    /// Waits until every worker has a usable link to `peer` (or `timeout`).
    pub fn wait_for_links(&self, peer: &NetworkName, usable: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.links_to(peer).1 >= usable {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    /// Number of workers.
    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// Stops every worker cleanly: each link writes what it has queued,
    /// sends close_notify and waits (briefly) for the peer's.
    pub fn stop(mut self) {
        self.stop_workers();
    }

    /// Stops every worker at once, as a killed process would: sockets are
    /// dropped with whatever they held, no close_notify.
    pub fn abort(mut self) {
        for worker in &self.workers {
            let _ = worker.commands.send(Command::Abort);
            let _ = worker.waker.wake();
        }
        self.stop_workers();
    }

    fn stop_workers(&mut self) {
        for worker in &self.workers {
            let _ = worker.commands.send(Command::Stop);
            let _ = worker.waker.wake();
        }
        for worker in &mut self.workers {
            if let Some(thread) = worker.thread.take() {
                let _ = thread.join();
            }
        }
    }
}

impl Drop for BgNode {
    fn drop(&mut self) {
        self.stop_workers();
    }
}

fn run_worker(
    worker_index: usize,
    mut poll: Poll,
    mut endpoint: BgEndpoint,
    commands: Receiver<Command>,
    inbound: Sender<InboundFrame>,
    status: Arc<Mutex<LinkStatus>>,
) {
    let started = Instant::now();
    let clock = || Millis::try_from(started.elapsed().as_millis()).unwrap_or(Millis::MAX);
    let mut events = Events::with_capacity(1024);
    let mut last_tick = 0;
    let mut last_status: LinkStatus = Vec::new();
    let mut stopping_since: Option<Millis> = None;
    loop {
        let timeout = if endpoint.has_ready() {
            Duration::ZERO
        } else {
            Duration::from_millis(10)
        };
        if poll.poll(&mut events, Some(timeout)).is_err() {
            // EINTR and friends: go round again.
            continue;
        }
        let now = clock();
        let peers = endpoint.tls().peers().clone();
        let mut deliver = |peer: PeerIndex, frame: &[u8]| {
            let Some(name) = peers.name(peer) else {
                return false;
            };
            inbound
                .try_send(InboundFrame {
                    peer: name.clone(),
                    worker: worker_index,
                    frame: frame.to_vec(),
                })
                .is_ok()
        };
        for event in events.iter() {
            if event.token() != WAKER {
                endpoint.handle_event(poll.registry(), event.token(), now, &mut deliver);
            }
        }
        endpoint.poll_ready(poll.registry(), now, &mut deliver);
        while let Ok(command) = commands.try_recv() {
            match command {
                Command::Send { peer, frame } => {
                    if let Some(index) = endpoint.tls().peers().index_of(&peer) {
                        let _ = endpoint.send(index, None, &frame);
                    }
                }
                Command::Reload { tls, peers } => {
                    endpoint.reload(tls, &peers, poll.registry(), now);
                }
                Command::Stop if stopping_since.is_none() => {
                    endpoint.flush(poll.registry(), now);
                    endpoint.begin_shutdown(poll.registry(), now);
                    stopping_since = Some(now);
                }
                Command::Stop => {}
                Command::Abort => {
                    if let Ok(mut s) = status.lock() {
                        s.clear();
                    }
                    return;
                }
            }
        }
        if let Some(since) = stopping_since {
            endpoint.flush(poll.registry(), now);
            endpoint.tick(poll.registry(), now);
            if endpoint.is_idle() || now.saturating_sub(since) >= STOP_LINGER_MS {
                endpoint.shutdown(poll.registry(), now);
                if let Ok(mut s) = status.lock() {
                    s.clear();
                }
                return;
            }
            continue;
        }
        endpoint.flush(poll.registry(), now);
        if now.saturating_sub(last_tick) < 10 {
            continue;
        }
        endpoint.tick(poll.registry(), now);
        last_tick = now;
        let peers = endpoint.tls().peers().clone();
        let current: LinkStatus = (0..peers.len())
            .filter_map(|i| u16::try_from(i).ok().map(PeerIndex))
            .filter_map(|p| {
                let (up, usable) = endpoint.links_to(p);
                peers.name(p).map(|n| (n.clone(), up, usable))
            })
            .collect();
        if current != last_status {
            if let Ok(mut s) = status.lock() {
                s.clone_from(&current);
            }
            last_status = current;
        }
    }
}
