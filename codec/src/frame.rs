//! Frames: many messages in one datagram (`docs/wire-format.md` §3, §4).
//!
//! [`FrameReader`] checks the header and then yields the messages one by one,
//! borrowing the input. A message whose envelope is intact but whose body is bad
//! yields its error and reading goes on with the next message; a broken envelope
//! yields its error and ends the frame (§4). [`FrameWriter`] packs messages into a
//! caller-owned buffer up to the frame's maximum size.

use bytes::BufMut;

use crate::error::{DecodeError, EncodeError};
use crate::message::{Message, ENVELOPE_LEN};
use crate::reader::Reader;

/// First byte of every frame (§3).
pub const FRAME_MAGIC: u8 = 0x50;
/// The version of a frame that holds no device proof, and of every frame a
/// gateway sends (§3, §10).
pub const FRAME_VERSION: u8 = 0x01;
/// The versions this crate reads and writes: version 2 differs from 1 only
/// in how a ClientRequest and a Publish prove the device (§5.3, §5.7, §10).
pub const FRAME_VERSIONS: [u8; 2] = [0x01, 0x02];
/// Bytes of the frame header (§3).
pub const FRAME_HEADER_LEN: usize = 2;
/// Default maximum frame size: a 1500-byte MTU less IPv4 and UDP headers (§3).
pub const FRAME_LEN_DEFAULT_MAX: usize = 1472;
/// No frame is ever larger: the stream framing's `u16` length (§3, §6).
pub const FRAME_LEN_ABSOLUTE_MAX: usize = u16::MAX as usize;

/// Reads the messages of one frame, borrowing it.
///
/// Iteration yields `Ok(message)` or `Err(error)` per message and stops at the
/// end of the frame or after an error of scope
/// [`ErrorScope::RestOfFrame`](crate::ErrorScope::RestOfFrame). It never panics
/// and never allocates.
#[derive(Debug, Clone)]
pub struct FrameReader<'a> {
    rest: Reader<'a>,
    frame_len: usize,
    version: u8,
    broken: bool,
}

impl<'a> FrameReader<'a> {
    /// Checks the header of `frame` (§3) against a maximum frame size.
    #[inline]
    pub fn new(frame: &'a [u8], max_len: usize) -> Result<FrameReader<'a>, DecodeError> {
        let max = max_len.min(FRAME_LEN_ABSOLUTE_MAX);
        if frame.len() > max {
            return Err(DecodeError::FrameTooLarge {
                len: frame.len(),
                max,
            });
        }
        let mut r = Reader::new(frame);
        let [magic, version] = r.array().ok_or(DecodeError::FrameTooShort)?;
        if magic != FRAME_MAGIC {
            return Err(DecodeError::BadMagic(magic));
        }
        if !FRAME_VERSIONS.contains(&version) {
            return Err(DecodeError::UnsupportedVersion(version));
        }
        if r.remaining() == 0 {
            return Err(DecodeError::EmptyFrame);
        }
        Ok(FrameReader {
            rest: r,
            frame_len: frame.len(),
            version,
            broken: false,
        })
    }

    /// The frame's version (one of [`FRAME_VERSIONS`]).
    pub fn version(&self) -> u8 {
        self.version
    }

    /// Bytes of the frame read so far, header included: after `next` returned
    /// a message, the message's end offset.
    pub fn position(&self) -> usize {
        self.frame_len.saturating_sub(self.rest.remaining())
    }

    /// Decodes the whole frame, calling `each` for every message, and fails on
    /// the first error: what "accepted" means in §4.
    pub fn for_each_accepted(
        frame: &'a [u8],
        max_len: usize,
        mut each: impl FnMut(Message<'a>),
    ) -> Result<usize, DecodeError> {
        let mut count = 0usize;
        for message in FrameReader::new(frame, max_len)? {
            each(message?);
            count = count.saturating_add(1);
        }
        Ok(count)
    }
}

impl<'a> Iterator for FrameReader<'a> {
    type Item = Result<Message<'a>, DecodeError>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if self.broken || self.rest.remaining() == 0 {
            return None;
        }
        let Some([message_type, body_len]) = self.rest.array::<ENVELOPE_LEN>() else {
            self.broken = true;
            return Some(Err(DecodeError::TruncatedMessageHeader));
        };
        let remaining = self.rest.remaining();
        let Some(body) = self.rest.bytes(usize::from(body_len)) else {
            self.broken = true;
            return Some(Err(DecodeError::MessageOverrunsFrame {
                body_len,
                remaining,
            }));
        };
        Some(Message::decode_body_version(
            message_type,
            body,
            self.version,
        ))
    }
}

/// Packs messages into one frame in a caller-owned buffer.
///
/// Invariant: the bytes written so far are a frame header followed by whole
/// messages, never more than `max_len` in all.
#[derive(Debug)]
pub struct FrameWriter<'b, B: BufMut> {
    buf: &'b mut B,
    len: usize,
    max_len: usize,
    messages: usize,
    version: u8,
}

impl<'b, B: BufMut> FrameWriter<'b, B> {
    /// Starts a version 1 frame of at most `max_len` bytes (capped at
    /// 65535) by writing its header into `buf`.
    pub fn new(buf: &'b mut B, max_len: usize) -> Result<FrameWriter<'b, B>, EncodeError> {
        FrameWriter::with_version(buf, max_len, FRAME_VERSION)
    }

    /// Starts a frame of `version` (version 2 for devices' requests and
    /// publications that carry a MAC, §10).
    pub fn with_version(
        buf: &'b mut B,
        max_len: usize,
        version: u8,
    ) -> Result<FrameWriter<'b, B>, EncodeError> {
        if !FRAME_VERSIONS.contains(&version) {
            return Err(EncodeError::UnsupportedVersion(version));
        }
        let max_len = max_len.min(FRAME_LEN_ABSOLUTE_MAX);
        if max_len < FRAME_HEADER_LEN {
            return Err(EncodeError::FrameFull {
                needed: FRAME_HEADER_LEN,
                max: max_len,
            });
        }
        let available = buf.remaining_mut();
        if available < FRAME_HEADER_LEN {
            return Err(EncodeError::BufferTooSmall {
                needed: FRAME_HEADER_LEN,
                available,
            });
        }
        buf.put_slice(&[FRAME_MAGIC, version]);
        Ok(FrameWriter {
            buf,
            len: FRAME_HEADER_LEN,
            max_len,
            messages: 0,
            version,
        })
    }

    /// Appends a message, or fails without writing anything when it would not
    /// fit in the frame or the buffer.
    #[inline]
    pub fn push(&mut self, message: &Message<'_>) -> Result<(), EncodeError> {
        if let Some(needs) = message.version().filter(|&v| v != self.version) {
            return Err(EncodeError::VersionMismatch {
                message: needs,
                frame: self.version,
            });
        }
        let needed = message.encoded_len();
        let after = self.len.saturating_add(needed);
        if after > self.max_len {
            return Err(EncodeError::FrameFull {
                needed,
                max: self.max_len,
            });
        }
        message.encode(self.buf)?;
        self.len = after;
        self.messages = self.messages.saturating_add(1);
        Ok(())
    }

    /// Whether a message of `encoded_len` bytes still fits.
    pub fn fits(&self, encoded_len: usize) -> bool {
        self.len.saturating_add(encoded_len) <= self.max_len
    }

    /// Frame bytes written so far, header included.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Messages written so far.
    pub fn message_count(&self) -> usize {
        self.messages
    }

    /// Whether no message has been written (such a frame is not valid to send).
    pub fn is_empty(&self) -> bool {
        self.messages == 0
    }
}

/// A frame being filled in a buffer it owns, kept open across calls: a
/// sender keeps one per destination and closes it when the next message
/// would not fit, or at the end of its turn. The same rules as
/// [`FrameWriter`]: the bytes are always a header followed by whole
/// messages, never more than `max_len`. The buffer is reserved to `max_len`
/// when the frame opens, so pushing never reallocates.
#[derive(Debug)]
pub struct OpenFrame {
    bytes: Vec<u8>,
    max_len: usize,
    messages: usize,
    /// The version a message already in the frame needs, if any.
    pinned: Option<u8>,
}

impl OpenFrame {
    /// Opens a frame of at most `max_len` bytes (between the header and
    /// 65535) in `bytes` (cleared; a buffer given back for reuse).
    pub fn new(mut bytes: Vec<u8>, max_len: usize) -> OpenFrame {
        let max_len = max_len.clamp(FRAME_HEADER_LEN, FRAME_LEN_ABSOLUTE_MAX);
        bytes.clear();
        bytes.reserve(max_len);
        bytes.extend_from_slice(&[FRAME_MAGIC, FRAME_VERSION]);
        OpenFrame {
            bytes,
            max_len,
            messages: 0,
            pinned: None,
        }
    }

    /// Appends a message, or fails without writing anything when it would
    /// not fit or needs another version than a message already in the
    /// frame. The first message that needs a version sets the header's.
    #[inline]
    pub fn push(&mut self, message: &Message<'_>) -> Result<(), EncodeError> {
        let needs = message.version();
        if let (Some(message), Some(frame)) = (needs, self.pinned) {
            if message != frame {
                return Err(EncodeError::VersionMismatch { message, frame });
            }
        }
        let needed = message.encoded_len();
        if !self.fits(needed) {
            return Err(EncodeError::FrameFull {
                needed,
                max: self.max_len,
            });
        }
        message.encode(&mut self.bytes)?;
        if let (Some(version), None) = (needs, self.pinned) {
            self.pinned = Some(version);
            if let Some(header) = self.bytes.get_mut(1) {
                *header = version;
            }
        }
        self.messages = self.messages.saturating_add(1);
        Ok(())
    }

    /// Whether a message of `encoded_len` bytes still fits.
    #[inline]
    pub fn fits(&self, encoded_len: usize) -> bool {
        self.bytes.len().saturating_add(encoded_len) <= self.max_len
    }

    /// Messages written so far.
    pub fn message_count(&self) -> usize {
        self.messages
    }

    /// Whether no message has been written (such a frame is not sent).
    pub fn is_empty(&self) -> bool {
        self.messages == 0
    }

    /// The frame's bytes, to send.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}

/// Encodes `messages` as one frame into `buf`, of the version the first
/// message that needs one names (else version 1); fails if they do not fit
/// in `max_len` or `buf`, if there are none, or if they need two versions.
pub fn encode_frame<B: BufMut>(
    messages: &[Message<'_>],
    max_len: usize,
    buf: &mut B,
) -> Result<usize, EncodeError> {
    let needed = messages.iter().fold(FRAME_HEADER_LEN, |sum, m| {
        sum.saturating_add(m.encoded_len())
    });
    if messages.is_empty() || needed > max_len.min(FRAME_LEN_ABSOLUTE_MAX) {
        return Err(EncodeError::FrameFull {
            needed,
            max: max_len,
        });
    }
    let available = buf.remaining_mut();
    if available < needed {
        return Err(EncodeError::BufferTooSmall { needed, available });
    }
    let version = messages
        .iter()
        .find_map(Message::version)
        .unwrap_or(FRAME_VERSION);
    let mut writer = FrameWriter::with_version(buf, max_len, version)?;
    for message in messages {
        writer.push(message)?;
    }
    Ok(writer.len())
}
