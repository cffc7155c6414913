//! The driver's open frames: one per destination and owning worker, so each
//! datagram carries the requests of one owner only (the appliance's
//! steering then hands the whole datagram to that worker), each remembering
//! when it took its first request so a hold can bound its wait.

use bytes::BufMut;
use presence_codec::{FrameWriter, Message, FRAME_HEADER_LEN, FRAME_LEN_DEFAULT_MAX};

use super::plan::Destination;

/// Largest datagram the driver builds.
pub(super) const FRAME_MAX: usize = FRAME_LEN_DEFAULT_MAX;

/// One open frame: its bytes (empty: not open) and when it opened.
#[derive(Debug)]
struct OpenFrame {
    bytes: Vec<u8>,
    opened_ns: u64,
    /// Requests in it.
    requests: usize,
}

/// What adding a request to its owner's frame did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Added {
    /// The request is in the frame.
    Taken,
    /// The frame has no room: close it, then add again.
    Full,
    /// No such frame or the request does not encode (not sent).
    Refused,
}

/// Every open frame: A's owners first, then B's.
#[derive(Debug)]
pub(super) struct OpenFrames {
    frames: Vec<OpenFrame>,
    a_workers: usize,
    /// How long a frame that is not full may wait for more requests.
    hold_ns: u64,
    /// Most requests per frame (0: as many as fit).
    per_frame: usize,
}

impl OpenFrames {
    /// One frame per worker of A and of B (at least one each).
    pub(super) fn new(a_workers: u16, b_workers: u16) -> OpenFrames {
        let a_workers = usize::from(a_workers.max(1));
        let count = a_workers + usize::from(b_workers.max(1));
        OpenFrames {
            frames: (0..count)
                .map(|_| OpenFrame {
                    bytes: Vec::with_capacity(FRAME_MAX),
                    opened_ns: 0,
                    requests: 0,
                })
                .collect(),
            a_workers,
            hold_ns: 0,
            per_frame: 0,
        }
    }

    /// Lets a frame that is not full wait up to `hold_ns` (0: frames close
    /// at the end of every burst).
    pub(super) fn set_hold(&mut self, hold_ns: u64) {
        self.hold_ns = hold_ns;
    }

    /// Closes a frame once it holds `requests` (0: only when full).
    pub(super) fn set_per_frame(&mut self, requests: usize) {
        self.per_frame = requests;
    }

    /// How many frames there are (open or not).
    pub(super) fn len(&self) -> usize {
        self.frames.len()
    }

    /// The destination and owner of frame `index` (A's come first).
    pub(super) fn slot_at(&self, index: usize) -> (Destination, u16) {
        let (destination, owner) = if index < self.a_workers {
            (Destination::A, index)
        } else {
            (Destination::B, index - self.a_workers)
        };
        (destination, u16::try_from(owner).unwrap_or(u16::MAX))
    }

    fn slot(&self, destination: Destination, owner: u16) -> usize {
        match destination {
            Destination::A => usize::from(owner),
            Destination::B => self.a_workers + usize::from(owner),
        }
    }

    /// The frame of `destination`'s worker `owner` (empty when not open).
    pub(super) fn bytes_mut(
        &mut self,
        destination: Destination,
        owner: u16,
    ) -> Option<&mut Vec<u8>> {
        let slot = self.slot(destination, owner);
        self.frames.get_mut(slot).map(|f| &mut f.bytes)
    }

    /// Encodes `message` into its owner's frame, opening it at `now_ns`.
    pub(super) fn add(
        &mut self,
        destination: Destination,
        owner: u16,
        message: &Message<'_>,
        now_ns: u64,
    ) -> Added {
        let slot = self.slot(destination, owner);
        let Some(frame) = self.frames.get_mut(slot) else {
            return Added::Refused;
        };
        let len = message.encoded_len();
        // A frame holds device messages of one wire version (§10).
        let version = message.version();
        let other_version = version.is_some_and(|v| frame.bytes.get(1).is_some_and(|&h| h != v));
        let at_most = self.per_frame > 0 && frame.requests >= self.per_frame;
        if !frame.bytes.is_empty()
            && (frame.bytes.len() + len > FRAME_MAX || other_version || at_most)
        {
            return Added::Full;
        }
        if frame.bytes.is_empty() {
            frame.requests = 0;
            let version = version.unwrap_or(presence_codec::FRAME_VERSION);
            if FrameWriter::with_version(&mut frame.bytes, FRAME_MAX, version).is_err() {
                return Added::Refused;
            }
            frame.opened_ns = now_ns;
        }
        if frame.bytes.remaining_mut() < len || message.encode(&mut frame.bytes).is_err() {
            if frame.bytes.len() == FRAME_HEADER_LEN {
                frame.bytes.clear();
            }
            return Added::Refused;
        }
        frame.requests += 1;
        Added::Taken
    }

    /// Whether the frame of `destination`'s worker `owner` should go now:
    /// it is open and its hold is over.
    pub(super) fn is_due(&self, destination: Destination, owner: u16, now_ns: u64) -> bool {
        self.frames
            .get(self.slot(destination, owner))
            .is_some_and(|f| {
                !f.bytes.is_empty() && f.opened_ns.saturating_add(self.hold_ns) <= now_ns
            })
    }

    /// When the next open frame's hold ends (`u64::MAX`: none is open).
    pub(super) fn next_due_ns(&self) -> u64 {
        self.frames
            .iter()
            .filter(|f| !f.bytes.is_empty())
            .map(|f| f.opened_ns.saturating_add(self.hold_ns))
            .min()
            .unwrap_or(u64::MAX)
    }

    /// How many frames are open.
    pub(super) fn open(&self) -> usize {
        self.frames.iter().filter(|f| !f.bytes.is_empty()).count()
    }

    /// Drops every open frame (a new step starts).
    pub(super) fn clear(&mut self) {
        for frame in &mut self.frames {
            frame.bytes.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use presence_codec::samples;

    #[test]
    fn a_frame_opens_with_its_first_request_and_is_due_after_the_hold() {
        let mut frames = OpenFrames::new(2, 1);
        frames.set_hold(1_000);
        let query = Message::Query(samples::QUERY);
        assert_eq!(frames.add(Destination::A, 1, &query, 500), Added::Taken);
        assert_eq!(frames.add(Destination::A, 1, &query, 900), Added::Taken);
        assert_eq!(frames.open(), 1);
        assert!(!frames.is_due(Destination::A, 1, 1_499));
        assert!(frames.is_due(Destination::A, 1, 1_500), "held from 500 ns");
        assert!(!frames.is_due(Destination::A, 0, 1_500), "never opened");
        assert_eq!(frames.next_due_ns(), 1_500);
        frames.clear();
        assert_eq!(frames.next_due_ns(), u64::MAX);
    }

    #[test]
    fn a_full_frame_asks_to_be_closed() {
        let mut frames = OpenFrames::new(1, 1);
        let query = Message::Query(samples::QUERY);
        let mut added = 0;
        while frames.add(Destination::B, 0, &query, 0) == Added::Taken {
            added += 1;
        }
        assert_eq!(frames.add(Destination::B, 0, &query, 0), Added::Full);
        let len = frames.bytes_mut(Destination::B, 0).map_or(0, |f| f.len());
        assert_eq!(len, FRAME_HEADER_LEN + added * query.encoded_len());
        assert!(len <= FRAME_MAX);
        assert_eq!(frames.add(Destination::B, 7, &query, 0), Added::Refused);
    }
}
