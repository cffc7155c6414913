//! The duplicate-suppression window of a presence server (exactly-once
//! charging, step 11).

use ahash::AHashMap as HashMap;
use presence_codec::{Msisdn, Outcome};

use crate::roles::Millis;
use crate::table::NetworkId;

/// The duplicate-suppression window: the decisions of the last window, per
/// transaction stream.
///
/// A WA numbers its transactions consecutively (`instance << 48 | counter`,
/// the instance being its `reply_node`), so each (origin network, WA
/// instance) stream gets a ring indexed directly by the counter, like an
/// anti-replay window: recording a decision is a write to the next slots in
/// order, finding one is a single indexed read, no hashing and no random
/// insert into a large table. Rules:
/// - a slot still holding a live decision of an *older* transaction means the
///   ring is full for that stream: the server answers `Overloaded`;
/// - a transaction older than the slot's occupant is older than the window:
///   dropped, never decided a second time;
/// - a transaction a ring or more away from the newest one seen on its
///   stream (the high-water mark), ahead or behind, is refused while the
///   stream is live (`Overloaded` until its last decision leaves the
///   window, counted, an alarm): one far-ahead id cannot move the mark and
///   make the genuine stream look stale. Once the stream has been quiet
///   for a window (its WA restarted: the counter jumped ahead, or a clock
///   stepped back), it starts again from the new id;
/// - decisions that cannot take their slot (moved in with a subscriber, or
///   rebuilt after a restart, colliding with a live one) go to a small
///   overflow map, checked first while it is not empty.
///
/// Bounded: at most [`WINDOW_STREAMS_PER_ORIGIN_MAX`] streams per origin
/// network and [`WINDOW_STREAMS_MAX`] in all, each of `slots` entries,
/// allocated on first use; a stream beyond the quota is answered
/// `Overloaded`, so one network cannot take the window from the others.
#[derive(Debug)]
pub(super) struct DecisionWindow {
    slots: usize,
    streams: HashMap<(NetworkId, u16), usize>,
    streams_per_origin: HashMap<NetworkId, usize>,
    rings: Vec<Ring>,
    overflow: HashMap<(NetworkId, u64), DecisionWindowEntry>,
}

/// A stream's ring, in chunks of [`RING_CHUNK`] slots allocated when a
/// transaction first lands in them: a new stream costs a few hundred bytes,
/// not the whole ring at once (2^22 slots are about 200 MB, which would
/// stall the first query of a new WA instance for a tenth of a second);
/// after the first lap the ring is complete and nothing more is allocated.
#[derive(Debug)]
struct Ring {
    chunks: Box<[Option<RingChunk>]>,
    /// Slots per chunk: `1 << chunk_shift` (a power of two, so a slot's
    /// chunk and place in it are a shift and a mask, not two divisions).
    chunk_shift: u32,
    /// The newest transaction recorded on the stream, once there is one.
    high_water: Option<u64>,
    /// When the last decision recorded on the stream leaves the window:
    /// until then the stream is live and its high-water mark stands.
    live_until: Millis,
}

/// A chunk of a ring's slots.
type RingChunk = Box<[Option<DecisionWindowEntry>]>;

/// Slots per ring chunk.
const RING_CHUNK: usize = 4096;

impl Ring {
    /// A ring of `slots` (a power of two) slots.
    fn new(slots: usize) -> Ring {
        let chunk_len = RING_CHUNK.min(slots).max(1);
        assert!(
            chunk_len.is_power_of_two(),
            "ring chunks are a power of two long"
        );
        Ring {
            chunks: (0..slots.div_ceil(chunk_len)).map(|_| None).collect(),
            chunk_shift: chunk_len.trailing_zeros(),
            high_water: None,
            live_until: 0,
        }
    }

    /// Slot `slot`'s chunk, and its place in the chunk.
    fn place(&self, slot: usize) -> (usize, usize) {
        (
            slot >> self.chunk_shift,
            slot & ((1 << self.chunk_shift) - 1),
        )
    }

    fn get(&self, slot: usize) -> Option<DecisionWindowEntry> {
        let (chunk, at) = self.place(slot);
        self.chunks.get(chunk)?.as_ref()?.get(at).copied().flatten()
    }

    fn set(&mut self, slot: usize, entry: DecisionWindowEntry) {
        let (chunk, at) = self.place(slot);
        let len = 1 << self.chunk_shift;
        if let Some(chunk) = self.chunks.get_mut(chunk) {
            let chunk = chunk.get_or_insert_with(|| vec![None; len].into_boxed_slice());
            if let Some(cell) = chunk.get_mut(at) {
                *cell = Some(entry);
            }
        }
    }

    fn slots_mut(&mut self) -> impl Iterator<Item = &mut Option<DecisionWindowEntry>> {
        self.chunks.iter_mut().flatten().flat_map(|c| c.iter_mut())
    }

    fn clear(&mut self) {
        self.chunks.iter_mut().for_each(|c| *c = None);
        self.high_water = None;
        self.live_until = 0;
    }
}

/// Most transaction streams (origin network × WA instance) one presence
/// server tracks.
pub const WINDOW_STREAMS_MAX: usize = 256;
/// Most transaction streams (WA instances) of one origin network.
pub const WINDOW_STREAMS_PER_ORIGIN_MAX: usize = 16;

/// How far transaction `txid` is behind `newer` on their stream: the
/// 48-bit counters compared in serial-number arithmetic (RFC 1982), so a
/// counter that wrapped is still ahead. 0 when `txid` is not behind.
pub(super) fn counter_behind(newer: u64, txid: u64) -> u64 {
    const COUNTER_MASK: u64 = (1 << 48) - 1;
    let behind = newer.wrapping_sub(txid) & COUNTER_MASK;
    if behind < 1 << 47 {
        behind
    } else {
        0
    }
}

pub(super) enum WindowLookup {
    Decided(DecisionWindowEntry),
    New,
    Stale,
    Full,
    /// A ring or more away from the live stream's high-water mark, ahead
    /// or behind: refused, not recorded, until the stream has been quiet
    /// for a window (`retry_after_ms`).
    OutOfWindow {
        retry_after_ms: u64,
    },
}

impl DecisionWindow {
    pub(super) fn new(slots: usize) -> DecisionWindow {
        DecisionWindow {
            slots: slots.max(1).next_power_of_two(),
            streams: HashMap::default(),
            streams_per_origin: HashMap::default(),
            rings: Vec::new(),
            overflow: HashMap::default(),
        }
    }

    fn slot(&self, txid: u64) -> usize {
        (txid as usize) & (self.slots - 1)
    }

    fn ring(&mut self, origin: NetworkId, txid: u64) -> Option<&mut Ring> {
        let stream = (origin, (txid >> 48) as u16);
        let index = match self.streams.get(&stream) {
            Some(&i) => i,
            None => {
                let of_origin = self.streams_per_origin.entry(origin).or_default();
                if self.rings.len() >= WINDOW_STREAMS_MAX
                    || *of_origin >= WINDOW_STREAMS_PER_ORIGIN_MAX
                {
                    return None;
                }
                *of_origin += 1;
                self.rings.push(Ring::new(self.slots));
                self.streams.insert(stream, self.rings.len() - 1);
                self.rings.len() - 1
            }
        };
        Some(&mut self.rings[index])
    }

    pub(super) fn lookup(&mut self, now: Millis, origin: NetworkId, txid: u64) -> WindowLookup {
        if !self.overflow.is_empty() {
            if let Some(e) = self.overflow.get(&(origin, txid)) {
                return WindowLookup::Decided(*e);
            }
        }
        let slot = self.slot(txid);
        let span = self.slots as u64;
        let Some(ring) = self.ring(origin, txid) else {
            return WindowLookup::Full;
        };
        if let Some(newest) = ring.high_water {
            let away = counter_behind(newest, txid).max(counter_behind(txid, newest));
            if away >= span {
                if ring.live_until > now {
                    // One transaction id far from a live stream would
                    // otherwise move its mark and make every genuine one
                    // look stale: not taken (docs/reliability.md, §4d).
                    return WindowLookup::OutOfWindow {
                        retry_after_ms: ring.live_until - now,
                    };
                }
                // The stream has been quiet for a window: its WA restarted
                // (its counter jumped ahead, or its clock stepped back).
                // Nothing on it is live, so it starts again from here.
                ring.high_water = None;
            }
        }
        match ring.get(slot) {
            Some(e) if e.txid == txid && e.origin == origin => WindowLookup::Decided(e),
            Some(e) if counter_behind(e.txid, txid) > 0 => WindowLookup::Stale,
            Some(e) if e.expires > now => WindowLookup::Full,
            _ => WindowLookup::New,
        }
    }

    /// The decision on `(origin, txid)` still in the window, if any (reads
    /// only: opens no stream).
    pub(super) fn decided(&self, origin: NetworkId, txid: u64) -> Option<DecisionWindowEntry> {
        if let Some(e) = self.overflow.get(&(origin, txid)) {
            return Some(*e);
        }
        let ring = self
            .rings
            .get(*self.streams.get(&(origin, (txid >> 48) as u16))?)?;
        ring.get(self.slot(txid))
            .filter(|e| e.txid == txid && e.origin == origin)
    }

    /// Records a decision; if its slot holds a live decision of another
    /// transaction, the new one goes to the overflow map instead.
    pub(super) fn insert(&mut self, now: Millis, entry: DecisionWindowEntry) {
        let slot = self.slot(entry.txid);
        let Some(ring) = self.ring(entry.origin, entry.txid) else {
            self.overflow_insert(now, entry);
            return;
        };
        if ring
            .high_water
            .is_none_or(|newest| counter_behind(entry.txid, newest) > 0)
        {
            ring.high_water = Some(entry.txid);
        }
        ring.live_until = ring.live_until.max(entry.expires);
        let free = ring
            .get(slot)
            .is_none_or(|e| e.expires <= now || e.txid == entry.txid);
        if free {
            ring.set(slot, entry);
        } else {
            self.overflow_insert(now, entry);
        }
    }

    fn overflow_insert(&mut self, now: Millis, entry: DecisionWindowEntry) {
        self.overflow.retain(|_, e| e.expires > now);
        self.overflow.insert((entry.origin, entry.txid), entry);
    }

    /// Removes and returns the decisions about `target`.
    pub(super) fn take_target(&mut self, target: Msisdn) -> Vec<DecisionWindowEntry> {
        let mut taken = Vec::new();
        for ring in &mut self.rings {
            for slot in ring.slots_mut() {
                if slot.is_some_and(|e| e.target == target) {
                    taken.extend(slot.take());
                }
            }
        }
        self.overflow.retain(|_, e| {
            let moving = e.target == target;
            if moving {
                taken.push(*e);
            }
            !moving
        });
        taken
    }

    pub(super) fn clear(&mut self) {
        for ring in &mut self.rings {
            ring.clear();
        }
        self.overflow.clear();
    }

    /// Changes the outcome of a decision still in the window; returns
    /// whether it was there.
    pub(super) fn revise(&mut self, origin: NetworkId, txid: u64, outcome: Outcome) -> bool {
        if let Some(e) = self.overflow.get_mut(&(origin, txid)) {
            e.outcome = outcome;
            return true;
        }
        let slot = self.slot(txid);
        let stream = (origin, (txid >> 48) as u16);
        let Some(&index) = self.streams.get(&stream) else {
            return false;
        };
        let Some(ring) = self.rings.get_mut(index) else {
            return false;
        };
        match ring.get(slot) {
            Some(e) if e.txid == txid && e.origin == origin => {
                ring.set(slot, DecisionWindowEntry { outcome, ..e });
                true
            }
            _ => false,
        }
    }
}

/// A decision in the duplicate-suppression window, moved with its subscriber.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecisionWindowEntry {
    /// Origin network of the transaction.
    pub origin: NetworkId,
    /// Its id.
    pub txid: u64,
    /// A: a transaction id reused for another watcher (a WA restarted within
    /// a window) never gets this watcher's answer.
    pub watcher: Msisdn,
    /// B.
    pub target: Msisdn,
    /// The answer given.
    pub outcome: Outcome,
    /// When it leaves the window.
    pub expires: Millis,
}
