//! Outgoing Gateway Presence Server (steps 5–6).
//!
//! Stateless per query. Step 5: B's network by longest-prefix match of B's
//! MSISDN over the numbering table with ported-number overrides (so no WA
//! needs a world-wide table); the node looks a whole frame's targets up in
//! one batch and hands the OGPS each answer ([`Ogps::route`]), while
//! [`Ogps::handle`] looks one up itself (retransmissions). Step 6: forward
//! through the border gateways to that network's IGPS, with the hop limit
//! decremented and the table version stamped; the node picks the border
//! link that ends at the peer's worker owning B. A number of no known
//! network, or a network this one has no border relationship with, is
//! answered `Error(UnknownNetwork)`; a query arriving with hop limit 0 is
//! answered `Error(HopLimitExceeded)`. A peer network that answered
//! `Overloaded` (its rate limit for us) is not sent to again before its
//! retry-after: its queries are answered `Overloaded` here with what is
//! left of the wait.

use std::sync::Arc;

use ahash::{AHashMap, AHashSet};

use presence_codec::{ErrorReason, Message, Outcome, Query};

use super::{answer_to, one_hop_on, Addr, Ask, DropCounters, Millis, Outbox};
use crate::table::{NetworkId, NumberingTable, TableReader};

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
    /// Answered `Overloaded` here: the network told us to hold off.
    pub held_off: u64,
    /// Dropped.
    pub drops: DropCounters,
}

impl OgpsCounters {
    /// Adds `other` (counters of a replaced instance) to these.
    pub fn add(&mut self, other: &OgpsCounters) {
        self.forwarded += other.forwarded;
        self.looped_home += other.looped_home;
        self.unknown_network += other.unknown_network;
        self.hop_limit_exceeded += other.hop_limit_exceeded;
        self.held_off += other.held_off;
        self.drops.add(&other.drops);
    }
}

/// The OGPS of one network.
#[derive(Debug)]
pub struct Ogps {
    network: NetworkId,
    table: TableReader,
    /// Networks this one has a border relationship with.
    peers: AHashSet<NetworkId>,
    /// Until when each peer network asked us not to send (its last
    /// `Overloaded` answer's retry-after); one entry per peer at most.
    hold_off: AHashMap<NetworkId, Millis>,
    counters: OgpsCounters,
}

impl Ogps {
    /// An OGPS routing with `table` to these peer networks.
    pub fn new(
        network: NetworkId,
        table: &Arc<NumberingTable>,
        peers: impl IntoIterator<Item = NetworkId>,
    ) -> Ogps {
        Ogps {
            network,
            table: table.reader(),
            peers: peers.into_iter().collect(),
            hold_off: AHashMap::new(),
            counters: OgpsCounters::default(),
        }
    }

    /// Replaces the peer networks (a reload); hold-offs of peers that stay
    /// are kept.
    pub fn set_peers(&mut self, peers: impl IntoIterator<Item = NetworkId>) {
        self.peers = peers.into_iter().collect();
        let peers = &self.peers;
        self.hold_off.retain(|n, _| peers.contains(n));
    }

    /// A peer network answered `Overloaded` with `retry_after_ms`: until
    /// then its queries are answered `Overloaded` here (with what is left
    /// of the wait) instead of crossing the border to be refused there.
    pub fn hold_off(&mut self, now: Millis, network: NetworkId, retry_after_ms: u32) {
        if !self.peers.contains(&network) {
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

    /// Handles a query from a WA of this network, looking B up itself.
    pub fn handle(&mut self, now: Millis, from: Addr, message: &Message<'_>, out: &mut Outbox) {
        let (Addr::Wa(_), Some((query, ask))) = (from, Ask::of(message)) else {
            self.counters.drops.unexpected += 1;
            return;
        };
        let version = self.table.current();
        let route_version = version.version() as u32;
        let network = version.lookup(query.target);
        self.route(now, &query, ask, network, route_version, out);
    }

    /// Steps 5–6 for a query whose target the numbering table (version
    /// `route_version`) placed in `network`.
    pub fn route(
        &mut self,
        now: Millis,
        query: &Query,
        ask: Ask,
        network: Option<NetworkId>,
        route_version: u32,
        out: &mut Outbox,
    ) {
        let own = self.network;
        let reply = |out: &mut Outbox, outcome| {
            out.send(Addr::Wa(query.reply_node), own, answer_to(query, outcome))
        };
        if query.hop_limit == 0 {
            self.counters.hop_limit_exceeded += 1;
            return reply(out, Outcome::Error(ErrorReason::HopLimitExceeded));
        }
        // Step 5.
        let Some(network) = network else {
            self.counters.unknown_network += 1;
            return reply(out, Outcome::Error(ErrorReason::UnknownNetwork));
        };
        let forwarded = Query {
            route_version,
            ..one_hop_on(query)
        };
        if network == own {
            self.counters.looped_home += 1;
            out.send(Addr::Igps, own, ask.message(forwarded));
            return;
        }
        if !self.peers.contains(&network) {
            self.counters.unknown_network += 1;
            return reply(out, Outcome::Error(ErrorReason::UnknownNetwork));
        }
        if let Some(&until) = self.hold_off.get(&network) {
            if until > now {
                self.counters.held_off += 1;
                let retry_after_ms = u32::try_from(until - now).unwrap_or(u32::MAX);
                return reply(out, Outcome::Overloaded { retry_after_ms });
            }
            self.hold_off.remove(&network);
        }
        // Step 6.
        self.counters.forwarded += 1;
        out.send(Addr::Border { network }, own, ask.message(forwarded));
    }
}
