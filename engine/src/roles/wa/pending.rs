//! The WA's pending transactions, indexed directly by transaction id.

use presence_codec::Msisdn;

use crate::roles::Millis;
use crate::table::NetworkId;

use super::device::DeviceSlot;

#[derive(Clone, Copy, Debug)]
pub(super) struct Pending {
    pub(super) device: Msisdn,
    pub(super) client_txid: u64,
    pub(super) target: Msisdn,
    pub(super) watcher: Msisdn,
    pub(super) deadline: Millis,
    pub(super) retransmit_ms: u64,
    pub(super) next_send: Millis,
    /// Bumped whenever the timer is re-armed, so stale heap entries are skipped.
    pub(super) timer_generation: u32,
    pub(super) internal: bool,
    /// The network the OGPS first sent the query to: retransmissions go
    /// there too, even if the number is ported meanwhile (one network
    /// decides a transaction, so it is charged once).
    pub(super) route: Option<NetworkId>,
    pub(super) cost: u64,
    /// What the device asked: a query, or to watch or stop watching.
    pub(super) operation: presence_codec::ClientOperation,
    /// Where the device request sits in the WA's memory of them.
    pub(super) device_slot: DeviceSlot,
}

/// Pending transactions, indexed directly by transaction id. The WA numbers
/// its transactions consecutively, so slot `txid % slots` is free unless a
/// transaction issued `slots` ids ago is still pending: then the table counts
/// as full. No hashing, no allocation after start-up.
#[derive(Debug)]
pub(super) struct PendingTable {
    pub(super) slots: Vec<Option<(u64, Pending)>>,
    mask: u64,
    pub(super) len: usize,
}

impl PendingTable {
    pub(super) fn new(capacity: usize) -> PendingTable {
        let slots = capacity.max(1).next_power_of_two();
        PendingTable {
            slots: vec![None; slots],
            mask: slots as u64 - 1,
            len: 0,
        }
    }

    fn slot(&self, txid: u64) -> usize {
        (txid & self.mask) as usize
    }

    /// Starts loading `txid`'s slot into the cache (a staged batch asks
    /// for each answer's slot before handling the first).
    pub(super) fn prefetch(&self, txid: u64) {
        crate::table::prefetch(&self.slots[self.slot(txid)]);
    }

    pub(super) fn is_free(&self, txid: u64) -> bool {
        self.slots[self.slot(txid)].is_none()
    }

    pub(super) fn insert(&mut self, txid: u64, pending: Pending) {
        let slot = self.slot(txid);
        assert!(
            self.slots[slot].is_none(),
            "insert only into a free slot (is_free)"
        );
        self.len += usize::from(self.slots[slot].is_none());
        self.slots[slot] = Some((txid, pending));
    }

    pub(super) fn get(&self, txid: u64) -> Option<&Pending> {
        match &self.slots[self.slot(txid)] {
            Some((id, p)) if *id == txid => Some(p),
            _ => None,
        }
    }

    pub(super) fn get_mut(&mut self, txid: u64) -> Option<&mut Pending> {
        let slot = self.slot(txid);
        match &mut self.slots[slot] {
            Some((id, p)) if *id == txid => Some(p),
            _ => None,
        }
    }

    pub(super) fn remove(&mut self, txid: u64) -> Option<Pending> {
        let slot = self.slot(txid);
        match self.slots[slot] {
            Some((id, p)) if id == txid => {
                self.slots[slot] = None;
                self.len -= 1;
                Some(p)
            }
            _ => None,
        }
    }
}
