//! Charge records on disk: one CSV file per worker in the configured
//! directory, written in batches (one `write` per loop turn that raised
//! any) and synced on a clean stop.
//!
//! A line: `at_unix_ms,origin_network,txid,watcher,target,reply_node,presence_server,outcome`.
//! The origin network is the peer the border gateway authenticated. (The
//! durable journal with checksums, group commit and recovery is issue 8's;
//! this writer keeps what it holds until the turn ends, so a crash loses at
//! most one turn of records.)

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::roles::DecisionRecord;

use super::Shared;

/// Header line of every CDR file.
pub const CDR_HEADER: &str =
    "at_unix_ms,origin_network,txid,watcher,target,reply_node,presence_server,outcome\n";

/// One worker's charge-record file.
#[derive(Debug)]
pub struct CdrWriter {
    path: PathBuf,
    file: Option<File>,
    buf: Vec<u8>,
    /// Records in `buf`.
    buffered: u64,
    /// Records handed to the file system since start.
    pub written: u64,
    /// Write or sync failures.
    pub failures: u64,
    /// Records lost to failed writes.
    pub lost: u64,
}

impl CdrWriter {
    /// Creates `dir/<network>-w<worker>-<unix_ms>.csv`.
    pub fn create(dir: &Path, network: &str, worker: usize) -> io::Result<CdrWriter> {
        std::fs::create_dir_all(dir)?;
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let path = dir.join(format!("{network}-w{worker}-{stamp}.csv"));
        let mut file = File::create(&path)?;
        file.write_all(CDR_HEADER.as_bytes())?;
        Ok(CdrWriter {
            path,
            file: Some(file),
            buf: Vec::with_capacity(64 * 1024),
            buffered: 0,
            written: 0,
            failures: 0,
            lost: 0,
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends a record to the turn's buffer.
    pub(crate) fn write(&mut self, record: &DecisionRecord, shared: &Shared) {
        let at = shared.unix_ms_at(record.at);
        let names = shared.names.load();
        let _ = writeln!(
            self.buf,
            "{at},{},{},{},{},{},{},{:?}",
            names.name(record.origin),
            record.txid,
            record.watcher,
            record.target,
            record.reply_node,
            record.ps.0,
            record.outcome
        );
        self.buffered += 1;
    }

    /// Writes the turn's records.
    pub fn flush(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let ok = self
            .file
            .as_mut()
            .is_some_and(|file| file.write_all(&self.buf).is_ok());
        if ok {
            self.written += self.buffered;
        } else {
            self.failures += 1;
            self.lost += self.buffered;
        }
        self.buffered = 0;
        self.buf.clear();
    }

    /// Writes and syncs (on a clean stop).
    pub fn sync(&mut self) {
        self.flush();
        if let Some(file) = self.file.as_mut() {
            if file.sync_all().is_err() {
                self.failures += 1;
            }
        }
    }
}
