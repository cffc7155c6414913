//! Datagrams from devices: steps 1–4 (requests to the WA) and status
//! publications (to the presence servers).
//!
//! A frame is handled in passes: the first decides where each message goes
//! (a message whose subject another worker owns is handed over, a query or
//! answer on the device port raises an alarm); the second looks up every
//! request's target in the numbering table in one batch, and warms the
//! watchers' accounts and device addresses, so the processor has their
//! cache misses in flight together; the third runs the roles.

use std::net::SocketAddr;

use presence_codec::{
    Ack, AckStatus, ClientRequest, ErrorReason, FrameReader, Message, Msisdn, Outcome, Publish,
    FRAME_LEN_DEFAULT_MAX,
};
use smallvec::SmallVec;

use super::{Alarm, CrossKind, CrossMessage, DropReason, Node, Route};
use crate::roles::{answer_to, Addr, Ask, PsId, RequestFate, SourcePrefix};
use crate::table::{NetworkId, LOOKUP_BATCH_MAX};

impl Node {
    /// One datagram from the device at `from`.
    pub fn handle_datagram(&mut self, now_us: u64, from: SocketAddr, datagram: &[u8]) {
        self.begin(now_us);
        let Ok(reader) = FrameReader::new(datagram, FRAME_LEN_DEFAULT_MAX) else {
            self.counters.drop(DropReason::BadDatagram);
            return;
        };
        let mut requests: SmallVec<[ClientRequest<'_>; LOOKUP_BATCH_MAX]> = SmallVec::new();
        let mut publications: SmallVec<[Publish<'_>; LOOKUP_BATCH_MAX]> = SmallVec::new();
        for message in reader {
            let Ok(message) = message else {
                // A bad message costs only itself (the reader stops by
                // itself where the rest of the frame is lost).
                self.counters.drop(DropReason::BadMessage);
                continue;
            };
            match message {
                // Devices speak to their WA only: a query or answer here
                // skipped the Watcher Application (no authentication, no
                // credit). Refused to its source, never routed.
                Message::Query(query) => {
                    self.counters.alarm(Alarm::QuerySkippedWa);
                    let refusal = answer_to(&query, Outcome::Error(ErrorReason::Refused));
                    self.device_frames.push(from, &refusal);
                }
                Message::Answer(_) => self.counters.alarm(Alarm::QuerySkippedWa),
                Message::ClientRequest(request) if !self.owns(request.watcher) => {
                    self.hand_over_device(from, request.watcher, &message);
                }
                Message::Publish(publish) if !self.owns(publish.subscriber) => {
                    self.hand_over_device(from, publish.subscriber, &message);
                }
                Message::ClientRequest(request) => {
                    if requests.len() == LOOKUP_BATCH_MAX {
                        self.device_requests(from, &requests);
                        requests.clear();
                    }
                    requests.push(request);
                }
                Message::Publish(publish) => {
                    if publications.len() == LOOKUP_BATCH_MAX {
                        self.publications(from, &publications);
                        publications.clear();
                    }
                    publications.push(publish);
                }
                _ => self.counters.drop(DropReason::BadMessage),
            }
        }
        self.device_requests(from, &requests);
        self.publications(from, &publications);
        self.run();
    }

    /// Sheds one datagram from the device at `from` that waited too long in
    /// the socket (the node is past its capacity): every request and
    /// publication in it is answered `Overloaded` with `retry_after_ms`, at
    /// once, with no check and no state; nothing is decided or debited.
    /// Cheaper than serving it by an order of magnitude, so the excess gets
    /// an answer instead of timing out in the socket's buffer.
    pub fn shed_datagram(
        &mut self,
        now_us: u64,
        from: SocketAddr,
        datagram: &[u8],
        retry_after_ms: u32,
    ) {
        self.begin(now_us);
        let Ok(reader) = FrameReader::new(datagram, FRAME_LEN_DEFAULT_MAX) else {
            self.counters.drop(DropReason::BadDatagram);
            return;
        };
        let instance = self.config.worker;
        for message in reader {
            let reply = match message {
                Ok(Message::ClientRequest(request)) => Message::Answer(presence_codec::Answer {
                    txid: request.txid,
                    reply_node: instance,
                    target: request.target,
                    outcome: Outcome::Overloaded { retry_after_ms },
                }),
                Ok(Message::Publish(publish)) => Message::Ack(Ack {
                    txid: publish.txid,
                    status: AckStatus::Overloaded,
                }),
                _ => {
                    self.counters.drop(DropReason::BadMessage);
                    continue;
                }
            };
            self.counters.queue_shed += 1;
            self.device_frames.push(from, &reply);
        }
    }

    /// Hands a device's message to the worker owning `subject` (the
    /// steering missed it: a frame mixing owners, or no steering program).
    fn hand_over_device(&mut self, from: SocketAddr, subject: Msisdn, message: &Message<'_>) {
        match CrossMessage::device(from, self.now_us, message) {
            Some(cross) => self.cross(self.owner(subject), CrossKind::Device, cross),
            None => self.counters.drop(DropReason::BadMessage),
        }
    }

    /// Steps 1–4 for requests of this node's watchers, their targets looked
    /// up together.
    pub(super) fn device_requests(&mut self, from: SocketAddr, requests: &[ClientRequest<'_>]) {
        if requests.is_empty() {
            return;
        }
        let mut targets = [Msisdn::MIN; LOOKUP_BATCH_MAX];
        let mut networks: [Option<NetworkId>; LOOKUP_BATCH_MAX] = [None; LOOKUP_BATCH_MAX];
        let n = requests.len().min(LOOKUP_BATCH_MAX);
        for (slot, request) in targets.iter_mut().zip(requests) {
            *slot = request.target;
        }
        let version = {
            let table = self.table_reader.current();
            table.lookup_batch(&targets[..n], &mut networks[..n]);
            table.version() as u32
        };
        // Warm-up: the watchers' accounts and device addresses, their
        // misses overlapped (a million subscribers fit no cache), and the
        // device-request memory's index slots, prefetched.
        self.wa.prefetch_requests(&requests[..n]);
        for request in &requests[..n] {
            std::hint::black_box(self.wa.knows(request.watcher));
            std::hint::black_box(self.device_addrs.get(&request.watcher));
        }
        let arrived_us = self.now_us;
        for (request, network) in requests.iter().zip(networks) {
            self.device_request(from, arrived_us, request, Route { network, version });
        }
    }

    /// Steps 1–4 for one request, which arrived at `arrived_us` (at this
    /// node, or at the one that handed it over: A's deadline runs from
    /// then), whose target the numbering table placed (`route`).
    pub(super) fn device_request(
        &mut self,
        from: SocketAddr,
        arrived_us: u64,
        request: &ClientRequest<'_>,
        route: Route,
    ) {
        self.counters.requests += 1;
        let watcher = request.watcher;
        self.trace.step(watcher, 1, || {
            format!("A ({watcher}) asks its WA: is {} attached?", request.target)
        });
        let arrived_us = arrived_us.min(self.now_us);
        // A source network that spent its failure budget has no credential
        // checked (docs/reliability.md, "Credential guessing").
        let source = SourcePrefix::of(from.ip());
        let now_ms = self.now_ms;
        if let Some(guard) = &self.source_guard {
            if !guard.admits(now_ms, source) {
                self.wa.refuse_unchecked(watcher, request, &mut self.out);
                self.answer_source(watcher, from);
                self.drain_out(Addr::Wa(self.config.worker), Some(route));
                return;
            }
        }
        let fate = self.wa.handle_request(
            arrived_us / 1000,
            watcher,
            from,
            request,
            route.network,
            &mut self.out,
        );
        if fate == RequestFate::AuthFailed {
            if let Some(guard) = &mut self.source_guard {
                guard.failed(now_ms, source);
            }
        }
        // The query (or subscription, or unsubscription) the WA sent on.
        let query = self
            .out
            .transmits
            .iter()
            .find_map(|t| Ask::of(&t.message).map(|(q, _)| (t.to, q)));
        if self.trace.traces(watcher) {
            self.trace_wa(watcher, request.target, query.map(|q| q.0));
        }
        // Answers to the request itself (a refusal, a repeat's answer) go
        // back to the datagram's source.
        self.answer_source(watcher, from);
        if let (Some((_, q)), true) = (query, self.config.observe) {
            self.observations.push(super::Observation::Accepted {
                watcher,
                request: request.txid,
                txid: q.txid,
            });
        }
        if query.is_some() {
            // Only a request the WA accepted records where the device is:
            // an unauthenticated sender can neither redirect a subscriber's
            // answers nor grow the map.
            self.device_addrs.insert(watcher, from);
            // Latency is sampled by request id: a map insert and removal
            // per query would cost two cache misses of a million-entry
            // table, a tenth of a worker's time at full load.
            let sampled = request.txid.is_multiple_of(super::LATENCY_SAMPLE_EVERY);
            if sampled && self.arrivals.len() < self.config.pending_max.saturating_mul(2) {
                self.arrivals.insert((watcher, request.txid), arrived_us);
            }
        }
        self.drain_out(Addr::Wa(self.config.worker), Some(route));
    }

    /// Steps 2–4 of a traced request, from what the WA produced.
    fn trace_wa(&self, watcher: Msisdn, target: Msisdn, query_to: Option<Addr>) {
        let Some(to) = query_to else {
            self.trace.step(watcher, 2, || {
                "A's WA answered A itself (refused, or a repeat)".to_string()
            });
            return;
        };
        let credit = self.wa.credit(watcher).unwrap_or(0);
        self.trace.step(watcher, 2, || format!("A's WA authenticated A by credential and debited A's prepay credit ({credit} left)"));
        let internal = to == Addr::Igps;
        self.trace.step(watcher, 3, || {
            if internal {
                format!("A's WA: {target} is a number of A's own network")
            } else {
                format!("A's WA: {target} is not a number of A's network")
            }
        });
        self.trace.step(watcher, 4, || {
            if internal {
                "A's WA sent the query to its own network's IGPS".to_string()
            } else {
                "A's WA sent the query to A's OGPS".to_string()
            }
        });
    }

    /// Moves what a role just addressed to `who`'s device into a frame back
    /// to `from`, the datagram's source (not via the address map).
    fn answer_source(&mut self, who: Msisdn, from: SocketAddr) {
        let mut i = 0;
        while i < self.out.transmits.len() {
            if self.out.transmits[i].to != Addr::Device(who) {
                i += 1;
                continue;
            }
            let transmit = self.out.transmits.remove(i);
            if let Message::Answer(answer) = &transmit.message {
                self.answered_device(who, answer);
            }
            self.device_frames.push(from, &transmit.message);
        }
    }

    /// Status publications of this node's subscribers, their presence
    /// servers looked up together.
    pub(super) fn publications(&mut self, from: SocketAddr, publications: &[Publish<'_>]) {
        if publications.is_empty() {
            return;
        }
        let mut subjects = [Msisdn::MIN; LOOKUP_BATCH_MAX];
        let mut servers: [Option<PsId>; LOOKUP_BATCH_MAX] = [None; LOOKUP_BATCH_MAX];
        let n = publications.len().min(LOOKUP_BATCH_MAX);
        for (slot, p) in subjects.iter_mut().zip(publications) {
            *slot = p.subscriber;
        }
        self.hss
            .current()
            .lookup_batch(&subjects[..n], &mut servers[..n]);
        for (publication, server) in publications.iter().zip(servers) {
            self.publication(from, publication, server);
        }
    }

    /// One publication, its presence server looked up (`None`: no range of
    /// this network's HSS holds the number).
    pub(super) fn publication(
        &mut self,
        from: SocketAddr,
        publication: &Publish<'_>,
        server: Option<PsId>,
    ) {
        self.counters.publications += 1;
        // Refused alike whatever the reason (docs/reliability.md, §4a): a
        // number in no range of our HSS, an unknown subscriber, a wrong
        // credential, a lock-out, a source network over its budget.
        let refuse = |node: &mut Node| {
            let ack = Message::Ack(Ack {
                txid: publication.txid,
                status: AckStatus::Unauthenticated,
            });
            node.device_frames.push(from, &ack);
        };
        let source = SourcePrefix::of(from.ip());
        let now_ms = self.now_ms;
        // A number in no range goes to the decoy server, which refuses it
        // as it refuses an unknown subscriber: the same work, so the ack's
        // time says nothing of where the ranges end.
        let server = server.or_else(|| self.hss.current().decoy());
        if let Some(guard) = &mut self.source_guard {
            if !guard.admits(now_ms, source) {
                self.counters.drop(DropReason::AuthSourceLimited);
                return refuse(self);
            }
            if server.is_none() {
                guard.failed(now_ms, source);
            }
        }
        let Some(id) = server else {
            self.counters.drop(DropReason::UnknownSubscriber);
            return refuse(self);
        };
        let charging = self.held.charging();
        let Some(slice) = Node::slice(&mut self.ps, &self.config, charging, id) else {
            self.counters.drop(DropReason::UnknownSubscriber);
            return refuse(self);
        };
        let failures_before = slice.counters().auth_failures;
        slice.handle(
            self.now_ms,
            Addr::Device(publication.subscriber),
            self.config.network,
            &Message::Publish(*publication),
            &mut self.out,
        );
        if slice.counters().auth_failures > failures_before {
            if let Some(guard) = &mut self.source_guard {
                guard.failed(now_ms, source);
            }
        }
        self.answer_source(publication.subscriber, from);
        self.drain_out(Addr::Ps(id), None);
    }
}
