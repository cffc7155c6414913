//! Property tests of the canonical encoding (`docs/wire-format.md` §8), both
//! ways:
//! - value → bytes → value: any valid message value survives a frame;
//! - bytes → value → bytes: any accepted message (valid frames with random
//!   bytes overwritten) re-encodes to exactly its input bytes.

use std::num::NonZeroU32;

use presence_codec::*;
use proptest::prelude::*;

fn msisdn() -> impl Strategy<Value = Msisdn> {
    prop_oneof![
        (1u64..=MSISDN_MAX).prop_map(|v| Msisdn::from_u64(v).unwrap()),
        Just(Msisdn::MIN),
        Just(Msisdn::MAX),
    ]
}

fn reach() -> impl Strategy<Value = Reachability> {
    (1u8..=3).prop_map(|b| Reachability::from_bits(b).unwrap())
}

fn outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        (reach(), any::<u32>()).prop_map(|(reach, confirmed_age_s)| Outcome::Attached {
            reach,
            confirmed_age_s
        }),
        any::<u32>().prop_map(|confirmed_age_s| Outcome::Detached { confirmed_age_s }),
        Just(Outcome::NotAvailable),
        any::<u32>().prop_map(|retry_after_ms| Outcome::Overloaded { retry_after_ms }),
        (1u8..=8).prop_map(|c| Outcome::Error(ErrorReason::from_code(c).unwrap())),
    ]
}

fn query() -> impl Strategy<Value = Query> {
    (
        any::<u64>(),
        msisdn(),
        msisdn(),
        any::<u8>(),
        any::<u16>(),
        any::<u16>(),
        any::<u32>(),
    )
        .prop_map(
            |(txid, watcher, target, hop_limit, budget_ms, reply_node, route_version)| Query {
                txid,
                watcher,
                target,
                hop_limit,
                budget_ms,
                reply_node,
                route_version,
            },
        )
}

/// An owned description of any message: variable parts are owned here and
/// borrowed by [`Spec::message`].
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)] // test data, built once per case
enum Spec {
    Fixed(Message<'static>),
    Client {
        txid: u64,
        watcher: Msisdn,
        target: Msisdn,
        operation: ClientOperation,
        credential: Vec<u8>,
    },
    Publish {
        txid: u64,
        subscriber: Msisdn,
        state: PresenceState,
        credential: Vec<u8>,
    },
    Buddies {
        txid: u64,
        owner: Msisdn,
        action: BuddyAction,
        buddies: Vec<Msisdn>,
        storage: BuddyListStorage,
    },
}

impl Spec {
    /// The message, its device proof in the form of frame version `version`
    /// (the credential's bytes make the tag of version 2).
    fn message(&mut self, version: u8) -> Message<'_> {
        fn auth(version: u8, credential: &[u8], txid: u64) -> DeviceAuth<'_> {
            if version == 1 {
                return DeviceAuth::Credential(Credential::new(credential).unwrap());
            }
            let mut tag = [0u8; MAC_TAG_LEN];
            for (t, c) in tag.iter_mut().zip(credential) {
                *t = *c;
            }
            DeviceAuth::Mac {
                counter: txid.rotate_left(17),
                tag: MacTag(tag),
            }
        }
        match self {
            Spec::Fixed(m) => *m,
            Spec::Client {
                txid,
                watcher,
                target,
                operation,
                credential,
            } => Message::ClientRequest(ClientRequest {
                txid: *txid,
                watcher: *watcher,
                target: *target,
                operation: *operation,
                auth: auth(version, credential, *txid),
            }),
            Spec::Publish {
                txid,
                subscriber,
                state,
                credential,
            } => Message::Publish(Publish {
                txid: *txid,
                subscriber: *subscriber,
                state: *state,
                auth: auth(version, credential, *txid),
            }),
            Spec::Buddies {
                txid,
                owner,
                action,
                buddies,
                storage,
            } => Message::BuddyUpdate(BuddyUpdate {
                txid: *txid,
                owner: *owner,
                action: *action,
                buddies: BuddyList::encode(buddies, storage).unwrap(),
            }),
        }
    }
}

fn spec() -> impl Strategy<Value = Spec> {
    let credential = proptest::collection::vec(any::<u8>(), 0..=CREDENTIAL_LEN_MAX);
    prop_oneof![
        query().prop_map(|q| Spec::Fixed(Message::Query(q))),
        query().prop_map(|q| Spec::Fixed(Message::Unsubscribe(q))),
        (query(), 1u32..).prop_map(|(query, e)| Spec::Fixed(Message::Subscribe(Subscribe {
            query,
            expiry_s: NonZeroU32::new(e).unwrap()
        }))),
        (any::<u64>(), any::<u16>(), msisdn(), outcome()).prop_map(
            |(txid, reply_node, target, outcome)| Spec::Fixed(Message::Answer(Answer {
                txid,
                reply_node,
                target,
                outcome
            }))
        ),
        (
            any::<u64>(),
            any::<u16>(),
            msisdn(),
            msisdn(),
            any::<u32>(),
            any::<u16>(),
            outcome()
        )
            .prop_map(
                |(txid, reply_node, watcher, target, seq, remaining_s, outcome)| {
                    Spec::Fixed(Message::Notify(Notify {
                        txid,
                        reply_node,
                        watcher,
                        target,
                        seq,
                        remaining_s,
                        outcome,
                    }))
                }
            ),
        (
            any::<u64>(),
            msisdn(),
            prop_oneof![Just(None), msisdn().prop_map(Some)],
            any::<bool>()
        )
            .prop_map(
                |(txid, owner, watcher, grant)| Spec::Fixed(Message::ConsentUpdate(
                    ConsentUpdate {
                        txid,
                        owner,
                        scope: watcher.map_or(ConsentScope::All, ConsentScope::Watcher),
                        consent: if grant {
                            Consent::Grant
                        } else {
                            Consent::Withdraw
                        },
                    }
                ))
            ),
        (any::<u64>(), 0u8..=5).prop_map(|(txid, s)| Spec::Fixed(Message::Ack(Ack {
            txid,
            status: AckStatus::from_code(s).unwrap()
        }))),
        (
            any::<u64>(),
            msisdn(),
            msisdn(),
            prop_oneof![
                Just(ClientOperation::Query),
                Just(ClientOperation::Unsubscribe),
                (1u32..).prop_map(|e| ClientOperation::Subscribe {
                    expiry_s: NonZeroU32::new(e).unwrap()
                })
            ],
            credential.clone()
        )
            .prop_map(
                |(txid, watcher, target, operation, credential)| Spec::Client {
                    txid,
                    watcher,
                    target,
                    operation,
                    credential
                }
            ),
        (
            any::<u64>(),
            msisdn(),
            prop_oneof![
                Just(PresenceState::Detached),
                reach().prop_map(PresenceState::Attached)
            ],
            credential
        )
            .prop_map(|(txid, subscriber, state, credential)| Spec::Publish {
                txid,
                subscriber,
                state,
                credential
            }),
        (
            any::<u64>(),
            msisdn(),
            prop_oneof![
                Just(BuddyAction::Add),
                Just(BuddyAction::Remove),
                Just(BuddyAction::Replace)
            ],
            proptest::collection::btree_set(msisdn(), 0..=BUDDIES_PER_UPDATE_MAX)
        )
            .prop_map(|(txid, owner, action, buddies)| Spec::Buddies {
                txid,
                owner,
                action,
                buddies: buddies.into_iter().collect(),
                storage: [0; 224],
            }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn value_to_bytes_to_value(
        mut specs in proptest::collection::vec(spec(), 1..40),
        version in 1u8..=2,
    ) {
        let messages: Vec<Message<'_>> = specs.iter_mut().map(|s| s.message(version)).collect();
        let mut frame = Vec::new();
        let len = encode_frame(&messages, FRAME_LEN_ABSOLUTE_MAX, &mut frame).unwrap();
        prop_assert_eq!(len, frame.len());
        prop_assert_eq!(
            len,
            2 + messages.iter().map(|m| m.encoded_len()).sum::<usize>(),
            "encoded_len is exact"
        );
        let mut decoded = Vec::new();
        let count = FrameReader::for_each_accepted(&frame, FRAME_LEN_ABSOLUTE_MAX, |m| {
            decoded.push(m)
        });
        prop_assert_eq!(count, Ok(messages.len()));
        let needs = messages.iter().find_map(Message::version).unwrap_or(1);
        prop_assert_eq!(decoded, messages);
        prop_assert_eq!(frame[1], needs, "the frame carries the version its messages need");
    }

    #[test]
    fn accepted_bytes_re_encode_to_themselves(
        mut specs in proptest::collection::vec(spec(), 1..10),
        version in 1u8..=2,
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
    ) {
        let messages: Vec<Message<'_>> = specs.iter_mut().map(|s| s.message(version)).collect();
        let mut frame = Vec::new();
        encode_frame(&messages, FRAME_LEN_ABSOLUTE_MAX, &mut frame).unwrap();
        for (index, value) in flips {
            let at = index.index(frame.len());
            frame[at] = value;
        }
        let Ok(mut reader) = FrameReader::new(&frame, FRAME_LEN_ABSOLUTE_MAX) else {
            return Ok(());
        };
        let mut start = FRAME_HEADER_LEN;
        while let Some(result) = reader.next() {
            let end = reader.position();
            if let Ok(message) = result {
                let mut out = Vec::new();
                message.encode(&mut out).unwrap();
                prop_assert_eq!(&out[..], &frame[start..end]);
            }
            start = end;
        }
    }

    #[test]
    fn msisdn_text_and_wire_forms_agree(m in msisdn()) {
        let text = m.to_string();
        prop_assert_eq!(text.len(), m.digit_count());
        prop_assert_eq!(text.parse::<Msisdn>(), Ok(m));
        prop_assert_eq!(Msisdn::from_wire(m.to_wire()), Ok(m));
    }

    #[test]
    fn any_seven_bytes_decode_or_fail_with_a_reason(bytes in any::<[u8; 7]>()) {
        match Msisdn::from_wire(bytes) {
            Ok(m) => prop_assert_eq!(m.to_wire(), bytes),
            Err(e) => prop_assert!(matches!(e, MsisdnError::Zero | MsisdnError::TooLong)),
        }
    }
}
