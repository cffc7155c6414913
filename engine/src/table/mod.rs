//! The OGPS numbering table (step 5 of the flow): which network an MSISDN
//! belongs to, by longest-prefix match over operator prefixes with exact
//! ported-number overrides that win over the prefixes.
//!
//! Concurrency contract:
//! - A [`TableVersion`] is immutable. Lookups on it never lock, wait or
//!   allocate.
//! - [`NumberingTable`] publishes versions atomically ([`arc_swap`]): a reader
//!   holds one version for as long as it likes and sees either the old or the
//!   new one, never a mix. A version is freed when the last reader drops it.
//! - Writers are serialised among themselves (a mutex only writers take);
//!   readers never touch it. A ported-number change copies only the touched
//!   shards of the override map (see [`ported`]), so it costs microseconds
//!   even with ten million overrides.
//! - Every published version has a number, strictly increasing, whose low 32
//!   bits the OGPS stamps on the queries it forwards (`route_version`, wire
//!   §5.1).
//! - Memory of a replaced version is freed on a writer's thread: the writer
//!   keeps replaced versions until no reader holds them ([`NumberingTable::reclaim`]),
//!   so a reader letting go of one only decrements a count.
//! - [`TableReader`] caches the current version per thread: its per-lookup
//!   cost is one atomic load of the version pointer (arc-swap's `Cache`).
//! - Known limit: the ported numbers of a bulk load share one slot block; a
//!   shard rebuilt by an update moves to a block of its own, and the bulk
//!   block is freed only when no version uses any of its shards. After
//!   updates have touched most shards, override memory approaches twice the
//!   bulk figure until compacted ([`NumberingTable::compact_ported`], a
//!   writer-side rebuild readers do not wait for) or the next bulk load.

mod load;
pub mod ported;
pub mod prefix;
pub mod versioned;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use presence_codec::Msisdn;

pub use versioned::{Numbered, Reader, Versioned};

pub use load::{LoadError, RowError, ROW_LEN_MAX};
pub use ported::{PortedChange, PortedMap, PORTED_NETWORKS_MAX};
pub use prefix::{Prefix, PrefixIndex};

/// A network, interned: index into the version's [`NetworkNames`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NetworkId(pub u16);

/// What a prefix table maps numbers to: a network in the numbering table, a
/// presence server in the HSS. Contract: every id's index is below
/// [`PORTED_NETWORKS_MAX`] (the ported map packs it in 14 bits), and
/// `from_index(id.index()) == id`.
pub trait TableId:
    Copy + Eq + Ord + std::hash::Hash + std::fmt::Debug + Send + Sync + 'static
{
    /// The id's number.
    fn index(self) -> u16;
    /// The id numbered `index`.
    fn from_index(index: u16) -> Self;
}

impl TableId for NetworkId {
    fn index(self) -> u16 {
        self.0
    }
    fn from_index(index: u16) -> NetworkId {
        NetworkId(index)
    }
}

/// Network names and their ids. Append-only across versions: an id, once
/// given, names the same network in every later version.
#[derive(Debug, Clone, Default)]
pub struct NetworkNames {
    names: Vec<Arc<str>>,
    ids: HashMap<Arc<str>, NetworkId>,
}

/// Why a network name cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Empty name.
    #[error("empty network name")]
    Empty,
    /// Longer than 64 bytes.
    #[error("network name longer than 64 bytes")]
    TooLong,
    /// A character outside `a-z A-Z 0-9 . - _`.
    #[error("network name has a character other than letters, digits, '.', '-', '_'")]
    BadCharacter,
    /// More distinct networks than ids.
    #[error("more than {PORTED_NETWORKS_MAX} distinct networks")]
    TooManyNetworks,
}

/// Longest network name accepted.
pub const NETWORK_NAME_LEN_MAX: usize = 64;

impl NetworkNames {
    /// The id of `name`, if known.
    pub fn id(&self, name: &str) -> Option<NetworkId> {
        self.ids.get(name).copied()
    }

    /// The name of `id`.
    pub fn name(&self, id: NetworkId) -> &str {
        self.names.get(usize::from(id.0)).map_or("", |n| n)
    }

    /// The id of `name`, adding it if new.
    pub fn intern(&mut self, name: &str) -> Result<NetworkId, NameError> {
        if let Some(id) = self.id(name) {
            return Ok(id);
        }
        validate_name(name)?;
        if self.names.len() >= PORTED_NETWORKS_MAX {
            return Err(NameError::TooManyNetworks);
        }
        let id = NetworkId(self.names.len() as u16);
        let name: Arc<str> = Arc::from(name);
        self.names.push(name.clone());
        self.ids.insert(name, id);
        Ok(id)
    }

    /// Number of networks.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

fn validate_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > NETWORK_NAME_LEN_MAX {
        return Err(NameError::TooLong);
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    {
        return Err(NameError::BadCharacter);
    }
    Ok(())
}

/// Hints the CPU to fetch the cache line holding `value`; a no-op where the
/// target has no prefetch instruction. Never faults, whatever the address.
/// (Public for the load harness, which stages its own draws the same way.)
#[inline(always)]
pub fn prefetch<T>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        // SAFETY: prefetch is a hint: it reads nothing architecturally and
        // cannot fault; the pointer comes from a live reference anyway.
        unsafe { _mm_prefetch::<_MM_HINT_T0>((value as *const T).cast::<i8>()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}

/// One immutable, numbered version of the table.
#[derive(Debug, Clone)]
pub struct TableVersion {
    version: u64,
    prefixes: Arc<PrefixIndex>,
    ported: PortedMap,
    names: Arc<NetworkNames>,
}

impl Numbered for TableVersion {
    fn number(&self) -> u64 {
        self.version
    }
    fn set_number(&mut self, number: u64) {
        self.version = number;
    }
}

/// How many lookups ahead [`lookup_batch`] prefetches: enough misses in
/// flight to cover memory latency, few enough not to queue behind the
/// core's line-fill buffers.
pub const PREFETCH_DISTANCE: usize = 16;

/// The batch size the node and `route` use for [`TableVersion::lookup_batch`].
pub const LOOKUP_BATCH_MAX: usize = 64;

/// The id of `msisdn`: its single-number override if there is one, else its
/// longest matching prefix's, else none. (The numbering table's and the
/// HSS's lookup.)
#[inline]
pub fn lookup<I: TableId>(
    prefixes: &PrefixIndex<I>,
    overrides: &PortedMap<I>,
    msisdn: Msisdn,
) -> Option<I> {
    if !overrides.is_empty() {
        if let Some(id) = overrides.get(msisdn) {
            return Some(id);
        }
    }
    prefixes.lookup(msisdn)
}

/// [`lookup`] of many MSISDNs: `out[i]` is the id of `msisdns[i]` (only the
/// first `min(msisdns.len(), out.len())` are looked up).
///
/// Software-pipelined: while resolving number `i` it prefetches the memory
/// number `i + PREFETCH_DISTANCE` will read, so about that many cache misses
/// are in flight at once instead of one at a time (the override map is far
/// larger than the caches; the prefix index fits in them).
pub fn lookup_batch<I: TableId>(
    prefixes: &PrefixIndex<I>,
    overrides: &PortedMap<I>,
    msisdns: &[Msisdn],
    out: &mut [Option<I>],
) {
    let n = msisdns.len().min(out.len());
    let (msisdns, out) = (&msisdns[..n], &mut out[..n]);
    if overrides.is_empty() {
        // The prefix index fits in the caches: prefetching only costs.
        for (result, &msisdn) in out.iter_mut().zip(msisdns) {
            *result = prefixes.lookup(msisdn);
        }
        return;
    }
    for &msisdn in msisdns.iter().take(PREFETCH_DISTANCE) {
        overrides.prefetch(msisdn);
        prefixes.prefetch(msisdn);
    }
    for (i, result) in out.iter_mut().enumerate() {
        if let Some(&ahead) = msisdns.get(i + PREFETCH_DISTANCE) {
            overrides.prefetch(ahead);
            prefixes.prefetch(ahead);
        }
        *result = lookup(prefixes, overrides, msisdns[i]);
    }
}

impl TableVersion {
    /// The version number (1 for the first published table).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// B's network: the ported override if there is one, else the longest
    /// matching prefix, else none.
    #[inline]
    pub fn lookup(&self, msisdn: Msisdn) -> Option<NetworkId> {
        lookup(&self.prefixes, &self.ported, msisdn)
    }

    /// Many lookups at once, with prefetching ([`lookup_batch`]).
    pub fn lookup_batch(&self, msisdns: &[Msisdn], out: &mut [Option<NetworkId>]) {
        lookup_batch(&self.prefixes, &self.ported, msisdns, out);
    }

    /// The network names of this version.
    pub fn names(&self) -> &NetworkNames {
        &self.names
    }

    /// The name of a network id.
    pub fn network_name(&self, id: NetworkId) -> &str {
        self.names.name(id)
    }

    /// The prefix index.
    pub fn prefixes(&self) -> &PrefixIndex {
        &self.prefixes
    }

    /// The ported-number overrides.
    pub fn ported(&self) -> &PortedMap {
        &self.ported
    }
}

/// The live table: the current version, replaced atomically by updates.
#[derive(Debug)]
pub struct NumberingTable {
    versions: Versioned<TableVersion>,
}

/// Why an update was refused; the table is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpdateError {
    /// The network name is not usable.
    #[error("network {name:?}: {reason}")]
    BadNetwork {
        /// The name given.
        name: String,
        /// Why.
        reason: NameError,
    },
    /// A whole new table would give an existing network id to another network.
    #[error("the new table renames existing network ids")]
    NamesChanged,
}

impl NumberingTable {
    /// A table whose first version (number 1) holds these prefixes and
    /// ported numbers.
    pub fn new(prefixes: PrefixIndex, ported: PortedMap, names: NetworkNames) -> NumberingTable {
        NumberingTable {
            versions: Versioned::new(TableVersion {
                version: 1,
                prefixes: Arc::new(prefixes),
                ported,
                names: Arc::new(names),
            }),
        }
    }

    /// Loads the prefix table CSV and, optionally, a ported-numbers CSV.
    pub fn load(
        prefixes_csv: &Path,
        ported_csv: Option<&Path>,
    ) -> Result<NumberingTable, LoadError> {
        let loaded = load::load_files(prefixes_csv, ported_csv, None)?;
        Ok(NumberingTable::new(
            loaded.prefixes,
            loaded.ported,
            loaded.names,
        ))
    }

    /// The current version, to hold as long as needed.
    pub fn snapshot(&self) -> Arc<TableVersion> {
        self.versions.snapshot()
    }

    /// A per-thread reader that caches the current version. It shares the
    /// table's publication point, so it may outlive this handle.
    pub fn reader(&self) -> TableReader {
        self.versions.reader()
    }

    /// Frees replaced versions that no reader holds any more. Publishing does
    /// this too; call it now and then when updates are rare, so a version a
    /// reader has just let go of does not wait for the next update.
    pub fn reclaim(&self) {
        self.versions.reclaim();
    }

    /// Applies ported-number changes by network name, all in one new version.
    /// `None` removes the override.
    pub fn update_ported(&self, changes: &[(Msisdn, Option<&str>)]) -> Result<u64, UpdateError> {
        self.versions.publish(|old| {
            let mut names: Option<NetworkNames> = None;
            let mut resolved: Vec<PortedChange> = Vec::with_capacity(changes.len());
            for &(msisdn, network) in changes {
                let id = match network {
                    None => None,
                    Some(name) => Some(match old.names.id(name) {
                        Some(id) => id,
                        None => names
                            .get_or_insert_with(|| (*old.names).clone())
                            .intern(name)
                            .map_err(|reason| UpdateError::BadNetwork {
                                name: name.to_owned(),
                                reason,
                            })?,
                    }),
                };
                resolved.push((msisdn, id));
            }
            Ok(TableVersion {
                version: 0,
                prefixes: old.prefixes.clone(),
                ported: old.ported.apply(&resolved),
                names: names.map_or_else(|| old.names.clone(), Arc::new),
            })
        })
    }

    /// Rebuilds the ported-number overrides into one compact block if more
    /// than `dead_fraction` of their memory is room left behind by updates
    /// (see the module's known limit), and publishes that as the next
    /// version. Readers go on with the current version meanwhile; the cost is
    /// a bulk build on the calling thread. Returns the new version, or `None`
    /// when there was too little to gain.
    pub fn compact_ported(&self, dead_fraction: f64) -> Option<u64> {
        self.versions
            .publish(|old| {
                let dead = old.ported.dead_bytes() as f64;
                if dead <= dead_fraction * old.ported.memory_bytes() as f64 {
                    return Err(());
                }
                Ok(TableVersion {
                    version: 0,
                    prefixes: old.prefixes.clone(),
                    ported: old.ported.compacted(),
                    names: old.names.clone(),
                })
            })
            .ok()
    }

    /// Ports one number to a network (by name).
    pub fn set_ported(&self, msisdn: Msisdn, network: &str) -> Result<u64, UpdateError> {
        self.update_ported(&[(msisdn, Some(network))])
    }

    /// Removes one number's override: it follows the prefixes again.
    pub fn remove_ported(&self, msisdn: Msisdn) -> Result<u64, UpdateError> {
        self.update_ported(&[(msisdn, None)])
    }

    /// Replaces the whole table with one loaded from files. All or nothing:
    /// on any error the current table stays in place. Network ids already
    /// given keep their meaning.
    pub fn reload(&self, prefixes_csv: &Path, ported_csv: Option<&Path>) -> Result<u64, LoadError> {
        // Loaded under the writers' lock, on top of the current names, so no
        // concurrent update can hand an id to another network meanwhile.
        self.versions.publish(|old| {
            let loaded = load::load_files(prefixes_csv, ported_csv, Some(old.names()))?;
            Ok(TableVersion {
                version: 0,
                prefixes: Arc::new(loaded.prefixes),
                ported: loaded.ported,
                names: Arc::new(loaded.names),
            })
        })
    }

    /// Publishes a whole new table as the next version. `names` must extend
    /// the current version's names (every id keeps its network), else
    /// nothing changes.
    pub fn replace(
        &self,
        prefixes: PrefixIndex,
        ported: PortedMap,
        names: NetworkNames,
    ) -> Result<u64, UpdateError> {
        self.versions.publish(|old| {
            let current = old.names();
            let keeps_ids = names.len() >= current.len()
                && (0..current.len()).all(|i| {
                    let id = NetworkId(i as u16);
                    names.name(id) == current.name(id)
                });
            if !keeps_ids {
                return Err(UpdateError::NamesChanged);
            }
            Ok(TableVersion {
                version: 0,
                prefixes: Arc::new(prefixes),
                ported,
                names: Arc::new(names),
            })
        })
    }
}

/// A numbering-table reader for one thread.
pub type TableReader = Reader<TableVersion>;

impl Reader<TableVersion> {
    /// [`TableVersion::lookup`] on the current version.
    #[inline]
    pub fn lookup(&mut self, msisdn: Msisdn) -> Option<NetworkId> {
        self.current().lookup(msisdn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(text: &str) -> Msisdn {
        text.parse().unwrap()
    }

    fn table() -> NumberingTable {
        let mut names = NetworkNames::default();
        let uk = names.intern("uk-mobile.gb").unwrap();
        let uk2 = names.intern("uk-other.gb").unwrap();
        let prefixes = PrefixIndex::build(&[
            (Prefix::parse("447").unwrap(), uk),
            (Prefix::parse("4478").unwrap(), uk2),
        ]);
        NumberingTable::new(prefixes, PortedMap::empty(9), names)
    }

    #[test]
    fn ported_number_wins_over_prefix_and_is_removed_again() {
        let table = table();
        let mut reader = table.reader();
        let number = m("447712345678");
        let v1 = reader.current().version();
        assert_eq!(v1, 1);
        let v = reader.current();
        assert_eq!(v.network_name(v.lookup(number).unwrap()), "uk-mobile.gb");
        let v2 = table.set_ported(number, "uk-other.gb").unwrap();
        assert_eq!(v2, 2);
        assert_eq!(reader.current().version(), 2);
        let v = reader.current();
        assert_eq!(v.network_name(v.lookup(number).unwrap()), "uk-other.gb");
        // A brand-new network name is interned in the new version.
        table.set_ported(number, "mvno.gb").unwrap();
        let v = reader.current();
        assert_eq!(v.network_name(v.lookup(number).unwrap()), "mvno.gb");
        table.remove_ported(number).unwrap();
        let v = reader.current();
        assert_eq!(v.version(), 4);
        assert_eq!(v.network_name(v.lookup(number).unwrap()), "uk-mobile.gb");
    }

    #[test]
    fn compaction_publishes_the_same_answers_in_less_memory() {
        let mut names = NetworkNames::default();
        let a = names.intern("a.gb").unwrap();
        names.intern("b.gb").unwrap();
        let numbers: Vec<Msisdn> = (0..5000u64)
            .map(|i| Msisdn::from_u64(447_000_000_000 + i * 13).unwrap())
            .collect();
        let entries: Vec<(Msisdn, NetworkId)> = numbers.iter().map(|&n| (n, a)).collect();
        let table = NumberingTable::new(
            PrefixIndex::build(&[]),
            PortedMap::build(&entries, 3).unwrap(),
            names,
        );
        assert_eq!(table.compact_ported(0.1), None, "nothing dead yet");
        let changes: Vec<(Msisdn, Option<&str>)> = numbers
            .iter()
            .step_by(2)
            .map(|&n| (n, Some("b.gb")))
            .collect();
        table.update_ported(&changes).unwrap();
        let before = table.snapshot();
        assert!(before.ported().dead_bytes() > 0);
        assert_eq!(table.compact_ported(0.1), Some(3));
        let after = table.snapshot();
        assert_eq!(after.ported().dead_bytes(), 0);
        assert!(after.ported().memory_bytes() < before.ported().memory_bytes());
        for n in &numbers {
            assert_eq!(after.lookup(*n), before.lookup(*n));
        }
    }

    #[test]
    fn a_held_snapshot_keeps_its_version() {
        let table = table();
        let before = table.snapshot();
        table.set_ported(m("447712345678"), "uk-other.gb").unwrap();
        assert_eq!(before.version(), 1);
        assert_eq!(
            before.network_name(before.lookup(m("447712345678")).unwrap()),
            "uk-mobile.gb"
        );
        assert_eq!(table.snapshot().version(), 2);
    }

    #[test]
    fn bad_network_name_is_refused_and_nothing_changes() {
        let table = table();
        let err = table
            .update_ported(&[
                (m("447712345678"), Some("ok.gb")),
                (m("447712345679"), Some("bad name")),
            ])
            .unwrap_err();
        assert_eq!(
            err,
            UpdateError::BadNetwork {
                name: "bad name".into(),
                reason: NameError::BadCharacter
            }
        );
        let v = table.snapshot();
        assert_eq!(v.version(), 1);
        assert_eq!(v.ported().len(), 0);
    }

    #[test]
    fn batch_lookup_agrees_with_single_lookups() {
        let table = table();
        table.set_ported(m("447812345678"), "uk-mobile.gb").unwrap();
        let v = table.snapshot();
        let numbers: Vec<Msisdn> = (0..200u64)
            .map(|i| m(&format!("4478123456{:02}", i % 100)))
            .chain([m("1"), m("447")])
            .collect();
        let mut out = vec![None; numbers.len()];
        v.lookup_batch(&numbers, &mut out);
        for (n, o) in numbers.iter().zip(&out) {
            assert_eq!(*o, v.lookup(*n));
        }
    }
}
