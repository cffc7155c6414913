//! Charging that loses nothing (step 11): decision records numbered for the
//! journal, answers to other networks held until their records are durable,
//! and failing closed when the journal cannot make them so
//! (`docs/reliability.md`).
//!
//! Invariants:
//! - records are numbered consecutively from [`NodeConfig::first_record_seq`]
//!   (the journal's numbering continues across restarts); while the journal
//!   has failed, none is numbered (the presence servers charge nothing
//!   meanwhile);
//! - a held answer carries the highest record number appended when it was
//!   held (`upto`) and the ticket of the next sync asked for (`ticket`); it
//!   leaves only once a sync with that ticket or later has completed and
//!   every record up to `upto` is durable, so an answer with no record of
//!   its own (a repeat, an unknown subscriber) leaves no sooner than a fresh
//!   decision;
//! - answers leave in the order they were held;
//! - when the journal fails, every held answer leaves at once, those showing
//!   B's status with records not known durable turned into
//!   `Error(ChargingUnavailable)` (and so remembered by their presence
//!   server, so a retransmission gets the refusal too);
//! - at most [`HELD_ANSWERS_MAX`] answers wait; past half of it the
//!   presence servers shed new queries from other networks (`Overloaded`)
//!   until a quarter is left.
//!
//! [`NodeConfig::first_record_seq`]: super::NodeConfig::first_record_seq

use std::collections::VecDeque;

use presence_codec::{Answer, ErrorReason, Message, Notify, Outcome};

use super::{BorderDest, DropReason, Node};
use crate::journal::{Durability, JournalSink, MarkRef};
use crate::roles::{Charging, DecisionRecord};
use crate::table::{NetworkId, NetworkNames};

/// Most answers held for the journal at once.
pub const HELD_ANSWERS_MAX: usize = 1 << 19;
/// Held answers past which the presence servers shed new foreign queries.
const BACKLOG_HIGH: usize = HELD_ANSWERS_MAX / 2;
/// Held answers below which they take them again.
const BACKLOG_LOW: usize = HELD_ANSWERS_MAX / 4;
/// Retry-after told while answers wait for a slow disk.
const BACKLOG_RETRY_MS: u32 = 50;

/// What waits: an answer, or a notification (which waits behind the
/// answers before it, so a subscription's first notification never
/// overtakes the answer that granted it).
#[derive(Clone, Copy, Debug)]
enum HeldMessage {
    Answer(Answer),
    Notify(Notify),
}

/// An answer (or notification) to another network waiting for its
/// records.
#[derive(Clone, Copy, Debug)]
struct HeldAnswer {
    upto: u64,
    ticket: u64,
    /// Its own decision record's number (a fresh decision's answer; a
    /// repeat or an unknown subscriber's has none).
    record: Option<u64>,
    network: NetworkId,
    message: HeldMessage,
}

/// One stream's mark in the making.
#[derive(Clone, Copy, Debug)]
struct TurnMark {
    stream: (NetworkId, u16),
    high_water: u64,
    at_unix_ms: u64,
}

/// The node's side of the journal: numbering, held answers, health.
#[derive(Debug)]
pub(super) struct Held {
    next_seq: u64,
    /// Records numbered this turn: (seq, decided at, unix ms).
    records: Vec<(u64, u64, DecisionRecord)>,
    /// Streams with decisions that charge nothing this turn: their marks.
    marks: Vec<TurnMark>,
    /// Highest record numbered.
    appended: u64,
    /// Highest record the journal reported durable.
    durable: u64,
    next_ticket: u64,
    synced_ticket: u64,
    sync_wanted: bool,
    healthy: bool,
    answers: VecDeque<HeldAnswer>,
    charging: Charging,
}

impl Held {
    pub(super) fn new(first_seq: u64) -> Held {
        let first_seq = first_seq.max(1);
        Held {
            next_seq: first_seq,
            records: Vec::with_capacity(1024),
            marks: Vec::with_capacity(64),
            appended: first_seq - 1,
            durable: first_seq - 1,
            next_ticket: 1,
            synced_ticket: 0,
            sync_wanted: false,
            healthy: true,
            answers: VecDeque::with_capacity(4096),
            charging: Charging::Available,
        }
    }

    /// Numbers a decision on another network's query for the journal
    /// (nothing while the journal has failed).
    /// Returns its number, `None` while the journal has failed.
    pub(super) fn record(&mut self, at_unix_ms: u64, record: DecisionRecord) -> Option<u64> {
        if !self.healthy {
            return None;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.appended = seq;
        self.records.push((seq, at_unix_ms, record));
        Some(seq)
    }

    /// Notes a decision on another network's query that charges nothing:
    /// its stream's mark for this turn covers it (see
    /// [`StreamMark`](crate::journal::StreamMark)).
    pub(super) fn mark(&mut self, at_unix_ms: u64, origin: NetworkId, reply_node: u16, txid: u64) {
        let stream = (origin, reply_node);
        match self.marks.iter_mut().find(|m| m.stream == stream) {
            Some(m) => {
                m.high_water = m.high_water.max(txid);
                m.at_unix_ms = m.at_unix_ms.max(at_unix_ms);
            }
            None => self.marks.push(TurnMark {
                stream,
                high_water: txid,
                at_unix_ms,
            }),
        }
    }

    /// Hands the turn's records and marks to `sink` and asks for the sync
    /// held answers wait for.
    pub(super) fn flush(&mut self, sink: &mut impl JournalSink, names: &NetworkNames) {
        // While the journal has failed, marks wait (one per stream at
        // most) for the segment that opens after it: what was answered
        // meanwhile without a charge is covered once it is back.
        let marks = self.healthy && !self.marks.is_empty();
        let wrote = !self.records.is_empty() || marks;
        for (seq, at, record) in self.records.drain(..) {
            sink.append(seq, at, names.name(record.origin), &record);
        }
        let take = if self.healthy { self.marks.len() } else { 0 };
        for m in self.marks.drain(..take) {
            sink.mark(MarkRef {
                at_unix_ms: m.at_unix_ms,
                origin: names.name(m.stream.0),
                reply_node: m.stream.1,
                high_water: m.high_water,
            });
        }
        if wrote || self.sync_wanted {
            sink.sync(self.next_ticket);
            self.next_ticket += 1;
            self.sync_wanted = false;
        }
    }

    pub(super) fn holding(&self) -> bool {
        !self.answers.is_empty()
    }

    pub(super) fn charging(&self) -> Charging {
        self.charging
    }
}

impl Node {
    /// Holds a presence server's (or the IGPS's) answer to `network` until
    /// the journal has made the records before it durable.
    pub(super) fn hold(&mut self, network: NetworkId, answer: Answer, record: Option<u64>) {
        self.hold_message(network, HeldMessage::Answer(answer), record);
    }

    /// Holds a notification to `network` behind the answers held before
    /// it.
    pub(super) fn hold_notify(&mut self, network: NetworkId, notify: Notify) {
        self.hold_message(network, HeldMessage::Notify(notify), None);
    }

    fn hold_message(&mut self, network: NetworkId, message: HeldMessage, record: Option<u64>) {
        let held = &mut self.held;
        if held.answers.len() >= HELD_ANSWERS_MAX {
            // The presence servers shed long before this; the WA's
            // retransmission is answered from the duplicate window.
            self.counters.drop(DropReason::Overflow);
            return;
        }
        held.answers.push_back(HeldAnswer {
            upto: held.appended,
            ticket: held.next_ticket,
            record,
            network,
            message,
        });
        held.sync_wanted = true;
        if !held.healthy {
            self.release();
        } else if held.answers.len() == BACKLOG_HIGH + 1 {
            self.update_charging();
        }
    }

    /// What the journal reports: records durable, syncs completed, health.
    /// Releases the answers that waited for it (or, if the journal failed,
    /// all of them, refusing those whose charge is not durable).
    pub fn handle_durable(&mut self, now_us: u64, durability: Durability) {
        self.begin(now_us);
        let held = &mut self.held;
        held.durable = held.durable.max(durability.durable_seq);
        held.synced_ticket = held.synced_ticket.max(durability.synced_ticket);
        held.healthy = durability.healthy;
        if durability.healthy && held.durable > held.appended {
            // A journal reopened after a failure skips the numbers it may
            // have lost: numbering continues after them.
            held.appended = held.durable;
            held.next_seq = held.durable + 1;
        }
        self.release();
        self.update_charging();
    }

    /// Moves the answers whose records are durable to the border.
    fn release(&mut self) {
        loop {
            let held = &mut self.held;
            let Some(front) = held.answers.front() else {
                break;
            };
            if held.healthy && (front.ticket > held.synced_ticket || front.upto > held.durable) {
                break;
            }
            let durable = held.durable;
            let Some(HeldAnswer {
                upto,
                record,
                network,
                message,
                ..
            }) = held.answers.pop_front()
            else {
                break;
            };
            let mut answer = match message {
                HeldMessage::Answer(answer) => answer,
                HeldMessage::Notify(notify) => {
                    self.border_frames.push(
                        BorderDest {
                            network,
                            worker: Some(notify.reply_node),
                        },
                        &Message::Notify(notify),
                    );
                    continue;
                }
            };
            if upto > durable && answer.outcome.shows_status() {
                match record {
                    // Fail closed: no status without a durable charge
                    // record. The decision is revised, so a retransmission
                    // is refused too.
                    Some(seq) if seq > durable => {
                        let was = answer.outcome;
                        for slice in self.ps.iter_mut().flatten() {
                            if slice.refuse_undurable(network, answer.txid, &was) {
                                break;
                            }
                        }
                        answer.outcome = Outcome::Error(ErrorReason::ChargingUnavailable);
                        self.counters.voided += 1;
                        // Its record is voided: it is now a decision that
                        // charges nothing, and leaves its stream's mark.
                        let at = self.config.unix_ms_at_zero.saturating_add(self.now_ms);
                        self.held.mark(at, network, answer.reply_node, answer.txid);
                    }
                    Some(_) => {}
                    // A repeat says what its decision says now: refused if
                    // its own record was just refused, B's status if that
                    // record is durable.
                    None => {
                        if let Some(outcome) = self
                            .ps
                            .iter()
                            .flatten()
                            .find_map(|slice| slice.decided(network, answer.txid))
                        {
                            answer.outcome = outcome;
                        }
                    }
                }
            }
            if self.traced_txid == Some(answer.txid) {
                self.traced_txid = None;
                let name = self.network_name(network);
                if let Some(watcher) = self.trace.watcher() {
                    self.trace.step(watcher, 12, || {
                        format!("B's status goes back through the border gateways to {name}")
                    });
                }
            }
            self.border_frames.push(
                BorderDest {
                    network,
                    worker: Some(answer.reply_node),
                },
                &Message::Answer(answer),
            );
        }
    }

    /// Tells the presence servers whether they can charge: not while the
    /// journal has failed, and not for other networks while too many
    /// answers wait for a slow disk.
    fn update_charging(&mut self) {
        let held = &self.held;
        let waiting = held.answers.len();
        let charging = match held.charging {
            _ if !held.healthy => Charging::Unavailable,
            _ if waiting > BACKLOG_HIGH => Charging::Backlogged {
                retry_after_ms: BACKLOG_RETRY_MS,
            },
            Charging::Backlogged { .. } if waiting > BACKLOG_LOW => held.charging,
            _ => Charging::Available,
        };
        if charging != self.held.charging {
            self.held.charging = charging;
            for slice in self.ps.iter_mut().flatten() {
                slice.set_charging(charging);
            }
        }
    }
}
