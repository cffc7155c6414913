//! A presence server's subscriber records, packed for tens of millions.
//!
//! A [`SubscriberRecord`] is the exchange form (provisioning, moves between
//! servers). Stored, a subscriber is a 24-byte [`Stored`] entry in one hash
//! table, its buddy list a run in one shared arena of numbers and its
//! device key (32 bytes, or none) a run in one shared arena of bytes: no allocation per
//! subscriber, no allocator overhead, no pointer per list. Ten million
//! subscribers with twenty buddies each take about 2.2 GB (`BENCHMARKS.md`,
//! "Memory"), where a record per heap allocation took over 4.5 GB.
//!
//! Invariants:
//! - every entry's runs lie inside the arenas, and no two live entries'
//!   runs overlap;
//! - a buddy run is ascending, without repeats;
//! - space given up by a replaced or removed run is counted as garbage, and
//!   the arenas are compacted (every live run copied to a fresh arena, in
//!   one pass) once garbage outweighs the live data, so the arenas never
//!   hold more than twice what is live (plus [`COMPACT_MIN`]);
//! - withdrawn-consent lists are rare and kept aside, by subscriber.

use ahash::AHashMap;
use presence_codec::{Msisdn, PresenceState, DEVICE_KEY_LEN};
use smallvec::SmallVec;

use super::auth::AuthGuard;
use super::ps::SubscriberRecord;
use super::Millis;

/// One subscriber, packed.
#[derive(Clone, Copy, Debug)]
struct Stored {
    confirmed_at: Millis,
    buddies_at: u32,
    device_key_at: u32,
    buddies_len: u16,
    state: PresenceState,
    consent_all: bool,
    device_key_len: u8,
    /// Failed checks of the devices' MACs (publications).
    guard: AuthGuard,
    /// The highest publication counter taken (§5.11): a publication must
    /// carry a higher one to change the status.
    last_publish: u64,
}

/// Garbage below this many arena entries is never worth a compaction.
const COMPACT_MIN: usize = 1 << 20;

/// Subscriber records of one presence-server shard.
#[derive(Debug, Default)]
pub(crate) struct SubscriberStore {
    entries: AHashMap<Msisdn, Stored>,
    /// A subscriber held here whose entry a check of an unknown number
    /// reads and writes in place of one ([`SubscriberStore::device_auth_mut`]).
    decoy: Option<Msisdn>,
    buddies: Vec<Msisdn>,
    device_keys: Vec<u8>,
    withdrawn: AHashMap<Msisdn, Vec<Msisdn>>,
    garbage_buddies: usize,
    garbage_device_keys: usize,
}

/// A stored subscriber, borrowed.
#[derive(Clone, Copy, Debug)]
pub struct SubscriberView<'a> {
    stored: Stored,
    buddies: &'a [Msisdn],
    device_key: &'a [u8],
    withdrawn: &'a [Msisdn],
}

impl<'a> SubscriberView<'a> {
    /// Step 10: whether `watcher` may see this subscriber's status.
    pub fn permits(&self, watcher: Msisdn) -> bool {
        self.stored.consent_all
            && contains_sorted(self.buddies, watcher)
            && !contains_sorted(self.withdrawn, watcher)
    }

    /// The subscriber's status.
    pub fn state(&self) -> PresenceState {
        self.stored.state
    }

    /// When a device last confirmed the status.
    pub fn confirmed_at(&self) -> Millis {
        self.stored.confirmed_at
    }

    /// Who may watch, ascending.
    pub fn buddies(&self) -> &'a [Msisdn] {
        self.buddies
    }

    /// The devices' key (32 bytes), or nothing: no device authenticates.
    pub fn device_key(&self) -> &'a [u8] {
        self.device_key
    }

    /// Whether the subscriber consents to being watched at all.
    pub fn consent_all(&self) -> bool {
        self.stored.consent_all
    }

    /// Buddies whose consent is withdrawn, ascending.
    pub fn withdrawn(&self) -> &'a [Msisdn] {
        self.withdrawn
    }

    /// The exchange form.
    pub fn to_record(&self) -> SubscriberRecord {
        SubscriberRecord {
            device_key: self.device_key.to_vec(),
            last_publish: self.stored.last_publish,
            state: self.stored.state,
            confirmed_at: self.stored.confirmed_at,
            buddies: SmallVec::from_slice(self.buddies),
            consent_all: self.stored.consent_all,
            withdrawn: self.withdrawn.to_vec(),
        }
    }
}

/// Runs this short or shorter are searched by comparing every entry, with
/// no branch and no load waiting on another (the compiler makes it vector
/// compares); longer runs by binary search. The usual buddy list (tens)
/// takes three cache lines either way, and the scan measured faster than
/// the search's five dependent loads (`BENCHMARKS.md`, roles pipeline).
const SCAN_RUN_MAX: usize = 64;

/// Whether ascending `run` holds `msisdn`.
fn contains_sorted(run: &[Msisdn], msisdn: Msisdn) -> bool {
    if run.len() <= SCAN_RUN_MAX {
        run.iter().fold(false, |found, &m| found | (m == msisdn))
    } else {
        run.binary_search(&msisdn).is_ok()
    }
}

/// Why a record could not be stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StoreError {
    /// More buddies, device key bytes or arena entries than the packed form
    /// can index.
    TooLarge,
}

impl SubscriberStore {
    /// Subscribers held.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// The subscribers held.
    pub(crate) fn numbers(&self) -> impl Iterator<Item = Msisdn> + '_ {
        self.entries.keys().copied()
    }

    fn view(&self, msisdn: Msisdn, stored: Stored) -> SubscriberView<'_> {
        let run = |at: u32, len: usize| at as usize..(at as usize).saturating_add(len);
        SubscriberView {
            stored,
            buddies: self
                .buddies
                .get(run(stored.buddies_at, usize::from(stored.buddies_len)))
                .unwrap_or(&[]),
            device_key: self
                .device_keys
                .get(run(
                    stored.device_key_at,
                    usize::from(stored.device_key_len),
                ))
                .unwrap_or(&[]),
            withdrawn: if self.withdrawn.is_empty() {
                &[]
            } else {
                self.withdrawn.get(&msisdn).map_or(&[], Vec::as_slice)
            },
        }
    }

    /// Step 10 for a number not held here: the memory work of a held
    /// subscriber's check, with nothing to find. A held subscriber's check
    /// reads its buddy list, a run of the arena that is seldom in the cache;
    /// without this a number not held would be answered a cache miss
    /// sooner, and `NotAvailable`'s time would tell a prober which numbers
    /// are subscribers (`engine/tests/enumeration.rs`). Reads a run of the
    /// arena as long as the average list, at a place the number's keyed
    /// hash picks, and compares `watcher` with it. Always `false`.
    pub(crate) fn permits_none(&self, msisdn: Msisdn, watcher: Msisdn) -> bool {
        let arena = self.buddies.len();
        if arena == 0 {
            return false;
        }
        let typical = (arena / self.entries.len().max(1)).clamp(1, SCAN_RUN_MAX);
        let hash = usize::try_from(self.entries.hasher().hash_one(msisdn)).unwrap_or(0);
        let at = hash % arena.saturating_sub(typical).max(1);
        let run = self.buddies.get(at..at + typical).unwrap_or(&[]);
        let withdrawn = if self.withdrawn.is_empty() {
            &[][..]
        } else {
            self.withdrawn.get(&msisdn).map_or(&[][..], Vec::as_slice)
        };
        std::hint::black_box(contains_sorted(run, watcher) && !contains_sorted(withdrawn, watcher));
        false
    }

    /// The subscriber, if held.
    pub(crate) fn get(&self, msisdn: Msisdn) -> Option<SubscriberView<'_>> {
        let stored = *self.entries.get(&msisdn)?;
        Some(self.view(msisdn, stored))
    }

    /// Stores (or replaces) a subscriber.
    pub(crate) fn insert(
        &mut self,
        msisdn: Msisdn,
        record: &SubscriberRecord,
    ) -> Result<(), StoreError> {
        let buddies_len = u16::try_from(record.buddies.len()).map_err(|_| StoreError::TooLarge)?;
        let device_key_len =
            u8::try_from(record.device_key.len()).map_err(|_| StoreError::TooLarge)?;
        self.make_room(record.buddies.len(), record.device_key.len())?;
        let buddies_at = u32::try_from(self.buddies.len()).map_err(|_| StoreError::TooLarge)?;
        let device_key_at =
            u32::try_from(self.device_keys.len()).map_err(|_| StoreError::TooLarge)?;
        self.buddies.extend_from_slice(&record.buddies);
        self.device_keys.extend_from_slice(&record.device_key);
        let stored = Stored {
            confirmed_at: record.confirmed_at,
            buddies_at,
            device_key_at,
            buddies_len,
            state: record.state,
            consent_all: record.consent_all,
            device_key_len,
            guard: AuthGuard::default(),
            last_publish: record.last_publish,
        };
        if let Some(old) = self.entries.insert(msisdn, stored) {
            self.discard(&old);
        }
        self.decoy.get_or_insert(msisdn);
        if record.withdrawn.is_empty() {
            self.withdrawn.remove(&msisdn);
        } else {
            self.withdrawn.insert(msisdn, record.withdrawn.clone());
        }
        Ok(())
    }

    /// Removes a subscriber, returning its record.
    pub(crate) fn remove(&mut self, msisdn: Msisdn) -> Option<SubscriberRecord> {
        let stored = *self.entries.get(&msisdn)?;
        let record = self.view(msisdn, stored).to_record();
        self.entries.remove(&msisdn);
        self.withdrawn.remove(&msisdn);
        self.discard(&stored);
        if self.decoy == Some(msisdn) {
            self.decoy = self.entries.keys().next().copied();
        }
        if self.wasteful() {
            self.compact();
        }
        Some(record)
    }

    /// What a device check of `msisdn` reads and writes, with the same
    /// memory work whether it is held or not: whether it is held, and the
    /// device key (when it is a whole key) and guard of its entry, or of
    /// the decoy entry (a subscriber held here) when it is not. Two
    /// lookups either way; `None` only when nothing is held at all.
    pub(crate) fn device_auth_mut(
        &mut self,
        msisdn: Msisdn,
    ) -> Option<(bool, Option<[u8; DEVICE_KEY_LEN]>, &mut AuthGuard)> {
        let held = self.entries.contains_key(&msisdn);
        let target = if held { msisdn } else { self.decoy? };
        let stored = self.entries.get_mut(&target)?;
        let at = stored.device_key_at as usize;
        let key = self
            .device_keys
            .get(at..at.saturating_add(usize::from(stored.device_key_len)))
            .and_then(|k| <[u8; DEVICE_KEY_LEN]>::try_from(k).ok());
        Some((held, key, &mut stored.guard))
    }

    /// The highest publication counter taken for a subscriber, to read and
    /// update.
    pub(crate) fn last_publish_mut(&mut self, msisdn: Msisdn) -> Option<&mut u64> {
        self.entries
            .get_mut(&msisdn)
            .map(|stored| &mut stored.last_publish)
    }

    /// Sets the status a device published.
    pub(crate) fn set_state(&mut self, msisdn: Msisdn, state: PresenceState, at: Millis) -> bool {
        match self.entries.get_mut(&msisdn) {
            Some(stored) => {
                stored.state = state;
                stored.confirmed_at = at;
                true
            }
            None => false,
        }
    }

    /// Replaces the device key, buddy list and consent; keeps the status and
    /// the withdrawn list. The new runs overwrite the old ones in place
    /// when they are no longer (a reload of unchanged provisioning leaves
    /// no garbage); otherwise they are appended and the old ones become
    /// garbage.
    pub(crate) fn update(
        &mut self,
        msisdn: Msisdn,
        device_key: &[u8],
        buddies: &[Msisdn],
        consent_all: bool,
    ) -> Result<bool, StoreError> {
        let Some(stored) = self.entries.get(&msisdn).copied() else {
            return Ok(false);
        };
        let buddies_len = u16::try_from(buddies.len()).map_err(|_| StoreError::TooLarge)?;
        let device_key_len = u8::try_from(device_key.len()).map_err(|_| StoreError::TooLarge)?;
        if buddies_len <= stored.buddies_len && device_key_len <= stored.device_key_len {
            let (b, c) = (stored.buddies_at as usize, stored.device_key_at as usize);
            if let (Some(b_run), Some(c_run)) = (
                self.buddies.get_mut(b..b + buddies.len()),
                self.device_keys.get_mut(c..c + device_key.len()),
            ) {
                b_run.copy_from_slice(buddies);
                c_run.copy_from_slice(device_key);
                self.garbage_buddies += usize::from(stored.buddies_len - buddies_len);
                self.garbage_device_keys += usize::from(stored.device_key_len - device_key_len);
                if let Some(entry) = self.entries.get_mut(&msisdn) {
                    entry.buddies_len = buddies_len;
                    entry.device_key_len = device_key_len;
                    entry.consent_all = consent_all;
                }
                return Ok(true);
            }
        }
        let mut record = self.view(msisdn, stored).to_record();
        record.device_key = device_key.to_vec();
        record.buddies = SmallVec::from_slice(buddies);
        record.consent_all = consent_all;
        self.insert(msisdn, &record)?;
        Ok(true)
    }

    /// Replaces the buddy list (ascending, no repeats), keeping the rest.
    pub(crate) fn set_buddies(
        &mut self,
        msisdn: Msisdn,
        buddies: &[Msisdn],
    ) -> Result<bool, StoreError> {
        let Some(current) = self.get(msisdn) else {
            return Ok(false);
        };
        let device_key: SmallVec<[u8; 32]> = SmallVec::from_slice(current.device_key());
        let consent_all = current.consent_all();
        self.update(msisdn, &device_key, buddies, consent_all)
    }

    /// Sets whether the subscriber consents at all.
    pub(crate) fn set_consent_all(&mut self, msisdn: Msisdn, consent: bool) -> bool {
        match self.entries.get_mut(&msisdn) {
            Some(stored) => {
                stored.consent_all = consent;
                true
            }
            None => false,
        }
    }

    /// Withdraws (or grants again) consent from one watcher.
    pub(crate) fn set_withdrawn(
        &mut self,
        msisdn: Msisdn,
        watcher: Msisdn,
        withdrawn: bool,
    ) -> bool {
        if !self.entries.contains_key(&msisdn) {
            return false;
        }
        let list = self.withdrawn.entry(msisdn).or_default();
        match (list.binary_search(&watcher), withdrawn) {
            (Err(at), true) => list.insert(at, watcher),
            (Ok(at), false) => {
                list.remove(at);
            }
            _ => {}
        }
        if list.is_empty() {
            self.withdrawn.remove(&msisdn);
        }
        true
    }

    fn discard(&mut self, old: &Stored) {
        self.garbage_buddies += usize::from(old.buddies_len);
        self.garbage_device_keys += usize::from(old.device_key_len);
    }

    /// Compacts first if garbage outweighs the live data, or if the new runs
    /// would not be indexable otherwise.
    fn make_room(&mut self, buddies: usize, device_key: usize) -> Result<(), StoreError> {
        let overflow = self.buddies.len().saturating_add(buddies) > u32::MAX as usize
            || self.device_keys.len().saturating_add(device_key) > u32::MAX as usize;
        if (overflow && self.garbage_buddies + self.garbage_device_keys > 0) || self.wasteful() {
            self.compact();
        }
        if self.buddies.len().saturating_add(buddies) > u32::MAX as usize
            || self.device_keys.len().saturating_add(device_key) > u32::MAX as usize
        {
            return Err(StoreError::TooLarge);
        }
        Ok(())
    }

    /// Whether garbage outweighs the live data (and is worth a pass).
    fn wasteful(&self) -> bool {
        let live_buddies = self.buddies.len().saturating_sub(self.garbage_buddies);
        let live_device_keys = self
            .device_keys
            .len()
            .saturating_sub(self.garbage_device_keys);
        self.garbage_buddies > COMPACT_MIN.max(live_buddies)
            || self.garbage_device_keys > COMPACT_MIN.max(live_device_keys)
    }

    /// Copies every live run to fresh arenas.
    fn compact(&mut self) {
        let live_buddies = self.buddies.len().saturating_sub(self.garbage_buddies);
        let live_device_keys = self
            .device_keys
            .len()
            .saturating_sub(self.garbage_device_keys);
        let mut buddies = Vec::with_capacity(live_buddies);
        let mut device_keys = Vec::with_capacity(live_device_keys);
        for stored in self.entries.values_mut() {
            let b = stored.buddies_at as usize;
            let c = stored.device_key_at as usize;
            let new_b = buddies.len();
            let new_c = device_keys.len();
            // A run outside the arena (a broken invariant) becomes empty
            // rather than borrowing a neighbour's.
            match self.buddies.get(b..b + usize::from(stored.buddies_len)) {
                Some(run) => buddies.extend_from_slice(run),
                None => stored.buddies_len = 0,
            }
            match self
                .device_keys
                .get(c..c + usize::from(stored.device_key_len))
            {
                Some(run) => device_keys.extend_from_slice(run),
                None => stored.device_key_len = 0,
            }
            // Both fit: the fresh arenas are no larger than the old ones.
            stored.buddies_at = u32::try_from(new_b).unwrap_or(u32::MAX);
            stored.device_key_at = u32::try_from(new_c).unwrap_or(u32::MAX);
        }
        self.buddies = buddies;
        self.device_keys = device_keys;
        self.garbage_buddies = 0;
        self.garbage_device_keys = 0;
    }

    /// Arena entries given up and not yet compacted away (buddies,
    /// device key bytes).
    #[cfg(test)]
    fn garbage(&self) -> (usize, usize) {
        (self.garbage_buddies, self.garbage_device_keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(n: u64) -> Msisdn {
        Msisdn::from_u64(447_700_000_000 + n).unwrap()
    }

    #[test]
    fn membership_is_exact_for_scanned_and_searched_runs() {
        for len in [
            0u64,
            1,
            20,
            SCAN_RUN_MAX as u64,
            SCAN_RUN_MAX as u64 + 1,
            1000,
        ] {
            // Even numbers only: every odd one is absent.
            let run: Vec<Msisdn> = (0..len).map(|i| m(2 * i)).collect();
            for i in 0..len {
                assert!(contains_sorted(&run, m(2 * i)), "{len}: {i} present");
                assert!(!contains_sorted(&run, m(2 * i + 1)), "{len}: {i} absent");
            }
            assert!(!contains_sorted(&run, m(2 * len)), "{len}: past the end");
        }
    }

    /// A record whose key run holds `key_bytes` as they are (the store
    /// keeps opaque runs; short ones make the arena arithmetic visible).
    fn record(key_bytes: &str, buddies: &[u64]) -> SubscriberRecord {
        let mut record = SubscriberRecord::new(m(1), b"x", buddies.iter().map(|b| m(*b)).collect());
        record.device_key = key_bytes.as_bytes().to_vec();
        record
    }

    #[test]
    fn a_number_not_held_is_permitted_to_nobody_whoever_the_arena_names() {
        let mut store = SubscriberStore::default();
        assert!(!store.permits_none(m(500), m(3)), "an empty store");
        // Every subscriber lists every watcher asked about below.
        for n in 1..=50 {
            store.insert(m(n), &record("k", &[3, 5, 7, 9])).unwrap();
        }
        for target in 100..400 {
            for watcher in [3, 5, 7, 9, 11] {
                assert!(!store.permits_none(m(target), m(watcher)));
            }
        }
    }

    #[test]
    fn a_stored_record_reads_back_as_it_went_in() {
        let mut store = SubscriberStore::default();
        let mut r = record("secret", &[5, 3, 9]);
        r.state = PresenceState::Detached;
        r.confirmed_at = 77;
        r.withdrawn = vec![m(9)];
        store.insert(m(1), &r).unwrap();
        let view = store.get(m(1)).unwrap();
        assert_eq!(view.to_record(), r);
        assert_eq!(view.buddies(), &[m(3), m(5), m(9)]);
        assert!(view.permits(m(3)));
        assert!(!view.permits(m(9)), "withdrawn");
        assert!(!view.permits(m(4)), "not a buddy");
        assert!(store.get(m(2)).is_none());
    }

    #[test]
    fn replacing_and_removing_leave_other_subscribers_intact() {
        let mut store = SubscriberStore::default();
        for i in 0..100 {
            store
                .insert(m(i), &record(&format!("c{i}"), &[i + 1000, i + 2000]))
                .unwrap();
        }
        store
            .insert(m(7), &record("longer-key", &[1, 2, 3, 4]))
            .unwrap();
        assert!(store.set_buddies(m(8), &[m(1)]).unwrap());
        assert!(store.set_buddies(m(9), &[m(1), m(2), m(3)]).unwrap());
        assert!(store.remove(m(10)).is_some());
        assert_eq!(store.len(), 99);
        for i in (0..100).filter(|i| ![7, 8, 9, 10].contains(i)) {
            let view = store.get(m(i)).unwrap();
            assert_eq!(view.device_key(), format!("c{i}").as_bytes());
            assert_eq!(view.buddies(), &[m(i + 1000), m(i + 2000)]);
        }
        assert_eq!(store.get(m(7)).unwrap().device_key(), b"longer-key");
        assert_eq!(store.get(m(8)).unwrap().buddies(), &[m(1)]);
        assert_eq!(store.get(m(9)).unwrap().buddies(), &[m(1), m(2), m(3)]);
        assert!(store.get(m(10)).is_none());
        assert!(store.garbage().0 > 0);
    }

    #[test]
    fn an_update_no_longer_than_before_is_written_in_place() {
        let mut store = SubscriberStore::default();
        store.insert(m(1), &record("secret", &[2, 3, 4])).unwrap();
        let arena = (store.buddies.len(), store.device_keys.len());
        assert!(store
            .update(m(1), b"secret", &[m(2), m(3), m(4)], true)
            .unwrap());
        assert!(store.update(m(1), b"sec", &[m(5)], false).unwrap());
        assert_eq!((store.buddies.len(), store.device_keys.len()), arena);
        assert_eq!(store.garbage(), (2, 3));
        let view = store.get(m(1)).unwrap();
        assert_eq!(view.device_key(), b"sec");
        assert_eq!(view.buddies(), &[m(5)]);
        assert!(!view.consent_all());
        // Longer: appended, the old runs become garbage.
        assert!(store
            .update(m(1), b"longer-secret", &[m(6), m(7)], true)
            .unwrap());
        assert_eq!(store.garbage(), (3, 6));
        assert_eq!(store.get(m(1)).unwrap().device_key(), b"longer-secret");
        assert!(!store.update(m(9), b"x", &[], true).unwrap());
    }

    #[test]
    fn compaction_keeps_every_live_run_and_drops_the_garbage() {
        let mut store = SubscriberStore::default();
        for i in 0..50 {
            store.insert(m(i), &record("x", &[i, i + 1])).unwrap();
        }
        for i in 0..25 {
            store.remove(m(i));
        }
        store.compact();
        assert_eq!(store.garbage(), (0, 0));
        assert_eq!(store.buddies.len(), 50);
        assert_eq!(store.device_keys.len(), 25);
        for i in 25..50 {
            assert_eq!(store.get(m(i)).unwrap().buddies(), &[m(i), m(i + 1)]);
        }
    }

    #[test]
    fn state_consent_and_withdrawals_change_in_place() {
        let mut store = SubscriberStore::default();
        store.insert(m(1), &record("c", &[2, 3])).unwrap();
        assert!(store.set_state(m(1), PresenceState::Detached, 5));
        assert!(store.set_withdrawn(m(1), m(2), true));
        assert!(!store.get(m(1)).unwrap().permits(m(2)));
        assert!(store.set_withdrawn(m(1), m(2), false));
        assert!(store.get(m(1)).unwrap().permits(m(2)));
        assert!(store.set_consent_all(m(1), false));
        assert!(!store.get(m(1)).unwrap().permits(m(3)));
        assert!(!store.set_state(m(9), PresenceState::Detached, 5));
        assert_eq!(store.get(m(1)).unwrap().confirmed_at(), 5);
    }
}
