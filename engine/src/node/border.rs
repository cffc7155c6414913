//! Frames from peer networks' border gateways: their queries (steps 7–9 at
//! this network's IGPS) and their answers (step 12 arriving at this
//! network's WA); and frames the border refused to carry.
//!
//! The origin network is the border link's authenticated peer, passed in
//! beside the frame: nothing in a message names it. A frame is handled in
//! passes, as a device's is: steering, then one batch of numbering-table
//! lookups (each query's watcher, for the spoofing check; each answer's
//! target, for the wrong-network check) and one of HSS lookups (each
//! query's target), then the roles.

use presence_codec::{
    Answer, FrameReader, Message, Msisdn, Notify, Outcome, Query, FRAME_LEN_ABSOLUTE_MAX,
};
use smallvec::SmallVec;

use super::{
    Alarm, BorderDest, CrossKind, CrossMessage, DropReason, Node, PeerEvent, SHED_RETRY_MS,
};
use crate::roles::{shed_queued_query, shed_refused_frame, Addr, Ask, IgpsLookup, PsId};
use crate::table::{NetworkId, LOOKUP_BATCH_MAX};

impl Node {
    /// One frame from a peer network's border gateway; `origin` is the
    /// peer the border authenticated.
    pub fn handle_border_frame(&mut self, now_us: u64, origin: NetworkId, frame: &[u8]) {
        self.border_frame(now_us, origin, frame, None);
    }

    /// A frame from `origin` that waited past the border's queue limit
    /// (the worker's admission, `[limits] border_queue_ms`): each query in
    /// it is answered `Overloaded`, retry after `retry_after_ms`, back to
    /// the peer at once, unchecked and uncharged, wherever its target is
    /// owned; each answer in it is handled as usual (it ends one of our
    /// transactions, and dropping it would only cost a retransmission).
    pub fn shed_border_frame(
        &mut self,
        now_us: u64,
        origin: NetworkId,
        frame: &[u8],
        retry_after_ms: u32,
    ) {
        self.border_frame(now_us, origin, frame, Some(retry_after_ms));
    }

    fn border_frame(&mut self, now_us: u64, origin: NetworkId, frame: &[u8], shed: Option<u32>) {
        self.begin(now_us);
        let Ok(reader) = FrameReader::new(frame, FRAME_LEN_ABSOLUTE_MAX) else {
            self.counters.drop(DropReason::BadBorderFrame);
            return;
        };
        let mut queries: SmallVec<[(Query, Ask); LOOKUP_BATCH_MAX]> = SmallVec::new();
        let mut answers: SmallVec<[Answer; LOOKUP_BATCH_MAX]> = SmallVec::new();
        for message in reader {
            // A query, a subscription or an unsubscription: one path.
            if let Some((query, ask)) = message.as_ref().ok().and_then(Ask::of) {
                self.counters.border_queries_in += 1;
                self.counters.peer(origin, PeerEvent::QueriesIn);
                if let Some(retry_after_ms) = shed {
                    self.counters.border_queue_shed += 1;
                    shed_queued_query(&query, origin, retry_after_ms, &mut self.out);
                    self.drain_out(Addr::Igps, None);
                    continue;
                }
                let owner = self.owner(query.target);
                if owner != self.config.worker {
                    self.cross(
                        owner,
                        CrossKind::BorderQuery,
                        CrossMessage::Query { origin, query, ask },
                    );
                    continue;
                }
                if queries.len() == LOOKUP_BATCH_MAX {
                    self.border_queries(origin, &queries);
                    queries.clear();
                }
                queries.push((query, ask));
                continue;
            }
            match message {
                Ok(Message::Notify(notify)) => {
                    // A notification belongs to the WA instance of its
                    // subscription: its worker.
                    if notify.reply_node == self.config.worker {
                        self.notify_here(origin, notify);
                    } else if notify.reply_node < self.config.workers {
                        self.cross(
                            notify.reply_node,
                            CrossKind::BorderAnswer,
                            CrossMessage::Notify { origin, notify },
                        );
                    } else {
                        self.counters.drop(DropReason::BadBorderFrame);
                    }
                }
                Ok(Message::Answer(answer)) => {
                    self.counters.border_answers_in += 1;
                    self.counters.peer(origin, PeerEvent::AnswersIn);
                    // An answer belongs to the WA instance that asked: its
                    // worker.
                    if answer.reply_node != self.config.worker {
                        if answer.reply_node < self.config.workers {
                            self.cross(
                                answer.reply_node,
                                CrossKind::BorderAnswer,
                                CrossMessage::Answer { origin, answer },
                            );
                        } else {
                            self.counters.drop(DropReason::BadBorderFrame);
                        }
                        continue;
                    }
                    if answers.len() == LOOKUP_BATCH_MAX {
                        self.border_answers(origin, &answers);
                        answers.clear();
                    }
                    answers.push(answer);
                }
                Ok(_) => self.counters.drop(DropReason::BadBorderFrame),
                Err(_) => self.counters.drop(DropReason::BadBorderFrame),
            }
        }
        self.border_queries(origin, &queries);
        self.border_answers(origin, &answers);
        self.run();
    }

    /// Queries of `origin` for targets this node owns, looked up together.
    fn border_queries(&mut self, origin: NetworkId, queries: &[(Query, Ask)]) {
        if queries.is_empty() {
            return;
        }
        let n = queries.len().min(LOOKUP_BATCH_MAX);
        let mut watchers = [Msisdn::MIN; LOOKUP_BATCH_MAX];
        let mut targets = [Msisdn::MIN; LOOKUP_BATCH_MAX];
        for ((w, t), (q, _)) in watchers.iter_mut().zip(targets.iter_mut()).zip(queries) {
            *w = q.watcher;
            *t = q.target;
        }
        let mut watcher_networks: [Option<NetworkId>; LOOKUP_BATCH_MAX] = [None; LOOKUP_BATCH_MAX];
        let mut servers: [Option<PsId>; LOOKUP_BATCH_MAX] = [None; LOOKUP_BATCH_MAX];
        self.table_reader
            .current()
            .lookup_batch(&watchers[..n], &mut watcher_networks[..n]);
        self.hss
            .current()
            .lookup_batch(&targets[..n], &mut servers[..n]);
        // Warm-up: the targets' records and buddy lists, misses overlapped.
        for ((query, _), server) in queries.iter().zip(servers) {
            if let Some(slice) = server.and_then(|id| self.ps.get(usize::from(id.0))?.as_ref()) {
                std::hint::black_box(slice.first_buddy(query.target));
            }
        }
        for (((query, ask), network), server) in queries.iter().zip(watcher_networks).zip(servers) {
            self.border_query(origin, query, *ask, network, server);
        }
    }

    /// Steps 7–9 for one query of `origin` (its watcher placed in
    /// `watcher_network` by the numbering table, its target on `server` by
    /// the HSS).
    pub(super) fn border_query(
        &mut self,
        origin: NetworkId,
        query: &Query,
        ask: Ask,
        watcher_network: Option<NetworkId>,
        server: Option<PsId>,
    ) {
        let traced = self.trace.traces(query.watcher);
        if traced {
            let name = self.network_name(origin);
            self.trace.step(query.watcher, 7, || format!("B's IGPS received the query from its border gateway; the origin network, {name}, is the peer the BG authenticated by certificate (the message names no network)"));
        }
        let decided = server
            .and_then(|id| self.ps.get(usize::from(id.0))?.as_ref())
            .is_some_and(|slice| slice.has_decided(origin, query));
        let lookup = IgpsLookup {
            watcher_network,
            server,
            decided,
        };
        self.igps.route(
            self.now_ms,
            true,
            origin,
            (query, ask),
            lookup,
            &mut self.out,
        );
        if traced {
            for t in &self.out.transmits {
                if let Addr::Ps(id) = t.to {
                    self.trace.step(query.watcher, 8, || {
                        format!(
                            "B's HSS: {} is held by presence server {}",
                            query.target, id.0
                        )
                    });
                }
            }
        }
        self.drain_out(Addr::Igps, None);
    }

    /// Answers from `origin` for this node's WA, their targets looked up
    /// together.
    fn border_answers(&mut self, origin: NetworkId, answers: &[Answer]) {
        if answers.is_empty() {
            return;
        }
        let n = answers.len().min(LOOKUP_BATCH_MAX);
        let mut targets = [Msisdn::MIN; LOOKUP_BATCH_MAX];
        for (t, a) in targets.iter_mut().zip(answers) {
            *t = a.target;
        }
        let mut networks: [Option<NetworkId>; LOOKUP_BATCH_MAX] = [None; LOOKUP_BATCH_MAX];
        // The pending slots load while the numbering table is searched.
        self.wa.prefetch_answers(&answers[..n]);
        self.table_reader
            .current()
            .lookup_batch(&targets[..n], &mut networks[..n]);
        for (answer, network) in answers.iter().zip(networks) {
            self.border_answer(origin, *answer, network);
        }
    }

    /// A notification from `origin`'s presence server (a peer's, or this
    /// network's) for this node's WA. Only B's network notifies about B:
    /// one about a number of another network is refused as an answer
    /// would be.
    pub(super) fn notify_here(&mut self, origin: NetworkId, notify: Notify) {
        if origin != self.config.network && self.table_reader.lookup(notify.target) != Some(origin)
        {
            self.counters.alarm(Alarm::AnswerFromWrongNetwork);
            return;
        }
        self.wa.handle_notify(self.now_ms, &notify, &mut self.out);
        self.drain_out(Addr::Wa(self.config.worker), None);
    }

    /// Step 12 arriving from `origin`, whose target the numbering table
    /// places in `target_network`.
    pub(super) fn border_answer(
        &mut self,
        origin: NetworkId,
        answer: Answer,
        target_network: Option<NetworkId>,
    ) {
        // Only B's network answers for B: an answer about a number of
        // another network claims to be that network.
        if target_network != Some(origin) {
            self.counters.alarm(Alarm::AnswerFromWrongNetwork);
            return;
        }
        // The peer's rate limit for us: hold further queries to it back
        // here until its retry-after. Only for a transaction of ours, and
        // never longer than a deadline: an unsolicited answer cannot
        // silence us.
        if let Outcome::Overloaded { retry_after_ms } = answer.outcome {
            if self.wa.pending_device(answer.txid).is_some() {
                let cap = u32::from(self.config.deadline_ms);
                self.ogps
                    .hold_off(self.now_ms, origin, retry_after_ms.min(cap));
            }
        }
        self.wa.handle_answer(self.now_ms, &answer, &mut self.out);
        self.drain_out(Addr::Wa(self.config.worker), None);
    }

    /// The border refused to carry `frame` to `to` (its link's queue full,
    /// or no link up): the border never reads messages, so the node, which
    /// built the frame, answers for it: each query `Overloaded` to the WA
    /// that asked; an answer to another network is left to that network's
    /// retransmission. The buffer is kept for reuse.
    pub fn handle_border_refused(&mut self, now_us: u64, to: BorderDest, frame: Vec<u8>) {
        self.begin(now_us);
        self.counters.peer(to.network, PeerEvent::FramesRefused);
        let shed = shed_refused_frame(&frame, self.config.network, SHED_RETRY_MS, &mut self.out);
        for _ in 0..shed.queries_answered {
            self.counters.drop(DropReason::BorderRefused);
        }
        for _ in 0..shed.dropped {
            self.counters.drop(DropReason::BorderRefusedAnswer);
        }
        self.recycle(frame);
        self.drain_out(Addr::Ogps, None);
        self.run();
    }
}
