//! MSISDNs as validated values (`docs/wire-format.md` §2).
//!
//! Invariant of [`Msisdn`]: its value `V` satisfies `1 <= V <= 10^15 - 1`, so its
//! decimal digits are a valid E.164 number (1 to 15 digits, no leading zero) and
//! the value alone determines the digit string. There is no other way to build
//! one than through the checks below.

use core::fmt;
use core::str::FromStr;

/// Largest MSISDN value: fifteen nines.
pub const MSISDN_MAX: u64 = 999_999_999_999_999;
/// Most digits in an MSISDN (E.164).
pub const MSISDN_DIGITS_MAX: usize = 15;
/// Bytes an MSISDN takes on the wire (§2).
pub const MSISDN_WIRE_LEN: usize = 7;

const _: () = assert!(MSISDN_MAX < 1 << (8 * MSISDN_WIRE_LEN));

/// An E.164 number: 1 to 15 decimal digits, the first not zero.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Msisdn(u64);

/// Why a text or a wire value is not an MSISDN.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MsisdnError {
    /// The text has no digits.
    #[error("empty")]
    Empty,
    /// More than 15 digits (or, on the wire, a value above 10^15 - 1).
    #[error("more than 15 digits")]
    TooLong,
    /// The first digit is 0.
    #[error("leading zero")]
    LeadingZero,
    /// A character other than `0`-`9`.
    #[error("not a digit at position {position}")]
    NotADigit {
        /// 0-based byte position of the first offending character.
        position: usize,
    },
    /// The wire value 0.
    #[error("zero")]
    Zero,
}

impl Msisdn {
    /// Smallest MSISDN, `1`.
    pub const MIN: Msisdn = Msisdn(1);
    /// Largest MSISDN, fifteen nines.
    pub const MAX: Msisdn = Msisdn(MSISDN_MAX);

    /// The MSISDN whose digits are the decimal representation of `value`.
    pub const fn from_u64(value: u64) -> Result<Msisdn, MsisdnError> {
        if value == 0 {
            Err(MsisdnError::Zero)
        } else if value > MSISDN_MAX {
            Err(MsisdnError::TooLong)
        } else {
            Ok(Msisdn(value))
        }
    }

    /// Parses the text form: 1 to 15 ASCII digits, first not `0`.
    pub fn parse_digits(text: &[u8]) -> Result<Msisdn, MsisdnError> {
        let Some(first) = text.first() else {
            return Err(MsisdnError::Empty);
        };
        if *first == b'0' {
            return Err(MsisdnError::LeadingZero);
        }
        let mut value: u64 = 0;
        for (position, byte) in text.iter().enumerate() {
            if !byte.is_ascii_digit() {
                return Err(MsisdnError::NotADigit { position });
            }
            if position >= MSISDN_DIGITS_MAX {
                return Err(MsisdnError::TooLong);
            }
            // Cannot overflow: at most 15 digits, and 10^15 < 2^64.
            value = value
                .wrapping_mul(10)
                .wrapping_add(u64::from(byte.wrapping_sub(b'0')));
        }
        Ok(Msisdn(value))
    }

    /// The numeric value (the digits read as a decimal number).
    pub const fn as_u64(self) -> u64 {
        self.0
    }

    /// Number of digits, 1 to 15.
    pub const fn digit_count(self) -> usize {
        // `ilog10` of a value in 1..=10^15-1 is 0..=14: no overflow.
        (self.0.ilog10() as usize).wrapping_add(1)
    }

    /// The digits, most significant first, in a fixed buffer with their count.
    pub fn digits(self) -> ([u8; MSISDN_DIGITS_MAX], usize) {
        let count = self.digit_count();
        let mut out = [0u8; MSISDN_DIGITS_MAX];
        let mut rest = self.0;
        for slot in out.iter_mut().take(count).rev() {
            // `rest % 10` is below 10, so the cast is exact.
            *slot = (rest % 10) as u8;
            rest /= 10;
        }
        (out, count)
    }

    /// Decodes the 7-byte wire form (§2).
    #[inline]
    pub const fn from_wire(bytes: [u8; MSISDN_WIRE_LEN]) -> Result<Msisdn, MsisdnError> {
        let [b0, b1, b2, b3, b4, b5, b6] = bytes;
        Msisdn::from_u64(u64::from_be_bytes([0, b0, b1, b2, b3, b4, b5, b6]))
    }

    /// The 7-byte wire form (§2).
    #[inline]
    pub const fn to_wire(self) -> [u8; MSISDN_WIRE_LEN] {
        let [_, b0, b1, b2, b3, b4, b5, b6] = self.0.to_be_bytes();
        [b0, b1, b2, b3, b4, b5, b6]
    }
}

impl fmt::Display for Msisdn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Debug for Msisdn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Msisdn({})", self.0)
    }
}

impl FromStr for Msisdn {
    type Err = MsisdnError;
    fn from_str(text: &str) -> Result<Msisdn, MsisdnError> {
        Msisdn::parse_digits(text.as_bytes())
    }
}

impl TryFrom<u64> for Msisdn {
    type Error = MsisdnError;
    fn try_from(value: u64) -> Result<Msisdn, MsisdnError> {
        Msisdn::from_u64(value)
    }
}

impl From<Msisdn> for u64 {
    fn from(msisdn: Msisdn) -> u64 {
        msisdn.0
    }
}

#[cfg(feature = "arbitrary")]
impl<'a> arbitrary::Arbitrary<'a> for Msisdn {
    fn arbitrary(u: &mut arbitrary::Unstructured<'a>) -> arbitrary::Result<Msisdn> {
        Ok(Msisdn(u.int_in_range(1..=MSISDN_MAX)?))
    }
    fn size_hint(_depth: usize) -> (usize, Option<usize>) {
        (8, Some(8))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_valid_text() {
        assert_eq!(Msisdn::from_str("1").unwrap().as_u64(), 1);
        assert_eq!(
            Msisdn::from_str("447700900123").unwrap().as_u64(),
            447_700_900_123
        );
        assert_eq!(Msisdn::from_str("999999999999999").unwrap(), Msisdn::MAX);
    }

    #[test]
    fn rejects_bad_text_with_reason() {
        assert_eq!(Msisdn::from_str(""), Err(MsisdnError::Empty));
        assert_eq!(Msisdn::from_str("0447"), Err(MsisdnError::LeadingZero));
        assert_eq!(
            Msisdn::from_str("1000000000000000"),
            Err(MsisdnError::TooLong)
        );
        assert_eq!(
            Msisdn::from_str("44a"),
            Err(MsisdnError::NotADigit { position: 2 })
        );
        assert_eq!(
            Msisdn::from_str("+44"),
            Err(MsisdnError::NotADigit { position: 0 })
        );
    }

    #[test]
    fn digit_count_and_digits_follow_the_value() {
        for (text, count) in [("1", 1), ("9", 1), ("10", 2), ("999999999999999", 15)] {
            let m = Msisdn::from_str(text).unwrap();
            assert_eq!(m.digit_count(), count);
            let (digits, n) = m.digits();
            let rendered: String = digits[..n].iter().map(|d| char::from(b'0' + d)).collect();
            assert_eq!(rendered, text);
            assert_eq!(m.to_string(), text);
        }
    }

    #[test]
    fn wire_form_is_seven_big_endian_bytes() {
        let m = Msisdn::from_str("447700900123").unwrap();
        assert_eq!(m.to_wire(), [0x00, 0x00, 0x68, 0x3d, 0x0d, 0x99, 0x1b]);
        assert_eq!(Msisdn::from_wire(m.to_wire()), Ok(m));
        assert_eq!(
            Msisdn::MAX.to_wire(),
            [0x03, 0x8d, 0x7e, 0xa4, 0xc6, 0x7f, 0xff]
        );
    }

    #[test]
    fn wire_rejects_zero_and_sixteen_digit_values() {
        assert_eq!(Msisdn::from_wire([0; 7]), Err(MsisdnError::Zero));
        assert_eq!(
            Msisdn::from_wire([0x03, 0x8d, 0x7e, 0xa4, 0xc6, 0x80, 0x00]),
            Err(MsisdnError::TooLong)
        );
        assert_eq!(Msisdn::from_wire([0xff; 7]), Err(MsisdnError::TooLong));
    }
}
