//! `presence-gw route`: the OGPS's routing decision (step 5) for a stream of
//! MSISDNs, one per line on the input, answered in order as
//! `msisdn,network` (an empty network when no prefix matches). An invalid line
//! is answered `line,!invalid` (its first bytes, commas and control characters
//! shown as `?`), reported with its line number and reason on the error
//! stream, and counted. Lines are read at most [`LINE_LEN_MAX`] bytes deep,
//! so no input can exhaust memory.
//!
//! Lines are routed in groups through [`TableVersion::lookup_batch`]; input and
//! output buffers are reused, so the per-line cost is the lookup and a copy.

use std::io::{self, BufRead, Write};

use presence_codec::{Msisdn, MsisdnError};

use presence_engine::table::{NetworkId, TableVersion, LOOKUP_BATCH_MAX};

/// What a routing run saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct RouteSummary {
    /// Lines read.
    pub lines: u64,
    /// Lines that were not a valid MSISDN.
    pub invalid: u64,
    /// Valid MSISDNs that matched no network.
    pub unrouted: u64,
}

/// Longest input line read: an MSISDN has at most 15 digits, so anything
/// near this is not one; the rest of a longer line is skipped unread into
/// memory, so no input can exhaust it.
pub(crate) const LINE_LEN_MAX: usize = 64;
/// Most bytes of an invalid line echoed back.
const ECHO_LEN_MAX: usize = 24;

/// Why a line is not routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum LineError {
    /// Not a valid MSISDN.
    #[error("invalid MSISDN: {0}")]
    Msisdn(MsisdnError),
    /// Longer than [`LINE_LEN_MAX`].
    #[error("line longer than {LINE_LEN_MAX} bytes")]
    TooLong,
}

/// One pending line: where its text is in the group buffer, and its MSISDN or
/// why it has none.
struct Pending {
    line: u64,
    start: usize,
    end: usize,
    parsed: Result<Msisdn, LineError>,
}

/// Reads one line into `buf` (without its newline), keeping at most
/// `LINE_LEN_MAX + 1` bytes and skipping the rest. `None` at the end of input.
fn read_line_capped(input: &mut impl BufRead, buf: &mut Vec<u8>) -> io::Result<Option<()>> {
    buf.clear();
    let mut any = false;
    loop {
        let available = match input.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if available.is_empty() {
            return Ok(any.then_some(()));
        }
        any = true;
        let (chunk, used, done) = match available.iter().position(|&b| b == b'\n') {
            Some(at) => (&available[..at], at + 1, true),
            None => (available, available.len(), false),
        };
        let room = (LINE_LEN_MAX + 1).saturating_sub(buf.len());
        buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
        input.consume(used);
        if done {
            return Ok(Some(()));
        }
    }
}

/// An invalid line as echoed: at most a few bytes, with commas and control
/// characters replaced, so the output stays two fields per line.
fn echo_invalid(text: &[u8], out: &mut impl Write) -> io::Result<()> {
    for &b in text.iter().take(ECHO_LEN_MAX) {
        let shown = if b == b',' || !(0x20..0x7f).contains(&b) {
            b'?'
        } else {
            b
        };
        out.write_all(&[shown])?;
    }
    Ok(())
}

/// Routes every line of `input`; see the module docs for the formats.
pub(crate) fn route(
    table: &TableVersion,
    mut input: impl BufRead,
    out: &mut impl Write,
    err: &mut impl Write,
) -> io::Result<RouteSummary> {
    let mut summary = RouteSummary::default();
    let mut text: Vec<u8> = Vec::with_capacity(LOOKUP_BATCH_MAX * 16);
    let mut pending: Vec<Pending> = Vec::with_capacity(LOOKUP_BATCH_MAX);
    let mut msisdns: Vec<Msisdn> = Vec::with_capacity(LOOKUP_BATCH_MAX);
    let mut networks: Vec<Option<NetworkId>> = vec![None; LOOKUP_BATCH_MAX];
    let mut line_buf: Vec<u8> = Vec::with_capacity(LINE_LEN_MAX + 1);
    loop {
        let eof = read_line_capped(&mut input, &mut line_buf)?.is_none();
        if !eof {
            summary.lines += 1;
            let trimmed = line_buf.trim_ascii();
            let start = text.len();
            text.extend_from_slice(trimmed);
            let parsed = if line_buf.len() > LINE_LEN_MAX {
                Err(LineError::TooLong)
            } else {
                Msisdn::parse_digits(trimmed).map_err(LineError::Msisdn)
            };
            if let Ok(m) = parsed {
                msisdns.push(m);
            }
            pending.push(Pending {
                line: summary.lines,
                start,
                end: text.len(),
                parsed,
            });
        }
        if pending.len() == LOOKUP_BATCH_MAX || (eof && !pending.is_empty()) {
            table.lookup_batch(&msisdns, &mut networks);
            let mut next_network = networks.iter();
            for p in pending.drain(..) {
                match p.parsed {
                    Ok(_) => {
                        out.write_all(&text[p.start..p.end])?;
                        out.write_all(b",")?;
                        match next_network.next().copied().flatten() {
                            Some(id) => out.write_all(table.network_name(id).as_bytes())?,
                            None => summary.unrouted += 1,
                        }
                        out.write_all(b"\n")?;
                    }
                    Err(reason) => {
                        summary.invalid += 1;
                        echo_invalid(&text[p.start..p.end], out)?;
                        out.write_all(b",!invalid\n")?;
                        writeln!(err, "line {}: {reason}", p.line)?;
                    }
                }
            }
            text.clear();
            msisdns.clear();
        }
        if eof {
            return Ok(summary);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use presence_engine::table::{NetworkNames, NumberingTable, PortedMap, Prefix, PrefixIndex};

    fn table() -> NumberingTable {
        let mut names = NetworkNames::default();
        let a = names.intern("net-a.gb").unwrap();
        let b = names.intern("net-b.gb").unwrap();
        NumberingTable::new(
            PrefixIndex::build(&[
                (Prefix::parse("447").unwrap(), a),
                (Prefix::parse("4479").unwrap(), b),
            ]),
            PortedMap::empty(1),
            names,
        )
    }

    #[test]
    fn answers_every_line_in_order_and_reports_invalid_ones() {
        let table = table();
        table
            .set_ported("447000000001".parse().unwrap(), "net-b.gb")
            .unwrap();
        let input = "447123456789\n447912345678\n0447\n\n33123\n447000000001\r\n 4471 \n447,1\n";
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let summary = route(&table.snapshot(), input.as_bytes(), &mut out, &mut err).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "447123456789,net-a.gb\n447912345678,net-b.gb\n0447,!invalid\n,!invalid\n\
             33123,\n447000000001,net-b.gb\n4471,net-a.gb\n447?1,!invalid\n"
        );
        assert_eq!(
            String::from_utf8(err).unwrap(),
            "line 3: invalid MSISDN: leading zero\nline 4: invalid MSISDN: empty\n\
             line 8: invalid MSISDN: not a digit at position 3\n"
        );
        assert_eq!(
            summary,
            RouteSummary {
                lines: 8,
                invalid: 3,
                unrouted: 1
            }
        );
    }

    #[test]
    fn an_endless_line_costs_no_memory_and_is_reported() {
        let table = table();
        let mut input = vec![b'4'; 10 << 20];
        input.extend_from_slice(b"\n447123456789\n");
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let summary = route(&table.snapshot(), &input[..], &mut out, &mut err).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!("{},!invalid\n447123456789,net-a.gb\n", "4".repeat(24))
        );
        assert_eq!(
            String::from_utf8(err).unwrap(),
            "line 1: line longer than 64 bytes\n"
        );
        assert_eq!(summary.invalid, 1);
    }

    #[test]
    fn many_lines_cross_batch_boundaries_in_order() {
        let table = table();
        let input: String = (0..1000).map(|i| format!("4479{i:08}\n")).collect();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let summary = route(&table.snapshot(), input.as_bytes(), &mut out, &mut err).unwrap();
        assert_eq!(summary.lines, 1000);
        let out = String::from_utf8(out).unwrap();
        for (i, line) in out.lines().enumerate() {
            assert_eq!(line, format!("4479{i:08},net-b.gb"));
        }
    }
}
