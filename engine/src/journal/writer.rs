//! One worker's journal writer and its syncer thread.
//!
//! The node numbers its decision records and hands them over each turn
//! ([`JournalSink::append`]), with a ticket for the sync it wants
//! ([`JournalSink::sync`]). At the turn's end the worker calls
//! [`JournalWriter::end_turn`]: one `write` of the turn's records (rotating
//! first if the segment is full or old) and one request to the syncer
//! thread, which takes every request waiting, `fdatasync`s the newest file
//! once, publishes the highest sequence number and ticket now durable and
//! wakes the worker; the worker reports that to its node
//! ([`JournalWriter::durability`]), which releases the answers that waited
//! for it. Nothing on the worker's side blocks on the disk except opening a
//! segment. The writer reads no clock: every method that needs the time
//! takes a [`JournalTime`].

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use std::sync::{Condvar, Mutex};

use super::{
    create_segment, encode_mark, encode_record, sync_dir, Durability, JournalError, JournalSink,
    MarkRef, SegmentHeader,
};
use crate::roles::DecisionRecord;

/// When a segment is closed and the next one opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentLimits {
    /// Before a write would make the segment larger than this.
    pub max_bytes: u64,
    /// Once the segment is this old (checked when writing).
    pub max_age: Duration,
}

/// How many records a sync should cover under load: group commit.
///
/// A sync costs the same however many records it covers (about 100 µs of
/// CPU per `fdatasync` on the project's VM, `BENCHMARKS.md`), so under load
/// the writer lets records gather: after a sync was asked for, the next is
/// asked for once `records` more are written, or `wait_us` after the last,
/// whichever comes first. An idle journal syncs at once (the wait runs from
/// the previous sync request, so the first record after a quiet spell does
/// not wait). `records = 1` syncs every turn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupCommit {
    /// Records a sync waits for under load.
    pub records: u64,
    /// Longest a written record waits for its sync request, in µs.
    pub wait_us: u64,
}

/// How a journal writer rotates and syncs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JournalSettings {
    /// When a new segment opens.
    pub segments: SegmentLimits,
    /// How many records one sync gathers under load.
    pub group_commit: GroupCommit,
}

impl Default for GroupCommit {
    fn default() -> GroupCommit {
        GroupCommit {
            records: 1_024,
            wait_us: 1_000,
        }
    }
}

impl Default for SegmentLimits {
    fn default() -> SegmentLimits {
        SegmentLimits {
            max_bytes: 64 << 20,
            max_age: Duration::from_secs(3600),
        }
    }
}

/// The time, as the writer's caller reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JournalTime {
    /// Microseconds on the caller's monotonic clock (rotation age, sync
    /// stalls, retries, group commit).
    pub us: u64,
    /// Milliseconds since the Unix epoch (segment headers).
    pub unix_ms: u64,
}

impl JournalTime {
    /// Milliseconds on the monotonic clock.
    pub fn ms(&self) -> u64 {
        self.us / 1000
    }
}

/// How long a failed journal waits before trying a new segment.
const RETRY_AFTER_FAILURE_MS: u64 = 1_000;
/// Records written but not durable for this long, with no sync completing,
/// count as a failed disk: a hung `fdatasync` (a dead NFS server, a path
/// queueing I/O forever) must not hold answers without bound.
const SYNC_STALL_MS: u64 = 5_000;

/// What the worker must do about charging.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncState {
    /// Records are being made durable.
    Healthy,
    /// A write or sync failed: records after [`JournalWriter::durable_seq`]
    /// may not be on disk, and no new record can be taken until a new
    /// segment opens. Charging must stop.
    Failed,
}

struct SyncRequest {
    upto: u64,
    file: Arc<File>,
    /// The node's ticket: once this sync completes, every ticket up to it
    /// is synced.
    ticket: u64,
    /// Segments rotated away since the last request, oldest first: each is
    /// synced before `file`, since records numbered below `upto` may still
    /// be unsynced in them.
    retired: Vec<Arc<File>>,
    /// `file` is a new segment: the directory holding its entry is synced
    /// after it, before any of its records counts as durable.
    new_segment: bool,
}

/// The worker's requests to its syncer: one slot, since a sync covers
/// every request before it (a request carries the segments rotated away
/// since the last one, so no unsynced record is ever in a file the slot
/// does not name). A mutex and a condition variable, not a channel: the
/// syncer sleeps in the kernel until asked, and never spins waiting.
#[derive(Default)]
struct Mailbox {
    state: Mutex<MailboxState>,
    asked: Condvar,
}

#[derive(Default)]
struct MailboxState {
    request: Option<SyncRequest>,
    closed: bool,
}

impl Mailbox {
    /// Merges `request` into the waiting one (newest file, highest record
    /// and ticket) and wakes the syncer.
    fn post(&self, request: SyncRequest) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.request = Some(match state.request.take() {
            Some(mut waiting) => {
                // A rotation between the two requests leaves the waiting
                // request's file among the retired, so it is still synced.
                if !Arc::ptr_eq(&waiting.file, &request.file)
                    && !request
                        .retired
                        .iter()
                        .any(|f| Arc::ptr_eq(f, &waiting.file))
                {
                    waiting.retired.push(waiting.file.clone());
                }
                waiting.retired.extend(request.retired);
                SyncRequest {
                    upto: waiting.upto.max(request.upto),
                    ticket: waiting.ticket.max(request.ticket),
                    file: request.file,
                    retired: waiting.retired,
                    new_segment: waiting.new_segment || request.new_segment,
                }
            }
            None => request,
        });
        drop(state);
        self.asked.notify_one();
    }

    /// The next request, or `None` once closed and empty.
    fn take(&self) -> Option<SyncRequest> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(request) = state.request.take() {
                return Some(request);
            }
            if state.closed {
                return None;
            }
            state = self.asked.wait(state).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn close(&self) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).closed = true;
        self.asked.notify_one();
    }
}

/// One worker's journal.
pub struct JournalWriter {
    dir: PathBuf,
    network: String,
    worker: u16,
    limits: SegmentLimits,
    file: Option<Arc<File>>,
    segment_bytes: u64,
    segment_opened_ms: u64,
    buf: Vec<u8>,
    /// Highest sequence number the node appended (taken or, while failed,
    /// refused).
    appended: u64,
    /// Highest sequence number handed to the file system.
    written: u64,
    /// The ticket the node asked for, not yet sent, and the last one sent.
    ticket_wanted: Option<u64>,
    last_ticket: u64,
    group: GroupCommit,
    /// The highest record a sync was asked for, and when (µs).
    requested: (u64, u64),
    durable: Arc<AtomicU64>,
    synced_ticket: Arc<AtomicU64>,
    /// The last value [`durable_seq`](Self::durable_seq) returned.
    confirmed: u64,
    sync_failed: Arc<AtomicBool>,
    mailbox: Arc<Mailbox>,
    syncer: Option<JoinHandle<()>>,
    /// Segments rotated away whose syncs have not been asked for yet.
    retired: Vec<Arc<File>>,
    /// The current segment opened since the last sync request: its
    /// directory entry is not durable yet.
    new_segment: bool,
    /// When the journal failed (ms), while it is failed.
    failed_at: Option<u64>,
    /// The durable sequence number last seen, and since when (ms) it has
    /// not moved while records were outstanding.
    progress: (u64, u64),
    /// Records written to the file system (cumulative).
    pub records_written: u64,
}

impl std::fmt::Debug for JournalWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JournalWriter")
            .field("dir", &self.dir)
            .field("worker", &self.worker)
            .field("appended", &self.appended)
            .field("durable", &self.confirmed)
            .finish()
    }
}

impl JournalWriter {
    /// Opens a new segment for `worker` in `dir`, numbering from
    /// `next_seq` (from recovery), and starts its syncer, which calls
    /// `wake` whenever more is durable or a sync failed.
    pub fn open(
        dir: &Path,
        network: &str,
        worker: u16,
        next_seq: u64,
        settings: JournalSettings,
        time: JournalTime,
        wake: impl Fn() + Send + 'static,
    ) -> Result<JournalWriter, JournalError> {
        let JournalSettings {
            segments: limits,
            group_commit: group,
        } = settings;
        let next_seq = next_seq.max(1);
        let durable = Arc::new(AtomicU64::new(next_seq - 1));
        let sync_failed = Arc::new(AtomicBool::new(false));
        let synced_ticket = Arc::new(AtomicU64::new(0));
        let mailbox = Arc::new(Mailbox::default());
        let mut writer = JournalWriter {
            dir: dir.to_path_buf(),
            network: network.to_string(),
            worker,
            limits,
            file: None,
            segment_bytes: 0,
            segment_opened_ms: time.ms(),
            buf: Vec::with_capacity(256 * 1024),
            appended: next_seq - 1,
            written: next_seq - 1,
            ticket_wanted: None,
            last_ticket: 0,
            group,
            // The first sync after opening is not held back.
            requested: (next_seq - 1, time.us.saturating_sub(group.wait_us)),
            durable: durable.clone(),
            synced_ticket: synced_ticket.clone(),
            confirmed: next_seq - 1,
            sync_failed: sync_failed.clone(),
            mailbox: mailbox.clone(),
            syncer: None,
            retired: Vec::new(),
            new_segment: false,
            failed_at: None,
            progress: (next_seq - 1, time.ms()),
            records_written: 0,
        };
        writer.open_segment(time, 0)?;
        let thread = std::thread::Builder::new()
            .name(format!("journal-{worker}"))
            .spawn({
                let dir = dir.to_path_buf();
                move || run_syncer(&dir, &mailbox, &durable, &synced_ticket, &sync_failed, wake)
            })
            .map_err(|source| JournalError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
        writer.syncer = Some(thread);
        Ok(writer)
    }

    /// The sequence number the node numbers its next record with.
    pub fn next_seq(&self) -> u64 {
        self.appended + 1
    }

    /// The header of a segment opened now: it starts with the first
    /// record not yet written (those in the buffer go into it).
    fn next_header(&self, time: JournalTime, void_from: u64) -> SegmentHeader {
        SegmentHeader {
            network: self.network.clone(),
            worker: self.worker,
            first_seq: self.written + 1,
            created_unix_ms: time.unix_ms,
            void_from,
        }
    }

    /// Rotation, on the worker without waiting for the disk: the new
    /// segment is created here; the old segment's last records, the new
    /// header and the directory entry are synced by the syncer, in that
    /// order, before any record of the new segment counts as durable.
    fn rotate(&mut self, time: JournalTime) -> Result<(), JournalError> {
        let header = self.next_header(time, 0);
        let file = create_segment(&self.dir, &header)?;
        if let Some(old) = self.file.take() {
            self.retired.push(old);
        }
        self.new_segment = true;
        self.segment_bytes = header.encode().len() as u64;
        self.segment_opened_ms = time.ms();
        self.file = Some(Arc::new(file));
        Ok(())
    }

    /// Opens a segment and waits for its header and directory entry to be
    /// durable: on start, and when recovering from a failure (whose void
    /// range must be on disk before numbering goes on).
    fn open_segment(&mut self, time: JournalTime, void_from: u64) -> Result<(), JournalError> {
        let io = |dir: &Path| {
            let dir = dir.to_path_buf();
            move |source| JournalError::Io { path: dir, source }
        };
        let header = self.next_header(time, void_from);
        let path = self.dir.join(header.file_name());
        let file = create_segment(&self.dir, &header)?;
        // The header (with its void range) and the directory entry are
        // durable before any record of the segment counts as durable. A
        // segment that could not be made so is removed, so the next try
        // can create it again.
        if let Err(e) = file
            .sync_data()
            .map_err(io(&self.dir))
            .and_then(|()| sync_dir(&self.dir))
        {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        self.segment_bytes = header.encode().len() as u64;
        self.segment_opened_ms = time.ms();
        self.file = Some(Arc::new(file));
        Ok(())
    }

    /// The highest sequence number known to be on disk, as far as the
    /// caller may act on it: once the journal has failed it stays at what it
    /// last returned, so every answer released was released on a value
    /// below the records the recovery header voids.
    pub fn durable_seq(&mut self) -> u64 {
        if self.failed_at.is_none() {
            self.confirmed = self.confirmed.max(self.durable.load(Ordering::Acquire));
        }
        self.confirmed
    }

    /// What to tell the node: durable records, synced tickets, health.
    pub fn durability(&mut self) -> Durability {
        // The ticket first: the syncer publishes records, then tickets.
        let synced_ticket = self.synced_ticket.load(Ordering::Acquire);
        Durability {
            durable_seq: self.durable_seq(),
            synced_ticket,
            healthy: self.failed_at.is_none(),
        }
    }

    /// Whether records are being made durable.
    pub fn state(&self) -> SyncState {
        if self.failed_at.is_some() {
            SyncState::Failed
        } else {
            SyncState::Healthy
        }
    }

    /// Ends a turn: writes what was appended (rotating first if the
    /// segment is full or old) and asks for it, and the node's ticket, to
    /// be synced. Notices a failed or stalled sync. Returns the state after.
    pub fn end_turn(&mut self, time: JournalTime) -> SyncState {
        if self.sync_failed.load(Ordering::Acquire) && self.failed_at.is_none() {
            self.fail(time, "a sync failed");
        }
        if self.failed_at.is_none() {
            let durable = self.durable.load(Ordering::Acquire);
            if durable != self.progress.0 || durable >= self.written {
                self.progress = (durable, time.ms());
            } else if time.ms().saturating_sub(self.progress.1) >= SYNC_STALL_MS {
                self.fail(time, "no sync completed for 5 s");
                // The syncer may still be stuck in that sync: whatever it
                // reports later is ignored until a new segment opens.
                self.sync_failed.store(true, Ordering::Release);
            }
        }
        if self.failed_at.is_some() {
            return SyncState::Failed;
        }
        if self.buf.is_empty() {
            self.request_sync(time, false);
            return SyncState::Healthy;
        }
        let full = self.segment_bytes + self.buf.len() as u64 > self.limits.max_bytes;
        let age_ms = u64::try_from(self.limits.max_age.as_millis()).unwrap_or(u64::MAX);
        let old = time.ms().saturating_sub(self.segment_opened_ms) >= age_ms;
        if (full || old) && self.segment_bytes > 0 {
            if let Err(e) = self.rotate(time) {
                self.fail(time, &e.to_string());
                return SyncState::Failed;
            }
        }
        let Some(file) = self.file.clone() else {
            self.fail(time, "no segment open");
            return SyncState::Failed;
        };
        if let Err(e) = (&*file).write_all(&self.buf) {
            self.fail(time, &format!("write: {e}"));
            return SyncState::Failed;
        }
        self.segment_bytes += self.buf.len() as u64;
        self.records_written += self.appended - self.written;
        self.written = self.appended;
        self.buf.clear();
        self.request_sync(time, false);
        SyncState::Healthy
    }

    /// Asks the syncer for what is written and the ticket wanted, now or,
    /// under load, once enough has gathered (see [`GroupCommit`]); `now`
    /// asks at once.
    fn request_sync(&mut self, time: JournalTime, now: bool) {
        let unsynced = self.written.saturating_sub(self.requested.0);
        if unsynced == 0 && self.ticket_wanted.is_none() {
            return;
        }
        let gathered = unsynced >= self.group.records;
        let waited = time.us >= self.requested.1.saturating_add(self.group.wait_us);
        if !(now || gathered || waited) {
            return;
        }
        let Some(file) = self.file.clone() else {
            return;
        };
        let ticket = self.ticket_wanted.take().unwrap_or(self.last_ticket);
        self.last_ticket = ticket;
        self.requested = (self.written, time.us);
        self.mailbox.post(SyncRequest {
            upto: self.written,
            file,
            ticket,
            retired: std::mem::take(&mut self.retired),
            new_segment: std::mem::take(&mut self.new_segment),
        });
    }

    /// When [`end_turn`](Self::end_turn) should next run to ask for a
    /// sync that group commit holds back (µs), if one is held.
    pub fn sync_due_us(&self) -> Option<u64> {
        let held = self.written > self.requested.0 || self.ticket_wanted.is_some();
        (held && self.failed_at.is_none())
            .then(|| self.requested.1.saturating_add(self.group.wait_us))
    }

    fn fail(&mut self, time: JournalTime, why: &str) {
        self.failed_at = Some(time.ms());
        self.file = None;
        self.buf.clear();
        self.ticket_wanted = None;
        // Their records are voided by the next segment's header.
        self.retired.clear();
        self.new_segment = false;
        tracing::error!(
            worker = self.worker,
            durable = self.confirmed,
            appended = self.appended,
            "charge-record journal failed ({why}): charging stops; records after the durable \
             sequence number may be missing or on disk without an answer"
        );
    }

    /// While failed, at most once a second: tries a new segment. Returns
    /// whether the journal is healthy again.
    pub fn try_recover(&mut self, time: JournalTime) -> bool {
        let Some(at) = self.failed_at else {
            return true;
        };
        if time.ms().saturating_sub(at) < RETRY_AFTER_FAILURE_MS {
            return false;
        }
        self.failed_at = Some(time.ms());
        // Numbering skips what may have been lost, so no number is reused;
        // the answers waiting on those numbers were refused when the
        // failure was noticed, and the new header voids their records.
        self.written = self.appended;
        let void_from = if self.appended > self.confirmed {
            self.confirmed + 1
        } else {
            0
        };
        match self.open_segment(time, void_from) {
            Ok(()) => {
                self.sync_failed.store(false, Ordering::Release);
                self.progress = (self.appended, time.ms());
                self.durable.store(self.appended, Ordering::Release);
                self.confirmed = self.appended;
                self.failed_at = None;
                tracing::info!(worker = self.worker, "charge-record journal writable again");
                true
            }
            Err(e) => {
                self.file = None;
                tracing::warn!(worker = self.worker, error = %e, "charge-record journal still failing");
                false
            }
        }
    }

    /// On a clean stop: writes what is left, syncs it on this thread, and
    /// stops the syncer. Returns whether everything appended is durable.
    pub fn close(&mut self, time: JournalTime) -> bool {
        let _ = self.end_turn(time);
        self.request_sync(time, true);
        self.mailbox.close();
        if let Some(thread) = self.syncer.take() {
            let _ = thread.join();
        }
        if self.failed_at.is_some() {
            return false;
        }
        match self.file.as_ref().map(|f| f.sync_data()) {
            Some(Ok(())) => {
                self.durable.store(self.written, Ordering::Release);
                self.confirmed = self.written;
                true
            }
            _ => false,
        }
    }
}

impl JournalSink for JournalWriter {
    /// Encodes the record into the turn's buffer; while the journal has
    /// failed, nothing is taken (the node charges nothing meanwhile, and
    /// the next segment's header voids the numbers).
    fn append(&mut self, seq: u64, at_unix_ms: u64, origin: &str, record: &DecisionRecord) {
        assert_eq!(
            seq,
            self.appended + 1,
            "the node numbers records consecutively from the writer's next_seq"
        );
        self.appended = seq;
        if self.failed_at.is_none() {
            encode_record(&mut self.buf, seq, at_unix_ms, origin, record);
        }
    }

    fn mark(&mut self, mark: MarkRef<'_>) {
        if self.failed_at.is_none() {
            encode_mark(&mut self.buf, mark);
        }
    }

    fn sync(&mut self, ticket: u64) {
        if self.failed_at.is_none() {
            self.ticket_wanted = Some(ticket);
        }
    }
}

impl Drop for JournalWriter {
    fn drop(&mut self) {
        self.mailbox.close();
        if let Some(thread) = self.syncer.take() {
            let _ = thread.join();
        }
    }
}

fn run_syncer(
    dir: &Path,
    mailbox: &Mailbox,
    durable: &AtomicU64,
    synced_ticket: &AtomicU64,
    failed: &AtomicBool,
    wake: impl Fn(),
) {
    while let Some(request) = mailbox.take() {
        if failed.load(Ordering::Acquire) {
            // Nothing more is made durable until the worker reopens.
            continue;
        }
        let synced = request
            .retired
            .iter()
            .chain(std::iter::once(&request.file))
            .try_for_each(|file| file.sync_data())
            .and_then(|()| {
                if request.new_segment {
                    File::open(dir).and_then(|d| d.sync_all())
                } else {
                    Ok(())
                }
            });
        if synced.is_ok() {
            // Durable first: a worker that sees the ticket sees the records.
            durable.fetch_max(request.upto, Ordering::AcqRel);
            synced_ticket.fetch_max(request.ticket, Ordering::AcqRel);
        } else {
            failed.store(true, Ordering::Release);
        }
        wake();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::{recover, scan_segment, segment_paths, test_dir, JournalSink};
    use crate::roles::PsId;
    use crate::table::NetworkId;
    use presence_codec::{Msisdn, Outcome};
    use std::time::Instant;

    fn record(txid: u64) -> DecisionRecord {
        DecisionRecord {
            origin: NetworkId(1),
            txid,
            watcher: Msisdn::parse_digits(b"447700900123").unwrap(),
            target: Msisdn::parse_digits(b"4915112345678").unwrap(),
            reply_node: 0,
            at: 0,
            ps: PsId(1),
            outcome: Outcome::Detached { confirmed_age_s: 1 },
        }
    }

    /// Syncs whatever each turn wrote.
    const EVERY_TURN: GroupCommit = GroupCommit {
        records: 1,
        wait_us: 0,
    };

    fn open(
        dir: &Path,
        worker: u16,
        next_seq: u64,
        segments: SegmentLimits,
        group_commit: GroupCommit,
        time: JournalTime,
    ) -> JournalWriter {
        let settings = JournalSettings {
            segments,
            group_commit,
        };
        JournalWriter::open(dir, "t-mobile.de", worker, next_seq, settings, time, || {}).unwrap()
    }

    fn at(ms: u64) -> JournalTime {
        JournalTime {
            us: ms * 1000,
            unix_ms: 1_700_000_000_000 + ms,
        }
    }

    /// Appends `record(txid)` as the writer's next number.
    fn append(w: &mut JournalWriter, txid: u64) -> u64 {
        let seq = w.next_seq();
        w.append(seq, 1, "o2.gb", &record(txid));
        seq
    }

    fn wait_durable(w: &mut JournalWriter, seq: u64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while w.durable_seq() < seq {
            assert!(Instant::now() < deadline, "not durable in 10 s");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn records_become_durable_in_order_and_rotate_without_loss() {
        let dir = test_dir("writer");
        let limits = SegmentLimits {
            max_bytes: 1_000,
            max_age: Duration::from_secs(3600),
        };
        let mut w = open(&dir, 0, 1, limits, GroupCommit::default(), at(0));
        for turn in 0..20u64 {
            for i in 0..5 {
                assert_eq!(append(&mut w, turn * 5 + i), turn * 5 + i + 1);
            }
            assert_eq!(w.end_turn(at(turn)), SyncState::Healthy);
        }
        wait_durable(&mut w, 100);
        assert!(w.close(at(100)));
        let paths = segment_paths(&dir, Some("t-mobile.de")).unwrap();
        assert!(paths.len() >= 5, "rotated by size: {}", paths.len());
        let mut seqs = Vec::new();
        for p in &paths {
            let bytes = std::fs::read(p).unwrap();
            assert!(bytes.len() <= 1_000);
            let scan = scan_segment(p, &bytes).unwrap();
            assert!(scan.damage.is_empty());
            seqs.extend(scan.entries.iter().map(|e| e.seq));
        }
        assert_eq!(seqs, (1..=100).collect::<Vec<_>>());
        // Charge records are personal data: no segment is world-readable.
        for p in &paths {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, crate::journal::SEGMENT_MODE, "{}", p.display());
        }
        let recovery = recover(&dir, "t-mobile.de", 0).unwrap();
        assert_eq!(recovery.next_seq(0), 101);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn two_rotations_before_the_syncer_looks_sync_every_retired_segment() {
        // The syncer is handed a request naming the newest segment and
        // every segment rotated away since the last request: none of
        // their records counts as durable before all of them are synced.
        let mailbox = Mailbox::default();
        let dir = test_dir("merge");
        let file = |n: u64| Arc::new(File::create(dir.join(format!("{n}"))).unwrap());
        let (a, b, c) = (file(1), file(2), file(3));
        let request = |file: &Arc<File>, upto, retired: Vec<Arc<File>>| SyncRequest {
            upto,
            file: file.clone(),
            ticket: upto,
            retired,
            new_segment: !Arc::ptr_eq(file, &a),
        };
        mailbox.post(request(&a, 10, vec![]));
        mailbox.post(request(&b, 20, vec![a.clone()]));
        mailbox.post(request(&c, 30, vec![b.clone()]));
        let merged = mailbox.take().unwrap();
        assert!(Arc::ptr_eq(&merged.file, &c));
        assert_eq!(
            (merged.upto, merged.ticket, merged.new_segment),
            (30, 30, true)
        );
        let retired: Vec<bool> = [&a, &b]
            .iter()
            .map(|f| merged.retired.iter().any(|r| Arc::ptr_eq(r, f)))
            .collect();
        assert_eq!(retired, [true, true]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_ticket_waits_for_a_sync_even_in_a_turn_without_records() {
        let dir = test_dir("ticket");
        let mut w = open(&dir, 0, 1, SegmentLimits::default(), EVERY_TURN, at(0));
        // A turn with a record, then one with none (a repeat's answer).
        append(&mut w, 1);
        w.sync(1);
        assert_eq!(w.end_turn(at(1)), SyncState::Healthy);
        w.sync(2);
        assert_eq!(w.end_turn(at(2)), SyncState::Healthy);
        let deadline = Instant::now() + Duration::from_secs(10);
        while w.durability().synced_ticket < 2 {
            assert!(Instant::now() < deadline, "the empty turn was never synced");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(w.durable_seq(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn under_load_a_sync_waits_for_enough_records_or_the_wait_whichever_comes_first() {
        let dir = test_dir("group");
        let group = GroupCommit {
            records: 4,
            wait_us: 1_000,
        };
        let time = |us: u64| JournalTime {
            us,
            unix_ms: 1_700_000_000_000,
        };
        let mut w = open(&dir, 0, 1, SegmentLimits::default(), group, time(10_000));
        // After a quiet spell the first record is synced at once.
        append(&mut w, 1);
        assert_eq!(w.end_turn(time(10_000)), SyncState::Healthy);
        assert_eq!(w.sync_due_us(), None);
        wait_durable(&mut w, 1);
        // 100 µs later one record is held for the wait or for three more.
        append(&mut w, 2);
        assert_eq!(w.end_turn(time(10_100)), SyncState::Healthy);
        assert_eq!(w.sync_due_us(), Some(11_000));
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(w.durable_seq(), 1, "held back: one record, 100 µs");
        for txid in 3..=5 {
            append(&mut w, txid);
        }
        assert_eq!(w.end_turn(time(10_200)), SyncState::Healthy);
        assert_eq!(w.sync_due_us(), None, "four records gathered: asked");
        wait_durable(&mut w, 5);
        // A lone record waits no longer than the wait.
        append(&mut w, 6);
        assert_eq!(w.end_turn(time(10_300)), SyncState::Healthy);
        assert_eq!(w.sync_due_us(), Some(11_200));
        assert_eq!(w.end_turn(time(11_200)), SyncState::Healthy);
        assert_eq!(w.sync_due_us(), None);
        wait_durable(&mut w, 6);
        // Closing syncs whatever is held.
        append(&mut w, 7);
        assert_eq!(w.end_turn(time(11_300)), SyncState::Healthy);
        assert!(w.sync_due_us().is_some());
        assert!(w.close(time(11_301)));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_segment_older_than_its_age_limit_is_followed_by_a_new_one() {
        let dir = test_dir("age");
        let limits = SegmentLimits {
            max_bytes: 64 << 20,
            max_age: Duration::from_millis(30),
        };
        let mut w = open(&dir, 3, 41, limits, GroupCommit::default(), at(0));
        for turn in 0..3u64 {
            append(&mut w, turn);
            // Forty milliseconds pass between turns.
            assert_eq!(w.end_turn(at(turn * 40)), SyncState::Healthy);
        }
        assert!(w.close(at(120)));
        let names: Vec<String> = segment_paths(&dir, None)
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        // The first segment was already old at the second turn's write.
        assert_eq!(
            names,
            [
                "t-mobile.de-w3-00000000000000000041.cdrj",
                "t-mobile.de-w3-00000000000000000042.cdrj",
                "t-mobile.de-w3-00000000000000000043.cdrj"
            ]
        );
        assert_eq!(recover(&dir, "t-mobile.de", 0).unwrap().next_seq(3), 44);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_write_failure_stops_taking_records_until_a_segment_opens() {
        // RLIMIT_FSIZE would signal the whole test process; a read-only
        // file descriptor makes the write fail instead.
        let dir = test_dir("fail");
        let mut w = open(&dir, 0, 1, SegmentLimits::default(), EVERY_TURN, at(0));
        let path = segment_paths(&dir, None).unwrap().remove(0);
        w.file = Some(Arc::new(File::open(&path).unwrap()));
        assert_eq!(append(&mut w, 1), 1);
        assert_eq!(w.end_turn(at(10)), SyncState::Failed);
        assert_eq!(w.durable_seq(), 0, "the record never became durable");
        assert!(!w.durability().healthy);
        assert!(!w.try_recover(at(500)), "a second has not passed");
        assert!(w.try_recover(at(1_010)));
        // The new segment voids record 1: its answer was refused.
        let newest = segment_paths(&dir, None).unwrap().pop().unwrap();
        let scan = scan_segment(&newest, &std::fs::read(&newest).unwrap()).unwrap();
        assert_eq!((scan.header.first_seq, scan.header.void_from), (2, 1));
        assert_eq!(append(&mut w, 3), 2);
        assert_eq!(w.end_turn(at(1_020)), SyncState::Healthy);
        wait_durable(&mut w, 2);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
