//! `presence-gw route`: the OGPS's routing decision (step 5) for a stream of
//! MSISDNs, one per line on the input, answered in order as
//! `msisdn,network` (an empty network when no prefix matches). An invalid line
//! is answered `line,!invalid`, reported with its line number and reason on the
//! error stream, and counted.
//!
//! Lines are routed in groups through [`TableVersion::lookup_batch`]; input and
//! output buffers are reused, so the per-line cost is the lookup and a copy.

use std::io::{self, BufRead, Write};

use presence_codec::{Msisdn, MsisdnError};

use crate::table::{NetworkId, TableVersion, LOOKUP_BATCH_MAX};

/// What a routing run saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RouteSummary {
    /// Lines read.
    pub lines: u64,
    /// Lines that were not a valid MSISDN.
    pub invalid: u64,
    /// Valid MSISDNs that matched no network.
    pub unrouted: u64,
}

/// One pending line: where its text is in the group buffer, and its MSISDN or
/// why it has none.
struct Pending {
    line: u64,
    start: usize,
    end: usize,
    parsed: Result<Msisdn, MsisdnError>,
}

/// Routes every line of `input`; see the module docs for the formats.
pub fn route(
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
    let mut line_buf: Vec<u8> = Vec::with_capacity(64);
    loop {
        line_buf.clear();
        let eof = input.read_until(b'\n', &mut line_buf)? == 0;
        if !eof {
            summary.lines += 1;
            let trimmed = line_buf.trim_ascii();
            let start = text.len();
            text.extend_from_slice(trimmed);
            let parsed = Msisdn::parse_digits(trimmed);
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
                out.write_all(&text[p.start..p.end])?;
                match p.parsed {
                    Ok(_) => {
                        out.write_all(b",")?;
                        match next_network.next().copied().flatten() {
                            Some(id) => out.write_all(table.network_name(id).as_bytes())?,
                            None => summary.unrouted += 1,
                        }
                        out.write_all(b"\n")?;
                    }
                    Err(reason) => {
                        summary.invalid += 1;
                        out.write_all(b",!invalid\n")?;
                        writeln!(err, "line {}: invalid MSISDN: {reason}", p.line)?;
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
    use crate::table::{NetworkNames, NumberingTable, PortedMap, Prefix, PrefixIndex};

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
        let input = "447123456789\n447912345678\n0447\n\n33123\n447000000001\r\n 4471 \n";
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let summary = route(&table.snapshot(), input.as_bytes(), &mut out, &mut err).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "447123456789,net-a.gb\n447912345678,net-b.gb\n0447,!invalid\n,!invalid\n\
             33123,\n447000000001,net-b.gb\n4471,net-a.gb\n"
        );
        assert_eq!(
            String::from_utf8(err).unwrap(),
            "line 3: invalid MSISDN: leading zero\nline 4: invalid MSISDN: empty\n"
        );
        assert_eq!(
            summary,
            RouteSummary {
                lines: 7,
                invalid: 2,
                unrouted: 1
            }
        );
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
