//! What a node counts: kept locally (no shared write per message), read by
//! the runtime's metrics publication and by the simulation. Every array is
//! indexed by an enum, never by a bare number.

use presence_codec::{Outcome, OutcomeClass};

use crate::roles::{IgpsCounters, OgpsCounters, PsCounters, WaCounters};
use crate::table::NetworkId;

/// Spoofing refused, by kind (`presence_alarms_total{kind}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alarm {
    /// A peer's query for a watcher the numbering table does not place in
    /// that peer (refused by the IGPS before any HSS lookup).
    WatcherNotOfOrigin,
    /// A query or answer sent to the device port: it skipped the WA.
    QuerySkippedWa,
    /// A peer's answer about a number of another network (dropped).
    AnswerFromWrongNetwork,
    /// A watcher's credential failed often enough to lock its checks out
    /// (once per run of failures; docs/reliability.md).
    CredentialGuessing,
    /// A peer's query whose transaction id was a window or more from its
    /// live stream's mark (refused, so it cannot poison the window).
    TxidOutOfWindow,
}

impl Alarm {
    /// Every alarm, in counter order.
    pub const ALL: [Alarm; 5] = [
        Alarm::WatcherNotOfOrigin,
        Alarm::QuerySkippedWa,
        Alarm::AnswerFromWrongNetwork,
        Alarm::CredentialGuessing,
        Alarm::TxidOutOfWindow,
    ];

    /// Stable label.
    pub const fn name(self) -> &'static str {
        match self {
            Alarm::WatcherNotOfOrigin => "watcher_not_of_origin",
            Alarm::QuerySkippedWa => "query_skipped_wa",
            Alarm::AnswerFromWrongNetwork => "answer_from_wrong_network",
            Alarm::CredentialGuessing => "credential_guessing",
            Alarm::TxidOutOfWindow => "txid_out_of_window",
        }
    }
}

/// Messages dropped or shed, by reason (`presence_drops_total{reason}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// A datagram that is not a frame.
    BadDatagram,
    /// A message that did not decode, or had no business where it came.
    BadMessage,
    /// A bad frame, or a message of the wrong type, from a peer network.
    BadBorderFrame,
    /// A hand-off another worker's inbox had no room for.
    InboxFull,
    /// A query answered `Overloaded` because the border refused its frame.
    BorderRefused,
    /// An answer for a device whose address is not known.
    NoDeviceAddress,
    /// An answer bound for another network, lost with a refused frame.
    BorderRefusedAnswer,
    /// Held answers over their bound, or a routing loop cut short.
    Overflow,
    /// A publication for a number no presence server of this network holds.
    UnknownSubscriber,
    /// A publication refused unchecked: its source network's failed checks
    /// are over budget (docs/reliability.md, §4a).
    AuthSourceLimited,
}

impl DropReason {
    /// Every reason, in counter order.
    pub const ALL: [DropReason; 10] = [
        DropReason::BadDatagram,
        DropReason::BadMessage,
        DropReason::BadBorderFrame,
        DropReason::InboxFull,
        DropReason::BorderRefused,
        DropReason::NoDeviceAddress,
        DropReason::BorderRefusedAnswer,
        DropReason::Overflow,
        DropReason::UnknownSubscriber,
        DropReason::AuthSourceLimited,
    ];

    /// Stable label.
    pub const fn name(self) -> &'static str {
        match self {
            DropReason::BadDatagram => "bad_datagram",
            DropReason::BadMessage => "bad_message",
            DropReason::BadBorderFrame => "bad_border_frame",
            DropReason::InboxFull => "inbox_full",
            DropReason::BorderRefused => "border_refused",
            DropReason::NoDeviceAddress => "no_device_address",
            DropReason::BorderRefusedAnswer => "border_refused_answer",
            DropReason::Overflow => "overflow",
            DropReason::UnknownSubscriber => "unknown_subscriber",
            DropReason::AuthSourceLimited => "auth_source_limited",
        }
    }
}

/// What was handed to another worker because it arrived at one that does
/// not own it (`presence_cross_worker_total{kind}`): the steering's misses
/// and the flow's inherent crossings (a query inside one network about a
/// subscriber of another worker).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrossKind {
    /// A device's message whose subject another worker owns.
    Device,
    /// A peer network's query whose target another worker owns.
    BorderQuery,
    /// A peer network's answer for another worker's WA.
    BorderAnswer,
    /// A query inside this network whose target another worker owns.
    InternalQuery,
    /// An answer inside this network for another worker's WA.
    InternalAnswer,
}

impl CrossKind {
    /// Every kind, in counter order.
    pub const ALL: [CrossKind; 5] = [
        CrossKind::Device,
        CrossKind::BorderQuery,
        CrossKind::BorderAnswer,
        CrossKind::InternalQuery,
        CrossKind::InternalAnswer,
    ];

    /// Stable label.
    pub const fn name(self) -> &'static str {
        match self {
            CrossKind::Device => "device",
            CrossKind::BorderQuery => "border_query",
            CrossKind::BorderAnswer => "border_answer",
            CrossKind::InternalQuery => "internal_query",
            CrossKind::InternalAnswer => "internal_answer",
        }
    }
}

/// Traffic with one peer network, by event (`presence_peer_events_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerEvent {
    /// Queries received from it.
    QueriesIn,
    /// Answers received from it.
    AnswersIn,
    /// Frames sent to it.
    FramesOut,
    /// Frames its border link refused.
    FramesRefused,
}

impl PeerEvent {
    /// Every event, in counter order.
    pub const ALL: [PeerEvent; 4] = [
        PeerEvent::QueriesIn,
        PeerEvent::AnswersIn,
        PeerEvent::FramesOut,
        PeerEvent::FramesRefused,
    ];

    /// Stable label.
    pub const fn name(self) -> &'static str {
        match self {
            PeerEvent::QueriesIn => "queries_in",
            PeerEvent::AnswersIn => "answers_in",
            PeerEvent::FramesOut => "frames_out",
            PeerEvent::FramesRefused => "frames_refused",
        }
    }
}

/// Counts by enum position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counts<const N: usize>(pub [u64; N]);

impl<const N: usize> Default for Counts<N> {
    fn default() -> Counts<N> {
        Counts([0; N])
    }
}

impl<const N: usize> Counts<N> {
    /// Adds one at `index` (an enum's position, below `N` by construction).
    #[inline]
    pub fn bump(&mut self, index: usize) {
        if let Some(n) = self.0.get_mut(index) {
            *n += 1;
        }
    }

    /// Adds `other` to these.
    pub fn add(&mut self, other: &Counts<N>) {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a += b;
        }
    }

    /// The sum.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }
}

/// Everything a node counts.
#[derive(Clone, Debug, Default)]
pub struct NodeCounters {
    /// Requests from devices (step 1).
    pub requests: u64,
    /// Status publications from devices.
    pub publications: u64,
    /// Final answers to devices, by [`OutcomeClass`].
    pub answers: Counts<5>,
    /// Queries from peer networks.
    pub border_queries_in: u64,
    /// Answers from peer networks.
    pub border_answers_in: u64,
    /// Frames handed to the border.
    pub border_frames_out: u64,
    /// Charge records raised (chargeable decisions on other networks'
    /// queries).
    pub charged: u64,
    /// Answers refused because their charge record did not become durable.
    pub voided: u64,
    /// Device requests and publications answered `Overloaded` unchecked,
    /// their datagram having waited too long in the socket
    /// ([`Node::shed_datagram`](super::Node::shed_datagram)).
    pub queue_shed: u64,
    /// Peers' queries answered `Overloaded` unchecked, their frame having
    /// waited past the border's queue limit
    /// ([`Node::shed_border_frame`](super::Node::shed_border_frame)).
    pub border_queue_shed: u64,
    /// Hand-offs to other workers, by [`CrossKind`].
    pub cross_worker: Counts<5>,
    /// Drops, by [`DropReason`].
    pub drops: Counts<{ DropReason::ALL.len() }>,
    /// Alarms, by [`Alarm`].
    pub alarms: Counts<{ Alarm::ALL.len() }>,
    /// Per peer network, by [`PeerEvent`].
    pub peers: Vec<(NetworkId, Counts<4>)>,
}

impl NodeCounters {
    /// Counts a final answer to a device.
    pub fn answer(&mut self, outcome: &Outcome) {
        self.answers.bump(outcome.class().index());
    }

    /// Counts a drop.
    pub fn drop(&mut self, reason: DropReason) {
        self.drops.bump(reason as usize);
    }

    /// Counts an alarm.
    pub fn alarm(&mut self, alarm: Alarm) {
        self.alarms.bump(alarm as usize);
    }

    /// Counts a hand-off.
    pub fn cross(&mut self, kind: CrossKind) {
        self.cross_worker.bump(kind as usize);
    }

    /// Counts an event with a peer network (one entry per peer the node
    /// has heard from or sent to: bounded by the numbering table's
    /// networks).
    pub fn peer(&mut self, network: NetworkId, event: PeerEvent) {
        let index = match self.peers.iter().position(|(n, _)| *n == network) {
            Some(i) => i,
            None => {
                self.peers.push((network, Counts::default()));
                self.peers.len() - 1
            }
        };
        if let Some((_, counts)) = self.peers.get_mut(index) {
            counts.bump(event as usize);
        }
    }

    /// The answers of one class.
    pub fn answers_of(&self, class: OutcomeClass) -> u64 {
        self.answers.0[class.index()]
    }

    /// Adds `other` (another node's) to these.
    pub fn add(&mut self, other: &NodeCounters) {
        self.requests += other.requests;
        self.publications += other.publications;
        self.answers.add(&other.answers);
        self.border_queries_in += other.border_queries_in;
        self.border_answers_in += other.border_answers_in;
        self.border_frames_out += other.border_frames_out;
        self.charged += other.charged;
        self.voided += other.voided;
        self.queue_shed += other.queue_shed;
        self.border_queue_shed += other.border_queue_shed;
        self.cross_worker.add(&other.cross_worker);
        self.drops.add(&other.drops);
        self.alarms.add(&other.alarms);
        for (network, counts) in &other.peers {
            match self.peers.iter_mut().find(|(n, _)| n == network) {
                Some((_, mine)) => mine.add(counts),
                None => self.peers.push((*network, *counts)),
            }
        }
    }
}

/// What the roles of a node decided, summed over its presence-server
/// slices.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RoleCounters {
    /// The WA's.
    pub wa: WaCounters,
    /// The OGPS's (including instances replaced on reload).
    pub ogps: OgpsCounters,
    /// The IGPS's.
    pub igps: IgpsCounters,
    /// The presence-server slices', summed.
    pub ps: PsCounters,
}

impl RoleCounters {
    /// Adds `other` to these.
    pub fn add(&mut self, other: &RoleCounters) {
        self.wa.add(&other.wa);
        self.ogps.add(&other.ogps);
        self.igps.add(&other.igps);
        self.ps.add(&other.ps);
    }

    /// Every counter as `(role, event, value)`, in a stable order: the
    /// labels of `presence_role_events_total`.
    pub fn events(&self) -> [(&'static str, &'static str, u64); 46] {
        let (wa, ogps, igps, ps) = (&self.wa, &self.ogps, &self.igps, &self.ps);
        [
            ("wa", "accepted", wa.accepted),
            ("wa", "internal", wa.internal),
            ("wa", "unauthenticated", wa.unauthenticated),
            ("wa", "auth_locked", wa.auth_locked),
            ("wa", "auth_source_limited", wa.auth_source_limited),
            ("wa", "auth_stale", wa.auth_stale),
            ("wa", "replays", wa.replays),
            ("wa", "insecure_refused", wa.insecure_refused),
            ("wa", "credit_exhausted", wa.credit_exhausted),
            ("wa", "throttled", wa.throttled),
            ("wa", "device_repeats", wa.device_repeats),
            ("wa", "retransmissions", wa.retransmissions),
            ("wa", "final_answers", wa.final_answers),
            ("wa", "timeouts", wa.timeouts),
            ("wa", "watches_granted", wa.watches_granted),
            ("wa", "notifications", wa.notifications),
            ("wa", "notifications_dropped", wa.notifications_dropped),
            ("ogps", "forwarded", ogps.forwarded),
            ("ogps", "looped_home", ogps.looped_home),
            ("ogps", "unknown_network", ogps.unknown_network),
            ("ogps", "hop_limit_exceeded", ogps.hop_limit_exceeded),
            ("ogps", "held_off", ogps.held_off),
            ("igps", "forwarded", igps.forwarded),
            ("igps", "unknown_subscriber", igps.unknown_subscriber),
            ("igps", "hop_limit_exceeded", igps.hop_limit_exceeded),
            ("igps", "throttled", igps.throttled),
            ("ps", "answered_status", ps.answered_status),
            ("ps", "not_available", ps.not_available),
            ("ps", "charged", ps.charged),
            ("ps", "duplicates", ps.duplicates),
            ("ps", "publications", ps.publications),
            ("ps", "refused", ps.refused),
            ("ps", "auth_locked", ps.auth_locked),
            ("ps", "auth_stale", ps.auth_stale),
            ("ps", "publish_repeats", ps.publish_repeats),
            ("ps", "insecure_refused", ps.insecure_refused),
            ("ps", "out_of_window", ps.out_of_window),
            ("ps", "window_full", ps.drops.overloaded),
            ("ps", "charging_refused", ps.charging_refused),
            ("ps", "restart_held", ps.restart_held),
            ("ps", "watches_granted", ps.watches_granted),
            ("ps", "watches_refreshed", ps.watches_refreshed),
            ("ps", "watches_refused", ps.watches_refused),
            ("ps", "unsubscribed", ps.unsubscribed),
            ("ps", "watches_ended", ps.watches_ended),
            ("ps", "notifications", ps.notifications),
        ]
    }
}
