//! The WA's memory of recent device requests (docs/reliability.md).

use std::net::SocketAddr;

use presence_codec::{Msisdn, Outcome};

use crate::roles::Millis;

/// What became of a device's request (by watcher and device request id).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum DeviceRequest {
    /// Accepted; its query is pending.
    Pending,
    /// Answered with this outcome.
    Answered(Outcome),
}

/// Which device request: the watcher and the device's request id.
pub(super) type DeviceKey = (Msisdn, u64);

/// Where a remembered request sits in the ring, so the pending transaction
/// that answers it can mark it without a lookup ([`DeviceRequests::answered`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct DeviceSlot(u32);

/// A remembered device request: which, about whom, from where, what became
/// of it, and until when it is remembered.
#[derive(Clone, Copy, Debug)]
struct DeviceEntry {
    key: DeviceKey,
    target: Msisdn,
    source: SocketAddr,
    state: DeviceRequest,
    expires: Millis,
}

/// One slot of the index: the upper 32 bits of the key's hash (its tag,
/// whose low bits are also its home slot) and the ring position plus one;
/// 0 is an empty slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct IndexSlot {
    tag: u32,
    ring_pos_plus_one: u32,
}

const EMPTY: IndexSlot = IndexSlot {
    tag: 0,
    ring_pos_plus_one: 0,
};

/// Recent device requests, so a request a device sends again (its answer
/// was lost, or it gave up waiting) is not a second query: while pending it
/// is ignored, once answered the same answer is sent again. Remembered for
/// [`DEVICE_REPEAT_DEADLINES`](super::DEVICE_REPEAT_DEADLINES) deadlines,
/// and at most `capacity` of them (the pending table's size): past that the
/// oldest is forgotten first, so at the highest rates a device repeating
/// itself late may start a second query (charged once more;
/// docs/reliability.md).
///
/// A ring of the last `capacity` requests in arrival order, and a small
/// open-addressing index (linear probing, twice the ring's slots, so at
/// most half full) from key to ring position. Per new request: one probe
/// to drop the index slot of the request the ring overwrites, one to look
/// the key up before it is taken and one to index it; marking it answered
/// goes straight to its ring slot. Invariants:
/// - every occupied index slot points at a ring entry holding its key;
/// - a key has at most one index slot (a reused id takes the old slot);
/// - an entry past its `expires` is never reported, whether or not the
///   ring has overwritten it yet.
///
/// Sized at start-up; nothing is allocated after. The hash is keyed per
/// process (`ahash`), so devices cannot choose ids that pile into one
/// probe run.
#[derive(Debug)]
pub(super) struct DeviceRequests {
    ring: Box<[Option<DeviceEntry>]>,
    /// Ring positions are `next & ring_mask`.
    ring_mask: u64,
    /// Requests ever inserted.
    next: u64,
    index: Box<[IndexSlot]>,
    index_mask: usize,
    hasher: ahash::RandomState,
}

impl DeviceRequests {
    /// Room for the last `capacity` requests (rounded up to a power of two,
    /// at most 2^30).
    pub(super) fn new(capacity: usize) -> DeviceRequests {
        let ring_len = capacity.clamp(1, 1 << 30).next_power_of_two();
        let index_len = ring_len * 2;
        DeviceRequests {
            ring: vec![None; ring_len].into_boxed_slice(),
            ring_mask: ring_len as u64 - 1,
            next: 0,
            index: vec![EMPTY; index_len].into_boxed_slice(),
            index_mask: index_len - 1,
            hasher: ahash::RandomState::new(),
        }
    }

    fn tag(&self, key: DeviceKey) -> u32 {
        (self.hasher.hash_one(key) >> 32) as u32
    }

    fn home(&self, tag: u32) -> usize {
        tag as usize & self.index_mask
    }

    fn entry(&self, slot: IndexSlot) -> Option<&DeviceEntry> {
        let pos = slot.ring_pos_plus_one.checked_sub(1)?;
        self.ring.get(pos as usize)?.as_ref()
    }

    /// The index slot holding `key`, or the empty slot where it would go.
    fn probe(&self, key: DeviceKey, tag: u32) -> (usize, bool) {
        let mut i = self.home(tag);
        // The index is at most half full, so an empty slot ends every run;
        // the bound only guards the invariant.
        for _ in 0..self.index.len() {
            let slot = self.index[i];
            if slot == EMPTY {
                return (i, false);
            }
            if slot.tag == tag && self.entry(slot).is_some_and(|e| e.key == key) {
                return (i, true);
            }
            i = (i + 1) & self.index_mask;
        }
        (i, false)
    }

    /// Empties index slot `hole`, moving later slots of its run back so
    /// every key stays reachable from its home (backward-shift deletion).
    fn remove_at(&mut self, mut hole: usize) {
        let mask = self.index_mask;
        let mut j = (hole + 1) & mask;
        for _ in 0..self.index.len() {
            let slot = self.index[j];
            if slot == EMPTY {
                break;
            }
            let home = self.home(slot.tag);
            // `slot` may fill the hole if the hole lies between its home
            // and where it sits now (cyclically).
            if (j.wrapping_sub(home) & mask) >= (j.wrapping_sub(hole) & mask) {
                self.index[hole] = slot;
                hole = j;
            }
            j = (j + 1) & mask;
        }
        self.index[hole] = EMPTY;
    }

    /// Forgets the request in ring position `pos`, if the index still
    /// points at it (a reused id points at its newer entry instead).
    fn forget(&mut self, pos: usize) {
        let Some(key) = self.ring[pos].map(|e| e.key) else {
            return;
        };
        let tag = self.tag(key);
        let (i, found) = self.probe(key, tag);
        if found && self.index[i].ring_pos_plus_one as usize == pos + 1 {
            self.remove_at(i);
        }
        self.ring[pos] = None;
    }

    /// Starts loading the index slot where `key`'s probe begins (a staged
    /// batch asks for every request's before handling the first).
    pub(super) fn prefetch(&self, key: DeviceKey) {
        crate::table::prefetch(&self.index[self.home(self.tag(key))]);
    }

    /// Starts loading the index slots that the next `n` inserts will clear:
    /// each forgets the oldest request, found through its key's probe.
    /// The ring itself is read in order, which the hardware prefetches.
    pub(super) fn prefetch_evictions(&self, n: usize) {
        for i in 0..n as u64 {
            let pos = (self.next.wrapping_add(i) & self.ring_mask) as usize;
            if let Some(entry) = &self.ring[pos] {
                crate::table::prefetch(&self.index[self.home(self.tag(entry.key))]);
            }
        }
    }

    /// The request's state and where it first came from, if this is a
    /// repeat: same id, same target, still remembered.
    pub(super) fn get(
        &self,
        now: Millis,
        key: DeviceKey,
        target: Msisdn,
    ) -> Option<(DeviceRequest, SocketAddr)> {
        let (i, found) = self.probe(key, self.tag(key));
        if !found {
            return None;
        }
        self.entry(self.index[i])
            .filter(|e| e.target == target && e.expires > now)
            .map(|e| (e.state, e.source))
    }

    /// Records a newly accepted request, forgetting the oldest if full;
    /// returns where it sits, for [`answered`](Self::answered).
    pub(super) fn insert(
        &mut self,
        now: Millis,
        key: DeviceKey,
        target: Msisdn,
        source: SocketAddr,
        keep_ms: u64,
    ) -> DeviceSlot {
        let pos = (self.next & self.ring_mask) as usize;
        self.next = self.next.wrapping_add(1);
        self.forget(pos);
        self.ring[pos] = Some(DeviceEntry {
            key,
            target,
            source,
            state: DeviceRequest::Pending,
            expires: now.saturating_add(keep_ms),
        });
        let tag = self.tag(key);
        // A reused id (found) now means the new entry; the old one stays in
        // the ring, unindexed, until overwritten.
        let (i, _) = self.probe(key, tag);
        self.index[i] = IndexSlot {
            tag,
            ring_pos_plus_one: pos as u32 + 1,
        };
        DeviceSlot(pos as u32)
    }

    /// The request `key` about `target`, remembered at `slot`, was answered.
    /// A slot the ring has since given to another request is left alone.
    pub(super) fn answered(
        &mut self,
        slot: DeviceSlot,
        key: DeviceKey,
        target: Msisdn,
        outcome: Outcome,
    ) {
        if let Some(entry) = self
            .ring
            .get_mut(slot.0 as usize)
            .and_then(Option::as_mut)
            .filter(|e| e.key == key && e.target == target)
        {
            entry.state = DeviceRequest::Answered(outcome);
        }
    }

    /// Requests the index can find (for tests of its invariants).
    #[cfg(test)]
    fn indexed(&self) -> usize {
        self.index.iter().filter(|s| **s != EMPTY).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use presence_codec::ErrorReason;

    fn who(n: u64) -> Msisdn {
        Msisdn::from_u64(491_700_000_000 + n).expect("a valid number")
    }

    fn from(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    const KEEP: u64 = 4_000;
    const ANSWER: Outcome = Outcome::Error(ErrorReason::CreditExhausted);

    #[test]
    fn a_repeat_finds_its_request_pending_then_answered_from_where_it_came() {
        let mut m = DeviceRequests::new(8);
        let key = (who(1), 7);
        assert_eq!(m.get(0, key, who(2)), None, "never seen");
        let slot = m.insert(0, key, who(2), from(1000), KEEP);
        assert_eq!(
            m.get(10, key, who(2)),
            Some((DeviceRequest::Pending, from(1000)))
        );
        assert_eq!(m.get(10, key, who(3)), None, "same id, other target");
        m.answered(slot, key, who(2), ANSWER);
        assert_eq!(
            m.get(20, key, who(2)),
            Some((DeviceRequest::Answered(ANSWER), from(1000)))
        );
        assert_eq!(m.get(KEEP, key, who(2)), None, "expired");
    }

    #[test]
    fn past_capacity_the_oldest_is_forgotten_first_and_the_index_stays_bounded() {
        let mut m = DeviceRequests::new(4);
        for n in 0..4 {
            m.insert(0, (who(n), n), who(100), from(1), KEEP);
        }
        m.insert(0, (who(9), 9), who(100), from(1), KEEP);
        assert_eq!(m.get(1, (who(0), 0), who(100)), None, "the oldest went");
        for n in 1..4 {
            assert!(m.get(1, (who(n), n), who(100)).is_some(), "{n} stays");
        }
        assert!(m.get(1, (who(9), 9), who(100)).is_some());
        for n in 10..10_000 {
            m.insert(n, (who(n % 37), n), who(100), from(1), KEEP);
            assert!(m.indexed() <= 4);
        }
    }

    #[test]
    fn a_reused_id_means_the_newer_request_and_the_older_ones_answer_does_not_touch_it() {
        let mut m = DeviceRequests::new(8);
        let key = (who(1), 7);
        let old = m.insert(0, key, who(2), from(1), KEEP);
        let new = m.insert(5_000, key, who(2), from(2), KEEP);
        assert_eq!(m.indexed(), 1, "one index slot per key");
        m.answered(old, key, who(2), ANSWER);
        assert_eq!(
            m.get(5_001, key, who(2)),
            Some((DeviceRequest::Pending, from(2)))
        );
        m.answered(new, key, who(2), ANSWER);
        assert_eq!(
            m.get(5_001, key, who(2)),
            Some((DeviceRequest::Answered(ANSWER), from(2)))
        );
        // The old entry leaving the ring does not take the key's index slot.
        for n in 0..6 {
            m.insert(5_002, (who(50 + n), n), who(2), from(3), KEEP);
        }
        m.insert(5_002, (who(60), 0), who(2), from(3), KEEP);
        assert!(
            m.get(5_003, key, who(2)).is_some(),
            "the old entry's slot reused: the key still found"
        );
        m.insert(5_002, (who(61), 0), who(2), from(3), KEEP);
        assert!(m.get(5_003, key, who(2)).is_none(), "its own slot reused");
        assert_eq!(m.indexed(), 8);
    }

    #[test]
    fn deletions_in_colliding_runs_leave_every_live_key_reachable() {
        // Many keys through a small ring: runs in the index form, wrap and
        // are cut by backward-shift deletion; every remembered key must be
        // found and every forgotten one not.
        let mut m = DeviceRequests::new(64);
        let mut live = std::collections::VecDeque::new();
        for n in 0..20_000u64 {
            let key = (who(n % 1_000), n / 3);
            m.insert(n, key, who(5), from(1), u64::MAX / 2);
            live.push_back(key);
            if live.len() > 64 {
                live.pop_front();
            }
            if n % 97 == 0 {
                for &k in &live {
                    assert!(m.get(n, k, who(5)).is_some(), "{k:?} at {n}");
                }
                assert_eq!(m.indexed(), live.len());
            }
        }
    }
}
