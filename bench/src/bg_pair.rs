//! Two border gateways on loopback, one event-loop thread each, with the
//! sender's BG fed directly (no channel): the setup behind the `bg` bench.
//!
//! The sender thread queues the frame as fast as its link takes it, flushes
//! once per loop turn (one batch of TLS records and one `write` per turn), and
//! handles readiness; the receiver thread's BG decrypts, reassembles and
//! counts frames. Both spin while there is work, like the appliance's
//! poll mode.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::{Events, Poll};
use presence_border::endpoint::{
    bind_listener, BgEndpoint, EndpointSettings, EndpointSetup, SendError,
};
use presence_border::pki::NetworkMaterial;
use presence_border::{BgCounters, PeerIndex};

/// A running pair: A sends `frame` to B on request.
#[derive(Debug)]
pub struct BgPair {
    budget: Arc<AtomicU64>,
    received: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// Bytes of each frame (without the 2-byte stream prefix).
    pub frame_len: usize,
}

fn now_ms(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

impl BgPair {
    /// Starts B (accepting) and A (dialing B), and waits for the link.
    pub fn start(frame: Vec<u8>) -> BgPair {
        let a = NetworkMaterial::generate(&"a.example".parse().expect("name")).expect("pki");
        let b = NetworkMaterial::generate(&"b.example".parse().expect("name")).expect("pki");
        let a_tls = Arc::new(a.tls(1, &[&b]).expect("tls"));
        let b_tls = Arc::new(b.tls(1, &[&a]).expect("tls"));
        let settings = EndpointSettings {
            max_links: 8,
            ..EndpointSettings::default()
        };
        let listener = bind_listener("127.0.0.1:0".parse().expect("addr"), false).expect("bind");
        let b_addr = listener.local_addr().expect("addr");
        let budget = Arc::new(AtomicU64::new(0));
        let received = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let frame_len = frame.len();

        let receiver = {
            let (received, stop) = (received.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut poll = Poll::new().expect("poll");
                let start = Instant::now();
                let setup = EndpointSetup {
                    tls: b_tls,
                    settings,
                    listener: Some(listener),
                    peers: Vec::new(),
                    token_base: 0,
                    counters: Arc::new(BgCounters::default()),
                    shard: presence_border::SOLE_WORKER,
                };
                let mut endpoint = BgEndpoint::new(setup, poll.registry(), 0).expect("endpoint");
                let mut events = Events::with_capacity(256);
                let mut frames = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let timeout = if endpoint.has_ready() {
                        Duration::ZERO
                    } else {
                        Duration::from_millis(1)
                    };
                    let _ = poll.poll(&mut events, Some(timeout));
                    let now = now_ms(start);
                    let mut count = |_: PeerIndex, _: &[u8]| {
                        frames += 1;
                        true
                    };
                    for event in events.iter() {
                        endpoint.handle_event(poll.registry(), event.token(), now, &mut count);
                    }
                    endpoint.poll_ready(poll.registry(), now, &mut count);
                    endpoint.tick(poll.registry(), now);
                    endpoint.flush(poll.registry(), now);
                    received.store(frames, Ordering::Release);
                }
            })
        };
        let sender = {
            let (budget, stop) = (budget.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut poll = Poll::new().expect("poll");
                let start = Instant::now();
                let setup = EndpointSetup {
                    tls: a_tls,
                    settings,
                    listener: None,
                    peers: vec![("b.example".parse().expect("name"), b_addr)],
                    token_base: 0,
                    counters: Arc::new(BgCounters::default()),
                    shard: presence_border::SOLE_WORKER,
                };
                let mut endpoint = BgEndpoint::new(setup, poll.registry(), 0).expect("endpoint");
                let mut events = Events::with_capacity(256);
                let mut sent = 0u64;
                let mut last_tick = 0;
                let mut ignore = |_: PeerIndex, _: &[u8]| true;
                while !stop.load(Ordering::Relaxed) {
                    let want = budget.load(Ordering::Acquire);
                    let timeout = if sent < want {
                        Duration::ZERO
                    } else {
                        Duration::from_millis(1)
                    };
                    let _ = poll.poll(&mut events, Some(timeout));
                    let now = now_ms(start);
                    for event in events.iter() {
                        endpoint.handle_event(poll.registry(), event.token(), now, &mut ignore);
                    }
                    while sent < want {
                        match endpoint.send(PeerIndex(0), None, &frame) {
                            Ok(()) => sent += 1,
                            Err(SendError::Overloaded | SendError::NoLink) => break,
                            Err(SendError::UnknownPeer | SendError::InvalidFrame(_)) => return,
                        }
                    }
                    endpoint.flush(poll.registry(), now);
                    if now.saturating_sub(last_tick) >= 50 || sent >= want {
                        endpoint.tick(poll.registry(), now);
                        last_tick = now;
                    }
                }
            })
        };
        let pair = BgPair {
            budget,
            received,
            stop,
            threads: vec![receiver, sender],
            frame_len,
        };
        // Wait for the link: one frame through.
        pair.transfer(1);
        pair
    }

    /// Sends `frames` more frames from A to B and returns how long until B
    /// had them all.
    pub fn transfer(&self, frames: u64) -> Duration {
        let target = self.received.load(Ordering::Acquire) + frames;
        let start = Instant::now();
        self.budget.fetch_add(frames, Ordering::AcqRel);
        while self.received.load(Ordering::Acquire) < target {
            std::thread::sleep(Duration::from_micros(200));
        }
        start.elapsed()
    }
}

impl Drop for BgPair {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}
