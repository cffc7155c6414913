//! Retention: which closed segments may be deleted, by age and by total
//! size, and never one that has not been exported.
//!
//! Charge records are what operators bill each other from, so the rule is
//! conservative:
//!
//! - **Nothing is deleted unless retention is configured** (`[cdr]
//!   retain_days` and/or `retain_max_bytes`); by default the journal is
//!   kept whole, and a full disk stops charging (fail closed), never loses
//!   a record.
//! - **Only exported segments.** A segment counts as exported once the
//!   operator's collector has copied it and put an empty file named like
//!   it plus `.exported` beside it (the collector contract in
//!   `docs/operations.md`). `retain_unexported = true` lifts this, for a
//!   deployment whose records are not billed from this folder.
//! - **Never a worker's two newest segments**: the one being written, and
//!   the one before it (it may still hold the decisions a restart rebuilds
//!   its duplicate window from).
//! - Oldest first (by the time in each segment's header): every exported
//!   segment older than `retain_days`, then more, oldest first, while the
//!   folder's segments take more than `retain_max_bytes`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::scan::{read_header, segment_paths};
use super::{io_err, JournalError};

/// Suffix of the marker a collector leaves once it has a segment.
pub const EXPORTED_SUFFIX: &str = ".exported";

/// What may be deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Retention {
    /// Delete segments older than this; `None`: not by age.
    pub max_age: Option<Duration>,
    /// Delete the oldest segments while all of them take more than this;
    /// `None`: not by size.
    pub max_bytes: Option<u64>,
    /// Delete segments no collector has marked exported (**loses charge
    /// records** nobody has collected).
    pub unexported: bool,
}

impl Retention {
    /// Whether anything may ever be deleted.
    pub fn is_on(&self) -> bool {
        self.max_age.is_some() || self.max_bytes.is_some()
    }
}

/// What one sweep did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Sweep {
    /// Segments deleted, oldest first.
    pub deleted: Vec<PathBuf>,
    /// Bytes they took.
    pub freed: u64,
    /// Segments retention would delete but no collector has exported.
    pub held_unexported: usize,
}

struct Candidate {
    path: PathBuf,
    worker: u16,
    first_seq: u64,
    created_unix_ms: u64,
    bytes: u64,
    exported: bool,
}

fn marker_of(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(EXPORTED_SUFFIX);
    PathBuf::from(name)
}

/// Deletes what `retention` allows of `network`'s segments in `dir` at
/// `now_unix_ms` (and their export markers). Unreadable headers are left
/// alone.
pub fn sweep(
    dir: &Path,
    network: &str,
    retention: &Retention,
    now_unix_ms: u64,
) -> Result<Sweep, JournalError> {
    let mut report = Sweep::default();
    if !retention.is_on() {
        return Ok(report);
    }
    let mut segments = Vec::new();
    for path in segment_paths(dir, Some(network))? {
        let Ok(header) = read_header(&path) else {
            continue;
        };
        if header.network != network {
            continue;
        }
        let bytes = std::fs::metadata(&path).map_err(io_err(&path))?.len();
        let exported = marker_of(&path).exists();
        segments.push(Candidate {
            path,
            worker: header.worker,
            first_seq: header.first_seq,
            created_unix_ms: header.created_unix_ms,
            bytes,
            exported,
        });
    }
    let mut total: u64 = segments.iter().map(|s| s.bytes).sum();
    // A worker's two newest segments are never candidates.
    let mut newest: Vec<(u16, Vec<u64>)> = Vec::new();
    for s in &segments {
        match newest.iter_mut().find(|(w, _)| *w == s.worker) {
            Some((_, seqs)) => seqs.push(s.first_seq),
            None => newest.push((s.worker, vec![s.first_seq])),
        }
    }
    for (_, seqs) in &mut newest {
        seqs.sort_unstable_by(|a, b| b.cmp(a));
        seqs.truncate(2);
    }
    segments.retain(|s| {
        !newest
            .iter()
            .any(|(w, seqs)| *w == s.worker && seqs.contains(&s.first_seq))
    });
    segments.sort_by_key(|s| (s.created_unix_ms, s.worker, s.first_seq));
    let max_age_ms = retention
        .max_age
        .map(|a| u64::try_from(a.as_millis()).unwrap_or(u64::MAX));
    for s in segments {
        let too_old =
            max_age_ms.is_some_and(|age| now_unix_ms.saturating_sub(s.created_unix_ms) > age);
        let too_big = retention.max_bytes.is_some_and(|max| total > max);
        if !(too_old || too_big) {
            continue;
        }
        if !(s.exported || retention.unexported) {
            report.held_unexported += 1;
            continue;
        }
        std::fs::remove_file(&s.path).map_err(io_err(&s.path))?;
        let _ = std::fs::remove_file(marker_of(&s.path));
        total = total.saturating_sub(s.bytes);
        report.freed += s.bytes;
        report.deleted.push(s.path);
    }
    if !report.deleted.is_empty() {
        super::sync_dir(dir)?;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::{encode_record, test_dir, SegmentHeader};
    use crate::roles::{DecisionRecord, PsId};
    use crate::table::NetworkId;
    use presence_codec::{Msisdn, Outcome};

    /// A segment of worker `worker` from `first_seq`, created at `created`,
    /// with `records` records.
    fn write(dir: &Path, worker: u16, first_seq: u64, created: u64, records: u64) -> PathBuf {
        let header = SegmentHeader {
            network: "t-mobile.de".into(),
            worker,
            first_seq,
            created_unix_ms: created,
            void_from: 0,
        };
        let mut bytes = header.encode();
        for seq in first_seq..first_seq + records {
            let record = DecisionRecord {
                origin: NetworkId(1),
                txid: seq,
                watcher: Msisdn::parse_digits(b"447700900123").unwrap(),
                target: Msisdn::parse_digits(b"4915112345678").unwrap(),
                reply_node: 0,
                at: 0,
                ps: PsId(0),
                outcome: Outcome::Detached { confirmed_age_s: 1 },
            };
            encode_record(&mut bytes, seq, created, "o2.gb", &record);
        }
        let path = dir.join(header.file_name());
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn export(path: &Path) {
        std::fs::write(marker_of(path), b"").unwrap();
    }

    const DAY_MS: u64 = 86_400_000;

    #[test]
    fn nothing_is_deleted_without_retention_or_before_export() {
        let dir = test_dir("retention-export");
        let old: Vec<PathBuf> = (0..4)
            .map(|i| write(&dir, 0, 1 + i * 10, i * 1_000, 10))
            .collect();
        let now = 40 * DAY_MS;
        assert_eq!(
            sweep(&dir, "t-mobile.de", &Retention::default(), now).unwrap(),
            Sweep::default()
        );
        let by_age = Retention {
            max_age: Some(Duration::from_secs(30 * 86_400)),
            ..Retention::default()
        };
        let held = sweep(&dir, "t-mobile.de", &by_age, now).unwrap();
        assert_eq!(held.deleted, Vec::<PathBuf>::new());
        assert_eq!(held.held_unexported, 2, "the two newest are not candidates");
        export(&old[0]);
        let swept = sweep(&dir, "t-mobile.de", &by_age, now).unwrap();
        assert_eq!(swept.deleted, vec![old[0].clone()]);
        assert!(!old[0].exists() && !marker_of(&old[0]).exists());
        assert!(old[1].exists(), "not exported");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn age_and_size_delete_the_oldest_and_never_a_workers_two_newest() {
        let dir = test_dir("retention-size");
        let w0: Vec<PathBuf> = (0..5)
            .map(|i| write(&dir, 0, 1 + i * 10, DAY_MS * i, 10))
            .collect();
        let w1: Vec<PathBuf> = (0..3)
            .map(|i| write(&dir, 1, 1 + i * 10, DAY_MS * i + 1, 10))
            .collect();
        for p in w0.iter().chain(&w1) {
            export(p);
        }
        let one = std::fs::metadata(&w0[0]).unwrap().len();
        // By age: older than 2.5 days at day 4 — w0[0], w0[1], w1[0]
        // (w1[1] is among w1's two newest).
        let by_age = Retention {
            max_age: Some(Duration::from_secs(2 * 86_400 + 43_200)),
            ..Retention::default()
        };
        let swept = sweep(&dir, "t-mobile.de", &by_age, DAY_MS * 4).unwrap();
        assert_eq!(
            swept.deleted,
            vec![w0[0].clone(), w1[0].clone(), w0[1].clone()]
        );
        assert_eq!(swept.freed, 3 * one);
        // By size: five segments left, room for three: the oldest
        // candidate goes (w0[2]); w0[3], w0[4], w1[1], w1[2] are the
        // workers' two newest and stay even over the limit.
        let by_size = Retention {
            max_bytes: Some(3 * one),
            ..Retention::default()
        };
        let swept = sweep(&dir, "t-mobile.de", &by_size, DAY_MS * 4).unwrap();
        assert_eq!(swept.deleted, vec![w0[2].clone()]);
        for kept in [&w0[3], &w0[4], &w1[1], &w1[2]] {
            assert!(kept.exists());
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
