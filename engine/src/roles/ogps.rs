//! Outgoing Gateway Presence Server (steps 5–6).
//!
//! Stateless per query. Step 5: B's network by longest-prefix match of B's
//! MSISDN over the numbering table with ported-number overrides (so no WA needs
//! a world-wide table). Step 6: forward to one of that network's IGPS ingress
//! points (spread by transaction id, skipping points marked down) through the
//! border gateways, with the hop limit decremented and the table version
//! stamped. A number of no known network, or a network this one has no border
//! relationship with, is answered `Error(UnknownNetwork)`; a query arriving with
//! hop limit 0 is answered `Error(HopLimitExceeded)`; a network whose ingress
//! points are all down is answered `Overloaded` with a retry-after. A peer
//! network that answered `Overloaded` (its rate limit for us) is not sent
//! to again before its retry-after: its queries are answered `Overloaded`
//! here with what is left of the wait.

use std::collections::HashMap;
use std::sync::Arc;

use ahash::AHashMap;

use presence_codec::{ErrorReason, Message, Outcome, Query};

use super::{answer_to, one_hop_on, Addr, DropCounters, Millis, Outbox};
use crate::table::{NetworkId, NumberingTable, TableReader};

/// One IGPS ingress point of a peer network, as this OGPS sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IngressPoint {
    /// Its number within the peer network.
    pub id: u16,
    /// Whether to send to it (health checks mark it down).
    pub up: bool,
}

/// Retry-after given when every ingress point of a network is down.
const ALL_DOWN_RETRY_MS: u32 = 1000;

/// Counters of the OGPS's decisions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OgpsCounters {
    /// Queries forwarded to another network.
    pub forwarded: u64,
    /// Queries for this network's own numbers, sent to its own IGPS.
    pub looped_home: u64,
    /// Answered `UnknownNetwork`.
    pub unknown_network: u64,
    /// Answered `HopLimitExceeded`.
    pub hop_limit_exceeded: u64,
    /// Answered `Overloaded`: every ingress point down.
    pub all_ingress_down: u64,
    /// Answered `Overloaded` here: the network told us to hold off.
    pub held_off: u64,
    /// Dropped.
    pub drops: DropCounters,
}

/// The OGPS of one network.
#[derive(Debug)]
pub struct Ogps {
    network: NetworkId,
    own_igps_count: u16,
    table: TableReader,
    peers: AHashMap<NetworkId, Vec<IngressPoint>>,
    /// Until when each peer network asked us not to send (its last
    /// `Overloaded` answer's retry-after); one entry per peer at most.
    hold_off: AHashMap<NetworkId, Millis>,
    counters: OgpsCounters,
}

impl Ogps {
    /// An OGPS routing with `table` to these peer networks' ingress points.
    pub fn new(
        network: NetworkId,
        own_igps_count: u16,
        table: &Arc<NumberingTable>,
        peers: HashMap<NetworkId, Vec<IngressPoint>>,
    ) -> Ogps {
        Ogps {
            network,
            own_igps_count: own_igps_count.max(1),
            table: table.reader(),
            peers: peers.into_iter().collect(),
            hold_off: AHashMap::new(),
            counters: OgpsCounters::default(),
        }
    }

    /// Marks an ingress point of a peer network up or down.
    pub fn set_ingress_up(&mut self, network: NetworkId, id: u16, up: bool) {
        if let Some(point) = self
            .peers
            .get_mut(&network)
            .and_then(|points| points.iter_mut().find(|p| p.id == id))
        {
            point.up = up;
        }
    }

    /// A peer network answered `Overloaded` with `retry_after_ms`: until
    /// then its queries are answered `Overloaded` here (with what is left
    /// of the wait) instead of crossing the border to be refused there.
    pub fn hold_off(&mut self, now: Millis, network: NetworkId, retry_after_ms: u32) {
        if !self.peers.contains_key(&network) {
            return;
        }
        let until = now + u64::from(retry_after_ms);
        let entry = self.hold_off.entry(network).or_insert(until);
        *entry = (*entry).max(until);
    }

    /// What the OGPS has decided so far.
    pub fn counters(&self) -> OgpsCounters {
        self.counters
    }

    /// Handles a query from a WA of this network.
    pub fn handle(&mut self, now: Millis, from: Addr, message: &Message<'_>, out: &mut Outbox) {
        let (Addr::Wa(_), Message::Query(query)) = (from, message) else {
            self.counters.drops.unexpected += 1;
            return;
        };
        let network = self.network;
        let reply = |out: &mut Outbox, outcome| {
            out.send(
                Addr::Wa(query.reply_node),
                network,
                answer_to(query, outcome),
            )
        };
        if query.hop_limit == 0 {
            self.counters.hop_limit_exceeded += 1;
            return reply(out, Outcome::Error(ErrorReason::HopLimitExceeded));
        }
        // Step 5.
        let version = self.table.current();
        let route_version = version.version() as u32;
        let Some(network) = version.lookup(query.target) else {
            self.counters.unknown_network += 1;
            return reply(out, Outcome::Error(ErrorReason::UnknownNetwork));
        };
        let forwarded = Query {
            route_version,
            ..one_hop_on(query)
        };
        if network == self.network {
            self.counters.looped_home += 1;
            let igps = (query.txid % u64::from(self.own_igps_count)) as u16;
            out.send(Addr::Igps(igps), self.network, Message::Query(forwarded));
            return;
        }
        let Some(points) = self.peers.get(&network) else {
            self.counters.unknown_network += 1;
            return reply(out, Outcome::Error(ErrorReason::UnknownNetwork));
        };
        if let Some(&until) = self.hold_off.get(&network) {
            if until > now {
                self.counters.held_off += 1;
                let retry_after_ms = u32::try_from(until - now).unwrap_or(u32::MAX);
                return reply(out, Outcome::Overloaded { retry_after_ms });
            }
            self.hold_off.remove(&network);
        }
        // Step 6: spread by transaction id; skip points marked down.
        let n = points.len();
        let start = (query.txid % n.max(1) as u64) as usize;
        let chosen = (0..n).map(|i| points[(start + i) % n]).find(|p| p.up);
        match chosen {
            Some(point) => {
                self.counters.forwarded += 1;
                out.send(
                    Addr::Border {
                        network,
                        ingress: point.id,
                    },
                    self.network,
                    Message::Query(forwarded),
                );
            }
            None => {
                self.counters.all_ingress_down += 1;
                reply(
                    out,
                    Outcome::Overloaded {
                        retry_after_ms: ALL_DOWN_RETRY_MS,
                    },
                );
            }
        }
    }
}
