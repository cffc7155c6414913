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

mod bodies;
mod outcome;
mod variable;

pub use bodies::{
    Ack, AckStatus, Answer, BuddyAction, BuddyUpdate, ClientOperation, ClientRequest, Consent,
    ConsentScope, ConsentUpdate, Notify, PresenceState, Publish, Query, Subscribe,
};
pub use outcome::{ErrorReason, Outcome, OutcomeClass, Reachability};
pub use variable::{BuddyList, BuddyListStorage, Credential, DeviceAuth, MacTag, MAC_TAG_LEN};

use outcome::decode_outcome;
use variable::decode_device_auth;

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
/// Body length of a ClientRequest before its credential length byte
/// (version 1) or its counter (version 2) (§5.3).
pub(crate) const CLIENT_REQUEST_BODY_LEN_BASE: usize = 27;
/// Body length of a Notify before its outcome code (§5.6).
pub(crate) const NOTIFY_BODY_LEN_BASE: usize = 30;
/// Body length of a Publish before its credential length byte (version
/// 1) or its counter (version 2) (§5.7).
pub(crate) const PUBLISH_BODY_LEN_BASE: usize = 17;
/// Body length of a BuddyUpdate before its MSISDNs (§5.8).
pub(crate) const BUDDY_UPDATE_BODY_LEN_BASE: usize = 17;
/// Body length of a ConsentUpdate (§5.9).
pub(crate) const CONSENT_UPDATE_BODY_LEN: usize = 24;
/// Body length of an Ack (§5.10).
pub(crate) const ACK_BODY_LEN: usize = 9;
/// A query on the wire, envelope included: the budget is 40 bytes.
pub const QUERY_WIRE_LEN: usize = ENVELOPE_LEN + QUERY_BODY_LEN;

const _: () = assert!(QUERY_WIRE_LEN <= 40);
const _: () = assert!(CLIENT_REQUEST_BODY_LEN_BASE + 1 + CREDENTIAL_LEN_MAX <= BODY_LEN_MAX);
const _: () = assert!(PUBLISH_BODY_LEN_BASE + 1 + CREDENTIAL_LEN_MAX <= BODY_LEN_MAX);
const _: () = assert!(1 + CREDENTIAL_LEN_MAX >= 8 + MAC_TAG_LEN);
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
                CLIENT_REQUEST_BODY_LEN_BASE.wrapping_add(c.auth.wire_len())
            }
            Message::Subscribe(_) => SUBSCRIBE_BODY_LEN,
            Message::Notify(n) => NOTIFY_BODY_LEN_BASE.wrapping_add(n.outcome.encoded_len()),
            Message::Publish(p) => PUBLISH_BODY_LEN_BASE.wrapping_add(p.auth.wire_len()),
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

    /// The frame version this message needs (§10): `Some(1)` for a
    /// ClientRequest or Publish carrying a credential, `Some(2)` for one
    /// carrying a MAC, `None` for every other message (the same in both
    /// versions).
    #[inline]
    pub fn version(&self) -> Option<u8> {
        match self {
            Message::ClientRequest(c) => Some(c.auth.version()),
            Message::Publish(p) => Some(p.auth.version()),
            _ => None,
        }
    }

    /// Decodes one body of the given type code (§5) as version 1 lays it
    /// out. `body` is exactly the `body_len` bytes of the envelope.
    pub fn decode_body(message_type: u8, body: &'a [u8]) -> Result<Message<'a>, DecodeError> {
        Message::decode_body_version(message_type, body, 1)
    }

    /// Decodes one body of the given type code (§5) as frame version
    /// `version` (1 or 2; see [`FRAME_VERSIONS`](crate::FRAME_VERSIONS))
    /// lays it out.
    pub fn decode_body_version(
        message_type: u8,
        body: &'a [u8],
        version: u8,
    ) -> Result<Message<'a>, DecodeError> {
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
                let auth = decode_device_auth(&mut r, version, bad_len)?;
                Message::ClientRequest(ClientRequest {
                    txid,
                    watcher,
                    target,
                    operation,
                    auth,
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
                let auth = decode_device_auth(&mut r, version, bad_len)?;
                Message::Publish(Publish {
                    txid,
                    subscriber,
                    state,
                    auth,
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
                c.auth.encode(buf);
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
                p.auth.encode(buf);
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
