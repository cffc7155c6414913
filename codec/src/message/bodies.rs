//! The value of each message type (§5.1 to §5.10): its fixed fields, with
//! the variable parts borrowed. A query's fields are decoded and encoded
//! here (the hot path writes its body as one array); every other body is
//! decoded and encoded by the dispatch on [`Message`](super::Message).

use core::num::NonZeroU32;

use bytes::BufMut;

use super::{
    msisdn, BuddyList, DeviceAuth, Outcome, Reachability, QUERY_BODY_LEN, QUERY_BODY_LEN_U8,
};
use crate::error::{DecodeError, MsisdnField};
use crate::msisdn::Msisdn;
use crate::reader::Reader;

/// A query (§5.1): also the layout of Unsubscribe (§5.5) and the head of
/// Subscribe (§5.4).
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Query {
    /// Transaction id, chosen by the WA; kept across retransmissions.
    pub txid: u64,
    /// A's MSISDN.
    pub watcher: Msisdn,
    /// B's MSISDN.
    pub target: Msisdn,
    /// Forwarding hops left.
    pub hop_limit: u8,
    /// Milliseconds until the WA gives up, as of sending.
    pub budget_ms: u16,
    /// WA instance of the origin network that gets the answer.
    pub reply_node: u16,
    /// Numbering-table version of the OGPS that routed it (0 before the OGPS).
    pub route_version: u32,
}

impl Query {
    #[inline]
    pub(super) fn decode(r: &mut Reader<'_>, message_type: u8) -> Result<Query, DecodeError> {
        let bad = DecodeError::BadBodyLength {
            message_type,
            body_len: QUERY_BODY_LEN_U8,
        };
        let txid = r.u64().ok_or(bad)?;
        let watcher = msisdn(r.msisdn_bytes().ok_or(bad)?, MsisdnField::Watcher)?;
        let target = msisdn(r.msisdn_bytes().ok_or(bad)?, MsisdnField::Target)?;
        Ok(Query {
            txid,
            watcher,
            target,
            hop_limit: r.u8().ok_or(bad)?,
            budget_ms: r.u16().ok_or(bad)?,
            reply_node: r.u16().ok_or(bad)?,
            route_version: r.u32().ok_or(bad)?,
        })
    }

    /// The body as one array: the hot path writes it with a single copy.
    #[inline]
    pub(super) fn body(&self) -> [u8; QUERY_BODY_LEN] {
        let mut out = [0u8; QUERY_BODY_LEN];
        let mut w = &mut out[..];
        w.put_u64(self.txid);
        w.put_slice(&self.watcher.to_wire());
        w.put_slice(&self.target.to_wire());
        w.put_u8(self.hop_limit);
        w.put_u16(self.budget_ms);
        w.put_u16(self.reply_node);
        w.put_u32(self.route_version);
        out
    }
}

/// The answer to a query, watch or client request (§5.2), steps 12 and 13.
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Answer {
    /// Transaction id of the query answered.
    pub txid: u64,
    /// WA instance the answer goes to, copied from the query.
    pub reply_node: u16,
    /// B's MSISDN.
    pub target: Msisdn,
    /// What happened.
    pub outcome: Outcome,
}

/// What a device asks its WA to do (§5.3).
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ClientOperation {
    /// "Is B attached?" once.
    Query,
    /// Watch B for this many seconds.
    Subscribe {
        /// Seconds the watch runs.
        expiry_s: NonZeroU32,
    },
    /// Stop watching B.
    Unsubscribe,
}

/// A device's request to its WA (§5.3), step 1.
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientRequest<'a> {
    /// The device's request id.
    pub txid: u64,
    /// A's MSISDN.
    pub watcher: Msisdn,
    /// B's MSISDN.
    pub target: Msisdn,
    /// What A asks.
    pub operation: ClientOperation,
    /// How the WA authenticates A (step 2).
    pub auth: DeviceAuth<'a>,
}

/// A watch with an expiry (§5.4).
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Subscribe {
    /// Routing and identity fields, as in a query.
    pub query: Query,
    /// Seconds the watch runs.
    pub expiry_s: NonZeroU32,
}

/// A change of B's status sent to a watcher (§5.6).
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Notify {
    /// Transaction id of the subscription.
    pub txid: u64,
    /// WA instance the notification goes to.
    pub reply_node: u16,
    /// A's MSISDN.
    pub watcher: Msisdn,
    /// B's MSISDN.
    pub target: Msisdn,
    /// Notification number within the subscription, from 1.
    pub seq: u32,
    /// Seconds the subscription still runs (0: last notification).
    pub remaining_s: u16,
    /// B's status, or why the subscription ended.
    pub outcome: Outcome,
}

/// B's status as a device reports it (§5.7).
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PresenceState {
    /// Attached, reachable as given.
    Attached(Reachability),
    /// Detached.
    Detached,
}

/// A status publication from one of B's devices (§5.7).
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Publish<'a> {
    /// The device's transaction id.
    pub txid: u64,
    /// B's MSISDN.
    pub subscriber: Msisdn,
    /// The status.
    pub state: PresenceState,
    /// How the PS authenticates the device.
    pub auth: DeviceAuth<'a>,
}

/// What a BuddyUpdate does (§5.8).
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum BuddyAction {
    /// Add these watchers.
    Add = 0x01,
    /// Remove these watchers.
    Remove = 0x02,
    /// Replace the whole list with these.
    Replace = 0x03,
}

/// A change to who may watch `owner` (§5.8).
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BuddyUpdate<'a> {
    /// Provisioning transaction id.
    pub txid: u64,
    /// Whose buddy list.
    pub owner: Msisdn,
    /// Add, remove or replace.
    pub action: BuddyAction,
    /// The watchers (an empty add or remove changes nothing).
    pub buddies: BuddyList<'a>,
}

/// Whom a ConsentUpdate is about (§5.9).
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConsentScope {
    /// One watcher.
    Watcher(Msisdn),
    /// Every watcher.
    All,
}

/// Consent given or taken back (§5.9).
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Consent {
    /// B lets them watch.
    Grant = 0x01,
    /// B no longer lets them watch.
    Withdraw = 0x02,
}

/// B grants or withdraws consent (§5.9), checked at step 10.
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConsentUpdate {
    /// Provisioning transaction id.
    pub txid: u64,
    /// B's MSISDN.
    pub owner: Msisdn,
    /// One watcher or all.
    pub scope: ConsentScope,
    /// Grant or withdraw.
    pub consent: Consent,
}

/// Result of a publication or provisioning update (§5.10).
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum AckStatus {
    /// Done.
    Ok = 0x00,
    /// The subscriber is not known here.
    UnknownSubscriber = 0x01,
    /// The credential did not authenticate.
    Unauthenticated = 0x02,
    /// The list would exceed the subscriber's limit.
    TooManyBuddies = 0x03,
    /// Shed for load; try again later.
    Overloaded = 0x04,
    /// Not permitted.
    NotPermitted = 0x05,
}

impl AckStatus {
    /// The status for a code, if defined.
    pub const fn from_code(code: u8) -> Option<AckStatus> {
        Some(match code {
            0x00 => AckStatus::Ok,
            0x01 => AckStatus::UnknownSubscriber,
            0x02 => AckStatus::Unauthenticated,
            0x03 => AckStatus::TooManyBuddies,
            0x04 => AckStatus::Overloaded,
            0x05 => AckStatus::NotPermitted,
            _ => return None,
        })
    }
}

/// Acknowledges a Publish, BuddyUpdate or ConsentUpdate (§5.10).
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ack {
    /// Transaction id acknowledged.
    pub txid: u64,
    /// What happened.
    pub status: AckStatus,
}
