//! The segment format: record and header encoding (see the module docs of
//! [`crate::journal`]).

use presence_codec::{ErrorReason, Msisdn, Outcome, Reachability, MSISDN_WIRE_LEN};

use super::{
    JournalEntry, StreamMark, BODY_FIXED, BODY_MAX, MARK_BODY_FIXED, MARK_FLAG, ORIGIN_NAME_MAX,
    SEGMENT_EXT, SEGMENT_MAGIC,
};
use crate::roles::{DecisionRecord, PsId};

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

/// Appends one stream mark to `buf` (names cut as in [`encode_record`]).
pub fn encode_mark(buf: &mut Vec<u8>, mark: MarkRef<'_>) {
    let name = mark.origin.as_bytes();
    let name = &name[..name.len().min(ORIGIN_NAME_MAX)];
    let body_len = MARK_BODY_FIXED + name.len();
    let start = buf.len();
    buf.extend_from_slice(&(MARK_FLAG | body_len as u32).to_be_bytes());
    buf.extend_from_slice(&[0; 4]);
    let body = buf.len();
    buf.extend_from_slice(&mark.at_unix_ms.to_be_bytes());
    buf.extend_from_slice(&mark.high_water.to_be_bytes());
    buf.extend_from_slice(&mark.reply_node.to_be_bytes());
    buf.push(name.len() as u8);
    buf.extend_from_slice(name);
    let crc = mark_crc(&buf[start..start + 4], &buf[body..]);
    buf[start + 4..start + 8].copy_from_slice(&crc.to_be_bytes());
}

/// A mark's checksum covers its length word too (flag bit included), so
/// no flipped bit turns an intact record into a mark or back.
fn mark_crc(word: &[u8], body: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(word);
    hasher.update(body);
    hasher.finalize()
}

/// A stream mark to write, its origin borrowed (no allocation per turn).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MarkRef<'a> {
    /// As [`StreamMark::at_unix_ms`].
    pub at_unix_ms: u64,
    /// As [`StreamMark::origin`].
    pub origin: &'a str,
    /// As [`StreamMark::reply_node`].
    pub reply_node: u16,
    /// As [`StreamMark::high_water`].
    pub high_water: u64,
}

impl StreamMark {
    /// This mark, borrowed for writing.
    pub fn as_ref(&self) -> MarkRef<'_> {
        MarkRef {
            at_unix_ms: self.at_unix_ms,
            origin: &self.origin,
            reply_node: self.reply_node,
            high_water: self.high_water,
        }
    }
}

/// The stream mark at the start of `bytes` and its length, or `None` if the
/// bytes there are not a whole, intact mark.
pub(super) fn decode_mark(bytes: &[u8]) -> Option<(StreamMark, usize)> {
    let (word, crc, body) = framed(bytes)?;
    if word & MARK_FLAG == 0
        || !(MARK_BODY_FIXED..=MARK_BODY_FIXED + ORIGIN_NAME_MAX).contains(&body.len())
        || mark_crc(&word.to_be_bytes(), body) != crc
    {
        return None;
    }
    let mut b = Cursor(body);
    let at_unix_ms = b.u64()?;
    let high_water = b.u64()?;
    let reply_node = b.u16()?;
    let name_len = usize::from(b.u8()?);
    let origin = std::str::from_utf8(b.take(name_len)?).ok()?.to_string();
    if !b.0.is_empty() {
        return None;
    }
    Some((
        StreamMark {
            at_unix_ms,
            origin,
            reply_node,
            high_water,
        },
        8 + body.len(),
    ))
}

/// The length word, the checksum and the body at the start of `bytes`
/// (a body of at most [`BODY_MAX`] bytes; the caller checks the sum).
fn framed(bytes: &[u8]) -> Option<(u32, u32, &[u8])> {
    let mut c = Cursor(bytes);
    let word = c.u32()?;
    let len = (word & !MARK_FLAG) as usize;
    if len > BODY_MAX {
        return None;
    }
    let crc = c.u32()?;
    let body = c.take(len)?;
    Some((word, crc, body))
}

/// What a segment holds after its header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Item {
    /// A decision record.
    Entry(JournalEntry),
    /// A stream mark.
    Mark(StreamMark),
}

/// The record or mark at the start of `bytes`, and its length.
pub(super) fn decode_item(bytes: &[u8]) -> Option<(Item, usize)> {
    if let Some((entry, len)) = decode_record(bytes) {
        return Some((Item::Entry(entry), len));
    }
    decode_mark(bytes).map(|(mark, len)| (Item::Mark(mark), len))
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
pub(super) fn decode_record(bytes: &[u8]) -> Option<(JournalEntry, usize)> {
    let (word, crc, body) = framed(bytes)?;
    if word & MARK_FLAG != 0
        || !(BODY_FIXED..=BODY_MAX).contains(&body.len())
        || crc32fast::hash(body) != crc
    {
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
        8 + body.len(),
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

    pub(super) fn decode(bytes: &[u8]) -> Result<(SegmentHeader, usize), &'static str> {
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
