//! One test per rejection of `docs/wire-format.md` §9: each breaks one rule of
//! a valid input and expects exactly the named error, with the scope the spec
//! gives it (how much input the receiver loses).

use presence_codec::*;

fn hex(text: &str) -> Vec<u8> {
    text.split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect()
}

const QUERY: &str = "01 1f 01 02 03 04 05 06 07 08 00 00 68 3d 0d 99 1b 00 00 02 cc c7 55 3f \
                     08 05 dc 00 03 00 00 00 07";

fn frame_of(messages: &[Vec<u8>]) -> Vec<u8> {
    let mut frame = vec![FRAME_MAGIC, FRAME_VERSION];
    for m in messages {
        frame.extend_from_slice(m);
    }
    frame
}

/// Decodes a frame holding `broken` then a valid query, and returns the first
/// message's error, checking the scope the spec gives it.
fn message_error(broken: Vec<u8>) -> DecodeError {
    let frame = frame_of(&[broken, hex(QUERY)]);
    let mut reader = FrameReader::new(&frame, FRAME_LEN_ABSOLUTE_MAX).unwrap();
    let error = reader.next().unwrap().unwrap_err();
    match error.scope() {
        ErrorScope::Message => assert!(
            matches!(reader.next(), Some(Ok(Message::Query(_)))),
            "{error:?} loses only its own message"
        ),
        ErrorScope::RestOfFrame => assert!(reader.next().is_none()),
        other => panic!("unexpected scope {other:?}"),
    }
    error
}

#[test]
fn decode_rejects_frame_shorter_than_header() {
    assert_eq!(
        FrameReader::new(&[0x50], 1472).err(),
        Some(DecodeError::FrameTooShort)
    );
    assert_eq!(
        FrameReader::new(&[], 1472).err(),
        Some(DecodeError::FrameTooShort)
    );
}

#[test]
fn decode_rejects_frame_over_the_configured_maximum() {
    let frame = frame_of(&vec![hex(QUERY); 45]);
    assert_eq!(
        FrameReader::new(&frame, 1472).err(),
        Some(DecodeError::FrameTooLarge {
            len: 2 + 45 * 33,
            max: 1472
        })
    );
    assert!(FrameReader::new(&frame, 2000).is_ok());
}

#[test]
fn decode_rejects_bad_magic() {
    let mut frame = frame_of(&[hex(QUERY)]);
    frame[0] = 0x51;
    assert_eq!(
        FrameReader::new(&frame, 1472).err(),
        Some(DecodeError::BadMagic(0x51))
    );
}

#[test]
fn decode_rejects_other_versions() {
    for version in [0u8, 3, 0xff] {
        let mut frame = frame_of(&[hex(QUERY)]);
        frame[1] = version;
        assert_eq!(
            FrameReader::new(&frame, 1472).err(),
            Some(DecodeError::UnsupportedVersion(version))
        );
    }
    let mut frame = frame_of(&[hex(QUERY)]);
    frame[1] = 2;
    assert!(
        matches!(
            FrameReader::new(&frame, 1472).unwrap().next(),
            Some(Ok(Message::Query(_)))
        ),
        "version 2 lays out a query as version 1 does"
    );
}

/// A version 2 ClientRequest (§5.3): 27 bytes, an 8-byte counter, a
/// 16-byte tag; nothing more or less.
#[test]
fn decode_rejects_a_version_2_request_of_any_other_length() {
    let head = &hex(CLIENT_QUERY)[..29];
    for extra in [0usize, 23, 25, 40] {
        let mut m = head.to_vec();
        m.extend(std::iter::repeat_n(0x5a, extra));
        m[1] = (27 + extra) as u8;
        let mut frame = vec![FRAME_MAGIC, 2];
        frame.extend_from_slice(&m);
        frame.extend_from_slice(&hex(QUERY));
        let mut reader = FrameReader::new(&frame, 1472).unwrap();
        assert_eq!(
            reader.next(),
            Some(Err(DecodeError::BadBodyLength {
                message_type: 3,
                body_len: (27 + extra) as u8
            })),
            "{extra} bytes after the fixed fields"
        );
        assert!(matches!(reader.next(), Some(Ok(Message::Query(_)))));
    }
}

#[test]
fn encoding_refuses_to_mix_credential_and_mac_forms_in_one_frame() {
    let request = ClientRequest {
        txid: 1,
        watcher: "447700900123".parse().unwrap(),
        target: "12025550143".parse().unwrap(),
        operation: ClientOperation::Query,
        auth: DeviceAuth::Credential(Credential::EMPTY),
    };
    let signed = ClientRequest {
        auth: DeviceAuth::UNSIGNED,
        ..request
    };
    let mut out = Vec::new();
    assert_eq!(
        encode_frame(
            &[
                Message::ClientRequest(signed),
                Message::ClientRequest(request)
            ],
            1472,
            &mut out
        ),
        Err(EncodeError::VersionMismatch {
            message: 1,
            frame: 2
        })
    );
    let mut open = OpenFrame::new(Vec::new(), 1472);
    open.push(&Message::Query(samples::QUERY)).unwrap();
    open.push(&Message::ClientRequest(signed)).unwrap();
    assert_eq!(
        open.push(&Message::ClientRequest(request)),
        Err(EncodeError::VersionMismatch {
            message: 1,
            frame: 2
        })
    );
    assert_eq!(
        open.into_bytes()[1],
        2,
        "the header follows the first device proof"
    );
}

#[test]
fn decode_rejects_empty_frame() {
    assert_eq!(
        FrameReader::new(&[0x50, 0x01], 1472).err(),
        Some(DecodeError::EmptyFrame)
    );
}

#[test]
fn decode_rejects_truncated_message_header_and_keeps_earlier_messages() {
    let mut frame = frame_of(&[hex(QUERY)]);
    frame.push(0x01);
    let results: Vec<_> = FrameReader::new(&frame, 1472).unwrap().collect();
    assert_eq!(results.len(), 2);
    assert!(matches!(results[0], Ok(Message::Query(_))));
    assert_eq!(results[1], Err(DecodeError::TruncatedMessageHeader));
}

#[test]
fn decode_rejects_body_overrunning_the_frame() {
    let mut m = hex(QUERY);
    m[1] = 0x40;
    let frame = frame_of(&[m]);
    let results: Vec<_> = FrameReader::new(&frame, 1472).unwrap().collect();
    assert_eq!(
        results,
        vec![Err(DecodeError::MessageOverrunsFrame {
            body_len: 0x40,
            remaining: 31
        })]
    );
}

#[test]
fn decode_skips_unknown_message_type_and_reads_on() {
    assert_eq!(
        message_error(hex("7f 03 aa bb cc")),
        DecodeError::UnknownMessageType(0x7f)
    );
    assert_eq!(
        message_error(hex("00 00")),
        DecodeError::UnknownMessageType(0)
    );
}

#[test]
fn decode_rejects_wrong_body_length_for_type() {
    let mut m = hex(QUERY);
    m[1] = 30;
    m.pop();
    assert_eq!(
        message_error(m),
        DecodeError::BadBodyLength {
            message_type: 1,
            body_len: 30
        }
    );
    // An Ack with a trailing byte.
    assert_eq!(
        message_error(hex("0a 0a 00 00 00 00 00 00 00 0d 00 00")),
        DecodeError::BadBodyLength {
            message_type: 0x0a,
            body_len: 10
        }
    );
}

#[test]
fn decode_rejects_zero_and_sixteen_digit_msisdns_naming_the_field() {
    let mut m = hex(QUERY);
    m[10..17].fill(0);
    assert_eq!(
        message_error(m),
        DecodeError::InvalidMsisdn {
            field: MsisdnField::Watcher,
            reason: MsisdnError::Zero
        }
    );
    let mut m = hex(QUERY);
    m[17..24].fill(0xff);
    assert_eq!(
        message_error(m),
        DecodeError::InvalidMsisdn {
            field: MsisdnField::Target,
            reason: MsisdnError::TooLong
        }
    );
}

const ANSWER_NOT_AVAILABLE: &str = "02 12 00 00 00 00 00 00 00 09 00 03 00 00 02 cc c7 55 3f 03";

#[test]
fn decode_rejects_unknown_outcome() {
    let mut m = hex(ANSWER_NOT_AVAILABLE);
    m[19] = 0x06;
    assert_eq!(message_error(m), DecodeError::UnknownOutcome(6));
}

#[test]
fn decode_rejects_outcome_detail_of_the_wrong_size() {
    // NotAvailable followed by a stray byte.
    let mut m = hex(ANSWER_NOT_AVAILABLE);
    m.push(0);
    m[1] = 0x13;
    assert_eq!(
        message_error(m),
        DecodeError::BadBodyLength {
            message_type: 2,
            body_len: 0x13
        }
    );
}

#[test]
fn decode_rejects_invalid_reachability() {
    for reach in [0x00, 0x04, 0x83] {
        let m = hex(&format!(
            "02 17 00 00 00 00 00 00 00 09 00 03 00 00 02 cc c7 55 3f 01 {reach:02x} 00 00 00 2a"
        ));
        assert_eq!(message_error(m), DecodeError::InvalidReachability(reach));
    }
    // A detached publication must not claim reachability.
    assert_eq!(
        message_error(hex(
            "07 12 00 00 00 00 00 00 00 0b 00 00 02 cc c7 55 3f 02 01 00"
        )),
        DecodeError::InvalidReachability(1)
    );
}

#[test]
fn decode_rejects_unknown_error_reason() {
    assert_eq!(
        message_error(hex(
            "02 13 00 00 00 00 00 00 00 09 00 03 00 00 02 cc c7 55 3f 05 09"
        )),
        DecodeError::UnknownErrorReason(9)
    );
}

const CLIENT_QUERY: &str = "03 1c 00 00 00 00 00 00 00 4d 00 00 68 3d 0d 99 1b 00 00 02 cc c7 \
                            55 3f 01 00 00 00 00 00";

#[test]
fn client_query_base_fixture_is_valid() {
    let frame = frame_of(&[hex(CLIENT_QUERY)]);
    assert_eq!(FrameReader::for_each_accepted(&frame, 1472, |_| {}), Ok(1));
}

#[test]
fn decode_rejects_unknown_client_operation() {
    let mut m = hex(CLIENT_QUERY);
    m[24] = 4;
    assert_eq!(message_error(m), DecodeError::UnknownOperation(4));
}

#[test]
fn decode_rejects_expiry_on_a_query_and_none_on_a_subscribe() {
    let mut m = hex(CLIENT_QUERY);
    m[28] = 1;
    assert_eq!(message_error(m), DecodeError::InvalidExpiry { expiry_s: 1 });
    let mut m = hex(CLIENT_QUERY);
    m[24] = 2;
    assert_eq!(message_error(m), DecodeError::InvalidExpiry { expiry_s: 0 });
    // Network subscribe with expiry 0.
    let mut m = hex(QUERY);
    m[0] = 4;
    m[1] = 35;
    m.extend_from_slice(&[0, 0, 0, 0]);
    assert_eq!(message_error(m), DecodeError::InvalidExpiry { expiry_s: 0 });
}

#[test]
fn decode_rejects_credential_over_32_bytes() {
    let mut m = hex(CLIENT_QUERY);
    m[29] = 33;
    m.extend_from_slice(&[0x55; 33]);
    m[1] = 28 + 33;
    assert_eq!(message_error(m), DecodeError::CredentialTooLong { len: 33 });
}

#[test]
fn decode_rejects_credential_length_disagreeing_with_body() {
    let mut m = hex(CLIENT_QUERY);
    m[29] = 2;
    m.push(0x55);
    m[1] = 29;
    assert_eq!(
        message_error(m),
        DecodeError::BadBodyLength {
            message_type: 3,
            body_len: 29
        }
    );
}

#[test]
fn decode_rejects_unknown_presence_state() {
    assert_eq!(
        message_error(hex(
            "07 12 00 00 00 00 00 00 00 0b 00 00 02 cc c7 55 3f 03 00 00"
        )),
        DecodeError::UnknownPresenceState(3)
    );
}

const BUDDY_ADD: &str = "08 1f 00 00 00 00 00 00 00 0c 00 00 02 cc c7 55 3f 01 02 00 00 68 3d \
                         0d 99 1b 00 00 68 3d 0d 99 1c";

#[test]
fn decode_rejects_unknown_buddy_action() {
    let mut m = hex(BUDDY_ADD);
    m[17] = 4;
    assert_eq!(message_error(m), DecodeError::UnknownAction(4));
}

#[test]
fn decode_rejects_more_than_32_buddies() {
    let mut m = hex(BUDDY_ADD);
    m[18] = 33;
    assert_eq!(message_error(m), DecodeError::TooManyBuddies { count: 33 });
}

#[test]
fn decode_rejects_buddy_count_disagreeing_with_body() {
    let mut m = hex(BUDDY_ADD);
    m[18] = 1;
    assert_eq!(
        message_error(m),
        DecodeError::BadBodyLength {
            message_type: 8,
            body_len: 0x1f
        }
    );
}

#[test]
fn decode_rejects_buddies_out_of_order_or_repeated() {
    let mut m = hex(BUDDY_ADD);
    m[32] = 0x1b;
    assert_eq!(message_error(m), DecodeError::BuddiesNotAscending);
    let mut m = hex(BUDDY_ADD);
    m[32] = 0x1a;
    assert_eq!(message_error(m), DecodeError::BuddiesNotAscending);
}

#[test]
fn decode_rejects_invalid_buddy_msisdn() {
    let mut m = hex(BUDDY_ADD);
    m[26..33].fill(0xff);
    assert_eq!(
        message_error(m),
        DecodeError::InvalidMsisdn {
            field: MsisdnField::Buddy,
            reason: MsisdnError::TooLong
        }
    );
}

const CONSENT_ALL: &str =
    "09 18 00 00 00 00 00 00 00 0d 00 00 02 cc c7 55 3f 02 00 00 00 00 00 00 00 02";

#[test]
fn decode_rejects_unknown_consent_scope() {
    let mut m = hex(CONSENT_ALL);
    m[17] = 3;
    assert_eq!(message_error(m), DecodeError::UnknownConsentScope(3));
}

#[test]
fn decode_rejects_nonzero_watcher_in_all_watchers_consent() {
    let mut m = hex(CONSENT_ALL);
    m[24] = 1;
    assert_eq!(message_error(m), DecodeError::NonZeroPadding);
}

#[test]
fn decode_rejects_zero_watcher_in_one_watcher_consent() {
    let mut m = hex(CONSENT_ALL);
    m[17] = 1;
    assert_eq!(
        message_error(m),
        DecodeError::InvalidMsisdn {
            field: MsisdnField::Watcher,
            reason: MsisdnError::Zero
        }
    );
}

#[test]
fn decode_rejects_unknown_consent() {
    let mut m = hex(CONSENT_ALL);
    m[25] = 0;
    assert_eq!(message_error(m), DecodeError::UnknownConsent(0));
}

#[test]
fn decode_rejects_unknown_ack_status() {
    assert_eq!(
        message_error(hex("0a 09 00 00 00 00 00 00 00 0d 06")),
        DecodeError::UnknownAckStatus(6)
    );
}

#[test]
fn stream_rejects_frames_shorter_than_four_bytes() {
    assert_eq!(
        split_stream_frame(&[0x00, 0x03, 0x50, 0x01, 0x0a], 65535),
        Err(DecodeError::StreamFrameTooShort { len: 3 })
    );
}

#[test]
fn stream_rejects_frames_over_the_maximum_and_stays_failed() {
    let mut reassembler = StreamReassembler::new(1472);
    reassembler.feed(&[0x05, 0xc1]);
    let error = DecodeError::StreamFrameTooLarge {
        len: 1473,
        max: 1472,
    };
    assert_eq!(reassembler.next_frame(), Err(error));
    assert_eq!(error.scope(), ErrorScope::Connection);
    reassembler.feed(&[0x00, 0x04, 0x50, 0x01, 0x0a, 0x00]);
    assert_eq!(reassembler.next_frame(), Err(error), "poisoned");
}

#[test]
fn every_error_has_a_distinct_counter_name() {
    let errors = [
        DecodeError::FrameTooShort,
        DecodeError::BadMagic(0),
        DecodeError::UnsupportedVersion(0),
        DecodeError::EmptyFrame,
        DecodeError::TruncatedMessageHeader,
        DecodeError::UnknownMessageType(0),
        DecodeError::UnknownOutcome(0),
        DecodeError::InvalidReachability(0),
        DecodeError::UnknownErrorReason(0),
        DecodeError::UnknownOperation(0),
        DecodeError::UnknownPresenceState(0),
        DecodeError::UnknownAction(0),
        DecodeError::BuddiesNotAscending,
        DecodeError::UnknownConsentScope(0),
        DecodeError::NonZeroPadding,
        DecodeError::UnknownConsent(0),
        DecodeError::UnknownAckStatus(0),
    ];
    let mut names: Vec<_> = errors.iter().map(|e| e.name()).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), errors.len());
    assert_eq!(
        DecodeError::BadMagic(0x51).to_string(),
        "bad magic byte 0x51"
    );
}
