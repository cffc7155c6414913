//! Ported-number overrides: an exact-match map MSISDN → network that shares
//! structure between versions, so one change copies a few kilobytes, not the
//! whole map.
//!
//! Layout: 16,384 shards (a two-level radix of 128 × 128 by the top bits of a
//! hash), each an immutable open-addressing table of cache-line buckets of
//! eight packed `u64` slots: `msisdn << 14 | network` (an MSISDN is below
//! 2^50, a network id below 2^14; 0 is an empty slot, as no MSISDN is 0). A
//! number hashes to one bucket and overflows into the next; buckets are half
//! full on average, so a lookup, found or not, reads exactly one cache line
//! 95% of the time, and a ported number costs about 16 bytes. A change
//! rebuilds only the shards it touches and copies the two 128-pointer levels
//! above them; untouched shards are shared by `Arc`.
//!
//! Invariants: every shard has at least one empty slot (so a probe ends);
//! within a probe sequence slots fill in order, so an empty slot ends the
//! search; no MSISDN appears twice; a map is never mutated after it is built.

use std::sync::Arc;

use presence_codec::Msisdn;

use std::marker::PhantomData;

use super::{NetworkId, TableId};

const FANOUT_BITS: u32 = 7;
const FANOUT: usize = 1 << FANOUT_BITS;
const SHARD_BITS: u32 = 2 * FANOUT_BITS;
const SHARD_COUNT: usize = 1 << SHARD_BITS;
const NETWORK_BITS: u32 = 14;
const NETWORK_MASK: u64 = (1 << NETWORK_BITS) - 1;
/// Most distinct network ids a ported entry can name.
pub const PORTED_NETWORKS_MAX: usize = 1 << NETWORK_BITS;
const EMPTY: u64 = 0;

const _: () = assert!(presence_codec::MSISDN_MAX < 1 << (64 - NETWORK_BITS));

/// Slot storage: one block holds every shard of a bulk-built map (advised
/// to use huge pages, so ten million random probes do not miss the TLB), and
/// each shard rebuilt by an update gets a small block of its own.
struct Block {
    buckets: Box<[Bucket]>,
}

/// Slots per bucket: one 64-byte cache line.
const BUCKET_SLOTS: usize = 8;

#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Bucket([u64; BUCKET_SLOTS]);

const EMPTY_BUCKET: Bucket = Bucket([EMPTY; BUCKET_SLOTS]);

/// One shard: a range of a block.
#[derive(Clone)]
struct Shard {
    block: Arc<Block>,
    start: usize,
    len: u32,
}

impl Shard {
    #[inline]
    fn buckets(&self) -> &[Bucket] {
        &self.block.buckets[self.start..self.start + self.len as usize]
    }

    fn own(buckets: Vec<Bucket>) -> Shard {
        let len = buckets.len() as u32;
        Shard {
            block: Arc::new(Block {
                buckets: buckets.into_boxed_slice(),
            }),
            start: 0,
            len,
        }
    }
}

/// Buckets for a shard of `count` entries: half the slots used on average,
/// and always more slots than entries.
///
/// Half full, a bucket overflows into the next one for about 5% of lookups
/// (Poisson with mean 4, eight slots). That matters more than the memory: an
/// overflow is a branch on data still arriving from DRAM, and at 70% (24% of
/// buckets full) its mispredictions tripled the cost of a batched lookup
/// (measured: 60 ns against 32 ns per lookup with prefetching).
fn buckets_for(count: usize) -> usize {
    count / (BUCKET_SLOTS / 2) + 1
}

/// Asks the kernel to back `slots` with huge pages (Linux transparent huge
/// pages in `madvise` mode); a no-op elsewhere or if refused. Call it before
/// the memory is first written.
fn advise_huge_pages(buckets: &mut Vec<Bucket>) {
    #[cfg(target_os = "linux")]
    {
        const HUGE_PAGE: usize = 2 << 20;
        let addr = buckets.as_mut_ptr() as usize;
        let start = addr.next_multiple_of(HUGE_PAGE);
        let end =
            (addr + buckets.capacity() * std::mem::size_of::<Bucket>()) / HUGE_PAGE * HUGE_PAGE;
        if end > start {
            // SAFETY: the range lies inside the vector's allocation, which we
            // own mutably;
            // MADV_HUGEPAGE only changes how pages are backed, never their
            // contents, and a failure (an old kernel) is harmless: ignored.
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = buckets;
}

#[derive(Clone)]
struct Node {
    shards: [Shard; FANOUT],
}

#[derive(Clone)]
struct Root {
    nodes: [Arc<Node>; FANOUT],
}

/// An immutable map of single numbers to ids of type `I` (ported numbers
/// to networks; in the HSS, moved subscribers to presence servers); cloning
/// shares everything.
pub struct PortedMap<I: TableId = NetworkId> {
    root: Arc<Root>,
    len: usize,
    ids: PhantomData<I>,
    seed: u64,
}

impl<I: TableId> Clone for PortedMap<I> {
    fn clone(&self) -> PortedMap<I> {
        PortedMap {
            root: self.root.clone(),
            len: self.len,
            ids: PhantomData,
            seed: self.seed,
        }
    }
}

impl<I: TableId> std::fmt::Debug for PortedMap<I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortedMap").field("len", &self.len).finish()
    }
}

/// A change to one ported number: `Some(id)` sets, `None` removes.
pub type PortedChange<I = NetworkId> = (Msisdn, Option<I>);

/// A bulk build found the same MSISDN twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DuplicateMsisdn(pub Msisdn);

#[inline]
fn hash(msisdn: u64, seed: u64) -> u64 {
    // splitmix64's finaliser: every input bit moves every output bit.
    let mut h = (msisdn ^ seed).wrapping_add(0x9E37_79B9_7F4A_7C15);
    h = (h ^ (h >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    h ^ (h >> 31)
}

#[inline]
fn shard_of(h: u64) -> usize {
    (h >> (64 - SHARD_BITS)) as usize
}

/// Home bucket: the low 32 bits of the hash scaled to the table length.
#[inline]
fn home_bucket(h: u64, len: usize) -> usize {
    (((h & 0xFFFF_FFFF) * len as u64) >> 32) as usize
}

/// Packs an entry. Ids are below [`PORTED_NETWORKS_MAX`] by their types'
/// contracts ([`TableId`]); a larger one would corrupt the MSISDN bits, so
/// it is a programming error.
#[inline]
fn pack<I: TableId>(msisdn: Msisdn, id: I) -> u64 {
    let index = id.index();
    assert!(
        usize::from(index) < PORTED_NETWORKS_MAX,
        "id {index} does not fit a ported entry",
    );
    msisdn.as_u64() << NETWORK_BITS | u64::from(index)
}

/// The id of a packed entry (its low [`NETWORK_BITS`] bits).
#[inline]
fn unpack<I: TableId>(entry: u64) -> I {
    I::from_index((entry & NETWORK_MASK) as u16)
}

/// Fills empty buckets with distinct packed entries.
fn fill_shard(entries: &[u64], seed: u64, buckets: &mut [Bucket]) -> Result<(), DuplicateMsisdn> {
    let len = buckets.len();
    for &entry in entries {
        let key = entry >> NETWORK_BITS;
        let mut b = home_bucket(hash(key, seed), len);
        'probe: loop {
            for slot in buckets[b].0.iter_mut() {
                if *slot == EMPTY {
                    *slot = entry;
                    break 'probe;
                }
                if *slot >> NETWORK_BITS == key {
                    return Err(DuplicateMsisdn(
                        Msisdn::from_u64(key).unwrap_or(Msisdn::MIN),
                    ));
                }
            }
            b += 1;
            if b == len {
                b = 0;
            }
        }
    }
    Ok(())
}

/// Builds one shard in a block of its own from distinct packed entries.
fn build_shard(entries: &[u64], seed: u64, empty: &Shard) -> Shard {
    if entries.is_empty() {
        return empty.clone();
    }
    let mut buckets = vec![EMPTY_BUCKET; buckets_for(entries.len())];
    // Entries are distinct: every caller replaces a key rather than adding it twice.
    let _ = fill_shard(entries, seed, &mut buckets);
    Shard::own(buckets)
}

/// The entries of one shard, in slot order.
fn shard_entries(shard: &Shard) -> impl Iterator<Item = u64> + '_ {
    shard
        .buckets()
        .iter()
        .flat_map(|b| b.0)
        .filter(|&e| e != EMPTY)
}

impl<I: TableId> PortedMap<I> {
    /// An empty map with a hash seed (vary it per process so nobody can
    /// precompute colliding numbers).
    pub fn empty(seed: u64) -> PortedMap<I> {
        let empty = Shard::own(vec![EMPTY_BUCKET]);
        let node = Arc::new(Node {
            shards: std::array::from_fn(|_| empty.clone()),
        });
        PortedMap {
            root: Arc::new(Root {
                nodes: std::array::from_fn(|_| node.clone()),
            }),
            len: 0,
            ids: PhantomData,
            seed,
        }
    }

    /// Builds a map from distinct entries; fails on the first MSISDN seen twice.
    pub fn build(entries: &[(Msisdn, I)], seed: u64) -> Result<PortedMap<I>, DuplicateMsisdn> {
        // Counting sort by shard: two passes, one allocation.
        let mut counts = vec![0usize; SHARD_COUNT + 1];
        for (msisdn, _) in entries {
            counts[shard_of(hash(msisdn.as_u64(), seed)) + 1] += 1;
        }
        for i in 1..counts.len() {
            counts[i] += counts[i - 1];
        }
        let mut next = counts.clone();
        let mut by_shard = vec![EMPTY; entries.len()];
        for &(msisdn, network) in entries {
            let s = shard_of(hash(msisdn.as_u64(), seed));
            by_shard[next[s]] = pack(msisdn, network);
            next[s] += 1;
        }
        // One zeroed block for all shards, advised to use huge pages before
        // its first write (calloc'd memory is not touched until then).
        let total: usize = (0..SHARD_COUNT)
            .map(|s| match counts[s + 1] - counts[s] {
                0 => 0,
                n => buckets_for(n),
            })
            .sum();
        let mut buckets: Vec<Bucket> = Vec::with_capacity(total);
        advise_huge_pages(&mut buckets);
        buckets.resize(total, EMPTY_BUCKET);
        let mut ranges: Vec<(usize, u32)> = Vec::with_capacity(SHARD_COUNT);
        let mut start = 0usize;
        for s in 0..SHARD_COUNT {
            let entries = &by_shard[counts[s]..counts[s + 1]];
            let len = if entries.is_empty() {
                0
            } else {
                buckets_for(entries.len())
            };
            fill_shard(entries, seed, &mut buckets[start..start + len])?;
            ranges.push((start, len as u32));
            start += len;
        }
        let block = Arc::new(Block {
            buckets: buckets.into_boxed_slice(),
        });
        let empty = Shard::own(vec![EMPTY_BUCKET]);
        let shard = |s: usize| match ranges[s] {
            (_, 0) => empty.clone(),
            (start, len) => Shard {
                block: block.clone(),
                start,
                len,
            },
        };
        let nodes: [Arc<Node>; FANOUT] = std::array::from_fn(|n| {
            Arc::new(Node {
                shards: std::array::from_fn(|k| shard(n * FANOUT + k)),
            })
        });
        Ok(PortedMap {
            root: Arc::new(Root { nodes }),
            len: entries.len(),
            ids: PhantomData,
            seed,
        })
    }

    #[inline]
    fn shard(&self, h: u64) -> &Shard {
        let s = shard_of(h);
        &self.root.nodes[s >> FANOUT_BITS].shards[s & (FANOUT - 1)]
    }

    /// The id `msisdn` is mapped to (the network it is ported to), if any.
    #[inline]
    pub fn get(&self, msisdn: Msisdn) -> Option<I> {
        let key = msisdn.as_u64();
        let h = hash(key, self.seed);
        let buckets = self.shard(h).buckets();
        let len = buckets.len();
        let mut b = home_bucket(h, len);
        loop {
            // Branch-free scan of the whole bucket (the compiler vectorises
            // it): a data-dependent early exit would mispredict on almost
            // every lookup and stall the prefetch pipeline of `lookup_batch`.
            let mut found = EMPTY;
            let mut has_empty = false;
            for &slot in &buckets[b].0 {
                found |= if slot >> NETWORK_BITS == key {
                    slot
                } else {
                    EMPTY
                };
                has_empty |= slot == EMPTY;
            }
            if found != EMPTY {
                return Some(unpack(found));
            }
            if has_empty {
                return None;
            }
            b += 1;
            if b == len {
                b = 0;
            }
        }
    }

    /// Hints the bucket a [`get`](Self::get) of `msisdn` reads first.
    #[inline]
    pub(crate) fn prefetch(&self, msisdn: Msisdn) {
        let h = hash(msisdn.as_u64(), self.seed);
        let buckets = self.shard(h).buckets();
        super::prefetch(&buckets[home_bucket(h, buckets.len())]);
    }

    /// A new map with `changes` applied in order (a later change to the same
    /// MSISDN wins). Only the touched shards are rebuilt.
    pub fn apply(&self, changes: &[PortedChange<I>]) -> PortedMap<I> {
        let seed = self.seed;
        let mut ordered: Vec<(usize, usize)> = changes
            .iter()
            .enumerate()
            .map(|(i, (m, _))| (shard_of(hash(m.as_u64(), seed)), i))
            .collect();
        ordered.sort_unstable();
        let empty = Shard::own(vec![EMPTY_BUCKET]);
        let mut root: Root = (*self.root).clone();
        let mut len = self.len;
        let mut start = 0;
        while start < ordered.len() {
            let s = ordered[start].0;
            let end = start + ordered[start..].partition_point(|&(x, _)| x == s);
            let (n, k) = (s >> FANOUT_BITS, s & (FANOUT - 1));
            let old = &root.nodes[n].shards[k];
            let group = &ordered[start..end];
            let mut entries: Vec<u64> = shard_entries(old).collect();
            let before = entries.len();
            if group.len() <= 8 {
                for &(_, change) in group {
                    let (msisdn, network) = changes[change];
                    let key = msisdn.as_u64();
                    let existing = entries.iter().position(|&e| e >> NETWORK_BITS == key);
                    match (existing, network) {
                        (Some(at), Some(network)) => entries[at] = pack(msisdn, network),
                        (Some(at), None) => {
                            entries.swap_remove(at);
                        }
                        (None, Some(network)) => entries.push(pack(msisdn, network)),
                        (None, None) => {}
                    }
                }
            } else {
                // Large batches: key-ordered merge instead of a scan per change.
                let mut by_key: std::collections::BTreeMap<u64, u64> =
                    entries.iter().map(|&e| (e >> NETWORK_BITS, e)).collect();
                for &(_, change) in group {
                    let (msisdn, network) = changes[change];
                    match network {
                        Some(network) => by_key.insert(msisdn.as_u64(), pack(msisdn, network)),
                        None => by_key.remove(&msisdn.as_u64()),
                    };
                }
                entries = by_key.into_values().collect();
            }
            len = len + entries.len() - before;
            let shard = build_shard(&entries, seed, &empty);
            Arc::make_mut(&mut root.nodes[n]).shards[k] = shard;
            start = end;
        }
        PortedMap {
            root: Arc::new(root),
            len,
            ids: PhantomData,
            seed,
        }
    }

    /// Number of ported numbers.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no number is ported.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (Msisdn, I)> + '_ {
        self.root
            .nodes
            .iter()
            .flat_map(|node| node.shards.iter())
            .flat_map(shard_entries)
            .map(|e| {
                (
                    Msisdn::from_u64(e >> NETWORK_BITS).unwrap_or(Msisdn::MIN),
                    unpack(e),
                )
            })
    }

    /// Bytes of slot blocks this map keeps alive but no shard of it uses:
    /// the room of bulk-loaded shards that updates have since rebuilt.
    pub fn dead_bytes(&self) -> usize {
        let mut used: Vec<(*const Block, usize, usize)> = self
            .root
            .nodes
            .iter()
            .flat_map(|node| node.shards.iter())
            .map(|s| (Arc::as_ptr(&s.block), s.block.buckets.len(), s.len as usize))
            .collect();
        used.sort_unstable();
        let mut dead = 0;
        for block in used.chunk_by(|a, b| a.0 == b.0) {
            let live: usize = block.iter().map(|&(_, _, len)| len).sum();
            dead += block[0].1.saturating_sub(live) * std::mem::size_of::<Bucket>();
        }
        dead
    }

    /// The same entries rebuilt into one fresh block, dropping the dead room
    /// updates left behind ([`dead_bytes`](Self::dead_bytes)). A bulk build:
    /// run by a writer, off the readers' path.
    pub fn compacted(&self) -> PortedMap<I> {
        let entries: Vec<(Msisdn, I)> = self.iter().collect();
        // Entries of one map are distinct, so the build cannot fail.
        PortedMap::build(&entries, self.seed).unwrap_or_else(|_| self.clone())
    }

    /// Bytes of memory this map holds: slot blocks (each counted once),
    /// the two pointer levels and their headers.
    pub fn memory_bytes(&self) -> usize {
        let arc_header = 2 * std::mem::size_of::<usize>();
        let mut blocks: Vec<(*const Block, usize)> = self
            .root
            .nodes
            .iter()
            .flat_map(|node| node.shards.iter())
            .map(|s| (Arc::as_ptr(&s.block), s.block.buckets.len()))
            .collect();
        blocks.sort_unstable();
        blocks.dedup();
        let slot_bytes: usize = blocks
            .iter()
            .map(|&(_, len)| {
                len * std::mem::size_of::<Bucket>() + arc_header + std::mem::size_of::<Block>()
            })
            .sum();
        slot_bytes
            + FANOUT * (std::mem::size_of::<Node>() + arc_header)
            + std::mem::size_of::<Root>()
            + arc_header
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(v: u64) -> Msisdn {
        Msisdn::from_u64(v).unwrap()
    }

    #[test]
    fn set_override_and_remove() {
        let map: PortedMap = PortedMap::empty(7);
        let a = map.apply(&[(m(447700900123), Some(NetworkId(5)))]);
        assert_eq!(a.get(m(447700900123)), Some(NetworkId(5)));
        assert_eq!(
            map.get(m(447700900123)),
            None,
            "the old version is untouched"
        );
        let b = a.apply(&[
            (m(447700900123), Some(NetworkId(6))),
            (m(1), Some(NetworkId(1))),
        ]);
        assert_eq!(b.get(m(447700900123)), Some(NetworkId(6)));
        assert_eq!(b.len(), 2);
        let c = b.apply(&[(m(447700900123), None), (m(2), None)]);
        assert_eq!(c.get(m(447700900123)), None);
        assert_eq!(c.get(m(1)), Some(NetworkId(1)));
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn later_change_to_the_same_number_wins() {
        let map: PortedMap = PortedMap::empty(1).apply(&[
            (m(99), Some(NetworkId(1))),
            (m(99), None),
            (m(99), Some(NetworkId(3))),
        ]);
        assert_eq!(map.get(m(99)), Some(NetworkId(3)));
        assert_eq!(map.len(), 1);
    }

    #[test]
    fn build_rejects_duplicates_and_agrees_with_apply() {
        let entries: Vec<(Msisdn, NetworkId)> = (1..5000u64)
            .map(|i| (m(33_600_000_000 + i * 7919), NetworkId((i % 100) as u16)))
            .collect();
        let built = PortedMap::build(&entries, 42).unwrap();
        let changes: Vec<PortedChange> = entries.iter().map(|&(k, v)| (k, Some(v))).collect();
        let applied = PortedMap::empty(42).apply(&changes);
        for &(k, v) in &entries {
            assert_eq!(built.get(k), Some(v));
            assert_eq!(applied.get(k), Some(v));
        }
        assert_eq!(built.iter().count(), entries.len());
        let mut dup = entries.clone();
        dup.push(entries[10]);
        assert_eq!(
            PortedMap::build(&dup, 42).unwrap_err(),
            DuplicateMsisdn(entries[10].0)
        );
    }

    #[test]
    fn updates_leave_dead_room_that_compaction_gives_back() {
        let entries: Vec<(Msisdn, NetworkId)> = (1..20_000u64)
            .map(|i| (m(33_600_000_000 + i * 7919), NetworkId(1)))
            .collect();
        let built = PortedMap::build(&entries, 42).unwrap();
        assert_eq!(built.dead_bytes(), 0);
        let changes: Vec<PortedChange> = entries
            .iter()
            .step_by(2)
            .map(|&(k, _)| (k, Some(NetworkId(2))))
            .collect();
        let updated = built.apply(&changes);
        assert!(
            updated.dead_bytes() > 0,
            "rebuilt shards left their bulk room"
        );
        let compacted = updated.compacted();
        assert_eq!(compacted.dead_bytes(), 0);
        assert!(compacted.memory_bytes() < updated.memory_bytes());
        for (i, &(k, _)) in entries.iter().enumerate() {
            let expected = NetworkId(if i % 2 == 0 { 2 } else { 1 });
            assert_eq!(compacted.get(k), Some(expected));
        }
    }

    #[test]
    fn the_largest_msisdn_and_network_id_pack_without_loss() {
        let top = NetworkId((PORTED_NETWORKS_MAX - 1) as u16);
        let map: PortedMap = PortedMap::empty(3).apply(&[(Msisdn::MAX, Some(top))]);
        assert_eq!(map.get(Msisdn::MAX), Some(top));
    }
}
