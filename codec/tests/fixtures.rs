//! Byte fixtures, one or more per message type, written from
//! `docs/wire-format.md` by hand (not produced by this crate): each is decoded,
//! checked field by field, and re-encoded to the same bytes.

use std::num::NonZeroU32;

use presence_codec::*;

fn hex(text: &str) -> Vec<u8> {
    text.split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect()
}

fn msisdn(text: &str) -> Msisdn {
    text.parse().unwrap()
}

/// Decodes one message framed alone, checks it is `expected`, and checks that
/// encoding `expected` gives the bytes back.
fn check(message_hex: &str, expected: Message<'_>) {
    check_version(FRAME_VERSION, message_hex, expected)
}

/// [`check`] in a frame of `version`.
fn check_version(version: u8, message_hex: &str, expected: Message<'_>) {
    let message = hex(message_hex);
    let mut frame = vec![FRAME_MAGIC, version];
    frame.extend_from_slice(&message);
    let mut reader = FrameReader::new(&frame, FRAME_LEN_DEFAULT_MAX).unwrap();
    let decoded = reader.next().unwrap().unwrap();
    assert!(reader.next().is_none());
    assert_eq!(decoded, expected);
    assert_eq!(expected.encoded_len(), message.len());
    let mut out = Vec::new();
    expected.encode(&mut out).unwrap();
    assert_eq!(out, message, "re-encoding gives the fixture back");
}

fn query() -> Query {
    Query {
        txid: 0x0102_0304_0506_0708,
        watcher: msisdn("447700900123"),
        target: msisdn("12025550143"),
        hop_limit: 8,
        budget_ms: 1500,
        reply_node: 3,
        route_version: 7,
    }
}

#[test]
fn query_fixture_from_spec_section_11() {
    let frame = hex(
        "50 01 01 1f 01 02 03 04 05 06 07 08 00 00 68 3d 0d 99 1b 00 00 02 cc c7 55 3f \
         08 05 dc 00 03 00 00 00 07",
    );
    let mut got = Vec::new();
    assert_eq!(
        FrameReader::for_each_accepted(&frame, FRAME_LEN_DEFAULT_MAX, |m| got.push(m)),
        Ok(1)
    );
    assert_eq!(got, vec![Message::Query(query())]);
    let mut out = Vec::new();
    encode_frame(&got, FRAME_LEN_DEFAULT_MAX, &mut out).unwrap();
    assert_eq!(out, frame);
}

#[test]
fn query_is_33_bytes_on_the_wire() {
    assert_eq!(Message::Query(query()).encoded_len(), 33);
    assert_eq!(QUERY_WIRE_LEN, 33);
}

#[test]
fn query_fixture() {
    check(
        "01 1f 01 02 03 04 05 06 07 08 00 00 68 3d 0d 99 1b 00 00 02 cc c7 55 3f 08 05 dc \
         00 03 00 00 00 07",
        Message::Query(query()),
    );
}

#[test]
fn unsubscribe_fixture() {
    check(
        "05 1f 01 02 03 04 05 06 07 08 00 00 68 3d 0d 99 1b 00 00 02 cc c7 55 3f 08 05 dc \
         00 03 00 00 00 07",
        Message::Unsubscribe(query()),
    );
}

#[test]
fn subscribe_fixture() {
    check(
        "04 23 01 02 03 04 05 06 07 08 00 00 68 3d 0d 99 1b 00 00 02 cc c7 55 3f 08 05 dc \
         00 03 00 00 00 07 00 00 0e 10",
        Message::Subscribe(Subscribe {
            query: query(),
            expiry_s: NonZeroU32::new(3600).unwrap(),
        }),
    );
}

fn answer(txid: u64, outcome: Outcome) -> Message<'static> {
    Message::Answer(Answer {
        txid,
        reply_node: 3,
        target: msisdn("12025550143"),
        outcome,
    })
}

#[test]
fn answer_fixtures_for_every_outcome() {
    check(
        "02 17 01 02 03 04 05 06 07 08 00 03 00 00 02 cc c7 55 3f 01 03 00 00 00 2a",
        answer(
            0x0102_0304_0506_0708,
            Outcome::Attached {
                reach: Reachability::PACKET_DATA_AND_SMS,
                confirmed_age_s: 42,
            },
        ),
    );
    check(
        "02 16 00 00 00 00 00 00 00 09 00 03 00 00 02 cc c7 55 3f 02 00 00 02 58",
        answer(
            9,
            Outcome::Detached {
                confirmed_age_s: 600,
            },
        ),
    );
    check(
        "02 12 00 00 00 00 00 00 00 09 00 03 00 00 02 cc c7 55 3f 03",
        answer(9, Outcome::NotAvailable),
    );
    check(
        "02 16 00 00 00 00 00 00 00 09 00 03 00 00 02 cc c7 55 3f 04 00 00 00 fa",
        answer(
            9,
            Outcome::Overloaded {
                retry_after_ms: 250,
            },
        ),
    );
    check(
        "02 13 00 00 00 00 00 00 00 09 00 03 00 00 02 cc c7 55 3f 05 05",
        answer(9, Outcome::Error(ErrorReason::CreditExhausted)),
    );
}

#[test]
fn client_request_fixture_version_1() {
    check(
        "03 20 00 00 00 00 00 00 00 4d 00 00 68 3d 0d 99 1b 00 00 02 cc c7 55 3f 02 00 00 01 \
         2c 04 6b 33 79 21",
        Message::ClientRequest(ClientRequest {
            txid: 77,
            watcher: msisdn("447700900123"),
            target: msisdn("12025550143"),
            operation: ClientOperation::Subscribe {
                expiry_s: NonZeroU32::new(300).unwrap(),
            },
            auth: DeviceAuth::Credential(Credential::new(b"k3y!").unwrap()),
        }),
    );
}

/// §11's MAC fixture: the key derived for 447700900123 from the secret
/// `k3y!`, a subscribe request with counter 1796601600000 (2026-12-07
/// 00:00:00 UTC in milliseconds), and the tag that key gives it.
#[test]
fn client_request_fixture_version_2_and_its_tag() {
    let expected = ClientRequest {
        txid: 77,
        watcher: msisdn("447700900123"),
        target: msisdn("12025550143"),
        operation: ClientOperation::Subscribe {
            expiry_s: NonZeroU32::new(300).unwrap(),
        },
        auth: DeviceAuth::Mac {
            counter: 1_796_601_600_000,
            tag: MacTag(hex(MAC_FIXTURE_TAG).try_into().unwrap()),
        },
    };
    check_version(
        2,
        &format!(
            "03 33 00 00 00 00 00 00 00 4d 00 00 68 3d 0d 99 1b 00 00 02 cc c7 55 3f 02 00 00 01 \
             2c 00 00 01 a2 4d cc d8 00 {MAC_FIXTURE_TAG}"
        ),
        Message::ClientRequest(expected),
    );
    let key = DeviceKey::derive(msisdn("447700900123"), b"k3y!");
    assert_eq!(hex(MAC_FIXTURE_KEY), key.as_bytes());
    assert!(key.verifies(&Message::ClientRequest(expected)));
    assert_eq!(
        key.sign_request(expected, 1_796_601_600_000),
        expected,
        "signing gives the fixture's tag"
    );
    // In a version 1 frame the same bytes are a bad credential length.
    let mut frame = vec![FRAME_MAGIC, 1];
    frame.extend_from_slice(&hex(&format!(
        "03 33 00 00 00 00 00 00 00 4d 00 00 68 3d 0d 99 1b 00 00 02 cc c7 55 3f 02 00 00 01 \
         2c 00 00 01 a2 4d cc d8 00 {MAC_FIXTURE_TAG}"
    )));
    assert!(FrameReader::new(&frame, 1472)
        .unwrap()
        .next()
        .unwrap()
        .is_err());
}

/// Computed with the `blake3` Python package (independent of this crate).
const MAC_FIXTURE_KEY: &str =
    "d3 67 24 28 39 3e f1 f5 d2 f3 f7 82 06 8c 03 61 97 6a ef 7c e6 f0 16 2e 51 85 b8 2a e0 ad 22 ab";
const MAC_FIXTURE_TAG: &str = "3f ab b5 3f ca 10 da dd 4f 54 d5 68 18 2f 05 f7";

#[test]
fn notify_fixture() {
    check(
        "06 24 01 02 03 04 05 06 07 08 00 03 00 00 68 3d 0d 99 1b 00 00 02 cc c7 55 3f 00 00 \
         00 02 00 78 01 01 00 00 00 05",
        Message::Notify(Notify {
            txid: 0x0102_0304_0506_0708,
            reply_node: 3,
            watcher: msisdn("447700900123"),
            target: msisdn("12025550143"),
            seq: 2,
            remaining_s: 120,
            outcome: Outcome::Attached {
                reach: Reachability::PACKET_DATA,
                confirmed_age_s: 5,
            },
        }),
    );
}

#[test]
fn publish_fixture() {
    check(
        "07 12 00 00 00 00 00 00 00 0b 00 00 02 cc c7 55 3f 01 02 00",
        Message::Publish(Publish {
            txid: 11,
            subscriber: msisdn("12025550143"),
            state: PresenceState::Attached(Reachability::SMS),
            auth: DeviceAuth::Credential(Credential::EMPTY),
        }),
    );
}

#[test]
fn buddy_update_fixture() {
    let mut storage: BuddyListStorage = [0; 224];
    let buddies = BuddyList::encode(
        &[msisdn("447700900123"), msisdn("447700900124")],
        &mut storage,
    )
    .unwrap();
    check(
        "08 1f 00 00 00 00 00 00 00 0c 00 00 02 cc c7 55 3f 01 02 00 00 68 3d 0d 99 1b 00 00 \
         68 3d 0d 99 1c",
        Message::BuddyUpdate(BuddyUpdate {
            txid: 12,
            owner: msisdn("12025550143"),
            action: BuddyAction::Add,
            buddies,
        }),
    );
    assert_eq!(
        buddies.iter().collect::<Vec<_>>(),
        vec![msisdn("447700900123"), msisdn("447700900124")]
    );
}

#[test]
fn consent_update_fixture() {
    check(
        "09 18 00 00 00 00 00 00 00 0d 00 00 02 cc c7 55 3f 02 00 00 00 00 00 00 00 02",
        Message::ConsentUpdate(ConsentUpdate {
            txid: 13,
            owner: msisdn("12025550143"),
            scope: ConsentScope::All,
            consent: Consent::Withdraw,
        }),
    );
}

#[test]
fn ack_fixture() {
    check(
        "0a 09 00 00 00 00 00 00 00 0d 00",
        Message::Ack(Ack {
            txid: 13,
            status: AckStatus::Ok,
        }),
    );
}

#[test]
fn a_default_frame_holds_44_queries() {
    let mut buf = Vec::new();
    let mut writer = FrameWriter::new(&mut buf, FRAME_LEN_DEFAULT_MAX).unwrap();
    let mut n = 0u64;
    while writer
        .push(&Message::Query(Query { txid: n, ..query() }))
        .is_ok()
    {
        n += 1;
    }
    assert_eq!(writer.message_count(), 44);
    assert_eq!(writer.len(), 2 + 44 * 33);
    assert_eq!(buf.len(), 2 + 44 * 33);
    let count = FrameReader::for_each_accepted(&buf, FRAME_LEN_DEFAULT_MAX, |_| {}).unwrap();
    assert_eq!(count, 44);
}

#[test]
fn frame_writer_refuses_what_does_not_fit_without_writing() {
    let mut buf = Vec::new();
    let mut writer = FrameWriter::new(&mut buf, 2 + 33 + 10).unwrap();
    writer.push(&Message::Query(query())).unwrap();
    assert_eq!(
        writer.push(&Message::Query(query())),
        Err(EncodeError::FrameFull {
            needed: 33,
            max: 45
        })
    );
    assert_eq!(buf.len(), 35, "nothing written by the refused push");
}

#[test]
fn encoding_into_a_small_slice_is_an_error_not_a_panic() {
    let mut space = [0u8; 10];
    let mut slice = &mut space[..];
    assert_eq!(
        Message::Query(query()).encode(&mut slice),
        Err(EncodeError::BufferTooSmall {
            needed: 33,
            available: 10
        })
    );
}

#[test]
fn stream_framing_prefixes_the_length() {
    let frame = hex("50 01 0a 09 00 00 00 00 00 00 00 0d 00");
    let mut stream = Vec::new();
    encode_stream_frame(&frame, &mut stream).unwrap();
    assert_eq!(&stream[..2], &[0x00, 0x0d]);
    assert_eq!(&stream[2..], &frame[..]);
    assert_eq!(
        split_stream_frame(&stream, 65535),
        Ok(Some((&frame[..], 15)))
    );
    assert_eq!(split_stream_frame(&stream[..14], 65535), Ok(None));
}

#[test]
fn reassembler_returns_frames_split_across_reads() {
    let frame = hex("50 01 0a 09 00 00 00 00 00 00 00 0d 00");
    let mut stream = Vec::new();
    encode_stream_frame(&frame, &mut stream).unwrap();
    encode_stream_frame(&frame, &mut stream).unwrap();
    let mut reassembler = StreamReassembler::new(64);
    let mut frames = Vec::new();
    for byte in &stream {
        assert_eq!(reassembler.feed(std::slice::from_ref(byte)), 1);
        while let Some(f) = reassembler.next_frame().unwrap() {
            frames.push(f.to_vec());
        }
    }
    assert_eq!(frames, vec![frame.clone(), frame]);
    assert_eq!(reassembler.pending_len(), 0);
}

#[test]
fn a_zero_length_record_is_a_keepalive_seen_as_an_empty_frame() {
    let frame = hex("50 01 0a 09 00 00 00 00 00 00 00 0d 00");
    let mut stream = Vec::new();
    encode_stream_keepalive(&mut stream).unwrap();
    encode_stream_frame(&frame, &mut stream).unwrap();
    assert_eq!(&stream[..2], &STREAM_KEEPALIVE);
    assert_eq!(split_stream_frame(&stream, 65535), Ok(Some((&[][..], 2))));
    let mut reassembler = StreamReassembler::new(64);
    reassembler.feed(&stream);
    assert_eq!(reassembler.next_frame(), Ok(Some(&[][..])));
    assert_eq!(reassembler.next_frame(), Ok(Some(&frame[..])));
    assert_eq!(reassembler.next_frame(), Ok(None));
}
