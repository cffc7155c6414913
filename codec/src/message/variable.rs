//! The variable parts of messages: credentials (§5.3, §5.7) and buddy lists
//! (§5.8), borrowed views into the input, valid by construction.

use bytes::BufMut;

use super::{
    msisdn, MessageType, BUDDIES_PER_UPDATE_MAX, BUDDY_UPDATE_BODY_LEN_BASE, CREDENTIAL_LEN_MAX,
};
use crate::error::{DecodeError, MsisdnField};
use crate::msisdn::{Msisdn, MSISDN_WIRE_LEN};
use crate::reader::Reader;

/// An opaque credential of at most 32 bytes, borrowed (§5.3, §5.7).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Credential<'a>(&'a [u8]);

impl<'a> Credential<'a> {
    /// No credential.
    pub const EMPTY: Credential<'static> = Credential(&[]);

    /// The credential for these bytes, if at most 32.
    pub const fn new(bytes: &'a [u8]) -> Option<Credential<'a>> {
        if bytes.len() <= CREDENTIAL_LEN_MAX {
            Some(Credential(bytes))
        } else {
            None
        }
    }
    /// The bytes.
    pub const fn as_bytes(&self) -> &'a [u8] {
        self.0
    }
    /// Length in bytes, at most 32.
    pub const fn len(&self) -> usize {
        self.0.len()
    }
    /// Whether there is no credential.
    pub const fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// The length byte: exact because of the invariant.
    pub(super) const fn len_byte(&self) -> u8 {
        // Invariant: at most CREDENTIAL_LEN_MAX (32) bytes, so this is exact.
        #[allow(clippy::cast_possible_truncation)]
        let len = self.0.len() as u8;
        len
    }
}

#[cfg(feature = "arbitrary")]
impl<'a> arbitrary::Arbitrary<'a> for Credential<'a> {
    fn arbitrary(u: &mut arbitrary::Unstructured<'a>) -> arbitrary::Result<Credential<'a>> {
        let len = u.int_in_range(0..=CREDENTIAL_LEN_MAX)?;
        Ok(Credential(u.bytes(len)?))
    }
}

/// Up to 32 MSISDNs in strictly ascending order, borrowed in their wire form
/// (§5.8). Invariant: the bytes are a whole number of valid 7-byte MSISDNs,
/// at most 32, strictly ascending.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct BuddyList<'a>(&'a [u8]);

/// Room for the wire form of a full buddy list.
pub type BuddyListStorage = [u8; MSISDN_WIRE_LEN * BUDDIES_PER_UPDATE_MAX];

impl<'a> BuddyList<'a> {
    /// Validates a wire form (§5.8).
    pub fn from_wire(bytes: &'a [u8]) -> Result<BuddyList<'a>, DecodeError> {
        let (chunks, rest) = bytes.as_chunks::<MSISDN_WIRE_LEN>();
        if !rest.is_empty() {
            return Err(DecodeError::BadBodyLength {
                message_type: MessageType::BuddyUpdate as u8,
                body_len: u8::try_from(bytes.len().saturating_add(BUDDY_UPDATE_BODY_LEN_BASE))
                    .unwrap_or(u8::MAX),
            });
        }
        if chunks.len() > BUDDIES_PER_UPDATE_MAX {
            return Err(DecodeError::TooManyBuddies {
                count: u8::try_from(chunks.len()).unwrap_or(u8::MAX),
            });
        }
        let mut previous: Option<Msisdn> = None;
        for chunk in chunks {
            let buddy = msisdn(*chunk, MsisdnField::Buddy)?;
            if previous.is_some_and(|p| p >= buddy) {
                return Err(DecodeError::BuddiesNotAscending);
            }
            previous = Some(buddy);
        }
        Ok(BuddyList(bytes))
    }

    /// Encodes `buddies` into `storage` and returns the list viewing it. The
    /// MSISDNs must be strictly ascending and at most 32.
    pub fn encode(
        buddies: &[Msisdn],
        storage: &'a mut BuddyListStorage,
    ) -> Result<BuddyList<'a>, DecodeError> {
        if buddies.len() > BUDDIES_PER_UPDATE_MAX {
            return Err(DecodeError::TooManyBuddies {
                count: u8::try_from(buddies.len()).unwrap_or(u8::MAX),
            });
        }
        if buddies.windows(2).any(|w| w.first() >= w.last()) {
            return Err(DecodeError::BuddiesNotAscending);
        }
        let (chunks, _) = storage.as_chunks_mut::<MSISDN_WIRE_LEN>();
        for (chunk, buddy) in chunks.iter_mut().zip(buddies) {
            *chunk = buddy.to_wire();
        }
        let len = buddies.len().saturating_mul(MSISDN_WIRE_LEN);
        let bytes: &'a [u8] = storage.get(..len).unwrap_or_default();
        Ok(BuddyList(bytes))
    }

    /// Number of MSISDNs, at most 32.
    pub fn len(&self) -> usize {
        self.0.len() / MSISDN_WIRE_LEN
    }
    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// The MSISDNs in ascending order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = Msisdn> + 'a {
        let (chunks, _) = self.0.as_chunks::<MSISDN_WIRE_LEN>();
        // Invariant: every chunk was validated when the list was built.
        chunks
            .iter()
            .map(|chunk| Msisdn::from_wire(*chunk).unwrap_or(Msisdn::MIN))
    }
    /// The wire form.
    pub const fn as_wire(&self) -> &'a [u8] {
        self.0
    }
}

/// Borrows input bytes that happen to form a valid list, else gives the empty
/// list; the fuzz harness builds dense valid lists itself.
#[cfg(feature = "arbitrary")]
impl<'a> arbitrary::Arbitrary<'a> for BuddyList<'a> {
    fn arbitrary(u: &mut arbitrary::Unstructured<'a>) -> arbitrary::Result<BuddyList<'a>> {
        let count = u.int_in_range(0..=BUDDIES_PER_UPDATE_MAX)?;
        let bytes = u.bytes(count.saturating_mul(MSISDN_WIRE_LEN))?;
        Ok(BuddyList::from_wire(bytes).unwrap_or_default())
    }
}

impl core::fmt::Debug for BuddyList<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// Bytes of a device MAC tag on the wire (§5.3, §5.7, version 2).
pub const MAC_TAG_LEN: usize = 16;

/// Bytes of the version 2 form: counter and tag.
const MAC_FORM_LEN: usize = 8 + MAC_TAG_LEN;

/// A device MAC tag: the first 16 bytes of keyed BLAKE3 over the message
/// (§5.11). Compared in constant time by [`DeviceKey`](crate::DeviceKey).
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct MacTag(pub [u8; MAC_TAG_LEN]);

/// How a device proves who it is, in a ClientRequest (§5.3) or a Publish
/// (§5.7). The form decides the frame's version (§10).
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeviceAuth<'a> {
    /// Version 1: the shared secret itself, in clear. **Insecure**: whoever
    /// sees one request can send any other. Receivers accept it only behind
    /// a switch that says so.
    Credential(Credential<'a>),
    /// Version 2: a per-key counter and a MAC over the message and the
    /// counter (§5.11); the key never travels.
    Mac {
        /// The device's counter for its key: strictly increasing, its
        /// clock in milliseconds since the Unix epoch (§5.11).
        counter: u64,
        /// The MAC over the message, this counter included.
        tag: MacTag,
    },
}

impl DeviceAuth<'_> {
    /// A version 2 form to sign: counter 0, zero tag.
    pub const UNSIGNED: DeviceAuth<'static> = DeviceAuth::Mac {
        counter: 0,
        tag: MacTag([0; MAC_TAG_LEN]),
    };

    /// The frame version this form belongs to (§10).
    pub const fn version(&self) -> u8 {
        match self {
            DeviceAuth::Credential(_) => 1,
            DeviceAuth::Mac { .. } => 2,
        }
    }

    /// Bytes the form takes in a body: the credential with its length byte
    /// (version 1), or counter and tag (version 2).
    pub(super) const fn wire_len(&self) -> usize {
        match self {
            // At most 33: a credential is at most 32 bytes.
            DeviceAuth::Credential(c) => c.len().wrapping_add(1),
            DeviceAuth::Mac { .. } => MAC_FORM_LEN,
        }
    }

    pub(super) fn encode<B: BufMut>(&self, buf: &mut B) {
        match self {
            DeviceAuth::Credential(c) => {
                buf.put_u8(c.len_byte());
                buf.put_slice(c.as_bytes());
            }
            DeviceAuth::Mac { counter, tag } => {
                buf.put_u64(*counter);
                buf.put_slice(&tag.0);
            }
        }
    }
}

/// Decodes the device's proof that ends a ClientRequest or Publish body:
/// the form of the frame's `version`.
pub(super) fn decode_device_auth<'a>(
    r: &mut Reader<'a>,
    version: u8,
    bad_len: DecodeError,
) -> Result<DeviceAuth<'a>, DecodeError> {
    if version == 1 {
        return decode_credential(r, bad_len).map(DeviceAuth::Credential);
    }
    if r.remaining() != MAC_FORM_LEN {
        return Err(bad_len);
    }
    let counter = r.u64().ok_or(bad_len)?;
    let tag = r.array::<MAC_TAG_LEN>().ok_or(bad_len)?;
    Ok(DeviceAuth::Mac {
        counter,
        tag: MacTag(tag),
    })
}

/// Decodes a credential length and the credential that must fill the rest.
pub(super) fn decode_credential<'a>(
    r: &mut Reader<'a>,
    bad_len: DecodeError,
) -> Result<Credential<'a>, DecodeError> {
    let len = r.u8().ok_or(bad_len)?;
    if usize::from(len) > CREDENTIAL_LEN_MAX {
        return Err(DecodeError::CredentialTooLong { len });
    }
    if usize::from(len) != r.remaining() {
        return Err(bad_len);
    }
    let bytes = r.bytes(usize::from(len)).ok_or(bad_len)?;
    Credential::new(bytes).ok_or(DecodeError::CredentialTooLong { len })
}
