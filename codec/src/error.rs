//! Typed decode and encode errors (`docs/wire-format.md` §9).
//!
//! Every rejection names its reason; the variants map one to one onto the error
//! catalogue of the spec, and [`DecodeError::scope`] tells how much input the
//! error costs the receiver (§4).

use crate::msisdn::MsisdnError;

/// Which MSISDN field of a message was invalid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MsisdnField {
    /// A's number: the watching party.
    Watcher,
    /// B's number: the watched party.
    Target,
    /// The publishing subscriber.
    Subscriber,
    /// The owner of a buddy list or consent.
    Owner,
    /// An entry of a buddy list.
    Buddy,
}

impl core::fmt::Display for MsisdnField {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            MsisdnField::Watcher => "watcher",
            MsisdnField::Target => "target",
            MsisdnField::Subscriber => "subscriber",
            MsisdnField::Owner => "owner",
            MsisdnField::Buddy => "buddy",
        })
    }
}

/// How much of the input a [`DecodeError`] costs the receiver (§4, §6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorScope {
    /// The whole frame is rejected.
    Frame,
    /// The message envelope is broken: this and all later messages of the frame.
    RestOfFrame,
    /// Only this message; the receiver reads on.
    Message,
    /// The stream cannot be resynchronised: close the connection.
    Connection,
}

/// Why an input was rejected. One variant per entry of §9.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// §3: fewer than the 2 header bytes.
    #[error("frame shorter than its 2-byte header")]
    FrameTooShort,
    /// §3: longer than the receiver's configured maximum.
    #[error("frame of {len} bytes exceeds the maximum of {max}")]
    FrameTooLarge {
        /// Frame length received.
        len: usize,
        /// Configured maximum.
        max: usize,
    },
    /// §3: first byte is not `0x50`.
    #[error("bad magic byte {0:#04x}")]
    BadMagic(u8),
    /// §3: version other than 1.
    #[error("unsupported version {0}")]
    UnsupportedVersion(u8),
    /// §3: a header and no message.
    #[error("frame holds no message")]
    EmptyFrame,
    /// §4: one byte left where a 2-byte envelope must start.
    #[error("truncated message header")]
    TruncatedMessageHeader,
    /// §4: `body_len` runs past the end of the frame.
    #[error("message body of {body_len} bytes overruns the {remaining} bytes left in the frame")]
    MessageOverrunsFrame {
        /// Declared body length.
        body_len: u8,
        /// Bytes left in the frame after the envelope.
        remaining: usize,
    },
    /// §5: type code not defined in version 1.
    #[error("unknown message type {0:#04x}")]
    UnknownMessageType(u8),
    /// §5: body length not valid for the type.
    #[error("body length {body_len} is not valid for message type {message_type:#04x}")]
    BadBodyLength {
        /// Type code of the message.
        message_type: u8,
        /// Declared body length.
        body_len: u8,
    },
    /// §2: an MSISDN field holds 0 or more than 15 digits.
    #[error("invalid {field} MSISDN: {reason}")]
    InvalidMsisdn {
        /// Which field.
        field: MsisdnField,
        /// What is wrong with it.
        reason: MsisdnError,
    },
    /// §5.2.1: outcome code not defined.
    #[error("unknown outcome {0:#04x}")]
    UnknownOutcome(u8),
    /// §5.2.2: no reachability bit set, or a reserved bit set.
    #[error("invalid reachability {0:#04x}")]
    InvalidReachability(u8),
    /// §5.2.3: error reason not defined.
    #[error("unknown error reason {0:#04x}")]
    UnknownErrorReason(u8),
    /// §5.3: client operation not defined.
    #[error("unknown client operation {0:#04x}")]
    UnknownOperation(u8),
    /// §5.3, §5.4: expiry 0 on a subscribe, or not 0 elsewhere.
    #[error("invalid expiry of {expiry_s} s")]
    InvalidExpiry {
        /// The expiry received.
        expiry_s: u32,
    },
    /// §5.3, §5.7: credential over 32 bytes.
    #[error("credential of {len} bytes exceeds 32")]
    CredentialTooLong {
        /// Declared credential length.
        len: u8,
    },
    /// §5.7: presence state not defined.
    #[error("unknown presence state {0:#04x}")]
    UnknownPresenceState(u8),
    /// §5.8: buddy-list action not defined.
    #[error("unknown buddy-list action {0:#04x}")]
    UnknownAction(u8),
    /// §5.8: more than 32 buddies in one update.
    #[error("{count} buddies exceed 32 per update")]
    TooManyBuddies {
        /// Declared count.
        count: u8,
    },
    /// §5.8: buddies not strictly ascending.
    #[error("buddies not strictly ascending")]
    BuddiesNotAscending,
    /// §5.9: consent scope not defined.
    #[error("unknown consent scope {0:#04x}")]
    UnknownConsentScope(u8),
    /// §5.9: an unused field is not zero.
    #[error("unused field not zero")]
    NonZeroPadding,
    /// §5.9: consent value not defined.
    #[error("unknown consent {0:#04x}")]
    UnknownConsent(u8),
    /// §5.10: ack status not defined.
    #[error("unknown ack status {0:#04x}")]
    UnknownAckStatus(u8),
    /// §6: stream frame length below 4.
    #[error("stream frame length {len} is below the minimum of 4")]
    StreamFrameTooShort {
        /// Declared length.
        len: u16,
    },
    /// §6: stream frame length above the receiver's maximum.
    #[error("stream frame length {len} exceeds the maximum of {max}")]
    StreamFrameTooLarge {
        /// Declared length.
        len: u16,
        /// Configured maximum.
        max: usize,
    },
    /// §6.1: a link hello whose worker is not below its worker count, or
    /// of a version other than 1.
    #[error("bad link hello")]
    BadLinkHello,
}

impl DecodeError {
    /// How much input this error costs the receiver (§4, §6).
    pub const fn scope(&self) -> ErrorScope {
        use DecodeError::*;
        match self {
            FrameTooShort
            | FrameTooLarge { .. }
            | BadMagic(_)
            | UnsupportedVersion(_)
            | EmptyFrame => ErrorScope::Frame,
            TruncatedMessageHeader | MessageOverrunsFrame { .. } => ErrorScope::RestOfFrame,
            StreamFrameTooShort { .. } | StreamFrameTooLarge { .. } | BadLinkHello => {
                ErrorScope::Connection
            }
            _ => ErrorScope::Message,
        }
    }

    /// A short stable name for counters and logs (`bad_magic`, …).
    pub const fn name(&self) -> &'static str {
        use DecodeError::*;
        match self {
            FrameTooShort => "frame_too_short",
            FrameTooLarge { .. } => "frame_too_large",
            BadMagic(_) => "bad_magic",
            UnsupportedVersion(_) => "unsupported_version",
            EmptyFrame => "empty_frame",
            TruncatedMessageHeader => "truncated_message_header",
            MessageOverrunsFrame { .. } => "message_overruns_frame",
            UnknownMessageType(_) => "unknown_message_type",
            BadBodyLength { .. } => "bad_body_length",
            InvalidMsisdn { .. } => "invalid_msisdn",
            UnknownOutcome(_) => "unknown_outcome",
            InvalidReachability(_) => "invalid_reachability",
            UnknownErrorReason(_) => "unknown_error_reason",
            UnknownOperation(_) => "unknown_operation",
            InvalidExpiry { .. } => "invalid_expiry",
            CredentialTooLong { .. } => "credential_too_long",
            UnknownPresenceState(_) => "unknown_presence_state",
            UnknownAction(_) => "unknown_action",
            TooManyBuddies { .. } => "too_many_buddies",
            BuddiesNotAscending => "buddies_not_ascending",
            UnknownConsentScope(_) => "unknown_consent_scope",
            NonZeroPadding => "non_zero_padding",
            UnknownConsent(_) => "unknown_consent",
            UnknownAckStatus(_) => "unknown_ack_status",
            StreamFrameTooShort { .. } => "stream_frame_too_short",
            StreamFrameTooLarge { .. } => "stream_frame_too_large",
            BadLinkHello => "bad_link_hello",
        }
    }
}

/// Why a message could not be encoded. Message values are valid by
/// construction, so the only failures are about space.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The caller's buffer has fewer bytes left than the message needs.
    #[error("buffer has {available} bytes left, {needed} needed")]
    BufferTooSmall {
        /// Bytes the encoding needs.
        needed: usize,
        /// Bytes the buffer has left.
        available: usize,
    },
    /// The message would make the frame longer than its maximum.
    #[error("frame full: {needed} more bytes would exceed the maximum of {max}")]
    FrameFull {
        /// Bytes the message needs.
        needed: usize,
        /// Frame maximum.
        max: usize,
    },
    /// The message's form needs another frame version than the frame's
    /// (a device request with a credential in a version 2 frame, or with a
    /// MAC in a version 1 frame; §10).
    #[error("message needs frame version {message}, the frame is version {frame}")]
    VersionMismatch {
        /// Version the message needs.
        message: u8,
        /// Version of the frame.
        frame: u8,
    },
    /// No such frame version (§3).
    #[error("frame version {0} does not exist")]
    UnsupportedVersion(u8),
}
