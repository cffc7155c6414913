//! Messages of the presence flow (`docs/wire-format.md` §4, §5).
//!
//! Each message is a small value type. Decoding borrows: variable parts
//! (credentials, buddy lists) are views into the input, nothing is allocated or
//! copied beyond the fixed fields. Values are valid by construction (validated
//! newtypes, enums for every code), so encoding can only fail for lack of space,
//! and [`Message::encoded_len`] tells the exact size beforehand.
//!
//! Canonical form (§8): decode then encode gives back the input byte for byte;
//! encode then decode gives back the value.

use core::num::NonZeroU32;

use bytes::BufMut;

use crate::error::{DecodeError, EncodeError, MsisdnField};
use crate::msisdn::{Msisdn, MSISDN_WIRE_LEN};
use crate::reader::Reader;

/// Bytes of a message envelope: type and body length (§4).
pub const ENVELOPE_LEN: usize = 2;
/// Largest message body (§4).
pub const BODY_LEN_MAX: usize = u8::MAX as usize;
/// Largest credential (§5.3, §5.7).
pub const CREDENTIAL_LEN_MAX: usize = 32;
/// Most MSISDNs in one BuddyUpdate (§5.8).
pub const BUDDIES_PER_UPDATE_MAX: usize = 32;

/// Body length of a Query and an Unsubscribe (§5.1, §5.5).
pub const QUERY_BODY_LEN: usize = QUERY_BODY_LEN_U8 as usize;
const QUERY_BODY_LEN_U8: u8 = 31;
/// Body length of a Subscribe (§5.4).
pub(crate) const SUBSCRIBE_BODY_LEN: usize = QUERY_BODY_LEN + 4;
/// Body length of an Answer before its outcome code (§5.2).
pub(crate) const ANSWER_BODY_LEN_BASE: usize = 17;
/// Body length of a ClientRequest before its credential (§5.3).
pub(crate) const CLIENT_REQUEST_BODY_LEN_BASE: usize = 28;
/// Body length of a Notify before its outcome code (§5.6).
pub(crate) const NOTIFY_BODY_LEN_BASE: usize = 30;
/// Body length of a Publish before its credential (§5.7).
pub(crate) const PUBLISH_BODY_LEN_BASE: usize = 18;
/// Body length of a BuddyUpdate before its MSISDNs (§5.8).
pub(crate) const BUDDY_UPDATE_BODY_LEN_BASE: usize = 17;
/// Body length of a ConsentUpdate (§5.9).
pub(crate) const CONSENT_UPDATE_BODY_LEN: usize = 24;
/// Body length of an Ack (§5.10).
pub(crate) const ACK_BODY_LEN: usize = 9;
/// A query on the wire, envelope included: the budget is 40 bytes.
pub const QUERY_WIRE_LEN: usize = ENVELOPE_LEN + QUERY_BODY_LEN;

const _: () = assert!(QUERY_WIRE_LEN <= 40);
const _: () = assert!(CLIENT_REQUEST_BODY_LEN_BASE + CREDENTIAL_LEN_MAX <= BODY_LEN_MAX);
const _: () = assert!(PUBLISH_BODY_LEN_BASE + CREDENTIAL_LEN_MAX <= BODY_LEN_MAX);
const _: () = assert!(NOTIFY_BODY_LEN_BASE + 1 + OUTCOME_DETAIL_LEN_MAX <= BODY_LEN_MAX);
const _: () = assert!(ANSWER_BODY_LEN_BASE + 1 + OUTCOME_DETAIL_LEN_MAX <= BODY_LEN_MAX);
const _: () =
    assert!(BUDDY_UPDATE_BODY_LEN_BASE + MSISDN_WIRE_LEN * BUDDIES_PER_UPDATE_MAX <= BODY_LEN_MAX);

const OUTCOME_DETAIL_LEN_MAX: usize = 5;

/// Type codes (§5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MessageType {
    /// §5.1
    Query = 0x01,
    /// §5.2
    Answer = 0x02,
    /// §5.3
    ClientRequest = 0x03,
    /// §5.4
    Subscribe = 0x04,
    /// §5.5
    Unsubscribe = 0x05,
    /// §5.6
    Notify = 0x06,
    /// §5.7
    Publish = 0x07,
    /// §5.8
    BuddyUpdate = 0x08,
    /// §5.9
    ConsentUpdate = 0x09,
    /// §5.10
    Ack = 0x0A,
}

impl MessageType {
    /// The type for a code, if version 1 defines it.
    pub const fn from_code(code: u8) -> Option<MessageType> {
        Some(match code {
            0x01 => MessageType::Query,
            0x02 => MessageType::Answer,
            0x03 => MessageType::ClientRequest,
            0x04 => MessageType::Subscribe,
            0x05 => MessageType::Unsubscribe,
            0x06 => MessageType::Notify,
            0x07 => MessageType::Publish,
            0x08 => MessageType::BuddyUpdate,
            0x09 => MessageType::ConsentUpdate,
            0x0A => MessageType::Ack,
            _ => return None,
        })
    }
}

/// How B can be reached while attached (§5.2.2): a non-empty set of
/// {packet data, SMS}. Invariant: bits 0-1 only, at least one set.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Reachability(u8);

impl Reachability {
    /// Reachable over packet data only.
    pub const PACKET_DATA: Reachability = Reachability(0x01);
    /// Reachable by SMS only.
    pub const SMS: Reachability = Reachability(0x02);
    /// Reachable over packet data and by SMS.
    pub const PACKET_DATA_AND_SMS: Reachability = Reachability(0x03);

    /// The set for a wire byte, if valid.
    pub const fn from_bits(bits: u8) -> Option<Reachability> {
        match bits {
            0x01..=0x03 => Some(Reachability(bits)),
            _ => None,
        }
    }
    /// The wire byte.
    pub const fn bits(self) -> u8 {
        self.0
    }
    /// Reachable over packet data.
    pub const fn packet_data(self) -> bool {
        self.0 & 0x01 != 0
    }
    /// Reachable by SMS.
    pub const fn sms(self) -> bool {
        self.0 & 0x02 != 0
    }
}

#[cfg(feature = "arbitrary")]
impl<'a> arbitrary::Arbitrary<'a> for Reachability {
    fn arbitrary(u: &mut arbitrary::Unstructured<'a>) -> arbitrary::Result<Reachability> {
        Ok(Reachability(u.int_in_range(0x01..=0x03)?))
    }
}

impl core::fmt::Debug for Reachability {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match (self.packet_data(), self.sms()) {
            (true, true) => "PacketDataAndSms",
            (true, false) => "PacketData",
            _ => "Sms",
        })
    }
}

/// Why a query failed (§5.2.3).
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ErrorReason {
    /// The OGPS found no network for the target (step 5).
    UnknownNetwork = 0x01,
    /// A forwarding role received hop limit 0.
    HopLimitExceeded = 0x02,
    /// The WA's deadline passed with no answer (step 13).
    Timeout = 0x03,
    /// The WA could not authenticate A (step 2).
    Unauthenticated = 0x04,
    /// A's prepay credit does not cover the query (step 2).
    CreditExhausted = 0x05,
    /// The PS could not make the charge record durable (step 11).
    ChargingUnavailable = 0x06,
    /// Policy refused it (wrong link, spoofed watcher).
    Refused = 0x07,
    /// Any other failure in the answering network.
    Internal = 0x08,
}

impl ErrorReason {
    /// The reason for a code, if defined.
    pub const fn from_code(code: u8) -> Option<ErrorReason> {
        Some(match code {
            0x01 => ErrorReason::UnknownNetwork,
            0x02 => ErrorReason::HopLimitExceeded,
            0x03 => ErrorReason::Timeout,
            0x04 => ErrorReason::Unauthenticated,
            0x05 => ErrorReason::CreditExhausted,
            0x06 => ErrorReason::ChargingUnavailable,
            0x07 => ErrorReason::Refused,
            0x08 => ErrorReason::Internal,
            _ => return None,
        })
    }

    /// Stable label (metrics, logs, charge-record dumps).
    pub const fn name(self) -> &'static str {
        match self {
            ErrorReason::UnknownNetwork => "unknown_network",
            ErrorReason::HopLimitExceeded => "hop_limit_exceeded",
            ErrorReason::Timeout => "timeout",
            ErrorReason::Unauthenticated => "unauthenticated",
            ErrorReason::CreditExhausted => "credit_exhausted",
            ErrorReason::ChargingUnavailable => "charging_unavailable",
            ErrorReason::Refused => "refused",
            ErrorReason::Internal => "internal",
        }
    }
}

/// The result of a query or watch (§5.2.1).
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// B is attached and reachable as given; confirmed `confirmed_age_s` ago.
    Attached {
        /// How B can be reached.
        reach: Reachability,
        /// Seconds since a device of B last confirmed the status.
        confirmed_age_s: u32,
    },
    /// B is detached; confirmed `confirmed_age_s` ago.
    Detached {
        /// Seconds since a device of B last confirmed the status.
        confirmed_age_s: u32,
    },
    /// No such subscriber, or not permitted: deliberately one outcome.
    NotAvailable,
    /// The answering side sheds load; retry no sooner than `retry_after_ms`.
    Overloaded {
        /// Milliseconds to wait before retrying.
        retry_after_ms: u32,
    },
    /// The query failed for the reason given.
    Error(ErrorReason),
}

const OUTCOME_ATTACHED: u8 = 0x01;
const OUTCOME_DETACHED: u8 = 0x02;
const OUTCOME_NOT_AVAILABLE: u8 = 0x03;
const OUTCOME_OVERLOADED: u8 = 0x04;
const OUTCOME_ERROR: u8 = 0x05;

/// What an outcome tells A, in five classes: the one classification that
/// metrics, charge-record dumps, the simulation and the load harness count
/// by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OutcomeClass {
    /// B's status: attached.
    Attached,
    /// B's status: detached.
    Detached,
    /// Not available (unknown, or not permitted).
    NotAvailable,
    /// Shed for load, with a retry-after.
    Overloaded,
    /// Failed for a reason.
    Error,
}

impl OutcomeClass {
    /// Every class, in counter order.
    pub const ALL: [OutcomeClass; 5] = [
        OutcomeClass::Attached,
        OutcomeClass::Detached,
        OutcomeClass::NotAvailable,
        OutcomeClass::Overloaded,
        OutcomeClass::Error,
    ];

    /// Stable label.
    pub const fn name(self) -> &'static str {
        match self {
            OutcomeClass::Attached => "attached",
            OutcomeClass::Detached => "detached",
            OutcomeClass::NotAvailable => "not_available",
            OutcomeClass::Overloaded => "overloaded",
            OutcomeClass::Error => "error",
        }
    }

    /// Position in [`OutcomeClass::ALL`].
    pub const fn index(self) -> usize {
        self as usize
    }
}

impl Outcome {
    /// Its class.
    pub const fn class(&self) -> OutcomeClass {
        match self {
            Outcome::Attached { .. } => OutcomeClass::Attached,
            Outcome::Detached { .. } => OutcomeClass::Detached,
            Outcome::NotAvailable => OutcomeClass::NotAvailable,
            Outcome::Overloaded { .. } => OutcomeClass::Overloaded,
            Outcome::Error(_) => OutcomeClass::Error,
        }
    }

    /// Whether it shows B's status: what a charge record is raised for
    /// (step 11).
    pub const fn shows_status(&self) -> bool {
        matches!(self, Outcome::Attached { .. } | Outcome::Detached { .. })
    }

    /// A label naming the class, or for an error its reason.
    pub const fn name(&self) -> &'static str {
        match self {
            Outcome::Error(reason) => reason.name(),
            other => other.class().name(),
        }
    }

    /// Bytes of code and detail on the wire.
    pub const fn encoded_len(&self) -> usize {
        match self {
            Outcome::Attached { .. } => 6,
            Outcome::Detached { .. } | Outcome::Overloaded { .. } => 5,
            Outcome::NotAvailable => 1,
            Outcome::Error(_) => 2,
        }
    }

    /// Detail size for a code, if the code is defined.
    const fn detail_len(code: u8) -> Option<usize> {
        match code {
            OUTCOME_ATTACHED => Some(5),
            OUTCOME_DETACHED | OUTCOME_OVERLOADED => Some(4),
            OUTCOME_NOT_AVAILABLE => Some(0),
            OUTCOME_ERROR => Some(1),
            _ => None,
        }
    }

    /// Decodes code and detail filling `r` exactly; the caller has checked the
    /// body length against [`Outcome::detail_len`] of the code.
    fn decode(code: u8, r: &mut Reader<'_>) -> Result<Outcome, DecodeError> {
        let short = DecodeError::UnknownOutcome(code);
        Ok(match code {
            OUTCOME_ATTACHED => {
                let bits = r.u8().ok_or(short)?;
                let reach =
                    Reachability::from_bits(bits).ok_or(DecodeError::InvalidReachability(bits))?;
                Outcome::Attached {
                    reach,
                    confirmed_age_s: r.u32().ok_or(short)?,
                }
            }
            OUTCOME_DETACHED => Outcome::Detached {
                confirmed_age_s: r.u32().ok_or(short)?,
            },
            OUTCOME_NOT_AVAILABLE => Outcome::NotAvailable,
            OUTCOME_OVERLOADED => Outcome::Overloaded {
                retry_after_ms: r.u32().ok_or(short)?,
            },
            OUTCOME_ERROR => {
                let reason = r.u8().ok_or(short)?;
                Outcome::Error(
                    ErrorReason::from_code(reason)
                        .ok_or(DecodeError::UnknownErrorReason(reason))?,
                )
            }
            _ => return Err(short),
        })
    }

    fn encode<B: BufMut>(&self, buf: &mut B) {
        match *self {
            Outcome::Attached {
                reach,
                confirmed_age_s,
            } => {
                buf.put_u8(OUTCOME_ATTACHED);
                buf.put_u8(reach.bits());
                buf.put_u32(confirmed_age_s);
            }
            Outcome::Detached { confirmed_age_s } => {
                buf.put_u8(OUTCOME_DETACHED);
                buf.put_u32(confirmed_age_s);
            }
            Outcome::NotAvailable => buf.put_u8(OUTCOME_NOT_AVAILABLE),
            Outcome::Overloaded { retry_after_ms } => {
                buf.put_u8(OUTCOME_OVERLOADED);
                buf.put_u32(retry_after_ms);
            }
            Outcome::Error(reason) => {
                buf.put_u8(OUTCOME_ERROR);
                buf.put_u8(reason as u8);
            }
        }
    }
}

/// An opaque credential of at most 32 bytes, borrowed (§5.3, §5.7).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Credential<'a>(&'a [u8]);

impl<'a> Credential<'a> {
    /// No credential.
    pub const EMPTY: Credential<'static> = Credential(&[]);

    /// The credential for these bytes, if at most 32.
    pub const fn new(bytes: &'a [u8]) -> Option<Credential<'a>> {
        if bytes.len() <= CREDENTIAL_LEN_MAX {
            Some(Credential(bytes))
        } else {
            None
        }
    }
    /// The bytes.
    pub const fn as_bytes(&self) -> &'a [u8] {
        self.0
    }
    /// Length in bytes, at most 32.
    pub const fn len(&self) -> usize {
        self.0.len()
    }
    /// Whether there is no credential.
    pub const fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// The length byte: exact because of the invariant.
    const fn len_byte(&self) -> u8 {
        // Invariant: at most CREDENTIAL_LEN_MAX (32) bytes, so this is exact.
        #[allow(clippy::cast_possible_truncation)]
        let len = self.0.len() as u8;
        len
    }
}

#[cfg(feature = "arbitrary")]
impl<'a> arbitrary::Arbitrary<'a> for Credential<'a> {
    fn arbitrary(u: &mut arbitrary::Unstructured<'a>) -> arbitrary::Result<Credential<'a>> {
        let len = u.int_in_range(0..=CREDENTIAL_LEN_MAX)?;
        Ok(Credential(u.bytes(len)?))
    }
}

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
    fn decode(r: &mut Reader<'_>, message_type: u8) -> Result<Query, DecodeError> {
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
    fn body(&self) -> [u8; QUERY_BODY_LEN] {
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
    /// What the WA authenticates A with (step 2).
    pub credential: Credential<'a>,
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
    /// What the PS authenticates the device with.
    pub credential: Credential<'a>,
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

/// Up to 32 MSISDNs in strictly ascending order, borrowed in their wire form
/// (§5.8). Invariant: the bytes are a whole number of valid 7-byte MSISDNs,
/// at most 32, strictly ascending.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct BuddyList<'a>(&'a [u8]);

/// Room for the wire form of a full buddy list.
pub type BuddyListStorage = [u8; MSISDN_WIRE_LEN * BUDDIES_PER_UPDATE_MAX];

impl<'a> BuddyList<'a> {
    /// Validates a wire form (§5.8).
    pub fn from_wire(bytes: &'a [u8]) -> Result<BuddyList<'a>, DecodeError> {
        let (chunks, rest) = bytes.as_chunks::<MSISDN_WIRE_LEN>();
        if !rest.is_empty() {
            return Err(DecodeError::BadBodyLength {
                message_type: MessageType::BuddyUpdate as u8,
                body_len: u8::try_from(bytes.len().saturating_add(BUDDY_UPDATE_BODY_LEN_BASE))
                    .unwrap_or(u8::MAX),
            });
        }
        if chunks.len() > BUDDIES_PER_UPDATE_MAX {
            return Err(DecodeError::TooManyBuddies {
                count: u8::try_from(chunks.len()).unwrap_or(u8::MAX),
            });
        }
        let mut previous: Option<Msisdn> = None;
        for chunk in chunks {
            let buddy = msisdn(*chunk, MsisdnField::Buddy)?;
            if previous.is_some_and(|p| p >= buddy) {
                return Err(DecodeError::BuddiesNotAscending);
            }
            previous = Some(buddy);
        }
        Ok(BuddyList(bytes))
    }

    /// Encodes `buddies` into `storage` and returns the list viewing it. The
    /// MSISDNs must be strictly ascending and at most 32.
    pub fn encode(
        buddies: &[Msisdn],
        storage: &'a mut BuddyListStorage,
    ) -> Result<BuddyList<'a>, DecodeError> {
        if buddies.len() > BUDDIES_PER_UPDATE_MAX {
            return Err(DecodeError::TooManyBuddies {
                count: u8::try_from(buddies.len()).unwrap_or(u8::MAX),
            });
        }
        if buddies.windows(2).any(|w| w.first() >= w.last()) {
            return Err(DecodeError::BuddiesNotAscending);
        }
        let (chunks, _) = storage.as_chunks_mut::<MSISDN_WIRE_LEN>();
        for (chunk, buddy) in chunks.iter_mut().zip(buddies) {
            *chunk = buddy.to_wire();
        }
        let len = buddies.len().saturating_mul(MSISDN_WIRE_LEN);
        let bytes: &'a [u8] = storage.get(..len).unwrap_or_default();
        Ok(BuddyList(bytes))
    }

    /// Number of MSISDNs, at most 32.
    pub fn len(&self) -> usize {
        self.0.len() / MSISDN_WIRE_LEN
    }
    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// The MSISDNs in ascending order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = Msisdn> + 'a {
        let (chunks, _) = self.0.as_chunks::<MSISDN_WIRE_LEN>();
        // Invariant: every chunk was validated when the list was built.
        chunks
            .iter()
            .map(|chunk| Msisdn::from_wire(*chunk).unwrap_or(Msisdn::MIN))
    }
    /// The wire form.
    pub const fn as_wire(&self) -> &'a [u8] {
        self.0
    }
}

/// Borrows input bytes that happen to form a valid list, else gives the empty
/// list; the fuzz harness builds dense valid lists itself.
#[cfg(feature = "arbitrary")]
impl<'a> arbitrary::Arbitrary<'a> for BuddyList<'a> {
    fn arbitrary(u: &mut arbitrary::Unstructured<'a>) -> arbitrary::Result<BuddyList<'a>> {
        let count = u.int_in_range(0..=BUDDIES_PER_UPDATE_MAX)?;
        let bytes = u.bytes(count.saturating_mul(MSISDN_WIRE_LEN))?;
        Ok(BuddyList::from_wire(bytes).unwrap_or_default())
    }
}

impl core::fmt::Debug for BuddyList<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
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

/// Any message of version 1, borrowing the input it was decoded from.
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Message<'a> {
    /// §5.1
    Query(Query),
    /// §5.2
    Answer(Answer),
    /// §5.3
    ClientRequest(ClientRequest<'a>),
    /// §5.4
    Subscribe(Subscribe),
    /// §5.5: same fields as a query.
    Unsubscribe(Query),
    /// §5.6
    Notify(Notify),
    /// §5.7
    Publish(Publish<'a>),
    /// §5.8
    BuddyUpdate(BuddyUpdate<'a>),
    /// §5.9
    ConsentUpdate(ConsentUpdate),
    /// §5.10
    Ack(Ack),
}

#[inline]
fn msisdn(bytes: [u8; MSISDN_WIRE_LEN], field: MsisdnField) -> Result<Msisdn, DecodeError> {
    Msisdn::from_wire(bytes).map_err(|reason| DecodeError::InvalidMsisdn { field, reason })
}

impl<'a> Message<'a> {
    /// The type code.
    pub const fn message_type(&self) -> MessageType {
        match self {
            Message::Query(_) => MessageType::Query,
            Message::Answer(_) => MessageType::Answer,
            Message::ClientRequest(_) => MessageType::ClientRequest,
            Message::Subscribe(_) => MessageType::Subscribe,
            Message::Unsubscribe(_) => MessageType::Unsubscribe,
            Message::Notify(_) => MessageType::Notify,
            Message::Publish(_) => MessageType::Publish,
            Message::BuddyUpdate(_) => MessageType::BuddyUpdate,
            Message::ConsentUpdate(_) => MessageType::ConsentUpdate,
            Message::Ack(_) => MessageType::Ack,
        }
    }

    /// Body length in bytes, at most [`BODY_LEN_MAX`].
    ///
    /// The sums cannot exceed 255: the compile-time checks above bound every
    /// base plus its largest variable part.
    #[inline]
    pub fn body_len(&self) -> usize {
        match self {
            Message::Query(_) | Message::Unsubscribe(_) => QUERY_BODY_LEN,
            Message::Answer(a) => ANSWER_BODY_LEN_BASE.wrapping_add(a.outcome.encoded_len()),
            Message::ClientRequest(c) => {
                CLIENT_REQUEST_BODY_LEN_BASE.wrapping_add(c.credential.len())
            }
            Message::Subscribe(_) => SUBSCRIBE_BODY_LEN,
            Message::Notify(n) => NOTIFY_BODY_LEN_BASE.wrapping_add(n.outcome.encoded_len()),
            Message::Publish(p) => PUBLISH_BODY_LEN_BASE.wrapping_add(p.credential.len()),
            Message::BuddyUpdate(b) => {
                BUDDY_UPDATE_BODY_LEN_BASE.wrapping_add(b.buddies.as_wire().len())
            }
            Message::ConsentUpdate(_) => CONSENT_UPDATE_BODY_LEN,
            Message::Ack(_) => ACK_BODY_LEN,
        }
    }

    /// Bytes the message takes on the wire, envelope included.
    #[inline]
    pub fn encoded_len(&self) -> usize {
        ENVELOPE_LEN.wrapping_add(self.body_len())
    }

    /// Decodes one body of the given type code (§5). `body` is exactly the
    /// `body_len` bytes of the envelope.
    pub fn decode_body(message_type: u8, body: &'a [u8]) -> Result<Message<'a>, DecodeError> {
        let body_len = u8::try_from(body.len()).unwrap_or(u8::MAX);
        let bad_len = DecodeError::BadBodyLength {
            message_type,
            body_len,
        };
        let Some(kind) = MessageType::from_code(message_type) else {
            return Err(DecodeError::UnknownMessageType(message_type));
        };
        let mut r = Reader::new(body);
        let message = match kind {
            MessageType::Query | MessageType::Unsubscribe => {
                if body.len() != QUERY_BODY_LEN {
                    return Err(bad_len);
                }
                let query = Query::decode(&mut r, message_type)?;
                if kind == MessageType::Query {
                    Message::Query(query)
                } else {
                    Message::Unsubscribe(query)
                }
            }
            MessageType::Subscribe => {
                if body.len() != SUBSCRIBE_BODY_LEN {
                    return Err(bad_len);
                }
                let query = Query::decode(&mut r, message_type)?;
                let expiry_s = r.u32().ok_or(bad_len)?;
                Message::Subscribe(Subscribe {
                    query,
                    expiry_s: NonZeroU32::new(expiry_s)
                        .ok_or(DecodeError::InvalidExpiry { expiry_s })?,
                })
            }
            MessageType::Answer => {
                let txid = r.u64().ok_or(bad_len)?;
                let reply_node = r.u16().ok_or(bad_len)?;
                let target = msisdn(r.msisdn_bytes().ok_or(bad_len)?, MsisdnField::Target)?;
                let outcome = decode_outcome(&mut r, bad_len)?;
                Message::Answer(Answer {
                    txid,
                    reply_node,
                    target,
                    outcome,
                })
            }
            MessageType::ClientRequest => {
                let txid = r.u64().ok_or(bad_len)?;
                let watcher = msisdn(r.msisdn_bytes().ok_or(bad_len)?, MsisdnField::Watcher)?;
                let target = msisdn(r.msisdn_bytes().ok_or(bad_len)?, MsisdnField::Target)?;
                let operation_code = r.u8().ok_or(bad_len)?;
                let expiry_s = r.u32().ok_or(bad_len)?;
                let operation = match (operation_code, NonZeroU32::new(expiry_s)) {
                    (0x01, None) => ClientOperation::Query,
                    (0x02, Some(expiry_s)) => ClientOperation::Subscribe { expiry_s },
                    (0x03, None) => ClientOperation::Unsubscribe,
                    (0x01..=0x03, _) => return Err(DecodeError::InvalidExpiry { expiry_s }),
                    (other, _) => return Err(DecodeError::UnknownOperation(other)),
                };
                let credential = decode_credential(&mut r, bad_len)?;
                Message::ClientRequest(ClientRequest {
                    txid,
                    watcher,
                    target,
                    operation,
                    credential,
                })
            }
            MessageType::Notify => {
                let txid = r.u64().ok_or(bad_len)?;
                let reply_node = r.u16().ok_or(bad_len)?;
                let watcher = msisdn(r.msisdn_bytes().ok_or(bad_len)?, MsisdnField::Watcher)?;
                let target = msisdn(r.msisdn_bytes().ok_or(bad_len)?, MsisdnField::Target)?;
                let seq = r.u32().ok_or(bad_len)?;
                let remaining_s = r.u16().ok_or(bad_len)?;
                let outcome = decode_outcome(&mut r, bad_len)?;
                Message::Notify(Notify {
                    txid,
                    reply_node,
                    watcher,
                    target,
                    seq,
                    remaining_s,
                    outcome,
                })
            }
            MessageType::Publish => {
                let txid = r.u64().ok_or(bad_len)?;
                let subscriber = msisdn(r.msisdn_bytes().ok_or(bad_len)?, MsisdnField::Subscriber)?;
                let state_code = r.u8().ok_or(bad_len)?;
                let reach = r.u8().ok_or(bad_len)?;
                let state = match state_code {
                    0x01 => PresenceState::Attached(
                        Reachability::from_bits(reach)
                            .ok_or(DecodeError::InvalidReachability(reach))?,
                    ),
                    0x02 if reach == 0 => PresenceState::Detached,
                    0x02 => return Err(DecodeError::InvalidReachability(reach)),
                    other => return Err(DecodeError::UnknownPresenceState(other)),
                };
                let credential = decode_credential(&mut r, bad_len)?;
                Message::Publish(Publish {
                    txid,
                    subscriber,
                    state,
                    credential,
                })
            }
            MessageType::BuddyUpdate => {
                let txid = r.u64().ok_or(bad_len)?;
                let owner = msisdn(r.msisdn_bytes().ok_or(bad_len)?, MsisdnField::Owner)?;
                let action = match r.u8().ok_or(bad_len)? {
                    0x01 => BuddyAction::Add,
                    0x02 => BuddyAction::Remove,
                    0x03 => BuddyAction::Replace,
                    other => return Err(DecodeError::UnknownAction(other)),
                };
                let count = r.u8().ok_or(bad_len)?;
                if usize::from(count) > BUDDIES_PER_UPDATE_MAX {
                    return Err(DecodeError::TooManyBuddies { count });
                }
                if usize::from(count).saturating_mul(MSISDN_WIRE_LEN) != r.remaining() {
                    return Err(bad_len);
                }
                let buddies = BuddyList::from_wire(r.take_rest())?;
                Message::BuddyUpdate(BuddyUpdate {
                    txid,
                    owner,
                    action,
                    buddies,
                })
            }
            MessageType::ConsentUpdate => {
                if body.len() != CONSENT_UPDATE_BODY_LEN {
                    return Err(bad_len);
                }
                let txid = r.u64().ok_or(bad_len)?;
                let owner = msisdn(r.msisdn_bytes().ok_or(bad_len)?, MsisdnField::Owner)?;
                let scope_code = r.u8().ok_or(bad_len)?;
                let watcher_bytes = r.msisdn_bytes().ok_or(bad_len)?;
                let scope = match scope_code {
                    0x01 => ConsentScope::Watcher(msisdn(watcher_bytes, MsisdnField::Watcher)?),
                    0x02 if watcher_bytes == [0; MSISDN_WIRE_LEN] => ConsentScope::All,
                    0x02 => return Err(DecodeError::NonZeroPadding),
                    other => return Err(DecodeError::UnknownConsentScope(other)),
                };
                let consent = match r.u8().ok_or(bad_len)? {
                    0x01 => Consent::Grant,
                    0x02 => Consent::Withdraw,
                    other => return Err(DecodeError::UnknownConsent(other)),
                };
                Message::ConsentUpdate(ConsentUpdate {
                    txid,
                    owner,
                    scope,
                    consent,
                })
            }
            MessageType::Ack => {
                if body.len() != ACK_BODY_LEN {
                    return Err(bad_len);
                }
                let txid = r.u64().ok_or(bad_len)?;
                let code = r.u8().ok_or(bad_len)?;
                Message::Ack(Ack {
                    txid,
                    status: AckStatus::from_code(code)
                        .ok_or(DecodeError::UnknownAckStatus(code))?,
                })
            }
        };
        if r.remaining() != 0 {
            return Err(bad_len);
        }
        Ok(message)
    }

    /// Writes envelope and body: exactly [`Message::encoded_len`] bytes.
    pub fn encode<B: BufMut>(&self, buf: &mut B) -> Result<(), EncodeError> {
        let needed = self.encoded_len();
        let available = buf.remaining_mut();
        if available < needed {
            return Err(EncodeError::BufferTooSmall { needed, available });
        }
        if let Message::Query(query) = self {
            // Hot path: one copy of a stack-built message.
            let mut wire = [0u8; QUERY_WIRE_LEN];
            let (envelope, body) = wire.split_at_mut(ENVELOPE_LEN);
            envelope.copy_from_slice(&[MessageType::Query as u8, QUERY_BODY_LEN_U8]);
            body.copy_from_slice(&query.body());
            buf.put_slice(&wire);
            return Ok(());
        }
        buf.put_u8(self.message_type() as u8);
        // Exact: `body_len` is at most BODY_LEN_MAX (255), see `body_len`.
        #[allow(clippy::cast_possible_truncation)]
        buf.put_u8(self.body_len() as u8);
        match self {
            Message::Query(q) | Message::Unsubscribe(q) => buf.put_slice(&q.body()),
            Message::Subscribe(s) => {
                buf.put_slice(&s.query.body());
                buf.put_u32(s.expiry_s.get());
            }
            Message::Answer(a) => {
                buf.put_u64(a.txid);
                buf.put_u16(a.reply_node);
                buf.put_slice(&a.target.to_wire());
                a.outcome.encode(buf);
            }
            Message::ClientRequest(c) => {
                buf.put_u64(c.txid);
                buf.put_slice(&c.watcher.to_wire());
                buf.put_slice(&c.target.to_wire());
                let (code, expiry_s) = match c.operation {
                    ClientOperation::Query => (0x01, 0),
                    ClientOperation::Subscribe { expiry_s } => (0x02, expiry_s.get()),
                    ClientOperation::Unsubscribe => (0x03, 0),
                };
                buf.put_u8(code);
                buf.put_u32(expiry_s);
                buf.put_u8(c.credential.len_byte());
                buf.put_slice(c.credential.as_bytes());
            }
            Message::Notify(n) => {
                buf.put_u64(n.txid);
                buf.put_u16(n.reply_node);
                buf.put_slice(&n.watcher.to_wire());
                buf.put_slice(&n.target.to_wire());
                buf.put_u32(n.seq);
                buf.put_u16(n.remaining_s);
                n.outcome.encode(buf);
            }
            Message::Publish(p) => {
                buf.put_u64(p.txid);
                buf.put_slice(&p.subscriber.to_wire());
                let (state, reach) = match p.state {
                    PresenceState::Attached(reach) => (0x01, reach.bits()),
                    PresenceState::Detached => (0x02, 0),
                };
                buf.put_u8(state);
                buf.put_u8(reach);
                buf.put_u8(p.credential.len_byte());
                buf.put_slice(p.credential.as_bytes());
            }
            Message::BuddyUpdate(b) => {
                buf.put_u64(b.txid);
                buf.put_slice(&b.owner.to_wire());
                buf.put_u8(b.action as u8);
                // Exact: at most BUDDIES_PER_UPDATE_MAX (32) by the list's invariant.
                #[allow(clippy::cast_possible_truncation)]
                buf.put_u8(b.buddies.len() as u8);
                buf.put_slice(b.buddies.as_wire());
            }
            Message::ConsentUpdate(c) => {
                buf.put_u64(c.txid);
                buf.put_slice(&c.owner.to_wire());
                let (scope, watcher) = match c.scope {
                    ConsentScope::Watcher(w) => (0x01, w.to_wire()),
                    ConsentScope::All => (0x02, [0; MSISDN_WIRE_LEN]),
                };
                buf.put_u8(scope);
                buf.put_slice(&watcher);
                buf.put_u8(c.consent as u8);
            }
            Message::Ack(a) => {
                buf.put_u64(a.txid);
                buf.put_u8(a.status as u8);
            }
        }
        Ok(())
    }
}

/// Decodes the outcome that ends an Answer or Notify body: the code, then a
/// detail that must fill the rest exactly.
fn decode_outcome(r: &mut Reader<'_>, bad_len: DecodeError) -> Result<Outcome, DecodeError> {
    let code = r.u8().ok_or(bad_len)?;
    let detail_len = Outcome::detail_len(code).ok_or(DecodeError::UnknownOutcome(code))?;
    if r.remaining() != detail_len {
        return Err(bad_len);
    }
    Outcome::decode(code, r)
}

/// Decodes a credential length and the credential that must fill the rest.
fn decode_credential<'a>(
    r: &mut Reader<'a>,
    bad_len: DecodeError,
) -> Result<Credential<'a>, DecodeError> {
    let len = r.u8().ok_or(bad_len)?;
    if usize::from(len) > CREDENTIAL_LEN_MAX {
        return Err(DecodeError::CredentialTooLong { len });
    }
    if usize::from(len) != r.remaining() {
        return Err(bad_len);
    }
    let bytes = r.bytes(usize::from(len)).ok_or(bad_len)?;
    Credential::new(bytes).ok_or(DecodeError::CredentialTooLong { len })
}
