//! Device keys and the MAC on devices' requests and publications
//! (`docs/wire-format.md` §5.11).
//!
//! A subscriber's devices and the network share a 32-byte key, derived from
//! the secret provisioned for the subscriber and the subscriber's number
//! ([`DeviceKey::derive`]). A version 2 ClientRequest or Publish carries a
//! counter and the first 16 bytes of keyed BLAKE3, under that key, over the
//! message as encoded up to its tag (envelope, every field, the counter).
//! The key never travels; a captured message proves nothing about any other
//! message, and the receiver's replay window refuses it a second time.

use core::fmt;

use subtle::ConstantTimeEq as _;

use crate::message::{ClientRequest, DeviceAuth, MacTag, Message, Publish, MAC_TAG_LEN};
use crate::msisdn::Msisdn;

/// Bytes of a device key.
pub const DEVICE_KEY_LEN: usize = 32;

/// BLAKE3 key-derivation context of device keys (§5.11): fixed for the
/// life of the format, so a device and a gateway built years apart derive
/// the same key.
pub const DEVICE_KEY_CONTEXT: &str = "presence-gw 2026-12-07 device MAC key";

/// Longest MAC-form message, envelope included (a ClientRequest, 53 bytes).
const SIGNED_MAX: usize = 64;

/// A subscriber's device key. Its `Debug` form does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct DeviceKey([u8; DEVICE_KEY_LEN]);

impl fmt::Debug for DeviceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DeviceKey(..)")
    }
}

impl DeviceKey {
    /// The key of `subscriber`'s devices for the provisioned `secret`:
    /// BLAKE3 in key-derivation mode with [`DEVICE_KEY_CONTEXT`], over the
    /// number's seven wire bytes (§2) followed by the secret. Two
    /// subscribers given the same secret get different keys.
    pub fn derive(subscriber: Msisdn, secret: &[u8]) -> DeviceKey {
        let mut hasher = blake3::Hasher::new_derive_key(DEVICE_KEY_CONTEXT);
        hasher.update(&subscriber.to_wire());
        hasher.update(secret);
        DeviceKey(*hasher.finalize().as_bytes())
    }

    /// A key given as its bytes (a key stored elsewhere).
    pub const fn from_bytes(bytes: [u8; DEVICE_KEY_LEN]) -> DeviceKey {
        DeviceKey(bytes)
    }

    /// The key's bytes.
    pub const fn as_bytes(&self) -> &[u8; DEVICE_KEY_LEN] {
        &self.0
    }

    /// The tag of a MAC-form ClientRequest or Publish (its own tag is not
    /// read); `None` for any other message or form.
    pub fn tag(&self, message: &Message<'_>) -> Option<MacTag> {
        if !matches!(
            message,
            Message::ClientRequest(ClientRequest {
                auth: DeviceAuth::Mac { .. },
                ..
            }) | Message::Publish(Publish {
                auth: DeviceAuth::Mac { .. },
                ..
            })
        ) {
            return None;
        }
        let mut buf = [0u8; SIGNED_MAX];
        let len = message.encoded_len();
        let mut writer: &mut [u8] = &mut buf;
        message.encode(&mut writer).ok()?;
        let covered = buf.get(..len.checked_sub(MAC_TAG_LEN)?)?;
        let hash = blake3::keyed_hash(&self.0, covered);
        let mut tag = [0u8; MAC_TAG_LEN];
        tag.copy_from_slice(hash.as_bytes().get(..MAC_TAG_LEN)?);
        Some(MacTag(tag))
    }

    /// `request` with counter `counter` and its tag under this key.
    pub fn sign_request<'a>(
        &self,
        mut request: ClientRequest<'a>,
        counter: u64,
    ) -> ClientRequest<'a> {
        request.auth = DeviceAuth::Mac {
            counter,
            tag: MacTag::default(),
        };
        if let Some(tag) = self.tag(&Message::ClientRequest(request)) {
            request.auth = DeviceAuth::Mac { counter, tag };
        }
        request
    }

    /// `publish` with counter `counter` and its tag under this key.
    pub fn sign_publish<'a>(&self, mut publish: Publish<'a>, counter: u64) -> Publish<'a> {
        publish.auth = DeviceAuth::Mac {
            counter,
            tag: MacTag::default(),
        };
        if let Some(tag) = self.tag(&Message::Publish(publish)) {
            publish.auth = DeviceAuth::Mac { counter, tag };
        }
        publish
    }

    /// Whether `message` is a MAC-form ClientRequest or Publish whose tag
    /// this key made (compared in constant time).
    pub fn verifies(&self, message: &Message<'_>) -> bool {
        let given = match message {
            Message::ClientRequest(ClientRequest {
                auth: DeviceAuth::Mac { tag, .. },
                ..
            })
            | Message::Publish(Publish {
                auth: DeviceAuth::Mac { tag, .. },
                ..
            }) => tag,
            _ => return false,
        };
        self.tag(message)
            .is_some_and(|expected| bool::from(expected.0.ct_eq(&given.0)))
    }

    /// Whether a version 1 `credential` is the secret this key was derived
    /// from for `subscriber` (the insecure form, §5.3; constant time in the
    /// key).
    pub fn matches_secret(&self, subscriber: Msisdn, credential: &[u8]) -> bool {
        bool::from(DeviceKey::derive(subscriber, credential).0.ct_eq(&self.0))
    }
}

/// A device's side of §5.11: its key and the last counter it used. Each
/// message it signs gets the device's clock in Unix milliseconds, or one
/// more than the last counter if the clock has not moved past it (two
/// messages in one millisecond, a clock stepped back), so counters only
/// ever increase. This crate reads no clock: the caller passes it.
#[derive(Clone, Debug)]
pub struct DeviceSigner {
    key: DeviceKey,
    last_counter: u64,
}

impl DeviceSigner {
    /// A signer with `key` that has used no counter yet.
    pub const fn new(key: DeviceKey) -> DeviceSigner {
        DeviceSigner {
            key,
            last_counter: 0,
        }
    }

    /// The next counter at clock `now_unix_ms`.
    pub fn next_counter(&mut self, now_unix_ms: u64) -> u64 {
        self.last_counter = now_unix_ms.max(self.last_counter.saturating_add(1));
        self.last_counter
    }

    /// The last counter used (0: none yet).
    pub const fn last_counter(&self) -> u64 {
        self.last_counter
    }

    /// The key.
    pub const fn key(&self) -> &DeviceKey {
        &self.key
    }

    /// `request`, signed with the next counter at `now_unix_ms`.
    pub fn request<'a>(
        &mut self,
        request: ClientRequest<'a>,
        now_unix_ms: u64,
    ) -> ClientRequest<'a> {
        let counter = self.next_counter(now_unix_ms);
        self.key.sign_request(request, counter)
    }

    /// `publish`, signed with the next counter at `now_unix_ms`.
    pub fn publish<'a>(&mut self, publish: Publish<'a>, now_unix_ms: u64) -> Publish<'a> {
        let counter = self.next_counter(now_unix_ms);
        self.key.sign_publish(publish, counter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{encode_frame, ClientOperation, FrameReader, PresenceState, Reachability};

    fn msisdn(text: &str) -> Msisdn {
        text.parse().unwrap()
    }

    fn request() -> ClientRequest<'static> {
        ClientRequest {
            txid: 7,
            watcher: msisdn("447700900123"),
            target: msisdn("12025550143"),
            operation: ClientOperation::Query,
            auth: DeviceAuth::UNSIGNED,
        }
    }

    #[test]
    fn a_signed_request_verifies_after_the_wire_and_nothing_changed_does() {
        let key = DeviceKey::derive(msisdn("447700900123"), b"k3y!");
        let signed = key.sign_request(request(), 1_765_000_000_000);
        let mut frame = Vec::new();
        encode_frame(&[Message::ClientRequest(signed)], 1472, &mut frame).unwrap();
        assert_eq!(frame[1], 2, "a MAC makes a version 2 frame");
        let decoded = FrameReader::new(&frame, 1472)
            .unwrap()
            .next()
            .unwrap()
            .unwrap();
        assert!(key.verifies(&decoded));
        // Every field is covered: change any byte before the tag and the
        // tag no longer verifies.
        for i in 4..frame.len() - MAC_TAG_LEN {
            let mut bent = frame.clone();
            bent[i] ^= 0x01;
            if let Some(Ok(message)) = FrameReader::new(&bent, 1472).unwrap().next() {
                assert!(!key.verifies(&message), "byte {i} not covered");
            }
        }
        // Another key, another subscriber's key for the same secret.
        let other = DeviceKey::derive(msisdn("447700900124"), b"k3y!");
        assert!(!other.verifies(&decoded));
    }

    #[test]
    fn a_signers_counters_only_increase() {
        let mut signer = DeviceSigner::new(DeviceKey::derive(msisdn("447700900123"), b"pw"));
        assert_eq!(signer.next_counter(1_000), 1_000);
        assert_eq!(signer.next_counter(1_000), 1_001, "same millisecond");
        assert_eq!(signer.next_counter(900), 1_002, "clock stepped back");
        assert_eq!(signer.next_counter(5_000), 5_000);
        let request = signer.request(request(), 5_000);
        assert_eq!(
            request.auth,
            signer.key().sign_request(request, 5_001).auth,
            "signed with the next counter"
        );
        assert_eq!(signer.last_counter(), 5_001);
    }

    #[test]
    fn a_request_tag_does_not_verify_a_publication_and_the_credential_form_never_verifies() {
        let key = DeviceKey::derive(msisdn("447700900123"), b"pw");
        let publish = key.sign_publish(
            Publish {
                txid: 7,
                subscriber: msisdn("447700900123"),
                state: PresenceState::Attached(Reachability::SMS),
                auth: DeviceAuth::UNSIGNED,
            },
            5,
        );
        assert!(key.verifies(&Message::Publish(publish)));
        let credential = ClientRequest {
            auth: DeviceAuth::Credential(crate::Credential::new(b"pw").unwrap()),
            ..request()
        };
        assert!(!key.verifies(&Message::ClientRequest(credential)));
        assert!(key.matches_secret(msisdn("447700900123"), b"pw"));
        assert!(!key.matches_secret(msisdn("447700900123"), b"pW"));
        assert_eq!(format!("{key:?}"), "DeviceKey(..)");
    }
}
