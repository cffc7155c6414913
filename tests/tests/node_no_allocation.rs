//! Two networks' nodes — the code each appliance worker runs — allocate
//! nothing per query in steady state: device datagrams into A's node, its
//! border frames into B's, B's records journaled and made durable, B's
//! answers back into A's, A's answers out to the device, every frame's
//! buffer handed back for reuse, as the runtime does. A counting global
//! allocator watches 32,000 queries after a warm-up that laps the presence
//! server's duplicate window (its ring is allocated a chunk at a time).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use presence_codec::{
    ClientOperation, ClientRequest, Credential, FrameReader, Message, Msisdn, OpenFrame,
    FRAME_LEN_ABSOLUTE_MAX, FRAME_LEN_DEFAULT_MAX,
};
use presence_engine::journal::{Durability, JournalSink};
use presence_engine::node::{Destination, Node, NodeConfig, Provisioned};
use presence_engine::roles::{DecisionRecord, Hss, PsId};
use presence_engine::table::{NetworkId, NumberingTable, Prefix};

struct Counting;

thread_local! {
    // Const-initialised and without a destructor: reading it allocates
    // nothing, so the allocator may use it.
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Subscribers on each side.
const SUBSCRIBERS: u64 = 256;
/// Requests in each device datagram.
const PER_DATAGRAM: u64 = 16;
/// Simulated time between datagrams: 1,600 queries/s, so the presence
/// server's 4,096-slot window covers the decisions it must remember.
const STEP_US: u64 = 10_000;

/// A journal that is durable at once and keeps nothing.
#[derive(Default)]
struct InstantJournal {
    last_seq: u64,
    last_ticket: u64,
}

impl JournalSink for InstantJournal {
    fn append(&mut self, seq: u64, _at_unix_ms: u64, _origin: &str, _record: &DecisionRecord) {
        self.last_seq = self.last_seq.max(seq);
    }
    fn sync(&mut self, ticket: u64) {
        self.last_ticket = self.last_ticket.max(ticket);
    }
}

struct TwoNodes {
    a: Node,
    b: Node,
    net_a: NetworkId,
    net_b: NetworkId,
    journal: InstantJournal,
    device: SocketAddr,
    request: Vec<u8>,
    now_us: u64,
    seq: u64,
}

fn watcher(i: u64) -> Msisdn {
    Msisdn::from_u64(447_700_900_000 + i % SUBSCRIBERS).unwrap()
}

fn target(i: u64) -> Msisdn {
    Msisdn::from_u64(4_915_112_340_000 + i % SUBSCRIBERS).unwrap()
}

impl TwoNodes {
    fn new() -> TwoNodes {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/msisdn-prefixes.csv");
        let world = Arc::new(NumberingTable::load(&path, None).unwrap());
        let names = world.snapshot().names().clone();
        let (net_a, net_b) = (names.id("o2.gb").unwrap(), names.id("t-mobile.de").unwrap());
        let node = |network, peer, hss: &Arc<Hss>, subscribers: HashMap<Msisdn, Provisioned>| {
            let mut config = NodeConfig::new(network, 0, 1);
            config.peers = vec![peer];
            config.window_slots = 4096;
            let mut node = Node::new(config, &world, hss);
            node.set_peer_workers(peer, 1);
            node.provision(0, &subscribers, hss);
            node
        };
        let account = |buddies: Vec<Msisdn>| Provisioned {
            credential: b"secret".to_vec(),
            credit: u64::MAX / 2,
            consent: true,
            buddies,
        };
        let hss_a = Arc::new(Hss::new(&[(Prefix::parse("447700").unwrap(), PsId(0))]));
        let watchers = (0..SUBSCRIBERS).map(|i| (watcher(i), account(Vec::new())));
        let a = node(net_a, net_b, &hss_a, watchers.collect());
        let hss_b = Arc::new(Hss::new(&[(Prefix::parse("49151").unwrap(), PsId(1))]));
        let everyone: Vec<Msisdn> = (0..SUBSCRIBERS).map(watcher).collect();
        let targets = (0..SUBSCRIBERS).map(|i| (target(i), account(everyone.clone())));
        let b = node(net_b, net_a, &hss_b, targets.collect());
        TwoNodes {
            a,
            b,
            net_a,
            net_b,
            journal: InstantJournal::default(),
            device: "10.0.0.1:4000".parse().unwrap(),
            request: Vec::with_capacity(FRAME_LEN_DEFAULT_MAX),
            now_us: 1_000_000,
            seq: 0,
        }
    }

    /// One device datagram of [`PER_DATAGRAM`] requests, carried through
    /// both nodes; returns the answers that showed B's status.
    fn round(&mut self) -> u64 {
        self.now_us += STEP_US;
        let now = self.now_us;
        let mut frame = OpenFrame::new(std::mem::take(&mut self.request), FRAME_LEN_DEFAULT_MAX);
        for _ in 0..PER_DATAGRAM {
            self.seq += 1;
            // Watcher and target drift apart, so every pair comes up.
            let request = Message::ClientRequest(ClientRequest {
                txid: self.seq,
                watcher: watcher(self.seq),
                target: target(self.seq / SUBSCRIBERS + self.seq),
                operation: ClientOperation::Query,
                credential: Credential::new(b"secret").unwrap(),
            });
            frame.push(&request).unwrap();
        }
        self.request = frame.into_bytes();
        self.a.handle_datagram(now, self.device, &self.request);
        while let Some(out) = self.a.poll_transmit() {
            assert!(matches!(out.to, Destination::Border(_)), "{:?}", out.to);
            self.b.handle_border_frame(now, self.net_a, &out.frame);
            self.a.recycle(out.frame);
        }
        self.b.poll_journal(&mut self.journal);
        let durable = Durability {
            durable_seq: self.journal.last_seq,
            synced_ticket: self.journal.last_ticket,
            healthy: true,
        };
        self.b.handle_durable(now, durable);
        while let Some(out) = self.b.poll_transmit() {
            self.a.handle_border_frame(now, self.net_b, &out.frame);
            self.b.recycle(out.frame);
        }
        if self.a.poll_timeout().is_some_and(|at| at <= now) {
            self.a.handle_timeout(now);
        }
        let mut answered = 0;
        while let Some(out) = self.a.poll_transmit() {
            assert_eq!(out.to, Destination::Device(self.device));
            for message in FrameReader::new(&out.frame, FRAME_LEN_ABSOLUTE_MAX).unwrap() {
                if let Ok(Message::Answer(answer)) = message {
                    answered += u64::from(answer.outcome.shows_status());
                }
            }
            self.a.recycle(out.frame);
        }
        answered
    }
}

#[test]
fn two_nodes_in_steady_state_allocate_nothing_per_query() {
    let mut nodes = TwoNodes::new();
    // Warm-up: the window's ring laps (4,096 slots) and every pool fills.
    let mut warm = 0;
    for _ in 0..600 {
        warm += nodes.round();
    }
    assert_eq!(warm, 600 * PER_DATAGRAM, "warm-up queries answered");
    let before = allocations();
    let mut answered = 0;
    for _ in 0..2000 {
        answered += nodes.round();
    }
    let allocated = allocations() - before;
    assert_eq!(
        answered,
        2000 * PER_DATAGRAM,
        "every query shows B's status"
    );
    assert_eq!(allocated, 0, "allocations during 32,000 queries");
}
