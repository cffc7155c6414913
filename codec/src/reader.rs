//! A panic-free cursor over borrowed input.
//!
//! Contract: no method panics or allocates on any input; a read past the end
//! returns `None` and leaves the cursor where it was. Decoders check a body's
//! length against its type first (§4), so on accepted lengths these reads cannot
//! fail and the compiler folds the checks away.

use crate::msisdn::MSISDN_WIRE_LEN;

#[derive(Debug, Clone, Copy)]
pub(crate) struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    #[inline]
    pub(crate) const fn new(input: &'a [u8]) -> Reader<'a> {
        Reader { rest: input }
    }

    #[inline]
    pub(crate) fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, tail) = self.rest.split_first_chunk::<N>()?;
        self.rest = tail;
        Some(*head)
    }

    #[inline]
    pub(crate) fn u8(&mut self) -> Option<u8> {
        let (head, tail) = self.rest.split_first()?;
        self.rest = tail;
        Some(*head)
    }

    #[inline]
    pub(crate) fn u16(&mut self) -> Option<u16> {
        self.array().map(u16::from_be_bytes)
    }

    #[inline]
    pub(crate) fn u32(&mut self) -> Option<u32> {
        self.array().map(u32::from_be_bytes)
    }

    #[inline]
    pub(crate) fn u64(&mut self) -> Option<u64> {
        self.array().map(u64::from_be_bytes)
    }

    #[inline]
    pub(crate) fn msisdn_bytes(&mut self) -> Option<[u8; MSISDN_WIRE_LEN]> {
        self.array()
    }

    /// The next `len` bytes, borrowed.
    #[inline]
    pub(crate) fn bytes(&mut self, len: usize) -> Option<&'a [u8]> {
        let (head, tail) = self.rest.split_at_checked(len)?;
        self.rest = tail;
        Some(head)
    }

    /// Everything not read yet, borrowed; the cursor is then empty.
    #[inline]
    pub(crate) fn take_rest(&mut self) -> &'a [u8] {
        core::mem::take(&mut self.rest)
    }

    #[inline]
    pub(crate) const fn remaining(&self) -> usize {
        self.rest.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_big_endian_and_stops_at_the_end() {
        let mut r = Reader::new(&[1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(r.u16(), Some(0x0102));
        assert_eq!(r.u32(), Some(0x0304_0506));
        assert_eq!(r.u16(), None, "a short read fails");
        assert_eq!(r.remaining(), 1, "and consumes nothing");
        assert_eq!(r.u8(), Some(7));
        assert_eq!(r.u8(), None);
        assert_eq!(r.bytes(1), None);
        assert_eq!(r.bytes(0), Some(&[][..]));
    }
}
