//! Fuzzing harness: the properties the fuzz targets check, kept next to the
//! codec so the targets in `fuzz/` are three-line shims and the corpus-replay
//! test runs exactly the same checks. Every function panics when a property of
//! `docs/wire-format.md` is broken, which is what a fuzzer reports.
#![allow(
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    missing_docs
)]

use arbitrary::{Arbitrary, Unstructured};

use crate::{
    split_stream_frame, BuddyAction, BuddyList, BuddyListStorage, BuddyUpdate, DecodeError,
    ErrorScope, FrameReader, FrameWriter, Message, Msisdn, StreamReassembler, BODY_LEN_MAX,
    BUDDIES_PER_UPDATE_MAX, ENVELOPE_LEN, FRAME_HEADER_LEN, FRAME_LEN_ABSOLUTE_MAX,
    STREAM_PREFIX_LEN,
};

/// Frame decode: never panics; every accepted message re-encodes to exactly
/// its own bytes (§8); errors stop the frame only when their scope says so.
pub fn frame_decode(data: &[u8]) {
    let Ok(mut reader) = FrameReader::new(data, FRAME_LEN_ABSOLUTE_MAX) else {
        return;
    };
    let mut start = FRAME_HEADER_LEN;
    let mut all_accepted = true;
    // The header names the frame's version (§10); the messages follow it.
    let mut reencoded = vec![crate::FRAME_MAGIC, reader.version()];
    while let Some(result) = reader.next() {
        let end = reader.position();
        match result {
            Ok(message) => {
                let mut out = Vec::with_capacity(message.encoded_len());
                message.encode(&mut out).unwrap();
                assert_eq!(out.len(), message.encoded_len(), "encoded_len is exact");
                assert_eq!(&out[..], &data[start..end], "canonical: {message:?}");
                reencoded.extend_from_slice(&out);
            }
            Err(error) => {
                all_accepted = false;
                assert!(
                    matches!(error.scope(), ErrorScope::Message | ErrorScope::RestOfFrame),
                    "frame-scope error after the header: {error:?}"
                );
                if error.scope() == ErrorScope::RestOfFrame {
                    assert!(reader.next().is_none(), "a broken envelope ends the frame");
                }
            }
        }
        start = end;
    }
    if all_accepted {
        assert_eq!(reencoded, data, "an accepted frame re-encodes to itself");
    }
}

/// Owned description of a message, for building dense valid buddy lists that a
/// borrowed [`BuddyList`] cannot produce from fuzzer bytes.
#[derive(Debug, Arbitrary)]
pub enum MessageSpec<'a> {
    Message(Message<'a>),
    Buddies {
        txid: u64,
        owner: Msisdn,
        action: BuddyAction,
        buddies: Vec<Msisdn>,
    },
}

/// Structured round trip: values built by `arbitrary` encode into frames that
/// decode to the same values and re-encode to the same bytes.
pub fn structured_round_trip(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(specs) = Vec::<MessageSpec<'_>>::arbitrary(&mut u) else {
        return;
    };
    let Ok(max_len) =
        u.int_in_range(FRAME_HEADER_LEN + ENVELOPE_LEN + BODY_LEN_MAX..=FRAME_LEN_ABSOLUTE_MAX)
    else {
        return;
    };
    let mut storages: Vec<BuddyListStorage> =
        vec![[0u8; core::mem::size_of::<BuddyListStorage>()]; specs.len()];
    let mut messages = Vec::with_capacity(specs.len());
    for (spec, storage) in specs.iter().zip(storages.iter_mut()) {
        messages.push(match spec {
            MessageSpec::Message(message) => *message,
            MessageSpec::Buddies {
                txid,
                owner,
                action,
                buddies,
            } => {
                let mut sorted = buddies.clone();
                sorted.sort_unstable();
                sorted.dedup();
                sorted.truncate(BUDDIES_PER_UPDATE_MAX);
                Message::BuddyUpdate(BuddyUpdate {
                    txid: *txid,
                    owner: *owner,
                    action: *action,
                    buddies: BuddyList::encode(&sorted, storage).unwrap(),
                })
            }
        });
    }
    // Pack into as many frames as the maximum size needs.
    let mut frames: Vec<(Vec<u8>, Vec<Message<'_>>)> = Vec::new();
    let mut pending = messages.iter().peekable();
    while pending.peek().is_some() {
        let mut buf = Vec::new();
        let mut in_frame = Vec::new();
        // The frame takes the version of its first message (§10); a
        // message of the other version starts the next frame.
        let version = pending
            .peek()
            .and_then(|m| m.version())
            .unwrap_or(crate::FRAME_VERSION);
        let mut writer = FrameWriter::with_version(&mut buf, max_len, version).unwrap();
        while let Some(message) = pending.peek() {
            if let Err(e) = writer.push(message) {
                assert!(
                    !writer.is_empty(),
                    "any message fits in a frame of 259 bytes or more: {e:?}"
                );
                break;
            }
            in_frame.push(**message);
            pending.next();
        }
        assert!(writer.len() <= max_len);
        let len = writer.len();
        assert_eq!(buf.len(), len);
        frames.push((buf, in_frame));
    }
    for (bytes, sent) in &frames {
        let mut received = Vec::new();
        FrameReader::for_each_accepted(bytes, max_len, |m| received.push(m))
            .unwrap_or_else(|e| panic!("own encoding rejected: {e:?}"));
        assert_eq!(&received, sent, "decode(encode(x)) == x");
        let mut again = Vec::new();
        crate::encode_frame(&received, max_len, &mut again).unwrap();
        assert_eq!(&again, bytes, "encode(decode(b)) == b");
    }
}

/// Stream reassembly: however the bytes are split, the reassembler returns
/// the same frames and the same error as reading the whole stream at once.
pub fn stream_reassembly(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(max_frame_len) = u.int_in_range(4usize..=2048) else {
        return;
    };
    let Ok(frames) = Vec::<&[u8]>::arbitrary(&mut u) else {
        return;
    };
    let Ok(garbage) = <&[u8]>::arbitrary(&mut u) else {
        return;
    };
    let Ok(splits) = Vec::<u16>::arbitrary(&mut u) else {
        return;
    };
    let mut stream = Vec::new();
    for frame in &frames {
        if (4..=max_frame_len).contains(&frame.len()) {
            crate::encode_stream_frame(frame, &mut stream).unwrap();
        }
    }
    stream.extend_from_slice(garbage);

    // Reference: the whole stream at once.
    let mut expected: Vec<&[u8]> = Vec::new();
    let mut rest = &stream[..];
    let expected_end: Result<(), DecodeError> = loop {
        match split_stream_frame(rest, max_frame_len) {
            Ok(Some((frame, consumed))) => {
                assert_eq!(consumed, frame.len() + STREAM_PREFIX_LEN);
                expected.push(frame);
                rest = &rest[consumed..];
            }
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        }
    };

    // The reassembler, fed in pieces.
    let mut reassembler = StreamReassembler::new(max_frame_len);
    let mut got: Vec<Vec<u8>> = Vec::new();
    let mut got_end = Ok(());
    let mut offset = 0usize;
    let mut cuts = splits.iter().map(|s| usize::from(*s) % 300 + 1).cycle();
    'feed: while offset < stream.len() {
        let piece = cuts.next().unwrap_or(stream.len());
        let end = (offset + piece).min(stream.len());
        let mut chunk = &stream[offset..end];
        while !chunk.is_empty() {
            let taken = reassembler.feed(chunk);
            chunk = &chunk[taken..];
            offset += taken;
            let mut progressed = taken > 0;
            loop {
                match reassembler.next_frame() {
                    Ok(Some(frame)) => {
                        got.push(frame.to_vec());
                        progressed = true;
                    }
                    Ok(None) => break,
                    Err(e) => {
                        got_end = Err(e);
                        break 'feed;
                    }
                }
            }
            assert!(progressed, "a full buffer always holds a frame or an error");
        }
    }
    assert_eq!(got, expected, "same frames whatever the split");
    assert_eq!(got_end, expected_end, "same error whatever the split");
    if got_end.is_ok() {
        assert_eq!(reassembler.pending_len(), rest.len(), "nothing lost");
    }
}
