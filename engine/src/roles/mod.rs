//! The roles of the presence flow as sans-IO state machines.
//!
//! Step numbers are those of the seed's sequence (`docs/architecture.md`):
//!
//! | role | steps | state it owns |
//! |---|---|---|
//! | [`WatcherApp`] | 1–4, 13 | credentials and prepay credit of its subscribers, pending transactions |
//! | [`Ogps`] | 5–6 | none per query: the numbering table and the ingress points of other networks |
//! | [`Igps`] | 7–9 | none per query: reads the [`Hss`] |
//! | [`Hss`] | 7–8 | MSISDN → presence server, changed at run time |
//! | [`PresenceServer`] | 10–12 | status, buddy list and consent per subscriber; answered queries; charge records |
//!
//! Contract shared by every role: inputs are `handle*(now, …)` calls, outputs
//! are appended to a caller-owned [`Outbox`]; no role reads a clock, opens a
//! socket, spawns a thread or draws randomness. Time is [`Millis`] on any
//! monotonic clock the caller chooses (the simulation's virtual clock, the
//! runtime's `Instant`).
//!
//! The origin network of a message is carried *outside* it ([`Transmit::origin`],
//! the `origin` argument of `handle`): at a network's edge it is the border
//! gateway's authenticated peer, never something the message claims.

mod auth;
mod hss;
mod igps;
mod limit;
mod ogps;
mod ps;
mod shed;
mod store;
mod timer;
mod wa;

use presence_codec::{Answer, Message, Outcome, Query};

pub use auth::{
    AuthGuard, AuthPolicy, DeviceAuthPolicy, Failure, ReplayWindow, Seen, SourceGuard,
    SourcePrefix, Timeliness, SOURCE_GUARD_SLOTS,
};
pub use hss::{Hss, HssError, HssReader, HssVersion, PsId, PS_PER_NETWORK_MAX};
pub use igps::{reply_addr, Igps, IgpsCounters, IgpsLookup};
pub use limit::{Bucket, Rate};
pub use ogps::{Ogps, OgpsCounters};
pub use ps::{
    ChargeRecord, Charging, DecisionRecord, DecisionWindowEntry, EndReason, Granted, Notice,
    NoticeKind, PresenceServer, PsCounters, RestartMarks, SubscriberRecord, WatchKey, WatchLimits,
    WatchRefused, Watches, BUDDIES_MAX, WINDOW_STREAMS_MAX, WINDOW_STREAMS_PER_ORIGIN_MAX,
};
pub use shed::{shed_queued_query, shed_refused_frame, Shed};
pub use store::SubscriberView;
pub use wa::{RequestFate, Subscriber, WaConfig, WaCounters, WatcherApp, DEVICE_REPEAT_DEADLINES};

use crate::table::NetworkId;

/// Milliseconds on the caller's monotonic clock.
pub type Millis = u64;

/// Where a message goes or came from, as seen from inside one network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Addr {
    /// A subscriber's device, by its MSISDN (A asking, or B publishing).
    Device(presence_codec::Msisdn),
    /// A Watcher Application instance of this network (`reply_node`: the
    /// worker it runs on).
    Wa(u16),
    /// This network's Outgoing Gateway Presence Server.
    Ogps,
    /// This network's Incoming Gateway Presence Server (on the node that
    /// owns the query's target).
    Igps,
    /// One of this network's presence servers.
    Ps(PsId),
    /// Out through the border gateways to the IGPS of another network
    /// (step 6).
    Border {
        /// The destination network.
        network: NetworkId,
    },
    /// Out through the border gateways back to a WA of another network (step 12).
    BorderReply {
        /// The network the query came from.
        network: NetworkId,
        /// Its WA instance.
        reply_node: u16,
    },
    /// The operator's provisioning system.
    Provisioning,
}

/// One message to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// Destination.
    pub to: Addr,
    /// The network the transaction originates from, carried beside the
    /// message on internal hops (IGPS → PS) and never read from it.
    pub origin: NetworkId,
    /// The message.
    pub message: Message<'static>,
}

/// Everything a role call produces. Reused across calls: roles append, the
/// caller drains. Capacity is kept, so steady state allocates nothing.
#[derive(Debug, Default)]
pub struct Outbox {
    /// Messages to send, in order.
    pub transmits: Vec<Transmit>,
    /// Decisions on queries from other networks (step 11); the chargeable
    /// ones are the charge records. They are to be made durable before the
    /// answers that carry them are released.
    pub records: Vec<DecisionRecord>,
}

impl Outbox {
    /// An outbox with room for `transmits` messages and `records` decisions.
    pub fn with_capacity(transmits: usize, records: usize) -> Outbox {
        Outbox {
            transmits: Vec::with_capacity(transmits),
            records: Vec::with_capacity(records),
        }
    }

    /// Empties both lists, keeping their capacity.
    pub fn clear(&mut self) {
        self.transmits.clear();
        self.records.clear();
    }

    fn send(&mut self, to: Addr, origin: NetworkId, message: Message<'static>) {
        self.transmits.push(Transmit {
            to,
            origin,
            message,
        });
    }
}

/// The answer to `query` with `outcome`: the same transaction, return
/// address and target (step 12, or an error on the way).
pub(crate) fn answer_to(query: &Query, outcome: Outcome) -> Message<'static> {
    Message::Answer(Answer {
        txid: query.txid,
        reply_node: query.reply_node,
        target: query.target,
        outcome,
    })
}

/// What a query-shaped message asks: a query (§5.1), a subscription
/// (§5.4, with its expiry) or an unsubscription (§5.5). All three carry
/// the query's fields and travel its path (WA, OGPS, border, IGPS,
/// presence server) the same way; only the presence server tells them
/// apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Ask {
    /// "Is B attached?" once.
    Query,
    /// Watch B for this many seconds.
    Subscribe(std::num::NonZeroU32),
    /// Stop watching B.
    Unsubscribe,
}

impl Ask {
    /// The query fields of a query-shaped `message`, and what it asks.
    pub fn of(message: &Message<'_>) -> Option<(Query, Ask)> {
        match message {
            Message::Query(query) => Some((*query, Ask::Query)),
            Message::Subscribe(subscribe) => {
                Some((subscribe.query, Ask::Subscribe(subscribe.expiry_s)))
            }
            Message::Unsubscribe(query) => Some((*query, Ask::Unsubscribe)),
            _ => None,
        }
    }

    /// The message asking this with `query`'s fields.
    pub fn message(self, query: Query) -> Message<'static> {
        match self {
            Ask::Query => Message::Query(query),
            Ask::Subscribe(expiry_s) => {
                Message::Subscribe(presence_codec::Subscribe { query, expiry_s })
            }
            Ask::Unsubscribe => Message::Unsubscribe(query),
        }
    }
}

/// `query` one forwarding hop further on. Callers answer a query that
/// arrives with hop limit 0 instead of forwarding it.
pub(crate) fn one_hop_on(query: &Query) -> Query {
    Query {
        hop_limit: query.hop_limit.saturating_sub(1),
        ..*query
    }
}

/// Counters a role keeps of what it refused or dropped, by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropCounters {
    /// Messages of a type this role does not take, or from a source it does
    /// not take them from.
    pub unexpected: u64,
    /// Answers for no pending transaction (late, duplicated or forged).
    pub unmatched: u64,
    /// Refused for load (a bounded table was full).
    pub overloaded: u64,
}

impl DropCounters {
    /// Adds `other` to these.
    pub fn add(&mut self, other: &DropCounters) {
        self.unexpected += other.unexpected;
        self.unmatched += other.unmatched;
        self.overloaded += other.overloaded;
    }
}
