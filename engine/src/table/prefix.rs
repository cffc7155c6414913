//! Longest-prefix match of MSISDNs over operator number prefixes.
//!
//! Prefixes are digit strings, so they nest or are disjoint. Padding every
//! number and prefix with zeros to 15 digits turns each prefix into a range of
//! 15-digit keys, and the ranges into a sorted list of *segments*, each owned by
//! the deepest prefix covering it. A lookup pads the MSISDN to its key, finds
//! the key's segment (a direct index on the key's first digits, then a short
//! scan), and takes that segment's prefix.
//!
//! Padding makes a number look as if it continued with zeros, so a number
//! shorter than the segment's prefix (`44` against prefix `440`) could match a
//! prefix it does not start with. Every prefix records its length and its
//! nearest enclosing prefix: the lookup climbs to the first enclosing prefix no
//! longer than the number, which is exactly its longest true match (all
//! prefixes containing the key form one chain, and those no longer than the
//! number are the number's string prefixes).
//!
//! Invariants (checked by [`PrefixIndex::build`] and the tests):
//! - `bounds` is strictly increasing and starts at 0; segment `i` is
//!   `bounds[i]..bounds[i + 1]` (the last runs to 10^15);
//! - `buckets[b]` is the segment containing key `b * BUCKET_WIDTH`, and
//!   `buckets[BUCKET_COUNT]` is the last segment;
//! - `bounds` is followed by `SCAN_WIDTH` sentinels (`u64::MAX`);
//! - `entries[e].parent` is a strictly shorter prefix containing `e`'s range.
//!
//! Reads never allocate or lock: the index is immutable once built.

use presence_codec::{Msisdn, MSISDN_DIGITS_MAX};

use super::{NetworkId, TableId};

/// Digits of the key used for the direct index: 10^5 buckets.
const BUCKET_DIGITS: u32 = 5;
const BUCKET_COUNT: usize = 10usize.pow(BUCKET_DIGITS);
const BUCKET_WIDTH: u64 = 10u64.pow(MSISDN_DIGITS_MAX as u32 - BUCKET_DIGITS);
/// 10^15: the end of the key space.
const KEY_END: u64 = 10u64.pow(MSISDN_DIGITS_MAX as u32);
/// Bounds scanned without a branch per step; `bounds` ends with this many
/// `u64::MAX` sentinels.
const SCAN_WIDTH: usize = 8;
/// Entry index meaning "no prefix".
const NO_ENTRY: u32 = u32::MAX;

/// 10^n for n in 0..=15.
const POW10: [u64; 16] = {
    let mut table = [1u64; 16];
    let mut i = 1;
    while i < 16 {
        table[i] = table[i - 1] * 10;
        i += 1;
    }
    table
};

/// A number prefix: 1 to 15 digits, first not zero (as in E.164).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Prefix {
    value: u64,
    len: u8,
}

impl Prefix {
    /// The prefix with these digits, if 1 to 15 digits and not starting with 0.
    pub fn parse(digits: &str) -> Option<Prefix> {
        let msisdn: Msisdn = digits.parse().ok()?;
        Some(Prefix::of(msisdn))
    }

    /// All digits of `msisdn` as a prefix.
    pub fn of(msisdn: Msisdn) -> Prefix {
        Prefix {
            value: msisdn.as_u64(),
            len: msisdn.digit_count() as u8,
        }
    }

    /// Number of digits.
    pub fn len(self) -> usize {
        usize::from(self.len)
    }

    /// Never true: a prefix has at least one digit.
    pub fn is_empty(self) -> bool {
        false
    }

    /// The digits as a number.
    pub fn value(self) -> u64 {
        self.value
    }

    /// Whether `msisdn`'s digits start with this prefix.
    pub fn matches(self, msisdn: Msisdn) -> bool {
        let digits = msisdn.digit_count();
        digits >= self.len() && msisdn.as_u64() / POW10[digits - self.len()] == self.value
    }

    /// First key of the prefix's range.
    fn key_start(self) -> u64 {
        self.value * POW10[MSISDN_DIGITS_MAX - self.len()]
    }

    /// One past the last key of the prefix's range.
    fn key_end(self) -> u64 {
        (self.value + 1) * POW10[MSISDN_DIGITS_MAX - self.len()]
    }
}

impl std::fmt::Display for Prefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.value)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Entry<I> {
    id: I,
    len: u8,
    parent: u32,
}

/// An immutable longest-prefix-match index from number prefixes to ids of
/// type `I` (networks in the numbering table, presence servers in the HSS).
#[derive(Debug, Clone)]
pub struct PrefixIndex<I: TableId = NetworkId> {
    /// The prefixes it was built from, sorted, each once.
    prefixes: Box<[(Prefix, I)]>,
    bounds: Box<[u64]>,
    segment_entry: Box<[u32]>,
    buckets: Box<[u32]>,
    entries: Box<[Entry<I>]>,
}

/// The key of an MSISDN: its digits padded with zeros to 15.
#[inline]
fn key_of(msisdn: Msisdn) -> u64 {
    msisdn.as_u64() * POW10[MSISDN_DIGITS_MAX - msisdn.digit_count()]
}

impl<I: TableId> PrefixIndex<I> {
    /// Builds the index from distinct prefixes (duplicates are the loader's
    /// error to report; here the last one wins).
    pub fn build(prefixes: &[(Prefix, I)]) -> PrefixIndex<I> {
        let mut sorted: Vec<(Prefix, I)> = prefixes.to_vec();
        // Ranges sorted by start, enclosing (shorter) ones first.
        sorted.sort_by_key(|(p, _)| (p.key_start(), p.len));
        sorted.dedup_by(|later, earlier| {
            if later.0 == earlier.0 {
                earlier.1 = later.1;
                true
            } else {
                false
            }
        });

        let mut entries: Vec<Entry<I>> = Vec::with_capacity(sorted.len());
        let mut shared: std::collections::HashMap<Entry<I>, u32> = Default::default();
        let mut bounds: Vec<u64> = vec![0];
        let mut segment_entry: Vec<u32> = vec![NO_ENTRY];
        // Stack of open prefixes (entry index, range end): a chain of nested ranges.
        let mut open: Vec<(u32, u64)> = Vec::with_capacity(MSISDN_DIGITS_MAX);

        // Starts a segment at `key` owned by `entry`, merging with the previous
        // one when the owner is the same.
        fn start_segment(bounds: &mut Vec<u64>, owners: &mut Vec<u32>, key: u64, entry: u32) {
            if owners.last() == Some(&entry) {
                return;
            }
            if bounds.last() == Some(&key) {
                owners.pop();
                bounds.pop();
                if owners.last() == Some(&entry) {
                    return;
                }
            }
            bounds.push(key);
            owners.push(entry);
        }

        for (prefix, id) in &sorted {
            let start = prefix.key_start();
            // Close the open prefixes that end at or before this one starts.
            while let Some(&(_, end)) = open.last() {
                if end > start {
                    break;
                }
                open.pop();
                let owner = open.last().map_or(NO_ENTRY, |&(e, _)| e);
                start_segment(&mut bounds, &mut segment_entry, end, owner);
            }
            let parent = open.last().map_or(NO_ENTRY, |&(e, _)| e);
            // Equal entries are shared, so neighbouring prefixes of one
            // network (441, 442, 443) make one segment, not three.
            let entry = Entry {
                id: *id,
                len: prefix.len,
                parent,
            };
            let index = *shared.entry(entry).or_insert_with(|| {
                entries.push(entry);
                entries.len() as u32 - 1
            });
            start_segment(&mut bounds, &mut segment_entry, start, index);
            open.push((index, prefix.key_end()));
        }
        while let Some((_, end)) = open.pop() {
            let owner = open.last().map_or(NO_ENTRY, |&(e, _)| e);
            if end < KEY_END {
                start_segment(&mut bounds, &mut segment_entry, end, owner);
            }
        }

        let segments = bounds.len();
        let mut buckets = vec![0u32; BUCKET_COUNT + 1];
        let mut segment = 0usize;
        for (b, slot) in buckets.iter_mut().take(BUCKET_COUNT).enumerate() {
            let key = b as u64 * BUCKET_WIDTH;
            while segment + 1 < bounds.len() && bounds[segment + 1] <= key {
                segment += 1;
            }
            *slot = segment as u32;
        }
        buckets[BUCKET_COUNT] = segments as u32 - 1;
        bounds.extend([u64::MAX; SCAN_WIDTH]);

        let index = PrefixIndex {
            prefixes: sorted.into_boxed_slice(),
            bounds: bounds.into_boxed_slice(),
            segment_entry: segment_entry.into_boxed_slice(),
            buckets: buckets.into_boxed_slice(),
            entries: entries.into_boxed_slice(),
        };
        assert!(
            index.bounds[..segments].windows(2).all(|w| w[0] < w[1]),
            "segment bounds strictly increase"
        );
        index
    }

    /// The id of the longest prefix of `msisdn`, if any.
    #[inline]
    pub fn lookup(&self, msisdn: Msisdn) -> Option<I> {
        self.lookup_key(key_of(msisdn), msisdn.digit_count())
    }

    /// Hints the memory a lookup of `msisdn` will read first.
    #[inline]
    pub(crate) fn prefetch(&self, msisdn: Msisdn) {
        let bucket = (key_of(msisdn) / BUCKET_WIDTH) as usize;
        if let Some(first) = self.buckets.get(bucket) {
            if let Some(bound) = self.bounds.get(*first as usize) {
                super::prefetch(bound);
            }
        }
    }

    #[inline]
    fn lookup_key(&self, key: u64, digits: usize) -> Option<I> {
        let bucket = (key / BUCKET_WIDTH) as usize;
        // In range: key < 10^15, so bucket < BUCKET_COUNT; bounds is never empty.
        let mut lo = self.buckets[bucket] as usize;
        let hi = self.buckets[bucket + 1] as usize;
        // The key's segment is the last in lo..=hi starting at or before it.
        // Every bound after `hi` is above the key, and `bounds` ends with
        // SCAN_WIDTH sentinels, so counting the bounds at or below the key in
        // the next SCAN_WIDTH needs no early exit (no mispredicted branch).
        if hi - lo > SCAN_WIDTH {
            lo += self.bounds[lo + 1..=hi].partition_point(|&b| b <= key);
        } else {
            let window = &self.bounds[lo + 1..lo + 1 + SCAN_WIDTH];
            lo += window.iter().map(|&b| usize::from(b <= key)).sum::<usize>();
        }
        let mut entry = self.segment_entry[lo];
        while entry != NO_ENTRY {
            let e = self.entries[entry as usize];
            if usize::from(e.len) <= digits {
                return Some(e.id);
            }
            entry = e.parent;
        }
        None
    }

    /// Number of distinct prefixes.
    pub fn len(&self) -> usize {
        self.prefixes.len()
    }

    /// Whether there is no prefix.
    pub fn is_empty(&self) -> bool {
        self.prefixes.is_empty()
    }

    /// The prefixes, sorted by their range (enclosing ones first), each
    /// with its id.
    pub fn prefixes(&self) -> &[(Prefix, I)] {
        &self.prefixes
    }

    /// Number of segments (for sizing and tests).
    pub fn segment_count(&self) -> usize {
        self.bounds.len() - SCAN_WIDTH
    }

    /// Bytes of memory the index holds.
    pub fn memory_bytes(&self) -> usize {
        self.bounds.len() * 8
            + self.segment_entry.len() * 4
            + self.buckets.len() * 4
            + self.entries.len() * std::mem::size_of::<Entry<I>>()
            + self.prefixes.len() * std::mem::size_of::<(Prefix, I)>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(text: &str) -> Msisdn {
        text.parse().unwrap()
    }

    fn index(rows: &[(&str, u16)]) -> PrefixIndex<NetworkId> {
        let prefixes: Vec<(Prefix, NetworkId)> = rows
            .iter()
            .map(|(p, n)| (Prefix::parse(p).unwrap(), NetworkId(*n)))
            .collect();
        PrefixIndex::build(&prefixes)
    }

    #[test]
    fn nested_prefixes_take_the_longest() {
        let idx = index(&[("44", 1), ("447", 2), ("4477", 3), ("1", 4)]);
        assert_eq!(idx.lookup(m("441234567890")), Some(NetworkId(1)));
        assert_eq!(idx.lookup(m("447123456789")), Some(NetworkId(2)));
        assert_eq!(idx.lookup(m("447712345678")), Some(NetworkId(3)));
        assert_eq!(idx.lookup(m("12025550143")), Some(NetworkId(4)));
        assert_eq!(idx.lookup(m("33612345678")), None);
        assert_eq!(idx.lookup(m("999999999999999")), None);
    }

    #[test]
    fn numbers_shorter_than_a_prefix_do_not_match_it() {
        let idx = index(&[("44", 1), ("440", 2), ("4400", 3)]);
        assert_eq!(
            idx.lookup(m("44")),
            Some(NetworkId(1)),
            "padded 44 looks like 4400…"
        );
        assert_eq!(idx.lookup(m("440")), Some(NetworkId(2)));
        assert_eq!(idx.lookup(m("4400")), Some(NetworkId(3)));
        assert_eq!(idx.lookup(m("4")), None);
        let idx = index(&[("4400", 3)]);
        assert_eq!(idx.lookup(m("44")), None);
        assert_eq!(idx.lookup(m("440")), None);
    }

    #[test]
    fn fifteen_digit_prefixes_and_edges_of_the_key_space() {
        let idx = index(&[("999999999999999", 7), ("1", 1), ("100000000000000", 2)]);
        assert_eq!(idx.lookup(m("999999999999999")), Some(NetworkId(7)));
        assert_eq!(idx.lookup(m("99999999999999")), None);
        assert_eq!(idx.lookup(m("100000000000000")), Some(NetworkId(2)));
        assert_eq!(idx.lookup(m("1")), Some(NetworkId(1)));
        assert_eq!(idx.lookup(m("10000000000000")), Some(NetworkId(1)));
    }

    #[test]
    fn empty_index_matches_nothing() {
        let idx = index(&[]);
        assert_eq!(idx.lookup(m("1")), None);
        assert_eq!(idx.segment_count(), 1);
    }

    #[test]
    fn adjacent_prefixes_of_one_network_share_segments() {
        let idx = index(&[("441", 1), ("442", 1), ("443", 1)]);
        // 0.., 441.., 444..: three segments, not five.
        assert_eq!(idx.segment_count(), 3);
        assert_eq!(idx.lookup(m("4425")), Some(NetworkId(1)));
        assert_eq!(idx.lookup(m("4445")), None);
    }

    #[test]
    fn prefix_matches_follows_digit_strings() {
        let p = Prefix::parse("447").unwrap();
        assert!(p.matches(m("447")));
        assert!(p.matches(m("4471")));
        assert!(!p.matches(m("44")));
        assert!(!p.matches(m("4481")));
        assert_eq!(Prefix::parse("0447"), None);
        assert_eq!(Prefix::parse(""), None);
    }
}
