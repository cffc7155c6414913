//! HSS functionality (steps 7–8): which presence server holds a subscriber.
//!
//! Ranges of numbers (prefixes) are assigned to presence servers, and single
//! subscribers can be moved; both change at run time while lookups continue.
//! It is the numbering table's machinery with presence servers in place of
//! networks: lookups read an immutable version and never block; a single move
//! is a copy-on-write override; a range change rebuilds the small range index.
//! That is what lets a network add presence servers and move subscribers
//! without telling any other network (the IGPS hides it).

use std::sync::{Arc, Mutex};

use presence_codec::Msisdn;

use crate::table::{
    lookup, lookup_batch, Numbered, PortedMap, Prefix, PrefixIndex, Reader, TableId, Versioned,
};

/// A presence server of this network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PsId(pub u16);

/// Most presence servers one network's HSS can name.
pub const PS_PER_NETWORK_MAX: u16 = 256;

impl TableId for PsId {
    fn index(self) -> u16 {
        self.0
    }
    fn from_index(index: u16) -> PsId {
        PsId(index)
    }
}

/// Why an HSS change was refused; nothing changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HssError {
    /// A presence server number at or above [`PS_PER_NETWORK_MAX`].
    #[error("presence server {0} is beyond the {PS_PER_NETWORK_MAX} a network may have")]
    NoSuchServer(u16),
}

/// One immutable version of the HSS: ranges of numbers assigned to presence
/// servers, and single subscribers moved off their range's server.
#[derive(Debug, Clone)]
pub struct HssVersion {
    number: u64,
    ranges: Arc<PrefixIndex<PsId>>,
    moves: PortedMap<PsId>,
    /// The presence server that answers for numbers outside every range:
    /// the lowest one any range names (see [`HssVersion::decoy`]).
    decoy: Option<PsId>,
}

impl Numbered for HssVersion {
    fn number(&self) -> u64 {
        self.number
    }
    fn set_number(&mut self, number: u64) {
        self.number = number;
    }
}

impl HssVersion {
    /// Steps 7–8: the presence server of `msisdn`, if this network has one.
    #[inline]
    pub fn lookup(&self, msisdn: Msisdn) -> Option<PsId> {
        lookup(&self.ranges, &self.moves, msisdn)
    }

    /// Many lookups at once, with prefetching ([`crate::table::lookup_batch`]).
    pub fn lookup_batch(&self, msisdns: &[Msisdn], out: &mut [Option<PsId>]) {
        lookup_batch(&self.ranges, &self.moves, msisdns, out);
    }

    /// The version number.
    pub fn number(&self) -> u64 {
        self.number
    }

    /// The presence server a query about a number outside every range is
    /// sent to anyway, to be answered as an unknown subscriber is: the
    /// same work, the same answer, the same time, so nobody learns where
    /// the ranges end. `None` when no range names a server.
    pub fn decoy(&self) -> Option<PsId> {
        self.decoy
    }
}

fn decoy_of(ranges: &[(Prefix, PsId)]) -> Option<PsId> {
    ranges.iter().map(|(_, ps)| *ps).min()
}

/// MSISDN → presence server, shared by the nodes of a network.
#[derive(Debug)]
pub struct Hss {
    versions: Versioned<HssVersion>,
    /// Range assignments, kept to rebuild the range index on a change
    /// (writers only; every writer holds this lock, so a range change built
    /// from a snapshot cannot undo a move published meanwhile).
    ranges: Mutex<Vec<(Prefix, PsId)>>,
}

/// Hash seed of the moved-subscriber map.
const MOVES_SEED: u64 = 0x4853_5300;

impl Hss {
    /// An HSS assigning these ranges (servers beyond the limit are left out).
    pub fn new(ranges: &[(Prefix, PsId)]) -> Hss {
        let ranges: Vec<(Prefix, PsId)> = ranges
            .iter()
            .copied()
            .filter(|(_, ps)| ps.0 < PS_PER_NETWORK_MAX)
            .collect();
        Hss {
            versions: Versioned::new(HssVersion {
                number: 1,
                ranges: Arc::new(PrefixIndex::build(&ranges)),
                moves: PortedMap::empty(MOVES_SEED),
                decoy: decoy_of(&ranges),
            }),
            ranges: Mutex::new(ranges),
        }
    }

    /// A reader for one thread.
    pub fn reader(&self) -> HssReader {
        self.versions.reader()
    }

    /// The current version.
    pub fn snapshot(&self) -> Arc<HssVersion> {
        self.versions.snapshot()
    }

    /// Steps 7–8: the presence server of `msisdn`, if this network has one.
    pub fn lookup(&self, msisdn: Msisdn) -> Option<PsId> {
        self.versions.snapshot().lookup(msisdn)
    }

    /// Moves one subscriber to `ps`.
    pub fn move_subscriber(&self, msisdn: Msisdn, ps: PsId) -> Result<u64, HssError> {
        if ps.0 >= PS_PER_NETWORK_MAX {
            return Err(HssError::NoSuchServer(ps.0));
        }
        let _writers = self.ranges.lock().unwrap_or_else(|p| p.into_inner());
        self.versions.publish(|old| {
            Ok(HssVersion {
                number: 0,
                ranges: old.ranges.clone(),
                moves: old.moves.apply(&[(msisdn, Some(ps))]),
                decoy: old.decoy,
            })
        })
    }

    /// Assigns a whole range to `ps` (adding or replacing that prefix). Single
    /// subscribers moved earlier stay where they were moved.
    pub fn assign_range(&self, prefix: Prefix, ps: PsId) -> Result<u64, HssError> {
        if ps.0 >= PS_PER_NETWORK_MAX {
            return Err(HssError::NoSuchServer(ps.0));
        }
        let mut ranges = self.ranges.lock().unwrap_or_else(|p| p.into_inner());
        match ranges.iter_mut().find(|(p, _)| *p == prefix) {
            Some(entry) => entry.1 = ps,
            None => ranges.push((prefix, ps)),
        }
        self.publish_ranges(&ranges)
    }

    /// Replaces every range at once (a reload): one index build, published
    /// atomically. Single moves ([`Hss::move_subscriber`]) are kept.
    pub fn replace_ranges(&self, new: &[(Prefix, PsId)]) -> Result<u64, HssError> {
        if let Some((_, ps)) = new.iter().find(|(_, ps)| ps.0 >= PS_PER_NETWORK_MAX) {
            return Err(HssError::NoSuchServer(ps.0));
        }
        let mut ranges = self.ranges.lock().unwrap_or_else(|p| p.into_inner());
        *ranges = new.to_vec();
        self.publish_ranges(&ranges)
    }

    /// A new HSS starting from this one's current ranges and moves: a
    /// candidate to change and provision against before it is published
    /// ([`Hss::publish`]), so subscribers move before queries are routed to
    /// their new server.
    pub fn fork(&self) -> Hss {
        let ranges = self
            .ranges
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let current = self.versions.snapshot();
        Hss {
            versions: Versioned::new(HssVersion {
                number: 1,
                ranges: current.ranges.clone(),
                moves: current.moves.clone(),
                decoy: current.decoy,
            }),
            ranges: Mutex::new(ranges),
        }
    }

    /// Publishes `candidate`'s current ranges and moves as this HSS's next
    /// version.
    pub fn publish(&self, candidate: &Hss) -> u64 {
        let ranges = candidate
            .ranges
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let next = candidate.versions.snapshot();
        let mut mine = self.ranges.lock().unwrap_or_else(|p| p.into_inner());
        *mine = ranges;
        let published: Result<u64, HssError> = self.versions.publish(|_| {
            Ok(HssVersion {
                number: 0,
                ranges: next.ranges.clone(),
                moves: next.moves.clone(),
                decoy: next.decoy,
            })
        });
        published.unwrap_or(0)
    }

    fn publish_ranges(&self, ranges: &[(Prefix, PsId)]) -> Result<u64, HssError> {
        let index = Arc::new(PrefixIndex::build(ranges));
        let decoy = decoy_of(ranges);
        self.versions.publish(|old| {
            Ok(HssVersion {
                number: 0,
                ranges: index,
                moves: old.moves.clone(),
                decoy,
            })
        })
    }
}

/// A per-thread HSS reader: one atomic load per lookup.
pub type HssReader = Reader<HssVersion>;

impl Reader<HssVersion> {
    /// Steps 7–8 on the current version.
    #[inline]
    pub fn lookup(&mut self, msisdn: Msisdn) -> Option<PsId> {
        self.current().lookup(msisdn)
    }

    /// [`HssVersion::decoy`] of the current version.
    pub fn decoy(&mut self) -> Option<PsId> {
        self.current().decoy()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(t: &str) -> Msisdn {
        t.parse().unwrap()
    }

    #[test]
    fn ranges_moves_and_new_servers() {
        let hss = Hss::new(&[
            (Prefix::parse("4477").unwrap(), PsId(0)),
            (Prefix::parse("4478").unwrap(), PsId(1)),
        ]);
        assert_eq!(hss.lookup(m("447700000001")), Some(PsId(0)));
        assert_eq!(hss.lookup(m("447800000001")), Some(PsId(1)));
        assert_eq!(hss.lookup(m("447900000001")), None);
        hss.move_subscriber(m("447700000001"), PsId(1)).unwrap();
        assert_eq!(hss.lookup(m("447700000001")), Some(PsId(1)));
        // A new server takes over a sub-range; the moved subscriber stays put.
        hss.assign_range(Prefix::parse("44770").unwrap(), PsId(2))
            .unwrap();
        assert_eq!(hss.lookup(m("447700000002")), Some(PsId(2)));
        assert_eq!(hss.lookup(m("447700000001")), Some(PsId(1)));
        assert_eq!(hss.lookup(m("447710000000")), Some(PsId(0)));
        hss.move_subscriber(m("447700000003"), PsId(200)).unwrap();
        assert_eq!(hss.lookup(m("447700000003")), Some(PsId(200)));
        assert_eq!(
            hss.move_subscriber(m("447700000003"), PsId(256)),
            Err(HssError::NoSuchServer(256))
        );
        let mut reader = hss.reader();
        assert_eq!(reader.lookup(m("447800000009")), Some(PsId(1)));
    }
}
