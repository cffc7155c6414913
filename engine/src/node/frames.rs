//! Messages packed into frames per destination, the codec's [`OpenFrame`]
//! doing the packing.
//!
//! A node appends each outgoing message to the open frame of its
//! destination (a device's address, or a peer network's worker); a frame
//! that would overflow is closed first. Closed frames wait in a ready
//! queue; when the runtime has taken them all, the open frames close
//! ([`Framer::pop_ready`]), so nothing waits past the runtime's next poll
//! and a turn's messages to one destination share as few frames as fit.
//! The runtime gives each buffer back once sent: buffers are reused, so
//! steady traffic allocates nothing.
//!
//! Invariants: a destination has at most one open frame; every closed frame
//! holds at least one message; the pool holds at most [`POOL_MAX`] buffers;
//! frames close in an order that depends only on the messages pushed (no
//! hash-map iteration), so a seeded simulation replays exactly.

use std::collections::VecDeque;
use std::hash::Hash;

use ahash::AHashMap;
use presence_codec::{Message, OpenFrame};

/// Buffers kept for reuse.
const POOL_MAX: usize = 1024;

/// Frames being filled and frames ready to send, for destinations `K`.
#[derive(Debug)]
pub(crate) struct Framer<K> {
    /// Open frames, in the order they opened.
    open: Vec<(K, OpenFrame)>,
    /// Where each destination's open frame is in `open`.
    index: AHashMap<K, usize>,
    ready: VecDeque<(K, Vec<u8>)>,
    pool: Vec<Vec<u8>>,
    max_len: usize,
}

impl<K: Copy + Eq + Hash> Framer<K> {
    /// Frames of at most `max_len` bytes.
    pub(crate) fn new(max_len: usize) -> Framer<K> {
        Framer {
            open: Vec::new(),
            index: AHashMap::new(),
            ready: VecDeque::new(),
            pool: Vec::new(),
            max_len,
        }
    }

    /// Appends `message` to `to`'s open frame, closing it first if the
    /// message would not fit. Fails only for a message larger than an
    /// empty frame (none of version 1's is).
    pub(crate) fn push(&mut self, to: K, message: &Message<'_>) -> bool {
        let len = message.encoded_len();
        if let Some(&at) = self.index.get(&to) {
            if let Some((_, frame)) = self.open.get_mut(at) {
                if frame.fits(len) {
                    return frame.push(message).is_ok();
                }
            }
            self.close(at);
        }
        let mut frame = OpenFrame::new(self.pool.pop().unwrap_or_default(), self.max_len);
        if frame.push(message).is_err() {
            self.recycle(frame.into_bytes());
            return false;
        }
        self.index.insert(to, self.open.len());
        self.open.push((to, frame));
        true
    }

    /// Closes the open frame at `at` (the last open frame takes its place).
    fn close(&mut self, at: usize) {
        if at >= self.open.len() {
            return;
        }
        let (to, frame) = self.open.swap_remove(at);
        self.index.remove(&to);
        if let Some((moved, _)) = self.open.get(at) {
            self.index.insert(*moved, at);
        }
        self.ready.push_back((to, frame.into_bytes()));
    }

    /// Closes every open frame: they join the ready queue, in the order
    /// they opened.
    fn close_all(&mut self) {
        self.index.clear();
        for (to, frame) in self.open.drain(..) {
            self.ready.push_back((to, frame.into_bytes()));
        }
    }

    /// The oldest closed frame; when none is left, the open frames close
    /// first (in the order they opened).
    pub(crate) fn pop_ready(&mut self) -> Option<(K, Vec<u8>)> {
        if self.ready.is_empty() {
            self.close_all();
        }
        self.ready.pop_front()
    }

    /// Whether a frame waits, closed or open.
    pub(crate) fn has_any(&self) -> bool {
        !self.ready.is_empty() || !self.open.is_empty()
    }

    /// Takes a sent frame's buffer back for reuse.
    pub(crate) fn recycle(&mut self, buf: Vec<u8>) {
        if self.pool.len() < POOL_MAX {
            self.pool.push(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use presence_codec::{Ack, AckStatus, FrameReader};

    fn ack(txid: u64) -> Message<'static> {
        Message::Ack(Ack {
            txid,
            status: AckStatus::Ok,
        })
    }

    #[test]
    fn messages_to_one_destination_share_frames_that_never_overflow() {
        let mut framer: Framer<u8> = Framer::new(64);
        for txid in 0..20 {
            assert!(framer.push(1, &ack(txid)));
        }
        framer.push(2, &ack(99));
        let mut seen = Vec::new();
        while let Some((to, frame)) = framer.pop_ready() {
            assert!(frame.len() <= 64);
            for message in FrameReader::new(&frame, 64).unwrap() {
                if let Ok(Message::Ack(a)) = message {
                    seen.push((to, a.txid));
                }
            }
            framer.recycle(frame);
        }
        let to_one: Vec<u64> = seen.iter().filter(|s| s.0 == 1).map(|s| s.1).collect();
        assert_eq!(to_one, (0..20).collect::<Vec<_>>(), "in order, none lost");
        assert!(seen.contains(&(2, 99)));
    }

    #[test]
    fn open_frames_close_only_once_the_closed_ones_are_taken() {
        let mut framer: Framer<u8> = Framer::new(1024);
        assert!(!framer.has_any());
        // Two inputs' messages to one destination, no poll in between.
        framer.push(1, &ack(1));
        framer.push(2, &ack(2));
        framer.push(1, &ack(3));
        assert!(framer.has_any(), "open frames count as waiting");
        let (to, first) = framer.pop_ready().unwrap();
        assert_eq!(to, 1, "closed in the order they opened");
        let txids: Vec<u64> = FrameReader::new(&first, 1024)
            .unwrap()
            .filter_map(|m| match m {
                Ok(Message::Ack(a)) => Some(a.txid),
                _ => None,
            })
            .collect();
        assert_eq!(txids, [1, 3], "one frame for both inputs");
        // A message pushed now opens a new frame behind the closed one.
        framer.push(1, &ack(4));
        assert_eq!(framer.pop_ready().map(|r| r.0), Some(2));
        assert_eq!(framer.pop_ready().map(|r| r.0), Some(1));
        assert!(framer.pop_ready().is_none());
        assert!(!framer.has_any());
    }
}
