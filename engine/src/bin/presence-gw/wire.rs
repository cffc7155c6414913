//! Operator tools for the wire format (`presence-gw wire …`): print sample
//! frames, and decode captured frames given as hex, one per line, naming every
//! message or the exact reason it is rejected (`docs/wire-format.md` §9).

use std::fmt::Write as _;
use std::io::{self, BufRead, Write};

use presence_codec::samples::one_of_each;
use presence_codec::{encode_frame, FrameReader, FRAME_LEN_ABSOLUTE_MAX};

/// Why a line of hex could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HexError {
    /// An odd number of hex digits.
    #[error("odd number of hex digits")]
    OddLength,
    /// A character that is not a hex digit (whitespace and `:` are allowed).
    #[error("not a hex digit: {0:?}")]
    NotHex(char),
}

/// Parses hex digits, ignoring whitespace and `:` separators.
pub(crate) fn parse_hex(text: &str) -> Result<Vec<u8>, HexError> {
    let digits: Vec<u8> = text
        .chars()
        .filter(|c| !c.is_whitespace() && *c != ':')
        .map(|c| c.to_digit(16).map(|d| d as u8).ok_or(HexError::NotHex(c)))
        .collect::<Result<_, _>>()?;
    if !digits.len().is_multiple_of(2) {
        return Err(HexError::OddLength);
    }
    Ok(digits.chunks(2).map(|p| p[0] << 4 | p[1]).collect())
}

/// Lowercase hex with a space between bytes.
pub(crate) fn to_hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 3);
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// Describes one frame: one line per message, `ok` or `error`.
pub(crate) fn describe_frame(frame: &[u8], max_len: usize) -> Vec<String> {
    match FrameReader::new(frame, max_len) {
        Err(e) => vec![format!("frame error [{}]: {e}", e.name())],
        Ok(reader) => reader
            .enumerate()
            .map(|(i, m)| match m {
                Ok(message) => format!("message {i}: {message:?}"),
                Err(e) => format!("message {i}: error [{}]: {e}", e.name()),
            })
            .collect(),
    }
}

/// `wire sample`: one frame per sample message, as `name hex`; with
/// `decoded`, each followed by a `#` comment line showing it decoded.
pub(crate) fn write_samples(out: &mut impl Write, decoded: bool) -> io::Result<()> {
    for (name, message) in one_of_each() {
        let mut frame = Vec::new();
        encode_frame(&[message], FRAME_LEN_ABSOLUTE_MAX, &mut frame).map_err(io::Error::other)?;
        writeln!(out, "{name} {}", to_hex(&frame))?;
        if decoded {
            for line in describe_frame(&frame, FRAME_LEN_ABSOLUTE_MAX) {
                writeln!(out, "#   {} bytes, {line}", frame.len())?;
            }
        }
    }
    Ok(())
}

/// `wire decode`: reads hex frames, one per line (a leading `name ` word is
/// allowed, as `wire sample` prints), and describes each. Returns how many lines
/// held a bad frame or bad hex.
pub(crate) fn decode_lines(
    input: impl BufRead,
    out: &mut impl Write,
    max_len: usize,
) -> io::Result<usize> {
    let mut bad = 0usize;
    for (index, line) in input.lines().enumerate() {
        let line = line?;
        let line_no = index + 1;
        let text = line.trim();
        if text.is_empty() || text.starts_with('#') {
            continue;
        }
        let hex = match text.split_once(' ') {
            Some((first, rest)) if first.chars().any(|c| !c.is_ascii_hexdigit()) => rest,
            _ => text,
        };
        match parse_hex(hex) {
            Err(e) => {
                bad += 1;
                writeln!(out, "line {line_no}: bad hex: {e}")?;
            }
            Ok(frame) => {
                let lines = describe_frame(&frame, max_len);
                if lines.iter().any(|l| l.contains("error [")) {
                    bad += 1;
                }
                writeln!(out, "line {line_no}: frame of {} bytes", frame.len())?;
                for l in lines {
                    writeln!(out, "  {l}")?;
                }
            }
        }
    }
    Ok(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_decode_cleanly() {
        let mut samples = Vec::new();
        write_samples(&mut samples, true).unwrap();
        let mut out = Vec::new();
        let bad = decode_lines(&samples[..], &mut out, FRAME_LEN_ABSOLUTE_MAX).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(bad, 0, "{text}");
        assert_eq!(text.matches("message 0: ").count(), 16);
    }

    #[test]
    fn decode_names_the_reason() {
        let mut out = Vec::new();
        let input = "50 03 01\n50 01 7f 00\nzz\n";
        let bad = decode_lines(input.as_bytes(), &mut out, 1472).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(bad, 3);
        assert!(text.contains("frame error [unsupported_version]"), "{text}");
        assert!(text.contains("error [unknown_message_type]"), "{text}");
        assert!(text.contains("bad hex"), "{text}");
    }

    #[test]
    fn hex_round_trips() {
        assert_eq!(parse_hex("50:01 0a").unwrap(), vec![0x50, 0x01, 0x0a]);
        assert_eq!(to_hex(&[0x50, 0x01]), "50 01");
        assert_eq!(parse_hex("5"), Err(HexError::OddLength));
    }
}
