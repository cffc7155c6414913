//! Routing: the per-peer and per-peer-worker tables of the links
//! [`BgEndpoint::send`] queues frames on, and `send` itself.
//!
//! Invariant (shard-aware links, see the parent module):
//! - [`BgEndpoint::send`] with `Some(k)` queues on an established,
//!   non-draining link whose peer hello says worker *k* (our dialed link of
//!   the newest generation first); with none, on the peer's route as for
//!   `None` (any link), counted in `sends_off_worker`. The per-worker table
//!   is rebuilt when links come and go, never per frame.

use super::{BgEndpoint, Slot, MAX_PEER_WORKERS};
use crate::counters::BgCounters;
use crate::identity::PeerIndex;
use crate::link::{Direction, Link};

/// Why a frame was not queued. Upstream turns both into an overloaded (or
/// not-available) outcome for the query; nothing is queued partly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The peer is not in the trust list.
    #[error("unknown peer")]
    UnknownPeer,
    /// No link to the peer is up (connecting, or the peer is down).
    #[error("no link to the peer is up")]
    NoLink,
    /// The link's send queue is full.
    #[error("send queue full")]
    Overloaded,
    /// The frame is shorter than 4 bytes or longer than the link's maximum
    /// (§6): the peer would have to close the link over it.
    #[error("frame length {0} outside the stream limits")]
    InvalidFrame(usize),
}

/// Where [`BgEndpoint::send`] puts frames for one peer.
#[derive(Debug, Default)]
pub(super) struct Route {
    /// Any worker: an established, non-draining link (our dialed link of the
    /// newest generation first), or while the peer's only links drain, one
    /// of those.
    pub(super) any: Option<usize>,
    /// Per peer worker below `min(workers, MAX_PEER_WORKERS)`: an
    /// established, non-draining link whose peer hello names that worker.
    by_worker: Vec<Option<usize>>,
}

impl BgEndpoint {
    pub(super) fn refresh_routes(&mut self) {
        self.routes.resize_with(self.dialers.len(), Route::default);
        for (route, dialer) in self.routes.iter_mut().zip(&self.dialers) {
            route.any = None;
            route.by_worker.clear();
            let workers = dialer.workers.map_or(0, |n| n.min(MAX_PEER_WORKERS));
            route.by_worker.resize(usize::from(workers), None);
        }
        for (index, slot) in self.slots.iter().enumerate() {
            let Some(slot) = slot else { continue };
            let Some(peer) = slot.link.peer() else {
                continue;
            };
            if slot.link.is_draining() {
                continue;
            }
            let Some(route) = self.routes.get_mut(peer.get()) else {
                continue;
            };
            if outranks(&self.slots, &slot.link, route.any) {
                route.any = Some(index);
            }
            let worker = slot.link.peer_shard().map(|h| usize::from(h.worker));
            if let Some(entry) = worker.and_then(|k| route.by_worker.get_mut(k)) {
                if outranks(&self.slots, &slot.link, *entry) {
                    *entry = Some(index);
                }
            }
        }
        // A peer whose only links are being replaced keeps using them until
        // the replacement is up: rotation drops nothing. (Links closing or
        // closed by the peer take no frames at all.)
        for (peer, route) in self.routes.iter_mut().enumerate() {
            if route.any.is_none() {
                route.any = self.slots.iter().position(|s| {
                    s.as_ref().is_some_and(|s| {
                        s.link.peer().map(PeerIndex::get) == Some(peer)
                            && s.link.closing_reason().is_none()
                            && !s.link.peer_closed()
                    })
                });
            }
        }
    }

    /// Queues `frame` for `peer` on one of this worker's links to it. With
    /// `to_worker` `Some(k)`: on a link that ends at the peer's worker `k`
    /// (as its hello said) when one takes frames, else on any (counted in
    /// `sends_off_worker`: the peer's worker that gets it hands it across).
    /// With `None`: on any link. Which worker a frame is for is the caller's
    /// to say; the border does not read it.
    pub fn send(
        &mut self,
        peer: PeerIndex,
        to_worker: Option<u16>,
        frame: &[u8],
    ) -> Result<(), SendError> {
        if !(presence_codec::STREAM_FRAME_LEN_MIN..=self.settings.link.max_frame_len)
            .contains(&frame.len())
        {
            return Err(SendError::InvalidFrame(frame.len()));
        }
        let Some(route) = self.routes.get(peer.get()) else {
            return Err(SendError::UnknownPeer);
        };
        let on_worker =
            to_worker.and_then(|k| route.by_worker.get(usize::from(k)).copied().flatten());
        let Some(index) = on_worker.or(route.any) else {
            BgCounters::add(&self.counters.send_no_link, 1);
            return Err(SendError::NoLink);
        };
        let Some(slot) = self.slots.get_mut(index).and_then(Option::as_mut) else {
            return Err(SendError::NoLink);
        };
        // A route to a draining link (no replacement yet) still carries.
        if !slot.link.queue_frame(frame) {
            BgCounters::add(&self.counters.send_overloaded, 1);
            return Err(SendError::Overloaded);
        }
        if to_worker.is_some() && slot.link.peer_shard().map(|h| h.worker) != to_worker {
            BgCounters::add(&self.counters.sends_off_worker, 1);
        }
        BgCounters::add(&self.counters.frames_out, 1);
        BgCounters::add(
            &self.counters.bytes_out,
            frame
                .len()
                .saturating_add(presence_codec::STREAM_PREFIX_LEN) as u64,
        );
        if let Some(mark) = self.dirty_mark.get_mut(index) {
            if !*mark {
                *mark = true;
                self.dirty.push(index);
            }
        }
        Ok(())
    }
}

/// Whether `candidate` should replace the link at `current` as a route:
/// our own dialed link of the newest generation first.
fn outranks(slots: &[Option<Slot>], candidate: &Link, current: Option<usize>) -> bool {
    let rank = |link: &Link| {
        (
            link.generation(),
            matches!(link.direction(), Direction::Dialed(_)),
        )
    };
    match current {
        None => true,
        Some(current) => slots
            .get(current)
            .and_then(Option::as_ref)
            .is_some_and(|c| rank(candidate) > rank(&c.link)),
    }
}
