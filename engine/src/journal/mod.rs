//! The charge-record journal (step 11): append-only segment files of
//! checksummed, sequence-numbered decision records.
//!
//! Every decision a presence server takes on a query from another network
//! that shows B's status is journaled: these are the charge records the
//! operators bill each other from. Decisions that charge nothing
//! (`NotAvailable`, refusals) are not journaled one by one; instead, once
//! per turn, each transaction stream that had any leaves one
//! [`StreamMark`] (its highest such transaction), which is all a restart
//! needs to know of them. So the journal grows by one record (57 bytes
//! plus the origin's name) per charged query, and by one mark (27 bytes
//! plus the name) per stream per turn for everything else, however many
//! queries the turn answered; at worst (one query a turn) a mark a query,
//! less than half a record. The journal promises:
//!
//! - **Durable before answered.** The node numbers its decision records and
//!   holds every presence-server answer to another network until the
//!   journal says the records up to it are on disk (`fdatasync`,
//!   [`writer::JournalWriter::durable_seq`], reported to the node as a
//!   [`Durability`]).
//! - **Group commit.** A worker appends a turn's records with one `write`;
//!   a syncer thread per worker `fdatasync`s whatever has been written since
//!   its last sync, so one sync covers every turn that arrived while the
//!   previous one ran. A record waits at most for the sync in progress and
//!   its own.
//! - **Rotation** by size and age: a new segment is opened before a write
//!   would pass `segment_max_bytes`, or when the segment is older than
//!   `segment_max_age`, without waiting for the disk on the worker: the
//!   syncer syncs the old segments, the new one and the directory, in that
//!   order, before any record of the new one counts as durable. Nothing is
//!   rewritten; closed segments are deleted only by retention, when
//!   configured ([`retention`]).
//! - **Recovery.** On start every segment is read and checked. A torn tail (a
//!   record cut short, or whose checksum fails, with nothing valid after it)
//!   is cut off and reported; damage followed by valid records is reported
//!   and skipped, never cut. Numbering continues after the last record.
//!   The decisions still inside the duplicate-suppression window rebuild it,
//!   so a query retransmitted across a restart is not charged twice; the
//!   stream marks of that window make the presence servers answer
//!   `Overloaded` to a transaction at or below its stream's mark that the
//!   rebuilt window does not hold, until the mark's window has passed (it
//!   may have been decided without a charge before the restart).
//! - **Fail closed.** A failed `write` or `fdatasync` (a full or failing
//!   disk) stops charging: answers whose records are not durable are turned
//!   into `Error(ChargingUnavailable)`, and until a new segment can be opened
//!   the presence server refuses chargeable queries with that outcome. The
//!   new segment's header voids the records that were refused (`void
//!   from`): some may have reached the disk, and they charge nothing.
//!   (Should the process die while the journal is failed, those records
//!   are not voided: the one case where a record can outlive a refusal.)
//!
//! Segment file `<network>-w<worker>-<first seq, 20 digits>.cdrj`:
//!
//! ```text
//! header: "PGWCDRJ1" | u16 name length | network name | u16 worker
//!         | u64 first seq | u64 created (unix ms) | u64 void from
//!         | u32 CRC-32 of the above
//! record: u32 body length | u32 CRC-32 of body | body
//! body:   u64 seq | u64 at (unix ms) | u64 txid | watcher (7 bytes, the
//!         wire form of wire-format §2) | target (7 bytes) | u16 reply node
//!         | u16 presence server
//!         | u8 outcome | u8 detail | u32 value | u8 length | origin network
//! mark:   u32 (0x8000_0000 | body length) | u32 CRC-32 of that word and body | body
//! body:   u64 at (unix ms) | u64 highest txid | u16 reply node
//!         | u8 length | origin network
//! ```
//!
//! Records and marks interleave in file order; marks carry no sequence
//! number (the records' numbering has no gaps), and `cdr dump` lists only
//! records.
//!
//! All integers big-endian; CRC-32 is IEEE (the `crc32fast` crate).
//!
//! Time is an argument: the writer reads no clock (rotation age, sync
//! stalls and retries run on the `now` its caller passes).

mod dump;
mod format;
pub mod retention;
mod scan;
pub mod writer;

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use presence_codec::{Msisdn, Outcome, MSISDN_WIRE_LEN};

use crate::roles::{DecisionRecord, PsId};

pub use dump::{dump, DumpSummary, DUMP_HEADER};
pub use format::{encode_entry, encode_mark, encode_record, MarkRef, SegmentHeader};
pub use scan::{
    fuzz_scan, read_header, recover, scan_segment, segment_paths, Damage, Recovery, SegmentScan,
};
pub use writer::{
    GroupCommit, JournalSettings, JournalTime, JournalWriter, SegmentLimits, SyncState,
};

/// First bytes of every segment.
pub const SEGMENT_MAGIC: &[u8; 8] = b"PGWCDRJ1";
/// File name extension of segments.
pub const SEGMENT_EXT: &str = "cdrj";
/// Longest network name a record carries.
pub const ORIGIN_NAME_MAX: usize = 255;
/// Longest record body accepted on reading (a length beyond it is damage).
pub(crate) const BODY_MAX: usize =
    8 + 8 + 8 + 2 * MSISDN_WIRE_LEN + 2 + 2 + 1 + 1 + 4 + 1 + ORIGIN_NAME_MAX;
pub(crate) const BODY_FIXED: usize = BODY_MAX - ORIGIN_NAME_MAX;
/// Bit 31 of a record's length word: the record is a [`StreamMark`].
pub(crate) const MARK_FLAG: u32 = 1 << 31;
/// A stream mark's body without its origin name.
pub(crate) const MARK_BODY_FIXED: usize = 8 + 8 + 2 + 1;

/// Why the journal could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// A file or directory operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
    /// A file is not a segment of this format.
    #[error("{path}: not a charge-record segment: {reason}")]
    BadHeader {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: &'static str,
    },
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> JournalError + '_ {
    move |source| JournalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One journaled decision, as read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalEntry {
    /// Position in its worker's journal (from 1, no gaps in a healthy one).
    pub seq: u64,
    /// When the presence server decided (unix ms).
    pub at_unix_ms: u64,
    /// A's network: the origin the border gateway authenticated.
    pub origin: String,
    /// The transaction, as A's network numbered it.
    pub txid: u64,
    /// A.
    pub watcher: Msisdn,
    /// B.
    pub target: Msisdn,
    /// A's WA instance.
    pub reply_node: u16,
    /// The presence server.
    pub ps: PsId,
    /// What A's network was told.
    pub outcome: Outcome,
}

/// A stream mark: the highest transaction of one stream (origin network ×
/// A's WA instance) that a presence server decided *without* a charge in
/// one turn. Such decisions are not journaled one by one (a flood of
/// queries answered `NotAvailable` would write a record each); after a
/// restart, the marks of the last window tell the presence servers which
/// transactions may have been decided already, so that none is decided a
/// second time (and charged for an answer its WA no longer takes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamMark {
    /// When the turn ended (unix ms): the mark holds for a window after.
    pub at_unix_ms: u64,
    /// A's network.
    pub origin: String,
    /// A's WA instance (the top 16 bits of its transaction ids).
    pub reply_node: u16,
    /// The highest transaction id decided without a charge in the turn.
    pub high_water: u64,
}

impl JournalEntry {
    /// Whether it charges A's network (B's status was shown).
    pub fn chargeable(&self) -> bool {
        self.outcome.shows_status()
    }
}

/// Where a node's decision records go, and how it asks for them to become
/// durable: the journal writer in the appliance, a model in the simulation.
pub trait JournalSink {
    /// Takes record `seq` (numbered by the node, consecutively), decided at
    /// `at_unix_ms`, on a query from network `origin`.
    fn append(&mut self, seq: u64, at_unix_ms: u64, origin: &str, record: &DecisionRecord);
    /// Takes a stream mark (not numbered), made durable by the next sync
    /// like the records appended with it.
    fn mark(&mut self, mark: MarkRef<'_>);
    /// Asks for everything appended so far to become durable; the sync
    /// that does it reports `ticket` back ([`Durability::synced_ticket`]).
    fn sync(&mut self, ticket: u64);
}

/// What the journal reports to its node: how far records are durable, and
/// whether it can still make them so.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Durability {
    /// Every record numbered up to this one is on disk.
    pub durable_seq: u64,
    /// Every sync asked for with a ticket up to this one has completed.
    pub synced_ticket: u64,
    /// Records are being made durable; `false` once a write or sync
    /// failed, until a new segment opens.
    pub healthy: bool,
}

/// Mode of segment files: owner read-write, group read (an exporter in
/// the appliance's group), nobody else.
pub const SEGMENT_MODE: u32 = 0o640;

/// Opens a new segment file with its header written, for appending.
pub(crate) fn create_segment(dir: &Path, header: &SegmentHeader) -> Result<File, JournalError> {
    let path = dir.join(header.file_name());
    // Charge records name watcher and target: personal data, readable by
    // the appliance's user and group only (SEGMENT_MODE, whatever the umask).
    let mut file = std::fs::OpenOptions::new()
        .create_new(true)
        .append(true)
        .mode(SEGMENT_MODE)
        .open(&path)
        .map_err(io_err(&path))?;
    let written = file
        .set_permissions(std::fs::Permissions::from_mode(SEGMENT_MODE))
        .and_then(|()| file.write_all(&header.encode()));
    if let Err(e) = written {
        // A header that did not fit (a full disk): leave no file behind,
        // so the next attempt can create it again.
        let _ = std::fs::remove_file(&path);
        return Err(JournalError::Io { path, source: e });
    }
    Ok(file)
}

/// Syncs a directory, so entries created in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), JournalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// A fresh, empty scratch directory for a journal test.
#[cfg(test)]
pub(crate) fn test_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("journal-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
