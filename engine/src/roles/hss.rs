//! HSS functionality (steps 7–8): which presence server holds a subscriber.
//!
//! Ranges of numbers (prefixes) are assigned to presence servers, and single
//! subscribers can be moved; both change at run time while lookups continue.
//! It is the numbering table's machinery with presence servers in place of
//! networks: lookups read an immutable version and never block; a single move
//! is a copy-on-write override; a range change rebuilds the small range index.
//! That is what lets a network add presence servers and move subscribers
//! without telling any other network (the IGPS hides it).

use std::sync::Mutex;

use presence_codec::Msisdn;

use crate::table::{
    NetworkId, NetworkNames, NumberingTable, PortedMap, Prefix, PrefixIndex, TableReader,
    UpdateError,
};

/// A presence server of this network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PsId(pub u16);

/// Most presence servers one network's HSS can name.
pub const PS_PER_NETWORK_MAX: u16 = 256;

fn ps_name(ps: PsId) -> String {
    format!("ps-{}", ps.0)
}

/// Names `ps-0` … `ps-255` interned in order, so a presence server's id in
/// the underlying table is its number.
fn ps_names() -> NetworkNames {
    let mut names = NetworkNames::default();
    for n in 0..PS_PER_NETWORK_MAX {
        let _ = names.intern(&ps_name(PsId(n)));
    }
    names
}

/// Why an HSS change was refused; nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HssError {
    /// A presence server number at or above [`PS_PER_NETWORK_MAX`].
    #[error("presence server {0} is beyond the {PS_PER_NETWORK_MAX} a network may have")]
    NoSuchServer(u16),
    /// The table refused the update.
    #[error(transparent)]
    Update(#[from] UpdateError),
}

/// MSISDN → presence server, shared by the IGPS instances of a network.
#[derive(Debug)]
pub struct Hss {
    table: NumberingTable,
    /// Range assignments, kept to rebuild the range index on a change
    /// (writers only).
    ranges: Mutex<Vec<(Prefix, PsId)>>,
}

impl Hss {
    /// An HSS assigning these ranges (servers beyond the limit are left out).
    pub fn new(ranges: &[(Prefix, PsId)]) -> Hss {
        let ranges: Vec<(Prefix, PsId)> = ranges
            .iter()
            .copied()
            .filter(|(_, ps)| ps.0 < PS_PER_NETWORK_MAX)
            .collect();
        Hss {
            table: NumberingTable::new(
                Hss::index(&ranges),
                PortedMap::empty(0x4853_5300),
                ps_names(),
            ),
            ranges: Mutex::new(ranges),
        }
    }

    fn index(ranges: &[(Prefix, PsId)]) -> PrefixIndex {
        let entries: Vec<(Prefix, NetworkId)> =
            ranges.iter().map(|&(p, ps)| (p, NetworkId(ps.0))).collect();
        PrefixIndex::build(&entries)
    }

    /// A reader for one thread.
    pub fn reader(&self) -> HssReader {
        HssReader {
            reader: self.table.reader(),
        }
    }

    /// Steps 7–8: the presence server of `msisdn`, if this network has one.
    pub fn lookup(&self, msisdn: Msisdn) -> Option<PsId> {
        self.table.snapshot().lookup(msisdn).map(to_ps)
    }

    /// Moves one subscriber to `ps`.
    pub fn move_subscriber(&self, msisdn: Msisdn, ps: PsId) -> Result<u64, HssError> {
        if ps.0 >= PS_PER_NETWORK_MAX {
            return Err(HssError::NoSuchServer(ps.0));
        }
        // Every HSS writer holds the ranges lock, so a range change built
        // from a snapshot cannot undo a move published meanwhile.
        let _writers = self.ranges.lock().unwrap_or_else(|p| p.into_inner());
        Ok(self.table.set_ported(msisdn, &ps_name(ps))?)
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
        let current = self.table.snapshot();
        Ok(self.table.replace(
            Hss::index(&ranges),
            current.ported().clone(),
            current.names().clone(),
        )?)
    }
}

impl Hss {
    /// Replaces every range at once (a reload): one index build, published
    /// atomically. Single moves ([`Hss::move_subscriber`]) are kept.
    pub fn replace_ranges(&self, ranges: &[(Prefix, PsId)]) -> Result<u64, HssError> {
        if let Some((_, ps)) = ranges.iter().find(|(_, ps)| ps.0 >= PS_PER_NETWORK_MAX) {
            return Err(HssError::NoSuchServer(ps.0));
        }
        let mut current_ranges = self.ranges.lock().unwrap_or_else(|p| p.into_inner());
        *current_ranges = ranges.to_vec();
        let current = self.table.snapshot();
        Ok(self.table.replace(
            Hss::index(&current_ranges),
            current.ported().clone(),
            current.names().clone(),
        )?)
    }
}

fn to_ps(id: NetworkId) -> PsId {
    PsId(id.0)
}

/// A per-thread HSS reader: one atomic load per lookup.
#[derive(Debug)]
pub struct HssReader {
    reader: TableReader,
}

impl HssReader {
    /// Steps 7–8 on the current version.
    #[inline]
    pub fn lookup(&mut self, msisdn: Msisdn) -> Option<PsId> {
        self.reader.lookup(msisdn).map(to_ps)
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
