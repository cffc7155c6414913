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
//!   the one before it; and never one closed (its successor opened) less
//!   than [`KEEP_RECENT_MS`] ago: it may hold decisions a restart rebuilds
//!   its duplicate window from.
//! - **Oldest first, and only from the start of each worker's series**: a
//!   segment is deleted only when every older one of its worker has been.
//!   A segment's header may void records of older segments of its worker
//!   (a failed disk, `void from`); deleting it while keeping them would
//!   turn those records back into charges.
//! - A segment's age runs from when it was closed (its successor's
//!   creation): every segment closed more than `retain_days` ago goes, then
//!   more, oldest first, while the folder's segments take more than
//!   `retain_max_bytes`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::scan::{read_header, segment_paths};
use super::{io_err, JournalError};

/// A segment closed less than this long ago is kept whatever the limits
/// (more than the longest duplicate window: a deadline of at most 60 s).
pub const KEEP_RECENT_MS: u64 = 120_000;

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

struct Segment {
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
/// alone (and stop their worker's series there).
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
    // Each worker's series, oldest first.
    let mut series: Vec<(u16, Vec<Segment>)> = Vec::new();
    for path in segment_paths(dir, Some(network))? {
        let Ok(header) = read_header(&path) else {
            continue;
        };
        if header.network != network {
            continue;
        }
        let bytes = std::fs::metadata(&path).map_err(io_err(&path))?.len();
        let exported = marker_of(&path).exists();
        let segment = Segment {
            path,
            worker: header.worker,
            first_seq: header.first_seq,
            created_unix_ms: header.created_unix_ms,
            bytes,
            exported,
        };
        match series.iter_mut().find(|(w, _)| *w == segment.worker) {
            Some((_, list)) => list.push(segment),
            None => series.push((segment.worker, vec![segment])),
        }
    }
    let mut total: u64 = series
        .iter()
        .flat_map(|(_, list)| list.iter().map(|s| s.bytes))
        .sum();
    // Per worker: the candidates, each with when it was closed; a worker's
    // two newest, and those closed too recently, are never candidates.
    let mut heads: Vec<std::collections::VecDeque<(Segment, u64)>> = Vec::new();
    for (_, mut list) in series {
        list.sort_by_key(|s| s.first_seq);
        let closed: Vec<u64> = list.iter().skip(1).map(|s| s.created_unix_ms).collect();
        let keep = list.len().saturating_sub(2);
        let candidates = list
            .into_iter()
            .zip(closed)
            .take(keep)
            .take_while(|(_, closed)| now_unix_ms.saturating_sub(*closed) >= KEEP_RECENT_MS)
            .collect();
        heads.push(candidates);
    }
    let max_age_ms = retention
        .max_age
        .map(|a| u64::try_from(a.as_millis()).unwrap_or(u64::MAX));
    // The oldest head of any series, each time.
    while let Some(w) = (0..heads.len())
        .filter(|&w| !heads[w].is_empty())
        .min_by_key(|&w| heads[w].front().map_or(u64::MAX, |(_, closed)| *closed))
    {
        let Some((segment, closed)) = heads[w].pop_front() else {
            break;
        };
        let too_old = max_age_ms.is_some_and(|age| now_unix_ms.saturating_sub(closed) > age);
        let too_big = retention.max_bytes.is_some_and(|max| total > max);
        if !(too_old || too_big) {
            // Nothing closed later is due either.
            break;
        }
        if !(segment.exported || retention.unexported) {
            // Its worker's series stops here; count what waits on export.
            report.held_unexported += 1 + heads[w]
                .iter()
                .filter(|(s, closed)| {
                    !s.exported
                        && max_age_ms.is_some_and(|age| now_unix_ms.saturating_sub(*closed) > age)
                })
                .count();
            heads[w].clear();
            continue;
        }
        std::fs::remove_file(&segment.path).map_err(io_err(&segment.path))?;
        let _ = std::fs::remove_file(marker_of(&segment.path));
        total = total.saturating_sub(segment.bytes);
        report.freed += segment.bytes;
        report.deleted.push(segment.path);
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
        // An exported segment after an unexported one stays: its header
        // may void records of the older one.
        export(&old[1]);
        let held = sweep(&dir, "t-mobile.de", &by_age, now).unwrap();
        assert_eq!(held.deleted, Vec::<PathBuf>::new());
        export(&old[0]);
        let swept = sweep(&dir, "t-mobile.de", &by_age, now).unwrap();
        assert_eq!(swept.deleted, vec![old[0].clone(), old[1].clone()]);
        assert!(!old[0].exists() && !marker_of(&old[0]).exists());
        assert!(old[2].exists() && old[3].exists(), "the two newest");
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
        // By age, counted from when a segment closed (its successor
        // opened): closed more than 2.5 days before day 4 are w0[0]
        // (closed day 1) and w1[0] (day 1 + 1 ms); w0[1] closed on day 2.
        let by_age = Retention {
            max_age: Some(Duration::from_secs(2 * 86_400 + 43_200)),
            ..Retention::default()
        };
        let swept = sweep(&dir, "t-mobile.de", &by_age, DAY_MS * 4).unwrap();
        assert_eq!(swept.deleted, vec![w0[0].clone(), w1[0].clone()]);
        assert_eq!(swept.freed, 2 * one);
        // By size: six left, room for three: w0[1] and w0[2] go, oldest
        // first; w0[3], w0[4], w1[1], w1[2] are their workers' two newest
        // and stay even over the limit.
        let by_size = Retention {
            max_bytes: Some(3 * one),
            ..Retention::default()
        };
        let swept = sweep(&dir, "t-mobile.de", &by_size, DAY_MS * 4).unwrap();
        assert_eq!(swept.deleted, vec![w0[1].clone(), w0[2].clone()]);
        for kept in [&w0[3], &w0[4], &w1[1], &w1[2]] {
            assert!(kept.exists());
        }
        // A segment closed within the last two minutes is kept whatever
        // the limits.
        let recent = test_dir("retention-recent");
        let r: Vec<PathBuf> = (0..4)
            .map(|i| write(&recent, 0, 1 + i * 10, DAY_MS * 10 + i * 1_000, 10))
            .collect();
        for p in &r {
            export(p);
        }
        let tiny = Retention {
            max_bytes: Some(1),
            ..Retention::default()
        };
        let swept = sweep(&recent, "t-mobile.de", &tiny, DAY_MS * 10 + 61_000).unwrap();
        assert_eq!(swept.deleted, Vec::<PathBuf>::new(), "closed a minute ago");
        let swept = sweep(&recent, "t-mobile.de", &tiny, DAY_MS * 10 + 130_000).unwrap();
        assert_eq!(swept.deleted, vec![r[0].clone(), r[1].clone()]);
        std::fs::remove_dir_all(&recent).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
