//! A deterministic simulation of several networks, each a gateway of
//! several [`Node`](crate::node::Node)s — the code the appliance ships —
//! joined by a simulated network on a virtual clock (test-only: behind the
//! `sim` feature).
//!
//! The simulation only moves bytes between nodes, as the runtime does:
//! device datagrams (steered to the node owning their subject, a few
//! deliberately not), border frames between networks (lossy, duplicating,
//! delaying and so reordering, delivered to the peer worker they were sent
//! for unless its links are down), hand-offs between the nodes of one
//! network, the journal's durability reports (after a simulated sync
//! delay), and timeouts. It makes no presence decision of its own.
//!
//! One seed drives everything: the subscribers and buddy lists, the
//! queries, and the faults — loss, duplication and delay on every border
//! hop; whole gateways restarting (their WAs lose what was pending, their
//! presence servers rebuild their duplicate windows from the journal);
//! ingress points (a peer worker's links) going down; subscribers moved
//! between presence servers and ranges reassigned while traffic flows;
//! numbers ported between networks while traffic flows; consent withdrawn
//! and given back and buddy lists changed; status publications; journals
//! failing and recovering. The same seed gives the same run, event for
//! event (`SIM_SEED=<n>` replays one).
//!
//! Checkers (in `check.rs`):
//! - every device request gets exactly one final answer, by the deadline of
//!   its last attempt (a device asks again, with the same request id, when
//!   its gateway restarted under it);
//! - an answer showing B's status was permitted by B's buddy list and
//!   consent, as the simulation's own model holds them, when the presence
//!   server decided;
//! - exactly one durable charge record per answered foreign query showing
//!   B's status, charging A's network; none for a refused query; at most
//!   one for a query whose answer never arrived; none that matches no
//!   query; none voided by a journal's failure counted;
//! - every watcher's credit ends at its start in its gateway's current life
//!   less the queries of that life not refunded, never negative;
//! - at most 1% of requests time out (a system that drops everything
//!   fails).

mod check;
mod drive;
mod faults;
mod journal;
mod node_pair;
mod pipeline;
mod world;

use std::collections::BTreeMap;
use std::sync::Arc;

use presence_codec::{Msisdn, MSISDN_MAX};

use crate::table::{NetworkId, NumberingTable, Prefix};

pub use node_pair::{NodePair, NodePairSettings};
pub use pipeline::{Pipeline, PIPELINE_BUDDIES};

/// The simulation's only source of randomness: a seeded splitmix64
/// stream, so a seed replays a run exactly.
pub use crate::rng::SplitMix64 as SimRng;

/// One simulated network: its name in the numbering table and the prefixes
/// the table gives it.
#[derive(Debug, Clone)]
pub struct SimNetwork {
    /// Name, as in the numbering table.
    pub name: String,
    /// Its id in the table.
    pub id: NetworkId,
    /// Its number ranges.
    pub prefixes: Vec<Prefix>,
}

impl SimNetwork {
    /// Network `name` as `table` holds it; `None` if the table has no
    /// prefix of it.
    pub fn from_table(table: &NumberingTable, name: &str) -> Option<SimNetwork> {
        let version = table.snapshot();
        let id = version.names().id(name)?;
        let prefixes: Vec<Prefix> = version
            .prefixes()
            .prefixes()
            .iter()
            .filter(|(_, n)| *n == id)
            .map(|(p, _)| *p)
            .collect();
        (!prefixes.is_empty()).then(|| SimNetwork {
            name: name.to_string(),
            id,
            prefixes,
        })
    }

    /// `count` distinct numbers of `digits` digits drawn from this
    /// network's prefixes that `table` routes to it.
    pub fn draw(
        &self,
        table: &NumberingTable,
        count: usize,
        digits: usize,
        rng: &mut SimRng,
    ) -> Vec<Msisdn> {
        let version = table.snapshot();
        let mut out = std::collections::BTreeSet::new();
        let mut attempts = 0usize;
        while out.len() < count && attempts < count.saturating_mul(1000).max(10_000) {
            attempts += 1;
            let prefix = self.prefixes[rng.below(self.prefixes.len() as u64) as usize];
            let m = extend(prefix, digits, rng);
            if version.lookup(m) == Some(self.id) {
                out.insert(m);
            }
        }
        out.into_iter().collect()
    }
}

/// A number of `digits` digits starting with `prefix`, the rest drawn from
/// `rng`.
pub fn extend(prefix: Prefix, digits: usize, rng: &mut SimRng) -> Msisdn {
    let mut value = prefix.value();
    for _ in prefix.len()..digits.max(prefix.len()) {
        value = value * 10 + rng.below(10);
    }
    Msisdn::from_u64(value.min(MSISDN_MAX)).unwrap_or(Msisdn::MAX)
}

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// The seed.
    pub seed: u64,
    /// The networks.
    pub networks: Vec<SimNetwork>,
    /// Nodes (workers) per network's gateway (at least 2 in the standard
    /// run).
    pub workers: u16,
    /// Presence servers per network.
    pub ps_per_network: u16,
    /// Subscribers per network.
    pub subscribers_per_network: usize,
    /// Device requests in the run.
    pub queries: usize,
    /// Virtual time over which they are spread, in ms.
    pub duration_ms: u64,
    /// Probability a border hop loses a frame.
    pub loss: f64,
    /// Probability a border hop delivers a frame twice.
    pub duplication: f64,
    /// Border hop delay range (uniform, ms), which also reorders.
    pub delay_ms: (u64, u64),
    /// Probability a device datagram reaches a node that does not own its
    /// subject (the steering's misses, handed over).
    pub misroute: f64,
    /// Gateway restarts (all nodes of a network at once).
    pub restarts: usize,
    /// How long a restarting gateway is down, in ms.
    pub restart_down_ms: u64,
    /// Times a peer worker's links go down (frames for it reach another
    /// worker of its gateway).
    pub ingress_downs: usize,
    /// Subscribers moved alone between presence servers.
    pub moves: usize,
    /// Ranges reassigned to another presence server.
    pub range_reassignments: usize,
    /// Numbers ported between networks while traffic flows.
    pub ports: usize,
    /// Consent changes.
    pub consent_changes: usize,
    /// Buddy-list changes.
    pub buddy_changes: usize,
    /// Status publications.
    pub publications: usize,
    /// Journal failures (a node's disk failing for a while).
    pub journal_failures: usize,
    /// Simulated `fdatasync` latency range, in µs.
    pub sync_us: (u64, u64),
}

impl SimConfig {
    /// The standard run: 10,000 requests over 20 s, two nodes per network,
    /// 5% loss, 3% duplication, 1–40 ms delays, and every fault.
    pub fn standard(seed: u64, networks: Vec<SimNetwork>) -> SimConfig {
        SimConfig {
            seed,
            networks,
            workers: 2,
            ps_per_network: 3,
            subscribers_per_network: 300,
            queries: 10_000,
            duration_ms: 20_000,
            loss: 0.05,
            duplication: 0.03,
            delay_ms: (1, 40),
            misroute: 0.05,
            restarts: 2,
            restart_down_ms: 300,
            ingress_downs: 4,
            moves: 30,
            range_reassignments: 3,
            ports: 4,
            consent_changes: 60,
            buddy_changes: 40,
            publications: 600,
            journal_failures: 2,
            sync_us: (200, 3_000),
        }
    }
}

/// What a run saw. `violations` is empty when every checker held.
#[derive(Debug, Clone, Default)]
pub struct SimReport {
    /// The seed.
    pub seed: u64,
    /// Device requests.
    pub queries: u64,
    /// Attempts (a request asked again after its gateway restarted counts
    /// again).
    pub attempts: u64,
    /// Final outcomes by name.
    pub outcomes: BTreeMap<&'static str, u64>,
    /// Durable charge records, not voided.
    pub charges: u64,
    /// Charge records voided by a journal failure.
    pub voided: u64,
    /// Border frames sent.
    pub border_frames: u64,
    /// Of those, lost by the simulated network.
    pub lost: u64,
    /// Retransmissions by the WAs.
    pub retransmissions: u64,
    /// Hand-offs between nodes, all networks.
    pub cross_worker: u64,
    /// Faults injected, by name.
    pub faults: BTreeMap<&'static str, u64>,
    /// Checker failures, each naming the query.
    pub violations: Vec<String>,
}

/// Runs one simulation over `world_table` (ported numbers are added to it)
/// and checks it.
pub fn run(config: &SimConfig, world_table: &Arc<NumberingTable>) -> SimReport {
    let mut world = world::World::build(config.clone(), world_table);
    world.schedule_workload();
    world.run_to_end();
    check::check(&mut world);
    world.report
}
