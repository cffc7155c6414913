//! # presence-codec
//!
//! The presence-gw wire format, versions 1 and 2, as specified byte by byte in
//! `docs/wire-format.md` (section numbers `§n` below refer to it).
//!
//! - [`Msisdn`]: validated E.164 numbers, 7 bytes on the wire (§2).
//! - [`Message`]: every message of the presence flow (§5), decoded into values
//!   that borrow their variable parts from the input, encoded into caller-owned
//!   [`bytes::BufMut`] buffers with the size known beforehand.
//! - [`FrameReader`] / [`FrameWriter`]: many messages per datagram (§3, §4).
//! - [`StreamReassembler`]: length-prefixed frames on stream transports (§6).
//! - [`DeviceKey`]: a subscriber's device key, and the MAC its devices put
//!   on requests and publications (§5.11).
//!
//! Contract: no function panics, allocates per message or overflows on any
//! input; every rejection is a [`DecodeError`] naming its reason; every accepted
//! input re-encodes to the same bytes (§8). This crate does no IO and reads no
//! clock.
#![forbid(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::unreachable,
        clippy::todo,
        clippy::arithmetic_side_effects,
        clippy::cast_possible_truncation
    )
)]
#![warn(missing_docs)]

mod auth;
mod error;
mod frame;
mod message;
mod msisdn;
mod reader;
pub mod samples;
pub mod shard;
mod stream;

#[cfg(feature = "arbitrary")]
#[doc(hidden)]
pub mod fuzzing;

pub use auth::{DeviceKey, DeviceSigner, DEVICE_KEY_CONTEXT, DEVICE_KEY_LEN};
pub use error::{DecodeError, EncodeError, ErrorScope, MsisdnField};
pub use frame::{
    encode_frame, FrameReader, FrameWriter, OpenFrame, FRAME_HEADER_LEN, FRAME_LEN_ABSOLUTE_MAX,
    FRAME_LEN_DEFAULT_MAX, FRAME_MAGIC, FRAME_VERSION, FRAME_VERSIONS,
};
pub use message::{
    Ack, AckStatus, Answer, BuddyAction, BuddyList, BuddyListStorage, BuddyUpdate, ClientOperation,
    ClientRequest, Consent, ConsentScope, ConsentUpdate, Credential, DeviceAuth, ErrorReason,
    MacTag, Message, MessageType, Notify, Outcome, OutcomeClass, PresenceState, Publish, Query,
    Reachability, Subscribe, BODY_LEN_MAX, BUDDIES_PER_UPDATE_MAX, CREDENTIAL_LEN_MAX,
    ENVELOPE_LEN, MAC_TAG_LEN, QUERY_BODY_LEN, QUERY_WIRE_LEN,
};
pub use msisdn::{Msisdn, MsisdnError, MSISDN_DIGITS_MAX, MSISDN_MAX, MSISDN_WIRE_LEN};
pub use stream::{
    encode_stream_frame, encode_stream_keepalive, split_stream_frame, LinkHello, StreamReassembler,
    LINK_HELLO_LEN, LINK_HELLO_MAGIC, LINK_HELLO_VERSION, STREAM_FRAME_LEN_MIN, STREAM_KEEPALIVE,
    STREAM_PREFIX_LEN,
};
