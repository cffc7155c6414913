//! A node's journal in the simulation: what the appliance's writer and its
//! syncer do, on the virtual clock. Records a node hands over are written
//! at the end of its turn; a sync completes after a drawn delay and reports
//! durability; a failed disk takes nothing until it recovers, and the new
//! segment voids what was written but not known durable.

use crate::journal::{Durability, JournalSink, MarkRef, StreamMark};
use crate::roles::DecisionRecord;

/// One record as the journal holds it.
#[derive(Clone, Debug)]
pub(super) struct Stored {
    pub(super) seq: u64,
    pub(super) at_unix_ms: u64,
    pub(super) record: DecisionRecord,
}

/// The records of one worker's journal, across the gateway's lives.
#[derive(Debug, Default)]
pub(super) struct SimJournal {
    /// Every record handed to the file system (a process crash keeps
    /// them: they are in the page cache).
    pub(super) written: Vec<Stored>,
    /// Records handed over this turn, not yet written.
    turn: Vec<Stored>,
    /// Stream marks written (kept across crashes like the records).
    pub(super) marks: Vec<StreamMark>,
    /// Stream marks handed over this turn, not yet written.
    turn_marks: Vec<StreamMark>,
    /// The ticket the node asked to have synced this turn.
    ticket_wanted: Option<u64>,
    /// Highest number handed over (taken or refused).
    pub(super) appended: u64,
    /// Highest number known durable.
    pub(super) durable: u64,
    pub(super) synced_ticket: u64,
    pub(super) failed: bool,
    /// Number ranges voided by recoveries: `[from, to]`.
    pub(super) voided: Vec<(u64, u64)>,
}

/// A sync in flight: what it will report durable when it completes.
#[derive(Clone, Copy, Debug)]
pub(super) struct SyncInFlight {
    pub(super) upto: u64,
    pub(super) ticket: u64,
}

impl SimJournal {
    /// Ends a turn: the turn's records are written; returns the sync to
    /// complete later, if one is needed.
    pub(super) fn end_turn(&mut self) -> Option<SyncInFlight> {
        if self.failed {
            self.turn.clear();
            self.turn_marks.clear();
            self.ticket_wanted = None;
            return None;
        }
        let wrote = !self.turn.is_empty() || !self.turn_marks.is_empty();
        self.written.append(&mut self.turn);
        self.marks.append(&mut self.turn_marks);
        let ticket = self.ticket_wanted.take();
        (wrote || ticket.is_some()).then(|| SyncInFlight {
            upto: self.written.last().map_or(self.durable, |s| s.seq),
            ticket: ticket.unwrap_or(self.synced_ticket),
        })
    }

    /// A sync completed (ignored if the disk failed meanwhile).
    pub(super) fn synced(&mut self, sync: SyncInFlight) {
        if !self.failed {
            self.durable = self.durable.max(sync.upto);
            self.synced_ticket = self.synced_ticket.max(sync.ticket);
        }
    }

    /// The disk fails: nothing more is taken or made durable.
    pub(super) fn fail(&mut self) {
        self.failed = true;
        self.turn.clear();
        self.turn_marks.clear();
        self.ticket_wanted = None;
    }

    /// A new segment opens: its header voids what was appended but not
    /// known durable; numbering continues after it.
    pub(super) fn recover(&mut self) {
        if !self.failed {
            return;
        }
        if self.appended > self.durable {
            self.voided.push((self.durable + 1, self.appended));
        }
        self.durable = self.appended;
        self.failed = false;
    }

    /// What the node is told.
    pub(super) fn durability(&self) -> Durability {
        Durability {
            durable_seq: self.durable,
            synced_ticket: self.synced_ticket,
            healthy: !self.failed,
        }
    }

    /// Whether record `seq` was voided by a recovery.
    pub(super) fn is_voided(&self, seq: u64) -> bool {
        self.voided
            .iter()
            .any(|&(from, to)| (from..=to).contains(&seq))
    }

    /// The next number a node of a new life starts from.
    pub(super) fn next_seq(&self) -> u64 {
        self.appended + 1
    }
}

impl JournalSink for SimJournal {
    fn append(&mut self, seq: u64, at_unix_ms: u64, _origin: &str, record: &DecisionRecord) {
        assert_eq!(seq, self.appended + 1, "records are numbered consecutively");
        self.appended = seq;
        if !self.failed {
            self.turn.push(Stored {
                seq,
                at_unix_ms,
                record: *record,
            });
        }
    }

    fn mark(&mut self, mark: MarkRef<'_>) {
        if !self.failed {
            self.turn_marks.push(StreamMark {
                at_unix_ms: mark.at_unix_ms,
                origin: mark.origin.to_string(),
                reply_node: mark.reply_node,
                high_water: mark.high_water,
            });
        }
    }

    fn sync(&mut self, ticket: u64) {
        if !self.failed {
            self.ticket_wanted = Some(ticket);
        }
    }
}
