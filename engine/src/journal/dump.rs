//! `presence-gw cdr dump`: charge records as CSV, read only.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::scan::{read_header, scan_segment, segment_paths, void_ranges, voided, Damage};
use super::{io_err, JournalError, SegmentHeader};

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
                e.outcome.class().name()
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
