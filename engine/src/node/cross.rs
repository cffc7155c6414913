//! Hand-offs between the workers of one gateway: what arrived at a node
//! that does not own it, and the crossings inherent in the flow (a query
//! inside one network about another worker's subscriber, and its answer).
//!
//! A [`CrossMessage`] is a fixed-size value (no allocation; the runtime's
//! inboxes are arrays of them). A device's message borrows from its
//! datagram, so it crosses encoded, as a frame of one message; queries and
//! answers cross typed.

use std::net::SocketAddr;

use presence_codec::{
    Answer, FrameReader, FrameWriter, Message, Notify, Outcome, Query, BODY_LEN_MAX, ENVELOPE_LEN,
    FRAME_HEADER_LEN, FRAME_VERSION,
};

use super::{BorderDest, DropReason, Node, Route, SHED_RETRY_MS};
use crate::roles::{answer_to, Addr, Ask, IgpsLookup};
use crate::table::NetworkId;

/// Largest device frame carried between workers: a frame of one message.
pub const CROSS_MESSAGE_MAX: usize = FRAME_HEADER_LEN + ENVELOPE_LEN + BODY_LEN_MAX;

/// A message for the worker that owns its subject. (The variants differ in
/// size on purpose: the inboxes are fixed arrays of these, allocated once,
/// and a boxed variant would allocate per message.)
#[derive(Clone, Copy)]
#[allow(clippy::large_enum_variant)]
pub enum CrossMessage {
    /// A device's request or publication, encoded as a frame of one
    /// message.
    Device {
        /// The device's address.
        from: SocketAddr,
        /// When it arrived (µs): A's deadline and the latency run from then.
        arrived_us: u64,
        /// Bytes of `frame` used.
        len: u16,
        /// The frame.
        frame: [u8; CROSS_MESSAGE_MAX],
    },
    /// A query for a target the receiver owns: from a peer network's border
    /// link (`origin` is the authenticated peer), or from this network's
    /// WA or OGPS (`origin` is this network).
    Query {
        /// The network the query came from.
        origin: NetworkId,
        /// The query.
        query: Query,
        /// What it asks (a query, a subscription, an unsubscription).
        ask: Ask,
    },
    /// An answer for the receiver's WA: from a peer network (`origin`), or
    /// from this network's presence server.
    Answer {
        /// The network that answered.
        origin: NetworkId,
        /// The answer.
        answer: Answer,
    },
    /// A notification for the receiver's WA: from a peer network's
    /// presence server (`origin`), or from this network's.
    Notify {
        /// The network whose presence server sent it.
        origin: NetworkId,
        /// The notification.
        notify: Notify,
    },
}

/// The message of a crossed device frame.
fn crossed(frame: &[u8; CROSS_MESSAGE_MAX], len: u16) -> Option<Message<'_>> {
    let frame = frame.get(..usize::from(len))?;
    FrameReader::new(frame, CROSS_MESSAGE_MAX)
        .ok()?
        .next()?
        .ok()
}

impl std::fmt::Debug for CrossMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CrossMessage::Device { from, len, .. } => f
                .debug_struct("Device")
                .field("from", from)
                .field("len", len)
                .finish_non_exhaustive(),
            CrossMessage::Query { origin, query, ask } => f
                .debug_struct("Query")
                .field("origin", origin)
                .field("query", query)
                .field("ask", ask)
                .finish(),
            CrossMessage::Notify { origin, notify } => f
                .debug_struct("Notify")
                .field("origin", origin)
                .field("notify", notify)
                .finish(),
            CrossMessage::Answer { origin, answer } => f
                .debug_struct("Answer")
                .field("origin", origin)
                .field("answer", answer)
                .finish(),
        }
    }
}

impl CrossMessage {
    /// A device's message, encoded; `None` if it does not encode (no
    /// message of version 1 is too large).
    pub(super) fn device(
        from: SocketAddr,
        arrived_us: u64,
        message: &Message<'_>,
    ) -> Option<CrossMessage> {
        let mut frame = [0u8; CROSS_MESSAGE_MAX];
        let len = {
            let mut cursor: &mut [u8] = &mut frame;
            let version = message.version().unwrap_or(FRAME_VERSION);
            let mut writer =
                FrameWriter::with_version(&mut cursor, CROSS_MESSAGE_MAX, version).ok()?;
            writer.push(message).ok()?;
            writer.len()
        };
        Some(CrossMessage::Device {
            from,
            arrived_us,
            len: u16::try_from(len).ok()?,
            frame,
        })
    }
}

impl Node {
    /// A message another worker handed over.
    pub fn handle_cross(&mut self, now_us: u64, message: CrossMessage) {
        self.begin(now_us);
        match message {
            CrossMessage::Device {
                from,
                arrived_us,
                len,
                frame,
            } => self.cross_device(from, arrived_us, &frame, len),
            CrossMessage::Query { origin, query, ask } => {
                if origin == self.config.network {
                    self.internal_query_here(query, ask);
                } else {
                    let watcher_network = self.table_reader.lookup(query.watcher);
                    let server = self.hss.lookup(query.target);
                    self.border_query(origin, &query, ask, watcher_network, server);
                }
            }
            CrossMessage::Notify { origin, notify } => self.notify_here(origin, notify),
            CrossMessage::Answer { origin, answer } => {
                if origin == self.config.network {
                    self.wa.handle_answer(self.now_ms, &answer, &mut self.out);
                    self.drain_out(Addr::Wa(self.config.worker), None);
                } else {
                    let target_network = self.table_reader.lookup(answer.target);
                    self.border_answer(origin, answer, target_network);
                }
            }
        }
        self.run();
    }

    /// A device's message handed over by the worker it arrived at.
    fn cross_device(
        &mut self,
        from: SocketAddr,
        arrived_us: u64,
        frame: &[u8; CROSS_MESSAGE_MAX],
        len: u16,
    ) {
        let Some(message) = crossed(frame, len) else {
            self.counters.drop(DropReason::BadMessage);
            return;
        };
        match message {
            Message::ClientRequest(request) => {
                let route = {
                    let table = self.table_reader.current();
                    Route {
                        network: table.lookup(request.target),
                        version: table.version() as u32,
                    }
                };
                self.device_request(from, arrived_us, &request, route);
            }
            Message::Publish(publication) => {
                let server = self.hss.lookup(publication.subscriber);
                self.publication(from, &publication, server);
            }
            _ => self.counters.drop(DropReason::BadMessage),
        }
    }

    /// A query of this network's own, at the IGPS of the node that owns
    /// its target (steps 7–9 inside one network).
    pub(super) fn internal_query_here(&mut self, query: Query, ask: Ask) {
        let own = self.config.network;
        let lookup = IgpsLookup {
            watcher_network: Some(own),
            server: self.hss.lookup(query.target),
            decided: false,
        };
        self.igps.route(
            self.now_ms,
            false,
            own,
            (&query, ask),
            lookup,
            &mut self.out,
        );
        self.drain_out(Addr::Igps, None);
    }

    /// Another worker's inbox had no room for `message`: the node answers
    /// for it rather than let it vanish. A device's request is answered
    /// `Overloaded`; a peer's query is answered `Overloaded` back through
    /// the border; this network's query is answered `Overloaded` to its WA;
    /// an answer cannot be answered, and is left to its WA's retransmission;
    /// a notification is lost, and its WA finds the gap in its numbers.
    pub fn handle_cross_refused(&mut self, now_us: u64, to: u16, message: CrossMessage) {
        self.begin(now_us);
        self.counters.drop(DropReason::InboxFull);
        debug_assert!(
            to != self.config.worker,
            "a node never hands over to itself"
        );
        let shed = Outcome::Overloaded {
            retry_after_ms: SHED_RETRY_MS,
        };
        match message {
            CrossMessage::Device {
                from, len, frame, ..
            } => {
                if let Some(Message::ClientRequest(request)) = crossed(&frame, len) {
                    self.counters.answer(&shed);
                    let answer = Message::Answer(Answer {
                        txid: request.txid,
                        reply_node: self.config.worker,
                        target: request.target,
                        outcome: shed,
                    });
                    self.device_frames.push(from, &answer);
                }
            }
            CrossMessage::Query { origin, query, .. } => {
                let answer = answer_to(&query, shed);
                if origin == self.config.network {
                    if let Message::Answer(a) = answer {
                        self.wa.handle_answer(self.now_ms, &a, &mut self.out);
                        self.drain_out(Addr::Wa(self.config.worker), None);
                        self.run();
                    }
                } else {
                    self.border_frames.push(
                        BorderDest {
                            network: origin,
                            worker: Some(query.reply_node),
                        },
                        &answer,
                    );
                }
            }
            CrossMessage::Answer { .. } | CrossMessage::Notify { .. } => {}
        }
    }
}
