//! Where the roles' messages go inside a node: to another role here, to
//! another worker, to a device, or out through the border.

use presence_codec::{Answer, Message, Outcome};

use super::LATENCY_SAMPLE_EVERY;
use super::{BorderDest, CrossKind, CrossMessage, DropReason, Node, Route, Work, WORK_MAX};
use crate::roles::{Addr, Ask, PsId, Transmit};

impl Node {
    /// Moves what a role just produced onto the work queue (`route`: the
    /// numbering table's answer for a query the role produced, looked up
    /// with its frame), and its decisions to the journal.
    pub(super) fn drain_out(&mut self, from: Addr, route: Option<Route>) {
        // The record of a fresh decision travels with its answer (a role
        // call decides at most one query).
        let mut fresh: Option<(crate::table::NetworkId, u64, u64)> = None;
        for record in self.out.records.drain(..) {
            if record.origin != self.config.network {
                if record.chargeable() {
                    self.counters.charged += 1;
                    self.trace.step(record.watcher, 11, || {
                        format!(
                            "B's presence server raised a charge record for {} against {}",
                            record.watcher,
                            self.table.snapshot().network_name(record.origin)
                        )
                    });
                }
                // Only decisions that charge are journaled one by one; the
                // others leave their stream's mark for the turn (a flood
                // of queries answered without B's status writes a mark a
                // turn, not a record a query).
                let at = self.config.unix_ms_at_zero.saturating_add(record.at);
                if record.chargeable() {
                    if let Some(seq) = self.held.record(at, record) {
                        fresh = Some((record.origin, record.txid, seq));
                    }
                } else {
                    self.held
                        .mark(at, record.origin, record.reply_node, record.txid);
                }
            }
            if self.config.observe {
                self.observations.push(super::Observation::Decided(record));
            }
        }
        for transmit in self.out.transmits.drain(..) {
            let record = match (transmit.message, fresh) {
                (Message::Answer(a), Some((origin, txid, seq)))
                    if a.txid == txid && transmit.origin == origin =>
                {
                    Some(seq)
                }
                _ => None,
            };
            self.work.push_back(Work {
                from,
                transmit,
                route,
                record,
            });
        }
    }

    /// Delivers queued work until none is left.
    pub(super) fn run(&mut self) {
        let mut steps = 0usize;
        while let Some(work) = self.work.pop_front() {
            steps += 1;
            if steps > WORK_MAX {
                self.counters.drop(DropReason::Overflow);
                self.work.clear();
                return;
            }
            self.route(work);
        }
    }

    fn route(&mut self, work: Work) {
        let Work {
            from,
            transmit,
            route,
            record,
        } = work;
        let now = self.now_ms;
        match transmit.to {
            Addr::Device(device) => self.deliver_to_device(device, &transmit.message),
            Addr::Wa(instance) => {
                if let Message::Notify(notify) = transmit.message {
                    if instance == self.config.worker {
                        self.notify_here(transmit.origin, notify);
                    } else {
                        self.cross(
                            instance,
                            CrossKind::InternalAnswer,
                            CrossMessage::Notify {
                                origin: transmit.origin,
                                notify,
                            },
                        );
                    }
                    return;
                }
                let Message::Answer(answer) = transmit.message else {
                    self.counters.drop(DropReason::BadMessage);
                    return;
                };
                if instance == self.config.worker {
                    self.wa.handle_answer(now, &answer, &mut self.out);
                    self.drain_out(Addr::Wa(self.config.worker), None);
                } else {
                    self.cross(
                        instance,
                        CrossKind::InternalAnswer,
                        CrossMessage::Answer {
                            origin: transmit.origin,
                            answer,
                        },
                    );
                }
            }
            Addr::Ogps => {
                let Some((query, ask)) = Ask::of(&transmit.message) else {
                    self.counters.drop(DropReason::BadMessage);
                    return;
                };
                // A retransmission goes where its transaction went first.
                let route = route.or_else(|| {
                    let network = self.wa.pinned_route(query.txid)?;
                    let version = self.table_reader.current().version() as u32;
                    Some(Route {
                        network: Some(network),
                        version,
                    })
                });
                match route {
                    Some(r) => {
                        self.ogps
                            .route(now, &query, ask, r.network, r.version, &mut self.out)
                    }
                    None => self
                        .ogps
                        .handle(now, from, &transmit.message, &mut self.out),
                }
                for t in &self.out.transmits {
                    match (t.to, Ask::of(&t.message)) {
                        (Addr::Border { network }, Some((f, _))) => {
                            self.wa.pin_route(f.txid, network);
                        }
                        (Addr::Igps, Some((f, _))) => {
                            self.wa.pin_route(f.txid, self.config.network);
                        }
                        _ => {}
                    }
                }
                if self.trace.traces(query.watcher) {
                    for t in &self.out.transmits {
                        if let (Addr::Border { network }, Message::Query(f)) = (t.to, &t.message) {
                            let name = self.network_name(network);
                            self.trace.step(query.watcher, 5, || {
                                format!("A's OGPS looked {} up in the numbering table (version {}): network {name}", query.target, f.route_version)
                            });
                        }
                    }
                }
                self.drain_out(Addr::Ogps, None);
            }
            Addr::Igps => {
                let Some((query, ask)) = Ask::of(&transmit.message) else {
                    self.counters.drop(DropReason::BadMessage);
                    return;
                };
                self.internal_query(query, ask);
            }
            Addr::Ps(id) => self.deliver_to_presence_server(id, from, transmit),
            Addr::Border { network } => {
                let Some((query, _)) = Ask::of(&transmit.message) else {
                    self.counters.drop(DropReason::BadMessage);
                    return;
                };
                let worker = self
                    .peer_workers
                    .get(&network)
                    .map(|&n| presence_codec::shard::owner(query.target, n));
                if self.trace.traces(query.watcher) {
                    let name = self.network_name(network);
                    self.trace.step(query.watcher, 6, || format!("the query leaves through A's border gateway for {name}'s (TLS 1.3, both sides authenticated by certificate){}", worker.map_or(String::new(), |w| format!(", on the link that ends at its worker {w}, the owner of B"))));
                }
                self.border_frames
                    .push(BorderDest { network, worker }, &transmit.message);
            }
            Addr::BorderReply {
                network,
                reply_node,
            } => {
                if let Message::Notify(notify) = transmit.message {
                    // Behind the answers held before it: the answer that
                    // granted its subscription leaves first.
                    self.hold_notify(network, notify);
                    return;
                }
                let Message::Answer(answer) = transmit.message else {
                    self.counters.drop(DropReason::BadMessage);
                    return;
                };
                // A presence server's answer (a decision, a duplicate of
                // one, an unknown subscriber) and the IGPS's NotAvailable
                // for a number no presence server holds, alike: held until
                // the records before them are durable and a sync that
                // started after them has completed, so neither the bytes
                // nor the timing tell unknown from not permitted.
                let held = match from {
                    Addr::Ps(_) => true,
                    Addr::Igps => answer.outcome == Outcome::NotAvailable,
                    _ => false,
                };
                if held {
                    self.hold(network, answer, record);
                } else {
                    self.border_frames.push(
                        BorderDest {
                            network,
                            worker: Some(reply_node),
                        },
                        &transmit.message,
                    );
                }
            }
            // Provisioning is answered through the node's own API.
            Addr::Provisioning => {}
        }
    }

    /// A query of this network's own WA (or OGPS, for a number the WA took
    /// for foreign) at the IGPS: on the node that owns its target.
    fn internal_query(&mut self, query: presence_codec::Query, ask: Ask) {
        let owner = self.owner(query.target);
        if owner != self.config.worker {
            self.cross(
                owner,
                CrossKind::InternalQuery,
                CrossMessage::Query {
                    origin: self.config.network,
                    query,
                    ask,
                },
            );
            return;
        }
        self.internal_query_here(query, ask);
    }

    fn deliver_to_presence_server(&mut self, id: PsId, from: Addr, transmit: Transmit) {
        let now = self.now_ms;
        let Some((query, _)) = Ask::of(&transmit.message) else {
            self.counters.drop(DropReason::BadMessage);
            return;
        };
        // The IGPS runs on the target's owner, and a moved subscriber stays
        // with its owner: the slice is this node's.
        assert!(
            self.owns(query.target),
            "a query reaches a presence server only on its target's owner"
        );
        let traced = self.trace.traces(query.watcher);
        if traced {
            self.traced_txid = Some(query.txid);
            self.trace.step(query.watcher, 9, || {
                format!("B's IGPS forwarded the query to presence server {}", id.0)
            });
        }
        let charging = self.held.charging();
        let Some(slice) = Node::slice(&mut self.ps, &self.config, charging, id) else {
            self.counters.drop(DropReason::BadMessage);
            return;
        };
        slice.handle(now, from, transmit.origin, &transmit.message, &mut self.out);
        // Subscriptions are taken only here: from now on the node's timers
        // look at this slice's.
        if slice.next_watch_timeout().is_some() && !self.watching.contains(&id) {
            self.watching.push(id);
        }
        if traced {
            for t in &self.out.transmits {
                if let Message::Answer(a) = &t.message {
                    let verdict = if a.outcome.shows_status() {
                        "A is on B's buddy list and B consents, so B's status is shown"
                    } else {
                        "not permitted (or unknown): the same answer either way"
                    };
                    self.trace.step(query.watcher, 10, || {
                        format!("presence server {}: {verdict}: {:?}", id.0, a.outcome)
                    });
                }
            }
        }
        self.drain_out(Addr::Ps(id), None);
    }

    /// Step 13 (or a refusal or ack): to the device of `device`, at the
    /// address it was last heard from.
    fn deliver_to_device(&mut self, device: presence_codec::Msisdn, message: &Message<'_>) {
        if let Message::Answer(answer) = message {
            self.answered_device(device, answer);
        }
        match self.device_addrs.get(&device).copied() {
            Some(addr) => {
                self.device_frames.push(addr, message);
            }
            None => self.counters.drop(DropReason::NoDeviceAddress),
        }
    }

    /// Counts a final answer to a device, and its latency if sampled.
    pub(super) fn answered_device(&mut self, device: presence_codec::Msisdn, answer: &Answer) {
        self.counters.answer(&answer.outcome);
        if answer.txid.is_multiple_of(LATENCY_SAMPLE_EVERY) {
            if let Some(at) = self.arrivals.remove(&(device, answer.txid)) {
                if let Some(h) = self.latency.as_mut() {
                    h.saturating_record(self.now_us.saturating_sub(at).max(1));
                }
            }
        }
        self.trace.step(device, 13, || {
            format!("A's WA answers A: {:?}", answer.outcome)
        });
    }

    /// Queues `message` for worker `to`, counting the hand-off.
    pub(super) fn cross(&mut self, to: u16, kind: CrossKind, message: CrossMessage) {
        self.counters.cross(kind);
        self.cross_out.push_back((to, message));
    }
}
