//! Incoming Gateway Presence Server (steps 7–9).
//!
//! Stateless per query. It takes the origin network from the link the query
//! came in on (the border gateway's authenticated peer, or this network for
//! internal queries), never from the message; asks the HSS which presence
//! server holds B (steps 7–8); and forwards the query there (step 9) with the
//! origin carried beside it. It forwards only to a presence server the HSS
//! returned. A peer's query about a watcher who is not the peer's own
//! subscriber is refused before the HSS is asked (an alarm counter). A
//! number outside every HSS range is sent to a presence server all the same
//! (the HSS's decoy), which answers it `NotAvailable` as it answers an
//! unknown subscriber or a watcher it does not permit: one answer, byte for
//! byte, after the same work, so nobody can tell the three apart.

use std::sync::Arc;

use presence_codec::{ErrorReason, Message, Outcome, Query};

use super::hss::{HssReader, PsId};
use super::limit::{Bucket, Rate};
use super::{answer_to, one_hop_on, Addr, Ask, DropCounters, Hss, Millis, Outbox};
use crate::table::{NetworkId, NumberingTable, TableReader};
use ahash::AHashMap;

/// What the node looked up for a query reaching the IGPS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IgpsLookup {
    /// The watcher's network by the numbering table.
    pub watcher_network: Option<NetworkId>,
    /// The target's presence server by the HSS (steps 7–8).
    pub server: Option<PsId>,
    /// The target's presence server has already decided this transaction
    /// (a retransmission).
    pub decided: bool,
}

/// Counters of the IGPS's decisions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IgpsCounters {
    /// Queries forwarded to a presence server.
    pub forwarded: u64,
    /// Numbers no HSS range holds: sent to the decoy presence server
    /// (answered `NotAvailable` here only when no range names one).
    pub unknown_subscriber: u64,
    /// Answered `HopLimitExceeded`.
    pub hop_limit_exceeded: u64,
    /// Answered `Overloaded`: the peer network passed its rate limit.
    pub throttled: u64,
    /// Alarm: a peer's query whose watcher is not a number of that peer
    /// (by the numbering table and ported numbers): refused
    /// `Error(Refused)` before any HSS lookup, so nothing is charged.
    pub spoofed_watcher: u64,
    /// Dropped.
    pub drops: DropCounters,
}

impl IgpsCounters {
    /// Adds `other` to these.
    pub fn add(&mut self, other: &IgpsCounters) {
        self.forwarded += other.forwarded;
        self.unknown_subscriber += other.unknown_subscriber;
        self.hop_limit_exceeded += other.hop_limit_exceeded;
        self.throttled += other.throttled;
        self.spoofed_watcher += other.spoofed_watcher;
        self.drops.add(&other.drops);
    }
}

/// One IGPS ingress point of a network.
#[derive(Debug)]
pub struct Igps {
    network: NetworkId,
    hss: HssReader,
    table: TableReader,
    /// The rate every peer network gets unless listed in `peer_rates`.
    default_rate: Option<Rate>,
    peer_rates: AHashMap<NetworkId, Rate>,
    buckets: AHashMap<NetworkId, Bucket>,
    counters: IgpsCounters,
}

/// Where the answer to a query from `origin` goes: back through the border to
/// the origin network's WA, or to this network's own WA.
pub fn reply_addr(own: NetworkId, origin: NetworkId, reply_node: u16) -> Addr {
    if origin == own {
        Addr::Wa(reply_node)
    } else {
        Addr::BorderReply {
            network: origin,
            reply_node,
        }
    }
}

impl Igps {
    /// An ingress point of `network` reading `hss`, checking peers'
    /// watchers against `table`.
    pub fn new(network: NetworkId, hss: &Arc<Hss>, table: &Arc<NumberingTable>) -> Igps {
        Igps {
            network,
            hss: hss.reader(),
            table: table.reader(),
            default_rate: None,
            peer_rates: AHashMap::new(),
            buckets: AHashMap::new(),
            counters: IgpsCounters::default(),
        }
    }

    /// Limits the queries each peer network may send: `default` for every
    /// peer (`None`: unlimited), `overrides` for named ones. A query beyond
    /// its peer's limit is answered `Overloaded` with the time its next one
    /// would conform, before any HSS lookup: it costs the presence servers
    /// nothing and charges no one. Buckets are kept.
    pub fn set_peer_limits(&mut self, default: Option<Rate>, overrides: &[(NetworkId, Rate)]) {
        self.default_rate = default;
        self.peer_rates = overrides.iter().copied().collect();
        let limited = |n: &NetworkId| default.is_some() || overrides.iter().any(|(o, _)| o == n);
        self.buckets.retain(|n, _| limited(n));
    }

    /// What the IGPS has decided so far.
    pub fn counters(&self) -> IgpsCounters {
        self.counters
    }

    /// Handles a query arriving from the border (`origin`: the authenticated
    /// peer network) or from this network's WA (`origin`: this network),
    /// looking the watcher and the target up itself.
    pub fn handle(
        &mut self,
        now: Millis,
        from: Addr,
        origin: NetworkId,
        message: &Message<'_>,
        out: &mut Outbox,
    ) {
        let Some((query, ask)) = Ask::of(message) else {
            self.counters.drops.unexpected += 1;
            return;
        };
        // A query from this network's own WA or OGPS (a number the WA took
        // for foreign that is ours after all) must say so; anything else came
        // through a border link, whose authenticated peer is `origin`.
        let from_border = !matches!(from, Addr::Wa(_) | Addr::Ogps);
        let lookup = IgpsLookup {
            watcher_network: if from_border {
                self.table.lookup(query.watcher)
            } else {
                Some(self.network)
            },
            server: self.hss.lookup(query.target),
            decided: false,
        };
        self.route(now, from_border, origin, (&query, ask), lookup, out);
    }

    /// Steps 7–9 for `query` asking `ask`, with what the node looked up for
    /// it (for a whole frame at once).
    pub fn route(
        &mut self,
        now: Millis,
        from_border: bool,
        origin: NetworkId,
        (query, ask): (&Query, Ask),
        lookup: IgpsLookup,
        out: &mut Outbox,
    ) {
        let IgpsLookup {
            watcher_network,
            server: ps,
            decided,
        } = lookup;
        if from_border == (origin == self.network) {
            self.counters.drops.unexpected += 1;
            return;
        }
        let reply_to = reply_addr(self.network, origin, query.reply_node);
        let reply =
            |out: &mut Outbox, outcome| out.send(reply_to, origin, answer_to(query, outcome));
        if from_border {
            let rate = self.peer_rates.get(&origin).copied().or(self.default_rate);
            if let Some(rate) = rate {
                // Bounded: one bucket per peer network the table names.
                let bucket = self.buckets.entry(origin).or_default();
                if let Err(retry_after_ms) = bucket.take(now, rate) {
                    self.counters.throttled += 1;
                    return reply(out, Outcome::Overloaded { retry_after_ms });
                }
            }
        }
        // (After the rate limit: a flood of spoofed queries is limited
        // too.) A peer speaks for its own subscribers only: a watcher the table
        // places in another network (or nowhere) is a peer claiming to be
        // that network, or probing on someone else's behalf. A transaction
        // already decided passed this check when it was: its retransmission
        // gets that decision again, even if the watcher's number was ported
        // away meanwhile (one transaction, one answer).
        if from_border && !decided && watcher_network != Some(origin) {
            self.counters.spoofed_watcher += 1;
            return reply(out, Outcome::Error(ErrorReason::Refused));
        }
        if query.hop_limit == 0 {
            self.counters.hop_limit_exceeded += 1;
            return reply(out, Outcome::Error(ErrorReason::HopLimitExceeded));
        }
        // Steps 7–8. A number outside every range goes to the decoy
        // server, which answers it as the unknown subscriber it is: the
        // same answer after the same work, so neither its bytes nor its
        // time say where the ranges end.
        let ps = match ps {
            Some(ps) => ps,
            None => {
                self.counters.unknown_subscriber += 1;
                match self.hss.decoy() {
                    Some(decoy) => decoy,
                    None => return reply(out, Outcome::NotAvailable),
                }
            }
        };
        // Step 9.
        self.counters.forwarded += 1;
        out.send(Addr::Ps(ps), origin, ask.message(one_hop_on(query)));
    }
}
