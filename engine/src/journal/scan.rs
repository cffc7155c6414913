//! Reading segments: scanning, recovery on start, and the fuzz property.

use std::path::{Path, PathBuf};

use super::format::{decode_item, decode_record, encode_entry, encode_mark, Item};
use super::{io_err, sync_dir, JournalEntry, JournalError, SegmentHeader, StreamMark, SEGMENT_EXT};

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
    /// Its intact stream marks, in file order.
    pub marks: Vec<StreamMark>,
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
    let mut marks = Vec::new();
    let mut damage = Vec::new();
    let mut valid_len = at as u64;
    while at < bytes.len() {
        if let Some((item, len)) = decode_item(&bytes[at..]) {
            match item {
                Item::Entry(entry) => entries.push(entry),
                Item::Mark(mark) => marks.push(mark),
            }
            at += len;
            valid_len = at as u64;
            continue;
        }
        // Damage: find the next intact record or mark, if any.
        let next = (at + 1..bytes.len()).find(|&i| decode_item(&bytes[i..]).is_some());
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
        marks,
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
pub(super) fn void_ranges(headers: &[SegmentHeader]) -> Vec<(String, u16, u64, u64)> {
    headers
        .iter()
        .filter(|h| h.void_from > 0 && h.void_from < h.first_seq)
        .map(|h| (h.network.clone(), h.worker, h.void_from, h.first_seq))
        .collect()
}

pub(super) fn voided(
    ranges: &[(String, u16, u64, u64)],
    network: &str,
    worker: u16,
    seq: u64,
) -> bool {
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
    /// Stream marks made at or after that `since`.
    pub recent_marks: Vec<StreamMark>,
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
        recovery.recent_marks.extend(
            scan.marks
                .into_iter()
                .filter(|m| m.at_unix_ms >= since_unix_ms),
        );
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
    for mark in &scan.marks {
        let mut one = Vec::new();
        encode_mark(&mut one, mark.as_ref());
        let (again, len) = decode_item(&one).expect("a mark written reads back");
        assert_eq!((again, len), (Item::Mark(mark.clone()), one.len()));
        rebuilt.extend_from_slice(&one);
    }
    let whole = scan_segment(path, &rebuilt).expect("the header written reads back");
    assert!(whole.damage.is_empty());
    assert_eq!(whole.entries, scan.entries);
    assert_eq!(whole.marks, scan.marks);
    assert_eq!(whole.valid_len as usize, rebuilt.len());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::{dump, encode_record, test_dir, DUMP_HEADER};
    use crate::journal::{encode_mark, StreamMark};
    use crate::roles::{DecisionRecord, PsId};
    use crate::table::NetworkId;
    use presence_codec::{Msisdn, Outcome, Reachability};

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
    fn marks_read_back_between_records_and_are_no_charge_records() {
        let mut bytes = segment(&[(1, ATTACHED)]);
        let mark = StreamMark {
            at_unix_ms: 1_500,
            origin: "o2.gb".into(),
            reply_node: 3,
            high_water: (3 << 48) | 77,
        };
        encode_mark(&mut bytes, mark.as_ref());
        encode_record(&mut bytes, 2, 1_600, "o2.gb", &record(9, ATTACHED));
        let scan = scan_segment(Path::new("s"), &bytes).unwrap();
        assert!(scan.damage.is_empty());
        assert_eq!(scan.marks, vec![mark.clone()]);
        assert_eq!(
            scan.entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
            [1, 2],
            "records keep their numbers without a gap"
        );
        // A flipped flag bit turns neither into the other: damage, not a
        // record read as a mark or a mark as a record.
        let header_len = segment(&[]).len();
        let mut flipped = bytes.clone();
        flipped[header_len] ^= 0x80;
        let scan_flipped = scan_segment(Path::new("s"), &flipped).unwrap();
        assert_eq!(scan_flipped.entries.len(), 1, "the first record is damage");
        assert_eq!(scan_flipped.marks, vec![mark.clone()]);
        assert!(!scan_flipped.damage.is_empty());
        let mark_at = segment(&[(1, ATTACHED)]).len();
        let mut flipped = bytes.clone();
        flipped[mark_at] ^= 0x80;
        let scan_flipped = scan_segment(Path::new("s"), &flipped).unwrap();
        assert_eq!(scan_flipped.marks, vec![], "the mark is damage");
        assert_eq!(scan_flipped.entries.len(), 2);
        // A mark cut short is a torn tail like a record.
        let cut = bytes.len() - 3;
        let torn = scan_segment(Path::new("s"), &bytes[..cut]).unwrap();
        assert_eq!(torn.marks, vec![mark.clone()]);
        assert_eq!(torn.entries.len(), 1);
        // Recovery hands back recent marks; the dump lists records only.
        let dir = test_dir("marks");
        std::fs::write(dir.join("t-mobile.de-w0-00000000000000000001.cdrj"), &bytes).unwrap();
        let recovery = recover(&dir, "t-mobile.de", 1_400).unwrap();
        assert_eq!(recovery.recent_marks, vec![mark]);
        assert_eq!(
            recover(&dir, "t-mobile.de", 1_501).unwrap().recent_marks,
            []
        );
        let mut csv = Vec::new();
        let summary = dump(&dir, true, &mut csv).unwrap();
        assert_eq!(summary.records, 2);
        assert_eq!(String::from_utf8(csv).unwrap().lines().count(), 3);
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
