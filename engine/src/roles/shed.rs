//! What a network does with a frame its border gateway refused (the link's
//! send queue full, or no link up): the BG never reads messages, so the
//! sender, which built the frame, answers for it.
//!
//! Each query in the frame (or subscription, or unsubscription) is answered
//! `Overloaded` to the WA instance that asked (its `reply_node`), with a
//! retry-after; the WA treats that as not
//! final and retries no sooner (`WatcherApp`). Anything else in the frame
//! (an answer on its way back to another network) cannot be answered from
//! here: it is counted, and the other network's WA retransmits on its
//! deadline, which the presence server answers from its decision window
//! without charging again. A notification in it is lost the same way
//! (counted); its subscription goes on.

use presence_codec::{FrameReader, Outcome, Query, FRAME_LEN_ABSOLUTE_MAX};

use super::{answer_to, Addr, Ask, Outbox};
use crate::table::NetworkId;

/// What shedding one frame did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Shed {
    /// Queries answered `Overloaded` to their WA.
    pub queries_answered: u32,
    /// Other messages dropped (answers to other networks, or a frame that
    /// would not decode).
    pub dropped: u32,
}

/// Answers every query in `frame`, which `own`'s border gateway refused.
pub fn shed_refused_frame(
    frame: &[u8],
    own: NetworkId,
    retry_after_ms: u32,
    out: &mut Outbox,
) -> Shed {
    let mut shed = Shed::default();
    let Ok(reader) = FrameReader::new(frame, FRAME_LEN_ABSOLUTE_MAX) else {
        shed.dropped = 1;
        return shed;
    };
    for message in reader {
        // A query, a subscription or an unsubscription alike.
        match message.as_ref().ok().and_then(Ask::of) {
            Some((query, _)) => {
                out.send(
                    Addr::Wa(query.reply_node),
                    own,
                    answer_to(&query, Outcome::Overloaded { retry_after_ms }),
                );
                shed.queries_answered = shed.queries_answered.saturating_add(1);
            }
            None => shed.dropped = shed.dropped.saturating_add(1),
        }
    }
    shed
}

/// Answers `query`, which reached this network from peer `origin` and
/// waited past the border's queue limit, `Overloaded` back through the
/// border to the peer's WA instance that asked, with a retry-after; the
/// IGPS, HSS and presence servers never see it, so nothing is charged.
pub fn shed_queued_query(query: &Query, origin: NetworkId, retry_after_ms: u32, out: &mut Outbox) {
    out.send(
        Addr::BorderReply {
            network: origin,
            reply_node: query.reply_node,
        },
        origin,
        answer_to(query, Outcome::Overloaded { retry_after_ms }),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use presence_codec::{encode_frame, Answer, Message, Msisdn, Query, FRAME_LEN_DEFAULT_MAX};

    fn m(s: &str) -> Msisdn {
        s.parse().unwrap()
    }

    #[test]
    fn every_query_of_a_refused_frame_is_answered_overloaded_to_its_wa() {
        let query = |txid, reply_node| Query {
            txid,
            watcher: m("447700900123"),
            target: m("4915112345678"),
            hop_limit: 7,
            budget_ms: 1500,
            reply_node,
            route_version: 1,
        };
        let answer = Message::Answer(Answer {
            txid: 9,
            reply_node: 4,
            target: m("4915112345678"),
            outcome: Outcome::NotAvailable,
        });
        let mut frame = Vec::new();
        encode_frame(
            &[
                Message::Query(query(1, 0)),
                answer,
                Message::Query(query(2, 3)),
            ],
            FRAME_LEN_DEFAULT_MAX,
            &mut frame,
        )
        .unwrap();
        let mut out = Outbox::default();
        let shed = shed_refused_frame(&frame, NetworkId(7), 250, &mut out);
        assert_eq!(
            shed,
            Shed {
                queries_answered: 2,
                dropped: 1
            }
        );
        let answers: Vec<_> = out
            .transmits
            .iter()
            .map(|t| (t.to, t.origin, t.message))
            .collect();
        assert_eq!(
            answers,
            vec![
                (
                    Addr::Wa(0),
                    NetworkId(7),
                    answer_to(
                        &query(1, 0),
                        Outcome::Overloaded {
                            retry_after_ms: 250
                        }
                    )
                ),
                (
                    Addr::Wa(3),
                    NetworkId(7),
                    answer_to(
                        &query(2, 3),
                        Outcome::Overloaded {
                            retry_after_ms: 250
                        }
                    )
                ),
            ]
        );
        assert!(
            out.records.is_empty(),
            "nothing is charged for a shed query"
        );
    }

    #[test]
    fn a_frame_that_does_not_decode_is_counted_not_answered() {
        let mut out = Outbox::default();
        let shed = shed_refused_frame(&[0x51, 0x01, 0, 0], NetworkId(1), 100, &mut out);
        assert_eq!(shed.dropped, 1);
        assert!(out.transmits.is_empty());
    }
}
