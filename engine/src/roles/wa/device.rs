//! The WA's memory of recent device requests (docs/reliability.md).

use std::net::SocketAddr;

use ahash::AHashMap;
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

/// A remembered device request: about whom, from where, what became of
/// it, and until when it is remembered.
#[derive(Clone, Copy, Debug)]
struct DeviceEntry {
    target: Msisdn,
    source: SocketAddr,
    state: DeviceRequest,
    expires: Millis,
}

/// Recent device requests, so a request a device sends again (its answer
/// was lost, or it gave up waiting) is not a second query: while pending it
/// is ignored, once answered the same answer is sent again. Remembered for
/// [`DEVICE_REPEAT_DEADLINES`] deadlines, and at most `capacity` of them (the pending
/// table's size): past that the oldest is forgotten first, so at the
/// highest rates a device repeating itself late may start a second query
/// (charged once more; docs/reliability.md). Sized at start-up: the map
/// holds twice `capacity` so its tombstones are cleared in place, and
/// nothing is allocated after.
#[derive(Debug)]
pub(super) struct DeviceRequests {
    map: AHashMap<(Msisdn, u64), DeviceEntry>,
    order: std::collections::VecDeque<((Msisdn, u64), Millis)>,
    capacity: usize,
}

impl DeviceRequests {
    pub(super) fn new(capacity: usize) -> DeviceRequests {
        let mut map = AHashMap::default();
        map.reserve(capacity.saturating_mul(2));
        DeviceRequests {
            map,
            order: std::collections::VecDeque::with_capacity(capacity),
            capacity,
        }
    }

    fn expire(&mut self, now: Millis) {
        while let Some(&(key, expires)) = self.order.front() {
            if expires > now {
                break;
            }
            self.order.pop_front();
            // Unless the id was reused since (a restarted device).
            if self.map.get(&key).is_some_and(|e| e.expires == expires) {
                self.map.remove(&key);
            }
        }
    }

    /// The request's state and where it first came from, if this is a
    /// repeat: same id, same target.
    pub(super) fn get(
        &mut self,
        now: Millis,
        key: (Msisdn, u64),
        target: Msisdn,
    ) -> Option<(DeviceRequest, SocketAddr)> {
        self.expire(now);
        self.map
            .get(&key)
            .filter(|e| e.target == target)
            .map(|e| (e.state, e.source))
    }

    /// Records a newly accepted request, forgetting the oldest if full.
    pub(super) fn insert(
        &mut self,
        now: Millis,
        key: (Msisdn, u64),
        target: Msisdn,
        source: SocketAddr,
        keep_ms: u64,
    ) {
        self.expire(now);
        if self.order.len() >= self.capacity {
            if let Some((old, expires)) = self.order.pop_front() {
                if self.map.get(&old).is_some_and(|e| e.expires == expires) {
                    self.map.remove(&old);
                }
            }
        }
        let expires = now + keep_ms;
        self.map.insert(
            key,
            DeviceEntry {
                target,
                source,
                state: DeviceRequest::Pending,
                expires,
            },
        );
        self.order.push_back((key, expires));
    }

    /// The request `key` about `target` was answered (a reused id about
    /// another target is left alone).
    pub(super) fn answered(&mut self, key: (Msisdn, u64), target: Msisdn, outcome: Outcome) {
        if let Some(entry) = self.map.get_mut(&key).filter(|e| e.target == target) {
            entry.state = DeviceRequest::Answered(outcome);
        }
    }
}
