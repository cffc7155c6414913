//! Which worker owns a subscriber (`docs/wire-format.md` §12): one hash of the
//! MSISDN, used everywhere a subscriber's state is placed or a message is
//! steered to it.
//!
//! A gateway appliance runs one worker per core, and each subscriber's state
//! (credit, pending transactions, presence record, buddy list) lives on
//! exactly one of them: worker [`owner`]`(msisdn, workers)`. The same
//! function is computed by the kernel (a classic-BPF program on the device
//! port's `SO_REUSEPORT` group reads the subject of a datagram's first
//! message at [`FIRST_SUBJECT_OFFSET`]), by a peer network's gateway (it sends
//! each query over the border link that ends at the target's owner), and by a
//! client that batches requests (it packs one owner's requests per
//! datagram). So the hash is defined on 32-bit words with multiplies, shifts
//! and xors only: exactly what a classic-BPF program can compute.

use crate::{MessageType, Msisdn, ENVELOPE_LEN, FRAME_HEADER_LEN};

/// Multiplier of the MSISDN's low 32 bits.
pub const SHARD_MUL_LO: u32 = 0x9E37_79B1;
/// Multiplier of the MSISDN's high bits (bits 32–55).
pub const SHARD_MUL_HI: u32 = 0x85EB_CA77;
/// Multiplier of the finaliser.
pub const SHARD_MUL_MIX: u32 = 0x7FEB_352D;

/// The ownership hash of an MSISDN (§12): its 56-bit value as `hi:lo`
/// (24 and 32 bits), `x = lo·M1 ⊕ hi·M2`, then `x ⊕= x ≫ 16`,
/// `x = x·M3`, `x ⊕= x ≫ 15`, all arithmetic modulo 2^32.
#[inline]
pub const fn shard_hash(msisdn: Msisdn) -> u32 {
    let value = msisdn.as_u64();
    let lo = (value & 0xFFFF_FFFF) as u32;
    let hi = (value >> 32) as u32;
    let mut x = lo.wrapping_mul(SHARD_MUL_LO) ^ hi.wrapping_mul(SHARD_MUL_HI);
    x ^= x >> 16;
    x = x.wrapping_mul(SHARD_MUL_MIX);
    x ^= x >> 15;
    x
}

/// The worker, of `workers` (at least 1), that owns `msisdn`: the ownership
/// hash modulo the worker count. Always below `workers.max(1)`.
#[inline]
pub fn owner(msisdn: Msisdn, workers: u16) -> u16 {
    let workers = u32::from(workers.max(1));
    // The remainder is below `workers`, itself at most u16::MAX.
    u16::try_from(shard_hash(msisdn).checked_rem(workers).unwrap_or(0)).unwrap_or(0)
}

/// Offset, in a frame, of the subject MSISDN of the frame's first message
/// when that message is one of [`SUBJECT_FIRST_TYPES`]: the frame header,
/// the envelope, then the 8-byte `txid` that opens each of those bodies.
pub const FIRST_SUBJECT_OFFSET: usize = FRAME_HEADER_LEN + ENVELOPE_LEN + 8;

/// Offset, in a frame, of the first message's type byte.
pub const FIRST_TYPE_OFFSET: usize = FRAME_HEADER_LEN;

/// Messages a device or provisioning system sends whose body starts with
/// `txid` then the MSISDN whose owner handles it: the watcher of a
/// ClientRequest, the subscriber of a Publish, the owner of a BuddyUpdate
/// or ConsentUpdate.
pub const SUBJECT_FIRST_TYPES: [MessageType; 4] = [
    MessageType::ClientRequest,
    MessageType::Publish,
    MessageType::BuddyUpdate,
    MessageType::ConsentUpdate,
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ClientOperation, ClientRequest, Credential, FrameWriter, Message, Publish};

    fn m(text: &str) -> Msisdn {
        text.parse().unwrap()
    }

    #[test]
    fn owners_spread_evenly_over_workers() {
        for workers in [2u16, 3, 8, 16] {
            let mut counts = vec![0u32; usize::from(workers)];
            // Consecutive numbers of one range: the worst case for a weak hash.
            for i in 0..160_000u64 {
                let msisdn = Msisdn::from_u64(447_700_000_000 + i).unwrap();
                counts[usize::from(owner(msisdn, workers))] += 1;
            }
            let expected = 160_000 / u32::from(workers);
            for c in counts {
                assert!(c.abs_diff(expected) * 50 < expected, "{workers}: {c}");
            }
        }
    }

    #[test]
    fn one_worker_owns_everything_and_zero_counts_as_one() {
        assert_eq!(owner(m("447700900123"), 1), 0);
        assert_eq!(owner(m("447700900123"), 0), 0);
    }

    #[test]
    fn the_subject_of_a_first_message_sits_at_its_offset() {
        let request = Message::ClientRequest(ClientRequest {
            txid: 7,
            watcher: m("447700900123"),
            target: m("4915112345678"),
            operation: ClientOperation::Query,
            auth: crate::DeviceAuth::Credential(Credential::new(b"pw").unwrap()),
        });
        let publish = Message::Publish(Publish {
            txid: 8,
            subscriber: m("4915112345678"),
            state: crate::PresenceState::Detached,
            auth: crate::DeviceAuth::Credential(Credential::new(b"pw").unwrap()),
        });
        for (message, subject) in [(request, "447700900123"), (publish, "4915112345678")] {
            let mut frame = Vec::new();
            let mut writer = FrameWriter::new(&mut frame, 1472).unwrap();
            writer.push(&message).unwrap();
            let wire = &frame[FIRST_SUBJECT_OFFSET..FIRST_SUBJECT_OFFSET + 7];
            assert_eq!(wire, m(subject).to_wire());
            assert!(SUBJECT_FIRST_TYPES.contains(&message.message_type()));
            assert_eq!(frame[FIRST_TYPE_OFFSET], message.message_type() as u8);
        }
    }
}
