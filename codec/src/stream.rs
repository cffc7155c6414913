//! Length-prefixed framing for stream transports (`docs/wire-format.md` §6).
//!
//! A border gateway reads only this layer: [`StreamReassembler`] turns the bytes
//! of a stream, arriving in arbitrary pieces, into whole frames, without looking
//! inside them. Its buffer is allocated once, at creation, from the maximum frame
//! size; it never grows. An error poisons it: the stream cannot be
//! resynchronised, so the connection must be closed (§6).

use bytes::BufMut;

use crate::error::{DecodeError, EncodeError};
use crate::frame::FRAME_LEN_ABSOLUTE_MAX;

/// Bytes of the length prefix (§6).
pub const STREAM_PREFIX_LEN: usize = 2;
/// Smallest frame a stream may carry: a frame header and one envelope (§6).
pub const STREAM_FRAME_LEN_MIN: usize = 4;
/// A keepalive: a length prefix of zero with nothing after it (§6).
pub const STREAM_KEEPALIVE: [u8; STREAM_PREFIX_LEN] = [0, 0];

/// First byte of a link hello (§6.1), `B`: a frame whose first byte is this
/// is the border link's own record, never a presence frame (those start
/// with `0x50`).
pub const LINK_HELLO_MAGIC: u8 = 0x42;
/// Version of the link hello.
pub const LINK_HELLO_VERSION: u8 = 0x01;
/// Bytes of a link hello (after its length prefix).
pub const LINK_HELLO_LEN: usize = 6;

/// The record each side of a border link sends first once the handshake is
/// done (§6.1): which worker of its gateway the link ends at, of how many.
/// With it a peer sends each message over the link that ends at the worker
/// owning its subject (§12), and answers go back over the link that ends at
/// the worker waiting for them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkHello {
    /// The worker this end of the link belongs to (below `workers`).
    pub worker: u16,
    /// Workers of this end's gateway (at least 1).
    pub workers: u16,
}

impl LinkHello {
    /// The hello's bytes, to send as one stream frame (§6).
    pub const fn encode(&self) -> [u8; LINK_HELLO_LEN] {
        let [w0, w1] = self.worker.to_be_bytes();
        let [n0, n1] = self.workers.to_be_bytes();
        [LINK_HELLO_MAGIC, LINK_HELLO_VERSION, w0, w1, n0, n1]
    }

    /// `None` when `frame` is not a link hello (a presence frame), else the
    /// hello or why it is refused: a bad hello closes the link.
    pub fn decode(frame: &[u8]) -> Option<Result<LinkHello, DecodeError>> {
        if frame.first() != Some(&LINK_HELLO_MAGIC) {
            return None;
        }
        let &[_, version, w0, w1, n0, n1] = frame else {
            return Some(Err(DecodeError::BadLinkHello));
        };
        let hello = LinkHello {
            worker: u16::from_be_bytes([w0, w1]),
            workers: u16::from_be_bytes([n0, n1]),
        };
        if version != LINK_HELLO_VERSION || hello.workers == 0 || hello.worker >= hello.workers {
            return Some(Err(DecodeError::BadLinkHello));
        }
        Some(Ok(hello))
    }
}

/// Writes a keepalive (§6) into `buf`. The receiver sees it as an empty frame.
pub fn encode_stream_keepalive<B: BufMut>(buf: &mut B) -> Result<(), EncodeError> {
    let available = buf.remaining_mut();
    if available < STREAM_PREFIX_LEN {
        return Err(EncodeError::BufferTooSmall {
            needed: STREAM_PREFIX_LEN,
            available,
        });
    }
    buf.put_slice(&STREAM_KEEPALIVE);
    Ok(())
}

/// Writes `frame` with its length prefix into `buf` (§6).
pub fn encode_stream_frame<B: BufMut>(frame: &[u8], buf: &mut B) -> Result<(), EncodeError> {
    let len = u16::try_from(frame.len()).map_err(|_| EncodeError::FrameFull {
        needed: frame.len(),
        max: FRAME_LEN_ABSOLUTE_MAX,
    })?;
    if frame.len() < STREAM_FRAME_LEN_MIN {
        return Err(EncodeError::FrameFull {
            needed: STREAM_FRAME_LEN_MIN,
            max: frame.len(),
        });
    }
    let needed = frame.len().saturating_add(STREAM_PREFIX_LEN);
    let available = buf.remaining_mut();
    if available < needed {
        return Err(EncodeError::BufferTooSmall { needed, available });
    }
    buf.put_u16(len);
    buf.put_slice(frame);
    Ok(())
}

/// Splits the first frame off `input` (§6).
///
/// `Ok(Some((frame, consumed)))` when a whole frame is there (an empty `frame`
/// is a keepalive), `Ok(None)` when more bytes are needed, and an error when the
/// length prefix breaks §6.
#[inline]
pub fn split_stream_frame(
    input: &[u8],
    max_frame_len: usize,
) -> Result<Option<(&[u8], usize)>, DecodeError> {
    let Some((prefix, rest)) = input.split_first_chunk::<STREAM_PREFIX_LEN>() else {
        return Ok(None);
    };
    let len = u16::from_be_bytes(*prefix);
    if len != 0 && usize::from(len) < STREAM_FRAME_LEN_MIN {
        return Err(DecodeError::StreamFrameTooShort { len });
    }
    let max = max_frame_len.min(FRAME_LEN_ABSOLUTE_MAX);
    if usize::from(len) > max {
        return Err(DecodeError::StreamFrameTooLarge { len, max });
    }
    Ok(rest
        .get(..usize::from(len))
        .map(|frame| (frame, usize::from(len).saturating_add(STREAM_PREFIX_LEN))))
}

/// Reassembles frames from a stream read in arbitrary pieces.
///
/// Invariants: `start <= end <= buf.len()`; `buf[start..end]` holds the bytes
/// received and not yet returned; `buf.len()` is the prefix plus the maximum
/// frame, so one whole frame always fits once earlier ones are consumed.
#[derive(Debug)]
pub struct StreamReassembler {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    max_frame_len: usize,
    error: Option<DecodeError>,
}

impl StreamReassembler {
    /// A reassembler for frames of at most `max_frame_len` bytes (capped at
    /// 65535). Allocates its buffer once, here.
    pub fn new(max_frame_len: usize) -> StreamReassembler {
        let max_frame_len = max_frame_len.clamp(STREAM_FRAME_LEN_MIN, FRAME_LEN_ABSOLUTE_MAX);
        StreamReassembler {
            buf: vec![0u8; max_frame_len.saturating_add(STREAM_PREFIX_LEN)].into_boxed_slice(),
            start: 0,
            end: 0,
            max_frame_len,
            error: None,
        }
    }

    /// Free space to read into (for example straight from a socket), after
    /// moving pending bytes to the front. Call [`commit`](Self::commit) with the
    /// number of bytes written. Empty when the buffer is full: take frames first.
    pub fn spare(&mut self) -> &mut [u8] {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end = self.end.saturating_sub(self.start);
            self.start = 0;
        }
        self.buf.get_mut(self.end..).unwrap_or_default()
    }

    /// Marks `written` bytes of [`spare`](Self::spare) as received (capped at
    /// the free space).
    pub fn commit(&mut self, written: usize) {
        self.end = self.end.saturating_add(written).min(self.buf.len());
    }

    /// Copies as much of `data` as fits and returns how many bytes it took.
    pub fn feed(&mut self, data: &[u8]) -> usize {
        let spare = self.spare();
        let taken = spare.len().min(data.len());
        if let (Some(dst), Some(src)) = (spare.get_mut(..taken), data.get(..taken)) {
            dst.copy_from_slice(src);
        }
        self.commit(taken);
        taken
    }

    /// The next whole frame, if one has arrived; an empty frame is a
    /// keepalive. After an error every call returns that error.
    pub fn next_frame(&mut self) -> Result<Option<&[u8]>, DecodeError> {
        if let Some(error) = self.error {
            return Err(error);
        }
        let pending = self.buf.get(self.start..self.end).unwrap_or_default();
        match split_stream_frame(pending, self.max_frame_len) {
            Ok(Some((_, consumed))) => {
                let frame_start = self.start.saturating_add(STREAM_PREFIX_LEN);
                self.start = self.start.saturating_add(consumed);
                Ok(self.buf.get(frame_start..self.start))
            }
            Ok(None) => Ok(None),
            Err(error) => {
                self.error = Some(error);
                Err(error)
            }
        }
    }

    /// Bytes received and not yet returned as frames.
    pub fn pending_len(&self) -> usize {
        self.end.saturating_sub(self.start)
    }

    /// The maximum frame size this reassembler accepts.
    pub fn max_frame_len(&self) -> usize {
        self.max_frame_len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_hello_round_trips_and_is_told_from_presence_frames() {
        let hello = LinkHello {
            worker: 3,
            workers: 8,
        };
        assert_eq!(LinkHello::decode(&hello.encode()), Some(Ok(hello)));
        assert_eq!(LinkHello::decode(&[0x50, 0x01, 0x02, 0x00]), None);
    }

    #[test]
    fn a_link_hello_out_of_its_own_bounds_is_refused() {
        for bad in [
            &[LINK_HELLO_MAGIC, 1, 0, 8, 0, 8][..],
            &[LINK_HELLO_MAGIC, 1, 0, 0, 0, 0],
            &[LINK_HELLO_MAGIC, 2, 0, 0, 0, 1],
            &[LINK_HELLO_MAGIC, 1, 0, 0, 0],
        ] {
            assert_eq!(LinkHello::decode(bad), Some(Err(DecodeError::BadLinkHello)));
        }
    }
}
