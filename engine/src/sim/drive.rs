//! Driving the nodes: inputs in, outputs moved — what the runtime does, on
//! the virtual clock. Nothing here decides anything about presence.

use std::net::SocketAddr;

use presence_codec::{FrameReader, Message, Msisdn, OpenFrame, FRAME_LEN_DEFAULT_MAX};

use super::world::{Event, World};
use crate::node::{CrossMessage, Destination, Node, Observation};

impl World {
    /// A device's one-message datagram to its gateway: the steering sends
    /// it to the node owning `subject`, or now and then (the steering's
    /// misses) to another one.
    pub(super) fn device_datagram(
        &mut self,
        net: usize,
        from: SocketAddr,
        subject: Msisdn,
        message: &Message<'_>,
    ) {
        let workers = self.config.workers.max(1);
        let mut worker = presence_codec::shard::owner(subject, workers);
        if workers > 1 && self.rng.chance(self.config.misroute) {
            worker = (worker + 1 + self.rng.below(u64::from(workers - 1)) as u16) % workers;
        }
        let mut frame = OpenFrame::new(Vec::new(), FRAME_LEN_DEFAULT_MAX);
        if frame.push(message).is_err() {
            return;
        }
        let bytes = frame.into_bytes();
        let now = self.now_us;
        let w = usize::from(worker);
        if let Some(node) = self.nets[net].nodes.get_mut(w).and_then(Option::as_mut) {
            node.handle_datagram(now, from, &bytes);
            self.pump(net, w);
        }
    }

    /// Moves everything node `worker` of `net` produced: observations to
    /// the checkers, datagrams to devices, frames to the border, hand-offs
    /// to the other nodes, records to the journal; and keeps its timer
    /// scheduled.
    pub(super) fn pump(&mut self, net: usize, worker: usize) {
        {
            let now = self.now_us;
            let life = self.nets[net].life;
            let state = &mut self.nets[net];
            let Some(node) = state.nodes.get_mut(worker).and_then(Option::as_mut) else {
                return;
            };
            let journal = &mut state.journals[worker];
            let observations = node.take_observations();
            let mut outgoing = Vec::new();
            while let Some(out) = node.poll_transmit() {
                outgoing.push((out.to, out.frame.clone()));
                node.recycle(out.frame);
            }
            let mut crossing = Vec::new();
            while let Some(c) = node.poll_cross() {
                crossing.push(c);
            }
            node.poll_journal(journal);
            let sync = journal.end_turn();
            let timer = node.poll_timeout();
            for observation in observations {
                self.observe(net, observation);
            }
            for (to, frame) in outgoing {
                match to {
                    Destination::Device(addr) => self.deliver_to_device(addr, &frame),
                    Destination::Border(dest) => self.send_border(net, dest, frame),
                }
            }
            for (to, message) in crossing {
                let delay = self.between(5, 200);
                self.schedule(
                    now + delay,
                    Event::Cross {
                        net,
                        life,
                        worker: to,
                        message,
                    },
                );
            }
            if let Some(sync) = sync {
                let (lo, hi) = self.config.sync_us;
                let delay = self.between(lo, hi);
                self.schedule(now + delay, Event::Synced { net, worker, sync });
            }
            if let Some(at) = timer {
                let slot = &mut self.nets[net].timer_at[worker];
                if slot.is_none_or(|s| at < s) {
                    *slot = Some(at);
                    self.schedule(at, Event::Timer { net, life, worker });
                }
            }
        }
    }

    /// What a node let the checkers see.
    fn observe(&mut self, net: usize, observation: Observation) {
        let network = self.nets[net].id;
        match observation {
            Observation::Accepted {
                watcher,
                request,
                txid,
            } => {
                let query = request as usize;
                let owner = self.by_msisdn.get(&watcher).copied();
                let Some(q) = self.queries.get_mut(query) else {
                    return;
                };
                if Some(q.watcher) != owner {
                    return;
                }
                let attempt = q.attempts.len().saturating_sub(1);
                if let Some(a) = q.attempts.get_mut(attempt) {
                    a.txid = Some(txid);
                }
                self.by_txid.insert((network, txid), (query, attempt));
            }
            Observation::Decided(record) => {
                self.decided_by
                    .entry((record.origin, record.txid))
                    .or_default()
                    .push(network);
                if record.outcome.shows_status() {
                    let permitted = self
                        .permissions
                        .get(&record.target)
                        .is_some_and(|p| p.permits(record.watcher));
                    if !permitted {
                        self.report.violations.push(format!(
                            "seed {}: at {} µs, {} saw {}'s status without permission",
                            self.config.seed, self.now_us, record.watcher, record.target
                        ));
                    }
                }
            }
        }
    }

    /// A datagram to a device: final answers are recorded against their
    /// request.
    fn deliver_to_device(&mut self, addr: SocketAddr, frame: &[u8]) {
        let Some(&subscriber) = self.by_addr.get(&addr) else {
            return;
        };
        let Ok(reader) = FrameReader::new(frame, FRAME_LEN_DEFAULT_MAX) else {
            self.report.violations.push(format!(
                "seed {}: a datagram to a device is not a frame",
                self.config.seed
            ));
            return;
        };
        for message in reader.flatten() {
            if let Message::Answer(answer) = message {
                let query = answer.txid as usize;
                match self.queries.get_mut(query) {
                    Some(q) if q.watcher == subscriber && q.target == answer.target => {
                        q.outcomes.push((self.now_us, answer.outcome));
                    }
                    _ => self.report.violations.push(format!(
                        "seed {}: an answer {answer:?} reached a device that asked no such question",
                        self.config.seed
                    )),
                }
            }
        }
    }

    /// A frame onto the border: lost, duplicated, delayed as drawn.
    fn send_border(&mut self, from: usize, dest: crate::node::BorderDest, frame: Vec<u8>) {
        self.report.border_frames += 1;
        let Some(to) = self.nets.iter().position(|n| n.id == dest.network) else {
            return;
        };
        if self.rng.chance(self.config.loss) {
            self.report.lost += 1;
            return;
        }
        let copies = if self.rng.chance(self.config.duplication) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let (lo, hi) = self.config.delay_ms;
            let delay = self.between(lo * 1000, hi * 1000);
            self.schedule(
                self.now_us + delay,
                Event::Border {
                    from,
                    to,
                    worker: dest.worker,
                    frame: frame.clone(),
                },
            );
        }
    }

    /// A border frame arrives: at the worker it was sent for, unless that
    /// worker's links are down (then another's, as a border gateway falls
    /// back to any link); lost while the gateway is down.
    pub(super) fn deliver_border(
        &mut self,
        from: usize,
        to: usize,
        worker: Option<u16>,
        frame: &[u8],
    ) {
        let now = self.now_us;
        let state = &self.nets[to];
        if state.down_until > now {
            return;
        }
        let workers = state.nodes.len();
        let up = |w: usize| state.ingress_down_until[w] <= now;
        let wanted = worker.map(usize::from).filter(|&w| w < workers && up(w));
        let target = match wanted {
            Some(w) => w,
            None => {
                let start = self.rng.below(workers as u64) as usize;
                (0..workers)
                    .map(|i| (start + i) % workers)
                    .find(|&w| up(w))
                    .unwrap_or(start)
            }
        };
        let origin = self.nets[from].id;
        if let Some(node) = self.nets[to].nodes.get_mut(target).and_then(Option::as_mut) {
            node.handle_border_frame(now, origin, frame);
            self.pump(to, target);
        }
    }

    /// A hand-off between two nodes of one gateway (lost if the gateway
    /// restarted since it was sent).
    pub(super) fn deliver_cross(
        &mut self,
        net: usize,
        life: u32,
        worker: u16,
        message: CrossMessage,
    ) {
        if self.nets[net].life != life || self.nets[net].down_until > self.now_us {
            return;
        }
        let w = usize::from(worker);
        let now = self.now_us;
        if let Some(node) = self.nets[net].nodes.get_mut(w).and_then(Option::as_mut) {
            node.handle_cross(now, message);
            self.pump(net, w);
        }
    }

    pub(super) fn fire_timer(&mut self, net: usize, life: u32, worker: usize) {
        if self.nets[net].life != life {
            return;
        }
        if self.nets[net].timer_at[worker].is_some_and(|at| at > self.now_us) {
            return;
        }
        self.nets[net].timer_at[worker] = None;
        let now = self.now_us;
        if let Some(node) = self.nets[net]
            .nodes
            .get_mut(worker)
            .and_then(Option::as_mut)
        {
            node.handle_timeout(now);
            self.pump(net, worker);
        }
    }

    /// A sync completed: the node learns what is durable.
    pub(super) fn synced(&mut self, net: usize, worker: usize, sync: super::journal::SyncInFlight) {
        let journal = &mut self.nets[net].journals[worker];
        journal.synced(sync);
        let durability = journal.durability();
        let now = self.now_us;
        if let Some(node) = self.nets[net]
            .nodes
            .get_mut(worker)
            .and_then(Option::as_mut)
        {
            node.handle_durable(now, durability);
            self.pump(net, worker);
        }
    }

    /// The node of `net` owning `subject`, if up.
    pub(super) fn owner_node(&mut self, net: usize, subject: Msisdn) -> Option<(usize, &mut Node)> {
        if self.nets[net].down_until > self.now_us {
            return None;
        }
        let workers = self.config.workers.max(1);
        let w = usize::from(presence_codec::shard::owner(subject, workers));
        self.nets[net]
            .nodes
            .get_mut(w)
            .and_then(Option::as_mut)
            .map(|n| (w, n))
    }
}
