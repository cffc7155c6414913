//! The WA's timers: a hashed timing wheel of one-millisecond slots.
//!
//! A pending transaction has one live timer (its next retransmission or its
//! deadline); rescheduling bumps a generation and leaves the old entry to be
//! skipped when it fires. Inserting and firing are O(1) per timer; finding
//! the next deadline scans a bitmap of occupied slots (1,024 words), not the
//! entries. All memory is allocated at construction: timers are nodes of a
//! fixed pool, linked into their slot's list, so the wheel never allocates.
//!
//! Invariants:
//! - every timer's `at` is at least `cursor` (inserts are clamped) and it is
//!   linked in slot `at % SLOTS`; a timer more than one lap ahead stays in
//!   its slot until its own lap comes;
//! - `occupied` has bit `s` set exactly when slot `s`'s list is non-empty;
//! - every node is either in exactly one slot list or in the free list;
//!   `len` counts the former, at most `capacity`; when the wheel is full the
//!   caller compacts (drops timers of finished transactions).

use super::Millis;

/// Slots: 65,536 ms, more than the longest deadline a WA accepts (60 s).
const SLOTS: usize = 1 << 16;
const MASK: u64 = (SLOTS as u64) - 1;
const WORDS: usize = SLOTS / 64;
const NIL: u32 = u32::MAX;

/// One timer: when, for which transaction, which generation of its timer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Timer {
    pub(crate) at: Millis,
    pub(crate) txid: u64,
    pub(crate) generation: u32,
}

#[derive(Clone, Copy, Debug)]
struct Node {
    timer: Timer,
    next: u32,
}

/// A bounded hashed timing wheel.
#[derive(Debug)]
pub(crate) struct TimerWheel {
    heads: Box<[u32]>,
    nodes: Box<[Node]>,
    free: u32,
    occupied: Box<[u64]>,
    len: usize,
    /// Everything before `cursor` has fired.
    cursor: Millis,
}

impl TimerWheel {
    /// A wheel for at most `capacity` timers (at most 2^32 - 1).
    pub(crate) fn new(capacity: usize) -> TimerWheel {
        let capacity = capacity.clamp(1, (NIL - 1) as usize);
        let nodes: Box<[Node]> = (0..capacity)
            .map(|i| Node {
                timer: Timer {
                    at: 0,
                    txid: 0,
                    generation: 0,
                },
                next: if i + 1 < capacity {
                    (i + 1) as u32
                } else {
                    NIL
                },
            })
            .collect();
        TimerWheel {
            heads: vec![NIL; SLOTS].into_boxed_slice(),
            nodes,
            free: 0,
            occupied: vec![0u64; WORDS].into_boxed_slice(),
            len: 0,
            cursor: 0,
        }
    }

    /// Timers held (live or stale).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Whether no more timer fits (compact with [`retain`](Self::retain)).
    pub(crate) fn is_full(&self) -> bool {
        self.free == NIL
    }

    /// Adds a timer; `false` if the wheel is full. A time already past fires
    /// at the next [`pop_due`](Self::pop_due).
    pub(crate) fn insert(&mut self, timer: Timer) -> bool {
        let index = self.free;
        let Some(node) = self.nodes.get_mut(index as usize) else {
            return false;
        };
        self.free = node.next;
        let timer = Timer {
            at: timer.at.max(self.cursor),
            ..timer
        };
        let slot = (timer.at & MASK) as usize;
        let Some(head) = self.heads.get_mut(slot) else {
            return false;
        };
        node.timer = timer;
        node.next = *head;
        *head = index;
        self.len += 1;
        self.mark(slot, true);
        true
    }

    /// Keeps only the timers `keep` accepts.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&Timer) -> bool) {
        for slot in 0..SLOTS {
            if self.heads.get(slot).is_some_and(|h| *h != NIL) {
                self.unlink_where(slot, |timer| !keep(timer), |_| {});
            }
        }
    }

    /// Unlinks every timer of `slot` that `remove` picks, handing each to
    /// `taken`; keeps the slot's bit and the counts right.
    fn unlink_where(
        &mut self,
        slot: usize,
        mut remove: impl FnMut(&Timer) -> bool,
        mut taken: impl FnMut(Timer),
    ) {
        let mut prev = NIL;
        let mut cur = self.heads.get(slot).copied().unwrap_or(NIL);
        while let Some(node) = self.nodes.get(cur as usize).copied() {
            let next = node.next;
            if remove(&node.timer) {
                taken(node.timer);
                match self.nodes.get_mut(prev as usize) {
                    Some(p) => p.next = next,
                    None => {
                        if let Some(head) = self.heads.get_mut(slot) {
                            *head = next;
                        }
                    }
                }
                if let Some(freed) = self.nodes.get_mut(cur as usize) {
                    freed.next = self.free;
                }
                self.free = cur;
                self.len -= 1;
            } else {
                prev = cur;
            }
            cur = next;
        }
        if self.heads.get(slot).is_some_and(|h| *h == NIL) {
            self.mark(slot, false);
        }
    }

    fn slot_min(&self, slot: usize) -> Option<Millis> {
        let mut cur = self.heads.get(slot).copied().unwrap_or(NIL);
        let mut min: Option<Millis> = None;
        while let Some(node) = self.nodes.get(cur as usize) {
            min = Some(min.map_or(node.timer.at, |m| m.min(node.timer.at)));
            cur = node.next;
        }
        min
    }

    /// The earliest time a timer is due, if any.
    pub(crate) fn next_at(&self) -> Option<Millis> {
        if self.len == 0 {
            return None;
        }
        let start = (self.cursor & MASK) as usize;
        let mut best: Option<Millis> = None;
        // Scan one lap of slots from the cursor, a word of the bitmap at a time.
        let mut slot = start;
        let mut scanned = 0usize;
        while scanned < SLOTS {
            let word = self.occupied.get(slot / 64).copied().unwrap_or(0) >> (slot % 64);
            if word == 0 {
                let skip = 64 - slot % 64;
                slot = (slot + skip) % SLOTS;
                scanned += skip;
                continue;
            }
            let step = word.trailing_zeros() as usize;
            slot = (slot + step) % SLOTS;
            scanned += step;
            if scanned >= SLOTS {
                break;
            }
            if let Some(min) = self.slot_min(slot) {
                best = Some(best.map_or(min, |b: Millis| b.min(min)));
                // This lap's timers in this slot are due at `cursor +
                // distance`; nothing later in the lap can be earlier.
                if min <= self.cursor.saturating_add(scanned as u64) {
                    return best;
                }
            }
            slot = (slot + 1) % SLOTS;
            scanned += 1;
        }
        best
    }

    /// Moves every timer due by `now` into `due`, in slot order, and
    /// advances the cursor past `now`.
    pub(crate) fn pop_due(&mut self, now: Millis, due: &mut Vec<Timer>) {
        if now < self.cursor {
            return;
        }
        let span = (now - self.cursor).saturating_add(1).min(SLOTS as u64) as usize;
        let start = (self.cursor & MASK) as usize;
        let mut offset = 0usize;
        while offset < span {
            let slot = (start + offset) % SLOTS;
            let word = self.occupied.get(slot / 64).copied().unwrap_or(0) >> (slot % 64);
            if word == 0 {
                offset += 64 - slot % 64;
                continue;
            }
            offset += word.trailing_zeros() as usize;
            if offset >= span {
                break;
            }
            let slot = (start + offset) % SLOTS;
            self.unlink_where(slot, |timer| timer.at <= now, |timer| due.push(timer));
            offset += 1;
        }
        self.cursor = now.saturating_add(1);
    }

    fn mark(&mut self, slot: usize, on: bool) {
        if let Some(word) = self.occupied.get_mut(slot / 64) {
            let bit = 1u64 << (slot % 64);
            if on {
                *word |= bit;
            } else {
                *word &= !bit;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t(at: Millis, txid: u64) -> Timer {
        Timer {
            at,
            txid,
            generation: 0,
        }
    }

    #[test]
    fn timers_fire_in_time_order_and_only_when_due() {
        let mut wheel = TimerWheel::new(16);
        for (at, id) in [(30, 1), (10, 2), (20, 3), (10, 4)] {
            assert!(wheel.insert(t(at, id)));
        }
        assert_eq!(wheel.next_at(), Some(10));
        let mut due = Vec::new();
        wheel.pop_due(9, &mut due);
        assert!(due.is_empty());
        wheel.pop_due(20, &mut due);
        let mut ids: Vec<u64> = due.iter().map(|t| t.txid).collect();
        ids[..2].sort_unstable();
        assert_eq!(ids, vec![2, 4, 3]);
        assert_eq!(wheel.next_at(), Some(30));
        assert_eq!(wheel.len(), 1);
    }

    #[test]
    fn a_timer_a_lap_ahead_waits_for_its_own_lap() {
        let mut wheel = TimerWheel::new(4);
        wheel.insert(t(5 + SLOTS as u64, 1));
        wheel.insert(t(5, 2));
        let mut due = Vec::new();
        wheel.pop_due(5, &mut due);
        assert_eq!(due, vec![t(5, 2)]);
        assert_eq!(wheel.next_at(), Some(5 + SLOTS as u64));
        due.clear();
        wheel.pop_due(5 + SLOTS as u64, &mut due);
        assert_eq!(due, vec![t(5 + SLOTS as u64, 1)]);
    }

    #[test]
    fn the_wheel_is_bounded_and_compacts_on_request() {
        let mut wheel = TimerWheel::new(2);
        assert!(wheel.insert(t(1, 1)));
        assert!(wheel.insert(t(2, 2)));
        assert!(!wheel.insert(t(3, 3)), "full");
        wheel.retain(|timer| timer.txid != 1);
        assert!(wheel.insert(t(3, 3)));
        assert_eq!(wheel.next_at(), Some(2));
    }

    proptest! {
        /// Against a model: whatever is inserted and whenever time
        /// advances, exactly the timers due fire, each once.
        #[test]
        fn behaves_like_a_sorted_list(
            ops in proptest::collection::vec((0u64..200_000, any::<bool>()), 1..300)
        ) {
            let mut wheel = TimerWheel::new(10_000);
            let mut model: Vec<Timer> = Vec::new();
            let mut now = 0u64;
            for (i, (value, advance)) in ops.into_iter().enumerate() {
                if advance {
                    now += value % 5_000;
                    let mut due = Vec::new();
                    wheel.pop_due(now, &mut due);
                    let mut expected: Vec<Timer> = model.iter().copied().filter(|t| t.at <= now).collect();
                    model.retain(|t| t.at > now);
                    due.sort_by_key(|t| (t.at, t.txid));
                    expected.sort_by_key(|t| (t.at, t.txid));
                    prop_assert_eq!(due, expected);
                } else {
                    let timer = t(now + 1 + value % 60_000, i as u64);
                    wheel.insert(timer);
                    model.push(timer);
                }
                prop_assert_eq!(wheel.len(), model.len());
                prop_assert_eq!(wheel.next_at(), model.iter().map(|t| t.at).min());
            }
        }
    }
}
