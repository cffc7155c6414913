//! The charge-record journal (step 11): append-only segment files of
//! checksummed, sequence-numbered decision records.
//!
//! Every decision a presence server takes on a query from another network is
//! journaled; the chargeable ones (B's status shown) are the charge records
//! the operators bill each other from. The journal promises:
//!
//! - **Durable before answered.** The runtime holds every presence-server
//!   answer to another network until the journal says the records written
//!   up to it are on disk (`fdatasync`, [`writer::JournalWriter::durable_seq`]).
//! - **Group commit.** A worker appends a turn's records with one `write`;
//!   a syncer thread per worker `fdatasync`s whatever has been written since
//!   its last sync, so one sync covers every turn that arrived while the
//!   previous one ran. A record waits at most for the sync in progress and
//!   its own.
//! - **Rotation** by size and age: a new segment is opened (and the
//!   directory synced) before a write would pass `segment_max_bytes`, or when
//!   the segment is older than `segment_max_age`. Nothing is rewritten.
//! - **Recovery.** On start every segment is read and checked. A torn tail (a
//!   record cut short, or whose checksum fails, with nothing valid after it)
//!   is cut off and reported; damage followed by valid records is reported
//!   and skipped, never cut. Numbering continues after the last record.
//!   The decisions still inside the duplicate-suppression window rebuild it,
//!   so a query retransmitted across a restart is not charged twice.
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
//! body:   u64 seq | u64 at (unix ms) | u64 txid | watcher (8 bytes, BCD)
//!         | target (8 bytes, BCD) | u16 reply node | u16 presence server
//!         | u8 outcome | u8 detail | u32 value | u8 length | origin network
//! ```
//!
//! All integers big-endian; CRC-32 is IEEE (the `crc32fast` crate).

pub mod writer;

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use presence_codec::{ErrorReason, Msisdn, Outcome, Reachability, MSISDN_WIRE_LEN};

use crate::roles::{DecisionRecord, PsId};

pub use writer::{JournalWriter, SegmentLimits, SyncState};

/// First bytes of every segment.
pub const SEGMENT_MAGIC: &[u8; 8] = b"PGWCDRJ1";
/// File name extension of segments.
pub const SEGMENT_EXT: &str = "cdrj";
/// Longest network name a record carries.
pub const ORIGIN_NAME_MAX: usize = 255;
/// Longest record body accepted on reading (a length beyond it is damage).
const BODY_MAX: usize = 8 + 8 + 8 + 2 * MSISDN_WIRE_LEN + 2 + 2 + 1 + 1 + 4 + 1 + ORIGIN_NAME_MAX;
const BODY_FIXED: usize = BODY_MAX - ORIGIN_NAME_MAX;

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

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> JournalError + '_ {
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

impl JournalEntry {
    /// Whether it charges A's network (B's status was shown).
    pub fn chargeable(&self) -> bool {
        crate::roles::shows_status(&self.outcome)
    }
}

/// Appends one record for `record` (decided at `at_unix_ms`, from `origin`)
/// numbered `seq` to `buf`. Names longer than [`ORIGIN_NAME_MAX`] are cut
/// (network names are at most 64 bytes by configuration).
pub fn encode_record(
    buf: &mut Vec<u8>,
    seq: u64,
    at_unix_ms: u64,
    origin: &str,
    record: &DecisionRecord,
) {
    let name = origin.as_bytes();
    let name = &name[..name.len().min(ORIGIN_NAME_MAX)];
    let body_len = BODY_FIXED + name.len();
    let start = buf.len();
    buf.extend_from_slice(&(body_len as u32).to_be_bytes());
    buf.extend_from_slice(&[0; 4]);
    let body = buf.len();
    buf.extend_from_slice(&seq.to_be_bytes());
    buf.extend_from_slice(&at_unix_ms.to_be_bytes());
    buf.extend_from_slice(&record.txid.to_be_bytes());
    buf.extend_from_slice(&record.watcher.to_wire());
    buf.extend_from_slice(&record.target.to_wire());
    buf.extend_from_slice(&record.reply_node.to_be_bytes());
    buf.extend_from_slice(&record.ps.0.to_be_bytes());
    let (code, detail, value) = outcome_fields(&record.outcome);
    buf.push(code);
    buf.push(detail);
    buf.extend_from_slice(&value.to_be_bytes());
    buf.push(name.len() as u8);
    buf.extend_from_slice(name);
    let crc = crc32fast::hash(&buf[body..]);
    buf[start + 4..start + 8].copy_from_slice(&crc.to_be_bytes());
}

fn outcome_fields(outcome: &Outcome) -> (u8, u8, u32) {
    match *outcome {
        Outcome::Attached {
            reach,
            confirmed_age_s,
        } => (1, reach.bits(), confirmed_age_s),
        Outcome::Detached { confirmed_age_s } => (2, 0, confirmed_age_s),
        Outcome::NotAvailable => (3, 0, 0),
        Outcome::Overloaded { retry_after_ms } => (4, 0, retry_after_ms),
        Outcome::Error(reason) => (5, reason as u8, 0),
    }
}

fn outcome_from(code: u8, detail: u8, value: u32) -> Option<Outcome> {
    Some(match code {
        1 => Outcome::Attached {
            reach: Reachability::from_bits(detail)?,
            confirmed_age_s: value,
        },
        2 => Outcome::Detached {
            confirmed_age_s: value,
        },
        3 => Outcome::NotAvailable,
        4 => Outcome::Overloaded {
            retry_after_ms: value,
        },
        5 => Outcome::Error(ErrorReason::from_code(detail)?),
        _ => return None,
    })
}

/// Big-endian reads over a byte slice.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, tail) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = tail;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(*self.take(1)?.first()?)
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }
    fn msisdn(&mut self) -> Option<Msisdn> {
        let wire: [u8; MSISDN_WIRE_LEN] = self.take(MSISDN_WIRE_LEN)?.try_into().ok()?;
        Msisdn::from_wire(wire).ok()
    }
}

/// The record at the start of `bytes`: the entry and its length, or `None`
/// if the bytes there are not a whole, intact record.
fn decode_record(bytes: &[u8]) -> Option<(JournalEntry, usize)> {
    let mut c = Cursor(bytes);
    let len = c.u32()? as usize;
    if !(BODY_FIXED..=BODY_MAX).contains(&len) {
        return None;
    }
    let crc = c.u32()?;
    let body = c.take(len)?;
    if crc32fast::hash(body) != crc {
        return None;
    }
    let mut b = Cursor(body);
    let seq = b.u64()?;
    let at_unix_ms = b.u64()?;
    let txid = b.u64()?;
    let watcher = b.msisdn()?;
    let target = b.msisdn()?;
    let reply_node = b.u16()?;
    let ps = PsId(b.u16()?);
    let (code, detail, value) = (b.u8()?, b.u8()?, b.u32()?);
    let outcome = outcome_from(code, detail, value)?;
    let name_len = usize::from(b.u8()?);
    let origin = std::str::from_utf8(b.take(name_len)?).ok()?.to_string();
    if !b.0.is_empty() {
        return None;
    }
    Some((
        JournalEntry {
            seq,
            at_unix_ms,
            origin,
            txid,
            watcher,
            target,
            reply_node,
            ps,
            outcome,
        },
        8 + len,
    ))
}

/// A segment's header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    /// The network whose presence servers wrote it.
    pub network: String,
    /// The worker that wrote it.
    pub worker: u16,
    /// The sequence number of its first record.
    pub first_seq: u64,
    /// When it was opened (unix ms).
    pub created_unix_ms: u64,
    /// Opened after a failure: this worker's records numbered from here up
    /// to `first_seq` never became durable and their answers were refused,
    /// so they charge nothing even where they reached the disk. 0: none.
    pub void_from: u64,
}

impl SegmentHeader {
    /// The header's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let name = self.network.as_bytes();
        let mut buf = Vec::with_capacity(40 + name.len());
        buf.extend_from_slice(SEGMENT_MAGIC);
        buf.extend_from_slice(&(name.len() as u16).to_be_bytes());
        buf.extend_from_slice(name);
        buf.extend_from_slice(&self.worker.to_be_bytes());
        buf.extend_from_slice(&self.first_seq.to_be_bytes());
        buf.extend_from_slice(&self.created_unix_ms.to_be_bytes());
        buf.extend_from_slice(&self.void_from.to_be_bytes());
        let crc = crc32fast::hash(&buf);
        buf.extend_from_slice(&crc.to_be_bytes());
        buf
    }

    fn decode(bytes: &[u8]) -> Result<(SegmentHeader, usize), &'static str> {
        let mut c = Cursor(bytes);
        if c.take(8) != Some(SEGMENT_MAGIC.as_slice()) {
            return Err("wrong magic");
        }
        let name_len = usize::from(c.u16().ok_or("short header")?);
        let network = std::str::from_utf8(c.take(name_len).ok_or("short header")?)
            .map_err(|_| "network name is not UTF-8")?
            .to_string();
        let worker = c.u16().ok_or("short header")?;
        let first_seq = c.u64().ok_or("short header")?;
        let created_unix_ms = c.u64().ok_or("short header")?;
        let void_from = c.u64().ok_or("short header")?;
        let len = bytes.len() - c.0.len();
        let crc = c.u32().ok_or("short header")?;
        if crc32fast::hash(&bytes[..len]) != crc {
            return Err("header checksum mismatch");
        }
        Ok((
            SegmentHeader {
                network,
                worker,
                first_seq,
                created_unix_ms,
                void_from,
            },
            len + 4,
        ))
    }

    /// The segment's file name.
    pub fn file_name(&self) -> String {
        format!(
            "{}-w{}-{:020}.{SEGMENT_EXT}",
            self.network, self.worker, self.first_seq
        )
    }
}

/// Damage found in a segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Damage {
    /// The segment ends in a partial or corrupt record with nothing valid
    /// after it: what a crash during a write leaves. Recovery cuts it.
    TornTail {
        /// Where the valid part ends.
        offset: u64,
        /// Bytes after it.
        bytes: u64,
    },
    /// Bytes that are no record, with valid records after them: not a torn
    /// write. Recovery reports and skips them, and cuts nothing.
    Corrupt {
        /// Where they start.
        offset: u64,
        /// How many.
        bytes: u64,
    },
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Damage::TornTail { offset, bytes } => {
                write!(f, "torn tail of {bytes} bytes at offset {offset}")
            }
            Damage::Corrupt { offset, bytes } => {
                write!(f, "{bytes} corrupt bytes at offset {offset}, skipped")
            }
        }
    }
}

/// A segment as read.
#[derive(Clone, Debug)]
pub struct SegmentScan {
    /// Its header.
    pub header: SegmentHeader,
    /// Its intact records, in file order.
    pub entries: Vec<JournalEntry>,
    /// Where the last intact record ends.
    pub valid_len: u64,
    /// What was wrong, in file order.
    pub damage: Vec<Damage>,
}

/// Reads a segment's bytes: the header must be intact; records are checked
/// one by one, and past damage the scan looks for the next intact record.
pub fn scan_segment(path: &Path, bytes: &[u8]) -> Result<SegmentScan, JournalError> {
    let (header, mut at) =
        SegmentHeader::decode(bytes).map_err(|reason| JournalError::BadHeader {
            path: path.to_path_buf(),
            reason,
        })?;
    let mut entries = Vec::new();
    let mut damage = Vec::new();
    let mut valid_len = at as u64;
    while at < bytes.len() {
        if let Some((entry, len)) = decode_record(&bytes[at..]) {
            entries.push(entry);
            at += len;
            valid_len = at as u64;
            continue;
        }
        // Damage: find the next intact record, if any.
        let next = (at + 1..bytes.len()).find(|&i| decode_record(&bytes[i..]).is_some());
        match next {
            Some(i) => {
                damage.push(Damage::Corrupt {
                    offset: at as u64,
                    bytes: (i - at) as u64,
                });
                at = i;
            }
            None => {
                damage.push(Damage::TornTail {
                    offset: at as u64,
                    bytes: (bytes.len() - at) as u64,
                });
                break;
            }
        }
    }
    Ok(SegmentScan {
        header,
        entries,
        valid_len,
        damage,
    })
}

/// The segment files of `network` in `dir`, in name order (worker, then
/// first sequence number). With `network` `None`, every segment.
pub fn segment_paths(dir: &Path, network: Option<&str>) -> Result<Vec<PathBuf>, JournalError> {
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let path = entry.map_err(io_err(dir))?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let ours = network.is_none_or(|n| name.starts_with(&format!("{n}-w")));
        if ours && path.extension().and_then(|e| e.to_str()) == Some(SEGMENT_EXT) {
            paths.push(path);
        }
    }
    paths.sort();
    Ok(paths)
}

/// Per worker, the sequence ranges voided by later segments' headers.
fn void_ranges(headers: &[SegmentHeader]) -> Vec<(String, u16, u64, u64)> {
    headers
        .iter()
        .filter(|h| h.void_from > 0 && h.void_from < h.first_seq)
        .map(|h| (h.network.clone(), h.worker, h.void_from, h.first_seq))
        .collect()
}

fn voided(ranges: &[(String, u16, u64, u64)], network: &str, worker: u16, seq: u64) -> bool {
    ranges
        .iter()
        .any(|(n, w, from, to)| n == network && *w == worker && (*from..*to).contains(&seq))
}

/// A segment's header alone (its first 4 KiB are read).
pub fn read_header(path: &Path) -> Result<SegmentHeader, JournalError> {
    use std::io::Read;
    let mut bytes = Vec::with_capacity(4096);
    std::fs::File::open(path)
        .and_then(|f| f.take(4096).read_to_end(&mut bytes))
        .map_err(io_err(path))?;
    SegmentHeader::decode(&bytes)
        .map(|(h, _)| h)
        .map_err(|reason| JournalError::BadHeader {
            path: path.to_path_buf(),
            reason,
        })
}

/// What recovery found and did.
#[derive(Debug, Default)]
pub struct Recovery {
    /// Segments read.
    pub segments: usize,
    /// Intact records read.
    pub records: u64,
    /// Per worker index: the next sequence number to use.
    pub next_seq: Vec<(u16, u64)>,
    /// Decisions taken at or after the `since` given to [`recover`], for the
    /// duplicate-suppression window.
    pub recent: Vec<JournalEntry>,
    /// Damage found, per segment (torn tails have been cut).
    pub damage: Vec<(PathBuf, Damage)>,
}

impl Recovery {
    /// The next sequence number worker `worker` uses.
    pub fn next_seq(&self, worker: u16) -> u64 {
        self.next_seq
            .iter()
            .find(|(w, _)| *w == worker)
            .map_or(1, |(_, s)| *s)
    }
}

/// Reads every segment of `network` in `dir`: cuts torn tails (and syncs
/// the cut), reports other damage, and returns the numbering to continue
/// with and the decisions taken since `since_unix_ms`.
pub fn recover(dir: &Path, network: &str, since_unix_ms: u64) -> Result<Recovery, JournalError> {
    let mut recovery = Recovery::default();
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    // Headers of every segment (for void ranges) and only the recent
    // entries: memory does not grow with the journal's history.
    let mut headers = Vec::new();
    let mut recent = Vec::new();
    for path in segment_paths(dir, Some(network))? {
        let bytes = std::fs::read(&path).map_err(io_err(&path))?;
        let scan = match scan_segment(&path, &bytes) {
            Ok(scan) if scan.header.network == network => scan,
            // Another network's file whose name starts like ours.
            Ok(_) => continue,
            Err(JournalError::BadHeader { reason, .. }) => {
                // A header that never reached the disk whole (a crash right
                // after creating the file) holds no record: removed. Any
                // other unreadable file is moved aside and reported, never
                // a reason not to start.
                let full = 40 + network.len();
                if bytes.len() < full {
                    std::fs::remove_file(&path).map_err(io_err(&path))?;
                } else {
                    let aside = path.with_extension("cdrj.damaged");
                    std::fs::rename(&path, &aside).map_err(io_err(&path))?;
                    tracing::error!(segment = %path.display(), reason, "unreadable segment moved aside");
                }
                recovery.damage.push((
                    path.clone(),
                    Damage::TornTail {
                        offset: 0,
                        bytes: bytes.len() as u64,
                    },
                ));
                continue;
            }
            Err(e) => return Err(e),
        };
        recovery.segments += 1;
        recovery.records += scan.entries.len() as u64;
        let worker = scan.header.worker;
        // A segment with no record still used its first number: the next
        // segment starts after it, so no name is ever reused (and a
        // header's void range is never lost).
        let last = scan
            .entries
            .iter()
            .map(|e| e.seq)
            .max()
            .unwrap_or(scan.header.first_seq);
        let next = last.saturating_add(1);
        match recovery.next_seq.iter_mut().find(|(w, _)| *w == worker) {
            Some((_, n)) => *n = (*n).max(next),
            None => recovery.next_seq.push((worker, next)),
        }
        for d in &scan.damage {
            if let Damage::TornTail { .. } = d {
                let file = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io_err(&path))?;
                file.set_len(scan.valid_len).map_err(io_err(&path))?;
            }
            recovery.damage.push((path.clone(), d.clone()));
        }
        // What was read may still be only in the page cache (written, not
        // yet synced, when the process died): made durable before any of it
        // answers a retransmission.
        std::fs::File::open(&path)
            .and_then(|f| f.sync_all())
            .map_err(io_err(&path))?;
        recent.extend(
            scan.entries
                .into_iter()
                .filter(|e| e.at_unix_ms >= since_unix_ms)
                .map(|e| (worker, e)),
        );
        headers.push(scan.header);
    }
    sync_dir(dir)?;
    let voids = void_ranges(&headers);
    recovery.recent = recent
        .into_iter()
        .filter(|(worker, e)| !voided(&voids, network, *worker, e.seq))
        .map(|(_, e)| e)
        .collect();
    Ok(recovery)
}

/// Header line of [`dump`]'s CSV.
pub const DUMP_HEADER: &str =
    "worker,seq,at_unix_ms,origin_network,txid,watcher,target,reply_node,presence_server,outcome,charged\n";

/// What [`dump`] wrote.
#[derive(Debug, Default)]
pub struct DumpSummary {
    /// Segments read.
    pub segments: usize,
    /// Records written out.
    pub records: u64,
    /// Damage found (nothing is changed on disk by a dump).
    pub damage: Vec<(PathBuf, Damage)>,
}

/// Writes the records of `path` (a segment, or a directory of them) as CSV
/// to `out`: only the charge records, or with `all` every decision. Reads
/// only; damage is reported in the summary.
pub fn dump(path: &Path, all: bool, out: &mut impl Write) -> Result<DumpSummary, JournalError> {
    let paths = if path.is_dir() {
        segment_paths(path, None)?
    } else {
        vec![path.to_path_buf()]
    };
    let stdout = Path::new("-");
    let write_err = |e| JournalError::Io {
        path: stdout.to_path_buf(),
        source: e,
    };
    let mut summary = DumpSummary::default();
    // Void ranges come from every segment of the directory (a single file's
    // records may be voided by a later segment's header); then segments are
    // read one at a time.
    let siblings = match (path.is_dir(), path.parent()) {
        (true, _) => paths.clone(),
        (false, Some(dir)) if !dir.as_os_str().is_empty() => segment_paths(dir, None)?,
        _ => paths.clone(),
    };
    let headers: Vec<SegmentHeader> = siblings
        .iter()
        .filter_map(|p| read_header(p).ok())
        .collect();
    let voids = void_ranges(&headers);
    for path in &paths {
        read_header(path)?;
    }
    // Written once every segment's header has been read: an error prints
    // nothing.
    out.write_all(DUMP_HEADER.as_bytes()).map_err(write_err)?;
    for path in paths {
        let bytes = std::fs::read(&path).map_err(io_err(&path))?;
        let scan = scan_segment(&path, &bytes)?;
        summary.segments += 1;
        for e in &scan.entries {
            let void = voided(&voids, &scan.header.network, scan.header.worker, e.seq);
            let charged = e.chargeable() && !void;
            if !(all || charged) {
                continue;
            }
            let outcome = if void {
                "voided"
            } else {
                crate::demo::outcome_name(&e.outcome)
            };
            writeln!(
                out,
                "{},{},{},{},{},{},{},{},{},{},{}",
                scan.header.worker,
                e.seq,
                e.at_unix_ms,
                e.origin,
                e.txid,
                e.watcher,
                e.target,
                e.reply_node,
                e.ps.0,
                outcome,
                charged
            )
            .map_err(write_err)?;
            summary.records += 1;
        }
        summary
            .damage
            .extend(scan.damage.into_iter().map(|d| (path.clone(), d)));
    }
    Ok(summary)
}

/// Opens a new segment file with its header written, for appending.
pub(crate) fn create_segment(dir: &Path, header: &SegmentHeader) -> Result<File, JournalError> {
    let path = dir.join(header.file_name());
    let mut file = std::fs::OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(&path)
        .map_err(io_err(&path))?;
    if let Err(e) = file.write_all(&header.encode()) {
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

/// Appends an entry as read back (origin by name) as a record: the inverse
/// of reading, for tools and the fuzz harness.
pub fn encode_entry(buf: &mut Vec<u8>, entry: &JournalEntry) {
    let record = DecisionRecord {
        origin: crate::table::NetworkId(0),
        txid: entry.txid,
        watcher: entry.watcher,
        target: entry.target,
        reply_node: entry.reply_node,
        at: 0,
        ps: entry.ps,
        outcome: entry.outcome,
    };
    encode_record(buf, entry.seq, entry.at_unix_ms, &entry.origin, &record);
}

/// The `journal_scan` fuzz target's property (also replayed over its corpus
/// by `cargo test`): reading any bytes as a segment never panics; what it
/// reports lies inside the input; every intact record, written again,
/// reads back the same; and a segment rebuilt from the intact records
/// reads back whole, with no damage.
pub fn fuzz_scan(data: &[u8]) {
    let path = Path::new("fuzz.cdrj");
    let Ok(scan) = scan_segment(path, data) else {
        return;
    };
    assert!(scan.valid_len as usize <= data.len());
    for damage in &scan.damage {
        let (Damage::TornTail { offset, bytes } | Damage::Corrupt { offset, bytes }) = *damage;
        assert!(
            offset + bytes <= data.len() as u64 && bytes > 0,
            "{damage:?}"
        );
    }
    let mut rebuilt = scan.header.encode();
    for entry in &scan.entries {
        let mut one = Vec::new();
        encode_entry(&mut one, entry);
        let (again, len) = decode_record(&one).expect("a record written reads back");
        assert_eq!((&again, len), (entry, one.len()));
        rebuilt.extend_from_slice(&one);
    }
    let whole = scan_segment(path, &rebuilt).expect("the header written reads back");
    assert!(whole.damage.is_empty());
    assert_eq!(whole.entries, scan.entries);
    assert_eq!(whole.valid_len as usize, rebuilt.len());
}

/// A fresh, empty scratch directory for a journal test.
#[cfg(test)]
pub(crate) fn test_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("journal-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::NetworkId;

    fn record(txid: u64, outcome: Outcome) -> DecisionRecord {
        DecisionRecord {
            origin: NetworkId(3),
            txid,
            watcher: Msisdn::parse_digits(b"447700900123").unwrap(),
            target: Msisdn::parse_digits(b"4915112345678").unwrap(),
            reply_node: 1,
            at: 5,
            ps: PsId(2),
            outcome,
        }
    }

    fn segment(records: &[(u64, Outcome)]) -> Vec<u8> {
        let mut bytes = SegmentHeader {
            network: "t-mobile.de".into(),
            worker: 0,
            first_seq: 1,
            created_unix_ms: 7,
            void_from: 0,
        }
        .encode();
        for (i, (txid, outcome)) in records.iter().enumerate() {
            encode_record(
                &mut bytes,
                i as u64 + 1,
                1_000 + i as u64,
                "o2.gb",
                &record(*txid, *outcome),
            );
        }
        bytes
    }

    const ATTACHED: Outcome = Outcome::Attached {
        reach: Reachability::PACKET_DATA,
        confirmed_age_s: 9,
    };

    #[test]
    fn records_read_back_as_written() {
        let bytes = segment(&[(1, ATTACHED), (2, Outcome::NotAvailable)]);
        let scan = scan_segment(Path::new("s"), &bytes).unwrap();
        assert!(scan.damage.is_empty());
        assert_eq!(scan.valid_len, bytes.len() as u64);
        assert_eq!(scan.entries.len(), 2);
        let e = &scan.entries[0];
        assert_eq!((e.seq, e.at_unix_ms, e.txid), (1, 1_000, 1));
        assert_eq!(e.origin, "o2.gb");
        assert_eq!(e.outcome, ATTACHED);
        assert_eq!(e.target.to_string(), "4915112345678");
        assert!(e.chargeable() && !scan.entries[1].chargeable());
    }

    #[test]
    fn a_cut_short_last_record_is_a_torn_tail() {
        let whole = segment(&[(1, ATTACHED), (2, ATTACHED)]);
        let one = segment(&[(1, ATTACHED)]).len();
        for cut in one + 1..whole.len() {
            let scan = scan_segment(Path::new("s"), &whole[..cut]).unwrap();
            assert_eq!(scan.entries.len(), 1, "cut at {cut}");
            assert_eq!(scan.valid_len, one as u64);
            assert_eq!(
                scan.damage,
                vec![Damage::TornTail {
                    offset: one as u64,
                    bytes: (cut - one) as u64
                }]
            );
        }
    }

    #[test]
    fn a_flipped_bit_in_the_middle_is_skipped_not_cut() {
        let mut bytes = segment(&[(1, ATTACHED), (2, ATTACHED), (3, ATTACHED)]);
        let header = segment(&[]).len();
        let one = segment(&[(1, ATTACHED)]).len() - header;
        bytes[header + one + 20] ^= 0x10;
        let scan = scan_segment(Path::new("s"), &bytes).unwrap();
        let txids: Vec<u64> = scan.entries.iter().map(|e| e.txid).collect();
        assert_eq!(txids, [1, 3]);
        assert_eq!(
            scan.damage,
            vec![Damage::Corrupt {
                offset: (header + one) as u64,
                bytes: one as u64
            }]
        );
        assert_eq!(scan.valid_len, bytes.len() as u64);
    }

    #[test]
    fn a_file_that_is_not_a_segment_is_refused() {
        let err = scan_segment(Path::new("x.cdrj"), b"at_unix_ms,origin\n").unwrap_err();
        assert!(
            err.to_string().contains("not a charge-record segment"),
            "{err}"
        );
    }

    #[test]
    fn recovery_cuts_the_torn_tail_and_continues_the_numbering() {
        let dir = test_dir("recover");
        let whole = segment(&[(1, ATTACHED), (2, ATTACHED), (3, Outcome::NotAvailable)]);
        let path = dir.join("t-mobile.de-w0-00000000000000000001.cdrj");
        std::fs::write(&path, &whole[..whole.len() - 3]).unwrap();
        std::fs::write(dir.join("other-w0-00000000000000000001.cdrj"), b"ignored").unwrap();
        let recovery = recover(&dir, "t-mobile.de", 1_001).unwrap();
        assert_eq!((recovery.segments, recovery.records), (1, 2));
        assert_eq!(recovery.next_seq(0), 3);
        assert_eq!(recovery.next_seq(1), 1);
        assert_eq!(recovery.recent.len(), 1, "only decisions since 1001");
        assert!(matches!(recovery.damage[0].1, Damage::TornTail { .. }));
        let cut = std::fs::metadata(&path).unwrap().len();
        assert_eq!(cut, segment(&[(1, ATTACHED), (2, ATTACHED)]).len() as u64);
        // A second recovery finds nothing more to cut.
        assert!(recover(&dir, "t-mobile.de", 0).unwrap().damage.is_empty());
        // A segment with no record stays (its header may void records of
        // an earlier one); the next segment of its worker starts after it.
        let empty = SegmentHeader {
            network: "t-mobile.de".into(),
            worker: 1,
            first_seq: 1,
            created_unix_ms: 7,
            void_from: 0,
        };
        std::fs::write(dir.join(empty.file_name()), empty.encode()).unwrap();
        let recovery = recover(&dir, "t-mobile.de", 0).unwrap();
        assert_eq!(recovery.next_seq(1), 2);
        assert!(dir.join(empty.file_name()).exists());
        // A file that is no segment at all is moved aside, not a reason not
        // to start.
        std::fs::write(
            dir.join("t-mobile.de-w2-00000000000000000001.cdrj"),
            [0x42; 200],
        )
        .unwrap();
        let recovery = recover(&dir, "t-mobile.de", 0).unwrap();
        assert_eq!(recovery.damage.len(), 1);
        assert!(dir
            .join("t-mobile.de-w2-00000000000000000001.cdrj.damaged")
            .exists());
        let mut csv = Vec::new();
        let summary = dump(
            &dir.join("t-mobile.de-w0-00000000000000000001.cdrj"),
            false,
            &mut csv,
        )
        .unwrap();
        assert_eq!(summary.records, 2);
        let csv = String::from_utf8(csv).unwrap();
        assert!(csv.starts_with(DUMP_HEADER));
        assert!(csv.contains("0,1,1000,o2.gb,1,447700900123,4915112345678,1,2,attached,true"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
